//! Interning: uids, entity types and attribute names become small numbers, and stored entities
//! (canonical Cedar JSON) become index nodes with entity references as indexes.

use std::sync::Arc;

use cedar_policy::{EntityTypeName, EntityUid};
use serde_json::Value;

use super::uids::Uids;
use super::{EntityStore, Fields, Ix, Node, Shared, UidRef, Val};
use crate::engine::json::{json_uid, json_uid_parts};
use crate::engine::schema::plain_type;

impl EntityStore {
    pub(super) fn intern(&mut self, uid: &EntityUid) -> Ix {
        let ty = match self.type_ix.get(uid.type_name()) {
            Some(t) => *t,
            None => self.add_type(uid.type_name().clone()),
        };
        self.intern_id(ty, uid.id().unescaped())
    }

    pub(super) fn add_type(&mut self, ty: EntityTypeName) -> u16 {
        let t = self.types.len() as u16;
        self.core_types.push(plain_type(ty.as_ref()));
        let text: Box<str> = ty.to_string().into();
        self.type_by_name.insert(text.clone(), t);
        self.type_texts.push(text);
        self.type_ix.insert(ty.clone(), t);
        self.types.push(ty);
        t
    }

    /// Interns a uid given as JSON text parts, parsing the type name only the first time it
    /// is seen. None if the type name is not one.
    pub(super) fn intern_parts(&mut self, ty: &str, id: &str) -> Option<Ix> {
        let t = self.type_of(ty)?;
        Some(self.intern_id(t, id))
    }

    /// The number of a type, added if new; None if `ty` is not a type name.
    pub(super) fn type_of(&mut self, ty: &str) -> Option<u16> {
        match self.type_by_name.get(ty) {
            Some(t) => Some(*t),
            None => Some(self.add_type(ty.parse().ok()?)),
        }
    }

    pub(super) fn intern_id(&mut self, ty: u16, id: &str) -> Ix {
        if let Some(ix) = self.index.get(&self.uids, ty, id) {
            return ix;
        }
        let ix = self.uids.push(ty, id);
        self.index.insert(&self.uids, ix);
        self.nodes.push(Node::default());
        self.shared.push(Shared::new());
        ix
    }

    pub(super) fn attr_key(&mut self, name: &str) -> u16 {
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
    pub(super) fn node_from_json(&mut self, json: &Value) -> Node {
        let parsed = parse_node(self, json);
        let attrs = parsed
            .attrs
            .into_iter()
            .map(|(k, v)| (self.attr_key(&k), v))
            .collect();
        Node::new(parsed.parents, attrs, parsed.tags)
    }
}

/// The uid table: each uid's number, found by hashing `(type, id)`. It holds only the
/// numbers (4 bytes a bucket); the keys it compares and rehashes are the store's `uids`, so
/// a uid is kept once, not twice.
#[derive(Debug, Clone, Default)]
pub(super) struct UidTable {
    table: hashbrown::HashTable<Ix>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl UidTable {
    fn hash(&self, ty: u16, id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(UidRef { ty, id })
    }

    pub(super) fn get(&self, uids: &Uids, ty: u16, id: &str) -> Option<Ix> {
        self.table
            .find(self.hash(ty, id), |&ix| {
                let k = uids.get(ix);
                k.ty == ty && k.id == id
            })
            .copied()
    }

    /// Adds `ix`, whose key is `uids[ix]` (not in the table yet).
    pub(super) fn insert(&mut self, uids: &Uids, ix: Ix) {
        let k = uids.get(ix);
        let hash = self.hash(k.ty, k.id);
        let hasher = &self.hasher;
        self.table.insert_unique(hash, ix, |&i| {
            use std::hash::BuildHasher;
            let k = uids.get(i);
            hasher.hash_one(UidRef { ty: k.ty, id: k.id })
        });
    }

    pub(super) fn reserve(&mut self, uids: &Uids, n: usize) {
        let hasher = &self.hasher;
        self.table.reserve(n, |&i| {
            use std::hash::BuildHasher;
            let k = uids.get(i);
            hasher.hash_one(UidRef { ty: k.ty, id: k.id })
        });
    }

    pub(super) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// A copy with room for `n` more numbers, if this table has not: grown beside decisions.
    pub(super) fn grown(&self, uids: &Uids, n: usize) -> Option<UidTable> {
        (self.capacity() - self.len() < n).then(|| {
            let mut t = self.clone();
            t.reserve(uids, n.max(self.len()));
            t
        })
    }
}

/// Turns uids into indexes: interning in the store, per request in a view.
pub(super) trait Resolve {
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

/// Resolves only what the store already numbers, reading it (beside decisions); anything new
/// marks the result unusable, to be interned under the lock instead.
pub(super) struct Existing<'a> {
    pub(super) store: &'a EntityStore,
    pub(super) missing: bool,
}

impl Resolve for Existing<'_> {
    fn ix(&mut self, uid: &EntityUid) -> Ix {
        self.store.lookup(uid).unwrap_or_else(|| {
            self.missing = true;
            0
        })
    }

    fn json_ix(&mut self, v: &Value) -> Option<Ix> {
        let (ty, id) = json_uid_parts(v)?;
        let found = self
            .store
            .type_by_name
            .get(ty)
            .and_then(|t| self.store.index.get(&self.store.uids, *t, id));
        if found.is_none() {
            self.missing = true;
        }
        Some(found.unwrap_or(0))
    }
}

impl EntityStore {
    /// A node from canonical Cedar JSON decoded without changing the store, if everything it
    /// names (entities, their types, attribute names) is numbered already.
    pub(super) fn node_if_known(&self, json: &Value) -> Option<Node> {
        let mut r = Existing {
            store: self,
            missing: false,
        };
        let parsed = parse_node(&mut r, json);
        if r.missing {
            return None;
        }
        let attrs = parsed
            .attrs
            .into_iter()
            .map(|(k, v)| self.attr_ix.get(k.as_str()).map(|key| (*key, v)))
            .collect::<Option<Box<[_]>>>()?;
        Some(Node::new(parsed.parents, attrs, parsed.tags))
    }
}

/// An entity's parts from canonical Cedar JSON.
pub(super) struct ParsedNode {
    pub(super) parents: Box<[Ix]>,
    pub(super) attrs: Vec<(String, Val)>,
    pub(super) tags: Option<Fields>,
}

pub(super) fn parse_node(r: &mut impl Resolve, json: &Value) -> ParsedNode {
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
        Value::String(s) => Val::Str(Box::new(s.as_str().into())),
        Value::Array(items) => Val::Set(Box::new(
            items.iter().map(|i| val_from_json(r, i)).collect(),
        )),
        Value::Object(map) => {
            if let Some(ix) = map.get("__entity").and_then(|e| r.json_ix(e)) {
                return Val::Entity(ix);
            }
            if let Some(x) = map.get("__extn") {
                let func = x.get("fn").and_then(Value::as_str).unwrap_or_default();
                let arg = x.get("arg").and_then(Value::as_str).unwrap_or_default();
                return Val::Ext(Box::new((func.into(), arg.into())));
            }
            Val::Record(Box::new(
                map.iter()
                    .map(|(k, v)| (Box::from(k.as_str()), val_from_json(r, v)))
                    .collect(),
            ))
        }
        Value::Null => Val::Record(Box::default()),
    }
}

/// Every entity index inside a value.
pub(super) fn entity_vals(v: &Val, out: &mut Vec<Ix>) {
    match v {
        Val::Entity(ix) => out.push(*ix),
        Val::Set(items) => items.iter().for_each(|i| entity_vals(i, out)),
        Val::Record(fields) => fields.iter().for_each(|(_, v)| entity_vals(v, out)),
        _ => {}
    }
}
