//! The data path: entities validated against the schema on write, kept in a compact index of
//! our own (interned uids, typed attribute values, every entity's ancestor closure
//! precomputed), and a small Cedar slice built per request.
//!
//! The whole store is never one cedar `Entities` (see CEDAR-NOTES.md: building one recomputes
//! the transitive closure of everything, and costs ~1.7 KB an entity). A slice holds the
//! request's principal, resource and context entities and the entities their attributes
//! point at, up to `depth` hops. Each slice entity gets only the ancestors the request can
//! compare it with: Cedar's `in` tests an entity against entity values, and those can only come
//! from the request, the slice's attributes or the policies' literals; any other ancestor can
//! never change a decision. So a user in fifty role groups enters a slice with the one or two
//! that belong to the resource at hand.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast;
use serde_json::{Map, Value};

use crate::error::{DataError, RequestError};
use crate::policy::{Need, PolicyPack};
use crate::storage::ChangeSet;

/// An entity's index in the store's uid table.
pub type Ix = u32;

/// An attribute value, with entity references as indexes.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Entity(Ix),
    Bool(bool),
    Long(i64),
    Str(Box<str>),
    Set(Box<[Val]>),
    Record(Fields),
    /// An extension value (`decimal("1.0")`, `ip("10.0.0.1")`): function and argument.
    Ext(Box<(Box<str>, Box<str>)>),
}

/// Named values: a record's fields, an entity's tags.
type Fields = Box<[(Box<str>, Val)]>;

/// One stored entity.
#[derive(Debug, Clone, Default)]
struct Node {
    present: bool,
    parents: Box<[Ix]>,
    /// Every ancestor, sorted.
    closure: Box<[Ix]>,
    attrs: Box<[(u16, Val)]>,
    tags: Option<Fields>,
}

/// The uid key of the interning table; looked up by `(type, &str)` without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UidKey {
    ty: u16,
    /// Inline up to 23 bytes: no pointer to chase when comparing.
    id: smol_str::SmolStr,
}

#[derive(Hash)]
struct UidRef<'a> {
    ty: u16,
    id: &'a str,
}

impl hashbrown::Equivalent<UidKey> for UidRef<'_> {
    fn equivalent(&self, key: &UidKey) -> bool {
        self.ty == key.ty && *self.id == *key.id
    }
}

impl std::hash::Hash for UidKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        UidRef {
            ty: self.ty,
            id: &self.id,
        }
        .hash(state)
    }
}

/// The entity index.
#[derive(Debug, Default, Clone)]
pub struct EntityStore {
    types: Vec<EntityTypeName>,
    /// The same types, as cedar-policy-core's, for building slice entities.
    core_types: Vec<ast::EntityType>,
    type_ix: hashbrown::HashMap<EntityTypeName, u16>,
    type_by_name: hashbrown::HashMap<Box<str>, u16>,
    attr_names: Vec<Arc<str>>,
    attr_ix: HashMap<Arc<str>, u16>,
    uids: Vec<UidKey>,
    index: hashbrown::HashMap<UidKey, Ix>,
    nodes: Vec<Node>,
    /// The Cedar form of entities without parents, reached through another entity's
    /// attribute (projects, companies): the same in every slice, so built once and shared.
    /// Reset when the entity is written.
    shared: Vec<OnceLock<Arc<ast::Entity>>>,
    children: HashMap<Ix, Vec<Ix>>,
    present: usize,
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

/// An entity parsed and validated against the schema, not yet stored: its canonical Cedar
/// JSON (entity references as `__entity`).
#[derive(Debug, Clone)]
pub struct NewEntity {
    uid: EntityUid,
    json: Value,
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

    /// Replaces the revision (when rebuilding from storage, which knows it).
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        self.changes.revision = revision;
        self
    }
}

/// Parses one entity (Cedar JSON) and validates it against the schema. Errors name `what`,
/// the entity, and Cedar's whole diagnostic chain.
pub fn parse_entity(value: Value, pack: &PolicyPack, what: &str) -> Result<NewEntity, DataError> {
    let label = match value.get("uid") {
        Some(uid) => format!("{what} {uid}"),
        None => what.to_string(),
    };
    let entity =
        Entity::from_json_value(value, Some(&pack.schema)).map_err(|e| DataError::Invalid {
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
        if !pack.allows_parent(ty, parent.type_name()) {
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
        self.prepare_entities(parse_entities(value, pack, &what)?, &what)
    }

    /// A batch of already validated upserts; refused if it would close a hierarchy cycle.
    pub fn prepare_entities(
        &self,
        batch: Vec<NewEntity>,
        what: &str,
    ) -> Result<Prepared, DataError> {
        let prepared = self.prepare_unchecked(batch);
        self.acyclic(prepared.upserts())
            .map_err(|message| DataError::Invalid {
                what: what.to_string(),
                message,
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
        // 0: stale, 1: in progress, 2: done; parents first, iteratively.
        let mut state = vec![0u8; self.nodes.len()];
        let mut stack: Vec<(Ix, bool)> = Vec::new();
        for root in 0..self.nodes.len() as Ix {
            if state[root as usize] == 2 {
                continue;
            }
            stack.push((root, false));
            while let Some((ix, expanded)) = stack.pop() {
                let i = ix as usize;
                if state[i] == 2 || (state[i] == 1 && !expanded) {
                    continue;
                }
                if !expanded {
                    state[i] = 1;
                    stack.push((ix, true));
                    for p in self.nodes[i].parents.iter() {
                        match state[*p as usize] {
                            0 => stack.push((*p, false)),
                            // On the current path: a cycle.
                            1 => {
                                return Err(DataError::Invalid {
                                    what: "stored entities".into(),
                                    message: cycle_message(&self.uid_of(*p)),
                                })
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                let node = &self.nodes[i];
                let closure: Box<[Ix]> = match node.parents.len() {
                    0 => Box::default(),
                    _ => {
                        let mut c: Vec<Ix> = Vec::new();
                        for p in node.parents.iter() {
                            c.push(*p);
                            c.extend_from_slice(&self.nodes[*p as usize].closure);
                        }
                        c.sort_unstable();
                        c.dedup();
                        c.into()
                    }
                };
                self.nodes[i].closure = closure;
                state[i] = 2;
            }
        }
        self.revision = revision;
        Ok(())
    }

    /// A batch of upserts, without the hierarchy check.
    fn prepare_unchecked(&self, batch: Vec<NewEntity>) -> Prepared {
        let mut working = Working::new(self);
        for e in batch {
            working.set(e.uid, Some(e.json));
        }
        working.finish()
    }

    /// The same entities and revision, validated and indexed again under another pack's
    /// schema. (Their hierarchy is this store's, which has no cycle.)
    pub fn rebuild(&self, pack: &PolicyPack) -> Result<EntityStore, DataError> {
        let mut batch = Vec::with_capacity(self.present);
        for ix in 0..self.nodes.len() as Ix {
            if let Some(json) = self.json_of(ix) {
                let what = self.uid_of(ix).to_string();
                batch.push(parse_entity(json, pack, &what)?);
            }
        }
        let mut store = EntityStore::default();
        let prepared = store.prepare_unchecked(batch).with_revision(self.revision);
        store.commit(prepared);
        Ok(store)
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.present
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// How many entities of each type the store holds, by type name.
    pub fn counts_by_type(&self) -> Vec<(String, usize)> {
        let mut counts = vec![0usize; self.types.len()];
        for (key, node) in self.uids.iter().zip(&self.nodes) {
            if node.present {
                counts[key.ty as usize] += 1;
            }
        }
        self.types
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(ty, n)| (ty.to_string(), n))
            .collect()
    }

    pub fn lookup(&self, uid: &EntityUid) -> Option<Ix> {
        let ty = *self.type_ix.get(uid.type_name())?;
        self.index
            .get(&UidRef {
                ty,
                id: uid.id().unescaped(),
            })
            .copied()
    }

    fn node(&self, ix: Ix) -> Option<&Node> {
        self.nodes.get(ix as usize).filter(|n| n.present)
    }

    pub fn contains(&self, uid: &EntityUid) -> bool {
        self.lookup(uid).and_then(|ix| self.node(ix)).is_some()
    }

    fn core_uid_of(&self, ix: Ix) -> ast::EntityUID {
        let key = &self.uids[ix as usize];
        ast::EntityUID::from_components(
            self.core_types[key.ty as usize].clone(),
            ast::Eid::new(key.id.clone()),
            None,
        )
    }

    fn uid_of(&self, ix: Ix) -> EntityUid {
        let key = &self.uids[ix as usize];
        EntityUid::from_type_name_and_id(
            self.types[key.ty as usize].clone(),
            EntityId::new(&*key.id),
        )
    }

    /// The entity as written, in canonical Cedar JSON.
    pub fn get_json(&self, uid: &EntityUid) -> Option<Value> {
        self.json_of(self.lookup(uid)?)
    }

    fn json_of(&self, ix: Ix) -> Option<Value> {
        let node = self.node(ix)?;
        let mut attrs = Map::new();
        for (k, v) in node.attrs.iter() {
            attrs.insert(self.attr_names[*k as usize].to_string(), self.val_json(v));
        }
        let mut out = Map::new();
        out.insert("uid".into(), uid_json(&self.uid_of(ix)));
        out.insert("attrs".into(), Value::Object(attrs));
        out.insert(
            "parents".into(),
            Value::Array(
                node.parents
                    .iter()
                    .map(|p| uid_json(&self.uid_of(*p)))
                    .collect(),
            ),
        );
        if let Some(tags) = &node.tags {
            let tags = tags
                .iter()
                .map(|(k, v)| (k.to_string(), self.val_json(v)))
                .collect();
            out.insert("tags".into(), Value::Object(tags));
        }
        Some(Value::Object(out))
    }

    fn val_json(&self, v: &Val) -> Value {
        match v {
            Val::Entity(ix) => serde_json::json!({"__entity": uid_json(&self.uid_of(*ix))}),
            Val::Bool(b) => Value::Bool(*b),
            Val::Long(n) => Value::from(*n),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Set(items) => Value::Array(items.iter().map(|i| self.val_json(i)).collect()),
            Val::Record(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), self.val_json(v)))
                    .collect(),
            ),
            Val::Ext(x) => serde_json::json!({"__extn": {"fn": &*x.0, "arg": &*x.1}}),
        }
    }

    /// Validates a write batch against the schema and the current data. An error names the
    /// operation (`ops[3]`) and the entity.
    pub fn prepare(&self, ops: Vec<WriteOp>, pack: &PolicyPack) -> Result<Prepared, RequestError> {
        let mut working = Working::new(self);
        for (i, op) in ops.into_iter().enumerate() {
            let field = format!("ops[{i}]");
            match op {
                WriteOp::Upsert(value) => {
                    let e = parse_entity(value, pack, "upsert")
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
                        .edit_parents(&child, pack, |parents| {
                            if !parents.contains(&parent) {
                                parents.push(parent.clone());
                            }
                        })
                        .map_err(|m| RequestError::new(&field, format!("add_parent: {m}")))?;
                    working.set(child, Some(e.json));
                }
                WriteOp::RemoveParent { child, parent } => {
                    let e = working
                        .edit_parents(&child, pack, |parents| parents.retain(|p| p != &parent))
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

    /// Applies a prepared batch and recomputes the ancestor closure of every entity it can
    /// affect (the touched ones and their descendants). Cannot fail.
    pub fn commit(&mut self, prepared: Prepared) {
        let mut touched = Vec::with_capacity(prepared.touched.len());
        for (uid, json) in prepared.touched {
            let ix = self.intern(&uid);
            self.shared[ix as usize] = OnceLock::new();
            let old = std::mem::take(&mut self.nodes[ix as usize]);
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
                self.nodes[ix as usize] = node;
                self.present += 1;
            }
            touched.push(ix);
        }
        self.refresh_closures(&touched);
        self.revision = prepared.revision;
    }

    fn intern(&mut self, uid: &EntityUid) -> Ix {
        let ty = match self.type_ix.get(uid.type_name()) {
            Some(t) => *t,
            None => self.add_type(uid.type_name().clone()),
        };
        self.intern_id(ty, uid.id().unescaped())
    }

    fn add_type(&mut self, ty: EntityTypeName) -> u16 {
        let t = self.types.len() as u16;
        self.core_types.push(crate::policy::plain_type(ty.as_ref()));
        self.type_by_name.insert(ty.to_string().into(), t);
        self.type_ix.insert(ty.clone(), t);
        self.types.push(ty);
        t
    }

    /// Interns a uid given as JSON text parts, parsing the type name only the first time it
    /// is seen. None if the type name is not one.
    fn intern_parts(&mut self, ty: &str, id: &str) -> Option<Ix> {
        let t = self.type_of(ty)?;
        Some(self.intern_id(t, id))
    }

    /// The number of a type, added if new; None if `ty` is not a type name.
    fn type_of(&mut self, ty: &str) -> Option<u16> {
        match self.type_by_name.get(ty) {
            Some(t) => Some(*t),
            None => Some(self.add_type(ty.parse().ok()?)),
        }
    }

    fn intern_id(&mut self, ty: u16, id: &str) -> Ix {
        if let Some(ix) = self.index.get(&UidRef { ty, id }) {
            return *ix;
        }
        let ix = self.uids.len() as Ix;
        let key = UidKey {
            ty,
            id: smol_str::SmolStr::new(id),
        };
        self.uids.push(key.clone());
        self.index.insert(key, ix);
        self.nodes.push(Node::default());
        self.shared.push(OnceLock::new());
        ix
    }

    fn attr_key(&mut self, name: &str) -> u16 {
        if let Some(k) = self.attr_ix.get(name) {
            return *k;
        }
        let k = self.attr_names.len() as u16;
        let name: Arc<str> = Arc::from(name);
        self.attr_names.push(name.clone());
        self.attr_ix.insert(name, k);
        k
    }

    /// A node from canonical Cedar JSON (closure not yet computed).
    fn node_from_json(&mut self, json: &Value) -> Node {
        let parsed = parse_node(self, json);
        let attrs = parsed
            .attrs
            .into_iter()
            .map(|(k, v)| (self.attr_key(&k), v))
            .collect();
        Node {
            present: true,
            parents: parsed.parents,
            closure: Box::default(),
            attrs,
            tags: parsed.tags,
        }
    }

    /// Recomputes the closure of `roots` and of every descendant, parents first.
    fn refresh_closures(&mut self, roots: &[Ix]) {
        let mut affected: HashSet<Ix> = HashSet::new();
        let mut queue: VecDeque<Ix> = roots.iter().copied().collect();
        while let Some(ix) = queue.pop_front() {
            if affected.insert(ix) {
                if let Some(c) = self.children.get(&ix) {
                    queue.extend(c.iter().copied());
                }
            }
        }
        // 0: stale, 1: in progress (a cycle stops here), 2: done.
        let mut state: HashMap<Ix, u8> = affected.iter().map(|ix| (*ix, 0)).collect();
        let order: Vec<Ix> = affected.iter().copied().collect();
        for ix in order {
            self.closure_of(ix, &mut state);
        }
    }

    fn closure_of(&mut self, root: Ix, state: &mut HashMap<Ix, u8>) {
        // Iterative DFS: a node's closure is built after its stale parents'.
        let mut stack = vec![(root, false)];
        while let Some((ix, expanded)) = stack.pop() {
            match state.get(&ix).copied() {
                Some(2) | None => continue,
                Some(1) if !expanded => continue,
                _ => {}
            }
            if !expanded {
                state.insert(ix, 1);
                stack.push((ix, true));
                for p in self.nodes[ix as usize].parents.iter() {
                    if state.get(p) == Some(&0) {
                        stack.push((*p, false));
                    }
                }
                continue;
            }
            let mut closure: Vec<Ix> = Vec::new();
            for p in self.nodes[ix as usize].parents.iter() {
                closure.push(*p);
                closure.extend(self.nodes[*p as usize].closure.iter().copied());
            }
            closure.sort_unstable();
            closure.dedup();
            self.nodes[ix as usize].closure = closure.into();
            state.insert(ix, 2);
        }
    }

    /// Builds the Cedar entities for one request: the seeds and the entities their attributes
    /// reference up to `depth` hops, each with the ancestors that matter to this request.
    /// Each seed comes with what the policies read through its attributes: an entity reached
    /// through an attribute is a member only if [`Need`] says so (its uid still counts for
    /// the ancestor sets). `literals` are the entity literals of the policies that can apply.
    /// Request-scoped `overlay` entities replace stored ones.
    pub fn slice(
        &self,
        seeds: &[(&EntityUid, &Need)],
        overlay: &Overlay,
        depth: usize,
        literals: &[EntityUid],
    ) -> Result<Vec<Arc<ast::Entity>>, String> {
        let mut view = View::new(self, overlay);
        // (entity, reached through an attribute)
        let mut members: Vec<(Ix, bool)> = Vec::new();
        let mut relevant: Vec<Ix> = Vec::new();
        let mut frontier: Vec<(Ix, &Need)> = Vec::new();
        for (s, need) in seeds {
            let ix = view.resolve(s);
            relevant.push(ix);
            frontier.push((ix, need));
        }
        for l in literals {
            let ix = view.resolve(l);
            relevant.push(ix);
        }
        let mut values = Vec::new();
        for level in 0..=depth {
            let mut next = Vec::new();
            for (ix, need) in frontier {
                let Some(node) = view.node(ix) else { continue };
                // An entity reached again (under other needs) is expanded again, not added
                // twice.
                if !members.iter().any(|(m, _)| *m == ix) {
                    members.push((ix, level > 0));
                }
                for (k, v) in node.attrs.iter() {
                    values.clear();
                    entity_vals(v, &mut values);
                    relevant.extend_from_slice(&values);
                    if level < depth {
                        if let Some(child) = need.child(view.attr_name(ix, *k)) {
                            next.extend(values.iter().map(|v| (*v, child)));
                        }
                    }
                }
                for (_, v) in node.tags.iter().flat_map(|t| t.iter()) {
                    values.clear();
                    entity_vals(v, &mut values);
                    relevant.extend_from_slice(&values);
                    if level < depth && *need == Need::All {
                        next.extend(values.iter().map(|v| (*v, need)));
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        relevant.sort_unstable();
        relevant.dedup();
        members
            .iter()
            .map(|(ix, via_attribute)| {
                let shareable = view.shareable(*ix);
                if let Some(e) = shareable.and_then(|slot| slot.get()) {
                    return Ok(e.clone());
                }
                let e = Arc::new(view.entity(*ix, &relevant)?);
                if let (Some(slot), true) = (shareable, via_attribute) {
                    let _ = slot.set(e.clone());
                }
                Ok(e)
            })
            .collect()
    }

    /// Prepares request-scoped entities: their ancestors resolve through the store. Refused
    /// if they would make an entity its own ancestor (data Cedar itself refuses).
    pub fn overlay(&self, batch: Vec<NewEntity>) -> Result<Overlay, String> {
        let overlay = Overlay {
            nodes: batch.into_iter().map(|e| (e.uid, e.json)).collect(),
        };
        self.acyclic(overlay.nodes.iter().map(|(u, v)| (u, v)))?;
        Ok(overlay)
    }

    /// Whether the store with these entities replaced has no hierarchy cycle (the store alone
    /// has none: every write goes through here).
    fn acyclic<'a>(
        &'a self,
        replacing: impl Iterator<Item = (&'a EntityUid, &'a Value)>,
    ) -> Result<(), String> {
        let view = View::replacing(self, replacing);
        match view.find_cycle() {
            None => Ok(()),
            Some(ix) => Err(cycle_message(&view.uid_of(ix))),
        }
    }
}

/// The index as a compiled plan reads it (see [`crate::plan`]).
impl crate::plan::Facts for EntityStore {
    fn ix(&self, uid: &ast::EntityUID) -> Option<Ix> {
        let ty = self
            .core_types
            .iter()
            .position(|t| t == uid.entity_type())?;
        self.index
            .get(&UidRef {
                ty: ty as u16,
                id: uid.eid().as_ref(),
            })
            .copied()
    }

    fn present(&self, ix: Ix) -> bool {
        self.node(ix).is_some_and(|n| n.present)
    }

    fn attr(&self, ix: Ix, name: &str) -> Option<crate::plan::V<'_>> {
        let (_, v) = self
            .node(ix)?
            .attrs
            .iter()
            .find(|(k, _)| &*self.attr_names[*k as usize] == name)?;
        plan_value(v)
    }

    fn has_attr(&self, ix: Ix, name: &str) -> bool {
        self.node(ix).is_some_and(|n| {
            n.attrs
                .iter()
                .any(|(k, _)| &*self.attr_names[*k as usize] == name)
        })
    }

    fn in_closure(&self, ix: Ix, ancestor: Ix) -> bool {
        self.node(ix)
            .is_some_and(|n| n.closure.binary_search(&ancestor).is_ok())
    }

    fn type_is(&self, ix: Ix, ty: &ast::EntityType) -> bool {
        self.uids
            .get(ix as usize)
            .is_some_and(|k| self.core_types[k.ty as usize] == *ty)
    }
}

/// A stored value as a plan's value; records and extension values are outside the subset.
fn plan_value(v: &Val) -> Option<crate::plan::V<'_>> {
    use crate::plan::{Ent, V};
    Some(match v {
        Val::Entity(ix) => V::Ent(Ent::Ix(*ix)),
        Val::Bool(b) => V::Bool(*b),
        Val::Long(n) => V::Long(*n),
        Val::Str(s) => V::Str(s),
        Val::Set(items) => V::Set(items.iter().map(plan_value).collect::<Option<_>>()?),
        Val::Record(_) | Val::Ext(_) => return None,
    })
}

/// Turns uids into indexes: interning in the store, per request in a view.
trait Resolve {
    fn ix(&mut self, uid: &EntityUid) -> Ix;

    /// A uid given as JSON (`{"type", "id"}` or `{"__entity": ..}`).
    fn json_ix(&mut self, v: &Value) -> Option<Ix> {
        json_uid(Some(v)).map(|uid| self.ix(&uid))
    }
}

impl Resolve for EntityStore {
    fn ix(&mut self, uid: &EntityUid) -> Ix {
        self.intern(uid)
    }

    fn json_ix(&mut self, v: &Value) -> Option<Ix> {
        let (ty, id) = json_uid_parts(v)?;
        self.intern_parts(ty, id)
    }
}

impl Resolve for View<'_> {
    fn ix(&mut self, uid: &EntityUid) -> Ix {
        self.resolve(uid)
    }
}

/// An entity's parts from canonical Cedar JSON.
struct ParsedNode {
    parents: Box<[Ix]>,
    attrs: Vec<(String, Val)>,
    tags: Option<Fields>,
}

fn parse_node(r: &mut impl Resolve, json: &Value) -> ParsedNode {
    let parents = match json.get("parents") {
        Some(Value::Array(items)) => items.iter().filter_map(|p| r.json_ix(p)).collect(),
        _ => Box::default(),
    };
    let attrs = match json.get("attrs") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| (k.clone(), val_from_json(r, v)))
            .collect(),
        _ => Vec::new(),
    };
    let tags = match json.get("tags") {
        Some(Value::Object(map)) if !map.is_empty() => Some(
            map.iter()
                .map(|(k, v)| (Box::from(k.as_str()), val_from_json(r, v)))
                .collect(),
        ),
        _ => None,
    };
    ParsedNode {
        parents,
        attrs,
        tags,
    }
}

fn val_from_json(r: &mut impl Resolve, v: &Value) -> Val {
    match v {
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Long(n.as_i64().unwrap_or_default()),
        Value::String(s) => Val::Str(s.as_str().into()),
        Value::Array(items) => Val::Set(items.iter().map(|i| val_from_json(r, i)).collect()),
        Value::Object(map) => {
            if let Some(ix) = map.get("__entity").and_then(|e| r.json_ix(e)) {
                return Val::Entity(ix);
            }
            if let Some(x) = map.get("__extn") {
                let func = x.get("fn").and_then(Value::as_str).unwrap_or_default();
                let arg = x.get("arg").and_then(Value::as_str).unwrap_or_default();
                return Val::Ext(Box::new((func.into(), arg.into())));
            }
            Val::Record(
                map.iter()
                    .map(|(k, v)| (Box::from(k.as_str()), val_from_json(r, v)))
                    .collect(),
            )
        }
        Value::Null => Val::Record(Box::default()),
    }
}

/// Every entity index inside a value.
fn entity_vals(v: &Val, out: &mut Vec<Ix>) {
    match v {
        Val::Entity(ix) => out.push(*ix),
        Val::Set(items) => items.iter().for_each(|i| entity_vals(i, out)),
        Val::Record(fields) => fields.iter().for_each(|(_, v)| entity_vals(v, out)),
        _ => {}
    }
}

/// Request-scoped entities (validated against the schema), to overlay the store for one
/// request.
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    nodes: Vec<(EntityUid, Value)>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The store seen through a request's overlay. Uids the store does not know (new entities of
/// the overlay, or references to nothing) get indexes past the store's.
struct View<'a> {
    store: &'a EntityStore,
    extra: Vec<EntityUid>,
    extra_ix: HashMap<EntityUid, Ix>,
    /// Overlay entities as nodes, by index, and their attribute names.
    nodes: HashMap<Ix, Node>,
    names: HashMap<Ix, Vec<String>>,
    /// Stored entities the overlay gives other parents, sorted: a stored closure through one
    /// of them is stale for this request.
    reparented: Vec<Ix>,
}

impl<'a> View<'a> {
    /// The store seen through a request's entities, with their ancestor closures.
    fn new(store: &'a EntityStore, overlay: &'a Overlay) -> Self {
        let mut view = View::replacing(store, overlay.nodes.iter().map(|(u, v)| (u, v)));
        let ixs: Vec<Ix> = view.nodes.keys().copied().collect();
        for ix in ixs {
            let closure = view.fresh_closure(ix);
            if let Some(n) = view.nodes.get_mut(&ix) {
                n.closure = closure.into();
            }
        }
        view
    }

    /// The store with `entities` replacing (or adding to) stored ones; closures of the new
    /// nodes not computed.
    fn replacing(
        store: &'a EntityStore,
        entities: impl Iterator<Item = (&'a EntityUid, &'a Value)>,
    ) -> Self {
        let mut view = View {
            store,
            extra: Vec::new(),
            extra_ix: HashMap::new(),
            nodes: HashMap::new(),
            names: HashMap::new(),
            reparented: Vec::new(),
        };
        view.load_overlay(entities);
        view
    }

    fn resolve(&mut self, uid: &EntityUid) -> Ix {
        if let Some(ix) = self.store.lookup(uid) {
            return ix;
        }
        if let Some(ix) = self.extra_ix.get(uid) {
            return *ix;
        }
        let ix = (self.store.uids.len() + self.extra.len()) as Ix;
        self.extra.push(uid.clone());
        self.extra_ix.insert(uid.clone(), ix);
        ix
    }

    fn uid_of(&self, ix: Ix) -> ast::EntityUID {
        let n = self.store.uids.len();
        if (ix as usize) < n {
            self.store.core_uid_of(ix)
        } else {
            let uid: &ast::EntityUID = self.extra[ix as usize - n].as_ref();
            uid.clone()
        }
    }

    fn node(&self, ix: Ix) -> Option<&Node> {
        self.nodes.get(&ix).or_else(|| self.store.node(ix))
    }

    /// The shared slot of a stored entity whose Cedar form does not depend on the request:
    /// no parents (so no ancestors to cut down), not replaced by the overlay.
    fn shareable(&self, ix: Ix) -> Option<&'a OnceLock<Arc<ast::Entity>>> {
        if self.nodes.contains_key(&ix) {
            return None;
        }
        let store: &'a EntityStore = self.store;
        let node = store.node(ix)?;
        node.parents.is_empty().then(|| &store.shared[ix as usize])
    }

    /// Turns the overlay's entities into nodes, and notes the stored ones given other parents.
    fn load_overlay(&mut self, entities: impl Iterator<Item = (&'a EntityUid, &'a Value)>) {
        for (uid, json) in entities {
            let ix = self.resolve(uid);
            let parsed = parse_node(self, json);
            let (names, attrs): (Vec<String>, Vec<(u16, Val)>) = parsed
                .attrs
                .into_iter()
                .enumerate()
                .map(|(i, (k, v))| (k, (i as u16, v)))
                .unzip();
            // A uid the store knows, present or only referenced (as a parent, say): stored
            // closures run through it with its stored parents (none if absent).
            if let Some(stored) = self.store.node(ix) {
                let mut before = stored.parents.to_vec();
                let mut after = parsed.parents.to_vec();
                before.sort_unstable();
                after.sort_unstable();
                after.dedup();
                if before != after {
                    self.reparented.push(ix);
                }
            }
            self.names.insert(ix, names);
            self.nodes.insert(
                ix,
                Node {
                    present: true,
                    parents: parsed.parents,
                    closure: Box::default(),
                    attrs: attrs.into(),
                    tags: parsed.tags,
                },
            );
        }
        self.reparented.sort_unstable();
        self.reparented.dedup();
    }

    /// An entity that would be its own ancestor, if any. The store has no cycle, so a new one
    /// runs through a replaced entity; stored entities whose closure avoids every re-parented
    /// one keep their edges and cannot lead back. Depth-first, each entity once.
    fn find_cycle(&self) -> Option<Ix> {
        // 1: on the current path, 2: done.
        let mut color: HashMap<Ix, u8> = HashMap::new();
        let mut stack: Vec<(Ix, bool)> = Vec::new();
        for start in self.nodes.keys() {
            if color.contains_key(start) {
                continue;
            }
            stack.push((*start, false));
            while let Some((ix, done)) = stack.pop() {
                if done {
                    color.insert(ix, 2);
                    continue;
                }
                if color.contains_key(&ix) {
                    continue;
                }
                color.insert(ix, 1);
                stack.push((ix, true));
                let Some(node) = self.node(ix) else { continue };
                for p in node.parents.iter() {
                    match color.get(p) {
                        Some(1) => return Some(*p),
                        Some(_) => {}
                        None => {
                            let expand = self.nodes.contains_key(p)
                                || self.store.node(*p).is_some_and(|n| self.stale(*p, n));
                            if expand {
                                stack.push((*p, false));
                            } else {
                                color.insert(*p, 2);
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Whether the stored closure of `ix` cannot be used for this request: `ix` is replaced by
    /// the overlay, or one of its stored ancestors is given other parents.
    fn stale(&self, ix: Ix, stored: &Node) -> bool {
        self.nodes.contains_key(&ix)
            || stored
                .closure
                .iter()
                .any(|a| self.reparented.binary_search(a).is_ok())
    }

    /// The ancestors of `ix` through the overlay, sorted: parents as the overlay has them,
    /// and the stored closures that do not run through a re-parented entity.
    fn fresh_closure(&self, ix: Ix) -> Vec<Ix> {
        let mut seen: HashSet<Ix> = HashSet::new();
        let mut queue: Vec<Ix> = self
            .node(ix)
            .map(|n| n.parents.to_vec())
            .unwrap_or_default();
        while let Some(p) = queue.pop() {
            if !seen.insert(p) {
                continue;
            }
            if let Some(n) = self.nodes.get(&p) {
                queue.extend(n.parents.iter().copied());
            } else if let Some(n) = self.store.node(p) {
                if self.stale(p, n) {
                    queue.extend(n.parents.iter().copied());
                } else {
                    seen.extend(n.closure.iter().copied());
                }
            }
        }
        let mut closure: Vec<Ix> = seen.into_iter().collect();
        closure.sort_unstable();
        closure
    }

    /// The ancestors of `ix` for this request, sorted.
    fn closure<'s>(&'s self, ix: Ix, node: &'s Node) -> std::borrow::Cow<'s, [Ix]> {
        if !self.reparented.is_empty() && !self.nodes.contains_key(&ix) && self.stale(ix, node) {
            return std::borrow::Cow::Owned(self.fresh_closure(ix));
        }
        std::borrow::Cow::Borrowed(&node.closure)
    }

    /// The attribute name of an attribute of node `ix`.
    fn attr_name(&self, ix: Ix, key: u16) -> &str {
        if self.names.is_empty() {
            return &self.store.attr_names[key as usize];
        }
        match self.names.get(&ix) {
            Some(names) => &names[key as usize],
            None => &self.store.attr_names[key as usize],
        }
    }

    /// The Cedar value of an attribute value. Built directly; only extension values go
    /// through Cedar's evaluator.
    fn value(&self, v: &Val) -> Result<ast::Value, String> {
        Ok(match v {
            Val::Entity(ix) => ast::Value::from(self.uid_of(*ix)),
            Val::Bool(b) => ast::Value::from(*b),
            Val::Long(n) => ast::Value::from(*n),
            Val::Str(s) => ast::Value::from(smol_str::SmolStr::new(&**s)),
            Val::Set(items) => ast::Value::set(
                items
                    .iter()
                    .map(|i| self.value(i))
                    .collect::<Result<Vec<_>, _>>()?,
                None,
            ),
            Val::Record(fields) => ast::Value::record(
                fields
                    .iter()
                    .map(|(k, v)| Ok((smol_str::SmolStr::new(&**k), self.value(v)?)))
                    .collect::<Result<Vec<_>, String>>()?,
                None,
            ),
            Val::Ext(x) => {
                let text = format!("{}({})", x.0, Value::String(x.1.to_string()));
                let expr: ast::RestrictedExpr = text.parse().map_err(|e| format!("{e}"))?;
                cedar_policy_core::evaluator::RestrictedEvaluator::new(
                    cedar_policy_core::extensions::Extensions::all_available(),
                )
                .interpret(expr.as_borrowed())
                .map_err(|e| e.to_string())?
            }
        })
    }

    /// The Cedar entity of `ix`, with its ancestors cut down to `relevant` (sorted). The set
    /// is transitively closed over `relevant` (a closure intersected with a set), which is
    /// what Cedar assumes of a slice built without recomputing the closure.
    fn entity(&self, ix: Ix, relevant: &[Ix]) -> Result<ast::Entity, String> {
        let node = self.node(ix).ok_or("slice member without a node")?;
        let closure = self.closure(ix, node);
        // The kept indexes first, so that Cedar's set is allocated once at its size.
        let kept: Vec<Ix> = if closure.len() <= relevant.len() {
            closure
                .iter()
                .filter(|a| relevant.binary_search(a).is_ok())
                .copied()
                .collect()
        } else {
            relevant
                .iter()
                .filter(|r| closure.binary_search(r).is_ok())
                .copied()
                .collect()
        };
        let mut ancestors: HashSet<ast::EntityUID> = HashSet::with_capacity(kept.len());
        ancestors.extend(kept.iter().map(|a| self.uid_of(*a)));
        let mut attrs = Vec::with_capacity(node.attrs.len());
        for (k, v) in node.attrs.iter() {
            let name = smol_str::SmolStr::new(self.attr_name(ix, *k));
            attrs.push((name, ast::PartialValue::Value(self.value(v)?)));
        }
        let mut tags = Vec::new();
        for (k, v) in node.tags.iter().flat_map(|t| t.iter()) {
            tags.push((
                smol_str::SmolStr::new(&**k),
                ast::PartialValue::Value(self.value(v)?),
            ));
        }
        Ok(ast::Entity::new_with_attr_partial_value(
            self.uid_of(ix),
            attrs,
            HashSet::new(),
            ancestors,
            tags,
        ))
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
        pack: &PolicyPack,
        edit: impl FnOnce(&mut Vec<EntityUid>),
    ) -> Result<NewEntity, String> {
        let Some(mut json) = self.json(child) else {
            return Err(format!("entity {child} does not exist"));
        };
        let mut parents = json_uids(json.get("parents"));
        edit(&mut parents);
        json["parents"] = Value::Array(parents.iter().map(uid_json).collect());
        parse_entity(json, pack, &child.to_string()).map_err(|e| e.to_string())
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

fn cycle_message(uid: &dyn std::fmt::Display) -> String {
    format!("{uid} would be its own ancestor (the entity hierarchy must have no cycle)")
}

fn uid_json(a: &EntityUid) -> Value {
    serde_json::json!({"type": a.type_name().to_string(), "id": a.id().unescaped()})
}

/// The type and id texts of `{"type": .., "id": ..}` or `{"__entity": {..}}`.
fn json_uid_parts(v: &Value) -> Option<(&str, &str)> {
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

fn json_uids(v: Option<&Value>) -> Vec<EntityUid> {
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

pub use fast::{parse_chunk, Parsed};

/// Start-up fast path: stored entities (canonical Cedar JSON, validated when written)
/// deserialized straight into nodes, without building `serde_json::Value`s, by chunks that can
/// be parsed on another thread ([`parse_chunk`]) and then added to the index
/// ([`EntityStore::add_parsed`]).
mod fast {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{
        DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };

    use super::{EntityStore, Fields, Ix, Node, UidKey, UidRef, Val};
    use crate::error::DataError;

    /// Numbers local to one chunk of stored entities, so that the chunk can be parsed on
    /// another thread than the one that owns the store; [`EntityStore::add_parsed`] maps them
    /// to the store's.
    #[derive(Default)]
    struct Local {
        types: Names,
        uids: Vec<UidKey>,
        index: hashbrown::HashMap<UidKey, Ix>,
        attrs: Names,
    }

    /// Names numbered in the order first seen.
    #[derive(Default)]
    struct Names {
        names: Vec<Box<str>>,
        ix: hashbrown::HashMap<Box<str>, u16>,
    }

    impl Names {
        fn intern(&mut self, name: &str) -> u16 {
            if let Some(k) = self.ix.get(name) {
                return *k;
            }
            let k = self.names.len() as u16;
            self.names.push(name.into());
            self.ix.insert(name.into(), k);
            k
        }
    }

    impl Local {
        fn uid(&mut self, ty: &str, id: &str) -> Option<Ix> {
            let t = self.types.intern(ty);
            if let Some(ix) = self.index.get(&UidRef { ty: t, id }) {
                return Some(*ix);
            }
            let ix = self.uids.len() as Ix;
            let key = UidKey {
                ty: t,
                id: smol_str::SmolStr::new(id),
            };
            self.uids.push(key.clone());
            self.index.insert(key, ix);
            Some(ix)
        }
        fn attr(&mut self, name: &str) -> u16 {
            self.attrs.intern(name)
        }
    }

    /// A chunk of stored entities, parsed with chunk-local numbers.
    pub struct Parsed {
        local: Local,
        nodes: Vec<(Ix, Node)>,
    }

    /// Parses stored entities (canonical Cedar JSON, validated when written) without the
    /// store, on any thread.
    pub fn parse_chunk<'a>(items: impl Iterator<Item = &'a [u8]>) -> Result<Parsed, DataError> {
        let mut local = Local::default();
        let mut nodes = Vec::new();
        for bytes in items {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let parsed = EntitySeed(&mut local)
                .deserialize(&mut de)
                .and_then(|n| de.end().map(|()| n));
            match parsed {
                Ok(n) => nodes.push(n),
                Err(source) => {
                    return Err(DataError::Json {
                        what: "stored entity".into(),
                        source,
                    })
                }
            }
        }
        Ok(Parsed { local, nodes })
    }

    fn remap(v: &mut Val, uids: &[Ix]) {
        match v {
            Val::Entity(ix) => *ix = uids[*ix as usize],
            Val::Set(items) => items.iter_mut().for_each(|i| remap(i, uids)),
            Val::Record(fields) => fields.iter_mut().for_each(|(_, v)| remap(v, uids)),
            Val::Bool(_) | Val::Long(_) | Val::Str(_) | Val::Ext(_) => {}
        }
    }

    impl EntityStore {
        /// Adds a chunk parsed by [`parse_chunk`], mapping its numbers to the store's.
        pub fn add_parsed(&mut self, parsed: Parsed) -> Result<(), DataError> {
            let Parsed { local, nodes } = parsed;
            let mut types = Vec::with_capacity(local.types.names.len());
            for ty in &local.types.names {
                types.push(self.type_of(ty).ok_or_else(|| DataError::Invalid {
                    what: "stored entity".into(),
                    message: format!("`{ty}` is not a type name"),
                })?);
            }
            let uids: Vec<Ix> = local
                .uids
                .iter()
                .map(|k| self.intern_id(types[k.ty as usize], &k.id))
                .collect();
            let attrs: Vec<u16> = local.attrs.names.iter().map(|a| self.attr_key(a)).collect();
            for (ix, mut node) in nodes {
                for p in node.parents.iter_mut() {
                    *p = uids[*p as usize];
                }
                for (k, v) in node.attrs.iter_mut() {
                    *k = attrs[*k as usize];
                    remap(v, &uids);
                }
                for (_, v) in node.tags.iter_mut().flat_map(|t| t.iter_mut()) {
                    remap(v, &uids);
                }
                let ix = uids[ix as usize];
                if !self.nodes[ix as usize].present {
                    self.present += 1;
                }
                self.nodes[ix as usize] = node;
            }
            Ok(())
        }
    }

    struct EntitySeed<'s>(&'s mut Local);

    impl<'de> DeserializeSeed<'de> for EntitySeed<'_> {
        type Value = (Ix, Node);
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for EntitySeed<'_> {
        type Value = (Ix, Node);
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a Cedar JSON entity")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let store = &mut *self.0;
            let mut uid = None;
            let mut node = Node {
                present: true,
                ..Node::default()
            };
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                match &*key {
                    "uid" => uid = Some(map.next_value_seed(UidSeed(store))?),
                    "parents" => node.parents = map.next_value_seed(UidsSeed(store))?,
                    "attrs" => node.attrs = map.next_value_seed(AttrsSeed(store))?,
                    "tags" => {
                        let tags = map.next_value_seed(FieldsSeed(store))?;
                        node.tags = (!tags.is_empty()).then_some(tags);
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let uid = uid.ok_or_else(|| A::Error::missing_field("uid"))?;
            Ok((uid, node))
        }
    }

    /// `{"type", "id"}` or `{"__entity": {"type", "id"}}`.
    struct UidSeed<'s>(&'s mut Local);

    impl<'de> DeserializeSeed<'de> for UidSeed<'_> {
        type Value = Ix;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Ix, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for UidSeed<'_> {
        type Value = Ix;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an entity reference")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ix, A::Error> {
            let (mut ty, mut id): (Option<Cow<'de, str>>, Option<Cow<'de, str>>) = (None, None);
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                match &*key {
                    "__entity" => return map.next_value_seed(UidSeed(self.0)),
                    "type" => ty = Some(map.next_value()?),
                    "id" => id = Some(map.next_value()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let (ty, id) = ty
                .zip(id)
                .ok_or_else(|| A::Error::custom("uid needs type and id"))?;
            self.0
                .uid(&ty, &id)
                .ok_or_else(|| A::Error::custom(format!("`{ty}` is not a type name")))
        }
    }

    struct UidsSeed<'s>(&'s mut Local);

    impl<'de> DeserializeSeed<'de> for UidsSeed<'_> {
        type Value = Box<[Ix]>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for UidsSeed<'_> {
        type Value = Box<[Ix]>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of entity references")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(ix) = seq.next_element_seed(UidSeed(self.0))? {
                out.push(ix);
            }
            Ok(out.into())
        }
    }

    /// An entity's attributes, their names interned.
    struct AttrsSeed<'s>(&'s mut Local);

    impl<'de> DeserializeSeed<'de> for AttrsSeed<'_> {
        type Value = Box<[(u16, Val)]>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for AttrsSeed<'_> {
        type Value = Box<[(u16, Val)]>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("attributes")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4));
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                let k = self.0.attr(&key);
                out.push((k, map.next_value_seed(ValSeed(self.0))?));
            }
            Ok(out.into())
        }
    }

    struct FieldsSeed<'s>(&'s mut Local);

    impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
        type Value = Fields;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Fields, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for FieldsSeed<'_> {
        type Value = Fields;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a record")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                let v = map.next_value_seed(ValSeed(self.0))?;
                out.push((Box::from(&*key), v));
            }
            Ok(out.into())
        }
    }

    struct ValSeed<'s>(&'s mut Local);

    impl<'de> DeserializeSeed<'de> for ValSeed<'_> {
        type Value = Val;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ValSeed<'_> {
        type Value = Val;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a Cedar JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
            Ok(Val::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
            Ok(Val::Long(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Val, E> {
            i64::try_from(v).map(Val::Long).map_err(E::custom)
        }
        fn visit_str<E>(self, v: &str) -> Result<Val, E> {
            Ok(Val::Str(v.into()))
        }
        fn visit_unit<E>(self) -> Result<Val, E> {
            Ok(Val::Record(Box::default()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(ValSeed(self.0))? {
                out.push(v);
            }
            Ok(Val::Set(out.into()))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
            let mut fields = Vec::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                match &*key {
                    "__entity" if fields.is_empty() => {
                        let ix = map.next_value_seed(UidSeed(self.0))?;
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        return Ok(Val::Entity(ix));
                    }
                    "__extn" if fields.is_empty() => {
                        #[derive(serde::Deserialize)]
                        struct Extn {
                            #[serde(rename = "fn")]
                            func: String,
                            arg: String,
                        }
                        let x: Extn = map.next_value()?;
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        return Ok(Val::Ext(Box::new((x.func.into(), x.arg.into()))));
                    }
                    _ => {
                        let v = map.next_value_seed(ValSeed(self.0))?;
                        fields.push((Box::from(&*key), v));
                    }
                }
            }
            Ok(Val::Record(fields.into()))
        }
    }
}
