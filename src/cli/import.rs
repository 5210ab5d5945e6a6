//! `blue-authz import FILE`: write a Cedar JSON entities file into the embedded database as one
//! atomic batch, validated against the schema.

use std::path::Path;

use super::{load_or_report, AnyError, Exit};
use crate::engine::pack::PackSpec;
use crate::service::startup::load_store;
use crate::storage::{RedbStorage, Storage};

pub fn run(spec: &PackSpec, file: &Path, db: &Path) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
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
