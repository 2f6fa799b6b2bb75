//! The native classes behind `entidb.Database`, `Transaction` and `Snapshot`. Every engine
//! call runs as a future on the tokio runtime, without the GIL; Python values are converted
//! before the future starts and results when it resolves.

use std::ops::Bound as RangeBound;
use std::sync::Arc;

use crate::fast::run;
use entidb::cbor::Value;
use entidb::{
    Database, Document, Durability, IndexCursor, IndexSpec, Options, Query, ScanOptions,
    SearchQuery, Snapshot, WriteTxn,
};
use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3_async_runtimes::tokio::future_into_py;
use tokio::sync::Mutex;

use crate::convert::{PyId, PyValue, to_id, to_value};
use crate::errors::{self, engine};

/// (id, version, document) of one entity.
pub type Row = (PyId, u64, PyValue);

fn row(d: Document) -> PyResult<Row> {
    let v = d.value().map_err(engine)?;
    Ok((PyId(d.id()), d.version(), PyValue(v)))
}

fn rows(docs: Vec<Document>) -> PyResult<Vec<Row>> {
    docs.into_iter().map(row).collect()
}

/// A JSON-shaped result (stats, reports) handed to Python through `json.loads`.
#[derive(Debug)]
pub struct Json(pub String);

impl<'py> IntoPyObject<'py> for Json {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?.call_method1("loads", (self.0,))
    }
}

pub fn json<T: serde::Serialize>(v: &T) -> PyResult<Json> {
    serde_json::to_string(v)
        .map(Json)
        .map_err(|e| errors::Error::new_err(format!("cannot render a result: {e}")))
}

type TxHandle = Arc<Mutex<Option<WriteTxn>>>;

fn finished() -> PyErr {
    errors::Closed::new_err("the transaction has finished (committed or aborted)")
}

/// Where reads come from.
#[derive(Debug, Clone)]
enum Source {
    /// The latest state: a fresh snapshot per call.
    Latest(Database),
    /// One snapshot for the reader's life.
    Snapshot(Arc<Snapshot>),
    /// A write transaction (its own writes included).
    Txn(TxHandle),
}

impl Source {
    /// The entity `id` of `collection` as this source sees it.
    async fn get_document(
        &self,
        collection: &str,
        id: entidb::EntityId,
    ) -> PyResult<Option<entidb::Document>> {
        match self {
            Source::Latest(db) => db.snapshot().collection(collection).get_document(id).await,
            Source::Snapshot(s) => s.collection(collection).get_document(id).await,
            Source::Txn(t) => {
                let mut g = t.lock().await;
                let tx = g.as_mut().ok_or_else(finished)?;
                tx.collection(collection).get_document(id).await
            }
        }
        .map_err(engine)
    }
}

/// Query arguments, converted from Python before the future starts.
struct QueryArgs {
    query: Query,
    limit: usize,
}

#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the Python keyword arguments"
)]
fn query_args(
    kind: &str,
    values: Option<&Bound<'_, PyList>>,
    lower: Option<&Bound<'_, PyList>>,
    lower_inclusive: bool,
    upper: Option<&Bound<'_, PyList>>,
    upper_inclusive: bool,
    prefix: Option<&Bound<'_, PyAny>>,
    limit: usize,
    after: Option<Vec<u8>>,
) -> PyResult<QueryArgs> {
    let list = |l: Option<&Bound<'_, PyList>>| -> PyResult<Option<Vec<Value>>> {
        l.map(|l| l.iter().map(|x| to_value(&x)).collect())
            .transpose()
    };
    let values = list(values)?.unwrap_or_default();
    let bound = |v: Option<Vec<Value>>, inclusive: bool| match v {
        None => RangeBound::Unbounded,
        Some(v) if inclusive => RangeBound::Included(v),
        Some(v) => RangeBound::Excluded(v),
    };
    let mut query = match kind {
        "eq" => Query::eq_all(values),
        "range" => Query::range_all(
            bound(list(lower)?, lower_inclusive),
            bound(list(upper)?, upper_inclusive),
        ),
        "prefix" => {
            let p = prefix.map(to_value).transpose()?.ok_or_else(|| {
                errors::InvalidArgument::new_err("a prefix lookup needs a prefix")
            })?;
            Query::prefix_after(values, p)
        }
        "all" => Query::all(),
        other => {
            return Err(errors::InvalidArgument::new_err(format!(
                "unknown query kind {other:?} (eq, range, prefix, all)"
            )));
        }
    };
    query = query.limit(limit);
    if let Some(a) = after {
        query = query.after(IndexCursor::from_bytes(a));
    }
    Ok(QueryArgs { query, limit })
}

fn scan_options(after: Option<&Bound<'_, PyAny>>, limit: usize) -> PyResult<ScanOptions> {
    let opts = ScanOptions::limit(limit);
    Ok(match after {
        Some(a) => opts.after(to_id(a)?),
        None => opts,
    })
}

/// A page of lookup results: rows and the cursor after the last one.
type LookupPage = (Vec<Row>, Option<Vec<u8>>);
/// (score, id, version, document)
type Hit = (f64, PyId, u64, PyValue);

fn search_query(
    text: String,
    mode: &str,
    prefix: bool,
    limit: usize,
    offset: usize,
) -> PyResult<SearchQuery> {
    let q = match mode {
        "all" => SearchQuery::all(text),
        "any" => SearchQuery::any(text),
        "phrase" => SearchQuery::phrase(text),
        other => {
            return Err(errors::InvalidArgument::new_err(format!(
                "unknown search mode {other:?} (all, any, phrase)"
            )));
        }
    };
    let q = if prefix { q.prefix_last() } else { q };
    Ok(q.limit(limit).offset(offset))
}

fn hits(h: Vec<entidb::SearchHit>) -> PyResult<Vec<Hit>> {
    h.into_iter()
        .map(|h| {
            let (id, version, doc) = row(h.document)?;
            Ok((h.score, id, version, doc))
        })
        .collect()
}

/// An index declaration from the Python arguments.
fn index_spec(
    fields: Vec<String>,
    kind: &str,
    unique: bool,
    stem_english: bool,
    fold_case: bool,
    fold_diacritics: bool,
) -> PyResult<IndexSpec> {
    let spec = match kind {
        "ordered" => IndexSpec::ordered(fields),
        "equality" => IndexSpec::equality(fields),
        "search" => IndexSpec::search(fields)
            .stem_english(stem_english)
            .fold_case(fold_case)
            .fold_diacritics(fold_diacritics),
        other => {
            return Err(errors::InvalidArgument::new_err(format!(
                "unknown index kind {other:?} (ordered, equality, search)"
            )));
        }
    };
    Ok(if unique { spec.unique() } else { spec })
}

fn durability(relaxed: bool) -> Durability {
    if relaxed {
        Durability::Relaxed
    } else {
        Durability::Durable
    }
}

/// The engine options from the Python keyword arguments (`None`: the engine's default).
#[derive(Debug, Default, Clone, Copy)]
struct Tuning {
    memtable_bytes: Option<u64>,
    cache_bytes: Option<u64>,
    feed_retention: Option<u64>,
    block_size: Option<usize>,
    compression: Option<bool>,
    compaction_trigger: Option<usize>,
    auto_maintenance: Option<bool>,
    background_maintenance: Option<bool>,
    max_document_bytes: Option<usize>,
    wal_preallocate: Option<u64>,
    ingest_bytes: Option<u64>,
}

impl Tuning {
    fn apply(self, mut o: Options) -> Options {
        // Calls are polled once on the event loop's thread before they go to the runtime
        // (`fast::run`): a commit must not run its disk sync there, or every durable write
        // would hold the loop for a sync, and concurrent coroutines would stop sharing them.
        o = o.inline_sync(false);
        if let Some(v) = self.memtable_bytes {
            o = o.memtable_bytes(v);
        }
        if let Some(v) = self.cache_bytes {
            o = o.cache_bytes(v);
        }
        if let Some(v) = self.feed_retention {
            o = o.feed_retention(v);
        }
        if let Some(v) = self.block_size {
            o = o.block_size(v);
        }
        if let Some(v) = self.compression {
            o = o.compression(v);
        }
        if let Some(v) = self.compaction_trigger {
            o = o.compaction_trigger(v);
        }
        if let Some(v) = self.auto_maintenance {
            o = o.auto_maintenance(v);
        }
        if let Some(v) = self.background_maintenance {
            o = o.background_maintenance(v);
        }
        if let Some(v) = self.max_document_bytes {
            o = o.max_document_bytes(v);
        }
        if let Some(v) = self.wal_preallocate {
            o = o.wal_preallocate(v);
        }
        if let Some(v) = self.ingest_bytes {
            o = o.ingest_bytes(v);
        }
        o
    }
}

/// One committed transaction for Python: `(sequence, timestamp_ms, origin, [changes])`.
type BatchRow = (u64, u64, Option<String>, Vec<ChangeRow>);

fn batch_row(batch: entidb::ChangeBatch) -> PyResult<BatchRow> {
    let mut changes: Vec<ChangeRow> = Vec::with_capacity(batch.changes.len());
    for c in batch.changes {
        let (op, doc) = match c.op {
            entidb::ChangeOp::Put(bytes) => (
                "put",
                Some(PyValue(
                    entidb::cbor::decode(&bytes).map_err(|e| engine(e.into()))?,
                )),
            ),
            entidb::ChangeOp::Delete => ("delete", None),
            entidb::ChangeOp::Superseded => ("superseded", None),
            entidb::ChangeOp::CollectionCreated => ("collection_created", None),
            entidb::ChangeOp::CollectionDropped => ("collection_dropped", None),
            _ => ("unknown", None),
        };
        changes.push((c.collection, c.id.map(PyId), c.version, op, doc));
    }
    Ok((batch.seq, batch.timestamp_millis, batch.origin, changes))
}

/// Reads of one source: the same calls for the latest state, a snapshot and a transaction.
#[pyclass(module = "entidb._entidb", name = "Reader", frozen)]
#[derive(Debug)]
pub struct PyReader {
    source: Source,
}

#[pymethods]
impl PyReader {
    /// The entity `(id, version, document)` or `None`.
    fn get<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = to_id(id)?;
        let source = self.source.clone();
        run(py, async move {
            let doc = source.get_document(&collection, id).await?;
            doc.map(row).transpose()
        })
    }

    /// The entity's version, or `None` when it does not exist (the document is not converted
    /// or copied).
    fn version<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = to_id(id)?;
        let source = self.source.clone();
        run(py, async move {
            let doc = source.get_document(&collection, id).await?;
            Ok(doc.map(|d| d.version()))
        })
    }

    /// The entity's stored canonical CBOR: `(id, version, bytes)` or `None`.
    fn get_raw<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = to_id(id)?;
        let source = self.source.clone();
        run(py, async move {
            let doc = source.get_document(&collection, id).await?;
            Ok(doc.map(|d| (PyId(d.id()), d.version(), d.bytes().to_vec())))
        })
    }

    /// Names of the collections as this source sees them.
    fn collections<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let source = self.source.clone();
        run(py, async move {
            Ok(match source {
                Source::Latest(db) => db.collections(),
                Source::Snapshot(s) => s.collections(),
                Source::Txn(t) => {
                    let g = t.lock().await;
                    g.as_ref().ok_or_else(finished)?.collections()
                }
            })
        })
    }

    /// A page of entities in id order: `(rows, next_after)`.
    #[pyo3(signature = (collection, after, limit))]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        after: Option<&Bound<'py, PyAny>>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = scan_options(after, limit)?;
        let source = self.source.clone();
        future_into_py(py, async move {
            let page = match source {
                Source::Latest(db) => db.snapshot().collection(&collection).scan(opts).await,
                Source::Snapshot(s) => s.collection(&collection).scan(opts).await,
                Source::Txn(t) => {
                    let mut g = t.lock().await;
                    let tx = g.as_mut().ok_or_else(finished)?;
                    tx.collection(&collection).scan(opts).await
                }
            }
            .map_err(engine)?;
            Ok((rows(page.items)?, page.next.map(PyId)))
        })
    }

    /// A page of the entities that `predicate` (called with each document's value) accepts:
    /// a full scan, counted in stats; refused with `FullScanForbidden` when the database
    /// forbids full scans. `limit` counts matches.
    #[pyo3(signature = (collection, predicate, after, limit))]
    fn scan_where<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        predicate: Py<PyAny>,
        after: Option<&Bound<'py, PyAny>>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = scan_options(after, limit)?;
        let source = self.source.clone();
        future_into_py(py, async move {
            let failure: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
            let pred = |d: &Document| -> bool {
                Python::attach(|py| {
                    let r = d
                        .value()
                        .map_err(engine)
                        .and_then(|v| crate::convert::to_py(py, &v))
                        .and_then(|v| predicate.call1(py, (v,)))
                        .and_then(|r| r.is_truthy(py));
                    match r {
                        Ok(b) => b,
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            false
                        }
                    }
                })
            };
            let page = match source {
                Source::Latest(db) => {
                    db.snapshot()
                        .collection(&collection)
                        .scan_where(opts, pred)
                        .await
                }
                Source::Snapshot(s) => s.collection(&collection).scan_where(opts, pred).await,
                Source::Txn(t) => {
                    let mut g = t.lock().await;
                    let tx = g.as_mut().ok_or_else(finished)?;
                    tx.collection(&collection).scan_where(opts, pred).await
                }
            }
            .map_err(engine)?;
            if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
                return Err(e);
            }
            Ok((rows(page.items)?, page.next.map(PyId)))
        })
    }

    /// Number of entities.
    fn count<'py>(&self, py: Python<'py>, collection: String) -> PyResult<Bound<'py, PyAny>> {
        let source = self.source.clone();
        future_into_py(py, async move {
            match source {
                Source::Latest(db) => db.snapshot().collection(&collection).count().await,
                Source::Snapshot(s) => s.collection(&collection).count().await,
                Source::Txn(t) => {
                    let mut g = t.lock().await;
                    let tx = g.as_mut().ok_or_else(finished)?;
                    tx.collection(&collection).count().await
                }
            }
            .map_err(engine)
        })
    }

    /// A page of an index lookup: `(rows, cursor)`; `cursor` is `None` at the end.
    #[pyo3(signature = (collection, index, kind, values=None, lower=None, lower_inclusive=true, upper=None, upper_inclusive=false, prefix=None, limit=1000, after=None, reverse=false))]
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors the Python keyword arguments"
    )]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        index: String,
        kind: &str,
        values: Option<&Bound<'py, PyList>>,
        lower: Option<&Bound<'py, PyList>>,
        lower_inclusive: bool,
        upper: Option<&Bound<'py, PyList>>,
        upper_inclusive: bool,
        prefix: Option<&Bound<'py, PyAny>>,
        limit: usize,
        after: Option<Vec<u8>>,
        reverse: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let QueryArgs { mut query, limit } = query_args(
            kind,
            values,
            lower,
            lower_inclusive,
            upper,
            upper_inclusive,
            prefix,
            limit,
            after,
        )?;
        if reverse {
            query = query.reverse();
        }
        let source = self.source.clone();
        future_into_py(py, async move {
            let page = match source {
                Source::Latest(db) => {
                    let snap = db.snapshot();
                    let mut l = snap
                        .collection(&collection)
                        .lookup(&index, &query)
                        .await
                        .map_err(engine)?;
                    l.next_page(limit).await
                }
                Source::Snapshot(s) => {
                    let mut l = s
                        .collection(&collection)
                        .lookup(&index, &query)
                        .await
                        .map_err(engine)?;
                    l.next_page(limit).await
                }
                Source::Txn(t) => {
                    let mut g = t.lock().await;
                    let tx = g.as_mut().ok_or_else(finished)?;
                    let mut c = tx.collection(&collection);
                    let mut l = c.lookup(&index, &query).await.map_err(engine)?;
                    l.next_page(limit).await
                }
            }
            .map_err(engine)?;
            let out: LookupPage = (rows(page.items)?, page.next.map(|c| c.as_bytes().to_vec()));
            Ok(out)
        })
    }

    /// Full-text search: `[(score, id, version, document)]`, best first.
    #[pyo3(signature = (collection, index, text, mode="all", prefix=false, limit=20, offset=0))]
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors the Python keyword arguments"
    )]
    fn search<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        index: String,
        text: String,
        mode: &str,
        prefix: bool,
        limit: usize,
        offset: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let q = search_query(text, mode, prefix, limit, offset)?;
        let source = self.source.clone();
        future_into_py(py, async move {
            let h = match source {
                Source::Latest(db) => {
                    db.snapshot()
                        .collection(&collection)
                        .search(&index, &q)
                        .await
                }
                Source::Snapshot(s) => s.collection(&collection).search(&index, &q).await,
                Source::Txn(t) => {
                    let mut g = t.lock().await;
                    let tx = g.as_mut().ok_or_else(finished)?;
                    tx.collection(&collection).search(&index, &q).await
                }
            }
            .map_err(engine)?;
            hits(h)
        })
    }

    /// The collection's indexes, as dicts (as this source sees them).
    fn indexes<'py>(&self, py: Python<'py>, collection: String) -> PyResult<Bound<'py, PyAny>> {
        future_into_py(py, {
            let source = self.source.clone();
            async move {
                let infos = match source {
                    Source::Latest(db) => db.snapshot().collection(&collection).indexes(),
                    Source::Snapshot(s) => s.collection(&collection).indexes(),
                    Source::Txn(t) => {
                        let mut g = t.lock().await;
                        let tx = g.as_mut().ok_or_else(finished)?;
                        tx.collection(&collection).indexes()
                    }
                };
                json(&infos)
            }
        })
    }

    /// The sequence a snapshot reads at (`None` for other sources).
    fn sequence(&self) -> Option<u64> {
        match &self.source {
            Source::Snapshot(s) => Some(s.sequence()),
            _ => None,
        }
    }
}

/// A write transaction: writes here, reads through `reader()`.
#[pyclass(module = "entidb._entidb", name = "Transaction", frozen)]
#[derive(Debug)]
pub struct PyTransaction {
    tx: TxHandle,
    db: Database,
}

#[pymethods]
impl PyTransaction {
    /// Reads that see this transaction's writes.
    fn reader(&self) -> PyReader {
        PyReader {
            source: Source::Txn(self.tx.clone()),
        }
    }

    /// Write a document (a new id when `id` is None); returns the id.
    #[pyo3(signature = (collection, doc, id=None))]
    fn put<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        doc: &Bound<'py, PyAny>,
        id: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = to_value(doc)?;
        let id = id
            .map(to_id)
            .transpose()?
            .unwrap_or_else(|| self.db.new_id());
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.collection(&collection)
                .put_value(id, &value)
                .map_err(engine)?;
            Ok(PyId(id))
        })
    }

    /// Delete an entity; returns whether it existed.
    fn delete<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = to_id(id)?;
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.collection(&collection).delete(id).await.map_err(engine)
        })
    }

    /// Write only if the committed version is `expected` (None: must not exist).
    fn put_if<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        doc: &Bound<'py, PyAny>,
        id: &Bound<'py, PyAny>,
        expected: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = to_value(doc)?;
        let id = to_id(id)?;
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.collection(&collection)
                .put_value_if(id, &value, expected)
                .await
                .map_err(engine)
        })
    }

    /// Delete only if the committed version is `expected`; returns whether it existed.
    fn delete_if<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        id: &Bound<'py, PyAny>,
        expected: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = to_id(id)?;
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.collection(&collection)
                .delete_if(id, expected)
                .await
                .map_err(engine)
        })
    }

    /// The schema version as this transaction sees it.
    fn schema_version<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let g = tx.lock().await;
            let tx = g.as_ref().ok_or_else(finished)?;
            tx.schema_version().await.map_err(engine)
        })
    }

    /// Set the schema version (committed with the transaction).
    fn set_schema_version<'py>(
        &self,
        py: Python<'py>,
        version: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.set_schema_version(version);
            Ok(())
        })
    }

    /// Write a document given as CBOR bytes (one item, stored canonicalized); returns the id.
    #[pyo3(signature = (collection, data, id=None))]
    fn put_raw<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        data: Vec<u8>,
        id: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = id
            .map(to_id)
            .transpose()?
            .unwrap_or_else(|| self.db.new_id());
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.collection(&collection)
                .put_cbor(id, &data)
                .map_err(engine)?;
            Ok(PyId(id))
        })
    }

    /// Tag the transaction's change-feed record with `origin` (at most 255 bytes).
    fn set_origin<'py>(&self, py: Python<'py>, origin: String) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.set_origin(origin).map_err(engine)
        })
    }

    /// Hold the change feed after `position` under `name` from this commit on (see
    /// `WriteTxn::hold_feed`).
    fn hold_feed<'py>(
        &self,
        py: Python<'py>,
        name: String,
        position: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.hold_feed(&name, position).map_err(engine)
        })
    }

    /// Release the change-feed hold `name` when this transaction commits; whether it existed.
    fn release_feed_hold<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.release_feed_hold(&name).map_err(engine)
        })
    }

    /// The sequence this transaction reads at.
    fn read_sequence<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let g = tx.lock().await;
            Ok(g.as_ref().ok_or_else(finished)?.read_sequence())
        })
    }

    /// Create a collection (refused if it exists).
    fn create_collection<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.create_collection(&name).map_err(engine)
        })
    }

    /// Drop a collection with its entities and indexes; returns whether it existed.
    fn drop_collection<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.drop_collection(&name).map_err(engine)
        })
    }

    /// Declare an index in this transaction (built from what the transaction sees).
    #[pyo3(signature = (collection, name, fields, kind="ordered", unique=false, stem_english=false, fold_case=true, fold_diacritics=true))]
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors the Python keyword arguments"
    )]
    fn create_index<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        name: String,
        fields: Vec<String>,
        kind: &str,
        unique: bool,
        stem_english: bool,
        fold_case: bool,
        fold_diacritics: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let spec = index_spec(
            fields,
            kind,
            unique,
            stem_english,
            fold_case,
            fold_diacritics,
        )?;
        let tx = self.tx.clone();
        future_into_py(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.collection(&collection)
                .create_index(&name, spec)
                .await
                .map_err(engine)
        })
    }

    /// Drop an index in this transaction; returns whether it existed.
    fn drop_index<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        name: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.collection(&collection).drop_index(&name).map_err(engine)
        })
    }

    /// Commit; returns the commit's sequence.
    fn commit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        future_into_py(py, async move {
            let taken = tx.lock().await.take().ok_or_else(finished)?;
            taken.commit().await.map_err(engine)
        })
    }

    /// Discard the transaction.
    fn abort<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            if let Some(t) = tx.lock().await.take() {
                t.abort();
            }
            Ok(())
        })
    }

    /// Commit without waiting for the sync (`relaxed=True`) or durably (the default).
    fn set_relaxed<'py>(&self, py: Python<'py>, relaxed: bool) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.tx.clone();
        run(py, async move {
            let mut g = tx.lock().await;
            let tx = g.as_mut().ok_or_else(finished)?;
            tx.set_durability(durability(relaxed));
            Ok(())
        })
    }
}

/// The change feed, followed live.
#[pyclass(module = "entidb._entidb", name = "ChangeStream", frozen)]
#[derive(Debug)]
pub struct PyChangeStream {
    stream: Arc<Mutex<entidb::ChangeStream>>,
}

/// (collection, id or None, version, op, document or None)
type ChangeRow = (String, Option<PyId>, u64, &'static str, Option<PyValue>);

#[pymethods]
impl PyChangeStream {
    /// The next committed transaction `(sequence, timestamp_ms, origin, [changes])`, waiting
    /// for one; `None` once the database is closed.
    fn next_batch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stream = self.stream.clone();
        future_into_py(py, async move {
            let mut s = stream.lock().await;
            let Some(batch) = s.next_batch().await else {
                return Ok(None);
            };
            batch_row(batch.map_err(engine)?).map(Some)
        })
    }
}

/// An open database.
#[pyclass(module = "entidb._entidb", name = "Database", frozen)]
#[derive(Debug)]
pub struct PyDatabase {
    pub(crate) db: Database,
}

#[pymethods]
impl PyDatabase {
    /// Open (or create) a database in directory `path`, or in memory when `path` is None.
    #[staticmethod]
    #[pyo3(signature = (path=None, *, create=true, memtable_bytes=None, cache_bytes=None, forbid_full_scans=false, feed_retention=None, key=None, read_only=false, block_size=None, compression=None, compaction_trigger=None, auto_maintenance=None, background_maintenance=None, max_document_bytes=None, wal_preallocate=None, ingest_bytes=None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors the Python keyword arguments"
    )]
    fn open<'py>(
        py: Python<'py>,
        path: Option<std::path::PathBuf>,
        create: bool,
        memtable_bytes: Option<u64>,
        cache_bytes: Option<u64>,
        forbid_full_scans: bool,
        feed_retention: Option<u64>,
        key: Option<&Bound<'py, PyAny>>,
        read_only: bool,
        block_size: Option<usize>,
        compression: Option<bool>,
        compaction_trigger: Option<usize>,
        auto_maintenance: Option<bool>,
        background_maintenance: Option<bool>,
        max_document_bytes: Option<usize>,
        wal_preallocate: Option<u64>,
        ingest_bytes: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = key.map(key_source).transpose()?;
        let o = Tuning {
            memtable_bytes,
            cache_bytes,
            feed_retention,
            block_size,
            compression,
            compaction_trigger,
            auto_maintenance,
            background_maintenance,
            max_document_bytes,
            wal_preallocate,
            ingest_bytes,
        }
        .apply(
            Options::default()
                .read_only(read_only)
                .create_if_missing(create)
                .forbid_full_scans(forbid_full_scans),
        );
        future_into_py(py, async move {
            let db = match (path, key) {
                (Some(p), Some(k)) => Database::open_encrypted(p, k, o).await,
                (Some(p), None) => Database::open_path(p, o).await,
                (None, None) => {
                    Database::open_with(Arc::new(entidb::io::MemoryBackend::new()), o).await
                }
                (None, Some(_)) => {
                    return Err(errors::InvalidArgument::new_err(
                        "an in-memory database cannot be encrypted",
                    ));
                }
            }
            .map_err(engine)?;
            Ok(PyDatabase { db })
        })
    }

    /// Reads of the latest state.
    fn reader(&self) -> PyReader {
        PyReader {
            source: Source::Latest(self.db.clone()),
        }
    }

    /// Reads of one consistent snapshot.
    fn snapshot(&self, py: Python<'_>) -> PyReader {
        let snap = py.detach(|| self.db.snapshot());
        PyReader {
            source: Source::Snapshot(Arc::new(snap)),
        }
    }

    /// Begin a write transaction (waits for the single writer slot).
    fn begin<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            let tx = db.begin().await.map_err(engine)?;
            Ok(PyTransaction {
                tx: Arc::new(Mutex::new(Some(tx))),
                db,
            })
        })
    }

    /// Write one document in its own transaction (durable unless `relaxed`); returns
    /// `(id, version)`.
    #[pyo3(signature = (collection, doc, id=None, relaxed=false))]
    fn put<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        doc: &Bound<'py, PyAny>,
        id: Option<&Bound<'py, PyAny>>,
        relaxed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = to_value(doc)?;
        let id = id.map(to_id).transpose()?;
        let db = self.db.clone();
        run(py, async move {
            let id = id.unwrap_or_else(|| db.new_id());
            // As a value, like a transaction's put: `Undefined` and `Simple(n)` have no
            // serde form, and the serde path refused them.
            let mut tx = db.begin().await.map_err(engine)?;
            tx.set_durability(durability(relaxed));
            tx.collection(&collection)
                .put_value(id, &value)
                .map_err(engine)?;
            let version = tx.commit().await.map_err(engine)?;
            Ok((PyId(id), version))
        })
    }

    /// Write a document given as CBOR bytes (one item, stored canonicalized), in its own
    /// transaction; returns `(id, version)`.
    #[pyo3(signature = (collection, data, id=None, relaxed=false))]
    fn put_raw<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        data: Vec<u8>,
        id: Option<&Bound<'py, PyAny>>,
        relaxed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = id.map(to_id).transpose()?;
        let db = self.db.clone();
        run(py, async move {
            let id = id.unwrap_or_else(|| db.new_id());
            let mut tx = db.begin().await.map_err(engine)?;
            tx.set_durability(durability(relaxed));
            tx.collection(&collection)
                .put_cbor(id, &data)
                .map_err(engine)?;
            let version = tx.commit().await.map_err(engine)?;
            Ok((PyId(id), version))
        })
    }

    /// Delete one entity in its own transaction (durable unless `relaxed`); returns whether
    /// it existed.
    #[pyo3(signature = (collection, id, relaxed=false))]
    fn delete<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        id: &Bound<'py, PyAny>,
        relaxed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = to_id(id)?;
        let db = self.db.clone();
        run(py, async move {
            if !relaxed {
                return db.collection(&collection).delete(id).await.map_err(engine);
            }
            let mut tx = db.begin().await.map_err(engine)?;
            tx.set_durability(Durability::Relaxed);
            let existed = tx
                .collection(&collection)
                .delete(id)
                .await
                .map_err(engine)?;
            tx.commit().await.map_err(engine)?;
            Ok(existed)
        })
    }

    /// Create an empty collection (refused if it exists).
    fn create_collection<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            db.create_collection(&name).await.map_err(engine)
        })
    }

    /// Names of the collections.
    fn collections(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.db.collections())
    }

    /// Drop a collection and its entities and indexes; returns whether it existed.
    fn drop_collection<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            db.drop_collection(&name).await.map_err(engine)
        })
    }

    /// The change feed from `since` (exclusive), following new commits.
    fn changes(&self, py: Python<'_>, since: u64) -> PyChangeStream {
        let stream = py.detach(|| self.db.changes(since));
        PyChangeStream {
            stream: Arc::new(Mutex::new(stream)),
        }
    }

    /// Up to `limit` committed transactions after `since`, without waiting:
    /// `[(sequence, timestamp_ms, origin, [changes])]`. With `collections`, only the changes
    /// of those collections; with `exclude_origin`, no changes of transactions with that
    /// origin (their records stay, empty). Left-out values are never read.
    #[pyo3(signature = (since, limit, collections=None, exclude_origin=None))]
    fn changes_page<'py>(
        &self,
        py: Python<'py>,
        since: u64,
        limit: usize,
        collections: Option<Vec<String>>,
        exclude_origin: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            let keep = |origin: Option<&str>, c: &str| {
                (exclude_origin.is_none() || origin != exclude_origin.as_deref())
                    && collections
                        .as_ref()
                        .is_none_or(|cs| cs.iter().any(|x| x == c))
            };
            let page = db
                .changes_page_filtered(since, limit, keep)
                .await
                .map_err(engine)?;
            page.into_iter()
                .map(batch_row)
                .collect::<PyResult<Vec<_>>>()
        })
    }

    /// The oldest sequence the change feed still holds.
    fn oldest_retained_sequence(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.db.oldest_retained_sequence())
    }

    /// Set the change-feed hold `name` to `position`, in a transaction of its own.
    fn hold_feed<'py>(
        &self,
        py: Python<'py>,
        name: String,
        position: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            db.hold_feed(&name, position).await.map_err(engine)
        })
    }

    /// Release the change-feed hold `name`, in a transaction of its own; whether it existed.
    fn release_feed_hold<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            db.release_feed_hold(&name).await.map_err(engine)
        })
    }

    /// The change-feed holds: name to the position each keeps the feed after.
    fn feed_holds(&self, py: Python<'_>) -> std::collections::BTreeMap<String, u64> {
        py.detach(|| self.db.feed_holds())
    }

    /// The last flush or compaction error after a commit (the commit itself succeeded).
    fn last_maintenance_error(&self, py: Python<'_>) -> Option<String> {
        py.detach(|| self.db.last_maintenance_error())
    }

    /// Flush the write buffer to a segment.
    fn checkpoint<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move { db.checkpoint().await.map_err(engine) })
    }

    /// Merge all segments, dropping what no snapshot needs.
    fn compact<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move { db.compact().await.map_err(engine) })
    }

    /// Check every segment block; returns the entries read.
    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move { db.verify().await.map_err(engine) })
    }

    /// Check every index against the documents; returns the report as a dict.
    fn verify_indexes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            let r = db.verify_indexes().await.map_err(engine)?;
            let mut v =
                serde_json::to_value(&r).map_err(|e| errors::Error::new_err(e.to_string()))?;
            if let Some(m) = v.as_object_mut() {
                m.insert("ok".into(), serde_json::Value::Bool(r.is_ok()));
            }
            json(&v)
        })
    }

    /// Counters since open, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = py.detach(|| json(&self.db.stats()))?;
        stats.into_pyobject(py)
    }

    /// The highest committed sequence.
    fn last_sequence(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.db.last_sequence())
    }

    /// The highest sequence known durable (relaxed commits above it are not yet synced).
    fn durable_sequence(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.db.durable_sequence())
    }

    /// The committed schema version.
    fn schema_version<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move { db.schema_version().await.map_err(engine) })
    }

    /// A new time-ordered entity id.
    fn new_id(&self, py: Python<'_>) -> PyId {
        PyId(py.detach(|| self.db.new_id()))
    }

    /// Checkpoint and close.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move { db.close().await.map_err(engine) })
    }

    /// Back up a consistent snapshot to the file `path` (written to `path.tmp`, synced,
    /// renamed); returns the summary as a dict.
    fn backup<'py>(
        &self,
        py: Python<'py>,
        path: std::path::PathBuf,
    ) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            let mut tmp = path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = std::path::PathBuf::from(tmp);
            let io = |e: std::io::Error| {
                errors::IoError::new_err(format!("backup to {}: {e}", path.display()))
            };
            let file = std::fs::File::create(&tmp).map_err(io)?;
            let mut sink = entidb::WriteSink::new(std::io::BufWriter::with_capacity(1 << 20, file));
            // The sink writes a file synchronously: tell tokio this worker blocks.
            let result = blocking(db.backup(&mut sink));
            let summary = match result {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(engine(e));
                }
            };
            let file = sink
                .into_inner()
                .into_inner()
                .map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            json(&summary)
        })
    }

    /// Re-encrypt the closed database in `path` from `old` to `new` (each 32 bytes or a
    /// passphrase).
    #[staticmethod]
    fn rekey<'py>(
        py: Python<'py>,
        path: std::path::PathBuf,
        old: &Bound<'py, PyAny>,
        new: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (old, new) = (key_source(old)?, key_source(new)?);
        future_into_py(py, async move {
            Database::rekey(path, old, new).await.map_err(engine)
        })
    }

    /// Check a backup (a file path, or a binary file object with `read`) without restoring
    /// it; returns its summary.
    #[staticmethod]
    fn verify_backup<'py>(
        py: Python<'py>,
        source: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let source = BackupInput::from_py(source);
        future_into_py(py, async move {
            let summary = match source {
                BackupInput::Path(p) => blocking(entidb::verify_backup(&mut open_backup(&p)?)),
                BackupInput::Object(o) => {
                    let mut src = entidb::ReadSource::new(PyFileReader(o));
                    blocking(entidb::verify_backup(&mut src))
                }
            };
            json(&summary.map_err(engine)?)
        })
    }

    /// Restore a backup (a file path, or a binary file object with `read`) into a new
    /// database directory `target` (it must not hold a database), encrypted with `key` if
    /// given, and open it with the given options; returns `(database, summary)`.
    #[staticmethod]
    #[pyo3(signature = (source, target, *, key=None, memtable_bytes=None, cache_bytes=None, feed_retention=None))]
    fn restore<'py>(
        py: Python<'py>,
        source: &Bound<'py, PyAny>,
        target: std::path::PathBuf,
        key: Option<&Bound<'py, PyAny>>,
        memtable_bytes: Option<u64>,
        cache_bytes: Option<u64>,
        feed_retention: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let source = BackupInput::from_py(source);
        let key = key.map(key_source).transpose()?;
        let options = Tuning {
            memtable_bytes,
            cache_bytes,
            feed_retention,
            ..Tuning::default()
        }
        .apply(Options::default());
        future_into_py(py, async move {
            match source {
                BackupInput::Path(p) => {
                    restore_into(&mut open_backup(&p)?, target, key, options).await
                }
                BackupInput::Object(o) => {
                    let mut src = entidb::ReadSource::new(PyFileReader(o));
                    restore_into(&mut src, target, key, options).await
                }
            }
        })
    }

    /// Back up a consistent snapshot into a binary file object (anything with `write`);
    /// returns the summary. Flushing or closing the object is the caller's.
    fn backup_to<'py>(&self, py: Python<'py>, out: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let db = self.db.clone();
        future_into_py(py, async move {
            let mut sink = entidb::WriteSink::new(std::io::BufWriter::with_capacity(
                1 << 20,
                PyFileWriter(out),
            ));
            let summary = blocking(db.backup(&mut sink)).map_err(engine)?;
            sink.into_inner()
                .into_inner()
                .map_err(|e| errors::IoError::new_err(format!("backup: {}", e.into_error())))?;
            json(&summary)
        })
    }

    fn __repr__(&self) -> String {
        format!("<entidb Database at sequence {}>", self.db.last_sequence())
    }
}

/// Where a backup is read from: a path (`str` or `os.PathLike`), or a Python file object.
enum BackupInput {
    Path(std::path::PathBuf),
    Object(Py<PyAny>),
}

impl BackupInput {
    fn from_py(obj: &Bound<'_, PyAny>) -> BackupInput {
        match obj.extract::<std::path::PathBuf>() {
            Ok(p) => BackupInput::Path(p),
            Err(_) => BackupInput::Object(obj.clone().unbind()),
        }
    }
}

/// Restore from `src` into the new directory `target`, encrypted with `key` if given.
async fn restore_into<S: entidb::BackupSource + Send>(
    src: &mut S,
    target: std::path::PathBuf,
    key: Option<entidb::io::KeySource>,
    options: Options,
) -> PyResult<(PyDatabase, Json)> {
    let io = |e: entidb::io::IoError| {
        errors::IoError::new_err(format!("restore into {}: {e}", target.display()))
    };
    let fs: Arc<dyn entidb::io::Backend> =
        Arc::new(entidb::io::FsBackend::new(&target).map_err(io)?);
    let backend: Arc<dyn entidb::io::Backend> = match key {
        Some(k) => Arc::new(
            entidb::io::EncryptedBackend::open(fs, k)
                .await
                .map_err(io)?,
        ),
        None => fs,
    };
    let (db, summary) = blocking(Database::restore(src, backend, options)).map_err(engine)?;
    Ok((PyDatabase { db }, json(&summary)?))
}

/// A Python binary file object as a `std::io::Write` (each write takes the GIL).
struct PyFileWriter(Py<PyAny>);

impl std::io::Write for PyFileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Python::attach(|py| {
            let r = self
                .0
                .call_method1(py, "write", (pyo3::types::PyBytes::new(py, buf),))
                .map_err(|e| std::io::Error::other(format!("the file object's write: {e}")))?;
            // Raw files may write less (and say how much); buffered ones return len or None.
            Ok(r.extract::<usize>(py).unwrap_or(buf.len()).min(buf.len()))
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Python::attach(|py| {
            if self.0.bind(py).hasattr("flush").unwrap_or(false) {
                self.0
                    .call_method0(py, "flush")
                    .map_err(|e| std::io::Error::other(format!("the file object's flush: {e}")))?;
            }
            Ok(())
        })
    }
}

/// A Python binary file object as a `std::io::Read` (each read takes the GIL).
struct PyFileReader(Py<PyAny>);

impl std::io::Read for PyFileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Python::attach(|py| {
            let r = self
                .0
                .call_method1(py, "read", (buf.len(),))
                .map_err(|e| std::io::Error::other(format!("the file object's read: {e}")))?;
            let bytes: Vec<u8> = r.extract(py).map_err(|_| {
                std::io::Error::other("the file object's read did not return bytes")
            })?;
            if bytes.len() > buf.len() {
                return Err(std::io::Error::other(format!(
                    "the file object's read returned {} bytes, more than the {} asked for",
                    bytes.len(),
                    buf.len()
                )));
            }
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        })
    }
}

/// Run a future that does synchronous file I/O (a backup sink or source over `std::fs`) to
/// completion on this tokio worker, after telling the runtime that the worker blocks (its
/// other tasks move to another worker).
fn blocking<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// A backup file to read.
fn open_backup(path: &std::path::Path) -> PyResult<entidb::ReadSource<std::fs::File>> {
    std::fs::File::open(path)
        .map(entidb::ReadSource::new)
        .map_err(|e| errors::IoError::new_err(format!("cannot open {}: {e}", path.display())))
}

/// A key given from Python: 32 bytes (a raw key) or a text passphrase.
fn key_source(k: &Bound<'_, PyAny>) -> PyResult<entidb::io::KeySource> {
    if let Ok(s) = k.cast::<pyo3::types::PyString>() {
        return Ok(entidb::io::KeySource::Passphrase(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = k.cast::<pyo3::types::PyBytes>() {
        let raw: [u8; 32] = b.as_bytes().try_into().map_err(|_| {
            pyo3::exceptions::PyValueError::new_err("a raw key is exactly 32 bytes")
        })?;
        return Ok(entidb::io::KeySource::Raw(raw));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(
        "key must be 32 bytes or a passphrase (str)",
    ))
}
