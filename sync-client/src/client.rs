//! The replicator: keeps one local EntiDB database in sync with one database on a server.
//!
//! ## Local state (all in the local database, updated atomically with the data)
//!
//! - `_sync.state`, one entity: client id, pull cursor, how far the local change feed has been
//!   captured, the next op id, the clock, and bootstrap progress.
//! - `_sync.outbox`: one entity per local write not yet acknowledged, keyed by op id (so a
//!   scan returns them in order).
//! - `_sync.meta/<collection>`: per synced entity, keyed by its id, the server version the
//!   local copy is based on and the number of outbox ops that are pending for it. Databases
//!   first attached before this layout keep theirs: one `_sync.meta` collection keyed by a
//!   hash of (collection, id) (`MetaLayout`).
//!
//! ## Invariants (each relied on below)
//!
//! 1. Every local commit to a synced collection reaches the outbox exactly once: capture reads
//!    the change feed from the saved position and saves the new position in the transaction
//!    that writes the outbox entries. Capture also runs at the start of every transaction that
//!    applies server data, while that transaction holds the single writer, so no local write
//!    can slip in between capture and apply.
//! 2. Writes made by the replicator carry the origin [`ORIGIN`] and are never captured, so
//!    pulled changes are not echoed back.
//! 3. Server data never overwrites an entity with pending ops; the pending op is pushed with
//!    the last server version the client saw for the entity and the server's conflict
//!    policy decides (the client's own latest unmerged write on the server is never a
//!    conflict, and a field merge starts from it). The push result carries the entity's
//!    state after the push, which the client adopts once nothing is pending for the
//!    entity.
//! 4. Op ids increase by one per captured write; the server acknowledges them in order and
//!    recognises a retried op by (client id, op id).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use entidb::cbor::Canonical;
use entidb::{Database, Durability, EntityId, ScanOptions, WriteTxn};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::transport::{Method, Request, Transport};
use crate::wire::{
    BootstrapPosition, BootstrapResponse, ErrorBody, ErrorCode, Format, Hlc, Op, OpKind, OpStatus,
    PROTOCOL_VERSION, PullResponse, PushRequest, PushResponse,
};

/// Origin tag of every transaction the replicator writes.
pub const ORIGIN: &str = "entidb-sync";

const STATE: &str = "_sync.state";
const OUTBOX: &str = "_sync.outbox";
const META: &str = "_sync.meta";

/// What went wrong while syncing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The local database failed.
    #[error("local database: {0}")]
    Local(#[from] entidb::Error),
    /// The server could not be reached, or the connection broke (retried automatically by
    /// [`Replicator::sync_now`]).
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// The server answered with an error.
    #[error("server error {status} ({code:?}): {message}", code = body.code, message = body.message)]
    Server {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
    /// The server's answer did not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The configuration is invalid.
    #[error("invalid sync configuration: {0}")]
    Config(String),
}

impl SyncError {
    /// Whether retrying the same request later may succeed (network errors, 408 and 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Transport(_) => true,
            SyncError::Server { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }
}

/// Result type of the replicator.
pub type SyncResult<T> = Result<T, SyncError>;

/// How a replicator is set up.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The database's name on the server.
    pub database: String,
    /// This client's id (the token's `sub`). Stored on first attach; a different id later is
    /// an error (the outbox's op ids belong to the first one).
    pub client_id: String,
    /// The collections to sync (both ways).
    pub collections: Vec<String>,
    /// Ops per push request (at most). A server whose `max_ops_per_push` is lower answers
    /// `too_many_ops`: the push is split until it fits, and the replicator keeps that size
    /// for its later pushes.
    pub push_batch: usize,
    /// Bytes of documents per push request (about): a batch ends before the op that would
    /// pass this, so that a batch of large documents stays under the server's
    /// `max_body_bytes` (8 MiB by default). A batch holds one op at least. A push the server
    /// still refuses as too large (413: a server with a smaller limit, or an answer that
    /// would hold too many of its large documents) is sent again as two halves, down to one
    /// op; an op the server refuses alone stops the push with that error, and the ops after
    /// it wait (the server's `max_body_bytes` must be above the largest document).
    pub push_bytes: usize,
    /// Oplog records per pull request.
    pub pull_limit: usize,
    /// Entities per bootstrap page.
    pub bootstrap_limit: usize,
    /// Attempts per request in [`Replicator::sync_now`] before giving up (network errors and
    /// 5xx only).
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, with full jitter, capped at 30 s.
    pub retry_base: Duration,
    /// Whether a new client starts with a bootstrap (a paged snapshot of the current state,
    /// the default) or pulls the whole retained oplog from cursor 0 (every change in
    /// order; falls back to a bootstrap if the server no longer retains the start).
    pub initial_bootstrap: bool,
    /// How the replicator's own transactions are committed: pulled and bootstrap pages (each
    /// page with its cursor, in one transaction) and push acknowledgements.
    /// [`Durability::Relaxed`], the default: they are written but not synced, so a sync is
    /// not paid for what the server still holds. An application crash loses nothing (the
    /// bytes are with the operating system); a power loss or OS crash may lose the
    /// replicator's transactions since the last sync: pages are pulled again together with
    /// their cursor (or, if the server no longer retains that cursor, the client bootstraps
    /// again), and acknowledged ops are still in the outbox, sent again and answered
    /// `duplicate` (a rejection is then no longer reported to this client; the server's
    /// conflict log keeps it). The local state is always a prefix of what was applied, and
    /// the cursor matches it. A transaction that captures local writes into the outbox is
    /// durable whatever the setting, so that no op id leaves the client before its outbox
    /// entry is durable; any durable commit syncs every relaxed one before it. Pages are in
    /// the change feed at once, so a feed consumer that keeps its position outside this
    /// database can see sequence numbers reused after a power loss (as with any relaxed
    /// commit).
    /// [`Durability::Durable`]: every page and acknowledgement is synced, and the cursor
    /// never goes back, even across a power loss.
    pub pull_durability: Durability,
}

impl SyncConfig {
    /// Defaults for `database` and `client_id`, syncing `collections`.
    pub fn new(database: &str, client_id: &str, collections: &[&str]) -> SyncConfig {
        SyncConfig {
            database: database.to_owned(),
            client_id: client_id.to_owned(),
            collections: collections.iter().map(|c| (*c).to_owned()).collect(),
            push_batch: 500,
            push_bytes: 4 << 20,
            pull_limit: 500,
            bootstrap_limit: 1000,
            max_attempts: 6,
            retry_base: Duration::from_millis(100),
            initial_bootstrap: true,
            pull_durability: Durability::Relaxed,
        }
    }
}

/// What one [`Replicator::sync_now`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    /// Local writes captured into the outbox.
    pub captured: u64,
    /// Ops acknowledged by the server (applied or duplicate).
    pub pushed: u64,
    /// Ops the server rejected in a conflict (the server's state was adopted).
    pub rejected: Vec<(String, EntityId)>,
    /// Remote changes applied locally.
    pub pulled: u64,
    /// Whether a bootstrap ran (first sync, or the client was behind the retention horizon).
    pub bootstrapped: bool,
}

/// What an observer can see of a replicator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Whether the last request reached the server.
    pub online: bool,
    /// Local writes not yet acknowledged.
    pub pending_ops: u64,
    /// The pull cursor.
    pub cursor: u64,
    /// Local time of the last complete sync, ms since the Unix epoch.
    pub last_sync_millis: Option<u64>,
    /// The last error, cleared by a successful sync.
    pub last_error: Option<String>,
    /// While a bootstrap runs: entities received so far and the total the server reported
    /// (unknown when a bootstrap resumed after a restart).
    pub bootstrap: Option<Progress>,
    /// Ops the server rejected in a conflict since this replicator was attached (each one's
    /// loser is in the server's conflict log: [`Replicator::conflicts`]).
    pub rejected_ops: u64,
}

/// Progress of a bootstrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Entities received.
    pub done: u64,
    /// Entities the server counted at the start (when known).
    pub total: Option<u64>,
}

/// The replicator's state (`_sync.state`). Fields here, in `BootstrapProgress` and in
/// `OutboxEntry` are declared in canonical CBOR key order, like the wire types.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// Number of completed bootstraps (marks which entities a bootstrap saw).
    epoch: u64,
    cursor: u64,
    feed_seq: u64,
    /// This installation (`PushRequest::instance`): random, made by the first attach of a
    /// database. Absent in state written before it existed: such a client keeps pushing
    /// without one, since its earlier ops were deduped under the client id alone (ops it
    /// pushed whose answers were lost would be applied again under a new instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    /// First page's cursor and where the next page starts, while a bootstrap is running.
    bootstrap: Option<BootstrapProgress>,
    client_id: String,
    hlc_millis: u64,
    next_op_id: u64,
    /// Every op id up to this one is acknowledged (ops are acknowledged in order), so the
    /// outbox holds exactly the ops after it and before `next_op_id`. Scans start after it,
    /// never over the tombstones of acknowledged ops.
    #[serde(default)]
    acked_op_id: u64,
    /// The synced collections of the last attach (absent in state written before it was
    /// kept): an attach that syncs one more bootstraps again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    collections: Option<Vec<String>>,
    hlc_counter: u32,
    /// Where entity metadata lives (`MetaLayout`): 0 (absent in state written before the
    /// field existed) for one `_sync.meta` collection keyed by hashes, 1 for a collection per
    /// synced collection keyed by entity id. Set when the state is created, never changed.
    #[serde(default)]
    meta_layout: u8,
    bootstrapped: bool,
    /// No entity metadata holds a server version above this one that it got from a push
    /// answer or a bootstrap page; versions from pulled changes are at most `cursor`. So a
    /// pulled change above both finds no metadata that could hold it back, and when no
    /// entity has pending ops either, its metadata is written without being read
    /// (`State::blind_pull`). Each push answer and bootstrap page raises it to its own
    /// cursor, which is at least every version the server handed out before it (the
    /// server's sequence only grows). `None`: not known (state written before this field
    /// existed); it becomes known at the next push answer or bootstrap page, or at a pull's
    /// last page, whose cursor is the server's sequence when it was read.
    #[serde(default)]
    versions_upto: Option<u64>,
}

impl State {
    /// Ops captured and not yet acknowledged: the outbox holds exactly these (ops are
    /// acknowledged in op id order).
    fn pending(&self) -> u64 {
        self.next_op_id
            .saturating_sub(1)
            .saturating_sub(self.acked_op_id)
    }

    /// Whether a pulled change at `cursor` (above `self.cursor`) can write its entity's
    /// metadata without reading it: no entity has pending ops, and no metadata can hold a
    /// version at or above `cursor`. The metadata it replaces would have let the change
    /// through, and after it only the version and the pending count (0) matter: the
    /// bootstrap epoch is compared only by a bootstrap's sweep, with the epoch that
    /// bootstrap writes.
    fn blind_pull(&self, cursor: u64) -> bool {
        self.pending() == 0 && self.versions_upto.is_some_and(|upto| cursor > upto)
    }

    /// Whether a fresh bootstrap's page can write its entities' metadata without reading
    /// it. The synced collections were empty when it started, so metadata for an entity
    /// exists only if the app wrote it (pending ops: none when the outbox is empty;
    /// acknowledged ones: answered before this page was read, so at most the page's
    /// version, and at an equal version the page's document is the one the client holds), a
    /// pull deleted it (an older version: the server has it again), or an earlier page of
    /// this bootstrap had it (never: pages do not overlap).
    fn blind_bootstrap(&self) -> bool {
        self.pending() == 0
    }

    /// Records that metadata may now hold versions up to `cursor` (see `versions_upto`).
    fn raise_versions_upto(&mut self, cursor: u64) {
        self.versions_upto = Some(self.versions_upto.unwrap_or(0).max(cursor));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BootstrapProgress {
    next: Option<BootstrapPosition>,
    /// The synced collections were empty when the bootstrap started. Every entity in them at
    /// its end then came from the bootstrap, or from the app (captured as pending ops, or
    /// pushed and acknowledged between an interruption and the resume, so on the server),
    /// so the sweep has nothing to remove and is skipped (it reads every entity's metadata).
    #[serde(default)]
    fresh: bool,
    /// The synced collections `fresh` was decided for: a resume with another list sweeps.
    #[serde(default)]
    collections: Vec<String>,
    start_cursor: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutboxEntry {
    id: EntityId,
    /// Tag 24 over the document's bytes; outboxes written before documents were carried as
    /// [`Canonical`] hold the value in place, which reads the same.
    doc: Option<Canonical>,
    hlc: Hlc,
    /// The server version the op is based on, `[version or null]`, when capture knew it for
    /// good: nothing else was pending for the entity, so until this op is acknowledged only
    /// its own answer changes the entity's metadata (invariant 3). Absent otherwise (and in
    /// entries written before the field existed): the push reads the metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<(Option<u64>,)>,
    kind: OpKind,
    op_id: u64,
    collection: String,
}

/// An entity's sync metadata: the server version its copy is based on, its pending ops, the
/// last bootstrap that saw it.
///
/// Stored as canonical CBOR `[version or null, pending, epoch]` (an array written by
/// [`Meta::stored`] into a stack buffer: it is written once per applied change or
/// acknowledged op, and serde would write the struct as a map with its fields out of
/// canonical order). Metadata
/// written before this form is that map, which still reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct Meta {
    version: Option<u64>,
    pending: u32,
    epoch: u64,
}

impl Meta {
    /// The metadata stored as `doc` (none stored: the default).
    fn read(doc: Option<entidb::Document>) -> SyncResult<Meta> {
        doc.map_or(Ok(Meta::default()), |d| Meta::decode(d.bytes()))
    }

    /// Decodes either stored form.
    fn decode(bytes: &[u8]) -> SyncResult<Meta> {
        let from = |e: entidb::cbor::CborError| SyncError::from(entidb::Error::from(e));
        if bytes.first() != Some(&META_ARRAY) {
            return entidb::cbor::from_canonical(bytes).map_err(from);
        }
        let (version, pending, epoch) = entidb::cbor::from_canonical(bytes).map_err(from)?;
        Ok(Meta {
            version,
            pending,
            epoch,
        })
    }

    /// The stored form: canonical CBOR `[version or null, pending, epoch]`, written into a
    /// stack buffer (it is written once per applied change or acknowledged op; no `Value`
    /// and no encoder pass).
    fn stored(&self) -> ([u8; META_MAX_BYTES], usize) {
        let mut out = [0u8; META_MAX_BYTES];
        out[0] = META_ARRAY;
        let mut n = 1;
        let uint = |v: u64, out: &mut [u8; META_MAX_BYTES], n: &mut usize| {
            let mut head = [0u8; 9];
            let len = entidb::cbor::encode_head(0, v, &mut head);
            out[*n..*n + len].copy_from_slice(&head[..len]);
            *n += len;
        };
        match self.version {
            Some(v) => uint(v, &mut out, &mut n),
            None => {
                out[n] = 0xf6;
                n += 1;
            }
        }
        uint(u64::from(self.pending), &mut out, &mut n);
        uint(self.epoch, &mut out, &mut n);
        (out, n)
    }

    /// Stores it at `at` (from `MetaLayout::locate`).
    fn write(&self, tx: &mut WriteTxn, at: &MetaAt<'_>) -> SyncResult<()> {
        let (bytes, n) = self.stored();
        // Canonical as written: checked and copied once, not re-encoded.
        let doc = Canonical::from_cbor(&bytes[..n]).map_err(entidb::Error::from)?;
        tx.collection(&at.0).put_canonical(at.1, &doc)?;
        Ok(())
    }

    /// The metadata stored at `at` (the default when none is).
    async fn load(tx: &mut WriteTxn, at: &MetaAt<'_>) -> SyncResult<Meta> {
        Meta::read(tx.collection(&at.0).get_document(at.1).await?)
    }
}

/// Feed records a capture that took nothing may pass over before it stores its position
/// (and so moves the replicator's feed hold) anyway.
const CAPTURE_LAG: u64 = 1024;

/// The head of a CBOR array of 3.
const META_ARRAY: u8 = 0x83;

/// The longest stored metadata: the array head, then three 9-byte integers.
const META_MAX_BYTES: usize = 1 + 3 * 9;

/// Keeps a local database in sync with a server. Cheap to clone; one replicator per local
/// database (its operations serialize on an internal lock).
#[derive(Debug, Clone)]
pub struct Replicator {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    db: Database,
    meta: MetaLayout,
    transport: Arc<dyn Transport>,
    config: SyncConfig,
    run: async_lock::Mutex<()>,
    /// The status and a version that increases with every change.
    status: std::sync::Mutex<(Status, u64)>,
    status_changed: event_listener::Event,
    /// Ops per push: `push_batch`, or less once the server refused more as
    /// `too_many_ops` (its `max_ops_per_push`), for the replicator's life.
    max_ops: std::sync::atomic::AtomicUsize,
}

/// Where an entity's sync metadata is stored.
///
/// `PerCollection` (every database attached since this layout existed): collection
/// `_sync.meta/<name>` for synced collection `<name>` (`_sync.meta#<hash of name>` when that
/// would exceed the engine's 255-byte name limit), keyed by the entity's own id. Ids of one
/// collection keep their order and locality there: a page of time-ordered ids writes its
/// metadata next to each other, instead of at one random place per change in a single
/// collection keyed by hashes (`Hashed`, the first layout, kept by databases that have it:
/// the hash cannot be inverted to move their metadata).
#[derive(Debug)]
enum MetaLayout {
    Hashed,
    /// Synced collection name -> its metadata collection name (for the configured ones;
    /// others, named by outbox ops captured under an older configuration, are computed).
    PerCollection(HashMap<String, String>),
}

/// Where one entity's metadata is: its collection and key.
type MetaAt<'a> = (Cow<'a, str>, EntityId);

/// `MetaLayout` values stored in `State::meta_layout`.
const META_LAYOUT_HASHED: u8 = 0;
const META_LAYOUT_PER_COLLECTION: u8 = 1;

impl MetaLayout {
    fn new(stored: u8, collections: &[String]) -> SyncResult<MetaLayout> {
        match stored {
            META_LAYOUT_HASHED => Ok(MetaLayout::Hashed),
            META_LAYOUT_PER_COLLECTION => Ok(MetaLayout::PerCollection(
                collections
                    .iter()
                    .map(|c| (c.clone(), meta_collection(c)))
                    .collect(),
            )),
            other => Err(SyncError::Protocol(format!(
                "sync state names metadata layout {other}, which this build does not know \
                 (written by a newer build?)"
            ))),
        }
    }

    /// The collection and key of the metadata of `collection`'s entity `id`.
    fn locate(&self, collection: &str, id: &EntityId) -> MetaAt<'_> {
        match self {
            MetaLayout::Hashed => (Cow::Borrowed(META), hashed_meta_id(collection, id)),
            MetaLayout::PerCollection(names) => (
                names.get(collection).map_or_else(
                    || Cow::Owned(meta_collection(collection)),
                    |n| Cow::Borrowed(n.as_str()),
                ),
                *id,
            ),
        }
    }
}

/// The reserved collection that holds the sync metadata of `collection`'s entities, keyed by
/// entity id: `_sync.meta/<collection>`, or `_sync.meta#` and 32 hex digits of SHA-256 of
/// the name when that would pass the engine's 255-byte limit on names. The client and the
/// server both use it (each in its own database); databases from before it keep one
/// `_sync.meta` collection keyed by hashes.
pub fn meta_collection(collection: &str) -> String {
    let name = format!("{META}/{collection}");
    if name.len() <= entidb::MAX_COLLECTION_NAME_BYTES {
        return name;
    }
    let d = Sha256::digest(collection.as_bytes());
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{META}#{hex}")
}

/// The key of an entity's metadata in the `MetaLayout::Hashed` layout.
fn hashed_meta_id(collection: &str, id: &EntityId) -> EntityId {
    let mut h = Sha256::new();
    h.update(collection.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    EntityId::from_bytes(b)
}

/// `s` percent-encoded for a path segment or a query value: everything but the unreserved
/// characters (RFC 3986), so that a collection named `R&D`, `c++` or `a#b` reaches the server
/// as it is (`+` would be read as a space, `&` and `#` would end the value).
fn encode(s: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

/// The longest wait a long poll asks for: the server refuses `wait_ms` above it (400), and
/// waits at most its own `max_wait_ms` anyway.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Bootstraps one pull may run (see `Replicator::pull_locked`).
const MAX_BOOTSTRAPS_PER_PULL: u32 = 3;

fn op_key(op_id: u64) -> EntityId {
    EntityId::from_bytes(u128::from(op_id).to_be_bytes())
}

impl Replicator {
    /// Attaches a replicator to `db`. The first attach records the client id and starts
    /// capturing local writes from now on (writes committed before the first attach are not
    /// synced unless the app rewrites them; they are kept). An attach whose
    /// [`SyncConfig::collections`] adds a collection to the last attach's bootstraps again at
    /// the next round, so that the collection's existing server entities arrive (local
    /// writes to it made while it was not synced are kept and not pushed).
    pub async fn attach(
        db: Database,
        config: SyncConfig,
        transport: Arc<dyn Transport>,
    ) -> SyncResult<Replicator> {
        if config.collections.is_empty() {
            return Err(SyncError::Config("no collections to sync".into()));
        }
        if let Some(c) = config
            .collections
            .iter()
            .find(|c| crate::wire::is_reserved(c))
        {
            return Err(SyncError::Config(format!(
                "collection {c:?} is reserved for the sync layer"
            )));
        }
        if let Some(c) = config.collections.iter().find(|c| c.contains(',')) {
            // A bootstrap names the synced collections as one comma-separated list.
            return Err(SyncError::Config(format!(
                "collection {c:?}: a synced collection's name cannot contain ','"
            )));
        }
        if config.push_batch == 0
            || config.push_bytes == 0
            || config.pull_limit == 0
            || config.bootstrap_limit == 0
        {
            return Err(SyncError::Config("batch sizes must be positive".into()));
        }
        let mut tx = db.begin().await?;
        tx.set_origin(ORIGIN)?;
        let state: Option<State> = tx.collection(STATE).get(EntityId::MIN).await?;
        let layout = state
            .as_ref()
            .map_or(META_LAYOUT_PER_COLLECTION, |s| s.meta_layout);
        let meta = MetaLayout::new(layout, &config.collections)?;
        match state {
            Some(s) if s.client_id != config.client_id => {
                return Err(SyncError::Config(format!(
                    "this database is attached as client {:?}, not {:?}",
                    s.client_id, config.client_id
                )));
            }
            Some(mut s) => {
                // A database attached by a build without feed holds gets one at its stored
                // position, if the feed still retains it (if not, capture reports it).
                let mut changed =
                    tx.feed_hold(ORIGIN).is_none() && hold_capture_position(&mut tx, &s)?;
                // The synced collections changed since the last attach. One that is new
                // holds server entities from before the cursor, which pulls never bring:
                // bootstrap again (pending writes stay; entities the server no longer has
                // are swept). State from before the list was kept records it as it is.
                if s.collections.as_ref() != Some(&config.collections) {
                    let added = s
                        .collections
                        .as_ref()
                        .is_some_and(|known| config.collections.iter().any(|c| !known.contains(c)));
                    // Also a bootstrap in progress: resumed with the longer list it would
                    // start past an added collection that sorts before its position.
                    if added {
                        s.bootstrapped = false;
                        s.bootstrap = None;
                    }
                    s.collections = Some(config.collections.clone());
                    tx.collection(STATE).put(EntityId::MIN, &s)?;
                    changed = true;
                }
                if changed {
                    tx.commit().await?;
                } else {
                    tx.abort();
                }
            }
            None => {
                let entropy = db.backend().entropy();
                let state = State {
                    client_id: config.client_id.clone(),
                    collections: Some(config.collections.clone()),
                    instance: Some(format!(
                        "{:016x}{:016x}",
                        entropy.next_u64(),
                        entropy.next_u64()
                    )),
                    feed_seq: tx.read_sequence(),
                    next_op_id: 1,
                    bootstrapped: !config.initial_bootstrap,
                    // No metadata yet.
                    versions_upto: Some(0),
                    meta_layout: META_LAYOUT_PER_COLLECTION,
                    ..State::default()
                };
                tx.collection(STATE).put(EntityId::MIN, &state)?;
                hold_capture_position(&mut tx, &state)?;
                tx.commit().await?;
            }
        }
        let push_batch = config.push_batch;
        let r = Replicator {
            shared: Arc::new(Shared {
                db,
                meta,
                transport,
                config,
                run: async_lock::Mutex::new(()),
                status: std::sync::Mutex::new((Status::default(), 1)),
                status_changed: event_listener::Event::new(),
                max_ops: std::sync::atomic::AtomicUsize::new(push_batch),
            }),
        };
        let state = r.load_state().await?;
        let pending = r.pending_ops().await?;
        r.set_status(|s| {
            s.cursor = state.cursor;
            s.pending_ops = pending;
        });
        Ok(r)
    }

    /// The local database.
    pub fn database(&self) -> &Database {
        &self.shared.db
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status_versioned().0
    }

    fn status_versioned(&self) -> (Status, u64) {
        match self.shared.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        {
            let mut guard = match self.shared.status.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let before = guard.0.clone();
            f(&mut guard.0);
            if guard.0 == before {
                return;
            }
            guard.1 += 1;
        }
        self.shared.status_changed.notify(usize::MAX);
    }

    /// The status as a stream: the current status first, then each new status after it
    /// changes (a slow consumer skips intermediate ones and gets the latest). Use it to
    /// show online/offline, pending writes, bootstrap progress and conflicts in a UI.
    pub fn status_stream(&self) -> impl futures_core::Stream<Item = Status> + use<> {
        futures_util::stream::unfold((self.clone(), 0u64), |(r, seen)| async move {
            loop {
                let listener = r.shared.status_changed.listen();
                let (status, version) = r.status_versioned();
                if version > seen {
                    return Some((status, (r, version)));
                }
                listener.await;
            }
        })
    }

    /// A page of the server's conflict log (entries of the synced collections this client
    /// may read), oldest first; pass the previous page's `next` as `after`.
    pub async fn conflicts(
        &self,
        after: Option<EntityId>,
        limit: usize,
    ) -> SyncResult<crate::wire::ConflictsResponse> {
        let mut path = self.endpoint(&format!("conflicts?limit={limit}"));
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        self.request(Request {
            method: Method::Get,
            path,
            body: None,
        })
        .await
    }

    /// Local writes not yet acknowledged by the server (captured ones; a write committed
    /// since the last capture is counted once captured).
    pub async fn pending_ops(&self) -> SyncResult<u64> {
        let s = self.load_state().await?;
        Ok(s.pending())
    }

    async fn load_state(&self) -> SyncResult<State> {
        self.shared
            .db
            .collection(STATE)
            .get(EntityId::MIN)
            .await?
            .ok_or_else(|| SyncError::Protocol("sync state is missing".into()))
    }

    /// Moves local writes from the change feed into the outbox. Runs as part of every other
    /// operation; call it directly to make the outbox durable without talking to the server.
    pub async fn capture(&self) -> SyncResult<u64> {
        let _run = self.shared.run.lock().await;
        Ok(self.capture_locked().await?.0)
    }

    /// A transaction that only captures; it commits (and syncs) only when the change feed
    /// moved since the last capture. Returns the ops captured and the state after it.
    async fn capture_locked(&self) -> SyncResult<(u64, State)> {
        let mut tx = self.begin().await?;
        let mut state = read_state(&mut tx).await?;
        let stored = state.feed_seq;
        let n = self.capture_into(&mut tx, &mut state).await?;
        // Nothing captured: only records capture passes over (the replicator's own, other
        // collections', collection events) went by. Advancing past them is left to the next
        // transaction that commits anyway, unless the stored position fell far behind: then
        // a capture would page through more and more of them, and the replicator's feed
        // hold (which moves with the stored position) would keep them all. (The commit's own
        // record is stepped over, so the next capture does not commit again.)
        // Also commit if the hold is gone (the app released it): storing the position sets
        // it again, before retention can pass the position.
        let lagging = state.feed_seq > stored
            && (state.feed_seq - stored >= CAPTURE_LAG || tx.feed_hold(ORIGIN).is_none());
        if n == 0 && !lagging {
            tx.abort();
        } else {
            self.commit_with(tx, &mut state, n).await?;
        }
        Ok((n, state))
    }

    /// The durability of a replicator transaction `tx` (a capture, a push's
    /// acknowledgement, a pulled or bootstrap page) that captured `captured` ops.
    ///
    /// [`SyncConfig::pull_durability`] `Durable`: always durable. `Relaxed` (the default):
    /// relaxed, so that a round of sync costs the client no sync of its own for what the
    /// server still holds, except in two cases:
    /// * **It captured.** Outbox entries are stored, never derived again: an op id must not
    ///   leave the client before its outbox entry is durable. Capture is not a function of
    ///   the feed alone: a put whose value a newer version replaced (and a flush or
    ///   compaction dropped) reads as superseded and is passed over, and the synced
    ///   collections are configuration. So a capture lost in a power loss could hand a
    ///   pushed op id to another write, which the server would answer `duplicate` (dropped;
    ///   found in review). The same holds for an app write committed `Relaxed`: it could
    ///   be lost with its capture, and the app's next write would get its op id
    ///   (`e2e_sync::a_relaxed_write_captured_by_a_page_is_not_lost_after_a_power_loss`).
    /// * **It sets the replicator's feed hold again** (the app released it): retention
    ///   counts a hold's move only once it is durable, and a lost move would leave the
    ///   stored capture position below what retention kept.
    ///
    /// A relaxed transaction lost in a power loss is then harmless: a page is pulled again
    /// with its cursor, and an acknowledgement's ops are still in the outbox, sent again and
    /// answered `duplicate`
    /// (`e2e_sync::a_lost_acknowledgement_is_answered_duplicate_after_a_power_loss`).
    fn commit_durability(&self, tx: &WriteTxn, captured: u64) -> Durability {
        let relaxed = self.shared.config.pull_durability == Durability::Relaxed
            && captured == 0
            && tx.feed_hold(ORIGIN).is_some();
        if relaxed {
            Durability::Relaxed
        } else {
            Durability::Durable
        }
    }

    /// Stores `state` and commits `tx`, a replicator transaction that captured `captured`
    /// ops, with the durability [`Replicator::commit_durability`] gives it (decided before
    /// `commit_state` moves the feed hold: a hold set again is what makes it durable).
    async fn commit_with(
        &self,
        mut tx: WriteTxn,
        state: &mut State,
        captured: u64,
    ) -> SyncResult<()> {
        let durability = self.commit_durability(&tx, captured);
        tx.set_durability(durability);
        commit_state(tx, state).await?;
        // The outbox's size is the state's (ops captured and not yet acknowledged), so every
        // replicator commit (a capture, also one no push follows; an acknowledgement) shows it.
        let pending = state.pending();
        self.set_status(|s| s.pending_ops = pending);
        Ok(())
    }

    async fn begin(&self) -> SyncResult<WriteTxn> {
        let mut tx = self.shared.db.begin().await?;
        tx.set_origin(ORIGIN)?;
        Ok(tx)
    }

    /// The change-feed records capture reads: the app's (not this replicator's own), in
    /// synced collections. Filtered before their values are read.
    fn capturable(&self, origin: Option<&str>, collection: &str) -> bool {
        origin != Some(ORIGIN) && self.synced(collection)
    }

    fn synced(&self, collection: &str) -> bool {
        self.shared
            .config
            .collections
            .iter()
            .any(|c| c == collection)
    }

    /// Captures every local commit up to the transaction's read sequence. The transaction
    /// holds the single writer, so the published sequence equals its read sequence.
    async fn capture_into(&self, tx: &mut WriteTxn, state: &mut State) -> SyncResult<u64> {
        let upto = tx.read_sequence();
        // The transaction reads at the last appended sequence; an app's durable commit may be
        // appended but still in its sync, not yet in the (published) feed.
        self.shared.db.wait_published(upto).await?;
        let mut captured = 0;
        while state.feed_seq < upto {
            // The replicator's own records and unsynced collections are left out before
            // their values are read.
            let page = self
                .shared
                .db
                .changes_page_filtered(state.feed_seq, 256, |origin, c| self.capturable(origin, c))
                .await?;
            if page.is_empty() {
                return Err(SyncError::Protocol(format!(
                    "change feed ended at {} before the published sequence {upto}",
                    state.feed_seq
                )));
            }
            for batch in page {
                if batch.seq > upto {
                    break;
                }
                state.feed_seq = batch.seq;
                // The filter left only synced collections' changes, none of our own.
                for change in batch.changes {
                    // Collection events carry no id; a live round's wake-up passes over the
                    // same records (`is_op`).
                    let Some(id) = change.id else { continue };
                    let (kind, doc) = match change.op {
                        // The stored bytes, shared: not decoded, not copied.
                        entidb::ChangeOp::Put(doc) => (OpKind::Put, Some(doc)),
                        entidb::ChangeOp::Delete => (OpKind::Delete, None),
                        // A later record in the feed holds the entity's newer state.
                        _ => continue,
                    };
                    let hlc = tick(state, batch.timestamp_millis);
                    let op_id = state.next_op_id;
                    state.next_op_id += 1;
                    let at = self.shared.meta.locate(&change.collection, &id);
                    let mut meta = Meta::load(tx, &at).await?;
                    let entry = OutboxEntry {
                        op_id,
                        collection: change.collection,
                        id,
                        kind,
                        doc,
                        hlc,
                        base: (meta.pending == 0).then_some((meta.version,)),
                    };
                    tx.collection(OUTBOX).put(op_key(op_id), &entry)?;
                    meta.pending += 1;
                    meta.write(tx, &at)?;
                    captured += 1;
                }
            }
        }
        Ok(captured)
    }

    async fn request<T: crate::wire::Message>(&self, req: Request) -> SyncResult<T> {
        let resp = match self.shared.transport.send(req).await {
            Ok(r) => r,
            Err(e) => {
                self.set_status(|s| s.online = false);
                return Err(e.into());
            }
        };
        self.set_status(|s| s.online = true);
        if resp.status != 200 {
            let body = Format::Cbor
                .decode::<ErrorBody>(&resp.body)
                .unwrap_or_else(|_| ErrorBody {
                    code: if resp.status >= 500 {
                        ErrorCode::Internal
                    } else {
                        ErrorCode::BadRequest
                    },
                    message: String::from_utf8_lossy(&resp.body).into_owned(),
                    oldest_cursor: None,
                });
            return Err(SyncError::Server {
                status: resp.status,
                body,
            });
        }
        Format::Cbor
            .decode(&resp.body)
            .map_err(|e| SyncError::Protocol(e.to_string()))
    }

    /// Retries `f` on network errors and 5xx with exponential backoff and full jitter.
    async fn retry<T, F, Fut>(&self, mut f: F) -> SyncResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = SyncResult<T>>,
    {
        let cfg = &self.shared.config;
        let mut attempt = 0u32;
        loop {
            match f().await {
                Err(e) if e.is_retryable() && attempt + 1 < cfg.max_attempts => {
                    let cap = cfg
                        .retry_base
                        .saturating_mul(1 << attempt.min(16))
                        .min(Duration::from_secs(30));
                    // The backend's entropy and clock: the host's (a browser's setTimeout on
                    // wasm32), or simulated time that replays from a seed.
                    let backend = self.shared.db.backend();
                    let jitter = jitter_fraction(backend.entropy().next_u64());
                    backend.clock().sleep(cap.mul_f64(jitter)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Pushes the outbox in batches until it is empty. Returns (acknowledged, rejected).
    pub async fn push(&self) -> SyncResult<(u64, Vec<(String, EntityId)>)> {
        let _run = self.shared.run.lock().await;
        let outcome = self.push_locked(false).await?;
        Ok((outcome.acked, outcome.rejected))
    }

    /// Pushes the outbox as a pipeline, so that the client's work and the server's overlap:
    /// while the server applies batch `k+1`, the client acknowledges batch `k` locally (one
    /// transaction, see [`Replicator::commit_durability`]) and reads batch `k+2` from the
    /// outbox.
    ///
    /// Invariants:
    /// * requests stay strictly sequential (batch `k+1` is sent only after batch `k`'s answer
    ///   arrived): the server's dedupe keeps the highest op id per client;
    /// * a batch's base versions are what the entity metadata holds after every earlier
    ///   batch's acknowledgement: read from the metadata, then overridden by the `applied`
    ///   answers of the two batches whose acknowledgements may not have been in the snapshot
    ///   it was read from (other answers leave the base of a later op as it was, see
    ///   [`Replicator::ack_push`]);
    /// * an op leaves the outbox only in the transaction that records its answer, so a crash
    ///   anywhere resends it and the server answers `duplicate`.
    ///
    /// With `pull`, the batch that looks like the last (not a full one) also asks for the
    /// page of changes after the client's cursor (`push?since=C`, `docs/sync-protocol.md`
    /// §5.1), and its acknowledgement applies that page in the same transaction: a round of
    /// sync is then one exchange and one local transaction instead of two of each.
    async fn push_locked(&self, pull: bool) -> SyncResult<PushOutcome> {
        let mut outcome = PushOutcome::default();
        // Capture first so that the batches include every write made so far.
        let (_, state) = self.capture_locked().await?;
        let path = self.endpoint("push");
        let instance = state.instance.clone();
        // The page is asked for once, and only from a client that is not (re)bootstrapping:
        // a bootstrap comes before pulls.
        let mut page_since =
            (pull && state.bootstrapped && state.bootstrap.is_none()).then_some(state.cursor);
        // Ops per batch: `push_batch`, halved for the rest of this push each time the server
        // refuses a batch as too large.
        let mut max_ops = self
            .shared
            .max_ops
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut next = self.prepare_push(state.acked_op_id, max_ops).await?;
        // The last batch sent and its answer, not yet acknowledged locally, with the cursor
        // its page was asked after.
        let mut answered: Option<(Vec<Op>, PushResponse, Option<u64>)> = None;
        // Server versions from the last two answers (newest first).
        let mut recent: std::collections::VecDeque<HashMap<(String, EntityId), Option<u64>>> =
            std::collections::VecDeque::with_capacity(2);
        loop {
            let Some((mut ops, is_last)) = next.take() else {
                let Some((ops, resp, since)) = answered.take() else {
                    break;
                };
                self.ack_push(&ops, &resp, since, &mut outcome).await?;
                // The acknowledgements may have captured writes made during the push, after
                // the last batch was read: look again, so that a push ends with the outbox
                // empty.
                let last = ops.last().map_or(0, |o| o.op_id);
                recent.clear();
                next = self.prepare_push(last, max_ops).await?;
                continue;
            };
            for op in &mut ops {
                let key = (op.collection.clone(), op.id);
                if let Some(v) = recent.iter().find_map(|m| m.get(&key)) {
                    op.base_version = *v;
                }
            }
            let last_op = ops.last().map_or(0, |o| o.op_id);
            // The page is asked for with the batch that empties the outbox as it was read
            // (a short batch is not enough: batches end at `push_bytes`, or after a split).
            let since = if is_last { page_since.take() } else { None };
            let path = match since {
                Some(c) => format!("{path}?since={c}&limit={}", self.shared.config.pull_limit),
                None => path.clone(),
            };
            let request = PushRequest {
                instance: instance.clone(),
                client_id: self.shared.config.client_id.clone(),
                ops,
            };
            let body = Format::Cbor
                .encode(&request)
                .map_err(|e| SyncError::Protocol(e.to_string()))?;
            let ops = request.ops;
            let send = self.retry(|| {
                self.request::<PushResponse>(Request {
                    method: Method::Post,
                    path: path.clone(),
                    body: Some(body.clone()),
                })
            });
            let previous = answered.take();
            let mut acked_now = PushOutcome::default();
            let ack = async {
                match &previous {
                    Some((ops, resp, since)) => {
                        self.ack_push(ops, resp, *since, &mut acked_now).await
                    }
                    None => Ok(()),
                }
            };
            let (resp, ack, following) =
                futures_util::future::join3(send, ack, self.prepare_push(last_op, max_ops)).await;
            ack?;
            outcome.add(acked_now);
            let resp = match resp {
                // Too large for the server (its body limit is below `push_bytes`, the answer
                // would hold too many large documents, or its `max_ops_per_push` is below
                // `push_batch`): nothing was stored; the first half goes again, and the rest
                // of the push in batches of that size.
                Err(SyncError::Server { status, body })
                    if ops.len() > 1 && (status == 413 || body.code == ErrorCode::TooManyOps) =>
                {
                    max_ops = ops.len() / 2;
                    // A count limit holds for the next pushes too (a size limit depends on
                    // what the ops carry, and is found again per push).
                    if body.code == ErrorCode::TooManyOps {
                        self.shared
                            .max_ops
                            .store(max_ops, std::sync::atomic::Ordering::Relaxed);
                    }
                    let mut ops = ops;
                    ops.truncate(max_ops);
                    next = Some((ops, false));
                    page_since = page_since.or(since);
                    continue;
                }
                other => other?,
            };
            if resp.results.len() != ops.len()
                || resp
                    .results
                    .iter()
                    .zip(&ops)
                    .any(|(r, o)| r.op_id != o.op_id)
            {
                return Err(SyncError::Protocol(
                    "push results do not match the pushed ops".into(),
                ));
            }
            if recent.len() == 2 {
                recent.pop_back();
            }
            recent.push_front(
                ops.iter()
                    .zip(&resp.results)
                    .filter(|(_, r)| r.status == OpStatus::Applied)
                    .map(|(o, r)| ((o.collection.clone(), o.id), r.state.version))
                    .collect(),
            );
            answered = Some((ops, resp, since));
            next = match following {
                Ok(n) => n,
                Err(e) => {
                    // Record the answer already received before giving up: resent, its ops
                    // would be answered `duplicate`, and a rejection would no longer say so
                    // (`ack_push` counts it in the status). If this fails too, the ops stay
                    // in the outbox and are resent.
                    if let Some((ops, resp, since)) = answered.take() {
                        let _ = self
                            .ack_push(&ops, &resp, since, &mut PushOutcome::default())
                            .await;
                    }
                    return Err(e);
                }
            };
        }
        Ok(outcome)
    }

    /// The next batch of outbox ops after op id `after` (`None` when there are none), and
    /// whether it is the last one the outbox holds now: at most
    /// `max_ops`, and no more than [`SyncConfig::push_bytes`] of entries (one at least), with
    /// base versions from the outbox entry's `base` when capture stored one, from entity
    /// metadata otherwise.
    async fn prepare_push(
        &self,
        after: u64,
        max_ops: usize,
    ) -> SyncResult<Option<(Vec<Op>, bool)>> {
        let snap = self.shared.db.snapshot();
        let mut opts = ScanOptions::limit(max_ops);
        opts.after = Some(op_key(after));
        let page = snap.collection(OUTBOX).scan(opts).await?;
        if page.items.is_empty() {
            return Ok(None);
        }
        let mut ops = Vec::with_capacity(page.items.len());
        let mut bytes = 0;
        for doc in &page.items {
            // The entry's size stands for the op's (its document, id and names).
            bytes += doc.bytes().len();
            if bytes > self.shared.config.push_bytes && !ops.is_empty() {
                break;
            }
            let e: OutboxEntry = doc.decode()?;
            let base_version = match e.base {
                Some((v,)) => v,
                None => {
                    let (coll, key) = self.shared.meta.locate(&e.collection, &e.id);
                    Meta::read(snap.collection(&coll).get_document(key).await?)?.version
                }
            };
            ops.push(Op {
                op_id: e.op_id,
                collection: e.collection,
                id: e.id,
                kind: e.kind,
                doc: e.doc,
                base_version,
                hlc: e.hlc,
            });
        }
        // The last batch: the scan reached the end of the outbox and the batch took it all.
        let last = page.next.is_none() && ops.len() == page.items.len();
        Ok(Some((ops, last)))
    }

    /// Records a batch's answer in one transaction (relaxed unless it also captured, see
    /// [`Replicator::commit_durability`]): the ops leave the outbox, an `applied` op's entity
    /// metadata takes the version it wrote, and an entity with no op left pending whose op
    /// did not simply apply adopts the server's state (document and version). With later ops
    /// pending, a `merged`, `duplicate` or `rejected` answer leaves the version alone: those
    /// ops were made on the client's own document, not on the state the answer gives.
    ///
    /// When the request asked for the page after cursor `since` and the answer carries it,
    /// the page is applied after the answers, in the same transaction (the answers first:
    /// the page holds the push's own changes, which the answers' versions then pass over).
    /// A page asked after a cursor other than the stored one is not applied (it cannot be:
    /// the page is asked for under the `run` lock, which every cursor move holds; checked
    /// anyway). A page that
    /// cannot be applied (a protocol error in it, or a local failure such as a unique index
    /// violation at commit) must not take the answers with it: they are then recorded
    /// without it, and the round's own pull meets the page's error again and reports it.
    /// Adds what it did to `outcome`.
    async fn ack_push(
        &self,
        ops: &[Op],
        resp: &PushResponse,
        since: Option<u64>,
        outcome: &mut PushOutcome,
    ) -> SyncResult<()> {
        if since.is_some() && resp.pull.is_some() {
            // An error is reported by the round's pull, which asks for the same page.
            if self.ack_push_once(ops, resp, since, outcome).await.is_ok() {
                return Ok(());
            }
        }
        self.ack_push_once(ops, resp, None, outcome).await
    }

    /// [`Replicator::ack_push`] in one transaction, with the page when `since` is given.
    /// Changes nothing (not `outcome`, not the status) unless it commits.
    async fn ack_push_once(
        &self,
        ops: &[Op],
        resp: &PushResponse,
        since: Option<u64>,
        outcome: &mut PushOutcome,
    ) -> SyncResult<()> {
        let mut acked = 0;
        let mut rejected = Vec::new();
        let mut tx = self.begin().await?;
        let mut state = read_state(&mut tx).await?;
        let captured = self.capture_into(&mut tx, &mut state).await?;
        for (op, result) in ops.iter().zip(&resp.results) {
            // The op is in the outbox (only this replicator, holding `run`, removes it).
            tx.collection(OUTBOX).remove(op_key(op.op_id))?;
            state.acked_op_id = op.op_id;
            let at = self.shared.meta.locate(&op.collection, &op.id);
            let mut meta = Meta::load(&mut tx, &at).await?;
            meta.pending = meta.pending.saturating_sub(1);
            if meta.pending == 0 || result.status == OpStatus::Applied {
                // Any other answer carries a state the later ops pending for the entity
                // were not made on: a `duplicate` or `rejected` one the entity's state now
                // (maybe with another client's write since), a `merged` one the merge.
                // Those ops keep the base the client last saw, so such a write is still
                // found concurrent (and a merge merged again); the server does not count
                // the client's own latest write, unmerged, as a conflict.
                meta.version = result.state.version;
            }
            if meta.pending == 0 && result.status != OpStatus::Applied {
                // Adopt the server's state: the op lost, a retry's answer does not say
                // what the server holds now, or the server merged the op.
                apply(&mut tx, &op.collection, op.id, result.state.doc.as_ref()).await?;
            }
            meta.write(&mut tx, &at)?;
            if result.status == OpStatus::Rejected {
                rejected.push((op.collection.clone(), op.id));
            } else {
                acked += 1;
            }
        }
        // The answer's versions are at most its cursor.
        let upto_before = state.versions_upto;
        state.raise_versions_upto(resp.cursor);
        let mut page_applied = None;
        if let (Some(since), Some(page)) = (since, &resp.pull)
            && since == state.cursor
        {
            if page.cursor < state.cursor {
                return Err(SyncError::Protocol(format!(
                    "server cursor went back from {} to {}",
                    state.cursor, page.cursor
                )));
            }
            let answered = AfterAnswer {
                upto: upto_before,
                entities: ops.iter().map(|o| (o.collection.as_str(), o.id)).collect(),
            };
            page_applied = Some(
                self.apply_changes(&mut tx, &mut state, page, Some(&answered))
                    .await?,
            );
        }
        self.commit_with(tx, &mut state, captured).await?;
        if !rejected.is_empty() {
            self.set_status(|s| s.rejected_ops += rejected.len() as u64);
        }
        if let Some(applied) = page_applied {
            self.set_status(|s| s.cursor = state.cursor);
            outcome.pulled += applied;
            outcome.caught_up = resp.pull.as_ref().is_some_and(|p| !p.has_more);
        }
        outcome.acked += acked;
        outcome.rejected.extend(rejected);
        Ok(())
    }

    /// Pulls every change after the saved cursor (bootstrapping first when the client is new
    /// or the server no longer retains its cursor). Returns the number of changes applied.
    pub async fn pull(&self) -> SyncResult<(u64, bool)> {
        let _run = self.shared.run.lock().await;
        let (applied, bootstrapped, _) = self.pull_locked(None).await?;
        Ok((applied, bootstrapped))
    }

    /// Pulls page after page. While one page is applied (one local transaction), the next one
    /// is already requested, so the server's work and the client's overlap; a page is applied
    /// only after the one before it committed, and only if it starts at the saved cursor.
    ///
    /// With `wait`, the first request long-polls; it gives way to a local write to a synced
    /// collection, and then the pull returns at once with `woken` set (the third value).
    async fn pull_locked(&self, wait: Option<Duration>) -> SyncResult<(u64, bool, bool)> {
        let mut applied = 0;
        let mut bootstrapped = false;
        let mut wait = wait;
        // A page requested while the previous one was applied: (its `since`, the answer).
        let mut prefetched: Option<(u64, SyncResult<Option<PullResponse>>)> = None;
        // Bootstraps run by this call: a server whose retention is shorter than a bootstrap
        // takes answers the cursor it ends at with 410 again, without end.
        let mut bootstraps = 0;
        loop {
            let state = self.load_state().await?;
            if state.bootstrap.is_some() || !state.bootstrapped {
                bootstraps += 1;
                if bootstraps > MAX_BOOTSTRAPS_PER_PULL {
                    return Err(SyncError::Protocol(format!(
                        "the server's retention passed the cursor of each of {MAX_BOOTSTRAPS_PER_PULL} bootstraps before they ended (its retention is shorter than a bootstrap takes); the next round tries again"
                    )));
                }
                applied += self.bootstrap_locked().await?;
                bootstrapped = true;
                prefetched = None;
                continue;
            }
            let resp = match prefetched.take() {
                Some((since, resp)) if since == state.cursor => resp?,
                _ => match wait.take() {
                    // The long poll gives way to a local write: the round then pushes it at
                    // once instead of holding it until the wait runs out.
                    Some(w) => {
                        let page = std::pin::pin!(self.fetch_page(state.cursor, Some(w)));
                        let local = std::pin::pin!(self.local_write_after(state.feed_seq));
                        match futures_util::future::select(page, local).await {
                            futures_util::future::Either::Left((page, _)) => page?,
                            futures_util::future::Either::Right((woke, _)) => {
                                woke?;
                                return Ok((applied, bootstrapped, true));
                            }
                        }
                    }
                    None => self.fetch_page(state.cursor, None).await?,
                },
            };
            let Some(resp) = resp else {
                // The server no longer retains the cursor: bootstrap again.
                self.bootstrap_again().await?;
                continue;
            };
            if resp.cursor < state.cursor {
                return Err(SyncError::Protocol(format!(
                    "server cursor went back from {} to {}",
                    state.cursor, resp.cursor
                )));
            }
            // More to come from the same cursor would ask for the same page forever.
            if resp.has_more && resp.cursor == state.cursor {
                return Err(SyncError::Protocol(format!(
                    "the server said more changes follow cursor {} but sent none",
                    resp.cursor
                )));
            }
            if !resp.has_more {
                applied += self.apply_page(&resp).await?;
                break;
            }
            // The request is polled first, so that it is on its way before the page's CPU
            // work starts (one task: the two interleave at the commit's sync).
            // A failed apply returns at once (dropping the request); a failed request is
            // kept and reported when its page is due.
            let (next, page) = futures_util::future::try_join(
                self.fetch_page(resp.cursor, None).map(Ok),
                self.apply_page(&resp),
            )
            .await?;
            applied += page;
            prefetched = Some((resp.cursor, next));
        }
        Ok((applied, bootstrapped, false))
    }

    /// Marks the client as needing a bootstrap (the server no longer holds its cursor, or
    /// never did): the next pull runs it.
    async fn bootstrap_again(&self) -> SyncResult<()> {
        let mut tx = self.begin().await?;
        let mut state = read_state(&mut tx).await?;
        state.bootstrap = None;
        state.bootstrapped = false;
        commit_state(tx, &mut state).await
    }

    /// Returns once the app commits a change to a synced collection after feed position
    /// `from` (what capture has not taken yet). The replicator's own records and other
    /// collections' changes are passed over without reading their values.
    async fn local_write_after(&self, from: u64) -> SyncResult<()> {
        let db = &self.shared.db;
        let mut pos = from;
        loop {
            if db.last_sequence() <= pos {
                db.wait_published(pos + 1).await?;
                continue;
            }
            let page = db
                .changes_page_filtered(pos, 64, |origin, c| self.capturable(origin, c))
                .await?;
            // Only what capture takes (an entity put or delete) ends the wait: a collection
            // created or dropped, which capture skips, would end every wait after it.
            if page.iter().any(|b| b.changes.iter().any(is_op)) {
                return Ok(());
            }
            let Some(last) = page.last() else {
                return Err(SyncError::Protocol(format!(
                    "change feed ended at {pos} before the published sequence {}",
                    db.last_sequence()
                )));
            };
            pos = last.seq;
        }
    }

    /// Requests the page of changes after `since` (with retries). `None`: the server answered
    /// that the cursor is behind its retention horizon.
    async fn fetch_page(
        &self,
        since: u64,
        wait: Option<Duration>,
    ) -> SyncResult<Option<PullResponse>> {
        let mut path = self.endpoint(&format!(
            "pull?since={since}&limit={}",
            self.shared.config.pull_limit
        ));
        if let Some(w) = wait {
            path.push_str(&format!("&wait_ms={}", w.min(MAX_WAIT).as_millis()));
        }
        match self.get_retried::<PullResponse>(&path).await {
            Err(SyncError::Server { body, .. }) if body.code == ErrorCode::Rebootstrap => Ok(None),
            other => other.map(Some),
        }
    }

    /// Applies one page of changes and saves the new cursor in one local transaction (which
    /// also captures the app's writes made since the last one). Returns the changes applied.
    async fn apply_page(&self, resp: &PullResponse) -> SyncResult<u64> {
        let mut tx = self.begin().await?;
        let mut state = read_state(&mut tx).await?;
        let captured = self.capture_into(&mut tx, &mut state).await?;
        let cursor_before = state.cursor;
        let applied = self.apply_changes(&mut tx, &mut state, resp, None).await?;
        if captured == 0 && applied == 0 && state.cursor == cursor_before {
            // An empty page changes nothing: no commit, no sync.
            tx.abort();
        } else {
            self.commit_with(tx, &mut state, captured).await?;
        }
        self.set_status(|s| s.cursor = state.cursor);
        Ok(applied)
    }

    /// Applies a page of changes (whose cursor the caller checked is not behind
    /// `state.cursor`) in `tx` and moves `state.cursor` to the page's. `answered`: the page
    /// came with a push's answer, recorded earlier in `tx` (see [`AfterAnswer`]). Returns the
    /// changes applied.
    async fn apply_changes(
        &self,
        tx: &mut WriteTxn,
        state: &mut State,
        resp: &PullResponse,
        answered: Option<&AfterAnswer<'_>>,
    ) -> SyncResult<u64> {
        debug_assert!(resp.cursor >= state.cursor, "the caller checked the cursor");
        let mut applied = 0;
        for c in &resp.changes {
            if !self.synced(&c.collection) || c.cursor <= state.cursor {
                continue;
            }
            let at = self.shared.meta.locate(&c.collection, &c.id);
            let blind = match answered {
                None => state.blind_pull(c.cursor),
                Some(a) => a.blind_pull(state, c.cursor, &c.collection, c.id),
            };
            let mut meta = if blind {
                // Nothing to read (see `State::versions_upto`): the common case of a
                // client catching up with other clients' writes.
                Meta {
                    epoch: state.epoch,
                    ..Meta::default()
                }
            } else {
                let meta = Meta::load(tx, &at).await?;
                // Pending local writes win locally until the server decides; a change at
                // or below the known version (the client's own push, adopted from its
                // result, or a newer state from a bootstrap page) is already applied.
                if meta.pending > 0 || meta.version.is_some_and(|v| v >= c.cursor) {
                    continue;
                }
                meta
            };
            let doc = match c.kind {
                OpKind::Put => Some(c.doc.as_ref().ok_or_else(|| {
                    SyncError::Protocol("a put change without a document".into())
                })?),
                OpKind::Delete => None,
            };
            apply(tx, &c.collection, c.id, doc).await?;
            meta.version = Some(c.cursor);
            meta.write(tx, &at)?;
            applied += 1;
        }
        state.cursor = resp.cursor;
        if !resp.has_more {
            // The last page's cursor is the server's sequence when it was read, so at least
            // every version in the push answers and bootstrap pages this client got before:
            // a bound not known yet (state from before it existed) becomes known.
            state.versions_upto.get_or_insert(resp.cursor);
        }
        Ok(applied)
    }

    /// Runs (or resumes) a bootstrap: reads the server's current state page by page, each
    /// page applied and its position saved in one transaction, then removes local copies of
    /// entities the server no longer has.
    async fn bootstrap_locked(&self) -> SyncResult<u64> {
        let mut applied = 0;
        // A page requested while the previous one was applied: (its position, the answer).
        let mut prefetched: Option<(BootstrapPosition, SyncResult<BootstrapResponse>)> = None;
        loop {
            let state = self.load_state().await?;
            let position = state.bootstrap.as_ref().and_then(|b| b.next.clone());
            let resp = match (prefetched.take(), &position) {
                (Some((at, resp)), Some(p)) if at == *p => resp?,
                _ => self.fetch_bootstrap_page(position.as_ref()).await?,
            };
            // A position that does not move would be asked for again forever.
            if resp.next.is_some() && resp.next == position {
                return Err(SyncError::Protocol(
                    "the server answered a bootstrap page with the position it was asked at".into(),
                ));
            }
            let Some(next) = resp.next.clone() else {
                applied += self.apply_bootstrap_page(&resp).await?;
                return Ok(applied);
            };
            // As in a pull: the next page is on its way while this one is applied.
            let (ahead, page) = futures_util::future::try_join(
                self.fetch_bootstrap_page(Some(&next)).map(Ok),
                self.apply_bootstrap_page(&resp),
            )
            .await?;
            applied += page;
            prefetched = Some((next, ahead));
        }
    }

    /// Requests the bootstrap page at `position` (`None`: the first page), with retries.
    async fn fetch_bootstrap_page(
        &self,
        position: Option<&BootstrapPosition>,
    ) -> SyncResult<BootstrapResponse> {
        let names: Vec<String> = self
            .shared
            .config
            .collections
            .iter()
            .map(|c| encode(c))
            .collect();
        let mut path = self.endpoint(&format!(
            "bootstrap?limit={}&collections={}",
            self.shared.config.bootstrap_limit,
            names.join(",")
        ));
        if let Some(next) = position {
            path.push_str(&format!("&collection={}", encode(&next.collection)));
            if let Some(after) = next.after {
                path.push_str(&format!("&after={after}"));
            }
        }
        self.get_retried(&path).await
    }

    /// The path of `endpoint` (with its query) of the configured database, in this
    /// protocol version.
    fn endpoint(&self, endpoint: &str) -> String {
        format!(
            "/v{PROTOCOL_VERSION}/db/{}/{endpoint}",
            encode(&self.shared.config.database)
        )
    }

    /// A GET with retries (see [`Replicator::retry`]).
    async fn get_retried<T: crate::wire::Message>(&self, path: &str) -> SyncResult<T> {
        self.retry(|| {
            self.request(Request {
                method: Method::Get,
                path: path.to_owned(),
                body: None,
            })
        })
        .await
    }

    /// Applies one bootstrap page and saves the position after it in one local transaction;
    /// the last page also sweeps, ends the bootstrap and sets the cursor. Returns the
    /// entities applied.
    async fn apply_bootstrap_page(&self, resp: &BootstrapResponse) -> SyncResult<u64> {
        let mut applied = 0;
        let mut tx = self.begin().await?;
        let mut state = read_state(&mut tx).await?;
        let epoch = state.epoch + 1;
        let fresh = match &state.bootstrap {
            Some(b) => b.fresh && b.collections == self.shared.config.collections,
            // The first page: look before anything is applied.
            None => self.synced_collections_empty(&mut tx).await?,
        };
        let captured = self.capture_into(&mut tx, &mut state).await?;
        for e in &resp.entities {
            if !self.synced(&e.collection) {
                continue;
            }
            let at = self.shared.meta.locate(&e.collection, &e.id);
            let mut meta: Meta = if fresh && state.blind_bootstrap() {
                Meta::default()
            } else {
                Meta::load(&mut tx, &at).await?
            };
            meta.epoch = epoch;
            if meta.pending == 0 && meta.version.is_none_or(|v| v < e.version) {
                apply(&mut tx, &e.collection, e.id, Some(&e.doc)).await?;
                meta.version = Some(e.version);
                applied += 1;
            }
            meta.write(&mut tx, &at)?;
        }
        // The page's versions are at most its cursor.
        state.raise_versions_upto(resp.cursor);
        let start_cursor = state
            .bootstrap
            .as_ref()
            .map_or(resp.cursor, |b| b.start_cursor);
        let received = resp.entities.len() as u64;
        self.set_status(|s| {
            let p = s.bootstrap.get_or_insert_with(Progress::default);
            p.done += received;
            if resp.total.is_some() {
                p.total = resp.total;
            }
        });
        let done = resp.next.is_none();
        if done {
            if !fresh {
                self.sweep(&mut tx, epoch, start_cursor).await?;
            }
            state.bootstrap = None;
            state.bootstrapped = true;
            state.epoch = epoch;
            state.cursor = start_cursor;
        } else {
            state.bootstrap = Some(BootstrapProgress {
                start_cursor,
                next: resp.next.clone(),
                fresh,
                collections: self.shared.config.collections.clone(),
            });
        }
        self.commit_with(tx, &mut state, captured).await?;
        if done {
            self.set_status(|s| {
                s.cursor = start_cursor;
                s.bootstrap = None;
            });
        }
        Ok(applied)
    }

    /// Whether every synced collection is empty (or missing) in `tx`.
    async fn synced_collections_empty(&self, tx: &mut WriteTxn) -> SyncResult<bool> {
        for coll in &self.shared.config.collections {
            let page = tx.collection(coll).scan(ScanOptions::limit(1)).await?;
            if !page.items.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deletes local entities of synced collections that the finished bootstrap did not
    /// return and that came from the server, unless they have pending ops (those are the client's own unsent writes) or a
    /// server version above the bootstrap's start cursor: a push answered while the
    /// bootstrap ran, after it had read past the entity's collection. The pull that follows
    /// the bootstrap starts at that cursor and brings such an entity's later changes (its
    /// deletion too); deleting it here would show the app its own acknowledged write gone
    /// until then, and a write made meanwhile would be based on nothing (the simulation's
    /// overwrite check found this, seed 471).
    async fn sweep(&self, tx: &mut WriteTxn, epoch: u64, start_cursor: u64) -> SyncResult<()> {
        for coll in self.shared.config.collections.clone() {
            let mut after = None;
            loop {
                let mut opts = ScanOptions::limit(1000);
                opts.after = after;
                let page = tx.collection(&coll).scan(opts).await?;
                for doc in &page.items {
                    let at = self.shared.meta.locate(&coll, &doc.id());
                    let meta = Meta::load(tx, &at).await?;
                    let newer = meta.version.is_some_and(|v| v > start_cursor);
                    // Only an entity the server gave a version (pulled, bootstrapped or
                    // acknowledged) can have been deleted there. One without is local
                    // data sync never took: written before the first attach, or before
                    // its collection was synced. It stays (the sweep deleted it, and its
                    // deletion was never captured either).
                    let from_server = meta.version.is_some();
                    if from_server && meta.epoch != epoch && meta.pending == 0 && !newer {
                        tx.collection(&coll).delete(doc.id()).await?;
                        tx.collection(&at.0).delete(at.1).await?;
                    }
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// One full round: capture, push everything, pull everything. Network errors and 5xx
    /// are retried with backoff; the error is returned after `max_attempts`.
    pub async fn sync_now(&self) -> SyncResult<SyncReport> {
        self.round(None).await
    }

    /// Like [`Replicator::sync_now`], but the pull waits up to `wait` on the server for new
    /// changes when there are none (long poll), so a loop of `sync_wait` is live replication
    /// without polling on a timer. A wait over [`MAX_WAIT`] (60 s) asks for 60 s; the
    /// server may wait less (its `max_wait_ms`).
    pub async fn sync_wait(&self, wait: Duration) -> SyncResult<SyncReport> {
        self.round(Some(wait)).await
    }

    async fn round(&self, wait: Option<Duration>) -> SyncResult<SyncReport> {
        let _run = self.shared.run.lock().await;
        let result = async {
            let before = self.load_state().await?.next_op_id;
            // The push asks for the page after the client's cursor (one exchange).
            let mut push = match self.push_locked(true).await {
                Ok(p) => p,
                // The server refused an op for good (403: a synced collection the token may
                // only read; 400; 413: one op over its limits): the ops from it on wait,
                // and the round still pulls, so that the others' changes keep arriving
                // (entities with pending ops are not overwritten). The error is the round's.
                Err(
                    e @ SyncError::Server {
                        status: 400 | 403 | 413,
                        ..
                    },
                ) => {
                    let _ = self.pull_locked(None).await;
                    return Err(e);
                }
                // The cursor is ahead of the server (its database was restored or created
                // again; nothing was stored): bootstrap again, then push without a page.
                Err(SyncError::Server { body, .. }) if body.code == ErrorCode::Rebootstrap => {
                    self.bootstrap_again().await?;
                    self.push_locked(true).await?
                }
                Err(e) => return Err(e),
            };
            let mut bootstrapped = false;
            // The push's page reached the end of the oplog: nothing is left to pull, unless
            // this is a live round whose push brought nothing new from the others, which
            // then waits on the server as a round without a push would.
            let pulled_enough = push.caught_up && (wait.is_none() || push.pulled > 0);
            if !pulled_enough {
                let (pulled, b, woken) = self.pull_locked(wait).await?;
                push.pulled += pulled;
                bootstrapped |= b;
                // Whether the round's last step was a pull (see the push after it).
                let mut pulled_last = true;
                if woken {
                    // The long poll gave way to a local write: push it now (asking for the
                    // page, as above), then pull without waiting unless that page reached
                    // the end, so that a client that writes more often than a round trip
                    // still receives the others' changes every round.
                    let again = self.push_locked(true).await?;
                    let caught_up = again.caught_up;
                    push.add(again);
                    if caught_up {
                        pulled_last = false;
                    } else {
                        let (applied, b, _) = self.pull_locked(None).await?;
                        push.pulled += applied;
                        bootstrapped |= b;
                    }
                }
                // A write made during the pull is pushed now rather than at the next round.
                // (Without a pull, the push's last acknowledgement captured what was written
                // during the exchange, and the push sent it before returning.)
                if pulled_last {
                    push.add(self.push_locked(false).await?);
                }
            }
            let after = self.load_state().await?.next_op_id;
            Ok::<_, SyncError>(SyncReport {
                captured: after - before,
                pushed: push.acked,
                rejected: push.rejected,
                pulled: push.pulled,
                bootstrapped,
            })
        }
        .await;
        match &result {
            Ok(_) => {
                // The backend's clock: std's wall clock does not exist on wasm32.
                let now = self.shared.db.backend().clock().now_millis();
                self.set_status(|s| {
                    s.last_sync_millis = Some(now);
                    s.last_error = None;
                });
            }
            Err(e) => {
                let msg = e.to_string();
                self.set_status(|s| s.last_error = Some(msg));
            }
        }
        result
    }
}

/// Which changes of a page that came with a push's answer write their metadata without
/// reading it, once the answer is recorded in the same transaction.
///
/// [`State::blind_pull`] after the answer would read every change at or below the push's
/// cursor, which in a busy database is every other client's change in the page (they were
/// committed before the push). But the answer only gave versions to its own ops' entities:
/// every other entity's metadata holds a version from an earlier answer or bootstrap page
/// (at most the bound as it was before this answer raised it) or from a pull (at most the
/// cursor, which the page's changes are above). So a change above the earlier bound, to an
/// entity the answer did not name, with no op pending after the answer, finds no metadata
/// that could hold it back, as in [`State::blind_pull`].
///
/// This relies on every earlier batch's acknowledgement having committed (and raised the
/// bound) before this one's transaction reads the state: `push_locked` checks each
/// acknowledgement (`ack?`) before it goes on, so an answer's acknowledgement never runs
/// beside an earlier one's. A change to the pipelining must keep that.
struct AfterAnswer<'a> {
    /// `State::versions_upto` before the answer raised it.
    upto: Option<u64>,
    /// The answered ops' entities, by collection and id.
    entities: HashSet<(&'a str, EntityId)>,
}

impl AfterAnswer<'_> {
    fn blind_pull(&self, state: &State, cursor: u64, collection: &str, id: EntityId) -> bool {
        state.pending() == 0
            && self.upto.is_some_and(|upto| cursor > upto)
            && !self.entities.contains(&(collection, id))
    }
}

/// What a push did: ops acknowledged and rejected, and the page it pulled on the way.
#[derive(Debug, Default)]
struct PushOutcome {
    /// Ops answered other than `rejected`.
    acked: u64,
    /// The entities of ops answered `rejected`.
    rejected: Vec<(String, EntityId)>,
    /// Changes applied from the page the push asked for.
    pulled: u64,
    /// A page was applied and it reached the end of the server's oplog (`has_more` false).
    caught_up: bool,
}

impl PushOutcome {
    fn add(&mut self, other: PushOutcome) {
        self.acked += other.acked;
        self.rejected.extend(other.rejected);
        self.pulled += other.pulled;
        self.caught_up |= other.caught_up;
    }
}

/// Store `state` and commit. The commit's own change-feed record carries this replicator's
/// origin, which capture skips anyway. It is the next sequence after the transaction's read
/// sequence (the transaction holds the single writer), so when `state` has captured
/// everything up to the read sequence it steps over that record now, and the next capture
/// neither pages through nor decodes it (a push's acknowledgement writes 2 records per op).
async fn commit_state(mut tx: WriteTxn, state: &mut State) -> SyncResult<()> {
    let read = tx.read_sequence();
    if state.feed_seq == read {
        state.feed_seq = read + 1;
    }
    tx.collection(STATE).put(EntityId::MIN, &*state)?;
    if tx.feed_hold(ORIGIN) != Some(state.feed_seq) {
        hold_capture_position(&mut tx, state)?;
    }
    let seq = tx.commit().await?;
    debug_assert!(
        state.feed_seq != read + 1 || seq == read + 1,
        "the commit's record is the one stepped over"
    );
    Ok(())
}

/// Moves the replicator's change-feed hold (named [`ORIGIN`]) to the stored capture position,
/// in the transaction that stores it: the local database then retains every record capture
/// has not taken yet, however long the replicator is away and whatever the database's
/// `feed_retention` says, so no local write is ever left out of the outbox. Returns whether
/// the hold was set: not if the feed already dropped the position (a database from a build
/// without holds that fell behind its retention; capture reports that).
fn hold_capture_position(tx: &mut WriteTxn, state: &State) -> SyncResult<bool> {
    match tx.hold_feed(ORIGIN, state.feed_seq) {
        Ok(()) => Ok(true),
        Err(entidb::Error::FeedTruncated { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether capture takes a change into the outbox: an entity's put or delete (collection
/// events and superseded values are not ops).
fn is_op(change: &entidb::Change) -> bool {
    change.id.is_some()
        && matches!(
            change.op,
            entidb::ChangeOp::Put(_) | entidb::ChangeOp::Delete
        )
}

async fn read_state(tx: &mut WriteTxn) -> SyncResult<State> {
    tx.collection(STATE)
        .get(EntityId::MIN)
        .await?
        .ok_or_else(|| SyncError::Protocol("sync state is missing".into()))
}

async fn apply(
    tx: &mut WriteTxn,
    collection: &str,
    id: EntityId,
    doc: Option<&Canonical>,
) -> SyncResult<()> {
    match doc {
        Some(doc) => tx.collection(collection).put_canonical(id, doc)?,
        None => {
            tx.collection(collection).delete(id).await?;
        }
    }
    Ok(())
}

/// A uniformly random fraction in [0, 1) for retry jitter, from 53 of `random`'s bits.
fn jitter_fraction(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// Advances the hybrid logical clock to at least `physical` and returns a new stamp.
fn tick(state: &mut State, physical: u64) -> Hlc {
    if physical > state.hlc_millis {
        state.hlc_millis = physical;
        state.hlc_counter = 0;
    } else {
        state.hlc_counter = state.hlc_counter.saturating_add(1);
    }
    Hlc {
        millis: state.hlc_millis,
        counter: state.hlc_counter,
        node: state.client_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use entidb::cbor::{Value, encode};

    #[test]
    fn an_outbox_entry_written_before_canonical_documents_reads() {
        let doc = Value::map([("text", Value::from("hi"))]);
        let hlc = Value::map([
            ("millis", Value::from(1)),
            ("counter", Value::from(0)),
            ("node", Value::from("c")),
        ]);
        let entry = |doc: Value| {
            encode(&Value::map([
                ("op_id", Value::from(7)),
                ("collection", Value::from("notes")),
                ("id", Value::Bytes(vec![1; 16])),
                ("kind", Value::from("put")),
                ("doc", doc),
                ("hlc", hlc.clone()),
            ]))
        };
        // Then: the document in place. Now: tag 24 over its encoding.
        let old: OutboxEntry = entidb::cbor::from_slice(&entry(doc.clone())).unwrap();
        let new: OutboxEntry =
            entidb::cbor::from_slice(&entry(Value::Tag(24, Box::new(Value::Bytes(encode(&doc))))))
                .unwrap();
        assert_eq!(old.doc.as_ref().unwrap().to_value().unwrap(), doc);
        assert_eq!(old.doc, new.doc);
        assert_eq!(
            entidb::cbor::to_canonical_vec(&new).unwrap(),
            entry(Value::Tag(24, Box::new(Value::Bytes(encode(&doc)))))
        );
    }

    #[test]
    fn stored_state_and_outbox_entries_are_declared_in_canonical_order() {
        let entry = OutboxEntry {
            id: EntityId::from_bytes([1; 16]),
            doc: Some(Canonical::from_value(&Value::map([("a", 1)])).unwrap()),
            hlc: Hlc {
                node: "n".into(),
                millis: 1,
                counter: 2,
            },
            base: Some((Some(4),)),
            kind: OpKind::Put,
            op_id: 3,
            collection: "c".into(),
        };
        let mut raw = Vec::new();
        ciborium::ser::into_writer(&entry, &mut raw).unwrap();
        assert!(entidb::cbor::is_canonical(&raw));
        // A known base of "no version" (null) reads back as known, unlike a missing base.
        for base in [Some((None,)), Some((Some(4),)), None] {
            let e = OutboxEntry {
                base,
                ..entry.clone()
            };
            let bytes = entidb::cbor::to_canonical_vec(&e).unwrap();
            let back: OutboxEntry = entidb::cbor::from_slice(&bytes).unwrap();
            assert_eq!(back.base, base);
        }
        let state = State {
            epoch: 1,
            cursor: 2,
            feed_seq: 3,
            instance: Some("0123456789abcdef0123456789abcdef".into()),
            bootstrap: Some(BootstrapProgress {
                next: Some(BootstrapPosition {
                    after: Some(EntityId::from_bytes([2; 16])),
                    collection: "c".into(),
                }),
                fresh: true,
                collections: vec!["c".into()],
                start_cursor: 4,
            }),
            client_id: "c".into(),
            collections: Some(vec!["c".into()]),
            hlc_millis: 5,
            next_op_id: 6,
            acked_op_id: 8,
            hlc_counter: 9,
            meta_layout: META_LAYOUT_PER_COLLECTION,
            bootstrapped: true,
            versions_upto: Some(10),
        };
        let mut raw = Vec::new();
        ciborium::ser::into_writer(&state, &mut raw).unwrap();
        assert!(entidb::cbor::is_canonical(&raw));
    }

    #[test]
    fn metadata_is_a_canonical_array_and_the_old_map_still_reads() {
        // Every width of CBOR integer, at both ends.
        let widths = [
            0,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            1 << 32,
            u64::MAX,
        ];
        let mut metas = vec![Meta::default()];
        for (i, &v) in widths.iter().enumerate() {
            metas.push(Meta {
                version: Some(v),
                pending: u32::try_from(widths[(i + 3) % widths.len()]).unwrap_or(u32::MAX),
                epoch: widths[(i + 7) % widths.len()],
            });
        }
        for meta in metas {
            let (buf, n) = meta.stored();
            let bytes = buf[..n].to_vec();
            entidb::cbor::validate_canonical(&bytes).unwrap();
            assert_eq!(Meta::decode(&bytes).unwrap(), meta);
            // The same bytes as serde writes for the tuple (the form since 2026-12-06).
            let tuple = (meta.version, meta.pending, meta.epoch);
            assert_eq!(entidb::cbor::to_canonical_vec(&tuple).unwrap(), bytes);
        }
        let (buf, n) = Meta::default().stored();
        assert_eq!(buf[..n], [0x83, 0xf6, 0x00, 0x00]);
        let old = encode(&Value::map([
            ("version", Value::from(7)),
            ("pending", Value::from(1)),
            ("epoch", Value::from(2)),
        ]));
        let expected = Meta {
            version: Some(7),
            pending: 1,
            epoch: 2,
        };
        assert_eq!(Meta::decode(&old).unwrap(), expected);
        assert!(Meta::decode(&[0x83, 0x01]).is_err());
    }

    /// Databases with the first layout hold metadata under this formula: it must not change.
    #[test]
    fn the_hashed_layout_keeps_its_formula() {
        let key = hashed_meta_id("notes", &EntityId::from_bytes([1; 16]));
        assert_eq!(
            key.as_bytes().map(|b| format!("{b:02x}")).concat(),
            "7b8e44e76807ba575f11d92bc3900101"
        );
    }

    #[tokio::test]
    async fn metadata_collections_fit_the_engines_name_limit() {
        assert_eq!(meta_collection("notes"), "_sync.meta/notes");
        let fits = "n".repeat(entidb::MAX_COLLECTION_NAME_BYTES - META.len() - 1);
        assert_eq!(meta_collection(&fits), format!("{META}/{fits}"));
        let long = "n".repeat(entidb::MAX_COLLECTION_NAME_BYTES);
        let longer = format!("{long}x");
        let (a, b) = (meta_collection(&long), meta_collection(&longer));
        assert!(
            a.starts_with("_sync.meta#") && a.len() == META.len() + 1 + 32,
            "{a}"
        );
        assert_ne!(a, b);
        // The engine takes each of them as a collection name.
        let db = Database::memory().await.unwrap();
        for name in [meta_collection(&fits), a] {
            db.collection(&name)
                .put_value(EntityId::MIN, &entidb::cbor::Value::from(1u64))
                .await
                .unwrap();
        }
    }

    #[test]
    fn blind_metadata_writes_need_known_bounds_and_an_empty_outbox() {
        let mut s = State {
            next_op_id: 1,
            versions_upto: Some(20),
            ..State::default()
        };
        assert!(s.blind_pull(21) && !s.blind_pull(20) && !s.blind_pull(15));
        assert!(s.blind_bootstrap());
        s.next_op_id = 2; // op 1 waits in the outbox
        assert_eq!(s.pending(), 1);
        assert!(!s.blind_pull(21) && !s.blind_bootstrap());
        s.acked_op_id = 1;
        assert!(s.blind_pull(21) && s.blind_bootstrap());
        s.versions_upto = None;
        assert!(!s.blind_pull(21) && s.blind_bootstrap());
        s.raise_versions_upto(5);
        s.raise_versions_upto(3);
        assert_eq!(s.versions_upto, Some(5));
    }
}
