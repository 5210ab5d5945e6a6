//! The optional configuration file (TOML). Every `serve` setting can be given by flag, by
//! environment variable, or here; a flag wins over the environment, which wins over the file,
//! which wins over the default. The file is read again on every policy reload, so `overlays`
//! set here can be switched on and off without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{read_toml, FileError};

/// The settings a configuration file may hold; the names are the flags' without `--`, with
/// `_` for `-`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub policies: Option<PathBuf>,
    pub overlays: Option<Vec<String>>,
    pub listen: Option<SocketAddr>,
    pub db: Option<PathBuf>,
    pub seed: Option<PathBuf>,
    pub data_listen: Option<SocketAddr>,
    pub data_token: Option<String>,
    pub slice_depth: Option<usize>,
    pub max_batch: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub max_revision_wait_ms: Option<u64>,
    pub watch: Option<bool>,
    pub listen_unix: Option<PathBuf>,
    pub data_listen_unix: Option<PathBuf>,
    /// Octal, as a string: "660".
    pub unix_mode: Option<String>,
}

pub fn read(path: &Path) -> Result<FileConfig, FileError> {
    read_toml(path)
}
