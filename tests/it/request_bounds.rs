//! A request's memory is bounded by its size, not by how many items it declares (issue 35,
//! item 3): the real binary on the demo data receives, four at once, each over-limit batch
//! shape just under the 4 MiB message limit (AuthZEN `evaluations` of `{}` items, gRPC
//! `BatchIsAuthorized` of empty requests). Each is refused (400 / INVALID_ARGUMENT naming the
//! limit) while it is decoded, the process's peak resident memory stays within a bound, and
//! decisions go on.

use std::time::Duration;

use crate::common::{self, fleet::channel, http::Http, server::Binary};
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};

/// The bound on the peak: the four requests' bodies held at once (a copy each in flight)
/// and their items up to the limit, with room for the allocator's slack. Before the items
/// were counted while decoding, one AuthZEN body alone took ~1.1 GB and one gRPC batch 0.8 GB.
const PEAK_BOUND: u64 = 160 << 20;

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
    let mut server = Binary::serve(&common::live_pack(), &dir.path().join("authz.redb"))
        .args(["--http-listen", "127.0.0.1:0"])
        .arg("--seed")
        .arg(common::root().join("data/demo.json"))
        .spawn();
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
                let a = c
                    .send(
                        "POST",
                        "/access/v1/evaluations",
                        &[("content-type", "application/json")],
                        &body,
                    )
                    .await;
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
            c.is_authorized(common::ask(
                "alice",
                "viewProject",
                "Blue::Project",
                "website",
            )),
        )
        .await
        .expect("a decision after the refusals")
        .unwrap()
        .into_inner();
        assert_eq!(d.decision, pb::Decision::Allow as i32);
    });
    let peak = status_kb(pid, "VmHWM:") * 1024;
    println!(
        "resident before {} MB, peak {} MB while refusing 4 AuthZEN bodies of {n_http} items and 4 gRPC batches of {n_grpc} requests (bound: {} MB above before)",
        before >> 20,
        peak >> 20,
        PEAK_BOUND >> 20
    );
    assert!(
        peak <= before + PEAK_BOUND,
        "peak {peak} bytes, more than {PEAK_BOUND} above {before}"
    );
}
