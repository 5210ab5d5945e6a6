//! The schema as the entity index sees it: Cedar's schema for validating entities, the direct
//! parent types each entity type declares, and entity type names without source locations.
//! The index takes this view, never the whole policy pack.

use std::collections::{HashMap, HashSet};

use cedar_policy::{EntityTypeName, Schema};

/// What validating an entity needs from a pack: the schema and its declared parent types.
#[derive(Debug, Clone)]
pub struct EntitySchema {
    pub schema: Schema,
    /// The parent types each entity type declares (`entity User in [Role, ...]`), direct only.
    parent_types: HashMap<EntityTypeName, HashSet<EntityTypeName>>,
}

impl EntitySchema {
    /// The view of a schema parsed from `schema_text`.
    pub fn new(schema: Schema, schema_text: &str) -> Self {
        EntitySchema {
            schema,
            parent_types: declared_parent_types(schema_text),
        }
    }

    /// Whether the schema lets an entity of type `child` have a direct parent of type
    /// `parent` (Cedar itself only checks transitive ancestor types).
    pub fn allows_parent(&self, child: &EntityTypeName, parent: &EntityTypeName) -> bool {
        self.parent_types
            .get(child)
            .is_some_and(|p| p.contains(parent))
    }
}

/// The direct parent types each entity type declares, read from the schema's JSON form
/// (`memberOfTypes`, relative to the type's namespace).
fn declared_parent_types(schema_text: &str) -> HashMap<EntityTypeName, HashSet<EntityTypeName>> {
    let mut out = HashMap::new();
    let Ok((fragment, _)) = cedar_policy::SchemaFragment::from_cedarschema_str(schema_text) else {
        return out;
    };
    let Ok(json) = fragment.to_json_value() else {
        return out;
    };
    let qualify = |ns: &str, name: &str| -> Option<EntityTypeName> {
        let full = if ns.is_empty() || name.contains("::") {
            name.to_string()
        } else {
            format!("{ns}::{name}")
        };
        full.parse().ok()
    };
    for (ns, body) in json.as_object().into_iter().flatten() {
        let types = body.get("entityTypes").and_then(|t| t.as_object());
        for (name, def) in types.into_iter().flatten() {
            let Some(ty) = qualify(ns, name) else {
                continue;
            };
            let parents = def
                .get("memberOfTypes")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().and_then(|p| qualify(ns, p)))
                .collect();
            out.insert(ty, parents);
        }
    }
    out
}

/// The same entity type without a source location. Types taken from the schema point into its
/// text, and every clone on the decision path (each uid of each slice) would bump that text's
/// shared counter from every thread at once.
pub fn plain_type(t: &cedar_policy_core::ast::EntityType) -> cedar_policy_core::ast::EntityType {
    use cedar_policy_core::ast::{InternalName, Name};
    let name: &InternalName = t.name().as_ref();
    let plain = InternalName::new(
        name.basename().clone(),
        name.namespace_components().cloned(),
        None,
    );
    match Name::try_from(plain) {
        Ok(n) => cedar_policy_core::ast::EntityType::from(n),
        // A reserved name cannot come from a validated schema; keep it as it is.
        Err(_) => t.clone(),
    }
}
