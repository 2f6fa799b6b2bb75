//! The in-memory write buffer: a lock-free skip list of internal entries.
//!
//! Entries are ordered by (user key ascending, sequence descending), so the first entry at or
//! after `(key, snapshot)` is the newest version a snapshot may see. There is one writer (the
//! committer holding the writer lock) and any number of concurrent readers; readers never
//! block.

use std::cmp::{Ordering, Reverse};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use std::hash::BuildHasher;
use std::sync::{PoisonError, RwLock};

use crossbeam_skiplist::SkipMap;
use hashbrown::{DefaultHashBuilder, HashTable};

use crate::keys::{TAG_CATALOG, TAG_ENTITY, TAG_INDEX};

/// A stored value: a document, or a deletion marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// The entity (or record) has this value.
    Put(Arc<[u8]>),
    /// The entity was deleted.
    Delete,
}

/// The empty value (every index entry's), shared: reading one costs no allocation.
pub(crate) fn empty_value() -> Arc<[u8]> {
    static EMPTY: std::sync::OnceLock<Arc<[u8]>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from(&[][..])).clone()
}

/// One version of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: Arc<[u8]>,
    pub seq: u64,
    pub op: Op,
}

/// One version of one key, borrowed: from a memtable's [`Entry`] or in place from a segment
/// block. Flushes and compactions move entries as these, so that rewriting a segment copies
/// each entry once, into the new block, and allocates nothing per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryRef<'a> {
    pub key: &'a [u8],
    pub seq: u64,
    /// A put's value; `None` for a delete.
    pub value: Option<&'a [u8]>,
}

impl Entry {
    /// The entry, borrowed.
    pub(crate) fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            key: &self.key,
            seq: self.seq,
            value: match &self.op {
                Op::Put(v) => Some(&v[..]),
                Op::Delete => None,
            },
        }
    }

    /// Order of entries in memtables and segments.
    pub(crate) fn cmp_pos(a_key: &[u8], a_seq: u64, b_key: &[u8], b_seq: u64) -> Ordering {
        a_key.cmp(b_key).then(b_seq.cmp(&a_seq))
    }
}

/// Keys up to this long are stored inside the skip-list node, so a comparison during a lookup
/// costs no extra pointer chase (entity keys are 21 bytes, feed keys 9, equality-index keys 37,
/// ordered-index keys on one number 32). 30 -> 46 took index lookups (I2) up 20 %.
const INLINE_KEY: usize = 46;

/// The key as an `Arc` (handed out by scans and flushes without copying) plus, for keys up
/// to `INLINE_KEY` bytes, a copy inside the node that comparisons read.
#[derive(Debug, Clone)]
struct KeyBytes {
    arc: Arc<[u8]>,
    len: u8,
    inline: [u8; INLINE_KEY],
}

impl KeyBytes {
    fn new(key: Arc<[u8]>) -> Self {
        let mut inline = [0u8; INLINE_KEY];
        let len = if key.len() <= INLINE_KEY {
            inline[..key.len()].copy_from_slice(&key);
            key.len() as u8
        } else {
            u8::MAX
        };
        KeyBytes {
            arc: key,
            len,
            inline,
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self.inline.get(..self.len as usize) {
            Some(k) => k,
            None => &self.arc,
        }
    }

    fn to_arc(&self) -> Arc<[u8]> {
        self.arc.clone()
    }
}

#[derive(Debug, Clone)]
struct MemKey {
    key: KeyBytes,
    seq: Reverse<u64>,
}

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for MemKey {}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// A position (key, sequence) that lookups can borrow without allocating a `MemKey`: the
/// skip list compares `dyn KeyView` values, which `MemKey` borrows as. The order is
/// `MemKey`'s (key ascending, then sequence descending).
trait KeyView {
    fn parts(&self) -> (&[u8], Reverse<u64>);
}

impl KeyView for MemKey {
    fn parts(&self) -> (&[u8], Reverse<u64>) {
        (self.key.as_slice(), self.seq)
    }
}

struct Probe<'a> {
    key: &'a [u8],
    seq: Reverse<u64>,
}

impl KeyView for Probe<'_> {
    fn parts(&self) -> (&[u8], Reverse<u64>) {
        (self.key, self.seq)
    }
}

impl<'a> std::borrow::Borrow<dyn KeyView + 'a> for MemKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyView + '_ {}

impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// Whether a key gets an entry in the point index: entity and catalog keys, the ones read by
/// key. Index entries and change-feed records are only ever read by seeking, so they stay
/// out of it (they would only cost memory).
fn point_indexed(key: &[u8]) -> bool {
    matches!(key.first(), Some(&TAG_ENTITY | &TAG_CATALOG))
}

/// Shards of the point index and the prefix set (a power of two).
const POINT_SHARDS: usize = 32;

/// A hash table split into `POINT_SHARDS` locked shards, so that the writer inserting into one
/// shard does not stop readers of the others. Readers hold a shard's read lock only for one
/// probe.
struct Sharded<T> {
    hasher: DefaultHashBuilder,
    shards: Box<[RwLock<HashTable<T>>]>,
}

impl<T> Sharded<T> {
    fn new() -> Self {
        Sharded {
            hasher: DefaultHashBuilder::default(),
            shards: (0..POINT_SHARDS)
                .map(|_| RwLock::new(HashTable::new()))
                .collect(),
        }
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes)
    }

    fn read(&self, hash: u64) -> std::sync::RwLockReadGuard<'_, HashTable<T>> {
        self.shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, hash: u64) -> std::sync::RwLockWriteGuard<'_, HashTable<T>> {
        self.shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shard(&self, hash: u64) -> &RwLock<HashTable<T>> {
        // hashbrown takes the bucket from the low bits and each slot's tag from the top 7:
        // the shard takes bits from neither (shards on tag bits would leave 4 tag values per
        // shard and turn most probes into key comparisons).
        &self.shards[(hash >> 32) as usize % POINT_SHARDS]
    }
}

/// The newest version of every point-indexed key, by hash: a get of a key whose newest
/// version is visible to the reader costs a hash probe instead of a skip-list descent (about
/// 20 dependent cache misses at a few hundred thousand entries), and a get of a key this
/// memtable does not hold is answered without touching the skip list at all.
///
/// Invariants (the single writer keeps them; see [`Memtable::insert`]):
/// * every point-indexed key in the skip list has an entry here, inserted after its
///   skip-list entry, and its `seq` is the highest sequence of that key in the skip list;
/// * a sequence is published to snapshots only after its inserts returned, so a reader at
///   snapshot `s` sees every entry with `seq <= s` in both structures. An entry here with
///   `seq > s` (a newer version) sends the reader to the skip list for an older one.
struct PointIndex {
    table: Sharded<PointEntry>,
}

struct PointEntry {
    /// The key's hash, kept so that growing the table rehashes without following `key`
    /// (a cache miss per entry in a table that has gone cold) and a probe compares keys
    /// only when the whole hash matches.
    hash: u64,
    key: Arc<[u8]>,
    seq: u64,
    op: Op,
}

/// What the point index says about a key at a snapshot.
enum Point {
    /// The newest version is visible: this is the answer.
    Hit(u64, Op),
    /// The memtable holds no version of the key.
    Absent,
    /// The newest version is too new for the snapshot: ask the skip list.
    Older,
}

impl PointIndex {
    fn new() -> Self {
        PointIndex {
            table: Sharded::new(),
        }
    }

    /// Record a version; whether the key is new to the index.
    fn insert(&self, key: &Arc<[u8]>, seq: u64, op: &Op) -> bool {
        let hash = self.table.hash(key);
        let mut t = self.table.write(hash);
        match t.find_mut(hash, |e| e.hash == hash && *e.key == **key) {
            // Sequences only grow for a key (one writer, in commit order); a replay of an
            // older version must not hide a newer one.
            Some(e) if e.seq <= seq => {
                e.seq = seq;
                e.op = op.clone();
                false
            }
            Some(_) => false,
            None => {
                t.insert_unique(
                    hash,
                    PointEntry {
                        hash,
                        key: key.clone(),
                        seq,
                        op: op.clone(),
                    },
                    |e| e.hash,
                );
                true
            }
        }
    }

    fn get(&self, key: &[u8], snapshot: u64) -> Point {
        let hash = self.table.hash(key);
        match self
            .table
            .read(hash)
            .find(hash, |e| e.hash == hash && *e.key == *key)
        {
            Some(e) if e.seq <= snapshot => Point::Hit(e.seq, e.op.clone()),
            Some(_) => Point::Older,
            None => Point::Absent,
        }
    }
}

/// The index prefixes (an index entry's key without its 16-byte entity id) this memtable
/// holds, by 64-bit hash: an exact-value index lookup skips the skip-list descent of a
/// memtable that holds no entry with its value, as segment filters let it skip segments.
/// A hash collision only costs the descent. Same insertion order as the point index (after
/// the skip list), so a reader finds the prefix of every entry its snapshot can see.
struct PrefixSet {
    table: Sharded<u64>,
}

/// The prefix of an index entry key, if `key` is one.
fn index_prefix(key: &[u8]) -> Option<&[u8]> {
    if key.first() == Some(&TAG_INDEX) && key.len() >= 5 + 1 + 16 {
        Some(&key[..key.len() - 16])
    } else {
        None
    }
}

impl PrefixSet {
    fn new() -> Self {
        PrefixSet {
            table: Sharded::new(),
        }
    }

    /// Add a prefix; whether it was new.
    fn insert(&self, prefix: &[u8]) -> bool {
        let hash = self.table.hash(prefix);
        // Most inserts repeat a prefix (many entries per value): look under the read lock.
        if self.table.read(hash).find(hash, |h| *h == hash).is_some() {
            return false;
        }
        let mut t = self.table.write(hash);
        if t.find(hash, |h| *h == hash).is_some() {
            return false;
        }
        t.insert_unique(hash, hash, |h| *h);
        true
    }

    fn contains(&self, prefix: &[u8]) -> bool {
        let hash = self.table.hash(prefix);
        self.table.read(hash).find(hash, |h| *h == hash).is_some()
    }
}

impl std::fmt::Debug for PrefixSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixSet").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PointIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointIndex").finish_non_exhaustive()
    }
}

/// The write buffer.
#[derive(Debug)]
pub(crate) struct Memtable {
    map: SkipMap<MemKey, Op>,
    point: PointIndex,
    prefixes: PrefixSet,
    bytes: AtomicU64,
    max_seq: AtomicU64,
    /// The WAL file that holds this memtable's records (and possibly later ones).
    pub wal_file: u64,
}

const ENTRY_OVERHEAD: u64 = 64;
/// What a point-index entry adds (the table slot and its share of spare capacity), counted
/// once per key.
const POINT_OVERHEAD: u64 = 56;
/// What a new index prefix adds to the prefix set.
const PREFIX_OVERHEAD: u64 = 16;

impl Memtable {
    pub(crate) fn new(wal_file: u64) -> Self {
        Self {
            map: SkipMap::new(),
            point: PointIndex::new(),
            prefixes: PrefixSet::new(),
            bytes: AtomicU64::new(0),
            max_seq: AtomicU64::new(0),
            wal_file,
        }
    }

    /// Insert a version. Called only by the writer.
    pub(crate) fn insert(&self, key: Arc<[u8]>, seq: u64, op: Op) {
        let pointed = point_indexed(&key);
        let mut size = key.len() as u64
            + ENTRY_OVERHEAD
            + match &op {
                Op::Put(v) => v.len() as u64,
                Op::Delete => 0,
            };
        // The skip list first, then the point index and the prefix set: a reader that finds
        // the newest version too new for its snapshot must find the older ones in the skip
        // list, and one that finds a prefix must find its entries there.
        let side_key = (pointed || index_prefix(&key).is_some()).then(|| key.clone());
        let point_op = pointed.then(|| op.clone());
        self.map.insert(
            MemKey {
                key: KeyBytes::new(key),
                seq: Reverse(seq),
            },
            op,
        );
        if let Some(k) = side_key {
            if let Some(o) = point_op
                && self.point.insert(&k, seq, &o)
            {
                size += POINT_OVERHEAD;
            }
            if let Some(p) = index_prefix(&k)
                && self.prefixes.insert(p)
            {
                size += PREFIX_OVERHEAD;
            }
        }
        self.bytes.fetch_add(size, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(seq, AtomicOrdering::Release);
    }

    /// Whether this memtable may hold an index entry whose key starts with `prefix` (an
    /// index key without its entity id). `false` is exact: it holds none.
    pub(crate) fn may_hold_prefix(&self, prefix: &[u8]) -> bool {
        self.prefixes.contains(prefix)
    }

    /// Approximate memory used.
    pub(crate) fn approximate_bytes(&self) -> u64 {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Highest sequence inserted.
    pub(crate) fn max_seq(&self) -> u64 {
        self.max_seq.load(AtomicOrdering::Acquire)
    }

    /// The newest version of `key` visible at `snapshot`: `Some((seq, op))`, or `None` if this
    /// memtable holds no visible version.
    pub(crate) fn get(&self, key: &[u8], snapshot: u64) -> Option<(u64, Op)> {
        if point_indexed(key) {
            match self.point.get(key, snapshot) {
                Point::Hit(seq, op) => return Some((seq, op)),
                Point::Absent => return None,
                Point::Older => {}
            }
        }
        self.get_in_list(key, snapshot)
    }

    /// [`Memtable::get`] through the skip list alone.
    fn get_in_list(&self, key: &[u8], snapshot: u64) -> Option<(u64, Op)> {
        let probe = Probe {
            key,
            seq: Reverse(snapshot),
        };
        let e = self
            .map
            .lower_bound(Bound::Included(&probe as &dyn KeyView))?;
        if e.key().key.as_slice() != key {
            return None;
        }
        Some((e.key().seq.0, e.value().clone()))
    }

    /// Up to `max` entries (all versions) before position `(before, before_seq)` (exclusive),
    /// in descending position order, stopping before keys below `lower`.
    pub(crate) fn chunk_rev(
        &self,
        before: &[u8],
        before_seq: u64,
        lower: &[u8],
        max: usize,
    ) -> Vec<Entry> {
        let probe = Probe {
            key: before,
            seq: Reverse(before_seq),
        };
        let mut out = Vec::new();
        let bounds: (Bound<&dyn KeyView>, Bound<&dyn KeyView>) =
            (Bound::Unbounded, Bound::Excluded(&probe));
        for e in self.map.range::<dyn KeyView, _>(bounds).rev() {
            if out.len() >= max || e.key().key.as_slice() < lower {
                break;
            }
            out.push(Entry {
                key: e.key().key.to_arc(),
                seq: e.key().seq.0,
                op: e.value().clone(),
            });
        }
        out
    }

    /// Up to `max` entries (all versions) at or after position `(from, from_seq)`, stopping
    /// before `end` (exclusive user key) if given.
    pub(crate) fn chunk(
        &self,
        from: &[u8],
        from_seq: u64,
        end: Option<&[u8]>,
        max: usize,
    ) -> Vec<Entry> {
        let probe = Probe {
            key: from,
            seq: Reverse(from_seq),
        };
        let mut out = Vec::new();
        let bounds: (Bound<&dyn KeyView>, Bound<&dyn KeyView>) =
            (Bound::Included(&probe), Bound::Unbounded);
        for e in self.map.range::<dyn KeyView, _>(bounds) {
            if out.len() >= max {
                break;
            }
            if let Some(end) = end
                && e.key().key.as_slice() >= end
            {
                break;
            }
            out.push(Entry {
                key: e.key().key.to_arc(),
                seq: e.key().seq.0,
                op: e.value().clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_snapshots() {
        let m = Memtable::new(1);
        m.insert(Arc::from(&b"a"[..]), 1, Op::Put(Arc::from(&b"1"[..])));
        m.insert(Arc::from(&b"a"[..]), 3, Op::Delete);
        m.insert(Arc::from(&b"ab"[..]), 2, Op::Put(Arc::from(&b"2"[..])));
        assert_eq!(m.get(b"a", 0), None);
        assert_eq!(m.get(b"a", 1), Some((1, Op::Put(Arc::from(&b"1"[..])))));
        assert_eq!(m.get(b"a", 2), Some((1, Op::Put(Arc::from(&b"1"[..])))));
        assert_eq!(m.get(b"a", 5), Some((3, Op::Delete)));
        assert_eq!(m.get(b"b", 5), None);
        let all = m.chunk(b"", u64::MAX, None, 10);
        let pos: Vec<_> = all.iter().map(|e| (e.key.to_vec(), e.seq)).collect();
        assert_eq!(
            pos,
            vec![(b"a".to_vec(), 3), (b"a".to_vec(), 1), (b"ab".to_vec(), 2)]
        );
        assert_eq!(m.chunk(b"a", 2, Some(b"ab"), 10).len(), 1);
        assert_eq!(m.max_seq(), 3);
    }

    /// Readers on other threads while the writer inserts: a get at a published sequence
    /// returns exactly the newest version at or below it (through the point index or the
    /// skip list), never a torn or missing one, and a get at `u64::MAX` is never older.
    #[test]
    fn concurrent_gets_during_inserts_see_every_published_version() {
        const KEYS: usize = 64;
        const N: u64 = 20_000;
        let keys: Vec<Arc<[u8]>> = (0..KEYS)
            .map(|i| {
                let mut k = vec![TAG_ENTITY, 0, 0, 0, 1];
                k.extend_from_slice(&[i as u8; 16]);
                Arc::from(k)
            })
            .collect();
        let key_of = |seq: u64| (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % KEYS;
        let is_delete = |seq: u64| seq.is_multiple_of(7);
        // For each key, the sequences that wrote it, ascending.
        let mut writes: Vec<Vec<u64>> = vec![Vec::new(); KEYS];
        for seq in 1..=N {
            writes[key_of(seq)].push(seq);
        }
        let m = Memtable::new(1);
        let published = AtomicU64::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for seq in 1..=N {
                    let op = if is_delete(seq) {
                        Op::Delete
                    } else {
                        Op::Put(Arc::from(&seq.to_le_bytes()[..]))
                    };
                    m.insert(keys[key_of(seq)].clone(), seq, op);
                    published.store(seq, AtomicOrdering::Release);
                }
            });
            for r in 0..3u64 {
                let (m, keys, writes, published) = (&m, &keys, &writes, &published);
                scope.spawn(move || {
                    let mut i = r;
                    loop {
                        let p = published.load(AtomicOrdering::Acquire);
                        i = i
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let k = (i >> 33) as usize % KEYS;
                        let w = &writes[k];
                        let expect = w.partition_point(|&s| s <= p).checked_sub(1).map(|j| w[j]);
                        let got = m.get(&keys[k], p);
                        match (expect, &got) {
                            (None, None) => {}
                            (Some(s), Some((gs, op))) => {
                                assert_eq!(*gs, s, "key {k} at {p}");
                                match op {
                                    Op::Delete => assert!(is_delete(s)),
                                    Op::Put(v) => assert_eq!(&v[..], &s.to_le_bytes()[..]),
                                }
                            }
                            _ => panic!("key {k} at {p}: expected {expect:?}, got {got:?}"),
                        }
                        if let Some(s) = expect {
                            let newest = m.get(&keys[k], u64::MAX).map(|(gs, _)| gs);
                            assert!(newest >= Some(s), "key {k}: {newest:?} older than {s}");
                        }
                        if p == N {
                            break;
                        }
                    }
                });
            }
        });
    }

    use proptest::prelude::*;

    proptest! {
        /// The point index answers exactly what the skip list answers, for every key and
        /// every snapshot, including keys it does not index and snapshots older than the
        /// newest version.
        #[test]
        fn point_index_agrees_with_the_skip_list(
            ops in proptest::collection::vec((0u8..3, 0u8..6, any::<bool>()), 1..60),
        ) {
            let m = Memtable::new(1);
            let key = |tag: u8, k: u8| -> Arc<[u8]> { Arc::from(&[tag, k][..]) };
            for (i, (tag, k, put)) in ops.iter().enumerate() {
                let op = if *put { Op::Put(Arc::from(&[i as u8][..])) } else { Op::Delete };
                m.insert(key(*tag, *k), i as u64 + 1, op);
            }
            for tag in 0u8..3 {
                for k in 0u8..6 {
                    for snap in 0..=ops.len() as u64 + 1 {
                        let kk = key(tag, k);
                        prop_assert_eq!(m.get(&kk, snap), m.get_in_list(&kk, snap));
                    }
                }
            }
        }
    }

    #[test]
    fn prefix_set_holds_exactly_the_index_prefixes() {
        let m = Memtable::new(1);
        let entry = |body: &[u8], id: u8| -> Arc<[u8]> {
            let mut k = vec![TAG_INDEX, 0, 0, 0, 9];
            k.extend_from_slice(body);
            k.extend_from_slice(&[id; 16]);
            Arc::from(k)
        };
        let prefix = |body: &[u8]| [&[TAG_INDEX, 0, 0, 0, 9][..], body].concat();
        m.insert(entry(b"ada", 1), 1, Op::Put(Arc::from(&b""[..])));
        m.insert(entry(b"ada", 2), 2, Op::Put(Arc::from(&b""[..])));
        m.insert(entry(b"grace", 3), 3, Op::Delete);
        assert!(m.may_hold_prefix(&prefix(b"ada")));
        assert!(m.may_hold_prefix(&prefix(b"grace")));
        assert!(!m.may_hold_prefix(&prefix(b"alan")));
        assert!(!m.may_hold_prefix(&prefix(b"ad")));
        // Entity keys are not index entries.
        m.insert(Arc::from(&[TAG_ENTITY; 21][..]), 4, Op::Delete);
        assert!(!m.may_hold_prefix(&[TAG_ENTITY; 5]));
    }

    #[test]
    fn a_replayed_older_version_does_not_hide_the_newer_one() {
        let m = Memtable::new(1);
        let k: Arc<[u8]> = Arc::from(&[TAG_ENTITY, 7][..]);
        m.insert(k.clone(), 5, Op::Delete);
        m.insert(k.clone(), 3, Op::Put(Arc::from(&b"old"[..])));
        assert_eq!(m.get(&k, 10), Some((5, Op::Delete)));
        assert_eq!(m.get(&k, 4), Some((3, Op::Put(Arc::from(&b"old"[..])))));
    }
}
