//! The data commands that run without a server (`import`, `export`, `gen --into-db`): the
//! embedded database opened while no server holds it, or a shared source read from a snapshot
//! and written through a replica of it. The CLI parses arguments and prints; storage stays in
//! the service room.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::error::DataError;
use crate::engine::index::{EntityStore, Prepared, WriteOp};
use crate::engine::pack::PolicyPack;
use crate::service::replica::{Replica, ReplicaError, SourceConfig};
use crate::service::startup::load_store;
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
    #[error("{}: no such database file (export reads an existing one; `--db` names it)", .0.display())]
    NoDatabase(PathBuf),
    #[error("{} is not empty", .0.display())]
    NotEmpty(PathBuf),
    /// Parents that exist neither in the file nor in the store: nothing was written.
    #[error(
        "{}: {child} has parent {parent}, which does not exist in the file or the store ({count} \
         such parent edges; add_parent refuses them the same way); nothing was written of \
         {written} entities",
        .file.display()
    )]
    Dangling {
        file: PathBuf,
        child: String,
        parent: String,
        count: usize,
        written: usize,
    },
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

/// Imports an entities file into the embedded database as one atomic batch.
pub fn import_embedded(
    pack: &PolicyPack,
    file: &Path,
    db: &Path,
    replace: bool,
) -> Result<Imported, OfflineError> {
    let storage = open(
        db,
        "write through the running server with the WriteEntities call of its data service",
    )?;
    let store = load_store(&storage, pack, None)?;
    let (prepared, how) = prepare(&store, file, pack, replace)?;
    let count = prepared.changes.puts.len();
    let revision = prepared.revision();
    storage.apply(&ChangeSet {
        changes: prepared.changes,
        schema: Some(pack.schema_version.clone()),
        ..Default::default()
    })?;
    Ok(Imported {
        count,
        revision,
        how,
        into: db.display().to_string(),
    })
}

/// The file as one batch over `store` (replacing its contents if asked), refused if a parent
/// exists nowhere; and what the batch does to the rest of the store, in words.
fn prepare(
    store: &EntityStore,
    file: &Path,
    pack: &PolicyPack,
    replace: bool,
) -> Result<(Prepared, String), OfflineError> {
    let prepared = store.prepare_file(file, &pack.entities)?;
    let written = prepared.changes.puts.len();
    let (prepared, how) = if replace {
        let (prepared, deleted) = prepared.replacing(store);
        let how = format!("replaced: {deleted} stored entities the file does not name deleted");
        (prepared, how)
    } else {
        let kept = store.len().saturating_sub(
            prepared
                .changes
                .puts
                .iter()
                .filter(|(uid, _)| uid.parse().is_ok_and(|u| store.contains(&u)))
                .count(),
        );
        let how = format!(
            "merged: {kept} stored entities the file does not name kept (--replace deletes them)"
        );
        (prepared, how)
    };
    let dangling = prepared.dangling_parents(store);
    if let Some((child, parent)) = dangling.first() {
        return Err(OfflineError::Dangling {
            file: file.to_path_buf(),
            child: child.to_string(),
            parent: parent.to_string(),
            count: dangling.len(),
            written,
        });
    }
    Ok((prepared, how))
}

/// Imports an entities file into a shared source, through a replica of it in a scratch
/// directory: validated whole on top of the source's data, then written in batches.
pub async fn import_shared(
    pack: Arc<PolicyPack>,
    file: &Path,
    url: &str,
    replace: bool,
) -> Result<Imported, OfflineError> {
    let scratch = std::env::temp_dir().join(format!("blue-authz-import-{}", std::process::id()));
    let result = import_through(pack, file, url, replace, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn import_through(
    pack: Arc<PolicyPack>,
    file: &Path,
    url: &str,
    replace: bool,
    scratch: &Path,
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
    // Validated whole on top of the source's data before anything is written.
    let (prepared, how) = prepare(&store, file, &pack, replace)?;
    let mut ops: Vec<WriteOp> = prepared
        .changes
        .puts
        .iter()
        .map(|(_, json)| serde_json::from_slice(json).map(WriteOp::Upsert))
        .collect::<Result<_, _>>()
        .map_err(|e| OfflineError::Stored(e.to_string()))?;
    let count = ops.len();
    for uid in &prepared.changes.deletes {
        let uid = uid
            .parse()
            .map_err(|e: cedar_policy::ParseErrors| OfflineError::Stored(e.to_string()))?;
        ops.push(WriteOp::Delete(uid));
    }
    state.install(pack.clone(), store, storage);
    let mut revision = 0;
    for chunk in ops.chunks(SHARED_BATCH) {
        let deadline = std::time::Instant::now() + IMPORT_CHUNK_DEADLINE;
        revision = replica
            .write(Write::new(chunk.to_vec(), deadline))
            .await?
            .revision;
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
