//! Secondary indexes through the public API, as a user would use them.

use std::ops::Bound;

use entidb::cbor::Value;
use entidb::{Database, EntityId, Error, IndexKind, IndexSpec, Options, Query};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    email: Option<String>,
    age: u32,
    address: Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    city: String,
}

fn user(name: &str, email: Option<&str>, age: u32, city: &str) -> User {
    User {
        name: name.into(),
        email: email.map(Into::into),
        age,
        address: Address { city: city.into() },
    }
}

fn names(docs: &[entidb::Document]) -> Vec<String> {
    docs.iter()
        .map(|d| d.decode::<User>().expect("a user").name)
        .collect()
}

async fn people() -> Database {
    let db = Database::memory().await.expect("open");
    let users = db.collection("users");
    for (name, spec) in [
        ("by_email", IndexSpec::equality(["email"]).unique()),
        ("by_age", IndexSpec::ordered(["age"])),
        ("by_city_age", IndexSpec::ordered(["address.city", "age"])),
        ("by_name", IndexSpec::ordered(["name"])),
    ] {
        users.create_index(name, spec).await.expect("index");
    }
    for u in [
        user("Ada", Some("ada@example.com"), 36, "London"),
        user("Grace", Some("grace@example.com"), 45, "New York"),
        user("Alan", Some("alan@example.com"), 41, "London"),
        user("Edsger", None, 72, "Austin"),
        user("Barbara", None, 30, "Boston"),
        user("Alonzo", Some("alonzo@example.com"), 36, "Princeton"),
    ] {
        users.insert(&u).await.expect("insert");
    }
    db
}

#[test]
fn lookups_by_equality_range_prefix_and_composite_keys() {
    futures_executor::block_on(async {
        let db = people().await;
        let users = db.collection("users");
        let scans = db.stats().scans; // index builds scanned
        let ada = users
            .find_one("by_email", "ada@example.com")
            .await
            .expect("lookup")
            .expect("found");
        assert_eq!(ada.decode::<User>().expect("user").name, "Ada");
        assert!(
            users
                .find_one("by_email", "nobody@example.com")
                .await
                .expect("lookup")
                .is_none()
        );

        // Ranges, inclusive and exclusive at both ends, in value order.
        let q = Query::range(
            Bound::Included(Value::from(36)),
            Bound::Excluded(Value::from(45)),
        );
        let page = users.lookup("by_age", &q).await.expect("lookup");
        // Equal ages come in id order (insertion order here).
        assert_eq!(names(&page.items), ["Ada", "Alonzo", "Alan"]);
        let q = Query::range(
            Bound::Excluded(Value::from(36)),
            Bound::Included(Value::from(45)),
        );
        assert_eq!(
            names(&users.lookup("by_age", &q).await.expect("lookup").items),
            ["Alan", "Grace"]
        );
        let q = Query::range(Bound::Unbounded, Bound::Excluded(Value::from(36)));
        assert_eq!(
            names(&users.lookup("by_age", &q).await.expect("lookup").items),
            ["Barbara"]
        );

        // Nested path, composite key: equality on the first field, range on the second.
        let q = Query::eq("London");
        assert_eq!(
            names(&users.lookup("by_city_age", &q).await.expect("lookup").items),
            ["Ada", "Alan"]
        );
        let q = Query::range_all(
            Bound::Excluded(vec![Value::from("London"), Value::from(36)]),
            Bound::Included(vec![Value::from("London")]),
        );
        assert_eq!(
            names(&users.lookup("by_city_age", &q).await.expect("lookup").items),
            ["Alan"]
        );

        // Prefix of text.
        let page = users
            .lookup("by_name", &Query::prefix("Al"))
            .await
            .expect("lookup");
        assert_eq!(names(&page.items), ["Alan", "Alonzo"]);
        let q = Query::prefix_after(vec![Value::from("London")], "x");
        let page = users.lookup("by_city_age", &q).await.expect("lookup");
        assert!(page.items.is_empty(), "ages are numbers, not text");
        let err = users
            .lookup("by_name", &Query::prefix(5))
            .await
            .expect_err("not text");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");

        // Pages with a cursor cover everything exactly once, in order.
        let mut all = Vec::new();
        let mut q = Query::all().limit(4);
        loop {
            let page = users.lookup("by_age", &q).await.expect("lookup");
            all.extend(names(&page.items));
            match page.next {
                Some(c) => q = Query::all().limit(4).after(c),
                None => break,
            }
        }
        assert_eq!(all, ["Barbara", "Ada", "Alonzo", "Alan", "Grace", "Edsger"]);
        // The same in descending order, paged backwards with the cursor.
        let mut desc = Vec::new();
        let mut q = Query::all().reverse().limit(4);
        loop {
            let page = users.lookup("by_age", &q).await.expect("lookup");
            desc.extend(names(&page.items));
            match page.next {
                Some(c) => q = Query::all().reverse().limit(4).after(c),
                None => break,
            }
        }
        assert_eq!(
            desc,
            ["Edsger", "Grace", "Alan", "Alonzo", "Ada", "Barbara"]
        );
        let q = Query::range(
            Bound::Included(Value::from(36)),
            Bound::Excluded(Value::from(45)),
        )
        .reverse()
        .limit(2);
        let page = users.lookup("by_age", &q).await.expect("lookup");
        assert_eq!(names(&page.items), ["Alan", "Alonzo"]);

        // Kinds answer what they can, and say so otherwise.
        let err = users
            .lookup("by_email", &Query::prefix("ada"))
            .await
            .expect_err("an equality index has no order");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let err = users
            .lookup("nope", &Query::eq(1))
            .await
            .expect_err("no such index");
        assert!(matches!(err, Error::IndexNotFound { .. }), "{err}");
        let info = users.indexes();
        assert_eq!(info.len(), 4);
        assert!(
            info.iter()
                .any(|i| i.name == "by_email" && i.unique && i.kind == IndexKind::Equality)
        );
        assert_eq!(db.stats().scans, scans, "lookups never scan");
        assert!(db.stats().index_lookups >= 10);
    });
}

#[test]
fn missing_fields_are_not_indexed_and_null_is_a_value() {
    futures_executor::block_on(async {
        let db = Database::memory().await.expect("open");
        let c = db.collection("c");
        c.create_index("by_x", IndexSpec::ordered(["x"]).unique())
            .await
            .expect("index");
        let with = |x: Value| Value::map([("x", x)]);
        let a = c.insert(&with(Value::Null)).await.expect("null");
        let b = c
            .insert(&with(Value::Null))
            .await
            .expect("a second null is allowed");
        c.insert(&Value::map([("y", 1)])).await.expect("no x");
        let n = c.insert(&with(Value::from(1))).await.expect("one");
        let f = c.insert(&with(Value::Float(2.5))).await.expect("float");
        // 1.0 equals 1: the unique index refuses it.
        let err = c
            .insert(&with(Value::Float(1.0)))
            .await
            .expect_err("1.0 == 1");
        match err {
            Error::UniqueViolation {
                index,
                value,
                existing,
                ..
            } => {
                assert_eq!(index, "by_x");
                assert_eq!(value, "1.0");
                assert_eq!(existing, n);
            }
            e => panic!("{e}"),
        }
        let ids = |p: entidb::IndexPage| p.items.iter().map(|d| d.id()).collect::<Vec<EntityId>>();
        assert_eq!(
            ids(c
                .lookup("by_x", &Query::eq(Value::Null))
                .await
                .expect("lookup")),
            [a, b]
        );
        // Everything: nulls first, then numbers by value; the document without x is absent.
        assert_eq!(
            ids(c.lookup("by_x", &Query::all()).await.expect("lookup")),
            [a, b, n, f]
        );
        assert_eq!(
            ids(c.lookup("by_x", &Query::eq(1.0)).await.expect("lookup")),
            [n]
        );
    });
}

#[test]
fn unique_violations_write_nothing_and_name_the_index() {
    futures_executor::block_on(async {
        let db = people().await;
        let users = db.collection("users");
        let before = db.last_sequence();
        let count = users.count().await.expect("count");

        // Two new documents with one email in one transaction.
        let mut tx = db.begin().await.expect("begin");
        tx.collection("users")
            .insert(&user("X", Some("x@example.com"), 1, "A"))
            .expect("put");
        tx.collection("users")
            .insert(&user("Y", Some("x@example.com"), 2, "B"))
            .expect("put");
        tx.collection("other").insert(&1).expect("put");
        let err = tx.commit().await.expect_err("duplicate in one transaction");
        assert!(
            matches!(&err, Error::UniqueViolation { index, .. } if index == "by_email"),
            "{err}"
        );
        assert!(err.to_string().contains("x@example.com"), "{err}");
        assert_eq!(db.last_sequence(), before);
        assert_eq!(users.count().await.expect("count"), count);
        assert!(
            !db.collections().contains(&"other".to_owned()),
            "nothing of it was written"
        );

        // Against a committed document.
        let err = users
            .insert(&user("Ada2", Some("ada@example.com"), 1, "A"))
            .await
            .expect_err("taken");
        assert!(matches!(err, Error::UniqueViolation { .. }));

        // Swapping two values inside one transaction is fine (checked on the final state).
        let ada = users
            .find_one("by_email", "ada@example.com")
            .await
            .expect("q")
            .expect("ada");
        let alan = users
            .find_one("by_email", "alan@example.com")
            .await
            .expect("q")
            .expect("alan");
        let mut a: User = ada.decode().expect("user");
        let mut b: User = alan.decode().expect("user");
        std::mem::swap(&mut a.email, &mut b.email);
        let mut tx = db.begin().await.expect("begin");
        tx.collection("users").put(ada.id(), &a).expect("put");
        tx.collection("users").put(alan.id(), &b).expect("put");
        tx.commit().await.expect("a swap keeps values unique");
        let now = users
            .find_one("by_email", "ada@example.com")
            .await
            .expect("q")
            .expect("ada's email");
        assert_eq!(now.id(), alan.id());

        // Rewriting a document with its own value is not a violation.
        users
            .put(alan.id(), &b)
            .await
            .expect("same value, same entity");

        // Creating a unique index over duplicates fails and leaves no index behind.
        let err = users
            .create_index("by_age_unique", IndexSpec::ordered(["age"]).unique())
            .await
            .expect_err("two people are 36");
        assert!(matches!(err, Error::UniqueViolation { .. }), "{err}");
        assert!(!users.indexes().iter().any(|i| i.name == "by_age_unique"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_cannot_both_take_a_unique_value() {
    let db = Database::memory().await.expect("open");
    db.collection("users")
        .create_index("by_email", IndexSpec::equality(["email"]).unique())
        .await
        .expect("index");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = db.begin().await?;
            tx.collection("users").insert(&user(
                &format!("u{i}"),
                Some("same@example.com"),
                i,
                "C",
            ))?;
            tx.collection("log").insert(&i)?;
            tx.commit().await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(Error::UniqueViolation { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(db.collection("users").count().await.expect("count"), 1);
    assert_eq!(
        db.collection("log").count().await.expect("count"),
        1,
        "losers wrote nothing"
    );
    assert!(db.verify_indexes().await.expect("verify").is_ok());
}

#[test]
fn transactions_see_their_own_writes_and_snapshots_stay_put() {
    futures_executor::block_on(async {
        let db = people().await;
        let users = db.collection("users");
        let old = db.snapshot();
        let mut tx = db.begin().await.expect("begin");
        let id = tx
            .collection("users")
            .insert(&user("Zed", None, 36, "Paris"))
            .expect("put");
        let ada = users
            .find_one("by_email", "ada@example.com")
            .await
            .expect("q")
            .expect("ada");
        tx.collection("users")
            .delete(ada.id())
            .await
            .expect("delete");
        let mut c = tx.collection("users");
        let got = c
            .lookup("by_age", &Query::eq(36))
            .await
            .expect("lookup")
            .collect()
            .await
            .expect("collect");
        assert_eq!(
            names(&got),
            ["Alonzo", "Zed"],
            "own insert visible, own delete hidden"
        );
        tx.commit().await.expect("commit");

        // The old snapshot still sees the old index; a new one sees the commit.
        let mut l = old
            .collection("users")
            .lookup("by_age", &Query::eq(36))
            .await
            .expect("lookup");
        let mut seen = Vec::new();
        while let Some(d) = l.next().await.expect("next") {
            seen.push(d.decode::<User>().expect("user").name);
        }
        assert_eq!(seen, ["Ada", "Alonzo"]);
        let snap = db.snapshot();
        let mut l = snap
            .collection("users")
            .lookup("by_age", &Query::eq(36))
            .await
            .expect("lookup");
        assert!(l.next_id().await.expect("next").is_some());
        assert_eq!(l.next_id().await.expect("next"), Some(id));
        assert!(l.cursor().is_some());
        assert_eq!(l.next_id().await.expect("end"), None);

        // An index created after a snapshot does not exist in it.
        users
            .create_index("by_name2", IndexSpec::ordered(["name"]))
            .await
            .expect("index");
        let err = old
            .collection("users")
            .lookup("by_name2", &Query::all())
            .await
            .expect_err("not in the old snapshot");
        assert!(matches!(err, Error::IndexNotFound { .. }));
    });
}

#[test]
fn indexes_persist_drop_durably_and_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    futures_executor::block_on(async {
        let db = Database::open(dir.path()).await.expect("open");
        let c = db.collection("c");
        for i in 0..500u32 {
            c.insert(&Value::map([
                ("n", Value::from(i % 50)),
                ("s", Value::from(format!("k{i:04}"))),
            ]))
            .await
            .expect("insert");
        }
        // Built from a populated collection, in one step.
        c.create_index("by_n", IndexSpec::ordered(["n"]))
            .await
            .expect("index");
        c.create_index("by_s", IndexSpec::equality(["s"]).unique())
            .await
            .expect("index");
        assert_eq!(
            c.lookup("by_n", &Query::eq(7))
                .await
                .expect("q")
                .items
                .len(),
            10
        );
        drop(c);
        db.close().await.expect("close");

        let db = Database::open(dir.path()).await.expect("reopen");
        let c = db.collection("c");
        assert_eq!(c.indexes().len(), 2);
        assert_eq!(
            c.lookup("by_n", &Query::eq(7))
                .await
                .expect("q")
                .items
                .len(),
            10
        );
        assert!(c.find_one("by_s", "k0123").await.expect("q").is_some());
        assert!(c.drop_index("by_n").await.expect("drop"));
        assert!(!c.drop_index("by_n").await.expect("drop twice"));
        drop((c, db));

        let db = Database::open(dir.path()).await.expect("reopen");
        let c = db.collection("c");
        assert_eq!(c.indexes().len(), 1, "the drop was durable");
        assert!(matches!(
            c.lookup("by_n", &Query::eq(7)).await,
            Err(Error::IndexNotFound { .. })
        ));
        // Compaction reclaims the dropped entries; a re-created index is complete.
        let before = db.stats().segment_bytes;
        db.compact().await.expect("compact");
        c.create_index("by_n", IndexSpec::ordered(["n"]))
            .await
            .expect("re-create");
        db.compact().await.expect("compact");
        assert!(
            db.stats().segment_bytes <= before + 64 * 1024,
            "no growth beyond the new index"
        );
        assert_eq!(
            c.lookup("by_n", &Query::eq(7))
                .await
                .expect("q")
                .items
                .len(),
            10
        );
        let report = db.verify_indexes().await.expect("verify");
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.indexes.len(), 2);

        // Dropping the collection drops its indexes.
        assert!(db.drop_collection("c").await.expect("drop"));
        assert!(db.collection("c").indexes().is_empty());
        db.collection("c")
            .insert(&Value::map([("n", 7)]))
            .await
            .expect("new incarnation");
        assert!(
            db.verify_indexes()
                .await
                .expect("verify")
                .indexes
                .is_empty()
        );
    });
}

#[test]
fn limits_and_full_scan_policy() {
    futures_executor::block_on(async {
        let db = Database::open_with(
            std::sync::Arc::new(entidb::io::MemoryBackend::new()),
            Options::default().forbid_full_scans(true),
        )
        .await
        .expect("open");
        let c = db.collection("docs");
        c.create_index("by_body", IndexSpec::ordered(["body"]))
            .await
            .expect("index");
        c.create_index("by_body_eq", IndexSpec::equality(["title"]))
            .await
            .expect("index");
        let big = "x".repeat(10_000);
        let err = c
            .insert(&Value::map([("body", big.as_str())]))
            .await
            .expect_err("too large for an ordered key");
        assert!(matches!(err, Error::IndexKeyTooLarge { .. }), "{err}");
        assert_eq!(c.count().await.expect("count"), 0, "nothing was written");
        // An equality index takes any size.
        let id = c
            .insert(&Value::map([("title", big.as_str())]))
            .await
            .expect("hash key");
        assert_eq!(
            c.find_one("by_body_eq", big.as_str())
                .await
                .expect("q")
                .map(|d| d.id()),
            Some(id)
        );
        let err = c
            .scan_where(entidb::ScanOptions::default(), |_| true)
            .await
            .expect_err("full scans are forbidden");
        assert!(matches!(err, Error::FullScanForbidden { .. }), "{err}");
        assert!(err.to_string().contains("index"));
    });
}
