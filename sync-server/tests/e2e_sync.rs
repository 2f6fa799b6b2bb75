//! End-to-end: the real `entidb` binary on 127.0.0.1 and several clients with real databases.

#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use entidb::{Database, EntityId};
use entidb_sync::{HttpTransport, Replicator, SyncError};
use serde_json::json;
use support::*;

const POLICIES: &str = r#"
[policies]
sw = "server_wins"
cw = "client_wins"
lww = "last_writer_wins"
fm = "field_merge"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_writes_on_two_clients_converge() {
    let (dir, server) = app_server(None).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;

    // Both offline: write, update and delete locally.
    let a1 = a
        .collection("notes")
        .insert(&json!({"by": "a", "n": 1}))
        .await
        .unwrap();
    let a2 = a
        .collection("notes")
        .insert(&json!({"by": "a", "n": 2}))
        .await
        .unwrap();
    a.collection("notes")
        .put(a1, &json!({"by": "a", "n": 10}))
        .await
        .unwrap();
    let b1 = b
        .collection("notes")
        .insert(&json!({"by": "b", "n": 1}))
        .await
        .unwrap();
    // A collection that is not synced stays local.
    b.collection("private")
        .insert(&json!({"secret": true}))
        .await
        .unwrap();

    let ra1 = ra.sync_now().await.unwrap();
    assert_eq!(ra1.pushed, 3, "{ra1:?}");
    let rb1 = rb.sync_now().await.unwrap();
    assert_eq!(rb1.pushed, 1);
    assert!(rb1.pulled >= 2, "{rb1:?}");
    ra.sync_now().await.unwrap();
    assert_eq!(contents(&a, "notes").await, contents(&b, "notes").await);
    assert_eq!(contents(&a, "notes").await.len(), 3);
    assert!(contents(&a, "private").await.is_empty());

    // A delete on b reaches a.
    b.collection("notes").delete(a2).await.unwrap();
    rb.sync_now().await.unwrap();
    ra.sync_now().await.unwrap();
    let got = contents(&a, "notes").await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(id, _)| *id != a2.to_string()));
    assert_eq!(got, contents(&b, "notes").await);
    let doc: serde_json::Value = a.collection("notes").get(b1).await.unwrap().unwrap();
    assert_eq!(doc, json!({"by": "b", "n": 1}));

    // Applied remote changes are not echoed back: nothing pending, nothing more to push.
    assert_eq!(ra.pending_ops().await.unwrap(), 0);
    assert_eq!(rb.pending_ops().await.unwrap(), 0);
    let again = ra.sync_now().await.unwrap();
    assert_eq!(
        (again.captured, again.pushed, again.pulled),
        (0, 0, 0),
        "{again:?}"
    );
    // A round with nothing to do commits nothing locally.
    let seq = a.last_sequence();
    assert_eq!(ra.capture().await.unwrap(), 0);
    ra.sync_now().await.unwrap();
    assert_eq!(
        a.last_sequence(),
        seq,
        "an idle round wrote to the local database"
    );
    let status = ra.status();
    assert!(status.online && status.last_error.is_none() && status.last_sync_millis.is_some());
}

async fn conflict(policy: &str, a_later: bool) -> (serde_json::Value, usize) {
    let (dir, server) = app_server(Some(POLICIES)).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &[policy]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &[policy]).await;
    let id = a
        .collection(policy)
        .insert(&json!({"v": "base"}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    // Both edit the same entity offline; b pushes first. With `a_later`, a's write has the
    // later clock (it is made after b's).
    if a_later {
        b.collection(policy)
            .put(id, &json!({"v": "b"}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        a.collection(policy)
            .put(id, &json!({"v": "a"}))
            .await
            .unwrap();
    } else {
        a.collection(policy)
            .put(id, &json!({"v": "a"}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        b.collection(policy)
            .put(id, &json!({"v": "b"}))
            .await
            .unwrap();
    }
    rb.sync_now().await.unwrap();
    let report = ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    let va: serde_json::Value = a.collection(policy).get(id).await.unwrap().unwrap();
    let vb: serde_json::Value = b.collection(policy).get(id).await.unwrap().unwrap();
    assert_eq!(va, vb, "replicas differ under {policy}");
    // The conflict log holds the loser.
    let resp: serde_json::Value = get_json(
        &format!("{}/v2/db/app/conflicts", server.url),
        &token("app", "a", &["read"], 60),
    )
    .await;
    let log = resp["conflicts"].as_array().unwrap().clone();
    assert_eq!(log.len(), 1, "{resp}");
    // The client sees the same log through its replicator, and counts its own rejections.
    let typed = ra.conflicts(None, 10).await.unwrap();
    assert_eq!(typed.conflicts.len(), 1);
    assert_eq!(typed.conflicts[0].id, id);
    assert_eq!(ra.status().rejected_ops, report.rejected.len() as u64);
    let loser = &log[0]["loser"];
    assert_ne!(*loser, va, "the loser is not the winner");
    assert!(*loser == json!({"v": "a"}) || *loser == json!({"v": "b"}));
    (va, report.rejected.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_server_wins() {
    let (v, rejected) = conflict("sw", true).await;
    assert_eq!(
        v,
        json!({"v": "b"}),
        "the server's version (b pushed first) wins"
    );
    assert_eq!(rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_client_wins() {
    let (v, rejected) = conflict("cw", false).await;
    assert_eq!(v, json!({"v": "a"}), "the later push wins");
    assert_eq!(rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_last_writer_wins() {
    // a wrote later: a wins although b pushed first.
    let (v, rejected) = conflict("lww", true).await;
    assert_eq!(v, json!({"v": "a"}));
    assert_eq!(rejected, 0);
    // a wrote earlier: b wins although a pushed last.
    let (v, rejected) = conflict("lww", false).await;
    assert_eq!(v, json!({"v": "b"}));
    assert_eq!(rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_field_merge() {
    let (dir, server) = app_server(Some(POLICIES)).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["fm"]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["fm"]).await;
    let id = a
        .collection("fm")
        .insert(&json!({"title": "t0", "done": false, "n": 0, "gone": 1}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();

    // Non-overlapping edits offline: a renames and removes a field, b ticks `done`.
    a.collection("fm")
        .put(id, &json!({"title": "A", "done": false, "n": 0}))
        .await
        .unwrap();
    b.collection("fm")
        .put(id, &json!({"title": "t0", "done": true, "n": 0, "gone": 1}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    let report = ra.sync_now().await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    rb.sync_now().await.unwrap();
    let want = json!({"title": "A", "done": true, "n": 0});
    let va: serde_json::Value = a.collection("fm").get(id).await.unwrap().unwrap();
    let vb: serde_json::Value = b.collection("fm").get(id).await.unwrap().unwrap();
    assert_eq!((&va, &vb), (&want, &want), "both edits survive");

    // Overlapping edits: the field follows last-writer-wins (b wrote later), and the loser
    // (a's document) is logged. a's other change still survives.
    a.collection("fm")
        .put(id, &json!({"title": "A2", "done": true, "n": 1}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.collection("fm")
        .put(id, &json!({"title": "A", "done": true, "n": 2}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    let want = json!({"title": "A2", "done": true, "n": 2});
    let va: serde_json::Value = a.collection("fm").get(id).await.unwrap().unwrap();
    let vb: serde_json::Value = b.collection("fm").get(id).await.unwrap().unwrap();
    assert_eq!((&va, &vb), (&want, &want));
    let log: serde_json::Value = get_json(
        &format!("{}/v2/db/app/conflicts", server.url),
        &token("app", "a", &["read"], 60),
    )
    .await;
    let log = log["conflicts"].as_array().unwrap().clone();
    assert_eq!(
        log.len(),
        1,
        "only the overlapping edit is a conflict: {log:?}"
    );
    assert_eq!(
        log[0]["loser"],
        json!({"title": "A2", "done": true, "n": 1})
    );
    assert_eq!(log[0]["policy"], "field_merge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_responses_are_retried_without_applying_twice() {
    let (dir, server) = app_server(None).await;
    let lossy = Arc::new(LossyTransport {
        inner: HttpTransport::new(&server.url, &token("app", "a", &["read", "write"], 3600)),
        drop_responses: AtomicU32::new(2),
    });
    let (a, ra) = client_with(&dir.path().join("a"), "app", "a", &["notes"], lossy.clone()).await;
    for i in 0..5 {
        a.collection("notes")
            .insert(&json!({"i": i}))
            .await
            .unwrap();
    }
    // The first two pushes reach the server but their answers are lost; the retry is
    // recognised by (client id, op id).
    let report = ra.sync_now().await.unwrap();
    assert_eq!(report.pushed, 5);
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    rb.sync_now().await.unwrap();
    assert_eq!(contents(&b, "notes").await, contents(&a, "notes").await);
    // One oplog entry per op: the whole history holds exactly 5 puts.
    let pull: serde_json::Value = get_json(
        &format!("{}/v2/db/app/pull?since=0", server.url),
        &token("app", "x", &["read"], 60),
    )
    .await;
    assert_eq!(pull["changes"].as_array().unwrap().len(), 5, "{pull}");
}

/// A merged op's later ops were made on the client's own document, not on the merge: they
/// are merged in turn, so the other side's change survives them too, whether they follow
/// in the same push or in a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_after_a_merged_op_are_merged_too() {
    for push_batch in [1, 500] {
        ops_after_a_merged_op(push_batch).await;
    }
}

async fn ops_after_a_merged_op(push_batch: usize) {
    let pair = lossy_pair("fm", push_batch).await;
    let (a, ra, b, rb) = (&pair.a, &pair.ra, &pair.b, &pair.rb);
    let id = pair
        .shared("fm", json!({"title": "t0", "done": false, "n": 0}))
        .await;
    let fm = a.collection("fm");
    b.collection("fm")
        .put(id, &json!({"title": "t0", "done": true, "n": 0}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    // Two edits on a: the first is merged with b's, the second builds on the first.
    fm.put(id, &json!({"title": "A", "done": false, "n": 0}))
        .await
        .unwrap();
    fm.put(id, &json!({"title": "A", "done": false, "n": 5}))
        .await
        .unwrap();
    let report = ra.sync_now().await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    rb.sync_now().await.unwrap();
    let want = json!({"title": "A", "done": true, "n": 5});
    for db in [&a, &b] {
        let v: serde_json::Value = db.collection("fm").get(id).await.unwrap().unwrap();
        assert_eq!(v, want, "b's edit survives both of a's");
    }
    let log = ra.conflicts(None, 10).await.unwrap().conflicts;
    assert!(
        log.is_empty(),
        "no field was changed on both sides: {log:?}"
    );
}

/// A merge where the other side won a field (it wrote later) keeps that side's stamp, so
/// the client's next op, older than that write, loses the field again instead of
/// overwriting it: last-writer-wins per field holds across the merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_keeps_the_newer_stamp_of_its_sides() {
    let pair = lossy_pair("fm", 1).await;
    let (a, ra, b, rb) = (&pair.a, &pair.ra, &pair.b, &pair.rb);
    let id = pair.shared("fm", json!({"f": "t0"})).await;
    let fm = a.collection("fm");
    fm.put(id, &json!({"f": "a1"})).await.unwrap();
    fm.put(id, &json!({"f": "a2", "g": 1})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.collection("fm")
        .put(id, &json!({"f": "b"}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    for db in [&a, &b] {
        let v: serde_json::Value = db.collection("fm").get(id).await.unwrap().unwrap();
        assert_eq!(
            v,
            json!({"f": "b", "g": 1}),
            "b's later f survives both of a's ops"
        );
    }
    // Each of a's ops lost f: two conflicts.
    let log = ra.conflicts(None, 10).await.unwrap().conflicts;
    assert_eq!(log.len(), 2, "{log:?}");
}

/// An op after a merged one, made later than the other side's write, does not take back a
/// field the merged op lost: it is merged from the document its client pushed for the
/// merged op (the server keeps it), in which that field is the client's old value, not a
/// change of the later op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_op_does_not_take_back_a_field_its_merged_op_lost() {
    for push_batch in [1, 500] {
        let pair = lossy_pair("fm", push_batch).await;
        let (a, ra, b, rb) = (&pair.a, &pair.ra, &pair.b, &pair.rb);
        let id = pair.shared("fm", json!({"f": "t0"})).await;
        let fm = a.collection("fm");
        fm.put(id, &json!({"f": "a1"})).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        b.collection("fm")
            .put(id, &json!({"f": "b"}))
            .await
            .unwrap();
        rb.sync_now().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Made after b's write, and it changes only g.
        fm.put(id, &json!({"f": "a1", "g": 1})).await.unwrap();
        ra.sync_now().await.unwrap();
        rb.sync_now().await.unwrap();
        for db in [&a, &b] {
            let v: serde_json::Value = db.collection("fm").get(id).await.unwrap().unwrap();
            assert_eq!(v, json!({"f": "b", "g": 1}), "push_batch {push_batch}");
        }
        // The first op lost f: one conflict.
        let log = ra.conflicts(None, 10).await.unwrap().conflicts;
        assert_eq!(log.len(), 1, "push_batch {push_batch}: {log:?}");
    }
}

/// Field conflicts compare the stamp of the write that changed *that* field: after a merge
/// took c's (older) g beside d's (newer) f, e's g, written after c's, still wins g.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_conflicts_compare_the_stamp_of_the_field() {
    let (dir, server) = app_server(Some(POLICIES)).await;
    let mut replicas = Vec::new();
    for name in ["c", "d", "e"] {
        replicas.push(client(&server.url, &dir.path().join(name), "app", name, &["fm"]).await);
    }
    let [(c, rc), (d, rd), (e, re)] = &replicas[..] else {
        unreachable!()
    };
    let id = c
        .collection("fm")
        .insert(&json!({"f": 0, "g": 0}))
        .await
        .unwrap();
    rc.sync_now().await.unwrap();
    rd.sync_now().await.unwrap();
    re.sync_now().await.unwrap();
    // Offline, in this order: c changes g, e changes g, d changes f.
    c.collection("fm")
        .put(id, &json!({"f": 0, "g": "c"}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    e.collection("fm")
        .put(id, &json!({"f": 0, "g": "e"}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    d.collection("fm")
        .put(id, &json!({"f": "d", "g": 0}))
        .await
        .unwrap();
    // d, then c (merged: no field in common), then e (g against c's, which is older).
    rd.sync_now().await.unwrap();
    rc.sync_now().await.unwrap();
    re.sync_now().await.unwrap();
    rc.sync_now().await.unwrap();
    rd.sync_now().await.unwrap();
    for db in [c, d, e] {
        let v: serde_json::Value = db.collection("fm").get(id).await.unwrap().unwrap();
        assert_eq!(v, json!({"f": "d", "g": "e"}));
    }
    // c's g lost to e's: one conflict.
    let log = rc.conflicts(None, 10).await.unwrap().conflicts;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].loser_client.as_deref(), Some("c"));
}

/// After a retried op's `duplicate` answer, a later op of the same client on a field-merge
/// entity is merged from the retried op's write (the version it was made on), not from the
/// older base the client last saw: the retried op's own changes are not taken for the
/// client's, so a field another client changed after seeing them keeps its value, and
/// nothing is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_ops_later_edit_merges_from_the_retried_write() {
    let pair = lossy_pair("fm", 500).await;
    let (lossy, a, ra, b, rb) = (&pair.lossy, &pair.a, &pair.ra, &pair.b, &pair.rb);
    let fm = a.collection("fm");
    let id = fm.insert(&json!({"x": 0})).await.unwrap();
    ra.sync_now().await.unwrap();
    // a's edit is applied; its answer is lost.
    fm.put(id, &json!({"x": 1})).await.unwrap();
    lossy.drop_responses.store(1, Ordering::SeqCst);
    assert!(matches!(ra.push().await, Err(SyncError::Transport(_))));
    fm.put(id, &json!({"x": 1, "y": 2})).await.unwrap();
    // b sees x = 1 and changes it.
    rb.sync_now().await.unwrap();
    let vb: serde_json::Value = b.collection("fm").get(id).await.unwrap().unwrap();
    assert_eq!(vb, json!({"x": 1}));
    b.collection("fm").put(id, &json!({"x": 2})).await.unwrap();
    rb.sync_now().await.unwrap();
    let report = ra.sync_now().await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    rb.sync_now().await.unwrap();
    for db in [&a, &b] {
        let v: serde_json::Value = db.collection("fm").get(id).await.unwrap().unwrap();
        assert_eq!(v, json!({"x": 2, "y": 2}));
    }
    let log = ra.conflicts(None, 10).await.unwrap().conflicts;
    assert!(
        log.is_empty(),
        "b changed x after seeing a's change: {log:?}"
    );
}

/// The app server with the test policies, a client "a" whose next answers can be lost
/// (`lossy.drop_responses`; one attempt per request, `push_batch` ops per push) and a plain
/// client "b", both syncing `collection`.
struct LossyPair {
    _dir: tempfile::TempDir,
    _server: Server,
    lossy: Arc<LossyTransport>,
    a: Database,
    ra: Replicator,
    b: Database,
    rb: Replicator,
}

impl LossyPair {
    /// A new entity of `collection`, inserted by a and synced to b.
    async fn shared(&self, collection: &str, doc: serde_json::Value) -> EntityId {
        let id = self.a.collection(collection).insert(&doc).await.unwrap();
        self.ra.sync_now().await.unwrap();
        self.rb.sync_now().await.unwrap();
        id
    }
}

async fn lossy_pair(collection: &str, push_batch: usize) -> LossyPair {
    let (dir, server) = app_server(Some(POLICIES)).await;
    let lossy = Arc::new(LossyTransport {
        inner: HttpTransport::new(&server.url, &token("app", "a", &["read", "write"], 3600)),
        drop_responses: AtomicU32::new(0),
    });
    let mut cfg = entidb_sync::SyncConfig::new("app", "a", &[collection]);
    cfg.max_attempts = 1;
    cfg.push_batch = push_batch;
    let (a, ra) = client_with_config(&dir.path().join("a"), cfg, lossy.clone()).await;
    let (b, rb) = client(
        &server.url,
        &dir.path().join("b"),
        "app",
        "b",
        &[collection],
    )
    .await;
    LossyPair {
        _dir: dir,
        _server: server,
        lossy,
        a,
        ra,
        b,
        rb,
    }
}

/// A retried op is answered `duplicate` with the entity's state *now*, which may include
/// another client's later write. The client's next op on that entity must not take that
/// version as its base (it never saw that write): under server-wins it is concurrent with
/// it and is rejected, not applied over it. An entity nobody else wrote meanwhile takes
/// the next op without a conflict: the client's own latest write is never one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_ops_answer_does_not_hide_a_later_conflict() {
    let pair = lossy_pair("sw", 2).await;
    let (lossy, a, ra, b, rb) = (&pair.lossy, &pair.a, &pair.ra, &pair.b, &pair.rb);
    let x = pair.shared("sw", json!({"v": "base"})).await;
    // Two edits of each of two entities; the first batch (the first edit of each) is
    // applied, and its answer is lost.
    let z = EntityId::from_bytes([7; 16]);
    let sw = a.collection("sw");
    sw.put(x, &json!({"v": "a1"})).await.unwrap();
    sw.put(z, &json!({"v": "z1"})).await.unwrap();
    sw.put(x, &json!({"v": "a2"})).await.unwrap();
    sw.put(z, &json!({"v": "z2"})).await.unwrap();
    lossy.drop_responses.store(1, Ordering::SeqCst);
    assert!(matches!(ra.push().await, Err(SyncError::Transport(_))));
    assert_eq!(ra.pending_ops().await.unwrap(), 4);
    // Another client sees a1 and writes x after it.
    rb.sync_now().await.unwrap();
    let vb: serde_json::Value = b.collection("sw").get(x).await.unwrap().unwrap();
    assert_eq!(vb, json!({"v": "a1"}));
    b.collection("sw").put(x, &json!({"v": "b"})).await.unwrap();
    rb.sync_now().await.unwrap();
    // The retry: the first batch is answered duplicate (x: b's state), then a2 is
    // concurrent with b's write and loses; z2 follows a's own z1 and is applied.
    let report = ra.sync_now().await.unwrap();
    assert_eq!(report.rejected, vec![("sw".to_owned(), x)]);
    rb.sync_now().await.unwrap();
    for db in [&a, &b] {
        let vx: serde_json::Value = db.collection("sw").get(x).await.unwrap().unwrap();
        let vz: serde_json::Value = db.collection("sw").get(z).await.unwrap().unwrap();
        assert_eq!((vx, vz), (json!({"v": "b"}), json!({"v": "z2"})));
    }
    let log = ra.conflicts(None, 10).await.unwrap().conflicts;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].id, x);
    assert_eq!(log[0].loser_client.as_deref(), Some("a"));
    let loser = log[0].loser.as_ref().unwrap().to_value().unwrap();
    assert_eq!(
        loser,
        entidb::cbor::Value::Map(vec![(
            entidb::cbor::Value::Text("v".into()),
            entidb::cbor::Value::Text("a2".into())
        )])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_crash_between_push_and_ack() {
    let (dir, server) = app_server(None).await;
    let cdir = dir.path().join("a");
    {
        let lossy = Arc::new(LossyTransport {
            inner: HttpTransport::new(&server.url, &token("app", "a", &["read", "write"], 3600)),
            drop_responses: AtomicU32::new(100),
        });
        let mut cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
        cfg.max_attempts = 1;
        let (local, r) = client_with_config(&cdir, cfg, lossy).await;
        local
            .collection("notes")
            .insert(&json!({"x": 1}))
            .await
            .unwrap();
        local
            .collection("notes")
            .insert(&json!({"x": 2}))
            .await
            .unwrap();
        // Pushed, applied on the server, never acknowledged: the client "crashes".
        assert!(matches!(r.sync_now().await, Err(SyncError::Transport(_))));
        assert_eq!(r.pending_ops().await.unwrap(), 2);
        assert!(!r.status().online && r.status().last_error.is_some());
        drop(r);
        local.close().await.unwrap();
    }
    // Restart: the outbox survived; the retry is deduplicated.
    let (a, ra) = client(&server.url, &cdir, "app", "a", &["notes"]).await;
    assert_eq!(ra.pending_ops().await.unwrap(), 2);
    let report = ra.sync_now().await.unwrap();
    assert_eq!(report.pushed, 2);
    assert_eq!(ra.pending_ops().await.unwrap(), 0);
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    rb.sync_now().await.unwrap();
    assert_eq!(contents(&b, "notes").await, contents(&a, "notes").await);
    assert_eq!(contents(&b, "notes").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_sync_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None, &[]);
    server.create_db("app").await;
    let addr = server.addr();
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    a.collection("notes")
        .insert(&json!({"n": 1}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    // SIGTERM: the server finishes and exits cleanly.
    assert!(server.stop(), "graceful shutdown exits with success");
    a.collection("notes")
        .insert(&json!({"n": 2}))
        .await
        .unwrap();
    // While it is down the sync fails after its retries, and nothing is lost.
    let err = ra.sync_now().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(ra.pending_ops().await.unwrap(), 1);
    // Same data directory and address: the client carries on.
    let _server = Server::start_at(&data, None, &addr, &[]);
    let report = ra.sync_now().await.unwrap();
    assert_eq!(report.pushed, 1);
    let (b, rb) = client(
        &format!("http://{addr}"),
        &dir.path().join("b"),
        "app",
        "b",
        &["notes"],
    )
    .await;
    rb.sync_now().await.unwrap();
    assert_eq!(contents(&b, "notes").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_behind_retention_rebootstraps_and_keeps_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &["--retention", "5"]);
    server.create_db("app").await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    let doomed = b
        .collection("notes")
        .insert(&json!({"doomed": true}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    ra.sync_now().await.unwrap();
    assert_eq!(contents(&a, "notes").await.len(), 1);
    // b deletes one entity and writes 30 more, one push each: far beyond a retention of 5.
    b.collection("notes").delete(doomed).await.unwrap();
    rb.sync_now().await.unwrap();
    for i in 0..30 {
        b.collection("notes")
            .insert(&json!({"i": i}))
            .await
            .unwrap();
        rb.sync_now().await.unwrap();
    }
    // A push that asks for the page after a cursor behind the retention horizon is still
    // answered; the page is left out, and a pull with that cursor gets `rebootstrap`.
    let http = reqwest::Client::new();
    let c = token("app", "c", &["read", "write"], 60);
    let answer = http
        .post(format!("{}/v2/db/app/push?since=1", server.url))
        .bearer_auth(&c)
        .json(&json!({"client_id": "c", "ops": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert!(answer.get("pull").is_none(), "{answer}");
    let pull = http
        .get(format!("{}/v2/db/app/pull?since=1", server.url))
        .bearer_auth(&c)
        .send()
        .await
        .unwrap();
    assert_eq!(pull.status(), 410);
    // Meanwhile a wrote offline.
    let mine = a
        .collection("notes")
        .insert(&json!({"mine": true}))
        .await
        .unwrap();
    let report = ra.sync_now().await.unwrap();
    assert!(report.bootstrapped, "{report:?}");
    rb.sync_now().await.unwrap();
    let got = contents(&a, "notes").await;
    assert_eq!(got, contents(&b, "notes").await);
    assert_eq!(
        got.len(),
        31,
        "30 from b plus a's own write; the deleted one is gone"
    );
    assert!(got.iter().any(|(id, _)| *id == mine.to_string()));
    assert!(got.iter().all(|(id, _)| *id != doomed.to_string()));
}

/// Clients `a` and `b` of database `app`, syncing `notes`, each after a first round.
async fn two_synced_clients(
    server: &Server,
    dir: &std::path::Path,
) -> ((Database, Replicator), (Database, Replicator)) {
    let (a, ra) = client(&server.url, &dir.join("a"), "app", "a", &["notes"]).await;
    let (b, rb) = client(&server.url, &dir.join("b"), "app", "b", &["notes"]).await;
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    ((a, ra), (b, rb))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_a_push() {
    let (dir, server) = app_server(None).await;
    let ((a, ra), (b, rb)) = two_synced_clients(&server, dir.path()).await;
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let report = ra.sync_wait(Duration::from_secs(20)).await.unwrap();
        (report, started.elapsed(), a)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = b
        .collection("notes")
        .insert(&json!({"live": 1}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    let (report, elapsed, a) = waiter.await.unwrap();
    assert_eq!(report.pulled, 1);
    // It returned because of the push, long before the 20 s wait ran out.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert!(a.collection("notes").exists(id).await.unwrap());
}

/// A live round (`sync_wait`) does not hold the app's writes until its long poll runs out:
/// a write to a synced collection ends the wait and is pushed in the same round; a write to
/// another collection, or a collection event, does not end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_ends_the_long_poll_and_is_pushed_at_once() {
    // Long polls of up to 60 s, so that a round that waited them out would miss the 30 s
    // bound below.
    let (dir, server) = app_server(Some("max_wait_ms = 60000\nrequest_timeout_ms = 90000\n")).await;
    let ((a, ra), (b, rb)) = two_synced_clients(&server, dir.path()).await;
    let ra_later = ra.clone();
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let report = ra.sync_wait(Duration::from_secs(60)).await.unwrap();
        (report, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.collection("local_only")
        .insert(&json!({"not": "synced"}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "a write to an unsynced collection ended the wait"
    );
    // Creating the synced collection is a feed record capture skips (no entity): it must
    // not end the wait either, or every later wait would end at once on the same record.
    assert!(!a.collections().iter().any(|c| c == "notes"));
    a.create_collection("notes").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "creating a synced collection ended the wait"
    );
    let id = a
        .collection("notes")
        .insert(&json!({"live": "from a"}))
        .await
        .unwrap();
    let (report, elapsed) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the round ends when the app writes, not when the 60 s wait runs out")
        .unwrap();
    assert_eq!((report.captured, report.pushed, report.pulled), (1, 1, 0));
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    rb.sync_now().await.unwrap();
    assert!(b.collection("notes").exists(id).await.unwrap());
    // A round dropped while its poll waits with nothing to pull: the server has no reason
    // to answer it (the push above woke the first poll anyway), so only the transport
    // closing the request frees its place before its 60 s are up.
    let round = tokio::spawn(async move { ra_later.sync_wait(Duration::from_secs(60)).await });
    assert!(
        live_waiters_reach(&server.url, 1, Duration::from_secs(10)).await,
        "the server never counted the live round's poll"
    );
    assert!(!round.is_finished(), "a round with nothing to pull ended");
    round.abort();
    // The abandoned long poll does not keep its place on the server until its 60 s are up.
    assert!(
        live_waiters_reach(&server.url, 0, Duration::from_secs(30)).await,
        "the server still counts the dropped long poll"
    );
}

/// The server's `/metrics` page.
async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The server's count of long polls and event streams waiting (`/metrics`).
async fn live_waiters(url: &str) -> u64 {
    metrics_text(url)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("entidb_sync_live_waiters "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Whether the server's count of waiters reaches `n` within `limit` (polled every 20 ms).
async fn live_waiters_reach(url: &str, n: u64, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while live_waiters(url).await != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

/// A round whose long poll gave way to a local write still pulls: it pushes the write,
/// asking for the page, and when that page does not reach the end of the oplog it pulls the
/// rest without waiting, so a client that writes more often than its polls complete keeps
/// receiving the others' changes. (Pages of one transaction here, and b pushed two: the
/// push's page holds only the first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_woken_by_a_local_write_still_pulls() {
    let (dir, server) = app_server(None).await;
    let slow = Arc::new(SlowPolls {
        inner: HttpTransport::new(&server.url, &token("app", "a", &["read", "write"], 3600)),
        delay: Duration::from_secs(10),
    });
    let mut cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
    cfg.pull_limit = 1;
    let (a, ra) = client_with_config(&dir.path().join("a"), cfg, slow).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    ra.sync_now().await.unwrap();
    let mut theirs = Vec::new();
    for i in 0..2 {
        let id = b
            .collection("notes")
            .insert(&json!({"from": "b", "i": i}))
            .await
            .unwrap();
        rb.sync_now().await.unwrap();
        theirs.push(id);
    }
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let report = ra.sync_wait(Duration::from_secs(20)).await.unwrap();
        (report, started.elapsed())
    });
    // The round's poll is held back 10 s by the transport; the local write wins it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.collection("notes")
        .insert(&json!({"from": "a"}))
        .await
        .unwrap();
    let (report, elapsed) = waiter.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(8),
        "the round waited for its poll: {elapsed:?}"
    );
    assert_eq!((report.pushed, report.pulled), (1, 2), "{report:?}");
    for id in theirs {
        assert!(a.collection("notes").exists(id).await.unwrap());
    }
}

/// Captures that find nothing to take (the app writes only to unsynced collections) commit
/// nothing: the replicator's feed hold keeps the records they passed over, past the feed's
/// retention. Once 1,024 such records went by, a capture stores its position anyway, so the
/// hold moves and retention applies again; a synced write after them is pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_that_take_nothing_store_their_position_only_far_behind() {
    let (dir, server) = app_server(None).await;
    let options = entidb::Options::default().feed_retention(20);
    let local = Database::open_path(dir.path().join("a"), options)
        .await
        .unwrap();
    let transport = Arc::new(HttpTransport::new(
        &server.url,
        &token("app", "a", &["read", "write"], 3600),
    ));
    let cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
    let r = Replicator::attach(local.clone(), cfg, transport)
        .await
        .unwrap();
    r.sync_now().await.unwrap();
    let held = local.feed_holds()[entidb_sync::ORIGIN];
    for round in 0..10 {
        for i in 0..10u32 {
            local.collection("local_only").insert(&i).await.unwrap();
        }
        let before = local.last_sequence();
        let captured = r
            .capture()
            .await
            .unwrap_or_else(|e| panic!("capture after round {round}: {e}"));
        assert_eq!(captured, 0);
        assert_eq!(local.last_sequence(), before, "round {round} committed");
    }
    assert_eq!(local.feed_holds()[entidb_sync::ORIGIN], held);
    assert_eq!(local.oldest_retained_sequence(), held + 1);
    local.compact().await.unwrap();
    let kept = local.changes_page(held, 1000).await.unwrap();
    assert_eq!(kept.len() as u64, local.last_sequence() - held);
    for i in 0..1024u32 {
        let mut tx = local.begin().await.unwrap();
        tx.set_durability(entidb::Durability::Relaxed);
        tx.collection("local_only").insert(&i).unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(r.capture().await.unwrap(), 0);
    assert!(local.feed_holds()[entidb_sync::ORIGIN] > held + 1024);
    // The capture committed `Relaxed` (it took nothing), so its records stay until the move
    // is durable, here through the app's next durable write.
    assert_eq!(local.oldest_retained_sequence(), held + 1);
    local.collection("local_only").insert(&0u32).await.unwrap();
    assert!(local.oldest_retained_sequence() > held + 1024);
    // An app that releases the hold (while retention still has the stored position) gets
    // it back at the next capture that passes records.
    assert!(local.release_feed_hold(entidb_sync::ORIGIN).await.unwrap());
    local.collection("local_only").insert(&0u32).await.unwrap();
    assert_eq!(r.capture().await.unwrap(), 0);
    assert_eq!(
        local.feed_holds()[entidb_sync::ORIGIN],
        local.last_sequence(),
        "held at the capture's own record, which it steps over"
    );
    local
        .collection("notes")
        .insert(&json!({"after": "many local-only writes"}))
        .await
        .unwrap();
    let report = r.sync_now().await.unwrap();
    assert_eq!((report.captured, report.pushed), (1, 1));
}

/// Local writes made while no replicator is attached outlive the feed's retention: the
/// replicator's change-feed hold keeps every record its capture has not taken, through
/// compaction and a restart, and they are all pushed when it attaches again. Without the
/// hold, retention (20 transactions here) drops them and capture fails with a truncated feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_while_the_replicator_is_away_outlive_feed_retention() {
    let (dir, server) = app_server(None).await;
    let options = entidb::Options::default().feed_retention(20);
    let path = dir.path().join("a");
    let transport = Arc::new(HttpTransport::new(
        &server.url,
        &token("app", "a", &["read", "write"], 3600),
    ));
    let cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
    let local = Database::open_path(&path, options.clone()).await.unwrap();
    let r = Replicator::attach(local.clone(), cfg.clone(), transport.clone())
        .await
        .unwrap();
    let gone = local
        .collection("notes")
        .insert(&json!({"n": "deleted while away"}))
        .await
        .unwrap();
    r.sync_now().await.unwrap();
    let held = local.feed_holds()[entidb_sync::ORIGIN];
    drop(r);

    // The app goes on without the replicator: 100 transactions, one of them a delete, and
    // writes to a collection that is not synced in between.
    let mut written = Vec::new();
    for i in 0..99u32 {
        written.push(
            local
                .collection("notes")
                .insert(&json!({ "n": i }))
                .await
                .unwrap(),
        );
        if i % 10 == 0 {
            local.collection("local_only").insert(&i).await.unwrap();
        }
    }
    local.collection("notes").delete(gone).await.unwrap();
    local.compact().await.unwrap();
    assert_eq!(local.feed_holds()[entidb_sync::ORIGIN], held);
    assert_eq!(local.oldest_retained_sequence(), held + 1);
    assert!(local.last_sequence() > held + 100);
    local.close().await.unwrap();

    let local = Database::open_path(&path, options).await.unwrap();
    assert_eq!(local.oldest_retained_sequence(), held + 1);
    let r = Replicator::attach(local.clone(), cfg, transport)
        .await
        .unwrap();
    let report = r.sync_now().await.unwrap();
    assert_eq!((report.captured, report.pushed), (100, 100), "{report:?}");
    assert_eq!(r.pending_ops().await.unwrap(), 0);
    // The hold moved with the capture: retention applies again, from the newest durable
    // move (the acknowledgement's and the page's moves were `Relaxed`; the app's next
    // durable write syncs them).
    assert!(local.feed_holds()[entidb_sync::ORIGIN] > held + 100);
    local.collection("local_only").insert(&0u32).await.unwrap();
    assert!(local.oldest_retained_sequence() > held + 1);

    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    rb.sync_now().await.unwrap();
    let got = contents(&b, "notes").await;
    assert_eq!(got.len(), 99);
    assert_eq!(got, contents(&local, "notes").await);
    for id in written {
        assert!(b.collection("notes").exists(id).await.unwrap());
    }
    assert!(!b.collection("notes").exists(gone).await.unwrap());
}

#[test]
fn entity_ids_in_json_are_uuid_strings() {
    let id: EntityId = "0190a5c2-0000-7000-8000-000000000001".parse().unwrap();
    assert_eq!(
        serde_json::to_value(id).unwrap(),
        json!("0190a5c2-0000-7000-8000-000000000001")
    );
}

/// An event stream lives no longer than its token: when the token expires (after the
/// verifier's 30 s leeway) the stream ends with an `unauthorized` error event, even while
/// it is waiting for a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    // Expired 22 s ago: still accepted for 8 s.
    let exp = entidb_server::auth::now_secs() - 22;
    let short = token_expiring_at("app", "watcher", &["read"], exp);
    let mut stream = reqwest::Client::new()
        .get(format!("{}/v2/db/app/events?since=0", server.url))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Within 20 s: before the 25 s wait the stream is in would have ended on its own.
    let (seen, ended) = read_until_end(&mut stream, 20).await;
    assert!(ended, "the stream outlived its token: {seen:?}");
    assert!(seen.contains("event: error"), "{seen}");
    assert!(seen.contains("unauthorized"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    let http = reqwest::Client::new();
    let watcher = token("app", "watcher", &["read"], 60);
    let mut stream = http
        .get(format!("{}/v2/db/app/events?since=0", server.url))
        .bearer_auth(&watcher)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    let metrics = |http: reqwest::Client, url: String| async move {
        http.get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let m = metrics(http.clone(), server.url.clone()).await;
    assert!(m.contains("entidb_sync_live_waiters 1"), "{m}");

    let id = b
        .collection("notes")
        .insert(&json!({"sse": true}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(&id.to_string()) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "no event for the push: {seen:?}");
    assert!(seen.contains("event: changes"), "{seen}");
    assert!(seen.contains("id: "), "{seen}");
    drop(stream);

    // A stream that cannot start is a plain HTTP error.
    let ahead = http
        .get(format!("{}/v2/db/app/events?since=999", server.url))
        .bearer_auth(&watcher)
        .send()
        .await
        .unwrap();
    assert_eq!(ahead.status(), 410);
    let unauth = http
        .get(format!("{}/v2/db/app/events", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let m = metrics(http.clone(), server.url.clone()).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("entidb_sync_ops_total{status=\"applied\"} 1")),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("entidb_http_requests_total{")
                && l.contains("route=\"/v2/db/{db}/push\"")
                && l.contains("status=\"200\"")),
        "{m}"
    );
    assert!(
        m.contains("entidb_http_request_duration_seconds_bucket"),
        "{m}"
    );

    // SIGTERM with an open event stream and a waiting long poll: both end, the server exits.
    let _open = http
        .get(format!("{}/v2/db/app/events", server.url))
        .bearer_auth(&watcher)
        .send()
        .await
        .unwrap();
    let poll = tokio::spawn(
        http.get(format!(
            "{}/v2/db/app/pull?since=1&wait_ms=20000",
            server.url
        ))
        .bearer_auth(&watcher)
        .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    assert!(server.stop(), "graceful shutdown exits with success");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let polled = poll.await.unwrap().unwrap();
    assert_eq!(
        polled.status(),
        200,
        "the waiting poll is answered, not cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_progress_is_observable_as_a_status_stream() {
    use futures_util::StreamExt;
    let (dir, server) = app_server(None).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    for i in 0..20 {
        b.collection("notes")
            .insert(&json!({ "i": i }))
            .await
            .unwrap();
    }
    rb.sync_now().await.unwrap();

    // A new client with small pages over a slow link.
    let transport = Arc::new(SlowTransport {
        inner: HttpTransport::new(&server.url, &token("app", "c", &["read", "write"], 3600)),
        delay: Duration::from_millis(50),
    });
    let mut cfg = entidb_sync::SyncConfig::new("app", "c", &["notes"]);
    cfg.bootstrap_limit = 5;
    let (local, rc) = client_with_config(&dir.path().join("c"), cfg, transport).await;
    let mut stream = Box::pin(rc.status_stream());
    let first = stream.next().await.unwrap();
    assert_eq!(
        first,
        rc.status(),
        "the stream starts with the current status"
    );
    let watcher = tokio::spawn(async move {
        let mut progress = Vec::new();
        while let Some(s) = stream.next().await {
            if let Some(p) = s.bootstrap {
                progress.push(p);
            } else if !progress.is_empty() {
                return (progress, s);
            }
        }
        panic!("status stream ended");
    });
    let report = rc.sync_now().await.unwrap();
    assert!(report.bootstrapped);
    let (progress, last) = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .unwrap()
        .unwrap();
    let done: Vec<u64> = progress.iter().map(|p| p.done).collect();
    assert_eq!(done, [5, 10, 15, 20], "{progress:?}");
    assert!(progress.iter().all(|p| p.total == Some(20)), "{progress:?}");
    assert!(last.bootstrap.is_none() && last.cursor > 0, "{last:?}");
    assert_eq!(contents(&local, "notes").await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_pages_are_bounded_by_changes_in_whole_transactions() {
    let (dir, server) = app_server(None).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    ra.sync_now().await.unwrap();
    // 1800 changes; the replicator pushes 500 ops per request (its default), so the server
    // holds transactions of 500, 100, 500, 100, 500 and 100 changes.
    for _ in 0..3 {
        let mut tx = a.begin().await.unwrap();
        for i in 0..600 {
            tx.collection("notes").insert(&json!({ "i": i })).unwrap();
        }
        tx.commit().await.unwrap();
        ra.sync_now().await.unwrap();
    }
    let pull = |since: u64, limit: u64| {
        let url = format!("{}/v2/db/app/pull?since={since}&limit={limit}", server.url);
        async move { get_json(&url, &token("app", "x", &["read"], 60)).await }
    };
    let p = pull(0, 1000).await;
    // 500 + 100 fit in 1000; the next 500 would not.
    assert_eq!(p["changes"].as_array().unwrap().len(), 600);
    assert_eq!(p["has_more"], true);
    // A limit below one transaction still returns that whole transaction.
    let p2 = pull(0, 10).await;
    assert_eq!(p2["changes"].as_array().unwrap().len(), 500);
    assert_eq!(p2["has_more"], true);
    // Following the cursor reaches every change exactly once.
    let (mut since, mut total) = (0, 0);
    loop {
        let p = pull(since, 1000).await;
        total += p["changes"].as_array().unwrap().len();
        since = p["cursor"].as_u64().unwrap();
        if p["has_more"] == false {
            break;
        }
    }
    assert_eq!(total, 1800);
    // Pages filled exactly (500 + 100 against a limit of 600): three of them, and the last
    // one, ending with the oplog, says so.
    let mut since = 0;
    for page in 0..3 {
        let p = pull(since, 600).await;
        assert_eq!(p["changes"].as_array().unwrap().len(), 600, "page {page}");
        assert_eq!(p["has_more"], page < 2, "page {page}");
        since = p["cursor"].as_u64().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_never_take_the_slots_of_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        None,
        &["--max-in-flight", "1", "--max-live", "2"],
    );
    server.create_db("app").await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    ra.sync_now().await.unwrap();
    let http = reqwest::Client::new();
    let reader = token("app", "r", &["read"], 60);
    // Polls from a given cursor (the one after the first push: the server's own records take
    // cursors too).
    let poll = |http: reqwest::Client, since: u64| {
        let url = format!("{}/v2/db/app/pull?since={since}&wait_ms=20000", server.url);
        let reader = reader.clone();
        tokio::spawn(async move { http.get(url).bearer_auth(reader).send().await.unwrap() })
    };
    // Two long polls wait (max_live = 2) while max_in_flight is 1.
    a.collection("notes")
        .insert(&json!({"n": 0}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    let since = ra.status().cursor;
    let p1 = poll(http.clone(), since);
    let p2 = poll(http.clone(), since);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third waiter is refused at once...
    let third = http
        .get(format!(
            "{}/v2/db/app/pull?since={since}&wait_ms=20000",
            server.url
        ))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 503);
    // ...while a push still gets its slot and wakes both waiters.
    let started = std::time::Instant::now();
    a.collection("notes")
        .insert(&json!({"n": 1}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    for p in [p1, p2] {
        let resp = tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

/// Health, readiness and metrics answer while every prompt slot is taken: a push whose body
/// is still arriving holds the only slot (`--max-in-flight 1`), and a request that needs a
/// slot waits, but the probes an orchestrator sends do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_every_slot_is_taken() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &["--max-in-flight", "1"]);
    server.create_db("app").await;
    let writer = token("app", "w", &["read", "write"], 60);
    let mut slow = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /v2/db/app/push HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {writer}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"client_id\"",
        server.addr()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();
    let http = reqwest::Client::new();
    // A request that needs a slot waits for it, once the server has read the push's head
    // (until then a request may still get the slot and be answered).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let queued = tokio::time::timeout(
            Duration::from_millis(500),
            http.get(format!("{}/openapi.json", server.url)).send(),
        )
        .await;
        if queued.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow push never held the only slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...the probes and the metrics do not.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            http.get(format!("{}{path}", server.url)).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{path} waited for a slot"))
        .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    drop(slow);
    // With the slot back, the queued kind of request is served again.
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        http.get(format!("{}/openapi.json", server.url)).send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The push pipeline reads batch `k+1` from the outbox while batch `k` is in flight, so its
/// base versions are read before `k` is acknowledged. Ten edits of one entity, one op per
/// batch, under the default policy (server wins): each op must carry the version the server
/// gave the previous one, or the server rejects it as a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_pushes_carry_the_versions_of_the_batches_before_them() {
    let (dir, server) = app_server(None).await;
    let local = entidb::Database::open(dir.path().join("a")).await.unwrap();
    let mut cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
    cfg.push_batch = 1;
    let t = Arc::new(HttpTransport::new(
        &server.url,
        &token("app", "a", &["read", "write"], 3600),
    ));
    let r = entidb_sync::Replicator::attach(local.clone(), cfg, t)
        .await
        .unwrap();
    r.sync_now().await.unwrap();
    let notes = local.collection("notes");
    let id = local.new_id();
    let other = local.new_id();
    for i in 0..10 {
        notes.put(id, &json!({ "edit": i })).await.unwrap();
        if i % 3 == 0 {
            // Another entity between the edits: `id` skips a batch now and then.
            notes.put(other, &json!({ "edit": i })).await.unwrap();
        }
    }
    let (acked, rejected) = r.push().await.unwrap();
    assert!(rejected.is_empty(), "stale base versions: {rejected:?}");
    assert_eq!(acked, 14);
    assert_eq!(r.status().rejected_ops, 0);
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    rb.sync_now().await.unwrap();
    assert_eq!(
        b.collection("notes")
            .get::<serde_json::Value>(id)
            .await
            .unwrap(),
        Some(json!({ "edit": 9 }))
    );
    assert_eq!(contents(&b, "notes").await, contents(&local, "notes").await);
}

/// The app keeps writing (durable commits on other tasks) while the replicator syncs: a
/// replicator transaction may read at a commit that is appended but still in its sync, and
/// must wait for it instead of failing; a push ends with the outbox empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncing_while_the_app_writes() {
    let (dir, server) = app_server(None).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    ra.sync_now().await.unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    a.collection("notes")
                        .insert(&json!({ "w": w, "i": i }))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut rounds = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        ra.sync_now().await.expect("a round beside app writes");
        rounds += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    ra.push().await.unwrap();
    assert_eq!(
        ra.pending_ops().await.unwrap(),
        0,
        "the push emptied the outbox"
    );
    assert!(rounds > 0);
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    rb.sync_now().await.unwrap();
    assert_eq!(b.collection("notes").count().await.unwrap(), 600);
    assert_eq!(contents(&b, "notes").await, contents(&a, "notes").await);
}

/// Pulls and bootstraps request the next page while they apply the current one. Fresh
/// clients pulling in many small pages (one by the oplog, one by bootstrap pages) while their
/// app writes to the same collection end with everything: the server's entities and their
/// own writes, which then reach the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_clients_pull_many_pages_while_their_app_writes() {
    let (dir, server) = app_server(None).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    // 60 entities in 20 transactions, and one of them deleted again.
    let mut first = None;
    for t in 0..20 {
        let mut tx = b.begin().await.unwrap();
        for i in 0..3 {
            let id = tx
                .collection("notes")
                .insert(&json!({ "t": t, "i": i }))
                .unwrap();
            first.get_or_insert(id);
        }
        tx.commit().await.unwrap();
        rb.sync_now().await.unwrap();
    }
    b.collection("notes").delete(first.unwrap()).await.unwrap();
    rb.sync_now().await.unwrap();

    for (name, bootstrap) in [("pull", false), ("boot", true)] {
        let transport = Arc::new(SlowTransport {
            inner: HttpTransport::new(&server.url, &token("app", name, &["read", "write"], 3600)),
            delay: Duration::from_millis(3),
        });
        let mut cfg = entidb_sync::SyncConfig::new("app", name, &["notes"]);
        cfg.pull_limit = 4;
        cfg.bootstrap_limit = 4;
        cfg.initial_bootstrap = bootstrap;
        let (local, r) = client_with_config(&dir.path().join(name), cfg, transport).await;
        let writer = {
            let local = local.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..15 {
                    mine.push(
                        local
                            .collection("notes")
                            .insert(&json!({ "mine": i }))
                            .await
                            .unwrap(),
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                mine
            })
        };
        let report = r.sync_now().await.unwrap();
        assert_eq!(report.bootstrapped, bootstrap, "{name}: {report:?}");
        let mine = writer.await.unwrap();
        r.sync_now().await.unwrap();
        rb.sync_now().await.unwrap();
        let got = contents(&local, "notes").await;
        assert_eq!(got, contents(&b, "notes").await, "{name}");
        for id in &mine {
            assert!(
                got.iter().any(|(g, _)| *g == id.to_string()),
                "{name}: own write {id} kept"
            );
        }
        assert!(
            got.iter().all(|(g, _)| *g != first.unwrap().to_string()),
            "{name}: the deleted entity stays deleted"
        );
        assert_eq!(r.pending_ops().await.unwrap(), 0, "{name}");
    }
    assert_eq!(contents(&b, "notes").await.len(), 59 + 30);
}

/// What [`cut_off_bootstrap`] leaves: client b (and its 30 notes) in sync with the server;
/// client c part way through its first bootstrap, its transport out of requests.
struct CutOff {
    _dir: tempfile::TempDir,
    _server: Server,
    b: entidb::Database,
    rb: entidb_sync::Replicator,
    ids: Vec<EntityId>,
    transport: Arc<Budgeted>,
    local: entidb::Database,
    rc: entidb_sync::Replicator,
}

/// Client b writes 30 notes (`doc(i)`) and syncs; client c (pages of 5 entities,
/// `pull_limit` changes) starts a fresh bootstrap on a transport that allows 3 requests, so
/// the network goes away part way through it.
async fn cut_off_bootstrap(doc: impl Fn(usize) -> serde_json::Value, pull_limit: usize) -> CutOff {
    let (tmp, server) = app_server(None).await;
    let dir = tmp.path();
    let (b, rb) = client(&server.url, &dir.join("b"), "app", "b", &["notes"]).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(b.collection("notes").insert(&doc(i)).await.unwrap());
    }
    rb.sync_now().await.unwrap();
    let transport = Arc::new(Budgeted {
        inner: HttpTransport::new(&server.url, &token("app", "c", &["read", "write"], 3600)),
        budget: AtomicU32::new(3),
    });
    let mut cfg = entidb_sync::SyncConfig::new("app", "c", &["notes"]);
    cfg.bootstrap_limit = 5;
    cfg.pull_limit = pull_limit;
    cfg.max_attempts = 2;
    cfg.retry_base = Duration::from_millis(5);
    let (local, rc) = client_with_config(&dir.join("c"), cfg, transport.clone()).await;
    assert!(
        rc.sync_now().await.is_err(),
        "the network went away mid-bootstrap"
    );
    let got = contents(&local, "notes").await.len();
    assert!(got > 0 && got < 30, "part of it arrived: {got}");
    CutOff {
        _dir: tmp,
        _server: server,
        b,
        rb,
        ids,
        transport,
        local,
        rc,
    }
}

/// A fresh client's bootstrap (which skips the final sweep) is cut off by the network; while
/// it is cut off, the app writes and pushes, and the server deletes an entity the client
/// already received. The resumed bootstrap and the pull after it end with the server's state
/// plus nothing stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_fresh_bootstrap_resumes_to_the_servers_state() {
    use std::sync::atomic::Ordering;
    let t = cut_off_bootstrap(|i| json!({ "i": i }), 1000).await;
    let (b, rb, ids, transport, local, rc) = (&t.b, &t.rb, &t.ids, &t.transport, &t.local, &t.rc);
    let got = contents(local, "notes").await;
    // The first entity arrived; the server deletes it while the client is offline.
    assert!(got.iter().any(|(id, _)| *id == ids[0].to_string()));
    b.collection("notes").delete(ids[0]).await.unwrap();
    rb.sync_now().await.unwrap();
    // The app writes, and pushes once the network is back (a push does not resume the
    // bootstrap).
    let mine = local
        .collection("notes")
        .insert(&json!({ "mine": true }))
        .await
        .unwrap();
    transport.budget.store(1000, Ordering::SeqCst);
    let (pushed, _) = rc.push().await.unwrap();
    assert_eq!(pushed, 1);
    let report = rc.sync_now().await.unwrap();
    assert!(report.bootstrapped, "{report:?}");
    rb.sync_now().await.unwrap();
    let got = contents(local, "notes").await;
    assert_eq!(got, contents(b, "notes").await);
    assert_eq!(got.len(), 30, "29 of b's plus the client's own");
    assert!(got.iter().any(|(id, _)| *id == mine.to_string()));
    assert!(got.iter().all(|(id, _)| *id != ids[0].to_string()));
}

/// Every state the replicator wrote to each entity of `collection` in `db`, in commit order:
/// the values of field `n`.
async fn replicated_states(db: &entidb::Database, collection: &str) -> Vec<(EntityId, u64)> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let page = db.changes_page(since, 256).await.unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        since = last.seq;
        for batch in page
            .iter()
            .filter(|b| b.origin.as_deref() == Some(entidb_sync::ORIGIN))
        {
            for ch in batch.changes.iter().filter(|c| c.collection == collection) {
                if let entidb::ChangeOp::Put(doc) = &ch.op {
                    let v: serde_json::Value = doc.decode().unwrap();
                    out.push((ch.id.unwrap(), v["n"].as_u64().unwrap()));
                }
            }
        }
    }
}

/// A bootstrap's later pages are read after the server changed: they hold newer versions
/// than its first page's cursor, from which the pull then replays the changes. The pull must
/// skip the changes the bootstrap already had (entity metadata says so), never putting an
/// older state over a newer one, also when it writes metadata without reading it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_after_a_bootstrap_never_applies_an_older_state() {
    use std::sync::atomic::Ordering;
    // A page per round of changes (each is one push of 30 ops), so that each round is its
    // own local commit.
    let t = cut_off_bootstrap(|_| json!({ "n": 0 }), 30).await;
    let (b, rb, ids, transport, local, rc) = (&t.b, &t.rb, &t.ids, &t.transport, &t.local, &t.rc);
    let early = contents(local, "notes").await.len();
    // Two rounds of changes to every entity while the client is cut off.
    for n in 1..=2 {
        for id in ids {
            b.collection("notes")
                .put(*id, &json!({ "n": n }))
                .await
                .unwrap();
        }
        rb.sync_now().await.unwrap();
    }
    transport.budget.store(1000, Ordering::SeqCst);
    let report = rc.sync_now().await.unwrap();
    assert!(report.bootstrapped, "{report:?}");
    assert_eq!(contents(local, "notes").await, contents(b, "notes").await);
    let states = replicated_states(local, "notes").await;
    let mut last: std::collections::HashMap<EntityId, u64> = Default::default();
    for (id, n) in &states {
        let before = last.insert(*id, *n);
        assert!(
            before.is_none_or(|b| b <= *n),
            "entity {id} went back from n = {before:?} to {n}"
        );
    }
    // The scenario happened: the first pages brought n = 0, the later ones n = 2 (the pull
    // then had to skip both rounds of changes for those).
    let mut first: std::collections::HashMap<EntityId, u64> = Default::default();
    for (id, n) in &states {
        first.entry(*id).or_insert(*n);
    }
    assert_eq!(first.values().filter(|n| **n == 0).count(), early);
    assert_eq!(first.values().filter(|n| **n == 2).count(), 30 - early);
    assert_eq!(last.len(), 30);
    assert!(last.values().all(|n| *n == 2));
}

/// The other guard of the pull's metadata writes without reads: after a client's write wins
/// a conflict, the pull replays the older changes it overrode (the server still holds their
/// values). The client already has the newer state (its own, acknowledged), so the pull
/// must write none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_after_a_push_never_applies_an_older_state() {
    let (dir, server) = app_server(Some(POLICIES)).await;
    let mut cfg = entidb_sync::SyncConfig::new("app", "a", &["cw"]);
    // A page per server transaction: each older change would be its own local commit.
    cfg.pull_limit = 1;
    let transport = HttpTransport::new(&server.url, &token("app", "a", &["read", "write"], 3600));
    let (a, ra) = client_with_config(&dir.path().join("a"), cfg, Arc::new(transport)).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["cw"]).await;
    let id = a.collection("cw").insert(&json!({ "n": 0 })).await.unwrap();
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    for n in 1..=2 {
        b.collection("cw")
            .put(id, &json!({ "n": n }))
            .await
            .unwrap();
        rb.sync_now().await.unwrap();
    }
    // a's concurrent write wins (client wins) and is acknowledged before a pulls.
    a.collection("cw")
        .put(id, &json!({ "n": 5 }))
        .await
        .unwrap();
    assert_eq!(ra.push().await.unwrap().0, 1);
    let report = ra.sync_now().await.unwrap();
    assert!(report.pulled == 0, "{report:?}");
    assert_eq!(replicated_states(&a, "cw").await, []);
    rb.sync_now().await.unwrap();
    assert_eq!(contents(&a, "cw").await, contents(&b, "cw").await);
}

/// Replicator state written before the metadata bound existed reads with it unknown (the
/// pull then reads metadata as before) and learns it at the next pull's last page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_from_before_the_metadata_bounds_learns_them() {
    use entidb::cbor::Value;
    let (dir, server) = app_server(None).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    a.collection("notes")
        .insert(&json!({ "n": 1 }))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    let bound = |state: &Value| state.get("versions_upto").and_then(Value::as_u64);
    let state = a.collection("_sync.state");
    let mut old: Value = state.get(EntityId::MIN).await.unwrap().unwrap();
    assert!(bound(&old).is_some(), "{old}");
    old.as_map_mut()
        .unwrap()
        .retain(|(k, _)| !matches!(k.as_text(), Some("versions_upto")));
    state.put_value(EntityId::MIN, &old).await.unwrap();

    b.collection("notes")
        .insert(&json!({ "n": 2 }))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    let report = ra.sync_now().await.unwrap();
    assert_eq!(report.pulled, 1, "{report:?}");
    let now: Value = state.get(EntityId::MIN).await.unwrap().unwrap();
    let cursor = now.get("cursor").and_then(Value::as_u64);
    assert_eq!(bound(&now), cursor, "{now}");
    assert_eq!(contents(&a, "notes").await, contents(&b, "notes").await);
}

/// A client catching up with another client's writes (empty outbox, nothing above its
/// bounds) writes their metadata without reading it: its point reads stay far below the
/// number of changes (with a read per change they would exceed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_writes_metadata_without_reading_it() {
    let (dir, server) = app_server(None).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    ra.sync_now().await.unwrap();
    for i in 0..300 {
        b.collection("notes")
            .insert(&json!({ "i": i }))
            .await
            .unwrap();
    }
    rb.sync_now().await.unwrap();
    let before = a.stats().reads;
    assert_eq!(ra.sync_now().await.unwrap().pulled, 300);
    let reads = a.stats().reads - before;
    assert!(reads < 100, "{reads} point reads to apply 300 changes");
    assert_eq!(contents(&a, "notes").await, contents(&b, "notes").await);
}

/// A token that may read one collection pulls only that collection's changes: the feed
/// filter is what keeps the others out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_shows_only_the_collections_the_token_may_read() {
    let (dir, server) = app_server(None).await;
    let (b, rb) = client(
        &server.url,
        &dir.path().join("b"),
        "app",
        "b",
        &["notes", "tasks"],
    )
    .await;
    b.collection("notes")
        .insert(&json!({ "n": 1 }))
        .await
        .unwrap();
    b.collection("tasks")
        .insert(&json!({ "t": 1 }))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    let notes_only = token("app", "r", &["read:notes"], 3600);
    let page = get_json(
        &format!("{}/v2/db/app/pull?since=0", server.url),
        &notes_only,
    )
    .await;
    let collections: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["collection"].as_str().unwrap())
        .collect();
    assert_eq!(collections, ["notes"], "{page}");
    // The page still ends after the hidden change.
    let all = get_json(
        &format!("{}/v2/db/app/pull?since=0", server.url),
        &token("app", "r", &["read"], 3600),
    )
    .await;
    assert_eq!(page["cursor"], all["cursor"]);
    assert_eq!(all["changes"].as_array().unwrap().len(), 2);
}

/// The app server, and another client ("other", syncing `notes`) on real files.
async fn app_server_and_other() -> (tempfile::TempDir, Server, Database, Replicator) {
    let (dir, server) = app_server(None).await;
    let (other, r_other) = client(
        &server.url,
        &dir.path().join("o"),
        "app",
        "other",
        &["notes"],
    )
    .await;
    (dir, server, other, r_other)
}

/// A phone: a database on the simulated backend `sim` (whose crash drops what was not
/// synced) with a replicator attached; the server is real.
async fn on_sim(
    sim: &entidb::io::SimBackend,
    cfg: &entidb_sync::SyncConfig,
    transport: Arc<dyn entidb_sync::Transport>,
) -> (Database, Replicator) {
    let db = Database::open_with(Arc::new(sim.clone()), entidb::Options::default())
        .await
        .unwrap();
    let r = Replicator::attach(db.clone(), cfg.clone(), transport)
        .await
        .unwrap();
    (db, r)
}

/// An app write committed `Relaxed` and captured into the outbox by a pulled page must not
/// be lost with that page in a power loss after its push reached the server: the page is
/// committed durably because it captured. Otherwise the op id would be handed out again
/// after the crash, to the app's next write, which the server would take for a duplicate
/// of the first and drop without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaxed_write_captured_by_a_page_is_not_lost_after_a_power_loss() {
    use entidb::io::{SimBackend, SimConfig};
    let (_dir, server, other, r_other) = app_server_and_other().await;
    r_other.sync_now().await.unwrap();

    // The phone's database is on the simulated backend, whose crash drops what was not
    // synced; the server is real.
    let sim = SimBackend::new(7, SimConfig::default());
    let transport = Arc::new(LossyTransport {
        inner: HttpTransport::new(
            &server.url,
            &token("app", "phone", &["read", "write"], 3600),
        ),
        drop_responses: AtomicU32::new(0),
    });
    let mut cfg = entidb_sync::SyncConfig::new("app", "phone", &["notes"]);
    cfg.max_attempts = 1;
    let (db, r) = on_sim(&sim, &cfg, transport.clone()).await;
    r.sync_now().await.unwrap();

    // The app writes without waiting for the disk.
    let mut tx = db.begin().await.unwrap();
    tx.set_durability(entidb::Durability::Relaxed);
    let first = tx
        .collection("notes")
        .insert(&json!({"v": "first"}))
        .unwrap();
    tx.commit().await.unwrap();
    // A change from the other client, so that the next pull applies a page, which captures
    // the app's write first (op 1).
    other
        .collection("notes")
        .insert(&json!({"from": "other"}))
        .await
        .unwrap();
    r_other.sync_now().await.unwrap();
    let (applied, _) = r.pull().await.unwrap();
    assert_eq!(applied, 1);
    assert_eq!(r.pending_ops().await.unwrap(), 1);
    // The push reaches the server and is applied; its answer is lost.
    transport
        .drop_responses
        .store(1, std::sync::atomic::Ordering::SeqCst);
    assert!(r.push().await.is_err());

    // Power loss: whatever was not synced is gone.
    drop(r);
    drop(db);
    sim.crash_now();
    sim.restart();
    let (db, r) = on_sim(&sim, &cfg, transport.clone()).await;
    let second = db
        .collection("notes")
        .insert(&json!({"v": "second"}))
        .await
        .unwrap();
    r.sync_now().await.unwrap();
    r.sync_now().await.unwrap();
    r_other.sync_now().await.unwrap();
    assert_eq!(
        other
            .collection("notes")
            .get::<serde_json::Value>(second)
            .await
            .unwrap(),
        Some(json!({"v": "second"})),
        "the write after the power loss never reached the server"
    );
    for db in [&db, &other] {
        assert_eq!(
            db.collection("notes")
                .get::<serde_json::Value>(first)
                .await
                .unwrap(),
            Some(json!({"v": "first"}))
        );
    }
    assert_eq!(r.pending_ops().await.unwrap(), 0);
}

/// A push's acknowledgement is a relaxed commit (`Replicator::commit_durability`), the
/// capture before it a durable one: a power loss after the push may lose the
/// acknowledgement, and the op, still in the outbox, is then sent again and answered
/// `duplicate` instead of being applied a second time; the write made after the power loss
/// still reaches the server. What survives a simulated power loss depends on the seed;
/// several seeds run, and at least one must lose the acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_is_answered_duplicate_after_a_power_loss() {
    use entidb::io::{SimBackend, SimConfig};
    let (_dir, server, other, r_other) = app_server_and_other().await;
    let mut lost_acks = 0;
    for seed in 0..8 {
        let phone = format!("phone{seed}");
        let sim = SimBackend::new(seed, SimConfig::default());
        let transport = Arc::new(HttpTransport::new(
            &server.url,
            &token("app", &phone, &["read", "write"], 3600),
        ));
        let cfg = entidb_sync::SyncConfig::new("app", &phone, &["notes"]);
        let (db, r) = on_sim(&sim, &cfg, transport.clone()).await;
        r.sync_now().await.unwrap();
        let first = db
            .collection("notes")
            .insert(&json!({ "v": "first", "by": phone }))
            .await
            .unwrap();
        let written = db.last_sequence();
        assert_eq!(db.durable_sequence(), written);
        let report = r.sync_now().await.unwrap();
        assert_eq!((report.captured, report.pushed), (1, 1));
        assert_eq!(r.pending_ops().await.unwrap(), 0);
        // The capture was synced, the acknowledgement (and the page after it) not.
        let captured = db.durable_sequence();
        assert!(captured > written && db.last_sequence() > captured);

        // Power loss: the write and its capture stay; the commits after them may be gone.
        drop(r);
        drop(db);
        sim.crash_now();
        sim.restart();
        let (db, r) = on_sim(&sim, &cfg, transport).await;
        assert!(db.last_sequence() >= captured, "seed {seed}");
        let pending = r.pending_ops().await.unwrap();
        assert!(pending <= 1, "seed {seed}: {pending}");
        lost_acks += u32::from(pending == 1);
        let second = db
            .collection("notes")
            .insert(&json!({ "v": "second", "by": phone }))
            .await
            .unwrap();
        r.sync_now().await.unwrap();
        assert_eq!(r.pending_ops().await.unwrap(), 0, "seed {seed}");
        // One oplog entry per op: the first write was answered `duplicate` if it was sent
        // again, never applied twice.
        let pull: serde_json::Value = get_json(
            &format!("{}/v2/db/app/pull?since=0", server.url),
            &token("app", "x", &["read"], 60),
        )
        .await;
        let mine = pull["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["doc"]["by"] == json!(phone))
            .count();
        assert_eq!(mine, 2, "seed {seed}: {pull}");
        r_other.sync_now().await.unwrap();
        for (id, v) in [(first, "first"), (second, "second")] {
            for db in [&db, &other] {
                assert_eq!(
                    db.collection("notes")
                        .get::<serde_json::Value>(id)
                        .await
                        .unwrap(),
                    Some(json!({ "v": v, "by": phone })),
                    "seed {seed}"
                );
            }
        }
    }
    assert!(lost_acks > 0, "no seed lost the acknowledgement");
}

/// A database first attached by a build that kept all entity metadata in one `_sync.meta`
/// collection keyed by hashes keeps that layout: its metadata (here, the server version an
/// offline edit is based on) is found after a restart, so the edit is not taken for a
/// conflict. New databases keep metadata per synced collection, keyed by entity id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_the_hashed_metadata_layout_keeps_it() {
    let (dir, server) = app_server(None).await;
    let adir = dir.path().join("a");
    {
        // Attach, then make the stored state one written before `meta_layout` existed.
        let (local, r) = client(&server.url, &adir, "app", "a", &["notes"]).await;
        drop(r);
        let mut state: serde_json::Value = local
            .collection("_sync.state")
            .get(EntityId::MIN)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state["meta_layout"], json!(1), "{state}");
        state.as_object_mut().unwrap().remove("meta_layout");
        local
            .collection("_sync.state")
            .put(EntityId::MIN, &state)
            .await
            .unwrap();
        local.close().await.unwrap();
    }
    let id = {
        let (a, ra) = client(&server.url, &adir, "app", "a", &["notes"]).await;
        let id = a
            .collection("notes")
            .insert(&json!({"v": 1}))
            .await
            .unwrap();
        assert_eq!(ra.sync_now().await.unwrap().pushed, 1);
        drop(ra);
        a.close().await.unwrap();
        id
    };
    // After a restart, an offline edit is pushed with the version the metadata holds.
    let (a, ra) = client(&server.url, &adir, "app", "a", &["notes"]).await;
    a.collection("notes")
        .put(id, &json!({"v": 2}))
        .await
        .unwrap();
    let report = ra.sync_now().await.unwrap();
    assert_eq!(report.pushed, 1, "{report:?}");
    assert!(
        report.rejected.is_empty(),
        "taken for a conflict: {report:?}"
    );
    let names = a.collections();
    assert!(names.contains(&"_sync.meta".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("_sync.meta/")),
        "{names:?}"
    );

    // A new client keeps it per collection, and the two converge.
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    rb.sync_now().await.unwrap();
    b.collection("notes")
        .put(id, &json!({"v": 3}))
        .await
        .unwrap();
    let report = rb.sync_now().await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    let names = b.collections();
    assert!(names.contains(&"_sync.meta/notes".to_string()), "{names:?}");
    assert!(!names.contains(&"_sync.meta".to_string()), "{names:?}");
    let meta = b
        .collection("_sync.meta/notes")
        .get_document(id)
        .await
        .unwrap();
    assert!(meta.is_some(), "the metadata is keyed by the entity's id");
    ra.sync_now().await.unwrap();
    assert_eq!(contents(&a, "notes").await, contents(&b, "notes").await);
    assert_eq!(contents(&a, "notes").await[0].1, json!({"v": 3}));
}

/// A server database keeps entity metadata per collection, keyed by entity id; one that has
/// the first layout's `_sync.meta` collection keeps that, keyed by hashes. Each keeps its
/// layout across restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_databases_keep_the_metadata_layout_they_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        // "old": written by a build with the first layout (which created `_sync.meta`).
        let db = Database::open(data.join("old")).await.unwrap();
        db.collection("notes")
            .insert(&json!({"n": 0}))
            .await
            .unwrap();
        db.create_collection("_sync.meta").await.unwrap();
        db.close().await.unwrap();
        // "mixed": an older server build wrote to it after a newer one.
        let db = Database::open(data.join("mixed")).await.unwrap();
        db.create_collection("_sync.meta/notes").await.unwrap();
        db.create_collection("_sync.meta").await.unwrap();
        db.close().await.unwrap();
    }
    let mut server = Server::start(&data, None, &[]);
    server.create_db("new").await;
    let mixed = reqwest::Client::new()
        .get(format!("{}/v2/db/mixed/pull?since=0", server.url))
        .bearer_auth(token("mixed", "m", &["read"], 60))
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), 500);
    let body = mixed.text().await.unwrap();
    assert!(body.contains("both layouts"), "{body}");
    let addr = server.addr();
    let (a, ra) = client(&server.url, &dir.path().join("a"), "old", "a", &["notes"]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "new", "b", &["notes"]).await;
    for round in 1..=2 {
        if round == 2 {
            // Restarted: the layout is seen again.
            server = Server::start_at(&data, None, &addr, &[]);
        }
        for (local, r) in [(&a, &ra), (&b, &rb)] {
            local
                .collection("notes")
                .insert(&json!({ "n": round }))
                .await
                .unwrap();
            assert_eq!(r.sync_now().await.unwrap().pushed, 1);
        }
        assert!(server.stop());
    }
    let old = Database::open(data.join("old")).await.unwrap();
    let names = old.collections();
    assert_eq!(
        old.collection("_sync.meta").count().await.unwrap(),
        2,
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("_sync.meta/")),
        "{names:?}"
    );
    let new = Database::open(data.join("new")).await.unwrap();
    let names = new.collections();
    assert_eq!(
        new.collection("_sync.meta/notes").count().await.unwrap(),
        2,
        "{names:?}"
    );
    assert!(!names.contains(&"_sync.meta".to_string()), "{names:?}");
    assert_eq!(contents(&a, "notes").await.len(), 3);
}

/// The server's count of answered requests to `route` (`/metrics`).
async fn requests_to(url: &str, route: &str) -> u64 {
    metrics_text(url)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("entidb_http_requests_total{")
                && l.contains(&format!("route=\"{route}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A round that has a write to push is one exchange: the push asks for the page after the
/// client's cursor (`push?since=C`) and applies it with the acknowledgement, so no pull
/// follows when that page reached the end of the oplog. A live round whose push brought
/// nothing from the others still waits on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_with_a_write_pushes_and_pulls_in_one_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    // The first rounds bootstrap (a push asks for no page before that).
    assert!(ra.sync_now().await.unwrap().bootstrapped);
    assert!(rb.sync_now().await.unwrap().bootstrapped);

    let x = a
        .collection("notes")
        .insert(&json!({"by": "a"}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    let y = b
        .collection("notes")
        .insert(&json!({"by": "b"}))
        .await
        .unwrap();
    let (pushes, pulls) = (
        requests_to(&server.url, "/v2/db/{db}/push").await,
        requests_to(&server.url, "/v2/db/{db}/pull").await,
    );
    let report = rb.sync_now().await.unwrap();
    assert_eq!((report.pushed, report.pulled), (1, 1), "{report:?}");
    assert_eq!(
        requests_to(&server.url, "/v2/db/{db}/push").await,
        pushes + 1
    );
    assert_eq!(
        requests_to(&server.url, "/v2/db/{db}/pull").await,
        pulls,
        "the push's page reached the end of the oplog: no pull"
    );
    assert_eq!(
        b.collection("notes").get(x).await.unwrap(),
        Some(json!({"by": "a"})),
        "a's write came with b's push"
    );
    assert_eq!(rb.status().cursor, 2);
    assert_eq!(rb.pending_ops().await.unwrap(), 0);

    // The page held b's own write too: it was not applied again, and its version is known
    // (b's next write is based on it, so the server finds no conflict).
    b.collection("notes")
        .put(y, &json!({"by": "b", "again": true}))
        .await
        .unwrap();
    let report = rb.sync_now().await.unwrap();
    assert_eq!((report.pushed, report.rejected.len()), (1, 0), "{report:?}");

    // A live round whose push brings nothing from the others waits on the server: it
    // returns with a's next write.
    ra.sync_now().await.unwrap();
    b.collection("notes")
        .insert(&json!({"live": 1}))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let report = rb.sync_wait(Duration::from_secs(20)).await.unwrap();
        (rb, report)
    });
    // Once b's long poll waits, a writes.
    assert!(
        live_waiters_reach(&server.url, 1, Duration::from_secs(10)).await,
        "b's round did not wait on the server"
    );
    let z = a
        .collection("notes")
        .insert(&json!({"by": "a", "n": 2}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    let (_rb, report) = waiting.await.unwrap();
    assert_eq!((report.pushed, report.pulled), (1, 1), "{report:?}");
    assert_eq!(
        b.collection("notes").get(z).await.unwrap(),
        Some(json!({"by": "a", "n": 2}))
    );
}

/// A push's page that cannot be applied does not take the push's answers with it: here the
/// page brings another client's document that breaks a unique index of this client. The
/// answers are recorded without the page (the outbox empties), and the round reports the
/// page's failure through its own pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_page_that_fails_to_apply_keeps_the_acknowledgement() {
    let (dir, server) = app_server(None).await;
    let ((a, ra), (b, rb)) = two_synced_clients(&server, dir.path()).await;
    b.collection("notes")
        .create_index("by_email", entidb::IndexSpec::equality(["email"]).unique())
        .await
        .unwrap();
    a.collection("notes")
        .insert(&json!({"email": "ada@example.com", "by": "a"}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    let mine = b
        .collection("notes")
        .insert(&json!({"email": "ada@example.com", "by": "b"}))
        .await
        .unwrap();
    let cursor = rb.status().cursor;
    let err = rb.sync_now().await.unwrap_err();
    assert!(err.to_string().contains("unique"), "{err}");
    assert_eq!(
        rb.pending_ops().await.unwrap(),
        0,
        "the push was acknowledged although its page failed"
    );
    assert_eq!(rb.status().cursor, cursor, "no page was applied");
    assert!(
        b.collection("notes")
            .lookup("by_email", &entidb::Query::eq("ada@example.com"))
            .await
            .unwrap()
            .items
            .len()
            == 1,
        "b keeps only its own document"
    );
    // The server has b's write.
    ra.sync_now().await.unwrap();
    assert_eq!(
        a.collection("notes").get(mine).await.unwrap(),
        Some(json!({"email": "ada@example.com", "by": "b"}))
    );
}

/// A push's page that is not the end of the oplog (`has_more`) is applied, and the round
/// pulls the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_page_with_more_to_come_is_followed_by_a_pull() {
    let (dir, server) = app_server(None).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    let mut cfg = entidb_sync::SyncConfig::new("app", "b", &["notes"]);
    cfg.pull_limit = 2;
    let transport = Arc::new(HttpTransport::new(
        &server.url,
        &token("app", "b", &["read", "write"], 3600),
    ));
    let (b, rb) = client_with_config(&dir.path().join("b"), cfg, transport).await;
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    for i in 0..5 {
        a.collection("notes")
            .insert(&json!({"i": i}))
            .await
            .unwrap();
        ra.sync_now().await.unwrap();
    }
    b.collection("notes")
        .insert(&json!({"b": 1}))
        .await
        .unwrap();
    let pulls = requests_to(&server.url, "/v2/db/{db}/pull").await;
    let report = rb.sync_now().await.unwrap();
    assert_eq!((report.pushed, report.pulled), (1, 5), "{report:?}");
    // Pages of whole transactions of at most 2 changes: the push's page holds a's first two
    // writes, the two pulls after it the next two, then a's last one with b's own. (Had
    // the push's page not been applied, the round would have pulled 3 times.)
    assert_eq!(
        requests_to(&server.url, "/v2/db/{db}/pull").await,
        pulls + 2,
        "the round pulled the rest after the push's page"
    );
    ra.sync_now().await.unwrap();
    assert_eq!(contents(&b, "notes").await, contents(&a, "notes").await);
    assert_eq!(contents(&b, "notes").await.len(), 6);
}

/// A page that comes with a push's answer is applied without reading the metadata of the
/// other clients' changes in it, although they are older than the push (committed before
/// it): the answer gave versions to its own entities only (`AfterAnswer` in the client).
/// Its own change in the page is still recognised and not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_page_writes_other_clients_metadata_without_reading_it() {
    let (dir, server) = app_server(None).await;
    let ((a, ra), (b, rb)) = two_synced_clients(&server, dir.path()).await;
    for i in 0..300 {
        b.collection("notes")
            .insert(&json!({ "i": i }))
            .await
            .unwrap();
    }
    rb.sync_now().await.unwrap();
    let mine = a
        .collection("notes")
        .insert(&json!({ "mine": true }))
        .await
        .unwrap();
    let before = a.stats().reads;
    let report = ra.sync_now().await.unwrap();
    assert_eq!((report.pushed, report.pulled), (1, 300), "{report:?}");
    // (300 changes, 1 of them a's own, which is read and passed over: `pulled` is not 301.)
    let reads = a.stats().reads - before;
    assert!(
        reads < 30,
        "{reads} point reads to push 1 op and apply 300 changes"
    );
    rb.sync_now().await.unwrap();
    assert_eq!(contents(&a, "notes").await, contents(&b, "notes").await);
    assert_eq!(contents(&a, "notes").await.len(), 301);
    // And a's next edit of its write is no conflict.
    a.collection("notes")
        .put(mine, &json!({ "mine": 2 }))
        .await
        .unwrap();
    let report = ra.sync_now().await.unwrap();
    assert_eq!((report.pushed, report.rejected.len()), (1, 0), "{report:?}");
}

/// The page in a push's answer never steps back an entity that the answer gave a newer
/// version: here a's write to X wins under client-wins at version S, and the page (one
/// transaction per page) holds only b's older write to X. The rest of the round never
/// arrives (the network is gone), so what the page did is what a is left with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_page_never_steps_back_an_entity_its_answer_named() {
    let (dir, server) = app_server(Some(POLICIES)).await;
    let mut cfg = entidb_sync::SyncConfig::new("app", "a", &["cw"]);
    cfg.pull_limit = 1;
    cfg.retry_base = Duration::from_millis(5);
    cfg.max_attempts = 2;
    let net = Arc::new(Budgeted {
        inner: HttpTransport::new(&server.url, &token("app", "a", &["read", "write"], 3600)),
        budget: AtomicU32::new(u32::MAX),
    });
    let (a, ra) = client_with_config(&dir.path().join("a"), cfg, net.clone()).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["cw"]).await;
    ra.sync_now().await.unwrap();
    let x = a
        .collection("cw")
        .insert(&json!({"v": "a1"}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    b.collection("cw").put(x, &json!({"v": "b"})).await.unwrap();
    rb.sync_now().await.unwrap();
    // a's concurrent edit: client-wins applies it over b's.
    a.collection("cw")
        .put(x, &json!({"v": "a2"}))
        .await
        .unwrap();
    net.budget.store(1, Ordering::SeqCst);
    assert!(
        ra.sync_now().await.is_err(),
        "the pull after the push fails"
    );
    assert_eq!(ra.pending_ops().await.unwrap(), 0, "the push was answered");
    assert_eq!(
        a.collection("cw").get(x).await.unwrap(),
        Some(json!({"v": "a2"})),
        "b's older write, in the push's page, stepped a's copy back"
    );
    net.budget.store(u32::MAX, Ordering::SeqCst);
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    assert_eq!(
        a.collection("cw").get(x).await.unwrap(),
        Some(json!({"v": "a2"}))
    );
    assert_eq!(
        b.collection("cw").get(x).await.unwrap(),
        Some(json!({"v": "a2"}))
    );
}

/// A bootstrap resumed at a collection that is gone (dropped between two pages) goes on with
/// the next collection from its start: the position's `after` belongs to the named
/// collection only, and applied to the next one it would skip entities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_resumed_in_a_dropped_collection_starts_the_next_one_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let t = token("app", "c1", &["read", "write"], 3600);
    let id = |n: u32| format!("0190a5c2-0000-7000-8000-{n:012x}");
    let ops: Vec<serde_json::Value> = [("a", 1), ("b", 1), ("b", 2), ("b", 3)]
        .iter()
        .enumerate()
        .map(|(i, (c, n))| {
            let i = i as u64;
            op_json(
                i + 1,
                c,
                &id(*n),
                Some(json!({ "n": n })),
                None,
                (1, i),
                "c1",
            )
        })
        .collect();
    let (status, _) = push_json(&server.url, "app", &t, "c1", ops).await;
    assert_eq!(status, 200);
    // A position in "aa" (no such collection, between "a" and "b") after id 2.
    let page = get_json(
        &format!(
            "{}/v2/db/app/bootstrap?collection=aa&after={}",
            server.url,
            id(2)
        ),
        &t,
    )
    .await;
    let got: Vec<(&str, &str)> = page["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["collection"].as_str().unwrap(), e["id"].as_str().unwrap()))
        .collect();
    let want = [id(1), id(2), id(3)];
    assert_eq!(
        got,
        want.iter().map(|i| ("b", i.as_str())).collect::<Vec<_>>(),
        "{page}"
    );
    // In the named collection `after` still applies.
    let page = get_json(
        &format!(
            "{}/v2/db/app/bootstrap?collection=b&after={}",
            server.url,
            id(2)
        ),
        &t,
    )
    .await;
    assert_eq!(page["entities"].as_array().unwrap().len(), 1, "{page}");
}

/// A conflict-log page for a token that reads one collection skips the others' entries and
/// reads on to fill the page (up to `4 x limit` entries), instead of answering an empty page
/// for every `limit` entries it cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_page_reads_past_entries_the_token_cannot_see() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let id = |n: u32| format!("0190a5c2-0000-7000-8000-{n:012x}");
    let targets = [("b", 1), ("b", 2), ("b", 3), ("b", 4), ("b", 5), ("a", 6)];
    let push = |client: &'static str| {
        let ops: Vec<serde_json::Value> = targets
            .iter()
            .enumerate()
            .map(|(i, (c, n))| {
                let i = i as u64;
                op_json(
                    i + 1,
                    c,
                    &id(*n),
                    Some(json!({ "by": client })),
                    None,
                    (1, i),
                    client,
                )
            })
            .collect();
        let (url, t) = (server.url.clone(), token("app", client, &["write"], 3600));
        async move { push_json(&url, "app", &t, client, ops).await.1 }
    };
    push("c1").await;
    // c2 never saw them: every op is concurrent and loses (server wins), six entries, the
    // one of `a` last.
    let lost = push("c2").await;
    assert!(
        lost["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "rejected"),
        "{lost}"
    );
    let reader = token("app", "r", &["read:a"], 3600);
    let page = get_json(
        &format!("{}/v2/db/app/conflicts?limit=2", server.url),
        &reader,
    )
    .await;
    let conflicts = page["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{page}");
    assert_eq!(conflicts[0]["collection"], "a");
    assert_eq!(conflicts[0]["id"], id(6).as_str());
    // The log ended within the page's reading budget.
    assert!(page["next"].is_null(), "{page}");
    // A reader of everything gets full pages.
    let all = get_json(
        &format!("{}/v2/db/app/conflicts?limit=2", server.url),
        &token("app", "r", &["read"], 3600),
    )
    .await;
    assert_eq!(all["conflicts"].as_array().unwrap().len(), 2, "{all}");
    assert!(!all["next"].is_null(), "{all}");
}

/// A burst of event streams takes at most `max_live` places: each request takes its place
/// before it compares the count with the limit, so requests arriving together cannot all
/// pass the check before any of them counts. Refused ones give their place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_event_streams_stays_within_max_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &["--max-live", "2"]);
    server.create_db("app").await;
    let reader = token("app", "r", &["read"], 60);
    let http = reqwest::Client::new();
    let url = format!("{}/v2/db/app/events?since=0", server.url);
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let (http, url, reader) = (http.clone(), url.clone(), reader.clone());
            tokio::spawn(async move { http.get(url).bearer_auth(reader).send().await.unwrap() })
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for r in burst {
        let resp = r.await.unwrap();
        match resp.status().as_u16() {
            200 => open.push(resp),
            503 => refused += 1,
            s => panic!("status {s}"),
        }
    }
    assert_eq!((open.len(), refused), (2, 14));
    let m = metrics_text(&server.url).await;
    assert!(m.contains("entidb_sync_live_waiters 2"), "{m}");
    drop(open);
    // Closed streams give their places back (the server notices at its next write to them).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics_text(&server.url).await;
        if m.contains("entidb_sync_live_waiters 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connections that never finish a request: one that stalls halfway through its head is
/// closed after `idle_timeout_ms`; one that trickles its head forever (never idle) is cut
/// when `shutdown_grace_ms` has passed after SIGTERM, and the server still closes its
/// databases and exits 0 (before, a graceful shutdown waited for it without end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_and_do_not_hold_a_shutdown() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let config = "max_wait_ms = 1000\nrequest_timeout_ms = 2000\nidle_timeout_ms = 3000\n\
                  shutdown_grace_ms = 1500\n";
    let mut server = Server::start(&dir.path().join("data"), Some(config), &[]);
    server.create_db("app").await;

    let mut stalled = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nx-a:")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(15), stalled.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "a stalled head is closed: {closed:?}"
    );

    // A head that keeps arriving, a byte at a time: never idle, never complete.
    let mut trickle = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nx-a: ")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..200 {
            if trickle.write_all(b"a").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    assert!(server.stop(), "the server exits 0");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    assert!(writer.await.unwrap(), "the trickling connection was cut");
}

/// At most `max_connections` are open: the next client waits (in the kernel's backlog)
/// until one closes, then is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_for_a_place() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &["--max-connections", "2"]);
    let first = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let second = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    // Let the server accept both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let healthz = format!("{}/healthz", server.url);
    let waiting = tokio::spawn(async move { reqwest::get(healthz).await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!waiting.is_finished(), "a third connection was served");
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a place was free")
        .unwrap();
    assert_eq!(status, 200);
    drop(second);
    let m = metrics_text(&server.url).await;
    let open = m
        .lines()
        .find_map(|l| l.strip_prefix("entidb_http_connections "))
        .unwrap_or_else(|| panic!("no connections gauge: {m}"));
    let open: i64 = open.trim().parse().unwrap();
    assert!((1..=2).contains(&open), "{open} open: {m}");
}

/// Pages are bounded in bytes too (16 MiB of documents beyond the first transaction or
/// entity), not only in changes: three 6 MiB documents come in two pull pages and two
/// bootstrap pages, and a client syncing from scratch gets all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_large_documents_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None, &[]);
    server.create_db("app").await;
    let t = token("app", "c1", &["read", "write"], 3600);
    let big = "x".repeat(6 << 20);
    for n in 1..=3u64 {
        let id = format!("0190a5c2-0000-7000-8000-{n:012x}");
        let doc = json!({"n": n, "data": big});
        let op = op_json(n, "files", &id, Some(doc), None, (1, n), "c1");
        let (status, _) = push_json(&server.url, "app", &t, "c1", vec![op]).await;
        assert_eq!(status, 200);
    }
    let url = &server.url;
    let first: entidb_sync::wire::PullResponse =
        get_cbor(&format!("{url}/v2/db/app/pull?since=0"), &t).await;
    assert_eq!((first.changes.len(), first.has_more), (2, true));
    let second: entidb_sync::wire::PullResponse =
        get_cbor(&format!("{url}/v2/db/app/pull?since={}", first.cursor), &t).await;
    assert_eq!((second.changes.len(), second.has_more), (1, false));
    let boot: entidb_sync::wire::BootstrapResponse =
        get_cbor(&format!("{url}/v2/db/app/bootstrap"), &t).await;
    assert_eq!(boot.entities.len(), 2);
    assert_eq!(boot.total, Some(3));
    let next = boot.next.expect("a second page");
    assert_eq!(next.collection, "files");
    assert_eq!(next.after, Some(boot.entities[1].id));
    // A client from scratch: bootstrap pages of this size, then nothing left to pull.
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["files"]).await;
    rb.sync_now().await.unwrap();
    assert_eq!(b.collection("files").count().await.unwrap(), 3);
}

/// Pushes of large documents fit the server. (1) A client's batches end at `push_bytes` (4
/// MiB) of documents: twelve 1.5 MiB writes made offline (18 MiB) went as one push of 500
/// ops by count, over the server's 8 MiB body limit, and every round failed with 413
/// forever. (2) A push whose answer would carry more than `ANSWER_BYTES` (16 MiB) of the
/// server's documents (its ops lose to twelve 1.5 MiB winners) is refused with 413 before
/// anything is stored (it built the whole answer in memory), and the client sends it again
/// in halves: every op is decided once, and the client adopts every winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pushes_are_split_to_fit_the_server() {
    let (dir, server) = app_server(None).await;
    let logged = |name: &str| PushLog::new(&server.url, name);
    let config = |name: &str| {
        let mut cfg = entidb_sync::SyncConfig::new("app", name, &["files"]);
        cfg.max_attempts = 1;
        cfg
    };
    let (la, lb) = (logged("a"), logged("b"));
    let (a, ra) = client_with_config(&dir.path().join("a"), config("a"), la.clone()).await;
    let (b, rb) = client_with_config(&dir.path().join("b"), config("b"), lb.clone()).await;
    let big = |i: usize| json!({ "n": i, "body": "x".repeat(1536 << 10) });
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(a.collection("files").insert(&big(i)).await.unwrap());
    }
    ra.sync_now().await.unwrap();
    let pushes = la.pushes.lock().unwrap().clone();
    assert!(pushes.len() >= 6, "batches of about 4 MiB: {pushes:?}");
    for (len, status) in &pushes {
        assert_eq!(*status, 200, "{pushes:?}");
        assert!(*len <= (4 << 20) + (1 << 20), "{pushes:?}");
    }
    // B never saw them: its puts of the same ids are concurrent and lose (server-wins), and
    // the answer would hold all twelve winners (18 MiB).
    for id in &ids {
        b.collection("files")
            .put(*id, &json!({ "from": "b" }))
            .await
            .unwrap();
    }
    rb.sync_now().await.unwrap();
    let pushes = lb.pushes.lock().unwrap().clone();
    assert_eq!(pushes.first().map(|p| p.1), Some(413), "{pushes:?}");
    assert!(pushes[1..].iter().all(|p| p.1 == 200), "{pushes:?}");
    assert_eq!(rb.pending_ops().await.unwrap(), 0);
    for (i, id) in ids.iter().enumerate() {
        let doc: serde_json::Value = b.collection("files").get(*id).await.unwrap().unwrap();
        assert_eq!(doc, big(i), "B adopted the winner of {i}");
    }
    // Each loser is logged once: the refused push stored nothing.
    let log = rb.conflicts(None, 100).await.unwrap().conflicts;
    assert_eq!(log.len(), 12, "{}", log.len());
}

/// An app that had data before it attached sync (an offline-only first version): the first
/// bootstrap's sweep deleted every local entity the server did not return, so the notes
/// written before the attach were gone (and the deletions, the replicator's own, were never
/// captured: no error, no trace). It keeps them now; the server's entities arrive beside
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_keeps_local_data_sync_never_took() {
    let (dir, server) = app_server(None).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    let from_a = a
        .collection("notes")
        .insert(&json!({"t": "on the server"}))
        .await
        .unwrap();
    ra.sync_now().await.unwrap();
    let path = dir.path().join("b");
    let early = {
        let b = Database::open(&path).await.unwrap();
        let id = b
            .collection("notes")
            .insert(&json!({"t": "before sync"}))
            .await
            .unwrap();
        b.close().await.unwrap();
        id
    };
    let (b, rb) = client(&server.url, &path, "app", "b", &["notes"]).await;
    let report = rb.sync_now().await.unwrap();
    assert!(report.bootstrapped);
    let got: Option<serde_json::Value> = b.collection("notes").get(early).await.unwrap();
    assert_eq!(got, Some(json!({"t": "before sync"})));
    let got: Option<serde_json::Value> = b.collection("notes").get(from_a).await.unwrap();
    assert_eq!(got, Some(json!({"t": "on the server"})));
}

/// Collection names reach the server as they are in a bootstrap's query: `R&D` got 400 on
/// every request (the bootstrap never ended), `c++` was read as `c  ` (a collection that
/// does not exist: an empty bootstrap). A name with `,` (the list separator) cannot be
/// synced, and attach says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_names_with_query_characters_bootstrap() {
    let (dir, server) = app_server(None).await;
    let names = ["R&D", "c++", "a#b", "50%"];
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &names).await;
    let mut ids = Vec::new();
    for n in names {
        ids.push(a.collection(n).insert(&json!({ "in": n })).await.unwrap());
    }
    ra.sync_now().await.unwrap();
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &names).await;
    let report = rb.sync_now().await.unwrap();
    assert!(report.bootstrapped);
    for (n, id) in names.iter().zip(&ids) {
        let got: Option<serde_json::Value> = b.collection(n).get(*id).await.unwrap();
        assert_eq!(got, Some(json!({ "in": n })), "{n}");
    }
    let local = Database::open(dir.path().join("c")).await.unwrap();
    let t = Arc::new(HttpTransport::new(
        &server.url,
        &token("app", "c", &["read", "write"], 60),
    ));
    let err = Replicator::attach(local, entidb_sync::SyncConfig::new("app", "c", &["x,y"]), t)
        .await
        .expect_err("a name with a comma is refused");
    assert!(matches!(err, SyncError::Config(_)), "{err}");
}

/// `sync_wait` with a wait over the server's 60 s bound asks for 60 s: it sent the wait as
/// it was, the server answered 400, and every live round failed after its push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_sync_wait_is_capped_not_refused() {
    let (dir, server) = app_server(None).await;
    let (a, ra) = client(&server.url, &dir.path().join("a"), "app", "a", &["notes"]).await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    ra.sync_now().await.unwrap();
    rb.sync_now().await.unwrap();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = a
            .collection("notes")
            .insert(&json!({"t": "late"}))
            .await
            .unwrap();
        ra.sync_now().await.unwrap();
        id
    });
    let report = rb.sync_wait(Duration::from_secs(120)).await.unwrap();
    let id = writer.await.unwrap();
    assert_eq!(report.pulled, 1, "{report:?}");
    assert!(b.collection("notes").exists(id).await.unwrap());
}

/// The status counts a write captured while the network is away: it showed 0 pending ops
/// after a failed round (only a push that ended recounted them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_ops_count_writes_captured_offline() {
    let (dir, server) = app_server(None).await;
    let net = Arc::new(Budgeted {
        inner: HttpTransport::new(&server.url, &token("app", "a", &["read", "write"], 3600)),
        budget: AtomicU32::new(u32::MAX),
    });
    let mut cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
    cfg.max_attempts = 1;
    let (a, ra) = client_with_config(&dir.path().join("a"), cfg, net.clone()).await;
    ra.sync_now().await.unwrap();
    net.budget.store(0, Ordering::SeqCst);
    for i in 0..3 {
        a.collection("notes")
            .insert(&json!({ "i": i }))
            .await
            .unwrap();
    }
    assert!(ra.sync_now().await.is_err(), "offline");
    assert_eq!(ra.status().pending_ops, 3);
    assert!(!ra.status().online);
    net.budget.store(u32::MAX, Ordering::SeqCst);
    ra.sync_now().await.unwrap();
    assert_eq!(ra.status().pending_ops, 0);
}

/// Two installations with one client id (a reinstall, or two devices given tokens with the
/// same `sub`) each number their ops from 1. The server dedupes per (client id, instance):
/// before, the second one's ops were answered `duplicate` as retries of the first one's,
/// dropped from its outbox, and its local edits replaced by the server's state. And the two
/// are different writers: an edit one of them made on an old version is still concurrent
/// with the other's newer write (server-wins rejects it) instead of passing for that
/// client's own latest write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_of_one_client_id_keep_their_writes_apart() {
    let (dir, server) = app_server(Some(POLICIES)).await;
    let (p1, r1) = client(&server.url, &dir.path().join("p1"), "app", "u", &["sw"]).await;
    let (p2, r2) = client(&server.url, &dir.path().join("p2"), "app", "u", &["sw"]).await;
    r1.sync_now().await.unwrap();
    r2.sync_now().await.unwrap();
    let shared = p1.collection("sw").insert(&json!({"v": 0})).await.unwrap();
    let first = p1
        .collection("sw")
        .insert(&json!({"from": "p1"}))
        .await
        .unwrap();
    r1.sync_now().await.unwrap();
    r2.sync_now().await.unwrap();
    assert!(p2.collection("sw").exists(shared).await.unwrap());
    // Each writes its own ops 3 and 4 (the same op ids), and they race on `shared`.
    let second = p2
        .collection("sw")
        .insert(&json!({"from": "p2"}))
        .await
        .unwrap();
    p1.collection("sw")
        .put(shared, &json!({"v": 1}))
        .await
        .unwrap();
    p2.collection("sw")
        .put(shared, &json!({"v": 2}))
        .await
        .unwrap();
    r1.sync_now().await.unwrap();
    let report = r2.sync_now().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    // P2's new entity reached the server (a third client sees it), and P1's edit held.
    let (c, rc) = client(&server.url, &dir.path().join("c"), "app", "c", &["sw"]).await;
    rc.sync_now().await.unwrap();
    for id in [first, second] {
        assert!(c.collection("sw").exists(id).await.unwrap());
    }
    let v: serde_json::Value = c.collection("sw").get(shared).await.unwrap().unwrap();
    assert_eq!(v, json!({"v": 1}));
    let v: serde_json::Value = p2.collection("sw").get(shared).await.unwrap().unwrap();
    assert_eq!(v, json!({"v": 1}), "the loser adopted the winner");
}

/// Last-writer-wins ties are broken by the writer, not by the node a client puts in its
/// stamp: a client that named itself `zzz` won every tie against `m`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hlc_tie_is_broken_by_the_writer_not_the_stamps_node() {
    let (_dir, server) = app_server(Some(POLICIES)).await;
    let id = "00000000-0000-0000-0000-00000000000a";
    let push = |client: &'static str, node: &'static str, v: i64| {
        let url = server.url.clone();
        async move {
            let t = token("app", client, &["read", "write"], 60);
            let op = op_json(
                1,
                "lww",
                id,
                Some(json!({ "v": v })),
                None,
                (1_000, 0),
                node,
            );
            push_json(&url, "app", &t, client, vec![op]).await
        }
    };
    let (status, body) = push("m", "m", 1).await;
    assert_eq!(
        (status, body["results"][0]["status"].as_str()),
        (200, Some("applied"))
    );
    // Concurrent (it never saw version 1), the same millis and counter, a forged node.
    let (status, body) = push("a", "zzz", 2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "rejected", "{body}");
    assert_eq!(
        body["results"][0]["state"]["doc"],
        json!({"v": 1}),
        "{body}"
    );
}

/// A long poll by a token that reads one collection waits through transactions it cannot
/// see: it was answered at the first commit anywhere in the database (an empty page), so a
/// scoped client on a busy database polled without pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_waits_through_changes_it_cannot_see() {
    let (_dir, server) = app_server(None).await;
    let url = server.url.clone();
    let scoped = token("app", "r", &["read:a"], 60);
    let poll = tokio::spawn(async move {
        get_json(
            &format!("{url}/v2/db/app/pull?since=0&wait_ms=20000"),
            &scoped,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w = token("app", "w", &["write"], 60);
    let put = |n: u64, coll: &str| {
        let id = format!("00000000-0000-0000-0000-0000000000{n:02}");
        op_json(n, coll, &id, Some(json!({ "n": n })), None, (n, 0), "w")
    };
    let (status, _) = push_json(&server.url, "app", &w, "w", vec![put(1, "b")]).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished(),
        "the poll was answered by a change it cannot see"
    );
    let (status, _) = push_json(&server.url, "app", &w, "w", vec![put(2, "a")]).await;
    assert_eq!(status, 200);
    let page = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll ends with the visible change")
        .unwrap();
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["changes"][0]["collection"], "a", "{page}");
}

/// A database deleted and created again (or restored from an older backup) is behind the
/// cursor its clients hold. That was a 400 on every pull and every push of theirs, for
/// good (the operations guide said such clients "must bootstrap again", and no API did
/// it). Now the push that asks for the page after that cursor is refused with 410
/// `rebootstrap` before anything is stored: the client bootstraps the database as it is,
/// then pushes, and its pending write reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ahead_of_a_recreated_database_bootstraps_again() {
    let (dir, server) = app_server(None).await;
    let log = PushLog::new(&server.url, "a");
    let cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
    let (a, ra) = client_with_config(&dir.path().join("a"), cfg, log.clone()).await;
    for i in 0..5 {
        a.collection("notes")
            .insert(&json!({ "i": i }))
            .await
            .unwrap();
        ra.sync_now().await.unwrap();
    }
    let status = reqwest::Client::new()
        .delete(format!("{}/v2/admin/databases/app", server.url))
        .bearer_auth(Server::admin_token())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    server.create_db("app").await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    let from_b = b
        .collection("notes")
        .insert(&json!({"from": "b"}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    let pending = a
        .collection("notes")
        .insert(&json!({"from": "a"}))
        .await
        .unwrap();
    log.pushes.lock().unwrap().clear();
    let report = ra.sync_now().await.unwrap();
    assert!(report.bootstrapped, "{report:?}");
    let statuses: Vec<u16> = log.pushes.lock().unwrap().iter().map(|p| p.1).collect();
    assert_eq!(
        statuses,
        [410, 200],
        "refused before storing, then pushed without a page"
    );
    assert_eq!(ra.status().pending_ops, 0);
    assert!(a.collection("notes").exists(from_b).await.unwrap());
    rb.sync_now().await.unwrap();
    assert!(b.collection("notes").exists(pending).await.unwrap());
}

/// An app update that syncs one more collection gets that collection's existing server
/// entities: pulls only bring changes after the client's cursor, so before, they never
/// arrived (only later changes to them did). The attach that adds it bootstraps again; a
/// write pending from before the update still goes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_synced_later_is_bootstrapped() {
    let (dir, server) = app_server(None).await;
    let (b, rb) = client(
        &server.url,
        &dir.path().join("b"),
        "app",
        "b",
        &["notes", "tasks"],
    )
    .await;
    let task = b
        .collection("tasks")
        .insert(&json!({"t": "old"}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    let path = dir.path().join("a");
    let pending = {
        let (a, ra) = client(&server.url, &path, "app", "a", &["notes"]).await;
        ra.sync_now().await.unwrap();
        let id = a
            .collection("notes")
            .insert(&json!({"n": 1}))
            .await
            .unwrap();
        ra.capture().await.unwrap();
        drop(ra);
        a.close().await.unwrap();
        id
    };
    let (a, ra) = client(&server.url, &path, "app", "a", &["notes", "tasks"]).await;
    let report = ra.sync_now().await.unwrap();
    assert!(report.bootstrapped, "{report:?}");
    let got: Option<serde_json::Value> = a.collection("tasks").get(task).await.unwrap();
    assert_eq!(got, Some(json!({"t": "old"})));
    rb.sync_now().await.unwrap();
    assert!(b.collection("notes").exists(pending).await.unwrap());
    // The same list again does not bootstrap again.
    drop(ra);
    a.close().await.unwrap();
    let (_a2, ra2) = client_with(&dir.path().join("a"), "app", "a", &["notes", "tasks"], {
        Arc::new(HttpTransport::new(
            &server.url,
            &token("app", "a", &["read", "write"], 60),
        ))
    })
    .await;
    assert!(!ra2.sync_now().await.unwrap().bootstrapped);
}

/// A write the server refuses for good (here to a synced collection the token may only
/// read) stops the client's pushes from that op on, but no longer its pulls: the round
/// failed before it pulled, so the others' changes stopped arriving too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_does_not_stop_pulls() {
    let (dir, server) = app_server(None).await;
    let scoped = Arc::new(HttpTransport::new(
        &server.url,
        &token("app", "a", &["read", "write:notes"], 3600),
    ));
    let (a, ra) = client_with(
        &dir.path().join("a"),
        "app",
        "a",
        &["notes", "catalog"],
        scoped,
    )
    .await;
    let (b, rb) = client(&server.url, &dir.path().join("b"), "app", "b", &["notes"]).await;
    ra.sync_now().await.unwrap();
    a.collection("catalog")
        .insert(&json!({"oops": 1}))
        .await
        .unwrap();
    let from_b = b
        .collection("notes")
        .insert(&json!({"b": 1}))
        .await
        .unwrap();
    rb.sync_now().await.unwrap();
    match ra.sync_now().await {
        Err(SyncError::Server { status: 403, .. }) => {}
        other => panic!("expected the push's 403, got {other:?}"),
    }
    assert!(a.collection("notes").exists(from_b).await.unwrap());
    assert_eq!(ra.status().pending_ops, 1);
}

/// A collection added while a bootstrap is unfinished: the bootstrap starts over, since
/// resumed at its saved position (in `notes`) with the longer list it would pass over
/// `aaa`, which sorts before it, and `aaa` would never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_added_during_a_bootstrap_is_not_skipped() {
    let (dir, server) = app_server(None).await;
    let (b, rb) = client(
        &server.url,
        &dir.path().join("b"),
        "app",
        "b",
        &["aaa", "notes"],
    )
    .await;
    for i in 0..30 {
        b.collection("notes")
            .insert(&json!({ "i": i }))
            .await
            .unwrap();
    }
    let mut early = Vec::new();
    for i in 0..3 {
        early.push(
            b.collection("aaa")
                .insert(&json!({ "a": i }))
                .await
                .unwrap(),
        );
    }
    rb.sync_now().await.unwrap();
    let path = dir.path().join("c");
    {
        let cut = Arc::new(Budgeted {
            inner: HttpTransport::new(&server.url, &token("app", "c", &["read", "write"], 3600)),
            budget: AtomicU32::new(3),
        });
        let mut cfg = entidb_sync::SyncConfig::new("app", "c", &["notes"]);
        cfg.bootstrap_limit = 5;
        cfg.max_attempts = 1;
        let (c, rc) = client_with_config(&path, cfg, cut).await;
        assert!(
            rc.sync_now().await.is_err(),
            "the network went away mid-bootstrap"
        );
        let got = contents(&c, "notes").await.len();
        assert!(got > 0 && got < 30, "part of it arrived: {got}");
        drop(rc);
        c.close().await.unwrap();
    }
    let (c, rc) = client(&server.url, &path, "app", "c", &["aaa", "notes"]).await;
    rc.sync_now().await.unwrap();
    assert_eq!(contents(&c, "notes").await.len(), 30);
    for id in early {
        assert!(c.collection("aaa").exists(id).await.unwrap());
    }
}

/// A push split into batches by `push_bytes` asks for the page of others' changes with its
/// last batch only: a short batch was taken for the last, so the first one asked for the
/// page, and the round, finding that page complete, did not pull what the others committed
/// while the rest went up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_last_batch_of_a_push_asks_for_the_page() {
    let (dir, server) = app_server(None).await;
    let log = PushLog::new(&server.url, "a");
    let mut cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
    cfg.push_bytes = 3000;
    let (a, ra) = client_with_config(&dir.path().join("a"), cfg, log.clone()).await;
    ra.sync_now().await.unwrap();
    for i in 0..3 {
        a.collection("notes")
            .insert(&json!({ "i": i, "body": "x".repeat(2000) }))
            .await
            .unwrap();
    }
    log.paths.lock().unwrap().clear();
    ra.sync_now().await.unwrap();
    let paths = log.paths.lock().unwrap().clone();
    assert_eq!(paths.len(), 3, "{paths:?}");
    let asking: Vec<bool> = paths.iter().map(|p| p.contains("since=")).collect();
    assert_eq!(asking, [false, false, true], "{paths:?}");
}

/// A server's `max_ops_per_push` below the client's `push_batch`: the first push is split
/// until it fits, and the next pushes start at that size instead of being refused again
/// every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_op_limit_is_learned_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        None,
        &["--max-ops-per-push", "10"],
    );
    server.create_db("app").await;
    let log = PushLog::new(&server.url, "a");
    let cfg = entidb_sync::SyncConfig::new("app", "a", &["notes"]);
    let (a, ra) = client_with_config(&dir.path().join("a"), cfg, log.clone()).await;
    let statuses = |log: &PushLog| -> Vec<u16> {
        let s = log.pushes.lock().unwrap().iter().map(|p| p.1).collect();
        log.pushes.lock().unwrap().clear();
        s
    };
    for round in 0..2 {
        for i in 0..30 {
            a.collection("notes")
                .insert(&json!({ "round": round, "i": i }))
                .await
                .unwrap();
        }
        ra.sync_now().await.unwrap();
        let s = statuses(&log);
        if round == 0 {
            assert!(s.contains(&400), "the first push was refused: {s:?}");
        } else {
            assert!(s.iter().all(|&c| c == 200), "refused again: {s:?}");
        }
    }
    assert_eq!(ra.status().pending_ops, 0);
    assert_eq!(a.collection("notes").count().await.unwrap(), 60);
}
