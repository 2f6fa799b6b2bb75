//! Compaction: a pure decision function, and the retention rule applied while merging.
//!
//! Segments form one list, newest first; any may overlap. A compaction merges a contiguous
//! run of them into one segment that takes the run's place, so recency order is preserved.

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
    seen_at_horizon: bool,
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
            seen_at_horizon: false,
        }
    }

    /// Entries must be given in order.
    pub(crate) fn keep(&mut self, e: EntryRef<'_>) -> bool {
        if !self.has_key || self.cur_key[..] != *e.key {
            self.cur_key.clear();
            self.cur_key.extend_from_slice(e.key);
            self.has_key = true;
            self.seen_at_horizon = false;
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
        if self.seen_at_horizon {
            return false;
        }
        self.seen_at_horizon = true;
        !(self.bottom && e.value.is_none())
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
        assert!(r.keep(e(b"a", 12, false)));
        assert!(r.keep(e(b"a", 9, false)));
        assert!(!r.keep(e(b"a", 5, false)));
        // key b: delete at 8 on the bottom level disappears with everything older
        assert!(!r.keep(e(b"b", 8, true)));
        assert!(!r.keep(e(b"b", 3, false)));
        // not bottom: the delete must stay to shadow older segments
        let mut r = Retain::new(10, false, 0, vec![], vec![]);
        assert!(r.keep(e(b"b", 8, true)));
        assert!(!r.keep(e(b"b", 3, false)));
    }

    #[test]
    fn retain_drops_old_feed_and_dropped_collections() {
        let mut r = Retain::new(100, false, 50, vec![(7, 90)], vec![(3, 100), (4, 101)]);
        assert!(!r.keep(e(&keys::feed_key(49), 49, false)));
        assert!(r.keep(e(&keys::feed_key(50), 50, false)));
        let k = keys::entity_key(7, &crate::EntityId([1; 16]));
        assert!(!r.keep(e(&k, 95, false)));
        let k = keys::entity_key(8, &crate::EntityId([1; 16]));
        assert!(r.keep(e(&k, 95, false)));
        // Entries of an index dropped at the horizon go; one dropped after it stays.
        let k = keys::index_entry_key(3, b"body", &crate::EntityId([1; 16]));
        assert!(!r.keep(e(&k, 99, false)));
        let k = keys::index_entry_key(4, b"body", &crate::EntityId([1; 16]));
        assert!(r.keep(e(&k, 99, false)));
    }
}
