//! The encrypted backend: a byte-exact file model, wrong keys, tampering, no plaintext on
//! disk, torn writes never destroying synced data, and crash-safe rekeying.

use std::sync::Arc;

use entidb_io::{
    Backend, EncryptedBackend, IoError, KdfParams, KeySource, MemoryBackend, OpenMode, SimBackend,
    SimConfig,
};
use futures_executor::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const KEY: KeySource = KeySource::Raw([7u8; 32]);
const FAST: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};

#[test]
fn files_behave_like_plain_files() {
    block_on(async {
        let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let enc = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("open");
        for (seed, name) in [(1u64, "seg-1.sst"), (2, "wal-1.log"), (3, "MANIFEST")] {
            let mut rng = SmallRng::seed_from_u64(seed);
            let f = enc.open(name, OpenMode::CreateNew).await.expect("create");
            let mut model: Vec<u8> = Vec::new();
            for step in 0..300 {
                match rng.random_range(0..10) {
                    0..=5 => {
                        let at = rng.random_range(0..model.len() as u64 + 9000);
                        let n = rng.random_range(0..10_000);
                        let data: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                        f.write_at(at, data.clone()).await.expect("write");
                        let end = at as usize + n;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[at as usize..end].copy_from_slice(&data);
                    }
                    6 => {
                        let n = rng.random_range(0..model.len() as u64 + 5000);
                        f.set_len(n).await.expect("set_len");
                        model.resize(n as usize, 0);
                    }
                    // Both forms of sync: the same effect, on this thread or another.
                    7 if rng.random_bool(0.5) => f.sync_data().await.expect("sync"),
                    7 => f.sync_data_inline().await.expect("sync inline"),
                    _ => {
                        if model.is_empty() {
                            continue;
                        }
                        let at = rng.random_range(0..model.len());
                        let n = rng.random_range(0..=(model.len() - at).min(20_000));
                        let got = f.read_at(at as u64, n).await.expect("read");
                        assert_eq!(got, model[at..at + n], "{name} step {step}");
                    }
                }
                assert_eq!(
                    f.len().await.expect("len"),
                    model.len() as u64,
                    "{name} {step}"
                );
            }
            let past = f.read_at(model.len() as u64, 1).await;
            assert!(matches!(past, Err(IoError::UnexpectedEof { .. })));
            f.sync_data().await.expect("sync");
            // A new handle reads the same bytes.
            let g = enc.open(name, OpenMode::Existing).await.expect("reopen");
            assert_eq!(g.len().await.expect("len"), model.len() as u64);
            let all = g.read_at(0, model.len()).await.expect("read");
            assert_eq!(all, model, "{name} after reopen");
        }
        // The key file is not visible to the database.
        let names = enc.list("").await.expect("list");
        assert!(!names.iter().any(|n| n == "ENCRYPTION"), "{names:?}");
    });
}

#[test]
fn keys_tampering_and_plaintext() {
    block_on(async {
        let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let enc = EncryptedBackend::open_with(
            inner.clone(),
            KeySource::Passphrase("correct horse".into()),
            FAST,
        )
        .await
        .expect("open");
        let marker = b"PLAINTEXT-MARKER-7f3a".repeat(300);
        let f = enc
            .open("seg-9.sst", OpenMode::CreateNew)
            .await
            .expect("create");
        f.write_at(0, marker.clone()).await.expect("write");
        f.sync_data().await.expect("sync");
        // No file holds the marker.
        for name in inner.list("").await.expect("list") {
            let h = inner.open(&name, OpenMode::Existing).await.expect("open");
            let raw = h
                .read_at(0, h.len().await.expect("len") as usize)
                .await
                .expect("read");
            assert!(
                !raw.windows(17).any(|w| w == &marker[..17]),
                "{name} holds plaintext"
            );
        }
        // Wrong passphrase, wrong kind of key.
        let err = EncryptedBackend::open_with(
            inner.clone(),
            KeySource::Passphrase("battery staple".into()),
            FAST,
        )
        .await
        .expect_err("wrong key");
        assert!(matches!(err, IoError::WrongKey { .. }), "{err}");
        let err = EncryptedBackend::open(inner.clone(), KeySource::Raw([0; 32]))
            .await
            .expect_err("raw for a passphrase database");
        assert!(matches!(err, IoError::KeyDerivation { .. }), "{err}");
        // One flipped bit anywhere in a chunk: the read fails, never returns other bytes.
        let raw_file = inner
            .open("seg-9.sst", OpenMode::Existing)
            .await
            .expect("open");
        for pos in [64u64, 80, 100, 2000, 4200] {
            let b = raw_file.read_at(pos, 1).await.expect("read");
            raw_file.write_at(pos, vec![b[0] ^ 1]).await.expect("flip");
            let g = enc.open("seg-9.sst", OpenMode::Existing).await;
            let read = match g {
                Ok(g) => g.read_at(0, 4000).await,
                Err(e) => Err(e),
            };
            assert!(
                read.is_err() || read.as_ref().is_ok_and(|r| r[..] == marker[..4000]),
                "pos {pos}"
            );
            if pos < 4200 {
                assert!(
                    matches!(read, Err(IoError::Tampered { .. })),
                    "pos {pos}: {read:?}"
                );
            }
            raw_file.write_at(pos, b).await.expect("restore");
        }
        // A plaintext database cannot be opened as encrypted.
        let plain: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let p = plain
            .open("MANIFEST", OpenMode::CreateNew)
            .await
            .expect("create");
        p.write_at(0, b"plain".to_vec()).await.expect("write");
        let err = EncryptedBackend::open(plain, KEY)
            .await
            .expect_err("plaintext");
        assert!(matches!(err, IoError::NotEncrypted { .. }), "{err}");
    });
}

/// Synced bytes of a WAL file survive a crash during a later append into the same chunk,
/// whatever the simulated disk does with the unsynced writes. Appends span up to five
/// chunks (so new chunks go out as one write with their unused slots zeroed), and some
/// steps zero-fill a stretch past the end first, as the engine preallocates its WAL (so
/// later appends overwrite synced chunks through their second slot).
fn sim_backend(seed: u64) -> (SimBackend, Arc<dyn Backend>) {
    let sim = SimBackend::new(seed, SimConfig::default());
    let inner: Arc<dyn Backend> = Arc::new(sim.clone());
    (sim, inner)
}

/// A new encrypted WAL file `wal-1.log` (its header written; the directory synced by the
/// caller when it needs to be).
async fn new_wal(inner: &Arc<dyn Backend>) -> (EncryptedBackend, Arc<dyn entidb_io::File>) {
    let enc = EncryptedBackend::open(inner.clone(), KEY)
        .await
        .expect("open");
    let f = enc
        .open("wal-1.log", OpenMode::CreateNew)
        .await
        .expect("create");
    (enc, f)
}

/// Crash the simulated machine, restart it, and open `wal-1.log` again.
async fn crash_and_reopen_wal(
    sim: &SimBackend,
    inner: &Arc<dyn Backend>,
) -> Arc<dyn entidb_io::File> {
    sim.crash_now();
    sim.restart();
    let enc = EncryptedBackend::open(inner.clone(), KEY)
        .await
        .expect("reopen");
    enc.open("wal-1.log", OpenMode::Existing)
        .await
        .expect("open")
}

#[test]
fn torn_appends_never_destroy_synced_data() {
    for seed in 0..400u64 {
        let (sim, inner) = sim_backend(seed);
        block_on(async {
            let (enc, f) = new_wal(&inner).await;
            f.sync_data().await.expect("sync header");
            enc.sync_dir("").await.expect("sync dir");
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut synced: Vec<u8> = Vec::new();
            let mut written: Vec<u8> = Vec::new();
            for _ in 0..rng.random_range(1..12) {
                if rng.random_bool(0.2) {
                    let end = f.len().await.expect("len");
                    let zeros = rng.random_range(1..20_000);
                    f.write_at(end, vec![0u8; zeros])
                        .await
                        .expect("preallocate");
                }
                let n = if rng.random_bool(0.5) {
                    rng.random_range(1..3000)
                } else {
                    rng.random_range(3000..20_000)
                };
                let data: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                f.write_at(written.len() as u64, data.clone())
                    .await
                    .expect("append");
                written.extend_from_slice(&data);
                if rng.random_bool(0.5) {
                    // Odd seeds sync on the calling thread: the same durability.
                    if seed % 2 == 0 {
                        f.sync_data().await.expect("sync");
                    } else {
                        f.sync_data_inline().await.expect("sync inline");
                    }
                    synced = written.clone();
                }
            }
            drop((enc, f));
            let f = crash_and_reopen_wal(&sim, &inner).await;
            let len = f.len().await.expect("len") as usize;
            assert!(
                len >= synced.len(),
                "seed {seed}: {len} < synced {}",
                synced.len()
            );
            let got = f
                .read_at(0, synced.len())
                .await
                .expect("synced bytes read back");
            assert_eq!(got, synced, "seed {seed}");
        });
    }
}

#[test]
fn rekey_is_crash_safe() {
    for seed in 0..60u64 {
        let sim = SimBackend::new(seed, SimConfig::default());
        let inner: Arc<dyn Backend> = Arc::new(sim.clone());
        let (old, new) = (KeySource::Raw([1; 32]), KeySource::Raw([2; 32]));
        block_on(async {
            let enc = EncryptedBackend::open(inner.clone(), old.clone())
                .await
                .expect("open");
            let content: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 5000 + i as usize]).collect();
            for (i, c) in content.iter().enumerate() {
                let f = enc
                    .open(&format!("seg-{i}.sst"), OpenMode::CreateNew)
                    .await
                    .expect("create");
                f.write_at(0, c.clone()).await.expect("write");
                f.sync_data().await.expect("sync");
            }
            inner.sync_dir("").await.expect("sync dir");
            sim.set_faults(SimConfig {
                crash_after_ops: Some(seed * 3),
                ..SimConfig::default()
            });
            let r = EncryptedBackend::rekey(inner.clone(), old.clone(), new.clone(), FAST).await;
            if r.is_err() {
                sim.crash_now();
            }
            sim.restart();
            sim.set_faults(SimConfig::default());
            // Exactly one of the keys opens it, and the files read back whole.
            let with_old = EncryptedBackend::open(inner.clone(), old.clone()).await;
            let enc = match with_old {
                Ok(e) => {
                    assert!(
                        r.is_err(),
                        "seed {seed}: a finished rekey left the old key valid"
                    );
                    e
                }
                Err(IoError::WrongKey { .. }) => EncryptedBackend::open(inner.clone(), new.clone())
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: neither key opens it: {e}")),
                Err(e) => panic!("seed {seed}: {e}"),
            };
            for (i, c) in content.iter().enumerate() {
                let f = enc
                    .open(&format!("seg-{i}.sst"), OpenMode::Existing)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: seg-{i}: {e}"));
                let got = f
                    .read_at(0, c.len())
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert_eq!(&got, c, "seed {seed}");
            }
        });
    }
}

/// An open that finds a rekey unfinished finishes it only under the database's lock. It
/// used to finish it without the lock, so an `entidb inspect` run during `entidb rekey`
/// removed the copies the rekey was writing (or renamed them in before its commit point),
/// leaving files under two keys.
#[test]
fn an_open_never_finishes_a_rekey_that_holds_the_lock() {
    block_on(async {
        let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let enc = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("create");
        let f = enc
            .open("seg-0.sst", OpenMode::CreateNew)
            .await
            .expect("create a file");
        f.write_at(0, b"original".to_vec()).await.expect("write");
        f.sync_data().await.expect("sync");
        drop((f, enc));
        // A rekey in progress: its next key file and a copy exist, and it holds the lock.
        for name in ["ENCRYPTION.next", "seg-0.sst.rekey"] {
            let f = inner.open(name, OpenMode::CreateNew).await.expect("write");
            f.write_at(0, b"in progress".to_vec()).await.expect("write");
        }
        let rekeying = inner.lock("LOCK").await.expect("lock");
        let err = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect_err("an open beside a running rekey");
        assert!(matches!(err, IoError::Locked { .. }), "{err}");
        let names = inner.list("").await.expect("list");
        for name in ["ENCRYPTION.next", "seg-0.sst.rekey"] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} was touched: {names:?}"
            );
        }
        // A rekey of its own fails the same way.
        let err = EncryptedBackend::rekey(inner.clone(), KEY, KeySource::Raw([8; 32]), FAST)
            .await
            .expect_err("a second rekey");
        assert!(matches!(err, IoError::Locked { .. }), "{err}");
        // Once the rekey is gone (it crashed before its commit point), the next open undoes it.
        drop(rekeying);
        let enc = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("open after the rekey");
        let names = inner.list("").await.expect("list");
        assert!(
            !names
                .iter()
                .any(|n| n.ends_with(".next") || n.ends_with(".rekey")),
            "{names:?}"
        );
        let f = enc
            .open("seg-0.sst", OpenMode::Existing)
            .await
            .expect("open");
        assert_eq!(f.read_at(0, 8).await.expect("read"), b"original");
    });
}

/// Two opens creating the same new encrypted database: the key file is written under the
/// lock, so the one that finds the lock held fails instead of writing a second key file over
/// the first (whose key the winner is already using).
#[test]
fn a_new_key_file_is_written_under_the_lock() {
    block_on(async {
        let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let other = inner.lock("LOCK").await.expect("lock");
        let err = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect_err("create beside a holder");
        assert!(matches!(err, IoError::Locked { .. }), "{err}");
        assert!(!inner.exists("ENCRYPTION").await.expect("exists"));
        drop(other);
        EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("create");
        assert!(inner.exists("ENCRYPTION").await.expect("exists"));
        // A plaintext database held by a writer is said to be plaintext, not locked.
        let plain: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let f = plain
            .open("MANIFEST", OpenMode::CreateNew)
            .await
            .expect("file");
        f.write_at(0, b"plain".to_vec()).await.expect("write");
        let held = plain.lock("LOCK").await.expect("lock");
        let err = EncryptedBackend::open(plain.clone(), KEY)
            .await
            .expect_err("plaintext");
        assert!(matches!(err, IoError::NotEncrypted { .. }), "{err}");
        drop(held);
        // An existing database opens without the lock (read-only handles beside a writer).
        let writer = inner.lock("LOCK").await.expect("lock");
        EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("open beside a writer");
        drop(writer);
    });
}

/// The slot format is standard AES-256-GCM as documented in the module docs: a chunk written
/// by the backend (AWS-LC on native targets) opens with the RustCrypto `aes-gcm` crate (what
/// wasm32 builds use), and a chunk re-sealed by that crate opens through the backend. So
/// files move between native and browser builds.
#[test]
fn slots_are_standard_aes_gcm_in_both_directions() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    block_on(async {
        let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let enc = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("open");
        let f = enc
            .open("seg-9.sst", OpenMode::CreateNew)
            .await
            .expect("create");
        f.write_at(0, b"native sealed".to_vec())
            .await
            .expect("write");
        f.sync_data().await.expect("sync");
        drop(f);
        // Header (64 bytes): file id at 16..32. One-slot file: chunk 0 is at 64.
        let raw = inner
            .open("seg-9.sst", OpenMode::Existing)
            .await
            .expect("raw");
        let len = raw.len().await.expect("len");
        let bytes = raw.read_at(0, len as usize).await.expect("read");
        let file_id = &bytes[16..32];
        let slot = &bytes[64..];
        let counter = &slot[..8];
        let aad = |counter: &[u8]| [file_id, &0u64.to_le_bytes(), &[0u8], counter].concat();
        let KeySource::Raw(key) = KEY else {
            unreachable!("a raw key")
        };
        let cipher = aes_gcm::Aes256Gcm::new((&key).into());
        let plain = cipher
            .decrypt(
                (&slot[8..20]).into(),
                Payload {
                    msg: &slot[20..],
                    aad: &aad(counter),
                },
            )
            .expect("the RustCrypto crate opens a native slot");
        assert_eq!(u32::from_le_bytes(plain[..4].try_into().expect("4")), 13);
        assert_eq!(&plain[4..17], b"native sealed");
        // Re-seal other contents with the RustCrypto crate and a fresh nonce.
        let mut changed = plain.clone();
        changed[4..17].copy_from_slice(b"wasm32 sealed");
        let nonce = [9u8; 12];
        let ct = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: &changed,
                    aad: &aad(counter),
                },
            )
            .expect("seal");
        let mut new_slot = counter.to_vec();
        new_slot.extend_from_slice(&nonce);
        new_slot.extend_from_slice(&ct);
        assert_eq!(new_slot.len(), slot.len());
        raw.write_at(64, new_slot).await.expect("write raw");
        drop(raw);
        let f = enc
            .open("seg-9.sst", OpenMode::Existing)
            .await
            .expect("reopen");
        assert_eq!(
            f.read_at(0, 13).await.expect("read"),
            b"wasm32 sealed".to_vec()
        );
    });
}

/// Every write of a slot carries a nonce never used before, also for the same chunk rewritten
/// with the same bytes, and across handles of the same file.
#[test]
fn nonces_are_never_reused() {
    block_on(async {
        let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let enc = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("open");
        let raw = inner.clone();
        let mut seen = std::collections::HashSet::new();
        for handle in 0..3 {
            let mode = if handle == 0 {
                OpenMode::CreateNew
            } else {
                OpenMode::Existing
            };
            let f = enc.open("MANIFEST", mode).await.expect("open file");
            for _ in 0..50 {
                f.write_at(0, b"same bytes".to_vec()).await.expect("write");
                let r = raw.open("MANIFEST", OpenMode::Existing).await.expect("raw");
                // One-slot file: chunk 0's slot starts at 64; its nonce at 64 + 8.
                let nonce = r.read_at(72, 12).await.expect("read nonce");
                assert!(seen.insert(nonce), "a nonce was used twice");
            }
        }
        assert_eq!(seen.len(), 150);
    });
}

/// A write that fails leaves no trace in the slot bookkeeping: after it, a sync and another
/// write to the same chunk must still go to the slot that does not hold the synced version,
/// so a crash that loses or tears that write keeps the synced bytes.
#[test]
fn a_failed_write_does_not_redirect_later_writes_onto_the_synced_slot() {
    for seed in 0..40u64 {
        let (sim, inner) = sim_backend(seed);
        block_on(async {
            let (enc, f) = new_wal(&inner).await;
            enc.sync_dir("").await.expect("sync dir");
            f.write_at(0, b"synced record".to_vec())
                .await
                .expect("write");
            f.sync_data().await.expect("sync");
            // The next write reaches no disk.
            sim.set_faults(SimConfig {
                write_error_rate: 1.0,
                ..SimConfig::default()
            });
            f.write_at(13, b" lost".to_vec())
                .await
                .expect_err("injected");
            sim.set_faults(SimConfig::default());
            f.sync_data().await.expect("sync");
            f.write_at(13, b" later, unsynced".to_vec())
                .await
                .expect("write");
            drop((enc, f));
            let f = crash_and_reopen_wal(&sim, &inner).await;
            assert_eq!(
                f.read_at(0, 13).await.expect("the synced record survives"),
                b"synced record".to_vec(),
                "seed {seed}"
            );
        });
    }
}

/// Writes larger than one write call (1 MiB of sealed slots), a shrink to an odd length, an
/// append after it, and a reopen, on a one-slot and a two-slot file.
#[test]
fn long_writes_shrinks_and_appends() {
    block_on(async {
        let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let enc = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("open");
        let mut rng = SmallRng::seed_from_u64(5);
        for name in ["seg-2.sst", "wal-2.log"] {
            let f = enc.open(name, OpenMode::CreateNew).await.expect("create");
            let mut model: Vec<u8> = (0..3 * 1024 * 1024 + 123).map(|_| rng.random()).collect();
            f.write_at(0, model.clone()).await.expect("long write");
            f.sync_data().await.expect("sync");
            let cut = 1024 * 1024 + 4096 + 77;
            f.set_len(cut as u64).await.expect("shrink");
            model.truncate(cut);
            let tail: Vec<u8> = (0..10_000).map(|_| rng.random()).collect();
            f.write_at(cut as u64, tail.clone()).await.expect("append");
            model.extend_from_slice(&tail);
            assert_eq!(f.len().await.expect("len"), model.len() as u64, "{name}");
            assert_eq!(
                f.read_at(0, model.len()).await.expect("read"),
                model,
                "{name}"
            );
            f.sync_data().await.expect("sync");
            drop(f);
            let f = enc.open(name, OpenMode::Existing).await.expect("reopen");
            assert_eq!(f.len().await.expect("len"), model.len() as u64, "{name}");
            assert_eq!(
                f.read_at(0, model.len()).await.expect("read"),
                model,
                "{name} after reopen"
            );
        }
    });
}

/// An entropy source whose strong path fails (as `OsEntropy` does when the OS refuses), and
/// whose weak `fill` returns zeros, which would repeat nonces if encryption used it.
#[derive(Debug)]
struct NoOsRandom {
    fail: std::sync::atomic::AtomicBool,
}

impl entidb_io::Entropy for NoOsRandom {
    fn fill(&self, buf: &mut [u8]) {
        buf.fill(0);
    }
    fn try_fill(&self, buf: &mut [u8]) -> entidb_io::IoResult<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(IoError::NoEntropy {
                detail: "getrandom: unavailable".into(),
            });
        }
        SmallRng::seed_from_u64(99).fill(buf);
        Ok(())
    }
}

/// Encryption never runs on a weak random source: without the strong one, creating a key
/// file, and opening any file (each handle draws a nonce base), fail with `NoEntropy`.
#[test]
fn encryption_refuses_to_run_without_the_os_random_source() {
    block_on(async {
        let entropy = Arc::new(NoOsRandom {
            fail: std::sync::atomic::AtomicBool::new(true),
        });
        let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::with_world(
            Arc::new(entidb_io::SystemClock),
            entropy.clone(),
        ));
        let err = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect_err("no key file without randomness");
        assert!(matches!(err, IoError::NoEntropy { .. }), "{err}");
        // With the source back, the key file is made; then it fails again for file handles.
        entropy
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let enc = EncryptedBackend::open(inner.clone(), KEY)
            .await
            .expect("open");
        let f = enc
            .open("seg-1.sst", OpenMode::CreateNew)
            .await
            .expect("create");
        f.write_at(0, b"kept".to_vec()).await.expect("write");
        f.sync_data().await.expect("sync");
        drop(f);
        entropy
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for name in ["seg-1.sst", "seg-2.sst"] {
            let mode = if name == "seg-1.sst" {
                OpenMode::Existing
            } else {
                OpenMode::CreateNew
            };
            let err = enc.open(name, mode).await.expect_err("no nonce base");
            assert!(matches!(err, IoError::NoEntropy { .. }), "{name}: {err}");
        }
        entropy
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let f = enc
            .open("seg-1.sst", OpenMode::Existing)
            .await
            .expect("reopen");
        assert_eq!(f.read_at(0, 4).await.expect("read"), b"kept");
    });
}
