//! Why a decision came out as it did. An allow names its determining permits; a deny by a
//! forbid names the forbid; a deny because nothing permits names every permit that could
//! apply to the action, with the first part of its condition that did not hold for this
//! request (as Cedar text and in words) and the values it read, evaluated by Cedar's own
//! evaluator over the request's slice of the index.

use std::sync::Arc;

use cedar_policy_core::ast::{self, BinaryOp, Expr, ExprKind, Literal, UnaryOp, ValueKind};
use cedar_policy_core::evaluator::Evaluator;

use crate::engine::decide::{self, Decision};
use crate::engine::index::EntityStore;
use crate::engine::needs::NEED_ALL;
use crate::engine::pack::PolicyPack;
use crate::engine::request::{cedar_request, CheckedRequest};

/// The longest value shown in words; longer ones are cut with `…`.
const MAX_VALUE_CHARS: usize = 200;

/// How a decision came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Permits held and no forbid did: `Decision::determining` names them.
    Permitted,
    /// A forbid held: `Decision::determining` names the forbids.
    Forbidden,
    /// No permit held: each one that could apply is in `Explanation::permits`.
    NothingPermits,
}

/// A decision with its explanation.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub decision: Decision,
    pub why: Why,
    /// For [`Why::NothingPermits`]: every permit the action's policies hold, with what failed.
    pub permits: Vec<Unmet>,
}

/// A permit that did not hold for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub policy: String,
    /// The first conjunct of its condition (scope, then `when`, then `unless` clauses) that was
    /// not true, as Cedar text; it evaluates to false (or fails) for this request.
    pub failed: String,
    /// The same in words, with the values its parts had.
    pub words: String,
    /// The variables and attributes the failed part read, with their values, and for an
    /// entity value the groups it is in.
    pub read: Vec<Read>,
    /// Set when the part failed to evaluate instead of being false.
    pub error: Option<String>,
}

/// One value the failed part read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub expr: String,
    pub value: String,
    /// For an entity: its ancestors in the store, sorted (empty for other values).
    pub ancestors: Vec<String>,
}

/// Decides and explains one checked request.
pub fn explain(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &CheckedRequest,
    depth: usize,
) -> Explanation {
    let decision = decide::decide(pack, store, req, depth);
    let why = if decision.allow {
        Why::Permitted
    } else if !decision.determining.is_empty() {
        Why::Forbidden
    } else {
        Why::NothingPermits
    };
    let mut out = Explanation {
        decision,
        why,
        permits: Vec::new(),
    };
    if out.why != Why::NothingPermits {
        return out;
    }
    let Some(entry) = pack.action(&req.action) else {
        return out;
    };
    // Every entity the request can reach, as a decision by Cedar's evaluator sees them.
    let mut seeds = vec![(&req.principal, &NEED_ALL), (&req.resource, &NEED_ALL)];
    seeds.extend(req.context_refs.iter().map(|r| (r, &NEED_ALL)));
    seeds.extend(entry.literals.iter().map(|l| (l, &NEED_ALL)));
    let built =
        decide::slice_entities(store, &seeds, &req.overlay, depth, &entry.literals, [entry])
            .and_then(|entities| {
                cedar_request(
                    req.request.as_ref(),
                    (&req.principal, &req.action, &req.resource),
                )
                .map(|r| (entities, r.into_owned()))
            });
    let (entities, request) = match built {
        Ok(b) => b,
        Err(e) => {
            out.decision.errors.push(e);
            return out;
        }
    };
    let core: &ast::Request = request.as_ref();
    let evaluator = Evaluator::new(
        core.clone(),
        &entities,
        cedar_policy_core::extensions::Extensions::all_available(),
    );
    let at = At {
        evaluator: &evaluator,
        entities: &entities,
    };
    for p in entry.compiled.iter().filter(|p| !p.forbid) {
        let mut parts = Vec::new();
        conjuncts(&p.condition, &mut parts);
        let unmet = parts.into_iter().find_map(|part| match at.eval(part) {
            Ok(v) if is_true(&v) => None,
            Ok(_) => Some((part, None)),
            Err(e) => Some((part, Some(e))),
        });
        // A permit whose every part holds would have allowed: it is not unmet (the decision
        // then denied for an error, which the decision's errors say).
        if let Some((part, error)) = unmet {
            out.permits.push(Unmet {
                policy: p.name.clone(),
                failed: part.to_string(),
                words: match &error {
                    Some(e) => format!("`{part}` could not be evaluated: {e}"),
                    None => at.words(part),
                },
                read: at.reads(part),
                error,
            });
        }
    }
    out
}

/// The top-level `&&` parts of a condition, in order, without literal `true`s.
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e.expr_kind() {
        ExprKind::And { left, right } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        ExprKind::Lit(Literal::Bool(true)) => {}
        _ => out.push(e),
    }
}

fn is_true(v: &ast::Value) -> bool {
    matches!(v.value_kind(), ValueKind::Lit(Literal::Bool(true)))
}

struct At<'a> {
    evaluator: &'a Evaluator<'a>,
    entities: &'a cedar_policy_core::entities::Entities,
}

impl At<'_> {
    fn eval(&self, e: &Expr) -> Result<ast::Value, String> {
        self.evaluator
            .interpret(e, &ast::SlotEnv::new())
            .map_err(|e| e.to_string())
    }

    /// `e` shown with its value: "`resource.member` (Blue::Role::\"apollo/member\")".
    fn shown(&self, e: &Expr) -> String {
        match e.expr_kind() {
            ExprKind::Lit(_) => format!("`{e}`"),
            _ => match self.eval(e) {
                Ok(v) => format!("`{e}` ({})", cut(&v.to_string())),
                Err(err) => format!("`{e}` (which fails: {err})"),
            },
        }
    }

    /// Why a part that is not true is not, in words.
    fn words(&self, e: &Expr) -> String {
        match e.expr_kind() {
            ExprKind::BinaryApp { op, arg1, arg2 } => {
                let (a, b) = (self.shown(arg1), self.shown(arg2));
                match op {
                    BinaryOp::In => format!("{a} is not in {b}"),
                    BinaryOp::Eq => format!("{a} is not equal to {b}"),
                    BinaryOp::Contains => format!("{a} does not contain {b}"),
                    BinaryOp::ContainsAll => format!("{a} does not contain all of {b}"),
                    BinaryOp::ContainsAny => format!("{a} contains none of {b}"),
                    BinaryOp::Less => format!("{a} is not less than {b}"),
                    BinaryOp::LessEq => format!("{a} is not at most {b}"),
                    _ => format!("`{e}` is false"),
                }
            }
            ExprKind::UnaryApp {
                op: UnaryOp::Not,
                arg,
            } => format!("`{arg}` holds, and the policy requires that it does not"),
            ExprKind::Is { expr, entity_type } => {
                format!("{} is not a `{entity_type}`", self.shown(expr))
            }
            ExprKind::HasAttr { expr, attr } => {
                format!("{} has no attribute `{attr}`", self.shown(expr))
            }
            ExprKind::Or { left, right } => format!(
                "neither part holds: {}; and {}",
                self.words(left),
                self.words(right)
            ),
            ExprKind::And { .. } => {
                let mut parts = Vec::new();
                conjuncts(e, &mut parts);
                match parts
                    .into_iter()
                    .find(|p| !self.eval(p).is_ok_and(|v| is_true(&v)))
                {
                    Some(p) => self.words(p),
                    None => format!("`{e}` is false"),
                }
            }
            _ => format!("`{e}` is false"),
        }
    }

    /// The variables and attribute paths inside `e`, each once, with their values.
    fn reads(&self, e: &Expr) -> Vec<Read> {
        let mut found: Vec<&Expr> = Vec::new();
        paths(e, &mut found);
        let mut out: Vec<Read> = Vec::new();
        for p in found {
            let expr = p.to_string();
            if out.iter().any(|r| r.expr == expr) {
                continue;
            }
            let Ok(v) = self.eval(p) else { continue };
            let ancestors = match v.value_kind() {
                ValueKind::Lit(Literal::EntityUID(uid)) => self.ancestors(uid),
                _ => Vec::new(),
            };
            out.push(Read {
                expr,
                value: cut(&v.to_string()),
                ancestors,
            });
        }
        out
    }

    fn ancestors(&self, uid: &Arc<ast::EntityUID>) -> Vec<String> {
        use cedar_policy_core::entities::Dereference;
        match self.entities.entity(uid) {
            Dereference::Data(e) => {
                let mut all: Vec<String> = e.ancestors().map(|a| a.to_string()).collect();
                all.sort();
                all
            }
            _ => Vec::new(),
        }
    }
}

/// Variables (`principal`, `resource`, `context`) and attribute paths from them, outermost
/// first.
fn paths<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e.expr_kind() {
        ExprKind::Var(ast::Var::Principal | ast::Var::Resource) => out.push(e),
        ExprKind::GetAttr { expr, .. } => {
            out.push(e);
            paths(expr, out);
        }
        ExprKind::Var(_) | ExprKind::Lit(_) | ExprKind::Slot(_) | ExprKind::Unknown(_) => {}
        ExprKind::If {
            test_expr,
            then_expr,
            else_expr,
        } => {
            paths(test_expr, out);
            paths(then_expr, out);
            paths(else_expr, out);
        }
        ExprKind::And { left, right } | ExprKind::Or { left, right } => {
            paths(left, out);
            paths(right, out);
        }
        ExprKind::UnaryApp { arg, .. } => paths(arg, out),
        ExprKind::BinaryApp { arg1, arg2, .. } => {
            paths(arg1, out);
            paths(arg2, out);
        }
        ExprKind::ExtensionFunctionApp { args, .. } => args.iter().for_each(|a| paths(a, out)),
        ExprKind::HasAttr { expr, .. }
        | ExprKind::ExtHasAttr { expr, .. }
        | ExprKind::Like { expr, .. }
        | ExprKind::Is { expr, .. } => paths(expr, out),
        ExprKind::Set(items) => items.iter().for_each(|a| paths(a, out)),
        ExprKind::Record(fields) => fields.values().for_each(|a| paths(a, out)),
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_VALUE_CHARS {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX_VALUE_CHARS).collect();
        out.push('…');
        out
    }
}
