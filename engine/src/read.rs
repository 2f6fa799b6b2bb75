//! Reads over a view (a snapshot, or a write transaction with its own pending writes).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::db::{Inner, Version, range};
use crate::document::{DocBytes, Document, Page, ScanOptions};
use crate::error::Result;
use crate::ids::EntityId;
use crate::keys;
use crate::memtable::Op;
use crate::overlay::Overlay;
use crate::segment::BlockSlice;

/// Pages shorter than this copy their documents out of the segment blocks ([`shares_well`]).
const SHARE_MIN_ITEMS: usize = 64;

/// Whether a page may keep the documents it read in place from segment blocks. Each such
/// document pins its whole block, outside the cache budget, for as long as it is held; a page
/// keeps them only when it is long and its documents make up at least half of the bytes of
/// the blocks they pin. A short page, one a predicate thinned out, one over many tombstones
/// or old versions, or one of tiny documents is copied out instead (a copy per returned
/// document, still none per row read).
fn shares_well(items: &[Document]) -> bool {
    if items.len() < SHARE_MIN_ITEMS {
        return false;
    }
    let (mut shared, mut pinned) = (0usize, 0usize);
    let mut last: Option<&BlockSlice> = None;
    for d in items {
        if let DocBytes::Block(b) = &d.bytes {
            shared += b.as_slice().len();
            // Blocks come in order; interleaved sources count a block again (on the safe
            // side).
            if !last.is_some_and(|l| l.same_block(b)) {
                pinned += b.block_bytes();
            }
            last = Some(b);
        }
    }
    pinned <= 2 * shared
}

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
                bytes: b.clone().into(),
            }));
        }
        Ok(self
            .committed(&key)
            .await?
            .map(|(version, bytes)| Document {
                id,
                version,
                bytes: bytes.into(),
            }))
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
        // The merge's next live entry: its version and value; its key is `db.key()`.
        let mut db_head = db.next_live_value(self.seq).await?;
        let mut visited = 0u64;
        loop {
            // Pick the smaller key of the two streams; the overlay wins on ties.
            let take_overlay = match (&db_head, ov.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(_), Some((ok, _))) => ok[..] <= *db.key(),
            };
            let (parsed, version, bytes) = if take_overlay {
                let Some((ok, ov_val)) = ov.next() else { break };
                if db_head.is_some() && *db.key() == ok[..] {
                    db_head = db.next_live_value(self.seq).await?;
                }
                match ov_val {
                    Some(v) => (
                        keys::parse_entity_key(ok),
                        self.pending_version,
                        v.clone().into(),
                    ),
                    None => continue,
                }
            } else {
                let Some((version, bytes)) = db_head.take() else {
                    break;
                };
                let parsed = keys::parse_entity_key(db.key());
                db_head = db.next_live_value(self.seq).await?;
                (parsed, version, bytes)
            };
            visited += 1;
            let Some((_, id)) = parsed else {
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
        if !shares_well(&page.items) {
            for d in &mut page.items {
                d.bytes.detach();
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::document::{DocBytes, Document};
    use crate::{Database, EntityId, Options, ScanOptions};

    fn in_place(items: &[Document]) -> usize {
        items
            .iter()
            .filter(|d| matches!(d.bytes, DocBytes::Block(_)))
            .count()
    }

    #[test]
    fn long_dense_pages_share_blocks_and_the_others_copy() {
        futures_executor::block_on(async {
            let backend = Arc::new(entidb_io::MemoryBackend::new());
            let db = Database::open_with(backend, Options::default())
                .await
                .unwrap();
            let mut tx = db.begin().await.unwrap();
            for n in 0..300u32 {
                let mut id = [0u8; 16];
                id[12..].copy_from_slice(&n.to_be_bytes());
                let id = EntityId::from_bytes(id);
                tx.collection("big").put(id, &"x".repeat(200)).unwrap();
                tx.collection("tiny").put(id, &n).unwrap();
            }
            tx.commit().await.unwrap();
            db.checkpoint().await.unwrap();
            let snap = db.snapshot();
            let big = snap.collection("big");
            // A long page of documents that fill their blocks: shared.
            let all = big.scan(ScanOptions::limit(1000)).await.unwrap().items;
            assert_eq!((all.len(), in_place(&all)), (300, 300));
            // A short page: copied.
            let few = big.scan(ScanOptions::limit(10)).await.unwrap().items;
            assert_eq!((few.len(), in_place(&few)), (10, 0));
            // A predicate keeps every other row: the page holds under half of its blocks.
            let mut i = 0;
            let half = big
                .scan_where(ScanOptions::limit(1000), |_| {
                    i += 1;
                    i % 2 == 0
                })
                .await
                .unwrap()
                .items;
            assert_eq!((half.len(), in_place(&half)), (150, 0));
            // Tiny documents are a small part of their blocks (keys and headers): copied.
            let tiny = snap
                .collection("tiny")
                .scan(ScanOptions::limit(1000))
                .await
                .unwrap()
                .items;
            assert_eq!((tiny.len(), in_place(&tiny)), (300, 0));
            // Whichever way, the bytes are the ones stored.
            assert_eq!(few[..], all[..10]);
            assert_eq!(half[0], all[1]);
            assert_eq!(tiny[5].decode::<u32>().unwrap(), 5);
        });
    }
}
