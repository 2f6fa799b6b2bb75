//! serde integration: typed values to and from canonical CBOR (through `ciborium`), and
//! `Serialize`/`Deserialize` for [`Value`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, EnumAccess, MapAccess, SeqAccess};
use serde::de::{Error as _, VariantAccess, Visitor};
use serde::ser::{Error as _, SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::MAX_DEPTH;
use super::canonical::canonicalize_cow;
use super::decode::decode;
use super::encode::try_encode;
use super::error::CborError;
use super::item::Canonical;
use super::value::{Int, Value};

/// Serializes `value` with serde (via `ciborium`) and returns its canonical encoding: struct
/// fields and map entries sorted, floats shortened, indefinite lengths made definite.
///
/// Fails with [`CborError::Serialize`] if serde fails, and with
/// [`CborError::DuplicateMapKey`] if the value serializes two equal map keys.
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CborError> {
    let mut buf = Vec::new();
    ciborium::ser::into_writer(value, &mut buf).map_err(|e| CborError::Serialize(e.to_string()))?;
    let rewritten = match canonicalize_cow(&buf)? {
        Cow::Borrowed(_) => None,
        Cow::Owned(canonical) => Some(canonical),
    };
    Ok(rewritten.unwrap_or(buf))
}

/// Deserializes a `T` from exactly one CBOR data item.
///
/// The input is first validated like [`decode`] does (so malformed data, duplicate map keys
/// and excessive nesting are rejected with the usual errors), then deserialized by
/// `ciborium`; a mismatch with `T` is a [`CborError::Deserialize`].
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    let canonical = canonicalize_cow(bytes)?;
    // The depth is already bounded by MAX_DEPTH; give ciborium room for its own counting.
    ciborium::de::from_reader_with_recursion_limit(&canonical[..], 2 * MAX_DEPTH + 2)
        .map_err(|e| CborError::Deserialize(e.to_string()))
}

/// Deserializes a `T` from bytes already known to be one canonical CBOR data item: a stored
/// [`Document`](crate::Document)'s bytes, or a [`Canonical`]'s. It skips the validation pass
/// of [`from_slice`] (stored documents were validated when written, and their blocks are
/// checksummed). Other bytes are still safe to give (no panic, no unbounded recursion), but
/// only [`from_slice`] rejects everything malformed: this may accept a duplicate map key, a
/// non-canonical length, a two-byte simple value below 32, indefinite strings nested in
/// indefinite strings, or bytes after the item. Anything it does not accept fails with
/// [`CborError::Deserialize`].
pub fn from_canonical<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    ciborium::de::from_reader_with_recursion_limit(bytes, 2 * MAX_DEPTH + 2)
        .map_err(|e| CborError::Deserialize(e.to_string()))
}

/// Converts a serializable Rust value to a [`Value`] (through its canonical encoding).
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, CborError> {
    decode(&to_canonical_vec(value)?)
}

/// Converts a [`Value`] to a deserializable Rust type (through its canonical encoding).
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, CborError> {
    from_slice(&try_encode(value)?)
}

/// Serializes the value into serde's data model.
///
/// Integers outside the `i64`/`u64` range use `i128`; tags use `ciborium`'s tag convention
/// (so `ciborium` writes them as real CBOR tags). `undefined` and other simple values have no
/// serde equivalent and fail: use [`encode`](super::encode) for those.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Int(i) => match (i.as_u64(), i.as_i64()) {
                (Some(u), _) => serializer.serialize_u64(u),
                (None, Some(n)) => serializer.serialize_i64(n),
                (None, None) => serializer.serialize_i128(i.as_i128()),
            },
            Value::Bytes(b) => serializer.serialize_bytes(b),
            Value::Text(s) => serializer.serialize_str(s),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Value::Tag(tag, inner) => {
                ciborium::tag::Captured(Some(*tag), inner.as_ref()).serialize(serializer)
            }
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Null => serializer.serialize_unit(),
            Value::Undefined => Err(S::Error::custom(
                "CBOR `undefined` has no serde equivalent (use entidb::cbor::encode)",
            )),
            Value::Simple(s) => Err(S::Error::custom(format_args!(
                "CBOR simple({}) has no serde equivalent (use entidb::cbor::encode)",
                s.value()
            ))),
            Value::Float(x) => serializer.serialize_f64(*x),
        }
    }
}

/// Deserializes any self-describing input into a [`Value`].
///
/// With `ciborium`, tags are preserved, except that bignums (tags 2 and 3) of at most 16
/// bytes arrive as integers: they become [`Value::Int`] when in range, otherwise a bignum tag
/// with minimal bytes. `undefined` arrives as `null`. Use [`decode`] for an exact result.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Tag 24 ("encoded CBOR data item") in CBOR, the value itself in human-readable formats
/// (see [`Canonical`]).
impl Serialize for Canonical {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let value = decode(self.as_bytes()).map_err(S::Error::custom)?;
            // A human-readable format (JSON) would change these silently: serde_json writes
            // a number or bool key as a string and a NaN or infinity as null.
            if let Some(why) = no_text_form(&value) {
                return Err(S::Error::custom(why));
            }
            value.serialize(serializer)
        } else {
            ciborium::tag::Captured(Some(ENCODED_CBOR), ByteStr(self.as_bytes()))
                .serialize(serializer)
        }
    }
}

/// Why `value` has no faithful rendering in a human-readable format such as JSON (a map key
/// that is not text, a float that is not finite), or `None`. (`undefined` and other simple
/// values have no serde form at all; byte strings and tags are rendered in serde's way.)
fn no_text_form(value: &Value) -> Option<String> {
    match value {
        Value::Map(entries) => entries.iter().find_map(|(k, v)| match k {
            Value::Text(_) => no_text_form(v),
            other => Some(format!("a map key that is not text ({other:?})")),
        }),
        Value::Array(items) => items.iter().find_map(no_text_form),
        Value::Tag(_, inner) => no_text_form(inner),
        Value::Float(f) if !f.is_finite() => Some(format!("a float that is not finite ({f})")),
        _ => None,
    }
}

/// Tag 24 over a byte string (checked, canonicalized), or any other item in place (encoded).
impl<'de> Deserialize<'de> for Canonical {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Canonical, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Tag(ENCODED_CBOR, inner) => match *inner {
                Value::Bytes(bytes) => Canonical::from_cbor(&bytes).map_err(|e| {
                    D::Error::custom(format_args!(
                        "tag 24 (encoded CBOR data item) does not hold one valid item: {e}"
                    ))
                }),
                other => Canonical::from_value(&Value::Tag(ENCODED_CBOR, Box::new(other)))
                    .map_err(D::Error::custom),
            },
            other => Canonical::from_value(&other).map_err(D::Error::custom),
        }
    }
}

/// RFC 8949 §3.4.5.1: the byte string holds one encoded CBOR data item.
const ENCODED_CBOR: u64 = 24;

/// Serializes as a byte string (serde serializes a `&[u8]` as a sequence).
struct ByteStr<'a>(&'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// A bignum tag with the minimal big-endian bytes of `magnitude`.
fn bignum(tag: u64, magnitude: u128) -> Value {
    let bytes = magnitude.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    Value::Tag(
        tag,
        Box::new(Value::Bytes(
            bytes.get(first..).unwrap_or_default().to_vec(),
        )),
    )
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any CBOR data item")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(match Int::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) if v < 0 => bignum(3, (-1 - v) as u128),
            Err(_) => bignum(2, v as u128),
        })
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Int::try_from(v).map_or_else(|_| bignum(2, v), Value::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Text(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }

    /// `ciborium` presents a tag as the variant `@@TAGGED@@(tag, item)` of enum `@@TAG@@`.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (name, variant): (String, _) = data.variant()?;
        if name != "@@TAGGED@@" {
            return Err(A::Error::custom(format_args!(
                "unexpected enum variant {name:?}"
            )));
        }
        variant.tuple_variant(2, TagVisitor)
    }
}

struct TagVisitor;

impl<'de> Visitor<'de> for TagVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CBOR tag number and item")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let tag: u64 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        let item: Value = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
        Ok(Value::Tag(tag, Box::new(item)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::encode;
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Person {
        zeta: f64,
        name: String,
        age: u32,
        tags: Vec<String>,
        extra: BTreeMap<String, i64>,
        big: i128,
    }

    fn person() -> Person {
        Person {
            zeta: 1.5,
            name: "Ada".into(),
            age: 36,
            tags: vec!["math".into()],
            extra: BTreeMap::from([("b".into(), -1), ("aa".into(), 2)]),
            big: -(1i128 << 64),
        }
    }

    #[test]
    fn typed_round_trip_is_canonical() {
        let bytes = to_canonical_vec(&person()).expect("serialize");
        crate::cbor::validate_canonical(&bytes).expect("canonical");
        // Keys sorted bytewise: "age" < "big" < "name" < "tags" < "zeta" < "extra" (longer
        // text sorts after shorter), the float is a half.
        let v = decode(&bytes).expect("decode");
        let keys: Vec<&str> = v
            .as_map()
            .expect("map")
            .iter()
            .filter_map(|(k, _)| k.as_text())
            .collect();
        assert_eq!(keys, ["age", "big", "name", "tags", "zeta", "extra"]);
        assert_eq!(v.get("zeta"), Some(&Value::Float(1.5)));
        assert_eq!(v.get("big").and_then(Value::as_int), Some(Int::MIN));
        assert!(bytes.windows(3).any(|w| w == [0xf9, 0x3e, 0x00]));
        let back: Person = from_slice(&bytes).expect("deserialize");
        assert_eq!(back, person());
        let via_value: Person = from_value(&v).expect("from_value");
        assert_eq!(via_value, person());
        assert_eq!(to_value(&person()).expect("to_value"), v);
    }

    #[test]
    fn from_slice_rejects_invalid_input() {
        // {"a": 1, "a": 2}
        assert_eq!(
            from_slice::<BTreeMap<String, i64>>(&[0xa2, 0x61, 0x61, 1, 0x61, 0x61, 2]),
            Err(CborError::DuplicateMapKey { offset: 4 })
        );
        assert_eq!(
            from_slice::<u8>(&[1, 2]),
            Err(CborError::TrailingBytes { offset: 1 })
        );
        assert!(matches!(
            from_slice::<String>(&[1]),
            Err(CborError::Deserialize(_))
        ));
    }

    #[test]
    fn value_serde_round_trip() {
        let v = Value::map([
            (
                Value::from("tagged"),
                Value::Tag(32, Box::new(Value::from("http://x"))),
            ),
            (Value::from("min"), Value::Int(Int::MIN)),
            (Value::from("max"), Value::Int(Int::MAX)),
            (
                Value::from(-3),
                Value::array([Value::Null, Value::from(0.1), Value::from(true)]),
            ),
            (Value::from("bin"), Value::Bytes(vec![0, 255])),
            (
                Value::from("huge"),
                Value::Tag(2, Box::new(Value::Bytes(vec![1; 17]))),
            ),
        ]);
        let bytes = to_canonical_vec(&v).expect("serialize");
        assert_eq!(bytes, encode(&v));
        let back: Value = from_slice(&bytes).expect("deserialize");
        assert_eq!(back, v);
        assert!(to_canonical_vec(&Value::Undefined).is_err());
        // Through serde_json, plain data survives.
        let json = serde_json::to_string(&Value::map([("a", 1)])).expect("json");
        assert_eq!(json, r#"{"a":1}"#);
        let from_json: Value = serde_json::from_str(r#"{"a":[1,2.5,"x",null]}"#).expect("json");
        assert_eq!(
            from_json,
            Value::map([(
                "a",
                Value::array([
                    Value::from(1),
                    Value::from(2.5),
                    Value::from("x"),
                    Value::Null
                ])
            )])
        );
    }
}
