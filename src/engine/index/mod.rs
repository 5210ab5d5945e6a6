//! The entity index: entities validated against the schema on write, kept in a compact index
//! of our own (interned uids, typed attribute values, every entity's ancestor closure
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
//!
//! The rooms: [`entity`] (parsing and schema validation), [`intern`] (uids and nodes),
//! [`write`] (batches and commits), [`pending`] (batches staged beside decisions, published
//! whole and folded in steps, over a [`layer`]), [`slab`] (tables that grow without moving),
//! [`graph`] (closures and cycles), [`overlay`]
//! (request-scoped entities), [`slice`] (per-request Cedar entities), [`facts`] (what plans
//! read), [`reverse`] (the reverse attribute index and what listing reads), [`keys`] (entities named by a
//! declared key), [`decode`] (the start-up decoder), [`footprint`] (where its bytes go).

mod assumed;
mod decode;
mod entity;
mod facts;
mod footprint;
mod graph;
mod hierarchy;
mod intern;
mod keys;
mod layer;
mod overlay;
mod pending;
mod reverse;
mod slab;
mod slice;
mod stream;
mod uids;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast;
use serde_json::{Map, Value};

pub use self::decode::{parse_chunk, Parsed};
pub use self::entity::{parse_entities, parse_entity, NewEntity};
pub use self::footprint::Footprint;
pub use self::hierarchy::{Hierarchy, HierarchyError};
pub use self::keys::KeyDecl;
pub use self::overlay::Overlay;
pub use self::pending::{Staged, Staging};
pub use self::reverse::ListView;
pub use self::stream::each_in_array;
pub use self::write::{Changes, Prepared, Retired, WriteOp};
pub use crate::engine::facts::Ix;
use crate::engine::json::uid_json;

/// An attribute value, with entity references as indexes.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Entity(Ix),
    Bool(bool),
    Long(i64),
    // Boxed twice: a thin pointer keeps a value at 16 bytes (an attribute at 24), where
    // strings, sets and records are rare and entity references common.
    Str(Box<Box<str>>),
    Set(Box<Box<[Val]>>),
    Record(Box<Fields>),
    /// An extension value (`decimal("1.0")`, `ip("10.0.0.1")`): function and argument.
    Ext(Box<(Box<str>, Box<str>)>),
}

/// Named values: a record's fields, an entity's tags.
type Fields = Box<[(Box<str>, Val)]>;

/// One stored entity, in 48 bytes: its parents and its closure share one allocation, and
/// tags (rare) cost a null pointer when absent.
#[derive(Debug, Clone, Default)]
struct Node {
    /// The parents, then every ancestor sorted (the closure).
    edges: Box<[Ix]>,
    attrs: Box<[(u16, Val)]>,
    tags: Option<Box<Fields>>,
    /// How many of `edges` are parents.
    n_parents: u32,
    present: bool,
}

// The sizes the index's memory figures rest on (BENCHMARKS.md, issue 35).
const _: () = assert!(std::mem::size_of::<Val>() == 16);
const _: () = assert!(std::mem::size_of::<Node>() == 48);

impl Node {
    /// A present node with these parents and attributes (closure not yet computed).
    fn new(parents: Box<[Ix]>, attrs: Box<[(u16, Val)]>, tags: Option<Fields>) -> Node {
        Node {
            n_parents: parents.len() as u32,
            edges: parents,
            attrs,
            tags: tags.map(Box::new),
            present: true,
        }
    }

    fn parents(&self) -> &[Ix] {
        &self.edges[..self.n_parents as usize]
    }

    fn parents_mut(&mut self) -> &mut [Ix] {
        &mut self.edges[..self.n_parents as usize]
    }

    /// Every ancestor, sorted.
    fn closure(&self) -> &[Ix] {
        &self.edges[self.n_parents as usize..]
    }

    /// Replaces the parents (and forgets the closure, to be computed again).
    fn set_parents(&mut self, parents: Box<[Ix]>) {
        self.n_parents = parents.len() as u32;
        self.edges = parents;
    }

    fn set_closure(&mut self, closure: &[Ix]) {
        self.edges = self.edges_with(closure);
    }

    /// This node's parents and `closure`, as one allocation (for [`Node::put_edges`]).
    fn edges_with(&self, closure: &[Ix]) -> Box<[Ix]> {
        let mut edges = Vec::with_capacity(self.n_parents as usize + closure.len());
        edges.extend_from_slice(self.parents());
        edges.extend_from_slice(closure);
        edges.into_boxed_slice()
    }

    /// Puts in edges made by [`Node::edges_with`] (same parents, another closure); returns
    /// the old ones.
    fn put_edges(&mut self, edges: Box<[Ix]>) -> Box<[Ix]> {
        debug_assert_eq!(&edges[..self.n_parents as usize], self.parents());
        std::mem::replace(&mut self.edges, edges)
    }
}

/// A slot for an entity's shared Cedar form: set at most once (a pointer, 8 bytes a slot).
type Shared = once_cell::race::OnceBox<Arc<ast::Entity>>;

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
    /// The types' names as text, by number.
    type_texts: Vec<Box<str>>,
    attr_names: Vec<Arc<str>>,
    attr_ix: HashMap<Arc<str>, u16>,
    uids: uids::Uids,
    index: intern::UidTable,
    nodes: slab::Slab<Node>,
    /// The Cedar form of entities without parents, reached through another entity's
    /// attribute (projects, companies): the same in every slice, so built once and shared.
    /// Reset when the entity is written.
    shared: slab::Slab<Shared>,
    children: HashMap<Ix, Vec<Ix>>,
    /// The reverse attribute index: who refers to an entity through which attribute (see
    /// [`reverse`]).
    refs: hashbrown::HashMap<reverse::RefKey, Vec<Ix>>,
    /// Attribute keys some stored entity has held a record in.
    record_attrs: std::collections::HashSet<u16>,
    /// The declared keys' index (see [`keys`]).
    keys: keys::Keys,
    present: usize,
    /// The revision of the last committed change set (0: nothing written yet).
    revision: u64,
    /// Which store this is: what a batch resolved against it outside the lock may trust.
    identity: Identity,
    /// A published batch not yet folded into the tables above: read first (see [`pending`]).
    pending: Option<Box<layer::Pending>>,
}

/// A store's identity: new for every store and every clone (a clone's numbering may diverge
/// from its original's). Uid, type and attribute numbers are only ever added, so a number
/// resolved against a store stays valid in that store.
#[derive(Debug, PartialEq, Eq)]
struct Identity(u64);

impl Identity {
    fn fresh() -> Identity {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Identity(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for Identity {
    fn default() -> Self {
        Identity::fresh()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity::fresh()
    }
}

impl EntityStore {
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
        for (_, key, node) in self.each_stored() {
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

    /// The ids of the entities of a type the store holds, sorted (none for a type it does
    /// not know).
    pub fn ids_of_type(&self, ty: &EntityTypeName) -> Vec<String> {
        let Some(t) = self.type_ix.get(ty).copied() else {
            return Vec::new();
        };
        let mut out: Vec<String> = self
            .each_stored()
            .filter(|(_, key, node)| key.ty == t && node.present)
            .map(|(_, key, _)| key.id.to_string())
            .collect();
        out.sort_unstable();
        out
    }

    pub fn lookup(&self, uid: &EntityUid) -> Option<Ix> {
        let ty = *self.type_ix.get(uid.type_name())?;
        self.find(ty, uid.id().unescaped())
    }

    /// The number of a uid, if it has one (in the tables, or new with a published batch).
    fn find(&self, ty: u16, id: &str) -> Option<Ix> {
        self.index.get(&self.uids, ty, id).or_else(|| {
            let p = self.pending()?;
            p.extra_ix.get(&UidRef { ty, id }).copied()
        })
    }

    /// How many uids are numbered, counting those new with a published batch.
    fn numbered(&self) -> usize {
        match self.pending() {
            Some(p) => self.uids.len().max(p.first + p.extra.len()),
            None => self.uids.len(),
        }
    }

    /// The uid numbered `ix` (numbers come from the store).
    fn uid_key(&self, ix: Ix) -> uids::Uid<'_> {
        if (ix as usize) < self.uids.len() {
            return self.uids.get(ix);
        }
        let p = self
            .pending()
            .expect("a number past the tables is a published batch's");
        let key = &p.extra[ix as usize - p.first];
        uids::Uid {
            ty: key.ty,
            id: key.id.as_str(),
        }
    }

    /// The type number of `ix`, if it is numbered.
    fn uid_type(&self, ix: Ix) -> Option<u16> {
        ((ix as usize) < self.numbered()).then(|| self.uid_key(ix).ty)
    }

    fn node(&self, ix: Ix) -> Option<&Node> {
        self.stored(ix).filter(|n| n.present)
    }

    /// Every numbered entity with its node as the last published batch leaves it.
    fn each_stored(&self) -> impl Iterator<Item = (Ix, uids::Uid<'_>, &Node)> {
        (0..self.numbered() as Ix).filter_map(|ix| Some((ix, self.uid_key(ix), self.stored(ix)?)))
    }

    /// Folds a published batch in whole (before anything that changes the tables).
    pub(super) fn settle(&mut self) {
        while !self.fold(usize::MAX).0 {}
    }

    pub fn contains(&self, uid: &EntityUid) -> bool {
        self.lookup(uid).and_then(|ix| self.node(ix)).is_some()
    }

    fn core_uid_of(&self, ix: Ix) -> ast::EntityUID {
        let key = self.uid_key(ix);
        ast::EntityUID::from_components(
            self.core_types[key.ty as usize].clone(),
            ast::Eid::new(smol_str::SmolStr::new(key.id)),
            None,
        )
    }

    fn uid_of(&self, ix: Ix) -> EntityUid {
        let key = self.uid_key(ix);
        EntityUid::from_type_name_and_id(self.types[key.ty as usize].clone(), EntityId::new(key.id))
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
                node.parents()
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
}
