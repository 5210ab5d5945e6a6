//! The layer a published write batch lays over the index until it is folded in (see
//! [`super::pending`]): the final state of everything the batch changes, read first.

use std::collections::HashMap;

use super::reverse::RefKey;
use super::{Ix, Node, Shared, UidKey};

/// A key value of the declared keys' index: type number, position among its keys, value.
pub(super) type KeyAt = (u16, usize, Box<str>);

/// The final state a published batch leaves, read before the tables beneath.
#[derive(Debug, Default, Clone)]
pub(super) struct Pending {
    /// Uids new to the store, numbered from `first` on (the store's count when staged).
    pub(super) first: usize,
    pub(super) extra: Vec<UidKey>,
    pub(super) extra_ix: hashbrown::HashMap<UidKey, Ix>,
    pub(super) nodes: HashMap<Ix, Node>,
    /// Fresh shared slots for the entities the batch writes.
    pub(super) shared: HashMap<Ix, Shared>,
    /// Final children lists (empty: none).
    pub(super) children: HashMap<Ix, Vec<Ix>>,
    /// Final reverse attribute index lists (empty: none).
    pub(super) refs: HashMap<RefKey, Vec<Ix>>,
    /// Final owners of declared key values (empty: none).
    pub(super) keys: HashMap<KeyAt, Vec<Ix>>,
    /// What is left to fold, in order.
    pub(super) work: Vec<Item>,
}

#[derive(Debug, Clone)]
pub(super) enum Item {
    /// The `k`th new uid, numbered in the tables (before anything names it there).
    Intern(usize),
    Node(Ix),
    Children(Ix),
    Refs(RefKey),
    Key(KeyAt),
}
