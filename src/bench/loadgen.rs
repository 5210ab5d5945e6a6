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
use crate::bench::workload::{self, Ask};
use crate::service::grpc::pb::{self, authorizer_client::AuthorizerClient};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub addr: String,
    pub scale: f64,
    pub seed: u64,
    pub concurrency: usize,
    pub duration: Duration,
    pub batch: usize,
    pub pid: Option<u32>,
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
}

async fn run_phase(
    name: &str,
    kind: Kind,
    channels: &[Channel],
    asks: Arc<Vec<pb::IsAuthorizedRequest>>,
    concurrency: usize,
    duration: Duration,
    pid: Option<u32>,
) -> Result<Figures, String> {
    // Warm-up, then the measured window.
    let _ = drive(
        kind,
        channels,
        asks.clone(),
        concurrency,
        Duration::from_millis(500),
    )
    .await?;
    let cpu_before = pid.and_then(cpu_time);
    let started = Instant::now();
    let (mut lat, calls, decisions) = drive(kind, channels, asks, concurrency, duration).await?;
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
) -> Result<(Vec<Duration>, u64, u64), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let channel = channels[t % channels.len()].clone();
        let asks = asks.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut decisions = 0u64;
            let mut i = t * 7919;
            let mut authz = AuthorizerClient::new(channel.clone());
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
    let phases: Vec<(&str, Kind, usize)> = vec![
        ("empty call (health Check)", Kind::Empty, cfg.concurrency),
        ("IsAuthorized", Kind::Decide, cfg.concurrency),
        ("empty call (health Check)", Kind::Empty, 1),
        ("IsAuthorized", Kind::Decide, 1),
        ("BatchIsAuthorized (decisions)", Kind::Batch(cfg.batch), 1),
    ];
    for (name, kind, conc) in phases {
        let f = run_phase(
            name,
            kind,
            &channels,
            asks.clone(),
            conc,
            cfg.duration,
            cfg.pid,
        )
        .await?;
        println!("{}", f.line());
        out.push(f);
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
    Ok(out)
}
