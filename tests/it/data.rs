//! Durable entity data over real gRPC: writes and the decisions right after them, restarts,
//! a SIGKILL in the middle of a write stream, atomic batches, torn-read freedom, the token.

use crate::common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::server::{Binary, Server};
use crate::common::{config, delete, edge, pack, uid, upsert, TOKEN};
use blue_authz::service::grpc::pb::{
    self, authorizer_client::AuthorizerClient, entity_store_client::EntityStoreClient,
};
use blue_authz::service::server::{self, Limits, Running};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Adds `authorization: Bearer <token>` when it has one.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.0 {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

async fn data_client(addr: std::net::SocketAddr, token: Option<&str>) -> EntityStoreClient<Authed> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header = token.map(|t| format!("Bearer {t}").parse().unwrap());
    EntityStoreClient::with_interceptor(channel, Bearer(header))
}

struct Node {
    running: Running,
    decisions: AuthorizerClient<Channel>,
    data: EntityStoreClient<Authed>,
}

async fn node(dir: &std::path::Path) -> Node {
    let mut running = server::start(config(dir, Limits::default())).await.unwrap();
    running.load().await.unwrap();
    let decisions = AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap();
    let data = data_client(running.data_addr.unwrap(), Some(TOKEN)).await;
    Node {
        running,
        decisions,
        data,
    }
}

async fn write(data: &mut EntityStoreClient<Authed>, ops: Vec<pb::WriteOp>) -> u64 {
    data.write_entities(pb::WriteEntitiesRequest {
        ops,
        ..Default::default()
    })
    .await
    .expect("write")
    .into_inner()
    .revision
}

fn ask(user: &str, action: &str, rtype: &str, rid: &str, context: &str) -> pb::IsAuthorizedRequest {
    pb::IsAuthorizedRequest {
        principal: uid("Blue::User", user),
        action: uid("Blue::Action", action),
        resource: uid(rtype, rid),
        context_json: context.to_string(),
        entities_json: String::new(),
        min_revision: 0,
        explain: false,
    }
}

async fn allowed(
    c: &mut AuthorizerClient<Channel>,
    req: pb::IsAuthorizedRequest,
    after: u64,
) -> bool {
    let r = c.is_authorized(req).await.unwrap().into_inner();
    assert!(
        r.revision >= after,
        "decision at revision {} after write {after}",
        r.revision
    );
    r.decision == pb::Decision::Allow as i32
}

const USER: &str = "Blue::User";
const ROLE: &str = "Blue::Role";
const GROUP: &str = "Blue::DashboardGroup";

#[tokio::test]
async fn decisions_follow_membership_and_sharing_writes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let project = |a| ask("newbie", a, "Blue::Project", "apollo", "");

    // A new user, in no project yet.
    let rev = write(
        &mut n.data,
        vec![upsert(serde_json::json!({
            "uid": {"type": USER, "id": "newbie"}, "attrs": {}, "parents": []
        }))],
    )
    .await;
    assert!(!allowed(&mut n.decisions, project("viewProject"), rev).await);

    // Grant: joins apollo as a member (one edge).
    let rev2 = write(
        &mut n.data,
        vec![edge(true, (USER, "newbie"), (ROLE, "apollo/member"))],
    )
    .await;
    assert!(rev2 > rev, "revisions are monotonic");
    assert!(allowed(&mut n.decisions, project("editWiki"), rev2).await);
    assert!(!allowed(&mut n.decisions, project("editProject"), rev2).await);

    // Role change: member -> view, one call with two edge operations.
    let rev3 = write(
        &mut n.data,
        vec![
            edge(false, (USER, "newbie"), (ROLE, "apollo/member")),
            edge(true, (USER, "newbie"), (ROLE, "apollo/view")),
        ],
    )
    .await;
    assert!(!allowed(&mut n.decisions, project("editWiki"), rev3).await);
    assert!(allowed(&mut n.decisions, project("viewProject"), rev3).await);

    // Removed: everything denied.
    let rev4 = write(
        &mut n.data,
        vec![edge(false, (USER, "newbie"), (ROLE, "apollo/view"))],
    )
    .await;
    let list = n
        .decisions
        .list_allowed_actions(pb::ListAllowedActionsRequest {
            principal: uid(USER, "newbie"),
            resource: uid("Blue::Project", "apollo"),
            min_revision: rev4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.allowed.is_empty(), "{list:?}");
    assert!(list.revision >= rev4);

    // Share a dashboard (newbie joins acme first: dashboards stay in their company).
    let dash = || {
        ask(
            "newbie",
            "viewDashboard",
            "Blue::Dashboard",
            "acme-kpis",
            "",
        )
    };
    let rev5 = write(
        &mut n.data,
        vec![edge(true, (USER, "newbie"), (ROLE, "acme/view"))],
    )
    .await;
    assert!(!allowed(&mut n.decisions, dash(), rev5).await);
    let rev6 = write(
        &mut n.data,
        vec![edge(true, (USER, "newbie"), (GROUP, "acme-kpis/viewers"))],
    )
    .await;
    assert!(allowed(&mut n.decisions, dash(), rev6).await);
    // Revoke.
    let rev7 = write(
        &mut n.data,
        vec![edge(false, (USER, "newbie"), (GROUP, "acme-kpis/viewers"))],
    )
    .await;
    assert!(!allowed(&mut n.decisions, dash(), rev7).await);
    n.running.shutdown().await.unwrap();
}

/// Every default suite case, decided in one batch: the decisions and the revision.
async fn all_decisions(c: &mut AuthorizerClient<Channel>) -> (Vec<(i32, Vec<String>)>, u64) {
    let suites = blue_authz::authoring::suite::load_suites(&pack().join("tests")).unwrap();
    let cases = blue_authz::authoring::suite::effective_cases(&suites, &[]);
    // The cases the pack refuses would fail the batch; they are checked by tests/grpc.rs.
    let requests = cases
        .iter()
        .filter(|c| c.expect.invalid.is_none())
        .map(|c| {
            ask(
                c.principal.id().unescaped(),
                &c.action,
                &c.resource.type_name().to_string(),
                c.resource.id().unescaped(),
                &c.context.to_string(),
            )
        })
        .collect();
    let r = c
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            requests,
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    (
        r.responses
            .into_iter()
            .map(|r| (r.decision, r.determining_policies))
            .collect(),
        r.revision,
    )
}

#[tokio::test]
async fn a_restart_keeps_every_write_and_every_decision() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let rev = write(&mut n.data, vec![
        upsert(serde_json::json!({"uid": {"type": USER, "id": "newbie"}, "attrs": {}, "parents": [{"type": ROLE, "id": "apollo/client"}]})),
        edge(false, (USER, "max"), (ROLE, "apollo/member")),
        edge(true, (USER, "max"), (ROLE, "apollo/admin")),
        delete("Blue::Record", "apollo-by-vic"),
    ]).await;
    let before = all_decisions(&mut n.decisions).await;
    assert_eq!(before.1, rev);
    let export_before = export(&mut n.data).await;
    n.running.shutdown().await.unwrap();

    let mut n = node(dir.path()).await; // same database; the seed is not applied again
    let after = all_decisions(&mut n.decisions).await;
    assert_eq!(before, after);
    assert_eq!(export_before, export(&mut n.data).await);
    assert!(
        allowed(
            &mut n.decisions,
            ask("max", "editProject", "Blue::Project", "apollo", ""),
            rev
        )
        .await
    );
    assert!(
        allowed(
            &mut n.decisions,
            ask("newbie", "createRecord", "Blue::Project", "apollo", ""),
            rev
        )
        .await
    );
    let read = n
        .data
        .read_entities(pb::ReadEntitiesRequest {
            uids: vec![
                uid(USER, "newbie").unwrap(),
                uid("Blue::Record", "apollo-by-vic").unwrap(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        read.missing,
        vec![uid("Blue::Record", "apollo-by-vic").unwrap()]
    );
    assert!(read.entities_json.contains("newbie"));
    n.running.shutdown().await.unwrap();
}

/// The whole store through the streamed export: uid text -> entity JSON.
async fn export(
    data: &mut EntityStoreClient<Authed>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut stream = data
        .export_entities(pb::ExportEntitiesRequest { chunk_size: 7 })
        .await
        .unwrap()
        .into_inner();
    let mut out = std::collections::BTreeMap::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks += 1;
        let items: Vec<serde_json::Value> = serde_json::from_str(&chunk.entities_json).unwrap();
        for item in items {
            out.insert(item["uid"].to_string(), item);
        }
    }
    assert!(chunks > 1, "streamed in chunks");
    out
}

#[tokio::test]
async fn an_invalid_batch_is_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let (_, rev) = all_decisions(&mut n.decisions).await;
    let err = n.data.write_entities(pb::WriteEntitiesRequest { ops: vec![
        upsert(serde_json::json!({"uid": {"type": USER, "id": "ghost"}, "attrs": {}, "parents": []})),
        edge(true, (USER, "cora"), (ROLE, "apollo/admin")),
        // Schema violation: a record without its creator.
        upsert(serde_json::json!({"uid": {"type": "Blue::Record", "id": "broken"}, "attrs": {"project": {"type": "Blue::Project", "id": "apollo"}}, "parents": []})),
    ],
        ..Default::default()}).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("ops[2]"), "{}", err.message());
    assert!(
        err.message().contains("broken"),
        "names the entity: {}",
        err.message()
    );
    let (_, rev_after) = all_decisions(&mut n.decisions).await;
    assert_eq!(rev_after, rev, "the revision does not move");
    assert!(
        !allowed(
            &mut n.decisions,
            ask("cora", "editProject", "Blue::Project", "apollo", ""),
            0
        )
        .await
    );
    let read = n
        .data
        .read_entities(pb::ReadEntitiesRequest {
            uids: vec![uid(USER, "ghost").unwrap()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.missing.len(), 1, "nothing of the batch is visible");
    assert_eq!(read.revision, rev);

    // Other invalid operations name their index too.
    for (ops, field) in [
        (
            vec![edge(true, (USER, "nobody"), (ROLE, "apollo/view"))],
            "ops[0]",
        ),
        (
            vec![edge(true, (USER, "cora"), (ROLE, "apollo/no-such-role"))],
            "ops[0]",
        ),
        (
            vec![
                delete(USER, "x"),
                edge(true, (USER, "cora"), ("Blue::Project", "apollo")),
            ],
            "ops[1]",
        ),
        (
            vec![pb::WriteOp {
                op: Some(pb::write_op::Op::UpsertJson("{".into())),
            }],
            "ops[0].upsert_json",
        ),
        (vec![pb::WriteOp { op: None }], "ops[0]"),
    ] {
        let err = n
            .data
            .write_entities(pb::WriteEntitiesRequest {
                ops,
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    assert_eq!(all_decisions(&mut n.decisions).await.1, rev);
    n.running.shutdown().await.unwrap();
}

/// Cedar refuses entity data whose hierarchy has a cycle; so does the service, naming the
/// entity: a write batch that would close one, request-scoped entities that would, and the
/// store keeps deciding as before.
#[tokio::test]
async fn a_write_or_request_that_closes_a_hierarchy_cycle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let (before, rev) = all_decisions(&mut n.decisions).await;
    let role = |id: &str, parent: &str| {
        serde_json::json!({"uid": {"type": ROLE, "id": id}, "attrs": {},
            "parents": [{"type": ROLE, "id": parent}]})
    };
    for (ops, names) in [
        // The lowest group of the chain under the highest.
        (
            vec![edge(true, (ROLE, "apollo/view"), (ROLE, "apollo/admin"))],
            "apollo/",
        ),
        // A new group that is its own parent.
        (vec![upsert(role("loop", "loop"))], "loop"),
        // Two new groups, each the other's parent, in one batch.
        (
            vec![upsert(role("ping", "pong")), upsert(role("pong", "ping"))],
            "p",
        ),
    ] {
        let err = n
            .data
            .write_entities(pb::WriteEntitiesRequest {
                ops,
                ..Default::default()
            })
            .await
            .expect_err(names);
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("ops"), "{}", err.message());
        assert!(
            err.message().contains("own ancestor") && err.message().contains(names),
            "{}",
            err.message()
        );
    }
    // The same edge as a request-scoped entity.
    let mut req = ask("ada", "viewProject", "Blue::Project", "apollo", "");
    req.entities_json = serde_json::json!([{"uid": {"type": ROLE, "id": "apollo/view"},
        "attrs": {}, "parents": [{"type": ROLE, "id": "apollo/admin"}]}])
    .to_string();
    let err = n.decisions.is_authorized(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("entities_json") && err.message().contains("own ancestor"),
        "{}",
        err.message()
    );
    // A request-scoped group that re-parents without a cycle is fine.
    let mut req = ask("ada", "viewProject", "Blue::Project", "apollo", "");
    req.entities_json = serde_json::json!([{"uid": {"type": ROLE, "id": "apollo/view"},
        "attrs": {}, "parents": []}])
    .to_string();
    n.decisions.is_authorized(req).await.unwrap();
    assert_eq!(all_decisions(&mut n.decisions).await, (before, rev));
    n.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_data_service_needs_the_token_and_its_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let data_addr = n.running.data_addr.unwrap();
    let ops = || vec![edge(true, (USER, "vic"), (ROLE, "apollo/admin"))];
    for token in [None, Some("wrong"), Some("")] {
        let mut c = data_client(data_addr, token).await;
        let err = c
            .write_entities(pb::WriteEntitiesRequest {
                ops: ops(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        let err = c
            .read_entities(pb::ReadEntitiesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    assert!(
        !allowed(
            &mut n.decisions,
            ask("vic", "editProject", "Blue::Project", "apollo", ""),
            0
        )
        .await,
        "store unchanged"
    );
    assert_eq!(
        all_decisions(&mut n.decisions).await.1,
        1,
        "revision unchanged (the seed is 1)"
    );
    // The decision listener does not serve the data service, even with the token.
    let mut c = data_client(n.running.addr.unwrap(), Some(TOKEN)).await;
    let err = c
        .write_entities(pb::WriteEntitiesRequest {
            ops: ops(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    n.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn min_revision_waits_for_the_revision_or_fails_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let rev = all_decisions(&mut n.decisions).await.1;
    let mut req = Request::new(pb::IsAuthorizedRequest {
        min_revision: rev + 1,
        ..ask("ada", "viewProject", "Blue::Project", "apollo", "")
    });
    req.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = n.decisions.is_authorized(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(150));

    // A waiting call is answered as soon as a write reaches its revision.
    let mut waiter = n.decisions.clone();
    let pending = tokio::spawn(async move {
        let mut req = Request::new(pb::IsAuthorizedRequest {
            min_revision: rev + 1,
            ..ask("newbie", "viewProject", "Blue::Project", "apollo", "")
        });
        req.set_timeout(Duration::from_secs(5));
        waiter.is_authorized(req).await
    });
    let engine = n.running.engine.clone();
    common::until(
        "the call to wait for its revision",
        Duration::from_secs(30),
        || engine.revision_waiters() == 1,
    )
    .await;
    write(&mut n.data, vec![upsert(serde_json::json!({"uid": {"type": USER, "id": "newbie"}, "attrs": {}, "parents": [{"type": ROLE, "id": "apollo/view"}]}))]).await;
    let r = pending.await.unwrap().unwrap().into_inner();
    assert_eq!(r.decision, pb::Decision::Allow as i32);
    assert_eq!(r.revision, rev + 1);
    n.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_decision_ever_sees_half_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path()).await;
    // pat holds exactly one role in apollo at every revision; a torn read of a role change
    // (old edge removed, new not yet added) would deny viewProject.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    {
        let mut data = n.data.clone();
        let (stop, writes) = (stop.clone(), writes.clone());
        writers.push(tokio::spawn(async move {
            let roles = [
                "apollo/member",
                "apollo/view",
                "apollo/admin",
                "apollo/comment",
            ];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (from, to) = (roles[i % 4], roles[(i + 1) % 4]);
                write(
                    &mut data,
                    vec![
                        edge(false, (USER, "pat"), (ROLE, from)),
                        edge(true, (USER, "pat"), (ROLE, to)),
                    ],
                )
                .await;
                writes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    {
        // Records come and go in pairs: both exist or neither.
        let mut data = n.data.clone();
        let (stop, writes) = (stop.clone(), writes.clone());
        writers.push(tokio::spawn(async move {
            let rec = |id: &str| serde_json::json!({"uid": {"type": "Blue::Record", "id": id}, "attrs": {"project": {"type": "Blue::Project", "id": "apollo"}, "creator": {"type": USER, "id": "pat"}}, "parents": []});
            let mut present = false;
            while !stop.load(Ordering::Relaxed) {
                let ops = if present {
                    vec![delete("Blue::Record", "pair-a"), delete("Blue::Record", "pair-b")]
                } else {
                    vec![upsert(rec("pair-a")), upsert(rec("pair-b"))]
                };
                write(&mut data, ops).await;
                writes.fetch_add(1, Ordering::Relaxed);
                present = !present;
            }
        }));
    }
    let mut readers = Vec::new();
    let reads = Arc::new(AtomicU64::new(0));
    for _ in 0..2 {
        let mut c = n.decisions.clone();
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut checked = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .batch_is_authorized(pb::BatchIsAuthorizedRequest {
                        requests: vec![
                            ask("pat", "viewProject", "Blue::Project", "apollo", ""),
                            ask("ada", "deleteRecord", "Blue::Record", "pair-a", ""),
                            ask("ada", "deleteRecord", "Blue::Record", "pair-b", ""),
                        ],
                        min_revision: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let d: Vec<bool> = r
                    .responses
                    .iter()
                    .map(|x| x.decision == pb::Decision::Allow as i32)
                    .collect();
                assert!(d[0], "pat had no role at revision {}", r.revision);
                assert_eq!(d[1], d[2], "half a record pair at revision {}", r.revision);
                checked += 1;
                reads.fetch_add(1, Ordering::Relaxed);
            }
            checked
        }));
    }
    // Until enough writes and reads have interleaved (not for a fixed time).
    common::until("100 writes and 300 reads", Duration::from_secs(120), || {
        writes.load(Ordering::Relaxed) >= 100 && reads.load(Ordering::Relaxed) >= 300
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let mut checked = 0;
    for r in readers {
        checked += r.await.unwrap();
    }
    let writes = writes.load(Ordering::Relaxed);
    println!("{writes} writes, {checked} consistent reads");
    assert!(
        writes > 20 && checked > 100,
        "{writes} writes, {checked} reads"
    );
    n.running.shutdown().await.unwrap();
}

/// Starts the real binary, serving, with the data service on.
fn spawn_binary(dir: &std::path::Path) -> Server {
    let mut server = Binary::serve(&pack(), &dir.join("crash.redb"))
        .args([
            "--data-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--seed")
        .arg(pack().join("tests/fixture.json"))
        .env("BLUE_AUTHZ_DATA_TOKEN", TOKEN)
        .env("BLUE_AUTHZ_LOG", "info")
        .spawn();
    server.wait_serving();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_write_and_no_half_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_binary(dir.path());
    let data_addr = server.started.data.unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let attempted = Arc::new(AtomicU64::new(0));
    let writer = {
        let (acked, attempted) = (acked.clone(), attempted.clone());
        tokio::spawn(async move {
            let mut data = data_client(data_addr, Some(TOKEN)).await;
            let rec = |id: String| {
                upsert(
                    serde_json::json!({"uid": {"type": "Blue::Record", "id": id}, "attrs": {"project": {"type": "Blue::Project", "id": "apollo"}, "creator": {"type": USER, "id": "pat"}}, "parents": []}),
                )
            };
            for i in 1u64.. {
                attempted.store(i, Ordering::SeqCst);
                let ops = vec![rec(format!("crash-{i}-a")), rec(format!("crash-{i}-b"))];
                match data
                    .write_entities(pb::WriteEntitiesRequest {
                        ops,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => acked.store(i, Ordering::SeqCst),
                    Err(_) => return,
                }
            }
        })
    };
    // Kill it while writes stream.
    common::until("40 acknowledged batches", Duration::from_secs(60), || {
        acked.load(Ordering::SeqCst) >= 40
    })
    .await;
    server.kill(); // SIGKILL
    writer.await.unwrap();
    let acked = acked.load(Ordering::SeqCst);
    let attempted = attempted.load(Ordering::SeqCst);

    let server = spawn_binary(dir.path());
    let mut data = data_client(server.started.data.unwrap(), Some(TOKEN)).await;
    let uids: Vec<pb::EntityUid> = (1..=attempted + 1)
        .flat_map(|i| ["a", "b"].map(|s| uid("Blue::Record", &format!("crash-{i}-{s}")).unwrap()))
        .collect();
    let read = data
        .read_entities(pb::ReadEntitiesRequest { uids })
        .await
        .unwrap()
        .into_inner();
    let missing: std::collections::HashSet<String> =
        read.missing.iter().map(|u| u.id.clone()).collect();
    for i in 1..=attempted + 1 {
        let (a, b) = (
            !missing.contains(&format!("crash-{i}-a")),
            !missing.contains(&format!("crash-{i}-b")),
        );
        assert_eq!(a, b, "half of batch {i} survived");
        if i <= acked {
            assert!(a, "acknowledged batch {i} was lost (acked up to {acked})");
        }
    }
    println!(
        "acknowledged {acked} batches, attempted {attempted}; all acknowledged found after SIGKILL"
    );
}

#[test]
fn import_and_export_commands_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.redb");
    let bin = env!("CARGO_BIN_EXE_blue-authz");
    let policies = pack();
    let fixture = pack().join("tests/fixture.json");
    let out = Command::new(bin)
        .args([
            "--policies",
            policies.to_str().unwrap(),
            "import",
            fixture.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin)
        .args(["export", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let original: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    assert_eq!(exported.len(), original.len());
    let ids = |v: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        v.iter().map(|e| e["uid"]["id"].to_string()).collect()
    };
    assert_eq!(ids(&exported), ids(&original));
    // An invalid file is refused and changes nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"uid": {"type": "Blue::Record", "id": "r"}, "attrs": {}, "parents": []}]"#,
    )
    .unwrap();
    let out = Command::new(bin)
        .args([
            "--policies",
            policies.to_str().unwrap(),
            "import",
            bad.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.json[0]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin)
        .args(["export", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    let again: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again.len(), original.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_binary(dir.path());
    let addr = server.decisions();
    let metrics = server.started.metrics.unwrap();
    let mut c = AuthorizerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // A call in flight: it waits for a revision the store has not reached, up to its deadline.
    let pending = tokio::spawn(async move {
        let mut req = Request::new(pb::IsAuthorizedRequest {
            min_revision: 99,
            ..ask("ada", "viewProject", "Blue::Project", "apollo", "")
        });
        req.set_timeout(Duration::from_millis(1500));
        let started = Instant::now();
        (c.is_authorized(req).await, started.elapsed())
    });
    // Once it waits at the server, SIGTERM.
    common::until_async(
        "a call waiting for its revision",
        Duration::from_secs(30),
        async || {
            common::get_metrics_async(metrics)
                .await
                .contains("\nblue_authz_revision_waiters 1\n")
        },
    )
    .await;
    server.signal("-TERM");
    let (answer, took) = pending.await.unwrap();
    // The call ran to its own end (the revision wait), not cut off by the shutdown.
    let err = answer.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        took >= Duration::from_millis(1200),
        "answered after {took:?}"
    );
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    // And new connections are refused once it is gone.
    assert!(AuthorizerClient::connect(format!("http://{addr}"))
        .await
        .is_err());
}

/// Start-up reads the database on a second thread in chunks of about 1 MB and parses most
/// chunks there: a store of several chunks loads whole, whether its entities are trusted (stored
/// under this schema) or validated again (stored under another); an entity the schema refuses,
/// or a truncated one, fails the load with its error, and nothing hangs.
#[test]
fn a_store_of_many_chunks_loads_whole_and_a_bad_entity_fails_the_load() {
    use blue_authz::engine::pack::{PackSpec, PolicyPack};
    use blue_authz::service::startup::load_store;
    use blue_authz::storage::{RedbStorage, Storage};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authz.redb");
    let pack = PolicyPack::load(&PackSpec::new(pack(), &[])).unwrap();
    let seeded = {
        let storage = RedbStorage::open(&path).unwrap();
        let fixture = common::pack().join("tests/fixture.json");
        load_store(&storage, &pack, Some(&fixture)).unwrap().len()
    };
    let entities: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("entities");
    let meta: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("meta_text");
    let write = |rows: &[(String, Vec<u8>)], schema: Option<&str>| {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(entities).unwrap();
            for (k, v) in rows {
                table.insert(k.as_str(), v.as_slice()).unwrap();
            }
            if let Some(schema) = schema {
                txn.open_table(meta)
                    .unwrap()
                    .insert("schema", schema)
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    };
    let user = |id: &str, attrs: &str| {
        let json = format!(
            r#"{{"uid":{{"type":"Blue::User","id":"{id}"}},"attrs":{attrs},"parents":[{{"type":"Blue::Role","id":"apollo/view"}}]}}"#
        );
        (format!("Blue::User::\"{id}\""), json.into_bytes())
    };
    let load = || load_store(&RedbStorage::open(&path).unwrap(), &pack, None);
    // 30,000 users of about 100 bytes each: 3 MB, several chunks.
    let rows: Vec<_> = (0..30_000)
        .map(|i| user(&format!("bulk-{i:05}"), "{}"))
        .collect();
    write(&rows, None);
    let last: cedar_policy::EntityUid = r#"Blue::User::"bulk-29999""#.parse().unwrap();
    let store = load().unwrap();
    assert_eq!(store.len(), seeded + 30_000);
    assert!(store.contains(&last));

    // Stored under another schema: every entity is validated again, and the schema recorded.
    write(&[], Some("another schema"));
    let store = load().unwrap();
    assert_eq!(store.len(), seeded + 30_000);
    assert!(store.contains(&last));
    let storage = RedbStorage::open(&path).unwrap();
    assert_eq!(storage.schema().unwrap(), Some(pack.data_version.clone()));
    drop(storage);

    // An attribute the schema does not declare, found when validating again.
    write(
        &[user("bulk-15000x", r#"{"nickname": "x"}"#)],
        Some("another schema"),
    );
    let err = load().unwrap_err().to_string();
    assert!(
        err.contains("bulk-15000x") || err.contains("nickname"),
        "{err}"
    );

    // A truncated entity in the middle of the table.
    write(
        &[(
            "Blue::User::\"bulk-15000x\"".to_string(),
            br#"{"uid": {"type": "Blue::User", "id": "#.to_vec(),
        )],
        Some(pack.schema_version.as_str()),
    );
    let err = load().unwrap_err().to_string();
    assert!(err.contains("stored entity"), "{err}");

    // A hierarchy cycle in stored data (written before writes were checked for one).
    let cycle = br#"{"uid":{"type":"Blue::Role","id":"apollo/view"},"attrs":{},"parents":[{"type":"Blue::Role","id":"apollo/admin"}]}"#;
    write(
        &[
            user("bulk-15000x", "{}"),
            ("Blue::Role::\"apollo/view\"".to_string(), cycle.to_vec()),
        ],
        Some(pack.schema_version.as_str()),
    );
    let err = load().unwrap_err().to_string();
    assert!(
        err.contains("own ancestor") && err.contains("apollo/"),
        "{err}"
    );
}

#[tokio::test]
async fn the_data_service_bounds_what_one_call_may_cost() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_message_bytes: 20_000,
        max_write_ops: 50,
        ..Limits::default()
    };
    let mut running = server::start(config(dir.path(), limits)).await.unwrap();
    running.load().await.unwrap();
    let mut data = data_client(running.data_addr.unwrap(), Some(TOKEN)).await;
    let user = |i: usize| {
        upsert(
            serde_json::json!({"uid": {"type": "Blue::User", "id": format!("bulk-{i}")}, "attrs": {}, "parents": []}),
        )
    };

    // An export chunk over the maximum is refused, naming the field; the maximum is served.
    let err = data
        .export_entities(pb::ExportEntitiesRequest {
            chunk_size: u32::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("chunk_size"), "{}", err.message());
    let mut ok = data
        .export_entities(pb::ExportEntitiesRequest { chunk_size: 10_000 })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.message().await.unwrap().is_some());

    // A batch over the operation limit, and a message over the byte limit (but under tonic's
    // own cap of twice it), are refused naming what is wrong, and change nothing.
    let before = data
        .read_entities(pb::ReadEntitiesRequest { uids: vec![] })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let err = data
        .write_entities(pb::WriteEntitiesRequest {
            ops: (0..51).map(user).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("ops"), "{}", err.message());
    let big = upsert(
        serde_json::json!({"uid": {"type": "Blue::User", "id": "x".repeat(25_000)}, "attrs": {}, "parents": []}),
    );
    let err = data
        .write_entities(pb::WriteEntitiesRequest {
            ops: vec![big],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("exceeds the limit"),
        "{}",
        err.message()
    );
    let after = data
        .read_entities(pb::ReadEntitiesRequest { uids: vec![] })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(before, after);
    // Within both limits, the same kind of batch is written.
    let r = write(&mut data, (0..50).map(user).collect()).await;
    assert_eq!(r, before + 1);
    running.shutdown().await.unwrap();
}

/// The README's one data-service request body, sent as it is written there, on the demo data:
/// frank becomes a member of website, and the revision it returns shows the write.
#[tokio::test]
async fn the_readmes_write_request_body_does_what_it_says() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let call = readme
        .split("grpcurl -plaintext -H 'authorization: Bearer change-me' -d '")
        .nth(1)
        .expect("the README's WriteEntities call");
    let (body, rest) = call.split_once("' 127.0.0.1:50052 ").unwrap();
    assert!(rest.starts_with("blue.authz.v1.EntityStore/WriteEntities"));
    let body: serde_json::Value = serde_json::from_str(body).expect("the body is JSON");
    let uid_of =
        |v: &serde_json::Value| uid(v["type"].as_str().unwrap(), v["id"].as_str().unwrap());
    let ops: Vec<pb::WriteOp> = body["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            let op = op.as_object().unwrap();
            assert_eq!(op.len(), 1, "one operation per element: {op:?}");
            let (kind, v) = op.iter().next().unwrap();
            pb::WriteOp {
                op: Some(match kind.as_str() {
                    "upsertJson" => pb::write_op::Op::UpsertJson(v.as_str().unwrap().to_string()),
                    "addParent" => pb::write_op::Op::AddParent(pb::Edge {
                        child: uid_of(&v["child"]),
                        parent: uid_of(&v["parent"]),
                    }),
                    other => panic!("an operation this test does not know: {other}"),
                }),
            }
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Limits::default());
    c.seed = Some(common::root().join("data/demo.json"));
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    let mut decisions = AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap();
    let mut data = data_client(running.data_addr.unwrap(), Some(TOKEN)).await;
    let wiki = || ask("frank", "editWiki", "Blue::Project", "website", "");
    let before = decisions.is_authorized(wiki()).await.unwrap().into_inner();
    assert_eq!(before.decision, pb::Decision::Deny as i32);
    let revision = write(&mut data, ops).await;
    assert_eq!(revision, 2, "the README says revision 2");
    let mut after = wiki();
    after.min_revision = revision;
    let after = decisions.is_authorized(after).await.unwrap().into_inner();
    assert_eq!(after.decision, pb::Decision::Allow as i32);
    assert_eq!(after.determining_policies, ["project.editWiki"]);
    running.shutdown().await.unwrap();
}

/// `delete_owned` of a project takes what the pack's lifecycle.toml says it owns (its role
/// groups, its records) and removes every parent edge to them from the users that stay; no
/// entity is left with a dangling parent, and nothing of another project changes. A plain
/// `delete` removes the entity alone.
#[tokio::test]
async fn delete_owned_takes_what_the_pack_declares_and_leaves_no_dangling_edge() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let before = export(&mut n.data).await;
    let key = |ty: &str, id: &str| serde_json::json!({"type": ty, "id": id}).to_string();
    // An entity reference in an attribute, as a key (without the `__entity` wrapper).
    let reference = |v: &serde_json::Value| v.get("__entity").unwrap_or(v).to_string();
    let apollo = key("Blue::Project", "apollo");
    assert!(before.contains_key(&apollo));
    // What the declaration makes apollo own, computed from the data: the entities its role
    // attributes name and the records whose project is apollo.
    let roles: Vec<String> = ["admin", "member", "client", "comment", "view"]
        .iter()
        .map(|r| reference(&before[&apollo]["attrs"][r]))
        .collect();
    let records: Vec<String> = before
        .iter()
        .filter(|(_, e)| {
            e["uid"]["type"] == "Blue::Record" && reference(&e["attrs"]["project"]) == apollo
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert!(records.len() >= 2, "{records:?}");
    let mut owned: std::collections::BTreeSet<String> = roles.iter().cloned().collect();
    owned.extend(records.iter().cloned());
    owned.insert(apollo.clone());
    let zeus_before = ask("zed", "editWiki", "Blue::Project", "zeus", "");
    let zeus_answer = n
        .decisions
        .is_authorized(zeus_before.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(zeus_answer.decision, pb::Decision::Allow as i32);

    let revision = write(
        &mut n.data,
        vec![pb::WriteOp {
            op: Some(pb::write_op::Op::DeleteOwned(
                uid("Blue::Project", "apollo").unwrap(),
            )),
        }],
    )
    .await;
    let after = export(&mut n.data).await;
    let gone: std::collections::BTreeSet<String> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    assert_eq!(gone, owned, "exactly what apollo owns is deleted");
    // No entity keeps a parent that no longer exists; users that stay lost only apollo's roles.
    for (k, e) in &after {
        for p in e["parents"].as_array().unwrap() {
            assert!(after.contains_key(&p.to_string()), "{k} keeps parent {p}");
        }
        let old = &before[k];
        if old != e {
            assert_eq!(e["uid"]["type"], "Blue::User", "{k} changed: {e}");
            let kept: Vec<&serde_json::Value> = old["parents"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| !roles.contains(&p.to_string()))
                .collect();
            assert_eq!(
                e["parents"].as_array().unwrap().iter().collect::<Vec<_>>(),
                kept,
                "{k}"
            );
        }
    }
    // Decisions follow at the write's revision: nothing on apollo, zeus as before.
    let mut ada = ask("ada", "editWiki", "Blue::Project", "apollo", "");
    ada.min_revision = revision;
    let r = n.decisions.is_authorized(ada).await.unwrap().into_inner();
    assert_eq!(r.decision, pb::Decision::Deny as i32);
    let r = n
        .decisions
        .is_authorized(zeus_before)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.determining_policies, zeus_answer.determining_policies);

    // A plain delete of zeus removes zeus alone: its role groups stay.
    let before = after;
    write(&mut n.data, vec![delete("Blue::Project", "zeus")]).await;
    let after = export(&mut n.data).await;
    assert_eq!(before.len() - 1, after.len());
    assert!(!after.contains_key(&key("Blue::Project", "zeus")));
    n.running.shutdown().await.unwrap();
}

fn user_json(id: &str) -> serde_json::Value {
    serde_json::json!({"uid": {"type": "Blue::User", "id": id}, "attrs": {}, "parents": []})
}

/// The revision of each named entity's last change, as ReadEntities reports it.
async fn last_changed(data: &mut EntityStoreClient<Authed>, ids: &[&str]) -> Vec<u64> {
    data.read_entities(pb::ReadEntitiesRequest {
        uids: ids
            .iter()
            .map(|id| uid("Blue::User", id).unwrap())
            .collect(),
    })
    .await
    .unwrap()
    .into_inner()
    .revisions
}

#[tokio::test]
async fn compare_and_set_preconditions_and_idempotency_keys_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let made = write(&mut n.data, vec![upsert(user_json("cas"))]).await;
    assert_eq!(last_changed(&mut n.data, &["cas"]).await, vec![made]);
    // expected_revision: the second writer of the same revision is told why.
    let share = |expected: u64| pb::WriteEntitiesRequest {
        ops: vec![edge(
            true,
            ("Blue::User", "cas"),
            ("Blue::Role", "apollo/view"),
        )],
        expected_revision: Some(expected),
        ..Default::default()
    };
    let won = n
        .data
        .write_entities(share(made))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(won.revision, made + 1);
    let lost = n.data.write_entities(share(made)).await.unwrap_err();
    assert_eq!(lost.code(), Code::FailedPrecondition);
    assert!(
        lost.message().contains("expected_revision")
            && lost
                .message()
                .contains(&format!("at revision {}", made + 1)),
        "{lost:?}"
    );
    assert_eq!(
        lost.metadata().get("blue-authz-write-outcome").unwrap(),
        "not-applied"
    );
    // Per-entity preconditions: the entity's last change, or its absence.
    let at = last_changed(&mut n.data, &["cas"]).await[0];
    assert_eq!(at, made + 1);
    let revoke = |p: pb::EntityPrecondition| pb::WriteEntitiesRequest {
        ops: vec![edge(
            false,
            ("Blue::User", "cas"),
            ("Blue::Role", "apollo/view"),
        )],
        preconditions: vec![p],
        ..Default::default()
    };
    let on = |rev| pb::EntityPrecondition {
        uid: uid("Blue::User", "cas"),
        expect: Some(pb::entity_precondition::Expect::LastChangedAt(rev)),
    };
    let stale = n.data.write_entities(revoke(on(made))).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("preconditions[0]"), "{stale:?}");
    let fresh = n
        .data
        .write_entities(revoke(on(at)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        last_changed(&mut n.data, &["cas"]).await,
        vec![fresh.revision]
    );
    let absent = pb::EntityPrecondition {
        uid: uid("Blue::User", "newcomer"),
        expect: Some(pb::entity_precondition::Expect::Absent(true)),
    };
    let create = pb::WriteEntitiesRequest {
        ops: vec![upsert(user_json("newcomer"))],
        preconditions: vec![absent],
        ..Default::default()
    };
    n.data.write_entities(create.clone()).await.unwrap();
    let twice = n.data.write_entities(create).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");
    // An idempotency key: applied once, answered with the same revision after, and refused
    // for a different batch.
    let keyed = |id: &str| pb::WriteEntitiesRequest {
        ops: vec![upsert(user_json(id))],
        idempotency_key: "k-1".into(),
        ..Default::default()
    };
    let first = n
        .data
        .write_entities(keyed("once"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let again = n
        .data
        .write_entities(keyed("once"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.revision, again.replayed), (first.revision, true));
    let other = n.data.write_entities(keyed("other")).await.unwrap_err();
    assert_eq!(other.code(), Code::InvalidArgument);
    assert!(other.message().contains("idempotency_key"), "{other:?}");
    let ask_key = |key: &str, abandon: bool| pb::GetWriteRequest {
        idempotency_key: key.into(),
        abandon,
    };
    let got = n
        .data
        .get_write(ask_key("k-1", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.committed, got.revision), (true, first.revision));
    let none = n
        .data
        .get_write(ask_key("k-2", false))
        .await
        .unwrap()
        .into_inner();
    assert!(!none.committed && !none.abandoned);
    // Abandoned: a write that carries the key later never commits.
    let gone = n
        .data
        .get_write(ask_key("k-2", true))
        .await
        .unwrap()
        .into_inner();
    assert!(gone.abandoned && !gone.committed);
    let late = n
        .data
        .write_entities(pb::WriteEntitiesRequest {
            idempotency_key: "k-2".into(),
            ..keyed("late")
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    let status = n
        .data
        .read_entities(pb::ReadEntitiesRequest {
            uids: vec![uid("Blue::User", "late").unwrap()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.missing.len(), 1);
    // Keys survive a restart.
    n.running.shutdown().await.unwrap();
    let mut n = node(dir.path()).await;
    let again = n
        .data
        .write_entities(keyed("once"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.revision, again.replayed), (first.revision, true));
    n.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_write_whose_deadline_passed_is_refused_and_bad_tokens_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path()).await;
    let addr = n.running.data_addr.unwrap();
    // The bearer scheme in any case (RFC 7235).
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let lower = format!("bearer {TOKEN}").parse().unwrap();
    let mut client = EntityStoreClient::with_interceptor(channel.clone(), Bearer(Some(lower)));
    client
        .get_data_status(pb::GetDataStatusRequest {})
        .await
        .expect("a lowercase scheme is accepted");
    // Two Authorization headers: refused, even when one is right.
    let mut req = Request::new(pb::GetDataStatusRequest {});
    let good: MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    req.metadata_mut().append("authorization", good.clone());
    req.metadata_mut().append("authorization", good);
    let mut raw = EntityStoreClient::new(channel);
    let two = raw.get_data_status(req).await.unwrap_err();
    assert_eq!(two.code(), Code::Unauthenticated);
    // A deadline too short to be met is refused, not applied later.
    let mut data = data_client(addr, Some(TOKEN)).await;
    let mut req = Request::new(pb::WriteEntitiesRequest {
        ops: vec![upsert(user_json("hurried"))],
        ..Default::default()
    });
    req.metadata_mut()
        .insert("grpc-timeout", "1n".parse().unwrap());
    let e = data.write_entities(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    let read = data
        .read_entities(pb::ReadEntitiesRequest {
            uids: vec![uid("Blue::User", "hurried").unwrap()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        read.missing.len(),
        1,
        "a write past its deadline was applied"
    );
    n.running.shutdown().await.unwrap();
}

/// Cedar's own entity files list the schema's actions with the parents the schema declares
/// (as 950 files of Cedar's integration corpus do): such a file imports, its actions left out
/// of the data, and its decisions use the schema's action groups. An action entity that differs
/// from the declaration is refused, saying how (issue 31).
#[test]
fn cedar_entity_files_that_list_the_schemas_actions_import() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        "entity User;\nentity Doc;\n\
         action read appliesTo { principal: User, resource: Doc };\n\
         action view in [read] appliesTo { principal: User, resource: Doc };\n\
         action preview in [view] appliesTo { principal: User, resource: Doc };\n",
    )
    .unwrap();
    std::fs::write(
        policies.join("docs.cedar"),
        "@id(\"doc.read\")\npermit (principal, action in Action::\"read\", resource);\n",
    )
    .unwrap();
    let file = |preview_parents: &str| {
        let path = dir.path().join("entities.json");
        std::fs::write(
            &path,
            format!(
                r#"[
  {{"uid": {{"type": "User", "id": "alice"}}, "attrs": {{}}, "parents": []}},
  {{"uid": {{"type": "Doc", "id": "d1"}}, "attrs": {{}}, "parents": []}},
  {{"uid": {{"type": "Action", "id": "read"}}, "attrs": {{}}, "parents": []}},
  {{"uid": {{"type": "Action", "id": "view"}}, "attrs": {{}}, "parents": [{{"type": "Action", "id": "read"}}]}},
  {{"uid": {{"type": "Action", "id": "preview"}}, "attrs": {{}}, "parents": [{preview_parents}]}}
]"#
            ),
        )
        .unwrap();
        path
    };
    let import = |path: &std::path::Path, db: &str| {
        Binary::new()
            .arg("--policies")
            .arg(&policies)
            .args(["import", "--db"])
            .arg(dir.path().join(db))
            .arg(path)
            .stdout_piped()
            .output()
    };
    // As Cedar's corpus lists them: each action with its direct parents.
    let ok = import(&file(r#"{"type": "Action", "id": "view"}"#), "a.redb");
    let said =
        String::from_utf8_lossy(&ok.stdout).to_string() + &String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{said}");
    assert!(
        said.contains("imported 2 entities"),
        "only the data is stored: {said}"
    );
    // A decision through the schema's groups: preview is in view, which is in read.
    // `check` reads the same file: preview is in view, which is in read.
    let out = Binary::new()
        .arg("--policies")
        .arg(&policies)
        .args(["check", "--entities"])
        .arg(file(r#"{"type": "Action", "id": "view"}"#))
        .args([
            "--principal",
            r#"User::"alice""#,
            "--action",
            "preview",
            "--resource",
            r#"Doc::"d1""#,
        ])
        .stdout_piped()
        .output();
    let shown =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        shown.contains("ALLOW") && shown.contains("doc.read"),
        "{shown}"
    );

    // preview directly in read only: its groups differ from the declaration.
    let bad = import(&file(r#"{"type": "Action", "id": "read"}"#), "b.redb");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        said.contains("[4]")
            && said.contains(r#"action Action::"preview" differs from the schema's declaration"#)
            && said.contains(r#"where the schema declares [Action::"read", Action::"view"]"#),
        "{said}"
    );
}

/// `import` streams the file (issue 31): an entity whose parent exists nowhere, or a file that
/// makes an entity its own ancestor, is refused and nothing is written; a good file is then
/// imported whole, in one batch.
#[test]
fn import_refuses_dangling_parents_and_cycles_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let user = |id: &str, parents: &[(&str, &str)]| {
        serde_json::json!({"uid": {"type": "Blue::User", "id": id}, "attrs": {},
            "parents": parents.iter().map(|(t, i)| serde_json::json!({"type": t, "id": i})).collect::<Vec<_>>()})
    };
    let role = |id: &str, parents: &[(&str, &str)]| {
        let mut v = user(id, parents);
        v["uid"]["type"] = "Blue::Role".into();
        v
    };
    let import = |entities: serde_json::Value| {
        let path = dir.path().join("file.json");
        std::fs::write(&path, entities.to_string()).unwrap();
        Binary::new()
            .arg("--policies")
            .arg(pack())
            .args(["import", "--db"])
            .arg(&db)
            .arg(&path)
            .stdout_piped()
            .output()
    };
    let said = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    let dangling = import(serde_json::json!([user(
        "u1",
        &[("Blue::Role", "nowhere/admin")]
    )]));
    assert!(!dangling.status.success());
    assert!(
        said(&dangling).contains(
            r#"Blue::User::"u1" has parent Blue::Role::"nowhere/admin", which does not exist"#
        ),
        "{}",
        said(&dangling)
    );
    let cycle = import(serde_json::json!([
        role("r1", &[("Blue::Role", "r2")]),
        role("r2", &[("Blue::Role", "r1")])
    ]));
    let text = said(&cycle);
    assert!(
        !cycle.status.success() && text.contains("own ancestor"),
        "{text}"
    );
    // Nothing was written by either: the first good import is revision 1.
    let good = import(serde_json::json!([
        role("r1", &[]),
        user("u1", &[("Blue::Role", "r1")])
    ]));
    let text = said(&good);
    assert!(good.status.success(), "{text}");
    assert!(
        text.contains("imported 2 entities") && text.contains("(revision 1)"),
        "{text}"
    );
}

/// The pack's data assumptions (`assumptions.toml`) are enforced on writes: a batch that would
/// unchain a project's role groups is refused with INVALID_ARGUMENT naming the assumption and
/// the project, and nothing of it is written; a batch that writes a new project whose groups
/// are chained goes through, as do the ordinary membership writes and `delete_owned`.
#[tokio::test]
async fn writes_that_break_a_data_assumption_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let before = write(
        &mut n.data,
        vec![edge(true, (USER, "gus"), (ROLE, "apollo/view"))],
    )
    .await;
    let refused = n
        .data
        .write_entities(pb::WriteEntitiesRequest {
            ops: vec![
                edge(true, (USER, "zed"), (ROLE, "apollo/view")),
                edge(false, (ROLE, "apollo/admin"), (ROLE, "apollo/member")),
            ],
            ..Default::default()
        })
        .await
        .expect_err("an unchained project was written");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let m = refused.message();
    assert!(m.contains("project.rolesChained"), "{m}");
    assert!(m.contains(r#"Blue::Project::"apollo""#), "{m}");
    assert!(m.contains("admin in member in client"), "{m}");
    // Nothing of the batch was written: the revision did not move and admins are still members.
    let now = write(
        &mut n.data,
        vec![edge(true, (USER, "gus"), (ROLE, "apollo/view"))],
    )
    .await;
    assert_eq!(now, before + 1, "the refused batch took no revision");
    assert!(
        allowed(
            &mut n.decisions,
            ask("ada", "editWiki", "Blue::Project", "apollo", ""),
            now
        )
        .await
    );

    // A new project whose groups are chained, written in one batch, goes through; one whose
    // groups are not is refused.
    let role = |id: &str, parent: (&str, &str)| {
        upsert(
            serde_json::json!({"uid": {"type": ROLE, "id": id}, "attrs": {}, "parents": [{"type": parent.0, "id": parent.1}]}),
        )
    };
    let project = |id: &str| {
        let r =
            |k: &str| serde_json::json!({"__entity": {"type": ROLE, "id": format!("{id}/{k}")}});
        upsert(
            serde_json::json!({"uid": {"type": "Blue::Project", "id": id}, "attrs": {
            "company": {"__entity": {"type": "Blue::Company", "id": "acme"}},
            "admin": r("admin"), "member": r("member"), "client": r("client"),
            "comment": r("comment"), "view": r("view")}, "parents": []}),
        )
    };
    let chained = |id: &str, admin_parent: &str| {
        vec![
            project(id),
            role(&format!("{id}/view"), ("Blue::Project", id)),
            role(&format!("{id}/comment"), (ROLE, &format!("{id}/view"))),
            role(&format!("{id}/client"), (ROLE, &format!("{id}/comment"))),
            role(&format!("{id}/member"), (ROLE, &format!("{id}/client"))),
            role(
                &format!("{id}/admin"),
                (ROLE, &format!("{id}/{admin_parent}")),
            ),
        ]
    };
    let zeus = write(&mut n.data, chained("zeus", "member")).await;
    assert_eq!(zeus, now + 1);
    let bad = n
        .data
        .write_entities(pb::WriteEntitiesRequest {
            // admin's parent is the view group: admin is not in member.
            ops: chained("hera", "view"),
            ..Default::default()
        })
        .await
        .expect_err("an unchained new project was written");
    assert!(
        bad.message().contains(r#"Blue::Project::"hera""#),
        "{}",
        bad.message()
    );
    // delete_owned takes the project with its groups: nothing is left to break the assumption.
    let gone = write(
        &mut n.data,
        vec![pb::WriteOp {
            op: Some(pb::write_op::Op::DeleteOwned(
                uid("Blue::Project", "zeus").unwrap(),
            )),
        }],
    )
    .await;
    assert_eq!(gone, zeus + 1);
}
