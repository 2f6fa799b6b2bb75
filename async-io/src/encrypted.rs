//! Encryption at rest: a [`Backend`] wrapper that stores every byte of every file as
//! AES-256-GCM encrypted chunks.
//!
//! # Format
//!
//! `ENCRYPTION` (plaintext, at the root, written once when the database is created):
//!
//! ```text
//! "EDBKEY01" | kdf u8 (0 raw key, 1 Argon2id) | m_kib u32 LE | t u32 LE | p u32 LE | salt [16] | check [32]
//! ```
//!
//! `check` is HMAC-SHA256(key, "entidb key check"): a wrong key is refused before any file is
//! read ([`IoError::WrongKey`]). The lock file `LOCK` is not encrypted (it holds nothing).
//!
//! Every other file: a 64-byte header, then chunk slots.
//!
//! ```text
//! header = "EDBENC01" | version u8 (1) | slots u8 (1 or 2) | 0 u16 | chunk u32 LE (4096)
//!        | file_id [16] | key_check [16] | 0 [16]
//! slot   = counter u64 LE | nonce [12] | AES-256-GCM(used u32 LE | data [chunk]) | tag [16]
//! ```
//!
//! Logical chunk `i` lives in slot `s` at `64 + (i * slots + s) * (chunk + 40)`. The
//! associated data of a slot is `file_id | i | s | counter`, so a slot moved to another place
//! or file, or an old counter replayed into another slot, fails authentication
//! ([`IoError::Tampered`]); so does every flipped bit. `key_check` is
//! HMAC-SHA256(key, "file" | file_id) truncated. Every slot write gets a fresh nonce (a
//! rewrite too): each open file handle draws a random 96-bit base from the backend's entropy
//! and seals its `n`-th slot with `base XOR n` (`n` a 64-bit count in the low bytes), the
//! construction TLS 1.3 uses for record nonces. Two handles' nonces can only meet if their
//! random bases are within the number of writes of each other: as unlikely as two random
//! nonces colliding, without an entropy call per write.
//!
//! **Durability.** A chunk that may be durable (written before a `sync_data` began, or found
//! on disk at open) is never overwritten in place in a two-slot file: its new version goes to
//! the other slot with a higher counter, and reads take the valid slot with the highest
//! counter. So a write torn by a crash can only destroy data that was never synced. WAL files
//! (`wal-*`) have two slots, because the engine appends to a synced WAL; every other file is
//! written once and synced once (segments, the manifest) and has one slot. A new chunk's
//! unused second slot is written as zeros (they never authenticate) in the same write as its
//! first, so that long appends are contiguous on disk.
//!
//! **Length and torn writes.** The logical length is `(chunks - 1) * chunk + used` of the last
//! chunk; a last chunk that no slot authenticates was never synced and is not counted (a torn
//! tail). In a WAL file, a chunk in the middle that no slot authenticates (it was being
//! written, unsynced, when the machine stopped, while later chunks landed) reads as zeros:
//! the WAL's own checksums and durability markers then tell a torn tail from corruption,
//! as for a plaintext WAL. So damage to the last, unattested WAL records of an encrypted
//! database reads as a torn tail, exactly as it would in plaintext; everywhere else (and in
//! every other file) a chunk that fails authentication is an error.
//!
//! **What it protects**: the contents of every file (documents, keys, index entries, the WAL,
//! the manifest) against reading and undetected modification. **What it does not**: file
//! names, sizes (to within a chunk), the number of files and when they change, and the
//! access pattern; and it does not protect a running process's memory or a key that leaks.

use std::collections::BTreeMap;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::gcm::{Gcm, TAG_LEN};
use crate::{Backend, BoxFuture, Clock, Entropy, File, IoError, IoResult, LockGuard, OpenMode};

/// The key file's name.
pub const KEY_FILE: &str = "ENCRYPTION";
/// The next key file, while a rekey runs.
const NEXT_KEY_FILE: &str = "ENCRYPTION.next";
/// The database's lock file (the engine's; this layer takes it to write key files).
const LOCK_FILE: &str = "LOCK";
const KEY_MAGIC: &[u8; 8] = b"EDBKEY01";
const FILE_MAGIC: &[u8; 8] = b"EDBENC01";
const HEADER: u64 = 64;
const CHUNK: usize = 4096;
/// Chunk size of WAL files. (1 KiB was tried for cheaper small appends: it did not help
/// W2 and made bulk loads, which write many more chunks, 1.8-2x slower; docs/benchmarks.md.)
const WAL_CHUNK: u64 = 4096;
/// Largest single write of sealed slots (a long append is cut into writes of this size).
const RUN_MAX: usize = 1 << 20;
/// Bytes a slot adds to a chunk: counter, nonce, the `used` field, tag.
const SLOT_OVERHEAD: usize = 8 + 12 + 4 + 16;

/// Argon2id cost parameters for a passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Parallelism.
    pub p: u32,
}

impl Default for KdfParams {
    /// OWASP's recommendation: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        KdfParams {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

/// Where the key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// A raw 256-bit key.
    Raw([u8; 32]),
    /// A passphrase, stretched with Argon2id (parameters and salt are stored in the key file).
    Passphrase(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Raw(_) => f.write_str("KeySource::Raw(..)"),
            KeySource::Passphrase(_) => f.write_str("KeySource::Passphrase(..)"),
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length; this cannot fail.
    let mut m = match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The parsed key file.
#[derive(Debug, Clone)]
struct KeyFile {
    kdf: u8,
    params: KdfParams,
    salt: [u8; 16],
    check: [u8; 32],
}

impl KeyFile {
    fn encode(&self) -> Vec<u8> {
        let mut v = KEY_MAGIC.to_vec();
        v.push(self.kdf);
        v.extend_from_slice(&self.params.m_kib.to_le_bytes());
        v.extend_from_slice(&self.params.t.to_le_bytes());
        v.extend_from_slice(&self.params.p.to_le_bytes());
        v.extend_from_slice(&self.salt);
        v.extend_from_slice(&self.check);
        v
    }

    fn decode(b: &[u8]) -> Option<KeyFile> {
        if b.len() != 8 + 1 + 12 + 16 + 32 || &b[..8] != KEY_MAGIC {
            return None;
        }
        let u = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Some(KeyFile {
            kdf: b[8],
            params: KdfParams {
                m_kib: u(9),
                t: u(13),
                p: u(17),
            },
            salt: b[21..37].try_into().ok()?,
            check: b[37..69].try_into().ok()?,
        })
    }
}

fn derive(source: &KeySource, kdf: u8, params: KdfParams, salt: &[u8; 16]) -> IoResult<[u8; 32]> {
    let bad = |detail: String| IoError::KeyDerivation { detail };
    match (source, kdf) {
        (KeySource::Raw(k), 0) => Ok(*k),
        (KeySource::Passphrase(p), 1) => {
            let params = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
                .map_err(|e| bad(e.to_string()))?;
            let a =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = [0u8; 32];
            a.hash_password_into(p.as_bytes(), salt, &mut out)
                .map_err(|e| bad(e.to_string()))?;
            Ok(out)
        }
        (KeySource::Raw(_), _) => Err(bad(
            "this database's key comes from a passphrase, not a raw key".into(),
        )),
        (KeySource::Passphrase(_), _) => {
            Err(bad("this database uses a raw key, not a passphrase".into()))
        }
    }
}

fn cipher_unavailable() -> IoError {
    IoError::Cipher {
        detail: "the AES-256-GCM implementation refused the key".into(),
    }
}

/// The key material shared by every file of one backend.
struct Keys {
    cipher: Gcm,
    key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// A backend whose files are encrypted (see the module documentation).
#[derive(Debug)]
pub struct EncryptedBackend {
    inner: Arc<dyn Backend>,
    keys: Arc<Keys>,
    entropy: Arc<dyn Entropy>,
}

/// Whether `names` (a directory listing) show a plaintext database: files, and neither a
/// key file nor the next one of a rekey.
fn holds_plaintext(names: &[String]) -> bool {
    !names.iter().any(|n| n == KEY_FILE || n == NEXT_KEY_FILE)
        && names
            .iter()
            .any(|n| n != LOCK_FILE && !n.ends_with(".tmp") && !n.ends_with(".rekey"))
}

/// Whether `names` (a directory listing) show a rekey that has not finished.
fn rekey_unfinished(names: &[String]) -> bool {
    names
        .iter()
        .any(|n| n == NEXT_KEY_FILE || n.ends_with(".rekey"))
}

/// Whether the files of `path` get two slots per chunk (see "Durability").
fn two_slots(path: &str) -> bool {
    path.rsplit('/').next().unwrap_or(path).starts_with("wal-")
}

async fn read_all(inner: &dyn Backend, path: &str) -> IoResult<Option<Vec<u8>>> {
    if !inner.exists(path).await? {
        return Ok(None);
    }
    let f = inner.open(path, OpenMode::Existing).await?;
    let n = f.len().await?;
    Ok(Some(f.read_at(0, n as usize).await?))
}

async fn write_synced(inner: &dyn Backend, path: &str, bytes: Vec<u8>) -> IoResult<()> {
    let tmp = format!("{path}.tmp");
    let f = inner.open(&tmp, OpenMode::Create).await?;
    f.set_len(0).await?;
    f.write_at(0, bytes).await?;
    f.sync_data().await?;
    inner.rename(&tmp, path).await?;
    inner.sync_dir("").await
}

impl EncryptedBackend {
    /// Open the encrypted database on `inner`, creating its key file (with default Argon2id
    /// parameters for a passphrase) if the backend holds no database yet. A wrong key fails
    /// with [`IoError::WrongKey`]; a backend that holds an unencrypted database fails with
    /// [`IoError::NotEncrypted`].
    pub async fn open(inner: Arc<dyn Backend>, key: KeySource) -> IoResult<EncryptedBackend> {
        Self::open_with(inner, key, KdfParams::default()).await
    }

    /// [`EncryptedBackend::open`] with the Argon2id parameters a new database gets.
    ///
    /// Opening writes only in two cases, and then under the database's lock (`LOCK`): it
    /// creates the key file of a new database, and it finishes (or undoes) a rekey that was
    /// interrupted. If another handle holds the lock then, the open fails with
    /// [`IoError::Locked`]: the holder can only be a running rekey or another open creating the
    /// same database, and writing beside it would leave files under two keys. An existing
    /// database with nothing to finish is opened without the lock (a read-only handle may look
    /// at a database a server is writing).
    pub async fn open_with(
        inner: Arc<dyn Backend>,
        key: KeySource,
        params: KdfParams,
    ) -> IoResult<EncryptedBackend> {
        let names = inner.list("").await?;
        // Said at once, whether or not a writer holds the lock.
        if holds_plaintext(&names) {
            return Err(IoError::NotEncrypted {
                path: KEY_FILE.to_owned(),
            });
        }
        let needs_writes = !names.iter().any(|n| n == KEY_FILE) || rekey_unfinished(&names);
        let _guard = if needs_writes {
            Some(inner.lock(LOCK_FILE).await?)
        } else {
            None
        };
        Self::open_locked(inner, key, params, needs_writes).await
    }

    /// The open itself. `may_write`: the caller holds the lock, so an interrupted rekey may be
    /// finished and a missing key file created.
    async fn open_locked(
        inner: Arc<dyn Backend>,
        key: KeySource,
        params: KdfParams,
        may_write: bool,
    ) -> IoResult<EncryptedBackend> {
        if may_write {
            Self::finish_rekey(&*inner).await?;
        }
        let raw = match read_all(&*inner, KEY_FILE).await? {
            Some(b) => b,
            None => {
                // Without the lock, the caller saw a key file that is gone now (no rekey
                // removes it: the commit renames over it); with it, files that appeared
                // since the caller looked are a plaintext database.
                if !may_write || holds_plaintext(&inner.list("").await?) {
                    return Err(IoError::NotEncrypted {
                        path: KEY_FILE.to_owned(),
                    });
                }
                let kf = Self::new_key_file(&key, params, &*inner.entropy())?;
                write_synced(&*inner, KEY_FILE, kf.encode()).await?;
                kf.encode()
            }
        };
        let kf = KeyFile::decode(&raw).ok_or_else(|| IoError::Tampered {
            path: KEY_FILE.to_owned(),
            detail: "malformed key file".into(),
        })?;
        let k = derive(&key, kf.kdf, kf.params, &kf.salt)?;
        if hmac(&k, &[b"entidb key check"]) != kf.check {
            return Err(IoError::WrongKey {
                path: KEY_FILE.to_owned(),
            });
        }
        Ok(EncryptedBackend {
            entropy: inner.entropy(),
            inner,
            keys: Arc::new(Keys {
                cipher: Gcm::new(&k).ok_or_else(cipher_unavailable)?,
                key: k,
            }),
        })
    }

    fn new_key_file(
        key: &KeySource,
        params: KdfParams,
        entropy: &dyn Entropy,
    ) -> IoResult<KeyFile> {
        let mut salt = [0u8; 16];
        entropy.try_fill(&mut salt)?;
        let kdf = match key {
            KeySource::Raw(_) => 0,
            KeySource::Passphrase(_) => 1,
        };
        let k = derive(key, kdf, params, &salt)?;
        Ok(KeyFile {
            kdf,
            params,
            salt,
            check: hmac(&k, &[b"entidb key check"]),
        })
    }

    /// Whether `inner` holds an encrypted database (it has a key file).
    pub async fn is_encrypted(inner: &dyn Backend) -> IoResult<bool> {
        inner.exists(KEY_FILE).await
    }

    /// Re-encrypt every file of a closed database with a new key. Crash-safe: the new key
    /// file is first written as `ENCRYPTION.next`; every file is copied to `NAME.rekey` under
    /// the new key and synced; renaming `ENCRYPTION.next` over `ENCRYPTION` is the commit
    /// point; then the copies replace the originals. The next open finishes or undoes an
    /// interrupted rekey: with `ENCRYPTION.next` still there it removes the copies (the old
    /// key stays valid), without it it renames them into place (only the new key opens it).
    ///
    /// It holds the database's lock (`LOCK`) from start to end, so it fails with
    /// [`IoError::Locked`] while the database is open read-write, and an open that finds its
    /// files fails with `Locked` too (an open finishing "an interrupted rekey" beside a
    /// running one would mix files under two keys). A read-only open that started before the
    /// rekey's files appeared goes on with the old key, and its reads of files the rekey
    /// replaced fail authentication (an error, not damage).
    pub async fn rekey(
        inner: Arc<dyn Backend>,
        old: KeySource,
        new: KeySource,
        params: KdfParams,
    ) -> IoResult<()> {
        let _guard = inner.lock(LOCK_FILE).await?;
        let from = Self::open_locked(inner.clone(), old, params, true).await?;
        let kf = Self::new_key_file(&new, params, &*inner.entropy())?;
        let k = derive(&new, kf.kdf, kf.params, &kf.salt)?;
        let to = EncryptedBackend {
            entropy: inner.entropy(),
            inner: inner.clone(),
            keys: Arc::new(Keys {
                cipher: Gcm::new(&k).ok_or_else(cipher_unavailable)?,
                key: k,
            }),
        };
        write_synced(&*inner, NEXT_KEY_FILE, kf.encode()).await?;
        let names: Vec<String> = inner
            .list("")
            .await?
            .into_iter()
            .filter(|n| {
                n != LOCK_FILE
                    && n != KEY_FILE
                    && n != NEXT_KEY_FILE
                    && !n.ends_with(".tmp")
                    && !n.ends_with(".rekey")
            })
            .collect();
        for name in &names {
            let src = from.open(name, OpenMode::Existing).await?;
            let len = src.len().await?;
            let dst = to
                .open_file(&format!("{name}.rekey"), OpenMode::Create, two_slots(name))
                .await?;
            let mut at = 0u64;
            while at < len {
                let n = ((len - at) as usize).min(1 << 20);
                dst.write_at(at, src.read_at(at, n).await?).await?;
                at += n as u64;
            }
            dst.sync_data().await?;
        }
        inner.sync_dir("").await?;
        // The commit point.
        inner.rename(NEXT_KEY_FILE, KEY_FILE).await?;
        inner.sync_dir("").await?;
        Self::finish_rekey(&*inner).await
    }

    /// Finish or undo an interrupted rekey (see [`EncryptedBackend::rekey`]). The caller holds
    /// the lock.
    async fn finish_rekey(inner: &dyn Backend) -> IoResult<()> {
        let names = inner.list("").await?;
        let committed = !names.iter().any(|n| n == NEXT_KEY_FILE);
        let copies: Vec<&String> = names.iter().filter(|n| n.ends_with(".rekey")).collect();
        if copies.is_empty() && committed {
            return Ok(());
        }
        for copy in copies {
            if committed {
                inner.rename(copy, copy.trim_end_matches(".rekey")).await?;
            } else {
                inner.remove(copy).await?;
            }
        }
        if !committed {
            inner.remove(NEXT_KEY_FILE).await?;
        }
        inner.sync_dir("").await
    }

    async fn open_file(&self, path: &str, mode: OpenMode, two: bool) -> IoResult<Arc<dyn File>> {
        let f = self.inner.open(path, mode).await?;
        let file = EncFile::open(f, self.keys.clone(), self.entropy.clone(), two, path).await?;
        Ok(Arc::new(file))
    }
}

impl Backend for EncryptedBackend {
    fn open(&self, path: &str, mode: OpenMode) -> BoxFuture<'_, IoResult<Arc<dyn File>>> {
        let path = path.to_owned();
        Box::pin(async move { self.open_file(&path, mode, two_slots(&path)).await })
    }
    fn remove(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, IoResult<()>> {
        self.inner.rename(from, to)
    }
    fn list(&self, dir: &str) -> BoxFuture<'_, IoResult<Vec<String>>> {
        let dir = dir.to_owned();
        Box::pin(async move {
            let mut names = self.inner.list(&dir).await?;
            if dir.is_empty() {
                names.retain(|n| n != KEY_FILE && n != NEXT_KEY_FILE);
            }
            Ok(names)
        })
    }
    fn exists(&self, path: &str) -> BoxFuture<'_, IoResult<bool>> {
        // The key files belong to this layer; the database above never sees them.
        if path == KEY_FILE || path == NEXT_KEY_FILE {
            return Box::pin(std::future::ready(Ok(false)));
        }
        self.inner.exists(path)
    }
    fn create_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        self.inner.create_dir(path)
    }
    fn remove_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        self.inner.remove_dir(path)
    }
    fn sync_dir(&self, dir: &str) -> BoxFuture<'_, IoResult<()>> {
        self.inner.sync_dir(dir)
    }
    fn lock(&self, path: &str) -> BoxFuture<'_, IoResult<Box<dyn LockGuard>>> {
        self.inner.lock(path)
    }
    fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock()
    }
    fn entropy(&self) -> Arc<dyn Entropy> {
        self.entropy.clone()
    }
    fn name(&self) -> &'static str {
        "encrypted"
    }
    fn background_threads(&self) -> bool {
        self.inner.background_threads()
    }
}

/// What a handle knows about one chunk of a two-slot file.
#[derive(Debug, Clone, Copy)]
struct SlotState {
    /// The slot holding the current version (`None`: no slot authenticates).
    active: Option<u8>,
    counter: u64,
    /// Written since the last `sync_data` began: may be overwritten in place.
    dirty: bool,
}

#[derive(Debug)]
struct FileState {
    len: u64,
    slots: BTreeMap<u64, SlotState>,
    /// The chunks marked dirty since the last sync began (so a sync clears only those).
    dirty: Vec<u64>,
    /// The last chunk written, in plaintext (appends patch it without reading).
    tail: Option<(u64, Vec<u8>)>,
}

/// One encrypted file.
#[derive(Debug)]
struct EncFile {
    inner: Arc<dyn File>,
    keys: Arc<Keys>,
    /// The random base of this handle's nonces, and how many it has used.
    nonce_base: [u8; 12],
    nonces: std::sync::atomic::AtomicU64,
    file_id: [u8; 16],
    slots: u64,
    /// Plaintext bytes per chunk, and bytes per slot.
    chunk: u64,
    slot: u64,
    path: String,
    state: async_lock::Mutex<FileState>,
}

impl EncFile {
    /// From now on every chunk written so far may be durable (called before a sync).
    async fn mark_synced(&self) {
        let mut st = self.state.lock().await;
        let dirty = std::mem::take(&mut st.dirty);
        for i in dirty {
            if let Some(s) = st.slots.get_mut(&i) {
                s.dirty = false;
            }
        }
    }

    async fn open(
        inner: Arc<dyn File>,
        keys: Arc<Keys>,
        entropy: Arc<dyn Entropy>,
        two: bool,
        path: &str,
    ) -> IoResult<EncFile> {
        let plen = inner.len().await?;
        let slots = if two { 2 } else { 1 };
        let chunk: u64 = if two { WAL_CHUNK } else { CHUNK as u64 };
        let tampered = |detail: &str| IoError::Tampered {
            path: path.to_owned(),
            detail: detail.to_owned(),
        };
        let file_id = if plen < HEADER {
            // New (or created and never synced): write a fresh header.
            let mut id = [0u8; 16];
            entropy.try_fill(&mut id)?;
            let mut h = FILE_MAGIC.to_vec();
            h.push(1);
            h.push(slots as u8);
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&(chunk as u32).to_le_bytes());
            h.extend_from_slice(&id);
            h.extend_from_slice(&hmac(&keys.key, &[b"file", &id])[..16]);
            h.extend_from_slice(&[0u8; 16]);
            inner.set_len(0).await?;
            inner.write_at(0, h).await?;
            // Durable at once: a header that later fails to read is then damage, never a
            // write lost in a crash.
            inner.sync_data().await?;
            id
        } else {
            let h = inner.read_at(0, HEADER as usize).await?;
            if &h[..8] != FILE_MAGIC {
                return Err(IoError::NotEncrypted {
                    path: path.to_owned(),
                });
            }
            if h[8] != 1 || u64::from(h[9]) != slots || h[12..16] != (chunk as u32).to_le_bytes() {
                return Err(tampered("unsupported or altered file header"));
            }
            let id: [u8; 16] = h[16..32].try_into().map_err(|_| tampered("short header"))?;
            if h[32..48] != hmac(&keys.key, &[b"file", &id])[..16] {
                return Err(IoError::WrongKey {
                    path: path.to_owned(),
                });
            }
            id
        };
        let mut nonce_base = [0u8; 12];
        entropy.try_fill(&mut nonce_base)?;
        let f = EncFile {
            inner,
            keys,
            nonce_base,
            nonces: std::sync::atomic::AtomicU64::new(0),
            file_id,
            slots,
            chunk,
            slot: chunk + SLOT_OVERHEAD as u64,
            path: path.to_owned(),
            state: async_lock::Mutex::new(FileState {
                len: 0,
                slots: BTreeMap::new(),
                dirty: Vec::new(),
                tail: None,
            }),
        };
        // The logical length: full chunks before the last, plus the last one's `used`.
        // A pair whose second slot was never written still holds a chunk.
        let chunks = plen
            .saturating_sub(HEADER)
            .div_ceil((chunk + SLOT_OVERHEAD as u64) * slots);
        let mut st = f.state.lock().await;
        let mut n = chunks;
        while n > 0 {
            match f.load(&mut st, n - 1).await? {
                Some(plain) => {
                    st.len = (n - 1) * chunk + used_of(&plain, chunk);
                    break;
                }
                // A last chunk no slot authenticates was never synced: a torn tail.
                None => n -= 1,
            }
        }
        drop(st);
        Ok(f)
    }

    fn slot_offset(&self, chunk: u64, slot: u8) -> u64 {
        HEADER + (chunk * self.slots + u64::from(slot)) * self.slot
    }

    fn aad(&self, chunk: u64, slot: u8, counter: u64) -> [u8; 33] {
        let mut a = [0u8; 33];
        a[..16].copy_from_slice(&self.file_id);
        a[16..24].copy_from_slice(&chunk.to_le_bytes());
        a[24] = slot;
        a[25..].copy_from_slice(&counter.to_le_bytes());
        a
    }

    /// Authenticate and decrypt one slot as read from disk (decrypted in place: no copy).
    fn open_slot(&self, chunk: u64, slot: u8, mut raw: Vec<u8>) -> Option<(u64, Vec<u8>)> {
        if raw.len() != self.slot as usize {
            return None;
        }
        let counter = u64::from_le_bytes(raw[..8].try_into().ok()?);
        let nonce = <[u8; 12]>::try_from(&raw[8..20]).ok()?;
        let aad = self.aad(chunk, slot, counter);
        let len = self.keys.cipher.open(nonce, &aad, &mut raw[20..])?;
        raw.truncate(20 + len);
        raw.drain(..20);
        Some((counter, raw))
    }

    /// The slot bytes of `plain` (`counter | nonce | ciphertext | tag`), encrypted in place
    /// in the one buffer that is written.
    fn seal(&self, chunk: u64, slot: u8, counter: u64, plain: &[u8]) -> IoResult<Vec<u8>> {
        let n = self
            .nonces
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut nonce = self.nonce_base;
        for (b, x) in nonce[4..].iter_mut().zip(n.to_be_bytes()) {
            *b ^= x;
        }
        let aad = self.aad(chunk, slot, counter);
        let mut out = Vec::with_capacity(self.slot as usize);
        out.extend_from_slice(&counter.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .keys
            .cipher
            .seal(nonce, &aad, &mut out[20..])
            .ok_or_else(|| IoError::Cipher {
                detail: format!("sealing a chunk of {} failed", self.path),
            })?;
        out.extend_from_slice(&tag);
        debug_assert_eq!(out.len(), 20 + plain.len() + TAG_LEN);
        Ok(out)
    }

    /// Read and authenticate chunk `i` (its newest valid slot); `None` if no slot
    /// authenticates. Records the slot state of two-slot files.
    async fn load(&self, st: &mut FileState, i: u64) -> IoResult<Option<Vec<u8>>> {
        if let Some((ti, plain)) = &st.tail
            && *ti == i
        {
            return Ok(Some(plain.clone()));
        }
        let mut best: Option<(u8, u64, Vec<u8>)> = None;
        for s in 0..self.slots as u8 {
            // A slot past the end of the file (never written) is simply not valid.
            let raw = match self
                .inner
                .read_at(self.slot_offset(i, s), self.slot as usize)
                .await
            {
                Ok(r) => r,
                Err(IoError::UnexpectedEof { .. }) => continue,
                Err(e) => return Err(e),
            };
            if let Some((c, p)) = self.open_slot(i, s, raw)
                && best.as_ref().is_none_or(|b| c > b.1)
            {
                best = Some((s, c, p));
            }
        }
        if self.slots == 2 {
            let dirty = st.slots.get(&i).is_some_and(|s| s.dirty);
            st.slots.insert(
                i,
                SlotState {
                    active: best.as_ref().map(|b| b.0),
                    counter: best.as_ref().map_or(0, |b| b.1),
                    dirty,
                },
            );
        }
        Ok(best.map(|b| b.2))
    }

    /// Write the plaintext of chunk `i` (`used` bytes of data) to the right slot.
    async fn store(&self, st: &mut FileState, i: u64, plain: Vec<u8>) -> IoResult<()> {
        let saved = st.slots.get(&i).copied();
        let dirty_len = st.dirty.len();
        let (at, bytes) = self.place(st, i, plain).await?;
        let r = self.inner.write_at(at, bytes).await;
        if r.is_err() {
            // As in `write_locked`: the chunk keeps the slot state it had.
            match saved {
                Some(s) => st.slots.insert(i, s),
                None => st.slots.remove(&i),
            };
            st.dirty.truncate(dirty_len);
            st.tail = None;
        }
        r
    }

    /// Choose the slot for a new version of chunk `i`, record it, and seal it: the offset
    /// and the bytes to write there. When neither slot of a two-slot chunk holds anything
    /// (a chunk past the end, or one no slot authenticates) the bytes also cover the unused
    /// second slot with zeros (which never authenticate), so that the new chunks of a long
    /// append form one contiguous write: one extent and one call instead of a file full of
    /// holes written 4 KiB at a time.
    async fn place(&self, st: &mut FileState, i: u64, plain: Vec<u8>) -> IoResult<(u64, Vec<u8>)> {
        let mut fill = false;
        let (slot, counter) = if self.slots == 2 {
            let fresh = SlotState {
                active: None,
                counter: 0,
                dirty: false,
            };
            let s = match st.slots.get(&i) {
                Some(s) => *s,
                // Past the logical end no slot authenticates (open counted every chunk that
                // does), so there is nothing durable to keep: no need to read it.
                None if i * self.chunk >= st.len => fresh,
                None => {
                    self.load(st, i).await?;
                    st.slots.get(&i).copied().unwrap_or(fresh)
                }
            };
            let slot = match (s.active, s.dirty) {
                // Written since the last sync began: never durable, overwrite in place.
                (Some(a), true) => a,
                // Possibly durable: the other slot, so a torn write cannot destroy it.
                (Some(a), false) => 1 - a,
                (None, _) => {
                    fill = true;
                    0
                }
            };
            if !s.dirty {
                st.dirty.push(i);
            }
            st.slots.insert(
                i,
                SlotState {
                    active: Some(slot),
                    counter: s.counter + 1,
                    dirty: true,
                },
            );
            (slot, s.counter + 1)
        } else {
            (0, 0)
        };
        let mut sealed = self.seal(i, slot, counter, &plain)?;
        if fill {
            sealed.resize(2 * self.slot as usize, 0);
        }
        st.tail = Some((i, plain));
        Ok((self.slot_offset(i, slot), sealed))
    }

    /// The logical bytes of chunk `i` (zero-padded to a full chunk) for patching.
    async fn chunk_data(&self, st: &mut FileState, i: u64) -> IoResult<Vec<u8>> {
        let start = i * self.chunk;
        if start >= st.len {
            return Ok(vec![0u8; self.chunk as usize]);
        }
        match self.load(st, i).await? {
            Some(plain) => {
                let mut d = plain[4..].to_vec();
                d.resize(self.chunk as usize, 0);
                Ok(d)
            }
            // In a WAL file a chunk whose every version fails authentication was being
            // written, unsynced, when the machine stopped (later chunks may have landed): it
            // reads as zeros, and the WAL's own checksums and durability markers decide
            // between a torn tail and corruption, exactly as for a plaintext WAL.
            None if self.slots == 2 => Ok(vec![0u8; self.chunk as usize]),
            None => Err(IoError::Tampered {
                path: self.path.clone(),
                detail: format!("chunk {i} fails authentication (damaged or altered)"),
            }),
        }
    }

    /// The stored plaintext of chunk `i` (`used` u32 LE, then the chunk's bytes, zero-padded
    /// to a full chunk) for patching. The cached tail is moved out, not copied: `store` puts
    /// the patched chunk back.
    async fn take_plain(&self, st: &mut FileState, i: u64) -> IoResult<Vec<u8>> {
        let full = 4 + self.chunk as usize;
        match st.tail.take() {
            Some((ti, plain)) if ti == i && plain.len() == full => return Ok(plain),
            other => st.tail = other,
        }
        if i * self.chunk >= st.len {
            return Ok(vec![0u8; full]);
        }
        match self.load(st, i).await? {
            Some(mut plain) => {
                plain.resize(full, 0);
                Ok(plain)
            }
            // See `chunk_data`: an unauthenticated WAL chunk reads as zeros.
            None if self.slots == 2 => Ok(vec![0u8; full]),
            None => Err(IoError::Tampered {
                path: self.path.clone(),
                detail: format!("chunk {i} fails authentication (damaged or altered)"),
            }),
        }
    }

    async fn write_locked(&self, st: &mut FileState, offset: u64, data: &[u8]) -> IoResult<()> {
        // `place` records each chunk's new slot before its bytes are written. If a write
        // fails, the recorded state would claim a slot that holds nothing, and after the next
        // sync a write could go to the other slot: the only durable copy. So a failure puts
        // back the slot state of every chunk this call touched (their old slots are intact:
        // `place` never targets a possibly-durable slot) and drops the cached tail.
        let touched =
            offset.min(st.len) / self.chunk..(offset + data.len() as u64).div_ceil(self.chunk);
        let saved: Vec<(u64, Option<SlotState>)> = if self.slots == 2 {
            touched
                .clone()
                .map(|i| (i, st.slots.get(&i).copied()))
                .collect()
        } else {
            Vec::new()
        };
        let dirty_len = st.dirty.len();
        let r = self.write_chunks(st, offset, data).await;
        if r.is_err() {
            for (i, s) in saved {
                match s {
                    Some(s) => st.slots.insert(i, s),
                    None => st.slots.remove(&i),
                };
            }
            st.dirty.truncate(dirty_len);
            st.tail = None;
        }
        r
    }

    async fn write_chunks(&self, st: &mut FileState, offset: u64, data: &[u8]) -> IoResult<()> {
        let end = offset + data.len() as u64;
        let new_len = st.len.max(end);
        // The chunks the write touches, and the gap it zero-fills when it starts past the
        // end. Chunks after `end` keep their bytes (and their `used`, unless `end` grows the
        // file, in which case the last chunk is within this range).
        let first = offset.min(st.len) / self.chunk;
        let last = end.div_ceil(self.chunk);
        let mut run: Option<(u64, Vec<u8>)> = None;
        for i in first..last {
            let cstart = i * self.chunk;
            let cend = cstart + self.chunk;
            if cend <= offset && cend <= st.len {
                continue;
            }
            let mut plain = if offset <= cstart && end >= cend {
                vec![0u8; 4 + self.chunk as usize] // fully overwritten
            } else {
                self.take_plain(st, i).await?
            };
            // Bytes beyond the old length read as zeros (a gap).
            if st.len < cend {
                let from = st.len.saturating_sub(cstart) as usize;
                plain[4 + from.min(self.chunk as usize)..].fill(0);
            }
            let lo = offset.max(cstart);
            let hi = end.min(cend);
            if lo < hi {
                plain[4 + (lo - cstart) as usize..4 + (hi - cstart) as usize]
                    .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
            }
            let used = (new_len.min(cend) - cstart) as u32;
            plain[..4].copy_from_slice(&used.to_le_bytes());
            let (at, bytes) = self.place(st, i, plain).await?;
            // Adjacent slots go out in one write of up to `RUN_MAX` bytes.
            match &mut run {
                Some((start, buf)) if *start + buf.len() as u64 == at && buf.len() < RUN_MAX => {
                    buf.extend_from_slice(&bytes);
                }
                _ => {
                    if let Some((start, buf)) = run.take() {
                        self.inner.write_at(start, buf).await?;
                    }
                    run = Some((at, bytes));
                }
            }
        }
        if let Some((start, buf)) = run {
            self.inner.write_at(start, buf).await?;
        }
        st.len = new_len;
        Ok(())
    }
}

fn used_of(plain: &[u8], chunk: u64) -> u64 {
    plain
        .get(..4)
        .map_or(0, |u| {
            u64::from(u32::from_le_bytes([u[0], u[1], u[2], u[3]]))
        })
        .min(chunk)
}

impl File for EncFile {
    fn read_at(&self, offset: u64, len: usize) -> BoxFuture<'_, IoResult<Vec<u8>>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let end = offset + len as u64;
            if end > st.len {
                return Err(IoError::UnexpectedEof {
                    path: self.path.clone(),
                    offset,
                    len: len as u64,
                    file_len: st.len,
                });
            }
            let mut out = Vec::with_capacity(len);
            let mut at = offset;
            while at < end {
                let i = at / self.chunk;
                let d = self.chunk_data(&mut st, i).await?;
                let cstart = i * self.chunk;
                let hi = end.min(cstart + self.chunk);
                out.extend_from_slice(&d[(at - cstart) as usize..(hi - cstart) as usize]);
                at = hi;
            }
            Ok(out)
        })
    }

    fn write_at(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            self.write_locked(&mut st, offset, &data).await
        })
    }

    fn sync_data(&self) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async move {
            self.mark_synced().await;
            self.inner.sync_data().await
        })
    }

    fn sync_data_inline(&self) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async move {
            self.mark_synced().await;
            self.inner.sync_data_inline().await
        })
    }

    fn len(&self) -> BoxFuture<'_, IoResult<u64>> {
        Box::pin(async move { Ok(self.state.lock().await.len) })
    }

    fn set_len(&self, len: u64) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            if len >= st.len {
                let gap = vec![0u8; (len - st.len) as usize];
                let at = st.len;
                return self.write_locked(&mut st, at, &gap).await;
            }
            let chunks = len.div_ceil(self.chunk);
            if !len.is_multiple_of(self.chunk) {
                // Rewrite the new last chunk with its new `used`.
                let i = chunks - 1;
                let d = self.chunk_data(&mut st, i).await?;
                let used = (len - i * self.chunk) as u32;
                let mut plain = used.to_le_bytes().to_vec();
                plain.extend_from_slice(&d);
                plain[4 + used as usize..].fill(0);
                self.store(&mut st, i, plain).await?;
            }
            st.slots.retain(|i, _| *i < chunks);
            if st.tail.as_ref().is_some_and(|(i, _)| *i >= chunks) {
                st.tail = None;
            }
            st.len = len;
            self.inner
                .set_len(HEADER + chunks * self.slots * self.slot)
                .await
        })
    }

    fn path(&self) -> &str {
        &self.path
    }
}
