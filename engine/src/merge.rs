//! Merging reads across memtables and segments.
//!
//! Sources yield entries in (key ascending, sequence descending) order; the merge yields
//! either every version ([`MergeIter::pick_raw`], for flushes and compaction) or, per key, the newest
//! version visible at a snapshot when it is a put ([`MergeIter::next_live`], for reads; keys
//! whose newest visible version is a delete are skipped).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::document::DocBytes;
use crate::error::Result;
use crate::memtable::{Entry, EntryRef, Memtable, Op};
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

    /// Copies the next chunk out when the buffer is empty.
    fn fill(&mut self) {
        if self.buf.is_empty() {
            let Some((k, s)) = self.next.take() else {
                return;
            };
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
    }

    fn next(&mut self) -> Option<Entry> {
        self.fill();
        self.buf.pop_front()
    }
}

#[derive(Debug)]
enum Source {
    Mem(MemCursor),
    Seg(SegCursor),
}

impl Source {
    /// Makes the current position readable (see [`SegCursor::ready`]).
    async fn ready(&mut self) -> Result<()> {
        match self {
            Source::Seg(c) => c.ready().await,
            Source::Mem(m) => {
                m.fill();
                Ok(())
            }
        }
    }

    /// The current key and sequence, borrowed; `None` when exhausted. Valid after `ready`.
    fn current(&self) -> Option<(&[u8], u64)> {
        match self {
            Source::Seg(c) => c.current(),
            Source::Mem(m) => m.buf.front().map(|e| (&e.key[..], e.seq)),
        }
    }

    /// The current value, and the key when the source holds it as an `Arc` already (a
    /// memtable's entries do; a segment's are read in place).
    fn current_parts(&self) -> Option<(Option<Arc<[u8]>>, Op)> {
        match self {
            Source::Seg(c) => c.current_op().map(|op| (None, op)),
            Source::Mem(m) => m.buf.front().map(|e| (Some(e.key.clone()), e.op.clone())),
        }
    }

    /// The current value in place (`Some(None)` for a delete).
    fn current_value(&self) -> Option<Option<DocBytes>> {
        match self {
            Source::Seg(c) => c.current_value().map(|v| v.map(DocBytes::Block)),
            Source::Mem(m) => m.buf.front().map(|e| match &e.op {
                Op::Put(v) => Some(DocBytes::Owned(v.clone())),
                Op::Delete => None,
            }),
        }
    }

    fn advance(&mut self) {
        match self {
            Source::Seg(c) => c.advance(),
            Source::Mem(m) => {
                m.buf.pop_front();
            }
        }
    }

    /// The current entry, borrowed.
    fn current_ref(&self) -> Option<EntryRef<'_>> {
        match self {
            Source::Seg(c) => c.current_ref(),
            Source::Mem(m) => m.buf.front().map(Entry::as_ref),
        }
    }
}

/// The index of the source whose current position comes first (the smallest key, and for
/// one key the newest sequence); ties go to the earlier source.
fn pick_source(sources: &[Source]) -> Option<usize> {
    let mut best: Option<(usize, &[u8], u64)> = None;
    for (i, s) in sources.iter().enumerate() {
        if let Some((k, q)) = s.current()
            && best
                .is_none_or(|(_, bk, bq)| Entry::cmp_pos(k, q, bk, bq) == std::cmp::Ordering::Less)
        {
            best = Some((i, k, q));
        }
    }
    best.map(|(i, _, _)| i)
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
///
/// The sources' current positions are read in place (a segment's from its cached block), so
/// skipping an older version or a key another source shadows copies nothing; only what a
/// caller takes is copied out.
#[derive(Debug)]
pub(crate) struct MergeIter {
    sources: Vec<Source>,
    started: bool,
    /// A source that stepped and has not been made ready again: its `ready` failed or was
    /// cancelled (the future dropped at its block read). It is retried before the next pick,
    /// where it would otherwise look exhausted and its entries would be skipped.
    unready: Option<usize>,
    /// The key of the last version the visible reads stopped at, in a buffer reused from
    /// key to key (valid for the caller only after a read returned `Some`).
    key: Vec<u8>,
    has_key: bool,
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
        MergeIter {
            sources,
            started: false,
            unready: None,
            key: Vec::new(),
            has_key: false,
        }
    }

    /// Makes every source readable before a pick: all of them the first time (`ready` is
    /// idempotent, so a start cut short is simply run again), afterwards the one that last
    /// stepped if its `ready` did not finish.
    async fn start(&mut self) -> Result<()> {
        if !self.started {
            for s in &mut self.sources {
                s.ready().await?;
            }
            self.started = true;
        }
        if let Some(b) = self.unready {
            self.sources[b].ready().await?;
            self.unready = None;
        }
        Ok(())
    }

    /// Makes source `b` readable after it stepped (see `unready`).
    async fn ready_after_step(&mut self, b: usize) -> Result<()> {
        self.unready = Some(b);
        self.sources[b].ready().await?;
        self.unready = None;
        Ok(())
    }

    /// Every version in order, borrowed (flushes and compactions): `pick_raw` names the
    /// source holding the next entry, `raw_at` reads it in place, `step_raw` moves past it.
    /// When the same (key, seq) appears in several sources (it cannot, by construction) the
    /// first source wins.
    pub(crate) async fn pick_raw(&mut self) -> Result<Option<usize>> {
        self.start().await?;
        Ok(pick_source(&self.sources))
    }

    /// The entry `pick_raw` named, valid until `step_raw`.
    pub(crate) fn raw_at(&self, source: usize) -> Option<EntryRef<'_>> {
        self.sources.get(source)?.current_ref()
    }

    /// Moves past the entry `pick_raw` named.
    pub(crate) async fn step_raw(&mut self, source: usize) -> Result<()> {
        self.sources[source].advance();
        self.ready_after_step(source).await
    }

    /// Moves to the next key and returns the sequence of its newest version at or below
    /// `snapshot` (a put or a delete) and what `read` takes from it; the key is then
    /// [`MergeIter::key`]. Versions that are skipped are never copied out.
    async fn next_visible_with<T>(
        &mut self,
        snapshot: u64,
        read: impl Fn(&Source) -> T,
    ) -> Result<Option<(u64, T)>> {
        self.start().await?;
        loop {
            let Some(b) = pick_source(&self.sources) else {
                return Ok(None);
            };
            let src = &self.sources[b];
            let Some((k, seq)) = src.current() else {
                return Ok(None);
            };
            let found = seq <= snapshot && !(self.has_key && self.key[..] == *k);
            let out = if found {
                self.key.clear();
                self.key.extend_from_slice(k);
                self.has_key = true;
                Some(read(src))
            } else {
                None
            };
            self.sources[b].advance();
            self.ready_after_step(b).await?;
            if let Some(out) = out {
                return Ok(Some((seq, out)));
            }
        }
    }

    /// The key of the entry the last visible read returned; valid only after that read
    /// returned `Some` (a read that skipped deletes or ran out leaves another key here).
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// For each key, the newest visible put (deletes skipped).
    pub(crate) async fn next_live(
        &mut self,
        snapshot: u64,
    ) -> Result<Option<(Arc<[u8]>, u64, Arc<[u8]>)>> {
        while let Some((seq, parts)) = self
            .next_visible_with(snapshot, Source::current_parts)
            .await?
        {
            if let Some((key, Op::Put(v))) = parts {
                // A memtable's key is shared; a segment's is copied from the buffer.
                let key = key.unwrap_or_else(|| Arc::from(self.key()));
                return Ok(Some((key, seq, v)));
            }
        }
        Ok(None)
    }

    /// Like [`MergeIter::next_live`], for scans: the key is not copied (it is
    /// [`MergeIter::key`] until the next read) and a value in a segment block is shared, not
    /// copied.
    pub(crate) async fn next_live_value(
        &mut self,
        snapshot: u64,
    ) -> Result<Option<(u64, DocBytes)>> {
        while let Some((seq, v)) = self
            .next_visible_with(snapshot, Source::current_value)
            .await?
        {
            if let Some(Some(v)) = v {
                return Ok(Some((seq, v)));
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
