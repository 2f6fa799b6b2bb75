//! Counters, and the [`Stats`] snapshot users read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub commits: AtomicU64,
    pub aborts: AtomicU64,
    pub scans: AtomicU64,
    pub scanned_entities: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub flushes: AtomicU64,
    pub ingests: AtomicU64,
    pub compactions: AtomicU64,
    pub segment_bytes_written: AtomicU64,
    pub maintenance_errors: AtomicU64,
    pub index_lookups: AtomicU64,
    pub index_entries_read: AtomicU64,
}

/// A snapshot of a database's counters since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Point reads (get, exists, version).
    pub reads: u64,
    /// Entity writes (puts and deletes) committed.
    pub writes: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Transactions aborted.
    pub aborts: u64,
    /// Scans started (full scans, counts and predicate scans).
    pub scans: u64,
    /// Entities visited by scans.
    pub scanned_entities: u64,
    /// Bytes appended to the WAL.
    pub wal_bytes: u64,
    /// Bytes written to segments (flushes and compactions).
    pub segment_bytes_written: u64,
    /// Bytes read from segment files (block cache misses).
    pub bytes_read: u64,
    /// Block cache hits.
    pub cache_hits: u64,
    /// Block cache misses.
    pub cache_misses: u64,
    /// Segment reads skipped by a filter.
    pub filter_skips: u64,
    /// `sync_data` calls on the WAL.
    pub syncs: u64,
    /// Memtable flushes.
    pub flushes: u64,
    /// Large transactions committed straight into a segment (see
    /// [`Options::ingest_bytes`](crate::Options::ingest_bytes)).
    pub ingests: u64,
    /// Compactions.
    pub compactions: u64,
    /// Flushes or compactions that failed after a commit (retried later; the commit itself
    /// was durable). See [`Database::last_maintenance_error`](crate::Database::last_maintenance_error).
    pub maintenance_errors: u64,
    /// Index lookups started.
    pub index_lookups: u64,
    /// Index entries visited by lookups.
    pub index_entries_read: u64,
    /// Live segments.
    pub segments: u64,
    /// Bytes in live segments.
    pub segment_bytes: u64,
    /// Memtables frozen and waiting to be flushed (a gauge). With background maintenance,
    /// a committer that finds more than two waits for the maintenance thread's current step
    /// and flushes the excess itself, so writers cannot outrun the flush.
    pub frozen_memtables: u64,
    /// Flushed memtables that older versions (snapshots, transactions begun before the
    /// flush) still hold, waiting for the maintenance thread to free them once nobody does
    /// (a gauge; always 0 without a maintenance thread, where the last holder frees one).
    pub retired_memtables: u64,
    /// Highest committed sequence.
    pub last_sequence: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            commits: self.commits.load(Relaxed),
            aborts: self.aborts.load(Relaxed),
            scans: self.scans.load(Relaxed),
            scanned_entities: self.scanned_entities.load(Relaxed),
            wal_bytes: self.wal_bytes.load(Relaxed),
            segment_bytes_written: self.segment_bytes_written.load(Relaxed),
            syncs: self.syncs.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            ingests: self.ingests.load(Relaxed),
            compactions: self.compactions.load(Relaxed),
            maintenance_errors: self.maintenance_errors.load(Relaxed),
            index_lookups: self.index_lookups.load(Relaxed),
            index_entries_read: self.index_entries_read.load(Relaxed),
            ..Stats::default()
        }
    }
}
