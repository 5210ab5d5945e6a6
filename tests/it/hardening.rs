//! Faults and abuse from outside, against the real binary over real sockets: clients that
//! connect and say nothing, a flood past the file-descriptor limit, and the per-connection
//! stream limit.

use crate::common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::server::{Binary, Server};
use crate::common::{pack, uid};
use blue_authz::service::grpc::pb;
use blue_authz::service::grpc::pb::authorizer_client::AuthorizerClient;

/// `serve` on the frozen pack with a fresh database, decisions on 127.0.0.1:0 and nothing else,
/// run through `sh -c` so that `shell_prefix` (e.g. `ulimit -n 64;`) applies to it; serving.
fn serve(dir: &std::path::Path, shell_prefix: &str, extra: &[&str]) -> Server {
    let mut server = Binary::serve(&pack(), &dir.join("a.redb"))
        .arg("--seed")
        .arg(pack().join("tests/fixture.json"))
        .args(extra)
        .shell_prefix(shell_prefix)
        .spawn();
    server.wait_serving();
    server
}

/// One decision over a fresh connection: ada may edit apollo's wiki.
async fn decide(addr: SocketAddr) -> Result<pb::IsAuthorizedResponse, String> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    decide_on(channel).await
}

/// The same decision on `channel`.
async fn decide_on(channel: tonic::transport::Channel) -> Result<pb::IsAuthorizedResponse, String> {
    AuthorizerClient::new(channel)
        .is_authorized(pb::IsAuthorizedRequest {
            principal: uid("Blue::User", "ada"),
            action: uid("Blue::Action", "editWiki"),
            resource: uid("Blue::Project", "apollo"),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

/// Whether the server closed `conn` within `within` (EOF or reset); what it sent before (its
/// own HTTP/2 settings) is read and dropped.
fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        conn.set_read_timeout(Some(left)).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// Connections that say nothing take every slot (max_connections 4), and are dropped at the
/// handshake timeout; then a real client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_dropped_at_the_handshake_timeout_and_the_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        "",
        &["--max-connections", "4", "--handshake-timeout-ms", "700"],
    );
    let mut silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(server.decisions()).unwrap())
        .collect();
    // A real client now waits for a slot: the four silent ones hold them all.
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), decide(server.decisions()))
        .await
        .expect("served once the silent connections were dropped")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.decision, pb::Decision::Allow as i32);
    assert!(
        waited >= Duration::from_millis(300),
        "the limit of 4 let a fifth connection in at once ({waited:?})"
    );
    // The server closed each silent connection itself.
    for conn in &mut silent {
        assert!(closed_by_server(conn, Duration::from_secs(3)));
    }
    // One that starts talking within the timeout stays and is served.
    assert_eq!(
        decide(server.decisions()).await.unwrap().decision,
        pb::Decision::Allow as i32
    );
}

/// The server's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Past the file-descriptor limit accepting fails (EMFILE): the server backs off instead of
/// spinning, keeps its idle CPU near zero, and serves again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_descriptor_limit_backs_off_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        "ulimit -n 64;",
        &["--handshake-timeout-ms", "60000"],
    );
    assert_eq!(
        decide(server.decisions()).await.unwrap().decision,
        pb::Decision::Allow as i32
    );
    // More connections than the server has descriptors; the kernel's backlog takes the rest.
    let flood: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(server.decisions()).ok())
        .collect();
    assert!(flood.len() > 64, "{} connections", flood.len());
    // Out of descriptors, accepting fails; the server backs off to its ceiling of a second and
    // stays there, instead of spinning: the next two failures come one backoff apart each,
    // nothing in between, and cost a fraction of the wall time they span in CPU (a spinning
    // server takes whatever share of a core it is given, on an idle machine or a loaded one).
    let failure = |l: &str| l.contains("accept failed; backing off");
    let (first, _) = server
        .log
        .wait_from(0, Duration::from_secs(60), |l| {
            failure(l) && l.contains("backoff_ms=1000")
        })
        .unwrap_or_else(|| panic!("the backoff never reached 1 s:\n{}", server.log.text()));
    let pid = server.started.pid;
    let (before, started) = (cpu_time(pid), Instant::now());
    let (second, _) = server
        .log
        .wait_from(first + 1, Duration::from_secs(30), failure)
        .expect("a second accept failure");
    let (third, line) = server
        .log
        .wait_from(second + 1, Duration::from_secs(30), failure)
        .expect("a third accept failure");
    let (spent, elapsed) = (cpu_time(pid) - before, started.elapsed());
    assert!(line.contains("backoff_ms=1000"), "{line}");
    assert_eq!(
        (second, third),
        (first + 1, first + 2),
        "{}",
        server.log.text()
    );
    assert!(
        spent * 4 < elapsed,
        "the server spent {spent:?} of CPU in {elapsed:?} while out of descriptors"
    );
    drop(flood);
    // Descriptors free again: served (within the backoff's second or so).
    common::until_async(
        "decisions served again",
        Duration::from_secs(30),
        async || {
            matches!(
                tokio::time::timeout(Duration::from_secs(5), decide(server.decisions())).await,
                Ok(Ok(r)) if r.decision == pb::Decision::Allow as i32
            )
        },
    )
    .await;
}

/// At most `max_streams_per_connection` calls run at once on one connection: six calls that
/// each wait a second (for a revision that never comes) on one channel take three rounds with
/// a limit of two, one round without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_one_connection_wait_for_the_stream_limit() {
    async fn six_waits(addr: SocketAddr) -> Duration {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        // One call first, so the client has the server's settings (its stream limit) before
        // it opens six streams at once.
        assert!(decide_on(channel.clone()).await.is_ok());
        let started = Instant::now();
        let calls = (0..6).map(|_| {
            let mut client = AuthorizerClient::new(channel.clone());
            async move {
                let e = client
                    .is_authorized(pb::IsAuthorizedRequest {
                        principal: uid("Blue::User", "ada"),
                        action: uid("Blue::Action", "editWiki"),
                        resource: uid("Blue::Project", "apollo"),
                        min_revision: 1_000_000,
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
            }
        });
        futures_join_all(calls).await;
        started.elapsed()
    }
    let dir = tempfile::tempdir().unwrap();
    let limited = serve(
        dir.path(),
        "",
        &[
            "--max-streams-per-connection",
            "2",
            "--max-revision-wait-ms",
            "1000",
        ],
    );
    let other = tempfile::tempdir().unwrap();
    let open = serve(other.path(), "", &["--max-revision-wait-ms", "1000"]);
    let (with_limit, without) = (
        six_waits(limited.decisions()).await,
        six_waits(open.decisions()).await,
    );
    // Three rounds of a second against one, measured in the same test: whatever the load,
    // the limited connection takes about two seconds more.
    assert!(
        with_limit >= Duration::from_millis(2800),
        "six 1 s calls with 2 streams took {with_limit:?}"
    );
    assert!(
        with_limit >= without + Duration::from_millis(1500),
        "six 1 s calls took {with_limit:?} with 2 streams, {without:?} with 256"
    );
}

/// Runs the futures concurrently and waits for all.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for h in handles {
        h.await.unwrap();
    }
}

/// A gRPC call with a raw body over HTTP/2 (prior knowledge): the grpc-status and
/// grpc-message, from the headers (trailers-only) or the trailers.
async fn raw_call(addr: SocketAddr, path: &str, body: Vec<u8>) -> (String, String) {
    raw_call_with(addr, path, body, None).await
}

/// The same with an `authorization` header.
async fn raw_call_with(
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> (String, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let header =
        |h: &hyper::HeaderMap, k: &str| h.get(k).map(|v| v.to_str().unwrap_or("").to_string());
    if let Some(status) = header(&parts.headers, "grpc-status") {
        return (
            status,
            header(&parts.headers, "grpc-message").unwrap_or_default(),
        );
    }
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (
        header(&trailers, "grpc-status").unwrap_or_default(),
        header(&trailers, "grpc-message").unwrap_or_default(),
    )
}

/// A gRPC frame: the uncompressed flag, the length, the message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Bodies the gRPC stack refuses before any handler runs are INVALID_ARGUMENT like the
/// handlers' own refusals (not INTERNAL), and a message over the limit is INVALID_ARGUMENT
/// whatever its size (tonic's own cap is twice the limit, and said OUT_OF_RANGE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_truncated_and_oversized_bodies_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "", &["--max-message-bytes", "1000"]);
    let path = "/blue.authz.v1.Authorizer/IsAuthorized";
    let oversized = |n: usize| {
        prost::Message::encode_to_vec(&pb::IsAuthorizedRequest {
            context_json: "a".repeat(n),
            ..Default::default()
        })
    };
    let mut truncated = frame(&[0x0a; 100]);
    truncated.truncate(20);
    let mut compressed = frame(&[]);
    compressed[0] = 1;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not protobuf",
            frame(&[0xff; 5]),
            "not a valid request message",
        ),
        (
            "invalid UTF-8 in a string",
            frame(&[0x0a, 0x03, 0x0a, 0x01, 0xff]),
            "not UTF-8",
        ),
        ("a truncated frame", truncated, "Unexpected EOF"),
        (
            "a compressed frame without an encoding",
            compressed,
            "compressed",
        ),
        (
            "1.5x the limit",
            frame(&oversized(1500)),
            "limit of 1000 bytes",
        ),
        (
            "5x the limit",
            frame(&oversized(5000)),
            "limit of 1000 bytes",
        ),
    ];
    for (name, body, says) in cases {
        let (code, message) = raw_call(server.decisions(), path, body).await;
        let message = message.replace("%20", " ");
        assert_eq!(code, "3", "{name}: {message}");
        assert!(message.starts_with("request: "), "{name}: {message}");
        assert!(message.contains(says), "{name}: {message}");
    }
}

/// A tiny deterministic generator (xorshift), so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The bad-input suite: for every method of every gRPC service, random bodies, random
/// messages in a valid frame, truncated frames, protobuf nested a million groups deep, JSON
/// nested a million deep and 1 MB ids. Every answer is a status the README documents (never
/// INTERNAL or UNKNOWN, never a dropped stream), no message is longer than 1 KiB, and after
/// each case a known decision still answers ALLOW.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_method_never_breaks_a_known_decision() {
    let dir = tempfile::tempdir().unwrap();
    let token = "bad-input-token";
    let server = serve(
        dir.path(),
        "",
        &[
            "--max-revision-wait-ms",
            "20",
            "--data-listen",
            "127.0.0.1:0",
            "--data-token",
            token,
        ],
    );
    let data_addr = server.started.data.expect("the data listener");
    let mut known = AuthorizerClient::connect(format!("http://{}", server.decisions()))
        .await
        .unwrap();
    let methods: Vec<(SocketAddr, &str, Option<&str>)> = [
        "/blue.authz.v1.Authorizer/IsAuthorized",
        "/blue.authz.v1.Authorizer/BatchIsAuthorized",
        "/blue.authz.v1.Authorizer/ListAllowedActions",
        "/blue.authz.v1.Authorizer/ListResources",
        "/blue.authz.v1.Authorizer/ListSubjects",
        "/blue.authz.v1.Policies/GetPolicyStatus",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/blue.authz.v1.NoSuch/Method",
    ]
    .into_iter()
    .map(|m| (server.decisions(), m, None))
    .chain(
        [
            "/blue.authz.v1.EntityStore/WriteEntities",
            "/blue.authz.v1.EntityStore/ReadEntities",
            "/blue.authz.v1.EntityStore/ExportEntities",
            "/blue.authz.v1.EntityStore/GetDataStatus",
        ]
        .into_iter()
        .flat_map(|m| [(data_addr, m, Some(token)), (data_addr, m, None)]),
    )
    .collect();
    let json_deep = "[".repeat(1 << 20);
    let big_id = "x".repeat(1 << 20);
    let typed: Vec<Vec<u8>> = vec![
        prost::Message::encode_to_vec(&pb::IsAuthorizedRequest {
            principal: uid("Blue::User", &big_id),
            action: uid("Blue::Action", &big_id),
            resource: uid(&big_id, "apollo"),
            context_json: json_deep.clone(),
            entities_json: json_deep.clone(),
            ..Default::default()
        }),
        prost::Message::encode_to_vec(&pb::IsAuthorizedRequest {
            principal: uid("Blue::User", "ada"),
            action: uid("Blue::Action", "editWiki"),
            resource: uid("Blue::Project", "apollo"),
            entities_json: format!(
                "[{{\"uid\": {{\"type\": \"Blue::User\", \"id\": \"{big_id}\"}}}}]"
            ),
            ..Default::default()
        }),
        prost::Message::encode_to_vec(&pb::WriteEntitiesRequest {
            ops: vec![pb::WriteOp {
                op: Some(pb::write_op::Op::UpsertJson(json_deep.clone())),
            }],
            ..Default::default()
        }),
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut cases = 0;
    let started = Instant::now();
    for (addr, method, auth) in &methods {
        let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..6 {
            let n = rng.below(64) as usize;
            bodies.push((format!("random bytes {i}"), rng.bytes(n)));
            let n = rng.below(200) as usize;
            bodies.push((format!("random message {i}"), frame(&rng.bytes(n))));
            let mut f = frame(&rng.bytes(40));
            f.truncate(rng.below(f.len() as u64) as usize);
            bodies.push((format!("truncated frame {i}"), f));
        }
        // Unknown field groups, a million deep (field 1, wire type 3).
        bodies.push(("groups nested 1M deep".into(), frame(&vec![0x0b; 1 << 20])));
        for (i, t) in typed.iter().enumerate() {
            bodies.push((format!("typed {i} (1 MB ids, JSON 1M deep)"), frame(t)));
        }
        for (name, body) in bodies {
            let (code, message) = raw_call_with(*addr, method, body, *auth).await;
            cases += 1;
            assert!(
                ["0", "3", "5", "9", "11", "12", "16"].contains(&code.as_str()),
                "{method} {name}: status {code:?} {message}"
            );
            assert!(
                message.len() <= 3 * 1024,
                "{method} {name}: {} bytes",
                message.len()
            );
            let r = known
                .is_authorized(pb::IsAuthorizedRequest {
                    principal: uid("Blue::User", "ada"),
                    action: uid("Blue::Action", "editWiki"),
                    resource: uid("Blue::Project", "apollo"),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("after {method} {name}: {e}"))
                .into_inner();
            assert_eq!(
                r.decision,
                pb::Decision::Allow as i32,
                "after {method} {name}"
            );
        }
    }
    assert!(cases > 300, "{cases} cases");
    eprintln!("{cases} bad-input cases in {:?}", started.elapsed());
}

/// A tmpfs of `mb` megabytes at `dir`, unmounted when dropped; None (said loudly) where this
/// machine cannot mount one, which fails the test in CI.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mb: u32, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: cannot mount a tmpfs in CI (needs root)");
        }
        eprintln!("SKIPPED {test}: cannot mount a tmpfs here (needs root)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` with a file there, until a write fails.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// Adds `authorization: Bearer <token>`.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A data-service client that sends the token.
async fn data_client(
    addr: SocketAddr,
    token: &str,
) -> blue_authz::service::grpc::pb::entity_store_client::EntityStoreClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    blue_authz::service::grpc::pb::entity_store_client::EntityStoreClient::with_interceptor(
        channel,
        Bearer(format!("Bearer {token}").parse().unwrap()),
    )
}

/// A batch big enough to need new pages in any file: `n` users with long ids.
fn users(prefix: &str, n: usize) -> Vec<pb::WriteOp> {
    (0..n)
        .map(|i| {
            common::upsert(serde_json::json!({
                "uid": {"type": "Blue::User", "id": format!("{prefix}-{i}-{}", "u".repeat(200))},
                "attrs": {}, "parents": [{"type": "Blue::Role", "id": "apollo/view"}]
            }))
        })
        .collect()
}

/// A full disk: writes get RESOURCE_EXHAUSTED saying so (every time, not a different error
/// after the first), decisions keep answering, the data path's health entry, a metric and
/// GetDataStatus say writes fail; once space is freed the store recovers by itself (health
/// first, without a write), the same batch then succeeds, and after a restart every
/// acknowledged write is there and nothing of the refused ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_as_resource_exhausted_and_recovers_by_itself() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let test = "a_full_disk_refuses_writes_as_resource_exhausted_and_recovers_by_itself";
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), 24, test) else {
        return;
    };
    let token = "disk-full-token";
    let args = [
        "--data-listen",
        "127.0.0.1:0",
        "--data-token",
        token,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let mut server = serve(&mnt.0, "", &args);
    let metrics = server.started.metrics.expect("metrics listener");
    let mut data = data_client(server.started.data.unwrap(), token).await;
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.decisions()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = |name: &str| HealthCheckRequest {
        service: name.to_string(),
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let first = data
        .write_entities(pb::WriteEntitiesRequest {
            ops: users("before", 50),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;

    fill(&mnt.0.join("filler"));
    for attempt in 0..2 {
        let e = data
            .write_entities(pb::WriteEntitiesRequest {
                ops: users("refused", 3000),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::ResourceExhausted,
            "attempt {attempt}: {e}"
        );
        assert!(e.message().contains("disk is full"), "{}", e.message());
        // Decisions go on.
        assert_eq!(
            decide(server.decisions()).await.unwrap().decision,
            pb::Decision::Allow as i32
        );
    }
    let degraded = health
        .check(status("blue.authz.v1.EntityStore"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        degraded.status, serving,
        "the data path says it is degraded"
    );
    for name in ["", "blue.authz.v1.Authorizer"] {
        let s = health.check(status(name)).await.unwrap().into_inner();
        assert_eq!(s.status, serving, "{name:?} stays SERVING");
    }
    assert!(common::get_metrics(metrics).contains("\nblue_authz_store_writable 0\n"));
    let ds = data
        .get_data_status(pb::GetDataStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        !ds.writable && ds.last_error.contains("disk is full"),
        "{ds:?}"
    );

    // Space back: the probe restores the data path by itself, then the batch succeeds.
    std::fs::remove_file(mnt.0.join("filler")).unwrap();
    common::until_async(
        "the data path to recover",
        Duration::from_secs(30),
        async || {
            let s = health
                .check(status("blue.authz.v1.EntityStore"))
                .await
                .unwrap()
                .into_inner();
            s.status == serving
        },
    )
    .await;
    assert!(common::get_metrics(metrics).contains("\nblue_authz_store_writable 1\n"));
    let after = data
        .write_entities(pb::WriteEntitiesRequest {
            ops: users("after", 3000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(after, first + 1, "the refused batches made no revision");

    // After a restart: both acknowledged batches, none of the refused one.
    server.kill();
    drop(data);
    let server = serve(&mnt.0, "", &args);
    let mut data = data_client(server.started.data.unwrap(), token).await;
    let mut stream = data
        .export_entities(pb::ExportEntitiesRequest { chunk_size: 10_000 })
        .await
        .unwrap()
        .into_inner();
    let (mut before, mut refused, mut later) = (0, 0, 0);
    while let Some(chunk) = stream.message().await.unwrap() {
        let items: Vec<serde_json::Value> = serde_json::from_str(&chunk.entities_json).unwrap();
        for e in items {
            let id = e["uid"]["id"].as_str().unwrap_or("");
            before += id.starts_with("before-") as usize;
            refused += id.starts_with("refused-") as usize;
            later += id.starts_with("after-") as usize;
        }
    }
    assert_eq!((before, refused, later), (50, 0, 3000));
}
