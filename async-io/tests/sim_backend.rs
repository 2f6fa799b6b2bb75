//! Behaviour of the deterministic simulation backend (`entidb_io::sim`).

#![expect(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::time::Duration;

use entidb_io::{Backend, File, IoError, OpenMode, SimBackend, SimConfig};
use futures_executor::block_on;

fn sim(seed: u64) -> SimBackend {
    SimBackend::new(seed, SimConfig::default())
}

fn open(b: &SimBackend, path: &str, mode: OpenMode) -> Arc<dyn File> {
    block_on(b.open(path, mode)).unwrap()
}

fn write(f: &Arc<dyn File>, offset: u64, data: &[u8]) {
    block_on(f.write_at(offset, data.to_vec())).unwrap();
}

fn sync(f: &Arc<dyn File>) {
    block_on(f.sync_data()).unwrap();
}

fn sync_dir(b: &SimBackend, dir: &str) {
    block_on(b.sync_dir(dir)).unwrap();
}

/// Read a whole file through a fresh handle (`None` if it does not exist).
fn read_file(b: &SimBackend, path: &str) -> Option<Vec<u8>> {
    match block_on(b.open(path, OpenMode::Existing)) {
        Ok(f) => {
            let len = block_on(f.len()).unwrap();
            Some(block_on(f.read_at(0, len as usize)).unwrap())
        }
        Err(IoError::NotFound { .. }) => None,
        Err(e) => panic!("open {path}: {e}"),
    }
}

fn crash_restart(b: &SimBackend) {
    b.crash_now();
    assert!(b.is_crashed());
    b.restart();
    assert!(!b.is_crashed());
}

/// A file with `content`, data- and directory-synced.
fn durable_file(b: &SimBackend, path: &str, content: &[u8]) -> Arc<dyn File> {
    let f = open(b, path, OpenMode::CreateNew);
    write(&f, 0, content);
    sync(&f);
    sync_dir(b, entidb_io::parent_dir(path));
    f
}

#[test]
fn name_is_sim() {
    assert_eq!(sim(1).name(), "sim");
}

#[test]
fn synced_data_and_dir_survive_crash_exactly() {
    for seed in 0..50 {
        let b = sim(seed);
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        durable_file(&b, "db.log", &data);
        crash_restart(&b);
        assert_eq!(read_file(&b, "db.log"), Some(data.clone()));
        assert_eq!(b.file_names(), vec!["db.log".to_owned()]);
        // A second crash changes nothing either.
        crash_restart(&b);
        assert_eq!(read_file(&b, "db.log"), Some(data));
    }
}

#[test]
fn unsynced_write_is_kept_lost_or_torn_prefix() {
    let old = vec![0xAAu8; 64];
    let new = vec![0xBBu8; 32];
    let (mut kept, mut lost, mut torn) = (0, 0, 0);
    for seed in 0..200 {
        let b = sim(seed);
        let f = durable_file(&b, "f", &old);
        write(&f, 16, &new);
        assert_eq!(b.volatile_bytes("f").unwrap()[16..48], new[..]);
        assert_eq!(b.durable_bytes("f"), Some(old.clone()));
        crash_restart(&b);
        let got = read_file(&b, "f").unwrap();
        assert_eq!(got.len(), 64);
        let applied = got[16..].iter().take_while(|&&x| x == 0xBB).count().min(32);
        let mut expect = old.clone();
        expect[16..16 + applied].fill(0xBB);
        assert_eq!(got, expect, "seed {seed}: not a prefix-apply of the write");
        match applied {
            0 => lost += 1,
            32 => kept += 1,
            _ => torn += 1,
        }
        // Whatever survived is now durable.
        assert_eq!(b.durable_bytes("f"), Some(got));
    }
    assert!(kept > 0 && lost > 0 && torn > 0, "{kept} {lost} {torn}");
}

#[test]
fn unsynced_extending_writes_and_set_len() {
    // Two appends and a truncate, unsynced: every outcome is durable + for each op in order:
    // applied, dropped, or (writes) a prefix applied.
    for seed in 0..200 {
        let b = sim(seed);
        let f = durable_file(&b, "f", b"0123456789");
        write(&f, 10, b"abcd");
        write(&f, 14, b"WXYZ");
        block_on(f.set_len(12)).unwrap();
        assert_eq!(b.volatile_bytes("f").unwrap(), b"0123456789ab");
        crash_restart(&b);
        let got = read_file(&b, "f").unwrap();
        let mut ok = false;
        for a in 0..=4 {
            for c in 0..=4 {
                for trunc in [false, true] {
                    let mut img = b"0123456789".to_vec();
                    if a > 0 {
                        img.truncate(10);
                        img.extend_from_slice(&b"abcd"[..a]);
                    }
                    if c > 0 {
                        img.resize(14, 0);
                        img.extend_from_slice(&b"WXYZ"[..c]);
                    }
                    if trunc {
                        img.resize(12, 0);
                    }
                    ok |= img == got;
                }
            }
        }
        assert!(ok, "seed {seed}: impossible outcome {got:?}");
    }
}

#[test]
fn created_but_not_dir_synced_file_may_vanish() {
    let (mut gone, mut present) = (0, 0);
    for seed in 0..200 {
        let b = sim(seed);
        let f = open(&b, "new.seg", OpenMode::CreateNew);
        write(&f, 0, b"synced data");
        sync(&f);
        assert_eq!(b.durable_bytes("new.seg"), None, "name not durable yet");
        crash_restart(&b);
        match read_file(&b, "new.seg") {
            None => gone += 1,
            Some(d) => {
                assert_eq!(d, b"synced data");
                present += 1;
            }
        }
    }
    assert!(gone > 0 && present > 0, "{gone} {present}");
}

#[test]
fn created_file_with_unsynced_data_is_absent_or_prefix() {
    for seed in 0..100 {
        let b = sim(seed);
        let f = open(&b, "x", OpenMode::CreateNew);
        write(&f, 0, b"hello");
        crash_restart(&b);
        if let Some(d) = read_file(&b, "x") {
            assert!(b"hello".starts_with(&d), "seed {seed}: {d:?}");
        }
    }
}

#[test]
fn rename_over_existing_without_dir_sync_is_old_or_new() {
    let (mut old_seen, mut new_seen) = (0, 0);
    for seed in 0..200 {
        let b = sim(seed);
        durable_file(&b, "MANIFEST", b"old manifest");
        let tmp = open(&b, "MANIFEST.tmp", OpenMode::CreateNew);
        write(&tmp, 0, b"new manifest!");
        sync(&tmp);
        block_on(b.rename("MANIFEST.tmp", "MANIFEST")).unwrap();
        assert_eq!(read_file(&b, "MANIFEST").unwrap(), b"new manifest!");
        assert!(!block_on(b.exists("MANIFEST.tmp")).unwrap());
        crash_restart(&b);
        match read_file(&b, "MANIFEST").as_deref() {
            Some(b"old manifest") => old_seen += 1,
            Some(b"new manifest!") => {
                new_seen += 1;
                assert_eq!(read_file(&b, "MANIFEST.tmp"), None);
            }
            other => panic!("seed {seed}: {other:?}"),
        }
    }
    assert!(old_seen > 0 && new_seen > 0, "{old_seen} {new_seen}");
}

#[test]
fn rename_with_dir_sync_is_new() {
    for seed in 0..50 {
        let b = sim(seed);
        durable_file(&b, "MANIFEST", b"old");
        let tmp = open(&b, "MANIFEST.tmp", OpenMode::CreateNew);
        write(&tmp, 0, b"new");
        sync(&tmp);
        block_on(b.rename("MANIFEST.tmp", "MANIFEST")).unwrap();
        sync_dir(&b, "");
        assert_eq!(b.pending_dir_ops(), 0);
        crash_restart(&b);
        assert_eq!(read_file(&b, "MANIFEST").unwrap(), b"new");
        assert_eq!(b.file_names(), vec!["MANIFEST".to_owned()]);
    }
}

#[test]
fn remove_without_dir_sync_may_come_back() {
    let (mut back, mut gone) = (0, 0);
    for seed in 0..100 {
        let b = sim(seed);
        durable_file(&b, "old.seg", b"segment");
        block_on(b.remove("old.seg")).unwrap();
        assert!(!block_on(b.exists("old.seg")).unwrap());
        crash_restart(&b);
        match read_file(&b, "old.seg") {
            Some(d) => {
                assert_eq!(d, b"segment");
                back += 1;
            }
            None => gone += 1,
        }
        // With the directory synced, the removal sticks.
        let b = sim(seed);
        durable_file(&b, "old.seg", b"segment");
        block_on(b.remove("old.seg")).unwrap();
        sync_dir(&b, "");
        crash_restart(&b);
        assert_eq!(read_file(&b, "old.seg"), None);
    }
    assert!(back > 0 && gone > 0);
}

#[test]
fn subdirectories_need_their_parent_synced() {
    let (mut gone, mut present) = (0, 0);
    for seed in 0..100 {
        let b = sim(seed);
        block_on(b.create_dir("db/wal")).unwrap();
        durable_file(&b, "db/wal/000001.log", b"log");
        // "db/wal" synced, but the creation of "db" (in the root) and of "db/wal" (in "db")
        // were not: the file may be unreachable.
        crash_restart(&b);
        match read_file(&b, "db/wal/000001.log") {
            None => gone += 1,
            Some(d) => {
                assert_eq!(d, b"log");
                present += 1;
            }
        }
        // Syncing the whole chain makes it stick.
        let b = sim(seed);
        block_on(b.create_dir("db/wal")).unwrap();
        durable_file(&b, "db/wal/000001.log", b"log");
        sync_dir(&b, "db");
        sync_dir(&b, "");
        crash_restart(&b);
        assert_eq!(read_file(&b, "db/wal/000001.log").unwrap(), b"log");
        assert_eq!(
            block_on(b.list("db")).unwrap(),
            vec!["wal".to_owned()],
            "seed {seed}"
        );
    }
    assert!(gone > 0 && present > 0);
}

#[test]
fn cross_directory_rename_is_atomic() {
    for seed in 0..100 {
        let b = sim(seed);
        block_on(b.create_dir("a")).unwrap();
        block_on(b.create_dir("b")).unwrap();
        sync_dir(&b, "");
        durable_file(&b, "a/x", b"payload");
        block_on(b.rename("a/x", "b/y")).unwrap();
        crash_restart(&b);
        let x = read_file(&b, "a/x");
        let y = read_file(&b, "b/y");
        assert!(
            matches!((&x, &y), (Some(_), None) | (None, Some(_))),
            "seed {seed}: {x:?} {y:?}"
        );
    }
}

#[test]
fn handles_from_before_a_crash_stay_dead() {
    let b = sim(3);
    let f = durable_file(&b, "f", b"abc");
    let lock = block_on(b.lock("LOCK")).unwrap();
    b.crash_now();
    // Everything fails while down, reads included.
    assert!(matches!(
        block_on(f.read_at(0, 1)),
        Err(IoError::Crashed { .. })
    ));
    assert!(matches!(
        block_on(b.exists("f")),
        Err(IoError::Crashed { .. })
    ));
    assert!(matches!(
        block_on(b.open("f", OpenMode::Existing)),
        Err(IoError::Crashed { .. })
    ));
    b.restart();
    assert_eq!(b.boot_generation(), 1);
    assert!(matches!(
        block_on(f.read_at(0, 1)),
        Err(IoError::Crashed { .. })
    ));
    assert!(matches!(
        block_on(f.write_at(0, vec![1])),
        Err(IoError::Crashed { .. })
    ));
    assert!(matches!(
        block_on(f.sync_data()),
        Err(IoError::Crashed { .. })
    ));
    assert!(matches!(block_on(f.len()), Err(IoError::Crashed { .. })));
    assert!(matches!(
        block_on(f.set_len(0)),
        Err(IoError::Crashed { .. })
    ));
    // New handles work; the lock was released by the restart.
    let g = open(&b, "f", OpenMode::Existing);
    assert_eq!(block_on(g.read_at(0, 3)).unwrap(), b"abc");
    let lock2 = block_on(b.lock("LOCK")).unwrap();
    // Dropping the stale guard must not release the new lock.
    drop(lock);
    assert!(matches!(
        block_on(b.lock("LOCK")),
        Err(IoError::Locked { .. })
    ));
    drop(lock2);
    block_on(b.lock("LOCK")).unwrap();
}

#[test]
fn schedule_crash_after_lets_exactly_n_ops_run() {
    for n in 0..40u64 {
        let b = sim(n);
        b.schedule_crash_after(n);
        let mut done = 0u64;
        let f = match block_on(b.open("f", OpenMode::Create)) {
            Ok(f) => {
                done += 1;
                Some(f)
            }
            Err(IoError::Crashed { .. }) => None,
            Err(e) => panic!("{e}"),
        };
        if let Some(f) = f {
            for i in 0.. {
                let r = match i % 5 {
                    0 => block_on(f.write_at(i, vec![i as u8])),
                    1 => block_on(f.read_at(0, 1)).map(drop),
                    2 => block_on(f.sync_data()),
                    3 => block_on(b.sync_dir("")),
                    _ => block_on(b.open("nope", OpenMode::Existing)).map(drop),
                };
                match r {
                    Err(IoError::Crashed { .. }) => break,
                    // Failing verbs count as ops too.
                    Ok(()) | Err(IoError::NotFound { .. }) => done += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(done, n);
        assert!(b.is_crashed());
        assert_eq!(b.stats().ops, n);
        assert_eq!(b.stats().crashes, 1);
        b.restart();
        // One-shot: the machine stays up now.
        for _ in 0..100 {
            block_on(b.exists("f")).unwrap();
        }
    }
}

#[test]
fn crash_after_ops_in_config() {
    let b = SimBackend::new(
        9,
        SimConfig {
            crash_after_ops: Some(3),
            ..SimConfig::default()
        },
    );
    for _ in 0..3 {
        block_on(b.exists("")).unwrap();
    }
    assert!(matches!(
        block_on(b.exists("")),
        Err(IoError::Crashed { .. })
    ));
}

#[test]
fn write_error_rate_one_fails_every_write_without_effect() {
    let b = sim(5);
    let f = durable_file(&b, "f", b"original");
    b.set_faults(SimConfig {
        write_error_rate: 1.0,
        ..SimConfig::default()
    });
    for i in 0..50 {
        assert!(matches!(
            block_on(f.write_at(i, b"zzz".to_vec())),
            Err(IoError::Injected { op: "write", .. })
        ));
        assert!(matches!(
            block_on(f.set_len(i)),
            Err(IoError::Injected { op: "set_len", .. })
        ));
    }
    assert_eq!(b.volatile_bytes("f").unwrap(), b"original");
    assert_eq!(b.stats().injected_errors, 100);
    // Nothing pending either: a crash keeps the original.
    crash_restart(&b);
    assert_eq!(read_file(&b, "f").unwrap(), b"original");
    // Reads and syncs are unaffected by the write rate.
    let f = open(&b, "f", OpenMode::Existing);
    sync(&f);
    // Turning injection off, then on again.
    b.faults_enabled(false);
    write(&f, 0, b"O");
    b.faults_enabled(true);
    assert!(block_on(f.write_at(0, b"x".to_vec())).is_err());
    b.set_faults(SimConfig::default());
    write(&f, 0, b"P");
    assert_eq!(b.volatile_bytes("f").unwrap(), b"Priginal");
}

#[test]
fn injected_dir_and_sync_errors_have_no_effect() {
    let b = sim(6);
    let f = durable_file(&b, "f", b"v1");
    write(&f, 0, b"v2");
    b.set_faults(SimConfig {
        sync_error_rate: 1.0,
        dir_error_rate: 1.0,
        ..SimConfig::default()
    });
    assert!(matches!(
        block_on(f.sync_data()),
        Err(IoError::Injected { .. })
    ));
    assert_eq!(b.durable_bytes("f").unwrap(), b"v1");
    assert!(matches!(
        block_on(b.open("g", OpenMode::Create)),
        Err(IoError::Injected { .. })
    ));
    assert!(matches!(
        block_on(b.rename("f", "h")),
        Err(IoError::Injected { .. })
    ));
    assert!(matches!(
        block_on(b.remove("f")),
        Err(IoError::Injected { .. })
    ));
    assert!(matches!(
        block_on(b.create_dir("d")),
        Err(IoError::Injected { .. })
    ));
    assert!(matches!(
        block_on(b.sync_dir("")),
        Err(IoError::Injected { .. })
    ));
    // Non-injected errors still win: a missing file is NotFound, not Injected.
    assert!(matches!(
        block_on(b.open("missing", OpenMode::Existing)),
        Err(IoError::NotFound { .. })
    ));
    assert_eq!(b.file_names(), vec!["f".to_owned()]);
    assert_eq!(b.pending_dir_ops(), 0);
    // The failed sync left the write pending: a later successful sync makes it durable.
    b.set_faults(SimConfig::default());
    sync(&f);
    assert_eq!(b.durable_bytes("f").unwrap(), b"v2");
}

#[test]
fn zero_rates_never_fail() {
    let b = sim(7);
    let f = open(&b, "f", OpenMode::Create);
    for i in 0..500u64 {
        write(&f, i, &[i as u8]);
        block_on(f.read_at(i, 1)).unwrap();
        sync(&f);
        sync_dir(&b, "");
    }
    assert_eq!(b.stats().injected_errors, 0);
}

/// A script mixing every verb with probabilistic faults and crashes; returns a log of outcomes.
fn script(seed: u64) -> Vec<String> {
    let b = SimBackend::new(seed, SimConfig::uniform(0.2));
    let mut log = Vec::new();
    let clock = b.clock();
    let entropy = b.entropy();
    for round in 0..4u64 {
        let f = block_on(b.open("data", OpenMode::Create));
        log.push(format!(
            "open {:?}",
            f.as_ref().map(|f| f.path().to_owned())
        ));
        if let Ok(f) = f {
            for i in 0..30u64 {
                let r = block_on(f.write_at(i * 3, vec![(round * 31 + i) as u8; 5]));
                log.push(format!("write {r:?}"));
                let r = block_on(f.read_at(i, 2));
                log.push(format!("read {r:?}"));
                if i % 7 == 0 {
                    log.push(format!("sync {:?}", block_on(f.sync_data())));
                }
                if i % 11 == 0 {
                    let tmp = format!("t{i}");
                    let r = block_on(b.open(&tmp, OpenMode::Create)).map(drop);
                    log.push(format!("tmp {r:?}"));
                    log.push(format!("rename {:?}", block_on(b.rename(&tmp, "renamed"))));
                    log.push(format!("sync_dir {:?}", block_on(b.sync_dir(""))));
                }
            }
        }
        b.restart();
        log.push(format!("files {:?}", b.file_names()));
        log.push(format!("data {:?}", b.volatile_bytes("data")));
        log.push(format!(
            "now {} {}",
            clock.now_millis(),
            clock.monotonic_nanos()
        ));
        log.push(format!("entropy {}", entropy.next_u64()));
    }
    log.push(format!("{:?}", b.stats()));
    log
}

#[test]
fn same_seed_same_outcomes_different_seed_different() {
    let a = script(42);
    assert_eq!(a, script(42));
    assert_ne!(a, script(43));
    assert!(
        a.iter().any(|l| l.contains("Injected")),
        "faults must occur"
    );
}

#[test]
fn set_len_extends_with_zeros_and_read_past_end_is_eof() {
    let b = sim(8);
    let f = open(&b, "f", OpenMode::CreateNew);
    write(&f, 0, b"abc");
    block_on(f.set_len(6)).unwrap();
    assert_eq!(block_on(f.len()).unwrap(), 6);
    assert_eq!(block_on(f.read_at(0, 6)).unwrap(), b"abc\0\0\0");
    block_on(f.set_len(2)).unwrap();
    assert_eq!(block_on(f.read_at(0, 2)).unwrap(), b"ab");
    match block_on(f.read_at(1, 2)) {
        Err(IoError::UnexpectedEof {
            offset: 1,
            len: 2,
            file_len: 2,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        block_on(f.read_at(u64::MAX, 1)),
        Err(IoError::UnexpectedEof { .. })
    ));
    // A gap written past the end reads as zeros.
    write(&f, 4, b"z");
    assert_eq!(block_on(f.read_at(0, 5)).unwrap(), b"ab\0\0z");
    assert_eq!(block_on(f.read_at(5, 0)).unwrap(), b"");
}

#[test]
fn lock_is_exclusive_and_released_on_drop() {
    let b = sim(10);
    let g = block_on(b.lock("db/LOCK")).unwrap();
    assert!(matches!(
        block_on(b.clone().lock("db/LOCK")),
        Err(IoError::Locked { .. })
    ));
    let other = block_on(b.lock("other/LOCK")).unwrap();
    drop(g);
    let g2 = block_on(b.lock("db/LOCK")).unwrap();
    drop(other);
    // Released by restart too.
    b.restart();
    let _g3 = block_on(b.lock("db/LOCK")).unwrap();
    drop(g2);
    assert!(matches!(
        block_on(b.lock("db/LOCK")),
        Err(IoError::Locked { .. })
    ));
}

#[test]
fn namespace_verbs() {
    let b = sim(11);
    block_on(b.create_dir("a/b")).unwrap();
    open(&b, "a/b/f1", OpenMode::CreateNew);
    open(&b, "a/f2", OpenMode::Create);
    assert!(matches!(
        block_on(b.open("a/f2", OpenMode::CreateNew)),
        Err(IoError::AlreadyExists { .. })
    ));
    assert!(matches!(
        block_on(b.open("zz/f", OpenMode::Create)),
        Err(IoError::NotFound { .. })
    ));
    assert!(matches!(
        block_on(b.open("/abs", OpenMode::Create)),
        Err(IoError::InvalidPath { .. })
    ));
    assert_eq!(block_on(b.list("")).unwrap(), vec!["a".to_owned()]);
    assert_eq!(
        block_on(b.list("a")).unwrap(),
        vec!["b".to_owned(), "f2".to_owned()]
    );
    assert!(block_on(b.remove_dir("a/b")).is_err(), "not empty");
    block_on(b.remove("a/b/f1")).unwrap();
    block_on(b.remove_dir("a/b")).unwrap();
    assert!(!block_on(b.exists("a/b")).unwrap());
    assert_eq!(b.file_names(), vec!["a/f2".to_owned()]);
}

#[test]
fn open_handle_survives_unlink_but_data_dies_at_crash() {
    let b = sim(12);
    let f = durable_file(&b, "f", b"keep");
    block_on(b.remove("f")).unwrap();
    sync_dir(&b, "");
    write(&f, 0, b"KEEP");
    assert_eq!(block_on(f.read_at(0, 4)).unwrap(), b"KEEP");
    sync(&f);
    crash_restart(&b);
    assert!(b.file_names().is_empty());
}

#[test]
fn corrupt_and_truncate_durable() {
    let b = sim(13);
    durable_file(&b, "f", b"abcdef");
    b.corrupt("f", 1, 0x20).unwrap();
    assert_eq!(b.volatile_bytes("f").unwrap(), b"aBcdef");
    assert_eq!(b.durable_bytes("f").unwrap(), b"aBcdef");
    assert!(b.corrupt("f", 6, 1).is_err());
    assert!(b.corrupt("nope", 0, 1).is_err());
    b.truncate_durable("f", 3).unwrap();
    assert_eq!(b.volatile_bytes("f").unwrap(), b"aBcdef");
    crash_restart(&b);
    assert_eq!(read_file(&b, "f").unwrap(), b"aBc");
}

#[test]
fn simulated_time_moves_deterministically() {
    let b = sim(14);
    let clock = b.clock();
    let (m0, n0) = (clock.now_millis(), clock.monotonic_nanos());
    assert_eq!(m0, entidb_io::sim::SIM_EPOCH_MILLIS);
    for _ in 0..10 {
        block_on(b.exists("")).unwrap();
    }
    let n1 = clock.monotonic_nanos();
    assert!(n1 > n0 && n1 <= 10 * 20_000);
    block_on(clock.sleep(Duration::from_millis(1500)));
    assert_eq!(clock.monotonic_nanos(), n1 + 1_500_000_000);
    assert_eq!(clock.now_millis(), m0 + (n1 + 1_500_000_000) / 1_000_000);
    let b2 = sim(14);
    for _ in 0..10 {
        block_on(b2.exists("")).unwrap();
    }
    assert_eq!(b2.clock().monotonic_nanos(), n1);
    assert_eq!(b.entropy().next_u64(), b2.entropy().next_u64());
}

#[test]
fn futures_do_nothing_until_polled() {
    let b = sim(15);
    let fut = b.open("f", OpenMode::Create);
    drop(fut);
    assert!(b.file_names().is_empty());
    assert_eq!(b.stats().ops, 0);
}

#[test]
fn clones_share_the_machine_and_backend_is_object_safe() {
    let b = sim(16);
    let dynb: Arc<dyn Backend> = Arc::new(b.clone());
    let f = block_on(dynb.open("f", OpenMode::Create)).unwrap();
    block_on(f.write_at(0, b"x".to_vec())).unwrap();
    assert_eq!(b.volatile_bytes("f").unwrap(), b"x");
    b.crash_now();
    assert!(matches!(
        block_on(dynb.exists("f")),
        Err(IoError::Crashed { .. })
    ));
}

/// Random namespace histories in one directory: after a crash the namespace (name → content)
/// equals the volatile namespace right after some op at or after the last `sync_dir`.
#[test]
fn namespace_after_crash_is_a_snapshot_since_last_dir_sync() {
    use std::collections::BTreeMap;
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..300u64 {
        let b = sim(seed);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut snapshots = vec![model.clone()];
        let mut serial = 0u32;
        for _ in 0..12 {
            let name = format!("f{}", next(4));
            match next(4) {
                0 => {
                    // Create a new inode with unique, data-synced content (the content
                    // identifies the inode; data syncs are durable independently of names).
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        model.entry(name.clone())
                    {
                        serial += 1;
                        let content = format!("{name}#{serial}").into_bytes();
                        let f = open(&b, &name, OpenMode::CreateNew);
                        write(&f, 0, &content);
                        sync(&f);
                        slot.insert(content);
                    }
                }
                1 => {
                    if model.remove(&name).is_some() {
                        block_on(b.remove(&name)).unwrap();
                    }
                }
                2 => {
                    let to = format!("f{}", next(4));
                    if let Some(c) = model.remove(&name) {
                        block_on(b.rename(&name, &to)).unwrap();
                        model.insert(to, c);
                    }
                }
                _ => {
                    sync_dir(&b, "");
                    snapshots.clear();
                }
            }
            snapshots.push(model.clone());
        }
        crash_restart(&b);
        let got: BTreeMap<String, Vec<u8>> = b
            .file_names()
            .into_iter()
            .map(|n| {
                let d = read_file(&b, &n).unwrap();
                (n, d)
            })
            .collect();
        let pos = snapshots.iter().position(|s| *s == got);
        assert!(pos.is_some(), "seed {seed}: {got:?} not in {snapshots:?}");
        outcomes.insert(pos == Some(snapshots.len() - 1));
    }
    assert_eq!(outcomes.len(), 2, "both latest and older snapshots occur");
}
