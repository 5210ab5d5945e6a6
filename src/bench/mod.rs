//! Benchmark tooling: a deterministic generator of realistic data in Blue's entity conventions
//! ([`gen`]), request mixes over it ([`workload`]), and the gRPC load tool behind
//! `blue-authz bench` ([`loadgen`]), the listing benchmark ([`listing`]), the plan benchmark
//! ([`plans`]), and a progress line for
//! a terminal ([`progress`]). Test data only: the engine's decisions do not depend on it.

pub mod fleet;
pub mod gen;
pub mod listing;
pub mod loadgen;
pub mod plans;
pub mod progress;
pub mod workload;
