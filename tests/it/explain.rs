//! Explanations over real sockets: `explain` on IsAuthorized and BatchIsAuthorized, and
//! `options.explain` on AuthZEN's evaluation and evaluations (`context.reason_admin`). Off by
//! default; a deny that nothing permitted names each permit with the part that failed.

use std::path::Path;

use crate::common;
use crate::common::http::Http;
use blue_authz::engine::pack::PackSpec;
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use blue_authz::service::server::{self, Limits, Running};
use serde_json::json;

async fn start(dir: &Path, overlays: &[String]) -> Running {
    let mut c = common::config(dir, Limits::default());
    c.pack = PackSpec::new(common::pack(), overlays);
    c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    running
}

fn ask(user: &str, action: &str, rtype: &str, rid: &str, explain: bool) -> pb::IsAuthorizedRequest {
    pb::IsAuthorizedRequest {
        explain,
        ..common::ask(user, action, rtype, rid)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_explains_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &["clients-read-only".to_string()]).await;
    let mut c = AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap();
    // Off by default.
    let plain = c
        .is_authorized(ask("vic", "editWiki", "Blue::Project", "apollo", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plain.decision, pb::Decision::Deny as i32);
    assert!(plain.explanation.is_none());
    // A deny that nothing permitted: the permit, its failed part, the values it read.
    let r = c
        .is_authorized(ask("vic", "editWiki", "Blue::Project", "apollo", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Deny as i32);
    let e = r.explanation.expect("an explanation");
    assert_eq!(e.why, "nothing_permits");
    assert_eq!(e.permits.len(), 1, "{e:?}");
    let u = &e.permits[0];
    assert_eq!(u.policy, "project.editWiki");
    assert_eq!(u.failed, "principal in resource.member");
    assert_eq!(
        u.words,
        "`principal` (Blue::User::\"vic\") is not in `resource.member` (Blue::Role::\"apollo/member\")"
    );
    let principal = u.read.iter().find(|r| r.expr == "principal").unwrap();
    assert!(
        principal
            .ancestors
            .contains(&"Blue::Role::\"apollo/view\"".to_string()),
        "{principal:?}"
    );
    assert!(u.error.is_empty());
    // An allow names its permits; a deny by a forbid, the forbid.
    let r = c
        .is_authorized(ask("max", "editWiki", "Blue::Project", "apollo", true))
        .await
        .unwrap()
        .into_inner();
    let e = r.explanation.unwrap();
    assert_eq!((e.why.as_str(), e.permits.len()), ("permitted", 0));
    assert_eq!(r.determining_policies, vec!["project.editWiki"]);
    let r = c
        .is_authorized(ask("cleo", "createRecord", "Blue::Project", "apollo", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.explanation.unwrap().why, "forbidden");
    assert_eq!(
        r.determining_policies,
        vec!["overlay.clientsReadOnly.createRecord"]
    );
    // In a batch, each request as it asks.
    let b = c
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            requests: vec![
                ask("vic", "editWiki", "Blue::Project", "apollo", true),
                ask("vic", "editWiki", "Blue::Project", "apollo", false),
            ],
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        b.responses[0].explanation.as_ref().unwrap().permits[0].policy,
        "project.editWiki"
    );
    assert!(b.responses[1].explanation.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authzen_explains_in_reason_admin_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[]).await;
    let mut h = Http::connect(running.http_addr.unwrap(), false).await;
    let item = json!({
        "subject": {"type": "user", "id": "cleo"},
        "action": {"name": "deleteRecord"},
        "resource": {"type": "record", "id": "apollo-by-max"},
    });
    // Off by default.
    let a = h.post("/access/v1/evaluation", &item).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body["context"].get("reason_admin").is_none(),
        "{}",
        a.body
    );
    let mut asked = item.clone();
    asked["options"] = json!({"explain": true});
    let a = h.post("/access/v1/evaluation", &asked).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["decision"], false);
    let why = &a.body["context"]["reason_admin"];
    assert_eq!(why["why"], "nothing_permits", "{}", a.body);
    let unmet: Vec<(&str, &str)> = why["unmet_permits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["policy"].as_str().unwrap(), u["failed"].as_str().unwrap()))
        .collect();
    assert_eq!(
        unmet,
        vec![
            ("record.deleteAny", "principal in resource.project.member"),
            ("record.deleteOwn", "resource.creator == principal"),
        ]
    );
    // On evaluations, for every item.
    let a = h
        .post(
            "/access/v1/evaluations",
            &json!({"evaluations": [item.clone(), item], "options": {"explain": true}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    for d in a.body["evaluations"].as_array().unwrap() {
        assert_eq!(
            d["context"]["reason_admin"]["why"], "nothing_permits",
            "{d}"
        );
    }
    // A wrong type is a 400 naming the option.
    let mut bad = json!({"evaluations": [], "options": {"explain": "yes"}});
    bad["subject"] = json!({"type": "user", "id": "cleo"});
    let a = h.post("/access/v1/evaluations", &bad).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.to_string().contains("explain"), "{}", a.body);
}
