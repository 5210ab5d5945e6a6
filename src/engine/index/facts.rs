//! The index as compiled plans read it: the [`Facts`] interface of [`crate::engine::facts`].

use cedar_policy_core::ast;

use super::{EntityStore, Ix, Val};
use crate::engine::facts::{Ent, Facts, V};

/// The index as a compiled plan reads it (see [`crate::plan`]).
impl Facts for EntityStore {
    fn ix(&self, uid: &ast::EntityUID) -> Option<Ix> {
        let ty = self
            .core_types
            .iter()
            .position(|t| t == uid.entity_type())?;
        self.find(ty as u16, uid.eid().as_ref())
    }

    fn present(&self, ix: Ix) -> bool {
        self.node(ix).is_some_and(|n| n.present)
    }

    fn attr(&self, ix: Ix, name: &str) -> Option<V<'_>> {
        let (_, v) = self
            .node(ix)?
            .attrs
            .iter()
            .find(|(k, _)| &*self.attr_names[*k as usize] == name)?;
        plan_value(v)
    }

    fn has_attr(&self, ix: Ix, name: &str) -> bool {
        self.node(ix).is_some_and(|n| {
            n.attrs
                .iter()
                .any(|(k, _)| &*self.attr_names[*k as usize] == name)
        })
    }

    fn in_closure(&self, ix: Ix, ancestor: Ix) -> bool {
        self.node(ix)
            .is_some_and(|n| n.closure().binary_search(&ancestor).is_ok())
    }

    fn type_is(&self, ix: Ix, ty: &ast::EntityType) -> bool {
        self.uid_type(ix)
            .is_some_and(|t| self.core_types[t as usize] == *ty)
    }
}

/// A stored value as a plan's value; records and extension values are outside the subset.
pub(super) fn plan_value(v: &Val) -> Option<V<'_>> {
    Some(match v {
        Val::Entity(ix) => V::Ent(Ent::Ix(*ix)),
        Val::Bool(b) => V::Bool(*b),
        Val::Long(n) => V::Long(*n),
        Val::Str(s) => V::Str(s),
        Val::Set(items) => V::Set(items.iter().map(plan_value).collect::<Option<_>>()?),
        Val::Record(_) | Val::Ext(_) => return None,
    })
}
