//! [`Canonical`]: one CBOR data item held as its canonical encoding, shared and cheap to
//! clone, so that a document can travel from storage to the network (and back) without being
//! decoded into a [`Value`] and encoded again.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::canonical::{canonicalize_cow, is_canonical};
use super::decode::decode;
use super::encode::try_encode;
use super::error::CborError;
use super::serde_helpers::{from_slice, to_canonical_vec};
use super::value::Value;

/// The canonical encoding of one CBOR data item (RFC 8949 §4.2.1, as [`encode`] writes it).
///
/// Invariant: the bytes are always exactly one well-formed, valid item in canonical form.
/// Every constructor checks or establishes it; documents read from a database hold it because
/// the engine stores canonical bytes only. Equal values therefore have equal bytes, and
/// comparing two `Canonical`s compares the values they hold.
///
/// Cloning shares the bytes (an `Arc`). [`Document::canonical`](crate::Document::canonical)
/// and [`ChangeOp::Put`](crate::ChangeOp::Put) hand out the stored bytes without a copy, and
/// [`TxCollection::put_canonical`](crate::TxCollection::put_canonical) stores them without
/// validating them again.
///
/// # serde
///
/// In CBOR (a serializer that is not human-readable, such as `ciborium`'s or
/// [`to_canonical_vec`]), a `Canonical` is written as tag 24, "encoded CBOR data item"
/// (RFC 8949 §3.4.5.1), over a byte string holding its bytes: a reader copies the bytes and
/// checks them once, without building the value. Human-readable formats (JSON) get the value
/// itself.
///
/// Reading accepts tag 24 over a byte string, whose content must be one well-formed item
/// (it is canonicalized if needed; the bytes are never parsed by `ciborium`, so the value
/// is exact). For data written before this type existed, any other item in place is read
/// too and encoded, as exactly as serde reads a [`Value`] through `ciborium` (bignums of at
/// most 16 bytes become integers, `undefined` becomes null; see [`Value`]'s `Deserialize`).
/// The one ambiguity: an item in place that is itself a tag 24 over a byte string is read as
/// the wrapper, not as a tag (and is an error if the bytes are not one valid item).
///
/// The CBOR form is for CBOR serializers that write `ciborium`'s tag convention (this
/// crate's [`to_canonical_vec`] and `ciborium` itself); other binary serde formats are not
/// supported.
///
/// ```
/// use entidb::cbor::{Canonical, Value, to_canonical_vec};
///
/// let doc = Canonical::from_value(&Value::map([("a", 1)])).unwrap();
/// assert_eq!(doc.as_bytes(), b"\xa1\x61a\x01");
/// // In CBOR: tag 24 (d8 18) over the 4-byte string (44) of the encoding.
/// assert_eq!(to_canonical_vec(&doc).unwrap(), b"\xd8\x18\x44\xa1\x61a\x01");
/// let back: Canonical = entidb::cbor::from_slice(b"\xd8\x18\x44\xa1\x61a\x01").unwrap();
/// assert_eq!(back, doc);
/// // In JSON: the value.
/// assert_eq!(serde_json::to_string(&doc).unwrap(), r#"{"a":1}"#);
/// // Non-canonical input is made canonical; malformed input is an error.
/// assert_eq!(Canonical::from_cbor(&[0x9f, 0x01, 0xff]).unwrap().as_bytes(), [0x81, 0x01]);
/// assert!(Canonical::from_cbor(&[0x82, 0x01]).is_err());
/// ```
///
/// [`encode`]: super::encode
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Canonical(Arc<[u8]>);

impl Canonical {
    /// Checks `bytes` (exactly one well-formed, valid item) and makes them canonical.
    /// Canonical input is copied as it is.
    pub fn from_cbor(bytes: &[u8]) -> Result<Canonical, CborError> {
        Ok(Canonical(Arc::from(&*canonicalize_cow(bytes)?)))
    }

    /// The canonical encoding of `value`. Fails like [`try_encode`]: a map with two equal
    /// keys, or nesting deeper than [`MAX_DEPTH`](super::MAX_DEPTH).
    pub fn from_value(value: &Value) -> Result<Canonical, CborError> {
        Ok(Canonical(Arc::from(try_encode(value)?)))
    }

    /// The canonical encoding of a serializable value (as [`to_canonical_vec`]).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Canonical, CborError> {
        Ok(Canonical(Arc::from(to_canonical_vec(value)?)))
    }

    /// Wraps bytes the engine stored, which are canonical by the engine's invariant (they
    /// were checked before they were written, and the blocks that hold them are
    /// checksummed). Debug builds check again.
    pub(crate) fn stored(bytes: Arc<[u8]>) -> Canonical {
        debug_assert!(
            is_canonical(&bytes),
            "stored document bytes are not canonical"
        );
        Canonical(bytes)
    }

    /// The canonical bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared bytes.
    pub fn shared(&self) -> &Arc<[u8]> {
        &self.0
    }

    /// Decodes into a dynamic [`Value`].
    pub fn to_value(&self) -> Result<Value, CborError> {
        decode(&self.0)
    }

    /// Decodes into a typed value.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CborError> {
        from_slice(&self.0)
    }
}

impl Deref for Canonical {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Canonical {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<&Value> for Canonical {
    type Error = CborError;
    fn try_from(value: &Value) -> Result<Canonical, CborError> {
        Canonical::from_value(value)
    }
}

/// Diagnostic notation of the value (RFC 8949 §8), e.g. `Canonical({"a": 1})`.
impl fmt::Debug for Canonical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match decode(&self.0) {
            Ok(v) => write!(f, "Canonical({v})"),
            // Unreachable by the invariant; show the size rather than fail.
            Err(_) => write!(f, "Canonical(<{} bytes>)", self.0.len()),
        }
    }
}

/// Diagnostic notation of the value (RFC 8949 §8).
impl fmt::Display for Canonical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match decode(&self.0) {
            Ok(v) => write!(f, "{v}"),
            Err(_) => write!(f, "<{} bytes of CBOR>", self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::{CborError, encode};

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Msg {
        doc: Option<Canonical>,
    }

    fn msg_with(doc: Value) -> Vec<u8> {
        encode(&Value::map([("doc", doc)]))
    }

    #[test]
    fn cbor_form_is_tag_24_over_the_bytes() {
        let doc = Canonical::from_value(&Value::map([("a", Value::from(1))])).unwrap();
        let bytes = to_canonical_vec(&Msg {
            doc: Some(doc.clone()),
        })
        .unwrap();
        assert_eq!(
            bytes,
            msg_with(Value::Tag(24, Box::new(Value::Bytes(doc.to_vec()))))
        );
        assert_eq!(from_slice::<Msg>(&bytes).unwrap(), Msg { doc: Some(doc) });
        assert_eq!(
            from_slice::<Msg>(&msg_with(Value::Null)).unwrap(),
            Msg { doc: None }
        );
    }

    #[test]
    fn a_document_in_place_is_read_too() {
        let v = Value::map([("b", Value::array([1, 2])), ("a", Value::from("x"))]);
        let read: Msg = from_slice(&msg_with(v.clone())).unwrap();
        assert_eq!(read.doc.unwrap().to_value().unwrap(), v);
        // A tag other than 24, or tag 24 over something other than bytes, is a document.
        for v in [
            Value::Tag(1, Box::new(Value::from(5))),
            Value::Tag(24, Box::new(Value::from(5))),
        ] {
            let read: Msg = from_slice(&msg_with(v.clone())).unwrap();
            assert_eq!(read.doc.unwrap().to_value().unwrap(), v);
        }
    }

    #[test]
    fn wrapped_bytes_are_checked_and_made_canonical() {
        // An indefinite-length array holding 1: canonicalized to [1].
        let loose = msg_with(Value::Tag(
            24,
            Box::new(Value::Bytes(vec![0x9f, 0x01, 0xff])),
        ));
        let read: Msg = from_slice(&loose).unwrap();
        assert_eq!(read.doc.unwrap().as_bytes(), [0x81, 0x01]);
        // Not one item: truncated, trailing bytes, empty, a duplicate map key.
        for bad in [
            &[0x82, 0x01][..],
            &[0x01, 0x02],
            &[],
            &[0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02],
        ] {
            let err = from_slice::<Msg>(&msg_with(Value::Tag(
                24,
                Box::new(Value::Bytes(bad.to_vec())),
            )))
            .unwrap_err();
            let CborError::Deserialize(message) = err else {
                panic!("{bad:02x?}: {err:?}");
            };
            assert!(message.contains("tag 24"), "{message}");
        }
    }

    #[test]
    fn json_form_is_the_value() {
        let doc = Canonical::from_value(&Value::map([("a", Value::array([1, 2]))])).unwrap();
        let json = serde_json::to_string(&Msg {
            doc: Some(doc.clone()),
        })
        .unwrap();
        assert_eq!(json, r#"{"doc":{"a":[1,2]}}"#);
        assert_eq!(
            serde_json::from_str::<Msg>(&json).unwrap(),
            Msg { doc: Some(doc) }
        );
        // Duplicate keys have no canonical form.
        assert!(serde_json::from_str::<Msg>(r#"{"doc":{"a":1,"a":2}}"#).is_err());
    }

    #[test]
    fn constructors_check_and_share() {
        assert_eq!(
            Canonical::from_cbor(&[0x18, 0x01]).unwrap().as_bytes(),
            [0x01]
        );
        let bytes = vec![0x83, 0x01, 0x02, 0x03];
        let doc = Canonical::from_cbor(&bytes).unwrap();
        let copy = doc.clone();
        assert!(Arc::ptr_eq(doc.shared(), copy.shared()));
        assert!(Canonical::from_cbor(&[0xff]).is_err());
        assert_eq!(format!("{doc:?}"), "Canonical([1, 2, 3])");
        assert_eq!(doc.to_string(), "[1, 2, 3]");
        assert_eq!(doc.decode::<Vec<u8>>().unwrap(), [1, 2, 3]);
        let v = Value::array([1, 2, 3]);
        assert_eq!(Canonical::try_from(&v).unwrap(), doc);
        // A map with two equal keys has no canonical encoding.
        let dup = Value::Map(vec![
            (Value::from(1), Value::Null),
            (Value::from(1), Value::Null),
        ]);
        assert!(Canonical::try_from(&dup).is_err());
    }
}
