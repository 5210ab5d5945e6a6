//! A growable array in fixed-size chunks: pushing never moves what is stored, so the index's
//! per-entity tables grow in constant time under the decisions' lock (issue 35: a table that
//! doubled there copied every node first), at the cost of one more load per read.

/// Entries per chunk.
const SHIFT: u32 = 16;
const CHUNK: usize = 1 << SHIFT;
const MASK: usize = CHUNK - 1;

#[derive(Debug, Clone)]
pub(super) struct Slab<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i >> SHIFT)?.get(i & MASK)
    }

    pub(super) fn push(&mut self, value: T) {
        let chunk = self.len >> SHIFT;
        if chunk == self.chunks.len() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks[chunk].push(value);
        self.len += 1;
    }

    /// Room for `n` more without allocating.
    pub(super) fn reserve(&mut self, n: usize) {
        while self.chunks.len() * CHUNK < self.len + n {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
    }

    /// Entries allocated.
    pub(super) fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> std::ops::Index<usize> for Slab<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> SHIFT][i & MASK]
    }
}

impl<T> std::ops::IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> SHIFT][i & MASK]
    }
}

impl<'a, T> IntoIterator for &'a Slab<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_where_they_were_pushed_across_chunks() {
        let mut s = Slab::default();
        s.reserve(10);
        for i in 0..(3 * CHUNK + 5) {
            s.push(i);
        }
        let first = &s[0] as *const usize;
        s.push(0);
        assert_eq!(first, &s[0] as *const usize, "a push moves nothing");
        assert_eq!(s.len(), 3 * CHUNK + 6);
        assert_eq!(s[CHUNK + 7], CHUNK + 7);
        assert_eq!(s.get(3 * CHUNK + 4), Some(&(3 * CHUNK + 4)));
        assert_eq!(s.get(3 * CHUNK + 6), None);
        assert!(s
            .iter()
            .take(3 * CHUNK + 5)
            .enumerate()
            .all(|(i, v)| i == *v));
        s[5] = 99;
        assert_eq!((&s).into_iter().nth(5), Some(&99));
        assert_eq!(s.capacity(), 4 * CHUNK);
    }
}
