//! A counterexample as a reader uses it: the request and the entities the solver found, as
//! Cedar JSON, written so that `blue-authz check` decides it on those entities.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{Entities, EntityUid, Request};
use cedar_policy_symcc::Env;
use serde_json::{json, Value};

use super::AnalysisError;

/// A concrete request and entity store.
#[derive(Debug, Clone, PartialEq)]
pub struct Counterexample {
    /// `Type::"id"` of the principal and the resource; the action's id alone.
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// The context as a Cedar JSON record.
    pub context: Value,
    /// The entities as a Cedar JSON array (the format of `check --entities`).
    pub entities: Value,
}

impl Counterexample {
    /// Reads the solver's concrete environment. `what` names the query, for errors.
    pub(super) fn from_env(env: &Env, what: &str) -> Result<Self, AnalysisError> {
        Self::from_parts(&env.request, &env.entities, what)
    }

    fn from_parts(req: &Request, entities: &Entities, what: &str) -> Result<Self, AnalysisError> {
        let fail = |message: String| AnalysisError::Counterexample {
            what: what.to_string(),
            message,
        };
        let uid = |u: Option<&EntityUid>, part: &str| {
            u.map(|u| u.to_string())
                .ok_or_else(|| fail(format!("the request has no concrete {part}")))
        };
        let action = req
            .action()
            .map(|a| a.id().unescaped().to_string())
            .ok_or_else(|| fail("the request has no concrete action".into()))?;
        let context = match req.context() {
            Some(c) => c.to_json_value().map_err(|e| fail(e.to_string()))?,
            None => json!({}),
        };
        // Action entities are the schema's, not data: `check` refuses them in an entities file.
        let all = entities.to_json_value().map_err(|e| fail(e.to_string()))?;
        let action_type = req.action().map(|a| a.type_name().to_string());
        let entities = match all {
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .filter(|e| {
                        e.pointer("/uid/type").and_then(Value::as_str) != action_type.as_deref()
                    })
                    .collect(),
            ),
            other => other,
        };
        let mut c = Counterexample {
            principal: uid(req.principal(), "principal")?,
            action,
            resource: uid(req.resource(), "resource")?,
            context,
            entities,
        };
        c.rename_ids();
        Ok(c)
    }

    /// Gives every entity a readable, non-empty id (`user1`, `role2`, ...: the solver's are
    /// "", "A", "B"), the same everywhere it appears.
    fn rename_ids(&mut self) {
        let mut names: HashMap<(String, String), String> = HashMap::new();
        let mut per_type: HashMap<String, usize> = HashMap::new();
        let mut add = |ty: &str, id: &str, names: &mut HashMap<(String, String), String>| {
            let key = (ty.to_string(), id.to_string());
            if names.contains_key(&key) {
                return;
            }
            let short = ty.rsplit("::").next().unwrap_or(ty).to_lowercase();
            let n = per_type.entry(short.clone()).or_insert(0);
            *n += 1;
            names.insert(key, format!("{short}{n}"));
        };
        let parsed = |s: &str| {
            EntityUid::from_str(s)
                .ok()
                .map(|u| (u.type_name().to_string(), u.id().unescaped().to_string()))
        };
        let request: Vec<(String, String)> = [&self.principal, &self.resource]
            .into_iter()
            .filter_map(|s| parsed(s))
            .collect();
        for (ty, id) in &request {
            add(ty, id, &mut names);
        }
        for e in self.entities.as_array().into_iter().flatten() {
            if let (Some(ty), Some(id)) = (
                e.pointer("/uid/type").and_then(Value::as_str),
                e.pointer("/uid/id").and_then(Value::as_str),
            ) {
                add(ty, id, &mut names);
            }
        }
        let mut refs = Vec::new();
        collect_refs(&self.entities, &mut refs);
        collect_refs(&self.context, &mut refs);
        for (ty, id) in refs {
            add(&ty, &id, &mut names);
        }
        rename(&mut self.entities, &names);
        rename(&mut self.context, &names);
        let text = |(ty, id): &(String, String)| {
            let name = &names[&(ty.clone(), id.clone())];
            format!("{ty}::\"{name}\"")
        };
        if let [p, r] = request.as_slice() {
            self.principal = text(p);
            self.resource = text(r);
        }
    }

    /// The request beside its entities, as one JSON document.
    pub fn to_json(&self) -> Value {
        json!({
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "context": self.context,
            "entities": self.entities,
        })
    }

    /// The `check` command that decides this request, once the entities are saved as `file`.
    pub fn check_command(&self, file: &str) -> String {
        format!(
            "blue-authz check --entities {file} --principal '{}' --action {} --resource '{}' --context '{}'",
            self.principal, self.action, self.resource, self.context
        )
    }
}

/// The (type, id) of every `{"__entity": {...}}` reference inside `v`.
fn collect_refs(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(e)) = m.get("__entity") {
                if let (Some(Value::String(t)), Some(Value::String(i))) =
                    (e.get("type"), e.get("id"))
                {
                    out.push((t.clone(), i.clone()));
                }
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Replaces the id of every `{type, id}` object inside `v` that `names` knows.
fn rename(v: &mut Value, names: &HashMap<(String, String), String>) {
    match v {
        Value::Object(m) => {
            if m.len() == 2 {
                if let (Some(Value::String(t)), Some(Value::String(i))) =
                    (m.get("type"), m.get("id"))
                {
                    if let Some(n) = names.get(&(t.clone(), i.clone())) {
                        m.insert("id".into(), Value::String(n.clone()));
                        return;
                    }
                }
            }
            m.values_mut().for_each(|x| rename(x, names));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rename(x, names)),
        _ => {}
    }
}
