//! Start-up, before anything is served: load the policy pack, open durable storage, and build
//! the in-memory entity index from it (a reader thread scans and parses while this one
//! indexes), seeding an empty database first; meanwhile the pack goes through the gate (its
//! suites and invariants) on a thread of its own. Both must succeed before anything serves.

use std::path::Path;
use std::sync::Arc;

use super::error::ServeError;
use super::gate::{self, Analysis};
use super::state::StateError;
use crate::engine::error::DataError;
use crate::engine::index::{parse_chunk, parse_entity, EntityStore, Parsed};
use crate::engine::pack::{PackSpec, PolicyPack};
use crate::storage::{ChangeSet, Changes, RedbStorage, Storage};

/// The policy pack, the entity index and the storage it was built from.
pub type Loaded = (Arc<PolicyPack>, EntityStore, Arc<dyn Storage>);

/// Loads the pack, opens the database at `db` and builds the index (seeding an empty
/// database from `seed`).
pub fn load(
    spec: &PackSpec,
    analysis: Analysis,
    db: &Path,
    seed: Option<&Path>,
    key_window: std::time::Duration,
) -> Result<Loaded, ServeError> {
    let started = std::time::Instant::now();
    // Parsed and validated first: the data is validated against its schema.
    let pack = PolicyPack::load(spec).map_err(gate::GateError::from)?;
    let loaded = started.elapsed();
    let redb = RedbStorage::open(db).map_err(StateError::from)?;
    redb.set_key_window(key_window);
    let storage: Arc<dyn Storage> = Arc::new(redb);
    tracing::info!(
        policies_ms = loaded.as_millis() as u64,
        open_ms = (started.elapsed() - loaded).as_millis() as u64,
        "policies loaded, database open"
    );
    // The same gate as a reload (a pack whose own tests or invariants fail never serves),
    // run on another thread while the data loads: nothing is served until both are done, and
    // a refused pack refuses the start-up whatever the data did. An empty database is seeded
    // only by a pack that passed.
    if seed.is_some() && storage.revision().map_err(StateError::from)? == 0 {
        let pack = gate::check(pack, analysis)?;
        let store = load_store(storage.as_ref(), &pack, seed)?;
        return Ok((pack, store, storage));
    }
    std::thread::scope(|s| {
        let gated = s.spawn(|| {
            let t = std::time::Instant::now();
            let checked = gate::check(pack.clone(), analysis);
            tracing::info!(
                gate_ms = t.elapsed().as_millis() as u64,
                "the pack's suites and invariants checked, beside the data load"
            );
            checked
        });
        let store = load_store(storage.as_ref(), &pack, seed);
        let pack = gated
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok((pack, store?, storage.clone()))
    })
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
/// after a schema change every one is. Entities the data service wrote under the same schema
/// and data assumptions (`PolicyPack::data_version`) kept them; any others (an import, an
/// older pack) are checked against the assumptions, and the new version is recorded.
pub fn load_store(
    storage: &dyn Storage,
    pack: &PolicyPack,
    seed: Option<&std::path::Path>,
) -> Result<EntityStore, StateError> {
    let revision = storage.revision()?;
    if revision == 0 {
        let mut store = EntityStore::default();
        if let Some(seed) = seed {
            let mut prepared = store.prepare_file(seed, &pack.entities)?;
            let entities = prepared.changes.puts.len();
            storage.apply(&ChangeSet {
                changes: std::mem::take(&mut prepared.changes),
                schema: Some(pack.data_version.clone()),
                ..Default::default()
            })?;
            store.commit(prepared);
            tracing::info!(
                seed = %seed.display(),
                entities,
                revision = store.revision(),
                "seeded the empty database from the seed file"
            );
        }
        return Ok(store);
    }
    let (store, trusted) = read_store(storage, pack)?;
    if !trusted {
        // Everything was just validated under this schema: record it, changing nothing else.
        storage.apply(&ChangeSet {
            changes: Changes {
                revision,
                ..Default::default()
            },
            schema: Some(pack.data_version.clone()),
            ..Default::default()
        })?;
    }
    Ok(store)
}

/// Builds the in-memory index from durable storage without writing to it: entities stored
/// under another schema or other data assumptions are validated and checked anew (whether
/// they were is the second value). For tools that read a database a server may also use.
pub fn read_store(
    storage: &dyn Storage,
    pack: &PolicyPack,
) -> Result<(EntityStore, bool), StateError> {
    let mut store = EntityStore::default();
    let revision = storage.revision()?;
    // Data written under this schema and these assumptions was validated as it was written.
    let trusted = storage.schema()?.as_deref() == Some(pack.data_version.as_str());
    let same_schema = trusted || storage.schema()?.as_deref() == Some(pack.schema_version.as_str());
    let started = std::time::Instant::now();
    // Room to grow: the index's tables double when full, rehashing every entity under the
    // decisions' lock, so the first batches of new entities would stall decisions for as long.
    let count = storage.count()? as usize;
    store.reserve(count + count / 8 + 16_384);
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
                let chunk = if same_schema && !sent.is_multiple_of(3) {
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
                Chunk::Raw(raw) if same_schema => store.add_parsed(parse_chunk(raw.items())?),
                Chunk::Raw(raw) => raw.items().try_for_each(|bytes| {
                    // Validated again under the new schema; stored as written.
                    serde_json::from_slice::<serde_json::Value>(bytes)
                        .map_err(|source| DataError::Json {
                            what: "stored entity".into(),
                            source,
                        })
                        .and_then(|v| parse_entity(v, &pack.entities, "stored entity"))
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
    tracing::info!(footprint = %store.footprint().summary(), "entity index footprint");
    if !trusted && !pack.entities.assumptions.is_empty() {
        // Writes keep them, but data imported offline, or written before the pack declared
        // them, may not: the proofs assume them, so a store that breaks one does not serve.
        let t = std::time::Instant::now();
        let checked = store
            .check_assumptions(&pack.entities)
            .map_err(|v| DataError::Invalid {
                what: "the stored entities".into(),
                message: v.to_string(),
            })?;
        tracing::info!(
            checked,
            ms = t.elapsed().as_millis() as u64,
            "the stored entities keep the pack's data assumptions"
        );
    }
    Ok((store, trusted))
}
