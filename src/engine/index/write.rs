//! Write batches: validated whole against the schema and the current data (no dangling
//! parent, no hierarchy cycle) into a [`Prepared`] batch, then committed to the index, which
//! cannot fail. The batch's [`ChangeSet`] is what durable storage writes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use cedar_policy::EntityUid;
use serde_json::Value;

use super::entity::{parse_entities, parse_entity, NewEntity};
use super::{EntityStore, Ix};
use crate::engine::error::{DataError, EditError, RequestError};
use crate::engine::json::{json_uid_parts, json_uids, uid_json};
use crate::engine::schema::EntitySchema;

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

/// One atomic change set in durable form: what to put, what to delete, and the revision it
/// makes.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub revision: u64,
    /// (uid text, entity JSON)
    pub puts: Vec<(String, Vec<u8>)>,
    /// uid texts
    pub deletes: Vec<String>,
    /// The schema version every stored entity now conforms to, when the writer knows it.
    pub schema: Option<String>,
    /// The shared source these entities are a copy of (recorded when Some, kept when None).
    pub source: Option<String>,
    /// When the batch was committed at its source (Unix ms; 0 when unknown).
    pub committed_at_unix_ms: u64,
}

/// A validated batch: the final version of every touched entity (None: deleted), ready to
/// commit; committing cannot fail.
#[derive(Debug)]
pub struct Prepared {
    revision: u64,
    touched: Vec<(EntityUid, Option<Value>)>,
    /// What the durable storage must write: the entities as written, by uid text.
    pub changes: ChangeSet,
}

impl Prepared {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The entities the batch writes (not those it deletes).
    fn upserts(&self) -> impl Iterator<Item = (&EntityUid, &Value)> {
        self.touched
            .iter()
            .filter_map(|(uid, json)| json.as_ref().map(|j| (uid, j)))
    }

    /// The same batch, also deleting every stored entity it does not write: the store's
    /// contents replaced by the batch's. Returns the batch and how many it deletes.
    pub fn replacing(mut self, store: &EntityStore) -> (Prepared, usize) {
        let written: std::collections::HashSet<EntityUid> =
            self.touched.iter().map(|(uid, _)| uid.clone()).collect();
        let mut deleted = 0;
        for ix in 0..store.nodes.len() as Ix {
            if store.node(ix).is_none() {
                continue;
            }
            let uid = store.uid_of(ix);
            if !written.contains(&uid) {
                self.changes.deletes.push(uid.to_string());
                self.touched.push((uid, None));
                deleted += 1;
            }
        }
        (self, deleted)
    }

    /// Every parent edge of the batch's entities that names an entity neither the batch (as
    /// written) nor the rest of `store` holds, as (child, parent).
    pub fn dangling_parents(&self, store: &EntityStore) -> Vec<(EntityUid, EntityUid)> {
        let final_state: HashMap<&EntityUid, bool> = self
            .touched
            .iter()
            .map(|(uid, json)| (uid, json.is_some()))
            .collect();
        let exists = |uid: &EntityUid| match final_state.get(uid) {
            Some(present) => *present,
            None => store.contains(uid),
        };
        let mut dangling = Vec::new();
        for (child, json) in self.upserts() {
            for parent in json_uids(json.get("parents")) {
                if !exists(&parent) {
                    dangling.push((child.clone(), parent));
                }
            }
        }
        dangling
    }

    /// Replaces the revision (when rebuilding from storage, which knows it).
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        self.changes.revision = revision;
        self
    }
}

impl EntityStore {
    /// Loads a Cedar JSON entities file, validating every entity against the schema.
    pub fn load_file(path: &Path, schema: &EntitySchema) -> Result<Self, DataError> {
        let mut store = EntityStore::default();
        let prepared = store.prepare_file(path, schema)?;
        store.commit(prepared);
        Ok(store)
    }

    /// Reads and validates a Cedar JSON entities file into one batch of upserts.
    pub fn prepare_file(&self, path: &Path, schema: &EntitySchema) -> Result<Prepared, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let what = path.display().to_string();
        let value: Value = serde_json::from_str(&text).map_err(|source| DataError::Json {
            what: what.clone(),
            source,
        })?;
        self.prepare_entities(parse_entities(value, schema, &what)?, &what)
    }

    /// A batch of already validated upserts; refused if it would close a hierarchy cycle.
    pub fn prepare_entities(
        &self,
        batch: Vec<NewEntity>,
        what: &str,
    ) -> Result<Prepared, DataError> {
        let prepared = self.prepare_unchecked(batch);
        self.acyclic(prepared.upserts())
            .map_err(|e| DataError::Invalid {
                what: what.to_string(),
                message: e.to_string(),
            })?;
        Ok(prepared)
    }

    /// Adds entities already validated under the current schema (from storage) in bulk; call
    /// [`EntityStore::finish_bulk`] once after the last. Later duplicates replace earlier ones.
    pub fn bulk_insert(&mut self, json: &Value) -> Result<(), DataError> {
        let ix = json
            .get("uid")
            .and_then(json_uid_parts)
            .and_then(|(ty, id)| self.intern_parts(ty, id))
            .ok_or_else(|| DataError::Invalid {
                what: "stored entity".into(),
                message: format!("has no valid uid: {json}"),
            })?;
        let node = self.node_from_json(json);
        if !self.nodes[ix as usize].present {
            self.present += 1;
        }
        self.nodes[ix as usize] = node;
        Ok(())
    }

    /// Makes room for `n` more entities, so that a bulk load does not grow the index in steps.
    pub fn reserve(&mut self, n: usize) {
        self.uids.reserve(n);
        self.index.reserve(n);
        self.nodes.reserve(n);
        self.shared.reserve(n);
    }

    /// Builds the children index and every closure after [`EntityStore::bulk_insert`].
    /// Refuses a hierarchy with a cycle (data written before writes were checked for one).
    pub fn finish_bulk(&mut self, revision: u64) -> Result<(), DataError> {
        self.children.clear();
        for (ix, node) in self.nodes.iter().enumerate() {
            for p in node.parents.iter() {
                self.children.entry(*p).or_default().push(ix as Ix);
            }
        }
        self.build_refs();
        self.close_all().map_err(|e| DataError::Invalid {
            what: "stored entities".into(),
            message: e.to_string(),
        })?;
        self.revision = revision;
        Ok(())
    }

    /// A batch of upserts, without the hierarchy check.
    pub(super) fn prepare_unchecked(&self, batch: Vec<NewEntity>) -> Prepared {
        let mut working = Working::new(self);
        for e in batch {
            working.set(e.uid, Some(e.json));
        }
        working.finish()
    }

    /// The same entities and revision, validated and indexed again under another pack's
    /// schema. (Their hierarchy is this store's, which has no cycle.)
    pub fn rebuild(&self, schema: &EntitySchema) -> Result<EntityStore, DataError> {
        let mut batch = Vec::with_capacity(self.present);
        for ix in 0..self.nodes.len() as Ix {
            if let Some(json) = self.json_of(ix) {
                let what = self.uid_of(ix).to_string();
                batch.push(parse_entity(json, schema, &what)?);
            }
        }
        let mut store = EntityStore::default();
        let prepared = store.prepare_unchecked(batch).with_revision(self.revision);
        store.commit(prepared);
        Ok(store)
    }

    /// Validates a write batch against the schema and the current data. An error names the
    /// operation (`ops[3]`) and the entity.
    pub fn prepare(
        &self,
        ops: Vec<WriteOp>,
        schema: &EntitySchema,
    ) -> Result<Prepared, RequestError> {
        let mut working = Working::new(self);
        for (i, op) in ops.into_iter().enumerate() {
            let field = format!("ops[{i}]");
            match op {
                WriteOp::Upsert(value) => {
                    let e = parse_entity(value, schema, "upsert")
                        .map_err(|e| RequestError::new(&field, e))?;
                    working.set(e.uid, Some(e.json));
                }
                WriteOp::Delete(uid) => working.set(uid, None),
                WriteOp::AddParent { child, parent } => {
                    if !working.exists(&parent) {
                        return Err(RequestError::new(
                            field,
                            format!("add_parent: parent {parent} does not exist"),
                        ));
                    }
                    let e = working
                        .edit_parents(&child, schema, |parents| {
                            if !parents.contains(&parent) {
                                parents.push(parent.clone());
                            }
                        })
                        .map_err(|m| RequestError::new(&field, format!("add_parent: {m}")))?;
                    working.set(child, Some(e.json));
                }
                WriteOp::RemoveParent { child, parent } => {
                    let e = working
                        .edit_parents(&child, schema, |parents| parents.retain(|p| p != &parent))
                        .map_err(|m| RequestError::new(&field, format!("remove_parent: {m}")))?;
                    working.set(child, Some(e.json));
                }
            }
        }
        let prepared = working.finish();
        self.acyclic(prepared.upserts())
            .map_err(|m| RequestError::new("ops", m))?;
        Ok(prepared)
    }

    /// A batch another writer validated (from a shared source's log): its entities are
    /// validated again under `schema`, and refused if they would close a hierarchy cycle.
    pub fn prepare_changes(
        &self,
        changes: &ChangeSet,
        schema: &EntitySchema,
    ) -> Result<Prepared, DataError> {
        let what = format!("batch {}", changes.revision);
        let mut working = Working::new(self);
        for (uid, bytes) in &changes.puts {
            let value: Value = serde_json::from_slice(bytes).map_err(|source| DataError::Json {
                what: format!("{what} entity {uid}"),
                source,
            })?;
            let e = parse_entity(value, schema, &what)?;
            working.set(e.uid, Some(e.json));
        }
        for uid in &changes.deletes {
            let parsed = uid.parse::<EntityUid>().map_err(|e| DataError::Invalid {
                what: what.clone(),
                message: format!("deletes `{uid}`, which is not an entity uid: {e}"),
            })?;
            working.set(parsed, None);
        }
        let prepared = working.finish().with_revision(changes.revision);
        self.acyclic(prepared.upserts())
            .map_err(|e| DataError::Invalid {
                what,
                message: e.to_string(),
            })?;
        Ok(prepared)
    }

    /// Applies a prepared batch and recomputes the ancestor closure of every entity it can
    /// affect (the touched ones and their descendants). Cannot fail.
    pub fn commit(&mut self, prepared: Prepared) {
        let mut touched = Vec::with_capacity(prepared.touched.len());
        for (uid, json) in prepared.touched {
            let ix = self.intern(&uid);
            self.shared[ix as usize] = OnceLock::new();
            let old = std::mem::take(&mut self.nodes[ix as usize]);
            if old.present {
                self.remove_refs(ix, &old);
            }
            for p in old.parents.iter() {
                if let Some(c) = self.children.get_mut(p) {
                    c.retain(|x| *x != ix);
                    if c.is_empty() {
                        self.children.remove(p);
                    }
                }
            }
            if old.present {
                self.present -= 1;
            }
            if let Some(json) = json {
                let node = self.node_from_json(&json);
                for p in node.parents.iter() {
                    self.children.entry(*p).or_default().push(ix);
                }
                self.add_refs(ix, &node);
                self.nodes[ix as usize] = node;
                self.present += 1;
            }
            touched.push(ix);
        }
        self.refresh_closures(&touched);
        self.revision = prepared.revision;
    }
}

/// The state of a batch being prepared: the final JSON of every touched entity (None:
/// deleted), over the unchanged store.
struct Working<'a> {
    store: &'a EntityStore,
    touched: HashMap<EntityUid, Option<Value>>,
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

    fn set(&mut self, uid: EntityUid, json: Option<Value>) {
        if self.touched.insert(uid.clone(), json).is_none() {
            self.order.push(uid);
        }
    }

    fn exists(&self, uid: &EntityUid) -> bool {
        match self.touched.get(uid) {
            Some(e) => e.is_some(),
            None => self.store.contains(uid),
        }
    }

    fn json(&self, uid: &EntityUid) -> Option<Value> {
        match self.touched.get(uid) {
            Some(e) => e.clone(),
            None => self.store.get_json(uid),
        }
    }

    /// The entity with its parents edited, validated against the schema again.
    fn edit_parents(
        &self,
        child: &EntityUid,
        schema: &EntitySchema,
        edit: impl FnOnce(&mut Vec<EntityUid>),
    ) -> Result<NewEntity, EditError> {
        let Some(mut json) = self.json(child) else {
            return Err(EditError::Missing(child.to_string()));
        };
        let mut parents = json_uids(json.get("parents"));
        edit(&mut parents);
        json["parents"] = Value::Array(parents.iter().map(uid_json).collect());
        Ok(parse_entity(json, schema, &child.to_string())?)
    }

    fn finish(self) -> Prepared {
        let revision = self.store.revision + 1;
        let mut changes = ChangeSet {
            revision,
            ..Default::default()
        };
        let mut touched = Vec::with_capacity(self.order.len());
        let mut final_state = self.touched;
        for uid in self.order {
            let json = final_state.remove(&uid).flatten();
            match &json {
                Some(j) => changes
                    .puts
                    .push((uid.to_string(), j.to_string().into_bytes())),
                None => changes.deletes.push(uid.to_string()),
            }
            touched.push((uid, json));
        }
        Prepared {
            revision,
            touched,
            changes,
        }
    }
}
