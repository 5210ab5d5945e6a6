//! A write batch is visible whole or not at all (issue 35): while the real binary commits
//! batch after batch that moves 200 users together in and out of a project's roles, readers
//! on other connections ask for all 200 decisions in one `BatchIsAuthorized`, which answers at one revision. Every answer must
//! be the state that revision's batch made, for all 200 users: a reader that saw half a batch
//! would see a mix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use serde_json::json;

use crate::common::fleet::{channel, data_at, write};
use crate::common::server::Binary;
use crate::common::{self, live_pack, TOKEN};

const USERS: usize = 200;
const BATCHES: u64 = 120;

/// The batch that makes revision `base + i`: odd batches put every user in a role of the
/// project (`website/member`, or `website/view` one time in two), so they may view it; even
/// batches take every user out. (Cutting a role from its project instead is refused: the pack
/// assumes each project's roles form a chain.)
fn batch(i: u64) -> Vec<pb::WriteOp> {
    let parents = match i % 4 {
        1 => json!([{"type": "Blue::Role", "id": "website/member"}]),
        3 => json!([{"type": "Blue::Role", "id": "website/view"}]),
        _ => json!([]),
    };
    (0..USERS)
        .map(|u| {
            common::upsert(json!({
                "uid": {"type": "Blue::User", "id": format!("mover-{u}")},
                "attrs": {},
                "parents": parents,
            }))
        })
        .collect()
}

#[test]
fn a_concurrent_reader_never_sees_half_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::serve(&live_pack(), &dir.path().join("authz.redb"))
        .args(["--data-listen", "127.0.0.1:0"])
        .env("BLUE_AUTHZ_DATA_TOKEN", TOKEN)
        .arg("--seed")
        .arg(common::root().join("data/demo.json"))
        .spawn();
    let started = server.wait_serving();
    let (grpc, data_addr) = (started.decisions.unwrap(), started.data.unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut data = data_at(data_addr).await;
        let base = write(&mut data, batch(0)).await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let ask = pb::BatchIsAuthorizedRequest {
            requests: (0..USERS)
                .map(|u| {
                    common::ask(
                        &format!("mover-{u}"),
                        "viewProject",
                        "Blue::Project",
                        "website",
                    )
                })
                .collect(),
            min_revision: base,
        };
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (done, ask) = (done.clone(), ask.clone());
            readers.push(tokio::spawn(async move {
                let mut c = AuthorizerClient::new(channel(grpc).await);
                let mut seen = std::collections::BTreeSet::new();
                while !done.load(Ordering::Relaxed) {
                    let r = c
                        .batch_is_authorized(ask.clone())
                        .await
                        .unwrap()
                        .into_inner();
                    let i = r.revision - base;
                    let expected = i % 2 == 1;
                    let allowed = r
                        .responses
                        .iter()
                        .filter(|d| d.decision == pb::Decision::Allow as i32)
                        .count();
                    assert_eq!(
                        allowed,
                        if expected { USERS } else { 0 },
                        "at revision {} (batch {i}) {allowed} of {USERS} users may view the \
                         project: a reader saw part of a batch",
                        r.revision
                    );
                    seen.insert(i);
                }
                seen
            }));
        }
        for i in 1..=BATCHES {
            let revision = write(&mut data, batch(i)).await.unwrap();
            assert_eq!(revision, base + i, "revisions stay dense");
        }
        // The readers go on until each has seen the last batch.
        let mut c = AuthorizerClient::new(channel(grpc).await);
        common::until_async(
            "the last batch visible",
            Duration::from_secs(30),
            async || {
                c.batch_is_authorized(ask.clone())
                    .await
                    .unwrap()
                    .into_inner()
                    .revision
                    == base + BATCHES
            },
        )
        .await;
        done.store(true, Ordering::Relaxed);
        let mut all = std::collections::BTreeSet::new();
        for r in readers {
            all.extend(r.await.unwrap());
        }
        println!(
            "{} distinct revisions of {BATCHES} read whole by 3 readers",
            all.len()
        );
        // Interleaving happened: the readers saw every kind of batch, at many revisions.
        for kind in 0..4 {
            assert!(
                all.iter().any(|i| i % 4 == kind),
                "no batch {kind} mod 4 read"
            );
        }
        assert!(all.len() >= 10, "only {} revisions read", all.len());
    });
}
