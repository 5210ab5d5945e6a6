//! blue-authz: a generic Cedar decision engine behind a gRPC API.
//!
//! The engine knows nothing of Blue: every rule lives in `policies/`. The modules, by path:
//! - policy-loading path: [`policy`] (files, overlays, strict validation, index by action),
//!   [`suite`] (data-driven policy tests), [`matrix`] (the effective permission table);
//! - data path: [`store`] (entities with ancestors precomputed, per-request slices);
//! - decision path: [`decide`] (plain Rust request in, decision with explanation out), [`plan`]
//!   (conditions of a common Cedar subset evaluated straight over the index, Cedar otherwise);
//! - transport: [`grpc`] (proto types stop there) and [`server`].

pub mod config;
pub mod decide;
pub mod engine;
pub mod error;
pub mod gen;
pub mod grpc;
pub mod loadgen;
pub mod matrix;
pub mod plan;
pub mod policy;
pub mod reload;
pub mod server;
pub mod storage;
pub mod store;
pub mod suite;
pub mod telemetry;
pub mod workload;
