//! A test backend that forwards every verb to another backend, except where a hook steps in:
//! one place for the forwarding that tests which watch or stall the engine's I/O need.
#![allow(dead_code, reason = "each test binary uses some of the hooks")]

use std::fmt;
use std::sync::Arc;

use entidb::io::{Backend, BoxFuture, Clock, Entropy, File, IoResult, LockGuard, OpenMode};

type OpenHook = Box<dyn Fn(&str, OpenMode) + Send + Sync>;
type FileHook = Box<dyn Fn(Arc<dyn File>) -> Arc<dyn File> + Send + Sync>;
type RenameHook = Box<dyn Fn(&str, &str) -> Option<BoxFuture<'static, IoResult<()>>> + Send + Sync>;

/// Forwards to `inner`; `on_open` sees every open, `wrap_file` wraps every opened file,
/// and `on_rename` may replace a rename with a future of its own.
pub struct Hooked {
    inner: Arc<dyn Backend>,
    name: &'static str,
    on_open: OpenHook,
    wrap_file: FileHook,
    on_rename: RenameHook,
}

impl Hooked {
    /// Forwards everything to `inner` (until hooks are set), reporting `name`.
    pub fn new(inner: Arc<dyn Backend>, name: &'static str) -> Hooked {
        Hooked {
            inner,
            name,
            on_open: Box::new(|_, _| {}),
            wrap_file: Box::new(|f| f),
            on_rename: Box::new(|_, _| None),
        }
    }

    /// Calls `hook` with the path and mode of every open, before it is forwarded.
    pub fn on_open(mut self, hook: impl Fn(&str, OpenMode) + Send + Sync + 'static) -> Hooked {
        self.on_open = Box::new(hook);
        self
    }

    /// Wraps every opened file with `hook`.
    pub fn wrap_file(
        mut self,
        hook: impl Fn(Arc<dyn File>) -> Arc<dyn File> + Send + Sync + 'static,
    ) -> Hooked {
        self.wrap_file = Box::new(hook);
        self
    }

    /// Runs the future `hook` returns instead of a rename (`None`: forward it).
    pub fn on_rename(
        mut self,
        hook: impl Fn(&str, &str) -> Option<BoxFuture<'static, IoResult<()>>> + Send + Sync + 'static,
    ) -> Hooked {
        self.on_rename = Box::new(hook);
        self
    }
}

impl fmt::Debug for Hooked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooked")
            .field("name", &self.name)
            .field("inner", &self.inner)
            .finish()
    }
}

impl Backend for Hooked {
    fn open(&self, path: &str, mode: OpenMode) -> BoxFuture<'_, IoResult<Arc<dyn File>>> {
        (self.on_open)(path, mode);
        let path = path.to_owned();
        Box::pin(async move { Ok((self.wrap_file)(self.inner.open(&path, mode).await?)) })
    }
    fn remove(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, IoResult<()>> {
        match (self.on_rename)(from, to) {
            Some(replaced) => replaced,
            None => self.inner.rename(from, to),
        }
    }
    fn list(&self, dir: &str) -> BoxFuture<'_, IoResult<Vec<String>>> {
        self.inner.list(dir)
    }
    fn exists(&self, path: &str) -> BoxFuture<'_, IoResult<bool>> {
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
        self.inner.entropy()
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn background_threads(&self) -> bool {
        self.inner.background_threads()
    }
}

type Before = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A file that runs a hook before every read and every sync (a delay, a counter), then
/// forwards; everything else is forwarded as it is.
pub struct HookedFile {
    inner: Arc<dyn File>,
    before_read: Before,
    before_sync: Before,
    on_sync_inline: Box<dyn Fn() + Send + Sync>,
}

impl HookedFile {
    /// Forwards to `inner` (until hooks are set).
    pub fn new(inner: Arc<dyn File>) -> HookedFile {
        HookedFile {
            inner,
            before_read: Box::new(|| Box::pin(async {})),
            before_sync: Box::new(|| Box::pin(async {})),
            on_sync_inline: Box::new(|| {}),
        }
    }

    /// Calls `hook` when a sync is asked for on the caller's thread
    /// (`File::sync_data_inline`), before the `before_sync` hook runs and the sync is
    /// forwarded (as `sync_data_inline`).
    pub fn on_sync_inline(mut self, hook: impl Fn() + Send + Sync + 'static) -> HookedFile {
        self.on_sync_inline = Box::new(hook);
        self
    }

    /// Runs the future `hook` returns before each read.
    pub fn before_read(
        mut self,
        hook: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> HookedFile {
        self.before_read = Box::new(hook);
        self
    }

    /// Runs the future `hook` returns before each sync.
    pub fn before_sync(
        mut self,
        hook: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> HookedFile {
        self.before_sync = Box::new(hook);
        self
    }
}

impl fmt::Debug for HookedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedFile")
            .field("inner", &self.inner)
            .finish()
    }
}

impl File for HookedFile {
    fn read_at(&self, offset: u64, len: usize) -> BoxFuture<'_, IoResult<Vec<u8>>> {
        let before = (self.before_read)();
        Box::pin(async move {
            before.await;
            self.inner.read_at(offset, len).await
        })
    }
    fn write_at(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, IoResult<()>> {
        self.inner.write_at(offset, data)
    }
    fn sync_data(&self) -> BoxFuture<'_, IoResult<()>> {
        let before = (self.before_sync)();
        Box::pin(async move {
            before.await;
            self.inner.sync_data().await
        })
    }
    fn sync_data_inline(&self) -> BoxFuture<'_, IoResult<()>> {
        (self.on_sync_inline)();
        let before = (self.before_sync)();
        Box::pin(async move {
            before.await;
            self.inner.sync_data_inline().await
        })
    }
    fn len(&self) -> BoxFuture<'_, IoResult<u64>> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> BoxFuture<'_, IoResult<()>> {
        self.inner.set_len(len)
    }
    fn path(&self) -> &str {
        self.inner.path()
    }
}
