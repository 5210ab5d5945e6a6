//! The plan benchmark behind `blue-authz plan-bench`: against a running service holding `gen`
//! data and a real PostgreSQL holding the same records (`id`, `project_id`, `creator_id`,
//! `title`, `due`, indexed on `project_id`, `creator_id` and `due`), in one run and for the
//! same users: the empty gRPC call (health `Check`), one `IsAuthorized` for `viewRecord` (the
//! Authorizer path itself), `PlanResources` for `viewRecord`, and the
//! list page "the first 50 records the user may see, by due date" two ways: the plan's SQL in
//! the query, or `ListResources` (every page) and `WHERE id = ANY(…)`. The two pages are
//! compared row for row before anything is timed.

use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::bench::gen;
use crate::service::grpc::pb::{self, authorizer_client::AuthorizerClient, sql_param};

/// What to run against.
pub struct PlanBenchConfig {
    pub addr: String,
    pub pg: String,
    pub scale: f64,
    pub seed: u64,
    pub users: usize,
    pub rounds: usize,
    /// The server's process, for its CPU time per call.
    pub pid: Option<u32>,
}

/// The CPU time every thread of a process has run, in nanoseconds (schedstat's first field).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(name: &str, mut t: Vec<Duration>) -> Duration {
    t.sort();
    let (p50, p99) = (quantile(&t, 0.5), quantile(&t, 0.99));
    println!(
        "{name:<58} p50 {:>9.1} µs   p99 {:>9.1} µs   ({} calls)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        t.len()
    );
    p50
}

fn uid(ty: &str, id: &str) -> Option<pb::EntityUid> {
    Some(pb::EntityUid {
        r#type: ty.into(),
        id: id.into(),
    })
}

/// Loads the records table unless it already holds the generated records.
async fn load(pg: &tokio_postgres::Client, cfg: &PlanBenchConfig) -> Result<Vec<String>, Error> {
    let (mut ids, mut projects, mut creators, mut users) = (vec![], vec![], vec![], vec![]);
    gen::generate(cfg.scale, cfg.seed, &mut |e| {
        let id = e["uid"]["id"].as_str().unwrap_or_default().to_string();
        match e["uid"]["type"].as_str() {
            Some("Blue::Record") => {
                let of = |a: &str| {
                    let v = &e["attrs"][a];
                    v.get("__entity").unwrap_or(v)["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                };
                projects.push(of("project"));
                creators.push(of("creator"));
                ids.push(id);
            }
            Some("Blue::User") => users.push(id),
            _ => {}
        }
    });
    pg.batch_execute("CREATE SCHEMA IF NOT EXISTS plan_bench; SET search_path TO plan_bench")
        .await?;
    let have: i64 = match pg.query_one("SELECT count(*) FROM records", &[]).await {
        Ok(row) => row.get(0),
        Err(_) => -1,
    };
    if have != ids.len() as i64 {
        let started = Instant::now();
        pg.batch_execute(
            "DROP TABLE IF EXISTS records;
             CREATE TABLE records (id text PRIMARY KEY, project_id text NOT NULL,
               creator_id text NOT NULL, title text NOT NULL, due date NOT NULL)",
        )
        .await?;
        for chunk in 0..ids.len().div_ceil(100_000) {
            let r = chunk * 100_000..((chunk + 1) * 100_000).min(ids.len());
            pg.execute(
                "INSERT INTO records SELECT u.id, u.p, u.c, 'Record ' || u.id,
                   date '2027-01-01' + (abs(hashtext(u.id)) % 365)
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, p, c)",
                &[&&ids[r.clone()], &&projects[r.clone()], &&creators[r]],
            )
            .await?;
        }
        pg.batch_execute(
            "CREATE INDEX ON records (project_id); CREATE INDEX ON records (creator_id);
             CREATE INDEX ON records (due, id); ANALYZE records",
        )
        .await?;
        println!(
            "loaded {} records into plan_bench.records in {:.1} s",
            ids.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let step = (users.len() / cfg.users.max(1)).max(1);
    Ok(users.into_iter().step_by(step).take(cfg.users).collect())
}

fn params(ps: &[pb::SqlParam]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    ps.iter()
        .filter_map(|p| -> Option<Box<dyn ToSql + Sync + Send>> {
            Some(match p.kind.clone()? {
                sql_param::Kind::Text(s) => Box::new(s),
                sql_param::Kind::Long(n) => Box::new(n),
                sql_param::Kind::Boolean(b) => Box::new(b),
                sql_param::Kind::Texts(t) => Box::new(t.items),
                sql_param::Kind::Longs(t) => Box::new(t.items),
                sql_param::Kind::Bools(t) => Box::new(t.items),
            })
        })
        .collect()
}

struct Calls {
    authz: AuthorizerClient<tonic::transport::Channel>,
}

impl Calls {
    async fn plan(&mut self, user: &str) -> Result<pb::PlanResourcesResponse, Error> {
        Ok(self
            .authz
            .plan_resources(pb::PlanResourcesRequest {
                principal: uid("Blue::User", user),
                action: uid("Blue::Action", "viewRecord"),
                resource_type: "Blue::Record".into(),
                sql_columns: [
                    ("project", "project_id"),
                    ("creator", "creator_id"),
                    ("id", "id"),
                ]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    /// One decision on one record, for the cost of the Authorizer service's path itself.
    async fn decide(&mut self, user: &str, record: &str) -> Result<i32, Error> {
        Ok(self
            .authz
            .is_authorized(pb::IsAuthorizedRequest {
                principal: uid("Blue::User", user),
                action: uid("Blue::Action", "viewRecord"),
                resource: uid("Blue::Record", record),
                ..Default::default()
            })
            .await?
            .into_inner()
            .decision)
    }

    async fn list(&mut self, user: &str) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .authz
                .list_resources(pb::ListResourcesRequest {
                    principal: uid("Blue::User", user),
                    action: uid("Blue::Action", "viewRecord"),
                    resource_type: "Blue::Record".into(),
                    page_size: 10_000,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.extend(page.resources.into_iter().map(|r| r.id));
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }
}

const PAGE: &str = "SELECT id, title, due FROM records WHERE {} ORDER BY due, id LIMIT 50";

async fn page_by_plan(
    calls: &mut Calls,
    pg: &tokio_postgres::Client,
    user: &str,
) -> Result<Vec<String>, Error> {
    let plan = calls.plan(user).await?;
    let sql = plan.sql.ok_or("the plan has no SQL")?;
    let ps = params(&sql.params);
    let refs: Vec<&(dyn ToSql + Sync)> = ps.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let rows = pg.query(&PAGE.replace("{}", &sql.r#where), &refs).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn page_by_list(
    calls: &mut Calls,
    pg: &tokio_postgres::Client,
    user: &str,
) -> Result<Vec<String>, Error> {
    let ids = calls.list(user).await?;
    let rows = pg
        .query(&PAGE.replace("{}", "id = ANY($1)"), &[&ids])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The server's CPU time per call of each kind: blocks of 50 calls of one kind in turn, the
/// server's CPU time read around each block.
async fn cpu_per_call(
    pid: u32,
    health: &mut HealthClient<tonic::transport::Channel>,
    calls: &mut Calls,
    users: &[String],
    records: &[String],
    rounds: usize,
) -> Result<(), Error> {
    const BLOCK: usize = 50;
    let cpu = || cpu_ns(pid).ok_or_else(|| format!("cannot read /proc/{pid}/task/*/schedstat"));
    let mut spent = [0u64; 3];
    let mut i = 0;
    for _ in 0..rounds.div_ceil(BLOCK) {
        for (kind, total) in spent.iter_mut().enumerate() {
            let before = cpu()?;
            for k in 0..BLOCK {
                let u = (i + k) % users.len();
                match kind {
                    0 => {
                        health
                            .check(HealthCheckRequest {
                                service: String::new(),
                            })
                            .await?;
                    }
                    1 => {
                        calls.decide(&users[u], &records[u]).await?;
                    }
                    _ => {
                        calls.plan(&users[u]).await?;
                    }
                }
            }
            *total += cpu()? - before;
        }
        i += BLOCK;
    }
    let per = |ns: u64| ns as f64 / (rounds.div_ceil(BLOCK) * BLOCK) as f64 / 1e3;
    println!(
        "server CPU per call: empty {:.1} µs, IsAuthorized {:.1} µs, PlanResources {:.1} µs",
        per(spent[0]),
        per(spent[1]),
        per(spent[2])
    );
    Ok(())
}

/// Runs the benchmark and prints its figures.
pub async fn run(cfg: &PlanBenchConfig) -> Result<(), Error> {
    let (pg, conn) = tokio_postgres::connect(&cfg.pg, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let users = load(&pg, cfg).await?;
    let channel = match cfg.addr.strip_prefix("unix:") {
        // A sidecar's way: the decision listener's Unix socket.
        Some(path) => {
            let path = path.to_string();
            tonic::transport::Endpoint::try_from("http://localhost")?
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await?
        }
        None => {
            tonic::transport::Channel::from_shared(format!("http://{}", cfg.addr))?
                .connect()
                .await?
        }
    };
    let mut health = HealthClient::new(channel.clone());
    let mut calls = Calls {
        authz: AuthorizerClient::new(channel),
    };
    // The two pages agree for every user before anything is timed.
    let (mut visible, mut bytes) = (0usize, 0usize);
    // A record each user may see, for the single decisions (a user who sees none is asked
    // about `r0`, a denial).
    let mut records = Vec::new();
    for u in &users {
        let (a, b) = (
            page_by_plan(&mut calls, &pg, u).await?,
            page_by_list(&mut calls, &pg, u).await?,
        );
        if a != b {
            return Err(format!("{u}: the plan's page and the listing's page differ").into());
        }
        let record = a.first().cloned().unwrap_or_else(|| "r0".to_string());
        if !a.is_empty() && calls.decide(u, &record).await? != pb::Decision::Allow as i32 {
            return Err(format!("{u}: {record} is on the plan's page but not allowed").into());
        }
        records.push(record);
        visible += calls.list(u).await?.len();
        bytes += prost::Message::encoded_len(&calls.plan(u).await?);
    }
    println!(
        "{} users, {:.0} visible records each on average; pages agree row for row; \
         a plan's answer is {:.0} bytes on average",
        users.len(),
        visible as f64 / users.len() as f64,
        bytes as f64 / users.len() as f64
    );
    let n = cfg.rounds.max(1);
    let mut t = (vec![], vec![], vec![], vec![]);
    let mut decisions = vec![];
    for i in 0..n {
        let u = &users[i % users.len()];
        let s = Instant::now();
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        t.0.push(s.elapsed());
        let s = Instant::now();
        calls.decide(u, &records[i % users.len()]).await?;
        decisions.push(s.elapsed());
        let s = Instant::now();
        calls.plan(u).await?;
        t.1.push(s.elapsed());
    }
    for i in 0..n.div_ceil(4) {
        let u = &users[i % users.len()];
        let s = Instant::now();
        page_by_plan(&mut calls, &pg, u).await?;
        t.2.push(s.elapsed());
        let s = Instant::now();
        page_by_list(&mut calls, &pg, u).await?;
        t.3.push(s.elapsed());
    }
    if let Some(pid) = cfg.pid {
        cpu_per_call(pid, &mut health, &mut calls, &users, &records, n).await?;
    }
    let empty = report("empty call (health Check)", t.0);
    let decision = report("IsAuthorized viewRecord (one record)", decisions);
    let plan = report("PlanResources viewRecord (with SQL)", t.1);
    let by_plan = report("page of 50 by due: plan + SQL", t.2);
    let by_list = report("page of 50 by due: ListResources + WHERE id = ANY", t.3);
    println!(
        "decision / empty call {:.2}x; plan / empty call {:.2}x; page by listing / page by \
         plan {:.2}x",
        decision.as_secs_f64() / empty.as_secs_f64(),
        plan.as_secs_f64() / empty.as_secs_f64(),
        by_list.as_secs_f64() / by_plan.as_secs_f64()
    );
    Ok(())
}
