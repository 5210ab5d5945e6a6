//! The hierarchy checks of an import, without the index: every parent exists (in the file, or
//! in the store the file merges into) and no entity becomes its own ancestor. Entities are
//! numbered by uid and edges kept as pairs of numbers, so the check of a file costs a few
//! tens of bytes an entity, whatever the size of its attributes.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

const IN_FILE: u8 = 1;
const STORED: u8 = 2;

/// Uids and parent edges of a file, and of the store it goes into.
#[derive(Default)]
pub struct Hierarchy {
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
    names: Vec<Box<str>>,
    state: Vec<u8>,
    /// (child, parent) of the file's entities.
    file_edges: Vec<(u32, u32)>,
    /// (child, parent) of stored entities the file does not name.
    stored_edges: Vec<(u32, u32)>,
    /// Stored entities the file names (replaced by it).
    overlap: usize,
}

/// Why a hierarchy cannot be written.
#[derive(Debug, PartialEq, Eq)]
pub enum HierarchyError {
    /// A parent that exists nowhere: the first such edge, and how many there are.
    Dangling {
        child: String,
        parent: String,
        count: usize,
    },
    /// An entity that would be its own ancestor.
    Cycle { entity: String },
}

impl Hierarchy {
    fn intern(&mut self, uid: &str) -> u32 {
        let hash = self.hasher.hash_one(uid);
        let names = &self.names;
        if let Some(ix) = self.table.find(hash, |&ix| &*names[ix as usize] == uid) {
            return *ix;
        }
        let ix = self.names.len() as u32;
        self.names.push(uid.into());
        self.state.push(0);
        let (names, hasher) = (&self.names, &self.hasher);
        self.table
            .insert_unique(hash, ix, |&i| hasher.hash_one(&*names[i as usize]));
        ix
    }

    /// An entity of the file and its parents; false if the file named it already.
    pub fn add_file<'a>(&mut self, uid: &str, parents: impl Iterator<Item = &'a str>) -> bool {
        let child = self.intern(uid);
        if self.state[child as usize] & IN_FILE != 0 {
            return false;
        }
        self.state[child as usize] |= IN_FILE;
        for p in parents {
            let parent = self.intern(p);
            self.file_edges.push((child, parent));
        }
        true
    }

    /// A stored entity and its parents (after the file's entities were added): one the file
    /// names is replaced by it, so its stored parents do not count.
    pub fn add_stored<'a>(&mut self, uid: &str, parents: impl Iterator<Item = &'a str>) {
        let child = self.intern(uid);
        self.state[child as usize] |= STORED;
        if self.state[child as usize] & IN_FILE != 0 {
            self.overlap += 1;
            return;
        }
        for p in parents {
            let parent = self.intern(p);
            self.stored_edges.push((child, parent));
        }
    }

    /// Stored entities the file names.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    /// Stored entities the file does not name (what `--replace` deletes).
    pub fn stored_only(&self) -> impl Iterator<Item = &str> {
        self.state
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == STORED)
            .map(|(i, _)| &*self.names[i])
    }

    /// Checks the hierarchy the store would hold: the file merged into the store, or (with
    /// `replace`) the file alone.
    pub fn check(&self, replace: bool) -> Result<(), HierarchyError> {
        let exists = |ix: u32| {
            let s = self.state[ix as usize];
            s & IN_FILE != 0 || (!replace && s & STORED != 0)
        };
        let dangling: Vec<&(u32, u32)> = self
            .file_edges
            .iter()
            .filter(|(_, p)| !exists(*p))
            .collect();
        if let Some((c, p)) = dangling.first() {
            return Err(HierarchyError::Dangling {
                child: self.names[*c as usize].to_string(),
                parent: self.names[*p as usize].to_string(),
                count: dangling.len(),
            });
        }
        let stored: &[(u32, u32)] = if replace { &[] } else { &self.stored_edges };
        match find_cycle(self.names.len(), self.file_edges.iter().chain(stored)) {
            Some(ix) => Err(HierarchyError::Cycle {
                entity: self.names[ix as usize].to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// A node on a cycle of the graph of (child, parent) edges, if there is one: iterative depth
/// first search over the edges grouped by child.
fn find_cycle<'a>(
    nodes: usize,
    edges: impl Iterator<Item = &'a (u32, u32)> + Clone,
) -> Option<u32> {
    let mut start = vec![0u32; nodes + 1];
    for (c, _) in edges.clone() {
        start[*c as usize + 1] += 1;
    }
    for i in 0..nodes {
        start[i + 1] += start[i];
    }
    let mut next = start.clone();
    let mut to = vec![0u32; start[nodes] as usize];
    for (c, p) in edges {
        to[next[*c as usize] as usize] = *p;
        next[*c as usize] += 1;
    }
    // 0: not seen, 1: on the current path, 2: done.
    let mut color = vec![0u8; nodes];
    let mut stack: Vec<(u32, u32)> = Vec::new();
    for root in 0..nodes as u32 {
        if color[root as usize] != 0 {
            continue;
        }
        color[root as usize] = 1;
        stack.push((root, start[root as usize]));
        while let Some(&mut (node, ref mut at)) = stack.last_mut() {
            if *at < start[node as usize + 1] {
                let parent = to[*at as usize];
                *at += 1;
                match color[parent as usize] {
                    0 => {
                        color[parent as usize] = 1;
                        stack.push((parent, start[parent as usize]));
                    }
                    1 => return Some(parent),
                    _ => {}
                }
            } else {
                color[node as usize] = 2;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_must_exist_and_no_entity_is_its_own_ancestor() {
        let mut h = Hierarchy::default();
        assert!(h.add_file("U::a", ["G::g"].into_iter()));
        assert!(h.add_file("G::g", [].into_iter()));
        assert!(!h.add_file("U::a", [].into_iter()), "a duplicate");
        assert_eq!(h.check(false), Ok(()));
        let mut h = Hierarchy::default();
        h.add_file("U::a", ["G::missing", "G::stored"].into_iter());
        h.add_stored("G::stored", [].into_iter());
        assert_eq!(
            h.check(false),
            Err(HierarchyError::Dangling {
                child: "U::a".into(),
                parent: "G::missing".into(),
                count: 1
            })
        );
        // A cycle through a stored entity the file does not name.
        let mut h = Hierarchy::default();
        h.add_file("G::a", ["G::s"].into_iter());
        h.add_stored("G::s", ["G::a"].into_iter());
        h.add_stored("G::t", [].into_iter());
        assert!(matches!(h.check(false), Err(HierarchyError::Cycle { .. })));
        // Replacing the store: the stored edge goes, and so does the stored parent.
        assert!(matches!(
            h.check(true),
            Err(HierarchyError::Dangling { .. })
        ));
        assert_eq!(h.stored_only().collect::<Vec<_>>(), vec!["G::s", "G::t"]);
        // A stored entity the file names is replaced: its stored parents do not count.
        let mut h = Hierarchy::default();
        h.add_file("G::a", [].into_iter());
        h.add_stored("G::a", ["G::a"].into_iter());
        assert_eq!((h.check(false), h.overlap()), (Ok(()), 1));
    }
}
