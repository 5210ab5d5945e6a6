//! Fleet writes under faults, with real binaries and a real PostgreSQL: a write that missed its
//! deadline never commits after a newer one (busy and paused replicas); a replica paused in
//! its transaction cannot stall the others' writes; an unanswered COMMIT (PostgreSQL killed or
//! stopped during it, on a private cluster of its own) is "outcome unknown" and its key tells
//! the truth, and a retry with the key never applies twice; compare-and-set on a membership.
//!
//! Without PostgreSQL the tests fail in CI (`CI=true`) and elsewhere say loudly that they were
//! skipped. They run beside each other and beside the rest of the suite: each has its own
//! schema, replicas and (for the COMMIT faults) its own cluster, and their bounds are meant to
//! hold on a loaded machine (the suite is run with two CPU hogs beside it).

use crate::common;

use std::time::{Duration, Instant};

use crate::common::fleet::*;
use crate::common::private_pg::{admin_retry, PrivatePg};
use crate::common::{edge, upsert};
use blue_authz::service::grpc::pb;
use tonic::Code;

const APOLLO_VIEW: (&str, &str) = ("Blue::Role", "apollo/view");

/// A replica's warnings and errors so far, for a failure message.
fn complaints(r: &Replica) -> Vec<String> {
    r.log()
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .cloned()
        .collect()
}

fn user(id: &str) -> serde_json::Value {
    serde_json::json!({"uid": {"type": "Blue::User", "id": id}, "attrs": {}, "parents": []})
}

/// A write with a deadline, keyed or not.
async fn write_with(
    d: &mut Data,
    ops: Vec<pb::WriteOp>,
    key: &str,
    timeout: Duration,
) -> Result<pb::WriteEntitiesResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::WriteEntitiesRequest {
        ops,
        idempotency_key: key.to_string(),
        ..Default::default()
    });
    req.set_timeout(timeout);
    d.write_entities(req).await.map(|r| r.into_inner())
}

/// What a failed write's trailer says: "not-applied", "unknown", or "" when it has none.
fn outcome(s: &tonic::Status) -> String {
    s.metadata()
        .get("blue-authz-write-outcome")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Every batch of the log, as (revision, batch JSON).
async fn log(pg: &tokio_postgres::Client) -> Vec<(i64, serde_json::Value)> {
    pg.query(
        "SELECT revision, batch FROM blue_authz_changes ORDER BY revision",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get::<_, i64>(0),
            serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
        )
    })
    .collect()
}

/// The revisions of the batches that put `user` with `parent` among its parents.
fn puts_with_parent(log: &[(i64, serde_json::Value)], user: &str, parent: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for (revision, batch) in log {
        for put in batch["puts"].as_array().unwrap() {
            let entity = &put[1];
            if entity["uid"]["id"] == user
                && entity["parents"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["id"] == parent))
            {
                out.push(*revision);
            }
        }
    }
    out
}

async fn decision(r: &Replica, who: &str, min_revision: u64) -> i32 {
    let mut a = decisions(r).await;
    let mut req = common::ask(who, "viewProject", "Blue::Project", "apollo");
    req.min_revision = min_revision;
    a.is_authorized(req).await.unwrap().into_inner().decision
}

/// Records enough to keep a replica busy validating for a while.
fn busy_batch(round: usize, n: usize) -> Vec<pb::WriteOp> {
    (0..n)
        .map(|i| upsert(record(&format!("busy-{round}-{i}"))))
        .collect()
}

/// How a late-commit round treats r0.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Busy with a large batch while the share waits.
    Busy,
    /// Busy, and paused (SIGSTOP) once the share is queued, most likely inside its
    /// transaction.
    PausedWithTheShare,
    /// Paused before the share reaches it: the client, which cannot know whether it will,
    /// abandons the share's key through r1 before revoking.
    PausedBeforeTheShare,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_missed_its_deadline_never_commits_after_a_newer_one() {
    let Some((pg, url)) = schema("fleet_late").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r0 = spawn(
        &format!("{url}&application_name=late_r0"),
        &dir.path().join("r0.redb"),
        &[
            "--source-idle-timeout-ms",
            "1000",
            "--log",
            "info,blue_authz::service::replica=debug",
        ],
    );
    let r1 = spawn(
        &url,
        &dir.path().join("r1.redb"),
        &["--source-idle-timeout-ms", "1000"],
    );
    let watcher = admin(5432).await;
    let (mut d0, mut d1) = (data(&r0).await, data(&r1).await);
    let mut rounds = Vec::new();
    rounds.extend(std::iter::repeat_n(Fault::Busy, 20));
    rounds.extend(std::iter::repeat_n(Fault::PausedWithTheShare, 20));
    rounds.extend(std::iter::repeat_n(Fault::PausedBeforeTheShare, 5));
    let mut resurrected = Vec::new();
    let mut busy_missed = 0;
    for (round, fault) in rounds.into_iter().enumerate() {
        let eve = format!("eve-{round}");
        let key = format!("share-{round}");
        write(&mut d1, vec![upsert(user(&eve))]).await.unwrap();
        // r0 busy with a 10,000-op batch; the share queued behind it, with 300 ms to commit.
        let mut busy_client = d0.clone();
        let busy = tokio::spawn(async move {
            write_with(
                &mut busy_client,
                busy_batch(round, 10_000),
                "",
                Duration::from_secs(30),
            )
            .await
        });
        wait_in_transaction(&watcher, "late_r0").await;
        let queued_before = queued(&r0);
        if fault == Fault::PausedBeforeTheShare {
            r0.server.signal("-STOP");
        }
        let mut share_client = d0.clone();
        let share_op = edge(true, ("Blue::User", &eve), APOLLO_VIEW);
        let share_key = key.clone();
        let share = tokio::spawn(async move {
            write_with(
                &mut share_client,
                vec![share_op],
                &share_key,
                Duration::from_millis(300),
            )
            .await
        });
        if fault == Fault::PausedWithTheShare {
            wait_until(|| queued(&r0) > queued_before, "r0 to queue the share").await;
            r0.server.signal("-STOP");
        }
        let e = match (share.await.unwrap(), fault) {
            (Err(e), _) => {
                // The server's DEADLINE_EXCEEDED, or the client's own timer (tonic: CANCELLED).
                assert!(
                    matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
                    "{e:?}"
                );
                if fault == Fault::Busy {
                    busy_missed += 1;
                }
                Some(e)
            }
            // r0 got through its busy batch and the share within the 300 ms: committed, and
            // before the revoke below, which must still win.
            (Ok(_), Fault::Busy) => None,
            (Ok(r), _) => {
                panic!("round {round}: the share must miss its deadline while r0 is paused: {r:?}")
            }
        };
        if fault == Fault::PausedBeforeTheShare {
            // Whatever r0 does with it later, the share's key never commits now.
            let got = d1
                .get_write(pb::GetWriteRequest {
                    idempotency_key: key.clone(),
                    abandon: true,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(got.abandoned && !got.committed, "{got:?}");
        }
        // The application revokes through r1, which answers at R. While r0 holds the head
        // (paused in the middle of sending its batch, PostgreSQL cannot time it out until the
        // connection does), r1 may answer "not applied, retry later": the application retries,
        // as the outcome trailer tells it to. On a loaded machine r0's busy batch can also
        // outlast the revoke's own deadline; the revoke is idempotent, so it is sent again.
        let started = Instant::now();
        let revoked = loop {
            match write_with(
                &mut d1,
                vec![edge(false, ("Blue::User", &eve), APOLLO_VIEW)],
                "",
                Duration::from_secs(10),
            )
            .await
            {
                Ok(r) => break r.revision,
                Err(e)
                    if ((e.code() == Code::Unavailable && outcome(&e) == "not-applied")
                        || matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded))
                        && started.elapsed() < Duration::from_secs(120) =>
                {
                    println!(
                        "round {round}: the revoke was not applied ({:?}: {}); retrying",
                        e.code(),
                        e.message()
                    );
                }
                Err(e) => panic!("round {round}: the revoke failed: {e:?}"),
            }
        };
        if fault != Fault::Busy {
            r0.server.signal("-CONT");
        }
        // r0 drains: its busy batch ends (committed, or ended by the source while paused)
        // and a write queued after the share is answered.
        let _ = busy.await.unwrap();
        let sentinel = loop {
            match write(&mut d0, vec![upsert(record(&format!("sentinel-{round}")))]).await {
                Ok(r) => break r,
                Err(e) if e.code() == Code::Unavailable => continue,
                Err(e) => panic!("sentinel through r0: {e:?}"),
            }
        };
        assert!(sentinel > revoked);
        for r in [&r0, &r1] {
            assert_eq!(
                decision(r, &eve, sentinel).await,
                pb::Decision::Deny as i32,
                "{eve} can view apollo again after the revoke at {revoked} ({fault:?})"
            );
        }
        let shared = puts_with_parent(&log(&pg).await, &eve, APOLLO_VIEW.1);
        // A share after the revoke brings the permission back. A share the server answered
        // DEADLINE_EXCEEDED for was promised not applied. Only when the client's own timer
        // fired first (CANCELLED: the server's deadline, counted from the request's arrival,
        // is a little later) may the share have committed, and then only before the revoke:
        // the caller does not know the outcome, and the revoke still wins.
        let after = shared.iter().any(|r| *r as u64 > revoked);
        let code = e.as_ref().map(|e| e.code());
        if after || (!shared.is_empty() && code.is_some_and(|c| c != Code::Cancelled)) {
            resurrected.push((eve.clone(), fault, code, revoked, shared));
        } else if !shared.is_empty() {
            println!(
                "round {round}: the share committed at {shared:?}, before the revoke at \
                 {revoked} ({fault:?}, answered {code:?})"
            );
        }
    }
    // Most busy rounds keep the share waiting past its deadline; on a fast run a few may not.
    assert!(
        busy_missed > 0,
        "no busy round kept the share past its deadline: the busy rounds tested nothing"
    );
    assert!(
        resurrected.is_empty(),
        "late shares in the log (user, fault, the share's answer, revoked at, share \
         revisions): {resurrected:?}"
    );
}

/// How many writes a replica (logging at debug) has queued so far.
fn queued(r: &Replica) -> usize {
    r.log()
        .iter()
        .filter(|l| l.contains("write queued"))
        .count()
}

/// Waits for a condition (30 s at most).
async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the replica named `app` (its application_name at the source) holds a write
/// transaction open: its session idle in transaction, the head locked.
async fn wait_in_transaction(pg: &tokio_postgres::Client, app: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = pg
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                 WHERE application_name = $1 AND state = 'idle in transaction' LIMIT 1",
                &[&app],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "{app} never held a write transaction open"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A plain connection to the PostgreSQL on `port`, as the superuser.
async fn admin(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_paused_in_its_transaction_does_not_stall_the_others() {
    let Some((_pg, url)) = schema("fleet_stall").await else {
        return;
    };
    let idle = Duration::from_millis(2000);
    let idle_ms = idle.as_millis().to_string();
    let limits = [
        "--source-idle-timeout-ms",
        idle_ms.as_str(),
        "--source-lock-timeout-ms",
        "3000",
    ];
    let dir = tempfile::tempdir().unwrap();
    let r0 = spawn(
        &format!("{url}&application_name=stall_r0"),
        &dir.path().join("r0.redb"),
        &limits,
    );
    let r1 = spawn(
        &format!("{url}&application_name=stall_r1"),
        &dir.path().join("r1.redb"),
        &limits,
    );
    let r2 = spawn(
        &format!("{url}&application_name=stall_r2"),
        &dir.path().join("r2.redb"),
        &limits,
    );
    let watcher = admin(5432).await;
    // Catch r0 inside a write transaction (validating a large batch) and pause it there.
    let mut d0 = data(&r0).await;
    let mut held = None;
    for attempt in 0..20 {
        let mut c = d0.clone();
        let busy = tokio::spawn(async move {
            write_with(
                &mut c,
                busy_batch(1000 + attempt, 5000),
                "",
                Duration::from_secs(120),
            )
            .await
        });
        let pid = wait_in_transaction(&watcher, "stall_r0").await;
        r0.server.signal("-STOP");
        let still: Option<String> = watcher
            .query_opt("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap()
            .map(|r| r.get(0));
        if still.as_deref() == Some("idle in transaction") {
            held = Some(busy);
            break;
        }
        // It committed in between: let it go and try again.
        r0.server.signal("-CONT");
        let _ = busy.await;
    }
    let busy = held.expect("r0 was never caught holding the head");
    // For 60 s, writes through r1 and r2 go on, each within the idle bound plus 1 s, and no
    // sessions pile up waiting for the head.
    let (mut d1, mut d2) = (data(&r1).await, data(&r2).await);
    let bound = idle + Duration::from_secs(1);
    let started = Instant::now();
    let (mut n, mut slowest, mut most_waiting) = (0u64, Duration::ZERO, 0i64);
    let mut last = 0;
    while started.elapsed() < Duration::from_secs(60) {
        let (d, via) = if n % 2 == 0 {
            (&mut d1, &r1)
        } else {
            (&mut d2, &r2)
        };
        let t = Instant::now();
        let r = write_with(
            d,
            vec![upsert(record(&format!("stall-{n}")))],
            "",
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "write {n} through a healthy replica failed: {e:?}; its log: {:#?}",
                complaints(via)
            )
        });
        let took = t.elapsed();
        assert!(
            took <= bound,
            "write {n} took {took:?} (bound {bound:?}) while r0 is paused"
        );
        assert!(r.revision > last);
        last = r.revision;
        slowest = slowest.max(took);
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name LIKE 'stall_r%' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        most_waiting = most_waiting.max(waiting);
        let s = status(d).await;
        assert!(s.writable, "a healthy replica says it cannot write: {s:?}");
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most_waiting <= 1,
        "{most_waiting} sessions waited for the head at once"
    );
    eprintln!("{n} writes through r1 and r2 while r0 was paused, slowest {slowest:?}");
    // r0 resumes: its transaction was ended by the source; it writes again by itself.
    r0.server.signal("-CONT");
    let ended = busy.await.unwrap();
    if let Err(e) = &ended {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let back = loop {
        match write(&mut d0, vec![upsert(record("r0-back"))]).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "r0 never wrote again: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(back > last);
    reach(&mut d1, back).await;
    reach(&mut d2, back).await;
    assert!(export(&mut d0).await == export(&mut d1).await);
    assert!(export(&mut d1).await == export(&mut d2).await);
}

/// How a round holds a COMMIT open at the source.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hold {
    /// Waiting for a synchronous standby that does not exist: the commit is durable, its
    /// answer never comes.
    Durable,
    /// In a deferred trigger that sleeps 3 s before the commit record: killed there, it never
    /// becomes durable; stopped there, it commits once resumed (its deadline is later).
    BeforeDurable,
}

/// Whether a batch in the log made `record`: the revisions that did.
async fn made(pg: &tokio_postgres::Client, record: &str) -> Vec<i64> {
    pg.query(
        "SELECT revision FROM blue_authz_changes WHERE batch LIKE '%' || $1 || '%' ORDER BY revision",
        &[&format!("\"{record}\"")],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Asks for a key's outcome until the source answers.
async fn resolve(d: &mut Data, key: &str) -> pb::GetWriteResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match d
            .get_write(pb::GetWriteRequest {
                idempotency_key: key.to_string(),
                abandon: false,
            })
            .await
        {
            Ok(r) => return r.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "GetWrite({key}): {e:?}");
                assert!(
                    Instant::now() < deadline,
                    "GetWrite({key}) never answered: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unanswered_commit_is_outcome_unknown_and_its_key_tells_the_truth() {
    if tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=2",
        tokio_postgres::NoTls,
    )
    .await
    .is_err()
        && schema("fleet_outcomes_probe").await.is_none()
    {
        return;
    }
    let Some(cluster) = PrivatePg::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = spawn(
        &cluster.url(),
        &dir.path().join("r.redb"),
        &[
            "--source-statement-timeout-ms",
            "1000",
            "--source-lock-timeout-ms",
            "800",
            "--source-idle-timeout-ms",
            "600",
        ],
    );
    let mut d = data(&r).await;
    let mut pg = admin_retry(cluster.port).await;
    // A trigger that holds a commit before it is durable, when a round arms it.
    pg.batch_execute(
        "CREATE TABLE hold_commit (armed boolean);
         CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF EXISTS (SELECT 1 FROM hold_commit WHERE armed) THEN PERFORM pg_sleep(3); END IF;
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER a_hold_commit AFTER INSERT ON blue_authz_changes
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit();",
    )
    .await
    .unwrap();
    let (mut unknown, mut committed_unknown, mut not_applied) = (0, 0, 0);
    let mut round = 0;
    for kill in [true, false] {
        let mut done = 0;
        while done < 20 {
            round += 1;
            let hold = if done % 2 == 0 {
                Hold::Durable
            } else {
                Hold::BeforeDurable
            };
            match hold {
                Hold::Durable => {
                    pg.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
                        .await
                        .unwrap();
                    pg.batch_execute("SELECT pg_reload_conf()").await.unwrap();
                }
                Hold::BeforeDurable => pg
                    .batch_execute("INSERT INTO hold_commit VALUES (true)")
                    .await
                    .unwrap(),
            }
            let key = format!("outcome-{round}");
            let id = format!("outcome-rec-{round}");
            let mut c = d.clone();
            let (k, i) = (key.clone(), id.clone());
            let sent = tokio::spawn(async move {
                write_with(&mut c, vec![upsert(record(&i))], &k, Duration::from_secs(8)).await
            });
            // Wait until the commit is held (or the write finished: the reload came late).
            let wait_event = match hold {
                Hold::Durable => "SyncRep",
                Hold::BeforeDurable => "PgSleep",
            };
            let held = loop {
                let n: i64 = pg
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE application_name = 'outcomes' AND wait_event = $1",
                        &[&wait_event],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n > 0 {
                    break true;
                }
                if sent.is_finished() {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let mut refused_while_down = None;
            if held {
                if kill {
                    cluster.kill();
                    // A write while the source is down: told "not applied".
                    let down_id = format!("down-rec-{round}");
                    let e = write_with(
                        &mut d,
                        vec![upsert(record(&down_id))],
                        &format!("down-{round}"),
                        Duration::from_secs(8),
                    )
                    .await
                    .expect_err("a write while the source is down");
                    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                    assert_eq!(outcome(&e), "not-applied", "{e:?}");
                    refused_while_down = Some(down_id);
                } else {
                    cluster.signal_all("-STOP");
                }
            }
            let answer = sent.await.unwrap();
            if held {
                if kill {
                    cluster.restart();
                    pg = admin_retry(cluster.port).await;
                } else {
                    cluster.signal_all("-CONT");
                }
            }
            // Disarm: the standby requirement (the held commit is then answered) and the
            // trigger's flag.
            pg.batch_execute("ALTER SYSTEM RESET synchronous_standby_names")
                .await
                .unwrap();
            pg.batch_execute("SELECT pg_reload_conf()").await.unwrap();
            pg.batch_execute("DELETE FROM hold_commit").await.unwrap();
            if !held {
                continue;
            }
            // The truth: GetWrite waits for a commit of the key still under way.
            let got = resolve(&mut d, &key).await;
            let truth = made(&pg, &id).await;
            match &answer {
                Ok(w) => {
                    assert_eq!(truth, vec![w.revision as i64], "acknowledged {key}");
                }
                Err(e) => {
                    match outcome(e).as_str() {
                        "not-applied" => {
                            assert!(truth.is_empty(), "{key} told not applied: {e:?}");
                            not_applied += 1;
                        }
                        "unknown" => {
                            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                            unknown += 1;
                        }
                        other => panic!("{key}: no outcome trailer ({other:?}): {e:?}"),
                    }
                    // The key tells the truth.
                    assert_eq!(
                        got.committed,
                        !truth.is_empty(),
                        "{key}: {got:?} vs {truth:?}"
                    );
                    if got.committed {
                        assert_eq!(vec![got.revision as i64], truth);
                        committed_unknown += 1;
                    }
                }
            }
            if let Some(down) = &refused_while_down {
                assert!(
                    made(&pg, down).await.is_empty(),
                    "{down} was told not applied"
                );
            }
            // A retry with the same key never applies twice.
            let retried = loop {
                match write_with(
                    &mut d,
                    vec![upsert(record(&id))],
                    &key,
                    Duration::from_secs(8),
                )
                .await
                {
                    Ok(w) => break w,
                    Err(e) if e.code() == Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("retry of {key}: {e:?}"),
                }
            };
            let after = made(&pg, &id).await;
            assert_eq!(
                after.len(),
                1,
                "{key} applied {} times: {after:?}",
                after.len()
            );
            assert_eq!(retried.replayed, got.committed || answer.is_ok(), "{key}");
            assert_eq!(retried.revision as i64, after[0]);
            done += 1;
        }
    }
    eprintln!(
        "40 commits held: {unknown} answered outcome unknown ({committed_unknown} of them had \
         committed), {not_applied} not applied"
    );
    assert!(unknown > 0 && committed_unknown > 0);
    assert!(
        committed_unknown < unknown,
        "some unknown outcomes had not committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_racing_on_one_membership_with_compare_and_set_one_wins() {
    let Some((_pg, url)) = schema("fleet_cas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(&url, &dir.path().join("a.redb"), &[]);
    let b = spawn(&url, &dir.path().join("b.redb"), &[]);
    let (mut da, mut db) = (data(&a).await, data(&b).await);
    let mut head = write(&mut da, vec![upsert(user("racer"))]).await.unwrap();
    for round in 0..10 {
        reach(&mut db, head).await;
        // A grants racer a membership, B revokes it: each only if nothing changed since.
        let grant = pb::WriteEntitiesRequest {
            ops: vec![edge(true, ("Blue::User", "racer"), APOLLO_VIEW)],
            expected_revision: Some(head),
            ..Default::default()
        };
        let revoke = pb::WriteEntitiesRequest {
            ops: vec![edge(false, ("Blue::User", "racer"), APOLLO_VIEW)],
            expected_revision: Some(head),
            ..Default::default()
        };
        let (ra, rb) = tokio::join!(da.write_entities(grant), db.write_entities(revoke));
        let (won, lost) = match (ra, rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w.into_inner(), l),
            (ra, rb) => panic!("round {round}: not exactly one winner: {ra:?} {rb:?}"),
        };
        assert_eq!(won.revision, head + 1);
        assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
        assert!(
            lost.message().contains("expected_revision")
                && lost
                    .message()
                    .contains(&format!("at revision {}", head + 1)),
            "the loser is told why: {lost:?}"
        );
        assert_eq!(outcome(&lost), "not-applied");
        head = won.revision;
    }
    // Per entity: the racer's last change, as each replica reads it.
    reach(&mut da, head).await;
    reach(&mut db, head).await;
    let last = |r: pb::ReadEntitiesResponse| r.revisions[0];
    let ask = || pb::ReadEntitiesRequest {
        uids: vec![common::uid("Blue::User", "racer").unwrap()],
    };
    let seen_a = last(da.read_entities(ask()).await.unwrap().into_inner());
    let seen_b = last(db.read_entities(ask()).await.unwrap().into_inner());
    assert_eq!((seen_a, seen_b), (head, head));
    let on = |rev| pb::WriteEntitiesRequest {
        ops: vec![edge(
            true,
            ("Blue::User", "racer"),
            ("Blue::Role", "apollo/member"),
        )],
        preconditions: vec![pb::EntityPrecondition {
            uid: common::uid("Blue::User", "racer"),
            expect: Some(pb::entity_precondition::Expect::LastChangedAt(rev)),
        }],
        ..Default::default()
    };
    // An unrelated write in between does not matter to a per-entity condition.
    let other = write(&mut db, vec![upsert(user("bystander"))])
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(da.write_entities(on(head)), db.write_entities(on(head)));
    let oks = [ra.is_ok(), rb.is_ok()];
    assert_eq!(oks.iter().filter(|ok| **ok).count(), 1, "{ra:?} {rb:?}");
    let lost = ra.err().or(rb.err()).unwrap();
    assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
    assert!(lost.message().contains("preconditions[0]"), "{lost:?}");
    assert!(other > head);
}
