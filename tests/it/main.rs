//! The integration tests: one crate (linked once), one module per area, each against real
//! parts: the real binary and real sockets (servers on 127.0.0.1:0), a real PostgreSQL for the
//! shared source, real files for policies, cvc5 for the proofs. [`common`] holds the shared
//! helpers and the one harness that starts the binary ([`common::server`]).

mod common;

mod analysis;
mod architecture;
mod atomic_batches;
mod author_path;
mod authzen;
mod authzen_interop;
mod authzen_requests;
mod console;
mod data;
mod deploy;
mod differential;
mod envoy;
mod explain;
mod fleet;
mod fleet_writes;
mod fuzz;
mod grpc;
mod hardening;
mod impact;
mod listing;
mod oracle;
mod outage;
mod plans;
mod plans_sql;
mod policy_pack;
mod reload;
mod request_bounds;
mod settings;
mod startup;
mod tls_metrics;
mod unix;
