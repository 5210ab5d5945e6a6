//! The engine state every call shares: the live policy pack, the entity index, the durable
//! storage behind it, and the store revision. Writes are serialized, validated whole, made
//! durable, then made visible at once; decisions read one consistent view.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::decide::DEFAULT_SLICE_DEPTH;
use crate::error::{DataError, RequestError};
use crate::policy::PolicyPack;
use crate::storage::{Storage, StorageError};
use crate::store::{parse_chunk, parse_entity, EntityStore, Parsed, WriteOp};

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attribute hops a slice follows from the request's entities.
    pub slice_depth: usize,
    /// Requests per `BatchIsAuthorized` call.
    pub max_batch: usize,
    /// Encoded size of one request message.
    pub max_message_bytes: usize,
    /// Longest wait for `min_revision` when the call has no deadline.
    pub max_revision_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            slice_depth: DEFAULT_SLICE_DEPTH,
            max_batch: 10_000,
            max_message_bytes: 4 * 1024 * 1024,
            max_revision_wait: Duration::from_secs(5),
        }
    }
}

/// Why a write or a wait failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Invalid(#[from] RequestError),
    #[error("no validated policy set and entity data are loaded yet")]
    NotReady,
    #[error("revision {wanted} not reached within {waited:?} (this node is at {current})")]
    RevisionNotReached {
        wanted: u64,
        current: u64,
        waited: Duration,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Data(#[from] DataError),
}

/// The shared engine state.
pub struct Engine {
    pack: ArcSwapOption<PolicyPack>,
    store: RwLock<EntityStore>,
    /// Taken out (and so closed) by [`Engine::close`].
    storage: Mutex<Option<Arc<dyn Storage>>>,
    /// Serializes writers; decisions never take it.
    writer: Mutex<()>,
    revision: watch::Sender<u64>,
    pub limits: Limits,
}

/// A consistent view for one call: the store, read-locked (a write becomes visible all at
/// once, never half), and the pack that goes with it.
pub struct Live<'a> {
    pub pack: Arc<PolicyPack>,
    store: RwLockReadGuard<'a, EntityStore>,
}

impl Live<'_> {
    pub fn store(&self) -> &EntityStore {
        &self.store
    }
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Engine {
            pack: ArcSwapOption::empty(),
            store: RwLock::new(EntityStore::default()),
            storage: Mutex::new(None),
            writer: Mutex::new(()),
            revision: watch::channel(0).0,
            limits,
        }
    }

    /// The live state, or None until a validated pack and the data are loaded.
    pub fn live(&self) -> Option<Live<'_>> {
        // The store lock first: a reload that rebuilds the store swaps the pack while holding
        // the write lock, so store and pack always match.
        let store = self.read_store();
        let pack = self.pack.load_full()?;
        Some(Live { pack, store })
    }

    fn read_store(&self) -> RwLockReadGuard<'_, EntityStore> {
        // Commits cannot fail halfway (see `EntityStore::commit`), so a poisoned lock still
        // guards consistent data.
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pack(&self) -> Option<Arc<PolicyPack>> {
        self.pack.load_full()
    }

    /// Installs the data and then the pack: from here on decisions are served.
    pub fn install(&self, pack: Arc<PolicyPack>, store: EntityStore, storage: Arc<dyn Storage>) {
        let revision = store.revision();
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = store;
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = Some(storage);
        self.revision.send_replace(revision);
        self.pack.store(Some(pack));
    }

    fn storage(&self) -> Option<Arc<dyn Storage>> {
        self.storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes the database (once no write or export holds it any more): a clean close makes
    /// the next start quick. Writes after this answer UNAVAILABLE.
    pub fn close(&self) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Replaces the live policy pack; calls in flight finish on the one they started with.
    /// When the schema changed, the entity index is first rebuilt under the new schema, and a
    /// stored entity that no longer conforms rejects the swap.
    pub fn swap_pack_checked(&self, pack: Arc<PolicyPack>) -> Result<(), Vec<String>> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let schema_changed = self
            .pack()
            .is_some_and(|live| live.schema_version != pack.schema_version);
        if !schema_changed {
            self.pack.store(Some(pack));
            return Ok(());
        }
        let rebuilt = self.read_store().rebuild(&pack).map_err(|e| {
            vec![format!(
                "the stored entities do not conform to the candidate schema: {e}"
            )]
        })?;
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        *store = rebuilt;
        self.pack.store(Some(pack));
        Ok(())
    }

    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Validates a batch whole against the schema and the data, commits it durably, then
    /// makes it visible; returns the new revision. An invalid batch changes nothing.
    pub fn write(&self, ops: Vec<WriteOp>) -> Result<u64, EngineError> {
        let pack = self.pack().ok_or(EngineError::NotReady)?;
        let storage = self.storage().ok_or(EngineError::NotReady)?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut prepared = self.read_store().prepare(ops, &pack)?;
        prepared.changes.schema = Some(pack.schema_version.clone());
        storage.apply(&prepared.changes)?;
        let revision = prepared.revision();
        self.store
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .commit(prepared);
        self.revision.send_replace(revision);
        Ok(revision)
    }

    /// Waits until the store has reached `min` (0: no wait), for at most `deadline` (or the
    /// configured maximum).
    pub async fn wait_for_revision(
        &self,
        min: u64,
        deadline: Option<Duration>,
    ) -> Result<(), EngineError> {
        if min <= self.revision() {
            return Ok(());
        }
        // Answer a little before the caller's deadline, so the caller hears why.
        let waited = deadline
            .map(|d| d.saturating_sub(d / 10))
            .unwrap_or(self.limits.max_revision_wait);
        let mut rx = self.revision.subscribe();
        let reached = matches!(
            tokio::time::timeout(waited, rx.wait_for(|r| *r >= min)).await,
            Ok(Ok(_))
        );
        if reached {
            return Ok(());
        }
        Err(EngineError::RevisionNotReached {
            wanted: min,
            current: self.revision(),
            waited,
        })
    }

    /// Streams a consistent snapshot of the durable store, chunk by chunk.
    pub fn export(
        &self,
        chunk: usize,
        visit: &mut dyn FnMut(u64, Vec<Vec<u8>>) -> bool,
    ) -> Result<(), EngineError> {
        let storage = self.storage().ok_or(EngineError::NotReady)?;
        let chunk = chunk.max(1);
        let mut batch = Vec::with_capacity(chunk);
        let mut last = 0;
        let mut go_on = true;
        storage.scan(&mut |revision, bytes| {
            last = revision;
            batch.push(bytes.to_vec());
            if batch.len() >= chunk {
                go_on = visit(revision, std::mem::take(&mut batch));
            }
            go_on
        })?;
        if go_on && !batch.is_empty() {
            visit(last, batch);
        }
        Ok(())
    }
}

/// What the start-up reader thread hands over.
enum Chunk {
    Parsed(Parsed),
    Raw(RawChunk),
}

/// Stored entities as read, back to back.
#[derive(Default)]
struct RawChunk {
    data: Vec<u8>,
    /// Where each entity's bytes end in `data`.
    ends: Vec<usize>,
}

const CHUNK_BYTES: usize = 1 << 20;

impl RawChunk {
    fn push(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.ends.push(self.data.len());
    }

    fn items(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, b)| &self.data[a..*b])
    }
}

/// Builds the in-memory index from durable storage, seeding an empty storage from a Cedar
/// JSON entities file first (the seed is written durably, as revision 1). Entities stored
/// under the same schema version were validated when written and are not validated again;
/// after a schema change every one is, and the new version is recorded.
pub fn load_store(
    storage: &dyn Storage,
    pack: &PolicyPack,
    seed: Option<&std::path::Path>,
) -> Result<EntityStore, EngineError> {
    let mut store = EntityStore::default();
    let revision = storage.revision()?;
    if revision == 0 {
        if let Some(seed) = seed {
            let mut prepared = store.prepare_file(seed, pack)?;
            prepared.changes.schema = Some(pack.schema_version.clone());
            storage.apply(&prepared.changes)?;
            store.commit(prepared);
        }
        return Ok(store);
    }
    let trusted = storage.schema()?.as_deref() == Some(pack.schema_version.as_str());
    let started = std::time::Instant::now();
    store.reserve(storage.count()? as usize);
    // The database is read on a second thread, in chunks. Entities stored under this schema
    // are also parsed there (with chunk-local numbers), so this thread only indexes them;
    // entities to validate again are parsed here, against the pack.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, DataError>>(4);
    let mut failure: Option<DataError> = None;
    let read = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut raw = RawChunk::default();
            let mut sent = 0usize;
            let mut send = |raw: RawChunk| {
                // Reading takes this thread a third of parsing's time and indexing takes the
                // other thread about two thirds: parsing two chunks in three here balances them.
                sent += 1;
                let chunk = if trusted && !sent.is_multiple_of(3) {
                    parse_chunk(raw.items()).map(Chunk::Parsed)
                } else {
                    Ok(Chunk::Raw(raw))
                };
                // The indexer stopped (an error): stop reading.
                tx.send(chunk).is_ok()
            };
            let result = storage.scan(&mut |_, bytes| {
                raw.push(bytes);
                raw.data.len() < CHUNK_BYTES || send(std::mem::take(&mut raw))
            });
            if !raw.ends.is_empty() {
                send(raw);
            }
            result
        });
        while let Ok(chunk) = rx.recv() {
            let added = chunk.and_then(|chunk| match chunk {
                Chunk::Parsed(parsed) => store.add_parsed(parsed),
                Chunk::Raw(raw) if trusted => store.add_parsed(parse_chunk(raw.items())?),
                Chunk::Raw(raw) => raw.items().try_for_each(|bytes| {
                    // Validated again under the new schema; stored as written.
                    serde_json::from_slice::<serde_json::Value>(bytes)
                        .map_err(|source| DataError::Json {
                            what: "stored entity".into(),
                            source,
                        })
                        .and_then(|v| parse_entity(v, pack, "stored entity"))
                        .and_then(|e| store.bulk_insert(e.to_json()))
                }),
            });
            if let Err(e) = added {
                failure = Some(e);
                break;
            }
        }
        drop(rx);
        reader.join()
    });
    // A panic of the reader goes on here, as it would have without the thread.
    read.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    let scanned = started.elapsed();
    store.finish_bulk(revision)?;
    tracing::info!(
        entities = store.len(),
        trusted,
        scan_ms = scanned.as_millis() as u64,
        closures_ms = (started.elapsed() - scanned).as_millis() as u64,
        "entity index built"
    );
    if !trusted {
        // Everything was just validated under this schema: record it, changing nothing else.
        storage.apply(&crate::storage::ChangeSet {
            revision,
            schema: Some(pack.schema_version.clone()),
            ..Default::default()
        })?;
    }
    Ok(store)
}
