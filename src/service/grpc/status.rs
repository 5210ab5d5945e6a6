//! The one place where errors become gRPC statuses: what a call can fail with
//! ([`ServiceError`]) and its `Status`. An internal error is logged and answered without
//! internals.

use tonic::Status;

use crate::engine::error::RequestError;
use crate::service::state::StateError;

/// What can go wrong in a call, before it becomes a `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("missing or invalid bearer token")]
    Unauthenticated,
}

impl From<RequestError> for ServiceError {
    fn from(e: RequestError) -> Self {
        ServiceError::State(StateError::Invalid(e))
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::Unauthenticated => Status::unauthenticated(e.to_string()),
            ServiceError::State(e) => match e {
                StateError::Invalid(e) => Status::invalid_argument(e.to_string()),
                StateError::NotReady => Status::unavailable(e.to_string()),
                StateError::RevisionNotReached { .. } => Status::failed_precondition(e.to_string()),
                StateError::Source(_) => {
                    // The details (host, database, driver message) go to the log only.
                    tracing::warn!(error = %e, "write refused: the shared source is unavailable");
                    Status::unavailable(
                        "the shared source is unavailable: the batch was not applied; retry later",
                    )
                }
                StateError::Storage(ref s) if s.full => {
                    tracing::warn!(error = %e, "write refused: the disk is full");
                    Status::resource_exhausted(
                        "the disk is full: the batch was not applied; writes succeed again once \
                         space is freed, and decisions go on meanwhile",
                    )
                }
                StateError::Storage(_) | StateError::Data(_) | StateError::Gap { .. } => {
                    tracing::error!(error = %e, "internal error");
                    Status::internal("internal error")
                }
            },
        }
    }
}
