//! Where the index's bytes go: an estimate of its heap, per part and per entity type, from
//! the capacities it holds (what was asked of the allocator, not the allocator's own slack).
//! Logged once the index is built at start-up, and read by the memory figures in
//! BENCHMARKS.md.

use std::mem::size_of;

use super::{EntityStore, Fields, Ix, Node, Val};

/// The estimate: (part, bytes), largest first; and per entity type (type, entities, bytes of
/// their nodes' own allocations: parents, closures, attributes, tags).
#[derive(Debug, Default)]
pub struct Footprint {
    pub parts: Vec<(&'static str, usize)>,
    pub by_type: Vec<(String, usize, usize)>,
}

impl Footprint {
    pub fn total(&self) -> usize {
        self.parts.iter().map(|(_, b)| b).sum()
    }

    /// One line: `total 312.4 MB: index 86.1, nodes 81.0, ...; by type: Blue::Record 1000000
    /// 64.0 MB, ...`.
    pub fn summary(&self) -> String {
        let mb = |b: usize| b as f64 / 1e6;
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(p, b)| format!("{p} {:.1}", mb(*b)))
            .collect();
        let types: Vec<String> = self
            .by_type
            .iter()
            .map(|(t, n, b)| format!("{t} {n} {:.1} MB", mb(*b)))
            .collect();
        format!(
            "total {:.1} MB: {}; nodes' own allocations by type: {}",
            mb(self.total()),
            parts.join(", "),
            types.join(", ")
        )
    }
}

/// The heap of a hashbrown table of `buckets` entries of type `T` (one control byte each).
fn table<T>(buckets: usize) -> usize {
    if buckets == 0 {
        0
    } else {
        // hashbrown's bucket count: capacity * 8 / 7, rounded up to a power of two.
        let n = (buckets * 8 / 7).next_power_of_two();
        n * (size_of::<T>() + 1)
    }
}

fn val_heap(v: &Val) -> usize {
    match v {
        Val::Str(s) => s.len(),
        Val::Set(items) => {
            items.len() * size_of::<Val>() + items.iter().map(val_heap).sum::<usize>()
        }
        Val::Record(fields) => fields_heap(fields),
        Val::Ext(x) => size_of::<(Box<str>, Box<str>)>() + x.0.len() + x.1.len(),
        _ => 0,
    }
}

fn fields_heap(fields: &Fields) -> usize {
    fields
        .iter()
        .map(|(k, v)| size_of::<(Box<str>, Val)>() + k.len() + val_heap(v))
        .sum()
}

impl EntityStore {
    /// Where the index's bytes go (see [`Footprint`]).
    pub fn footprint(&self) -> Footprint {
        let mut parents = 0;
        let mut closures = 0;
        let mut attrs = 0;
        let mut tags = 0;
        let mut by_type = vec![(0usize, 0usize); self.types.len()];
        for (key, node) in self.uids.iter().zip(&self.nodes) {
            if !node.present {
                continue;
            }
            let p = std::mem::size_of_val(node.parents());
            let c = std::mem::size_of_val(node.closure());
            let a = node.attrs.len() * size_of::<(u16, Val)>()
                + node.attrs.iter().map(|(_, v)| val_heap(v)).sum::<usize>();
            let t = node.tags.as_deref().map_or(0, fields_heap);
            parents += p;
            closures += c;
            attrs += a;
            tags += t;
            let row = &mut by_type[key.ty as usize];
            row.0 += 1;
            row.1 += p + c + a + t;
        }
        let children = table::<(Ix, Vec<Ix>)>(self.children.capacity())
            + self
                .children
                .values()
                .map(|v| v.capacity() * size_of::<Ix>())
                .sum::<usize>();
        let refs = table::<(super::reverse::RefKey, Vec<Ix>)>(self.refs.capacity())
            + self
                .refs
                .values()
                .map(|v| v.capacity() * size_of::<Ix>())
                .sum::<usize>();
        let mut parts = vec![
            ("uids", self.uids.footprint()),
            ("uid table", table::<Ix>(self.index.capacity())),
            ("nodes", self.nodes.capacity() * size_of::<Node>()),
            (
                "shared slice entities (slots)",
                self.shared.capacity() * size_of::<super::Shared>(),
            ),
            ("parents", parents),
            ("closures", closures),
            ("attributes", attrs),
            ("tags", tags),
            ("children", children),
            ("reverse attribute index", refs),
            ("declared keys", self.keys.footprint()),
        ];
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let mut by_type: Vec<(String, usize, usize)> = self
            .types
            .iter()
            .zip(by_type)
            .filter(|(_, (n, _))| *n > 0)
            .map(|(t, (n, b))| (t.to_string(), n, b))
            .collect();
        by_type.sort_by_key(|t| std::cmp::Reverse(t.2));
        Footprint { parts, by_type }
    }
}
