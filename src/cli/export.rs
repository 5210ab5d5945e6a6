//! `blue-authz export`: print every entity of the embedded database, or of one consistent
//! snapshot of a shared source, as a Cedar JSON array.

use std::io::Write as _;
use std::path::Path;

use super::{open_offline, runtime, AnyError, Exit};
use crate::storage::{PgSource, Storage};

pub fn run(db: &Path, source: Option<&str>) -> Result<Exit, AnyError> {
    if let Some(url) = source {
        return export_shared(url);
    }
    // Opening would create an empty database and print `[]`: a wrong path must not look like
    // an empty store.
    if !db.is_file() {
        return Err(format!(
            "{}: no such database file (export reads an existing one; `--db` names it)",
            db.display()
        )
        .into());
    }
    let storage = open_offline(
        db,
        "read it through the running server with the ExportEntities call of its data service",
    )?;
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

fn export_shared(url: &str) -> Result<Exit, AnyError> {
    let source = PgSource::new(url)?;
    runtime()?.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let read = async {
            let head = source.snapshot(10_000, &tx).await;
            drop(tx);
            head
        };
        let write = async {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut first = true;
            out.write_all(b"[")?;
            while let Some(items) = rx.recv().await {
                for (_, json, _) in items {
                    out.write_all(if first { b"\n" } else { b",\n" })?;
                    first = false;
                    out.write_all(&json)?;
                }
            }
            out.write_all(b"\n]\n")?;
            out.flush()
        };
        let (head, written) = tokio::join!(read, write);
        let head = head?;
        written?;
        eprintln!("exported revision {} of {}", head.revision, source.name());
        Ok(Exit::Success)
    })
}
