//! The host's clock and entropy: what real (not simulated) backends use.
//!
//! Native targets read std's clocks and the operating system's random source. On `wasm32`
//! EntiDB runs under a JavaScript host (a browser tab, a worker, Node.js): the wall clock is
//! `Date.now()`, the monotonic clock `performance.now()`, sleeping is a `setTimeout`, and
//! entropy is `crypto.getRandomValues`. std's clocks and random source do not exist on
//! `wasm32-unknown-unknown` (`SystemTime::now` panics there), so nothing else may read them.

use std::time::Duration;

use crate::{BoxFuture, Clock, Entropy, IoError, IoResult, SeededEntropy};

/// The host's clock: std's on native targets, JavaScript's on `wasm32`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[cfg(not(target_arch = "wasm32"))]
impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn monotonic_nanos(&self) -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(futures_timer::Delay::new(duration))
    }
}

#[cfg(target_arch = "wasm32")]
impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        // Milliseconds since the epoch as a double; never negative on a sane host.
        js_sys::Date::now().max(0.0) as u64
    }
    fn monotonic_nanos(&self) -> u64 {
        js::monotonic_nanos()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // futures-timer's `wasm-bindgen` backend: a `setTimeout`, cleared when dropped.
        Box::pin(futures_timer::Delay::new(duration))
    }
}

#[cfg(target_arch = "wasm32")]
mod js {
    use std::cell::{Cell, OnceCell};

    use wasm_bindgen::{JsCast, JsValue};

    thread_local! {
        /// `performance` and its `now`, looked up once (absent on a few embedded hosts).
        static PERFORMANCE: OnceCell<Option<(JsValue, js_sys::Function)>> =
            const { OnceCell::new() };
        /// The last reading returned, so that readings never go backwards even where only
        /// `Date.now()` (which can) is available.
        static LAST: Cell<u64> = const { Cell::new(0) };
    }

    fn performance() -> Option<(JsValue, js_sys::Function)> {
        let perf = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("performance"))
            .ok()
            .filter(|p| p.is_object())?;
        let now = js_sys::Reflect::get(&perf, &JsValue::from_str("now"))
            .ok()?
            .dyn_into::<js_sys::Function>()
            .ok()?;
        Some((perf, now))
    }

    pub(super) fn monotonic_nanos() -> u64 {
        // The source is chosen once: `performance.now()` where the host has it, else
        // `Date.now()`. Mixing the two would jump between their origins. A reading that
        // fails repeats the last one.
        let millis = PERFORMANCE.with(|cell| match cell.get_or_init(performance) {
            Some((perf, now)) => now.call0(perf).ok().and_then(|v| v.as_f64()),
            None => Some(js_sys::Date::now()),
        });
        LAST.with(|last| {
            let n = millis
                .map(|m| (m.max(0.0) * 1e6) as u64)
                .unwrap_or(0)
                .max(last.get());
            last.set(n);
            n
        })
    }
}

/// Entropy from the host: the operating system on native targets, `crypto.getRandomValues`
/// on `wasm32`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) {
        if getrandom::fill(buf).is_err() {
            // The host's source is unavailable: fall back to a time-seeded generator rather
            // than panicking. Ids stay unique through the engine's monotonic counter.
            SeededEntropy::new(SystemClock.monotonic_nanos() ^ SystemClock.now_millis()).fill(buf);
        }
    }
    fn try_fill(&self, buf: &mut [u8]) -> IoResult<()> {
        getrandom::fill(buf).map_err(|e| IoError::NoEntropy {
            detail: e.to_string(),
        })
    }
}
