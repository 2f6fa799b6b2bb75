//! Sync workloads S1-S4 of `shared/bench/WORKLOADS.md`, against the real `entidb` binary on
//! 127.0.0.1 (a child process, so that client and server memory are measured apart).
//!
//! `cargo bench -p entidb-server --bench sync` runs the full sizes; `-- --only S1,S3` picks
//! workloads; `--s2-ops N`, `--s3-clients N`, `--s3-ops N`, `--s4-clients N` scale them, and
//! `--s3-batch N` sets how many writes an S3 client makes between two rounds (10) and
//! `--s3-memtable-mib N` its write buffer (8). `S3p` (not in
//! `WORKLOADS.md`) is S3 below saturation: `--s3p-clients N` live clients each writing
//! `--s3p-rate R` ops/s for `--s3p-secs S` seconds. `--features bench-mimalloc` (before `--`)
//! runs the clients on mimalloc instead of the system allocator. S3 reports two latencies
//! per delivery of a write to another client: push-to-visible (the target's measure: from
//! the writer's `sync_now` call, whose push captures and sends the write, to the end of the
//! receiver's round that applied it) and write-to-visible (from the write itself, so it
//! also counts the writer's own durable commit and, with several writes per round, the
//! writes after it). Under `cargo test`
//! (no `--bench` argument) every workload runs once at a tiny size, as a smoke test.
#![expect(clippy::unwrap_used, reason = "benchmark: a failure aborts the run")]

/// With `--features bench-mimalloc`, the clients (this process: the app that embeds them)
/// allocate through mimalloc instead of the system allocator; the server is the `entidb`
/// binary either way (`docs/benchmarks.md`, "S3: relaxed replicator commits, ...").
#[cfg(feature = "bench-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use entidb::{Database, Options};
use entidb_sync::{HttpTransport, Replicator, SyncConfig};
use serde_json::json;

const KEY: &str = "bench=bench-secret-0123456789abcdef0123456789";

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_entidb"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--keys",
                KEY,
                "--max-page",
                "1000",
            ])
            .arg("--data-dir")
            .arg(dir)
            .env("ENTIDB_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let url = first
            .strip_prefix("entidb serve: listening on ")
            .unwrap()
            .to_owned();
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(&format!("/proc/{}/stat", self.child.id()))
    }

    fn rss_kib(&self) -> u64 {
        proc_status_kib(&format!("/proc/{}/status", self.child.id()), "VmRSS:")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of the process whose `/proc/PID/stat` is `path`, at Linux's
/// usual 100 clock ticks per second.
fn proc_cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The fields after the command name (which may hold spaces); utime and stime are the
    // 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn proc_status_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn token(client: &str, scope: &[&str]) -> String {
    let key = entidb_server::config::Config::parse_keys(KEY)
        .unwrap()
        .remove(0);
    let scope: Vec<String> = scope.iter().map(|s| (*s).to_owned()).collect();
    entidb_server::mint_token(&key, "*", client, &scope, 24 * 3600).unwrap()
}

async fn create_db(url: &str, name: &str) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v2/admin/databases"))
        .bearer_auth(token("admin", &["admin"]))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn local_options() -> Options {
    Options::default()
        .memtable_bytes(8 << 20)
        .cache_bytes(8 << 20)
}

async fn replicator(
    url: &str,
    dir: &Path,
    db: &str,
    name: &str,
    bootstrap: bool,
) -> (Database, Replicator) {
    replicator_with(url, dir, db, name, bootstrap, local_options()).await
}

/// The options of S3's and S3p's 100 clients, which share this process's 2 tokio workers as
/// 100 devices would not: a lone durable commit must not sync on the worker thread
/// (`Options::inline_sync`, whose documentation says to turn it off for an executor that
/// serves much else), or each client's disk wait stops half the other clients' work
/// (`docs/benchmarks.md`, the S3 section of 2026-12-07).
fn shared_runtime_options() -> Options {
    local_options().inline_sync(false)
}

async fn replicator_with(
    url: &str,
    dir: &Path,
    db: &str,
    name: &str,
    bootstrap: bool,
    options: Options,
) -> (Database, Replicator) {
    let local = Database::open_path(dir, options).await.unwrap();
    let mut cfg = SyncConfig::new(db, name, &["items"]);
    cfg.push_batch = 1000;
    cfg.pull_limit = 1000;
    cfg.bootstrap_limit = 1000;
    cfg.initial_bootstrap = bootstrap;
    let t = Arc::new(HttpTransport::new(url, &token(name, &["read", "write"])));
    let r = Replicator::attach(local.clone(), cfg, t).await.unwrap();
    (local, r)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Writes `n` documents locally in transactions of 1000.
async fn write_local(db: &Database, n: u64, tag: &str) {
    let mut i = 0;
    while i < n {
        let mut tx = db.begin().await.unwrap();
        for _ in 0..1000.min(n - i) {
            tx.collection("items")
                .insert(&json!({ "by": tag, "n": i, "body": "0123456789abcdef0123456789abcdef0123456789abcdef" }))
                .unwrap();
            i += 1;
        }
        tx.commit().await.unwrap();
    }
}

async fn s1(ops: u64) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    create_db(&server.url, "s1").await;
    let (db, r) = replicator(&server.url, &dir.path().join("c"), "s1", "loader", true).await;
    r.sync_now().await.unwrap();
    write_local(&db, ops, "s1").await;
    let t = Instant::now();
    let captured = r.capture().await.unwrap();
    let capture_secs = t.elapsed().as_secs_f64();
    assert_eq!(captured, ops);
    let server_stat = format!("/proc/{}/stat", server.child.id());
    let (client_cpu, server_cpu) = (
        proc_cpu_secs("/proc/self/stat"),
        proc_cpu_secs(&server_stat),
    );
    let t = Instant::now();
    let (acked, _) = r.push().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(acked, ops);
    // CPU per op moves less with the machine's noise than ops/s does: compare builds by it.
    let client_us = (proc_cpu_secs("/proc/self/stat") - client_cpu) * 1e6 / ops as f64;
    let server_us = (proc_cpu_secs(&server_stat) - server_cpu) * 1e6 / ops as f64;
    println!(
        "S1 push {ops} ops in batches of 1000: {:.2} s, {:.0} ops/s (target >= 50,000), CPU per op: client {client_us:.1} us, server {server_us:.1} us; capturing them into the outbox first took {:.2} s ({:.0} ops/s)",
        secs,
        ops as f64 / secs,
        capture_secs,
        ops as f64 / capture_secs
    );
}

/// S2 in a child process: `--s2-child URL OPS MODE` prints `elapsed_secs peak_kib`.
async fn s2_child(url: &str, ops: u64, bootstrap: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (db, r) = replicator(url, &dir.path().join("c"), "s2", "fresh", bootstrap).await;
    let t = Instant::now();
    let report = r.sync_now().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(db.collection("items").count().await.unwrap(), ops);
    assert_eq!(report.bootstrapped, bootstrap);
    if std::env::var_os("ENTIDB_BENCH_STATS").is_some() {
        eprintln!("{:#?}", db.stats());
    }
    println!(
        "{secs} {} {}",
        proc_status_kib("/proc/self/status", "VmHWM:"),
        proc_cpu_secs("/proc/self/stat")
    );
}

async fn s2(ops: u64) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    create_db(&server.url, "s2").await;
    let (db, r) = replicator(
        &server.url,
        &dir.path().join("loader"),
        "s2",
        "loader",
        true,
    )
    .await;
    r.sync_now().await.unwrap();
    let mut left = ops;
    while left > 0 {
        let n = left.min(50_000);
        write_local(&db, n, "s2").await;
        r.push().await.unwrap();
        left -= n;
    }
    for (mode, bootstrap) in [
        ("pull of the whole oplog", false),
        ("bootstrap (snapshot pages)", true),
    ] {
        // `ENTIDB_BENCH_S2_WRAP="perf record -g -o s2-{mode}.perf"` runs the child under a
        // profiler (`{mode}` becomes `pull` or `bootstrap`).
        let wrap = std::env::var("ENTIDB_BENCH_S2_WRAP")
            .unwrap_or_default()
            .replace("{mode}", if bootstrap { "bootstrap" } else { "pull" });
        let mut words = wrap
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        words.push(std::env::current_exe().unwrap().display().to_string());
        let cpu_before = server.cpu_secs();
        let out = Command::new(&words[0])
            .args(&words[1..])
            .args([
                "--s2-child",
                &server.url,
                &ops.to_string(),
                if bootstrap { "bootstrap" } else { "pull" },
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut it = text.split_whitespace();
        let secs: f64 = it.next().unwrap().parse().unwrap();
        let kib: u64 = it.next().unwrap().parse().unwrap();
        let client_cpu: f64 = it.next().unwrap().parse().unwrap();
        println!(
            "S2 fresh client, {mode}, {ops} ops: {secs:.2} s, {:.0} ops/s (target >= 200,000), client peak RSS {} MiB, CPU: client {client_cpu:.2} s, server {:.2} s",
            ops as f64 / secs,
            kib / 1024,
            server.cpu_secs() - cpu_before
        );
    }
}

/// A CBOR head at `doc[*pos..]`: (major type, argument); moves `pos` past it.
fn head(doc: &[u8], pos: &mut usize) -> Option<(u8, u64)> {
    let first = *doc.get(*pos)?;
    let (major, info) = (first >> 5, first & 31);
    let extra = match info {
        0..=23 => 0,
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return None,
    };
    let bytes = doc.get(*pos + 1..*pos + 1 + extra)?;
    *pos += 1 + extra;
    let arg = if extra == 0 {
        u64::from(info)
    } else {
        bytes.iter().fold(0, |a, &b| a << 8 | u64::from(b))
    };
    Some((major, arg))
}

/// What `record` reads of a benchmark document (a map with text keys): who wrote it, when
/// they stamped it, and its number among their writes. Only those values are read; the
/// others are skipped.
fn stamp(doc: &[u8]) -> Option<(&str, Option<u64>, Option<u64>)> {
    let mut pos = 0;
    let (5, entries) = head(doc, &mut pos)? else {
        return None;
    };
    let (mut by, mut t, mut n) = (None, None, None);
    for _ in 0..entries {
        let (3, len) = head(doc, &mut pos)? else {
            return None;
        };
        let key = doc.get(pos..pos + len as usize)?;
        pos += len as usize;
        match key {
            b"by" => {
                let (3, len) = head(doc, &mut pos)? else {
                    return None;
                };
                by = std::str::from_utf8(doc.get(pos..pos + len as usize)?).ok();
                pos += len as usize;
            }
            b"t" | b"n" => {
                let (0, v) = head(doc, &mut pos)? else {
                    return None;
                };
                if key == b"t" {
                    t = Some(v);
                } else {
                    n = Some(v);
                }
            }
            _ => pos += entidb::cbor::item_len(doc.get(pos..)?).ok()?,
        }
    }
    Some((by?, t, n))
}

/// A client's reading position in its own change feed, and the other clients' writes it
/// has passed there (S3's inserts each create an entity, and a cursor never goes back, so
/// each arrives once; the client's own documents, which a push answer other than `applied`
/// writes back under the replicator's origin, are not counted).
struct Seen {
    seq: u64,
    received: u64,
}

impl Seen {
    fn at(db: &Database) -> Seen {
        Seen {
            seq: db.last_sequence(),
            received: 0,
        }
    }
}

/// Write-to-visible latencies: (the writer's stamp, microseconds until another client had
/// applied the write), both in microseconds.
type Latencies = Mutex<Vec<(u64, u64)>>;

/// When each write was handed to a push (S3): per writer `c{i}`, by the write's number `n`,
/// the time its writer called `sync_now` (whose push captures and sends it), in
/// microseconds.
type PushTimes = Vec<Mutex<Vec<u64>>>;

/// Reads client `me`'s local change feed after `seen` and records, for every pulled put of
/// another client's write, the time since its writer stamped it (and, with `pushes`, the
/// time since its push started, in `pushed`). Returns how many such puts it passed.
async fn record(
    db: &Database,
    me: &str,
    seen: &mut Seen,
    latencies: &Latencies,
    pushes: Option<(&PushTimes, &Latencies)>,
) -> u64 {
    let before = seen.received;
    loop {
        let page = db.changes_page(seen.seq, 1000).await.unwrap();
        if page.is_empty() {
            return seen.received - before;
        }
        let now = now_micros();
        let (mut l, mut p) = (Vec::new(), Vec::new());
        for b in &page {
            seen.seq = b.seq;
            if b.origin.as_deref() != Some(entidb_sync::ORIGIN) {
                continue;
            }
            for ch in &b.changes {
                if let (entidb::ChangeOp::Put(bytes), "items") = (&ch.op, ch.collection.as_str()) {
                    let (by, t, n) = stamp(bytes.as_bytes()).expect("a benchmark document");
                    if by == me {
                        continue;
                    }
                    seen.received += 1;
                    if let Some(t) = t {
                        l.push((t, now.saturating_sub(t)));
                        // The push started before any other client could see the write.
                        if let (Some((times, _)), Some(n)) = (pushes, n) {
                            let writer = by.strip_prefix('c').and_then(|i| i.parse().ok());
                            let started = writer
                                .and_then(|i: usize| times.get(i))
                                .and_then(|w| w.lock().unwrap().get(n as usize).copied());
                            let started = started.expect("the write's push time was recorded");
                            p.push((t, now.saturating_sub(started)));
                        }
                    }
                }
            }
        }
        latencies.lock().unwrap().extend(l);
        if let Some((_, pushed)) = pushes {
            pushed.lock().unwrap().extend(p);
        }
    }
}

/// The latencies alone, sorted.
fn sorted_latencies(l: &Latencies) -> Vec<u64> {
    let mut v: Vec<u64> = l.lock().unwrap().iter().map(|&(_, d)| d).collect();
    v.sort_unstable();
    v
}

/// Latencies by when the write was made, in tenths of the span of write stamps: deliveries,
/// p50, p99 and max per tenth (a stall shows as tenths with fewer deliveries and a long
/// tail).
fn by_tenth(l: &Latencies) -> String {
    let pairs = l.lock().unwrap().clone();
    let (Some(first), Some(last)) = (
        pairs.iter().map(|p| p.0).min(),
        pairs.iter().map(|p| p.0).max(),
    ) else {
        return String::new();
    };
    let span = (last - first).max(1);
    let mut tenths: Vec<Vec<u64>> = vec![Vec::new(); 10];
    for (t, d) in pairs {
        tenths[(((t - first) * 10 / span) as usize).min(9)].push(d);
    }
    tenths
        .iter_mut()
        .enumerate()
        .map(|(i, v)| {
            v.sort_unstable();
            format!(
                "{}: {} deliveries, p50 {:.0} / p99 {:.0} / max {:.0} ms",
                i + 1,
                v.len(),
                percentile(v, 0.5) as f64 / 1000.0,
                percentile(v, 0.99) as f64 / 1000.0,
                v.last().copied().unwrap_or(0) as f64 / 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn s3(clients: usize, ops: u64, batch: u64, memtable_mib: u64) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    create_db(&server.url, "s3").await;
    let total = clients as u64 * ops;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let push_times: Arc<PushTimes> = Arc::new((0..clients).map(|_| Mutex::default()).collect());
    // How long each writing round (`sync_now` call) took, in microseconds, and each
    // client's writing loop (write, round, feed read) on average.
    let rounds: Arc<Mutex<Vec<u64>>> = Arc::default();
    let loops: Arc<Mutex<Vec<f64>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = server.url.clone();
        let path = dir.path().join(format!("c{c}"));
        let (latencies, pushed, push_times, rounds, loops) = (
            latencies.clone(),
            pushed.clone(),
            push_times.clone(),
            rounds.clone(),
            loops.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let name = format!("c{c}");
            let options = shared_runtime_options().memtable_bytes(memtable_mib << 20);
            let (db, r) = replicator_with(&url, &path, "s3", &name, true, options).await;
            // The other clients' writes this one holds are counted from its change feed as
            // `record` passes them (a `count()` per round, a full scan, cost the clients a
            // fifth of their CPU at 50 clients).
            let mut seen = Seen::at(&db);
            let mut written = 0;
            let (writing, mut n_rounds) = (Instant::now(), 0u32);
            while written < ops {
                for _ in 0..batch.min(ops - written) {
                    db.collection("items")
                        .insert(&json!({ "by": name, "n": written, "t": now_micros() }))
                        .await
                        .unwrap();
                    written += 1;
                }
                // The round's push captures every write made so far.
                let push_start = now_micros();
                push_times[c]
                    .lock()
                    .unwrap()
                    .resize(written as usize, push_start);
                r.sync_now().await.unwrap();
                rounds.lock().unwrap().push(now_micros() - push_start);
                n_rounds += 1;
                let pushes = Some((&*push_times, &*pushed));
                record(&db, &name, &mut seen, &latencies, pushes).await;
            }
            let per_loop = writing.elapsed().as_secs_f64() * 1000.0 / f64::from(n_rounds.max(1));
            loops.lock().unwrap().push(per_loop);
            let mut last_news = Instant::now();
            while seen.received < total - ops {
                r.sync_wait(Duration::from_millis(500)).await.unwrap();
                let pushes = Some((&*push_times, &*pushed));
                if record(&db, &name, &mut seen, &latencies, pushes).await > 0 {
                    last_news = Instant::now();
                }
                assert!(
                    last_news.elapsed() < Duration::from_secs(120),
                    "{name} received nothing for 120 s, {} of {} other writes",
                    seen.received,
                    total - ops
                );
            }
            db
        }));
    }
    let mut replicas = Vec::new();
    for t in tasks {
        replicas.push(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    // Every replica holds every write (checked after the clock stopped).
    for (c, db) in replicas.iter().enumerate() {
        assert_eq!(
            db.collection("items").count().await.unwrap(),
            total,
            "client c{c} after converging"
        );
    }
    // What the clients' engines did, summed: the maintenance work beside the rounds.
    let (mut wal, mut seg, mut flushes, mut compactions, mut commits) = (0, 0, 0, 0, 0);
    for db in &replicas {
        let s = db.stats();
        wal += s.wal_bytes;
        seg += s.segment_bytes_written;
        flushes += s.flushes;
        compactions += s.compactions;
        commits += s.commits;
    }
    let l = sorted_latencies(&latencies);
    println!(
        "S3 clients' engines, summed: {commits} commits, WAL {:.0} MiB, {flushes} flushes, {compactions} compactions, segments written {:.0} MiB",
        wal as f64 / 1048576.0,
        seg as f64 / 1048576.0
    );
    let p = sorted_latencies(&pushed);
    assert_eq!(p.len(), l.len(), "every delivery has its push time");
    println!(
        "S3 {clients} clients x {ops} ops, {batch} writes per round, {memtable_mib} MiB memtables, all converged in {secs:.1} s ({:.0} ops/s written); push-to-visible p50 {:.1} ms, p99 {:.1} ms (target p99 < 100 ms); write-to-visible p50 {:.1} ms, p99 {:.1} ms; over {} deliveries",
        total as f64 / secs,
        percentile(&p, 0.5) as f64 / 1000.0,
        percentile(&p, 0.99) as f64 / 1000.0,
        percentile(&l, 0.5) as f64 / 1000.0,
        percentile(&l, 0.99) as f64 / 1000.0,
        l.len()
    );
    let mut r = std::mem::take(&mut *rounds.lock().unwrap());
    r.sort_unstable();
    let ms = |p: f64| percentile(&r, p) as f64 / 1000.0;
    let loops = loops.lock().unwrap();
    println!(
        "S3 writing rounds (a client's sync_now, {} of them): p10 {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms; a client's whole loop (write, round, feed read) {:.1} ms on average",
        r.len(),
        ms(0.1),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        loops.iter().sum::<f64>() / loops.len().max(1) as f64
    );
    println!(
        "S3 by tenth of the run (write time):\n  {}",
        by_tenth(&latencies)
    );
}

/// S3 below saturation (not a workload of `WORKLOADS.md`): `clients` clients in live mode
/// (`sync_wait` loops), each writing `rate` ops per second for `secs` seconds, then until all
/// converge. S3 itself pushes as fast as the clients can, so its latency is the queue of a
/// saturated machine; this gives the write-to-visible latency at a load the machine carries:
/// from the time a write was due to the end of the live round of another client that applied
/// it.
async fn s3_paced(clients: usize, rate: f64, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    create_db(&server.url, "s3p").await;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for c in 0..clients {
        let name = format!("p{c}");
        let (db, r) = replicator_with(
            &server.url,
            &dir.path().join(&name),
            "s3p",
            &name,
            true,
            shared_runtime_options(),
        )
        .await;
        r.sync_now().await.unwrap();
        nodes.push((name, db, r));
    }
    let mut live = Vec::new();
    // Per client: the other clients' writes it holds (see `s3`).
    let counters: Vec<Arc<std::sync::atomic::AtomicU64>> =
        (0..clients).map(|_| Arc::default()).collect();
    for ((name, db, r), received) in nodes.iter().zip(&counters) {
        let (name, db, r, latencies, received) = (
            name.clone(),
            db.clone(),
            r.clone(),
            latencies.clone(),
            received.clone(),
        );
        live.push(tokio::spawn(async move {
            let mut seen = Seen::at(&db);
            loop {
                r.sync_wait(Duration::from_secs(20)).await.unwrap();
                let n = record(&db, &name, &mut seen, &latencies, None).await;
                received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    assert!(rate > 0.0, "--s3p-rate must be above 0");
    let period = Duration::from_secs_f64(1.0 / rate);
    let per_client = (secs as f64 * rate).round() as u64;
    let started_micros = now_micros();
    let mut writers = Vec::new();
    for (c, (name, db, _)) in nodes.iter().enumerate() {
        let (db, name) = (db.clone(), name.clone());
        writers.push(tokio::spawn(async move {
            // Clients start spread over one period, then each writes on its own schedule.
            // A write is stamped with the time it was due, so that a writer the machine
            // delayed counts that delay too.
            let offset = period.mul_f64(c as f64 / clients as f64);
            for n in 0..per_client {
                let due = offset + period.mul_f64(n as f64);
                let due_micros = started_micros + due.as_micros() as u64;
                let now = now_micros();
                if due_micros > now {
                    tokio::time::sleep(Duration::from_micros(due_micros - now)).await;
                }
                db.collection("items")
                    .insert(&json!({ "by": name, "n": n, "t": due_micros }))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let last_write = Instant::now();
    let total = per_client * clients as u64;
    for (i, (name, _, _)) in nodes.iter().enumerate() {
        while counters[i].load(std::sync::atomic::Ordering::Relaxed) < total - per_client {
            assert!(!live[i].is_finished(), "{name}'s live loop stopped");
            assert!(
                last_write.elapsed() < Duration::from_secs(120),
                "{name} did not converge within 120 s of the last write"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let converged = last_write.elapsed().as_secs_f64();
    for l in live {
        l.abort();
        let _ = l.await;
    }
    // Every replica holds every write (checked after the clock stopped).
    for (name, db, _) in &nodes {
        assert_eq!(
            db.collection("items").count().await.unwrap(),
            total,
            "{name} after converging"
        );
    }
    let l = sorted_latencies(&latencies);
    println!(
        "S3 paced (not a WORKLOADS.md workload): {clients} live clients x {rate} ops/s for {secs} s ({total} ops), all converged {converged:.2} s after the last write; due-to-applied p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} deliveries",
        percentile(&l, 0.5) as f64 / 1000.0,
        percentile(&l, 0.99) as f64 / 1000.0,
        l.last().copied().unwrap_or(0) as f64 / 1000.0,
        l.len()
    );
}

async fn s4(clients: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    create_db(&server.url, "s4").await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let watcher = token("watcher", &["read"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(clients);
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<Instant>(clients);
    for _ in 0..clients {
        let http = http.clone();
        let url = format!("{}/v2/db/s4/events?since=0", server.url);
        let watcher = watcher.clone();
        let ready_tx = ready_tx.clone();
        let got_tx = got_tx.clone();
        tokio::spawn(async move {
            let mut resp = http.get(url).bearer_auth(watcher).send().await.unwrap();
            if resp.status() != 200 {
                eprintln!("S4: event stream refused: {}", resp.status());
                std::process::exit(1);
            }
            ready_tx.send(()).await.unwrap();
            let mut seen = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if seen.contains("event: changes") {
                    let _ = got_tx.send(Instant::now()).await;
                    break;
                }
            }
            // Keep the connection open until the benchmark ends.
            std::future::pending::<()>().await;
        });
    }
    for _ in 0..clients {
        ready_rx.recv().await.unwrap();
    }
    // A first change so that every stream starts after cursor 1.
    let (db, r) = replicator(&server.url, &dir.path().join("w"), "s4", "writer", false).await;
    db.collection("items")
        .insert(&json!({"warm": 1}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_kib();
    let t = Instant::now();
    r.sync_now().await.unwrap();
    let mut last = t;
    for _ in 0..clients {
        last = got_rx.recv().await.unwrap();
    }
    println!(
        "S4 {clients} idle clients on server-sent events: server RSS {} MiB -> {} MiB, {:.1} KiB per client (target < 64 KiB); one change reached all in {:.1} ms",
        before / 1024,
        idle / 1024,
        idle.saturating_sub(before) as f64 / clients as f64,
        (last - t).as_secs_f64() * 1000.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--s2-child") {
        let ops: u64 = args[i + 2].parse().unwrap();
        rt.block_on(s2_child(&args[i + 1], ops, args[i + 3] == "bootstrap"));
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let arg = |name: &str, default: u64, smoke: u64| -> u64 {
        if !full {
            return smoke;
        }
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let run = |w: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == w));
    rt.block_on(async {
        if run("S1") {
            s1(arg("--s1-ops", 100_000, 2_000)).await;
        }
        if run("S2") {
            s2(arg("--s2-ops", 1_000_000, 2_000)).await;
        }
        if run("S3") {
            s3(
                arg("--s3-clients", 100, 3) as usize,
                arg("--s3-ops", 1_000, 20),
                arg("--s3-batch", 10, 10).max(1),
                arg("--s3-memtable-mib", 8, 8).max(1),
            )
            .await;
        }
        if run("S3p") {
            let rate = args
                .iter()
                .position(|a| a == "--s3p-rate")
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1.0);
            s3_paced(
                arg("--s3p-clients", 100, 3) as usize,
                rate,
                arg("--s3p-secs", 20, 2),
            )
            .await;
        }
        if run("S4") {
            s4(arg("--s4-clients", 1_000, 10) as usize).await;
        }
    });
}
