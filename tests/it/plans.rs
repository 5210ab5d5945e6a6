//! Resource plans against decisions, in process: for generated data, every action and
//! resource type, several principals and every context worth trying, the resources a plan's
//! condition selects (read as a database reads a row: the resource's id and its stored
//! attributes) are exactly those `IsAuthorized` allows, and each selected resource's
//! satisfied branches name exactly its determining permits. With and without each overlay,
//! with request-scoped entities, with policies that negate paths and go three hops deep, and
//! on the docs pack (set-valued and boolean attributes). Policies no filter can express are
//! refused, naming the policy and the expression. (`tests/it/plans_sql.rs` does the same
//! through the real binary and a real PostgreSQL.)

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::common;
use crate::common::live_pack;
use crate::listing::{brute, contexts, data, json, Data};
use blue_authz::engine::error::Field;
use blue_authz::engine::index::EntityStore;
use blue_authz::engine::list::Side;
use blue_authz::engine::pack::{PackSpec, PolicyPack};
use blue_authz::engine::planner::{Condition, Outcome, PlanRequest, ResourcePlan, Value as PV};
use blue_authz::engine::request::{self, UidRef};
use blue_authz::engine::View;

/// Whether a JSON attribute value equals a plan value (entities by type and id).
fn same(v: &Value, x: &PV) -> bool {
    match x {
        PV::Entity { ty, id } => {
            let e = v.get("__entity").unwrap_or(v);
            e["type"].as_str() == Some(ty) && e["id"].as_str() == Some(id)
        }
        PV::String(s) => v.as_str() == Some(s),
        PV::Long(n) => v.as_i64() == Some(*n),
        PV::Bool(b) => v.as_bool() == Some(*b),
    }
}

fn id_is(id: &str, x: &PV) -> bool {
    matches!(x, PV::Entity { id: i, .. } if i == id)
}

/// Whether a row (the resource's id and attributes) satisfies a condition.
pub(crate) fn holds(c: &Condition, id: &str, attrs: &Map<String, Value>) -> bool {
    let members = |path: &str| attrs.get(path).and_then(Value::as_array);
    match c {
        Condition::Literal(b) => *b,
        Condition::And(xs) => xs.iter().all(|x| holds(x, id, attrs)),
        Condition::Or(xs) => xs.iter().any(|x| holds(x, id, attrs)),
        Condition::Not(x) => !holds(x, id, attrs),
        Condition::Eq { path, value } if path == "id" => id_is(id, value),
        Condition::In { path, values } if path == "id" => values.iter().any(|v| id_is(id, v)),
        Condition::Eq { path, value } => attrs.get(path).is_some_and(|v| same(v, value)),
        Condition::In { path, values } => attrs
            .get(path)
            .is_some_and(|v| values.iter().any(|x| same(v, x))),
        Condition::Contains { path, value } => {
            members(path).is_some_and(|m| m.iter().any(|v| same(v, value)))
        }
        Condition::Overlaps { path, values } => {
            members(path).is_some_and(|m| m.iter().any(|v| values.iter().any(|x| same(v, x))))
        }
        Condition::Has { path } => attrs.contains_key(path),
        Condition::Policies { condition, .. } => holds(condition, id, attrs),
    }
}

/// The permits whose branch a row satisfies.
pub(crate) fn satisfied(plan: &ResourcePlan, id: &str, attrs: &Map<String, Value>) -> Vec<String> {
    fn walk(c: &Condition, id: &str, attrs: &Map<String, Value>, out: &mut Vec<String>) {
        match c {
            Condition::Policies { ids, condition } if holds(condition, id, attrs) => {
                out.extend(ids.iter().cloned());
            }
            Condition::Or(xs) => xs.iter().for_each(|x| walk(x, id, attrs, out)),
            _ => {}
        }
    }
    let permits = match &plan.condition {
        Condition::And(parts) if matches!(parts.last(), Some(Condition::Not(_))) => &parts[0],
        c => c,
    };
    let mut out = Vec::new();
    walk(permits, id, attrs, &mut out);
    out.sort();
    out
}

/// The attributes of a resource: a request-scoped entity's, else the stored one's.
fn attrs_of(store: &EntityStore, ty: &str, id: &str, entities: &[Value]) -> Map<String, Value> {
    let given = entities
        .iter()
        .find(|e| e["uid"]["type"].as_str() == Some(ty) && e["uid"]["id"].as_str() == Some(id));
    let e = match given {
        Some(e) => e.clone(),
        None => {
            let uid = format!("{ty}::\"{id}\"").parse().unwrap();
            store.get_json(&uid).unwrap_or(Value::Null)
        }
    };
    e["attrs"].as_object().cloned().unwrap_or_default()
}

fn plan_of(
    pack: &PolicyPack,
    store: &EntityStore,
    user: (&str, &str),
    action: &str,
    rt: &str,
    context: &str,
    entities: &str,
) -> Result<ResourcePlan, blue_authz::engine::error::RequestError> {
    let input = json(context, entities);
    View::new(pack, store).plan(&PlanRequest {
        principal: UidRef {
            ty: user.0,
            id: user.1,
        },
        action: request::action_id(action),
        resource_type: rt,
        context: input.context.as_ref(),
        entities: &input.entities,
        columns: None,
    })
}

/// Every action and resource type for `picks` users: the plan selects exactly what brute
/// force allows, with the determining permits. Returns (plans compared, conditional ones,
/// non-empty ones).
fn compare_all(
    pack: &PolicyPack,
    d: &Data,
    user_type: &str,
    picks: usize,
    entities: &str,
    extra: &[(&str, &str)],
) -> (usize, usize, usize) {
    let users = &d.ids[user_type];
    let given: Vec<Value> = match entities {
        "" => Vec::new(),
        e => serde_json::from_str(e).unwrap(),
    };
    let (mut compared, mut conditional, mut nonempty) = (0, 0, 0);
    for action in pack.actions() {
        let entry = pack.action(action).unwrap();
        let name = action.id().unescaped();
        for rt in &entry.resource_types {
            let rt = rt.to_string();
            let mut resources = d.ids.get(&rt).cloned().unwrap_or_default();
            resources.extend(
                extra
                    .iter()
                    .filter(|(t, _)| *t == rt)
                    .map(|(_, id)| id.to_string()),
            );
            let mut ctxs = contexts(name, users);
            if user_type != "Blue::User" {
                ctxs = vec![String::new(), r#"{"mfa": true}"#.into()];
            }
            for context in ctxs {
                for u in users
                    .iter()
                    .step_by((users.len() / picks).max(1))
                    .take(picks)
                {
                    let plan = plan_of(
                        pack,
                        &d.store,
                        (user_type, u),
                        name,
                        &rt,
                        &context,
                        entities,
                    )
                    .unwrap_or_else(|e| panic!("plan {u} {name} {rt} {context}: {e}"));
                    let theirs = brute(
                        pack,
                        &d.store,
                        Side::Resources,
                        (user_type, u),
                        name,
                        &resources,
                        &rt,
                        &context,
                        entities,
                    );
                    let mut ours = Vec::new();
                    let mut sorted: Vec<&String> = resources.iter().collect();
                    sorted.sort();
                    sorted.dedup();
                    for r in sorted {
                        let attrs = attrs_of(&d.store, &rt, r, &given);
                        if holds(&plan.condition, r, &attrs) {
                            ours.push((r.clone(), satisfied(&plan, r, &attrs)));
                        }
                    }
                    let theirs: Vec<(String, Vec<String>)> = theirs
                        .into_iter()
                        .map(|(id, mut d)| {
                            d.sort();
                            (id, d)
                        })
                        .collect();
                    if ours != theirs {
                        let only = |a: &[(String, Vec<String>)], b: &[(String, Vec<String>)]| {
                            a.iter()
                                .filter(|x| !b.contains(x))
                                .cloned()
                                .collect::<Vec<_>>()
                        };
                        panic!(
                            "plan {u} {name} {rt} {context}: only the plan {:?}, only brute force \
                             {:?}\n{:?}\n{}",
                            only(&ours, &theirs),
                            only(&theirs, &ours),
                            plan.condition,
                            plan.residual
                        );
                    }
                    match plan.outcome {
                        Outcome::AlwaysDenied => assert!(ours.is_empty()),
                        Outcome::AlwaysAllowed => assert_eq!(ours.len(), {
                            let mut r = resources.clone();
                            r.sort();
                            r.dedup();
                            r.len()
                        }),
                        Outcome::Conditional => conditional += 1,
                    }
                    compared += 1;
                    nonempty += usize::from(!ours.is_empty());
                }
            }
        }
    }
    (compared, conditional, nonempty)
}

#[test]
fn plans_select_exactly_what_is_authorized_with_and_without_each_overlay() {
    for overlays in [
        vec![],
        vec!["clients-read-only".to_string()],
        vec!["invite-client-and-above".to_string()],
    ] {
        let pack = PolicyPack::load(&PackSpec::new(live_pack(), &overlays)).unwrap();
        for seed in [5, 6] {
            let d = data(&pack, 0.002, seed);
            let (compared, conditional, nonempty) =
                compare_all(&pack, &d, "Blue::User", 8, "", &[]);
            println!(
                "{overlays:?} seed {seed}: {compared} plans equal brute force, {conditional} \
                 conditional, {nonempty} non-empty"
            );
            assert!(
                nonempty * 3 > compared && conditional * 2 > compared,
                "too few interesting plans: {nonempty} non-empty, {conditional} conditional of {compared}"
            );
        }
    }
}

#[test]
fn plans_with_request_scoped_entities_equal_brute_force() {
    let pack = PolicyPack::load(&PackSpec::new(live_pack(), &[])).unwrap();
    let d = data(&pack, 0.001, 9);
    let users = &d.ids["Blue::User"];
    let (p0, p1) = (&d.ids["Blue::Project"][0], &d.ids["Blue::Project"][1]);
    let (u0, u1) = (&users[0], &users[1]);
    let r0 = &d.ids["Blue::Record"][0];
    let entities = serde_json::json!([
        {"uid": {"type": "Blue::Record", "id": "draft"}, "attrs": {
            "project": {"__entity": {"type": "Blue::Project", "id": p0}},
            "creator": {"__entity": {"type": "Blue::User", "id": u1}}}, "parents": []},
        {"uid": {"type": "Blue::Record", "id": r0}, "attrs": {
            "project": {"__entity": {"type": "Blue::Project", "id": p1}},
            "creator": {"__entity": {"type": "Blue::User", "id": u0}}}, "parents": []},
        {"uid": {"type": "Blue::User", "id": u0}, "attrs": {},
            "parents": [{"type": "Blue::Role", "id": format!("{p0}/admin")}]},
    ])
    .to_string();
    let (compared, _, nonempty) = compare_all(
        &pack,
        &d,
        "Blue::User",
        4,
        &entities,
        &[("Blue::Record", "draft")],
    );
    println!("with request entities: {compared} plans equal brute force, {nonempty} non-empty");
    assert!(nonempty > 0);
}

/// Blue's pack with policies that negate a path (so "false" must be told from an error), go
/// three hops deep, branch with `if`, and test the resource itself.
const UNUSUAL: &str = r#"
@id("extra.outsiders")
permit (principal is Blue::User, action == Blue::Action::"viewRecord", resource is Blue::Record)
unless { principal in resource.project.view };

@id("extra.companyAdmins")
permit (principal is Blue::User, action == Blue::Action::"editRecord", resource is Blue::Record)
when { if principal in resource.project.company.admin then true else resource.creator == principal && !(principal in resource.project.member) };

@id("extra.notOwnUnlessMember")
forbid (principal is Blue::User, action == Blue::Action::"comment", resource is Blue::Record)
when { resource.creator == principal && !(principal in resource.project.member) };

@id("extra.company")
permit (principal is Blue::User, action == Blue::Action::"viewProject", resource is Blue::Project)
when { principal in resource.company.view && resource.company has admin };

@id("extra.self")
permit (principal is Blue::User, action == Blue::Action::"viewDashboard", resource is Blue::Dashboard)
when { resource in [Blue::Dashboard::"d-1", Blue::Dashboard::"nowhere"] || resource == Blue::Dashboard::"d-2" };
"#;

#[test]
fn plans_of_negated_deep_and_branching_policies_equal_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::pack(), dir.path());
    std::fs::write(dir.path().join("extra.cedar"), UNUSUAL).unwrap();
    let pack = PolicyPack::load(&PackSpec::new(dir.path(), &["clients-read-only".into()])).unwrap();
    for seed in [3, 4] {
        let d = data(&pack, 0.001, seed);
        let (compared, conditional, nonempty) = compare_all(&pack, &d, "Blue::User", 6, "", &[]);
        println!(
            "unusual policies, seed {seed}: {compared} plans equal brute force, {conditional} \
             conditional, {nonempty} non-empty"
        );
        assert!(nonempty > 0 && conditional > 0);
    }
    // A record whose project the store does not hold: every path through it is an error in
    // Cedar, so a negated path must not select it. (Decisions with request-scoped entities go
    // through Cedar's evaluator over a slice one attribute hop deep, so here the policies
    // stay within two hops of the resource.)
    std::fs::write(
        dir.path().join("extra.cedar"),
        UNUSUAL.replace("resource.project.company.admin", "resource.project.admin"),
    )
    .unwrap();
    let pack = PolicyPack::load(&PackSpec::new(dir.path(), &["clients-read-only".into()])).unwrap();
    for seed in [3, 4] {
        let d = data(&pack, 0.001, seed);
        let u0 = &d.ids["Blue::User"][0];
        let ghost = serde_json::json!([
            {"uid": {"type": "Blue::Record", "id": "ghost"}, "attrs": {
                "project": {"__entity": {"type": "Blue::Project", "id": "nowhere"}},
                "creator": {"__entity": {"type": "Blue::User", "id": u0}}}, "parents": []},
        ])
        .to_string();
        let (compared, _, _) = compare_all(
            &pack,
            &d,
            "Blue::User",
            6,
            &ghost,
            &[("Blue::Record", "ghost")],
        );
        println!("unusual policies with a dangling record, seed {seed}: {compared} plans equal");
        assert!(compared > 0);
    }
}

#[test]
fn the_docs_pack_plans_over_sets_and_booleans() {
    let docs = common::root().join("examples/docs");
    let pack = PolicyPack::load(&PackSpec::new(docs.join("policies"), &[])).unwrap();
    let mut store = EntityStore::default();
    let text = std::fs::read_to_string(docs.join("data.json")).unwrap();
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut ids: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in &all {
        ids.entry(e["uid"]["type"].as_str().unwrap().to_string())
            .or_default()
            .push(e["uid"]["id"].as_str().unwrap().to_string());
        store.bulk_insert(e).unwrap();
    }
    store.finish_bulk(1).unwrap();
    let store = store.rebuild(&pack.entities).unwrap();
    let d = Data { store, ids };
    let (compared, conditional, nonempty) = compare_all(&pack, &d, "Docs::User", 4, "", &[]);
    println!(
        "docs: {compared} plans equal brute force, {conditional} conditional, {nonempty} non-empty"
    );
    assert!(nonempty > 0 && conditional > 0);
    // alice reads: her own, her team's (eng views plan), the public handbook.
    let plan = plan_of(
        &pack,
        &d.store,
        ("Docs::User", "alice"),
        "read",
        "Docs::Document",
        "",
        "",
    )
    .unwrap();
    let kinds: BTreeSet<&str> = paths(&plan.condition).into_iter().collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["editors", "owner", "public", "viewers"]),
        "{:?}",
        plan.condition
    );
}

fn paths(c: &Condition) -> Vec<&str> {
    match c {
        Condition::Literal(_) => vec![],
        Condition::And(xs) | Condition::Or(xs) => xs.iter().flat_map(paths).collect(),
        Condition::Not(x) => paths(x),
        Condition::Policies { condition, .. } => paths(condition),
        Condition::Eq { path, .. }
        | Condition::In { path, .. }
        | Condition::Contains { path, .. }
        | Condition::Overlaps { path, .. }
        | Condition::Has { path } => vec![path.as_str()],
    }
}

#[test]
fn a_policy_no_filter_can_express_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::pack(), dir.path());
    std::fs::write(
        dir.path().join("extra.cedar"),
        r#"
@id("extra.twoPaths")
permit (principal is Blue::User, action == Blue::Action::"viewRecord", resource is Blue::Record)
when { resource.project.company == resource.project.company };
"#,
    )
    .unwrap();
    let pack = PolicyPack::load(&PackSpec::new(dir.path(), &[])).unwrap();
    let d = data(&pack, 0.001, 2);
    let u = &d.ids["Blue::User"][0];
    let e = plan_of(
        &pack,
        &d.store,
        ("Blue::User", u),
        "viewRecord",
        "Blue::Record",
        "",
        "",
    )
    .unwrap_err();
    assert_eq!(
        e.field,
        Field::Action(blue_authz::engine::error::Part::Whole)
    );
    assert!(
        e.message.contains("extra.twoPaths")
            && e.message
                .contains("resource.project.company == resource.project.company"),
        "{e}"
    );
    // Other actions still plan.
    plan_of(
        &pack,
        &d.store,
        ("Blue::User", u),
        "editRecord",
        "Blue::Record",
        "",
        "",
    )
    .unwrap();
    // Bad input names its field.
    let e = plan_of(
        &pack,
        &d.store,
        ("Blue::User", u),
        "viewRecord",
        "Blue::Nope",
        "",
        "",
    )
    .unwrap_err();
    assert_eq!(e.field.to_string(), "resource_type", "{e}");
    let e = plan_of(
        &pack,
        &d.store,
        ("Blue::User", u),
        "viewRecord",
        "Blue::Project",
        "",
        "",
    )
    .unwrap_err();
    assert_eq!(e.field.to_string(), "resource_type", "{e}");
}
