//! What a running server is: the state every call shares ([`state`]), start-up ([`startup`])
//! and the server's life ([`server`]), the gate every pack passes before it serves ([`gate`]), hot
//! reload ([`reload`]), the gRPC edge ([`grpc`]: proto
//! types stop there), listeners ([`listeners`]), settings as given ([`settings`]) and as
//! resolved ([`config`]), errors ([`error`]) and telemetry ([`telemetry`]); and the data commands
//! that run without a server ([`offline`]), since storage is this room's alone.

pub mod authzen;
mod bearer;
pub mod config;
pub mod console;
pub mod error;
mod explain_json;
pub mod gate;
pub mod grpc;
mod import_file;
mod inflight;
pub mod listeners;
pub mod live_config;
pub mod offline;
pub mod preview;
mod process_metrics;
pub mod reload;
pub mod replica;
pub mod server;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod write;
