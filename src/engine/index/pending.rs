//! A batch published whole in one step and folded into the tables beneath in short steps
//! (issue 35, item 2). [`Prepared::stage`] works out, beside decisions, everything the batch
//! leaves: the final node of each entity it writes and of each stored descendant whose closure
//! it changes, and the final lists of the children, reverse attribute and key indexes it
//! changes. [`EntityStore::publish`] lays that over the store in constant time; from then on
//! every read looks in the layer first, so a decision sees the whole batch. [`EntityStore::fold`]
//! then moves a bounded number of entries at a time into the tables; each entry read beneath
//! is already final, so no step shows half a batch. A table the batch would grow is grown
//! beside decisions, as a copy swapped in when the batch is published.
//!
//! Uids new to the store are numbered after its own and read from the layer until the fold
//! numbers them in the tables. A batch that names an entity type or an attribute name new to
//! the store (bounded by the schema, so rare) is committed whole under the lock, as before.

use std::collections::{HashMap, HashSet};

use cedar_policy::EntityUid;
use serde_json::Value;

use super::intern::{parse_node, Resolve, UidTable};
use super::layer::{Item, KeyAt, Pending};
use super::reverse::{targets, RefKey};
use super::uids::Room;
use super::write::{Prepared, Retired};
use super::{EntityStore, Ix, Node, Shared, UidKey, UidRef, Val};
use crate::engine::json::json_uid_parts;
use crate::engine::pace::Pacer;

/// A batch staged against one state of the store, ready to publish.
#[derive(Debug)]
pub struct Staged {
    store: u64,
    at: u64,
    revision: u64,
    present: usize,
    record_attrs: Vec<u16>,
    pending: Pending,
    /// Grown copies of tables the batch would otherwise grow under the lock.
    children: Option<HashMap<Ix, Vec<Ix>>>,
    refs: Option<hashbrown::HashMap<RefKey, Vec<Ix>>>,
    index: Option<UidTable>,
    uids: Option<Room>,
    /// The batch as written, dropped after the lock.
    retired: Retired,
}

impl Staged {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// How many entries the fold moves.
    pub fn entries(&self) -> usize {
        self.pending.work.len()
    }
}

/// What [`Prepared::stage`] made of a batch.
#[derive(Debug)]
pub enum Staging {
    /// Ready to publish.
    Staged(Box<Staged>),
    /// Given back unchanged, to commit whole.
    Whole(Prepared),
}

impl Staging {
    #[cfg(test)]
    fn staged(self) -> Option<Box<Staged>> {
        match self {
            Staging::Staged(s) => Some(s),
            Staging::Whole(_) => None,
        }
    }
}

/// What a batch takes out of and puts into one multi-valued index, per key.
struct Edits<K> {
    removed: HashMap<K, HashSet<Ix>>,
    added: HashMap<K, Vec<Ix>>,
}

impl<K: std::hash::Hash + Eq + Clone> Edits<K> {
    fn new() -> Self {
        Edits {
            removed: HashMap::new(),
            added: HashMap::new(),
        }
    }

    fn remove(&mut self, key: K, ix: Ix) {
        self.removed.entry(key).or_default().insert(ix);
    }

    fn add(&mut self, key: K, ix: Ix) {
        self.added.entry(key).or_default().push(ix);
    }

    /// Each edited key's final list, from its list now.
    fn finish<'a>(
        mut self,
        now: impl Fn(&K) -> Option<&'a Vec<Ix>>,
        pacer: &mut Pacer,
    ) -> HashMap<K, Vec<Ix>> {
        let mut keys: Vec<K> = self.removed.keys().cloned().collect();
        keys.extend(
            self.added
                .keys()
                .filter(|k| !self.removed.contains_key(*k))
                .cloned(),
        );
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            pacer.tick();
            let mut list = now(&key).cloned().unwrap_or_default();
            if let Some(gone) = self.removed.remove(&key) {
                list.retain(|x| !gone.contains(x));
            }
            if let Some(new) = self.added.remove(&key) {
                list.extend(new);
            }
            out.insert(key, list);
        }
        out
    }
}

/// Numbers uids as the store does, and those new to it after the store's own, in order; notes
/// a type it does not know (such a batch is committed whole).
struct Numbering<'a> {
    store: &'a EntityStore,
    first: usize,
    extra: Vec<UidKey>,
    extra_ix: hashbrown::HashMap<UidKey, Ix>,
    unknown: bool,
}

impl Numbering<'_> {
    fn number(&mut self, ty: u16, id: &str) -> Ix {
        if let Some(ix) = self.store.index.get(&self.store.uids, ty, id) {
            return ix;
        }
        if let Some(ix) = self.extra_ix.get(&UidRef { ty, id }) {
            return *ix;
        }
        let ix = (self.first + self.extra.len()) as Ix;
        let key = UidKey { ty, id: id.into() };
        self.extra.push(key.clone());
        self.extra_ix.insert(key, ix);
        ix
    }

    /// A node from canonical Cedar JSON; None if it names an attribute the store does not.
    fn decode(&mut self, json: &Value) -> Option<Node> {
        let parsed = parse_node(self, json);
        let attrs = parsed
            .attrs
            .into_iter()
            .map(|(k, v)| self.store.attr_ix.get(k.as_str()).map(|key| (*key, v)))
            .collect::<Option<Box<[_]>>>()?;
        Some(Node::new(parsed.parents, attrs, parsed.tags))
    }
}

impl Resolve for Numbering<'_> {
    fn ix(&mut self, uid: &EntityUid) -> Ix {
        match self.store.type_ix.get(uid.type_name()) {
            Some(t) => self.number(*t, uid.id().unescaped()),
            None => {
                self.unknown = true;
                0
            }
        }
    }

    fn json_ix(&mut self, v: &Value) -> Option<Ix> {
        let (ty, id) = json_uid_parts(v)?;
        match self.store.type_by_name.get(ty) {
            Some(t) => Some(self.number(*t, id)),
            None => {
                self.unknown = true;
                Some(0)
            }
        }
    }
}

impl Prepared {
    /// The batch's final state, worked out against `store` beside decisions (the caller holds
    /// the writer lock, so the store stays as it is until [`EntityStore::publish`]). Given back
    /// unchanged when it cannot be staged: it names something new to the store, or was not
    /// resolved against this very state.
    pub fn stage(mut self, store: &EntityStore) -> Staging {
        let Some(resolved) = self.resolved.as_ref() else {
            return Staging::Whole(self);
        };
        let same_state = resolved.store == store.identity.0
            && resolved.revision == store.revision
            && store.pending.is_none()
            && resolved.each.len() == self.touched.len();
        if !same_state {
            return Staging::Whole(self);
        }
        // Number the uids new to the store (after its own), and decode what resolving could
        // not, against the store and those numbers.
        let mut numbering = Numbering {
            store,
            first: store.uids.len(),
            extra: Vec::new(),
            extra_ix: hashbrown::HashMap::new(),
            unknown: false,
        };
        let mut fixes = Vec::new();
        for (i, ((ix, node), (uid, json))) in resolved.each.iter().zip(&self.touched).enumerate() {
            let decode = json.is_some() && node.is_none();
            if ix.is_some() && !decode {
                continue;
            }
            let ix = ix.unwrap_or_else(|| numbering.ix(uid));
            let node = match json {
                Some(json) if decode => match numbering.decode(json) {
                    Some(node) => Some(node),
                    None => return Staging::Whole(self),
                },
                _ => None,
            };
            fixes.push((i, ix, node));
        }
        if numbering.unknown {
            return Staging::Whole(self);
        }
        let mut resolved = self.resolved.take().expect("checked above");
        let fixed = !fixes.is_empty();
        for (i, ix, node) in fixes {
            resolved.each[i].0 = Some(ix);
            if node.is_some() {
                resolved.each[i].1 = node;
            }
        }
        let descendants = match resolved.descendants.take() {
            Some(d) if !fixed => d,
            _ => match Prepared::closures(store, &self.touched, &mut resolved.each) {
                Some(d) => d,
                // (A uid touched twice.) Committed whole, resolved again under the lock.
                None => return Staging::Whole(self),
            },
        };
        let Numbering {
            first,
            extra,
            extra_ix,
            ..
        } = numbering;
        let mut pacer = Pacer::new();
        let mut pending = Pending {
            first,
            ..Pending::default()
        };
        pending.work.extend((0..extra.len()).map(Item::Intern));
        let mut present = store.present;
        let mut record_attrs = Vec::new();
        let mut children = Edits::new();
        let mut refs = Edits::new();
        let mut keys: Edits<KeyAt> = Edits::new();
        let no_node = Node::default();
        for (((ix, node), (same_parents, same_attrs)), (uid, json)) in resolved
            .each
            .into_iter()
            .zip(resolved.same)
            .zip(&self.touched)
        {
            pacer.tick();
            let ix = ix.expect("numbered above");
            let ty = store.type_ix[uid.type_name()];
            let old = store.nodes.get(ix as usize).unwrap_or(&no_node);
            let node = if json.is_some() { node } else { None };
            let (same_parents, same_attrs) = match &node {
                Some(_) => (same_parents, same_attrs),
                None => (false, false),
            };
            let new = node.as_ref().unwrap_or(&no_node);
            if !same_attrs {
                for (k, v) in old.attrs.iter() {
                    if !new.attrs.iter().any(|(k2, v2)| k2 == k && v2 == v) {
                        let mut ts = Vec::new();
                        targets(v, &mut ts);
                        ts.into_iter().for_each(|t| refs.remove((*k, t), ix));
                    }
                }
                for (k, v) in new.attrs.iter() {
                    if !old.attrs.iter().any(|(k2, v2)| k2 == k && v2 == v) {
                        let mut ts = Vec::new();
                        targets(v, &mut ts);
                        ts.into_iter().for_each(|t| refs.add((*k, t), ix));
                        if matches!(v, Val::Record(_)) && !store.record_attrs.contains(k) {
                            record_attrs.push(*k);
                        }
                    }
                }
                if old.present {
                    for (at, value) in store.key_values_of(ty, old) {
                        keys.remove((ty, at, Box::from(value)), ix);
                    }
                }
                if node.is_some() {
                    for (at, value) in store.key_values_of(ty, new) {
                        keys.add((ty, at, Box::from(value)), ix);
                    }
                }
            }
            if !same_parents {
                for p in old.parents() {
                    if !new.parents().contains(p) {
                        children.remove(*p, ix);
                    }
                }
                for p in new.parents() {
                    if !old.parents().contains(p) {
                        children.add(*p, ix);
                    }
                }
            }
            present = present - usize::from(old.present) + usize::from(node.is_some());
            // Written exactly as stored (parents, attributes, tags and ancestors): nothing to
            // publish or fold, and its shared form stands.
            let unchanged = old.present
                && same_parents
                && same_attrs
                && node
                    .as_ref()
                    .is_some_and(|n| n.tags == old.tags && n.closure() == old.closure());
            if unchanged {
                continue;
            }
            pending.nodes.insert(ix, node.unwrap_or_default());
            pending.shared.insert(ix, Shared::new());
            pending.work.push(Item::Node(ix));
        }
        for (ix, edges) in descendants {
            pacer.tick();
            let mut node = store.nodes[ix as usize].clone();
            node.put_edges(edges);
            pending.nodes.insert(ix, node);
            pending.work.push(Item::Node(ix));
        }
        pending.children = children.finish(|p| store.children.get(p), &mut pacer);
        pending.refs = refs.finish(|k| store.refs.get(k), &mut pacer);
        pending.keys = keys.finish(|k| store.key_owners_beneath(k.0, k.1, &k.2), &mut pacer);
        record_attrs.sort_unstable();
        record_attrs.dedup();
        // Tables the fold would grow are grown here, as copies.
        let new_children = pending
            .children
            .iter()
            .filter(|(k, v)| !v.is_empty() && !store.children.contains_key(*k))
            .count();
        let children_grown = (store.children.capacity() - store.children.len() < new_children)
            .then(|| {
                let mut grown = HashMap::with_capacity(store.children.len() + new_children);
                grown.extend(store.children.iter().map(|(k, v)| (*k, v.clone())));
                grown
            });
        let new_refs = pending
            .refs
            .iter()
            .filter(|(k, v)| !v.is_empty() && !store.refs.contains_key(*k))
            .count();
        let refs_grown = (store.refs.capacity() - store.refs.len() < new_refs).then(|| {
            let mut grown = hashbrown::HashMap::with_capacity(store.refs.len() + new_refs);
            grown.extend(store.refs.iter().map(|(k, v)| (*k, v.clone())));
            grown
        });
        let index = store.index.grown(&store.uids, extra.len());
        let uids = store.uids.room_for(extra.len());
        pending.extra = extra;
        pending.extra_ix = extra_ix;
        pending
            .work
            .extend(pending.children.keys().map(|k| Item::Children(*k)));
        pending
            .work
            .extend(pending.refs.keys().map(|k| Item::Refs(*k)));
        pending
            .work
            .extend(pending.keys.keys().map(|k| Item::Key(k.clone())));
        // Folded in the order staged (popped from the end).
        pending.work.reverse();
        let mut retired = Retired::default();
        retired.batch = std::mem::take(&mut self.touched);
        Staging::Staged(Box::new(Staged {
            store: resolved.store,
            at: resolved.revision,
            revision: self.revision,
            present,
            record_attrs,
            pending,
            children: children_grown,
            refs: refs_grown,
            index,
            uids,
            retired,
        }))
    }
}

impl EntityStore {
    /// Makes a staged batch visible, whole, in constant time (it was staged against this very
    /// state); returns what it replaced, to drop after the lock. Then [`EntityStore::fold`]
    /// until it says it is done.
    pub fn publish(&mut self, staged: Box<Staged>) -> Retired {
        assert!(
            staged.store == self.identity.0 && staged.at == self.revision && self.pending.is_none(),
            "a batch is published on the state it was staged against"
        );
        let staged = *staged;
        let mut retired = staged.retired;
        if let Some(grown) = staged.children {
            retired.children = Some(std::mem::replace(&mut self.children, grown));
        }
        if let Some(grown) = staged.refs {
            retired.refs = Some(std::mem::replace(&mut self.refs, grown));
        }
        if let Some(grown) = staged.index {
            retired.index = Some(std::mem::replace(&mut self.index, grown));
        }
        if let Some(room) = staged.uids {
            retired.uids = Some(self.uids.put_room(room));
        }
        self.record_attrs.extend(staged.record_attrs);
        self.present = staged.present;
        self.revision = staged.revision;
        self.pending = Some(Box::new(staged.pending));
        retired
    }

    /// Moves up to `budget` entries of the published batch into the tables beneath (each is
    /// final, and read beneath once it leaves the layer). Returns whether the batch is folded
    /// whole, and what it replaced, to drop after the lock.
    pub fn fold(&mut self, budget: usize) -> (bool, Retired) {
        let mut retired = Retired::default();
        // Out of the store for the step (the lock is held: nobody reads it meanwhile).
        let Some(mut pending) = self.pending.take() else {
            return (true, retired);
        };
        for _ in 0..budget {
            let Some(item) = pending.work.pop() else {
                break;
            };
            match item {
                Item::Intern(k) => {
                    let key = &pending.extra[k];
                    let ix = self.intern_id(key.ty, &key.id);
                    debug_assert_eq!(ix as usize, pending.first + k);
                }
                Item::Node(ix) => {
                    if let Some(node) = pending.nodes.remove(&ix) {
                        let old = std::mem::replace(&mut self.nodes[ix as usize], node);
                        retired.nodes.push(old);
                    }
                    if let Some(slot) = pending.shared.remove(&ix) {
                        let old = std::mem::replace(&mut self.shared[ix as usize], slot);
                        if old.get().is_some() {
                            retired.shared.push(old);
                        }
                    }
                }
                Item::Children(p) => {
                    let list = pending.children.remove(&p).unwrap_or_default();
                    let old = if list.is_empty() {
                        self.children.remove(&p)
                    } else {
                        self.children.insert(p, list)
                    };
                    retired.lists.extend(old);
                }
                Item::Refs(k) => {
                    let list = pending.refs.remove(&k).unwrap_or_default();
                    let old = if list.is_empty() {
                        self.refs.remove(&k)
                    } else {
                        self.refs.insert(k, list)
                    };
                    retired.lists.extend(old);
                }
                Item::Key(k) => {
                    let list = pending.keys.remove(&k).unwrap_or_default();
                    retired.lists.extend(self.put_key_owners(&k, list));
                }
            }
        }
        let done = pending.work.is_empty();
        if done {
            retired.pending = Some(pending);
        } else {
            self.pending = Some(pending);
        }
        (done, retired)
    }

    /// The layer a published batch leaves until it is folded.
    pub(super) fn pending(&self) -> Option<&Pending> {
        self.pending.as_deref()
    }

    /// The node numbered `ix` as the last published batch leaves it, present or not.
    pub(super) fn stored(&self, ix: Ix) -> Option<&Node> {
        if let Some(p) = self.pending() {
            if let Some(n) = p.nodes.get(&ix) {
                return Some(n);
            }
        }
        self.nodes.get(ix as usize)
    }

    /// The entities whose parents include `ix` (may name absent ones).
    pub(super) fn children_of(&self, ix: Ix) -> Option<&Vec<Ix>> {
        if let Some(p) = self.pending() {
            if let Some(list) = p.children.get(&ix) {
                return Some(list);
            }
        }
        self.children.get(&ix)
    }

    /// The entities whose attribute `k` names `target` (may name absent ones).
    pub(super) fn holders_of(&self, k: u16, target: Ix) -> Option<&Vec<Ix>> {
        if let Some(p) = self.pending() {
            if let Some(list) = p.refs.get(&(k, target)) {
                return Some(list);
            }
        }
        self.refs.get(&(k, target))
    }

    /// The shared slot of `ix`.
    pub(super) fn shared_slot(&self, ix: Ix) -> &Shared {
        if let Some(p) = self.pending() {
            if let Some(slot) = p.shared.get(&ix) {
                return slot;
            }
        }
        &self.shared[ix as usize]
    }
}

#[cfg(test)]
mod tests {
    use cedar_policy::Schema;
    use serde_json::{json, Value};

    use super::super::{EntityStore, WriteOp};
    use super::Staging;
    use crate::engine::facts::Lookup;
    use crate::engine::index::write::tests::{keyed_user as user, uid};
    use crate::engine::schema::EntitySchema;

    const SCHEMA: &str = "entity Team in [Team]; entity User in [Team] { lead?: User, teams?: Set<Team>, email?: String };";

    fn team(id: &str, parents: &[&str]) -> WriteOp {
        let parents: Vec<Value> = parents
            .iter()
            .map(|p| json!({"type": "Team", "id": p}))
            .collect();
        WriteOp::Upsert(json!({"uid": {"type": "Team", "id": id}, "attrs": {}, "parents": parents}))
    }

    const TEAMS: [&str; 5] = ["t1", "t2", "t3", "t4", "t5"];
    const USERS: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];
    const EMAILS: [&str; 5] = ["a@x", "b@x", "c@x", "shared@x", "f@x"];

    /// Everything a reader can ask of the store about the test's entities, as text: each
    /// entity as written, its ancestors, its children, who names it as `lead` and in `teams`,
    /// and whom each email names.
    fn seen(store: &EntityStore) -> Vec<String> {
        let names = |v: &mut Vec<super::Ix>| {
            let mut v: Vec<String> = v.iter().map(|ix| store.uid_of(*ix).to_string()).collect();
            v.sort();
            v.join(",")
        };
        let mut out = Vec::new();
        let all = TEAMS
            .iter()
            .map(|t| uid("Team", t))
            .chain(USERS.iter().map(|u| uid("User", u)));
        for e in all {
            let json = store.get_json(&e).map(|mut j| {
                // Parents in a canonical order.
                if let Some(Value::Array(p)) = j.get_mut("parents") {
                    p.sort_by_key(|v| v.to_string());
                }
                j
            });
            let (mut anc, mut desc, mut leads, mut teams) = (vec![], vec![], vec![], vec![]);
            if let Some(ix) = store.lookup(&e) {
                store.ancestors(ix, &mut anc);
                store.descendants(ix, &mut desc);
                store.holders("lead", ix, &mut leads);
                store.holders("teams", ix, &mut teams);
            }
            let children = store.stored_children(&e);
            let mut children: Vec<String> = children.iter().map(ToString::to_string).collect();
            children.sort();
            out.push(format!(
                "{e}: {json:?} ancestors [{}] descendants [{}] children [{}] lead of [{}] in teams of [{}]",
                names(&mut anc),
                names(&mut desc),
                children.join(","),
                names(&mut leads),
                names(&mut teams),
            ));
        }
        for email in EMAILS {
            let user: cedar_policy::EntityTypeName = "User".parse().unwrap();
            out.push(format!("{email}: {:?}", store.resolve_name(&user, email)));
        }
        out.push(format!(
            "present {} revision {}",
            store.len(),
            store.revision()
        ));
        out
    }

    /// A staged batch is published whole: after publishing, and after every step of the fold
    /// (one entry at a time), a reader sees exactly what committing the batch whole leaves;
    /// and once folded, the tables beneath equal a store built afresh from the same entities.
    #[test]
    fn a_published_batch_reads_whole_at_every_step_of_its_fold() {
        let schema: Schema = SCHEMA.parse().unwrap();
        let schema = EntitySchema::new(schema, SCHEMA);
        let keys = vec![("User".parse().unwrap(), vec!["email".to_string()])];
        let mut store = EntityStore::default();
        store.set_keys(&keys);
        let mut first: Vec<WriteOp> = TEAMS.iter().map(|t| team(t, &[])).collect();
        // Every attribute named once: a batch that names a new one is not staged.
        first.extend(
            USERS
                .iter()
                .map(|u| user(u, &[], Some("a"), &["t4"], &format!("{u}@setup"))),
        );
        store.commit(store.prepare(first, &schema).unwrap());
        let batches = [
            vec![
                team("t2", &["t1"]),
                user("a", &["t2"], Some("b"), &["t1", "t2"], "a@x"),
                user("b", &["t1", "t3"], None, &["t1"], "b@x"),
                user("c", &["t3"], Some("a"), &[], "c@x"),
                user("d", &[], Some("a"), &["t3"], "shared@x"),
            ],
            // Written exactly as stored, a team with descendants among them: nothing to
            // publish or fold.
            vec![
                team("t1", &[]),
                team("t2", &["t1"]),
                user("c", &["t3"], Some("a"), &[], "c@x"),
            ],
            // Written again as they are, in another order of parents and set members (Cedar
            // orders a set's members, and parents are a set): nothing to fold either.
            vec![
                user("a", &["t2"], Some("b"), &["t2", "t1"], "a@x"),
                user("b", &["t3", "t1"], None, &["t1"], "b@x"),
            ],
            // t2 moves under t3: a's ancestors change though a is not written.
            vec![
                team("t2", &["t3"]),
                user("b", &["t4"], Some("d"), &[], "b@x"),
                user("e", &["t2"], Some("c"), &["t4"], "c@x"),
                user("c", &["t3"], Some("a"), &[], ""),
            ],
            vec![
                WriteOp::Delete(uid("User", "c")),
                user("d", &["t1"], None, &["t1", "t2", "t3"], "d@x"),
                WriteOp::RemoveParent {
                    child: uid("User", "a"),
                    parent: uid("Team", "t2"),
                },
                WriteOp::Delete(uid("Team", "t4")),
                user("b", &[], Some("d"), &[], "shared@x"),
                // d gives up `shared@x` as b takes it.
                user("e", &["t2"], Some("c"), &[], "c@x"),
            ],
            // New entities: a team under t1, a user in it whose lead (g) does not exist yet,
            // and a stored user who joins the new team.
            vec![
                team("t5", &["t1"]),
                user("f", &["t5"], Some("g"), &["t5", "t1"], "f@x"),
                user("a", &["t5"], Some("f"), &[], "a@x"),
            ],
            // g arrives under t5 as f leaves.
            vec![
                WriteOp::Delete(uid("User", "f")),
                user("g", &["t5", "t2"], None, &["t5"], "f@x"),
            ],
        ];
        let mut staged_any = 0;
        for (i, ops) in batches.iter().enumerate() {
            // What committing the batch whole leaves.
            let mut whole = store.clone();
            whole.commit(whole.prepare(ops.clone(), &schema).unwrap());
            let want = seen(&whole);

            let before = seen(&store);
            let mut prepared = store.prepare(ops.clone(), &schema).unwrap();
            prepared.resolve(&store);
            let staged = prepared
                .stage(&store)
                .staged()
                .expect("a batch that names nothing new stages");
            assert_eq!(seen(&store), before, "batch {i}: staging changes nothing");
            let entries = staged.entries();
            assert_eq!(
                entries == 0,
                i == 1 || i == 2,
                "batch {i}: {entries} entries to fold"
            );
            store.publish(staged);
            assert_eq!(seen(&store), want, "batch {i}, published");
            let mut steps = 0;
            loop {
                let (done, _) = store.fold(1);
                steps += 1;
                assert_eq!(seen(&store), want, "batch {i}, after {steps} fold steps");
                if done {
                    break;
                }
            }
            assert_eq!(steps, entries.max(1), "batch {i}: one entry a step");
            assert!(store.pending().is_none());
            let afresh = store.rebuild(&schema).unwrap();
            let mut afresh = afresh;
            afresh.set_keys(&keys);
            let got = seen(&afresh);
            let differ: Vec<_> = got.iter().zip(&want).filter(|(a, b)| a != b).collect();
            assert!(
                differ.is_empty(),
                "batch {i}: the folded tables: {differ:#?}"
            );
            staged_any += 1;
        }
        assert_eq!(staged_any, batches.len());
        // The last state, spelled out.
        let last = seen(&store);
        let a = last.iter().find(|l| l.starts_with(r#"User::"a""#)).unwrap();
        assert!(a.contains(r#"ancestors [Team::"t1",Team::"t5"]"#), "{a}");
        let t3 = last
            .iter()
            .find(|l| l.starts_with(r#"Team::"t3""#))
            .unwrap();
        assert!(
            t3.contains(r#"descendants [Team::"t2",User::"e",User::"g"]"#),
            "{t3}"
        );
        let f = last.iter().find(|l| l.starts_with("f@x:")).unwrap();
        assert!(
            f.contains("Ok(Some(") && f.contains(r#""g""#),
            "g took f's email: {f}"
        );
        let c = last.iter().find(|l| l.starts_with("c@x:")).unwrap();
        assert!(
            c.contains("Ok(Some(") && c.contains(r#""e""#),
            "e took c's email: {c}"
        );
    }

    /// A batch staged against one state is not staged against another: it is committed whole.
    #[test]
    fn a_batch_resolved_against_another_state_is_not_staged() {
        let schema: Schema = SCHEMA.parse().unwrap();
        let schema = EntitySchema::new(schema, SCHEMA);
        let mut store = EntityStore::default();
        store.commit(
            store
                .prepare(
                    vec![team("t1", &[]), user("a", &[], None, &[], "")],
                    &schema,
                )
                .unwrap(),
        );
        let ops = vec![user("a", &["t1"], None, &[], "")];
        let mut prepared = store.prepare(ops.clone(), &schema).unwrap();
        prepared.resolve(&store);
        store.commit(store.prepare(vec![team("t1", &[])], &schema).unwrap());
        let Staging::Whole(prepared) = prepared.stage(&store) else {
            panic!("the store moved on: not staged");
        };
        store.commit(prepared);
        assert!(store.contains(&uid("User", "a")));
        // A batch that names an attribute new to the store is not staged either.
        let mut prepared = store
            .prepare(vec![user("z", &[], None, &[], "z@x")], &schema)
            .unwrap();
        prepared.resolve(&store);
        assert!(
            prepared.stage(&store).staged().is_none(),
            "the first email names a new attribute"
        );
    }
}
