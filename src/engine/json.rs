//! Entity references in Cedar JSON: `{"type": .., "id": ..}` or `{"__entity": {..}}`, read
//! and written in one place for the index, the request checks and the service edge.

use cedar_policy::{EntityId, EntityUid};
use serde_json::Value;

/// The Cedar JSON form of a uid (`{"type", "id"}`).
pub fn uid_json(a: &EntityUid) -> Value {
    serde_json::json!({"type": a.type_name().to_string(), "id": a.id().unescaped()})
}

/// The type and id texts of `{"type": .., "id": ..}` or `{"__entity": {..}}`.
pub fn json_uid_parts(v: &Value) -> Option<(&str, &str)> {
    let v = v.get("__entity").unwrap_or(v);
    let obj = v.as_object()?;
    if obj.len() != 2 {
        return None;
    }
    Some((obj.get("type")?.as_str()?, obj.get("id")?.as_str()?))
}

/// A uid from `{"type": .., "id": ..}` or `{"__entity": {..}}`.
pub fn json_uid(v: Option<&Value>) -> Option<EntityUid> {
    let v = v?;
    let v = v.get("__entity").unwrap_or(v);
    let obj = v.as_object()?;
    if obj.len() != 2 {
        return None;
    }
    let ty = obj.get("type")?.as_str()?;
    let id = obj.get("id")?.as_str()?;
    let ty = ty.parse().ok()?;
    Some(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

pub fn json_uids(v: Option<&Value>) -> Vec<EntityUid> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(|i| json_uid(Some(i))).collect(),
        _ => Vec::new(),
    }
}

/// Every entity reference inside a JSON value, in either the `__entity` or the implicit
/// `{"type", "id"}` form.
pub fn value_refs(v: &Value, out: &mut Vec<EntityUid>) {
    match v {
        Value::Object(map) => {
            if let Some(uid) = json_uid(Some(v)) {
                out.push(uid);
                return;
            }
            for item in map.values() {
                value_refs(item, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                value_refs(item, out);
            }
        }
        _ => {}
    }
}
