//! Binary search over sorted keys through a compact array of 8-byte key heads.
//!
//! The keys of one data block (or the last keys of a segment's blocks) share a prefix (the
//! tag and collection of entity keys, say), and the next 8 bytes nearly always decide a
//! comparison. [`KeyHeads`] keeps those 8 bytes of every key as a big-endian `u64` in one
//! contiguous array, so a search compares integers in a few cache lines and reads a full key
//! only when two heads are equal. A block search that read every probed key from the 16 KiB
//! block (a cache miss and a `memcmp` call per step) was a third of the time of a point read
//! served from a segment.
//!
//! Invariant: keys are given in ascending order. Then `head(a) <= head(b)` whenever `a <= b`
//! (the head is the first 8 bytes after the shared prefix, zero-padded, compared as bytes),
//! so a head that differs from the probe's decides the comparison, and an equal head defers
//! to the full comparison.

use std::cmp::Ordering;

/// The shared prefix and the heads of a sorted run of keys.
#[derive(Debug, Default)]
pub(crate) struct KeyHeads {
    prefix: Box<[u8]>,
    heads: Box<[u64]>,
}

fn head(rest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = rest.len().min(8);
    b[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(b)
}

impl KeyHeads {
    /// Heads of `keys`, which must be in ascending order.
    pub(crate) fn new(keys: &[&[u8]]) -> KeyHeads {
        // The prefix every key shares (for sorted keys, that of the first and the last; taken
        // over all of them so that keys read from a damaged file cannot break the slicing).
        let first = keys.first().copied().unwrap_or(&[]);
        let n = keys.iter().fold(first.len(), |n, k| {
            n.min(
                first
                    .iter()
                    .zip(k.iter())
                    .take_while(|(a, b)| a == b)
                    .count(),
            )
        });
        let prefix = &first[..n];
        let heads = keys.iter().map(|k| head(&k[prefix.len()..])).collect();
        KeyHeads {
            prefix: prefix.into(),
            heads,
        }
    }

    /// The first index whose entry is not below the probe, where `cmp_at(i)` is the full
    /// comparison of entry `i` with the probe (its key equal to `key` or not). Entries must be
    /// ordered by key first, so that a smaller key means a smaller entry.
    pub(crate) fn partition_point(&self, key: &[u8], cmp_at: impl Fn(usize) -> Ordering) -> usize {
        let n = self.heads.len();
        let cp = self.prefix.len();
        // Every entry's key starts with the prefix: a probe that does not is below or above
        // them all.
        match key.get(..cp) {
            None => return if key < &self.prefix[..] { 0 } else { n },
            Some(p) => match p.cmp(&self.prefix) {
                Ordering::Less => return 0,
                Ordering::Greater => return n,
                Ordering::Equal => {}
            },
        }
        let ph = head(&key[cp..]);
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let below = match self.heads[mid].cmp(&ph) {
                Ordering::Less => true,
                Ordering::Greater => false,
                Ordering::Equal => cmp_at(mid).is_lt(),
            };
            if below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The head search finds what a plain binary search over the full keys finds, for
        /// probes inside, before, after and between the keys, with long shared prefixes.
        #[test]
        fn agrees_with_a_full_binary_search(
            mut keys in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..4), proptest::collection::vec(any::<u8>(), 0..12)),
                0..40,
            ),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..16), 1..20),
        ) {
            let keys: Vec<Vec<u8>> = {
                let mut ks: Vec<Vec<u8>> = keys
                    .drain(..)
                    .map(|(a, b)| [&[1u8, 2, 3][..], &a, &b].concat())
                    .collect();
                ks.sort();
                ks
            };
            let slices: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let h = KeyHeads::new(&slices);
            let mut all_probes = probes;
            all_probes.extend(keys.iter().cloned());
            all_probes.extend(keys.iter().map(|k| [k.as_slice(), &[0]].concat()));
            for p in &all_probes {
                let want = keys.partition_point(|k| k.as_slice() < p.as_slice());
                let got = h.partition_point(p, |i| keys[i].as_slice().cmp(p));
                prop_assert_eq!(got, want, "probe {:?}", p);
            }
        }

        /// Keys out of order (a damaged block that still parses) give some position in
        /// `0..=n`, never a panic.
        #[test]
        fn unsorted_keys_never_panic(
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 0..30),
            probe in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let slices: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let h = KeyHeads::new(&slices);
            let got = h.partition_point(&probe, |i| keys[i].as_slice().cmp(&probe));
            prop_assert!(got <= keys.len());
        }
    }
}
