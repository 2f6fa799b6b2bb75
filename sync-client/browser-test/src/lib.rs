//! # The sync client in a real browser
//!
//! Each exported function is one scenario: it runs the engine on its in-memory backend and
//! the replicator over `HttpTransport` (the browser's `fetch`) inside a page, against a live
//! `entidb serve` on another origin (so every request is a cross-origin request with a CORS
//! preflight). A scenario resolves with a short summary or rejects with what went wrong.
//!
//! `run.mjs` starts the server and a page server, loads this crate (built for
//! `wasm32-unknown-unknown` and passed through `wasm-bindgen --target web`) in headless
//! Chromium, and calls every scenario; `scripts/test.sh` runs it. By hand:
//!
//! ```sh
//! cargo build -p entidb-sync-browser-test --target wasm32-unknown-unknown
//! wasm-bindgen --target web --out-dir /tmp/pkg \
//!     target/wasm32-unknown-unknown/debug/entidb_sync_browser_test.wasm
//! cargo build -p entidb-server --bin entidb
//! ENTIDB_BROWSER_TOOLS=<dir with node_modules/playwright-core> \
//!     node sync-client/browser-test/run.mjs target/debug/entidb /tmp/pkg
//! ```
//!
//! On native targets the crate is empty.

#![cfg(target_arch = "wasm32")]
#![allow(
    unsafe_code,
    reason = "wasm-bindgen's generated glue for the exported functions"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use entidb::{Database, EntityId, ScanOptions};

use entidb_io::{BoxFuture, Clock, SystemClock};
use entidb_sync::{
    HttpTransport, Replicator, Request, Response, SyncConfig, SyncError, Transport, TransportError,
};
use futures_util::future::{Either, join, select};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;

const COLLECTION: &str = "notes";

#[wasm_bindgen(start)]
fn start() {
    // A panic shows its message in the console (and so in run.mjs's output), not only
    // "unreachable executed".
    console_error_panic_hook::set_once();
}

fn fail(message: String) -> JsValue {
    js_sys::Error::new(&message).into()
}

/// Fails the scenario with a message unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(fail(format!($($fmt)+)));
        }
    };
}

/// Converts any error into a scenario failure that names the step.
fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, JsValue> {
    r.map_err(|e| fail(format!("{what}: {e}")))
}

async fn replicator(
    url: &str,
    token: &str,
    client_id: &str,
    tune: impl FnOnce(&mut SyncConfig),
) -> Result<Replicator, JsValue> {
    let transport = Arc::new(HttpTransport::new(url, token));
    replicator_over(transport, client_id, tune).await
}

async fn replicator_over(
    transport: Arc<dyn Transport>,
    client_id: &str,
    tune: impl FnOnce(&mut SyncConfig),
) -> Result<Replicator, JsValue> {
    let db = step("open a database in memory", Database::memory().await)?;
    let mut config = SyncConfig::new("app", client_id, &[COLLECTION]);
    config.retry_base = Duration::from_millis(20);
    tune(&mut config);
    step(
        "attach the replicator",
        Replicator::attach(db, config, transport).await,
    )
}

/// `HttpTransport`, counting the requests it sends.
#[derive(Debug)]
struct Counting {
    inner: HttpTransport,
    sent: AtomicU32,
}

impl Transport for Counting {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.inner.send(request)
    }
}

async fn contents(db: &Database) -> Result<Vec<(EntityId, Value)>, JsValue> {
    let mut out = Vec::new();
    let mut opts = ScanOptions::limit(1000);
    loop {
        let page = step("scan", db.collection(COLLECTION).scan(opts).await)?;
        for d in &page.items {
            out.push((d.id(), step("decode", d.decode::<Value>())?));
        }
        match page.next {
            Some(n) => opts.after = Some(n),
            None => return Ok(out),
        }
    }
}

/// The server's count of long polls and event streams waiting (`/metrics`, which the
/// server's CORS layer covers too).
async fn live_waiters(url: &str) -> Result<u64, JsValue> {
    let resp = step(
        "GET /metrics",
        entidb_sync::reqwest::get(format!("{url}/metrics")).await,
    )?;
    let text = step("read /metrics", resp.text().await)?;
    text.lines()
        .find_map(|l| l.strip_prefix("entidb_sync_live_waiters "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| fail("no entidb_sync_live_waiters in /metrics".into()))
}

fn millis_of(id: EntityId) -> u64 {
    // A generated id is a UUIDv7: its first 48 bits are Unix milliseconds.
    let b = id.as_bytes();
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// The engine's world in a browser is the host's: ids carry the wall clock's time and the
/// browser's randomness (two fresh databases never generate the same id), and sleeping
/// waits on a real timer.
#[wasm_bindgen]
pub async fn host_clock_and_entropy() -> Result<String, JsValue> {
    let a = step("open a", Database::memory().await)?;
    let b = step("open b", Database::memory().await)?;
    let now = js_sys::Date::now() as u64;
    let mut ids = Vec::new();
    for db in [&a, &b] {
        for i in 0..3 {
            ids.push(step(
                "insert",
                db.collection(COLLECTION).insert(&json!({ "i": i })).await,
            )?);
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    check!(
        unique.len() == ids.len(),
        "two databases generated the same id: {ids:?}"
    );
    for id in &ids {
        let ms = millis_of(*id);
        check!(
            ms.abs_diff(now) < 60_000,
            "id {id} carries time {ms}, the page's clock says {now}"
        );
    }
    let clock = SystemClock;
    let before = clock.monotonic_nanos();
    clock.sleep(Duration::from_millis(30)).await;
    let slept = clock.monotonic_nanos().saturating_sub(before);
    check!(
        slept >= 25_000_000,
        "a 30 ms sleep returned after {slept} ns"
    );
    Ok(format!("6 distinct ids near {now} ms; slept {slept} ns"))
}

/// Two tabs write offline, then sync through the server: each ends with the other's writes
/// (the second one by bootstrap, the first one by pull), a delete reaches both, and nothing
/// is left pending.
#[wasm_bindgen]
pub async fn offline_writes_meet_through_the_server(
    url: String,
    token_a: String,
    token_b: String,
) -> Result<String, JsValue> {
    let a = replicator(&url, &token_a, "tab-a", |_| {}).await?;
    let notes_a = a.database().collection(COLLECTION);
    for i in 0..3 {
        step(
            "a writes",
            notes_a.insert(&json!({ "from": "a", "i": i })).await,
        )?;
    }
    let ra = step("a's first sync", a.sync_now().await)?;
    check!((ra.captured, ra.pushed) == (3, 3), "a's first sync: {ra:?}");

    let b = replicator(&url, &token_b, "tab-b", |_| {}).await?;
    let notes_b = b.database().collection(COLLECTION);
    for i in 0..2 {
        step(
            "b writes",
            notes_b.insert(&json!({ "from": "b", "i": i })).await,
        )?;
    }
    let rb = step("b's first sync", b.sync_now().await)?;
    check!(
        rb.bootstrapped && rb.pushed == 2,
        "b's first sync (a bootstrap and a push): {rb:?}"
    );
    let ra = step("a pulls", a.sync_now().await)?;
    check!(ra.pulled >= 2, "a pulled {ra:?}");

    let in_a = contents(a.database()).await?;
    let in_b = contents(b.database()).await?;
    check!(in_a.len() == 5, "a holds {in_a:?}");
    check!(in_a == in_b, "a holds {in_a:?}, b holds {in_b:?}");

    let gone = in_a[0].0;
    check!(
        step("a deletes", notes_a.delete(gone).await)?,
        "the note to delete was not there"
    );
    step("a pushes the delete", a.sync_now().await)?;
    step("b pulls the delete", b.sync_now().await)?;
    check!(
        !step("exists", notes_b.exists(gone).await)?,
        "the delete did not reach b"
    );
    for (name, r) in [("a", &a), ("b", &b)] {
        let s = r.status();
        check!(
            s.online && s.pending_ops == 0 && s.last_error.is_none(),
            "{name}'s status {s:?}"
        );
        let now = js_sys::Date::now() as u64;
        check!(
            s.last_sync_millis.is_some_and(|t| t.abs_diff(now) < 60_000),
            "{name}'s last sync {:?}, the page's clock says {now}",
            s.last_sync_millis
        );
    }
    Ok(format!(
        "5 notes on both tabs, a delete reached both; cursor {}",
        b.status().cursor
    ))
}

/// A live round (`sync_wait`) ends when the app writes, not when its long poll runs out.
/// The next live round receives the other tab's write. Last, a live round the page drops
/// (nothing written anywhere, so the server has no reason to answer its poll) must abort
/// its `fetch`: run.mjs then checks that the server no longer counts the poll, long before
/// its 60 s are up. (The polls the writes ended cannot show this: the push that follows
/// them wakes them on the server anyway.)
#[wasm_bindgen]
pub async fn a_local_write_ends_the_long_poll(
    url: String,
    token_a: String,
    token_b: String,
) -> Result<String, JsValue> {
    let a = replicator(&url, &token_a, "live-a", |c| c.max_attempts = 1).await?;
    let b = replicator(&url, &token_b, "live-b", |_| {}).await?;
    step("a's first sync", a.sync_now().await)?;
    step("b's first sync", b.sync_now().await)?;
    let clock = SystemClock;
    let wait = Duration::from_secs(60);

    let started = clock.monotonic_nanos();
    let (report, written) = join(a.sync_wait(wait), async {
        clock.sleep(Duration::from_millis(300)).await;
        a.database()
            .collection(COLLECTION)
            .insert(&json!({ "live": "from a" }))
            .await
    })
    .await;
    let report = step("a's live round", report)?;
    let id = step("a writes during the round", written)?;
    let took = Duration::from_nanos(clock.monotonic_nanos() - started);
    check!(
        (report.captured, report.pushed) == (1, 1),
        "the write was not pushed in the round it ended: {report:?}"
    );
    check!(
        took < Duration::from_secs(30),
        "the round waited its long poll out ({took:?})"
    );

    let started = clock.monotonic_nanos();
    let (report, other) = join(a.sync_wait(wait), async {
        clock.sleep(Duration::from_millis(300)).await;
        b.database()
            .collection(COLLECTION)
            .insert(&json!({ "live": "from b" }))
            .await
            .map_err(|e| e.to_string())?;
        b.sync_now().await.map_err(|e| e.to_string())
    })
    .await;
    let report = step("a's second live round", report)?;
    step("b writes and pushes", other)?;
    let took = Duration::from_nanos(clock.monotonic_nanos() - started);
    check!(
        report.pulled >= 1,
        "a did not receive b's write: {report:?}"
    );
    check!(
        took < Duration::from_secs(30),
        "the second round waited its long poll out ({took:?})"
    );
    let in_a = contents(a.database()).await?;
    check!(
        in_a.iter().any(|(_, v)| *v == json!({ "live": "from b" })),
        "a holds {in_a:?}, without b's write"
    );
    step("b pulls", b.sync_now().await)?;
    check!(
        step(
            "exists",
            b.database().collection(COLLECTION).exists(id).await
        )?,
        "a's live write did not reach b"
    );
    // Dropped once the server counts its poll (and before 10 s, or the scenario fails).
    let round = std::pin::pin!(a.sync_wait(wait));
    let counted = std::pin::pin!(async {
        let give_up = clock.monotonic_nanos() + 10_000_000_000;
        while clock.monotonic_nanos() < give_up {
            if live_waiters(&url).await? == 1 {
                return Ok(());
            }
            clock.sleep(Duration::from_millis(20)).await;
        }
        Err(fail(
            "the server never counted the live round's poll".into(),
        ))
    });
    match select(round, counted).await {
        Either::Left((r, _)) => {
            return Err(fail(format!(
                "a live round with nothing to pull ended: {r:?}"
            )));
        }
        Either::Right((counted, _)) => counted?,
    }
    Ok(format!(
        "a local write ended a 60 s poll; the next round received b's write in {took:?}"
    ))
}

/// A server that cannot be reached: the replicator tries `max_attempts` times with backoff
/// between them (sleeping on the browser's timers), then reports a network error, with the
/// write still pending.
#[wasm_bindgen]
pub async fn an_unreachable_server_is_a_network_error(url: String) -> Result<String, JsValue> {
    let transport = Arc::new(Counting {
        inner: HttpTransport::new(&url, "not-a-token"),
        sent: AtomicU32::new(0),
    });
    let a = replicator_over(transport.clone(), "offline", |c| c.max_attempts = 3).await?;
    step(
        "write offline",
        a.database()
            .collection(COLLECTION)
            .insert(&json!({ "offline": true }))
            .await,
    )?;
    let err = match a.sync_now().await {
        Ok(r) => return Err(fail(format!("sync to {url} succeeded: {r:?}"))),
        Err(e) => e,
    };
    check!(
        matches!(err, SyncError::Transport(_)),
        "expected a network error, got {err:?}"
    );
    let s = a.status();
    check!(
        !s.online && s.last_error.is_some(),
        "status after the failure: {s:?}"
    );
    let pending = step("pending ops", a.pending_ops().await)?;
    check!(pending == 1, "{pending} ops pending, not the one written");
    let sent = transport.sent.load(Ordering::Relaxed);
    check!(sent == 3, "{sent} requests for 3 attempts");
    Ok(format!("3 attempts, then: {err}"))
}

/// The page's origin is not in the server's `cors_origins`: the browser refuses the
/// responses, which the replicator sees as a network error (nothing is acknowledged).
#[wasm_bindgen]
pub async fn an_origin_the_server_does_not_allow_is_refused(
    url: String,
    token: String,
) -> Result<String, JsValue> {
    let a = replicator(&url, &token, "other-origin", |c| c.max_attempts = 1).await?;
    step(
        "write",
        a.database()
            .collection(COLLECTION)
            .insert(&json!({ "from": "an unlisted origin" }))
            .await,
    )?;
    match a.sync_now().await {
        Ok(r) => Err(fail(format!("the sync succeeded: {r:?}"))),
        Err(SyncError::Transport(e)) => {
            let pending = step("pending ops", a.pending_ops().await)?;
            check!(pending == 1, "{pending} ops pending, not the one written");
            Ok(format!("{e}"))
        }
        Err(e) => Err(fail(format!("expected a network error, got {e:?}"))),
    }
}
