//! The native file backend.
//!
//! * Reads and writes are positional (`pread`/`pwrite` through `FileExt`), with no lock around
//!   them: many readers run in parallel with the writer. Small reads and writes hit the page
//!   cache and complete inline; large ones (over [`INLINE_LIMIT`]) run on the `blocking` thread
//!   pool so they never stall the caller's executor.
//! * `sync_data` is a real `fdatasync` (`File::sync_data`), run on the `blocking` pool;
//!   `sync_data_inline` runs the same `fdatasync` on the caller's thread.
//! * `sync_dir` opens the directory and calls `fsync` on it, so that creates, renames and
//!   removes inside it are durable.
//! * `lock` takes an exclusive advisory lock (`flock`) on a lock file; a second process gets
//!   [`IoError::Locked`].

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{
    Backend, BoxFuture, Clock, Entropy, File, IoError, IoResult, LockGuard, OpenMode, check_path,
};

/// Reads and writes up to this many bytes run inline on the caller's thread (page cache hits
/// cost a few microseconds); larger ones are moved to the blocking pool.
pub const INLINE_LIMIT: usize = 256 * 1024;

/// Files under one root directory on the native file system.
#[derive(Debug, Clone)]
pub struct FsBackend {
    root: Arc<PathBuf>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
}

impl FsBackend {
    /// A backend rooted at `root` (created if missing), with the system clock and OS entropy.
    pub fn new(root: impl AsRef<Path>) -> IoResult<Self> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|source| IoError::Os {
            op: "create_dir",
            path: root.display().to_string(),
            source,
        })?;
        Ok(Self {
            root: Arc::new(root),
            clock: Arc::new(crate::SystemClock),
            entropy: Arc::new(crate::OsEntropy),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> IoResult<PathBuf> {
        check_path(path)?;
        Ok(if path.is_empty() {
            self.root.as_ref().clone()
        } else {
            self.root.join(path)
        })
    }
}

fn os_err(op: &'static str, path: &str, source: std::io::Error) -> IoError {
    match source.kind() {
        std::io::ErrorKind::NotFound => IoError::NotFound {
            op,
            path: path.to_owned(),
        },
        std::io::ErrorKind::AlreadyExists => IoError::AlreadyExists {
            op,
            path: path.to_owned(),
        },
        _ => IoError::Os {
            op,
            path: path.to_owned(),
            source,
        },
    }
}

async fn unblock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    blocking::unblock(f).await
}

impl Backend for FsBackend {
    fn open(&self, path: &str, mode: OpenMode) -> BoxFuture<'_, IoResult<Arc<dyn File>>> {
        let path = path.to_owned();
        Box::pin(async move {
            if path.is_empty() {
                return Err(IoError::InvalidPath {
                    path,
                    reason: "a file path cannot be empty",
                });
            }
            let full = self.full(&path)?;
            let mut opts = std::fs::OpenOptions::new();
            opts.read(true).write(true);
            match mode {
                OpenMode::Existing => {}
                OpenMode::Create => {
                    opts.create(true);
                }
                OpenMode::CreateNew => {
                    opts.create_new(true);
                }
            }
            let file = opts.open(&full).map_err(|e| os_err("open", &path, e))?;
            Ok(Arc::new(FsFile {
                file: Arc::new(file),
                path,
            }) as Arc<dyn File>)
        })
    }

    fn remove(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        Box::pin(async move {
            let full = self.full(&path)?;
            std::fs::remove_file(full).map_err(|e| os_err("remove", &path, e))
        })
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, IoResult<()>> {
        let (from, to) = (from.to_owned(), to.to_owned());
        Box::pin(async move {
            let (f, t) = (self.full(&from)?, self.full(&to)?);
            std::fs::rename(f, t).map_err(|e| os_err("rename", &from, e))
        })
    }

    fn list(&self, dir: &str) -> BoxFuture<'_, IoResult<Vec<String>>> {
        let dir = dir.to_owned();
        Box::pin(async move {
            let full = self.full(&dir)?;
            let rd = std::fs::read_dir(full).map_err(|e| os_err("list", &dir, e))?;
            let mut out = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| os_err("list", &dir, e))?;
                if let Some(name) = entry.file_name().to_str() {
                    out.push(name.to_owned());
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn exists(&self, path: &str) -> BoxFuture<'_, IoResult<bool>> {
        let path = path.to_owned();
        Box::pin(async move {
            let full = self.full(&path)?;
            full.try_exists().map_err(|e| os_err("exists", &path, e))
        })
    }

    fn create_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        Box::pin(async move {
            let full = self.full(&path)?;
            std::fs::create_dir_all(full).map_err(|e| os_err("create_dir", &path, e))
        })
    }

    fn remove_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        Box::pin(async move {
            let full = self.full(&path)?;
            std::fs::remove_dir(full).map_err(|e| os_err("remove_dir", &path, e))
        })
    }

    fn sync_dir(&self, dir: &str) -> BoxFuture<'_, IoResult<()>> {
        let dir = dir.to_owned();
        Box::pin(async move {
            let full = self.full(&dir)?;
            let d2 = dir.clone();
            unblock(move || {
                let f = std::fs::File::open(&full).map_err(|e| os_err("sync_dir", &d2, e))?;
                f.sync_all().map_err(|e| os_err("sync_dir", &d2, e))
            })
            .await
        })
    }

    fn lock(&self, path: &str) -> BoxFuture<'_, IoResult<Box<dyn LockGuard>>> {
        let path = path.to_owned();
        Box::pin(async move {
            let full = self.full(&path)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&full)
                .map_err(|e| os_err("lock", &path, e))?;
            match file.try_lock() {
                Ok(()) => Ok(Box::new(FsLock { _file: file }) as Box<dyn LockGuard>),
                Err(std::fs::TryLockError::WouldBlock) => Err(IoError::Locked { path }),
                Err(std::fs::TryLockError::Error(e)) => Err(os_err("lock", &path, e)),
            }
        })
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    fn entropy(&self) -> Arc<dyn Entropy> {
        self.entropy.clone()
    }

    fn name(&self) -> &'static str {
        "fs"
    }
    /// File I/O runs on the `blocking` crate's thread pool, so any executor drives it.
    fn background_threads(&self) -> bool {
        true
    }
}

/// Holds the `flock`; closing the file releases it.
#[derive(Debug)]
struct FsLock {
    _file: std::fs::File,
}

impl LockGuard for FsLock {}

#[derive(Debug)]
struct FsFile {
    file: Arc<std::fs::File>,
    path: String,
}

fn read_exact_at(file: &std::fs::File, path: &str, offset: u64, len: usize) -> IoResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
            Err(IoError::UnexpectedEof {
                path: path.to_owned(),
                offset,
                len: len as u64,
                file_len,
            })
        }
        Err(e) => Err(os_err("read", path, e)),
    }
}

impl File for FsFile {
    fn read_at(&self, offset: u64, len: usize) -> BoxFuture<'_, IoResult<Vec<u8>>> {
        if len <= INLINE_LIMIT {
            let r = read_exact_at(&self.file, &self.path, offset, len);
            return Box::pin(std::future::ready(r));
        }
        let (file, path) = (self.file.clone(), self.path.clone());
        Box::pin(unblock(move || read_exact_at(&file, &path, offset, len)))
    }

    fn write_at(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, IoResult<()>> {
        if data.len() <= INLINE_LIMIT {
            let r = self
                .file
                .write_all_at(&data, offset)
                .map_err(|e| os_err("write", &self.path, e));
            return Box::pin(std::future::ready(r));
        }
        let (file, path) = (self.file.clone(), self.path.clone());
        Box::pin(unblock(move || {
            file.write_all_at(&data, offset)
                .map_err(|e| os_err("write", &path, e))
        }))
    }

    fn sync_data(&self) -> BoxFuture<'_, IoResult<()>> {
        let (file, path) = (self.file.clone(), self.path.clone());
        Box::pin(unblock(move || {
            file.sync_data().map_err(|e| os_err("sync_data", &path, e))
        }))
    }

    fn sync_data_inline(&self) -> BoxFuture<'_, IoResult<()>> {
        let r = self
            .file
            .sync_data()
            .map_err(|e| os_err("sync_data", &self.path, e));
        Box::pin(std::future::ready(r))
    }

    fn len(&self) -> BoxFuture<'_, IoResult<u64>> {
        let r = self
            .file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| os_err("len", &self.path, e));
        Box::pin(std::future::ready(r))
    }

    fn set_len(&self, len: u64) -> BoxFuture<'_, IoResult<()>> {
        let r = self
            .file
            .set_len(len)
            .map_err(|e| os_err("set_len", &self.path, e));
        Box::pin(std::future::ready(r))
    }

    fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;

    #[test]
    fn write_read_sync_rename_list() {
        let dir = tempfile::tempdir().unwrap();
        let b = FsBackend::new(dir.path()).unwrap();
        block_on(async {
            let f = b.open("a.log", OpenMode::CreateNew).await.unwrap();
            f.write_at(0, b"hello".to_vec()).await.unwrap();
            f.write_at(10, b"x".to_vec()).await.unwrap();
            f.sync_data().await.unwrap();
            f.sync_data_inline().await.unwrap();
            assert_eq!(f.len().await.unwrap(), 11);
            assert_eq!(f.read_at(0, 11).await.unwrap(), b"hello\0\0\0\0\0x");
            assert!(matches!(
                f.read_at(5, 10).await,
                Err(IoError::UnexpectedEof { file_len: 11, .. })
            ));
            assert!(matches!(
                b.open("a.log", OpenMode::CreateNew).await,
                Err(IoError::AlreadyExists { .. })
            ));
            b.rename("a.log", "b.log").await.unwrap();
            b.sync_dir("").await.unwrap();
            assert_eq!(b.list("").await.unwrap(), vec!["b.log".to_owned()]);
            let big = vec![7u8; INLINE_LIMIT * 2];
            f.write_at(0, big.clone()).await.unwrap();
            assert_eq!(f.read_at(0, big.len()).await.unwrap(), big);
            f.set_len(3).await.unwrap();
            assert_eq!(f.len().await.unwrap(), 3);
            b.remove("b.log").await.unwrap();
            assert!(!b.exists("b.log").await.unwrap());
            assert!(matches!(
                b.open("missing", OpenMode::Existing).await,
                Err(IoError::NotFound { .. })
            ));
        });
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let b = FsBackend::new(dir.path()).unwrap();
        block_on(async {
            let g = b.lock("LOCK").await.unwrap();
            assert!(matches!(b.lock("LOCK").await, Err(IoError::Locked { .. })));
            drop(g);
            let _g2 = b.lock("LOCK").await.unwrap();
        });
    }
}
