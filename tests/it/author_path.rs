//! The policy author's and operator's path, where a new user tripped: an export of a database
//! that does not exist, a closed standard output, a data-token warning with no data listener,
//! a start-up with no data that said nothing.

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};

use crate::common::pack;
use crate::common::server::{Binary, Server};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blue-authz"));
    c.arg("--policies").arg(pack());
    c
}

/// `serve` on `db` with decisions on 127.0.0.1:0, no data or HTTP listener, no watching, and
/// `extra`, serving; its log lines so far.
fn serve(db: &std::path::Path, extra: &[&str]) -> (Server, Vec<String>) {
    let mut server = Binary::serve(&pack(), db)
        .args(extra)
        .env_remove("BLUE_AUTHZ_DATA_TOKEN")
        .spawn();
    server.wait_serving();
    let lines = server.log.lines();
    (server, lines)
}

#[test]
fn export_of_a_missing_database_fails_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("missing.redb");
    let out = bin()
        .args(["export", "--db", db.to_str().unwrap()])
        .env_remove("BLUE_AUTHZ_SOURCE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no such database file"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(!db.exists(), "export created {}", db.display());
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let mut child = bin()
        .arg("matrix")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then close the pipe, as `| head -c1` does.
    let mut one = [0u8; 1];
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_exact(&mut one).unwrap();
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    // Ended by SIGPIPE (as any Unix tool in a pipeline) or, had it finished first, success.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.signal() == Some(13) || status.success(),
        "{status:?} {stderr}"
    );
}

#[test]
fn an_empty_store_is_a_warning_and_a_metric_and_no_data_listener_no_token_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, lines) = serve(
        &tmp.path().join("a.redb"),
        &["--metrics-listen", "127.0.0.1:0", "--seed", ""],
    );
    let log = lines.join("\n");
    // Started without data: a warning, and the metric says so.
    let metrics = server.started.metrics.expect("a metrics listener");
    let scraped = common::get_metrics(metrics);
    drop(server);
    assert!(
        scraped.contains("\nblue_authz_store_empty 1\n"),
        "{scraped}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("the entity store is empty")),
        "{log}"
    );
    assert!(log.contains("serving"), "{log}");
    assert!(
        log.contains("the data service is off (no data listener)"),
        "{log}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("data token")),
        "{log}"
    );
}

/// `blue-authz ARGS`: exit code, stdout, stderr.
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = bin()
        .args(args)
        .env_remove("BLUE_AUTHZ_SOURCE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ids in an exported store.
fn exported_ids(db: &std::path::Path) -> std::collections::BTreeSet<String> {
    let (code, out, err) = cli(&["export", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    all.iter()
        .map(|e| format!("{}::{}", e["uid"]["type"], e["uid"]["id"]))
        .collect()
}

/// `import` says that it merges; `--replace` makes the store the file's; a parent that
/// exists nowhere is refused and nothing is written.
#[test]
fn import_merges_or_replaces_and_says_which_and_refuses_dangling_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("a.redb");
    let db_s = db.to_str().unwrap();
    let fixture = pack().join("tests/fixture.json");
    let (code, out, err) = cli(&["import", fixture.to_str().unwrap(), "--db", db_s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("merged: 0 stored entities"), "{out}");
    let before = exported_ids(&db);
    assert!(before.len() > 50);

    // One user, whose parent is a role of the fixture: merged, the rest kept.
    let one = tmp.path().join("one.json");
    std::fs::write(
        &one,
        r#"[{"uid": {"type": "Blue::User", "id": "newbie"}, "attrs": {},
             "parents": [{"type": "Blue::Role", "id": "apollo/view"}]}]"#,
    )
    .unwrap();
    let (code, out, err) = cli(&["import", one.to_str().unwrap(), "--db", db_s]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "merged: {} stored entities the file does not name kept",
            before.len()
        )),
        "{out}"
    );
    assert_eq!(exported_ids(&db).len(), before.len() + 1);

    // A parent that exists nowhere: refused, nothing written.
    let dangling = tmp.path().join("dangling.json");
    std::fs::write(
        &dangling,
        r#"[{"uid": {"type": "Blue::User", "id": "lost"}, "attrs": {},
             "parents": [{"type": "Blue::Role", "id": "nowhere/view"}]}]"#,
    )
    .unwrap();
    let (code, _, err) = cli(&["import", dangling.to_str().unwrap(), "--db", db_s]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            r#"Blue::User::"lost" has parent Blue::Role::"nowhere/view", which does not exist"#
        ),
        "{err}"
    );
    assert_eq!(exported_ids(&db).len(), before.len() + 1);

    // With --replace the dangling parent is refused too: the store would lose the role.
    let (code, _, err) = cli(&["import", one.to_str().unwrap(), "--db", db_s, "--replace"]);
    assert_ne!(code, 0);
    assert!(err.contains("apollo/view"), "{err}");

    // --replace with a self-contained file: the store becomes exactly the file.
    let alone = tmp.path().join("alone.json");
    std::fs::write(
        &alone,
        r#"[{"uid": {"type": "Blue::User", "id": "solo"}, "attrs": {}, "parents": []}]"#,
    )
    .unwrap();
    let (code, out, err) = cli(&["import", alone.to_str().unwrap(), "--db", db_s, "--replace"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "replaced: {} stored entities the file does not name deleted",
            before.len() + 1
        )),
        "{out}"
    );
    assert_eq!(
        exported_ids(&db).into_iter().collect::<Vec<_>>(),
        [r#""Blue::User"::"solo""#]
    );
}

/// `export` and `import` of a database a running server holds say so and name the calls to use.
#[test]
fn offline_commands_on_a_database_a_server_holds_point_at_the_data_service() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("held.redb");
    let (server, lines) = serve(&db, &[]);
    let log = lines.join("\n");
    let export = cli(&["export", "--db", db.to_str().unwrap()]);
    let fixture = pack().join("tests/fixture.json");
    let import = cli(&[
        "import",
        fixture.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    drop(server);
    assert!(log.contains("serving"), "{log}");
    let (code, out, err) = export;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("a running server holds this database") && err.contains("ExportEntities"),
        "{err}"
    );
    let (code, _, err) = import;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("a running server holds this database") && err.contains("WriteEntities"),
        "{err}"
    );
}

/// `check` names its own flags in its errors, not the gRPC request's fields.
#[test]
fn check_errors_name_its_flags() {
    let demo = common::root().join("data/demo.json");
    let demo = demo.to_str().unwrap();
    let base = |action: &str, resource: &str, context: &str| {
        cli(&[
            "check",
            "--entities",
            demo,
            "--principal",
            r#"Blue::User::"erin""#,
            "--action",
            action,
            "--resource",
            resource,
            "--context",
            context,
        ])
    };
    let (code, _, err) = base("nope", r#"Blue::Record::"website-1""#, "{}");
    assert_eq!(code, 2);
    assert!(err.contains("--action: unknown action `nope`"), "{err}");
    let (_, _, err) = base("comment", r#"Blue::Record::"website-1""#, r#"{"x": 1}"#);
    assert!(err.starts_with("error: --context: "), "{err}");
    let (_, _, err) = base(
        "inviteMember",
        r#"Blue::Project::"website""#,
        r#"{"role": "owner"}"#,
    );
    assert!(err.starts_with("error: --context: role: `owner`"), "{err}");
    let (_, _, err) = base("comment", r#"Blue::Project::"website""#, "{}");
    assert!(err.starts_with("error: --resource: "), "{err}");
    for field in ["action.id", "context_json", "resource.type"] {
        assert!(!err.contains(field), "{err}");
    }
}
