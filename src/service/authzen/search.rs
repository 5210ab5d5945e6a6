//! The three searches: subjects (ListSubjects), resources (ListResources) and actions
//! (ListAllowedActions), one page at a time. A search that names a type or action the pack
//! does not know, an action that does not apply to the types, or a subject or resource id the
//! store does not hold (and the request gives no `properties` for) finds nothing: `200` with no
//! results and the reason in `context.no_results`, never a 400 and never what a permissive
//! policy would allow an unknown entity. The action search also takes the documented
//! extensions `options.each_declared_context` and `options.action_contexts` (a whole screen in
//! one call, as gRPC's ListAllowedActions). A page token continues only the query it came
//! from: the engine binds its tokens to the query, and this edge binds them to `page.limit`
//! too (the specification asks that a follow-up change nothing but the token). The last page
//! has an empty `next_token`.

use std::collections::BTreeMap;

use cedar_policy::{EntityId, EntityUid};
use serde_json::{json, Value};

use super::error::{spelled, HttpError, Paths};
use super::query::{self, Named};
use super::wire::{Entity, Found, FoundAction, PageResponse, Search, SearchResponse};
use super::AuthzenService;
use crate::engine::error::{quote, Field, RequestError};
use crate::engine::index::EntityStore;
use crate::engine::list::actions::{ActionOutcome, ActionsRequest, Shown};
use crate::engine::list::{token, ListRequest, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::engine::pack::PolicyPack;
use crate::engine::request::{self, UidRef};
use crate::service::state::StateError;
use crate::service::telemetry::{CallLog, Input};

pub(super) use crate::engine::list::Side as Listed;

/// The page size asked for (the default when absent), and the text a token binds it by.
fn limit(page: Option<&super::wire::PageRequest>) -> Result<(u32, String), RequestError> {
    match page.and_then(|p| p.limit) {
        None => Ok((DEFAULT_PAGE_SIZE, String::new())),
        Some(0) => Err(RequestError::edge("page.limit", "must be at least 1")),
        Some(n) if n > MAX_PAGE_SIZE as u64 => Err(RequestError::edge(
            "page.limit",
            format!("{n} is more than the maximum of {MAX_PAGE_SIZE}"),
        )),
        Some(n) => Ok((n as u32, n.to_string())),
    }
}

/// The engine's token inside an edge token `<limit>.<token>`, refused if the limit changed.
fn inner_token<'a>(given: Option<&'a str>, limit: &str) -> Result<&'a str, RequestError> {
    let Some(t) = given.filter(|t| !t.is_empty()) else {
        return Ok("");
    };
    let refused = |why: &str| RequestError::edge("page.token", why);
    let (bound, inner) = t
        .split_once('.')
        .ok_or_else(|| refused("is not a page token of this service (damaged or made up)"))?;
    if bound != limit {
        return Err(refused(
            "was issued with another page.limit: a follow-up request repeats the query and the limit",
        ));
    }
    Ok(inner)
}

fn outer_token(inner: &str, limit: &str) -> String {
    if inner.is_empty() {
        String::new()
    } else {
        format!("{limit}.{inner}")
    }
}

fn required<'a, T>(v: Option<&'a T>, field: &str) -> Result<&'a T, RequestError> {
    v.ok_or_else(|| RequestError::edge(field, "is required"))
}

/// Why a search finds nothing before the engine is asked: a type the pack does not know, or
/// (where `id_matters`) an entity the store does not hold, by id or declared key, that the
/// request gives no properties for. An empty type, and a name with two owners, stay the
/// caller's error.
fn unknown_entity(
    pack: &PolicyPack,
    store: &EntityStore,
    e: &Entity,
    at: &str,
    id_matters: bool,
) -> Result<Option<String>, RequestError> {
    if e.ty.is_empty() {
        return Err(RequestError::edge(format!("{at}.type"), "is empty"));
    }
    let ty = pack.names.cedar_type(&e.ty);
    let Some(cedar) = pack
        .entity_type(ty)
        .filter(|t| Some(*t) != pack.action_type())
    else {
        return Ok(Some(format!(
            "{at}.type `{}` is not a type of the policies",
            quote(&e.ty)
        )));
    };
    let id = e.id.as_deref().unwrap_or("");
    let has_props = e.properties.as_ref().is_some_and(|p| !p.is_empty());
    if id_matters && !id.is_empty() && !has_props {
        let uid = EntityUid::from_type_name_and_id(cedar.clone(), EntityId::new(id));
        let by_key = store
            .resolve_name(cedar, id)
            .map_err(|m| RequestError::edge(format!("{at}.id"), m))?;
        if by_key.is_none() && !store.contains(&uid) {
            return Ok(Some(format!("{at} {uid} is not an entity the store holds")));
        }
    }
    Ok(None)
}

/// Why an entity search finds nothing for an action: one the pack does not know, or one that
/// does not apply to the subject's and resource's types.
fn unknown_action(
    pack: &PolicyPack,
    name: &str,
    subject: &Entity,
    resource: &Entity,
) -> Option<String> {
    let id = pack.names.action_id(name);
    let Some(entry) = pack.action_by_id(id) else {
        return Some(format!(
            "action `{}` is not an action of the policies",
            quote(name)
        ));
    };
    let applies = |e: &Entity, types: &std::collections::HashSet<cedar_policy::EntityTypeName>| {
        pack.entity_type(pack.names.cedar_type(&e.ty))
            .is_some_and(|t| types.contains(t))
    };
    if !applies(subject, &entry.principal_types) || !applies(resource, &entry.resource_types) {
        return Some(format!(
            "action `{}` does not apply to a {} and a {}",
            quote(name),
            quote(&subject.ty),
            quote(&resource.ty)
        ));
    }
    None
}

/// The answer of a search that finds nothing, saying why.
fn no_results(pack: &PolicyPack, revision: u64, why: &str) -> Vec<u8> {
    let out = SearchResponse::<Found<'_>> {
        page: PageResponse {
            next_token: String::new(),
            count: 0,
        },
        context: json!({
            "policy_version": pack.version,
            "revision": revision,
            "no_results": why,
        }),
        results: Vec::new(),
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

impl AuthzenService {
    /// `POST /access/v1/search/subject` and `/search/resource`.
    pub(super) fn search_entities(
        &self,
        body: &[u8],
        listed: Listed,
    ) -> Result<Vec<u8>, HttpError> {
        let req: Search = query::parse(body)?;
        let subject = required(req.subject.as_ref(), "subject")?;
        let action = required(req.action.as_ref(), "action")?;
        let resource = required(req.resource.as_ref(), "resource")?;
        let (page_size, bound) = limit(req.page.as_ref())?;
        let page_token = inner_token(req.page.as_ref().and_then(|p| p.token.as_deref()), &bound)?;
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let view = live.view();
        let pack = &live.pack;
        let store = view.store;
        // The searched-for side's id is ignored, as the specification says; the other's is
        // required.
        let (searched, searched_at, other, other_at) = match listed {
            Listed::Principals => (subject, "subject", resource, "resource"),
            Listed::Resources => (resource, "resource", subject, "subject"),
        };
        let nothing = match (
            unknown_entity(pack, store, searched, searched_at, false)?,
            unknown_entity(pack, store, other, other_at, true)?,
        ) {
            (Some(why), _) | (None, Some(why)) => Some(why),
            (None, None) => unknown_action(pack, &action.name, subject, resource),
        };
        if let Some(why) = nothing {
            return Ok(no_results(pack, store.revision(), &why));
        }
        let context = query::with_action_properties(pack, req.context.as_ref(), action, "action")?;
        if searched.properties.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(RequestError::edge(
                format!("{searched_at}.properties"),
                "the searched-for side has no properties: its entities are the stored ones",
            )
            .into());
        }
        let searched_named = query::named(pack, view.store, searched, searched_at, false)?;
        let other: Named<'_> = query::named(pack, view.store, other, other_at, true)?;
        let (entities, _) = query::properties_entities(pack, store, &[&other])?;
        let action_id = pack.names.action_id(&action.name);
        // The other side's properties are the only request-scoped entities.
        let from = [other_at];
        let paths = Paths {
            subject: "subject",
            action: "action",
            resource: "resource",
            context: "context",
            entities: &from,
            searched: searched_at,
        };
        let page = view
            .list(&ListRequest {
                listed,
                other: UidRef {
                    ty: other.ty,
                    id: &other.id,
                },
                action: UidRef {
                    ty: "",
                    id: action_id,
                },
                listed_type: searched_named.ty,
                context: context.as_deref(),
                entities: &entities,
                page_size,
                page_token,
            })
            .map_err(|e| spelled(e, &paths))?;
        let results: Vec<Found<'_>> = page
            .items
            .into_iter()
            .map(|l| Found {
                ty: &searched.ty,
                id: l.id,
            })
            .collect();
        let out = SearchResponse {
            page: PageResponse {
                next_token: outer_token(&page.next_token, &bound),
                count: results.len(),
            },
            context: json!({
                "policy_version": pack.version,
                "revision": view.store.revision(),
            }),
            results,
        };
        Ok(serde_json::to_vec(&out).unwrap_or_default())
    }

    /// `POST /access/v1/search/action`: the allowed actions by name, in name order.
    pub(super) fn search_actions(
        &self,
        body: &[u8],
        call: &mut CallLog<'_>,
    ) -> Result<Vec<u8>, HttpError> {
        let req: Search = query::parse(body)?;
        let subject = required(req.subject.as_ref(), "subject")?;
        let resource = required(req.resource.as_ref(), "resource")?;
        let (page_size, bound) = limit(req.page.as_ref())?;
        let page_token = inner_token(req.page.as_ref().and_then(|p| p.token.as_deref()), &bound)?;
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let view = live.view();
        let pack = &live.pack;
        if let Some(why) = unknown_entity(pack, view.store, subject, "subject", true)?.or(
            unknown_entity(pack, view.store, resource, "resource", true)?,
        ) {
            return Ok(no_results(pack, view.store.revision(), &why));
        }
        let subject = query::named(pack, view.store, subject, "subject", true)?;
        let resource = query::named(pack, view.store, resource, "resource", true)?;
        let context = req.context.as_ref();
        let options = req.options.unwrap_or_default();
        // Per outside action name, its context; keyed by action id for the engine.
        let mut per_action = BTreeMap::new();
        let mut given_as = BTreeMap::new();
        for (name, c) in options.action_contexts.iter().flatten() {
            let id = pack.names.action_id(name).to_string();
            given_as.insert(id.clone(), name.clone());
            per_action.insert(id, c.clone());
        }
        let (entities, from) =
            query::properties_entities(pack, view.store, &[&subject, &resource])?;
        let paths = Paths {
            subject: "subject",
            action: "action",
            resource: "resource",
            context: "context",
            entities: &from,
            searched: "",
        };
        let actions = view
            .list_actions(&ActionsRequest {
                principal: UidRef {
                    ty: subject.ty,
                    id: &subject.id,
                },
                resource: UidRef {
                    ty: resource.ty,
                    id: &resource.id,
                },
                context,
                per_action: Some(&per_action),
                each_declared: options.each_declared_context.unwrap_or(false),
                entities: &entities,
            })
            .map_err(|e| match &e.field {
                Field::ActionContext(id) => RequestError::edge(
                    format!(
                        "options.action_contexts.{}",
                        given_as.get(id).map_or(id.as_str(), String::as_str)
                    ),
                    e.message,
                ),
                _ => spelled(e, &paths),
            })?;
        let per_action_text: Vec<String> = per_action
            .iter()
            .map(|(id, c)| format!("{id}={}", request::context_text(Some(c))))
            .collect();
        let query = token::fingerprint(&[
            "actions",
            &actions.principal.to_string(),
            &actions.resource.to_string(),
            &request::context_text(context),
            &request::entities_text(&entities),
            &per_action_text.join("\u{0}"),
            if options.each_declared_context == Some(true) {
                "each"
            } else {
                ""
            },
        ]);
        let cursor = match page_token {
            "" => None,
            t => Some(token::decode(t, query).map_err(|e| RequestError::edge("page.token", e))?),
        };
        let revision = view.store.revision();
        // Each allowed action with the context it was decided with, when that is not the
        // request's own, keyed for paging by name and that context.
        let mut allowed: Vec<(String, FoundAction)> = Vec::new();
        let mut not_evaluated = Vec::new();
        for listed in actions.listed {
            let action = listed.action;
            let shown = match listed.context {
                Shown::Default => None,
                Shown::Given => per_action.get(&action).cloned(),
                Shown::Declared(c) => Some(c),
            };
            match listed.outcome {
                ActionOutcome::Decided(d) => {
                    self.telemetry.record(
                        call,
                        &actions.principal,
                        &action,
                        &actions.resource,
                        Input::Json(context, &entities),
                        &d,
                        &pack.version,
                        revision,
                    );
                    if d.allow {
                        let name = pack.names.action_name(&action).to_string();
                        let key = match &shown {
                            None => name.clone(),
                            Some(c) => format!("{name}\u{0}{}", request::context_text(Some(c))),
                        };
                        allowed.push((
                            key,
                            FoundAction {
                                name,
                                context: shown,
                            },
                        ));
                    }
                }
                ActionOutcome::NotEvaluated(reason) => {
                    let mut item = json!({
                        "name": pack.names.action_name(&action),
                        "reason": reason,
                    });
                    if let Some(c) = shown {
                        item["context"] = Value::Object(c);
                    }
                    not_evaluated.push(item)
                }
            }
        }
        allowed.sort_by(|a, b| a.0.cmp(&b.0));
        let start = match &cursor {
            None => 0,
            Some(c) => allowed.partition_point(|a| a.0.as_str() <= c.as_str()),
        };
        let end = (start + page_size as usize).min(allowed.len());
        let next_token = if end < allowed.len() {
            outer_token(&token::encode(query, &allowed[end - 1].0), &bound)
        } else {
            String::new()
        };
        let results: Vec<FoundAction> = allowed.drain(start..end).map(|(_, a)| a).collect();
        let mut context = json!({"policy_version": pack.version, "revision": revision});
        if !not_evaluated.is_empty() {
            context["not_evaluated"] = json!(not_evaluated);
        }
        let out = SearchResponse {
            page: PageResponse {
                next_token,
                count: results.len(),
            },
            context,
            results,
        };
        Ok(serde_json::to_vec(&out).unwrap_or_default())
    }
}
