//! Listing actions: every action that applies to a principal and a resource, each decided with
//! its context (the default one, one given for that action, or each combination of the values
//! the pack declares for its context fields), over one slice built for all of them. This is
//! ListAllowedActions and AuthZEN's action search.

use std::collections::BTreeMap;

use cedar_policy::EntityUid;

use crate::engine::decide::{self, Decision};
use crate::engine::error::{Field, RequestError};
use crate::engine::index::EntityStore;
use crate::engine::needs::{Need, Needs, NEED_ALL};
use crate::engine::pack::PolicyPack;
use crate::engine::request::{
    cedar_request, checked_request, parse_named_uid, parse_overlay, ContextMap, UidRef,
};

/// A request to decide every action that applies to a principal and a resource.
#[derive(Debug, Clone, Copy)]
pub struct ActionsRequest<'a> {
    pub principal: UidRef<'a>,
    pub resource: UidRef<'a>,
    /// For every action not given one of its own (None: `{}`).
    pub context: Option<&'a ContextMap>,
    /// Per action id, the context for that action instead of the default.
    pub per_action: Option<&'a BTreeMap<String, ContextMap>>,
    /// Actions whose context fields the pack declares the values of (names.toml) are decided
    /// once per combination of those values, each laid over the action's context (its
    /// `per_action` one, or the default): fields that context sets stay as given.
    pub each_declared: bool,
    /// Request-scoped entities in Cedar's JSON form.
    pub entities: &'a [serde_json::Value],
}

/// One action's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    Decided(Decision),
    /// The given context does not fit this action's context type, so it was not evaluated.
    NotEvaluated(String),
}

/// Which context an action was decided with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// The request's default context.
    Default,
    /// The context the caller gave for this action.
    Given,
    /// One combination of the declared values, laid over the action's context.
    Declared(ContextMap),
}

/// One action decided with one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAction {
    pub action: String,
    pub context: Shown,
    pub outcome: ActionOutcome,
}

/// The principal and resource as parsed, with every action decided, sorted by action id (and,
/// within one action, in the declared values' order).
pub struct Actions {
    pub principal: EntityUid,
    pub resource: EntityUid,
    pub listed: Vec<ListedAction>,
}

/// Every combination of the declared values of an action's context fields, each laid over
/// `base` (the fields it sets stay as given). Empty when the pack declares none.
pub fn declared_contexts(pack: &PolicyPack, action_id: &str, base: &ContextMap) -> Vec<ContextMap> {
    let declared = pack.names.context_values(action_id);
    if declared.is_empty() {
        return Vec::new();
    }
    let mut combos = vec![base.clone()];
    for (field, values) in declared {
        if base.contains_key(field) {
            continue;
        }
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(field.clone(), serde_json::Value::String(v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
}

/// Decides every action that applies to the principal's and resource's types, with the same
/// request-scoped entities, over one slice built for all of them (it keeps the ancestors any
/// of the actions can compare, which changes no single decision).
pub fn list_actions(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &ActionsRequest<'_>,
    depth: usize,
) -> Result<Actions, RequestError> {
    let principal = parse_named_uid(pack, store, req.principal, Field::Principal)?;
    let resource = parse_named_uid(pack, store, req.resource, Field::Resource)?;
    let actions = pack.actions_for(principal.type_name(), resource.type_name());
    for id in req.per_action.into_iter().flat_map(BTreeMap::keys) {
        if !actions.iter().any(|(a, _)| a.id().unescaped() == id) {
            return Err(RequestError::new(
                Field::ActionContext(id.clone()),
                format!(
                    "no action `{id}` applies to a {} and a {}",
                    principal.type_name(),
                    resource.type_name()
                ),
            ));
        }
    }
    let overlay = parse_overlay(pack, store, req.entities)?;
    let empty = ContextMap::new();
    let mut requests = Vec::with_capacity(actions.len());
    let mut context_refs: Vec<EntityUid> = Vec::new();
    let mut literals: Vec<EntityUid> = Vec::new();
    for (action, entry) in &actions {
        let id = action.id().unescaped();
        let given = req.per_action.and_then(|m| m.get(id));
        let base = given.or(req.context);
        let declared = match req.each_declared {
            true => declared_contexts(pack, id, base.unwrap_or(&empty)),
            false => Vec::new(),
        };
        let mine: Vec<(Shown, Option<&ContextMap>)> = match given {
            _ if !declared.is_empty() => declared
                .iter()
                .map(|c| (Shown::Declared(c.clone()), Some(c)))
                .collect(),
            Some(c) => vec![(Shown::Given, Some(c))],
            None => vec![(Shown::Default, req.context)],
        };
        literals.extend(entry.literals.iter().cloned());
        for (shown, context) in mine {
            let uids = (&principal, *action, &resource);
            match checked_request(pack, entry, uids, context) {
                Ok((r, refs)) => {
                    context_refs.extend(refs);
                    requests.push((*action, *entry, shown, Ok(r)));
                }
                // A context that fits only some actions leaves the others not evaluated.
                Err(e) if e.field == Field::Context(None) => {
                    requests.push((*action, *entry, shown, Err(e.message)))
                }
                Err(e) => {
                    return Err(match (given, &e.field) {
                        (Some(_), Field::Context(_)) => RequestError::new(
                            Field::ActionContext(id.to_string()),
                            format!("{}: {}", e.field, e.message),
                        ),
                        _ => e,
                    })
                }
            }
        }
    }
    let mut needs = Needs::default();
    for (_, entry) in &actions {
        needs.merge(&entry.needs);
    }
    let mut seeds: Vec<(&EntityUid, &Need)> =
        vec![(&principal, &needs.principal), (&resource, &needs.resource)];
    seeds.extend(context_refs.iter().map(|r| (r, &NEED_ALL)));
    seeds.extend(literals.iter().map(|l| (l, &NEED_ALL)));
    // Each action's compiled plan first; the slice is built only if some action is left.
    let mut entities = None;
    let listed = requests
        .into_iter()
        .map(|(action, entry, context, request)| {
            let outcome = match request {
                Err(reason) => ActionOutcome::NotEvaluated(reason),
                Ok(r) => ActionOutcome::Decided(
                    match decide::planned(
                        entry,
                        store,
                        (&principal, &resource),
                        r.as_ref(),
                        &overlay,
                    ) {
                        Some(d) => d,
                        None => {
                            let slice = entities.get_or_insert_with(|| {
                                decide::slice_entities(
                                    store,
                                    &seeds,
                                    &overlay,
                                    depth,
                                    &literals,
                                    actions.iter().map(|(_, e)| *e),
                                )
                            });
                            match (
                                slice,
                                cedar_request(r.as_ref(), (&principal, action, &resource)),
                            ) {
                                (Ok(slice), Ok(r)) => decide::evaluate(&r, &entry.compiled, slice),
                                (Err(e), _) => decide::deny_with(e),
                                (_, Err(e)) => decide::deny_with(&e),
                            }
                        }
                    },
                ),
            };
            ListedAction {
                action: action.id().unescaped().to_string(),
                context,
                outcome,
            }
        })
        .collect();
    Ok(Actions {
        principal,
        resource,
        listed,
    })
}
