//! Fuzzes every on-disk decoder at once (manifest, WAL records, segment footer, index, filter
//! and blocks, change-feed and catalog records): arbitrary bytes become the files of a
//! database directory on the memory backend, which is then opened and read in full. Nothing
//! may panic; a refusal is `Corruption`, `UnsupportedFormat`, `Io` with `NotFound` (a file
//! the manifest names is missing) or, for the change feed, `FeedTruncated`.
//!
//! Input: a sequence of `kind u8 | number u8 | len u16 LE | bytes`; `kind % 3` picks
//! `MANIFEST`, `wal-<number>.log` or `seg-<number>.sst` (numbers as 16 hex digits), a later
//! chunk with the same name replaces the earlier one. A good seed corpus is the files of a
//! small real database in this framing (fuzz/README.md).

#![no_main]

use std::sync::Arc;

use entidb::io::{Backend, IoError, MemoryBackend, OpenMode};
use entidb::{Database, Error, Options, ScanOptions};
use libfuzzer_sys::fuzz_target;

fn name(kind: u8, number: u8) -> String {
    match kind % 3 {
        0 => "MANIFEST".to_owned(),
        1 => format!("wal-{number:016x}.log"),
        _ => format!("seg-{number:016x}.sst"),
    }
}

/// The refusals open and reads may give: damage, an unknown format, or a file the manifest
/// names that is not there (`Io` with `NotFound`, as design.md section 6 says).
fn refused(e: &Error) {
    assert!(
        e.is_corruption()
            || matches!(
                e,
                Error::UnsupportedFormat { .. }
                    | Error::Io {
                        source: IoError::NotFound { .. },
                        ..
                    }
            ),
        "not a corruption, format or missing-file error: {e}"
    );
}

fuzz_target!(|input: &[u8]| {
    futures_executor::block_on(async {
        let backend = MemoryBackend::new();
        let mut rest = input;
        while let [kind, number, lo, hi, tail @ ..] = rest {
            let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
            let name = name(*kind, *number);
            let _ = backend.remove(&name).await;
            let Ok(f) = backend.open(&name, OpenMode::CreateNew).await else {
                return;
            };
            if f.write_at(0, tail[..len].to_vec()).await.is_err() {
                return;
            }
            rest = &tail[len..];
        }
        let db = match Database::open_with(Arc::new(backend), Options::default()).await {
            Ok(db) => db,
            Err(e) => return refused(&e),
        };
        for name in db.collections() {
            if let Err(e) = db.collection(&name).scan(ScanOptions::limit(100_000)).await {
                refused(&e);
            }
        }
        if let Err(e) = db.verify().await {
            refused(&e);
        }
        if let Err(e) = db.changes_page(0, 100_000).await {
            if !matches!(e, Error::FeedTruncated { .. }) {
                refused(&e);
            }
        }
    });
});
