//! The one place where the AuthZEN edge's errors become HTTP statuses: a refused request is
//! 400 naming the field, a missing or wrong caller token 401, a server not yet loaded 503, and
//! an internal error 500 that reveals no internals (the details go to the log).

use axum::http::StatusCode;

use super::wire::{ErrorBody, ErrorDetail};
use crate::engine::error::RequestError;
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
            HttpError::Invalid(e) | HttpError::NotFound(e) => {
                (Some(e.field.as_str()), e.to_string())
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
                field,
                message: &message,
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// A request error whose field the engine named (`principal.type`, `action.id`,
/// `context_json`, `entities_json`, `page_size`, ...) renamed to the AuthZEN path it came
/// from: `at` maps the engine's first segment to that path.
pub(super) fn renamed(e: RequestError, at: &dyn Fn(&str) -> Option<String>) -> RequestError {
    let (head, rest) = match e.field.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (e.field.as_str(), None),
    };
    let Some(path) = at(head) else {
        return e;
    };
    let field = match (head, rest) {
        // An AuthZEN action is named, not typed.
        ("action", Some(_)) => format!("{path}.name"),
        (_, Some(rest)) => format!("{path}.{rest}"),
        (_, None) => path,
    };
    RequestError {
        field,
        message: e.message,
    }
}
