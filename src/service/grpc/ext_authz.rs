//! Envoy's external authorization service (`envoy.service.auth.v3.Authorization/Check`), on the
//! decision listeners: a mesh sidecar asks it before forwarding each HTTP request. The pack's
//! `routes.toml` maps the request to a Cedar request (no route in Rust); the answer is Envoy's:
//! OK with headers the upstream can read (`x-authz-policy-version`, `x-authz-revision`,
//! `x-authz-policies`), or a denial: 403 with a small JSON body (the decision and, unless the
//! operator turned them off, the determining policies), 401 when the request carries no
//! principal, 400 for a value the schema refuses. A request no route matches is denied (fail
//! closed) and logged with the reason. `x-min-revision` waits for that revision, as
//! `min_revision` does. Envoy's proto types stop here.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::engine::pack::Mapped;
use crate::engine::request::{DecisionRequest, UidRef};
use crate::service::state::State;
use crate::service::telemetry::Telemetry;

/// The name Envoy calls the service by (health and reflection list it).
pub const EXT_AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Encoded descriptor set of Envoy's ext_authz protos (compiled by `build.rs` from
/// `proto/vendor`), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("envoy_ext_authz_descriptor");

/// The request header that asks for a revision (read-your-writes through the gateway).
pub const MIN_REVISION_HEADER: &str = "x-min-revision";

/// How long a check waits for `x-min-revision` at most.
const MAX_REVISION_WAIT: Duration = Duration::from_secs(5);

pub struct ExtAuthzService {
    engine: Arc<State>,
    telemetry: Arc<Telemetry>,
    /// Whether a denial's body names the determining policies.
    show_policies: bool,
}

impl ExtAuthzService {
    pub fn new(engine: Arc<State>, telemetry: Arc<Telemetry>, show_policies: bool) -> Self {
        ExtAuthzService {
            engine,
            telemetry,
            show_policies,
        }
    }
}

/// The gRPC status of a check's answer (Envoy reads only its code).
fn status(code: tonic::Code, message: &str) -> envoy_types::pb::google::rpc::Status {
    envoy_types::pb::google::rpc::Status {
        code: code as i32,
        message: message.to_string(),
        details: Vec::new(),
    }
}

fn denied(code: HttpStatusCode, grpc: tonic::Code, message: &str, body: String) -> CheckResponse {
    let mut http = DeniedHttpResponseBuilder::new();
    http.set_http_status(code)
        .add_header("content-type", "application/json", None, false)
        .set_body(body);
    let mut out = CheckResponse {
        status: Some(status(grpc, message)),
        ..Default::default()
    };
    out.set_http_response(http);
    out
}

/// Logs what a check did: at info level when an operator should hear of it (no route, no
/// principal, a refused value), else at debug level, the text built only if it is written.
fn note(notable: bool, text: &dyn Fn() -> String) {
    const TARGET: &str = "blue_authz::ext_authz";
    if notable {
        tracing::info!(target: TARGET, "{}", text());
    } else if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        tracing::debug!(target: TARGET, "{}", text());
    }
}

fn deny(code: HttpStatusCode, grpc: tonic::Code, reason: Option<&str>) -> CheckResponse {
    let body = match reason {
        Some(r) => json!({"decision": "deny", "reason": r}),
        None => json!({"decision": "deny"}),
    };
    denied(code, grpc, reason.unwrap_or("denied"), body.to_string())
}

/// The check's answer (logged by [`note`]).
fn decide(service: &ExtAuthzService, req: &CheckRequest) -> CheckResponse {
    let http = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let Some(http) = http else {
        note(true, &|| "a check without HTTP request attributes".into());
        return deny(
            HttpStatusCode::BadRequest,
            tonic::Code::InvalidArgument,
            Some("no HTTP request in the check"),
        );
    };
    let Some(live) = service.engine.live() else {
        note(true, &|| "denied: not serving yet".into());
        return deny(HttpStatusCode::Forbidden, tonic::Code::Unavailable, None);
    };
    let view = live.view();
    let pack = &live.pack;
    let Some(routes) = &pack.routes else {
        note(true, &|| {
            "denied: the policy pack has no routes.toml".into()
        });
        return deny(
            HttpStatusCode::Forbidden,
            tonic::Code::PermissionDenied,
            None,
        );
    };
    let headers = &http.headers;
    let header = |name: &str| headers.get(name).cloned();
    let claims = req
        .attributes
        .as_ref()
        .and_then(|a| a.metadata_context.as_ref())
        .and_then(|m| m.filter_metadata.get("envoy.filters.http.jwt_authn"))
        .map(struct_json)
        .and_then(|v| match v {
            serde_json::Value::Object(m) => {
                // jwt_authn's payload_in_metadata names a key holding the payload.
                let inner = m.values().find_map(|x| x.as_object().cloned());
                Some(inner.unwrap_or(m))
            }
            _ => None,
        });
    let (method, path) = (http.method.as_str(), http.path.as_str());
    let (route, principal, action, resource_type, resource_id, context) =
        match routes.map(method, path, &header, claims.as_ref()) {
            Mapped::Public => {
                note(false, &|| format!("{method} {path}: public route"));
                return CheckResponse {
                    status: Some(status(tonic::Code::Ok, "public")),
                    ..Default::default()
                };
            }
            Mapped::NoRoute => {
                note(true, &|| {
                    format!("{method} {path}: denied, no route of routes.toml matches")
                });
                return deny(
                    HttpStatusCode::Forbidden,
                    tonic::Code::PermissionDenied,
                    Some("no route"),
                );
            }
            Mapped::Invalid(why) => {
                note(true, &|| format!("{method} {path}: refused: {why}"));
                return deny(
                    HttpStatusCode::BadRequest,
                    tonic::Code::InvalidArgument,
                    Some(&why),
                );
            }
            Mapped::Decide {
                route,
                principal,
                action,
                resource_type,
                resource_id,
                context,
            } => (
                route,
                principal,
                action,
                resource_type,
                resource_id,
                context,
            ),
        };
    let Some(principal) = principal else {
        note(true, &|| format!("{method} {path} ({route}): no principal"));
        return deny(
            HttpStatusCode::Unauthorized,
            tonic::Code::Unauthenticated,
            Some("no principal"),
        );
    };
    let decided = view.is_authorized(&DecisionRequest {
        principal: UidRef {
            ty: &routes.principal_type,
            id: &principal,
        },
        action: UidRef { ty: "", id: action },
        resource: UidRef {
            ty: resource_type,
            id: &resource_id,
        },
        context: (!context.is_empty()).then_some(&context),
        entities: &[],
    });
    let said = |d: &str, by: &[String]| {
        format!(
            "{method} {path} ({route}): {principal} {action} {resource_type}::{resource_id}: \
             {d} {}",
            by.join(",")
        )
    };
    match decided {
        Err(e) => {
            note(true, &|| format!("{method} {path} ({route}): refused: {e}"));
            let reason = e.to_string();
            deny(
                HttpStatusCode::BadRequest,
                tonic::Code::InvalidArgument,
                Some(&reason),
            )
        }
        Ok(d) if d.allow => {
            note(false, &|| said("ALLOW by", &d.determining));
            let mut ok = OkHttpResponseBuilder::new();
            ok.add_header("x-authz-policy-version", pack.version.clone(), None, false)
                .add_header(
                    "x-authz-revision",
                    view.store.revision().to_string(),
                    None,
                    false,
                )
                .add_header("x-authz-policies", d.determining.join(","), None, false);
            let mut out = CheckResponse {
                status: Some(status(tonic::Code::Ok, "allowed")),
                ..Default::default()
            };
            out.set_http_response(ok);
            out
        }
        Ok(d) => {
            note(false, &|| said("DENY", &d.determining));
            // Policy ids are plain names, but written as JSON strings all the same.
            let body = if service.show_policies {
                let ids = serde_json::to_string(&d.determining).unwrap_or_else(|_| "[]".into());
                format!(r#"{{"decision":"deny","policies":{ids}}}"#)
            } else {
                r#"{"decision":"deny"}"#.to_string()
            };
            denied(
                HttpStatusCode::Forbidden,
                tonic::Code::PermissionDenied,
                "denied",
                body,
            )
        }
    }
}

/// A protobuf `Struct` as JSON.
fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
        match &v.kind {
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::StructValue(s)) => struct_json(s),
            Some(Kind::ListValue(l)) => {
                serde_json::Value::Array(l.values.iter().map(value).collect())
            }
            Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        }
    }
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = std::time::Instant::now();
        let req = request.into_inner();
        let min = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get(MIN_REVISION_HEADER))
            .map(|v| v.trim().parse::<u64>());
        match min {
            Some(Err(_)) => {
                tracing::info!(target: "blue_authz::ext_authz", "refused: {MIN_REVISION_HEADER} is not a revision number");
                return Ok(Response::new(deny(
                    HttpStatusCode::BadRequest,
                    tonic::Code::InvalidArgument,
                    Some("x-min-revision is not a revision number"),
                )));
            }
            Some(Ok(n)) if n > 0 => {
                if let Err(e) = self
                    .engine
                    .wait_for_revision(n, Some(MAX_REVISION_WAIT))
                    .await
                {
                    tracing::info!(target: "blue_authz::ext_authz", "denied: {e}");
                    return Ok(Response::new(deny(
                        HttpStatusCode::Forbidden,
                        tonic::Code::FailedPrecondition,
                        Some(&e.to_string()),
                    )));
                }
            }
            _ => {}
        }
        let out = decide(self, &req);
        let code = out.status.as_ref().map_or(0, |s| s.code);
        self.telemetry.finish(
            "ext_authz.Check",
            started,
            (code != 0).then_some(tonic::Code::PermissionDenied),
        );
        Ok(Response::new(out))
    }
}
