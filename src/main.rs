//! The `blue-authz` binary: the service (`serve`) and the policy authors' commands. Errors are
//! mapped to exit codes here: 0 success, 1 a check that found problems (invalid policies,
//! failed tests, a matrix difference), 2 a usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use blue_authz::config;
use blue_authz::decide::{self, RawRequest, UidRef, DEFAULT_SLICE_DEPTH};
use blue_authz::engine::load_store;
use blue_authz::error::LoadError;
use blue_authz::matrix;
use blue_authz::policy::{PackSpec, PolicyPack};
use blue_authz::server::{self, Limits, ServeConfig, ServeError};
use blue_authz::storage::{RedbStorage, Storage};
use blue_authz::store::EntityStore;
use blue_authz::suite;
use blue_authz::telemetry::{DecisionLog, DECISION_TARGET};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write as _;

/// The decision path allocates many small, short-lived objects (Cedar's entity forms and
/// maps); mimalloc serves them faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "blue-authz",
    version,
    about = "Blue's authorization service: Cedar policies behind gRPC"
)]
struct Cli {
    #[command(flatten)]
    pack: PackArgs,
    /// Configuration file (TOML) for `serve`; flags and environment variables win over it.
    #[arg(long, global = true, env = "BLUE_AUTHZ_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct PackArgs {
    /// Policy directory: schema.cedarschema, *.cedar, optional/, tests/, matrix.toml.
    #[arg(
        long,
        global = true,
        env = "BLUE_AUTHZ_POLICIES",
        default_value = "policies"
    )]
    policies: PathBuf,
    /// Enable an optional overlay from <policies>/optional/ (repeatable, or comma-separated).
    #[arg(
        long = "overlay",
        global = true,
        env = "BLUE_AUTHZ_OVERLAYS",
        value_delimiter = ','
    )]
    overlays: Vec<String>,
}

impl PackArgs {
    fn spec(&self) -> PackSpec {
        PackSpec::new(&self.policies, &self.overlays)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve decisions over gRPC (health and reflection included).
    Serve(Box<ServeArgs>),
    /// Parse and strictly validate every policy against the schema.
    Validate,
    /// Run the policy test suites in <policies>/tests/.
    Test,
    /// Print the effective permission table, computed by evaluating the policies.
    Matrix {
        /// Compare with this file instead of printing; exit 1 on any difference.
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// Write a Cedar JSON entities file into the database, as one atomic batch.
    Import {
        /// Cedar JSON entities file.
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Print every entity of the database as a Cedar JSON array.
    Export {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Generate realistic Blue data for benchmarks (deterministic by seed).
    Gen {
        /// 1.0: 100 companies, 10,000 projects, 100,000 users, 1,000,000 records.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Write a Cedar JSON entities file.
        #[arg(long, conflicts_with = "into_db", required_unless_present = "into_db")]
        out: Option<PathBuf>,
        /// Write straight into a new (empty) database, validated against the schema.
        #[arg(long)]
        into_db: Option<PathBuf>,
    },
    /// Drive a running service over gRPC with a realistic request mix and print throughput
    /// and latency, beside the empty call (the health service's Check) measured in the same run.
    Bench {
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
    },
    /// One decision against an entities file, with its explanation.
    Check {
        /// Cedar JSON entities file.
        #[arg(long)]
        entities: PathBuf,
        /// Principal, e.g. 'Blue::User::"ada"'.
        #[arg(long)]
        principal: String,
        /// Action id, e.g. viewProject.
        #[arg(long)]
        action: String,
        /// Resource, e.g. 'Blue::Project::"apollo"'.
        #[arg(long)]
        resource: String,
        /// Context as a Cedar JSON record.
        #[arg(long, default_value = "{}")]
        context: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TCP address of the decision service ('': none, Unix socket only).
    #[arg(long, env = "BLUE_AUTHZ_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    listen: Listen,
    #[command(flatten)]
    db: DbArgs,
    /// Cedar JSON entities file written into the database when the database is empty
    /// ('': none).
    #[arg(long, env = "BLUE_AUTHZ_SEED", default_value = "data/demo.json")]
    seed: String,
    /// TCP address of the data service (EntityStore; '': none); it runs only when a token is
    /// set.
    #[arg(long, env = "BLUE_AUTHZ_DATA_LISTEN", default_value = "127.0.0.1:50052", value_parser = parse_listen)]
    data_listen: Listen,
    /// Also serve decisions on this Unix domain socket.
    #[arg(long, env = "BLUE_AUTHZ_LISTEN_UNIX")]
    listen_unix: Option<PathBuf>,
    /// Also serve the data service on this Unix domain socket (with the token).
    #[arg(long, env = "BLUE_AUTHZ_DATA_LISTEN_UNIX")]
    data_listen_unix: Option<PathBuf>,
    /// File mode of the Unix sockets, in octal.
    #[arg(long, env = "BLUE_AUTHZ_UNIX_MODE", default_value = "660")]
    unix_mode: String,
    /// Bearer token the data service requires (`authorization: Bearer <token>`).
    #[arg(long, env = "BLUE_AUTHZ_DATA_TOKEN", hide_env_values = true)]
    data_token: Option<String>,
    /// TLS certificate chain (PEM) for the TCP listeners; needs --tls-key.
    #[arg(long, env = "BLUE_AUTHZ_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the TCP listeners; needs --tls-cert.
    #[arg(long, env = "BLUE_AUTHZ_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to: mutual TLS, and calls without
    /// a valid client certificate are refused. Needs --tls-cert.
    #[arg(long, env = "BLUE_AUTHZ_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Address of the Prometheus metrics endpoint, `GET /metrics` ('': none).
    #[arg(long, env = "BLUE_AUTHZ_METRICS_LISTEN", default_value = "", value_parser = parse_listen)]
    metrics_listen: Listen,
    /// Also serve the gRPC health service alone on this address, for probes ('': none).
    #[arg(long, env = "BLUE_AUTHZ_HEALTH_LISTEN", default_value = "", value_parser = parse_listen)]
    health_listen: Listen,
    /// Write one JSON line per decision to standard output.
    #[arg(long, env = "BLUE_AUTHZ_DECISION_LOG", default_value_t = false, action = clap::ArgAction::Set)]
    decision_log: bool,
    /// Fraction of decisions the decision log writes, from 0 to 1.
    #[arg(long, env = "BLUE_AUTHZ_DECISION_LOG_SAMPLE", default_value_t = 1.0)]
    decision_log_sample: f64,
    /// Also log each request's context and request-scoped entities.
    #[arg(long, env = "BLUE_AUTHZ_DECISION_LOG_CONTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    decision_log_context: bool,
    /// Filter of the operational log (standard error), e.g. `info` or `blue_authz=debug`.
    #[arg(long, env = "BLUE_AUTHZ_LOG", default_value = "info")]
    log: String,
    /// Format of the operational log: text or json.
    #[arg(long, env = "BLUE_AUTHZ_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Longest wait for a request's min_revision when the call sets no deadline, in ms.
    #[arg(long, env = "BLUE_AUTHZ_MAX_REVISION_WAIT_MS", default_value_t = 5000)]
    max_revision_wait_ms: u64,
    /// Watch the policy directory and the config file, and reload on changes (SIGHUP reloads
    /// too).
    #[arg(long, env = "BLUE_AUTHZ_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    watch: bool,
    /// Attribute hops a per-request entity slice follows from the request's entities.
    #[arg(long, env = "BLUE_AUTHZ_SLICE_DEPTH", default_value_t = DEFAULT_SLICE_DEPTH)]
    slice_depth: usize,
    /// Most requests in one BatchIsAuthorized call.
    #[arg(long, env = "BLUE_AUTHZ_MAX_BATCH", default_value_t = 10_000)]
    max_batch: usize,
    /// Threads that serve calls (0: one per available CPU). A sidecar with one CPU's worth of
    /// quota serves more calls per CPU second with 1.
    #[arg(long, env = "BLUE_AUTHZ_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// Largest request message, in bytes.
    #[arg(long, env = "BLUE_AUTHZ_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Print the settings as resolved from flags, environment, file and defaults (as a config
    /// file; the token is redacted), and exit.
    #[arg(long)]
    print_config: bool,
}

/// A listen address, or none ('').
#[derive(Clone, Copy, Debug)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:50051 (or '' for none)"))
}

#[derive(Args)]
struct DbArgs {
    /// The embedded database file (redb).
    #[arg(long, env = "BLUE_AUTHZ_DB", default_value = "blue-authz.redb")]
    db: PathBuf,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn run(cli: Cli, matches: &ArgMatches) -> Result<ExitCode, AnyError> {
    let spec = cli.pack.spec();
    match cli.command {
        Command::Serve(args) => {
            let sub = matches.subcommand_matches("serve").unwrap_or(matches);
            serve(cli.pack, cli.config, *args, sub)
        }
        Command::Validate => {
            let Some(pack) = load_or_report(&spec)? else {
                return Ok(ExitCode::from(1));
            };
            println!(
                "ok: {} policies in {} validated strictly against the schema (version {}, overlays: {})",
                pack.policies.policies().count(),
                spec.dir.display(),
                pack.version,
                overlays(&spec)
            );
            let unplanned = pack.unplanned_actions();
            println!(
                "compiled plans: {} of {} actions decided straight over the entity index{}",
                pack.actions().len() - unplanned.len(),
                pack.actions().len(),
                if unplanned.is_empty() {
                    String::new()
                } else {
                    let names: Vec<String> = unplanned
                        .iter()
                        .map(|a| a.id().unescaped().to_string())
                        .collect();
                    format!(
                        "; through Cedar's evaluator (a policy outside the plans' subset): {}",
                        names.join(", ")
                    )
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Test => {
            if load_or_report(&spec)?.is_none() {
                return Ok(ExitCode::from(1));
            }
            let report = suite::run(&spec)?;
            for failure in report.failed() {
                println!("{}", failure.describe());
            }
            println!("{}", report.summary());
            Ok(if report.failed().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Matrix { check } => {
            let Some(pack) = load_or_report(&spec)? else {
                return Ok(ExitCode::from(1));
            };
            let table = matrix::render(&pack)?;
            match check {
                None => {
                    print!("{table}");
                    Ok(ExitCode::SUCCESS)
                }
                Some(path) => {
                    let expected = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    let diff = matrix::diff(&expected, &table);
                    if diff.is_empty() {
                        println!("ok: the policies give the table in {}", path.display());
                        Ok(ExitCode::SUCCESS)
                    } else {
                        println!(
                            "the policies differ from {} in {} line(s):",
                            path.display(),
                            diff.len()
                        );
                        for d in diff {
                            println!("{d}");
                        }
                        Ok(ExitCode::from(1))
                    }
                }
            }
        }
        Command::Import { file, db } => {
            let Some(pack) = load_or_report(&spec)? else {
                return Ok(ExitCode::from(1));
            };
            let storage = RedbStorage::open(&db.db)?;
            let store = load_store(&storage, &pack, None)?;
            let mut prepared = store.prepare_file(&file, &pack)?;
            prepared.changes.schema = Some(pack.schema_version.clone());
            let count = prepared.changes.puts.len();
            storage.apply(&prepared.changes)?;
            println!(
                "imported {count} entities into {} (revision {})",
                db.db.display(),
                prepared.revision()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gen {
            scale,
            seed,
            out,
            into_db,
        } => gen(&spec, scale, seed, out, into_db),
        Command::Bench {
            addr,
            scale,
            seed,
            concurrency,
            seconds,
            batch,
            pid,
        } => {
            let cfg = blue_authz::loadgen::BenchConfig {
                addr,
                scale,
                seed,
                concurrency: concurrency.max(1),
                duration: std::time::Duration::from_secs_f64(seconds),
                batch: batch.max(1),
                pid,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(blue_authz::loadgen::run(&cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { db } => {
            let storage = RedbStorage::open(&db.db)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut first = true;
            let mut io_error = None;
            out.write_all(b"[")?;
            storage.scan(&mut |_, item| {
                let sep: &[u8] = if first { b"\n" } else { b",\n" };
                first = false;
                if let Err(e) = out.write_all(sep).and_then(|_| out.write_all(item)) {
                    io_error = Some(e);
                    return false;
                }
                true
            })?;
            if let Some(e) = io_error {
                return Err(e.into());
            }
            out.write_all(b"\n]\n")?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            entities,
            principal,
            action,
            resource,
            context,
        } => {
            let Some(pack) = load_or_report(&spec)? else {
                return Ok(ExitCode::from(1));
            };
            let store = EntityStore::load_file(&entities, &pack)?;
            let (pt, pid) = split_uid(&principal, "--principal")?;
            let (rt, rid) = split_uid(&resource, "--resource")?;
            let raw = RawRequest {
                principal: UidRef { ty: &pt, id: &pid },
                action: decide::action_id(&action),
                resource: UidRef { ty: &rt, id: &rid },
                context_json: &context,
                entities_json: "",
            };
            let req = decide::check(&pack, &store, &raw)?;
            let d = decide::decide(&pack, &store, &req, DEFAULT_SLICE_DEPTH);
            println!("decision: {}", if d.allow { "ALLOW" } else { "DENY" });
            println!("determining policies: {}", list(&d.determining));
            println!("errors: {}", list(&d.errors));
            println!("policy version: {}", pack.version);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether a setting was given by flag or environment (and so wins over the config file).
fn set_by_user(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

fn serve(
    mut pack: PackArgs,
    config_file: Option<PathBuf>,
    mut args: ServeArgs,
    m: &ArgMatches,
) -> Result<ExitCode, AnyError> {
    let file = match &config_file {
        Some(path) => config::read(path)?,
        None => config::FileConfig::default(),
    };
    macro_rules! from_file {
        ($id:literal, $target:expr, $value:expr) => {
            if !set_by_user(m, $id) {
                if let Some(v) = $value {
                    $target = v;
                }
            }
        };
    }
    let listen = |key: &str, v: Option<String>| -> Result<Option<Listen>, String> {
        v.map(|v| parse_listen(&v).map_err(|e| format!("{key}: {e}")))
            .transpose()
    };
    from_file!("policies", pack.policies, file.policies);
    from_file!("overlays", pack.overlays, file.overlays.clone());
    from_file!("listen", args.listen, listen("listen", file.listen)?);
    from_file!("db", args.db.db, file.db);
    from_file!("seed", args.seed, file.seed);
    from_file!(
        "data_listen",
        args.data_listen,
        listen("data_listen", file.data_listen)?
    );
    from_file!("data_token", args.data_token, file.data_token.map(Some));
    from_file!("slice_depth", args.slice_depth, file.slice_depth);
    from_file!("max_batch", args.max_batch, file.max_batch);
    from_file!("worker_threads", args.worker_threads, file.worker_threads);
    from_file!(
        "max_message_bytes",
        args.max_message_bytes,
        file.max_message_bytes
    );
    from_file!(
        "max_revision_wait_ms",
        args.max_revision_wait_ms,
        file.max_revision_wait_ms
    );
    from_file!("watch", args.watch, file.watch);
    from_file!("listen_unix", args.listen_unix, file.listen_unix.map(Some));
    from_file!(
        "data_listen_unix",
        args.data_listen_unix,
        file.data_listen_unix.map(Some)
    );
    from_file!("unix_mode", args.unix_mode, file.unix_mode);
    from_file!("tls_cert", args.tls_cert, file.tls_cert.map(Some));
    from_file!("tls_key", args.tls_key, file.tls_key.map(Some));
    from_file!(
        "tls_client_ca",
        args.tls_client_ca,
        file.tls_client_ca.map(Some)
    );
    from_file!(
        "metrics_listen",
        args.metrics_listen,
        listen("metrics_listen", file.metrics_listen)?
    );
    from_file!(
        "health_listen",
        args.health_listen,
        listen("health_listen", file.health_listen)?
    );
    from_file!("decision_log", args.decision_log, file.decision_log);
    from_file!(
        "decision_log_sample",
        args.decision_log_sample,
        file.decision_log_sample
    );
    from_file!(
        "decision_log_context",
        args.decision_log_context,
        file.decision_log_context
    );
    from_file!("log", args.log, file.log);
    from_file!("log_format", args.log_format, file.log_format);

    let unix_mode = u32::from_str_radix(&args.unix_mode, 8).map_err(|_| {
        format!(
            "--unix-mode: `{}` is not an octal file mode",
            args.unix_mode
        )
    })?;
    if !(0.0..=1.0).contains(&args.decision_log_sample) {
        return Err(format!(
            "--decision-log-sample: {} is not a fraction from 0 to 1",
            args.decision_log_sample
        )
        .into());
    }
    if !matches!(args.log_format.as_str(), "text" | "json") {
        return Err(format!("--log-format: `{}` is not text or json", args.log_format).into());
    }
    let log_filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| format!("--log: `{}` is not a log filter: {e}", args.log))?;
    let tls =
        match (args.tls_cert.clone(), args.tls_key.clone()) {
            (Some(cert), Some(key)) => Some(server::TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca.clone(),
            }),
            (None, None) if args.tls_client_ca.is_none() => None,
            _ => return Err(
                "TLS needs both --tls-cert and --tls-key (and they are needed for --tls-client-ca)"
                    .into(),
            ),
        };
    if args.print_config {
        print!("{}", resolved(&pack, &args)?);
        return Ok(ExitCode::SUCCESS);
    }
    let overlays_fixed = config_file.is_none() || set_by_user(m, "overlays");
    let spec = pack.spec();
    let _log_guard = init_logging(log_filter, &args.log_format);
    let config = ServeConfig {
        listen: args.listen.0,
        pack: spec,
        db: args.db.db,
        seed: Some(args.seed).filter(|s| !s.is_empty()).map(PathBuf::from),
        data_listen: args.data_listen.0,
        data_token: args.data_token.filter(|t| !t.is_empty()),
        unix: args.listen_unix,
        data_unix: args.data_listen_unix,
        unix_mode,
        limits: Limits {
            slice_depth: args.slice_depth,
            max_batch: args.max_batch,
            max_message_bytes: args.max_message_bytes,
            max_revision_wait: std::time::Duration::from_millis(args.max_revision_wait_ms),
        },
        watch: args.watch,
        config_file,
        overlays_fixed,
        tls,
        metrics_listen: args.metrics_listen.0,
        health_listen: args.health_listen.0,
        decision_log: DecisionLog {
            enabled: args.decision_log,
            sample: args.decision_log_sample,
            include_context: args.decision_log_context,
        },
    };
    let runtime = match args.worker_threads {
        0 => tokio::runtime::Runtime::new()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    tracing::info!(workers = runtime.metrics().num_workers(), "runtime started");
    runtime.block_on(async {
        let mut running = server::start(config).await?;
        if let Err(e) = running.load().await {
            match &e {
                ServeError::Load(LoadError::Invalid(diags)) => {
                    for d in diags {
                        eprintln!("{}", d.render());
                    }
                    eprintln!(
                        "{} problem(s); refusing to serve an invalid policy set",
                        diags.len()
                    );
                }
                other => eprintln!("error: {other}"),
            }
            running.shutdown().await?;
            return Ok(ExitCode::from(1));
        }
        server::reload_on_sighup(&running);
        tracing::info!("serving");
        server::shutdown_signal().await;
        running.shutdown().await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The operational log on standard error (text or JSON, filtered), and the decision log: its
/// events only, one JSON object per line on standard output, written by a background thread
/// (keep the guard until exit: dropping it flushes the lines still queued).
fn init_logging(
    filter: tracing_subscriber::EnvFilter,
    format: &str,
) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::filter::{filter_fn, Targets};
    use tracing_subscriber::prelude::*;
    let not_decisions = filter_fn(|meta| meta.target() != DECISION_TARGET);
    // Not lossy: when the reader of standard output falls 100,000 lines behind, decisions
    // wait for it rather than go unlogged.
    let (stdout, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(100_000)
        .lossy(false)
        .finish(std::io::stdout());
    let ops = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let ops = if format == "json" {
        ops.json().boxed()
    } else {
        ops.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    let decisions = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_level(false)
        .with_writer(stdout)
        .with_filter(Targets::new().with_target(DECISION_TARGET, tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(ops.with_filter(not_decisions).with_filter(filter))
        .with(decisions)
        .init();
    guard
}

/// The resolved `serve` settings, written as a configuration file.
fn resolved(pack: &PackArgs, args: &ServeArgs) -> Result<String, AnyError> {
    let addr = |l: Listen| Some(l.0.map(|a| a.to_string()).unwrap_or_default());
    let settings = config::FileConfig {
        policies: Some(pack.policies.clone()),
        overlays: Some(pack.overlays.clone()),
        listen: addr(args.listen),
        db: Some(args.db.db.clone()),
        seed: Some(args.seed.clone()),
        data_listen: addr(args.data_listen),
        data_token: args.data_token.as_ref().map(|_| "<redacted>".to_string()),
        slice_depth: Some(args.slice_depth),
        max_batch: Some(args.max_batch),
        worker_threads: Some(args.worker_threads),
        max_message_bytes: Some(args.max_message_bytes),
        max_revision_wait_ms: Some(args.max_revision_wait_ms),
        watch: Some(args.watch),
        listen_unix: args.listen_unix.clone(),
        data_listen_unix: args.data_listen_unix.clone(),
        unix_mode: Some(args.unix_mode.clone()),
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        tls_client_ca: args.tls_client_ca.clone(),
        metrics_listen: addr(args.metrics_listen),
        health_listen: addr(args.health_listen),
        decision_log: Some(args.decision_log),
        decision_log_sample: Some(args.decision_log_sample),
        decision_log_context: Some(args.decision_log_context),
        log: Some(args.log.clone()),
        log_format: Some(args.log_format.clone()),
    };
    Ok(toml::to_string(&settings)?)
}

fn gen(
    spec: &PackSpec,
    scale: f64,
    seed: u64,
    out: Option<PathBuf>,
    into_db: Option<PathBuf>,
) -> Result<ExitCode, AnyError> {
    let started = std::time::Instant::now();
    if let Some(path) = out {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut first = true;
        let mut failed = None;
        w.write_all(b"[")?;
        let g = blue_authz::gen::generate(scale, seed, &mut |e| {
            let sep: &[u8] = if first { b"\n" } else { b",\n" };
            first = false;
            if let Err(e) = w
                .write_all(sep)
                .and_then(|_| serde_json::to_writer(&mut w, &e).map_err(Into::into))
            {
                failed.get_or_insert(e);
            }
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        w.write_all(b"\n]\n")?;
        w.flush()?;
        println!(
            "generated {:?} into {} in {:.1?}",
            g.sizes,
            path.display(),
            started.elapsed()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(db) = into_db else {
        return Err("give --out FILE or --into-db PATH".into());
    };
    let Some(pack) = load_or_report(spec)? else {
        return Ok(ExitCode::from(1));
    };
    let storage = RedbStorage::open(&db)?;
    if storage.revision()? != 0 {
        return Err(format!("{} is not empty", db.display()).into());
    }
    let mut changes = blue_authz::storage::ChangeSet {
        revision: 1,
        schema: Some(pack.schema_version.clone()),
        ..Default::default()
    };
    let mut count = 0usize;
    let mut failed = None;
    let g = blue_authz::gen::generate(scale, seed, &mut |e| {
        if failed.is_some() {
            return;
        }
        match blue_authz::store::parse_entity(e, &pack, "generated") {
            Ok(e) => {
                let json = e.to_json();
                changes
                    .puts
                    .push((e.uid().to_string(), json.to_string().into_bytes()));
                count += 1;
            }
            Err(err) => failed = Some(err),
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    storage.apply(&changes)?;
    println!(
        "generated {:?}: {count} entities into {} in {:.1?}",
        g.sizes,
        db.display(),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

/// Loads the pack; on invalid policies prints every diagnostic and returns None.
fn load_or_report(spec: &PackSpec) -> Result<Option<std::sync::Arc<PolicyPack>>, AnyError> {
    match PolicyPack::load(spec) {
        Ok(pack) => Ok(Some(pack)),
        Err(LoadError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{}", d.render());
            }
            eprintln!("{} problem(s); the policy set is not valid", diags.len());
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn overlays(spec: &PackSpec) -> String {
    if spec.overlays.is_empty() {
        "none".into()
    } else {
        spec.overlays.join(", ")
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// Splits `Type::"id"` (or `Type::id`) into type and id.
fn split_uid(s: &str, flag: &str) -> Result<(String, String), String> {
    let (ty, id) = s.rsplit_once("::").ok_or_else(|| {
        format!("{flag}: `{s}` is not an entity reference like Blue::User::\"ada\"")
    })?;
    let id = id
        .strip_prefix('"')
        .and_then(|i| i.strip_suffix('"'))
        .unwrap_or(id);
    Ok((ty.to_string(), id.to_string()))
}
