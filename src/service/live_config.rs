//! The configuration file, read again when it changes: what can apply to a running server
//! applies (the overlays, through the policy gate; the decision log on or off, its sampling and
//! its context; the log filter), a change to any other key is logged as needing a restart,
//! naming the key, and a file with an unknown key or a bad value is refused whole, as at
//! start-up. Flags and environment variables keep winning over the file.

use std::path::PathBuf;
use std::sync::Mutex;

use super::config::{DecisionLog, LiveConfig, Reread};
use super::error::SettingsError;
use super::settings::{keys, overlay_file, read_known, PackArgs, ServeSettings};

/// The keys a running server applies when the file changes.
pub const LIVE_KEYS: &[&str] = &[
    "overlays",
    "decision_log",
    "decision_log_sample",
    "decision_log_context",
    "log",
];

/// A server's configuration file and what it resolved to.
#[derive(Debug)]
pub struct ConfigFile {
    file: PathBuf,
    /// The settings of flags, environment and defaults, before the file.
    pack: PackArgs,
    serve: ServeSettings,
    /// The keys set by flag or environment.
    user_set: Vec<String>,
    /// The settings the file last resolved to (as a table, for comparing key by key).
    resolved: Mutex<toml::Table>,
}

impl ConfigFile {
    /// `pack` and `serve` as flags, environment and defaults gave them (before the file);
    /// `user_set` the keys among them given by flag or environment.
    pub fn new(
        file: PathBuf,
        pack: PackArgs,
        serve: ServeSettings,
        user_set: Vec<String>,
    ) -> Result<Self, SettingsError> {
        let this = ConfigFile {
            file,
            pack,
            serve,
            user_set,
            resolved: Mutex::new(toml::Table::new()),
        };
        let (table, _) = this.resolve()?;
        *this.resolved.lock().unwrap_or_else(|e| e.into_inner()) = table;
        Ok(this)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.file
    }

    /// The settings with the file as it is now: as a table, and the serve settings.
    fn resolve(&self) -> Result<(toml::Table, ServeSettings), SettingsError> {
        let table = read_known(&self.file)?;
        let user_set = |key: &str| self.user_set.iter().any(|k| k == key);
        let mut pack = self.pack.clone();
        let mut serve = self.serve.clone();
        overlay_file(
            &mut pack,
            &self.file,
            &table,
            &keys::<PackArgs>(),
            &user_set,
        )?;
        overlay_file(
            &mut serve,
            &self.file,
            &table,
            &keys::<ServeSettings>(),
            &user_set,
        )?;
        // The checks start-up makes of the live keys' values.
        if !(0.0..=1.0).contains(&serve.decision_log_sample) {
            return Err(self.wrong(
                "decision_log_sample",
                format!(
                    "{} is not a fraction from 0 to 1",
                    serve.decision_log_sample
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&serve.log)
            .map_err(|e| self.wrong("log", format!("`{}` is not a log filter: {e}", serve.log)))?;
        let mut resolved =
            toml::Table::try_from(&pack).map_err(|e| self.wrong("", e.to_string()))?;
        resolved.extend(toml::Table::try_from(&serve).map_err(|e| self.wrong("", e.to_string()))?);
        Ok((resolved, serve))
    }

    fn wrong(&self, key: &str, message: String) -> SettingsError {
        SettingsError::Value {
            file: self.file.clone(),
            key: key.to_string(),
            message,
        }
    }
}

impl LiveConfig for ConfigFile {
    /// Reads the file again: what it now resolves to, and which keys changed since the last
    /// read (live ones to apply, the others needing a restart, each logged by name). A file
    /// that does not resolve (unknown key, bad value) changes nothing.
    fn reread(&self) -> Result<Reread, SettingsError> {
        let (table, serve) = self.resolve()?;
        let mut last = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed: Vec<String> = table
            .iter()
            .filter(|(k, v)| last.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(last.keys().filter(|k| !table.contains_key(*k)).cloned())
            .collect();
        changed.sort();
        changed.dedup();
        let (applied, need_restart): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|k| LIVE_KEYS.contains(&k.as_str()));
        for key in &need_restart {
            tracing::warn!(
                file = %self.file.display(),
                key = %key,
                "configuration key `{key}` changed: it needs a restart to take effect; the server goes on with its old value"
            );
        }
        for key in &applied {
            tracing::info!(file = %self.file.display(), key = %key, "configuration key `{key}` changed: applied");
        }
        *last = table;
        Ok(Reread {
            overlays: serve_overlays(&last),
            decision_log: DecisionLog {
                enabled: serve.decision_log,
                sample: serve.decision_log_sample,
                include_context: serve.decision_log_context,
            },
            log: serve.log,
            applied,
            need_restart,
        })
    }
}

/// The overlays of resolved settings.
fn serve_overlays(table: &toml::Table) -> Vec<String> {
    table
        .get("overlays")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
