//! Merging reads across memtables and segments.
//!
//! Sources yield entries in (key ascending, sequence descending) order; the merge yields
//! either every version ([`MergeIter::next_raw`], for compaction) or, per key, the newest
//! version visible at a snapshot ([`MergeIter::next_visible`], for reads).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::Result;
use crate::memtable::{Entry, Memtable, Op};
use crate::segment::{SegCursor, SegRevCursor, Segment};

/// Largest number of memtable entries copied out at once. The first copy of a source takes
/// `MEM_CHUNK_FIRST` and each next one doubles, so short reads (a point range, an index page
/// of 10) copy little and long scans amortize the skip-list seek.
const MEM_CHUNK: usize = 256;
const MEM_CHUNK_FIRST: usize = 8;

/// A memtable read in chunks, forwards from a position to an end key, or backwards from
/// before a position down to a lower key.
#[derive(Debug)]
struct MemCursor {
    mem: Arc<Memtable>,
    buf: VecDeque<Entry>,
    /// Forwards: the position to continue from (inclusive); backwards: the position to
    /// continue before (exclusive). `None` when exhausted.
    next: Option<(Vec<u8>, u64)>,
    /// Forwards: the end key (exclusive, if any); backwards: the lower key (inclusive).
    bound: Option<Arc<[u8]>>,
    reverse: bool,
    /// Size of the next copy.
    chunk: usize,
}

impl MemCursor {
    fn new(mem: &Arc<Memtable>, start: &[u8], bound: Option<Arc<[u8]>>, reverse: bool) -> Self {
        MemCursor {
            mem: mem.clone(),
            buf: VecDeque::new(),
            next: Some((start.to_vec(), u64::MAX)),
            bound,
            reverse,
            chunk: MEM_CHUNK_FIRST,
        }
    }

    fn next(&mut self) -> Option<Entry> {
        if self.buf.is_empty() {
            let (k, s) = self.next.take()?;
            let want = self.chunk;
            self.chunk = (want * 2).min(MEM_CHUNK);
            let got = if self.reverse {
                self.mem
                    .chunk_rev(&k, s, self.bound.as_deref().unwrap_or(&[]), want)
            } else {
                self.mem.chunk(&k, s, self.bound.as_deref(), want)
            };
            if got.len() == want
                && let Some(last) = got.last()
            {
                self.next = Some(if self.reverse {
                    (last.key.to_vec(), last.seq)
                } else {
                    position_after(&last.key, last.seq)
                });
            }
            self.buf.extend(got);
        }
        self.buf.pop_front()
    }
}

#[derive(Debug)]
enum Source {
    Mem(MemCursor),
    Seg(SegCursor),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Entry>> {
        match self {
            Source::Seg(c) => c.next().await,
            Source::Mem(m) => Ok(m.next()),
        }
    }
}

/// The position immediately after (key, seq) in entry order.
fn position_after(key: &[u8], seq: u64) -> (Vec<u8>, u64) {
    if seq > 0 {
        (key.to_vec(), seq - 1)
    } else {
        let mut k = key.to_vec();
        k.push(0);
        (k, u64::MAX)
    }
}

/// The index of the head that comes first in a merge: the smallest position (`Less`) or the
/// largest (`Greater`); ties go to the earlier source.
fn pick(heads: &[Option<Entry>], first: std::cmp::Ordering) -> Option<usize> {
    let mut best: Option<(usize, &Entry)> = None;
    for (i, h) in heads.iter().enumerate() {
        if let Some(e) = h
            && best.is_none_or(|(_, b)| Entry::cmp_pos(&e.key, e.seq, &b.key, b.seq) == first)
        {
            best = Some((i, e));
        }
    }
    best.map(|(i, _)| i)
}

/// A merged, ordered view of several sources.
#[derive(Debug)]
pub(crate) struct MergeIter {
    sources: Vec<Source>,
    heads: Vec<Option<Entry>>,
    started: bool,
    last_key: Option<Arc<[u8]>>,
}

impl MergeIter {
    /// Merge memtables and segments over the key range `[from, end)`.
    pub(crate) fn new(
        mems: &[Arc<Memtable>],
        segments: &[Arc<Segment>],
        from: &[u8],
        end: Option<Arc<[u8]>>,
    ) -> Self {
        let mut sources = Vec::with_capacity(mems.len() + segments.len());
        for m in mems {
            sources.push(Source::Mem(MemCursor::new(m, from, end.clone(), false)));
        }
        for s in segments {
            sources.push(Source::Seg(SegCursor::new(
                s.clone(),
                from,
                u64::MAX,
                end.clone(),
            )));
        }
        let n = sources.len();
        MergeIter {
            sources,
            heads: vec![None; n],
            started: false,
            last_key: None,
        }
    }

    /// The next entry of any version, in order. When the same (key, seq) appears in several
    /// sources (it cannot, by construction) the first source wins.
    pub(crate) async fn next_raw(&mut self) -> Result<Option<Entry>> {
        if !self.started {
            for i in 0..self.sources.len() {
                self.heads[i] = self.sources[i].next().await?;
            }
            self.started = true;
        }
        // The smallest head; ties (impossible by construction) go to the earlier source.
        let Some(b) = pick(&self.heads, std::cmp::Ordering::Less) else {
            return Ok(None);
        };
        let out = self.heads[b].take();
        self.heads[b] = self.sources[b].next().await?;
        Ok(out)
    }

    /// For each key in order, the newest version at or below `snapshot` (puts and deletes).
    pub(crate) async fn next_visible(&mut self, snapshot: u64) -> Result<Option<Entry>> {
        while let Some(e) = self.next_raw().await? {
            if e.seq > snapshot {
                continue;
            }
            if self.last_key.as_deref() == Some(&*e.key) {
                continue;
            }
            self.last_key = Some(e.key.clone());
            return Ok(Some(e));
        }
        Ok(None)
    }

    /// For each key, the newest visible put (deletes skipped).
    pub(crate) async fn next_live(
        &mut self,
        snapshot: u64,
    ) -> Result<Option<(Arc<[u8]>, u64, Arc<[u8]>)>> {
        while let Some(e) = self.next_visible(snapshot).await? {
            if let Op::Put(v) = e.op {
                return Ok(Some((e.key, e.seq, v)));
            }
        }
        Ok(None)
    }
}

/// One source of a [`RevMergeIter`].
#[derive(Debug)]
enum RevSource {
    Mem(MemCursor),
    Seg(SegRevCursor),
}

impl RevSource {
    async fn next(&mut self) -> Result<Option<Entry>> {
        match self {
            RevSource::Seg(c) => c.next().await,
            RevSource::Mem(m) => Ok(m.next()),
        }
    }
}

/// A merged view of several sources over `[lower, before)`, in descending key order: the
/// mirror of [`MergeIter`], for reverse range reads.
#[derive(Debug)]
pub(crate) struct RevMergeIter {
    sources: Vec<RevSource>,
    heads: Vec<Option<Entry>>,
    started: bool,
    /// An entry read ahead while collecting the versions of the previous key.
    pending: Option<Entry>,
}

impl RevMergeIter {
    pub(crate) fn new(
        mems: &[Arc<Memtable>],
        segments: &[Arc<Segment>],
        lower: &[u8],
        before: &[u8],
    ) -> Self {
        let lower: Arc<[u8]> = Arc::from(lower);
        let mut sources = Vec::with_capacity(mems.len() + segments.len());
        for m in mems {
            sources.push(RevSource::Mem(MemCursor::new(
                m,
                before,
                Some(lower.clone()),
                true,
            )));
        }
        for s in segments {
            sources.push(RevSource::Seg(SegRevCursor::new(
                s.clone(),
                lower.clone(),
                before,
            )));
        }
        let n = sources.len();
        RevMergeIter {
            sources,
            heads: vec![None; n],
            started: false,
            pending: None,
        }
    }

    /// The previous entry of any version: descending key, ascending sequence.
    async fn next_raw(&mut self) -> Result<Option<Entry>> {
        if !self.started {
            for i in 0..self.sources.len() {
                self.heads[i] = self.sources[i].next().await?;
            }
            self.started = true;
        }
        // The largest head.
        let Some(b) = pick(&self.heads, std::cmp::Ordering::Greater) else {
            return Ok(None);
        };
        let out = self.heads[b].take();
        self.heads[b] = self.sources[b].next().await?;
        Ok(out)
    }

    /// For each key in descending order, the newest put at or below `snapshot` (keys whose
    /// newest visible version is a delete are skipped).
    pub(crate) async fn next_live(
        &mut self,
        snapshot: u64,
    ) -> Result<Option<(Arc<[u8]>, u64, Arc<[u8]>)>> {
        loop {
            let first = match self.pending.take() {
                Some(e) => e,
                None => match self.next_raw().await? {
                    Some(e) => e,
                    None => return Ok(None),
                },
            };
            // The versions of one key arrive oldest first; keep the newest visible one.
            let key = first.key.clone();
            let mut best = (first.seq <= snapshot).then_some(first);
            loop {
                match self.next_raw().await? {
                    Some(e) if e.key == key => {
                        if e.seq <= snapshot {
                            best = Some(e);
                        }
                    }
                    other => {
                        self.pending = other;
                        break;
                    }
                }
            }
            if let Some(Entry {
                seq,
                op: Op::Put(v),
                ..
            }) = best
            {
                return Ok(Some((key, seq, v)));
            }
            if self.pending.is_none() {
                return Ok(None);
            }
        }
    }
}
