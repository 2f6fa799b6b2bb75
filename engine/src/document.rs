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
    pub(crate) bytes: DocBytes,
}

/// A document's bytes: an allocation of their own, or (from a scan) a slice of the cached
/// segment block they were read from, which the document keeps alive. Sharing the block
/// saves a scan an allocation and a copy per row; the cost is that a document held on to
/// pins its block (`Options::block_size`, 16 KiB by default) until it is dropped, which is
/// why only long, dense scan pages share (`read.rs`).
#[derive(Clone)]
pub(crate) enum DocBytes {
    Owned(Arc<[u8]>),
    Block(crate::segment::BlockSlice),
}

impl DocBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            DocBytes::Owned(b) => b,
            DocBytes::Block(s) => s.as_slice(),
        }
    }

    /// Copies bytes read in place out of their block, so that they no longer pin it.
    pub(crate) fn detach(&mut self) {
        if let DocBytes::Block(s) = self {
            *self = DocBytes::Owned(Arc::from(s.as_slice()));
        }
    }

    /// The bytes as an `Arc`: shared when they are one, copied out of the block otherwise.
    fn to_arc(&self) -> Arc<[u8]> {
        match self {
            DocBytes::Owned(b) => Arc::clone(b),
            DocBytes::Block(s) => Arc::from(s.as_slice()),
        }
    }
}

impl std::ops::Deref for DocBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for DocBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for DocBytes {}

impl From<Arc<[u8]>> for DocBytes {
    fn from(b: Arc<[u8]>) -> Self {
        DocBytes::Owned(b)
    }
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
    /// The canonical CBOR bytes as a [`Canonical`](cbor::Canonical) (shared, not copied,
    /// except for a document a scan read in place from a segment block).
    pub fn canonical(&self) -> cbor::Canonical {
        cbor::Canonical::stored(self.bytes.to_arc())
    }
    /// Decode into a dynamic [`Value`].
    pub fn value(&self) -> Result<Value> {
        Ok(cbor::decode(&self.bytes)?)
    }
    /// Decode into a typed value (without re-validating: the bytes are canonical).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(cbor::from_canonical(&self.bytes)?)
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
