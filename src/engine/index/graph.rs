//! The hierarchy: every entity's ancestor closure (computed for the whole index at start-up,
//! recomputed for what a write touches and its descendants), and cycle detection, for writes
//! and for the store seen through a request's entities (Cedar refuses a hierarchy with a
//! cycle, so the index never holds one).

use std::collections::{HashMap, HashSet, VecDeque};

use cedar_policy::EntityUid;
use serde_json::Value;

use super::overlay::View;
use super::{EntityStore, Ix, Node};
use crate::engine::error::CycleError;

impl EntityStore {
    /// Computes every entity's ancestor closure, parents first, iteratively; refuses a
    /// hierarchy with a cycle.
    pub(super) fn close_all(&mut self) -> Result<(), CycleError> {
        // 0: stale, 1: in progress, 2: done; parents first, iteratively.
        let mut state = vec![0u8; self.nodes.len()];
        let mut stack: Vec<(Ix, bool)> = Vec::new();
        for root in 0..self.nodes.len() as Ix {
            if state[root as usize] == 2 {
                continue;
            }
            stack.push((root, false));
            while let Some((ix, expanded)) = stack.pop() {
                let i = ix as usize;
                if state[i] == 2 || (state[i] == 1 && !expanded) {
                    continue;
                }
                if !expanded {
                    state[i] = 1;
                    stack.push((ix, true));
                    for p in self.nodes[i].parents().iter() {
                        match state[*p as usize] {
                            0 => stack.push((*p, false)),
                            // On the current path: a cycle.
                            1 => {
                                return Err(CycleError {
                                    uid: self.uid_of(*p).to_string(),
                                })
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                let node = &self.nodes[i];
                let closure: Box<[Ix]> = match node.parents().len() {
                    0 => Box::default(),
                    _ => {
                        let mut c: Vec<Ix> = Vec::new();
                        for p in node.parents().iter() {
                            c.push(*p);
                            c.extend_from_slice(self.nodes[*p as usize].closure());
                        }
                        c.sort_unstable();
                        c.dedup();
                        c.into()
                    }
                };
                self.nodes[i].set_closure(&closure);
                state[i] = 2;
            }
        }
        Ok(())
    }

    /// `roots` and every stored descendant of theirs.
    fn with_descendants(&self, roots: impl Iterator<Item = Ix>) -> HashSet<Ix> {
        let mut out: HashSet<Ix> = HashSet::new();
        let mut queue: VecDeque<Ix> = roots.collect();
        while let Some(ix) = queue.pop_front() {
            if out.insert(ix) {
                if let Some(c) = self.children_of(ix) {
                    queue.extend(c.iter().copied());
                }
            }
        }
        out
    }

    /// Recomputes the closure of `roots` and of every descendant, parents first.
    pub(super) fn refresh_closures(&mut self, roots: &[Ix]) {
        let affected = self.with_descendants(roots.iter().copied());
        // 0: stale, 1: in progress (a cycle stops here), 2: done.
        let mut state: HashMap<Ix, u8> = affected.iter().map(|ix| (*ix, 0)).collect();
        let order: Vec<Ix> = affected.iter().copied().collect();
        for ix in order {
            self.closure_of(ix, &mut state);
        }
    }

    /// The closures a batch leaves, worked out against the store as it is (so beside
    /// decisions): `next` is every entity the batch writes (None: deleted), numbered. Returns
    /// the new closure of each written entity and of every stored descendant, parents first
    /// or not at all; the store itself is not changed.
    pub(super) fn closures_after(&self, next: &HashMap<Ix, Option<&Node>>) -> HashMap<Ix, Vec<Ix>> {
        // Whose closure can change: the written entities and their stored descendants (an
        // entity the batch does not write keeps its parents, so its children too).
        let affected = self.with_descendants(next.keys().copied());
        let parents = |ix: Ix| -> &[Ix] {
            match next.get(&ix) {
                Some(Some(node)) => node.parents(),
                Some(None) => &[],
                None => self.stored(ix).map_or(&[], |n| n.parents()),
            }
        };
        let mut done: HashMap<Ix, Vec<Ix>> = HashMap::with_capacity(affected.len());
        let mut on_path: HashSet<Ix> = HashSet::new();
        for root in affected.iter().copied() {
            let mut stack = vec![(root, false)];
            while let Some((ix, expanded)) = stack.pop() {
                if done.contains_key(&ix) || (!expanded && !on_path.insert(ix)) {
                    continue;
                }
                if !expanded {
                    stack.push((ix, true));
                    for p in parents(ix) {
                        if affected.contains(p) && !done.contains_key(p) && !on_path.contains(p) {
                            stack.push((*p, false));
                        }
                    }
                    continue;
                }
                let mut closure: Vec<Ix> = Vec::new();
                for p in parents(ix) {
                    closure.push(*p);
                    match done.get(p) {
                        Some(c) => closure.extend_from_slice(c),
                        // Not affected: its stored closure stands. (Affected but not done only
                        // on a cycle, which a validated batch cannot close.)
                        None if !affected.contains(p) => {
                            if let Some(n) = self.stored(*p) {
                                closure.extend_from_slice(n.closure());
                            }
                        }
                        None => {}
                    }
                }
                closure.sort_unstable();
                closure.dedup();
                on_path.remove(&ix);
                done.insert(ix, closure);
            }
        }
        done
    }

    pub(super) fn closure_of(&mut self, root: Ix, state: &mut HashMap<Ix, u8>) {
        // Iterative DFS: a node's closure is built after its stale parents'.
        let mut stack = vec![(root, false)];
        while let Some((ix, expanded)) = stack.pop() {
            match state.get(&ix).copied() {
                Some(2) | None => continue,
                Some(1) if !expanded => continue,
                _ => {}
            }
            if !expanded {
                state.insert(ix, 1);
                stack.push((ix, true));
                for p in self.nodes[ix as usize].parents().iter() {
                    if state.get(p) == Some(&0) {
                        stack.push((*p, false));
                    }
                }
                continue;
            }
            let mut closure: Vec<Ix> = Vec::new();
            for p in self.nodes[ix as usize].parents().iter() {
                closure.push(*p);
                closure.extend(self.nodes[*p as usize].closure().iter().copied());
            }
            closure.sort_unstable();
            closure.dedup();
            self.nodes[ix as usize].set_closure(&closure);
            state.insert(ix, 2);
        }
    }

    /// Whether the store with these entities replaced has no hierarchy cycle (the store alone
    /// has none: every write goes through here).
    pub(super) fn acyclic<'a>(
        &'a self,
        replacing: impl Iterator<Item = (&'a EntityUid, &'a Value)>,
    ) -> Result<(), CycleError> {
        let view = View::replacing(self, replacing);
        match view.find_cycle() {
            None => Ok(()),
            Some(ix) => Err(CycleError {
                uid: view.uid_of(ix).to_string(),
            }),
        }
    }
}

impl View<'_> {
    /// An entity that would be its own ancestor, if any. The store has no cycle, so a new one
    /// runs through a replaced entity; stored entities whose closure avoids every re-parented
    /// one keep their edges and cannot lead back. Depth-first, each entity once.
    pub(super) fn find_cycle(&self) -> Option<Ix> {
        // 1: on the current path, 2: done.
        let mut color: HashMap<Ix, u8> = HashMap::new();
        let mut stack: Vec<(Ix, bool)> = Vec::new();
        for start in self.nodes.keys() {
            if color.contains_key(start) {
                continue;
            }
            stack.push((*start, false));
            while let Some((ix, done)) = stack.pop() {
                if done {
                    color.insert(ix, 2);
                    continue;
                }
                if color.contains_key(&ix) {
                    continue;
                }
                color.insert(ix, 1);
                stack.push((ix, true));
                let Some(node) = self.node(ix) else { continue };
                for p in node.parents().iter() {
                    match color.get(p) {
                        Some(1) => return Some(*p),
                        Some(_) => {}
                        None => {
                            let expand = self.nodes.contains_key(p)
                                || self.store.node(*p).is_some_and(|n| self.stale(*p, n));
                            if expand {
                                stack.push((*p, false));
                            } else {
                                color.insert(*p, 2);
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Whether the stored closure of `ix` cannot be used for this request: `ix` is replaced by
    /// the overlay, or one of its stored ancestors is given other parents.
    pub(super) fn stale(&self, ix: Ix, stored: &Node) -> bool {
        self.nodes.contains_key(&ix)
            || stored
                .closure()
                .iter()
                .any(|a| self.reparented.binary_search(a).is_ok())
    }

    /// The ancestors of `ix` through the overlay, sorted: parents as the overlay has them,
    /// and the stored closures that do not run through a re-parented entity.
    pub(super) fn fresh_closure(&self, ix: Ix) -> Vec<Ix> {
        let mut seen: HashSet<Ix> = HashSet::new();
        let mut queue: Vec<Ix> = self
            .node(ix)
            .map(|n| n.parents().to_vec())
            .unwrap_or_default();
        while let Some(p) = queue.pop() {
            if !seen.insert(p) {
                continue;
            }
            if let Some(n) = self.nodes.get(&p) {
                queue.extend(n.parents().iter().copied());
            } else if let Some(n) = self.store.node(p) {
                if self.stale(p, n) {
                    queue.extend(n.parents().iter().copied());
                } else {
                    seen.extend(n.closure().iter().copied());
                }
            }
        }
        let mut closure: Vec<Ix> = seen.into_iter().collect();
        closure.sort_unstable();
        closure
    }

    /// The ancestors of `ix` for this request, sorted.
    pub(super) fn closure<'s>(&'s self, ix: Ix, node: &'s Node) -> std::borrow::Cow<'s, [Ix]> {
        if !self.reparented.is_empty() && !self.nodes.contains_key(&ix) && self.stale(ix, node) {
            return std::borrow::Cow::Owned(self.fresh_closure(ix));
        }
        std::borrow::Cow::Borrowed(node.closure())
    }
}

#[cfg(test)]
mod tests {
    use cedar_policy::{EntityUid, Schema};
    use serde_json::{json, Value};

    use super::super::overlay::View;
    use super::super::{parse_entities, EntityStore, WriteOp};
    use crate::engine::schema::EntitySchema;

    const SCHEMA: &str = "entity Group in [Group]; entity User in [Group];";

    fn schema() -> EntitySchema {
        let schema: Schema = SCHEMA.parse().unwrap();
        EntitySchema::new(schema, SCHEMA)
    }

    fn uid(s: &str) -> EntityUid {
        s.parse().unwrap()
    }

    fn ent(ty: &str, id: &str, parents: &[&str]) -> Value {
        let parents: Vec<Value> = parents
            .iter()
            .map(|p| json!({"type": "Group", "id": p}))
            .collect();
        json!({"uid": {"type": ty, "id": id}, "attrs": {}, "parents": parents})
    }

    /// `u` in `g1` in `g2` in `g3`, and `v` in `g2`.
    fn chain() -> (EntityStore, EntitySchema) {
        let schema = schema();
        let mut store = EntityStore::default();
        let batch = parse_entities(
            json!([
                ent("User", "u", &["g1"]),
                ent("User", "v", &["g2"]),
                ent("Group", "g1", &["g2"]),
                ent("Group", "g2", &["g3"]),
                ent("Group", "g3", &[]),
            ]),
            &schema,
            "chain",
        )
        .unwrap();
        let prepared = store.prepare_entities(batch, "chain").unwrap();
        store.commit(prepared);
        (store, schema)
    }

    /// The stored closure of `of`, as sorted uid texts.
    fn closure(store: &EntityStore, of: &str) -> Vec<String> {
        let ix = store.lookup(&uid(of)).unwrap();
        let mut out: Vec<String> = store.nodes[ix as usize]
            .closure()
            .iter()
            .map(|a| store.uid_of(*a).to_string())
            .collect();
        out.sort();
        out
    }

    fn names(items: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        out.sort();
        out
    }

    /// A batch resolved beside decisions (`Prepared::resolve`) commits exactly as one that is
    /// not: known uids, new ones, re-parented entities; and a resolution against another
    /// store (a clone, whose numbering may diverge) is not trusted.
    /// A batch that names only entities the store knows gets its closures worked out beside
    /// decisions too, the written entities' and their stored descendants': a group moved
    /// up the chain, one deleted from under its children, an entity given a second parent,
    /// one written again as it was. The result equals a plain commit's.
    #[test]
    fn closures_worked_out_outside_the_lock_equal_those_of_a_plain_commit() {
        let ops = || {
            vec![
                WriteOp::Upsert(ent("Group", "g1", &["g3"])),
                WriteOp::AddParent {
                    child: uid(r#"User::"v""#),
                    parent: uid(r#"Group::"g1""#),
                },
                WriteOp::Upsert(ent("User", "u", &["g1"])),
                WriteOp::Delete(uid(r#"Group::"g2""#)),
            ]
        };
        let (mut plain, schema) = chain();
        let (mut resolved, _) = chain();
        plain.commit(plain.prepare(ops(), &schema).unwrap());
        let mut p = resolved.prepare(ops(), &schema).unwrap();
        p.resolve(&resolved);
        assert_eq!(p.known(), (4, 3, true));
        resolved.commit(p);
        for who in [r#"User::"u""#, r#"User::"v""#, r#"Group::"g1""#] {
            assert_eq!(closure(&plain, who), closure(&resolved, who), "{who}");
        }
        assert_eq!(
            closure(&resolved, r#"User::"u""#),
            names(&[r#"Group::"g1""#, r#"Group::"g3""#])
        );
        assert_eq!(
            closure(&resolved, r#"User::"v""#),
            names(&[r#"Group::"g1""#, r#"Group::"g2""#, r#"Group::"g3""#])
        );
        // Two batches on top. The first names new groups (its closures are left to the
        // commit); the second moves g4 under g5, and only its stored descendants (g3, g1, u,
        // v) get new closures, all worked out before the commit.
        let more = vec![
            WriteOp::Upsert(ent("Group", "g3", &["g4"])),
            WriteOp::Upsert(ent("Group", "g4", &[])),
            WriteOp::Upsert(ent("Group", "g5", &[])),
        ];
        let last = || vec![WriteOp::Upsert(ent("Group", "g4", &["g5"]))];
        plain.commit(plain.prepare(more.clone(), &schema).unwrap());
        plain.commit(plain.prepare(last(), &schema).unwrap());
        let mut p = resolved.prepare(more, &schema).unwrap();
        p.resolve(&resolved);
        assert!(!p.known().2);
        resolved.commit(p);
        let mut p = resolved.prepare(last(), &schema).unwrap();
        p.resolve(&resolved);
        assert_eq!(p.known(), (1, 1, true));
        resolved.commit(p);
        for who in [
            r#"User::"u""#,
            r#"User::"v""#,
            r#"Group::"g1""#,
            r#"Group::"g3""#,
            r#"Group::"g4""#,
        ] {
            assert_eq!(closure(&plain, who), closure(&resolved, who), "{who}");
        }
        assert_eq!(
            closure(&resolved, r#"User::"u""#),
            names(&[
                r#"Group::"g1""#,
                r#"Group::"g3""#,
                r#"Group::"g4""#,
                r#"Group::"g5""#
            ])
        );
    }

    #[test]
    fn a_batch_resolved_outside_the_lock_commits_as_one_that_is_not() {
        let ops = || {
            vec![
                WriteOp::Upsert(ent("User", "u", &["g3"])),
                WriteOp::Upsert(ent("User", "w", &["g1", "g9"])),
                WriteOp::Upsert(ent("Group", "g9", &["g2"])),
                WriteOp::AddParent {
                    child: uid(r#"User::"v""#),
                    parent: uid(r#"Group::"g1""#),
                },
                WriteOp::Delete(uid(r#"Group::"g3""#)),
            ]
        };
        let (mut plain, schema) = chain();
        let (mut resolved, _) = chain();
        let p = plain.prepare(ops(), &schema);
        plain.commit(p.unwrap());
        let mut p = resolved.prepare(ops(), &schema).unwrap();
        p.resolve(&resolved);
        // u, v and g3 are numbered already; u, v and g9 decode (w names g9, which is new).
        // (w names g9, which is new: the closures are left to the commit.)
        assert_eq!(p.known(), (3, 3, false));
        // Something committed between resolving and committing: numbers only ever grow.
        let extra = resolved
            .prepare(vec![WriteOp::Upsert(ent("Group", "g0", &[]))], &schema)
            .unwrap();
        resolved.commit(extra);
        let mut p2 = plain
            .prepare(vec![WriteOp::Upsert(ent("Group", "g0", &[]))], &schema)
            .unwrap();
        p2.resolve(&plain.clone());
        plain.commit(p2);
        resolved.commit(p.with_revision(plain.revision()));
        for who in [
            r#"User::"u""#,
            r#"User::"v""#,
            r#"User::"w""#,
            r#"Group::"g1""#,
            r#"Group::"g9""#,
            r#"Group::"g0""#,
        ] {
            assert_eq!(closure(&plain, who), closure(&resolved, who), "{who}");
            // (A stored entity's parents come back in no set order.)
            let json = |store: &EntityStore| {
                let mut j = store.get_json(&uid(who)).unwrap();
                let mut parents: Vec<String> = j["parents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(Value::to_string)
                    .collect();
                parents.sort();
                j["parents"] = json!(parents);
                j
            };
            assert_eq!(json(&plain), json(&resolved), "{who}");
        }
        assert!(!resolved.contains(&uid(r#"Group::"g3""#)));
        assert_eq!(plain.len(), resolved.len());
    }

    #[test]
    fn closures_hold_every_ancestor_and_follow_writes_to_descendants() {
        let (mut store, schema) = chain();
        assert_eq!(
            closure(&store, r#"User::"u""#),
            names(&[r#"Group::"g1""#, r#"Group::"g2""#, r#"Group::"g3""#])
        );
        assert_eq!(
            closure(&store, r#"User::"v""#),
            names(&[r#"Group::"g2""#, r#"Group::"g3""#])
        );
        assert!(closure(&store, r#"Group::"g3""#).is_empty());
        // Cutting g2 out of g3 changes the closures of everything below g2.
        let ops = vec![WriteOp::RemoveParent {
            child: uid(r#"Group::"g2""#),
            parent: uid(r#"Group::"g3""#),
        }];
        let prepared = store.prepare(ops, &schema).unwrap();
        store.commit(prepared);
        assert_eq!(
            closure(&store, r#"User::"u""#),
            names(&[r#"Group::"g1""#, r#"Group::"g2""#])
        );
        assert_eq!(closure(&store, r#"User::"v""#), names(&[r#"Group::"g2""#]));
        // And adding an edge above extends them again.
        let ops = vec![WriteOp::AddParent {
            child: uid(r#"Group::"g1""#),
            parent: uid(r#"Group::"g3""#),
        }];
        let prepared = store.prepare(ops, &schema).unwrap();
        store.commit(prepared);
        assert_eq!(
            closure(&store, r#"User::"u""#),
            names(&[r#"Group::"g1""#, r#"Group::"g2""#, r#"Group::"g3""#])
        );
        assert_eq!(closure(&store, r#"User::"v""#), names(&[r#"Group::"g2""#]));
    }

    #[test]
    fn a_write_that_closes_a_cycle_is_refused_and_changes_nothing() {
        let (store, schema) = chain();
        let ops = vec![WriteOp::AddParent {
            child: uid(r#"Group::"g3""#),
            parent: uid(r#"Group::"g1""#),
        }];
        let err = store.prepare(ops, &schema).unwrap_err();
        assert_eq!(err.field, crate::engine::error::Field::Ops(None));
        assert!(err.message.contains("would be its own ancestor"), "{err}");
        // A self-loop too.
        let batch = parse_entities(json!([ent("Group", "g2", &["g2"])]), &schema, "t").unwrap();
        assert!(store.prepare_entities(batch, "t").is_err());
        assert_eq!(closure(&store, r#"Group::"g3""#), Vec::<String>::new());
    }

    #[test]
    fn a_stored_cycle_is_refused_at_load() {
        let mut store = EntityStore::default();
        for e in [ent("Group", "a", &["b"]), ent("Group", "b", &["a"])] {
            store.bulk_insert(&e).unwrap();
        }
        let err = store.finish_bulk(1).unwrap_err();
        assert!(
            err.to_string().contains("would be its own ancestor"),
            "{err}"
        );
        // Without the cycle, the bulk load closes every entity.
        let mut store = EntityStore::default();
        for e in [ent("Group", "a", &["b"]), ent("Group", "b", &[])] {
            store.bulk_insert(&e).unwrap();
        }
        store.finish_bulk(1).unwrap();
        assert_eq!(closure(&store, r#"Group::"a""#), names(&[r#"Group::"b""#]));
    }

    #[test]
    fn request_entities_that_reparent_a_stored_one_recompute_its_descendants() {
        let (store, schema) = chain();
        // g1 given no parents for this request: u's stored closure runs through it, so u is
        // now only in g1; v (below g2, untouched) keeps its stored closure.
        let batch = parse_entities(json!([ent("Group", "g1", &[])]), &schema, "t").unwrap();
        let overlay = store.overlay(batch).unwrap();
        let view = View::new(&store, &overlay);
        let of = |s: &str| {
            let ix = store.lookup(&uid(s)).unwrap();
            let node = view.node(ix).unwrap();
            let mut out: Vec<String> = view
                .closure(ix, node)
                .iter()
                .map(|a| view.uid_of(*a).to_string())
                .collect();
            out.sort();
            out
        };
        assert_eq!(of(r#"User::"u""#), names(&[r#"Group::"g1""#]));
        assert_eq!(
            of(r#"User::"v""#),
            names(&[r#"Group::"g2""#, r#"Group::"g3""#])
        );
        // Moved under g3 directly instead: u is in g1 and g3, not g2.
        let batch = parse_entities(json!([ent("Group", "g1", &["g3"])]), &schema, "t").unwrap();
        let overlay = store.overlay(batch).unwrap();
        let view = View::new(&store, &overlay);
        let ix = store.lookup(&uid(r#"User::"u""#)).unwrap();
        let mut got: Vec<String> = view
            .closure(ix, view.node(ix).unwrap())
            .iter()
            .map(|a| view.uid_of(*a).to_string())
            .collect();
        got.sort();
        assert_eq!(got, names(&[r#"Group::"g1""#, r#"Group::"g3""#]));
    }

    #[test]
    fn request_entities_that_close_a_cycle_are_refused() {
        let (store, schema) = chain();
        let batch = parse_entities(json!([ent("Group", "g3", &["g1"])]), &schema, "t").unwrap();
        let err = store.overlay(batch).unwrap_err();
        assert!(err.uid.contains("Group::"), "{err}");
        // A new entity in a chain of new entities is fine.
        let batch = parse_entities(
            json!([ent("Group", "n1", &["n2"]), ent("Group", "n2", &["g3"])]),
            &schema,
            "t",
        )
        .unwrap();
        assert!(store.overlay(batch).is_ok());
    }

    #[test]
    fn a_chain_of_batches_is_validated_as_if_committed_one_by_one() {
        let (mut store, schema) = chain();
        let upsert = |e: Value| vec![WriteOp::Upsert(e)];
        let batches = vec![
            // 1: a new group under g3.
            upsert(ent("Group", "n", &["g3"])),
            // 2: a parent edge to the group batch 1 made (it does not exist in the store).
            vec![WriteOp::AddParent {
                child: uid(r#"User::"v""#),
                parent: uid(r#"Group::"n""#),
            }],
            // 3: g3 under n: a cycle only with batch 1 (n in g3): refused.
            vec![WriteOp::AddParent {
                child: uid(r#"Group::"g3""#),
                parent: uid(r#"Group::"n""#),
            }],
            // 4: a parent edge to an entity only the refused batch would have touched: fine,
            // and it does not see batch 3's edge (g3 keeps no parents).
            vec![WriteOp::AddParent {
                child: uid(r#"Group::"g1""#),
                parent: uid(r#"Group::"n""#),
            }],
            // 5: an edge to a group nobody made: refused alone.
            vec![WriteOp::AddParent {
                child: uid(r#"User::"u""#),
                parent: uid(r#"Group::"nobody""#),
            }],
        ];
        let results = store.prepare_chain(batches, &schema);
        assert_eq!(results.len(), 5);
        assert!(results[2]
            .as_ref()
            .unwrap_err()
            .message
            .contains("own ancestor"));
        assert!(results[4]
            .as_ref()
            .unwrap_err()
            .message
            .contains("does not exist"));
        let accepted: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
        // Consecutive revisions for the accepted ones, whatever was refused between them.
        let revisions: Vec<u64> = accepted.iter().map(|p| p.revision()).collect();
        let first = store.revision + 1;
        assert_eq!(revisions, vec![first, first + 1, first + 2]);
        for p in accepted {
            store.commit(p);
        }
        assert_eq!(store.revision, first + 2);
        assert_eq!(
            closure(&store, r#"User::"v""#),
            names(&[r#"Group::"g2""#, r#"Group::"g3""#, r#"Group::"n""#])
        );
        assert_eq!(
            closure(&store, r#"User::"u""#),
            names(&[
                r#"Group::"g1""#,
                r#"Group::"g2""#,
                r#"Group::"g3""#,
                r#"Group::"n""#
            ])
        );
        assert!(closure(&store, r#"Group::"g3""#).is_empty());
    }

    #[test]
    fn a_chained_batch_sees_a_deletion_before_it() {
        let (store, schema) = chain();
        let batches = vec![
            vec![WriteOp::Delete(uid(r#"Group::"g3""#))],
            vec![WriteOp::AddParent {
                child: uid(r#"User::"u""#),
                parent: uid(r#"Group::"g3""#),
            }],
        ];
        let results = store.prepare_chain(batches, &schema);
        assert!(results[0].is_ok());
        assert!(results[1]
            .as_ref()
            .unwrap_err()
            .message
            .contains("does not exist"));
        // The same edge alone, on the store, is fine.
        let alone = store.prepare(
            vec![WriteOp::AddParent {
                child: uid(r#"User::"u""#),
                parent: uid(r#"Group::"g3""#),
            }],
            &schema,
        );
        assert!(alone.is_ok());
    }
}
