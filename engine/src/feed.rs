//! The change feed: one record per committed transaction, in commit order.
//!
//! The record is written in the same WAL record (and so the same atomic commit) as the data it
//! describes, under key `03 | seq`. It names what changed; the values are read from the entity
//! versions written at that sequence, so a document is stored once. Records are retained for
//! `Options::feed_retention` transactions; entity versions only as long as a snapshot needs
//! them, so an overwritten value in an old record reads as [`ChangeOp::Superseded`].
//!
//! ## Record layout (value of `03 | seq`)
//!
//! ```text
//! format u8 (1) | commit time (ms since epoch) u64 LE | origin_len u16 LE | origin (UTF-8) |
//! count u32 LE | per change: kind u8 (1 put, 2 delete, 3 collection dropped,
//!                            4 collection created) | name_len u16 LE | name | id (16 bytes, kinds 1-2)
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use entidb_io::BoxFuture;

use crate::cbor::Canonical;
use crate::db::{Inner, View, range};
use crate::error::{Error, Result};
use crate::ids::EntityId;
use crate::keys;
use crate::memtable::Op;

/// What happened to one entity or collection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeOp {
    /// The entity was written; canonical CBOR of the new value.
    Put(Canonical),
    /// The entity was deleted.
    Delete,
    /// The entity was written by this transaction, but a later transaction (also in the feed,
    /// after this record) overwrote or deleted it and compaction has discarded this version.
    /// A consumer that follows the feed gets the entity's newer state from that later record.
    /// Hold a [`Snapshot`](crate::Snapshot) to keep every intermediate value readable.
    Superseded,
    /// The collection was created.
    CollectionCreated,
    /// The collection was dropped (with all its entities).
    CollectionDropped,
}

/// One change inside a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Collection name.
    pub collection: String,
    /// Entity id (`None` for collection events).
    pub id: Option<EntityId>,
    /// The entity's new version (the transaction's sequence).
    pub version: u64,
    /// What happened.
    pub op: ChangeOp,
}

/// One committed transaction as the change feed reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeBatch {
    /// The transaction's sequence number (gapless, increasing).
    pub seq: u64,
    /// Commit time, milliseconds since the Unix epoch (from the backend's clock).
    pub timestamp_millis: u64,
    /// The origin tag the writer set ([`WriteTxn::set_origin`](crate::WriteTxn::set_origin)).
    pub origin: Option<String>,
    /// The changes, in key order (collection, then id).
    pub changes: Vec<Change>,
}

/// Longest origin tag accepted by [`WriteTxn::set_origin`](crate::WriteTxn::set_origin).
pub const MAX_ORIGIN_BYTES: usize = 255;

pub(crate) const KIND_PUT: u8 = 1;
pub(crate) const KIND_DELETE: u8 = 2;
pub(crate) const KIND_DROPPED: u8 = 3;
pub(crate) const KIND_CREATED: u8 = 4;

/// Encodes the feed record of a transaction.
#[derive(Debug, Default)]
pub(crate) struct RecordBuilder {
    out: Vec<u8>,
    count: u32,
}

impl RecordBuilder {
    pub(crate) fn new(timestamp: u64, origin: Option<&str>) -> Self {
        let mut out = vec![1u8];
        out.extend_from_slice(&timestamp.to_le_bytes());
        let o = origin.unwrap_or("").as_bytes();
        out.extend_from_slice(&(o.len() as u16).to_le_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(&0u32.to_le_bytes());
        RecordBuilder { out, count: 0 }
    }

    pub(crate) fn add(&mut self, kind: u8, name: &str, id: Option<&EntityId>) {
        self.out.push(kind);
        self.out
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.out.extend_from_slice(name.as_bytes());
        if let Some(id) = id {
            self.out.extend_from_slice(id.as_bytes());
        }
        self.count += 1;
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        let at = 1 + 8 + 2 + u16::from_le_bytes([self.out[9], self.out[10]]) as usize;
        self.out[at..at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.out
    }
}

/// A feed record read in place: names are borrowed from the record's bytes, so a change the
/// reader filters out costs no allocation.
struct Parsed<'a> {
    timestamp: u64,
    origin: Option<&'a str>,
    items: Vec<(u8, &'a str, Option<EntityId>)>,
}

fn parse(b: &[u8]) -> Option<Parsed<'_>> {
    let mut p = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(p..p + n)?;
        p += n;
        Some(s)
    };
    if take(1)? != [1] {
        return None;
    }
    let timestamp = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let olen = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let origin = std::str::from_utf8(take(olen)?).ok()?;
    let n = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut items = Vec::new();
    for _ in 0..n {
        let kind = take(1)?[0];
        let nlen = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(take(nlen)?).ok()?;
        let id = match kind {
            KIND_PUT | KIND_DELETE => Some(EntityId::from_slice(take(16)?)?),
            KIND_DROPPED | KIND_CREATED => None,
            _ => return None,
        };
        items.push((kind, name, id));
    }
    Some(Parsed {
        timestamp,
        origin: (!origin.is_empty()).then_some(origin),
        items,
    })
}

/// Read up to `limit` feed records with sequence > `since` from `view`, keeping only the
/// changes `keep(origin, collection)` accepts (the others are left out before their values
/// are read: a consumer that skips a collection or an origin pays no point read per change).
/// A record left with no changes is still returned, so that the caller's position moves past
/// it.
pub(crate) async fn read_page<K>(
    inner: &Inner,
    view: &View,
    since: u64,
    limit: usize,
    keep: &K,
) -> Result<Vec<ChangeBatch>>
where
    K: Fn(Option<&str>, &str) -> bool + entidb_io::MaybeSync,
{
    let oldest = inner.feed_oldest(view.seq);
    if since.saturating_add(1) < oldest && since < view.seq {
        return Err(Error::FeedTruncated {
            requested: since + 1,
            oldest,
        });
    }
    let from = keys::feed_key(since.saturating_add(1));
    let end = [keys::TAG_FEED + 1];
    let mut it = range(&view.version, &from, &end);
    // Once per page, not per record: the catalog only grows, so today's copy resolves every
    // name as of any sequence in the view.
    let catalog = crate::db::read(&inner.catalog).clone();
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((key, seq, value)) = it.next_live(view.seq).await? else {
            break;
        };
        let bad = || Error::corruption("change feed", seq, "malformed change-feed record");
        if keys::parse_feed_key(&key) != Some(seq) {
            return Err(bad());
        }
        let parsed = parse(&value).ok_or_else(bad)?;
        let mut changes = Vec::with_capacity(parsed.items.len());
        for (kind, name, id) in parsed.items {
            if !keep(parsed.origin, name) {
                continue;
            }
            let op = match (kind, id) {
                (KIND_PUT, Some(id)) => {
                    let coll = catalog_id_at(&catalog, name, seq).ok_or_else(bad)?;
                    let key = keys::entity_key(coll, &id);
                    match inner.get_in(&view.version, &key, seq).await? {
                        Some((v, Op::Put(bytes))) if v == seq => {
                            ChangeOp::Put(Canonical::stored(bytes))
                        }
                        // Compaction keeps only the newest version at or below the oldest
                        // snapshot: this one was overwritten (or its collection dropped) by a
                        // later transaction, which the feed reports after this one.
                        _ => ChangeOp::Superseded,
                    }
                }
                (KIND_DELETE, Some(_)) => ChangeOp::Delete,
                (KIND_DROPPED, None) => ChangeOp::CollectionDropped,
                (KIND_CREATED, None) => ChangeOp::CollectionCreated,
                _ => return Err(bad()),
            };
            changes.push(Change {
                collection: name.to_owned(),
                id,
                version: seq,
                op,
            });
        }
        out.push(ChangeBatch {
            seq,
            timestamp_millis: parsed.timestamp,
            origin: parsed.origin.map(str::to_owned),
            changes,
        });
    }
    Ok(out)
}

/// The collection id `name` had while transaction `seq` wrote to it.
fn catalog_id_at(catalog: &crate::catalog::Catalog, name: &str, seq: u64) -> Option<u32> {
    catalog.resolve(name, seq)
}

/// An endless stream of committed transactions, starting after a sequence: it first reads
/// what is retained, then waits for new commits. Ends when the database is closed.
pub struct ChangeStream {
    inner: Arc<Inner>,
    next_since: u64,
    buf: VecDeque<ChangeBatch>,
    fut: Option<BoxFuture<'static, Result<Vec<ChangeBatch>>>>,
    done: bool,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("next_since", &self.next_since)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl ChangeStream {
    pub(crate) fn new(inner: Arc<Inner>, since: u64) -> Self {
        ChangeStream {
            inner,
            next_since: since,
            buf: VecDeque::new(),
            fut: None,
            done: false,
        }
    }

    /// The next batch (convenience for `StreamExt::next`).
    pub async fn next_batch(&mut self) -> Option<Result<ChangeBatch>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next_batch(cx)).await
    }

    fn poll_next_batch(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ChangeBatch>>> {
        loop {
            if let Some(b) = self.buf.pop_front() {
                self.next_since = b.seq;
                return Poll::Ready(Some(Ok(b)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            if self.fut.is_none() {
                let inner = self.inner.clone();
                let since = self.next_since;
                self.fut = Some(Box::pin(async move { wait_page(inner, since).await }));
            }
            let Some(fut) = self.fut.as_mut() else {
                continue;
            };
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    self.fut = None;
                    match r {
                        Ok(page) if page.is_empty() => {
                            self.done = true;
                            return Poll::Ready(None);
                        }
                        Ok(page) => self.buf.extend(page),
                        Err(e) => {
                            self.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            }
        }
    }
}

impl futures_core::Stream for ChangeStream {
    type Item = Result<ChangeBatch>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_next_batch(cx)
    }
}

/// Wait until there is at least one record after `since` and return a page; an empty page
/// means the database closed.
async fn wait_page(inner: Arc<Inner>, since: u64) -> Result<Vec<ChangeBatch>> {
    loop {
        let listener = inner.commit_event.listen();
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(Vec::new());
        }
        inner.check_open()?;
        let (view, _pin) = inner.pinned_view();
        if view.seq > since {
            let page = read_page(&inner, &view, since, 256, &|_, _| true).await?;
            if !page.is_empty() {
                return Ok(page);
            }
        }
        listener.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip() {
        let mut b = RecordBuilder::new(42, Some("sync"));
        b.add(KIND_PUT, "users", Some(&EntityId([3; 16])));
        b.add(KIND_DROPPED, "old", None);
        let record = b.finish();
        let p = parse(&record).unwrap();
        assert_eq!(p.timestamp, 42);
        assert_eq!(p.origin, Some("sync"));
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.items[0], (KIND_PUT, "users", Some(EntityId([3; 16]))));
        assert!(parse(&[2]).is_none());
    }
}
