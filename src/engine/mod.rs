//! The engine: generic Cedar, knowing nothing of Blue, of gRPC or of any database. A policy pack
//! is loaded, named by `@id`, validated strictly and indexed by action ([`pack`]); each action's
//! policies are compiled once ([`compiled`]) and, where they are in a common Cedar subset, into
//! a plan evaluated straight over the entity index ([`plan`]); requests are checked against the
//! schema ([`request`]) and decided with the determining policies ([`decide`]) over the
//! in-memory entity index ([`index`]); [`explain`] says why, and for a deny that nothing
//! permitted, which part of each permit failed. Listing ([`list`]) enumerates the principals or resources a request
//! allows, with candidates found by [`narrow`] from the plans and checked on the decision path.
//!
//! Callers enter through [`view`]: one [`view::View`] of a pack, an index and the limits per
//! call, with `check`, `decide`, `explain`, `list` and `list_actions`.
//!
//! Leaf modules shared by those: [`error`] (typed errors), [`json`] (entity references in
//! Cedar JSON), [`schema`] (the schema as the index sees it), [`entity_types`] (its type
//! descriptions, built once for Cedar's entity parser), [`needs`] (what slices must
//! carry), [`facts`] (what plans read of entity data, implemented by the index), [`pace`]
//! (long work that gives way to decisions).
//!
//! Nothing here imports tonic, prost, tokio, redb or any other transport or storage crate
//! (`tests/architecture.rs` checks it).

pub mod assume;
pub mod compiled;
pub mod decide;
pub mod entity_types;
pub mod error;
pub mod explain;
pub mod facts;
pub mod index;
pub mod json;
pub mod list;
pub mod narrow;
pub mod needs;
pub mod pace;
pub mod pack;
pub mod plan;
pub mod planner;
pub mod request;
pub mod schema;
pub mod view;

pub use view::View;
