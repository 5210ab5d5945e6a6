//! Requests as they arrive, checked against the schema: entity references, the action, the
//! context (a JSON object each edge has already read from its wire format; read into Cedar
//! quickly when it is plain, else by Cedar's parser) and request-scoped entities. Every
//! refusal names the field at fault ([`Field`]).

use std::borrow::Cow;
use std::str::FromStr;

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, Request};
use serde_json::{Map, Value};

use crate::engine::error::{quote, unknown_name, Field, Part, RequestError};
use crate::engine::index::{parse_entity, EntityStore, Overlay};
use crate::engine::json::value_refs;
use crate::engine::pack::{ActionEntry, PolicyPack};

/// A context as the engine takes it: a JSON object in Cedar's JSON form.
pub type ContextMap = Map<String, Value>;

/// An entity reference as callers send it: a Cedar type name and an id.
#[derive(Debug, Clone, Copy)]
pub struct UidRef<'a> {
    pub ty: &'a str,
    pub id: &'a str,
}

/// A decision request as it arrives, before any validation: references as the caller named
/// them, the context and the request-scoped entities already read as JSON.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRequest<'a> {
    pub principal: UidRef<'a>,
    pub action: UidRef<'a>,
    pub resource: UidRef<'a>,
    /// None: `{}`.
    pub context: Option<&'a ContextMap>,
    /// Request-scoped entities in Cedar's JSON form; empty: none.
    pub entities: &'a [Value],
}

/// A request validated against the schema, ready to decide.
#[derive(Debug)]
pub struct CheckedRequest {
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    /// None: no context, and none needed (the schema's context for the action is empty), so
    /// the Cedar request is built only if Cedar's evaluator is needed.
    pub(crate) request: Option<Request>,
    pub(crate) context_refs: Vec<EntityUid>,
    pub(crate) overlay: Overlay,
}

/// Parses an entity reference; `field` names its parts in errors (`Field::Principal`, ...).
pub fn parse_uid(
    pack: &PolicyPack,
    r: UidRef<'_>,
    field: fn(Part) -> Field,
) -> Result<EntityUid, RequestError> {
    if r.ty.is_empty() {
        return Err(RequestError::new(field(Part::Type), "is empty"));
    }
    let Some(ty) = pack.entity_type(r.ty) else {
        let message = match EntityTypeName::from_str(r.ty) {
            Ok(ty) => unknown_name("entity types", &ty.to_string(), &pack.entity_type_names()),
            Err(e) => format!("`{}` is not a Cedar type name: {e}", quote(r.ty)),
        };
        return Err(RequestError::new(field(Part::Type), message));
    };
    let ty = ty.clone();
    if r.id.is_empty() {
        return Err(RequestError::new(field(Part::Id), "is empty"));
    }
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(r.id)))
}

/// Parses a reference and resolves it to the entity it names: itself, or the entity whose
/// declared key (`names.toml` `[keys]`) its id is; a name with two owners is refused naming
/// them.
pub fn parse_named_uid(
    pack: &PolicyPack,
    store: &EntityStore,
    r: UidRef<'_>,
    field: fn(Part) -> Field,
) -> Result<EntityUid, RequestError> {
    let uid = parse_uid(pack, r, field)?;
    match store.resolve_name(uid.type_name(), uid.id().unescaped()) {
        Ok(owner) => Ok(owner.unwrap_or(uid)),
        Err(m) => Err(RequestError::new(field(Part::Id), m)),
    }
}

/// Parses an action reference. An empty type means the schema's action type, so callers may
/// send a bare action id (`viewProject`).
pub fn parse_action(pack: &PolicyPack, r: UidRef<'_>) -> Result<EntityUid, RequestError> {
    if r.id.is_empty() {
        return Err(RequestError::new(Field::Action(Part::Id), "is empty"));
    }
    let Some(action_type) = pack.action_type() else {
        return Err(RequestError::new(
            Field::Action(Part::Whole),
            "the schema declares no actions",
        ));
    };
    if !r.ty.is_empty() && pack.entity_type(r.ty) != Some(action_type) {
        let ty = EntityTypeName::from_str(r.ty).map_err(|e| {
            RequestError::new(
                Field::Action(Part::Type),
                format!("`{}` is not a Cedar type name: {e}", quote(r.ty)),
            )
        })?;
        if &ty != action_type {
            return Err(RequestError::new(
                Field::Action(Part::Type),
                format!(
                    "`{}` is not the action type `{action_type}`",
                    quote(&ty.to_string())
                ),
            ));
        }
    }
    let uid = EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(r.id));
    if pack.action(&uid).is_none() {
        return Err(RequestError::new(
            Field::Action(Part::Id),
            unknown_name("actions", r.id, &pack.action_ids()),
        ));
    }
    Ok(uid)
}

/// A context as text ('' for none or `{}`): what a page token binds a listing to, and what the
/// decision log writes.
pub fn context_text(context: Option<&ContextMap>) -> String {
    match context {
        Some(c) if !c.is_empty() => serde_json::to_string(c).unwrap_or_default(),
        _ => String::new(),
    }
}

/// Request-scoped entities as text ('' for none), as [`context_text`].
pub fn entities_text(entities: &[Value]) -> String {
    match entities {
        [] => String::new(),
        e => serde_json::to_string(e).unwrap_or_default(),
    }
}

/// A bare action id, as policy authors write it in suites and the matrix.
pub fn action_id(id: &str) -> UidRef<'_> {
    UidRef { ty: "", id }
}

/// Parses request-scoped entities (Cedar JSON), each validated against the schema; a refusal
/// names the entity at fault by its index.
pub fn parse_overlay(
    pack: &PolicyPack,
    store: &EntityStore,
    entities: &[Value],
) -> Result<Overlay, RequestError> {
    if entities.is_empty() {
        return Ok(Overlay::default());
    }
    let mut batch = Vec::with_capacity(entities.len());
    let mut seen = std::collections::HashSet::new();
    for (i, value) in entities.iter().enumerate() {
        // The schema's actions, as Cedar's request entities may list them: left out when they
        // match the schema, refused when they differ.
        match pack.entities.declared_action(value) {
            Some(Ok(())) => continue,
            Some(Err(how)) => return Err(RequestError::new(Field::Entities(Some(i)), how)),
            None => {}
        }
        let mut value = value.clone();
        pack.open_attrs(&mut value);
        let e = parse_entity(value, &pack.entities, "entity")
            .map_err(|e| RequestError::new(Field::Entities(Some(i)), e))?;
        if !seen.insert(e.uid()) {
            return Err(RequestError::new(
                Field::Entities(Some(i)),
                format!("duplicate entity {}", e.uid()),
            ));
        }
        batch.push(e);
    }
    store
        .overlay(batch)
        .map_err(|e| RequestError::new(Field::Entities(None), e))
}

/// Parses a context for one action with Cedar's parser, validated against the schema. Also
/// returns the entities the context references, for the slice.
fn parse_context(
    pack: &PolicyPack,
    action: &EntityUid,
    context: Option<&ContextMap>,
) -> Result<(Context, Vec<EntityUid>), RequestError> {
    let value = Value::Object(context.cloned().unwrap_or_default());
    let mut refs = Vec::new();
    value_refs(&value, &mut refs);
    let context = Context::from_json_value(value, Some((&pack.schema, action))).map_err(|e| {
        RequestError::new(
            Field::Context(None),
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
    map: &ContextMap,
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
pub(crate) fn cedar_request<'r>(
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
pub(crate) fn context_of(request: Option<&Request>) -> Option<&cedar_policy_core::ast::Context> {
    match request {
        Some(r) => AsRef::<cedar_policy_core::ast::Request>::as_ref(r).context(),
        None => Some(&*EMPTY_CONTEXT),
    }
}

static EMPTY_CONTEXT: std::sync::LazyLock<cedar_policy_core::ast::Context> =
    std::sync::LazyLock::new(cedar_policy_core::ast::Context::empty);

/// The request validated against the schema, with the entities its context references. The
/// caller has checked the principal's and resource's types against the action's `appliesTo`;
/// so when the context is empty and the pack validated the empty context for this action at
/// load, nothing is left to check, and the Cedar request is not built (None): only Cedar's
/// evaluator needs it. Otherwise the context is read (quickly if it is plain, else by Cedar's
/// parser) and the whole request validated.
/// Then a context field's value must be one the pack declares for it, if it declares any.
pub(crate) fn checked_request(
    pack: &PolicyPack,
    entry: &ActionEntry,
    uids: (&EntityUid, &EntityUid, &EntityUid),
    context: Option<&ContextMap>,
) -> Result<(Option<Request>, Vec<EntityUid>), RequestError> {
    let id = uids.1.id().unescaped();
    let opened = context.map(|c| pack.open_context(id, c));
    let context = opened.as_deref().filter(|c| !c.is_empty());
    let checked = schema_checked_request(pack, entry, uids, context)?;
    let declared = pack.names.context_values(id);
    if let (false, Some(context)) = (declared.is_empty(), context) {
        check_declared_values(declared, context)?;
    }
    Ok(checked)
}

/// [`checked_request`] as far as the schema goes.
fn schema_checked_request(
    pack: &PolicyPack,
    entry: &ActionEntry,
    (principal, action, resource): (&EntityUid, &EntityUid, &EntityUid),
    context: Option<&ContextMap>,
) -> Result<(Option<Request>, Vec<EntityUid>), RequestError> {
    if context.is_none() && entry.empty_context {
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
    let empty = ContextMap::new();
    let quick = quick_context(context.unwrap_or(&empty), &|t| pack.entity_type(t).cloned());
    if let Some((context, refs)) = quick {
        if let Ok(request) = request(context) {
            return Ok((Some(request), refs));
        }
    }
    // What the quick reader does not take, or took but the schema refuses: Cedar's parser
    // decides, and words the error.
    let (context, refs) = parse_context(pack, action, context)?;
    Ok((Some(request(context)?), refs))
}

/// Validates a whole request against the schema, naming the field at fault.
pub fn check(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &DecisionRequest<'_>,
) -> Result<CheckedRequest, RequestError> {
    let principal = parse_named_uid(pack, store, req.principal, Field::Principal)?;
    let action = parse_action(pack, req.action)?;
    let resource = parse_named_uid(pack, store, req.resource, Field::Resource)?;
    let overlay = parse_overlay(pack, store, req.entities)?;
    check_parsed(pack, (principal, action, resource), req.context, overlay)
}

/// The rest of [`check`], once uids and request-scoped entities are parsed.
pub fn check_parsed(
    pack: &PolicyPack,
    (principal, action, resource): (EntityUid, EntityUid, EntityUid),
    context: Option<&ContextMap>,
    overlay: Overlay,
) -> Result<CheckedRequest, RequestError> {
    let entry = pack
        .action(&action)
        .ok_or_else(|| RequestError::new(Field::Action(Part::Whole), "unknown action"))?;
    if !entry.principal_types.contains(principal.type_name()) {
        return Err(RequestError::new(
            Field::Principal(Part::Type),
            format!(
                "action `{}` does not apply to principals of type `{}`",
                action.id().unescaped(),
                principal.type_name()
            ),
        ));
    }
    if !entry.resource_types.contains(resource.type_name()) {
        return Err(RequestError::new(
            Field::Resource(Part::Type),
            format!(
                "action `{}` does not apply to resources of type `{}`",
                action.id().unescaped(),
                resource.type_name()
            ),
        ));
    }
    let (request, context_refs) =
        checked_request(pack, entry, (&principal, &action, &resource), context)?;
    Ok(CheckedRequest {
        principal,
        action,
        resource,
        request,
        context_refs,
        overlay,
    })
}

/// Refuses a context field whose value is not one the pack declares for it (`names.toml`,
/// `[context.<action>]`), naming the field and the values it may take.
fn check_declared_values(
    declared: &[(String, Vec<String>)],
    context: &ContextMap,
) -> Result<(), RequestError> {
    for (field, values) in declared {
        if let Some(Value::String(v)) = context.get(field) {
            if !values.iter().any(|allowed| allowed == v) {
                return Err(RequestError::new(
                    Field::Context(Some(field.clone())),
                    format!(
                        "`{}` is not one of the values the policies declare: {}",
                        quote(v),
                        values.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn request_error_field(e: &cedar_policy::RequestValidationError) -> Field {
    use cedar_policy::RequestValidationError as E;
    match e {
        E::UndeclaredAction(_) | E::ExternalAction(_) => Field::Action(Part::Whole),
        E::UndeclaredPrincipalType(_) | E::InvalidPrincipalType(_) => Field::Principal(Part::Type),
        E::UndeclaredResourceType(_) | E::InvalidResourceType(_) => Field::Resource(Part::Type),
        E::InvalidContext(_) | E::TypeOfContext(_) => Field::Context(None),
        _ => Field::Request,
    }
}

#[cfg(test)]
mod tests {
    use cedar_policy::{Context, EntityUid, Request};

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
            let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) else {
                continue;
            };
            let Some((context, _)) = super::quick_context(&map, &types) else {
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
