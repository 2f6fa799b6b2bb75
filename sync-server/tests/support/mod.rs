//! Shared helpers for the end-to-end tests: the real `entidb` binary on 127.0.0.1, clients
//! with real databases in temporary directories.
#![allow(dead_code, reason = "each test file uses a different subset")]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use entidb::Database;
use entidb_io::BoxFuture;
use entidb_server::config::KeyConfig;
use entidb_sync::{
    HttpTransport, Replicator, Request, Response, SyncConfig, Transport, TransportError,
};

pub const KEY_ID: &str = "k1";
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

pub fn key() -> KeyConfig {
    KeyConfig {
        id: KEY_ID.into(),
        secret: SECRET.into(),
    }
}

pub fn token(db: &str, client: &str, scope: &[&str], ttl: u64) -> String {
    let scope: Vec<String> = scope.iter().map(|s| (*s).to_owned()).collect();
    entidb_server::mint_token(&key(), db, client, &scope, ttl).unwrap()
}

/// A token that expires at `exp` (seconds since the Unix epoch; in the past for expired
/// ones, which the server still accepts within its 30 s leeway).
pub fn token_expiring_at(db: &str, client: &str, scope: &[&str], exp: u64) -> String {
    let claims = entidb_sync::wire::Claims {
        sub: client.into(),
        db: db.into(),
        scope: scope.iter().map(|s| (*s).to_owned()).collect(),
        exp,
        iat: 0,
    };
    entidb_server::auth::mint(KEY_ID, SECRET.as_bytes(), &claims).unwrap()
}

/// A running `entidb serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
    pub config: Option<PathBuf>,
}

impl Server {
    /// Starts the binary on a free port with the test key and `extra` flags.
    pub fn start(data: &Path, config_toml: Option<&str>, extra: &[&str]) -> Server {
        Self::start_at(data, config_toml, "127.0.0.1:0", extra)
    }

    pub fn start_at(
        data: &Path,
        config_toml: Option<&str>,
        listen: &str,
        extra: &[&str],
    ) -> Server {
        let config = config_toml.map(|text| {
            let p = data.with_extension("toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_entidb"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data)
            .arg("--listen")
            .arg(listen)
            .arg("--keys")
            .arg(format!("{KEY_ID}={SECRET}"))
            .args(extra)
            .env("ENTIDB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(p) = &config {
            cmd.arg("--config").arg(p);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        let url = first
            .strip_prefix("entidb serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url,
            data: data.to_owned(),
            config,
        }
    }

    /// The `host:port` it listens on.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// SIGTERM, then waits up to 60 s for the exit: whether it exited with success (a
    /// server still running then is killed, and this is false).
    pub fn stop(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.child.try_wait().unwrap() {
                Some(status) => return status.success(),
                None if std::time::Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
                None => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    pub fn admin_token() -> String {
        token("*", "admin", &["admin", "read", "write"], 3600)
    }

    /// Creates database `name` through the admin API.
    pub async fn create_db(&self, name: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/v2/admin/databases", self.url))
            .bearer_auth(Self::admin_token())
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory and a server on its `data` subdirectory (with `config_toml`),
/// hosting database `app`.
pub async fn app_server(config_toml: Option<&str>) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), config_toml, &[]);
    server.create_db("app").await;
    (dir, server)
}

/// A client: a real database in `dir` and a replicator to `server`.
pub async fn client(
    url: &str,
    dir: &Path,
    db: &str,
    name: &str,
    collections: &[&str],
) -> (Database, Replicator) {
    let transport = Arc::new(HttpTransport::new(
        url,
        &token(db, name, &["read", "write"], 3600),
    ));
    client_with(dir, db, name, collections, transport).await
}

pub async fn client_with(
    dir: &Path,
    db: &str,
    name: &str,
    collections: &[&str],
    transport: Arc<dyn Transport>,
) -> (Database, Replicator) {
    let mut cfg = SyncConfig::new(db, name, collections);
    cfg.retry_base = std::time::Duration::from_millis(20);
    client_with_config(dir, cfg, transport).await
}

/// A client with its own configuration: a real database in `dir` and a replicator.
pub async fn client_with_config(
    dir: &Path,
    cfg: SyncConfig,
    transport: Arc<dyn Transport>,
) -> (Database, Replicator) {
    let local = Database::open(dir).await.unwrap();
    let r = Replicator::attach(local.clone(), cfg, transport)
        .await
        .unwrap();
    (local, r)
}

/// A transport that loses the response of the next `drop_responses` requests after the
/// server has processed them (the client sees a network error).
#[derive(Debug)]
pub struct LossyTransport {
    pub inner: HttpTransport,
    pub drop_responses: AtomicU32,
}

impl Transport for LossyTransport {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            let r = self.inner.send(request).await;
            if take_one(&self.drop_responses) {
                return Err(TransportError("response lost (test)".into()));
            }
            r
        })
    }
}

/// A transport whose long polls (pulls that wait) reach the server only after `delay`: a
/// local write made meanwhile wins the race against the poll.
#[derive(Debug)]
pub struct SlowPolls {
    pub inner: HttpTransport,
    pub delay: std::time::Duration,
}

impl Transport for SlowPolls {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            if request.path.contains("wait_ms=") {
                tokio::time::sleep(self.delay).await;
            }
            self.inner.send(request).await
        })
    }
}

/// Takes one from `counter` unless it is 0; whether it did.
fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// A transport that sends `budget` more requests, then fails every one (the network is
/// gone) until the budget is raised.
#[derive(Debug)]
pub struct Budgeted {
    pub inner: HttpTransport,
    pub budget: AtomicU32,
}

impl Transport for Budgeted {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            if !take_one(&self.budget) {
                return Err(TransportError("offline (test)".into()));
            }
            self.inner.send(request).await
        })
    }
}

/// All documents of `collection` in id order, as JSON.
pub async fn contents(db: &Database, collection: &str) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut opts = entidb::ScanOptions::limit(10_000);
    loop {
        let page = db.collection(collection).scan(opts).await.unwrap();
        for d in &page.items {
            out.push((d.id().to_string(), d.decode::<serde_json::Value>().unwrap()));
        }
        match page.next {
            Some(n) => opts.after = Some(n),
            None => return out,
        }
    }
}

/// A transport that waits `delay` before every request (a slow link).
#[derive(Debug)]
pub struct SlowTransport {
    pub inner: HttpTransport,
    pub delay: std::time::Duration,
}

impl Transport for SlowTransport {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.send(request).await
        })
    }
}

/// GET `url` with a bearer token and parse the JSON answer.
pub async fn get_json(url: &str, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An op of a JSON push body: a put of `doc`, or a delete when `doc` is `None`; stamped
/// `(millis, counter)` by `node`.
pub fn op_json(
    op_id: u64,
    collection: &str,
    id: &str,
    doc: Option<serde_json::Value>,
    base: Option<u64>,
    (millis, counter): (u64, u64),
    node: &str,
) -> serde_json::Value {
    let mut op = serde_json::json!({"op_id": op_id, "collection": collection, "id": id,
        "kind": if doc.is_some() { "put" } else { "delete" }, "base_version": base,
        "hlc": {"millis": millis, "counter": counter, "node": node}});
    if let Some(doc) = doc {
        op["doc"] = doc;
    }
    op
}

/// POSTs a JSON push of `ops` for `client` to database `db`: the status and the answer (the
/// body as JSON, or as a string when it is not JSON).
pub async fn push_json(
    url: &str,
    db: &str,
    token: &str,
    client: &str,
    ops: Vec<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v2/db/{db}/push"))
        .bearer_auth(token)
        .json(&serde_json::json!({"client_id": client, "ops": ops}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

/// GETs `url` asking for CBOR and decodes the answer as `T`.
pub async fn get_cbor<T: entidb_sync::wire::Message>(url: &str, token: &str) -> T {
    let bytes = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .header("accept", "application/cbor")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    entidb_sync::wire::Format::Cbor.decode(&bytes).unwrap()
}

/// Reads a streamed body (an event stream) until it ends or `secs` pass: what arrived, and
/// whether it ended.
pub async fn read_until_end(resp: &mut reqwest::Response, secs: u64) -> (String, bool) {
    let mut seen = String::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(secs), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .is_ok();
    (seen, ended)
}

/// A transport that records each push it sends: (body bytes, the answer's status), and its
/// path with the query.
#[derive(Debug)]
pub struct PushLog {
    pub inner: HttpTransport,
    pub pushes: std::sync::Mutex<Vec<(usize, u16)>>,
    pub paths: std::sync::Mutex<Vec<String>>,
}

impl PushLog {
    /// A recording transport for `client` of database `app` (read and write scopes).
    pub fn new(url: &str, client: &str) -> Arc<PushLog> {
        Arc::new(PushLog {
            inner: HttpTransport::new(url, &token("app", client, &["read", "write"], 3600)),
            pushes: std::sync::Mutex::new(Vec::new()),
            paths: std::sync::Mutex::new(Vec::new()),
        })
    }
}

impl Transport for PushLog {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            let push = request.path.contains("/push");
            if push {
                self.paths.lock().unwrap().push(request.path.clone());
            }
            let len = request.body.as_ref().map_or(0, Vec::len);
            let r = self.inner.send(request).await;
            if push && let Ok(resp) = &r {
                self.pushes.lock().unwrap().push((len, resp.status));
            }
            r
        })
    }
}
