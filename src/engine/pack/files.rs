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

/// The content hash of every file under the pack directory, at any depth (suites, tables,
/// fixtures and unused overlays included), by path relative to `dir`: a change to any of them
/// makes a new candidate for the gate. Hidden entries (an editor's `.x.swp`, a ConfigMap's
/// `..data` twin of its own files) and backups ending in `~` are not part of the pack.
pub(super) fn digest_tree(dir: &Path) -> Result<String, LoadError> {
    use sha2::{Digest, Sha256};
    let mut paths = Vec::new();
    walk(dir, &mut paths)?;
    paths.sort();
    let mut hasher = Sha256::new();
    for path in &paths {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        let bytes = fs::read(path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(super::hex8(&hasher.finalize()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_none_or(|n| n.starts_with('.') || n.ends_with('~')) {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}
