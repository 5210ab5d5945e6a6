//! The start-up decoder: stored entities (canonical Cedar JSON, validated when written)
//! deserialized straight into index nodes, without building `serde_json::Value`s, by chunks
//! that can be parsed on another thread ([`parse_chunk`]) and then added to the index
//! ([`EntityStore::add_parsed`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use super::{EntityStore, Fields, Ix, Node, UidKey, UidRef, Val};
use crate::engine::error::DataError;

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
            for p in node.parents_mut().iter_mut() {
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
                "parents" => node.set_parents(map.next_value_seed(UidsSeed(store))?),
                "attrs" => node.attrs = map.next_value_seed(AttrsSeed(store))?,
                "tags" => {
                    let tags = map.next_value_seed(FieldsSeed(store))?;
                    node.tags = (!tags.is_empty()).then(|| Box::new(tags));
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
        Ok(Val::Str(Box::new(v.into())))
    }
    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Record(Box::default()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(ValSeed(self.0))? {
            out.push(v);
        }
        Ok(Val::Set(Box::new(out.into())))
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
        Ok(Val::Record(Box::new(fields.into())))
    }
}
