//! Helpers shared by the maintenance-thread tests (`background.rs`, `background_gate.rs`).
//! The including file declares `mod hooked` (`support/hooked.rs`) beside this module.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use entidb::{Database, Options};

use crate::hooked::Hooked;

/// Wait, for a bounded time, until `done` holds (a wait for the maintenance thread, not a
/// timing assertion: the caller asserts afterwards).
pub async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn small() -> Options {
    // Small memtables and an eager compaction trigger: many rounds in a short test.
    Options::default()
        .memtable_bytes(32 << 10)
        .compaction_trigger(3)
}

/// The file backend, recording in `threads` the thread that creates each segment file and
/// calling `on_maint` when that thread is the maintenance thread.
pub fn hooked_segments(
    dir: &std::path::Path,
    threads: &Arc<Mutex<Vec<String>>>,
    on_maint: impl Fn() + Send + Sync + 'static,
) -> Hooked {
    let threads = threads.clone();
    let fs = entidb::io::FsBackend::new(dir).unwrap();
    Hooked::new(Arc::new(fs), "hooked-fs").on_open(move |path, mode| {
        if path.ends_with(".sst") && !matches!(mode, entidb::io::OpenMode::Existing) {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            let maint = name == "entidb-maint";
            threads.lock().unwrap_or_else(|e| e.into_inner()).push(name);
            if maint {
                on_maint();
            }
        }
    })
}

/// `db` holds `n` entities in collection "c", and so does the directory `dir` after a close
/// and a reopen.
pub async fn holds_across_reopen(db: Database, dir: &std::path::Path, n: u64, what: &str) {
    assert_eq!(db.collection("c").count().await.unwrap(), n, "{what}");
    db.close().await.unwrap();
    let db = Database::open_path(dir, small()).await.unwrap();
    assert_eq!(
        db.collection("c").count().await.unwrap(),
        n,
        "{what} reopened"
    );
    db.close().await.unwrap();
}
