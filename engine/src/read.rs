//! Reads over a view (a snapshot, or a write transaction with its own pending writes).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::db::{Inner, Version, range};
use crate::document::{Document, Page, ScanOptions};
use crate::error::Result;
use crate::ids::EntityId;
use crate::keys;
use crate::memtable::Op;
use crate::overlay::Overlay;

/// Everything a read needs.
pub(crate) struct ReadCtx<'a> {
    pub inner: &'a Inner,
    pub version: &'a Version,
    pub seq: u64,
    pub overlay: Option<&'a Overlay>,
    /// Version reported for documents written by the transaction itself.
    pub pending_version: u64,
}

impl ReadCtx<'_> {
    /// Reads fail with [`Error::Closed`](crate::Error::Closed) after `close()`.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(crate::Error::Closed);
        }
        Ok(())
    }

    /// Committed version of a key (ignoring the overlay): `Some(version)` if it exists.
    pub(crate) async fn committed(&self, key: &[u8]) -> Result<Option<(u64, Arc<[u8]>)>> {
        self.check_open()?;
        self.inner.counters.reads.fetch_add(1, Relaxed);
        Ok(
            match self.inner.get_in(self.version, key, self.seq).await? {
                Some((v, Op::Put(b))) => Some((v, b)),
                _ => None,
            },
        )
    }

    pub(crate) async fn get(&self, coll: Option<u32>, id: EntityId) -> Result<Option<Document>> {
        self.check_open()?;
        let Some(coll) = coll else {
            return Ok(None);
        };
        let key = keys::entity_key_array(coll, &id);
        if let Some(pending) = self.overlay.and_then(|o| o.get(&key[..])) {
            self.inner.counters.reads.fetch_add(1, Relaxed);
            return Ok(pending.as_ref().map(|b| Document {
                id,
                version: self.pending_version,
                bytes: b.clone(),
            }));
        }
        Ok(self
            .committed(&key)
            .await?
            .map(|(version, bytes)| Document { id, version, bytes }))
    }

    /// Scan a collection in id order. `pred` filters; `limit` counts matches.
    pub(crate) async fn scan(
        &self,
        coll: Option<u32>,
        opts: ScanOptions,
        mut pred: impl FnMut(&Document) -> bool,
    ) -> Result<Page> {
        self.check_open()?;
        let mut page = Page::default();
        let Some(coll) = coll else {
            return Ok(page);
        };
        if opts.limit == 0 {
            page.next = opts.after;
            return Ok(page);
        }
        self.inner.counters.scans.fetch_add(1, Relaxed);
        let start = match opts.after {
            Some(a) => match a.successor() {
                Some(s) => s,
                None => return Ok(page),
            },
            None => EntityId::MIN,
        };
        let from = keys::entity_key(coll, &start);
        let end = keys::collection_end(coll);
        let mut db = range(self.version, &from, &end);
        let empty = Overlay::new();
        let mut ov = self.overlay.unwrap_or(&empty).range(&from, &end).peekable();
        let mut db_head = db.next_live(self.seq).await?;
        let mut visited = 0u64;
        loop {
            // Pick the smaller key of the two streams; the overlay wins on ties.
            let take_overlay = match (&db_head, ov.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((dk, _, _)), Some((ok, _))) => ok[..] <= dk[..],
            };
            let (key, version, bytes) = if take_overlay {
                let Some((ok, ov_val)) = ov.next() else { break };
                if let Some((dk, _, _)) = &db_head
                    && dk[..] == ok[..]
                {
                    db_head = db.next_live(self.seq).await?;
                }
                match ov_val {
                    Some(v) => (ok.clone(), self.pending_version, v.clone()),
                    None => continue,
                }
            } else {
                let Some(h) = db_head.take() else { break };
                db_head = db.next_live(self.seq).await?;
                h
            };
            visited += 1;
            let Some((_, id)) = keys::parse_entity_key(&key) else {
                continue;
            };
            let doc = Document { id, version, bytes };
            if pred(&doc) {
                page.items.push(doc);
                if page.items.len() >= opts.limit {
                    page.next = Some(id);
                    break;
                }
            }
        }
        self.inner
            .counters
            .scanned_entities
            .fetch_add(visited, Relaxed);
        Ok(page)
    }

    /// Count the live entities of a collection (a full scan of it).
    pub(crate) async fn count(&self, coll: Option<u32>) -> Result<u64> {
        let mut n = 0u64;
        let mut opts = ScanOptions::limit(4096);
        loop {
            let page = self.scan(coll, opts, |_| true).await?;
            n += page.items.len() as u64;
            match page.next {
                Some(c) => opts = opts.after(c),
                None => return Ok(n),
            }
        }
    }
}
