//! The data path: entities validated against the schema on write, kept in an index of our own
//! with every entity's ancestors precomputed, and a small slice built per request.
//!
//! The whole store is never one cedar `Entities` (see CEDAR-NOTES.md: building one recomputes
//! the transitive closure of everything). A slice holds the request's principal, resource and
//! context entities, plus the entities their attributes point at, up to `depth` hops; each with
//! its full ancestor set, so the closure Cedar recomputes over the slice has nothing to add.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use cedar_policy::{Entity, EntityUid, Schema};
use serde_json::Value;

use crate::error::DataError;

/// One stored entity.
#[derive(Debug, Clone)]
struct Stored {
    /// The entity with its parents replaced by its full ancestor set, ready for a slice.
    entity: Entity,
    /// Direct parents, as written.
    parents: Vec<EntityUid>,
    /// Entities its attributes point at.
    refs: Vec<EntityUid>,
    /// The entity as written (canonical Cedar JSON, direct parents).
    json: Value,
}

/// The in-memory entity index.
#[derive(Debug, Default, Clone)]
pub struct EntityStore {
    entities: HashMap<EntityUid, Stored>,
    children: HashMap<EntityUid, HashSet<EntityUid>>,
}

/// An entity parsed and validated against the schema, not yet stored.
#[derive(Debug, Clone)]
pub struct NewEntity {
    entity: Entity,
    json: Value,
}

impl NewEntity {
    pub fn uid(&self) -> EntityUid {
        self.entity.uid()
    }
}

/// Parses one entity (Cedar JSON) and validates it against the schema.
pub fn parse_entity(value: Value, schema: &Schema, what: &str) -> Result<NewEntity, DataError> {
    let entity = Entity::from_json_value(value, Some(schema)).map_err(|e| DataError::Invalid {
        what: what.to_string(),
        message: e.to_string(),
    })?;
    let json = entity
        .to_json_value()
        .map_err(|source| DataError::entities(what, source))?;
    Ok(NewEntity { entity, json })
}

/// Parses a Cedar JSON array of entities, validating each against the schema. `what` names
/// the input in errors (`entities_json`, a file name); each error names the index and uid.
pub fn parse_entities(
    value: Value,
    schema: &Schema,
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
    for (i, item) in items.into_iter().enumerate() {
        let label = match item.get("uid") {
            Some(uid) => format!("{what}[{i}] ({uid})"),
            None => format!("{what}[{i}]"),
        };
        let e = parse_entity(item, schema, &label)?;
        if !seen.insert(e.uid()) {
            return Err(DataError::Invalid {
                what: label,
                message: format!("duplicate entity {}", e.uid()),
            });
        }
        out.push(e);
    }
    Ok(out)
}

impl EntityStore {
    /// Loads a Cedar JSON entities file, validating every entity against the schema.
    pub fn load_file(path: &Path, schema: &Schema) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let what = path.display().to_string();
        let value: Value = serde_json::from_str(&text).map_err(|source| DataError::Json {
            what: what.clone(),
            source,
        })?;
        let mut store = EntityStore::default();
        store.upsert(parse_entities(value, schema, &what)?)?;
        Ok(store)
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    pub fn contains(&self, uid: &EntityUid) -> bool {
        self.entities.contains_key(uid)
    }

    /// The entity as written, in canonical Cedar JSON.
    pub fn get_json(&self, uid: &EntityUid) -> Option<&Value> {
        self.entities.get(uid).map(|s| &s.json)
    }

    /// Inserts or replaces entities, then recomputes the ancestors of every entity whose
    /// ancestry the change can affect.
    pub fn upsert(&mut self, batch: Vec<NewEntity>) -> Result<(), DataError> {
        let mut touched = Vec::with_capacity(batch.len());
        for NewEntity { entity, json } in batch {
            let uid = entity.uid();
            let parents = json_uids(json.get("parents"));
            let refs = attr_refs(&json);
            if let Some(old) = self.entities.get(&uid) {
                for p in &old.parents {
                    if let Some(c) = self.children.get_mut(p) {
                        c.remove(&uid);
                    }
                }
            }
            for p in &parents {
                self.children
                    .entry(p.clone())
                    .or_default()
                    .insert(uid.clone());
            }
            self.entities.insert(
                uid.clone(),
                Stored {
                    entity,
                    parents,
                    refs,
                    json,
                },
            );
            touched.push(uid);
        }
        self.refresh_ancestors(touched)
    }

    /// Recomputes the slice entity (with full ancestors) of `roots` and all their descendants.
    fn refresh_ancestors(&mut self, roots: Vec<EntityUid>) -> Result<(), DataError> {
        let mut queue: VecDeque<EntityUid> = roots.into();
        let mut done = HashSet::new();
        while let Some(uid) = queue.pop_front() {
            if !done.insert(uid.clone()) {
                continue;
            }
            if let Some(children) = self.children.get(&uid) {
                queue.extend(children.iter().cloned());
            }
            let Some(stored) = self.entities.get(&uid) else {
                continue;
            };
            let ancestors = self.ancestors_of(&stored.parents, &HashMap::new());
            let entity = with_ancestors(&uid, &stored.json, &ancestors)?;
            if let Some(s) = self.entities.get_mut(&uid) {
                s.entity = entity;
            }
        }
        Ok(())
    }

    /// Every ancestor reachable from `parents`, looking in `overlay` before the store.
    fn ancestors_of(
        &self,
        parents: &[EntityUid],
        overlay: &HashMap<EntityUid, Vec<EntityUid>>,
    ) -> Vec<EntityUid> {
        let mut seen: HashSet<&EntityUid> = HashSet::new();
        let mut queue: VecDeque<&EntityUid> = parents.iter().collect();
        let mut out = Vec::new();
        while let Some(uid) = queue.pop_front() {
            if !seen.insert(uid) {
                continue;
            }
            out.push(uid.clone());
            if let Some(o) = overlay.get(uid) {
                queue.extend(o.iter());
            } else if let Some(s) = self.entities.get(uid) {
                queue.extend(s.parents.iter());
            }
        }
        out
    }

    /// Builds the entity slice for one request: the seeds (principal, resource, context
    /// entities), the entities their attributes reference up to `depth` hops, each with its
    /// full ancestor set. Request-scoped `overlay` entities replace stored ones.
    pub fn slice(&self, seeds: &[&EntityUid], overlay: &Overlay, depth: usize) -> Vec<Entity> {
        let mut out = Vec::new();
        let mut seen: HashSet<&EntityUid> = HashSet::new();
        let mut frontier: Vec<&EntityUid> = seeds.to_vec();
        for level in 0..=depth {
            let mut next = Vec::new();
            for uid in frontier {
                if !seen.insert(uid) {
                    continue;
                }
                if let Some(o) = overlay.entities.get(uid) {
                    out.push(o.slice_entity.clone());
                    next.extend(o.refs.iter());
                } else if let Some(s) = self.entities.get(uid) {
                    out.push(s.entity.clone());
                    next.extend(s.refs.iter());
                }
            }
            if level == depth || next.is_empty() {
                break;
            }
            frontier = next;
        }
        out
    }

    /// Prepares request-scoped entities: resolves their ancestors through the store.
    pub fn overlay(&self, batch: Vec<NewEntity>) -> Result<Overlay, DataError> {
        let parents: HashMap<EntityUid, Vec<EntityUid>> = batch
            .iter()
            .map(|e| (e.uid(), json_uids(e.json.get("parents"))))
            .collect();
        let mut entities = HashMap::with_capacity(batch.len());
        for NewEntity { json, entity } in &batch {
            let uid = entity.uid();
            let ancestors = self.ancestors_of(&parents[&uid], &parents);
            let slice_entity = with_ancestors(&uid, json, &ancestors)?;
            let refs = attr_refs(json);
            entities.insert(uid, OverlayEntity { refs, slice_entity });
        }
        Ok(Overlay { entities })
    }

    /// Every stored entity as written, sorted by uid (for export and tests).
    pub fn export(&self) -> Vec<Value> {
        let mut all: Vec<(&EntityUid, &Stored)> = self.entities.iter().collect();
        all.sort_by_key(|(u, _)| u.to_string());
        all.into_iter().map(|(_, s)| s.json.clone()).collect()
    }
}

/// Request-scoped entities, ready to overlay the store for one request.
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    entities: HashMap<EntityUid, OverlayEntity>,
}

#[derive(Debug, Clone)]
struct OverlayEntity {
    refs: Vec<EntityUid>,
    slice_entity: Entity,
}

/// The entity of `json` with its parents replaced by `ancestors`.
fn with_ancestors(
    uid: &EntityUid,
    json: &Value,
    ancestors: &[EntityUid],
) -> Result<Entity, DataError> {
    let mut json = json.clone();
    if let Value::Object(map) = &mut json {
        let parents: Vec<Value> = ancestors
            .iter()
            .map(|a| {
                serde_json::json!({"type": a.type_name().to_string(), "id": a.id().unescaped()})
            })
            .collect();
        map.insert("parents".into(), Value::Array(parents));
    }
    // Already validated against the schema on the way in.
    Entity::from_json_value(json, None).map_err(|source| DataError::entities(uid, source))
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
    Some(EntityUid::from_type_name_and_id(
        ty,
        cedar_policy::EntityId::new(id),
    ))
}

fn json_uids(v: Option<&Value>) -> Vec<EntityUid> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(|i| json_uid(Some(i))).collect(),
        _ => Vec::new(),
    }
}

/// Entity references inside an entity's attributes (canonical JSON uses `__entity`).
fn attr_refs(json: &Value) -> Vec<EntityUid> {
    let mut out = Vec::new();
    if let Some(attrs) = json.get("attrs") {
        value_refs(attrs, &mut out);
    }
    out.sort_by_key(|u| u.to_string());
    out.dedup();
    out
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
