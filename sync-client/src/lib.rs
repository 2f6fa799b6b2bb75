//! # entidb-sync
//!
//! The sync protocol's wire types ([`wire`], the one definition the server uses too) and the
//! [`Replicator`] that keeps a local [`entidb::Database`] in sync with an `entidb serve`
//! server: local writes are captured from the database's change feed into a durable outbox,
//! pushed idempotently, and remote changes are pulled and applied with the cursor saved in the
//! same transaction. See `docs/sync-protocol.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use entidb_sync::{HttpTransport, Replicator, SyncConfig};
//!
//! let db = entidb::Database::open("app.db").await?;
//! let transport = Arc::new(HttpTransport::new("http://127.0.0.1:7420", "TOKEN"));
//! let sync = Replicator::attach(db.clone(), SyncConfig::new("app", "phone-1", &["notes"]), transport).await?;
//! db.collection("notes").insert(&"written offline").await?;
//! let report = sync.sync_now().await?;        // push the outbox, pull what others wrote
//! println!("{report:?}, {:?}", sync.status());
//! # Ok(()) }
//! ```

mod client;
pub mod transport;
pub mod wire;

pub use client::{
    MAX_WAIT, ORIGIN, Progress, Replicator, Status, SyncConfig, SyncError, SyncReport, SyncResult,
    meta_collection,
};
/// The HTTP client [`HttpTransport`] is built on, for [`HttpTransport::with_client`].
pub use reqwest;
pub use transport::{HttpTransport, Method, Request, Response, Transport, TransportError};
