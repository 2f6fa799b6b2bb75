//! Schema versions and migrations, including crashes in the middle on the `Sim` backend.

use std::sync::Arc;

use entidb::cbor::Value;
use entidb::io::{SimBackend, SimConfig};
use entidb::{Database, EntityId, Error, IndexSpec, Migrations, Options, WriteTxn};
use futures_executor::block_on;

/// Step k writes 20 marker documents into collection "m{k}" and, for k = 2, builds an index.
fn migrations(fail_at: Option<u64>) -> Migrations {
    let mut m = Migrations::new();
    for k in 1..=3u64 {
        m = m.step(k, move |tx: &mut WriteTxn| {
            Box::pin(async move {
                for i in 0..20u8 {
                    tx.collection(&format!("m{k}")).put(
                        EntityId::from_bytes([i; 16]),
                        &Value::map([("step", Value::from(k))]),
                    )?;
                }
                if k == 2 {
                    tx.collection("m1")
                        .create_index("by_step", IndexSpec::ordered(["step"]))
                        .await?;
                }
                if fail_at == Some(k) {
                    return Err(Error::InvalidArgument(format!("step {k} refuses")));
                }
                Ok(())
            })
        });
    }
    m
}

async fn markers(db: &Database, k: u64) -> u64 {
    db.collection(&format!("m{k}"))
        .count()
        .await
        .expect("count")
}

#[test]
fn steps_run_in_order_once_and_persist() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let db = Database::open(dir.path()).await.expect("open");
        assert_eq!(db.schema_version().await.expect("version"), 0);
        let r = db.migrate(&migrations(None)).await.expect("migrate");
        assert_eq!((r.from, r.to), (0, 3));
        for k in 1..=3 {
            assert_eq!(markers(&db, k).await, 20);
        }
        assert_eq!(db.collection("m1").indexes().len(), 1);
        let again = db.migrate(&migrations(None)).await.expect("again");
        assert_eq!((again.from, again.to), (3, 3));
        db.close().await.expect("close");
        let db = Database::open(dir.path()).await.expect("reopen");
        assert_eq!(db.schema_version().await.expect("version"), 3);
        // An application that only knows version 2 refuses the newer database.
        let old = Migrations::new()
            .step(1, |_| Box::pin(async { Ok(()) }))
            .step(2, |_| Box::pin(async { Ok(()) }));
        let err = db.migrate(&old).await.expect_err("too new");
        assert!(
            matches!(
                err,
                Error::SchemaTooNew {
                    found: 3,
                    supported: 2
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn a_failing_step_leaves_the_previous_version() {
    block_on(async {
        let db = Database::memory().await.expect("open");
        let err = db
            .migrate(&migrations(Some(2)))
            .await
            .expect_err("step 2 fails");
        assert!(
            matches!(err, Error::MigrationFailed { version: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("step 2 refuses"), "{err}");
        assert_eq!(db.schema_version().await.expect("version"), 1);
        assert_eq!(markers(&db, 1).await, 20);
        assert_eq!(
            markers(&db, 2).await,
            0,
            "nothing of the failed step was written"
        );
        assert!(db.collection("m1").indexes().is_empty());
        // Fixed, it continues from version 1.
        let r = db.migrate(&migrations(None)).await.expect("migrate");
        assert_eq!((r.from, r.to), (1, 3));
        // A gap in the steps is refused before anything runs.
        let gap = Migrations::new().step(5, |_| Box::pin(async { Ok(()) }));
        let err = db.migrate(&gap).await.expect_err("gap");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert_eq!(db.schema_version().await.expect("version"), 3);
    });
}

#[test]
fn a_crash_during_migration_leaves_one_version_or_the_next() {
    let seeds: u64 = std::env::var("MIGRATION_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 0..seeds {
        let sim = SimBackend::new(seed, SimConfig::default());
        let backend: Arc<dyn entidb::io::Backend> = Arc::new(sim.clone());
        block_on(async {
            let opts = Options::default().memtable_bytes(4_000);
            let db = Database::open_with(backend.clone(), opts.clone())
                .await
                .expect("open");
            sim.set_faults(SimConfig {
                crash_after_ops: Some(1 + (seed * 7) % 30),
                ..SimConfig::default()
            });
            let result = db.migrate(&migrations(None)).await;
            drop(db);
            sim.crash_now();
            sim.restart();
            sim.set_faults(SimConfig::default());
            let db = Database::open_with(backend.clone(), opts.clone())
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
            let v = db.schema_version().await.expect("version");
            eprintln!(
                "seed {seed}: migration {:?}, recovered at version {v}",
                result.as_ref().map(|_| ())
            );
            if result.is_ok() {
                assert_eq!(v, 3, "seed {seed}: an acknowledged migration is durable");
            }
            for k in 1..=3 {
                let want = if k <= v { 20 } else { 0 };
                assert_eq!(
                    markers(&db, k).await,
                    want,
                    "seed {seed}: version {v}, step {k}"
                );
            }
            assert_eq!(
                db.collection("m1").indexes().len(),
                usize::from(v >= 2),
                "seed {seed}"
            );
            assert!(
                db.verify_indexes().await.expect("verify").is_ok(),
                "seed {seed}"
            );
            // Migrating again finishes the job.
            db.migrate(&migrations(None)).await.expect("finish");
            assert_eq!(db.schema_version().await.expect("version"), 3);
        });
    }
}
