//! The `serve` settings, declared once: [`PackArgs`] and [`ServeSettings`] are read by clap (each
//! flag and its environment variable), by the optional configuration file (TOML, keys as the
//! fields' names) and written back by `--print-config`. A flag wins over the environment, which
//! wins over the file, which wins over the default. The file is read again on every policy
//! reload, so `overlays` set there can be switched on and off without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::config::{DecisionLog, ServeConfig, SourceConfig, TlsFiles};
use super::error::SettingsError;
use super::gate::Analysis;
use super::state::Limits;
use crate::engine::decide::DEFAULT_SLICE_DEPTH;
use crate::engine::pack::PackSpec;
use crate::files::read_toml;
use crate::storage::SourceLimits;

/// The policy pack to load: given to every command.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct PackArgs {
    /// Policy directory: schema.cedarschema, *.cedar, optional/, tests/, matrix.toml.
    #[arg(
        long,
        global = true,
        env = "BLUE_AUTHZ_POLICIES",
        default_value = "policies"
    )]
    pub policies: PathBuf,
    /// Enable an optional overlay from <policies>/optional/ (repeatable, or comma-separated).
    #[arg(
        long = "overlay",
        global = true,
        env = "BLUE_AUTHZ_OVERLAYS",
        value_delimiter = ','
    )]
    pub overlays: Vec<String>,
}

impl PackArgs {
    pub fn spec(&self) -> PackSpec {
        PackSpec::new(&self.policies, &self.overlays)
    }
}

/// The embedded database: given to `serve`, `import` and `export`.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct DbArgs {
    /// The embedded database file (redb).
    #[arg(long, env = "BLUE_AUTHZ_DB", default_value = "blue-authz.redb")]
    pub db: PathBuf,
}

/// Every `serve` setting but the pack's.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct ServeSettings {
    /// TCP address of the decision service ('': none, Unix socket only).
    #[arg(long, env = "BLUE_AUTHZ_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    pub listen: Listen,
    #[command(flatten)]
    #[serde(flatten)]
    pub db: DbArgs,
    /// The shared source of entity data, a PostgreSQL connection string
    /// (`postgres://user@host:5432/db`); '' for the embedded database alone. With a source,
    /// --db is this replica's local copy.
    #[arg(
        long,
        env = "BLUE_AUTHZ_SOURCE",
        default_value = "",
        hide_env_values = true
    )]
    pub source: String,
    /// How often a replica polls the source's change log when no notification comes, in ms.
    #[arg(long, env = "BLUE_AUTHZ_SOURCE_POLL_MS", default_value_t = 500)]
    pub source_poll_ms: u64,
    /// Listen for the source's commit notifications, so that replicas apply a batch at once
    /// (false: poll only).
    #[arg(long, env = "BLUE_AUTHZ_SOURCE_NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub source_notify: bool,
    /// Batches the source's change log keeps (0: no count limit); older ones are pruned.
    #[arg(
        long,
        env = "BLUE_AUTHZ_LOG_RETENTION_BATCHES",
        default_value_t = 1_000_000
    )]
    pub log_retention_batches: u64,
    /// How long a writer waits for the source's head lock before the write fails, in ms
    /// (PostgreSQL's lock_timeout; keep it above source_idle_timeout_ms, so that a write
    /// outwaits a paused writer's session).
    #[arg(
        long,
        env = "BLUE_AUTHZ_SOURCE_LOCK_TIMEOUT_MS",
        default_value_t = 4000
    )]
    pub source_lock_timeout_ms: u64,
    /// How long one statement at the source may run, in ms (PostgreSQL's statement_timeout).
    #[arg(
        long,
        env = "BLUE_AUTHZ_SOURCE_STATEMENT_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub source_statement_timeout_ms: u64,
    /// How long a writer's transaction at the source may sit idle before PostgreSQL ends its
    /// session and rolls it back, in ms (idle_in_transaction_session_timeout): the longest a
    /// paused or partitioned replica can hold every other replica's writes.
    #[arg(
        long,
        env = "BLUE_AUTHZ_SOURCE_IDLE_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub source_idle_timeout_ms: u64,
    /// How long idempotency keys are remembered, in seconds.
    #[arg(
        long,
        env = "BLUE_AUTHZ_IDEMPOTENCY_WINDOW_SECS",
        default_value_t = 86_400
    )]
    pub idempotency_window_secs: u64,
    /// Longest a write may take when the call sets no deadline (and the most a deadline may
    /// give it), in ms: a write not committed by then is never committed.
    #[arg(long, env = "BLUE_AUTHZ_MAX_WRITE_WAIT_MS", default_value_t = 10_000)]
    pub max_write_wait_ms: u64,
    /// How long the source's change log keeps a batch, in hours (0: no age limit).
    #[arg(long, env = "BLUE_AUTHZ_LOG_RETENTION_HOURS", default_value_t = 168)]
    pub log_retention_hours: u64,
    /// Cedar JSON entities file written into the database (or the shared source) when it is
    /// empty ('': none).
    #[arg(long, env = "BLUE_AUTHZ_SEED", default_value = "data/demo.json")]
    pub seed: String,
    /// TCP address of the data service (EntityStore; '': none); it runs only when a token is
    /// set.
    #[arg(long, env = "BLUE_AUTHZ_DATA_LISTEN", default_value = "127.0.0.1:50052", value_parser = parse_listen)]
    pub data_listen: Listen,
    /// Bearer token the data service requires (`authorization: Bearer <token>`).
    #[arg(long, env = "BLUE_AUTHZ_DATA_TOKEN", hide_env_values = true)]
    pub data_token: Option<String>,
    /// A file holding the data service's token (its first line), so that the token is not
    /// on the command line or in the environment; instead of --data-token.
    #[arg(
        long,
        env = "BLUE_AUTHZ_DATA_TOKEN_FILE",
        conflicts_with = "data_token"
    )]
    pub data_token_file: Option<PathBuf>,
    /// Attribute hops a per-request entity slice follows from the request's entities.
    #[arg(long, env = "BLUE_AUTHZ_SLICE_DEPTH", default_value_t = DEFAULT_SLICE_DEPTH)]
    pub slice_depth: usize,
    /// Most requests in one BatchIsAuthorized call.
    #[arg(long, env = "BLUE_AUTHZ_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,
    /// Most operations in one WriteEntities batch.
    #[arg(long, env = "BLUE_AUTHZ_MAX_WRITE_OPS", default_value_t = 10_000)]
    pub max_write_ops: usize,
    /// Threads that serve calls (0: one per available CPU). A sidecar with one CPU's worth of
    /// quota serves more calls per CPU second with 1.
    #[arg(long, env = "BLUE_AUTHZ_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Largest request message, in bytes.
    #[arg(long, env = "BLUE_AUTHZ_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Bytes of request bodies that all calls in flight may hold at once, on every listener;
    /// past it a call is refused (RESOURCE_EXHAUSTED, HTTP 503) before it is decoded. At least
    /// max_message_bytes.
    #[arg(
        long,
        env = "BLUE_AUTHZ_MAX_INFLIGHT_BYTES",
        default_value_t = super::state::DEFAULT_MAX_INFLIGHT_BYTES
    )]
    pub max_inflight_bytes: usize,
    /// Most (principal, resource) pairs of the stored data whose decision a policy reload may
    /// change; a candidate that changes more is refused and says so (0: any number).
    #[arg(long, env = "BLUE_AUTHZ_MAX_RELOAD_IMPACT", default_value_t = 0)]
    pub max_reload_impact: usize,
    /// Open connections per listener; at the limit, new ones wait to be accepted.
    #[arg(long, env = "BLUE_AUTHZ_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (calls in flight) per connection.
    #[arg(
        long,
        env = "BLUE_AUTHZ_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 256
    )]
    pub max_streams_per_connection: u32,
    /// Seconds between HTTP/2 keepalive pings on an idle connection (0: no pings).
    #[arg(long, env = "BLUE_AUTHZ_KEEPALIVE_SECS", default_value_t = 30)]
    pub keepalive_secs: u64,
    /// Seconds a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "BLUE_AUTHZ_KEEPALIVE_TIMEOUT_SECS", default_value_t = 10)]
    pub keepalive_timeout_secs: u64,
    /// Milliseconds a new connection has for its TLS handshake, and then for its first
    /// bytes (the HTTP/2 preface or an HTTP/1.1 request's headers), before it is dropped.
    #[arg(
        long,
        env = "BLUE_AUTHZ_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub handshake_timeout_ms: u64,
    /// Longest a call waits for its min_revision (X-Min-Revision over HTTP), in ms, whatever
    /// the call's own deadline: a revision not reached by then is FAILED_PRECONDITION (HTTP
    /// 412).
    #[arg(long, env = "BLUE_AUTHZ_MAX_REVISION_WAIT_MS", default_value_t = 5000)]
    pub max_revision_wait_ms: u64,
    /// Watch the policy directory and the config file, and reload on changes (SIGHUP reloads
    /// too).
    #[arg(long, env = "BLUE_AUTHZ_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch: bool,
    /// Also serve decisions on this Unix domain socket.
    #[arg(long, env = "BLUE_AUTHZ_LISTEN_UNIX")]
    pub listen_unix: Option<PathBuf>,
    /// Also serve the data service on this Unix domain socket (with the token).
    #[arg(long, env = "BLUE_AUTHZ_DATA_LISTEN_UNIX")]
    pub data_listen_unix: Option<PathBuf>,
    /// File mode of the Unix sockets, in octal.
    #[arg(long, env = "BLUE_AUTHZ_UNIX_MODE", default_value = "660")]
    pub unix_mode: String,
    /// TLS certificate chain (PEM) for the TCP listeners; needs --tls-key.
    #[arg(long, env = "BLUE_AUTHZ_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the TCP listeners; needs --tls-cert.
    #[arg(long, env = "BLUE_AUTHZ_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to: mutual TLS, and calls without
    /// a valid client certificate are refused. Needs --tls-cert.
    #[arg(long, env = "BLUE_AUTHZ_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Address of the Prometheus metrics endpoint, `GET /metrics` ('': none).
    #[arg(long, env = "BLUE_AUTHZ_METRICS_LISTEN", default_value = "", value_parser = parse_listen)]
    pub metrics_listen: Listen,
    /// Also serve the gRPC health service alone on this address, for probes ('': none).
    #[arg(long, env = "BLUE_AUTHZ_HEALTH_LISTEN", default_value = "", value_parser = parse_listen)]
    pub health_listen: Listen,
    /// TCP address of the AuthZEN HTTP API (HTTP/1.1 and HTTP/2, TLS as the gRPC listeners;
    /// '': none).
    #[arg(long, env = "BLUE_AUTHZ_HTTP_LISTEN", default_value = "127.0.0.1:8180", value_parser = parse_listen)]
    pub http_listen: Listen,
    /// TCP address of the policy author's console, a web page at `/console` behind the data
    /// token ('': none; loopback unless you mean otherwise).
    #[arg(long, env = "BLUE_AUTHZ_CONSOLE_LISTEN", default_value = "", value_parser = parse_listen)]
    pub console_listen: Listen,
    /// Bearer token AuthZEN callers must send (`Authorization: Bearer <token>`); none: no
    /// token needed.
    #[arg(long, env = "BLUE_AUTHZ_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// A file holding the AuthZEN callers' token (its first line); instead of --http-token.
    #[arg(
        long,
        env = "BLUE_AUTHZ_HTTP_TOKEN_FILE",
        conflicts_with = "http_token"
    )]
    pub http_token_file: Option<PathBuf>,
    /// `client_id:client_secret` AuthZEN callers may send as HTTP Basic credentials
    /// (`client_secret_basic`), besides or instead of the bearer token; none: not accepted.
    #[arg(long, env = "BLUE_AUTHZ_HTTP_BASIC", hide_env_values = true)]
    pub http_basic: Option<String>,
    /// A file holding `client_id:client_secret` (its first line); instead of --http-basic.
    #[arg(
        long,
        env = "BLUE_AUTHZ_HTTP_BASIC_FILE",
        conflicts_with = "http_basic"
    )]
    pub http_basic_file: Option<PathBuf>,
    /// Whether AuthZEN decisions carry their reason `context` unless a request's
    /// `options.include_context` says otherwise.
    #[arg(long, env = "BLUE_AUTHZ_HTTP_DECISION_CONTEXT", default_value_t = true, action = clap::ArgAction::Set)]
    pub http_decision_context: bool,
    /// Whether an ext_authz denial's body names the determining policies (Envoy's 403).
    #[arg(long, env = "BLUE_AUTHZ_EXT_AUTHZ_DENY_POLICIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub ext_authz_deny_policies: bool,
    /// The base URL AuthZEN discovery names, as callers reach this server
    /// (`https://authz.example.com`; '': the scheme and the request's Host).
    #[arg(long, env = "BLUE_AUTHZ_HTTP_PUBLIC_URL", default_value = "")]
    pub http_public_url: String,
    /// Whether a policy set must have its invariants proved (with cvc5) to serve: `required`
    /// refuses to load without the solver; `optional` loads on validation and tests when the
    /// solver is missing, and says so. A failed invariant refuses the set either way.
    #[arg(long, env = "BLUE_AUTHZ_ANALYSIS", default_value = "optional", value_parser = ["required", "optional"])]
    pub analysis: String,
    /// Write one JSON line per decision to standard output.
    #[arg(long, env = "BLUE_AUTHZ_DECISION_LOG", default_value_t = false, action = clap::ArgAction::Set)]
    pub decision_log: bool,
    /// Fraction of decisions the decision log writes, from 0 to 1.
    #[arg(long, env = "BLUE_AUTHZ_DECISION_LOG_SAMPLE", default_value_t = 1.0)]
    pub decision_log_sample: f64,
    /// Also log each request's context and request-scoped entities.
    #[arg(long, env = "BLUE_AUTHZ_DECISION_LOG_CONTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    pub decision_log_context: bool,
    /// Filter of the operational log (standard error), e.g. `info` or `blue_authz=debug`.
    #[arg(long, env = "BLUE_AUTHZ_LOG", default_value = "info")]
    pub log: String,
    /// Format of the operational log: text or json.
    #[arg(long, env = "BLUE_AUTHZ_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A listen address, or none (''). In a file and in `--print-config`: a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

/// Parses an address like `127.0.0.1:50051`, or '' for none.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:50051 (or '' for none)"))
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.map(|a| a.to_string()).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_listen(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether a setting was given by flag or environment (and so wins over the config file).
fn set_by_user(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// The ids (file keys) of the arguments a clap `Args` struct declares.
pub(super) fn keys<A: Args>() -> Vec<String> {
    A::augment_args(clap::Command::new("settings"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

/// Replaces, in `value`, every setting the file gives and the user did not (by flag or
/// environment); a key of the file that `value` does not have is left for the caller.
pub(super) fn overlay_file<T: Serialize + for<'de> Deserialize<'de>>(
    value: &mut T,
    file: &Path,
    table: &toml::Table,
    own: &[String],
    user_set: &dyn Fn(&str) -> bool,
) -> Result<(), SettingsError> {
    let wrong = |key: &str, message: String| SettingsError::Value {
        file: file.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let mut merged = toml::Table::try_from(&*value).map_err(|e| wrong("", e.to_string()))?;
    for (key, v) in table {
        if !own.contains(key) || user_set(key) {
            continue;
        }
        merged.insert(key.clone(), v.clone());
        // One key at a time, so that a wrong value is reported under its own name.
        *value = merged
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| wrong(key, e.message().to_string()))?;
    }
    Ok(())
}

/// The settings of flags and environment (`sub`: the matches of `serve`), with the configuration file's filling in what neither gave.
pub fn with_file(
    pack: &mut PackArgs,
    serve: &mut ServeSettings,
    sub: &ArgMatches,
    file: &Path,
) -> Result<(), SettingsError> {
    let table = read_known(file)?;
    // Global flags are seen by the subcommand's matches too.
    let user_set = |key: &str| set_by_user(sub, key);
    overlay_file(pack, file, &table, &keys::<PackArgs>(), &user_set)?;
    overlay_file(serve, file, &table, &keys::<ServeSettings>(), &user_set)
}

/// Reads a configuration file, refusing a key that is not a setting.
pub(super) fn read_known(file: &Path) -> Result<toml::Table, SettingsError> {
    let table: toml::Table = read_toml(file)?;
    let pack_keys = keys::<PackArgs>();
    let serve_keys = keys::<ServeSettings>();
    if let Some(key) = table
        .keys()
        .find(|k| !pack_keys.contains(k) && !serve_keys.contains(k))
    {
        return Err(SettingsError::Unknown {
            file: file.to_path_buf(),
            key: key.clone(),
        });
    }
    Ok(table)
}

/// The settings a user gave by flag or environment (`sub`: the matches of `serve`): the file's
/// values of these never apply, at start-up or on a reload.
pub fn user_set_keys(sub: &ArgMatches) -> Vec<String> {
    keys::<PackArgs>()
        .into_iter()
        .chain(keys::<ServeSettings>())
        .filter(|k| set_by_user(sub, k))
        .collect()
}

/// The overlays a configuration file enables (none if it names none): read again on reloads.
pub fn file_overlays(file: &Path) -> Result<Vec<String>, SettingsError> {
    let table: toml::Table = read_toml(file)?;
    match table.get("overlays") {
        None => Ok(Vec::new()),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| SettingsError::Value {
                file: file.to_path_buf(),
                key: "overlays".into(),
                message: e.message().to_string(),
            }),
    }
}

/// The resolved settings written as a configuration file (the token redacted).
pub fn print(pack: &PackArgs, serve: &ServeSettings) -> Result<String, toml::ser::Error> {
    let mut table = toml::Table::try_from(pack)?;
    let mut serve = serve.clone();
    serve.data_token = serve.data_token.map(|_| "<redacted>".to_string());
    serve.http_token = serve.http_token.map(|_| "<redacted>".to_string());
    serve.http_basic = serve.http_basic.map(|_| "<redacted>".to_string());
    serve.source = redact_password(&serve.source);
    table.extend(toml::Table::try_from(&serve)?);
    toml::to_string(&table)
}

/// A connection string with its password replaced (`postgres://u:secret@h` or
/// `password=secret`).
fn redact_password(url: &str) -> String {
    if let Some(scheme) = url.find("://") {
        let rest = &url[scheme + 3..];
        if let Some(at) = rest.find('@') {
            if let Some(colon) = rest[..at].find(':') {
                let start = scheme + 3 + colon + 1;
                return format!("{}<redacted>{}", &url[..start], &url[scheme + 3 + at..]);
            }
        }
        return url.to_string();
    }
    url.split(' ')
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=<redacted>".to_string(),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl ServeSettings {
    /// Checks the settings clap cannot, and builds what the server needs.
    pub fn config(
        &self,
        pack: &PackArgs,
        config_file: Option<PathBuf>,
        overlays_fixed: bool,
    ) -> Result<ServeConfig, SettingsError> {
        let invalid = |flag, message: String| SettingsError::Invalid { flag, message };
        let unix_mode = u32::from_str_radix(&self.unix_mode, 8).map_err(|_| {
            invalid(
                "--unix-mode",
                format!("`{}` is not an octal file mode", self.unix_mode),
            )
        })?;
        if !(0.0..=1.0).contains(&self.decision_log_sample) {
            return Err(invalid(
                "--decision-log-sample",
                format!("{} is not a fraction from 0 to 1", self.decision_log_sample),
            ));
        }
        let analysis = match self.analysis.as_str() {
            "required" => Analysis::Required,
            "optional" => Analysis::Optional,
            other => {
                return Err(invalid(
                    "--analysis",
                    format!("`{other}` is not required or optional"),
                ))
            }
        };
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                "--log-format",
                format!("`{}` is not text or json", self.log_format),
            ));
        }
        if self.max_inflight_bytes < self.max_message_bytes {
            return Err(invalid(
                "--max-inflight-bytes",
                format!(
                    "{} is below max_message_bytes ({}): a request of the largest size could \
                     never be served",
                    self.max_inflight_bytes, self.max_message_bytes
                ),
            ));
        }
        if self.data_token.is_some() && self.data_token_file.is_some() {
            return Err(invalid(
                "--data-token-file",
                "give the data token or a file holding it, not both".into(),
            ));
        }
        let tls = match (self.tls_cert.clone(), self.tls_key.clone()) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca.clone(),
            }),
            (None, None) if self.tls_client_ca.is_none() => None,
            _ => return Err(invalid(
                "--tls-cert",
                "TLS needs both --tls-cert and --tls-key (and they are needed for --tls-client-ca)"
                    .into(),
            )),
        };
        Ok(ServeConfig {
            listen: self.listen.0,
            pack: pack.spec(),
            db: self.db.db.clone(),
            seed: Some(self.seed.clone())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            data_listen: self.data_listen.0,
            // A token file is read when serving starts ([`ServeSettings::read_token_file`]).
            data_token: self.data_token.clone().filter(|t| !t.is_empty()),
            unix: self.listen_unix.clone(),
            data_unix: self.data_listen_unix.clone(),
            unix_mode,
            limits: Limits {
                engine: crate::engine::view::Limits {
                    slice_depth: self.slice_depth,
                },
                max_batch: self.max_batch,
                max_write_ops: self.max_write_ops,
                max_message_bytes: self.max_message_bytes,
                max_inflight_bytes: self.max_inflight_bytes,
                max_revision_wait: Duration::from_millis(self.max_revision_wait_ms),
                max_write_wait: Duration::from_millis(self.max_write_wait_ms.max(1)),
                key_window: Duration::from_secs(self.idempotency_window_secs),
                max_reload_impact: Some(self.max_reload_impact).filter(|n| *n > 0),
            },
            conn: super::listeners::ConnLimits {
                max_connections: self.max_connections.max(1),
                max_streams: self.max_streams_per_connection.max(1),
                keepalive: Some(Duration::from_secs(self.keepalive_secs)).filter(|d| !d.is_zero()),
                keepalive_timeout: Duration::from_secs(self.keepalive_timeout_secs.max(1)),
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms.max(1)),
            },
            source: Some(self.source.trim())
                .filter(|s| !s.is_empty())
                .map(|url| SourceConfig {
                    url: url.to_string(),
                    poll: Duration::from_millis(self.source_poll_ms.max(1)),
                    keep_batches: self.log_retention_batches,
                    max_age: Some(self.log_retention_hours)
                        .filter(|h| *h > 0)
                        .map(|h| Duration::from_secs(h * 3600)),
                    notify: self.source_notify,
                    limits: SourceLimits {
                        lock_timeout: Duration::from_millis(self.source_lock_timeout_ms.max(1)),
                        statement_timeout: Duration::from_millis(
                            self.source_statement_timeout_ms.max(1),
                        ),
                        idle_timeout: Duration::from_millis(self.source_idle_timeout_ms.max(1)),
                        key_window: Duration::from_secs(self.idempotency_window_secs),
                    },
                }),
            watch: self.watch,
            analysis,
            config_file,
            overlays_fixed,
            live_config: None,
            log_filter: None,
            tls,
            metrics_listen: self.metrics_listen.0,
            health_listen: self.health_listen.0,
            http_listen: self.http_listen.0,
            console_listen: self.console_listen.0,
            http_token: self.http_token.clone().filter(|t| !t.is_empty()),
            http_basic: self.http_basic.clone().filter(|t| !t.is_empty()),
            http_decision_context: self.http_decision_context,
            ext_authz_deny_policies: self.ext_authz_deny_policies,
            http_public_url: Some(self.http_public_url.trim().to_string())
                .filter(|u| !u.is_empty()),
            decision_log: DecisionLog {
                enabled: self.decision_log,
                sample: self.decision_log_sample,
                include_context: self.decision_log_context,
            },
        })
    }

    /// The token in `data_token_file` (its first line, trimmed), if one is given: read when
    /// serving starts, not for `--print-config`.
    pub fn read_token_file(&self) -> Result<Option<String>, SettingsError> {
        read_token(self.data_token_file.as_deref(), "--data-token-file")
    }

    /// The token in `http_token_file`, as [`ServeSettings::read_token_file`].
    pub fn read_http_token_file(&self) -> Result<Option<String>, SettingsError> {
        read_token(self.http_token_file.as_deref(), "--http-token-file")
    }

    /// The credentials in `http_basic_file`, as [`ServeSettings::read_token_file`].
    pub fn read_http_basic_file(&self) -> Result<Option<String>, SettingsError> {
        read_token(self.http_basic_file.as_deref(), "--http-basic-file")
    }
}

/// A token file's first line, trimmed; an unreadable or empty file is an error of `flag`.
fn read_token(path: Option<&Path>, flag: &'static str) -> Result<Option<String>, SettingsError> {
    {
        let Some(path) = path else {
            return Ok(None);
        };
        let invalid = |message: String| SettingsError::Invalid { flag, message };
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let token = text.lines().next().unwrap_or_default().trim().to_string();
        if token.is_empty() {
            return Err(invalid(format!("{} holds no token", path.display())));
        }
        Ok(Some(token))
    }
}

/// Whether `overlays` were given by flag or environment (so the file's never apply).
pub fn overlays_set_by_user(sub: &ArgMatches) -> bool {
    set_by_user(sub, "overlays")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Both {
        #[command(flatten)]
        pack: PackArgs,
        #[command(flatten)]
        serve: ServeSettings,
    }

    #[test]
    fn every_flag_is_a_file_key_and_back() {
        // What --print-config writes is a file these settings read back unchanged.
        use clap::Parser;
        let both = Both::parse_from(["x", "--listen", "", "--max-batch", "3"]);
        let text = print(&both.pack, &both.serve).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for key in table.keys() {
            assert!(
                keys::<PackArgs>().contains(key) || keys::<ServeSettings>().contains(key),
                "{key}"
            );
        }
        let back: ServeSettings = table.clone().try_into().unwrap();
        assert_eq!(back.listen, Listen(None));
        assert_eq!(back.max_batch, 3);
    }
}
