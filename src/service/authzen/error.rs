//! The one place where the AuthZEN edge's errors become HTTP statuses: a refused request is
//! 400 naming the field, an unknown path 404, a method the path does not take 405, a missing
//! or wrong caller token 401, a server not yet loaded 503, and
//! an internal error 500 that reveals no internals (the details go to the log).

use axum::http::StatusCode;

use super::wire::{ErrorBody, ErrorDetail};
use crate::engine::error::{Field, Part, RequestError};
use crate::service::state::StateError;

/// Why an AuthZEN call failed, before it becomes a response.
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    /// The request is wrong: the field (an AuthZEN path like `evaluations[2].subject.type`)
    /// and why.
    #[error(transparent)]
    Invalid(RequestError),
    /// No such endpoint: the path and why.
    #[error(transparent)]
    NotFound(RequestError),
    /// The endpoint exists, the method is not one of its: which method, and why.
    #[error(transparent)]
    MethodNotAllowed(RequestError),
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error(transparent)]
    State(StateError),
}

impl From<RequestError> for HttpError {
    fn from(e: RequestError) -> Self {
        HttpError::Invalid(e)
    }
}

impl From<StateError> for HttpError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Invalid(e) => HttpError::Invalid(e),
            e => HttpError::State(e),
        }
    }
}

impl HttpError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            HttpError::Invalid(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::Unauthenticated => StatusCode::UNAUTHORIZED,
            HttpError::State(StateError::NotReady) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::State(StateError::RevisionNotReached { .. }) => {
                StatusCode::PRECONDITION_FAILED
            }
            HttpError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response body: what was wrong and where, or "internal error".
    pub(super) fn body(&self) -> Vec<u8> {
        let status = self.status();
        let (field, message) = match self {
            HttpError::Invalid(e) | HttpError::NotFound(e) | HttpError::MethodNotAllowed(e) => {
                (Some(e.field.to_string()), e.to_string())
            }
            HttpError::State(
                e @ (StateError::NotReady | StateError::RevisionNotReached { .. }),
            ) => (None, e.to_string()),
            HttpError::State(e) => {
                tracing::error!(error = %e, "internal error");
                (None, "internal error".to_string())
            }
            e => (None, e.to_string()),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                status: status.as_u16(),
                field: field.as_deref(),
                message: &message,
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// The JSON paths an AuthZEN request's members came from (`evaluations[2].subject`,
/// `context`, ...), by which the engine's fields are spelled.
pub(super) struct Paths<'a> {
    pub subject: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub context: &'a str,
    /// Per request-scoped entity (by index), the member whose `properties` made it.
    pub entities: &'a [&'a str],
    /// The searched-for side of a search, whose type is the listed type.
    pub searched: &'a str,
}

/// An engine error with its field spelled as the AuthZEN path it came from.
pub(super) fn spelled(e: RequestError, p: &Paths<'_>) -> RequestError {
    fn part(at: &str, part: Part) -> String {
        match part {
            Part::Whole => at.to_string(),
            Part::Type => format!("{at}.type"),
            Part::Id => format!("{at}.id"),
        }
    }
    let field = match &e.field {
        Field::Principal(x) => part(p.subject, *x),
        Field::Resource(x) => part(p.resource, *x),
        Field::Action(Part::Whole) => p.action.to_string(),
        // An AuthZEN action is named, not typed.
        Field::Action(_) => format!("{}.name", p.action),
        Field::Context(None) => p.context.to_string(),
        Field::Context(Some(m)) => format!("{}.{m}", p.context),
        Field::Entities(Some(i)) => match p.entities.get(*i) {
            Some(at) => format!("{at}.properties"),
            None => "properties".to_string(),
        },
        Field::Entities(None) => match p.entities {
            [one] => format!("{one}.properties"),
            _ => "properties".to_string(),
        },
        Field::ListedType(_) => format!("{}.type", p.searched),
        Field::PageSize => "page.limit".to_string(),
        Field::PageToken => "page.token".to_string(),
        other => other.to_string(),
    };
    RequestError {
        field: Field::Edge(field),
        message: e.message,
    }
}
