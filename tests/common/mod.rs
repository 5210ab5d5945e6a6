//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use blue_authz::grpc::pb;
use blue_authz::policy::PackSpec;
use blue_authz::server::{Limits, ServeConfig};

pub const TOKEN: &str = "test-token-7f3a";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A server config on 127.0.0.1:0 (both services), with a fresh database in `dir` seeded
/// from the policy tests' fixture.
pub fn config(dir: &Path, limits: Limits) -> ServeConfig {
    let mut c = ServeConfig::new(
        PackSpec::new(root().join("policies"), &[]),
        dir.join("authz.redb"),
    );
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_listen = "127.0.0.1:0".parse().unwrap();
    c.seed = Some(root().join("policies/tests/fixture.json"));
    c.data_token = Some(TOKEN.to_string());
    c.limits = limits;
    c
}

pub fn uid(ty: &str, id: &str) -> Option<pb::EntityUid> {
    Some(pb::EntityUid {
        r#type: ty.to_string(),
        id: id.to_string(),
    })
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
