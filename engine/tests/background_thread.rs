//! The maintenance thread's life (its own test binary, so that no other test's databases
//! run such threads meanwhile): one per database on the file backend, none where the
//! backend or the options do not allow it, gone after `close()` or the last handle.

#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

use std::time::Duration;

use entidb::{Database, Options};

/// Threads of this process named `entidb-maint` (Linux: `/proc/self/task/*/comm`).
fn maintenance_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "entidb-maint")
        .count()
}

async fn until_threads(n: usize) {
    for _ in 0..3000 {
        if maintenance_threads() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{} maintenance threads, expected {n}",
        maintenance_threads()
    );
}

#[tokio::test]
async fn one_thread_per_database_on_files_ended_by_close_or_the_last_handle() {
    if !std::path::Path::new("/proc/self/task").exists() {
        return; // not Linux: the thread names cannot be listed this way
    }
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(maintenance_threads(), 0);
    let a = Database::open_path(dir.path().join("a"), Options::default())
        .await
        .unwrap();
    let b = Database::open_path(dir.path().join("b"), Options::default())
        .await
        .unwrap();
    // A new thread names itself once it runs.
    until_threads(2).await;
    // None in memory, none with the option off, none read-only.
    let m = Database::memory().await.unwrap();
    let off = Database::open_path(
        dir.path().join("off"),
        Options::default().background_maintenance(false),
    )
    .await
    .unwrap();
    let ro = Database::open_path(dir.path().join("a"), Options::default().read_only(true))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(maintenance_threads(), 2);
    a.collection("c").insert(&1u32).await.unwrap();
    a.close().await.unwrap();
    until_threads(1).await;
    let clone = b.clone();
    drop(b);
    assert_eq!(maintenance_threads(), 1, "a clone keeps the database open");
    drop(clone);
    until_threads(0).await;
    for db in [m, off, ro] {
        db.close().await.unwrap();
    }
}
