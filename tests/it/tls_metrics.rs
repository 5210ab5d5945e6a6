//! TLS and mutual TLS on the TCP listeners (real certificates, made for the test), and the
//! Prometheus endpoint scraped after decisions, an error and a rejected reload.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::common::{ask, config, copy_dir, edit, pack, uid, TOKEN};
use blue_authz::service::grpc::pb;
use blue_authz::service::grpc::pb::authorizer_client::AuthorizerClient;
use blue_authz::service::grpc::pb::entity_store_client::EntityStoreClient;
use blue_authz::service::reload::Outcome;
use blue_authz::service::server::{self, Limits, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority, and certificates it signs, as PEM files in a directory.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-ca.pem"))
    }

    /// A leaf certificate for `names`; returns (cert, key) paths.
    fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// One decision over `channel`: Ok(allowed) or the call's error.
async fn decide(channel: Channel) -> Result<bool, tonic::Status> {
    let d = AuthorizerClient::new(channel)
        .is_authorized(ask("ada", "viewProject", "Blue::Project", "apollo"))
        .await?
        .into_inner();
    Ok(d.decision == pb::Decision::Allow as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_clients_with_a_certificate_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "blue");
    let stranger = Pki::new(dir.path(), "stranger");
    let server_cert = pki.leaf("server", &["localhost"]);
    let client = pki.leaf("client", &["client.blue.test"]);
    let forged = stranger.leaf("forged", &["client.blue.test"]);

    let mut c = config(dir.path(), Limits::default());
    c.watch = false;
    c.tls = Some(TlsFiles {
        cert: server_cert.0.clone(),
        key: server_cert.1.clone(),
        client_ca: Some(pki.ca("blue")),
    });
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    let addr = running.addr.unwrap();
    let ca = pki.ca("blue");

    // With a certificate from the trusted CA: served, on both services.
    let channel = tls_channel(addr, &ca, Some(&client)).await.unwrap();
    assert!(decide(channel).await.unwrap());
    let data = tls_channel(running.data_addr.unwrap(), &ca, Some(&client))
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::ReadEntitiesRequest {
        uids: vec![uid("Blue::User", "ada").unwrap()],
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let read = EntityStoreClient::new(data)
        .read_entities(req)
        .await
        .unwrap()
        .into_inner();
    assert!(read.missing.is_empty());

    // Without a certificate, with one from another CA, or in plaintext: refused.
    for (what, identity) in [("no certificate", None), ("another CA's", Some(&forged))] {
        let refused = match tls_channel(addr, &ca, identity).await {
            Err(_) => true,
            Ok(channel) => decide(channel).await.is_err(),
        };
        assert!(refused, "{what}: the call went through");
    }
    let plain = Channel::from_shared(format!("http://{addr}")).unwrap();
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => decide(channel).await.is_err(),
    };
    assert!(refused, "plaintext: the call went through");
    running.shutdown().await.unwrap();

    // TLS without a client CA: any client that trusts the server is served.
    let dir2 = tempfile::tempdir().unwrap();
    let mut c = config(dir2.path(), Limits::default());
    c.watch = false;
    c.tls = Some(TlsFiles {
        cert: server_cert.0,
        key: server_cert.1,
        client_ca: None,
    });
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    let channel = tls_channel(running.addr.unwrap(), &ca, None).await.unwrap();
    assert!(decide(channel).await.unwrap());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_cannot_be_read_are_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Limits::default());
    c.tls = Some(TlsFiles {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing-key.pem"),
        client_ca: None,
    });
    let err = server::start(c).await.err().expect("start-up refused");
    let text = err.to_string();
    assert!(
        text.contains("TLS certificate") && text.contains("missing.pem"),
        "{text}"
    );
}

/// `GET /metrics` over a real socket: the samples, by `name{labels}`.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let text = common::get_metrics(addr);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_errors_reloads_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_dir(&pack(), &policies);
    let mut c = config(dir.path(), Limits::default());
    c.pack = blue_authz::engine::pack::PackSpec::new(&policies, &[]);
    c.watch = false;
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    let metrics = running.metrics_addr.unwrap();
    let mut client = AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
        .await
        .unwrap();

    // viewProject: 2 allowed, 1 denied (one of each in a batch); editWiki: 1 denied.
    for who in ["ada", "zed"] {
        client
            .is_authorized(ask(who, "viewProject", "Blue::Project", "apollo"))
            .await
            .unwrap();
    }
    let batch = client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            requests: vec![
                ask("vic", "viewProject", "Blue::Project", "apollo"),
                ask("vic", "editWiki", "Blue::Project", "apollo"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.responses[1].decision, pb::Decision::Deny as i32);
    // Two bad requests.
    for _ in 0..2 {
        let e = client
            .is_authorized(ask("ada", "noSuchAction", "Blue::Project", "apollo"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    // A write the schema refuses.
    let data = Channel::from_shared(format!("http://{}", running.data_addr.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut bad = tonic::Request::new(pb::WriteEntitiesRequest {
        ops: vec![pb::WriteOp {
            op: Some(pb::write_op::Op::UpsertJson(
                r#"{"uid": {"type": "Blue::Nope", "id": "x"}, "attrs": {}, "parents": []}"#.into(),
            )),
        }],
        ..Default::default()
    });
    bad.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let e = EntityStoreClient::new(data)
        .write_entities(bad)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A rejected reload.
    edit(&policies.join("company.cedar"), "permit", "permit permit");
    assert!(matches!(running.reload().await, Outcome::Rejected(_)));

    let m = scrape(metrics);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in {:#?}", m.keys().collect::<Vec<_>>()))
    };
    for (sample, expected) in [
        (
            r#"decisions_total{action="viewProject",decision="allow"}"#,
            2.0,
        ),
        (
            r#"decisions_total{action="viewProject",decision="deny"}"#,
            1.0,
        ),
        (r#"decisions_total{action="editWiki",decision="deny"}"#, 1.0),
        (
            r#"grpc_errors_total{method="IsAuthorized",code="InvalidArgument"}"#,
            2.0,
        ),
        (
            r#"grpc_errors_total{method="WriteEntities",code="InvalidArgument"}"#,
            1.0,
        ),
        (
            r#"request_duration_seconds_count{method="IsAuthorized"}"#,
            4.0,
        ),
        (
            r#"request_duration_seconds_count{method="BatchIsAuthorized"}"#,
            1.0,
        ),
        (r#"policy_reloads_total{result="rejected"}"#, 1.0),
        (r#"policy_reloads_total{result="accepted"}"#, 0.0),
    ] {
        assert_eq!(get(&format!("blue_authz_{sample}")), expected, "{sample}");
    }
    let version = running.engine.pack().unwrap().version.clone();
    assert_eq!(
        get(&format!(
            r#"blue_authz_policy_info{{version="{version}",overlays=""}}"#
        )),
        1.0
    );
    assert_eq!(get("blue_authz_store_revision"), batch.revision as f64);
    assert_eq!(get("blue_authz_store_empty"), 0.0);
    // The fixture's users, counted from the file.
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pack().join("tests/fixture.json")).unwrap())
            .unwrap();
    let users = fixture
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["uid"]["type"] == "Blue::User")
        .count();
    assert!(users > 5);
    assert_eq!(
        get(r#"blue_authz_store_entities{type="Blue::User"}"#),
        users as f64
    );
    running.shutdown().await.unwrap();
}

/// A TLS client that starts a handshake and stalls (half a ClientHello) is dropped at the
/// handshake timeout, and so is one that completes no handshake at all; a real client is
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_dropped_at_the_handshake_timeout() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "blue");
    let server_cert = pki.leaf("server", &["localhost"]);
    let mut c = config(dir.path(), Limits::default());
    c.watch = false;
    c.conn.handshake_timeout = std::time::Duration::from_millis(600);
    c.tls = Some(TlsFiles {
        cert: server_cert.0.clone(),
        key: server_cert.1.clone(),
        client_ca: None,
    });
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    let addr = running.addr.unwrap();
    // A TLS record header and the start of a ClientHello, then nothing.
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .unwrap();
    let silent = std::net::TcpStream::connect(addr).unwrap();
    let started = std::time::Instant::now();
    // Served while those two wait.
    let channel = tls_channel(addr, &pki.ca("blue"), None).await.unwrap();
    assert!(decide(channel).await.unwrap());
    for (name, mut conn) in [("stalled", stalled), ("silent", silent)] {
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let closed = loop {
            match conn.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        };
        assert!(closed, "the {name} connection was kept");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    running.shutdown().await.unwrap();
}
