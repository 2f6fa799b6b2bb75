//! Snapshots and write transactions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::catalog::check_name;
use crate::cbor::{self, Value};
use crate::db::{Inner, Pin, View, WriterState, read, write};
use crate::document::{Document, Page, ScanOptions};
use crate::error::{Error, Result};
use crate::feed::{self, RecordBuilder};
use crate::ids::EntityId;
use crate::index::maintain::TxIndexes;
use crate::index::search::{self, SearchHit, SearchQuery};
use crate::index::{IndexDef, IndexInfo, IndexKind, IndexSpec, Lookup, Query};

fn check_search(def: &IndexDef, collection: &str) -> Result<()> {
    if def.spec.kind != IndexKind::Search {
        return Err(Error::InvalidArgument(format!(
            "index {:?} of {collection:?} is not a search index; use lookup",
            def.name
        )));
    }
    Ok(())
}
use crate::keys;
use crate::options::Durability;
use crate::overlay::Overlay;
use crate::read::ReadCtx;
use crate::wal::{Batch, BatchOp};

/// A consistent, read-only view of the database at one sequence. Readers never block the
/// writer and are never blocked by it; a snapshot keeps seeing the same data however long it
/// lives (compaction keeps what it needs).
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) inner: Arc<Inner>,
    pub(crate) view: View,
    pub(crate) _pin: Pin,
}

impl Snapshot {
    pub(crate) fn new(inner: &Arc<Inner>) -> Snapshot {
        let (view, pin) = inner.pinned_view();
        Snapshot {
            inner: inner.clone(),
            view,
            _pin: pin,
        }
    }

    /// The sequence this snapshot reads at.
    pub fn sequence(&self) -> u64 {
        self.view.seq
    }

    pub(crate) fn ctx(&self) -> ReadCtx<'_> {
        ReadCtx {
            inner: &self.inner,
            version: &self.view.version,
            seq: self.view.seq,
            overlay: None,
            pending_version: 0,
        }
    }

    fn resolve(&self, name: &str) -> Option<u32> {
        read(&self.inner.catalog).resolve(name, self.view.seq)
    }

    /// Read access to one collection.
    pub fn collection<'a>(&'a self, name: &'a str) -> SnapshotCollection<'a> {
        SnapshotCollection {
            snap: self,
            name,
            coll: self.resolve(name),
        }
    }

    /// The index definitions of a collection in this snapshot.
    pub(crate) fn index_defs(&self, name: &str) -> Vec<Arc<IndexDef>> {
        match self.resolve(name) {
            Some(c) => read(&self.inner.catalog).indexes_of(c, self.view.seq),
            None => Vec::new(),
        }
    }

    /// Names of the collections that exist in this snapshot.
    pub fn collections(&self) -> Vec<String> {
        read(&self.inner.catalog)
            .list(self.view.seq)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }
}

/// Reads of one collection in a [`Snapshot`].
#[derive(Debug, Clone, Copy)]
pub struct SnapshotCollection<'a> {
    snap: &'a Snapshot,
    name: &'a str,
    /// The collection's id as of the snapshot (stable for its whole life).
    coll: Option<u32>,
}

impl<'a> SnapshotCollection<'a> {
    /// The collection's name.
    pub fn name(&self) -> &str {
        self.name
    }
    /// The document with this id.
    pub async fn get_document(&self, id: EntityId) -> Result<Option<Document>> {
        self.snap.ctx().get(self.coll, id).await
    }
    /// The entity with this id, decoded.
    pub async fn get<T: DeserializeOwned>(&self, id: EntityId) -> Result<Option<T>> {
        self.get_document(id).await?.map(|d| d.decode()).transpose()
    }
    /// Whether the entity exists.
    pub async fn exists(&self, id: EntityId) -> Result<bool> {
        Ok(self.get_document(id).await?.is_some())
    }
    /// The entity's version, if it exists.
    pub async fn version(&self, id: EntityId) -> Result<Option<u64>> {
        Ok(self.get_document(id).await?.map(|d| d.version))
    }
    /// A page of entities in id order.
    pub async fn scan(&self, opts: ScanOptions) -> Result<Page> {
        self.snap.ctx().scan(self.coll, opts, |_| true).await
    }
    /// A page of the entities that satisfy `pred`, in id order (a full scan, counted in
    /// stats); `opts.limit` counts matches. Fails with [`Error::FullScanForbidden`] if the
    /// database forbids full scans.
    pub async fn scan_where(
        &self,
        opts: ScanOptions,
        pred: impl FnMut(&Document) -> bool,
    ) -> Result<Page> {
        self.snap.inner.check_full_scan(self.name)?;
        self.snap.ctx().scan(self.coll, opts, pred).await
    }

    /// The indexes of this collection in this snapshot.
    pub fn indexes(&self) -> Vec<IndexInfo> {
        match self.coll {
            Some(c) => read(&self.snap.inner.catalog)
                .indexes_of(c, self.snap.view.seq)
                .iter()
                .map(|d| d.info())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Full-text search through a search index, as of this snapshot: hits ranked by BM25.
    /// See [`crate::index::search`].
    pub async fn search(&self, index: &str, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        let (coll, def) = self.index_def(index)?;
        check_search(&def, self.name)?;
        search::search(&self.snap.ctx(), coll, self.name, &def, query).await
    }

    /// Look up documents through an index, lazily, as of this snapshot. Fails with
    /// [`Error::IndexNotFound`] if the index does not exist in this snapshot.
    pub async fn lookup(&self, index: &str, query: &Query) -> Result<Lookup<'a>> {
        let (coll, def) = self.index_def(index)?;
        Lookup::new(self.snap.ctx(), coll, self.name, def, query)
    }

    fn index_def(&self, index: &str) -> Result<(u32, Arc<IndexDef>)> {
        let def = self.coll.and_then(|c| {
            read(&self.snap.inner.catalog)
                .indexes_of(c, self.snap.view.seq)
                .into_iter()
                .find(|d| d.name == index)
        });
        match (self.coll, def) {
            (Some(coll), Some(def)) => Ok((coll, def)),
            _ => Err(Error::IndexNotFound {
                collection: self.name.to_owned(),
                index: index.to_owned(),
            }),
        }
    }
    /// Number of entities (a full scan of the collection).
    pub async fn count(&self) -> Result<u64> {
        self.snap.ctx().count(self.coll).await
    }
}

/// A write transaction. Only one exists at a time (the single writer); others wait in
/// [`Database::begin`](crate::Database::begin). Reads see the transaction's own writes.
/// Nothing is visible to others until [`WriteTxn::commit`] returns; dropping the transaction
/// (or [`WriteTxn::abort`]) discards it.
pub struct WriteTxn {
    pub(crate) inner: Arc<Inner>,
    guard: Option<async_lock::MutexGuardArc<WriterState>>,
    view: View,
    pub(crate) read_seq: u64,
    pub(crate) writes: Overlay,
    pub(crate) created: BTreeMap<String, u32>,
    dropped: Vec<(String, u32)>,
    pub(crate) ix: TxIndexes,
    origin: Option<String>,
    durability: Durability,
    /// Change-feed holds this transaction sets (`None`: releases), in call order.
    holds: Vec<(String, Option<u64>)>,
}

impl std::fmt::Debug for WriteTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTxn")
            .field("read_seq", &self.read_seq)
            .field("writes", &self.writes.len())
            .field("durability", &self.durability)
            .finish()
    }
}

impl WriteTxn {
    pub(crate) async fn begin(inner: &Arc<Inner>) -> Result<WriteTxn> {
        inner.check_writable()?;
        let guard = inner.lock_writer_arc().await;
        inner.check_open()?;
        let read_seq = guard.last_seq;
        let view = View {
            version: inner.view().version,
            seq: read_seq,
        };
        Ok(WriteTxn {
            inner: inner.clone(),
            guard: Some(guard),
            view,
            read_seq,
            writes: Overlay::new(),
            created: BTreeMap::new(),
            dropped: Vec::new(),
            ix: TxIndexes::default(),
            origin: None,
            durability: Durability::Durable,
            holds: Vec::new(),
        })
    }

    /// Tag this transaction's change-feed record with an origin (a replicator sets it so that
    /// it can recognise, and skip, its own writes in the feed). At most
    /// [`MAX_ORIGIN_BYTES`](crate::MAX_ORIGIN_BYTES) bytes.
    pub fn set_origin(&mut self, origin: impl Into<String>) -> Result<()> {
        let origin = origin.into();
        if origin.len() > crate::feed::MAX_ORIGIN_BYTES {
            return Err(Error::TooLarge {
                what: "origin tag",
                size: origin.len() as u64,
                limit: crate::feed::MAX_ORIGIN_BYTES as u64,
            });
        }
        self.origin = Some(origin);
        Ok(())
    }

    /// Choose how durable the commit must be before [`WriteTxn::commit`] returns.
    pub fn set_durability(&mut self, d: Durability) {
        self.durability = d;
    }

    /// The sequence this transaction reads at (its commit will get the next one).
    pub fn read_sequence(&self) -> u64 {
        self.read_seq
    }

    /// Hold the change feed after `position` under `name`: from this transaction's commit
    /// on, the records after `position` stay retained, whatever
    /// [`Options::feed_retention`](crate::Options::feed_retention) says, until the hold is
    /// moved or released. A consumer of the feed that must never miss a record (a
    /// replicator's capture) stores its position and its hold in the same transaction, so
    /// that the two cannot disagree after a crash. `position` is the last sequence the
    /// holder has processed; it may be this transaction's own sequence
    /// ([`read_sequence`](WriteTxn::read_sequence) + 1) and no later. Setting a hold below
    /// what the feed is sure to retain when this transaction commits (retention counted at
    /// its sequence, other holds at their newest positions) fails with
    /// [`Error::FeedTruncated`]: a hold cannot bring records back.
    ///
    /// A hold that is never released keeps every later record: release the holds of
    /// consumers that are gone ([`Database::feed_holds`](crate::Database::feed_holds) lists
    /// them).
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use std::sync::Arc;
    /// use entidb::{Database, Options};
    /// let backend = Arc::new(entidb::io::MemoryBackend::new());
    /// let db = Database::open_with(backend, Options::default().feed_retention(2)).await?;
    /// let mut tx = db.begin().await?;
    /// tx.hold_feed("exporter", 0)?;
    /// tx.commit().await?;
    /// for i in 0..5 {
    ///     db.collection("notes").insert(&i).await?;
    /// }
    /// // Retention alone would keep the last 2 records; the hold keeps them all.
    /// assert_eq!(db.oldest_retained_sequence(), 1);
    /// assert_eq!(db.changes_page(0, 100).await?.len(), 6);
    /// db.release_feed_hold("exporter").await?;
    /// assert_eq!(db.oldest_retained_sequence(), db.last_sequence() - 1);
    /// # Ok::<(), entidb::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn hold_feed(&mut self, name: &str, position: u64) -> Result<()> {
        crate::catalog::check_hold_name(name)?;
        if position > self.read_seq + 1 {
            return Err(Error::InvalidArgument(format!(
                "feed hold {name:?} at {position}: this transaction commits sequence {} \
                 at most",
                self.read_seq + 1
            )));
        }
        // Against the highest value retention may reach before this commit, not today's:
        // a sync of an earlier commit may make another hold's move count meanwhile.
        let oldest = self.inner.feed_oldest_bound(self.read_seq);
        if position.saturating_add(1) < oldest {
            return Err(Error::FeedTruncated {
                requested: position + 1,
                oldest,
            });
        }
        self.writes.insert(
            Arc::from(keys::feed_hold_key(name)),
            Some(Arc::from(&position.to_be_bytes()[..])),
        );
        self.holds.push((name.to_owned(), Some(position)));
        Ok(())
    }

    /// The position of change-feed hold `name` as this transaction sees it (its own
    /// [`hold_feed`](WriteTxn::hold_feed) and release calls included); `None` if there is none.
    pub fn feed_hold(&self, name: &str) -> Option<u64> {
        match self.holds.iter().rev().find(|(n, _)| n == name) {
            Some((_, position)) => *position,
            // One lookup, not a copy of every hold: the sync client asks on each commit.
            None => read(&self.inner.catalog).hold(name),
        }
    }

    /// Release the change-feed hold `name` (see [`WriteTxn::hold_feed`]) when this
    /// transaction commits: the records it kept fall back to
    /// [`Options::feed_retention`](crate::Options::feed_retention). Returns whether the hold
    /// existed.
    pub fn release_feed_hold(&mut self, name: &str) -> Result<bool> {
        crate::catalog::check_hold_name(name)?;
        let held = self.feed_hold(name).is_some();
        if held {
            self.writes
                .insert(Arc::from(keys::feed_hold_key(name)), None);
            self.holds.push((name.to_owned(), None));
        }
        Ok(held)
    }

    pub(crate) fn ctx(&self) -> ReadCtx<'_> {
        ReadCtx {
            inner: &self.inner,
            version: &self.view.version,
            seq: self.read_seq,
            overlay: Some(&self.writes),
            pending_version: self.read_seq + 1,
        }
    }

    pub(crate) fn resolve(&self, name: &str) -> Option<u32> {
        if let Some(&id) = self.created.get(name) {
            return Some(id);
        }
        if self.dropped.iter().any(|(n, _)| n == name) {
            return None;
        }
        read(&self.inner.catalog).resolve(name, self.read_seq)
    }

    pub(crate) fn resolve_or_create(&mut self, name: &str) -> Result<u32> {
        if let Some(id) = self.resolve(name) {
            return Ok(id);
        }
        check_name(name)?;
        let cat_next = read(&self.inner.catalog).next_id();
        let tx_next = self
            .created
            .values()
            .chain(self.dropped.iter().map(|(_, i)| i))
            .max()
            .map_or(0, |m| m + 1);
        let id = cat_next.max(tx_next);
        self.writes.insert(
            Arc::from(keys::catalog_key(name)),
            Some(Arc::from(&id.to_be_bytes()[..])),
        );
        self.created.insert(name.to_owned(), id);
        Ok(id)
    }

    /// Create a collection; fails with [`Error::CollectionExists`] if it exists. (Writing to
    /// a collection that does not exist creates it too.)
    pub fn create_collection(&mut self, name: &str) -> Result<()> {
        if self.resolve(name).is_some() {
            return Err(Error::CollectionExists(name.to_owned()));
        }
        self.resolve_or_create(name).map(|_| ())
    }

    /// Drop a collection and all its entities. Returns whether it existed.
    pub fn drop_collection(&mut self, name: &str) -> Result<bool> {
        let Some(id) = self.resolve(name) else {
            return Ok(false);
        };
        self.drop_indexes_of(id);
        self.discard_pending(&keys::collection_start(id), &keys::collection_end(id));
        if self.created.remove(name).is_some() {
            self.writes.remove(&keys::catalog_key(name)[..]);
            return Ok(true);
        }
        self.writes.insert(Arc::from(keys::catalog_key(name)), None);
        self.writes.insert(
            Arc::from(keys::dropped_key(id)),
            Some(Arc::from(name.as_bytes())),
        );
        self.dropped.push((name.to_owned(), id));
        Ok(true)
    }

    /// Forget the pending writes of keys in `[from, end)`.
    pub(crate) fn discard_pending(&mut self, from: &[u8], end: &[u8]) {
        self.writes.discard_range(from, end);
    }

    /// Names of the collections as this transaction sees them.
    pub fn collections(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.inner.catalog)
            .list(self.read_seq)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !self.dropped.iter().any(|(d, _)| d == n))
            .collect();
        names.extend(self.created.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// Read and write access to one collection inside this transaction.
    pub fn collection<'a>(&'a mut self, name: &'a str) -> TxCollection<'a> {
        TxCollection { tx: self, name }
    }

    async fn check_expected(&self, name: &str, id: EntityId, expected: Option<u64>) -> Result<()> {
        let actual = match self.resolve(name) {
            Some(coll) => self
                .ctx()
                .committed(&keys::entity_key(coll, &id))
                .await?
                .map(|(v, _)| v),
            None => None,
        };
        if actual != expected {
            return Err(Error::VersionConflict {
                collection: name.to_owned(),
                id,
                expected,
                actual,
            });
        }
        Ok(())
    }

    fn put_bytes(&mut self, name: &str, id: EntityId, bytes: Arc<[u8]>) -> Result<()> {
        if bytes.len() > self.inner.options.max_document_bytes {
            return Err(Error::TooLarge {
                what: "document",
                size: bytes.len() as u64,
                limit: self.inner.options.max_document_bytes as u64,
            });
        }
        let coll = self.resolve_or_create(name)?;
        let key: Arc<[u8]> = Arc::from(&keys::entity_key_array(coll, &id)[..]);
        self.note_entity_write(coll, &key);
        self.writes.insert(key, Some(bytes));
        Ok(())
    }

    /// Commit: the transaction is durable (per its [`Durability`]) when this returns, and
    /// visible to new snapshots. Returns the commit's sequence (its entities' new version);
    /// a transaction that wrote nothing returns the sequence it read at.
    pub async fn commit(mut self) -> Result<u64> {
        let Some(guard) = self.guard.take() else {
            return Err(Error::InvalidArgument(
                "transaction already finished".into(),
            ));
        };
        // Index entries join the batch; a unique violation fails the commit before anything
        // is appended (the guard is dropped with the transaction).
        let indexed = async {
            self.flush_indexes().await?;
            self.check_unique().await
        }
        .await;
        if let Err(e) = indexed {
            self.inner.counters.aborts.fetch_add(1, Relaxed);
            return Err(e);
        }
        if self.writes.is_empty() {
            return Ok(self.read_seq);
        }
        // `close()` sets `closed` and then waits for the writer lock (which this transaction
        // holds) before it releases the directory: checked here, under the lock, nothing
        // is appended after a close.
        self.inner.check_open()?;
        let seq = guard.last_seq + 1;
        let mut feed = RecordBuilder::new(self.inner.clock.now_millis(), self.origin.as_deref());
        // One sort of the pending writes (see `Overlay`); one walk builds the feed record and
        // the batch.
        let writes = std::mem::take(&mut self.writes).into_sorted();
        let mut ops = Vec::with_capacity(writes.len() + 1);
        let mut entity_writes = 0u64;
        {
            let catalog = read(&self.inner.catalog);
            let name_of = |coll: u32| -> Option<&str> {
                self.created
                    .iter()
                    .find(|(_, i)| **i == coll)
                    .map(|(n, _)| n.as_str())
                    .or_else(|| catalog.name_of(coll))
            };
            for name in self.created.keys() {
                feed.add(feed::KIND_CREATED, name, None);
            }
            for (name, _) in &self.dropped {
                feed.add(feed::KIND_DROPPED, name, None);
            }
            // Writes come in key order, so a collection's entities are one run: its name is
            // looked up once per run, not per write.
            let mut named: Option<(u32, &str)> = None;
            for (k, v) in writes {
                if let Some((coll, id)) = k.entity() {
                    let name = match named {
                        Some((c, name)) if c == coll => name,
                        _ => {
                            let name = name_of(coll).ok_or_else(|| {
                                Error::InvalidArgument(format!(
                                    "write to unknown collection id {coll}"
                                ))
                            })?;
                            named = Some((coll, name));
                            name
                        }
                    };
                    let kind = if v.is_some() {
                        feed::KIND_PUT
                    } else {
                        feed::KIND_DELETE
                    };
                    feed.add(kind, name, Some(&id));
                    entity_writes += 1;
                }
                ops.push(BatchOp {
                    key: k.into_key(),
                    value: v,
                });
            }
        }
        ops.push(BatchOp {
            key: Arc::from(keys::feed_key(seq)),
            value: Some(Arc::from(feed.finish())),
        });
        let created = std::mem::take(&mut self.created);
        let dropped = std::mem::take(&mut self.dropped);
        let ix = std::mem::take(&mut self.ix);
        let holds = std::mem::take(&mut self.holds);
        let inner = self.inner.clone();
        let seq = inner
            .commit_locked(guard, Batch { ops }, self.durability, |seq| {
                let durable_seq = inner.durable_seq();
                let mut cat = write(&inner.catalog);
                for (name, position) in &holds {
                    cat.set_hold(name, seq, *position, durable_seq);
                }
                for (name, id) in &created {
                    cat.create(name, *id, seq);
                }
                for (name, id) in &dropped {
                    cat.drop_at(name, *id, seq);
                }
                for (_, id) in &ix.dropped {
                    cat.drop_index(*id, seq);
                }
                for (coll, def) in ix.created {
                    cat.create_index(coll, def, seq);
                }
            })
            .await?;
        inner.counters.commits.fetch_add(1, Relaxed);
        inner.counters.writes.fetch_add(entity_writes, Relaxed);
        Ok(seq)
    }

    /// Discard the transaction.
    pub fn abort(mut self) {
        self.guard = None;
        self.inner.counters.aborts.fetch_add(1, Relaxed);
    }
}

impl Drop for WriteTxn {
    fn drop(&mut self) {
        if self.guard.take().is_some() {
            self.inner.counters.aborts.fetch_add(1, Relaxed);
        }
    }
}

/// Reads and writes of one collection inside a [`WriteTxn`].
#[derive(Debug)]
pub struct TxCollection<'a> {
    tx: &'a mut WriteTxn,
    name: &'a str,
}

impl TxCollection<'_> {
    /// Insert a new entity with a generated (time-ordered) id.
    pub fn insert<T: Serialize + ?Sized>(&mut self, doc: &T) -> Result<EntityId> {
        let id = self
            .tx
            .inner
            .ids
            .next(&*self.tx.inner.clock, &*self.tx.inner.entropy);
        self.put(id, doc)?;
        Ok(id)
    }
    /// Write an entity (insert or replace).
    pub fn put<T: Serialize + ?Sized>(&mut self, id: EntityId, doc: &T) -> Result<()> {
        let bytes = cbor::to_canonical_vec(doc)?;
        self.tx.put_bytes(self.name, id, Arc::from(bytes))
    }
    /// Write an entity given as CBOR bytes; they are validated and canonicalized.
    pub fn put_cbor(&mut self, id: EntityId, bytes: &[u8]) -> Result<()> {
        // Already-canonical input (the common case) is copied once, straight into the Arc.
        let bytes = cbor::canonicalize_cow(bytes)?;
        self.tx.put_bytes(self.name, id, Arc::from(&*bytes))
    }
    /// Write an entity given as [`Canonical`](cbor::Canonical) bytes: stored as they are,
    /// shared rather than copied, and not checked again (the type guarantees them).
    pub fn put_canonical(&mut self, id: EntityId, doc: &cbor::Canonical) -> Result<()> {
        self.tx.put_bytes(self.name, id, Arc::clone(doc.shared()))
    }
    /// Write an entity given as a dynamic value.
    /// Fails with [`Error::Document`] (nothing written) if a map holds two equal keys or the
    /// value nests too deeply: such a value has no canonical encoding.
    pub fn put_value(&mut self, id: EntityId, value: &Value) -> Result<()> {
        let bytes = cbor::try_encode(value)?;
        self.tx.put_bytes(self.name, id, Arc::from(bytes))
    }
    /// Write an entity only if its committed version is `expected` (`None`: it must not
    /// exist). Fails with [`Error::VersionConflict`] otherwise.
    pub async fn put_if<T: Serialize + ?Sized>(
        &mut self,
        id: EntityId,
        doc: &T,
        expected: Option<u64>,
    ) -> Result<()> {
        self.tx.check_expected(self.name, id, expected).await?;
        self.put(id, doc)
    }
    /// [`put_value`](Self::put_value) only if the entity's committed version is `expected`
    /// (`None`: it must not exist). Fails with [`Error::VersionConflict`] otherwise.
    pub async fn put_value_if(
        &mut self,
        id: EntityId,
        value: &Value,
        expected: Option<u64>,
    ) -> Result<()> {
        self.tx.check_expected(self.name, id, expected).await?;
        self.put_value(id, value)
    }
    /// Delete an entity without reading it first: a tombstone is written whether or not the
    /// entity exists. For a caller that knows it exists (a queue's consumer, an outbox), it
    /// saves [`TxCollection::delete`]'s two reads. Unlike `delete`, removing an entity that
    /// does not exist still shows in the change feed as a delete.
    pub fn remove(&mut self, id: EntityId) -> Result<()> {
        // A collection that does not exist (here) holds nothing to remove.
        let Some(coll) = self.tx.resolve(self.name) else {
            return Ok(());
        };
        let key: Arc<[u8]> = Arc::from(&keys::entity_key_array(coll, &id)[..]);
        self.tx.note_entity_write(coll, &key);
        self.tx.writes.insert(key, None);
        Ok(())
    }
    /// Delete an entity. Returns whether it existed (as this transaction sees it).
    pub async fn delete(&mut self, id: EntityId) -> Result<bool> {
        let existed = self.get_document(id).await?.is_some();
        if let Some(coll) = self.tx.resolve(self.name) {
            let key: Arc<[u8]> = Arc::from(&keys::entity_key_array(coll, &id)[..]);
            // A tombstone is needed only if a committed version exists; otherwise dropping
            // the pending write is enough. (Regression: deleting twice in one transaction
            // must not drop the first delete's tombstone; found by the crash simulation.)
            self.tx.note_entity_write(coll, &key);
            if self.tx.ctx().committed(&key).await?.is_some() {
                self.tx.writes.insert(key, None);
            } else {
                self.tx.writes.remove(&key);
            }
        }
        Ok(existed)
    }

    /// Delete an entity only if its committed version is `expected`.
    pub async fn delete_if(&mut self, id: EntityId, expected: Option<u64>) -> Result<bool> {
        self.tx.check_expected(self.name, id, expected).await?;
        self.delete(id).await
    }
    /// The document with this id (including this transaction's writes).
    pub async fn get_document(&self, id: EntityId) -> Result<Option<Document>> {
        self.tx.ctx().get(self.tx.resolve(self.name), id).await
    }
    /// The entity with this id, decoded.
    pub async fn get<T: DeserializeOwned>(&self, id: EntityId) -> Result<Option<T>> {
        self.get_document(id).await?.map(|d| d.decode()).transpose()
    }
    /// Whether the entity exists.
    pub async fn exists(&self, id: EntityId) -> Result<bool> {
        Ok(self.get_document(id).await?.is_some())
    }
    /// A page of entities in id order (including this transaction's writes).
    pub async fn scan(&self, opts: ScanOptions) -> Result<Page> {
        self.tx
            .ctx()
            .scan(self.tx.resolve(self.name), opts, |_| true)
            .await
    }
    /// A page of the entities that satisfy `pred` (a full scan; fails with
    /// [`Error::FullScanForbidden`] if the database forbids them).
    pub async fn scan_where(
        &self,
        opts: ScanOptions,
        pred: impl FnMut(&Document) -> bool,
    ) -> Result<Page> {
        self.tx.inner.check_full_scan(self.name)?;
        self.tx
            .ctx()
            .scan(self.tx.resolve(self.name), opts, pred)
            .await
    }

    /// Declare an index on this collection and build it from the documents this transaction
    /// sees (one step: the entries are written by this transaction's commit). Fails with
    /// [`Error::IndexExists`] if the name is taken, and with [`Error::UniqueViolation`] if a
    /// unique index's values are not unique.
    pub async fn create_index(&mut self, index: &str, spec: IndexSpec) -> Result<()> {
        self.tx.create_index_in(self.name, index, spec).await
    }

    /// Drop an index. Returns whether it existed.
    pub fn drop_index(&mut self, index: &str) -> Result<bool> {
        Ok(match self.tx.resolve(self.name) {
            Some(coll) => self.tx.drop_index_in(coll, index),
            None => false,
        })
    }

    /// The indexes of this collection as this transaction sees them.
    pub fn indexes(&self) -> Vec<IndexInfo> {
        self.tx.index_infos(self.name)
    }

    /// Full-text search through a search index; the results include this transaction's
    /// writes. See [`crate::index::search`].
    pub async fn search(&mut self, index: &str, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        self.tx.flush_indexes().await?;
        let (coll, def) = self.index_def(index)?;
        check_search(&def, self.name)?;
        search::search(&self.tx.ctx(), coll, self.name, &def, query).await
    }

    fn index_def(&self, index: &str) -> Result<(u32, Arc<IndexDef>)> {
        let coll = self.tx.resolve(self.name);
        let def = coll.and_then(|c| self.tx.indexes_of(c).into_iter().find(|d| d.name == index));
        match (coll, def) {
            (Some(coll), Some(def)) => Ok((coll, def)),
            _ => Err(Error::IndexNotFound {
                collection: self.name.to_owned(),
                index: index.to_owned(),
            }),
        }
    }

    /// Look up documents through an index; the results include this transaction's writes.
    pub async fn lookup(&mut self, index: &str, query: &Query) -> Result<Lookup<'_>> {
        self.tx.flush_indexes().await?;
        let (coll, def) = self.index_def(index)?;
        let tx: &WriteTxn = self.tx;
        Lookup::new(tx.ctx(), coll, self.name, def, query)
    }
    /// Number of entities.
    pub async fn count(&self) -> Result<u64> {
        self.tx.ctx().count(self.tx.resolve(self.name)).await
    }
}
