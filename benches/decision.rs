//! In-process benchmarks at Blue's scale (BLUE_AUTHZ_BENCH_SCALE, default 1.0: 1.19 million
//! entities): one decision on the real decision path (request checked against the schema, the
//! action's compiled plan, explanation), the same through a slice and Cedar's evaluator,
//! ListAllowedActions for one (user, project) pair, a batch of
//! 100 decisions, and a membership change through to visibility. After criterion's figures it
//! prints latency percentiles of single decisions, and decisions per second on one and on two
//! threads.
//!
//!     cargo bench --bench decision

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blue_authz::bench::gen;
use blue_authz::bench::workload::{self, Ask};
use blue_authz::engine::index::{EntityStore, Staging, WriteOp};
use blue_authz::engine::list::actions::ActionsRequest;
use blue_authz::engine::pack::{PackSpec, PolicyPack};
use blue_authz::engine::planner::PlanRequest;
use blue_authz::engine::request::{self, UidRef};
use blue_authz::engine::View;
use blue_authz::service::state::{Limits, State};
use blue_authz::storage::RedbStorage;
use criterion::{criterion_group, Criterion, Throughput};

/// The same allocator as the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct World {
    pack: Arc<PolicyPack>,
    store: EntityStore,
    generated: gen::Generated,
}

fn world() -> World {
    let scale: f64 = std::env::var("BLUE_AUTHZ_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let started = Instant::now();
    let pack = PolicyPack::load(&PackSpec::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &[],
    ))
    .expect("policies");
    let mut store = EntityStore::default();
    let generated = gen::generate(scale, 42, &mut |e| store.bulk_insert(&e).expect("entity"));
    store.finish_bulk(1).unwrap();
    eprintln!(
        "bench data: scale {scale}, {} entities, built in {:.1?}",
        store.len(),
        started.elapsed()
    );
    World {
        pack,
        store,
        generated,
    }
}

/// The real decision path: check against the schema, the action's compiled plan (or a slice
/// and Cedar's evaluator where the plan leaves the request to Cedar), explain.
fn decide_one(w: &World, a: &Ask) -> bool {
    let view = View::new(&w.pack, &w.store);
    let context = a.context();
    let req = view
        .check(&a.request(context.as_ref()))
        .expect("valid request");
    let d = view.decide(&req);
    assert!(d.errors.is_empty(), "{a:?}: {:?}", d.errors);
    d.allow
}

/// The same decision always through a slice and Cedar's evaluator (the path of actions whose
/// policies are outside the plans' subset, and of requests a plan hands back).
fn decide_one_by_slice(w: &World, a: &Ask) -> bool {
    let view = View::new(&w.pack, &w.store);
    let context = a.context();
    let req = view
        .check(&a.request(context.as_ref()))
        .expect("valid request");
    let d = view.decide_by_slice(&req);
    assert!(d.errors.is_empty(), "{a:?}: {:?}", d.errors);
    d.allow
}

/// ListAllowedActions for one (user, project) pair.
fn list_one(w: &World, user: &str, project: &str) -> usize {
    View::new(&w.pack, &w.store)
        .list_actions(&ActionsRequest {
            principal: UidRef {
                ty: "Blue::User",
                id: user,
            },
            resource: UidRef {
                ty: "Blue::Project",
                id: project,
            },
            context: None,
            per_action: None,
            each_declared: false,
            entities: &[],
        })
        .unwrap()
        .listed
        .len()
}

fn benches(c: &mut Criterion, w: &World) {
    let asks = workload::mix(&w.generated, 7, 20_000);
    let allowed = asks.iter().filter(|a| decide_one(w, a)).count();
    eprintln!("request mix: {} requests, {allowed} allowed", asks.len());

    let mut i = 0;
    c.bench_function("decision", |b| {
        b.iter(|| {
            i = (i + 1) % asks.len();
            decide_one(w, &asks[i])
        })
    });

    let mut i = 0;
    c.bench_function("decision through Cedar's evaluator (no plan)", |b| {
        b.iter(|| {
            i = (i + 1) % asks.len();
            decide_one_by_slice(w, &asks[i])
        })
    });

    let pairs = workload::member_pairs(&w.generated, 9, 1000);
    let mut j = 0;
    c.bench_function("list_allowed_actions (user, project)", |b| {
        b.iter(|| {
            j = (j + 1) % pairs.len();
            list_one(w, &pairs[j].0, &pairs[j].1)
        })
    });

    // A resource plan for a user's viewRecord, with the pack's SQL columns (the work of
    // PlanResources without the transport).
    let mut j = 0;
    c.bench_function("plan viewRecord (user), with SQL", |b| {
        b.iter(|| {
            j = (j + 1) % pairs.len();
            View::new(&w.pack, &w.store)
                .plan(&PlanRequest {
                    principal: UidRef {
                        ty: "Blue::User",
                        id: &pairs[j].0,
                    },
                    action: request::action_id("viewRecord"),
                    resource_type: "Blue::Record",
                    context: None,
                    entities: &[],
                    columns: None,
                })
                .expect("a plan")
                .sql
                .is_some()
        })
    });

    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(100));
    let mut k = 0;
    group.bench_function("100 decisions", |b| {
        b.iter(|| {
            k = (k + 100) % (asks.len() - 100);
            asks[k..k + 100].iter().filter(|a| decide_one(w, a)).count()
        })
    });
    group.finish();
}

/// A membership change through the engine (validated, synced to the database, committed to
/// the index), then the decision that must see it.
fn write_bench(c: &mut Criterion, w: World) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(RedbStorage::open(&dir.path().join("bench.redb")).unwrap());
    let engine = State::new(Limits::default());
    let pack = w.pack.clone();
    engine.install(pack.clone(), w.store, storage);
    let (user, project) = workload::member_pairs(&w.generated, 11, 1).remove(0);
    let uid = |ty: &str, id: &str| -> cedar_policy::EntityUid {
        format!("Blue::{ty}::\"{id}\"").parse().unwrap()
    };
    let ask = |action: &'static str| Ask {
        principal: user.clone(),
        action,
        resource_type: "Blue::Project",
        resource: project.clone(),
        context_json: String::new(),
    };
    let (edit, view) = (ask("editWiki"), ask("viewProject"));
    let decide_live = |a: &Ask| {
        let live = engine.live().unwrap();
        let view = live.view();
        view.decide(&view.check(&a.request(None)).unwrap()).allow
    };
    // Start from a known role: member (and not view).
    let user_uid = uid("User", &user);
    let role = |r: &str| uid("Role", &format!("{project}/{r}"));
    let all_roles = ["admin", "member", "client", "comment", "view"];
    let mut ops: Vec<WriteOp> = all_roles
        .iter()
        .map(|r| WriteOp::RemoveParent {
            child: user_uid.clone(),
            parent: role(r),
        })
        .collect();
    ops.push(WriteOp::AddParent {
        child: user_uid.clone(),
        parent: role("member"),
    });
    engine.write(ops).unwrap();
    assert!(decide_live(&edit));

    let mut member = true;
    let mut gaps = Vec::new();
    c.bench_function("write membership change, then decide", |b| {
        b.iter(|| {
            let (from, to) = if member {
                ("member", "view")
            } else {
                ("view", "member")
            };
            engine
                .write(vec![
                    WriteOp::RemoveParent {
                        child: user_uid.clone(),
                        parent: role(from),
                    },
                    WriteOp::AddParent {
                        child: user_uid.clone(),
                        parent: role(to),
                    },
                ])
                .unwrap();
            let replied = Instant::now();
            member = !member;
            // Visible at once: the very next decision follows the new role.
            assert_eq!(decide_live(&edit), member);
            assert!(decide_live(&view));
            gaps.push(replied.elapsed());
        })
    });
    gaps.sort();
    if !gaps.is_empty() {
        eprintln!(
            "write reply -> first decision that sees it: max {:?} over {} writes",
            gaps[gaps.len() - 1],
            gaps.len()
        );
    }
}

fn percentiles(w: &World) {
    let asks = workload::mix(&w.generated, 13, 200_000);
    let mut lat: Vec<Duration> = Vec::with_capacity(asks.len());
    for a in &asks {
        let t = Instant::now();
        std::hint::black_box(decide_one(w, a));
        lat.push(t.elapsed());
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    eprintln!(
        "single decisions ({}): p50 {:?}  p90 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        lat.len(),
        p(0.50),
        p(0.90),
        p(0.99),
        p(0.999),
        lat[lat.len() - 1]
    );
    let pairs = workload::member_pairs(&w.generated, 17, 5000);
    let mut lat: Vec<Duration> = Vec::with_capacity(pairs.len());
    for (u, p) in &pairs {
        let t = Instant::now();
        std::hint::black_box(list_one(w, u, p));
        lat.push(t.elapsed());
    }
    lat.sort();
    let q = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    eprintln!(
        "list_allowed_actions ({}): p50 {:?}  p99 {:?}",
        lat.len(),
        q(0.50),
        q(0.99)
    );
}

/// Decisions per second on one thread and on two at once over the same store and pack: shared
/// state that threads write (reference counts, locks) shows up as a second thread that adds
/// less than one thread's worth.
fn threads(w: &World) {
    let asks = workload::mix(&w.generated, 19, 50_000);
    let run = |t: usize, window: Duration| -> u64 {
        let started = Instant::now();
        let (mut i, mut n) = (t * 7919, 0u64);
        while started.elapsed() < window {
            for _ in 0..100 {
                i = (i + 1) % asks.len();
                std::hint::black_box(decide_one(w, &asks[i]));
                n += 1;
            }
        }
        n
    };
    run(0, Duration::from_secs(1));
    for threads in [1usize, 2] {
        let window = Duration::from_secs(3);
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| s.spawn(move || run(t, window)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let per_second = total as f64 / window.as_secs_f64();
        eprintln!(
            "{threads} thread(s) deciding: {per_second:.0} decisions/s, {:.2} µs a decision per thread",
            1e6 * threads as f64 / per_second
        );
    }
}

/// The part of a 10,000-operation write batch that holds the decisions' lock
/// (`EntityStore::commit`), with the batch resolved beside decisions first (as the service
/// does) and without: users written again as they are, and users given a role and then
/// losing it.
fn critical_section(w: &mut World) {
    let mut users: Vec<String> = workload::member_pairs(&w.generated, 23, 12_000)
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    users.sort();
    users.dedup();
    users.truncate(10_000);
    let pairs = workload::member_pairs(&w.generated, 29, 10_000);
    let uid = |ty: &str, id: &str| -> cedar_policy::EntityUid {
        format!("Blue::{ty}::\"{id}\"").parse().unwrap()
    };
    let rewrite = |store: &EntityStore| -> Vec<WriteOp> {
        users
            .iter()
            .map(|u| WriteOp::Upsert(store.get_json(&uid("User", u)).unwrap()))
            .collect()
    };
    let roles = |add: bool| -> Vec<WriteOp> {
        pairs
            .iter()
            .map(|(u, p)| {
                let (child, parent) = (uid("User", u), uid("Role", &format!("{p}/comment")));
                if add {
                    WriteOp::AddParent { child, parent }
                } else {
                    WriteOp::RemoveParent { child, parent }
                }
            })
            .collect()
    };
    let fresh = |round: usize| -> Vec<WriteOp> {
        (0..10_000)
            .map(|i| {
                WriteOp::Upsert(serde_json::json!({
                    "uid": {"type": "Blue::User", "id": format!("bench-new-{round}-{i}")},
                    "attrs": {}, "parents": []
                }))
            })
            .collect()
    };
    let schema = &w.pack.entities;
    // How each batch reaches the index: committed whole under the lock, not resolved or
    // resolved beside decisions first; or staged beside decisions, published and folded in
    // steps of 256 (the service's path).
    #[derive(PartialEq, Clone, Copy)]
    enum How {
        Whole,
        Resolved,
        Staged,
    }
    let mut created = 0;
    for (kind, how) in [
        ("as they are", How::Staged),
        ("as they are", How::Resolved),
        ("as they are", How::Whole),
        ("roles", How::Staged),
        ("roles", How::Resolved),
        ("roles", How::Whole),
        ("new users", How::Staged),
        ("new users", How::Resolved),
    ] {
        let mut held: Vec<Duration> = Vec::new();
        let (mut steps, mut staging) = (0, Vec::new());
        for round in 0..10 {
            let ops = match kind {
                "roles" => roles(round % 2 == 0),
                "new users" => {
                    created += 1;
                    fresh(created)
                }
                _ => rewrite(&w.store),
            };
            let mut prepared = w.store.prepare(ops, schema).expect("a valid batch");
            if how != How::Whole {
                prepared.resolve(&w.store);
            }
            if how == How::Staged {
                let t = Instant::now();
                let staged = match prepared.stage(&w.store) {
                    Staging::Staged(s) => s,
                    Staging::Whole(_) => panic!("a {kind} batch stages"),
                };
                staging.push(t.elapsed());
                let t = Instant::now();
                let retired = w.store.publish(staged);
                let mut longest = t.elapsed();
                drop(retired);
                loop {
                    let t = Instant::now();
                    let (done, retired) = w.store.fold(256);
                    longest = longest.max(t.elapsed());
                    drop(retired);
                    steps += 1;
                    if done {
                        break;
                    }
                }
                held.push(longest);
                continue;
            }
            let t = Instant::now();
            let retired = w.store.commit(prepared);
            held.push(t.elapsed());
            drop(retired);
        }
        held.sort();
        staging.sort();
        let what = match how {
            How::Whole => "committed whole, not resolved".to_string(),
            How::Resolved => "committed whole, resolved beside decisions".to_string(),
            How::Staged => format!(
                "staged beside decisions (p50 {:?}), published and folded in {} steps a batch",
                staging[staging.len() / 2],
                steps / 10
            ),
        };
        eprintln!(
            "10,000-op batch, users {kind}, {what}: longest hold of the lock p50 {:?}, max {:?}",
            held[held.len() / 2],
            held[held.len() - 1]
        );
    }
}

fn all(c: &mut Criterion) {
    let mut w = world();
    if std::env::var_os("BLUE_AUTHZ_BENCH_ONLY_COMMIT").is_some() {
        critical_section(&mut w);
        return;
    }
    benches(c, &w);
    percentiles(&w);
    threads(&w);
    critical_section(&mut w);
    write_bench(c, w);
}

criterion_group! {
    name = group;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = all
}

criterion::criterion_main!(group);
