//! Serving: the listeners (decisions; data, separately and behind a token), health and
//! reflection, graceful shutdown.
//!
//! Start-up is two steps so that health is truthful: [`start`] binds and serves with health
//! NOT_SERVING (calls answer UNAVAILABLE), then [`Running::load`] loads and validates the
//! policies, opens the database (seeding it if empty) and flips health to SERVING.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::config;
pub use crate::engine::Limits;
use crate::engine::{load_store, Engine, EngineError};
use crate::error::LoadError;
use crate::grpc::pb::authorizer_server::AuthorizerServer;
use crate::grpc::pb::entity_store_server::EntityStoreServer;
use crate::grpc::pb::policies_server::PoliciesServer;
use crate::grpc::PoliciesService;
use crate::grpc::{bearer_auth, pb, AuthorizerService, EntityStoreService};
use crate::policy::{PackSpec, PolicyPack};
use crate::reload::{self, Reloader, SpecSource};
use crate::storage::{RedbStorage, Storage};
use crate::telemetry::{self, DecisionLog, Telemetry};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Config(String),
    #[error("start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

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
    /// The overlays were set by flag or environment: the file's do not apply.
    pub overlays_fixed: bool,
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
            watch: true,
            config_file: None,
            overlays_fixed: true,
            tls: None,
            metrics_listen: None,
            health_listen: None,
            decision_log: DecisionLog::default(),
        }
    }

    /// Where reloads take the pack spec from: fixed, or with the overlays read from the
    /// configuration file each time.
    fn spec_source(&self) -> SpecSource {
        let spec = self.pack.clone();
        match (&self.config_file, self.overlays_fixed) {
            (Some(file), false) => {
                let file = file.clone();
                Box::new(move || {
                    let overlays = config::read(&file)
                        .map_err(|e| e.to_string())?
                        .overlays
                        .unwrap_or_default();
                    Ok(PackSpec::new(&spec.dir, &overlays))
                })
            }
            _ => Box::new(move || Ok(spec.clone())),
        }
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
    fn server_config(&self) -> Result<ServerTlsConfig, ServeError> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| {
                ServeError::Config(format!(
                    "cannot read the TLS {what} {}: {e}",
                    path.display()
                ))
            })
        };
        let identity =
            Identity::from_pem(read(&self.cert, "certificate")?, read(&self.key, "key")?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(config)
    }
}

/// A running server.
pub struct Running {
    /// The decision service's TCP address as bound (useful with port 0), if it listens on TCP.
    pub addr: Option<SocketAddr>,
    /// The data service's TCP address as bound, if it runs on TCP.
    pub data_addr: Option<SocketAddr>,
    /// The metrics endpoint's address as bound, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The health-only listener's address as bound, if any.
    pub health_addr: Option<SocketAddr>,
    pub engine: Arc<Engine>,
    pub reloader: Arc<Reloader>,
    pub telemetry: Arc<Telemetry>,
    watcher: Option<notify::RecommendedWatcher>,
    config: ServeConfig,
    health: HealthReporter,
    shutdown: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
}

/// How long the policy directory must be quiet after a change before a reload starts, so that
/// an editor's burst of writes makes one candidate.
pub const RELOAD_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// The name the health service reports the decision service under.
pub const AUTHORIZER_SERVICE: &str = "blue.authz.v1.Authorizer";

/// Binds and starts serving, with health NOT_SERVING until [`Running::load`] succeeds.
pub async fn start(config: ServeConfig) -> Result<Running, ServeError> {
    if config.listen.is_none() && config.unix.is_none() {
        return Err(ServeError::Config(
            "the decision service needs a TCP address or a Unix socket (listen, listen_unix)"
                .into(),
        ));
    }
    let tls = config
        .tls
        .as_ref()
        .map(TlsFiles::server_config)
        .transpose()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(AUTHORIZER_SERVICE, ServingStatus::NotServing)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let engine = Arc::new(Engine::new(config.limits));
    let reloader = Reloader::new(engine.clone(), config.spec_source());
    let telemetry = Telemetry::new(config.decision_log);
    // tonic refuses anything over twice our limit itself; between the two, the handlers
    // answer INVALID_ARGUMENT naming the limit.
    let decode_cap = config.limits.max_message_bytes.saturating_mul(2);
    let authorizer =
        AuthorizerServer::new(AuthorizerService::new(engine.clone(), telemetry.clone()))
            .max_decoding_message_size(decode_cap);
    let health_only = Routes::new(health_service.clone());
    let decisions = Routes::new(health_service)
        .add_service(reflection)
        .add_service(authorizer)
        .add_service(PoliciesServer::new(PoliciesService::new(reloader.clone())));
    let mut listeners = Listeners::default();
    let mut addr = None;
    if let Some(listen) = config.listen {
        let (listener, bound) = bind(listen).await?;
        listeners.spawn(decisions.clone(), incoming(listener), tls.clone())?;
        tracing::info!(addr = %bound, tls = tls.is_some(), "decision service listening (not serving until loaded)");
        addr = Some(bound);
    }
    if let Some(path) = &config.unix {
        listeners.spawn(decisions, bind_unix(path, config.unix_mode)?, None)?;
        tracing::info!(path = %path.display(), "decision service listening on a Unix socket");
    }

    let mut data_addr = None;
    match &config.data_token {
        Some(token) if !token.is_empty() => {
            let data = Routes::new(tonic::service::interceptor::InterceptedService::new(
                EntityStoreServer::new(EntityStoreService::new(engine.clone(), telemetry.clone()))
                    .max_decoding_message_size(decode_cap),
                bearer_auth(token.clone()),
            ));
            if let Some(listen) = config.data_listen {
                let (listener, bound) = bind(listen).await?;
                listeners.spawn(data.clone(), incoming(listener), tls.clone())?;
                tracing::info!(addr = %bound, tls = tls.is_some(), "data service listening");
                data_addr = Some(bound);
            }
            if let Some(path) = &config.data_unix {
                listeners.spawn(data, bind_unix(path, config.unix_mode)?, None)?;
                tracing::info!(path = %path.display(), "data service listening on a Unix socket");
            }
        }
        _ => tracing::warn!("no data token configured: the data service is off"),
    }

    let mut health_addr = None;
    if let Some(listen) = config.health_listen {
        let (listener, bound) = bind(listen).await?;
        listeners.spawn(health_only, incoming(listener), None)?;
        tracing::info!(addr = %bound, "health service listening");
        health_addr = Some(bound);
    }

    let mut metrics_addr = None;
    if let Some(listen) = config.metrics_listen {
        let (listener, bound) = bind(listen).await?;
        let registry = telemetry.registry(engine.clone(), reloader.clone());
        let (tx, rx) = oneshot::channel::<()>();
        listeners.shutdown.push(tx);
        listeners.tasks.push(tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            telemetry::serve_metrics(listener, registry, stop)
                .await
                .map_err(|e| ServeError::Config(format!("metrics endpoint: {e}")))
        }));
        tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
        metrics_addr = Some(bound);
    }
    let Listeners { shutdown, tasks } = listeners;
    Ok(Running {
        addr,
        data_addr,
        metrics_addr,
        health_addr,
        engine,
        reloader,
        telemetry,
        watcher: None,
        config,
        health,
        shutdown,
        tasks,
    })
}

/// The servers started, and how to stop them.
#[derive(Default)]
struct Listeners {
    shutdown: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
}

impl Listeners {
    fn spawn<I, IO, IE>(
        &mut self,
        routes: Routes,
        incoming: I,
        tls: Option<ServerTlsConfig>,
    ) -> Result<(), ServeError>
    where
        I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let (tx, rx) = oneshot::channel::<()>();
        self.shutdown.push(tx);
        let server = builder
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            });
        self.tasks
            .push(tokio::spawn(async move { Ok(server.await?) }));
        Ok(())
    }
}

/// A Unix domain socket at `path` with file mode `mode`, replacing a stale socket file.
fn bind_unix(
    path: &std::path::Path,
    mode: u32,
) -> Result<tokio_stream::wrappers::UnixListenerStream, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err =
        |e: std::io::Error| ServeError::Config(format!("unix socket {}: {e}", path.display()));
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(tokio_stream::wrappers::UnixListenerStream::new(listener))
}

/// Accepted connections with TCP_NODELAY: small gRPC frames must not wait for Nagle.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

impl Running {
    /// Loads and strictly validates the policies, loads the entity data, and starts serving
    /// decisions (health SERVING). On error nothing is installed and health stays NOT_SERVING.
    pub async fn load(&mut self) -> Result<(), ServeError> {
        let spec = self.reloader.spec().map_err(ServeError::Config)?;
        let db = self.config.db.clone();
        let seed = self.config.seed.clone();
        let (pack, store, storage) =
            tokio::task::spawn_blocking(move || -> Result<_, ServeError> {
                let started = std::time::Instant::now();
                let pack = PolicyPack::load(&spec)?;
                let loaded = started.elapsed();
                let storage: Arc<dyn Storage> =
                    Arc::new(RedbStorage::open(&db).map_err(EngineError::from)?);
                tracing::info!(
                    policies_ms = loaded.as_millis() as u64,
                    open_ms = (started.elapsed() - loaded).as_millis() as u64,
                    "policies loaded, database open"
                );
                let store = load_store(storage.as_ref(), &pack, seed.as_deref())?;
                Ok((pack, store, storage))
            })
            .await??;
        tracing::info!(
            policies = pack.policies.policies().count(),
            unplanned_actions = pack.unplanned_actions().len(),
            version = %pack.version,
            overlays = ?pack.spec.overlays,
            entities = store.len(),
            revision = store.revision(),
            "policies and data loaded"
        );
        self.engine.install(pack, store, storage);
        if self.config.watch {
            let mut paths = vec![self.config.pack.dir.clone()];
            paths.extend(self.config.config_file.clone());
            let watcher =
                reload::watch(self.reloader.clone(), paths, RELOAD_QUIET).map_err(|e| {
                    ServeError::Config(format!("cannot watch the policy directory: {e}"))
                })?;
            self.watcher = Some(watcher);
        }
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        self.health
            .set_service_status(AUTHORIZER_SERVICE, ServingStatus::Serving)
            .await;
        Ok(())
    }

    /// Reloads the policies now (as on SIGHUP), off the async runtime.
    pub async fn reload(&self) -> reload::Outcome {
        let reloader = self.reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(outcome) => outcome,
            Err(e) => reload::Outcome::Rejected(reload::Rejection {
                at_unix_ms: 0,
                candidate_version: None,
                reasons: vec![format!("reload task failed: {e}")],
            }),
        }
    }

    /// Stops accepting calls, lets in-flight calls finish, and returns when the server is down.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.watcher = None;
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        for task in self.tasks.drain(..) {
            task.await??;
        }
        self.engine.close();
        for path in self.config.unix.iter().chain(self.config.data_unix.iter()) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

/// Reloads the policies on every SIGHUP, until the process ends.
pub fn reload_on_sighup(running: &Running) {
    #[cfg(unix)]
    {
        let reloader = running.reloader.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading policies");
                let reloader = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = running;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}
