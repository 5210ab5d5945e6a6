//! The data path a node has, chosen once at start-up: its embedded database alone
//! ([`LocalPath`]), or a replica of a shared source (`replica::Replica`). Handlers write,
//! resolve idempotency keys, watch changes and read the data status through [`DataPath`]
//! and never ask which one they have.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::state::{State, StateError, Write, Written};
use crate::storage::{ChangeSet, SourceError};

/// Where the node's data path is put once start-up has chosen it.
pub type DataSlot = Arc<OnceLock<Arc<dyn DataPath>>>;

/// Why a write failed; [`WriteError::outcome`] says what the caller may conclude.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Refused before anything was applied (invalid, a condition, the deadline, the local
    /// database).
    #[error(transparent)]
    State(#[from] StateError),
    /// The shared source failed: applied or not as [`SourceError`] says.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// It was to commit in one transaction with a write whose deadline passed first.
    #[error(
        "committed together with a write whose deadline passed first: nothing was applied; retry"
    )]
    GroupDeadline,
    /// This node's own machinery failed before the commit: nothing was applied.
    #[error("the write failed before its commit: {0}")]
    Failed(String),
    /// This node's own machinery failed while the write was under way: it may have been
    /// applied.
    #[error("the write's task failed: {0}")]
    Internal(String),
}

/// What a failed write's caller may conclude.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was applied, and nothing of this write ever will be.
    NotApplied,
    /// The commit was sent and not answered: it may have been applied; ask with its key.
    Unknown,
}

impl Outcome {
    /// As the `blue-authz-write-outcome` trailer says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NotApplied => "not-applied",
            Outcome::Unknown => "unknown",
        }
    }
}

impl WriteError {
    pub fn outcome(&self) -> Outcome {
        match self {
            WriteError::Source(SourceError::OutcomeUnknown { .. }) | WriteError::Internal(_) => {
                Outcome::Unknown
            }
            _ => Outcome::NotApplied,
        }
    }

    /// The same failure again, for each write of a group it failed whole.
    pub fn again(&self) -> WriteError {
        match self {
            WriteError::Source(e) => WriteError::Source(e.clone()),
            WriteError::GroupDeadline => WriteError::GroupDeadline,
            WriteError::Internal(m) => WriteError::Internal(m.clone()),
            WriteError::Failed(m) => WriteError::Failed(m.clone()),
            WriteError::State(e) => WriteError::State(match e {
                StateError::Source(e) => StateError::Source(e.clone()),
                StateError::Storage(e) => StateError::Storage(e.clone()),
                StateError::NotReady => StateError::NotReady,
                StateError::DeadlineExceeded => StateError::DeadlineExceeded,
                StateError::Invalid(e) => StateError::Invalid(
                    crate::engine::error::RequestError::new(e.field.clone(), &e.message),
                ),
                StateError::PreconditionFailed { field, message } => {
                    StateError::PreconditionFailed {
                        field: field.clone(),
                        message: message.clone(),
                    }
                }
                StateError::Gap { current, got } => StateError::Gap {
                    current: *current,
                    got: *got,
                },
                // Refused before any commit (a batch this replica lacked did not apply, say).
                other => return WriteError::Failed(other.to_string()),
            }),
        }
    }
}

/// Why a change stream could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("this node keeps its data in its embedded database alone: WatchChanges needs a shared source (--source)")]
    NoChangeLog,
    #[error("revision {from} is older than the retained change log, which starts after revision {pruned_through}: read a snapshot with ExportEntities and watch from its revision")]
    Pruned { from: u64, pruned_through: u64 },
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The batches of a change stream, in revision order.
pub type ChangeStream = tokio::sync::mpsc::Receiver<Result<ChangeSet, WatchError>>;

/// Where a node's data stands, for GetDataStatus.
#[derive(Debug, Clone)]
pub struct DataView {
    /// "embedded" or "postgres".
    pub source: &'static str,
    pub revision: u64,
    pub source_revision: u64,
    pub reachable: bool,
    /// Since the source last answered (None: it never did).
    pub since_answered: Option<Duration>,
    /// Why writes or the source fail now; empty once they succeed.
    pub last_error: String,
    /// When `last_error` began (Unix ms).
    pub last_error_at_unix_ms: Option<u64>,
    pub writable: bool,
}

/// A node's data path.
#[tonic::async_trait]
pub trait DataPath: Send + Sync {
    /// Commits a write by its deadline, or never.
    async fn write(&self, w: Write) -> Result<Written, WriteError>;
    /// The revision and fingerprint of the write that committed this idempotency key, once
    /// no commit of it can still be under way; with `abandon`, a key that has not committed
    /// is recorded so that it never will (revision 0, fingerprint `ABANDONED`).
    async fn keyed_write(
        &self,
        key: &str,
        abandon: bool,
    ) -> Result<Option<(u64, String)>, WriteError>;
    /// Tries whether writes could succeed now, restoring the data path's health if so.
    async fn probe(&self) -> Result<(), WriteError>;
    /// The batches after `from` (0: from the oldest retained), then each new one.
    async fn watch(&self, from: u64) -> Result<ChangeStream, WatchError>;
    fn view(&self) -> DataView;
}

/// The embedded database alone.
pub struct LocalPath {
    state: Arc<State>,
}

impl LocalPath {
    pub fn new(state: Arc<State>) -> Self {
        LocalPath { state }
    }
}

/// A local write's task failed: it may have committed before (the local write is durable
/// before it answers).
fn task_failed(e: tokio::task::JoinError) -> WriteError {
    WriteError::Internal(e.to_string())
}

#[tonic::async_trait]
impl DataPath for LocalPath {
    async fn write(&self, w: Write) -> Result<Written, WriteError> {
        let state = self.state.clone();
        Ok(tokio::task::spawn_blocking(move || state.write_checked(w))
            .await
            .map_err(task_failed)??)
    }

    async fn keyed_write(
        &self,
        key: &str,
        abandon: bool,
    ) -> Result<Option<(u64, String)>, WriteError> {
        let state = self.state.clone();
        let key = key.to_string();
        Ok(
            tokio::task::spawn_blocking(move || state.keyed_write(&key, abandon))
                .await
                .map_err(task_failed)??,
        )
    }

    async fn probe(&self) -> Result<(), WriteError> {
        let state = self.state.clone();
        Ok(tokio::task::spawn_blocking(move || state.probe_storage())
            .await
            .map_err(task_failed)??)
    }

    async fn watch(&self, _from: u64) -> Result<ChangeStream, WatchError> {
        Err(WatchError::NoChangeLog)
    }

    fn view(&self) -> DataView {
        let revision = self.state.revision();
        let fault = self.state.write_fault_since();
        DataView {
            source: "embedded",
            revision,
            source_revision: revision,
            reachable: true,
            since_answered: Some(Duration::ZERO),
            writable: self.state.live().is_some() && fault.is_none(),
            last_error_at_unix_ms: fault.as_ref().map(|f| f.1),
            last_error: fault.map(|f| f.0).unwrap_or_default(),
        }
    }
}
