//! Proofs for policy authors, with the real cvc5: Blue's invariants hold for all data; each of
//! three mutations of the pack (a client may delete the project; the invite rule loses a role
//! check; an overlay grants a right) fails its invariant with a counterexample that the
//! decision path confirms on the counterexample's own entities; `diff` names exactly the
//! actions a mutation changed, and none between the pack and itself.
//!
//! Needs cvc5 (`apt-get install cvc5`; `.ci/run` installs it): in CI (`CI=true`) a missing
//! solver fails these tests, elsewhere they say loudly that they were skipped.

use crate::common;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::common::server::Binary;
use crate::common::{copy_dir, edit, live_pack, pack, solver_or_skip};
use blue_authz::analysis::{self, Counterexample};
use blue_authz::engine::index::EntityStore;
use blue_authz::engine::pack::{PackSpec, PolicyPack, Property};
use blue_authz::engine::request::{self, DecisionRequest, UidRef};
use blue_authz::engine::View;
use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request};

/// A copy of Blue's policy directory.
fn copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&pack(), &dir);
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
/// `blue-authz check` prints); the entities must be data the store can hold (the pack's
/// assumptions are enforced as they load).
fn check(pack: &PolicyPack, c: &Counterexample) -> bool {
    check_on(pack, c, &pack.entities)
}

/// [`check`] for a counterexample about any data the schema allows (`Data::Unassumed`).
fn check_any_data(pack: &PolicyPack, c: &Counterexample) -> bool {
    let mut schema = pack.entities.clone();
    schema.assumptions.clear();
    check_on(pack, c, &schema)
}

fn check_on(
    pack: &PolicyPack,
    c: &Counterexample,
    schema: &blue_authz::engine::schema::EntitySchema,
) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("entities.json");
    std::fs::write(&file, c.entities.to_string()).unwrap();
    let store = EntityStore::load_file(&file, schema).unwrap_or_else(|e| {
        panic!(
            "the counterexample's entities do not load: {e}\n{}",
            c.entities
        )
    });
    let (pt, pid) = split(&c.principal);
    let (rt, rid) = split(&c.resource);
    let context = c.context.as_object();
    View::new(pack, &store)
        .is_authorized(&DecisionRequest {
            principal: UidRef { ty: &pt, id: &pid },
            action: request::action_id(&c.action),
            resource: UidRef { ty: &rt, id: &rid },
            context,
            entities: &[],
        })
        .unwrap()
        .allow
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
    Authorizer::new()
        .is_authorized(&req, reference, &entities)
        .decision()
        == Decision::Allow
}

#[test]
fn blue_invariants_hold_for_all_data() {
    if !solver_or_skip("blue_invariants_hold_for_all_data") {
        return;
    }
    let pack = load(&live_pack(), &[]);
    assert!(pack.invariants.declared);
    assert_eq!(pack.invariants.list.len(), 8);
    let table = blue_authz::authoring::matrix::claims(&pack).unwrap();
    assert_eq!(
        table.len(),
        38,
        "every row of matrix.toml says what it allows"
    );
    let report = analysis::analyze(&pack, &table).unwrap();
    for f in &report.findings {
        println!("{}", f.line());
    }
    println!("{}", report.summary());
    assert!(report.holds(), "{:#?}", report.failed());
    assert_eq!(
        report.findings.len(),
        8 + 38,
        "one finding per invariant and per table row"
    );
    assert_eq!(report.table_rows, 38);
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
        (
            overlay_grants,
            "overlays.onlyRestrict",
            &["clients-read-only"],
        ),
    ];
    for (mutate, invariant, overlays) in cases {
        let (_tmp, dir) = copy();
        mutate(&dir);
        let pack = load(&dir, overlays);
        let report = analysis::analyze(&pack, &[]).unwrap();
        let failed: Vec<&str> = report.failed().iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            failed,
            vec![invariant],
            "{invariant}: {:#?}",
            report.failed()
        );
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
            let good = load(&common::pack(), &[]);
            assert!(!check(&good, c), "the good pack allows it too: {c:?}");
        }
    }
}

#[test]
fn diff_names_exactly_the_changed_actions() {
    if !solver_or_skip("diff_names_exactly_the_changed_actions") {
        return;
    }
    let good = load(&pack(), &[]);
    let same = analysis::diff(&good, &good, analysis::Data::Assumed).unwrap();
    assert!(same.changed.is_empty(), "{:#?}", same.changed);
    assert_eq!(same.unchanged.len(), good.schema.request_envs().count());

    type Mutate = fn(&Path);
    let cases: [(Mutate, &[&str], &str, &str); 3] = [
        (client_deletes, &[], "deleteProject", "may now"),
        (invite_loses_check, &[], "inviteMember", "may now"),
        (
            overlay_grants,
            &["clients-read-only"],
            "editWiki",
            "may now",
        ),
    ];
    for (mutate, overlays, action, verb) in cases {
        let (_tmp, dir) = copy();
        let before = load(&dir, overlays);
        mutate(&dir);
        let after = load(&dir, overlays);
        let d = analysis::diff(&before, &after, analysis::Data::Unassumed).unwrap();
        assert_eq!(
            d.changed_actions(),
            vec![action.to_string()],
            "{:#?}",
            d.lines()
        );
        let change = &d.changed[0];
        let allowed = change
            .newly_allowed
            .as_ref()
            .expect("something newly allowed");
        // For all data, a changed condition may also deny someone it allowed (an admin
        // outside an unchained client group): when it says so, that is real too.
        if let Some(denied) = &change.newly_denied {
            println!("{}", denied.words);
            assert!(denied.words.contains("may no longer"), "{}", denied.words);
            assert!(!check_any_data(&after, &denied.counterexample));
            assert!(check_any_data(&before, &denied.counterexample));
        }
        println!("{}", allowed.words);
        assert!(allowed.words.contains(verb), "{}", allowed.words);
        assert!(
            allowed.words.contains(&format!("`{action}`")),
            "{}",
            allowed.words
        );
        // The counterexample is real: the new set allows it, the old one denies it.
        assert!(check_any_data(&after, &allowed.counterexample));
        assert!(!check_any_data(&before, &allowed.counterexample));
        // And as JSON for CI.
        let json = d.to_json();
        assert_eq!(json["changed"][0]["action"], action);
        assert!(json["changed"][0]["newly_allowed"]["counterexample"]["entities"].is_array());
    }
}

/// The suite and the table updated as a careless author would, so that the tests pass, the
/// table says clients may delete projects, and only the invariant stands between the mutation
/// and production.
fn client_deletes_with_tests_updated(dir: &Path) {
    client_deletes(dir);
    edit(
        &dir.join("tests/project.toml"),
        "expect = { ada = \"allow project.delete\", max = \"deny\", cleo = \"deny\",",
        "expect = { ada = \"allow project.delete\", max = \"allow project.delete\", cleo = \"allow project.delete\",",
    );
    edit(
        &dir.join("matrix.toml"),
        "action = \"deleteProject\"\nresource = \"Project::apollo\"\nallowed = [\"admin\"]",
        "action = \"deleteProject\"\nresource = \"Project::apollo\"\nallowed = [\"admin\", \"member\", \"client\"]",
    );
}

#[test]
fn the_tests_alone_would_pass_the_mutation() {
    let (_tmp, dir) = copy();
    client_deletes_with_tests_updated(&dir);
    let report = blue_authz::authoring::suite::run(&PackSpec::new(&dir, &[])).unwrap();
    assert!(report.failed().is_empty(), "{}", report.summary());
}

/// Polls `GetPolicyStatus` until `done` holds (20 s at most).
async fn wait_status(
    status: &mut blue_authz::service::grpc::pb::policies_client::PoliciesClient<
        tonic::transport::Channel,
    >,
    done: impl Fn(&blue_authz::service::grpc::pb::PolicyStatus) -> bool,
    never: &str,
) -> blue_authz::service::grpc::pb::PolicyStatus {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status
            .get_policy_status(blue_authz::service::grpc::pb::GetPolicyStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{never}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_breaks_an_invariant_is_rejected_under_load_and_start_up_refuses_it() {
    use blue_authz::service::gate::Analysis;
    use blue_authz::service::grpc::pb::{
        self, authorizer_client::AuthorizerClient, policies_client::PoliciesClient,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    if !solver_or_skip("a_reload_that_breaks_an_invariant_is_rejected") {
        return;
    }
    let (tmp, dir) = copy();
    let mut cfg = common::config(tmp.path(), blue_authz::service::server::Limits::default());
    cfg.pack = PackSpec::new(&dir, &[]);
    cfg.analysis = Analysis::Required;
    let mut running = blue_authz::service::server::start(cfg).await.unwrap();
    running.load().await.unwrap();
    let url = format!("http://{}", running.addr.unwrap());
    let decisions = AuthorizerClient::connect(url.clone()).await.unwrap();
    let mut status = PoliciesClient::connect(url).await.unwrap();
    let before = status
        .get_policy_status(pb::GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        before
            .live_analysis
            .starts_with("proved: 8 invariants hold"),
        "{}",
        before.live_analysis
    );

    // Decisions flow all along; any failed call, or any ALLOW for the client, fails the test.
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flow = {
        let mut c = decisions.clone();
        let stop = stop.clone();
        let counted = counted.clone();
        tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .is_authorized(common::ask(
                        "cleo",
                        "deleteProject",
                        "Blue::Project",
                        "apollo",
                    ))
                    .await
                    .expect("a call failed during the reload")
                    .into_inner();
                assert_eq!(r.decision, pb::Decision::Deny as i32, "the mutation served");
                calls += 1;
                counted.fetch_add(1, Ordering::Relaxed);
            }
            calls
        })
    };
    let at_least = |n: u64| {
        let counted = counted.clone();
        move || counted.load(Ordering::Relaxed) >= n
    };
    common::until("decisions flowing", Duration::from_secs(30), at_least(10)).await;
    client_deletes_with_tests_updated(&dir);
    let after = wait_status(
        &mut status,
        |s| s.reloads_rejected > 0,
        "the mutation was never rejected",
    )
    .await;
    // Decisions go on after the rejection.
    let now = counted.load(Ordering::Relaxed);
    common::until(
        "decisions after the rejection",
        Duration::from_secs(30),
        at_least(now + 10),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let calls = flow.await.unwrap();
    assert!(calls > 20, "{calls} calls");
    assert_eq!(after.live_version, before.live_version);
    assert_eq!(after.reloads_accepted, 0);
    let reasons = after.last_rejection.unwrap().reasons.join("\n");
    assert!(
        reasons.contains("invariant project.adminOnly fails at"),
        "{reasons}"
    );
    assert!(reasons.contains("counterexample {"), "{reasons}");

    // The fix is accepted, and the rejection it answers is no longer shown as the state.
    copy_dir(&pack(), &dir);
    let mut project = std::fs::read_to_string(dir.join("project.cedar")).unwrap();
    project.push_str("\n// reviewed\n");
    std::fs::write(dir.join("project.cedar"), project).unwrap();
    let fixed = wait_status(
        &mut status,
        |s| s.reloads_accepted > 0,
        "the fix was never accepted",
    )
    .await;
    assert!(fixed.last_rejection.is_none(), "{fixed:?}");
    assert!(
        fixed.live_analysis.starts_with("proved: "),
        "{}",
        fixed.live_analysis
    );
    running.shutdown().await.unwrap();

    // Start-up refuses the mutation: the real binary exits non-zero naming the invariant.
    let (_tmp2, dir) = copy();
    client_deletes_with_tests_updated(&dir);
    let out = Binary::serve(&dir, &tmp.path().join("fresh.redb"))
        .args(["--seed", "", "--analysis", "required"])
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "start-up served the mutation: {stderr}"
    );
    assert!(
        stderr.contains("invariant project.adminOnly fails"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_solver_optional_serves_and_says_so_and_required_refuses() {
    use blue_authz::service::grpc::pb::{self, policies_client::PoliciesClient};
    let tmp = tempfile::tempdir().unwrap();
    let serve = |analysis: &str, db: &str| {
        Binary::serve(&pack(), &tmp.path().join(db))
            .args(["--seed", "", "--analysis", analysis])
            .env("CVC5", tmp.path().join("no-such-cvc5"))
    };

    // Required: refused, saying why.
    let out = serve("required", "a.redb").output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served without its proofs: {stderr}");
    assert!(
        stderr.contains("is required and could not run")
            && stderr.contains("cvc5 is not available"),
        "{stderr}"
    );

    // Optional: serves, and the log and GetPolicyStatus say the analysis was skipped.
    let mut server = serve("optional", "b.redb").spawn();
    let addr = server.wait_serving().decisions;
    let warned = server
        .log
        .lines()
        .iter()
        .any(|l| l.contains("WARN") && l.contains("analysis skipped"));
    assert!(warned, "no warning that the analysis was skipped");
    let mut status = PoliciesClient::connect(format!("http://{}", addr.unwrap()))
        .await
        .unwrap();
    let s = status
        .get_policy_status(pb::GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        s.live_analysis.starts_with("skipped: "),
        "{}",
        s.live_analysis
    );
    assert!(s.live_analysis.contains("cvc5"), "{}", s.live_analysis);
}

/// Widening editWiki from members to clients.
fn wiki_for_clients(dir: &Path) {
    edit(
        &dir.join("project.cedar"),
        "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.member };",
        "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.client };",
    );
}

/// Under Blue's declared assumptions (each project's role groups are chained), widening
/// editWiki from members to clients is a pure gain; for every store the schema allows
/// (`--unassumed`), it also takes the right from an admin outside an unchained client group.
#[test]
fn diff_of_a_widening_reports_only_gains_under_the_packs_assumptions() {
    if !solver_or_skip("diff_of_a_widening_reports_only_gains") {
        return;
    }
    let (_tmp, dir) = copy();
    let before = load(&dir, &[]);
    assert_eq!(
        before
            .entities
            .assumptions
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        [
            "project.rolesChained",
            "company.rolesChained",
            "dashboard.editorsAreViewers"
        ]
    );
    wiki_for_clients(&dir);
    let after = load(&dir, &[]);

    let assumed = analysis::diff(&before, &after, analysis::Data::Assumed).unwrap();
    println!("{:#?}", assumed.lines());
    assert_eq!(assumed.changed_actions(), ["editWiki"]);
    let change = &assumed.changed[0];
    let gain = change
        .newly_allowed
        .as_ref()
        .expect("clients gain editWiki");
    assert!(gain.words.contains("may now"), "{}", gain.words);
    assert!(
        change.newly_denied.is_none(),
        "a loss reported under the assumptions: {}",
        change.newly_denied.as_ref().unwrap().words
    );
    // The gain's counterexample is data the store can hold: it loads with the assumptions
    // enforced, and the decision path confirms it.
    assert!(check(&after, &gain.counterexample));
    assert!(!check(&before, &gain.counterexample));
    assert_eq!(assumed.to_json()["assumed"].as_array().unwrap().len(), 3);

    let unassumed = analysis::diff(&before, &after, analysis::Data::Unassumed).unwrap();
    let loss = unassumed.changed[0]
        .newly_denied
        .as_ref()
        .expect("for all data, an unchained store loses someone");
    println!("{}", loss.words);
    assert!(loss.words.contains("may no longer"), "{}", loss.words);
    assert!(unassumed.assumed.is_empty());
}

/// Drops every case of `action` from a suite file, as an author who "fixes" the failing tests.
fn drop_cases(path: &Path, action: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for (i, block) in text.split("[[test]]").enumerate() {
        if i > 0 && block.contains(&format!("action = \"{action}\"")) {
            continue;
        }
        if i > 0 {
            out.push_str("[[test]]");
        }
        out.push_str(block);
    }
    std::fs::write(path, out).unwrap();
}

const VIEWERS_DELETE: &str = "\n@id(\"record.deleteByViewers\")\npermit (\n  principal is Blue::User,\n  action == Blue::Action::\"deleteRecord\",\n  resource is Blue::Record\n)\nwhen { principal in resource.project.view };\n";

fn add_policy(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    let mut all = std::fs::read_to_string(&path).unwrap();
    all.push_str(text);
    std::fs::write(path, all).unwrap();
}

/// The permission table is part of the gate: a permit that lets view users delete records,
/// with the suites "fixed" to pass, is refused naming the table row, both when the table's
/// fixture shows it and when only the proof for all data can; once `matrix.toml` says so (a
/// visible change), the same pack passes.
#[test]
fn the_gate_refuses_a_change_to_who_may_do_what_that_the_table_does_not_show() {
    use blue_authz::service::gate::{self, Analysis};
    if !solver_or_skip("the_gate_refuses_a_change_to_who_may_do_what") {
        return;
    }
    const ROW: &str = "row `deleteRecord (any record)`";

    // Seen on the fixture: vic (view) may now delete apollo-task.
    let (_tmp, dir) = copy();
    add_policy(&dir, "records.cedar", VIEWERS_DELETE);
    drop_cases(&dir.join("tests/records.toml"), "deleteRecord");
    let suites = blue_authz::authoring::suite::run(&PackSpec::new(&dir, &[])).unwrap();
    assert!(suites.failed().is_empty(), "{}", suites.summary());
    let refused = gate::load(&PackSpec::new(&dir, &[]), Analysis::Required)
        .expect_err("view users deleting records passed the gate");
    let reasons = refused.reasons().join("\n");
    println!("{reasons}");
    assert!(reasons.contains(ROW), "{reasons}");
    assert!(
        reasons.contains("on the fixture the policies allow column `view`, the table denies it"),
        "{reasons}"
    );

    // Only the proof can see it: viewers may delete the records of a user the fixture does
    // not hold, which no suite case or table row asks about.
    let (_tmp2, dir2) = copy();
    add_policy(
        &dir2,
        "records.cedar",
        &VIEWERS_DELETE.replace(
            "principal in resource.project.view",
            "principal in resource.project.view && resource.creator == Blue::User::\"mallory\"",
        ),
    );
    let suites = blue_authz::authoring::suite::run(&PackSpec::new(&dir2, &[])).unwrap();
    assert!(suites.failed().is_empty(), "{}", suites.summary());
    let refused = gate::load(&PackSpec::new(&dir2, &[]), Analysis::Required)
        .expect_err("the unseen grant passed the gate");
    let reasons = refused.reasons().join("\n");
    println!("{reasons}");
    assert!(
        reasons.contains(&format!(
            "matrix table `Projects and companies (SPEC.md section 2)`, {ROW} fails"
        )),
        "{reasons}"
    );
    assert!(
        reasons.contains("no allowed column (admin, member)"),
        "{reasons}"
    );
    assert!(reasons.contains("counterexample {"), "{reasons}");

    // The visible change: the table now says every role may delete any record, its own too.
    for d in [&dir, &dir2] {
        edit(
            &d.join("matrix.toml"),
            "given = \"resource.creator != principal\"\nallowed = [\"admin\", \"member\"]",
            "given = \"resource.creator != principal\"\nallowed = [\"admin\", \"member\", \"client\", \"comment\", \"view\"]",
        );
        edit(
            &d.join("matrix.toml"),
            "given = \"resource.creator == principal\"\nallowed = [\"admin\", \"member\", \"client\"]",
            "given = \"resource.creator == principal\"\nallowed = [\"admin\", \"member\", \"client\", \"comment\", \"view\"]",
        );
    }
    gate::load(&PackSpec::new(&dir, &[]), Analysis::Required)
        .expect("the table says view users may delete any record");
    let still = gate::load(&PackSpec::new(&dir2, &[]), Analysis::Required)
        .expect_err("mallory's records only: the fixture's row denies client, comment and view");
    assert!(still.reasons().join("\n").contains(ROW));
}

/// `analyze` by the real binary with the proof file in `cache` (or `off`): exit code and
/// output.
fn analyze_with_cache(dir: &Path, cache: &str, xdg: &Path) -> (i32, String) {
    let out = std::process::Command::new(common::server::BIN)
        .args(["--policies", dir.to_str().unwrap(), "analyze"])
        .env(analysis::PROOF_CACHE_ENV, cache)
        .env("XDG_CACHE_HOME", xdg)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Proofs that held are remembered across processes in the proof file, so a restart on the
/// same pack asks the solver nothing; a pack whose policies changed is proved again (a broken
/// one fails with its counterexample, whatever the file holds), and `off` remembers nothing.
#[test]
fn proofs_are_remembered_across_processes_and_only_for_the_same_policies() {
    if !solver_or_skip("proofs_are_remembered_across_processes") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("proofs");
    let cache = file.to_str().unwrap();
    let xdg = tmp.path().join("xdg");
    let (_t, dir) = copy();
    let (code, first) = analyze_with_cache(&dir, cache, &xdg);
    assert_eq!(code, 0, "{first}");
    assert!(first.contains(" 0 remembered"), "{first}");
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert!(lines > 100, "{lines} proofs remembered");
    let (code, second) = analyze_with_cache(&dir, cache, &xdg);
    assert_eq!(code, 0, "{second}");
    assert!(
        second.contains(&format!("(0 solver queries, {lines} remembered")),
        "{second}"
    );

    client_deletes(&dir);
    let (code, broken) = analyze_with_cache(&dir, cache, &xdg);
    assert_eq!(code, 1, "{broken}");
    assert!(broken.contains("FAIL project.adminOnly"), "{broken}");
    assert!(broken.contains("counterexample: {"), "{broken}");

    // The default place is under XDG_CACHE_HOME; `off` writes nothing there.
    let (_t2, fresh) = copy();
    let (code, text) = analyze_with_cache(&fresh, "off", &xdg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(" 0 remembered"), "{text}");
    assert!(!xdg.join("blue-authz").exists());
    let (code, text) = analyze_with_cache(&fresh, "", &xdg);
    assert_eq!(code, 0, "{text}");
    assert!(xdg.join("blue-authz/proofs").is_file(), "{text}");
}
