//! The decision path, on plain Rust types: a checked request is decided by its action's
//! compiled plan, or else over a slice of the index by Cedar's evaluator, running only the
//! policies indexed under the action; the decision is explained with the `@id`s of the
//! determining policies.

use cedar_policy::{EntityUid, Request};

use crate::engine::compiled::Compiled;
use crate::engine::facts::Ent;
use crate::engine::index::{EntityStore, Overlay};
use crate::engine::needs::{Need, NEED_ALL};
use crate::engine::pack::{ActionEntry, PolicyPack};
use crate::engine::plan::Plan;
use crate::engine::request::{cedar_request, context_of, CheckedRequest};

/// How many attribute hops a slice follows from the request's entities by default. Blue's
/// policies dereference one hop (`resource.project.member`); a policy that needs more shows up
/// as an evaluation error in the policy tests, which run through this same path.
pub const DEFAULT_SLICE_DEPTH: usize = 1;

/// A decision with its explanation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// `@id`s of the policies that determined the decision, sorted.
    pub determining: Vec<String>,
    /// Evaluation errors, each naming its policy.
    pub errors: Vec<String>,
}

/// Decides a checked request against the store.
pub fn decide(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &CheckedRequest,
    depth: usize,
) -> Decision {
    decide_via(pack, store, req, depth, true)
}

/// [`decide`] always through Cedar's evaluator over a slice, never a compiled plan: the
/// reference the plans are tested against.
pub fn decide_by_slice(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &CheckedRequest,
    depth: usize,
) -> Decision {
    decide_via(pack, store, req, depth, false)
}

/// The decision of the action's compiled plan alone (see [`planned`]).
pub fn decide_by_plan_only(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &CheckedRequest,
) -> Option<Decision> {
    let entry = pack.action(&req.action)?;
    planned(
        entry,
        store,
        (&req.principal, &req.resource),
        req.request.as_ref(),
        &req.overlay,
    )
}

fn decide_via(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &CheckedRequest,
    depth: usize,
    use_plan: bool,
) -> Decision {
    let Some(entry) = pack.action(&req.action) else {
        return deny_with("action is not in the live policy set");
    };
    let uids = (&req.principal, &req.resource);
    if use_plan {
        if let Some(d) = planned(entry, store, uids, req.request.as_ref(), &req.overlay) {
            return d;
        }
    }
    let mut seeds: Vec<(&EntityUid, &Need)> = Vec::with_capacity(2 + req.context_refs.len());
    seeds.push((&req.principal, &entry.needs.principal));
    seeds.push((&req.resource, &entry.needs.resource));
    seeds.extend(req.context_refs.iter().map(|r| (r, &NEED_ALL)));
    // A policy's entity literals are entities too: `User::"x" in Group::"g"` needs the
    // literal's ancestors in the slice (found by tests/differential.rs).
    seeds.extend(entry.literals.iter().map(|l| (l, &NEED_ALL)));
    let request = cedar_request(
        req.request.as_ref(),
        (&req.principal, &req.action, &req.resource),
    );
    match (
        slice_entities(store, &seeds, &req.overlay, depth, &entry.literals, [entry]),
        request,
    ) {
        (Ok(entities), Ok(request)) => evaluate(&request, &entry.compiled, &entities),
        // Fail closed: a slice (or request) that cannot be built decides nothing.
        (Err(e), _) | (_, Err(e)) => deny_with(&e),
    }
}

/// The decision of the action's compiled plan over the index: None when the action has no
/// plan, the request carries its own entities (they change the index's view of the data),
/// or the plan leaves the request to Cedar. Combined as [`evaluate`] does.
pub(crate) fn planned(
    entry: &ActionEntry,
    store: &EntityStore,
    uids: (&EntityUid, &EntityUid),
    request: Option<&Request>,
    overlay: &Overlay,
) -> Option<Decision> {
    let plan = entry.plan.as_ref().filter(|_| overlay.is_empty())?;
    plan_decision(plan, &entry.compiled, store, uids, context_of(request))
}

/// The decision of an action's compiled plan for entities the index already resolved (as
/// [`planned`] decides for uids): listing decides its candidates through here. None when the
/// action has no plan or the plan leaves the request to Cedar.
pub fn decide_planned_at(
    entry: &ActionEntry,
    store: &EntityStore,
    principal: (Ent<'_>, &cedar_policy_core::ast::EntityType),
    resource: (Ent<'_>, &cedar_policy_core::ast::EntityType),
    context: Option<&cedar_policy_core::ast::Context>,
) -> Option<Decision> {
    let plan = entry.plan.as_ref()?;
    let satisfied = plan.satisfied(store, principal, resource, context)?;
    Some(explain(&entry.compiled, &satisfied))
}

/// The decision of the satisfied policies (by index into `compiled`).
fn explain(compiled: &[Compiled], satisfied: &[usize]) -> Decision {
    let (mut permits, mut forbids) = (Vec::new(), Vec::new());
    for p in satisfied.iter().map(|i| &compiled[*i]) {
        if p.forbid {
            forbids.push(p.name.clone());
        } else {
            permits.push(p.name.clone());
        }
    }
    combine(permits, forbids, Vec::new())
}

/// [`planned`] for a given plan and context.
fn plan_decision(
    plan: &Plan,
    compiled: &[Compiled],
    store: &EntityStore,
    (principal, resource): (&EntityUid, &EntityUid),
    context: Option<&cedar_policy_core::ast::Context>,
) -> Option<Decision> {
    fn ent<'a>(store: &EntityStore, uid: &'a EntityUid) -> Ent<'a> {
        match store.lookup(uid) {
            Some(ix) => Ent::Ix(ix),
            None => Ent::Other(uid.as_ref()),
        }
    }
    let satisfied = plan.satisfied(
        store,
        (ent(store, principal), principal.as_ref().entity_type()),
        (ent(store, resource), resource.as_ref().entity_type()),
        context,
    )?;
    Some(explain(compiled, &satisfied))
}

/// The Cedar entities of one slice, plus the given actions' entities. Every slice entity
/// carries its ancestors already (closed over what the request can compare), so Cedar's
/// closure pass is skipped.
pub(crate) fn slice_entities<'a>(
    store: &EntityStore,
    seeds: &[(&EntityUid, &Need)],
    overlay: &Overlay,
    depth: usize,
    literals: &[EntityUid],
    actions: impl IntoIterator<Item = &'a ActionEntry>,
) -> Result<cedar_policy_core::entities::Entities, String> {
    let mut slice = store
        .slice(seeds, overlay, depth, literals)
        .map_err(|e| format!("entity slice: {e}"))?;
    slice.extend(actions.into_iter().map(|a| a.core_entity.clone()));
    cedar_policy_core::entities::Entities::new()
        .add_entities(
            slice,
            None::<&cedar_policy_core::entities::NoEntitiesSchema>,
            cedar_policy_core::entities::TCComputation::AssumeAlreadyComputed,
            cedar_policy_core::extensions::Extensions::all_available(),
        )
        .map_err(|e| format!("entity slice rejected: {e}"))
}

/// Evaluates one request over a slice with the action's policies, and explains the result.
/// Cedar's authorization semantics over Cedar's evaluator: a satisfied `forbid` denies, else a
/// satisfied `permit` allows, else the default is deny; a policy whose evaluation fails counts
/// as not satisfied and is reported. (`Authorizer::is_authorized` computes the same, through
/// the partial-evaluation machinery and a condition rebuilt per policy per request;
/// `tests/oracle.rs` and the unit tests below compare the two.)
pub(crate) fn evaluate(
    request: &Request,
    compiled: &[Compiled],
    entities: &cedar_policy_core::entities::Entities,
) -> Decision {
    use cedar_policy_core::ast::{Literal, ValueKind};
    use cedar_policy_core::evaluator::Evaluator;
    let core: &cedar_policy_core::ast::Request = request.as_ref();
    let evaluator = Evaluator::new(
        core.clone(),
        entities,
        cedar_policy_core::extensions::Extensions::all_available(),
    );
    let slots = cedar_policy_core::ast::SlotEnv::new();
    let mut permits: Vec<String> = Vec::new();
    let mut forbids: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for p in compiled {
        match evaluator.interpret(&p.condition, &slots) {
            // A condition is a conjunction (scope `&&` clauses), so its value is a boolean.
            Ok(v) => match v.value_kind() {
                ValueKind::Lit(Literal::Bool(true)) if p.forbid => forbids.push(p.name.clone()),
                ValueKind::Lit(Literal::Bool(true)) => permits.push(p.name.clone()),
                ValueKind::Lit(Literal::Bool(false)) => {}
                _ => errors.push(format!("policy `{}` evaluated to {v}, not a boolean", p.id)),
            },
            Err(error) => errors.push(
                cedar_policy::AuthorizationError::from(
                    cedar_policy_core::authorizer::AuthorizationError::PolicyEvaluationError {
                        id: p.id.clone(),
                        error,
                    },
                )
                .to_string(),
            ),
        }
    }
    combine(permits, forbids, errors)
}

/// Cedar's combining rules over the satisfied policies: a satisfied `forbid` denies (and
/// determines), else a satisfied `permit` allows, else the default is deny.
fn combine(permits: Vec<String>, forbids: Vec<String>, errors: Vec<String>) -> Decision {
    let (allow, mut determining) = if !forbids.is_empty() {
        (false, forbids)
    } else {
        (!permits.is_empty(), permits)
    };
    determining.sort();
    Decision {
        allow,
        determining,
        errors,
    }
}

pub(crate) fn deny_with(error: &str) -> Decision {
    Decision {
        allow: false,
        determining: Vec::new(),
        errors: vec![error.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request};

    /// Made-up policies with forbids, scopes, `unless`, and conditions that fail on some
    /// entities: the evaluation path must agree with Cedar's `Authorizer` on the decision, the
    /// determining policies and the error texts, request by request.
    #[test]
    fn evaluation_agrees_with_cedars_authorizer() {
        let set: PolicySet = r#"
            permit (principal, action, resource) when { principal.level > 3 };
            permit (principal == User::"alice", action, resource);
            forbid (principal, action, resource) when { resource.locked };
            permit (principal in Group::"g", action == Action::"view", resource);
            forbid (principal, action == Action::"edit", resource) unless { context.ok };
            permit (principal, action in [Action::"view"], resource is Doc)
                when { resource.owner == principal };
        "#
        .parse()
        .unwrap();
        let compiled = crate::engine::compiled::compile(&set).unwrap();
        assert_eq!(compiled.len(), 6);
        let entities = Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "User", "id": "alice"}, "attrs": {"level": 5},
                 "parents": [{"type": "Group", "id": "g"}]},
                {"uid": {"type": "User", "id": "bob"}, "attrs": {},
                 "parents": [{"type": "Group", "id": "g"}]},
                {"uid": {"type": "User", "id": "carol"}, "attrs": {"level": 1}, "parents": []},
                {"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Doc", "id": "open"},
                 "attrs": {"locked": false, "owner": {"__entity": {"type": "User", "id": "carol"}}},
                 "parents": []},
                {"uid": {"type": "Doc", "id": "locked"}, "attrs": {"locked": true}, "parents": []},
                {"uid": {"type": "Doc", "id": "bare"}, "attrs": {}, "parents": []}
            ]),
            None,
        )
        .unwrap();
        let uid = |s: &str| -> EntityUid { s.parse().unwrap() };
        let mut checked = 0;
        let (mut allowed, mut with_errors) = (0, 0);
        for principal in ["alice", "bob", "carol"] {
            for action in ["view", "edit"] {
                for resource in ["open", "locked", "bare"] {
                    for context in [r#"{"ok": true}"#, r#"{"ok": false}"#, "{}"] {
                        let request = Request::new(
                            uid(&format!(r#"User::"{principal}""#)),
                            uid(&format!(r#"Action::"{action}""#)),
                            uid(&format!(r#"Doc::"{resource}""#)),
                            Context::from_json_str(context, None).unwrap(),
                            None,
                        )
                        .unwrap();
                        let ours = super::evaluate(&request, &compiled, entities.as_ref());
                        let theirs = Authorizer::new().is_authorized(&request, &set, &entities);
                        let mut reasons: Vec<String> = theirs
                            .diagnostics()
                            .reason()
                            .map(ToString::to_string)
                            .collect();
                        reasons.sort();
                        let errors: Vec<String> = theirs
                            .diagnostics()
                            .errors()
                            .map(ToString::to_string)
                            .collect();
                        let what = format!("{principal} {action} {resource} {context}");
                        assert_eq!(
                            ours.allow,
                            theirs.decision() == cedar_policy::Decision::Allow,
                            "{what}"
                        );
                        assert_eq!(ours.determining, reasons, "{what}");
                        let (mut a, mut b) = (ours.errors.clone(), errors);
                        a.sort();
                        b.sort();
                        assert_eq!(a, b, "{what}");
                        checked += 1;
                        allowed += ours.allow as usize;
                        with_errors += !ours.errors.is_empty() as usize;
                    }
                }
            }
        }
        // The cases cover both decisions and failing conditions.
        assert_eq!(checked, 54);
        assert!(
            allowed > 0 && allowed < checked,
            "{allowed} of {checked} allowed"
        );
        assert!(with_errors > 0, "no case had an evaluation error");
    }

    /// Compiled plans over the index against Cedar's `Authorizer` over the same entities, on
    /// made-up policies using every operator a plan covers. Where a plan answers, the decision
    /// and the determining policies must be Cedar's and Cedar must report no error; where
    /// Cedar reports an error, the plan must have left the request to Cedar.
    #[test]
    fn plans_agree_with_cedars_authorizer_or_leave_the_request_to_it() {
        let set: PolicySet = r#"
            permit (principal, action, resource)
                when { principal has level && principal.level > 3 };
            permit (principal == User::"alice", action, resource);
            forbid (principal, action, resource) when { resource.locked };
            permit (principal in Group::"g", action == Action::"view", resource);
            forbid (principal, action == Action::"edit", resource) unless { context.ok };
            permit (principal, action in [Action::"view"], resource is Doc)
                when { resource.owner == principal };
            permit (principal, action in Action::"readers", resource)
                when { resource has tags && resource.tags.contains("public") };
            permit (principal, action, resource)
                when { context has who && context.who in resource.editors };
            permit (principal is User, action, resource)
                when { principal has name && principal.name like "c*" && [1, 2, 3].containsAll([principal.level]) &&
                       (if principal.level <= 1 then true else false) };
            forbid (principal, action, resource)
                when { ["x"].containsAny(resource.labels) ||
                       (principal != User::"dave" && false) };
            permit (principal, action == Action::"view", resource is Doc)
                when { principal == User::"carol" || principal.level > 0 };
            forbid (principal, action == Action::"view", resource)
                when { context has who && context.who is Group };
            permit (principal, action == Action::"edit", resource) when { resource has owner };
            forbid (principal, action == Action::"edit", resource)
                when { principal.level < 5 && principal.level >= 1 };
        "#
        .parse()
        .unwrap();
        let compiled = crate::engine::compiled::compile(&set).unwrap();
        let entities_json = serde_json::json!([
            {"uid": {"type": "Action", "id": "view"}, "attrs": {},
             "parents": [{"type": "Action", "id": "readers"}]},
            {"uid": {"type": "Action", "id": "edit"}, "attrs": {}, "parents": []},
            {"uid": {"type": "User", "id": "alice"}, "attrs": {"level": 5, "name": "alice"},
             "parents": [{"type": "Group", "id": "g"}]},
            {"uid": {"type": "User", "id": "bob"}, "attrs": {},
             "parents": [{"type": "Group", "id": "g"}]},
            {"uid": {"type": "User", "id": "carol"}, "attrs": {"level": 1, "name": "carol"},
             "parents": []},
            {"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Doc", "id": "open"},
             "attrs": {"locked": false, "owner": {"__entity": {"type": "User", "id": "carol"}},
                       "tags": ["public"], "labels": ["y"],
                       "editors": {"__entity": {"type": "Group", "id": "g"}}},
             "parents": []},
            {"uid": {"type": "Doc", "id": "locked"}, "attrs": {"locked": true}, "parents": []},
            {"uid": {"type": "Doc", "id": "bare"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Doc", "id": "plain"}, "attrs": {"locked": false, "labels": ["y"]},
             "parents": []},
            {"uid": {"type": "Doc", "id": "tagged"},
             "attrs": {"locked": false, "tags": ["x"], "labels": ["x"],
                       "editors": {"__entity": {"type": "User", "id": "bob"}}},
             "parents": []}
        ]);
        let entities = Entities::from_json_value(entities_json.clone(), None).unwrap();
        let mut store = crate::engine::index::EntityStore::default();
        for e in entities_json.as_array().unwrap() {
            store.bulk_insert(e).unwrap();
        }
        store.finish_bulk(1).unwrap();
        let uid = |s: &str| -> EntityUid { s.parse().unwrap() };
        let (mut answered, mut left, mut allowed) = (0, 0, 0);
        for action in ["view", "edit"] {
            let action_uid = uid(&format!(r#"Action::"{action}""#));
            let ancestors: std::collections::HashSet<_> = entities
                .ancestors(&action_uid)
                .unwrap()
                .map(|a| a.as_ref().clone())
                .collect();
            let plan = crate::engine::plan::Plan::compile(
                &compiled,
                &crate::engine::plan::ActionFacts {
                    uid: action_uid.as_ref(),
                    ancestors: &ancestors,
                },
            )
            .expect("every policy is in the subset");
            for principal in ["alice", "bob", "carol", "dave"] {
                for resource in ["open", "locked", "bare", "plain", "tagged", "ghost"] {
                    for context in [
                        r#"{"ok": true}"#,
                        r#"{"ok": false}"#,
                        "{}",
                        r#"{"ok": true, "who": {"__entity": {"type": "User", "id": "bob"}}}"#,
                        r#"{"ok": 3}"#,
                    ] {
                        let (p, r) = (
                            uid(&format!(r#"User::"{principal}""#)),
                            uid(&format!(r#"Doc::"{resource}""#)),
                        );
                        let request = Request::new(
                            p.clone(),
                            action_uid.clone(),
                            r.clone(),
                            Context::from_json_str(context, None).unwrap(),
                            None,
                        )
                        .unwrap();
                        let theirs = Authorizer::new().is_authorized(&request, &set, &entities);
                        let errors = theirs.diagnostics().errors().count();
                        let what = format!("{principal} {action} {resource} {context}");
                        let Some(ours) =
                            super::plan_decision(&plan, &compiled, &store, (&p, &r), {
                                let core: &cedar_policy_core::ast::Request = request.as_ref();
                                core.context()
                            })
                        else {
                            left += 1;
                            continue;
                        };
                        let mut reasons: Vec<String> = theirs
                            .diagnostics()
                            .reason()
                            .map(ToString::to_string)
                            .collect();
                        reasons.sort();
                        assert_eq!(errors, 0, "the plan answered where Cedar fails: {what}");
                        assert_eq!(
                            ours.allow,
                            theirs.decision() == cedar_policy::Decision::Allow,
                            "{what}"
                        );
                        assert_eq!(ours.determining, reasons, "{what}");
                        answered += 1;
                        allowed += ours.allow as usize;
                    }
                }
            }
        }
        assert_eq!(answered + left, 240);
        assert!(
            answered >= 20 && left >= 20,
            "answered {answered}, left {left}"
        );
        assert!(
            allowed > 0 && allowed < answered,
            "{allowed} of {answered} allowed"
        );
    }
}
