//! The gate every policy pack passes before it serves, at start-up and at every reload alike:
//! it loads (parse, `@id` naming, strict validation against the schema), its own test suites
//! all pass and its permission table's rows (`matrix.toml`) answer as the table says on its
//! fixture, and its invariants and table rows are proved for all data its assumptions allow
//! (`invariants.toml`, `assumptions.toml`, with cvc5; without
//! the solver, [`Analysis`] says whether the pack is refused or loads with the analysis
//! plainly skipped). Stored data's conformance to a changed schema is checked where the data
//! is (start-up's load, `State::swap_pack_checked`). Fail closed: no gated pack, no ALLOW.

use std::sync::Arc;

use crate::analysis::{self, AnalysisError};
use crate::authoring::matrix::{self, MatrixError};
use crate::authoring::suite::{self, SuiteError};
use crate::engine::error::LoadError;
use crate::engine::pack::{PackSpec, PolicyPack};

/// Whether a pack must have its invariants proved to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Analysis {
    /// No proof, no serving: a pack is refused when the solver is missing or fails.
    Required,
    /// Proved when the solver is there (a failed invariant still refuses the pack); without
    /// it, the pack loads on validation and tests and the skip is logged and shown.
    #[default]
    Optional,
}

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
    /// The permission table (`matrix.toml`) cannot be read or evaluated.
    #[error("permission table of version {version}: {error}")]
    Table {
        version: String,
        #[source]
        error: MatrixError,
    },
    /// Cases that failed (each described), and the tally.
    #[error("policy tests of version {version} failed: {summary}")]
    Failed {
        version: String,
        failures: Vec<String>,
        summary: String,
    },
    /// Invariants that do not hold (each with its counterexample), and the tally.
    #[error("invariants of version {version} fail: {summary}")]
    Invariants {
        version: String,
        failures: Vec<String>,
        summary: String,
    },
    /// The analysis could not run and is required.
    #[error("analysis of version {version} is required and could not run: {error}")]
    Analysis {
        version: String,
        #[source]
        error: AnalysisError,
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
            GateError::Invariants {
                failures, summary, ..
            } => {
                let mut out = failures.clone();
                out.push(format!("invariants: {summary}"));
                out
            }
            other => vec![other.to_string()],
        }
    }

    /// How many problems: each failed case, failed invariant or diagnostic once (`reasons`
    /// adds a tally line to the first two).
    pub fn problems(&self) -> usize {
        match self {
            GateError::Load(LoadError::Invalid(diags)) => diags.len(),
            GateError::Failed { failures, .. } | GateError::Invariants { failures, .. } => {
                failures.len().max(1)
            }
            _ => 1,
        }
    }

    /// The candidate's version, once it loaded.
    pub fn version(&self) -> Option<&str> {
        match self {
            GateError::Load(_) => None,
            GateError::Suites { version, .. }
            | GateError::Table { version, .. }
            | GateError::Failed { version, .. }
            | GateError::Invariants { version, .. }
            | GateError::Analysis { version, .. } => Some(version),
        }
    }
}

/// Loads the pack of `spec`, runs its suites and proves its invariants.
pub fn load(spec: &PackSpec, analysis: Analysis) -> Result<Arc<PolicyPack>, GateError> {
    check(PolicyPack::load(spec)?, analysis)
}

/// Runs a loaded pack's suites, then proves its invariants; the pack passes only if every case
/// passes and every invariant holds (or, optionally, the solver is missing). What the analysis
/// said is kept on the pack (`PolicyPack::analysis`).
pub fn check(pack: Arc<PolicyPack>, analysis: Analysis) -> Result<Arc<PolicyPack>, GateError> {
    let base = table_pack(&pack)?;
    let pack = check_suites(pack, &base)?;
    let version = pack.version.clone();
    let table = matrix::claims(&base).map_err(|error| GateError::Table {
        version: version.clone(),
        error,
    })?;
    let said = match analysis::analyze(&pack, &table) {
        Ok(report) if report.holds() => {
            let summary = report.summary();
            tracing::info!(%version, "invariants proved: {summary}");
            format!("proved: {summary}")
        }
        Ok(report) => {
            return Err(GateError::Invariants {
                version,
                failures: report.failed().iter().filter_map(|f| f.reason()).collect(),
                summary: report.summary(),
            })
        }
        Err(error) if analysis == Analysis::Optional => {
            tracing::warn!(%version, "invariants NOT proved, analysis skipped: {error}");
            format!("skipped: {error}")
        }
        Err(error) => return Err(GateError::Analysis { version, error }),
    };
    let _ = pack.analysis.set(said);
    Ok(pack)
}

/// The pack the permission table describes: the pack without its overlays (what an overlay
/// does is its `overlays_only_restrict` invariant's business).
pub fn table_pack(pack: &Arc<PolicyPack>) -> Result<Arc<PolicyPack>, GateError> {
    if pack.spec.overlays.is_empty() {
        return Ok(pack.clone());
    }
    Ok(PolicyPack::load(&PackSpec::new(&pack.spec.dir, &[]))?)
}

/// Runs a loaded pack's suites and checks its table's rows on `base` (the pack without
/// overlays); the pack passes only if every case and row does.
fn check_suites(pack: Arc<PolicyPack>, base: &PolicyPack) -> Result<Arc<PolicyPack>, GateError> {
    let version = pack.version.clone();
    let report = suite::run_with(pack.clone()).map_err(|error| GateError::Suites {
        version: version.clone(),
        error,
    })?;
    let mut failures: Vec<String> = report.failed().iter().map(|f| f.describe()).collect();
    // The permission table's rows, on its fixture, say what the policies answer.
    failures.extend(matrix::unexpected(base).map_err(|error| GateError::Table {
        version: version.clone(),
        error,
    })?);
    if !failures.is_empty() {
        return Err(GateError::Failed {
            version,
            failures,
            summary: report.summary(),
        });
    }
    Ok(pack)
}
