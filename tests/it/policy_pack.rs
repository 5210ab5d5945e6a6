//! Acceptance tests of the policy pack. The `shipped_pack_*` tests check the live `policies/`
//! only through data its author updates with a rule (the suites, `docs/permissions.md`):
//! strict validation, ids, the suites with each overlay, their coverage, the committed matrix.
//! Everything with hand-written expectations (the matrix against SPEC.md cell by cell, a flipped
//! cell caught, located errors, the overlays changing only what SPEC.md section 4 says) runs on
//! the frozen copy in `tests/fixtures/blue/`. The README's rule-change procedure is followed on
//! a copy of the project and these same `shipped_pack_*` tests run on the result.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{copy_dir, edit, live_matrix, live_pack};
use blue_authz::authoring::suite::{self, Case};
use blue_authz::engine::decide::Decision;
use blue_authz::engine::pack::{PackSpec, PolicyPack};

/// The frozen copy of Blue's pack.
fn policies() -> PathBuf {
    common::pack()
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blue-authz"))
}

fn run(args: &[&str], policies: &Path) -> (i32, String, String) {
    let out = bin()
        .arg("--policies")
        .arg(policies)
        .args(args)
        .env_remove("BLUE_AUTHZ_OVERLAYS")
        .output()
        .expect("run blue-authz");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const OVERLAYS: [&str; 2] = ["clients-read-only", "invite-client-and-above"];

#[test]
fn shipped_pack_is_valid_in_strict_mode() {
    // Loading fails on any error or warning, so Ok means zero of both.
    let pack = PolicyPack::load(&PackSpec::new(live_pack(), &[])).expect("valid pack");
    assert!(pack.policies.policies().count() >= 30);
    for o in OVERLAYS {
        PolicyPack::load(&PackSpec::new(live_pack(), &[o.to_string()])).expect("valid overlay");
    }
    let (code, out, err) = run(&["validate"], &live_pack());
    assert_eq!(code, 0, "validate failed: {out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
    assert!(err.is_empty(), "validate printed diagnostics: {err}");
    // Every one of Blue's actions is decided by a compiled plan.
    let n = pack.actions().len();
    assert!(pack.unplanned_actions().is_empty());
    assert!(
        out.contains(&format!("compiled plans: {n} of {n} actions")),
        "{out}"
    );
}

/// A policy outside the compiled plans' subset (here an extension function) is still valid
/// Cedar: `validate` names its action as going through Cedar's evaluator, and the policy tests
/// still pass on that path.
#[test]
fn a_policy_outside_the_plans_subset_moves_its_action_to_cedars_evaluator() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("policies");
    copy_dir(&policies(), &copy);
    let wiki = "when { principal in resource.member };";
    let text = std::fs::read_to_string(copy.join("project.cedar")).unwrap();
    assert!(text.contains(wiki));
    let edit_wiki = "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\n"
        .to_string()
        + wiki;
    edit(
        &copy.join("project.cedar"),
        &edit_wiki,
        &edit_wiki.replace(
            wiki,
            "when { principal in resource.member && decimal(\"1.0\").lessThan(decimal(\"2.0\")) };",
        ),
    );
    let (code, out, err) = run(&["validate"], &copy);
    assert_eq!(code, 0, "{out}{err}");
    let pack = PolicyPack::load(&PackSpec::new(copy.clone(), &[])).unwrap();
    let n = pack.actions().len();
    assert_eq!(
        pack.unplanned_actions()
            .iter()
            .map(|a| a.id().unescaped().to_string())
            .collect::<Vec<_>>(),
        vec!["editWiki"]
    );
    assert!(
        out.contains(&format!("compiled plans: {} of {n} actions", n - 1))
            && out.contains(
                "through Cedar's evaluator (a policy outside the plans' subset): editWiki"
            ),
        "{out}"
    );
    let (code, out, _) = run(&["test"], &copy);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn shipped_pack_policies_are_named_by_their_ids() {
    let pack = PolicyPack::load(&PackSpec::new(live_pack(), &[])).unwrap();
    for p in pack.policies.policies() {
        assert_eq!(Some(p.id().to_string().as_str()), p.annotation("id"));
    }
}

#[test]
fn shipped_pack_suites_pass_by_default_and_with_each_overlay() {
    for overlays in [
        vec![],
        vec!["clients-read-only"],
        vec!["invite-client-and-above"],
        OVERLAYS.to_vec(),
    ] {
        let overlays: Vec<String> = overlays.into_iter().map(String::from).collect();
        let report = suite::run(&PackSpec::new(live_pack(), &overlays)).expect("suites run");
        let failures: Vec<String> = report.failed().iter().map(|f| f.describe()).collect();
        println!("overlays {overlays:?}: {}", report.summary());
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(report.results.len() > 300);
    }
    // The CLI runs the same suites and prints the same summary line.
    let (code, out, _) = run(&["test"], &live_pack());
    assert_eq!(code, 0, "{out}");
    let report = suite::run(&PackSpec::new(live_pack(), &[])).unwrap();
    assert!(out.ends_with(&format!("{}\n", report.summary())), "{out}");
}

/// The principals that stand for each role in the fixture.
const PROJECT_ROLES: [(&str, &str); 6] = [
    ("admin", "ada"),
    ("member", "max"),
    ("client", "cleo"),
    ("comment", "cora"),
    ("view", "vic"),
    ("non-member", "gus"),
];
const DASHBOARD_ROLES: [(&str, &str); 5] = [
    ("owner", "dora"),
    ("editor", "eli"),
    ("viewer", "val"),
    ("no access", "vic"),
    ("other company", "olaf"),
];

#[test]
fn shipped_pack_suites_cover_every_role_and_action() {
    let spec = PackSpec::new(live_pack(), &[]);
    let pack = PolicyPack::load(&spec).unwrap();
    let suites = suite::load_suites(&live_pack().join("tests")).unwrap();
    let cases = suite::effective_cases(&suites, &[]);
    let mut missing = Vec::new();
    for action in pack.actions() {
        let action = action.id().unescaped().to_string();
        let dashboard = action.contains("Dashboard") && action != "createDashboard";
        let roles: &[(&str, &str)] = if dashboard {
            &DASHBOARD_ROLES
        } else {
            &PROJECT_ROLES
        };
        for (role, user) in roles {
            let covered = cases
                .iter()
                .any(|c| c.action == action && c.principal.id().unescaped() == *user);
            if !covered {
                missing.push(format!("{action} for {role} ({user})"));
            }
        }
    }
    assert!(missing.is_empty(), "no case for: {missing:?}");
    // Own versus someone else's record, for every role.
    for (_, user) in PROJECT_ROLES {
        let own = format!("apollo-by-{user}");
        assert!(cases
            .iter()
            .any(|c| c.action == "deleteRecord" && c.resource.id().unescaped() == own.as_str()));
    }
    // Invite for every (inviter role, invited role) pair.
    for (_, user) in PROJECT_ROLES {
        for role in ["admin", "member", "client", "comment", "view"] {
            assert!(cases.iter().any(|c| c.action == "inviteMember"
                && c.principal.id().unescaped() == user
                && c.context["role"] == role
                && c.resource.id().unescaped() == "apollo"));
        }
    }
}

/// SPEC.md sections 2 and 3, transcribed: row (as the matrix labels it) -> lowest column.
const SPEC_TABLE: &[(&str, &str)] = &[
    ("`createProject`", "member"),
    ("`createDashboard`", "view"),
    ("`copyProject`", "admin"),
    ("`createProjectTemplate`", "admin"),
    ("`archiveProject`", "admin"),
    ("`deleteProject`", "admin"),
    ("`editProject`", "admin"),
    ("`editWiki`", "member"),
    ("`editDocuments`", "member"),
    ("`importCsv`", "admin"),
    ("`exportCsv`", "admin"),
    ("`createRecord`", "client"),
    ("`createList`", "member"),
    ("`deleteRecord` (any record)", "member"),
    ("`deleteRecord` (own record)", "client"),
    ("`manageAutomations`", "admin"),
    ("`manageCustomFields`", "admin"),
    ("`uploadFile`", "comment"),
    ("`editForms`", "member"),
    ("`comment`", "comment"),
    ("`inviteMember` (invite as admin)", "admin"),
    ("`inviteMember` (invite as member)", "member"),
    ("`inviteMember` (invite as client)", "client"),
    ("`inviteMember` (invite as comment)", "comment"),
    ("`inviteMember` (invite as view)", "view"),
    ("`viewProject`", "view"),
    ("`viewRecord`", "view"),
    ("`viewPeople`", "view"),
    ("`removeMember`", "admin"),
    ("`changeMemberRole` (to member)", "admin"),
    ("`editRecord`", "member"),
    ("`viewDashboard`", "viewer"),
    ("`editDashboard`", "editor"),
    ("`shareDashboard` (as viewer)", "viewer"),
    ("`shareDashboard` (as editor)", "editor"),
    (
        "`shareDashboard` (as viewer, with another company)",
        "nobody",
    ),
    ("`revokeDashboardAccess`", "owner"),
    ("`deleteDashboard`", "owner"),
];

/// The live pack's matrix equals the committed one, which its author regenerates with a rule.
#[test]
fn shipped_pack_matrix_equals_the_committed_table() {
    let committed = live_matrix();
    let (code, out, err) = run(
        &["matrix", "--check", committed.to_str().unwrap()],
        &live_pack(),
    );
    assert_eq!(
        code,
        0,
        "the matrix of {} differs from {}: if the change is meant, regenerate it with \
         `cargo run -- matrix > docs/permissions.md` and review its diff\n{out}{err}",
        live_pack().display(),
        committed.display()
    );
    let pack = PolicyPack::load(&PackSpec::new(live_pack(), &[])).unwrap();
    let rendered = blue_authz::authoring::matrix::render(&pack).unwrap();
    assert_eq!(rendered, std::fs::read_to_string(&committed).unwrap());
}

/// Blue's original table: the frozen pack's matrix, cell by cell against SPEC.md.
#[test]
fn the_frozen_packs_matrix_equals_spec_cell_by_cell() {
    let committed = policies().join("../permissions.md");
    let pack = PolicyPack::load(&PackSpec::new(policies(), &[])).unwrap();
    let rendered = blue_authz::authoring::matrix::render(&pack).unwrap();
    assert_eq!(rendered, std::fs::read_to_string(&committed).unwrap());

    // Cell by cell against SPEC.md: columns are ranked highest first, so every column up to
    // the lowest allowed one is ✅ and every column after it is ❌.
    let spec: HashMap<&str, &str> = SPEC_TABLE.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let mut header: Vec<String> = Vec::new();
    for line in rendered.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        if cells[0] == "action" {
            header = cells;
            continue;
        }
        let label = cells[0].as_str();
        let lowest = spec
            .get(label)
            .unwrap_or_else(|| panic!("row {label} is not in SPEC.md"));
        let roles = &header[2..header.len() - 3];
        let marks = &cells[2..cells.len() - 3];
        let cut = if *lowest == "nobody" {
            0
        } else {
            roles.iter().position(|r| r == lowest).unwrap() + 1
        };
        for (i, (role, mark)) in roles.iter().zip(marks).enumerate() {
            let want = if i < cut { "✅" } else { "❌" };
            assert_eq!(mark, want, "row {label}, column {role}");
        }
        assert_eq!(&cells[cells.len() - 3], lowest, "row {label}");
        seen.insert(label.to_string());
    }
    let expected: BTreeSet<String> = spec.keys().map(|s| s.to_string()).collect();
    assert_eq!(seen, expected, "the matrix rows are exactly SPEC.md's rows");
}

#[test]
fn a_flipped_cell_fails_test_and_matrix_check() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("policies");
    copy_dir(&policies(), &copy);
    // Clients may edit the wiki: one cell of the table flipped.
    let wiki = "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.member };";
    edit(
        &copy.join("project.cedar"),
        wiki,
        &wiki.replace("resource.member", "resource.client"),
    );
    let (code, _, err) = run(&["validate"], &copy);
    assert_eq!(code, 0, "the flipped copy is still valid Cedar: {err}");

    let (code, out, _) = run(&["test"], &copy);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL") && out.contains("editWiki / cleo"),
        "{out}"
    );
    assert!(
        out.contains("expected: deny") && out.contains("actual:   allow project.editWiki"),
        "{out}"
    );
    assert!(out.contains(" passed, 1 failed\n"), "{out}");
    // The permission table's row says members and above: it fails too, named.
    assert!(
        out.contains("row `editWiki`: on the fixture the policies allow column `client`"),
        "{out}"
    );
    assert!(
        out.trim_end()
            .ends_with("1 row(s) of matrix.toml answer otherwise than the table says"),
        "{out}"
    );

    let committed = policies().join("../permissions.md");
    let (code, out, _) = run(&["matrix", "--check", committed.to_str().unwrap()], &copy);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`editWiki`"), "{out}");
}

#[test]
fn syntax_and_schema_errors_name_file_line_col() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("policies");
    copy_dir(&policies(), &copy);
    edit(
        &copy.join("company.cedar"),
        "when { principal in resource.member };",
        "when { principal in resource.member ;",
    );
    let (code, _, err) = run(&["validate"], &copy);
    assert_ne!(code, 0);
    let file = copy.join("company.cedar");
    assert!(
        err.contains(&format!(
            "{}:10:37: error: unexpected token",
            file.display()
        )),
        "{err}"
    );

    copy_dir(&policies(), &copy);
    edit(
        &copy.join("records.cedar"),
        "resource.project.view",
        "resource.project.viewers",
    );
    let (code, _, err) = run(&["validate"], &copy);
    assert_ne!(code, 0);
    let file = copy.join("records.cedar");
    assert!(
        err.contains(&format!("{}:11:21: error:", file.display())),
        "{err}"
    );
    assert!(
        err.contains("attribute `viewers` on entity type `Blue::Project` not found"),
        "{err}"
    );
    // Cedar's own help survives.
    assert!(err.contains("did you mean `view`?"), "{err}");

    // A schema error is located in the schema file.
    copy_dir(&policies(), &copy);
    edit(
        &copy.join("schema.cedarschema"),
        "entity Role in [Role, Project, Company];",
        "entity Role in [Role, Project, Company]",
    );
    let (code, _, err) = run(&["validate"], &copy);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("{}:", copy.join("schema.cedarschema").display())),
        "{err}"
    );

    // A policy without @id is refused, located.
    copy_dir(&policies(), &copy);
    edit(
        &copy.join("company.cedar"),
        "@id(\"company.createDashboard\")\n",
        "",
    );
    let (code, _, err) = run(&["validate"], &copy);
    assert_ne!(code, 0);
    assert!(
        err.contains("company.cedar:12:1: error: policy has no @id"),
        "{err}"
    );
}

fn decisions(pack: &PolicyPack, cases: &[Case]) -> Vec<Decision> {
    suite::run_cases(pack, cases)
        .unwrap()
        .into_iter()
        .map(|r| r.actual.expect("case request is valid"))
        .collect()
}

#[test]
fn overlays_change_only_what_spec_section_4_says() {
    let suites = suite::load_suites(&policies().join("tests")).unwrap();
    let mut defaults = suite::effective_cases(&suites, &[]);
    // Refused requests decide nothing to compare.
    defaults.retain(|c| c.expect.invalid.is_none());
    let base = PolicyPack::load(&PackSpec::new(policies(), &[])).unwrap();
    let before = decisions(&base, &defaults);
    for overlay in OVERLAYS {
        let pack = PolicyPack::load(&PackSpec::new(policies(), &[overlay.to_string()])).unwrap();
        let after = decisions(&pack, &defaults);
        let overridden: BTreeSet<String> = suites
            .iter()
            .filter(|s| s.overlay.as_deref() == Some(overlay))
            .flat_map(|s| s.cases.iter().map(Case::key))
            .collect();
        let mut changed = BTreeSet::new();
        for ((case, b), a) in defaults.iter().zip(&before).zip(&after) {
            if a == b {
                continue;
            }
            changed.insert(case.key());
            // Overlays only take rights away.
            assert!(!a.allow, "{overlay} allows {}", case.key());
            let user = case.principal.id().unescaped().to_string();
            let in_scope = match overlay {
                // 4.1: clients (cleo) adding and deleting records.
                "clients-read-only" => {
                    user == "cleo"
                        && ["createRecord", "deleteRecord"].contains(&case.action.as_str())
                }
                // 4.2: comment and view users (cora, vic) inviting.
                _ => ["cora", "vic"].contains(&user.as_str()) && case.action == "inviteMember",
            };
            assert!(
                in_scope,
                "{overlay} changed a case outside SPEC.md section 4: {}",
                case.key()
            );
        }
        // Every change is pinned by the overlay's suite, and the suite pins nothing else.
        let default_keys: BTreeSet<String> = defaults.iter().map(Case::key).collect();
        let overridden_defaults: BTreeSet<String> =
            overridden.intersection(&default_keys).cloned().collect();
        assert_eq!(changed, overridden_defaults, "{overlay}");
        // And the decisions that SPEC.md section 4 says flip really flip.
        let flipped: Vec<String> = defaults
            .iter()
            .zip(&before)
            .zip(&after)
            .filter(|((_, b), a)| b.allow && !a.allow)
            .map(|((c, _), _)| c.name.clone())
            .collect();
        match overlay {
            "clients-read-only" => assert_eq!(
                flipped,
                vec!["createRecord / cleo", "deleteRecord own (cleo) / cleo"]
            ),
            _ => assert_eq!(
                flipped,
                vec![
                    "inviteMember as comment / cora",
                    "inviteMember as view / cora",
                    "inviteMember as view / vic"
                ]
            ),
        }
    }
}

/// A case that names a principal or resource the suite's entities do not hold cannot fail,
/// so it is a failure itself, with the name and the suite's file:line.
#[test]
fn a_misspelled_principal_or_resource_fails_its_suite_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&policies(), &dir);
    let suite = dir.join("tests/project.toml");
    let text = std::fs::read_to_string(&suite).unwrap();
    // The first `max = "deny"` (copyProject) misspelled, and the first case on zeus.
    let line = text
        .lines()
        .position(|l| l.contains("max = \"deny\""))
        .unwrap()
        + 1;
    edit(&suite, "max = \"deny\"", "maxx = \"deny\"");
    edit(
        &suite,
        "resource = \"Project::zeus\"",
        "resource = \"Project::zeuss\"",
    );
    let report = suite::run(&PackSpec::new(&dir, &[])).unwrap();
    let failed: Vec<String> = report.failed().iter().map(|f| f.describe()).collect();
    assert_eq!(failed.len(), 4, "{failed:#?}");
    let maxx = failed.iter().find(|f| f.contains("maxx")).unwrap();
    assert!(
        maxx.contains(&format!("project.toml:{line}:"))
            && maxx.contains("principal `Blue::User::\"maxx\"`")
            && maxx.contains("is not in the suite's entities (fixture.json)"),
        "{maxx}"
    );
    let zeuss: Vec<&String> = failed.iter().filter(|f| f.contains("zeuss")).collect();
    assert_eq!(zeuss.len(), 3, "one per principal of that case: {zeuss:#?}");
    assert!(
        zeuss[0].contains("resource `Blue::Project::\"zeuss\"`"),
        "{}",
        zeuss[0]
    );
    // The CLI fails too.
    let (code, out, _) = run(&["test"], &dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("maxx") && out.contains("4 failed"), "{out}");
}

/// A declared context field the action's context does not have (or not as a String) is refused
/// at load, at names.toml:line:col, so a misspelled declaration cannot let every value through.
#[test]
fn a_context_declaration_of_an_unknown_field_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&policies(), &dir);
    edit(
        &dir.join("names.toml"),
        "[context.inviteMember]\nrole =",
        "[context.inviteMember]\nrol =",
    );
    let err = PolicyPack::load(&PackSpec::new(&dir, &[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("names.toml:") && err.contains("context field `rol` of `inviteMember`"),
        "{err}"
    );
}

/// `[requests]` in names.toml is checked like the rest of the file: a place for action
/// properties that is none of the three, an action id or entity type the schema does not have,
/// each at names.toml:line:col, and a `[keys]` attribute that is not a String of its type;
/// a declaration that is right loads.
#[test]
fn a_requests_declaration_is_checked_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&policies(), &dir);
    let names = std::fs::read_to_string(dir.join("names.toml")).unwrap();
    // `[requests]` and `[keys]` (String attributes of a known type only).
    let cases = [
        (
            "requests",
            "action_properties = \"headers\"",
            "action_properties `headers` is not",
        ),
        (
            "requests",
            "open_context = [\"viewProjects\"]",
            "`viewProjects` is not an action id of the schema",
        ),
        (
            "requests",
            "open_properties = [\"robot\"]",
            "`robot` is not an entity type of the schema",
        ),
        ("requests", "closed = true", "unknown field `closed`"),
        (
            "keys",
            "project = [\"admin\"]",
            "key `admin` of `Blue::Project` is not a String attribute",
        ),
        (
            "keys",
            "robot = [\"serial\"]",
            "`robot` is not an entity type of the schema",
        ),
    ];
    for (table, line, said) in cases {
        std::fs::write(
            dir.join("names.toml"),
            format!("{names}\n[{table}]\n{line}\n"),
        )
        .unwrap();
        let err = PolicyPack::load(&PackSpec::new(&dir, &[]))
            .unwrap_err()
            .to_string();
        let at = names.lines().count() + 3;
        assert!(
            err.contains(&format!("names.toml:{at}:")) && err.contains(said),
            "{line}: {err}"
        );
    }
    std::fs::write(
        dir.join("names.toml"),
        format!("{names}\n[requests]\naction_properties = \"context.action\"\nopen_context = [\"*\"]\nopen_properties = [\"user\", \"Blue::Project\"]\n"),
    )
    .unwrap();
    let pack = PolicyPack::load(&PackSpec::new(&dir, &[])).unwrap();
    assert!(pack.names.open_context.contains("inviteMember"));
    assert!(pack.names.open_properties.contains("Blue::User"));
    assert!(pack.names.open_properties.contains("Blue::Project"));
    assert!(!pack.names.open_properties.contains("Blue::Record"));
}

/// `blue-authz ARGS` run in `dir` as the README shows it (the default `--policies policies`).
fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = bin()
        .current_dir(dir)
        .args(args)
        .env_remove("BLUE_AUTHZ_OVERLAYS")
        .env_remove("BLUE_AUTHZ_POLICIES")
        .output()
        .expect("run blue-authz");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The tests `cargo test` runs on the live pack (all data-driven), as name filters on this
/// very test binary, beside the `shipped_pack_*` checks.
const LIVE_PACK_TESTS: &[&str] = &[
    "grpc::every_suite_case_over_the_wire",
    "grpc::a_batch_of_a_thousand_and_more",
    "grpc::list_allowed_actions_equals_each_roles_matrix_row",
    "authzen::every_suite_case_is_answered_over_http_as_over_grpc",
    "listing::listings_equal_brute_force",
    "listing::listings_with_request_scoped_entities",
    "listing::pages_of_1_7_and_1000",
    "oracle::",
    "analysis::blue_invariants_hold_for_all_data",
];

/// Runs this test binary with name filters on the project copy in `dir`; success, and what
/// libtest printed.
fn run_tests_on(filters: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(filters)
        .arg("--test-threads=2")
        .env("BLUE_AUTHZ_TEST_PACK", dir.join("policies"))
        .env("BLUE_AUTHZ_TEST_MATRIX", dir.join("docs/permissions.md"))
        .env_remove("BLUE_AUTHZ_OVERLAYS")
        .output()
        .expect("run the test binary");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The `shipped_pack_*` tests of this very binary, run on the project copy in `dir`.
fn shipped_checks_on(dir: &Path) -> (bool, String) {
    run_tests_on(&["policy_pack::shipped_pack_"], dir)
}

/// The README's procedure for changing a rule, followed literally on a copy of the project
/// (the frozen pack, so the edit's text is stable): `editWiki` goes from member and above to
/// client and above. Validate, update the suite and the table's row, test, analyze, regenerate
/// the table: the same checks
/// `cargo test` makes of the live pack pass on the copy. Skipping the suite's update instead
/// fails them, naming the suite file and line to update.
#[test]
fn the_readme_procedure_for_changing_a_rule_keeps_the_checks_green() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path();
    copy_dir(&policies(), &project.join("policies"));
    std::fs::create_dir_all(project.join("docs")).unwrap();
    std::fs::copy(
        policies().join("../permissions.md"),
        project.join("docs/permissions.md"),
    )
    .unwrap();
    // Before any change the copy passes the checks.
    let (ok, text) = shipped_checks_on(project);
    assert!(ok && text.contains("5 passed; 0 failed"), "{text}");

    // Edit the policy.
    let rule = "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.member };";
    edit(
        &project.join("policies/project.cedar"),
        rule,
        &rule.replace("resource.member", "resource.client"),
    );
    // Run validate.
    let (code, out, err) = run_in(project, &["validate"]);
    assert_eq!(code, 0, "{out}{err}");
    // Regenerate the table, but forget to update the expectations: the checks fail and say
    // which suite file and line to update.
    let suite_file = project.join("policies/tests/project.toml");
    let suite_text = std::fs::read_to_string(&suite_file).unwrap();
    let expect = "expect = { ada = \"allow project.editWiki\", max = \"allow project.editWiki\", cleo = \"deny\"";
    let line = suite_text
        .lines()
        .position(|l| l.starts_with(expect))
        .unwrap()
        + 1;
    let (code, table, err) = run_in(project, &["matrix"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(project.join("docs/permissions.md"), &table).unwrap();
    let (ok, text) = shipped_checks_on(project);
    assert!(!ok, "{text}");
    let location = format!("{}:{line}:", suite_file.display());
    assert!(
        text.contains(&location) && text.contains("editWiki / cleo"),
        "the failure names {location}: {text}"
    );
    let (code, out, _) = run_in(project, &["test"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL policies/tests/project.toml:"), "{out}");

    // Update the expectations in tests/, run test.
    edit(
        &suite_file,
        expect,
        "expect = { ada = \"allow project.editWiki\", max = \"allow project.editWiki\", cleo = \"allow project.editWiki\"",
    );
    // `test` now fails on the permission table's row, which still says members and above.
    let (code, out, _) = run_in(project, &["test"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("row `editWiki`: on the fixture the policies allow column `client`"),
        "{out}"
    );
    // Update the row's `allowed` in matrix.toml, run test.
    edit(
        &project.join("policies/matrix.toml"),
        "action = \"editWiki\"\nresource = \"Project::apollo\"\nallowed = [\"admin\", \"member\"]",
        "action = \"editWiki\"\nresource = \"Project::apollo\"\nallowed = [\"admin\", \"member\", \"client\"]",
    );
    let (code, out, _) = run_in(project, &["test"]);
    assert_eq!(code, 0, "{out}");
    // Run analyze: the invariants still hold, and the table's rows are proved.
    if common::solver_or_skip("the_readme_procedure_for_changing_a_rule_keeps_the_checks_green") {
        let (code, out, err) = run_in(project, &["analyze"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    // The regenerated table differs from the old one in the editWiki row only.
    let old = std::fs::read_to_string(policies().join("../permissions.md")).unwrap();
    let changed: Vec<&str> = table
        .lines()
        .zip(old.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].starts_with("| `editWiki` |"), "{changed:?}");
    // The same checks as `cargo test`, on the changed project: green. The shipped-pack
    // checks, then every data-driven test of the live pack (the suites over gRPC and HTTP, the
    // matrix rows against ListAllowedActions, listings against brute force, the oracle against
    // plain Cedar, the invariants), each filter matching some test.
    let (ok, text) = shipped_checks_on(project);
    assert!(ok && text.contains("5 passed; 0 failed"), "{text}");
    let (ok, text) = run_tests_on(LIVE_PACK_TESTS, project);
    assert!(ok, "the live pack's tests on the changed project: {text}");
    for filter in LIVE_PACK_TESTS {
        assert!(
            text.contains(&format!("test {filter}")),
            "the filter {filter} matches no test: {text}"
        );
    }
}

/// The line a load error gives for `file` (`<file>:<line>:<col>: ...`).
fn error_line(err: &str, file: &Path) -> usize {
    err.split(&format!("{}:", file.display()))
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no line in {err}"))
}

/// A lifecycle rule naming a type or an attribute the schema lacks (or one that holds no
/// entity) is refused at load, at lifecycle.toml:line:col, so a misspelled rule cannot make a
/// `delete_owned` quietly leave data behind.
#[test]
fn a_lifecycle_rule_the_schema_does_not_back_is_refused_at_load() {
    for (from, to, message) in [
        (
            "type = \"Blue::Company\"",
            "type = \"Blue::Firm\"",
            "`Blue::Firm` is not an entity type of the schema",
        ),
        (
            "attributes = [\"editors\", \"viewers\"]",
            "attributes = [\"editors\", \"watchers\"]",
            "`Blue::Dashboard` has no attribute `watchers` that holds entities",
        ),
        (
            "type = \"Blue::Record\"\nattribute = \"project\"",
            "type = \"Blue::Record\"\nattribute = \"title\"",
            "`Blue::Record` has no attribute `title` that holds entities",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("policies");
        copy_dir(&policies(), &dir);
        let file = dir.join("lifecycle.toml");
        edit(&file, from, to);
        // The rule's line: where its table starts, or the edited key within it.
        let text = std::fs::read_to_string(&file).unwrap();
        let edited = text[..text.find(to).unwrap()].lines().count();
        let err = PolicyPack::load(&PackSpec::new(&dir, &[]))
            .unwrap_err()
            .to_string();
        let line = error_line(&err, &file);
        assert!(
            line + 3 >= edited && line <= edited,
            "line {line}, edited {edited}: {err}"
        );
        assert!(err.contains(message), "{err}");
        let (code, _, err) = run(&["validate"], &dir);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("lifecycle.toml:") && err.contains(message),
            "{err}"
        );
    }
}

/// A data assumption that names a type the schema lacks, does not validate, or reads more than
/// `resource` and its attributes' entities is refused at load, at assumptions.toml:line:col
/// with Cedar's own message, so a misspelled assumption can neither be silently assumed by the
/// proofs nor be unenforceable on writes.
#[test]
fn a_data_assumption_that_cannot_be_enforced_is_refused_at_load() {
    for (from, to, message) in [
        (
            "type = \"Blue::Project\"",
            "type = \"Blue::Projekt\"",
            "`Blue::Projekt` is not an entity type of the schema",
        ),
        (
            "holds = \"resource.editors in resource.viewers\"",
            "holds = \"resource.editors in resource.watchers\"",
            "does not validate against the schema",
        ),
        (
            "holds = \"resource.editors in resource.viewers\"",
            "holds = \"resource.owner in resource.company.view\"",
            "reads an attribute of an entity `resource` names",
        ),
        (
            "holds = \"resource.editors in resource.viewers\"",
            "holds = \"principal in resource.viewers\"",
            "reads `principal`",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("policies");
        copy_dir(&policies(), &dir);
        let file = dir.join("assumptions.toml");
        edit(&file, from, to);
        let text = std::fs::read_to_string(&file).unwrap();
        let edited = text[..text.find(to).unwrap()].lines().count() + 1;
        let err = PolicyPack::load(&PackSpec::new(&dir, &[]))
            .unwrap_err()
            .to_string();
        let line = error_line(&err, &file);
        assert_eq!(line, edited, "{err}");
        assert!(err.contains(message), "{err}");
        let (code, _, err) = run(&["validate"], &dir);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("assumptions.toml:") && err.contains(message),
            "{err}"
        );
    }
}

/// A case may name an entity the fixture does not hold on purpose with `unknown = true`: it is
/// decided as Cedar decides an unknown entity, without demanding evaluation errors (Blue's
/// policies read only the principal's groups, so an unknown user is denied without one). The
/// flag on a case whose entities all exist fails, so it cannot outlive its reason and hide a
/// later misspelling.
#[test]
fn a_case_may_name_an_unknown_entity_on_purpose() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&policies(), &dir);
    let suite = dir.join("tests/unknown.toml");
    let fixture = "entities = \"fixture.json\"\nnamespace = \"Blue\"\nprincipal_type = \"User\"\n";
    std::fs::write(
        &suite,
        format!(
            "{fixture}\n[[test]]\nname = \"a user nobody wrote\"\naction = \"viewProject\"\nresource = \"Project::apollo\"\nunknown = true\nexpect = {{ nobody = \"deny\" }}\n"
        ),
    )
    .unwrap();
    let report = suite::run(&PackSpec::new(&dir, &[])).unwrap();
    assert!(report.failed().is_empty(), "{}", report.summary());

    std::fs::write(
        &suite,
        format!(
            "{fixture}\n[[test]]\nname = \"stale\"\naction = \"viewProject\"\nresource = \"Project::apollo\"\nunknown = true\nexpect = {{ vic = \"allow project.view\" }}\n"
        ),
    )
    .unwrap();
    let report = suite::run(&PackSpec::new(&dir, &[])).unwrap();
    let failed: Vec<String> = report.failed().iter().map(|f| f.describe()).collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(
        failed[0]
            .contains("says `unknown = true`, but the suite's entities (fixture.json) hold both"),
        "{}",
        failed[0]
    );
}
