//! Plans as JSON, one shape for every JSON edge (the HTTP extension, the CLI): a condition is
//! `{"and": […]}`, `{"or": […]}`, `{"not": …}`, `{"literal": b}`, `{"eq" | "contains": {"path",
//! "value"}}`, `{"in" | "overlaps": {"path", "values"}}` or `{"has": {"path"}}`, a branch also
//! carrying `"policies"`; an entity value is `{"type", "id"}` with the type named as the edge
//! names types; SQL is `{"where", "params"}`, an array parameter a JSON array.

use serde_json::{json, Value as Json};

use super::sql::{Param, Where};
use super::{Condition, Value};

/// A condition, entity types named by `ty`.
pub fn condition(c: &Condition, ty: &dyn Fn(&str) -> String) -> Json {
    let all = |xs: &[Condition]| Json::Array(xs.iter().map(|x| condition(x, ty)).collect());
    let values = |vs: &[Value]| Json::Array(vs.iter().map(|v| value(v, ty)).collect());
    match c {
        Condition::Literal(b) => json!({"literal": b}),
        Condition::And(xs) => json!({"and": all(xs)}),
        Condition::Or(xs) => json!({"or": all(xs)}),
        Condition::Not(x) => json!({"not": condition(x, ty)}),
        Condition::Eq { path, value: v } => json!({"eq": {"path": path, "value": value(v, ty)}}),
        Condition::In { path, values: vs } => json!({"in": {"path": path, "values": values(vs)}}),
        Condition::Contains { path, value: v } => {
            json!({"contains": {"path": path, "value": value(v, ty)}})
        }
        Condition::Overlaps { path, values: vs } => {
            json!({"overlaps": {"path": path, "values": values(vs)}})
        }
        Condition::Has { path } => json!({"has": {"path": path}}),
        Condition::Policies {
            ids,
            condition: inner,
        } => {
            let mut v = condition(inner, ty);
            if let Json::Object(m) = &mut v {
                m.insert("policies".into(), json!(ids));
            }
            v
        }
    }
}

fn value(v: &Value, ty: &dyn Fn(&str) -> String) -> Json {
    match v {
        Value::Entity { ty: t, id } => json!({"type": ty(t), "id": id}),
        Value::String(s) => json!(s),
        Value::Long(n) => json!(n),
        Value::Bool(b) => json!(b),
    }
}

/// A `WHERE` fragment and its parameters.
pub fn sql(w: &Where) -> Json {
    let params: Vec<Json> = w
        .params
        .iter()
        .map(|p| match p {
            Param::Text(s) => json!(s),
            Param::Long(n) => json!(n),
            Param::Bool(b) => json!(b),
            Param::Texts(v) => json!(v),
            Param::Longs(v) => json!(v),
            Param::Bools(v) => json!(v),
        })
        .collect();
    json!({"where": w.sql, "params": params})
}
