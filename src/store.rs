//! The data path: entities validated against the schema on write, kept in an index of our own
//! with every entity's ancestors precomputed, and a small slice built per request.
//!
//! The whole store is never one cedar `Entities` (see CEDAR-NOTES.md: building one recomputes
//! the transitive closure of everything). A slice holds the request's principal, resource and
//! context entities, plus the entities their attributes point at, up to `depth` hops; each with
//! its full ancestor set, so the closure Cedar recomputes over the slice has nothing to add.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use cedar_policy::{Entity, EntityUid};
use serde_json::Value;

use crate::error::{DataError, RequestError};
use crate::policy::PolicyPack;
use crate::storage::ChangeSet;

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
    /// The revision of the last committed change set (0: nothing written yet).
    revision: u64,
}

/// One operation of an atomic write batch.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert or replace an entity (Cedar JSON, validated against the schema).
    Upsert(Value),
    /// Delete an entity (a no-op if it does not exist).
    Delete(EntityUid),
    /// Add a parent edge; both entities must exist.
    AddParent { child: EntityUid, parent: EntityUid },
    /// Remove a parent edge (a no-op if absent); the child must exist.
    RemoveParent { child: EntityUid, parent: EntityUid },
}

/// A validated batch with every affected entity recomputed, ready to commit. Building it
/// reads the store; committing it cannot fail.
#[derive(Debug)]
pub struct Prepared {
    revision: u64,
    puts: Vec<(EntityUid, Stored)>,
    deletes: Vec<EntityUid>,
    /// What the durable storage must write: the entities as written, by uid text.
    pub changes: ChangeSet,
}

impl Prepared {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Replaces the revision (when rebuilding from storage, which knows it).
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        self.changes.revision = revision;
        self
    }
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

/// Parses one entity (Cedar JSON) and validates it against the schema. Errors name `what`,
/// the entity, and Cedar's whole diagnostic chain.
pub fn parse_entity(value: Value, pack: &PolicyPack, what: &str) -> Result<NewEntity, DataError> {
    let schema = &pack.schema;
    let label = match value.get("uid") {
        Some(uid) => format!("{what} {uid}"),
        None => what.to_string(),
    };
    let entity = Entity::from_json_value(value, Some(schema)).map_err(|e| DataError::Invalid {
        what: label.clone(),
        message: error_chain(&e),
    })?;
    let json = entity
        .to_json_value()
        .map_err(|source| DataError::entities(&label, source))?;
    // Cedar checks ancestor types only once a transitive closure exists, and then against
    // the closed set; the direct parents are checked against the declared `in` types here.
    let ty = entity.uid().type_name().clone();
    for parent in json_uids(json.get("parents")) {
        if !pack.allows_parent(&ty, parent.type_name()) {
            return Err(DataError::Invalid {
                what: label,
                message: format!(
                    "parent {parent}: the schema does not allow a `{ty}` in a `{}`",
                    parent.type_name()
                ),
            });
        }
    }
    Ok(NewEntity { entity, json })
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
    pack: &PolicyPack,
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
        let label = format!("{what}[{i}]");
        let e = parse_entity(item, pack, &label)?;
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
    pub fn load_file(path: &Path, pack: &PolicyPack) -> Result<Self, DataError> {
        let mut store = EntityStore::default();
        let prepared = store.prepare_file(path, pack)?;
        store.commit(prepared);
        Ok(store)
    }

    /// Reads and validates a Cedar JSON entities file into one batch of upserts.
    pub fn prepare_file(&self, path: &Path, pack: &PolicyPack) -> Result<Prepared, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let what = path.display().to_string();
        let value: Value = serde_json::from_str(&text).map_err(|source| DataError::Json {
            what: what.clone(),
            source,
        })?;
        let batch = parse_entities(value, pack, &what)?;
        self.prepare_entities(batch)
    }

    /// The same entities and revision, validated and indexed again under another pack's
    /// schema.
    pub fn rebuild(&self, pack: &PolicyPack) -> Result<EntityStore, DataError> {
        let mut batch = Vec::with_capacity(self.entities.len());
        for (uid, stored) in &self.entities {
            batch.push(parse_entity(stored.json.clone(), pack, &uid.to_string())?);
        }
        let mut store = EntityStore::default();
        let prepared = store.prepare_entities(batch)?.with_revision(self.revision);
        store.commit(prepared);
        Ok(store)
    }

    /// A batch of already validated upserts.
    pub fn prepare_entities(&self, batch: Vec<NewEntity>) -> Result<Prepared, DataError> {
        let mut working = Working::new(self);
        for e in batch {
            working.set(e.uid(), Some(e));
        }
        working.finish()
    }

    pub fn revision(&self) -> u64 {
        self.revision
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

    /// Validates a write batch against the schema and the current data, and computes
    /// everything it changes. An error names the operation (`ops[3]`) and the entity.
    pub fn prepare(&self, ops: Vec<WriteOp>, pack: &PolicyPack) -> Result<Prepared, RequestError> {
        let mut working = Working::new(self);
        for (i, op) in ops.into_iter().enumerate() {
            let field = format!("ops[{i}]");
            match op {
                WriteOp::Upsert(value) => {
                    let e = parse_entity(value, pack, "upsert")
                        .map_err(|e| RequestError::new(&field, e))?;
                    working.set(e.uid(), Some(e));
                }
                WriteOp::Delete(uid) => working.set(uid, None),
                WriteOp::AddParent { child, parent } => {
                    if !working.exists(&parent) {
                        return Err(RequestError::new(
                            field,
                            format!("add_parent: parent {parent} does not exist"),
                        ));
                    }
                    let e = working.edit_parents(&child, pack, |parents| {
                        if !parents.contains(&parent) {
                            parents.push(parent.clone());
                        }
                    });
                    working.set(
                        child,
                        Some(e.map_err(|m| RequestError::new(&field, format!("add_parent: {m}")))?),
                    );
                }
                WriteOp::RemoveParent { child, parent } => {
                    let e = working
                        .edit_parents(&child, pack, |parents| parents.retain(|p| p != &parent));
                    working.set(
                        child,
                        Some(e.map_err(|m| {
                            RequestError::new(&field, format!("remove_parent: {m}"))
                        })?),
                    );
                }
            }
        }
        working.finish().map_err(|e| RequestError::new("ops", e))
    }

    /// Applies a prepared batch. Infallible: everything that can fail happened in `prepare`.
    pub fn commit(&mut self, prepared: Prepared) {
        for uid in &prepared.deletes {
            if let Some(old) = self.entities.remove(uid) {
                self.unlink(uid, &old.parents);
            }
        }
        for (uid, stored) in prepared.puts {
            if let Some(old) = self.entities.get(&uid) {
                let parents = old.parents.clone();
                self.unlink(&uid, &parents);
            }
            for p in &stored.parents {
                self.children
                    .entry(p.clone())
                    .or_default()
                    .insert(uid.clone());
            }
            self.entities.insert(uid, stored);
        }
        self.revision = prepared.revision;
    }

    fn unlink(&mut self, uid: &EntityUid, parents: &[EntityUid]) {
        for p in parents {
            if let Some(c) = self.children.get_mut(p) {
                c.remove(uid);
                if c.is_empty() {
                    self.children.remove(p);
                }
            }
        }
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

/// The state of a batch being prepared: the final version of every touched entity (None:
/// deleted), over the unchanged store.
struct Working<'a> {
    store: &'a EntityStore,
    touched: HashMap<EntityUid, Option<NewEntity>>,
    order: Vec<EntityUid>,
}

impl<'a> Working<'a> {
    fn new(store: &'a EntityStore) -> Self {
        Working {
            store,
            touched: HashMap::new(),
            order: Vec::new(),
        }
    }

    fn set(&mut self, uid: EntityUid, e: Option<NewEntity>) {
        if self.touched.insert(uid.clone(), e).is_none() {
            self.order.push(uid);
        }
    }

    fn exists(&self, uid: &EntityUid) -> bool {
        match self.touched.get(uid) {
            Some(e) => e.is_some(),
            None => self.store.contains(uid),
        }
    }

    fn json(&self, uid: &EntityUid) -> Option<&Value> {
        match self.touched.get(uid) {
            Some(e) => e.as_ref().map(|e| &e.json),
            None => self.store.get_json(uid),
        }
    }

    /// The final direct parents of an entity, or None if it does not exist.
    fn parents(&self, uid: &EntityUid) -> Option<Vec<EntityUid>> {
        match self.touched.get(uid) {
            Some(e) => e.as_ref().map(|e| json_uids(e.json.get("parents"))),
            None => self.store.entities.get(uid).map(|s| s.parents.clone()),
        }
    }

    /// The entity with its parents edited, validated against the schema again.
    fn edit_parents(
        &self,
        child: &EntityUid,
        pack: &PolicyPack,
        edit: impl FnOnce(&mut Vec<EntityUid>),
    ) -> Result<NewEntity, String> {
        let Some(json) = self.json(child) else {
            return Err(format!("entity {child} does not exist"));
        };
        let mut json = json.clone();
        let mut parents = json_uids(json.get("parents"));
        edit(&mut parents);
        json["parents"] = Value::Array(parents.iter().map(uid_json).collect());
        parse_entity(json, pack, &child.to_string()).map_err(|e| e.to_string())
    }

    /// Recomputes every touched entity and every descendant of one.
    fn finish(self) -> Result<Prepared, DataError> {
        // Children added by this batch, on top of the store's index.
        let mut new_children: HashMap<EntityUid, Vec<EntityUid>> = HashMap::new();
        for (uid, e) in &self.touched {
            if let Some(e) = e {
                for p in json_uids(e.json.get("parents")) {
                    new_children.entry(p).or_default().push(uid.clone());
                }
            }
        }
        let mut affected: Vec<EntityUid> = Vec::new();
        let mut seen: HashSet<EntityUid> = HashSet::new();
        let mut queue: VecDeque<EntityUid> = self.order.iter().cloned().collect();
        while let Some(uid) = queue.pop_front() {
            if !seen.insert(uid.clone()) {
                continue;
            }
            if let Some(c) = self.store.children.get(&uid) {
                queue.extend(c.iter().cloned());
            }
            if let Some(c) = new_children.get(&uid) {
                queue.extend(c.iter().cloned());
            }
            affected.push(uid);
        }
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        let mut changes = ChangeSet::default();
        for uid in affected {
            let Some(parents) = self.parents(&uid) else {
                if self.touched.contains_key(&uid) {
                    if self.store.contains(&uid) {
                        changes.deletes.push(uid.to_string());
                    }
                    deletes.push(uid);
                }
                continue;
            };
            let json = self.json(&uid).expect("exists: it has parents").clone();
            let ancestors = self.ancestors(&parents);
            let entity = with_ancestors(&uid, &json, &ancestors)?;
            if self.touched.contains_key(&uid) {
                changes
                    .puts
                    .push((uid.to_string(), json.to_string().into_bytes()));
            }
            let refs = attr_refs(&json);
            puts.push((
                uid,
                Stored {
                    entity,
                    parents,
                    refs,
                    json,
                },
            ));
        }
        let revision = self.store.revision + 1;
        changes.revision = revision;
        Ok(Prepared {
            revision,
            puts,
            deletes,
            changes,
        })
    }

    fn ancestors(&self, parents: &[EntityUid]) -> Vec<EntityUid> {
        let mut seen: HashSet<EntityUid> = HashSet::new();
        let mut queue: VecDeque<EntityUid> = parents.iter().cloned().collect();
        let mut out = Vec::new();
        while let Some(uid) = queue.pop_front() {
            if !seen.insert(uid.clone()) {
                continue;
            }
            if let Some(p) = self.parents(&uid) {
                queue.extend(p);
            }
            out.push(uid);
        }
        out
    }
}

fn uid_json(a: &EntityUid) -> Value {
    serde_json::json!({"type": a.type_name().to_string(), "id": a.id().unescaped()})
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
        let parents: Vec<Value> = ancestors.iter().map(uid_json).collect();
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
