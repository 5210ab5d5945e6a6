//! Narrowing, for listing: from each permit's compiled condition, a finder of the entities
//! (principals or resources) for which the condition can hold, read from the hierarchy and
//! the reverse attribute index instead of scanning every entity of the type.
//!
//! A finder may answer a superset, never a subset: listing checks every candidate on the
//! decision path, so a finder only has to keep every entity the permit could allow. Forbids
//! only take away, so listing reads no forbid's finder; comparing two packs reads them, to
//! find the pairs a changed forbid can deny. The shapes followed backwards, with `X` the listed
//! entity and `K` a part of the condition that does not mention it (evaluated first, as plans
//! evaluate):
//! - `K in X.a.b`: `X.a.b` is `K` or one of its ancestors;
//! - `X.a.b in K`: `X.a.b` is `K` or one of its descendants (`K` may be a set of entities);
//! - `X.a.b == K`, `X.a.b.contains(K)`, `K.contains(X.a.b)`, `containsAny`, `containsAll`;
//! - `&&` keeps the first side that narrows, `||` and `if` the union of both sides, `X is T`
//!   nothing when `T` is not the listed type, a part that does not mention `X` and is false
//!   nothing.
//!
//! Anything else (negation, comparisons, `like`, `has`, a path through an attribute that
//! holds records) gives up: the listing checks every entity of the type, with the same
//! answer, more slowly. A condition outside the plans' subset has no plan, hence no finder.

use cedar_policy_core::ast::{self, BinaryOp};
use smol_str::SmolStr;

use crate::engine::facts::{Ent, Ix, Lookup, V};
use crate::engine::plan::{eval_known, Node, Plan};

/// Which side of the request a listing enumerates.
pub use crate::engine::error::ListedSide as Listed;

/// How a part that does not mention the listed entity relates to a path from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rel {
    /// `K in X.path`
    KnownIn,
    /// `X.path in K`
    PathIn,
    /// `X.path == K`
    Eq,
    /// `X.path.contains(K)`
    Contains,
    /// `K.contains(X.path)`
    EqAny,
    /// `X.path.containsAny(K)` or `K.containsAny(X.path)`
    ContainsAny,
    /// `X.path.containsAll(K)`
    ContainsAll,
}

/// A finder compiled from one permit's condition.
#[derive(Debug)]
pub(crate) enum Finder {
    Nothing,
    Everything,
    /// A part that does not mention the listed entity: false finds nothing.
    Known(Box<Node>),
    /// `X is T`.
    IsType(ast::EntityType),
    /// The first side that narrows.
    And(Box<Finder>, Box<Finder>),
    /// The union of both sides.
    Or(Box<Finder>, Box<Finder>),
    Lookup {
        rel: Rel,
        known: Box<Node>,
        path: Vec<SmolStr>,
    },
}

/// The finders of one action's policies, for each side, in the order of its compiled policies.
/// Listing reads the permits' alone; a comparison of two packs also reads the forbids'.
#[derive(Debug)]
pub struct Finders {
    principals: Vec<Finder>,
    resources: Vec<Finder>,
    forbid: Vec<bool>,
}

impl Finders {
    /// The finders of a plan's policies (`forbid[i]` tells whether policy i is a forbid).
    pub fn compile(plan: &Plan, forbid: &[bool]) -> Finders {
        let side = |listed| plan.conditions.iter().map(|c| compile(c, listed)).collect();
        Finders {
            principals: side(Listed::Principals),
            resources: side(Listed::Resources),
            forbid: forbid.to_vec(),
        }
    }

    /// Every policy's finder for one side, with whether the policy is a forbid.
    fn all(&self, listed: Listed) -> impl Iterator<Item = (&Finder, bool)> {
        let finders = match listed {
            Listed::Principals => &self.principals,
            Listed::Resources => &self.resources,
        };
        finders.iter().zip(self.forbid.iter().copied())
    }

    /// The permits' finders for one side: what listing reads (forbids only take away).
    pub(crate) fn permits(&self, listed: Listed) -> impl Iterator<Item = &Finder> {
        self.all(listed)
            .filter(|(_, f)| !f)
            .map(|(finder, _)| finder)
    }

    /// The finder of policy `i` (in the order of the action's compiled policies).
    pub(crate) fn policy(&self, listed: Listed, i: usize) -> Option<&Finder> {
        self.all(listed).nth(i).map(|(finder, _)| finder)
    }

    /// Whether every permit narrows the candidates of this type (known from the policies alone).
    pub fn narrows(&self, listed: Listed, ty: &ast::EntityType) -> bool {
        self.permits(listed).all(|f| f.narrows(ty))
    }

    /// Whether policy `i`'s finder never scans the whole type unless a fact of the other
    /// side says so (a part that does not mention the listed entity counts as narrowing: for
    /// most entities of the other side it finds nothing or everything, and which is data).
    pub fn policy_bounded(&self, listed: Listed, i: usize, ty: &ast::EntityType) -> bool {
        self.policy(listed, i).is_some_and(|f| f.bounded(ty))
    }
}

fn mentions(n: &Node, listed: Listed) -> bool {
    match n {
        Node::Principal => listed == Listed::Principals,
        Node::Resource => listed == Listed::Resources,
        Node::Bool(_) | Node::Long(_) | Node::Str(_) | Node::Entity(_) | Node::Context => false,
        Node::Set(items) => items.iter().any(|i| mentions(i, listed)),
        Node::And(a, b) | Node::Or(a, b) | Node::Binary(_, a, b) => {
            mentions(a, listed) || mentions(b, listed)
        }
        Node::If(a, b, c) => mentions(a, listed) || mentions(b, listed) || mentions(c, listed),
        Node::Not(a) | Node::Attr(a, _) | Node::Has(a, _) | Node::Is(a, _) | Node::Like(a, _) => {
            mentions(a, listed)
        }
    }
}

/// The attribute path from the listed entity, if `n` is one (`X`, `X.a`, `X.a.b`).
pub(crate) fn path_of(n: &Node, listed: Listed) -> Option<Vec<SmolStr>> {
    match n {
        Node::Principal if listed == Listed::Principals => Some(Vec::new()),
        Node::Resource if listed == Listed::Resources => Some(Vec::new()),
        Node::Attr(e, a) => {
            let mut p = path_of(e, listed)?;
            p.push(a.clone());
            Some(p)
        }
        _ => None,
    }
}

fn is_var(n: &Node, listed: Listed) -> bool {
    path_of(n, listed).is_some_and(|p| p.is_empty())
}

fn compile(n: &Node, listed: Listed) -> Finder {
    if !mentions(n, listed) {
        return match n {
            Node::Bool(false) => Finder::Nothing,
            Node::Bool(true) => Finder::Everything,
            _ => Finder::Known(Box::new(n.clone())),
        };
    }
    let lookup = |rel, known: &Node, path| Finder::Lookup {
        rel,
        known: Box::new(known.clone()),
        path,
    };
    match n {
        Node::And(a, b) => match (compile(a, listed), compile(b, listed)) {
            (Finder::Nothing, _) | (_, Finder::Nothing) => Finder::Nothing,
            (a, b) => Finder::And(Box::new(a), Box::new(b)),
        },
        Node::Or(a, b) => Finder::Or(Box::new(compile(a, listed)), Box::new(compile(b, listed))),
        Node::If(_, a, b) => Finder::Or(Box::new(compile(a, listed)), Box::new(compile(b, listed))),
        Node::Is(e, ty) if is_var(e, listed) => Finder::IsType(ty.clone()),
        Node::Binary(op, l, r) => {
            let (lp, rp) = (path_of(l, listed), path_of(r, listed));
            let (lk, rk) = (!mentions(l, listed), !mentions(r, listed));
            match (op, lp, rp) {
                (BinaryOp::In, Some(p), _) if rk => lookup(Rel::PathIn, r, p),
                (BinaryOp::In, _, Some(p)) if lk => lookup(Rel::KnownIn, l, p),
                (BinaryOp::Eq, Some(p), _) if rk => lookup(Rel::Eq, r, p),
                (BinaryOp::Eq, _, Some(p)) if lk => lookup(Rel::Eq, l, p),
                (BinaryOp::Contains, Some(p), _) if rk => lookup(Rel::Contains, r, p),
                (BinaryOp::Contains, _, Some(p)) if lk => lookup(Rel::EqAny, l, p),
                (BinaryOp::ContainsAny, Some(p), _) if rk => lookup(Rel::ContainsAny, r, p),
                (BinaryOp::ContainsAny, _, Some(p)) if lk => lookup(Rel::ContainsAny, l, p),
                (BinaryOp::ContainsAll, Some(p), _) if rk => lookup(Rel::ContainsAll, r, p),
                _ => Finder::Everything,
            }
        }
        _ => Finder::Everything,
    }
}

impl Finder {
    /// Whether the finder narrows the candidates of this type whatever the data.
    fn narrows(&self, ty: &ast::EntityType) -> bool {
        match self {
            Finder::Nothing | Finder::Lookup { .. } => true,
            Finder::Everything | Finder::Known(_) => false,
            Finder::IsType(t) => t != ty,
            Finder::And(a, b) => a.narrows(ty) || b.narrows(ty),
            Finder::Or(a, b) => a.narrows(ty) && b.narrows(ty),
        }
    }

    /// [`Finder::narrows`], with a part that does not mention the listed entity counted as
    /// narrowing.
    fn bounded(&self, ty: &ast::EntityType) -> bool {
        match self {
            Finder::Nothing | Finder::Lookup { .. } | Finder::Known(_) => true,
            Finder::Everything => false,
            Finder::IsType(t) => t != ty,
            Finder::And(a, b) => a.bounded(ty) || b.bounded(ty),
            Finder::Or(a, b) => a.bounded(ty) && b.bounded(ty),
        }
    }

    /// The candidates: Some(entities, possibly more than can be allowed, possibly of other
    /// types or absent), or None for "every entity of the type".
    pub(crate) fn find<L: Lookup>(&self, at: &At<'_, L>) -> Option<Vec<Ix>> {
        match self {
            Finder::Nothing => Some(Vec::new()),
            Finder::Everything => None,
            Finder::Known(n) => match at.eval(n)? {
                V::Bool(false) => Some(Vec::new()),
                _ => None,
            },
            Finder::IsType(t) => (t != at.listed_type).then(Vec::new),
            Finder::And(a, b) => a.find(at).or_else(|| b.find(at)),
            Finder::Or(a, b) => {
                let mut x = a.find(at)?;
                x.extend(b.find(at)?);
                Some(x)
            }
            Finder::Lookup { rel, known, path } => lookup(at, *rel, known, path),
        }
    }
}

/// Where finders run: the data, the listed side and type, the entity on the other side, and
/// the request's context.
pub struct At<'a, L> {
    pub facts: &'a L,
    pub listed: Listed,
    pub listed_type: &'a ast::EntityType,
    /// A uid of the listed type, bound to the listed side while known parts are evaluated
    /// (they never read it).
    pub placeholder: &'a ast::EntityUID,
    pub other: &'a ast::EntityUID,
    pub context: Option<&'a ast::Context>,
}

impl<'a, L: Lookup> At<'a, L> {
    fn ent(&self, uid: &'a ast::EntityUID) -> Ent<'a> {
        match self.facts.ix(uid) {
            Some(ix) => Ent::Ix(ix),
            None => Ent::Other(uid),
        }
    }

    fn eval(&self, n: &'a Node) -> Option<V<'a>> {
        let free = (Ent::Other(self.placeholder), self.listed_type);
        let other = (self.ent(self.other), self.other.entity_type());
        let (principal, resource) = match self.listed {
            Listed::Principals => (free, other),
            Listed::Resources => (other, free),
        };
        eval_known(n, self.facts, principal, resource, self.context)
    }
}

pub(crate) fn lookup<L: Lookup>(
    at: &At<'_, L>,
    rel: Rel,
    known: &Node,
    path: &[SmolStr],
) -> Option<Vec<Ix>> {
    let k = at.eval(known)?;
    let direct = path.is_empty();
    let mut targets: Vec<Ix> = Vec::new();
    // Entity members of a set; None if a member is no entity and a path must be followed.
    let members = |items: &[V<'_>], out: &mut Vec<Ix>| -> Option<()> {
        for i in items {
            match i {
                V::Ent(Ent::Ix(ix)) => out.push(*ix),
                V::Ent(Ent::Other(_)) => {}
                _ if direct => {}
                _ => return None,
            }
        }
        Some(())
    };
    match (rel, &k) {
        (Rel::KnownIn, V::Ent(e)) => {
            if let Ent::Ix(ix) = e {
                targets.push(*ix);
                at.facts.ancestors(*ix, &mut targets);
            }
        }
        (Rel::PathIn, V::Ent(e)) => {
            if let Ent::Ix(ix) = e {
                targets.push(*ix);
                at.facts.descendants(*ix, &mut targets);
            }
        }
        (Rel::PathIn, V::Set(items)) => {
            for i in items {
                match i {
                    V::Ent(Ent::Ix(ix)) => {
                        targets.push(*ix);
                        at.facts.descendants(*ix, &mut targets);
                    }
                    V::Ent(Ent::Other(_)) => {}
                    _ => return None,
                }
            }
        }
        (Rel::Eq | Rel::Contains, V::Ent(e)) => {
            if let Ent::Ix(ix) = e {
                targets.push(*ix);
            }
        }
        // An entity equals no value of another type.
        (Rel::Eq, _) if direct => {}
        (Rel::EqAny | Rel::ContainsAny, V::Set(items)) => members(items, &mut targets)?,
        (Rel::ContainsAll, V::Set(items)) => match items.first() {
            None => return None,
            Some(V::Ent(Ent::Ix(ix))) => targets.push(*ix),
            Some(V::Ent(Ent::Other(_))) => {}
            Some(_) => return None,
        },
        _ => return None,
    }
    // Follow the path backwards: who holds these through the last attribute, who holds those
    // through the one before, and so on. A record on the way would hide the references.
    for (i, attr) in path.iter().enumerate().rev() {
        if i + 1 < path.len() && at.facts.record_valued(attr) {
            return None;
        }
        let mut holders = Vec::new();
        targets.sort_unstable();
        targets.dedup();
        at.facts.holders_of_each(attr, &targets, &mut holders);
        targets = holders;
    }
    Some(targets)
}
