//! The native class behind `entidb.sync.Sync`: a replicator attached to a database.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use entidb_sync::{HttpTransport, Replicator, SyncConfig};
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::convert::{PyId, PyValue, to_id};
use crate::db::{PyDatabase, json};
use crate::errors::{self, sync};

/// The `sub` and `db` claims of a JWT (read without checking the signature: the server
/// does that; the client only needs to know who it is).
fn claims(token: &str) -> (Option<String>, Option<String>) {
    let Some(payload) = token.split('.').nth(1) else {
        return (None, None);
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return (None, None);
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return (None, None);
    };
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    (text("sub"), text("db").filter(|d| d != "*"))
}

/// A replicator.
#[pyclass(module = "entidb._entidb", name = "Replicator", frozen)]
#[derive(Debug)]
pub struct PyReplicator {
    rep: Replicator,
}

/// (conflict id, collection, id, policy, loser, loser client, client id, op id, version, at ms)
type ConflictRow = (
    PyId,
    String,
    PyId,
    String,
    Option<PyValue>,
    Option<String>,
    String,
    u64,
    Option<u64>,
    u64,
);

#[pymethods]
impl PyReplicator {
    /// Attach to `db` and sync `collections` with the server at `url`. The database name and
    /// client id default to the token's `db` and `sub` claims.
    #[staticmethod]
    #[pyo3(signature = (db, url, token, collections, database=None, client_id=None, push_batch=None, push_bytes=None, pull_limit=None, initial_bootstrap=true, bootstrap_limit=None, max_attempts=None, retry_base_ms=None, durable_pulls=false))]
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors the Python keyword arguments"
    )]
    fn connect<'py>(
        py: Python<'py>,
        db: &PyDatabase,
        url: String,
        token: String,
        collections: Vec<String>,
        database: Option<String>,
        client_id: Option<String>,
        push_batch: Option<usize>,
        push_bytes: Option<usize>,
        pull_limit: Option<usize>,
        initial_bootstrap: bool,
        bootstrap_limit: Option<usize>,
        max_attempts: Option<u32>,
        retry_base_ms: Option<u64>,
        durable_pulls: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (sub, tdb) = claims(&token);
        let database = database.or(tdb).ok_or_else(|| {
            errors::InvalidArgument::new_err(
                "no database name: pass database=... (the token names none)",
            )
        })?;
        let client_id = client_id.or(sub).ok_or_else(|| {
            errors::InvalidArgument::new_err(
                "no client id: pass client_id=... (the token has no sub claim)",
            )
        })?;
        let names: Vec<&str> = collections.iter().map(String::as_str).collect();
        let mut config = SyncConfig::new(&database, &client_id, &names);
        config.initial_bootstrap = initial_bootstrap;
        if let Some(b) = push_batch {
            config.push_batch = b;
        }
        if let Some(b) = push_bytes {
            config.push_bytes = b;
        }
        if let Some(l) = pull_limit {
            config.pull_limit = l;
        }
        if let Some(l) = bootstrap_limit {
            config.bootstrap_limit = l;
        }
        if let Some(a) = max_attempts {
            config.max_attempts = a;
        }
        if let Some(ms) = retry_base_ms {
            config.retry_base = Duration::from_millis(ms);
        }
        if durable_pulls {
            config.pull_durability = entidb::Durability::Durable;
        }
        let transport = Arc::new(HttpTransport::new(&url, &token));
        let db = db.db.clone();
        future_into_py(py, async move {
            let rep = Replicator::attach(db, config, transport)
                .await
                .map_err(sync)?;
            Ok(PyReplicator { rep })
        })
    }

    /// One full round (capture, push, pull; bootstrap when needed); returns a report dict.
    fn sync_now<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rep = self.rep.clone();
        future_into_py(py, async move {
            let r = rep.sync_now().await.map_err(sync)?;
            report(r)
        })
    }

    /// A round that waits up to `wait_ms` on the server for remote changes (live mode).
    fn sync_wait<'py>(&self, py: Python<'py>, wait_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let rep = self.rep.clone();
        future_into_py(py, async move {
            let r = rep
                .sync_wait(Duration::from_millis(wait_ms))
                .await
                .map_err(sync)?;
            report(r)
        })
    }

    /// The replicator's status (see [`StatusRow`]).
    fn status(&self, py: Python<'_>) -> StatusRow {
        status_row(py.detach(|| self.rep.status()))
    }

    /// The status as it changes: the current one first, then each new one.
    fn status_stream(&self, py: Python<'_>) -> PyStatusStream {
        let stream = py.detach(|| self.rep.status_stream());
        PyStatusStream {
            stream: Arc::new(tokio::sync::Mutex::new(Box::pin(stream))),
        }
    }

    /// Capture local writes of the synced collections into the outbox; returns how many.
    fn capture<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rep = self.rep.clone();
        future_into_py(py, async move { rep.capture().await.map_err(sync) })
    }

    /// Push the outbox once (no retries); returns `(pushed, [(collection, id) rejected])`.
    fn push<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rep = self.rep.clone();
        future_into_py(py, async move {
            let (pushed, rejected) = rep.push().await.map_err(sync)?;
            let rejected: Vec<(String, PyId)> =
                rejected.into_iter().map(|(c, id)| (c, PyId(id))).collect();
            Ok((pushed, rejected))
        })
    }

    /// Pull remote changes once (no retries; bootstraps when needed); returns
    /// `(changes applied, bootstrapped)`.
    fn pull<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rep = self.rep.clone();
        future_into_py(py, async move { rep.pull().await.map_err(sync) })
    }

    /// Local writes not yet acknowledged.
    fn pending_ops<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rep = self.rep.clone();
        future_into_py(py, async move { rep.pending_ops().await.map_err(sync) })
    }

    /// A page of the server's conflict log: `(rows, next)`.
    #[pyo3(signature = (after=None, limit=100))]
    fn conflicts<'py>(
        &self,
        py: Python<'py>,
        after: Option<&Bound<'py, PyAny>>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let after = after.map(to_id).transpose()?;
        let rep = self.rep.clone();
        future_into_py(py, async move {
            let page = rep.conflicts(after, limit).await.map_err(sync)?;
            let mut out: Vec<ConflictRow> = Vec::with_capacity(page.conflicts.len());
            for c in page.conflicts {
                let loser = match c.loser {
                    Some(doc) => Some(PyValue(
                        doc.to_value().map_err(|e| errors::engine(e.into()))?,
                    )),
                    None => None,
                };
                let policy = serde_json::to_value(c.policy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                out.push((
                    PyId(c.conflict_id),
                    c.collection,
                    PyId(c.id),
                    policy,
                    loser,
                    c.loser_client,
                    c.client_id,
                    c.op_id,
                    c.version,
                    c.at_millis,
                ));
            }
            Ok((out, page.next.map(PyId)))
        })
    }
}

/// `(online, pending_ops, cursor, last_sync_ms, last_error, bootstrap (done, total),
/// rejected_ops)`.
type StatusRow = (
    bool,
    u64,
    u64,
    Option<u64>,
    Option<String>,
    Option<(u64, Option<u64>)>,
    u64,
);

fn status_row(s: entidb_sync::Status) -> StatusRow {
    (
        s.online,
        s.pending_ops,
        s.cursor,
        s.last_sync_millis,
        s.last_error,
        s.bootstrap.map(|p| (p.done, p.total)),
        s.rejected_ops,
    )
}

type BoxedStatusStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = entidb_sync::Status> + Send>>;

/// The replicator's status as it changes.
#[pyclass(module = "entidb._entidb", name = "StatusStream", frozen)]
pub struct PyStatusStream {
    stream: Arc<tokio::sync::Mutex<BoxedStatusStream>>,
}

impl std::fmt::Debug for PyStatusStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusStream")
    }
}

#[pymethods]
impl PyStatusStream {
    /// The next status, waiting for a change.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stream = self.stream.clone();
        future_into_py(py, async move {
            let mut s = stream.lock().await;
            Ok(futures_util::StreamExt::next(&mut *s).await.map(status_row))
        })
    }
}

fn report(r: entidb_sync::SyncReport) -> PyResult<crate::db::Json> {
    let rejected: Vec<(String, String)> = r
        .rejected
        .iter()
        .map(|(c, id)| (c.clone(), id.to_string()))
        .collect();
    json(&serde_json::json!({
        "captured": r.captured,
        "pushed": r.pushed,
        "pulled": r.pulled,
        "bootstrapped": r.bootstrapped,
        "rejected": rejected,
    }))
}
