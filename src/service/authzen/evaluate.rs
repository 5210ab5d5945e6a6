//! `evaluation` and `evaluations`: one decision, or many with the top-level defaults merged
//! into each item (an item's own member replaces the default whole) under one of the three
//! semantics. A request that cannot be read is a 400 for the whole call; an item that lacks a
//! member no default supplies, or that the schema refuses, is a `false` decision whose context
//! holds the error (so one bad item never costs the caller the other answers), and counts as a
//! deny for the short-circuits. The reason `context` of a decision is left out when the
//! request's `options.include_context` is false, or the server's `http_decision_context` is
//! off and the request does not ask for it; an error's context is always given. With
//! `options.explain`, each decision's context carries `reason_admin`: why it came out so.

use serde_json::{json, Value};

use super::error::{spelled, HttpError, Paths};
use super::query::{self, At};
use super::wire::{self, Action, Entity, Evaluation, Evaluations};
use super::AuthzenService;
use crate::engine::decide::Decision;
use crate::engine::error::RequestError;
use crate::engine::explain::Explanation;
use crate::engine::request::{DecisionRequest, UidRef};
use crate::service::state::{Live, StateError};
use crate::service::telemetry::{CallLog, Input};

/// How `evaluations` runs its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

impl Semantic {
    fn parse(s: Option<&str>) -> Result<Semantic, RequestError> {
        match s {
            None | Some("execute_all") => Ok(Semantic::ExecuteAll),
            Some("deny_on_first_deny") => Ok(Semantic::DenyOnFirstDeny),
            Some("permit_on_first_permit") => Ok(Semantic::PermitOnFirstPermit),
            Some(other) => Err(RequestError::edge(
                "options.evaluations_semantic",
                format!(
                    "`{}` is not execute_all, deny_on_first_deny or permit_on_first_permit",
                    crate::engine::error::quote(other)
                ),
            )),
        }
    }
}

/// One evaluation with every member resolved, each with the path it came from.
struct Item<'a> {
    subject: (&'a Entity, At),
    action: (&'a Action, At),
    resource: (&'a Entity, At),
    context: (Option<&'a serde_json::Map<String, Value>>, At),
}

/// An item's member, else the top-level default, else a 400 naming both places.
fn pick<'a, T>(
    own: Option<&'a T>,
    default: Option<&'a T>,
    item: Option<usize>,
    member: &'static str,
) -> Result<(&'a T, At), RequestError> {
    match (own, default, item) {
        (Some(v), _, Some(i)) => Ok((v, format!("evaluations[{i}].{member}").into())),
        (Some(v), _, None) | (None, Some(v), _) => Ok((v, member.into())),
        (None, None, Some(i)) => Err(RequestError::edge(
            format!("evaluations[{i}].{member}"),
            "is required: neither the item nor the top level gives it",
        )),
        (None, None, None) => Err(RequestError::edge(member, "is required")),
    }
}

fn resolve<'a>(
    own: &'a Evaluation,
    defaults: &'a Evaluation,
    i: Option<usize>,
) -> Result<Item<'a>, RequestError> {
    let context = match (&own.context, i) {
        (Some(c), Some(i)) => (Some(c), format!("evaluations[{i}].context").into()),
        (Some(c), None) => (Some(c), "context".into()),
        (None, _) => (defaults.context.as_ref(), "context".into()),
    };
    Ok(Item {
        subject: pick(
            own.subject.as_ref(),
            defaults.subject.as_ref(),
            i,
            "subject",
        )?,
        action: pick(own.action.as_ref(), defaults.action.as_ref(), i, "action")?,
        resource: pick(
            own.resource.as_ref(),
            defaults.resource.as_ref(),
            i,
            "resource",
        )?,
        context,
    })
}

/// A decision's context: the reason (determining policy ids, errors if any) and what it was
/// decided with.
fn reason(d: &Decision, version: &str, revision: u64) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("determining_policies".into(), json!(d.determining));
    if !d.errors.is_empty() {
        m.insert("errors".into(), json!(d.errors));
    }
    m.insert("policy_version".into(), json!(version));
    m.insert("revision".into(), json!(revision));
    Value::Object(m)
}

/// A decision's context, with its explanation when there is one.
fn context_of(
    d: &Decision,
    explained: Option<&Explanation>,
    with_context: bool,
    version: &str,
    revision: u64,
) -> Option<Value> {
    if !with_context && explained.is_none() {
        return None;
    }
    let mut c = reason(d, version, revision);
    if let (Some(e), Value::Object(m)) = (explained, &mut c) {
        m.insert(
            "reason_admin".into(),
            crate::service::explain_json::explanation(e),
        );
    }
    Some(c)
}

fn item_error(e: &RequestError) -> Value {
    json!({"error": {"status": 400, "field": e.field.to_string(), "message": e.to_string()}})
}

fn explain_of(options: Option<&wire::Options>) -> bool {
    options.and_then(|o| o.explain).unwrap_or(false)
}

impl AuthzenService {
    /// Whether decisions carry their reason `context`: the request's option, else the
    /// server's setting.
    fn with_context(&self, options: Option<&wire::Options>) -> bool {
        options
            .and_then(|o| o.include_context)
            .unwrap_or(self.decision_context)
    }

    /// Decides one resolved item on the decision path, counted and logged like a gRPC call.
    fn decide_item(
        &self,
        live: &Live<'_>,
        item: &Item<'_>,
        explain: bool,
        call: &mut CallLog<'_>,
    ) -> Result<(Decision, Option<Explanation>), RequestError> {
        let view = live.view();
        let pack = &live.pack;
        let subject = query::named(pack, view.store, item.subject.0, &item.subject.1, true)?;
        let resource = query::named(pack, view.store, item.resource.0, &item.resource.1, true)?;
        let (action, action_at) = (&item.action.0, &item.action.1);
        let action_id = pack.names.action_id(&action.name);
        let (entities, from) =
            query::properties_entities(pack, view.store, &[&subject, &resource])?;
        let context = query::with_action_properties(pack, item.context.0, action, action_at)?;
        let context = context.as_deref();
        let paths = Paths {
            subject: &item.subject.1,
            action: action_at,
            resource: &item.resource.1,
            context: &item.context.1,
            entities: &from,
            searched: "",
        };
        let checked = view
            .check(&DecisionRequest {
                principal: UidRef {
                    ty: subject.ty,
                    id: &subject.id,
                },
                action: UidRef {
                    ty: "",
                    id: action_id,
                },
                resource: UidRef {
                    ty: resource.ty,
                    id: &resource.id,
                },
                context,
                entities: &entities,
            })
            .map_err(|e| spelled(e, &paths))?;
        let explained = explain.then(|| view.explain(&checked));
        let d = match &explained {
            Some(e) => e.decision.clone(),
            None => view.decide(&checked),
        };
        self.telemetry.record(
            call,
            &checked.principal,
            action_id,
            &checked.resource,
            Input::Json(context, &entities),
            &d,
            &pack.version,
            view.store.revision(),
        );
        Ok((d, explained))
    }

    /// `POST /access/v1/evaluation`.
    pub(super) fn evaluation(
        &self,
        body: &[u8],
        call: &mut CallLog<'_>,
    ) -> Result<Vec<u8>, HttpError> {
        let req: Evaluation = query::parse(body)?;
        let with_context = self.with_context(req.options.as_ref());
        let explain = explain_of(req.options.as_ref());
        let none = Evaluation::default();
        let item = resolve(&req, &none, None)?;
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let (d, explained) = self.decide_item(&live, &item, explain, call)?;
        let out = wire::Decision {
            decision: d.allow,
            context: context_of(
                &d,
                explained.as_ref(),
                with_context,
                &live.pack.version,
                live.store().revision(),
            ),
        };
        Ok(serde_json::to_vec(&out).unwrap_or_default())
    }

    /// `POST /access/v1/evaluations`.
    pub(super) fn evaluations(
        &self,
        body: &[u8],
        call: &mut CallLog<'_>,
    ) -> Result<Vec<u8>, HttpError> {
        let req: Evaluations = query::parse(body)?;
        let semantic = Semantic::parse(
            req.options
                .as_ref()
                .and_then(|o| o.evaluations_semantic.as_deref()),
        )?;
        let with_context = self.with_context(req.options.as_ref());
        let explain = explain_of(req.options.as_ref());
        let defaults = Evaluation {
            subject: req.subject,
            action: req.action,
            resource: req.resource,
            context: req.context,
            options: None,
        };
        let max = self.engine.limits.max_batch;
        let items: Vec<Evaluation> = match &req.evaluations {
            Some(raw) => query::bounded_items(raw, "evaluations", max)?,
            None => Vec::new(),
        };
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let version = &live.pack.version;
        let revision = live.store().revision();
        // No items: a single evaluation of the top level, answered as one.
        if items.is_empty() {
            let none = Evaluation::default();
            let item = resolve(&defaults, &none, None)?;
            let (d, explained) = self.decide_item(&live, &item, explain, call)?;
            let out = wire::Decision {
                decision: d.allow,
                context: context_of(&d, explained.as_ref(), with_context, version, revision),
            };
            return Ok(serde_json::to_vec(&out).unwrap_or_default());
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let decided = resolve(it, &defaults, Some(i))
                .and_then(|item| self.decide_item(&live, &item, explain, call));
            let (allow, mut context) = match decided {
                Ok((d, explained)) => (
                    d.allow,
                    context_of(&d, explained.as_ref(), with_context, version, revision),
                ),
                Err(e) => (false, Some(item_error(&e))),
            };
            let stop = match semantic {
                Semantic::ExecuteAll => None,
                Semantic::DenyOnFirstDeny => (!allow).then_some("deny_on_first_deny"),
                Semantic::PermitOnFirstPermit => allow.then_some("permit_on_first_permit"),
            };
            if let (Some(why), Some(Value::Object(m))) = (stop, &mut context) {
                m.insert("reason".into(), json!(why));
            }
            out.push(wire::Decision {
                decision: allow,
                context,
            });
            if stop.is_some() {
                break;
            }
        }
        let out = wire::EvaluationsResponse { evaluations: out };
        Ok(serde_json::to_vec(&out).unwrap_or_default())
    }
}
