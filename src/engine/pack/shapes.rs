//! The record shapes a schema declares: each entity type's attributes and each action's
//! context, nested records included (common types resolved). A pack that reads requests
//! "open" (`names.toml`, `[requests] open_context` / `open_properties`) uses them to drop the
//! members a request carries that the schema does not declare, before Cedar validates the
//! rest; `[keys]` uses them to check that a key is a String attribute; resource plans
//! (`engine/planner`) read each attribute's kind and whether it is required.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// The attributes of a record type: each with the shape of its value if that is a record.
#[derive(Debug, Clone, Default)]
pub struct Record {
    attrs: HashMap<String, Option<Record>>,
    /// The attributes whose values are Strings.
    strings: std::collections::HashSet<String>,
    /// The schema lets this record carry attributes it does not name (`additionalAttributes`).
    open: bool,
    /// Each attribute's kind and whether it is required.
    kinds: HashMap<String, (Kind, bool)>,
}

/// What an attribute holds, as the schema declares it (entity types qualified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Entity(String),
    String,
    Long,
    Bool,
    Set(Box<Kind>),
    Record,
    /// An extension type, or a name the schema's JSON form did not resolve.
    Other,
}

impl Record {
    /// Whether the record declares `attr` as a String.
    pub fn is_string(&self, attr: &str) -> bool {
        self.strings.contains(attr)
    }

    /// An attribute's kind and whether it is required; None if the record does not declare it.
    pub fn kind(&self, attr: &str) -> Option<&(Kind, bool)> {
        self.kinds.get(attr)
    }

    /// The declared attribute names, sorted.
    pub fn attr_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.attrs.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Removes from `value` every member this record does not declare, recursively into
    /// declared records; each removed member's path (`at.name`) is pushed to `dropped`.
    pub fn prune(&self, value: &mut Map<String, Value>, at: &str, dropped: &mut Vec<String>) {
        if self.open {
            return;
        }
        value.retain(|k, _| {
            let keep = self.attrs.contains_key(k);
            if !keep {
                dropped.push(format!("{at}.{k}"));
            }
            keep
        });
        for (k, v) in value.iter_mut() {
            if let (Some(Some(inner)), Value::Object(m)) = (self.attrs.get(k), v) {
                inner.prune(m, &format!("{at}.{k}"), dropped);
            }
        }
    }

    /// Whether `value` carries a member this record (or a declared record inside it) does
    /// not declare: the cheap test before anything is cloned.
    pub fn has_undeclared(&self, value: &Map<String, Value>) -> bool {
        !self.open
            && value.iter().any(|(k, v)| match (self.attrs.get(k), v) {
                (None, _) => true,
                (Some(Some(inner)), Value::Object(m)) => inner.has_undeclared(m),
                _ => false,
            })
    }
}

/// Entity type (Cedar name) → its attributes; action id → its context.
#[derive(Debug, Clone, Default)]
pub struct Shapes {
    pub entities: HashMap<String, Record>,
    pub contexts: HashMap<String, Record>,
}

/// Reads the shapes out of the schema's JSON form. A schema Cedar accepted always converts.
pub(super) fn of_schema(schema_text: &str) -> Shapes {
    let mut shapes = Shapes::default();
    let Ok((fragment, _)) = cedar_policy::SchemaFragment::from_cedarschema_str(schema_text) else {
        return shapes;
    };
    let Ok(json) = fragment.to_json_value() else {
        return shapes;
    };
    let Some(namespaces) = json.as_object() else {
        return shapes;
    };
    // Common types by their qualified name, to resolve references from any namespace.
    let mut common: HashMap<String, (String, Value)> = HashMap::new();
    for (ns, body) in namespaces {
        for (name, ty) in body
            .get("commonTypes")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            common.insert(qualify(ns, name), (ns.clone(), ty.clone()));
        }
    }
    let resolve = |ns: &str, ty: &Value| record(ns, ty, &common, 0);
    for (ns, body) in namespaces {
        for (name, def) in body
            .get("entityTypes")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let rec = def
                .get("shape")
                .and_then(|s| resolve(ns, s))
                .unwrap_or_default();
            shapes.entities.insert(qualify(ns, name), rec);
        }
        for (id, def) in body
            .get("actions")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let rec = def
                .get("appliesTo")
                .and_then(|a| a.get("context"))
                .and_then(|c| resolve(ns, c))
                .unwrap_or_default();
            shapes.contexts.insert(id.clone(), rec);
        }
    }
    shapes
}

/// The record a JSON schema type is, following common-type references (not past a depth
/// that only a cycle, which Cedar refuses, could reach). None: not a record.
fn record(
    ns: &str,
    ty: &Value,
    common: &HashMap<String, (String, Value)>,
    depth: usize,
) -> Option<Record> {
    if depth > 32 {
        return None;
    }
    let kind = ty.get("type")?.as_str()?;
    if kind == "Record" {
        let mut rec = Record {
            open: ty
                .get("additionalAttributes")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..Record::default()
        };
        for (k, v) in ty
            .get("attributes")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if is_string(v) {
                rec.strings.insert(k.clone());
            }
            let required = v.get("required").and_then(Value::as_bool).unwrap_or(true);
            rec.kinds
                .insert(k.clone(), (kind_of(ns, v, common, depth + 1), required));
            rec.attrs
                .insert(k.clone(), record(ns, v, common, depth + 1));
        }
        return Some(rec);
    }
    // A reference: `{"type": "EntityOrCommon", "name": "T"}` or `{"type": "T"}`.
    let name = match kind {
        "EntityOrCommon" => ty.get("name")?.as_str()?,
        "Set" | "Entity" | "Extension" | "String" | "Long" | "Boolean" | "Bool" => return None,
        other => other,
    };
    let (in_ns, def) = common
        .get(&qualify(ns, name))
        .or_else(|| common.get(name))?;
    record(in_ns, def, common, depth + 1)
}

/// The kind of a JSON schema type, following common-type references.
fn kind_of(ns: &str, ty: &Value, common: &HashMap<String, (String, Value)>, depth: usize) -> Kind {
    if depth > 32 {
        return Kind::Other;
    }
    let name = |n: &str| -> Kind {
        match n {
            "String" | "__cedar::String" => Kind::String,
            "Long" | "__cedar::Long" => Kind::Long,
            "Bool" | "Boolean" | "__cedar::Bool" => Kind::Bool,
            _ => match common.get(&qualify(ns, n)).or_else(|| common.get(n)) {
                Some((in_ns, def)) => kind_of(in_ns, def, common, depth + 1),
                None => Kind::Entity(qualify(ns, n)),
            },
        }
    };
    match ty.get("type").and_then(Value::as_str) {
        Some("String") => Kind::String,
        Some("Long") => Kind::Long,
        Some("Boolean" | "Bool") => Kind::Bool,
        Some("Record") => Kind::Record,
        Some("Set") => match ty.get("element") {
            Some(e) => Kind::Set(Box::new(kind_of(ns, e, common, depth + 1))),
            None => Kind::Other,
        },
        Some("Entity") => match ty.get("name").and_then(Value::as_str) {
            Some(n) => Kind::Entity(qualify(ns, n)),
            None => Kind::Other,
        },
        Some("EntityOrCommon") => match ty.get("name").and_then(Value::as_str) {
            Some(n) => name(n),
            None => Kind::Other,
        },
        Some("Extension") | None => Kind::Other,
        Some(other) => name(other),
    }
}

/// A name as written in namespace `ns`, qualified (a name with `::` already is).
fn qualify(ns: &str, name: &str) -> String {
    if ns.is_empty() || name.contains("::") {
        name.to_string()
    } else {
        format!("{ns}::{name}")
    }
}

/// Whether a JSON schema type is Cedar's String.
fn is_string(ty: &Value) -> bool {
    match ty.get("type").and_then(Value::as_str) {
        Some("String") => true,
        Some("EntityOrCommon") => matches!(
            ty.get("name").and_then(Value::as_str),
            Some("String" | "__cedar::String")
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"
        namespace N {
          type Where = { "ip": String, "geo": { "country": String } };
          entity U = { "name": String, "meta": { "level": Long } };
          action a appliesTo { principal: [U], resource: [U], context: { "where"?: Where, "n"?: Long } };
          action b appliesTo { principal: [U], resource: [U] };
        }
    "#;

    #[test]
    fn undeclared_members_are_dropped_at_every_depth_through_common_types() {
        let shapes = of_schema(SCHEMA);
        let mut ctx = json!({"n": 1, "header": "x", "where": {"ip": "1", "port": 2, "geo": {"country": "NL", "city": "A"}}});
        let ctx = ctx.as_object_mut().unwrap();
        let a = &shapes.contexts["a"];
        assert!(a.has_undeclared(ctx));
        let mut dropped = Vec::new();
        a.prune(ctx, "context", &mut dropped);
        dropped.sort();
        assert_eq!(
            dropped,
            [
                "context.header",
                "context.where.geo.city",
                "context.where.port"
            ]
        );
        assert_eq!(
            Value::Object(ctx.clone()),
            json!({"n": 1, "where": {"ip": "1", "geo": {"country": "NL"}}})
        );
        assert!(!a.has_undeclared(ctx));
        // An action without a context declares nothing: every member goes.
        let mut other = json!({"x": 1}).as_object().unwrap().clone();
        let mut dropped = Vec::new();
        shapes.contexts["b"].prune(&mut other, "context", &mut dropped);
        assert!(other.is_empty() && dropped == ["context.x"]);
        // Entity attributes, nested.
        let mut attrs = json!({"name": "n", "meta": {"level": 1, "x": 0}, "email": "e"});
        let mut dropped = Vec::new();
        shapes.entities["N::U"].prune(attrs.as_object_mut().unwrap(), "p", &mut dropped);
        dropped.sort();
        assert_eq!(dropped, ["p.email", "p.meta.x"]);
        assert!(shapes.entities["N::U"].is_string("name"));
        assert!(!shapes.entities["N::U"].is_string("meta"));
        let u = &shapes.entities["N::U"];
        assert_eq!(u.kind("name"), Some(&(Kind::String, true)));
        assert_eq!(u.kind("meta"), Some(&(Kind::Record, true)));
        let set = of_schema(
            "namespace M { type T = Long; entity G; entity D = { \"g\"?: Set<G>, \"n\": T, \"o\": G }; }",
        );
        let d = &set.entities["M::D"];
        assert_eq!(
            d.kind("g"),
            Some(&(Kind::Set(Box::new(Kind::Entity("M::G".into()))), false))
        );
        assert_eq!(d.kind("n"), Some(&(Kind::Long, true)));
        assert_eq!(d.kind("o"), Some(&(Kind::Entity("M::G".into()), true)));
    }
}
