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

/// `GET /metrics` over TLS trusting `ca`, presenting `identity` if given: the response text,
/// or why there is none.
async fn https_metrics(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    tls.read_to_string(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    Ok(text)
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
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    let addr = running.addr.unwrap();
    let ca = pki.ca("blue");

    // /metrics follows the listeners' mutual TLS: a scraper with a certificate is served; one
    // without, or in plaintext, is not (issue 31).
    let metrics = running.metrics_addr.unwrap();
    let scraped = https_metrics(metrics, &ca, Some(&client)).await.unwrap();
    assert!(
        scraped.starts_with("HTTP/1.1 200") && scraped.contains("blue_authz_store_revision"),
        "{scraped}"
    );
    let anonymous = https_metrics(metrics, &ca, None).await;
    assert!(
        anonymous
            .as_ref()
            .map_or(true, |t| !t.contains("blue_authz_")),
        "{anonymous:?}"
    );
    let plain = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(metrics).unwrap();
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(!plain.contains("blue_authz_"), "plaintext was served");

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
            r#"grpc_errors_total{method="IsAuthorized",code="INVALID_ARGUMENT"}"#,
            2.0,
        ),
        (
            r#"grpc_errors_total{method="WriteEntities",code="INVALID_ARGUMENT"}"#,
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

/// Calls refused for a missing or wrong token are counted by listener and logged, at most
/// once every 10 s, on the real binary (issue 31).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_counted_and_logged_without_flooding() {
    use crate::common::fleet::channel;
    let dir = tempfile::tempdir().unwrap();
    let started_at = std::time::Instant::now();
    let mut server = common::server::Binary::serve(&pack(), &dir.path().join("a.redb"))
        .args([
            "--data-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("BLUE_AUTHZ_DATA_TOKEN", TOKEN)
        .env("BLUE_AUTHZ_HTTP_TOKEN", TOKEN)
        .spawn();
    let started = server.wait_serving().clone();
    // Three data calls: no token, a wrong one, two of them.
    let mut data = EntityStoreClient::new(channel(started.data.unwrap()).await);
    for header in [None, Some("Bearer wrong"), Some("Basic x")] {
        let mut req = tonic::Request::new(pb::GetDataStatusRequest {});
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let e = data.get_data_status(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    // Two AuthZEN calls.
    let http = started.http.unwrap();
    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let body = r#"{"subject":{"type":"user","id":"ada"},"action":{"name":"viewProject"},"resource":{"type":"project","id":"apollo"}}"#;
            let mut s = std::net::TcpStream::connect(http).unwrap();
            write!(
                s,
                "POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    let m = scrape(started.metrics.unwrap());
    assert_eq!(
        m[r#"blue_authz_unauthenticated_total{listener="data"}"#],
        3.0
    );
    assert_eq!(
        m[r#"blue_authz_unauthenticated_total{listener="http"}"#],
        2.0
    );
    // The process's own figures, in Prometheus's standard names: this process's RSS as the
    // kernel reports it, within a factor of the figure read here a moment later.
    let rss = m["process_resident_memory_bytes"];
    let status = std::fs::read_to_string(format!("/proc/{}/status", started.pid)).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        rss > 1e6 && (rss / (kb * 1024.0) - 1.0).abs() < 0.5,
        "{rss} against {kb} kB"
    );
    assert!(m["process_cpu_seconds_total"] > 0.0);
    assert!(m["process_open_fds"] >= 3.0 && m["process_threads"] >= 1.0);
    assert!(m.contains_key("process_start_time_seconds"));
    // Logged, but not once per call: one line per 10 s at most.
    server
        .wait_log(
            "calls refused for a missing or wrong bearer token",
            std::time::Duration::from_secs(10),
        )
        .expect("the refusals are logged");
    let lines = server
        .log
        .lines()
        .iter()
        .filter(|l| l.contains("calls refused for a missing or wrong bearer token"))
        .count();
    let allowed = 1 + started_at.elapsed().as_secs() as usize / 10;
    assert!(lines <= allowed, "{lines} lines for 5 refusals");
}
