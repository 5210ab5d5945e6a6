//! Every uid the index has numbered, by number: its type and its id, the ids' text kept in
//! an arena of fixed-size chunks (8 bytes a uid plus the id's bytes, against 32 for a type and
//! a `SmolStr`). Chunks never move, so growing the arena copies nothing. Uids are never
//! removed (a deleted entity's node is marked absent; its number stays).

use std::collections::HashMap;

use super::Ix;

/// The arena's chunk size: an id never spans two chunks.
const CHUNK: usize = 1 << 20;

/// A uid's slot: its type and where its id is. `len == LONG` means the id is in `long`
/// (longer than 65,534 bytes, or past the arena's 4 GiB of offsets).
#[derive(Debug, Clone, Copy)]
struct Key {
    ty: u16,
    len: u16,
    at: u32,
}

const LONG: u16 = u16::MAX;

/// A numbered uid, borrowed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Uid<'a> {
    pub ty: u16,
    pub id: &'a str,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Uids {
    keys: Vec<Key>,
    chunks: Vec<String>,
    long: HashMap<Ix, Box<str>>,
}

impl Uids {
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The uid numbered `ix`. Panics if there is none: numbers come from this table.
    pub(super) fn get(&self, ix: Ix) -> Uid<'_> {
        let k = self.keys[ix as usize];
        Uid {
            ty: k.ty,
            id: self.text(ix, k),
        }
    }

    /// The type of `ix`, if it is numbered.
    pub(super) fn ty(&self, ix: Ix) -> Option<u16> {
        self.keys.get(ix as usize).map(|k| k.ty)
    }

    fn text(&self, ix: Ix, k: Key) -> &str {
        if k.len == LONG {
            return self.long.get(&ix).map_or("", |s| s);
        }
        let (chunk, pos) = (k.at as usize / CHUNK, k.at as usize % CHUNK);
        &self.chunks[chunk][pos..pos + k.len as usize]
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Uid<'_>> {
        self.keys.iter().enumerate().map(|(ix, k)| Uid {
            ty: k.ty,
            id: self.text(ix as Ix, *k),
        })
    }

    /// Numbers a new uid (the caller knows it is new).
    pub(super) fn push(&mut self, ty: u16, id: &str) -> Ix {
        let ix = self.keys.len() as Ix;
        let at = self.place(id);
        let key = match at {
            Some(at) => Key {
                ty,
                len: id.len() as u16,
                at,
            },
            None => {
                self.long.insert(ix, id.into());
                Key {
                    ty,
                    len: LONG,
                    at: 0,
                }
            }
        };
        self.keys.push(key);
        ix
    }

    /// Copies `id` into the arena; None if it is too long for a slot or the arena is full.
    fn place(&mut self, id: &str) -> Option<u32> {
        if id.len() >= LONG as usize {
            return None;
        }
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.len() + id.len() <= CHUNK);
        if !fits {
            if (self.chunks.len() + 1) * CHUNK > u32::MAX as usize {
                return None;
            }
            self.chunks.push(String::with_capacity(CHUNK));
        }
        let chunk = self.chunks.len() - 1;
        let c = &mut self.chunks[chunk];
        let at = chunk * CHUNK + c.len();
        c.push_str(id);
        Some(at as u32)
    }

    pub(super) fn reserve(&mut self, n: usize) {
        self.keys.reserve(n);
    }

    /// The bytes it holds (slots, chunks, long ids).
    pub(super) fn footprint(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<Key>()
            + self.chunks.iter().map(String::capacity).sum::<usize>()
            + self.long.values().map(|s| s.len() + 48).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_back_as_pushed_across_chunks_and_when_long() {
        let mut u = Uids::default();
        let long = "x".repeat(70_000);
        let mut ids: Vec<String> = (0..300_000).map(|i| format!("id-{i}")).collect();
        ids.insert(1000, long.clone());
        ids.insert(2000, String::new());
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(u.push((i % 7) as u16, id), i as Ix);
        }
        assert!(u.chunks.len() > 1, "more than one chunk");
        for (i, id) in ids.iter().enumerate() {
            let got = u.get(i as Ix);
            assert_eq!((got.ty, got.id), ((i % 7) as u16, id.as_str()));
        }
        assert_eq!(u.iter().nth(1000).unwrap().id, long);
        assert_eq!(u.ty(ids.len() as Ix), None);
    }
}
