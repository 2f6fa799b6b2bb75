//! Property tests of the canonical CBOR codec.

use std::collections::HashSet;

use entidb::cbor::{
    Canonical, CborError, Int, Simple, Value, canonicalize, decode, encode, from_canonical,
    from_slice, item_len, to_canonical_vec, try_encode, validate_canonical,
};
use proptest::collection::vec;

#[path = "support/cbor_oracle.rs"]
mod cbor_oracle;
use cbor_oracle::check_agreement;
use proptest::prelude::*;

/// Integers across the whole range, with extra weight on head-size boundaries.
fn arb_int() -> impl Strategy<Value = Int> {
    let boundaries: Vec<i128> = [0i128, 23, 24, 255, 256, 65535, 65536, 1 << 32, 1 << 63]
        .iter()
        .flat_map(|&b| [b - 1, b, -b - 1, -b])
        .chain([(1 << 64) - 1, -(1 << 64)])
        .collect();
    prop_oneof![
        any::<i64>().prop_map(Int::from),
        any::<u64>().prop_map(Int::from),
        any::<u64>().prop_map(Int::from_negative_arg),
        proptest::sample::select(boundaries)
            .prop_map(|n| Int::try_from(n).expect("boundary in range")),
    ]
}

/// A half-precision value, through the decoder.
fn half(bits: u16) -> f64 {
    let [hi, lo] = bits.to_be_bytes();
    decode(&[0xf9, hi, lo])
        .expect("half")
        .as_f64()
        .expect("float")
}

/// Floats of every class: any f64 (incl. NaN, infinities, subnormals), values exact in f32
/// or f16, and special values.
fn arb_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        any::<f32>().prop_map(f64::from),
        any::<u16>().prop_map(half),
        proptest::sample::select(vec![
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            5e-324,
            f64::MIN_POSITIVE,
            65504.0,
            65505.0,
            2f64.powi(-24),
            2f64.powi(-25),
            f64::from(f32::MAX),
            f64::MAX,
        ]),
    ]
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_int().prop_map(Value::Int),
        arb_float().prop_map(Value::Float),
        any::<String>().prop_map(Value::Text),
        "[a-c]{0,3}".prop_map(Value::Text),
        vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        Just(Value::Undefined),
        any::<u8>()
            .prop_filter_map("valid simple value", Simple::new)
            .prop_map(Value::Simple),
    ]
}

/// Keeps the first entry for each key (by canonical encoding).
fn dedup(entries: Vec<(Value, Value)>) -> Value {
    let mut seen = HashSet::new();
    Value::Map(
        entries
            .into_iter()
            .filter(|(k, _)| seen.insert(encode(k)))
            .collect(),
    )
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(5, 96, 8, |inner| {
        let key = prop_oneof![
            3 => "[a-z]{0,4}".prop_map(Value::Text),
            2 => any::<String>().prop_map(Value::Text),
            3 => arb_int().prop_map(Value::Int),
            1 => inner.clone(),
        ];
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            vec((key, inner.clone()), 0..8).prop_map(dedup),
            (prop_oneof![0u64..40, any::<u64>()], inner)
                .prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
        ]
    })
}

/// Reorders the entries of every map (deterministically from `seed`).
fn shuffle_maps(v: &Value, seed: &mut u64) -> Value {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    match v {
        Value::Array(items) => Value::Array(items.iter().map(|i| shuffle_maps(i, seed)).collect()),
        Value::Tag(t, inner) => Value::Tag(*t, Box::new(shuffle_maps(inner, seed))),
        Value::Map(entries) => {
            let mut entries = entries.clone();
            for i in (1..entries.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                entries.swap(i, j);
            }
            Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (shuffle_maps(k, seed), shuffle_maps(v, seed)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// Valid encodings with a few bytes changed, inserted or removed: mostly invalid, but close
/// to valid, which reaches deeper into the decoder than random bytes.
fn arb_mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_value(),
        vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
    )
        .prop_map(|(v, edits)| {
            let mut bytes = encode(&v);
            for (at, byte, kind) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.push(byte),
                }
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(v in arb_value()) {
        let bytes = encode(&v);
        prop_assert_eq!(decode(&bytes), Ok(v.clone()));
        prop_assert_eq!(validate_canonical(&bytes), Ok(()));
        prop_assert_eq!(canonicalize(&bytes), Ok(bytes.clone()));
        prop_assert_eq!(try_encode(&v), Ok(bytes.clone()));
        prop_assert_eq!(item_len(&bytes), Ok(bytes.len()));
        // The unchecked typed decode of canonical bytes agrees with the checked one.
        prop_assert_eq!(from_canonical::<Value>(&bytes), from_slice::<Value>(&bytes));
        check_agreement(&bytes);
    }

    #[test]
    fn canonical_items_travel_as_tag_24(v in arb_value()) {
        let doc = Canonical::from_value(&v).expect("encodable");
        prop_assert_eq!(doc.as_bytes(), &encode(&v)[..]);
        prop_assert_eq!(doc.to_value(), Ok(v.clone()));
        // In CBOR: tag 24 over the bytes, read back to the same bytes.
        let wire = to_canonical_vec(&doc).expect("serialize");
        prop_assert_eq!(&wire, &encode(&Value::Tag(24, Box::new(Value::Bytes(doc.to_vec())))));
        let back: Canonical = from_slice(&wire).expect("deserialize");
        prop_assert_eq!(&back, &doc);
        prop_assert_eq!(from_canonical::<Canonical>(&wire), Ok(doc.clone()));
        prop_assert_eq!(Canonical::from_cbor(&encode(&v)), Ok(doc));
    }

    #[test]
    fn map_order_does_not_matter(v in arb_value(), seed in 1u64..) {
        let mut seed = seed;
        let shuffled = shuffle_maps(&v, &mut seed);
        prop_assert_eq!(encode(&shuffled), encode(&v));
        prop_assert_eq!(&shuffled, &v);
    }

    #[test]
    fn arbitrary_bytes_agree(bytes in vec(any::<u8>(), 0..64)) {
        check_agreement(&bytes);
    }

    #[test]
    fn mutated_encodings_agree(bytes in arb_mutated()) {
        check_agreement(&bytes);
    }

    #[test]
    fn non_canonical_rewrites_are_fixed(v in arb_value(), pad in any::<bool>()) {
        // Re-encode the first head with a longer argument, or wrap in an indefinite array.
        let canonical = encode(&v);
        let mut loose = Vec::new();
        if pad && canonical[0] & 0x1f < 24 && canonical[0] >> 5 != 7 {
            loose.push((canonical[0] & 0xe0) | 24);
            loose.push(canonical[0] & 0x1f);
            loose.extend_from_slice(&canonical[1..]);
        } else {
            loose.push(0x9f);
            loose.extend_from_slice(&canonical);
            loose.push(0xff);
        }
        let expected = if loose[0] == 0x9f { encode(&Value::Array(vec![v.clone()])) } else { canonical };
        let strict = validate_canonical(&loose);
        let is_style_error = matches!(strict, Err(CborError::NotCanonical { offset: 0, .. }));
        prop_assert!(is_style_error, "{:?}", strict);
        prop_assert_eq!(canonicalize(&loose), Ok(expected));
        check_agreement(&loose);
    }
}
