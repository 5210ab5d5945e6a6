//! `blue-authz bench`: drives a running service over gRPC with a realistic request mix drawn
//! from generated data (the same scale and seed the service's data was generated with),
//! checks that every answer is a valid decision, and prints throughput and latency
//! percentiles. In the same run it measures the empty call for comparison: the standard health
//! service's `Check` on the same server, a trivial tonic unary handler on the same transport.
//! With `--pid`, it also reads the server's CPU time per call from /proc.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::bench::gen;
use crate::bench::progress::{self, Progress};
use crate::bench::workload::{self, Ask};
use crate::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub addr: String,
    pub scale: f64,
    pub seed: u64,
    pub concurrency: usize,
    pub duration: Duration,
    pub batch: usize,
    pub pid: Option<u32>,
    /// The AuthZEN HTTP listener's address: adds the HTTP phases (HTTP/1.1 keep-alive and
    /// h2c), compared with gRPC in the same run.
    pub http_addr: Option<String>,
    /// The data service's address and token: adds decisions while large batches are written,
    /// beside decisions without writes, in the same run.
    pub data: Option<(String, String)>,
    /// Operations per batch those writes make.
    pub write_ops: usize,
    /// Whether each write batch changes its entities' roles (see [`Writer`]).
    pub write_roles: bool,
    /// A pack's routes: adds Envoy's ext_authz `Check` beside `IsAuthorized` on the same
    /// requests (the mix's requests that a route maps, as HTTP requests through the routes).
    pub routes: Option<crate::engine::pack::Routes>,
}

/// One phase's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    pub name: String,
    pub concurrency: usize,
    pub calls: u64,
    pub per_second: f64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    /// Server CPU time per call, if the server's pid was given.
    pub cpu_per_call: Option<Duration>,
}

impl Figures {
    pub fn line(&self) -> String {
        let cpu = self
            .cpu_per_call
            .map(|c| format!("{:.1} µs", c.as_secs_f64() * 1e6))
            .unwrap_or_else(|| "-".into());
        format!(
            "{:<28} {:>4} {:>9} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>12}",
            self.name,
            self.concurrency,
            self.calls,
            self.per_second,
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.p999),
            cpu
        )
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub const HEADER: &str = "phase                        conc     calls     calls/s   p50 µs    p90 µs    p99 µs  p99.9 µs  server CPU/call";

/// Server CPU time (user + system) from /proc/PID/stat.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Clock ticks: 100 a second on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}

#[derive(Clone, Copy)]
enum Kind {
    Empty,
    Decide,
    Batch(usize),
    /// `POST /access/v1/evaluation`, over h2c (true) or HTTP/1.1.
    HttpDecide(bool),
    /// `POST /access/v1/evaluations` of n items, over HTTP/1.1, with each decision's reason
    /// `context` (true) or without it (`options.include_context: false`).
    HttpBatch(usize, bool),
    /// `IsAuthorized` on the requests a route maps.
    RoutedDecide,
    /// Envoy's ext_authz `Check` on the same requests, as HTTP requests.
    ExtAuthz,
}

/// A request of the mix and the ext_authz check of the HTTP request a route maps it from.
type Routed = Arc<Vec<(pb::IsAuthorizedRequest, CheckRequest)>>;

/// The mix's requests without a context that some route maps, as (request, check).
fn routed(asks: &[pb::IsAuthorizedRequest], routes: &crate::engine::pack::Routes) -> Routed {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    let list = routes.list();
    let mut out = Vec::new();
    for a in asks.iter().filter(|a| a.context_json.is_empty()) {
        let (Some(p), Some(act), Some(r)) = (&a.principal, &a.action, &a.resource) else {
            continue;
        };
        let Some((method, template, _, _, id)) = list
            .iter()
            .find(|(_, _, action, ty, _)| *action == act.id && *ty == r.r#type)
        else {
            continue;
        };
        let path: String = template
            .split('/')
            .skip(1)
            .map(
                |seg| match seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                    Some(x) if x == *id => format!("/{}", r.id),
                    Some(_) => "/x".to_string(),
                    None => format!("/{seg}"),
                },
            )
            .collect();
        let header = match &routes.principal_from {
            crate::engine::pack::PrincipalFrom::Header(h) => h.clone(),
            crate::engine::pack::PrincipalFrom::Claim(_) => continue,
        };
        let check = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.to_string(),
                        path,
                        headers: [(header, p.id.clone())].into_iter().collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        out.push((a.clone(), check));
    }
    Arc::new(out)
}

/// The AuthZEN body of one request (Cedar names: every type answers to them).
fn authzen_body(a: &pb::IsAuthorizedRequest) -> serde_json::Value {
    let e = |u: &Option<pb::EntityUid>| {
        let u = u.as_ref().expect("generated requests name both sides");
        serde_json::json!({"type": u.r#type, "id": u.id})
    };
    let mut body = serde_json::json!({
        "subject": e(&a.principal),
        "action": {"name": a.action.as_ref().map_or("", |x| x.id.as_str())},
        "resource": e(&a.resource),
    });
    if !a.context_json.is_empty() {
        body["context"] = serde_json::from_str(&a.context_json).unwrap_or_default();
    }
    body
}

/// The body of an AuthZEN `evaluations` call of these requests, with or without reasons.
fn evaluations_body(asks: &[pb::IsAuthorizedRequest], reasons: bool) -> serde_json::Value {
    let items: Vec<serde_json::Value> = asks.iter().map(authzen_body).collect();
    let mut body = serde_json::json!({ "evaluations": items });
    if !reasons {
        body["options"] = serde_json::json!({"include_context": false});
    }
    body
}

/// One HTTP connection of the load tool.
enum HttpConn {
    H1(hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<http_body_util::Full<hyper::body::Bytes>>),
}

impl HttpConn {
    async fn open(addr: &str, h2: bool) -> Result<HttpConn, String> {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        let bad = |e: hyper::Error| format!("HTTP handshake with {addr}: {e}");
        Ok(if h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(bad)?;
            tokio::spawn(conn);
            HttpConn::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(bad)?;
            tokio::spawn(conn);
            HttpConn::H1(s)
        })
    }

    /// POSTs a JSON body; returns the response body, refusing any status but 200.
    async fn post(&mut self, addr: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        let h2 = matches!(self, HttpConn::H2(_));
        let uri = if h2 {
            format!("http://{addr}{path}")
        } else {
            path.to_string()
        };
        let req = hyper::Request::post(uri)
            .header("host", addr)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(
                hyper::body::Bytes::copy_from_slice(body),
            ))
            .map_err(|e| e.to_string())?;
        let res = match self {
            HttpConn::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            HttpConn::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| format!("POST {path}: {e}"))?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(format!(
                "POST {path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        Ok(bytes.to_vec())
    }
}

/// A valid AuthZEN decision: a boolean and no evaluation errors.
fn check_http(d: &serde_json::Value) -> Result<(), String> {
    if !d["decision"].is_boolean() || d["context"].get("errors").is_some() {
        return Err(format!("invalid AuthZEN answer {d}"));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    name: &str,
    kind: Kind,
    channels: &[Channel],
    asks: Arc<Vec<pb::IsAuthorizedRequest>>,
    concurrency: usize,
    duration: Duration,
    pid: Option<u32>,
    http: Option<&str>,
    routed: &Routed,
) -> Result<Figures, String> {
    // Warm-up, then the measured window.
    let _ = drive(
        kind,
        channels,
        asks.clone(),
        concurrency,
        Duration::from_millis(500),
        http,
        routed,
    )
    .await?;
    let cpu_before = pid.and_then(cpu_time);
    let started = Instant::now();
    let (mut lat, calls, decisions) =
        drive(kind, channels, asks, concurrency, duration, http, routed).await?;
    let elapsed = started.elapsed();
    let cpu_after = pid.and_then(cpu_time);
    lat.sort_unstable();
    let q = |f: f64| {
        lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let cpu_per_call = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if decisions > 0 => Some((a - b) / decisions as u32),
        _ => None,
    };
    Ok(Figures {
        name: name.to_string(),
        concurrency,
        calls,
        per_second: decisions as f64 / elapsed.as_secs_f64(),
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        cpu_per_call,
    })
}

/// Runs `concurrency` loops for `duration`; returns latencies, calls, and decisions (calls
/// times the batch size).
async fn drive(
    kind: Kind,
    channels: &[Channel],
    asks: Arc<Vec<pb::IsAuthorizedRequest>>,
    concurrency: usize,
    duration: Duration,
    http: Option<&str>,
    routed: &Routed,
) -> Result<(Vec<Duration>, u64, u64), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // h2c is used as gRPC is: as many connections as gRPC channels, streams multiplexed on
    // them (HTTP/1.1 needs a connection per call in flight).
    let mut h2_conns = Vec::new();
    if matches!(kind, Kind::HttpDecide(true)) {
        for _ in 0..channels.len() {
            if let HttpConn::H2(s) = HttpConn::open(http.unwrap_or_default(), true).await? {
                h2_conns.push(s);
            }
        }
    }
    for t in 0..concurrency {
        let channel = channels[t % channels.len()].clone();
        let asks = asks.clone();
        let routed = routed.clone();
        let stop = stop.clone();
        let addr = http.unwrap_or_default().to_string();
        let mut conn = match kind {
            Kind::HttpDecide(true) => Some(HttpConn::H2(h2_conns[t % h2_conns.len()].clone())),
            Kind::HttpDecide(h2) => Some(HttpConn::open(&addr, h2).await?),
            Kind::HttpBatch(..) => Some(HttpConn::open(&addr, false).await?),
            _ => None,
        };
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut decisions = 0u64;
            let mut i = t * 7919;
            let mut authz = AuthorizerClient::new(channel.clone());
            let mut ext = AuthorizationClient::new(channel.clone());
            let mut health = HealthClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match kind {
                    Kind::Empty => {
                        health
                            .check(HealthCheckRequest {
                                service: String::new(),
                            })
                            .await
                            .map_err(|e| format!("health check failed: {e}"))?;
                        decisions += 1;
                    }
                    Kind::Decide => {
                        i = (i + 1) % asks.len();
                        let r = authz
                            .is_authorized(asks[i].clone())
                            .await
                            .map_err(|e| format!("IsAuthorized failed: {e}"))?
                            .into_inner();
                        check_answer(&r, &asks[i])?;
                        decisions += 1;
                    }
                    Kind::Batch(n) => {
                        i = (i + n) % (asks.len() - n);
                        let requests = asks[i..i + n].to_vec();
                        let r = authz
                            .batch_is_authorized(pb::BatchIsAuthorizedRequest {
                                requests,
                                min_revision: 0,
                            })
                            .await
                            .map_err(|e| format!("BatchIsAuthorized failed: {e}"))?
                            .into_inner();
                        if r.responses.len() != n {
                            return Err(format!("batch of {n} answered {}", r.responses.len()));
                        }
                        for (resp, ask) in r.responses.iter().zip(&asks[i..i + n]) {
                            check_answer(resp, ask)?;
                        }
                        decisions += n as u64;
                    }
                    Kind::HttpDecide(_) => {
                        i = (i + 1) % asks.len();
                        let body = authzen_body(&asks[i]).to_string();
                        let conn = conn.as_mut().expect("opened above");
                        let r = conn
                            .post(&addr, "/access/v1/evaluation", body.as_bytes())
                            .await?;
                        let d: serde_json::Value =
                            serde_json::from_slice(&r).map_err(|e| e.to_string())?;
                        check_http(&d)?;
                        decisions += 1;
                    }
                    Kind::RoutedDecide => {
                        i = (i + 1) % routed.len();
                        let r = authz
                            .is_authorized(routed[i].0.clone())
                            .await
                            .map_err(|e| format!("IsAuthorized failed: {e}"))?
                            .into_inner();
                        check_answer(&r, &routed[i].0)?;
                        decisions += 1;
                    }
                    Kind::ExtAuthz => {
                        i = (i + 1) % routed.len();
                        let r = ext
                            .check(routed[i].1.clone())
                            .await
                            .map_err(|e| format!("ext_authz Check failed: {e}"))?
                            .into_inner();
                        // OK (0) or PERMISSION_DENIED (7): a decision, not a refusal.
                        let code = r.status.as_ref().map_or(-1, |s| s.code);
                        if code != 0 && code != 7 {
                            return Err(format!("ext_authz answered {r:?}"));
                        }
                        decisions += 1;
                    }
                    Kind::HttpBatch(n, reasons) => {
                        i = (i + n) % (asks.len() - n);
                        let body = evaluations_body(&asks[i..i + n], reasons).to_string();
                        let conn = conn.as_mut().expect("opened above");
                        let r = conn
                            .post(&addr, "/access/v1/evaluations", body.as_bytes())
                            .await?;
                        let d: serde_json::Value =
                            serde_json::from_slice(&r).map_err(|e| e.to_string())?;
                        let answers = d["evaluations"].as_array().map_or(0, Vec::len);
                        if answers != n {
                            return Err(format!("evaluations of {n} answered {answers}"));
                        }
                        for a in d["evaluations"].as_array().into_iter().flatten() {
                            check_http(a)?;
                            if !reasons && a.as_object().map_or(0, |o| o.len()) != 1 {
                                return Err(format!("a reason where none was asked: {a}"));
                            }
                        }
                        decisions += n as u64;
                    }
                }
                lat.push(started.elapsed());
            }
            Ok::<_, String>((lat, decisions))
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut decisions = 0;
    for t in tasks {
        let (lat, d) = t.await.map_err(|e| e.to_string())??;
        all.extend(lat);
        decisions += d;
    }
    let calls = all.len() as u64;
    Ok((all, calls, decisions))
}

/// A valid answer: ALLOW or DENY, a policy version, no evaluation errors.
fn check_answer(r: &pb::IsAuthorizedResponse, ask: &pb::IsAuthorizedRequest) -> Result<(), String> {
    let valid = r.decision == pb::Decision::Allow as i32 || r.decision == pb::Decision::Deny as i32;
    if !valid || r.policy_version.is_empty() || !r.errors.is_empty() {
        return Err(format!("invalid answer {r:?} to {ask:?}"));
    }
    Ok(())
}

fn to_proto(a: &Ask) -> pb::IsAuthorizedRequest {
    let uid = |ty: &str, id: &str| {
        Some(pb::EntityUid {
            r#type: ty.to_string(),
            id: id.to_string(),
        })
    };
    pb::IsAuthorizedRequest {
        principal: uid("Blue::User", &a.principal),
        action: uid("Blue::Action", a.action),
        resource: uid(a.resource_type, &a.resource),
        context_json: a.context_json.clone(),
        entities_json: String::new(),
        min_revision: 0,
        explain: false,
    }
}

/// Runs every phase and returns the figures, printing them as they come.
pub async fn run(cfg: &BenchConfig) -> Result<Vec<Figures>, String> {
    let started = Instant::now();
    let g = gen::generate(cfg.scale, cfg.seed, &mut |_| {});
    let asks: Vec<pb::IsAuthorizedRequest> = workload::mix(&g, cfg.seed ^ 0x5eed, 50_000)
        .iter()
        .map(to_proto)
        .collect();
    let asks = Arc::new(asks);
    eprintln!(
        "request mix: {} requests over data of scale {} (seed {}), drawn in {:.1?}",
        asks.len(),
        cfg.scale,
        cfg.seed,
        started.elapsed()
    );
    let endpoint = format!("http://{}", cfg.addr);
    let mut channels = Vec::new();
    for _ in 0..cfg.concurrency.clamp(1, 4) {
        let ch = Channel::from_shared(endpoint.clone())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", cfg.addr))?;
        channels.push(ch);
    }
    println!("{HEADER}");
    let mut out = Vec::new();
    let mut phases: Vec<(&str, Kind, usize)> = vec![
        ("empty call (health Check)", Kind::Empty, cfg.concurrency),
        ("IsAuthorized", Kind::Decide, cfg.concurrency),
        ("empty call (health Check)", Kind::Empty, 1),
        ("IsAuthorized", Kind::Decide, 1),
        ("BatchIsAuthorized (decisions)", Kind::Batch(cfg.batch), 1),
    ];
    if cfg.http_addr.is_some() {
        phases.extend([
            (
                "AuthZEN evaluation HTTP/1.1",
                Kind::HttpDecide(false),
                cfg.concurrency,
            ),
            (
                "AuthZEN evaluation h2c",
                Kind::HttpDecide(true),
                cfg.concurrency,
            ),
            ("AuthZEN evaluation HTTP/1.1", Kind::HttpDecide(false), 1),
            ("AuthZEN evaluation h2c", Kind::HttpDecide(true), 1),
            (
                "AuthZEN evaluations (decs)",
                Kind::HttpBatch(cfg.batch, true),
                1,
            ),
            (
                "AuthZEN evals, no reasons",
                Kind::HttpBatch(cfg.batch, false),
                1,
            ),
        ]);
    }
    let routed = match &cfg.routes {
        Some(routes) => {
            let r = routed(&asks, routes);
            if r.is_empty() {
                return Err("no request of the mix maps to a route".into());
            }
            eprintln!("{} requests of the mix map to a route", r.len());
            phases.extend([
                ("IsAuthorized (routed)", Kind::RoutedDecide, cfg.concurrency),
                ("ext_authz Check (routed)", Kind::ExtAuthz, cfg.concurrency),
                ("IsAuthorized (routed)", Kind::RoutedDecide, 1),
                ("ext_authz Check (routed)", Kind::ExtAuthz, 1),
            ]);
            r
        }
        None => Arc::new(Vec::new()),
    };
    let count = phases.len();
    for (i, (name, kind, conc)) in phases.into_iter().enumerate() {
        // A ticking line on a terminal while the phase runs: which phase, how far.
        let label = format!("phase {} of {count}: {name} x{conc}, seconds", i + 1);
        let seconds = cfg.duration.as_secs().max(1);
        let ticker = tokio::spawn(async move {
            let mut progress = Progress::new(label, Some(seconds));
            let started = Instant::now();
            loop {
                progress.set(started.elapsed().as_secs());
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        });
        let f = run_phase(
            name,
            kind,
            &channels,
            asks.clone(),
            conc,
            cfg.duration,
            cfg.pid,
            cfg.http_addr.as_deref(),
            &routed,
        )
        .await;
        ticker.abort();
        let _ = ticker.await;
        progress::clear_line();
        let f = f?;
        println!("{}", f.line());
        out.push(f);
    }
    if let Some((data_addr, token)) = &cfg.data {
        let conc = cfg.concurrency.min(4);
        let idle = run_phase(
            "IsAuthorized, no writes",
            Kind::Decide,
            &channels,
            asks.clone(),
            conc,
            cfg.duration,
            None,
            None,
            &routed,
        )
        .await?;
        println!("{}", idle.line());
        let writer = Writer::start(data_addr, token, cfg.write_ops, cfg.write_roles).await?;
        let loaded = run_phase(
            &format!("IsAuthorized, {}-op writes", cfg.write_ops),
            Kind::Decide,
            &channels,
            asks.clone(),
            conc,
            cfg.duration,
            None,
            None,
            &routed,
        )
        .await?;
        let writes = writer.stop().await?;
        println!("{}", loaded.line());
        // The same writer with no decisions beside it: what a write costs on its own.
        let alone = Writer::start(data_addr, token, cfg.write_ops, cfg.write_roles).await?;
        tokio::time::sleep(cfg.duration).await;
        let alone = alone.stop().await?;
        println!(
            "writes alone: {} batches of {} operations in {:.1} s, commit p50 {:.1} ms",
            alone.len(),
            cfg.write_ops,
            cfg.duration.as_secs_f64(),
            alone
                .get(alone.len() / 2)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        );
        println!(
            "during the writes: {} batches of {} operations, commit p50 {:.1} ms, max {:.1} ms; \
             decisions p99 {:.2}x and p99.9 {:.2}x of those without writes",
            writes.len(),
            cfg.write_ops,
            writes
                .get(writes.len() / 2)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3),
            writes.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            us(loaded.p99) / us(idle.p99).max(f64::MIN_POSITIVE),
            us(loaded.p999) / us(idle.p999).max(f64::MIN_POSITIVE),
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "under load (concurrency {}): throughput {:.2}x the empty call's{}",
        cfg.concurrency,
        ratio(out[1].per_second, out[0].per_second),
        match (out[1].cpu_per_call, out[0].cpu_per_call) {
            (Some(d), Some(e)) => format!(
                ", server CPU per call {:.2}x",
                ratio(d.as_secs_f64(), e.as_secs_f64())
            ),
            _ => String::new(),
        }
    );
    println!(
        "one call at a time: p50 {:.2}x the empty call's",
        ratio(us(out[3].p50), us(out[2].p50))
    );
    if out.len() >= 11 {
        for (proto, load, one) in [("HTTP/1.1", 5, 7), ("h2c", 6, 8)] {
            println!(
                "AuthZEN evaluation over {proto}: throughput {:.2}x IsAuthorized's, p50 one at a time {:.2}x",
                ratio(out[load].per_second, out[1].per_second),
                ratio(us(out[one].p50), us(out[3].p50)),
            );
        }
        println!(
            "AuthZEN evaluations of {}: {:.0} decisions/s{} (BatchIsAuthorized: {:.0}/s)",
            cfg.batch,
            out[9].per_second,
            match out[9].cpu_per_call {
                Some(c) => format!(
                    ", {:.0} decisions per server CPU second",
                    1.0 / c.as_secs_f64()
                ),
                None => String::new(),
            },
            out[4].per_second
        );
        let cpu = |f: &Figures| f.cpu_per_call.map(|c| c.as_secs_f64());
        println!(
            "AuthZEN evaluations of {} without reasons: {:.2}x the decisions/s with them{}",
            cfg.batch,
            ratio(out[10].per_second, out[9].per_second),
            match (cpu(&out[10]), cpu(&out[9])) {
                (Some(a), Some(b)) => format!(", server CPU per decision {:.2}x", ratio(a, b)),
                _ => String::new(),
            }
        );
        if let Some(http) = &cfg.http_addr {
            let n = cfg.batch.min(asks.len());
            let mut conn = HttpConn::open(http, false).await?;
            let with = evaluations_body(&asks[..n], true).to_string();
            let without = evaluations_body(&asks[..n], false).to_string();
            let a = conn
                .post(http, "/access/v1/evaluations", with.as_bytes())
                .await?;
            let b = conn
                .post(http, "/access/v1/evaluations", without.as_bytes())
                .await?;
            println!(
                "AuthZEN evaluations of {n}: {} bytes answered with reasons, {} without ({:.0} and {:.0} bytes a decision)",
                a.len(),
                b.len(),
                a.len() as f64 / n as f64,
                b.len() as f64 / n as f64
            );
        }
    }
    Ok(out)
}

/// Writes batches of `ops` upserts to the data service in a loop, back to back, until
/// stopped; the same entities every time (the store does not grow), each batch a full commit.
/// With `roles`, every other batch gives each of them a role (`Role::"p0/comment"`) and the
/// next takes it away, so that every entity of every batch changes, ancestors and all;
/// without, each batch writes them again as they are.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Vec<Duration>, String>>,
}

impl Writer {
    async fn start(addr: &str, token: &str, ops: usize, roles: bool) -> Result<Writer, String> {
        use crate::service::grpc::pb::entity_store_client::EntityStoreClient;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to the data service at {addr}: {e}"))?;
        let mut client = EntityStoreClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the data token is not a valid header value".to_string())?;
        let batch = |parents: serde_json::Value| -> Vec<pb::WriteOp> {
            (0..ops)
                .map(|i| pb::WriteOp {
                    op: Some(pb::write_op::Op::UpsertJson(
                        serde_json::json!({
                            "uid": {"type": "Blue::User", "id": format!("bench-writer-{i}")},
                            "attrs": {}, "parents": parents
                        })
                        .to_string(),
                    )),
                })
                .collect()
        };
        let plain = batch(serde_json::json!([]));
        let batches = if roles {
            vec![
                batch(serde_json::json!([{"type": "Blue::Role", "id": "p0/comment"}])),
                plain,
            ]
        } else {
            vec![plain]
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut took = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let mut req = tonic::Request::new(pb::WriteEntitiesRequest {
                    ops: batches[took.len() % batches.len()].clone(),
                    ..Default::default()
                });
                req.metadata_mut().insert("authorization", header.clone());
                let started = Instant::now();
                client
                    .write_entities(req)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                took.push(started.elapsed());
            }
            took.sort_unstable();
            Ok(took)
        });
        Ok(Writer { stop, task })
    }

    /// Stops writing; each batch's time, sorted.
    async fn stop(self) -> Result<Vec<Duration>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.map_err(|e| e.to_string())?
    }
}
