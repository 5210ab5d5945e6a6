//! The optional configuration file (TOML). Every `serve` setting can be given by flag, by
//! environment variable, or here; a flag wins over the environment, which wins over the file,
//! which wins over the default. The file is read again on every policy reload, so `overlays`
//! set here can be switched on and off without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
}

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
}

pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Toml {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}
