//! The decision path, on plain Rust types: parse and validate a request against the schema,
//! slice the store, evaluate only the policies indexed under the action, and explain the
//! decision with the `@id`s of the determining policies.

use std::borrow::Cow;
use std::str::FromStr;

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, Request};
use serde_json::Value;

use crate::error::RequestError;
use crate::plan::{Ent, Plan};
use crate::policy::{ActionEntry, Compiled, Need, Needs, PolicyPack, NEED_ALL};
use crate::store::{parse_entities, value_refs, EntityStore, Overlay};

/// How many attribute hops a slice follows from the request's entities by default. Blue's
/// policies dereference one hop (`resource.project.member`); a policy that needs more shows up
/// as an evaluation error in the policy tests, which run through this same path.
pub const DEFAULT_SLICE_DEPTH: usize = 1;

/// An entity reference as callers send it: a Cedar type name and an id.
#[derive(Debug, Clone, Copy)]
pub struct UidRef<'a> {
    pub ty: &'a str,
    pub id: &'a str,
}

/// A decision request as it arrives, before any validation.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    pub principal: UidRef<'a>,
    pub action: UidRef<'a>,
    pub resource: UidRef<'a>,
    /// A Cedar JSON record; empty means `{}`.
    pub context_json: &'a str,
    /// A Cedar JSON array of request-scoped entities; empty means none.
    pub entities_json: &'a str,
}

/// A request validated against the schema, ready to decide.
#[derive(Debug)]
pub struct CheckedRequest {
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    /// None: no context, and none needed (the schema's context for the action is empty), so
    /// the Cedar request is built only if Cedar's evaluator is needed.
    request: Option<Request>,
    context_refs: Vec<EntityUid>,
    overlay: Overlay,
}

/// A decision with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// `@id`s of the policies that determined the decision, sorted.
    pub determining: Vec<String>,
    /// Evaluation errors, each naming its policy.
    pub errors: Vec<String>,
}

/// Parses an entity reference; `field` names it in errors.
pub fn parse_uid(pack: &PolicyPack, r: UidRef<'_>, field: &str) -> Result<EntityUid, RequestError> {
    if r.ty.is_empty() {
        return Err(RequestError::new(format!("{field}.type"), "is empty"));
    }
    let Some(ty) = pack.entity_type(r.ty) else {
        let message = match EntityTypeName::from_str(r.ty) {
            Ok(ty) => format!("unknown entity type `{ty}`"),
            Err(e) => format!("`{}` is not a Cedar type name: {e}", r.ty),
        };
        return Err(RequestError::new(format!("{field}.type"), message));
    };
    let ty = ty.clone();
    if r.id.is_empty() {
        return Err(RequestError::new(format!("{field}.id"), "is empty"));
    }
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(r.id)))
}

/// Parses an action reference. An empty type means the schema's action type, so callers may
/// send a bare action id (`viewProject`).
pub fn parse_action(pack: &PolicyPack, r: UidRef<'_>) -> Result<EntityUid, RequestError> {
    if r.id.is_empty() {
        return Err(RequestError::new("action.id", "is empty"));
    }
    let Some(action_type) = pack.action_type() else {
        return Err(RequestError::new(
            "action",
            "the schema declares no actions",
        ));
    };
    if !r.ty.is_empty() && pack.entity_type(r.ty) != Some(action_type) {
        let ty = EntityTypeName::from_str(r.ty).map_err(|e| {
            RequestError::new(
                "action.type",
                format!("`{}` is not a Cedar type name: {e}", r.ty),
            )
        })?;
        if &ty != action_type {
            return Err(RequestError::new(
                "action.type",
                format!("`{ty}` is not the action type `{action_type}`"),
            ));
        }
    }
    let uid = EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(r.id));
    if pack.action(&uid).is_none() {
        return Err(RequestError::new(
            "action.id",
            format!("unknown action `{}`", r.id),
        ));
    }
    Ok(uid)
}

/// A bare action id, as policy authors write it in suites and the matrix.
pub fn action_id(id: &str) -> UidRef<'_> {
    UidRef { ty: "", id }
}

/// Parses request-scoped entities (Cedar JSON array), validated against the schema.
pub fn parse_overlay(
    pack: &PolicyPack,
    store: &EntityStore,
    entities_json: &str,
) -> Result<Overlay, RequestError> {
    if entities_json.trim().is_empty() {
        return Ok(Overlay::default());
    }
    let value: Value = serde_json::from_str(entities_json)
        .map_err(|e| RequestError::new("entities_json", format!("invalid JSON: {e}")))?;
    let batch = parse_entities(value, pack, "entities_json")
        .map_err(|e| RequestError::new("entities_json", e))?;
    store
        .overlay(batch)
        .map_err(|e| RequestError::new("entities_json", e))
}

/// Parses a context for one action, validated against the schema. Also returns the entities
/// the context references, for the slice. An empty text means `{}`.
fn parse_context(
    pack: &PolicyPack,
    action: &EntityUid,
    context_json: &str,
) -> Result<(Context, Vec<EntityUid>), RequestError> {
    let value: Value = if context_json.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(context_json)
            .map_err(|e| RequestError::new("context_json", format!("invalid JSON: {e}")))?
    };
    if !value.is_object() {
        return Err(RequestError::new("context_json", "must be a JSON object"));
    }
    let mut refs = Vec::new();
    value_refs(&value, &mut refs);
    let context = Context::from_json_value(value, Some((&pack.schema, action))).map_err(|e| {
        RequestError::new(
            "context_json",
            format!(
                "does not match the schema for `{}`: {e}",
                action.id().unescaped()
            ),
        )
    })?;
    Ok((context, refs))
}

/// A context read without Cedar's schema-directed JSON parser (which tries each form of a
/// value in turn, and costs more than a whole decision): strings, booleans, integers, entity
/// references (`{"type", "id"}` or `{"__entity": ..}`), sets and records. None for anything
/// else (`__extn`, other escapes, null, fractions, unknown entity types), which goes to Cedar's
/// parser. The caller validates the result against the schema with the request; a context
/// this reads differently from Cedar (a record shaped like an entity reference, say) fails that
/// validation and goes to Cedar's parser too.
fn quick_context(
    context_json: &str,
    types: &dyn Fn(&str) -> Option<EntityTypeName>,
) -> Option<(Context, Vec<EntityUid>)> {
    use cedar_policy::RestrictedExpression as X;
    fn expr(
        v: &Value,
        types: &dyn Fn(&str) -> Option<EntityTypeName>,
        refs: &mut Vec<EntityUid>,
    ) -> Option<X> {
        Some(match v {
            Value::String(s) => X::new_string(s.clone()),
            Value::Bool(b) => X::new_bool(*b),
            Value::Number(n) => X::new_long(n.as_i64()?),
            Value::Array(items) => X::new_set(
                items
                    .iter()
                    .map(|i| expr(i, types, refs))
                    .collect::<Option<Vec<_>>>()?,
            ),
            Value::Object(map) => {
                let reference = match map.get("__entity") {
                    Some(inner) if map.len() == 1 => Some(inner.as_object()?),
                    _ if map.len() == 2 && map.contains_key("type") && map.contains_key("id") => {
                        Some(map)
                    }
                    _ => None,
                };
                match reference {
                    Some(r) => {
                        let ty = types(r.get("type")?.as_str()?)?;
                        let id = r.get("id")?.as_str()?;
                        if r.len() != 2 {
                            return None;
                        }
                        let uid = EntityUid::from_type_name_and_id(ty, EntityId::new(id));
                        refs.push(uid.clone());
                        X::new_entity_uid(uid)
                    }
                    None if map.keys().any(|k| k.starts_with("__")) => return None,
                    None => X::new_record(
                        map.iter()
                            .map(|(k, v)| Some((k.clone(), expr(v, types, refs)?)))
                            .collect::<Option<Vec<_>>>()?,
                    )
                    .ok()?,
                }
            }
            Value::Null => return None,
        })
    }
    let value: Value = serde_json::from_str(context_json).ok()?;
    let Value::Object(map) = &value else {
        return None;
    };
    let mut refs = Vec::new();
    let pairs = map
        .iter()
        .map(|(k, v)| Some((k.clone(), expr(v, types, &mut refs)?)))
        .collect::<Option<Vec<_>>>()?;
    Some((Context::from_pairs(pairs).ok()?, refs))
}

/// The Cedar request that [`checked_request`] left unbuilt (None: the empty context, which
/// needs no validation beyond the types the caller checked), built when Cedar's evaluator
/// needs it.
fn cedar_request<'r>(
    request: Option<&'r Request>,
    (principal, action, resource): (&EntityUid, &EntityUid, &EntityUid),
) -> Result<Cow<'r, Request>, String> {
    match request {
        Some(r) => Ok(Cow::Borrowed(r)),
        None => Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            Context::empty(),
            None,
        )
        .map(Cow::Owned)
        .map_err(|e| e.to_string()),
    }
}

/// The context a compiled plan reads: the request's, or the empty one.
fn context_of(request: Option<&Request>) -> Option<&cedar_policy_core::ast::Context> {
    match request {
        Some(r) => AsRef::<cedar_policy_core::ast::Request>::as_ref(r).context(),
        None => Some(&*EMPTY_CONTEXT),
    }
}

static EMPTY_CONTEXT: std::sync::LazyLock<cedar_policy_core::ast::Context> =
    std::sync::LazyLock::new(cedar_policy_core::ast::Context::empty);

/// The request validated against the schema, with the entities its context references. The
/// caller has checked the principal's and resource's types against the action's `appliesTo`;
/// so when no context is given and the pack validated the empty context for this action at
/// load, nothing is left to check, and the Cedar request is not built (None): only Cedar's
/// evaluator needs it. Otherwise the context is read (quickly if it is plain, else by Cedar's
/// parser) and the whole request validated.
fn checked_request(
    pack: &PolicyPack,
    entry: &ActionEntry,
    (principal, action, resource): (&EntityUid, &EntityUid, &EntityUid),
    context_json: &str,
) -> Result<(Option<Request>, Vec<EntityUid>), RequestError> {
    if context_json.trim().is_empty() && entry.empty_context {
        return Ok((None, Vec::new()));
    }
    let request = |context| {
        Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            Some(&pack.schema),
        )
        .map_err(|e| RequestError::new(request_error_field(&e), e))
    };
    if let Some((context, refs)) = quick_context(context_json, &|t| pack.entity_type(t).cloned()) {
        if let Ok(request) = request(context) {
            return Ok((Some(request), refs));
        }
    }
    // What the quick reader does not take, or took but the schema refuses: Cedar's parser
    // decides, and words the error.
    let (context, refs) = parse_context(pack, action, context_json)?;
    Ok((Some(request(context)?), refs))
}

/// Validates a whole request against the schema, naming the field at fault.
pub fn check(
    pack: &PolicyPack,
    store: &EntityStore,
    raw: &RawRequest<'_>,
) -> Result<CheckedRequest, RequestError> {
    let principal = parse_uid(pack, raw.principal, "principal")?;
    let action = parse_action(pack, raw.action)?;
    let resource = parse_uid(pack, raw.resource, "resource")?;
    let overlay = parse_overlay(pack, store, raw.entities_json)?;
    check_parsed(pack, principal, action, resource, raw.context_json, overlay)
}

/// The rest of [`check`], once uids and request-scoped entities are parsed.
pub fn check_parsed(
    pack: &PolicyPack,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context_json: &str,
    overlay: Overlay,
) -> Result<CheckedRequest, RequestError> {
    let entry = pack
        .action(&action)
        .ok_or_else(|| RequestError::new("action", "unknown action"))?;
    if !entry.principal_types.contains(principal.type_name()) {
        return Err(RequestError::new(
            "principal.type",
            format!(
                "action `{}` does not apply to principals of type `{}`",
                action.id().unescaped(),
                principal.type_name()
            ),
        ));
    }
    if !entry.resource_types.contains(resource.type_name()) {
        return Err(RequestError::new(
            "resource.type",
            format!(
                "action `{}` does not apply to resources of type `{}`",
                action.id().unescaped(),
                resource.type_name()
            ),
        ));
    }
    let (request, context_refs) =
        checked_request(pack, entry, (&principal, &action, &resource), context_json)?;
    Ok(CheckedRequest {
        principal,
        action,
        resource,
        request,
        context_refs,
        overlay,
    })
}

fn request_error_field(e: &cedar_policy::RequestValidationError) -> &'static str {
    use cedar_policy::RequestValidationError as E;
    match e {
        E::UndeclaredAction(_) | E::ExternalAction(_) => "action",
        E::UndeclaredPrincipalType(_) | E::InvalidPrincipalType(_) => "principal.type",
        E::UndeclaredResourceType(_) | E::InvalidResourceType(_) => "resource.type",
        E::InvalidContext(_) | E::TypeOfContext(_) => "context_json",
        _ => "request",
    }
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
fn planned(
    entry: &ActionEntry,
    store: &EntityStore,
    uids: (&EntityUid, &EntityUid),
    request: Option<&Request>,
    overlay: &Overlay,
) -> Option<Decision> {
    let plan = entry.plan.as_ref().filter(|_| overlay.is_empty())?;
    plan_decision(plan, &entry.compiled, store, uids, context_of(request))
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
    let (mut permits, mut forbids) = (Vec::new(), Vec::new());
    for p in satisfied.iter().map(|i| &compiled[*i]) {
        if p.forbid {
            forbids.push(p.name.clone());
        } else {
            permits.push(p.name.clone());
        }
    }
    Some(combine(permits, forbids, Vec::new()))
}

/// The Cedar entities of one slice, plus the given actions' entities. Every slice entity
/// carries its ancestors already (closed over what the request can compare), so Cedar's
/// closure pass is skipped.
fn slice_entities<'a>(
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
fn evaluate(
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

fn deny_with(error: &str) -> Decision {
    Decision {
        allow: false,
        determining: Vec::new(),
        errors: vec![error.to_string()],
    }
}

/// One action's outcome in [`list_allowed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    Decided(Decision),
    /// The given context does not fit this action's context type, so it was not evaluated.
    NotEvaluated(String),
}

/// Decides every action that applies to the principal's and resource's types, with the same
/// context and request-scoped entities, over one slice built for all of them (it keeps the
/// ancestors any of the actions can compare, which changes no single decision). Sorted by
/// action id.
pub fn list_allowed(
    pack: &PolicyPack,
    store: &EntityStore,
    principal: &EntityUid,
    resource: &EntityUid,
    context_json: &str,
    entities_json: &str,
    depth: usize,
) -> Result<Vec<(String, ActionOutcome)>, RequestError> {
    let actions = pack.actions_for(principal.type_name(), resource.type_name());
    let overlay = parse_overlay(pack, store, entities_json)?;
    let mut requests = Vec::with_capacity(actions.len());
    let mut context_refs: Vec<EntityUid> = Vec::new();
    let mut literals: Vec<EntityUid> = Vec::new();
    for (action, entry) in &actions {
        match checked_request(pack, entry, (principal, action, resource), context_json) {
            Ok((r, refs)) => {
                context_refs.extend(refs);
                literals.extend(entry.literals.iter().cloned());
                requests.push((*action, *entry, Ok(r)));
            }
            Err(e) if e.field == "context_json" => requests.push((*action, *entry, Err(e.message))),
            Err(e) => return Err(e),
        }
    }
    let mut needs = Needs::default();
    for (_, entry) in &actions {
        needs.merge(&entry.needs);
    }
    let mut seeds: Vec<(&EntityUid, &Need)> =
        vec![(principal, &needs.principal), (resource, &needs.resource)];
    seeds.extend(context_refs.iter().map(|r| (r, &NEED_ALL)));
    // Each action's compiled plan first; the slice is built only if some action is left.
    let mut entities = None;
    Ok(requests
        .into_iter()
        .map(|(action, entry, request)| {
            let outcome = match request {
                Err(reason) => ActionOutcome::NotEvaluated(reason),
                Ok(r) => ActionOutcome::Decided(
                    match planned(entry, store, (principal, resource), r.as_ref(), &overlay) {
                        Some(d) => d,
                        None => {
                            let slice = entities.get_or_insert_with(|| {
                                slice_entities(
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
                                cedar_request(r.as_ref(), (principal, action, resource)),
                            ) {
                                (Ok(slice), Ok(r)) => evaluate(&r, &entry.compiled, slice),
                                (Err(e), _) => deny_with(e),
                                (_, Err(e)) => deny_with(&e),
                            }
                        }
                    },
                ),
            };
            (action.id().unescaped().to_string(), outcome)
        })
        .collect())
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
        let compiled = crate::policy::compile(&set).unwrap();
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
        let compiled = crate::policy::compile(&set).unwrap();
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
        let mut store = crate::store::EntityStore::default();
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
            let plan = crate::plan::Plan::compile(
                &compiled,
                &crate::plan::ActionFacts {
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

    /// The quick context reader against Cedar's schema-directed parser, both validated with
    /// the request: where the quick one is accepted, the context is Cedar's; where Cedar
    /// refuses, the quick one is refused (then Cedar's parser runs and words the error).
    #[test]
    fn quick_contexts_are_cedars_or_are_left_to_its_parser() {
        let schema: cedar_policy::Schema = r#"
            entity User; entity Group;
            action act appliesTo { principal: User, resource: Group, context: {
                n: Long, s: String, b: Bool, e: User, xs: Set<String>, r: { a: Long },
                loc?: { type: String, id: String }, es?: Set<User>
            } };
        "#
        .parse()
        .unwrap();
        let uid = |s: &str| -> EntityUid { s.parse().unwrap() };
        let (p, a, r) = (
            uid(r#"User::"u""#),
            uid(r#"Action::"act""#),
            uid(r#"Group::"g""#),
        );
        let base = r#""n": 1, "s": "x", "b": true, "xs": ["a"], "r": {"a": 2}"#;
        let cases: Vec<(String, bool)> = vec![
            (format!(r#"{{{base}, "e": {{"type": "User", "id": "v"}}}}"#), true),
            (format!(r#"{{{base}, "e": {{"__entity": {{"type": "User", "id": "v"}}}}}}"#), true),
            (
                format!(r#"{{{base}, "e": {{"type": "User", "id": "v"}}, "es": [{{"type": "User", "id": "w"}}]}}"#),
                true,
            ),
            // A record shaped like an entity reference: Cedar reads it by the schema.
            (
                format!(r#"{{{base}, "e": {{"type": "User", "id": "v"}}, "loc": {{"type": "User", "id": "x"}}}}"#),
                true,
            ),
            (format!(r#"{{{base}, "e": {{"type": "Group", "id": "v"}}}}"#), false),
            (format!(r#"{{{base}, "e": "v"}}"#), false),
            (format!(r#"{{{base}, "e": {{"type": "User", "id": "v"}}, "extra": 1}}"#), false),
            // Cedar ignores other keys beside an entity's type and id; read by Cedar's parser.
            (format!(r#"{{{base}, "e": {{"type": "User", "id": "v", "x": 1}}}}"#), true),
            (format!(r#"{{{base}, "e": {{"type": "Nope", "id": "v"}}}}"#), false),
            (format!(r#"{{{base}, "e": null}}"#), false),
            (r#"{"n": "1", "s": "x", "b": true, "xs": [], "r": {"a": 2}, "e": {"type": "User", "id": "v"}}"#.into(), false),
            (r#"{"n": 1.5, "s": "x", "b": true, "xs": [], "r": {"a": 2}, "e": {"type": "User", "id": "v"}}"#.into(), false),
            (r#"{"n": 1, "s": "x", "b": true, "xs": [1], "r": {"a": 2}, "e": {"type": "User", "id": "v"}}"#.into(), false),
            (r#"{"n": 1, "s": "x", "b": true, "xs": [], "r": {"a": 2, "z": 1}, "e": {"type": "User", "id": "v"}}"#.into(), false),
            (r#"{"n": 1, "b": true, "xs": [], "r": {"a": 2}, "e": {"type": "User", "id": "v"}}"#.into(), false),
            ("[1]".into(), false),
        ];
        let mut quick = 0;
        for (text, valid) in &cases {
            let cedar = Context::from_json_str(text, Some((&schema, &a)))
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    Request::new(p.clone(), a.clone(), r.clone(), c, Some(&schema))
                        .map_err(|e| e.to_string())
                });
            assert_eq!(cedar.is_ok(), *valid, "{text}: {cedar:?}");
            let types = |t: &str| t.parse().ok();
            let Some((context, _)) = super::quick_context(text, &types) else {
                continue;
            };
            match (
                Request::new(p.clone(), a.clone(), r.clone(), context, Some(&schema)),
                &cedar,
            ) {
                (Ok(ours), Ok(theirs)) => {
                    let (ours, theirs): (
                        &cedar_policy_core::ast::Request,
                        &cedar_policy_core::ast::Request,
                    ) = (ours.as_ref(), theirs.as_ref());
                    assert_eq!(ours.context(), theirs.context(), "{text}");
                    quick += 1;
                }
                (Ok(_), Err(e)) => panic!("{text}: read quickly, but Cedar refuses it: {e}"),
                (Err(_), _) => {}
            }
        }
        assert_eq!(quick, 3, "the valid contexts but the entity-shaped record");
    }
}
