//! The hosted databases: one EntiDB database per directory under the data directory, opened
//! on first use and kept open until deleted or the server stops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use entidb::{Database, Options};
use entidb_sync::wire::ErrorCode;
use tokio::sync::{Mutex, watch};

use crate::error::ApiError;

/// One hosted database.
#[derive(Debug)]
pub struct Hosted {
    /// Its name.
    pub name: String,
    /// The engine database.
    pub db: Database,
    /// The latest committed cursor; long polls wait on it.
    pub changed: watch::Sender<u64>,
    /// Where entity metadata is kept in `db`.
    pub(crate) meta: MetaLayout,
}

/// Where a hosted database keeps its entity metadata (`crate::service`).
///
/// `PerCollection`: collection [`entidb_sync::meta_collection`]`(c)` for app collection `c`,
/// keyed by the entity's id, so that a push of nearby ids reads and writes nearby keys.
/// `Hashed`: one `_sync.meta` collection keyed by a hash of (collection, id), the first
/// layout, which a database that has that collection keeps (a hash cannot be inverted to
/// move its metadata). Only the hashed layout ever creates `_sync.meta` (clients cannot write
/// reserved collections), so its presence tells the two apart without a record of its own,
/// and a database without it, new or old, takes the per-collection layout for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaLayout {
    Hashed,
    PerCollection,
}

/// The collection of the hashed layout.
pub(crate) const HASHED_META: &str = "_sync.meta";

impl Hosted {
    /// Hosts `db` as database `name` (and sees which metadata layout it has). A database
    /// with metadata in both layouts is refused: a server build from before the
    /// per-collection layout wrote to it after a newer one, and serving it would leave one
    /// half of its metadata out of sight.
    pub fn new(name: &str, db: Database) -> Result<Hosted, ApiError> {
        let names = db.collections();
        let hashed = names.iter().any(|c| c == HASHED_META);
        if hashed
            && names
                .iter()
                .any(|c| c.starts_with("_sync.meta/") || c.starts_with("_sync.meta#"))
        {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "database {name:?} holds entity metadata in both layouts ({HASHED_META} and {HASHED_META}/<collection>): a server build older than the per-collection layout wrote to it after a newer one; restore it from a backup taken before that"
                ),
            ));
        }
        let meta = if hashed {
            MetaLayout::Hashed
        } else {
            MetaLayout::PerCollection
        };
        Ok(Hosted {
            name: name.to_owned(),
            changed: watch::channel(db.last_sequence()).0,
            db,
            meta,
        })
    }

    /// Tells waiters that the oplog advanced to `cursor`.
    pub fn publish(&self, cursor: u64) {
        self.changed.send_if_modified(|c| {
            if cursor > *c {
                *c = cursor;
                true
            } else {
                false
            }
        });
    }
}

/// All hosted databases.
#[derive(Debug)]
pub struct Hosts {
    dir: PathBuf,
    options: Options,
    open: Mutex<BTreeMap<String, Arc<Hosted>>>,
    /// Set by `close_all`, under the `open` lock: no database is opened, created or deleted
    /// after it (a request still running at shutdown would open one again, never closed).
    closed: std::sync::atomic::AtomicBool,
    /// `LOCK_FILE`, locked for as long as these hosts live: one server per data directory.
    _dir_lock: std::fs::File,
}

/// The data directory's lock file (a valid database name never starts with `.`).
pub const LOCK_FILE: &str = ".server-lock";

/// Where a deleted database's directory is renamed before its files are removed (a valid
/// database name never starts with `.`).
const TRASH_PREFIX: &str = ".deleted-";

/// Whether `name` is a valid database name: 1-64 of `a-z 0-9 - _`, not starting with `-`/`_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_'])
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "invalid database name {name:?}: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ),
        ))
    }
}

impl Hosts {
    /// Hosts in `dir` (created if missing). Fails with an error of kind
    /// [`std::io::ErrorKind::WouldBlock`] while other hosts (another server) have `dir`: two
    /// servers on one data directory would each find its databases locked by the other, and
    /// sweep each other's deleted databases.
    pub fn new(dir: PathBuf, options: Options) -> std::io::Result<Hosts> {
        std::fs::create_dir_all(&dir)?;
        let dir_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match dir_lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "another server is using this data directory",
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // Deleted databases whose removal a stop interrupted: renamed aside, never served
        // again, removed now (on a thread of their own: a large one takes a while).
        let trash: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(TRASH_PREFIX))
            .map(|e| e.path())
            .collect();
        if !trash.is_empty() {
            std::thread::spawn(move || {
                for t in trash {
                    if let Err(e) = std::fs::remove_dir_all(&t) {
                        tracing::warn!(path = %t.display(), error = %e, "removing a deleted database's files");
                    }
                }
            });
        }
        Ok(Hosts {
            dir,
            options,
            open: Mutex::new(BTreeMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            _dir_lock: dir_lock,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The database `name`, opened if needed; `not_found` if it was never created.
    pub async fn get(&self, name: &str) -> Result<Arc<Hosted>, ApiError> {
        if !valid_name(name) {
            return Err(not_found(name));
        }
        let mut open = self.open.lock().await;
        self.check_open()?;
        if let Some(h) = open.get(name) {
            return Ok(h.clone());
        }
        let path = self.dir.join(name);
        if !path.join("MANIFEST").exists() {
            return Err(not_found(name));
        }
        let db = Database::open_path(&path, self.options.clone().create_if_missing(false))
            .await
            .map_err(|e| ApiError::engine(&e))?;
        host(&mut open, name, db)
    }

    /// Creates database `name`.
    pub async fn create(&self, name: &str) -> Result<Arc<Hosted>, ApiError> {
        check_name(name)?;
        let mut open = self.open.lock().await;
        self.check_open()?;
        let path = self.dir.join(name);
        if open.contains_key(name) || path.exists() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("database {name:?} already exists"),
            ));
        }
        let db = Database::open_path(&path, self.options.clone())
            .await
            .map_err(|e| ApiError::engine(&e))?;
        host(&mut open, name, db)
    }

    /// Deletes database `name` and its files.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        check_name(name)?;
        let mut open = self.open.lock().await;
        self.check_open()?;
        let path = self.dir.join(name);
        if let Some(h) = open.remove(name) {
            // Waiters see the sender go away when the last handle drops.
            let db = h.db.clone();
            drop(h);
            db.close().await.map_err(|e| ApiError::engine(&e))?;
        } else if !path.join("MANIFEST").exists() {
            return Err(not_found(name));
        }
        // Rename first so that a crash half-way leaves no half-deleted database behind a
        // valid name.
        // Unique in the process: a database of the same name may be created and deleted
        // again while this one's files are still being removed.
        static DELETIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = DELETIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let trash = self.dir.join(format!(
            "{TRASH_PREFIX}{name}-{}-{n}",
            crate::auth::now_secs()
        ));
        std::fs::rename(&path, &trash)
            .map_err(|e| ApiError::internal(format!("renaming {}: {e}", path.display())))?;
        // The name is free now: requests for other databases need not wait for the removal.
        drop(open);
        // Removing a large directory takes a while: not on a runtime thread.
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&trash))
            .await
            .map_err(|e| ApiError::internal(format!("removing {}: {e}", path.display())))?
            .map_err(|e| ApiError::internal(format!("removing {}: {e}", path.display())))
    }

    /// The names of all hosted databases, in order.
    pub fn names(&self) -> Result<Vec<String>, ApiError> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| ApiError::internal(format!("listing {}: {e}", self.dir.display())))?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("MANIFEST").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    fn check_open(&self) -> Result<(), ApiError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "the server is shutting down",
            ))
        } else {
            Ok(())
        }
    }

    /// Closes every open database (at shutdown); none is opened, created or deleted after.
    pub async fn close_all(&self) {
        let mut open = self.open.lock().await;
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        for (name, h) in std::mem::take(&mut *open) {
            let db = h.db.clone();
            drop(h);
            if let Err(e) = db.close().await {
                tracing::error!(database = %name, error = %e, "closing database failed");
            }
        }
    }
}

/// Registers an opened database.
fn host(
    open: &mut BTreeMap<String, Arc<Hosted>>,
    name: &str,
    db: Database,
) -> Result<Arc<Hosted>, ApiError> {
    let h = Arc::new(Hosted::new(name, db)?);
    open.insert(name.to_owned(), h.clone());
    Ok(h)
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("database {name:?} does not exist"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After `close_all` (shutdown) no database is opened, created or deleted: a request
    /// that gets there late is answered 503 instead of opening one that nobody closes.
    #[tokio::test]
    async fn nothing_opens_after_close_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = Hosts::new(dir.path().to_owned(), Options::default()).expect("hosts");
        hosts.create("app").await.expect("create");
        hosts.close_all().await;
        for (what, r) in [
            ("get", hosts.get("app").await.map(drop)),
            ("create", hosts.create("other").await.map(drop)),
            ("delete", hosts.delete("app").await),
        ] {
            let e = r.expect_err(what);
            assert_eq!(e.body.code, ErrorCode::Unavailable, "{what}");
        }
        assert!(dir.path().join("app").join("MANIFEST").exists());
        assert!(!dir.path().join("other").exists());
    }

    /// A deleted database's directory left behind by a stop during its removal is removed at
    /// the next start; a name deleted, created and deleted again gets a trash name of its own.
    #[tokio::test]
    async fn trash_is_unique_and_swept_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".deleted-old-1-0").join("x")).expect("mkdir");
        let hosts = Hosts::new(dir.path().to_owned(), Options::default()).expect("hosts");
        for _ in 0..2 {
            hosts.create("app").await.expect("create");
            hosts.delete("app").await.expect("delete");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let left: Vec<String> = std::fs::read_dir(dir.path())
                .expect("read_dir")
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != LOCK_FILE)
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "left: {left:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
