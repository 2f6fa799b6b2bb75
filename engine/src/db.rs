//! The database core: open and recovery, the commit pipeline (WAL append, group commit,
//! publication), read views, flush and compaction.
//!
//! ## Invariants (see docs/design.md for the full protocol)
//!
//! * Only the holder of `writer` appends to the WAL or inserts into the active memtable.
//! * `view` pairs the current [`Version`] with the highest published sequence; both change
//!   under its lock, so a reader that clones them never sees a sequence whose data is in a
//!   memtable its version lacks.
//! * A sequence is published (visible to new snapshots) only once it is durable, unless its
//!   transaction asked for [`Durability::Relaxed`].
//! * Data never leaves an `Arc`'d memtable or segment: old versions keep working until the
//!   last reader drops them (MVCC without reader locks).
//! * After a failed sync (or WAL write) `failed` is set and every later commit fails
//!   ([`Error::FailStopped`]) until the database is reopened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use entidb_io::{Backend, Clock, Entropy, File, LockGuard, OpenMode};
use event_listener::Event;

use crate::catalog::Catalog;
use crate::compaction::{self, Decision, Keep};
use crate::error::{Error, Result};
use crate::ids::IdGenerator;
use crate::manifest::{self, Manifest};
use crate::memtable::{Entry as RawEntry, EntryRef, Memtable, Op};
use crate::merge::MergeIter;
use crate::options::{Durability, Options};
use crate::segment::{self, BlockCache, SegStats, Segment, SegmentWriter};
use crate::stats::Counters;
use crate::wal::{self, Batch, WalWriter};

/// A consistent set of sources: memtables (active first) and segments (newest first).
#[derive(Debug, Default)]
pub(crate) struct Version {
    pub mems: Vec<Arc<Memtable>>,
    pub segments: Vec<Arc<Segment>>,
}

/// The published state readers start from.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub version: Arc<Version>,
    pub seq: u64,
}

#[derive(Debug)]
struct SyncState {
    appended_seq: u64,
    durable_seq: u64,
    syncing: bool,
    wal_file: Arc<dyn File>,
    wal_no: u64,
    appended_offset: u64,
    durable_offset: u64,
    failed: Option<String>,
}

enum SyncStep {
    Done,
    Wait(event_listener::EventListener),
    /// Would lead alone: yield to the executor once, then ask again.
    YieldFirst,
    Lead {
        target: u64,
        offset: u64,
        file: Arc<dyn File>,
        no: u64,
        /// Nobody waits for this sync but the leader, and nothing was appended after the
        /// leader's own record: the leader syncs on its own thread (`File::sync_data_inline`).
        alone: bool,
    },
}

/// Returns `Pending` once, after waking its task, so that the executor polls the other
/// ready tasks before this one goes on (any executor: it needs nothing but the waker).
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Counts a task in [`Inner::writers_queued`] while it waits for the writer lock (see
/// [`Inner::lock_writer`]).
struct QueuedWriter<'a>(&'a AtomicUsize);

impl<'a> QueuedWriter<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        QueuedWriter(count)
    }
}

impl Drop for QueuedWriter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct WriterState {
    pub wal: WalWriter,
    pub last_seq: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub(crate) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match m.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub(crate) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match m.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Shared state of one open database.
#[derive(Debug)]
pub(crate) struct Inner {
    pub backend: Arc<dyn Backend>,
    pub options: Options,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
    /// The directory lock; released by `close()` (or when the last handle is dropped).
    lock_guard: Mutex<Option<Box<dyn LockGuard>>>,
    /// Taken through [`Inner::lock_writer`] / [`Inner::lock_writer_arc`] only.
    writer: Arc<async_lock::Mutex<WriterState>>,
    /// Tasks waiting for the writer lock (`WriteTxn::begin`, `checkpoint`, `close`; see
    /// [`Inner::lock_writer`]): a commit leader with any of these behind it does not
    /// sync on its own thread.
    writers_queued: AtomicUsize,
    view: RwLock<View>,
    sync: Mutex<SyncState>,
    sync_event: Event,
    /// Notified after every publication (change-feed followers wait on it).
    pub commit_event: Event,
    snapshots: Mutex<BTreeMap<u64, usize>>,
    pub catalog: RwLock<Catalog>,
    pub counters: Counters,
    pub seg_stats: Arc<SegStats>,
    cache: Arc<BlockCache>,
    pub ids: IdGenerator,
    maintenance: async_lock::Mutex<Manifest>,
    next_file: AtomicU64,
    pub closed: AtomicBool,
    pub last_maintenance_error: Mutex<Option<String>>,
    /// The maintenance thread's signal, once it runs (see `background.rs`).
    background: std::sync::OnceLock<Arc<crate::background::Background>>,
    /// Flushed memtables that the maintenance thread frees once nobody else holds them.
    ///
    /// Invariant: a memtable is here only after it left the current version (its contents
    /// are in a segment), so no new reader can reach it; it lives on while older versions
    /// (snapshots, a write transaction's view) hold it. Without this list the last holder
    /// frees it: usually a committer whose transaction began before the flush, which then
    /// spends milliseconds freeing a skip list and a hash table of a whole memtable before its
    /// commit returns. Only filled while a maintenance thread runs, which lingers until the
    /// list is empty (`background.rs`).
    retired: Mutex<Vec<Arc<Memtable>>>,
    /// An ingested transaction's batch, left for the maintenance thread to free (see
    /// [`Inner::discard`]); at most one waits.
    discarded: Mutex<Option<Batch>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(b) = self.background.get() {
            b.stop();
        }
    }
}

/// A pinned snapshot sequence; unpinned on drop.
#[derive(Debug)]
pub(crate) struct Pin {
    inner: Arc<Inner>,
    seq: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut s = lock(&self.inner.snapshots);
        if let Some(n) = s.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                s.remove(&self.seq);
            }
        }
    }
}

const LOCK_FILE: &str = "LOCK";

impl Inner {
    /// Open (or create) a database on `backend`.
    pub(crate) async fn open(backend: Arc<dyn Backend>, options: Options) -> Result<Arc<Inner>> {
        let ro = options.read_only;
        // A read-only handle takes no lock and writes nothing: it may look at a database
        // another process is writing (it sees the state at open).
        let guard = if ro {
            None
        } else {
            Some(
                backend
                    .lock(LOCK_FILE)
                    .await
                    .map_err(Error::io("locking the database"))?,
            )
        };
        // An encrypted database seen without its key: say so instead of reading ciphertext.
        if backend
            .exists(entidb_io::encrypted::KEY_FILE)
            .await
            .map_err(Error::io("checking for encryption"))?
        {
            return Err(Error::Encryption(
                "this database is encrypted; open it with its key".into(),
            ));
        }
        let existing = Manifest::load(&*backend).await?;
        let names = backend
            .list("")
            .await
            .map_err(Error::io("listing the database directory"))?;
        let mut manifest = match existing {
            Some(m) => m,
            None => {
                if names.iter().any(|n| crate::is_data_file_name(n)) {
                    // Never start over on top of data: that would delete it as orphans.
                    return Err(Error::corruption(
                        manifest::NAME,
                        0,
                        "WAL or segment files exist but the manifest is missing",
                    ));
                }
                if !options.create_if_missing || ro {
                    return Err(Error::InvalidArgument(
                        "no database here and create_if_missing is off".into(),
                    ));
                }
                let m = Manifest::new();
                m.store(&*backend).await?;
                m
            }
        };
        if !ro && names.iter().any(|n| n == manifest::TMP_NAME) {
            backend
                .remove(manifest::TMP_NAME)
                .await
                .map_err(Error::io("removing a stale manifest"))?;
        }
        // File numbers: never reuse one that exists on disk.
        let mut max_seen = 0u64;
        let mut wal_files = Vec::new();
        for n in &names {
            if let Some(no) = wal::parse_file_name(n) {
                max_seen = max_seen.max(no);
                if no >= manifest.wal_min {
                    wal_files.push(no);
                } else if !ro {
                    backend
                        .remove(n)
                        .await
                        .map_err(Error::io("removing an obsolete WAL file"))?;
                }
            } else if let Some(id) = segment::parse_file_name(n) {
                max_seen = max_seen.max(id);
                if !ro && !manifest.segments.iter().any(|s| s.id == id) {
                    // Written by a flush or compaction that did not reach the manifest.
                    backend
                        .remove(n)
                        .await
                        .map_err(Error::io("removing an orphan segment"))?;
                }
            }
        }
        wal_files.sort_unstable();
        manifest.next_file = manifest.next_file.max(max_seen + 1);
        // A newest WAL file that holds no record (a crash right after, or during, its
        // creation; or a failed rotation whose removal was not durable) is dropped, so that
        // the file before it is the one whose tail may be torn: records are appended to a new
        // file only after the previous one was sealed by a sync.
        while wal_files.len() > 1 {
            let Some(&no) = wal_files.last() else { break };
            let name = wal::file_name(no);
            let f = backend
                .open(&name, OpenMode::Existing)
                .await
                .map_err(Error::io("opening a WAL file"))?;
            let len = f.len().await.map_err(Error::io("reading a WAL file"))?;
            if len > wal::FILE_HEADER_LEN {
                let image = f
                    .read_at(0, len as usize)
                    .await
                    .map_err(Error::io("reading a WAL file"))?;
                // Only zeros (preallocation) after the header: no record was ever appended.
                if image[wal::FILE_HEADER_LEN as usize..]
                    .iter()
                    .any(|&b| b != 0)
                {
                    break;
                }
            }
            drop(f);
            if !ro {
                backend
                    .remove(&name)
                    .await
                    .map_err(Error::io("removing an empty WAL file"))?;
            }
            wal_files.pop();
        }

        let cache = Arc::new(BlockCache::new(options.cache_bytes));
        let seg_stats = Arc::new(SegStats::default());
        let mut segments = Vec::with_capacity(manifest.segments.len());
        for m in &manifest.segments {
            let s = Segment::open(&*backend, m.id, cache.clone(), seg_stats.clone()).await?;
            if s.meta.entries != m.entries || s.meta.max_seq != m.max_seq {
                return Err(Error::corruption(
                    s.name(),
                    0,
                    "segment footer does not match the manifest",
                ));
            }
            segments.push(Arc::new(s));
        }

        // Replay the WAL.
        let next_file = AtomicU64::new(manifest.next_file);
        let first_wal = wal_files.first().copied();
        let mem = Arc::new(Memtable::new(first_wal.unwrap_or(manifest.wal_min)));
        let mut last_seq = manifest.flushed_seq;
        let mut tail: Option<(u64, Arc<dyn File>, u64)> = None;
        for (i, &no) in wal_files.iter().enumerate() {
            let name = wal::file_name(no);
            let is_last = i + 1 == wal_files.len();
            let f = backend
                .open(&name, OpenMode::Existing)
                .await
                .map_err(Error::io("opening a WAL file"))?;
            let len = f.len().await.map_err(Error::io("reading a WAL file"))?;
            let image = f
                .read_at(0, len as usize)
                .await
                .map_err(Error::io("reading a WAL file"))?;
            let scan = wal::scan(&name, &image, is_last)?;
            for r in scan.records {
                if r.seq <= last_seq {
                    continue;
                }
                if r.seq != last_seq + 1 {
                    return Err(Error::corruption(
                        &name,
                        r.offset,
                        format!("sequence gap: expected {}, found {}", last_seq + 1, r.seq),
                    ));
                }
                for op in r.batch.ops {
                    let v = match op.value {
                        Some(v) => Op::Put(v),
                        None => Op::Delete,
                    };
                    mem.insert(op.key, r.seq, v);
                }
                last_seq = r.seq;
            }
            let mut end = scan.valid_end;
            if scan.torn && !ro {
                // Only the newest file may have a torn tail (`wal::scan` refuses otherwise).
                if end < wal::FILE_HEADER_LEN {
                    f.set_len(0).await.map_err(Error::io("repairing the WAL"))?;
                    f.write_at(0, wal::file_header().to_vec())
                        .await
                        .map_err(Error::io("repairing the WAL"))?;
                    end = wal::FILE_HEADER_LEN;
                } else {
                    f.set_len(end)
                        .await
                        .map_err(Error::io("cutting a torn WAL tail"))?;
                }
            }
            if is_last && ro {
                tail = Some((no, f, end));
            } else if is_last {
                // One sync makes the repair durable and, after a process crash, the records
                // that were still only in the page cache: new records' `durable_before` must
                // be true, or a later power loss could look like corruption.
                f.sync_data()
                    .await
                    .map_err(Error::io("syncing the WAL tail at open"))?;
                tail = Some((no, f, end));
            }
        }
        let (wal_no, wal_file, wal_offset) = match tail {
            Some(t) => t,
            // Never written through: commits are refused.
            None if ro => {
                let f = backend
                    .open(manifest::NAME, OpenMode::Existing)
                    .await
                    .map_err(Error::io("opening the manifest"))?;
                (0, f, 0)
            }
            None => {
                let no = next_file.fetch_add(1, Ordering::Relaxed);
                let f =
                    create_wal(&*backend, no, wal::first_stretch(options.wal_preallocate)).await?;
                (no, f, wal::FILE_HEADER_LEN)
            }
        };
        let wal_allocated = wal_file
            .len()
            .await
            .map_err(Error::io("reading a WAL file"))?;
        let version = Arc::new(Version {
            mems: vec![mem],
            segments,
        });
        let inner = Arc::new(Inner {
            clock: backend.clock(),
            entropy: backend.entropy(),
            backend,
            cache,
            seg_stats,
            lock_guard: Mutex::new(guard),
            writer: Arc::new(async_lock::Mutex::new(WriterState {
                wal: WalWriter::new(
                    wal_file.clone(),
                    wal_no,
                    wal_offset,
                    wal_allocated,
                    options.wal_preallocate,
                ),
                last_seq,
            })),
            view: RwLock::new(View {
                version,
                seq: last_seq,
            }),
            sync: Mutex::new(SyncState {
                appended_seq: last_seq,
                durable_seq: last_seq,
                syncing: false,
                wal_file,
                wal_no,
                appended_offset: wal_offset,
                durable_offset: wal_offset,
                failed: None,
            }),
            writers_queued: AtomicUsize::new(0),
            sync_event: Event::new(),
            commit_event: Event::new(),
            snapshots: Mutex::new(BTreeMap::new()),
            catalog: RwLock::new(Catalog::default()),
            counters: Counters::default(),
            ids: IdGenerator::default(),
            maintenance: async_lock::Mutex::new(manifest),
            next_file,
            closed: AtomicBool::new(false),
            last_maintenance_error: Mutex::new(None),
            background: std::sync::OnceLock::new(),
            retired: Mutex::new(Vec::new()),
            discarded: Mutex::new(None),
            options,
        });
        let catalog = Catalog::load(&inner).await?;
        *write(&inner.catalog) = catalog;
        let o = &inner.options;
        if o.auto_maintenance
            && o.background_maintenance
            && !o.read_only
            && inner.backend.background_threads()
        {
            let signal = Arc::new(crate::background::Background::default());
            if crate::background::start(&inner, signal.clone()) {
                // Set once, right here: it cannot already hold a value.
                let _ = inner.background.set(signal);
            }
        }
        Ok(inner)
    }

    /// Refuse predicate scans when the options forbid them.
    pub(crate) fn check_full_scan(&self, collection: &str) -> Result<()> {
        if self.options.forbid_full_scans {
            return Err(Error::FullScanForbidden {
                collection: collection.to_owned(),
            });
        }
        Ok(())
    }

    /// After `closed` is set: wait for a commit in flight and for maintenance, then let go
    /// of the directory so that another process (or handle) can open it at once. A write
    /// transaction still open keeps it until that transaction ends (it can no longer commit).
    pub(crate) async fn release(&self) {
        let _writer = self.lock_writer().await;
        let _maintenance = self.maintenance.lock().await;
        if let Some(b) = self.background.get() {
            b.stop();
        }
        let batch = lock(&self.discarded).take();
        drop(batch);
        lock(&self.lock_guard).take();
    }

    /// Refuse writes (and anything that writes files) on a read-only handle.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.options.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_open()
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(f) = &lock(&self.sync).failed {
            return Err(Error::FailStopped { cause: f.clone() });
        }
        Ok(())
    }

    /// The published view.
    pub(crate) fn view(&self) -> View {
        read(&self.view).clone()
    }

    /// Pin a sequence so compaction keeps what it needs.
    pub(crate) fn pin(self: &Arc<Self>, seq: u64) -> Pin {
        *lock(&self.snapshots).entry(seq).or_insert(0) += 1;
        Pin {
            inner: self.clone(),
            seq,
        }
    }

    /// A published view, pinned.
    pub(crate) fn pinned_view(self: &Arc<Self>) -> (View, Pin) {
        // Pin under the view lock so compaction never misses a snapshot being taken.
        let v = read(&self.view);
        let pin = self.pin(v.seq);
        (v.clone(), pin)
    }

    /// Newest version of `key` visible at `seq` in `version`.
    pub(crate) async fn get_in(
        &self,
        version: &Version,
        key: &[u8],
        seq: u64,
    ) -> Result<Option<(u64, Op)>> {
        for m in &version.mems {
            if let Some(hit) = m.get(key, seq) {
                return Ok(Some(hit));
            }
        }
        let hash = crate::points::key_hash(key);
        for s in &version.segments {
            if let Some(hit) = s.get(key, hash, seq).await? {
                return Ok(Some(hit));
            }
        }
        Ok(None)
    }

    /// Append a transaction. Called with the writer lock held. Returns its sequence.
    pub(crate) async fn append(&self, w: &mut WriterState, batch: Batch) -> Result<u64> {
        self.check_open()?;
        let seq = w.last_seq + 1;
        let durable_before = {
            let s = lock(&self.sync);
            if s.wal_no == w.wal.no {
                s.durable_offset
            } else {
                wal::FILE_HEADER_LEN
            }
        };
        let record = wal::encode_record(seq, durable_before, &batch)?;
        let len = record.len() as u64;
        if let Err(e) = w.wal.file.write_at(w.wal.offset, record).await {
            self.fail(format!("WAL write failed: {e}"));
            return Err(Error::Io {
                context: "appending to the WAL",
                source: e,
            });
        }
        w.wal.offset += len;
        w.wal.allocated = w.wal.allocated.max(w.wal.offset);
        self.counters.wal_bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(to) = w.wal.next_stretch(self.options.wal_preallocate) {
            // Zero-fill the next stretch after the record (never before it: a crash may keep
            // or lose these zeros, both read as the end of the log).
            let from = w.wal.allocated;
            // A failure only costs the optimisation (zeros never hold data): retry next time.
            if w.wal
                .file
                .write_at(from, vec![0u8; (to - from) as usize])
                .await
                .is_ok()
            {
                w.wal.allocated = to;
            }
        }
        let active = self.view().version.mems[0].clone();
        for op in batch.ops {
            let v = match op.value {
                Some(v) => Op::Put(v),
                None => Op::Delete,
            };
            active.insert(op.key, seq, v);
        }
        w.last_seq = seq;
        {
            let mut s = lock(&self.sync);
            s.appended_seq = seq;
            s.appended_offset = w.wal.offset;
        }
        Ok(seq)
    }

    fn fail(&self, cause: String) {
        let mut s = lock(&self.sync);
        if s.failed.is_none() {
            s.failed = Some(cause);
        }
        drop(s);
        self.sync_event.notify(usize::MAX);
        self.commit_event.notify(usize::MAX);
    }

    /// The writer lock. Every wait for it goes through here (or [`Inner::lock_writer_arc`])
    /// and is counted in `writers_queued` meanwhile (also if the wait is dropped).
    pub(crate) async fn lock_writer(&self) -> async_lock::MutexGuard<'_, WriterState> {
        let _queued = QueuedWriter::new(&self.writers_queued);
        self.writer.lock().await
    }

    /// [`Inner::lock_writer`], with a guard that owns its reference to the lock.
    pub(crate) async fn lock_writer_arc(&self) -> async_lock::MutexGuardArc<WriterState> {
        let _queued = QueuedWriter::new(&self.writers_queued);
        self.writer.lock_arc().await
    }

    /// Make `seq` durable (joining or leading a sync group) and published.
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut yielded = false;
        loop {
            match self.sync_step(seq, yielded)? {
                SyncStep::Done => {
                    // The leader raises `durable_seq` before it publishes: make sure `seq` is
                    // visible before `commit()` returns, as it promises.
                    let durable = lock(&self.sync).durable_seq;
                    self.publish(durable);
                    return Ok(());
                }
                SyncStep::Wait(listener) => listener.await,
                SyncStep::YieldFirst => {
                    // Alone so far: let the executor run the other tasks that are ready
                    // first. On a single-threaded executor, writers spawned but not yet
                    // polled would otherwise each find themselves alone after this sync,
                    // and sync one by one instead of as a group (64 tasks on a
                    // current-thread runtime: 6,900 commits/s against 130,000).
                    yielded = true;
                    YieldOnce(false).await;
                }
                SyncStep::Lead {
                    target,
                    offset,
                    file,
                    no,
                    alone,
                } => {
                    // If this future is dropped during the sync (a cancelled commit), the
                    // guard gives up the leadership, or every later commit would wait for a
                    // sync nobody finishes.
                    let mut lead = LeaderGuard {
                        inner: self,
                        armed: true,
                    };
                    // A commit group of one (durable commits one after another, W1) syncs
                    // on its own thread: handing the sync to an I/O thread and being woken
                    // back cost it about a quarter of its time. With others waiting, or
                    // appended behind it, the leader hands the sync off, so that the tasks
                    // sharing its executor thread keep appending to the next group.
                    let r = if alone {
                        file.sync_data_inline().await
                    } else {
                        file.sync_data().await
                    };
                    lead.armed = false;
                    self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    self.finish_sync(r, target, offset, no);
                }
            }
        }
    }

    /// One decision of the group-commit protocol, taken under the sync lock (never held
    /// across an await).
    ///
    /// A would-be leader that is alone and has not `yielded` yet gets
    /// [`SyncStep::YieldFirst`] instead of the leadership (nothing is set: another committer
    /// may lead meanwhile, and this one then waits for its group).
    fn sync_step(&self, seq: u64, yielded: bool) -> Result<SyncStep> {
        let mut s = lock(&self.sync);
        if let Some(f) = &s.failed {
            return Err(Error::FailStopped { cause: f.clone() });
        }
        if s.durable_seq >= seq {
            return Ok(SyncStep::Done);
        }
        if s.syncing {
            // Register before releasing the lock so the leader's notify is not missed.
            return Ok(SyncStep::Wait(self.sync_event.listen()));
        }
        // Committers waiting for a sync are the event's listeners (each registered under
        // this lock, counted until its wait ends or is dropped).
        let alone = self.options.inline_sync
            && self.sync_event.total_listeners() == 0
            && s.appended_seq == seq
            && self.writers_queued.load(Ordering::Relaxed) == 0;
        if alone && !yielded {
            return Ok(SyncStep::YieldFirst);
        }
        s.syncing = true;
        Ok(SyncStep::Lead {
            target: s.appended_seq,
            offset: s.appended_offset,
            file: s.wal_file.clone(),
            no: s.wal_no,
            alone,
        })
    }

    fn finish_sync(&self, r: entidb_io::IoResult<()>, target: u64, offset: u64, no: u64) {
        let mut s = lock(&self.sync);
        s.syncing = false;
        match r {
            Ok(()) => {
                s.durable_seq = s.durable_seq.max(target);
                if s.wal_no == no {
                    s.durable_offset = s.durable_offset.max(offset);
                }
                let d = s.durable_seq;
                drop(s);
                self.publish(d);
                self.sync_event.notify(usize::MAX);
            }
            Err(e) => {
                drop(s);
                self.fail(format!("WAL sync failed: {e}"));
            }
        }
    }

    /// Wait until `seq` is published (see `Database::wait_published`).
    pub(crate) async fn wait_published(&self, seq: u64) -> Result<()> {
        loop {
            let listener = self.commit_event.listen();
            if self.view().seq >= seq {
                return Ok(());
            }
            // Closed, or fail-stopped by a failed sync: the sequence will never be published.
            self.check_open()?;
            listener.await;
        }
    }

    /// Make sequences up to `seq` visible to new snapshots.
    pub(crate) fn publish(&self, seq: u64) {
        // Most calls find it done already (every waiter of a sync group publishes): check
        // under the read lock first, so that readers are not stopped for nothing.
        if read(&self.view).seq >= seq {
            return;
        }
        {
            let mut v = write(&self.view);
            if seq <= v.seq {
                return;
            }
            v.seq = seq;
        }
        self.commit_event.notify(usize::MAX);
    }

    /// Freeze the active memtable and start a new WAL file. Called with the writer lock held.
    pub(crate) async fn rotate(&self, w: &mut WriterState) -> Result<()> {
        if self.view().version.mems[0].is_empty() {
            return Ok(());
        }
        // Seal the old WAL file: every record in it becomes durable (and is published).
        if let Err(e) = w.wal.file.sync_data().await {
            self.fail(format!("WAL sync failed: {e}"));
            return Err(Error::Io {
                context: "sealing the WAL",
                source: e,
            });
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.finish_sync(Ok(()), w.last_seq, w.wal.offset, w.wal.no);
        let no = self.next_file.fetch_add(1, Ordering::Relaxed);
        let first = wal::first_stretch(self.options.wal_preallocate);
        let file = match create_wal(&*self.backend, no, first).await {
            Ok(f) => f,
            Err(e) => {
                // Keep appending to the old file. A half-created newer file must not stay:
                // recovery would treat the old file as sealed and a later torn tail in it
                // as corruption. If it cannot be removed, stop writing.
                match self.backend.remove(&wal::file_name(no)).await {
                    Ok(()) | Err(entidb_io::IoError::NotFound { .. }) => {}
                    Err(r) => self.fail(format!(
                        "could not remove a half-created WAL file after {e}: {r}"
                    )),
                }
                return Err(e);
            }
        };
        {
            let mut s = lock(&self.sync);
            s.wal_file = file.clone();
            s.wal_no = no;
            s.appended_offset = wal::FILE_HEADER_LEN;
            s.durable_offset = wal::FILE_HEADER_LEN;
        }
        w.wal = WalWriter::new(
            file,
            no,
            wal::FILE_HEADER_LEN,
            wal::FILE_HEADER_LEN + first,
            self.options.wal_preallocate,
        );
        {
            let mut v = write(&self.view);
            let mut mems = Vec::with_capacity(v.version.mems.len() + 1);
            mems.push(Arc::new(Memtable::new(no)));
            mems.extend(v.version.mems.iter().cloned());
            v.version = Arc::new(Version {
                mems,
                segments: v.version.segments.clone(),
            });
        }
        Ok(())
    }

    /// Whether the active memtable is over budget.
    pub(crate) fn needs_rotation(&self) -> bool {
        self.view().version.mems[0].approximate_bytes() >= self.options.memtable_bytes
    }

    /// Flush every frozen memtable to a segment, oldest first (waits for a running
    /// flush or compaction).
    pub(crate) async fn flush_frozen(&self) -> Result<()> {
        let mut manifest = self.maintenance.lock().await;
        // Under the lock: `release` takes it after setting `closed`, so nothing is written
        // after `close()` returned.
        self.check_open()?;
        self.flush_frozen_down_to(&mut manifest, 0).await
    }

    /// Flush the oldest frozen memtables until at most `keep` are left.
    async fn flush_frozen_down_to(&self, manifest: &mut Manifest, keep: usize) -> Result<()> {
        loop {
            let version = self.view().version;
            if version.mems.len() < 2 + keep {
                return Ok(());
            }
            let frozen = version.mems[version.mems.len() - 1].clone();
            let newer_wal = version.mems[version.mems.len() - 2].wal_file;
            let new_seg = self
                .write_segment(
                    SegmentInput::Merge(MergeIter::new(
                        std::slice::from_ref(&frozen),
                        &[],
                        &[],
                        None,
                    )),
                    |_, _| Keep::Entry,
                    // Flushes and compactions run beside the writers: they take no second
                    // thread.
                    false,
                )
                .await?;
            if new_seg.is_some() {
                self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            }
            let mut next = manifest.clone();
            if let Some(s) = &new_seg {
                next.segments.insert(0, s.meta.clone());
            }
            next.flushed_seq = next.flushed_seq.max(frozen.max_seq());
            next.wal_min = newer_wal;
            next.next_file = self.next_file.load(Ordering::Relaxed);
            next.store(&*self.backend).await?;
            *manifest = next;
            {
                let mut v = write(&self.view);
                let mut mems = v.version.mems.clone();
                mems.retain(|m| !Arc::ptr_eq(m, &frozen));
                let mut segments = v.version.segments.clone();
                if let Some(s) = new_seg {
                    segments.insert(0, s);
                }
                v.version = Arc::new(Version { mems, segments });
            }
            self.retire(frozen);
            self.remove_wal_files_below(newer_wal).await?;
        }
    }

    /// Hands a flushed memtable to the maintenance thread to free (see `retired`), and wakes
    /// it: a flush the thread did not run (`checkpoint`, `compact`, a committer's) would
    /// otherwise leave it there until the next round. Without a live thread the memtable is
    /// dropped here, and freed by its last holder.
    fn retire(&self, memtable: Arc<Memtable>) {
        let mut retired = lock(&self.retired);
        // Checked under the list's lock: a thread that dies sets `dead` and then empties
        // the list under this lock, so nothing is pushed after that.
        if let Some(bg) = self.live_background() {
            retired.push(memtable);
            bg.wake();
        }
    }

    /// Frees an ingested transaction's batch: on the maintenance thread, if one runs and
    /// no other batch already waits for it, else here. A bulk load's batch holds a key and
    /// a value allocation per row, and freeing 400,000 of them took a fifth of W3's commit
    /// (`perf`, `--only W3`); the rows are in the new segment by now, so nothing reads them.
    fn discard(&self, batch: Batch) {
        let mut slot = lock(&self.discarded);
        // Checked under the slot's lock, like `retire`: a thread that dies empties the slot
        // under it, so nothing waits there for a thread that is gone; and `close()` sets
        // `closed` before it empties the slot and stops the thread, so a batch that comes
        // after that (its commit ran beside the close) is freed here.
        if slot.is_none()
            && !self.closed.load(Ordering::Acquire)
            && let Some(bg) = self.live_background()
        {
            *slot = Some(batch);
            drop(slot);
            bg.wake();
            return;
        }
        drop(slot);
        drop(batch);
    }

    /// Empties the retired list without waiting for the holders (when the maintenance
    /// thread ends): each memtable is then freed by its last holder.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn drop_retired(&self) {
        let all = std::mem::take(&mut *lock(&self.retired));
        drop(all);
        let batch = lock(&self.discarded).take();
        drop(batch);
    }

    /// Frees the retired memtables that nobody else holds any more (on the maintenance
    /// thread, which calls this). Returns how many are still held.
    pub(crate) fn free_retired(&self) -> usize {
        let (free, held) = {
            let mut retired = lock(&self.retired);
            // A count of 1 is this list's own reference: no version holds the memtable, and
            // none can take a new one (it is in no version), so it cannot rise again.
            let (free, held): (Vec<_>, Vec<_>) =
                retired.drain(..).partition(|m| Arc::strong_count(m) == 1);
            *retired = held;
            (free, retired.len())
        };
        // Outside the lock: freeing a memtable's skip list and hash table takes a while.
        drop(free);
        held
    }

    /// Frees the batch [`Inner::discard`] left (on the maintenance thread, at the start of
    /// a round). Under the maintenance lock, so that `close()` (which takes it) returns only
    /// once the batch is freed, and the next ingest (which waits for it) does not add to
    /// the work of one still being freed.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) async fn free_discarded(&self) {
        if lock(&self.discarded).is_none() {
            return;
        }
        let _maintenance = self.maintenance.lock().await;
        let batch = lock(&self.discarded).take();
        drop(batch);
    }

    /// Retired memtables not yet freed (see [`Inner::free_retired`]).
    pub(crate) fn retired_memtables(&self) -> usize {
        lock(&self.retired).len()
    }

    async fn remove_wal_files_below(&self, wal_min: u64) -> Result<()> {
        let names = self
            .backend
            .list("")
            .await
            .map_err(Error::io("listing the database directory"))?;
        for n in names {
            if let Some(no) = wal::parse_file_name(&n)
                && no < wal_min
            {
                self.backend
                    .remove(&n)
                    .await
                    .map_err(Error::io("removing an obsolete WAL file"))?;
            }
        }
        Ok(())
    }

    /// The oldest sequence any reader may still need: the oldest live snapshot. Older entity
    /// versions that a newer version (at or below the horizon) shadows are discarded by
    /// compaction, and their changes left out of the feed records (`compaction::Retain`), so
    /// feed retention never multiplies storage.
    pub(crate) fn horizon(&self, last_seq: u64) -> u64 {
        let oldest_snapshot = lock(&self.snapshots)
            .keys()
            .next()
            .copied()
            .unwrap_or(u64::MAX);
        oldest_snapshot.min(last_seq)
    }

    /// The oldest change-feed sequence retained: the last `feed_retention` sequences up to
    /// `last_seq`, and everything after the lowest hold (counting hold moves that are not
    /// durable yet at their old position too; see `catalog::HoldChange`).
    ///
    /// Never goes back: `last_seq` only grows; per hold, the floor is the minimum over the
    /// settings from the newest durable one on, a suffix that only shrinks as syncs go on;
    /// and a new setting is only accepted at or above [`Inner::feed_oldest_bound`], which no
    /// value of this function reaches before that setting commits.
    pub(crate) fn feed_oldest(&self, last_seq: u64) -> u64 {
        self.feed_oldest_at(last_seq, self.durable_seq())
    }

    /// The highest value [`Inner::feed_oldest`] can take before the transaction that reads
    /// at `read_seq` commits: `last_seq` is at most its own sequence until then, and each
    /// hold counts at its newest setting (as if every pending move were durable already). A
    /// hold set at or above it loses no record it keeps, whatever commits and syncs in between.
    pub(crate) fn feed_oldest_bound(&self, read_seq: u64) -> u64 {
        self.feed_oldest_at(read_seq.saturating_add(1), u64::MAX)
    }

    fn feed_oldest_at(&self, last_seq: u64, durable_seq: u64) -> u64 {
        let by_count = last_seq
            .saturating_sub(self.options.feed_retention)
            .saturating_add(1);
        match read(&self.catalog).hold_floor(durable_seq) {
            Some(position) => by_count.min(position.saturating_add(1)),
            None => by_count,
        }
    }

    /// The highest sequence known durable (on disk; recovered after a crash).
    pub(crate) fn durable_seq(&self) -> u64 {
        lock(&self.sync).durable_seq
    }

    /// Run one compaction if the decision function asks for one (or `force`: merge all).
    pub(crate) async fn compact_once(&self, force: bool) -> Result<bool> {
        let mut manifest = self.maintenance.lock().await;
        self.check_open()?;
        self.compact_once_locked(&mut manifest, force).await
    }

    async fn compact_once_locked(&self, manifest: &mut Manifest, force: bool) -> Result<bool> {
        let version = self.view().version;
        let metas: Vec<_> = version.segments.iter().map(|s| s.meta.clone()).collect();
        let decision = if force {
            compaction::choose_all(&metas)
        } else {
            compaction::choose(&metas, self.options.compaction_trigger)
        };
        let Decision::Merge { start, end } = decision else {
            return Ok(false);
        };
        let inputs: Vec<Arc<Segment>> = version.segments[start..end].to_vec();
        let bottom = end == version.segments.len();
        let last_seq = self.view().seq;
        let horizon = self.horizon(last_seq);
        let feed_oldest = self.feed_oldest(last_seq);
        let (dropped, dropped_indexes, catalog) = {
            let cat = read(&self.catalog);
            (
                cat.dropped_before(horizon),
                cat.indexes_dropped_before(horizon),
                cat.clone(),
            )
        };
        let mut filter =
            compaction::Retain::new(horizon, bottom, feed_oldest, dropped, dropped_indexes)
                .strip_feed(catalog);
        let new_seg = self
            .write_segment(
                SegmentInput::Merge(MergeIter::new(&[], &inputs, &[], None)),
                |e, rewritten| filter.keep(e, rewritten),
                false,
            )
            .await?;
        let input_ids: Vec<u64> = inputs.iter().map(|s| s.meta.id).collect();
        let mut next = manifest.clone();
        let pos = next
            .segments
            .iter()
            .position(|s| input_ids.contains(&s.id))
            .unwrap_or(0);
        next.segments.retain(|s| !input_ids.contains(&s.id));
        if let Some(s) = &new_seg {
            next.segments.insert(pos, s.meta.clone());
        }
        next.next_file = self.next_file.load(Ordering::Relaxed);
        next.store(&*self.backend).await?;
        *manifest = next;
        {
            let mut v = write(&self.view);
            let mut segments: Vec<Arc<Segment>> = v
                .version
                .segments
                .iter()
                .filter(|s| !input_ids.contains(&s.meta.id))
                .cloned()
                .collect();
            if let Some(s) = new_seg {
                segments.insert(pos.min(segments.len()), s);
            }
            v.version = Arc::new(Version {
                mems: v.version.mems.clone(),
                segments,
            });
        }
        // Old segment files: readers holding them keep their open handles; the names go.
        for id in input_ids {
            self.backend
                .remove(&segment::file_name(id))
                .await
                .map_err(Error::io("removing a compacted segment"))?;
        }
        self.backend
            .sync_dir("")
            .await
            .map_err(Error::io("syncing the database directory"))?;
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Write the entries of `it` that `keep` accepts to a new segment, sync it and open it
    /// (an entry `keep` rewrote gets the value it left in its buffer). `None` when nothing
    /// was kept. On any error the partial file is removed (best effort;
    /// a file left behind is an orphan that the next open deletes).
    async fn write_segment(
        &self,
        mut it: SegmentInput,
        mut keep: impl FnMut(EntryRef<'_>, &mut Vec<u8>) -> Keep,
        pipelined: bool,
    ) -> Result<Option<Arc<Segment>>> {
        let id = self.next_file.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let mut wr = SegmentWriter::create(
                &*self.backend,
                id,
                self.options.block_size,
                self.options.compression,
            )
            .await?;
            if pipelined {
                wr = wr.pipelined();
            }
            // Entries are read in place and copied once, into the new segment's block.
            let mut rewritten = Vec::new();
            let mut put = |wr: &mut SegmentWriter, e: EntryRef<'_>| match keep(e, &mut rewritten) {
                Keep::Drop => {}
                Keep::Entry => wr.push(e),
                Keep::Rewritten => wr.push(EntryRef {
                    value: Some(&rewritten),
                    ..e
                }),
            };
            match &mut it {
                SegmentInput::Merge(m) => {
                    while let Some(b) = m.pick_raw().await? {
                        if let Some(e) = m.raw_at(b) {
                            put(&mut wr, e);
                        }
                        m.step_raw(b).await?;
                        wr.write_full().await?;
                    }
                }
                SegmentInput::Sorted(entries) => {
                    for e in entries {
                        put(&mut wr, e.as_ref());
                        wr.write_full().await?;
                    }
                }
            }
            if wr.entries() == 0 {
                return Ok(None);
            }
            let meta = wr.finish().await?;
            self.counters
                .segment_bytes_written
                .fetch_add(meta.size, Ordering::Relaxed);
            let seg = Segment::open(
                &*self.backend,
                id,
                self.cache.clone(),
                self.seg_stats.clone(),
            )
            .await?;
            Ok(Some(Arc::new(seg)))
        }
        .await;
        if !matches!(result, Ok(Some(_))) {
            let _ = self.backend.remove(&segment::file_name(id)).await;
        }
        result
    }

    /// Flush and compact as needed, on a committer's task: returns at once if another task
    /// holds the maintenance lock (it flushes until nothing is frozen; a memtable frozen just
    /// after it checked is picked up by the next commit), so committers never queue behind a
    /// flush.
    ///
    /// The lock is taken per step (every frozen memtable flushed, then one compaction step),
    /// so that a committer held back by too many frozen memtables gets in between two steps;
    /// it waits at most for one step's flushes and one compaction step.
    pub(crate) async fn maintain(&self) -> Result<()> {
        loop {
            let Some(mut manifest) = self.maintenance.try_lock() else {
                return Ok(());
            };
            if !self.maintenance_step(&mut manifest).await? {
                return Ok(());
            }
        }
    }

    /// [`Inner::maintain`] on the maintenance thread, for the database behind `weak`: each
    /// step waits for its turn at the process's `gate` (`background.rs`), and only then
    /// takes hold of the database, so that a database dropped meanwhile is not kept open by
    /// a thread in the queue. A step that finds the maintenance lock held (a `checkpoint()`,
    /// `compact()` or committer flush) gives its pass back while it waits for the lock (so it
    /// does not hold up other databases), then keeps the lock and takes a pass at once if
    /// one is free and nobody queues, and queues again otherwise. A wake-up that arrives
    /// while another task holds the lock is so not lost: the step runs after it.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) async fn maintain_gated(
        weak: &std::sync::Weak<Inner>,
        gate: &crate::background::Gate,
    ) -> Result<()> {
        // An ingested transaction's batch is freed first, before the queue (it takes the lock
        // only when there is one).
        match weak.upgrade() {
            Some(inner) => inner.free_discarded().await,
            None => return Ok(()),
        }
        loop {
            let mut pass = Some(gate.enter());
            let Some(inner) = weak.upgrade() else {
                return Ok(());
            };
            let mut manifest = match inner.maintenance.try_lock() {
                Some(m) => m,
                None => {
                    // Give the pass back while waiting for the lock.
                    drop(pass.take());
                    let m = inner.maintenance.lock().await;
                    pass = gate.try_enter();
                    if pass.is_none() {
                        // Queue again without the lock: a pass is never waited for while
                        // the lock is held (committers need it to flush).
                        drop(m);
                        continue;
                    }
                    m
                }
            };
            let more = inner.maintenance_step(&mut manifest).await?;
            drop(manifest);
            drop(inner);
            drop(pass);
            if !more {
                return Ok(());
            }
        }
    }

    /// One maintenance step under the maintenance lock: flush every frozen memtable, then one
    /// compaction step. Returns whether compaction may have more to do.
    async fn maintenance_step(&self, manifest: &mut Manifest) -> Result<bool> {
        // `release` sets `closed` before it takes this lock: nothing is written after it. A
        // fail-stopped database writes nothing either.
        if self.check_open().is_err() {
            return Ok(false);
        }
        self.flush_frozen_down_to(manifest, 0).await?;
        // Freed per step, not once per round: a round lasts as long as writes keep it busy,
        // and the memtables it flushed meanwhile would wait for its end.
        self.free_retired();
        self.compact_once_locked(manifest, false).await
    }

    /// The maintenance thread, if one runs and has not died.
    fn live_background(&self) -> Option<&crate::background::Background> {
        self.background.get().map(|b| &**b).filter(|b| b.alive())
    }

    /// Maintenance after a commit: handed to the background thread when there is one (the
    /// committer flushes itself only when more than `MAX_FROZEN` memtables wait, so that
    /// memory stays bounded), run here otherwise. The commit is durable: a failure here is
    /// recorded, never returned, and the next commit retries.
    async fn maintain_after_commit(&self) {
        let result = match self.live_background() {
            Some(bg) => {
                bg.wake();
                if self.view().version.mems.len() > crate::background::MAX_FROZEN + 1 {
                    // Waits for the round's current step, then flushes the oldest frozen
                    // memtables down to the bound (the thread does the rest).
                    let mut manifest = self.maintenance.lock().await;
                    if self.check_open().is_err() {
                        Ok(())
                    } else {
                        self.flush_frozen_down_to(&mut manifest, crate::background::MAX_FROZEN)
                            .await
                    }
                } else {
                    Ok(())
                }
            }
            None => self.maintain().await,
        };
        if let Err(e) = result {
            self.maintenance_failed(&e);
        }
    }

    pub(crate) fn maintenance_failed(&self, e: &Error) {
        self.maintenance_failed_with(e.to_string());
    }

    /// Count a maintenance failure and keep its message for `last_maintenance_error`.
    pub(crate) fn maintenance_failed_with(&self, message: String) {
        self.counters
            .maintenance_errors
            .fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_maintenance_error) = Some(message);
    }

    /// Commit a batch: append under the writer lock, then wait per `durability`. A batch of
    /// at least `ingest_bytes` goes straight to a segment instead (see [`Inner::ingest`]).
    pub(crate) async fn commit_locked(
        &self,
        mut w: async_lock::MutexGuardArc<WriterState>,
        batch: Batch,
        durability: Durability,
        on_appended: impl FnOnce(u64),
    ) -> Result<u64> {
        let len = batch.encoded_len();
        // The same limit on both paths, so that whether a commit is too large never depends
        // on which path it takes.
        if len > wal::MAX_PAYLOAD {
            return Err(Error::TooLarge {
                what: "transaction",
                size: len as u64,
                limit: wal::MAX_PAYLOAD as u64,
            });
        }
        let ingest = self.options.ingest_bytes;
        let manifest = if ingest > 0 && len as u64 >= ingest {
            if self.live_background().is_some() {
                // The maintenance thread may be compacting after the previous ingest: wait
                // for its current step (it never takes the writer lock, so this cannot
                // deadlock), or a bulk load would fall back to the WAL batch after batch.
                Some(self.maintenance.lock().await)
            } else {
                self.maintenance.try_lock()
            }
        } else {
            None
        };
        if let Some(manifest) = manifest {
            match self.ingest(&mut w, manifest, &batch).await {
                Ok(seq) => {
                    on_appended(seq);
                    self.publish(seq);
                    drop(w);
                    self.discard(batch);
                    if self.options.auto_maintenance {
                        self.maintain_after_commit().await;
                    }
                    return Ok(seq);
                }
                // Nothing was committed: the WAL path below may still succeed (and reports
                // fail-stop itself if a failed sync set it).
                Err(Ingest::NotCommitted(e)) => self.maintenance_failed(&e),
                Err(Ingest::Failed(e)) => return Err(e),
            }
        }
        let seq = self.append(&mut w, batch).await?;
        on_appended(seq);
        if self.needs_rotation() {
            // A failed rotation keeps the old WAL file in use and is retried by the next
            // commit; a failed seal sync has set fail-stop, which `wait_durable` reports.
            if let Err(e) = self.rotate(&mut w).await {
                self.maintenance_failed(&e);
            }
        }
        drop(w);
        match durability {
            Durability::Durable => self.wait_durable(seq).await?,
            Durability::Relaxed => self.publish(seq),
        }
        if self.options.auto_maintenance && self.view().version.mems.len() > 1 {
            // The commit is durable: a failed flush or compaction must not turn it into an
            // error. The frozen memtable stays readable and the next commit retries.
            self.maintain_after_commit().await;
        }
        Ok(seq)
    }

    /// Commit a large batch as a new newest segment, with no WAL record: the data is written
    /// once, and the write buffer is left alone. The caller updates the catalog and publishes.
    ///
    /// Invariant kept: every memtable is newer than every segment (point reads stop at the
    /// first source that has a version). So, under the writer lock (nothing is appended
    /// meanwhile) and the maintenance lock (the manifest is ours):
    ///
    /// 1. rotate and flush every frozen memtable, so that no memtable holds anything;
    /// 2. write the batch (already sorted: see [`Batch`]) as a segment whose entries all
    ///    carry `seq`, and sync it;
    /// 3. store a manifest listing it first with `flushed_seq = seq`: that store is the
    ///    commit point. Recovery then starts the WAL replay after `seq`, and a crash before
    ///    it leaves an orphan segment that the next open deletes;
    /// 4. install the segment in the view (still under the maintenance lock, so that no
    ///    compaction sees a manifest and a view that disagree), advance `last_seq` and the
    ///    sync state.
    ///
    /// An error before step 3 commits nothing ([`Ingest::NotCommitted`]: the caller falls back
    /// to the WAL). A store that fails, or whose future is dropped, may or may not have reached
    /// the disk, so it stops all writes (as a failed WAL sync does): a later commit must never
    /// reuse `seq`.
    async fn ingest(
        &self,
        w: &mut WriterState,
        mut manifest: async_lock::MutexGuard<'_, Manifest>,
        batch: &Batch,
    ) -> std::result::Result<u64, Ingest> {
        // (check_open also reports a fail-stopped database.)
        self.check_open().map_err(Ingest::Failed)?;
        let seq = w.last_seq + 1;
        self.rotate(w).await.map_err(Ingest::NotCommitted)?;
        self.flush_frozen_down_to(&mut manifest, 0)
            .await
            .map_err(Ingest::NotCommitted)?;
        debug_assert!(self.view().version.mems.iter().all(|m| m.is_empty()));
        // Clones of the Arcs, not moves: on an error before the commit point the batch goes
        // to the WAL instead.
        let entries: Vec<RawEntry> = batch
            .ops
            .iter()
            .map(|op| RawEntry {
                key: op.key.clone(),
                seq,
                op: match &op.value {
                    Some(v) => Op::Put(v.clone()),
                    None => Op::Delete,
                },
            })
            .collect();
        let seg = match self
            // The committing thread fills blocks while a helper compresses the previous
            // ones (a bulk load's segment is tens of megabytes).
            .write_segment(
                SegmentInput::Sorted(entries.into_iter()),
                |_, _| Keep::Entry,
                true,
            )
            .await
        {
            Ok(Some(seg)) => seg,
            Ok(None) => {
                return Err(Ingest::Failed(Error::InvalidArgument(
                    "an ingested transaction wrote nothing".into(),
                )));
            }
            Err(e) => return Err(Ingest::NotCommitted(e)),
        };
        let mut next = manifest.clone();
        next.segments.insert(0, seg.meta.clone());
        next.flushed_seq = seq;
        next.next_file = self.next_file.load(Ordering::Relaxed);
        // From here until the state below is updated, giving up in any way (an error, or the
        // commit's future being dropped) must stop writes.
        let mut guard = FailStopOnDrop {
            inner: self,
            armed: true,
        };
        if let Err(e) = next.store(&*self.backend).await {
            // `guard` fail-stops as it drops.
            return Err(Ingest::Failed(e));
        }
        *manifest = next;
        w.last_seq = seq;
        {
            let mut v = write(&self.view);
            let mut segments = Vec::with_capacity(v.version.segments.len() + 1);
            segments.push(seg);
            segments.extend(v.version.segments.iter().cloned());
            v.version = Arc::new(Version {
                mems: v.version.mems.clone(),
                segments,
            });
        }
        {
            let mut s = lock(&self.sync);
            s.appended_seq = seq;
            s.durable_seq = s.durable_seq.max(seq);
        }
        guard.armed = false;
        drop(manifest);
        self.counters.ingests.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Number of segments (for stats).
    pub(crate) fn segment_count(&self) -> usize {
        self.view().version.segments.len()
    }

    /// Total bytes of live segments.
    pub(crate) fn segment_bytes(&self) -> u64 {
        self.view()
            .version
            .segments
            .iter()
            .map(|s| s.meta.size)
            .sum()
    }

    /// Read and check every block of every live segment (entries counted).
    pub(crate) async fn verify_segments(&self) -> Result<u64> {
        let version = self.view().version;
        let mut n = 0;
        for s in &version.segments {
            n += s.verify_blocks().await?;
        }
        Ok(n)
    }
}

/// Gives up the group-sync leadership if the leader's future is dropped mid-sync: `syncing`
/// is cleared and the waiters wake, so one of them leads a new sync (the dropped one may
/// still complete in the background; a second sync is harmless).
struct LeaderGuard<'a> {
    inner: &'a Inner,
    armed: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.inner.sync).syncing = false;
            self.inner.sync_event.notify(usize::MAX);
        }
    }
}

/// How an ingest failed.
#[derive(Debug)]
pub(crate) enum Ingest {
    /// Before the commit point: nothing is committed, the WAL path may take the batch.
    NotCommitted(Error),
    /// Refused, or failed at or after the commit point (writes are fail-stopped).
    Failed(Error),
}

/// Fail-stops the database if dropped while armed: a manifest store that was interrupted
/// (by an error or by the commit's future being dropped) may or may not be on disk.
struct FailStopOnDrop<'a> {
    inner: &'a Inner,
    armed: bool,
}

impl Drop for FailStopOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.fail(
                "a large transaction's manifest store did not finish (an error, or the \
                 commit was cancelled); reopen the database to learn whether it committed"
                    .into(),
            );
        }
    }
}

/// What a new segment is written from: a merge of memtables and segments (flush,
/// compaction) or already sorted entries (an ingested transaction).
enum SegmentInput {
    Merge(MergeIter),
    Sorted(std::vec::IntoIter<RawEntry>),
}

/// Create WAL file `no`: header plus `prealloc` zero bytes, synced, directory synced.
async fn create_wal(backend: &dyn Backend, no: u64, prealloc: u64) -> Result<Arc<dyn File>> {
    let f = backend
        .open(&wal::file_name(no), OpenMode::CreateNew)
        .await
        .map_err(Error::io("creating a WAL file"))?;
    let mut head = wal::file_header().to_vec();
    head.resize(wal::FILE_HEADER_LEN as usize + prealloc as usize, 0);
    f.write_at(0, head)
        .await
        .map_err(Error::io("writing a WAL header"))?;
    f.sync_data()
        .await
        .map_err(Error::io("syncing a new WAL file"))?;
    backend
        .sync_dir("")
        .await
        .map_err(Error::io("syncing the database directory"))?;
    Ok(f)
}

/// Entries of `version` in `[from, end)` visible at `seq`, through the merge.
pub(crate) fn range(version: &Version, from: &[u8], end: &[u8]) -> MergeIter {
    MergeIter::new(&version.mems, &version.segments, from, Some(Arc::from(end)))
}

/// The segments that may hold keys starting with `probe` (all of them without a probe).
fn probed(version: &Version, probe: Option<&[u8]>) -> Vec<Arc<Segment>> {
    version
        .segments
        .iter()
        .filter(|s| probe.is_none_or(|p| s.may_contain(p)))
        .cloned()
        .collect()
}

/// Like [`range`], for a range of index entries that all start with `prefix` (an index key
/// without its entity id): segments whose filter rules the prefix out are skipped.
pub(crate) fn index_range(version: &Version, from: &[u8], end: &[u8], prefix: &[u8]) -> MergeIter {
    let segments = probed(version, Some(prefix));
    let mems = probed_mems(version, Some(prefix));
    MergeIter::new(&mems, &segments, from, Some(Arc::from(end)))
}

/// The memtables that may hold index entries starting with `probe` (all without a probe):
/// each keeps the exact set of its index prefixes.
fn probed_mems(version: &Version, probe: Option<&[u8]>) -> Vec<Arc<Memtable>> {
    version
        .mems
        .iter()
        .filter(|m| probe.is_none_or(|p| m.may_hold_prefix(p)))
        .cloned()
        .collect()
}

/// Entries of `[from, end)` in descending key order (see [`index_range`] for `probe`).
pub(crate) fn range_rev(
    version: &Version,
    from: &[u8],
    end: &[u8],
    probe: Option<&[u8]>,
) -> crate::merge::RevMergeIter {
    let segments = probed(version, probe);
    let mems = probed_mems(version, probe);
    crate::merge::RevMergeIter::new(&mems, &segments, from, end)
}
