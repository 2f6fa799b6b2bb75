//! Deterministic simulation of sync: the real server code (`service`) and the real replicator,
//! in one process, over a simulated network that drops requests and responses and partitions
//! clients, with every database on a `Sim` backend that crashes (clients and server) at
//! seeded points. At the end, with faults healed:
//!
//! - every replica equals the server;
//! - no op was applied twice (each written value is applied at most once);
//! - no acknowledged write is lost: each client's last acknowledged put of each entity was
//!   applied on the server or is in its conflict log as a loser;
//! - every client's pull cursor only moved forward, across crashes too;
//! - nothing was overwritten silently: in the collections that never merge, a put the
//!   server applied over another either was made on it (its client had seen it) or logged
//!   it as a conflict's loser, and under server-wins always the first.
//!
//! One client per seed keeps only 2 transactions of its change feed by retention, so its
//! local writes reach the outbox only because the replicator's feed hold keeps them.
//!
//! Clients also run live rounds (`sync_wait`) as tasks of their own, beside the steps that
//! write, sync, crash and partition: a round's long poll waits on the server while its own
//! client writes (which ends the wait), other clients push (which ends it too), or the client
//! crashes (the restart after it drops the task wherever it is, as a killed process would
//! be). The runtime is single-threaded on a paused clock, and the simulated network yields to
//! other tasks before and after each request, so the interleavings replay from the seed and
//! a wait that nothing ends runs out at once in real time.
//!
//! `SYNC_SIM_SEEDS=N` runs seeds 0..N (default 200); `SYNC_SIM_SEED=S` replays one seed.
#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entidb::cbor::Value;
use entidb::io::{SimBackend, SimConfig};
use entidb::{Database, EntityId, Options, ScanOptions};
use entidb_io::BoxFuture;
use entidb_server::config::Config;
use entidb_server::error::ApiError;
use entidb_server::hosted::Hosted;
use entidb_server::service;
use entidb_sync::wire::{
    BootstrapPosition, Claims, ConflictPolicy, ErrorCode, Format, OpStatus, PushRequest,
    PushResponse,
};
use entidb_sync::{
    Replicator, Request, Response, SyncConfig, SyncReport, SyncResult, Transport, TransportError,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const COLLECTIONS: [&str; 4] = ["sw", "cw", "lww", "fm"];
/// The collections whose policy never merges: every applied put is one client's document,
/// so its write ancestry is known (see `check_overwrites`).
const UNMERGED: [&str; 3] = ["sw", "cw", "lww"];
const CLIENTS: usize = 3;
const STEPS: usize = 250;

fn options() -> Options {
    Options::default()
        .memtable_bytes(32 << 10)
        .compaction_trigger(3)
        .wal_preallocate(0)
}

/// An op of a collection that never merges: ((collection, entity), its write tag or `None`).
type Tracked = ((String, EntityId), Option<String>);

/// One op the server applied: ((its version, its place in the push), the put's write tag or
/// `None` for a delete).
type AppliedOp = ((u64, usize), Option<String>);

/// What the server actually decided, seen by the network before any response is dropped.
#[derive(Debug, Default)]
struct Decisions {
    applied: HashMap<String, u32>,
    rejected: HashSet<String>,
    /// Acknowledged as retries: the server processed them in a push whose answer the
    /// simulation never saw (the server crashed after the commit was durable).
    duplicate: HashSet<String>,
    /// Pulls answered with 410 `rebootstrap`.
    behind: u64,
    /// Pushes answered with the page they asked for (`push?since=C`).
    pages_with_push: u64,
    /// Every op sent, by (client, op id): what it wrote. An op id sent again must name the
    /// same write, or the server's `duplicate` answer would drop the second one.
    sent: HashMap<(String, u64), String>,
    /// Op ids sent again for a different write.
    reused: Vec<String>,
    /// Per entity of the collections whose policy never merges (`sw`, `cw`, `lww`), the ops
    /// the server applied, as its answers said: ((version, place in the push), the put's
    /// write tag or `None` for a delete).
    applied_history: HashMap<(String, EntityId), Vec<AppliedOp>>,
    /// Ops whose answer the simulation saw: (client, op id).
    answered: HashSet<(String, u64)>,
    /// Entities with an op answered `duplicate` whose first answer the simulation never saw
    /// (the server crashed after the push's commit was durable): their applied history
    /// above may have a gap.
    unseen: HashSet<(String, EntityId)>,
}

#[derive(Debug)]
struct Net {
    rng: Mutex<SmallRng>,
    drop_rate: Mutex<f64>,
    partitioned: Mutex<HashSet<String>>,
    server: Mutex<Option<Arc<Hosted>>>,
    server_sim: SimBackend,
    config: Config,
    decisions: Mutex<Decisions>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Net {
    fn chance(&self, p: f64) -> bool {
        self.rng.lock().unwrap().random::<f64>() < p
    }
}

#[derive(Debug)]
struct SimTransport {
    net: Arc<Net>,
    claims: Claims,
    /// Long polls given up before their answer (their future dropped).
    abandoned: AtomicU64,
    /// Long polls the server answered empty once their wait ran out.
    waited_out: AtomicU64,
}

/// Counts a long poll as abandoned if it is dropped before it is answered.
struct Poll<'a> {
    t: &'a SimTransport,
    answered: bool,
}

impl Drop for Poll<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.t.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn tag(v: &Value) -> Option<String> {
    match v {
        Value::Map(entries) => entries.iter().find_map(|(k, v)| match (k, v) {
            (Value::Text(k), Value::Text(t)) if k == "w" => Some(t.clone()),
            _ => None,
        }),
        _ => None,
    }
}

fn answer<T: serde::Serialize>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => Response {
            status: 200,
            body: Format::Cbor.encode(&v).unwrap(),
        },
        Err(e) => Response {
            status: e.status(),
            body: Format::Cbor.encode(&e.body).unwrap(),
        },
    }
}

fn params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Transport for SimTransport {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            // (Not `bool::then_some`: a `Poll` made and dropped at once would count.)
            let mut poll = if request.path.contains("wait_ms=") {
                Some(Poll {
                    t: self,
                    answered: false,
                })
            } else {
                None
            };
            let r = self.exchange(request).await;
            if let Some(p) = &mut poll {
                p.answered = true;
            }
            r
        })
    }
}

impl SimTransport {
    async fn exchange(&self, request: Request) -> Result<Response, TransportError> {
        {
            // The way to the server and back are points where other tasks (live rounds, the
            // steps of the simulation) run.
            tokio::task::yield_now().await;
            let net = &self.net;
            let lost = || Err(TransportError("lost (simulated)".into()));
            if net.partitioned.lock().unwrap().contains(&self.claims.sub) {
                return lost();
            }
            let drop_rate = *net.drop_rate.lock().unwrap();
            if net.chance(drop_rate) {
                return lost();
            }
            let hosted = net.server.lock().unwrap().clone();
            let Some(hosted) = hosted.filter(|_| !net.server_sim.is_crashed()) else {
                return Err(TransportError("server down (simulated)".into()));
            };
            let (path, query) = request.path.split_once('?').unwrap_or((&request.path, ""));
            let q = params(query);
            let resp = if path.ends_with("/push") {
                let req: PushRequest = Format::Cbor.decode(&request.body.unwrap()).unwrap();
                // Each op's write tag, by op id (for the decisions below).
                let mut tags: HashMap<u64, String> = HashMap::new();
                {
                    let mut d = net.decisions.lock().unwrap();
                    for o in &req.ops {
                        if let Some(t) = o.doc.as_ref().and_then(|d| tag(&d.to_value().unwrap())) {
                            tags.insert(o.op_id, t);
                        }
                        let what = format!(
                            "{}/{}/{:?}/{:?}/{:?}",
                            o.collection,
                            o.id,
                            o.kind,
                            o.hlc,
                            o.doc.as_ref().map(|d| d.as_bytes().to_vec())
                        );
                        match d.sent.entry((req.client_id.clone(), o.op_id)) {
                            std::collections::hash_map::Entry::Occupied(e) if *e.get() != what => {
                                let msg = format!(
                                    "{} op {} was {} and is now {what}",
                                    req.client_id,
                                    o.op_id,
                                    e.get()
                                );
                                d.reused.push(msg);
                            }
                            std::collections::hash_map::Entry::Occupied(_) => {}
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(what);
                            }
                        }
                    }
                }
                let kept: Vec<Option<Tracked>> = req
                    .ops
                    .iter()
                    .map(|o| {
                        UNMERGED
                            .contains(&o.collection.as_str())
                            .then(|| ((o.collection.clone(), o.id), tags.get(&o.op_id).cloned()))
                    })
                    .collect();
                // The page a push asks for, through the same service call as the handler.
                let page = q.get("since").map(|since| {
                    let limit = q.get("limit").map(|l| l.parse().unwrap());
                    (
                        since.parse().unwrap(),
                        service::page_limit(&net.config, limit),
                    )
                });
                let r = service::push_with_page(
                    &net.config,
                    &hosted,
                    &self.claims,
                    req,
                    page,
                    &net.shutdown,
                )
                .await;
                if let Ok(PushResponse { results, .. }) = &r {
                    let mut d = net.decisions.lock().unwrap();
                    for (place, (res, kept)) in results.iter().zip(&kept).enumerate() {
                        let op = (self.claims.sub.clone(), res.op_id);
                        match (res.status, kept) {
                            (OpStatus::Duplicate, Some((key, _))) if !d.answered.contains(&op) => {
                                d.unseen.insert(key.clone());
                            }
                            (OpStatus::Applied, Some((key, t))) => {
                                let at = (res.state.version.unwrap_or(0), place);
                                let h = d.applied_history.entry(key.clone()).or_default();
                                h.push((at, t.clone()));
                            }
                            _ => {}
                        }
                        d.answered.insert(op);
                    }
                    for res in results {
                        let Some(t) = tags.get(&res.op_id) else {
                            continue;
                        };
                        match res.status {
                            OpStatus::Applied | OpStatus::Merged => {
                                *d.applied.entry(t.clone()).or_default() += 1
                            }
                            OpStatus::Rejected => {
                                d.rejected.insert(t.clone());
                            }
                            OpStatus::Duplicate => {
                                d.duplicate.insert(t.clone());
                            }
                        }
                    }
                }
                if let Ok(PushResponse { pull: Some(_), .. }) = &r {
                    net.decisions.lock().unwrap().pages_with_push += 1;
                }
                answer(r)
            } else if path.ends_with("/pull") {
                let since = q.get("since").map_or(0, |s| s.parse().unwrap());
                let limit = q.get("limit").map_or(100, |s| s.parse().unwrap());
                let wait = q
                    .get("wait_ms")
                    .map(|w| Duration::from_millis(w.parse().unwrap()));
                let t0 = tokio::time::Instant::now();
                let r =
                    service::pull(&hosted, &self.claims, since, limit, wait, &net.shutdown).await;
                if let (Some(w), Ok(page)) = (wait, &r)
                    && page.changes.is_empty()
                    && t0.elapsed() >= w
                {
                    self.waited_out.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(&r, Err(e) if e.body.code == ErrorCode::Rebootstrap) {
                    net.decisions.lock().unwrap().behind += 1;
                }
                answer(r)
            } else if path.ends_with("/bootstrap") {
                let from = q.get("collection").map(|c| BootstrapPosition {
                    collection: c.clone(),
                    after: q.get("after").map(|a| a.parse::<EntityId>().unwrap()),
                });
                let limit = q.get("limit").map_or(100, |s| s.parse().unwrap());
                let colls = q.get("collections").cloned();
                answer(
                    service::bootstrap(&hosted, &self.claims, colls.as_deref(), from, limit).await,
                )
            } else {
                panic!("unexpected request {}", request.path);
            };
            tokio::task::yield_now().await;
            if net.chance(drop_rate) {
                return lost();
            }
            Ok(resp)
        }
    }
}

struct Client {
    name: String,
    sim: SimBackend,
    db: Option<Database>,
    sync: Option<Replicator>,
    transport: Arc<SimTransport>,
    cursor: u64,
    /// Per (collection, id): the last acknowledged local write (`None`: a delete).
    last_write: HashMap<(String, EntityId), Option<String>>,
    /// A live round running as its own task, and the transport's abandoned polls when it
    /// started.
    live: Option<(LiveRound, u64)>,
    /// The client wrote while its live round ran.
    wrote_during_live: bool,
    /// Pulled pages are committed `Relaxed` (the default; every other client): a crash may
    /// lose the last ones with their cursor, which then goes back across the restart (and
    /// only then). `Durable` clients' cursors never go back.
    relaxed: bool,
    /// Restarts after which a relaxed client's cursor had gone back.
    cursor_went_back: u64,
    /// The client's database keeps the first metadata layout (one `_sync.meta` collection
    /// keyed by hashes), as one first attached by an older build does; every third client.
    hashed_meta: bool,
    /// The first open of a `hashed_meta` client removed the layout from its state.
    layout_stripped: bool,
    /// A cursor known to be durable (see the local write step): a relaxed client's cursor
    /// never goes back below it.
    durable_floor: u64,
    /// The client's database keeps this many transactions of change feed by retention (the
    /// engine's default for most): with 2, a few local writes between two replicator
    /// transactions pass it, and only the replicator's feed hold keeps them for capture.
    feed_retention: u64,
}

type LiveRound = tokio::task::JoinHandle<SyncResult<SyncReport>>;

impl Client {
    async fn open(&mut self) -> Result<(), String> {
        let db = Database::open_with(
            Arc::new(self.sim.clone()),
            options().feed_retention(self.feed_retention),
        )
        .await
        .map_err(|e| format!("{}: open: {e}", self.name))?;
        let mut cfg = SyncConfig::new("app", &self.name, &COLLECTIONS);
        // Retries: the backoff sleeps on this client's simulated clock and draws its jitter
        // from its seeded entropy (the backend's), so a run still replays from its seed. A
        // retried request may be one whose answer was lost: the server's dedupe must absorb
        // it.
        cfg.max_attempts = 3;
        cfg.pull_limit = 7;
        cfg.push_batch = 5;
        cfg.bootstrap_limit = 4;
        if !self.relaxed {
            cfg.pull_durability = entidb::Durability::Durable;
        }
        let mut sync = Replicator::attach(db.clone(), cfg.clone(), self.transport.clone())
            .await
            .map_err(|e| format!("{}: attach: {e}", self.name))?;
        if self.hashed_meta {
            let err = |e: entidb::Error| format!("{}: state: {e}", self.name);
            let doc = db
                .collection("_sync.state")
                .get_document(EntityId::MIN)
                .await
                .map_err(err)?
                .ok_or_else(|| format!("{}: no sync state", self.name))?;
            let Value::Map(mut fields) = doc.value().map_err(err)? else {
                return Err(format!("{}: the sync state is not a map", self.name));
            };
            let key = Value::Text("meta_layout".into());
            let layout = fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone());
            if self.layout_stripped {
                // State written since then stores the layout it keeps: 0.
                if layout.as_ref().is_some_and(|v| *v != Value::from(0u64)) {
                    return Err(format!(
                        "{}: the stored metadata layout became {layout:?}",
                        self.name
                    ));
                }
            } else {
                // The first open: make it state written before the field existed.
                self.layout_stripped = true;
                fields.retain(|(k, _)| *k != key);
                drop(sync);
                db.collection("_sync.state")
                    .put_value(EntityId::MIN, &Value::Map(fields))
                    .await
                    .map_err(err)?;
                sync = Replicator::attach(db.clone(), cfg, self.transport.clone())
                    .await
                    .map_err(|e| format!("{}: attach: {e}", self.name))?;
            }
        }
        let c = sync.status().cursor;
        if c < self.cursor {
            // A relaxed client's lost pages are pulled again (the end state must still equal
            // the server's, with nothing applied twice), but never those a durable local
            // write had synced.
            if !self.relaxed || c < self.durable_floor {
                return Err(format!(
                    "{}: cursor went back from {} to {c} across a restart (relaxed: {}, durable floor {})",
                    self.name, self.cursor, self.relaxed, self.durable_floor
                ));
            }
            self.cursor_went_back += 1;
        }
        self.cursor = c;
        self.db = Some(db);
        self.sync = Some(sync);
        Ok(())
    }

    async fn restart(&mut self, act: &mut Activity) -> Result<(), String> {
        // What a live round saved before the crash counts for the cursor check.
        self.check_cursor()?;
        // The process dies: a live round that ended is collected (the client has crashed, so
        // only a panic and its cursor are checked), one still running stops wherever it is.
        if let Some((task, abandoned)) = self.live.take() {
            if task.is_finished() {
                let r = task
                    .await
                    .map_err(|e| format!("{}: live round panicked: {e}", self.name))?;
                self.check_live(r, abandoned, act)?;
            } else {
                task.abort();
                let _ = task.await;
            }
        }
        self.sync = None;
        self.db = None;
        self.sim.crash_now();
        self.sim.restart();
        self.open().await
    }

    /// Starts a live round that waits up to `wait` on the server.
    fn start_live(&mut self, wait: Duration) {
        let sync = self.sync.clone().unwrap();
        let task = tokio::spawn(async move { sync.sync_wait(wait).await });
        let abandoned = self.transport.abandoned.load(Ordering::Relaxed);
        self.live = Some((task, abandoned));
        self.wrote_during_live = false;
    }

    /// Collects the live round if it ended (or waits for it with `finish`) and checks its
    /// result like a `sync_now`'s: only a network fault or a crash may fail it.
    async fn reap_live(&mut self, finish: bool, act: &mut Activity) -> Result<(), String> {
        let Some((task, abandoned)) = self.live.take() else {
            return Ok(());
        };
        if !finish && !task.is_finished() {
            self.live = Some((task, abandoned));
            return Ok(());
        }
        let r = task
            .await
            .map_err(|e| format!("{}: live round panicked: {e}", self.name))?;
        self.check_live(r, abandoned, act)
    }

    /// Checks an ended live round; `abandoned`: the transport's abandoned polls when it began.
    fn check_live(
        &mut self,
        r: SyncResult<SyncReport>,
        abandoned: u64,
        act: &mut Activity,
    ) -> Result<(), String> {
        // The round gave its long poll up: only a local write made since the round began
        // (after its capture) may make it, not the replicator's own commits. (Whatever the
        // round's result: the push after the wake-up may fail on the network. Only a crash,
        // failing the wake-up's feed read, gives the poll up otherwise.)
        if !self.sim.is_crashed() && self.transport.abandoned.load(Ordering::Relaxed) > abandoned {
            if !self.wrote_during_live {
                return Err(format!(
                    "{}: a live round gave up its long poll, but its client did not write during the round",
                    self.name
                ));
            }
            act.live_woken_by_write += 1;
        }
        match r {
            Ok(_) => act.live_ok += 1,
            Err(e) if e.is_retryable() || self.sim.is_crashed() => act.live_failed += 1,
            Err(e) => return Err(format!("{} live round failed: {e}", self.name)),
        }
        self.check_cursor()
    }

    fn check_cursor(&mut self) -> Result<(), String> {
        if let Some(s) = &self.sync {
            let c = s.status().cursor;
            if c < self.cursor {
                return Err(format!(
                    "{}: cursor went back from {} to {c}",
                    self.name, self.cursor
                ));
            }
            self.cursor = c;
        }
        Ok(())
    }
}

async fn open_server(sim: &SimBackend, retention: u64) -> Result<Arc<Hosted>, String> {
    let db = Database::open_with(Arc::new(sim.clone()), options().feed_retention(retention))
        .await
        .map_err(|e| format!("server open: {e}"))?;
    Ok(Arc::new(
        Hosted::new("app", db).map_err(|e| format!("server host: {e:?}"))?,
    ))
}

async fn contents(db: &Database, coll: &str) -> Vec<(EntityId, Vec<u8>)> {
    let mut out = Vec::new();
    let mut opts = ScanOptions::limit(1000);
    loop {
        let page = db.collection(coll).scan(opts).await.unwrap();
        out.extend(page.items.iter().map(|d| (d.id(), d.bytes().to_vec())));
        match page.next {
            Some(n) => opts.after = Some(n),
            None => return out,
        }
    }
}

/// What one seed did (printed with --nocapture; summed to prove the run was not vacuous).
#[derive(Debug, Default, Clone, Copy)]
struct Activity {
    writes: u64,
    syncs_ok: u64,
    syncs_failed: u64,
    client_restarts: u64,
    server_restarts: u64,
    bootstraps: u64,
    behind: u64,
    pages_with_push: u64,
    applied: u64,
    rejected: u64,
    live_ok: u64,
    live_failed: u64,
    /// Long polls that sat out their wait and were answered empty.
    live_waited_out: u64,
    /// Live rounds that gave their long poll up for a local write.
    live_woken_by_write: u64,
    /// Local writes made while the same client had a live round.
    writes_during_live: u64,
    /// Restarts after which a relaxed client's cursor had gone back (pages lost in the
    /// crash, pulled again).
    cursor_went_back: u64,
    /// Pairs of consecutive puts by different clients (in `sw`, `cw`, `lww`) where the
    /// second descends from the first (a pair by one client passes by its own chain).
    overwrites_checked: u64,
    /// Pairs where the second put overwrote the first without descending from it, and the
    /// conflict log holds the first as the loser (client-wins and last-writer-wins only).
    overwrites_logged: u64,
}

async fn run(seed: u64) -> Result<Activity, String> {
    let mut act = Activity::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    // Half the seeds keep a short oplog, so that clients fall behind it and re-bootstrap.
    let retention = if rng.random_bool(0.5) { 3 } else { 100_000 };
    let server_sim = SimBackend::new(seed.wrapping_mul(31).wrapping_add(7), SimConfig::default());
    let mut config = Config::default();
    config
        .policies
        .insert("sw".into(), ConflictPolicy::ServerWins);
    config
        .policies
        .insert("cw".into(), ConflictPolicy::ClientWins);
    config
        .policies
        .insert("lww".into(), ConflictPolicy::LastWriterWins);
    // Odd seeds: a server database from before the per-collection metadata layout (it has a
    // `_sync.meta` collection), which keeps one `_sync.meta` keyed by hashes.
    let legacy_server = seed % 2 == 1;
    if legacy_server {
        let db = Database::open_with(Arc::new(server_sim.clone()), options())
            .await
            .map_err(|e| format!("server open: {e}"))?;
        db.create_collection("_sync.meta")
            .await
            .map_err(|e| format!("server: {e}"))?;
        db.close().await.map_err(|e| format!("server close: {e}"))?;
    }
    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let net = Arc::new(Net {
        rng: Mutex::new(SmallRng::seed_from_u64(seed ^ 0xABCD)),
        drop_rate: Mutex::new(0.0),
        partitioned: Mutex::new(HashSet::new()),
        server: Mutex::new(Some(open_server(&server_sim, retention).await?)),
        server_sim: server_sim.clone(),
        config,
        decisions: Mutex::new(Decisions::default()),
        shutdown,
    });
    let ids: Vec<EntityId> = (1..=6u128)
        .map(|i| EntityId::from_bytes(i.to_be_bytes()))
        .collect();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let name = format!("c{i}");
        let mut c = Client {
            sim: SimBackend::new(
                seed.wrapping_mul(1000).wrapping_add(i as u64),
                SimConfig::default(),
            ),
            transport: Arc::new(SimTransport {
                net: net.clone(),
                claims: Claims {
                    sub: name.clone(),
                    db: "app".into(),
                    scope: vec!["read".into(), "write".into()],
                    exp: u64::MAX,
                    iat: 0,
                },
                abandoned: 0.into(),
                waited_out: 0.into(),
            }),
            name,
            db: None,
            sync: None,
            cursor: 0,
            last_write: HashMap::new(),
            live: None,
            wrote_during_live: false,
            relaxed: i % 2 == 0,
            cursor_went_back: 0,
            hashed_meta: i % 3 == 1,
            layout_stripped: false,
            durable_floor: 0,
            // One client per seed, a different one each seed.
            feed_retention: if i == seed as usize % CLIENTS {
                2
            } else {
                Options::default().feed_retention
            },
        };
        c.open().await?;
        clients.push(c);
    }
    let mut writes = 0u64;
    // The write ancestry: each put's write tag -> the tag of the local value it replaced
    // (`None`: absent).
    let mut parents: HashMap<String, Option<String>> = HashMap::new();
    for step in 0..STEPS {
        if server_sim.is_crashed() && rng.random_bool(0.5) {
            *net.server.lock().unwrap() = None;
            server_sim.restart();
            act.server_restarts += 1;
            let h = open_server(&server_sim, retention).await?;
            *net.server.lock().unwrap() = Some(h);
        }
        let i = rng.random_range(0..CLIENTS);
        let c = &mut clients[i];
        c.sim
            .advance_time(Duration::from_millis(rng.random_range(0..20)));
        if c.sim.is_crashed() {
            c.restart(&mut act).await?;
            act.client_restarts += 1;
        }
        let roll = rng.random_range(0..100);
        if roll < 40 {
            let coll = COLLECTIONS[rng.random_range(0..COLLECTIONS.len())];
            let id = ids[rng.random_range(0..ids.len())];
            let db = c.db.clone().unwrap();
            // The page whose cursor the status shows was committed (and published) before
            // the status showed it: at or below the last sequence read after it.
            let cursor_before = c.sync.as_ref().unwrap().status().cursor;
            let seq_before = db.last_sequence();
            let write = if rng.random_bool(0.85) {
                writes += 1;
                let t = format!("{}-{step}-{writes}", c.name);
                // Two more fields, each sometimes left out, give field merge work to do.
                let mut fields = vec![(Value::Text("w".into()), Value::Text(t.clone()))];
                for f in ["x", "y"] {
                    if rng.random_bool(0.7) {
                        let v = rng.random_range(0..3u64);
                        fields.push((Value::Text(f.into()), Value::Int(v.into())));
                    }
                }
                let doc = Value::Map(fields);
                // In one transaction, so that no pulled change slips in between: the value
                // this write replaces locally (its parent) is recorded whether or not the
                // commit survives a crash.
                async {
                    let mut tx = db.begin().await?;
                    let prev = tx.collection(coll).get_document(id).await?;
                    parents.insert(t.clone(), prev.and_then(|d| tag(&d.value().unwrap())));
                    tx.collection(coll).put_value(id, &doc)?;
                    tx.commit().await
                }
                .await
                .map(|_| Some(t))
            } else {
                db.collection(coll).delete(id).await.map(|_| None)
            };
            match write {
                Ok(w) => {
                    // A durable write syncs every commit before it (the replicator's own are
                    // relaxed, acknowledgements and captures included), but a delete of an
                    // absent entity commits nothing: ask the database. Once that page is on
                    // disk, the cursor never goes below it again.
                    if db.durable_sequence() >= seq_before {
                        c.durable_floor = c.durable_floor.max(cursor_before);
                    }
                    act.writes += 1;
                    act.writes_during_live += u64::from(c.live.is_some());
                    c.wrote_during_live |= c.live.is_some();
                    c.last_write.insert((coll.to_owned(), id), w);
                }
                // Only a crash may fail a local write: it may or may not be durable, so
                // nothing is expected of it (and the previous expectation no longer holds).
                Err(_) if c.sim.is_crashed() => {
                    c.last_write.remove(&(coll.to_owned(), id));
                }
                Err(e) => return Err(format!("step {step}: {} write failed: {e}", c.name)),
            }
        } else if (62..70).contains(&roll) && c.live.is_none() {
            c.start_live(Duration::from_millis(rng.random_range(10..5000)));
        } else if roll < 70 {
            // With a live round running, this waits for it (rounds take turns).
            let r = c.sync.as_ref().unwrap().sync_now().await;
            if let Ok(report) = &r {
                act.bootstraps += u64::from(report.bootstrapped);
                act.syncs_ok += 1;
            } else {
                act.syncs_failed += 1;
            }
            if let Err(e) = r
                && !(e.is_retryable() || c.sim.is_crashed())
            {
                return Err(format!("step {step}: {} sync failed: {e}", c.name));
            }
            c.check_cursor()?;
        } else if roll < 75 {
            c.sim.schedule_crash_after(rng.random_range(1..300));
        } else if roll < 80 {
            if !server_sim.is_crashed() {
                server_sim.schedule_crash_after(rng.random_range(1..60));
            }
        } else if roll < 90 {
            let mut p = net.partitioned.lock().unwrap();
            if !p.remove(&c.name) {
                p.insert(c.name.clone());
            }
        } else {
            *net.drop_rate.lock().unwrap() = [0.0, 0.1, 0.3][rng.random_range(0..3)];
        }
        // Live rounds run while the step's own awaits yield; collect those that ended.
        tokio::task::yield_now().await;
        for c in &mut clients {
            c.reap_live(false, &mut act).await?;
        }
    }
    // Live rounds end (their waits run out) before the faults heal.
    for c in &mut clients {
        c.reap_live(true, &mut act).await?;
        act.live_waited_out += c.transport.waited_out.load(Ordering::Relaxed);
    }

    // Heal everything and let the replicas converge.
    net.partitioned.lock().unwrap().clear();
    *net.drop_rate.lock().unwrap() = 0.0;
    server_sim.cancel_scheduled_crash();
    if server_sim.is_crashed() {
        *net.server.lock().unwrap() = None;
        server_sim.restart();
        *net.server.lock().unwrap() = Some(open_server(&server_sim, retention).await?);
    }
    for c in &mut clients {
        c.sim.cancel_scheduled_crash();
        if c.sim.is_crashed() {
            c.restart(&mut act).await?;
        }
    }
    for round in 0..3 {
        for c in &mut clients {
            c.sync
                .as_ref()
                .unwrap()
                .sync_now()
                .await
                .map_err(|e| format!("final round {round}: {} sync failed: {e}", c.name))?;
            c.check_cursor()?;
        }
    }

    let server = net.server.lock().unwrap().clone().unwrap();
    for coll in COLLECTIONS {
        let want = contents(&server.db, coll).await;
        for c in &clients {
            let got = contents(c.db.as_ref().unwrap(), coll).await;
            if got != want {
                return Err(format!(
                    "{} differs from the server in {coll}:\n got {got:?}\nwant {want:?}",
                    c.name
                ));
            }
            if c.sync.as_ref().unwrap().pending_ops().await.unwrap() != 0 {
                return Err(format!("{} still has pending ops", c.name));
            }
        }
    }
    // The server kept its layout across its restarts.
    let names = server.db.collections();
    let per_collection = names.iter().any(|n| n.starts_with("_sync.meta/"));
    let hashed_entries = server
        .db
        .collection("_sync.meta")
        .count()
        .await
        .unwrap_or(0);
    if per_collection == legacy_server || (legacy_server && hashed_entries == 0) {
        return Err(format!(
            "server (legacy layout: {legacy_server}) has collections {names:?} and {hashed_entries} hashed entries"
        ));
    }
    for c in &clients {
        // Each client kept the metadata layout it started with, across its restarts.
        let names = c.db.as_ref().unwrap().collections();
        let hashed = names.iter().any(|n| n == "_sync.meta");
        let per_collection = names.iter().any(|n| n.starts_with("_sync.meta/"));
        if hashed != c.hashed_meta || per_collection == c.hashed_meta {
            return Err(format!(
                "{} (hashed metadata: {}) has collections {names:?}",
                c.name, c.hashed_meta
            ));
        }
    }
    let losers = conflict_losers(&server, &clients[0].transport.claims).await?;
    let d = net.decisions.lock().unwrap();
    (act.overwrites_checked, act.overwrites_logged) = check_overwrites(&d, &parents, &losers)?;
    if let Some(r) = d.reused.first() {
        return Err(format!("an op id was sent for two writes: {r}"));
    }
    if let Some((t, n)) = d.applied.iter().find(|(_, n)| **n > 1) {
        return Err(format!("write {t} was applied {n} times"));
    }
    for c in &clients {
        for ((coll, id), w) in &c.last_write {
            if let Some(t) = w
                && !d.applied.contains_key(t)
                && !d.rejected.contains(t)
                && !d.duplicate.contains(t)
            {
                return Err(format!(
                    "{}'s acknowledged write {t} to {coll}/{id} was neither applied nor logged as a conflict",
                    c.name
                ));
            }
        }
    }
    act.cursor_went_back = clients.iter().map(|c| c.cursor_went_back).sum();
    act.applied = d.applied.len() as u64;
    act.rejected = d.rejected.len() as u64;
    act.behind = d.behind;
    act.pages_with_push = d.pages_with_push;
    Ok(act)
}

/// Nothing is overwritten silently: of two puts applied one after the other to an entity of
/// a collection that never merges (as the server answered them), the second descends from
/// the first, through the local values that each write replaced (a pulled value continues
/// the chain of the client that wrote it), or the first is in the conflict log as the
/// loser of that entity (client-wins and last-writer-wins overwrite what they log; under
/// server-wins the server's side never loses, so the second must descend). A put after a
/// delete is not checked (a delete has no tag), nor is an entity one of whose ops the server
/// processed in a push whose answer the simulation never saw.
fn check_overwrites(
    d: &Decisions,
    parents: &HashMap<String, Option<String>>,
    losers: &HashSet<(String, EntityId, String)>,
) -> Result<(u64, u64), String> {
    let (mut checked, mut logged_pairs) = (0, 0);
    for ((coll, id), applied) in &d.applied_history {
        if d.unseen.contains(&(coll.clone(), *id)) {
            continue;
        }
        let mut puts = applied.clone();
        puts.sort();
        for pair in puts.windows(2) {
            let [(_, Some(before)), (_, Some(after))] = pair else {
                continue;
            };
            // The chain is finite: a parent was stored before its child was written.
            let mut chain = vec![after.clone()];
            while let Some(Some(p)) = parents.get(&chain[chain.len() - 1]) {
                if p == before || chain.len() > parents.len() {
                    break;
                }
                chain.push(p.clone());
            }
            let descends = parents.get(&chain[chain.len() - 1]) == Some(&Some(before.clone()));
            let logged = losers.contains(&(coll.clone(), *id, before.clone()));
            if !descends && !logged {
                return Err(format!(
                    "{coll}/{id}: {after} overwrote {before} on the server without descending from it or logging it (applied in order: {puts:?}; {after} descends from {chain:?})"
                ));
            }
            if coll == "sw" && !descends {
                return Err(format!(
                    "sw/{id}: {after} overwrote {before}, and server-wins never logs the server's side as the loser"
                ));
            }
            let writer = |t: &str| t.split('-').next().map(str::to_owned);
            if descends {
                checked += u64::from(writer(before) != writer(after));
            } else {
                logged_pairs += 1;
            }
        }
    }
    Ok((checked, logged_pairs))
}

/// The conflict log's losers: (collection, entity, the losing document's write tag).
async fn conflict_losers(
    server: &Hosted,
    claims: &Claims,
) -> Result<HashSet<(String, EntityId, String)>, String> {
    let mut out = HashSet::new();
    let mut after = None;
    loop {
        let page = service::conflicts(server, claims, after, 1000)
            .await
            .map_err(|e| format!("reading the conflict log: {e:?}"))?;
        for c in &page.conflicts {
            if let Some(t) = c.loser.as_ref().and_then(|d| tag(&d.to_value().unwrap())) {
                out.insert((c.collection.clone(), c.id, t));
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

fn run_seed(seed: u64) -> Activity {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    match rt.block_on(run(seed)) {
        Ok(a) => {
            println!("seed {seed}: {a:?}");
            a
        }
        Err(e) => panic!(
            "sync simulation failed for seed {seed}: {e}\nreplay: SYNC_SIM_SEED={seed} cargo test -p entidb-server --test sync_simulation -- --nocapture"
        ),
    }
}

/// Regression (found by the overwrite check): a bootstrap resumed after a push of this
/// client was answered swept the pushed entity away locally (its collection had been
/// paged before the push), and the app's next write to it was based on nothing and
/// replaced the acknowledged one without a conflict. The default run (seeds 0..200) does
/// not reach seed 471, so it is pinned here. The seed replays that history only while the
/// simulation draws its random choices as it does now; after a change to the draws, find
/// a new seed with the overwrite check (revert the sweep's `newer` rule and run seeds).
#[test]
fn regression_a_bootstrap_sweep_keeps_entities_pushed_while_it_ran() {
    run_seed(471);
}

#[test]
fn sync_simulation() {
    if let Ok(s) = std::env::var("SYNC_SIM_SEED") {
        run_seed(s.parse().expect("SYNC_SIM_SEED must be a number"));
        return;
    }
    let n: u64 = std::env::var("SYNC_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut total = Activity::default();
    for seed in 0..n {
        let a = run_seed(seed);
        total.writes += a.writes;
        total.syncs_ok += a.syncs_ok;
        total.syncs_failed += a.syncs_failed;
        total.client_restarts += a.client_restarts;
        total.server_restarts += a.server_restarts;
        total.bootstraps += a.bootstraps;
        total.behind += a.behind;
        total.pages_with_push += a.pages_with_push;
        total.applied += a.applied;
        total.rejected += a.rejected;
        total.live_ok += a.live_ok;
        total.live_failed += a.live_failed;
        total.live_waited_out += a.live_waited_out;
        total.live_woken_by_write += a.live_woken_by_write;
        total.writes_during_live += a.writes_during_live;
        total.cursor_went_back += a.cursor_went_back;
        total.overwrites_checked += a.overwrites_checked;
        total.overwrites_logged += a.overwrites_logged;
    }
    println!("{n} seeds: {total:?}");
    // The faults must actually have happened, and sync must have done real work.
    if n >= 10 {
        assert!(total.applied > 20 * n && total.rejected > 0, "{total:?}");
        assert!(
            total.client_restarts > 0 && total.server_restarts > 0,
            "{total:?}"
        );
        // Relaxed clients lost pulled pages in crashes and pulled them again.
        assert!(total.cursor_went_back > 0, "{total:?}");
        // Histories had puts made on other clients' puts, and logged overwrites, to check.
        assert!(
            total.overwrites_checked > n && total.overwrites_logged > 0,
            "{total:?}"
        );
        // Some clients fell behind the oplog and bootstrapped again.
        assert!(total.behind > 0 && total.bootstraps > 0, "{total:?}");
        // Rounds pushed and pulled in one exchange.
        assert!(total.pages_with_push > n, "{total:?}");
        assert!(
            total.syncs_failed > 0 && total.syncs_ok * 5 > total.syncs_failed,
            "{total:?}"
        );
        // Live rounds ran, sat out their waits, were woken by local writes, failed under
        // faults, and overlapped local writes.
        assert!(
            total.live_ok > 0
                && total.live_failed > 0
                && total.live_waited_out > 0
                && total.live_woken_by_write > 0
                && total.writes_during_live > 0,
            "{total:?}"
        );
    }
}
