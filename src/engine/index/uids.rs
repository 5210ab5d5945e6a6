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

/// The uid slots, grown (see [`Uids::room_for`]).
#[derive(Debug)]
pub(super) struct Room(Vec<Key>);

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

    /// A copy of the slots with room for `n` more, if there is not: grown beside decisions,
    /// put in with [`Uids::put_room`].
    pub(super) fn room_for(&self, n: usize) -> Option<Room> {
        (self.keys.capacity() - self.keys.len() < n).then(|| {
            let mut keys = Vec::with_capacity(self.keys.len() + n.max(self.keys.len()));
            keys.extend_from_slice(&self.keys);
            Room(keys)
        })
    }

    /// Puts in slots made by [`Uids::room_for`] on these very slots; returns the old ones.
    pub(super) fn put_room(&mut self, room: Room) -> Room {
        debug_assert_eq!(room.0.len(), self.keys.len());
        Room(std::mem::replace(&mut self.keys, room.0))
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
    }
}
