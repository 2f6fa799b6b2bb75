//! Large transactions committed straight into a segment (`Options::ingest_bytes`): what a
//! user sees is the same as for any commit (values, versions, snapshots, indexes, the change
//! feed, reopen), the data skips the WAL, and a crash at any point keeps all of it or none.

use std::sync::Arc;

use entidb::io::{MemoryBackend, SimBackend, SimConfig};
use entidb::{ChangeOp, Database, EntityId, Error, IndexSpec, Options};
use futures_executor::block_on;

#[path = "support/hooked.rs"]
mod hooked;
use hooked::Hooked;

const ROWS: u64 = 2_000;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Row {
    n: u64,
    email: String,
}

fn row(n: u64, email: String) -> Row {
    Row { n, email }
}

fn opts() -> Options {
    // Small budgets so that a 2,000-row transaction is far over the ingest threshold while
    // a few-row one is far under it.
    Options::default()
        .memtable_bytes(256 << 10)
        .ingest_bytes(32 << 10)
}

async fn try_load(db: &Database, coll: &str, base: u64) -> Result<(Vec<EntityId>, u64), Error> {
    let mut tx = db.begin().await?;
    let mut ids = Vec::new();
    for i in 0..ROWS {
        let id = db.new_id();
        tx.collection(coll)
            .put(id, &row(base + i, format!("user{i}@example.com")))?;
        ids.push(id);
    }
    let seq = tx.commit().await?;
    Ok((ids, seq))
}

async fn load(db: &Database, coll: &str, base: u64) -> (Vec<EntityId>, u64) {
    try_load(db, coll, base).await.expect("load")
}

#[tokio::test]
async fn a_large_transaction_reads_back_like_any_other_and_survives_reopen() {
    let backend: Arc<dyn entidb::io::Backend> = Arc::new(MemoryBackend::new());
    let db = Database::open_with(backend.clone(), opts())
        .await
        .expect("open");
    let users = db.collection("users");
    users
        .create_index("by_email", IndexSpec::equality(["email"]).unique())
        .await
        .expect("index");
    // Older writes in memory, one of them overwritten by the large transaction.
    let small = users
        .insert(&row(1, "small@example.com".into()))
        .await
        .expect("put");
    let before = db.snapshot();
    let wal_before = db.stats().wal_bytes;

    let mut tx = db.begin().await.expect("begin");
    let mut ids = vec![small];
    tx.collection("users")
        .put(small, &row(0, "small2@example.com".into()))
        .expect("put");
    for i in 1..ROWS {
        let id = db.new_id();
        tx.collection("users")
            .put(id, &row(i, format!("user{i}@example.com")))
            .expect("put");
        ids.push(id);
    }
    let seq = tx.commit().await.expect("commit");

    let s = db.stats();
    assert_eq!(s.ingests, 1, "{s:?}");
    assert!(
        s.wal_bytes - wal_before < 4096,
        "the rows did not go through the WAL: {s:?}"
    );
    assert_eq!(db.last_sequence(), seq);
    // Values, versions, the index, the older snapshot.
    assert_eq!(
        users.get::<Row>(small).await.expect("get"),
        Some(row(0, "small2@example.com".into()))
    );
    assert_eq!(users.version(ids[7]).await.expect("version"), Some(seq));
    assert_eq!(users.count().await.expect("count"), ROWS);
    let hit = users
        .find_one("by_email", "user77@example.com")
        .await
        .expect("find")
        .expect("indexed");
    assert_eq!(hit.id(), ids[77]);
    assert!(
        users
            .find_one("by_email", "small@example.com")
            .await
            .expect("find")
            .is_none(),
        "the overwritten value left the index"
    );
    assert_eq!(
        before
            .collection("users")
            .get::<Row>(small)
            .await
            .expect("get"),
        Some(row(1, "small@example.com".into()))
    );
    assert!(
        before
            .collection("users")
            .get::<Row>(ids[5])
            .await
            .expect("get")
            .is_none()
    );
    drop(before);
    // The change feed has the transaction once, whole.
    let feed = db.changes_page(seq - 1, 10).await.expect("feed");
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].seq, seq);
    assert_eq!(feed[0].changes.len(), ROWS as usize);
    assert!(
        feed[0]
            .changes
            .iter()
            .all(|c| matches!(c.op, ChangeOp::Put(_)))
    );
    // A unique violation in a large transaction fails with nothing written.
    let mut tx = db.begin().await.expect("begin");
    for i in 0..ROWS {
        tx.collection("users")
            .put(db.new_id(), &row(i, format!("user{i}@example.com")))
            .expect("put");
    }
    let err = tx.commit().await.expect_err("duplicate emails");
    assert!(matches!(err, Error::UniqueViolation { .. }), "{err}");
    assert_eq!(db.stats().ingests, 1);
    assert_eq!(users.count().await.expect("count"), ROWS);

    // Small commits after it go through the WAL and continue the sequence; a reopen without
    // a clean close replays them after the ingested sequence.
    let wal_before = db.stats().wal_bytes;
    let after = users
        .insert(&row(9, "after@example.com".into()))
        .await
        .expect("put");
    assert!(
        db.stats().wal_bytes > wal_before,
        "a small commit uses the WAL"
    );
    drop(users);
    drop(db);
    let db = Database::open_with(backend.clone(), opts())
        .await
        .expect("reopen");
    let users = db.collection("users");
    assert_eq!(users.count().await.expect("count"), ROWS + 1);
    assert_eq!(users.version(ids[1]).await.expect("version"), Some(seq));
    assert_eq!(users.version(after).await.expect("version"), Some(seq + 1));
    assert!(db.verify_indexes().await.expect("verify").is_ok());
    db.close().await.expect("close");
    let db = Database::open_with(backend, opts()).await.expect("reopen");
    assert_eq!(
        db.collection("users").count().await.expect("count"),
        ROWS + 1
    );
    assert!(db.verify().await.expect("verify") >= ROWS);
}

#[tokio::test]
async fn with_ingest_off_or_under_the_threshold_a_large_transaction_uses_the_wal() {
    for options in [opts().ingest_bytes(0), opts().ingest_bytes(64 << 20)] {
        let db = Database::open_with(Arc::new(MemoryBackend::new()), options)
            .await
            .expect("open");
        let (ids, seq) = load(&db, "c", 0).await;
        let s = db.stats();
        assert_eq!(s.ingests, 0);
        assert!(s.wal_bytes > ROWS * 20, "{s:?}");
        assert_eq!(
            db.collection("c").version(ids[0]).await.expect("v"),
            Some(seq)
        );
    }
}

#[test]
fn a_crash_during_a_large_commit_keeps_all_of_it_or_none() {
    let points: u64 = std::env::var("INGEST_CRASH_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut saw = [0u32; 2];
    for point in 1..=points {
        let sim = SimBackend::new(point, SimConfig::default());
        let backend: Arc<dyn entidb::io::Backend> = Arc::new(sim.clone());
        block_on(async {
            let db = Database::open_with(backend.clone(), opts())
                .await
                .expect("open");
            // Durable data in the WAL and in a segment before the large commit.
            let (first, _) = load(&db, "a", 0).await;
            let kept = db.collection("b").insert(&7u64).await.expect("put");
            sim.set_faults(SimConfig {
                crash_after_ops: Some(point),
                ..SimConfig::default()
            });
            let result = try_load(&db, "c", 1_000_000).await;
            if result.is_ok() {
                assert_eq!(
                    db.stats().ingests,
                    2,
                    "point {point}: the commit was ingested"
                );
            }
            drop(db);
            sim.crash_now();
            sim.restart();
            sim.set_faults(SimConfig::default());
            let db = Database::open_with(backend.clone(), opts())
                .await
                .unwrap_or_else(|e| panic!("point {point}: reopen: {e}"));
            assert_eq!(
                db.collection("a").count().await.expect("count"),
                ROWS,
                "point {point}"
            );
            assert!(db.collection("a").exists(first[3]).await.expect("get"));
            assert_eq!(
                db.collection("b").get::<u64>(kept).await.expect("get"),
                Some(7),
                "point {point}"
            );
            let n = db.collection("c").count().await.expect("count");
            assert!(
                n == 0 || n == ROWS,
                "point {point}: {n} rows of a transaction"
            );
            let feed = db.changes_page(0, 100).await.expect("feed");
            assert_eq!(feed.len() as u64, db.last_sequence(), "point {point}");
            if n == 0 {
                // Only a commit that reported an error may be missing.
                assert!(
                    result.is_err(),
                    "point {point}: an acknowledged commit was lost"
                );
                saw[0] += 1;
            } else {
                saw[1] += 1;
            }
            // Writes continue after recovery, and survive another reopen.
            let (more, seq) = load(&db, "d", 0).await;
            db.close().await.expect("close");
            let db = Database::open_with(backend.clone(), opts())
                .await
                .expect("reopen");
            assert_eq!(
                db.collection("d").version(more[0]).await.expect("v"),
                Some(seq)
            );
            assert!(db.verify_indexes().await.expect("verify").is_ok());
        });
    }
    eprintln!(
        "crash points: {} lost the commit, {} kept it",
        saw[0], saw[1]
    );
    assert!(
        saw[0] > 0 && saw[1] > 0,
        "the crash points cover both outcomes"
    );
}

/// A large commit cancelled while its manifest store is in flight may or may not have
/// committed, so the database stops writing (a later commit must not reuse its sequence);
/// a reopen finds one state or the other, whole.
#[tokio::test]
async fn a_large_commit_cancelled_at_its_commit_point_stops_writes() {
    use std::sync::atomic::Ordering::SeqCst;
    // The install of a new `MANIFEST` (the rename) never finishes while `hang` is set: the
    // moment an ingest's commit point is in flight.
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (h, r) = (hang.clone(), reached.clone());
    let backend = Arc::new(
        Hooked::new(Arc::new(MemoryBackend::new()), "hanging-manifest").on_rename(move |_, to| {
            (to == "MANIFEST" && h.load(SeqCst)).then(|| {
                r.store(true, SeqCst);
                Box::pin(std::future::pending()) as entidb::io::BoxFuture<'static, _>
            })
        }),
    );
    let db = Database::open_with(backend.clone(), opts())
        .await
        .expect("open");
    let kept = db.collection("a").insert(&7u64).await.expect("put");
    // Nothing in memory: the ingest's first manifest store is its commit point (with data in
    // memory it would first flush it, and that flush's store, cancelled, commits nothing).
    db.checkpoint().await.expect("checkpoint");
    hang.store(true, SeqCst);
    {
        let commit = try_load(&db, "big", 0);
        let cancelled = tokio::time::timeout(std::time::Duration::from_millis(200), commit).await;
        assert!(cancelled.is_err(), "the commit hangs at its manifest store");
    }
    assert!(reached.load(SeqCst), "it reached the commit point");
    hang.store(false, SeqCst);
    let err = db
        .collection("a")
        .insert(&8u64)
        .await
        .expect_err("writes are stopped");
    assert!(matches!(err, Error::FailStopped { .. }), "{err}");
    assert_eq!(
        db.collection("a")
            .get::<u64>(kept)
            .await
            .expect("reads go on"),
        Some(7)
    );
    drop(db);
    let db = Database::open_with(backend, opts()).await.expect("reopen");
    let n = db.collection("big").count().await.expect("count");
    assert!(n == 0 || n == ROWS, "{n} rows of one transaction");
    assert_eq!(
        db.collection("a").get::<u64>(kept).await.expect("get"),
        Some(7)
    );
    db.collection("a")
        .insert(&9u64)
        .await
        .expect("writes after reopen");
}

/// An ingested transaction's batch (here: 200 references to one document) is freed off the
/// committing task, by the maintenance thread or by `close()` at the latest, even while
/// another handle keeps the database's state alive.
#[tokio::test]
async fn an_ingested_batch_is_freed_by_close_at_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_path(dir.path(), Options::default().ingest_bytes(4096))
        .await
        .unwrap();
    let doc = entidb::cbor::Canonical::from_value(&entidb::cbor::Value::map([(
        "pad",
        entidb::cbor::Value::Bytes(vec![7; 100]),
    )]))
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    for _ in 0..200 {
        let id = db.new_id();
        tx.collection("c").put_canonical(id, &doc).unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(db.stats().ingests, 1, "the transaction was not ingested");
    let other = db.clone();
    db.close().await.unwrap();
    assert_eq!(
        std::sync::Arc::strong_count(doc.shared()),
        1,
        "the ingested batch still holds the documents"
    );
    drop(other);
}
