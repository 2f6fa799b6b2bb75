//! Maintenance steps of many databases in one process through the process's gate (its own
//! test binary: these tests hold the gate for long steps, which would hold up the other
//! maintenance tests' databases, whose assertions are about where and when work runs).

#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entidb::Database;

#[path = "support/hooked.rs"]
mod hooked;
#[path = "support/maint.rs"]
mod maint;
use hooked::HookedFile;
use maint::{eventually, holds_across_reopen, hooked_segments, small};

/// The tests of this binary run one at a time: they share the process's gate, which lets in
/// one step at a time on 2 cores, and one of them holds it for seconds on purpose.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `write` on every database at once, each on a task of its own, and waits for all.
async fn on_each<F, Fut>(dbs: &[Database], write: F)
where
    F: Fn(Database) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = dbs
        .iter()
        .cloned()
        .map(|db| tokio::spawn(write(db)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// One commit of about 50 KiB: more than a memtable (32 KiB), so it freezes one.
async fn commit_a_memtable(db: &Database, writer: u32, round: u32) {
    let mut tx = db.begin().await.unwrap();
    for i in 0..400u32 {
        tx.collection("c")
            .insert(&serde_json::json!({
                "w": writer, "r": round, "i": i, "pad": "x".repeat(100)
            }))
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// Writers cannot outrun the maintenance thread: with the thread slowed down (its segment
/// reads take 50 ms each, so each flush, which opens the segment it wrote, and each
/// compaction step is slow) and two writers whose every commit fills a memtable, frozen
/// memtables pile up past the bound (`MAX_FROZEN`, 2), and then stop growing: a committer
/// that finds more than two waits for the thread's current step and flushes the excess.
/// At most one more per writer can be frozen before its committer waits. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_wait_for_the_flush_when_frozen_memtables_pile_up() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let threads = Arc::default();
    let backend = Arc::new(
        hooked_segments(dir.path(), &threads, || {}).wrap_file(|inner| {
            if !inner.path().ends_with(".sst") {
                return inner;
            }
            // Segment reads on the maintenance thread take 50 ms each.
            Arc::new(HookedFile::new(inner).before_read(|| {
                if std::thread::current().name() == Some("entidb-maint") {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Box::pin(async {})
            }))
        }),
    );
    let db = Database::open_with(backend, small()).await.unwrap();
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for round in 0..8u32 {
                    commit_a_memtable(&db, w, round).await;
                }
            })
        })
        .collect();
    let mut most = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        most = most.max(db.stats().frozen_memtables);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        (3..=4).contains(&most),
        "at most {most} frozen memtables: the thread did not lag, or writers outran it"
    );
    eventually(|| db.stats().frozen_memtables == 0).await;
    assert_eq!(db.stats().frozen_memtables, 0);
    holds_across_reopen(db, dir.path(), 6400, "two writers").await;
}

/// Many databases in one process share the process's gate for maintenance rounds (at most
/// half the cores run at once): each still gets its flushes and compactions, none waits
/// forever, every write survives a close and reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_databases_take_turns_at_the_maintenance_gate() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut dbs = Vec::new();
    for d in 0..8 {
        dbs.push(
            Database::open_path(dir.path().join(format!("db{d}")), small())
                .await
                .unwrap(),
        );
    }
    on_each(&dbs, |db| async move {
        let mut tx = db.begin().await.unwrap();
        for i in 0..1500u32 {
            tx.collection("c")
                .insert(&serde_json::json!({ "i": i, "pad": "y".repeat(60) }))
                .unwrap();
            if i % 50 == 49 {
                tx.commit().await.unwrap();
                tx = db.begin().await.unwrap();
            }
        }
        tx.commit().await.unwrap();
    })
    .await;
    for (d, db) in dbs.into_iter().enumerate() {
        eventually(|| db.stats().compactions > 0).await;
        let stats = db.stats();
        assert!(stats.flushes > 0, "db{d}: {stats:?}");
        assert!(stats.compactions > 0, "db{d}: {stats:?}");
        assert_eq!(stats.maintenance_errors, 0, "db{d}: {stats:?}");
        let path = dir.path().join(format!("db{d}"));
        holds_across_reopen(db, &path, 1500, &format!("db{d}")).await;
    }
}

/// The gate's limit, as `docs/design.md` states it: half the cores, at least one.
fn step_limit() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// More databases than the gate's limit (twice it, plus two) written at once, each segment
/// creation on a maintenance thread held for 20 ms: never more maintenance threads inside a
/// step at once than the limit (with no gate, all of them would overlap), and every
/// database gets its flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_across_databases_stay_within_the_gate() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut dbs = Vec::new();
    for d in 0..2 * step_limit() + 2 {
        let (inside, most) = (inside.clone(), most.clone());
        let path = dir.path().join(format!("db{d}"));
        std::fs::create_dir_all(&path).unwrap();
        let backend = hooked_segments(&path, &Arc::new(Mutex::new(Vec::new())), move || {
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            inside.fetch_sub(1, Ordering::SeqCst);
        });
        dbs.push(
            Database::open_with(Arc::new(backend), small())
                .await
                .unwrap(),
        );
    }
    on_each(&dbs, |db| async move {
        for round in 0..6u32 {
            commit_a_memtable(&db, 0, round).await;
        }
    })
    .await;
    for (d, db) in dbs.into_iter().enumerate() {
        eventually(|| db.stats().frozen_memtables == 0).await;
        assert!(db.stats().flushes > 0, "db{d}: {:?}", db.stats());
        let path = dir.path().join(format!("db{d}"));
        holds_across_reopen(db, &path, 2400, &format!("db{d}")).await;
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most >= 1, "no segment was written on a maintenance thread");
    assert!(
        most <= step_limit(),
        "{most} maintenance steps at once, the gate allows {}",
        step_limit()
    );
}
