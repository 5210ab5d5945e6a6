//! The one place where errors become gRPC statuses: what a call can fail with
//! ([`ServiceError`]) and its `Status`. An internal error is logged and answered without
//! internals. A failed write also says in the `blue-authz-write-outcome` trailer whether it
//! was applied: `not-applied`, or `unknown` (ask GetWrite with its key).

use tonic::Status;

use crate::engine::error::{Field, ListedSide, Part, RequestError};
use crate::service::state::StateError;
use crate::service::write::{WatchError, WriteError};
use crate::storage::SourceError;

/// The trailer that says what a failed write's caller may conclude.
pub const WRITE_OUTCOME: &str = "blue-authz-write-outcome";

/// What can go wrong in a call, before it becomes a `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error(transparent)]
    Preview(#[from] crate::service::preview::PreviewError),
}

impl From<RequestError> for ServiceError {
    fn from(e: RequestError) -> Self {
        ServiceError::State(StateError::Invalid(e))
    }
}

/// A request field as a proto field path: `principal.type`, `context_json`,
/// `entities_json[2]`, `requests[3].resource.id`, `action_contexts_json[viewProject]`.
pub fn field_path(f: &Field) -> String {
    fn part(name: &str, p: Part) -> String {
        match p {
            Part::Whole => name.to_string(),
            Part::Type => format!("{name}.type"),
            Part::Id => format!("{name}.id"),
        }
    }
    match f {
        Field::Request => "request".into(),
        Field::Principal(p) => part("principal", *p),
        Field::Action(p) => part("action", *p),
        Field::Resource(p) => part("resource", *p),
        Field::Context(None) => "context_json".into(),
        Field::Context(Some(m)) => format!("context.{m}"),
        Field::Entities(None) => "entities_json".into(),
        Field::Entities(Some(i)) => format!("entities_json[{i}]"),
        Field::ActionContext(a) => format!("action_contexts_json[{a}]"),
        Field::ListedType(ListedSide::Resources) => "resource_type".into(),
        Field::ListedType(ListedSide::Principals) => "principal_type".into(),
        Field::PageSize => "page_size".into(),
        Field::PageToken => "page_token".into(),
        Field::Ops(None) => "ops".into(),
        Field::Ops(Some(i)) => format!("ops[{i}]"),
        Field::Columns(None) => "sql_columns".into(),
        Field::Columns(Some(k)) => format!("sql_columns[{k}]"),
        Field::Item(i, inner) => format!("requests[{i}].{}", field_path(inner)),
        Field::Edge(name) => name.clone(),
    }
}

fn state_status(e: StateError) -> Status {
    match e {
        StateError::Invalid(e) => {
            Status::invalid_argument(format!("{}: {}", field_path(&e.field), e.message))
        }
        StateError::NotReady => Status::unavailable(e.to_string()),
        StateError::RevisionNotReached { .. } | StateError::PreconditionFailed { .. } => {
            Status::failed_precondition(e.to_string())
        }
        StateError::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
        StateError::Source(e) => source_status(e),
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
    }
}

fn source_status(e: SourceError) -> Status {
    // PostgreSQL's own words (or the driver's, with its cause) go to the caller, who must know
    // why a write was refused; where the source is (host, database) goes to the log only.
    match &e {
        SourceError::OutcomeUnknown { message, .. } => {
            tracing::warn!(error = %e, "write outcome unknown: a commit at the shared source was not answered");
            Status::unavailable(format!(
                "outcome unknown: the shared source did not answer the commit ({message}), so \
                 the batch may or may not have been applied; ask GetWrite with its \
                 idempotency_key"
            ))
        }
        SourceError::DeadlinePassed { .. } => {
            Status::deadline_exceeded(StateError::DeadlineExceeded.to_string())
        }
        SourceError::Unavailable { message, .. } => {
            tracing::warn!(error = %e, "write refused: the shared source is unavailable");
            Status::unavailable(format!(
                "the shared source is unavailable ({message}): the batch was not applied; \
                 retry later"
            ))
        }
        SourceError::Corrupt { .. } => {
            tracing::error!(error = %e, "write refused: the shared source holds an unreadable batch");
            Status::unavailable(
                "the shared source is unavailable: the batch was not applied; retry later",
            )
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::Unauthenticated => Status::unauthenticated(e.to_string()),
            ServiceError::Preview(e) => {
                use crate::service::preview::PreviewError;
                match e {
                    PreviewError::Bad { .. } => Status::invalid_argument(e.to_string()),
                    PreviewError::NotReady => Status::unavailable(e.to_string()),
                    PreviewError::Scratch(_) => {
                        tracing::error!(error = %e, "internal error: a preview");
                        Status::internal("internal error")
                    }
                }
            }
            ServiceError::State(e) => state_status(e),
            ServiceError::Watch(e) => match e {
                WatchError::NoChangeLog => Status::failed_precondition(e.to_string()),
                WatchError::Pruned { .. } => Status::out_of_range(e.to_string()),
                WatchError::Source(e) => source_status(e),
            },
            ServiceError::Write(e) => {
                let outcome = e.outcome();
                let mut status = match e {
                    WriteError::State(e) => state_status(e),
                    WriteError::Source(e) => source_status(e),
                    WriteError::GroupDeadline => Status::unavailable(e.to_string()),
                    WriteError::Failed(_) => {
                        tracing::error!(error = %e, "internal error: the write was not applied");
                        Status::internal("internal error: the write was not applied")
                    }
                    WriteError::Internal(_) => {
                        tracing::error!(error = %e, "internal error: the write's outcome is unknown");
                        Status::internal("internal error: the write's outcome is unknown; ask GetWrite with its idempotency_key")
                    }
                };
                status.metadata_mut().insert(
                    WRITE_OUTCOME,
                    tonic::metadata::MetadataValue::from_static(outcome.as_str()),
                );
                status
            }
        }
    }
}
