//! Durable entity storage: the embedded database behind one small trait ([`Storage`]), and
//! the shared PostgreSQL source a fleet of replicas follows ([`PgSource`]). The engine hands
//! storage the change sets of its validated write batches ([`ChangeSet`]); storage makes them
//! durable and scans them back at start-up.

use std::path::PathBuf;

mod embedded;
mod postgres;

pub use crate::engine::index::{ChangeSet, WriteKey, ABANDONED};
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
