//! The per-action index: for every action of the schema, the policies that can apply to it
//! (compiled once), its action entity, what it applies to, what slices need, and its plan.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use cedar_policy::{ActionConstraint, Entities, EntityTypeName, EntityUid, PolicySet, Schema};

use super::diagnostics::at_schema;
use crate::engine::compiled::{compile, Compiled};
use crate::engine::error::LoadError;
use crate::engine::json::value_refs;
use crate::engine::narrow::Finders;
use crate::engine::needs::Needs;
use crate::engine::plan::{ActionFacts, Plan};

/// Everything the decision path needs to know about one action.
#[derive(Debug)]
pub struct ActionEntry {
    /// The policies whose action scope can match this action, compiled for evaluation.
    pub compiled: Vec<Compiled>,
    /// The action entity with its action-group ancestors, for the per-request slice (as
    /// cedar-policy-core's entity: slices are built from core entities).
    pub core_entity: Arc<cedar_policy_core::ast::Entity>,
    pub principal_types: HashSet<EntityTypeName>,
    pub resource_types: HashSet<EntityTypeName>,
    /// Entity literals in those policies: a slice keeps ancestors that match them.
    pub literals: Vec<EntityUid>,
    /// The action's context is an empty record: a request without context needs no parsing.
    pub empty_context: bool,
    /// Which entities reached through attributes the slice must carry.
    pub needs: Needs,
    /// The policies compiled for evaluation over the index, if all are in the subset a plan
    /// covers (see [`crate::plan`]).
    pub plan: Option<Plan>,
    /// How listing finds candidates for each permit, from the plan (none without a plan: the
    /// listing then checks every entity of the type).
    pub finders: Option<Finders>,
}

/// Builds the per-action index: which policies can apply, the action entity, and what the
/// action applies to.
pub(super) fn index_actions(
    schema: &Schema,
    policies: &PolicySet,
    schema_path: &Path,
) -> Result<hashbrown::HashMap<EntityUid, ActionEntry>, LoadError> {
    let action_entities: Entities = schema.action_entities().map_err(|e| {
        let message = format!("cannot build the action hierarchy: {e}");
        at_schema(schema_path, message, Some(Box::new(e)))
    })?;
    let mut out = hashbrown::HashMap::new();
    for action in schema.actions() {
        let ancestors: HashSet<EntityUid> = action_entities
            .ancestors(action)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        let mut set = PolicySet::new();
        let mut literals = Vec::new();
        for p in policies.policies() {
            let applies = match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => &a == action,
                ActionConstraint::In(list) => {
                    list.iter().any(|a| a == action || ancestors.contains(a))
                }
            };
            if applies {
                // Ids are unique in `policies`, so adding to a fresh set cannot fail.
                let _ = set.add(p.clone());
                if let Ok(json) = p.to_json() {
                    value_refs(&json, &mut literals);
                }
            }
        }
        let principal_types = schema
            .principals_for_action(action)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        let resource_types = schema
            .resources_for_action(action)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        literals.retain(|l| l.type_name() != action.type_name());
        literals.sort_by_key(|l| l.to_string());
        literals.dedup();
        let core = |u: &EntityUid| -> cedar_policy_core::ast::EntityUID { u.as_ref().clone() };
        let core_entity = Arc::new(cedar_policy_core::ast::Entity::new_with_attr_partial_value(
            core(action),
            [],
            std::collections::HashSet::new(),
            ancestors.iter().map(core).collect(),
            [],
        ));
        let empty_context =
            cedar_policy::Context::from_json_value(serde_json::json!({}), Some((schema, action)))
                .is_ok();
        let needs = Needs::of(&set);
        let compiled = compile(&set).map_err(|e| at_schema(schema_path, e.to_string(), None))?;
        let plan = Plan::compile(
            &compiled,
            &ActionFacts {
                uid: core_entity.uid(),
                ancestors: &core_entity.ancestors().cloned().collect(),
            },
        );
        let forbid: Vec<bool> = compiled.iter().map(|c| c.forbid).collect();
        let finders = plan.as_ref().map(|p| Finders::compile(p, &forbid));
        out.insert(
            action.clone(),
            ActionEntry {
                needs,
                compiled,
                core_entity,
                principal_types,
                resource_types,
                literals,
                empty_context,
                plan,
                finders,
            },
        );
    }
    Ok(out)
}
