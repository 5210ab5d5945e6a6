//! An entities file checked for import without holding it in memory: read one entity at a
//! time, each validated against the schema and written in canonical form to a spill file
//! beside the database, while only uids and parent edges are kept (`Hierarchy`); the store it
//! goes into is scanned the same way. Then every parent must exist and no entity may become its
//! own ancestor. What passes is written from the spill file in one more pass. Memory is a few
//! tens of bytes an entity of the file and the store, whatever their attributes.

use std::io::{BufReader, BufWriter, Read, Write as _};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::engine::error::DataError;
use crate::engine::index::{each_in_array, parse_entity, Hierarchy, HierarchyError};
use crate::engine::pack::PolicyPack;
use crate::storage::Storage;

/// A file that passed the checks, spilled in canonical form.
pub struct Checked {
    spill: tempfile::NamedTempFile,
    /// Entities of the file (the schema's actions left out).
    pub count: usize,
    /// Stored entities the file names.
    pub overlap: usize,
    /// Stored entities the file does not name (kept when merging, deleted when replacing).
    pub stored_only: Vec<String>,
}

/// Why a file cannot be imported; nothing has been written.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("{file}: {child} has parent {parent}, which does not exist in the file or the store ({count} such parent edges; add_parent refuses them the same way); nothing was written of {written} entities", file = .file.display())]
    Dangling {
        file: PathBuf,
        child: String,
        parent: String,
        count: usize,
        written: usize,
    },
    #[error("{file}: {entity} would be its own ancestor (Cedar refuses hierarchy cycles); nothing was written", file = .file.display())]
    Cycle { file: PathBuf, entity: String },
    #[error("{}: cannot spill the checked entities beside the database: {source}", .dir.display())]
    Spill {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads, validates and checks `file` for import into `storage`; `progress` is told how many
/// entities were read so far.
pub fn check_file(
    pack: &PolicyPack,
    file: &Path,
    storage: &dyn Storage,
    spill_dir: &Path,
    replace: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Checked, CheckError> {
    let spill_err = |source| CheckError::Spill {
        dir: spill_dir.to_path_buf(),
        source,
    };
    let spill = tempfile::Builder::new()
        .prefix(".blue-authz-import-")
        .tempfile_in(spill_dir)
        .map_err(spill_err)?;
    let mut out = BufWriter::with_capacity(1 << 20, spill.reopen().map_err(spill_err)?);
    let what = file.display().to_string();
    let input = std::fs::File::open(file).map_err(|source| DataError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let mut hierarchy = Hierarchy::default();
    let mut count = 0usize;
    let mut io_error = None;
    each_in_array(input, &what, &mut |i, value| {
        let label = format!("{what}[{i}]");
        match pack.entities.declared_action(&value) {
            Some(Ok(())) => return Ok(()),
            Some(Err(how)) => {
                return Err(DataError::Invalid {
                    what: label,
                    message: how,
                })
            }
            None => {}
        }
        let e = parse_entity(value, &pack.entities, &label)?;
        let uid = e.uid().to_string();
        let json = e.to_json();
        let parents = parent_texts(json);
        if !hierarchy.add_file(&uid, parents.iter().map(String::as_str)) {
            return Err(DataError::Invalid {
                what: label,
                message: format!("duplicate entity {uid}"),
            });
        }
        let text = json.to_string();
        if let Err(e) = write_record(&mut out, &uid, text.as_bytes()) {
            io_error.get_or_insert(e);
        }
        count += 1;
        if count.is_multiple_of(10_000) {
            progress(count as u64);
        }
        Ok(())
    })?;
    progress(count as u64);
    if let Some(e) = io_error {
        return Err(spill_err(e));
    }
    out.flush().map_err(spill_err)?;
    drop(out);

    // The store: its uids and edges (validated again if it was stored under another schema).
    let revalidate = storage.schema()?.as_deref() != Some(pack.schema_version.as_str());
    let mut bad = None;
    storage.scan(&mut |_, item| {
        let value: Value = match serde_json::from_slice(item) {
            Ok(v) => v,
            Err(source) => {
                bad = Some(DataError::Json {
                    what: "stored entity".into(),
                    source,
                });
                return false;
            }
        };
        let value = if revalidate && !replace {
            match parse_entity(value, &pack.entities, "stored entity") {
                Ok(e) => e.to_json().clone(),
                Err(e) => {
                    bad = Some(e);
                    return false;
                }
            }
        } else {
            value
        };
        let uid = crate::engine::json::json_uid(value.get("uid"))
            .map(|u| u.to_string())
            .unwrap_or_default();
        let parents = parent_texts(&value);
        hierarchy.add_stored(&uid, parents.iter().map(String::as_str));
        true
    })?;
    if let Some(e) = bad {
        return Err(e.into());
    }
    hierarchy.check(replace).map_err(|e| match e {
        HierarchyError::Dangling {
            child,
            parent,
            count: edges,
        } => CheckError::Dangling {
            file: file.to_path_buf(),
            child,
            parent,
            count: edges,
            written: count,
        },
        HierarchyError::Cycle { entity } => CheckError::Cycle {
            file: file.to_path_buf(),
            entity,
        },
    })?;
    Ok(Checked {
        spill,
        count,
        overlap: hierarchy.overlap(),
        stored_only: hierarchy.stored_only().map(String::from).collect(),
    })
}

/// The parents of an entity's Cedar JSON, as uid text.
fn parent_texts(json: &Value) -> Vec<String> {
    crate::engine::json::json_uids(json.get("parents"))
        .into_iter()
        .map(|u| u.to_string())
        .collect()
}

fn write_record(out: &mut impl std::io::Write, uid: &str, json: &[u8]) -> std::io::Result<()> {
    out.write_all(&(uid.len() as u32).to_le_bytes())?;
    out.write_all(uid.as_bytes())?;
    out.write_all(&(json.len() as u32).to_le_bytes())?;
    out.write_all(json)
}

impl Checked {
    /// The checked entities (uid text, canonical Cedar JSON), in file order.
    pub fn entities(&self) -> Result<Spilled, std::io::Error> {
        Ok(Spilled {
            input: BufReader::with_capacity(1 << 20, self.spill.reopen()?),
        })
    }
}

/// The spill file read back.
pub struct Spilled {
    input: BufReader<std::fs::File>,
}

impl Iterator for Spilled {
    type Item = Result<(String, Vec<u8>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(e.to_string())),
        }
        let mut read = |n: usize| -> Result<Vec<u8>, String> {
            let mut buf = vec![0u8; n];
            self.input.read_exact(&mut buf).map_err(|e| e.to_string())?;
            Ok(buf)
        };
        let uid = match read(u32::from_le_bytes(len) as usize) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => return Some(Err(e)),
        };
        let mut len = [0u8; 4];
        if let Err(e) = self.input.read_exact(&mut len) {
            return Some(Err(e.to_string()));
        }
        let mut json = vec![0u8; u32::from_le_bytes(len) as usize];
        if let Err(e) = self.input.read_exact(&mut json) {
            return Some(Err(e.to_string()));
        }
        Some(Ok((uid, json)))
    }
}
