//! blue-authz: a generic Cedar decision engine behind a gRPC API.
//!
//! The engine knows nothing of Blue: every rule lives in `policies/`. The rooms, from the
//! bottom up (ARCHITECTURE.md walks them):
//! - [`engine`]: generic Cedar: the policy pack, compiled plans, request checks, decisions and
//!   explanations, and the in-memory entity index ([`engine::index`]);
//! - [`storage`]: durable backends behind one trait (redb, embedded);
//! - [`authoring`]: what policy authors run: test suites and the effective permission table;
//! - [`analysis`]: proofs for all data (invariants, semantic diffs) with Cedar's symbolic
//!   compiler and the cvc5 solver;
//! - [`service`]: a running server: shared state, start-up, hot reload, the gRPC edge (proto
//!   types stop there), listeners, settings, telemetry;
//! - [`bench`]: benchmark data, request mixes and the load tool;
//! - [`cli`]: one file per command of the binary.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod authoring;
pub mod bench;
pub mod cli;
pub mod engine;
pub mod files;
pub mod service;
pub mod storage;
