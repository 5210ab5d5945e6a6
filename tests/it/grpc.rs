//! The decision service over real gRPC: the server on 127.0.0.1:0 and a tonic client.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::common::{case_request, config, config_on, copy_dir, live_matrix, live_pack, pack, uid};
use blue_authz::authoring::suite::{self, Case};
use blue_authz::engine::pack::PackSpec;
use blue_authz::service::grpc::ext_authz::EXT_AUTHZ_SERVICE;
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use blue_authz::service::server::{self, Limits, Running, AUTHORIZER_SERVICE};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

/// A server on the frozen pack, for tests with hand-written expectations.
async fn serve(limits: Limits) -> (Running, AuthorizerClient<Channel>, tempfile::TempDir) {
    serve_on(&pack(), limits).await
}

/// A server on `policies` (the live pack for the data-driven tests).
async fn serve_on(
    policies: &Path,
    limits: Limits,
) -> (Running, AuthorizerClient<Channel>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut running = server::start(config_on(policies, dir.path(), limits))
        .await
        .expect("start");
    running.load().await.expect("load");
    let client = AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .expect("connect");
    (running, client, dir)
}

/// The live pack's suite cases.
fn default_cases() -> Vec<Case> {
    let suites = suite::load_suites(&live_pack().join("tests")).unwrap();
    suite::effective_cases(&suites, &[])
}

fn assert_matches(case: &Case, r: &pb::IsAuthorizedResponse) {
    let allow = r.decision == pb::Decision::Allow as i32;
    assert_eq!(allow, case.expect.allow, "{}: {r:?}", case.name);
    assert_eq!(
        r.determining_policies, case.expect.determining,
        "{}",
        case.name
    );
    assert_eq!(
        r.errors.is_empty(),
        !case.errors_expected,
        "{}: {r:?}",
        case.name
    );
    assert!(!r.policy_version.is_empty());
}

#[tokio::test]
async fn every_suite_case_over_the_wire_one_by_one_and_in_one_batch() {
    let (running, mut client, _dir) = serve_on(&live_pack(), Limits::default()).await;
    let cases = default_cases();
    assert!(cases.len() > 300);
    // Cases the pack refuses (a context value outside its declared set) are INVALID_ARGUMENT
    // naming the field, one by one; the batch takes the others.
    let (refused, cases): (Vec<Case>, Vec<Case>) =
        cases.into_iter().partition(|c| c.expect.invalid.is_some());
    assert!(refused.len() >= 3, "{} refused cases", refused.len());
    for case in &refused {
        let e = client
            .is_authorized(case_request(case))
            .await
            .expect_err(&case.name);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", case.name);
        let field = case.expect.invalid.as_ref().unwrap();
        assert!(
            e.message().contains(field.as_str()),
            "{}: {}",
            case.name,
            e.message()
        );
    }
    for case in &cases {
        let r = client
            .is_authorized(case_request(case))
            .await
            .expect(&case.name)
            .into_inner();
        assert_matches(case, &r);
    }
    let batch = pb::BatchIsAuthorizedRequest {
        requests: cases.iter().map(case_request).collect(),
        min_revision: 0,
    };
    let r = client
        .batch_is_authorized(batch)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses.len(), cases.len());
    for (case, resp) in cases.iter().zip(&r.responses) {
        assert_matches(case, resp);
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_batch_of_a_thousand_and_more() {
    let (running, mut client, _dir) = serve_on(&live_pack(), Limits::default()).await;
    let mut cases = default_cases();
    cases.retain(|c| c.expect.invalid.is_none());
    let requests: Vec<_> = cases.iter().cycle().take(2500).map(case_request).collect();
    let r = client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            requests,
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses.len(), 2500);
    for (case, resp) in cases.iter().cycle().zip(&r.responses) {
        assert_matches(case, resp);
    }
    running.shutdown().await.unwrap();
}

/// The matrix rows without a note or context, parsed from the committed table: table title ->
/// (action, resource type) -> column -> allowed.
fn matrix_rows() -> Vec<(String, String, BTreeMap<String, bool>)> {
    let text = std::fs::read_to_string(live_matrix()).unwrap();
    let mut header: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        if cells[0] == "action" {
            header = cells;
            continue;
        }
        // Rows that need a context or a particular record are asked elsewhere; "any record"
        // is the row of the record the tests ask about (apollo-task, someone else's).
        let label = cells[0].replace(" (any record)", "");
        if label.contains('(') {
            continue;
        }
        let action = label.trim_matches('`').to_string();
        let cols = header[2..header.len() - 3]
            .iter()
            .cloned()
            .zip(cells[2..cells.len() - 3].iter().map(|m| m == "✅"))
            .collect();
        out.push((action, cells[1].clone(), cols));
    }
    out
}

#[tokio::test]
async fn list_allowed_actions_equals_each_roles_matrix_row_and_agrees_with_is_authorized() {
    let (running, mut client, _dir) = serve_on(&live_pack(), Limits::default()).await;
    let columns: &[(&str, &str)] = &[
        ("admin", "ada"),
        ("member", "max"),
        ("client", "cleo"),
        ("comment", "cora"),
        ("view", "vic"),
        ("non-member", "gus"),
        ("owner", "dora"),
        ("editor", "eli"),
        ("viewer", "val"),
        ("no access", "vic"),
        ("other company", "olaf"),
    ];
    // The resource each matrix table asks about, by resource type.
    let resources: &[(&str, &str)] = &[
        ("Company", "acme"),
        ("Project", "apollo"),
        ("Record", "apollo-task"),
        ("Dashboard", "acme-kpis"),
    ];
    let rows = matrix_rows();
    let mut compared = 0;
    for (column, user) in columns {
        for (rtype, rid) in resources {
            let expected: BTreeSet<String> = rows
                .iter()
                .filter(|(_, t, cols)| t == rtype && cols.contains_key(*column))
                .filter(|(_, _, cols)| cols[*column])
                .map(|(a, _, _)| a.clone())
                .collect();
            let asked = rows
                .iter()
                .any(|(_, t, cols)| t == rtype && cols.contains_key(*column));
            if !asked {
                continue;
            }
            let r = client
                .list_allowed_actions(pb::ListAllowedActionsRequest {
                    principal: uid("Blue::User", user),
                    resource: uid(&format!("Blue::{rtype}"), rid),
                    context_json: String::new(),
                    entities_json: String::new(),
                    min_revision: 0,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let got: BTreeSet<String> = r.allowed.iter().map(|a| a.action.clone()).collect();
            assert_eq!(got, expected, "{column} ({user}) on {rtype}");
            compared += 1;
            // Agreement with IsAuthorized for every evaluated action.
            for a in &r.allowed {
                let d = client
                    .is_authorized(pb::IsAuthorizedRequest {
                        principal: uid("Blue::User", user),
                        action: uid("Blue::Action", &a.action),
                        resource: uid(&format!("Blue::{rtype}"), rid),
                        context_json: String::new(),
                        entities_json: String::new(),
                        min_revision: 0,
                        explain: false,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(d.decision, pb::Decision::Allow as i32);
                assert_eq!(d.determining_policies, a.determining_policies);
            }
            // Actions with a context of their own are reported, not guessed.
            for n in &r.not_evaluated {
                assert!(
                    ["inviteMember", "changeMemberRole", "shareDashboard"]
                        .contains(&n.action.as_str()),
                    "{n:?}"
                );
            }
        }
    }
    assert!(compared >= 20, "compared {compared} rows");

    // With a context, the actions that take it are decided, and still agree.
    let r = client
        .list_allowed_actions(pb::ListAllowedActionsRequest {
            principal: uid("Blue::User", "cleo"),
            resource: uid("Blue::Project", "apollo"),
            context_json: r#"{"role": "client"}"#.into(),
            entities_json: String::new(),
            min_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<&str> = r.allowed.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(got, vec!["inviteMember"]);

    // A context that is not a JSON object is an error naming the field, as for IsAuthorized.
    for bad in ["{not json", "[1]", "\"client\""] {
        let status = client
            .list_allowed_actions(pb::ListAllowedActionsRequest {
                principal: uid("Blue::User", "cleo"),
                resource: uid("Blue::Project", "apollo"),
                context_json: bad.into(),
                entities_json: String::new(),
                min_revision: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(
            status.message().starts_with("context_json"),
            "{bad}: {status:?}"
        );
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_scoped_entities_apply_to_that_request_only() {
    let (running, mut client, _dir) = serve(Limits::default()).await;
    let new_record = r#"[{"uid": {"type": "Blue::Record", "id": "apollo-draft"},
        "attrs": {"project": {"type": "Blue::Project", "id": "apollo"},
                  "creator": {"type": "Blue::User", "id": "cleo"}},
        "parents": []}]"#;
    let ask = |entities: &str| pb::IsAuthorizedRequest {
        principal: uid("Blue::User", "cleo"),
        action: uid("Blue::Action", "deleteRecord"),
        resource: uid("Blue::Record", "apollo-draft"),
        context_json: String::new(),
        entities_json: entities.to_string(),
        min_revision: 0,
        explain: false,
    };
    let r = client
        .is_authorized(ask(new_record))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Allow as i32, "{r:?}");
    assert_eq!(r.determining_policies, vec!["record.deleteOwn"]);
    let r = client.is_authorized(ask("")).await.unwrap().into_inner();
    assert_eq!(r.decision, pb::Decision::Deny as i32, "{r:?}");
    assert!(r.determining_policies.is_empty());

    // A request-scoped user joining through a stored role group.
    let newcomer = r#"[{"uid": {"type": "Blue::User", "id": "newcomer"}, "attrs": {},
        "parents": [{"type": "Blue::Role", "id": "apollo/member"}]}]"#;
    let r = client
        .is_authorized(pb::IsAuthorizedRequest {
            principal: uid("Blue::User", "newcomer"),
            action: uid("Blue::Action", "editWiki"),
            resource: uid("Blue::Project", "apollo"),
            context_json: String::new(),
            entities_json: newcomer.to_string(),
            min_revision: 0,
            explain: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Allow as i32, "{r:?}");
    running.shutdown().await.unwrap();
}

fn valid() -> pb::IsAuthorizedRequest {
    pb::IsAuthorizedRequest {
        principal: uid("Blue::User", "ada"),
        action: uid("Blue::Action", "inviteMember"),
        resource: uid("Blue::Project", "apollo"),
        context_json: r#"{"role": "view"}"#.into(),
        entities_json: String::new(),
        min_revision: 0,
        explain: false,
    }
}

async fn expect_invalid(
    client: &mut AuthorizerClient<Channel>,
    req: pb::IsAuthorizedRequest,
    field: &str,
) {
    let err = client.is_authorized(req).await.expect_err(field);
    assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
    assert!(
        err.message().starts_with(field),
        "message should name {field}: {}",
        err.message()
    );
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let limits = Limits {
        max_batch: 1000,
        max_message_bytes: 64 * 1024,
        ..Limits::default()
    };
    let (running, mut client, _dir) = serve(limits).await;
    let ok = client.is_authorized(valid()).await.unwrap().into_inner();
    assert_eq!(ok.decision, pb::Decision::Allow as i32);

    // Malformed uids.
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            principal: None,
            ..valid()
        },
        "principal",
    )
    .await;
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            principal: uid("", "ada"),
            ..valid()
        },
        "principal.type",
    )
    .await;
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            principal: uid("Blue::", "ada"),
            ..valid()
        },
        "principal.type",
    )
    .await;
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            principal: uid("Blue::User", ""),
            ..valid()
        },
        "principal.id",
    )
    .await;
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            resource: uid("not a type!", "x"),
            ..valid()
        },
        "resource.type",
    )
    .await;
    // Unknown entity type, unknown action.
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            principal: uid("Blue::Robot", "r2"),
            ..valid()
        },
        "principal.type",
    )
    .await;
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            action: uid("Blue::Action", "fly"),
            ..valid()
        },
        "action.id",
    )
    .await;
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            action: uid("Blue::User", "viewProject"),
            ..valid()
        },
        "action.type",
    )
    .await;
    // An action that does not apply to the resource type, or to the principal type.
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            resource: uid("Blue::Record", "apollo-task"),
            ..valid()
        },
        "resource.type",
    )
    .await;
    expect_invalid(
        &mut client,
        pb::IsAuthorizedRequest {
            principal: uid("Blue::Project", "apollo"),
            ..valid()
        },
        "principal.type",
    )
    .await;
    // Contexts that do not match the schema.
    for ctx in [
        "",
        "{}",
        r#"{"role": 5}"#,
        r#"{"role": "view", "extra": 1}"#,
        "[1]",
        "{not json",
    ] {
        expect_invalid(
            &mut client,
            pb::IsAuthorizedRequest {
                context_json: ctx.into(),
                ..valid()
            },
            "context_json",
        )
        .await;
    }
    // Malformed request-scoped entities.
    for ents in [
        "{",
        r#"{"uid": 1}"#,
        r#"[{"uid": {"type": "Blue::Record", "id": "r"}, "attrs": {}, "parents": []}]"#,
        r#"[{"uid": {"type": "Blue::Nope", "id": "r"}, "attrs": {}, "parents": []}]"#,
    ] {
        expect_invalid(
            &mut client,
            pb::IsAuthorizedRequest {
                entities_json: ents.into(),
                ..valid()
            },
            "entities_json",
        )
        .await;
    }
    // In a batch, the refused request is its own answer, naming its index; the others stand.
    let mut requests = vec![valid(); 3];
    requests[2].action = uid("Blue::Action", "fly");
    let r = client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            requests,
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.responses[..2].iter().all(|x| x.refused.is_none()));
    let refused = r.responses[2].refused.as_ref().unwrap();
    assert_eq!(r.responses[2].decision, pb::Decision::Deny as i32);
    assert_eq!(refused.field, "requests[2].action.id");
    assert!(
        refused
            .message
            .starts_with("requests[2].action.id: unknown action"),
        "{}",
        refused.message
    );
    // A batch over the limit.
    let err = client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            requests: vec![valid(); 1001],
            min_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("requests:"), "{}", err.message());
    // An oversized message.
    let big = pb::IsAuthorizedRequest {
        entities_json: " ".repeat(70 * 1024),
        ..valid()
    };
    expect_invalid(&mut client, big, "request").await;
    // Unknown principals and resources are not errors: they are denied.
    for req in [
        pb::IsAuthorizedRequest {
            principal: uid("Blue::User", "nobody"),
            ..valid()
        },
        pb::IsAuthorizedRequest {
            resource: uid("Blue::Project", "nowhere"),
            ..valid()
        },
    ] {
        let r = client.is_authorized(req).await.unwrap().into_inner();
        assert_eq!(r.decision, pb::Decision::Deny as i32);
    }
    // And the server still serves.
    let ok = client.is_authorized(valid()).await.unwrap().into_inner();
    assert_eq!(ok.decision, pb::Decision::Allow as i32);
    running.shutdown().await.unwrap();
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(addr: std::net::SocketAddr, service: &str) -> i32 {
    let mut h = HealthClient::new(channel(addr).await);
    h.check(HealthCheckRequest {
        service: service.to_string(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

#[tokio::test]
async fn health_goes_from_not_serving_to_serving_and_reflection_lists_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = server::start(config(dir.path(), Limits::default()))
        .await
        .unwrap();
    for service in ["", AUTHORIZER_SERVICE] {
        assert_eq!(
            health(running.addr.unwrap(), service).await,
            ServingStatus::NotServing as i32
        );
    }
    // Before loading, decisions are refused, not guessed.
    let mut client = AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap();
    let err = client.is_authorized(valid()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    running.load().await.unwrap();
    for service in ["", AUTHORIZER_SERVICE] {
        assert_eq!(
            health(running.addr.unwrap(), service).await,
            ServingStatus::Serving as i32
        );
    }
    let services = reflection_services(running.addr.unwrap()).await;
    assert!(
        services.contains(&AUTHORIZER_SERVICE.to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_string()),
        "{services:?}"
    );
    running.shutdown().await.unwrap();
}

/// The services a reflection client of one protocol version lists (the two versions'
/// generated types differ, the calls do not).
macro_rules! list_services {
    ($version:ident, $addr:expr) => {{
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        let mut c = ServerReflectionClient::new(channel($addr).await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect(stringify!($version))
            .into_inner();
        match stream.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => l
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

async fn reflection_services(addr: std::net::SocketAddr) -> Vec<String> {
    list_services!(v1, addr)
}

#[tokio::test]
async fn an_invalid_policy_set_is_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&pack(), &dir);
    let path = dir.join("company.cedar");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("resource.member", "resource.boss")).unwrap();
    let mut cfg = config(tmp.path(), Limits::default());
    cfg.pack = PackSpec::new(&dir, &[]);
    let mut running = server::start(cfg).await.unwrap();
    let err = running.load().await.unwrap_err().to_string();
    assert!(err.contains("company.cedar:10:21"), "{err}");
    assert_eq!(
        health(running.addr.unwrap(), "").await,
        ServingStatus::NotServing as i32
    );
    let mut client = AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap();
    assert_eq!(
        client.is_authorized(valid()).await.unwrap_err().code(),
        Code::Unavailable
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_quote_at_most_a_short_prefix_of_a_huge_input() {
    let (running, mut client, _dir) = serve(Limits::default()).await;
    let huge = "x".repeat(1 << 20);
    let good = || common::ask("ada", "viewProject", "Blue::Project", "apollo");
    let mut cases: Vec<(&str, pb::IsAuthorizedRequest)> = Vec::new();
    let mut r = good();
    r.action = uid("Blue::Action", &huge);
    cases.push(("action.id", r));
    let mut r = good();
    r.principal = uid(&huge, "ada");
    cases.push(("principal.type", r));
    let mut r = good();
    r.action = uid(&format!("Blue::{huge}"), "viewProject");
    cases.push(("action.type", r));
    let mut r = good();
    r.context_json = format!(r#"{{"{huge}": 1}}"#);
    cases.push(("context_json", r));
    let mut r = good();
    r.entities_json = format!(
        r#"[{{"uid": {{"type": "Blue::User", "id": "{huge}"}}, "attrs": {{"nope": 1}}, "parents": []}}]"#
    );
    cases.push(("entities_json", r));
    for (field, request) in cases {
        let status = client.is_authorized(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let message = status.message();
        assert!(message.starts_with(field), "{field}: {message}");
        assert!(message.len() <= 1400, "{field}: {} bytes", message.len());
        // The server still answers a known decision correctly after each.
        let ok = client.is_authorized(good()).await.unwrap().into_inner();
        assert_eq!(ok.decision, pb::Decision::Allow as i32);
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_huge_call_deadline_still_waits_at_most_the_configured_maximum() {
    let limits = Limits {
        max_revision_wait: std::time::Duration::from_millis(300),
        ..Limits::default()
    };
    let (running, mut client, _dir) = serve(limits).await;
    // 99999999 hours (the longest grpc-timeout there is), and one that overflows seconds.
    for timeout in ["99999999H", "99999999M", "99999999S"] {
        let mut req = tonic::Request::new(pb::IsAuthorizedRequest {
            min_revision: 1_000_000,
            ..common::ask("ada", "viewProject", "Blue::Project", "apollo")
        });
        req.metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            client.is_authorized(req),
        )
        .await
        .unwrap_or_else(|_| panic!("{timeout}: still waiting after 20 s"));
        let status = answer.unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{timeout}: {status:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn reflection_speaks_v1alpha_and_lists_only_what_the_decision_listener_serves() {
    let (running, _client, _dir) = serve(Limits::default()).await;
    let addr = running.addr.unwrap();
    let v1 = reflection_services(addr).await;
    let v1alpha = list_services!(v1alpha, addr);
    for services in [&v1, &v1alpha] {
        assert!(
            services.contains(&AUTHORIZER_SERVICE.to_string()),
            "{services:?}"
        );
        assert!(
            services.contains(&EXT_AUTHZ_SERVICE.to_string()),
            "Envoy's ext_authz is listed: {services:?}"
        );
        assert!(
            !services.iter().any(|s| s.contains("EntityStore")),
            "the data service is not on this listener: {services:?}"
        );
    }
    // A reflection client can describe Envoy's service and, file by file as grpcurl asks,
    // everything it imports, so a tool can call Check with no proto files of its own.
    let mut files = files_for(
        addr,
        MessageRequest::FileContainingSymbol(EXT_AUTHZ_SERVICE.into()),
    )
    .await;
    let service = files
        .iter()
        .flat_map(|f| f.service.iter())
        .find(|s| s.name() == "Authorization")
        .expect("the Authorization service is described");
    assert_eq!(service.method[0].name(), "Check");
    assert_eq!(
        service.method[0].input_type(),
        ".envoy.service.auth.v3.CheckRequest"
    );
    let mut seen: BTreeSet<String> = files.iter().map(|f| f.name().to_string()).collect();
    while let Some(f) = files.pop() {
        for dep in &f.dependency {
            if seen.insert(dep.clone()) {
                let got = files_for(addr, MessageRequest::FileByFilename(dep.clone())).await;
                assert_eq!(
                    got[0].name(),
                    dep,
                    "reflection sends {dep}, imported by {}",
                    f.name()
                );
                files.extend(got);
            }
        }
    }
    assert!(
        seen.contains("envoy/config/core/v3/base.proto")
            && seen.contains("validate/validate.proto"),
        "{seen:?}"
    );
    running.shutdown().await.unwrap();
}

/// The file descriptors reflection (v1) answers for a symbol or a file name.
async fn files_for(
    addr: std::net::SocketAddr,
    request: MessageRequest,
) -> Vec<prost_types::FileDescriptorProto> {
    use prost::Message;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut c = ServerReflectionClient::new(channel(addr).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(r)) => r
            .file_descriptor_proto
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
            .collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn on_shutdown_every_health_entry_goes_not_serving() {
    let (running, _client, _dir) = serve(Limits::default()).await;
    let addr = running.addr.unwrap();
    let mut watches = Vec::new();
    for service in ["", AUTHORIZER_SERVICE] {
        let mut c = HealthClient::new(channel(addr).await);
        let mut stream = c
            .watch(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32, "{service:?}");
        watches.push((service, stream));
    }
    let stop = tokio::spawn(running.shutdown());
    for (service, mut stream) in watches {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("a health change")
            .unwrap()
            .unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32, "{service:?}");
    }
    stop.await.unwrap().unwrap();
}

/// A whole screen in one call: every action with each declared context value (inviteMember's
/// role, changeMemberRole's, shareDashboard's level), each answer equal to IsAuthorized with
/// that context; a context given per action; and bad per-action contexts named.
#[tokio::test]
async fn list_allowed_actions_decides_each_declared_context_and_per_action_contexts() {
    let (running, mut client, _dir) = serve(Limits::default()).await;
    let mut compared = 0;
    for (user, rtype, rid) in [
        ("ada", "Blue::Project", "apollo"),
        ("cleo", "Blue::Project", "apollo"),
        ("vic", "Blue::Project", "apollo"),
        ("gus", "Blue::Project", "apollo"),
        ("dora", "Blue::Dashboard", "acme-kpis"),
        ("eli", "Blue::Dashboard", "acme-kpis"),
        ("val", "Blue::Dashboard", "acme-kpis"),
    ] {
        // Sharing needs whom to share with besides the declared level: given per action,
        // under which each level is laid.
        let with = r#"{"with": {"type": "Blue::User", "id": "vic"}}"#;
        let per_action: std::collections::HashMap<String, String> =
            [("shareDashboard".to_string(), with.to_string())].into();
        let r = client
            .list_allowed_actions(pb::ListAllowedActionsRequest {
                principal: uid("Blue::User", user),
                resource: uid(rtype, rid),
                each_declared_context: true,
                action_contexts_json: if rtype == "Blue::Dashboard" {
                    per_action.clone()
                } else {
                    Default::default()
                },
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.not_evaluated.is_empty(), "{user}: {:?}", r.not_evaluated);
        // Every (action, context) the pack can be asked, decided one by one.
        let pack = blue_authz::engine::pack::PolicyPack::load(
            &blue_authz::engine::pack::PackSpec::new(pack(), &[]),
        )
        .unwrap();
        let principal: cedar_policy::EntityUid = format!("Blue::User::\"{user}\"").parse().unwrap();
        let resource: cedar_policy::EntityUid = format!("{rtype}::\"{rid}\"").parse().unwrap();
        let mut expected = BTreeSet::new();
        let mut with_context = 0;
        for (action, _) in pack.actions_for(principal.type_name(), resource.type_name()) {
            let id = action.id().unescaped().to_string();
            let base = per_action
                .get(&id)
                .filter(|_| rtype == "Blue::Dashboard")
                .map_or(Default::default(), |c| match serde_json::from_str(c) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => panic!("{c} is no JSON object"),
                });
            let declared = blue_authz::engine::list::actions::declared_contexts(&pack, &id, &base);
            let contexts: Vec<String> = if declared.is_empty() {
                vec![String::new()]
            } else {
                with_context += 1;
                declared
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap())
                    .collect()
            };
            for context in contexts {
                let single = client
                    .is_authorized(pb::IsAuthorizedRequest {
                        principal: uid("Blue::User", user),
                        action: uid("Blue::Action", &id),
                        resource: uid(rtype, rid),
                        context_json: context.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                compared += 1;
                if single.decision == pb::Decision::Allow as i32 {
                    expected.insert((id.clone(), context, single.determining_policies));
                }
            }
        }
        assert!(
            with_context >= 1,
            "{rtype} has an action with declared contexts"
        );
        let listed: BTreeSet<(String, String, Vec<String>)> = r
            .allowed
            .into_iter()
            .map(|a| (a.action, a.context_json, a.determining_policies))
            .collect();
        assert_eq!(listed, expected, "{user} on {rtype} {rid}");
    }
    assert!(compared > 100, "{compared}");

    // Inviting, seen by view-only vic: only as view.
    let r = client
        .list_allowed_actions(pb::ListAllowedActionsRequest {
            principal: uid("Blue::User", "vic"),
            resource: uid("Blue::Project", "apollo"),
            each_declared_context: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let invites: Vec<&str> = r
        .allowed
        .iter()
        .filter(|a| a.action == "inviteMember")
        .map(|a| a.context_json.as_str())
        .collect();
    assert_eq!(invites, [r#"{"role":"view"}"#]);

    // One context for one action: only that action gets it; the rest take context_json.
    let ask = |contexts: &[(&str, &str)]| pb::ListAllowedActionsRequest {
        principal: uid("Blue::User", "cleo"),
        resource: uid("Blue::Project", "apollo"),
        action_contexts_json: contexts
            .iter()
            .map(|(a, c)| (a.to_string(), c.to_string()))
            .collect(),
        ..Default::default()
    };
    let r = client
        .list_allowed_actions(ask(&[("inviteMember", r#"{"role": "comment"}"#)]))
        .await
        .unwrap()
        .into_inner();
    let invite: Vec<&pb::AllowedAction> = r
        .allowed
        .iter()
        .filter(|a| a.action == "inviteMember")
        .collect();
    assert_eq!(invite.len(), 1, "{:?}", r.allowed);
    assert_eq!(invite[0].context_json, r#"{"role": "comment"}"#);
    assert!(r
        .not_evaluated
        .iter()
        .any(|n| n.action == "changeMemberRole" && n.context_json.is_empty()));
    for (contexts, field) in [
        (vec![("nope", "{}")], "action_contexts_json[nope]"),
        (
            vec![("inviteMember", r#"{"role": "owner"}"#)],
            "action_contexts_json[inviteMember]",
        ),
        (
            vec![("inviteMember", "[1]")],
            "action_contexts_json[inviteMember]",
        ),
    ] {
        let e = client
            .list_allowed_actions(ask(&contexts))
            .await
            .expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {}", e.message());
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    // A shared context with a value the pack does not declare: refused as for IsAuthorized.
    let mut owner = ask(&[]);
    owner.context_json = r#"{"role": "owner"}"#.into();
    let e = client.list_allowed_actions(owner).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("context.role"), "{}", e.message());
    running.shutdown().await.unwrap();
}

/// With the data service off (no data listener) the data path's health entry does not exist:
/// a probe of it answers NOT_FOUND, never SERVING (issue 31).
#[tokio::test]
async fn the_entity_store_health_entry_is_absent_when_the_data_service_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_on(&pack(), dir.path(), Limits::default());
    cfg.data_listen = None;
    cfg.data_unix = None;
    let mut running = server::start(cfg).await.unwrap();
    running.load().await.unwrap();
    assert!(running.data_addr.is_none() && running.data_unix.is_none());
    let mut c = HealthClient::new(channel(running.addr.unwrap()).await);
    let asked = c
        .check(HealthCheckRequest {
            service: "blue.authz.v1.EntityStore".into(),
        })
        .await;
    assert_eq!(
        asked.map(|r| r.into_inner().status).unwrap_err().code(),
        tonic::Code::NotFound
    );
    let overall = c
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.status, ServingStatus::Serving as i32);
    running.shutdown().await.unwrap();
}

/// An unknown type or action names the nearest valid name ("did you mean") and lists every
/// valid one, over gRPC as over HTTP (issue 31).
#[tokio::test]
async fn unknown_types_and_actions_say_what_was_meant_and_list_the_valid_names() {
    let (running, mut client, _dir) = serve(Limits::default()).await;
    let cases = [
        (
            pb::IsAuthorizedRequest {
                action: uid("Blue::Action", "editProjekt"),
                ..valid()
            },
            "action.id",
            "did you mean `editProject`?",
            "this pack's actions: archiveProject,",
        ),
        (
            pb::IsAuthorizedRequest {
                principal: uid("Blue::Usr", "ada"),
                ..valid()
            },
            "principal.type",
            "did you mean `Blue::User`?",
            "this pack's entity types: Blue::Company,",
        ),
        (
            pb::IsAuthorizedRequest {
                resource: uid("Project", "apollo"),
                ..valid()
            },
            "resource.type",
            "did you mean `Blue::Project`?",
            "Blue::User",
        ),
    ];
    for (req, field, meant, listed) in cases {
        let err = client.is_authorized(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument);
        let m = err.message();
        assert!(
            m.starts_with(field) && m.contains(meant) && m.contains(listed),
            "{m}"
        );
    }
    // Nothing near: the list alone.
    let err = client
        .is_authorized(pb::IsAuthorizedRequest {
            action: uid("Blue::Action", "fly"),
            ..valid()
        })
        .await
        .unwrap_err();
    assert!(
        !err.message().contains("did you mean") && err.message().contains("viewRecord"),
        "{}",
        err.message()
    );
    running.shutdown().await.unwrap();
}

/// A call to a service on a listener that does not serve it is UNIMPLEMENTED with a message
/// naming the listener that does, on the real binary (issue 31).
#[tokio::test]
async fn a_call_on_the_wrong_listener_names_the_listener_that_serves_it() {
    use crate::common::fleet::{channel, Bearer};
    use blue_authz::service::grpc::pb::entity_store_client::EntityStoreClient;
    let dir = tempfile::tempdir().unwrap();
    let mut server = crate::common::server::Binary::serve(&pack(), &dir.path().join("a.redb"))
        .args([
            "--data-listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
        ])
        .env("BLUE_AUTHZ_DATA_TOKEN", crate::common::TOKEN)
        .spawn();
    let started = server.wait_serving().clone();
    let (decisions, data, health) = (
        started.decisions.unwrap(),
        started.data.unwrap(),
        started.health.unwrap(),
    );
    let check = |e: tonic::Status, served_on: &str| {
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
        assert!(e.message().contains(served_on), "{}", e.message());
    };
    for addr in [data, health] {
        let e = AuthorizerClient::new(channel(addr).await)
            .is_authorized(valid())
            .await
            .unwrap_err();
        check(e, "served on the decision listener (--listen");
    }
    let e = EntityStoreClient::with_interceptor(channel(decisions).await, Bearer)
        .get_data_status(pb::GetDataStatusRequest {})
        .await
        .unwrap_err();
    check(e, "served on the data listener (--data-listen");
    // Each listener still serves its own.
    EntityStoreClient::with_interceptor(channel(data).await, Bearer)
        .get_data_status(pb::GetDataStatusRequest {})
        .await
        .unwrap();
    AuthorizerClient::new(channel(decisions).await)
        .is_authorized(valid())
        .await
        .unwrap();
}
