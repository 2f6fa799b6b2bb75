//! The public handle: [`Database`] and [`Collection`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use entidb_io::Backend;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cbor::Value;
use crate::db::{Inner, read};
use crate::document::{Document, Page, ScanOptions};
use crate::error::{Error, Result};
use crate::feed::{ChangeBatch, ChangeStream};
use crate::ids::EntityId;
use crate::index::{IndexInfo, IndexPage, IndexReport, IndexSpec, Query, SearchHit, SearchQuery};
use crate::options::{Durability, Options};
use crate::stats::Stats;
use crate::txn::{Snapshot, WriteTxn};

/// An open database. Cheap to clone; clones share it. The database stays open (and its
/// directory locked) until the last clone, snapshot and stream is dropped, or
/// [`Database::close`] is called.
///
/// ```
/// # futures_executor::block_on(async {
/// use entidb::{Database, ScanOptions};
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct User { name: String, age: u32 }
///
/// let db = Database::memory().await?;
/// let users = db.collection("users");
/// let id = users.insert(&User { name: "Ada".into(), age: 36 }).await?;
/// let ada: Option<User> = users.get(id).await?;
/// assert_eq!(ada.unwrap().age, 36);
///
/// let mut tx = db.begin().await?;
/// tx.collection("users").put(id, &User { name: "Ada L.".into(), age: 37 })?;
/// tx.commit().await?;
/// assert_eq!(users.scan(ScanOptions::limit(10)).await?.items.len(), 1);
/// # Ok::<(), entidb::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Database {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.inner.backend.name())
            .field("last_sequence", &self.inner.view().seq)
            .finish()
    }
}

impl Database {
    /// Open (creating if needed) the database in directory `path` on the native file system.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Database> {
        Self::open_path(path, Options::default()).await
    }

    /// Open the database in directory `path` with options.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn open_path(
        path: impl AsRef<std::path::Path>,
        options: Options,
    ) -> Result<Database> {
        let backend =
            entidb_io::FsBackend::new(path).map_err(Error::io("opening the directory"))?;
        Self::open_with(Arc::new(backend), options).await
    }

    /// Open (creating if needed) the database in directory `path` with every file encrypted
    /// (AES-256-GCM; see [`entidb_io::encrypted`] for what that protects). A new database
    /// takes the key (a raw 32-byte key, or a passphrase stretched with Argon2id); an existing
    /// one refuses a wrong key with [`Error::WrongKey`].
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn open_encrypted(
        path: impl AsRef<std::path::Path>,
        key: entidb_io::KeySource,
        options: Options,
    ) -> Result<Database> {
        let fs: Arc<dyn Backend> =
            Arc::new(entidb_io::FsBackend::new(path).map_err(Error::io("opening the directory"))?);
        let backend = entidb_io::EncryptedBackend::open(fs, key)
            .await
            .map_err(Error::io("opening the encrypted database"))?;
        Self::open_with(Arc::new(backend), options).await
    }

    /// Re-encrypt the closed database in `path` with a new key (crash-safe: after a crash it
    /// opens with the old key or the new one). It must not be open read-write anywhere: it
    /// holds the database's lock to the end, so it fails with [`Error::Locked`] while a
    /// writer has it, and an open that finds the rekey's files fails the same way (a
    /// read-only one too).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn rekey(
        path: impl AsRef<std::path::Path>,
        old: entidb_io::KeySource,
        new: entidb_io::KeySource,
    ) -> Result<()> {
        let fs: Arc<dyn Backend> =
            Arc::new(entidb_io::FsBackend::new(path).map_err(Error::io("opening the directory"))?);
        // It holds the lock while the files are rewritten.
        entidb_io::EncryptedBackend::rekey(fs, old, new, entidb_io::KdfParams::default())
            .await
            .map_err(Error::io("rekeying"))
    }

    /// Open a database that lives in memory only.
    pub async fn memory() -> Result<Database> {
        Self::open_with(
            Arc::new(entidb_io::MemoryBackend::new()),
            Options::default(),
        )
        .await
    }

    /// Open (creating if needed) a database on any backend.
    pub async fn open_with(backend: Arc<dyn Backend>, options: Options) -> Result<Database> {
        Ok(Database {
            inner: Inner::open(backend, options).await?,
        })
    }

    /// A handle on a collection (it is created by the first write).
    pub fn collection(&self, name: &str) -> Collection {
        Collection {
            db: self.clone(),
            name: Arc::from(name),
        }
    }

    /// Create a collection. Fails with [`Error::CollectionExists`] if it exists.
    pub async fn create_collection(&self, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.create_collection(name)?;
        tx.commit().await.map(|_| ())
    }

    /// Drop a collection and all of its entities. Returns whether it existed.
    pub async fn drop_collection(&self, name: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let existed = tx.drop_collection(name)?;
        tx.commit().await?;
        Ok(existed)
    }

    /// Names of the collections, sorted.
    pub fn collections(&self) -> Vec<String> {
        self.snapshot().collections()
    }

    /// A consistent read-only snapshot of the current state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(&self.inner)
    }

    /// Begin a write transaction (waits while another one is open: one writer at a time).
    pub async fn begin(&self) -> Result<WriteTxn> {
        WriteTxn::begin(&self.inner).await
    }

    /// Run `f` in a write transaction: commit if it returns `Ok`, abort if it returns `Err`.
    pub async fn write<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        F: AsyncFnOnce(&mut WriteTxn) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        let mut tx = self.begin().await?;
        match f(&mut tx).await {
            Ok(v) => {
                tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                tx.abort();
                Err(e)
            }
        }
    }

    /// The change feed after sequence `since` (the last sequence the caller has seen; 0: from
    /// the first commit), as an endless stream: retained history first, then each new commit
    /// as it is published. If the feed no longer retains `since + 1`, the stream yields
    /// [`Error::FeedTruncated`]: a consumer must never miss changes silently. To start from
    /// whatever is retained, pass `oldest_retained_sequence() - 1`.
    pub fn changes(&self, since: u64) -> ChangeStream {
        ChangeStream::new(self.inner.clone(), since)
    }

    /// Up to `limit` change-feed records after `since`, without waiting.
    pub async fn changes_page(&self, since: u64, limit: usize) -> Result<Vec<ChangeBatch>> {
        self.changes_page_filtered(since, limit, |_, _| true).await
    }

    /// Like [`Database::changes_page`], but each record keeps only the changes for which
    /// `keep(origin, collection)` is true, where `origin` is the record's origin tag
    /// (collection created and dropped markers are filtered by their collection too). The
    /// values of the other changes are never read, so a consumer of a few collections, or one
    /// that skips its own writes, pays nothing for the rest. A record left with no changes is
    /// still returned, so that the caller's position moves past it.
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use entidb::Database;
    /// let db = Database::memory().await?;
    /// let mut tx = db.begin().await?;
    /// tx.collection("notes").insert(&"kept")?;
    /// tx.collection("audit").insert(&"left out")?;
    /// let seq = tx.commit().await?;
    /// let page = db.changes_page_filtered(0, 10, |_origin, c| c == "notes").await?;
    /// let batch = page.iter().find(|b| b.seq == seq).expect("the record is returned");
    /// assert!(batch.changes.iter().all(|c| c.collection == "notes"));
    /// # Ok::<(), entidb::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn changes_page_filtered(
        &self,
        since: u64,
        limit: usize,
        keep: impl Fn(Option<&str>, &str) -> bool + entidb_io::MaybeSync,
    ) -> Result<Vec<ChangeBatch>> {
        let snap = self.snapshot();
        crate::feed::read_page(&self.inner, &snap.view, since, limit, &keep).await
    }

    /// The oldest sequence the change feed still retains: the last
    /// [`Options::feed_retention`] transactions, and everything after the lowest
    /// [hold](WriteTxn::hold_feed).
    pub fn oldest_retained_sequence(&self) -> u64 {
        self.inner.feed_oldest(self.inner.view().seq)
    }

    /// Set the change-feed hold `name` to `position` in a transaction of its own (see
    /// [`WriteTxn::hold_feed`], which a consumer uses to move its hold together with its
    /// stored position).
    pub async fn hold_feed(&self, name: &str, position: u64) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.hold_feed(name, position)?;
        tx.commit().await.map(|_| ())
    }

    /// Release the change-feed hold `name` in a transaction of its own (see
    /// [`WriteTxn::release_feed_hold`]). Returns whether it existed; releasing a hold that
    /// does not exist commits nothing.
    pub async fn release_feed_hold(&self, name: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let held = tx.release_feed_hold(name)?;
        tx.commit().await?;
        Ok(held)
    }

    /// The change-feed holds and the position each one keeps the feed after, by name.
    pub fn feed_holds(&self) -> std::collections::BTreeMap<String, u64> {
        crate::db::read(&self.inner.catalog).holds()
    }

    /// The highest committed (published) sequence.
    pub fn last_sequence(&self) -> u64 {
        self.inner.view().seq
    }

    /// The highest sequence known durable: every commit at or below it survives a power
    /// loss. A [`Durability::Relaxed`](crate::Durability::Relaxed) commit is above it until a
    /// later sync (a durable commit's, a checkpoint's) covers it; after a crash, recovery
    /// starts from it.
    pub fn durable_sequence(&self) -> u64 {
        self.inner.durable_seq()
    }

    /// Wait until sequence `seq` is published (visible to new snapshots and the change
    /// feed). A write transaction reads at the last *appended* sequence, which may include a
    /// durable commit whose sync is still running; a reader of the feed inside such a
    /// transaction (the sync client's capture) waits here for it. Fails with `FailStopped`
    /// if that sync failed, and `Closed` after `close()`.
    pub async fn wait_published(&self, seq: u64) -> Result<()> {
        self.inner.wait_published(seq).await
    }

    /// Write everything in memory to segments and start a new WAL file, so that the next open
    /// replays nothing.
    pub async fn checkpoint(&self) -> Result<()> {
        self.inner.check_writable()?;
        {
            let mut w = self.inner.lock_writer().await;
            self.inner.rotate(&mut w).await?;
        }
        self.inner.flush_frozen().await
    }

    /// Checkpoint, then merge all segments into one, dropping versions no snapshot needs,
    /// deletes with nothing older under them, feed records past retention and dropped
    /// collections.
    pub async fn compact(&self) -> Result<()> {
        self.checkpoint().await?;
        self.inner.compact_once(true).await?;
        Ok(())
    }

    /// Counters since open.
    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = self.inner.counters.snapshot();
        let seg = &self.inner.seg_stats;
        s.cache_hits = seg.cache_hits.load(Relaxed);
        s.cache_misses = seg.cache_misses.load(Relaxed);
        s.bytes_read = seg.bytes_read.load(Relaxed);
        s.filter_skips = seg.filter_skips.load(Relaxed);
        s.segments = self.inner.segment_count() as u64;
        s.segment_bytes = self.inner.segment_bytes();
        let view = self.inner.view();
        s.frozen_memtables = view.version.mems.len().saturating_sub(1) as u64;
        s.retired_memtables = self.inner.retired_memtables() as u64;
        s.last_sequence = view.seq;
        s
    }

    /// Check every block checksum of every segment. Returns the number of entries read.
    pub async fn verify(&self) -> Result<u64> {
        self.inner.verify_segments().await
    }

    /// Check every index of every collection against the documents, in one snapshot:
    /// entries missing for a document, entries that match no document, and duplicated values
    /// in unique indexes. Reads every indexed collection; memory holds the expected entries
    /// of one index at a time.
    pub async fn verify_indexes(&self) -> Result<IndexReport> {
        crate::index::verify::verify(&self.snapshot()).await
    }

    /// Checkpoint and close. Later calls on any clone fail with [`Error::Closed`]; change
    /// streams end. `close` first waits for a write transaction that is still open (it
    /// commits or aborts normally; do not await `close` while holding one), then for any
    /// flush or compaction, and then releases the directory lock, so the database can be
    /// opened again at once, even while other clones still exist.
    pub async fn close(self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let r = if self.inner.options.read_only {
            Ok(())
        } else {
            self.checkpoint().await
        };
        self.inner.closed.store(true, Ordering::Release);
        self.inner.commit_event.notify(usize::MAX);
        self.inner.release().await;
        r
    }

    /// The last error of a background flush or compaction, if any (they are retried).
    pub fn last_maintenance_error(&self) -> Option<String> {
        crate::db::lock(&self.inner.last_maintenance_error).clone()
    }

    /// The backend this database runs on.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.inner.backend.clone()
    }

    /// Generate a new time-ordered entity id.
    pub fn new_id(&self) -> EntityId {
        self.inner
            .ids
            .next(&*self.inner.clock, &*self.inner.entropy)
    }

    pub(crate) fn catalog_has(&self, name: &str) -> bool {
        read(&self.inner.catalog)
            .resolve(name, self.inner.view().seq)
            .is_some()
    }
}

/// A collection handle: every call is its own transaction (writes) or snapshot (reads).
#[derive(Debug, Clone)]
pub struct Collection {
    db: Database,
    name: Arc<str>,
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the collection exists.
    pub fn exists_collection(&self) -> bool {
        self.db.catalog_has(&self.name)
    }

    async fn write1<T>(
        &self,
        f: impl FnOnce(&mut crate::txn::TxCollection<'_>) -> Result<T>,
    ) -> Result<(T, u64)> {
        let mut tx = self.db.begin().await?;
        let v = f(&mut tx.collection(&self.name))?;
        let seq = tx.commit().await?;
        Ok((v, seq))
    }

    /// Insert a new entity with a generated time-ordered id; durable when this returns.
    pub async fn insert<T: Serialize + ?Sized>(&self, doc: &T) -> Result<EntityId> {
        Ok(self.write1(|c| c.insert(doc)).await?.0)
    }

    /// Write an entity (insert or replace); returns its new version.
    pub async fn put<T: Serialize + ?Sized>(&self, id: EntityId, doc: &T) -> Result<u64> {
        Ok(self.write1(|c| c.put(id, doc)).await?.1)
    }

    /// Write an entity given as CBOR bytes (validated and canonicalized); returns its version.
    pub async fn put_cbor(&self, id: EntityId, bytes: &[u8]) -> Result<u64> {
        Ok(self.write1(|c| c.put_cbor(id, bytes)).await?.1)
    }

    /// Write an entity given as [`Canonical`](crate::cbor::Canonical) bytes (stored as they
    /// are, without a copy or a second check); returns its version.
    pub async fn put_canonical(&self, id: EntityId, doc: &crate::cbor::Canonical) -> Result<u64> {
        Ok(self.write1(|c| c.put_canonical(id, doc)).await?.1)
    }

    /// Write an entity given as a dynamic value; returns its version.
    pub async fn put_value(&self, id: EntityId, value: &Value) -> Result<u64> {
        Ok(self.write1(|c| c.put_value(id, value)).await?.1)
    }

    /// Write only if the current version is `expected` (`None`: must not exist).
    pub async fn put_if<T: Serialize + ?Sized>(
        &self,
        id: EntityId,
        doc: &T,
        expected: Option<u64>,
    ) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        tx.collection(&self.name).put_if(id, doc, expected).await?;
        tx.commit().await
    }

    /// Delete an entity; returns whether it existed.
    pub async fn delete(&self, id: EntityId) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        let existed = tx.collection(&self.name).delete(id).await?;
        tx.commit().await?;
        Ok(existed)
    }

    /// The entity, decoded; `None` if absent.
    pub async fn get<T: DeserializeOwned>(&self, id: EntityId) -> Result<Option<T>> {
        self.db.snapshot().collection(&self.name).get(id).await
    }

    /// The stored document (id, version, canonical CBOR bytes).
    pub async fn get_document(&self, id: EntityId) -> Result<Option<Document>> {
        self.db
            .snapshot()
            .collection(&self.name)
            .get_document(id)
            .await
    }

    /// Whether the entity exists.
    pub async fn exists(&self, id: EntityId) -> Result<bool> {
        self.db.snapshot().collection(&self.name).exists(id).await
    }

    /// The entity's version, if it exists.
    pub async fn version(&self, id: EntityId) -> Result<Option<u64>> {
        self.db.snapshot().collection(&self.name).version(id).await
    }

    /// Number of entities (a full scan of the collection).
    pub async fn count(&self) -> Result<u64> {
        self.db.snapshot().collection(&self.name).count().await
    }

    /// A page of entities in id order; continue with `page.next`.
    pub async fn scan(&self, opts: ScanOptions) -> Result<Page> {
        self.db.snapshot().collection(&self.name).scan(opts).await
    }

    /// A page of entities that satisfy a native predicate (a full scan, visible in stats).
    pub async fn scan_where(
        &self,
        opts: ScanOptions,
        pred: impl FnMut(&Document) -> bool,
    ) -> Result<Page> {
        self.db
            .snapshot()
            .collection(&self.name)
            .scan_where(opts, pred)
            .await
    }

    /// Declare an index and build it from the collection's documents, in one transaction
    /// (crash-safe: after a crash the index either exists complete or not at all; writers
    /// wait while it builds). See [`IndexSpec`] and the rules in [`crate::index`].
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use entidb::{Database, IndexSpec, Query, cbor::Value};
    /// let db = Database::memory().await?;
    /// let users = db.collection("users");
    /// users.create_index("by_email", IndexSpec::equality(["email"]).unique()).await?;
    /// users.create_index("by_age", IndexSpec::ordered(["age"])).await?;
    /// users.insert(&Value::map([("email", Value::from("ada@example.com")), ("age", Value::from(36))])).await?;
    /// let page = users.lookup("by_email", &Query::eq("ada@example.com")).await?;
    /// assert_eq!(page.items.len(), 1);
    /// let over_30 = users.lookup("by_age", &Query::range(std::ops::Bound::Excluded(Value::from(30)), std::ops::Bound::Unbounded)).await?;
    /// assert_eq!(over_30.items.len(), 1);
    /// # Ok::<(), entidb::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn create_index(&self, index: &str, spec: IndexSpec) -> Result<()> {
        let mut tx = self.db.begin().await?;
        tx.collection(&self.name).create_index(index, spec).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drop an index (durable when this returns; its entries are reclaimed by compaction).
    /// Returns whether it existed.
    pub async fn drop_index(&self, index: &str) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        let existed = tx.collection(&self.name).drop_index(index)?;
        tx.commit().await?;
        Ok(existed)
    }

    /// The collection's indexes.
    pub fn indexes(&self) -> Vec<IndexInfo> {
        self.db.snapshot().collection(&self.name).indexes()
    }

    /// One page of an index lookup (at most `query`'s limit, 1000 if it has none); continue
    /// with [`Query::after`] and the page's `next`. For a lazy stream over a consistent view,
    /// use [`SnapshotCollection::lookup`](crate::SnapshotCollection::lookup).
    pub async fn lookup(&self, index: &str, query: &Query) -> Result<IndexPage> {
        let snap = self.db.snapshot();
        let n = if query.limit == usize::MAX {
            1000
        } else {
            query.limit
        };
        let mut l = snap.collection(&self.name).lookup(index, query).await?;
        l.next_page(n).await
    }

    /// Full-text search through a search index: one page of hits ranked by BM25 (see
    /// [`SearchQuery`] and [`crate::index::search`]).
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use entidb::{Database, IndexSpec, SearchQuery, cbor::Value};
    /// let db = Database::memory().await?;
    /// let posts = db.collection("posts");
    /// posts.create_index("text", IndexSpec::search(["title", "body"])).await?;
    /// posts.insert(&Value::map([("title", "Distributed systems"), ("body", "Consensus is hard.")])).await?;
    /// posts.insert(&Value::map([("title", "Cooking"), ("body", "Crème brûlée for two.")])).await?;
    /// let hits = posts.search("text", &SearchQuery::all("creme brulee")).await?;
    /// assert_eq!(hits.len(), 1);
    /// assert!(hits[0].score > 0.0);
    /// # Ok::<(), entidb::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn search(&self, index: &str, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        self.db
            .snapshot()
            .collection(&self.name)
            .search(index, query)
            .await
    }

    /// The single document whose indexed value equals `value` (the first in index order if
    /// several do), through an index.
    pub async fn find_one(&self, index: &str, value: impl Into<Value>) -> Result<Option<Document>> {
        let snap = self.db.snapshot();
        let mut l = snap
            .collection(&self.name)
            .lookup(index, &Query::eq(value).limit(1))
            .await?;
        l.next().await
    }

    /// Write with an explicit durability level (one put).
    pub async fn put_with<T: Serialize + ?Sized>(
        &self,
        id: EntityId,
        doc: &T,
        durability: Durability,
    ) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        tx.set_durability(durability);
        tx.collection(&self.name).put(id, doc)?;
        tx.commit().await
    }
}
