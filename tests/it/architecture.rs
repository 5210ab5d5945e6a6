//! The house rules of `src/`, read from the code's own text: the engine imports no transport,
//! runtime or storage crate and no other room; each room only reaches the rooms below it, so
//! there is no cycle between rooms; every file opens with a comment that says what it is for;
//! `unsafe` is forbidden. (`.ci/run` also runs `../shared/tools/modgraph.py src`, which checks
//! for cycles between every pair of modules.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its text less line comments.
fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    out.sort();
    out
}

fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The room of a file: the first directory (or file stem) under `src/`.
fn room(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The rooms a file names through `crate::<room>` paths.
fn rooms_named(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    out
}

/// Whether `code` names the crate `name` in a path (`name::` at a word boundary).
fn names_crate(code: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    code.match_indices(&needle).any(|(i, _)| {
        i == 0 || {
            let before = code[..i].chars().next_back().unwrap();
            !(before.is_alphanumeric() || before == '_' || before == ':')
        }
    })
}

#[test]
fn the_engine_imports_no_transport_runtime_or_storage_crate_and_no_other_room() {
    let forbidden = [
        "tonic",
        "tonic_health",
        "tonic_reflection",
        "prost",
        "tokio",
        "tokio_stream",
        "redb",
        "axum",
        "hyper",
        "notify",
        "prometheus_client",
        "clap",
    ];
    let engine = files(&src().join("engine"));
    assert!(engine.len() > 10, "the engine's files: {}", engine.len());
    let mut problems = Vec::new();
    for (path, text) in &engine {
        let code = code(text);
        for c in forbidden {
            if names_crate(&code, c) {
                problems.push(format!("{} names `{c}`", path.display()));
            }
        }
        for r in rooms_named(&code) {
            if r != "engine" {
                problems.push(format!("{} reaches `crate::{r}`", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The check itself sees a forbidden path.
    assert!(names_crate("use tokio::sync::watch;", "tokio"));
    assert!(!names_crate("use tokio_stream::Stream;", "tokio"));
}

#[test]
fn rooms_reach_only_the_rooms_below_them() {
    // Each room, with the rooms it may name. The order is the layering, bottom first.
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("engine", &[][..]),
        ("files", &[][..]),
        ("storage", &["engine"][..]),
        ("authoring", &["engine", "files"][..]),
        ("analysis", &["engine"][..]),
        (
            "service",
            &["engine", "files", "storage", "authoring", "analysis"][..],
        ),
        ("bench", &["engine", "service"][..]),
        // Storage is the service's alone: the CLI's offline data commands go through
        // `service::offline`.
        (
            "cli",
            &[
                "engine",
                "files",
                "authoring",
                "analysis",
                "service",
                "bench",
            ][..],
        ),
        ("lib", &[][..]),
        ("main", &[][..]),
    ]);
    let mut problems = Vec::new();
    for (path, text) in files(&src()) {
        let here = room(&path);
        let Some(ok) = allowed.get(here.as_str()) else {
            problems.push(format!(
                "{}: a room this test does not know",
                path.display()
            ));
            continue;
        };
        for r in rooms_named(&code(&text)) {
            if r != here && !ok.contains(&r.as_str()) {
                problems.push(format!("{} ({here}) reaches `crate::{r}`", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_file_says_what_it_is_for_and_unsafe_is_forbidden() {
    for (path, text) in files(&src()) {
        assert!(
            text.starts_with("//!"),
            "{} does not open with a `//!` comment saying what it is for",
            path.display()
        );
    }
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    assert!(lib.contains("#![forbid(unsafe_code)]"));
}

#[test]
fn proto_types_stop_at_the_grpc_edge() {
    // The generated types live in `service::grpc::pb`; past the edge only the load tool, a
    // gRPC client (the load tool, the fleet and plan benchmarks), and the server that registers
    // the services name them.
    let may = |p: &Path| {
        let rel = p.strip_prefix(src()).unwrap().to_string_lossy().to_string();
        rel.starts_with("service/grpc/")
            || rel == "service/server.rs"
            || rel == "bench/loadgen.rs"
            || rel == "bench/fleet.rs"
            || rel == "bench/plans.rs"
    };
    let mut problems = Vec::new();
    for (path, text) in files(&src()) {
        let code = code(&text);
        if !may(&path) && (code.contains("pb::") || code.contains("prost::")) {
            problems.push(path.display().to_string());
        }
    }
    assert!(
        problems.is_empty(),
        "proto types past the edge: {problems:#?}"
    );
}

#[test]
fn only_the_service_reaches_storage() {
    let mut problems = Vec::new();
    for (path, text) in files(&src()) {
        let here = room(&path);
        if here != "service"
            && here != "storage"
            && rooms_named(&code(&text)).contains(&"storage".to_string())
        {
            problems.push(path.display().to_string());
        }
    }
    assert!(
        problems.is_empty(),
        "storage reached outside the service: {problems:#?}"
    );
}

#[test]
fn http_types_stop_at_the_edges() {
    // The HTTP stack (axum, hyper, http) belongs to the AuthZEN edge, the console's edge, the listeners that carry
    // both protocols and their budget of bytes in flight, the metrics endpoint, the two layers over the gRPC routes (the one that
    // rewrites the gRPC stack's own errors, and the one that answers a call meant for another
    // listener), the HTTP load generator, and the plan benchmark's Unix-socket connector.
    let may = |p: &Path| {
        let rel = p.strip_prefix(src()).unwrap().to_string_lossy().to_string();
        rel.starts_with("service/authzen/")
            || rel.starts_with("service/console/")
            || rel == "service/listeners.rs"
            || rel == "service/inflight.rs"
            || rel == "service/telemetry.rs"
            || rel == "service/grpc/transport_errors.rs"
            || rel == "service/grpc/elsewhere.rs"
            || rel == "bench/loadgen.rs"
            || rel == "bench/plans.rs"
    };
    let mut problems = Vec::new();
    for (path, text) in files(&src()) {
        let code = code(&text);
        let named = ["axum", "hyper", "hyper_util", "http", "http_body_util"]
            .iter()
            .any(|c| names_crate(&code, c));
        if !may(&path) && named {
            problems.push(path.display().to_string());
        }
    }
    assert!(
        problems.is_empty(),
        "HTTP types past the edges: {problems:#?}"
    );
    // The check sees an HTTP path, and not a word that merely ends in one.
    assert!(names_crate("use axum::Router;", "axum"));
    assert!(!names_crate("tower_http::x", "http"));
}
