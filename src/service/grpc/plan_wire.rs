//! Resource plans in proto form: the engine's condition tree, values and SQL parameters as
//! `PlanResourcesResponse` carries them.

use super::pb;
use crate::engine::planner::sql::{Param, Where};
use crate::engine::planner::{Condition, Outcome, ResourcePlan, Value};

pub(super) fn response(
    plan: ResourcePlan,
    policy_version: String,
    revision: u64,
) -> pb::PlanResourcesResponse {
    pb::PlanResourcesResponse {
        decision: match plan.outcome {
            Outcome::AlwaysAllowed => pb::PlanDecision::AlwaysAllowed,
            Outcome::AlwaysDenied => pb::PlanDecision::AlwaysDenied,
            Outcome::Conditional => pb::PlanDecision::Conditional,
        } as i32,
        condition: Some(condition(plan.condition)),
        sql: plan.sql.map(sql),
        residual: plan.residual,
        policy_version,
        revision,
    }
}

fn condition(c: Condition) -> pb::Condition {
    use pb::condition::Kind;
    let items = |xs: Vec<Condition>| pb::Conditions {
        items: xs.into_iter().map(condition).collect(),
    };
    let kind = match c {
        Condition::Policies {
            ids,
            condition: inner,
        } => {
            let mut out = condition(*inner);
            out.policies = ids;
            return out;
        }
        Condition::Literal(b) => Kind::Literal(b),
        Condition::And(xs) => Kind::All(items(xs)),
        Condition::Or(xs) => Kind::Any(items(xs)),
        Condition::Not(x) => Kind::Negated(items(vec![*x])),
        Condition::Eq { path, value: v } => Kind::Eq(pb::PathValue {
            path,
            value: Some(value(v)),
        }),
        Condition::In { path, values } => Kind::In(pb::PathValues {
            path,
            values: values.into_iter().map(value).collect(),
        }),
        Condition::Contains { path, value: v } => Kind::Contains(pb::PathValue {
            path,
            value: Some(value(v)),
        }),
        Condition::Overlaps { path, values } => Kind::Overlaps(pb::PathValues {
            path,
            values: values.into_iter().map(value).collect(),
        }),
        Condition::Has { path } => Kind::Has(path),
    };
    pb::Condition {
        kind: Some(kind),
        policies: Vec::new(),
    }
}

fn value(v: Value) -> pb::PlanValue {
    use pb::plan_value::Kind;
    pb::PlanValue {
        kind: Some(match v {
            Value::Entity { ty, id } => Kind::Entity(pb::EntityUid { r#type: ty, id }),
            Value::String(s) => Kind::String(s),
            Value::Long(n) => Kind::Long(n),
            Value::Bool(b) => Kind::Boolean(b),
        }),
    }
}

fn sql(w: Where) -> pb::SqlWhere {
    use pb::sql_param::{Bools, Kind, Longs, Texts};
    pb::SqlWhere {
        r#where: w.sql,
        params: w
            .params
            .into_iter()
            .map(|p| pb::SqlParam {
                kind: Some(match p {
                    Param::Text(s) => Kind::Text(s),
                    Param::Long(n) => Kind::Long(n),
                    Param::Bool(b) => Kind::Boolean(b),
                    Param::Texts(items) => Kind::Texts(Texts { items }),
                    Param::Longs(items) => Kind::Longs(Longs { items }),
                    Param::Bools(items) => Kind::Bools(Bools { items }),
                }),
            })
            .collect(),
    }
}
