//! The files of a policy pack: the schema, the `*.cedar` files, the optional overlays.

use std::fs;
use std::path::{Path, PathBuf};

use super::OVERLAY_DIR;
use crate::engine::error::LoadError;

/// Names of the overlays available in `dir/optional/`, sorted.
pub fn overlay_names(dir: &Path) -> Result<Vec<String>, LoadError> {
    let odir = dir.join(OVERLAY_DIR);
    if !odir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = list(&odir, "cedar")?
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// The `*.cedar` files directly in `dir`, sorted by name.
pub(super) fn cedar_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    list(dir, "cedar")
}

fn list(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

pub(super) fn read(path: &Path) -> Result<String, LoadError> {
    fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}
