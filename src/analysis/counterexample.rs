//! A counterexample as a reader uses it: the request and the entities the solver found, as
//! Cedar JSON, written so that `blue-authz check` decides it on those entities.

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
                        e.pointer("/uid/type").and_then(Value::as_str)
                            != action_type.as_deref()
                    })
                    .collect(),
            ),
            other => other,
        };
        Ok(Counterexample {
            principal: uid(req.principal(), "principal")?,
            action,
            resource: uid(req.resource(), "resource")?,
            context,
            entities,
        })
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
