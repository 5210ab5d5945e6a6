//! The optional configuration file (TOML). Every `serve` setting can be given by flag, by
//! environment variable, or here; a flag wins over the environment, which wins over the file,
//! which wins over the default. The file is read again on every policy reload, so `overlays`
//! set here can be switched on and off without a restart.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{read_toml, FileError};

/// The settings a configuration file may hold; the names are the flags' without `--`, with
/// `_` for `-`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub policies: Option<PathBuf>,
    pub overlays: Option<Vec<String>>,
    /// An address, or "" for none.
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub seed: Option<String>,
    pub data_listen: Option<String>,
    pub data_token: Option<String>,
    pub slice_depth: Option<usize>,
    pub max_batch: Option<usize>,
    pub worker_threads: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub max_revision_wait_ms: Option<u64>,
    pub watch: Option<bool>,
    pub listen_unix: Option<PathBuf>,
    pub data_listen_unix: Option<PathBuf>,
    /// Octal, as a string: "660".
    pub unix_mode: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub health_listen: Option<String>,
    pub decision_log: Option<bool>,
    pub decision_log_sample: Option<f64>,
    pub decision_log_context: Option<bool>,
    pub log: Option<String>,
    /// "text" or "json".
    pub log_format: Option<String>,
}

pub fn read(path: &Path) -> Result<FileConfig, FileError> {
    read_toml(path)
}
