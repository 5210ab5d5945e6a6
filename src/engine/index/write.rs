//! Write batches: validated whole against the schema and the current data (no dangling
//! parent, no hierarchy cycle) into a [`Prepared`] batch, then committed to the index, which
//! cannot fail. The batch's [`Changes`] are what durable storage writes.

use std::collections::HashMap;
use std::path::Path;

use cedar_policy::EntityUid;
use serde_json::Value;

use super::entity::{parse_entities, parse_entity, NewEntity};
use super::{EntityStore, Ix, Node};
use crate::engine::error::{DataError, EditError, Field, RequestError};
use crate::engine::json::{json_uid, json_uid_parts, json_uids, uid_json};
use crate::engine::pace::Pacer;
use crate::engine::schema::EntitySchema;

/// One operation of an atomic write batch.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert or replace an entity (Cedar JSON, validated against the schema).
    Upsert(Value),
    /// Delete an entity (a no-op if it does not exist).
    Delete(EntityUid),
    /// Delete an entity and, transitively, what the pack's lifecycle rules say it owns; every
    /// parent edge to a deleted entity is removed from the entities that stay.
    DeleteOwned(EntityUid),
    /// Add a parent edge; both entities must exist.
    AddParent { child: EntityUid, parent: EntityUid },
    /// Remove a parent edge (a no-op if absent); the child must exist.
    RemoveParent { child: EntityUid, parent: EntityUid },
}

/// What a batch changes, in the form storage keeps: what to put, what to delete, and the
/// revision it makes. (Storage's `ChangeSet` carries it with what storage records beside it.)
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub revision: u64,
    /// (uid text, entity JSON)
    pub puts: Vec<(String, Vec<u8>)>,
    /// uid texts
    pub deletes: Vec<String>,
}

/// A validated batch: the final version of every touched entity (None: deleted), ready to
/// commit; committing cannot fail.
#[derive(Debug)]
pub struct Prepared {
    pub(super) revision: u64,
    pub(super) touched: Vec<(EntityUid, Option<Value>)>,
    /// What the durable storage must write: the entities as written, by uid text.
    pub changes: Changes,
    /// What [`Prepared::resolve`] worked out beside decisions, and the store it holds for.
    pub(super) resolved: Option<Resolved>,
}

/// For each touched entity: its number and its decoded node, where the store knew all they
/// name. When it knew all of them: the closures too, in the written nodes and as new edges
/// for their stored descendants.
#[derive(Debug)]
pub(super) struct Resolved {
    pub(super) store: u64,
    /// The store's revision when resolved: the closures hold for that state only.
    pub(super) revision: u64,
    pub(super) each: Vec<(Option<Ix>, Option<Node>)>,
    /// For each: whether it keeps its stored parents, and its stored attributes.
    pub(super) same: Vec<(bool, bool)>,
    pub(super) descendants: Option<Vec<(Ix, Box<[Ix]>)>>,
}

/// What a commit took out of the index (old nodes, closures, shared forms): dropped by the
/// caller once it let go of the lock, so that freeing them does not hold decisions up.
#[derive(Debug, Default)]
pub struct Retired {
    pub(super) batch: Vec<(EntityUid, Option<Value>)>,
    each: Vec<(Option<Ix>, Option<Node>)>,
    pub(super) nodes: Vec<Node>,
    edges: Vec<Box<[Ix]>>,
    pub(super) shared: Vec<super::Shared>,
    /// Lists of the children, reverse attribute and key indexes a fold replaced.
    pub(super) lists: Vec<Vec<Ix>>,
    /// Tables a published batch replaced with grown copies.
    pub(super) children: Option<HashMap<Ix, Vec<Ix>>>,
    pub(super) refs: Option<hashbrown::HashMap<super::reverse::RefKey, Vec<Ix>>>,
    /// A folded batch's emptied layer.
    pub(super) pending: Option<Box<super::layer::Pending>>,
    /// The uid table and slots a published batch replaced with grown copies.
    pub(super) index: Option<super::intern::UidTable>,
    pub(super) uids: Option<super::uids::Room>,
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

    /// Resolves the batch's uids and decodes its entities against `store` without changing
    /// it, so that a caller can do it holding only a read lock: committing to the same store
    /// then only swaps them in. (Anything the store does not number yet is left to the
    /// commit.)
    pub fn resolve(&mut self, store: &EntityStore) {
        let mut pacer = Pacer::new();
        let mut each: Vec<(Option<Ix>, Option<Node>)> = self
            .touched
            .iter()
            .map(|(uid, json)| {
                pacer.tick();
                let node = json.as_ref().and_then(|j| store.node_if_known(j));
                (store.lookup(uid), node)
            })
            .collect();
        let same = each
            .iter()
            .map(
                |(ix, node)| match (ix.and_then(|ix| store.node(ix)), node) {
                    (Some(old), Some(node)) => keeps(node, old),
                    _ => (false, false),
                },
            )
            .collect();
        let descendants = Self::closures(store, &self.touched, &mut each);
        self.resolved = Some(Resolved {
            store: store.identity.0,
            revision: store.revision,
            each,
            same,
            descendants,
        });
    }

    /// When every touched entity is numbered and every written one decoded: their closures
    /// as the batch leaves them, set in the nodes, and the new edges of those of their stored
    /// descendants whose ancestors change. None otherwise (the commit then computes them).
    pub(super) fn closures(
        store: &EntityStore,
        touched: &[(EntityUid, Option<Value>)],
        each: &mut [(Option<Ix>, Option<Node>)],
    ) -> Option<Vec<(Ix, Box<[Ix]>)>> {
        let mut next: HashMap<Ix, Option<&Node>> = HashMap::with_capacity(each.len());
        for ((_, json), (ix, node)) in touched.iter().zip(each.iter()) {
            let node = match (json, node) {
                (Some(_), None) => return None,
                (Some(_), Some(node)) => Some(node),
                (None, _) => None,
            };
            if next.insert((*ix)?, node).is_some() {
                return None;
            }
        }
        let mut closures = store.closures_after(&next);
        drop(next);
        for (ix, node) in each.iter_mut() {
            let closure = ix.and_then(|ix| closures.remove(&ix));
            if let (Some(node), Some(closure)) = (node, closure) {
                node.set_closure(&closure);
            }
        }
        // A descendant whose ancestors stay as they are is left as it is.
        let descendants = closures
            .into_iter()
            .filter_map(|(ix, closure)| {
                let node = &store.nodes[ix as usize];
                (node.closure() != closure.as_slice()).then(|| (ix, node.edges_with(&closure)))
            })
            .collect();
        Some(descendants)
    }

    /// How many of the touched entities [`Prepared::resolve`] numbered and decoded, and
    /// whether it worked out the closures.
    #[cfg(test)]
    pub(super) fn known(&self) -> (usize, usize, bool) {
        let each = self.resolved.iter().flat_map(|r| &r.each);
        let numbered = each.clone().filter(|(ix, _)| ix.is_some()).count();
        let decoded = each.filter(|(_, node)| node.is_some()).count();
        let closures = self.resolved.iter().any(|r| r.descendants.is_some());
        (numbered, decoded, closures)
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
        store.set_keys(&schema.keys);
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
        let prepared = self.prepare_entities(parse_entities(value, schema, &what)?, &what)?;
        if !schema.keys.is_empty() {
            let batch: std::collections::HashSet<&EntityUid> =
                prepared.touched.iter().map(|(u, _)| u).collect();
            let written = |u: &EntityUid| batch.contains(u);
            if let Some(clash) = self.key_clash(&schema.keys, prepared.upserts(), &written) {
                return Err(DataError::Invalid {
                    what,
                    message: clash,
                });
            }
        }
        if !schema.assumptions.is_empty() {
            let chain = Chain::default();
            let mut working = Working::new(self, &chain);
            for (uid, json) in &prepared.touched {
                working.set(uid.clone(), json.clone());
            }
            working
                .check_assumptions(schema, self.is_empty())
                .map_err(|v| DataError::Invalid {
                    what: what.clone(),
                    message: v.to_string(),
                })?;
        }
        Ok(prepared)
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
        self.index.reserve(&self.uids, n);
        self.nodes.reserve(n);
        self.shared.reserve(n);
    }

    /// Builds the children index and every closure after [`EntityStore::bulk_insert`].
    /// Refuses a hierarchy with a cycle (data written before writes were checked for one).
    pub fn finish_bulk(&mut self, revision: u64) -> Result<(), DataError> {
        self.children.clear();
        for (ix, node) in self.nodes.iter().enumerate() {
            for p in node.parents().iter() {
                self.children.entry(*p).or_default().push(ix as Ix);
            }
        }
        self.build_refs();
        self.build_keys();
        self.close_all().map_err(|e| DataError::Invalid {
            what: "stored entities".into(),
            message: e.to_string(),
        })?;
        self.revision = revision;
        Ok(())
    }

    /// A batch of upserts, without the hierarchy check.
    pub(super) fn prepare_unchecked(&self, batch: Vec<NewEntity>) -> Prepared {
        let chain = Chain::default();
        let mut working = Working::new(self, &chain);
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
        store.set_keys(&schema.keys);
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
        self.prepare_after(&Chain::default(), ops, schema)
    }

    /// Validates several write batches as consecutive revisions: each against the data as the
    /// accepted batches before it leave it, as if they had been committed one by one. A batch
    /// that fails is refused alone (its error in its place) and the next follows the last
    /// accepted one.
    pub fn prepare_chain(
        &self,
        batches: Vec<Vec<WriteOp>>,
        schema: &EntitySchema,
    ) -> Vec<Result<Prepared, RequestError>> {
        let mut chain = Chain::default();
        let mut out = Vec::with_capacity(batches.len());
        for ops in batches {
            let prepared = self.prepare_after(&chain, ops, schema);
            if let Ok(p) = &prepared {
                chain.extend(p);
            }
            out.push(prepared);
        }
        out
    }

    /// One batch on top of the store and the accepted batches of `chain`.
    fn prepare_after(
        &self,
        chain: &Chain,
        ops: Vec<WriteOp>,
        schema: &EntitySchema,
    ) -> Result<Prepared, RequestError> {
        let mut working = Working::new(self, chain);
        let mut pacer = Pacer::new();
        for (i, op) in ops.into_iter().enumerate() {
            pacer.tick();
            let field = Field::Ops(Some(i));
            match op {
                WriteOp::Upsert(value) => {
                    let e = parse_entity(value, schema, "upsert")
                        .map_err(|e| RequestError::new(field.clone(), e))?;
                    working.set(e.uid, Some(e.json));
                }
                WriteOp::Delete(uid) => working.set(uid, None),
                WriteOp::DeleteOwned(uid) => {
                    let doomed = working.owned(&uid, schema);
                    let gone: std::collections::HashSet<&EntityUid> = doomed.iter().collect();
                    // The children that stay, each once (a user in several deleted groups).
                    let mut staying = Vec::new();
                    let mut seen = std::collections::HashSet::new();
                    for d in &doomed {
                        for c in working.children(d) {
                            if !gone.contains(&c) && seen.insert(c.clone()) {
                                staying.push(c);
                            }
                        }
                    }
                    for child in staying {
                        let e = working
                            .edit_parents(&child, schema, |parents| {
                                parents.retain(|p| !gone.contains(p))
                            })
                            .map_err(|m| {
                                RequestError::new(field.clone(), format!("delete_owned: {m}"))
                            })?;
                        working.set(child, Some(e.json));
                    }
                    for d in doomed {
                        working.set(d, None);
                    }
                }
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
                        .map_err(|m| {
                            RequestError::new(field.clone(), format!("add_parent: {m}"))
                        })?;
                    working.set(child, Some(e.json));
                }
                WriteOp::RemoveParent { child, parent } => {
                    let e = working
                        .edit_parents(&child, schema, |parents| parents.retain(|p| p != &parent))
                        .map_err(|m| {
                            RequestError::new(field.clone(), format!("remove_parent: {m}"))
                        })?;
                    working.set(child, Some(e.json));
                }
            }
        }
        // The hierarchy as this batch leaves it: the chain's entities it does not touch too.
        let earlier = chain
            .upserts()
            .filter(|(uid, _)| !working.touched.contains_key(*uid));
        self.acyclic(earlier.chain(working.upserts()))
            .map_err(|m| RequestError::new(Field::Ops(None), m))?;
        // No declared key value with two owners, as the chain and this batch leave the data.
        let earlier = chain
            .upserts()
            .filter(|(uid, _)| !working.touched.contains_key(*uid));
        let written = |u: &EntityUid| working.touched.contains_key(u) || chain.touches(u);
        if let Some(clash) =
            self.key_clash(&schema.keys, earlier.chain(working.upserts()), &written)
        {
            return Err(RequestError::new(Field::Ops(None), clash));
        }
        // Then the pack's data assumptions, on an acyclic hierarchy.
        working
            .check_assumptions(schema, false)
            .map_err(|v| RequestError::new(Field::Ops(None), v.to_string()))?;
        Ok(working.finish())
    }

    /// A batch another writer validated (from a shared source's log): its entities are
    /// validated again under `schema`, and refused if they would close a hierarchy cycle.
    pub fn prepare_changes(
        &self,
        changes: &Changes,
        schema: &EntitySchema,
    ) -> Result<Prepared, DataError> {
        let what = format!("batch {}", changes.revision);
        let chain = Chain::default();
        let mut working = Working::new(self, &chain);
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
    /// affect (the touched ones and their descendants), or puts in the closures
    /// [`Prepared::resolve`] worked out against this very state. Cannot fail. Returns what it
    /// took out, for the caller to drop outside any lock.
    pub fn commit(&mut self, prepared: Prepared) -> Retired {
        self.settle();
        let mut retired = Retired::default();
        let mut touched = Vec::new();
        // What was resolved outside the lock holds only for this very store, and only if the
        // batch was not changed after; its closures only if nothing was committed since.
        let resolved = prepared
            .resolved
            .filter(|r| r.store == self.identity.0 && r.each.len() == prepared.touched.len());
        let mut descendants = None;
        let mut same = None;
        // Old nodes go back into the slots their new ones came from: nothing is allocated
        // under the lock for them.
        let mut resolved = resolved.map(|r| {
            if r.revision == self.revision {
                descendants = r.descendants;
                same = Some(r.same);
            }
            r.each
        });
        for (i, (uid, json)) in prepared.touched.iter().enumerate() {
            let mut slot = resolved.as_mut().map(|each| &mut each[i]);
            let (known_ix, known_node) = match slot.as_mut() {
                Some((ix, node)) => (*ix, node.take()),
                None => (None, None),
            };
            let ix = known_ix.unwrap_or_else(|| self.intern(uid));
            let shared = std::mem::take(&mut self.shared[ix as usize]);
            if shared.get().is_some() {
                retired.shared.push(shared);
            }
            let old = std::mem::take(&mut self.nodes[ix as usize]);
            let node = json
                .as_ref()
                .map(|json| known_node.unwrap_or_else(|| self.node_from_json(json)));
            // Rewriting an entity with the same parents or attributes (the common upsert)
            // leaves the children and reverse indexes as they are; otherwise only what
            // changed is updated.
            let (same_parents, same_attrs) = match (&same, &node) {
                (Some(same), Some(_)) => same[i],
                (None, Some(n)) if old.present => keeps(n, &old),
                _ => (false, false),
            };
            let no_attrs: &[(u16, super::Val)] = &[];
            let no_parents: &[Ix] = &[];
            let (new_attrs, new_parents) = match &node {
                Some(n) => (&n.attrs[..], n.parents()),
                None => (no_attrs, no_parents),
            };
            if !same_attrs {
                // (An absent node holds no attributes.)
                let old_attrs = &old.attrs[..];
                for (k, v) in old_attrs {
                    if !new_attrs.iter().any(|(k2, v2)| k2 == k && v2 == v) {
                        self.remove_attr_refs(ix, *k, v);
                    }
                }
                for (k, v) in new_attrs {
                    if !old_attrs.iter().any(|(k2, v2)| k2 == k && v2 == v) {
                        self.add_attr_refs(ix, *k, v);
                    }
                }
                if old.present {
                    self.remove_keys(ix, &old);
                }
                if let Some(n) = &node {
                    self.add_keys(ix, n);
                }
            }
            if !same_parents {
                for p in old.parents() {
                    if new_parents.contains(p) {
                        continue;
                    }
                    if let Some(c) = self.children.get_mut(p) {
                        c.retain(|x| *x != ix);
                        if c.is_empty() {
                            self.children.remove(p);
                        }
                    }
                }
                for p in new_parents {
                    if !old.parents().contains(p) {
                        self.children.entry(*p).or_default().push(ix);
                    }
                }
            }
            if old.present {
                self.present -= 1;
            }
            if node.is_some() {
                self.present += 1;
            }
            self.nodes[ix as usize] = node.unwrap_or_default();
            match slot {
                Some((_, kept)) => *kept = Some(old),
                None => retired.nodes.push(old),
            }
            if descendants.is_none() {
                touched.push(ix);
            }
        }
        match descendants {
            Some(descendants) => {
                for (ix, edges) in descendants {
                    retired.edges.push(self.nodes[ix as usize].put_edges(edges));
                }
            }
            None => self.refresh_closures(&touched),
        }
        self.revision = prepared.revision;
        retired.batch = prepared.touched;
        retired.each = resolved.unwrap_or_default();
        retired
    }
}

/// Whether `node` keeps `old`'s parents, and its attributes (each in any order).
fn keeps(node: &Node, old: &Node) -> (bool, bool) {
    (
        same_items(node.parents(), old.parents()),
        same_items(&node.attrs, &old.attrs),
    )
}

/// Whether two short lists without duplicates hold the same items, in any order.
fn same_items<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

/// The entities an entity's attribute names (itself, or a set's members), from its JSON.
fn attr_refs(json: &Value, attr: &str) -> Vec<EntityUid> {
    match json.get("attrs").and_then(|a| a.get(attr)) {
        Some(v @ Value::Array(_)) => json_uids(Some(v)),
        Some(v) => json_uid(Some(v)).into_iter().collect(),
        None => Vec::new(),
    }
}

impl EntityStore {
    /// The stored entities whose parents include `uid`.
    pub(super) fn stored_children(&self, uid: &EntityUid) -> Vec<EntityUid> {
        let Some(ix) = self.lookup(uid) else {
            return Vec::new();
        };
        self.children_of(ix)
            .into_iter()
            .flatten()
            .filter(|c| self.node(**c).is_some())
            .map(|c| self.uid_of(*c))
            .collect()
    }

    /// The stored entities whose attribute `attr` names `uid` (the reverse attribute index).
    fn stored_holders(&self, attr: &str, uid: &EntityUid) -> Vec<EntityUid> {
        let (Some(ix), Some(key)) = (self.lookup(uid), self.attr_ix.get(attr)) else {
            return Vec::new();
        };
        self.holders_of(*key, ix)
            .into_iter()
            .flatten()
            .filter(|h| self.node(**h).is_some())
            .map(|h| self.uid_of(*h))
            .collect()
    }
}

/// The accepted batches of a chain not yet in the store: the final JSON of every entity they
/// touch (None: deleted).
#[derive(Default)]
struct Chain {
    touched: HashMap<EntityUid, Option<Value>>,
    order: Vec<EntityUid>,
    batches: u64,
}

impl Chain {
    fn extend(&mut self, prepared: &Prepared) {
        for (uid, json) in &prepared.touched {
            if self.touched.insert(uid.clone(), json.clone()).is_none() {
                self.order.push(uid.clone());
            }
        }
        self.batches += 1;
    }

    fn upserts(&self) -> impl Iterator<Item = (&EntityUid, &Value)> {
        self.order
            .iter()
            .filter_map(|uid| self.touched.get(uid)?.as_ref().map(|j| (uid, j)))
    }

    fn touches(&self, uid: &EntityUid) -> bool {
        self.touched.contains_key(uid)
    }
}

/// The state of a batch being prepared: the final JSON of every touched entity (None:
/// deleted), over the unchanged store and the batches of a chain before it.
pub(super) struct Working<'a> {
    store: &'a EntityStore,
    chain: &'a Chain,
    touched: HashMap<EntityUid, Option<Value>>,
    order: Vec<EntityUid>,
}

impl<'a> Working<'a> {
    fn new(store: &'a EntityStore, chain: &'a Chain) -> Self {
        Working {
            store,
            chain,
            touched: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// The entities the batch writes so far (not those it deletes), in order.
    fn upserts(&self) -> impl Iterator<Item = (&EntityUid, &Value)> {
        self.order
            .iter()
            .filter_map(|uid| self.touched.get(uid)?.as_ref().map(|j| (uid, j)))
    }

    /// The entities this batch touched so far, in order.
    pub(super) fn touched_uids(&self) -> &[EntityUid] {
        &self.order
    }

    fn set(&mut self, uid: EntityUid, json: Option<Value>) {
        if self.touched.insert(uid.clone(), json).is_none() {
            self.order.push(uid);
        }
    }

    /// What this batch, or else the chain before it, left of `uid` (None: neither touched it;
    /// Some(None): deleted).
    fn written(&self, uid: &EntityUid) -> Option<&Option<Value>> {
        self.touched
            .get(uid)
            .or_else(|| self.chain.touched.get(uid))
    }

    fn exists(&self, uid: &EntityUid) -> bool {
        match self.written(uid) {
            Some(e) => e.is_some(),
            None => self.store.contains(uid),
        }
    }

    pub(super) fn json(&self, uid: &EntityUid) -> Option<Value> {
        match self.written(uid) {
            Some(e) => e.clone(),
            None => self.store.get_json(uid),
        }
    }

    /// The entities whose parents include `uid`, as the batch has them so far.
    pub(super) fn children(&self, uid: &EntityUid) -> Vec<EntityUid> {
        let has_parent = |json: &Value| json_uids(json.get("parents")).contains(uid);
        self.current_among(self.store.stored_children(uid), has_parent)
    }

    /// The entities whose attribute `attr` names `uid` (or holds it in a set), as the batch
    /// has them so far.
    pub(super) fn holders(&self, attr: &str, uid: &EntityUid) -> Vec<EntityUid> {
        let names = |json: &Value| attr_refs(json, attr).contains(uid);
        self.current_among(self.store.stored_holders(attr, uid), names)
    }

    /// Of the stored `candidates` and the entities the chain and the batch wrote, those whose
    /// version so far satisfies `holds`.
    fn current_among(
        &self,
        candidates: Vec<EntityUid>,
        holds: impl Fn(&Value) -> bool,
    ) -> Vec<EntityUid> {
        let mut out: Vec<EntityUid> = candidates
            .into_iter()
            .filter(|c| self.json(c).is_some_and(|j| holds(&j)))
            .collect();
        for uid in self.chain.order.iter().chain(&self.order) {
            if let Some(Some(json)) = self.written(uid) {
                if holds(json) && !out.contains(uid) {
                    out.push(uid.clone());
                }
            }
        }
        out
    }

    /// `root` and, transitively, what the lifecycle rules say it owns: the entities its owned
    /// attributes name and those whose owning attribute names it. Only entities that exist.
    fn owned(&self, root: &EntityUid, schema: &EntitySchema) -> Vec<EntityUid> {
        let rules = &schema.lifecycle;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut queue = vec![root.clone()];
        while let Some(e) = queue.pop() {
            if !self.exists(&e) || !seen.insert(e.clone()) {
                continue;
            }
            if let (Some(attrs), Some(json)) = (rules.owns.get(e.type_name()), self.json(&e)) {
                for a in attrs {
                    queue.extend(attr_refs(&json, a));
                }
            }
            for (held, attr) in rules.owned_by.get(e.type_name()).into_iter().flatten() {
                queue.extend(
                    self.holders(attr, &e)
                        .into_iter()
                        .filter(|h| h.type_name() == held),
                );
            }
            out.push(e);
        }
        out
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
        let revision = self.store.revision + 1 + self.chain.batches;
        let mut changes = Changes {
            revision,
            ..Default::default()
        };
        let mut touched = Vec::with_capacity(self.order.len());
        let mut final_state = self.touched;
        let mut pacer = Pacer::new();
        for uid in self.order {
            pacer.tick();
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
            resolved: None,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use cedar_policy::{EntityUid, Schema};
    use serde_json::{json, Value};

    use super::{EntityStore, WriteOp};
    use crate::engine::schema::EntitySchema;

    const SCHEMA: &str =
        "entity Team in [Team]; entity User in [Team] { lead?: User, teams?: Set<Team> };";

    pub(in crate::engine::index) fn uid(ty: &str, id: &str) -> EntityUid {
        format!("{ty}::\"{id}\"").parse().unwrap()
    }

    fn user(id: &str, parents: &[&str], lead: Option<&str>, teams: &[&str]) -> WriteOp {
        keyed_user(id, parents, lead, teams, "")
    }

    /// A `User` upsert with an optional `lead`, `teams` and (when not empty) `email`.
    pub(in crate::engine::index) fn keyed_user(
        id: &str,
        parents: &[&str],
        lead: Option<&str>,
        teams: &[&str],
        email: &str,
    ) -> WriteOp {
        let mut attrs = serde_json::Map::new();
        if let Some(l) = lead {
            attrs.insert(
                "lead".into(),
                json!({"__entity": {"type": "User", "id": l}}),
            );
        }
        if !teams.is_empty() {
            let teams: Vec<Value> = teams
                .iter()
                .map(|t| json!({"__entity": {"type": "Team", "id": t}}))
                .collect();
            attrs.insert("teams".into(), Value::Array(teams));
        }
        if !email.is_empty() {
            attrs.insert("email".into(), json!(email));
        }
        let parents: Vec<Value> = parents
            .iter()
            .map(|p| json!({"type": "Team", "id": p}))
            .collect();
        WriteOp::Upsert(
            json!({"uid": {"type": "User", "id": id}, "attrs": attrs, "parents": parents}),
        )
    }

    /// An entity, its children, and who names it as `lead` and in `teams`.
    type Indexed = (String, Vec<String>, Vec<String>, Vec<String>);

    /// The children and both reverse attribute indexes of every entity, as sorted texts.
    fn indexes(store: &EntityStore) -> Vec<Indexed> {
        let sorted = |v: Vec<EntityUid>| {
            let mut v: Vec<String> = v.iter().map(ToString::to_string).collect();
            v.sort();
            v
        };
        let mut all: Vec<EntityUid> = ["t1", "t2", "t3"].iter().map(|t| uid("Team", t)).collect();
        all.extend(["a", "b", "c", "d"].iter().map(|u| uid("User", u)));
        all.into_iter()
            .map(|e| {
                (
                    e.to_string(),
                    sorted(store.stored_children(&e)),
                    sorted(store.stored_holders("lead", &e)),
                    sorted(store.stored_holders("teams", &e)),
                )
            })
            .collect()
    }

    /// A commit updates the children and reverse indexes by what each entity's parents and
    /// attributes gained and lost (nothing when it is written again as it was), resolved
    /// beside decisions or not; after each batch both indexes equal those of a store built
    /// afresh from the same entities.
    #[test]
    fn a_commit_leaves_the_indexes_as_a_store_built_afresh() {
        let schema: Schema = SCHEMA.parse().unwrap();
        let schema = EntitySchema::new(schema, SCHEMA);
        let teams = |store: &mut EntityStore| {
            let ops = ["t1", "t2", "t3"]
                .iter()
                .map(|t| {
                    WriteOp::Upsert(
                        json!({"uid": {"type": "Team", "id": t}, "attrs": {}, "parents": []}),
                    )
                })
                .collect();
            store.commit(store.prepare(ops, &schema).unwrap());
        };
        let batches = [
            vec![
                user("a", &["t1"], Some("b"), &["t1", "t2"]),
                user("b", &["t1", "t2"], None, &["t1"]),
                user("c", &["t3"], Some("a"), &[]),
                user("d", &[], Some("a"), &["t3"]),
            ],
            // The same entities in another order of parents and set members.
            vec![
                user("a", &["t1"], Some("b"), &["t2", "t1"]),
                user("b", &["t2", "t1"], None, &["t1"]),
            ],
            vec![
                user("a", &["t2", "t1"], Some("c"), &["t2", "t3"]),
                user("b", &["t3"], Some("d"), &[]),
            ],
            vec![
                WriteOp::Delete(uid("User", "c")),
                user("d", &["t1"], None, &["t1", "t2", "t3"]),
                WriteOp::RemoveParent {
                    child: uid("User", "a"),
                    parent: uid("Team", "t1"),
                },
            ],
        ];
        for resolve in [false, true] {
            let mut store = EntityStore::default();
            teams(&mut store);
            for (i, ops) in batches.iter().enumerate() {
                let mut prepared = store.prepare(ops.clone(), &schema).unwrap();
                if resolve {
                    prepared.resolve(&store);
                    assert!(i == 0 || prepared.known().2, "batch {i} resolved whole");
                }
                store.commit(prepared);
                let afresh = store.rebuild(&schema).unwrap();
                assert_eq!(
                    indexes(&store),
                    indexes(&afresh),
                    "batch {i}, resolve {resolve}"
                );
            }
            // The last state, spelled out: a lost t1, d lost its lead, c is gone.
            let ix = indexes(&store);
            let t1 = ix.iter().find(|e| e.0 == r#"Team::"t1""#).unwrap();
            assert_eq!(t1.1, vec![r#"User::"d""#.to_string()]);
            assert_eq!(t1.3, vec![r#"User::"d""#.to_string()]);
            let a = ix.iter().find(|e| e.0 == r#"User::"a""#).unwrap();
            assert!(a.2.is_empty(), "nobody's lead is a any more: {a:?}");
        }
    }
}
