//! The policy author's and operator's path, where a new user tripped: an export of a database
//! that does not exist, a closed standard output, a data-token warning with no data listener,
//! a start-up with no data that said nothing.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::pack;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blue-authz"));
    c.arg("--policies").arg(pack());
    c
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
    let mut child = bin()
        .arg("serve")
        .args(["--db", tmp.path().join("a.redb").to_str().unwrap()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-listen",
            "",
            "--http-listen",
            "",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--seed", "", "--watch", "false"])
        .env_remove("BLUE_AUTHZ_DATA_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::log_lines(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
            break;
        };
        let done = line.contains("serving") && !line.contains("not serving");
        lines.push(line);
        if done {
            break;
        }
    }
    let log = lines.join("\n");
    // Started without data: a warning, and the metric says so.
    let metrics: std::net::SocketAddr = log
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address: {log}"))
        .parse()
        .unwrap();
    let scraped = common::get_metrics(metrics);
    child.kill().unwrap();
    let _ = child.wait();
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
