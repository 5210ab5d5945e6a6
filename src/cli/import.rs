//! `blue-authz import FILE`: write a Cedar JSON entities file into the embedded database as one
//! atomic batch, validated against the schema; or into a shared source, through a replica of
//! it (validated whole against the schema and the source's data, then written in batches). It
//! merges by default (`--replace` also deletes what the file does not name), refuses parents
//! that exist nowhere (as `add_parent` does), and says which it did. The work is
//! `service::offline`'s.

use std::path::Path;

use super::{load_or_report, runtime, AnyError, Exit};
use crate::bench::progress::Progress;
use crate::engine::pack::PackSpec;
use crate::service::offline;

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
    // The count of entities read so far, on a terminal.
    let mut progress = Progress::new("reading and checking entities", None);
    let mut tick = |n: u64| progress.set(n);
    let imported = match source {
        Some(url) => {
            runtime()?.block_on(offline::import_shared(pack, file, url, replace, &mut tick))?
        }
        None => offline::import_embedded(&pack, file, db, replace, &mut tick)?,
    };
    progress.finish();
    println!(
        "imported {} entities into {} (revision {}): {}",
        imported.count, imported.into, imported.revision, imported.how
    );
    Ok(Exit::Success)
}
