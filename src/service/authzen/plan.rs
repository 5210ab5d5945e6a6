//! `POST /access/v1/plan/resource`, an extension of the AuthZEN API (which has no plan
//! endpoint): which resources of a type the subject may act on, as a condition over the
//! resources' own attributes and a parameterized PostgreSQL `WHERE` fragment for the caller's
//! own table. The request takes the AuthZEN members `subject`, `action`, `resource: {"type":
//! …}` and `context`, plus an optional `"sql": {"columns": {"project": "project_id", …}}`
//! (else the pack's default, `names.toml` `[columns.<type>]`). Unlike a search, a type or
//! action the pack does not know is a 400 naming the field: a plan is run against the caller's
//! own table, and a quiet "nothing" would hide the mistake there.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{spelled, HttpError, Paths};
use super::query;
use super::wire::{Action, Entity};
use super::AuthzenService;
use crate::engine::error::RequestError;
use crate::engine::planner::{json, Outcome, PlanRequest};
use crate::engine::request::UidRef;
use crate::service::state::StateError;

/// The path of the endpoint.
pub const PLAN_RESOURCE: &str = "/access/v1/plan/resource";

#[derive(Debug, Default, Deserialize)]
pub(super) struct PlanBody {
    #[serde(default)]
    subject: Option<Entity>,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    resource: Option<Entity>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    sql: Option<SqlOptions>,
}

#[derive(Debug, Default, Deserialize)]
struct SqlOptions {
    #[serde(default)]
    columns: BTreeMap<String, String>,
}

fn required<'a, T>(v: Option<&'a T>, field: &str) -> Result<&'a T, RequestError> {
    v.ok_or_else(|| RequestError::edge(field, "is required"))
}

impl AuthzenService {
    pub(super) fn plan_resource(&self, body: &[u8]) -> Result<Vec<u8>, HttpError> {
        let req: PlanBody = query::parse(body)?;
        let subject = required(req.subject.as_ref(), "subject")?;
        let action = required(req.action.as_ref(), "action")?;
        let resource = required(req.resource.as_ref(), "resource")?;
        if resource.id.as_deref().is_some_and(|id| !id.is_empty()) {
            return Err(RequestError::edge(
                "resource.id",
                "a plan is for every resource of the type: give only resource.type",
            )
            .into());
        }
        let live = self.engine.live().ok_or(StateError::NotReady)?;
        let view = live.view();
        let pack = &live.pack;
        let subject_named = query::named(pack, view.store, subject, "subject", true)?;
        let (entities, from) = query::properties_entities(pack, view.store, &[&subject_named])?;
        let context = query::with_action_properties(pack, req.context.as_ref(), action, "action")?;
        let paths = Paths {
            subject: "subject",
            action: "action",
            resource: "resource",
            context: "context",
            entities: &from,
            searched: "resource",
        };
        let columns = req.sql.as_ref().map(|s| &s.columns);
        let plan = view
            .plan(&PlanRequest {
                principal: UidRef {
                    ty: subject_named.ty,
                    id: &subject_named.id,
                },
                action: UidRef {
                    ty: "",
                    id: pack.names.action_id(&action.name),
                },
                resource_type: pack.names.cedar_type(&resource.ty),
                context: context.as_deref(),
                entities: &entities,
                columns,
            })
            .map_err(|e| spelled(e, &paths))?;
        let mut out = Map::new();
        out.insert(
            "decision".into(),
            json!(match plan.outcome {
                Outcome::AlwaysAllowed => "always_allowed",
                Outcome::AlwaysDenied => "always_denied",
                Outcome::Conditional => "conditional",
            }),
        );
        let outside = |ty: &str| pack.names.outside_type(ty).to_string();
        out.insert(
            "condition".into(),
            json::condition(&plan.condition, &outside),
        );
        if let Some(w) = &plan.sql {
            out.insert("sql".into(), json::sql(w));
        }
        out.insert(
            "context".into(),
            json!({
                "policy_version": pack.version,
                "revision": view.store.revision(),
                "residual": plan.residual,
            }),
        );
        Ok(serde_json::to_vec(&Value::Object(out)).unwrap_or_default())
    }
}
