//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod fleet;
pub mod http;
pub mod private_pg;
pub mod server;

use std::path::{Path, PathBuf};

use blue_authz::engine::pack::PackSpec;
use blue_authz::service::grpc::pb;
use blue_authz::service::server::{Limits, ServeConfig};

pub const TOKEN: &str = "test-token-7f3a";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The frozen copy of Blue's pack (`tests/fixtures/blue/policies`) that every test with
/// hand-written expectations or a patched policy text runs on, so that a rule changed in
/// `policies/` by the README's procedure breaks none of them.
pub fn pack() -> PathBuf {
    root().join("tests/fixtures/blue/policies")
}

/// The shipped pack, checked only by data-driven tests (its suites, its committed matrix, its
/// invariants, brute-force oracles). `BLUE_AUTHZ_TEST_PACK` points them at another copy: the
/// README-procedure test runs them on an edited copy of the project that way.
pub fn live_pack() -> PathBuf {
    match std::env::var_os("BLUE_AUTHZ_TEST_PACK") {
        Some(dir) => PathBuf::from(dir),
        None => root().join("policies"),
    }
}

/// The shipped pack's committed matrix (or `BLUE_AUTHZ_TEST_MATRIX`, beside
/// `BLUE_AUTHZ_TEST_PACK`).
pub fn live_matrix() -> PathBuf {
    match std::env::var_os("BLUE_AUTHZ_TEST_MATRIX") {
        Some(file) => PathBuf::from(file),
        None => root().join("docs/permissions.md"),
    }
}

/// A server config on 127.0.0.1:0 (both services), with a fresh database in `dir` seeded
/// from the policy tests' fixture, on the frozen pack.
pub fn config(dir: &Path, limits: Limits) -> ServeConfig {
    config_on(&pack(), dir, limits)
}

/// The same on the pack in `policies` (with its own suites' fixture as the seed).
pub fn config_on(policies: &Path, dir: &Path, limits: Limits) -> ServeConfig {
    let mut c = ServeConfig::new(PackSpec::new(policies, &[]), dir.join("authz.redb"));
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.data_listen = Some("127.0.0.1:0".parse().unwrap());
    c.seed = Some(policies.join("tests/fixture.json"));
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

/// A write operation: upsert one entity (Cedar JSON).
pub fn upsert(json: serde_json::Value) -> pb::WriteOp {
    pb::WriteOp {
        op: Some(pb::write_op::Op::UpsertJson(json.to_string())),
    }
}

/// A write operation: add (or remove) a parent edge.
pub fn edge(add: bool, child: (&str, &str), parent: (&str, &str)) -> pb::WriteOp {
    let e = pb::Edge {
        child: uid(child.0, child.1),
        parent: uid(parent.0, parent.1),
    };
    pb::WriteOp {
        op: Some(if add {
            pb::write_op::Op::AddParent(e)
        } else {
            pb::write_op::Op::RemoveParent(e)
        }),
    }
}

/// A write operation: delete an entity.
pub fn delete(ty: &str, id: &str) -> pb::WriteOp {
    pb::WriteOp {
        op: Some(pb::write_op::Op::Delete(uid(ty, id).unwrap())),
    }
}

/// A decision request without context.
pub fn ask(user: &str, action: &str, rtype: &str, rid: &str) -> pb::IsAuthorizedRequest {
    pb::IsAuthorizedRequest {
        principal: uid("Blue::User", user),
        action: uid("Blue::Action", action),
        resource: uid(rtype, rid),
        ..Default::default()
    }
}

/// `GET /metrics` over a plain socket: the whole HTTP response.
pub fn get_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// [`get_metrics`] off the async runtime's threads.
pub async fn get_metrics_async(addr: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || get_metrics(addr))
        .await
        .unwrap()
}

/// How often the waits below look at their condition.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits until `cond` holds, looking every few milliseconds; after `timeout`, a panic naming
/// `what`. Tests wait on conditions like this, never for a fixed time.
pub async fn until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting after {timeout:?} for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] with an asynchronous condition.
pub async fn until_async(
    what: &str,
    timeout: std::time::Duration,
    mut cond: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting after {timeout:?} for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for a test without an async runtime.
pub fn until_blocking(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting after {timeout:?} for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// A policy-suite case as a decision request.
pub fn case_request(case: &blue_authz::authoring::suite::Case) -> pb::IsAuthorizedRequest {
    let euid = |u: &cedar_policy::EntityUid| uid(&u.type_name().to_string(), u.id().unescaped());
    pb::IsAuthorizedRequest {
        principal: euid(&case.principal),
        action: uid("Blue::Action", &case.action),
        resource: euid(&case.resource),
        context_json: case.context.to_string(),
        ..Default::default()
    }
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

/// Replaces the first `from` in a file, which must contain it.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} lacks {from}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// One row of the README's settings table: the file key (None for the config file itself),
/// flag, environment variable and default, each the cell's code span.
pub struct Row {
    pub key: Option<String>,
    pub flag: String,
    pub env: String,
    pub default: String,
}

fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

pub fn settings_table() -> Vec<Row> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = readme
        .split("| setting (file key) | flag | environment | default |")
        .nth(1)
        .expect("the README has the settings table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 4, "settings row: {line}");
            let key = cells[0]
                .starts_with('`')
                .then(|| code_spans(cells[0])[0].clone());
            let one = |cell: &str| {
                let spans = code_spans(cell);
                assert_eq!(
                    spans.len(),
                    1,
                    "settings row needs one value in `{cell}`: {line}"
                );
                spans[0].clone()
            };
            Row {
                key,
                flag: one(cells[1]),
                env: one(cells[2]),
                default: code_spans(cells[3]).first().cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// Runs `serve --print-config` as `c` is set up, and parses the settings it prints.
pub fn print_config(c: &mut std::process::Command) -> toml::Table {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "print-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

/// A tonic channel over the Unix domain socket at `path`.
pub async fn unix_channel(path: &Path) -> tonic::transport::Channel {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect over the Unix socket")
}

/// Whether the solver is here; in CI its absence is a failure.
pub fn solver_or_skip(test: &str) -> bool {
    if blue_authz::analysis::solver_path().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cvc5 is missing in CI (apt-get install cvc5)");
    }
    eprintln!("SKIPPED {test}: cvc5 is not installed (apt-get install cvc5)");
    false
}
