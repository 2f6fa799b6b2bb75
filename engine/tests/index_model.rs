//! Model test of secondary indexes: random puts, deletes, index creates and drops, crashes,
//! reopens, checkpoints and compactions on the `Sim` backend; after every step, lookups
//! through every index (equality, ranges, prefixes, paged with cursors, and inside
//! transactions with pending writes) must return exactly what a scan of a `BTreeMap` model
//! gives, in the same order, and `verify_indexes` must find nothing wrong.
//!
//! `INDEX_SIM_SEEDS=N` runs seeds 0..N (default 60); `INDEX_SIM_SEED=S` replays one seed.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use entidb::cbor::Value;
use entidb::index::keyenc::value_order;
use entidb::io::{SimBackend, SimConfig};
use entidb::{Database, EntityId, Error, IndexSpec, Options, Query};
use futures_executor::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const COLL: &str = "items";

type Docs = BTreeMap<EntityId, Value>;
type Indexes = BTreeMap<String, IndexSpec>;

/// The indexes the test may declare.
fn catalog() -> Vec<(&'static str, IndexSpec)> {
    vec![
        ("by_k", IndexSpec::ordered(["k"])),
        ("by_k_eq", IndexSpec::equality(["k"])),
        ("by_gk", IndexSpec::ordered(["g", "k"])),
        ("by_u", IndexSpec::ordered(["u"]).unique()),
        ("by_u_eq", IndexSpec::equality(["u"]).unique()),
        ("by_city", IndexSpec::ordered(["n.city"])),
        ("by_text", IndexSpec::search(["t"])),
    ]
}

fn random_k(rng: &mut SmallRng) -> Option<Value> {
    Some(match rng.random_range(0..14) {
        0 => return None,
        1 => Value::Null,
        2..=4 => Value::from(rng.random_range(-3i64..4)),
        5 => Value::Float([-0.0, 0.5, 1.0, 2.5, -1.5][rng.random_range(0..5)]),
        6 => Value::Float([f64::INFINITY, f64::NAN, f64::NEG_INFINITY][rng.random_range(0..3)]),
        7 => Value::from(u64::MAX - rng.random_range(0..2)),
        8 => Value::from(i64::MIN + rng.random_range(0..2)),
        9 => Value::Bool(rng.random_bool(0.5)),
        10 => Value::Bytes(vec![0, 0xFF][..rng.random_range(0..3)].to_vec()),
        _ => Value::from(["", "a", "ab", "abc", "b", "é", "a\u{0}"][rng.random_range(0..7)]),
    })
}

fn random_doc(rng: &mut SmallRng, serial: u64) -> Value {
    let mut m: Vec<(Value, Value)> = vec![(Value::from("serial"), Value::from(serial))];
    if let Some(k) = random_k(rng) {
        m.push((Value::from("k"), k));
    }
    if rng.random_bool(0.8) {
        m.push((Value::from("g"), Value::from(rng.random_range(0..3u64))));
    }
    match rng.random_range(0..10) {
        0 => {}
        1 => m.push((Value::from("u"), Value::Null)),
        _ => m.push((Value::from("u"), Value::from(rng.random_range(0..40u64)))),
    }
    if rng.random_bool(0.7) {
        let words: Vec<&str> = (0..rng.random_range(0..5))
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        m.push((Value::from("t"), Value::from(words.join(" "))));
    }
    match rng.random_range(0..4) {
        0 => {}
        1 => m.push((Value::from("n"), Value::from("not a map"))),
        _ => {
            let city = ["Paris", "Pau", "Oslo", "Zürich"][rng.random_range(0..4)];
            m.push((Value::from("n"), Value::map([("city", city)])));
        }
    }
    Value::Map(m)
}

/// Words of the "t" field; the search index folds case and diacritics.
const WORDS: [&str; 6] = ["alpha", "Beta", "gamma", "DELTA", "épsilon", "Epsilon"];

fn fold(w: &str) -> String {
    w.to_lowercase().replace('é', "e")
}

/// The documents a one-word search must find (in id order).
fn search_expected(docs: &Docs, word: &str) -> Vec<EntityId> {
    docs.iter()
        .filter(|(_, d)| {
            d.get("t")
                .and_then(Value::as_text)
                .is_some_and(|t| t.split(' ').any(|w| fold(w) == fold(word)))
        })
        .map(|(id, _)| *id)
        .collect()
}

fn values<'a>(spec: &IndexSpec, doc: &'a Value) -> Option<Vec<&'a Value>> {
    spec.fields().iter().map(|p| doc.get_path(p)).collect()
}

fn lex(a: &[&Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match value_order(x, y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    Ordering::Equal
}

/// What a scan of the model says a query returns, in index order.
fn expected(docs: &Docs, spec: &IndexSpec, q: &ModelQuery) -> Vec<EntityId> {
    let mut hits: Vec<(Vec<&Value>, EntityId)> = docs
        .iter()
        .filter_map(|(id, d)| values(spec, d).map(|v| (v, *id)))
        .filter(|(v, _)| match q {
            ModelQuery::Eq(q) => lex(v, q) == Ordering::Equal,
            ModelQuery::Range(lo, hi) => {
                let above = match lo {
                    Bound::Included(l) => lex(v, l) != Ordering::Less,
                    Bound::Excluded(l) => lex(v, l) == Ordering::Greater,
                    Bound::Unbounded => true,
                };
                let below = match hi {
                    Bound::Included(h) => lex(v, h) != Ordering::Greater,
                    Bound::Excluded(h) => lex(v, h) == Ordering::Less,
                    Bound::Unbounded => true,
                };
                above && below
            }
            ModelQuery::Prefix(p) => match (v[0], p) {
                (Value::Text(t), Value::Text(p)) => t.starts_with(p.as_str()),
                (Value::Bytes(t), Value::Bytes(p)) => t.starts_with(p),
                _ => false,
            },
        })
        .collect();
    hits.sort_by(|(va, ia), (vb, ib)| {
        for (x, y) in va.iter().zip(vb) {
            match value_order(x, y) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        ia.cmp(ib)
    });
    hits.into_iter().map(|(_, id)| id).collect()
}

#[derive(Debug, Clone)]
enum ModelQuery {
    Eq(Vec<Value>),
    Range(Bound<Vec<Value>>, Bound<Vec<Value>>),
    Prefix(Value),
}

impl ModelQuery {
    fn to_query(&self) -> Query {
        match self {
            ModelQuery::Eq(v) => Query::eq_all(v.clone()),
            ModelQuery::Range(lo, hi) => Query::range_all(lo.clone(), hi.clone()),
            ModelQuery::Prefix(p) => Query::prefix(p.clone()),
        }
    }
}

fn random_query(rng: &mut SmallRng, spec: &IndexSpec) -> ModelQuery {
    let fields = spec.fields().len();
    let mut val = |rng: &mut SmallRng, f: usize| -> Value {
        match spec.fields()[f].as_str() {
            "u" => Value::from(rng.random_range(0..40u64)),
            "g" => Value::from(rng.random_range(0..3u64)),
            "n.city" => {
                Value::from(["Paris", "Pau", "Oslo", "Zürich", "P"][rng.random_range(0..5)])
            }
            _ => random_k(rng).unwrap_or(Value::Null),
        }
    };
    if spec.kind() == entidb::IndexKind::Equality {
        return ModelQuery::Eq((0..fields).map(|f| val(rng, f)).collect());
    }
    let bound = |rng: &mut SmallRng, val: &mut dyn FnMut(&mut SmallRng, usize) -> Value| {
        let n = rng.random_range(1..=fields);
        let v: Vec<Value> = (0..n).map(|f| val(rng, f)).collect();
        match rng.random_range(0..3) {
            0 => Bound::Unbounded,
            1 => Bound::Included(v),
            _ => Bound::Excluded(v),
        }
    };
    match rng.random_range(0..3) {
        0 => {
            let n = rng.random_range(1..=fields);
            ModelQuery::Eq((0..n).map(|f| val(rng, f)).collect())
        }
        1 => {
            let lo = bound(rng, &mut val);
            let hi = bound(rng, &mut val);
            ModelQuery::Range(lo, hi)
        }
        _ if fields == 1 => ModelQuery::Prefix(match rng.random_range(0..4) {
            0 => Value::Bytes(vec![0]),
            1 => Value::from(""),
            2 => Value::from("a"),
            _ => Value::from("P"),
        }),
        _ => ModelQuery::Eq(vec![val(rng, 0)]),
    }
}

fn fail(seed: u64, msg: String) -> ! {
    panic!(
        "{msg}\nreplay: INDEX_SIM_SEED={seed} cargo test -p entidb --test index_model -- --nocapture"
    )
}

/// Does this state violate a unique index?
fn violates(docs: &Docs, indexes: &Indexes) -> bool {
    indexes.values().filter(|s| s.is_unique()).any(|spec| {
        let mut vals: Vec<Vec<&Value>> = docs
            .values()
            .filter_map(|d| values(spec, d))
            .filter(|v| {
                !v.iter()
                    .any(|x| matches!(x, Value::Null | Value::Undefined))
            })
            .collect();
        vals.sort_by(|a, b| {
            a.iter()
                .zip(b)
                .map(|(x, y)| value_order(x, y))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        vals.windows(2).any(|w| {
            w[0].iter()
                .zip(&w[1])
                .all(|(x, y)| value_order(x, y) == Ordering::Equal)
        })
    })
}

/// Check every index of the model against lookups on `db`, with random queries.
async fn check_lookups(
    seed: u64,
    sim: &SimBackend,
    rng: &mut SmallRng,
    db: &Database,
    docs: &Docs,
    indexes: &Indexes,
    what: &str,
) {
    let snap = db.snapshot();
    let mut names: Vec<String> = snap
        .collection(COLL)
        .indexes()
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    let want: Vec<String> = indexes.keys().cloned().collect();
    if names != want {
        fail(seed, format!("{what}: indexes {names:?}, model {want:?}"));
    }
    for (name, spec) in indexes {
        if spec.kind() == entidb::IndexKind::Search {
            let word = WORDS[rng.random_range(0..WORDS.len())];
            let q = entidb::SearchQuery::all(word).limit(usize::MAX);
            let mut got: Vec<EntityId> = match db.collection(COLL).search(name, &q).await {
                Ok(h) => h.iter().map(|h| h.document.id()).collect(),
                Err(_) if sim.is_crashed() => return,
                Err(e) => fail(seed, format!("{what}: search {word}: {e}")),
            };
            got.sort();
            let expect = search_expected(docs, word);
            if got != expect {
                fail(
                    seed,
                    format!("{what}: search {word}\n got      {got:?}\n expected {expect:?}"),
                );
            }
            continue;
        }
        for _ in 0..4 {
            let q = random_query(rng, spec);
            let reverse = rng.random_bool(0.4);
            let mut expect = expected(docs, spec, &q);
            if reverse {
                expect.reverse();
            }
            let base = || {
                let b = q.to_query();
                if reverse { b.reverse() } else { b }
            };
            let page_size = rng.random_range(1..6);
            let mut got = Vec::new();
            let mut query = base().limit(page_size);
            loop {
                let page = match db.collection(COLL).lookup(name, &query).await {
                    Ok(p) => p,
                    Err(_) if sim.is_crashed() => return,
                    Err(e) => fail(seed, format!("{what}: lookup {name} {q:?}: {e}")),
                };
                got.extend(page.items.iter().map(|d| d.id()));
                match page.next {
                    Some(c) => query = base().limit(page_size).after(c),
                    None => break,
                }
                if got.len() > docs.len() {
                    fail(seed, format!("{what}: lookup {name} {q:?} does not end"));
                }
            }
            if got != expect {
                fail(
                    seed,
                    format!(
                        "{what}: lookup {name} {q:?} reverse {reverse}\n got      {got:?}\n expected {expect:?}"
                    ),
                );
            }
        }
    }
    match db.verify_indexes().await {
        Ok(r) if r.is_ok() => {}
        Ok(r) => fail(seed, format!("{what}: verify_indexes: {r}")),
        Err(_) if sim.is_crashed() => {}
        Err(e) => fail(seed, format!("{what}: verify_indexes failed: {e}")),
    }
}

#[derive(Debug, Clone)]
enum Event {
    Write(Vec<(EntityId, Option<Value>)>),
    Create(String, IndexSpec),
    Drop(String),
}

fn apply(docs: &mut Docs, indexes: &mut Indexes, e: &Event) {
    match e {
        Event::Write(ops) => {
            for (id, v) in ops {
                match v {
                    Some(v) => docs.insert(*id, v.clone()),
                    None => docs.remove(id),
                };
            }
        }
        Event::Create(n, s) => {
            indexes.insert(n.clone(), s.clone());
        }
        Event::Drop(n) => {
            indexes.remove(n);
        }
    }
}

fn run_seed(seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let sim = SimBackend::new(seed, SimConfig::default());
    let backend: Arc<dyn entidb::io::Backend> = Arc::new(sim.clone());
    let opts = Options::default()
        .memtable_bytes(rng.random_range(2_000..30_000))
        .block_size(rng.random_range(256..4096))
        .compaction_trigger(rng.random_range(2..5))
        // A third of the seeds leave frozen memtables unflushed until a checkpoint, so that
        // lookups merge (and the prefix sets skip) several memtables holding puts and
        // tombstones of the same index entries.
        .auto_maintenance(rng.random_range(0..3) != 0);
    // Acknowledged events (one per sequence), and one that failed in a crash.
    let mut history: Vec<Event> = Vec::new();
    let mut serial = 0u64;
    let mut refused = 0u64;
    block_on(async {
        for epoch in 0..4 {
            sim.set_faults(SimConfig::default());
            let db = match Database::open_with(backend.clone(), opts.clone()).await {
                Ok(db) => db,
                Err(e) => fail(seed, format!("epoch {epoch}: reopen failed: {e}")),
            };
            let n = db.last_sequence() as usize;
            if n < history.len().saturating_sub(1) || n > history.len() {
                fail(
                    seed,
                    format!("epoch {epoch}: recovered {n} events of {}", history.len()),
                );
            }
            history.truncate(n);
            let (mut docs, mut indexes) = (Docs::new(), Indexes::new());
            for e in &history {
                apply(&mut docs, &mut indexes, e);
            }
            check_lookups(
                seed,
                &sim,
                &mut rng,
                &db,
                &docs,
                &indexes,
                &format!("epoch {epoch} after recovery"),
            )
            .await;
            let ids: Vec<EntityId> = (0..24).map(|i| EntityId::from_bytes([i; 16])).collect();
            if epoch < 3 {
                sim.set_faults(SimConfig {
                    crash_after_ops: Some(rng.random_range(30..1500)),
                    ..SimConfig::default()
                });
            }
            for step in 0..rng.random_range(20..80) {
                let what = format!("epoch {epoch} step {step}");
                let r = rng.random_range(0..100);
                let event = if r < 12 {
                    let (name, spec) = catalog().swap_remove(rng.random_range(0..7));
                    if indexes.contains_key(name) {
                        if rng.random_bool(0.6) {
                            continue;
                        }
                        Event::Drop(name.to_owned())
                    } else {
                        Event::Create(name.to_owned(), spec)
                    }
                } else if r < 11 {
                    if db.compact().await.is_err() {
                        break;
                    }
                    continue;
                } else if r < 13 {
                    if db.checkpoint().await.is_err() {
                        break;
                    }
                    continue;
                } else {
                    let mut ops = Vec::new();
                    for _ in 0..rng.random_range(1..6) {
                        let id = ids[rng.random_range(0..ids.len())];
                        if rng.random_bool(0.25) {
                            ops.push((id, None));
                        } else {
                            serial += 1;
                            ops.push((id, Some(random_doc(&mut rng, serial))));
                        }
                    }
                    Event::Write(ops)
                };
                let (mut d2, mut i2) = (docs.clone(), indexes.clone());
                apply(&mut d2, &mut i2, &event);
                let must_fail = violates(&d2, &i2);
                let before = db.last_sequence();
                let result: Result<u64, Error> = async {
                    let mut tx = db.begin().await?;
                    match &event {
                        Event::Write(ops) => {
                            for (id, v) in ops {
                                let mut c = tx.collection(COLL);
                                match v {
                                    Some(v) => c.put_value(*id, v)?,
                                    None => {
                                        c.delete(*id).await?;
                                    }
                                }
                            }
                            // Lookups inside the transaction see its pending writes.
                            let lookups: Indexes = i2
                                .iter()
                                .filter(|(_, s)| s.kind() != entidb::IndexKind::Search)
                                .map(|(n, s)| (n.clone(), s.clone()))
                                .collect();
                            if !lookups.is_empty() && rng.random_bool(0.3) {
                                let (name, spec) = lookups.iter().nth(rng.random_range(0..lookups.len())).expect("index");
                                let q = random_query(&mut rng, spec);
                                let reverse = rng.random_bool(0.4);
                                let mut expect = expected(&d2, spec, &q);
                                let mut query = q.to_query();
                                if reverse {
                                    expect.reverse();
                                    query = query.reverse();
                                }
                                let got: Vec<EntityId> = tx
                                    .collection(COLL)
                                    .lookup(name, &query)
                                    .await?
                                    .collect()
                                    .await?
                                    .iter()
                                    .map(|d| d.id())
                                    .collect();
                                if got != expect {
                                    fail(seed, format!("{what}: in-transaction lookup {name} {q:?}\n got      {got:?}\n expected {expect:?}"));
                                }
                            }
                        }
                        Event::Create(name, spec) => {
                            tx.collection(COLL).create_index(name, spec.clone()).await?;
                        }
                        Event::Drop(name) => {
                            tx.collection(COLL).drop_index(name)?;
                        }
                    }
                    tx.commit().await
                }
                .await;
                match result {
                    Ok(seq) => {
                        if must_fail {
                            fail(
                                seed,
                                format!("{what}: {event:?} committed despite a unique violation"),
                            );
                        }
                        if seq == before {
                            continue; // nothing to write
                        }
                        history.push(event);
                        docs = d2;
                        indexes = i2;
                    }
                    Err(Error::UniqueViolation { .. }) if must_fail => {
                        refused += 1;
                        if db.last_sequence() != before {
                            fail(seed, format!("{what}: a refused commit moved the sequence"));
                        }
                        continue;
                    }
                    Err(e) if sim.is_crashed() => {
                        let _ = e;
                        history.push(event); // maybe appended: recovery decides
                        break;
                    }
                    Err(e) => fail(seed, format!("{what}: {event:?} failed: {e}")),
                }
                if rng.random_bool(0.3) {
                    if sim.is_crashed() {
                        break;
                    }
                    check_lookups(seed, &sim, &mut rng, &db, &docs, &indexes, &what).await;
                }
            }
            eprintln!(
                "seed {seed} epoch {epoch}: {} events, {} docs, indexes {:?}, crashed {}, {refused} refused",
                history.len(),
                docs.len(),
                indexes.keys().collect::<Vec<_>>(),
                sim.is_crashed()
            );
            drop(db);
            sim.crash_now();
            sim.restart();
        }
    });
}

#[test]
fn indexes_agree_with_a_model_through_crashes() {
    if let Ok(s) = std::env::var("INDEX_SIM_SEED") {
        let seed: u64 = s.parse().expect("INDEX_SIM_SEED is a number");
        run_seed(seed);
        return;
    }
    let n: u64 = std::env::var("INDEX_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..n {
        run_seed(seed);
    }
}
