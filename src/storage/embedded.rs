//! The embedded default backend: redb, a transactional database in one file. Every commit is
//! synced before it returns. After an I/O error (a full disk, say) redb refuses every later
//! transaction until the database is opened again, so the next write (or [`Storage::probe`])
//! reopens it first; a commit that failed wrote nothing, and a reopened file must be at the
//! revision of the last commit that succeeded, or writes stay refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{ChangeSet, Storage, StorageError};
use crate::engine::pace::Pacer;

/// The entities table: canonical uid text -> the entity as written (Cedar JSON).
/// One entity of a streamed batch (uid text, Cedar JSON), or why the stream stopped.
pub type StreamedPut = Result<(String, Vec<u8>), String>;

const ENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");
/// Store metadata: `revision` -> u64.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Store metadata: `probe` -> when a probe write last succeeded (Unix ms).
const PROBE: &str = "probe";
/// Text metadata: `schema` -> the schema version the stored entities were validated with.
const META_TEXT: TableDefinition<&str, &str> = TableDefinition::new("meta_text");
const SCHEMA: &str = "schema";
/// Text metadata: `source` -> the id of the shared source this database is a copy of.
const SOURCE: &str = "source";
/// Each entity's last change: canonical uid text -> the revision of the batch that made it.
/// An entity with no entry predates revision tracking (reported as 0).
const LAST_CHANGE: TableDefinition<&str, u64> = TableDefinition::new("last_change");
/// Idempotency keys: key -> the revision (8 bytes, big-endian), the commit time (Unix ms, 8
/// bytes) and the write's fingerprint.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("write_keys");
/// The same keys by commit time, so that keys older than the window are pruned in order.
const KEYS_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("write_keys_by_time");
/// How long idempotency keys are remembered unless set otherwise.
pub const DEFAULT_KEY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// redb's page cache.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// redb-backed storage: one file.
pub struct RedbStorage {
    path: PathBuf,
    /// None between dropping a database that failed and opening it again.
    db: RwLock<Option<Database>>,
    /// An I/O error happened: the next write opens the database again first.
    broken: AtomicBool,
    /// The revision of the last commit that succeeded (or found at open).
    committed: AtomicU64,
    /// How long idempotency keys are remembered, in ms.
    key_window_ms: AtomicU64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The database, borrowed while it is open: made only from a slot that holds one.
struct OpenDb<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for OpenDb<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("an OpenDb is made only from a slot holding a database")
    }
}

/// Whether an I/O error says the disk (or the quota) is full.
fn disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

impl RedbStorage {
    /// Opens (or creates) the database file, recovering from an unclean shutdown if needed.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let err = |e: &dyn std::fmt::Display| StorageError {
            path: path.to_path_buf(),
            message: e.to_string(),
            in_use: false,
            full: false,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = Self::open_db(path)?;
        let storage = RedbStorage {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
            committed: AtomicU64::new(0),
            key_window_ms: AtomicU64::new(DEFAULT_KEY_WINDOW.as_millis() as u64),
        };
        // Create the tables so that readers never meet a missing table (a new file only: a
        // write transaction on a large file costs a sync).
        if !storage.tables_exist()? {
            let db = storage.db()?;
            let txn = db.begin_write().map_err(|e| storage.err(e))?;
            txn.open_table(ENTITIES).map_err(|e| storage.err(e))?;
            txn.open_table(META).map_err(|e| storage.err(e))?;
            txn.open_table(META_TEXT).map_err(|e| storage.err(e))?;
            txn.commit().map_err(|e| storage.err(e))?;
        }
        storage
            .committed
            .store(storage.revision()?, Ordering::SeqCst);
        Ok(storage)
    }

    /// How long idempotency keys are remembered.
    pub fn set_key_window(&self, window: std::time::Duration) {
        self.key_window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    fn open_db(path: &Path) -> Result<Database, StorageError> {
        let err = |e: &dyn std::fmt::Display| StorageError {
            path: path.to_path_buf(),
            message: e.to_string(),
            in_use: false,
            full: false,
        };
        // The entity index lives in memory; redb's page cache only needs to serve writes and
        // the start-up scan, not hold the whole file (its default is 1 GiB).
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StorageError {
                    in_use: true,
                    ..err(&"the database is in use by another process (a running server holds it)")
                },
                redb::DatabaseError::Storage(redb::StorageError::Io(io)) if disk_full(&io) => {
                    StorageError {
                        full: true,
                        ..err(&format!("the disk is full: {io}"))
                    }
                }
                e => err(&e),
            })
    }

    /// The open database (an error while it is closed for reopening).
    fn db(&self) -> Result<OpenDb<'_>, StorageError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(
                self.err("the database is closed after an I/O error; it reopens on the next write")
            );
        }
        Ok(OpenDb(guard))
    }

    /// After an I/O error: drops the database and opens it again, which must find it at the
    /// revision of the last commit that succeeded.
    fn reopen_if_broken(&self) -> Result<(), StorageError> {
        if !self.broken.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if !self.broken.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The file lock must go before the file can be opened again.
        drop(slot.take());
        *slot = Some(Self::open_db(&self.path)?);
        drop(slot);
        let found = self.revision()?;
        let expected = self.committed.load(Ordering::SeqCst);
        if found != expected {
            return Err(self.err(format!(
                "reopened after an I/O error at revision {found}, but the last commit that \
                 succeeded made {expected}: restart the server to load the database again"
            )));
        }
        self.broken.store(false, Ordering::SeqCst);
        tracing::info!(path = %self.path.display(), revision = found, "database reopened after an I/O error");
        Ok(())
    }

    /// The error of a failed transaction, marking the database for reopening after an I/O
    /// error and saying so when the disk is full.
    fn failed(&self, e: redb::Error) -> StorageError {
        let full = match &e {
            redb::Error::Io(io) => {
                self.broken.store(true, Ordering::SeqCst);
                disk_full(io)
            }
            redb::Error::PreviousIo => {
                self.broken.store(true, Ordering::SeqCst);
                false
            }
            _ => false,
        };
        if full {
            StorageError {
                full: true,
                ..self.err(format!("the disk is full: {e}"))
            }
        } else {
            self.err(e)
        }
    }

    fn tables_exist(&self) -> Result<bool, StorageError> {
        let txn = self.db()?.begin_read().map_err(|e| self.err(e))?;
        for name in ["entities", "meta", "meta_text"] {
            let def: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
            match txn.open_untyped_table(def) {
                Ok(_) => {}
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(true)
    }

    fn write(&self, set: &ChangeSet, durability: redb::Durability) -> Result<(), StorageError> {
        let changes = &set.changes;
        self.reopen_if_broken()?;
        let db = self.db()?;
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            // Keeps recovery after a crash quick (no full scan of the allocator state).
            txn.set_quick_repair(true);
            {
                let mut entities = txn.open_table(ENTITIES)?;
                let mut last_change = txn.open_table(LAST_CHANGE)?;
                let mut pacer = Pacer::new();
                for (i, (uid, json)) in changes.puts.iter().enumerate() {
                    pacer.tick();
                    entities.insert(uid.as_str(), json.as_slice())?;
                    let at = set.put_revisions.get(i).copied();
                    last_change.insert(uid.as_str(), at.unwrap_or(changes.revision))?;
                }
                for uid in &changes.deletes {
                    entities.remove(uid.as_str())?;
                    last_change.remove(uid.as_str())?;
                }
                if let Some(key) = &set.key {
                    self.record_key(&txn, &key.key, changes.revision, &key.fingerprint)?;
                }
                let mut meta = txn.open_table(META)?;
                meta.insert(REVISION, changes.revision)?;
                let mut text = txn.open_table(META_TEXT)?;
                match &set.schema {
                    Some(schema) => {
                        text.insert(SCHEMA, schema.as_str())?;
                    }
                    // A writer that did not validate against a known schema: the next start
                    // validates everything again.
                    None => {
                        text.remove(SCHEMA)?;
                    }
                }
                if let Some(source) = &set.source {
                    text.insert(SOURCE, source.as_str())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        drop(db);
        match result {
            Ok(()) => {
                self.committed.store(changes.revision, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Writes a stream of entities (uid text, Cedar JSON, validated against `schema`) and
    /// deletes `deletes`, as one atomic, synced batch at `revision`: what an import of a file
    /// of any size writes without holding it whole in memory. `puts` yields until it is done,
    /// or an error that abandons the batch (nothing is written). Returns how many were put.
    pub fn write_stream(
        &self,
        revision: u64,
        schema: &str,
        puts: &mut dyn FnMut() -> Option<StreamedPut>,
        deletes: &mut dyn Iterator<Item = &str>,
    ) -> Result<usize, StorageError> {
        self.reopen_if_broken()?;
        let db = self.db()?;
        let mut count = 0;
        let mut stopped = None;
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            txn.set_quick_repair(true);
            {
                let mut entities = txn.open_table(ENTITIES)?;
                let mut last_change = txn.open_table(LAST_CHANGE)?;
                while let Some(put) = puts() {
                    match put {
                        Ok((uid, json)) => {
                            entities.insert(uid.as_str(), json.as_slice())?;
                            last_change.insert(uid.as_str(), revision)?;
                            count += 1;
                        }
                        Err(e) => {
                            stopped = Some(e);
                            return Ok(());
                        }
                    }
                }
                for uid in deletes {
                    entities.remove(uid)?;
                    last_change.remove(uid)?;
                }
                let mut meta = txn.open_table(META)?;
                meta.insert(REVISION, revision)?;
                let mut text = txn.open_table(META_TEXT)?;
                text.insert(SCHEMA, schema)?;
            }
            txn.commit()?;
            Ok(())
        })();
        drop(db);
        if let Some(e) = stopped {
            // The transaction was dropped uncommitted: nothing of the batch is written.
            return Err(self.err(e));
        }
        match result {
            Ok(()) => {
                self.committed.store(revision, Ordering::SeqCst);
                Ok(count)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Remembers an idempotency key with its revision and fingerprint, forgetting the keys
    /// older than the window.
    fn record_key(
        &self,
        txn: &redb::WriteTransaction,
        key: &str,
        revision: u64,
        fingerprint: &str,
    ) -> Result<(), redb::Error> {
        let now = unix_ms();
        let mut keys = txn.open_table(KEYS)?;
        let mut by_time = txn.open_table(KEYS_BY_TIME)?;
        let cutoff = now.saturating_sub(self.key_window_ms.load(Ordering::Relaxed));
        let old: Vec<(u64, String)> = by_time
            .range::<(u64, &str)>(..(cutoff, ""))?
            .map(|item| item.map(|(k, _)| (k.value().0, k.value().1.to_string())))
            .collect::<Result<_, _>>()?;
        for (at, k) in &old {
            by_time.remove((*at, k.as_str()))?;
            keys.remove(k.as_str())?;
        }
        let mut value = Vec::with_capacity(16 + fingerprint.len());
        value.extend_from_slice(&revision.to_be_bytes());
        value.extend_from_slice(&now.to_be_bytes());
        value.extend_from_slice(fingerprint.as_bytes());
        keys.insert(key, value.as_slice())?;
        by_time.insert((now, key), ())?;
        Ok(())
    }

    fn text(&self, key: &str) -> Result<Option<String>, StorageError> {
        let txn = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let meta = match txn.open_table(META_TEXT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let v = meta.get(key).map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.value().to_string()))
    }

    fn err(&self, e: impl std::fmt::Display) -> StorageError {
        StorageError {
            path: self.path.clone(),
            message: e.to_string(),
            in_use: false,
            full: false,
        }
    }
}

impl Storage for RedbStorage {
    fn last_changes(&self, uids: &[&str]) -> Result<Vec<Option<u64>>, StorageError> {
        let txn = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let entities = txn.open_table(ENTITIES).map_err(|e| self.err(e))?;
        let last_change = match txn.open_table(LAST_CHANGE) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            let at = match &last_change {
                Some(t) => t.get(*uid).map_err(|e| self.err(e))?.map(|v| v.value()),
                None => None,
            };
            out.push(match at {
                Some(at) => Some(at),
                None if entities.get(*uid).map_err(|e| self.err(e))?.is_some() => Some(0),
                None => None,
            });
        }
        Ok(out)
    }

    fn abandon_key(&self, key: &str) -> Result<(), StorageError> {
        self.reopen_if_broken()?;
        let db = self.db()?;
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            self.record_key(&txn, key, 0, super::ABANDONED)?;
            txn.commit()?;
            Ok(())
        })();
        drop(db);
        result.map_err(|e| self.failed(e))
    }

    fn keyed_write(&self, key: &str) -> Result<Option<(u64, String)>, StorageError> {
        let txn = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let keys = match txn.open_table(KEYS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(v) = keys.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let v = v.value();
        if v.len() < 16 {
            return Err(self.err(format!("idempotency key {key:?} has a malformed record")));
        }
        let revision = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        let at = u64::from_be_bytes(v[8..16].try_into().expect("8 bytes"));
        if at < unix_ms().saturating_sub(self.key_window_ms.load(Ordering::Relaxed)) {
            return Ok(None);
        }
        Ok(Some((
            revision,
            String::from_utf8_lossy(&v[16..]).into_owned(),
        )))
    }

    fn revision(&self) -> Result<u64, StorageError> {
        let txn = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(self.err(e)),
        };
        let rev = meta.get(REVISION).map_err(|e| self.err(e))?;
        Ok(rev.map(|v| v.value()).unwrap_or(0))
    }

    fn schema(&self) -> Result<Option<String>, StorageError> {
        self.text(SCHEMA)
    }

    fn source(&self) -> Result<Option<String>, StorageError> {
        self.text(SOURCE)
    }

    fn apply(&self, changes: &ChangeSet) -> Result<(), StorageError> {
        self.write(changes, redb::Durability::Immediate)
    }

    fn apply_relaxed(&self, changes: &ChangeSet) -> Result<(), StorageError> {
        self.write(changes, redb::Durability::None)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.reopen_if_broken()?;
        let db = self.db()?;
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })();
        drop(db);
        result.map_err(|e| self.failed(e))
    }

    fn probe(&self) -> Result<(), StorageError> {
        self.reopen_if_broken()?;
        let db = self.db()?;
        // A write that needs new pages, as any batch does, and changes nothing a reader sees.
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut meta = txn.open_table(META)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                meta.insert(PROBE, now)?;
            }
            txn.commit()?;
            Ok(())
        })();
        drop(db);
        result.map_err(|e| self.failed(e))
    }

    fn count(&self) -> Result<u64, StorageError> {
        let txn = self.db()?.begin_read().map_err(|e| self.err(e))?;
        match txn.open_table(ENTITIES) {
            Ok(table) => table.len().map_err(|e| self.err(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.err(e)),
        }
    }

    fn scan(&self, visit: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<(), StorageError> {
        // The scan walks the table in key order, which is not the file's order: on a cold disk
        // that is one small scattered read per page. Asked first, the kernel reads the whole
        // file ahead in file order (on its own thread: the call itself can take a while), so
        // the scan finds its pages in memory. Only advice: a failure changes nothing.
        let path = self.path.clone();
        let _ = std::thread::Builder::new()
            .name("db-readahead".into())
            .spawn(move || {
                if let Ok(file) = std::fs::File::open(&path) {
                    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
                }
            });
        let txn = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let revision = txn
            .open_table(META)
            .map_err(|e| self.err(e))?
            .get(REVISION)
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0);
        let table = txn.open_table(ENTITIES).map_err(|e| self.err(e))?;
        for item in table.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            if !visit(revision, v.value()) {
                break;
            }
        }
        Ok(())
    }
}
