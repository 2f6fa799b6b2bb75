//! Create a database, write, read, reopen: `cargo run -p entidb --example quickstart [DIR]`.

use entidb::{Database, ScanOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    title: String,
    stars: u32,
}

fn main() -> Result<(), entidb::Error> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "entidb-quickstart".to_owned());
    futures_executor::block_on(async {
        let id = {
            let db = Database::open(&dir).await?;
            let notes = db.collection("notes");
            let id = notes
                .insert(&Note {
                    title: "hello, durable world".into(),
                    stars: 5,
                })
                .await?;
            println!("wrote {id} (version {:?})", notes.version(id).await?);
            db.close().await?;
            id
        };
        let db = Database::open(&dir).await?;
        let notes = db.collection("notes");
        let note: Option<Note> = notes.get(id).await?;
        println!("after reopen: {note:?}");
        let page = notes.scan(ScanOptions::limit(5)).await?;
        println!(
            "{} note(s) in {dir}; first page has {}",
            notes.count().await?,
            page.items.len()
        );
        println!("stats: {:?}", db.stats());
        Ok(())
    })
}
