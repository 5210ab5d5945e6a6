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
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write as _;

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
    Serve(ServeArgs),
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
    /// Address of the decision service.
    #[arg(long, env = "BLUE_AUTHZ_LISTEN", default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    db: DbArgs,
    /// Cedar JSON entities file written into the database when the database is empty
    /// (an empty value: none).
    #[arg(long, env = "BLUE_AUTHZ_SEED", default_value = "data/demo.json")]
    seed: String,
    /// Address of the data service (EntityStore); it runs only when a token is set.
    #[arg(
        long,
        env = "BLUE_AUTHZ_DATA_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    data_listen: std::net::SocketAddr,
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
    /// Largest request message, in bytes.
    #[arg(long, env = "BLUE_AUTHZ_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
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
            serve(cli.pack, cli.config, args, sub)
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
    from_file!("policies", pack.policies, file.policies);
    from_file!("overlays", pack.overlays, file.overlays.clone());
    from_file!("listen", args.listen, file.listen);
    from_file!("db", args.db.db, file.db);
    from_file!(
        "seed",
        args.seed,
        file.seed.map(|p| p.display().to_string())
    );
    from_file!("data_listen", args.data_listen, file.data_listen);
    from_file!("data_token", args.data_token, file.data_token.map(Some));
    from_file!("slice_depth", args.slice_depth, file.slice_depth);
    from_file!("max_batch", args.max_batch, file.max_batch);
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
    let unix_mode = u32::from_str_radix(&args.unix_mode, 8).map_err(|_| {
        format!(
            "--unix-mode: `{}` is not an octal file mode",
            args.unix_mode
        )
    })?;
    let overlays_fixed = config_file.is_none() || set_by_user(m, "overlays");
    let spec = pack.spec();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BLUE_AUTHZ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = ServeConfig {
        listen: args.listen,
        pack: spec,
        db: args.db.db,
        seed: Some(args.seed).filter(|s| !s.is_empty()).map(PathBuf::from),
        data_listen: args.data_listen,
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
    };
    let runtime = tokio::runtime::Runtime::new()?;
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
        tracing::info!(addr = %running.addr, "serving");
        server::shutdown_signal().await;
        running.shutdown().await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
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
