//! The error type of the CBOR codec.

/// Why a CBOR operation failed.
///
/// Every decoding error carries `offset`, the position in the input (in bytes, from 0) at
/// which the problem was detected; usually the start of the offending data item or head.
/// Errors from [`try_encode`](super::try_encode) carry an offset into the produced output.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CborError {
    /// The input ended in the middle of a data item.
    #[error("malformed CBOR at byte {offset}: unexpected end of input")]
    UnexpectedEnd {
        /// Start of the item or head that could not be read completely.
        offset: usize,
    },
    /// A complete data item was followed by more bytes.
    #[error("malformed CBOR at byte {offset}: trailing bytes after the data item")]
    TrailingBytes {
        /// Position of the first trailing byte.
        offset: usize,
    },
    /// An initial byte used one of the reserved additional-information values 28, 29 or 30.
    #[error(
        "malformed CBOR at byte {offset}: initial byte 0x{byte:02x} uses reserved additional information"
    )]
    ReservedAdditionalInfo {
        /// Position of the initial byte.
        offset: usize,
        /// The initial byte.
        byte: u8,
    },
    /// A "break" stop code (0xff) appeared outside an indefinite-length item, or where a map
    /// value was expected.
    #[error("malformed CBOR at byte {offset}: unexpected break (0xff)")]
    UnexpectedBreak {
        /// Position of the break byte.
        offset: usize,
    },
    /// A chunk of an indefinite-length string was not a definite-length string of the same
    /// major type.
    #[error(
        "malformed CBOR at byte {offset}: a chunk of an indefinite-length string must be a definite-length string of the same type"
    )]
    InvalidIndefiniteChunk {
        /// Position of the chunk's initial byte.
        offset: usize,
    },
    /// Indefinite length (additional information 31) on a major type that does not allow it
    /// (0, 1 or 6).
    #[error("malformed CBOR at byte {offset}: major type {major} cannot have an indefinite length")]
    InvalidIndefiniteLength {
        /// Position of the initial byte.
        offset: usize,
        /// The major type (0..=7).
        major: u8,
    },
    /// A text string is not valid UTF-8 (each chunk of an indefinite-length text string must
    /// itself be valid UTF-8, RFC 8949 §3.2.3).
    #[error("invalid CBOR at byte {offset}: text string is not valid UTF-8")]
    InvalidUtf8 {
        /// Position of the first invalid byte (or of the string's head).
        offset: usize,
    },
    /// A two-byte simple value (`0xf8 N`) with `N < 32`, which RFC 8949 §3.3 makes not
    /// well-formed.
    #[error("malformed CBOR at byte {offset}: two-byte simple value {value} (must be at least 32)")]
    InvalidSimple {
        /// Position of the `0xf8` byte.
        offset: usize,
        /// The simple value found.
        value: u8,
    },
    /// A map holds two keys with the same canonical encoding.
    #[error("invalid CBOR at byte {offset}: duplicate map key")]
    DuplicateMapKey {
        /// Position of the second occurrence of the key.
        offset: usize,
    },
    /// Arrays, maps and tags are nested deeper than the limit.
    #[error("CBOR at byte {offset} is nested deeper than the limit of {limit} levels")]
    TooDeep {
        /// Position of the container that exceeds the limit.
        offset: usize,
        /// The nesting limit.
        limit: usize,
    },
    /// A declared string length or element count cannot fit in the rest of the input.
    #[error("malformed CBOR at byte {offset}: declared length {len} exceeds the remaining input")]
    LengthTooLarge {
        /// Position of the head that declares the length.
        offset: usize,
        /// The declared length (bytes for strings, elements for arrays, entries for maps).
        len: u64,
    },
    /// The input is well-formed but not in canonical form.
    #[error("non-canonical CBOR at byte {offset}: {reason}")]
    NotCanonical {
        /// Position of the first violation.
        offset: usize,
        /// What rule is violated.
        reason: &'static str,
    },
    /// Serializing a Rust value with serde failed.
    #[error("CBOR serialization failed: {0}")]
    Serialize(String),
    /// Deserializing a Rust value with serde failed.
    #[error("CBOR deserialization failed: {0}")]
    Deserialize(String),
    /// A map was required but another kind of value was found.
    #[error("expected a CBOR map")]
    NotAMap,
}

impl CborError {
    /// The byte offset the error refers to, if it has one.
    #[must_use]
    pub fn offset(&self) -> Option<usize> {
        match *self {
            Self::UnexpectedEnd { offset }
            | Self::TrailingBytes { offset }
            | Self::ReservedAdditionalInfo { offset, .. }
            | Self::UnexpectedBreak { offset }
            | Self::InvalidIndefiniteChunk { offset }
            | Self::InvalidIndefiniteLength { offset, .. }
            | Self::InvalidUtf8 { offset }
            | Self::InvalidSimple { offset, .. }
            | Self::DuplicateMapKey { offset }
            | Self::TooDeep { offset, .. }
            | Self::LengthTooLarge { offset, .. }
            | Self::NotCanonical { offset, .. } => Some(offset),
            Self::Serialize(_) | Self::Deserialize(_) | Self::NotAMap => None,
        }
    }
}
