//! Canonical CBOR (RFC 8949 §4.2.1, "core deterministic encoding") for EntiDB.
//!
//! Documents are stored as CBOR in one canonical form, so that equal documents are equal
//! bytes. This module has its own encoder and decoder for the dynamic [`Value`], plus serde
//! helpers (through `ciborium`) for typed Rust values.
//!
//! # Canonical rules
//!
//! [`encode`] always produces, and [`validate_canonical`] only accepts:
//!
//! * integers, string lengths, element counts and tag numbers in the **shortest head**;
//!   integers use major types 0 and 1 over the whole range `-2^64 ..= 2^64-1` ([`Int`]);
//! * **definite lengths** only;
//! * map entries **sorted by the bytewise order of their encoded keys**, and **no duplicate
//!   keys** (keys are equal when their canonical encodings are; so `1.0` written as a half and
//!   as a double are the same key, and so are all NaNs);
//! * floats in the **shortest of half, single or double precision that holds the value
//!   exactly** (`-0.0` stays distinct from `0.0`), with **every NaN encoded as `f9 7e00`** and
//!   the infinities as `f9 7c00` / `f9 fc00`;
//! * simple values `0..=19` and `32..=255` ([`Simple`]), besides `false`, `true`, `null`
//!   and `undefined`; a two-byte simple value below 32 is not well-formed;
//! * **tags preserved as they are**; in particular bignums (tags 2 and 3) are neither
//!   produced for integers nor converted to integers, even when they would fit;
//! * arrays, maps and tags nested at most **256 levels** deep ([`MAX_DEPTH`]).
//!
//! [`decode`] accepts any well-formed CBOR item (non-shortest heads, indefinite lengths, any
//! float width) that is also valid (UTF-8 text, unique keys, depth limit) and never panics or
//! allocates in proportion to a declared length before the data is there. [`canonicalize`]
//! turns such input into canonical bytes without building a [`Value`], and returns the input
//! as is when it is canonical already.
//!
//! ```
//! use entidb::cbor::{Value, encode, decode};
//!
//! // Entries in any order, a float that fits in half precision.
//! let doc = Value::map([
//!     ("name", Value::from("Ada")),
//!     ("age", Value::from(36)),
//!     ("score", Value::from(1.5)),
//! ]);
//! let bytes = encode(&doc);
//! // {"age": 36, "name": "Ada", "score": 1.5}: keys sorted bytewise, 1.5 as f9 3e00.
//! assert_eq!(
//!     bytes,
//!     b"\xa3\x63age\x18\x24\x64name\x63Ada\x65score\xf9\x3e\x00".to_vec()
//! );
//! assert_eq!(decode(&bytes).unwrap(), doc);
//! assert_eq!(doc.get("name").and_then(Value::as_text), Some("Ada"));
//!
//! // Non-canonical input (indefinite-length array, padded integer) is accepted by `decode`
//! // and fixed by `canonicalize`, but rejected by `validate_canonical`.
//! let loose = [0x9f, 0x18, 0x01, 0xff];
//! assert_eq!(decode(&loose).unwrap(), Value::array([1]));
//! assert!(entidb::cbor::validate_canonical(&loose).is_err());
//! assert_eq!(entidb::cbor::canonicalize(&loose).unwrap(), [0x81, 0x01]);
//! ```

mod canonical;
mod decode;
mod diag;
mod encode;
mod error;
mod float;
mod item;
mod serde_helpers;
#[cfg(test)]
mod tests;
mod value;

pub use canonical::{canonicalize, canonicalize_cow, is_canonical, validate, validate_canonical};
pub use decode::{decode, item_len};
pub use encode::{encode, encode_head, encode_into, try_encode};
pub use error::CborError;
pub use item::Canonical;
pub use serde_helpers::{from_canonical, from_slice, from_value, to_canonical_vec, to_value};
pub use value::{Int, IntOutOfRange, Simple, Value, canonical_cmp};

/// The maximum nesting of arrays, maps and tags: a container nested inside 256 others is
/// rejected ([`CborError::TooDeep`]) by every decoding function and by [`try_encode`].
pub const MAX_DEPTH: usize = 256;
