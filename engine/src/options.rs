//! Options for opening a database.

/// How durable a commit must be before `commit()` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `commit()` returns after the transaction's WAL record is synced (`fdatasync`).
    /// Concurrent commits share one sync. The default.
    #[default]
    Durable,
    /// `commit()` returns after the WAL record is written to the backend, without waiting for
    /// a sync. A crash may lose this transaction (and later relaxed ones), never a durable one
    /// acknowledged after it, and never part of a transaction. The transaction is visible to
    /// readers at once; since snapshots are prefixes of the commit order, so is every earlier
    /// transaction, including a durable one whose sync is still in flight (its own `commit()`
    /// still returns only once it is durable).
    Relaxed,
}

/// Options for [`Database::open_with`](crate::Database::open_with).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Write-buffer budget: when the active memtable grows past this, it is frozen, a new WAL
    /// file is started, and the frozen memtable is flushed to a segment.
    pub memtable_bytes: u64,
    /// Block-cache budget in bytes.
    pub cache_bytes: u64,
    /// Uncompressed size of a segment data block.
    pub block_size: usize,
    /// Compress segment blocks with LZ4.
    pub compression: bool,
    /// How many committed transactions the change feed retains (older ones are dropped by
    /// compaction, and `changes(since)` below the horizon gives `FeedTruncated`).
    pub feed_retention: u64,
    /// Merge segments when there are more than this many.
    pub compaction_trigger: usize,
    /// Run flushes and compactions after commits that need them. Turn off to drive them only
    /// through `checkpoint()`/`compact()`.
    pub auto_maintenance: bool,
    /// With `auto_maintenance`, run flushes and compactions on a thread of the database's own
    /// (default), so that the commit that fills the write buffer returns without waiting for
    /// them; committers flush themselves only when writes outrun the thread by more than two
    /// memtables. Used on backends that allow it
    /// ([`Backend::background_threads`](entidb_io::Backend::background_threads): the native
    /// file backend). Off, or on other backends (memory, the simulated backend, wasm32), the
    /// work runs on the committing task.
    pub background_maintenance: bool,
    /// Largest document accepted.
    pub max_document_bytes: usize,
    /// Create the database if it does not exist.
    pub create_if_missing: bool,
    /// Keep the WAL file zero-filled up to this many bytes ahead of the last record, so that
    /// commit syncs overwrite allocated blocks instead of growing the file (0: off). A new WAL
    /// file starts with 64 KiB of zeros (or this, if less), and each time the log nears their
    /// end the next stretch is twice the last, up to this: a database that writes little
    /// does not carry a megabyte of zeros per WAL file.
    pub wal_preallocate: u64,
    /// Make predicate scans (`scan_where`) fail with
    /// [`Error::FullScanForbidden`](crate::Error::FullScanForbidden), so that a query that
    /// should use an index cannot silently scan a whole collection. Plain paging
    /// (`scan`) and `count` stay allowed.
    pub forbid_full_scans: bool,
    /// Open read-only: take no lock, write nothing, refuse transactions, checkpoints and
    /// compactions with [`Error::ReadOnly`](crate::Error::ReadOnly). Such a handle can look at
    /// a database another process has open for writing: it sees the state committed (and
    /// written to the WAL) when it opened. Open it again to see later commits.
    pub read_only: bool,
    /// A transaction whose writes take at least this many bytes (default 32 MiB; 0: never) is
    /// committed straight into a new segment instead of the WAL and the memtable. Its data is
    /// written once instead of twice, and it does not fill the write buffer. The commit first
    /// flushes what is in memory (older writes must reach segments first), and it is always
    /// durable, as if [`Durability::Durable`]. It takes the normal path instead while a flush
    /// or compaction runs, or if writing the segment fails. Each ingest adds a segment and
    /// two manifest stores, so a small value is only for tests.
    pub ingest_bytes: u64,
    /// A durable commit with no company (no other committer waiting for the sync or queued
    /// for the writer lock, nothing appended after it) runs its `fdatasync` on the thread
    /// that polls the commit (through
    /// [`File::sync_data_inline`](entidb_io::File::sync_data_inline)), instead of handing
    /// it to an I/O thread and being woken back: that hand-off was a quarter of such a
    /// commit's time. The thread is blocked for the sync. On by default, which suits
    /// executors with several worker threads (tokio's multi-threaded runtime); turn it off
    /// when commits are polled on a thread that must not block for a disk sync, such as an
    /// event loop's (the Python SDK does), or whose executor serves much else (`entidb serve`
    /// does). Commits with company always hand the sync off, and a commit that looks alone
    /// first yields to its executor once, so that writers ready to run join its group.
    pub inline_sync: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memtable_bytes: 64 << 20,
            cache_bytes: 64 << 20,
            block_size: 16 << 10,
            compression: true,
            feed_retention: 100_000,
            compaction_trigger: 8,
            auto_maintenance: true,
            background_maintenance: true,
            max_document_bytes: 16 << 20,
            create_if_missing: true,
            wal_preallocate: 1 << 20,
            forbid_full_scans: false,
            read_only: false,
            ingest_bytes: 32 << 20,
            inline_sync: true,
        }
    }
}

impl Options {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set [`Options::memtable_bytes`].
    pub fn memtable_bytes(mut self, v: u64) -> Self {
        self.memtable_bytes = v;
        self
    }
    /// Set [`Options::cache_bytes`].
    pub fn cache_bytes(mut self, v: u64) -> Self {
        self.cache_bytes = v;
        self
    }
    /// Set [`Options::block_size`].
    pub fn block_size(mut self, v: usize) -> Self {
        self.block_size = v.max(256);
        self
    }
    /// Set [`Options::compression`].
    pub fn compression(mut self, v: bool) -> Self {
        self.compression = v;
        self
    }
    /// Set [`Options::feed_retention`].
    pub fn feed_retention(mut self, v: u64) -> Self {
        self.feed_retention = v;
        self
    }
    /// Set [`Options::compaction_trigger`].
    pub fn compaction_trigger(mut self, v: usize) -> Self {
        self.compaction_trigger = v.max(2);
        self
    }
    /// Set [`Options::auto_maintenance`].
    pub fn auto_maintenance(mut self, v: bool) -> Self {
        self.auto_maintenance = v;
        self
    }
    /// Set [`Options::background_maintenance`].
    pub fn background_maintenance(mut self, v: bool) -> Self {
        self.background_maintenance = v;
        self
    }
    /// Set [`Options::max_document_bytes`].
    pub fn max_document_bytes(mut self, v: usize) -> Self {
        self.max_document_bytes = v;
        self
    }
    /// Set [`Options::wal_preallocate`].
    pub fn wal_preallocate(mut self, v: u64) -> Self {
        self.wal_preallocate = v;
        self
    }
    /// Set [`Options::forbid_full_scans`].
    pub fn forbid_full_scans(mut self, v: bool) -> Self {
        self.forbid_full_scans = v;
        self
    }
    /// Set [`Options::read_only`].
    pub fn read_only(mut self, v: bool) -> Self {
        self.read_only = v;
        self
    }
    /// Set [`Options::inline_sync`].
    pub fn inline_sync(mut self, v: bool) -> Self {
        self.inline_sync = v;
        self
    }
    /// Set [`Options::ingest_bytes`].
    pub fn ingest_bytes(mut self, v: u64) -> Self {
        self.ingest_bytes = v;
        self
    }
    /// Set [`Options::create_if_missing`].
    pub fn create_if_missing(mut self, v: bool) -> Self {
        self.create_if_missing = v;
        self
    }
}
