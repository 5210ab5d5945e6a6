//! Data files of ours in TOML (policy test suites, matrix rows, the configuration file): read
//! and parsed with errors that name the file, and toml's line and column.

use std::path::PathBuf;

/// A data file of ours (suite, matrix rows, configuration) that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
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

/// Reads and parses a TOML file; errors name the file (and toml's line and column).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| FileError::Toml {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}
