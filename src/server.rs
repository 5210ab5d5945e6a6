//! Serving: the shared engine state, the listener, health and reflection, graceful shutdown.
//!
//! Start-up is two steps so that health is truthful: [`start`] binds and serves with health
//! NOT_SERVING (decisions answer UNAVAILABLE), then [`Running::load`] loads and validates the
//! policies and the entity data and flips health to SERVING.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::decide::DEFAULT_SLICE_DEPTH;
use crate::error::{DataError, LoadError};
use crate::grpc::pb::authorizer_server::AuthorizerServer;
use crate::grpc::{pb, AuthorizerService};
use crate::policy::{PackSpec, PolicyPack};
use crate::store::EntityStore;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attribute hops a slice follows from the request's entities.
    pub slice_depth: usize,
    /// Requests per `BatchIsAuthorized` call.
    pub max_batch: usize,
    /// Encoded size of one request message.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            slice_depth: DEFAULT_SLICE_DEPTH,
            max_batch: 10_000,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The engine state every call reads: the live policy pack and the entity store.
pub struct Shared {
    pack: ArcSwapOption<PolicyPack>,
    store: RwLock<EntityStore>,
    pub limits: Limits,
}

/// A consistent view for one call: the pack it started with and the store.
pub struct Live<'a> {
    pub pack: Arc<PolicyPack>,
    store: &'a RwLock<EntityStore>,
}

impl Live<'_> {
    pub fn store(&self) -> RwLockReadGuard<'_, EntityStore> {
        // The store is only ever replaced whole, so a poisoned lock still guards consistent
        // data.
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Shared {
    pub fn new(limits: Limits) -> Self {
        Shared {
            pack: ArcSwapOption::empty(),
            store: RwLock::new(EntityStore::default()),
            limits,
        }
    }

    /// The live state, or None until a validated pack and the data are loaded.
    pub fn live(&self) -> Option<Live<'_>> {
        let pack = self.pack.load_full()?;
        Some(Live {
            pack,
            store: &self.store,
        })
    }

    fn install(&self, pack: Arc<PolicyPack>, store: EntityStore) {
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = store;
        self.pack.store(Some(pack));
    }
}

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
    Data(#[from] DataError),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub pack: PackSpec,
    /// Cedar JSON entities file.
    pub data: PathBuf,
    pub limits: Limits,
}

/// A running server.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    config: ServeConfig,
    health: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The name the health service reports the decision service under.
pub const AUTHORIZER_SERVICE: &str = "blue.authz.v1.Authorizer";

/// Binds and starts serving, with health NOT_SERVING until [`Running::load`] succeeds.
pub async fn start(config: ServeConfig) -> Result<Running, ServeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
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
    let shared = Arc::new(Shared::new(config.limits));
    // tonic refuses anything over twice our limit itself; between the two, the handlers
    // answer INVALID_ARGUMENT naming the limit.
    let decode_cap = config.limits.max_message_bytes.saturating_mul(2);
    let authorizer = AuthorizerServer::new(AuthorizerService::new(shared.clone()))
        .max_decoding_message_size(decode_cap);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(authorizer)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            }),
    );
    tracing::info!(%addr, "listening (not serving until policies and data are loaded)");
    Ok(Running {
        addr,
        shared,
        config,
        health,
        shutdown: Some(tx),
        task,
    })
}

impl Running {
    /// Loads and strictly validates the policies, loads the entity data, and starts serving
    /// decisions (health SERVING). On error nothing is installed and health stays NOT_SERVING.
    pub async fn load(&self) -> Result<(), ServeError> {
        let spec = self.config.pack.clone();
        let data = self.config.data.clone();
        let (pack, store) = tokio::task::spawn_blocking(move || -> Result<_, ServeError> {
            let pack = PolicyPack::load(&spec)?;
            let store = EntityStore::load_file(&data, &pack.schema)?;
            Ok((pack, store))
        })
        .await??;
        tracing::info!(
            policies = pack.policies.policies().count(),
            version = %pack.version,
            overlays = ?pack.spec.overlays,
            entities = store.len(),
            "policies and data loaded"
        );
        self.shared.install(pack, store);
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        self.health
            .set_service_status(AUTHORIZER_SERVICE, ServingStatus::Serving)
            .await;
        Ok(())
    }

    /// Stops accepting calls, lets in-flight calls finish, and returns when the server is down.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await??;
        Ok(())
    }
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
