//! A data block's point index: where each key's first entry starts, found from the key's
//! hash in one probe of a small table (usually one cache line), instead of a binary search
//! over the block's entries.
//!
//! A point read served from a cached block used to touch the block's key heads three or
//! four times (each a dependent cache miss on a block nobody read lately), then the entry
//! offsets, then the entry. With this index it touches one slot, then the entry.
//!
//! The index lives only in memory: the first point read of a cached block builds it (blocks
//! that are only scanned never pay for it), and the block cache counts its size.
//!
//! ## Layout
//!
//! Open addressing with linear probing over `2^b` slots of `u32`, at most two thirds full, so
//! every probe sequence ends at an empty slot. A slot is `tag << 16 | offset`, where `offset`
//! is the entry's start in the decoded block and `tag` is 16 bits of the key's hash with the
//! low bit set (so a used slot is never 0, the empty slot). The probe starts at
//! `(hash >> 32) & (slots - 1)`; the tag comes from the hash's low 16 bits.
//!
//! Invariants:
//! - Every distinct key of the block has exactly one slot, holding the offset of its first
//!   entry (its newest version: entries are in key ascending, sequence descending order).
//!   So a key that is not found is not in the block.
//! - Offsets fit in 16 bits: a block with an entry that starts 64 KiB or more into its decoded
//!   data gets no point index, and its reads use the binary search. Only a `block_size` above
//!   64 KiB makes one: the writer starts every entry below `block_size` (a value larger than
//!   the block size sits alone at offset 0).
//! - A tag match is only a hint: the caller compares the full key at the offset.

use xxhash_rust::xxh3::xxh3_64;

/// The hash a point index (and the segment's Bloom filter, `bloom.rs`) is keyed by.
#[inline]
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Entry offsets a point index holds are below this (16 bits).
pub(crate) const MAX_BLOCK: usize = 1 << 16;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct PointIndex {
    slots: Box<[u32]>,
}

const EMPTY: u32 = 0;

#[inline]
fn tag(hash: u64) -> u32 {
    (hash as u32 & 0xffff) | 1
}

#[inline]
fn start(hash: u64, mask: usize) -> usize {
    (hash >> 32) as usize & mask
}

impl PointIndex {
    /// The number of slots for `keys` keys: a power of two at least 1.5 times `keys`.
    fn capacity(keys: usize) -> usize {
        (keys + keys / 2 + 1).next_power_of_two().max(8)
    }

    /// An index over a block's keys, given in block order as `(hash, offset)` of every entry
    /// (repeated keys are given once per version; only the first counts, which is why the
    /// caller says which entries start a new key). `None` if an offset does not fit 16 bits.
    pub(crate) fn build(
        entries: usize,
        firsts: impl Iterator<Item = (u64, usize)>,
    ) -> Option<PointIndex> {
        let mut slots = vec![EMPTY; Self::capacity(entries)].into_boxed_slice();
        let mask = slots.len() - 1;
        let mut used = 0usize;
        for (hash, offset) in firsts {
            if offset >= MAX_BLOCK {
                return None;
            }
            // More keys than entries would overfill the table (a caller bug): give up on the
            // index rather than loop.
            used += 1;
            if used > entries {
                return None;
            }
            let mut pos = start(hash, mask);
            while slots[pos] != EMPTY {
                pos = (pos + 1) & mask;
            }
            slots[pos] = tag(hash) << 16 | offset as u32;
        }
        Some(PointIndex { slots })
    }

    /// Bytes this index takes.
    pub(crate) fn bytes(&self) -> usize {
        self.slots.len() * 4
    }

    /// The first `Some` that `at(offset)` returns for the offsets whose tag matches `hash`, in
    /// probe order; `None` once the probe reaches an empty slot (the key is not in the block).
    #[inline]
    pub(crate) fn find<T>(&self, hash: u64, mut at: impl FnMut(usize) -> Option<T>) -> Option<T> {
        let mask = self.slots.len() - 1;
        let want = tag(hash);
        let mut pos = start(hash, mask);
        // Bounded: the table is never full, so an empty slot ends the probe sooner.
        for _ in 0..self.slots.len() {
            let s = self.slots[pos];
            if s == EMPTY {
                return None;
            }
            if s >> 16 == want
                && let Some(found) = at((s & 0xffff) as usize)
            {
                return Some(found);
            }
            pos = (pos + 1) & mask;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds an index over `keys` (distinct), laid out one after another as if each took
    /// `stride` bytes, and returns it with the offsets.
    fn index(keys: &[Vec<u8>], stride: usize) -> (Option<PointIndex>, Vec<usize>) {
        let offsets: Vec<usize> = (0..keys.len()).map(|i| i * stride).collect();
        let ix = PointIndex::build(
            keys.len(),
            keys.iter().zip(&offsets).map(|(k, &o)| (key_hash(k), o)),
        );
        (ix, offsets)
    }

    proptest! {
        /// Every key is found at its own offset, and keys that were not indexed are not found.
        #[test]
        fn finds_exactly_the_indexed_keys(
            keys in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 0..24), 0..300),
            absent in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..50),
        ) {
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            let (ix, offsets) = index(&keys, 200);
            let ix = ix.expect("offsets below 64 KiB");
            for (k, &o) in keys.iter().zip(&offsets) {
                let got = ix.find(key_hash(k), |off| (keys[off / 200] == *k).then_some(off));
                prop_assert_eq!(got, Some(o));
            }
            for a in absent.iter().filter(|a| !keys.contains(a)) {
                let got = ix.find(key_hash(a), |off| (keys[off / 200] == *a).then_some(off));
                prop_assert_eq!(got, None);
            }
        }
    }

    #[test]
    fn colliding_tags_fall_through_to_the_next_match() {
        // Two keys that hash alike in the table's bits: the second is still found, because a
        // tag match whose key differs continues the probe.
        let ix = PointIndex::build(
            2,
            [(0x0005_0000_0001, 0), (0x0005_0000_0001, 100)].into_iter(),
        )
        .expect("index");
        let mut seen = Vec::new();
        let got = ix.find(0x0005_0000_0001, |off| {
            seen.push(off);
            (off == 100).then_some(off)
        });
        assert_eq!(got, Some(100));
        assert_eq!(seen, vec![0, 100]);
        assert_eq!(ix.bytes(), 8 * 4);
    }

    #[test]
    fn large_blocks_and_overfull_input_get_no_index() {
        assert!(PointIndex::build(1, [(1, MAX_BLOCK - 1)].into_iter()).is_some());
        assert!(PointIndex::build(1, [(1, MAX_BLOCK)].into_iter()).is_none());
        // More keys than the entry count the table was sized for.
        assert!(PointIndex::build(1, [(1, 0), (2, 10)].into_iter()).is_none());
    }

    #[test]
    fn stays_at_most_two_thirds_full() {
        for n in [0usize, 1, 5, 6, 80, 85, 86, 1000] {
            let cap = PointIndex::capacity(n);
            assert!(cap.is_power_of_two());
            assert!(n * 3 <= cap * 2, "{n} keys in {cap} slots");
            assert!(cap * 4 <= 12 * n.max(3) + 32);
        }
    }
}
