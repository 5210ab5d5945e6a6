//! The gRPC edge. Proto types stop here: requests are turned into the decision and data paths'
//! plain Rust types, and [`ServiceError`] becomes a `Status` in exactly one place
//! (`impl From<ServiceError> for Status`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::decide::{self, ActionOutcome, Decision, RawRequest, UidRef};
use crate::engine::{Engine, EngineError};
use crate::error::RequestError;
use crate::reload::Reloader;
use crate::store::{json_uid, WriteOp};
use crate::telemetry::{Logged, Telemetry};

/// Generated code for `blue.authz.v1`.
pub mod pb {
    tonic::include_proto!("blue.authz.v1");

    /// Encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("blue_authz_descriptor");
}

use pb::authorizer_server::Authorizer;
use pb::entity_store_server::EntityStore as EntityStoreRpc;

/// What can go wrong in a call, before it becomes a `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("missing or invalid bearer token")]
    Unauthenticated,
}

impl From<RequestError> for ServiceError {
    fn from(e: RequestError) -> Self {
        ServiceError::Engine(EngineError::Invalid(e))
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::Unauthenticated => Status::unauthenticated(e.to_string()),
            ServiceError::Engine(e) => match e {
                EngineError::Invalid(e) => Status::invalid_argument(e.to_string()),
                EngineError::NotReady => Status::unavailable(e.to_string()),
                EngineError::RevisionNotReached { .. } => {
                    Status::failed_precondition(e.to_string())
                }
                EngineError::Storage(_) | EngineError::Data(_) => {
                    tracing::error!(error = %e, "internal error");
                    Status::internal("internal error")
                }
            },
        }
    }
}

/// The call's deadline, from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
fn deadline(metadata: &MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn uid<'a>(v: &'a Option<pb::EntityUid>, field: &str) -> Result<UidRef<'a>, RequestError> {
    match v {
        Some(u) => Ok(UidRef {
            ty: &u.r#type,
            id: &u.id,
        }),
        None => Err(RequestError::new(field, "is required")),
    }
}

fn raw(req: &pb::IsAuthorizedRequest) -> Result<RawRequest<'_>, RequestError> {
    Ok(RawRequest {
        principal: uid(&req.principal, "principal")?,
        action: uid(&req.action, "action")?,
        resource: uid(&req.resource, "resource")?,
        context_json: &req.context_json,
        entities_json: &req.entities_json,
    })
}

fn response(d: Decision, version: &str, revision: u64) -> pb::IsAuthorizedResponse {
    pb::IsAuthorizedResponse {
        decision: if d.allow {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        } as i32,
        determining_policies: d.determining,
        errors: d.errors,
        policy_version: version.to_string(),
        revision,
    }
}

/// The `Authorizer` service.
pub struct AuthorizerService {
    engine: Arc<Engine>,
    telemetry: Arc<Telemetry>,
}

/// What the decision log needs from a call beyond each decision.
struct CallLog<'a> {
    method: &'static str,
    metadata: &'a MetadataMap,
    started: Instant,
    request_id: Option<String>,
}

impl CallLog<'_> {
    fn request_id(&mut self, telemetry: &Telemetry) -> String {
        self.request_id
            .get_or_insert_with(|| {
                let given = self
                    .metadata
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok());
                telemetry.request_id(given)
            })
            .clone()
    }
}

impl AuthorizerService {
    pub fn new(engine: Arc<Engine>, telemetry: Arc<Telemetry>) -> Self {
        AuthorizerService { engine, telemetry }
    }

    fn check_size(&self, len: usize) -> Result<(), ServiceError> {
        let limit = self.engine.limits.max_message_bytes;
        if len > limit {
            return Err(RequestError::new(
                "request",
                format!("message of {len} bytes exceeds the limit of {limit} bytes"),
            )
            .into());
        }
        Ok(())
    }

    /// Counts a decision, and logs it when the decision log samples it.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        call: &mut CallLog<'_>,
        principal: &dyn std::fmt::Display,
        action: &str,
        resource: &dyn std::fmt::Display,
        raw: (&str, &str),
        d: &Decision,
        version: &str,
        revision: u64,
    ) {
        self.telemetry.count_decision(action, d.allow);
        if self.telemetry.sampled() {
            let request_id = call.request_id(&self.telemetry);
            self.telemetry.log_decision(&Logged {
                request_id: &request_id,
                method: call.method,
                principal,
                action: &action,
                resource,
                decision: d,
                policy_version: version,
                revision,
                latency: call.started.elapsed(),
                context_json: raw.0,
                entities_json: raw.1,
            });
        }
    }

    fn is_authorized_inner(
        &self,
        req: &pb::IsAuthorizedRequest,
        call: &mut CallLog<'_>,
    ) -> Result<pb::IsAuthorizedResponse, ServiceError> {
        let live = self.engine.live().ok_or(EngineError::NotReady)?;
        let store = live.store();
        let raw = raw(req)?;
        let checked = decide::check(&live.pack, store, &raw)?;
        let d = decide::decide(&live.pack, store, &checked, self.engine.limits.slice_depth);
        let revision = store.revision();
        self.record(
            call,
            &checked.principal,
            raw.action.id,
            &checked.resource,
            (raw.context_json, raw.entities_json),
            &d,
            &live.pack.version,
            revision,
        );
        Ok(response(d, &live.pack.version, revision))
    }

    fn batch_inner(
        &self,
        req: &pb::BatchIsAuthorizedRequest,
        call: &mut CallLog<'_>,
    ) -> Result<pb::BatchIsAuthorizedResponse, ServiceError> {
        let live = self.engine.live().ok_or(EngineError::NotReady)?;
        let store = live.store();
        let mut checked = Vec::with_capacity(req.requests.len());
        for (i, r) in req.requests.iter().enumerate() {
            let within = |e: RequestError| e.within(&format!("requests[{i}]"));
            let raw = raw(r).map_err(within)?;
            checked.push(decide::check(&live.pack, store, &raw).map_err(within)?);
        }
        let depth = self.engine.limits.slice_depth;
        let revision = store.revision();
        let version = &live.pack.version;
        let responses = checked
            .iter()
            .zip(&req.requests)
            .map(|(c, r)| {
                let d = decide::decide(&live.pack, store, c, depth);
                let action = r.action.as_ref().map_or("", |a| a.id.as_str());
                let raw = (r.context_json.as_str(), r.entities_json.as_str());
                self.record(
                    call,
                    &c.principal,
                    action,
                    &c.resource,
                    raw,
                    &d,
                    version,
                    revision,
                );
                response(d, version, revision)
            })
            .collect();
        Ok(pb::BatchIsAuthorizedResponse {
            responses,
            policy_version: version.clone(),
            revision,
        })
    }

    fn list_inner(
        &self,
        req: &pb::ListAllowedActionsRequest,
        call: &mut CallLog<'_>,
    ) -> Result<pb::ListAllowedActionsResponse, ServiceError> {
        let live = self.engine.live().ok_or(EngineError::NotReady)?;
        let store = live.store();
        let principal = uid(&req.principal, "principal")?;
        let principal = decide::parse_uid(&live.pack, principal, "principal")?;
        let resource = uid(&req.resource, "resource")?;
        let resource = decide::parse_uid(&live.pack, resource, "resource")?;
        let outcomes = decide::list_allowed(
            &live.pack,
            store,
            &principal,
            &resource,
            &req.context_json,
            &req.entities_json,
            self.engine.limits.slice_depth,
        )?;
        let revision = store.revision();
        let mut out = pb::ListAllowedActionsResponse {
            policy_version: live.pack.version.clone(),
            revision,
            ..Default::default()
        };
        for (action, outcome) in outcomes {
            match outcome {
                ActionOutcome::Decided(d) => {
                    self.record(
                        call,
                        &principal,
                        &action,
                        &resource,
                        (&req.context_json, &req.entities_json),
                        &d,
                        &live.pack.version,
                        revision,
                    );
                    if d.allow {
                        out.allowed.push(pb::AllowedAction {
                            action,
                            determining_policies: d.determining,
                        });
                    }
                }
                ActionOutcome::NotEvaluated(reason) => out
                    .not_evaluated
                    .push(pb::NotEvaluatedAction { action, reason }),
            }
        }
        Ok(out)
    }

    async fn wait(&self, metadata: &MetadataMap, min: u64) -> Result<(), ServiceError> {
        Ok(self
            .engine
            .wait_for_revision(min, deadline(metadata))
            .await?)
    }

    /// Runs one call: its latency and error code go to the metrics.
    async fn observed<T>(
        &self,
        method: &'static str,
        metadata: &MetadataMap,
        call: impl AsyncFnOnce(CallLog<'_>) -> Result<T, ServiceError>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let log = CallLog {
            method,
            metadata,
            started,
            request_id: None,
        };
        let result = call(log).await.map_err(Status::from);
        let code = result.as_ref().err().map(Status::code);
        self.telemetry.finish(method, started, code);
        result.map(Response::new)
    }
}

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    async fn is_authorized(
        &self,
        request: Request<pb::IsAuthorizedRequest>,
    ) -> Result<Response<pb::IsAuthorizedResponse>, Status> {
        let req = request.get_ref();
        self.observed("IsAuthorized", request.metadata(), async |mut call| {
            self.check_size(req.encoded_len())?;
            self.wait(call.metadata, req.min_revision).await?;
            self.is_authorized_inner(req, &mut call)
        })
        .await
    }

    async fn batch_is_authorized(
        &self,
        request: Request<pb::BatchIsAuthorizedRequest>,
    ) -> Result<Response<pb::BatchIsAuthorizedResponse>, Status> {
        let req = request.get_ref();
        self.observed("BatchIsAuthorized", request.metadata(), async |mut call| {
            let max = self.engine.limits.max_batch;
            if req.requests.len() > max {
                let n = req.requests.len();
                return Err(RequestError::new(
                    "requests",
                    format!("{n} requests exceed the limit of {max} per call"),
                )
                .into());
            }
            self.check_size(req.encoded_len())?;
            let min = req
                .requests
                .iter()
                .map(|r| r.min_revision)
                .fold(req.min_revision, u64::max);
            self.wait(call.metadata, min).await?;
            self.batch_inner(req, &mut call)
        })
        .await
    }

    async fn list_allowed_actions(
        &self,
        request: Request<pb::ListAllowedActionsRequest>,
    ) -> Result<Response<pb::ListAllowedActionsResponse>, Status> {
        let req = request.get_ref();
        self.observed(
            "ListAllowedActions",
            request.metadata(),
            async |mut call| {
                self.check_size(req.encoded_len())?;
                self.wait(call.metadata, req.min_revision).await?;
                self.list_inner(req, &mut call)
            },
        )
        .await
    }
}

/// The `EntityStore` data service. Reached only through its own listener, behind the token
/// interceptor ([`bearer_auth`]).
pub struct EntityStoreService {
    engine: Arc<Engine>,
    telemetry: Arc<Telemetry>,
}

impl EntityStoreService {
    pub fn new(engine: Arc<Engine>, telemetry: Arc<Telemetry>) -> Self {
        EntityStoreService { engine, telemetry }
    }

    async fn write(&self, request: &pb::WriteEntitiesRequest) -> Result<u64, Status> {
        let ops = request
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| write_op(i, op))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::from)?;
        let engine = self.engine.clone();
        Ok(tokio::task::spawn_blocking(move || engine.write(ops))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "write task failed");
                Status::internal("internal error")
            })?
            .map_err(ServiceError::from)?)
    }
}

/// Checks `authorization: Bearer <token>` in constant time.
pub fn bearer_auth(
    token: String,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected = format!("Bearer {token}").into_bytes();
    move |req: Request<()>| {
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, &expected) {
            Ok(req)
        } else {
            Err(ServiceError::Unauthenticated.into())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cedar_uid(
    v: &Option<pb::EntityUid>,
    field: &str,
) -> Result<cedar_policy::EntityUid, RequestError> {
    let u = uid(v, field)?;
    let value = serde_json::json!({"type": u.ty, "id": u.id});
    json_uid(Some(&value))
        .ok_or_else(|| RequestError::new(field, format!("`{}` is not a Cedar type name", u.ty)))
}

fn write_op(i: usize, op: &pb::WriteOp) -> Result<WriteOp, RequestError> {
    use pb::write_op::Op;
    let field = format!("ops[{i}]");
    let edge = |e: &pb::Edge, kind: &str| -> Result<_, RequestError> {
        Ok((
            cedar_uid(&e.child, &format!("{field}.{kind}.child"))?,
            cedar_uid(&e.parent, &format!("{field}.{kind}.parent"))?,
        ))
    };
    match &op.op {
        None => Err(RequestError::new(field, "names no operation")),
        Some(Op::UpsertJson(text)) => {
            serde_json::from_str(text)
                .map(WriteOp::Upsert)
                .map_err(|e| {
                    RequestError::new(format!("{field}.upsert_json"), format!("invalid JSON: {e}"))
                })
        }
        Some(Op::Delete(u)) => Ok(WriteOp::Delete(cedar_uid(
            &Some(u.clone()),
            &format!("{field}.delete"),
        )?)),
        Some(Op::AddParent(e)) => {
            let (child, parent) = edge(e, "add_parent")?;
            Ok(WriteOp::AddParent { child, parent })
        }
        Some(Op::RemoveParent(e)) => {
            let (child, parent) = edge(e, "remove_parent")?;
            Ok(WriteOp::RemoveParent { child, parent })
        }
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportEntitiesChunk, Status>> + Send>>;

#[tonic::async_trait]
impl EntityStoreRpc for EntityStoreService {
    async fn write_entities(
        &self,
        request: Request<pb::WriteEntitiesRequest>,
    ) -> Result<Response<pb::WriteEntitiesResponse>, Status> {
        let started = Instant::now();
        let result = self.write(request.get_ref()).await;
        let code = result.as_ref().err().map(Status::code);
        self.telemetry.finish("WriteEntities", started, code);
        Ok(Response::new(pb::WriteEntitiesResponse {
            revision: result?,
        }))
    }

    async fn read_entities(
        &self,
        request: Request<pb::ReadEntitiesRequest>,
    ) -> Result<Response<pb::ReadEntitiesResponse>, Status> {
        let live = self
            .engine
            .live()
            .ok_or(ServiceError::from(EngineError::NotReady))?;
        let uids = request
            .get_ref()
            .uids
            .iter()
            .enumerate()
            .map(|(i, u)| cedar_uid(&Some(u.clone()), &format!("uids[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::from)?;
        let store = live.store();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for (u, given) in uids.iter().zip(&request.get_ref().uids) {
            match store.get_json(u) {
                Some(json) => found.push(json.clone()),
                None => missing.push(given.clone()),
            }
        }
        Ok(Response::new(pb::ReadEntitiesResponse {
            entities_json: serde_json::Value::Array(found).to_string(),
            missing,
            revision: store.revision(),
        }))
    }

    type ExportEntitiesStream = ExportStream;

    async fn export_entities(
        &self,
        request: Request<pb::ExportEntitiesRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let chunk = match request.get_ref().chunk_size {
            0 => 1000,
            n => n as usize,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let result = engine.export(chunk, &mut |revision, items| {
                let mut text = Vec::with_capacity(items.iter().map(Vec::len).sum::<usize>() + 2);
                text.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        text.push(b',');
                    }
                    text.extend_from_slice(item);
                }
                text.push(b']');
                let chunk = pb::ExportEntitiesChunk {
                    entities_json: String::from_utf8_lossy(&text).into_owned(),
                    revision,
                };
                tx.blocking_send(Ok(chunk)).is_ok()
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(ServiceError::from(e).into()));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The `Policies` service: which policy set is live, and why the last candidate was rejected.
pub struct PoliciesService {
    reloader: Arc<Reloader>,
}

impl PoliciesService {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        PoliciesService { reloader }
    }
}

#[tonic::async_trait]
impl pb::policies_server::Policies for PoliciesService {
    async fn get_policy_status(
        &self,
        _request: Request<pb::GetPolicyStatusRequest>,
    ) -> Result<Response<pb::PolicyStatus>, Status> {
        let s = self.reloader.status();
        Ok(Response::new(pb::PolicyStatus {
            live_version: s.live_version,
            live_overlays: s.live_overlays,
            live_policies: s.live_policies as u32,
            live_since_unix_ms: s.live_since_unix_ms,
            reloads_accepted: s.accepted,
            reloads_rejected: s.rejected,
            last_rejection: s.last_rejection.map(|r| pb::PolicyRejection {
                at_unix_ms: r.at_unix_ms,
                candidate_version: r.candidate_version.unwrap_or_default(),
                reasons: r.reasons,
            }),
        }))
    }
}
