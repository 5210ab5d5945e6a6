//! Policy authoring: the data-driven test suites in `policies/tests/` ([`suite`]) and the
//! effective permission table computed from the policies ([`matrix`]). Both decide through the
//! engine's own decision path.

pub mod matrix;
pub mod suite;
