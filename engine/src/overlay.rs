//! A write transaction's pending writes: an ordered map from key to new value (`None`: a
//! delete), read through by the transaction's own gets, scans and index lookups.
//!
//! A bulk load puts hundreds of thousands of random keys here, so the map's key is a
//! [`HeadKey`]: the key with its first 16 bytes held inline as an integer. An insert then
//! compares integers inside the tree's nodes and follows a key's pointer only when two heads
//! are equal, instead of calling `memcmp` through a pointer at every level (that cost half
//! of W3's time).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// A key with its first 16 bytes (zero-padded) as a big-endian integer.
///
/// Invariant: the order of `HeadKey`s is exactly the byte order of their keys, so that
/// `Borrow<[u8]>` is sound (lookups by `&[u8]` and inserts by `HeadKey` agree). Unequal heads
/// order keys by their first difference within 16 bytes: where both keys have bytes there,
/// that is the byte order; where one key has ended, the shorter key is a prefix of the other
/// up to that point (its padding equals the other's zero bytes) and the other has a non-zero
/// byte there, so the shorter key is smaller in both orders. Equal heads fall back to the
/// full keys.
#[derive(Debug, Clone)]
pub(crate) struct HeadKey {
    head: u128,
    key: Arc<[u8]>,
}

impl HeadKey {
    pub(crate) fn new(key: Arc<[u8]>) -> Self {
        let mut b = [0u8; 16];
        let n = key.len().min(16);
        b[..n].copy_from_slice(&key[..n]);
        HeadKey {
            head: u128::from_be_bytes(b),
            key,
        }
    }
}

impl PartialEq for HeadKey {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.key == other.key
    }
}

impl Eq for HeadKey {}

impl PartialOrd for HeadKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeadKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.key[..].cmp(&other.key[..]))
    }
}

impl Borrow<[u8]> for HeadKey {
    fn borrow(&self) -> &[u8] {
        &self.key
    }
}

/// Pending writes of a transaction: key to new value (`None`: delete), in key order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overlay {
    map: BTreeMap<HeadKey, Option<Arc<[u8]>>>,
}

/// One pending write: the key and its new value (`None`: delete).
pub(crate) type PendingRef<'a> = (&'a Arc<[u8]>, &'a Option<Arc<[u8]>>);

impl Overlay {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn insert(&mut self, key: Arc<[u8]>, value: Option<Arc<[u8]>>) {
        self.map.insert(HeadKey::new(key), value);
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Option<Arc<[u8]>>> {
        self.map.get(key)
    }

    pub(crate) fn remove(&mut self, key: &[u8]) {
        self.map.remove(key);
    }

    /// Pending writes with keys in `[from, end)`, in key order (empty if `end <= from`).
    pub(crate) fn range<'a>(
        &'a self,
        from: &[u8],
        end: &[u8],
    ) -> impl DoubleEndedIterator<Item = PendingRef<'a>> + 'a {
        let r = if from < end {
            Some(
                self.map
                    .range::<[u8], _>((Bound::Included(from), Bound::Excluded(end))),
            )
        } else {
            None
        };
        r.into_iter().flatten().map(|(k, v)| (&k.key, v))
    }

    /// Every pending write, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = PendingRef<'_>> {
        self.map.iter().map(|(k, v)| (&k.key, v))
    }

    /// Forget the pending writes of keys in `[from, end)`.
    pub(crate) fn discard_range(&mut self, from: &[u8], end: &[u8]) {
        let doomed: Vec<Arc<[u8]>> = self.range(from, end).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.map.remove(&k[..]);
        }
    }
}

impl IntoIterator for Overlay {
    type Item = (Arc<[u8]>, Option<Arc<[u8]>>);
    type IntoIter = std::iter::Map<
        std::collections::btree_map::IntoIter<HeadKey, Option<Arc<[u8]>>>,
        fn((HeadKey, Option<Arc<[u8]>>)) -> (Arc<[u8]>, Option<Arc<[u8]>>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.map.into_iter().map(|(k, v)| (k.key, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The order the map keeps is byte order, including keys shorter than the head,
        /// keys that differ only past it, and zero bytes (the padding's value).
        #[test]
        fn head_order_is_byte_order(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..24),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..24),
        ) {
            let (ka, kb) = (HeadKey::new(Arc::from(&a[..])), HeadKey::new(Arc::from(&b[..])));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
        }

        /// Inserts by `HeadKey` and lookups and ranges by `&[u8]` agree with a plain map.
        #[test]
        fn agrees_with_a_byte_keyed_map(
            ops in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..20), any::<bool>()), 0..64),
            from in proptest::collection::vec(0u8..3, 0..20),
            end in proptest::collection::vec(0u8..3, 0..20),
        ) {
            let mut o = Overlay::new();
            let mut model: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
            for (k, put) in &ops {
                if *put {
                    o.insert(Arc::from(&k[..]), None);
                    model.insert(k.clone(), true);
                } else {
                    o.remove(k);
                    model.remove(k);
                }
            }
            prop_assert_eq!(o.len(), model.len());
            for k in model.keys() {
                prop_assert!(o.get(k).is_some());
            }
            let got: Vec<Vec<u8>> = o.range(&from, &end).map(|(k, _)| k.to_vec()).collect();
            let want: Vec<Vec<u8>> = if from < end {
                model.range(from.clone()..end.clone()).map(|(k, _)| k.clone()).collect()
            } else {
                vec![]
            };
            prop_assert_eq!(got, want);
            let all: Vec<Vec<u8>> = o.iter().map(|(k, _)| k.to_vec()).collect();
            prop_assert_eq!(all, model.keys().cloned().collect::<Vec<_>>());
        }
    }
}
