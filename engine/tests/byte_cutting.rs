//! Cut the WAL and the newest segment at every offset, and flip bits in the middle: reopening
//! must give a prefix of the commit history, or report corruption; never wrong data. Random
//! damage to any file (seeded, replayable) must be refused with a typed error or survived.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: any failure must panic the test"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use entidb::io::{Backend, MemoryBackend, OpenMode};
use entidb::{Database, EntityId, Error, Options, ScanOptions};
use futures_executor::block_on;

type Files = BTreeMap<String, Vec<u8>>;

async fn files_of(b: &MemoryBackend) -> Files {
    let mut out = Files::new();
    for name in b.list("").await.unwrap() {
        if name == "LOCK" {
            continue;
        }
        let f = b.open(&name, OpenMode::Existing).await.unwrap();
        let len = f.len().await.unwrap();
        out.insert(name, f.read_at(0, len as usize).await.unwrap());
    }
    out
}

async fn backend_with(files: &Files) -> Arc<MemoryBackend> {
    let b = MemoryBackend::new();
    for (name, bytes) in files {
        let f = b.open(name, OpenMode::CreateNew).await.unwrap();
        f.write_at(0, bytes.clone()).await.unwrap();
    }
    Arc::new(b)
}

/// Write `n` commits (commit i puts value i under ids[i]); return the files and the ids.
async fn build(n: u64, checkpoint: bool) -> (Files, Vec<EntityId>) {
    let b = MemoryBackend::new();
    let db = Database::open_with(Arc::new(b.clone()), Options::default().block_size(512))
        .await
        .unwrap();
    let mut ids = vec![];
    for i in 0..n {
        ids.push(db.collection("c").insert(&i).await.unwrap());
    }
    if checkpoint {
        db.checkpoint().await.unwrap();
    }
    drop(db);
    (files_of(&b).await, ids)
}

async fn contents(db: &Database) -> Result<Vec<(EntityId, u64)>, Error> {
    let page = db.collection("c").scan(ScanOptions::limit(100_000)).await?;
    page.items
        .iter()
        .map(|d| Ok((d.id(), d.decode::<u64>()?)))
        .collect()
}

/// Where the records of a WAL image end (the rest is preallocated zeros).
fn records_end(image: &[u8]) -> usize {
    image.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

fn wal_name(files: &Files) -> String {
    files
        .keys()
        .filter(|n| n.starts_with("wal-"))
        .max()
        .unwrap()
        .clone()
}

async fn open_files(files: &Files) -> Result<Database, Error> {
    Database::open_with(backend_with(files).await, Options::default()).await
}

/// Opening `files` must fail with `Corruption`; `what` names the damage in the message.
async fn expect_corruption(files: &Files, what: &str) {
    match open_files(files).await {
        Err(e) if e.is_corruption() => {}
        Err(e) => panic!("{what}: unexpected error {e}"),
        Ok(_) => panic!("{what}: damage was not reported"),
    }
}

#[test]
fn every_cut_of_the_wal_recovers_a_prefix() {
    block_on(async {
        let (files, ids) = build(12, false).await;
        let wal = wal_name(&files);
        let full = files[&wal].len();
        let end = records_end(&files[&wal]);
        assert!(full > end, "the WAL is preallocated past its records");
        let mut seen_prefixes = std::collections::BTreeSet::new();
        // Every offset up to a little past the last record, and a few in the zeros.
        for cut in (0..=end + 64).chain([end + 4096, full / 2, full]) {
            let mut f = files.clone();
            f.get_mut(&wal).unwrap().truncate(cut);
            let backend = backend_with(&f).await;
            let db = Database::open_with(backend.clone(), Options::default())
                .await
                .unwrap_or_else(|e| panic!("cut at {cut} of {full}: open failed: {e}"));
            let got = contents(&db).await.unwrap();
            let k = got.len();
            let want: Vec<_> = ids[..k].iter().copied().zip(0..k as u64).collect();
            assert_eq!(got, want, "cut at {cut}: not a prefix");
            // The first commit also created the collection: sequence == commits.
            assert_eq!(db.last_sequence(), k as u64, "cut at {cut}");
            seen_prefixes.insert(k);
            // Appending continues after the cut, and what is appended is recovered.
            let extra = db.collection("c").insert(&999u64).await.unwrap();
            drop(db);
            let db = Database::open_with(backend, Options::default())
                .await
                .unwrap();
            let again = contents(&db).await.unwrap();
            assert_eq!(
                again.len(),
                k + 1,
                "cut at {cut}: append after the cut lost"
            );
            assert_eq!(again.last(), Some(&(extra, 999)), "cut at {cut}");
        }
        assert_eq!(seen_prefixes.len(), 13, "every prefix length 0..=12 occurs");
    });
}

#[test]
fn a_flipped_bit_in_synced_wal_records_is_corruption() {
    block_on(async {
        let (files, _) = build(12, false).await;
        let wal = wal_name(&files);
        let len = records_end(&files[&wal]);
        for at in [len / 4, len / 3, len / 2, 2 * len / 3] {
            let mut f = files.clone();
            f.get_mut(&wal).unwrap()[at] ^= 0x20;
            expect_corruption(
                &f,
                &format!("flip at {at} of {len} before later synced records"),
            )
            .await;
        }
    });
}

#[test]
fn every_cut_and_flip_of_the_newest_segment_is_reported() {
    block_on(async {
        let (files, ids) = build(300, true).await;
        let seg = files
            .keys()
            .filter(|n| n.starts_with("seg-"))
            .max()
            .unwrap()
            .clone();
        let full = files[&seg].len();
        // Cutting a live segment anywhere is corruption (it is named in the manifest, so
        // it was complete and synced).
        for cut in (0..full).rev().take(200).chain([0, 1, full / 2]) {
            let mut f = files.clone();
            f.get_mut(&seg).unwrap().truncate(cut);
            expect_corruption(&f, &format!("segment cut at {cut} of {full}")).await;
        }
        // A flipped bit in a data block: open works (footer, index, filter are fine), the
        // damaged block is reported by reads and by verify, never returned as data.
        let mut f = files.clone();
        f.get_mut(&seg).unwrap()[full / 8] ^= 0x04;
        let db = open_files(&f).await.unwrap();
        assert!(db.verify().await.unwrap_err().is_corruption());
        let e = contents(&db).await.map(|v| v.len()).unwrap_err();
        assert!(e.is_corruption(), "{e}");
        // Undamaged files read back everything.
        let db = open_files(&files).await.unwrap();
        assert_eq!(contents(&db).await.unwrap().len(), ids.len());
    });
}

/// A crash during rotation can leave a newer WAL file holding only its header (or less)
/// while the previous file has a torn tail: recovery drops the empty file and cuts the tail.
#[test]
fn an_empty_newer_wal_file_does_not_seal_the_previous_one() {
    block_on(async {
        let (mut files, ids) = build(12, false).await;
        let wal = wal_name(&files);
        let len = records_end(&files[&wal]);
        files.get_mut(&wal).unwrap().truncate(len - 3);
        let header = files[&wal][..16].to_vec();
        let no = u64::from_str_radix(&wal[4..20], 16).unwrap();
        files.insert(format!("wal-{:016x}.log", no + 1), header);
        let backend = backend_with(&files).await;
        let db = Database::open_with(backend.clone(), Options::default())
            .await
            .unwrap();
        let got = contents(&db).await.unwrap();
        assert_eq!(got.len(), 11, "the torn last record is cut, the rest kept");
        assert_eq!(
            got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            ids[..11].to_vec()
        );
        drop(db);
        let names = files_of(&backend).await;
        assert!(!names.contains_key(&format!("wal-{:016x}.log", no + 1)));
    });
}

#[test]
fn a_missing_manifest_next_to_data_is_refused() {
    block_on(async {
        let (mut files, _) = build(300, true).await;
        assert!(files.remove("MANIFEST").is_some());
        expect_corruption(&files, "manifest removed").await;
    });
}

/// One random change to one file of a database: what it did, for the failure message.
fn damage(files: &mut Files, rng: &mut rand::rngs::SmallRng) -> String {
    use rand::Rng;
    let names: Vec<String> = files.keys().cloned().collect();
    let name = names[rng.random_range(0..names.len())].clone();
    let f = files.get_mut(&name).unwrap();
    let len = f.len();
    // A WAL file is mostly preallocated zeros: half the time, aim at its records.
    let span = if name.starts_with("wal-") && rng.random_bool(0.5) {
        (records_end(f) + 16).min(len)
    } else {
        len
    };
    let at = rng.random_range(0..span.max(1));
    match rng.random_range(0..5) {
        0 if len > 0 => {
            let bit = rng.random_range(0..8);
            f[at] ^= 1 << bit;
            format!("{name}: bit {bit} of byte {at} flipped")
        }
        1 if len > 0 => {
            let n = rng.random_range(1..=64).min(len - at);
            rng.fill(&mut f[at..at + n]);
            format!("{name}: {n} random bytes at {at}")
        }
        2 => {
            f.truncate(at);
            format!("{name}: cut at {at} of {len}")
        }
        3 => {
            let n = rng.random_range(1..=100);
            f.extend((0..n).map(|_| rng.random::<u8>()));
            format!("{name}: {n} random bytes appended")
        }
        _ if len > 0 => {
            let n = rng.random_range(1..=256).min(len - at);
            f[at..at + n].fill(0);
            format!("{name}: {n} bytes zeroed at {at}")
        }
        _ => format!("{name}: empty, left alone"),
    }
}

/// Random damage anywhere (manifest, segments with their blocks, index, filter and footer,
/// WAL records and the zeros after them): opening and reading never panic, a refusal is a
/// typed corruption or format error, and whatever is read is what was written (or a prefix
/// of the history, for a WAL cut), never other data. `DAMAGE_SEEDS=N` runs more seeds;
/// `DAMAGE_SEED=S` replays one.
#[test]
fn random_damage_is_reported_or_survived_never_misread() {
    use rand::SeedableRng;
    block_on(async {
        // A fixed clock and entropy: the same ids and files on every run, so a seed replays.
        let b = MemoryBackend::with_world(
            Arc::new(entidb::io::ManualClock::new(1_700_000_000_000)),
            Arc::new(entidb::io::SeededEntropy::new(7)),
        );
        let db = Database::open_with(Arc::new(b.clone()), Options::default().block_size(512))
            .await
            .unwrap();
        let mut truth: BTreeMap<EntityId, u64> = BTreeMap::new();
        for i in 0..240u64 {
            truth.insert(db.collection("c").insert(&i).await.unwrap(), i);
            if i == 180 {
                db.checkpoint().await.unwrap();
            }
        }
        let gone: Vec<EntityId> = truth.keys().step_by(7).copied().collect();
        for id in &gone {
            assert!(db.collection("c").delete(*id).await.unwrap());
        }
        drop(db);
        let files = files_of(&b).await;
        assert!(
            files.keys().any(|n| n.starts_with("seg-")),
            "{:?}",
            files.keys()
        );
        assert!(files.keys().any(|n| n.starts_with("wal-")));
        let seeds: Vec<u64> = match std::env::var("DAMAGE_SEED") {
            Ok(s) => vec![s.parse().expect("DAMAGE_SEED is a number")],
            Err(_) => {
                let n = std::env::var("DAMAGE_SEEDS")
                    .map_or(600, |s| s.parse().expect("DAMAGE_SEEDS is a number"));
                (0..n).collect()
            }
        };
        let enough = seeds.len() >= 600;
        // Outcomes: refused at open, refused by a read, read in full, read a prefix.
        let counts = std::cell::RefCell::new([0u32; 4]);
        for seed in seeds {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut f = files.clone();
            let what: Vec<String> = (0..1 + seed % 3)
                .map(|_| damage(&mut f, &mut rng))
                .collect();
            let ctx = format!("seed {seed} (replay: DAMAGE_SEED={seed}): {what:?}");
            let outcome = std::panic::AssertUnwindSafe(async {
                let refused = |e: &Error| {
                    assert!(
                        e.is_corruption() || matches!(e, Error::UnsupportedFormat { .. }),
                        "{ctx}: not a corruption or format error: {e}"
                    );
                };
                let db = match open_files(&f).await {
                    Ok(db) => db,
                    Err(e) => {
                        counts.borrow_mut()[0] += 1;
                        return refused(&e);
                    }
                };
                match contents(&db).await {
                    Ok(read) => {
                        let read: BTreeMap<EntityId, u64> = read.into_iter().collect();
                        let full = read.len() == truth.len() - gone.len()
                            && gone.iter().all(|g| !read.contains_key(g));
                        counts.borrow_mut()[if full { 2 } else { 3 }] += 1;
                        for (id, v) in &read {
                            assert_eq!(truth.get(id), Some(v), "{ctx}: {id} read wrong");
                        }
                        // What is read is the state after a prefix of the history (commit
                        // `i` inserted value `i`, then each of `gone` was deleted in turn):
                        // nothing lost from the middle, nothing deleted comes back alone.
                        let n = read.len();
                        let inserts = n as u64 <= 240 && read.values().all(|v| *v < n as u64);
                        let deletes = (1..=gone.len()).any(|j| {
                            n == truth.len() - j && gone[..j].iter().all(|g| !read.contains_key(g))
                        });
                        assert!(
                            inserts || deletes,
                            "{ctx}: {n} entities read, not a prefix of the history"
                        );
                        // What the checkpoint put in segments (values 0..=180) is not in
                        // the WAL: damage to WAL files alone cannot take it away.
                        if what.iter().all(|w| w.starts_with("wal-")) {
                            assert!(n > 180, "{ctx}: WAL damage lost checkpointed data ({n})");
                        }
                    }
                    Err(e) => {
                        counts.borrow_mut()[1] += 1;
                        refused(&e);
                    }
                }
                if let Err(e) = db.verify().await {
                    refused(&e);
                }
                match db.changes_page(0, 10_000).await {
                    Ok(page) => {
                        for w in page.windows(2) {
                            assert!(w[0].seq < w[1].seq, "{ctx}: feed out of order");
                        }
                    }
                    Err(e) => assert!(
                        e.is_corruption()
                            || matches!(
                                e,
                                Error::UnsupportedFormat { .. } | Error::FeedTruncated { .. }
                            ),
                        "{ctx}: {e}"
                    ),
                }
            });
            if let Err(panic) = futures_util::FutureExt::catch_unwind(outcome).await {
                eprintln!("panicked: {ctx}");
                std::panic::resume_unwind(panic);
            }
        }
        // The damage reaches every path: some is refused at open, some by a read, some
        // leaves everything readable (a cut of the WAL's last records reads a prefix: rare
        // here, and not required).
        let counts = counts.into_inner();
        eprintln!("refused at open, refused by a read, read in full, read a prefix: {counts:?}");
        if enough {
            assert!(counts[..3].iter().all(|&n| n > 0), "{counts:?}");
        }
    });
}
