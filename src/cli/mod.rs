//! The commands of the binary, one file each; this file declares them (clap), dispatches, and
//! maps every outcome to an exit code ([`Exit`]).

mod analyze;
mod bench;
mod check;
mod diff;
mod export;
mod fleet_bench;
mod gen;
mod impact;
mod import;
mod listing;
mod matrix;
mod plan;
mod report;
mod serve;
mod test;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::engine::error::LoadError;
use crate::engine::pack::{PackSpec, PolicyPack};
use crate::service::settings::{DbArgs, PackArgs};

/// How a command ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done, and every check passed.
    Success = 0,
    /// 1: a check found problems (invalid policies, failed tests, a matrix difference, a
    /// refused start-up).
    Problems = 1,
    /// 2: a usage or I/O error.
    Error = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Any error a command reports (printed as `error: ...`, exit 2).
pub type AnyError = Box<dyn std::error::Error>;

/// The shared source `import` and `export` may work on instead of the embedded database.
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// A shared PostgreSQL source (`postgres://user@host:5432/db`) instead of --db.
    #[arg(
        long = "source",
        env = "BLUE_AUTHZ_SOURCE",
        default_value = "",
        hide_env_values = true
    )]
    source: String,
}

impl SourceArgs {
    fn url(&self) -> Option<String> {
        Some(self.source.trim().to_string()).filter(|s| !s.is_empty())
    }
}

/// A runtime for the commands that talk to a shared source.
fn runtime() -> Result<tokio::runtime::Runtime, AnyError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

#[derive(Parser)]
#[command(
    name = "blue-authz",
    version,
    about = "Blue's authorization service: Cedar policies behind gRPC"
)]
struct Cli {
    #[command(flatten)]
    pack: PackArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve decisions over gRPC (health and reflection included).
    Serve(Box<serve::ServeCommand>),
    /// Parse and strictly validate every policy against the schema.
    Validate,
    /// Run the policy test suites in <policies>/tests/.
    Test,
    /// Print the effective permission table, computed by evaluating the policies.
    Matrix(matrix::MatrixCommand),
    /// Prove the invariants of <policies>/invariants.toml (and that no policy errors) for all
    /// data the schema allows, with a counterexample for each that fails (needs cvc5).
    Analyze(analyze::AnalyzeCommand),
    /// What changes between two policy directories, for all data: per action, a request newly
    /// allowed and one newly denied (needs cvc5).
    Diff(diff::DiffCommand),
    /// Write a Cedar JSON entities file into the database as one atomic batch (into a shared
    /// source: validated whole, then written in batches of 10,000). It merges: stored entities
    /// the file does not name are kept, unless --replace.
    Import {
        /// Cedar JSON entities file.
        file: PathBuf,
        /// Replace the store's contents: also delete every stored entity the file does not name.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Print every entity of the database (or of the shared source) as a Cedar JSON array.
    Export {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Which stored (principal, resource) pairs would gain or lose each action if a candidate
    /// pack replaced the current one, with the policies responsible.
    Impact(impact::ImpactCommand),
    /// Generate realistic Blue data for benchmarks (deterministic by seed).
    Gen(gen::GenCommand),
    /// Drive a running service over gRPC with a realistic request mix and print throughput
    /// and latency, beside the empty call (the health service's Check) measured in the same run.
    Bench(bench::BenchCommand),
    /// Start a fleet of replicas on a real PostgreSQL (in a schema of its own) and print its
    /// figures: write to visible, write throughput, decisions while applying, catch-up,
    /// bootstrap at full scale.
    FleetBench(fleet_bench::FleetBenchCommand),
    /// One decision against an entities file, with its explanation.
    Check(check::CheckCommand),
    /// Every resource of a type a principal may act on, against an entities file.
    ListResources(listing::ListResourcesCommand),
    /// Every principal of a type that may act on a resource, against an entities file.
    ListSubjects(listing::ListSubjectsCommand),
    /// Which resources of a type a principal may act on, as a condition over their own
    /// attributes (and with --sql a PostgreSQL WHERE fragment), against an entities file.
    Plan(plan::PlanCommand),
    /// Time resource plans and a list page in PostgreSQL (plan + SQL against ListResources +
    /// id = ANY) against a running service, beside the empty call.
    PlanBench {
        /// The decision service's address, or `unix:<path>` for its Unix socket.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// PostgreSQL connection string (the records go into its schema plan_bench).
        #[arg(
            long,
            default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
        )]
        pg: String,
        /// Scale and seed the service's data was generated with (`gen`).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Users planned for, spread over the generated ones.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Calls timed per figure (pages: a quarter as many).
        #[arg(long, default_value_t = 4000)]
        rounds: usize,
        /// The server's process id: also measure its CPU time per call of each kind (from
        /// /proc/PID/task/*/schedstat, on the same machine).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Time listings on generated data beside brute force, and the reverse index's cost.
    ListBench {
        /// Scale of the generated data (1.0: 1.19M entities).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Listings timed per figure.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sub = matches
        .subcommand()
        .map(|(_, m)| m)
        .unwrap_or(&matches)
        .clone();
    let spec = cli.pack.spec();
    if !matches!(
        cli.command,
        Command::Serve(_) | Command::Bench(_) | Command::FleetBench(_)
    ) {
        // A closed standard output (`blue-authz validate | head -1`) ends a command quietly,
        // as for any Unix tool, instead of a panic on the next print. Not for the commands
        // that hold sockets: a peer closing a Unix socket must not kill a server.
        sigpipe::reset();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(cli.pack, *args, &sub),
        Command::Validate => validate::run(&spec),
        Command::Test => test::run(&spec),
        Command::Matrix(args) => matrix::run(&spec, args),
        Command::Analyze(args) => analyze::run(&spec, args),
        Command::Diff(args) => diff::run(&spec.overlays, args),
        Command::Import {
            file,
            replace,
            db,
            source,
        } => import::run(&spec, &file, &db.db, source.url().as_deref(), replace),
        Command::Export { db, source } => export::run(&db.db, source.url().as_deref()),
        Command::Gen(args) => gen::run(&spec, args),
        Command::Impact(args) => impact::run(&spec, args),
        Command::Bench(args) => bench::run(&spec, args),
        Command::FleetBench(args) => fleet_bench::run(&spec, args),
        Command::Check(args) => check::run(&spec, args),
        Command::ListResources(args) => listing::resources(&spec, args),
        Command::ListSubjects(args) => listing::subjects(&spec, args),
        Command::Plan(args) => plan::run(&spec, args),
        Command::ListBench { scale, rounds } => listing::bench(&spec, scale, rounds),
        Command::PlanBench {
            addr,
            pg,
            scale,
            seed,
            users,
            rounds,
            pid,
        } => plan::bench(crate::bench::plans::PlanBenchConfig {
            addr,
            pg,
            scale,
            seed,
            users,
            rounds,
            pid,
        }),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Error.into()
        }
    }
}

/// Loads the pack; on invalid policies prints every diagnostic and returns None.
fn load_or_report(spec: &PackSpec) -> Result<Option<Arc<PolicyPack>>, AnyError> {
    match PolicyPack::load(spec) {
        Ok(pack) => Ok(Some(pack)),
        Err(LoadError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{}", report::render(d));
            }
            eprintln!("{} problem(s); the policy set is not valid", diags.len());
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Items joined by commas, or `none`.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
