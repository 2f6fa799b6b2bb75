//! A write transaction's pending writes: an ordered map from key to new value (`None`: a
//! delete), read through by the transaction's own gets, scans and index lookups.
//!
//! A bulk load puts hundreds of thousands of random keys here, so the map's key is a
//! [`HeadKey`]: the key with its first 24 bytes held inline as integers. An insert then
//! compares integers inside the tree's nodes and follows a key's pointer only when two heads
//! are equal, instead of calling `memcmp` through a pointer at every level (that cost half
//! of W3's time).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

/// A key with its first 24 bytes (zero-padded) held inline as three big-endian integers.
///
/// Invariant: the order of `HeadKey`s is exactly the byte order of their keys, so that
/// `Borrow<[u8]>` is sound (lookups by `&[u8]` and inserts by `HeadKey` agree). Unequal heads
/// order keys by their first difference within 24 bytes: where both keys have bytes there,
/// that is the byte order; where one key has ended, the shorter key is a prefix of the other
/// up to that point (its padding equals the other's zero bytes) and the other has a non-zero
/// byte there, so the shorter key is smaller in both orders. Equal heads fall back to the
/// full keys.
///
/// 24 bytes hold a whole entity key (21 bytes): the commit reads each written entity's
/// collection and id from the head ([`HeadKey::entity`]) instead of following the key's
/// pointer, which after the commit's sort is a cache miss per write (6 % of a bulk load).
#[derive(Debug, Clone)]
pub(crate) struct HeadKey {
    head: [u64; 3],
    key: Arc<[u8]>,
}

impl HeadKey {
    /// The whole key.
    pub(crate) fn into_key(self) -> Arc<[u8]> {
        self.key
    }

    pub(crate) fn new(key: Arc<[u8]>) -> Self {
        let mut b = [0u8; 24];
        let n = key.len().min(24);
        b[..n].copy_from_slice(&key[..n]);
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        };
        HeadKey {
            head: [word(0), word(1), word(2)],
            key,
        }
    }

    /// The collection and id of an entity key, read from the head (the key's bytes are not
    /// touched); `None` for other keys.
    pub(crate) fn entity(&self) -> Option<(u32, crate::EntityId)> {
        if self.key.len() != crate::keys::ENTITY_KEY_LEN {
            return None;
        }
        let mut b = [0u8; 24];
        for (chunk, word) in b.chunks_exact_mut(8).zip(self.head) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        crate::keys::parse_entity_key(&b[..crate::keys::ENTITY_KEY_LEN])
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
///
/// Writes land in `tail`, an unsorted log, and reach the ordered map only when something
/// reads: a bulk load of 200,000 random keys then costs one sort at commit instead of
/// 200,000 tree descents, each a few cache misses deep (they were a third of W3's put and
/// commit time). Reads take `&self`, so they cannot move the tail into the map; the first
/// read after a write sorts the tail's indices once (`sorted`) and reads the map and the
/// tail together, newest first; the next write (which has `&mut self`) then moves the tail
/// into the map and starts a new one. Each write is so sorted at most once and inserted
/// into the map at most once, however reads and writes interleave.
///
/// Invariants: every key has at most one live entry across `map` and `tail`, where the
/// tail's last write of a key wins over the map's and over its own earlier ones; `sorted`,
/// when set, holds the index of the last write of each distinct key of `tail`, in key order.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    map: BTreeMap<HeadKey, Option<Arc<[u8]>>>,
    tail: Vec<(HeadKey, Option<Arc<[u8]>>)>,
    /// Bytes of the tail's keys and values.
    tail_bytes: usize,
    sorted: OnceLock<Vec<u32>>,
}

/// Tails up to this long are searched by `get` without sorting them.
const LINEAR_TAIL: usize = 16;

/// A tail holding this many bytes of keys and values is moved into the map before the next
/// write (a bulk load of 1 GiB settles 16 times, each a merge that is linear in the map).
const SETTLE_BYTES: usize = 64 << 20;

/// Two sorted sequences of owned pending writes without duplicates, merged; on equal keys
/// the second's (newer) value wins.
struct MergeOwned<A: Iterator, B: Iterator> {
    old: std::iter::Peekable<A>,
    new: std::iter::Peekable<B>,
}

type Owned = (HeadKey, Option<Arc<[u8]>>);

impl<A: Iterator<Item = Owned>, B: Iterator<Item = Owned>> Iterator for MergeOwned<A, B> {
    type Item = Owned;

    fn next(&mut self) -> Option<Owned> {
        let order = match (self.old.peek(), self.new.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(o), Some(n)) => o.0.cmp(&n.0),
        };
        match order {
            Ordering::Less => self.old.next(),
            Ordering::Greater => self.new.next(),
            Ordering::Equal => {
                self.old.next();
                self.new.next()
            }
        }
    }
}

/// One pending write: the key and its new value (`None`: delete).
pub(crate) type PendingRef<'a> = (&'a Arc<[u8]>, &'a Option<Arc<[u8]>>);

impl Overlay {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Moves the tail into the map (writes that follow a read, a tail past `SETTLE_BYTES`,
    /// and [`Overlay::into_sorted`] when the map already holds writes call this).
    pub(crate) fn settle(&mut self) {
        let unique = self.take_tail();
        if unique.is_empty() {
            return;
        }
        if self.map.is_empty() {
            // Sorted and without duplicates: `from_iter` only checks the order, then builds
            // the tree bottom-up.
            self.map = unique.into_iter().collect();
        } else if unique.len() < self.map.len() / 16 {
            // A few writes into a large map: one insert each.
            self.map.extend(unique);
        } else {
            // Many: merge the two sorted sequences (the tail winning on equal keys) and
            // build the tree once, instead of a descent per write.
            let old = std::mem::take(&mut self.map).into_iter().peekable();
            let new = unique.into_iter().peekable();
            self.map = MergeOwned { old, new }.collect();
        }
    }

    /// Every pending write in key order, each key once, for the commit (which reads them
    /// twice: the feed record, then the batch). Writes that no read ever settled (a bulk
    /// load) are one sort of the tail, without building the map first.
    pub(crate) fn into_sorted(mut self) -> Vec<Owned> {
        let tail = self.take_tail();
        if self.map.is_empty() {
            return tail;
        }
        // The map and the tail merged (the tail winning on equal keys), without building
        // another tree first.
        MergeOwned {
            old: self.map.into_iter().peekable(),
            new: tail.into_iter().peekable(),
        }
        .collect()
    }

    /// Empties the tail: its keys in order, each with its last write.
    fn take_tail(&mut self) -> Vec<Owned> {
        let sorted = std::mem::take(&mut self.sorted).into_inner();
        self.tail_bytes = 0;
        if self.tail.is_empty() {
            return Vec::new();
        }
        let mut tail = std::mem::take(&mut self.tail);
        match sorted {
            // A read sorted the tail already (each key's last write, in key order).
            Some(idx) => {
                let mut slots: Vec<Option<Owned>> = tail.into_iter().map(Some).collect();
                idx.iter()
                    .filter_map(|&i| slots[i as usize].take())
                    .collect()
            }
            None => {
                // Stable: equal keys stay in write order, so the last of each run is the
                // newest write, the one kept (explicitly: `BTreeMap::from_iter` does not
                // promise which).
                tail.sort_by(|a, b| a.0.cmp(&b.0));
                // In place: a later write of the same key hands its value to the entry kept.
                tail.dedup_by(|later, kept| {
                    let same = later.0 == kept.0;
                    if same {
                        std::mem::swap(&mut later.1, &mut kept.1);
                    }
                    same
                });
                tail
            }
        }
    }

    /// The tail's distinct keys in key order, as indices of their last writes.
    fn sorted(&self) -> &[u32] {
        self.sorted.get_or_init(|| {
            let mut idx: Vec<u32> = (0..self.tail.len() as u32).collect();
            // Stable: equal keys stay in write order, so the last of a run is the newest.
            idx.sort_by(|&a, &b| self.tail[a as usize].0.cmp(&self.tail[b as usize].0));
            let mut out: Vec<u32> = Vec::with_capacity(idx.len());
            for i in idx {
                match out.last_mut() {
                    Some(last) if self.tail[*last as usize].0 == self.tail[i as usize].0 => {
                        *last = i;
                    }
                    _ => out.push(i),
                }
            }
            out
        })
    }

    /// An upper bound of the number of pending writes (the tail may repeat keys).
    pub(crate) fn len(&self) -> usize {
        self.map.len() + self.tail.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty() && self.tail.is_empty()
    }

    pub(crate) fn insert(&mut self, key: Arc<[u8]>, value: Option<Arc<[u8]>>) {
        // Settled if something read since the last write (keep the sorted part in the map),
        // and when the tail holds `SETTLE_BYTES`: a transaction that overwrites a few keys
        // many times would otherwise keep every overwritten value until it commits.
        if self.sorted.get().is_some()
            || self.tail_bytes >= SETTLE_BYTES
            || self.tail.len() >= u32::MAX as usize
        {
            self.settle();
        }
        self.tail_bytes += key.len() + value.as_ref().map_or(0, |v| v.len());
        self.tail.push((HeadKey::new(key), value));
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Option<Arc<[u8]>>> {
        if self.tail.len() <= LINEAR_TAIL && self.sorted.get().is_none() {
            // A short tail is searched newest first, without sorting it: a transaction
            // that reads before each write (a delete reads the entity first) then moves its
            // tail into the map every `LINEAR_TAIL` writes, not at each one.
            if let Some((_, v)) = self.tail.iter().rev().find(|(k, _)| k.key[..] == *key) {
                return Some(v);
            }
        } else if !self.tail.is_empty() {
            let sorted = self.sorted();
            if let Ok(at) = sorted.binary_search_by(|&i| self.tail[i as usize].0.key[..].cmp(key)) {
                return Some(&self.tail[sorted[at] as usize].1);
            }
        }
        self.map.get(key)
    }

    pub(crate) fn remove(&mut self, key: &[u8]) {
        self.settle();
        self.map.remove(key);
    }

    /// Pending writes with keys in `[from, end)`, in key order (empty if `end <= from`).
    pub(crate) fn range<'a>(
        &'a self,
        from: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = PendingRef<'a>> + 'a {
        if from >= end {
            return self.merged(None, &[]);
        }
        let map = self
            .map
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(end)));
        let tail: &[u32] = if self.tail.is_empty() {
            &[]
        } else {
            let sorted = self.sorted();
            let lo = sorted.partition_point(|&i| &self.tail[i as usize].0.key[..] < from);
            let hi = sorted.partition_point(|&i| &self.tail[i as usize].0.key[..] < end);
            &sorted[lo..hi]
        };
        self.merged(Some(map), tail)
    }

    /// Every pending write, in key order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = PendingRef<'_>> {
        let tail: &[u32] = if self.tail.is_empty() {
            &[]
        } else {
            self.sorted()
        };
        self.merged(Some(self.map.range::<HeadKey, _>(..)), tail)
    }

    /// The map's part and the tail's part (indices into `tail`, in key order), merged.
    fn merged<'a>(
        &'a self,
        map: Option<std::collections::btree_map::Range<'a, HeadKey, Option<Arc<[u8]>>>>,
        tail: &'a [u32],
    ) -> Merged<impl Iterator<Item = PendingRef<'a>>, impl Iterator<Item = PendingRef<'a>>> {
        Merged {
            map: map
                .into_iter()
                .flatten()
                .map(|(k, v)| (&k.key, v))
                .peekable(),
            tail: tail
                .iter()
                .map(move |&i| {
                    let (k, v) = &self.tail[i as usize];
                    (&k.key, v)
                })
                .peekable(),
        }
    }

    /// Forget the pending writes of keys in `[from, end)`.
    pub(crate) fn discard_range(&mut self, from: &[u8], end: &[u8]) {
        self.settle();
        let doomed: Vec<Arc<[u8]>> = self.range(from, end).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.map.remove(&k[..]);
        }
    }
}

/// Two sorted streams of pending writes, merged; on equal keys the tail's (newer) wins.
struct Merged<A: Iterator, B: Iterator> {
    map: std::iter::Peekable<A>,
    tail: std::iter::Peekable<B>,
}

impl<'a, A, B> Iterator for Merged<A, B>
where
    A: Iterator<Item = PendingRef<'a>>,
    B: Iterator<Item = PendingRef<'a>>,
{
    type Item = PendingRef<'a>;

    fn next(&mut self) -> Option<PendingRef<'a>> {
        match (self.map.peek(), self.tail.peek()) {
            (None, None) => None,
            (Some(_), None) => self.map.next(),
            (None, Some(_)) => self.tail.next(),
            (Some((m, _)), Some((t, _))) => match m[..].cmp(&t[..]) {
                Ordering::Less => self.map.next(),
                Ordering::Greater => self.tail.next(),
                Ordering::Equal => {
                    self.map.next();
                    self.tail.next()
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Overwriting a few keys many times keeps a bounded tail: it is settled into the map
    /// once it holds `SETTLE_BYTES`, so the overwritten values are freed before the commit.
    #[test]
    fn overwrites_do_not_pile_up_in_the_tail() {
        let mut o = Overlay::new();
        let value = Arc::<[u8]>::from(vec![7u8; 1 << 20]);
        for i in 0..200u32 {
            let key: Arc<[u8]> = Arc::from(&[(i % 2) as u8][..]);
            o.insert(key, Some(value.clone()));
        }
        assert!(o.tail.len() <= (SETTLE_BYTES >> 20) + 1, "{}", o.tail.len());
        // The values themselves are shared here: count the references the overlay holds.
        assert!(Arc::strong_count(&value) <= (SETTLE_BYTES >> 20) + 3);
        o.settle();
        assert_eq!(o.len(), 2);
    }

    proptest! {
        /// The order the map keeps is byte order, including keys shorter than the head,
        /// keys that differ only past it, and zero bytes (the padding's value).
        #[test]
        fn head_order_is_byte_order(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..32),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..32),
        ) {
            let (ka, kb) = (HeadKey::new(Arc::from(&a[..])), HeadKey::new(Arc::from(&b[..])));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
        }

        /// The collection and id read from the head are those of the key, and only entity
        /// keys have them.
        #[test]
        fn head_entity_is_the_keys(
            coll in any::<u32>(),
            id in any::<[u8; 16]>(),
            other in proptest::collection::vec(any::<u8>(), 0..32),
            tag in any::<u8>(),
            cut in 0usize..2,
        ) {
            let id = crate::EntityId::from_bytes(id);
            let key = crate::keys::entity_key_array(coll, &id);
            prop_assert_eq!(HeadKey::new(Arc::from(&key[..])).entity(), Some((coll, id)));
            prop_assert_eq!(
                HeadKey::new(Arc::from(&other[..])).entity(),
                crate::keys::parse_entity_key(&other)
            );
            // Near misses: another tag, a byte short or a byte over.
            let mut near = key.to_vec();
            near[0] = tag;
            match cut {
                0 => { near.pop(); }
                _ => near.push(0),
            }
            for k in [&near[..], &[&[tag][..], &key[1..]].concat()[..]] {
                prop_assert_eq!(
                    HeadKey::new(Arc::from(k)).entity(),
                    crate::keys::parse_entity_key(k)
                );
            }
        }

        /// A bulk load: writes that nothing reads, with repeated keys, reach the commit as
        /// one sorted run with the last write of each key (the tail sorted at commit, no map).
        #[test]
        fn into_sorted_takes_the_last_write_of_each_key(
            writes in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..4), any::<u8>()), 0..200),
        ) {
            let mut o = Overlay::new();
            let mut model = BTreeMap::new();
            for (k, v) in &writes {
                o.insert(Arc::from(&k[..]), Some(Arc::from(&[*v][..])));
                model.insert(k.clone(), Some(*v));
            }
            prop_assert!(o.map.is_empty() && o.sorted.get().is_none(), "no read, no settle");
            let committed: Vec<(Vec<u8>, Option<u8>)> = o
                .into_sorted()
                .into_iter()
                .map(|(k, v)| (k.into_key().to_vec(), v.as_ref().map(|b| b[0])))
                .collect();
            prop_assert_eq!(committed, model.into_iter().collect::<Vec<_>>());
        }

        /// Inserts by `HeadKey` and lookups and ranges by `&[u8]` agree with a plain map,
        /// whatever the order of writes and reads: reads between writes (the tail read
        /// through its sorted indices, then moved into the map by the next write), repeated
        /// keys within the tail (the last write wins), removes, range discards, the commit's
        /// `into_sorted` (its other path, a tail no read touched, is
        /// `into_sorted_takes_the_last_write_of_each_key`).
        #[test]
        fn agrees_with_a_byte_keyed_map(
            ops in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..6), 0u8..10, any::<bool>()), 0..300),
            from in proptest::collection::vec(0u8..3, 0..20),
            end in proptest::collection::vec(0u8..3, 0..20),
        ) {
            let mut o = Overlay::new();
            let mut model: BTreeMap<Vec<u8>, Option<u8>> = BTreeMap::new();
            let value = |v: &Option<Arc<[u8]>>| v.as_ref().map(|b| b[0]);
            let check = |o: &Overlay, model: &BTreeMap<Vec<u8>, Option<u8>>| {
                for (k, v) in model {
                    prop_assert_eq!(o.get(k).map(value), Some(*v));
                }
                let got: Vec<(Vec<u8>, Option<u8>)> =
                    o.range(&from, &end).map(|(k, v)| (k.to_vec(), value(v))).collect();
                let want: Vec<(Vec<u8>, Option<u8>)> = if from < end {
                    model.range(from.clone()..end.clone()).map(|(k, v)| (k.clone(), *v)).collect()
                } else {
                    vec![]
                };
                prop_assert_eq!(got, want);
                let all: Vec<(Vec<u8>, Option<u8>)> =
                    o.iter().map(|(k, v)| (k.to_vec(), value(v))).collect();
                let want: Vec<(Vec<u8>, Option<u8>)> =
                    model.iter().map(|(k, v)| (k.clone(), *v)).collect();
                prop_assert_eq!(all, want);
                Ok(())
            };
            let keys: Vec<Vec<u8>> = ops.iter().map(|(k, _, _)| k.clone()).collect();
            let check = |o: &Overlay, model: &BTreeMap<Vec<u8>, Option<u8>>| {
                for k in keys.iter().filter(|k| !model.contains_key(*k)) {
                    prop_assert!(o.get(k).is_none(), "{:?} is not pending", k);
                }
                check(o, model)
            };
            for (k, what, read) in &ops {
                match what {
                    0 => {
                        o.remove(k);
                        model.remove(k);
                    }
                    1 => {
                        o.insert(Arc::from(&k[..]), None);
                        model.insert(k.clone(), None);
                    }
                    2 => {
                        let end: Vec<u8> = k.iter().copied().chain([1]).collect();
                        o.discard_range(k, &end);
                        let doomed: Vec<Vec<u8>> =
                            model.range(k.clone()..end).map(|(k, _)| k.clone()).collect();
                        for d in doomed {
                            model.remove(&d);
                        }
                    }
                    v => {
                        o.insert(Arc::from(&k[..]), Some(Arc::from(&[*v][..])));
                        model.insert(k.clone(), Some(*v));
                    }
                }
                prop_assert!(o.len() >= model.len());
                if *read {
                    check(&o, &model)?;
                }
            }
            check(&o, &model)?;
            // The commit's view, from a settled map or (when the map is still empty) from the
            // tail through the index the reads above sorted.
            if model.len().is_multiple_of(2) {
                o.settle();
                check(&o, &model)?;
            }
            let committed: Vec<(Vec<u8>, Option<u8>)> = o
                .into_sorted()
                .into_iter()
                .map(|(k, v)| (k.into_key().to_vec(), value(&v)))
                .collect();
            prop_assert_eq!(committed, model.into_iter().collect::<Vec<_>>());
        }
    }
}
