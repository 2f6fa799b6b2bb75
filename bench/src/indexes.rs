//! The index benchmark: I1-I3 of `shared/bench/WORKLOADS.md` and a full-text workload (F1,
//! F2), on EntiDB and on SQLite with the same indexes (FTS5 for search), in one run.
//!
//! ```text
//! cargo bench -p entidb-bench --bench indexes                 # the full sizes
//! cargo bench -p entidb-bench --bench indexes -- --scale 0.1  # a tenth of every size
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it runs a smoke pass on tiny data.
//!
//! * I1: 200,000 puts into a collection with 2 secondary indexes (unique `email`, ordered
//!   `age`), 1,000 per durable transaction.
//! * I2: 100,000 equality lookups of a random existing email, returning the document.
//! * I3: 10,000 range queries `age >= a` returning the first 10 documents in age order.
//!   I2 and I3 run `--repeat N` times (default 5) on the same data; the median is reported.
//! * F1: 20,000 documents of 50 words (5,000-word vocabulary, Zipf-like) into a search index,
//!   1,000 per transaction.
//! * F2: 2,000 two-word queries (both words required), top 10 by BM25, returning documents.
//!
//! Each engine gets a fresh directory; SQLite runs in WAL mode with `synchronous=FULL` and
//! stores the same CBOR document next to the indexed columns.

use std::ops::Bound;
use std::path::Path;
use std::time::Instant;

use entidb::cbor::{self, Value};
use entidb::{Database, EntityId, IndexSpec, Query, SearchQuery};
use futures_executor::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type Res<T> = crate::Res<T>;

struct Sizes {
    /// How many times I2 and I3 run (the median is reported).
    repeat: usize,
    rows: usize,
    lookups: usize,
    ranges: usize,
    fts_docs: usize,
    fts_queries: usize,
}

struct Row {
    id: EntityId,
    email: String,
    age: i64,
    doc: Vec<u8>,
}

fn rows(n: usize) -> Vec<Row> {
    let mut rng = SmallRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let email = format!("user{i:07}@example.com");
            let age = rng.random_range(18..90i64);
            let doc = cbor::encode(&Value::map([
                ("email", Value::from(email.as_str())),
                ("age", Value::from(age)),
                ("name", Value::from(format!("User number {i}"))),
                ("bio", Value::from("x".repeat(rng.random_range(40..120)))),
            ]));
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&(i as u64).to_be_bytes());
            id[0] = rng.random();
            Row {
                id: EntityId::from_bytes(id),
                email,
                age,
                doc,
            }
        })
        .collect()
}

/// A pseudo-word for vocabulary rank `r`.
fn word(r: usize) -> String {
    let mut s = String::new();
    let mut x = r + 1;
    while x > 0 {
        s.push((b'a' + (x % 26) as u8) as char);
        x /= 26;
    }
    s.push_str("ex");
    s
}

/// Zipf-like: rank r drawn with weight ~ 1/(r+1).
fn zipf(rng: &mut SmallRng, n: usize) -> usize {
    let u: f64 = rng.random();
    ((n as f64 + 1.0).powf(u) - 1.0) as usize % n
}

fn texts(n: usize) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(11);
    (0..n)
        .map(|_| {
            (0..50)
                .map(|_| word(zipf(&mut rng, 5000)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn queries(n: usize) -> Vec<(String, String)> {
    let mut rng = SmallRng::seed_from_u64(13);
    (0..n)
        .map(|_| {
            (
                word(rng.random_range(5..60)),
                word(rng.random_range(5..200)),
            )
        })
        .collect()
}

struct Report {
    lines: Vec<(String, f64, f64)>,
}

impl Report {
    fn add(&mut self, what: &str, entidb_ops: f64, sqlite_ops: f64) {
        println!(
            "{what:<44} EntiDB {:>12.0}/s  SQLite {:>12.0}/s  ratio {:.2}",
            entidb_ops,
            sqlite_ops,
            entidb_ops / sqlite_ops
        );
        self.lines.push((what.to_owned(), entidb_ops, sqlite_ops));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn rate(n: usize, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64()
}

fn entidb_run(
    dir: &Path,
    s: &Sizes,
    data: &[Row],
    docs: &[String],
    qs: &[(String, String)],
) -> Res<[f64; 5]> {
    block_on(async {
        let db = Database::open(dir).await?;
        let users = db.collection("users");
        users
            .create_index("by_email", IndexSpec::equality(["email"]).unique())
            .await?;
        users
            .create_index("by_age", IndexSpec::ordered(["age"]))
            .await?;
        // I1
        let t = Instant::now();
        for chunk in data.chunks(1000) {
            let mut tx = db.begin().await?;
            let mut c = tx.collection("users");
            for r in chunk {
                c.put_cbor(r.id, &r.doc)?;
            }
            tx.commit().await?;
        }
        let i1 = rate(data.len(), t);
        let snap = db.snapshot();
        let users_s = snap.collection("users");
        let (mut i2s, mut i3s) = (Vec::new(), Vec::new());
        for _ in 0..s.repeat {
            // I2
            let mut rng = SmallRng::seed_from_u64(1);
            let t = Instant::now();
            let mut bytes = 0usize;
            for _ in 0..s.lookups {
                let r = &data[rng.random_range(0..data.len())];
                let mut l = users_s
                    .lookup("by_email", &Query::eq(r.email.as_str()).limit(1))
                    .await?;
                let d = l.next().await?.ok_or("I2: missing email")?;
                bytes += d.bytes().len();
            }
            i2s.push(rate(s.lookups, t));
            assert!(bytes > 0);
            // I3
            let t = Instant::now();
            for _ in 0..s.ranges {
                let a = rng.random_range(18..90i64);
                let q = Query::range(Bound::Included(Value::from(a)), Bound::Unbounded).limit(10);
                let got = users_s.lookup("by_age", &q).await?.collect().await?;
                assert!(got.len() == 10 || a > 80, "I3: short page");
            }
            i3s.push(rate(s.ranges, t));
        }
        let (i2, i3) = (median(i2s), median(i3s));
        drop(snap);
        // F1
        let posts = db.collection("posts");
        posts
            .create_index("text", IndexSpec::search(["body"]))
            .await?;
        let t = Instant::now();
        for (ci, chunk) in docs.chunks(1000).enumerate() {
            let mut tx = db.begin().await?;
            let mut c = tx.collection("posts");
            for (i, text) in chunk.iter().enumerate() {
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&((ci * 1000 + i) as u64).to_be_bytes());
                c.put_value(
                    EntityId::from_bytes(id),
                    &Value::map([("body", text.as_str())]),
                )?;
            }
            tx.commit().await?;
        }
        let f1 = rate(docs.len(), t);
        // F2
        let t = Instant::now();
        let mut hits = 0usize;
        for (a, b) in qs {
            hits += posts
                .search("text", &SearchQuery::all(format!("{a} {b}")).limit(10))
                .await?
                .len();
        }
        let f2 = rate(qs.len(), t);
        println!("EntiDB F2: {hits} hits; stats {:?}", db.stats());
        db.close().await?;
        Ok([i1, i2, i3, f1, f2])
    })
}

fn sqlite_run(
    dir: &Path,
    s: &Sizes,
    data: &[Row],
    docs: &[String],
    qs: &[(String, String)],
) -> Res<[f64; 5]> {
    let mut conn = rusqlite::Connection::open(dir.join("db.sqlite"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    assert_eq!(mode.to_lowercase(), "wal");
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA cache_size=-65536;
         CREATE TABLE users(id BLOB PRIMARY KEY, email TEXT NOT NULL, age INTEGER NOT NULL, doc BLOB NOT NULL) WITHOUT ROWID;
         CREATE UNIQUE INDEX users_email ON users(email);
         CREATE INDEX users_age ON users(age);
         CREATE VIRTUAL TABLE posts USING fts5(body);",
    )?;
    // I1
    let t = Instant::now();
    for chunk in data.chunks(1000) {
        let tx = conn.transaction()?;
        {
            let mut st = tx
                .prepare_cached("INSERT INTO users(id, email, age, doc) VALUES (?1, ?2, ?3, ?4)")?;
            for r in chunk {
                st.execute((&r.id.as_bytes()[..], &r.email, r.age, &r.doc[..]))?;
            }
        }
        tx.commit()?;
    }
    let i1 = rate(data.len(), t);
    let (mut i2s, mut i3s) = (Vec::new(), Vec::new());
    for _ in 0..s.repeat {
        // I2
        let mut rng = SmallRng::seed_from_u64(1);
        let t = Instant::now();
        let mut bytes = 0usize;
        {
            let mut st = conn.prepare_cached("SELECT doc FROM users WHERE email = ?1")?;
            for _ in 0..s.lookups {
                let r = &data[rng.random_range(0..data.len())];
                let d: Vec<u8> = st.query_row([&r.email], |row| row.get(0))?;
                bytes += d.len();
            }
        }
        i2s.push(rate(s.lookups, t));
        assert!(bytes > 0);
        // I3
        let t = Instant::now();
        {
            let mut st =
                conn.prepare_cached("SELECT doc FROM users WHERE age >= ?1 ORDER BY age LIMIT 10")?;
            for _ in 0..s.ranges {
                let a = rng.random_range(18..90i64);
                let got: Vec<Vec<u8>> = st
                    .query_map([a], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                assert!(got.len() == 10 || a > 80, "I3: short page");
            }
        }
        i3s.push(rate(s.ranges, t));
    }
    let (i2, i3) = (median(i2s), median(i3s));
    // F1
    let t = Instant::now();
    for (ci, chunk) in docs.chunks(1000).enumerate() {
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT INTO posts(rowid, body) VALUES (?1, ?2)")?;
            for (i, text) in chunk.iter().enumerate() {
                st.execute(((ci * 1000 + i) as i64, text))?;
            }
        }
        tx.commit()?;
    }
    let f1 = rate(docs.len(), t);
    // F2
    let t = Instant::now();
    let mut hits = 0usize;
    {
        let mut st = conn.prepare_cached(
            "SELECT rowid, body FROM posts WHERE posts MATCH ?1 ORDER BY bm25(posts) LIMIT 10",
        )?;
        for (a, b) in qs {
            let got: Vec<(i64, String)> = st
                .query_map([format!("{a} {b}")], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            hits += got.len();
        }
    }
    let f2 = rate(qs.len(), t);
    println!("SQLite F2: {hits} hits");
    Ok([i1, i2, i3, f1, f2])
}

/// Run the index and full-text workloads with command-line `args` (`--bench` for the real
/// sizes, `--scale F`, `--entidb-only`).
pub fn run(args: Vec<String>) -> Res<()> {
    // `cargo test` runs this binary without `--bench`: a smoke pass on tiny data, so the
    // code cannot rot.
    let bench = args.iter().any(|a| a == "--bench");
    let scale: f64 = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1.0 } else { 0.002 });
    let n = |base: usize| ((base as f64 * scale) as usize).max(10);
    let s = Sizes {
        repeat: args
            .iter()
            .position(|a| a == "--repeat")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(if bench { 5 } else { 1 }),
        rows: n(200_000),
        lookups: n(100_000),
        ranges: n(10_000),
        fts_docs: n(20_000),
        fts_queries: n(2_000),
    };
    println!(
        "index benchmark: {} rows, {} lookups, {} ranges, {} documents, {} searches",
        s.rows, s.lookups, s.ranges, s.fts_docs, s.fts_queries
    );
    let data = rows(s.rows);
    let docs = texts(s.fts_docs);
    let qs = queries(s.fts_queries);
    let root = tempfile::tempdir()?;
    let e = entidb_run(&root.path().join("entidb"), &s, &data, &docs, &qs)?;
    if args.iter().any(|a| a == "--entidb-only") {
        println!("{e:?}");
        return Ok(());
    }
    let q = sqlite_run(
        &{
            let p = root.path().join("sqlite");
            std::fs::create_dir_all(&p)?;
            p
        },
        &s,
        &data,
        &docs,
        &qs,
    )?;
    let mut r = Report { lines: Vec::new() };
    let names = [
        "I1 puts, 2 indexes (1 unique), 1000/txn",
        "I2 equality lookups (unique email)",
        "I3 range queries of 10 (age >= a)",
        "F1 documents into a search index, 1000/txn",
        "F2 two-word searches, top 10 by BM25",
    ];
    println!();
    for (i, name) in names.iter().enumerate() {
        r.add(name, e[i], q[i]);
    }
    Ok(())
}
