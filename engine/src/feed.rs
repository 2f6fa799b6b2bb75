//! The change feed: one record per committed transaction, in commit order.
//!
//! The record is written in the same WAL record (and so the same atomic commit) as the data it
//! describes, under key `03 | seq`. It names what changed; the values are read from the entity
//! versions written at that sequence, so a document is stored once. Records are retained for
//! `Options::feed_retention` transactions; entity versions only as long as a snapshot needs
//! them. When compaction discards a put's version because a later one replaces it, it also
//! leaves that change out of its record (`compaction::Retain`): the record stays, with its
//! other changes, and the later record carries the newer state. A put whose value is gone
//! but whose change is still in its record reads as [`ChangeOp::Superseded`].
//!
//! ## Record layout (value of `03 | seq`)
//!
//! Written in format 3, where consecutive changes to one collection share its name, and each
//! id is stored after the bytes it shares with the previous id of its group:
//!
//! ```text
//! format u8 (3) | commit time (ms since epoch) u64 LE | origin_len u16 LE | origin (UTF-8) |
//! group count u32 LE | per group: name_len u16 LE | name | change count u32 LE (>= 1) |
//!     per change: head u8 = kind << 5 | shared (kind: 1 put, 2 delete, 3 collection
//!                 dropped, 4 collection created; shared: 0-16, 0 for the group's first id
//!                 and for collection events) | id bytes shared..16 (kinds 1-2)
//! ```
//!
//! Format 2 (written 2026-12-06 to 2026-12-07, still read) is the same with a plain `kind u8`
//! and the whole 16-byte id per change. Format 1 (written before 2026-12-06, still read)
//! names the collection in every change:
//!
//! ```text
//! format u8 (1) | commit time u64 LE | origin_len u16 LE | origin | count u32 LE |
//! per change: kind u8 | name_len u16 LE | name | id (16 bytes, kinds 1-2)
//! ```
//!
//! A put or delete costs 17 - shared bytes in format 3. Ids that `insert` generates in one
//! burst share most of their bytes (UUIDv7: the millisecond timestamp first, and within a
//! millisecond the generator mostly adds 1 to the last id): 1,000 of them cost about 2.5
//! bytes each. Random ids share about log2(changes in the group) / 8 bytes. Format 2 spent 17
//! and format 1 19 plus the name's length.

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
    /// The entity was written by this transaction, but its value is gone: its collection was
    /// dropped later (the feed reports the drop after this record), or a later transaction
    /// overwrote or deleted it and compaction discarded this version without rewriting the
    /// record. Compaction normally leaves such a change out of the record altogether; it
    /// stays when one compaction discards more than 524,288 such versions, and in databases
    /// compacted by builds before 2026-12-07. A consumer that follows the feed gets the entity's
    /// newer state from the later record. Hold a [`Snapshot`](crate::Snapshot) to keep every
    /// intermediate value readable.
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

/// The record format [`RecordBuilder`] writes: groups, and each id stored after the bytes
/// it shares with the previous id of its group.
const FORMAT: u8 = 3;
/// Groups with whole ids (written 2026-12-06 to 2026-12-07), still read.
const FORMAT_GROUPED: u8 = 2;
/// The first format, still read.
const FORMAT_PER_CHANGE_NAMES: u8 = 1;

/// Encodes the feed record of a transaction (format 3: a group per run of changes to one
/// collection, ids prefix-shared within a group).
#[derive(Debug, Default)]
pub(crate) struct RecordBuilder {
    out: Vec<u8>,
    groups: u32,
    /// The open group: where its name starts in `out`, and where its change count is.
    group: Option<(usize, usize)>,
    group_changes: u32,
    /// The open group's last id.
    prev: Option<EntityId>,
}

impl RecordBuilder {
    pub(crate) fn new(timestamp: u64, origin: Option<&str>) -> Self {
        let mut out = vec![FORMAT];
        out.extend_from_slice(&timestamp.to_le_bytes());
        let o = origin.unwrap_or("").as_bytes();
        out.extend_from_slice(&(o.len() as u16).to_le_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(&0u32.to_le_bytes());
        RecordBuilder {
            out,
            ..RecordBuilder::default()
        }
    }

    pub(crate) fn add(&mut self, kind: u8, name: &str, id: Option<&EntityId>) {
        let same = self
            .group
            .is_some_and(|(at, count_at)| self.out.get(at..count_at) == Some(name.as_bytes()));
        if !same {
            self.close_group();
            self.out
                .extend_from_slice(&(name.len() as u16).to_le_bytes());
            let at = self.out.len();
            self.out.extend_from_slice(name.as_bytes());
            self.group = Some((at, self.out.len()));
            self.out.extend_from_slice(&0u32.to_le_bytes());
            self.groups += 1;
            self.prev = None;
        }
        match id {
            Some(id) => {
                let shared = self.prev.map_or(0, |p| {
                    p.as_bytes()
                        .iter()
                        .zip(id.as_bytes())
                        .take_while(|(a, b)| a == b)
                        .count()
                });
                self.out.push(kind << 5 | shared as u8);
                self.out.extend_from_slice(&id.as_bytes()[shared..]);
                self.prev = Some(*id);
            }
            None => self.out.push(kind << 5),
        }
        self.group_changes += 1;
    }

    fn close_group(&mut self) {
        if let Some((_, count_at)) = self.group.take() {
            self.out[count_at..count_at + 4].copy_from_slice(&self.group_changes.to_le_bytes());
            self.group_changes = 0;
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.close_group();
        let at = 1 + 8 + 2 + u16::from_le_bytes([self.out[9], self.out[10]]) as usize;
        self.out[at..at + 4].copy_from_slice(&self.groups.to_le_bytes());
        self.out
    }
}

/// Re-encodes `record` (any format this build reads) without the entity changes for which
/// `drop(kind, name, id)` is true, in the current format, into `out`. Returns false, and leaves `out` alone, when nothing
/// is dropped or the record does not parse (compaction then keeps it as it is: a reader
/// reports a malformed record, compaction does not hide it).
///
/// Compaction calls it for the changes whose versions it discards because a later version
/// replaces them (see `compaction::Retain`); the record itself stays, so the feed still
/// holds every committed transaction once.
pub(crate) fn strip_changes(
    record: &[u8],
    mut drop: impl FnMut(u8, &str, &EntityId) -> bool,
    out: &mut Vec<u8>,
) -> bool {
    let Ok(parsed) = parse(record) else {
        return false;
    };
    let gone: Vec<bool> = parsed
        .items
        .iter()
        .map(|(kind, name, id)| id.as_ref().is_some_and(|id| drop(*kind, name, id)))
        .collect();
    if !gone.contains(&true) {
        return false;
    }
    let mut b = RecordBuilder::new(parsed.timestamp, parsed.origin);
    for ((kind, name, id), gone) in parsed.items.iter().zip(gone) {
        if !gone {
            b.add(*kind, name, id.as_ref());
        }
    }
    *out = b.finish();
    true
}

/// A feed record read in place: names are borrowed from the record's bytes, so a change the
/// reader filters out costs no allocation (in formats 2 and 3 the changes of a group borrow
/// the same name: `read_page` asks its filter once per group).
struct Parsed<'a> {
    timestamp: u64,
    origin: Option<&'a str>,
    items: Vec<(u8, &'a str, Option<EntityId>)>,
}

/// Why a record could not be read.
#[derive(Debug, PartialEq, Eq)]
enum ParseError {
    Malformed,
    /// A format this build does not know (a newer build wrote it).
    UnknownFormat(u8),
}

/// Reads a record's fields in order.
struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], ParseError> {
        let s = self
            .b
            .get(self.p..self.p.saturating_add(n))
            .ok_or(ParseError::Malformed)?;
        self.p += n;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<usize, ParseError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]) as usize)
    }

    fn u32(&mut self) -> std::result::Result<u32, ParseError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn str(&mut self, n: usize) -> std::result::Result<&'a str, ParseError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| ParseError::Malformed)
    }

    /// A change of a group (formats 2 and 3): its head byte, then its id's bytes. In format 3
    /// (`shared_ids`) the head is `kind << 5 | shared` and the id's first `shared` bytes are
    /// those of `prev`, the group's previous id; in format 2 the head is the kind and the id
    /// is whole (as if `shared` were 0).
    fn group_change(
        &mut self,
        shared_ids: bool,
        prev: &mut Option<EntityId>,
    ) -> std::result::Result<(u8, Option<EntityId>), ParseError> {
        let head = self.u8()?;
        let (kind, shared) = if shared_ids {
            (head >> 5, (head & 31) as usize)
        } else {
            (head, 0)
        };
        match kind {
            KIND_PUT | KIND_DELETE => {
                let base = match prev {
                    Some(p) if shared <= 16 => *p,
                    None if shared == 0 => EntityId([0; 16]),
                    _ => return Err(ParseError::Malformed),
                };
                let mut id = base.0;
                id[shared..].copy_from_slice(self.take(16 - shared)?);
                let id = EntityId(id);
                *prev = Some(id);
                Ok((kind, Some(id)))
            }
            KIND_DROPPED | KIND_CREATED if shared == 0 => Ok((kind, None)),
            _ => Err(ParseError::Malformed),
        }
    }

    /// The id a change of `kind` carries (none for collection events).
    fn id_of(&mut self, kind: u8) -> std::result::Result<Option<EntityId>, ParseError> {
        match kind {
            KIND_PUT | KIND_DELETE => EntityId::from_slice(self.take(16)?)
                .map(Some)
                .ok_or(ParseError::Malformed),
            KIND_DROPPED | KIND_CREATED => Ok(None),
            _ => Err(ParseError::Malformed),
        }
    }
}

fn parse(b: &[u8]) -> std::result::Result<Parsed<'_>, ParseError> {
    let mut c = Cursor { b, p: 0 };
    let format = c.u8()?;
    if !matches!(format, FORMAT | FORMAT_GROUPED | FORMAT_PER_CHANGE_NAMES) {
        return Err(ParseError::UnknownFormat(format));
    }
    let t = c.take(8)?;
    let timestamp = u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
    let olen = c.u16()?;
    let origin = c.str(olen)?;
    let n = c.u32()?;
    // `n` is read from disk: a hint bounded by the record's length (an item takes a byte).
    let mut items = Vec::with_capacity((n as usize).min(b.len()));
    for _ in 0..n {
        if format == FORMAT_PER_CHANGE_NAMES {
            let kind = c.u8()?;
            let nlen = c.u16()?;
            let name = c.str(nlen)?;
            items.push((kind, name, c.id_of(kind)?));
        } else {
            let nlen = c.u16()?;
            let name = c.str(nlen)?;
            let count = c.u32()?;
            if count == 0 {
                return Err(ParseError::Malformed);
            }
            let mut prev = None;
            for _ in 0..count {
                let (kind, id) = c.group_change(format == FORMAT, &mut prev)?;
                items.push((kind, name, id));
            }
        }
    }
    if c.p != b.len() {
        return Err(ParseError::Malformed);
    }
    Ok(Parsed {
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
    // At most one record per sequence in the view (and no large allocation up front for a
    // large limit).
    let most = usize::try_from(view.seq.saturating_sub(since)).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(limit.min(most).min(1024));
    while out.len() < limit {
        let Some((key, seq, value)) = it.next_live(view.seq).await? else {
            break;
        };
        let bad = || Error::corruption("change feed", seq, "malformed change-feed record");
        if keys::parse_feed_key(&key) != Some(seq) {
            return Err(bad());
        }
        let parsed = parse(&value).map_err(|e| match e {
            ParseError::Malformed => bad(),
            ParseError::UnknownFormat(f) => Error::UnsupportedFormat {
                file: "change feed".into(),
                detail: format!(
                    "record format {f} at sequence {seq}; this build reads formats {FORMAT_PER_CHANGE_NAMES} to {FORMAT}"
                ),
            },
        })?;
        let mut changes = Vec::with_capacity(parsed.items.len());
        // The filter's answer for the last name (a group's changes borrow one name).
        let mut last: Option<(&str, bool)> = None;
        for (kind, name, id) in parsed.items {
            let kept = match last {
                Some((n, k)) if std::ptr::eq(n, name) => k,
                _ => {
                    let k = keep(parsed.origin, name);
                    last = Some((name, k));
                    k
                }
            };
            if !kept {
                continue;
            }
            let op = match (kind, id) {
                (KIND_PUT, Some(id)) => {
                    let coll = catalog_id_at(&catalog, name, seq).ok_or_else(bad)?;
                    let key = keys::entity_key_array(coll, &id);
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
        b.add(KIND_CREATED, "users", None);
        b.add(KIND_DROPPED, "old", None);
        b.add(KIND_PUT, "users", Some(&EntityId([3; 16])));
        b.add(KIND_DELETE, "users", Some(&EntityId([4; 16])));
        b.add(KIND_PUT, "z", Some(&EntityId([5; 16])));
        let record = b.finish();
        // Four groups: "users" (created), "old", "users" (two writes), "z". Ids [3; 16] and
        // [4; 16] share nothing; each group's first id is whole.
        let head = 1 + 8 + 2 + 4 + 4;
        let groups = (2 + 5 + 4) * 2 + (2 + 3 + 4) + (2 + 1 + 4);
        assert_eq!(record.len(), head + groups + 1 + 1 + 17 * 3);
        assert_eq!(record[0], 3);
        assert_eq!(record[15..19], 4u32.to_le_bytes());
        let p = parse(&record).unwrap();
        assert_eq!(p.timestamp, 42);
        assert_eq!(p.origin, Some("sync"));
        assert_eq!(
            p.items,
            vec![
                (KIND_CREATED, "users", None),
                (KIND_DROPPED, "old", None),
                (KIND_PUT, "users", Some(EntityId([3; 16]))),
                (KIND_DELETE, "users", Some(EntityId([4; 16]))),
                (KIND_PUT, "z", Some(EntityId([5; 16]))),
            ]
        );
        // The changes of a group borrow one name.
        assert!(std::ptr::eq(p.items[2].1, p.items[3].1));
        let empty = RecordBuilder::new(7, None).finish();
        let p = parse(&empty).unwrap();
        assert_eq!((p.timestamp, p.origin, p.items.len()), (7, None, 0));
    }

    /// Format 3 stores an id after the bytes it shares with the group's previous one; the
    /// next group starts whole again.
    #[test]
    fn ids_share_prefixes_within_a_group() {
        let mut a = [7u8; 16];
        let b = a;
        a[15] = 1;
        let mut c = b;
        c[10] = 0;
        let mut r = RecordBuilder::new(1, None);
        r.add(KIND_PUT, "c", Some(&EntityId(a)));
        r.add(KIND_DELETE, "c", Some(&EntityId(b)));
        r.add(KIND_PUT, "c", Some(&EntityId(c)));
        r.add(KIND_PUT, "d", Some(&EntityId(c)));
        let record = r.finish();
        let head = 1 + 8 + 2 + 4;
        // "c": a whole (17), b shares 15 (2), c shares 10 (7); "d": c whole again (17).
        assert_eq!(record.len(), head + (2 + 1 + 4) * 2 + 17 + 2 + 7 + 17);
        let p = parse(&record).unwrap();
        assert_eq!(
            p.items,
            vec![
                (KIND_PUT, "c", Some(EntityId(a))),
                (KIND_DELETE, "c", Some(EntityId(b))),
                (KIND_PUT, "c", Some(EntityId(c))),
                (KIND_PUT, "d", Some(EntityId(c))),
            ]
        );
        // A repeated id shares all 16 bytes and stores none; more than 16 is malformed.
        let mut r = RecordBuilder::new(1, None);
        r.add(KIND_PUT, "c", Some(&EntityId(a)));
        r.add(KIND_DELETE, "c", Some(&EntityId(a)));
        let record = r.finish();
        assert_eq!(record[record.len() - 1], KIND_DELETE << 5 | 16);
        assert_eq!(
            parse(&record).unwrap().items[1],
            (KIND_DELETE, "c", Some(EntityId(a)))
        );
        let mut bad = record;
        let last = bad.len() - 1;
        bad[last] = KIND_DELETE << 5 | 17;
        assert_eq!(parse(&bad).err(), Some(ParseError::Malformed));
    }

    /// The ids `insert` generates (UUIDv7, consecutive within a millisecond) cost a few
    /// bytes each in a bulk insert's record instead of 17.
    #[test]
    fn generated_ids_are_cheap_in_a_record() {
        let clock = entidb_io::ManualClock::new(1_780_000_000_000);
        let entropy = entidb_io::SeededEntropy::new(7);
        let ids = crate::ids::IdGenerator::default();
        let mut r = RecordBuilder::new(1, None);
        let mut want = vec![];
        for i in 0..1000 {
            if i % 100 == 0 {
                clock.advance(std::time::Duration::from_millis(1));
            }
            let id = ids.next(&clock, &entropy);
            r.add(KIND_PUT, "items", Some(&id));
            want.push((KIND_PUT, "items", Some(id)));
        }
        let record = r.finish();
        assert!(
            record.len() < 1000 * 4,
            "{} bytes for 1,000 changes",
            record.len()
        );
        // The figure docs/design.md 3.5 quotes (the clock and entropy are fixed).
        assert_eq!(record.len(), 2_489);
        assert_eq!(parse(&record).unwrap().items, want);
    }

    /// Format 2 records (groups, whole ids) still read.
    #[test]
    fn format_2_records_still_read() {
        let mut r = vec![2u8];
        r.extend_from_slice(&5u64.to_le_bytes());
        r.extend_from_slice(&1u16.to_le_bytes());
        r.push(b'o');
        r.extend_from_slice(&1u32.to_le_bytes());
        r.extend_from_slice(&1u16.to_le_bytes());
        r.push(b'c');
        r.extend_from_slice(&2u32.to_le_bytes());
        for (kind, id) in [(KIND_PUT, [1u8; 16]), (KIND_DELETE, [1u8; 16])] {
            r.push(kind);
            r.extend_from_slice(&id);
        }
        let p = parse(&r).unwrap();
        assert_eq!((p.timestamp, p.origin), (5, Some("o")));
        assert_eq!(
            p.items,
            vec![
                (KIND_PUT, "c", Some(EntityId([1; 16]))),
                (KIND_DELETE, "c", Some(EntityId([1; 16])))
            ]
        );
        let mut out = Vec::new();
        assert!(strip_changes(
            &r,
            |kind, _, _| kind == KIND_DELETE,
            &mut out
        ));
        assert_eq!(out[0], FORMAT);
        assert_eq!(
            parse(&out).unwrap().items,
            vec![(KIND_PUT, "c", Some(EntityId([1; 16])))]
        );
    }

    /// Records written before format 2 (the collection named in every change) still read.
    #[test]
    fn format_1_records_still_read() {
        let mut r = vec![1u8];
        r.extend_from_slice(&9u64.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(&2u32.to_le_bytes());
        for (kind, name, id) in [(KIND_PUT, "a", Some([1u8; 16])), (KIND_CREATED, "bb", None)] {
            r.push(kind);
            r.extend_from_slice(&(name.len() as u16).to_le_bytes());
            r.extend_from_slice(name.as_bytes());
            if let Some(id) = id {
                r.extend_from_slice(&id);
            }
        }
        let p = parse(&r).unwrap();
        assert_eq!((p.timestamp, p.origin), (9, None));
        assert_eq!(
            p.items,
            vec![
                (KIND_PUT, "a", Some(EntityId([1; 16]))),
                (KIND_CREATED, "bb", None)
            ]
        );
        // Compaction rewrites one without a superseded change in the current format.
        let mut out = Vec::new();
        assert!(strip_changes(&r, |_, _, _| true, &mut out));
        assert_eq!(out[0], FORMAT);
        let p = parse(&out).unwrap();
        assert_eq!(
            (p.timestamp, p.items),
            (9, vec![(KIND_CREATED, "bb", None)])
        );
    }

    #[test]
    fn bad_records_are_refused() {
        let mut b = RecordBuilder::new(1, Some("o"));
        b.add(KIND_PUT, "c", Some(&EntityId([1; 16])));
        let good = b.finish();
        assert!(parse(&good).is_ok());
        // Every strict prefix, and any trailing byte.
        for n in 0..good.len() {
            assert_eq!(
                parse(&good[..n]).err(),
                Some(ParseError::Malformed),
                "prefix {n}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse(&long).err(), Some(ParseError::Malformed));
        // A group of no changes, and an unknown change kind.
        let mut zero = good[..1 + 8 + 2 + 1].to_vec();
        zero.extend_from_slice(&1u32.to_le_bytes());
        zero.extend_from_slice(&1u16.to_le_bytes());
        zero.push(b'c');
        zero.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse(&zero).err(), Some(ParseError::Malformed));
        let mut kind = good.clone();
        let at = good.len() - 17;
        kind[at] = 9;
        assert_eq!(parse(&kind).err(), Some(ParseError::Malformed));
        // A shared prefix on a group's first id, or longer than an id; each change is followed
        // by a valid one, so that only the head byte is wrong (not the record's length).
        let mut b = RecordBuilder::new(1, Some("o"));
        b.add(KIND_PUT, "c", Some(&EntityId([1; 16])));
        b.add(KIND_CREATED, "c", None);
        b.add(KIND_DELETE, "c", Some(&EntityId([2; 16])));
        let two = b.finish();
        assert!(parse(&two).is_ok());
        let first = 1 + 8 + 2 + 1 + 4 + 2 + 1 + 4;
        for (record, at, head) in [
            (&two, first, KIND_PUT << 5 | 1),
            (&two, first + 17, KIND_CREATED << 5 | 1),
            (&good, at, KIND_PUT << 5 | 1),
            (&good, at, KIND_PUT << 5 | 17),
            (&good, at, KIND_CREATED << 5 | 1),
        ] {
            let mut bad = record.clone();
            bad[at] = head;
            assert_eq!(
                parse(&bad).err(),
                Some(ParseError::Malformed),
                "head {head:#x} at {at}"
            );
        }
        // A format from a newer build is named as such.
        let mut newer = good;
        newer[0] = 4;
        assert_eq!(parse(&newer).err(), Some(ParseError::UnknownFormat(4)));
    }

    proptest::proptest! {
        /// Any sequence of changes reads back as written, and any bytes are read without a
        /// panic (a corrupt record is an error, never a crash).
        #[test]
        fn records_roundtrip_and_arbitrary_bytes_never_panic(
            changes in proptest::collection::vec(
                (
                    1u8..=4,
                    proptest::sample::select(vec!["a", "bb", "items", ""]),
                    // Ids from a small alphabet share prefixes of many lengths.
                    proptest::array::uniform16(0u8..2),
                ),
                0..40,
            ),
            origin in proptest::option::of("[a-z]{0,8}"),
            noise in proptest::collection::vec(0u8.., 0..200),
        ) {
            let mut b = RecordBuilder::new(5, origin.as_deref());
            let mut want = Vec::new();
            for (kind, name, id) in &changes {
                let id = matches!(*kind, KIND_PUT | KIND_DELETE).then_some(EntityId(*id));
                b.add(*kind, name, id.as_ref());
                want.push((*kind, *name, id));
            }
            let record = b.finish();
            let p = parse(&record).unwrap();
            proptest::prop_assert_eq!(&p.items, &want);
            proptest::prop_assert_eq!(p.origin, origin.as_deref().filter(|o| !o.is_empty()));
            // Compaction's rewrite leaves out exactly the changes asked for, in order, and
            // never touches a record it cannot parse.
            let mut out = vec![0xEE];
            let drop_odd = |_: u8, _: &str, id: &EntityId| id.0[0] % 2 == 1;
            let kept: Vec<_> = p
                .items
                .iter()
                .filter(|(kind, name, id)| !id.as_ref().is_some_and(|id| drop_odd(*kind, name, id)))
                .cloned()
                .collect();
            let stripped = strip_changes(&record, drop_odd, &mut out);
            proptest::prop_assert_eq!(stripped, kept.len() < p.items.len());
            if stripped {
                let q = parse(&out).unwrap();
                proptest::prop_assert_eq!((q.timestamp, q.origin, q.items), (p.timestamp, p.origin, kept));
            } else {
                proptest::prop_assert_eq!(&out, &vec![0xEE]);
            }
            let _ = parse(&noise);
            let mut framed = vec![FORMAT];
            framed.extend_from_slice(&noise);
            let _ = parse(&framed);
            // A record that does not parse (one byte too many) is kept as it is.
            let mut bad = record.clone();
            bad.push(0);
            let mut out = vec![0xEE];
            proptest::prop_assert!(!strip_changes(&bad, |_, _, _| true, &mut out));
            proptest::prop_assert_eq!(out, vec![0xEE]);
        }
    }
}
