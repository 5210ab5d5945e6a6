//! Entities parsed from Cedar JSON and validated against the schema before they reach the index
//! (writes, imports, request-scoped entities). Errors name the input, the entity and Cedar's
//! whole diagnostic chain.

use std::collections::HashSet;

use cedar_policy::{Entity, EntityUid};
use serde_json::Value;

use crate::engine::error::DataError;
use crate::engine::json::{json_uid, json_uids};
use crate::engine::schema::EntitySchema;

/// An entity parsed and validated against the schema, not yet stored: its canonical Cedar
/// JSON (entity references as `__entity`).
#[derive(Debug, Clone)]
pub struct NewEntity {
    pub(super) uid: EntityUid,
    pub(super) json: Value,
}

impl NewEntity {
    pub fn uid(&self) -> EntityUid {
        self.uid.clone()
    }

    /// The entity's canonical Cedar JSON.
    pub fn to_json(&self) -> &Value {
        &self.json
    }

    /// An entity from storage, validated when it was written under the same schema.
    pub fn trusted(json: Value) -> Result<NewEntity, DataError> {
        let uid = json_uid(json.get("uid")).ok_or_else(|| DataError::Invalid {
            what: "stored entity".into(),
            message: "has no uid".into(),
        })?;
        Ok(NewEntity { uid, json })
    }
}

/// Parses one entity (Cedar JSON) and validates it against the schema. Errors name `what`,
/// the entity, and Cedar's whole diagnostic chain.
pub fn parse_entity(
    value: Value,
    schema: &EntitySchema,
    what: &str,
) -> Result<NewEntity, DataError> {
    let label = match value.get("uid") {
        Some(uid) => format!("{what} {uid}"),
        None => what.to_string(),
    };
    let entity =
        Entity::from_json_value(value, Some(&schema.schema)).map_err(|e| DataError::Invalid {
            what: label.clone(),
            message: error_chain(&e),
        })?;
    let json = entity
        .to_json_value()
        .map_err(|source| DataError::entities(&label, source))?;
    // Cedar checks ancestor types only once a transitive closure exists, and then against
    // the closed set; the direct parents are checked against the declared `in` types here.
    let uid = entity.uid();
    let ty = uid.type_name();
    for parent in json_uids(json.get("parents")) {
        if !schema.allows_parent(ty, parent.type_name()) {
            return Err(DataError::Invalid {
                what: label,
                message: format!(
                    "parent {parent}: the schema does not allow a `{ty}` in a `{}`",
                    parent.type_name()
                ),
            });
        }
    }
    Ok(NewEntity { uid, json })
}

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// Parses a Cedar JSON array of entities, validating each against the schema. `what` names
/// the input in errors (`entities_json`, a file name); each error names the index and uid.
pub fn parse_entities(
    value: Value,
    schema: &EntitySchema,
    what: &str,
) -> Result<Vec<NewEntity>, DataError> {
    let Value::Array(items) = value else {
        return Err(DataError::Invalid {
            what: what.to_string(),
            message: "expected a JSON array of entities".into(),
        });
    };
    let mut out = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    let mut actions = 0;
    for (i, item) in items.into_iter().enumerate() {
        let label = format!("{what}[{i}]");
        // Cedar's own entity files list the schema's actions too: those that say what the
        // schema declares are accepted and left out (actions come from the schema), those
        // that differ are refused, saying how.
        match schema.declared_action(&item) {
            Some(Ok(())) => {
                actions += 1;
                continue;
            }
            Some(Err(how)) => {
                return Err(DataError::Invalid {
                    what: label,
                    message: how,
                })
            }
            None => {}
        }
        let e = parse_entity(item, schema, &label)?;
        if !seen.insert(e.uid()) {
            return Err(DataError::Invalid {
                what: label,
                message: format!("duplicate entity {}", e.uid()),
            });
        }
        out.push(e);
    }
    if actions > 0 {
        tracing::info!(
            input = what,
            actions,
            "action entities that match the schema's declarations are not stored: actions come from the schema"
        );
    }
    Ok(out)
}
