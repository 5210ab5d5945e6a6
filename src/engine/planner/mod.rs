//! Resource plans: "which resources of this type may this principal act on", answered as a
//! condition over the resource's own attributes and id that the caller's database applies to
//! its own table (sorted, searched and paged there), instead of a list of ids.
//!
//! The plan is exact: a resource satisfies it exactly when `IsAuthorized` allows it, given a
//! table whose rows are the stored resources with their stored attributes. Each policy of the
//! action is folded for the known principal and context ([`fold`]): what the index knows is
//! resolved (the principal's ancestors, its attributes, the entities reached through the
//! resource's attributes, found through the reverse attribute index), leaving atoms on the
//! resource's own attributes ([`cond`]). Forbids become negated conjuncts. A policy that reads
//! the resource in a way no such filter can say is refused, naming the policy and the
//! expression; a plan is never quietly wider or narrower. [`sql`] turns a plan into a
//! parameterized PostgreSQL `WHERE` fragment.

mod cond;
mod fold;
pub mod json;
mod residual;
pub mod sql;

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy_core::ast;

use self::cond::{and, not, or, simplify, Key, Set, Val, C};
use self::fold::{depends, Folder};
use crate::engine::error::{Field, Part, RequestError};
use crate::engine::facts::{Ent, Lookup};
use crate::engine::index::EntityStore;
use crate::engine::list::{scope, target, ListRequest, Side};
use crate::engine::pack::{PolicyPack, Record};
use crate::engine::plan::{Node, Plan};
use crate::engine::request::{context_of, ContextMap, UidRef};

/// A plan request as it arrives.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    pub principal: UidRef<'a>,
    pub action: UidRef<'a>,
    /// The resource type to plan for.
    pub resource_type: &'a str,
    /// None: `{}`.
    pub context: Option<&'a ContextMap>,
    /// Request-scoped entities in Cedar's JSON form.
    pub entities: &'a [serde_json::Value],
    /// Attribute (or `id`) → column, for the plan's SQL; None or empty: the pack's default
    /// (`names.toml` `[columns.<type>]`), if it has one.
    pub columns: Option<&'a BTreeMap<String, String>>,
}

/// What the plan says of every resource of the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    AlwaysAllowed,
    AlwaysDenied,
    Conditional,
}

/// A value in a condition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// An entity: its Cedar type and id (a database column holds the id).
    Entity {
        ty: String,
        id: String,
    },
    String(String),
    Long(i64),
    Bool(bool),
}

/// The condition tree. A path is one of the resource's own attributes, or `id` for its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Literal(bool),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    /// The attribute (or id) equals the value.
    Eq {
        path: String,
        value: Value,
    },
    /// The attribute (or id) is one of the values.
    In {
        path: String,
        values: Vec<Value>,
    },
    /// The set-valued attribute holds the value.
    Contains {
        path: String,
        value: Value,
    },
    /// The set-valued attribute holds at least one of the values.
    Overlaps {
        path: String,
        values: Vec<Value>,
    },
    /// The resource has the optional attribute.
    Has {
        path: String,
    },
    /// A branch, with the `@id`s of the policies it comes from.
    Policies {
        ids: Vec<String>,
        condition: Box<Condition>,
    },
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePlan {
    pub outcome: Outcome,
    pub condition: Condition,
    /// The resource type planned for (its Cedar name).
    pub resource_type: String,
    /// The residual policies in Cedar syntax, one per line, for people.
    pub residual: String,
    /// The condition as a PostgreSQL `WHERE` fragment, when a column mapping was given or
    /// the pack has one for the type.
    pub sql: Option<sql::Where>,
}

/// Plans a request. Bad input, and a policy that cannot be pushed down, are refused naming
/// the field (for the latter, the action) and, for a policy, its `@id` and the expression.
pub fn plan(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &PlanRequest<'_>,
) -> Result<ResourcePlan, RequestError> {
    let list = ListRequest {
        listed: Side::Resources,
        other: req.principal,
        action: req.action,
        listed_type: req.resource_type,
        context: req.context,
        entities: req.entities,
        page_size: 0,
        page_token: "",
    };
    let (principal, action, resource_type, entry) = target(pack, store, &list)?;
    let (overlay, placeholder, probe) =
        scope(pack, store, &list, &principal, &action, &resource_type)?;
    let refused = |m: String| RequestError::new(Field::Action(Part::Whole), m);
    let owned;
    let plan = match &entry.plan {
        Some(p) => p,
        None => {
            owned = whole_plan(pack, &action).map_err(refused)?;
            &owned
        }
    };
    static NO_ATTRS: std::sync::LazyLock<Record> = std::sync::LazyLock::new(Record::default);
    let type_name = resource_type.to_string();
    let shape = pack.shapes.entities.get(&type_name).unwrap_or(&NO_ATTRS);
    let names: Vec<(&str, bool)> = entry
        .compiled
        .iter()
        .map(|c| (c.name.as_str(), c.forbid))
        .collect();
    let parts = Parts {
        pack,
        names: &names,
        plan,
        principal: principal.as_ref(),
        placeholder: placeholder.as_ref(),
        shape,
        context: context_of(probe.request.as_ref()),
    };
    let mut out = if overlay.is_empty() {
        parts.run(store)
    } else {
        parts.run(&store.list_view(&overlay))
    }
    .map_err(refused)?;
    out.resource_type = type_name;
    let columns = match req.columns {
        Some(c) if !c.is_empty() => Some(c),
        _ => pack.names.columns.get(&out.resource_type),
    };
    if let Some(columns) = columns {
        sql::check_columns(columns, &shape.attr_names())
            .and_then(|()| sql::to_sql(&out.condition, columns))
            .map(|w| out.sql = Some(w))
            .map_err(|e| RequestError::new(Field::Columns(e.key), e.message))?;
    }
    Ok(out)
}

/// An action without a compiled plan: the first policy outside the plans' subset, named.
fn whole_plan(pack: &PolicyPack, action: &cedar_policy::EntityUid) -> Result<Plan, String> {
    let entry = pack.action(action).ok_or("unknown action")?;
    let facts = crate::engine::plan::ActionFacts {
        uid: entry.core_entity.uid(),
        ancestors: &entry.core_entity.ancestors().cloned().collect(),
    };
    for c in &entry.compiled {
        if Plan::compile(std::slice::from_ref(c), &facts).is_none() {
            return Err(format!(
                "policy `{}` cannot be planned: `{}` uses what plans do not evaluate \
                 (extension functions, arithmetic, records, tags or templates)",
                c.name, c.condition
            ));
        }
    }
    Err("the action's policies cannot be planned".into())
}

struct Parts<'a> {
    pack: &'a PolicyPack,
    names: &'a [(&'a str, bool)],
    plan: &'a Plan,
    principal: &'a ast::EntityUID,
    placeholder: &'a ast::EntityUID,
    shape: &'a Record,
    context: Option<&'a ast::Context>,
}

impl Parts<'_> {
    fn run<L: Lookup>(&self, facts: &L) -> Result<ResourcePlan, String> {
        let principal_ent = match facts.ix(self.principal) {
            Some(ix) => Ent::Ix(ix),
            None => Ent::Other(self.principal),
        };
        let folder = Folder {
            pack: self.pack,
            facts,
            principal: self.principal,
            principal_ent,
            placeholder: self.placeholder,
            shape: self.shape,
            context: self.context,
        };
        let mut permits: Vec<(&str, C<'_>)> = Vec::new();
        let mut forbids: Vec<(&str, C<'_>)> = Vec::new();
        let mut residual = Vec::new();
        for ((name, forbid), node) in self.names.iter().zip(&self.plan.conditions) {
            let (t, _, _) = folder
                .fold(node)
                .map_err(|e| format!("policy `{name}`: {e}"))?;
            let t = simplify(t).map_err(|e| format!("policy `{name}`: {e}"))?;
            if matches!(t, C::Const(false)) {
                continue;
            }
            residual.push(format!(
                "@id(\"{name}\") {} when {{ {} }};",
                if *forbid { "forbid" } else { "permit" },
                residual::show(node, &|n| known_text(&folder, n))
            ));
            if *forbid {
                forbids.push((name, t));
            } else {
                permits.push((name, t));
            }
        }
        fn any<'c>(xs: &[(&str, C<'c>)]) -> C<'c> {
            xs.iter()
                .fold(C::Const(false), |acc, (_, c)| or(acc, c.clone()))
        }
        let total = simplify(and(any(&permits), not(any(&forbids))))
            .map_err(|e| format!("the plan: {e}"))?;
        let outcome = match total {
            C::Const(true) => Outcome::AlwaysAllowed,
            C::Const(false) => Outcome::AlwaysDenied,
            _ => Outcome::Conditional,
        };
        let branches = |xs: &[(&str, C<'_>)]| -> Condition {
            let mut out: Vec<Condition> = xs
                .iter()
                .map(|(name, c)| Condition::Policies {
                    ids: vec![name.to_string()],
                    condition: Box::new(public(c, facts)),
                })
                .collect();
            if out.len() == 1 {
                out.pop().unwrap_or(Condition::Literal(false))
            } else {
                Condition::Or(out)
            }
        };
        let condition = match outcome {
            Outcome::AlwaysDenied => Condition::Literal(false),
            _ if forbids.is_empty() => branches(&permits),
            _ => Condition::And(vec![
                branches(&permits),
                Condition::Not(Box::new(branches(&forbids))),
            ]),
        };
        Ok(ResourcePlan {
            outcome,
            condition,
            resource_type: String::new(),
            residual: residual.join("\n"),
            sql: None,
        })
    }
}

/// The text of a part's value for this request, where it does not depend on the resource.
fn known_text<L: Lookup>(folder: &Folder<'_, L>, n: &Node) -> Option<String> {
    if depends(n) || matches!(n, Node::Bool(_) | Node::Long(_) | Node::Str(_)) {
        return None;
    }
    folder.text(n)
}

/// The public form of an internal condition.
fn public<L: Lookup>(c: &C<'_>, facts: &L) -> Condition {
    let path = |k: &Key| match k {
        Key::Id => "id".to_string(),
        Key::Attr(a) => a.to_string(),
    };
    let values = |vals: &BTreeSet<Val>| -> Vec<Value> {
        let mut v: Vec<Value> = vals.iter().map(|x| value(x, facts)).collect();
        v.sort();
        v
    };
    match c {
        C::Const(b) => Condition::Literal(*b),
        C::And(xs) => Condition::And(xs.iter().map(|x| public(x, facts)).collect()),
        C::Or(xs) => Condition::Or(xs.iter().map(|x| public(x, facts)).collect()),
        C::Not(x) => Condition::Not(Box::new(public(x, facts))),
        C::In(k, Set::Vals(vals)) => {
            let mut v = values(vals);
            if v.len() == 1 {
                Condition::Eq {
                    path: path(k),
                    value: v.remove(0),
                }
            } else {
                Condition::In {
                    path: path(k),
                    values: v,
                }
            }
        }
        // `simplify` leaves no predicate standing.
        C::In(_, Set::Where(..)) => Condition::Literal(false),
        C::Overlaps(k, vals) => {
            let mut v = values(vals);
            if v.len() == 1 {
                Condition::Contains {
                    path: path(k),
                    value: v.remove(0),
                }
            } else {
                Condition::Overlaps {
                    path: path(k),
                    values: v,
                }
            }
        }
        C::Has(a) => Condition::Has {
            path: a.to_string(),
        },
    }
}

fn value<L: Lookup>(v: &Val, facts: &L) -> Value {
    match v {
        Val::Ix(ix) => Value::Entity {
            ty: facts.type_text(*ix).into_owned(),
            id: facts.id(*ix).to_string(),
        },
        Val::Uid(u) => Value::Entity {
            ty: u.entity_type().to_string(),
            id: u.eid().as_ref().to_string(),
        },
        Val::Str(s) => Value::String(s.to_string()),
        Val::Long(n) => Value::Long(*n),
        Val::Bool(b) => Value::Bool(*b),
    }
}
