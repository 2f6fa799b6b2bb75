//! Background maintenance: flush and compaction on an OS thread of the database's own, so
//! that the committer whose commit froze a memtable does not pay for the flush (and a
//! compaction after it) before its `commit()` returns.
//!
//! Used only when [`Options::background_maintenance`](crate::Options) is set and the backend
//! allows it ([`entidb_io::Backend::background_threads`]: the native file backend, whose
//! futures make progress on their own thread pool). Elsewhere (the simulated backend, whose
//! runs must replay from a seed, memory, wasm32) the work stays on the committing task, as
//! before.
//!
//! Invariants:
//! * the thread holds only a `Weak` to the database between rounds, so dropping the last
//!   handle ends it; a round in progress holds the database (and so its directory lock)
//!   until it finishes;
//! * a round runs under the maintenance lock and does nothing once the database is closed:
//!   `close()` sets `closed`, then waits for the maintenance lock, so no file is written after
//!   it returns;
//! * memory stays bounded: a committer that finds more than [`MAX_FROZEN`] frozen memtables
//!   flushes the oldest down to that bound itself (after the round's current step: a round
//!   takes the maintenance lock per step), so writers cannot outrun the flush;
//! * a round waits for the maintenance lock rather than skipping, so a wake-up that arrives
//!   while `checkpoint()` or `compact()` holds it is not lost;
//! * a panic in a round is caught, recorded as a maintenance error, and ends the thread;
//!   committers then maintain on their own task again.

use std::sync::{Arc, Condvar, Mutex};

use crate::db::Inner;

/// Frozen memtables allowed to wait for the background thread before committers flush
/// themselves.
pub(crate) const MAX_FROZEN: usize = 2;

#[derive(Debug, Default)]
struct Flags {
    /// Work may be waiting (set by `wake`, cleared when a round starts).
    pending: bool,
    /// The database is gone or closed: the thread ends.
    stop: bool,
}

/// The wake-up signal shared by a database and its maintenance thread.
#[derive(Debug, Default)]
pub(crate) struct Background {
    flags: Mutex<Flags>,
    cv: Condvar,
    /// Set if a round panicked: committers then maintain on their own task again.
    dead: std::sync::atomic::AtomicBool,
}

impl Background {
    fn flags(&self) -> std::sync::MutexGuard<'_, Flags> {
        // The flags are two booleans: a panic elsewhere cannot leave them inconsistent.
        self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the thread still takes wake-ups.
    pub(crate) fn alive(&self) -> bool {
        !self.dead.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Ask for a round (cheap; rounds are coalesced).
    pub(crate) fn wake(&self) {
        self.flags().pending = true;
        self.cv.notify_one();
    }

    /// End the thread after its current round.
    pub(crate) fn stop(&self) {
        self.flags().stop = true;
        self.cv.notify_one();
    }

    /// Block until a round is asked for (`true`) or the thread must end (`false`).
    #[cfg(not(target_arch = "wasm32"))]
    fn wait(&self) -> bool {
        let mut f = self.flags();
        while !f.pending && !f.stop {
            f = self.cv.wait(f).unwrap_or_else(|e| e.into_inner());
        }
        f.pending = false;
        !f.stop
    }
}

/// Start the maintenance thread of `inner`. Returns `false` (and the caller keeps maintenance
/// on the committing task) if no thread could be started.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn start(inner: &Arc<Inner>, signal: Arc<Background>) -> bool {
    let weak: std::sync::Weak<Inner> = Arc::downgrade(inner);
    std::thread::Builder::new()
        .name("entidb-maint".into())
        .spawn(move || run(weak, signal))
        .is_ok()
}

/// No threads on wasm32: maintenance stays on the committing task.
#[cfg(target_arch = "wasm32")]
pub(crate) fn start(_inner: &Arc<Inner>, _signal: Arc<Background>) -> bool {
    false
}

#[cfg(not(target_arch = "wasm32"))]
fn run(weak: std::sync::Weak<Inner>, signal: Arc<Background>) {
    while signal.wait() {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures_executor::block_on(inner.maintain(true))
        }));
        match round {
            Ok(Ok(())) => {}
            Ok(Err(e)) => inner.maintenance_failed(&e),
            Err(_) => {
                // A bug, not an I/O error: report it and hand maintenance back to the
                // committers rather than leave a dead thread that nobody flushes for.
                signal
                    .dead
                    .store(true, std::sync::atomic::Ordering::Release);
                inner.maintenance_failed_with(
                    "the maintenance thread panicked; flush and compaction now run on \
                     committing tasks"
                        .into(),
                );
                return;
            }
        }
    }
}
