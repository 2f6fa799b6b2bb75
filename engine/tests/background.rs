//! Background maintenance on the file backend: flushes and compactions on the database's own
//! thread while tasks write and read; `close()` waits for them; the result survives reopen.

#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use entidb::Database;

#[path = "support/hooked.rs"]
mod hooked;
#[path = "support/maint.rs"]
mod maint;
use hooked::Hooked;
use maint::{eventually, holds_across_reopen, hooked_segments, small};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_and_readers_run_beside_background_flushes_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_path(dir.path(), small()).await.unwrap();
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..1500u32 {
                    let id = db
                        .collection("c")
                        .insert(&serde_json::json!({ "w": w, "i": i, "pad": "x".repeat(40) }))
                        .await
                        .unwrap();
                    ids.push((id, i));
                }
                ids
            })
        })
        .collect();
    // A reader checks that a snapshot's count never changes while it is open, and that the
    // committed count only grows.
    let reader = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..50 {
                let snap = db.snapshot();
                let a = snap.collection("c").count().await.unwrap();
                tokio::task::yield_now().await;
                let b = snap.collection("c").count().await.unwrap();
                assert_eq!(a, b, "a snapshot is stable across background rounds");
                assert!(a >= last, "the committed count only grows");
                last = a;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut all = Vec::new();
    for w in writers {
        all.push(w.await.unwrap());
    }
    reader.await.unwrap();
    eventually(|| db.stats().compactions > 0).await;
    let stats = db.stats();
    assert!(stats.flushes > 0, "{stats:?}");
    assert!(stats.compactions > 0, "{stats:?}");
    assert_eq!(db.last_maintenance_error(), None);
    let c = db.collection("c");
    assert_eq!(c.count().await.unwrap(), 3000);
    for (w, ids) in all.iter().enumerate() {
        for &(id, i) in ids.iter().step_by(97) {
            let v: serde_json::Value = c.get(id).await.unwrap().unwrap();
            assert_eq!(
                (v["w"].as_u64(), v["i"].as_u64()),
                (Some(w as u64), Some(u64::from(i)))
            );
        }
    }
    // close() waits for a round in progress: the directory is free at once.
    db.close().await.unwrap();
    let db = Database::open_path(dir.path(), small()).await.unwrap();
    assert_eq!(db.collection("c").count().await.unwrap(), 3000);
    assert!(db.verify().await.unwrap() >= 3000);
    db.close().await.unwrap();
}

#[tokio::test]
async fn without_background_maintenance_the_committer_flushes() {
    let dir = tempfile::tempdir().unwrap();
    // A backend that would allow the thread: the option alone keeps the work inline.
    let segment_threads = Arc::default();
    let backend = watched(dir.path(), &segment_threads);
    let opts = small().background_maintenance(false);
    let db = Database::open_with(backend, opts).await.unwrap();
    let mut n = 0;
    // Inline: the commit that froze a memtable has flushed it when it returns.
    while db.stats().flushes == 0 {
        db.collection("c")
            .insert(&serde_json::json!({ "n": n, "pad": "y".repeat(100) }))
            .await
            .unwrap();
        n += 1;
        assert!(n < 10_000, "a 32 KiB write buffer is flushed long before");
    }
    let threads = segment_threads.lock().unwrap().clone();
    assert!(
        !threads.is_empty() && threads.iter().all(|t| t != "entidb-maint"),
        "segments written on the committing task: {threads:?}"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_ends_the_maintenance_thread() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open_path(dir.path(), small()).await.unwrap();
        for i in 0..500u32 {
            db.collection("c")
                .insert(&serde_json::json!({ "i": i, "pad": "z".repeat(80) }))
                .await
                .unwrap();
        }
    }
    // The last handle is gone; a round in progress still holds the directory until it ends
    // (close() is the way to wait), so the reopen is retried for a bounded time.
    let mut reopened = None;
    for _ in 0..3000 {
        match Database::open_path(dir.path(), small()).await {
            Ok(db) => {
                reopened = Some(db);
                break;
            }
            Err(entidb::Error::Locked { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let db = reopened.expect("the directory is released after the last handle is dropped");
    assert_eq!(db.collection("c").count().await.unwrap(), 500);
    db.close().await.unwrap();
}

/// The file backend, recording in `threads` the thread that creates each segment file.
fn watched(dir: &std::path::Path, threads: &Arc<Mutex<Vec<String>>>) -> Arc<Hooked> {
    let threads = threads.clone();
    let fs = entidb::io::FsBackend::new(dir).unwrap();
    Arc::new(
        Hooked::new(Arc::new(fs), "watched-fs").on_open(move |path, mode| {
            if path.ends_with(".sst") && !matches!(mode, entidb::io::OpenMode::Existing) {
                let name = std::thread::current().name().unwrap_or("?").to_owned();
                // A poisoned list means another assertion already failed: keep recording.
                threads.lock().unwrap_or_else(|e| e.into_inner()).push(name);
            }
        }),
    )
}

/// One writer, well below the rate at which committers would have to help: every segment is
/// written on the maintenance thread, none on the committing task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_written_on_the_maintenance_thread() {
    let dir = tempfile::tempdir().unwrap();
    let segment_threads = Arc::default();
    let backend = watched(dir.path(), &segment_threads);
    let db = Database::open_with(backend, small()).await.unwrap();
    for i in 0..1000u32 {
        db.collection("c")
            .insert(&serde_json::json!({ "i": i, "pad": "w".repeat(100) }))
            .await
            .unwrap();
        if i % 50 == 0 {
            // Let the thread keep up: this test is about where the work runs.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eventually(|| db.stats().flushes >= 3).await;
    let threads = segment_threads.lock().unwrap().clone();
    assert!(threads.len() >= 3, "{threads:?}");
    assert!(
        threads.iter().all(|t| t == "entidb-maint"),
        "segments written off the maintenance thread: {threads:?}"
    );
    db.close().await.unwrap();
}

/// A panic in a maintenance round is caught and reported, the thread ends, and committers
/// maintain on their own tasks again: writes go on, segments are still written (off the
/// thread), and nothing is lost across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_maintenance_round_hands_maintenance_back_to_committers() {
    let dir = tempfile::tempdir().unwrap();
    let threads: Arc<Mutex<Vec<String>>> = Arc::default();
    let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p = panicked.clone();
    let backend = Arc::new(hooked_segments(dir.path(), &threads, move || {
        if !p.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected panic in a maintenance round (expected by this test)");
        }
    }));
    let db = Database::open_with(backend, small()).await.unwrap();
    let pad = "p".repeat(100);
    for i in 0..600u32 {
        db.collection("c")
            .insert(&serde_json::json!({ "i": i, "pad": pad }))
            .await
            .unwrap();
    }
    eventually(|| db.stats().maintenance_errors >= 1).await;
    assert!(panicked.load(std::sync::atomic::Ordering::SeqCst));
    let error = db.last_maintenance_error().unwrap_or_default();
    assert!(error.contains("panicked"), "{error:?}");
    let before = threads.lock().unwrap().len();
    for i in 600..1200u32 {
        db.collection("c")
            .insert(&serde_json::json!({ "i": i, "pad": pad }))
            .await
            .unwrap();
    }
    let after: Vec<String> = threads.lock().unwrap()[before..].to_vec();
    assert!(
        after.len() >= 2 && after.iter().all(|t| t != "entidb-maint"),
        "segments after the panic: {after:?}"
    );
    holds_across_reopen(db, dir.path(), 1200, "after the panic").await;
}

/// A flushed memtable that a snapshot still holds is freed by the maintenance thread, not by
/// whoever drops the last version holding it (a committer, before its commit returned): it
/// is counted in `retired_memtables` while the snapshot lives (and the snapshot still reads
/// it), and once the snapshot is dropped the thread frees it with no further write asking for
/// a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memtable_a_snapshot_held_is_freed_by_the_thread_once_the_snapshot_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_path(dir.path(), small()).await.unwrap();
    let c = db.collection("c");
    for i in 0..50u32 {
        c.insert(&serde_json::json!({ "i": i })).await.unwrap();
    }
    let snap = db.snapshot();
    // Write until the memtable the snapshot holds has been flushed (at 32 KiB a memtable,
    // a few hundred inserts freeze several; the bound only keeps a broken build finite).
    let mut written = 50u32;
    while db.stats().retired_memtables == 0 && written < 20_000 {
        c.insert(&serde_json::json!({ "i": written, "pad": "x".repeat(100) }))
            .await
            .unwrap();
        written += 1;
    }
    let stats = db.stats();
    assert!(stats.retired_memtables >= 1, "{stats:?}");
    assert_eq!(snap.collection("c").count().await.unwrap(), 50);
    drop(snap);
    eventually(|| db.stats().retired_memtables == 0).await;
    assert_eq!(db.stats().retired_memtables, 0);
    assert_eq!(c.count().await.unwrap(), u64::from(written));
    db.close().await.unwrap();
}

/// A memtable flushed by `checkpoint()` (not by the maintenance thread) is freed too: the
/// flush wakes the thread, whatever else is written afterwards (nothing, here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memtable_flushed_by_a_checkpoint_is_freed_by_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_path(dir.path(), small()).await.unwrap();
    for i in 0..20u32 {
        db.collection("c")
            .insert(&serde_json::json!({ "i": i }))
            .await
            .unwrap();
    }
    let flushes = db.stats().flushes;
    db.checkpoint().await.unwrap();
    assert!(db.stats().flushes > flushes, "{:?}", db.stats());
    eventually(|| db.stats().retired_memtables == 0).await;
    assert_eq!(db.stats().retired_memtables, 0);
    db.close().await.unwrap();
}
