//! Entities parsed from Cedar JSON and validated against the schema before they reach the index
//! (writes, imports, request-scoped entities). Errors name the input, the entity and Cedar's
//! whole diagnostic chain.

use std::collections::HashSet;

use cedar_policy::EntityUid;
use cedar_policy_core::entities::{EntityJsonParser, TCComputation};
use cedar_policy_core::extensions::Extensions;
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
    // Cedar's parser and validation (as `Entity::from_json_value` with the schema), with the
    // type descriptions built once (`engine::entity_types`).
    let described = schema.types.schema(schema.schema.as_ref());
    let parser = EntityJsonParser::new(
        Some(&described),
        Extensions::all_available(),
        TCComputation::ComputeNow,
    );
    let entity = parser
        .single_from_json_value(value)
        .map_err(|e| DataError::Invalid {
            what: label.clone(),
            message: error_chain(&e),
        })?;
    let json = entity
        .to_json_value()
        .map_err(|source| DataError::entities(&label, source))?;
    // Cedar checks ancestor types only once a transitive closure exists, and then against
    // the closed set; the direct parents are checked against the declared `in` types here.
    let uid = EntityUid::from(entity.uid().clone());
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

#[cfg(test)]
mod tests {
    use cedar_policy::{Entity, Schema};
    use serde_json::json;

    use super::*;

    const SCHEMA: &str = r#"
        entity Team;
        entity Color enum ["red", "blue"];
        entity User in [Team] {
            email: String,
            age?: Long,
            lead?: User,
            teams?: Set<Team>,
            meta?: { on: Bool },
            color?: Color,
        } tags String;
    "#;

    /// Parsing with the descriptions built once gives exactly what Cedar's own
    /// `Entity::from_json_value` with the schema gives: the same entity, or the same error.
    #[test]
    fn parsing_with_shared_descriptions_is_cedars_own() {
        let cedar: Schema = SCHEMA.parse().unwrap();
        let schema = EntitySchema::new(cedar.clone(), SCHEMA);
        let user = |attrs: Value, parents: Value| json!({"uid": {"type": "User", "id": "a"}, "attrs": attrs, "parents": parents});
        let team = json!([{"type": "Team", "id": "t"}]);
        let cases = [
            user(json!({"email": "a@x"}), json!([])),
            user(
                json!({"email": "a@x", "age": 3, "lead": {"__entity": {"type": "User", "id": "b"}},
                       "teams": [{"type": "Team", "id": "t2"}, {"type": "Team", "id": "t1"}],
                       "meta": {"on": true}, "color": {"type": "Color", "id": "red"}}),
                team.clone(),
            ),
            json!({"uid": {"type": "User", "id": "a"}, "attrs": {"email": "a@x"}, "parents": [],
                   "tags": {"k": "v"}}),
            json!({"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []}),
            // Refused, each for its own reason.
            user(json!({}), json!([])),
            user(json!({"email": 1}), json!([])),
            user(json!({"email": "a@x", "nick": "a"}), json!([])),
            user(json!({"email": "a@x", "meta": {"on": "yes"}}), json!([])),
            user(
                json!({"email": "a@x", "color": {"type": "Color", "id": "green"}}),
                json!([]),
            ),
            json!({"uid": {"type": "User", "id": "a"}, "attrs": {"email": "a@x"}, "parents": [],
                   "tags": {"k": 1}}),
            json!({"uid": {"type": "Nope", "id": "a"}, "attrs": {}, "parents": []}),
            json!({"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": [
                {"type": "User", "id": "a"}]}),
            json!({"uid": "User::\"a\""}),
        ];
        let (mut ok, mut refused) = (0, 0);
        for case in cases {
            let ours = parse_entity(case.clone(), &schema, "input");
            let theirs = Entity::from_json_value(case.clone(), Some(&cedar));
            match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => {
                    assert_eq!(ours.json, theirs.to_json_value().unwrap(), "{case}");
                    assert_eq!(ours.uid, theirs.uid(), "{case}");
                    ok += 1;
                }
                (Err(DataError::Invalid { message, .. }), Err(theirs)) => {
                    assert_eq!(message, error_chain(&theirs), "{case}");
                    refused += 1;
                }
                (ours, theirs) => panic!("{case}: ours {ours:?}, Cedar's {theirs:?}"),
            }
        }
        assert_eq!((ok, refused), (4, 9));
    }
}
