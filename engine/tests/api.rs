//! The public Rust API used as a user would: memory and file backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use entidb::io::MemoryBackend;

use entidb::{ChangeOp, Database, Durability, EntityId, Error, Options, ScanOptions};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[path = "support/hooked.rs"]
mod hooked;
use hooked::{Hooked, HookedFile};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
    tags: Vec<String>,
}

fn user(name: &str, age: u32) -> User {
    User {
        name: name.into(),
        age,
        tags: vec!["a".into()],
    }
}

#[tokio::test]
async fn crud_versions_and_scan() {
    let db = Database::memory().await.unwrap();
    let users = db.collection("users");
    assert_eq!(users.get::<User>(EntityId::MIN).await.unwrap(), None);
    let a = users.insert(&user("Ada", 36)).await.unwrap();
    let b = users.insert(&user("Grace", 45)).await.unwrap();
    assert!(a < b, "generated ids are time-ordered");
    assert_eq!(users.get::<User>(a).await.unwrap(), Some(user("Ada", 36)));
    let v1 = users.version(a).await.unwrap().unwrap();
    let v2 = users.put(a, &user("Ada", 37)).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(users.version(a).await.unwrap(), Some(v2));
    assert!(users.exists(b).await.unwrap());
    assert_eq!(users.count().await.unwrap(), 2);
    assert!(users.delete(b).await.unwrap());
    assert!(!users.delete(b).await.unwrap());
    assert!(!users.exists(b).await.unwrap());
    assert_eq!(db.collections(), vec!["users".to_owned()]);

    for i in 0..25 {
        users.insert(&user(&format!("u{i}"), i)).await.unwrap();
    }
    let mut all = vec![];
    let mut opts = ScanOptions::limit(10);
    loop {
        let page = users.scan(opts).await.unwrap();
        assert!(page.items.len() <= 10);
        all.extend(page.items.iter().map(|d| d.id()));
        match page.next {
            Some(c) => opts = opts.after(c),
            None => break,
        }
    }
    assert_eq!(all.len(), 26);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "scan is in id order");
    let old = users
        .scan_where(ScanOptions::limit(100), |d| {
            d.decode::<User>().map(|u| u.age >= 20).unwrap_or(false)
        })
        .await
        .unwrap();
    assert_eq!(old.items.len(), 1 + 5);
    assert!(db.stats().scans >= 1);
}

#[tokio::test]
async fn transactions_read_your_writes_abort_and_expected_versions() {
    let db = Database::memory().await.unwrap();
    let id = db.new_id();
    let mut tx = db.begin().await.unwrap();
    tx.collection("c").put(id, &user("x", 1)).unwrap();
    assert_eq!(
        tx.collection("c").get::<User>(id).await.unwrap(),
        Some(user("x", 1))
    );
    assert_eq!(
        tx.collection("c")
            .scan(ScanOptions::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // Not visible outside before commit.
    assert_eq!(db.collection("c").get::<User>(id).await.unwrap(), None);
    tx.abort();
    assert_eq!(db.collection("c").get::<User>(id).await.unwrap(), None);
    assert!(
        db.collections().is_empty(),
        "aborted create leaves no collection"
    );

    let v = db.collection("c").put(id, &user("x", 1)).await.unwrap();
    let err = db
        .collection("c")
        .put_if(id, &user("y", 2), Some(v + 100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VersionConflict { .. }), "{err}");
    let err = db
        .collection("c")
        .put_if(id, &user("y", 2), None)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::VersionConflict {
            actual: Some(_),
            ..
        }
    ));
    db.collection("c")
        .put_if(id, &user("y", 2), Some(v))
        .await
        .unwrap();

    // Closure form: Err aborts, Ok commits.
    let r: Result<(), Error> = db
        .write(async |tx| {
            tx.collection("c").put(id, &user("z", 3))?;
            Err(Error::InvalidArgument("no".into()))
        })
        .await;
    assert!(r.is_err());
    assert_eq!(
        db.collection("c").get::<User>(id).await.unwrap(),
        Some(user("y", 2))
    );
    let n: u32 = db
        .write(async |tx| {
            tx.collection("c").put(id, &user("z", 3))?;
            Ok::<_, Error>(7)
        })
        .await
        .unwrap();
    assert_eq!(n, 7);
    assert_eq!(
        db.collection("c").get::<User>(id).await.unwrap(),
        Some(user("z", 3))
    );
}

#[tokio::test]
async fn snapshots_are_stable_and_do_not_block_the_writer() {
    let db = Database::memory().await.unwrap();
    let c = db.collection("c");
    let id = c.insert(&1u32).await.unwrap();
    let snap = db.snapshot();
    c.put(id, &2u32).await.unwrap();
    let id2 = c.insert(&3u32).await.unwrap();
    db.checkpoint().await.unwrap();
    db.compact().await.unwrap();
    assert_eq!(snap.collection("c").get::<u32>(id).await.unwrap(), Some(1));
    assert_eq!(snap.collection("c").get::<u32>(id2).await.unwrap(), None);
    assert_eq!(snap.collection("c").count().await.unwrap(), 1);
    assert_eq!(c.get::<u32>(id).await.unwrap(), Some(2));
}

#[tokio::test]
async fn collections_create_list_drop() {
    let db = Database::memory().await.unwrap();
    db.create_collection("a").await.unwrap();
    assert!(matches!(
        db.create_collection("a").await,
        Err(Error::CollectionExists(_))
    ));
    assert!(matches!(
        db.create_collection("").await,
        Err(Error::InvalidCollectionName { .. })
    ));
    let id = db.collection("b").insert(&"doc").await.unwrap();
    assert_eq!(db.collections(), vec!["a".to_owned(), "b".to_owned()]);
    assert!(db.drop_collection("b").await.unwrap());
    assert!(!db.drop_collection("b").await.unwrap());
    assert_eq!(db.collection("b").get::<String>(id).await.unwrap(), None);
    // Re-created collections start empty.
    db.collection("b").insert(&"new").await.unwrap();
    assert_eq!(db.collection("b").count().await.unwrap(), 1);
}

#[tokio::test]
async fn change_feed_reports_every_commit_in_order_with_origin() {
    let db = Database::memory().await.unwrap();
    let c = db.collection("c");
    let a = c.insert(&"one").await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.set_origin("replicator").unwrap();
    tx.collection("c").put(a, &"two").unwrap();
    tx.commit().await.unwrap();
    c.delete(a).await.unwrap();
    let page = db.changes_page(0, 100).await.unwrap();
    assert_eq!(page.len(), 3);
    assert!(page.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(page[0].changes[0].op, ChangeOp::CollectionCreated);
    assert_eq!(page[0].changes[1].id, Some(a));
    assert!(matches!(&page[0].changes[1].op, ChangeOp::Put(_)));
    assert_eq!(page[1].origin.as_deref(), Some("replicator"));
    assert_eq!(page[2].changes[0].op, ChangeOp::Delete);

    // The stream replays history, then follows new commits.
    let mut stream = db.changes(page[1].seq);
    let next = stream.next().await.unwrap().unwrap();
    assert_eq!(next.seq, page[2].seq);
    let db2 = db.clone();
    let writer = tokio::spawn(async move { db2.collection("c").insert(&"later").await.unwrap() });
    let live = stream.next().await.unwrap().unwrap();
    let id = writer.await.unwrap();
    assert_eq!(live.changes[0].id, Some(id));
}

#[tokio::test]
async fn invalid_cbor_is_refused_and_nothing_is_stored() {
    let db = Database::memory().await.unwrap();
    let c = db.collection("c");
    let id = db.new_id();
    let err = c.put_cbor(id, &[0xa1, 0x01]).await.unwrap_err();
    assert!(matches!(err, Error::Document(_)), "{err}");
    assert_eq!(c.get_document(id).await.unwrap(), None);
    // Non-canonical but valid input is canonicalized.
    c.put_cbor(id, &[0xa2, 0x61, 0x62, 0x02, 0x61, 0x61, 0x01])
        .await
        .unwrap();
    let doc = c.get_document(id).await.unwrap().unwrap();
    assert_eq!(doc.bytes(), &[0xa2, 0x61, 0x61, 0x01, 0x61, 0x62, 0x02]);
    let big = vec![0u8; 17 << 20];
    assert!(matches!(
        c.put(id, &serde_bytes_like(big)).await,
        Err(Error::TooLarge { .. })
    ));
}

#[tokio::test]
async fn canonical_documents_pass_through_without_copies() {
    use entidb::cbor::{Canonical, Value};
    let db = Database::memory().await.unwrap();
    let c = db.collection("c");
    let id = db.new_id();
    let doc = Canonical::from_value(&Value::map([("n", 1)])).unwrap();
    let v = c.put_canonical(id, &doc).await.unwrap();
    // Reads and the change feed hand out the stored bytes: equal, and shared with the
    // document that was put (nothing decoded or copied on the way).
    let read = c.get_document(id).await.unwrap().unwrap();
    assert_eq!((read.version(), read.canonical()), (v, doc.clone()));
    assert!(Arc::ptr_eq(read.canonical().shared(), doc.shared()));
    let feed = db.changes_page(0, 10).await.unwrap();
    let put = feed
        .iter()
        .flat_map(|b| &b.changes)
        .find_map(|ch| match &ch.op {
            ChangeOp::Put(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(put, doc);
    assert!(Arc::ptr_eq(put.shared(), doc.shared()));
    // In a transaction too, next to a value written another way.
    let mut tx = db.begin().await.unwrap();
    let other = db.new_id();
    tx.collection("c").put_canonical(other, &put).unwrap();
    tx.collection("c").put(id, &2u32).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        c.get::<Value>(other).await.unwrap(),
        Some(Value::map([("n", 1)]))
    );
    assert_eq!(c.get::<u32>(id).await.unwrap(), Some(2));
    // The value survives a flush to a segment.
    db.checkpoint().await.unwrap();
    assert_eq!(
        c.get_document(other).await.unwrap().unwrap().canonical(),
        doc
    );
}

/// Scans read documents in place from the segment blocks (long pages share the blocks,
/// short or filtered ones copy): whichever way, what they return stays right after the
/// blocks are evicted, the entities rewritten and the segments compacted away.
#[tokio::test]
async fn scanned_documents_outlive_their_blocks() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Row {
        n: u32,
        pad: String,
    }
    let row = |n: u32, era: &str| Row {
        n,
        pad: format!("{era}-{}", "x".repeat(100)),
    };
    let options = Options::default().cache_bytes(8 << 10).block_size(1024);
    let db = Database::open_with(Arc::new(MemoryBackend::new()), options)
        .await
        .unwrap();
    let c = db.collection("rows");
    let mut ids = Vec::new();
    let mut tx = db.begin().await.unwrap();
    for n in 0..1000 {
        let id = db.new_id();
        tx.collection("rows").put(id, &row(n, "old")).unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    db.checkpoint().await.unwrap();

    let mut held = Vec::new();
    let mut opts = ScanOptions::limit(500);
    loop {
        let page = c.scan(opts).await.unwrap();
        held.extend(page.items);
        match page.next {
            Some(n) => opts = opts.after(n),
            None => break,
        }
    }
    let short = c.scan(ScanOptions::limit(3)).await.unwrap().items;
    let filtered = c
        .scan_where(ScanOptions::limit(1000), |d| {
            d.decode::<Row>().is_ok_and(|r| r.n % 10 == 0)
        })
        .await
        .unwrap()
        .items;
    assert_eq!((held.len(), short.len(), filtered.len()), (1000, 3, 100));

    let mut tx = db.begin().await.unwrap();
    for (n, id) in ids.iter().enumerate() {
        tx.collection("rows")
            .put(*id, &row(n as u32, "new"))
            .unwrap();
    }
    tx.commit().await.unwrap();
    db.checkpoint().await.unwrap();
    db.compact().await.unwrap();

    for (i, d) in held.iter().enumerate() {
        assert_eq!(d.id(), ids[i]);
        assert_eq!(d.decode::<Row>().unwrap(), row(i as u32, "old"));
        assert_eq!(d.canonical().as_bytes(), d.bytes());
    }
    for (d, want) in short.iter().zip(&held) {
        assert_eq!(d, want);
    }
    for d in &filtered {
        let r = d.decode::<Row>().unwrap();
        assert_eq!((r.n % 10, d.id()), (0, ids[r.n as usize]));
        assert_eq!(r, row(r.n, "old"));
    }
    // And the database itself holds the new rows.
    let now = c.scan(ScanOptions::limit(1000)).await.unwrap().items;
    assert_eq!(now[7].decode::<Row>().unwrap(), row(7, "new"));
}

fn serde_bytes_like(v: Vec<u8>) -> entidb::cbor::Value {
    entidb::cbor::Value::Bytes(v)
}

#[tokio::test]
async fn files_survive_reopen_and_second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().memtable_bytes(64 << 10);
    let mut ids = vec![];
    {
        let db = Database::open_path(dir.path(), opts.clone()).await.unwrap();
        let err = Database::open(dir.path()).await.unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        let c = db.collection("docs");
        for i in 0..2000u32 {
            let mut tx = db.begin().await.unwrap();
            let id = tx
                .collection("docs")
                .insert(&user(&format!("n{i}"), i))
                .unwrap();
            if i % 2 == 0 {
                tx.set_durability(Durability::Relaxed);
            }
            tx.commit().await.unwrap();
            ids.push(id);
        }
        c.delete(ids[0]).await.unwrap();
        // Flushes run on the maintenance thread: wait for the first (a bounded wait, not a
        // timing assertion).
        for _ in 0..3000 {
            if db.stats().flushes > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            db.stats().flushes > 0,
            "small memtable budget forces flushes"
        );
        db.close().await.unwrap();
    }
    let db = Database::open_path(dir.path(), opts).await.unwrap();
    let c = db.collection("docs");
    assert_eq!(c.count().await.unwrap(), 1999);
    assert_eq!(c.get::<User>(ids[1]).await.unwrap().unwrap().age, 1);
    assert_eq!(c.get::<User>(ids[0]).await.unwrap(), None);
    db.compact().await.unwrap();
    assert_eq!(db.stats().segments, 1);
    assert_eq!(c.count().await.unwrap(), 1999);
    assert!(db.verify().await.unwrap() >= 1999);
}

/// `tasks` concurrent tasks, each committing `each` one-insert transactions into "c".
async fn insert_concurrently(db: &Database, tasks: u32, each: u32) {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    db.collection("c")
                        .insert(&(t * 1000 + i))
                        .await
                        .expect("insert");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("inserting task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).await.unwrap();
    let before = db.stats().syncs;
    insert_concurrently(&db, 16, 20).await;
    let syncs = db.stats().syncs - before;
    assert_eq!(db.collection("c").count().await.unwrap(), 320);
    assert!(syncs <= 320, "never more than one sync per commit: {syncs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_one_sync_among_waiting_committers() {
    // Syncs take 5 ms, so commits arriving during one must form a group.
    let (db, counts) = counted_db(Options::default(), SLOW_SYNC).await;
    let before = counts.get().0;
    insert_concurrently(&db, 32, 10).await;
    let syncs = counts.get().0 - before;
    assert_eq!(db.collection("c").count().await.unwrap(), 320);
    assert_eq!(db.stats().commits, 320);
    // One sync per commit would be 320. While a 5 ms sync runs, the other committers append
    // and wait, so each sync covers many commits.
    assert!(
        syncs <= 320 / 4,
        "group commit did not group: {syncs} syncs for 320 commits"
    );
    assert!(syncs >= 10, "each task waited for its own commits: {syncs}");
}

/// How long a slow backend's syncs take (see [`counted_db`]).
const SLOW_SYNC: Duration = Duration::from_millis(5);

/// Syncs counted by a [`counted_db`]'s files: `.0` all of them, `.1` those asked for on the
/// caller's thread (`sync_data_inline`).
struct SyncCounts(Arc<AtomicU64>, Arc<AtomicU64>);

impl SyncCounts {
    fn get(&self) -> (u64, u64) {
        (self.0.load(Ordering::SeqCst), self.1.load(Ordering::SeqCst))
    }
}

/// A database on a memory backend whose files count their syncs (not by the engine) and
/// make each take `sync_delay`.
async fn counted_db(options: Options, sync_delay: Duration) -> (Database, SyncCounts) {
    let (all, inline) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, i) = (all.clone(), inline.clone());
    let backend = Hooked::new(Arc::new(MemoryBackend::new()), "counted").wrap_file(move |f| {
        let (a, i) = (a.clone(), i.clone());
        Arc::new(
            HookedFile::new(f)
                .before_sync(move || {
                    a.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async move {
                        if !sync_delay.is_zero() {
                            tokio::time::sleep(sync_delay).await;
                        }
                    })
                })
                .on_sync_inline(move || {
                    i.fetch_add(1, Ordering::SeqCst);
                }),
        )
    });
    let db = Database::open_with(Arc::new(backend), options)
        .await
        .expect("open the counted database");
    (db, SyncCounts(all, inline))
}

/// On a single-threaded executor, concurrent writers still share syncs with `inline_sync`
/// on: a leader that looks alone yields once before it syncs on its thread, so the writers
/// spawned but not yet polled append and join its group instead of each syncing alone.
#[tokio::test(flavor = "current_thread")]
async fn writers_on_one_thread_still_share_syncs() {
    let (db, counts) = counted_db(Options::default().inline_sync(true), Duration::ZERO).await;
    let before = counts.get().0;
    insert_concurrently(&db, 32, 10).await;
    let syncs = counts.get().0 - before;
    assert_eq!(db.collection("c").count().await.unwrap(), 320);
    assert!(
        syncs <= 320 / 4,
        "{syncs} syncs for 320 commits from 32 tasks"
    );
}

/// With `Options::inline_sync` off, even a lone commit hands its sync off.
#[tokio::test(flavor = "current_thread")]
async fn inline_sync_can_be_turned_off() {
    let (db, counts) = counted_db(Options::default().inline_sync(false), Duration::ZERO).await;
    let (a0, i0) = counts.get();
    for k in 0..3u32 {
        db.collection("c").insert(&k).await.unwrap();
    }
    let (a1, i1) = counts.get();
    assert_eq!(a1 - a0, 3);
    assert_eq!(i1 - i0, 0);
}

/// A durable commit with nobody behind it syncs on its own thread (`sync_data_inline`: no
/// hand-off to an I/O thread and back); a commit with another writer queued behind it hands
/// its sync off, so that the tasks sharing its thread can go on.
#[tokio::test(flavor = "current_thread")]
async fn a_lone_durable_commit_syncs_on_its_own_thread() {
    let (db, syncs) = counted_db(Options::default().inline_sync(true), Duration::ZERO).await;
    let (a0, i0) = syncs.get();
    for k in 0..5u32 {
        db.collection("c").insert(&k).await.unwrap();
    }
    let (a1, i1) = syncs.get();
    assert_eq!(
        (a1 - a0, i1 - i0),
        (5, 5),
        "one inline sync per lone commit"
    );

    let mut tx = db.begin().await.unwrap();
    tx.collection("c").insert(&99u32).unwrap();
    let db2 = db.clone();
    let queued = tokio::spawn(async move {
        let mut tx = db2.begin().await.unwrap();
        tx.collection("c").insert(&100u32).unwrap();
        tx.commit().await.unwrap();
    });
    // The spawned task runs until it waits for the writer lock.
    tokio::task::yield_now().await;
    tx.commit().await.unwrap();
    let (a2, i2) = syncs.get();
    assert_eq!(
        (a2 - a1, i2 - i1),
        (1, 0),
        "a writer was queued: the sync is handed off"
    );
    queued.await.unwrap();
    let (a3, i3) = syncs.get();
    assert_eq!(
        (a3 - a2, i3 - i2),
        (1, 1),
        "the queued writer commits alone"
    );
    assert_eq!(db.collection("c").count().await.unwrap(), 7);
}

#[tokio::test]
async fn delete_then_put_in_one_transaction() {
    let db = Database::memory().await.unwrap();
    let a = db.collection("c").insert(&1u32).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(tx.collection("c").delete(a).await.unwrap());
    let b = tx.collection("c").insert(&2u32).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.collection("c").get::<u32>(a).await.unwrap(), None);
    assert_eq!(db.collection("c").get::<u32>(b).await.unwrap(), Some(2));
    let feed = db.changes_page(1, 10).await.unwrap();
    assert_eq!(feed[0].changes.len(), 2, "{feed:?}");
}

#[tokio::test]
async fn delete_in_one_collection_put_in_another() {
    let db = Database::memory().await.unwrap();
    db.collection("alpha").insert(&0u32).await.unwrap();
    let a = db.collection("beta").insert(&1u32).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(tx.collection("beta").delete(a).await.unwrap());
    let b = db.new_id();
    tx.collection("alpha").put(b, &2u32).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.collection("beta").get::<u32>(a).await.unwrap(), None);
    assert_eq!(db.collection("alpha").get::<u32>(b).await.unwrap(), Some(2));
}

/// Regression (crash simulation, seed 0): a second delete of the same entity in one
/// transaction dropped the first delete's tombstone.
#[tokio::test]
async fn deleting_twice_in_one_transaction_keeps_the_delete() {
    let db = Database::memory().await.unwrap();
    let a = db.collection("c").insert(&1u32).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(tx.collection("c").delete(a).await.unwrap());
    assert!(!tx.collection("c").delete(a).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(db.collection("c").get::<u32>(a).await.unwrap(), None);
}

#[tokio::test]
async fn origin_tags_are_bounded() {
    let db = Database::memory().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let err = tx
        .set_origin("x".repeat(entidb::MAX_ORIGIN_BYTES + 1))
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    tx.set_origin("x".repeat(entidb::MAX_ORIGIN_BYTES)).unwrap();
    tx.collection("c").insert(&1u8).unwrap();
    tx.commit().await.unwrap();
    let feed = db.changes_page(0, 10).await.unwrap();
    assert_eq!(
        feed[0].origin.as_ref().map(String::len),
        Some(entidb::MAX_ORIGIN_BYTES)
    );
}

#[tokio::test]
async fn reads_and_writes_after_close_fail_with_closed() {
    let db = Database::memory().await.unwrap();
    let c = db.collection("c");
    let id = c.insert(&1u8).await.unwrap();
    let snap = db.snapshot();
    db.clone().close().await.unwrap();
    assert!(matches!(c.get::<u8>(id).await, Err(Error::Closed)));
    assert!(matches!(
        c.scan(ScanOptions::default()).await,
        Err(Error::Closed)
    ));
    assert!(matches!(
        snap.collection("c").count().await,
        Err(Error::Closed)
    ));
    assert!(matches!(c.insert(&2u8).await, Err(Error::Closed)));
}

#[tokio::test]
async fn a_truncated_feed_is_reported_never_skipped() {
    let db = Database::open_with(
        Arc::new(MemoryBackend::new()),
        Options::default().feed_retention(5),
    )
    .await
    .unwrap();
    for i in 0..20u32 {
        db.collection("c").insert(&i).await.unwrap();
    }
    db.compact().await.unwrap();
    let oldest = db.oldest_retained_sequence();
    assert_eq!(oldest, 16);
    let err = db.changes_page(0, 100).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::FeedTruncated {
                requested: 1,
                oldest: 16
            }
        ),
        "{err}"
    );
    let mut stream = db.changes(3);
    assert!(matches!(
        stream.next().await,
        Some(Err(Error::FeedTruncated { .. }))
    ));
    let page = db.changes_page(oldest - 1, 100).await.unwrap();
    assert_eq!(
        page.iter().map(|b| b.seq).collect::<Vec<_>>(),
        (16..=20).collect::<Vec<_>>()
    );
}

/// A feed hold keeps every record after its position past `feed_retention`, through
/// compaction and a reopen; moving it forward lets the records before it go, and releasing it
/// brings retention back.
#[tokio::test]
async fn feed_holds_keep_records_past_retention_until_released() {
    let backend = Arc::new(MemoryBackend::new());
    let options = Options::default().feed_retention(5);
    let db = Database::open_with(backend.clone(), options.clone())
        .await
        .unwrap();
    db.hold_feed("exporter", 0).await.unwrap();
    for i in 0..20u32 {
        db.collection("c").insert(&i).await.unwrap();
    }
    db.compact().await.unwrap();
    assert_eq!(db.oldest_retained_sequence(), 1);
    assert_eq!(db.changes_page(0, 100).await.unwrap().len(), 21);
    db.close().await.unwrap();

    let db = Database::open_with(backend, options).await.unwrap();
    assert_eq!(
        db.feed_holds().into_iter().collect::<Vec<_>>(),
        vec![("exporter".to_owned(), 0)]
    );
    let page = db.changes_page(0, 100).await.unwrap();
    assert_eq!(
        page.iter().map(|b| b.seq).collect::<Vec<_>>(),
        (1..=21).collect::<Vec<_>>()
    );
    // Moved forward in a transaction (with the consumer's own writes): records up to the
    // position go, the rest stay.
    let mut tx = db.begin().await.unwrap();
    tx.collection("exports")
        .put(EntityId::MIN, &"done up to 10")
        .unwrap();
    tx.hold_feed("exporter", 10).unwrap();
    assert_eq!(tx.feed_hold("exporter"), Some(10));
    tx.commit().await.unwrap();
    db.compact().await.unwrap();
    assert_eq!(db.oldest_retained_sequence(), 11);
    assert!(matches!(
        db.changes_page(9, 100).await,
        Err(Error::FeedTruncated {
            requested: 10,
            oldest: 11
        })
    ));
    assert_eq!(db.changes_page(10, 100).await.unwrap()[0].seq, 11);
    // A hold cannot bring dropped records back.
    let mut tx = db.begin().await.unwrap();
    assert!(matches!(
        tx.hold_feed("other", 3),
        Err(Error::FeedTruncated {
            requested: 4,
            oldest: 11
        })
    ));
    drop(tx);

    assert!(db.release_feed_hold("exporter").await.unwrap());
    assert!(db.feed_holds().is_empty());
    let last = db.last_sequence();
    assert_eq!(db.oldest_retained_sequence(), last - 4);
    // Releasing a hold that does not exist commits nothing.
    assert!(!db.release_feed_hold("exporter").await.unwrap());
    assert_eq!(db.last_sequence(), last);
}

#[tokio::test]
async fn feed_holds_reject_bad_names_and_positions() {
    let db = Database::memory().await.unwrap();
    db.collection("c").insert(&1u32).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    for name in ["", "a\nb", &"x".repeat(256)] {
        assert!(
            matches!(tx.hold_feed(name, 0), Err(Error::InvalidArgument(_))),
            "{name:?}"
        );
    }
    assert!(tx.hold_feed(&"x".repeat(255), 0).is_ok());
    // At most the transaction's own sequence.
    assert_eq!(tx.read_sequence(), 1);
    assert!(matches!(
        tx.hold_feed("h", 3),
        Err(Error::InvalidArgument(_))
    ));
    assert!(tx.hold_feed("h", 2).is_ok());
    assert_eq!(tx.commit().await.unwrap(), 2);
    assert_eq!(db.feed_holds().len(), 2);
}

/// A hold moved forward by a commit that is not durable yet still keeps the records from its
/// old position: a crash could undo the move, and the recovered hold would need them.
#[tokio::test]
async fn a_hold_moves_forward_only_once_the_move_is_durable() {
    let db = Database::open_with(
        Arc::new(MemoryBackend::new()),
        Options::default().feed_retention(2),
    )
    .await
    .unwrap();
    db.hold_feed("h", 0).await.unwrap();
    for i in 0..10u32 {
        db.collection("c").insert(&i).await.unwrap();
    }
    let mut tx = db.begin().await.unwrap();
    tx.set_durability(Durability::Relaxed);
    tx.hold_feed("h", 8).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.feed_holds()["h"], 8);
    // Compaction computes what it drops with the same function: it would keep these too.
    assert_eq!(db.oldest_retained_sequence(), 1);
    assert_eq!(db.changes_page(0, 100).await.unwrap().len(), 12);
    // But a new hold is checked against the move as if it were durable already (a sync of
    // the move could come before this commit, and a compaction after it), so it cannot be
    // set below it.
    let mut tx = db.begin().await.unwrap();
    assert!(matches!(
        tx.hold_feed("late", 3),
        Err(Error::FeedTruncated {
            requested: 4,
            oldest: 9
        })
    ));
    assert!(tx.hold_feed("late", 8).is_ok());
    drop(tx);
    // A durable commit makes the move durable too.
    db.collection("c").insert(&10u32).await.unwrap();
    assert_eq!(db.oldest_retained_sequence(), 9);
    db.compact().await.unwrap();
    assert_eq!(db.changes_page(8, 100).await.unwrap()[0].seq, 9);
    assert!(matches!(
        db.changes_page(7, 100).await,
        Err(Error::FeedTruncated { oldest: 9, .. })
    ));
}

/// `durable_sequence` stays below a relaxed commit until a sync covers it (here a later
/// durable commit's), and a power loss keeps every commit at or below it.
#[tokio::test]
async fn the_durable_sequence_trails_relaxed_commits_until_a_sync() {
    use entidb::io::{SimBackend, SimConfig};
    let sim = SimBackend::new(3, SimConfig::default());
    let open = || async {
        Database::open_with(Arc::new(sim.clone()), Options::default())
            .await
            .unwrap()
    };
    let db = open().await;
    let relaxed_insert = |v: u32| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            tx.set_durability(Durability::Relaxed);
            tx.collection("c").insert(&v).unwrap();
            tx.commit().await.unwrap()
        }
    };
    db.collection("c").insert(&1u32).await.unwrap();
    let first = db.last_sequence();
    assert_eq!(db.durable_sequence(), first);
    let second = relaxed_insert(2).await;
    assert_eq!(db.last_sequence(), second);
    assert_eq!(db.durable_sequence(), first);
    db.collection("c").insert(&3u32).await.unwrap();
    let third = db.last_sequence();
    assert_eq!(db.durable_sequence(), third);
    let fourth = relaxed_insert(4).await;
    assert!(fourth > db.durable_sequence());
    drop(db);
    sim.crash_now();
    sim.restart();
    // The relaxed commit may or may not have reached the disk; everything durable did.
    let db = open().await;
    let last = db.last_sequence();
    assert!(last == third || last == fourth, "{last}");
    assert_eq!(db.durable_sequence(), last);
    assert_eq!(
        db.collection("c").count().await.unwrap(),
        3 + u64::from(last == fourth)
    );
}

#[tokio::test]
async fn overwritten_changes_leave_the_feed_after_compaction() {
    let db = Database::memory().await.unwrap();
    let c = db.collection("c");
    let id = c.insert(&1u32).await.unwrap();
    let other = c.insert(&5u32).await.unwrap();
    let held = db.snapshot();
    let mut tx = db.begin().await.unwrap();
    tx.collection("c").put(id, &2u32).unwrap();
    tx.collection("c").delete(other).await.unwrap();
    tx.commit().await.unwrap();
    db.compact().await.unwrap();
    // A snapshot older than the overwrite keeps the first value readable in the feed.
    let feed = db.changes_page(0, 10).await.unwrap();
    assert_eq!(
        feed[0].changes[1].op,
        ChangeOp::Put(entidb::cbor::Canonical::encode(&1u32).unwrap())
    );
    drop(held);
    db.compact().await.unwrap();
    let feed = db.changes_page(0, 10).await.unwrap();
    assert_eq!(feed.len(), 3, "every transaction is still there");
    // The first put of `id` is gone from its record; the creation stays.
    assert_eq!(feed[0].changes.len(), 1);
    assert_eq!(feed[0].changes[0].op, ChangeOp::CollectionCreated);
    // The delete replaced `other`'s put too: its record is left with no changes, but it is
    // still there, in its place.
    assert_eq!((feed[1].seq, feed[1].changes.len()), (2, 0));
    // The delete is the last trace of `other` (the tombstone itself is gone): it stays.
    let last: Vec<_> = feed[2]
        .changes
        .iter()
        .map(|c| (c.id, c.op.clone()))
        .collect();
    assert_eq!(
        last,
        vec![
            (
                Some(id),
                ChangeOp::Put(entidb::cbor::Canonical::encode(&2u32).unwrap())
            ),
            (Some(other), ChangeOp::Delete),
        ]
    );
    // A dropped collection's puts read as Superseded: their versions are purged, and the
    // drop, later in the feed, says why.
    let d = db.collection("d");
    let gone = d.insert(&9u32).await.unwrap();
    db.drop_collection("d").await.unwrap();
    db.compact().await.unwrap();
    let feed = db.changes_page(3, 10).await.unwrap();
    let put = feed[0].changes.iter().find(|c| c.id == Some(gone)).unwrap();
    assert_eq!(put.op, ChangeOp::Superseded);
    assert_eq!(
        feed[1].changes[0].op,
        ChangeOp::CollectionDropped,
        "{:?}",
        feed[1]
    );
}

#[tokio::test]
async fn put_value_refuses_a_value_without_canonical_encoding() {
    use entidb::cbor::Value;
    let db = Database::memory().await.unwrap();
    let id = db.new_id();
    let dup = Value::Map(vec![
        (Value::Text("a".into()), Value::Int(1u64.into())),
        (Value::Text("a".into()), Value::Int(2u64.into())),
    ]);
    let err = db.collection("c").put_value(id, &dup).await.unwrap_err();
    assert!(matches!(err, entidb::Error::Document(_)), "{err}");
    let mut tx = db.begin().await.unwrap();
    assert!(tx.collection("c").put_value(id, &dup).is_err());
    tx.abort();
    assert!(!db.collection("c").exists(id).await.unwrap());
    assert_eq!(db.last_sequence(), 0, "nothing was committed");
}

#[test]
fn close_releases_the_directory_while_clones_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    futures_executor::block_on(async {
        let db = Database::open(dir.path()).await.expect("open");
        let users = db.collection("users");
        users.insert(&1u32).await.expect("insert");
        let mut tx = db.begin().await.expect("begin");
        tx.collection("users").insert(&2u32).expect("put");
        let clone = db.clone();
        // Close waits for a transaction that is still open; it commits normally.
        let closing = clone.close();
        let finish_tx = async { tx.commit().await.expect("commit before the close") };
        let (closed, seq) = futures_util::future::join(closing, finish_tx).await;
        closed.expect("close");
        assert_eq!(seq, 2);
        // `db` and `users` are still alive, yet the directory is free.
        let again = Database::open(dir.path())
            .await
            .expect("reopen while old handles live");
        assert_eq!(again.collection("users").count().await.expect("count"), 2);
        assert!(matches!(users.count().await, Err(entidb::Error::Closed)));
        drop((db, users));
    });
}

#[test]
fn a_read_only_handle_sees_a_snapshot_beside_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    futures_executor::block_on(async {
        let writer = Database::open(dir.path()).await.expect("open");
        let c = writer.collection("c");
        for i in 0..10u32 {
            c.insert(&i).await.expect("insert");
        }
        writer.checkpoint().await.expect("checkpoint"); // some in segments
        for i in 10..15u32 {
            c.insert(&i).await.expect("insert"); // some only in the WAL
        }
        let ro = Database::open_path(dir.path(), entidb::Options::default().read_only(true))
            .await
            .expect("read-only beside a writer");
        assert_eq!(ro.collection("c").count().await.expect("count"), 15);
        c.insert(&99u32).await.expect("the writer goes on");
        assert_eq!(
            ro.collection("c").count().await.expect("count"),
            15,
            "a snapshot at open"
        );
        assert!(matches!(ro.begin().await, Err(entidb::Error::ReadOnly)));
        assert!(matches!(
            ro.checkpoint().await,
            Err(entidb::Error::ReadOnly)
        ));
        assert!(matches!(ro.compact().await, Err(entidb::Error::ReadOnly)));
        ro.close().await.expect("close");
        drop(c);
        writer.close().await.expect("close");
        let again = Database::open(dir.path()).await.expect("reopen");
        assert_eq!(again.collection("c").count().await.expect("count"), 16);
    });
}

#[tokio::test]
async fn remove_deletes_without_reading() {
    let db = Database::memory().await.unwrap();
    let users = db.collection("users");
    users
        .create_index("by_age", entidb::IndexSpec::ordered(["age"]))
        .await
        .unwrap();
    let a = users.insert(&user("Ada", 36)).await.unwrap();
    let absent = db.new_id();
    let mut tx = db.begin().await.unwrap();
    tx.collection("users").remove(a).unwrap();
    tx.collection("users").remove(absent).unwrap();
    let seq = tx.commit().await.unwrap();
    assert!(!users.exists(a).await.unwrap());
    // The index entry went with the document.
    let q = entidb::Query::eq(36).limit(10);
    assert!(users.lookup("by_age", &q).await.unwrap().items.is_empty());
    // Unlike `delete`, removing an absent entity shows in the feed.
    let feed = db.changes_page(seq - 1, 10).await.unwrap();
    let ids: Vec<_> = feed[0]
        .changes
        .iter()
        .filter(|c| matches!(c.op, ChangeOp::Delete))
        .filter_map(|c| c.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&a) && ids.contains(&absent));
    // A put after a remove in one transaction wins.
    let mut tx = db.begin().await.unwrap();
    let mut c = tx.collection("users");
    c.remove(a).unwrap();
    c.put(a, &user("Ada", 37)).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(users.get::<User>(a).await.unwrap(), Some(user("Ada", 37)));
}

/// A durable commit cancelled while it leads a group sync (a timeout, a dropped request)
/// gives the leadership up: later durable commits still complete, and a commit that
/// returned is visible at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cancelled_during_its_sync_does_not_block_later_ones() {
    // A lone leader syncs through `sync_data_inline` unless `inline_sync` is off: both paths.
    for inline in [true, false] {
        // Each sync takes 500 ms: a 1 ms timeout drops the commit while it leads the sync.
        // (With 5 ms syncs, a runtime stalled past both deadlines on a busy machine polled
        // the commit first, found its sync done, and the timeout never fired: CI failed.)
        let slow = Duration::from_millis(500);
        let (db, counts) = counted_db(Options::default().inline_sync(inline), slow).await;
        let c = db.collection("c");
        for _ in 0..5 {
            let r = tokio::time::timeout(Duration::from_millis(1), c.insert(&1u32)).await;
            assert!(r.is_err(), "the commit was still syncing (inline {inline})");
        }
        let id = tokio::time::timeout(Duration::from_secs(10), c.insert(&2u32))
            .await
            .expect("a later durable commit is not stuck behind a dropped leader")
            .unwrap();
        assert_eq!(c.get::<u32>(id).await.unwrap(), Some(2));
        assert!(db.snapshot().sequence() >= db.last_sequence());
        // The path named was the path taken.
        assert_eq!(
            counts.get().1 > 0,
            inline,
            "inline syncs: {:?}",
            counts.get()
        );
    }
}

#[tokio::test]
async fn a_filtered_feed_page_keeps_the_changes_asked_for_and_every_record() {
    let db = Database::memory().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let note = tx.collection("notes").insert(&"n").unwrap();
    tx.collection("audit").insert(&"a").unwrap();
    let first = tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.set_origin("replicator").unwrap();
    tx.collection("notes").insert(&"from the server").unwrap();
    let own = tx.commit().await.unwrap();
    assert!(db.collection("notes").delete(note).await.unwrap());
    let keep = |origin: Option<&str>, c: &str| origin != Some("replicator") && c == "notes";
    let page = db.changes_page_filtered(0, 100, keep).await.unwrap();
    let all = db.changes_page(0, 100).await.unwrap();
    // Every record is there, in order, so a consumer's position moves past all of them.
    assert_eq!(
        page.iter().map(|b| b.seq).collect::<Vec<_>>(),
        all.iter().map(|b| b.seq).collect::<Vec<_>>()
    );
    for (filtered, full) in page.iter().zip(&all) {
        let expected: Vec<_> = full
            .changes
            .iter()
            .filter(|c| keep(full.origin.as_deref(), &c.collection))
            .cloned()
            .collect();
        assert_eq!(filtered.changes, expected, "record {}", full.seq);
        assert_eq!(filtered.origin, full.origin);
    }
    let at = |seq: u64| page.iter().find(|b| b.seq == seq).unwrap();
    // The first record creates both collections and puts into both: only `notes` is left.
    let kinds: Vec<_> = at(first)
        .changes
        .iter()
        .map(|c| {
            (
                c.collection.as_str(),
                matches!(c.op, entidb::ChangeOp::Put(_)),
            )
        })
        .collect();
    assert_eq!(kinds, [("notes", false), ("notes", true)], "{page:?}");
    assert_eq!(at(first).changes[1].id, Some(note));
    assert!(at(own).changes.is_empty(), "the origin's record is empty");
    let last = page.last().unwrap();
    assert_eq!(last.changes.len(), 1);
    assert_eq!(last.changes[0].op, entidb::ChangeOp::Delete);
    // Collection markers are filtered by their collection as well.
    assert!(
        page.iter()
            .flat_map(|b| &b.changes)
            .all(|c| c.collection == "notes")
    );
}

/// The WAL is zero-filled ahead of its records in stretches: a new file starts with 64 KiB,
/// each later stretch doubles up to `wal_preallocate`, and the zeros never hide a record
/// after a reopen.
#[tokio::test]
async fn the_wal_grows_its_zeros_in_doubling_stretches() {
    use entidb_io::{Backend, OpenMode};
    let backend = Arc::new(MemoryBackend::new());
    let options = Options::default().wal_preallocate(512 << 10);
    let db = Database::open_with(backend.clone(), options.clone())
        .await
        .unwrap();
    let wal_len = || async {
        let names = backend.list("").await.unwrap();
        let name = names
            .iter()
            .find(|n| n.starts_with("wal-"))
            .unwrap()
            .clone();
        let f = backend.open(&name, OpenMode::Existing).await.unwrap();
        f.len().await.unwrap()
    };
    assert_eq!(
        wal_len().await,
        16 + (64 << 10),
        "a new file: header and 64 KiB"
    );
    let mut lens = vec![];
    let c = db.collection("c");
    for i in 0..3_000u32 {
        c.insert(&serde_json::json!({ "i": i, "pad": "x".repeat(300) }))
            .await
            .unwrap();
        let len = wal_len().await;
        if lens.last() != Some(&len) {
            lens.push(len);
        }
    }
    // Each growth runs from the record just written to one stretch past it.
    let grown: Vec<u64> = lens.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(lens.len() >= 5, "{lens:?}");
    // Zeros are written only when less than a quarter of the last stretch is left: the
    // first file, then 128 KiB, 256 KiB and three of 512 KiB for about 1 MiB of records.
    assert_eq!(lens.len(), 6, "{lens:?}");
    for g in &grown {
        assert!(*g > 0 && *g <= 512 << 10, "{lens:?}");
    }
    // Stretches double: 128 KiB, 256 KiB, then 512 KiB (the option) every time after.
    let ahead: Vec<u64> = lens.iter().map(|l| l - 16).collect();
    assert!(
        ahead[1] >= 128 << 10 && ahead[1] < (128 + 64) << 10,
        "{lens:?}"
    );
    assert!(lens.last().unwrap() - lens[lens.len() - 2] <= 512 << 10);
    db.close().await.unwrap();
    let db = Database::open_with(backend.clone(), options).await.unwrap();
    assert_eq!(db.collection("c").count().await.unwrap(), 3_000);
}
