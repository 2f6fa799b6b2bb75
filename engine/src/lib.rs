//! # EntiDB
//!
//! An async-native embedded entity database: collections of CBOR documents addressed by
//! 16-byte ids, MVCC snapshots, single-writer transactions with group commit, a durable change
//! feed, and crash-safe storage (a WAL plus immutable sorted segments). All I/O goes through
//! [`entidb_io`], so the same engine runs on files, in memory, in a browser and inside a
//! deterministic simulation. See `docs/design.md` for the file formats and protocols.
//!
//! Start with [`Database`].

mod background;
pub mod backup;
pub mod cbor;

mod block_encode;
mod bloom;
mod catalog;
mod compaction;
mod database;
mod db;
mod document;
mod error;
mod feed;
mod heads;
mod ids;
pub mod index;
mod keys;
mod manifest;
mod memtable;
mod merge;
mod migrate;
mod options;
mod overlay;
mod points;
mod read;
mod segment;
mod stats;
mod txn;
mod varint;
mod wal;

pub use backup::{
    BackupSink, BackupSource, BackupSummary, ReadSource, SliceSource, WriteSink, verify_backup,
};
pub use catalog::{
    MAX_COLLECTION_NAME_BYTES, MAX_HOLD_NAME_BYTES, check_name as check_collection_name,
};
pub use database::{Collection, Database};
pub use document::{Document, Page, ScanOptions};
pub use error::{Error, Result};
pub use feed::{Change, ChangeBatch, ChangeOp, ChangeStream, MAX_ORIGIN_BYTES};
pub use ids::{EntityId, ParseIdError};
pub use index::{
    IndexCursor, IndexInfo, IndexKind, IndexPage, IndexReport, IndexSpec, Lookup, Query, SearchHit,
    SearchMode, SearchQuery, TextOptions,
};
pub use migrate::{MigrationReport, Migrations};
pub use options::{Durability, Options};
pub use stats::Stats;
pub use txn::{Snapshot, SnapshotCollection, TxCollection, WriteTxn};

/// The I/O backends, re-exported.
pub use entidb_io as io;

/// Whether `name` is one of a database's log or segment files (`wal-<16 hex>.log`,
/// `seg-<16 hex>.sst`): a directory that holds one and no MANIFEST is a damaged database,
/// not an empty directory.
pub fn is_data_file_name(name: &str) -> bool {
    wal::parse_file_name(name).is_some() || segment::parse_file_name(name).is_some()
}
