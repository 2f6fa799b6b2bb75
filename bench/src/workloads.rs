//! The engine benchmark: workloads W1-W10 of `shared/bench/WORKLOADS.md` on EntiDB, SQLite
//! (rusqlite, bundled; WAL journal, `synchronous=FULL`, `kv(k BLOB PRIMARY KEY, v BLOB)
//! WITHOUT ROWID`, prepared statements) and redb (`Durability::Immediate`), in one process
//! run, each with a 256 MiB cache, in fresh directories on the same file system.
//!
//! `cargo bench -p entidb-bench --bench workloads -- [--scale F] [--runs N] [--dir D]
//! [--value random|doc|both] [--compare sqlite,redb]` prints a Markdown table of medians and
//! ratios. Under `cargo test` (no `--bench` argument) it runs a tiny smoke pass, so the code
//! cannot rot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use entidb::{Database, EntityId, Options, ScanOptions};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

type Key = [u8; 16];
/// Result of the benchmark.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CACHE: usize = 256 << 20;

// ---------------------------------------------------------------------------------------
// Data

#[derive(Clone, Copy, Debug, PartialEq)]
enum ValueKind {
    /// 200 random bytes in a CBOR byte string (incompressible).
    Random,
    /// A CBOR map of 8 fields: strings, integers, a float, a bool, a nested map.
    Doc,
}

/// Scans per run of W5 (the run's figure is their median).
const W5_SCANS: usize = 5;

fn value(kind: ValueKind, rng: &mut SmallRng, i: u64) -> Vec<u8> {
    use entidb::cbor::{Value, encode};
    match kind {
        ValueKind::Random => {
            let mut b = vec![0u8; 200];
            rng.fill_bytes(&mut b);
            encode(&Value::Bytes(b))
        }
        ValueKind::Doc => {
            let names = ["ada", "grace", "edsger", "barbara", "donald", "frances"];
            let cities = ["Lyon", "Berlin", "Osaka", "Lagos", "Quito", "Perth"];
            let name = names[rng.random_range(0..names.len())];
            let city = cities[rng.random_range(0..cities.len())];
            let v = Value::map([
                ("name", Value::from(format!("{name} {i}"))),
                ("email", Value::from(format!("{name}.{i}@example.com"))),
                ("age", Value::from(rng.random_range(18..90u64))),
                ("score", Value::from(rng.random::<f64>() * 100.0)),
                ("active", Value::from(rng.random_bool(0.5))),
                ("visits", Value::from(rng.random_range(0..100_000u64))),
                (
                    "bio",
                    Value::from("writes software that keeps working offline, then syncs"),
                ),
                (
                    "address",
                    Value::map([
                        ("city", Value::from(city)),
                        (
                            "zip",
                            Value::from(format!("{:05}", rng.random_range(0..99_999))),
                        ),
                        ("street", Value::from(format!("{} Main Street", i % 1000))),
                    ]),
                ),
            ]);
            encode(&v)
        }
    }
}

fn keys(n: usize, rng: &mut SmallRng) -> Vec<Key> {
    (0..n)
        .map(|_| {
            let mut k = [0u8; 16];
            rng.fill_bytes(&mut k);
            k
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Engines

trait Engine: Send + Sync {
    /// One durable transaction putting all of `kvs`.
    fn put_batch(&self, kvs: &[(Key, Vec<u8>)]) -> Res<()>;
    /// `tasks` concurrent writers, each committing its own puts one by one, durably.
    fn concurrent_puts(&self, tasks: Vec<Vec<(Key, Vec<u8>)>>) -> Res<()>;
    /// Point reads of `keys` in one read transaction/snapshot; returns how many were found.
    fn gets(&self, keys: &[Key]) -> Res<usize>;
    /// Full ordered scan; returns the row count.
    fn scan(&self) -> Res<usize>;
    /// One durable transaction deleting `keys`.
    fn delete_batch(&self, keys: &[Key]) -> Res<()>;
    /// Reclaim space.
    fn compact(&self) -> Res<()>;
    /// Close cleanly (checkpoint).
    fn close(self: Box<Self>) -> Res<()>;
}

type Opener = fn(&Path) -> Res<Box<dyn Engine>>;

struct Entidb {
    db: Database,
    rt: tokio::runtime::Runtime,
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn open_entidb(dir: &Path) -> Res<Box<dyn Engine>> {
    let mut options = Options::default().cache_bytes(CACHE as u64);
    // `ENTIDB_BENCH_MEMTABLE_MIB` overrides the write-buffer budget (default: the engine's).
    if let Some(mib) = std::env::var("ENTIDB_BENCH_MEMTABLE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options = options.memtable_bytes(mib << 20);
    }
    open_entidb_with(dir, options)
}

/// EntiDB with every file encrypted (AES-256-GCM, a raw key: no Argon2 in the timings).
fn open_entidb_encrypted(dir: &Path) -> Res<Box<dyn Engine>> {
    let rt = runtime()?;
    let options = Options::default().cache_bytes(CACHE as u64);
    let key = entidb::io::KeySource::Raw([0x5a; 32]);
    let db = rt.block_on(Database::open_encrypted(dir, key, options))?;
    Ok(Box::new(Entidb { db, rt }))
}

fn open_entidb_with(dir: &Path, options: Options) -> Res<Box<dyn Engine>> {
    let rt = runtime()?;
    let db = rt.block_on(Database::open_path(dir, options))?;
    Ok(Box::new(Entidb { db, rt }))
}

impl Engine for Entidb {
    fn put_batch(&self, kvs: &[(Key, Vec<u8>)]) -> Res<()> {
        self.rt.block_on(async {
            let mut tx = self.db.begin().await?;
            let mut c = tx.collection("kv");
            for (k, v) in kvs {
                c.put_cbor(EntityId::from_bytes(*k), v)?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
    fn concurrent_puts(&self, tasks: Vec<Vec<(Key, Vec<u8>)>>) -> Res<()> {
        self.rt.block_on(async {
            let handles: Vec<_> = tasks
                .into_iter()
                .map(|puts| {
                    let db = self.db.clone();
                    tokio::spawn(async move {
                        let c = db.collection("kv");
                        for (k, v) in puts {
                            c.put_cbor(EntityId::from_bytes(k), &v).await?;
                        }
                        Ok::<_, entidb::Error>(())
                    })
                })
                .collect();
            for h in handles {
                h.await??;
            }
            Ok(())
        })
    }
    fn gets(&self, keys: &[Key]) -> Res<usize> {
        self.rt.block_on(async {
            let snap = self.db.snapshot();
            let c = snap.collection("kv");
            let mut found = 0;
            for k in keys {
                if c.get_document(EntityId::from_bytes(*k)).await?.is_some() {
                    found += 1;
                }
            }
            Ok(found)
        })
    }
    fn scan(&self) -> Res<usize> {
        self.rt.block_on(async {
            let snap = self.db.snapshot();
            let c = snap.collection("kv");
            let mut opts = ScanOptions::limit(10_000);
            let mut n = 0;
            loop {
                let page = c.scan(opts).await?;
                for d in &page.items {
                    std::hint::black_box(d.bytes());
                }
                n += page.items.len();
                match page.next {
                    Some(cur) => opts = opts.after(cur),
                    None => return Ok(n),
                }
            }
        })
    }
    fn delete_batch(&self, keys: &[Key]) -> Res<()> {
        self.rt.block_on(async {
            let mut tx = self.db.begin().await?;
            let mut c = tx.collection("kv");
            for k in keys {
                c.delete(EntityId::from_bytes(*k)).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
    fn compact(&self) -> Res<()> {
        Ok(self.rt.block_on(self.db.compact())?)
    }
    fn close(self: Box<Self>) -> Res<()> {
        let Entidb { db, rt } = *self;
        rt.block_on(db.close())?;
        Ok(())
    }
}

struct Sqlite {
    conn: Mutex<rusqlite::Connection>,
}

fn open_sqlite(dir: &Path) -> Res<Box<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    let conn = rusqlite::Connection::open(dir.join("kv.sqlite"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    assert_eq!(mode.to_lowercase(), "wal");
    conn.execute_batch(&format!(
        "PRAGMA synchronous=FULL; PRAGMA cache_size=-{}; \
         CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;",
        CACHE / 1024
    ))?;
    Ok(Box::new(Sqlite {
        conn: Mutex::new(conn),
    }))
}

impl Sqlite {
    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for Sqlite {
    fn put_batch(&self, kvs: &[(Key, Vec<u8>)]) -> Res<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT OR REPLACE INTO kv(k, v) VALUES (?1, ?2)")?;
            for (k, v) in kvs {
                st.execute((&k[..], &v[..]))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn concurrent_puts(&self, tasks: Vec<Vec<(Key, Vec<u8>)>>) -> Res<()> {
        threaded_puts(self, tasks)
    }
    fn gets(&self, keys: &[Key]) -> Res<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut found = 0;
        {
            let mut st = tx.prepare_cached("SELECT v FROM kv WHERE k = ?1")?;
            for k in keys {
                let mut rows = st.query([&k[..]])?;
                if let Some(row) = rows.next()? {
                    let v: Vec<u8> = row.get(0)?;
                    std::hint::black_box(v);
                    found += 1;
                }
            }
        }
        tx.commit()?;
        Ok(found)
    }
    fn scan(&self) -> Res<usize> {
        let conn = self.conn();
        let mut st = conn.prepare_cached("SELECT k, v FROM kv ORDER BY k")?;
        let mut rows = st.query([])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            let v: Vec<u8> = row.get(1)?;
            std::hint::black_box(v);
            n += 1;
        }
        Ok(n)
    }
    fn delete_batch(&self, keys: &[Key]) -> Res<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM kv WHERE k = ?1")?;
            for k in keys {
                st.execute([&k[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn compact(&self) -> Res<()> {
        self.conn()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")?;
        Ok(())
    }
    fn close(self: Box<Self>) -> Res<()> {
        let conn = self.conn.into_inner().unwrap_or_else(|p| p.into_inner());
        conn.close().map_err(|(_, e)| e)?;
        Ok(())
    }
}

struct Redb {
    db: RwLock<redb::Database>,
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

fn open_redb(dir: &Path) -> Res<Box<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    let db = redb::Builder::new()
        .set_cache_size(CACHE)
        .create(dir.join("kv.redb"))?;
    let tx = db.begin_write()?;
    tx.open_table(TABLE)?;
    tx.commit()?;
    Ok(Box::new(Redb {
        db: RwLock::new(db),
    }))
}

impl Redb {
    fn db(&self) -> std::sync::RwLockReadGuard<'_, redb::Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self, f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Res<()>) -> Res<()> {
        let db = self.db();
        let mut tx = db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut t = tx.open_table(TABLE)?;
            f(&mut t)?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Engine for Redb {
    fn put_batch(&self, kvs: &[(Key, Vec<u8>)]) -> Res<()> {
        self.write(|t| {
            for (k, v) in kvs {
                t.insert(&k[..], &v[..])?;
            }
            Ok(())
        })
    }
    fn concurrent_puts(&self, tasks: Vec<Vec<(Key, Vec<u8>)>>) -> Res<()> {
        threaded_puts(self, tasks)
    }
    fn gets(&self, keys: &[Key]) -> Res<usize> {
        use redb::ReadableDatabase;
        let db = self.db();
        let tx = db.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let mut found = 0;
        for k in keys {
            if let Some(v) = t.get(&k[..])? {
                std::hint::black_box(v.value().to_vec());
                found += 1;
            }
        }
        Ok(found)
    }
    fn scan(&self) -> Res<usize> {
        use redb::{ReadableDatabase, ReadableTable};
        let db = self.db();
        let tx = db.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let mut n = 0;
        for item in t.iter()? {
            let (_, v) = item?;
            std::hint::black_box(v.value().to_vec());
            n += 1;
        }
        Ok(n)
    }
    fn delete_batch(&self, keys: &[Key]) -> Res<()> {
        self.write(|t| {
            for k in keys {
                t.remove(&k[..])?;
            }
            Ok(())
        })
    }
    fn compact(&self) -> Res<()> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        db.compact()?;
        Ok(())
    }
    fn close(self: Box<Self>) -> Res<()> {
        drop(self);
        Ok(())
    }
}

/// Writers on OS threads (the references' natural form of concurrency).
fn threaded_puts<E: Engine + ?Sized>(e: &E, tasks: Vec<Vec<(Key, Vec<u8>)>>) -> Res<()> {
    std::thread::scope(|s| {
        let hs: Vec<_> = tasks
            .into_iter()
            .map(|puts| {
                s.spawn(move || {
                    for (k, v) in puts {
                        e.put_batch(&[(k, v)])?;
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| "writer thread panicked")??;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Measurement helpers

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Reset the peak-RSS counter (Linux `clear_refs` 5) and return the current RSS in bytes.
fn reset_peak_rss() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:") * 1024
}

fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Per engine, the values of one metric over the runs.
type Samples = BTreeMap<&'static str, Vec<f64>>;

/// Results: (workload, metric) -> (higher is better, samples).
#[derive(Default)]
struct Results {
    rows: BTreeMap<(String, String), (bool, Samples)>,
    order: Vec<(String, String)>,
}

impl Results {
    /// Record `n` operations done since `started` as a rate (per second, higher is better).
    fn rate(&mut self, w: &str, metric: &str, engine: &'static str, n: usize, started: Instant) {
        self.add(
            w,
            metric,
            true,
            engine,
            n as f64 / started.elapsed().as_secs_f64(),
        );
    }

    /// `higher_better` orients the ratio's meaning in the table.
    fn add(&mut self, w: &str, metric: &str, higher_better: bool, engine: &'static str, v: f64) {
        let key = (w.to_owned(), metric.to_owned());
        if !self.rows.contains_key(&key) {
            self.order.push(key.clone());
        }
        let e = self
            .rows
            .entry(key)
            .or_insert_with(|| (higher_better, BTreeMap::new()));
        e.1.entry(engine).or_default().push(v);
    }

    fn median(v: &[f64]) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    }

    fn print(&self, engines: &[&'static str]) {
        let refs: Vec<_> = engines.iter().filter(|e| **e != "EntiDB").collect();
        print!("| workload | metric | better |");
        for e in engines {
            print!(" {e} |");
        }
        for r in &refs {
            print!(" EntiDB/{r} |");
        }
        println!();
        print!("|---|---|---|");
        for _ in 0..engines.len() + refs.len() {
            print!("---:|");
        }
        println!();
        for key in &self.order {
            let (higher, vals) = &self.rows[key];
            print!(
                "| {} | {} | {} |",
                key.0,
                key.1,
                if *higher { "higher" } else { "lower" }
            );
            let med: BTreeMap<_, _> = vals.iter().map(|(e, v)| (*e, Self::median(v))).collect();
            for e in engines {
                match med.get(e) {
                    Some(v) => print!(" {} |", fmt_num(*v)),
                    None => print!(" - |"),
                }
            }
            for r in &refs {
                match (med.get("EntiDB"), med.get(*r)) {
                    (Some(a), Some(b)) if *b != 0.0 => print!(" {:.2} |", a / b),
                    _ => print!(" - |"),
                }
            }
            println!();
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

// ---------------------------------------------------------------------------------------
// Workloads

struct Config {
    scale: f64,
    runs: usize,
    dir: PathBuf,
    kinds: Vec<ValueKind>,
    engines: Vec<(&'static str, Opener)>,
    w9: bool,
    /// `--only W3,W5`: run just these workloads (W3 always runs: the later ones read its
    /// data), for profiling one of them. `None`: all.
    only: Option<Vec<String>>,
}

impl Config {
    fn wants(&self, id: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|w| w.eq_ignore_ascii_case(id)))
    }
}

fn scaled(c: &Config, n: usize) -> usize {
    ((n as f64 * c.scale).round() as usize).max(8)
}

fn floor(c: &Config, res: &mut Results) -> Res<()> {
    let dir = c.dir.join("floor");
    std::fs::create_dir_all(&dir)?;
    let n = scaled(c, 1000);
    // `n` writes of 4 KiB at consecutive offsets, each followed by `fdatasync`: syncs/s.
    let syncs_per_s = |f: &File| -> Res<f64> {
        let block = vec![7u8; 4096];
        let t = Instant::now();
        for i in 0..n {
            f.write_all_at(&block, (i * 4096) as u64)?;
            f.sync_data()?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let f = File::create(dir.join("sync"))?;
    res.add(
        "floor",
        "4 KiB append + fdatasync (syncs/s)",
        true,
        "EntiDB",
        syncs_per_s(&f)?,
    );
    // The same into a file written (zero-filled) beforehand: EntiDB's WAL is preallocated,
    // so this is the floor its commits sync against.
    let f = File::create(dir.join("prealloc"))?;
    f.write_all_at(&vec![0u8; n * 4096], 0)?;
    f.sync_data()?;
    res.add(
        "floor",
        "4 KiB overwrite (preallocated) + fdatasync (syncs/s)",
        true,
        "EntiDB",
        syncs_per_s(&f)?,
    );
    let mut f = File::create(dir.join("seq"))?;
    let chunk = vec![9u8; 1 << 20];
    let mib = scaled(c, 256);
    let t = Instant::now();
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_data()?;
    res.add(
        "floor",
        "sequential write + sync (MiB/s)",
        true,
        "EntiDB",
        mib as f64 / t.elapsed().as_secs_f64(),
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn run_once(c: &Config, run: usize, kind: ValueKind, res: &mut Results) -> Res<()> {
    let tag = match kind {
        ValueKind::Random => "random",
        ValueKind::Doc => "doc",
    };
    let (load, probe) = w3_data(c, kind, 42 + run as u64);
    let n3 = load.len();
    let mut rng = SmallRng::seed_from_u64(1042 + run as u64);
    let raw: u64 = load.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    let w1: Vec<(Key, Vec<u8>)> = keys(scaled(c, 1000), &mut rng)
        .into_iter()
        .map(|k| (k, value(kind, &mut rng, 0)))
        .collect();
    let per_task = scaled(c, 200);
    let w2: Vec<Vec<(Key, Vec<u8>)>> = (0..64)
        .map(|_| {
            keys(per_task, &mut rng)
                .into_iter()
                .map(|k| (k, value(kind, &mut rng, 0)))
                .collect()
        })
        .collect();
    let w6: Vec<Vec<(Key, Vec<u8>)>> = (0..100)
        .map(|t| {
            (0..scaled(c, 1000))
                .map(|j| {
                    // Half inserts of new keys, half updates of loaded ones.
                    let k = if j % 2 == 0 {
                        let mut k = [0u8; 16];
                        rng.fill_bytes(&mut k);
                        k
                    } else {
                        probe[(t * 1000 + j) % probe.len()]
                    };
                    (k, value(kind, &mut rng, j as u64))
                })
                .collect()
        })
        .collect();
    let w6_rows: usize = w6.iter().map(Vec::len).sum();

    for (name, open) in &c.engines {
        let dir = c.dir.join(format!("{name}-{tag}-{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        let e = open(&dir)?;
        let w = |id: &str| format!("{id} {tag}");

        if c.wants("W1") || c.wants("W2") {
            run_w1_w2(&*e, &w1, &w2, &w, name, res)?;
        }
        drop(e);
        let _ = std::fs::remove_dir_all(&dir);

        // W3: bulk load in one transaction (fresh database).
        let e = open(&dir)?;
        let t = Instant::now();
        e.put_batch(&load)?;
        res.rate(&w("W3"), "rows/s", name, n3, t);
        res.add(
            &w("W8"),
            "size after W3 / raw",
            false,
            name,
            dir_size(&dir) as f64 / raw as f64,
        );

        if c.wants("W4") {
            // W4: random gets, warm (one warm-up pass), one snapshot.
            e.gets(&probe)?;
            let t = Instant::now();
            let found = e.gets(&probe)?;
            assert_eq!(found, probe.len(), "{name}: W4 missed keys");
            res.rate(&w("W4"), "gets/s", name, probe.len(), t);
        }

        if c.wants("W5") {
            // W5: full ordered scan. One scan takes tens of milliseconds, where a stray page
            // fault or a descheduling moves the figure by a third: each run scans 5 times
            // and counts the median scan (the same for every engine).
            let mut secs = Vec::with_capacity(W5_SCANS);
            for _ in 0..W5_SCANS {
                let t = Instant::now();
                let rows = e.scan()?;
                secs.push(t.elapsed().as_secs_f64());
                assert_eq!(rows, n3, "{name}: W5 row count");
            }
            secs.sort_by(f64::total_cmp);
            res.add(
                &w("W5"),
                "rows/s",
                true,
                name,
                n3 as f64 / secs[W5_SCANS / 2],
            );
        }
        if !(c.wants("W6") || c.wants("W7") || c.wants("W8")) {
            // Closed, not dropped: an engine's leftover work (EntiDB frees a bulk load's
            // batch on its maintenance thread; `close` waits for it) must not run into the
            // next engine's timings.
            e.close()?;
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        // W6: 100 transactions of mixed inserts and updates.
        let t = Instant::now();
        for batch in &w6 {
            e.put_batch(batch)?;
        }
        res.rate(&w("W6"), "rows/s", name, w6_rows, t);

        // W7: delete half in one transaction, then compact.
        let live = e.scan()?;
        let half: Vec<Key> = load.iter().step_by(2).map(|(k, _)| *k).collect();
        let t = Instant::now();
        e.delete_batch(&half)?;
        res.rate(&w("W7"), "deletes/s", name, half.len(), t);
        let t = Instant::now();
        e.compact()?;
        res.add(
            &w("W7"),
            "compaction s",
            false,
            name,
            t.elapsed().as_secs_f64(),
        );
        let remaining = e.scan()?;
        assert_eq!(remaining, live - half.len(), "{name}: W7 remaining rows");
        // Raw payload of what is live now (W6 inserts included): average row size x rows.
        let live_raw = raw as f64 / n3 as f64 * remaining as f64;
        res.add(
            &w("W8"),
            "size after W7+compaction / raw",
            false,
            name,
            dir_size(&dir) as f64 / live_raw,
        );
        e.close()?;
        res.add(
            &w("W8"),
            "size after close / raw",
            false,
            name,
            dir_size(&dir) as f64 / live_raw,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// W1 (one-put durable transactions, one at a time) and W2 (64 concurrent writers).
fn run_w1_w2(
    e: &dyn Engine,
    w1: &[(Key, Vec<u8>)],
    w2: &[Vec<(Key, Vec<u8>)>],
    w: &dyn Fn(&str) -> String,
    name: &'static str,
    res: &mut Results,
) -> Res<()> {
    // W1: one-put durable transactions, one at a time.
    let mut lat = Vec::with_capacity(w1.len());
    let t = Instant::now();
    for kv in w1 {
        let s = Instant::now();
        e.put_batch(std::slice::from_ref(kv))?;
        lat.push(s.elapsed());
    }
    let el = t.elapsed();
    lat.sort();
    res.add(
        &w("W1"),
        "commits/s",
        true,
        name,
        w1.len() as f64 / el.as_secs_f64(),
    );
    res.add(
        &w("W1"),
        "p50 ms",
        false,
        name,
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
    );
    res.add(
        &w("W1"),
        "p99 ms",
        false,
        name,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
    );

    // W2: 64 concurrent writers.
    let t = Instant::now();
    e.concurrent_puts(w2.to_vec())?;
    res.rate(&w("W2"), "commits/s", name, 64 * w2[0].len(), t);
    Ok(())
}

/// W9: open time of a closed database of 1,000,000 entities.
fn w9(c: &Config, res: &mut Results) -> Res<()> {
    let n = scaled(c, 1_000_000);
    let mut rng = SmallRng::seed_from_u64(9);
    for (name, open) in &c.engines {
        let dir = c.dir.join(format!("{name}-w9"));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let e = open(&dir)?;
            let mut left = n;
            while left > 0 {
                let b = left.min(100_000);
                let batch: Vec<(Key, Vec<u8>)> = keys(b, &mut rng)
                    .into_iter()
                    .map(|k| (k, value(ValueKind::Random, &mut rng, 0)))
                    .collect();
                e.put_batch(&batch)?;
                left -= b;
            }
            e.close()?;
        }
        for _ in 0..c.runs {
            let t = Instant::now();
            let e = open(&dir)?;
            res.add(
                "W9",
                "open after clean close, ms",
                false,
                name,
                t.elapsed().as_secs_f64() * 1e3,
            );
            e.close()?;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    // EntiDB only: open after a crash that leaves 64 MiB of WAL (a process that stops without
    // closing; nothing is flushed on drop, so the WAL since the last checkpoint is replayed).
    let dir = c.dir.join("EntiDB-w9-crash");
    let _ = std::fs::remove_dir_all(&dir);
    let wal_target = (64u64 << 20) as f64 * c.scale;
    {
        let e = open_entidb_with(
            &dir,
            Options::default()
                .cache_bytes(CACHE as u64)
                .memtable_bytes(256 << 20),
        )?;
        let per = 1000;
        let mut written = 0f64;
        while written < wal_target {
            let batch: Vec<(Key, Vec<u8>)> = keys(per, &mut rng)
                .into_iter()
                .map(|k| (k, value(ValueKind::Random, &mut rng, 0)))
                .collect();
            written += batch
                .iter()
                .map(|(k, v)| k.len() + v.len() + 80)
                .sum::<usize>() as f64;
            e.put_batch(&batch)?;
        }
        drop(e);
    }
    let wal_bytes: u64 = std::fs::read_dir(&dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    for _ in 0..c.runs {
        let t = Instant::now();
        let e = open_entidb_with(
            &dir,
            Options::default()
                .cache_bytes(CACHE as u64)
                .memtable_bytes(256 << 20),
        )?;
        res.add(
            "W9",
            &format!("open after crash with {} MiB of WAL, ms", wal_bytes >> 20),
            false,
            "EntiDB",
            t.elapsed().as_secs_f64() * 1e3,
        );
        drop(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The load and probe data of W3/W4 (also what a W10 child process generates).
fn w3_data(c: &Config, kind: ValueKind, seed: u64) -> (Vec<(Key, Vec<u8>)>, Vec<Key>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let load: Vec<(Key, Vec<u8>)> = keys(scaled(c, 200_000), &mut rng)
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, value(kind, &mut rng, i as u64)))
        .collect();
    let mut probe: Vec<Key> = load.iter().map(|(k, _)| *k).collect();
    for i in (1..probe.len()).rev() {
        probe.swap(i, rng.random_range(0..=i));
    }
    (load, probe)
}

/// W10 in a fresh child process per engine and value kind, so that no other engine's
/// allocations (or allocator leftovers) are counted: peak RSS during W3 and during W4, each
/// minus the RSS just before that workload (after the data was generated). W4 counts its
/// warm-up pass (what the reads bring into the engine's cache) and its timed pass; the
/// timed pass alone, on a warm cache, added nothing for any engine (0.000 in every table
/// before 2026-12-07).
fn w10_child(c: &Config, engine: &str, kind: ValueKind, dir: &Path) -> Res<()> {
    let (load, probe) = w3_data(c, kind, 10);
    let open = c
        .engines
        .iter()
        .find(|(n, _)| *n == engine)
        .map(|(_, o)| *o)
        .ok_or("unknown engine")?;
    let e = open(dir)?;
    let base = reset_peak_rss();
    e.put_batch(&load)?;
    let w3 = peak_rss().saturating_sub(base);
    let base = reset_peak_rss();
    e.gets(&probe)?;
    let found = e.gets(&probe)?;
    let w4 = peak_rss().saturating_sub(base);
    assert_eq!(found, probe.len());
    e.close()?;
    println!("W10 {w3} {w4}");
    Ok(())
}

fn w10(c: &Config, res: &mut Results, child: &[&str]) -> Res<()> {
    let exe = std::env::current_exe()?;
    for kind in &c.kinds {
        let tag = match kind {
            ValueKind::Random => "random",
            ValueKind::Doc => "doc",
        };
        for (name, _) in &c.engines {
            let dir = c.dir.join(format!("{name}-w10-{tag}"));
            let _ = std::fs::remove_dir_all(&dir);
            let out = std::process::Command::new(&exe)
                .args(child)
                // The child finds its engine among all of them.
                .args(["--compare", "sqlite,redb,encrypted"])
                .args(["--w10-child", name, tag, &c.scale.to_string()])
                .arg(&dir)
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("W10 "))
                .ok_or_else(|| {
                    format!(
                        "W10 child for {name} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let w = format!("W10 {tag}");
            res.add(&w, "peak MiB during W3", false, name, v[0] / 1048576.0);
            res.add(
                &w,
                "peak MiB during W4 (warm-up and timed pass)",
                false,
                name,
                v[1] / 1048576.0,
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

/// Run the workloads with command-line `args` (as `cargo bench` passes them; `--bench`
/// selects the real sizes, without it a smoke pass). `child` is the command prefix that makes
/// this program run a W10 child (`[]` for the bench binary, `["bench"]` for `entidb`).
pub fn run(args: Vec<String>, child: &[&str]) -> Res<()> {
    let bench = args.iter().any(|a| a == "--bench");
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let all: Vec<(&'static str, Opener)> = vec![
        ("EntiDB", open_entidb),
        ("SQLite", open_sqlite),
        ("redb", open_redb),
        // `--compare encrypted`: the ratio EntiDB / EntiDB-AES is the cost of encryption.
        ("EntiDB-AES", open_entidb_encrypted),
    ];
    let compare = arg("--compare").unwrap_or_else(|| "sqlite,redb".to_owned());
    let engines: Vec<_> = all
        .into_iter()
        .filter(|(n, _)| {
            let c = compare.to_lowercase();
            match *n {
                "EntiDB" => true,
                "EntiDB-AES" => c.contains("encrypted"),
                other => c.contains(&other.to_lowercase()),
            }
        })
        .collect();
    let kinds = match arg("--value").as_deref() {
        Some("random") => vec![ValueKind::Random],
        Some("doc") => vec![ValueKind::Doc],
        _ => vec![ValueKind::Random, ValueKind::Doc],
    };
    // A directory of its own, inside `--dir` when given: it is removed at the end, and `--dir`
    // may name a directory that holds other things.
    let dir = arg("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("entidb-bench-{}", std::process::id()));
    let number = |flag: &str| -> Result<Option<f64>, String> {
        arg(flag)
            .map(|s| {
                s.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| format!("{flag} {s:?} is not a positive number"))
            })
            .transpose()
    };
    let c = if bench {
        Config {
            scale: number("--scale")?.unwrap_or(1.0),
            runs: number("--runs")?.map_or(3, |r| r.max(1.0) as usize),
            dir,
            kinds,
            engines,
            w9: !args.iter().any(|a| a == "--no-w9"),
            only: arg("--only").map(|o| o.split(',').map(|w| w.trim().to_owned()).collect()),
        }
    } else {
        // `cargo test` runs this binary without `--bench`: a smoke pass on tiny data.
        Config {
            scale: 0.002,
            runs: 1,
            dir,
            kinds,
            engines,
            w9: true,
            only: None,
        }
    };
    if let Some(i) = args.iter().position(|a| a == "--w10-child") {
        let engine = args.get(i + 1).ok_or("--w10-child ENGINE KIND SCALE DIR")?;
        let kind = match args.get(i + 2).map(String::as_str) {
            Some("doc") => ValueKind::Doc,
            _ => ValueKind::Random,
        };
        let scale = args.get(i + 3).and_then(|s| s.parse().ok()).unwrap_or(1.0);
        let dir = PathBuf::from(args.get(i + 4).ok_or("--w10-child needs a directory")?);
        let c = Config { scale, ..c };
        return w10_child(&c, engine, kind, &dir);
    }
    std::fs::create_dir_all(&c.dir)?;
    let mut res = Results::default();
    if c.wants("floor") {
        floor(&c, &mut res)?;
    }
    for run in 0..c.runs {
        for kind in &c.kinds {
            run_once(&c, run, *kind, &mut res)?;
        }
    }
    if c.wants("W10") {
        w10(&c, &mut res, child)?;
    }
    if c.w9 && c.wants("W9") {
        w9(&c, &mut res)?;
    }
    std::fs::remove_dir_all(&c.dir)?;
    let names: Vec<&'static str> = c.engines.iter().map(|(n, _)| *n).collect();
    println!(
        "\nscale {}, {} run(s), medians; ratios are EntiDB / reference (see the `better` column)\n",
        c.scale, c.runs
    );
    res.print(&names);
    if !bench {
        println!(
            "\nsmoke pass ok (run `cargo bench -p entidb-bench --bench workloads` or `entidb bench` for real figures)"
        );
    }
    Ok(())
}
