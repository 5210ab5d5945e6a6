//! `blue-authz bench`: drive a running service with the load tool ([`crate::bench::loadgen`]).

use super::{AnyError, Exit};
use crate::bench::loadgen;

#[derive(clap::Args)]
pub struct BenchCommand {
    /// The decision service's address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Scale and seed the service's data was generated with (`gen`).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Concurrent calls under load.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Decisions per BatchIsAuthorized call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// The server's process id, to report its CPU time per call.
    #[arg(long)]
    pid: Option<u32>,
    /// The AuthZEN HTTP listener's address: adds HTTP/1.1 and h2c phases to compare.
    #[arg(long)]
    http_addr: Option<String>,
    /// The data service's address: adds decisions while batches of --write-ops operations are
    /// written, beside decisions without writes (needs --data-token).
    #[arg(long, requires = "data_token")]
    data_addr: Option<String>,
    /// The data service's token.
    #[arg(long)]
    data_token: Option<String>,
    /// Operations per batch written with --data-addr.
    #[arg(long, default_value_t = 10_000)]
    write_ops: usize,
    /// Every other batch gives the written users a role and the next takes it away (each
    /// entity changes, with its ancestors); by default they are written again as they are.
    #[arg(long)]
    write_roles: bool,
    /// Add Envoy's ext_authz Check beside IsAuthorized on the same requests, mapped through
    /// the routes.toml of --policies.
    #[arg(long)]
    ext_authz: bool,
}

pub fn run(spec: &crate::engine::pack::PackSpec, args: BenchCommand) -> Result<Exit, AnyError> {
    let routes = if args.ext_authz {
        let pack = crate::engine::pack::PolicyPack::load(spec).map_err(|e| e.to_string())?;
        Some(
            pack.routes
                .clone()
                .ok_or("--ext-authz: the policy pack has no routes.toml")?,
        )
    } else {
        None
    };
    let cfg = loadgen::BenchConfig {
        addr: args.addr,
        scale: args.scale,
        seed: args.seed,
        concurrency: args.concurrency.max(1),
        duration: std::time::Duration::from_secs_f64(args.seconds),
        batch: args.batch.max(1),
        pid: args.pid,
        http_addr: args.http_addr,
        data: args.data_addr.zip(args.data_token),
        write_ops: args.write_ops.max(1),
        write_roles: args.write_roles,
        routes,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(loadgen::run(&cfg))?;
    Ok(Exit::Success)
}
