//! The AuthZEN HTTP API against the real listener, with real HTTP/1.1 and HTTP/2 clients
//! over sockets (plaintext and TLS): every endpoint, the evaluations semantics with their
//! short-circuits, defaults merged and overridden, pagination to the end and a changed query
//! refused, discovery, 400s naming the field, 401 with a caller token, the request id echoed;
//! every suite case answered over HTTP as over gRPC, for Blue's pack and for the
//! document-sharing example pack, which the same binary serves.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::http::{Answer, Http};
use crate::common::server::Binary;
use crate::common::{live_pack, pack, root, uid};
use blue_authz::authoring::suite;
use blue_authz::engine::pack::{PackSpec, PolicyPack};
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use blue_authz::service::server::{self, Limits, Running};
use serde_json::{json, Value};
use tonic::transport::Channel;

fn docs_dir() -> PathBuf {
    root().join("examples/docs")
}

/// A server of `pack` seeded with `seed`, every listener on 127.0.0.1:0, HTTP included.
async fn start_pack(dir: &Path, pack: &Path, seed: &Path, token: Option<&str>) -> Running {
    let mut c = common::config(dir, Limits::default());
    c.pack = PackSpec::new(pack, &[]);
    c.seed = Some(seed.to_path_buf());
    c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    c.http_token = token.map(str::to_string);
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    running
}

async fn start_docs(dir: &Path) -> Running {
    start_pack(
        dir,
        &docs_dir().join("policies"),
        &docs_dir().join("data.json"),
        None,
    )
    .await
}

async fn grpc(running: &Running) -> AuthorizerClient<Channel> {
    AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap()
}

const EVALUATION: &str = "/access/v1/evaluation";
const EVALUATIONS: &str = "/access/v1/evaluations";

fn ask(subject: &str, action: &str, resource: &str) -> Value {
    json!({
        "subject": {"type": "user", "id": subject},
        "action": {"name": action},
        "resource": {"type": "document", "id": resource},
    })
}

fn decisions(a: &Answer) -> Vec<bool> {
    a.body["evaluations"]
        .as_array()
        .unwrap_or_else(|| panic!("no evaluations in {}", a.body))
        .iter()
        .map(|d| d["decision"].as_bool().unwrap())
        .collect()
}

fn determining(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["context"]["determining_policies"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Every suite case of `pack_dir`, asked over gRPC and over HTTP (HTTP/1.1 and h2c), must
/// get the same decision, determining policies and errors.
async fn http_equals_grpc_for_every_case(running: &Running, pack_dir: &Path) -> usize {
    let pack = PolicyPack::load(&PackSpec::new(pack_dir, &[])).unwrap();
    let suites = suite::load_suites(&pack_dir.join("tests")).unwrap();
    let cases = suite::effective_cases(&suites, &[]);
    assert!(!cases.is_empty());
    let mut client = grpc(running).await;
    let addr = running.http_addr.unwrap();
    let mut h1 = Http::connect(addr, false).await;
    let mut h2 = Http::connect(addr, true).await;
    for (n, case) in cases.iter().enumerate() {
        let ty = |u: &cedar_policy::EntityUid| {
            pack.names
                .outside_type(&u.type_name().to_string())
                .to_string()
        };
        let grpc_request = pb::IsAuthorizedRequest {
            principal: uid(
                &case.principal.type_name().to_string(),
                case.principal.id().unescaped(),
            ),
            action: uid("", &case.action),
            resource: uid(
                &case.resource.type_name().to_string(),
                case.resource.id().unescaped(),
            ),
            context_json: case.context.to_string(),
            ..Default::default()
        };
        if let Some(field) = &case.expect.invalid {
            // Refused on both edges, naming the same field.
            let e = client.is_authorized(grpc_request).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", case.name);
            let body = json!({
                "subject": {"type": ty(&case.principal), "id": case.principal.id().unescaped()},
                "action": {"name": pack.names.action_name(&case.action)},
                "resource": {"type": ty(&case.resource), "id": case.resource.id().unescaped()},
                "context": case.context,
            });
            let a = h1.post(EVALUATION, &body).await;
            assert_eq!(a.status, 400, "{}: {}", case.name, a.body);
            assert!(
                a.body.to_string().contains(field.as_str()),
                "{}: {}",
                case.name,
                a.body
            );
            continue;
        }
        let r = client
            .is_authorized(grpc_request)
            .await
            .unwrap()
            .into_inner();
        let mut body = json!({
            "subject": {"type": ty(&case.principal), "id": case.principal.id().unescaped()},
            "action": {"name": pack.names.action_name(&case.action)},
            "resource": {"type": ty(&case.resource), "id": case.resource.id().unescaped()},
        });
        if case.context.as_object().is_some_and(|m| !m.is_empty()) {
            body["context"] = case.context.clone();
        }
        let http = if n % 2 == 0 { &mut h1 } else { &mut h2 };
        let a = http.post(EVALUATION, &body).await;
        assert_eq!(a.status, 200, "{}: {}", case.name, a.body);
        let mut grpc_ids = r.determining_policies.clone();
        grpc_ids.sort();
        assert_eq!(
            (a.body["decision"].as_bool().unwrap(), determining(&a.body)),
            (r.decision == pb::Decision::Allow as i32, grpc_ids),
            "{} {} {} {}",
            case.principal,
            case.action,
            case.resource,
            case.name
        );
        let errors = a.body["context"]["errors"]
            .as_array()
            .map(|e| e.len())
            .unwrap_or(0);
        assert_eq!(errors, r.errors.len(), "{}", case.name);
        assert_eq!(a.body["context"]["revision"].as_u64().unwrap(), r.revision);
    }
    cases.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_suite_case_is_answered_over_http_as_over_grpc_for_both_packs() {
    let dir = tempfile::tempdir().unwrap();
    let blue = start_pack(
        dir.path(),
        &live_pack(),
        &live_pack().join("tests/fixture.json"),
        None,
    )
    .await;
    let n = http_equals_grpc_for_every_case(&blue, &live_pack()).await;
    assert!(n > 100, "{n} Blue cases");
    blue.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let docs = start_docs(dir.path()).await;
    let n = http_equals_grpc_for_every_case(&docs, &docs_dir().join("policies")).await;
    assert!(n >= 25, "{n} example cases");
    docs.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_answers_with_the_reason_and_echoes_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path()).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let body = ask("bob", "can_edit", "plan").to_string();
    let a = http
        .send(
            "POST",
            EVALUATION,
            &[
                ("content-type", "application/json"),
                ("x-request-id", "req-42"),
            ],
            &body,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-request-id"], "req-42");
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.body["decision"], true);
    assert_eq!(determining(&a.body), ["docs.editor"]);
    assert!(a.body["context"]["policy_version"].is_string());

    // A deny is 200 with decision false; a forbid names itself.
    let a = http
        .post(EVALUATION, &ask("bob", "can_edit", "handbook"))
        .await;
    assert_eq!((a.status, &a.body["decision"]), (200, &json!(false)));
    assert_eq!(determining(&a.body), ["docs.locked"]);
    assert!(!a.headers.contains_key("x-request-id"));

    // Cedar names work too, and `context` is the Cedar context.
    let a = http
        .post(
            EVALUATION,
            &json!({
                "subject": {"type": "Docs::User", "id": "alice"},
                "action": {"name": "share"},
                "resource": {"type": "Docs::Document", "id": "plan"},
                "context": {"mfa": true},
            }),
        )
        .await;
    assert_eq!(a.body["decision"], true, "{}", a.body);

    // Properties become the entity's attributes for this request only.
    let mut q = ask("dave", "can_read", "pricing");
    assert_eq!(http.post(EVALUATION, &q).await.body["decision"], false);
    q["resource"]["properties"] = json!({"public": true});
    let a = http.post(EVALUATION, &q).await;
    assert_eq!(a.body["decision"], true, "{}", a.body);
    assert_eq!(determining(&a.body), ["docs.public"]);
    q["resource"]["properties"] = json!({});
    assert_eq!(http.post(EVALUATION, &q).await.body["decision"], false);
    let mut q = ask("dave", "can_read", "plan");
    q["subject"]["properties"] = json!({"name": "Dave D."});
    assert_eq!(http.post(EVALUATION, &q).await.body["decision"], false);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_merge_defaults_and_short_circuit_as_the_semantic_says() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path()).await;
    let mut http = Http::connect(running.http_addr.unwrap(), true).await;
    let doc = |id: &str| json!({"resource": {"type": "document", "id": id}});
    // alice reads plan (allow), reads handbook (allow), deletes handbook (deny: an item's
    // action overrides the default), dave (an item's subject) reads plan (deny), reads
    // pricing (allow).
    let items = json!([
        doc("plan"),
        doc("handbook"),
        {"action": {"name": "can_delete"}, "resource": {"type": "document", "id": "handbook"}},
        {"subject": {"type": "user", "id": "dave"}, "resource": {"type": "document", "id": "plan"}},
        doc("pricing"),
    ]);
    let call = |semantic: Option<&str>, items: &Value| {
        let mut b = json!({
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "can_read"},
            "evaluations": items,
        });
        if let Some(s) = semantic {
            b["options"] = json!({"evaluations_semantic": s, "another_option": 1});
        }
        b
    };
    let all = http.post(EVALUATIONS, &call(None, &items)).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(decisions(&all), [true, true, false, false, true]);
    assert_eq!(determining(&all.body["evaluations"][2]), ["docs.locked"]);
    let explicit = http
        .post(EVALUATIONS, &call(Some("execute_all"), &items))
        .await;
    assert_eq!(decisions(&explicit), [true, true, false, false, true]);

    let deny = http
        .post(EVALUATIONS, &call(Some("deny_on_first_deny"), &items))
        .await;
    assert_eq!(
        decisions(&deny),
        [true, true, false],
        "stops at the first deny"
    );
    assert_eq!(
        deny.body["evaluations"][2]["context"]["reason"],
        "deny_on_first_deny"
    );

    let mut denied_first = items.clone();
    denied_first.as_array_mut().unwrap().rotate_left(2);
    let permit = http
        .post(
            EVALUATIONS,
            &call(Some("permit_on_first_permit"), &denied_first),
        )
        .await;
    assert_eq!(
        decisions(&permit),
        [false, false, true],
        "stops at the first permit"
    );
    assert_eq!(
        permit.body["evaluations"][2]["context"]["reason"],
        "permit_on_first_permit"
    );

    // An item the schema refuses is a deny carrying its error, and a deny short-circuits.
    let bad = json!([doc("plan"), {"resource": {"type": "folder", "id": "x"}}, doc("pricing")]);
    let a = http.post(EVALUATIONS, &call(None, &bad)).await;
    assert_eq!(decisions(&a), [true, false, true]);
    let err = &a.body["evaluations"][1]["context"]["error"];
    assert_eq!(err["status"], 400);
    assert_eq!(err["field"], "evaluations[1].resource.type");
    let a = http
        .post(EVALUATIONS, &call(Some("deny_on_first_deny"), &bad))
        .await;
    assert_eq!(decisions(&a), [true, false]);

    // The top-level context is a default; an item's context replaces it.
    let share = json!({
        "subject": {"type": "user", "id": "alice"},
        "action": {"name": "can_share"},
        "resource": {"type": "document", "id": "plan"},
        "context": {"mfa": true},
        "evaluations": [{}, {"context": {"mfa": false}}],
    });
    let a = http.post(EVALUATIONS, &share).await;
    assert_eq!(decisions(&a), [true, false], "{}", a.body);
    assert_eq!(
        determining(&a.body["evaluations"][1]),
        ["docs.shareNeedsMfa"]
    );

    // Without items, the top level is one evaluation, answered as one.
    let a = http
        .post(EVALUATIONS, &ask("bob", "can_edit", "plan"))
        .await;
    assert_eq!(a.body["decision"], true, "{}", a.body);
    assert!(a.body.get("evaluations").is_none());
    let mut empty = ask("bob", "can_edit", "plan");
    empty["evaluations"] = json!([]);
    assert_eq!(http.post(EVALUATIONS, &empty).await.body["decision"], true);

    // A member neither the item nor the top level gives is that item's error; an unknown
    // semantic is the call's 400.
    let a = http
        .post(
            EVALUATIONS,
            &json!({"action": {"name": "can_read"}, "subject": {"type": "user", "id": "a"},
                    "evaluations": [doc("plan"), {}]}),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body["evaluations"][1]["context"]["error"]["field"],
        "evaluations[1].resource"
    );
    let a = http
        .post(EVALUATIONS, &call(Some("first_wins"), &items))
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["field"], "options.evaluations_semantic");
    running.shutdown().await.unwrap();
}

/// Pages a search to its end; returns the results and the number of pages.
async fn all_pages(http: &mut Http, path: &str, query: &Value, limit: u64) -> (Vec<Value>, usize) {
    let mut results = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let mut q = query.clone();
        q["page"] = json!({"limit": limit});
        if !token.is_empty() {
            q["page"]["token"] = json!(token);
        }
        let a = http.post(path, &q).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let got = a.body["results"].as_array().unwrap().clone();
        assert!(got.len() as u64 <= limit);
        assert_eq!(a.body["page"]["count"], got.len());
        results.extend(got);
        pages += 1;
        token = a.body["page"]["next_token"].as_str().unwrap().to_string();
        if token.is_empty() {
            return (results, pages);
        }
        assert!(pages < 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_page_to_the_end_and_refuse_a_changed_query() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path()).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let ids = |r: &[Value]| -> Vec<String> {
        r.iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Resources: alice may read all three documents; one per page, in id order.
    let query = json!({
        "subject": {"type": "user", "id": "alice"},
        "action": {"name": "can_read"},
        "resource": {"type": "document", "id": "ignored"},
    });
    let (results, pages) = all_pages(&mut http, "/access/v1/search/resource", &query, 1).await;
    assert_eq!(ids(&results), ["handbook", "plan", "pricing"]);
    assert_eq!(pages, 3);
    assert!(results.iter().all(|r| r["type"] == "document"));
    let (results, _) = all_pages(&mut http, "/access/v1/search/resource", &query, 100).await;
    assert_eq!(ids(&results), ["handbook", "plan", "pricing"]);
    let mut edit = query.clone();
    edit["action"]["name"] = json!("can_edit");
    let (results, _) = all_pages(&mut http, "/access/v1/search/resource", &edit, 2).await;
    assert_eq!(ids(&results), ["plan", "pricing"]);

    // Subjects: who may read plan (transitively, through team eng).
    let query_s = json!({
        "subject": {"type": "user"},
        "action": {"name": "can_read"},
        "resource": {"type": "document", "id": "plan"},
    });
    let (results, _) = all_pages(&mut http, "/access/v1/search/subject", &query_s, 2).await;
    assert_eq!(ids(&results), ["alice", "bob", "carol"]);
    assert!(results.iter().all(|r| r["type"] == "user"));

    // Actions: what alice may do on plan, two per page, by name.
    let query_a = json!({
        "subject": {"type": "user", "id": "alice"},
        "resource": {"type": "document", "id": "plan"},
        "context": {"mfa": true},
    });
    let (results, pages) = all_pages(&mut http, "/access/v1/search/action", &query_a, 2).await;
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["can_delete", "can_edit", "can_read", "can_share"]);
    assert_eq!(pages, 2);
    let mut no_mfa = query_a.clone();
    no_mfa["context"] = json!({"mfa": false});
    let (results, _) = all_pages(&mut http, "/access/v1/search/action", &no_mfa, 10).await;
    assert_eq!(results.len(), 3, "no share without a second factor");

    // A follow-up that changes the query, or the limit, is refused.
    let mut first = query.clone();
    first["page"] = json!({"limit": 1});
    let a = http.post("/access/v1/search/resource", &first).await;
    let token = a.body["page"]["next_token"].as_str().unwrap().to_string();
    assert!(!token.is_empty());
    let mut changed = edit.clone();
    changed["page"] = json!({"limit": 1, "token": token});
    let a = http.post("/access/v1/search/resource", &changed).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["field"], "page.token");
    let mut relimited = query.clone();
    relimited["page"] = json!({"limit": 2, "token": token});
    let a = http.post("/access/v1/search/resource", &relimited).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["field"], "page.token");
    let mut forged = query.clone();
    forged["page"] = json!({"limit": 1, "token": "1.abcdef"});
    assert_eq!(
        http.post("/access/v1/search/resource", &forged)
            .await
            .status,
        400
    );
    let mut action_token = query_a.clone();
    action_token["page"] = json!({"limit": 1, "token": token});
    let a = http.post("/access/v1/search/action", &action_token).await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (400, &json!("page.token"))
    );

    // Bad limits and missing members name the field.
    for (page, field) in [
        (json!({"limit": 0}), "page.limit"),
        (json!({"limit": 10_001}), "page.limit"),
        (json!({"limit": "ten"}), "page.limit"),
    ] {
        let mut q = query.clone();
        q["page"] = page;
        let a = http.post("/access/v1/search/resource", &q).await;
        assert_eq!(
            (a.status, a.body["error"]["field"].as_str()),
            (400, Some(field))
        );
    }
    let a = http
        .post(
            "/access/v1/search/subject",
            &json!({"subject": {"type": "user"}}),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (400, &json!("action"))
    );
    let mut wrong = query_s.clone();
    wrong["resource"]["id"] = json!("");
    let a = http.post("/access/v1/search/subject", &wrong).await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (400, &json!("resource.id"))
    );
    // An unknown type finds nothing (authzen_requests has the rest of that rule).
    let mut wrong = query_s.clone();
    wrong["subject"]["type"] = json!("robot");
    let a = http.post("/access/v1/search/subject", &wrong).await;
    assert_eq!((a.status, &a.body["results"]), (200, &json!([])));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_results_equal_the_grpc_listing_for_blue() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_pack(
        dir.path(),
        &pack(),
        &pack().join("tests/fixture.json"),
        None,
    )
    .await;
    let mut client = grpc(&running).await;
    let mut http = Http::connect(running.http_addr.unwrap(), true).await;
    for (user, action, ty, cedar) in [
        ("ada", "viewProject", "project", "Blue::Project"),
        ("cleo", "viewRecord", "record", "Blue::Record"),
        ("dora", "viewDashboard", "dashboard", "Blue::Dashboard"),
    ] {
        let r = client
            .list_resources(pb::ListResourcesRequest {
                principal: uid("Blue::User", user),
                action: uid("", action),
                resource_type: cedar.into(),
                page_size: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let want: BTreeSet<String> = r.resources.iter().map(|e| e.id.clone()).collect();
        let q = json!({
            "subject": {"type": "user", "id": user},
            "action": {"name": action},
            "resource": {"type": ty},
        });
        let (results, _) = all_pages(&mut http, "/access/v1/search/resource", &q, 3).await;
        let got: BTreeSet<String> = results
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, want, "{user} {action}");
        assert!(!want.is_empty(), "{user} {action}");
    }
    let r = client
        .list_subjects(pb::ListSubjectsRequest {
            resource: uid("Blue::Project", "apollo"),
            action: uid("", "editWiki"),
            principal_type: "Blue::User".into(),
            page_size: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let want: Vec<String> = r.subjects.iter().map(|e| e.id.clone()).collect();
    let q = json!({
        "subject": {"type": "user"},
        "action": {"name": "editWiki"},
        "resource": {"type": "project", "id": "apollo"},
    });
    let (results, _) = all_pages(&mut http, "/access/v1/search/subject", &q, 1).await;
    let got: Vec<String> = results
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_a_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path()).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let json_ct = [("content-type", "application/json")];
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed JSON", "{\"subject\": ".into(), "request"),
        ("not an object", "[1, 2]".into(), "request"),
        ("trailing bytes", format!("{} x", ask("bob", "can_read", "plan")), "request"),
        (
            "a number for an id",
            r#"{"subject":{"type":"user","id":3},"action":{"name":"can_read"},"resource":{"type":"document","id":"plan"}}"#.into(),
            "subject.id",
        ),
        (
            "no type",
            r#"{"subject":{"id":"bob"},"action":{"name":"can_read"},"resource":{"type":"document","id":"plan"}}"#.into(),
            "subject",
        ),
        (
            "no subject",
            r#"{"action":{"name":"can_read"},"resource":{"type":"document","id":"plan"}}"#.into(),
            "subject",
        ),
        (
            "unknown subject type",
            r#"{"subject":{"type":"robot","id":"r2"},"action":{"name":"can_read"},"resource":{"type":"document","id":"plan"}}"#.into(),
            "subject.type",
        ),
        (
            "unknown resource type",
            r#"{"subject":{"type":"user","id":"bob"},"action":{"name":"can_read"},"resource":{"type":"Blue::Project","id":"x"}}"#.into(),
            "resource.type",
        ),
        (
            "unknown action",
            r#"{"subject":{"type":"user","id":"bob"},"action":{"name":"can_fly"},"resource":{"type":"document","id":"plan"}}"#.into(),
            "action.name",
        ),
        (
            "action of the wrong type",
            r#"{"subject":{"type":"user","id":"bob"},"action":{"name":7},"resource":{"type":"document","id":"plan"}}"#.into(),
            "action.name",
        ),
        (
            "empty id",
            r#"{"subject":{"type":"user","id":""},"action":{"name":"can_read"},"resource":{"type":"document","id":"plan"}}"#.into(),
            "subject.id",
        ),
        (
            "context of the wrong shape",
            r#"{"subject":{"type":"user","id":"bob"},"action":{"name":"can_share"},"resource":{"type":"document","id":"plan"},"context":{"mfa":"yes"}}"#.into(),
            "context",
        ),
        (
            "context as a string",
            r#"{"subject":{"type":"user","id":"bob"},"action":{"name":"can_share"},"resource":{"type":"document","id":"plan"},"context":"mfa"}"#.into(),
            "context",
        ),
        (
            "a property of the wrong type",
            r#"{"subject":{"type":"user","id":"bob"},"action":{"name":"can_read"},"resource":{"type":"document","id":"plan","properties":{"public":"yes"}}}"#.into(),
            "resource.properties",
        ),
    ];
    for (what, body, field) in cases {
        let a = http.send("POST", EVALUATION, &json_ct, &body).await;
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert_eq!(a.body["error"]["field"], field, "{what}: {}", a.body);
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{what}: {message}");
        assert_eq!(a.body["error"]["status"], 400);
    }
    // No JSON content type.
    let body = ask("bob", "can_read", "plan").to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let a = http.send("POST", EVALUATION, &headers, &body).await;
        assert_eq!(
            (a.status, &a.body["error"]["field"]),
            (400, &json!("Content-Type"))
        );
    }
    let a = http
        .send(
            "POST",
            EVALUATION,
            &[("content-type", "application/json; charset=utf-8")],
            &body,
        )
        .await;
    assert_eq!(a.status, 200);
    // A body over the limit, an unknown path, a bad revision header.
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let a = http.send("POST", EVALUATION, &json_ct, &huge).await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (400, &json!("request"))
    );
    // The server stops reading an oversized body, so that connection is done.
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let a = http
        .post("/access/v2/evaluation", &ask("bob", "can_read", "plan"))
        .await;
    assert_eq!(a.status, 404);
    let a = http
        .send(
            "POST",
            EVALUATION,
            &[
                ("content-type", "application/json"),
                ("x-min-revision", "soon"),
            ],
            &body,
        )
        .await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (400, &json!("x-min-revision"))
    );
    let a = http
        .send(
            "POST",
            EVALUATION,
            &[
                ("content-type", "application/json"),
                ("x-min-revision", "1"),
            ],
            &body,
        )
        .await;
    assert_eq!(a.status, 200);
    // A revision not reached within max_revision_wait_ms: 412, as the README says.
    let a = http
        .send(
            "POST",
            EVALUATION,
            &[
                ("content-type", "application/json"),
                ("x-min-revision", "999999"),
            ],
            &body,
        )
        .await;
    assert_eq!(a.status, 412, "{:?}", a.body);
    let said = a.body["error"]["message"].as_str().unwrap();
    assert!(said.contains("revision 999999 not reached"), "{said}");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_and_discovery_names_the_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_pack(
        dir.path(),
        &docs_dir().join("policies"),
        &docs_dir().join("data.json"),
        Some("s3cret"),
    )
    .await;
    let addr = running.http_addr.unwrap();
    let mut http = Http::connect(addr, false).await;
    let body = ask("bob", "can_read", "plan").to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ] {
        let mut headers = vec![("content-type", "application/json"), ("x-request-id", "r1")];
        headers.extend(auth.map(|a| ("authorization", a)));
        for path in [EVALUATION, EVALUATIONS, "/access/v1/search/action"] {
            let a = http.send("POST", path, &headers, &body).await;
            assert_eq!(a.status, 401, "{auth:?} {path}");
            assert!(a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            assert_eq!(a.headers["x-request-id"], "r1");
        }
    }
    let a = http
        .send(
            "POST",
            EVALUATION,
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer s3cret"),
            ],
            &body,
        )
        .await;
    assert_eq!((a.status, &a.body["decision"]), (200, &json!(true)));
    // The scheme in any case (RFC 7235); two Authorization headers are refused, even when
    // both are right.
    let json = ("content-type", "application/json");
    let lower = http
        .send(
            "POST",
            EVALUATION,
            &[json, ("authorization", "bearer s3cret")],
            &body,
        )
        .await;
    assert_eq!(lower.status, 200);
    let twice = [
        json,
        ("authorization", "Bearer s3cret"),
        ("authorization", "Bearer s3cret"),
    ];
    let two = http.send("POST", EVALUATION, &twice, &body).await;
    assert_eq!(two.status, 401);

    // Discovery, without a token, over HTTP/1.1 and h2.
    for h2 in [false, true] {
        let mut http = Http::connect(addr, h2).await;
        let a = http
            .send("GET", "/.well-known/authzen-configuration", &[], "")
            .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["content-type"], "application/json");
        let base = format!("http://{addr}");
        assert_eq!(a.body["policy_decision_point"], base.as_str());
        for (key, path) in [
            ("access_evaluation_endpoint", "/access/v1/evaluation"),
            ("access_evaluations_endpoint", "/access/v1/evaluations"),
            ("search_subject_endpoint", "/access/v1/search/subject"),
            ("search_resource_endpoint", "/access/v1/search/resource"),
            ("search_action_endpoint", "/access/v1/search/action"),
        ] {
            assert_eq!(a.body[key], format!("{base}{path}"), "{key}");
        }
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut c = common::config(dir.path(), Limits::default());
    c.pack = PackSpec::new(docs_dir().join("policies"), &[]);
    c.seed = Some(docs_dir().join("data.json"));
    c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    c.tls = Some(server::TlsFiles {
        cert: cert_path.clone(),
        key: key_path,
        client_ca: None,
    });
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    let addr = running.http_addr.unwrap();
    for h2 in [false, true] {
        let mut http = Http::connect_tls(addr, &cert_path, h2).await;
        let a = http.post(EVALUATION, &ask("bob", "can_edit", "plan")).await;
        assert_eq!(
            (a.status, &a.body["decision"]),
            (200, &json!(true)),
            "h2 {h2}"
        );
        let a = http
            .send("GET", "/.well-known/authzen-configuration", &[], "")
            .await;
        assert_eq!(
            a.body["policy_decision_point"],
            format!("https://localhost:{}", addr.port())
        );
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_are_counted_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = common::config(dir.path(), Limits::default());
    c.pack = PackSpec::new(docs_dir().join("policies"), &[]);
    c.seed = Some(docs_dir().join("data.json"));
    c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    for _ in 0..3 {
        http.post(EVALUATION, &ask("bob", "can_edit", "plan")).await;
    }
    http.post(EVALUATION, &ask("bob", "can_edit", "handbook"))
        .await;
    let a = http.post(EVALUATION, &json!({"subject": {}})).await;
    assert_eq!(a.status, 400);
    let text = common::get_metrics(running.metrics_addr.unwrap());
    let line = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
            .rsplit_once(' ')
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    assert_eq!(
        line("blue_authz_decisions_total{action=\"edit\",decision=\"allow\"}"),
        3.0
    );
    assert_eq!(
        line("blue_authz_decisions_total{action=\"edit\",decision=\"deny\"}"),
        1.0
    );
    assert_eq!(
        line("blue_authz_request_duration_seconds_count{method=\"authzen.evaluation\"}"),
        5.0
    );
    assert_eq!(
        line("blue_authz_http_errors_total{method=\"authzen.evaluation\",status=\"400\"}"),
        1.0
    );
    running.shutdown().await.unwrap();
}

/// The real binary serves the example pack (its suites pass at start-up, or it would not
/// serve), answers AuthZEN calls, and writes them to the decision log like gRPC calls.
#[test]
fn the_binary_serves_the_example_pack_over_authzen_with_a_decision_log() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("http-token");
    std::fs::write(&token_file, "from-a-file-7\n").unwrap();
    let mut server = Binary::serve(&docs_dir().join("policies"), &dir.path().join("docs.redb"))
        .arg("--http-token-file")
        .arg(&token_file)
        .args(["--http-listen", "127.0.0.1:0", "--decision-log", "true"])
        .arg("--seed")
        .arg(docs_dir().join("data.json"))
        .stdout_piped()
        .spawn();
    let addr = server.wait_serving().http.expect("an AuthZEN listener");
    let stdout = server.stdout.take().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answers = rt.block_on(async {
        let mut http = Http::connect(addr, false).await;
        let auth = [
            ("content-type", "application/json"),
            ("authorization", "Bearer from-a-file-7"),
        ];
        let body = ask("alice", "can_delete", "plan").to_string();
        let a = http.send("POST", EVALUATION, &auth, &body).await;
        // The token file's token is required.
        let refused = http
            .post(EVALUATION, &ask("alice", "can_delete", "plan"))
            .await;
        assert_eq!(refused.status, 401);
        let b = http
            .send(
                "POST",
                EVALUATIONS,
                &[
                    ("content-type", "application/json"),
                    ("x-request-id", "log-me"),
                    ("authorization", "Bearer from-a-file-7"),
                ],
                &json!({"subject": {"type": "user", "id": "dave"}, "action": {"name": "can_read"},
                            "evaluations": [{"resource": {"type": "document", "id": "handbook"}}]})
                .to_string(),
            )
            .await;
        (a, b)
    });
    assert_eq!(
        (answers.0.status, &answers.0.body["decision"]),
        (200, &json!(true))
    );
    assert_eq!(decisions(&answers.1), [true]);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut found = Vec::new();
    while found.len() < 2 {
        let line = lines.next().expect("a decision log line").unwrap();
        if line.contains("blue_authz::decision") || line.contains("\"method\"") {
            found.push(line);
        }
    }
    drop(server);
    assert!(found[0].contains("authzen.evaluation"), "{}", found[0]);
    assert!(found[0].contains("docs.owner"), "{}", found[0]);
    assert!(found[1].contains("authzen.evaluations"), "{}", found[1]);
    assert!(found[1].contains("log-me"), "{}", found[1]);
}

/// Reads one HTTP/1.1 response with a Content-Length body from a raw connection: its head
/// (status line and headers, lowercased names) and body.
async fn read_response(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while buf.len() < head_end + length {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed within a body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    (head, body)
}

/// A GET or PUT with a body to an AuthZEN path is answered 405 naming the method, with
/// `Allow`, and the body is read: the same keep-alive connection then takes the next POST,
/// every time (a pooled client's next request used to fail about half the time). A body too
/// large to read is answered with `Connection: close`.
#[tokio::test]
async fn a_wrong_method_with_a_body_leaves_the_connection_usable() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path()).await;
    let addr = running.http_addr.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let good = json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "can_read"},
        "resource": {"type": "document", "id": "plan"}})
    .to_string();
    for round in 0..20 {
        let method = if round % 2 == 0 { "GET" } else { "PUT" };
        let junk = "x".repeat(5_000 + round);
        let wrong = format!(
            "{method} /access/v1/evaluation HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{junk}",
            junk.len()
        );
        tcp.write_all(wrong.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut tcp).await;
        assert!(head.starts_with("http/1.1 405"), "round {round}: {head}");
        assert!(head.contains("allow: post"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["field"], "method", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!(
                    "{method} is not a method of `/access/v1/evaluation`"
                )),
            "{body}"
        );
        let post = format!(
            "POST /access/v1/evaluation HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{good}",
            good.len()
        );
        tcp.write_all(post.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut tcp).await;
        assert!(
            head.starts_with("http/1.1 200"),
            "round {round}: {head} {body}"
        );
        assert!(body.contains("\"decision\""), "{body}");
    }

    // More than the server reads of a refused body: it says it closes the connection.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let big = 2 << 20;
    let head = format!(
        "PUT /access/v1/evaluations HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {big}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        w.write_all(head.as_bytes()).await?;
        // The server may stop reading once it has answered.
        w.write_all(&vec![b'x'; big]).await
    });
    let (head, _) = read_response(&mut r).await;
    assert!(head.starts_with("http/1.1 405"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let _ = writer.await;
    running.shutdown().await.unwrap();
}
