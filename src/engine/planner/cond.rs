//! The condition a resource plan is built in: a boolean tree whose atoms are sets of values of
//! one of the resource's own attributes (or its id), with the folding that keeps it small and
//! exact. A set is either finite or a predicate on entities ("the projects whose `member`
//! group does not hold ada"), kept lazy until it meets a finite set on the same attribute in a
//! conjunction and is then evaluated only on that set's members; one left alone at the end is
//! evaluated over every entity of its type.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use cedar_policy_core::ast;
use smol_str::SmolStr;

use crate::engine::facts::Ix;

/// Which part of the resource an atom reads: its id or one of its own attributes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key {
    Id,
    Attr(SmolStr),
}

/// A value an atom compares with: an entity the index knows, another entity, or a primitive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Val {
    Ix(Ix),
    Uid(ast::EntityUID),
    Str(SmolStr),
    Long(i64),
    Bool(bool),
}

/// A predicate on the entity an attribute names: Some(outcome) of a condition through it, or
/// None when evaluating it would be an error in Cedar. Err: it cannot be decided here.
pub(crate) trait Through {
    fn outcome(&self, v: &Val) -> Result<Option<bool>, String>;
    /// Every entity the predicate can hold for (of the attribute's type, present).
    fn universe(&self) -> Vec<Ix>;
}

#[derive(Clone)]
pub(crate) enum Set<'a> {
    Vals(BTreeSet<Val>),
    /// The values for which the predicate's outcome is `want`.
    Where(Rc<dyn Through + 'a>, bool),
}

impl std::fmt::Debug for Set<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Set::Vals(v) => write!(f, "{v:?}"),
            Set::Where(_, want) => write!(f, "where({want})"),
        }
    }
}

/// The internal condition.
#[derive(Debug, Clone)]
pub(crate) enum C<'a> {
    Const(bool),
    And(Vec<C<'a>>),
    Or(Vec<C<'a>>),
    Not(Box<C<'a>>),
    /// The (scalar) value at the key is in the set.
    In(Key, Set<'a>),
    /// The set-valued attribute holds at least one of the values.
    Overlaps(Key, BTreeSet<Val>),
    /// The resource has the (optional) attribute.
    Has(SmolStr),
}

pub(crate) fn and<'a>(a: C<'a>, b: C<'a>) -> C<'a> {
    match (a, b) {
        (C::Const(false), _) | (_, C::Const(false)) => C::Const(false),
        (C::Const(true), x) | (x, C::Const(true)) => x,
        (C::And(mut xs), C::And(ys)) => {
            xs.extend(ys);
            C::And(xs)
        }
        (C::And(mut xs), y) => {
            xs.push(y);
            C::And(xs)
        }
        (x, C::And(mut ys)) => {
            ys.insert(0, x);
            C::And(ys)
        }
        (x, y) => C::And(vec![x, y]),
    }
}

pub(crate) fn or<'a>(a: C<'a>, b: C<'a>) -> C<'a> {
    match (a, b) {
        (C::Const(true), _) | (_, C::Const(true)) => C::Const(true),
        (C::Const(false), x) | (x, C::Const(false)) => x,
        (C::Or(mut xs), C::Or(ys)) => {
            xs.extend(ys);
            C::Or(xs)
        }
        (C::Or(mut xs), y) => {
            xs.push(y);
            C::Or(xs)
        }
        (x, y) => C::Or(vec![x, y]),
    }
}

pub(crate) fn not(a: C<'_>) -> C<'_> {
    match a {
        C::Const(b) => C::Const(!b),
        C::Not(x) => *x,
        x => C::Not(Box::new(x)),
    }
}

/// An atom over a finite set: false when the set is empty.
pub(crate) fn is_in<'a>(key: Key, vals: BTreeSet<Val>) -> C<'a> {
    if vals.is_empty() {
        C::Const(false)
    } else {
        C::In(key, Set::Vals(vals))
    }
}

/// Folds conjunctions: the atoms of one key that a finite set bounds become one finite set
/// (predicates evaluated on its members only); then every predicate still standing is
/// evaluated over its whole universe. The result holds for exactly the same resources.
pub(crate) fn simplify<'a>(c: C<'a>) -> Result<C<'a>, String> {
    let c = fold_ands(c)?;
    materialize(c)
}

fn fold_ands(c: C<'_>) -> Result<C<'_>, String> {
    Ok(match c {
        C::And(xs) => {
            let mut out = C::Const(true);
            let mut atoms: BTreeMap<Key, Vec<(bool, Set<'_>)>> = BTreeMap::new();
            for x in xs {
                match fold_ands(x)? {
                    C::In(k, s) => atoms.entry(k).or_default().push((true, s)),
                    C::Not(inner) => match *inner {
                        C::In(k, s) => atoms.entry(k).or_default().push((false, s)),
                        other => out = and(out, not(other)),
                    },
                    other => out = and(out, other),
                }
            }
            for (k, list) in atoms {
                out = and(out, merge(k, list)?);
            }
            out
        }
        C::Or(xs) => {
            let mut out = C::Const(false);
            for x in xs {
                out = or(out, fold_ands(x)?);
            }
            out
        }
        C::Not(x) => not(fold_ands(*x)?),
        other => other,
    })
}

/// The conjunction of one key's atoms (`true`: the value is in the set; `false`: it is not).
fn merge<'a>(key: Key, list: Vec<(bool, Set<'a>)>) -> Result<C<'a>, String> {
    let mut base: Option<BTreeSet<Val>> = None;
    for (pos, s) in &list {
        if let (true, Set::Vals(v)) = (pos, s) {
            base = Some(match base {
                None => v.clone(),
                Some(b) => b.intersection(v).cloned().collect(),
            });
        }
    }
    let Some(mut base) = base else {
        let mut out = C::Const(true);
        for (pos, s) in list {
            let atom = C::In(key.clone(), s);
            out = and(out, if pos { atom } else { not(atom) });
        }
        return Ok(out);
    };
    for (pos, s) in &list {
        match (pos, s) {
            (true, Set::Vals(_)) => {}
            (false, Set::Vals(v)) => base.retain(|x| !v.contains(x)),
            (pos, Set::Where(p, want)) => {
                let mut kept = BTreeSet::new();
                for x in base {
                    let holds = p.outcome(&x)? == Some(*want);
                    if holds == *pos {
                        kept.insert(x);
                    }
                }
                base = kept;
            }
        }
    }
    Ok(is_in(key, base))
}

fn materialize(c: C<'_>) -> Result<C<'_>, String> {
    Ok(match c {
        C::In(k, Set::Where(p, want)) => {
            let mut vals = BTreeSet::new();
            for ix in p.universe() {
                let v = Val::Ix(ix);
                if p.outcome(&v)? == Some(want) {
                    vals.insert(v);
                }
            }
            is_in(k, vals)
        }
        C::And(xs) => {
            let mut out = C::Const(true);
            for x in xs {
                out = and(out, materialize(x)?);
            }
            out
        }
        C::Or(xs) => {
            let mut out = C::Const(false);
            for x in xs {
                out = or(out, materialize(x)?);
            }
            out
        }
        C::Not(x) => not(materialize(*x)?),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Even;
    impl Through for Even {
        fn outcome(&self, v: &Val) -> Result<Option<bool>, String> {
            Ok(match v {
                Val::Ix(i) if *i < 10 => Some(i % 2 == 0),
                _ => None,
            })
        }
        fn universe(&self) -> Vec<Ix> {
            (0..10).collect()
        }
    }

    fn vals(xs: &[Ix]) -> BTreeSet<Val> {
        xs.iter().map(|x| Val::Ix(*x)).collect()
    }

    fn finite(c: &C<'_>) -> Vec<Ix> {
        match c {
            C::In(_, Set::Vals(v)) => v
                .iter()
                .map(|x| match x {
                    Val::Ix(i) => *i,
                    _ => panic!("not an ix"),
                })
                .collect(),
            other => panic!("not a finite atom: {other:?}"),
        }
    }

    #[test]
    fn a_conjunction_bounds_predicates_by_its_finite_sets() {
        let k = || Key::Attr("project".into());
        let even = Rc::new(Even);
        // in {1..4, 12} and even, and not in {2}: {4}; 12 is outside the predicate's domain.
        let c = and(
            and(
                is_in(k(), vals(&[1, 2, 3, 4, 12])),
                C::In(k(), Set::Where(even.clone(), true)),
            ),
            not(is_in(k(), vals(&[2]))),
        );
        assert_eq!(finite(&simplify(c).unwrap()), [4]);
        // "evaluates to false" is not "not true": 12 errors, so it is in neither.
        let c = and(
            is_in(k(), vals(&[1, 2, 12])),
            C::In(k(), Set::Where(even.clone(), false)),
        );
        assert_eq!(finite(&simplify(c).unwrap()), [1]);
        let c = and(
            is_in(k(), vals(&[1, 2, 12])),
            not(C::In(k(), Set::Where(even.clone(), true))),
        );
        assert_eq!(finite(&simplify(c).unwrap()), [1, 12]);
        // Alone, a predicate is evaluated over its universe.
        let c = C::In(k(), Set::Where(even, false));
        assert_eq!(finite(&simplify(c).unwrap()), [1, 3, 5, 7, 9]);
        // Disjoint finite sets: nothing.
        let c = and(is_in(k(), vals(&[1])), is_in(k(), vals(&[2])));
        assert!(matches!(simplify(c).unwrap(), C::Const(false)));
    }
}
