//! The console's JSON calls. Each reads the live pack and store through the engine's front
//! door; the slow ones (the matrix, a draft) run on a blocking thread. A refusal is a JSON
//! `{"error": ...}` with a 4xx status naming what was wrong.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::Console;
use crate::authoring::matrix;
use crate::engine::pack::{overlay_names, PackSpec, PolicyPack};
use crate::engine::request::{self, DecisionRequest, UidRef};
use crate::service::bearer::form_urldecode;
use crate::service::explain_json;
use crate::service::preview::{self, Draft, Preview, PreviewError};

/// Ids a search answers at most.
const SEARCH_LIMIT: usize = 20;
/// Pairs shown per action and direction in a draft's impact.
const IMPACT_SAMPLE: usize = 20;

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    reply(status, &json!({"error": message}))
}

fn reply(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let d = |s: &str| String::from_utf8_lossy(&form_urldecode(s.as_bytes())).into_owned();
            (d(k), d(v))
        })
        .collect()
}

type Answer = Result<Value, (StatusCode, String)>;

fn bad(message: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message.into())
}

fn unavailable() -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "no policy set is live yet".to_string(),
    )
}

pub(super) async fn call(console: Arc<Console>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().trim_start_matches("/console/api/").to_string();
    let q = query(&uri);
    let answer = tokio::task::spawn_blocking(move || match (method, path.as_str()) {
        (Method::GET, "meta") => meta(&console),
        (Method::GET, "matrix") => grid(&console, q.get("overlays").map(String::as_str)),
        (Method::GET, "policy") => policy(&console, q.get("id").map(String::as_str)),
        (Method::GET, "search") => search(&console, &q),
        (Method::POST, "explain") => explain(&console, &body),
        (Method::POST, "draft") => draft(&console, &body),
        (m, p) => Err((
            StatusCode::NOT_FOUND,
            format!("no call `{m} /console/api/{p}`"),
        )),
    })
    .await;
    match answer {
        Ok(Ok(v)) => reply(StatusCode::OK, &v),
        Ok(Err((status, message))) => error(status, &message),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

fn live(console: &Console) -> Result<Arc<PolicyPack>, (StatusCode, String)> {
    console.engine.pack().ok_or_else(unavailable)
}

/// The live pack's types, actions, overlays and version.
fn meta(console: &Console) -> Answer {
    let pack = live(console)?;
    let mut ids = pack.action_ids();
    ids.sort();
    let sorted = |types: &std::collections::HashSet<cedar_policy::EntityTypeName>| {
        let mut v: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        v.sort();
        v
    };
    let actions: Vec<Value> = ids
        .iter()
        .filter_map(|id| {
            let e = pack.action_by_id(id)?;
            Some(json!({
                "id": id,
                "principal_types": sorted(&e.principal_types),
                "resource_types": sorted(&e.resource_types),
            }))
        })
        .collect();
    let mut types = pack.entity_type_names();
    types.sort();
    Ok(json!({
        "version": pack.version,
        "types": types,
        "actions": actions,
        "overlays": overlay_names(&pack.spec.dir).unwrap_or_default(),
        "live_overlays": pack.spec.overlays,
        "revision": console.engine.revision(),
    }))
}

/// The permission matrix of the live pack's files with the given overlays.
fn grid(console: &Console, overlays: Option<&str>) -> Answer {
    let pack = live(console)?;
    let overlays: Vec<String> = match overlays {
        Some(o) => o
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => pack.spec.overlays.clone(),
    };
    let offered = overlay_names(&pack.spec.dir).map_err(|e| bad(e.to_string()))?;
    if let Some(o) = overlays.iter().find(|o| !offered.contains(o)) {
        return Err(bad(format!(
            "overlays: `{o}` is not an overlay of the pack"
        )));
    }
    let with = PolicyPack::load(&PackSpec::new(&pack.spec.dir, &overlays))
        .map_err(|e| bad(format!("the pack with overlays {overlays:?}: {e}")))?;
    let tables = matrix::grid(&with).map_err(|e| bad(e.to_string()))?;
    Ok(json!({"overlays": overlays, "version": with.version, "tables": tables}))
}

/// One policy's text and file.
fn policy(console: &Console, id: Option<&str>) -> Answer {
    let pack = live(console)?;
    let id = id.ok_or_else(|| bad("id: is required"))?;
    let found = pack
        .policies
        .policy(&cedar_policy::PolicyId::new(id))
        .ok_or_else(|| bad(format!("id: no live policy `{id}`")))?;
    let file = pack
        .origin
        .get(id)
        .map(|f| {
            f.strip_prefix(&pack.spec.dir)
                .unwrap_or(f)
                .display()
                .to_string()
        })
        .unwrap_or_default();
    Ok(json!({"id": id, "file": file, "text": found.to_string()}))
}

/// Ids of a type in the live store that contain `q`.
fn search(console: &Console, q: &BTreeMap<String, String>) -> Answer {
    let pack = live(console)?;
    let ty = q.get("type").map(String::as_str).unwrap_or("");
    let t = pack
        .entity_type(ty)
        .ok_or_else(|| bad(format!("type: unknown entity type `{ty}`")))?;
    let needle = q.get("q").map(String::as_str).unwrap_or("");
    let live = console.engine.live().ok_or_else(unavailable)?;
    let ids: Vec<String> = live
        .view()
        .store
        .ids_of_type(t)
        .into_iter()
        .filter(|id| id.contains(needle))
        .take(SEARCH_LIMIT)
        .collect();
    Ok(json!({"type": ty, "ids": ids}))
}

fn uid_of<'a>(v: &'a Value, field: &str) -> Result<UidRef<'a>, (StatusCode, String)> {
    let part = |p: &str| {
        v.get(p)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{field}.{p}: is required (a string)")))
    };
    Ok(UidRef {
        ty: part("type")?,
        id: part("id")?,
    })
}

/// `{"principal": {type, id}, "action": id, "resource": {type, id}, "context": {...}}`: the
/// decision, its explanation, and the text of every policy it names.
fn explain(console: &Console, body: &[u8]) -> Answer {
    let req: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let principal = uid_of(&req["principal"], "principal")?;
    let resource = uid_of(&req["resource"], "resource")?;
    let action = req["action"]
        .as_str()
        .ok_or_else(|| bad("action: is required (an action id)"))?;
    let context = match &req["context"] {
        Value::Null => None,
        Value::Object(m) => Some(m),
        _ => return Err(bad("context: must be a JSON object")),
    };
    let live = console.engine.live().ok_or_else(unavailable)?;
    let view = live.view();
    let checked = view
        .check(&DecisionRequest {
            principal,
            action: request::action_id(action),
            resource,
            context,
            entities: &[],
        })
        .map_err(|e| bad(e.to_string()))?;
    let e = view.explain(&checked);
    let mut named: Vec<String> = e.decision.determining.clone();
    named.extend(e.permits.iter().map(|u| u.policy.clone()));
    let policies: Vec<Value> = named
        .iter()
        .filter_map(|id| policy(console, Some(id)).ok())
        .collect();
    Ok(json!({
        "decision": if e.decision.allow { "ALLOW" } else { "DENY" },
        "errors": e.decision.errors,
        "explanation": explain_json::explanation(&e),
        "policies": policies,
        "revision": view.store.revision(),
        "policy_version": live.pack.version,
    }))
}

/// `{"file": "project.cedar", "text": "..."}`: the live pack with that file replaced (or
/// added), or `{"dir": "/abs/path"}`: a whole candidate pack directory on the server's
/// machine; previewed (`service::preview`). Nothing is written to the pack.
fn draft(console: &Console, body: &[u8]) -> Answer {
    let req: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let files: BTreeMap<String, String>;
    let draft = match req.get("dir") {
        Some(dir) => Draft::Dir(dir.as_str().ok_or_else(|| bad("dir: must be a string"))?),
        None => {
            let file = req["file"]
                .as_str()
                .ok_or_else(|| bad("file: is required (a file name in the pack)"))?;
            let text = req["text"]
                .as_str()
                .ok_or_else(|| bad("text: is required (the file's new text)"))?;
            files = BTreeMap::from([(file.to_string(), text.to_string())]);
            Draft::Files(&files)
        }
    };
    let checked = match preview::preview(&console.engine, console.analysis, draft) {
        Ok(Preview::Checked(c)) => c,
        Ok(Preview::Invalid(problems)) => {
            let errors: Vec<Value> = problems
                .iter()
                .map(|p| {
                    json!({"file": p.file, "line": p.line, "col": p.col,
                           "message": p.message, "help": p.help})
                })
                .collect();
            return Ok(json!({"valid": false, "errors": errors}));
        }
        Err(PreviewError::Bad { field, message }) => {
            return Err(bad(format!("{field}: {message}")))
        }
        Err(PreviewError::NotReady) => return Err(unavailable()),
        Err(PreviewError::Scratch(_)) => return Err(internal()),
    };
    let diff = match &checked.diff {
        Ok((lines, changed)) => json!({"lines": lines, "changed": changed}),
        Err(skipped) => json!({"lines": [], "skipped": skipped}),
    };
    let impact = match &checked.impact {
        Ok(i) => {
            let mut v = i.to_json(IMPACT_SAMPLE);
            v["complete"] = json!(!i.truncated);
            v
        }
        Err(e) => json!({"error": e}),
    };
    Ok(json!({
        "valid": true,
        "version": checked.version,
        "suites": {"summary": checked.suites.0, "failed": checked.suites.1},
        "gate": {"accepted": checked.accepted, "analysis": checked.analysis, "reasons": checked.reasons},
        "diff": diff,
        "impact": impact,
    }))
}

fn internal() -> (StatusCode, String) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error".to_string(),
    )
}
