//! Why a server could not start, load or stop, and why a setting cannot be used.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::gate::GateError;
use super::state::StateError;
use crate::files::FileError;

/// Why the server could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Write(#[from] crate::service::write::WriteError),
    /// The replica of a shared source could not start (its `ReplicaError`).
    #[error(transparent)]
    Replica(Box<dyn std::error::Error + Send + Sync>),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A setting that cannot be used, naming it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}: unknown setting `{key}` (the settings are listed by `serve --help`)")]
    Unknown { file: PathBuf, key: String },
    #[error("{file}: setting `{key}`: {message}")]
    Value {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}
