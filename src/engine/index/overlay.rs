//! Request-scoped entities: validated against the schema, then laid over the stored index for
//! one request ([`View`]), with the ancestor closures that run through them recomputed.

use std::collections::HashMap;

use cedar_policy::EntityUid;
use cedar_policy_core::ast;
use serde_json::Value;

use super::entity::NewEntity;
use super::intern::{parse_node, Resolve};
use super::{EntityStore, Ix, Node, Val};
use crate::engine::error::CycleError;

/// Request-scoped entities (validated against the schema), to overlay the store for one
/// request.
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    nodes: Vec<(EntityUid, Value)>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The store seen through a request's overlay. Uids the store does not know (new entities of
/// the overlay, or references to nothing) get indexes past the store's.
pub(super) struct View<'a> {
    pub(super) store: &'a EntityStore,
    pub(super) extra: Vec<EntityUid>,
    pub(super) extra_ix: HashMap<EntityUid, Ix>,
    /// Overlay entities as nodes, by index, and their attribute names.
    pub(super) nodes: HashMap<Ix, Node>,
    pub(super) names: HashMap<Ix, Vec<String>>,
    /// Stored entities the overlay gives other parents, sorted: a stored closure through one
    /// of them is stale for this request.
    pub(super) reparented: Vec<Ix>,
}

impl EntityStore {
    /// Prepares request-scoped entities: their ancestors resolve through the store. Refused
    /// if they would make an entity its own ancestor (data Cedar itself refuses).
    pub fn overlay(&self, batch: Vec<NewEntity>) -> Result<Overlay, CycleError> {
        let overlay = Overlay {
            nodes: batch.into_iter().map(|e| (e.uid, e.json)).collect(),
        };
        self.acyclic(overlay.nodes.iter().map(|(u, v)| (u, v)))?;
        Ok(overlay)
    }
}

impl<'a> View<'a> {
    /// The store seen through a request's entities, with their ancestor closures.
    pub(super) fn new(store: &'a EntityStore, overlay: &'a Overlay) -> Self {
        let mut view = View::replacing(store, overlay.nodes.iter().map(|(u, v)| (u, v)));
        let ixs: Vec<Ix> = view.nodes.keys().copied().collect();
        for ix in ixs {
            let closure = view.fresh_closure(ix);
            if let Some(n) = view.nodes.get_mut(&ix) {
                n.set_closure(&closure);
            }
        }
        view
    }

    /// The store with `entities` replacing (or adding to) stored ones; closures of the new
    /// nodes not computed.
    pub(super) fn replacing(
        store: &'a EntityStore,
        entities: impl Iterator<Item = (&'a EntityUid, &'a Value)>,
    ) -> Self {
        let mut view = View {
            store,
            extra: Vec::new(),
            extra_ix: HashMap::new(),
            nodes: HashMap::new(),
            names: HashMap::new(),
            reparented: Vec::new(),
        };
        view.load_overlay(entities);
        view
    }

    pub(super) fn resolve(&mut self, uid: &EntityUid) -> Ix {
        if let Some(ix) = self.store.lookup(uid) {
            return ix;
        }
        if let Some(ix) = self.extra_ix.get(uid) {
            return *ix;
        }
        let ix = (self.store.numbered() + self.extra.len()) as Ix;
        self.extra.push(uid.clone());
        self.extra_ix.insert(uid.clone(), ix);
        ix
    }

    pub(super) fn uid_of(&self, ix: Ix) -> ast::EntityUID {
        let n = self.store.numbered();
        if (ix as usize) < n {
            self.store.core_uid_of(ix)
        } else {
            let uid: &ast::EntityUID = self.extra[ix as usize - n].as_ref();
            uid.clone()
        }
    }

    pub(super) fn node(&self, ix: Ix) -> Option<&Node> {
        self.nodes.get(&ix).or_else(|| self.store.node(ix))
    }

    /// Turns the overlay's entities into nodes, and notes the stored ones given other parents.
    pub(super) fn load_overlay(
        &mut self,
        entities: impl Iterator<Item = (&'a EntityUid, &'a Value)>,
    ) {
        for (uid, json) in entities {
            let ix = self.resolve(uid);
            let parsed = parse_node(self, json);
            let (names, attrs): (Vec<String>, Vec<(u16, Val)>) = parsed
                .attrs
                .into_iter()
                .enumerate()
                .map(|(i, (k, v))| (k, (i as u16, v)))
                .unzip();
            // A uid the store knows, present or only referenced (as a parent, say): stored
            // closures run through it with its stored parents (none if absent).
            if let Some(stored) = self.store.stored(ix) {
                let mut before = stored.parents().to_vec();
                let mut after = parsed.parents.to_vec();
                before.sort_unstable();
                after.sort_unstable();
                after.dedup();
                if before != after {
                    self.reparented.push(ix);
                }
            }
            self.names.insert(ix, names);
            self.nodes
                .insert(ix, Node::new(parsed.parents, attrs.into(), parsed.tags));
        }
        self.reparented.sort_unstable();
        self.reparented.dedup();
    }

    /// The attribute name of an attribute of node `ix`.
    pub(super) fn attr_name(&self, ix: Ix, key: u16) -> &str {
        if self.names.is_empty() {
            return &self.store.attr_names[key as usize];
        }
        match self.names.get(&ix) {
            Some(names) => &names[key as usize],
            None => &self.store.attr_names[key as usize],
        }
    }
}

impl Resolve for View<'_> {
    fn ix(&mut self, uid: &EntityUid) -> Ix {
        self.resolve(uid)
    }
}
