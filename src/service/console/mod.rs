//! The policy author's console: one page served by the binary (`serve --console-listen`),
//! behind the data token, and the JSON calls it makes: the permission matrix with overlays
//! switchable, a decision explained, and a draft's validation, suites, invariants, semantic
//! diff and impact on the live store. Nothing goes live from here: the pack's files and the
//! gate remain the only way in.

mod api;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State as Shared;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest, Sha256};

use super::bearer::{bearer_matches, constant_time_eq, form_urldecode};
use super::gate::Analysis;
use super::state::State;

/// The page, shipped inside the binary.
const PAGE: &str = include_str!("page.html");
/// The cookie a login sets.
const COOKIE: &str = "blue_authz_console";
/// The largest request body the console reads (a draft policy file).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the console serves from.
pub struct Console {
    pub(crate) engine: Arc<State>,
    pub(crate) analysis: Analysis,
    token: String,
    /// What the login cookie holds: the token's SHA-256, so the token itself never sits in a
    /// cookie.
    cookie: String,
}

impl Console {
    pub fn new(engine: Arc<State>, analysis: Analysis, token: String) -> Arc<Self> {
        let cookie = hex(&Sha256::digest(token.as_bytes()));
        Arc::new(Console {
            engine,
            analysis,
            token,
            cookie,
        })
    }

    /// The bearer token, or the login cookie.
    fn allowed(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| bearer_matches(v.as_bytes(), self.token.as_bytes()));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|c| constant_time_eq(c.as_bytes(), self.cookie.as_bytes()));
        bearer || cookie
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The console's routes: everything under `/console`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new().fallback(handle).with_state(console)
}

async fn handle(
    Shared(console): Shared<Arc<Console>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path();
    if method == Method::POST && path == "/console/login" {
        return login(&console, body).await;
    }
    if !console.allowed(&headers) {
        if method == Method::GET && (path == "/console" || path == "/console/") {
            return html(StatusCode::UNAUTHORIZED, &login_page(None));
        }
        return api::error(
            StatusCode::UNAUTHORIZED,
            "the console needs the data token: log in at /console, or send Authorization: Bearer <token>",
        );
    }
    match (&method, path) {
        (&Method::GET, "/console" | "/console/") => html(StatusCode::OK, PAGE),
        (_, p) if p.starts_with("/console/api/") => {
            let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
                Ok(b) => b,
                Err(_) => {
                    return api::error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!(
                        "the request is larger than the console's limit of {MAX_BODY_BYTES} bytes"
                    ),
                    )
                }
            };
            api::call(console, method, uri, body).await
        }
        _ => api::error(StatusCode::NOT_FOUND, &format!("no page at `{path}`")),
    }
}

/// `POST /console/login` with `token=<token>`: the cookie, and back to the page.
async fn login(console: &Console, body: Body) -> Response {
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return html(
            StatusCode::BAD_REQUEST,
            &login_page(Some("the form is too large")),
        );
    };
    let token = body
        .split(|b| *b == b'&')
        .find_map(|kv| kv.strip_prefix(b"token="))
        .map(form_urldecode)
        .unwrap_or_default();
    if !constant_time_eq(&token, console.token.as_bytes()) {
        return html(StatusCode::UNAUTHORIZED, &login_page(Some("wrong token")));
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/console"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/console",
        console.cookie
    )) {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

fn login_page(problem: Option<&str>) -> String {
    let problem = problem
        .map(|p| format!("<p id=\"problem\" class=\"bad\">{p}</p>"))
        .unwrap_or_default();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>blue-authz console: log in</title></head>\
         <body style=\"font-family: sans-serif; margin: 3em\"><h1>blue-authz console</h1>{problem}\
         <form method=\"post\" action=\"/console/login\"><label>Data token \
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\"></label> \
         <button id=\"login\" type=\"submit\">Log in</button></form></body></html>"
    )
}

fn html(status: StatusCode, text: &str) -> Response {
    let mut r = (status, text.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
