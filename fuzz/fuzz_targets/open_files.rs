//! Fuzzes every on-disk decoder at once (manifest, WAL records, segment footer, index, filter
//! and blocks, change-feed and catalog records): arbitrary bytes become the files of a
//! database directory on the memory backend, which is then opened and read in full. Nothing
//! may panic; a refusal is `Corruption` or `UnsupportedFormat`.
//!
//! Input: a sequence of `tag u8 | len u16 LE | bytes`; `tag % 4` names the file (MANIFEST,
//! the first WAL file, a second WAL file, a segment), a later chunk with the same name
//! replaces the earlier one. A good seed corpus is the files of a small real database in
//! this framing (fuzz/README.md).

#![no_main]

use std::sync::Arc;

use entidb::io::{Backend, MemoryBackend, OpenMode};
use entidb::{Database, Error, Options, ScanOptions};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = [
    "MANIFEST",
    "wal-0000000000000001.log",
    "wal-0000000000000002.log",
    "seg-0000000000000003.sst",
];

fn refused(e: &Error) {
    assert!(
        e.is_corruption() || matches!(e, Error::UnsupportedFormat { .. }),
        "not a corruption or format error: {e}"
    );
}

fuzz_target!(|input: &[u8]| {
    futures_executor::block_on(async {
        let backend = MemoryBackend::new();
        let mut rest = input;
        while let [tag, lo, hi, tail @ ..] = rest {
            let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
            let name = NAMES[usize::from(*tag) % NAMES.len()];
            let _ = backend.remove(name).await;
            let Ok(f) = backend.open(name, OpenMode::CreateNew).await else {
                return;
            };
            if f.write_at(0, tail[..len].to_vec()).await.is_err() {
                return;
            }
            rest = &tail[len..];
        }
        let options = Options::default().background_maintenance(false);
        let db = match Database::open_with(Arc::new(backend), options).await {
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
            assert!(
                e.is_corruption()
                    || matches!(
                        e,
                        Error::UnsupportedFormat { .. } | Error::FeedTruncated { .. }
                    ),
                "{e}"
            );
        }
    });
});
