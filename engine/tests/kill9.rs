//! Kill a real writer process with SIGKILL in a loop, on the real file system, and check that
//! every commit it acknowledged (printed after `commit().await` returned) is there after
//! reopen.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use entidb::{Database, EntityId, Options};

fn options() -> Options {
    // A small write buffer so that flushes and compactions happen while we kill.
    Options::default()
        .memtable_bytes(32 << 10)
        .compaction_trigger(3)
}

/// The child process: writes forever, printing each acknowledged commit.
#[test]
#[ignore = "helper process started by kill9_loses_no_acknowledged_commit"]
fn kill9_child_writer() {
    let dir = std::env::var("ENTIDB_KILL9_DIR").expect("ENTIDB_KILL9_DIR");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let db = Database::open_path(&dir, options()).await.expect("open");
        let mut out = std::io::stdout().lock();
        for n in 0u64.. {
            let mut tx = db.begin().await.expect("begin");
            let id = tx
                .collection("acks")
                .insert(&(n, "x".repeat((n % 300) as usize)))
                .expect("insert");
            tx.commit().await.expect("commit");
            writeln!(out, "ACK {id} {n}").expect("stdout");
            out.flush().expect("stdout");
        }
    });
}

#[test]
fn kill9_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(EntityId, u64)> = Vec::new();
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "kill9_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ENTIDB_KILL9_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                if parts.next() == Some("ACK") {
                    let id: EntityId = parts.next().unwrap().parse().unwrap();
                    let n: u64 = parts.next().unwrap().parse().unwrap();
                    v.push((id, n));
                }
            }
            v
        });
        // Let it write for a while (a different time each round), then SIGKILL.
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(300 + round * 170));
        child.kill().unwrap();
        child.wait().unwrap();
        let got = reader.join().unwrap();
        assert!(
            !got.is_empty(),
            "round {round}: child acknowledged nothing in {:?}",
            start.elapsed()
        );
        acked.extend(got);

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let db = Database::open_path(dir.path(), options()).await.unwrap();
            let c = db.collection("acks");
            for (id, n) in &acked {
                let v: Option<(u64, String)> = c.get(*id).await.unwrap();
                assert_eq!(
                    v.map(|v| v.0),
                    Some(*n),
                    "round {round}: acknowledged commit {n} ({id}) lost"
                );
            }
            let count = c.count().await.unwrap();
            assert!(count >= acked.len() as u64);
        });
    }
}
