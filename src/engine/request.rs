//! Requests as they arrive, checked against the schema: entity references, the action, the
//! context (read quickly when it is plain, else by Cedar's parser), and request-scoped
//! entities. Every refusal names the field at fault.

use std::borrow::Cow;
use std::str::FromStr;

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, Request};
use serde_json::Value;

use crate::engine::error::{quote, RequestError};
use crate::engine::index::{parse_entities, EntityStore, Overlay};
use crate::engine::json::value_refs;
use crate::engine::pack::{ActionEntry, PolicyPack};

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
    pub(crate) request: Option<Request>,
    pub(crate) context_refs: Vec<EntityUid>,
    pub(crate) overlay: Overlay,
}

/// Parses an entity reference; `field` names it in errors.
pub fn parse_uid(pack: &PolicyPack, r: UidRef<'_>, field: &str) -> Result<EntityUid, RequestError> {
    if r.ty.is_empty() {
        return Err(RequestError::new(format!("{field}.type"), "is empty"));
    }
    let Some(ty) = pack.entity_type(r.ty) else {
        let message = match EntityTypeName::from_str(r.ty) {
            Ok(ty) => format!("unknown entity type `{}`", quote(&ty.to_string())),
            Err(e) => format!("`{}` is not a Cedar type name: {e}", quote(r.ty)),
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
                format!("`{}` is not a Cedar type name: {e}", quote(r.ty)),
            )
        })?;
        if &ty != action_type {
            return Err(RequestError::new(
                "action.type",
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
            "action.id",
            format!("unknown action `{}`", quote(r.id)),
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
    let batch = parse_entities(value, &pack.entities, "entities_json")
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
/// so when no context is given and the pack validated the empty context for this action at
/// load, nothing is left to check, and the Cedar request is not built (None): only Cedar's
/// evaluator needs it. Otherwise the context is read (quickly if it is plain, else by Cedar's
/// parser) and the whole request validated.
/// Then a context field's value must be one the pack declares for it, if it declares any.
pub(crate) fn checked_request(
    pack: &PolicyPack,
    entry: &ActionEntry,
    uids: (&EntityUid, &EntityUid, &EntityUid),
    context_json: &str,
) -> Result<(Option<Request>, Vec<EntityUid>), RequestError> {
    let checked = schema_checked_request(pack, entry, uids, context_json)?;
    let declared = pack.names.context_values(uids.1.id().unescaped());
    if !declared.is_empty() {
        check_declared_values(declared, context_json)?;
    }
    Ok(checked)
}

/// [`checked_request`] as far as the schema goes.
fn schema_checked_request(
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

/// Refuses a context field whose value is not one the pack declares for it (`names.toml`,
/// `[context.<action>]`), naming the field and the values it may take.
fn check_declared_values(
    declared: &[(String, Vec<String>)],
    context_json: &str,
) -> Result<(), RequestError> {
    if context_json.trim().is_empty() {
        return Ok(());
    }
    let Ok(serde_json::Value::Object(context)) = serde_json::from_str(context_json) else {
        // Cedar's check above already refused anything but a valid record.
        return Ok(());
    };
    for (field, values) in declared {
        if let Some(serde_json::Value::String(v)) = context.get(field) {
            if !values.iter().any(|allowed| allowed == v) {
                return Err(RequestError::new(
                    format!("context.{field}"),
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
