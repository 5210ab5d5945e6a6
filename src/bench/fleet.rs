//! `blue-authz fleet-bench`: a fleet on a real PostgreSQL, measured. It starts replicas (this
//! binary, `serve --source`) in a fresh PostgreSQL schema and prints: write-to-visible on all
//! three (with commit notifications and polling only), write throughput with one writer and
//! four, decision latency on a replica idle and while it applies a steady stream of batches,
//! the catch-up rate of a replica that was stopped during a run of writes, and the time and
//! peak memory of a new replica's bootstrap from a full-scale source.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::service::grpc::pb::{
    self, authorizer_client::AuthorizerClient, entity_store_client::EntityStoreClient,
};

/// What the fleet benchmark needs.
#[derive(Debug, Clone)]
pub struct FleetBenchConfig {
    /// PostgreSQL connection parameters (key=value form), without a search path.
    pub pg: String,
    /// The PostgreSQL schema the fleet works in (dropped and created).
    pub schema: String,
    pub policies: PathBuf,
    /// Written into the empty source by the first replica.
    pub seed: PathBuf,
    /// Scratch directory for the replicas' databases.
    pub dir: PathBuf,
    /// Measured seconds of each throughput and latency phase.
    pub seconds: f64,
    /// Writes the stopped replica must catch up on (0: skip).
    pub catch_up_writes: u64,
    /// Scale of the bootstrap phase's generated data (0: skip).
    pub bootstrap_scale: f64,
}

const TOKEN: &str = "fleet-bench";

/// A replica process.
struct Replica {
    child: Child,
    decisions: std::net::SocketAddr,
    data: std::net::SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FleetBenchConfig {
    fn url(&self) -> String {
        self.url_of(&self.schema)
    }

    fn url_of(&self, schema: &str) -> String {
        format!("{} options=-csearch_path={schema}", self.pg)
    }

    /// The schema of the control replica's own, idle source.
    fn idle_schema(&self) -> String {
        format!("{}_idle", self.schema)
    }

    fn spawn(&self, name: &str, extra: &[&str]) -> Result<Replica, String> {
        self.spawn_on(&self.url(), name, extra)
    }

    fn spawn_on(&self, url: &str, name: &str, extra: &[&str]) -> Result<Replica, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let db = self.dir.join(format!("{name}.redb"));
        let mut child = Command::new(exe)
            .arg("--policies")
            .arg(&self.policies)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-listen",
                "127.0.0.1:0",
                "--http-listen",
                "",
            ])
            .arg("--db")
            .arg(&db)
            .args(["--source", url, "--watch", "false"])
            .args(extra)
            .env("BLUE_AUTHZ_SEED", &self.seed)
            .env("BLUE_AUTHZ_DATA_TOKEN", TOKEN)
            .env(
                "BLUE_AUTHZ_LOG",
                "warn,blue_authz::service::server=info,blue_authz::cli=info",
            )
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start a replica: {e}"))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    // Keep draining so the replica never blocks on a full pipe.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(600);
        let (decisions, data) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| format!("replica {name} did not start"))?;
            // The structured start-up line, once it serves: every bound address.
            if let Ok(started) = serde_json::from_str::<serde_json::Value>(&line) {
                if started["blue_authz"] == "serving" {
                    let addr = |k: &str| -> Option<std::net::SocketAddr> {
                        started[k].as_str().and_then(|a| a.parse().ok())
                    };
                    break (addr("decisions"), addr("data"));
                }
            }
            if line.contains("ERROR") || line.starts_with("error") {
                return Err(format!("replica {name}: {line}"));
            }
        };
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Ok(Replica {
            child,
            decisions: decisions.ok_or("no decision address")?,
            data: data.ok_or("no data address")?,
        })
    }
}

#[derive(Clone)]
struct Bearer;

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {TOKEN}").parse().expect("ascii");
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

type Data = EntityStoreClient<InterceptedService<Channel, Bearer>>;

async fn channel(addr: std::net::SocketAddr) -> Result<Channel, String> {
    Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())
}

async fn data(r: &Replica) -> Result<Data, String> {
    Ok(EntityStoreClient::with_interceptor(
        channel(r.data).await?,
        Bearer,
    ))
}

async fn decisions(r: &Replica) -> Result<AuthorizerClient<Channel>, String> {
    Ok(AuthorizerClient::new(channel(r.decisions).await?))
}

/// One small batch: a record upsert.
fn batch(id: &str) -> pb::WriteEntitiesRequest {
    let json = serde_json::json!({"uid": {"type": "Blue::Record", "id": id}, "attrs": {"project": {"type": "Blue::Project", "id": "apollo"}, "creator": {"type": "Blue::User", "id": "pat"}}, "parents": []});
    pb::WriteEntitiesRequest {
        ops: vec![pb::WriteOp {
            op: Some(pb::write_op::Op::UpsertJson(json.to_string())),
        }],
        ..Default::default()
    }
}

async fn write(d: &mut Data, id: &str) -> Result<u64, String> {
    d.write_entities(batch(id))
        .await
        .map(|r| r.into_inner().revision)
        .map_err(|e| format!("write: {e}"))
}

fn ask(min_revision: u64) -> pb::IsAuthorizedRequest {
    let uid = |t: &str, i: &str| {
        Some(pb::EntityUid {
            r#type: t.into(),
            id: i.into(),
        })
    };
    pb::IsAuthorizedRequest {
        principal: uid("Blue::User", "max"),
        action: uid("Blue::Action", "editWiki"),
        resource: uid("Blue::Project", "apollo"),
        min_revision,
        ..Default::default()
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Write through A, then the time until a decision at that revision has answered on each of
/// the replicas.
async fn visibility(replicas: &[Replica], writes: usize, label: &str) -> Result<(), String> {
    let mut d = data(&replicas[0]).await?;
    let mut clients = Vec::new();
    for r in replicas {
        clients.push(decisions(r).await?);
    }
    let mut seen = Vec::with_capacity(writes);
    let mut acked = Vec::with_capacity(writes);
    let mut after_ack = Vec::with_capacity(writes);
    let mut rng = crate::bench::gen::Rng::new(7);
    for i in 0..writes {
        // A random pause, so that writes do not fall in step with the replicas' polls.
        tokio::time::sleep(Duration::from_micros(rng.below(50_000) as u64)).await;
        let started = Instant::now();
        let rev = write(&mut d, &format!("vis-{label}-{i}")).await?;
        acked.push(started.elapsed());
        let ack = Instant::now();
        let waits = clients.iter_mut().map(|c| {
            let mut c = c.clone();
            async move { c.is_authorized(ask(rev)).await.map(|r| r.into_inner()) }
        });
        for answer in futures_join_all(waits).await {
            let answer = answer.map_err(|e| format!("decision: {e}"))?;
            if answer.revision < rev {
                return Err(format!("answered at {} < {rev}", answer.revision));
            }
        }
        seen.push(started.elapsed());
        after_ack.push(ack.elapsed());
    }
    seen.sort_unstable();
    acked.sort_unstable();
    after_ack.sort_unstable();
    println!(
        "write to visible on all {} replicas ({label}), {writes} writes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms from the write's start; after its acknowledgement p50 {:.1} ms, p99 {:.1} ms (the write itself: p50 {:.1} ms, p99 {:.1} ms)",
        replicas.len(),
        ms(quantile(&seen, 0.5)),
        ms(quantile(&seen, 0.99)),
        ms(*seen.last().unwrap_or(&Duration::ZERO)),
        ms(quantile(&after_ack, 0.5)),
        ms(quantile(&after_ack, 0.99)),
        ms(quantile(&acked, 0.5)),
        ms(quantile(&acked, 0.99)),
    );
    Ok(())
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// The batches a second the decision-latency figure asks replica C to apply.
const PACED_RATE: f64 = 500.0;
/// How many paced writers share that rate, alternately on A and B.
const PACED_WRITERS: usize = 8;

/// `writers` writers, spread over the replicas, for `seconds`: batches a second.
async fn throughput(
    replicas: &[Replica],
    writers: usize,
    seconds: f64,
    tag: &str,
) -> Result<f64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut d = data(&replicas[w % replicas.len()]).await?;
        let (stop, count) = (stop.clone(), count.clone());
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                write(&mut d, &format!("{tag}-{w}-{n}")).await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// Sequential decisions on one replica for `seconds`: sorted latencies.
async fn decision_latency(r: &Replica, seconds: f64) -> Result<Vec<Duration>, String> {
    let mut c = decisions(r).await?;
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let started = Instant::now();
        c.is_authorized(ask(0))
            .await
            .map_err(|e| format!("decision: {e}"))?;
        lat.push(started.elapsed());
    }
    lat.sort_unstable();
    Ok(lat)
}

/// A writer paced at `rate` batches a second through `r` until `stop`.
fn paced_writer(
    mut d: Data,
    rate: f64,
    stop: Arc<AtomicBool>,
    tag: usize,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            n += 1;
            write(&mut d, &format!("p{tag}-{n}")).await?;
        }
        Ok(n)
    })
}

async fn revision_of(d: &mut Data) -> Result<u64, String> {
    d.get_data_status(pb::GetDataStatusRequest {})
        .await
        .map(|s| s.into_inner().revision)
        .map_err(|e| e.to_string())
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn reset_schema(cfg: &FleetBenchConfig) -> Result<(), String> {
    reset(cfg, &cfg.schema).await
}

async fn reset(cfg: &FleetBenchConfig, schema: &str) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(&cfg.pg, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL ({}): {e}", cfg.pg))?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0};",
            schema
        ))
        .await
        .map_err(|e| e.to_string())
}

pub async fn run(cfg: &FleetBenchConfig) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| e.to_string())?;
    reset_schema(cfg).await?;
    let s = cfg.seconds;
    let notified = [
        cfg.spawn("a", &[])?,
        cfg.spawn("b", &[])?,
        cfg.spawn("c", &[])?,
    ];
    visibility(&notified, 500, "commit notifications").await?;
    let polled = [
        cfg.spawn(
            "pa",
            &["--source-notify", "false", "--source-poll-ms", "100"],
        )?,
        cfg.spawn(
            "pb",
            &["--source-notify", "false", "--source-poll-ms", "100"],
        )?,
        cfg.spawn(
            "pc",
            &["--source-notify", "false", "--source-poll-ms", "100"],
        )?,
    ];
    visibility(&polled[..], 100, "polling every 100 ms, no notifications").await?;
    drop(polled);

    // 16: how group commit scales with a replica's concurrent writers.
    for writers in [1, 4, 16] {
        let rate = throughput(&notified, writers, s, &format!("tp{writers}")).await?;
        println!("write throughput through PostgreSQL, {writers} writer(s) over 3 replicas: {rate:.0} batches/s");
    }

    // Decision latency on C, idle and while it applies 500 batches a second written on A and B.
    let idle = decision_latency(&notified[2], s).await?;
    // The control: a replica of another, idle source, measured in the same slices under the
    // same machine load, so that the cost of applying is told apart from sharing two cores.
    reset(cfg, &cfg.idle_schema()).await?;
    let control = cfg.spawn_on(&cfg.url_of(&cfg.idle_schema()), "control", &[])?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut dc = data(&notified[2]).await?;
    let before = revision_of(&mut dc).await?;
    // Eight writers at 62.5 a second each, four on A and four on B: one writer waits out each
    // commit's round trips and cannot keep 500 up alone; a replica's concurrent writers share
    // its group commits.
    let mut writers = Vec::new();
    for w in 0..PACED_WRITERS {
        let d = data(&notified[w % 2]).await?;
        let rate = PACED_RATE / PACED_WRITERS as f64;
        writers.push(paced_writer(d, rate, stop.clone(), w));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (mut busy, mut calm) = (Vec::new(), Vec::new());
    let slices = (s * 4.0).ceil() as usize;
    for _ in 0..slices {
        busy.extend(decision_latency(&notified[2], 0.25).await?);
        calm.extend(decision_latency(&control, 0.25).await?);
    }
    busy.sort_unstable();
    calm.sort_unstable();
    let applied = revision_of(&mut dc).await? - before;
    let applied_rate = applied as f64 / (started.elapsed().as_secs_f64() + 0.3);
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.map_err(|e| e.to_string())??;
    }
    drop(control);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (i50, i99) = (quantile(&idle, 0.5), quantile(&idle, 0.99));
    let (b50, b99) = (quantile(&busy, 0.5), quantile(&busy, 0.99));
    let (c50, c99) = (quantile(&calm, 0.5), quantile(&calm, 0.99));
    println!(
        "decision latency: replica applying {applied_rate:.0} batches/s p50 {:.0} µs p99 {:.0} µs; idle replica (another source) in the same slices p50 {:.0} µs p99 {:.0} µs: ratio p50 {:.2}x, p99 {:.2}x; the applying replica before the writes began (machine idle) p50 {:.0} µs p99 {:.0} µs",
        us(b50),
        us(b99),
        us(c50),
        us(c99),
        us(b50) / us(c50),
        us(b99) / us(c99),
        us(i50),
        us(i99),
    );

    let [a, b, c] = notified;
    if cfg.catch_up_writes > 0 {
        drop(c);
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let per = cfg.catch_up_writes.div_ceil(4);
        for w in 0..4u64 {
            let mut d = data(if w % 2 == 0 { &a } else { &b }).await?;
            let (stop, count) = (stop.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..per {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    write(&mut d, &format!("cu-{w}-{n}")).await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, String>(())
            }));
        }
        let wrote = Instant::now();
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        let mut da = data(&a).await?;
        let head = revision_of(&mut da).await?;
        println!(
            "{} writes while replica C was stopped, in {:.1} s",
            count.load(Ordering::Relaxed),
            wrote.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let c = cfg.spawn("c", &[])?;
        let serving = started.elapsed();
        let mut dc = data(&c).await?;
        let from = revision_of(&mut dc).await?;
        loop {
            let at = revision_of(&mut dc).await?;
            if at >= head {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        println!(
            "catch-up: replica C restarted at revision {from}, serving after {:.2} s, reached {head} after {:.2} s: {:.0} batches/s",
            serving.as_secs_f64(),
            took.as_secs_f64(),
            (head - from) as f64 / (took - serving).as_secs_f64().max(1e-6)
        );
    }
    drop((a, b));

    if cfg.bootstrap_scale > 0.0 {
        bootstrap(cfg).await?;
    }
    Ok(())
}

/// A full-scale source, then a new replica's bootstrap from it: time and peak memory.
async fn bootstrap(cfg: &FleetBenchConfig) -> Result<(), String> {
    reset_schema(cfg).await?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let file = cfg.dir.join("full.json");
    let run = |args: Vec<String>| -> Result<(), String> {
        let out = Command::new(&exe)
            .arg("--policies")
            .arg(&cfg.policies)
            .args(&args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let started = Instant::now();
    run(vec![
        "gen".into(),
        "--scale".into(),
        cfg.bootstrap_scale.to_string(),
        "--out".into(),
        file.display().to_string(),
    ])?;
    run(vec![
        "import".into(),
        file.display().to_string(),
        "--source".into(),
        cfg.url(),
    ])?;
    println!(
        "full-scale source (scale {}) generated and imported in {:.0} s",
        cfg.bootstrap_scale,
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(cfg.dir.join("new.redb"));
    let started = Instant::now();
    let r = cfg.spawn("new", &["--seed", ""])?;
    let took = started.elapsed();
    let mut d = data(&r).await?;
    let revision = revision_of(&mut d).await?;
    println!(
        "bootstrap of a new replica from PostgreSQL: serving at revision {revision} after {:.1} s, peak memory {:.0} MB",
        took.as_secs_f64(),
        peak_rss_mb(r.child.id()).unwrap_or(f64::NAN)
    );
    Ok(())
}

/// The default scratch directory.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("blue-authz-fleet-bench")
}

/// Removes the scratch directory.
pub fn clean(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
