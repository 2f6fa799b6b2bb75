//! A per-segment Bloom filter over user keys, so point reads skip segments that cannot hold
//! the key.
//!
//! Layout: `k u8 | bits...` (bit count = 8 x (len - 1)). Probe i of key K tests bit
//! `(h1 + i * h2) mod m` where `h = xxh3_64(K)` (`points::key_hash`), `h1 = low 32 bits`, `h2 = high 32 bits | 1`.

use crate::points::key_hash;

const BITS_PER_KEY: usize = 10;
const K: u8 = 7;

/// Builds a filter from key hashes.
#[derive(Debug, Default)]
pub(crate) struct BloomBuilder {
    hashes: Vec<u64>,
}

impl BloomBuilder {
    pub(crate) fn add(&mut self, key: &[u8]) {
        let h = key_hash(key);
        if self.hashes.last() != Some(&h) {
            self.hashes.push(h);
        }
    }

    pub(crate) fn finish(&self) -> Vec<u8> {
        let nbits = (self.hashes.len() * BITS_PER_KEY).max(64);
        let nbytes = nbits.div_ceil(8);
        let m = (nbytes * 8) as u64;
        let mut out = vec![0u8; 1 + nbytes];
        out[0] = K;
        for &h in &self.hashes {
            let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
            for i in 0..K as u64 {
                let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
                out[1 + (bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        out
    }
}

/// Whether `key` may be in the set `filter` was built from (false: certainly not).
pub(crate) fn may_contain(filter: &[u8], key: &[u8]) -> bool {
    may_contain_hash(filter, key_hash(key))
}

/// [`may_contain`] for a key whose hash `h = key_hash(key)` is already known (computed
/// once per point read for every segment).
pub(crate) fn may_contain_hash(filter: &[u8], h: u64) -> bool {
    if filter.len() < 2 {
        return true;
    }
    let k = filter[0] as u64;
    let m = ((filter.len() - 1) * 8) as u64;
    let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
    (0..k).all(|i| {
        let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
        filter[1 + (bit / 8) as usize] & (1 << (bit % 8)) != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = BloomBuilder::default();
        for i in 0u32..10_000 {
            b.add(&i.to_be_bytes());
        }
        let f = b.finish();
        assert!((0u32..10_000).all(|i| may_contain(&f, &i.to_be_bytes())));
        let fp = (10_000u32..110_000)
            .filter(|i| may_contain(&f, &i.to_be_bytes()))
            .count();
        assert!(fp < 3_000, "false positive rate too high: {fp} / 100000");
    }
}
