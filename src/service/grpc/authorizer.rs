//! The `Authorizer` service: single decisions, batches and ListAllowedActions, each waiting
//! for its `min_revision`, answered from one consistent view and logged.

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::pb::authorizer_server::Authorizer;
use super::{check_size, deadline, pb, uid, ServiceError};
use crate::engine::decide::{self, ActionOutcome, Decision};
use crate::engine::error::RequestError;
use crate::engine::list::{self, ListRequest, Side};
use crate::engine::request::{self, RawRequest};
use crate::service::state::{State, StateError};
use crate::service::telemetry::{CallLog, Telemetry};

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
    engine: Arc<State>,
    telemetry: Arc<Telemetry>,
}

impl AuthorizerService {
    pub fn new(engine: Arc<State>, telemetry: Arc<Telemetry>) -> Self {
        AuthorizerService { engine, telemetry }
    }

    fn check_size(&self, len: usize) -> Result<(), ServiceError> {
        check_size(self.engine.limits.max_message_bytes, len)
    }

    fn is_authorized_inner(
        &self,
        req: &pb::IsAuthorizedRequest,
        call: &mut CallLog<'_>,
    ) -> Result<pb::IsAuthorizedResponse, ServiceError> {
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let store = live.store();
        let raw = raw(req)?;
        let checked = request::check(&live.pack, store, &raw)?;
        let d = decide::decide(&live.pack, store, &checked, self.engine.limits.slice_depth);
        let revision = store.revision();
        self.telemetry.record(
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
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let store = live.store();
        let mut checked = Vec::with_capacity(req.requests.len());
        for (i, r) in req.requests.iter().enumerate() {
            let within = |e: RequestError| e.within(&format!("requests[{i}]"));
            let raw = raw(r).map_err(within)?;
            checked.push(request::check(&live.pack, store, &raw).map_err(within)?);
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
                self.telemetry.record(
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
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let store = live.store();
        let principal = uid(&req.principal, "principal")?;
        let principal = request::parse_uid(&live.pack, principal, "principal")?;
        let resource = uid(&req.resource, "resource")?;
        let resource = request::parse_uid(&live.pack, resource, "resource")?;
        let contexts = decide::Contexts {
            default: &req.context_json,
            per_action: Some(&req.action_contexts_json),
            each_declared: req.each_declared_context,
        };
        let outcomes = decide::list_allowed_in(
            &live.pack,
            store,
            (&principal, &resource),
            &contexts,
            &req.entities_json,
            self.engine.limits.slice_depth,
        )?;
        let revision = store.revision();
        let mut out = pb::ListAllowedActionsResponse {
            policy_version: live.pack.version.clone(),
            revision,
            ..Default::default()
        };
        for decide::Listed {
            action,
            context,
            outcome,
        } in outcomes
        {
            let context_json = context.unwrap_or_default();
            match outcome {
                ActionOutcome::Decided(d) => {
                    let logged = if context_json.is_empty() {
                        &req.context_json
                    } else {
                        &context_json
                    };
                    self.telemetry.record(
                        call,
                        &principal,
                        &action,
                        &resource,
                        (logged, &req.entities_json),
                        &d,
                        &live.pack.version,
                        revision,
                    );
                    if d.allow {
                        out.allowed.push(pb::AllowedAction {
                            action,
                            determining_policies: d.determining,
                            context_json,
                        });
                    }
                }
                ActionOutcome::NotEvaluated(reason) => {
                    out.not_evaluated.push(pb::NotEvaluatedAction {
                        action,
                        reason,
                        context_json,
                    })
                }
            }
        }
        Ok(out)
    }

    /// One page of a listing, from one consistent view.
    fn listing(&self, req: &ListRequest<'_>) -> Result<(list::Page, String, u64), ServiceError> {
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let store = live.store();
        let page = list::list(&live.pack, store, req, self.engine.limits.slice_depth)?;
        Ok((page, live.pack.version.clone(), store.revision()))
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
        call: impl AsyncFnOnce(CallLog<'_>, &MetadataMap) -> Result<T, ServiceError>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let given = metadata.get("x-request-id").and_then(|v| v.to_str().ok());
        let log = CallLog::new(method, given, started);
        let result = call(log, metadata).await.map_err(Status::from);
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
        self.observed(
            "IsAuthorized",
            request.metadata(),
            async |mut call, metadata| {
                self.check_size(req.encoded_len())?;
                self.wait(metadata, req.min_revision).await?;
                self.is_authorized_inner(req, &mut call)
            },
        )
        .await
    }

    async fn batch_is_authorized(
        &self,
        request: Request<pb::BatchIsAuthorizedRequest>,
    ) -> Result<Response<pb::BatchIsAuthorizedResponse>, Status> {
        let req = request.get_ref();
        self.observed(
            "BatchIsAuthorized",
            request.metadata(),
            async |mut call, metadata| {
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
                self.wait(metadata, min).await?;
                self.batch_inner(req, &mut call)
            },
        )
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
            async |mut call, metadata| {
                self.check_size(req.encoded_len())?;
                self.wait(metadata, req.min_revision).await?;
                self.list_inner(req, &mut call)
            },
        )
        .await
    }

    async fn list_resources(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        let req = request.get_ref();
        self.observed(
            "ListResources",
            request.metadata(),
            async |_call, metadata| {
                self.check_size(req.encoded_len())?;
                self.wait(metadata, req.min_revision).await?;
                let (page, policy_version, revision) = self.listing(&ListRequest {
                    listed: Side::Resources,
                    other: uid(&req.principal, "principal")?,
                    action: uid(&req.action, "action")?,
                    listed_type: &req.resource_type,
                    context_json: &req.context_json,
                    entities_json: &req.entities_json,
                    page_size: req.page_size,
                    page_token: &req.page_token,
                })?;
                Ok(pb::ListResourcesResponse {
                    resources: listed(page.items),
                    next_page_token: page.next_token,
                    policy_version,
                    revision,
                })
            },
        )
        .await
    }

    async fn list_subjects(
        &self,
        request: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let req = request.get_ref();
        self.observed(
            "ListSubjects",
            request.metadata(),
            async |_call, metadata| {
                self.check_size(req.encoded_len())?;
                self.wait(metadata, req.min_revision).await?;
                let (page, policy_version, revision) = self.listing(&ListRequest {
                    listed: Side::Principals,
                    other: uid(&req.resource, "resource")?,
                    action: uid(&req.action, "action")?,
                    listed_type: &req.principal_type,
                    context_json: &req.context_json,
                    entities_json: &req.entities_json,
                    page_size: req.page_size,
                    page_token: &req.page_token,
                })?;
                Ok(pb::ListSubjectsResponse {
                    subjects: listed(page.items),
                    next_page_token: page.next_token,
                    policy_version,
                    revision,
                })
            },
        )
        .await
    }
}

fn listed(items: Vec<list::Listing>) -> Vec<pb::ListedEntity> {
    items
        .into_iter()
        .map(|l| pb::ListedEntity {
            id: l.id,
            determining_policies: l.determining,
        })
        .collect()
}
