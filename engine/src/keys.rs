//! The keyspace: one ordered byte keyspace per database, split by a one-byte tag.
//!
//! | tag  | key                                   | value                              |
//! |------|---------------------------------------|------------------------------------|
//! | 0x00 | `00 'C' name`                         | collection record (id, u32 BE)     |
//! | 0x00 | `00 'D' id(u32 BE)`                   | name of a dropped collection       |
//! | 0x00 | `00 'I' collection-id(u32 BE) name`   | index definition (CBOR map)        |
//! | 0x00 | `00 'J' index-id(u32 BE)`             | collection id (u32 BE) and name of a dropped index |
//! | 0x00 | `00 'V'`                              | schema version (u64 BE; see `migrate.rs`) |
//! | 0x01 | `01 collection-id(u32 BE) entity-id`  | canonical CBOR document            |
//! | 0x02 | `02 index-id(u32 BE) key-body entity-id` | empty (an index entry; see `index/`) |
//! | 0x03 | `03 sequence(u64 BE)`                 | change-feed record (see `feed.rs`) |
//!
//! Collection ids are local to one database file set; names are what leaves the process.
//! Big-endian integers keep numeric order equal to byte order.

use crate::ids::EntityId;

/// Tag of catalog keys.
pub(crate) const TAG_CATALOG: u8 = 0x00;
/// Tag of entity keys.
pub(crate) const TAG_ENTITY: u8 = 0x01;
/// Tag of index entry keys.
pub(crate) const TAG_INDEX: u8 = 0x02;
/// Tag of change-feed keys.
pub(crate) const TAG_FEED: u8 = 0x03;

/// Length of an entity key.
pub(crate) const ENTITY_KEY_LEN: usize = 1 + 4 + 16;

pub(crate) fn entity_key(coll: u32, id: &EntityId) -> Vec<u8> {
    entity_key_array(coll, id).to_vec()
}

/// The entity key without allocating (for point reads).
pub(crate) fn entity_key_array(coll: u32, id: &EntityId) -> [u8; ENTITY_KEY_LEN] {
    let mut k = [0u8; ENTITY_KEY_LEN];
    k[0] = TAG_ENTITY;
    k[1..5].copy_from_slice(&coll.to_be_bytes());
    k[5..].copy_from_slice(id.as_bytes());
    k
}

/// The first key of a collection's entity range.
pub(crate) fn collection_start(coll: u32) -> Vec<u8> {
    entity_key(coll, &EntityId::MIN)
}

/// The first key after a collection's entity range.
pub(crate) fn collection_end(coll: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5);
    k.push(TAG_ENTITY);
    match coll.checked_add(1) {
        Some(next) => k.extend_from_slice(&next.to_be_bytes()),
        None => {
            k[0] = TAG_ENTITY + 1;
        }
    }
    k
}

/// Split an entity key into (collection id, entity id).
pub(crate) fn parse_entity_key(k: &[u8]) -> Option<(u32, EntityId)> {
    if k.len() != ENTITY_KEY_LEN || k[0] != TAG_ENTITY {
        return None;
    }
    let coll = u32::from_be_bytes(k[1..5].try_into().ok()?);
    let id = EntityId::from_slice(&k[5..])?;
    Some((coll, id))
}

pub(crate) fn catalog_key(name: &str) -> Vec<u8> {
    let mut k = vec![TAG_CATALOG, b'C'];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn dropped_key(coll: u32) -> Vec<u8> {
    let mut k = vec![TAG_CATALOG, b'D'];
    k.extend_from_slice(&coll.to_be_bytes());
    k
}

/// The catalog key of the schema version.
pub(crate) fn schema_version_key() -> Vec<u8> {
    vec![TAG_CATALOG, b'V']
}

/// The catalog key of the change-feed hold `name` (value: the held position, u64 BE).
pub(crate) fn feed_hold_key(name: &str) -> Vec<u8> {
    let mut k = vec![TAG_CATALOG, b'H'];
    k.extend_from_slice(name.as_bytes());
    k
}

/// The catalog key of index `name` on collection `coll`.
pub(crate) fn index_def_key(coll: u32, name: &str) -> Vec<u8> {
    let mut k = vec![TAG_CATALOG, b'I'];
    k.extend_from_slice(&coll.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// The catalog key that records that index `id` was dropped.
pub(crate) fn index_dropped_key(id: u32) -> Vec<u8> {
    let mut k = vec![TAG_CATALOG, b'J'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The first key of index `id`'s entries.
pub(crate) fn index_prefix(id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5);
    k.push(TAG_INDEX);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The first key after index `id`'s entries.
pub(crate) fn index_end(id: u32) -> Vec<u8> {
    match id.checked_add(1) {
        Some(next) => index_prefix(next),
        None => vec![TAG_INDEX + 1],
    }
}

/// An index entry key: prefix, key body, entity id.
pub(crate) fn index_entry_key(id: u32, body: &[u8], entity: &EntityId) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + body.len() + 16);
    k.push(TAG_INDEX);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(body);
    k.extend_from_slice(entity.as_bytes());
    k
}

/// The index id of a key under an index's prefix.
pub(crate) fn parse_index_id(k: &[u8]) -> Option<u32> {
    if k.len() < 5 || k[0] != TAG_INDEX {
        return None;
    }
    Some(u32::from_be_bytes(k[1..5].try_into().ok()?))
}

/// The entity id at the end of an index entry key.
pub(crate) fn index_entry_entity(k: &[u8]) -> Option<EntityId> {
    if k.len() < 5 + 16 || k[0] != TAG_INDEX {
        return None;
    }
    EntityId::from_slice(&k[k.len() - 16..])
}

pub(crate) fn feed_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(TAG_FEED);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn parse_feed_key(k: &[u8]) -> Option<u64> {
    if k.len() != 9 || k[0] != TAG_FEED {
        return None;
    }
    Some(u64::from_be_bytes(k[1..9].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_roundtrip_and_order() {
        let a = entity_key(7, &EntityId([1; 16]));
        assert_eq!(parse_entity_key(&a), Some((7, EntityId([1; 16]))));
        assert!(collection_start(7) <= a && a < collection_end(7));
        assert!(collection_end(7) <= collection_start(8));
        assert!(collection_end(u32::MAX) > entity_key(u32::MAX, &EntityId::MAX));
        assert!(feed_key(1) < feed_key(256));
        assert_eq!(parse_feed_key(&feed_key(42)), Some(42));
    }
}
