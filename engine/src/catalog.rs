//! The collection catalog: names to local ids, with the sequence at which each incarnation was
//! created and dropped, so that every snapshot resolves names as of its own sequence.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::db::{Inner, range};
use crate::error::{Error, Result};
use crate::index::IndexDef;
use crate::keys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Incarnation {
    pub id: u32,
    pub created: u64,
    pub dropped: Option<u64>,
}

/// One index's life: on which collection, created and dropped when.
#[derive(Debug, Clone)]
pub(crate) struct IndexIncarnation {
    pub coll: u32,
    pub def: Arc<IndexDef>,
    pub created: u64,
    pub dropped: Option<u64>,
}

/// Names to incarnations (oldest first), the indexes, and the change-feed holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Catalog {
    by_name: BTreeMap<String, Vec<Incarnation>>,
    max_id: u32,
    indexes: Vec<IndexIncarnation>,
    max_index_id: u32,
    holds: BTreeMap<String, Vec<HoldChange>>,
}

/// One committed setting of a change-feed hold: at commit sequence `seq`, the hold moved to
/// `position` (`None`: released).
///
/// A hold keeps the history of settings that may not be durable yet (the newest durable one
/// first), because compaction must not act on a hold that a crash could undo: a hold moved
/// forward by a relaxed (or not yet synced) commit would let compaction drop records that
/// the hold, as recovered, still needs. [`Catalog::hold_floor`] takes the lowest position
/// among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HoldChange {
    seq: u64,
    position: Option<u64>,
}

/// Longest collection name accepted, in bytes of UTF-8.
pub const MAX_COLLECTION_NAME_BYTES: usize = 255;

/// Longest change-feed hold name, in bytes of UTF-8.
pub const MAX_HOLD_NAME_BYTES: usize = MAX_COLLECTION_NAME_BYTES;

/// What is wrong with `name` as a collection or hold name, if anything: names are 1 to 255
/// bytes of UTF-8 without control characters.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("the name cannot be empty")
    } else if name.len() > MAX_COLLECTION_NAME_BYTES {
        Some("the name is longer than 255 bytes")
    } else if name.chars().any(char::is_control) {
        Some("the name cannot contain control characters")
    } else {
        None
    }
}

/// Checks a collection name: 1 to 255 bytes of UTF-8 without control characters. Writing
/// to a collection checks it too; this is for callers that validate a whole request before
/// any write (the sync server's push).
///
/// ```
/// assert!(entidb::check_collection_name("notes").is_ok());
/// assert!(entidb::check_collection_name("").is_err());
/// assert!(entidb::check_collection_name("a\nb").is_err());
/// ```
pub fn check_name(name: &str) -> Result<()> {
    match name_problem(name) {
        Some(reason) => Err(Error::InvalidCollectionName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Check a change-feed hold name: the same rules as a collection name.
pub(crate) fn check_hold_name(name: &str) -> Result<()> {
    match name_problem(name) {
        Some(reason) => Err(Error::InvalidArgument(format!(
            "feed hold {name:?}: {reason}"
        ))),
        None => Ok(()),
    }
}

impl Catalog {
    /// The id of `name` as of `seq`.
    pub(crate) fn resolve(&self, name: &str, seq: u64) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .rev()
            .find_map(|i| (i.created <= seq && i.dropped.is_none_or(|d| d > seq)).then_some(i.id))
    }

    /// Live collections as of `seq`, by name.
    pub(crate) fn list(&self, seq: u64) -> Vec<(String, u32)> {
        self.by_name
            .keys()
            .filter_map(|n| self.resolve(n, seq).map(|id| (n.clone(), id)))
            .collect()
    }

    /// The name of collection `id` (live or dropped).
    pub(crate) fn name_of(&self, id: u32) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, v)| v.iter().any(|i| i.id == id))
            .map(|(n, _)| n.as_str())
    }

    pub(crate) fn next_id(&self) -> u32 {
        self.max_id + 1
    }

    pub(crate) fn create(&mut self, name: &str, id: u32, seq: u64) {
        self.max_id = self.max_id.max(id);
        self.by_name
            .entry(name.to_owned())
            .or_default()
            .push(Incarnation {
                id,
                created: seq,
                dropped: None,
            });
    }

    pub(crate) fn drop_at(&mut self, name: &str, id: u32, seq: u64) {
        if let Some(v) = self.by_name.get_mut(name) {
            for i in v.iter_mut().filter(|i| i.id == id) {
                i.dropped = Some(seq);
            }
        }
    }

    /// The indexes of collection `coll` as of `seq`, in creation order.
    pub(crate) fn indexes_of(&self, coll: u32, seq: u64) -> Vec<Arc<IndexDef>> {
        self.indexes
            .iter()
            .filter(|i| i.coll == coll && i.created <= seq && i.dropped.is_none_or(|d| d > seq))
            .map(|i| i.def.clone())
            .collect()
    }

    /// Whether collection `coll` has an index as of `seq` that `keep` accepts (by id).
    pub(crate) fn has_index(&self, coll: u32, seq: u64, keep: impl Fn(u32) -> bool) -> bool {
        self.indexes.iter().any(|i| {
            i.coll == coll
                && i.created <= seq
                && i.dropped.is_none_or(|d| d > seq)
                && keep(i.def.id)
        })
    }

    pub(crate) fn next_index_id(&self) -> u32 {
        self.max_index_id + 1
    }

    pub(crate) fn create_index(&mut self, coll: u32, def: Arc<IndexDef>, seq: u64) {
        self.max_index_id = self.max_index_id.max(def.id);
        self.indexes.push(IndexIncarnation {
            coll,
            def,
            created: seq,
            dropped: None,
        });
    }

    pub(crate) fn drop_index(&mut self, id: u32, seq: u64) {
        for i in self.indexes.iter_mut().filter(|i| i.def.id == id) {
            i.dropped.get_or_insert(seq);
        }
    }

    /// Record that the commit at `seq` set hold `name` to `position` (`None`: released).
    /// Settings older than the newest one at or below `durable_seq` are forgotten.
    pub(crate) fn set_hold(
        &mut self,
        name: &str,
        seq: u64,
        position: Option<u64>,
        durable_seq: u64,
    ) {
        let changes = self.holds.entry(name.to_owned()).or_default();
        changes.push(HoldChange { seq, position });
        if let Some(newest_durable) = changes.iter().rposition(|c| c.seq <= durable_seq) {
            changes.drain(..newest_durable);
        }
        if changes.iter().all(|c| c.position.is_none()) {
            self.holds.remove(name);
        }
    }

    /// The current position of every hold, by name (the newest setting of each).
    pub(crate) fn holds(&self) -> BTreeMap<String, u64> {
        self.holds
            .iter()
            .filter_map(|(n, c)| Some((n.clone(), c.last()?.position?)))
            .collect()
    }

    /// The current position of hold `name` (its newest setting), if it holds one.
    pub(crate) fn hold(&self, name: &str) -> Option<u64> {
        self.holds.get(name)?.last()?.position
    }

    /// The lowest position any hold keeps, counting every setting newer than the newest one
    /// that is durable at `durable_seq` (see [`HoldChange`]); `None` without holds.
    pub(crate) fn hold_floor(&self, durable_seq: u64) -> Option<u64> {
        self.holds
            .values()
            .flat_map(|changes| {
                let from = changes
                    .iter()
                    .rposition(|c| c.seq <= durable_seq)
                    .unwrap_or(0);
                changes[from..].iter().filter_map(|c| c.position)
            })
            .min()
    }

    /// Indexes dropped at or before `horizon`: (index id, drop sequence).
    pub(crate) fn indexes_dropped_before(&self, horizon: u64) -> Vec<(u32, u64)> {
        self.indexes
            .iter()
            .filter_map(|i| i.dropped.filter(|&d| d <= horizon).map(|d| (i.def.id, d)))
            .collect()
    }

    /// Collections dropped at or before `horizon`: (id, drop sequence).
    pub(crate) fn dropped_before(&self, horizon: u64) -> Vec<(u32, u64)> {
        self.by_name
            .values()
            .flatten()
            .filter_map(|i| i.dropped.filter(|&d| d <= horizon).map(|d| (i.id, d)))
            .collect()
    }

    /// Rebuild from the catalog key range at the latest state.
    pub(crate) async fn load(inner: &Inner) -> Result<Catalog> {
        let view = inner.view();
        let mut it = range(
            &view.version,
            &[keys::TAG_CATALOG],
            &[keys::TAG_CATALOG + 1],
        );
        let mut cat = Catalog::default();
        let mut dropped = Vec::new();
        let mut dropped_indexes = Vec::new();
        while let Some((key, seq, value)) = it.next_live(view.seq).await? {
            let bad = || Error::corruption("catalog", seq, "malformed catalog record");
            match key.get(1) {
                Some(b'C') => {
                    let name = std::str::from_utf8(&key[2..]).map_err(|_| bad())?;
                    let id = u32::from_be_bytes(value[..].try_into().map_err(|_| bad())?);
                    cat.create(name, id, seq);
                }
                Some(b'D') => {
                    let id = u32::from_be_bytes(key[2..].try_into().map_err(|_| bad())?);
                    let name = std::str::from_utf8(&value).map_err(|_| bad())?.to_owned();
                    dropped.push((name, id, seq));
                }
                Some(b'I') => {
                    let coll_bytes = key.get(2..6).ok_or_else(bad)?;
                    let coll = u32::from_be_bytes(coll_bytes.try_into().map_err(|_| bad())?);
                    let name = std::str::from_utf8(&key[6..]).map_err(|_| bad())?;
                    let def = IndexDef::decode_record(name, &value).ok_or_else(bad)?;
                    cat.create_index(coll, Arc::new(def), seq);
                }
                Some(b'J') => {
                    let id = u32::from_be_bytes(key[2..].try_into().map_err(|_| bad())?);
                    let coll_bytes = value.get(..4).ok_or_else(bad)?;
                    let coll = u32::from_be_bytes(coll_bytes.try_into().map_err(|_| bad())?);
                    let name = std::str::from_utf8(&value[4..]).map_err(|_| bad())?;
                    dropped_indexes.push((coll, name.to_owned(), id, seq));
                }
                Some(b'H') => {
                    let name = std::str::from_utf8(&key[2..]).map_err(|_| bad())?;
                    let position = u64::from_be_bytes(value[..].try_into().map_err(|_| bad())?);
                    cat.set_hold(name, seq, Some(position), u64::MAX);
                }
                Some(b'V') => {} // the schema version, read where it is needed
                _ => return Err(bad()),
            }
        }
        for (name, id, seq) in dropped {
            cat.max_id = cat.max_id.max(id);
            cat.by_name.entry(name).or_default().insert(
                0,
                Incarnation {
                    id,
                    created: 0,
                    dropped: Some(seq),
                },
            );
        }
        for (coll, name, id, seq) in dropped_indexes {
            // Only the id and the drop matter now (compaction purges the entries).
            let def = IndexDef {
                id,
                name,
                spec: crate::index::IndexSpec::ordered(["?"]),
            };
            cat.max_index_id = cat.max_index_id.max(id);
            cat.indexes.insert(
                0,
                IndexIncarnation {
                    coll,
                    def: Arc::new(def),
                    created: 0,
                    dropped: Some(seq),
                },
            );
        }
        Ok(cat)
    }
}
