//! The `Authorizer` service: single decisions, batches, ListAllowedActions, listings and
//! resource plans, each waiting
//! for its `min_revision`, answered from one consistent view and logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::pb::authorizer_server::Authorizer;
use super::{check_size, context_json, deadline, entities_json, pb, uid, ServiceError};
use crate::engine::decide::Decision;
use crate::engine::error::{Field, RequestError};
use crate::engine::explain::{Explanation, Why};
use crate::engine::list::actions::{ActionOutcome, ActionsRequest, Shown};
use crate::engine::list::{self, ListRequest, Side};
use crate::engine::planner::PlanRequest;
use crate::engine::request::{ContextMap, DecisionRequest};
use crate::service::state::{State, StateError};
use crate::service::telemetry::{CallLog, Input, Telemetry};

/// A decision request's context and entities, read from their JSON text.
struct Parsed {
    context: Option<ContextMap>,
    entities: Vec<serde_json::Value>,
}

impl Parsed {
    fn of(context: &str, entities: &str) -> Result<Self, RequestError> {
        Ok(Parsed {
            context: context_json(context, Field::Context(None))?,
            entities: entities_json(entities)?,
        })
    }
}

/// Checks one request: its references are present, its JSON fields read, then the engine
/// validates the whole against the schema.
fn check(
    view: &crate::engine::View<'_>,
    req: &pb::IsAuthorizedRequest,
) -> Result<crate::engine::request::CheckedRequest, RequestError> {
    let principal = uid(&req.principal, Field::Principal)?;
    let action = uid(&req.action, Field::Action)?;
    let resource = uid(&req.resource, Field::Resource)?;
    let parsed = Parsed::of(&req.context_json, &req.entities_json)?;
    view.check(&DecisionRequest {
        principal,
        action,
        resource,
        context: parsed.context.as_ref(),
        entities: &parsed.entities,
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
        refused: None,
        explanation: None,
    }
}

/// An explanation as the proto says it.
fn explanation(e: Explanation) -> pb::Explanation {
    pb::Explanation {
        why: match e.why {
            Why::Permitted => "permitted",
            Why::Forbidden => "forbidden",
            Why::NothingPermits => "nothing_permits",
        }
        .to_string(),
        permits: e
            .permits
            .into_iter()
            .map(|u| pb::UnmetPermit {
                policy: u.policy,
                failed: u.failed,
                words: u.words,
                read: u
                    .read
                    .into_iter()
                    .map(|r| pb::ReadValue {
                        expr: r.expr,
                        value: r.value,
                        ancestors: r.ancestors,
                    })
                    .collect(),
                error: u.error.unwrap_or_default(),
            })
            .collect(),
    }
}

/// Decides, and explains when asked.
fn decide_maybe_explained(
    view: &crate::engine::View<'_>,
    checked: &crate::engine::request::CheckedRequest,
    explain: bool,
) -> (Decision, Option<pb::Explanation>) {
    if explain {
        let e = view.explain(checked);
        (e.decision.clone(), Some(explanation(e)))
    } else {
        (view.decide(checked), None)
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
        let view = live.view();
        let checked = check(&view, req)?;
        let (d, explained) = decide_maybe_explained(&view, &checked, req.explain);
        let revision = view.store.revision();
        let action = req.action.as_ref().map_or("", |a| a.id.as_str());
        self.telemetry.record(
            call,
            &checked.principal,
            action,
            &checked.resource,
            Input::Text(&req.context_json, &req.entities_json),
            &d,
            &live.pack.version,
            revision,
        );
        Ok(pb::IsAuthorizedResponse {
            explanation: explained,
            ..response(d, &live.pack.version, revision)
        })
    }

    fn batch_inner(
        &self,
        req: &pb::BatchIsAuthorizedRequest,
        call: &mut CallLog<'_>,
    ) -> Result<pb::BatchIsAuthorizedResponse, ServiceError> {
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let view = live.view();
        let revision = view.store.revision();
        let version = &live.pack.version;
        // Each request checked and decided on its own: one refused request is its own
        // answer's `refused`, never the whole batch's error.
        let responses = req
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| match check(&view, r) {
                Ok(c) => {
                    let (d, explained) = decide_maybe_explained(&view, &c, r.explain);
                    let action = r.action.as_ref().map_or("", |a| a.id.as_str());
                    self.telemetry.record(
                        call,
                        &c.principal,
                        action,
                        &c.resource,
                        Input::Text(&r.context_json, &r.entities_json),
                        &d,
                        version,
                        revision,
                    );
                    pb::IsAuthorizedResponse {
                        explanation: explained,
                        ..response(d, version, revision)
                    }
                }
                Err(e) => {
                    let e = e.item(i);
                    pb::IsAuthorizedResponse {
                        decision: pb::Decision::Deny as i32,
                        policy_version: version.clone(),
                        revision,
                        refused: Some(pb::RequestRefused {
                            field: format!("requests{}", e.field),
                            message: format!("requests{e}"),
                        }),
                        ..Default::default()
                    }
                }
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
        let view = live.view();
        let context = context_json(&req.context_json, Field::Context(None))?;
        let per_action = req
            .action_contexts_json
            .iter()
            .map(|(id, text)| {
                let field = Field::ActionContext(id.clone());
                Ok((id.clone(), context_json(text, field)?.unwrap_or_default()))
            })
            .collect::<Result<_, RequestError>>()?;
        let entities = entities_json(&req.entities_json)?;
        let actions = view.list_actions(&ActionsRequest {
            principal: uid(&req.principal, Field::Principal)?,
            resource: uid(&req.resource, Field::Resource)?,
            context: context.as_ref(),
            per_action: Some(&per_action),
            each_declared: req.each_declared_context,
            entities: &entities,
        })?;
        let revision = view.store.revision();
        let mut out = pb::ListAllowedActionsResponse {
            policy_version: live.pack.version.clone(),
            revision,
            ..Default::default()
        };
        for listed in actions.listed {
            // The context as the caller wrote it, or a declared combination written out.
            let context_json = match &listed.context {
                Shown::Default => String::new(),
                Shown::Given => req.action_contexts_json[&listed.action].clone(),
                Shown::Declared(c) => serde_json::to_string(c).unwrap_or_default(),
            };
            match listed.outcome {
                ActionOutcome::Decided(d) => {
                    let logged = if context_json.is_empty() {
                        &req.context_json
                    } else {
                        &context_json
                    };
                    self.telemetry.record(
                        call,
                        &actions.principal,
                        &listed.action,
                        &actions.resource,
                        Input::Text(logged, &req.entities_json),
                        &d,
                        &live.pack.version,
                        revision,
                    );
                    if d.allow {
                        out.allowed.push(pb::AllowedAction {
                            action: listed.action,
                            determining_policies: d.determining,
                            context_json,
                        });
                    }
                }
                ActionOutcome::NotEvaluated(reason) => {
                    out.not_evaluated.push(pb::NotEvaluatedAction {
                        action: listed.action,
                        reason,
                        context_json,
                    })
                }
            }
        }
        Ok(out)
    }

    /// One page of a listing, from one consistent view.
    fn listing(
        &self,
        listed: Side,
        other: &Option<pb::EntityUid>,
        action: &Option<pb::EntityUid>,
        listed_type: &str,
        (context, entities): (&str, &str),
        (page_size, page_token): (u32, &str),
    ) -> Result<(list::Page, String, u64), ServiceError> {
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let view = live.view();
        let parsed = Parsed::of(context, entities)?;
        let page = view.list(&ListRequest {
            listed,
            other: uid(
                other,
                match listed {
                    Side::Resources => Field::Principal,
                    Side::Principals => Field::Resource,
                },
            )?,
            action: uid(action, Field::Action)?,
            listed_type,
            context: parsed.context.as_ref(),
            entities: &parsed.entities,
            page_size,
            page_token,
        })?;
        Ok((page, live.pack.version.clone(), view.store.revision()))
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
                // The codec refuses an over-limit batch before decoding it (`codec.rs`) where
                // the listener sets the limit; this is for a service served without it.
                let max = self.engine.limits.max_batch;
                if req.requests.len() > max {
                    let n = req.requests.len();
                    return Err(RequestError::edge(
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
                let (page, policy_version, revision) = self.listing(
                    Side::Resources,
                    &req.principal,
                    &req.action,
                    &req.resource_type,
                    (&req.context_json, &req.entities_json),
                    (req.page_size, &req.page_token),
                )?;
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
                let (page, policy_version, revision) = self.listing(
                    Side::Principals,
                    &req.resource,
                    &req.action,
                    &req.principal_type,
                    (&req.context_json, &req.entities_json),
                    (req.page_size, &req.page_token),
                )?;
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

    async fn plan_resources(
        &self,
        request: Request<pb::PlanResourcesRequest>,
    ) -> Result<Response<pb::PlanResourcesResponse>, Status> {
        let req = request.get_ref();
        self.observed(
            "PlanResources",
            request.metadata(),
            async |_call, metadata| {
                self.check_size(req.encoded_len())?;
                self.wait(metadata, req.min_revision).await?;
                let live = self.engine.live().ok_or(StateError::NotReady)?;
                let view = live.view();
                let parsed = Parsed::of(&req.context_json, &req.entities_json)?;
                let columns: BTreeMap<String, String> = req
                    .sql_columns
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let plan = view.plan(&PlanRequest {
                    principal: uid(&req.principal, Field::Principal)?,
                    action: uid(&req.action, Field::Action)?,
                    resource_type: &req.resource_type,
                    context: parsed.context.as_ref(),
                    entities: &parsed.entities,
                    columns: Some(&columns),
                })?;
                Ok(super::plan_wire::response(
                    plan,
                    live.pack.version.clone(),
                    view.store.revision(),
                ))
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
