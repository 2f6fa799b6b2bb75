//! # entidb-io: the I/O seam of EntiDB
//!
//! Every byte the engine stores, every clock reading and every random number it uses goes
//! through the traits in this crate (PRODUCT.md invariant 12). That is what lets the same engine
//! run on native files, in memory, in a browser, and inside a deterministic simulation that can
//! replay any run from a seed.
//!
//! The seam is deliberately small:
//!
//! * [`Backend`]: a flat namespace of files inside one directory tree (open, remove, rename,
//!   list, create/remove directories, sync a directory, take the exclusive process lock), plus
//!   the [`Clock`] and [`Entropy`] the engine must use.
//! * [`File`]: positional I/O on one open file (read, write, sync, length, set length).
//!
//! ## Semantics every backend provides
//!
//! * Paths are relative, `/`-separated, without `.` or `..` components (see [`check_path`]).
//! * `write_at` may land in a volatile cache. Only after `sync_data` returns `Ok` are the bytes
//!   (and the file length) durable. A crash may lose, apply, or tear any write that was not
//!   synced, in any combination.
//! * Directory operations (`open` with create, `remove`, `rename`, `create_dir`) are durable
//!   only after `sync_dir` on the parent directory returns `Ok`. `rename` atomically replaces the
//!   target if it exists.
//! * `set_len` truncates or extends; bytes added by an extension read as zero.
//! * `read_at` reads exactly the requested range or fails with [`IoError::UnexpectedEof`].
//! * An error from `sync_data` means the durable state of that file is unknown. The caller must
//!   fail stop (the engine refuses writes until reopened, invariant 10).
//!
//! On native targets all handles are `Send + Sync` and futures are `Send`, so the engine runs
//! on multi-threaded tokio. On `wasm32` there is no such requirement ([`MaybeSend`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub mod encrypted;
mod gcm;
mod memory;
pub mod sim;
mod system;

#[cfg(not(target_arch = "wasm32"))]
mod fs;

pub use encrypted::{EncryptedBackend, KdfParams, KeySource};
#[cfg(not(target_arch = "wasm32"))]
pub use fs::FsBackend;
pub use memory::MemoryBackend;
pub use sim::{SimBackend, SimConfig};
pub use system::{OsEntropy, SystemClock};

/// `Send` on native targets, nothing on `wasm32` (where the engine runs on one thread).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on native targets, nothing on `wasm32` (where the engine runs on one thread).
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// `Sync` on native targets, nothing on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Sync + ?Sized> MaybeSync for T {}
/// `Sync` on native targets, nothing on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSync for T {}

/// A boxed future that is `Send` on native targets and not required to be on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed future that is `Send` on native targets and not required to be on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Result of every I/O verb.
pub type IoResult<T> = Result<T, IoError>;

/// What went wrong in a backend call. Every variant names the operation and the path so that
/// an operator can act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The file or directory does not exist.
    #[error("{op} {path}: not found")]
    NotFound {
        /// The verb that failed.
        op: &'static str,
        /// The path it was given.
        path: String,
    },
    /// `open` with [`OpenMode::CreateNew`] found an existing file.
    #[error("{op} {path}: already exists")]
    AlreadyExists {
        /// The verb that failed.
        op: &'static str,
        /// The path it was given.
        path: String,
    },
    /// The exclusive lock is held by another process (or another open handle).
    #[error("{path} is locked by another process")]
    Locked {
        /// The lock file.
        path: String,
    },
    /// A read asked for bytes past the end of the file.
    #[error(
        "read {path}: {len} bytes at offset {offset} is past the end of the file ({file_len} bytes)"
    )]
    UnexpectedEof {
        /// The file.
        path: String,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The file's length at the time of the read.
        file_len: u64,
    },
    /// The path is not acceptable (absolute, empty, `..`, ...).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path it was given.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A fault injected by the simulation backend.
    #[error("{op} {path}: injected I/O error (simulation)")]
    Injected {
        /// The verb that failed.
        op: &'static str,
        /// The path it was given.
        path: String,
    },
    /// The key does not open this encrypted database.
    #[error("{path}: wrong encryption key")]
    WrongKey {
        /// The file whose key check failed.
        path: String,
    },
    /// An encrypted database was opened without encryption, or the other way round.
    #[error(
        "{path}: the database is not encrypted the way it is being opened (an encrypted database needs its key; a plaintext one cannot be opened as encrypted)"
    )]
    NotEncrypted {
        /// The file that showed it.
        path: String,
    },
    /// Encrypted data failed authentication: it was damaged or altered. Nothing of it is
    /// returned.
    #[error("{path}: {detail}")]
    Tampered {
        /// The file.
        path: String,
        /// What failed.
        detail: String,
    },
    /// The key could not be derived (bad Argon2 parameters, or the wrong kind of key).
    #[error("encryption key: {detail}")]
    KeyDerivation {
        /// What failed.
        detail: String,
    },
    /// The cipher refused to seal or to take a key (it does not for a 32-byte key and the
    /// sizes this crate uses; reported rather than assumed).
    #[error("encryption: {detail}")]
    Cipher {
        /// What failed.
        detail: String,
    },
    /// The operating system's random source failed. Encryption refuses to go on without it:
    /// a nonce base drawn from anything weaker could repeat, and a repeated AES-GCM nonce
    /// gives the key away.
    #[error("the operating system's random source failed: {detail}")]
    NoEntropy {
        /// What failed.
        detail: String,
    },
    /// The simulated machine has crashed; nothing succeeds until it is restarted.
    #[error("{op} {path}: the simulated machine has crashed")]
    Crashed {
        /// The verb that failed.
        op: &'static str,
        /// The path it was given.
        path: String,
    },
    /// An error from the operating system.
    #[error("{op} {path}: {source}")]
    Os {
        /// The verb that failed.
        op: &'static str,
        /// The path it was given.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backend does not support this verb.
    #[error("{op} is not supported by the {backend} backend")]
    Unsupported {
        /// The verb.
        op: &'static str,
        /// The backend's name.
        backend: &'static str,
    },
}

/// How [`Backend::open`] treats a missing or existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file; fail with [`IoError::NotFound`] if it is missing.
    Existing,
    /// Open the file, creating it (empty) if it is missing.
    Create,
    /// Create a new empty file; fail with [`IoError::AlreadyExists`] if it exists.
    CreateNew,
}

/// One open file. Positional I/O: no cursor, no lock around reads; handles are shared with
/// `Arc` and every method takes `&self`.
#[expect(
    clippy::len_without_is_empty,
    reason = "len is an async I/O verb; an is_empty verb would add nothing"
)]
pub trait File: MaybeSend + MaybeSync + fmt::Debug {
    /// Read exactly `len` bytes at `offset`, or fail with [`IoError::UnexpectedEof`].
    fn read_at(&self, offset: u64, len: usize) -> BoxFuture<'_, IoResult<Vec<u8>>>;
    /// Write `data` at `offset`, extending the file if needed (a gap reads as zeros). Not
    /// durable until [`File::sync_data`].
    fn write_at(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, IoResult<()>>;
    /// Make every write so far, and the file length, durable (`fdatasync`).
    fn sync_data(&self) -> BoxFuture<'_, IoResult<()>>;
    /// [`File::sync_data`], done on the thread that polls the future where the backend
    /// would otherwise hand it to another thread (the file backend: its future is ready when
    /// the call returns, after blocking the calling thread for the length of the sync). For
    /// a caller that knows that nothing else waits for its thread (a commit with nobody
    /// queued behind it) and would rather not pay two thread hand-offs. The default is
    /// [`File::sync_data`], for backends that hand nothing off.
    fn sync_data_inline(&self) -> BoxFuture<'_, IoResult<()>> {
        self.sync_data()
    }
    /// The current length in bytes (as seen by reads).
    fn len(&self) -> BoxFuture<'_, IoResult<u64>>;
    /// Truncate or extend (zero fill) to `len` bytes. Not durable until [`File::sync_data`].
    fn set_len(&self, len: u64) -> BoxFuture<'_, IoResult<()>>;
    /// The path this handle was opened with (for error messages).
    fn path(&self) -> &str;
}

/// The exclusive lock a writer holds on a database directory. Dropping it releases the lock.
pub trait LockGuard: MaybeSend + MaybeSync + fmt::Debug {}

/// Wall-clock and monotonic time, and sleeping.
pub trait Clock: MaybeSend + MaybeSync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
    /// Nanoseconds on a monotonic clock with an arbitrary origin.
    fn monotonic_nanos(&self) -> u64;
    /// Complete after `duration` (simulated backends advance simulated time instead).
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// A source of random bytes (seeded in simulation).
pub trait Entropy: MaybeSend + MaybeSync + fmt::Debug {
    /// Fill `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
    /// Fill `buf` with bytes fit for keys and nonces, or fail: a source that can fall back to
    /// something weaker ([`OsEntropy`] when the OS refuses) reports that instead. Encryption
    /// draws salts, file ids and nonce bases through this. The default is [`Entropy::fill`]
    /// (a seeded source is as good as it will ever be, and simulation needs it).
    fn try_fill(&self, buf: &mut [u8]) -> IoResult<()> {
        self.fill(buf);
        Ok(())
    }
    /// A random `u64`.
    fn next_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// A directory tree that holds one database's files, plus the clock and entropy of its world.
pub trait Backend: MaybeSend + MaybeSync + fmt::Debug + 'static {
    /// Open (or create, per `mode`) the file at `path`.
    fn open(&self, path: &str, mode: OpenMode) -> BoxFuture<'_, IoResult<Arc<dyn File>>>;
    /// Remove a file. Durable after [`Backend::sync_dir`] of its directory.
    fn remove(&self, path: &str) -> BoxFuture<'_, IoResult<()>>;
    /// Rename `from` to `to`, atomically replacing `to`. Durable after [`Backend::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, IoResult<()>>;
    /// The names (not paths) of the entries directly inside `dir` (`""` is the root), sorted.
    fn list(&self, dir: &str) -> BoxFuture<'_, IoResult<Vec<String>>>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &str) -> BoxFuture<'_, IoResult<bool>>;
    /// Create a directory and its missing parents.
    fn create_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>>;
    /// Remove an empty directory.
    fn remove_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>>;
    /// Make the directory operations done inside `dir` durable (`""` is the root).
    fn sync_dir(&self, dir: &str) -> BoxFuture<'_, IoResult<()>>;
    /// Take the exclusive lock named by `path` (created if missing). Fails with
    /// [`IoError::Locked`] while another process or handle holds it.
    fn lock(&self, path: &str) -> BoxFuture<'_, IoResult<Box<dyn LockGuard>>>;
    /// The clock of this backend's world.
    fn clock(&self) -> Arc<dyn Clock>;
    /// The entropy source of this backend's world.
    fn entropy(&self) -> Arc<dyn Entropy>;
    /// A short name for messages ("fs", "memory", "sim", ...).
    fn name(&self) -> &'static str;
    /// Whether the engine may run background work (flush and compaction) on an OS thread of
    /// its own, driving this backend's futures with a plain executor (`block_on`). `true`
    /// only for backends whose futures make progress without an outside runtime and whose
    /// runs need not replay from a seed. Default `false`: the work stays on the task that
    /// triggered it.
    fn background_threads(&self) -> bool {
        false
    }
}

/// Check that `path` is a relative, `/`-separated path without empty, `.` or `..` components.
/// `""` (the root) is accepted only where a directory is expected, which callers check.
pub fn check_path(path: &str) -> IoResult<()> {
    let bad = |reason| {
        Err(IoError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.starts_with('/') {
        return bad("absolute paths are not allowed");
    }
    if path.contains('\\') || path.contains('\0') {
        return bad("backslash and NUL are not allowed");
    }
    if path.is_empty() {
        return Ok(());
    }
    for part in path.split('/') {
        match part {
            "" => return bad("empty path component"),
            "." | ".." => return bad("`.` and `..` are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// The directory part of a path (`""` for a file in the root).
pub fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// A deterministic entropy source from a seed (used by simulation and available everywhere).
#[derive(Debug)]
pub struct SeededEntropy {
    rng: std::sync::Mutex<rand::rngs::SmallRng>,
}

impl SeededEntropy {
    /// A generator that yields the same bytes for the same seed.
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            rng: std::sync::Mutex::new(rand::rngs::SmallRng::seed_from_u64(seed)),
        }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) {
        use rand::RngCore;
        let mut rng = match self.rng.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        rng.fill_bytes(buf);
    }
}

/// A clock that only moves when told to (used by simulation and by wasm hosts that supply time).
#[derive(Debug, Default)]
pub struct ManualClock {
    start_millis: u64,
    nanos: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    /// A clock starting at `start_millis` since the epoch.
    pub fn new(start_millis: u64) -> Self {
        Self {
            start_millis,
            nanos: 0.into(),
        }
    }
    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        self.nanos
            .fetch_add(by.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.start_millis + self.monotonic_nanos() / 1_000_000
    }
    fn monotonic_nanos(&self) -> u64 {
        self.nanos.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // Simulated time: sleeping advances the clock and completes at once.
        self.advance(duration);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(check_path("a/b.log").is_ok());
        assert!(check_path("").is_ok());
        assert!(check_path("/abs").is_err());
        assert!(check_path("a/../b").is_err());
        assert!(check_path("a//b").is_err());
        assert_eq!(parent_dir("a/b/c"), "a/b");
        assert_eq!(parent_dir("c"), "");
    }

    #[test]
    fn seeded_entropy_is_deterministic() {
        let a = SeededEntropy::new(7);
        let b = SeededEntropy::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
