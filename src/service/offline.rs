//! The data commands that run without a server (`import`, `export`, `gen --into-db`): the
//! embedded database opened while no server holds it, or a shared source read from a snapshot
//! and written through a replica of it. The CLI parses arguments and prints; storage stays in
//! the service room.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::error::DataError;
use crate::engine::index::{EntityStore, WriteOp};
use crate::engine::pack::PolicyPack;
use crate::service::import_file::{check_file, CheckError, Checked};
use crate::service::replica::{Replica, ReplicaError, SourceConfig};
use crate::service::state::{Limits, State, StateError, Write};
use crate::service::write::WriteError;
use crate::storage::{
    ChangeSet, Changes, PgSource, RedbStorage, SourceError, SourceLimits, Storage, StorageError,
};

/// Entities per batch written to a shared source.
const SHARED_BATCH: usize = 10_000;
/// How long one chunk of an import into a shared source may take to commit.
const IMPORT_CHUNK_DEADLINE: Duration = Duration::from_secs(120);

/// Why an offline command failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{}: a running server holds this database; {instead}, or stop the server first", .db.display())]
    InUse { db: PathBuf, instead: &'static str },
    #[error("{}: no such database file (this command reads an existing one; `--db` names it)", .0.display())]
    NoDatabase(PathBuf),
    #[error("{} is not empty", .0.display())]
    NotEmpty(PathBuf),
    /// A file that does not pass the checks (schema, parents, cycles): nothing was written.
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("a stored entity cannot be read back: {0}")]
    Stored(String),
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    pub count: usize,
    pub revision: u64,
    /// What the batch did to the rest of the store, in words.
    pub how: String,
    /// Where it went: the database file or the source's name.
    pub into: String,
}

/// Opens the embedded database for an offline command; one a running server holds is an error
/// that says so and what to do instead (`instead`: the data-service call that does the job).
fn open(db: &Path, instead: &'static str) -> Result<RedbStorage, OfflineError> {
    RedbStorage::open(db).map_err(|e| {
        if e.in_use {
            OfflineError::InUse {
                db: db.to_path_buf(),
                instead,
            }
        } else {
            e.into()
        }
    })
}

/// Reads the embedded database into an index under `pack`, writing nothing to it.
pub fn read_embedded(db: &Path, pack: &PolicyPack) -> Result<EntityStore, OfflineError> {
    if !db.is_file() {
        return Err(OfflineError::NoDatabase(db.to_path_buf()));
    }
    let storage = open(
        db,
        "give its data as a file instead (`--entities`, from the data service's ExportEntities)",
    )?;
    Ok(super::startup::read_store(&storage, pack)?.0)
}

/// Imports an entities file into the embedded database as one atomic batch, streamed: the file
/// is read and checked one entity at a time (`import_file`), then written in one transaction,
/// so memory stays a few tens of bytes an entity whatever the file's size. `progress` is told
/// how many entities were read so far.
pub fn import_embedded(
    pack: &PolicyPack,
    file: &Path,
    db: &Path,
    replace: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Imported, OfflineError> {
    let storage = open(
        db,
        "write through the running server with the WriteEntities call of its data service",
    )?;
    let dir = spill_dir(db);
    let checked = check_file(pack, file, &storage, &dir, replace, progress)?;
    let how = describe(&checked, replace);
    let revision = storage.revision()? + 1;
    let mut entities = checked
        .entities()
        .map_err(|e| OfflineError::Stored(format!("the spilled entities: {e}")))?;
    let deletes: &[String] = if replace { &checked.stored_only } else { &[] };
    let count = storage.write_stream(
        revision,
        &pack.schema_version,
        &mut || entities.next(),
        &mut deletes.iter().map(String::as_str),
    )?;
    Ok(Imported {
        count,
        revision,
        how,
        into: db.display().to_string(),
    })
}

/// Where the spill file of an import goes: beside the database (the same disk, which has room
/// for the data it is about to hold).
fn spill_dir(db: &Path) -> PathBuf {
    match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What an import does to the rest of the store, in words.
fn describe(checked: &Checked, replace: bool) -> String {
    if replace {
        format!(
            "replaced: {} stored entities the file does not name deleted",
            checked.stored_only.len()
        )
    } else {
        format!(
            "merged: {} stored entities the file does not name kept (--replace deletes them); \
             {} stored entities the file names replaced",
            checked.stored_only.len(),
            checked.overlap
        )
    }
}

/// Imports an entities file into a shared source, through a replica of it in a scratch
/// directory: checked whole against the schema and the source's data first (streamed, as
/// into the embedded database), then written in batches of 10,000.
pub async fn import_shared(
    pack: Arc<PolicyPack>,
    file: &Path,
    url: &str,
    replace: bool,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Imported, OfflineError> {
    let scratch = std::env::temp_dir().join(format!("blue-authz-import-{}", std::process::id()));
    let result = import_through(pack, file, url, replace, &scratch, progress).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn import_through(
    pack: Arc<PolicyPack>,
    file: &Path,
    url: &str,
    replace: bool,
    scratch: &Path,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Imported, OfflineError> {
    let state = Arc::new(State::new(Limits::default()));
    let replica = Arc::new(Replica::new(
        state.clone(),
        &scratch.join("copy.redb"),
        SourceConfig {
            url: url.to_string(),
            poll: Duration::from_secs(1),
            keep_batches: 0,
            max_age: None,
            notify: false,
            limits: SourceLimits::default(),
        },
    )?);
    let (store, storage, _) = replica.open(&pack, false).await?;
    // Checked whole on top of the source's data before anything is written.
    let checked = check_file(&pack, file, storage.as_ref(), scratch, replace, progress)?;
    let how = describe(&checked, replace);
    let count = checked.count;
    let deletes: Vec<WriteOp> = if replace {
        checked
            .stored_only
            .iter()
            .map(|uid| {
                uid.parse()
                    .map(WriteOp::Delete)
                    .map_err(|e: cedar_policy::ParseErrors| OfflineError::Stored(e.to_string()))
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    state.install(pack.clone(), store, storage);
    let mut entities = checked
        .entities()
        .map_err(|e| OfflineError::Stored(format!("the spilled entities: {e}")))?
        .map(|item| {
            let (_, json) = item.map_err(OfflineError::Stored)?;
            serde_json::from_slice(&json)
                .map(WriteOp::Upsert)
                .map_err(|e| OfflineError::Stored(e.to_string()))
        })
        .chain(deletes.into_iter().map(Ok));
    let mut revision = 0;
    loop {
        let chunk: Vec<WriteOp> = entities
            .by_ref()
            .take(SHARED_BATCH)
            .collect::<Result<_, _>>()?;
        if chunk.is_empty() {
            break;
        }
        let deadline = std::time::Instant::now() + IMPORT_CHUNK_DEADLINE;
        revision = replica.write(Write::new(chunk, deadline)).await?.revision;
    }
    Ok(Imported {
        count,
        revision,
        how,
        into: replica.source.name().to_string(),
    })
}

/// Visits every stored entity of an existing embedded database (its Cedar JSON), until
/// `visit` says stop.
pub fn export_embedded(
    db: &Path,
    visit: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), OfflineError> {
    // Opening would create an empty database: a wrong path must not look like an empty store.
    if !db.is_file() {
        return Err(OfflineError::NoDatabase(db.to_path_buf()));
    }
    let storage = open(
        db,
        "read it through the running server with the ExportEntities call of its data service",
    )?;
    storage.scan(&mut |_, item| visit(item))?;
    Ok(())
}

/// Sends one consistent snapshot of a shared source, in chunks of entities' Cedar JSON;
/// returns its revision and the source's name.
pub async fn export_shared(
    url: &str,
    out: tokio::sync::mpsc::Sender<Vec<Vec<u8>>>,
) -> Result<(u64, String), OfflineError> {
    let source = PgSource::new(url)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let read = async {
        let head = source.snapshot(10_000, &tx).await;
        drop(tx);
        head
    };
    let forward = async {
        while let Some(items) = rx.recv().await {
            let items = items.into_iter().map(|(_, json, _)| json).collect();
            if out.send(items).await.is_err() {
                break;
            }
        }
    };
    let (head, ()) = tokio::join!(read, forward);
    Ok((head?.revision, source.name().to_string()))
}

/// A new, empty embedded database that `gen` fills in one batch.
pub struct NewDatabase {
    storage: RedbStorage,
    path: PathBuf,
}

impl NewDatabase {
    /// Opens (or creates) the database; one that holds data already is refused.
    pub fn open(db: &Path) -> Result<Self, OfflineError> {
        let storage = RedbStorage::open(db)?;
        if storage.revision()? != 0 {
            return Err(OfflineError::NotEmpty(db.to_path_buf()));
        }
        Ok(NewDatabase {
            storage,
            path: db.to_path_buf(),
        })
    }

    /// Writes validated entities (uid text, Cedar JSON) as revision 1, under the pack's schema.
    pub fn write(
        self,
        pack: &PolicyPack,
        puts: Vec<(String, Vec<u8>)>,
    ) -> Result<(), OfflineError> {
        let set = ChangeSet {
            changes: Changes {
                revision: 1,
                puts,
                ..Default::default()
            },
            schema: Some(pack.schema_version.clone()),
            ..Default::default()
        };
        self.storage.apply(&set)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
