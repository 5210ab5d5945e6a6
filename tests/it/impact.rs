//! Impact of a policy edit on stored data (`authoring::impact`, `blue-authz impact`): the
//! pairs it reports equal brute force over single decisions with the old and the new pack, on
//! the demo data (every pair) and on `gen --scale 0.1` (principals by stride, every resource),
//! for edits that cover every action: a role gains an action, a role loses one, a forbid is
//! added, a permit is added, an overlay is switched on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blue_authz::authoring::impact::{self, Impact, ImpactInput};
use blue_authz::authoring::matrix;
use blue_authz::engine::index::EntityStore;
use blue_authz::engine::pack::{PackSpec, PolicyPack};
use blue_authz::engine::request::{self, ContextMap, DecisionRequest, UidRef};
use blue_authz::engine::View;
use serde_json::Value;

use crate::common;

/// One changed pair: action, context, principal, resource, gained, before, after.
type Row = (
    String,
    String,
    String,
    String,
    bool,
    Vec<String>,
    Vec<String>,
);

/// A copy of the frozen pack with `edit` applied to its files.
fn edited(dir: &Path, name: &str, edit: impl Fn(&Path)) -> PathBuf {
    let to = dir.join(name);
    common::copy_dir(&common::pack(), &to);
    edit(&to);
    to
}

/// Replaces `old` by `new` in one file of a pack, which must contain it once.
fn replace(dir: &Path, file: &str, old: &str, new: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches(old).count(), 1, "{file}: {old}");
    std::fs::write(&path, text.replace(old, new)).unwrap();
}

/// The edits, by name: (candidate directory, the candidate's overlays).
fn edits(dir: &Path, frozen: &str, granted: &str) -> Vec<(&'static str, PathBuf, Vec<String>)> {
    let wiki = "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.member };";
    let documents = "action == Blue::Action::\"editDocuments\",\n  resource is Blue::Project\n)\nwhen { principal in resource.member };";
    let base = common::pack();
    vec![
        (
            "clients may edit the wiki",
            edited(dir, "wiki", |d| {
                replace(d, "project.cedar", wiki, &wiki.replace("member", "client"))
            }),
            vec![],
        ),
        (
            "members lose editing documents",
            edited(dir, "documents", |d| {
                replace(
                    d,
                    "project.cedar",
                    documents,
                    &documents.replace("member", "admin"),
                )
            }),
            vec![],
        ),
        (
            "a forbid and a permit on every action",
            edited(dir, "every", |d| {
                std::fs::write(
                    d.join("zz-test.cedar"),
                    format!(
                        "@id(\"test.freeze\")\nforbid (principal == Blue::User::\"{frozen}\", action, resource);\n\
                         @id(\"test.grant\")\npermit (principal == Blue::User::\"{granted}\", action, resource);\n"
                    ),
                )
                .unwrap()
            }),
            vec![],
        ),
        (
            "both overlays switched on",
            base.clone(),
            vec![
                "clients-read-only".to_string(),
                "invite-client-and-above".to_string(),
            ],
        ),
    ]
}

fn load(dir: &Path, overlays: &[String]) -> Arc<PolicyPack> {
    PolicyPack::load(&PackSpec::new(dir, overlays)).unwrap_or_else(|e| panic!("{e}"))
}

fn contexts(old: &PolicyPack, new: &PolicyPack) -> BTreeMap<String, Vec<ContextMap>> {
    matrix::merged_row_contexts(&[old, new]).unwrap()
}

fn run_impact(old: &PolicyPack, new: &PolicyPack, store: &EntityStore) -> Impact {
    let none = BTreeMap::new();
    impact::impact(
        &ImpactInput {
            old: (old, store),
            new: (new, store),
            contexts: &none,
            threads: 2,
            limit: None,
        },
        &contexts(old, new),
    )
    .unwrap()
}

fn rows(impact: &Impact) -> BTreeSet<Row> {
    let mut out = BTreeSet::new();
    for a in &impact.actions {
        let context = a
            .context
            .as_ref()
            .map(|c| Value::Object(c.clone()).to_string())
            .unwrap_or_default();
        for (gained, pairs) in [(true, &a.gained), (false, &a.lost)] {
            for p in pairs {
                out.insert((
                    a.action.clone(),
                    context.clone(),
                    p.principal.clone(),
                    p.resource.clone(),
                    gained,
                    p.before.clone(),
                    p.after.clone(),
                ));
            }
        }
    }
    out
}

fn quoted(ty: &str, id: &str) -> String {
    format!("{ty}::{}", serde_json::json!(id))
}

/// Brute force: every action of `actions`, every principal and resource `keep` keeps,
/// each context of the matrix rows (none for an action without context), decided with both
/// packs.
fn brute(
    old: &PolicyPack,
    new: &PolicyPack,
    store: &EntityStore,
    actions: &[String],
    keep: &dyn Fn(&str, &str) -> bool,
) -> BTreeSet<Row> {
    let contexts = contexts(old, new);
    let mut out = BTreeSet::new();
    for action in actions {
        let entries: Vec<_> = [old.action_by_id(action), new.action_by_id(action)]
            .into_iter()
            .flatten()
            .collect();
        let asked: Vec<Option<&ContextMap>> = if entries.iter().all(|e| e.empty_context) {
            vec![None]
        } else {
            contexts.get(action).unwrap().iter().map(Some).collect()
        };
        let types = |f: &dyn Fn(&blue_authz::engine::pack::ActionEntry) -> Vec<String>| {
            entries.iter().flat_map(|e| f(e)).collect::<BTreeSet<_>>()
        };
        let pts = types(&|e| e.principal_types.iter().map(|t| t.to_string()).collect());
        let rts = types(&|e| e.resource_types.iter().map(|t| t.to_string()).collect());
        for pt in &pts {
            let principals = store.ids_of_type(new.entity_type(pt).unwrap());
            for rt in &rts {
                let resources = store.ids_of_type(new.entity_type(rt).unwrap());
                for context in &asked {
                    for p in principals.iter().filter(|p| keep(pt, p)) {
                        for r in resources.iter().filter(|r| keep(rt, r)) {
                            let decide = |pack: &PolicyPack| {
                                View::new(pack, store)
                                    .is_authorized(&DecisionRequest {
                                        principal: UidRef { ty: pt, id: p },
                                        action: request::action_id(action),
                                        resource: UidRef { ty: rt, id: r },
                                        context: *context,
                                        entities: &[],
                                    })
                                    .unwrap()
                            };
                            let (before, after) = (decide(old), decide(new));
                            if before.allow != after.allow {
                                out.insert((
                                    action.clone(),
                                    context
                                        .map(|c| Value::Object(c.clone()).to_string())
                                        .unwrap_or_default(),
                                    quoted(pt, p),
                                    quoted(rt, r),
                                    after.allow,
                                    before.determining,
                                    after.determining,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn impact_equals_brute_force_on_the_demo_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::pack();
    let store =
        EntityStore::load_file(&base.join("tests/fixture.json"), &load(&base, &[]).entities)
            .unwrap();
    let old = load(&base, &[]);
    let mut covered = BTreeSet::new();
    for (name, to, overlays) in edits(dir.path(), "max", "gus") {
        let new = load(&to, &overlays);
        let report = run_impact(&old, &new, &store);
        let all: Vec<String> = old.action_ids();
        let want = brute(&old, &new, &store, &all, &|_, _| true);
        let got = rows(&report);
        assert!(!want.is_empty(), "{name}: the edit changes nothing");
        assert_eq!(got, want, "{name}");
        // Gained and lost as the edit says.
        assert_eq!(report.gained() + report.lost(), want.len(), "{name}");
        covered.extend(report.changed.iter().cloned());
        assert!(report.skipped.is_empty(), "{name}: {:?}", report.skipped);
    }
    let mut all = old.action_ids();
    all.sort();
    assert_eq!(covered.into_iter().collect::<Vec<_>>(), all);
}

#[test]
fn impact_equals_brute_force_on_generated_data_by_stride() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gen.json");
    let mut all = Vec::new();
    blue_authz::bench::gen::generate(0.1, 7, &mut |v| all.push(v));
    std::fs::write(&file, serde_json::to_string(&all).unwrap()).unwrap();
    drop(all);
    let base = common::pack();
    let old = load(&base, &[]);
    let store = EntityStore::load_file(&file, &old.entities).unwrap();
    // Every 700th user (from u3) and the one the forbid names; every tenth record; every
    // entity of the other types.
    let number = |id: &str| id[1..].parse::<usize>().unwrap();
    let keep = |ty: &str, id: &str| match ty {
        "Blue::User" => id == "u700" || number(id) % 700 == 3,
        "Blue::Record" => number(id) % 10 == 1,
        _ => true,
    };
    let id_of = |uid: &str| -> (String, String) {
        let (ty, id) = uid.rsplit_once("::").unwrap();
        (ty.to_string(), serde_json::from_str(id).unwrap())
    };
    for (name, to, overlays) in edits(dir.path(), "u700", "u1403") {
        let new = load(&to, &overlays);
        let report = run_impact(&old, &new, &store);
        let want = brute(&old, &new, &store, &report.changed, &keep);
        let got: BTreeSet<Row> = rows(&report)
            .into_iter()
            .filter(|r| {
                let ((pt, p), (rt, res)) = (id_of(&r.2), id_of(&r.3));
                keep(&pt, &p) && keep(&rt, &res)
            })
            .collect();
        assert!(!want.is_empty(), "{name}: the sample sees no change");
        assert_eq!(got, want, "{name}");
        eprintln!(
            "{name}: +{} -{} in {:?} over {} entities",
            report.gained(),
            report.lost(),
            report.elapsed,
            store.len()
        );
    }
}

fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_blue-authz"))
}

/// The command on an embedded database: counts, a sample, and every pair as JSON lines, equal
/// to the library's answer; bad input named.
#[test]
fn the_impact_command_reads_a_database_and_writes_every_pair() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::pack();
    let db = dir.path().join("authz.redb");
    let out = bin()
        .args(["--policies", base.to_str().unwrap(), "import"])
        .arg(base.join("tests/fixture.json"))
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old = load(&base, &[]);
    let store = EntityStore::load_file(&base.join("tests/fixture.json"), &old.entities).unwrap();
    for (name, to, overlays) in edits(dir.path(), "max", "gus") {
        let pairs = dir.path().join("pairs.jsonl");
        let out = bin()
            .args(["--policies", base.to_str().unwrap(), "impact", "--to"])
            .arg(&to)
            .arg("--to-overlay")
            .arg(overlays.join(","))
            .arg("--db")
            .arg(&db)
            .arg("--pairs")
            .arg(&pairs)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = run_impact(&old, &load(&to, &overlays), &store);
        assert_eq!(summary["gained"], want.gained(), "{name}");
        assert_eq!(summary["lost"], want.lost(), "{name}");
        assert_eq!(summary["changed_actions"], serde_json::json!(want.changed));
        let lines: Vec<Value> = std::fs::read_to_string(&pairs)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let wanted: Vec<Value> = want.lines().collect();
        assert_eq!(lines, wanted, "{name}");
        // Each line names the action, the change, both entities and the policies.
        for l in &lines {
            for key in [
                "action",
                "change",
                "principal",
                "resource",
                "before",
                "after",
            ] {
                assert!(l.get(key).is_some(), "{l}");
            }
        }
    }
    // In words: the wiki edit's one pair, with the permit responsible.
    let out = bin()
        .args(["--policies", base.to_str().unwrap(), "impact", "--to"])
        .arg(dir.path().join("wiki"))
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 pair(s) gain an action, 0 lose one")
            && text.contains(
                "+ Blue::User::\"cleo\" on Blue::Project::\"apollo\" (before: none; after: project.editWiki)"
            ),
        "{text}"
    );
    // Bad input: no database, a candidate that does not parse.
    let out = bin()
        .args(["--policies", base.to_str().unwrap(), "impact", "--to"])
        .arg(dir.path().join("wiki"))
        .arg("--db")
        .arg(dir.path().join("missing.redb"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.redb: no such database file"), "{err}");
    let broken = edited(dir.path(), "broken", |d| {
        replace(
            d,
            "project.cedar",
            "when { principal in resource.admin };\n\n// Projektschablone",
            "when { principal in resource.admin }\n\n// Projektschablone",
        )
    });
    let out = bin()
        .args(["--policies", base.to_str().unwrap(), "impact", "--to"])
        .arg(&broken)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("project.cedar:14:1: error: unexpected token"),
        "{err}"
    );
}

/// `PreviewPolicies` on a running server: behind the data token, the candidate's problems or
/// its gate verdict, diff and impact on the live index, with a sample of the pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_policies_over_grpc_shows_the_impact_on_the_live_index() {
    use blue_authz::service::grpc::pb::{self, policies_client::PoliciesClient};
    use blue_authz::service::server::{self, Limits};
    let dir = tempfile::tempdir().unwrap();
    let running = {
        let mut r = server::start(common::config(dir.path(), Limits::default()))
            .await
            .unwrap();
        r.load().await.unwrap();
        r
    };
    let mut c = PoliciesClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap();
    let edits = edits(dir.path(), "max", "gus");
    let wiki = std::fs::read_to_string(edits[0].1.join("project.cedar")).unwrap();
    let ask = |files: Vec<(&str, String)>, dir: &str, sample: u32, token: Option<&str>| {
        let mut r = tonic::Request::new(pb::PreviewPoliciesRequest {
            dir: dir.to_string(),
            files: files.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            sample,
        });
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    // Without the token, or with a wrong one: refused.
    for token in [None, Some("wrong")] {
        let e = c
            .preview_policies(ask(vec![("project.cedar", wiki.clone())], "", 0, token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }
    // The wiki edit: the suites refuse it; one stored pair gains editWiki.
    let r = c
        .preview_policies(ask(
            vec![("project.cedar", wiki.clone())],
            "",
            0,
            Some(common::TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.problems.is_empty(), "{r:?}");
    assert!(!r.accepted);
    assert!(
        r.reasons.iter().any(|x| x.contains("tests/project.toml")),
        "{:?}",
        r.reasons
    );
    let impact = r.impact.as_ref().expect("an impact");
    assert_eq!((impact.gained, impact.lost), (1, 0));
    assert_eq!(
        r.pairs,
        vec![pb::ImpactPair {
            action: "editWiki".into(),
            gained: true,
            principal: "Blue::User::\"cleo\"".into(),
            resource: "Blue::Project::\"apollo\"".into(),
            before: vec![],
            after: vec!["project.editWiki".into()],
            context_json: String::new(),
        }]
    );
    if common::solver_or_skip("preview diff") {
        assert!(
            r.diff.iter().any(|l| l.contains("editWiki")),
            "{:?}",
            r.diff
        );
    }
    // The same as a whole directory, with the other edits too.
    let r = c
        .preview_policies(ask(
            vec![],
            edits[2].1.to_str().unwrap(),
            1,
            Some(common::TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    let impact = r.impact.unwrap();
    assert!(impact.gained > 0 && impact.lost > 0, "{impact:?}");
    // Bad input, named.
    let broken = wiki.replacen(
        "when { principal in resource.admin };",
        "when { principal in resource.admin }",
        1,
    );
    let r = c
        .preview_policies(ask(
            vec![("project.cedar", broken)],
            "",
            0,
            Some(common::TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.problems
            .iter()
            .any(|p| p.starts_with("project.cedar:14:1: unexpected token")),
        "{:?}",
        r.problems
    );
    for (files, dir, sample, field) in [
        (vec![], "policies", 0, "dir: must be the absolute path"),
        (
            vec![("../x.cedar", String::new())],
            "",
            0,
            "file: `../x.cedar`",
        ),
        (
            vec![("project.cedar", wiki.clone())],
            "",
            5000,
            "sample: 5000",
        ),
    ] {
        let e = c
            .preview_policies(ask(files, dir, sample, Some(common::TOKEN)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{e:?}");
    }
}
