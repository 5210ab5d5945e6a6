//! The packs for the AuthZEN interop scenarios (`examples/authzen-interop/`), each served by
//! the binary's server and asked the scenarios' questions over real HTTP, in the shapes the
//! working group's runners send: Todo (users by PID or email, todos by property, batches whose
//! answers are exactly `{"decision": bool}`), the API gateway (methods on routes), and the
//! search and IdP scenarios (the three searches).

use std::path::{Path, PathBuf};

use crate::common;
use crate::common::http::Http;
use crate::common::root;
use blue_authz::engine::pack::PackSpec;
use blue_authz::service::server::{self, Limits, Running};
use serde_json::{json, Value};

fn pack_dir(name: &str) -> PathBuf {
    root().join("examples/authzen-interop").join(name)
}

async fn serve(dir: &Path, name: &str, reasons: bool) -> Running {
    let mut c = common::config(dir, Limits::default());
    c.pack = PackSpec::new(pack_dir(name).join("policies"), &[]);
    c.seed = Some(pack_dir(name).join("data.json"));
    c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    c.http_decision_context = reasons;
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    running
}

const RICK: &str = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
const MORTY: &str = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
const BETH: &str = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";

fn todo(subject: &str, action: &str, owner: Option<&str>) -> Value {
    let mut resource = json!({"type": "todo", "id": "7240d0db-8ff0-41ec-98b2-34a096273b9f"});
    if let Some(o) = owner {
        resource["properties"] = json!({"ownerID": o});
    }
    json!({"subject": {"type": "user", "id": subject}, "action": {"name": action}, "resource": resource})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_todo_pack_answers_by_pid_and_email_with_bare_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve(dir.path(), "todo", false).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let cases = [
        (todo(RICK, "can_read_todos", None), true),
        (todo(BETH, "can_create_todo", None), false),
        (todo(MORTY, "can_create_todo", None), true),
        (
            todo(MORTY, "can_update_todo", Some("morty@the-citadel.com")),
            true,
        ),
        (
            todo(MORTY, "can_delete_todo", Some("rick@the-citadel.com")),
            false,
        ),
        (
            todo(RICK, "can_delete_todo", Some("morty@the-citadel.com")),
            true,
        ),
        (
            todo(RICK, "can_update_todo", Some("beth@the-smiths.com")),
            true,
        ),
        (
            todo(
                "morty@the-citadel.com",
                "can_delete_todo",
                Some("morty@the-citadel.com"),
            ),
            true,
        ),
        (
            json!({"subject": {"type": "user", "id": BETH}, "action": {"name": "can_read_user"}, "resource": {"type": "user", "id": RICK}}),
            true,
        ),
        // What a gateway adds is dropped, not refused.
        (
            json!({"subject": {"type": "user", "id": MORTY}, "action": {"name": "can_update_todo"},
                   "resource": {"type": "todo", "id": "t", "properties": {"ownerID": "morty@the-citadel.com", "title": "x"}},
                   "context": {"time": "2026-12-06T10:00:00Z", "ip": "10.1.2.3"}}),
            true,
        ),
    ];
    for (q, want) in &cases {
        let a = http.post("/access/v1/evaluation", q).await;
        assert_eq!(a.status, 200, "{q}: {}", a.body);
        assert_eq!(a.body, json!({"decision": want}), "{q}");
    }
    // A boxcar of todos for one subject: each answer exactly {"decision": bool}.
    let q = json!({
        "subject": {"type": "user", "id": MORTY},
        "action": {"name": "can_update_todo"},
        "evaluations": [
            {"resource": {"type": "todo", "id": "1", "properties": {"ownerID": "rick@the-citadel.com"}}},
            {"resource": {"type": "todo", "id": "2", "properties": {"ownerID": "morty@the-citadel.com"}}},
        ],
    });
    let a = http.post("/access/v1/evaluations", &q).await;
    assert_eq!(
        a.body,
        json!({"evaluations": [{"decision": false}, {"decision": true}]})
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_pack_decides_methods_on_routes_by_pid() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve(dir.path(), "gateway", false).await;
    let mut http = Http::connect(running.http_addr.unwrap(), true).await;
    for (who, method, route, want) in [
        (BETH, "GET", "/users/{userId}", true),
        (BETH, "GET", "/todos", true),
        (BETH, "POST", "/todos", false),
        (BETH, "DELETE", "/todos/{todoId}", false),
        (MORTY, "POST", "/todos", true),
        (MORTY, "PUT", "/todos/{todoId}", true),
        (RICK, "DELETE", "/todos/{todoId}", true),
        (RICK, "POST", "/users/{userId}", false),
    ] {
        let q = json!({"subject": {"type": "identity", "id": who}, "action": {"name": method}, "resource": {"type": "route", "id": route}});
        let a = http.post("/access/v1/evaluation", &q).await;
        assert_eq!(a.body, json!({"decision": want}), "{method} {route}");
    }
    running.shutdown().await.unwrap();
}

fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .map(|r| {
            r.get("id")
                .or(r.get("name"))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_pack_answers_the_three_searches() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve(dir.path(), "records", true).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    // Who may view record 101 (Legal, alice's): its owner, Legal's people, the managers.
    let q = json!({"subject": {"type": "user"}, "action": {"name": "view"}, "resource": {"type": "record", "id": "101"}});
    let a = http.post("/access/v1/search/subject", &q).await;
    assert_eq!(ids(&a.body), ["alice", "bob", "carol", "dan"]);
    // Which records may dan edit: his own, and Finance's (115) as a manager.
    let q = json!({"subject": {"type": "user", "id": "dan"}, "action": {"name": "edit"}, "resource": {"type": "record"}});
    let a = http.post("/access/v1/search/resource", &q).await;
    assert_eq!(ids(&a.body), ["104", "110", "115", "116"]);
    // The IdP scenario: what each may delete is what each owns.
    let q = json!({"subject": {"type": "user", "id": "carol"}, "action": {"name": "delete"}, "resource": {"type": "record"}});
    let a = http.post("/access/v1/search/resource", &q).await;
    assert_eq!(ids(&a.body), ["103", "109", "115"]);
    // What alice may do to 101 (hers), and erin to 101 (Legal; erin is Finance).
    let q = json!({"subject": {"type": "user", "id": "alice"}, "resource": {"type": "record", "id": "101"}});
    let a = http.post("/access/v1/search/action", &q).await;
    assert_eq!(ids(&a.body), ["delete", "edit", "view"]);
    let q = json!({"subject": {"type": "user", "id": "erin"}, "resource": {"type": "record", "id": "101"}});
    let a = http.post("/access/v1/search/action", &q).await;
    assert_eq!(ids(&a.body), Vec::<String>::new());
    // Unknown names find nothing, as the certification asks.
    let q = json!({"subject": {"type": "user", "id": "zed"}, "action": {"name": "view"}, "resource": {"type": "record"}});
    let a = http.post("/access/v1/search/resource", &q).await;
    assert_eq!((a.status, ids(&a.body).len()), (200, 0));
    running.shutdown().await.unwrap();
}
