//! Per-request slices: the Cedar entities one request can read (its principal, resource and
//! context entities and what their attributes point at, as far as the policies' [`Need`]s
//! say), each with only the ancestors the request can compare it with.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::EntityUid;
use cedar_policy_core::ast;
use serde_json::Value;

use super::intern::entity_vals;
use super::overlay::{Overlay, View};
use super::{EntityStore, Ix, Val};
use crate::engine::error::SliceError;
use crate::engine::needs::Need;

impl EntityStore {
    /// Builds the Cedar entities for one request: the seeds and the entities their attributes
    /// reference up to `depth` hops, each with the ancestors that matter to this request.
    /// Each seed comes with what the policies read through its attributes: an entity reached
    /// through an attribute is a member only if [`Need`] says so (its uid still counts for
    /// the ancestor sets). `literals` are the entity literals of the policies that can apply.
    /// Request-scoped `overlay` entities replace stored ones.
    pub fn slice(
        &self,
        seeds: &[(&EntityUid, &Need)],
        overlay: &Overlay,
        depth: usize,
        literals: &[EntityUid],
    ) -> Result<Vec<Arc<ast::Entity>>, SliceError> {
        let mut view = View::new(self, overlay);
        // (entity, reached through an attribute)
        let mut members: Vec<(Ix, bool)> = Vec::new();
        let mut relevant: Vec<Ix> = Vec::new();
        let mut frontier: Vec<(Ix, &Need)> = Vec::new();
        for (s, need) in seeds {
            let ix = view.resolve(s);
            relevant.push(ix);
            frontier.push((ix, need));
        }
        for l in literals {
            let ix = view.resolve(l);
            relevant.push(ix);
        }
        let mut values = Vec::new();
        for level in 0..=depth {
            let mut next = Vec::new();
            for (ix, need) in frontier {
                let Some(node) = view.node(ix) else { continue };
                // An entity reached again (under other needs) is expanded again, not added
                // twice.
                if !members.iter().any(|(m, _)| *m == ix) {
                    members.push((ix, level > 0));
                }
                for (k, v) in node.attrs.iter() {
                    values.clear();
                    entity_vals(v, &mut values);
                    relevant.extend_from_slice(&values);
                    if level < depth {
                        if let Some(child) = need.child(view.attr_name(ix, *k)) {
                            next.extend(values.iter().map(|v| (*v, child)));
                        }
                    }
                }
                for (_, v) in node.tags.iter().flat_map(|t| t.iter()) {
                    values.clear();
                    entity_vals(v, &mut values);
                    relevant.extend_from_slice(&values);
                    if level < depth && *need == Need::All {
                        next.extend(values.iter().map(|v| (*v, need)));
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        relevant.sort_unstable();
        relevant.dedup();
        members
            .iter()
            .map(|(ix, via_attribute)| {
                let shareable = view.shareable(*ix);
                if let Some(e) = shareable.and_then(|slot| slot.get()) {
                    return Ok(e.clone());
                }
                let e = Arc::new(view.entity(*ix, &relevant)?);
                if let (Some(slot), true) = (shareable, via_attribute) {
                    let _ = slot.set(Box::new(e.clone()));
                }
                Ok(e)
            })
            .collect()
    }
}

impl<'a> View<'a> {
    /// The shared slot of a stored entity whose Cedar form does not depend on the request:
    /// no parents (so no ancestors to cut down), not replaced by the overlay.
    pub(super) fn shareable(&self, ix: Ix) -> Option<&'a super::Shared> {
        if self.nodes.contains_key(&ix) {
            return None;
        }
        let store: &'a EntityStore = self.store;
        let node = store.node(ix)?;
        node.parents().is_empty().then(|| store.shared_slot(ix))
    }

    /// The Cedar value of an attribute value. Built directly; only extension values go
    /// through Cedar's evaluator.
    pub(super) fn value(&self, v: &Val) -> Result<ast::Value, SliceError> {
        Ok(match v {
            Val::Entity(ix) => ast::Value::from(self.uid_of(*ix)),
            Val::Bool(b) => ast::Value::from(*b),
            Val::Long(n) => ast::Value::from(*n),
            Val::Str(s) => ast::Value::from(smol_str::SmolStr::new(&**s)),
            Val::Set(items) => ast::Value::set(
                items
                    .iter()
                    .map(|i| self.value(i))
                    .collect::<Result<Vec<_>, _>>()?,
                None,
            ),
            Val::Record(fields) => ast::Value::record(
                fields
                    .iter()
                    .map(|(k, v)| Ok((smol_str::SmolStr::new(&**k), self.value(v)?)))
                    .collect::<Result<Vec<_>, SliceError>>()?,
                None,
            ),
            Val::Ext(x) => {
                let text = format!("{}({})", x.0, Value::String(x.1.to_string()));
                let failed = |message: String| SliceError::Extension {
                    text: text.clone(),
                    message,
                };
                let expr: ast::RestrictedExpr = text.parse().map_err(|e| failed(format!("{e}")))?;
                cedar_policy_core::evaluator::RestrictedEvaluator::new(
                    cedar_policy_core::extensions::Extensions::all_available(),
                )
                .interpret(expr.as_borrowed())
                .map_err(|e| failed(e.to_string()))?
            }
        })
    }

    /// The Cedar entity of `ix`, with its ancestors cut down to `relevant` (sorted). The set
    /// is transitively closed over `relevant` (a closure intersected with a set), which is
    /// what Cedar assumes of a slice built without recomputing the closure.
    pub(super) fn entity(&self, ix: Ix, relevant: &[Ix]) -> Result<ast::Entity, SliceError> {
        let node = self
            .node(ix)
            .ok_or_else(|| SliceError::MissingMember(self.uid_of(ix).to_string()))?;
        let closure = self.closure(ix, node);
        // The kept indexes first, so that Cedar's set is allocated once at its size.
        let kept: Vec<Ix> = if closure.len() <= relevant.len() {
            closure
                .iter()
                .filter(|a| relevant.binary_search(a).is_ok())
                .copied()
                .collect()
        } else {
            relevant
                .iter()
                .filter(|r| closure.binary_search(r).is_ok())
                .copied()
                .collect()
        };
        let mut ancestors: HashSet<ast::EntityUID> = HashSet::with_capacity(kept.len());
        ancestors.extend(kept.iter().map(|a| self.uid_of(*a)));
        let mut attrs = Vec::with_capacity(node.attrs.len());
        for (k, v) in node.attrs.iter() {
            let name = smol_str::SmolStr::new(self.attr_name(ix, *k));
            attrs.push((name, ast::PartialValue::Value(self.value(v)?)));
        }
        let mut tags = Vec::new();
        for (k, v) in node.tags.iter().flat_map(|t| t.iter()) {
            tags.push((
                smol_str::SmolStr::new(&**k),
                ast::PartialValue::Value(self.value(v)?),
            ));
        }
        Ok(ast::Entity::new_with_attr_partial_value(
            self.uid_of(ix),
            attrs,
            HashSet::new(),
            ancestors,
            tags,
        ))
    }
}
