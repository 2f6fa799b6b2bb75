//! Checking every index against the documents it describes.

use std::collections::BTreeMap;

use super::lookup::MergedRange;
use super::{IndexKind, search};
use crate::db::read;
use crate::document::ScanOptions;
use crate::error::Result;
use crate::ids::EntityId;
use crate::keys;
use crate::txn::Snapshot;

/// How many entity ids each list of an [`IndexCheck`] reports at most (the counts are exact).
pub const MAX_REPORTED: usize = 100;

/// The result of [`Database::verify_indexes`](crate::Database::verify_indexes): one check
/// per index of every collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct IndexReport {
    /// The sequence of the snapshot that was checked.
    pub sequence: u64,
    /// One entry per index.
    pub indexes: Vec<IndexCheck>,
}

/// The check of one index.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct IndexCheck {
    /// Collection name.
    pub collection: String,
    /// Index name.
    pub index: String,
    /// Documents in the collection.
    pub documents: u64,
    /// Entries found in the index.
    pub entries: u64,
    /// Documents whose entry is missing (the first 100).
    pub missing: Vec<EntityId>,
    /// Number of missing entries.
    pub missing_count: u64,
    /// Entries that match no document's values (the first 100).
    pub stale: Vec<EntityId>,
    /// Number of stale entries.
    pub stale_count: u64,
    /// Documents that share a value in a unique index (the first 100).
    pub duplicates: Vec<EntityId>,
    /// Number of such documents beyond the first of each value.
    pub duplicate_count: u64,
}

impl IndexCheck {
    /// Whether the index matches its documents exactly.
    pub fn is_ok(&self) -> bool {
        self.missing_count == 0 && self.stale_count == 0 && self.duplicate_count == 0
    }
}

impl IndexReport {
    /// Whether every index matches its documents exactly.
    pub fn is_ok(&self) -> bool {
        self.indexes.iter().all(IndexCheck::is_ok)
    }
}

impl std::fmt::Display for IndexReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.indexes {
            let state = if c.is_ok() { "ok" } else { "DAMAGED" };
            writeln!(
                f,
                "{}.{}: {state} ({} documents, {} entries; {} missing, {} stale, {} duplicate)",
                c.collection,
                c.index,
                c.documents,
                c.entries,
                c.missing_count,
                c.stale_count,
                c.duplicate_count
            )?;
        }
        if self.indexes.is_empty() {
            writeln!(f, "no indexes")?;
        }
        Ok(())
    }
}

fn note(list: &mut Vec<EntityId>, count: &mut u64, id: EntityId) {
    *count += 1;
    if list.len() < MAX_REPORTED {
        list.push(id);
    }
}

/// Check every index in `snap`: the entries each document should have (recomputed from the
/// documents) against the entries stored. Memory: the expected entries of one index.
pub(crate) async fn verify(snap: &Snapshot) -> Result<IndexReport> {
    let mut report = IndexReport {
        sequence: snap.sequence(),
        indexes: Vec::new(),
    };
    let ctx = snap.ctx();
    let colls = read(&snap.inner.catalog).list(snap.sequence());
    for (name, coll) in colls {
        let defs = read(&snap.inner.catalog).indexes_of(coll, snap.sequence());
        for def in defs {
            let mut check = IndexCheck {
                collection: name.clone(),
                index: def.name.clone(),
                ..IndexCheck::default()
            };
            // key -> (value, exempt from uniqueness)
            let mut expected: BTreeMap<Vec<u8>, (Vec<u8>, bool)> = BTreeMap::new();
            let (mut docs, mut tokens) = (0u64, 0u64);
            let mut opts = ScanOptions::limit(1024);
            loop {
                let page = ctx.scan(Some(coll), opts, |_| true).await?;
                for doc in &page.items {
                    check.documents += 1;
                    let e = def.entries(&doc.value()?, &doc.id(), &name)?;
                    if let Some(t) = e.tokens {
                        docs += 1;
                        tokens += u64::from(t);
                    }
                    for e in e.items {
                        expected.insert(e.key, (e.value, e.exempt));
                    }
                }
                match page.next {
                    Some(c) => opts = opts.after(c),
                    None => break,
                }
            }
            if def.spec.kind == IndexKind::Search {
                expected.insert(
                    search::stats_key(def.id),
                    (search::encode_stats(docs, tokens), true),
                );
            }
            if def.spec.unique {
                let mut last: Option<&[u8]> = None;
                for (k, _) in expected.iter().filter(|(_, (_, exempt))| !*exempt) {
                    let body = &k[..k.len() - 16];
                    if last == Some(body) {
                        let id = keys::index_entry_entity(k).unwrap_or(EntityId::MIN);
                        note(&mut check.duplicates, &mut check.duplicate_count, id);
                    }
                    last = Some(body);
                }
            }
            let (from, end) = (keys::index_prefix(def.id), keys::index_end(def.id));
            let mut it = MergedRange::new(&ctx, &from, &end);
            while let Some((k, _, v)) = it.next().await? {
                check.entries += 1;
                if expected
                    .remove(&k[..])
                    .is_none_or(|(want, _)| want[..] != v[..])
                {
                    let id = keys::index_entry_entity(&k).unwrap_or(EntityId::MIN);
                    note(&mut check.stale, &mut check.stale_count, id);
                }
            }
            for k in expected.keys() {
                let id = keys::index_entry_entity(k).unwrap_or(EntityId::MIN);
                note(&mut check.missing, &mut check.missing_count, id);
            }
            report.indexes.push(check);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::cbor::Value;
    use crate::{Database, IndexSpec, keys};

    #[test]
    fn verify_reports_missing_stale_and_duplicate_entries() {
        futures_executor::block_on(async {
            let db = Database::memory().await.expect("open");
            let c = db.collection("c");
            c.create_index("by_x", IndexSpec::ordered(["x"]).unique())
                .await
                .expect("index");
            let a = c.insert(&Value::map([("x", 1)])).await.expect("a");
            let b = c.insert(&Value::map([("x", 2)])).await.expect("b");
            let report = db.verify_indexes().await.expect("verify");
            assert!(report.is_ok(), "{report}");
            assert_eq!(report.indexes[0].entries, 2);

            // Damage the index behind the engine's back: remove b's entry, add a stray one,
            // and give a's value to a third document without an entry check.
            let mut tx = db.begin().await.expect("begin");
            let coll = tx.resolve("c").expect("collection");
            let def = tx.indexes_of(coll).pop().expect("index");
            let key_of = |x: i64, id| {
                let body = def.body([&Value::from(x)], "c").expect("small key");
                keys::index_entry_key(def.id, &body, &id)
            };
            tx.writes.insert(Arc::from(key_of(2, b)), None);
            let stray = crate::EntityId::from_bytes([9; 16]);
            tx.writes
                .insert(Arc::from(key_of(5, stray)), Some(Arc::from(&[][..])));
            let dup = crate::EntityId::from_bytes([7; 16]);
            tx.writes.insert(
                Arc::from(keys::entity_key(coll, &dup)),
                Some(Arc::from(crate::cbor::encode(&Value::map([("x", 1)])))),
            );
            tx.commit().await.expect("commit");

            let report = db.verify_indexes().await.expect("verify");
            assert!(!report.is_ok());
            let check = &report.indexes[0];
            assert_eq!(check.missing, vec![dup, b]);
            assert_eq!(check.stale, vec![stray]);
            assert_eq!(check.duplicate_count, 1);
            assert!(report.to_string().contains("DAMAGED"), "{report}");
            let _ = a;
        });
    }
}
