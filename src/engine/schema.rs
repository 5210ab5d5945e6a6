//! The schema as the entity index sees it: Cedar's schema for validating entities, the direct
//! parent types each entity type declares, and entity type names without source locations.
//! The index takes this view, never the whole policy pack.

use std::collections::{HashMap, HashSet};

use cedar_policy::{EntityTypeName, EntityUid, Schema};

/// What validating an entity needs from a pack: the schema and its declared parent types.
#[derive(Debug, Clone)]
pub struct EntitySchema {
    pub schema: Schema,
    /// The schema's entity type descriptions, built once for Cedar's entity parser.
    pub types: crate::engine::entity_types::EntityTypes,
    /// The parent types each entity type declares (`entity User in [Role, ...]`), direct only.
    parent_types: HashMap<EntityTypeName, HashSet<EntityTypeName>>,
    /// Per entity type, its attributes that hold an entity or a set of entities, with the
    /// entity type they hold.
    entity_attrs: HashMap<EntityTypeName, HashMap<String, EntityTypeName>>,
    /// The schema's actions and their declared ancestors (all of them, transitively).
    actions: HashMap<EntityUid, HashSet<EntityUid>>,
    /// What a `delete_owned` takes with it (the pack's `lifecycle.toml`).
    pub lifecycle: Lifecycle,
    /// What every write must leave true of the data (the pack's `assumptions.toml`).
    pub assumptions: Vec<crate::engine::assume::Assumption>,
    /// The String attributes by which an entity may be named instead of its id (the pack's
    /// `names.toml`, `[keys]`): each value names one entity, checked on every write.
    pub keys: Vec<(EntityTypeName, Vec<String>)>,
}

impl EntitySchema {
    /// The view of a schema parsed from `schema_text`.
    pub fn new(schema: Schema, schema_text: &str) -> Self {
        let (parent_types, entity_attrs) = declared_types(schema_text);
        let actions = schema
            .action_entities()
            .map(|all| {
                all.iter()
                    .map(|a| {
                        let (uid, _, ancestors) = a.clone().into_inner();
                        (uid, ancestors)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let types = crate::engine::entity_types::EntityTypes::new(schema.as_ref());
        EntitySchema {
            schema,
            types,
            parent_types,
            entity_attrs,
            actions,
            lifecycle: Lifecycle::default(),
            assumptions: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// For an entity (Cedar JSON) that is one of the schema's actions: `Ok` if it says what the
    /// schema declares (no attributes or tags; its parents, with their declared ancestors,
    /// are exactly the action's declared ancestors, as Cedar's own entity files list them),
    /// else how it differs. None for any other entity.
    pub fn declared_action(&self, value: &serde_json::Value) -> Option<Result<(), String>> {
        let uid = crate::engine::json::json_uid(value.get("uid"))?;
        let declared = self.actions.get(&uid)?;
        let nonempty = |k: &str| {
            value
                .get(k)
                .is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        };
        if nonempty("attrs") || nonempty("tags") {
            return Some(Err(format!(
                "action {uid} has attributes or tags; the schema declares actions without them \
                 (actions come from the schema: leave them out of entity data)"
            )));
        }
        let given = crate::engine::json::json_uids(value.get("parents"));
        let mut closed: HashSet<EntityUid> = HashSet::new();
        for p in &given {
            closed.insert(p.clone());
            if let Some(up) = self.actions.get(p) {
                closed.extend(up.iter().cloned());
            }
        }
        if &closed == declared {
            return Some(Ok(()));
        }
        let names = |set: &HashSet<EntityUid>| {
            let mut v: Vec<String> = set.iter().map(|u| u.to_string()).collect();
            v.sort();
            format!("[{}]", v.join(", "))
        };
        Some(Err(format!(
            "action {uid} differs from the schema's declaration: its parents make its groups {}, \
             where the schema declares {}",
            names(&closed),
            names(declared)
        )))
    }

    /// The attributes of `ty` that hold entities (or sets of them), with their entity type.
    pub fn entity_attrs_of(&self, ty: &EntityTypeName) -> Vec<(&str, &EntityTypeName)> {
        let mut out: Vec<(&str, &EntityTypeName)> = self
            .entity_attrs
            .get(ty)
            .into_iter()
            .flatten()
            .map(|(a, t)| (a.as_str(), t))
            .collect();
        out.sort();
        out
    }

    /// `types` and every type the schema lets be an ancestor of one of them.
    pub fn with_ancestor_types(&self, types: &[&EntityTypeName]) -> HashSet<EntityTypeName> {
        let mut out: HashSet<EntityTypeName> = HashSet::new();
        let mut queue: Vec<EntityTypeName> = types.iter().map(|t| (*t).clone()).collect();
        while let Some(t) = queue.pop() {
            if let Some(parents) = self.parent_types.get(&t) {
                queue.extend(parents.iter().filter(|p| !out.contains(*p)).cloned());
            }
            out.insert(t);
        }
        out
    }

    /// The entity type an attribute of `ty` holds (itself, or as a set's elements), if it
    /// holds entities.
    pub fn entity_attr(&self, ty: &EntityTypeName, attr: &str) -> Option<&EntityTypeName> {
        self.entity_attrs.get(ty)?.get(attr)
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
/// Per entity type, from the schema's JSON form: the parent types it declares, and its
/// attributes that hold entities (or sets of them), with their entity type.
#[allow(clippy::type_complexity)]
fn declared_types(
    schema_text: &str,
) -> (
    HashMap<EntityTypeName, HashSet<EntityTypeName>>,
    HashMap<EntityTypeName, HashMap<String, EntityTypeName>>,
) {
    let mut parents_of = HashMap::new();
    let mut attrs_of = HashMap::new();
    let Ok((fragment, _)) = cedar_policy::SchemaFragment::from_cedarschema_str(schema_text) else {
        return (parents_of, attrs_of);
    };
    let Ok(json) = fragment.to_json_value() else {
        return (parents_of, attrs_of);
    };
    let qualify = |ns: &str, name: &str| -> Option<EntityTypeName> {
        let full = if ns.is_empty() || name.contains("::") {
            name.to_string()
        } else {
            format!("{ns}::{name}")
        };
        full.parse().ok()
    };
    let mut declared: HashSet<EntityTypeName> = HashSet::new();
    for (ns, body) in json.as_object().into_iter().flatten() {
        let types = body.get("entityTypes").and_then(|t| t.as_object());
        for name in types.into_iter().flatten().map(|(n, _)| n) {
            declared.extend(qualify(ns, name));
        }
    }
    // An attribute's entity type: `{"type": "Entity" | "EntityOrCommon", "name": ..}`, or a
    // set of those.
    let entity_of = |ns: &str, ty: &serde_json::Value| -> Option<EntityTypeName> {
        let ty = match ty.get("type")?.as_str()? {
            "Set" => ty.get("element")?,
            _ => ty,
        };
        match ty.get("type")?.as_str()? {
            "Entity" | "EntityOrCommon" => {
                qualify(ns, ty.get("name")?.as_str()?).filter(|t| declared.contains(t))
            }
            _ => None,
        }
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
            parents_of.insert(ty.clone(), parents);
            let attrs = def
                .get("shape")
                .and_then(|s| s.get("attributes"))
                .and_then(|a| a.as_object());
            let held: HashMap<String, EntityTypeName> = attrs
                .into_iter()
                .flatten()
                .filter_map(|(a, t)| entity_of(ns, t).map(|e| (a.clone(), e)))
                .collect();
            attrs_of.insert(ty, held);
        }
    }
    (parents_of, attrs_of)
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

/// What deleting an entity with `delete_owned` takes with it, as a pack declares it
/// (`lifecycle.toml`): the entities an owner's attributes name (`owns`) and the entities whose
/// attribute names the owner (`owned_by`), transitively. Empty: `delete_owned` deletes only
/// the entity itself (and the parent edges to it).
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    /// Owner type → its attributes whose entities it owns.
    pub owns: HashMap<EntityTypeName, Vec<String>>,
    /// Owner type → (held type, attribute): the entities of the held type whose attribute
    /// names the owner are owned by it.
    pub owned_by: HashMap<EntityTypeName, Vec<(EntityTypeName, String)>>,
}
