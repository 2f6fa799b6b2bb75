//! Full-text search through the public API: multilingual text, query modes, ranking, and
//! maintenance in transactions.

use entidb::cbor::Value;
use entidb::{Database, EntityId, Error, IndexSpec, Query, SearchHit, SearchQuery};

fn post(title: &str, body: &str) -> Value {
    Value::map([("title", title), ("body", body)])
}

fn ids(hits: &[SearchHit]) -> Vec<EntityId> {
    hits.iter().map(|h| h.document.id()).collect()
}

async fn corpus() -> (Database, Vec<EntityId>) {
    let db = Database::memory().await.expect("open");
    let posts = db.collection("posts");
    posts
        .create_index("text", IndexSpec::search(["title", "body"]))
        .await
        .expect("index");
    let mut out = Vec::new();
    for (t, b) in [
        (
            "Crème brûlée",
            "A French dessert: crème, sugar, vanilla. Très bon!",
        ),
        (
            "Zürich travel notes",
            "Grüezi! The lake in ZÜRICH is calm 🚣 in the morning.",
        ),
        ("東京タワー", "東京の夜景はきれいです。東京 is big."),
        (
            "Distributed systems",
            "Consensus, replication and distributed transactions.",
        ),
        (
            "Systems of equations",
            "Linear systems; a distributed load on a beam.",
        ),
        ("Emoji 🎉 party", "Party time 🎉🎉 with cake 🍰"),
    ] {
        out.push(posts.insert(&post(t, b)).await.expect("insert"));
    }
    (db, out)
}

#[test]
fn multilingual_text_is_folded_and_segmented() {
    futures_executor::block_on(async {
        let (db, p) = corpus().await;
        let posts = db.collection("posts");
        let s = |q: SearchQuery| {
            let posts = posts.clone();
            async move { ids(&posts.search("text", &q).await.expect("search")) }
        };
        // Accents and case fold both ways.
        assert_eq!(s(SearchQuery::all("creme brulee")).await, [p[0]]);
        assert_eq!(s(SearchQuery::all("CRÈME")).await, [p[0]]);
        assert_eq!(s(SearchQuery::all("zurich grüezi")).await, [p[1]]);
        assert_eq!(s(SearchQuery::all("tres")).await, [p[0]]);
        // CJK: one token per ideograph, so a name matches as a phrase of its characters;
        // katakana runs stay one word.
        assert_eq!(s(SearchQuery::phrase("東京")).await, [p[2]]);
        assert_eq!(s(SearchQuery::all("タワー")).await, [p[2]]);
        assert!(s(SearchQuery::phrase("京東")).await.is_empty());
        // Emoji separate words and are not terms themselves.
        assert_eq!(s(SearchQuery::all("party cake")).await, [p[5]]);
        assert!(s(SearchQuery::all("🎉")).await.is_empty());
        assert_eq!(s(SearchQuery::all("calm morning")).await, [p[1]]);
    });
}

#[test]
fn modes_prefix_limit_and_offset() {
    futures_executor::block_on(async {
        let (db, p) = corpus().await;
        let posts = db.collection("posts");
        let s = |q: SearchQuery| {
            let posts = posts.clone();
            async move { ids(&posts.search("text", &q).await.expect("search")) }
        };
        let mut both = s(SearchQuery::all("distributed systems")).await;
        both.sort();
        assert_eq!(both, [p[3], p[4]]);
        let mut any = s(SearchQuery::any("vanilla consensus")).await;
        any.sort();
        assert_eq!(any, [p[0], p[3]]);
        assert_eq!(s(SearchQuery::phrase("distributed systems")).await, [p[3]]);
        assert_eq!(
            s(SearchQuery::phrase("distributed transactions")).await,
            [p[3]]
        );
        // Phrases never span two fields ("systems" ends the title, "consensus" opens the body).
        assert!(s(SearchQuery::phrase("systems consensus")).await.is_empty());
        // Search as you type: the last word is a prefix.
        assert_eq!(
            s(SearchQuery::all("distributed transac").prefix_last()).await,
            [p[3]]
        );
        let mut rep = s(SearchQuery::all("repl").prefix_last()).await;
        rep.sort();
        assert_eq!(rep, [p[3]]);
        assert!(
            s(SearchQuery::all("repl")).await.is_empty(),
            "no prefix unless asked"
        );
        // Pages of the ranking.
        let all = s(SearchQuery::any("distributed systems lake").limit(10)).await;
        assert_eq!(all.len(), 3);
        assert_eq!(
            s(SearchQuery::any("distributed systems lake").limit(1)).await,
            all[..1]
        );
        assert_eq!(
            s(SearchQuery::any("distributed systems lake")
                .offset(1)
                .limit(5))
            .await,
            all[1..]
        );
        assert!(s(SearchQuery::all("   ,,, ")).await.is_empty());
    });
}

#[test]
fn ranking_prefers_more_and_rarer_matches() {
    futures_executor::block_on(async {
        let db = Database::memory().await.expect("open");
        let docs = db.collection("docs");
        docs.create_index("text", IndexSpec::search(["body"]))
            .await
            .expect("index");
        let body = |s: &str| Value::map([("body", s)]);
        let once = docs
            .insert(&body("the raft paper and the log"))
            .await
            .expect("put");
        let thrice = docs
            .insert(&body("raft raft raft: the log and the paper"))
            .await
            .expect("put");
        for i in 0..20 {
            docs.insert(&body(&format!("the log number {i} and the paper")))
                .await
                .expect("put");
        }
        let hits = docs
            .search("text", &SearchQuery::all("raft"))
            .await
            .expect("search");
        assert_eq!(
            ids(&hits),
            [thrice, once],
            "more matches of a rare term rank higher"
        );
        assert!(hits[0].score > hits[1].score);
        // A rare term outweighs a common one.
        let hits = docs
            .search("text", &SearchQuery::any("raft log").limit(3))
            .await
            .expect("search");
        assert!(ids(&hits[..2]).contains(&once) && ids(&hits[..2]).contains(&thrice));
        assert!(hits[1].score > hits[2].score);
    });
}

#[test]
fn search_is_maintained_in_transactions_and_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    futures_executor::block_on(async {
        let db = Database::open(dir.path()).await.expect("open");
        let notes = db.collection("notes");
        let a = notes
            .insert(&Value::map([("text", "running shoes for trails")]))
            .await
            .expect("put");
        // Built over existing documents, with stemming.
        notes
            .create_index("text", IndexSpec::search(["text"]).stem_english(true))
            .await
            .expect("index");
        let q = SearchQuery::all("run trail");
        assert_eq!(ids(&notes.search("text", &q).await.expect("search")), [a]);

        let mut tx = db.begin().await.expect("begin");
        let b = tx
            .collection("notes")
            .insert(&Value::map([("text", "She runs on trails daily")]))
            .expect("put");
        tx.collection("notes")
            .put(a, &Value::map([("text", "walking boots")]))
            .expect("put");
        let seen = tx
            .collection("notes")
            .search("text", &q)
            .await
            .expect("search");
        assert_eq!(ids(&seen), [b], "the transaction sees its own writes");
        assert_eq!(
            ids(&notes.search("text", &q).await.expect("search")),
            [a],
            "others do not"
        );
        tx.commit().await.expect("commit");
        assert_eq!(ids(&notes.search("text", &q).await.expect("search")), [b]);
        notes.delete(b).await.expect("delete");
        assert!(notes.search("text", &q).await.expect("search").is_empty());
        let report = db.verify_indexes().await.expect("verify");
        assert!(report.is_ok(), "{report}");
        drop(notes);
        db.close().await.expect("close");

        let db = Database::open(dir.path()).await.expect("reopen");
        let notes = db.collection("notes");
        let hits = notes
            .search("text", &SearchQuery::all("walk boot"))
            .await
            .expect("search");
        assert_eq!(ids(&hits), [a]);
        assert!(db.verify_indexes().await.expect("verify").is_ok());

        // The wrong call for the kind says so.
        let err = notes
            .lookup("text", &Query::eq("walking"))
            .await
            .expect_err("not a lookup index");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        notes
            .create_index("by_text", IndexSpec::ordered(["text"]))
            .await
            .expect("index");
        let err = notes
            .search("by_text", &SearchQuery::all("walking"))
            .await
            .expect_err("not a search index");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let err = notes
            .create_index("u", IndexSpec::search(["text"]).unique())
            .await
            .expect_err("search cannot be unique");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    });
}
