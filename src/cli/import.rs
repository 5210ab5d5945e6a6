//! `blue-authz import FILE`: write a Cedar JSON entities file into the embedded database as one
//! atomic batch, validated against the schema; or into a shared source, through a replica of
//! it (validated whole against the schema and the source's data, then written in batches).

use std::path::Path;

use std::sync::Arc;
use std::time::Duration;

use super::{load_or_report, runtime, AnyError, Exit};
use crate::engine::index::WriteOp;
use crate::engine::pack::{PackSpec, PolicyPack};
use crate::service::replica::{Replica, SourceConfig};
use crate::service::startup::load_store;
use crate::service::state::{Limits, State};
use crate::storage::{RedbStorage, Storage};

/// Entities per batch written to a shared source.
const SHARED_BATCH: usize = 10_000;

pub fn run(
    spec: &PackSpec,
    file: &Path,
    db: &Path,
    source: Option<&str>,
) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    if let Some(url) = source {
        return import_shared(pack, file, url);
    }
    let storage = RedbStorage::open(db)?;
    let store = load_store(&storage, &pack, None)?;
    let mut prepared = store.prepare_file(file, &pack.entities)?;
    prepared.changes.schema = Some(pack.schema_version.clone());
    let count = prepared.changes.puts.len();
    storage.apply(&prepared.changes)?;
    println!(
        "imported {count} entities into {} (revision {})",
        db.display(),
        prepared.revision()
    );
    Ok(Exit::Success)
}

fn import_shared(pack: Arc<PolicyPack>, file: &Path, url: &str) -> Result<Exit, AnyError> {
    let scratch = std::env::temp_dir().join(format!("blue-authz-import-{}", std::process::id()));
    let result = runtime()?.block_on(async {
        let state = Arc::new(State::new(Limits::default()));
        let replica = Replica::new(
            state.clone(),
            &scratch.join("copy.redb"),
            SourceConfig {
                url: url.to_string(),
                poll: Duration::from_secs(1),
                keep_batches: 0,
                max_age: None,
                notify: false,
            },
        )?;
        let (store, storage, _) = replica.open(&pack, false).await?;
        // Validated whole on top of the source's data before anything is written.
        let prepared = store.prepare_file(file, &pack.entities)?;
        let ops: Vec<WriteOp> = prepared
            .changes
            .puts
            .iter()
            .map(|(_, json)| serde_json::from_slice(json).map(WriteOp::Upsert))
            .collect::<Result<_, _>>()?;
        state.install(pack.clone(), store, storage);
        let count = ops.len();
        let mut revision = 0;
        for chunk in ops.chunks(SHARED_BATCH) {
            revision = replica.write(chunk.to_vec()).await?;
        }
        println!(
            "imported {count} entities into {} (revision {revision})",
            replica.source.name()
        );
        Ok::<_, AnyError>(Exit::Success)
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
