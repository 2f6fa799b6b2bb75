//! Awaitables without a thread hop when the answer is already there.
//!
//! `future_into_py` always runs the future on a tokio worker and wakes the event loop with
//! `call_soon_threadsafe`: tens of microseconds per call even for a put into a transaction's
//! memory or a read from the block cache. [`run`] first polls the future once on the calling
//! thread (with the GIL released). If it is ready, the result goes into an asyncio future that
//! is already done, which `await` returns at once; if not, the same future (which has started,
//! and whose resources re-register the real waker on the next poll) moves to tokio as before.
//!
//! Only for engine futures: they wait on runtime-agnostic primitives (async-lock,
//! event-listener, the blocking pool). The sync client's futures need tokio's reactor and use
//! `future_into_py` directly.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::future_into_py;

/// Like `future_into_py`, with the ready-at-once fast path.
pub fn run<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let mut fut = Box::pin(fut);
    let polled = py.detach(|| {
        let mut cx = Context::from_waker(Waker::noop());
        fut.as_mut().poll(&mut cx)
    });
    match polled {
        Poll::Ready(result) => {
            let done = pyo3_async_runtimes::get_running_loop(py)?.call_method0("create_future")?;
            match result {
                Ok(v) => {
                    let obj = v.into_bound_py_any(py)?;
                    done.call_method1("set_result", (obj,))?;
                }
                Err(e) => {
                    done.call_method1("set_exception", (e.into_value(py),))?;
                }
            }
            Ok(done)
        }
        Poll::Pending => future_into_py(py, fut),
    }
}
