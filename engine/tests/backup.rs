//! Backup, verify and restore through the public API.

use std::collections::BTreeMap;
use std::sync::Arc;

use entidb::cbor::Value;
use entidb::io::MemoryBackend;
use entidb::{
    BackupSummary, Database, EntityId, Error, IndexSpec, Options, Query, SearchQuery, SliceSource,
    verify_backup,
};
use futures_executor::block_on;

type State = BTreeMap<(String, EntityId), Vec<u8>>;

async fn state(db: &Database) -> State {
    let snap = db.snapshot();
    let mut out = State::new();
    for name in snap.collections() {
        let mut opts = entidb::ScanOptions::limit(100);
        loop {
            let page = snap.collection(&name).scan(opts).await.expect("scan");
            for d in &page.items {
                out.insert((name.clone(), d.id()), d.bytes().to_vec());
            }
            match page.next {
                Some(c) => opts = opts.after(c),
                None => break,
            }
        }
    }
    out
}

async fn sample() -> Database {
    let db = Database::memory().await.expect("open");
    let users = db.collection("users");
    users
        .create_index("by_email", IndexSpec::equality(["email"]).unique())
        .await
        .expect("index");
    users
        .create_index("bio", IndexSpec::search(["bio"]).stem_english(true))
        .await
        .expect("index");
    for i in 0..300u32 {
        users
            .insert(&Value::map([
                ("email", Value::from(format!("u{i}@example.com"))),
                ("bio", Value::from(format!("runs {i} marathons"))),
                ("blob", Value::Bytes(vec![i as u8; (i % 7) as usize])),
                (
                    "when",
                    Value::Tag(1, Box::new(Value::from(1_700_000_000 + i))),
                ),
            ]))
            .await
            .expect("insert");
    }
    db.collection("empty").insert(&1u8).await.expect("insert");
    db
}

async fn restore(bytes: &[u8]) -> Result<(Database, BackupSummary), Error> {
    Database::restore(
        &mut SliceSource::new(bytes),
        Arc::new(MemoryBackend::new()),
        Options::default(),
    )
    .await
}

#[test]
fn backup_verify_restore_round_trip() {
    block_on(async {
        let db = sample().await;
        let mut file = Vec::new();
        let summary = db.backup(&mut file).await.expect("backup");
        assert_eq!(summary.collections, 2);
        assert_eq!(summary.entities, 301);
        assert_eq!(summary.indexes, 2);
        assert_eq!(summary.bytes, file.len() as u64);
        let checked = verify_backup(&mut SliceSource::new(&file))
            .await
            .expect("verify");
        assert_eq!((checked.entities, checked.indexes), (301, 2));

        let (restored, rs) = restore(&file).await.expect("restore");
        assert_eq!(rs.entities, 301);
        assert_eq!(
            state(&restored).await,
            state(&db).await,
            "same documents, same ids"
        );
        let users = restored.collection("users");
        assert_eq!(users.indexes().len(), 2, "index definitions came back");
        assert!(
            users
                .find_one("by_email", "u7@example.com")
                .await
                .expect("q")
                .is_some()
        );
        let hits = users
            .search("bio", &SearchQuery::all("running marathon").limit(1000))
            .await
            .expect("search");
        assert_eq!(
            hits.len(),
            300,
            "the search index was rebuilt with its options"
        );
        assert!(restored.verify_indexes().await.expect("verify").is_ok());
        let page = users
            .lookup("by_email", &Query::eq("u1@example.com"))
            .await
            .expect("q");
        assert_eq!(page.items.len(), 1);

        // Restoring onto a database is refused.
        let backend: Arc<dyn entidb::io::Backend> = Arc::new(MemoryBackend::new());
        let existing = Database::open_with(backend.clone(), Options::default())
            .await
            .expect("open");
        existing.close().await.expect("close");
        let err = Database::restore(&mut SliceSource::new(&file), backend, Options::default())
            .await
            .expect_err("not empty");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    });
}

#[test]
fn every_damage_and_truncation_is_rejected() {
    block_on(async {
        let db = Database::memory().await.expect("open");
        for i in 0..5u8 {
            db.collection("c")
                .insert(&vec![i; 3])
                .await
                .expect("insert");
        }
        db.collection("c")
            .create_index("i", IndexSpec::ordered(["x"]))
            .await
            .expect("index");
        let mut file = Vec::new();
        db.backup(&mut file).await.expect("backup");
        for cut in 0..file.len() {
            let err = verify_backup(&mut SliceSource::new(&file[..cut]))
                .await
                .expect_err("truncated");
            assert!(matches!(err, Error::InvalidBackup(_)), "cut {cut}: {err}");
        }
        for pos in 0..file.len() {
            let mut bad = file.clone();
            bad[pos] ^= 0x20;
            let err = verify_backup(&mut SliceSource::new(&bad))
                .await
                .expect_err("damaged");
            assert!(matches!(err, Error::InvalidBackup(_)), "byte {pos}: {err}");
            let err = restore(&bad).await.expect_err("damaged");
            assert!(matches!(err, Error::InvalidBackup(_)), "byte {pos}: {err}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(verify_backup(&mut SliceSource::new(&longer)).await.is_err());
        assert!(
            verify_backup(&mut SliceSource::new(b"not a backup at all"))
                .await
                .is_err()
        );
    });
}

#[test]
fn a_backup_under_concurrent_writes_is_exactly_one_snapshot() {
    block_on(async {
        let db = sample().await;
        // The state after every commit, by sequence.
        let mut history: BTreeMap<u64, State> = BTreeMap::new();
        history.insert(db.last_sequence(), state(&db).await);
        let writer = async {
            for i in 0..40u32 {
                let mut tx = db.begin().await.expect("begin");
                let id = db.new_id();
                tx.collection("users")
                    .put(
                        id,
                        &Value::map([("email", Value::from(format!("new{i}@x")))]),
                    )
                    .expect("put");
                tx.collection("empty").insert(&i).expect("put");
                let seq = tx.commit().await.expect("commit");
                history.insert(seq, state(&db).await);
                futures_util::future::ready(()).await;
            }
        };
        let mut sink = YieldingSink {
            bytes: Vec::new(),
            db: db.clone(),
            max_seen: 0,
        };
        let backup = db.backup(&mut sink);
        let (summary, ()) = futures_util::future::join(backup, writer).await;
        let summary = summary.expect("backup");
        assert!(
            sink.max_seen > summary.sequence,
            "commits happened while the backup was being written"
        );
        let (restored, _) = restore(&sink.bytes).await.expect("restore");
        let expected = history
            .get(&summary.sequence)
            .expect("the backup's sequence is a commit we saw");
        assert_eq!(&state(&restored).await, expected);
    });
}

/// A sink that lets other tasks run before every write and records the database's sequence.
struct YieldingSink {
    bytes: Vec<u8>,
    db: Database,
    max_seen: u64,
}

impl entidb::BackupSink for YieldingSink {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> entidb::io::BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            let mut yielded = false;
            futures_util::future::poll_fn(|cx| {
                if yielded {
                    std::task::Poll::Ready(())
                } else {
                    yielded = true;
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            })
            .await;
            self.max_seen = self.max_seen.max(self.db.last_sequence());
            self.bytes.extend_from_slice(bytes);
            Ok(())
        })
    }
}

/// A sink that accepts `left` bytes, then fails like a full disk.
struct FullDisk {
    left: usize,
}

impl entidb::BackupSink for FullDisk {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> entidb::io::BoxFuture<'a, std::io::Result<()>> {
        let r = if bytes.len() > self.left {
            Err(std::io::Error::other("no space left on device"))
        } else {
            self.left -= bytes.len();
            Ok(())
        };
        Box::pin(std::future::ready(r))
    }
}

/// A source that fails after its first read.
struct Unplugged<'a> {
    first: Option<&'a [u8]>,
}

impl entidb::BackupSource for Unplugged<'_> {
    fn read(&mut self, max: usize) -> entidb::io::BoxFuture<'_, std::io::Result<Vec<u8>>> {
        let r = match self.first.take() {
            Some(b) => Ok(b[..max.min(b.len())].to_vec()),
            None => Err(std::io::Error::other("device unplugged")),
        };
        Box::pin(std::future::ready(r))
    }
}

/// A failing sink or source is an I/O error naming what failed, not a damaged backup or a
/// bad argument; the database is untouched and backs up fine afterwards.
#[test]
fn sink_and_source_failures_are_io_errors() {
    block_on(async {
        let db = Database::open_with(Arc::new(MemoryBackend::new()), Options::default())
            .await
            .expect("open");
        let c = db.collection("notes");
        for i in 0..200 {
            c.insert(&Value::map([("i", Value::from(i as i64))]))
                .await
                .expect("put");
        }
        let err = db
            .backup(&mut FullDisk { left: 100 })
            .await
            .expect_err("the sink fails");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("no space left"), "{err}");
        let mut file = Vec::new();
        db.backup(&mut file)
            .await
            .expect("backup after the failure");
        let err = verify_backup(&mut Unplugged {
            first: Some(&file[..40]),
        })
        .await
        .expect_err("the source fails");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("device unplugged"), "{err}");
        assert_eq!(
            verify_backup(&mut SliceSource::new(&file))
                .await
                .expect("verify")
                .entities,
            200
        );
    });
}

/// A backup to a file through `WriteSink`, checked and restored through `ReadSource`.
#[test]
fn backup_to_a_file_and_back() {
    block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open_with(Arc::new(MemoryBackend::new()), Options::default())
            .await
            .expect("open");
        let notes = db.collection("notes");
        for i in 0..500 {
            notes
                .insert(&Value::map([("i", Value::from(i as i64))]))
                .await
                .expect("put");
        }
        let path = dir.path().join("notes.entidb");
        let file = std::fs::File::create(&path).expect("create");
        let mut sink = entidb::WriteSink::new(std::io::BufWriter::new(file));
        let written = db.backup(&mut sink).await.expect("backup");
        let file = sink.into_inner().into_inner().expect("flush");
        file.sync_all().expect("sync");
        assert_eq!(written.bytes, std::fs::metadata(&path).expect("len").len());
        let open = || entidb::ReadSource::new(std::fs::File::open(&path).expect("open file"));
        let checked = verify_backup(&mut open()).await.expect("verify");
        assert_eq!(
            (checked.entities, checked.sequence),
            (500, written.sequence)
        );
        let (restored, _) = Database::restore(
            &mut open(),
            Arc::new(MemoryBackend::new()),
            Options::default(),
        )
        .await
        .expect("restore");
        assert_eq!(state(&restored).await, state(&db).await);
    });
}
