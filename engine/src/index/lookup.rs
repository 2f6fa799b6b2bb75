//! Reading indexes: a merged range over committed entries and a transaction's own, and the
//! lazy [`Lookup`] stream built on it.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{IndexCursor, IndexDef, Query, keyenc};
use crate::cbor;
use crate::db::{index_range, range, range_rev};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::ids::EntityId;
use crate::keys;
use crate::merge::{MergeIter, RevMergeIter};
use crate::read::ReadCtx;

type Item = (Arc<[u8]>, u64, Arc<[u8]>);
/// A pending write: key and new value (`None`: delete).
type Pending = (Arc<[u8]>, Option<Arc<[u8]>>);

/// The committed side of a merged range, in either direction.
enum DbIter {
    Fwd(MergeIter),
    Rev(RevMergeIter),
}

impl DbIter {
    async fn next_live(&mut self, seq: u64) -> Result<Option<Item>> {
        match self {
            DbIter::Fwd(m) => m.next_live(seq).await,
            DbIter::Rev(m) => m.next_live(seq).await,
        }
    }
}

/// The live keys of `[from, end)` as a view sees them, in ascending (or, reversed,
/// descending) order: committed versions at the view's sequence, overridden by the pending
/// writes of a transaction (which win on equal keys; pending deletes hide committed keys).
pub(crate) struct MergedRange<'a> {
    db: DbIter,
    db_head: Option<Item>,
    started: bool,
    /// The transaction's pending writes in the range, in the direction of the read.
    ov: VecDeque<Pending>,
    reverse: bool,
    seq: u64,
    pending_version: u64,
    _view: PhantomData<&'a ()>,
}

impl<'a> MergedRange<'a> {
    pub(crate) fn new(ctx: &ReadCtx<'a>, from: &[u8], end: &[u8]) -> MergedRange<'a> {
        Self::with_probe(ctx, from, end, None)
    }

    /// A range whose keys all start with `probe` (an index key without its entity id): the
    /// segments' filters skip those that cannot hold it.
    pub(crate) fn with_probe(
        ctx: &ReadCtx<'a>,
        from: &[u8],
        end: &[u8],
        probe: Option<&[u8]>,
    ) -> MergedRange<'a> {
        Self::build(ctx, from, end, probe, false)
    }

    /// The same range, read from `end` down to `from`.
    pub(crate) fn build(
        ctx: &ReadCtx<'a>,
        from: &[u8],
        end: &[u8],
        probe: Option<&[u8]>,
        reverse: bool,
    ) -> MergedRange<'a> {
        let mut ov: VecDeque<Pending> = VecDeque::new();
        // (`Overlay::range` is empty when end <= from.)
        if let Some(o) = ctx.overlay {
            ov.extend(o.range(from, end).map(|(k, v)| (k.clone(), v.clone())));
            if reverse {
                ov.make_contiguous().reverse();
            }
        }
        let db = if reverse {
            DbIter::Rev(range_rev(ctx.version, from, end, probe))
        } else {
            DbIter::Fwd(match probe {
                Some(p) => index_range(ctx.version, from, end, p),
                None => range(ctx.version, from, end),
            })
        };
        MergedRange {
            db,
            db_head: None,
            started: false,
            ov,
            reverse,
            seq: ctx.seq,
            pending_version: ctx.pending_version,
            _view: PhantomData,
        }
    }

    /// The next live key in the read's order, with its version and value.
    pub(crate) async fn next(&mut self) -> Result<Option<Item>> {
        if !self.started {
            self.db_head = self.db.next_live(self.seq).await?;
            self.started = true;
        }
        loop {
            let take_overlay = match (&self.db_head, self.ov.front()) {
                (None, None) => return Ok(None),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((dk, _, _)), Some((ok, _))) => {
                    if self.reverse {
                        ok[..] >= dk[..]
                    } else {
                        ok[..] <= dk[..]
                    }
                }
            };
            if take_overlay {
                let Some((ok, ov_val)) = self.ov.pop_front() else {
                    return Ok(None);
                };
                if let Some((dk, _, _)) = &self.db_head
                    && dk[..] == ok[..]
                {
                    self.db_head = self.db.next_live(self.seq).await?;
                }
                match ov_val {
                    Some(v) => return Ok(Some((ok, self.pending_version, v))),
                    None => continue,
                }
            }
            let Some(h) = self.db_head.take() else {
                return Ok(None);
            };
            self.db_head = self.db.next_live(self.seq).await?;
            return Ok(Some(h));
        }
    }
}

/// A lazy stream of the results of one index lookup, in index order. Each call to
/// [`Lookup::next`] reads the next entry (and its document); nothing is read ahead.
pub struct Lookup<'a> {
    ctx: ReadCtx<'a>,
    entries: MergedRange<'a>,
    coll: u32,
    collection: String,
    def: Arc<IndexDef>,
    /// For equality indexes: the value encoding a hit's document must have.
    verify: Option<Vec<u8>>,
    remaining: usize,
    last: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Lookup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("collection", &self.collection)
            .field("index", &self.def.name)
            .field("remaining", &self.remaining)
            .finish()
    }
}

/// One page of lookup results.
#[derive(Debug, Clone, Default)]
pub struct IndexPage {
    /// The documents, in index order.
    pub items: Vec<Document>,
    /// Pass to [`Query::after`] for the next page; `None` when the lookup is complete.
    pub next: Option<IndexCursor>,
}

impl<'a> Lookup<'a> {
    pub(crate) fn new(
        ctx: ReadCtx<'a>,
        coll: u32,
        collection: &str,
        def: Arc<IndexDef>,
        query: &Query,
    ) -> Result<Lookup<'a>> {
        ctx.check_open()?;
        let super::KeyRange {
            from,
            end,
            verify,
            exact,
        } = query.key_range(&def, collection)?;
        ctx.inner.counters.index_lookups.fetch_add(1, Relaxed);
        let entries = MergedRange::build(&ctx, &from, &end, exact.as_deref(), query.reverse);
        Ok(Lookup {
            ctx,
            entries,
            coll,
            collection: collection.to_owned(),
            def,
            verify,
            remaining: query.limit,
            last: None,
        })
    }

    /// The index's name.
    pub fn index(&self) -> &str {
        &self.def.name
    }

    /// The position after the last result returned (to resume with [`Query::after`]).
    pub fn cursor(&self) -> Option<IndexCursor> {
        self.last.as_ref().map(|k| IndexCursor(k.to_vec()))
    }

    /// The next entry's entity id and document.
    async fn advance(&mut self) -> Result<Option<Document>> {
        while self.remaining > 0 {
            let Some((key, _, _)) = self.entries.next().await? else {
                self.remaining = 0;
                return Ok(None);
            };
            let id = keys::index_entry_entity(&key).ok_or_else(|| self.damaged("short key"))?;
            self.ctx
                .inner
                .counters
                .index_entries_read
                .fetch_add(1, Relaxed);
            let doc = self
                .ctx
                .get(Some(self.coll), id)
                .await?
                .ok_or_else(|| self.damaged("an entry names a missing entity"))?;
            self.last = Some(key);
            if let Some(expect) = &self.verify {
                // Equality indexes key by hash: check the document really has the values.
                let v = cbor::decode(doc.bytes())?;
                let mut enc = Vec::new();
                for x in self.def.values(&v).into_iter().flatten() {
                    keyenc::encode_key_into(x, &mut enc);
                }
                if &enc != expect {
                    continue;
                }
            }
            self.remaining -= 1;
            return Ok(Some(doc));
        }
        Ok(None)
    }

    fn damaged(&self, what: &str) -> Error {
        Error::corruption(
            "index",
            0,
            format!(
                "index {:?} of {:?}: {what}; run verify_indexes and rebuild the index",
                self.def.name, self.collection
            ),
        )
    }

    /// The next result, or `None` at the end (or after `limit` results).
    pub async fn next(&mut self) -> Result<Option<Document>> {
        self.advance().await
    }

    /// The next result's entity id.
    pub async fn next_id(&mut self) -> Result<Option<EntityId>> {
        Ok(self.advance().await?.map(|d| d.id()))
    }

    /// Up to `n` more results as a page, with the cursor to continue from.
    pub async fn next_page(&mut self, n: usize) -> Result<IndexPage> {
        let mut page = IndexPage::default();
        while page.items.len() < n {
            match self.advance().await? {
                Some(d) => page.items.push(d),
                None => return Ok(page),
            }
        }
        // A full page: there may be more (the next call finds out).
        page.next = self.cursor();
        Ok(page)
    }

    /// Every remaining result.
    pub async fn collect(mut self) -> Result<Vec<Document>> {
        let mut out = Vec::new();
        while let Some(d) = self.advance().await? {
            out.push(d);
        }
        Ok(out)
    }
}
