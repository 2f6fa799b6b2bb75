//! Field merge (`ConflictPolicy::FieldMerge`): a three-way merge of top-level map fields, with
//! last-writer-wins by HLC stamp per field, and the per-entity state it keeps.
//!
//! Per entity of a field-merge collection the server keeps (in its sync metadata):
//!
//! - the documents of the last [`HISTORY`] versions (fewer when they pass [`HISTORY_BYTES`]),
//!   so that a concurrent op's base is found;
//! - for each of those versions that a client's op wrote, which client, and the document
//!   the op pushed when the server merged it ([`Writer`]): a later op of that client was
//!   made on that document, not on the merge, and on nothing older;
//! - the stamp of the write that last changed each field ([`FieldStamps`]), so that a field
//!   both sides changed goes to the side that changed *it* later. One stamp per document is
//!   not enough: after a merge, some fields carry one side's time and some the other's.

use entidb::cbor::{Canonical, Value};
use entidb_sync::wire::Hlc;
use serde::{Deserialize, Serialize};

/// Versions kept per entity of a field-merge collection.
pub(crate) const HISTORY: usize = 8;

/// The most bytes of documents the kept versions (and their writers' pushed documents) may
/// hold together: fewer versions are kept of a large document, none of one above this.
pub(crate) const HISTORY_BYTES: usize = 4 << 20;

/// A kept version written by a client's op.
///
/// Stored as a CBOR map with the keys in canonical order (declaration order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Writer {
    /// The client whose op wrote the version.
    pub client: String,
    /// The document the op pushed, when the server merged it (the version's document is
    /// then the merge); `None`: the version's document is the op's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<Canonical>,
    /// The version.
    pub version: u64,
}

/// Per field (top-level map key) of the current document, the stamp of the op that last
/// changed it, and for up to [`REMOVED_STAMPS`] fields no longer in it, the stamp of their
/// removal. A field without one was last changed no later than the document's stamp.
pub(crate) type FieldStamps = Vec<(Value, Hlc)>;

/// The outcome of a three-way merge of map documents.
#[derive(Debug)]
pub(crate) struct Merged {
    pub doc: Value,
    /// A field both sides changed went to the server's value.
    pub client_lost: bool,
    /// A field both sides changed went to the client's value.
    pub server_lost: bool,
    /// The fields whose value (or absence) came from the client, or that both sides set to
    /// the same value, the client later: their stamp becomes the op's.
    pub taken: Vec<Value>,
}

fn map_get<'a>(m: &'a [(Value, Value)], k: &Value) -> Option<&'a Value> {
    m.iter().find(|(key, _)| key == k).map(|(_, v)| v)
}

/// Three-way merge of top-level map fields: `base` is the document the client's op was made
/// on. A field only one side changed takes that side's value; a field both changed to
/// different values goes to the client when `client_hlc` is later than the server field's
/// stamp (`server_stamp`). Returns `None` when any of the three is not a map.
pub(crate) fn merge<'a>(
    base: &Value,
    server: &Value,
    client: &Value,
    client_hlc: &Hlc,
    server_stamp: impl Fn(&Value) -> Option<&'a Hlc>,
) -> Option<Merged> {
    let (Value::Map(b), Value::Map(s), Value::Map(c)) = (base, server, client) else {
        return None;
    };
    let mut out = s.clone();
    let (mut client_lost, mut server_lost) = (false, false);
    let mut taken = Vec::new();
    let mut keys: Vec<&Value> = b.iter().map(|(k, _)| k).collect();
    for (k, _) in c {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for k in keys {
        let (vb, vs, vc) = (map_get(b, k), map_get(s, k), map_get(c, k));
        if vc == vb {
            continue; // the client did not change it
        }
        if vc == vs {
            // Both made the same change: the field's time is the later of the two.
            if server_stamp(k) < Some(client_hlc) {
                taken.push(k.clone());
            }
            continue;
        }
        if vs != vb {
            // Changed on both sides, differently.
            if server_stamp(k) >= Some(client_hlc) {
                client_lost = true;
                continue;
            }
            server_lost = true;
        }
        out.retain(|(key, _)| key != k);
        if let Some(v) = vc {
            out.push((k.clone(), v.clone()));
        }
        taken.push(k.clone());
    }
    Some(Merged {
        doc: Value::Map(out),
        client_lost,
        server_lost,
        taken,
    })
}

/// The document of `version` in `history`.
pub(crate) fn doc_at(history: &[(u64, Option<Canonical>)], version: u64) -> Option<&Canonical> {
    history
        .iter()
        .find(|(v, _)| *v == version)
        .and_then(|(_, d)| d.as_ref())
}

/// The document a concurrent op of `client` was made on: the client's newest write after
/// the op's base version, if one is kept (the document it pushed, when the server merged
/// it), else the base version's. After a `duplicate`, `rejected` or `merged` answer the
/// client's later ops keep the base it last saw (the answer does not give the state they
/// were made on), so the base version alone would count the earlier op's own changes as the
/// later op's.
pub(crate) fn merge_base<'a>(
    history: &'a [(u64, Option<Canonical>)],
    writers: &'a [Writer],
    client: &str,
    base_version: Option<u64>,
) -> Option<&'a Canonical> {
    let own = writers
        .iter()
        .filter(|w| w.client == client && Some(w.version) > base_version)
        .max_by_key(|w| w.version);
    match own {
        Some(Writer {
            pushed: Some(doc), ..
        }) => Some(doc),
        Some(w) => doc_at(history, w.version),
        None => base_version.and_then(|v| doc_at(history, v)),
    }
}

/// Stamps kept for fields no longer in the document (the time of their removal), newest
/// first, at most this many: a field set again later is compared with its removal.
pub(crate) const REMOVED_STAMPS: usize = 16;

/// The field stamps after a write of `new` at `hlc` over `previous` (`None`: absent or
/// unknown, every field of `new` counts as changed). A merge passes the fields it took from
/// the client as `taken`: only those change stamp. A field the write removed keeps a stamp
/// (the removal's time) beside the document's fields, up to [`REMOVED_STAMPS`] of them; a
/// delete, or a document that is not a map, has none.
pub(crate) fn stamps_after(
    stamps: FieldStamps,
    previous: Option<&Value>,
    new: Option<&Value>,
    hlc: &Hlc,
    taken: Option<&[Value]>,
) -> FieldStamps {
    let Some(Value::Map(fields)) = new else {
        return Vec::new();
    };
    let before = match previous {
        Some(Value::Map(m)) => Some(m.as_slice()),
        _ => None,
    };
    let changed = |k: &Value, now: Option<&Value>| match taken {
        Some(taken) => taken.contains(k),
        // An unknown previous document: every field counts as changed, a removal too.
        None => before.is_none_or(|b| map_get(b, k) != now),
    };
    let kept = |k: &Value| stamps.iter().find(|(sk, _)| sk == k).cloned();
    let mut out: FieldStamps = fields
        .iter()
        .filter_map(|(k, v)| {
            if changed(k, Some(v)) {
                Some((k.clone(), hlc.clone()))
            } else {
                // Unchanged: its stamp stays (or its absence, for a field never stamped).
                kept(k)
            }
        })
        .collect();
    // Removed fields: removed now (present before, or taken from the client as absent), or
    // earlier (a stamp kept for a field still absent).
    let mut removed: FieldStamps = Vec::new();
    let candidates = stamps
        .iter()
        .map(|(k, _)| k)
        .chain(before.into_iter().flatten().map(|(k, _)| k))
        .chain(taken.into_iter().flatten());
    for k in candidates {
        if map_get(fields, k).is_some() || removed.iter().any(|(rk, _)| rk == k) {
            continue;
        }
        if changed(k, None) {
            removed.push((k.clone(), hlc.clone()));
        } else if let Some(s) = kept(k) {
            removed.push(s);
        }
    }
    removed.sort_by(|a, b| b.1.cmp(&a.1));
    removed.truncate(REMOVED_STAMPS);
    out.extend(removed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, i64)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::Text((*k).into()), Value::Int((*v).into())))
                .collect(),
        )
    }

    fn hlc(millis: u64) -> Hlc {
        Hlc {
            node: "n".into(),
            millis,
            counter: 0,
        }
    }

    fn key(k: &str) -> Value {
        Value::Text(k.into())
    }

    #[test]
    fn three_way_merge_of_fields() {
        let old = hlc(1);
        let older = |_: &Value| Some(&old);
        let new = hlc(9);
        let newer = |_: &Value| Some(&new);
        let at = hlc(5);
        let base = map(&[("a", 1), ("b", 1), ("c", 1)]);
        // Client changes a and removes c; server changes b.
        let server = map(&[("a", 1), ("b", 2), ("c", 1)]);
        let client = map(&[("a", 9), ("b", 1)]);
        let m = merge(&base, &server, &client, &at, newer).expect("maps");
        assert_eq!(m.doc, map(&[("a", 9), ("b", 2)]));
        assert!(!m.client_lost && !m.server_lost);
        assert_eq!(m.taken, vec![key("a"), key("c")]);
        // Both change b: the side that changed it later wins, the other is the loser.
        let client = map(&[("a", 1), ("b", 3), ("c", 1)]);
        let m = merge(&base, &server, &client, &at, newer).expect("maps");
        assert_eq!(m.doc, server);
        assert!(m.client_lost && !m.server_lost && m.taken.is_empty());
        let m = merge(&base, &server, &client, &at, older).expect("maps");
        assert_eq!(m.doc, map(&[("a", 1), ("b", 3), ("c", 1)]));
        assert!(m.server_lost && !m.client_lost);
        // The stamp is per field: b's is old, a's is new.
        let per_field = |k: &Value| {
            if *k == key("b") {
                Some(&old)
            } else {
                Some(&new)
            }
        };
        let server = map(&[("a", 2), ("b", 2), ("c", 1)]);
        let client = map(&[("a", 3), ("b", 3), ("c", 1)]);
        let m = merge(&base, &server, &client, &at, per_field).expect("maps");
        assert_eq!(m.doc, map(&[("a", 2), ("b", 3), ("c", 1)]));
        assert!(m.server_lost && m.client_lost);
        // The same change on both sides is not a conflict; the field's time becomes the
        // client's when it is the later.
        let m = merge(&base, &server, &server, &at, newer).expect("maps");
        assert_eq!(m.doc, server);
        assert!(!m.client_lost && !m.server_lost && m.taken.is_empty());
        let m = merge(&base, &server, &server, &at, older).expect("maps");
        assert_eq!(m.doc, server);
        assert_eq!(m.taken, vec![key("a"), key("b")]);
        // A field added by the client survives.
        let server = map(&[("a", 1), ("b", 2), ("c", 1)]);
        let client = map(&[("a", 1), ("b", 1), ("c", 1), ("d", 4)]);
        let m = merge(&base, &server, &client, &at, newer).expect("maps");
        assert_eq!(m.doc, map(&[("a", 1), ("b", 2), ("c", 1), ("d", 4)]));
        // Not maps: no merge.
        assert!(merge(&base, &Value::Null, &client, &at, newer).is_none());
    }

    #[test]
    fn stamps_follow_the_fields_each_write_changed() {
        let (t1, t2, t3) = (hlc(1), hlc(2), hlc(3));
        // A new document: every field takes the write's stamp.
        let doc1 = map(&[("a", 1), ("b", 1)]);
        let s = stamps_after(Vec::new(), None, Some(&doc1), &t1, None);
        assert_eq!(s, vec![(key("a"), t1.clone()), (key("b"), t1.clone())]);
        // A write that changes b and adds c: a keeps its stamp.
        let doc2 = map(&[("a", 1), ("b", 2), ("c", 2)]);
        let s = stamps_after(s, Some(&doc1), Some(&doc2), &t2, None);
        assert_eq!(
            s,
            vec![
                (key("a"), t1.clone()),
                (key("b"), t2.clone()),
                (key("c"), t2.clone())
            ]
        );
        // A merge that took c and a's removal from the client: b keeps its stamp, and the
        // removal of a is stamped.
        let doc3 = map(&[("b", 2), ("c", 3)]);
        let taken = [key("a"), key("c")];
        let s = stamps_after(s, Some(&doc2), Some(&doc3), &t3, Some(&taken));
        assert_eq!(
            s,
            vec![
                (key("b"), t2.clone()),
                (key("c"), t3.clone()),
                (key("a"), t3.clone())
            ]
        );
        // A write that changes only c keeps the removal's stamp; one that sets a again
        // stamps it as a field.
        let t4 = hlc(4);
        let doc4 = map(&[("b", 2), ("c", 4)]);
        let s4 = stamps_after(s.clone(), Some(&doc3), Some(&doc4), &t4, None);
        assert_eq!(
            s4,
            vec![
                (key("b"), t2.clone()),
                (key("c"), t4.clone()),
                (key("a"), t3.clone())
            ]
        );
        let doc5 = map(&[("a", 5), ("b", 2), ("c", 4)]);
        let s5 = stamps_after(s4, Some(&doc4), Some(&doc5), &t4, None);
        assert_eq!(s5[0], (key("a"), t4.clone()));
        assert_eq!(s5.len(), 3);
        // Removal stamps are bounded, newest kept.
        let many = Value::Map(
            (0..40)
                .map(|i| (Value::Text(format!("k{i:02}")), Value::Int(0.into())))
                .collect(),
        );
        let all = stamps_after(Vec::new(), None, Some(&many), &t1, None);
        let empty = map(&[]);
        let after = stamps_after(all, Some(&many), Some(&empty), &t2, None);
        assert_eq!(after.len(), REMOVED_STAMPS);
        assert!(after.iter().all(|(_, h)| *h == t2));
        // A field never stamped (a record from before stamps) and not changed stays so.
        let s = stamps_after(Vec::new(), Some(&doc3), Some(&doc3), &t3, None);
        assert!(s.is_empty(), "{s:?}");
        // Over an unknown previous document every field counts as changed, and a stamped
        // field now absent as removed by this write.
        let known = vec![(key("a"), t1.clone()), (key("b"), t1.clone())];
        let s2 = stamps_after(known, None, Some(&map(&[("a", 1)])), &t2, None);
        assert_eq!(s2, vec![(key("a"), t2.clone()), (key("b"), t2.clone())]);
        // A delete (or a document that is not a map) has no field stamps.
        assert!(stamps_after(s, Some(&doc3), None, &t3, None).is_empty());
    }

    /// A field removed in a merge carries the removal's time: a later op that sets it again
    /// from an older base wins it, an earlier one would not.
    #[test]
    fn a_removal_is_compared_by_its_own_time() {
        let (t1, t3, t4, t5) = (hlc(1), hlc(3), hlc(4), hlc(5));
        let v1 = map(&[("a", 0), ("k", 0)]);
        let stamps = stamps_after(Vec::new(), None, Some(&v1), &t1, None);
        // B sets a at t5; A (t3, from v1) removes k and is merged.
        let v2 = map(&[("a", 1), ("k", 0)]);
        let stamps = stamps_after(stamps, Some(&v1), Some(&v2), &t5, None);
        let stamp_of =
            |s: &FieldStamps, k: &Value| s.iter().find(|(f, _)| f == k).map(|(_, h)| h.clone());
        let m = merge(&v1, &v2, &map(&[("a", 0)]), &t3, |k| {
            stamps.iter().find(|(f, _)| f == k).map(|(_, h)| h)
        })
        .expect("maps");
        assert_eq!(m.doc, map(&[("a", 1)]));
        let v3 = m.doc;
        let stamps = stamps_after(stamps, None, Some(&v3), &t3, Some(&m.taken));
        assert_eq!(stamp_of(&stamps, &key("k")), Some(t3.clone()));
        assert_eq!(stamp_of(&stamps, &key("a")), Some(t5.clone()));
        // C (t4, from v1) sets k: later than its removal, so it wins.
        let m = merge(&v1, &v3, &map(&[("a", 0), ("k", 9)]), &t4, |k| {
            stamps.iter().find(|(f, _)| f == k).map(|(_, h)| h)
        })
        .expect("maps");
        assert_eq!(m.doc, map(&[("a", 1), ("k", 9)]));
        assert!(m.server_lost && !m.client_lost);
    }

    #[test]
    fn the_merge_base_is_the_clients_latest_write_after_its_base() {
        let doc = |n| Some(Canonical::from_value(&map(&[("n", n)])).expect("a map"));
        let history = vec![(1, doc(1)), (2, doc(2)), (3, doc(3)), (4, doc(4))];
        let writers = vec![
            Writer {
                client: "a".into(),
                pushed: None,
                version: 2,
            },
            Writer {
                client: "b".into(),
                pushed: None,
                version: 3,
            },
            Writer {
                client: "a".into(),
                pushed: doc(40),
                version: 4,
            },
        ];
        // a's newest write after its base 1 is version 4, a merge of what a pushed.
        assert_eq!(
            merge_base(&history, &writers, "a", Some(1)),
            doc(40).as_ref()
        );
        assert_eq!(
            merge_base(&history, &writers, "a", Some(4)),
            doc(4).as_ref()
        );
        // b's write after base 1 is version 3, as pushed.
        assert_eq!(
            merge_base(&history, &writers, "b", Some(1)),
            doc(3).as_ref()
        );
        // Nothing of c's: its base; a base no longer kept gives none.
        assert_eq!(
            merge_base(&history, &writers, "c", Some(2)),
            doc(2).as_ref()
        );
        assert_eq!(merge_base(&history, &writers, "c", Some(0)), None);
        assert_eq!(merge_base(&history, &writers, "c", None), None);
    }
}
