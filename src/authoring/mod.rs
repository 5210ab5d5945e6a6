//! Policy authoring: the data-driven test suites in `policies/tests/` ([`suite`]), the
//! effective permission table computed from the policies ([`matrix`]), and the impact of an
//! edit on the data a store holds ([`impact`]). All decide through the engine's own decision
//! path.

pub mod impact;
pub mod matrix;
pub mod suite;
