//! Encryption at rest through the engine: nothing readable on disk, wrong keys refused,
//! tampering detected, rekeying.

use entidb::cbor::Value;
use entidb::io::KeySource;
use entidb::{Database, Error, IndexSpec, Options, Query};

const MARKER: &str = "SECRET-MARKER-4b1d-readable-only-with-the-key";

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read(e.path())
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn an_encrypted_database_reveals_nothing_and_needs_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = || KeySource::Passphrase("correct horse battery staple".into());
    futures_executor::block_on(async {
        let db = Database::open_encrypted(dir.path(), key(), Options::default())
            .await
            .expect("create");
        let notes = db.collection("notes");
        notes
            .create_index("by_text", IndexSpec::ordered(["text"]))
            .await
            .expect("index");
        for i in 0..220 {
            if i == 200 {
                // Segments and a manifest on disk, not only the WAL.
                db.checkpoint().await.expect("checkpoint");
            }
            notes
                .insert(&Value::map([(
                    "text",
                    Value::from(format!("{MARKER} {i}")),
                )]))
                .await
                .expect("insert");
        }
        drop(notes);
        db.close().await.expect("close");

        assert!(
            files_contain(dir.path(), MARKER.as_bytes()).is_empty(),
            "plaintext on disk"
        );
        assert!(
            files_contain(dir.path(), b"notes").is_empty(),
            "collection names on disk"
        );

        let err = Database::open_encrypted(
            dir.path(),
            KeySource::Passphrase("wrong".into()),
            Options::default(),
        )
        .await
        .expect_err("wrong key");
        assert!(matches!(err, Error::WrongKey), "{err}");
        let err = Database::open(dir.path()).await.expect_err("no key");
        assert!(matches!(err, Error::Encryption(_)), "{err}");

        let db = Database::open_encrypted(dir.path(), key(), Options::default())
            .await
            .expect("reopen");
        let page = db
            .collection("notes")
            .lookup("by_text", &Query::prefix(MARKER).limit(1000))
            .await
            .expect("lookup");
        assert_eq!(page.items.len(), 220);
        assert!(db.verify().await.is_ok());
        db.close().await.expect("close");

        // Rekey: the old key stops working, the new one opens the same data.
        let new = || KeySource::Raw([42; 32]);
        Database::rekey(dir.path(), key(), new())
            .await
            .expect("rekey");
        let err = Database::open_encrypted(dir.path(), key(), Options::default())
            .await
            .expect_err("old key after rekey");
        assert!(
            matches!(err, Error::Encryption(_) | Error::WrongKey),
            "{err}"
        );
        let db = Database::open_encrypted(dir.path(), new(), Options::default())
            .await
            .expect("new key");
        assert_eq!(db.collection("notes").count().await.expect("count"), 220);
        db.close().await.expect("close");

        // A flipped bit in a segment is reported, never read as data.
        let seg = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "sst"))
            .expect("a segment");
        let mut raw = std::fs::read(&seg).expect("read");
        raw[200] ^= 0x04;
        std::fs::write(&seg, raw).expect("write");
        let r = async {
            let db = Database::open_encrypted(dir.path(), new(), Options::default()).await?;
            db.verify().await
        }
        .await;
        assert!(matches!(r, Err(Error::Corruption { .. })), "{r:?}");
    });
}

#[test]
fn a_plaintext_database_is_not_opened_as_encrypted() {
    let dir = tempfile::tempdir().expect("tempdir");
    futures_executor::block_on(async {
        let db = Database::open(dir.path()).await.expect("open");
        db.collection("c").insert(&1u8).await.expect("insert");
        db.close().await.expect("close");
        let err = Database::open_encrypted(dir.path(), KeySource::Raw([1; 32]), Options::default())
            .await
            .expect_err("plaintext");
        assert!(matches!(err, Error::Encryption(_)), "{err}");
    });
}
