//! Proofs for policy authors, with the real cvc5: Blue's invariants hold for all data; each of
//! three mutations of the pack (a client may delete the project; the invite rule loses a role
//! check; an overlay grants a right) fails its invariant with a counterexample that the
//! decision path confirms on the counterexample's own entities; `diff` names exactly the
//! actions a mutation changed, and none between the pack and itself.
//!
//! Needs cvc5 (`apt-get install cvc5`; `.ci/run` installs it): in CI (`CI=true`) a missing
//! solver fails these tests, elsewhere they say loudly that they were skipped.

mod common;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use blue_authz::analysis::{self, Counterexample};
use blue_authz::engine::decide::{self, DEFAULT_SLICE_DEPTH};
use blue_authz::engine::index::EntityStore;
use blue_authz::engine::pack::{PackSpec, PolicyPack, Property};
use blue_authz::engine::request::{self, RawRequest, UidRef};
use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request};
use common::{copy_dir, edit, root};

/// Whether the solver is here; in CI its absence is a failure.
pub fn solver_or_skip(test: &str) -> bool {
    if analysis::solver_path().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cvc5 is missing in CI (apt-get install cvc5)");
    }
    eprintln!("SKIPPED {test}: cvc5 is not installed (apt-get install cvc5)");
    false
}

/// A copy of Blue's policy directory.
fn copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&root().join("policies"), &dir);
    (tmp, dir)
}

const DELETE: &str = "action == Blue::Action::\"deleteProject\",\n  resource is Blue::Project\n)\nwhen { principal in resource.admin };";
const INVITE_ADMIN: &str = "(context.role == \"admin\" && principal in resource.admin)";
const OVERLAY_GRANT: &str = "\n@id(\"overlay.clientsReadOnly.wikiForClients\")\npermit (\n  principal is Blue::User,\n  action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.client };\n";

/// Mutation 1: clients may delete the project.
fn client_deletes(dir: &Path) {
    edit(
        &dir.join("project.cedar"),
        DELETE,
        &DELETE.replace("resource.admin", "resource.client"),
    );
}

/// Mutation 2: an admin invite no longer checks that the inviter is an admin.
fn invite_loses_check(dir: &Path) {
    edit(
        &dir.join("people.cedar"),
        INVITE_ADMIN,
        "(context.role == \"admin\" && principal in resource.member)",
    );
}

/// Mutation 3: an overlay adds a permit.
fn overlay_grants(dir: &Path) {
    let path = dir.join("optional/clients-read-only.cedar");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(OVERLAY_GRANT);
    std::fs::write(path, text).unwrap();
}

fn load(dir: &Path, overlays: &[&str]) -> std::sync::Arc<PolicyPack> {
    let overlays: Vec<String> = overlays.iter().map(|o| o.to_string()).collect();
    PolicyPack::load(&PackSpec::new(dir, &overlays)).unwrap()
}

/// The decision path's answer for the counterexample's request on its own entities (what
/// `blue-authz check` prints).
fn check(pack: &PolicyPack, c: &Counterexample) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("entities.json");
    std::fs::write(&file, c.entities.to_string()).unwrap();
    let store = EntityStore::load_file(&file, &pack.entities)
        .unwrap_or_else(|e| panic!("the counterexample's entities do not load: {e}\n{}", c.entities));
    let (pt, pid) = split(&c.principal);
    let (rt, rid) = split(&c.resource);
    let context = c.context.to_string();
    let raw = RawRequest {
        principal: UidRef { ty: &pt, id: &pid },
        action: request::action_id(&c.action),
        resource: UidRef { ty: &rt, id: &rid },
        context_json: &context,
        entities_json: "",
    };
    let req = request::check(pack, &store, &raw).unwrap();
    decide::decide(pack, &store, &req, DEFAULT_SLICE_DEPTH).allow
}

fn split(uid: &str) -> (String, String) {
    let u = EntityUid::from_str(uid).unwrap();
    (u.type_name().to_string(), u.id().unescaped().to_string())
}

/// Whether the invariant's own condition holds on the counterexample (plain Cedar).
fn condition_holds(pack: &PolicyPack, id: &str, c: &Counterexample) -> bool {
    let inv = pack.invariants.list.iter().find(|i| i.id == id).unwrap();
    let Property::AllowedOnlyWhen { reference, .. } = &inv.property else {
        panic!("{id} is not an allowed_only_when invariant");
    };
    let entities = Entities::from_json_value(c.entities.clone(), Some(&pack.schema)).unwrap();
    let action = EntityUid::from_str(&format!("Blue::Action::\"{}\"", c.action)).unwrap();
    let req = Request::new(
        EntityUid::from_str(&c.principal).unwrap(),
        action.clone(),
        EntityUid::from_str(&c.resource).unwrap(),
        Context::from_json_value(c.context.clone(), Some((&pack.schema, &action))).unwrap(),
        Some(&pack.schema),
    )
    .unwrap();
    Authorizer::new().is_authorized(&req, reference, &entities).decision() == Decision::Allow
}

#[test]
fn blue_invariants_hold_for_all_data() {
    if !solver_or_skip("blue_invariants_hold_for_all_data") {
        return;
    }
    let pack = load(&root().join("policies"), &[]);
    assert!(pack.invariants.declared);
    assert_eq!(pack.invariants.list.len(), 8);
    let report = analysis::analyze(&pack).unwrap();
    for f in &report.findings {
        println!("{}", f.line());
    }
    println!("{}", report.summary());
    assert!(report.holds(), "{:#?}", report.failed());
    assert_eq!(report.findings.len(), 8, "one finding per invariant");
    assert_eq!(
        report.never_errors_policies,
        pack.policies.policies().count()
    );
    assert!(report.findings.iter().all(|f| f.queries > 0));
}

#[test]
fn each_mutation_fails_its_invariant_with_a_counterexample_check_confirms() {
    if !solver_or_skip("each_mutation_fails_its_invariant") {
        return;
    }
    type Mutate = fn(&Path);
    let cases: [(Mutate, &str, &[&str]); 3] = [
        (client_deletes, "project.adminOnly", &[]),
        (invite_loses_check, "people.inviteNeverAboveInviter", &[]),
        (overlay_grants, "overlays.onlyRestrict", &["clients-read-only"]),
    ];
    for (mutate, invariant, overlays) in cases {
        let (_tmp, dir) = copy();
        mutate(&dir);
        let pack = load(&dir, overlays);
        let report = analysis::analyze(&pack).unwrap();
        let failed: Vec<&str> = report.failed().iter().map(|f| f.id.as_str()).collect();
        assert_eq!(failed, vec![invariant], "{invariant}: {:#?}", report.failed());
        let f = report.failed()[0];
        let c = f.counterexample.as_ref().expect("a counterexample");
        println!("{invariant}: {}", f.reason().unwrap());
        // The mutated pack allows the counterexample's request on its own entities ...
        assert!(check(&pack, c), "{invariant}: check does not allow {c:?}");
        if invariant == "overlays.onlyRestrict" {
            // ... and the pack without the overlay denies it.
            let base = load(&dir, &[]);
            assert!(!check(&base, c), "the base pack allows it too: {c:?}");
        } else {
            // ... and the invariant's condition is false there.
            assert!(!condition_holds(&pack, invariant, c), "{c:?}");
            // The unmutated pack denies the same request on the same entities.
            let good = load(&root().join("policies"), &[]);
            assert!(!check(&good, c), "the good pack allows it too: {c:?}");
        }
    }
}

#[test]
fn diff_names_exactly_the_changed_actions() {
    if !solver_or_skip("diff_names_exactly_the_changed_actions") {
        return;
    }
    let good = load(&root().join("policies"), &[]);
    let same = analysis::diff(&good, &good).unwrap();
    assert!(same.changed.is_empty(), "{:#?}", same.changed);
    assert_eq!(same.unchanged.len(), good.schema.request_envs().count());

    type Mutate = fn(&Path);
    let cases: [(Mutate, &[&str], &str, &str); 3] = [
        (client_deletes, &[], "deleteProject", "may now"),
        (invite_loses_check, &[], "inviteMember", "may now"),
        (overlay_grants, &["clients-read-only"], "editWiki", "may now"),
    ];
    for (mutate, overlays, action, verb) in cases {
        let (_tmp, dir) = copy();
        let before = load(&dir, overlays);
        mutate(&dir);
        let after = load(&dir, overlays);
        let d = analysis::diff(&before, &after).unwrap();
        assert_eq!(d.changed_actions(), vec![action.to_string()], "{:#?}", d.lines());
        let change = &d.changed[0];
        let allowed = change.newly_allowed.as_ref().expect("something newly allowed");
        assert!(change.newly_denied.is_none(), "{:#?}", d.lines());
        println!("{}", allowed.words);
        assert!(allowed.words.contains(verb), "{}", allowed.words);
        assert!(allowed.words.contains(&format!("`{action}`")), "{}", allowed.words);
        // The counterexample is real: the new set allows it, the old one denies it.
        assert!(check(&after, &allowed.counterexample));
        assert!(!check(&before, &allowed.counterexample));
        // And as JSON for CI.
        let json = d.to_json();
        assert_eq!(json["changed"][0]["action"], action);
        assert!(json["changed"][0]["newly_allowed"]["counterexample"]["entities"].is_array());
    }
}
