//! `blue-authz export`: print every entity of the embedded database as a Cedar JSON array.

use std::io::Write as _;
use std::path::Path;

use super::{AnyError, Exit};
use crate::storage::{RedbStorage, Storage};

pub fn run(db: &Path) -> Result<Exit, AnyError> {
    let storage = RedbStorage::open(db)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    let mut io_error = None;
    out.write_all(b"[")?;
    storage.scan(&mut |_, item| {
        let sep: &[u8] = if first { b"\n" } else { b",\n" };
        first = false;
        if let Err(e) = out.write_all(sep).and_then(|_| out.write_all(item)) {
            io_error = Some(e);
            return false;
        }
        true
    })?;
    if let Some(e) = io_error {
        return Err(e.into());
    }
    out.write_all(b"\n]\n")?;
    out.flush()?;
    Ok(Exit::Success)
}
