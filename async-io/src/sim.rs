//! The deterministic simulation backend: a simulated disk, page cache and file system that can
//! crash at any point and inject I/O errors, all driven by one seed.
//!
//! Same seed + same sequence of calls = same results, byte for byte. There are no threads, no
//! real time and no OS I/O; every future returned completes on its first poll (the work runs
//! when the future is first polled, so a future dropped unpolled has no effect).
//!
//! # The model
//!
//! **Files are inodes.** Each inode has a *volatile* image (what reads and `len` see), a
//! *durable* image (what survives a crash), and the ordered list of the `write_at`/`set_len`
//! calls applied to the volatile image since the last successful `sync_data` on that inode
//! (*pending* writes). `sync_data` makes durable := volatile (bytes and length) and clears the
//! pending list. A handle stays attached to its inode when the name is removed or renamed
//! (POSIX semantics); writes to an inode that no durable name reaches are lost at a crash.
//!
//! **The namespace** (path → inode, plus the set of directories) also exists twice: volatile and
//! durable. `open` with create, `remove`, `rename`, `create_dir` (one op per directory created)
//! and `remove_dir` change the volatile namespace at once and are appended to one global,
//! ordered list of *pending directory ops*, each tagged with the directories it touches (its
//! parent directory; both parents for a rename; the parent and the directory itself for
//! `remove_dir`). `sync_dir(d)` makes durable, in order, every pending op that touches `d`
//! **and every earlier pending op that shares a directory with an op being made durable**
//! (transitively), like a journaling file system that commits in order. Consequences:
//!
//! * a rename across two directories becomes durable atomically (both halves) when *either*
//!   directory is synced (portable code should sync both);
//! * `sync_dir` may make more durable than POSIX promises, never less;
//! * a file whose creation op is still pending is unreachable after a crash even if its data
//!   was synced; an entry whose parent directory is not durable is pruned at restart.
//!
//! **A crash** ([`SimBackend::crash_now`], or automatically via
//! [`SimConfig::crash_after_ops`] / [`SimBackend::schedule_crash_after`]) puts the machine down:
//! every call on the backend and on every file handle opened before returns
//! [`IoError::Crashed`] (reads included). Handles opened before a crash stay dead forever, even
//! after [`SimBackend::restart`] (each handle remembers the boot generation it was opened in).
//!
//! **Restart** computes the post-crash disk from the seed:
//!
//! 1. namespace := durable namespace + a random-length prefix (possibly empty, possibly all) of
//!    the pending directory ops, applied in order; entries whose parent directory does not
//!    exist are pruned;
//! 2. for each reachable inode, starting from its durable image, each pending write in order is
//!    independently *applied* whole, *dropped*, *torn* (only a prefix of its bytes, of random
//!    length `1..len`, is applied; a one-byte write is never torn), or *scattered* (each of the
//!    512-byte sectors it covers, aligned to the file, is applied or not on its own, as when a
//!    kernel writes a range's pages back in any order), with equal probability (a write within
//!    one sector is never scattered); each pending `set_len` is applied or dropped (equal
//!    probability);
//! 3. the result becomes both the volatile and the durable state; nothing is pending; all locks
//!    are released; the boot generation is bumped.
//!
//! **Operation count.** Every verb on the backend (`open`, `remove`, `rename`, `list`, `exists`,
//! `create_dir`, `remove_dir`, `sync_dir`, `lock`) and on a file (`read_at`, `write_at`,
//! `sync_data`, `len`, `set_len`) that is called while the machine is up counts as one op,
//! whatever its result (`NotFound`, `Injected`, ...). With a crash scheduled after `n` ops,
//! exactly `n` more verbs execute and the `n + 1`-th returns `Crashed` without effect and
//! crashes the machine. Calls that return `Crashed` are not counted. `clock()`, `entropy()`,
//! `name()`, `File::path()` and the inspection helpers are not ops.
//!
//! **Injected errors** ([`IoError::Injected`]) are drawn from the seed, only for a call that
//! would otherwise succeed, and have **no effect**:
//!
//! | rate                | verbs                                            |
//! |---------------------|--------------------------------------------------|
//! | `read_error_rate`   | `read_at`                                        |
//! | `write_error_rate`  | `write_at`, `set_len`                            |
//! | `sync_error_rate`   | `sync_data`, `sync_dir`                          |
//! | `dir_error_rate`    | `open`, `remove`, `rename`, `create_dir`, `remove_dir`, `list` |
//!
//! `exists`, `len` and `lock` never get injected errors. A failed `sync_data` leaves the durable
//! image *and* the pending writes unchanged (a later successful sync makes them durable; a crash
//! may apply, drop or tear them). This is kinder than Linux, where a failed fsync may silently
//! drop dirty pages, which is why the engine must fail-stop after any sync error anyway. A
//! failed `sync_dir` likewise leaves the pending directory ops pending.
//!
//! **Time** is simulated: the clock starts at [`SIM_EPOCH_MILLIS`] (wall) and 0 (monotonic) and
//! every op advances it by a seeded 1..=20 µs; `Clock::sleep` advances it by the requested
//! duration and completes at once. Time keeps running across crashes. **Entropy** is a
//! [`SeededEntropy`] seeded from `seed ^ 0x9E37_79B9_7F4A_7C15`.
//!
//! **Locks** are exclusive per path (a separate namespace, no file is created), released when
//! the guard is dropped and at restart.
//!
//! Files are capped at 4 GiB ([`std::io::ErrorKind::FileTooLarge`] beyond). A zero-length
//! `write_at` does nothing (it does not extend the file).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{
    Backend, BoxFuture, Clock, Entropy, File, IoError, IoResult, LockGuard, MaybeSend, OpenMode,
    SeededEntropy, check_path, parent_dir,
};

/// Wall-clock time (ms since the Unix epoch) at which every simulation starts.
pub const SIM_EPOCH_MILLIS: u64 = 1_700_000_000_000;

/// Largest file the simulation holds.
const MAX_FILE_LEN: u64 = 1 << 32;

/// Largest simulated time step per op, in microseconds.
const MAX_STEP_MICROS: u64 = 20;

/// The unit of a scattered tear: sectors are written whole or not at all.
const SECTOR: usize = 512;

/// Fault injection settings. `Default` injects nothing and never crashes.
///
/// Rates are probabilities per eligible call (see the [module docs](self) for which verbs each
/// rate applies to); values outside `0.0..=1.0` are clamped, NaN counts as 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimConfig {
    /// Probability that a `read_at` fails with [`IoError::Injected`].
    pub read_error_rate: f64,
    /// Probability that a `write_at` or `set_len` fails (and is not applied).
    pub write_error_rate: f64,
    /// Probability that a `sync_data` or `sync_dir` fails (and makes nothing durable).
    pub sync_error_rate: f64,
    /// Probability that a namespace op (`open`, `remove`, `rename`, `create_dir`, `remove_dir`,
    /// `list`) fails (and is not applied).
    pub dir_error_rate: f64,
    /// Crash the machine automatically after this many more ops (counted from when the config
    /// is applied). One-shot: cleared when it fires.
    pub crash_after_ops: Option<u64>,
}

impl SimConfig {
    /// The same error rate for reads, writes, syncs and namespace ops; no scheduled crash.
    pub fn uniform(rate: f64) -> Self {
        Self {
            read_error_rate: rate,
            write_error_rate: rate,
            sync_error_rate: rate,
            dir_error_rate: rate,
            crash_after_ops: None,
        }
    }
}

/// Counters of what the simulated machine did (cumulative over restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Verb calls executed while the machine was up (whatever their result).
    pub ops: u64,
    /// Successful `read_at` calls.
    pub reads: u64,
    /// Successful `write_at` and `set_len` calls.
    pub writes: u64,
    /// Successful `sync_data` and `sync_dir` calls.
    pub syncs: u64,
    /// Crashes (manual or scheduled).
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
    /// Errors injected.
    pub injected_errors: u64,
    /// Pending writes / `set_len`s applied whole at restarts.
    pub writes_kept: u64,
    /// Pending writes / `set_len`s dropped at restarts.
    pub writes_lost: u64,
    /// Pending writes torn (a prefix applied, or some of their sectors) at restarts.
    pub writes_torn: u64,
    /// Pending directory ops applied at restarts.
    pub dir_ops_kept: u64,
    /// Pending directory ops dropped at restarts.
    pub dir_ops_lost: u64,
}

/// The deterministic fault-injecting backend. Cheap to clone; clones share the same simulated
/// machine. See the [module docs](self) for the model.
#[derive(Clone)]
pub struct SimBackend {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.state();
        f.debug_struct("SimBackend")
            .field("seed", &self.shared.seed)
            .field("boot", &st.boot)
            .field("crashed", &st.crashed)
            .field("stats", &st.stats)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Shared {
    seed: u64,
    state: Mutex<SimState>,
    clock: Arc<SimClock>,
    entropy: Arc<SeededEntropy>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SimState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Read,
    Write,
    Sync,
    Dir,
}

#[derive(Debug, Default)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<DataOp>,
    open_handles: u64,
}

#[derive(Debug)]
enum DataOp {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug, Clone)]
enum DirOp {
    Link { path: String, ino: u64 },
    Unlink { path: String },
    Rename { from: String, to: String, ino: u64 },
    CreateDir { path: String },
    RemoveDir { path: String },
}

impl DirOp {
    fn ino(&self) -> Option<u64> {
        match self {
            DirOp::Link { ino, .. } | DirOp::Rename { ino, .. } => Some(*ino),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct PendingDirOp {
    op: DirOp,
    /// The directories this op touches; `sync_dir` of any of them makes it durable.
    dirs: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Namespace {
    files: BTreeMap<String, u64>,
    dirs: BTreeSet<String>,
}

impl Namespace {
    fn apply(&mut self, op: &DirOp) {
        match op {
            DirOp::Link { path, ino } => {
                self.files.insert(path.clone(), *ino);
            }
            DirOp::Unlink { path } => {
                self.files.remove(path);
            }
            DirOp::Rename { from, to, ino } => {
                self.files.remove(from);
                self.files.insert(to.clone(), *ino);
            }
            DirOp::CreateDir { path } => {
                self.dirs.insert(path.clone());
            }
            DirOp::RemoveDir { path } => {
                // The directory inode goes away with whatever it still held.
                let prefix = format!("{path}/");
                self.dirs.remove(path);
                self.dirs.retain(|d| !d.starts_with(&prefix));
                self.files.retain(|f, _| !f.starts_with(&prefix));
            }
        }
    }

    fn dir_exists(&self, dir: &str) -> bool {
        dir.is_empty() || self.dirs.contains(dir)
    }

    /// Whether every ancestor directory of `path` exists.
    fn parents_exist(&self, path: &str) -> bool {
        let mut dir = parent_dir(path);
        while !dir.is_empty() {
            if !self.dirs.contains(dir) {
                return false;
            }
            dir = parent_dir(dir);
        }
        true
    }

    /// Drop every entry whose parent directory does not exist.
    fn prune_orphans(&mut self) {
        // A parent sorts before its children, so one pass in order suffices.
        let mut kept: BTreeSet<String> = BTreeSet::new();
        for d in &self.dirs {
            let parent = parent_dir(d);
            if parent.is_empty() || kept.contains(parent) {
                kept.insert(d.clone());
            }
        }
        self.dirs = kept;
        let dirs = &self.dirs;
        self.files
            .retain(|f, _| parent_dir(f).is_empty() || dirs.contains(parent_dir(f)));
    }

    fn has_children(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.files.keys().any(|p| p.starts_with(&prefix))
            || self.dirs.iter().any(|p| p.starts_with(&prefix))
    }
}

#[derive(Debug)]
struct SimState {
    boot: u64,
    crashed: bool,
    crash_countdown: Option<u64>,
    config: SimConfig,
    faults_on: bool,
    fault_rng: SmallRng,
    crash_rng: SmallRng,
    time_rng: SmallRng,
    clock: Arc<SimClock>,
    next_ino: u64,
    inodes: BTreeMap<u64, Inode>,
    volatile: Namespace,
    durable: Namespace,
    dir_ops: Vec<PendingDirOp>,
    locks: BTreeSet<String>,
    stats: SimStats,
}

fn crashed(op: &'static str, path: &str) -> IoError {
    IoError::Crashed {
        op,
        path: path.to_owned(),
    }
}

fn os(op: &'static str, path: &str, kind: ErrorKind, msg: &'static str) -> IoError {
    IoError::Os {
        op,
        path: path.to_owned(),
        source: std::io::Error::new(kind, msg),
    }
}

fn too_large(op: &'static str, path: &str) -> IoError {
    os(
        op,
        path,
        ErrorKind::FileTooLarge,
        "the simulation caps files at 4 GiB",
    )
}

fn not_found(op: &'static str, path: &str) -> IoError {
    IoError::NotFound {
        op,
        path: path.to_owned(),
    }
}

fn empty_path(path: &str) -> IoError {
    IoError::InvalidPath {
        path: path.to_owned(),
        reason: "a file path cannot be empty",
    }
}

/// `offset..offset + len` as `usize`s, if it lies within the file size cap.
fn span(offset: u64, len: u64) -> Option<(usize, usize)> {
    let end = offset.checked_add(len).filter(|&e| e <= MAX_FILE_LEN)?;
    Some((usize::try_from(offset).ok()?, usize::try_from(end).ok()?))
}

fn apply_write(image: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset..end].copy_from_slice(data);
}

fn clamp_rate(r: f64) -> f64 {
    if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) }
}

fn sanitize(mut c: SimConfig) -> SimConfig {
    c.read_error_rate = clamp_rate(c.read_error_rate);
    c.write_error_rate = clamp_rate(c.write_error_rate);
    c.sync_error_rate = clamp_rate(c.sync_error_rate);
    c.dir_error_rate = clamp_rate(c.dir_error_rate);
    c
}

/// Run `f` when the returned future is first polled.
fn lazy<'a, T: MaybeSend + 'a>(f: impl FnOnce() -> T + MaybeSend + 'a) -> BoxFuture<'a, T> {
    Box::pin(async move { f() })
}

impl SimState {
    /// Every verb starts here: refuse if down (or if the handle is from an earlier boot), fire
    /// a scheduled crash, count the op, advance time.
    fn begin(&mut self, boot: Option<u64>, op: &'static str, path: &str) -> IoResult<()> {
        if self.crashed || boot.is_some_and(|b| b != self.boot) {
            return Err(crashed(op, path));
        }
        if let Some(left) = self.crash_countdown {
            if left == 0 {
                self.crash_countdown = None;
                self.crash();
                return Err(crashed(op, path));
            }
            self.crash_countdown = Some(left - 1);
        }
        self.stats.ops += 1;
        let step = self.time_rng.random_range(1..=MAX_STEP_MICROS);
        self.clock.advance_nanos(step * 1_000);
        Ok(())
    }

    /// Maybe inject an error; called only when the op would otherwise succeed.
    fn inject(&mut self, kind: Fault, op: &'static str, path: &str) -> IoResult<()> {
        if !self.faults_on {
            return Ok(());
        }
        let rate = match kind {
            Fault::Read => self.config.read_error_rate,
            Fault::Write => self.config.write_error_rate,
            Fault::Sync => self.config.sync_error_rate,
            Fault::Dir => self.config.dir_error_rate,
        };
        if rate > 0.0 && self.fault_rng.random_bool(rate) {
            self.stats.injected_errors += 1;
            return Err(IoError::Injected {
                op,
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    fn crash(&mut self) {
        if !self.crashed {
            self.crashed = true;
            self.stats.crashes += 1;
        }
    }

    fn inode(&self, ino: u64, op: &'static str, path: &str) -> IoResult<&Inode> {
        self.inodes.get(&ino).ok_or_else(|| not_found(op, path))
    }

    fn inode_mut(&mut self, ino: u64, op: &'static str, path: &str) -> IoResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(|| not_found(op, path))
    }

    /// Apply a namespace op to the volatile namespace and queue it for durability.
    fn dir_op(&mut self, op: DirOp, mut dirs: Vec<String>) {
        dirs.sort();
        dirs.dedup();
        self.volatile.apply(&op);
        self.dir_ops.push(PendingDirOp { op, dirs });
    }

    /// Make durable every pending op touching `dir`, plus (transitively) every earlier op that
    /// shares a directory with one made durable; apply them in order.
    fn promote(&mut self, dir: &str) {
        let mut closure = BTreeSet::from([dir.to_owned()]);
        let mut selected = vec![false; self.dir_ops.len()];
        for (i, p) in self.dir_ops.iter().enumerate().rev() {
            if p.dirs.iter().any(|d| closure.contains(d)) {
                selected[i] = true;
                closure.extend(p.dirs.iter().cloned());
            }
        }
        let ops = std::mem::take(&mut self.dir_ops);
        for (p, sel) in ops.into_iter().zip(selected) {
            if sel {
                self.durable.apply(&p.op);
            } else {
                self.dir_ops.push(p);
            }
        }
    }

    /// Forget inodes nothing can reach any more (no name, no pending op, no open handle).
    fn collect(&mut self) {
        let mut live: BTreeSet<u64> = self.volatile.files.values().copied().collect();
        live.extend(self.durable.files.values().copied());
        live.extend(self.dir_ops.iter().filter_map(|p| p.op.ino()));
        self.inodes
            .retain(|ino, inode| inode.open_handles > 0 || live.contains(ino));
    }

    fn restart(&mut self) {
        self.crash();
        // 1. The namespace: durable + a random prefix of the pending ops.
        let ops = std::mem::take(&mut self.dir_ops);
        let keep = self.crash_rng.random_range(0..=ops.len());
        for (i, p) in ops.iter().enumerate() {
            if i < keep {
                self.durable.apply(&p.op);
                self.stats.dir_ops_kept += 1;
            } else {
                self.stats.dir_ops_lost += 1;
            }
        }
        self.durable.prune_orphans();
        self.volatile = self.durable.clone();
        self.locks.clear();
        for inode in self.inodes.values_mut() {
            inode.open_handles = 0;
        }
        self.collect();
        // 2. The data: each pending write applied, dropped or torn.
        for inode in self.inodes.values_mut() {
            let mut image = std::mem::take(&mut inode.durable);
            for op in std::mem::take(&mut inode.pending) {
                match op {
                    DataOp::Write { offset, data } => {
                        let sectors = (offset + data.len()).div_ceil(SECTOR) - offset / SECTOR;
                        let choice = if sectors >= 2 {
                            self.crash_rng.random_range(0..4u8)
                        } else if data.len() >= 2 {
                            self.crash_rng.random_range(0..3u8)
                        } else {
                            self.crash_rng.random_range(0..2u8)
                        };
                        match choice {
                            0 => {
                                apply_write(&mut image, offset, &data);
                                self.stats.writes_kept += 1;
                            }
                            1 => self.stats.writes_lost += 1,
                            2 => {
                                let n = self.crash_rng.random_range(1..data.len());
                                apply_write(&mut image, offset, &data[..n]);
                                self.stats.writes_torn += 1;
                            }
                            _ => {
                                // Sector by sector: each part of the write inside one sector
                                // lands or not.
                                let end = offset + data.len();
                                let mut at = offset;
                                while at < end {
                                    let next = ((at / SECTOR) + 1) * SECTOR;
                                    let hi = next.min(end);
                                    if self.crash_rng.random_bool(0.5) {
                                        apply_write(
                                            &mut image,
                                            at,
                                            &data[at - offset..hi - offset],
                                        );
                                    }
                                    at = hi;
                                }
                                self.stats.writes_torn += 1;
                            }
                        }
                    }
                    DataOp::SetLen(len) => {
                        if self.crash_rng.random_bool(0.5) {
                            image.resize(len, 0);
                            self.stats.writes_kept += 1;
                        } else {
                            self.stats.writes_lost += 1;
                        }
                    }
                }
            }
            inode.volatile = image.clone();
            inode.durable = image;
        }
        self.boot += 1;
        self.crashed = false;
        self.stats.restarts += 1;
    }
}

impl SimBackend {
    /// A new simulated machine with an empty disk, driven by `seed`.
    pub fn new(seed: u64, config: SimConfig) -> Self {
        let clock = Arc::new(SimClock::new(SIM_EPOCH_MILLIS));
        let config = sanitize(config);
        let state = SimState {
            boot: 0,
            crashed: false,
            crash_countdown: config.crash_after_ops,
            config,
            faults_on: true,
            fault_rng: SmallRng::seed_from_u64(seed ^ 0xA076_1D64_78BD_642F),
            crash_rng: SmallRng::seed_from_u64(seed ^ 0xE703_7ED1_A0B4_28DB),
            time_rng: SmallRng::seed_from_u64(seed ^ 0x8EBC_6AF0_9C88_C6E3),
            clock: clock.clone(),
            next_ino: 1,
            inodes: BTreeMap::new(),
            volatile: Namespace::default(),
            durable: Namespace::default(),
            dir_ops: Vec::new(),
            locks: BTreeSet::new(),
            stats: SimStats::default(),
        };
        Self {
            shared: Arc::new(Shared {
                seed,
                state: Mutex::new(state),
                clock,
                entropy: Arc::new(SeededEntropy::new(seed ^ 0x9E37_79B9_7F4A_7C15)),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.shared.state()
    }

    /// The seed this machine was created with.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Crash the machine now: every call fails with [`IoError::Crashed`] until
    /// [`SimBackend::restart`]; handles and lock guards from before stay dead forever.
    pub fn crash_now(&self) {
        self.state().crash();
    }

    /// Bring the machine back up with the post-crash disk state computed from the seed (see
    /// the [module docs](self)). Crashes first if the machine is up.
    pub fn restart(&self) {
        self.state().restart();
    }

    /// Whether the machine is down.
    pub fn is_crashed(&self) -> bool {
        self.state().crashed
    }

    /// The boot generation (0 at creation, +1 per restart).
    pub fn boot_generation(&self) -> u64 {
        self.state().boot
    }

    /// Crash automatically after `n_ops` more ops: exactly `n_ops` verbs execute, the next one
    /// returns [`IoError::Crashed`]. Replaces any earlier schedule.
    pub fn schedule_crash_after(&self, n_ops: u64) {
        self.state().crash_countdown = Some(n_ops);
    }

    /// Cancel a scheduled crash.
    pub fn cancel_scheduled_crash(&self) {
        self.state().crash_countdown = None;
    }

    /// Replace the fault settings: the error rates, and the crash schedule
    /// (`crash_after_ops` counted from now; `None` cancels a scheduled crash).
    pub fn set_faults(&self, config: SimConfig) {
        let mut st = self.state();
        let config = sanitize(config);
        st.crash_countdown = config.crash_after_ops;
        st.config = config;
    }

    /// Turn error injection on or off without forgetting the rates (scheduled crashes are not
    /// affected).
    pub fn faults_enabled(&self, enabled: bool) {
        self.state().faults_on = enabled;
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.state().stats
    }

    /// Move simulated time forward.
    pub fn advance_time(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// Paths of all files in the volatile namespace, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.state().volatile.files.keys().cloned().collect()
    }

    /// Paths of all files a crash with no pending op applied would keep, sorted.
    pub fn durable_file_names(&self) -> Vec<String> {
        let st = self.state();
        st.durable
            .files
            .keys()
            .filter(|p| st.durable.parents_exist(p))
            .cloned()
            .collect()
    }

    /// Number of directory ops not yet durable.
    pub fn pending_dir_ops(&self) -> usize {
        self.state().dir_ops.len()
    }

    /// The durable image of the file the *durable* namespace maps `path` to (`None` if that
    /// name is not durable). This is what survives a crash that drops every pending op.
    pub fn durable_bytes(&self, path: &str) -> Option<Vec<u8>> {
        let st = self.state();
        if !st.durable.parents_exist(path) {
            return None;
        }
        let ino = st.durable.files.get(path)?;
        st.inodes.get(ino).map(|i| i.durable.clone())
    }

    /// The volatile image (what reads see) of the file at `path`.
    pub fn volatile_bytes(&self, path: &str) -> Option<Vec<u8>> {
        let st = self.state();
        let ino = st.volatile.files.get(path)?;
        st.inodes.get(ino).map(|i| i.volatile.clone())
    }

    /// XOR `xor` into the byte at `offset` of the file at `path` (volatile namespace), in both
    /// its volatile and durable images (each where it is long enough). Not an op; works while
    /// crashed. `UnexpectedEof` if neither image reaches `offset`.
    pub fn corrupt(&self, path: &str, offset: u64, xor: u8) -> IoResult<()> {
        let mut st = self.state();
        let ino = *st
            .volatile
            .files
            .get(path)
            .ok_or_else(|| not_found("corrupt", path))?;
        let inode = st.inode_mut(ino, "corrupt", path)?;
        let idx = usize::try_from(offset).ok();
        let mut hit = false;
        for image in [&mut inode.volatile, &mut inode.durable] {
            if let Some(b) = idx.and_then(|i| image.get_mut(i)) {
                *b ^= xor;
                hit = true;
            }
        }
        if hit {
            Ok(())
        } else {
            Err(IoError::UnexpectedEof {
                path: path.to_owned(),
                offset,
                len: 1,
                file_len: inode.volatile.len() as u64,
            })
        }
    }

    /// Set the length of the *durable* image of the file at `path` (volatile namespace),
    /// truncating or zero-extending; the volatile image is untouched, so the effect shows after
    /// the next crash + restart (pending writes are still replayed on top of it). Not an op.
    pub fn truncate_durable(&self, path: &str, len: u64) -> IoResult<()> {
        let mut st = self.state();
        let ino = *st
            .volatile
            .files
            .get(path)
            .ok_or_else(|| not_found("truncate_durable", path))?;
        let (len, _) = span(len, 0).ok_or_else(|| too_large("truncate_durable", path))?;
        st.inode_mut(ino, "truncate_durable", path)?
            .durable
            .resize(len, 0);
        Ok(())
    }

    fn do_open(&self, path: &str, mode: OpenMode) -> IoResult<Arc<dyn File>> {
        let mut st = self.state();
        st.begin(None, "open", path)?;
        check_path(path)?;
        if path.is_empty() {
            return Err(empty_path(path));
        }
        if !st.volatile.dir_exists(parent_dir(path)) {
            return Err(not_found("open", path));
        }
        if st.volatile.dirs.contains(path) {
            return Err(os("open", path, ErrorKind::IsADirectory, "is a directory"));
        }
        let existing = st.volatile.files.get(path).copied();
        let ino = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(IoError::AlreadyExists {
                    op: "open",
                    path: path.to_owned(),
                });
            }
            (None, OpenMode::Existing) => return Err(not_found("open", path)),
            (Some(ino), _) => {
                st.inject(Fault::Dir, "open", path)?;
                ino
            }
            (None, _) => {
                st.inject(Fault::Dir, "open", path)?;
                let ino = st.next_ino;
                st.next_ino += 1;
                st.inodes.insert(ino, Inode::default());
                st.dir_op(
                    DirOp::Link {
                        path: path.to_owned(),
                        ino,
                    },
                    vec![parent_dir(path).to_owned()],
                );
                ino
            }
        };
        st.inode_mut(ino, "open", path)?.open_handles += 1;
        Ok(Arc::new(SimFile {
            shared: self.shared.clone(),
            ino,
            boot: st.boot,
            path: path.to_owned(),
        }))
    }

    fn do_remove(&self, path: &str) -> IoResult<()> {
        let mut st = self.state();
        st.begin(None, "remove", path)?;
        check_path(path)?;
        if path.is_empty() {
            return Err(empty_path(path));
        }
        if !st.volatile.files.contains_key(path) {
            if st.volatile.dirs.contains(path) {
                return Err(os(
                    "remove",
                    path,
                    ErrorKind::IsADirectory,
                    "is a directory",
                ));
            }
            return Err(not_found("remove", path));
        }
        st.inject(Fault::Dir, "remove", path)?;
        st.dir_op(
            DirOp::Unlink {
                path: path.to_owned(),
            },
            vec![parent_dir(path).to_owned()],
        );
        st.collect();
        Ok(())
    }

    fn do_rename(&self, from: &str, to: &str) -> IoResult<()> {
        let mut st = self.state();
        st.begin(None, "rename", from)?;
        check_path(from)?;
        check_path(to)?;
        if from.is_empty() || to.is_empty() {
            return Err(empty_path(if from.is_empty() { from } else { to }));
        }
        let Some(ino) = st.volatile.files.get(from).copied() else {
            if st.volatile.dirs.contains(from) {
                return Err(IoError::Unsupported {
                    op: "rename of a directory",
                    backend: "sim",
                });
            }
            return Err(not_found("rename", from));
        };
        if !st.volatile.dir_exists(parent_dir(to)) {
            return Err(not_found("rename", to));
        }
        if st.volatile.dirs.contains(to) {
            return Err(os("rename", to, ErrorKind::IsADirectory, "is a directory"));
        }
        st.inject(Fault::Dir, "rename", from)?;
        if from == to {
            return Ok(());
        }
        st.dir_op(
            DirOp::Rename {
                from: from.to_owned(),
                to: to.to_owned(),
                ino,
            },
            vec![parent_dir(from).to_owned(), parent_dir(to).to_owned()],
        );
        st.collect();
        Ok(())
    }

    fn do_list(&self, dir: &str) -> IoResult<Vec<String>> {
        let mut st = self.state();
        st.begin(None, "list", dir)?;
        check_path(dir)?;
        if !st.volatile.dir_exists(dir) {
            return Err(not_found("list", dir));
        }
        st.inject(Fault::Dir, "list", dir)?;
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out: Vec<String> = st
            .volatile
            .files
            .keys()
            .chain(st.volatile.dirs.iter())
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .map(str::to_owned)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn do_exists(&self, path: &str) -> IoResult<bool> {
        let mut st = self.state();
        st.begin(None, "exists", path)?;
        check_path(path)?;
        Ok(path.is_empty()
            || st.volatile.files.contains_key(path)
            || st.volatile.dirs.contains(path))
    }

    fn do_create_dir(&self, path: &str) -> IoResult<()> {
        let mut st = self.state();
        st.begin(None, "create_dir", path)?;
        check_path(path)?;
        let mut missing = Vec::new();
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            if st.volatile.files.contains_key(&cur) {
                return Err(os(
                    "create_dir",
                    &cur,
                    ErrorKind::NotADirectory,
                    "a file is in the way",
                ));
            }
            if !st.volatile.dirs.contains(&cur) {
                missing.push(cur.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        st.inject(Fault::Dir, "create_dir", path)?;
        for d in missing {
            let parent = parent_dir(&d).to_owned();
            st.dir_op(DirOp::CreateDir { path: d }, vec![parent]);
        }
        Ok(())
    }

    fn do_remove_dir(&self, path: &str) -> IoResult<()> {
        let mut st = self.state();
        st.begin(None, "remove_dir", path)?;
        check_path(path)?;
        if path.is_empty() {
            return Err(IoError::InvalidPath {
                path: String::new(),
                reason: "the root cannot be removed",
            });
        }
        if !st.volatile.dirs.contains(path) {
            if st.volatile.files.contains_key(path) {
                return Err(os(
                    "remove_dir",
                    path,
                    ErrorKind::NotADirectory,
                    "not a directory",
                ));
            }
            return Err(not_found("remove_dir", path));
        }
        if st.volatile.has_children(path) {
            return Err(os(
                "remove_dir",
                path,
                ErrorKind::DirectoryNotEmpty,
                "directory not empty",
            ));
        }
        st.inject(Fault::Dir, "remove_dir", path)?;
        st.dir_op(
            DirOp::RemoveDir {
                path: path.to_owned(),
            },
            vec![parent_dir(path).to_owned(), path.to_owned()],
        );
        Ok(())
    }

    fn do_sync_dir(&self, dir: &str) -> IoResult<()> {
        let mut st = self.state();
        st.begin(None, "sync_dir", dir)?;
        check_path(dir)?;
        if !st.volatile.dir_exists(dir) {
            return Err(not_found("sync_dir", dir));
        }
        st.inject(Fault::Sync, "sync_dir", dir)?;
        st.promote(dir);
        st.stats.syncs += 1;
        st.collect();
        Ok(())
    }

    fn do_lock(&self, path: &str) -> IoResult<Box<dyn LockGuard>> {
        let mut st = self.state();
        st.begin(None, "lock", path)?;
        check_path(path)?;
        if path.is_empty() {
            return Err(empty_path(path));
        }
        if !st.locks.insert(path.to_owned()) {
            return Err(IoError::Locked {
                path: path.to_owned(),
            });
        }
        Ok(Box::new(SimLock {
            shared: self.shared.clone(),
            path: path.to_owned(),
            boot: st.boot,
        }))
    }
}

impl Backend for SimBackend {
    fn open(&self, path: &str, mode: OpenMode) -> BoxFuture<'_, IoResult<Arc<dyn File>>> {
        let path = path.to_owned();
        lazy(move || self.do_open(&path, mode))
    }

    fn remove(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        lazy(move || self.do_remove(&path))
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, IoResult<()>> {
        let (from, to) = (from.to_owned(), to.to_owned());
        lazy(move || self.do_rename(&from, &to))
    }

    fn list(&self, dir: &str) -> BoxFuture<'_, IoResult<Vec<String>>> {
        let dir = dir.to_owned();
        lazy(move || self.do_list(&dir))
    }

    fn exists(&self, path: &str) -> BoxFuture<'_, IoResult<bool>> {
        let path = path.to_owned();
        lazy(move || self.do_exists(&path))
    }

    fn create_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        lazy(move || self.do_create_dir(&path))
    }

    fn remove_dir(&self, path: &str) -> BoxFuture<'_, IoResult<()>> {
        let path = path.to_owned();
        lazy(move || self.do_remove_dir(&path))
    }

    fn sync_dir(&self, dir: &str) -> BoxFuture<'_, IoResult<()>> {
        let dir = dir.to_owned();
        lazy(move || self.do_sync_dir(&dir))
    }

    fn lock(&self, path: &str) -> BoxFuture<'_, IoResult<Box<dyn LockGuard>>> {
        let path = path.to_owned();
        lazy(move || self.do_lock(&path))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.shared.clock.clone()
    }

    fn entropy(&self) -> Arc<dyn Entropy> {
        self.shared.entropy.clone()
    }

    fn name(&self) -> &'static str {
        "sim"
    }
}

/// A handle on one simulated inode, valid for the boot generation it was opened in.
struct SimFile {
    shared: Arc<Shared>,
    ino: u64,
    boot: u64,
    path: String,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("path", &self.path)
            .field("ino", &self.ino)
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        if st.boot != self.boot {
            return;
        }
        if let Some(inode) = st.inodes.get_mut(&self.ino) {
            inode.open_handles = inode.open_handles.saturating_sub(1);
            if inode.open_handles == 0 {
                st.collect();
            }
        }
    }
}

impl SimFile {
    fn do_read(&self, offset: u64, len: usize) -> IoResult<Vec<u8>> {
        let mut st = self.shared.state();
        st.begin(Some(self.boot), "read", &self.path)?;
        let file_len = st.inode(self.ino, "read", &self.path)?.volatile.len() as u64;
        let range = span(offset, len as u64).filter(|&(_, end)| end as u64 <= file_len);
        let Some((start, end)) = range else {
            return Err(IoError::UnexpectedEof {
                path: self.path.clone(),
                offset,
                len: len as u64,
                file_len,
            });
        };
        st.inject(Fault::Read, "read", &self.path)?;
        st.stats.reads += 1;
        Ok(st.inode(self.ino, "read", &self.path)?.volatile[start..end].to_vec())
    }

    fn do_write(&self, offset: u64, data: Vec<u8>) -> IoResult<()> {
        let mut st = self.shared.state();
        st.begin(Some(self.boot), "write", &self.path)?;
        let (start, _) =
            span(offset, data.len() as u64).ok_or_else(|| too_large("write", &self.path))?;
        st.inode(self.ino, "write", &self.path)?;
        st.inject(Fault::Write, "write", &self.path)?;
        st.stats.writes += 1;
        if data.is_empty() {
            return Ok(());
        }
        let inode = st.inode_mut(self.ino, "write", &self.path)?;
        apply_write(&mut inode.volatile, start, &data);
        inode.pending.push(DataOp::Write {
            offset: start,
            data,
        });
        Ok(())
    }

    fn do_sync(&self) -> IoResult<()> {
        let mut st = self.shared.state();
        st.begin(Some(self.boot), "sync_data", &self.path)?;
        st.inode(self.ino, "sync_data", &self.path)?;
        st.inject(Fault::Sync, "sync_data", &self.path)?;
        st.stats.syncs += 1;
        let inode = st.inode_mut(self.ino, "sync_data", &self.path)?;
        inode.durable.clone_from(&inode.volatile);
        inode.pending.clear();
        Ok(())
    }

    fn do_len(&self) -> IoResult<u64> {
        let mut st = self.shared.state();
        st.begin(Some(self.boot), "len", &self.path)?;
        Ok(st.inode(self.ino, "len", &self.path)?.volatile.len() as u64)
    }

    fn do_set_len(&self, len: u64) -> IoResult<()> {
        let mut st = self.shared.state();
        st.begin(Some(self.boot), "set_len", &self.path)?;
        let (len, _) = span(len, 0).ok_or_else(|| too_large("set_len", &self.path))?;
        st.inode(self.ino, "set_len", &self.path)?;
        st.inject(Fault::Write, "set_len", &self.path)?;
        st.stats.writes += 1;
        let inode = st.inode_mut(self.ino, "set_len", &self.path)?;
        inode.volatile.resize(len, 0);
        inode.pending.push(DataOp::SetLen(len));
        Ok(())
    }
}

impl File for SimFile {
    fn read_at(&self, offset: u64, len: usize) -> BoxFuture<'_, IoResult<Vec<u8>>> {
        lazy(move || self.do_read(offset, len))
    }

    fn write_at(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, IoResult<()>> {
        lazy(move || self.do_write(offset, data))
    }

    fn sync_data(&self) -> BoxFuture<'_, IoResult<()>> {
        lazy(move || self.do_sync())
    }

    fn len(&self) -> BoxFuture<'_, IoResult<u64>> {
        lazy(move || self.do_len())
    }

    fn set_len(&self, len: u64) -> BoxFuture<'_, IoResult<()>> {
        lazy(move || self.do_set_len(len))
    }

    fn path(&self) -> &str {
        &self.path
    }
}

/// The exclusive lock of one boot generation; dropping it releases the lock (a guard from an
/// earlier boot releases nothing: restart already did).
#[derive(Debug)]
struct SimLock {
    shared: Arc<Shared>,
    path: String,
    boot: u64,
}

impl LockGuard for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        if st.boot == self.boot {
            st.locks.remove(&self.path);
        }
    }
}

/// Simulated time: moves only when ops run or someone sleeps.
#[derive(Debug)]
struct SimClock {
    start_millis: u64,
    nanos: AtomicU64,
}

impl SimClock {
    fn new(start_millis: u64) -> Self {
        Self {
            start_millis,
            nanos: AtomicU64::new(0),
        }
    }

    fn advance_nanos(&self, n: u64) {
        // Never wraps: a saturated clock just stops.
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(n))
            });
    }

    fn advance(&self, by: Duration) {
        self.advance_nanos(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX));
    }
}

impl Clock for SimClock {
    fn now_millis(&self) -> u64 {
        self.start_millis
            .saturating_add(self.nanos.load(Ordering::Relaxed) / 1_000_000)
    }

    fn monotonic_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.advance(duration);
        Box::pin(std::future::ready(()))
    }
}
