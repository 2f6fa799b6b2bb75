//! Online backup of a consistent snapshot, verification of a backup, and restore.
//!
//! # Format (version 1)
//!
//! ```text
//! file  = magic "EntiDBbk" (8 bytes) | version u8 (= 1) | frame* | end frame
//! frame = kind u8 | length u32 LE | payload (length bytes) | crc32c u32 LE of kind, length, payload
//! ```
//!
//! | kind | payload |
//! |------|---------|
//! | `0x01` header | CBOR map `{"format": 1, "sequence": uint, "created_ms": uint}`; first frame |
//! | `0x02` collection | CBOR map `{"name": text}`; the entity frames that follow belong to it |
//! | `0x03` index | the index definition's catalog record (a CBOR map, `design.md` 11.1) plus `"collection"` and `"name"` |
//! | `0x04` entities | repeated `entity-id (16) | length u32 LE | canonical CBOR document` |
//! | `0x05` end | CBOR map `{"collections": uint, "entities": uint, "sha256": bytes(32)}`: the SHA-256 of every byte before this frame; last frame |
//!
//! A reader checks the magic and version, every frame's CRC, the order (header first, entities
//! only after a collection, nothing after the end), that no frame is longer than
//! [`MAX_FRAME`], the counts, and the SHA-256 of the whole file; a file that stops before the
//! end frame is *truncated*. Indexes are stored as definitions and rebuilt by a restore.
//! Entity versions and the change feed are not part of a backup: a restored database starts a
//! new sequence.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cbor::{self, Value};
use crate::database::Database;
use crate::document::ScanOptions;
use crate::error::{Error, Result};
use crate::ids::EntityId;
use crate::index::{IndexDef, IndexSpec};
use crate::options::{Durability, Options};
use entidb_io::{Backend, BoxFuture, MaybeSend};

const MAGIC: &[u8; 8] = b"EntiDBbk";
const VERSION: u8 = 1;
const HEADER: u8 = 0x01;
const COLLECTION: u8 = 0x02;
const INDEX: u8 = 0x03;
const ENTITIES: u8 = 0x04;
const END: u8 = 0x05;

/// Largest frame payload a reader accepts (a frame holds at least one document, and a
/// document is at most 16 MiB by default).
pub const MAX_FRAME: usize = 64 << 20;
/// Entity frames are cut after this many payload bytes.
const FRAME_TARGET: usize = 1 << 20;
/// Restore commits a transaction after this many document bytes.
const RESTORE_TXN_BYTES: usize = 8 << 20;

/// Where a backup is written: any byte sink. Implemented for `Vec<u8>` and, through
/// [`WriteSink`], for any [`std::io::Write`] (a file).
pub trait BackupSink: MaybeSend {
    /// Append `bytes`.
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>>;
}

/// Where a backup is read from: returns up to `max` bytes, an empty vector at the end.
pub trait BackupSource: MaybeSend {
    /// Read the next bytes.
    fn read(&mut self, max: usize) -> BoxFuture<'_, std::io::Result<Vec<u8>>>;
}

impl BackupSink for Vec<u8> {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>> {
        self.extend_from_slice(bytes);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A [`BackupSink`] over any [`std::io::Write`], such as a buffered file.
///
/// Each write runs on the calling task and blocks it until the writer returns: right for a
/// file on a local disk (what the `entidb` CLI and the Python SDK use), not for a slow network
/// writer, for which implement [`BackupSink`] with real asynchronous writes. Flush and sync
/// the writer yourself once the backup returned ([`WriteSink::into_inner`]).
///
/// ```no_run
/// # async fn run(db: entidb::Database) -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::Write;
/// let file = std::fs::File::create("backup.entidb")?;
/// let mut sink = entidb::WriteSink::new(std::io::BufWriter::new(file));
/// let summary = db.backup(&mut sink).await?;
/// let mut out = sink.into_inner();
/// out.flush()?;
/// out.get_ref().sync_all()?;
/// println!("{} entities", summary.entities);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WriteSink<W>(W);

impl<W: std::io::Write> WriteSink<W> {
    /// Write the backup to `w`.
    pub fn new(w: W) -> Self {
        WriteSink(w)
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.0
    }
}

impl<W: std::io::Write + MaybeSend> BackupSink for WriteSink<W> {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(std::future::ready(self.0.write_all(bytes)))
    }
}

/// A [`BackupSource`] over any [`std::io::Read`], such as a file (blocking the calling task
/// for each read, like [`WriteSink`]).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let file = std::fs::File::open("backup.entidb")?;
/// let summary = entidb::verify_backup(&mut entidb::ReadSource::new(file)).await?;
/// println!("a backup of {} entities at sequence {}", summary.entities, summary.sequence);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReadSource<R>(R);

impl<R: std::io::Read> ReadSource<R> {
    /// Read a backup from `r`.
    pub fn new(r: R) -> Self {
        ReadSource(r)
    }
}

impl<R: std::io::Read + MaybeSend> BackupSource for ReadSource<R> {
    fn read(&mut self, max: usize) -> BoxFuture<'_, std::io::Result<Vec<u8>>> {
        let mut buf = vec![0u8; max];
        let r = loop {
            match self.0.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    break Ok(buf);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        Box::pin(std::future::ready(r))
    }
}

/// A [`BackupSource`] over bytes in memory.
#[derive(Debug)]
pub struct SliceSource<'a> {
    bytes: &'a [u8],
}

impl<'a> SliceSource<'a> {
    /// Read `bytes` as a backup.
    pub fn new(bytes: &'a [u8]) -> SliceSource<'a> {
        SliceSource { bytes }
    }
}

impl BackupSource for SliceSource<'_> {
    fn read(&mut self, max: usize) -> BoxFuture<'_, std::io::Result<Vec<u8>>> {
        let n = max.min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Box::pin(std::future::ready(Ok(head.to_vec())))
    }
}

/// What a backup holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BackupSummary {
    /// The sequence of the snapshot that was backed up.
    pub sequence: u64,
    /// When the backup started, ms since the Unix epoch (the database's clock).
    pub created_ms: u64,
    /// Collections.
    pub collections: u64,
    /// Entities.
    pub entities: u64,
    /// Index definitions.
    pub indexes: u64,
    /// Bytes of the backup file.
    pub bytes: u64,
}

fn bad(detail: impl Into<String>) -> Error {
    Error::InvalidBackup(detail.into())
}

/// A failing sink or source is an I/O error (the backup's bytes are not at fault).
fn stream_err(context: &'static str, op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        context,
        source: entidb_io::IoError::Os {
            op,
            path: "the backup stream".into(),
            source,
        },
    }
}

/// Writes frames, keeping the running hash and size.
struct Writer<'a, S: BackupSink + ?Sized> {
    sink: &'a mut S,
    hash: Sha256,
    bytes: u64,
}

impl<S: BackupSink + ?Sized> Writer<'_, S> {
    async fn raw(&mut self, b: &[u8]) -> Result<()> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.sink
            .write(b)
            .await
            .map_err(stream_err("writing the backup", "write"))
    }

    async fn frame(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| Error::InvalidArgument("backup frame too large".into()))?;
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..].copy_from_slice(&len.to_le_bytes());
        let mut crc = crc32c::crc32c(&head);
        crc = crc32c::crc32c_append(crc, payload);
        self.raw(&head).await?;
        self.raw(payload).await?;
        self.raw(&crc.to_le_bytes()).await
    }
}

impl Database {
    /// Write a backup of one consistent snapshot to `sink`, streaming: memory stays bounded
    /// (one page of documents and one frame) whatever the database's size, and writers keep
    /// going meanwhile. The format is in [`crate::backup`].
    pub async fn backup<S: BackupSink + ?Sized>(&self, sink: &mut S) -> Result<BackupSummary> {
        let snap = self.snapshot();
        let mut summary = BackupSummary {
            sequence: snap.sequence(),
            created_ms: self.inner.clock.now_millis(),
            ..BackupSummary::default()
        };
        let mut w = Writer {
            sink,
            hash: Sha256::new(),
            bytes: 0,
        };
        let mut head = MAGIC.to_vec();
        head.push(VERSION);
        w.raw(&head).await?;
        w.frame(
            HEADER,
            &cbor::encode(&Value::map([
                ("format", Value::from(VERSION)),
                ("sequence", Value::from(summary.sequence)),
                ("created_ms", Value::from(summary.created_ms)),
            ])),
        )
        .await?;
        for name in snap.collections() {
            summary.collections += 1;
            w.frame(
                COLLECTION,
                &cbor::encode(&Value::map([("name", name.as_str())])),
            )
            .await?;
            let coll = snap.collection(&name);
            let mut frame = Vec::new();
            let mut opts = ScanOptions::limit(256);
            loop {
                let page = coll.scan(opts).await?;
                for d in &page.items {
                    frame.extend_from_slice(d.id().as_bytes());
                    frame.extend_from_slice(&(d.bytes().len() as u32).to_le_bytes());
                    frame.extend_from_slice(d.bytes());
                    summary.entities += 1;
                    if frame.len() >= FRAME_TARGET {
                        w.frame(ENTITIES, &frame).await?;
                        frame.clear();
                    }
                }
                match page.next {
                    Some(c) => opts = opts.after(c),
                    None => break,
                }
            }
            if !frame.is_empty() {
                w.frame(ENTITIES, &frame).await?;
            }
            for def in snap.index_defs(&name) {
                summary.indexes += 1;
                w.frame(INDEX, &index_record(&name, &def)).await?;
            }
        }
        let digest = w.hash.clone().finalize();
        w.frame(
            END,
            &cbor::encode(&Value::map([
                ("collections", Value::from(summary.collections)),
                ("entities", Value::from(summary.entities)),
                ("sha256", Value::Bytes(digest.to_vec())),
            ])),
        )
        .await?;
        summary.bytes = w.bytes;
        Ok(summary)
    }

    /// Restore a backup into a new database on `backend` (which must hold no database),
    /// checking everything [`verify_backup`] checks. Documents are written in large relaxed
    /// transactions, indexes are rebuilt, and the result is checkpointed (durable) before it
    /// is returned. On any error the backend may hold a partial database: restore into a
    /// fresh place and move it into position only on success (the `entidb restore` command
    /// does).
    pub async fn restore<R: BackupSource + ?Sized>(
        source: &mut R,
        backend: Arc<dyn Backend>,
        options: Options,
    ) -> Result<(Database, BackupSummary)> {
        let listing = backend
            .list("")
            .await
            .map_err(Error::io("listing the restore target"))?;
        if listing.iter().any(|n| n == "MANIFEST") {
            return Err(Error::InvalidArgument(
                "the restore target already holds a database".into(),
            ));
        }
        let db = Database::open_with(backend, options).await?;
        let mut r = Reader::new(source);
        let mut summary = r.header().await?;
        let mut current: Option<String> = None;
        let mut pending = 0usize;
        let mut tx = db.begin().await?;
        tx.set_durability(Durability::Relaxed);
        let mut indexes: Vec<(String, String, IndexSpec)> = Vec::new();
        loop {
            let (kind, payload) = r.frame().await?;
            match kind {
                COLLECTION => {
                    let name = collection_name(&payload)?;
                    tx.create_collection(&name)
                        .map_err(|e| bad(format!("collection frame: {e}")))?;
                    summary.collections += 1;
                    current = Some(name);
                }
                ENTITIES => {
                    let name = current
                        .as_deref()
                        .ok_or_else(|| bad("entities before any collection"))?;
                    for (id, doc) in entities(&payload)? {
                        tx.collection(name)
                            .put_cbor(id, doc)
                            .map_err(|e| bad(format!("document {id}: {e}")))?;
                        summary.entities += 1;
                        pending += doc.len();
                    }
                    if pending >= RESTORE_TXN_BYTES {
                        tx.commit().await?;
                        tx = db.begin().await?;
                        tx.set_durability(Durability::Relaxed);
                        pending = 0;
                    }
                }
                INDEX => {
                    let (coll, name, spec) = index_from_record(&payload)?;
                    summary.indexes += 1;
                    indexes.push((coll, name, spec));
                }
                END => {
                    r.end(&payload, &summary)?;
                    break;
                }
                other => return Err(bad(format!("unexpected frame kind {other:#04x}"))),
            }
        }
        tx.commit().await?;
        for (coll, name, spec) in indexes {
            db.collection(&coll)
                .create_index(&name, spec)
                .await
                .map_err(|e| match e {
                    e @ (Error::Io { .. } | Error::FailStopped { .. }) => e,
                    e => bad(format!("index {name:?} of {coll:?}: {e}")),
                })?;
        }
        db.checkpoint().await?;
        summary.bytes = r.bytes;
        Ok((db, summary))
    }
}

/// Check a backup without restoring it: magic, version, every frame's checksum, the frame
/// order, every document's CBOR, the counts and the SHA-256 of the whole file. Returns what
/// it holds; a damaged or truncated file gives [`Error::InvalidBackup`].
pub async fn verify_backup<R: BackupSource + ?Sized>(source: &mut R) -> Result<BackupSummary> {
    let mut r = Reader::new(source);
    let mut summary = r.header().await?;
    let mut collections = std::collections::BTreeSet::new();
    let mut indexes = std::collections::BTreeSet::new();
    let max_doc = Options::default().max_document_bytes;
    loop {
        let (kind, payload) = r.frame().await?;
        match kind {
            COLLECTION => {
                let name = collection_name(&payload)?;
                crate::catalog::check_name(&name)
                    .map_err(|e| bad(format!("collection frame: {e}")))?;
                if !collections.insert(name.clone()) {
                    return Err(bad(format!("collection {name:?} appears twice")));
                }
                summary.collections += 1;
            }
            ENTITIES => {
                if collections.is_empty() {
                    return Err(bad("entities before any collection"));
                }
                for (id, doc) in entities(&payload)? {
                    if doc.len() > max_doc {
                        return Err(bad(format!(
                            "document {id} has {} bytes, more than the default limit of {max_doc}",
                            doc.len()
                        )));
                    }
                    cbor::validate_canonical(doc)
                        .map_err(|e| bad(format!("document {id} is not canonical CBOR: {e}")))?;
                    summary.entities += 1;
                }
            }
            INDEX => {
                let (coll, name, spec) = index_from_record(&payload)?;
                spec.check(&name)
                    .map_err(|e| bad(format!("index frame: {e}")))?;
                if !collections.contains(&coll) || !indexes.insert((coll.clone(), name.clone())) {
                    return Err(bad(format!(
                        "index {name:?} of {coll:?}: unknown collection or defined twice"
                    )));
                }
                summary.indexes += 1;
            }
            END => {
                r.end(&payload, &summary)?;
                summary.bytes = r.bytes;
                return Ok(summary);
            }
            other => return Err(bad(format!("unexpected frame kind {other:#04x}"))),
        }
    }
}

/// Reads frames, keeping the running hash.
struct Reader<'a, R: BackupSource + ?Sized> {
    source: &'a mut R,
    buf: Vec<u8>,
    hash: Sha256,
    /// The hash of everything before the frame being read.
    hash_before: Option<Sha256>,
    bytes: u64,
    eof: bool,
}

impl<'a, R: BackupSource + ?Sized> Reader<'a, R> {
    fn new(source: &'a mut R) -> Self {
        Reader {
            source,
            buf: Vec::new(),
            hash: Sha256::new(),
            hash_before: None,
            bytes: 0,
            eof: false,
        }
    }

    /// Exactly `n` bytes, or a truncation error.
    async fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        while self.buf.len() < n && !self.eof {
            let more = self
                .source
                .read((n - self.buf.len()).max(64 << 10))
                .await
                .map_err(stream_err("reading the backup", "read"))?;
            if more.is_empty() {
                self.eof = true;
            }
            self.buf.extend_from_slice(&more);
        }
        if self.buf.len() < n {
            return Err(bad(format!(
                "truncated: the file ends after {} bytes, before the end frame",
                self.bytes + self.buf.len() as u64
            )));
        }
        let rest = self.buf.split_off(n);
        let out = std::mem::replace(&mut self.buf, rest);
        self.hash.update(&out);
        self.bytes += n as u64;
        Ok(out)
    }

    async fn header(&mut self) -> Result<BackupSummary> {
        let head = self.take(9).await?;
        if &head[..8] != MAGIC {
            return Err(bad("not an EntiDB backup (wrong magic)"));
        }
        if head[8] != VERSION {
            return Err(bad(format!(
                "backup format version {} is not supported (this build reads {VERSION})",
                head[8]
            )));
        }
        let (kind, payload) = self.frame().await?;
        if kind != HEADER {
            return Err(bad("the first frame is not the header"));
        }
        let v = cbor::decode(&payload).map_err(|e| bad(format!("header: {e}")))?;
        let num = |k: &str| v.get(k).and_then(Value::as_u64);
        if num("format") != Some(u64::from(VERSION)) {
            return Err(bad("header: unsupported format"));
        }
        Ok(BackupSummary {
            sequence: num("sequence").ok_or_else(|| bad("header: no sequence"))?,
            created_ms: num("created_ms").unwrap_or(0),
            ..BackupSummary::default()
        })
    }

    async fn frame(&mut self) -> Result<(u8, Vec<u8>)> {
        self.hash_before = Some(self.hash.clone());
        let at = self.bytes;
        let head = self.take(5).await?;
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(bad(format!(
                "frame at byte {at} claims {len} bytes (limit {MAX_FRAME}): damaged"
            )));
        }
        let payload = self.take(len).await?;
        let crc = self.take(4).await?;
        let mut want = crc32c::crc32c(&head);
        want = crc32c::crc32c_append(want, &payload);
        if u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) != want {
            return Err(bad(format!("frame at byte {at}: checksum mismatch")));
        }
        Ok((kind, payload))
    }

    /// Check the end frame against what was read, and that nothing follows it.
    fn end(&mut self, payload: &[u8], summary: &BackupSummary) -> Result<()> {
        let v = cbor::decode(payload).map_err(|e| bad(format!("end frame: {e}")))?;
        let num = |k: &str| v.get(k).and_then(Value::as_u64);
        if num("collections") != Some(summary.collections)
            || num("entities") != Some(summary.entities)
        {
            return Err(bad("end frame: the counts do not match the frames"));
        }
        let want = v
            .get("sha256")
            .and_then(Value::as_bytes)
            .ok_or_else(|| bad("end frame: no sha256"))?;
        let got = self
            .hash_before
            .take()
            .ok_or_else(|| bad("end frame without a hash"))?
            .finalize();
        if want != &got[..] {
            return Err(bad("the SHA-256 of the file does not match its end frame"));
        }
        if !self.buf.is_empty() {
            return Err(bad("bytes after the end frame"));
        }
        Ok(())
    }
}

fn collection_name(payload: &[u8]) -> Result<String> {
    let v = cbor::decode(payload).map_err(|e| bad(format!("collection frame: {e}")))?;
    v.get("name")
        .and_then(Value::as_text)
        .map(str::to_owned)
        .ok_or_else(|| bad("collection frame without a name"))
}

fn entities(payload: &[u8]) -> Result<Vec<(EntityId, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < 20 {
            return Err(bad("entity frame: short entry"));
        }
        let id = EntityId::from_slice(&rest[..16]).ok_or_else(|| bad("entity frame: bad id"))?;
        let len = u32::from_le_bytes([rest[16], rest[17], rest[18], rest[19]]) as usize;
        let doc = rest
            .get(20..20 + len)
            .ok_or_else(|| bad("entity frame: a document runs past the frame"))?;
        out.push((id, doc));
        rest = &rest[20 + len..];
    }
    Ok(out)
}

fn index_record(collection: &str, def: &IndexDef) -> Vec<u8> {
    let mut v = cbor::decode(&def.encode_record()).unwrap_or(Value::Null);
    if let Value::Map(m) = &mut v {
        m.push((Value::from("collection"), Value::from(collection)));
        m.push((Value::from("name"), Value::from(def.name.as_str())));
    }
    cbor::encode(&v)
}

fn index_from_record(payload: &[u8]) -> Result<(String, String, IndexSpec)> {
    let v = cbor::decode(payload).map_err(|e| bad(format!("index frame: {e}")))?;
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_text)
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("index frame without {k}")))
    };
    let (coll, name) = (text("collection")?, text("name")?);
    let def = IndexDef::decode_record(&name, payload)
        .ok_or_else(|| bad(format!("index frame for {name:?}: malformed definition")))?;
    Ok((coll, name, def.spec))
}
