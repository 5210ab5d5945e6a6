//! Durable entity storage: the embedded database behind one small trait ([`Storage`]), and
//! the shared PostgreSQL source a fleet of replicas follows ([`PgSource`]). The engine hands
//! storage the changes of its validated write batches ([`Changes`], carried in a [`ChangeSet`]
//! with what storage records beside them: schema, source, idempotency key); storage makes them
//! durable and scans them back at start-up.

use std::path::PathBuf;

mod embedded;
mod postgres;

pub use crate::engine::index::Changes;

/// One atomic change set in durable form: a validated batch's entities and the revision it
/// makes (the engine's [`Changes`]), with what storage records beside them.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub changes: Changes,
    /// The schema version every stored entity now conforms to, when the writer knows it.
    pub schema: Option<String>,
    /// The shared source these entities are a copy of (recorded when Some, kept when None).
    pub source: Option<String>,
    /// When the batch was committed at its source (Unix ms; 0 when unknown).
    pub committed_at_unix_ms: u64,
    /// Each put's last-change revision, parallel to the puts (a snapshot's entities, each
    /// changed at its own revision); empty: every put was changed at the batch's revision.
    pub put_revisions: Vec<u64>,
    /// The write's idempotency key, remembered with the revision (a local writer's batch).
    pub key: Option<WriteKey>,
}

impl ChangeSet {
    /// A batch's changes, with nothing recorded beside them yet.
    pub fn of(changes: Changes) -> Self {
        ChangeSet {
            changes,
            ..Default::default()
        }
    }

    pub fn revision(&self) -> u64 {
        self.changes.revision
    }
}

/// The fingerprint recorded for a key that GetWrite abandoned (its revision is 0): a write
/// that carries it later is refused.
pub const ABANDONED: &str = "abandoned";

/// An idempotency key and the fingerprint of the write that carries it (the same key with
/// another write is refused, not answered as a replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteKey {
    pub key: String,
    pub fingerprint: String,
}
pub use embedded::{RedbStorage, DEFAULT_KEY_WINDOW};
pub use postgres::{Head, KeyRecord, PgSource, Poll, SourceError, SourceLimits, WriteTxn};

/// A storage operation that failed, naming the database.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage {path}: {message}")]
pub struct StorageError {
    pub path: PathBuf,
    pub message: String,
    /// The database is held open by another process (a running server).
    pub in_use: bool,
    /// The disk (or quota) is full: writes fail until space is freed.
    pub full: bool,
}

/// Durable storage of entities.
pub trait Storage: Send + Sync {
    /// The last committed revision (0 for an empty store).
    fn revision(&self) -> Result<u64, StorageError>;
    /// The schema version the stored entities were last validated with, if recorded.
    fn schema(&self) -> Result<Option<String>, StorageError>;
    /// The id of the shared source the stored entities are a copy of, if any.
    fn source(&self) -> Result<Option<String>, StorageError>;
    /// Applies a change set atomically and durably; returns only once it is synced.
    fn apply(&self, changes: &ChangeSet) -> Result<(), StorageError>;
    /// Applies a change set atomically, durable only with the next [`Storage::sync`] or
    /// [`Storage::apply`]: a crash before then loses it whole, never half (for a copy of a
    /// shared source, which has it durably and gives it again).
    fn apply_relaxed(&self, changes: &ChangeSet) -> Result<(), StorageError> {
        self.apply(changes)
    }
    /// Whether a write could succeed now (after a failed one, say), without changing what
    /// readers see.
    fn probe(&self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Makes every relaxed change set durable.
    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Visits every entity (its stored JSON) of one consistent snapshot, with that snapshot's
    /// revision. The visitor returns false to stop.
    fn scan(&self, visit: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<(), StorageError>;
    /// How many entities are stored (to size the index before a scan).
    fn count(&self) -> Result<u64, StorageError>;
    /// For each uid, the revision of the entity's last change (None: it does not exist; 0: it
    /// was last changed before revisions were recorded).
    fn last_changes(&self, uids: &[&str]) -> Result<Vec<Option<u64>>, StorageError>;
    /// The revision and fingerprint of the write that committed this idempotency key, if it
    /// did within the key window.
    fn keyed_write(&self, key: &str) -> Result<Option<(u64, String)>, StorageError>;
    /// Records a key that never committed as abandoned (revision 0), so that it never will.
    fn abandon_key(&self, key: &str) -> Result<(), StorageError>;
}
