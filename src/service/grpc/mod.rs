//! The gRPC edge. Proto types stop here: requests are turned into the decision and data paths'
//! plain Rust types, one file per service ([`authorizer`], [`entity_store`], [`policies`];
//! resource plans' proto form in [`plan_wire`]),
//! and errors become a `Status` in exactly one place ([`status`]); what the gRPC stack answers
//! before a handler runs is put in the same codes by [`transport_errors`].

pub mod authorizer;
pub mod codec;
pub mod elsewhere;
pub mod entity_store;
pub mod ext_authz;
pub mod plan_wire;
pub mod policies;
pub mod status;
pub mod transport_errors;

use std::time::Duration;

use tonic::metadata::MetadataMap;

pub use self::authorizer::AuthorizerService;
pub use self::entity_store::{bearer_auth, EntityStoreService};
pub use self::policies::PoliciesService;
pub use self::status::ServiceError;
use crate::engine::error::{Field, Part, RequestError};
use crate::engine::request::{ContextMap, UidRef};

/// Generated code for `blue.authz.v1`.
pub mod pb {
    tonic::include_proto!("blue.authz.v1");

    /// Encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("blue_authz_descriptor");
}

/// The call's deadline, from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
pub(crate) fn deadline(metadata: &MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub(crate) fn uid(
    v: &Option<pb::EntityUid>,
    field: fn(Part) -> Field,
) -> Result<UidRef<'_>, RequestError> {
    match v {
        Some(u) => Ok(UidRef {
            ty: &u.r#type,
            id: &u.id,
        }),
        None => Err(RequestError::new(field(Part::Whole), "is required")),
    }
}

/// A `context_json` field read as a JSON object (empty text: none); `field` names it.
pub(crate) fn context_json(text: &str, field: Field) -> Result<Option<ContextMap>, RequestError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(RequestError::new(field, "must be a JSON object")),
        Err(e) => Err(RequestError::new(field, format!("invalid JSON: {e}"))),
    }
}

/// An `entities_json` field read as a JSON array of entities (empty text: none).
pub(crate) fn entities_json(text: &str) -> Result<Vec<serde_json::Value>, RequestError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Array(items)) => Ok(items),
        Ok(_) => Err(RequestError::new(
            Field::Entities(None),
            "expected a JSON array of entities",
        )),
        Err(e) => Err(RequestError::new(
            Field::Entities(None),
            format!("invalid JSON: {e}"),
        )),
    }
}

/// Refuses a request message over the configured limit (tonic itself refuses anything over
/// twice the limit before decoding it).
pub(crate) fn check_size(limit: usize, len: usize) -> Result<(), ServiceError> {
    if len > limit {
        return Err(RequestError::new(
            Field::Request,
            format!("message of {len} bytes exceeds the limit of {limit} bytes"),
        )
        .into());
    }
    Ok(())
}
