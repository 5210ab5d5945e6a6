//! What a replica tells its operator while PostgreSQL is away (issue 31): the EntityStore
//! health entry NOT_SERVING, `blue_authz_store_writable` 0, `GetDataStatus` not writable with
//! the driver's or PostgreSQL's own words and when, a refused write saying why; all of it
//! true for every sample of the outage, and cleared once PostgreSQL is back. A search path
//! whose schema does not exist yet is created. Real binaries and a PostgreSQL cluster of the
//! test's own, killed and restarted.

use std::time::{Duration, Instant};

use crate::common::fleet::*;
use crate::common::private_pg::PrivatePg;
use crate::common::{self, upsert};
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const ENTRY: &str = "blue.authz.v1.EntityStore";

/// (health of the EntityStore entry, the writable gauge, the data status).
async fn signals(
    r: &Replica,
    health: &mut HealthClient<tonic::transport::Channel>,
    d: &mut Data,
) -> (i32, String, blue_authz::service::grpc::pb::DataStatus) {
    let h = health
        .check(HealthCheckRequest {
            service: ENTRY.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    let metrics = common::get_metrics_async(r.server.started.metrics.unwrap()).await;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("blue_authz_store_writable "))
        .unwrap_or("")
        .to_string();
    (h, gauge, status(d).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgresql_is_away_every_signal_says_writes_fail() {
    let Some(cluster) = PrivatePg::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = spawn(
        &cluster.url(),
        &dir.path().join("a.redb"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let mut d = data(&r).await;
    let mut health = HealthClient::new(channel(r.decisions).await);
    write(&mut d, vec![upsert(record("before"))]).await.unwrap();
    let (h, gauge, s) = signals(&r, &mut health, &mut d).await;
    assert_eq!((h, gauge.as_str()), (1, "blue_authz_store_writable 1"));
    assert!(s.writable && s.last_error.is_empty(), "{s:?}");

    // Killed (connections refused), paused (SIGSTOP: calls hang until their timeout), and
    // stopped by an operator (clients are told the server is shutting down).
    #[derive(PartialEq)]
    enum Away {
        Killed,
        Paused,
        Stopped,
    }
    for (round, away) in [Away::Killed, Away::Paused, Away::Stopped]
        .into_iter()
        .enumerate()
    {
        let paused = away == Away::Paused;
        match away {
            Away::Killed => cluster.kill(),
            Away::Paused => cluster.signal_all("-STOP"),
            Away::Stopped => cluster.stop(),
        }
        // Every signal turns with no write to notice it (the follower's poll does), and
        // stays turned for every sample of the outage.
        common::until_async(
            "the signals to say writes fail",
            Duration::from_secs(20),
            async || {
                let (h, gauge, s) = signals(&r, &mut health, &mut d).await;
                h == 2 && gauge == "blue_authz_store_writable 0" && !s.writable
            },
        )
        .await;
        // A write refused while it is away says why, in the driver's words (never a bare
        // "db error"), and that it was not applied.
        let e = write(&mut d, vec![upsert(record(&format!("away-{round}")))])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(!e.message().ends_with("db error"), "{e:?}");
        assert!(
            [
                "connect",
                "closed",
                "no answer",
                "shutting down",
                "administrator"
            ]
            .iter()
            .any(|w| e.message().contains(w)),
            "{e:?}"
        );
        let started = Instant::now();
        let mut samples = 0;
        // Twenty samples across at least two of the data path's one-second probes.
        while samples < 20 || started.elapsed() < Duration::from_millis(2500) {
            let (h, gauge, s) = signals(&r, &mut health, &mut d).await;
            assert_eq!(
                h, 2,
                "sample {samples} of outage {round}: health {h}, {s:?}"
            );
            assert_eq!(gauge, "blue_authz_store_writable 0", "sample {samples}");
            assert!(!s.writable && !s.source_reachable, "{s:?}");
            assert!(
                !s.last_error.is_empty() && s.last_error_at_unix_ms.is_some(),
                "{s:?}"
            );
            samples += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if paused {
            cluster.signal_all("-CONT");
        } else {
            cluster.restart();
        }
        common::until_async(
            "the signals to say writes succeed again",
            Duration::from_secs(30),
            async || {
                let (h, gauge, s) = signals(&r, &mut health, &mut d).await;
                h == 1 && gauge == "blue_authz_store_writable 1" && s.writable
            },
        )
        .await;
        let (_, _, s) = signals(&r, &mut health, &mut d).await;
        assert!(
            s.last_error.is_empty() && s.last_error_at_unix_ms.is_none(),
            "cleared on recovery: {s:?}"
        );
        write(&mut d, vec![upsert(record(&format!("back-{round}")))])
            .await
            .unwrap();
    }
}

/// `fleet.yaml`'s `search_path=authz` names a schema nobody created: the replica creates it
/// and serves. A role that may not create it gets PostgreSQL's own refusal in the log, not
/// "does not answer" (issue 31).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_path_schema_is_created_or_refused_in_postgresql_words() {
    let Some((pg, _)) = schema("fleet_created").await else {
        return;
    };
    pg.batch_execute(
        "DROP SCHEMA fleet_created CASCADE; DROP SCHEMA IF EXISTS fleet_refused CASCADE;
         DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'blue_authz_no_create') THEN
                 CREATE ROLE blue_authz_no_create LOGIN;
             END IF;
         END $$;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = spawn(
        &url_for("fleet_created", 5432),
        &dir.path().join("a.redb"),
        &[],
    );
    assert!(
        r.log()
            .iter()
            .any(|l| l.contains("created the search path's schema") && l.contains("fleet_created")),
        "{:?}",
        r.log()
    );
    let mut d = data(&r).await;
    write(&mut d, vec![upsert(record("created"))])
        .await
        .unwrap();
    let tables = pg
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'fleet_created'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(tables >= 4, "{tables} tables in the created schema");

    // A role without CREATE on the database: refused, in PostgreSQL's words, and it says so.
    let url = url_for("fleet_refused", 5432).replace("postgres@", "blue_authz_no_create@");
    let refused =
        crate::common::server::Binary::serve(&crate::common::pack(), &dir.path().join("b.redb"))
            .args(["--source", &url])
            .spawn();
    let line = refused
        .wait_log("cannot create schema", Duration::from_secs(30))
        .expect("the refusal is logged");
    assert!(
        line.contains("fleet_refused")
            && line.contains("42501")
            && line.contains("permission denied"),
        "{line}"
    );
}
