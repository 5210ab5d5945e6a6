//! A request's memory is bounded by its size, not by how many items it declares (issue 35,
//! item 3): the real binary on the demo data receives, four at once, each over-limit batch
//! shape just under the 4 MiB message limit (AuthZEN `evaluations` of `{}` items, gRPC
//! `BatchIsAuthorized` of empty requests). Each is refused (400 / INVALID_ARGUMENT naming the
//! limit) while it is decoded, the process's peak resident memory stays within a bound, and
//! decisions go on. All requests in flight share one budget of bytes (`--max-inflight-bytes`).

use std::time::Duration;

use crate::common::http::{Answer, Http};
use crate::common::server::{Binary, Server};
use crate::common::{self, fleet::channel};
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};

/// The budget of request bytes in flight the server is given (`--max-inflight-bytes`):
/// room for the eight bodies at once.
const BUDGET: u64 = 40 << 20;

/// The bound on the peak: a small multiple of the budget (each body held while its items are
/// decoded up to the limit, with room for the allocator's slack). Before the items were
/// counted while decoding, one AuthZEN body alone took ~1.1 GB and one gRPC batch 0.8 GB.
const PEAK_BOUND: u64 = 4 * BUDGET;

/// The real binary started on the demo data, with the AuthZEN listener and `args`.
fn demo_server(dir: &std::path::Path, args: &[&str]) -> Server {
    Binary::serve(&common::live_pack(), &dir.join("authz.redb"))
        .args(["--http-listen", "127.0.0.1:0"])
        .args(args)
        .arg("--seed")
        .arg(common::root().join("data/demo.json"))
        .spawn()
}

/// An AuthZEN `evaluations` call with this body.
async fn post_evaluations(h: &mut Http, body: &str) -> Answer {
    h.send(
        "POST",
        "/access/v1/evaluations",
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// A decision every demo server allows.
fn alice_views_website() -> pb::IsAuthorizedRequest {
    common::ask("alice", "viewProject", "Blue::Project", "website")
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

#[test]
fn over_limit_batches_are_refused_while_decoding_within_a_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = demo_server(dir.path(), &["--max-inflight-bytes", &BUDGET.to_string()]);
    let started = server.wait_serving();
    let (pid, http, grpc) = (
        started.pid,
        started.http.unwrap(),
        started.decisions.unwrap(),
    );
    let limit: usize = 4 * 1024 * 1024;
    // `{"evaluations":[{},{},...]}`: 3 bytes an item, just under the limit (~1.4 million).
    let n_http = (limit - 64) / 3;
    let mut body = String::with_capacity(limit);
    body.push_str("{\"evaluations\":[");
    for i in 0..n_http {
        body.push_str(if i == 0 { "{}" } else { ",{}" });
    }
    body.push_str("]}");
    assert!(body.len() < limit);
    // An empty IsAuthorizedRequest is 2 bytes on the wire (~2 million of them).
    let n_grpc = (limit - 64) / 2;
    let batch = pb::BatchIsAuthorizedRequest {
        requests: vec![pb::IsAuthorizedRequest::default(); n_grpc],
        min_revision: 0,
    };
    assert!(prost::Message::encoded_len(&batch) < limit);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Resident memory before, and the peak counted from here (`clear_refs` 5 resets VmHWM).
    let before = status_kb(pid, "VmRSS:") * 1024;
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    rt.block_on(async {
        let mut calls = Vec::new();
        for _ in 0..4 {
            let body = body.clone();
            calls.push(tokio::spawn(async move {
                let mut c = Http::connect(http, false).await;
                let a = post_evaluations(&mut c, &body).await;
                assert_eq!(a.status, 400, "{}", a.body);
                let text = a.body.to_string();
                assert!(
                    text.contains("evaluations") && text.contains("exceed the limit of 10000"),
                    "{text}"
                );
            }));
            let batch = batch.clone();
            calls.push(tokio::spawn(async move {
                let mut c = AuthorizerClient::new(channel(grpc).await)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                let err = c.batch_is_authorized(batch).await.unwrap_err();
                assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
                assert!(
                    err.message().contains("requests")
                        && err.message().contains("exceed the limit of 10000"),
                    "{err:?}"
                );
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        // Decisions go on.
        let mut c = AuthorizerClient::new(channel(grpc).await);
        let d = tokio::time::timeout(
            Duration::from_secs(30),
            c.is_authorized(alice_views_website()),
        )
        .await
        .expect("a decision after the refusals")
        .unwrap()
        .into_inner();
        assert_eq!(d.decision, pb::Decision::Allow as i32);
    });
    let peak = status_kb(pid, "VmHWM:") * 1024;
    println!(
        "resident before {} MB, peak {} MB while refusing 4 AuthZEN bodies of {n_http} items and 4 gRPC batches of {n_grpc} requests (bound: 4 x the {} MB budget, {} MB above before)",
        before >> 20,
        peak >> 20,
        BUDGET >> 20,
        PEAK_BOUND >> 20
    );
    assert!(
        peak <= before + PEAK_BOUND,
        "peak {peak} bytes, more than {PEAK_BOUND} above {before}"
    );
}

/// All requests in flight share one budget (`--max-inflight-bytes`): while one large call
/// holds most of it (waiting for a revision), another large call is refused before it is
/// decoded (gRPC RESOURCE_EXHAUSTED, HTTP 503 with Retry-After, both naming the setting), a
/// small decision still fits, and once the holder is gone the large call passes.
#[test]
fn the_requests_in_flight_share_one_budget_of_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = demo_server(
        dir.path(),
        &[
            "--max-message-bytes",
            "1048576",
            "--max-inflight-bytes",
            "1200000",
            "--max-revision-wait-ms",
            "120000",
        ],
    );
    let started = server.wait_serving();
    let (http, grpc) = (started.http.unwrap(), started.decisions.unwrap());
    // About 700 KB: more than half the budget, under the message limit.
    let batch = |min_revision: u64| pb::BatchIsAuthorizedRequest {
        requests: vec![alice_views_website(); 9_000],
        min_revision,
    };
    let size = prost::Message::encoded_len(&batch(0));
    assert!(1_200_000 - size < size && size < 1048576, "{size}");
    let mut evaluations = String::from("{\"evaluations\":[");
    let item = r#"{"subject":{"type":"Blue::User","id":"alice"},"action":{"name":"viewProject"},"resource":{"type":"Blue::Project","id":"website"}}"#;
    for i in 0..(size / item.len()) {
        if i > 0 {
            evaluations.push(',');
        }
        evaluations.push_str(item);
    }
    evaluations.push_str("]}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut holder_client = AuthorizerClient::new(channel(grpc).await);
        // The holder: a revision far ahead, so it waits (holding its body's bytes) until
        // dropped. Its body races the probes below for the budget, so a refused holder
        // tries again; any other answer is a failure.
        let holder = tokio::spawn(async move {
            loop {
                match holder_client.batch_is_authorized(batch(1_000_000)).await {
                    Err(e) if e.code() == tonic::Code::ResourceExhausted => continue,
                    other => panic!("the holder was answered: {other:?}"),
                }
            }
        });
        let mut c = AuthorizerClient::new(channel(grpc).await);
        let mut refused = None;
        common::until_async(
            "a large call refused while the holder waits",
            Duration::from_secs(60),
            async || match c.batch_is_authorized(batch(0)).await {
                _ if holder.is_finished() => panic!("the holder stopped waiting"),
                Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                    refused = Some(e);
                    true
                }
                Err(e) => panic!("{e:?}"),
                Ok(_) => false, // sent before the holder's body arrived
            },
        )
        .await;
        let refused = refused.unwrap();
        assert!(
            refused
                .message()
                .contains("max_inflight_bytes (1200000 bytes)"),
            "{refused:?}"
        );
        // Over HTTP too. The holder may have lost that race and be trying again, so a call
        // that passes is sent again.
        let mut h = Http::connect(http, false).await;
        let mut answer = None;
        common::until_async(
            "a large HTTP call refused while the holder waits",
            Duration::from_secs(60),
            async || {
                let a = post_evaluations(&mut h, &evaluations).await;
                if a.status == 200 {
                    return false;
                }
                answer = Some(a);
                true
            },
        )
        .await;
        let a = answer.unwrap();
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(
            a.body.to_string().contains("max_inflight_bytes"),
            "{}",
            a.body
        );
        assert_eq!(
            a.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        // A small decision fits in what is left.
        let d = c
            .is_authorized(alice_views_website())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.decision, pb::Decision::Allow as i32);
        // The holder gone (its call cancelled), its bytes come back.
        holder.abort();
        common::until_async(
            "the large call passes once the holder is gone",
            Duration::from_secs(60),
            async || c.batch_is_authorized(batch(0)).await.is_ok(),
        )
        .await;
        let a = post_evaluations(&mut h, &evaluations).await;
        assert_eq!(a.status, 200, "{}", a.body);
    });
}

#[test]
fn a_budget_below_the_message_limit_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = Binary::serve(&common::live_pack(), &dir.path().join("authz.redb"))
        .args(["--max-inflight-bytes", "1000"])
        .output();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-inflight-bytes") && err.contains("below max_message_bytes"),
        "{err}"
    );
}
