//! What every AuthZEN call does with its input: the body read as JSON with the path of a
//! wrong member (`evaluations[1].subject.id`), subjects and resources named by the pack's
//! outside names turned into Cedar references, `properties` into request-scoped entities
//! (the stored entity's attributes with the given ones laid over them), and `context` into
//! the Cedar context.

use std::borrow::Cow;

use cedar_policy::{EntityId, EntityUid};
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::wire::{Action, Entity};
use crate::engine::error::{unknown_name, RequestError};
use crate::engine::index::EntityStore;
use crate::engine::pack::{ActionProperties, PolicyPack};

/// A JSON path in the request, for errors.
pub(super) type At = Cow<'static, str>;

/// Parses a body that must be a JSON object of type `T`; a member of the wrong shape is
/// named by its path.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(RequestError::edge(
            "request",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let e = e.into_inner();
        if e.is_syntax() || e.is_eof() || path == "." || path.is_empty() {
            RequestError::edge("request", format!("invalid JSON: {e}"))
        } else {
            RequestError::edge(path, e)
        }
    })?;
    de.end()
        .map_err(|e| RequestError::edge("request", format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// The items of a JSON array member (`field`), decoded one at a time and refused as soon as
/// there are more than `max`: the array is never decoded whole first, so a body of a million
/// `{}` costs no more than `max` items do. An item of the wrong shape is named by its path
/// (`evaluations[3].subject.id`).
pub(super) fn bounded_items<T: DeserializeOwned>(
    raw: &RawValue,
    field: &str,
    max: usize,
) -> Result<Vec<T>, RequestError> {
    let over = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let mut track = serde_path_to_error::Track::new();
    let seed = Items::<T> {
        max,
        over: &over,
        item: PhantomData,
    };
    let items = seed
        .deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
        .map_err(|e| {
            if over.get() {
                return RequestError::edge(
                    field.to_string(),
                    format!("more than {max} items exceed the limit of {max} per call"),
                );
            }
            let path = track.path().to_string();
            match path.as_str() {
                "" | "." => RequestError::edge(field.to_string(), e),
                p => RequestError::edge(format!("{field}{p}"), e),
            }
        })?;
    Ok(items)
}

/// The seed and visitor of [`bounded_items`].
struct Items<'a, T> {
    max: usize,
    over: &'a std::cell::Cell<bool>,
    item: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Items<'_, T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Items<'_, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(1024));
        while let Some(item) = seq.next_element()? {
            if out.len() == self.max {
                self.over.set(true);
                return Err(A::Error::custom("too many items"));
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// A subject or resource as Cedar names it: its entity type's name and its id (the id of
/// the entity a declared key names, when the given id is such a key's value).
pub(super) struct Named<'a> {
    pub ty: &'a str,
    pub id: Cow<'a, str>,
    pub entity: &'a Entity,
    pub at: &'a str,
}

/// Maps an entity's outside `type` to the pack's Cedar type; `need_id`: the id is required.
pub(super) fn named<'a>(
    pack: &'a PolicyPack,
    store: &EntityStore,
    e: &'a Entity,
    at: &'a str,
    need_id: bool,
) -> Result<Named<'a>, RequestError> {
    if e.ty.is_empty() {
        return Err(RequestError::edge(format!("{at}.type"), "is empty"));
    }
    let ty = pack.names.cedar_type(&e.ty);
    let known = pack
        .entity_type(ty)
        .filter(|t| Some(*t) != pack.action_type());
    if known.is_none() {
        return Err(RequestError::edge(
            format!("{at}.type"),
            unknown_name("types", &e.ty, &known_types(pack)),
        ));
    }
    let id = e.id.as_deref().unwrap_or("");
    if need_id && id.is_empty() {
        return Err(RequestError::edge(format!("{at}.id"), "is required"));
    }
    let id = match known.and_then(|t| store.resolve_name(t, id).transpose()) {
        None => Cow::Borrowed(id),
        Some(Ok(owner)) => Cow::Owned(owner.id().unescaped().to_string()),
        Some(Err(m)) => return Err(RequestError::edge(format!("{at}.id"), m)),
    };
    Ok(Named {
        ty,
        id,
        entity: e,
        at,
    })
}

fn known_types(pack: &PolicyPack) -> Vec<String> {
    if pack.names.declared {
        return pack
            .names
            .outside_types()
            .into_iter()
            .map(String::from)
            .collect();
    }
    pack.entity_type_names()
}

/// The request-scoped entities of these subjects and resources' `properties`: each the stored
/// entity (if any) with the properties laid over its attributes, parents kept; and for each,
/// the path of the member it came from. The engine validates them against the schema once.
pub(super) fn properties_entities<'a>(
    pack: &PolicyPack,
    store: &EntityStore,
    sides: &[&Named<'a>],
) -> Result<(Vec<Value>, Vec<&'a str>), RequestError> {
    let mut entities = Vec::new();
    let mut from = Vec::new();
    for side in sides {
        let Some(props) = side.entity.properties.as_ref().filter(|p| !p.is_empty()) else {
            continue;
        };
        if side.id.is_empty() {
            return Err(RequestError::edge(
                format!("{}.properties", side.at),
                "an entity without an id has no properties",
            ));
        }
        let ty = pack
            .entity_type(side.ty)
            .expect("checked by named()")
            .clone();
        let uid = EntityUid::from_type_name_and_id(ty, EntityId::new(&*side.id));
        let mut json = store.get_json(&uid).unwrap_or_else(|| {
            serde_json::json!({
                "uid": {"type": side.ty, "id": &*side.id},
                "attrs": {},
                "parents": [],
            })
        });
        if let Some(Value::Object(attrs)) = json.get_mut("attrs") {
            for (k, v) in props {
                attrs.insert(k.clone(), v.clone());
            }
        }
        entities.push(json);
        from.push(side.at);
    }
    Ok((entities, from))
}

/// The context a request is decided with once its action's `properties` are placed where the
/// pack's `names.toml` says (`[requests] action_properties`): ignored (the default; logged at
/// debug level), merged into the context, or one context attribute. A member the context
/// already gives is refused rather than silently chosen between.
pub(super) fn with_action_properties<'c>(
    pack: &PolicyPack,
    context: Option<&'c Map<String, Value>>,
    action: &Action,
    at: &str,
) -> Result<Option<Cow<'c, Map<String, Value>>>, RequestError> {
    let Some(props) = action.properties.as_ref().filter(|p| !p.is_empty()) else {
        return Ok(context.map(Cow::Borrowed));
    };
    let clash = |k: &str| {
        RequestError::edge(
            format!("{at}.properties.{k}"),
            format!(
                "`context` already has a member `{}`",
                crate::engine::error::quote(k)
            ),
        )
    };
    match &pack.names.action_properties {
        ActionProperties::Ignore => {
            tracing::debug!(
                action = action.name,
                ignored = ?props.keys().collect::<Vec<_>>(),
                "action properties ignored: the pack does not place them"
            );
            Ok(context.map(Cow::Borrowed))
        }
        ActionProperties::Merge => {
            let mut merged = context.cloned().unwrap_or_default();
            for (k, v) in props {
                if merged.contains_key(k) {
                    return Err(clash(k));
                }
                merged.insert(k.clone(), v.clone());
            }
            Ok(Some(Cow::Owned(merged)))
        }
        ActionProperties::Attribute(name) => {
            let mut merged = context.cloned().unwrap_or_default();
            if merged.contains_key(name) {
                return Err(RequestError::edge(
                    format!("{at}.properties"),
                    format!("go to `context.{name}` (names.toml), which `context` already gives"),
                ));
            }
            merged.insert(name.clone(), Value::Object(props.clone()));
            Ok(Some(Cow::Owned(merged)))
        }
    }
}
