//! Faults and abuse from outside, against the real binary over real sockets: clients that
//! connect and say nothing, a flood past the file-descriptor limit, and the per-connection
//! stream limit.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blue_authz::service::grpc::pb;
use blue_authz::service::grpc::pb::authorizer_client::AuthorizerClient;
use common::{pack, uid};

/// The running binary and its decision listener's address.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` on the frozen pack with a fresh database, decisions on 127.0.0.1:0 and nothing else,
/// run through `sh -c` so that `shell_prefix` (e.g. `ulimit -n 64;`) applies to it; waits
/// until it serves.
fn serve(dir: &std::path::Path, shell_prefix: &str, extra: &[&str]) -> Server {
    let bin = env!("CARGO_BIN_EXE_blue-authz");
    let mut args = vec![
        "--policies".to_string(),
        pack().to_str().unwrap().to_string(),
        "serve".into(),
        "--db".into(),
        dir.join("a.redb").to_str().unwrap().to_string(),
        "--seed".into(),
        pack()
            .join("tests/fixture.json")
            .to_str()
            .unwrap()
            .to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-listen".into(),
        String::new(),
        "--http-listen".into(),
        String::new(),
        "--watch".into(),
        "false".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let script = format!("{shell_prefix} exec '{bin}' {}", quoted.join(" "));
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::log_lines(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut addr = None;
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!("the server did not start serving: {log}");
        };
        if line.contains("decision service listening") {
            addr = common::addr_in(&line);
        }
        log.push_str(&line);
        log.push('\n');
        if line.trim_end().ends_with(" serving") {
            break;
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Server {
        child,
        addr: addr.expect("the decision listener's address"),
    }
}

/// One decision over a fresh connection: ada may edit apollo's wiki.
async fn decide(addr: SocketAddr) -> Result<pb::IsAuthorizedResponse, String> {
    let mut client = AuthorizerClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| e.to_string())?;
    client
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
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // A real client now waits for a slot: the four silent ones hold them all.
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), decide(server.addr))
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
        decide(server.addr).await.unwrap().decision,
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
        decide(server.addr).await.unwrap().decision,
        pb::Decision::Allow as i32
    );
    // More connections than the server has descriptors; the kernel's backlog takes the rest.
    let flood: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(server.addr).ok())
        .collect();
    assert!(flood.len() > 64, "{} connections", flood.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(pid) - before;
    assert!(
        spent < Duration::from_millis(400),
        "the server spent {spent:?} of CPU in 2 s while out of descriptors"
    );
    drop(flood);
    // Descriptors free again: served (within the backoff's second or so).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), decide(server.addr)).await {
            Ok(Ok(r)) => {
                assert_eq!(r.decision, pb::Decision::Allow as i32);
                break;
            }
            other => assert!(Instant::now() < deadline, "never served again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let (with_limit, without) = (six_waits(limited.addr).await, six_waits(open.addr).await);
    assert!(
        with_limit >= Duration::from_millis(2800),
        "six 1 s calls with 2 streams took {with_limit:?}"
    );
    assert!(
        without < Duration::from_millis(2500),
        "six 1 s calls with 256 streams took {without:?}"
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
