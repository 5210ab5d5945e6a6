//! `blue-authz import FILE`: write a Cedar JSON entities file into the embedded database as one
//! atomic batch, validated against the schema; or into a shared source, through a replica of
//! it (validated whole against the schema and the source's data, then written in batches). It
//! merges by default (`--replace` also deletes what the file does not name), refuses parents
//! that exist nowhere (as `add_parent` does), and says which it did.

use std::path::Path;

use std::sync::Arc;
use std::time::Duration;

use super::{load_or_report, open_offline, runtime, AnyError, Exit};
use crate::engine::index::{EntityStore, Prepared, WriteOp};
use crate::engine::pack::{PackSpec, PolicyPack};
use crate::service::replica::{Replica, SourceConfig};
use crate::service::startup::load_store;
use crate::service::state::{Limits, State};
use crate::storage::{ChangeSet, Storage};

/// Entities per batch written to a shared source.
const SHARED_BATCH: usize = 10_000;
/// How long one chunk of an import into a shared source may take to commit.
const IMPORT_CHUNK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

pub fn run(
    spec: &PackSpec,
    file: &Path,
    db: &Path,
    source: Option<&str>,
    replace: bool,
) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    if let Some(url) = source {
        return import_shared(pack, file, url, replace);
    }
    let storage = open_offline(
        db,
        "write through the running server with the WriteEntities call of its data service",
    )?;
    let store = load_store(&storage, &pack, None)?;
    let (prepared, how) = prepare(&store, file, &pack, replace)?;
    let count = prepared.changes.puts.len();
    let revision = prepared.revision();
    storage.apply(&ChangeSet {
        changes: prepared.changes,
        schema: Some(pack.schema_version.clone()),
        ..Default::default()
    })?;
    println!(
        "imported {count} entities into {} (revision {revision}): {how}",
        db.display(),
    );
    Ok(Exit::Success)
}

/// The file as one batch over `store` (replacing its contents if asked), refused if a parent
/// exists nowhere; and what the batch does to the rest of the store, in words.
fn prepare(
    store: &EntityStore,
    file: &Path,
    pack: &PolicyPack,
    replace: bool,
) -> Result<(Prepared, String), AnyError> {
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
        return Err(format!(
            "{}: {child} has parent {parent}, which does not exist in the file or the store \
             ({} such parent edges; add_parent refuses them the same way); nothing was written \
             of {written} entities",
            file.display(),
            dangling.len()
        )
        .into());
    }
    Ok((prepared, how))
}

fn import_shared(
    pack: Arc<PolicyPack>,
    file: &Path,
    url: &str,
    replace: bool,
) -> Result<Exit, AnyError> {
    let scratch = std::env::temp_dir().join(format!("blue-authz-import-{}", std::process::id()));
    let result = runtime()?.block_on(async {
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
                limits: crate::storage::SourceLimits::default(),
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
            .collect::<Result<_, _>>()?;
        let count = ops.len();
        for uid in &prepared.changes.deletes {
            ops.push(WriteOp::Delete(uid.parse()?));
        }
        state.install(pack.clone(), store, storage);
        let mut revision = 0;
        for chunk in ops.chunks(SHARED_BATCH) {
            let deadline = std::time::Instant::now() + IMPORT_CHUNK_DEADLINE;
            let w = crate::service::state::Write::new(chunk.to_vec(), deadline);
            revision = replica.write(w).await?.revision;
        }
        println!(
            "imported {count} entities into {} (revision {revision}): {how}",
            replica.source.name()
        );
        Ok::<_, AnyError>(Exit::Success)
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
