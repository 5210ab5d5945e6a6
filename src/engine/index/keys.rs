//! Declared keys: String attributes by which a caller may name an entity instead of its id
//! (the pack's `names.toml`, `[keys] user = ["email", "pid"]`), so a deployment whose callers
//! name people by an IdP key stores each person once. Indexed value → owners, kept current by
//! every commit and built again when the declaration changes; a write that gives a value a
//! second owner is refused ([`EntityStore::key_clash`]), and a name that still has two owners
//! (data written before the declaration) is a clear error where it is used, never a guess.

use std::collections::HashMap;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde_json::Value;

use super::{EntityStore, Ix, Node, Val};

/// The keys a pack declares: per entity type, its key attributes.
pub type KeyDecl = Vec<(EntityTypeName, Vec<String>)>;

/// One key attribute of one type: its values and the entities that hold each.
#[derive(Debug, Clone)]
struct KeyIndex {
    attr: Box<str>,
    owners: HashMap<Box<str>, Vec<Ix>>,
}

/// The index: per type number, its key attributes with their values' owners.
#[derive(Debug, Clone, Default)]
pub(super) struct Keys {
    declared: KeyDecl,
    by_type: HashMap<u16, Vec<KeyIndex>>,
}

impl Keys {
    /// The index's heap, estimated from its capacities (see `footprint`).
    pub(super) fn footprint(&self) -> usize {
        self.by_type
            .values()
            .flatten()
            .map(|k| {
                k.owners.capacity() * (std::mem::size_of::<(Box<str>, Vec<Ix>)>() + 1)
                    + k.owners
                        .iter()
                        .map(|(v, o)| v.len() + o.capacity() * std::mem::size_of::<Ix>())
                        .sum::<usize>()
            })
            .sum()
    }
}

impl EntityStore {
    /// Indexes the declared keys (a no-op when they are the ones indexed already).
    pub fn set_keys(&mut self, declared: &KeyDecl) {
        self.settle();
        if self.keys.declared == *declared {
            return;
        }
        let mut keys = Keys {
            declared: declared.clone(),
            ..Keys::default()
        };
        for (ty, attrs) in declared {
            let t = match self.type_ix.get(ty) {
                Some(t) => *t,
                None => self.add_type(ty.clone()),
            };
            let index = attrs
                .iter()
                .map(|a| KeyIndex {
                    attr: a.as_str().into(),
                    owners: HashMap::new(),
                })
                .collect();
            keys.by_type.insert(t, index);
        }
        self.keys = keys;
        self.build_keys();
    }

    /// Indexes every stored entity's key values again (after a bulk load).
    pub(super) fn build_keys(&mut self) {
        if self.keys.by_type.is_empty() {
            return;
        }
        for index in self.keys.by_type.values_mut().flatten() {
            index.owners.clear();
        }
        let nodes = std::mem::take(&mut self.nodes);
        for (ix, node) in nodes.iter().enumerate() {
            if node.present {
                self.add_keys(ix as Ix, node);
            }
        }
        self.nodes = nodes;
    }

    /// The key values of a node: (position among its type's keys, value) for each declared
    /// key it holds.
    pub(super) fn key_values<'n>(&self, ix: Ix, node: &'n Node) -> Vec<(usize, &'n str)> {
        self.key_values_of(self.uid_key(ix).ty, node)
    }

    /// The key values of a node of type number `ty`.
    pub(super) fn key_values_of<'n>(&self, ty: u16, node: &'n Node) -> Vec<(usize, &'n str)> {
        let Some(keys) = self.keys.by_type.get(&ty) else {
            return Vec::new();
        };
        node.attrs
            .iter()
            .filter_map(|(k, v)| {
                let name = &*self.attr_names[*k as usize];
                let at = keys.iter().position(|key| *key.attr == *name)?;
                match v {
                    Val::Str(s) => Some((at, &***s)),
                    _ => None,
                }
            })
            .collect()
    }

    pub(super) fn add_keys(&mut self, ix: Ix, node: &Node) {
        let values = self.key_values(ix, node);
        let ty = self.uids.get(ix).ty;
        let Some(keys) = self.keys.by_type.get_mut(&ty) else {
            return;
        };
        for (at, value) in values {
            keys[at].owners.entry(value.into()).or_default().push(ix);
        }
    }

    pub(super) fn remove_keys(&mut self, ix: Ix, node: &Node) {
        let values = self.key_values(ix, node);
        let ty = self.uids.get(ix).ty;
        let Some(keys) = self.keys.by_type.get_mut(&ty) else {
            return;
        };
        for (at, value) in values {
            let owners = &mut keys[at].owners;
            if let Some(held) = owners.get_mut(value) {
                held.retain(|o| *o != ix);
                if held.is_empty() {
                    owners.remove(value);
                }
            }
        }
    }

    /// The owners of a key value in the tables beneath a published batch: type number,
    /// position among the type's keys, value.
    pub(super) fn key_owners_beneath(&self, ty: u16, at: usize, value: &str) -> Option<&Vec<Ix>> {
        self.keys.by_type.get(&ty)?.get(at)?.owners.get(value)
    }

    /// The owners of a key value as the last published batch leaves them.
    fn owners_at(&self, ty: u16, at: usize, value: &str) -> Option<&Vec<Ix>> {
        if let Some(p) = self.pending() {
            if let Some(list) = p.keys.get(&(ty, at, Box::from(value))) {
                return Some(list);
            }
        }
        self.key_owners_beneath(ty, at, value)
    }

    /// Puts in a key value's final owners (none: the value is removed); returns the old ones.
    pub(super) fn put_key_owners(
        &mut self,
        (ty, at, value): &(u16, usize, Box<str>),
        owners: Vec<Ix>,
    ) -> Option<Vec<Ix>> {
        let index = &mut self.keys.by_type.get_mut(ty)?.get_mut(*at)?.owners;
        if owners.is_empty() {
            index.remove(value)
        } else {
            index.insert(value.clone(), owners)
        }
    }

    /// The stored entities of type number `ty` whose key attribute `attr` is `value`.
    fn key_owners(&self, ty: u16, attr: &str, value: &str) -> Vec<Ix> {
        self.keys
            .by_type
            .get(&ty)
            .and_then(|keys| keys.iter().position(|k| *k.attr == *attr))
            .and_then(|at| self.owners_at(ty, at, value))
            .map(|o| {
                o.iter()
                    .copied()
                    .filter(|ix| self.node(*ix).is_some())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The entity a name of type `ty` stands for: the entity whose id it is, or the one whose
    /// declared key has that value. `Ok(None)`: take the name as an id (the type has no keys,
    /// or no key has that value). An error when the name belongs to two entities.
    pub fn resolve_name(
        &self,
        ty: &EntityTypeName,
        name: &str,
    ) -> Result<Option<EntityUid>, String> {
        if self.keys.by_type.is_empty() {
            return Ok(None);
        }
        let Some(t) = self.type_ix.get(ty).copied() else {
            return Ok(None);
        };
        let Some(keys) = self.keys.by_type.get(&t) else {
            return Ok(None);
        };
        let by_id = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(name));
        let id_owner = self.lookup(&by_id).filter(|ix| self.node(*ix).is_some());
        // Each entity the name stands for, with how (None: by its id).
        let mut owners: Vec<(Option<&str>, Ix)> =
            id_owner.map(|ix| (None, ix)).into_iter().collect();
        for (at, key) in keys.iter().enumerate() {
            for ix in self.owners_at(t, at, name).into_iter().flatten() {
                if self.node(*ix).is_some() && !owners.iter().any(|(_, o)| o == ix) {
                    owners.push((Some(&key.attr), *ix));
                }
            }
        }
        match owners.as_slice() {
            [] => Ok(None),
            [(_, ix)] => Ok(Some(self.uid_of(*ix))),
            many => Err(format!(
                "`{}` names more than one {ty}: {}",
                crate::engine::error::quote(name),
                many.iter()
                    .map(|(how, ix)| format!("{} by its {}", self.uid_of(*ix), how.unwrap_or("id")))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Why a batch's entities would give a declared key value a second owner, if they would:
    /// `upserts` are the entities as the batch (and any batch before it not yet committed)
    /// leaves them; `written` says whether an entity is among them (its stored values no
    /// longer count).
    pub(super) fn key_clash<'a>(
        &self,
        declared: &KeyDecl,
        upserts: impl Iterator<Item = (&'a EntityUid, &'a Value)>,
        written: &dyn Fn(&EntityUid) -> bool,
    ) -> Option<String> {
        if declared.is_empty() {
            return None;
        }
        let mut seen: HashMap<(&EntityTypeName, &str, &str), &EntityUid> = HashMap::new();
        for (uid, json) in upserts {
            let Some((ty, attrs)) = declared.iter().find(|(t, _)| t == uid.type_name()) else {
                continue;
            };
            for attr in attrs {
                let Some(Value::String(v)) = json.get("attrs").and_then(|a| a.get(attr)) else {
                    continue;
                };
                let clash = |other: &EntityUid| {
                    format!(
                        "{uid} would give its key `{attr}` the value `{}`, which is {other}'s: a key names one entity",
                        crate::engine::error::quote(v)
                    )
                };
                if let Some(other) = seen.insert((ty, attr, v), uid) {
                    return Some(clash(other));
                }
                let t = self.type_ix.get(ty).copied();
                for ix in t.map(|t| self.key_owners(t, attr, v)).unwrap_or_default() {
                    let other = self.uid_of(ix);
                    if other != *uid && !written(&other) {
                        return Some(clash(&other));
                    }
                }
            }
        }
        None
    }
}
