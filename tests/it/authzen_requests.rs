//! The AuthZEN edge as the conformance material drives it, over real HTTP (and gRPC where the
//! same rule holds there): action properties placed where the pack says, undeclared context
//! members and properties dropped where the pack reads them open, searches that find nothing
//! for unknown types, actions and ids, per-item errors in batches, decisions without reasons,
//! HTTP Basic client credentials, and the action search over a whole screen. On the
//! document-sharing example pack, a copy of it that declares `[requests]`, and Blue's pack.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common;
use crate::common::http::{Answer, Http};
use crate::common::{pack, root, uid};
use blue_authz::engine::pack::PackSpec;
use blue_authz::service::config::ServeConfig;
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use blue_authz::service::server::{self, Limits, Running};
use serde_json::{json, Value};

const EVALUATION: &str = "/access/v1/evaluation";
const EVALUATIONS: &str = "/access/v1/evaluations";
const SEARCH_SUBJECT: &str = "/access/v1/search/subject";
const SEARCH_RESOURCE: &str = "/access/v1/search/resource";
const SEARCH_ACTION: &str = "/access/v1/search/action";

fn docs() -> PathBuf {
    root().join("examples/docs")
}

/// A server of `policies` seeded with `seed`, HTTP included, `tweak`ed.
async fn start(
    dir: &Path,
    policies: &Path,
    seed: &Path,
    tweak: impl FnOnce(&mut ServeConfig),
) -> Running {
    let mut c = common::config(dir, Limits::default());
    c.pack = PackSpec::new(policies, &[]);
    c.seed = Some(seed.to_path_buf());
    c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    tweak(&mut c);
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    running
}

/// The docs pack on its data, `tweak`ed.
async fn start_docs(dir: &Path, tweak: impl FnOnce(&mut ServeConfig)) -> Running {
    start(
        dir,
        &docs().join("policies"),
        &docs().join("data.json"),
        tweak,
    )
    .await
}

async fn grpc(running: &Running) -> AuthorizerClient<tonic::transport::Channel> {
    AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap()
}

/// A copy of the docs pack that declares how requests are read: action properties at
/// `place`, `delete`'s context and documents' properties open, and a permit that reads an
/// action property (editors may soft-delete).
fn open_docs(dir: &Path, place: &str) -> PathBuf {
    let to = dir.join(format!("open-docs-{}", place.replace('.', "-")));
    // The suite names its data as `../../data.json`.
    std::fs::copy(docs().join("data.json"), dir.join("data.json")).unwrap();
    std::fs::create_dir_all(to.join("tests")).unwrap();
    let from = docs().join("policies");
    let schema = std::fs::read_to_string(from.join("schema.cedarschema")).unwrap();
    let context = match place {
        "context" => r#"{ "mfa"?: Bool, "soft"?: Bool }"#,
        _ => r#"{ "mfa"?: Bool, "action"?: { "soft"?: Bool } }"#,
    };
    let schema = schema.replace(r#"{ "mfa"?: Bool }"#, context);
    assert!(
        schema.contains(context),
        "the docs schema's context changed"
    );
    std::fs::write(to.join("schema.cedarschema"), schema).unwrap();
    let soft = match place {
        "context" => "context has soft && context.soft",
        _ => "context has action && context.action has soft && context.action.soft",
    };
    let policies = std::fs::read_to_string(from.join("docs.cedar")).unwrap()
        + &format!(
            "\n@id(\"docs.editorSoftDeletes\")\npermit (principal, action == Docs::Action::\"delete\", resource)\nwhen {{ resource.editors.contains(principal) && {soft} }};\n"
        );
    std::fs::write(to.join("docs.cedar"), policies).unwrap();
    let names = std::fs::read_to_string(from.join("names.toml")).unwrap()
        + &format!(
            "\n[requests]\naction_properties = \"{place}\"\nopen_context = [\"delete\"]\nopen_properties = [\"document\"]\n"
        );
    std::fs::write(to.join("names.toml"), names).unwrap();
    std::fs::copy(from.join("tests/docs.toml"), to.join("tests/docs.toml")).unwrap();
    to
}

fn ask(subject: &str, action: &str, resource: &str) -> Value {
    json!({
        "subject": {"type": "user", "id": subject},
        "action": {"name": action},
        "resource": {"type": "document", "id": resource},
    })
}

fn with(mut v: Value, key: &str, member: Value) -> Value {
    v[key] = member;
    v
}

fn error_field(a: &Answer) -> &str {
    a.body["error"]["field"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_properties_are_ignored_unless_the_pack_places_them() {
    let dir = tempfile::tempdir().unwrap();
    // The docs pack declares nothing: properties are ignored, the decision is the plain one.
    let strict = start_docs(dir.path(), |_| {}).await;
    let mut http = Http::connect(strict.http_addr.unwrap(), false).await;
    for (who, doc, want) in [("alice", "plan", true), ("bob", "plan", false)] {
        let mut q = ask(who, "can_delete", doc);
        q["action"]["properties"] = json!({"soft": true, "method": "DELETE"});
        let a = http.post(EVALUATION, &q).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["decision"], want, "{who}: {}", a.body);
    }
    strict.shutdown().await.unwrap();

    // As one context attribute, and merged into the context.
    for place in ["context.action", "context"] {
        let policies = open_docs(dir.path(), place);
        let sub = dir.path().join(place);
        std::fs::create_dir_all(&sub).unwrap();
        let running = start(&sub, &policies, &docs().join("data.json"), |_| {}).await;
        let mut http = Http::connect(running.http_addr.unwrap(), true).await;
        let delete = |soft: Value| {
            let mut q = ask("bob", "can_delete", "plan");
            q["action"]["properties"] = json!({"soft": soft});
            q
        };
        // bob edits plan: a soft delete is his, a hard one is not.
        let a = http.post(EVALUATION, &delete(json!(true))).await;
        assert_eq!(
            (a.status, &a.body["decision"]),
            (200, &json!(true)),
            "{place}: {}",
            a.body
        );
        assert_eq!(
            a.body["context"]["determining_policies"],
            json!(["docs.editorSoftDeletes"])
        );
        let a = http.post(EVALUATION, &delete(json!(false))).await;
        assert_eq!(
            (a.status, &a.body["decision"]),
            (200, &json!(false)),
            "{place}"
        );
        // Validated by the schema like any context.
        let a = http.post(EVALUATION, &delete(json!("yes"))).await;
        assert_eq!(a.status, 400, "{place}: {}", a.body);
        assert!(
            error_field(&a).starts_with("context"),
            "{place}: {}",
            a.body
        );
        // A member both the properties and the context give is refused, not chosen between.
        let clash = match place {
            "context" => json!({"soft": false}),
            _ => json!({"action": {"soft": false}}),
        };
        let a = http
            .post(EVALUATION, &with(delete(json!(true)), "context", clash))
            .await;
        assert_eq!(a.status, 400, "{place}: {}", a.body);
        assert!(
            error_field(&a).starts_with("action.properties"),
            "{}",
            a.body
        );
        // The same in searches: bob soft-deletes plan only.
        let q = json!({
            "subject": {"type": "user", "id": "bob"},
            "action": {"name": "can_delete", "properties": {"soft": true}},
            "resource": {"type": "document"},
        });
        let a = http.post(SEARCH_RESOURCE, &q).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            a.body["results"],
            json!([{"type": "document", "id": "plan"}])
        );
        running.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_members_are_dropped_only_where_the_pack_reads_them_open() {
    let dir = tempfile::tempdir().unwrap();
    let policies = open_docs(dir.path(), "context.action");
    let running = start(dir.path(), &policies, &docs().join("data.json"), |_| {}).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let gateway = json!({
        "ip": "10.0.0.7",
        "time": "2026-12-06T10:00:00Z",
        "headers": {"user-agent": "curl"},
        "action": {"soft": true, "reason": "cleanup"},
    });
    // `delete` reads its context open: the gateway's members go, the declared one decides.
    let a = http
        .post(
            EVALUATION,
            &with(ask("bob", "can_delete", "plan"), "context", gateway.clone()),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["decision"]),
        (200, &json!(true)),
        "{}",
        a.body
    );
    // `share` does not: the same members are the schema's 400, naming the context.
    let a = http
        .post(
            EVALUATION,
            &with(
                ask("alice", "can_share", "plan"),
                "context",
                json!({"mfa": true, "ip": "10.0.0.7"}),
            ),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(error_field(&a).starts_with("context"), "{}", a.body);
    // Documents' properties are open, users' are not.
    let mut q = ask("dave", "can_read", "plan");
    q["resource"]["properties"] = json!({"public": true, "color": "red"});
    let a = http.post(EVALUATION, &q).await;
    assert_eq!(
        (a.status, &a.body["decision"]),
        (200, &json!(true)),
        "{}",
        a.body
    );
    let mut q = ask("dave", "can_read", "plan");
    q["subject"]["properties"] = json!({"name": "Dave", "email": "d@example.com"});
    let a = http.post(EVALUATION, &q).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(error_field(&a), "subject.properties", "{}", a.body);
    // The engine does it, so gRPC callers get the same.
    let mut client = grpc(&running).await;
    let r = client
        .is_authorized(pb::IsAuthorizedRequest {
            principal: uid("Docs::User", "bob"),
            action: uid("", "delete"),
            resource: uid("Docs::Document", "plan"),
            context_json: gateway.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Allow as i32);
    running.shutdown().await.unwrap();

    // The strict docs pack refuses the same undeclared members.
    let sub = dir.path().join("strict");
    std::fs::create_dir_all(&sub).unwrap();
    let strict = start_docs(&sub, |_| {}).await;
    let mut http = Http::connect(strict.http_addr.unwrap(), false).await;
    let a = http
        .post(
            EVALUATION,
            &with(
                ask("bob", "can_delete", "plan"),
                "context",
                json!({"ip": "10.0.0.7"}),
            ),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    strict.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_find_nothing_for_an_unknown_type_action_or_id() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path(), |_| {}).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let resource_search = |subject: Value, action: &str, ty: &str| json!({"subject": subject, "action": {"name": action}, "resource": {"type": ty}});
    let user = |id: &str| json!({"type": "user", "id": id});
    // A known principal finds the public handbook (docs.public permits anyone).
    let a = http
        .post(
            SEARCH_RESOURCE,
            &resource_search(user("dave"), "can_read", "document"),
        )
        .await;
    assert_eq!(
        a.body["results"],
        json!([{"type": "document", "id": "handbook"}]),
        "{}",
        a.body
    );
    let empty: Vec<(&str, &str, Value)> = vec![
        (
            "unknown subject id",
            SEARCH_RESOURCE,
            resource_search(user("nobody"), "can_read", "document"),
        ),
        (
            "unknown subject type",
            SEARCH_RESOURCE,
            resource_search(json!({"type": "robot", "id": "r2"}), "can_read", "document"),
        ),
        (
            "unknown resource type",
            SEARCH_RESOURCE,
            resource_search(user("dave"), "can_read", "spaceship"),
        ),
        (
            "unknown action",
            SEARCH_RESOURCE,
            resource_search(user("dave"), "can_fly", "document"),
        ),
        (
            "action on the wrong types",
            SEARCH_RESOURCE,
            resource_search(user("dave"), "can_read", "team"),
        ),
        (
            "unknown resource id",
            SEARCH_SUBJECT,
            json!({"subject": {"type": "user"}, "action": {"name": "can_read"}, "resource": {"type": "document", "id": "ghost"}}),
        ),
        (
            "unknown subject type searched",
            SEARCH_SUBJECT,
            json!({"subject": {"type": "robot"}, "action": {"name": "can_read"}, "resource": {"type": "document", "id": "plan"}}),
        ),
        (
            "unknown subject id, actions",
            SEARCH_ACTION,
            json!({"subject": user("nobody"), "resource": {"type": "document", "id": "handbook"}}),
        ),
        (
            "unknown resource type, actions",
            SEARCH_ACTION,
            json!({"subject": user("dave"), "resource": {"type": "spaceship", "id": "x"}}),
        ),
    ];
    for (what, path, q) in empty {
        let a = http.post(path, &q).await;
        assert_eq!(a.status, 200, "{what}: {}", a.body);
        assert_eq!(a.body["results"], json!([]), "{what}: {}", a.body);
        assert_eq!(a.body["page"]["next_token"], "", "{what}");
        assert!(
            a.body["context"]["no_results"].is_string(),
            "{what}: {}",
            a.body
        );
    }
    // Malformed JSON and members of the wrong JSON type stay 400.
    let json_ct = [("content-type", "application/json")];
    let a = http
        .send("POST", SEARCH_RESOURCE, &json_ct, "{\"subject\": ")
        .await;
    assert_eq!((a.status, error_field(&a)), (400, "request"));
    let q = json!({"subject": {"type": "user", "id": 7}, "action": {"name": "can_read"}, "resource": {"type": "document"}});
    let a = http.post(SEARCH_RESOURCE, &q).await;
    assert_eq!(
        (a.status, error_field(&a)),
        (400, "subject.id"),
        "{}",
        a.body
    );
    let q =
        json!({"subject": {"type": 5, "id": "x"}, "resource": {"type": "document", "id": "plan"}});
    let a = http.post(SEARCH_ACTION, &q).await;
    assert_eq!(
        (a.status, error_field(&a)),
        (400, "subject.type"),
        "{}",
        a.body
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_item_never_costs_the_caller_the_other_answers() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path(), |_| {}).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    // No top-level subject: the second item lacks one.
    let q = json!({
        "action": {"name": "can_read"},
        "evaluations": [
            {"subject": {"type": "user", "id": "alice"}, "resource": {"type": "document", "id": "plan"}},
            {"resource": {"type": "document", "id": "plan"}},
            {"subject": {"type": "robot", "id": "r2"}, "resource": {"type": "document", "id": "plan"}},
            {"subject": {"type": "user", "id": "dave"}, "resource": {"type": "document", "id": "plan"}},
            {"subject": {"type": "user", "id": "dave"}, "resource": {"type": "document", "id": "handbook"}},
        ],
    });
    let a = http.post(EVALUATIONS, &q).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let items = a.body["evaluations"].as_array().unwrap();
    let got: Vec<bool> = items
        .iter()
        .map(|d| d["decision"].as_bool().unwrap())
        .collect();
    assert_eq!(got, [true, false, false, false, true]);
    assert_eq!(
        items[1]["context"]["error"]["field"],
        "evaluations[1].subject"
    );
    assert_eq!(items[1]["context"]["error"]["status"], 400);
    assert_eq!(
        items[2]["context"]["error"]["field"],
        "evaluations[2].subject.type"
    );
    assert!(items[3]["context"]["error"].is_null());
    // A missing member under deny_on_first_deny is a deny that stops the batch there.
    let mut q2 = q.clone();
    q2["options"] = json!({"evaluations_semantic": "deny_on_first_deny"});
    let a = http.post(EVALUATIONS, &q2).await;
    let items = a.body["evaluations"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", a.body);
    assert_eq!(items[1]["context"]["reason"], "deny_on_first_deny");

    // gRPC: one request with an empty id is its own refusal; the others are answered.
    let mut client = grpc(&running).await;
    let one = |p: &str, d: &str| pb::IsAuthorizedRequest {
        principal: uid("Docs::User", p),
        action: uid("", "read"),
        resource: uid("Docs::Document", d),
        ..Default::default()
    };
    let r = client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            requests: vec![
                one("alice", "plan"),
                one("", "plan"),
                pb::IsAuthorizedRequest {
                    context_json: "[1]".into(),
                    ..one("alice", "plan")
                },
                one("dave", "handbook"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<i32> = r.responses.iter().map(|x| x.decision).collect();
    let (allow, deny) = (pb::Decision::Allow as i32, pb::Decision::Deny as i32);
    assert_eq!(got, [allow, deny, deny, allow]);
    let refused: Vec<Option<&str>> = r
        .responses
        .iter()
        .map(|x| x.refused.as_ref().map(|e| e.field.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            None,
            Some("requests[1].principal.id"),
            Some("requests[2].context"),
            None
        ]
    );
    assert!(r.responses[1]
        .refused
        .as_ref()
        .unwrap()
        .message
        .contains("is empty"));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_leave_their_reasons_out_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path(), |_| {}).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let batch = |options: Value| {
        json!({
            "subject": {"type": "user", "id": "bob"},
            "action": {"name": "can_read"},
            "evaluations": [
                {"resource": {"type": "document", "id": "plan"}},
                {"resource": {"type": "document", "id": "pricing"}},
                {"resource": {"type": "document", "id": "handbook"}},
                {"subject": {"type": "robot", "id": "r2"}, "resource": {"type": "document", "id": "plan"}},
            ],
            "options": options,
        })
    };
    // By default each decision carries its reason.
    let a = http.post(EVALUATIONS, &batch(json!({}))).await;
    assert!(a.body["evaluations"][0]["context"]["determining_policies"].is_array());
    let a = http
        .post(EVALUATIONS, &batch(json!({"include_context": false})))
        .await;
    let items = a.body["evaluations"].as_array().unwrap();
    assert_eq!(
        &items[..3],
        &[
            json!({"decision": true}),
            json!({"decision": true}),
            json!({"decision": true})
        ],
        "{}",
        a.body
    );
    // An error is not a reason: it stays.
    assert_eq!(
        items[3]["context"]["error"]["field"],
        "evaluations[3].subject.type"
    );
    let mut one = ask("bob", "can_read", "plan");
    one["options"] = json!({"include_context": false});
    let a = http.post(EVALUATION, &one).await;
    assert_eq!(a.body, json!({"decision": true}));
    running.shutdown().await.unwrap();

    // The server's setting makes it the default; a request may still ask for reasons.
    let sub = dir.path().join("quiet");
    std::fs::create_dir_all(&sub).unwrap();
    let quiet = start_docs(&sub, |c| c.http_decision_context = false).await;
    let mut http = Http::connect(quiet.http_addr.unwrap(), false).await;
    let a = http.post(EVALUATION, &ask("bob", "can_read", "plan")).await;
    assert_eq!(a.body, json!({"decision": true}));
    let a = http.post(EVALUATIONS, &batch(json!({}))).await;
    assert_eq!(a.body["evaluations"][1], json!({"decision": true}));
    let a = http
        .post(EVALUATIONS, &batch(json!({"include_context": true})))
        .await;
    assert!(a.body["evaluations"][1]["context"]["determining_policies"].is_array());
    quiet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_basic_client_credentials_are_accepted_beside_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_docs(dir.path(), |c| {
        c.http_token = Some("t0ken".into());
        c.http_basic = Some("pdp-client:s3cret".into());
    })
    .await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let body = ask("alice", "can_read", "plan").to_string();
    // base64("pdp-client:s3cret") and base64("pdp-client:wrong").
    for (auth, want) in [
        (Some("Basic cGRwLWNsaWVudDpzM2NyZXQ="), 200),
        (Some("basic cGRwLWNsaWVudDpzM2NyZXQ="), 200),
        (Some("Bearer t0ken"), 200),
        (Some("Basic cGRwLWNsaWVudDp3cm9uZw=="), 401),
        (Some("Basic cGRwLWNsaWVudDpzM2NyZXQ"), 401),
        (Some("Bearer cGRwLWNsaWVudDpzM2NyZXQ="), 401),
        (None, 401),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(auth.map(|a| ("authorization", a)));
        for path in [EVALUATION, EVALUATIONS, SEARCH_ACTION] {
            let a = http.send("POST", path, &headers, &body).await;
            assert_eq!(a.status, want, "{auth:?} {path}: {}", a.body);
            if want == 401 {
                // Both ways to authenticate are offered.
                let challenges: Vec<&str> = a
                    .headers
                    .get_all("www-authenticate")
                    .iter()
                    .map(|v| v.to_str().unwrap())
                    .collect();
                assert_eq!(
                    challenges,
                    ["Bearer realm=\"blue-authz\"", "Basic realm=\"blue-authz\""]
                );
            }
        }
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_search_answers_a_whole_screen_in_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(
        dir.path(),
        &pack(),
        &pack().join("tests/fixture.json"),
        |_| {},
    )
    .await;
    let mut http = Http::connect(running.http_addr.unwrap(), true).await;
    let mut client = grpc(&running).await;
    let with_vic = json!({"with": {"type": "Blue::User", "id": "vic"}});
    for (user, ty, cedar, id) in [
        ("ada", "project", "Blue::Project", "apollo"),
        ("vic", "project", "Blue::Project", "apollo"),
        ("dora", "dashboard", "Blue::Dashboard", "acme-kpis"),
    ] {
        let given = if ty == "dashboard" {
            json!({"shareDashboard": with_vic})
        } else {
            json!({})
        };
        let r = client
            .list_allowed_actions(pb::ListAllowedActionsRequest {
                principal: uid("Blue::User", user),
                resource: uid(cedar, id),
                each_declared_context: true,
                action_contexts_json: given
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let want: BTreeSet<(String, String)> = r
            .allowed
            .iter()
            .map(|a| {
                let c = match a.context_json.as_str() {
                    "" => Value::Null,
                    t => serde_json::from_str(t).unwrap(),
                };
                (a.action.clone(), c.to_string())
            })
            .collect();
        assert!(
            want.iter().any(|(_, c)| c != "null"),
            "{user}: a declared context"
        );
        let q = json!({
            "subject": {"type": "user", "id": user},
            "resource": {"type": ty, "id": id},
            "options": {"each_declared_context": true, "action_contexts": given},
        });
        // One page, and two at a time to the end: the same answers.
        let a = http.post(SEARCH_ACTION, &q).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let one_page: Vec<Value> = a.body["results"].as_array().unwrap().clone();
        let mut paged = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = q.clone();
            q["page"] = json!({"limit": 2, "token": token});
            let a = http.post(SEARCH_ACTION, &q).await;
            assert_eq!(a.status, 200, "{}", a.body);
            paged.extend(a.body["results"].as_array().unwrap().iter().cloned());
            token = a.body["page"]["next_token"].as_str().unwrap().to_string();
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(paged, one_page, "{user}");
        let got: BTreeSet<(String, String)> = one_page
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["context"].to_string(),
                )
            })
            .collect();
        assert_eq!(got.len(), one_page.len(), "{user}: no answer twice");
        assert_eq!(got, want, "{user} on {id}");
    }
    // vic (view) may invite only as view.
    let q = json!({
        "subject": {"type": "user", "id": "vic"},
        "resource": {"type": "project", "id": "apollo"},
        "options": {"each_declared_context": true},
    });
    let a = http.post(SEARCH_ACTION, &q).await;
    let invites: Vec<&Value> = a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "inviteMember")
        .collect();
    assert_eq!(
        invites,
        [&json!({"name": "inviteMember", "context": {"role": "view"}})]
    );
    // A context for an action that does not apply names the option.
    let q = json!({
        "subject": {"type": "user", "id": "vic"},
        "resource": {"type": "project", "id": "apollo"},
        "options": {"action_contexts": {"shareDashboard": with_vic}},
    });
    let a = http.post(SEARCH_ACTION, &q).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(error_field(&a), "options.action_contexts.shareDashboard");
    running.shutdown().await.unwrap();
}

/// A copy of the docs pack whose users may be named by their `email` (`[keys]`), with its
/// data (alice and bob have emails) beside it as its suite expects.
fn keyed_docs(dir: &Path) -> PathBuf {
    let to = dir.join("keyed-docs");
    std::fs::create_dir_all(to.join("tests")).unwrap();
    let from = docs().join("policies");
    let schema = std::fs::read_to_string(from.join("schema.cedarschema")).unwrap();
    let keyed = schema.replace(
        "entity User in [Team] = {\n    \"name\": String,",
        "entity User in [Team] = {\n    \"name\": String,\n    \"email\"?: String,",
    );
    assert_ne!(keyed, schema, "the docs schema's User changed");
    std::fs::write(to.join("schema.cedarschema"), keyed).unwrap();
    std::fs::copy(from.join("docs.cedar"), to.join("docs.cedar")).unwrap();
    std::fs::copy(from.join("tests/docs.toml"), to.join("tests/docs.toml")).unwrap();
    let names = std::fs::read_to_string(from.join("names.toml")).unwrap()
        + "\n[keys]\nuser = [\"email\"]\n";
    std::fs::write(to.join("names.toml"), names).unwrap();
    let mut data: Value =
        serde_json::from_str(&std::fs::read_to_string(docs().join("data.json")).unwrap()).unwrap();
    for e in data.as_array_mut().unwrap() {
        let id = e["uid"]["id"].as_str().unwrap().to_string();
        if e["uid"]["type"] == "Docs::User" && (id == "alice" || id == "bob") {
            e["attrs"]["email"] = json!(format!("{id}@example.com"));
        }
    }
    std::fs::write(dir.join("data.json"), data.to_string()).unwrap();
    to
}

async fn write_ops(addr: std::net::SocketAddr, entities: &[Value]) -> Result<u64, tonic::Status> {
    use blue_authz::service::grpc::pb::entity_store_client::EntityStoreClient;
    let mut client = EntityStoreClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let ops = entities
        .iter()
        .map(|e| pb::WriteOp {
            op: Some(pb::write_op::Op::UpsertJson(e.to_string())),
        })
        .collect();
    let mut req = tonic::Request::new(pb::WriteEntitiesRequest {
        ops,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", common::TOKEN).parse().unwrap(),
    );
    client
        .write_entities(req)
        .await
        .map(|r| r.into_inner().revision)
}

fn user(id: &str, email: Option<&str>) -> Value {
    let mut attrs = json!({"name": id});
    if let Some(e) = email {
        attrs["email"] = json!(e);
    }
    json!({"uid": {"type": "Docs::User", "id": id}, "attrs": attrs, "parents": []})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_may_be_named_by_a_declared_key_and_a_key_names_one_entity() {
    let dir = tempfile::tempdir().unwrap();
    let policies = keyed_docs(dir.path());
    let running = start(dir.path(), &policies, &dir.path().join("data.json"), |_| {}).await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let mut client = grpc(&running).await;
    // By email as by id, over HTTP and gRPC; alice owns plan, bob edits it.
    for (name, action, want) in [
        ("alice@example.com", "can_delete", true),
        ("alice", "can_delete", true),
        ("bob@example.com", "can_edit", true),
        ("bob@example.com", "can_delete", false),
    ] {
        let a = http.post(EVALUATION, &ask(name, action, "plan")).await;
        assert_eq!(
            (a.status, &a.body["decision"]),
            (200, &json!(want)),
            "{name} {action}: {}",
            a.body
        );
    }
    let r = client
        .is_authorized(pb::IsAuthorizedRequest {
            principal: uid("Docs::User", "alice@example.com"),
            action: uid("", "delete"),
            resource: uid("Docs::Document", "plan"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.determining_policies, ["docs.owner"]);
    // Searches too: what alice may delete, by her email; who may edit plan lists ids.
    let q = json!({"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_delete"}, "resource": {"type": "document"}});
    let a = http.post(SEARCH_RESOURCE, &q).await;
    assert_eq!(
        a.body["results"],
        json!([{"type": "document", "id": "plan"}]),
        "{}",
        a.body
    );
    let q = json!({"subject": {"type": "user", "id": "bob@example.com"}, "resource": {"type": "document", "id": "plan"}});
    let a = http.post(SEARCH_ACTION, &q).await;
    let names: Vec<&str> = a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["can_edit", "can_read"], "{}", a.body);

    // A write that gives a key value a second owner is refused whole, naming both.
    let data = running.data_addr.unwrap();
    let err = write_ops(data, &[user("carol", Some("alice@example.com"))])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("Docs::User::\"carol\"")
            && err.message().contains("Docs::User::\"alice\""),
        "{}",
        err.message()
    );
    let err = write_ops(
        data,
        &[
            user("erin", Some("x@example.com")),
            user("fred", Some("x@example.com")),
        ],
    )
    .await
    .unwrap_err();
    assert!(
        err.message().contains("a key names one entity"),
        "{}",
        err.message()
    );
    // Moving a value in one batch is fine: alice gives hers up as carol takes it.
    let rev = write_ops(
        data,
        &[
            user("alice", Some("alice@new.example.com")),
            user("carol", Some("alice@example.com")),
        ],
    )
    .await
    .unwrap();
    let at = ask("alice@example.com", "can_delete", "pricing");
    let a = http
        .send(
            "POST",
            EVALUATION,
            &[
                ("content-type", "application/json"),
                ("x-min-revision", &rev.to_string()),
            ],
            &at.to_string(),
        )
        .await;
    // The name is carol's now: she owns pricing, alice owns plan.
    assert_eq!(a.body["decision"], true, "{}", a.body);
    let a = http
        .post(EVALUATION, &ask("alice@example.com", "can_delete", "plan"))
        .await;
    assert_eq!(a.body["decision"], false, "now carol's: {}", a.body);
    // A name that is one entity's id and another's key is refused, naming both.
    write_ops(
        data,
        &[
            user("gus@example.com", None),
            user("gus", Some("gus@example.com")),
        ],
    )
    .await
    .unwrap();
    let a = http
        .post(EVALUATION, &ask("gus@example.com", "can_read", "plan"))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(error_field(&a), "subject.id");
    let said = a.body["error"]["message"].as_str().unwrap();
    assert!(
        said.contains("names more than one") && said.contains("by its email"),
        "{said}"
    );
    running.shutdown().await.unwrap();

    // A seed that gives two entities one key value does not load.
    let mut seed: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("data.json")).unwrap())
            .unwrap();
    seed.as_array_mut()
        .unwrap()
        .push(user("hal", Some("bob@example.com")));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, seed.to_string()).unwrap();
    let sub = dir.path().join("bad");
    std::fs::create_dir_all(&sub).unwrap();
    let mut c = common::config(&sub, Limits::default());
    c.pack = PackSpec::new(&policies, &[]);
    c.seed = Some(bad);
    let mut r = server::start(c).await.unwrap();
    let err = format!("{:?}", r.load().await.unwrap_err());
    assert!(err.contains("a key names one entity"), "{err}");
    r.shutdown().await.unwrap();
}

/// Blue's pack declares no `[requests]`: action properties are ignored, undeclared context
/// members refused; searches find nothing for unknown names; one bad item of a batch is its
/// own answer; reasons are left out when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blues_pack_is_strict_and_answers_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(
        dir.path(),
        &pack(),
        &pack().join("tests/fixture.json"),
        |_| {},
    )
    .await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let blue = |user: &str, action: &str, ty: &str, id: &str| json!({"subject": {"type": "user", "id": user}, "action": {"name": action}, "resource": {"type": ty, "id": id}});
    let plain = http
        .post(EVALUATION, &blue("ada", "viewProject", "project", "apollo"))
        .await;
    assert_eq!(plain.body["decision"], true, "{}", plain.body);
    let mut q = blue("ada", "viewProject", "project", "apollo");
    q["action"]["properties"] = json!({"method": "GET"});
    let a = http.post(EVALUATION, &q).await;
    assert_eq!(
        (a.status, &a.body["decision"]),
        (200, &json!(true)),
        "{}",
        a.body
    );
    let q = with(
        blue("ada", "inviteMember", "project", "apollo"),
        "context",
        json!({"role": "view", "ip": "10.0.0.7"}),
    );
    let a = http.post(EVALUATION, &q).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(error_field(&a).starts_with("context"), "{}", a.body);
    for q in [
        json!({"subject": {"type": "user", "id": "nobody"}, "action": {"name": "viewProject"}, "resource": {"type": "project"}}),
        json!({"subject": {"type": "user", "id": "ada"}, "action": {"name": "viewProject"}, "resource": {"type": "galaxy"}}),
        json!({"subject": {"type": "user", "id": "ada"}, "action": {"name": "viewRecord"}, "resource": {"type": "project"}}),
    ] {
        let a = http.post(SEARCH_RESOURCE, &q).await;
        assert_eq!(
            (a.status, &a.body["results"]),
            (200, &json!([])),
            "{q}: {}",
            a.body
        );
    }
    let q = json!({
        "subject": {"type": "user", "id": "ada"},
        "evaluations": [
            {"action": {"name": "viewProject"}, "resource": {"type": "project", "id": "apollo"}},
            {"resource": {"type": "project", "id": "apollo"}},
            {"action": {"name": "editWiki"}, "resource": {"type": "project", "id": "apollo"}},
        ],
        "options": {"include_context": false},
    });
    let a = http.post(EVALUATIONS, &q).await;
    let items = a.body["evaluations"].as_array().unwrap();
    assert_eq!(items[0], json!({"decision": true}), "{}", a.body);
    assert_eq!(
        items[1]["context"]["error"]["field"],
        "evaluations[1].action"
    );
    assert_eq!(items[2]["decision"], true, "{}", a.body);
    assert_eq!(items.len(), 3);
    running.shutdown().await.unwrap();
}

/// A reload that declares `[keys]` indexes the stored data at once, and one that drops them
/// stops resolving the names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_keys_indexes_the_stored_data() {
    let dir = tempfile::tempdir().unwrap();
    let policies = keyed_docs(dir.path());
    let names = policies.join("names.toml");
    let keyed = std::fs::read_to_string(&names).unwrap();
    let plain = keyed.replace("\n[keys]\nuser = [\"email\"]\n", "\n");
    assert_ne!(plain, keyed);
    std::fs::write(&names, &plain).unwrap();
    let running = start(dir.path(), &policies, &dir.path().join("data.json"), |c| {
        c.watch = false
    })
    .await;
    let mut http = Http::connect(running.http_addr.unwrap(), false).await;
    let by_email = ask("alice@example.com", "can_delete", "plan");
    let a = http.post(EVALUATION, &by_email).await;
    assert_eq!(a.body["decision"], false, "no keys yet: {}", a.body);
    std::fs::write(&names, &keyed).unwrap();
    let outcome = running.reload().await;
    assert!(
        matches!(
            outcome,
            blue_authz::service::reload::Outcome::Swapped { .. }
        ),
        "{outcome:?}"
    );
    let a = http.post(EVALUATION, &by_email).await;
    assert_eq!(a.body["decision"], true, "keyed: {}", a.body);
    std::fs::write(&names, &plain).unwrap();
    let outcome = running.reload().await;
    assert!(
        matches!(
            outcome,
            blue_authz::service::reload::Outcome::Swapped { .. }
        ),
        "{outcome:?}"
    );
    let a = http.post(EVALUATION, &by_email).await;
    assert_eq!(a.body["decision"], false, "keys dropped: {}", a.body);
    running.shutdown().await.unwrap();
}

/// What an open pack drops, and action properties a pack does not place, are logged at debug
/// level by the real binary.
#[test]
fn what_is_dropped_or_ignored_is_logged_at_debug_level() {
    use crate::common::server::Binary;
    let dir = tempfile::tempdir().unwrap();
    let policies = open_docs(dir.path(), "context.action");
    let mut server = Binary::serve(&policies, &dir.path().join("open.redb"))
        .args(["--http-listen", "127.0.0.1:0", "--log", "blue_authz=debug"])
        .arg("--seed")
        .arg(dir.path().join("data.json"))
        .spawn();
    let addr = server.wait_serving().http.expect("an AuthZEN listener");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut http = Http::connect(addr, false).await;
        let mut q = with(
            ask("bob", "can_delete", "plan"),
            "context",
            json!({"ip": "10.0.0.7", "action": {"soft": true, "reason": "cleanup"}}),
        );
        q["resource"]["properties"] = json!({"color": "red"});
        let a = http.post(EVALUATION, &q).await;
        assert_eq!(a.body["decision"], true, "{}", a.body);
    });
    let wait = std::time::Duration::from_secs(30);
    let line = server
        .wait_log("dropped undeclared context members", wait)
        .expect("a debug line for the dropped context members");
    assert!(
        line.contains("context.ip") && line.contains("context.action.reason"),
        "{line}"
    );
    let line = server
        .wait_log("dropped undeclared properties", wait)
        .expect("a debug line for the dropped properties");
    assert!(line.contains("properties.color"), "{line}");
    drop(server);

    // The docs pack places no action properties: ignoring them is logged.
    let mut server = Binary::serve(&docs().join("policies"), &dir.path().join("docs.redb"))
        .args(["--http-listen", "127.0.0.1:0", "--log", "blue_authz=debug"])
        .arg("--seed")
        .arg(docs().join("data.json"))
        .spawn();
    let addr = server.wait_serving().http.expect("an AuthZEN listener");
    rt.block_on(async {
        let mut http = Http::connect(addr, false).await;
        let mut q = ask("alice", "can_delete", "plan");
        q["action"]["properties"] = json!({"soft": true});
        let a = http.post(EVALUATION, &q).await;
        assert_eq!(a.status, 200, "{}", a.body);
    });
    let line = server
        .wait_log("action properties ignored", wait)
        .expect("a debug line for the ignored action properties");
    assert!(line.contains("soft"), "{line}");
}
