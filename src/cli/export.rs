//! `blue-authz export`: print every entity of the embedded database, or of one consistent
//! snapshot of a shared source, as a Cedar JSON array. The reading is `service::offline`'s.

use std::io::Write as _;
use std::path::Path;

use super::{runtime, AnyError, Exit};
use crate::service::offline;

pub fn run(db: &Path, source: Option<&str>) -> Result<Exit, AnyError> {
    if let Some(url) = source {
        return export_shared(url);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    let mut io_error = None;
    offline::export_embedded(db, &mut |item| {
        let sep: &[u8] = if first { b"[\n" } else { b",\n" };
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
    out.write_all(if first { b"[\n]\n" } else { b"\n]\n" })?;
    out.flush()?;
    Ok(Exit::Success)
}

fn export_shared(url: &str) -> Result<Exit, AnyError> {
    runtime()?.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let read = offline::export_shared(url, tx);
        let write = async {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut first = true;
            out.write_all(b"[")?;
            while let Some(items) = rx.recv().await {
                for json in items {
                    out.write_all(if first { b"\n" } else { b",\n" })?;
                    first = false;
                    out.write_all(&json)?;
                }
            }
            out.write_all(b"\n]\n")?;
            out.flush()
        };
        let (head, written) = tokio::join!(read, write);
        let (revision, name) = head?;
        written?;
        eprintln!("exported revision {revision} of {name}");
        Ok(Exit::Success)
    })
}
