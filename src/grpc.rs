//! The gRPC edge. Proto types stop here: requests are turned into the decision path's plain
//! Rust types, and [`ServiceError`] becomes a `Status` in exactly one place
//! (`impl From<ServiceError> for Status`).

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use crate::decide::{self, ActionOutcome, Decision, RawRequest, UidRef};
use crate::error::RequestError;
use crate::server::Shared;

/// Generated code for `blue.authz.v1`.
pub mod pb {
    tonic::include_proto!("blue.authz.v1");

    /// Encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("blue_authz_descriptor");
}

use pb::authorizer_server::Authorizer;

/// What can go wrong in a call, before it becomes a `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    InvalidArgument(#[from] RequestError),
    #[error("no validated policy set and entity data are loaded yet")]
    NotReady,
    /// Logged with its detail; the caller sees only that it happened.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::InvalidArgument(e) => Status::invalid_argument(e.to_string()),
            ServiceError::NotReady => Status::unavailable(e.to_string()),
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// The `Authorizer` service over the shared engine state.
pub struct AuthorizerService {
    shared: Arc<Shared>,
}

impl AuthorizerService {
    pub fn new(shared: Arc<Shared>) -> Self {
        AuthorizerService { shared }
    }
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

fn response(d: Decision, version: &str) -> pb::IsAuthorizedResponse {
    pb::IsAuthorizedResponse {
        decision: if d.allow {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        } as i32,
        determining_policies: d.determining,
        errors: d.errors,
        policy_version: version.to_string(),
    }
}

impl AuthorizerService {
    fn check_size(&self, len: usize) -> Result<(), ServiceError> {
        let limit = self.shared.limits.max_message_bytes;
        if len > limit {
            return Err(RequestError::new(
                "request",
                format!("message of {len} bytes exceeds the limit of {limit} bytes"),
            )
            .into());
        }
        Ok(())
    }

    fn is_authorized_inner(
        &self,
        req: &pb::IsAuthorizedRequest,
    ) -> Result<pb::IsAuthorizedResponse, ServiceError> {
        self.check_size(req.encoded_len())?;
        let live = self.shared.live().ok_or(ServiceError::NotReady)?;
        let store = live.store();
        let checked = decide::check(&live.pack, &store, &raw(req)?)?;
        let d = decide::decide(&live.pack, &store, &checked, self.shared.limits.slice_depth);
        Ok(response(d, &live.pack.version))
    }

    fn batch_inner(
        &self,
        req: &pb::BatchIsAuthorizedRequest,
    ) -> Result<pb::BatchIsAuthorizedResponse, ServiceError> {
        let max = self.shared.limits.max_batch;
        if req.requests.len() > max {
            return Err(RequestError::new(
                "requests",
                format!(
                    "{} requests exceed the limit of {max} per call",
                    req.requests.len()
                ),
            )
            .into());
        }
        self.check_size(req.encoded_len())?;
        let live = self.shared.live().ok_or(ServiceError::NotReady)?;
        let store = live.store();
        let mut checked = Vec::with_capacity(req.requests.len());
        for (i, r) in req.requests.iter().enumerate() {
            let within = |e: RequestError| e.within(&format!("requests[{i}]"));
            checked
                .push(decide::check(&live.pack, &store, &raw(r).map_err(within)?).map_err(within)?);
        }
        let depth = self.shared.limits.slice_depth;
        let responses = checked
            .iter()
            .map(|c| {
                response(
                    decide::decide(&live.pack, &store, c, depth),
                    &live.pack.version,
                )
            })
            .collect();
        Ok(pb::BatchIsAuthorizedResponse {
            responses,
            policy_version: live.pack.version.clone(),
        })
    }

    fn list_inner(
        &self,
        req: &pb::ListAllowedActionsRequest,
    ) -> Result<pb::ListAllowedActionsResponse, ServiceError> {
        self.check_size(req.encoded_len())?;
        let live = self.shared.live().ok_or(ServiceError::NotReady)?;
        let store = live.store();
        let principal =
            decide::parse_uid(&live.pack, uid(&req.principal, "principal")?, "principal")?;
        let resource = decide::parse_uid(&live.pack, uid(&req.resource, "resource")?, "resource")?;
        let outcomes = decide::list_allowed(
            &live.pack,
            &store,
            &principal,
            &resource,
            &req.context_json,
            &req.entities_json,
            self.shared.limits.slice_depth,
        )?;
        let mut out = pb::ListAllowedActionsResponse {
            policy_version: live.pack.version.clone(),
            ..Default::default()
        };
        for (action, outcome) in outcomes {
            match outcome {
                ActionOutcome::Decided(d) if d.allow => out.allowed.push(pb::AllowedAction {
                    action,
                    determining_policies: d.determining,
                }),
                ActionOutcome::Decided(_) => {}
                ActionOutcome::NotEvaluated(reason) => out
                    .not_evaluated
                    .push(pb::NotEvaluatedAction { action, reason }),
            }
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    async fn is_authorized(
        &self,
        request: Request<pb::IsAuthorizedRequest>,
    ) -> Result<Response<pb::IsAuthorizedResponse>, Status> {
        Ok(Response::new(self.is_authorized_inner(request.get_ref())?))
    }

    async fn batch_is_authorized(
        &self,
        request: Request<pb::BatchIsAuthorizedRequest>,
    ) -> Result<Response<pb::BatchIsAuthorizedResponse>, Status> {
        Ok(Response::new(self.batch_inner(request.get_ref())?))
    }

    async fn list_allowed_actions(
        &self,
        request: Request<pb::ListAllowedActionsRequest>,
    ) -> Result<Response<pb::ListAllowedActionsResponse>, Status> {
        Ok(Response::new(self.list_inner(request.get_ref())?))
    }
}
