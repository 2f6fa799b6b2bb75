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
//! * the thread holds only a `Weak` to the database between steps (and while it waits at the
//!   gate, below), so dropping the last handle ends it; a step in progress holds the
//!   database (and so its directory lock) until it finishes;
//! * a round runs under the maintenance lock and does nothing once the database is closed:
//!   `close()` sets `closed`, then waits for the maintenance lock, so no file is written after
//!   it returns;
//! * memory stays bounded: a committer that finds more than [`MAX_FROZEN`] frozen memtables
//!   flushes the oldest down to that bound itself (after the round's current step: a round
//!   takes the maintenance lock per step), so writers cannot outrun the flush;
//! * a round waits for the maintenance lock rather than skipping, so a wake-up that arrives
//!   while `checkpoint()` or `compact()` holds it is not lost;
//! * a panic in a round is caught, recorded as a maintenance error, and ends the thread;
//!   committers then maintain on their own task again;
//! * flushed memtables are freed here, not by whichever reader or committer drops the last
//!   version that held them (`Inner::retired`): after each round the thread frees those
//!   nobody holds (and after each flush within a round), and while some are still held it
//!   looks again after a delay that doubles from `LINGER_FIRST` to `LINGER_MAX`, so memory
//!   held by a finished reader comes back without waiting for the next flush. A flush the
//!   thread did not run wakes it too. When the thread ends (closed, panicked) the list is
//!   emptied, and each memtable is freed by its last holder;
//! * an ingested transaction's batch (`Inner::discard`) is freed at the start of the next
//!   round, under the maintenance lock; at most one waits, and `close()` frees it if the
//!   thread has not;
//! * at most [`step_limit`] maintenance steps (a step: flush what is frozen, then one
//!   compaction step) run at once in the process, whatever the number of open databases, let
//!   in first come, first served ([`Gate`], taken per step by `Inner::maintain_gated`). A
//!   process with many databases (a sync server hosting them, a benchmark of 100 clients)
//!   whose memtables fill together would otherwise run that many flushes at once, each
//!   thread with the same share of the CPU as the threads serving requests. A step never
//!   waits for its database's maintenance lock while it holds a pass (an app's `compact()`
//!   or `checkpoint()` there must not hold up other databases), and gives the pass back
//!   before the next step, so a database under constant writes takes turns with the
//!   others. While a database waits at the gate, its committers still flush for themselves
//!   past `MAX_FROZEN` frozen memtables (memory stays bounded); its compactions wait for
//!   their turn.

use std::sync::{Arc, Condvar, Mutex};
#[cfg(not(target_arch = "wasm32"))]
use std::time::{Duration, Instant};

use crate::db::Inner;

/// Frozen memtables allowed to wait for the background thread before committers flush
/// themselves.
pub(crate) const MAX_FROZEN: usize = 2;

/// The first delay before the thread looks again at retired memtables that readers still
/// held; it doubles up to [`LINGER_MAX`] while they stay held.
#[cfg(not(target_arch = "wasm32"))]
const LINGER_FIRST: Duration = Duration::from_millis(5);
/// The longest delay between two looks at held retired memtables.
#[cfg(not(target_arch = "wasm32"))]
const LINGER_MAX: Duration = Duration::from_secs(1);

/// How many maintenance steps may run at once in the process: half the available cores, at
/// least one. (A limit of two, in one run on 2 cores, measured worse: S3's p99 3.5 s against
/// 2.3 s with one and 4.0 s ungated, `docs/benchmarks.md`.) While one long compaction step
/// holds the only pass, other databases' steps wait, and their committers flush for
/// themselves past `MAX_FROZEN` frozen memtables, as they do without a maintenance thread.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn step_limit() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// A first-come, first-served counting gate: at most `limit` holders of a [`Pass`] at once,
/// let in in the order they arrived (a thread that gives a pass back and asks again queues
/// behind those already waiting).
///
/// Tickets: the `t`-th caller of [`Gate::enter`] gets ticket `t` and is in once
/// `t < returned + limit`, where `returned` counts passes given back. Both counts only grow,
/// so tickets are let in in order, and at most `limit` of those let in have not returned.
/// A caller that must wait parks in `waiting` (in ticket order); a returned pass unparks
/// exactly the waiters it lets in, not every waiting thread (100 databases queued behind
/// one pass would otherwise all wake at every step).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub(crate) struct Gate {
    tickets: Mutex<Tickets>,
    limit: u64,
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
struct Tickets {
    /// The next ticket to hand out.
    next: u64,
    /// Passes given back.
    returned: u64,
    /// Parked callers not let in yet: their tickets (ascending) and threads.
    waiting: std::collections::VecDeque<(u64, std::thread::Thread)>,
}

/// Held while a maintenance step runs; dropping it lets the next ticket in.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub(crate) struct Pass<'a>(&'a Gate);

#[cfg(not(target_arch = "wasm32"))]
impl Gate {
    pub(crate) const fn new(limit: usize) -> Gate {
        Gate {
            tickets: Mutex::new(Tickets {
                next: 0,
                returned: 0,
                waiting: std::collections::VecDeque::new(),
            }),
            limit: if limit == 0 { 1 } else { limit as u64 },
        }
    }

    fn tickets(&self) -> std::sync::MutexGuard<'_, Tickets> {
        // Counters and a queue changed only under this lock by code that cannot panic midway.
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for this caller's turn, then holds one of the `limit` passes.
    pub(crate) fn enter(&self) -> Pass<'_> {
        let mut t = self.tickets();
        let mine = t.next;
        t.next += 1;
        if mine < t.returned + self.limit {
            return Pass(self);
        }
        t.waiting.push_back((mine, std::thread::current()));
        drop(t);
        loop {
            // The pass that lets this ticket in takes it off `waiting` and unparks it; a
            // wake-up from anything else finds the ticket still out and parks again.
            std::thread::park();
            if mine < self.tickets().returned + self.limit {
                return Pass(self);
            }
        }
    }

    /// A pass now if one is free and nobody waits for one (so that the order is kept).
    pub(crate) fn try_enter(&self) -> Option<Pass<'_>> {
        let mut t = self.tickets();
        if t.next < t.returned + self.limit {
            t.next += 1;
            Some(Pass(self))
        } else {
            None
        }
    }

    /// Passes out now (let in and not given back).
    #[cfg(test)]
    fn inside(&self) -> u64 {
        let t = self.tickets();
        t.next.min(t.returned + self.limit) - t.returned
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut t = self.0.tickets();
        t.returned += 1;
        // Unpark every waiter now let in (one per returned pass; `limit` at most), taking it
        // off the queue so that a later pass does not wake it again.
        let open = t.returned + self.0.limit;
        while t.waiting.front().is_some_and(|(ticket, _)| *ticket < open) {
            if let Some((_, thread)) = t.waiting.pop_front() {
                thread.unpark();
            }
        }
    }
}

/// The process's gate for maintenance steps (see the module's invariants).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn gate() -> &'static Gate {
    static GATE: std::sync::OnceLock<Gate> = std::sync::OnceLock::new();
    GATE.get_or_init(|| Gate::new(step_limit()))
}

/// Why [`Background::wait`] returned.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// A round was asked for.
    Round,
    /// The linger delay passed with nothing asked for.
    Linger,
    /// The thread must end.
    Stop,
}

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

    /// Block until a round is asked for, the thread must end, or (with `linger`) that much
    /// time passed.
    #[cfg(not(target_arch = "wasm32"))]
    fn wait(&self, linger: Option<Duration>) -> Wake {
        let deadline = linger.map(|d| Instant::now() + d);
        let mut f = self.flags();
        while !f.pending && !f.stop {
            match deadline {
                None => f = self.cv.wait(f).unwrap_or_else(|e| e.into_inner()),
                Some(at) => {
                    // A spurious wake-up waits for the rest of the delay, not all of it.
                    let Some(left) = at.checked_duration_since(Instant::now()) else {
                        return Wake::Linger;
                    };
                    f = self
                        .cv
                        .wait_timeout(f, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        f.pending = false;
        if f.stop { Wake::Stop } else { Wake::Round }
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
    // The delay before the next look at held retired memtables (`None`: none are held).
    let mut linger: Option<Duration> = None;
    loop {
        let wake = signal.wait(linger);
        if wake == Wake::Stop {
            return;
        }
        // The round holds the database only while a step runs: while it waits at the gate,
        // and between steps, a database whose last handle is dropped is gone.
        let steps = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match wake {
            Wake::Round => futures_executor::block_on(Inner::maintain_gated(&weak, gate())),
            _ => Ok(()),
        }));
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            // Nothing is flushed after `close()`: what is retired is freed by its holders.
            inner.drop_retired();
            return;
        }
        let round = steps.and_then(|result| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (result, inner.free_retired())
            }))
        });
        match round {
            Ok((result, held)) => {
                if let Err(e) = result {
                    inner.maintenance_failed(&e);
                }
                linger = match (held, linger) {
                    (0, _) => None,
                    (_, Some(d)) if wake == Wake::Linger => Some((d * 2).min(LINGER_MAX)),
                    _ => Some(LINGER_FIRST),
                };
            }
            Err(_) => {
                // A bug, not an I/O error: report it and hand maintenance back to the
                // committers rather than leave a dead thread that nobody flushes for.
                signal
                    .dead
                    .store(true, std::sync::atomic::Ordering::Release);
                // After `dead`: no flush pushes to the list any more (`Inner::retire`).
                inner.drop_retired();
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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A thread waits at a full gate until a pass comes back, then gets in.
    #[test]
    fn a_full_gate_holds_the_next_round_until_a_pass_returns() {
        let gate = Gate::new(2);
        let a = gate.enter();
        let _b = gate.enter();
        let entered = AtomicBool::new(false);
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                let _c = gate.enter();
                entered.store(true, Ordering::SeqCst);
            });
            // A broken gate lets the thread in at once; a working one holds it.
            std::thread::sleep(Duration::from_millis(50));
            assert!(!entered.load(Ordering::SeqCst), "got in past a full gate");
            drop(a);
            t.join().expect("the waiting thread");
        });
        assert!(entered.load(Ordering::SeqCst));
        assert_eq!(gate.inside(), 1);
    }

    /// Many threads through a gate of 2: never more than 2 inside, and every one gets in.
    #[test]
    fn never_more_than_the_limit_inside() {
        let gate = Gate::new(2);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let _p = gate.enter();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(done.load(Ordering::SeqCst), 8);
        assert!(most.load(Ordering::SeqCst) <= 2, "{most:?} inside at once");
        assert_eq!(gate.inside(), 0);
    }

    /// `try_enter` takes a free pass, and none while the gate is full.
    #[test]
    fn try_enter_takes_only_a_free_pass() {
        let gate = Gate::new(1);
        let a = gate.enter();
        assert!(gate.try_enter().is_none());
        drop(a);
        let b = gate.try_enter();
        assert!(b.is_some());
        assert_eq!(gate.inside(), 1);
        drop(b);
        assert_eq!(gate.inside(), 0);
    }

    /// Passes go in the order they were asked for: a thread that gives its pass back and
    /// asks again queues behind one already waiting.
    #[test]
    fn passes_go_first_come_first_served() {
        let gate = Gate::new(1);
        let order = Mutex::new(Vec::new());
        let first = gate.enter();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _p = gate.enter();
                order.lock().unwrap().push("waiter");
            });
            // Until the waiter holds its ticket, the pass stays out.
            while gate.tickets().next < 2 {
                std::thread::yield_now();
            }
            drop(first);
            // Asks again after the waiter did: it goes second.
            let _again = gate.enter();
            order.lock().unwrap().push("again");
            drop(_again);
            waiter.join().expect("the waiter");
        });
        assert_eq!(*order.lock().unwrap(), vec!["waiter", "again"]);
    }
}
