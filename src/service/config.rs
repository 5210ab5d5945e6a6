//! What a server is configured with, once the settings are resolved: [`ServeConfig`], its TLS
//! files and its decision log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::error::ServeError;
pub use super::replica::SourceConfig;
use super::state::Limits;
use crate::engine::pack::PackSpec;

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The decision service's TCP address (None: Unix socket only).
    pub listen: Option<SocketAddr>,
    pub pack: PackSpec,
    /// The embedded database file.
    pub db: PathBuf,
    /// Cedar JSON entities file written into the database when it is empty.
    pub seed: Option<PathBuf>,
    /// The data service's TCP address (None: Unix socket only); it runs only with a token.
    pub data_listen: Option<SocketAddr>,
    /// Bearer token the data service requires. None: no data service.
    pub data_token: Option<String>,
    /// Also serve decisions on this Unix domain socket.
    pub unix: Option<PathBuf>,
    /// Also serve the data service on this Unix domain socket (with the token).
    pub data_unix: Option<PathBuf>,
    /// File mode of the Unix sockets.
    pub unix_mode: u32,
    pub limits: Limits,
    /// Every listener's connection limits and timeouts.
    pub conn: super::listeners::ConnLimits,
    /// The shared source this node replicates (None: the embedded database alone).
    pub source: Option<SourceConfig>,
    /// Watch the policy directory (and the config file) and reload on changes.
    pub watch: bool,
    /// The configuration file, read again on every reload for `overlays`.
    pub config_file: Option<PathBuf>,
    /// TLS (and mutual TLS) on the TCP listeners.
    pub tls: Option<TlsFiles>,
    /// Where to serve Prometheus metrics (`GET /metrics`); None: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve the gRPC health service alone here (for probes from outside a pod while
    /// decisions stay on loopback); plaintext.
    pub health_listen: Option<SocketAddr>,
    pub decision_log: DecisionLog,
    /// Where to serve the policy author's console (None: not at all); it needs the data
    /// token.
    pub console_listen: Option<SocketAddr>,
    /// Where to serve the AuthZEN HTTP API (None: not at all).
    pub http_listen: Option<SocketAddr>,
    /// Bearer token AuthZEN callers must send (None: none needed).
    pub http_token: Option<String>,
    /// `client_id:client_secret` AuthZEN callers may send as HTTP Basic (None: not accepted).
    pub http_basic: Option<String>,
    /// Whether AuthZEN decisions carry their reason `context` by default.
    pub http_decision_context: bool,
    /// Whether an ext_authz denial's body names the determining policies.
    pub ext_authz_deny_policies: bool,
    /// The base URL discovery names (None: the scheme and the request's `Host`).
    pub http_public_url: Option<String>,
    /// The overlays were set by flag or environment: the file's do not apply.
    pub overlays_fixed: bool,
    /// The configuration file as `serve` resolved it, read again on every reload (its live
    /// keys applied, the others logged as needing a restart); None: only `config_file`'s
    /// overlays are read again.
    pub live_config: Option<Arc<dyn LiveConfig>>,
    /// Sets the operational log's filter while serving (None: it stays as started).
    pub log_filter: Option<LogFilter>,
    /// Whether a pack must have its invariants proved to serve.
    pub analysis: super::gate::Analysis,
}

impl ServeConfig {
    /// Defaults for one policy directory and database: loopback ports 50051 and 50052.
    pub fn new(pack: PackSpec, db: PathBuf) -> Self {
        ServeConfig {
            listen: Some(([127, 0, 0, 1], 50051).into()),
            pack,
            db,
            seed: None,
            data_listen: Some(([127, 0, 0, 1], 50052).into()),
            data_token: None,
            unix: None,
            data_unix: None,
            unix_mode: 0o660,
            limits: Limits::default(),
            conn: super::listeners::ConnLimits::default(),
            source: None,
            watch: true,
            config_file: None,
            overlays_fixed: true,
            live_config: None,
            log_filter: None,
            analysis: super::gate::Analysis::default(),
            tls: None,
            metrics_listen: None,
            health_listen: None,
            decision_log: DecisionLog::default(),
            http_listen: None,
            console_listen: None,
            http_token: None,
            http_basic: None,
            http_decision_context: true,
            ext_authz_deny_policies: true,
            http_public_url: None,
        }
    }
}

/// Sets the operational log's filter (a checked `EnvFilter` text) while serving.
#[derive(Clone)]
pub struct LogFilter(pub Arc<SetFilter>);

/// What sets the log filter: the filter's text, or why it cannot be set.
pub type SetFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// A configuration file read again while serving (`service::live_config::ConfigFile`).
pub trait LiveConfig: Send + Sync + std::fmt::Debug {
    /// What the file resolves to now, and which keys changed since the last read.
    fn reread(&self) -> Result<Reread, super::error::SettingsError>;
}

/// What a changed configuration file asks of the running server.
#[derive(Debug, Clone, PartialEq)]
pub struct Reread {
    pub overlays: Vec<String>,
    pub decision_log: DecisionLog,
    /// The operational log's filter (already checked to parse).
    pub log: String,
    /// The keys whose change applies now, and those that need a restart.
    pub applied: Vec<String>,
    pub need_restart: Vec<String>,
}

impl std::fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogFilter")
    }
}

/// Certificate files for TLS on the TCP listeners (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to. Set: mutual TLS, and a client
    /// without a valid certificate is refused.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files as a rustls configuration for every TCP listener, offering HTTP/2 and
    /// HTTP/1.1 by ALPN (gRPC listeners then speak HTTP/2 alone).
    pub(super) fn rustls_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, ServeError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
            ServeError::Config(format!("TLS {what} {}: {e}", path.display()))
        };
        let certs =
            |path: &PathBuf, what: &str| -> Result<Vec<CertificateDer<'static>>, ServeError> {
                CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(what, path, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(what, path, &e))
            };
        let chain = certs(&self.cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad("key", &self.key, &e))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Config(format!("TLS: {e}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca, "client CA")? {
                    roots.add(c).map_err(|e| bad("client CA", ca, &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad("client CA", ca, &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| bad("certificate", &self.cert, &e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(std::sync::Arc::new(config))
    }
}

/// What the decision log writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionLog {
    pub enabled: bool,
    /// Fraction of decisions logged, 0.0 to 1.0.
    pub sample: f64,
    /// Also log each request's context and request-scoped entities (off: they may hold
    /// personal data).
    pub include_context: bool,
}

impl Default for DecisionLog {
    fn default() -> Self {
        DecisionLog {
            enabled: false,
            sample: 1.0,
            include_context: false,
        }
    }
}
