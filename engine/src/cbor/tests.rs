//! Unit tests of decoding, validation and canonicalization.

use super::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("test hex")
}

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

/// Asserts that `input` is rejected by every entry point with `expected`
/// (validate_canonical may report a different, earlier error only if given).
#[track_caller]
fn assert_rejected(input: &str, expected: CborError) {
    let bytes = h(input);
    assert_eq!(decode(&bytes), Err(expected.clone()), "decode {input}");
    assert_eq!(
        canonicalize(&bytes),
        Err(expected.clone()),
        "canonicalize {input}"
    );
    assert_eq!(validate(&bytes), Err(expected.clone()), "validate {input}");
    assert_eq!(
        validate_canonical(&bytes),
        Err(expected),
        "validate_canonical {input}"
    );
}

/// Asserts that `input` is valid but not canonical for `reason` (at `offset`), and that
/// canonicalize turns it into `canonical`.
#[track_caller]
fn assert_fixed(input: &str, offset: usize, reason: &str, canonical: &str) {
    let bytes = h(input);
    match validate_canonical(&bytes) {
        Err(CborError::NotCanonical {
            offset: o,
            reason: r,
        }) => {
            assert_eq!((o, r), (offset, reason), "{input}");
        }
        other => panic!("{input}: expected NotCanonical, got {other:?}"),
    }
    assert!(!is_canonical(&bytes));
    let fixed = canonicalize(&bytes).expect("canonicalize");
    assert_eq!(hx(&fixed), canonical, "{input}");
    assert_eq!(validate_canonical(&fixed), Ok(()));
    assert_eq!(decode(&bytes), decode(&fixed));
    assert_eq!(encode(&decode(&bytes).expect("decode")), fixed);
}

const SHORTEST: &str = "integer, length or tag not in the shortest form";
const FLOAT: &str = "float not in the shortest form that represents it exactly";
const NAN: &str = "NaN not encoded as f97e00";
const ORDER: &str = "map keys not in bytewise lexicographic order";

#[test]
fn non_canonical_inputs_are_named_and_fixed() {
    assert_fixed("1801", 0, SHORTEST, "01");
    assert_fixed("1817", 0, SHORTEST, "17");
    assert_fixed("190018", 0, SHORTEST, "1818");
    assert_fixed("1a000000ff", 0, SHORTEST, "18ff");
    assert_fixed("1b00000000ffffffff", 0, SHORTEST, "1affffffff");
    assert_fixed("3800", 0, SHORTEST, "20");
    assert_fixed("580100", 0, SHORTEST, "4100");
    assert_fixed("7800", 0, SHORTEST, "60");
    assert_fixed("980100", 0, SHORTEST, "8100");
    assert_fixed("b9000100f6", 0, SHORTEST, "a100f6");
    assert_fixed("d80100", 0, SHORTEST, "c100");
    assert_fixed("82180102", 1, SHORTEST, "820102");
    assert_fixed("9f01ff", 0, "indefinite-length array", "8101");
    assert_fixed("9fff", 0, "indefinite-length array", "80");
    assert_fixed("5f41014102ff", 0, "indefinite-length string", "420102");
    assert_fixed("5fff", 0, "indefinite-length string", "40");
    assert_fixed("7f6161626263ff", 0, "indefinite-length string", "63616263");
    assert_fixed("bf0102ff", 0, "indefinite-length map", "a10102");
    assert_fixed("a202000100", 3, ORDER, "a201000200");
    assert_fixed("a2616200616100", 4, ORDER, "a2616100616200");
    // Shorter keys sort first even if their first content byte is larger.
    assert_fixed("a2626161006162f6", 5, ORDER, "a26162f662616100");
    assert_fixed("fa3fc00000", 0, FLOAT, "f93e00");
    assert_fixed("fb3ff8000000000000", 0, FLOAT, "f93e00");
    assert_fixed("fb40f86a0000000000", 0, FLOAT, "fa47c35000");
    assert_fixed("fa7f800000", 0, FLOAT, "f97c00");
    assert_fixed("fb8000000000000000", 0, FLOAT, "f98000");
    assert_fixed("f97e01", 0, NAN, "f97e00");
    assert_fixed("f9fe00", 0, NAN, "f97e00");
    assert_fixed("fa7fc00000", 0, NAN, "f97e00");
    assert_fixed("fb7ff8000000000001", 0, NAN, "f97e00");
    // Nested: the inner map is fixed and then the outer one is sorted.
    assert_fixed(
        "bf6162bf0201ff616101ff",
        0,
        "indefinite-length map",
        "a26161016162a10201",
    );
}

#[test]
fn canonical_inputs_pass_through() {
    for input in [
        "00",
        "17",
        "1818",
        "1bffffffffffffffff",
        "3bffffffffffffffff",
        "c249010000000000000000",
        "f90001",
        "f97bff",
        "fa47c35000",
        "fb3ff199999999999a",
        "f97e00",
        "f97c00",
        "f9fc00",
        "f0",
        "f8ff",
        "f7",
        "a201020304",
        "a26161016162820203",
        "d82076687474703a2f2f7777772e",
    ] {
        let bytes = h(input);
        if input.starts_with("d820") {
            // Truncated text: declared 22 bytes, 13 present.
            assert_eq!(
                validate_canonical(&bytes),
                Err(CborError::LengthTooLarge { offset: 2, len: 22 })
            );
            continue;
        }
        assert_eq!(validate_canonical(&bytes), Ok(()), "{input}");
        assert!(matches!(
            canonicalize_cow(&bytes),
            Ok(std::borrow::Cow::Borrowed(_))
        ));
        assert_eq!(encode(&decode(&bytes).expect("decode")), bytes, "{input}");
    }
}

#[test]
fn map_key_order_is_bytewise() {
    // 10, 100, -1, "z", "aa", [100], false: 0a < 1864 < 20 < 617a < 626161 < 811864 < f4.
    let sorted = "a7 0a00 186401 2002 617a03 62616104 81186405 f406";
    assert_eq!(validate_canonical(&h(sorted)), Ok(()));
    let unsorted = "a7 f406 81186405 62616104 617a03 2002 186401 0a00";
    assert_fixed(unsorted, 3, ORDER, &sorted.replace(' ', ""));
    let v = decode(&h(unsorted)).expect("decode");
    // Decoded maps are in canonical order.
    let keys: Vec<String> = v
        .as_map()
        .expect("map")
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(
        keys,
        ["10", "100", "-1", "\"z\"", "\"aa\"", "[100]", "false"]
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    assert_rejected("a2 0100 0100", CborError::DuplicateMapKey { offset: 3 });
    assert_rejected(
        "a3 0100 0200 0100",
        CborError::DuplicateMapKey { offset: 5 },
    );
    assert_rejected("a2 616100 616101", CborError::DuplicateMapKey { offset: 4 });
    assert_rejected("bf 0100 0100 ff", CborError::DuplicateMapKey { offset: 3 });
    // Same key once canonicalized: padded integer, half vs double, two NaNs, nested maps in
    // different order, indefinite vs definite strings.
    assert_rejected("a2 0100 180100", CborError::DuplicateMapKey { offset: 3 });
    assert_rejected(
        "a2 f93c0000 fb3ff000000000000000",
        CborError::DuplicateMapKey { offset: 5 },
    );
    assert_rejected(
        "a2 f97e0000 fa7fc0000100",
        CborError::DuplicateMapKey { offset: 5 },
    );
    assert_rejected(
        "a2 a2010002f6 00 a202f60100 00",
        CborError::DuplicateMapKey { offset: 7 },
    );
    assert_rejected(
        "a2 6161f6 7f6161ff f6",
        CborError::DuplicateMapKey { offset: 4 },
    );
    // Distinct: 0.0 and -0.0, 1 and 1.0, tag 2 bignum and the integer it denotes.
    assert!(decode(&h("a2 f9000000 f9800000")).is_ok());
    assert!(decode(&h("a2 0100 f93c0000")).is_ok());
    assert!(decode(&h("a2 0100 c2410100")).is_ok());
}

fn nested_arrays(n: usize) -> Vec<u8> {
    let mut bytes = vec![0x81; n - 1];
    bytes.push(0x80);
    bytes
}

#[test]
fn depth_limit() {
    let ok = nested_arrays(MAX_DEPTH);
    assert_eq!(validate_canonical(&ok), Ok(()));
    assert_eq!(encode(&decode(&ok).expect("decode")), ok);
    assert_eq!(item_len(&ok), Ok(MAX_DEPTH));
    let too_deep = CborError::TooDeep {
        offset: MAX_DEPTH,
        limit: MAX_DEPTH,
    };
    let deep = nested_arrays(MAX_DEPTH + 1);
    assert_rejected(&hx(&deep), too_deep.clone());
    assert_eq!(item_len(&deep), Err(too_deep.clone()));
    // Maps, tags and indefinite arrays count too.
    let mut mixed = Vec::new();
    for i in 0..=MAX_DEPTH {
        mixed.extend_from_slice(match i % 3 {
            0 => &[0xa1, 0x00][..],
            1 => &[0xc1][..],
            _ => &[0x9f][..],
        });
    }
    mixed.push(0x00);
    assert_eq!(
        decode(&mixed),
        Err(CborError::TooDeep {
            offset: 342,
            limit: MAX_DEPTH
        })
    );
    // A million levels fail fast without exhausting the stack.
    let huge = nested_arrays(1_000_000);
    assert_eq!(decode(&huge), Err(too_deep.clone()));
    assert_eq!(validate_canonical(&huge), Err(too_deep));
}

#[test]
fn huge_declared_lengths_fail_fast() {
    let cases = [
        ("5b7fffffffffffffff", 0x7fff_ffff_ffff_ffff),
        ("5bffffffffffffffff00", u64::MAX),
        ("7bffffffffffffffff", u64::MAX),
        ("9b8000000000000000", 1 << 63),
        ("9bffffffffffffffff0000", u64::MAX),
        ("bb8000000000000000", 1 << 63),
        ("ba0000000201", 2),
        ("8200", 2),
    ];
    for (input, len) in cases {
        assert_rejected(input, CborError::LengthTooLarge { offset: 0, len });
    }
    // Inside indefinite strings and nested items.
    assert_rejected(
        "5f5affffffff00ff",
        CborError::LengthTooLarge {
            offset: 1,
            len: 0xffff_ffff,
        },
    );
    assert_rejected(
        "819bffffffffffffffff",
        CborError::LengthTooLarge {
            offset: 1,
            len: u64::MAX,
        },
    );
}

#[test]
fn malformed_inputs_are_rejected() {
    use CborError as E;
    assert_rejected("", E::UnexpectedEnd { offset: 0 });
    assert_rejected("1a0102", E::UnexpectedEnd { offset: 0 });
    assert_rejected("9f01", E::UnexpectedEnd { offset: 2 });
    assert_rejected("0000", E::TrailingBytes { offset: 1 });
    assert_rejected(
        "1c",
        E::ReservedAdditionalInfo {
            offset: 0,
            byte: 0x1c,
        },
    );
    assert_rejected(
        "81fe",
        E::ReservedAdditionalInfo {
            offset: 1,
            byte: 0xfe,
        },
    );
    assert_rejected("ff", E::UnexpectedBreak { offset: 0 });
    assert_rejected("81ff", E::UnexpectedBreak { offset: 1 });
    assert_rejected("bf01ff", E::UnexpectedBreak { offset: 2 });
    assert_rejected("a1", E::LengthTooLarge { offset: 0, len: 1 });
    assert_rejected("bf00", E::UnexpectedEnd { offset: 2 });
    assert_rejected("5f6161ff", E::InvalidIndefiniteChunk { offset: 1 });
    assert_rejected("5f00ff", E::InvalidIndefiniteChunk { offset: 1 });
    assert_rejected("7f7fffff", E::InvalidIndefiniteChunk { offset: 1 });
    assert_rejected(
        "1f",
        E::InvalidIndefiniteLength {
            offset: 0,
            major: 0,
        },
    );
    assert_rejected(
        "3f",
        E::InvalidIndefiniteLength {
            offset: 0,
            major: 1,
        },
    );
    assert_rejected(
        "df00",
        E::InvalidIndefiniteLength {
            offset: 0,
            major: 6,
        },
    );
    assert_rejected("62c328", E::InvalidUtf8 { offset: 1 });
    assert_rejected("63e6b0", E::LengthTooLarge { offset: 0, len: 3 });
    assert_rejected("7f6161 62c328 ff", E::InvalidUtf8 { offset: 4 });
    // A character split across chunks: each chunk must be valid UTF-8 (RFC 8949 §3.2.3).
    assert_rejected("7f61c361bcff", E::InvalidUtf8 { offset: 2 });
    assert_rejected(
        "f800",
        E::InvalidSimple {
            offset: 0,
            value: 0,
        },
    );
    assert_rejected(
        "f818",
        E::InvalidSimple {
            offset: 0,
            value: 24,
        },
    );
    assert_rejected(
        "f81f",
        E::InvalidSimple {
            offset: 0,
            value: 31,
        },
    );
    // A style violation earlier does not hide a real defect later.
    assert_eq!(
        validate_canonical(&h("9f 1801 62c328 ff")),
        Err(E::InvalidUtf8 { offset: 4 })
    );
    assert_eq!(
        validate_canonical(&h("1801 00")),
        Err(E::TrailingBytes { offset: 2 })
    );
}

#[test]
fn decoded_values() {
    let simple = |n| Value::Simple(Simple::new(n).expect("valid simple"));
    let cases = [
        ("f4", Value::Bool(false)),
        ("f5", Value::Bool(true)),
        ("f6", Value::Null),
        ("f7", Value::Undefined),
        ("f0", simple(16)),
        ("e0", simple(0)),
        ("f820", simple(32)),
        ("3bffffffffffffffff", Value::Int(Int::MIN)),
        ("c24101", Value::Tag(2, Box::new(Value::Bytes(vec![1])))),
        ("5f4101420203ff", Value::Bytes(vec![1, 2, 3])),
        ("7f61616162ff", Value::from("ab")),
        ("f97e00", Value::Float(f64::NAN)),
        ("fb0000000000000001", Value::Float(5e-324)),
    ];
    for (input, expected) in cases {
        let v = decode(&h(input)).expect(input);
        assert_eq!(v, expected, "{input}");
        assert_eq!(try_encode(&v), canonicalize(&h(input)), "{input}");
    }
    let nan = decode(&h("fb7ff8000000000001")).expect("nan");
    assert_eq!(nan.as_f64().map(f64::to_bits), Some(f64::NAN.to_bits()));
}

#[test]
fn item_len_steps_through_a_sequence() {
    let seq = h("01 8202 03 a1 6161 f6 5f 41 00 ff 19 0001");
    let mut offsets = Vec::new();
    let mut pos = 0;
    while pos < seq.len() {
        offsets.push(pos);
        pos += item_len(&seq[pos..]).expect("item");
    }
    assert_eq!(offsets, [0, 1, 4, 8, 12]);
    assert_eq!(
        item_len(&h("8201")),
        Err(CborError::LengthTooLarge { offset: 0, len: 2 })
    );
    assert_eq!(
        item_len(&h("ff")),
        Err(CborError::UnexpectedBreak { offset: 0 })
    );
}

#[test]
fn diagnostic_notation() {
    let v = decode(&h(
        "a3 01 c1fb41d452d9ec200000 6161 83 f97c00 f9fc00 f97e00 20 f0",
    ))
    .expect("decode");
    assert_eq!(
        v.to_string(),
        "{1: 1(1363896240.5), -1: simple(16), \"a\": [Infinity, -Infinity, NaN]}"
    );
    let v = Value::array([
        Value::Bytes(vec![0, 0xff]),
        Value::from("q\"\\\n"),
        Value::Undefined,
        Value::Float(-0.0),
        Value::Float(1e300),
    ]);
    assert_eq!(
        v.to_string(),
        "[h'00ff', \"q\\\"\\\\\\u000a\", undefined, -0.0, 1e300]"
    );
}

#[test]
fn errors_read_well() {
    let e = decode(&h("62c328")).expect_err("invalid");
    assert_eq!(
        e.to_string(),
        "invalid CBOR at byte 1: text string is not valid UTF-8"
    );
    assert_eq!(e.offset(), Some(1));
    let e = validate_canonical(&h("1801")).expect_err("not canonical");
    assert_eq!(
        e.to_string(),
        "non-canonical CBOR at byte 0: integer, length or tag not in the shortest form"
    );
    assert_eq!(
        decode(&h("1a01")).expect_err("short").to_string(),
        "malformed CBOR at byte 0: unexpected end of input"
    );
}

mod key_order {
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), 0u8..4, any::<u8>()], 0..40)
    }

    proptest! {
        /// The walker's short-key comparison is bytewise order, for keys on both sides of
        /// its 16-byte switch to `memcmp`, prefixes of each other and zero bytes included.
        #[test]
        fn is_bytewise(a in key(), b in key()) {
            prop_assert_eq!(super::super::decode::cmp_short(&a, &b), a.cmp(&b));
            let prefix = &a[..a.len() / 2];
            prop_assert_eq!(super::super::decode::cmp_short(prefix, &a), prefix.cmp(&a[..]));
            prop_assert_eq!(super::super::decode::cmp_short(&a, prefix), a[..].cmp(prefix));
        }
    }
}

/// Text checked by the ASCII shortcut and by the full validator: multi-byte characters at
/// every position are accepted, a bad byte after an ASCII run is reported where it is.
#[test]
fn text_validation_beyond_ascii() {
    for text in [
        "",
        "a",
        "é",
        "aé",
        "éa",
        "caf\u{e9} au lait",
        "\u{1f600}xyz",
        "abcdefghijklmnop\u{7ff}",
    ] {
        let bytes = encode(&Value::from(text));
        assert_eq!(decode(&bytes).expect("valid"), Value::from(text));
        validate_canonical(&bytes).expect("canonical");
    }
    // "abcdefgh" then a lone continuation byte: 0x69 = text(9).
    let e = decode(&h("696162636465666768 80".replace(' ', "").as_str())).expect_err("bad utf-8");
    assert_eq!(e.offset(), Some(9));
    let e = validate(&h("6261ff")).expect_err("bad utf-8");
    assert_eq!(e.offset(), Some(2));
    // Bad bytes after a multi-byte character, and a character cut at the end, also through
    // the canonical check: the ASCII shortcut does not let them through.
    for (bad, at) in [("63c3a9ff", 3), ("63 61 e2 82", 2), ("62e282", 1)] {
        for e in [
            decode(&h(bad)).expect_err(bad),
            validate_canonical(&h(bad)).expect_err(bad),
        ] {
            assert_eq!(e.offset(), Some(at), "{bad}: {e}");
        }
    }
}
