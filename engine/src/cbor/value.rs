//! The dynamic CBOR value and its integer and simple-value types.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use super::encode::{encode, encode_into};

/// An integer in CBOR's native range, `-2^64 ..= 2^64-1` (major types 0 and 1).
///
/// Integers outside this range can only be carried as bignum tags (tag 2 or 3 around a byte
/// string), which this codec keeps as ordinary [`Value::Tag`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Int(i128);

/// The error returned when converting an integer outside `-2^64 ..= 2^64-1` into an [`Int`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("integer is outside the CBOR integer range -2^64 ..= 2^64-1")]
pub struct IntOutOfRange;

impl Int {
    /// The smallest CBOR integer, `-2^64`.
    pub const MIN: Int = Int(-(1i128 << 64));
    /// The largest CBOR integer, `2^64 - 1`.
    pub const MAX: Int = Int((1i128 << 64) - 1);

    /// The integer `-1 - n`, as carried by major type 1 with argument `n`.
    #[must_use]
    pub const fn from_negative_arg(n: u64) -> Int {
        Int(-1 - n as i128)
    }

    /// The value as an `i128` (always succeeds).
    #[must_use]
    pub const fn as_i128(self) -> i128 {
        self.0
    }

    /// The value as a `u64`, if it is non-negative.
    #[must_use]
    pub fn as_u64(self) -> Option<u64> {
        u64::try_from(self.0).ok()
    }

    /// The value as an `i64`, if it fits.
    #[must_use]
    pub fn as_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }

    /// The CBOR major type (0 or 1) and argument that encode this integer.
    #[must_use]
    pub(crate) fn major_and_arg(self) -> (u8, u64) {
        if self.0 >= 0 {
            (0, self.0 as u64)
        } else {
            (1, (-1 - self.0) as u64)
        }
    }
}

macro_rules! int_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Int {
            fn from(v: $t) -> Int {
                Int(i128::from(v))
            }
        }
    )*};
}
int_from!(u8, u16, u32, u64, i8, i16, i32, i64);

impl From<usize> for Int {
    fn from(v: usize) -> Int {
        Int(v as i128)
    }
}

impl From<isize> for Int {
    fn from(v: isize) -> Int {
        Int(v as i128)
    }
}

impl TryFrom<i128> for Int {
    type Error = IntOutOfRange;

    fn try_from(v: i128) -> Result<Int, IntOutOfRange> {
        if (Int::MIN.0..=Int::MAX.0).contains(&v) {
            Ok(Int(v))
        } else {
            Err(IntOutOfRange)
        }
    }
}

impl TryFrom<u128> for Int {
    type Error = IntOutOfRange;

    fn try_from(v: u128) -> Result<Int, IntOutOfRange> {
        u64::try_from(v).map(Int::from).map_err(|_| IntOutOfRange)
    }
}

impl From<Int> for i128 {
    fn from(v: Int) -> i128 {
        v.0
    }
}

impl std::fmt::Display for Int {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A CBOR simple value other than `false`, `true`, `null` and `undefined` (which are
/// [`Value::Bool`], [`Value::Null`] and [`Value::Undefined`]).
///
/// Only `0..=19` and `32..=255` are valid: 20..=23 are the four values above and 24..=31 are
/// reserved (RFC 8949 §3.3), so they cannot be constructed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Simple(u8);

impl Simple {
    /// The simple value `value`, or `None` if `value` is in `20..=31`.
    #[must_use]
    pub const fn new(value: u8) -> Option<Simple> {
        match value {
            0..=19 | 32..=255 => Some(Simple(value)),
            _ => None,
        }
    }

    /// The number of this simple value.
    #[must_use]
    pub const fn value(self) -> u8 {
        self.0
    }
}

/// A CBOR data item.
///
/// Equality is structural with two refinements that make it agree with the canonical
/// encoding: floats are equal when their bit patterns are equal or both are NaN (so `-0.0 !=
/// 0.0`), and maps are equal when they hold the same entries in any in-memory order.
/// `Hash` hashes the canonical encoding, consistently with `Eq`.
#[derive(Clone, Debug)]
pub enum Value {
    /// An integer (major types 0 and 1).
    Int(Int),
    /// A byte string (major type 2).
    Bytes(Vec<u8>),
    /// A UTF-8 text string (major type 3).
    Text(String),
    /// An array (major type 4).
    Array(Vec<Value>),
    /// A map (major type 5). Entries may be in any order in memory; the encoder emits them in
    /// canonical order. A map must not hold two keys that are equal: [`try_encode`] rejects
    /// it, [`encode`] emits both and the result is rejected by every decoder in this module.
    ///
    /// [`try_encode`]: super::try_encode
    Map(Vec<(Value, Value)>),
    /// A tagged item (major type 6). Tags are kept as they are, including bignums (2, 3).
    Tag(u64, Box<Value>),
    /// `false` or `true`.
    Bool(bool),
    /// `null`.
    Null,
    /// `undefined`.
    Undefined,
    /// Any other simple value.
    Simple(Simple),
    /// A floating-point number (encoded in the shortest of half, single or double precision
    /// that holds it exactly).
    Float(f64),
}

impl Value {
    /// Builds a map from key-value pairs.
    ///
    /// ```
    /// use entidb::cbor::Value;
    /// let v = Value::map([("name", Value::from("Ada")), ("born", Value::from(1815))]);
    /// assert_eq!(v.get("born").and_then(Value::as_i64), Some(1815));
    /// ```
    pub fn map<K, V, I>(entries: I) -> Value
    where
        K: Into<Value>,
        V: Into<Value>,
        I: IntoIterator<Item = (K, V)>,
    {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Builds an array from items.
    pub fn array<T: Into<Value>, I: IntoIterator<Item = T>>(items: I) -> Value {
        Value::Array(items.into_iter().map(Into::into).collect())
    }

    /// The text, if this is a text string.
    #[must_use]
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a byte string.
    #[must_use]
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The items, if this is an array.
    #[must_use]
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The items, mutably, if this is an array.
    pub fn as_array_mut(&mut self) -> Option<&mut Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The entries (in memory order), if this is a map.
    #[must_use]
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The entries, mutably, if this is a map.
    pub fn as_map_mut(&mut self) -> Option<&mut Vec<(Value, Value)>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The integer, if this is an integer (bignum tags are not converted).
    #[must_use]
    pub fn as_int(&self) -> Option<Int> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The integer as an `i64`, if this is an integer that fits.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        self.as_int().and_then(Int::as_i64)
    }

    /// The integer as a `u64`, if this is a non-negative integer.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(Int::as_u64)
    }

    /// The number, if this is a float (integers are not converted).
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The boolean, if this is `false` or `true`.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The tag number and the tagged item, if this is a tag.
    #[must_use]
    pub fn as_tag(&self) -> Option<(u64, &Value)> {
        match self {
            Value::Tag(t, v) => Some((*t, v)),
            _ => None,
        }
    }

    /// Whether this is `null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value of the text key `key`, if this is a map that has it.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value at a dot-separated path of text keys through nested maps, e.g.
    /// `"address.city"`. The empty path is `self`.
    #[must_use]
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        if path.is_empty() {
            return Some(self);
        }
        path.split('.').try_fold(self, |v, key| v.get(key))
    }
}

macro_rules! value_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(Int::from(v))
            }
        }
    )*};
}
value_from_int!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl From<Int> for Value {
    fn from(v: Int) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::Float(f64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

/// A `Vec<u8>` becomes a byte string (not an array of integers).
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Bytes(v)
    }
}

/// A `&[u8]` becomes a byte string (not an array of integers).
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Bytes(v.to_vec())
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::Array(v)
    }
}

impl From<Simple> for Value {
    fn from(v: Simple) -> Value {
        Value::Simple(v)
    }
}

/// Float equality that agrees with the canonical encoding.
fn float_eq(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Map equality independent of the in-memory order of entries.
fn map_eq(a: &[(Value, Value)], b: &[(Value, Value)]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.iter()
        .zip(b)
        .all(|((ka, va), (kb, vb))| ka == kb && va == vb)
    {
        return true;
    }
    let sa = SortedKeys::new(a);
    let sb = SortedKeys::new(b);
    sa.order
        .iter()
        .zip(&sb.order)
        .all(|(&(ra, ia), &(rb, ib))| {
            sa.key(ra) == sb.key(rb) && a.get(ia).map(|e| &e.1) == b.get(ib).map(|e| &e.1)
        })
}

/// The canonically encoded keys of a map, in canonical order.
struct SortedKeys {
    buf: Vec<u8>,
    /// (byte range of the encoded key in `buf`, index of the entry).
    order: Vec<((usize, usize), usize)>,
}

impl SortedKeys {
    fn new(entries: &[(Value, Value)]) -> SortedKeys {
        let mut buf = Vec::new();
        let mut order = Vec::with_capacity(entries.len());
        for (i, (k, _)) in entries.iter().enumerate() {
            let start = buf.len();
            encode_into(k, &mut buf);
            order.push(((start, buf.len()), i));
        }
        order.sort_by(|a, b| buf.get(a.0.0..a.0.1).cmp(&buf.get(b.0.0..b.0.1)));
        SortedKeys { buf, order }
    }

    fn key(&self, range: (usize, usize)) -> Option<&[u8]> {
        self.buf.get(range.0..range.1)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Map(a), Value::Map(b)) => map_eq(a, b),
            (Value::Tag(ta, a), Value::Tag(tb, b)) => ta == tb && a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Null, Value::Null) | (Value::Undefined, Value::Undefined) => true,
            (Value::Simple(a), Value::Simple(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => float_eq(*a, *b),
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&encode(self));
    }
}

/// Compares two values by the bytewise order of their canonical encodings (the order of map
/// keys in canonical CBOR).
#[must_use]
pub fn canonical_cmp(a: &Value, b: &Value) -> Ordering {
    encode(a).cmp(&encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_range() {
        assert_eq!(Int::try_from(-(1i128 << 64)), Ok(Int::MIN));
        assert_eq!(Int::try_from((1i128 << 64) - 1), Ok(Int::MAX));
        assert_eq!(Int::try_from(1i128 << 64), Err(IntOutOfRange));
        assert_eq!(Int::try_from(-(1i128 << 64) - 1), Err(IntOutOfRange));
        assert_eq!(Int::try_from(u128::MAX), Err(IntOutOfRange));
        assert_eq!(Int::from(u64::MAX).as_u64(), Some(u64::MAX));
        assert_eq!(Int::from(u64::MAX).as_i64(), None);
        assert_eq!(Int::from(-1i64).as_u64(), None);
        assert_eq!(Int::from(i64::MIN).as_i64(), Some(i64::MIN));
        assert_eq!(Int::MIN.major_and_arg(), (1, u64::MAX));
        assert_eq!(Int::from_negative_arg(u64::MAX), Int::MIN);
        assert_eq!(Int::from(-1i32).major_and_arg(), (1, 0));
    }

    #[test]
    fn simple_values() {
        assert_eq!(Simple::new(19).map(Simple::value), Some(19));
        assert_eq!(Simple::new(32).map(Simple::value), Some(32));
        for v in 20..=31 {
            assert_eq!(Simple::new(v), None);
        }
    }

    #[test]
    fn equality() {
        assert_eq!(
            Value::Float(f64::NAN),
            Value::Float(f64::from_bits(0x7ff0_0000_0000_0001))
        );
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::from(1), Value::from(1.0));
        let a = Value::map([("a", 1), ("b", 2)]);
        let b = Value::map([("b", 2), ("a", 1)]);
        let c = Value::map([("b", 1), ("a", 2)]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let hash = |v: &Value| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&b));
    }

    #[test]
    fn paths() {
        let v = Value::map([
            ("name", Value::from("Ada")),
            ("address", Value::map([("city", "London")])),
        ]);
        assert_eq!(
            v.get_path("address.city").and_then(Value::as_text),
            Some("London")
        );
        assert_eq!(v.get_path("address.zip"), None);
        assert_eq!(v.get_path("name.first"), None);
        assert_eq!(v.get_path(""), Some(&v));
        assert_eq!(
            Value::from(Vec::<u8>::from([1, 2])),
            Value::Bytes(vec![1, 2])
        );
    }
}
