//! The gRPC edge. Proto types stop here: requests are turned into the decision and data paths'
//! plain Rust types, one file per service ([`authorizer`], [`entity_store`], [`policies`]),
//! and errors become a `Status` in exactly one place ([`status`]); what the gRPC stack answers
//! before a handler runs is put in the same codes by [`transport_errors`].

pub mod authorizer;
pub mod entity_store;
pub mod policies;
pub mod status;
pub mod transport_errors;

use std::time::Duration;

use tonic::metadata::MetadataMap;

pub use self::authorizer::AuthorizerService;
pub use self::entity_store::{bearer_auth, EntityStoreService};
pub use self::policies::PoliciesService;
pub use self::status::ServiceError;
use crate::engine::error::RequestError;
use crate::engine::request::UidRef;

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

pub(crate) fn uid<'a>(
    v: &'a Option<pb::EntityUid>,
    field: &str,
) -> Result<UidRef<'a>, RequestError> {
    match v {
        Some(u) => Ok(UidRef {
            ty: &u.r#type,
            id: &u.id,
        }),
        None => Err(RequestError::new(field, "is required")),
    }
}

/// Refuses a request message over the configured limit (tonic itself refuses anything over
/// twice the limit before decoding it).
pub(crate) fn check_size(limit: usize, len: usize) -> Result<(), ServiceError> {
    if len > limit {
        return Err(RequestError::new(
            "request",
            format!("message of {len} bytes exceeds the limit of {limit} bytes"),
        )
        .into());
    }
    Ok(())
}
