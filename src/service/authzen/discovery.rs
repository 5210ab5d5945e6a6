//! `GET /.well-known/authzen-configuration`: the PDP's identifier and the endpoints this
//! server offers (all five). The identifier is the configured public URL, else the scheme
//! and the `Host` the caller reached. Discovery needs no caller token: it names URLs only.

use std::sync::Arc;

use axum::extract::State as Shared;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::json;

use super::{respond, AuthzenService};
use super::{EVALUATION, EVALUATIONS, SEARCH_ACTION, SEARCH_RESOURCE, SEARCH_SUBJECT};

pub(super) async fn configuration(
    Shared(s): Shared<Arc<AuthzenService>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let base = match &s.public_url {
        Some(url) => url.clone(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .or_else(|| uri.authority().map(|a| a.to_string()))
                .unwrap_or_else(|| "localhost".into());
            let scheme = if s.tls { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    };
    let body = json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{EVALUATION}"),
        "access_evaluations_endpoint": format!("{base}{EVALUATIONS}"),
        "search_subject_endpoint": format!("{base}{SEARCH_SUBJECT}"),
        "search_resource_endpoint": format!("{base}{SEARCH_RESOURCE}"),
        "search_action_endpoint": format!("{base}{SEARCH_ACTION}"),
    });
    let mut r = respond(StatusCode::OK, body.to_string().into_bytes(), &headers);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("max-age=300"),
    );
    r
}
