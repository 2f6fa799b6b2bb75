//! Order-preserving key encoding: CBOR values to bytes whose bytewise order is the value
//! order of [`value_order`]. Index keys are these encodings concatenated, field by field.
//!
//! Every encoding starts with a class byte; the classes sort in this order:
//!
//! | class  | values                      | rest of the encoding                                |
//! |--------|-----------------------------|-----------------------------------------------------|
//! | `0x08` | `undefined`                 | nothing                                             |
//! | `0x10` | `null`                      | nothing                                             |
//! | `0x20` | `false`                     | nothing                                             |
//! | `0x21` | `true`                      | nothing                                             |
//! | `0x30` | -infinity                   | nothing                                             |
//! | `0x31` | negative numbers            | the positive form below, every byte inverted        |
//! | `0x32` | zero (`0`, `0.0`, `-0.0`)   | nothing                                             |
//! | `0x33` | positive numbers            | exponent `e + 1100` (u16 BE), fraction (u64 BE)     |
//! | `0x34` | +infinity                   | nothing                                             |
//! | `0x35` | NaN (every NaN)             | nothing                                             |
//! | `0x40` | text                        | UTF-8 bytes escaped, then `00 01`                   |
//! | `0x50` | byte string                 | bytes escaped, then `00 01`                         |
//! | `0x60` | array                       | each element's encoding, then `00`                  |
//! | `0x70` | map                         | key, value, ... in canonical entry order, then `00` |
//! | `0x80` | tag                         | tag number (u64 BE), then the tagged item           |
//! | `0x90` | other simple value          | its number (one byte)                               |
//!
//! **Numbers** compare by exact mathematical value across integers and floats: `1`, `1.0` and
//! `1.0e0` are one key, and so are `0`, `0.0` and `-0.0`. A finite non-zero magnitude is
//! written as `1.f × 2^e` with `e` in `-1074..=64` and `f` the bits after the leading one,
//! left-aligned in 64 bits; that covers every CBOR integer (`|n| <= 2^64`) and every `f64`
//! exactly. NaN sorts after +infinity and all NaNs are equal (one key). Bignums (tags 2 and 3)
//! are tags, not numbers.
//!
//! **Text and bytes** escape `00` as `00 FF` and end with `00 01`, which keeps bytewise
//! order (a string sorts before its extensions) and makes every encoding self-delimiting, so
//! concatenated composite keys sort field by field. A text prefix query is the escaped prefix
//! without the terminator.

use std::cmp::Ordering;

use crate::cbor::{Value, encode};

pub(crate) const UNDEFINED: u8 = 0x08;
pub(crate) const NULL: u8 = 0x10;
const FALSE: u8 = 0x20;
const TRUE: u8 = 0x21;
const NEG_INF: u8 = 0x30;
const NEG: u8 = 0x31;
const ZERO: u8 = 0x32;
const POS: u8 = 0x33;
const POS_INF: u8 = 0x34;
const NAN: u8 = 0x35;
pub(crate) const TEXT: u8 = 0x40;
pub(crate) const BYTES: u8 = 0x50;
const ARRAY: u8 = 0x60;
const MAP: u8 = 0x70;
const TAG: u8 = 0x80;
const SIMPLE: u8 = 0x90;

const EXP_BIAS: i32 = 1100;

/// Append the order-preserving encoding of `v` to `out`.
pub fn encode_key_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Undefined => out.push(UNDEFINED),
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Int(i) => number(Num::from_int(i.as_i128()), out),
        Value::Float(f) => number(Num::from_f64(*f), out),
        Value::Text(t) => escaped(TEXT, t.as_bytes(), out),
        Value::Bytes(b) => escaped(BYTES, b, out),
        Value::Array(items) => {
            out.push(ARRAY);
            for item in items {
                encode_key_into(item, out);
            }
            out.push(0);
        }
        Value::Map(entries) => {
            out.push(MAP);
            for (k, v) in canonical_entries(entries) {
                encode_key_into(k, out);
                encode_key_into(v, out);
            }
            out.push(0);
        }
        Value::Tag(t, inner) => {
            out.push(TAG);
            out.extend_from_slice(&t.to_be_bytes());
            encode_key_into(inner, out);
        }
        Value::Simple(s) => {
            out.push(SIMPLE);
            out.push(s.value());
        }
    }
}

/// The order-preserving encoding of a composite key (the fields in order).
pub fn encode_key(fields: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        encode_key_into(f, &mut out);
    }
    out
}

/// The encoding of a text or byte-string prefix: every encoding of a value that starts with
/// `prefix` starts with these bytes. `None` for other values.
pub(crate) fn encode_prefix(prefix: &Value) -> Option<Vec<u8>> {
    let (class, bytes) = match prefix {
        Value::Text(t) => (TEXT, t.as_bytes()),
        Value::Bytes(b) => (BYTES, &b[..]),
        _ => return None,
    };
    let mut out = vec![class];
    escape_into(bytes, &mut out);
    Some(out)
}

/// Map entries in canonical order (bytewise order of the encoded keys).
fn canonical_entries(entries: &[(Value, Value)]) -> Vec<(&Value, &Value)> {
    let mut sorted: Vec<(Vec<u8>, &Value, &Value)> =
        entries.iter().map(|(k, v)| (encode(k), k, v)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.into_iter().map(|(_, k, v)| (k, v)).collect()
}

fn escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

fn escaped(class: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(class);
    escape_into(bytes, out);
    out.extend_from_slice(&[0, 1]);
}

/// A number reduced to sign, binary exponent and fraction.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    NegInf,
    Zero,
    PosInf,
    NaN,
    /// `(negative, e, f)`: magnitude `1.f × 2^e`.
    Finite(bool, i32, u64),
}

impl Num {
    fn from_int(n: i128) -> Num {
        if n == 0 {
            return Num::Zero;
        }
        let mag = n.unsigned_abs();
        let e = 127 - mag.leading_zeros() as i32;
        // Bits below the leading one, left-aligned in 64 bits (e <= 64 for CBOR integers).
        let below = mag - (1u128 << e);
        let f = if e == 0 {
            0
        } else {
            (below << (64 - e)) as u64
        };
        Num::Finite(n < 0, e, f)
    }

    fn from_f64(x: f64) -> Num {
        if x.is_nan() {
            return Num::NaN;
        }
        if x == 0.0 {
            return Num::Zero;
        }
        if x.is_infinite() {
            return if x > 0.0 { Num::PosInf } else { Num::NegInf };
        }
        let bits = x.to_bits();
        let neg = bits >> 63 == 1;
        let exp_field = ((bits >> 52) & 0x7FF) as i32;
        let mant = bits & ((1u64 << 52) - 1);
        if exp_field == 0 {
            // Subnormal: mant × 2^-1074, mant != 0.
            let p = 63 - mant.leading_zeros() as i32;
            let below = mant - (1u64 << p);
            let f = if p == 0 { 0 } else { below << (64 - p) };
            Num::Finite(neg, p - 1074, f)
        } else {
            Num::Finite(neg, exp_field - 1023, mant << 12)
        }
    }
}

fn number(n: Num, out: &mut Vec<u8>) {
    match n {
        Num::NegInf => out.push(NEG_INF),
        Num::Zero => out.push(ZERO),
        Num::PosInf => out.push(POS_INF),
        Num::NaN => out.push(NAN),
        Num::Finite(neg, e, f) => {
            let biased = (e + EXP_BIAS) as u16;
            let mut body = [0u8; 10];
            body[..2].copy_from_slice(&biased.to_be_bytes());
            body[2..].copy_from_slice(&f.to_be_bytes());
            if neg {
                out.push(NEG);
                out.extend(body.iter().map(|b| !b));
            } else {
                out.push(POS);
                out.extend_from_slice(&body);
            }
        }
    }
}

/// The total order of values that key encodings preserve (see the module docs): classes in
/// table order; numbers by exact value; text and bytes bytewise; arrays and maps
/// lexicographically (maps by their canonical entry order); tags by number, then content.
///
/// Written independently of the encoder, as the reference the property tests check it
/// against.
pub fn value_order(a: &Value, b: &Value) -> Ordering {
    let (ca, cb) = (class(a), class(b));
    if ca != cb {
        return ca.cmp(&cb);
    }
    match (a, b) {
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Bytes(x), Value::Bytes(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => lexicographic(x.iter(), y.iter(), value_order),
        (Value::Map(x), Value::Map(y)) => lexicographic(
            canonical_entries(x).into_iter(),
            canonical_entries(y).into_iter(),
            |(ka, va), (kb, vb)| value_order(ka, kb).then_with(|| value_order(va, vb)),
        ),
        (Value::Tag(ta, ia), Value::Tag(tb, ib)) => ta.cmp(tb).then_with(|| value_order(ia, ib)),
        (Value::Simple(x), Value::Simple(y)) => x.cmp(y),
        _ => match (numeric(a), numeric(b)) {
            (Some(x), Some(y)) => compare_numbers(x, y),
            // Same class and not a number: undefined, null, false, true.
            _ => Ordering::Equal,
        },
    }
}

fn lexicographic<T>(
    mut a: impl Iterator<Item = T>,
    mut b: impl Iterator<Item = T>,
    mut cmp: impl FnMut(T, T) -> Ordering,
) -> Ordering {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match cmp(x, y) {
                Ordering::Equal => {}
                o => return o,
            },
        }
    }
}

/// A number as the reference order sees it.
#[derive(Debug, Clone, Copy)]
enum RefNum {
    Int(i128),
    Float(f64),
}

fn numeric(v: &Value) -> Option<RefNum> {
    match v {
        Value::Int(i) => Some(RefNum::Int(i.as_i128())),
        Value::Float(f) => Some(RefNum::Float(*f)),
        _ => None,
    }
}

/// Exact comparison of integers and floats; NaN is above everything and equal to itself.
fn compare_numbers(a: RefNum, b: RefNum) -> Ordering {
    match (a, b) {
        (RefNum::Int(x), RefNum::Int(y)) => x.cmp(&y),
        (RefNum::Float(x), RefNum::Float(y)) => match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            // -0.0 == 0.0 under partial_cmp, as intended.
            _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        },
        (RefNum::Int(x), RefNum::Float(y)) => int_vs_float(x, y),
        (RefNum::Float(x), RefNum::Int(y)) => int_vs_float(y, x).reverse(),
    }
}

/// Compare an integer with a float exactly (no rounding of the integer to f64).
fn int_vs_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() || f == f64::INFINITY {
        return Ordering::Less;
    }
    if f == f64::NEG_INFINITY {
        return Ordering::Greater;
    }
    // |i| <= 2^64 < 2^100: a float beyond that is larger in magnitude than any CBOR integer.
    const LIMIT: f64 = 1.2676506002282294e30; // 2^100
    if f >= LIMIT {
        return Ordering::Less;
    }
    if f <= -LIMIT {
        return Ordering::Greater;
    }
    // Now f's integer part fits i128 exactly.
    let t = f.trunc();
    let ti = t as i128;
    match i.cmp(&ti) {
        Ordering::Equal => {
            let frac = f - t;
            // i == trunc(f): i < f if f has a positive fraction, i > f if negative.
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

fn class(v: &Value) -> u8 {
    match v {
        Value::Undefined => UNDEFINED,
        Value::Null => NULL,
        Value::Bool(false) => FALSE,
        Value::Bool(true) => TRUE,
        Value::Int(_) | Value::Float(_) => 0x30,
        Value::Text(_) => TEXT,
        Value::Bytes(_) => BYTES,
        Value::Array(_) => ARRAY,
        Value::Map(_) => MAP,
        Value::Tag(..) => TAG,
        Value::Simple(_) => SIMPLE,
    }
}

/// The first key after every key that starts with `prefix` (`None`: no such key; the range
/// is unbounded above).
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xFF {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::Int;
    use proptest::prelude::*;

    fn key(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key_into(v, &mut out);
        out
    }

    fn int(n: i128) -> Value {
        Value::Int(Int::try_from(n).expect("in range"))
    }

    #[test]
    fn numbers_order_exactly_across_ints_and_floats() {
        let ordered = [
            Value::Float(f64::NEG_INFINITY),
            int(-(1i128 << 64)),
            Value::Float(-1.8446744073709552e19 / 2.0 - 1.0e6),
            int(i64::MIN as i128),
            int(-2),
            Value::Float(-1.5),
            int(-1),
            Value::Float(-f64::MIN_POSITIVE),
            Value::Float(-5e-324),
            int(0),
            Value::Float(5e-324),
            Value::Float(1e-300),
            Value::Float(0.5),
            int(1),
            Value::Float(1.0000000000000002),
            int(2),
            int(u64::MAX as i128 - 1),
            int(u64::MAX as i128),
            Value::Float(1.8446744073709552e19),
            Value::Float(f64::MAX),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NAN),
        ];
        for w in ordered.windows(2) {
            assert_eq!(value_order(&w[0], &w[1]), Ordering::Less, "{w:?}");
            assert!(key(&w[0]) < key(&w[1]), "{w:?}");
        }
        // One key per mathematical value.
        assert_eq!(key(&int(0)), key(&Value::Float(-0.0)));
        assert_eq!(key(&int(3)), key(&Value::Float(3.0)));
        assert_eq!(key(&Value::Float(f64::NAN)), key(&Value::Float(-f64::NAN)));
        // u64::MAX + 1 == 2^64 as a float; the largest integer is one less.
        assert_eq!(
            key(&int(-(1i128 << 64))),
            key(&Value::Float(-1.8446744073709552e19))
        );
    }

    #[test]
    fn text_orders_bytewise_and_composites_field_by_field() {
        let t = |s: &str| Value::Text(s.into());
        assert!(key(&t("a")) < key(&t("a\0")));
        assert!(key(&t("a\0")) < key(&t("a\u{1}")));
        assert!(key(&t("a")) < key(&t("ab")));
        assert!(key(&t("Z")) < key(&t("a")));
        assert!(key(&t("é")) > key(&t("z")));
        // ("a", 2) < ("a\0", 1): the first field decides.
        assert!(encode_key(&[t("a"), int(2)]) < encode_key(&[t("a\0"), int(1)]));
        let p = encode_prefix(&t("ab")).expect("text");
        assert!(key(&t("abc")).starts_with(&p));
        assert!(!key(&t("a")).starts_with(&p));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF]), None);
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            Just(Value::Undefined),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-(1i128 << 64)..(1i128 << 64)).prop_map(int),
            (-3i64..3).prop_map(Value::from),
            any::<f64>().prop_map(Value::Float),
            prop_oneof![
                Just(0.0),
                Just(-0.0),
                Just(1.0),
                Just(-1.0),
                Just(0.5),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(f64::NAN),
                Just(1.8446744073709552e19),
                Just(9.223372036854776e18),
            ]
            .prop_map(Value::Float),
            "[a-c\u{0}é]{0,4}".prop_map(Value::Text),
            proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xFF)], 0..4)
                .prop_map(Value::Bytes),
            (0u64..3, any::<bool>()).prop_map(|(t, b)| Value::Tag(t, Box::new(Value::Bool(b)))),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c]{0,2}", inner, 0..3).prop_map(|m| {
                    Value::Map(m.into_iter().map(|(k, v)| (Value::Text(k), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn encoding_order_is_value_order(a in arb_value(), b in arb_value()) {
            prop_assert_eq!(key(&a).cmp(&key(&b)), value_order(&a, &b), "{:?} vs {:?}", a, b);
        }

        #[test]
        fn composite_order_is_field_by_field(
            a in proptest::collection::vec(arb_value(), 1..3),
            b in proptest::collection::vec(arb_value(), 1..3),
        ) {
            let expected = lexicographic(a.iter(), b.iter(), value_order);
            prop_assert_eq!(encode_key(&a).cmp(&encode_key(&b)), expected);
        }
    }
}
