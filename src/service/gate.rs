//! The gate every policy pack passes before it serves, at start-up and at every reload alike:
//! it loads (parse, `@id` naming, strict validation against the schema), then its own test
//! suites all pass. Stored data's conformance to a changed schema is checked where the data
//! is (start-up's load, `State::swap_pack_checked`). Fail closed: no gated pack, no ALLOW.

use std::sync::Arc;

use crate::authoring::suite::{self, SuiteError};
use crate::engine::error::LoadError;
use crate::engine::pack::{PackSpec, PolicyPack};

/// Why a pack did not pass the gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("policy tests of version {version}: {error}")]
    Suites {
        version: String,
        #[source]
        error: SuiteError,
    },
    /// Cases that failed (each described), and the tally.
    #[error("policy tests of version {version} failed: {summary}")]
    Failed {
        version: String,
        failures: Vec<String>,
        summary: String,
    },
}

impl GateError {
    /// Every reason, one line (or one diagnostic) each, as the log and `GetPolicyStatus`
    /// show them.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            GateError::Load(LoadError::Invalid(diags)) => {
                diags.iter().map(|d| d.render()).collect()
            }
            GateError::Failed {
                failures, summary, ..
            } => {
                let mut out = failures.clone();
                out.push(format!("policy tests: {summary}"));
                out
            }
            other => vec![other.to_string()],
        }
    }

    /// The candidate's version, once it loaded.
    pub fn version(&self) -> Option<&str> {
        match self {
            GateError::Load(_) => None,
            GateError::Suites { version, .. } | GateError::Failed { version, .. } => Some(version),
        }
    }
}

/// Loads the pack of `spec` and runs its suites.
pub fn load(spec: &PackSpec) -> Result<Arc<PolicyPack>, GateError> {
    check(PolicyPack::load(spec)?)
}

/// Runs a loaded pack's suites; the pack passes only if every case does.
pub fn check(pack: Arc<PolicyPack>) -> Result<Arc<PolicyPack>, GateError> {
    let version = pack.version.clone();
    let report = suite::run_with(pack.clone()).map_err(|error| GateError::Suites {
        version: version.clone(),
        error,
    })?;
    let failures: Vec<String> = report.failed().iter().map(|f| f.describe()).collect();
    if !failures.is_empty() {
        return Err(GateError::Failed {
            version,
            failures,
            summary: report.summary(),
        });
    }
    Ok(pack)
}
