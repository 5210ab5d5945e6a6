//! Structural assumptions a pack declares about its data (`assumptions.toml`): a Cedar
//! condition on one entity of a type (`resource`), reading its attributes and the entities
//! they name with their ancestors. The index enforces them on every write (a batch after which
//! an entity fails one is refused, naming both), and the analysis assumes them, so proofs and
//! diffs speak about data the store can hold. Generic Cedar: the pack says what they are.

use std::collections::HashSet;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityTypeName, EntityUid, PolicySet, Request,
};
use serde_json::Value;

use crate::engine::json::{json_uids, value_refs};

/// One declared assumption.
#[derive(Debug, Clone)]
pub struct Assumption {
    pub id: String,
    pub why: Option<String>,
    /// The type of the entities it holds for.
    pub entity_type: EntityTypeName,
    /// The Cedar condition, with the entity as `resource`.
    pub condition: String,
    /// The condition in Cedar's JSON policy format (an expression), for the analysis to state
    /// for the entity wherever a request reaches one of this type.
    pub condition_json: Value,
    /// The attributes of `resource` the condition reads: only the entities they name (and
    /// the ancestors of those) can change its truth.
    pub reads: Vec<String>,
    /// `permit (principal, action, resource) when { condition };`
    pub(crate) policy: PolicySet,
}

/// Why an entity fails an assumption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub assumption: String,
    pub why: Option<String>,
    /// The entity's uid, as Cedar writes it.
    pub entity: String,
    /// Cedar's evaluation errors, if the condition errored rather than being false.
    pub errors: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} would break the data assumption `{}`",
            self.entity, self.assumption
        )?;
        if let Some(why) = &self.why {
            write!(f, " ({why})")?;
        }
        if !self.errors.is_empty() {
            write!(f, " (evaluation: {})", self.errors.join("; "))?;
        }
        Ok(())
    }
}

impl Assumption {
    /// Whether `uid` satisfies the condition, with its entities as `lookup` has them (their
    /// final version in a batch). The entity, the entities the attributes it reads name, and
    /// all their ancestors are what Cedar sees.
    pub fn check(
        &self,
        uid: &EntityUid,
        lookup: &dyn Fn(&EntityUid) -> Option<Value>,
    ) -> Result<(), Violation> {
        let violation = |errors: Vec<String>| Violation {
            assumption: self.id.clone(),
            why: self.why.clone(),
            entity: uid.to_string(),
            errors,
        };
        let Some(json) = lookup(uid) else {
            return Ok(());
        };
        let mut named = Vec::new();
        for attr in &self.reads {
            if let Some(v) = json.get("attrs").and_then(|a| a.get(attr)) {
                value_refs(v, &mut named);
            }
        }
        // The entity, what it names, and the ancestors of both, each once.
        let mut seen: HashSet<EntityUid> = HashSet::from([uid.clone()]);
        let mut out = vec![json];
        let mut queue: Vec<EntityUid> = json_uids(out[0].get("parents"));
        queue.extend(named);
        while let Some(next) = queue.pop() {
            if !seen.insert(next.clone()) {
                continue;
            }
            if let Some(j) = lookup(&next) {
                queue.extend(json_uids(j.get("parents")));
                out.push(j);
            }
        }
        // Stored and written entities are canonical Cedar JSON (references as `__entity`),
        // validated when written: parsed without the schema, which would add and close over
        // its actions at every check.
        let entities = match Entities::from_json_value(Value::Array(out), None) {
            Ok(e) => e,
            Err(e) => return Err(violation(vec![e.to_string()])),
        };
        let action: EntityUid = r#"Action::"assumption""#
            .parse()
            .expect("a constant entity uid parses");
        let request = match Request::new(uid.clone(), action, uid.clone(), Context::empty(), None) {
            Ok(r) => r,
            Err(e) => return Err(violation(vec![e.to_string()])),
        };
        let answer = Authorizer::new().is_authorized(&request, &self.policy, &entities);
        if answer.decision() == Decision::Allow {
            Ok(())
        } else {
            let errors = answer
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect();
            Err(violation(errors))
        }
    }
}
