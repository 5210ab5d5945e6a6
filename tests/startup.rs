//! The start-up gate, on the real binary: a policy set whose own tests fail never serves, at
//! start-up as at reload (a pod restart after a rejected edit must not bring the edit live).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{copy_dir, pack};

/// `serve` on `policies` with a fresh database; its exit code (None: still running, and so
/// serving, when `serving` was logged) and its standard error.
fn start(policies: &Path, db: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blue-authz"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-listen", ""])
        .args(["--http-listen", ""])
        .args(["--watch", "false", "--seed"])
        .arg(pack().join("tests/fixture.json"))
        .arg("--policies")
        .arg(policies)
        .arg("--db")
        .arg(db)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let serving = line.contains(" serving") && !line.contains("not serving");
                text.push_str(&line);
                text.push('\n');
                if serving {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return (None, text);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                return (status.code(), text);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        assert!(
            Instant::now() < deadline,
            "serve neither served nor exited: {text}"
        );
    }
}

#[test]
fn a_policy_set_whose_tests_fail_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_dir(&pack(), &policies);

    // As shipped, the copy serves.
    let (code, log) = start(&policies, &dir.path().join("a.redb"));
    assert_eq!(code, None, "the shipped pack must serve: {log}");

    // A suite case that the policies do not satisfy: view-only vic may not delete a project.
    std::fs::write(
        policies.join("tests/zz-wrong.toml"),
        r#"namespace = "Blue"
entities = "fixture.json"
principal_type = "User"

[[test]]
action = "deleteProject"
resource = "Project::apollo"
expect = { vic = "allow project.delete" }
"#,
    )
    .unwrap();
    let (code, log) = start(&policies, &dir.path().join("b.redb"));
    assert_eq!(
        code,
        Some(1),
        "a pack whose tests fail must not serve: {log}"
    );
    assert!(log.contains("refusing to serve"), "{log}");
    assert!(
        log.contains("vic") && log.contains("deleteProject"),
        "the failed case: {log}"
    );
    assert!(log.contains("1 failed"), "{log}");
}
