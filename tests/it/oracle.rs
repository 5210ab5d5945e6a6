//! The decision path against an oracle: plain Cedar over every entity at once, with Cedar
//! computing the transitive closure itself (`Entities::from_json_value` with the schema) and
//! every policy in one set. The engine's per-request slices (pruned ancestors, closures
//! computed by the store, policies indexed by action) must give the same decision and the same
//! determining policies for every suite case and for generated requests.

use std::path::PathBuf;

use blue_authz::authoring::suite;
use blue_authz::bench::gen;
use blue_authz::bench::workload;
use blue_authz::engine::decide;
use blue_authz::engine::index::EntityStore;
use blue_authz::engine::list::actions::{ActionOutcome, ActionsRequest};
use blue_authz::engine::pack::{PackSpec, PolicyPack};
use blue_authz::engine::request;
use blue_authz::engine::request::UidRef;
use blue_authz::engine::View;
use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request};

/// The shipped pack (or `BLUE_AUTHZ_TEST_PACK`: these checks are data-driven, and the
/// README-procedure test in tests/policy_pack.rs runs them on an edited copy).
fn pack_dir() -> PathBuf {
    match std::env::var_os("BLUE_AUTHZ_TEST_PACK") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies"),
    }
}

fn oracle(
    pack: &PolicyPack,
    all: &Entities,
    principal: &EntityUid,
    action: &str,
    resource: &EntityUid,
    context: &serde_json::Value,
) -> (bool, Vec<String>) {
    let action: EntityUid = format!("Blue::Action::\"{action}\"").parse().unwrap();
    let request = cedar_request(pack, principal, &action, resource, context);
    let response = Authorizer::new().is_authorized(&request, &pack.policies, all);
    let mut ids: Vec<String> = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    ids.sort();
    (response.decision() == Decision::Allow, ids)
}

/// A plain Cedar request, its context validated by the pack's schema.
fn cedar_request(
    pack: &PolicyPack,
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    context: &serde_json::Value,
) -> Request {
    let context = Context::from_json_value(context.clone(), Some((&pack.schema, action))).unwrap();
    Request::new(
        principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        Some(&pack.schema),
    )
    .unwrap()
}

#[test]
fn every_suite_case_agrees_with_plain_cedar_over_all_entities() {
    for overlays in [
        vec![],
        vec![
            "clients-read-only".to_string(),
            "invite-client-and-above".to_string(),
        ],
    ] {
        let pack = PolicyPack::load(&PackSpec::new(pack_dir(), &overlays)).unwrap();
        let fixture = pack_dir().join("tests/fixture.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
        let all = Entities::from_json_value(json, Some(&pack.schema)).unwrap();
        let store = EntityStore::load_file(&fixture, &pack.entities).unwrap();
        let suites = suite::load_suites(&pack_dir().join("tests")).unwrap();
        let cases = suite::effective_cases(&suites, &overlays);
        for case in &cases {
            if let Some(field) = &case.expect.invalid {
                // Refused before any decision: nothing to compare with Cedar.
                let e = suite::decide_case(&pack, &store, case).unwrap_err();
                assert!(e.starts_with(field.as_str()), "{}: {e}", case.name);
                continue;
            }
            let ours = suite::decide_case(&pack, &store, case).unwrap();
            let theirs = oracle(
                &pack,
                &all,
                &case.principal,
                &case.action,
                &case.resource,
                &case.context,
            );
            assert_eq!(
                (ours.allow, ours.determining.clone()),
                theirs,
                "{}",
                case.name
            );
        }
        println!("{} cases agree (overlays {overlays:?})", cases.len());
    }
}

#[test]
fn generated_requests_agree_with_plain_cedar_over_all_entities() {
    let pack = PolicyPack::load(&PackSpec::new(pack_dir(), &[])).unwrap();
    let mut entities = Vec::new();
    let mut store = EntityStore::default();
    let g = gen::generate(0.005, 3, &mut |e| {
        store.bulk_insert(&e).unwrap();
        entities.push(e);
    });
    store.finish_bulk(1).unwrap();
    let all =
        Entities::from_json_value(serde_json::Value::Array(entities), Some(&pack.schema)).unwrap();
    let asks = workload::mix(&g, 5, 3000);
    let (mut allowed, mut planned) = (0, 0);
    for a in &asks {
        let view = View::new(&pack, &store);
        let parsed = a.context();
        let req = view.check(&a.request(parsed.as_ref())).unwrap();
        let ours = view.decide(&req);
        let context = if a.context_json.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&a.context_json).unwrap()
        };
        let principal: EntityUid = format!("Blue::User::\"{}\"", a.principal).parse().unwrap();
        let resource: EntityUid = format!("{}::\"{}\"", a.resource_type, a.resource)
            .parse()
            .unwrap();
        let theirs = oracle(&pack, &all, &principal, a.action, &resource, &context);
        assert_eq!((ours.allow, ours.determining.clone()), theirs, "{a:?}");
        // Both of the engine's paths: the compiled plan where it answers, Cedar's evaluator
        // over a slice always.
        let by_slice = view.decide_by_slice(&req);
        assert_eq!(ours, by_slice, "{a:?}");
        if let Some(by_plan) = decide::decide_by_plan_only(&pack, &store, &req) {
            assert_eq!(by_plan, by_slice, "{a:?}");
            planned += 1;
        }
        allowed += ours.allow as usize;
    }
    println!(
        "{} generated requests agree ({allowed} allowed, {planned} answered by compiled plans)",
        asks.len()
    );
    assert!(
        planned > asks.len() * 9 / 10,
        "Blue's policies are in the plans' subset: {planned} of {}",
        asks.len()
    );
    assert!(
        allowed > 300 && allowed < asks.len() - 300,
        "a mix of allows and denies"
    );
}

/// Request-scoped entities may replace stored ones, parents included. A stored entity below a
/// replaced one keeps its stored ancestor closure in the index, so the engine must not trust
/// that closure where it runs through a replaced entity. Each request here replaces an
/// ancestor of its principal (cut from its parents, its parent cut, or given another parent),
/// and the oracle is plain Cedar over all entities with the replacement applied.
#[test]
fn request_scoped_entities_that_reparent_stored_ones_agree_with_plain_cedar() {
    let pack = PolicyPack::load(&PackSpec::new(pack_dir(), &[])).unwrap();
    let mut entities = Vec::new();
    let mut store = EntityStore::default();
    let g = gen::generate(0.002, 7, &mut |e| {
        store.bulk_insert(&e).unwrap();
        entities.push(e);
    });
    store.finish_bulk(1).unwrap();
    let key = |v: &serde_json::Value| v["uid"].to_string();
    let asks = workload::mix(&g, 11, 150);
    let parents_of = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["parents"].as_array().cloned().unwrap_or_default()
    };
    let stored = |uid: &serde_json::Value| -> serde_json::Value {
        let uid: EntityUid = EntityUid::from_json(uid.clone()).unwrap();
        store.get_json(&uid).unwrap()
    };
    let (mut allowed, mut changed, mut cycles) = (0, 0, 0);
    for (i, a) in asks.iter().enumerate() {
        let principal: EntityUid = format!("Blue::User::\"{}\"", a.principal).parse().unwrap();
        let Some(me) = store.get_json(&principal) else {
            continue;
        };
        let mine = parents_of(&me);
        if mine.is_empty() {
            continue;
        }
        // Prefer the principal's group in the scope the request is about (the generator names
        // groups `<scope>/<role>`), so that most replacements matter.
        let scope = match a.resource_type {
            "Blue::Record" => {
                let record: EntityUid =
                    format!("Blue::Record::\"{}\"", a.resource).parse().unwrap();
                let project = &store.get_json(&record).unwrap()["attrs"]["project"];
                let project = project.get("__entity").unwrap_or(project);
                project["id"].as_str().unwrap().to_string()
            }
            _ => a.resource.clone(),
        };
        let in_scope = mine
            .iter()
            .find(|m| m["id"].as_str().unwrap().starts_with(&format!("{scope}/")));
        let p = stored(in_scope.unwrap_or(&mine[i % mine.len()]));
        let replaced = match i % 3 {
            // The principal's group leaves its chain.
            0 => serde_json::json!({"uid": p["uid"], "attrs": {}, "parents": []}),
            // The group above it leaves the chain.
            1 => {
                let Some(q) = parents_of(&p).first().map(&stored) else {
                    continue;
                };
                if q["uid"]["type"] == "Blue::Project" || q["uid"]["type"] == "Blue::Dashboard" {
                    continue;
                }
                serde_json::json!({"uid": q["uid"], "attrs": {}, "parents": []})
            }
            // The group gains the parents of another user's group.
            _ => {
                let other = &asks[(i * 7 + 3) % asks.len()];
                let them: EntityUid = format!("Blue::User::\"{}\"", other.principal)
                    .parse()
                    .unwrap();
                let theirs = parents_of(&store.get_json(&them).unwrap());
                let mut ps = parents_of(&p);
                let same_type = theirs.iter().find(|t| t["type"] == p["uid"]["type"]);
                ps.extend(
                    same_type
                        .map(|t| parents_of(&stored(t)))
                        .unwrap_or_default(),
                );
                serde_json::json!({"uid": p["uid"], "attrs": p["attrs"], "parents": ps})
            }
        };
        let overlay = serde_json::Value::Array(vec![replaced.clone()]);
        let overlay_text = overlay.to_string();
        let view = View::new(&pack, &store);
        let parsed = a.context();
        let mut req = a.request(parsed.as_ref());
        let overlay = [replaced.clone()];
        req.entities = &overlay;
        let checked = view.check(&req);

        let all: Vec<serde_json::Value> = entities
            .iter()
            .map(|e| {
                if key(e) == key(&replaced) {
                    replaced.clone()
                } else {
                    e.clone()
                }
            })
            .collect();
        // A replacement that closes a cycle is data plain Cedar refuses, and so do we.
        let all = match (
            checked.as_ref(),
            Entities::from_json_value(serde_json::Value::Array(all), Some(&pack.schema)),
        ) {
            (Ok(_), Ok(all)) => all,
            (Err(e), Err(_)) => {
                assert!(e.to_string().contains("own ancestor"), "{e}");
                cycles += 1;
                continue;
            }
            (ours, theirs) => panic!("{overlay_text}: ours {ours:?}, Cedar's {theirs:?}"),
        };
        let ours = view.decide(&checked.unwrap());
        let plain = oracle_without_overlay(&pack, &store, a);
        let context = if a.context_json.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&a.context_json).unwrap()
        };
        let resource: EntityUid = format!("{}::\"{}\"", a.resource_type, a.resource)
            .parse()
            .unwrap();
        let theirs = oracle(&pack, &all, &principal, a.action, &resource, &context);
        assert_eq!(
            (ours.allow, ours.determining.clone()),
            theirs,
            "{a:?} with {overlay_text}"
        );
        allowed += ours.allow as usize;
        changed += (plain != ours.allow) as usize;
    }
    println!(
        "{} requests agree ({allowed} allowed, {changed} changed by the overlay, {cycles} cycles refused by both)",
        asks.len()
    );
    assert!(
        cycles < asks.len() / 10,
        "most replacements are acyclic: {cycles}"
    );
    assert!(
        changed > 20,
        "the overlays change some decisions: {changed}"
    );
}

/// The engine's decision for an ask without request-scoped entities.
fn oracle_without_overlay(pack: &PolicyPack, store: &EntityStore, a: &workload::Ask) -> bool {
    let parsed = a.context();
    View::new(pack, store)
        .is_authorized(&a.request(parsed.as_ref()))
        .unwrap()
        .allow
}

/// `ListAllowedActions` answers each action from its compiled plan, building one slice only
/// for actions left to Cedar: every decided action must match a single decision through Cedar's
/// evaluator over a slice.
#[test]
fn listed_actions_agree_with_single_decisions_through_cedar() {
    let pack = PolicyPack::load(&PackSpec::new(pack_dir(), &[])).unwrap();
    let mut store = EntityStore::default();
    let g = gen::generate(0.005, 3, &mut |e| store.bulk_insert(&e).unwrap());
    store.finish_bulk(1).unwrap();
    let (mut decided, mut allowed) = (0, 0);
    for a in workload::mix(&g, 21, 300) {
        let view = View::new(&pack, &store);
        let listed = view
            .list_actions(&ActionsRequest {
                principal: UidRef {
                    ty: "Blue::User",
                    id: &a.principal,
                },
                resource: UidRef {
                    ty: a.resource_type,
                    id: &a.resource,
                },
                context: None,
                per_action: None,
                each_declared: false,
                entities: &[],
            })
            .unwrap();
        for listed in listed.listed {
            let (action, ActionOutcome::Decided(d)) = (listed.action, listed.outcome) else {
                continue;
            };
            let mut req = a.request(None);
            req.action = request::action_id(&action);
            let req = view.check(&req).unwrap();
            let single = view.decide_by_slice(&req);
            assert_eq!(d, single, "{a:?} {action}");
            decided += 1;
            allowed += d.allow as usize;
        }
    }
    println!("{decided} listed decisions agree ({allowed} allowed)");
    assert!(decided > 1000 && allowed > 100 && allowed < decided - 100);
}

/// For every deny of the suites (with and without the overlays), the explanation names the
/// forbid that denied, or every permit of the action, each with a part of its condition that
/// plain Cedar, over every entity at once, finds not true for that request.
#[test]
fn every_suite_deny_is_explained_by_a_part_that_plain_cedar_finds_false() {
    use blue_authz::engine::explain::Why;
    let mut explained = 0;
    for overlays in [
        vec![],
        vec![
            "clients-read-only".to_string(),
            "invite-client-and-above".to_string(),
        ],
    ] {
        let pack = PolicyPack::load(&PackSpec::new(pack_dir(), &overlays)).unwrap();
        let fixture = pack_dir().join("tests/fixture.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
        let all = Entities::from_json_value(json, Some(&pack.schema)).unwrap();
        let store = EntityStore::load_file(&fixture, &pack.entities).unwrap();
        let suites = suite::load_suites(&pack_dir().join("tests")).unwrap();
        let view = View::new(&pack, &store);
        for case in suite::effective_cases(&suites, &overlays) {
            if case.expect.invalid.is_some() {
                continue;
            }
            let action = request::parse_action(&pack, request::action_id(&case.action)).unwrap();
            let serde_json::Value::Object(context) = &case.context else {
                panic!("{}: context", case.name)
            };
            let req = request::check_parsed(
                &pack,
                (
                    case.principal.clone(),
                    action.clone(),
                    case.resource.clone(),
                ),
                Some(context),
                Default::default(),
            )
            .unwrap();
            let e = view.explain(&req);
            assert_eq!(e.decision, view.decide(&req), "{}", case.name);
            if e.decision.allow {
                assert_eq!(e.why, Why::Permitted, "{}", case.name);
                continue;
            }
            let entry = pack.action(&action).unwrap();
            if !e.decision.determining.is_empty() {
                assert_eq!(e.why, Why::Forbidden, "{}", case.name);
                for id in &e.decision.determining {
                    assert!(
                        entry.compiled.iter().any(|c| c.forbid && &c.name == id),
                        "{}: {id} is not a forbid",
                        case.name
                    );
                }
                continue;
            }
            assert_eq!(e.why, Why::NothingPermits, "{}", case.name);
            let mut named: Vec<&str> = e.permits.iter().map(|u| u.policy.as_str()).collect();
            let mut permits: Vec<&str> = entry
                .compiled
                .iter()
                .filter(|c| !c.forbid)
                .map(|c| c.name.as_str())
                .collect();
            named.sort();
            permits.sort();
            assert_eq!(named, permits, "{}: every permit, each once", case.name);
            for u in &e.permits {
                assert!(!u.words.is_empty(), "{}: {}", case.name, u.policy);
                // The failed part, as a policy of its own, evaluated by plain Cedar.
                let text = format!(
                    "permit (principal, action, resource) when {{ {} }};",
                    u.failed
                );
                let set: cedar_policy::PolicySet = text.parse().unwrap_or_else(|e| {
                    panic!("{}: `{}` does not parse: {e}", case.name, u.failed)
                });
                let request = cedar_request(
                    &pack,
                    &case.principal,
                    &action,
                    &case.resource,
                    &case.context,
                );
                let answer = Authorizer::new().is_authorized(&request, &set, &all);
                assert_eq!(
                    answer.decision(),
                    Decision::Deny,
                    "{}: {} names `{}`, which holds",
                    case.name,
                    u.policy,
                    u.failed
                );
                // False, not an error, unless the explanation says it failed.
                assert_eq!(
                    answer.diagnostics().errors().next().is_some(),
                    u.error.is_some(),
                    "{}: {}",
                    case.name,
                    u.policy
                );
                explained += 1;
            }
        }
    }
    assert!(explained > 100, "{explained} failing parts checked");
    println!("{explained} failing parts checked against plain Cedar");
}
