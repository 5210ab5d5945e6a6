//! Partial evaluation of one compiled policy condition for a known principal and context and
//! an unknown resource of a known type: the condition under which the policy evaluates to
//! true, and the one under which it evaluates to false, each over the resource's own
//! attributes and id. Both are needed because Cedar has three outcomes (an error is neither),
//! and `!x`, `x && y` and `x || y` read them differently.
//!
//! A comparison with the resource's own attribute becomes an atom on that attribute. One
//! through it (`principal in resource.project.view`) becomes an atom on the attribute too: the
//! set of entities for which the rest of the path compares true, found through the reverse
//! attribute index and checked forwards on each (so the set is exact), and for "false", a
//! predicate evaluated lazily ([`super::cond`]). Anything else that reads the resource (`<`,
//! `like`, a path through a set or a record, two paths compared) is an error naming the
//! expression: a plan is exact or it is refused.

use std::collections::BTreeSet;
use std::rc::Rc;

use cedar_policy_core::ast::{self, BinaryOp};
use smol_str::SmolStr;

use super::cond::{and, is_in, not, or, Key, Set, Through, Val, C};
use super::residual::show;
use crate::engine::facts::{Ent, Ix, Lookup, V};
use crate::engine::narrow::{lookup, At, Listed, Rel};
use crate::engine::pack::{Kind, PolicyPack, Record};
use crate::engine::plan::{contains, equal, eval_known, Node};

/// The relation a leaf tests between the value at the end of a path from the resource and a
/// known value.
#[derive(Debug, Clone)]
enum Op {
    Rel(Rel),
    /// The path's value is `true` (a boolean attribute used as a condition).
    IsTrue,
    Has(SmolStr),
    Is(ast::EntityType),
}

/// Where a policy condition is folded: the data, the principal, the resource's type and
/// attributes, and the context.
pub(crate) struct Folder<'a, L> {
    pub pack: &'a PolicyPack,
    pub facts: &'a L,
    pub principal: &'a ast::EntityUID,
    pub principal_ent: Ent<'a>,
    /// A uid of the resource type, standing in for the resource where known parts are
    /// evaluated (they never read it).
    pub placeholder: &'a ast::EntityUID,
    pub shape: &'a Record,
    pub context: Option<&'a ast::Context>,
}

/// The conditions under which a part is true, and false, and whether it never errors (then
/// "false" is "not true", and `a || b` is true where `a` or `b` is).
type Fold<'a> = Result<(C<'a>, C<'a>, bool), String>;

/// Whether a part depends on which resource it is (its type is known).
pub(crate) fn depends(n: &Node) -> bool {
    match n {
        Node::Resource => true,
        Node::Is(e, _) if matches!(**e, Node::Resource) => false,
        Node::Bool(_)
        | Node::Long(_)
        | Node::Str(_)
        | Node::Entity(_)
        | Node::Principal
        | Node::Context => false,
        Node::Set(items) => items.iter().any(depends),
        Node::And(a, b) | Node::Or(a, b) | Node::Binary(_, a, b) => depends(a) || depends(b),
        Node::If(a, b, c) => depends(a) || depends(b) || depends(c),
        Node::Not(a) | Node::Attr(a, _) | Node::Has(a, _) | Node::Is(a, _) | Node::Like(a, _) => {
            depends(a)
        }
    }
}

/// The attribute path from the resource, if `n` is one (`resource`, `resource.a.b`).
fn path_of(n: &Node) -> Option<Vec<SmolStr>> {
    crate::engine::narrow::path_of(n, Listed::Resources)
}

fn unsupported(n: &Node, why: &str) -> String {
    format!("`{}` cannot be pushed down: {why}", show(n, &|_| None))
}

impl<'a, L: Lookup> Folder<'a, L> {
    fn resource_type(&self) -> &'a ast::EntityType {
        self.placeholder.entity_type()
    }

    /// The value of a part that does not depend on the resource.
    pub(crate) fn known(&self, n: &'a Node) -> Result<V<'a>, String> {
        eval_known(
            n,
            self.facts,
            (self.principal_ent, self.principal.entity_type()),
            (Ent::Other(self.placeholder), self.resource_type()),
            self.context,
        )
        .ok_or_else(|| {
            format!(
                "`{}` cannot be evaluated for this request",
                show(n, &|_| None)
            )
        })
    }

    /// The value of a part that does not depend on the resource, as Cedar text.
    pub(crate) fn text(&self, n: &Node) -> Option<String> {
        let v = eval_known(
            n,
            self.facts,
            (self.principal_ent, self.principal.entity_type()),
            (Ent::Other(self.placeholder), self.resource_type()),
            self.context,
        )?;
        Some(super::residual::value(&v, self.facts))
    }

    /// The conditions under which `n` evaluates to true and to false.
    pub(crate) fn fold(&self, n: &'a Node) -> Fold<'a> {
        if !depends(n) {
            return Ok(match self.known(n)? {
                V::Bool(b) => (C::Const(b), C::Const(!b), true),
                // A type error: neither true nor false.
                _ => (C::Const(false), C::Const(false), false),
            });
        }
        match n {
            Node::And(a, b) => {
                let (ta, fa, xa) = self.fold(a)?;
                if matches!(ta, C::Const(false)) {
                    return Ok((ta, fa, xa));
                }
                let (tb, fb, xb) = self.fold(b)?;
                let f = if xa {
                    or(fa, fb)
                } else {
                    or(fa, and(ta.clone(), fb))
                };
                Ok((and(ta, tb), f, xa && xb))
            }
            Node::Or(a, b) => {
                let (ta, fa, xa) = self.fold(a)?;
                if matches!(ta, C::Const(true)) {
                    return Ok((ta, fa, xa));
                }
                let (tb, fb, xb) = self.fold(b)?;
                let t = if xa {
                    or(ta, tb)
                } else {
                    or(ta, and(fa.clone(), tb))
                };
                Ok((t, and(fa, fb), xa && xb))
            }
            Node::Not(a) => {
                let (t, f, x) = self.fold(a)?;
                Ok((f, t, x))
            }
            Node::If(c, a, b) => {
                let (tc, fc, xc) = self.fold(c)?;
                let (ta, fa, xa) = self.fold(a)?;
                let (tb, fb, xb) = self.fold(b)?;
                Ok((
                    or(and(tc.clone(), ta), and(fc.clone(), tb)),
                    or(and(tc, fa), and(fc, fb)),
                    xc && xa && xb,
                ))
            }
            _ => self.leaf(n),
        }
    }

    /// A comparison, `has`, `is` or boolean attribute that reads the resource.
    fn leaf(&self, n: &'a Node) -> Fold<'a> {
        let (op, path, known): (Op, Vec<SmolStr>, Option<&'a Node>) = match n {
            Node::Binary(op, l, r) => {
                let (lp, rp) = (path_of(l), path_of(r));
                let (lk, rk) = (!depends(l), !depends(r));
                let rel = |rel, p, k: &'a Node| (Op::Rel(rel), p, Some(k));
                match (op, lp, rp) {
                    (BinaryOp::In, Some(p), _) if rk => rel(Rel::PathIn, p, r),
                    (BinaryOp::In, _, Some(p)) if lk => rel(Rel::KnownIn, p, l),
                    (BinaryOp::Eq, Some(p), _) if rk => rel(Rel::Eq, p, r),
                    (BinaryOp::Eq, _, Some(p)) if lk => rel(Rel::Eq, p, l),
                    (BinaryOp::Contains, Some(p), _) if rk => rel(Rel::Contains, p, r),
                    (BinaryOp::Contains, _, Some(p)) if lk => rel(Rel::EqAny, p, l),
                    (BinaryOp::ContainsAny, Some(p), _) if rk => rel(Rel::ContainsAny, p, r),
                    (BinaryOp::ContainsAny, _, Some(p)) if lk => rel(Rel::ContainsAny, p, l),
                    (BinaryOp::ContainsAll, Some(p), _) if rk => rel(Rel::ContainsAll, p, r),
                    _ => {
                        return Err(unsupported(
                            n,
                            "a plan compares a path from the resource with a known value by \
                             `==`, `in`, `contains`, `containsAny` or `containsAll` only",
                        ))
                    }
                }
            }
            Node::Attr(..) if path_of(n).is_some() => {
                (Op::IsTrue, path_of(n).unwrap_or_default(), None)
            }
            Node::Has(e, a) if path_of(e).is_some() => {
                (Op::Has(a.clone()), path_of(e).unwrap_or_default(), None)
            }
            Node::Is(e, ty) if path_of(e).is_some() => {
                (Op::Is(ty.clone()), path_of(e).unwrap_or_default(), None)
            }
            _ => {
                return Err(unsupported(
                    n,
                    "it reads the resource in a way a filter on its own attributes cannot say",
                ))
            }
        };
        let known = match known {
            Some(k) => Some(self.known(k)?),
            None => None,
        };
        match path.len() {
            0 => self.on_id(n, &op, known),
            1 if !matches!(op, Op::Has(_) | Op::Is(_)) => self.on_attr(n, &path[0], &op, known),
            _ => self.through(n, &path, op, known, known_node(n)),
        }
    }

    /// A leaf on the resource itself: its id.
    fn on_id(&self, n: &'a Node, op: &Op, known: Option<V<'a>>) -> Fold<'a> {
        let ty = self.resource_type();
        let t = match (op, known) {
            (Op::Has(a), _) => {
                return Ok(match self.shape.kind(a) {
                    None => (C::Const(false), C::Const(true), true),
                    Some((_, true)) => (C::Const(true), C::Const(false), true),
                    Some((_, false)) => (C::Has(a.clone()), not(C::Has(a.clone())), true),
                })
            }
            (Op::Rel(Rel::KnownIn), Some(k)) => is_in(Key::Id, self.up(&k, ty)),
            (Op::Rel(Rel::PathIn), Some(k)) => is_in(Key::Id, self.down(&k, ty)),
            (Op::Rel(Rel::Eq), Some(k)) => is_in(Key::Id, self.items(&[k], &entity(ty))),
            (Op::Rel(Rel::EqAny), Some(V::Set(items))) => {
                is_in(Key::Id, self.items(&items, &entity(ty)))
            }
            _ => return Err(unsupported(n, "an unsupported test of the resource itself")),
        };
        let f = not(t.clone());
        Ok((t, f, true))
    }

    /// A leaf on one of the resource's own attributes.
    fn on_attr(&self, n: &'a Node, a: &SmolStr, op: &Op, known: Option<V<'a>>) -> Fold<'a> {
        let Some((kind, required)) = self.shape.kind(a) else {
            // An undeclared attribute: reading it is an error.
            return Ok((C::Const(false), C::Const(false), false));
        };
        let key = || Key::Attr(a.clone());
        let t = match (kind, op, known) {
            (Kind::Entity(_), Op::Rel(Rel::KnownIn), Some(k)) => {
                is_in(key(), self.up_kind(&k, kind))
            }
            (Kind::Entity(_), Op::Rel(Rel::PathIn), Some(k)) => {
                is_in(key(), self.down_kind(&k, kind))
            }
            (Kind::Set(elem), _, Some(k)) => self.on_set(n, key(), elem, op, k)?,
            (_, Op::Rel(Rel::Eq), Some(k)) => is_in(key(), self.items(&[k], kind)),
            (_, Op::Rel(Rel::EqAny), Some(V::Set(items))) => is_in(key(), self.items(&items, kind)),
            (Kind::Bool, Op::IsTrue, None) => is_in(key(), BTreeSet::from([Val::Bool(true)])),
            _ => {
                return Err(unsupported(
                    n,
                    "an unsupported test of a resource attribute of this kind",
                ))
            }
        };
        Ok(guarded(a, *required, t))
    }

    /// A leaf on a set-valued attribute of the resource.
    fn on_set(
        &self,
        n: &'a Node,
        key: Key,
        elem: &Kind,
        op: &Op,
        known: V<'a>,
    ) -> Result<C<'a>, String> {
        let overlaps = |vals: BTreeSet<Val>| {
            if vals.is_empty() {
                C::Const(false)
            } else {
                C::Overlaps(key.clone(), vals)
            }
        };
        Ok(match (op, known) {
            (Op::Rel(Rel::KnownIn), k) => overlaps(self.up_kind(&k, elem)),
            (Op::Rel(Rel::Contains), k) => overlaps(self.items(&[k], elem)),
            (Op::Rel(Rel::ContainsAny), V::Set(items)) => overlaps(self.items(&items, elem)),
            (Op::Rel(Rel::ContainsAll), V::Set(items)) => {
                let mut out = C::Const(true);
                for i in items {
                    out = and(out, overlaps(self.items(&[i], elem)));
                }
                out
            }
            _ => return Err(unsupported(n, "an unsupported test of a set attribute")),
        })
    }

    /// A leaf through one of the resource's entity attributes: an atom on that attribute.
    fn through(
        &self,
        n: &'a Node,
        path: &[SmolStr],
        op: Op,
        known: Option<V<'a>>,
        known_node: Option<&'a Node>,
    ) -> Fold<'a> {
        let a = &path[0];
        let Some((kind, required)) = self.shape.kind(a) else {
            return Ok((C::Const(false), C::Const(false), false));
        };
        let Kind::Entity(ty) = kind else {
            return Err(unsupported(
                n,
                &format!("the path goes through `{a}`, which holds no single entity"),
            ));
        };
        let Some(ty) = self.pack.entity_type(ty) else {
            return Err(unsupported(n, &format!("`{a}` names an unknown type")));
        };
        let leaf = Rc::new(Leaf {
            facts: self.facts,
            ty: ty.as_ref().clone(),
            rest: path[1..].to_vec(),
            op: op.clone(),
            known,
        });
        // Candidates through the reverse index where the relation allows, else every entity
        // of the attribute's type; each is checked forwards.
        let found = match (&op, known_node) {
            (Op::Rel(rel), Some(k)) if !leaf.rest.is_empty() => lookup(
                &At {
                    facts: self.facts,
                    listed: Listed::Resources,
                    listed_type: self.resource_type(),
                    placeholder: self.placeholder,
                    other: self.principal,
                    context: self.context,
                },
                *rel,
                k,
                &leaf.rest,
            ),
            _ => None,
        };
        let candidates = found.unwrap_or_else(|| leaf.universe());
        let mut yes = BTreeSet::new();
        for ix in candidates {
            let v = Val::Ix(ix);
            if self.facts.type_is(ix, &leaf.ty) && leaf.outcome(&v)? == Some(true) {
                yes.insert(v);
            }
        }
        let key = Key::Attr(a.clone());
        let t = is_in(key.clone(), yes);
        let f = C::In(key, Set::Where(leaf, false));
        Ok(if *required {
            (t, f, false)
        } else {
            let has = C::Has(a.clone());
            (and(has.clone(), t), and(has, f), false)
        })
    }

    /// `k` and its ancestors, as values of the type.
    fn up(&self, k: &V<'a>, ty: &ast::EntityType) -> BTreeSet<Val> {
        let mut out = BTreeSet::new();
        if let V::Ent(e) = k {
            let mut all = Vec::new();
            match e {
                Ent::Ix(ix) => {
                    all.push(*ix);
                    self.facts.ancestors(*ix, &mut all);
                }
                Ent::Other(u) => {
                    if u.entity_type() == ty {
                        out.insert(Val::Uid((*u).clone()));
                    }
                }
            }
            out.extend(
                all.into_iter()
                    .filter(|ix| self.facts.type_is(*ix, ty))
                    .map(Val::Ix),
            );
        }
        out
    }

    /// `k` (an entity or a set of them) and its descendants, as values of the type.
    fn down(&self, k: &V<'a>, ty: &ast::EntityType) -> BTreeSet<Val> {
        let roots: Vec<&V<'a>> = match k {
            V::Set(items) => items.iter().collect(),
            other => vec![other],
        };
        let mut out = BTreeSet::new();
        for r in roots {
            match r {
                V::Ent(Ent::Ix(ix)) => {
                    let mut all = vec![*ix];
                    self.facts.descendants(*ix, &mut all);
                    out.extend(
                        all.into_iter()
                            .filter(|ix| self.facts.type_is(*ix, ty))
                            .map(Val::Ix),
                    );
                }
                V::Ent(Ent::Other(u)) if u.entity_type() == ty => {
                    out.insert(Val::Uid((*u).clone()));
                }
                _ => {}
            }
        }
        out
    }

    fn up_kind(&self, k: &V<'a>, kind: &Kind) -> BTreeSet<Val> {
        match self.entity_kind(kind) {
            Some(ty) => self.up(k, ty),
            None => BTreeSet::new(),
        }
    }

    fn down_kind(&self, k: &V<'a>, kind: &Kind) -> BTreeSet<Val> {
        match self.entity_kind(kind) {
            Some(ty) => self.down(k, ty),
            None => BTreeSet::new(),
        }
    }

    fn entity_kind(&self, kind: &Kind) -> Option<&'a ast::EntityType> {
        match kind {
            Kind::Entity(t) => self.pack.entity_type(t).map(|t| t.as_ref()),
            _ => None,
        }
    }

    /// The values among `items` an attribute of this kind can equal (others never do).
    fn items(&self, items: &[V<'a>], kind: &Kind) -> BTreeSet<Val> {
        let ty = self.entity_kind(kind);
        items
            .iter()
            .filter_map(|v| match (v, kind) {
                (V::Ent(Ent::Ix(ix)), Kind::Entity(_)) => ty
                    .filter(|t| self.facts.type_is(*ix, t))
                    .map(|_| Val::Ix(*ix)),
                (V::Ent(Ent::Other(u)), Kind::Entity(_)) => ty
                    .filter(|t| u.entity_type() == *t)
                    .map(|_| Val::Uid((*u).clone())),
                (V::Str(s), Kind::String) => Some(Val::Str(SmolStr::new(s))),
                (V::Long(n), Kind::Long) => Some(Val::Long(*n)),
                (V::Bool(b), Kind::Bool) => Some(Val::Bool(*b)),
                _ => None,
            })
            .collect()
    }
}

/// The entity type as a kind.
fn entity(ty: &ast::EntityType) -> Kind {
    Kind::Entity(ty.to_string())
}

/// The known side of a binary leaf.
fn known_node(n: &Node) -> Option<&Node> {
    match n {
        Node::Binary(_, l, r) => Some(if depends(l) { r } else { l }),
        _ => None,
    }
}

/// An optional attribute's atom holds only where the attribute is present; reading a missing
/// one is an error (neither true nor false).
fn guarded<'a>(a: &SmolStr, required: bool, t: C<'a>) -> (C<'a>, C<'a>, bool) {
    if required {
        let f = not(t.clone());
        (t, f, true)
    } else {
        let has = C::Has(a.clone());
        (and(has.clone(), t.clone()), and(has, not(t)), false)
    }
}

/// A leaf through an entity attribute: the rest of the path from that entity and the
/// relation tested at its end.
struct Leaf<'a, L> {
    facts: &'a L,
    ty: ast::EntityType,
    rest: Vec<SmolStr>,
    op: Op,
    known: Option<V<'a>>,
}

impl<L: Lookup> Leaf<'_, L> {
    fn within(&self, a: &Ent<'_>, b: &Ent<'_>) -> bool {
        a.same(b)
            || match (a, b) {
                (Ent::Ix(a), Ent::Ix(b)) => self.facts.in_closure(*a, *b),
                _ => false,
            }
    }

    fn any_within(&self, a: &Ent<'_>, items: &[V<'_>], down: bool) -> Option<bool> {
        let mut any = false;
        for i in items {
            let V::Ent(b) = i else { return None };
            any |= if down {
                self.within(a, b)
            } else {
                self.within(b, a)
            };
        }
        Some(any)
    }
}

impl<L: Lookup> Through for Leaf<'_, L> {
    fn outcome(&self, v: &Val) -> Result<Option<bool>, String> {
        let mut cur = match v {
            Val::Ix(ix) => V::Ent(Ent::Ix(*ix)),
            // An entity the index does not store: reading its attributes is an error below.
            Val::Uid(u) => V::Ent(Ent::Other(u)),
            _ => return Ok(None),
        };
        let gave_up = |a: &str| format!("attribute `{a}` holds a value a plan does not read");
        for a in &self.rest {
            match cur {
                V::Ent(Ent::Ix(ix)) if self.facts.present(ix) => {
                    if !self.facts.has_attr(ix, a) {
                        return Ok(None);
                    }
                    cur = self.facts.attr(ix, a).ok_or_else(|| gave_up(a))?;
                }
                _ => return Ok(None),
            }
        }
        let k = self.known.as_ref();
        Ok(match (&self.op, &cur, k) {
            (Op::Rel(Rel::KnownIn), V::Ent(x), Some(V::Ent(kk))) => Some(self.within(kk, x)),
            (Op::Rel(Rel::KnownIn), V::Set(xs), Some(V::Ent(kk))) => self.any_within(kk, xs, false),
            (Op::Rel(Rel::PathIn), V::Ent(x), Some(V::Ent(kk))) => Some(self.within(x, kk)),
            (Op::Rel(Rel::PathIn), V::Ent(x), Some(V::Set(ks))) => self.any_within(x, ks, true),
            (Op::Rel(Rel::Eq), x, Some(kk)) => {
                Some(equal(x, kk).ok_or_else(|| gave_up(self.rest.last().map_or("", |s| s)))?)
            }
            (Op::Rel(Rel::Contains), V::Set(xs), Some(kk)) => contains(xs, kk),
            (Op::Rel(Rel::EqAny), x, Some(V::Set(ks))) => contains(ks, x),
            (Op::Rel(Rel::ContainsAny), V::Set(xs), Some(V::Set(ks))) => {
                let mut any = false;
                for x in ks {
                    any |= contains(xs, x).ok_or_else(|| gave_up("set"))?;
                }
                Some(any)
            }
            (Op::Rel(Rel::ContainsAll), V::Set(xs), Some(V::Set(ks))) => {
                let mut all = true;
                for x in ks {
                    all &= contains(xs, x).ok_or_else(|| gave_up("set"))?;
                }
                Some(all)
            }
            (Op::IsTrue, V::Bool(b), None) => Some(*b),
            // `has` on an entity the store does not hold is false, as in Cedar.
            (Op::Has(a), V::Ent(Ent::Ix(ix)), None) => {
                Some(self.facts.present(*ix) && self.facts.has_attr(*ix, a))
            }
            (Op::Has(_), V::Ent(Ent::Other(_)), None) => Some(false),
            (Op::Is(t), V::Ent(Ent::Ix(ix)), None) => Some(self.facts.type_is(*ix, t)),
            (Op::Is(t), V::Ent(Ent::Other(u)), None) => Some(u.entity_type() == t),
            // Anything else is a type error in Cedar.
            _ => None,
        })
    }

    fn universe(&self) -> Vec<Ix> {
        let mut all: Vec<Ix> = Vec::new();
        self.facts.of_type(&self.ty, &mut all);
        all.retain(|ix| self.facts.present(*ix));
        all
    }
}
