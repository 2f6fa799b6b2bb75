//! `entidb._entidb`: the native half of the Python package `entidb` (PyO3 on a tokio runtime
//! through pyo3-async-runtimes). The Python half (`python/entidb/`) gives the public,
//! typed API; this crate gives awaitable primitives. No engine call holds the GIL, and no
//! panic crosses into Python (PyO3 turns one into `PanicException`; the code has no `unwrap`
//! on user or disk input).

// PyO3's generated glue uses unsafe code; this crate writes none itself.
#![allow(unsafe_code, reason = "PyO3 macros expand to FFI glue")]

mod convert;
mod db;
mod errors;
mod fast;
mod sync;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _entidb(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<db::PyDatabase>()?;
    m.add_class::<db::PyTransaction>()?;
    m.add_class::<db::PyReader>()?;
    m.add_class::<db::PyChangeStream>()?;
    m.add_class::<sync::PyReplicator>()?;
    m.add_class::<sync::PyStatusStream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
