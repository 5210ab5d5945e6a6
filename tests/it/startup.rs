//! The start-up gate, on the real binary: a policy set whose own tests fail never serves, at
//! start-up as at reload (a pod restart after a rejected edit must not bring the edit live).

use std::path::Path;

use crate::common::server::Binary;
use crate::common::{copy_dir, pack};

/// `serve` on `policies` with a fresh database; its exit code (None: it served) and its
/// standard error.
fn start(policies: &Path, db: &Path) -> (Option<i32>, String) {
    let mut server = Binary::serve(policies, db)
        .arg("--seed")
        .arg(pack().join("tests/fixture.json"))
        .spawn();
    match server.serves() {
        Ok(_) => (None, server.log.text()),
        Err(status) => (status.code(), server.log.text()),
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
