//! Proofs about a policy pack for every entity store and request its schema allows, with
//! Cedar's symbolic compiler (cedar-policy-symcc) and the cvc5 solver: the pack's declared
//! invariants (`invariants.toml`), "no policy ever errors", and the semantic difference between
//! two packs. A property that fails comes with a concrete counterexample (a request and its
//! entities, as Cedar JSON that `check` takes). Generic Cedar: nothing here knows any pack.

mod counterexample;
mod diff;
mod memo;
mod prove;
mod run;
mod solver;
mod words;

pub use counterexample::Counterexample;
pub use diff::{diff, ActionChange, Change, Data, DiffReport};
pub use memo::PROOF_CACHE_ENV;
pub use prove::{analyze, Finding, Report};
pub use solver::{solver_path, SOLVER_ENV};

/// Why an analysis could not run to its end (a property that fails is a finding, not this).
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("the SMT solver cvc5 is not available: {0} (install it with `apt-get install cvc5`, or set {SOLVER_ENV} to its path)")]
    NoSolver(String),
    #[error("the symbolic compiler failed on {what}: {message}")]
    Symcc { what: String, message: String },
    #[error("cannot load overlay `{name}` for analysis: {message}")]
    Overlay { name: String, message: String },
    #[error("cannot write the counterexample of {what} as Cedar JSON: {message}")]
    Counterexample { what: String, message: String },
}
