//! Merging reads across memtables and segments.
//!
//! Sources yield entries in (key ascending, sequence descending) order; the merge yields
//! either every version ([`MergeIter::next_raw`], for compaction) or, per key, the newest
//! version visible at a snapshot ([`MergeIter::next_visible`], for reads).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::Result;
use crate::memtable::{Entry, Memtable, Op};
use crate::segment::{SegCursor, Segment};

/// Largest number of memtable entries copied out at once. The first copy of a source takes
/// `MEM_CHUNK_FIRST` and each next one doubles, so short reads (a point range, an index page
/// of 10) copy little and long scans amortize the skip-list seek.
const MEM_CHUNK: usize = 256;
const MEM_CHUNK_FIRST: usize = 8;

#[derive(Debug)]
enum Source {
    Mem {
        mem: Arc<Memtable>,
        buf: VecDeque<Entry>,
        /// Position to continue from (inclusive), or `None` when exhausted.
        next: Option<(Vec<u8>, u64)>,
        end: Option<Arc<[u8]>>,
        /// Size of the next copy.
        chunk: usize,
    },
    Seg(SegCursor),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Entry>> {
        match self {
            Source::Seg(c) => c.next().await,
            Source::Mem {
                mem,
                buf,
                next,
                end,
                chunk,
            } => {
                if buf.is_empty() {
                    let Some((k, s)) = next.take() else {
                        return Ok(None);
                    };
                    let want = *chunk;
                    *chunk = (want * 2).min(MEM_CHUNK);
                    let got = mem.chunk(&k, s, end.as_deref(), want);
                    if got.len() == want
                        && let Some(last) = got.last()
                    {
                        *next = Some(position_after(&last.key, last.seq));
                    }
                    buf.extend(got);
                }
                Ok(buf.pop_front())
            }
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
            sources.push(Source::Mem {
                mem: m.clone(),
                buf: VecDeque::new(),
                next: Some((from.to_vec(), u64::MAX)),
                end: end.clone(),
                chunk: MEM_CHUNK_FIRST,
            });
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
        let mut best: Option<(usize, &Entry)> = None;
        for (i, h) in self.heads.iter().enumerate() {
            if let Some(e) = h
                && best.is_none_or(|(_, b)| Entry::cmp_pos(&e.key, e.seq, &b.key, b.seq).is_lt())
            {
                best = Some((i, e));
            }
        }
        let best = best.map(|(i, _)| i);
        let Some(b) = best else {
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
