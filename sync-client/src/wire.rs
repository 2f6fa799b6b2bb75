//! The sync protocol's wire types: the one definition that the server and every client use.
//!
//! `docs/sync-protocol.md` describes each message, field, status and error code; the files in
//! `docs/sync-vectors/` are example messages that the tests of both sides decode and re-encode.
//!
//! Every body is CBOR (`application/cbor`) or JSON (`application/json`), chosen by the
//! request's `Content-Type` and the response's `Accept`. Collections are named by string,
//! entities by their 16-byte id (a CBOR byte string, or a UUID string in JSON). Documents are
//! [`Canonical`] CBOR: in a CBOR body, tag 24 ("encoded CBOR data item") over a byte string
//! that holds the document's encoding, so that neither side builds the document's value to
//! pass it on; in JSON, the JSON rendering of the value (byte strings, tags and simple values
//! have no faithful JSON form, so use CBOR for documents that hold them).
//!
//! Struct fields are declared in canonical CBOR key order (shorter names first, then
//! bytewise), so that serde writes each message canonically as it goes and encoding it needs
//! no reordering pass (`entidb::cbor::to_canonical_vec` only checks). JSON shows the same
//! order. A test (`fields_are_declared_in_canonical_order`) keeps it so.

use entidb::EntityId;
use entidb::cbor::Canonical;
use serde::{Deserialize, Serialize};

mod fast;

/// The protocol version in every path (`/v2/...`).
///
/// Version 2 carries documents as tag 24 over their encoding in CBOR bodies (version 1 had
/// them in place). A version 2 server answers every `/v1/` path with 404 `not_found` and a
/// message that says to upgrade: an old peer fails loudly instead of storing the wrapper as
/// its document.
pub const PROTOCOL_VERSION: u32 = 2;

/// Media type of CBOR bodies.
pub const CBOR: &str = "application/cbor";
/// Media type of JSON bodies.
pub const JSON: &str = "application/json";

/// Prefix of collection names that the sync layer reserves for its own state (outbox, cursor,
/// dedupe records, conflict log). Clients cannot push to, pull or bootstrap these.
pub const RESERVED_PREFIX: &str = "_sync";

/// Whether a collection name is reserved for the sync layer.
pub fn is_reserved(collection: &str) -> bool {
    collection.starts_with(RESERVED_PREFIX)
}

/// A hybrid logical clock stamp: wall-clock milliseconds, a counter that orders stamps within
/// one millisecond, and the node (client id) that made it. Stamps order by all three, so two
/// different nodes never produce equal stamps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hlc {
    /// The client id that made the stamp.
    pub node: String,
    /// Milliseconds since the Unix epoch.
    pub millis: u64,
    /// Orders stamps with equal `millis`.
    pub counter: u32,
}

/// By `millis`, then `counter`, then `node` (not in declaration order: see the module note).
impl Ord for Hlc {
    fn cmp(&self, other: &Hlc) -> std::cmp::Ordering {
        (self.millis, self.counter, &self.node).cmp(&(other.millis, other.counter, &other.node))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Hlc) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What an operation does to its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Write the whole document.
    Put,
    /// Delete the entity.
    Delete,
}

/// One client write, as pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Op {
    /// Entity id.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: EntityId,
    /// The new document (puts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub doc: Option<Canonical>,
    /// When the client made the write.
    pub hlc: Hlc,
    /// Put or delete.
    pub kind: OpKind,
    /// Strictly increasing per client; with the client id it makes the op idempotent.
    pub op_id: u64,
    /// Collection name.
    pub collection: String,
    /// The server version of the entity that this write was based on (`None`: the client had
    /// never seen the entity on the server). After an earlier op of the client on the entity
    /// was answered `merged`, `duplicate` or `rejected` while this one was pending, this is
    /// the version the client saw before that op: the server does not count the client's
    /// own latest (unmerged) write as a conflict, and merges from it.
    #[serde(default)]
    pub base_version: Option<u64>,
}

/// `POST /v2/db/{db}/push`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushRequest {
    /// In op id order. Applied atomically: all results are durable together.
    pub ops: Vec<Op>,
    /// This installation of the client (1-64 of `A-Z a-z 0-9 - _`; `docs/sync-protocol.md`
    /// §5.1): the server dedupes op ids, and tells its writes apart, per (client id,
    /// instance). A reinstall, or two devices given the same client id, each number their
    /// ops from 1, and without it the later one's ops were taken for retries of the
    /// earlier one's (answered `duplicate`, dropped). Absent: the client id alone (clients
    /// from before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Must equal the token's `sub` claim.
    pub client_id: String,
}

/// What happened to one pushed op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// The op was applied as pushed; `state.version` is the entity's new version and
    /// `state.doc` is omitted (the client has the document).
    Applied,
    /// The op was merged with concurrent changes (field merge); `state` is the merged entity,
    /// which the client adopts unless a later op on the entity is pending.
    Merged,
    /// The op was processed by an earlier push (a retry); `state` is the entity now (which
    /// may include other clients' later writes), adopted unless a later op is pending.
    Duplicate,
    /// The op lost a conflict and was not applied (it is in the conflict log); `state` is the
    /// winner, adopted unless a later op on the entity is pending.
    Rejected,
}

/// An entity's state on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntityState {
    /// Its document (`None`: absent or deleted; always `None` for an `applied` op).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub doc: Option<Canonical>,
    /// Its server version (`None`: it never existed).
    pub version: Option<u64>,
}

/// The answer to one op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpResult {
    /// The op's id.
    pub op_id: u64,
    /// The entity's state after the push.
    pub state: EntityState,
    /// Applied, duplicate or rejected.
    pub status: OpStatus,
}

/// The answer to a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushResponse {
    /// The page of changes after the request's `since`, read after the push committed, when
    /// the push asked for one (`POST .../push?since=C&limit=N`): the same page a pull with
    /// that `since` and `limit` would return then, so that one exchange both pushes and
    /// pulls. Absent when the push did not ask, or when `since` is behind the retained
    /// oplog (a pull then answers `rebootstrap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullResponse>,
    /// The oplog cursor after the push (the push's own cursor if it wrote anything).
    pub cursor: u64,
    /// One result per op, in request order.
    pub results: Vec<OpResult>,
}

/// One change in the oplog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WireChange {
    /// Entity id.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: EntityId,
    /// The document (puts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub doc: Option<Canonical>,
    /// Put or delete.
    pub kind: OpKind,
    /// The change's oplog cursor; it is also the entity's new server version. Changes made by
    /// one push share a cursor.
    pub cursor: u64,
    /// The client id that pushed it (`None`: written on the server).
    #[serde(default)]
    pub origin: Option<String>,
    /// Collection name.
    pub collection: String,
}

/// `GET /v2/db/{db}/pull?since=C&limit=N&wait_ms=W`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullResponse {
    /// Where the next pull starts (`since` of the next request). It can be greater than the
    /// last change's cursor when the page ended with changes the client cannot see.
    pub cursor: u64,
    /// Changes with cursor > `since`, in cursor order, in the collections the token may read.
    pub changes: Vec<WireChange>,
    /// Whether more changes are waiting (pull again without waiting).
    pub has_more: bool,
}

/// One entity in a bootstrap page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootstrapEntity {
    /// Entity id.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: EntityId,
    /// The document.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub doc: Canonical,
    /// Server version.
    pub version: u64,
    /// Collection name.
    pub collection: String,
}

/// Where a bootstrap page continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootstrapPosition {
    /// The last id returned in it (`None`: start of the collection).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub after: Option<EntityId>,
    /// The collection being read.
    pub collection: String,
}

/// `GET /v2/db/{db}/bootstrap?collection=C&after=ID&limit=N`: the current state, paged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootstrapResponse {
    /// Where the next page starts; `None` on the last page.
    pub next: Option<BootstrapPosition>,
    /// On the first page only (no `collection`/`after` given): the number of entities in the
    /// requested collections at this page's cursor, for progress. Counting is a scan, so
    /// later pages omit it.
    #[serde(default)]
    pub total: Option<u64>,
    /// The oplog cursor this page was read at. A client pulls from the cursor of its FIRST
    /// page once it has all pages: later pages may already include some of the changes that
    /// pull replays, which converges to the same state.
    pub cursor: u64,
    /// Entities in (collection, id) order.
    pub entities: Vec<BootstrapEntity>,
}

/// A conflict policy of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The server's current version wins; the client's write is logged and not applied.
    #[default]
    ServerWins,
    /// The client's write wins; the server's version it replaced is logged.
    ClientWins,
    /// The write with the later hybrid logical clock stamp wins.
    LastWriterWins,
    /// Maps: top-level fields changed on only one side (relative to the version the client
    /// based its write on) both survive; a field changed on both sides follows
    /// last-writer-wins. Non-map documents, deletes, and writes whose base version the server
    /// no longer keeps follow last-writer-wins as a whole.
    FieldMerge,
}

/// One entry of the conflict log (`GET /v2/db/{db}/conflicts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConflictRecord {
    /// The entity.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: EntityId,
    /// The version that lost (`None` for a delete or an absent entity).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub loser: Option<Canonical>,
    /// The op id of that push's op.
    pub op_id: u64,
    /// The policy that decided.
    pub policy: ConflictPolicy,
    /// The entity's server version after the push.
    pub version: Option<u64>,
    /// Server time of the decision, milliseconds since the Unix epoch.
    pub at_millis: u64,
    /// The client whose push caused the conflict.
    pub client_id: String,
    /// Collection of the entity.
    pub collection: String,
    /// The record's own id (time-ordered; page with `after`).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub conflict_id: EntityId,
    /// Who wrote the loser (`None`: the server state's writer is unknown).
    pub loser_client: Option<String>,
}

/// `GET /v2/db/{db}/conflicts?after=ID&limit=N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConflictsResponse {
    /// Pass as `after` for the next page; `None` when this page is the last.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub next: Option<EntityId>,
    /// Oldest first.
    pub conflicts: Vec<ConflictRecord>,
}

/// A hosted database (`GET /v2/admin/databases`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatabaseInfo {
    /// Its name.
    pub name: String,
    /// Its latest oplog cursor.
    pub cursor: u64,
}

/// `GET /v2/admin/databases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatabaseList {
    /// In name order.
    pub databases: Vec<DatabaseInfo>,
}

/// `POST /v2/admin/databases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDatabase {
    /// 1-64 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"))]
    pub name: String,
}

/// Stable error codes of error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 401: no token, a malformed token, a bad signature, an unknown key id, or an expired one.
    Unauthorized,
    /// 403: a valid token that does not allow this (database, client id or scope).
    Forbidden,
    /// 404: no such database (or route).
    NotFound,
    /// 405: the route exists, not with this method (the `Allow` header lists its methods).
    MethodNotAllowed,
    /// 409: the database exists already.
    AlreadyExists,
    /// 400: a request that is well-formed but invalid (bad name, reserved collection, ...).
    BadRequest,
    /// 400: the body is not valid CBOR/JSON of the expected shape.
    MalformedBody,
    /// 415: a Content-Type other than CBOR or JSON.
    UnsupportedMediaType,
    /// 406: the answer holds a document with no JSON form (a map key that is not text, an
    /// `undefined` or other simple value); ask for CBOR.
    NotAcceptable,
    /// 413: the body is larger than the server's limit.
    PayloadTooLarge,
    /// 400: more ops in one push than the server's limit.
    TooManyOps,
    /// 410: the oplog no longer holds the requested cursor; bootstrap again.
    Rebootstrap,
    /// 503: the server is shutting down or the database is unavailable.
    Unavailable,
    /// 500: a server fault (see the server log).
    Internal,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// For `rebootstrap`: the oldest cursor the server still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_cursor: Option<u64>,
}

/// Claims of a bearer token (JWT, HS256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claims {
    /// The client id.
    pub sub: String,
    /// The database the token is for (`*`: any).
    pub db: String,
    /// Scopes: `read`, `write`, `read:COLLECTION`, `write:COLLECTION`, `admin`.
    pub scope: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
}

impl Claims {
    /// Whether the token may read `collection`.
    pub fn can_read(&self, collection: &str) -> bool {
        self.has("read", collection) || self.has("write", collection)
    }

    /// Whether the token may write `collection`.
    pub fn can_write(&self, collection: &str) -> bool {
        self.has("write", collection)
    }

    /// Whether the token may read some collection: a `read` or `write` scope, for all
    /// collections or for one (`read:C`, `write:C`). Endpoints that hand out data or the
    /// oplog's position (pull, events, bootstrap, conflicts) need it.
    pub fn may_read_some(&self) -> bool {
        self.scope.iter().any(|s| {
            ["read", "write"]
                .iter()
                .any(|v| s == v || s.strip_prefix(v).is_some_and(|r| r.starts_with(':')))
        })
    }

    /// Whether the token may write some collection (`write` or `write:C`): a push needs it,
    /// even one with no ops.
    pub fn may_write_some(&self) -> bool {
        self.scope
            .iter()
            .any(|s| s == "write" || s.strip_prefix("write").is_some_and(|r| r.starts_with(':')))
    }

    /// Whether the token may administer databases.
    pub fn is_admin(&self) -> bool {
        self.scope.iter().any(|s| s == "admin")
    }

    /// Whether the token is for database `db`.
    pub fn allows_db(&self, db: &str) -> bool {
        self.db == "*" || self.db == db
    }

    fn has(&self, verb: &str, collection: &str) -> bool {
        self.scope.iter().any(|s| {
            s == verb
                || s.strip_prefix(verb)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|c| c == collection)
        })
    }
}

/// A body that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Not valid CBOR of the expected shape.
    #[error("malformed CBOR body: {0}")]
    Cbor(String),
    /// Not valid JSON of the expected shape.
    #[error("malformed JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// Neither CBOR nor JSON.
    #[error("unsupported media type {0:?}: use application/cbor or application/json")]
    MediaType(String),
}

/// The body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/cbor`.
    Cbor,
    /// `application/json`.
    Json,
}

impl Format {
    /// The format of a `Content-Type` header value: its media type, without parameters,
    /// in any case. Anything else is an error (the server answers a body without the header
    /// 415 too).
    pub fn from_content_type(value: &str) -> Result<Format, CodecError> {
        let essence = value.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            CBOR => Ok(Format::Cbor),
            JSON => Ok(Format::Json),
            other => Err(CodecError::MediaType(other.to_owned())),
        }
    }

    /// The format an `Accept` header asks for (RFC 9110 §12.5.1): CBOR when it names
    /// `application/cbor` with a weight above 0 and at least that of JSON
    /// (`application/json`, `application/*` or `*/*`); JSON otherwise, and without the
    /// header. (`application/cbor-seq` is not `application/cbor`, and `;q=0` refuses.)
    pub fn from_accept(value: Option<&str>) -> Format {
        let Some(value) = value else {
            return Format::Json;
        };
        let (mut cbor, mut json) = (0.0f32, 0.0f32);
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                CBOR => cbor = cbor.max(q),
                JSON | "application/*" | "*/*" => json = json.max(q),
                _ => {}
            }
        }
        if cbor > 0.0 && cbor >= json {
            Format::Cbor
        } else {
            Format::Json
        }
    }

    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Cbor => CBOR,
            Format::Json => JSON,
        }
    }

    /// Encodes a message.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Format::Cbor => {
                entidb::cbor::to_canonical_vec(value).map_err(|e| CodecError::Cbor(e.to_string()))
            }
            Format::Json => Ok(serde_json::to_vec(value)?),
        }
    }

    /// Decodes a message; untrusted input gets a [`CodecError`], never a panic. CBOR goes
    /// through [`Message::from_cbor`].
    pub fn decode<T: Message>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Format::Cbor => T::from_cbor(bytes),
            Format::Json => Ok(serde_json::from_slice(bytes)?),
        }
    }
}

/// A message body: what [`Format::decode`] reads.
///
/// The messages that carry bulk data ([`PullResponse`], [`BootstrapResponse`],
/// [`PushRequest`], [`PushResponse`]) are read from CBOR in one pass when they have the plain
/// shape that [`Format::encode`] writes, checking each document once; any other body
/// (indefinite lengths, unknown fields, a malformed one) goes through serde as every other
/// message does, so the result, or the error, is the same either way.
pub trait Message: serde::de::DeserializeOwned {
    /// Decodes one from a CBOR body: exactly one well-formed, valid item of this shape.
    fn from_cbor(bytes: &[u8]) -> Result<Self, CodecError> {
        from_serde(bytes)
    }
}

/// The serde path: the whole body validated, then read by `ciborium`.
fn from_serde<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    entidb::cbor::from_slice(bytes).map_err(|e| CodecError::Cbor(e.to_string()))
}

/// Messages with a one-pass reader: it is tried first, and serde reads what it does not take.
macro_rules! fast_message {
    ($($ty:ident => $reader:path,)*) => {$(
        impl Message for $ty {
            fn from_cbor(bytes: &[u8]) -> Result<Self, CodecError> {
                $reader(bytes).map_or_else(|| from_serde(bytes), Ok)
            }
        }
    )*};
}

fast_message! {
    PullResponse => fast::pull_response,
    BootstrapResponse => fast::bootstrap_response,
    PushRequest => fast::push_request,
    PushResponse => fast::push_response,
}

/// The one-pass readers alone, for the fuzz target (`fuzz/fuzz_targets/wire_decode.rs`) to
/// hold against serde: `None` means the body is not in the plain shape they take (and
/// [`Message::from_cbor`] then asks serde). Not part of the API.
#[doc(hidden)]
pub mod fast_readers {
    pub use super::fast::{bootstrap_response, pull_response, push_request, push_response};
}

// Every other wire type is read by serde alone.
impl Message for ConflictsResponse {}
impl Message for ConflictRecord {}
impl Message for DatabaseInfo {}
impl Message for DatabaseList {}
impl Message for CreateDatabase {}
impl Message for ErrorBody {}
impl Message for Claims {}
impl Message for Hlc {}
impl Message for Op {}
impl Message for EntityState {}
impl Message for OpResult {}
impl Message for WireChange {}
impl Message for BootstrapEntity {}
impl Message for BootstrapPosition {}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_headers_are_read_with_their_weights() {
        use super::Format::{Cbor, Json};
        for (accept, want) in [
            (None, Json),
            (Some("application/cbor"), Cbor),
            (Some("Application/CBOR"), Cbor),
            (Some("application/json, application/cbor"), Cbor),
            (Some("application/json, application/cbor;q=0"), Json),
            (Some("application/cbor;q=0.5, application/json"), Json),
            (Some("application/cbor;q=0.9, */*;q=0.1"), Cbor),
            (Some("application/cbor-seq"), Json),
            (Some("text/html, application/cbor ; q=1"), Cbor),
            (Some("*/*"), Json),
        ] {
            assert_eq!(super::Format::from_accept(accept), want, "{accept:?}");
        }
    }

    use super::*;

    #[test]
    fn scopes() {
        let c = Claims {
            sub: "c".into(),
            db: "app".into(),
            scope: vec!["read".into(), "write:notes".into()],
            exp: 0,
            iat: 0,
        };
        assert!(c.can_read("users") && c.can_read("notes"));
        assert!(c.can_write("notes") && !c.can_write("users") && !c.can_write("notes2"));
        assert!(!c.is_admin() && c.allows_db("app") && !c.allows_db("other"));
        assert!(c.may_read_some() && c.may_write_some());
        let with = |scope: &[&str]| Claims {
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            ..c.clone()
        };
        assert!(with(&["read:notes"]).may_read_some());
        assert!(!with(&["read:notes"]).may_write_some());
        assert!(with(&["write:notes"]).may_read_some());
        // Scopes that only start like one are none.
        for odd in ["readonly", "writer", "read_all", "admin", ""] {
            assert!(!with(&[odd]).may_read_some(), "{odd}");
            assert!(!with(&[odd]).may_write_some(), "{odd}");
        }
    }

    #[test]
    fn hlc_orders_by_time_counter_node() {
        let h = |m, c, n: &str| Hlc {
            millis: m,
            counter: c,
            node: n.into(),
        };
        assert!(h(1, 5, "z") < h(2, 0, "a"));
        assert!(h(2, 0, "z") < h(2, 1, "a"));
        assert!(h(2, 1, "a") < h(2, 1, "b"));
    }

    #[test]
    fn documents_travel_as_tag_24_and_the_old_form_still_reads() {
        use entidb::cbor::{Value, encode};
        let doc = Value::map([("text", Value::from("hi"))]);
        let state = |doc: Value| encode(&Value::map([("version", Value::from(3)), ("doc", doc)]));
        let new = EntityState {
            version: Some(3),
            doc: Some(Canonical::from_value(&doc).unwrap()),
        };
        let wrapped = state(Value::Tag(24, Box::new(Value::Bytes(encode(&doc)))));
        assert_eq!(Format::Cbor.encode(&new).unwrap(), wrapped);
        assert_eq!(Format::Cbor.decode::<EntityState>(&wrapped).unwrap(), new);
        // The document in place, as messages and stored outboxes had it before.
        assert_eq!(
            Format::Cbor.decode::<EntityState>(&state(doc)).unwrap(),
            new
        );
        // JSON: the value.
        assert_eq!(
            String::from_utf8(Format::Json.encode(&new).unwrap()).unwrap(),
            r#"{"doc":{"text":"hi"},"version":3}"#
        );
        // Tag 24 over bytes that are not one item.
        let bad = state(Value::Tag(24, Box::new(Value::Bytes(vec![0x61]))));
        assert!(Format::Cbor.decode::<EntityState>(&bad).is_err());
    }

    /// serde's output (before `to_canonical_vec` checks it) is canonical already for every
    /// message, with every optional field present.
    #[test]
    fn fields_are_declared_in_canonical_order() {
        fn check<T: Serialize>(what: &str, value: &T) {
            let mut raw = Vec::new();
            ciborium::ser::into_writer(value, &mut raw).unwrap();
            assert!(
                entidb::cbor::is_canonical(&raw),
                "{what}: fields out of canonical order"
            );
        }
        let id = EntityId::from_bytes([1; 16]);
        let doc = Some(Canonical::from_value(&entidb::cbor::Value::map([("a", 1)])).unwrap());
        let hlc = Hlc {
            millis: 1,
            counter: 2,
            node: "n".into(),
        };
        let op = Op {
            id,
            doc: doc.clone(),
            hlc: hlc.clone(),
            kind: OpKind::Put,
            op_id: 1,
            collection: "c".into(),
            base_version: Some(3),
        };
        check("Hlc", &hlc);
        check(
            "PushRequest",
            &PushRequest {
                instance: None,
                ops: vec![op.clone()],
                client_id: "c".into(),
            },
        );
        let state = EntityState {
            doc: doc.clone(),
            version: Some(4),
        };
        check(
            "PushResponse",
            &PushResponse {
                pull: Some(PullResponse {
                    cursor: 5,
                    changes: Vec::new(),
                    has_more: false,
                }),
                cursor: 5,
                results: vec![OpResult {
                    op_id: 1,
                    state,
                    status: OpStatus::Merged,
                }],
            },
        );
        check(
            "PullResponse",
            &PullResponse {
                cursor: 5,
                changes: vec![WireChange {
                    id,
                    doc: doc.clone(),
                    kind: OpKind::Put,
                    cursor: 5,
                    origin: Some("o".into()),
                    collection: "c".into(),
                }],
                has_more: true,
            },
        );
        let position = BootstrapPosition {
            after: Some(id),
            collection: "c".into(),
        };
        check(
            "BootstrapResponse",
            &BootstrapResponse {
                next: Some(position),
                total: Some(1),
                cursor: 5,
                entities: vec![BootstrapEntity {
                    id,
                    doc: doc.clone().unwrap(),
                    version: 5,
                    collection: "c".into(),
                }],
            },
        );
        check(
            "ConflictsResponse",
            &ConflictsResponse {
                next: Some(id),
                conflicts: vec![ConflictRecord {
                    id,
                    loser: doc,
                    op_id: 1,
                    policy: ConflictPolicy::FieldMerge,
                    version: Some(5),
                    at_millis: 6,
                    client_id: "c".into(),
                    collection: "c".into(),
                    conflict_id: id,
                    loser_client: Some("d".into()),
                }],
            },
        );
        check(
            "ErrorBody",
            &ErrorBody {
                code: ErrorCode::Rebootstrap,
                message: "m".into(),
                oldest_cursor: Some(1),
            },
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(Format::Cbor.decode::<PushRequest>(&[0xff, 0x00]).is_err());
        assert!(Format::Cbor.decode::<PushRequest>(&[0xa0]).is_err());
        assert!(
            Format::Json
                .decode::<PushRequest>(b"{\"client_id\":1}")
                .is_err()
        );
        assert!(Format::from_content_type("text/plain").is_err());
        assert_eq!(
            Format::from_content_type("application/cbor; x=y").ok(),
            Some(Format::Cbor)
        );
    }
}
