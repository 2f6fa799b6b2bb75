//! The operator commands of the `entidb` binary: inspect, verify, compact, backup, restore,
//! dump and load. Each returns an [`Outcome`] that `main` turns into an exit code:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done; for `verify`, nothing wrong was found |
//! | 1 | `verify` found problems (damaged files, index differences, a bad backup) |
//! | 2 | bad input: a missing path, an existing restore target without `--force`, a malformed dump line |
//! | 3 | the database is open in another process and the command writes (compact, load, restore, rekey): stop it first |
//!
//! An encrypted database is opened with the passphrase in `ENTIDB_PASSPHRASE` (a wrong one
//! exits 2); `load` and `restore` create an encrypted database when it is set.
//! | 4 | any other failure (I/O, corruption found while working) |
//!
//! # JSON mapping of `dump` and `load`
//!
//! One entity per line: `{"collection": C, "doc": D, "id": "uuid"}`. Documents map CBOR to
//! JSON as follows (and back, exactly, so `dump | load | dump` is byte-identical):
//!
//! | CBOR | JSON |
//! |------|------|
//! | null, true/false, text, array | the same |
//! | integer in the i64 or u64 range | a number |
//! | integer below -2^63 | `{"$int": "-18446744073709551616"}` |
//! | finite float | a number with a fraction or exponent (`1.0`, never `1`) |
//! | NaN, +-infinity | `{"$float": "NaN"}`, `{"$float": "Infinity"}`, `{"$float": "-Infinity"}` |
//! | byte string | `{"$bytes": "<base64, standard alphabet, padded>"}` |
//! | map with text keys none of which starts with `$` | an object |
//! | any other map | `{"$map": [[key, value], ...]}` |
//! | tag | `{"$tag": n, "value": v}` |
//! | undefined, other simple values | `{"$undefined": true}`, `{"$simple": n}` |

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `println!` that does not panic when standard output has closed (`entidb inspect | head
/// -1`): what cannot be written is dropped, and the command ends with its own exit code
/// instead of a panic (exit 101).
macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

use base64::Engine as _;
use entidb::cbor::{Int, Simple, Value};
use entidb::{Database, EntityId, Options, ReadSource, ScanOptions, WriteSink};
use indicatif::{ProgressBar, ProgressBarIter, ProgressStyle};
use serde_json::{Map, Number, Value as Json, json};

/// How a command ended.
#[derive(Debug)]
pub enum Outcome {
    /// Success.
    Ok,
    /// `verify` found problems (already printed).
    Problems,
    /// Bad input.
    Usage(String),
    /// The database is held by another process.
    Locked(String),
    /// Anything else.
    Failed(String),
}

impl Outcome {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Problems => 1,
            Outcome::Usage(_) => 2,
            Outcome::Locked(_) => 3,
            Outcome::Failed(_) => 4,
        }
    }
}

fn failed(what: &str) -> impl Fn(entidb::Error) -> Outcome + '_ {
    move |e| match e {
        entidb::Error::Locked { .. } => Outcome::Locked(format!(
            "{what}: the database is open in another process (is `entidb serve` running on it?); stop it first"
        )),
        entidb::Error::InvalidBackup(d) => Outcome::Usage(format!("{what}: invalid backup: {d}")),
        entidb::Error::WrongKey => Outcome::Usage(format!(
            "{what}: wrong passphrase (set {PASSPHRASE_ENV} to the database's passphrase)"
        )),
        // With a passphrase given, the database is the plaintext one; without, encrypted.
        entidb::Error::Encryption(d) if passphrase(PASSPHRASE_ENV).is_some() => Outcome::Usage(
            format!("{what}: {d} (this database is not encrypted: unset {PASSPHRASE_ENV})"),
        ),
        entidb::Error::Encryption(d) => Outcome::Usage(format!(
            "{what}: {d} (an encrypted database needs {PASSPHRASE_ENV})"
        )),
        e => Outcome::Failed(format!("{what}: {e}")),
    }
}

/// The environment variable holding the passphrase of an encrypted database.
pub const PASSPHRASE_ENV: &str = "ENTIDB_PASSPHRASE";
/// The new passphrase for `entidb rekey`.
pub const NEW_PASSPHRASE_ENV: &str = "ENTIDB_NEW_PASSPHRASE";

fn passphrase(var: &str) -> Option<entidb::io::KeySource> {
    std::env::var(var)
        .ok()
        .filter(|p| !p.is_empty())
        .map(entidb::io::KeySource::Passphrase)
}

/// Open (or create) a database, encrypted when `ENTIDB_PASSPHRASE` is set.
async fn open_db(path: &Path, options: Options) -> entidb::Result<Database> {
    match passphrase(PASSPHRASE_ENV) {
        Some(key) => Database::open_encrypted(path, key, options).await,
        None => Database::open_path(path, options).await,
    }
}

/// `Some(Usage)` when `path` holds no database: no MANIFEST, and no log or segment file. A
/// directory with log or segment files and no MANIFEST is a damaged database, which the open
/// reports as such (`verify` exits 1 on it, not 2).
fn no_database(path: &Path) -> Option<Outcome> {
    if path.join("MANIFEST").is_file() {
        return None;
    }
    let data_files = std::fs::read_dir(path).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| entidb::is_data_file_name(&e.file_name().to_string_lossy()))
    });
    (!data_files).then(|| {
        Outcome::Usage(format!(
            "no database at {} (no MANIFEST file)",
            path.display()
        ))
    })
}

async fn open_existing(path: &Path) -> Result<Database, Outcome> {
    if let Some(o) = no_database(path) {
        return Err(o);
    }
    open_db(path, Options::default().create_if_missing(false))
        .await
        .map_err(failed(&path.display().to_string()))
}

/// For commands that only read (`inspect`, `verify`, `dump`, `backup`): a read-only snapshot
/// of the database (the state committed when this opens), whether or not another process
/// has it open. It writes nothing: a read-write open would take the lock, cut a torn log
/// tail, remove orphan files and checkpoint on close, changing what `verify` checks (and
/// failing on read-only media). A compaction running elsewhere can remove a file between
/// the manifest and the open, so it retries.
async fn open_for_reading(path: &Path) -> Result<Database, Outcome> {
    if let Some(o) = no_database(path) {
        return Err(o);
    }
    // Whether another process has it open (its lock held): said, since the snapshot then
    // misses what that process commits meanwhile. Tested without creating the lock file.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .open(path.join("LOCK"))
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
    let mut last = None;
    for _ in 0..5 {
        let o = Options::default().create_if_missing(false).read_only(true);
        match open_db(path, o).await {
            Ok(db) => {
                if held {
                    eprintln!(
                        "{}: open in another process; reading a snapshot of it",
                        path.display()
                    );
                }
                return Ok(db);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => failed(&path.display().to_string())(e),
        None => Outcome::Failed("read-only open failed".into()),
    })
}

/// `entidb rekey PATH`: re-encrypt with `ENTIDB_NEW_PASSPHRASE` (the current one in
/// `ENTIDB_PASSPHRASE`).
pub async fn rekey(path: &Path) -> Outcome {
    let (Some(old), Some(new)) = (passphrase(PASSPHRASE_ENV), passphrase(NEW_PASSPHRASE_ENV))
    else {
        return Outcome::Usage(format!(
            "set {PASSPHRASE_ENV} (the current passphrase) and {NEW_PASSPHRASE_ENV} (the new one)"
        ));
    };
    if !path.join("MANIFEST").is_file() {
        return Outcome::Usage(format!("no database at {}", path.display()));
    }
    match Database::rekey(path, old, new).await {
        Ok(()) => {
            println!("re-encrypted {} with the new passphrase", path.display());
            Outcome::Ok
        }
        Err(e) => failed("rekey")(e),
    }
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {pos} {elapsed}") {
        pb.set_style(style);
    }
    pb.set_message(msg.to_owned());
    pb
}

fn print_json(v: &Json) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `entidb inspect PATH`
pub async fn inspect(path: &Path, as_json: bool) -> Outcome {
    let db = match open_for_reading(path).await {
        Ok(db) => db,
        Err(o) => return o,
    };
    let snap = db.snapshot();
    let stats = db.stats();
    let mut colls = Vec::new();
    for name in snap.collections() {
        let c = snap.collection(&name);
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut opts = ScanOptions::limit(1024);
        loop {
            let page = match c.scan(opts).await {
                Ok(p) => p,
                Err(e) => return failed("inspect")(e),
            };
            for d in &page.items {
                count += 1;
                bytes += d.bytes().len() as u64;
            }
            match page.next {
                Some(n) => opts = opts.after(n),
                None => break,
            }
        }
        colls.push(json!({
            "name": name,
            "entities": count,
            "document_bytes": bytes,
            "indexes": c.indexes(),
        }));
    }
    let report = json!({
        "path": path.display().to_string(),
        "sequence": stats.last_sequence,
        "segments": stats.segments,
        "segment_bytes": stats.segment_bytes,
        "oldest_feed_sequence": db.oldest_retained_sequence(),
        "feed_holds": db.feed_holds(),
        "collections": colls,
    });
    if as_json {
        print_json(&report);
    } else {
        println!("database {}", path.display());
        println!("  sequence {}", stats.last_sequence);
        println!(
            "  segments {} ({} bytes); change feed from sequence {}",
            stats.segments,
            stats.segment_bytes,
            db.oldest_retained_sequence()
        );
        // A hold keeps the feed from growing shorter: one left by a consumer that is gone
        // keeps every later record (release it with `Database::release_feed_hold`).
        for (name, position) in db.feed_holds() {
            println!("  feed hold {name}: keeps records after {position}");
        }
        for c in &colls {
            println!(
                "  collection {}: {} entities, {} bytes of documents",
                c["name"].as_str().unwrap_or("?"),
                c["entities"],
                c["document_bytes"]
            );
            for i in c["indexes"].as_array().into_iter().flatten() {
                println!(
                    "    index {} ({}{}) on {}",
                    i["name"].as_str().unwrap_or("?"),
                    i["kind"].as_str().unwrap_or("?"),
                    if i["unique"].as_bool() == Some(true) {
                        ", unique"
                    } else {
                        ""
                    },
                    i["fields"]
                        .as_array()
                        .map(|f| f
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
            }
        }
    }
    close(db).await
}

async fn close(db: Database) -> Outcome {
    match db.close().await {
        Ok(()) => Outcome::Ok,
        Err(e) => failed("closing")(e),
    }
}

/// `entidb verify PATH` (a database directory, or a backup file).
pub async fn verify(path: &Path, as_json: bool) -> Outcome {
    if path.is_file() {
        let (mut src, _pb) = match open_backup(path) {
            Ok(s) => s,
            Err(o) => return o,
        };
        return match entidb::verify_backup(&mut src).await {
            Ok(s) => {
                if as_json {
                    print_json(&json!({"ok": true, "backup": s}));
                } else {
                    println!(
                        "backup {}: ok (sequence {}, {} collections, {} entities, {} indexes, {} bytes)",
                        path.display(),
                        s.sequence,
                        s.collections,
                        s.entities,
                        s.indexes,
                        s.bytes
                    );
                }
                Outcome::Ok
            }
            Err(entidb::Error::InvalidBackup(d)) => {
                if as_json {
                    print_json(&json!({"ok": false, "error": d}));
                } else {
                    println!("backup {}: DAMAGED: {d}", path.display());
                }
                Outcome::Problems
            }
            Err(e) => failed("verify")(e),
        };
    }
    // Opening checks the manifest and every WAL record since the last checkpoint.
    let db = match open_for_reading(path).await {
        Ok(db) => db,
        Err(Outcome::Failed(msg)) => {
            if as_json {
                print_json(&json!({"ok": false, "error": msg}));
            } else {
                println!(
                    "database {}: DAMAGED: the database does not open: {msg}",
                    path.display()
                );
            }
            return Outcome::Problems;
        }
        Err(o) => return o,
    };
    let segments = db.verify().await;
    let indexes = db.verify_indexes().await;
    let ok = segments.is_ok() && indexes.as_ref().is_ok_and(|r| r.is_ok());
    if as_json {
        print_json(&json!({
            "ok": ok,
            "segment_entries": segments.as_ref().ok(),
            "segment_error": segments.as_ref().err().map(ToString::to_string),
            "indexes": indexes.as_ref().ok(),
            "index_error": indexes.as_ref().err().map(ToString::to_string),
        }));
    } else {
        println!("database {}", path.display());
        println!("  manifest and WAL: ok (read at open)");
        match &segments {
            Ok(n) => println!("  segments: ok ({n} entries)"),
            Err(e) => println!("  segments: DAMAGED: {e}"),
        }
        match &indexes {
            Ok(r) => {
                for line in r.to_string().lines() {
                    println!("  {line}");
                }
            }
            Err(e) => println!("  indexes: DAMAGED: {e}"),
        }
    }
    let closed = close(db).await;
    if !ok {
        return Outcome::Problems;
    }
    closed
}

/// `entidb compact PATH`
pub async fn compact(path: &Path) -> Outcome {
    let db = match open_existing(path).await {
        Ok(db) => db,
        Err(o) => return o,
    };
    let before = db.stats();
    let pb = spinner("compacting");
    let r = db.compact().await;
    pb.finish_and_clear();
    if let Err(e) = r {
        return failed("compact")(e);
    }
    let after = db.stats();
    println!(
        "compacted {}: {} segments ({} bytes) -> {} segments ({} bytes)",
        path.display(),
        before.segments,
        before.segment_bytes,
        after.segments,
        after.segment_bytes
    );
    close(db).await
}

/// Releases change-feed hold `name` of the database in `path` (see `inspect`). Exit 1 if
/// there is no such hold.
pub async fn release_hold(path: &Path, name: &str) -> Outcome {
    let db = match open_existing(path).await {
        Ok(db) => db,
        Err(o) => return o,
    };
    match db.release_feed_hold(name).await {
        Ok(true) => println!(
            "released feed hold {name} of {}; the change feed now retains from sequence {}",
            path.display(),
            db.oldest_retained_sequence()
        ),
        Ok(false) => {
            let held: Vec<String> = db.feed_holds().into_keys().collect();
            println!(
                "{} has no feed hold {name:?} (holds: {})",
                path.display(),
                if held.is_empty() {
                    "none".to_owned()
                } else {
                    held.join(", ")
                }
            );
            return match close(db).await {
                Outcome::Ok => Outcome::Problems,
                other => other,
            };
        }
        Err(e) => return failed("release-hold")(e),
    }
    close(db).await
}

/// A backup file to read, with a progress bar over its bytes (returned to finish it).
type BackupFile = ReadSource<ProgressBarIter<std::fs::File>>;
fn open_backup(path: &Path) -> Result<(BackupFile, ProgressBar), Outcome> {
    let file = std::fs::File::open(path)
        .map_err(|e| Outcome::Usage(format!("cannot open {}: {e}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {elapsed}") {
        pb.set_style(style);
    }
    Ok((ReadSource::new(pb.clone().wrap_read(file)), pb))
}

/// `entidb backup PATH FILE`: a consistent snapshot, written to FILE.tmp, synced, then
/// renamed to FILE.
pub async fn backup(path: &Path, file: &Path) -> Outcome {
    let db = match open_for_reading(path).await {
        Ok(db) => db,
        Err(o) => return o,
    };
    let tmp = tmp_name(file, "tmp");
    let out = match std::fs::File::create(&tmp) {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("cannot create {}: {e}", tmp.display())),
    };
    // A second handle syncs the file once the buffered writer is flushed.
    let sync = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("cannot use {}: {e}", tmp.display())),
    };
    let pb = spinner("bytes written");
    let mut sink = WriteSink::new(BufWriter::with_capacity(1 << 20, pb.wrap_write(out)));
    let r = db.backup(&mut sink).await;
    pb.finish_and_clear();
    // Only a backup that completed replaces FILE (a previous good backup there must survive
    // a failed one, which is when it is needed).
    let finish = || -> std::io::Result<()> {
        sink.into_inner().into_inner().map_err(|e| e.into_error())?;
        sync.sync_all()?;
        std::fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    let finished = match &r {
        Ok(_) => finish(),
        Err(_) => Ok(()),
    };
    match (r, finished) {
        (Ok(s), Ok(())) => {
            println!(
                "backup of {} at sequence {}: {} collections, {} entities, {} indexes, {} bytes -> {}",
                path.display(),
                s.sequence,
                s.collections,
                s.entities,
                s.indexes,
                s.bytes,
                file.display()
            );
            close(db).await
        }
        (Err(e), _) => {
            let _ = std::fs::remove_file(&tmp);
            failed("backup")(e)
        }
        (_, Err(e)) => {
            let _ = std::fs::remove_file(&tmp);
            Outcome::Failed(format!("backup: writing {}: {e}", file.display()))
        }
    }
}

fn tmp_name(p: &Path, what: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{what}-{}", std::process::id()));
    PathBuf::from(s)
}

/// PATH as an absolute path without `.` components or a trailing `/`, so that a file
/// beside it (`PATH.restoring-PID`) is beside it, not inside it; `None` when it names no
/// directory entry of its own (`/`, a path ending in `..`).
fn plain_path(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let plain: PathBuf = abs.components().collect();
    match plain.components().next_back() {
        Some(std::path::Component::Normal(_)) => Some(plain),
        _ => None,
    }
}

/// `entidb restore FILE PATH [--force]`: restores into a new directory beside PATH and moves
/// it into place only when the whole backup checked out.
pub async fn restore(file: &Path, path: &Path, force: bool) -> Outcome {
    let Some(path) = plain_path(path) else {
        return Outcome::Usage(format!(
            "restore: {} names no directory of its own; give the database's directory by name",
            path.display()
        ));
    };
    let path = path.as_path();
    if file.is_dir() {
        return Outcome::Usage(format!(
            "restore: {} is a directory, not a backup file (the arguments are FILE PATH)",
            file.display()
        ));
    }
    let occupied = path.exists()
        && std::fs::read_dir(path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
    if occupied && !path.join("MANIFEST").is_file() {
        // Not a database: a data directory of many, a folder of backups, something else.
        // --force replaces a database, never a directory that is not one.
        return Outcome::Usage(format!(
            "{} is not empty and holds no database; restore into a new or empty directory \
             (or into an existing database with --force)",
            path.display()
        ));
    }
    if occupied && !force {
        return Outcome::Usage(format!(
            "{} exists and is a database; pass --force to replace it",
            path.display()
        ));
    }
    // The database being replaced stays open (locked) until the swap, so that a server
    // cannot open it meanwhile; one open elsewhere is refused.
    let mut replaced = None;
    if occupied {
        match Database::open_path(path, Options::default().create_if_missing(false)).await {
            Ok(db) => replaced = Some(db),
            Err(e @ entidb::Error::Locked { .. }) => return failed("restore")(e),
            Err(_) => {} // a damaged database may be replaced with --force
        }
    }
    let (mut src, pb) = match open_backup(file) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let staging = tmp_name(path, "restoring");
    let _ = std::fs::remove_dir_all(&staging);
    let backend: Arc<dyn entidb::io::Backend> = match entidb::io::FsBackend::new(&staging) {
        Ok(b) => Arc::new(b),
        Err(e) => return Outcome::Failed(format!("restore: {e}")),
    };
    // With ENTIDB_PASSPHRASE set, the restored database is encrypted.
    let backend: Arc<dyn entidb::io::Backend> = match passphrase(PASSPHRASE_ENV) {
        Some(key) => match entidb::io::EncryptedBackend::open(backend, key).await {
            Ok(b) => Arc::new(b),
            Err(e) => return Outcome::Failed(format!("restore: {e}")),
        },
        None => backend,
    };
    let r = Database::restore(&mut src, backend, Options::default()).await;
    pb.finish_and_clear();
    let (db, summary) = match r {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return failed("restore")(e);
        }
    };
    if let Outcome::Failed(m) | Outcome::Locked(m) = close(db).await {
        let _ = std::fs::remove_dir_all(&staging);
        return Outcome::Failed(m);
    }
    if let Some(old) = replaced.take()
        && let Err(e) = old.close().await
    {
        let _ = std::fs::remove_dir_all(&staging);
        return failed("restore")(e);
    }
    // Swapped by renames: the old database is moved aside whole before the new one takes
    // its name, and removed only after (a crash in between leaves both, by name).
    if let Outcome::Failed(m) = move_into_place(&staging, path, "restore") {
        return Outcome::Failed(m);
    }
    println!(
        "restored {} (sequence {}): {} collections, {} entities, {} indexes rebuilt -> {}",
        file.display(),
        summary.sequence,
        summary.collections,
        summary.entities,
        summary.indexes,
        path.display()
    );
    Outcome::Ok
}

/// A CBOR value as JSON, by the table in the module docs.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => {
            let n = i.as_i128();
            if let Ok(x) = i64::try_from(n) {
                Json::from(x)
            } else if let Ok(x) = u64::try_from(n) {
                Json::from(x)
            } else {
                json!({"$int": n.to_string()})
            }
        }
        Value::Float(f) if f.is_finite() => match Number::from_f64(*f) {
            Some(n) => Json::Number(n),
            None => json!({"$float": f.to_string()}),
        },
        Value::Float(f) => {
            json!({"$float": if f.is_nan() { "NaN".to_owned() } else if *f > 0.0 { "Infinity".to_owned() } else { "-Infinity".to_owned() }})
        }
        Value::Text(t) => Json::String(t.clone()),
        Value::Bytes(b) => json!({"$bytes": base64::engine::general_purpose::STANDARD.encode(b)}),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let plain = entries
                .iter()
                .all(|(k, _)| k.as_text().is_some_and(|t| !t.starts_with('$')));
            if plain {
                let mut m = Map::new();
                for (k, v) in entries {
                    m.insert(k.as_text().unwrap_or_default().to_owned(), to_json(v));
                }
                Json::Object(m)
            } else {
                json!({"$map": entries.iter().map(|(k, v)| json!([to_json(k), to_json(v)])).collect::<Vec<_>>()})
            }
        }
        Value::Tag(t, inner) => json!({"$tag": t, "value": to_json(inner)}),
        Value::Undefined => json!({"$undefined": true}),
        Value::Simple(s) => json!({"$simple": s.value()}),
    }
}

/// JSON back to CBOR (the inverse of [`to_json`]).
pub fn from_json(j: &Json) -> Result<Value, String> {
    Ok(match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::Float(n.as_f64().ok_or("a number out of range")?)
            }
        }
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(from_json).collect::<Result<_, _>>()?),
        Json::Object(m) => {
            let special = m.keys().any(|k| k.starts_with('$'));
            if !special {
                Value::Map(
                    m.iter()
                        .map(|(k, v)| Ok((Value::Text(k.clone()), from_json(v)?)))
                        .collect::<Result<_, String>>()?,
                )
            } else {
                special_from_json(m)?
            }
        }
    })
}

fn special_from_json(m: &Map<String, Json>) -> Result<Value, String> {
    let one = |k: &str| (m.len() == 1).then(|| m.get(k)).flatten();
    if let Some(s) = one("$int").and_then(Json::as_str) {
        let n: i128 = s.parse().map_err(|_| format!("bad $int {s:?}"))?;
        return Int::try_from(n)
            .map(Value::Int)
            .map_err(|_| format!("$int {s} is outside the CBOR range"));
    }
    if let Some(s) = one("$float").and_then(Json::as_str) {
        return match s {
            "NaN" => Ok(Value::Float(f64::NAN)),
            "Infinity" => Ok(Value::Float(f64::INFINITY)),
            "-Infinity" => Ok(Value::Float(f64::NEG_INFINITY)),
            other => other
                .parse()
                .map(Value::Float)
                .map_err(|_| format!("bad $float {other:?}")),
        };
    }
    if let Some(s) = one("$bytes").and_then(Json::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Value::Bytes)
            .map_err(|e| format!("bad $bytes: {e}"));
    }
    if let Some(entries) = one("$map").and_then(Json::as_array) {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            match e.as_array().map(Vec::as_slice) {
                Some([k, v]) => out.push((from_json(k)?, from_json(v)?)),
                _ => return Err("a $map entry is not a [key, value] pair".into()),
            }
        }
        return Ok(Value::Map(out));
    }
    if one("$undefined") == Some(&Json::Bool(true)) {
        return Ok(Value::Undefined);
    }
    if let Some(n) = one("$simple").and_then(Json::as_u64) {
        return u8::try_from(n)
            .ok()
            .and_then(Simple::new)
            .map(Value::Simple)
            .ok_or_else(|| format!("bad $simple {n}"));
    }
    if m.len() == 2
        && let (Some(t), Some(v)) = (m.get("$tag").and_then(Json::as_u64), m.get("value"))
    {
        return Ok(Value::Tag(t, Box::new(from_json(v)?)));
    }
    Err(format!(
        "an object with keys {:?}: keys starting with $ are reserved for the forms of the dump mapping",
        m.keys().collect::<Vec<_>>()
    ))
}

/// `entidb dump PATH [--collection C]`: JSON lines on stdout.
pub async fn dump(path: &Path, collection: Option<&str>) -> Outcome {
    let db = match open_for_reading(path).await {
        Ok(db) => db,
        Err(o) => return o,
    };
    let snap = db.snapshot();
    let names = match collection {
        Some(c) => {
            if !snap.collections().iter().any(|n| n == c) {
                return Outcome::Usage(format!("no collection {c:?} in {}", path.display()));
            }
            vec![c.to_owned()]
        }
        None => snap.collections(),
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let pb = spinner("entities");
    for name in names {
        let mut opts = ScanOptions::limit(1024);
        loop {
            let page = match snap.collection(&name).scan(opts).await {
                Ok(p) => p,
                Err(e) => return failed("dump")(e),
            };
            for d in &page.items {
                let v = match d.value() {
                    Ok(v) => v,
                    Err(e) => return failed("dump")(e),
                };
                let line =
                    json!({"collection": name, "id": d.id().to_string(), "doc": to_json(&v)});
                if let Err(e) = writeln!(out, "{line}") {
                    return Outcome::Failed(format!("dump: writing: {e}"));
                }
                pb.inc(1);
            }
            match page.next {
                Some(c) => opts = opts.after(c),
                None => break,
            }
        }
    }
    pb.finish_and_clear();
    if let Err(e) = out.flush() {
        return Outcome::Failed(format!("dump: writing: {e}"));
    }
    drop(out);
    drop(snap);
    close(db).await
}

/// `entidb load PATH FILE` (`-`: standard input): the inverse of dump. Entities are written
/// in transactions of 1,000 (an existing entity with the same id is replaced). A new
/// database is loaded in a staging directory beside PATH and moved into place only when the
/// whole input loaded, so a failed load leaves no partial database that looks whole.
pub async fn load(path: &Path, file: &Path) -> Outcome {
    let Some(target) = plain_path(path) else {
        return Outcome::Usage(format!(
            "load: {} names no directory of its own",
            path.display()
        ));
    };
    let is_db = target.join("MANIFEST").is_file();
    let occupied = target.exists()
        && std::fs::read_dir(&target)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
    if occupied && !is_db {
        return Outcome::Usage(format!(
            "load: {} is not empty and holds no database; load into a new directory or a database",
            target.display()
        ));
    }
    if is_db {
        return load_into(&target, file, path).await;
    }
    let staging = tmp_name(&target, "loading");
    let _ = std::fs::remove_dir_all(&staging);
    let outcome = load_into(&staging, file, path).await;
    if !matches!(outcome, Outcome::Ok) {
        let _ = std::fs::remove_dir_all(&staging);
        return outcome;
    }
    move_into_place(&staging, &target, "load")
}

/// Moves the database built in `staging` to `target` (`restore`, a new `load`), by renames:
/// what is at `target` (a database, an empty directory) is moved aside first and removed
/// only after, so a crash in between leaves both, by name.
fn move_into_place(staging: &Path, target: &Path, what: &str) -> Outcome {
    let aside = tmp_name(target, "replaced");
    let moved = (|| -> std::io::Result<()> {
        if target.exists() {
            std::fs::rename(target, &aside)?;
        }
        std::fs::rename(staging, target)?;
        if let Some(dir) = target.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = moved {
        return Outcome::Failed(format!(
            "{what}: the new database is complete in {} but could not be moved to {}: {e}{}",
            staging.display(),
            target.display(),
            if aside.exists() {
                format!(" (what it replaces is in {})", aside.display())
            } else {
                String::new()
            }
        ));
    }
    if aside.exists()
        && let Err(e) = std::fs::remove_dir_all(&aside)
    {
        eprintln!(
            "{what}: what the new database replaces could not be removed from {}: {e}",
            aside.display()
        );
    }
    Outcome::Ok
}

/// Loads FILE into the database at `path` (created if missing); `shown` is PATH as the
/// operator gave it.
async fn load_into(path: &Path, file: &Path, shown: &Path) -> Outcome {
    let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => return Outcome::Usage(format!("cannot open {}: {e}", file.display())),
        }
    };
    let db = match open_db(path, Options::default()).await {
        Ok(db) => db,
        Err(e) => return failed(&path.display().to_string())(e),
    };
    let pb = spinner("entities");
    let mut tx = match db.begin().await {
        Ok(t) => t,
        Err(e) => return failed("load")(e),
    };
    let mut in_tx = 0usize;
    let mut total = 0u64;
    for (n, line) in input.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Outcome::Usage(format!(
                    "load: line {} is not UTF-8 text: is {} a dump (`entidb dump`), not a backup?",
                    n + 1,
                    file.display()
                ));
            }
            Err(e) => return Outcome::Failed(format!("load: reading line {}: {e}", n + 1)),
        };
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Json>(&line)
            .map_err(|e| e.to_string())
            .and_then(|j| {
                let coll = j["collection"]
                    .as_str()
                    .ok_or("no \"collection\"")?
                    .to_owned();
                let id: EntityId = j["id"]
                    .as_str()
                    .ok_or("no \"id\"")?
                    .parse()
                    .map_err(|e| format!("bad id: {e}"))?;
                let doc = from_json(j.get("doc").ok_or("no \"doc\"")?)?;
                Ok::<_, String>((coll, id, doc))
            });
        let (coll, id, doc) = match parsed {
            Ok(x) => x,
            Err(e) => {
                return Outcome::Usage(format!(
                    "load: line {}: {e}; nothing after the last committed batch was written",
                    n + 1
                ));
            }
        };
        if let Err(e) = tx.collection(&coll).put_value(id, &doc) {
            // The line's own fault (a collection name, a document too large): exit 2, with
            // where it is.
            return match e {
                entidb::Error::InvalidCollectionName { .. }
                | entidb::Error::TooLarge { .. }
                | entidb::Error::Document(_)
                | entidb::Error::InvalidArgument(_) => Outcome::Usage(format!(
                    "load: line {}: {e}; nothing after the last committed batch was written",
                    n + 1
                )),
                e => failed("load")(e),
            };
        }
        in_tx += 1;
        total += 1;
        pb.inc(1);
        if in_tx >= 1000 {
            if let Err(e) = tx.commit().await {
                return failed("load")(e);
            }
            tx = match db.begin().await {
                Ok(t) => t,
                Err(e) => return failed("load")(e),
            };
            in_tx = 0;
        }
    }
    if let Err(e) = tx.commit().await {
        return failed("load")(e);
    }
    pb.finish_and_clear();
    eprintln!("loaded {total} entities into {}", shown.display());
    close(db).await
}
