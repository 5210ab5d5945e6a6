//! The listing benchmark behind `blue-authz list-bench`: generated data at a scale (1.0 is
//! Blue's full size, 1.19M entities), then ListResources and ListSubjects on the engine, each
//! beside the brute-force answer (every candidate decided) in the same run, and what the
//! reverse attribute index adds to memory and start-up.

use std::time::{Duration, Instant};

use crate::bench::gen;
use crate::engine::index::EntityStore;
use crate::engine::list::{self, ListRequest, Side};
use crate::engine::pack::PolicyPack;
use crate::engine::request::{self, DecisionRequest, UidRef};
use crate::engine::View;

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times `f` `n` times; (p50, p99).
fn timed(n: usize, mut f: impl FnMut(usize)) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..n)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed()
        })
        .collect();
    t.sort();
    (quantile(&t, 0.5), quantile(&t, 0.99))
}

/// Decides every candidate as `IsAuthorized` would; the number allowed.
fn brute(
    pack: &PolicyPack,
    store: &EntityStore,
    listed: Side,
    other: UidRef<'_>,
    action: &str,
    ty: &str,
    ids: &[String],
) -> usize {
    let mut n = 0;
    for id in ids {
        let me = UidRef { ty, id };
        let (principal, resource) = match listed {
            Side::Resources => (other, me),
            Side::Principals => (me, other),
        };
        let view = View::new(pack, store);
        let d = view
            .is_authorized(&DecisionRequest {
                principal,
                action: request::action_id(action),
                resource,
                context: None,
                entities: &[],
            })
            .expect("a valid request");
        n += usize::from(d.allow);
    }
    n
}

pub fn run(pack: &PolicyPack, scale: f64, rounds: usize) {
    let started = Instant::now();
    let mut store = EntityStore::default();
    let mut ids: std::collections::HashMap<String, Vec<String>> = Default::default();
    let g = gen::generate(scale, 1, &mut |e| {
        let ty = e["uid"]["type"].as_str().unwrap_or_default().to_string();
        ids.entry(ty)
            .or_default()
            .push(e["uid"]["id"].as_str().unwrap_or_default().to_string());
        store.bulk_insert(&e).expect("generated entities are valid");
    });
    let inserted = started.elapsed();
    let s = Instant::now();
    store.finish_bulk(1).expect("generated data has no cycle");
    let finish = s.elapsed();
    let s = Instant::now();
    store.rebuild_reverse_index();
    let refs_time = s.elapsed();
    let (keys, holders, bytes) = store.reverse_index_size();
    println!(
        "data: {} entities (scale {scale}); bulk insert {:.2} s, closures and indexes {:.2} s, of which the reverse index {:.3} s",
        store.len(),
        inserted.as_secs_f64(),
        finish.as_secs_f64(),
        refs_time.as_secs_f64()
    );
    println!(
        "reverse index: {keys} keys, {holders} holder entries, about {:.1} MB",
        bytes as f64 / 1e6
    );
    let users = &ids["Blue::User"];
    let (projects, records) = (&ids["Blue::Project"], &ids["Blue::Record"]);
    // Users in some project.
    let members: Vec<String> = (0..g.sizes.users)
        .filter(|u| g.members.iter().any(|m| m.iter().any(|(x, _)| x == u)))
        .take(rounds)
        .map(|u| format!("u{u}"))
        .collect();
    let page = |listed,
                other: UidRef<'_>,
                action: &'static str,
                ty: &'static str,
                size: u32|
     -> list::Page {
        View::new(pack, &store)
            .list(&ListRequest {
                listed,
                other,
                action: request::action_id(action),
                listed_type: ty,
                context: None,
                entities: &[],
                page_size: size,
                page_token: "",
            })
            .expect("a valid listing")
    };
    let user = |i: usize| UidRef {
        ty: "Blue::User",
        id: &members[i % members.len()],
    };
    let brute_rounds = rounds.min(20);

    let mut found = 0;
    let (p50, p99) = timed(rounds, |i| {
        found += page(
            Side::Resources,
            user(i),
            "viewProject",
            "Blue::Project",
            10_000,
        )
        .items
        .len()
    });
    let (b50, _) = timed(brute_rounds, |i| {
        brute(
            pack,
            &store,
            Side::Resources,
            user(i),
            "viewProject",
            "Blue::Project",
            projects,
        );
    });
    println!(
        "ListResources viewProject (avg {:.1} of {} projects): p50 {:.1} µs, p99 {:.1} µs; brute force p50 {:.0} µs ({:.0}x)",
        found as f64 / rounds as f64, projects.len(), us(p50), us(p99), us(b50), us(b50) / us(p50)
    );

    let mut found = 0;
    let (p50, p99) = timed(rounds, |i| {
        found += page(
            Side::Resources,
            user(i),
            "viewRecord",
            "Blue::Record",
            10_000,
        )
        .items
        .len()
    });
    let (f50, f99) = timed(rounds, |i| {
        page(Side::Resources, user(i), "viewRecord", "Blue::Record", 100);
    });
    let (b50, _) = timed(brute_rounds.min(5), |i| {
        brute(
            pack,
            &store,
            Side::Resources,
            user(i),
            "viewRecord",
            "Blue::Record",
            records,
        );
    });
    println!(
        "ListResources viewRecord (avg {:.1} of {} records): whole answer p50 {:.0} µs, p99 {:.0} µs; first page of 100 p50 {:.0} µs, p99 {:.0} µs; brute force p50 {:.0} ms ({:.0}x the whole answer)",
        found as f64 / rounds as f64, records.len(), us(p50), us(p99), us(f50), us(f99), b50.as_secs_f64() * 1e3, us(b50) / us(p50)
    );

    let mut found = 0;
    let project = |i: usize| UidRef {
        ty: "Blue::Project",
        id: &projects[(i * 7919) % projects.len()],
    };
    let (p50, p99) = timed(rounds, |i| {
        found += page(
            Side::Principals,
            project(i),
            "editWiki",
            "Blue::User",
            10_000,
        )
        .items
        .len()
    });
    let (b50, _) = timed(brute_rounds.min(5), |i| {
        brute(
            pack,
            &store,
            Side::Principals,
            project(i),
            "editWiki",
            "Blue::User",
            users,
        );
    });
    println!(
        "ListSubjects editWiki (avg {:.1} of {} users): p50 {:.1} µs, p99 {:.1} µs; brute force p50 {:.0} ms ({:.0}x)",
        found as f64 / rounds as f64, users.len(), us(p50), us(p99), b50.as_secs_f64() * 1e3, us(b50) / us(p50)
    );
}
