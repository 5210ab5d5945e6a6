//! `blue-authz fleet-bench`: run the fleet benchmark ([`crate::bench::fleet`]) on a real
//! PostgreSQL.

use super::{runtime, AnyError, Exit};
use crate::bench::fleet;
use crate::engine::pack::PackSpec;

#[derive(clap::Args)]
pub struct FleetBenchCommand {
    /// PostgreSQL connection parameters (key=value form).
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    pg: String,
    /// The schema the fleet works in: dropped and created.
    #[arg(long, default_value = "blue_authz_fleet_bench")]
    schema: String,
    /// Measured seconds of each throughput and latency phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Writes a stopped replica catches up on (0: skip the phase).
    #[arg(long, default_value_t = 100_000)]
    catch_up_writes: u64,
    /// Scale of the generated source a new replica bootstraps from (0: skip the phase).
    #[arg(long, default_value_t = 1.0)]
    bootstrap_scale: f64,
}

pub fn run(spec: &PackSpec, args: FleetBenchCommand) -> Result<Exit, AnyError> {
    let dir = fleet::default_dir();
    let cfg = fleet::FleetBenchConfig {
        pg: args.pg,
        schema: args.schema,
        policies: spec.dir.clone(),
        seed: spec.dir.join("tests/fixture.json"),
        dir: dir.clone(),
        seconds: args.seconds,
        catch_up_writes: args.catch_up_writes,
        bootstrap_scale: args.bootstrap_scale,
    };
    let result = runtime()?.block_on(fleet::run(&cfg));
    fleet::clean(&dir);
    result?;
    Ok(Exit::Success)
}
