//! Keeping indexes in step with a write transaction.
//!
//! Puts and deletes only mark the entity key dirty (they are synchronous and must not read).
//! Before anything reads an index through the transaction, and at commit, the dirty keys are
//! *flushed*: for each, the entries of every index of its collection are recomputed from the
//! document the overlay's index entries currently reflect (`indexed`, or the committed one)
//! and the document now pending, and the difference is written to the overlay. So the
//! overlay always holds exactly the index writes that take the committed index to the
//! transaction's state, and a commit writes them in the same batch as the documents.
//!
//! Invariant (checked by the model tests): after a flush, for every entity key `k` the
//! overlay has written, the overlay's index entries for `k` are those of the document
//! `indexed[k]` (or of the committed document if `k` is not in `indexed`), which is the
//! pending document.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::lookup::MergedRange;
use super::{Entries, Entry, IndexDef, IndexInfo, IndexKind, IndexSpec, keyenc, search};
use crate::cbor::{self, Value};
use crate::db::read;
use crate::document::ScanOptions;
use crate::error::{Error, Result};
use crate::ids::EntityId;
use crate::keys;
use crate::memtable::empty_value;
use crate::txn::WriteTxn;

/// An index entry's value (empty except for search postings), shared when empty.
fn entry_value(v: &[u8]) -> Arc<[u8]> {
    if v.is_empty() {
        empty_value()
    } else {
        Arc::from(v)
    }
}

/// A transaction's index bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct TxIndexes {
    /// Entity keys written since the last flush (of collections that have indexes).
    dirty: BTreeSet<Arc<[u8]>>,
    /// The document each flushed entity's pending index entries describe.
    indexed: BTreeMap<Arc<[u8]>, Option<Arc<[u8]>>>,
    /// Indexes created in this transaction: (collection id, definition).
    pub created: Vec<(u32, Arc<IndexDef>)>,
    /// Committed indexes dropped in this transaction: (collection id, index id).
    pub dropped: Vec<(u32, u32)>,
    /// Unique entries added by flushes, to check at commit: (collection id, index, key).
    unique: Vec<(u32, Arc<IndexDef>, Vec<u8>)>,
}

type PendingDoc = Option<Arc<[u8]>>;

impl WriteTxn {
    /// The indexes of collection `coll` as this transaction sees them.
    pub(crate) fn indexes_of(&self, coll: u32) -> Vec<Arc<IndexDef>> {
        let mut defs: Vec<Arc<IndexDef>> = read(&self.inner.catalog)
            .indexes_of(coll, self.read_seq)
            .into_iter()
            .filter(|d| !self.ix.dropped.iter().any(|&(_, id)| id == d.id))
            .collect();
        defs.extend(
            self.ix
                .created
                .iter()
                .filter(|(c, _)| *c == coll)
                .map(|(_, d)| d.clone()),
        );
        defs
    }

    fn has_indexes(&self, coll: u32) -> bool {
        // On every put and delete: no allocation, one catalog read.
        self.ix.created.iter().any(|(c, _)| *c == coll)
            || read(&self.inner.catalog).has_index(coll, self.read_seq, |id| {
                !self.ix.dropped.iter().any(|&(_, d)| d == id)
            })
    }

    /// Record that an entity key was written (called by puts and deletes).
    pub(crate) fn note_entity_write(&mut self, coll: u32, key: &Arc<[u8]>) {
        if self.has_indexes(coll) {
            self.ix.dirty.insert(key.clone());
        }
    }

    /// Bring the overlay's index entries up to date with its documents.
    pub(crate) async fn flush_indexes(&mut self) -> Result<()> {
        if self.ix.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.ix.dirty);
        // Search indexes: change of (documents, tokens) per index id.
        let mut stats_delta: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
        for key in dirty {
            let Some((coll, id)) = keys::parse_entity_key(&key) else {
                continue;
            };
            let defs = self.indexes_of(coll);
            if defs.is_empty() {
                continue;
            }
            let name = self.collection_name(coll);
            let committed = self.ctx().committed(&key).await?.map(|(_, b)| b);
            let old = match self.ix.indexed.get(&key) {
                Some(d) => d.clone(),
                None => committed.clone(),
            };
            let new = match self.writes.get(&key) {
                Some(d) => d.clone(),
                None => committed.clone(),
            };
            let decode = |b: &Option<Arc<[u8]>>| -> Result<Option<Value>> {
                b.as_deref()
                    .map(cbor::decode)
                    .transpose()
                    .map_err(Into::into)
            };
            let (old_v, new_v) = (decode(&old)?, decode(&new)?);
            let committed_v = if committed == old {
                None
            } else {
                decode(&committed)?
            };
            for def in &defs {
                let entries = |v: &Option<Value>| -> Result<Entries> {
                    match v {
                        Some(v) => def.entries(v, &id, &name),
                        None => Ok(Entries::default()),
                    }
                };
                let (o, n) = (entries(&old_v)?, entries(&new_v)?);
                if o == n {
                    continue;
                }
                // Committed entries need a tombstone; pending-only ones just go away.
                let committed_keys: BTreeSet<Vec<u8>> = if committed == old {
                    o.items.iter().map(|e| e.key.clone()).collect()
                } else {
                    entries(&committed_v)?
                        .items
                        .into_iter()
                        .map(|e| e.key)
                        .collect()
                };
                let new_keys: BTreeSet<&[u8]> = n.items.iter().map(|e| &e.key[..]).collect();
                for e in &o.items {
                    if new_keys.contains(&e.key[..]) {
                        continue;
                    }
                    if committed_keys.contains(&e.key) {
                        self.writes.insert(Arc::from(&e.key[..]), None);
                    } else {
                        self.writes.remove(&e.key[..]);
                    }
                }
                let old_entries: BTreeSet<(&[u8], &[u8])> =
                    o.items.iter().map(|e| (&e.key[..], &e.value[..])).collect();
                for e in &n.items {
                    if old_entries.contains(&(&e.key[..], &e.value[..])) {
                        continue;
                    }
                    if def.spec.unique && !e.exempt {
                        self.ix.unique.push((coll, def.clone(), e.key.clone()));
                    }
                    self.writes
                        .insert(Arc::from(&e.key[..]), Some(entry_value(&e.value)));
                }
                if def.spec.kind == IndexKind::Search {
                    let d = stats_delta.entry(def.id).or_insert((0, 0));
                    d.0 += i64::from(n.tokens.is_some()) - i64::from(o.tokens.is_some());
                    d.1 += i64::from(n.tokens.unwrap_or(0)) - i64::from(o.tokens.unwrap_or(0));
                }
            }
            self.ix.indexed.insert(key, new);
        }
        for (index, (docs, tokens)) in stats_delta {
            let (d0, t0) = self.search_stats(index).await?;
            let docs = d0.saturating_add_signed(docs);
            let tokens = t0.saturating_add_signed(tokens);
            self.writes.insert(
                Arc::from(search::stats_key(index)),
                Some(Arc::from(search::encode_stats(docs, tokens))),
            );
        }
        Ok(())
    }

    /// A search index's statistics as this transaction sees them.
    async fn search_stats(&self, index: u32) -> Result<(u64, u64)> {
        let key = search::stats_key(index);
        let bytes = match self.writes.get(&key[..]) {
            Some(v) => v.clone(),
            None => self.ctx().committed(&key).await?.map(|(_, b)| b),
        };
        Ok(bytes
            .and_then(|b| search::decode_stats(&b))
            .unwrap_or((0, 0)))
    }

    /// Check every unique entry this transaction added against the committed entries and
    /// its own. Runs after the final flush, before the commit is appended.
    pub(crate) async fn check_unique(&mut self) -> Result<()> {
        let candidates = std::mem::take(&mut self.ix.unique);
        for (coll, def, key) in candidates {
            if !matches!(self.writes.get(&key[..]), Some(Some(_))) {
                continue; // replaced later in the transaction
            }
            let body_end = key.len() - 16;
            let prefix = &key[..body_end];
            let end = keyenc::prefix_successor(prefix).unwrap_or_else(|| keys::index_end(def.id));
            let ctx = self.ctx();
            let mut it = MergedRange::with_probe(&ctx, prefix, &end, Some(prefix));
            while let Some((other, _, _)) = it.next().await? {
                if other[..] != key[..] && other.len() == key.len() {
                    let id = keys::index_entry_entity(&key).unwrap_or(EntityId::MIN);
                    let existing = keys::index_entry_entity(&other).unwrap_or(EntityId::MIN);
                    return Err(self.violation(coll, &def, id, existing).await);
                }
            }
        }
        Ok(())
    }

    async fn violation(
        &self,
        coll: u32,
        def: &IndexDef,
        id: EntityId,
        existing: EntityId,
    ) -> Error {
        let collection = self.collection_name(coll);
        let value = match self.ctx().get(Some(coll), id).await {
            Ok(Some(doc)) => match doc.value() {
                Ok(v) => match def.values(&v) {
                    Some(vals) => render(&vals),
                    None => "?".to_owned(),
                },
                Err(_) => "?".to_owned(),
            },
            _ => "?".to_owned(),
        };
        Error::UniqueViolation {
            collection,
            index: def.name.clone(),
            value,
            id,
            existing,
        }
    }

    pub(crate) fn collection_name(&self, coll: u32) -> String {
        self.created
            .iter()
            .find(|(_, i)| **i == coll)
            .map(|(n, _)| n.clone())
            .or_else(|| read(&self.inner.catalog).name_of(coll).map(str::to_owned))
            .unwrap_or_else(|| format!("#{coll}"))
    }

    /// Create an index on collection `name` and build it from the transaction's view.
    pub(crate) async fn create_index_in(
        &mut self,
        collection: &str,
        index: &str,
        spec: IndexSpec,
    ) -> Result<()> {
        spec.check(index)?;
        let coll = self.resolve_or_create(collection)?;
        if self.indexes_of(coll).iter().any(|d| d.name == index) {
            return Err(Error::IndexExists {
                collection: collection.to_owned(),
                index: index.to_owned(),
            });
        }
        self.flush_indexes().await?;
        let cat_next = read(&self.inner.catalog).next_index_id();
        let tx_next = self
            .ix
            .created
            .iter()
            .map(|(_, d)| d.id + 1)
            .max()
            .unwrap_or(0);
        let id = cat_next.max(tx_next);
        let def = Arc::new(IndexDef {
            id,
            name: index.to_owned(),
            spec,
        });
        // Build: every document as this transaction sees it.
        let mut entries: Vec<Entry> = Vec::new();
        let (mut docs, mut tokens) = (0u64, 0u64);
        let mut opts = ScanOptions::limit(1024);
        loop {
            let page = self.ctx().scan(Some(coll), opts, |_| true).await?;
            for doc in &page.items {
                let e = def.entries(&doc.value()?, &doc.id(), collection)?;
                if let Some(t) = e.tokens {
                    docs += 1;
                    tokens += u64::from(t);
                }
                entries.extend(e.items);
            }
            match page.next {
                Some(c) => opts = opts.after(c),
                None => break,
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        if def.spec.unique {
            let mut last: Option<&Entry> = None;
            for e in entries.iter().filter(|e| !e.exempt) {
                if let Some(l) = last
                    && l.key.len() == e.key.len()
                    && l.key[..l.key.len() - 16] == e.key[..e.key.len() - 16]
                {
                    let id = keys::index_entry_entity(&e.key).unwrap_or(EntityId::MIN);
                    let existing = keys::index_entry_entity(&l.key).unwrap_or(EntityId::MIN);
                    return Err(self.violation(coll, &def, id, existing).await);
                }
                last = Some(e);
            }
        }
        for e in entries {
            self.writes
                .insert(Arc::from(e.key), Some(entry_value(&e.value)));
        }
        if def.spec.kind == IndexKind::Search {
            self.writes.insert(
                Arc::from(search::stats_key(id)),
                Some(Arc::from(search::encode_stats(docs, tokens))),
            );
        }
        // The pending documents of this collection are now reflected by the new entries.
        let (from, end) = (keys::collection_start(coll), keys::collection_end(coll));
        let pending: Vec<(Arc<[u8]>, PendingDoc)> = self
            .writes
            .range(&from, &end)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in pending {
            self.ix.indexed.entry(k).or_insert(v);
        }
        self.writes.insert(
            Arc::from(keys::index_def_key(coll, index)),
            Some(Arc::from(def.encode_record())),
        );
        self.ix.created.push((coll, def));
        Ok(())
    }

    /// Drop index `index` of collection `coll` (by id) within this transaction.
    pub(crate) fn drop_index_in(&mut self, coll: u32, index: &str) -> bool {
        let Some(def) = self.indexes_of(coll).into_iter().find(|d| d.name == index) else {
            return false;
        };
        self.discard_pending(&keys::index_prefix(def.id), &keys::index_end(def.id));
        self.ix.unique.retain(|(_, d, _)| d.id != def.id);
        let def_key = keys::index_def_key(coll, index);
        if let Some(pos) = self.ix.created.iter().position(|(_, d)| d.id == def.id) {
            self.ix.created.remove(pos);
            self.writes.remove(&def_key[..]);
            return true;
        }
        self.writes.insert(Arc::from(def_key), None);
        let mut marker = coll.to_be_bytes().to_vec();
        marker.extend_from_slice(index.as_bytes());
        self.writes.insert(
            Arc::from(keys::index_dropped_key(def.id)),
            Some(Arc::from(marker)),
        );
        self.ix.dropped.push((coll, def.id));
        true
    }

    /// Drop every index of a collection being dropped, and forget its dirty keys.
    pub(crate) fn drop_indexes_of(&mut self, coll: u32) {
        for def in self.indexes_of(coll) {
            self.drop_index_in(coll, &def.name);
        }
        self.ix
            .dirty
            .retain(|k| keys::parse_entity_key(k).is_none_or(|(c, _)| c != coll));
        self.ix
            .indexed
            .retain(|k, _| keys::parse_entity_key(k).is_none_or(|(c, _)| c != coll));
    }

    /// The indexes of a collection as this transaction sees them.
    pub(crate) fn index_infos(&self, collection: &str) -> Vec<IndexInfo> {
        match self.resolve(collection) {
            Some(coll) => self.indexes_of(coll).iter().map(|d| d.info()).collect(),
            None => Vec::new(),
        }
    }
}

/// Values in diagnostic notation, for error messages: `"a"` or `("a", 3)`.
pub(crate) fn render(vals: &[&Value]) -> String {
    match vals {
        [one] => one.to_string(),
        many => format!(
            "({})",
            many.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
