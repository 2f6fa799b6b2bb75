//! Full-text search: the analyzer, the posting format, and BM25-ranked queries.
//!
//! A search index is an index of kind [`IndexKind::Search`](super::IndexKind::Search) over
//! one or more text fields. Its entries (under the index's key prefix `02 index-id`):
//!
//! | key                                    | value                                        |
//! |----------------------------------------|----------------------------------------------|
//! | `'P' term(text key encoding) entity-id` | LEB128: document length, count, then positions as deltas |
//! | `'S'`                                  | documents indexed (u64 BE), total tokens (u64 BE) |
//!
//! # Analysis
//!
//! Text is split into words by Unicode word segmentation (UAX #29, `unicode-segmentation`):
//! punctuation, spaces and emoji separate words and are not indexed. Each word is normalized
//! to NFC, then (by default) lower-cased (`char::to_lowercase`, full Unicode) and stripped of
//! diacritics (NFD, combining marks removed: `é` -> `e`, `Zürich` -> `zurich`), then
//! optionally stemmed with the Snowball English stemmer. Ideographic scripts (Chinese,
//! Japanese kanji) are segmented one character per word by UAX #29, so CJK text is indexed as
//! single-character tokens and a multi-character CJK query matches as a phrase of those
//! characters (use [`SearchQuery::phrase`], or `all` for characters in any order). Words
//! longer than [`MAX_TERM_BYTES`] are skipped. Values at the paths may be text or arrays of
//! text; fields are indexed one after another with a gap of 100 positions, so phrases never
//! span two fields.
//!
//! # Ranking
//!
//! BM25 with `k1 = 1.2`, `b = 0.75`: `idf = ln(1 + (N - df + 0.5) / (df + 0.5))`, summed over
//! the query's terms (for a prefix, over every term it expands to that the document has).
//! Ties break by entity id. `N` and the average length come from the `'S'` entry, which the
//! index keeps exact in every transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use super::IndexDef;
use super::keyenc;
use super::lookup::MergedRange;
use crate::cbor::Value;
use crate::document::Document;
use crate::error::{Error, Result};
use crate::ids::EntityId;
use crate::keys;
use crate::read::ReadCtx;
use crate::varint;

/// Words longer than this many bytes (after normalization) are not indexed.
pub const MAX_TERM_BYTES: usize = 128;
/// Position gap between the fields of one document.
const FIELD_GAP: u32 = 100;
const K1: f64 = 1.2;
const B: f64 = 0.75;

pub(crate) const POSTING: u8 = b'P';
type KeyValue = (Vec<u8>, Vec<u8>);
pub(crate) const STATS: u8 = b'S';

/// How a search index analyzes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TextOptions {
    /// Lower-case words (default on).
    pub fold_case: bool,
    /// Strip diacritics (default on).
    pub fold_diacritics: bool,
    /// Stem English words with Snowball (default off).
    pub stem_english: bool,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            fold_case: true,
            fold_diacritics: true,
            stem_english: false,
        }
    }
}

/// The analyzer: text to normalized terms.
pub(crate) struct Analyzer {
    opts: TextOptions,
    stemmer: Option<rust_stemmers::Stemmer>,
}

impl Analyzer {
    pub(crate) fn new(opts: TextOptions) -> Analyzer {
        Analyzer {
            opts,
            stemmer: opts
                .stem_english
                .then(|| rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English)),
        }
    }

    /// Normalize one word (no stemming).
    fn fold(&self, word: &str) -> String {
        if word.is_ascii() {
            // ASCII is already NFC and has no diacritics.
            return if self.opts.fold_case {
                word.to_ascii_lowercase()
            } else {
                word.to_owned()
            };
        }
        let mut w: String = word.nfc().collect();
        if self.opts.fold_case {
            w = w.to_lowercase();
        }
        if self.opts.fold_diacritics {
            w = w
                .nfd()
                .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
                .nfc()
                .collect();
        }
        w
    }

    /// A term as the index stores it.
    pub(crate) fn term(&self, word: &str) -> String {
        let w = self.fold(word);
        match &self.stemmer {
            Some(s) => s.stem(&w).into_owned(),
            None => w,
        }
    }

    /// The terms of `text` with positions starting at `pos`; returns the next position.
    pub(crate) fn analyze(&self, text: &str, mut pos: u32, out: &mut Vec<(u32, String)>) -> u32 {
        for word in text.unicode_words() {
            let t = self.term(word);
            if !t.is_empty() && t.len() <= MAX_TERM_BYTES {
                out.push((pos, t));
            }
            pos = pos.saturating_add(1);
        }
        pos
    }

    /// The words of a query: terms, and the last word folded but unstemmed (for prefix).
    fn query_words(&self, text: &str) -> (Vec<(u32, String)>, Option<String>) {
        let mut terms = Vec::new();
        self.analyze(text, 0, &mut terms);
        let last = text.unicode_words().next_back().map(|w| self.fold(w));
        (terms, last)
    }
}

/// The token list of a document for a search index: (position, term).
pub(crate) fn document_terms(def: &IndexDef, doc: &Value) -> Vec<(u32, String)> {
    let analyzer = Analyzer::new(def.spec.text);
    let mut out = Vec::new();
    let mut pos = 0u32;
    for path in &def.spec.fields {
        let start = pos;
        match doc.get_path(path) {
            Some(Value::Text(t)) => pos = analyzer.analyze(t, pos, &mut out),
            Some(Value::Array(items)) => {
                for item in items {
                    if let Value::Text(t) = item {
                        pos = analyzer.analyze(t, pos, &mut out);
                        pos = pos.saturating_add(1);
                    }
                }
            }
            _ => {}
        }
        if pos != start {
            pos = pos.saturating_add(FIELD_GAP);
        }
    }
    out
}

/// The key of term `term`'s posting for `id`.
pub(crate) fn posting_key(index: u32, term: &str, id: &EntityId) -> Vec<u8> {
    let mut k = keys::index_prefix(index);
    k.push(POSTING);
    keyenc::encode_key_into(&Value::Text(term.to_owned()), &mut k);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The key of the index's statistics entry.
pub(crate) fn stats_key(index: u32) -> Vec<u8> {
    let mut k = keys::index_prefix(index);
    k.push(STATS);
    k
}

pub(crate) fn encode_stats(docs: u64, tokens: u64) -> Vec<u8> {
    let mut v = docs.to_be_bytes().to_vec();
    v.extend_from_slice(&tokens.to_be_bytes());
    v
}

pub(crate) fn decode_stats(v: &[u8]) -> Option<(u64, u64)> {
    let docs = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let tokens = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((docs, tokens))
}

/// A posting value: document length, then the term's positions.
pub(crate) fn encode_posting(doc_len: u32, positions: &[u32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + positions.len());
    varint::put(&mut v, u64::from(doc_len));
    varint::put(&mut v, positions.len() as u64);
    let mut last = 0u32;
    for &p in positions {
        varint::put(&mut v, u64::from(p - last));
        last = p;
    }
    v
}

#[derive(Debug, Clone)]
struct Posting {
    doc_len: u32,
    positions: Vec<u32>,
}

fn decode_posting(v: &[u8]) -> Option<Posting> {
    let mut at = 0;
    let doc_len = u32::try_from(varint::get(v, &mut at)?).ok()?;
    let n = varint::get(v, &mut at)?;
    if n > v.len() as u64 {
        return None;
    }
    let mut positions = Vec::with_capacity(n as usize);
    let mut p = 0u32;
    for _ in 0..n {
        p = p.checked_add(u32::try_from(varint::get(v, &mut at)?).ok()?)?;
        positions.push(p);
    }
    (at == v.len()).then_some(Posting { doc_len, positions })
}

/// Every entry (key, value) a document has in a search index, and its token count.
pub(crate) fn document_entries(def: &IndexDef, doc: &Value, id: &EntityId) -> (Vec<KeyValue>, u32) {
    let terms = document_terms(def, doc);
    let len = u32::try_from(terms.len()).unwrap_or(u32::MAX);
    let mut by_term: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (pos, t) in &terms {
        by_term.entry(t.as_str()).or_default().push(*pos);
    }
    let entries = by_term
        .into_iter()
        .map(|(t, ps)| (posting_key(def.id, t, id), encode_posting(len, &ps)))
        .collect();
    (entries, len)
}

/// How the words of a query combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SearchMode {
    /// Documents that have every word.
    All,
    /// Documents that have at least one word.
    Any,
    /// Documents that have the words next to each other, in order.
    Phrase,
}

/// A full-text query: words, how they combine, and which page of the ranking.
///
/// ```
/// use entidb::SearchQuery;
/// let q = SearchQuery::all("distributed systems").limit(10);
/// let typed_so_far = SearchQuery::all("distributed sys").prefix_last();
/// let exact = SearchQuery::phrase("log-structured merge tree");
/// # let _ = (q, typed_so_far, exact);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub(crate) text: String,
    pub(crate) mode: SearchMode,
    pub(crate) prefix: bool,
    pub(crate) limit: usize,
    pub(crate) offset: usize,
}

impl SearchQuery {
    fn new(text: impl Into<String>, mode: SearchMode) -> SearchQuery {
        SearchQuery {
            text: text.into(),
            mode,
            prefix: false,
            limit: 20,
            offset: 0,
        }
    }
    /// Documents with all the words.
    pub fn all(text: impl Into<String>) -> SearchQuery {
        SearchQuery::new(text, SearchMode::All)
    }
    /// Documents with any of the words.
    pub fn any(text: impl Into<String>) -> SearchQuery {
        SearchQuery::new(text, SearchMode::Any)
    }
    /// Documents with the words as a phrase.
    pub fn phrase(text: impl Into<String>) -> SearchQuery {
        SearchQuery::new(text, SearchMode::Phrase)
    }
    /// Treat the last word as a prefix (search as you type).
    pub fn prefix_last(mut self) -> SearchQuery {
        self.prefix = true;
        self
    }
    /// At most `n` hits (default 20).
    pub fn limit(mut self, n: usize) -> SearchQuery {
        self.limit = n;
        self
    }
    /// Skip the first `n` hits of the ranking.
    pub fn offset(mut self, n: usize) -> SearchQuery {
        self.offset = n;
        self
    }
    /// The mode.
    pub fn mode(&self) -> SearchMode {
        self.mode
    }
}

/// One search result.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SearchHit {
    /// The BM25 score (higher is better).
    pub score: f64,
    /// The document.
    pub document: Document,
}

/// One word of a query: the terms it stands for (one, or every expansion of a prefix), each
/// with its postings.
struct Word {
    offset: u32,
    terms: Vec<BTreeMap<EntityId, Posting>>,
}

impl Word {
    fn docs(&self) -> BTreeSet<EntityId> {
        self.terms.iter().flat_map(|t| t.keys().copied()).collect()
    }
    fn positions(&self, id: &EntityId) -> impl Iterator<Item = u32> + '_ {
        let id = *id;
        self.terms
            .iter()
            .filter_map(move |t| t.get(&id))
            .flat_map(|p| p.positions.iter().copied())
    }
}

async fn read_range<'a>(
    ctx: &ReadCtx<'a>,
    from: &[u8],
    end: &[u8],
    probe: Option<&[u8]>,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut it = MergedRange::with_probe(ctx, from, end, probe);
    while let Some((k, _, v)) = it.next().await? {
        f(&k, &v)?;
    }
    Ok(())
}

fn damaged(def: &IndexDef, collection: &str) -> Error {
    Error::corruption(
        "index",
        0,
        format!(
            "search index {:?} of {collection:?}: malformed entry; run verify_indexes and rebuild the index",
            def.name
        ),
    )
}

/// Run a query against search index `def` of collection `coll` in `ctx`.
pub(crate) async fn search(
    ctx: &ReadCtx<'_>,
    coll: u32,
    collection: &str,
    def: &Arc<IndexDef>,
    q: &SearchQuery,
) -> Result<Vec<SearchHit>> {
    ctx.check_open()?;
    let analyzer = Analyzer::new(def.spec.text);
    let (mut terms, last) = analyzer.query_words(&q.text);
    if q.prefix && !terms.is_empty() {
        terms.pop();
    }
    let prefix_word = if q.prefix {
        last.filter(|l| !l.is_empty())
    } else {
        None
    };
    if terms.is_empty() && prefix_word.is_none() {
        return Ok(Vec::new());
    }
    // Collection statistics.
    let sk = stats_key(def.id);
    let mut stats = (0u64, 0u64);
    read_range(
        ctx,
        &sk,
        &keyenc::prefix_successor(&sk).unwrap_or_default(),
        None,
        |_, v| {
            stats = decode_stats(v).ok_or_else(|| damaged(def, collection))?;
            Ok(())
        },
    )
    .await?;
    let (n_docs, n_tokens) = stats;
    let avg_len = if n_docs == 0 {
        1.0
    } else {
        n_tokens as f64 / n_docs as f64
    };

    let mut posting_prefix = keys::index_prefix(def.id);
    posting_prefix.push(POSTING);
    let read_postings = |from: Vec<u8>, end: Vec<u8>, exact: bool| async move {
        // term key -> postings
        let mut by_term: BTreeMap<Vec<u8>, BTreeMap<EntityId, Posting>> = BTreeMap::new();
        let probe = exact.then_some(&from[..]);
        read_range(ctx, &from, &end, probe, |k, v| {
            let id = keys::index_entry_entity(k).ok_or_else(|| damaged(def, collection))?;
            let p = decode_posting(v).ok_or_else(|| damaged(def, collection))?;
            by_term
                .entry(k[..k.len() - 16].to_vec())
                .or_default()
                .insert(id, p);
            Ok(())
        })
        .await?;
        Ok::<_, Error>(by_term)
    };
    let mut words: Vec<Word> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (pos, t) in &terms {
        if q.mode != SearchMode::Phrase && !seen.insert(t.clone()) {
            continue;
        }
        let mut from = posting_prefix.clone();
        keyenc::encode_key_into(&Value::Text(t.clone()), &mut from);
        let end = keyenc::prefix_successor(&from).unwrap_or_default();
        let postings = read_postings(from, end, true).await?;
        words.push(Word {
            offset: *pos,
            terms: postings.into_values().collect(),
        });
    }
    if let Some(p) = prefix_word {
        let mut from = posting_prefix.clone();
        from.extend_from_slice(&keyenc::encode_prefix(&Value::Text(p)).unwrap_or_default());
        let end = keyenc::prefix_successor(&from).unwrap_or_default();
        let postings = read_postings(from, end, false).await?;
        let offset = terms.last().map_or(0, |(p, _)| p + 1);
        words.push(Word {
            offset,
            terms: postings.into_values().collect(),
        });
    }
    ctx.inner
        .counters
        .index_lookups
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    // Candidates.
    let mut candidates: BTreeSet<EntityId> = match q.mode {
        SearchMode::Any => words.iter().flat_map(|w| w.docs()).collect(),
        SearchMode::All | SearchMode::Phrase => {
            let mut it = words.iter();
            let first = it.next().map(Word::docs).unwrap_or_default();
            it.fold(first, |acc, w| {
                let d = w.docs();
                acc.intersection(&d).copied().collect()
            })
        }
    };
    if q.mode == SearchMode::Phrase && words.len() > 1 {
        let base = words[0].offset;
        candidates.retain(|id| {
            words[0].positions(id).any(|start| {
                words[1..].iter().all(|w| {
                    let want = start + (w.offset - base);
                    w.positions(id).any(|p| p == want)
                })
            })
        });
    }

    // BM25.
    let n = n_docs as f64;
    let mut scored: Vec<(f64, EntityId)> = candidates
        .into_iter()
        .map(|id| {
            let mut score = 0.0;
            for w in &words {
                for t in &w.terms {
                    if let Some(p) = t.get(&id) {
                        let df = t.len() as f64;
                        let idf = (1.0 + (n - df + 0.5).max(0.0) / (df + 0.5)).ln();
                        let tf = p.positions.len() as f64;
                        let dl = f64::from(p.doc_len);
                        score += idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * dl / avg_len));
                    }
                }
            }
            (score, id)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut hits = Vec::new();
    for (score, id) in scored.into_iter().skip(q.offset).take(q.limit) {
        let document = ctx
            .get(Some(coll), id)
            .await?
            .ok_or_else(|| damaged(def, collection))?;
        hits.push(SearchHit { score, document });
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzer_folds_case_diacritics_and_segments_words() {
        let a = Analyzer::new(TextOptions::default());
        let mut out = Vec::new();
        a.analyze(
            "Crème Brûlée, ZÜRICH! 🚀 naïve-café 東京タワー",
            0,
            &mut out,
        );
        let terms: Vec<&str> = out.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            terms,
            [
                "creme",
                "brulee",
                "zurich",
                "naive",
                "cafe",
                "東",
                "京",
                "タワー"
            ]
        );
        let s = Analyzer::new(TextOptions {
            stem_english: true,
            ..TextOptions::default()
        });
        assert_eq!(s.term("Running"), "run");
        assert_eq!(s.term("systems"), "system");
        let keep = Analyzer::new(TextOptions {
            fold_case: false,
            fold_diacritics: false,
            stem_english: false,
        });
        assert_eq!(keep.term("Crème"), "Crème");
        // Composed and decomposed input are one term.
        assert_eq!(keep.term("Cre\u{300}me"), "Crème");
    }

    #[test]
    fn postings_round_trip_and_reject_damage() {
        let v = encode_posting(17, &[0, 3, 300, 70_000]);
        let p = decode_posting(&v).expect("valid");
        assert_eq!((p.doc_len, p.positions), (17, vec![0, 3, 300, 70_000]));
        assert!(decode_posting(&v[..v.len() - 1]).is_none());
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode_posting(&longer).is_none());
        assert_eq!(decode_stats(&encode_stats(3, 99)), Some((3, 99)));
    }
}
