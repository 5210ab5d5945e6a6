//! The three searches: subjects (ListSubjects), resources (ListResources) and actions
//! (ListAllowedActions), one page at a time. A page token continues only the query it came
//! from: the engine binds its tokens to the query, and this edge binds them to `page.limit`
//! too (the specification asks that a follow-up change nothing but the token). The last page
//! has an empty `next_token`.

use serde_json::json;

use super::error::{spelled, HttpError, Paths};
use super::query::{self, Named};
use super::wire::{Found, FoundAction, PageResponse, Search, SearchResponse};
use super::AuthzenService;
use crate::engine::error::RequestError;
use crate::engine::list::actions::{ActionOutcome, ActionsRequest};
use crate::engine::list::{token, ListRequest, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
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
        query::no_action_properties(action.properties.as_ref(), "action")?;
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
        if searched.properties.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(RequestError::edge(
                format!("{searched_at}.properties"),
                "the searched-for side has no properties: its entities are the stored ones",
            )
            .into());
        }
        let searched_named = query::named(pack, searched, searched_at, false)?;
        let other: Named<'_> = query::named(pack, other, other_at, true)?;
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
                    id: other.id,
                },
                action: UidRef {
                    ty: "",
                    id: action_id,
                },
                listed_type: searched_named.ty,
                context: req.context.as_ref(),
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
        let subject = query::named(pack, subject, "subject", true)?;
        let resource = query::named(pack, resource, "resource", true)?;
        let context = req.context.as_ref();
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
                    id: subject.id,
                },
                resource: UidRef {
                    ty: resource.ty,
                    id: resource.id,
                },
                context,
                per_action: None,
                each_declared: false,
                entities: &entities,
            })
            .map_err(|e| spelled(e, &paths))?;
        let query = token::fingerprint(&[
            "actions",
            &actions.principal.to_string(),
            &actions.resource.to_string(),
            &request::context_text(context),
            &request::entities_text(&entities),
        ]);
        let cursor = match page_token {
            "" => None,
            t => Some(token::decode(t, query).map_err(|e| RequestError::edge("page.token", e))?),
        };
        let revision = view.store.revision();
        let mut allowed = Vec::new();
        let mut not_evaluated = Vec::new();
        for listed in actions.listed {
            let action = listed.action;
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
                        allowed.push(pack.names.action_name(&action).to_string());
                    }
                }
                ActionOutcome::NotEvaluated(reason) => not_evaluated.push(json!({
                    "name": pack.names.action_name(&action),
                    "reason": reason,
                })),
            }
        }
        allowed.sort();
        let start = match &cursor {
            None => 0,
            Some(c) => allowed.partition_point(|a| a.as_str() <= c.as_str()),
        };
        let end = (start + page_size as usize).min(allowed.len());
        let next_token = if end < allowed.len() {
            outer_token(&token::encode(query, &allowed[end - 1]), &bound)
        } else {
            String::new()
        };
        let results: Vec<FoundAction> = allowed[start..end]
            .iter()
            .map(|name| FoundAction { name: name.clone() })
            .collect();
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
