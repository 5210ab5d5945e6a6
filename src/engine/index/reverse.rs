//! The reverse attribute index, for listing: for each attribute and target entity, the
//! entities whose attribute is that entity (or a set holding it). Kept current by every
//! commit and built once at start-up; and [`Lookup`], what listing reads, over the store and
//! over the store seen through a request's entities ([`ListView`]).

use std::borrow::Cow;
use std::collections::HashSet;

use cedar_policy::{EntityId, EntityUid};
use cedar_policy_core::ast;

use super::overlay::View;
use super::{EntityStore, Ix, Node, Overlay, Val};
use crate::engine::facts::{Facts, Lookup, V};

/// The reverse index's key: attribute name key and target entity.
pub(super) type RefKey = (u16, Ix);

/// The entity references of one attribute value: the entity, or a set's entity members.
pub(super) fn targets(v: &Val, out: &mut Vec<Ix>) {
    match v {
        Val::Entity(t) => out.push(*t),
        Val::Set(items) => out.extend(items.iter().filter_map(|i| match i {
            Val::Entity(t) => Some(*t),
            _ => None,
        })),
        _ => {}
    }
}

impl EntityStore {
    /// Adds a node's attribute references to the reverse index.
    pub(super) fn add_refs(&mut self, ix: Ix, node: &Node) {
        for (k, v) in node.attrs.iter() {
            self.add_attr_refs(ix, *k, v);
        }
    }

    /// Adds the references of one attribute of `ix` to the reverse index.
    pub(super) fn add_attr_refs(&mut self, ix: Ix, k: u16, v: &Val) {
        if matches!(v, Val::Record(_)) {
            self.record_attrs.insert(k);
        }
        let mut ts = Vec::new();
        targets(v, &mut ts);
        for t in &ts {
            self.refs.entry((k, *t)).or_default().push(ix);
        }
    }

    /// Removes the references of one attribute of `ix` from the reverse index.
    pub(super) fn remove_attr_refs(&mut self, ix: Ix, k: u16, v: &Val) {
        let mut ts = Vec::new();
        targets(v, &mut ts);
        for t in &ts {
            if let Some(holders) = self.refs.get_mut(&(k, *t)) {
                holders.retain(|h| *h != ix);
                if holders.is_empty() {
                    self.refs.remove(&(k, *t));
                }
            }
        }
    }

    /// The reverse index's size: keys, holder entries, and the bytes its tables hold
    /// (computed from their capacities).
    pub fn reverse_index_size(&self) -> (usize, usize, usize) {
        let holders: usize = self.refs.values().map(Vec::len).sum();
        let slot = std::mem::size_of::<(RefKey, Vec<Ix>)>() + 1;
        let bytes = self.refs.capacity() * slot
            + self.refs.values().map(|v| v.capacity() * 4).sum::<usize>();
        (self.refs.len(), holders, bytes)
    }

    /// Builds the reverse index again from the stored entities (done by every bulk load; here
    /// for benchmarks that time it alone).
    pub fn rebuild_reverse_index(&mut self) {
        self.build_refs();
    }

    /// Builds the reverse index of every stored entity (after a bulk load).
    pub(super) fn build_refs(&mut self) {
        self.refs.clear();
        let nodes = std::mem::take(&mut self.nodes);
        for (ix, node) in nodes.iter().enumerate() {
            if node.present {
                self.add_refs(ix as Ix, node);
            }
        }
        self.nodes = nodes;
    }

    /// The store seen through request-scoped entities, for listing.
    pub fn list_view<'a>(&'a self, overlay: &'a Overlay) -> ListView<'a> {
        ListView {
            view: View::new(self, overlay),
        }
    }

    fn stored_descendants(&self, ix: Ix, out: &mut Vec<Ix>, seen: &mut HashSet<Ix>) {
        let mut queue = vec![ix];
        while let Some(x) = queue.pop() {
            if let Some(children) = self.children_of(x) {
                for c in children {
                    if seen.insert(*c) {
                        out.push(*c);
                        queue.push(*c);
                    }
                }
            }
        }
    }
}

impl Lookup for EntityStore {
    fn ancestors(&self, ix: Ix, out: &mut Vec<Ix>) {
        if let Some(n) = self.node(ix) {
            out.extend_from_slice(n.closure());
        }
    }

    fn descendants(&self, ix: Ix, out: &mut Vec<Ix>) {
        self.stored_descendants(ix, out, &mut HashSet::new());
    }

    fn holders(&self, attr: &str, target: Ix, out: &mut Vec<Ix>) {
        self.holders_of_each(attr, std::slice::from_ref(&target), out);
    }

    fn holders_of_each(&self, attr: &str, targets: &[Ix], out: &mut Vec<Ix>) {
        // The attribute's number once, not once a target.
        if let Some(k) = self.attr_ix.get(attr) {
            for t in targets {
                if let Some(h) = self.holders_of(*k, *t) {
                    out.extend_from_slice(h);
                }
            }
        }
    }

    fn record_valued(&self, attr: &str) -> bool {
        self.attr_ix
            .get(attr)
            .is_some_and(|k| self.record_attrs.contains(k))
    }

    fn of_type(&self, ty: &ast::EntityType, out: &mut Vec<Ix>) {
        let Some(t) = self.core_types.iter().position(|x| x == ty) else {
            return;
        };
        for (ix, key, node) in self.each_stored() {
            if key.ty as usize == t && node.present {
                out.push(ix);
            }
        }
    }

    fn id(&self, ix: Ix) -> &str {
        self.uid_key(ix).id
    }

    fn uid(&self, ix: Ix) -> EntityUid {
        self.uid_of(ix)
    }

    fn type_text(&self, ix: Ix) -> Cow<'_, str> {
        Cow::Borrowed(&self.type_texts[self.uid_key(ix).ty as usize])
    }
}

/// The store seen through a request's entities, as listing reads it: the overlay's entities
/// replace stored ones, and every answer covers both (a superset where an overlay entity
/// drops a stored edge; the decision path then decides exactly).
pub struct ListView<'a> {
    view: View<'a>,
}

impl ListView<'_> {
    fn overlay_node_attr<'n>(&self, ix: Ix, node: &'n Node, name: &str) -> Option<&'n Val> {
        node.attrs
            .iter()
            .find(|(k, _)| self.view.attr_name(ix, *k) == name)
            .map(|(_, v)| v)
    }
}

impl Facts for ListView<'_> {
    fn ix(&self, uid: &ast::EntityUID) -> Option<Ix> {
        let uid = EntityUid::from(uid.clone());
        self.view
            .store
            .lookup(&uid)
            .or_else(|| self.view.extra_ix.get(&uid).copied())
    }

    fn present(&self, ix: Ix) -> bool {
        self.view.node(ix).is_some()
    }

    fn attr(&self, ix: Ix, name: &str) -> Option<V<'_>> {
        if self.view.nodes.contains_key(&ix) {
            let node = self.view.nodes.get(&ix)?;
            return super::facts::plan_value(self.overlay_node_attr(ix, node, name)?);
        }
        self.view.store.attr(ix, name)
    }

    fn has_attr(&self, ix: Ix, name: &str) -> bool {
        match self.view.nodes.get(&ix) {
            Some(node) => self.overlay_node_attr(ix, node, name).is_some(),
            None => self.view.store.has_attr(ix, name),
        }
    }

    fn in_closure(&self, ix: Ix, ancestor: Ix) -> bool {
        self.view
            .node(ix)
            .is_some_and(|n| self.view.closure(ix, n).binary_search(&ancestor).is_ok())
    }

    fn type_is(&self, ix: Ix, ty: &ast::EntityType) -> bool {
        self.view.uid_of(ix).entity_type() == ty
    }
}

impl Lookup for ListView<'_> {
    fn ancestors(&self, ix: Ix, out: &mut Vec<Ix>) {
        if let Some(n) = self.view.node(ix) {
            out.extend_from_slice(&self.view.closure(ix, n));
        }
    }

    fn descendants(&self, ix: Ix, out: &mut Vec<Ix>) {
        // Stored children, and overlay entities naming a parent, to a fixed point.
        let mut seen = HashSet::new();
        let mut queue = vec![ix];
        while let Some(x) = queue.pop() {
            let start = out.len();
            self.view.store.stored_descendants(x, out, &mut seen);
            for (c, n) in &self.view.nodes {
                if n.parents().contains(&x) && seen.insert(*c) {
                    out.push(*c);
                }
            }
            queue.extend_from_slice(&out[start..]);
        }
    }

    fn holders(&self, attr: &str, target: Ix, out: &mut Vec<Ix>) {
        self.view.store.holders(attr, target, out);
        let mut ts = Vec::new();
        for (ix, node) in &self.view.nodes {
            if let Some(v) = self.overlay_node_attr(*ix, node, attr) {
                ts.clear();
                targets(v, &mut ts);
                if ts.contains(&target) {
                    out.push(*ix);
                }
            }
        }
    }

    fn record_valued(&self, attr: &str) -> bool {
        self.view.store.record_valued(attr)
            || self
                .view
                .nodes
                .iter()
                .any(|(ix, n)| matches!(self.overlay_node_attr(*ix, n, attr), Some(Val::Record(_))))
    }

    fn of_type(&self, ty: &ast::EntityType, out: &mut Vec<Ix>) {
        self.view.store.of_type(ty, out);
        out.extend(
            self.view
                .nodes
                .keys()
                .filter(|ix| self.view.uid_of(**ix).entity_type() == ty),
        );
    }

    fn id(&self, ix: Ix) -> &str {
        let n = self.view.store.numbered();
        if (ix as usize) < n {
            self.view.store.uid_key(ix).id
        } else {
            self.view.extra[ix as usize - n].id().unescaped()
        }
    }

    fn uid(&self, ix: Ix) -> EntityUid {
        let n = self.view.store.numbered();
        if (ix as usize) < n {
            self.view.store.uid_of(ix)
        } else {
            let u = &self.view.extra[ix as usize - n];
            EntityUid::from_type_name_and_id(
                u.type_name().clone(),
                EntityId::new(u.id().unescaped()),
            )
        }
    }

    fn type_text(&self, ix: Ix) -> Cow<'_, str> {
        let n = self.view.store.numbered();
        if (ix as usize) < n {
            self.view.store.type_text(ix)
        } else {
            Cow::Owned(self.view.extra[ix as usize - n].type_name().to_string())
        }
    }
}
