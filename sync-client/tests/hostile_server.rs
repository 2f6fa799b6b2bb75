//! A server whose answers never move the client forward makes a round fail with a protocol
//! error instead of asking again forever (holding the replicator's lock): a pull page that
//! says more follows its own cursor, a bootstrap page that names the position it was asked
//! at, and a retention horizon that passes every bootstrap's cursor before it ends.

#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use entidb::Database;
use entidb_io::BoxFuture;
use entidb_sync::wire::{
    BootstrapPosition, BootstrapResponse, ErrorBody, ErrorCode, Format, PullResponse,
};
use entidb_sync::{
    Replicator, Request, Response, SyncConfig, SyncError, Transport, TransportError,
};

/// Answers every request with `answer(path)`, counting the requests.
struct Fake<F> {
    answer: F,
    requests: AtomicU32,
}

impl<F> std::fmt::Debug for Fake<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fake")
    }
}

impl<F: Fn(&str) -> Response + Send + Sync + 'static> Transport for Fake<F> {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let r = (self.answer)(&request.path);
        Box::pin(async move { Ok(r) })
    }
}

fn ok<T: serde::Serialize>(value: &T) -> Response {
    Response {
        status: 200,
        body: Format::Cbor.encode(value).unwrap(),
    }
}

/// A round against `answer`: it must end (within 20 s) with a protocol error.
async fn round_fails<F: Fn(&str) -> Response + Send + Sync + 'static>(
    bootstrap: bool,
    answer: F,
) -> (String, u32) {
    let db = Database::memory().await.unwrap();
    let mut cfg = SyncConfig::new("app", "c1", &["notes"]);
    cfg.initial_bootstrap = bootstrap;
    let fake = Arc::new(Fake {
        answer,
        requests: AtomicU32::new(0),
    });
    let r = Replicator::attach(db, cfg, fake.clone()).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), r.sync_now())
        .await
        .expect("the round ends");
    match result {
        Err(SyncError::Protocol(m)) => (m, fake.requests.load(Ordering::SeqCst)),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_pull_page_that_does_not_move_the_cursor() {
    let (msg, requests) = round_fails(false, |_| {
        ok(&PullResponse {
            cursor: 0,
            changes: Vec::new(),
            has_more: true,
        })
    })
    .await;
    assert!(msg.contains("more changes follow cursor 0"), "{msg}");
    assert!(requests <= 2, "{requests} requests");
}

#[tokio::test]
async fn a_bootstrap_page_that_does_not_move() {
    let (msg, requests) = round_fails(true, |_| {
        ok(&BootstrapResponse {
            next: Some(BootstrapPosition {
                after: None,
                collection: "notes".into(),
            }),
            total: Some(1),
            cursor: 5,
            entities: Vec::new(),
        })
    })
    .await;
    assert!(msg.contains("position it was asked at"), "{msg}");
    assert!(requests <= 3, "{requests} requests");
}

#[tokio::test]
async fn a_retention_shorter_than_a_bootstrap() {
    let (msg, requests) = round_fails(true, |path| {
        if path.contains("/bootstrap") {
            ok(&BootstrapResponse {
                next: None,
                total: Some(0),
                cursor: 1,
                entities: Vec::new(),
            })
        } else {
            Response {
                status: 410,
                body: Format::Cbor
                    .encode(&ErrorBody {
                        code: ErrorCode::Rebootstrap,
                        message: "behind the retained oplog".into(),
                        oldest_cursor: Some(1_000),
                    })
                    .unwrap(),
            }
        }
    })
    .await;
    assert!(msg.contains("retention"), "{msg}");
    assert!(requests <= 8, "{requests} requests");
}
