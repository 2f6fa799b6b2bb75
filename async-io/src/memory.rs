//! The in-memory backend: a volatile file tree that lives as long as the backend value.
//!
//! Every write is "durable" immediately (there is nothing to crash), so `sync_data` and
//! `sync_dir` only count calls. Clones share the same tree, which lets a test "reopen" a
//! database in the same process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::{
    Backend, BoxFuture, Clock, Entropy, File, IoError, IoResult, LockGuard, OpenMode, check_path,
};

#[derive(Debug, Default)]
struct Tree {
    files: BTreeMap<String, Arc<MemFile>>,
    dirs: std::collections::BTreeSet<String>,
    locks: std::collections::BTreeSet<String>,
}

/// A file tree in memory. Cheap to clone; clones share the tree.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    tree: Arc<Mutex<Tree>>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A new empty tree with the host's clock and entropy ([`crate::SystemClock`],
    /// [`crate::OsEntropy`]; JavaScript's on `wasm32`).
    pub fn new() -> Self {
        Self::with_world(Arc::new(crate::SystemClock), Arc::new(crate::OsEntropy))
    }

    /// A new empty tree with the given clock and entropy.
    pub fn with_world(clock: Arc<dyn Clock>, entropy: Arc<dyn Entropy>) -> Self {
        Self {
            tree: Arc::new(Mutex::new(Tree::default())),
            clock,
            entropy,
        }
    }

    fn tree(&self) -> std::sync::MutexGuard<'_, Tree> {
        match self.tree.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Total bytes held by all files (for tests and stats).
    pub fn total_bytes(&self) -> u64 {
        self.tree()
            .files
            .values()
            .map(|f| f.read_data().len() as u64)
            .sum()
    }
}

fn dir_exists(tree: &Tree, dir: &str) -> bool {
    dir.is_empty() || tree.dirs.contains(dir)
}

impl Backend for MemoryBackend {
    fn open(&self, path: &str, mode: OpenMode) -> BoxFuture<'_, IoResult<Arc<dyn File>>> {
        let path = path.to_owned();
        Box::pin(async move {
            check_path(&path)?;
            if path.is_empty() {
                return Err(IoError::InvalidPath {
                    path,
                    reason: "a file path cannot be empty",
                });
            }
            let mut tree = self.tree();
            if !dir_exists(&tree, crate::parent_dir(&path)) {
                return Err(IoError::NotFound { op: "open", path });
            }
            match (tree.files.get(&path), mode) {
                (Some(_), OpenMode::CreateNew) => Err(IoError::AlreadyExists { op: "open", path }),
                (Some(f), _) => Ok(f.clone() as Arc<dyn File>),
                (None, OpenMode::Existing) => Err(IoError::NotFound { op: "open", path }),
                (None, _) => {
                    let f = Arc::new(MemFile {
                        path: path.clone(),
                        data: RwLock::new(Vec::new()),
                    });
                    tree.files.insert(path, f.clone());
                    Ok(f as Arc<dyn File>)
                }
            }
        })
    }

    fn remove(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        Box::pin(async move {
            check_path(&path)?;
            match self.tree().files.remove(&path) {
                Some(_) => Ok(()),
                None => Err(IoError::NotFound { op: "remove", path }),
            }
        })
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, IoResult<()>> {
        let (from, to) = (from.to_owned(), to.to_owned());
        Box::pin(async move {
            check_path(&from)?;
            check_path(&to)?;
            let mut tree = self.tree();
            if !dir_exists(&tree, crate::parent_dir(&to)) {
                return Err(IoError::NotFound {
                    op: "rename",
                    path: to,
                });
            }
            let Some(f) = tree.files.remove(&from) else {
                return Err(IoError::NotFound {
                    op: "rename",
                    path: from,
                });
            };
            // The handle keeps its old path for messages; the data moves with it.
            tree.files.insert(to, f);
            Ok(())
        })
    }

    fn list(&self, dir: &str) -> BoxFuture<'_, IoResult<Vec<String>>> {
        let dir = dir.to_owned();
        Box::pin(async move {
            check_path(&dir)?;
            let tree = self.tree();
            if !dir_exists(&tree, &dir) {
                return Err(IoError::NotFound {
                    op: "list",
                    path: dir,
                });
            }
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            let mut out: Vec<String> = tree
                .files
                .keys()
                .chain(tree.dirs.iter())
                .filter_map(|p| p.strip_prefix(&prefix))
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(str::to_owned)
                .collect();
            out.sort();
            out.dedup();
            Ok(out)
        })
    }

    fn exists(&self, path: &str) -> BoxFuture<'_, IoResult<bool>> {
        let path = path.to_owned();
        Box::pin(async move {
            check_path(&path)?;
            let tree = self.tree();
            Ok(path.is_empty() || tree.files.contains_key(&path) || tree.dirs.contains(&path))
        })
    }

    fn create_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        Box::pin(async move {
            check_path(&path)?;
            let mut tree = self.tree();
            let mut cur = String::new();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                if !cur.is_empty() {
                    cur.push('/');
                }
                cur.push_str(part);
                tree.dirs.insert(cur.clone());
            }
            Ok(())
        })
    }

    fn remove_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        Box::pin(async move {
            check_path(&path)?;
            let mut tree = self.tree();
            let prefix = format!("{path}/");
            if tree
                .files
                .keys()
                .chain(tree.dirs.iter())
                .any(|p| p.starts_with(&prefix))
            {
                return Err(IoError::Os {
                    op: "remove_dir",
                    path,
                    source: std::io::Error::other("directory not empty"),
                });
            }
            if !tree.dirs.remove(&path) {
                return Err(IoError::NotFound {
                    op: "remove_dir",
                    path,
                });
            }
            Ok(())
        })
    }

    fn sync_dir(&self, dir: &str) -> BoxFuture<'_, IoResult<()>> {
        let dir = dir.to_owned();
        Box::pin(async move {
            check_path(&dir)?;
            if dir_exists(&self.tree(), &dir) {
                Ok(())
            } else {
                Err(IoError::NotFound {
                    op: "sync_dir",
                    path: dir,
                })
            }
        })
    }

    fn lock(&self, path: &str) -> BoxFuture<'_, IoResult<Box<dyn LockGuard>>> {
        let path = path.to_owned();
        Box::pin(async move {
            check_path(&path)?;
            let mut tree = self.tree();
            if !tree.locks.insert(path.clone()) {
                return Err(IoError::Locked { path });
            }
            Ok(Box::new(MemLock {
                tree: self.tree.clone(),
                path,
            }) as Box<dyn LockGuard>)
        })
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    fn entropy(&self) -> Arc<dyn Entropy> {
        self.entropy.clone()
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[derive(Debug)]
struct MemLock {
    tree: Arc<Mutex<Tree>>,
    path: String,
}

impl LockGuard for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut tree = match self.tree.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        tree.locks.remove(&self.path);
    }
}

#[derive(Debug)]
struct MemFile {
    path: String,
    data: RwLock<Vec<u8>>,
}

impl MemFile {
    fn read_data(&self) -> std::sync::RwLockReadGuard<'_, Vec<u8>> {
        match self.data.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
    fn write_data(&self) -> std::sync::RwLockWriteGuard<'_, Vec<u8>> {
        match self.data.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl File for MemFile {
    fn read_at(&self, offset: u64, len: usize) -> BoxFuture<'_, IoResult<Vec<u8>>> {
        let data = self.read_data();
        let end = offset.checked_add(len as u64);
        let r = match end {
            Some(end) if end <= data.len() as u64 => {
                Ok(data[offset as usize..end as usize].to_vec())
            }
            _ => Err(IoError::UnexpectedEof {
                path: self.path.clone(),
                offset,
                len: len as u64,
                file_len: data.len() as u64,
            }),
        };
        Box::pin(std::future::ready(r))
    }

    fn write_at(&self, offset: u64, buf: Vec<u8>) -> BoxFuture<'_, IoResult<()>> {
        let mut data = self.write_data();
        let start = offset as usize;
        let end = start + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(&buf);
        Box::pin(std::future::ready(Ok(())))
    }

    fn sync_data(&self) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn len(&self) -> BoxFuture<'_, IoResult<u64>> {
        let n = self.read_data().len() as u64;
        Box::pin(std::future::ready(Ok(n)))
    }

    fn set_len(&self, len: u64) -> BoxFuture<'_, IoResult<()>> {
        self.write_data().resize(len as usize, 0);
        Box::pin(std::future::ready(Ok(())))
    }

    fn path(&self) -> &str {
        &self.path
    }
}
