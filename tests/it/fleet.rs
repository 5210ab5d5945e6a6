//! A fleet on one shared PostgreSQL source, with real binaries over real sockets: replicas
//! converge under concurrent writers, read-your-writes across replicas, gap freedom when an
//! earlier revision commits later, a follower killed mid-stream resumes, the source going away
//! and coming back, a replica whose position was pruned reads a new snapshot, WatchChanges.
//!
//! Each test works in a PostgreSQL schema of its own. Without PostgreSQL on 127.0.0.1:5432 the
//! tests fail in CI (`CI=true`) and elsewhere say loudly that they were skipped.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{delete, edge, pack, uid, upsert};
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::fleet::*;

/// A fixed set of decisions: every fixture user on a few actions of project apollo and of
/// records the writers touch.
async fn decide_all(a: &mut AuthorizerClient<Channel>, min_revision: u64) -> Vec<(String, i32)> {
    let users = [
        "ada", "max", "cleo", "cora", "vic", "gus", "pat", "newbie", "w0", "w1",
    ];
    let mut out = Vec::new();
    for u in users {
        for (action, ty, id) in [
            ("viewProject", "Blue::Project", "apollo"),
            ("editWiki", "Blue::Project", "apollo"),
            ("editRecord", "Blue::Record", "w0-1"),
            ("deleteRecord", "Blue::Record", "w1-2"),
        ] {
            let mut req = common::ask(u, action, ty, id);
            req.min_revision = min_revision;
            let r = a.is_authorized(req).await.unwrap().into_inner();
            assert!(r.revision >= min_revision);
            out.push((format!("{u} {action} {id}"), r.decision));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_and_four_writers_converge() {
    let Some((_pg, url)) = schema("fleet_converge").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas = [
        spawn(&url, &dir.path().join("a.redb"), &[]),
        spawn(&url, &dir.path().join("b.redb"), &[]),
        spawn(&url, &dir.path().join("c.redb"), &[]),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let revisions = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4usize {
        let mut d = data(&replicas[w % 3]).await;
        let (stop, revisions) = (stop.clone(), revisions.clone());
        writers.push(tokio::spawn(async move {
            let user = format!("w{w}");
            let mut n = 0u64;
            let r = write(&mut d, vec![upsert(serde_json::json!({"uid": {"type": USER, "id": user}, "attrs": {}, "parents": []}))]).await.unwrap();
            revisions.lock().unwrap().push(r);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut ops = vec![upsert(record(&format!("w{w}-{n}")))];
                if n.is_multiple_of(3) {
                    ops.push(delete("Blue::Record", &format!("w{w}-{}", n - 2)));
                }
                // Membership toggles: decisions depend on the order batches apply in.
                ops.push(edge(n % 2 == 1, (USER, &user), (ROLE, "apollo/member")));
                let r = write(&mut d, ops).await.unwrap();
                revisions.lock().unwrap().push(r);
            }
            n
        }));
    }
    // Until the writers have interleaved a few hundred batches (not for a fixed time).
    let written = revisions.clone();
    common::until("300 batches", Duration::from_secs(120), move || {
        written.lock().unwrap().len() >= 300
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut batches = 0;
    for w in writers {
        batches += w.await.unwrap();
    }
    let mut revisions = revisions.lock().unwrap().clone();
    revisions.sort();
    let distinct: BTreeSet<u64> = revisions.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        revisions.len(),
        "two writes got one revision"
    );
    let last = *revisions.last().unwrap();
    // The seed is revision 1; every later batch is one of the writers'.
    assert_eq!(
        revisions,
        (2..=last).collect::<Vec<_>>(),
        "revisions are not dense"
    );
    let mut exports = Vec::new();
    let mut answers = Vec::new();
    for r in &replicas {
        let mut d = data(r).await;
        reach(&mut d, last).await;
        exports.push(export(&mut d).await);
        answers.push(decide_all(&mut decisions(r).await, last).await);
    }
    assert_eq!(exports[0].0, last);
    for i in 1..3 {
        assert_eq!(exports[i].0, last, "replica {i} export revision");
        assert!(
            exports[i].1 == exports[0].1,
            "replica {i} holds other entities"
        );
        assert_eq!(answers[i], answers[0], "replica {i} decides otherwise");
    }
    assert!(
        answers[0]
            .iter()
            .any(|(_, d)| *d == pb::Decision::Allow as i32)
            && answers[0]
                .iter()
                .any(|(_, d)| *d == pb::Decision::Deny as i32)
    );
    println!(
        "{batches} batches from 4 writers over 3 replicas; all hold {} entities at revision {last}",
        exports[0].1.len()
    );
    assert!(batches > 40, "only {batches} batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_is_seen_on_another_with_its_revision() {
    let Some((_pg, url)) = schema("fleet_ryw").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(&url, &dir.path().join("a.redb"), &[]);
    // Polling only rarely: C must wait for the revision, not happen to have it.
    let c = spawn(
        &url,
        &dir.path().join("c.redb"),
        &["--source-poll-ms", "5000"],
    );
    let mut da = data(&a).await;
    let mut dc = decisions(&c).await;
    write(
        &mut da,
        vec![upsert(
            serde_json::json!({"uid": {"type": USER, "id": "newbie"}, "attrs": {}, "parents": []}),
        )],
    )
    .await
    .unwrap();
    for i in 0..200 {
        let member = i % 2 == 0;
        let rev = write(
            &mut da,
            vec![edge(member, (USER, "newbie"), (ROLE, "apollo/member"))],
        )
        .await
        .unwrap();
        let mut req = common::ask("newbie", "editWiki", "Blue::Project", "apollo");
        req.min_revision = rev;
        let r = dc.is_authorized(req).await.unwrap().into_inner();
        let want = if member {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        };
        assert_eq!(
            r.decision, want as i32,
            "iteration {i}, revision {rev}: {r:?}"
        );
        assert!(r.revision >= rev);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_one_replica_commit_together_each_its_own_revision() {
    let Some((pg, url)) = schema("fleet_group").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(&url, &dir.path().join("a.redb"), &[]);
    let b = spawn(&url, &dir.path().join("b.redb"), &[]);
    let mut da = data(&a).await;
    let before = status(&mut da).await.revision;
    // 64 writes at once on A; every fourth names a parent nobody made and is refused alone.
    let mut tasks = Vec::new();
    for i in 0..64usize {
        let mut d = da.clone();
        tasks.push(tokio::spawn(async move {
            let mut ops = vec![upsert(record(&format!("g-{i}")))];
            if i % 4 == 3 {
                ops.push(edge(true, (USER, "pat"), (ROLE, "nowhere/none")));
            }
            (i, write(&mut d, ops).await)
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        let (i, outcome) = t.await.unwrap();
        if i % 4 == 3 {
            let e = outcome.expect_err("a write naming a missing parent is refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(
                e.message().contains("ops[1]") && e.message().contains("does not exist"),
                "{e:?}"
            );
        } else {
            revisions.push(outcome.unwrap_or_else(|e| panic!("write {i}: {e:?}")));
        }
    }
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (before + 1..=before + 48).collect::<Vec<_>>(),
        "the accepted writes' revisions are not one each and dense"
    );
    // Written together: some transaction (the rows' xmin) holds several log batches.
    let rows = pg
        .query(
            "SELECT count(*) FROM blue_authz_changes WHERE revision > $1 GROUP BY xmin::text",
            &[&(before as i64)],
        )
        .await
        .unwrap();
    let sizes: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(sizes.iter().sum::<i64>(), 48);
    assert!(
        sizes.iter().any(|n| *n > 1),
        "no two writes shared a transaction: {sizes:?}"
    );
    // Both replicas hold the accepted records and nothing of the refused writes.
    let last = before + 48;
    let mut db = data(&b).await;
    reach(&mut db, last).await;
    let (ea, eb) = (export(&mut da).await, export(&mut db).await);
    assert_eq!((ea.0, eb.0), (last, last));
    assert!(ea.1 == eb.1, "the replicas hold other entities");
    for i in 0..64 {
        let held = ea.1.iter().any(|e| e.contains(&format!("\"g-{i}\"")));
        assert_eq!(held, i % 4 != 3, "record g-{i}");
    }
    println!("transactions for 48 accepted writes: {}", sizes.len());
}

/// Writes one record's batch at `revision` straight into the source, in the log's format, in
/// an open transaction; with `head`, it also moves the head there.
async fn put_batch(txn: &tokio_postgres::Transaction<'_>, revision: i64, id: &str, head: bool) {
    let entity = record(id);
    let uid = format!("Blue::Record::\"{id}\"");
    let batch = serde_json::json!({"puts": [[uid, entity]], "deletes": []}).to_string();
    txn.execute(
        "INSERT INTO blue_authz_entities VALUES ($1, $2)",
        &[&uid, &entity.to_string()],
    )
    .await
    .unwrap();
    txn.execute(
        "INSERT INTO blue_authz_changes (revision, batch) VALUES ($1, $2)",
        &[&revision, &batch],
    )
    .await
    .unwrap();
    if head {
        txn.execute(
            "UPDATE blue_authz_head SET revision = $1 WHERE id = 1",
            &[&revision],
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_commits_late_is_applied_in_order_and_never_skipped() {
    let Some((mut pg, url)) = schema("fleet_gap").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(&url, &dir.path().join("a.redb"), &[]);
    let b = spawn(&url, &dir.path().join("b.redb"), &[]);
    let (mut da, mut db) = (data(&a).await, data(&b).await);
    let h = write(&mut da, vec![upsert(record("before"))])
        .await
        .unwrap();
    reach(&mut db, h).await;

    // 1. A transaction that takes revision h+1 the way writers do (the head lock) and stays
    // open: a write through A waits for it instead of taking a later revision past it.
    let holder: i32 = pg
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let held = pg.transaction().await.unwrap();
    let head: i64 = held
        .query_one(
            "SELECT revision FROM blue_authz_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(head as u64, h);
    put_batch(&held, head + 1, "held", true).await;
    let later = tokio::spawn(async move { write(&mut da, vec![upsert(record("later"))]).await });
    // Until the write waits at PostgreSQL for the head lock the open transaction holds.
    common::until_async(
        "the write to wait for the head lock",
        Duration::from_secs(30),
        async || blocked_by(holder).await > 0,
    )
    .await;
    assert!(
        !later.is_finished(),
        "a write went past an open earlier revision"
    );
    assert_eq!(status(&mut db).await.revision, h);
    held.commit().await.unwrap();
    let r = later.await.unwrap().unwrap();
    assert_eq!(r, h + 2);
    reach(&mut db, h + 2).await;

    // 2. Written past the protocol: h+3 stays open while h+4 commits. The follower applies
    // neither until h+3 commits, then both, in order.
    let (mut pg2, conn2) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn2);
    pg2.batch_execute("SET search_path TO fleet_gap")
        .await
        .unwrap();
    let open = pg.transaction().await.unwrap();
    put_batch(&open, head + 3, "third", false).await;
    let second = pg2.transaction().await.unwrap();
    put_batch(&second, head + 4, "fourth", true).await;
    second.commit().await.unwrap();
    // Until B has seen the source's head at h+4, and polled it once more after that.
    common::until_async(
        "B to see the head at h+4",
        Duration::from_secs(30),
        async || status(&mut db).await.source_revision == (head + 4) as u64,
    )
    .await;
    let seen = Instant::now();
    common::until_async("B to poll once more", Duration::from_secs(30), async || {
        status(&mut db)
            .await
            .ms_since_source_answered
            .is_some_and(|ms| Duration::from_millis(ms) < seen.elapsed())
    })
    .await;
    assert_eq!(
        status(&mut db).await.revision,
        h + 2,
        "the follower stepped over an uncommitted revision"
    );
    open.commit().await.unwrap();
    reach(&mut db, h + 4).await;
    let read = db
        .read_entities(pb::ReadEntitiesRequest {
            uids: ["before", "held", "later", "third", "fourth"]
                .iter()
                .map(|id| uid("Blue::Record", id).unwrap())
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        read.missing.is_empty(),
        "missing on the follower: {:?}",
        read.missing
    );

    // The change stream shows the same order.
    let mut stream = db
        .watch_changes(pb::WatchChangesRequest { from_revision: h })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let ids: Vec<serde_json::Value> = serde_json::from_str(&batch.upserts_json).unwrap();
        seen.push((
            batch.revision,
            ids[0]["uid"]["id"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (h + 1, "held".to_string()),
            (h + 2, "later".to_string()),
            (h + 3, "third".to_string()),
            (h + 4, "fourth".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_mid_stream_resumes_from_its_own_position() {
    let Some((_pg, url)) = schema("fleet_kill").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(&url, &dir.path().join("a.redb"), &[]);
    let c_db = dir.path().join("c.redb");
    let c = spawn(&url, &c_db, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let writer = {
        let mut d = data(&a).await;
        let (stop, last) = (stop.clone(), last.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = write(&mut d, vec![upsert(record(&format!("k{n}")))])
                    .await
                    .unwrap();
                last.store(r, Ordering::SeqCst);
            }
        })
    };
    let past = |n: u64| {
        let last = last.clone();
        move || last.load(Ordering::SeqCst) >= n
    };
    common::until("100 batches", Duration::from_secs(60), past(100)).await;
    drop(c); // SIGKILL while batches stream in
    let killed_at = last.load(Ordering::SeqCst);
    common::until(
        "batches while C is down",
        Duration::from_secs(60),
        past(killed_at + 20),
    )
    .await;
    let c = spawn(&url, &c_db, &[]);
    let restarted_at = last.load(Ordering::SeqCst);
    common::until(
        "batches after C restarts",
        Duration::from_secs(60),
        past(restarted_at + 20),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let last = last.load(Ordering::SeqCst);
    let mut dc = data(&c).await;
    reach(&mut dc, last).await;
    let started: Vec<String> = c.log();
    assert!(
        !started.iter().any(|l| l.contains("reading a snapshot")),
        "the restarted follower read a snapshot instead of resuming: {started:#?}"
    );
    let resumed = started
        .iter()
        .find(|l| l.contains("local copy of the shared source open"))
        .expect("start-up line");
    assert!(!resumed.contains(" revision=0 "), "{resumed}");
    let mut da = data(&a).await;
    assert!(export(&mut da).await == export(&mut dc).await);
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and refuse new ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let born = gen2.load(Ordering::SeqCst);
                let gen3 = gen2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while gen3.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Proxy {
            port,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_while_the_source_is_away_and_converge_when_it_is_back() {
    let Some((_pg, _)) = schema("fleet_down").await else {
        return;
    };
    let proxy = Proxy::start().await;
    let url = url_for("fleet_down", proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(
        &url,
        &dir.path().join("a.redb"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let b = spawn(&url, &dir.path().join("b.redb"), &[]);
    let (mut da, mut db) = (data(&a).await, data(&b).await);
    let (mut ca, mut cb) = (decisions(&a).await, decisions(&b).await);
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push((
            format!("up-{i}"),
            write(&mut da, vec![upsert(record(&format!("up-{i}")))])
                .await
                .unwrap(),
        ));
    }
    proxy.cut();
    // Writes fail UNAVAILABLE, saying why; decisions go on.
    let mut refused = 0;
    for i in 0..5 {
        match write(&mut da, vec![upsert(record(&format!("down-{i}")))]).await {
            Ok(r) => acked.push((format!("down-{i}"), r)),
            Err(e) => {
                // Not applied, or (the cut met a COMMIT in flight) outcome unknown: each
                // says which, in the message and the trailer.
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                let outcome = e.metadata().get("blue-authz-write-outcome").unwrap();
                let said = if outcome == "unknown" {
                    "outcome unknown"
                } else {
                    "shared source is unavailable"
                };
                assert!(e.message().contains(said), "{e:?}");
                refused += 1;
            }
        }
        for c in [&mut ca, &mut cb] {
            let r = c
                .is_authorized(common::ask("ada", "editProject", "Blue::Project", "apollo"))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.decision, pb::Decision::Allow as i32);
        }
    }
    assert!(
        refused >= 4,
        "only {refused} writes refused with the source cut"
    );
    let s = status(&mut da).await;
    assert!(
        !s.source_reachable && !s.writable && !s.last_error.is_empty(),
        "{s:?}"
    );
    proxy.restore();
    // Writes succeed again by themselves.
    let deadline = Instant::now() + Duration::from_secs(20);
    let back = loop {
        match write(&mut da, vec![upsert(record("back"))]).await {
            Ok(r) => break r,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable);
                assert!(Instant::now() < deadline, "writes did not come back: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    acked.push(("back".to_string(), back));
    reach(&mut db, back).await;
    assert!(export(&mut da).await == export(&mut db).await);
    let read = db
        .read_entities(pb::ReadEntitiesRequest {
            uids: acked
                .iter()
                .map(|(id, _)| uid("Blue::Record", id).unwrap())
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        read.missing.is_empty(),
        "acknowledged writes lost: {:?}",
        read.missing
    );
    // B never wrote: its probe of the source's head finds writes possible again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&mut db).await;
        if s.source_reachable && s.writable {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never said writable again: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_position_was_pruned_reads_a_new_snapshot() {
    let Some((_pg, _)) = schema("fleet_prune").await else {
        return;
    };
    let direct = url_for("fleet_prune", 5432);
    let proxy = Proxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(
        &direct,
        &dir.path().join("a.redb"),
        &["--log-retention-batches", "5"],
    );
    // C reaches the source through the proxy, so it can fall behind while it runs.
    let c = spawn(
        &url_for("fleet_prune", proxy.port),
        &dir.path().join("c.redb"),
        &[],
    );
    let (mut da, mut dc) = (data(&a).await, data(&c).await);
    let first = write(&mut da, vec![upsert(record("p-0"))]).await.unwrap();
    reach(&mut dc, first).await;
    proxy.cut();
    let mut last = first;
    for i in 1..=30 {
        let mut ops = vec![upsert(record(&format!("p-{i}")))];
        if i == 10 {
            ops.push(delete("Blue::Record", "p-0"));
        }
        last = write(&mut da, ops).await.unwrap();
    }
    // The log now starts long after C's position.
    let err = da
        .watch_changes(pb::WatchChangesRequest {
            from_revision: first,
        })
        .await
        .expect_err("a pruned position is refused");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("older than the retained change log"),
        "{err:?}"
    );
    // From 0 means from the oldest retained batch: the stream starts there, not with an error.
    let mut from_start = da
        .watch_changes(pb::WatchChangesRequest { from_revision: 0 })
        .await
        .expect("from 0 on a pruned log")
        .into_inner();
    let oldest = from_start.next().await.unwrap().unwrap().revision;
    assert!(
        oldest > first && oldest <= last - 4,
        "oldest retained: {oldest}"
    );
    let mut expected = oldest + 1;
    while expected <= last {
        let b = from_start.next().await.unwrap().unwrap();
        assert_eq!(b.revision, expected);
        expected += 1;
    }
    drop(from_start);
    proxy.restore();
    reach(&mut dc, last).await;
    assert!(export(&mut da).await == export(&mut dc).await);
    let log = c.log();
    assert!(
        log.iter().any(|l| l.contains("pruned from the change log")),
        "{log:#?}"
    );
    // And a replica started after the pruning reads a snapshot at start-up.
    let late = spawn(&direct, &dir.path().join("late.redb"), &[]);
    let mut dl = data(&late).await;
    assert!(export(&mut da).await == export(&mut dl).await);
    drop((a, c, late));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_pruned_by_age_and_a_follower_within_it_goes_on() {
    let Some((pg, url)) = schema("fleet_age").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(&url, &dir.path().join("a.redb"), &[]);
    let b = spawn(&url, &dir.path().join("b.redb"), &[]);
    let (mut da, mut db) = (data(&a).await, data(&b).await);
    let mut old = 0;
    for i in 0..5 {
        old = write(&mut da, vec![upsert(record(&format!("old-{i}")))])
            .await
            .unwrap();
    }
    // The old batches aged an hour (rather than waiting for them to age).
    pg.execute(
        "UPDATE blue_authz_changes SET committed_at = committed_at - interval '1 hour' \
         WHERE revision <= $1",
        &[&(old as i64)],
    )
    .await
    .unwrap();
    let young = write(&mut da, vec![upsert(record("young"))]).await.unwrap();
    reach(&mut db, young).await;
    let source = blue_authz::storage::PgSource::new(&url).unwrap();
    let through = source
        .prune_older_than(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(through, old, "pruned through {through}");
    let err = db
        .watch_changes(pb::WatchChangesRequest {
            from_revision: old - 1,
        })
        .await
        .expect_err("pruned");
    assert_eq!(err.code(), Code::OutOfRange);
    let mut stream = db
        .watch_changes(pb::WatchChangesRequest { from_revision: old })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.revision, young);
    // The follower, within the log, goes on from its position.
    let next = write(&mut da, vec![upsert(record("next"))]).await.unwrap();
    reach(&mut db, next).await;
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.revision, next);
    assert!(!b
        .log()
        .iter()
        .any(|l| l.contains("pruned from the change log")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_changes_needs_a_shared_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), Default::default());
    config.watch = false;
    let mut running = blue_authz::service::server::start(config).await.unwrap();
    running.load().await.unwrap();
    let mut d = data_at(running.data_addr.unwrap()).await;
    let err = d
        .watch_changes(pb::WatchChangesRequest { from_revision: 0 })
        .await
        .expect_err("no log without a source");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("--source"), "{err:?}");
    let s = status(&mut d).await;
    assert_eq!(
        (s.source.as_str(), s.revision, s.writable),
        ("embedded", 1, true)
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_export_work_on_the_shared_source() {
    let Some((pg, url)) = schema("fleet_cli").await else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_blue-authz");
    let policies = pack();
    let fixture = pack().join("tests/fixture.json");
    let cli = |args: &[&str]| {
        Command::new(bin)
            .args(["--policies", policies.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    // A file with one bad entity is refused whole: nothing reaches the source.
    let dir = tempfile::tempdir().unwrap();
    let mut entities: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    let good = entities.len();
    entities.push(serde_json::json!({"uid": {"type": "Blue::Record", "id": "bad"}, "attrs": {"project": 7}, "parents": []}));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_string(&entities).unwrap()).unwrap();
    let out = cli(&["import", bad.to_str().unwrap(), "--source", &url]);
    assert!(!out.status.success(), "a bad file was imported");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad"), "{stderr}");
    let count: i64 = pg
        .query_one("SELECT count(*) FROM blue_authz_entities", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);

    let out = cli(&["import", fixture.to_str().unwrap(), "--source", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("imported {good} entities")));
    let out = cli(&["export", "--source", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(exported.len(), good);
    // A replica started on the imported source holds the same entities.
    let r = spawn(&url, &dir.path().join("r.redb"), &["--seed", ""]);
    let (revision, held) = export(&mut data(&r).await).await;
    assert_eq!(revision, 1);
    let exported: BTreeSet<String> = exported.iter().map(|v| v.to_string()).collect();
    assert!(held == exported, "the replica and the export differ");
    // Unreachable: a clear error, not a wait.
    let out = cli(&["export", "--source", &url_for("fleet_cli", 1)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_reached_its_source_says_so_and_that_writes_fail() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let Some((_pg, _)) = schema("fleet_never").await else {
        return;
    };
    let proxy = Proxy::start().await;
    let url = url_for("fleet_never", proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let a = spawn(&url, &db, &[]);
    let mut da = data(&a).await;
    let first = write(&mut da, vec![upsert(record("never-1"))])
        .await
        .unwrap();
    drop(da);
    drop(a);
    // Restarted on its local copy while the source is away: it never heard from it.
    proxy.cut();
    let a = spawn(&url, &db, &[]);
    let mut da = data(&a).await;
    let entry = HealthCheckRequest {
        service: "blue.authz.v1.EntityStore".into(),
    };
    let mut health = HealthClient::new(channel(a.decisions).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&mut da).await;
        let h = health
            .check(entry.clone())
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(s.ms_since_source_answered, None, "{s:?}");
        // Its local copy may lack the last batch (applied without a sync before the kill):
        // the source gives it again once reachable.
        assert!(s.revision <= first && !s.source_reachable, "{s:?}");
        // NOT_SERVING (2) once the first poll has failed.
        if !s.writable && h == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never said failing: {s:?}, health {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = write(&mut da, vec![upsert(record("never-2"))])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(
        e.metadata().get("blue-authz-write-outcome").unwrap(),
        "not-applied"
    );
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&mut da).await;
        let h = health
            .check(entry.clone())
            .await
            .unwrap()
            .into_inner()
            .status;
        if s.writable && h == 1 && s.ms_since_source_answered.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never came back: {s:?}, health {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Caught up with what the source holds, and writing through it.
    reach(&mut da, first).await;
    write(&mut da, vec![upsert(record("never-2"))])
        .await
        .unwrap();
}

/// How many PostgreSQL sessions wait now for a lock that session `holder` holds.
async fn blocked_by(holder: i32) -> i64 {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            &[&holder],
        )
        .await
        .unwrap()
        .get(0)
}
