//! Compaction: a pure decision function, and the retention rule applied while merging.
//!
//! Segments form one list, newest first; any may overlap. A compaction merges a contiguous
//! run of them into one segment that takes the run's place, so recency order is preserved.

use crate::catalog::Catalog;
use crate::feed;
use crate::ids::EntityId;
use crate::keys;
use crate::memtable::EntryRef;
use crate::segment::SegmentMeta;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing to do.
    Nothing,
    /// Merge `segments[start..end]` (newest-first indexes).
    Merge { start: usize, end: usize },
}

/// When there are more than `trigger` segments, merge the contiguous run of
/// `len - trigger / 2 + 1` segments with the smallest total size (cheap merges of young,
/// small segments first; the large old ones are rewritten rarely).
pub(crate) fn choose(segments: &[SegmentMeta], trigger: usize) -> Decision {
    let n = segments.len();
    if n <= trigger.max(2) {
        return Decision::Nothing;
    }
    let w = (n - trigger / 2 + 1).clamp(2, n);
    let mut best = (u64::MAX, 0);
    for start in 0..=n - w {
        let total: u64 = segments[start..start + w].iter().map(|s| s.size).sum();
        if total < best.0 {
            best = (total, start);
        }
    }
    Decision::Merge {
        start: best.1,
        end: best.1 + w,
    }
}

/// Merge everything (on demand): worth it when there is more than one segment, or one that
/// may hold garbage.
pub(crate) fn choose_all(segments: &[SegmentMeta]) -> Decision {
    if segments.is_empty() {
        Decision::Nothing
    } else {
        Decision::Merge {
            start: 0,
            end: segments.len(),
        }
    }
}

/// Which versions a compaction keeps.
///
/// For each key, every version newer than `horizon` is kept (a live snapshot or the change
/// feed may read it), plus the newest version at or below the horizon; older ones are
/// dropped. That newest version is dropped too when it is a delete and the merge includes the
/// oldest segment (nothing older can resurface). Change-feed records older than the feed's
/// retention, and entities of collections dropped at or before the horizon, are dropped.
///
/// **Superseded puts leave their feed records.** A put version dropped because a newer one at
/// or below the horizon replaces it (the "older ones" above) is remembered, and when the merge
/// reaches the feed record of its transaction (`03` keys sort after every entity key), that
/// change is left out of the record, which is rewritten ([`Keep::Rewritten`]). The record
/// itself stays, so the feed still holds every committed transaction once; what goes is a
/// change that would read as [`ChangeOp::Superseded`](crate::ChangeOp::Superseded) (no reader
/// can get its value any more), whose entity's newer state a later record (retained too: it
/// is younger) carries. Deletes always stay, as before. Every version of a transaction lies in the
/// same segment as its record (a memtable flush and an ingest write both; merges keep runs
/// together), so one compaction sees both. At most
/// [`SUPERSEDED_TRACKED`] versions are remembered per compaction; beyond that, records keep
/// their changes, which read as [`ChangeOp::Superseded`](crate::ChangeOp::Superseded) as before.
#[derive(Debug)]
pub(crate) struct Retain {
    horizon: u64,
    bottom: bool,
    feed_oldest: u64,
    dropped: Vec<(u32, u64)>,
    dropped_indexes: Vec<(u32, u64)>,
    /// The key of the entries being read, in a buffer reused from key to key.
    cur_key: Vec<u8>,
    has_key: bool,
    /// The sequence of the current key's newest version at or below the horizon, once seen
    /// (rule 4 decided it; older ones are dropped).
    at_horizon: Option<u64>,
    /// Names the feed records' collections as of their sequence; `None`: records are never
    /// rewritten.
    catalog: Option<Catalog>,
    /// `(seq, collection, id)` of the superseded versions dropped so far whose records are
    /// retained; sorted once the merge reaches the feed.
    superseded: Vec<(u64, u32, EntityId)>,
    sorted: bool,
    /// How many superseded versions to remember at most: [`SUPERSEDED_TRACKED`].
    tracked_cap: usize,
}

/// The most superseded versions one compaction remembers (32 bytes each: 16 MiB).
pub(crate) const SUPERSEDED_TRACKED: usize = 1 << 19;

/// What [`Retain::keep`] decided for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Leave it out of the output.
    Drop,
    /// Write it as it is.
    Entry,
    /// Write it with the value left in the caller's buffer (a feed record without its
    /// superseded changes).
    Rewritten,
}

impl Retain {
    pub(crate) fn new(
        horizon: u64,
        bottom: bool,
        feed_oldest: u64,
        dropped: Vec<(u32, u64)>,
        dropped_indexes: Vec<(u32, u64)>,
    ) -> Self {
        Retain {
            horizon,
            bottom,
            feed_oldest,
            dropped,
            dropped_indexes,
            cur_key: Vec::new(),
            has_key: false,
            at_horizon: None,
            catalog: None,
            superseded: Vec::new(),
            sorted: false,
            tracked_cap: SUPERSEDED_TRACKED,
        }
    }

    /// Remember at most `n` superseded versions instead of [`SUPERSEDED_TRACKED`] (tests
    /// reach the cap with a few entries).
    #[cfg(test)]
    fn track_at_most(mut self, n: usize) -> Self {
        self.tracked_cap = n;
        self
    }

    /// Leave superseded changes out of the feed records (see the type's notes); `catalog`
    /// resolves the records' collection names.
    pub(crate) fn strip_feed(mut self, catalog: Catalog) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Entries must be given in order. On [`Keep::Rewritten`] the value to write is in
    /// `rewritten`.
    pub(crate) fn keep(&mut self, e: EntryRef<'_>, rewritten: &mut Vec<u8>) -> Keep {
        if !self.keep_version(e) {
            return Keep::Drop;
        }
        if self.catalog.is_some()
            && !self.superseded.is_empty()
            && let Some(seq) = keys::parse_feed_key(e.key)
            && let Some(record) = e.value
            && self.strip(seq, record, rewritten)
        {
            return Keep::Rewritten;
        }
        Keep::Entry
    }

    fn keep_version(&mut self, e: EntryRef<'_>) -> bool {
        if !self.has_key || self.cur_key[..] != *e.key {
            self.cur_key.clear();
            self.cur_key.extend_from_slice(e.key);
            self.has_key = true;
            self.at_horizon = None;
        }
        if let Some(seq) = keys::parse_feed_key(e.key)
            && seq < self.feed_oldest
        {
            return false;
        }
        if let Some((coll, _)) = keys::parse_entity_key(e.key)
            && self
                .dropped
                .iter()
                .any(|&(c, at)| c == coll && at <= self.horizon)
        {
            return false;
        }
        if let Some(index) = keys::parse_index_id(e.key)
            && self
                .dropped_indexes
                .iter()
                .any(|&(i, at)| i == index && at <= self.horizon)
        {
            return false;
        }
        if e.seq > self.horizon {
            return true;
        }
        if let Some(newer) = self.at_horizon {
            // A put superseded by the newer version at or below the horizon, just kept (or,
            // on the bottom, dropped as a delete: still newer, and in the feed). Strictly
            // older: a duplicate of the kept entry (which merging never yields) must not
            // strip a live change.
            if self.catalog.is_some()
                && e.value.is_some()
                && e.seq < newer
                && e.seq >= self.feed_oldest
                && self.superseded.len() < self.tracked_cap
                && let Some((coll, id)) = keys::parse_entity_key(e.key)
            {
                debug_assert!(!self.sorted, "entity keys sort before feed keys");
                self.superseded.push((e.seq, coll, id));
            }
            return false;
        }
        self.at_horizon = Some(e.seq);
        !(self.bottom && e.value.is_none())
    }

    /// Rewrites the record of transaction `seq` without its superseded changes; false when
    /// it has none.
    fn strip(&mut self, seq: u64, record: &[u8], out: &mut Vec<u8>) -> bool {
        if !self.sorted {
            self.superseded.sort_unstable();
            self.sorted = true;
        }
        let from = self.superseded.partition_point(|s| s.0 < seq);
        let to = self.superseded.partition_point(|s| s.0 <= seq);
        let gone = &self.superseded[from..to];
        let Some(catalog) = &self.catalog else {
            return false;
        };
        if gone.is_empty() {
            return false;
        }
        // A group's changes share one name: resolve it once per run of changes.
        let mut named: Option<(String, Option<u32>)> = None;
        feed::strip_changes(
            record,
            |kind, name, id| {
                if kind != feed::KIND_PUT {
                    return false;
                }
                let coll = match &named {
                    Some((n, coll)) if n == name => *coll,
                    _ => {
                        let coll = catalog.resolve(name, seq);
                        named = Some((name.to_owned(), coll));
                        coll
                    }
                };
                coll.is_some_and(|coll| {
                    gone.binary_search_by(|s| (s.1, &s.2).cmp(&(coll, id)))
                        .is_ok()
                })
            },
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, size: u64) -> SegmentMeta {
        SegmentMeta {
            id,
            size,
            entries: 1,
            min_seq: 1,
            max_seq: 1,
        }
    }

    #[test]
    fn choose_merges_the_cheapest_run() {
        let segs: Vec<_> = [1, 1, 2, 50, 100]
            .iter()
            .enumerate()
            .map(|(i, &s)| meta(i as u64, s))
            .collect();
        assert_eq!(choose(&segs, 8), Decision::Nothing);
        assert_eq!(choose(&segs, 4), Decision::Merge { start: 0, end: 4 });
        let segs: Vec<_> = (0..9)
            .map(|i| meta(i, if i == 4 { 1 } else { 100 }))
            .collect();
        let Decision::Merge { start, end } = choose(&segs, 8) else {
            panic!("expected a merge")
        };
        assert_eq!(end - start, 6);
        assert!(start <= 4 && 4 < end);
        assert_eq!(choose_all(&[]), Decision::Nothing);
    }

    fn kept(r: &mut Retain, e: EntryRef<'_>) -> bool {
        r.keep(e, &mut Vec::new()) == Keep::Entry
    }

    fn e(k: &[u8], seq: u64, del: bool) -> EntryRef<'_> {
        EntryRef {
            key: k,
            seq,
            value: (!del).then_some(&b"v"[..]),
        }
    }

    #[test]
    fn retain_keeps_what_snapshots_need() {
        let mut r = Retain::new(10, true, 0, vec![], vec![]);
        // key a: versions 12, 9, 5 -> keep 12 (above horizon) and 9 (newest at horizon)
        assert!(kept(&mut r, e(b"a", 12, false)));
        assert!(kept(&mut r, e(b"a", 9, false)));
        assert!(!kept(&mut r, e(b"a", 5, false)));
        // key b: delete at 8 on the bottom level disappears with everything older
        assert!(!kept(&mut r, e(b"b", 8, true)));
        assert!(!kept(&mut r, e(b"b", 3, false)));
        // not bottom: the delete must stay to shadow older segments
        let mut r = Retain::new(10, false, 0, vec![], vec![]);
        assert!(kept(&mut r, e(b"b", 8, true)));
        assert!(!kept(&mut r, e(b"b", 3, false)));
    }

    #[test]
    fn retain_drops_old_feed_and_dropped_collections() {
        let mut r = Retain::new(100, false, 50, vec![(7, 90)], vec![(3, 100), (4, 101)]);
        assert!(!kept(&mut r, e(&keys::feed_key(49), 49, false)));
        assert!(kept(&mut r, e(&keys::feed_key(50), 50, false)));
        let k = keys::entity_key(7, &crate::EntityId([1; 16]));
        assert!(!kept(&mut r, e(&k, 95, false)));
        let k = keys::entity_key(8, &crate::EntityId([1; 16]));
        assert!(kept(&mut r, e(&k, 95, false)));
        // Entries of an index dropped at the horizon go; one dropped after it stays.
        let k = keys::index_entry_key(3, b"body", &crate::EntityId([1; 16]));
        assert!(!kept(&mut r, e(&k, 99, false)));
        let k = keys::index_entry_key(4, b"body", &crate::EntityId([1; 16]));
        assert!(kept(&mut r, e(&k, 99, false)));
    }

    fn record(changes: &[(u8, &str, EntityId)]) -> Vec<u8> {
        let mut b = feed::RecordBuilder::new(7, Some("o"));
        for (kind, name, id) in changes {
            b.add(*kind, name, Some(id));
        }
        b.finish()
    }

    /// One entry through `r`; a rewritten value lands in `out`.
    fn step(r: &mut Retain, key: &[u8], seq: u64, value: Option<&[u8]>, out: &mut Vec<u8>) -> Keep {
        r.keep(EntryRef { key, seq, value }, out)
    }

    #[test]
    fn superseded_changes_leave_their_feed_records() {
        let mut catalog = Catalog::default();
        catalog.create("c", 1, 1);
        catalog.create("e", 2, 1);
        let (a, b, c, d) = (
            EntityId([1; 16]),
            EntityId([2; 16]),
            EntityId([3; 16]),
            EntityId([4; 16]),
        );
        let (ka, kb, kc, kd) = (
            keys::entity_key(1, &a),
            keys::entity_key(1, &b),
            keys::entity_key(1, &c),
            keys::entity_key(1, &d),
        );
        // The same id in another collection, written once.
        let ea = keys::entity_key(2, &a);
        let (f2, f3) = (keys::feed_key(2), keys::feed_key(3));
        let (put, del) = (feed::KIND_PUT, feed::KIND_DELETE);
        let r2 = record(&[
            (put, "c", a),
            (put, "c", b),
            (put, "c", c),
            (del, "c", d),
            (put, "e", a),
        ]);
        let r3 = record(&[(put, "c", a), (del, "c", c), (put, "c", d)]);
        let v = Some(&b"v"[..]);
        let mut out = Vec::new();
        for bottom in [false, true] {
            let mut r = Retain::new(10, bottom, 1, vec![], vec![]).strip_feed(catalog.clone());
            // a: 3 replaces 2. b: only 2. c: deleted at 3 (on the bottom the delete goes too,
            // and its record is all that is left of it). d: deleted at 2, put again at 3 (a
            // delete stays in its record).
            assert_eq!(step(&mut r, &ka, 3, v, &mut out), Keep::Entry);
            // A duplicate of the kept entry (merging never yields one) goes, but does not
            // take the live change out of record 3.
            assert_eq!(step(&mut r, &ka, 3, v, &mut out), Keep::Drop);
            assert_eq!(step(&mut r, &ka, 2, v, &mut out), Keep::Drop);
            assert_eq!(step(&mut r, &kb, 2, v, &mut out), Keep::Entry);
            let deleted = if bottom { Keep::Drop } else { Keep::Entry };
            assert_eq!(step(&mut r, &kc, 3, None, &mut out), deleted);
            assert_eq!(step(&mut r, &kc, 2, v, &mut out), Keep::Drop);
            assert_eq!(step(&mut r, &kd, 3, v, &mut out), Keep::Entry);
            assert_eq!(step(&mut r, &kd, 2, None, &mut out), Keep::Drop);
            assert_eq!(step(&mut r, &ea, 2, v, &mut out), Keep::Entry);
            assert_eq!(step(&mut r, &f2, 2, Some(&r2), &mut out), Keep::Rewritten);
            let left = record(&[(put, "c", b), (del, "c", d), (put, "e", a)]);
            assert_eq!(out, left, "bottom {bottom}");
            assert_eq!(step(&mut r, &f3, 3, Some(&r3), &mut out), Keep::Entry);
        }
        // Without the catalog (flushes), or with the older version above the horizon (a
        // snapshot reads it), records stay whole.
        for (mut r, older) in [
            (Retain::new(10, false, 1, vec![], vec![]), Keep::Drop),
            (
                Retain::new(2, false, 1, vec![], vec![]).strip_feed(catalog.clone()),
                Keep::Entry,
            ),
        ] {
            assert_eq!(step(&mut r, &ka, 3, v, &mut out), Keep::Entry);
            assert_eq!(step(&mut r, &ka, 2, v, &mut out), older);
            assert_eq!(step(&mut r, &f2, 2, Some(&r2), &mut out), Keep::Entry);
        }
        // Past the cap of remembered versions, a superseded put stays in its record (it
        // reads as `Superseded`): with room for one, a's change leaves record 2, b's stays.
        let mut r = Retain::new(10, false, 1, vec![], vec![])
            .strip_feed(catalog.clone())
            .track_at_most(1);
        assert_eq!(step(&mut r, &ka, 3, v, &mut out), Keep::Entry);
        assert_eq!(step(&mut r, &ka, 2, v, &mut out), Keep::Drop);
        assert_eq!(step(&mut r, &kb, 3, v, &mut out), Keep::Entry);
        assert_eq!(step(&mut r, &kb, 2, v, &mut out), Keep::Drop);
        assert_eq!(r.superseded.len(), 1);
        let r2b = record(&[(put, "c", a), (put, "c", b)]);
        assert_eq!(step(&mut r, &f2, 2, Some(&r2b), &mut out), Keep::Rewritten);
        assert_eq!(out, record(&[(put, "c", b)]));
        // A record older than the feed's retention is dropped, not rewritten.
        let mut r = Retain::new(10, false, 3, vec![], vec![]).strip_feed(catalog);
        assert_eq!(step(&mut r, &ka, 3, v, &mut out), Keep::Entry);
        assert_eq!(step(&mut r, &ka, 2, v, &mut out), Keep::Drop);
        assert!(r.superseded.is_empty(), "its record is not retained");
        assert_eq!(step(&mut r, &f2, 2, Some(&r2), &mut out), Keep::Drop);
    }
}
