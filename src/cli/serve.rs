//! `blue-authz serve`: resolve the settings (flags, environment, config file), set up logging
//! and the runtime, start the server, load and gate the policies and data, and serve until
//! SIGTERM or SIGINT.

use std::path::PathBuf;

use clap::ArgMatches;

use super::{AnyError, Exit};
use crate::engine::error::LoadError;
use crate::service::gate::GateError;
use crate::service::live_config::ConfigFile;
use crate::service::server::LogFilter;
use crate::service::server::{self, ServeError};
use crate::service::settings::{self, PackArgs, ServeSettings};
use crate::service::telemetry::DECISION_TARGET;

#[derive(clap::Args)]
pub struct ServeCommand {
    /// Configuration file (TOML); flags and environment variables win over it.
    #[arg(long, env = "BLUE_AUTHZ_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServeSettings,
    /// Print the settings as resolved from flags, environment, file and defaults (as a config
    /// file; the token is redacted), and exit.
    #[arg(long)]
    print_config: bool,
}

pub fn run(mut pack: PackArgs, args: ServeCommand, m: &ArgMatches) -> Result<Exit, AnyError> {
    let ServeCommand {
        config: config_file,
        settings: mut s,
        print_config,
    } = args;
    // The settings before the file, for reading it again while serving.
    let before_file = (pack.clone(), s.clone());
    if let Some(file) = &config_file {
        settings::with_file(&mut pack, &mut s, m, file)?;
    }
    let overlays_fixed = config_file.is_none() || settings::overlays_set_by_user(m);
    let mut config = s.config(&pack, config_file.clone(), overlays_fixed)?;
    let log_filter = tracing_subscriber::EnvFilter::try_new(&s.log)
        .map_err(|e| format!("--log: `{}` is not a log filter: {e}", s.log))?;
    if print_config {
        print!("{}", settings::print(&pack, &s)?);
        return Ok(Exit::Success);
    }
    if let Some(file) = config_file {
        let (pack, serve) = before_file;
        config.live_config = Some(std::sync::Arc::new(ConfigFile::new(
            file,
            pack,
            serve,
            settings::user_set_keys(m),
        )?));
    }
    if let Some(basic) = s.read_http_basic_file()? {
        config.http_basic = Some(basic);
    }
    if let Some(token) = s.read_http_token_file()? {
        config.http_token = Some(token);
    }
    if let Some(token) = s.read_token_file()? {
        config.data_token = Some(token);
    }
    let (_log_guard, set_filter) = init_logging(log_filter, &s.log_format);
    config.log_filter = Some(set_filter);
    let runtime = match s.worker_threads {
        0 => tokio::runtime::Runtime::new()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    tracing::info!(workers = runtime.metrics().num_workers(), "runtime started");
    runtime.block_on(async {
        // Caught from here on: a SIGTERM during start-up or the moment it serves is a clean stop.
        let mut shutdown = server::ShutdownSignal::install();
        let mut running = server::start(config).await?;
        announce("listening", &running);
        if let Err(e) = running.load().await {
            match &e {
                ServeError::Gate(GateError::Load(LoadError::Invalid(diags))) => {
                    for d in diags {
                        eprintln!("{}", super::report::render(d));
                    }
                    eprintln!(
                        "{} problem(s); refusing to serve an invalid policy set",
                        diags.len()
                    );
                }
                ServeError::Gate(GateError::Failed {
                    failures, summary, ..
                }) => {
                    for f in failures {
                        eprintln!("{f}");
                    }
                    eprintln!(
                        "policy tests: {summary}; refusing to serve a policy set whose tests fail"
                    );
                }
                ServeError::Gate(GateError::Invariants {
                    failures, summary, ..
                }) => {
                    for f in failures {
                        eprintln!("{f}");
                    }
                    eprintln!(
                        "invariants: {summary}; refusing to serve a policy set that breaks one \
                         (blue-authz analyze shows each counterexample)"
                    );
                }
                other => eprintln!("error: {other}"),
            }
            running.shutdown().await?;
            return Ok(Exit::Problems);
        }
        server::reload_on_sighup(&running);
        tracing::info!("serving");
        announce("serving", &running);
        shutdown.recv().await;
        running.shutdown().await?;
        tracing::info!("stopped");
        Ok(Exit::Success)
    })
}

/// The start-up line: one JSON object on standard error, once the listeners are bound
/// (`"blue_authz": "listening"`) and again once the policies and data are loaded and calls are
/// answered (`"serving"`), with every bound address (port 0 resolved) and the process id, so
/// that scripts and tests need not read the log's prose. Absent listeners are null.
fn announce(event: &str, running: &server::Running) {
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let mut line = serde_json::json!({
        "blue_authz": event,
        "pid": std::process::id(),
        "decisions": addr(running.addr),
        "decisions_unix": path(&running.unix),
        "data": addr(running.data_addr),
        "data_unix": path(&running.data_unix),
        "http": addr(running.http_addr),
        "health": addr(running.health_addr),
        "metrics": addr(running.metrics_addr),
    });
    if let Some(live) = running.engine.live() {
        line["policy_version"] = live.pack.version.clone().into();
        line["revision"] = live.store().revision().into();
    }
    eprintln!("{line}");
}

/// The operational log on standard error (text or JSON, filtered), and the decision log: its
/// events only, one JSON object per line on standard output, written by a background thread
/// (keep the guard until exit: dropping it flushes the lines still queued).
fn init_logging(
    filter: tracing_subscriber::EnvFilter,
    format: &str,
) -> (tracing_appender::non_blocking::WorkerGuard, LogFilter) {
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
    // The filter can be replaced while serving (the config file's `log`).
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(ops.with_filter(not_decisions).with_filter(filter))
        .with(decisions)
        .init();
    let set = move |text: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    };
    (guard, LogFilter(std::sync::Arc::new(set)))
}
