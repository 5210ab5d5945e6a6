//! The server's life: the listeners it starts (decisions; data, separately and behind a
//! token; the AuthZEN HTTP API; health alone; metrics), health and reflection, reload on SIGHUP, graceful shutdown.
//!
//! Start-up is two steps so that health is truthful: [`start`] binds and serves with health
//! NOT_SERVING (calls answer UNAVAILABLE), then [`Running::load`] loads and validates the
//! policies, opens the database (seeding it if empty) and flips health to SERVING.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::authzen::{self, AuthzenService};
pub use super::config::{DecisionLog, LogFilter, ServeConfig, TlsFiles};
pub use super::error::ServeError;
use super::grpc::ext_authz::{ExtAuthzService, EXT_AUTHZ_SERVICE};
use super::grpc::pb::authorizer_server::AuthorizerServer;
use super::grpc::pb::entity_store_server::EntityStoreServer;
use super::grpc::pb::policies_server::PoliciesServer;
use super::grpc::{bearer_auth, pb, AuthorizerService, EntityStoreService, PoliciesService};
use super::grpc::{codec, elsewhere, transport_errors};
use super::listeners::{bind, bind_unix, Listeners, Protocol};
use super::reload::{self, Reloader, SpecSource};
use super::replica::{Replica, ReplicaSlot};
use super::settings;
use super::startup;
pub use super::state::Limits;
use super::state::State;
use super::telemetry::{self, Telemetry};
use super::write::{DataPath, DataSlot, LocalPath};
use crate::engine::pack::PackSpec;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// Where reloads take the pack spec from: fixed, or with the overlays read from the
/// configuration file each time.
fn spec_source(config: &ServeConfig, telemetry: Arc<Telemetry>) -> SpecSource {
    let spec = config.pack.clone();
    if let Some(file) = config.live_config.clone() {
        // Read again on every reload: the live keys apply, the overlays go to the gate; a file
        // that does not resolve is the candidate's rejection, and nothing of it applies.
        let filter = config.log_filter.clone();
        return Box::new(move || {
            let r = file.reread()?;
            telemetry.set_decision_log(r.decision_log);
            if let Some(LogFilter(set)) = &filter {
                if let Err(e) = set(&r.log) {
                    tracing::warn!(filter = %r.log, "cannot set the log filter: {e}");
                }
            }
            Ok(PackSpec::new(&spec.dir, &r.overlays))
        });
    }
    match (&config.config_file, config.overlays_fixed) {
        (Some(file), false) => {
            let file = file.clone();
            Box::new(move || {
                let overlays = settings::file_overlays(&file)?;
                Ok(PackSpec::new(&spec.dir, &overlays))
            })
        }
        _ => Box::new(move || Ok(spec.clone())),
    }
}

/// A running server.
pub struct Running {
    /// The decision service's TCP address as bound (useful with port 0), if it listens on TCP.
    pub addr: Option<SocketAddr>,
    /// The data service's TCP address as bound, if it runs on TCP.
    pub data_addr: Option<SocketAddr>,
    /// The AuthZEN HTTP API's address as bound, if it runs.
    pub http_addr: Option<SocketAddr>,
    /// The metrics endpoint's address as bound, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The console's address as bound, if it runs.
    pub console_addr: Option<SocketAddr>,
    /// The health-only listener's address as bound, if any.
    pub health_addr: Option<SocketAddr>,
    /// The decision service's Unix socket, if it listens on one.
    pub unix: Option<std::path::PathBuf>,
    /// The data service's Unix socket, if it runs on one.
    pub data_unix: Option<std::path::PathBuf>,
    pub engine: Arc<State>,
    pub reloader: Arc<Reloader>,
    pub telemetry: Arc<Telemetry>,
    /// The replica of the shared source, once loaded (None: the embedded database alone).
    pub replica: ReplicaSlot,
    /// The data path start-up chose: the embedded database alone, or the replica.
    pub data: DataSlot,
    watcher: Option<notify::RecommendedWatcher>,
    config: ServeConfig,
    health: HealthReporter,
    shutdown: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
}

/// How long the policy directory must be quiet after a change before a reload starts, so that
/// an editor's burst of writes makes one candidate.
pub const RELOAD_QUIET: std::time::Duration = std::time::Duration::from_millis(300);

/// The name the health service reports the decision service under.
pub const AUTHORIZER_SERVICE: &str = "blue.authz.v1.Authorizer";

/// The name the health service reports the data path under: NOT_SERVING while writes fail
/// (a full disk), when decisions still go on.
pub const ENTITY_STORE_SERVICE: &str = "blue.authz.v1.EntityStore";

/// What the decision listener serves, as reflection lists it (the data service has a
/// listener of its own).
pub const DECISION_LISTENER_SERVICES: &[&str] = &[
    AUTHORIZER_SERVICE,
    "blue.authz.v1.Policies",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    EXT_AUTHZ_SERVICE,
];

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
        .map(TlsFiles::rustls_config)
        .transpose()?;
    let conn = config.conn;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(AUTHORIZER_SERVICE, ServingStatus::NotServing)
        .await;
    health
        .set_service_status(EXT_AUTHZ_SERVICE, ServingStatus::NotServing)
        .await;
    // Reflection in both versions (many tools speak only v1alpha), listing only what the
    // decision listener serves.
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(super::grpc::ext_authz::FILE_DESCRIPTOR_SET);
        for name in DECISION_LISTENER_SERVICES {
            b = b.with_service_name(*name);
        }
        b
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let engine = Arc::new(State::new(config.limits));
    let telemetry = Telemetry::new(config.decision_log);
    let reloader = Reloader::new(
        engine.clone(),
        spec_source(&config, telemetry.clone()),
        config.analysis,
    );
    let replica = ReplicaSlot::default();
    let data = DataSlot::default();
    // tonic refuses anything over twice our limit itself; between the two, the handlers
    // answer INVALID_ARGUMENT naming the limit.
    let decode_cap = config.limits.max_message_bytes.saturating_mul(2);
    let authorizer =
        AuthorizerServer::new(AuthorizerService::new(engine.clone(), telemetry.clone()))
            .max_decoding_message_size(decode_cap);
    let ext_authz = AuthorizationServer::new(ExtAuthzService::new(
        engine.clone(),
        telemetry.clone(),
        config.ext_authz_deny_policies,
    ))
    .max_decoding_message_size(decode_cap);
    let limit = config.limits.max_message_bytes;
    let health_only = transport_errors::wrap(
        elsewhere::wrap(
            Routes::new(health_service.clone()),
            "the health listener",
            &["grpc.health.v1.Health"],
        ),
        limit,
    );
    let decisions = transport_errors::wrap(
        codec::with_max_batch(
            elsewhere::wrap(
                Routes::new(health_service)
                    .add_service(reflection_v1)
                    .add_service(reflection_v1alpha)
                    .add_service(authorizer)
                    .add_service(ext_authz)
                    .add_service(PoliciesServer::new(PoliciesService::new(
                        reloader.clone(),
                        engine.clone(),
                        config.analysis,
                        config.data_token.clone().filter(|t| !t.is_empty()),
                    ))),
                "the decision listener",
                DECISION_LISTENER_SERVICES,
            ),
            config.limits.max_batch,
        ),
        limit,
    );
    let mut listeners = Listeners::new(super::inflight::Budget::new(
        config.limits.max_inflight_bytes,
        config.limits.max_message_bytes,
    ));
    let mut addr = None;
    if let Some(listen) = config.listen {
        let (listener, bound) = bind(listen).await?;
        listeners.spawn(
            listener,
            tls.clone(),
            decisions.clone(),
            Protocol::Grpc,
            conn,
        );
        tracing::info!(addr = %bound, tls = tls.is_some(), "decision service listening (not serving until loaded)");
        addr = Some(bound);
    }
    if let Some(path) = &config.unix {
        listeners.spawn(
            bind_unix(path, config.unix_mode)?,
            None,
            decisions,
            Protocol::Grpc,
            conn,
        );
        tracing::info!(path = %path.display(), "decision service listening on a Unix socket");
    }
    let unix = config.unix.clone();
    let mut data_unix = None;

    let mut data_addr = None;
    match &config.data_token {
        Some(token) if !token.is_empty() => {
            let data = transport_errors::wrap(
                elsewhere::wrap(
                    Routes::new(tonic::service::interceptor::InterceptedService::new(
                        EntityStoreServer::new(EntityStoreService::new(
                            engine.clone(),
                            telemetry.clone(),
                            data.clone(),
                        ))
                        .max_decoding_message_size(decode_cap),
                        bearer_auth(token.clone(), telemetry.clone()),
                    )),
                    "the data listener",
                    &[ENTITY_STORE_SERVICE],
                ),
                limit,
            );
            if let Some(listen) = config.data_listen {
                let (listener, bound) = bind(listen).await?;
                listeners.spawn(listener, tls.clone(), data.clone(), Protocol::Grpc, conn);
                tracing::info!(addr = %bound, tls = tls.is_some(), "data service listening");
                data_addr = Some(bound);
            }
            if let Some(path) = &config.data_unix {
                listeners.spawn(
                    bind_unix(path, config.unix_mode)?,
                    None,
                    data,
                    Protocol::Grpc,
                    conn,
                );
                tracing::info!(path = %path.display(), "data service listening on a Unix socket");
                data_unix = Some(path.clone());
            }
        }
        // Only a data listener that was asked for and cannot run is worth a warning.
        _ if config.data_listen.is_some() || config.data_unix.is_some() => {
            tracing::warn!("no data token configured: the data service is off")
        }
        _ => tracing::info!("the data service is off (no data listener)"),
    }

    let mut http_addr = None;
    if let Some(listen) = config.http_listen {
        let (listener, bound) = bind(listen).await?;
        let service = Arc::new(AuthzenService::new(
            engine.clone(),
            telemetry.clone(),
            authzen::Callers {
                token: config.http_token.clone(),
                basic: config.http_basic.clone(),
            },
            authzen::Answers {
                public_url: config.http_public_url.clone(),
                decision_context: config.http_decision_context,
                tls: tls.is_some(),
            },
        ));
        if config.http_token.is_none() && config.http_basic.is_none() {
            tracing::info!("no HTTP caller credentials configured: AuthZEN calls need none");
        }
        let secure = tls.is_some();
        listeners.spawn(
            listener,
            tls.clone(),
            authzen::router(service),
            Protocol::Http,
            conn,
        );
        tracing::info!(addr = %bound, tls = secure, "AuthZEN HTTP API listening (not serving until loaded)");
        http_addr = Some(bound);
    }

    let mut console_addr = None;
    if let Some(listen) = config.console_listen {
        let Some(token) = config.data_token.clone() else {
            return Err(ServeError::Config(
                "--console-listen: the console needs the data token (--data-token or \
                 --data-token-file), and none is set"
                    .to_string(),
            ));
        };
        let (listener, bound) = bind(listen).await?;
        let console = super::console::Console::new(engine.clone(), config.analysis, token);
        listeners.spawn(
            listener,
            tls.clone(),
            super::console::router(console),
            Protocol::Http,
            conn,
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %bound, "policy console at {scheme}://{bound}/console (behind the data token)");
        console_addr = Some(bound);
    }

    let mut health_addr = None;
    if let Some(listen) = config.health_listen {
        let (listener, bound) = bind(listen).await?;
        listeners.spawn(listener, None, health_only, Protocol::Grpc, conn);
        tracing::info!(addr = %bound, "health service listening");
        health_addr = Some(bound);
    }

    let mut metrics_addr = None;
    if let Some(listen) = config.metrics_listen {
        let (listener, bound) = bind(listen).await?;
        let registry = telemetry.registry(engine.clone(), reloader.clone(), replica.clone());
        // The metrics follow the listeners' TLS (and mutual TLS: a scraper presents a client
        // certificate); the health listener alone stays plaintext, for the kubelet's gRPC
        // probe, which speaks no TLS.
        let scheme = if tls.is_some() { "https" } else { "http" };
        listeners.spawn(
            listener,
            tls.clone(),
            telemetry::metrics_router(registry),
            Protocol::Http,
            conn,
        );
        tracing::info!(addr = %bound, "metrics at {scheme}://{bound}/metrics");
        metrics_addr = Some(bound);
    }
    let Listeners {
        shutdown, tasks, ..
    } = listeners;
    Ok(Running {
        addr,
        data_addr,
        http_addr,
        metrics_addr,
        console_addr,
        health_addr,
        unix,
        data_unix,
        engine,
        reloader,
        telemetry,
        replica,
        data,
        watcher: None,
        config,
        health,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Loads and strictly validates the policies, loads the entity data, and starts serving
    /// decisions (health SERVING). On error nothing is installed and health stays NOT_SERVING.
    pub async fn load(&mut self) -> Result<(), ServeError> {
        let spec = self.reloader.spec()?;
        let db = self.config.db.clone();
        let seed = self.config.seed.clone();
        let analysis = self.config.analysis;
        let key_window = self.config.limits.key_window;
        let (pack, store, storage) = match self.config.source.clone() {
            None => {
                tokio::task::spawn_blocking(move || {
                    startup::load(&spec, analysis, &db, seed.as_deref(), key_window)
                })
                .await??
            }
            Some(source) => return self.load_replica(spec, source).await,
        };
        tracing::info!(
            policies = pack.policies.policies().count(),
            unplanned_actions = pack.unplanned_actions().len(),
            version = %pack.version,
            overlays = %pack.spec.overlays.join(","),
            entities = store.len(),
            revision = store.revision(),
            "policies and data loaded"
        );
        if store.is_empty() {
            tracing::warn!(
                db = %self.config.db.display(),
                "the entity store is empty: decisions that need entity data deny until data is \
                 written (a seed on first start, `import`, or WriteEntities); metric \
                 blue_authz_store_empty"
            );
        }
        self.engine.install(pack, store, storage);
        let _ = self.data.set(Arc::new(LocalPath::new(self.engine.clone())));
        self.serve_loaded().await
    }

    /// Start-up as a replica of a shared source: the local copy brought in line with the
    /// source, the seed written to the source if it is empty, the follower started.
    async fn load_replica(
        &mut self,
        spec: PackSpec,
        source: super::config::SourceConfig,
    ) -> Result<(), ServeError> {
        let analysis = self.config.analysis;
        let pack =
            tokio::task::spawn_blocking(move || super::gate::load(&spec, analysis)).await??;
        let replica = Arc::new(
            Replica::new(self.engine.clone(), &self.config.db, source)
                .map_err(|e| ServeError::State(e.into()))?,
        );
        let (store, storage, head) = replica.open(&pack, true).await?;
        tracing::info!(
            policies = pack.policies.policies().count(),
            version = %pack.version,
            source = replica.source.name(),
            entities = store.len(),
            revision = store.revision(),
            source_revision = head.as_ref().map(|h| h.revision),
            "policies loaded; local copy of the shared source open"
        );
        self.engine.install(pack, store, storage);
        if let (Some(seed), Some(head)) = (&self.config.seed, &head) {
            if head.revision == 0 {
                if let Some(revision) = replica.seed(seed).await? {
                    tracing::info!(revision, seed = %seed.display(), "the empty shared source seeded");
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        self.shutdown.push(tx);
        tokio::spawn(replica.clone().follow(rx));
        let _ = self.replica.set(replica.clone());
        let _ = self.data.set(Arc::new(replica));
        self.serve_loaded().await
    }

    /// Watches for policy changes and flips health to SERVING.
    async fn serve_loaded(&mut self) -> Result<(), ServeError> {
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
        self.health
            .set_service_status(EXT_AUTHZ_SERVICE, ServingStatus::Serving)
            .await;
        let (tx, rx) = oneshot::channel();
        self.shutdown.push(tx);
        // The data path's health entry exists only where the data service is served: with it
        // off, a probe of `blue.authz.v1.EntityStore` answers NOT_FOUND, never SERVING.
        let data_served = self.data_addr.is_some() || self.data_unix.is_some();
        if let Some(data) = self.data.get() {
            tokio::spawn(watch_data_path(
                self.engine.clone(),
                data.clone(),
                data_served.then(|| self.health.clone()),
                rx,
            ));
        }
        Ok(())
    }

    /// Reloads the policies now (as on SIGHUP), off the async runtime.
    pub async fn reload(&self) -> reload::Outcome {
        let reloader = self.reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(outcome) => outcome,
            Err(e) => reload::Outcome::Rejected(reload::Rejection::one(
                None,
                format!("reload task failed: {e}"),
            )),
        }
    }

    /// Stops accepting calls, lets in-flight calls finish, and returns when the server is down.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.watcher = None;
        // Every health entry, so that a probe of the decision service by name sees it go too.
        let data_served = self.data_addr.is_some() || self.data_unix.is_some();
        for service in [
            "",
            AUTHORIZER_SERVICE,
            EXT_AUTHZ_SERVICE,
            ENTITY_STORE_SERVICE,
        ] {
            if service != ENTITY_STORE_SERVICE || data_served {
                self.health
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
        }
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
        use tokio::signal::unix::{signal, SignalKind};
        // Registered here, before the caller says it serves: a SIGHUP sent the moment it does
        // reloads rather than ending the process (the signal's default action).
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        let reloader = running.reloader.clone();
        tokio::spawn(async move {
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

/// SIGTERM and SIGINT, caught from the moment this is made (so make it before saying the
/// server serves: a signal sent the moment it does then shuts it down cleanly rather than
/// ending the process by the signal's default action).
pub struct ShutdownSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            ShutdownSignal {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignal {}
    }

    /// Resolves on SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.int) => tracing::info!("SIGINT: shutting down"),
                _ = next(&mut self.term) => tracing::info!("SIGTERM: shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("SIGINT: shutting down");
        }
    }
}

/// Keeps the data path's health entry (where the data service is served) true and its fault
/// current: SERVING while writes succeed, NOT_SERVING while
/// they fail (a full disk, a shared source that does not answer or whose head a write cannot
/// take; decisions go on from memory), probing the data path every second meanwhile so that
/// it recovers by itself once the fault is gone, with no write needed.
async fn watch_data_path(
    engine: Arc<State>,
    data: Arc<dyn DataPath>,
    health: Option<tonic_health::server::HealthReporter>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut fault = engine.subscribe_write_fault();
    loop {
        let degraded = {
            let f = fault.borrow_and_update();
            f.local.is_some() || f.source.is_some()
        };
        let status = if degraded {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        if let Some(health) = &health {
            health
                .set_service_status(ENTITY_STORE_SERVICE, status)
                .await;
        }
        if degraded {
            tokio::select! {
                _ = &mut stop => return,
                _ = fault.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                    let _ = data.probe().await;
                }
            }
        } else {
            tokio::select! {
                _ = &mut stop => return,
                changed = fault.changed() => if changed.is_err() { return },
            }
        }
    }
}
