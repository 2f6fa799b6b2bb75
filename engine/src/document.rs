//! What reads return.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::cbor::{self, Value};
use crate::error::Result;
use crate::ids::EntityId;

/// A stored entity: its id, its version and its canonical CBOR bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Document {
    pub(crate) id: EntityId,
    pub(crate) version: u64,
    pub(crate) bytes: Arc<[u8]>,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Document {
    /// The entity id.
    pub fn id(&self) -> EntityId {
        self.id
    }
    /// The entity version: the sequence number of the transaction that last wrote it.
    /// Versions only grow.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// The canonical CBOR bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The canonical CBOR bytes as a [`Canonical`](cbor::Canonical), shared, not copied.
    pub fn canonical(&self) -> cbor::Canonical {
        cbor::Canonical::stored(Arc::clone(&self.bytes))
    }
    /// Decode into a dynamic [`Value`].
    pub fn value(&self) -> Result<Value> {
        Ok(cbor::decode(&self.bytes)?)
    }
    /// Decode into a typed value.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(cbor::from_slice(&self.bytes)?)
    }
}

/// Where a scan starts and how much it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Start after this id (the `next` cursor of the previous page); `None`: from the start.
    pub after: Option<EntityId>,
    /// Most entities returned.
    pub limit: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            after: None,
            limit: 1000,
        }
    }
}

impl ScanOptions {
    /// First page of `limit` entities.
    pub fn limit(limit: usize) -> Self {
        ScanOptions { after: None, limit }
    }
    /// Continue after `cursor`.
    pub fn after(mut self, cursor: EntityId) -> Self {
        self.after = Some(cursor);
        self
    }
}

/// One page of a scan.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The entities, in id order.
    pub items: Vec<Document>,
    /// Pass as [`ScanOptions::after`] for the next page; `None` when the scan is complete.
    pub next: Option<EntityId>,
}
