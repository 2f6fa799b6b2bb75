//! The operator commands, run as the real `entidb` binary against real database directories.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use entidb::cbor::{Simple, Value};
use entidb::{Database, EntityId, IndexSpec, ScanOptions};

fn entidb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_entidb"))
        .args(args)
        .output()
        .expect("run entidb")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

type State = BTreeMap<(String, EntityId), Vec<u8>>;

async fn state(path: &Path) -> State {
    // Read-only, so that it also works beside a handle that holds the database.
    let db = Database::open_path(path, entidb::Options::default().read_only(true))
        .await
        .expect("open");
    let snap = db.snapshot();
    let mut out = State::new();
    for name in snap.collections() {
        let page = snap
            .collection(&name)
            .scan(ScanOptions::limit(100_000))
            .await
            .expect("scan");
        for d in page.items {
            out.insert((name.clone(), d.id()), d.bytes().to_vec());
        }
    }
    drop(snap);
    db.close().await.expect("close");
    out
}

/// A database with every kind of value the dump mapping has a form for, and indexes.
async fn populate(path: &Path) {
    let db = Database::open(path).await.expect("open");
    let users = db.collection("users");
    users
        .create_index("email", IndexSpec::equality(["email"]).unique())
        .await
        .expect("index");
    users
        .create_index("bio", IndexSpec::search(["bio"]))
        .await
        .expect("index");
    for i in 0..50i64 {
        users
            .insert(&Value::map([
                ("email", Value::from(format!("u{i}@example.com"))),
                ("bio", Value::from(format!("writes rust number {i}"))),
                ("n", Value::from(i - 25)),
                ("f", Value::Float(i as f64 / 4.0)),
            ]))
            .await
            .expect("insert");
    }
    let odd = Value::Map(vec![
        (Value::from("bytes"), Value::Bytes(vec![0, 1, 2, 255])),
        (Value::from("nan"), Value::Float(f64::NAN)),
        (Value::from("inf"), Value::Float(f64::NEG_INFINITY)),
        (Value::from("one"), Value::Float(1.0)),
        (Value::from("min"), Value::Int(entidb::cbor::Int::MIN)),
        (Value::from("max"), Value::from(u64::MAX)),
        (
            Value::from("$dollar"),
            Value::from("a key that looks special"),
        ),
        (
            Value::from("when"),
            Value::Tag(1, Box::new(Value::from(1_700_000_000))),
        ),
        (Value::from("undef"), Value::Undefined),
        (
            Value::from("simple"),
            Value::Simple(Simple::new(99).expect("simple")),
        ),
        (
            Value::from("nested"),
            Value::Map(vec![(Value::from(7), Value::from("int key"))]),
        ),
        (Value::from("null"), Value::Null),
        (
            Value::from("list"),
            Value::array([Value::Bool(true), Value::from("x")]),
        ),
    ]);
    db.collection("odd")
        .put_value(db.new_id(), &odd)
        .await
        .expect("odd");
    // A feed consumer that has read up to sequence 3 (inspect lists its hold).
    db.hold_feed("exporter", 3).await.expect("hold");
    db.close().await.expect("close");
}

#[test]
fn help_lists_every_command() {
    let o = entidb(&["--help"]);
    assert_eq!(code(&o), 0);
    let help = text(&o);
    for cmd in [
        "serve",
        "token",
        "inspect",
        "verify",
        "compact",
        "release-hold",
        "backup",
        "restore",
        "dump",
        "load",
        "bench",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
        let o = entidb(&[cmd, "--help"]);
        assert_eq!(code(&o), 0, "{cmd} --help");
        assert!(
            text(&o).contains("Usage: entidb"),
            "{cmd} --help:\n{}",
            text(&o)
        );
    }
}

#[tokio::test]
async fn inspect_verify_backup_restore_dump_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let dbs = db.to_str().expect("utf-8 path");
    populate(&db).await;

    let o = entidb(&["inspect", dbs, "--json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let users = report["collections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "users"))
        .expect("users");
    assert_eq!(users["entities"], 50);
    assert_eq!(users["indexes"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["feed_holds"], serde_json::json!({"exporter": 3}));
    let listing = text(&entidb(&["inspect", dbs]));
    assert!(
        listing.contains("index email (equality, unique)"),
        "{listing}"
    );
    assert!(
        listing.contains("feed hold exporter: keeps records after 3"),
        "{listing}"
    );
    let o = entidb(&["release-hold", dbs, "nobody"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("no feed hold \"nobody\" (holds: exporter)"),
        "{}",
        text(&o)
    );
    let o = entidb(&["release-hold", dbs, "exporter"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&entidb(&["inspect", dbs, "--json"]).stdout).expect("json");
    assert_eq!(report["feed_holds"], serde_json::json!({}));

    let o = entidb(&["verify", dbs]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = entidb(&["verify", dbs, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["ok"], true);

    // Backup, verify it, restore it elsewhere: the same documents under the same ids, with
    // working indexes.
    let bak = dir.path().join("db.bak");
    let baks = bak.to_str().expect("utf-8");
    let o = entidb(&["backup", dbs, baks]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = entidb(&["verify", baks]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let restored = dir.path().join("restored");
    let rs = restored.to_str().expect("utf-8");
    let o = entidb(&["restore", baks, rs]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(state(&restored).await, state(&db).await);
    assert_eq!(
        code(&entidb(&["verify", rs])),
        0,
        "restored indexes check out"
    );
    // An existing target needs --force.
    let o = entidb(&["restore", baks, rs]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("--force"));
    assert_eq!(code(&entidb(&["restore", baks, rs, "--force"])), 0);

    // A truncated or damaged backup is rejected and replaces nothing.
    let bytes = std::fs::read(&bak).expect("read");
    let cut = dir.path().join("cut.bak");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).expect("write");
    let o = entidb(&["verify", cut.to_str().expect("utf-8")]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("truncated"), "{}", text(&o));
    let o = entidb(&["restore", cut.to_str().expect("utf-8"), rs, "--force"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert_eq!(
        state(&restored).await,
        state(&db).await,
        "the target is untouched"
    );

    // dump | load | dump is byte-identical, and the documents are the same bytes.
    let d1 = entidb(&["dump", dbs]);
    assert_eq!(code(&d1), 0, "{}", text(&d1));
    let dump1 = dir.path().join("dump1.jsonl");
    std::fs::write(&dump1, &d1.stdout).expect("write");
    let loaded = dir.path().join("loaded");
    let ls = loaded.to_str().expect("utf-8");
    let o = entidb(&["load", ls, dump1.to_str().expect("utf-8")]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let d2 = entidb(&["dump", ls]);
    assert_eq!(d1.stdout, d2.stdout, "dump | load | dump differs");
    assert_eq!(state(&loaded).await, state(&db).await);
    let only = entidb(&["dump", dbs, "--collection", "odd"]);
    let line = String::from_utf8(only.stdout).expect("utf-8");
    assert_eq!(line.lines().count(), 1);
    for form in [
        "$bytes",
        "$float",
        "$int",
        "$map",
        "$tag",
        "$undefined",
        "$simple",
    ] {
        assert!(line.contains(form), "{form} missing in {line}");
    }

    // A malformed line is refused with its line number.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"collection\":\"c\",\"id\":\"nope\",\"doc\":1}\n").expect("write");
    let o = entidb(&["load", ls, bad.to_str().expect("utf-8")]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("line 1"), "{}", text(&o));

    // Compaction keeps everything.
    assert_eq!(code(&entidb(&["compact", dbs])), 0);
    assert_eq!(state(&db).await, state(&restored).await);

    // Damage: a flipped byte in a segment makes verify fail with exit 1.
    let seg = std::fs::read_dir(&db)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .expect("a segment");
    let mut raw = std::fs::read(&seg).expect("read");
    raw[20] ^= 0xFF;
    std::fs::write(&seg, raw).expect("write");
    let o = entidb(&["verify", dbs]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("DAMAGED"), "{}", text(&o));
}

#[tokio::test]
async fn commands_refuse_a_database_open_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    populate(&path).await;
    let held = Database::open(&path).await.expect("open");
    let before = state(&path.clone()).await.len(); // through a read-only handle below
    let p = path.to_str().expect("utf-8");
    let bak = dir.path().join("x.bak");
    // Commands that write refuse a database another process has open.
    for args in [
        vec!["compact", p],
        vec!["load", p, "-"],
        vec!["release-hold", p, "exporter"],
    ] {
        let o = entidb(&args);
        assert_eq!(code(&o), 3, "{args:?}: {}", text(&o));
        assert!(text(&o).contains("open in another process"), "{}", text(&o));
    }
    // Commands that only read work on a snapshot of it, while the writer goes on.
    held.collection("users")
        .insert(&Value::map([("email", "late@example.com")]))
        .await
        .expect("the holder writes");
    for args in [
        vec!["inspect", p],
        vec!["verify", p],
        vec!["dump", p],
        vec!["backup", p, bak.to_str().expect("utf-8")],
    ] {
        let o = entidb(&args);
        assert_eq!(code(&o), 0, "{args:?}: {}", text(&o));
        assert!(text(&o).contains("reading a snapshot"), "{}", text(&o));
    }
    let dumped = entidb(&["dump", p]);
    assert_eq!(
        String::from_utf8_lossy(&dumped.stdout).lines().count(),
        before + 1,
        "the snapshot holds every committed entity"
    );
    assert_eq!(code(&entidb(&["verify", bak.to_str().expect("utf-8")])), 0);
    held.close().await.expect("close");
    assert_eq!(code(&entidb(&["inspect", p])), 0);
}

#[test]
fn missing_database_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("nothing");
    let o = entidb(&["inspect", p.to_str().expect("utf-8")]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("no database"));
}

/// A database directory that lost its MANIFEST is damaged, not missing: `verify` reports it
/// (exit 1; it said "no database", exit 2), and the other commands say why they cannot open
/// it.
#[tokio::test]
async fn a_lost_manifest_is_damage_not_a_missing_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    populate(&path).await;
    std::fs::remove_file(path.join("MANIFEST")).expect("remove MANIFEST");
    let p = path.to_str().expect("utf-8");
    let o = entidb(&["verify", p]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("DAMAGED"), "{}", text(&o));
    assert!(text(&o).contains("manifest is missing"), "{}", text(&o));
    let o = entidb(&["inspect", p]);
    assert_eq!(code(&o), 4, "{}", text(&o));
    assert!(text(&o).contains("manifest is missing"), "{}", text(&o));
}

#[test]
fn bench_runs_the_workloads_against_the_references() {
    // A tiny scale: this checks that the command works (and its W10 child processes), not
    // speed (figures come from release builds; docs/benchmarks.md).
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("b");
    // `--dir` may hold other things: the run works in a directory of its own inside it and
    // removes only that (it removed D itself).
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("keep.txt"), b"keep me").expect("write");
    let o = entidb(&[
        "bench",
        "--scale",
        "0.001",
        "--runs",
        "1",
        "--no-w9",
        "--value",
        "random",
        "--compare",
        "sqlite",
        "--dir",
        d.to_str().expect("utf-8"),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = text(&o);
    for row in ["W1 random", "W4 random", "W10 random", "SQLite"] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    assert_eq!(std::fs::read(d.join("keep.txt")).expect("kept"), b"keep me");
    let left: Vec<_> = std::fs::read_dir(&d).expect("read_dir").collect();
    assert_eq!(left.len(), 1, "only keep.txt is left: {left:?}");
    // A value that is not a number is refused, not replaced by the default.
    let o = entidb(&["bench", "--scale", "abc"]);
    assert_ne!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("--scale"), "{}", text(&o));
    let o = entidb(&["bench", "--indexes", "--scale", "0.001"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("I2 equality lookups"), "{}", text(&o));
}

fn entidb_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_entidb"));
    c.args(args)
        .env_remove("ENTIDB_PASSPHRASE")
        .env_remove("ENTIDB_NEW_PASSPHRASE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run entidb")
}

#[tokio::test]
async fn encrypted_databases_need_the_passphrase_and_can_be_rekeyed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let p = path.to_str().expect("utf-8");
    let db = Database::open_encrypted(
        &path,
        entidb::io::KeySource::Passphrase("first secret".into()),
        entidb::Options::default(),
    )
    .await
    .expect("create");
    db.collection("notes")
        .insert(&Value::map([("text", "hidden")]))
        .await
        .expect("insert");
    db.close().await.expect("close");

    let o = entidb_env(&["inspect", p], &[]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("ENTIDB_PASSPHRASE"), "{}", text(&o));
    let o = entidb_env(&["inspect", p], &[("ENTIDB_PASSPHRASE", "nope")]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("wrong passphrase"), "{}", text(&o));
    let o = entidb_env(&["dump", p], &[("ENTIDB_PASSPHRASE", "first secret")]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("hidden"));

    let o = entidb_env(
        &["rekey", p],
        &[
            ("ENTIDB_PASSPHRASE", "first secret"),
            ("ENTIDB_NEW_PASSPHRASE", "second secret"),
        ],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = entidb_env(&["verify", p], &[("ENTIDB_PASSPHRASE", "first secret")]);
    assert_ne!(code(&o), 0, "the old passphrase no longer opens it");
    let o = entidb_env(&["verify", p], &[("ENTIDB_PASSPHRASE", "second secret")]);
    assert_eq!(code(&o), 0, "{}", text(&o));
}

/// What `restore` and `backup` replace survives their failures and odd arguments: a PATH
/// with a trailing `/` (the staging directory went inside it, and `--force` then removed
/// both), a non-empty directory that is no database (`--force` removed it all: a server's
/// data directory of many databases), FILE given as a directory, and a backup that fails
/// half-way (it replaced the previous good backup with a truncated one).
#[tokio::test]
async fn restore_and_backup_keep_what_they_would_replace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    populate(&db).await;
    let dbs = db.to_str().expect("utf-8");
    let bak = dir.path().join("db.bak");
    let baks = bak.to_str().expect("utf-8");
    assert_eq!(code(&entidb(&["backup", dbs, baks])), 0);

    // Over an existing database named with a trailing slash.
    let restored = dir.path().join("restored");
    let rs = restored.to_str().expect("utf-8");
    assert_eq!(code(&entidb(&["restore", baks, rs])), 0);
    let o = entidb(&["restore", baks, &format!("{rs}/"), "--force"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(state(&restored).await, state(&db).await);
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restoring-") || n.contains(".replaced-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A directory that holds things but no database is never replaced.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("app")).expect("mkdir");
    std::fs::write(data.join("app").join("MANIFEST"), b"x").expect("write");
    std::fs::write(data.join("notes.txt"), b"keep me").expect("write");
    let o = entidb(&["restore", baks, data.to_str().expect("utf-8"), "--force"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("holds no database"), "{}", text(&o));
    assert_eq!(
        std::fs::read(data.join("notes.txt")).expect("kept"),
        b"keep me"
    );
    assert!(data.join("app").join("MANIFEST").exists());

    // FILE given as a directory (the arguments swapped).
    let o = entidb(&["restore", rs, baks]);
    assert_eq!(code(&o), 2, "{}", text(&o));

    // The commands that only read write nothing: not a lock file, not a checkpoint, not a
    // cut log tail.
    let listing = |p: &Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(p)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        v.sort();
        v
    };
    // A torn tail on the newest log file (bytes a crash left after the last record): a
    // read-write open would cut it.
    let newest_log = std::fs::read_dir(&db)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a log file");
    let mut log = std::fs::read(&newest_log).expect("read");
    let end = log.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    log.truncate(end);
    log.extend_from_slice(&[0xab; 100]);
    std::fs::write(&newest_log, &log).expect("write");
    let before = listing(&db);
    for cmd in ["inspect", "verify", "dump"] {
        let o = entidb(&[cmd, dbs]);
        assert_eq!(code(&o), 0, "{cmd}: {}", text(&o));
    }
    let copy = dir.path().join("copy.bak");
    assert_eq!(
        code(&entidb(&["backup", dbs, copy.to_str().expect("utf-8")])),
        0
    );
    assert_eq!(
        listing(&db),
        before,
        "a reading command changed the database's files"
    );

    // A load into a new directory that fails half-way leaves no database behind (it left the
    // batches before the bad line, a database that looked whole); a line the engine refuses
    // is exit 2 with its number; a backup given as the dump is exit 2 with a hint, and a
    // non-empty directory that holds no database is not loaded into.
    let dump = entidb(&["dump", dbs]);
    assert_eq!(code(&dump), 0);
    let mut lines = String::from_utf8(dump.stdout).expect("utf-8");
    lines.push_str(
        "{\"collection\":\"\",\"id\":\"0190a5c2-0000-7000-8000-000000000001\",\"doc\":1}\n",
    );
    let bad_dump = dir.path().join("bad.jsonl");
    std::fs::write(&bad_dump, &lines).expect("write");
    let fresh = dir.path().join("fresh");
    let o = entidb(&[
        "load",
        fresh.to_str().expect("utf-8"),
        bad_dump.to_str().expect("utf-8"),
    ]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let last_line = lines.lines().count();
    assert!(
        text(&o).contains(&format!("line {last_line}")),
        "{}",
        text(&o)
    );
    assert!(!fresh.exists(), "a failed load left {}", fresh.display());
    let o = entidb(&["load", fresh.to_str().expect("utf-8"), baks]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("dump"), "{}", text(&o));
    assert!(!fresh.exists());
    let o = entidb(&[
        "load",
        data.to_str().expect("utf-8"),
        bad_dump.to_str().expect("utf-8"),
    ]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert_eq!(
        std::fs::read(data.join("notes.txt")).expect("kept"),
        b"keep me"
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".loading-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A backup that fails keeps the previous one: damage a segment of the database.
    let segment = std::fs::read_dir(&db)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .expect("a segment (the database was closed, so flushed)");
    let mut bytes = std::fs::read(&segment).expect("read");
    let middle = bytes.len() / 3;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&segment, &bytes).expect("write");
    let before = std::fs::read(&bak).expect("read");
    let o = entidb(&["backup", dbs, baks]);
    assert_ne!(
        code(&o),
        0,
        "a backup of a damaged database failed: {}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(&bak).expect("read"),
        before,
        "the old backup is intact"
    );
    assert_eq!(code(&entidb(&["verify", baks])), 0);
}

/// A passphrase given for a plaintext database is answered with what to do: unset it (the
/// hint said an encrypted database needs one).
#[tokio::test]
async fn a_passphrase_for_a_plaintext_database_says_to_unset_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    populate(&db).await;
    let o = entidb_env(
        &["inspect", db.to_str().expect("utf-8")],
        &[("ENTIDB_PASSPHRASE", "a secret")],
    );
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("unset ENTIDB_PASSPHRASE"), "{}", text(&o));
}

/// A reader that stops early (`entidb inspect db | head -1`) does not make a command panic
/// (exit 101, "failed printing to stdout"): it ends with its own exit code.
#[tokio::test]
async fn a_closed_standard_output_is_no_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    populate(&db).await;
    for cmd in ["inspect", "verify"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_entidb"))
            .args([cmd, db.to_str().expect("utf-8")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{cmd}: {err}");
        assert_ne!(out.status.code(), Some(101), "{cmd}: {err}");
    }
}

/// The development key is created once, whole, whoever asks first: `entidb token` run
/// while the server starts could read a partly written key file (refused as too short,
/// with advice to delete it) or fail on the other's file.
#[test]
fn the_dev_key_is_created_once_under_races() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| entidb_server::dev_key(&data).expect("dev key").secret))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(
            keys.iter().all(|k| k == &keys[0] && k.len() == 64),
            "{keys:?}"
        );
        let left: Vec<_> = std::fs::read_dir(&data)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            [entidb_server::DEV_KEY_FILE],
            "no temporary file is left"
        );
    }
}
