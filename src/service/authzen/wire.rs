//! AuthZEN 1.0's JSON as it crosses the wire: the request bodies as read (unknown members
//! ignored, as the specification requires; `null` taken as absent) and the response bodies as
//! written. These types stop at this edge.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A subject or a resource.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Entity {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Action {
    pub name: String,
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

/// `POST /access/v1/evaluation`, and one item of `evaluations`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Evaluation {
    #[serde(default)]
    pub subject: Option<Entity>,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub resource: Option<Entity>,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    /// Read on the single `evaluation` only (an item's own options are ignored).
    #[serde(default)]
    pub options: Option<Options>,
}

/// `POST /access/v1/evaluations`: top-level defaults, the items, the options.
#[derive(Debug, Deserialize)]
pub(super) struct Evaluations {
    #[serde(default)]
    pub subject: Option<Entity>,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub resource: Option<Entity>,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    /// Decoded item by item, up to the batch limit ([`super::query::bounded_items`]).
    #[serde(default)]
    pub evaluations: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub options: Option<Options>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Options {
    #[serde(default)]
    pub evaluations_semantic: Option<String>,
    /// Extension: whether each decision carries its reason `context` (the server's
    /// `http_decision_context` when absent).
    #[serde(default)]
    pub include_context: Option<bool>,
    /// Extension: each decision's context carries `reason_admin`, why it came out as it did
    /// (for a deny that nothing permitted, which part of each permit failed). Off by default:
    /// it costs more.
    #[serde(default)]
    pub explain: Option<bool>,
}

/// The three search requests (the action search has no `action`).
#[derive(Debug, Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    pub subject: Option<Entity>,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub resource: Option<Entity>,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub page: Option<PageRequest>,
    #[serde(default)]
    pub options: Option<SearchOptions>,
}

/// Extensions of the action search's `options`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SearchOptions {
    /// Decide each action whose context values the pack declares once per declared value.
    #[serde(default)]
    pub each_declared_context: Option<bool>,
    /// Per action name, the context to decide that action with.
    #[serde(default)]
    pub action_contexts: Option<std::collections::BTreeMap<String, Map<String, Value>>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PageRequest {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
}

/// A decision; `context` carries the reason.
#[derive(Debug, Serialize)]
pub(super) struct Decision {
    pub decision: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

#[derive(Debug, Serialize)]
pub(super) struct EvaluationsResponse {
    pub evaluations: Vec<Decision>,
}

#[derive(Debug, Serialize)]
pub(super) struct PageResponse {
    pub next_token: String,
    pub count: usize,
}

/// A search's answer: `page` first, as the specification recommends.
#[derive(Debug, Serialize)]
pub(super) struct SearchResponse<T> {
    pub page: PageResponse,
    pub context: Value,
    pub results: Vec<T>,
}

#[derive(Debug, Serialize)]
pub(super) struct Found<'a> {
    #[serde(rename = "type")]
    pub ty: &'a str,
    pub id: String,
}

#[derive(Debug, Serialize)]
pub(super) struct FoundAction {
    pub name: String,
    /// Extension: the context it was allowed with, when not the request's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
}

/// An error's body: `{"error": {"status": 400, "field": "subject.type", "message": "…"}}`, the
/// shape the specification gives errors inside `evaluations`.
#[derive(Debug, Serialize)]
pub(super) struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub(super) struct ErrorDetail<'a> {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
    pub message: &'a str,
}
