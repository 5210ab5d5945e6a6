//! The direct decision path: policy conditions written in a common subset of Cedar, compiled
//! per action at load and evaluated straight over the entity index, with no Cedar entities
//! built. It knows Cedar, not Blue: `principal in resource.member` becomes "is that attribute's
//! entity in the principal's stored ancestor closure".
//!
//! It never decides differently from Cedar, because it never decides anything hard:
//! - a policy outside the subset (extension functions, records, arithmetic, tags, templates,
//!   any use of `action` but `==`/`in` against literals) leaves its action without a plan;
//! - at run time, anything that would be an evaluation error in Cedar (a missing attribute, an
//!   entity that does not exist, a type error), and any value outside the subset, gives up.
//!
//! Either way the request goes to Cedar's evaluator over a slice (`decide::evaluate`), which
//! reports Cedar's own errors. So a plan answers only requests on which every policy of the
//! action evaluates to a boolean without error, and then the answer is Cedar's by
//! construction of each operator below. `tests/oracle.rs` checks both paths against plain
//! Cedar, and a unit test in `engine/decide.rs` checks plans against Cedar's authorizer on made-up
//! policies using every operator.

use std::collections::{BTreeMap, HashSet};

use cedar_policy_core::ast::{self, BinaryOp, ExprKind, Literal, UnaryOp, ValueKind, Var};
use smol_str::SmolStr;

use crate::engine::compiled::Compiled;
use crate::engine::facts::{Ent, Facts, V};

/// A compiled condition.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Bool(bool),
    Long(i64),
    Str(SmolStr),
    Entity(ast::EntityUID),
    Principal,
    Resource,
    Context,
    Set(Vec<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    If(Box<Node>, Box<Node>, Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
    Attr(Box<Node>, SmolStr),
    Has(Box<Node>, SmolStr),
    Is(Box<Node>, ast::EntityType),
    Like(Box<Node>, ast::Pattern),
}

/// The compiled policies of one action, in the order of the action's compiled policies.
#[derive(Debug)]
pub struct Plan {
    pub(crate) conditions: Vec<Node>,
}

/// What compiling a part of an expression gives: a node, or the request's action (a constant
/// for a plan, which only `==` and `in` against entity literals may use).
enum Part {
    Node(Node),
    Action,
}

/// The action a plan is compiled for: its uid and its action-group ancestors.
pub struct ActionFacts<'a> {
    pub uid: &'a ast::EntityUID,
    pub ancestors: &'a HashSet<ast::EntityUID>,
}

impl Plan {
    /// The plan of an action's policies, or None if any of them is outside the subset.
    pub fn compile(policies: &[Compiled], action: &ActionFacts<'_>) -> Option<Plan> {
        let conditions = policies
            .iter()
            .map(|p| match compile(&p.condition, action)? {
                Part::Node(n) => Some(n),
                Part::Action => None,
            })
            .collect::<Option<Vec<Node>>>()?;
        Some(Plan { conditions })
    }

    /// Evaluates every policy; the satisfied ones by index, or None to leave the request to
    /// Cedar (see the module comment).
    pub fn satisfied<'a, F: Facts>(
        &'a self,
        facts: &'a F,
        (principal, principal_type): (Ent<'a>, &'a ast::EntityType),
        (resource, resource_type): (Ent<'a>, &'a ast::EntityType),
        context: Option<&'a ast::Context>,
    ) -> Option<Vec<usize>> {
        let env = Env::new(
            facts,
            (principal, principal_type),
            (resource, resource_type),
            context,
        )?;
        let mut out = Vec::new();
        for (i, c) in self.conditions.iter().enumerate() {
            match env.eval(c)? {
                V::Bool(true) => out.push(i),
                V::Bool(false) => {}
                _ => return None,
            }
        }
        Some(out)
    }
}

/// Evaluates a condition part with the principal and resource given (listing evaluates the
/// parts that do not mention the entity it lists, with that one bound to anything): Some
/// value, or None for "not decided here".
pub(crate) fn eval_known<'a, F: Facts>(
    node: &'a Node,
    facts: &'a F,
    (principal, principal_type): (Ent<'a>, &'a ast::EntityType),
    (resource, resource_type): (Ent<'a>, &'a ast::EntityType),
    context: Option<&'a ast::Context>,
) -> Option<V<'a>> {
    Env::new(
        facts,
        (principal, principal_type),
        (resource, resource_type),
        context,
    )?
    .eval(node)
}

fn compile(e: &ast::Expr, action: &ActionFacts<'_>) -> Option<Part> {
    let node = |e: &ast::Expr| -> Option<Box<Node>> {
        match compile(e, action)? {
            Part::Node(n) => Some(Box::new(n)),
            Part::Action => None,
        }
    };
    Some(Part::Node(match e.expr_kind() {
        ExprKind::Lit(l) => match l {
            Literal::Bool(b) => Node::Bool(*b),
            Literal::Long(n) => Node::Long(*n),
            Literal::String(s) => Node::Str(s.clone()),
            Literal::EntityUID(u) => Node::Entity((**u).clone()),
        },
        ExprKind::Var(Var::Principal) => Node::Principal,
        ExprKind::Var(Var::Resource) => Node::Resource,
        ExprKind::Var(Var::Context) => Node::Context,
        ExprKind::Var(Var::Action) => return Some(Part::Action),
        ExprKind::If {
            test_expr,
            then_expr,
            else_expr,
        } => Node::If(node(test_expr)?, node(then_expr)?, node(else_expr)?),
        ExprKind::And { left, right } => Node::And(node(left)?, node(right)?),
        ExprKind::Or { left, right } => Node::Or(node(left)?, node(right)?),
        ExprKind::UnaryApp {
            op: UnaryOp::Not,
            arg,
        } => Node::Not(node(arg)?),
        ExprKind::BinaryApp { op, arg1, arg2 } => {
            let supported = matches!(
                op,
                BinaryOp::Eq
                    | BinaryOp::Less
                    | BinaryOp::LessEq
                    | BinaryOp::In
                    | BinaryOp::Contains
                    | BinaryOp::ContainsAll
                    | BinaryOp::ContainsAny
            );
            if !supported {
                return None;
            }
            match (compile(arg1, action)?, compile(arg2, action)?) {
                (Part::Node(a), Part::Node(b)) => Node::Binary(*op, Box::new(a), Box::new(b)),
                // The action against literals is decided now, for this action.
                (Part::Action, Part::Node(b)) => {
                    let targets = entity_literals(&b)?;
                    Node::Bool(match op {
                        BinaryOp::Eq => matches!(b, Node::Entity(ref u) if u == action.uid),
                        BinaryOp::In => targets
                            .iter()
                            .any(|t| *t == action.uid || action.ancestors.contains(*t)),
                        _ => return None,
                    })
                }
                _ => return None,
            }
        }
        ExprKind::GetAttr { expr, attr } => Node::Attr(node(expr)?, attr.clone()),
        ExprKind::HasAttr { expr, attr } => Node::Has(node(expr)?, attr.clone()),
        ExprKind::Is { expr, entity_type } => Node::Is(node(expr)?, entity_type.clone()),
        ExprKind::Like { expr, pattern } => Node::Like(node(expr)?, pattern.clone()),
        ExprKind::Set(items) => Node::Set(
            items
                .iter()
                .map(|i| node(i).map(|b| *b))
                .collect::<Option<Vec<_>>>()?,
        ),
        _ => return None,
    }))
}

/// The entity literals of a literal entity or a set of them.
fn entity_literals(n: &Node) -> Option<Vec<&ast::EntityUID>> {
    match n {
        Node::Entity(u) => Some(vec![u]),
        Node::Set(items) => items
            .iter()
            .map(|i| match i {
                Node::Entity(u) => Some(u),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

struct Env<'a, F> {
    facts: &'a F,
    principal: Ent<'a>,
    principal_type: &'a ast::EntityType,
    resource: Ent<'a>,
    resource_type: &'a ast::EntityType,
    context: Option<&'a BTreeMap<SmolStr, ast::Value>>,
}

/// Some(value), or None for "leave it to Cedar".
type R<'a> = Option<V<'a>>;

impl<'a, F: Facts> Env<'a, F> {
    /// The environment of one request; None for a context Cedar left residual.
    fn new(
        facts: &'a F,
        (principal, principal_type): (Ent<'a>, &'a ast::EntityType),
        (resource, resource_type): (Ent<'a>, &'a ast::EntityType),
        context: Option<&'a ast::Context>,
    ) -> Option<Self> {
        Some(Env {
            facts,
            principal,
            principal_type,
            resource,
            resource_type,
            context: match context {
                Some(ast::Context::Value(map)) => Some(map),
                Some(ast::Context::RestrictedResidual(_)) => return None,
                None => None,
            },
        })
    }

    fn eval(&self, n: &'a Node) -> R<'a> {
        Some(match n {
            Node::Bool(b) => V::Bool(*b),
            Node::Long(n) => V::Long(*n),
            Node::Str(s) => V::Str(s),
            Node::Entity(u) => V::Ent(self.ent(u)),
            Node::Principal => V::Ent(self.principal),
            Node::Resource => V::Ent(self.resource),
            Node::Context => V::Record(self.context?),
            Node::Set(items) => V::Set(
                items
                    .iter()
                    .map(|i| self.eval(i))
                    .collect::<Option<Vec<_>>>()?,
            ),
            // Cedar: the left side must be a boolean; `false && x` does not evaluate x; the
            // right side must be a boolean too.
            Node::And(a, b) => match self.eval(a)? {
                V::Bool(false) => V::Bool(false),
                V::Bool(true) => V::Bool(self.boolean(b)?),
                _ => return None,
            },
            Node::Or(a, b) => match self.eval(a)? {
                V::Bool(true) => V::Bool(true),
                V::Bool(false) => V::Bool(self.boolean(b)?),
                _ => return None,
            },
            Node::Not(a) => V::Bool(!self.boolean(a)?),
            Node::If(t, a, b) => {
                if self.boolean(t)? {
                    self.eval(a)?
                } else {
                    self.eval(b)?
                }
            }
            Node::Binary(op, a, b) => self.binary(*op, self.eval(a)?, self.eval(b)?)?,
            Node::Attr(e, name) => match self.eval(e)? {
                // A missing entity or attribute is an error in Cedar.
                V::Ent(Ent::Ix(ix)) if self.facts.present(ix) => self.facts.attr(ix, name)?,
                V::Record(map) => self.value(map.get(name)?)?,
                _ => return None,
            },
            Node::Has(e, name) => match self.eval(e)? {
                V::Ent(Ent::Ix(ix)) if self.facts.present(ix) => {
                    V::Bool(self.facts.has_attr(ix, name))
                }
                V::Record(map) => V::Bool(map.contains_key(name)),
                _ => return None,
            },
            // The request's own entities: their type is in the request.
            Node::Is(e, ty) if matches!(**e, Node::Principal) => V::Bool(self.principal_type == ty),
            Node::Is(e, ty) if matches!(**e, Node::Resource) => V::Bool(self.resource_type == ty),
            Node::Is(e, ty) => match self.eval(e)? {
                V::Ent(Ent::Ix(ix)) => V::Bool(self.facts.type_is(ix, ty)),
                V::Ent(Ent::Other(u)) => V::Bool(u.entity_type() == ty),
                _ => return None,
            },
            Node::Like(e, pattern) => match self.eval(e)? {
                V::Str(s) => V::Bool(pattern.wildcard_match(s)),
                _ => return None,
            },
        })
    }

    fn boolean(&self, n: &'a Node) -> Option<bool> {
        match self.eval(n)? {
            V::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn ent(&self, uid: &'a ast::EntityUID) -> Ent<'a> {
        match self.facts.ix(uid) {
            Some(ix) => Ent::Ix(ix),
            None => Ent::Other(uid),
        }
    }

    /// A context value; extension values give up.
    fn value(&self, v: &'a ast::Value) -> R<'a> {
        Some(match v.value_kind() {
            ValueKind::Lit(Literal::Bool(b)) => V::Bool(*b),
            ValueKind::Lit(Literal::Long(n)) => V::Long(*n),
            ValueKind::Lit(Literal::String(s)) => V::Str(s),
            ValueKind::Lit(Literal::EntityUID(u)) => V::Ent(self.ent(u)),
            ValueKind::Set(set) => V::Set(
                set.iter()
                    .map(|i| self.value(i))
                    .collect::<Option<Vec<_>>>()?,
            ),
            ValueKind::Record(map) => V::Record(map),
            ValueKind::ExtensionValue(_) => return None,
        })
    }

    fn binary(&self, op: BinaryOp, a: V<'a>, b: V<'a>) -> R<'a> {
        Some(match (op, a, b) {
            (BinaryOp::Eq, a, b) => V::Bool(equal(&a, &b)?),
            (BinaryOp::Less, V::Long(a), V::Long(b)) => V::Bool(a < b),
            (BinaryOp::LessEq, V::Long(a), V::Long(b)) => V::Bool(a <= b),
            (BinaryOp::In, V::Ent(a), V::Ent(b)) => V::Bool(self.within(a, b)),
            (BinaryOp::In, V::Ent(a), V::Set(items)) => {
                // Every member must be an entity, as in Cedar, whatever the answer.
                let mut any = false;
                for i in &items {
                    match i {
                        V::Ent(b) => any |= self.within(a, *b),
                        _ => return None,
                    }
                }
                V::Bool(any)
            }
            (BinaryOp::Contains, V::Set(items), b) => V::Bool(contains(&items, &b)?),
            (BinaryOp::ContainsAll, V::Set(a), V::Set(b)) => {
                let mut all = true;
                for x in &b {
                    all &= contains(&a, x)?;
                }
                V::Bool(all)
            }
            (BinaryOp::ContainsAny, V::Set(a), V::Set(b)) => {
                let mut any = false;
                for x in &b {
                    any |= contains(&a, x)?;
                }
                V::Bool(any)
            }
            _ => return None,
        })
    }

    /// Cedar's `in` on two entities: the same entity, or `b` among `a`'s ancestors. An entity
    /// the index does not store has no ancestors.
    fn within(&self, a: Ent<'a>, b: Ent<'a>) -> bool {
        a.same(&b)
            || match (a, b) {
                (Ent::Ix(a), Ent::Ix(b)) => self.facts.in_closure(a, b),
                _ => false,
            }
    }
}

/// Cedar's `==`: values of different types are not equal (no error). Records give up.
pub(crate) fn equal(a: &V<'_>, b: &V<'_>) -> Option<bool> {
    Some(match (a, b) {
        (V::Bool(a), V::Bool(b)) => a == b,
        (V::Long(a), V::Long(b)) => a == b,
        (V::Str(a), V::Str(b)) => a == b,
        (V::Ent(a), V::Ent(b)) => a.same(b),
        (V::Set(a), V::Set(b)) => {
            let mut same = true;
            for x in a {
                same &= contains(b, x)?;
            }
            for x in b {
                same &= contains(a, x)?;
            }
            same
        }
        (V::Record(_), _) | (_, V::Record(_)) => return None,
        _ => false,
    })
}

pub(crate) fn contains(items: &[V<'_>], x: &V<'_>) -> Option<bool> {
    let mut found = false;
    for i in items {
        found |= equal(i, x)?;
    }
    Some(found)
}
