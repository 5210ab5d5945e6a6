//! The AuthZEN edge: the OpenID AuthZEN Authorization API 1.0 over HTTP/JSON (evaluation,
//! evaluations, the three searches, discovery; and the extension `plan/resource`, [`plan`]). AuthZEN's JSON and HTTP types stop here: a
//! request is read ([`wire`]), its outside names mapped to Cedar by the pack's own
//! declaration (`names.toml`, [`crate::engine::pack::Names`]), and decided on the same
//! decision and listing paths as gRPC calls, counted and logged alike. Errors become HTTP
//! statuses in one place ([`error`]).

mod discovery;
mod error;
mod evaluate;
mod plan;
mod query;
mod search;
mod wire;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State as Shared;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use self::error::HttpError;
use crate::engine::error::RequestError;
use crate::service::bearer::{basic_matches, bearer_matches};
use crate::service::state::State;
use crate::service::telemetry::{CallLog, Telemetry};

/// The endpoints, at the specification's default paths.
pub const EVALUATION: &str = "/access/v1/evaluation";
pub const EVALUATIONS: &str = "/access/v1/evaluations";
pub const SEARCH_SUBJECT: &str = "/access/v1/search/subject";
pub const SEARCH_RESOURCE: &str = "/access/v1/search/resource";
pub const SEARCH_ACTION: &str = "/access/v1/search/action";
pub const WELL_KNOWN: &str = "/.well-known/authzen-configuration";
pub use self::plan::PLAN_RESOURCE;

/// An optional request header: the revision a decision must see (read-your-writes, as gRPC's
/// `min_revision`).
pub const MIN_REVISION_HEADER: &str = "x-min-revision";

/// Who may call: a bearer token, HTTP Basic client credentials (`client_id:client_secret`,
/// OAuth's `client_secret_basic`), either, or neither (anyone).
#[derive(Debug, Default, Clone)]
pub struct Callers {
    pub token: Option<String>,
    pub basic: Option<String>,
}

/// How answers are written.
#[derive(Debug, Clone)]
pub struct Answers {
    /// The base URL discovery names (None: the scheme and the request's `Host`).
    pub public_url: Option<String>,
    /// Whether decisions carry their reason `context` when the request does not say.
    pub decision_context: bool,
    pub tls: bool,
}

/// What the AuthZEN handlers share.
pub struct AuthzenService {
    engine: Arc<State>,
    telemetry: Arc<Telemetry>,
    /// The token callers may send as `Bearer <token>`, if one is configured.
    bearer: Option<Vec<u8>>,
    /// The `client_id:client_secret` callers may send as `Basic`, if configured.
    basic: Option<Vec<u8>>,
    /// The base URL discovery names (None: the scheme and the request's `Host`).
    public_url: Option<String>,
    decision_context: bool,
    tls: bool,
}

impl AuthzenService {
    pub fn new(
        engine: Arc<State>,
        telemetry: Arc<Telemetry>,
        callers: Callers,
        answers: Answers,
    ) -> Self {
        AuthzenService {
            engine,
            telemetry,
            bearer: callers.token.map(String::into_bytes),
            basic: callers.basic.map(String::into_bytes),
            public_url: answers
                .public_url
                .map(|u| u.trim_end_matches('/').to_string()),
            decision_context: answers.decision_context,
            tls: answers.tls,
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        if self.bearer.is_none() && self.basic.is_none() {
            return Ok(());
        }
        // The scheme in any case (RFC 7235); more than one Authorization header is refused.
        let mut given = headers.get_all(header::AUTHORIZATION).iter();
        let ok = match (given.next(), given.next()) {
            (Some(v), None) => {
                let v = v.as_bytes();
                self.bearer.as_ref().is_some_and(|t| bearer_matches(v, t))
                    || self.basic.as_ref().is_some_and(|c| basic_matches(v, c))
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            self.telemetry.refused("http");
            Err(HttpError::Unauthenticated)
        }
    }

    /// Runs one POST call: the caller's token, the content type, the body within the size
    /// limit, the revision it must see, then `f`; its latency and status go to the metrics.
    async fn call(
        &self,
        method: &'static str,
        headers: &HeaderMap,
        body: Body,
        f: impl FnOnce(&Self, &[u8], &mut CallLog<'_>) -> Result<Vec<u8>, HttpError>,
    ) -> Response {
        let started = Instant::now();
        let given = headers.get("x-request-id").and_then(|v| v.to_str().ok());
        let result = async {
            // The body first, even of a caller about to be refused, so that the connection
            // stays usable for its next request.
            let limit = self.engine.limits.max_message_bytes;
            let bytes = read_body(body, limit).await;
            self.authenticate(headers)?;
            let bytes = bytes?;
            json_content_type(headers)?;
            if let Some(min) = min_revision(headers)? {
                self.engine.wait_for_revision(min, None).await?;
            }
            let mut call = CallLog::new(method, given, started);
            f(self, &bytes, &mut call)
        }
        .await;
        let (status, body) = match &result {
            Ok(_) => (StatusCode::OK, None),
            Err(e) => (e.status(), Some(e.body())),
        };
        self.telemetry.finish_http(method, started, status.as_u16());
        let body = match result {
            Ok(b) => b,
            Err(_) => body.unwrap_or_default(),
        };
        let mut response = respond(status, body, headers);
        if status == StatusCode::UNAUTHORIZED {
            // How to authenticate: each way this server takes.
            let h = response.headers_mut();
            if self.bearer.is_some() {
                h.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"blue-authz\""),
                );
            }
            if self.basic.is_some() {
                h.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"blue-authz\""),
                );
            }
        }
        response
    }
}

/// A JSON response echoing the caller's `X-Request-ID`.
fn respond(status: StatusCode, body: Vec<u8>, headers: &HeaderMap) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = headers.get("x-request-id") {
        h.insert("x-request-id", id.clone());
    }
    response
}

fn json_content_type(headers: &HeaderMap) -> Result<(), RequestError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(RequestError::edge(
            "Content-Type",
            format!(
                "is `{}`; AuthZEN requests are application/json",
                crate::engine::error::quote(given)
            ),
        ))
    }
}

fn min_revision(headers: &HeaderMap) -> Result<Option<u64>, RequestError> {
    let Some(v) = headers.get(MIN_REVISION_HEADER) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| RequestError::edge(MIN_REVISION_HEADER, "is not a revision number"))
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, RequestError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_long = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_long {
            RequestError::edge(
                "request",
                format!("the body exceeds the limit of {limit} bytes"),
            )
        } else {
            RequestError::edge("request", format!("cannot read the body: {e}"))
        }
    })
}

type Svc = Shared<Arc<AuthzenService>>;

async fn evaluation(Shared(s): Svc, headers: HeaderMap, body: Body) -> Response {
    s.call(
        "authzen.evaluation",
        &headers,
        body,
        AuthzenService::evaluation,
    )
    .await
}

async fn evaluations(Shared(s): Svc, headers: HeaderMap, body: Body) -> Response {
    s.call(
        "authzen.evaluations",
        &headers,
        body,
        AuthzenService::evaluations,
    )
    .await
}

async fn plan_resource(Shared(s): Svc, headers: HeaderMap, body: Body) -> Response {
    s.call("authzen.plan.resource", &headers, body, |s, b, _| {
        s.plan_resource(b)
    })
    .await
}

async fn search_subject(Shared(s): Svc, headers: HeaderMap, body: Body) -> Response {
    s.call("authzen.search.subject", &headers, body, |s, b, _| {
        s.search_entities(b, search::Listed::Principals)
    })
    .await
}

async fn search_resource(Shared(s): Svc, headers: HeaderMap, body: Body) -> Response {
    s.call("authzen.search.resource", &headers, body, |s, b, _| {
        s.search_entities(b, search::Listed::Resources)
    })
    .await
}

async fn search_action(Shared(s): Svc, headers: HeaderMap, body: Body) -> Response {
    s.call(
        "authzen.search.action",
        &headers,
        body,
        AuthzenService::search_actions,
    )
    .await
}

async fn not_found(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let e = RequestError::edge(
        "path",
        format!(
            "`{}` is not an endpoint of this server (see {WELL_KNOWN})",
            crate::engine::error::quote(uri.path())
        ),
    );
    respond(
        StatusCode::NOT_FOUND,
        HttpError::NotFound(e).body(),
        &headers,
    )
}

/// How much of a refused request's body is read, so that a pooled keep-alive connection is
/// left ready for the next request; a larger (or broken) body closes the connection, and the
/// response says so with `Connection: close`.
const DRAIN_LIMIT: usize = 1 << 20;

async fn method_not_allowed(
    method: axum::http::Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    let drained = axum::body::to_bytes(body, DRAIN_LIMIT).await.is_ok();
    let allowed = if uri.path() == WELL_KNOWN {
        "GET"
    } else {
        "POST"
    };
    let e = RequestError::edge(
        "method",
        format!(
            "{method} is not a method of `{}` (it takes {allowed})",
            crate::engine::error::quote(uri.path())
        ),
    );
    let mut response = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        HttpError::MethodNotAllowed(e).body(),
        &headers,
    );
    let h = response.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(allowed));
    if !drained {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The AuthZEN routes.
pub fn router(service: Arc<AuthzenService>) -> Router {
    Router::new()
        .route(EVALUATION, post(evaluation))
        .route(EVALUATIONS, post(evaluations))
        .route(SEARCH_SUBJECT, post(search_subject))
        .route(SEARCH_RESOURCE, post(search_resource))
        .route(SEARCH_ACTION, post(search_action))
        .route(PLAN_RESOURCE, post(plan_resource))
        .route(WELL_KNOWN, get(discovery::configuration))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(service)
}
