//! Declared secondary indexes: definitions, entry keys, queries.
//!
//! An index is declared on a collection over one field path or several (a composite key, in
//! order). Its entries live in the database's keyspace under tag `0x02` (see `keys.rs`) and
//! are written in the same transaction as the documents they describe, so a lookup in any
//! snapshot or transaction returns exactly what a scan of that snapshot would.
//!
//! # Rules
//!
//! - **One entry per document**, keyed by the values at the index's field paths. A path is a
//!   dot-separated list of text map keys (`address.city`).
//! - **Missing fields**: a document where any path is absent (or runs through something that
//!   is not a map) has no entry. It is not found by lookups of that index.
//! - **Null**: a present `null` (or `undefined`) is a value and is indexed (so
//!   `Query::eq(Value::Null)` finds it; null sorts before every other value). A unique index
//!   does not constrain entries that have a null or undefined field: any number of documents
//!   may have `email: null` (the SQL rule).
//! - **Arrays and maps** are indexed as whole values (no per-element entries).
//! - **Numbers** compare by value across integers and floats (`1 == 1.0`, `0 == -0.0`): see
//!   [`keyenc`] for the total order of all CBOR values.
//! - **Kinds**: [`IndexKind::Ordered`] keys are the order-preserving encoding of the values
//!   (equality, range and prefix lookups; keys up to [`MAX_ORDERED_KEY_BYTES`]).
//!   [`IndexKind::Equality`] keys are a 128-bit hash (the first 16 bytes of SHA-256) of that
//!   encoding: fixed-size whatever the values, equality lookups only; every hit is checked
//!   against the document, so a hash collision can never return a wrong document.
//! - **Unique** indexes are checked at commit over the transaction's final state; a
//!   violation fails the commit with [`Error::UniqueViolation`]
//!   and nothing of the transaction is written.

pub mod keyenc;
pub(crate) mod lookup;
pub(crate) mod maintain;
pub mod search;
pub(crate) mod verify;

use std::ops::Bound;

use crate::cbor::{self, Value};
use crate::error::{Error, Result};
use crate::ids::EntityId;
use crate::keys;

pub use lookup::{IndexPage, Lookup};
pub use search::{SearchHit, SearchMode, SearchQuery, TextOptions};
pub use verify::{IndexCheck, IndexReport};

/// Largest order-preserving key body of an [`IndexKind::Ordered`] index entry. A document
/// whose indexed values encode larger fails its commit with
/// [`Error::IndexKeyTooLarge`]; index such fields with an
/// [`IndexKind::Equality`] index instead.
pub const MAX_ORDERED_KEY_BYTES: usize = 4096;

/// Length of the hash that keys an equality index.
const HASH_LEN: usize = 16;

/// How an index stores its keys and which lookups it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IndexKind {
    /// Keys are hashes of the values: equality lookups on every field only, fixed-size
    /// entries whatever the values' size.
    Equality,
    /// Keys are the values in order: equality (on any leading fields), ranges and prefixes.
    Ordered,
    /// A full-text index over text fields, queried with `search` (see [`search`]).
    Search,
}

impl IndexKind {
    fn as_str(self) -> &'static str {
        match self {
            IndexKind::Equality => "equality",
            IndexKind::Ordered => "ordered",
            IndexKind::Search => "search",
        }
    }
}

/// What to index: the field paths, the kind, and whether values must be unique.
///
/// ```
/// use entidb::IndexSpec;
/// let by_email = IndexSpec::equality(["email"]).unique();
/// let by_city_age = IndexSpec::ordered(["address.city", "age"]);
/// # let _ = (by_email, by_city_age);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub(crate) fields: Vec<String>,
    pub(crate) kind: IndexKind,
    pub(crate) unique: bool,
    pub(crate) text: TextOptions,
}

impl IndexSpec {
    /// An ordered index over `fields` (dot-separated paths), in order.
    pub fn ordered<S: Into<String>>(fields: impl IntoIterator<Item = S>) -> IndexSpec {
        IndexSpec {
            fields: fields.into_iter().map(Into::into).collect(),
            kind: IndexKind::Ordered,
            unique: false,
            text: TextOptions::default(),
        }
    }
    /// An equality (hash) index over `fields`.
    pub fn equality<S: Into<String>>(fields: impl IntoIterator<Item = S>) -> IndexSpec {
        IndexSpec {
            kind: IndexKind::Equality,
            ..IndexSpec::ordered(fields)
        }
    }
    /// A full-text search index over text `fields` (text or arrays of text), with the default
    /// analysis: words folded to lower case without diacritics, no stemming.
    ///
    /// ```
    /// use entidb::IndexSpec;
    /// let articles = IndexSpec::search(["title", "body"]).stem_english(true);
    /// # let _ = articles;
    /// ```
    pub fn search<S: Into<String>>(fields: impl IntoIterator<Item = S>) -> IndexSpec {
        IndexSpec {
            kind: IndexKind::Search,
            ..IndexSpec::ordered(fields)
        }
    }
    /// Search indexes: lower-case words (default on).
    pub fn fold_case(mut self, on: bool) -> IndexSpec {
        self.text.fold_case = on;
        self
    }
    /// Search indexes: strip diacritics (default on).
    pub fn fold_diacritics(mut self, on: bool) -> IndexSpec {
        self.text.fold_diacritics = on;
        self
    }
    /// Search indexes: stem English words (default off).
    pub fn stem_english(mut self, on: bool) -> IndexSpec {
        self.text.stem_english = on;
        self
    }
    /// The text analysis options (search indexes).
    pub fn text_options(&self) -> TextOptions {
        self.text
    }
    /// Make the index unique: no two documents may have equal values (ignoring entries with
    /// a null or undefined field).
    pub fn unique(mut self) -> IndexSpec {
        self.unique = true;
        self
    }
    /// The field paths.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }
    /// The kind.
    pub fn kind(&self) -> IndexKind {
        self.kind
    }
    /// Whether values must be unique.
    pub fn is_unique(&self) -> bool {
        self.unique
    }

    pub(crate) fn check(&self, name: &str) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidArgument(format!("index {name:?}: {why}")));
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return bad("an index name is 1 to 255 bytes without control characters");
        }
        if self.fields.is_empty() || self.fields.len() > 16 {
            return bad("an index has 1 to 16 fields");
        }
        for f in &self.fields {
            if f.is_empty() || f.split('.').any(str::is_empty) {
                return bad("a field path is one or more non-empty names separated by dots");
            }
        }
        if self.unique && self.kind == IndexKind::Search {
            return bad("a search index cannot be unique");
        }
        Ok(())
    }
}

/// A declared index, as [`Collection::indexes`](crate::Collection::indexes) lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct IndexInfo {
    /// The index name (unique within its collection).
    pub name: String,
    /// The field paths, in key order.
    pub fields: Vec<String>,
    /// The kind.
    pub kind: IndexKind,
    /// Whether values must be unique.
    pub unique: bool,
    /// Text analysis (search indexes).
    pub text: TextOptions,
}

/// A stored index definition: its spec and the local id that prefixes its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexDef {
    pub id: u32,
    pub name: String,
    pub spec: IndexSpec,
}

impl IndexDef {
    /// The catalog record: a CBOR map `{"fields": [..], "kind": "...", "unique": bool}`.
    pub(crate) fn encode_record(&self) -> Vec<u8> {
        let v = Value::map([
            (
                "fields",
                Value::array(self.spec.fields.iter().map(|f| Value::from(f.as_str()))),
            ),
            ("id", Value::from(self.id)),
            ("kind", Value::from(self.spec.kind.as_str())),
            ("unique", Value::Bool(self.spec.unique)),
            ("fold_case", Value::Bool(self.spec.text.fold_case)),
            (
                "fold_diacritics",
                Value::Bool(self.spec.text.fold_diacritics),
            ),
            (
                "stem",
                Value::from(if self.spec.text.stem_english {
                    "english"
                } else {
                    ""
                }),
            ),
        ]);
        cbor::encode(&v)
    }

    pub(crate) fn decode_record(name: &str, bytes: &[u8]) -> Option<IndexDef> {
        let v = cbor::decode(bytes).ok()?;
        let fields = v
            .get("fields")?
            .as_array()?
            .iter()
            .map(|f| f.as_text().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        let kind = match v.get("kind")?.as_text()? {
            "equality" => IndexKind::Equality,
            "ordered" => IndexKind::Ordered,
            "search" => IndexKind::Search,
            _ => return None,
        };
        let flag = |k: &str, default: bool| match v.get(k) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        };
        let text = TextOptions {
            fold_case: flag("fold_case", true),
            fold_diacritics: flag("fold_diacritics", true),
            stem_english: v.get("stem").and_then(Value::as_text) == Some("english"),
        };
        let unique = matches!(v.get("unique")?, Value::Bool(true));
        let id = u32::try_from(v.get("id")?.as_int()?.as_u64()?).ok()?;
        Some(IndexDef {
            id,
            name: name.to_owned(),
            spec: IndexSpec {
                fields,
                kind,
                unique,
                text,
            },
        })
    }

    pub(crate) fn info(&self) -> IndexInfo {
        IndexInfo {
            name: self.name.clone(),
            fields: self.spec.fields.clone(),
            kind: self.spec.kind,
            unique: self.spec.unique,
            text: self.spec.text,
        }
    }

    /// The values at this index's paths, or `None` if a path is missing.
    pub(crate) fn values<'v>(&self, doc: &'v Value) -> Option<Vec<&'v Value>> {
        self.spec.fields.iter().map(|p| doc.get_path(p)).collect()
    }

    /// The key body for `values`: their order-preserving encoding, or its hash.
    pub(crate) fn body<'v>(
        &self,
        values: impl IntoIterator<Item = &'v Value>,
        collection: &str,
    ) -> Result<Vec<u8>> {
        let mut enc = Vec::new();
        for v in values {
            keyenc::encode_key_into(v, &mut enc);
        }
        match self.spec.kind {
            IndexKind::Ordered => {
                if enc.len() > MAX_ORDERED_KEY_BYTES {
                    return Err(Error::IndexKeyTooLarge {
                        collection: collection.to_owned(),
                        index: self.name.clone(),
                        size: enc.len() as u64,
                        limit: MAX_ORDERED_KEY_BYTES as u64,
                    });
                }
                Ok(enc)
            }
            IndexKind::Equality | IndexKind::Search => Ok(hash(&enc).to_vec()),
        }
    }

    /// The entries of a document, in key order: one (or none, if a path is missing) for
    /// equality and ordered indexes, one per distinct term for search indexes.
    pub(crate) fn entries(&self, doc: &Value, id: &EntityId, collection: &str) -> Result<Entries> {
        if self.spec.kind == IndexKind::Search {
            let (items, tokens) = search::document_entries(self, doc, id);
            return Ok(Entries {
                items: items
                    .into_iter()
                    .map(|(key, value)| Entry {
                        key,
                        value,
                        exempt: true,
                    })
                    .collect(),
                tokens: (tokens > 0).then_some(tokens),
            });
        }
        let Some(values) = self.values(doc) else {
            return Ok(Entries::default());
        };
        let exempt = values
            .iter()
            .any(|v| matches!(v, Value::Null | Value::Undefined));
        let body = self.body(values.iter().copied(), collection)?;
        Ok(Entries {
            items: vec![Entry {
                key: keys::index_entry_key(self.id, &body, id),
                value: Vec::new(),
                exempt,
            }],
            tokens: None,
        })
    }
}

/// The entries of one document in one index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entries {
    pub items: Vec<Entry>,
    /// Search indexes: the document's token count, if it has any (it then counts in the
    /// index's document statistics).
    pub tokens: Option<u32>,
}

/// One index entry of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Not constrained by uniqueness (a null or undefined field; every search entry).
    pub exempt: bool,
}

fn hash(bytes: &[u8]) -> [u8; HASH_LEN] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&d[..HASH_LEN]);
    out
}

/// An opaque position in an index (the entry after which a lookup resumes). Pass the
/// [`IndexPage::next`] of one page to [`Query::after`] to get the next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexCursor(pub(crate) Vec<u8>);

impl IndexCursor {
    /// The cursor as bytes (to hand to a client and back).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// A cursor from bytes given out by [`IndexCursor::as_bytes`]. A cursor from another
    /// index is rejected by the lookup.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> IndexCursor {
        IndexCursor(bytes.into())
    }
}

/// Which entries a lookup visits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bounds {
    /// Entries whose leading fields equal these values.
    Eq(Vec<Value>),
    /// Entries between two (possibly partial) composite keys.
    Range(Bound<Vec<Value>>, Bound<Vec<Value>>),
    /// Entries whose leading fields equal `eq` and whose next field is a text or byte string
    /// starting with `prefix`.
    Prefix(Vec<Value>, Value),
}

/// An index lookup: which entries, how many, and where to resume. Results come in index
/// order (by the indexed values, then by entity id).
///
/// ```
/// use std::ops::Bound;
/// use entidb::{Query, cbor::Value};
/// let adults = Query::range(Bound::Included(Value::from(18)), Bound::Unbounded).limit(50);
/// let ada = Query::eq("ada@example.com");
/// let in_paris_30s = Query::range_all(
///     Bound::Included(vec![Value::from("Paris"), Value::from(30)]),
///     Bound::Excluded(vec![Value::from("Paris"), Value::from(40)]),
/// );
/// let names_starting_al = Query::prefix("Al");
/// # let _ = (adults, ada, in_paris_30s, names_starting_al);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub(crate) bounds: Bounds,
    pub(crate) limit: usize,
    pub(crate) after: Option<IndexCursor>,
    pub(crate) reverse: bool,
}

impl Query {
    fn new(bounds: Bounds) -> Query {
        Query {
            bounds,
            limit: usize::MAX,
            after: None,
            reverse: false,
        }
    }
    /// Entries whose (first) field equals `value`.
    pub fn eq(value: impl Into<Value>) -> Query {
        Query::new(Bounds::Eq(vec![value.into()]))
    }
    /// Entries whose leading fields equal `values` (all of them for an equality index).
    pub fn eq_all(values: Vec<Value>) -> Query {
        Query::new(Bounds::Eq(values))
    }
    /// Entries whose first field is within the bounds (ordered indexes).
    pub fn range(lower: Bound<Value>, upper: Bound<Value>) -> Query {
        Query::new(Bounds::Range(
            lower.map(|v| vec![v]),
            upper.map(|v| vec![v]),
        ))
    }
    /// Entries between two composite keys; a bound with fewer values than the index has
    /// fields covers every entry that starts with them (ordered indexes).
    pub fn range_all(lower: Bound<Vec<Value>>, upper: Bound<Vec<Value>>) -> Query {
        Query::new(Bounds::Range(lower, upper))
    }
    /// Entries whose first field is a text (or byte string) starting with `prefix` (ordered
    /// indexes).
    pub fn prefix(prefix: impl Into<Value>) -> Query {
        Query::new(Bounds::Prefix(Vec::new(), prefix.into()))
    }
    /// Entries whose leading fields equal `eq` and whose next field starts with `prefix`.
    pub fn prefix_after(eq: Vec<Value>, prefix: impl Into<Value>) -> Query {
        Query::new(Bounds::Prefix(eq, prefix.into()))
    }
    /// Every entry of the index, in order.
    pub fn all() -> Query {
        Query::new(Bounds::Range(Bound::Unbounded, Bound::Unbounded))
    }
    /// Return at most `n` results (a page; the stream ends after them).
    pub fn limit(mut self, n: usize) -> Query {
        self.limit = n;
        self
    }
    /// Resume after this cursor (the `next` of the previous page, in the same direction).
    pub fn after(mut self, cursor: IndexCursor) -> Query {
        self.after = Some(cursor);
        self
    }
    /// Return the results in descending order (largest values first; equal values by
    /// descending entity id): "the 10 oldest" is `Query::all().reverse().limit(10)`.
    pub fn reverse(mut self) -> Query {
        self.reverse = true;
        self
    }

    /// The key range `[from, end)` this query visits in index `def`, and, for equality
    /// indexes, the value encoding every hit must have.
    pub(crate) fn key_range(&self, def: &IndexDef, collection: &str) -> Result<KeyRange> {
        let unsupported = |why: &str| {
            Err(Error::InvalidArgument(format!(
                "index {:?} of {collection:?}: {why}",
                def.name
            )))
        };
        let prefix = keys::index_prefix(def.id);
        let end_of_index = keys::index_end(def.id);
        let after = |p: &[u8]| keyenc::prefix_successor(p).unwrap_or_else(|| end_of_index.clone());
        let with = |vals: &[Value]| {
            let mut k = prefix.clone();
            for v in vals {
                keyenc::encode_key_into(v, &mut k);
            }
            k
        };
        let too_many = |n: usize| n > def.spec.fields.len();
        let (from, end, verify) = match (&self.bounds, def.spec.kind) {
            (Bounds::Eq(vals), IndexKind::Equality) => {
                if vals.len() != def.spec.fields.len() {
                    return unsupported("an equality index answers equality on all its fields");
                }
                let enc = keyenc::encode_key(vals);
                let mut k = prefix.clone();
                k.extend_from_slice(&hash(&enc));
                let e = after(&k);
                (k, e, Some(enc))
            }
            (_, IndexKind::Equality) => {
                return unsupported("an equality index answers equality lookups only");
            }
            (_, IndexKind::Search) => {
                return unsupported("a search index answers `search`, not lookups");
            }
            (Bounds::Eq(vals), IndexKind::Ordered) => {
                if too_many(vals.len()) {
                    return unsupported("more values than the index has fields");
                }
                let k = with(vals);
                let e = after(&k);
                (k, e, None)
            }
            (Bounds::Range(lo, hi), IndexKind::Ordered) => {
                for b in [lo, hi] {
                    if let Bound::Included(v) | Bound::Excluded(v) = b
                        && too_many(v.len())
                    {
                        return unsupported("more values than the index has fields");
                    }
                }
                let from = match lo {
                    Bound::Included(v) => with(v),
                    Bound::Excluded(v) => after(&with(v)),
                    Bound::Unbounded => prefix.clone(),
                };
                let end = match hi {
                    Bound::Included(v) => after(&with(v)),
                    Bound::Excluded(v) => with(v),
                    Bound::Unbounded => end_of_index.clone(),
                };
                (from, end, None)
            }
            (Bounds::Prefix(eq, p), IndexKind::Ordered) => {
                if too_many(eq.len() + 1) {
                    return unsupported("more values than the index has fields");
                }
                let Some(pe) = keyenc::encode_prefix(p) else {
                    return unsupported("a prefix lookup takes a text or byte string");
                };
                let mut k = with(eq);
                k.extend_from_slice(&pe);
                let e = after(&k);
                (k, e, None)
            }
        };
        let exact_prefix = from.clone();
        let (from, end) = match &self.after {
            None => (from, end),
            Some(c) => {
                if !c.0.starts_with(&prefix) {
                    return unsupported("the cursor belongs to another index");
                }
                if self.reverse {
                    // Strictly before the cursor.
                    (from, c.0.clone().min(end))
                } else {
                    // Strictly after the cursor: its smallest extension.
                    let mut resume = c.0.clone();
                    resume.push(0);
                    (resume.max(from), end)
                }
            }
        };
        let exact = match &self.bounds {
            Bounds::Eq(vals) if vals.len() == def.spec.fields.len() => Some(exact_prefix),
            _ => None,
        };
        Ok(KeyRange {
            from,
            end,
            verify,
            exact,
        })
    }
}

/// The keys `[from, end)` a query visits, and for equality indexes the value encoding every
/// hit's document must have.
pub(crate) struct KeyRange {
    pub from: Vec<u8>,
    pub end: Vec<u8>,
    pub verify: Option<Vec<u8>>,
    /// For lookups of one exact key body (equality on every field): that key without the
    /// entity id, for the segment filters.
    pub exact: Option<Vec<u8>>,
}
