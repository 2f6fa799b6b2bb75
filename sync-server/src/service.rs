//! What the endpoints do, independent of HTTP: push (apply, log and dedupe in ONE engine
//! transaction), pull (the oplog is the engine's change feed), bootstrap and the conflict log.
//!
//! ## Server state inside each hosted database
//!
//! - the app's collections, as the clients name them;
//! - the oplog: the engine's change feed. A push is one transaction, so its changes share one
//!   cursor (the transaction's sequence), which is also the new version of every entity it
//!   wrote. Cursors are gapless; records the client may not read are skipped in pull pages;
//! - `_sync.clients`: per client id, the highest op id applied (dedupe: op ids increase per
//!   client, so an op id at or below it is a retry);
//! - entity metadata: per entity, the cursor of its last write (also for deletes, so a delete
//!   has a version), the HLC stamp of that write and the client that made it; in
//!   `_sync.meta/<collection>` keyed by entity id, or in databases hosted before that layout,
//!   one `_sync.meta` keyed by a hash of (collection, id) (`MetaLayout`); for field-merge
//!   collections also the last versions' documents, their writers and per-field stamps
//!   (`field_merge`);
//! - `_sync.conflicts`: the conflict log, keyed by time-ordered ids.

use std::collections::HashMap;
use std::time::Duration;

use entidb::cbor::Canonical;
use entidb::{ChangeOp, Document, EntityId, ScanOptions};
use entidb_sync::wire::{
    BootstrapEntity, BootstrapPosition, BootstrapResponse, Claims, ConflictPolicy, ConflictRecord,
    ConflictsResponse, EntityState, ErrorCode, Hlc, Op, OpKind, OpResult, OpStatus, PullResponse,
    PushRequest, PushResponse, WireChange, is_reserved,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::ApiError;
use crate::field_merge::{self, FieldStamps, HISTORY, HISTORY_BYTES, Writer, merge, merge_base};
use crate::hosted::{HASHED_META, Hosted, MetaLayout};

const CLIENTS: &str = "_sync.clients";
const CONFLICTS: &str = "_sync.conflicts";

#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientRecord {
    client_id: String,
    max_op_id: u64,
}

/// Separates a client id from its instance in a writer's identity (`writer_of`); client ids
/// with control characters are refused.
const WRITER_SEP: char = '\u{1f}';

/// The identity of the installation that writes: the client id, and its instance when the
/// push names one. Stored as an entity's last writer (`EntityMeta::client`, `Writer`), so that
/// two installations of one client id do not pass for each other's latest write.
fn writer_of(client_id: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) => format!("{client_id}{WRITER_SEP}{i}"),
        None => client_id.to_owned(),
    }
}

/// The client id of a writer's identity (what the conflict log shows).
fn client_of(writer: &str) -> &str {
    writer.split(WRITER_SEP).next().unwrap_or(writer)
}

/// Whether `i` is a valid instance: 1-64 of `A-Z a-z 0-9 - _`.
fn valid_instance(i: &str) -> bool {
    (1..=64).contains(&i.len())
        && i.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An entity's sync metadata on the server. Stored as a CBOR map with the keys in canonical
/// order (declaration order; `stored_records_are_declared_in_canonical_order`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct EntityMeta {
    hlc: Option<Hlc>,
    client: Option<String>,
    /// Field-merge collections only: the stamp of the op that last changed each field (and
    /// of the latest removals, see [`FieldStamps`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fields: FieldStamps,
    /// The state is a field merge the server made of `client`'s op: that client has not
    /// seen it yet if it had later ops pending, so its own latest write does not excuse a
    /// differing base (the later op is merged against its base in turn).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    merged: bool,
    /// Field-merge collections only: the last [`HISTORY`] versions and their documents, so
    /// that a concurrent write's base can be found. (Stored before documents were carried
    /// as [`Canonical`], the documents were values in place; they read the same.)
    #[serde(default)]
    history: Vec<(u64, Option<Canonical>)>,
    version: u64,
    /// Field-merge collections only: which client's op wrote each version of `history`
    /// (see [`field_merge::merge_base`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    writers: Vec<Writer>,
}

/// What an earlier op of the same push did to an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Touched {
    /// Applied as pushed: a later op of the push builds on it.
    Applied,
    /// Merged with concurrent changes: a later op was made on the client's own document,
    /// not on the merge, and is merged in turn.
    Merged,
    /// Not applied: a later op, made on the refused one, is concurrent.
    Rejected,
}

fn hash_id(parts: &[&[u8]]) -> EntityId {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    EntityId::from_bytes(b)
}

/// The collection that holds the metadata of `collection`'s entities in `layout`.
fn meta_collection_of(layout: MetaLayout, collection: &str) -> String {
    match layout {
        MetaLayout::Hashed => HASHED_META.to_owned(),
        MetaLayout::PerCollection => entidb_sync::meta_collection(collection),
    }
}

/// The key of the metadata of `collection`'s entity `id` in `layout`.
fn meta_key(layout: MetaLayout, collection: &str, id: &EntityId) -> EntityId {
    match layout {
        MetaLayout::Hashed => hash_id(&[collection.as_bytes(), id.as_bytes()]),
        MetaLayout::PerCollection => *id,
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

fn bad(message: String) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn eng(e: entidb::Error) -> ApiError {
    ApiError::engine(&e)
}

fn cbor_eng(e: entidb::cbor::CborError) -> ApiError {
    eng(e.into())
}

/// Checks that the token is for this database.
pub fn check_db(claims: &Claims, db: &str) -> Result<(), ApiError> {
    if claims.allows_db(db) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "the token is for database {:?}, not {db:?}",
            claims.db
        )))
    }
}

/// Checks that the token may read some collection (pull, events, bootstrap, conflicts:
/// each hands out data or the oplog's position).
fn require_read(claims: &Claims) -> Result<(), ApiError> {
    if claims.may_read_some() {
        Ok(())
    } else {
        Err(forbidden("the token has no read or write scope".into()))
    }
}

/// Applies a push.
pub async fn push(
    config: &Config,
    hosted: &Hosted,
    claims: &Claims,
    req: PushRequest,
) -> Result<PushResponse, ApiError> {
    check_db(claims, &hosted.name)?;
    // Checked here too, not only per op: a push with no ops still answers the cursor.
    if !claims.may_write_some() {
        return Err(forbidden("the token has no write scope".into()));
    }
    if req.client_id != claims.sub {
        return Err(forbidden(format!(
            "the token is for client {:?}, not {:?}",
            claims.sub, req.client_id
        )));
    }
    // The client id becomes the origin of the push's transaction, which the engine bounds.
    if req.client_id.len() > entidb::MAX_ORIGIN_BYTES {
        return Err(bad(format!(
            "the client id is {} bytes; at most {} are allowed",
            req.client_id.len(),
            entidb::MAX_ORIGIN_BYTES
        )));
    }
    // The separator of a writer's identity (`writer_of`) cannot be part of a client id.
    if req.client_id.chars().any(char::is_control) {
        return Err(bad("the client id contains control characters".into()));
    }
    if let Some(i) = &req.instance
        && !valid_instance(i)
    {
        return Err(bad(format!(
            "invalid instance {i:?}: use 1-64 characters of A-Z, a-z, 0-9, '-' and '_'"
        )));
    }
    if req.ops.len() > config.max_ops_per_push {
        return Err(ApiError::new(
            ErrorCode::TooManyOps,
            format!(
                "{} ops in one push; the limit is {}",
                req.ops.len(),
                config.max_ops_per_push
            ),
        ));
    }
    let mut last = 0;
    for op in &req.ops {
        if op.op_id <= last {
            return Err(bad(format!(
                "op ids must increase within a push ({} after {last})",
                op.op_id
            )));
        }
        last = op.op_id;
        // Checked before the transaction: the engine checks a name only when it writes, and
        // a delete of a missing entity, or an op that loses a conflict, writes nothing to
        // the collection, so a bad name would reach the sync state and the conflict log.
        entidb::check_collection_name(&op.collection).map_err(|e| bad(e.to_string()))?;
        if is_reserved(&op.collection) {
            return Err(bad(format!(
                "collection {:?} is reserved for the sync layer",
                op.collection
            )));
        }
        if !claims.can_write(&op.collection) {
            return Err(forbidden(format!(
                "the token may not write collection {:?}",
                op.collection
            )));
        }
        match (op.kind, &op.doc) {
            (OpKind::Put, None) => {
                return Err(bad(format!("op {} is a put without a document", op.op_id)));
            }
            (OpKind::Delete, Some(_)) => {
                return Err(bad(format!("op {} is a delete with a document", op.op_id)));
            }

            _ => {}
        }
    }

    let db = &hosted.db;
    let mut tx = db.begin().await.map_err(eng)?;
    tx.set_origin(req.client_id.clone()).map_err(eng)?;
    let seq = tx.read_sequence() + 1;
    let now = now_millis();
    // Op ids are deduped, and entities' writers told apart, per installation of a client.
    let writer = writer_of(&req.client_id, req.instance.as_deref());
    // (Without an instance the writer is the client id: the key clients always had.)
    let client_key = hash_id(&[b"client", writer.as_bytes()]);
    let mut client: ClientRecord = tx
        .collection(CLIENTS)
        .get(client_key)
        .await
        .map_err(eng)?
        .unwrap_or_else(|| ClientRecord {
            client_id: req.client_id.clone(),
            max_op_id: 0,
        });
    // Entities this push wrote or refused, so that a later op of the same push on the same
    // entity builds on the earlier one instead of conflicting with it.
    let mut touched: HashMap<(String, EntityId), Touched> = HashMap::with_capacity(req.ops.len());
    // Metadata collection names, once per collection of the push (not one string per op).
    let mut meta_names: HashMap<String, String> = HashMap::new();
    for op in &req.ops {
        if !meta_names.contains_key(&op.collection) {
            let name = meta_collection_of(hosted.meta, &op.collection);
            meta_names.insert(op.collection.clone(), name);
        }
    }
    let superseded = superseded_ops(&req.ops);
    // Stored documents read by this push's ops, by entity (see `stored`).
    let mut read = HashMap::new();
    let mut answer = Answer {
        results: Vec::with_capacity(req.ops.len()),
        bytes: 0,
        limited: req.ops.len() > 1,
    };
    // A stamp far ahead of this server's clock (a client whose clock is wrong) would win
    // every last-writer-wins decision until real time caught up: it counts as at most
    // `max_clock_skew_ms` ahead.
    let latest_stamp = now.saturating_add(config.max_clock_skew_ms);
    for (mut op, superseded) in req.ops.into_iter().zip(superseded) {
        op.hlc.millis = op.hlc.millis.min(latest_stamp);
        // The stamp's node breaks ties between equal times: it is the writer's identity,
        // whatever the client put there (a client choosing its node would win every tie).
        if op.hlc.node != writer {
            op.hlc.node.clone_from(&writer);
        }
        let meta_coll: std::borrow::Cow<'_, str> = match meta_names.get(&op.collection) {
            Some(name) => name.into(),
            None => meta_collection_of(hosted.meta, &op.collection).into(),
        };
        let mid = meta_key(hosted.meta, &op.collection, &op.id);
        let meta: Option<EntityMeta> = tx.collection(&meta_coll).get(mid).await.map_err(eng)?;
        let key = (op.collection.clone(), op.id);
        // The stored document is read only when something needs it: its version when no
        // metadata exists (an entity written outside sync), its value for a retry's or a
        // conflict's answer. The common case, a write that conflicts with nothing, reads
        // only the metadata.
        let mut current: Option<Option<(u64, Canonical)>> = None;
        let current_version = match (touched.get(&key), &meta) {
            (Some(Touched::Applied | Touched::Merged), _) => Some(seq),
            (_, Some(m)) => Some(m.version),
            (_, None) => {
                let doc = stored(&mut tx, &mut read, &key).await?;
                let v = doc.as_ref().map(|(v, _)| *v);
                current = Some(doc);
                v
            }
        };
        let duplicate = op.op_id <= client.max_op_id;
        // A client never conflicts with its own last write (unless the server merged it):
        // its ops reach the server in the order it made them, so when the entity's latest
        // state is this client's, the op was made on top of it (and any write before that
        // one was decided when that one was). Its base version may be older than that
        // write: a retry's `duplicate` answer, or a `rejected` one, does not say at which
        // version the earlier op left the entity, so the client keeps the version it last
        // saw for the ops after it.
        let own_latest = meta
            .as_ref()
            .is_some_and(|m| !m.merged && m.client.as_deref() == Some(writer.as_str()));
        let concurrent = !duplicate
            && match touched.get(&key) {
                Some(Touched::Applied) => false,
                Some(Touched::Rejected) => true,
                Some(Touched::Merged) | None => op.base_version != current_version && !own_latest,
            };
        let current_doc = if duplicate || concurrent {
            let doc = match current {
                Some(doc) => doc,
                None => stored(&mut tx, &mut read, &key).await?,
            };
            doc.map(|(_, d)| d)
        } else {
            None
        };
        if duplicate {
            answer.push(OpResult {
                op_id: op.op_id,
                status: OpStatus::Duplicate,
                state: EntityState {
                    version: current_version,
                    doc: current_doc.filter(|_| !superseded),
                },
            })?;
            continue;
        }
        client.max_op_id = op.op_id;
        let policy = config.policy(&hosted.name, &op.collection);
        let doc_hlc = meta.as_ref().and_then(|m| m.hlc.as_ref());
        let client_newer = doc_hlc < Some(&op.hlc);
        // Field merge: find the document the op was made on and merge the maps three ways,
        // each field both sides changed going to the side that changed it later.
        let merged = match (policy, concurrent, &current_doc, &op.doc, &meta) {
            (ConflictPolicy::FieldMerge, true, Some(server), Some(client), Some(m)) => {
                match merge_base(&m.history, &m.writers, &writer, op.base_version) {
                    Some(base) => merge(
                        &base.to_value().map_err(cbor_eng)?,
                        &server.to_value().map_err(cbor_eng)?,
                        &client.to_value().map_err(cbor_eng)?,
                        &op.hlc,
                        |k| {
                            m.fields
                                .iter()
                                .find(|(f, _)| f == k)
                                .map(|(_, h)| h)
                                .or(doc_hlc)
                        },
                    ),
                    None => None,
                }
            }
            _ => None,
        };
        let wins = !concurrent
            || merged.is_some()
            || match policy {
                ConflictPolicy::ServerWins => false,
                ConflictPolicy::ClientWins => true,
                ConflictPolicy::LastWriterWins | ConflictPolicy::FieldMerge => client_newer,
            };
        // Under field merge only overlapping fields make a conflict (and a log entry).
        let logged = match &merged {
            Some(m) => m.client_lost || m.server_lost,
            None => concurrent,
        };
        let client_lost = merged.as_ref().map_or(!wins, |m| m.client_lost);
        if logged {
            let (loser, loser_client) = if client_lost {
                (op.doc.clone(), Some(req.client_id.clone()))
            } else {
                (
                    current_doc.clone(),
                    meta.as_ref()
                        .and_then(|m| m.client.as_deref())
                        .map(|w| client_of(w).to_owned()),
                )
            };
            let record = ConflictRecord {
                conflict_id: db.new_id(),
                collection: op.collection.clone(),
                id: op.id,
                policy,
                loser,
                loser_client,
                client_id: req.client_id.clone(),
                op_id: op.op_id,
                version: if wins { Some(seq) } else { current_version },
                at_millis: now,
            };
            tx.collection(CONFLICTS)
                .put(record.conflict_id, &record)
                .map_err(eng)?;
        }
        if !wins {
            touched.insert(key, Touched::Rejected);
            answer.push(OpResult {
                op_id: op.op_id,
                status: OpStatus::Rejected,
                state: EntityState {
                    version: current_version,
                    doc: current_doc.filter(|_| !superseded),
                },
            })?;
            continue;
        }
        // `merged_into`: the merge changed the client's document, which it must adopt.
        // (The merge's value is kept: the field stamps below read its fields.)
        let (merged_doc, taken, merged_value) = match merged {
            Some(m) => (
                Some(Canonical::from_value(&m.doc).map_err(cbor_eng)?),
                Some(m.taken),
                Some(m.doc),
            ),
            None => (None, None, None),
        };
        let (doc, pushed, merged_into) = match merged_doc {
            Some(m) if Some(&m) != op.doc.as_ref() => (Some(m), op.doc, true),
            _ => (op.doc, None, false),
        };
        // The op writes the entity: what was read of it is no longer its state.
        read.remove(&key);
        touched.insert(
            key,
            if merged_into {
                Touched::Merged
            } else {
                Touched::Applied
            },
        );
        match &doc {
            Some(doc) => tx
                .collection(&op.collection)
                .put_canonical(op.id, doc)
                .map_err(eng)?,
            None => {
                tx.collection(&op.collection)
                    .delete(op.id)
                    .await
                    .map_err(eng)?;
            }
        }
        // A merge keeps the later stamp of its two sides as the document's (the stamp a
        // field without one of its own falls back to); the fields carry their own.
        let hlc = match doc_hlc {
            Some(h) if taken.is_some() && *h > op.hlc => h.clone(),
            _ => op.hlc.clone(),
        };
        let (mut history, mut writers, mut fields) = (Vec::new(), Vec::new(), Vec::new());
        if policy == ConflictPolicy::FieldMerge {
            let new = match (merged_value, &doc) {
                (Some(v), _) => Some(v),
                (None, Some(d)) => Some(d.to_value().map_err(cbor_eng)?),
                (None, None) => None,
            };
            let (stamps, previous) = match meta {
                Some(m) => {
                    // The document the op replaces, when the history has it (a merge says
                    // itself which fields changed).
                    let previous = match field_merge::doc_at(&m.history, m.version) {
                        Some(d) if taken.is_none() && current_version == Some(m.version) => {
                            Some(d.to_value().map_err(cbor_eng)?)
                        }
                        _ => None,
                    };
                    (history, writers) = (m.history, m.writers);
                    (m.fields, previous)
                }
                None => (Vec::new(), None),
            };
            fields = field_merge::stamps_after(
                stamps,
                previous.as_ref(),
                new.as_ref(),
                &op.hlc,
                taken.as_deref(),
            );
            // An earlier op of this push wrote the same version: replace it.
            history.retain(|(v, _)| *v != seq);
            writers.retain(|w| w.version != seq);
            history.push((seq, doc.clone()));
            writers.push(Writer {
                client: writer.clone(),
                pushed,
                version: seq,
            });
            let excess = history.len().saturating_sub(HISTORY);
            history.drain(..excess);
            // Bounded in bytes too: the metadata is one document, under the engine's size
            // limit, and eight versions of a large document would pass it (every later
            // write of the entity would then fail). The oldest versions go first, the
            // newest too if it alone is over the bound: an op based on a version no longer
            // kept is decided without a merge base (§6).
            let kept_bytes = |history: &[(u64, Option<Canonical>)], writers: &[Writer]| {
                let size = |d: &Option<Canonical>| d.as_ref().map_or(0, |d| d.as_bytes().len());
                history.iter().map(|(_, d)| size(d)).sum::<usize>()
                    + writers.iter().map(|w| size(&w.pushed)).sum::<usize>()
            };
            while !history.is_empty() && kept_bytes(&history, &writers) > HISTORY_BYTES {
                history.remove(0);
                let oldest = history.first().map_or(u64::MAX, |(v, _)| *v);
                writers.retain(|w| w.version >= oldest);
            }
            let oldest = history.first().map_or(u64::MAX, |(v, _)| *v);
            writers.retain(|w| w.version >= oldest);
        }
        let new_meta = EntityMeta {
            version: seq,
            hlc: Some(hlc),
            client: Some(writer.clone()),
            fields,
            merged: merged_into,
            history,
            writers,
        };
        tx.collection(&meta_coll).put(mid, &new_meta).map_err(eng)?;
        // An op applied as pushed is answered without its document (the client has it).
        answer.push(OpResult {
            op_id: op.op_id,
            status: if merged_into {
                OpStatus::Merged
            } else {
                OpStatus::Applied
            },
            state: EntityState {
                version: Some(seq),
                // (Left out where a later op names the entity: see `superseded_ops`.)
                doc: if merged_into && !superseded {
                    doc
                } else {
                    None
                },
            },
        })?;
    }
    let results = answer.results;
    if results.iter().all(|r| r.status == OpStatus::Duplicate) {
        // A pure retry (or an empty push) changes nothing and takes no cursor.
        let cursor = tx.read_sequence();
        tx.abort();
        return Ok(PushResponse {
            pull: None,
            results,
            cursor,
        });
    }
    tx.collection(CLIENTS)
        .put(client_key, &client)
        .map_err(eng)?;
    let committed = tx.commit().await.map_err(eng)?;
    if committed != seq {
        return Err(ApiError::internal(format!(
            "push committed at {committed}, expected {seq}"
        )));
    }
    hosted.publish(committed);
    Ok(PushResponse {
        pull: None,
        results,
        cursor: committed,
    })
}

/// Which ops a later op of the same push names the same entity as. Their results leave the
/// document out (each result is built so) (`docs/sync-protocol.md` §5.1): a client adopts a result's state only when
/// no later op for its entity is pending, so only the last result per entity is read, and
/// the answer to a push of many ops on one large entity (a retry of a thousand edits of one
/// document) holds its document once, not once per op.
fn superseded_ops(ops: &[Op]) -> Vec<bool> {
    let mut later = std::collections::HashSet::new();
    let mut superseded: Vec<bool> = ops
        .iter()
        .rev()
        .map(|op| !later.insert((op.collection.as_str(), op.id)))
        .collect();
    superseded.reverse();
    superseded
}

/// Applies a push and, with `page = Some((since, limit))`, answers with the page after
/// `since` too (`push?since=C&limit=N`, `docs/sync-protocol.md` §5.1): the HTTP handler and
/// the simulation both come through here.
///
/// The cursor is checked before the push, so a wrong one stores nothing. Once the push has
/// committed, its answer stands: a page that cannot be read (behind the retained oplog, or
/// an internal error, which is logged) is left out, and the client's own pull meets the
/// same condition and reports it.
pub async fn push_with_page(
    config: &Config,
    hosted: &Hosted,
    claims: &Claims,
    req: PushRequest,
    page: Option<(u64, usize)>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<PushResponse, ApiError> {
    // A cursor ahead of the server (its database was restored or recreated): 410 before
    // anything is stored. (Applying the push and leaving the page out is not enough: the
    // push can take the sequence past that cursor, and the client's pull would then find
    // nothing wrong.)
    if let Some((since, _)) = page {
        check_cursor(hosted, since)?;
    }
    let mut answer = push(config, hosted, claims, req).await?;
    if let Some((since, limit)) = page {
        match pull(hosted, claims, since, limit, None, shutdown).await {
            Ok(page) => answer.pull = Some(page),
            Err(e) if e.body.code == ErrorCode::Rebootstrap => {}
            Err(e) => tracing::warn!(
                database = %hosted.name,
                since,
                error = %e.body.message,
                "the page a push asked for was left out"
            ),
        }
    }
    Ok(answer)
}

/// The size of a pull page: `requested`, or the server's `max_page` when not given, within
/// `1..=max_page`.
pub fn page_limit(config: &Config, requested: Option<usize>) -> usize {
    requested
        .unwrap_or(config.max_page)
        .clamp(1, config.max_page)
}

/// Checks that a client's cursor is not ahead of the server's oplog. One that is got it from
/// an earlier state of the database (restored from a backup, or deleted and created again):
/// 410 `rebootstrap`, so that the client starts over from the database as it is (keeping its
/// pending writes) instead of failing every round.
fn check_cursor(hosted: &Hosted, since: u64) -> Result<(), ApiError> {
    let last = hosted.db.last_sequence();
    if since > last {
        return Err(ApiError::new(
            ErrorCode::Rebootstrap,
            format!(
                "cursor {since} is ahead of the server ({last}): the database was restored or created again since this client synced; bootstrap again"
            ),
        ));
    }
    Ok(())
}

/// The most document bytes a pull or bootstrap page holds beyond its first transaction (or
/// entity): with `max_page` changes alone, a page of large documents could take gigabytes
/// of the server's memory (and the client's).
pub const PAGE_BYTES: usize = 16 << 20;

/// What a change counts against [`PAGE_BYTES`]: its document and a little for the rest.
fn change_bytes(c: &WireChange) -> usize {
    c.doc.as_ref().map_or(0, |d| d.as_bytes().len()) + 64
}

/// Reads a pull page; with `wait` it waits for a change after `since` when there is none.
pub async fn pull(
    hosted: &Hosted,
    claims: &Claims,
    since: u64,
    limit: usize,
    wait: Option<Duration>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<PullResponse, ApiError> {
    check_db(claims, &hosted.name)?;
    require_read(claims)?;
    check_cursor(hosted, since)?;
    let db = &hosted.db;
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut since = since;
    loop {
        if let Some(deadline) = deadline
            && db.last_sequence() <= since
        {
            let mut rx = hosted.changed.subscribe();
            let mut shutdown = shutdown.clone();
            let _ = tokio::time::timeout_at(deadline, async {
                loop {
                    if *rx.borrow_and_update() > since || *shutdown.borrow() {
                        return;
                    }
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return },
                        r = shutdown.changed() => if r.is_err() { return },
                    }
                }
            })
            .await;
        }
        let page = read_changes(db, claims, since, limit).await?;
        // A long poll woken by transactions this token cannot see (the server's own
        // bookkeeping, a push of rejected ops, collections it may not read) waits on past
        // them: answering the empty page at once made a scoped client on a busy database
        // poll without pause. The cursor still moves past them when the wait ends.
        let waiting =
            deadline.is_some_and(|d| tokio::time::Instant::now() < d) && !*shutdown.borrow();
        if !page.changes.is_empty() || page.has_more || !waiting || page.cursor == since {
            return Ok(page);
        }
        since = page.cursor;
    }
}

/// The page of changes after `since` that `claims` may read (see [`pull`]).
async fn read_changes(
    db: &entidb::Database,
    claims: &Claims,
    since: u64,
    limit: usize,
) -> Result<PullResponse, ApiError> {
    // A page holds whole transactions: it ends before the transaction that would take it
    // past `limit` changes or `PAGE_BYTES` of documents (the first one always fits: pushes
    // are bounded by `max_ops_per_push` and `max_body_bytes`), or after `4 * limit`
    // transactions the token cannot see.
    let mut changes = Vec::new();
    let mut bytes = 0;
    let mut cursor = since;
    let mut scanned = 0;
    let mut has_more = false;
    // Read transactions in chunks: growing (1, 2, 4, ... 64) until a change is found, then
    // sized to the room left by the transactions read so far, so that a page of a few large
    // transactions reads little beyond its end (the values of a transaction that does not
    // fit are read and thrown away), a page of many small ones few times.
    let mut chunk = 1;
    'read: loop {
        // Changes the client cannot see (the server's own bookkeeping, unreadable
        // collections) are left out before their values are read.
        let batches = db
            .changes_page_filtered(cursor, chunk, |_, c| !is_reserved(c) && claims.can_read(c))
            .await
            .map_err(eng)?;
        let full = batches.len() == chunk;
        for b in batches {
            let visible: Vec<WireChange> = b
                .changes
                .into_iter()
                .filter_map(|c| {
                    // (The feed filter above already left out what the client cannot see.)
                    let id = c.id?;
                    let (kind, doc) = match c.op {
                        // The stored bytes go out as they are: not decoded, not copied.
                        ChangeOp::Put(doc) => (OpKind::Put, Some(doc)),
                        ChangeOp::Delete => (OpKind::Delete, None),
                        // A later record holds the entity's newer state.
                        _ => return None,
                    };
                    Some(WireChange {
                        cursor: b.seq,
                        collection: c.collection,
                        id,
                        kind,
                        doc,
                        origin: b.origin.clone(),
                    })
                })
                .collect();
            let visible_bytes: usize = visible.iter().map(change_bytes).sum();
            let too_big =
                changes.len() + visible.len() > limit || bytes + visible_bytes > PAGE_BYTES;
            if !changes.is_empty() && too_big || scanned >= 4 * limit {
                has_more = true;
                break 'read;
            }
            scanned += 1;
            cursor = b.seq;
            bytes += visible_bytes;
            changes.extend(visible);
        }
        if !full {
            break;
        }
        let room = limit.saturating_sub(changes.len());
        if room == 0 {
            // Full: whether more follows is known without reading the next transaction.
            has_more = db.last_sequence() > cursor;
            break;
        }
        chunk = if changes.is_empty() {
            (chunk * 2).min(64)
        } else {
            // By the room left in changes and in bytes, each at the average so far, so that
            // large transactions are not read (and thrown away) far past the page's end.
            let by_changes = room * scanned / changes.len();
            let by_bytes = PAGE_BYTES.saturating_sub(bytes) / (bytes / scanned).max(1);
            by_changes.min(by_bytes).clamp(1, 64)
        };
    }
    Ok(PullResponse {
        changes,
        cursor,
        has_more,
    })
}

/// Reads a bootstrap page.
pub async fn bootstrap(
    hosted: &Hosted,
    claims: &Claims,
    collections: Option<&str>,
    from: Option<BootstrapPosition>,
    limit: usize,
) -> Result<BootstrapResponse, ApiError> {
    check_db(claims, &hosted.name)?;
    require_read(claims)?;
    let snap = hosted.db.snapshot();
    let existing = snap.collections();
    let wanted: Vec<String> = match collections {
        Some(list) => list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => existing
            .iter()
            .filter(|c| !is_reserved(c) && claims.can_read(c))
            .cloned()
            .collect(),
    };
    for c in &wanted {
        if is_reserved(c) {
            return Err(bad(format!(
                "collection {c:?} is reserved for the sync layer"
            )));
        }
        if !claims.can_read(c) {
            return Err(forbidden(format!(
                "the token may not read collection {c:?}"
            )));
        }
    }
    let mut colls: Vec<String> = wanted
        .into_iter()
        .filter(|c| existing.contains(c))
        .collect();
    colls.sort();
    colls.dedup();
    // Counting is a scan: only the first page pays for it.
    let total = if from.is_none() {
        let mut total = 0;
        for c in &colls {
            total += snap.collection(c).count().await.map_err(eng)?;
        }
        Some(total)
    } else {
        None
    };
    let (start, mut after) = match from {
        Some(p) => {
            let i = colls.partition_point(|c| *c < p.collection);
            // `after` is a position in the named collection only: if that one is gone (or
            // no longer asked for), the next collection starts from its beginning.
            let after = if colls.get(i) == Some(&p.collection) {
                p.after
            } else {
                None
            };
            (i, after)
        }
        None => (0, None),
    };
    let mut entities = Vec::new();
    let mut next = None;
    let mut bytes = 0;
    // Entities are read in chunks, the first small and each next one sized by the average
    // document so far, so that large documents are not read (and thrown away) far past the
    // page's byte budget.
    let mut chunk = 4;
    'collections: for (i, c) in colls.iter().enumerate().skip(start) {
        let mut after_in = if i == start { after.take() } else { None };
        loop {
            let room = limit - entities.len();
            let mut opts = ScanOptions::limit(room.min(chunk));
            opts.after = after_in;
            let page = snap.collection(c).scan(opts).await.map_err(eng)?;
            for d in &page.items {
                let doc = d.canonical();
                let size = doc.as_bytes().len() + 64;
                // Past `PAGE_BYTES` the page ends (with one entity at least), after the last
                // entity that fits: after it in this collection, or at this one's start.
                if !entities.is_empty() && bytes + size > PAGE_BYTES {
                    let after = entities
                        .last()
                        .filter(|e: &&BootstrapEntity| e.collection == *c)
                        .map(|e| e.id);
                    next = Some(BootstrapPosition {
                        collection: c.clone(),
                        after,
                    });
                    break 'collections;
                }
                bytes += size;
                entities.push(BootstrapEntity {
                    collection: c.clone(),
                    id: d.id(),
                    version: d.version(),
                    doc,
                });
            }
            if entities.len() == limit {
                next = match page.next {
                    Some(last) => Some(BootstrapPosition {
                        collection: c.clone(),
                        after: Some(last),
                    }),
                    None => colls.get(i + 1).map(|n| BootstrapPosition {
                        collection: n.clone(),
                        after: None,
                    }),
                };
                break 'collections;
            }
            let Some(last) = page.next else {
                // This collection is done.
                continue 'collections;
            };
            after_in = Some(last);
            chunk = match bytes / entities.len().max(1) {
                0 => chunk.saturating_mul(2),
                average => PAGE_BYTES.saturating_sub(bytes) / average + 1,
            }
            .clamp(1, limit);
        }
    }
    Ok(BootstrapResponse {
        cursor: snap.sequence(),
        entities,
        next,
        total,
    })
}

/// Reads a page of the conflict log (entries of collections the token may read).
pub async fn conflicts(
    hosted: &Hosted,
    claims: &Claims,
    after: Option<EntityId>,
    limit: usize,
) -> Result<ConflictsResponse, ApiError> {
    check_db(claims, &hosted.name)?;
    require_read(claims)?;
    let snap = hosted.db.snapshot();
    // Entries of collections the token cannot read are skipped, and the scan goes on until
    // the page is full, the log ends, or `4 * limit` entries were read (as a pull reads
    // past transactions the token cannot see): a client reading one collection of a busy
    // log gets full pages, and a request's work stays bounded. `next` is the last entry
    // read, which can be one the token cannot see.
    let budget = limit.saturating_mul(4);
    let (mut out, mut read, mut next) = (Vec::new(), 0, after);
    loop {
        let mut opts = ScanOptions::limit((limit - out.len()).min(budget - read).max(1));
        opts.after = next;
        let page = snap.collection(CONFLICTS).scan(opts).await.map_err(eng)?;
        read += page.items.len();
        for d in &page.items {
            let r: ConflictRecord = d.decode().map_err(eng)?;
            if claims.can_read(&r.collection) {
                out.push(r);
            }
        }
        next = page.next;
        if next.is_none() || out.len() >= limit || read >= budget {
            break;
        }
    }
    Ok(ConflictsResponse {
        conflicts: out,
        next,
    })
}

/// The most bytes of documents the answer to one push of more than one op may carry (the
/// documents of its `duplicate`, `rejected` and `merged` results). Without it, a push
/// of a thousand small deletes that each lose to a different large document would build an
/// answer of a thousand documents (gigabytes, in the server's memory and then the client's).
/// Past it the push is refused with 413 `payload_too_large` before anything is stored, and
/// the client pushes fewer ops at a time (one op's answer holds one document at most).
pub const ANSWER_BYTES: usize = 16 << 20;

/// A push's results, and the bytes of the documents they carry.
struct Answer {
    results: Vec<OpResult>,
    bytes: usize,
    /// Whether [`ANSWER_BYTES`] applies (the push has more than one op).
    limited: bool,
}

impl Answer {
    /// Adds a result; fails with 413 once a push of many ops has answered [`ANSWER_BYTES`].
    fn push(&mut self, result: OpResult) -> Result<(), ApiError> {
        self.bytes += result.state.doc.as_ref().map_or(0, |d| d.as_bytes().len());
        if self.limited && self.bytes > ANSWER_BYTES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the answer to this push would hold more than {} MiB of documents (its ops lose to, or retry over, large documents); push fewer ops at a time",
                    ANSWER_BYTES >> 20
                ),
            ));
        }
        self.results.push(result);
        Ok(())
    }
}

/// An entity's stored version and document as a push's transaction sees it, read once per
/// push: the ops of a push that name one entity many times (a retry of a thousand edits of
/// one document, ops that keep losing to its state) share one copy instead of reading (and
/// copying out of its block) the document once each. An op that writes the entity removes
/// it from `read`.
async fn stored(
    tx: &mut entidb::WriteTxn,
    read: &mut HashMap<(String, EntityId), Option<(u64, Canonical)>>,
    key: &(String, EntityId),
) -> Result<Option<(u64, Canonical)>, ApiError> {
    if let Some(hit) = read.get(key) {
        return Ok(hit.clone());
    }
    let doc = read_doc(tx, &key.0, key.1)
        .await?
        .map(|d| (d.version(), d.canonical()));
    read.insert(key.clone(), doc.clone());
    Ok(doc)
}

async fn read_doc(
    tx: &mut entidb::WriteTxn,
    collection: &str,
    id: EntityId,
) -> Result<Option<Document>, ApiError> {
    tx.collection(collection)
        .get_document(id)
        .await
        .map_err(eng)
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use entidb::cbor::Value;

    /// Databases with the first layout hold metadata under this formula: it must not change.
    #[test]
    fn the_hashed_layout_keeps_its_formula() {
        let id = EntityId::from_bytes([1; 16]);
        let (coll, key) = (
            meta_collection_of(MetaLayout::Hashed, "notes"),
            meta_key(MetaLayout::Hashed, "notes", &id),
        );
        assert_eq!(coll, "_sync.meta");
        let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "98f86cdc86f6486bece2d47b8eab2e19");
        assert_eq!(
            (
                meta_collection_of(MetaLayout::PerCollection, "notes"),
                meta_key(MetaLayout::PerCollection, "notes", &id)
            ),
            ("_sync.meta/notes".to_owned(), id)
        );
    }

    /// Written once per op: serde's output must be canonical as written (fields declared in
    /// canonical key order), so that storing it needs no reordering pass.
    #[test]
    fn stored_records_are_declared_in_canonical_order() {
        fn check<T: Serialize>(value: &T) {
            let mut raw = Vec::new();
            ciborium::ser::into_writer(value, &mut raw).unwrap();
            assert!(entidb::cbor::is_canonical(&raw), "{raw:02x?}");
        }
        let doc = Canonical::from_value(&Value::Map(vec![(
            Value::Text("a".into()),
            Value::Int(1.into()),
        )]))
        .unwrap();
        check(&EntityMeta {
            hlc: Some(Hlc {
                node: "n".into(),
                millis: 1,
                counter: 2,
            }),
            client: Some("c".into()),
            fields: vec![(
                Value::Text("a".into()),
                Hlc {
                    node: "n".into(),
                    millis: 1,
                    counter: 2,
                },
            )],
            merged: true,
            history: vec![(3, Some(doc.clone())), (4, None)],
            version: 4,
            writers: vec![Writer {
                client: "c".into(),
                pushed: Some(doc),
                version: 3,
            }],
        });
        check(&ClientRecord {
            client_id: "c".into(),
            max_op_id: 9,
        });
    }
}
