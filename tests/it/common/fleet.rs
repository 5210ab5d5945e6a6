//! The fleet tests' helpers: a PostgreSQL schema per test, real replicas (the binary) on it,
//! clients for their services, and waits on their status.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use blue_authz::service::grpc::pb::{
    self, authorizer_client::AuthorizerClient, entity_store_client::EntityStoreClient,
};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::server::{Binary, Server};
use super::{pack, TOKEN};

pub const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
pub const USER: &str = "Blue::User";
pub const ROLE: &str = "Blue::Role";

/// A fresh schema for one test and the connection string that uses it; None (after saying so
/// loudly) when PostgreSQL does not answer outside CI.
pub async fn schema(name: &str) -> Option<(tokio_postgres::Client, String)> {
    let connected = tokio_postgres::connect(PG, tokio_postgres::NoTls).await;
    let (client, conn) = match connected {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL on 127.0.0.1:5432 is required in CI: {e}");
            }
            // Straight to file descriptor 2: the test harness captures eprintln!.
            use std::io::Write as _;
            use std::os::fd::AsFd as _;
            if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
                let _ = writeln!(
                    std::fs::File::from(fd),
                    "\n*** SKIPPED {name}: PostgreSQL on 127.0.0.1:5432 does not answer ({e}) ***\n"
                );
            }
            return None;
        }
    };
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!("SET search_path TO {name}"))
        .await
        .unwrap();
    Some((client, url_for(name, 5432)))
}

pub fn url_for(schema: &str, port: u16) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{port}/test?options=-csearch_path%3D{schema}&connect_timeout=2"
    )
}

/// A replica: the real binary, following `url` into `db`.
pub struct Replica {
    pub server: Server,
    pub decisions: SocketAddr,
    pub data: SocketAddr,
}

impl Replica {
    /// Its log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.server.log.lines()
    }
}

pub fn spawn(url: &str, db: &Path, extra: &[&str]) -> Replica {
    let mut server = Binary::serve(&pack(), db)
        .args(["--data-listen", "127.0.0.1:0", "--source", url])
        .env("BLUE_AUTHZ_SOURCE_POLL_MS", "200")
        .env("BLUE_AUTHZ_SEED", pack().join("tests/fixture.json"))
        .args(extra)
        .env("BLUE_AUTHZ_DATA_TOKEN", TOKEN)
        .env("BLUE_AUTHZ_LOG", "info")
        .spawn();
    let started = server.wait_serving().clone();
    Replica {
        server,
        decisions: started.decisions.expect("a decision listener"),
        data: started.data.expect("a data listener"),
    }
}

#[derive(Clone)]
pub struct Bearer;

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {TOKEN}").parse().unwrap();
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

pub type Data = EntityStoreClient<InterceptedService<Channel, Bearer>>;

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A data service client with the test token, on `addr`.
pub async fn data_at(addr: SocketAddr) -> Data {
    EntityStoreClient::with_interceptor(channel(addr).await, Bearer)
}

pub async fn data(r: &Replica) -> Data {
    data_at(r.data).await
}

pub async fn decisions(r: &Replica) -> AuthorizerClient<Channel> {
    AuthorizerClient::new(channel(r.decisions).await)
}

pub fn record(id: &str) -> serde_json::Value {
    serde_json::json!({"uid": {"type": "Blue::Record", "id": id}, "attrs": {"project": {"type": "Blue::Project", "id": "apollo"}, "creator": {"type": USER, "id": "pat"}}, "parents": []})
}

pub async fn write(d: &mut Data, ops: Vec<pb::WriteOp>) -> Result<u64, tonic::Status> {
    d.write_entities(pb::WriteEntitiesRequest {
        ops,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().revision)
}

pub async fn status(d: &mut Data) -> pb::DataStatus {
    d.get_data_status(pb::GetDataStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until a replica has applied `revision` (30 s at most).
pub async fn reach(d: &mut Data, revision: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(d).await;
        if s.revision >= revision {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica stuck at {} (wanted {revision}): {s:?}",
            s.revision
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every entity a replica holds, as canonical JSON text, and the export's revision.
pub async fn export(d: &mut Data) -> (u64, BTreeSet<String>) {
    let mut stream = d
        .export_entities(pb::ExportEntitiesRequest { chunk_size: 5000 })
        .await
        .unwrap()
        .into_inner();
    let mut all = BTreeSet::new();
    let mut revision = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        revision = chunk.revision;
        let items: Vec<serde_json::Value> = serde_json::from_str(&chunk.entities_json).unwrap();
        all.extend(items.iter().map(|v| v.to_string()));
    }
    (revision, all)
}
