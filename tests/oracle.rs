//! The decision path against an oracle: plain Cedar over every entity at once, with Cedar
//! computing the transitive closure itself (`Entities::from_json_value` with the schema) and
//! every policy in one set. The engine's per-request slices (pruned ancestors, closures
//! computed by the store, policies indexed by action) must give the same decision and the same
//! determining policies for every suite case and for generated requests.

use std::path::PathBuf;

use blue_authz::decide::{self, DEFAULT_SLICE_DEPTH};
use blue_authz::gen;
use blue_authz::policy::{PackSpec, PolicyPack};
use blue_authz::store::EntityStore;
use blue_authz::suite;
use blue_authz::workload;
use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
    let context = Context::from_json_value(context.clone(), Some((&pack.schema, &action))).unwrap();
    let request = Request::new(
        principal.clone(),
        action,
        resource.clone(),
        context,
        Some(&pack.schema),
    )
    .unwrap();
    let response = Authorizer::new().is_authorized(&request, &pack.policies, all);
    let mut ids: Vec<String> = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    ids.sort();
    (response.decision() == Decision::Allow, ids)
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
        let pack = PolicyPack::load(&PackSpec::new(root().join("policies"), &overlays)).unwrap();
        let fixture = root().join("policies/tests/fixture.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
        let all = Entities::from_json_value(json, Some(&pack.schema)).unwrap();
        let store = EntityStore::load_file(&fixture, &pack).unwrap();
        let suites = suite::load_suites(&root().join("policies/tests")).unwrap();
        let cases = suite::effective_cases(&suites, &overlays);
        for case in &cases {
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
    let pack = PolicyPack::load(&PackSpec::new(root().join("policies"), &[])).unwrap();
    let mut entities = Vec::new();
    let mut store = EntityStore::default();
    let g = gen::generate(0.005, 3, &mut |e| {
        store.bulk_insert(&e).unwrap();
        entities.push(e);
    });
    store.finish_bulk(1);
    let all =
        Entities::from_json_value(serde_json::Value::Array(entities), Some(&pack.schema)).unwrap();
    let asks = workload::mix(&g, 5, 3000);
    let mut allowed = 0;
    for a in &asks {
        let raw = a.raw();
        let req = decide::check(&pack, &store, &raw).unwrap();
        let ours = decide::decide(&pack, &store, &req, DEFAULT_SLICE_DEPTH);
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
        allowed += ours.allow as usize;
    }
    println!(
        "{} generated requests agree ({allowed} allowed)",
        asks.len()
    );
    assert!(
        allowed > 300 && allowed < asks.len() - 300,
        "a mix of allows and denies"
    );
}
