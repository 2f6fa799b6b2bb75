//! RFC 8949 Appendix A test vectors (`shared/testdata/cbor/appendix_a.json`).

use std::path::PathBuf;

use base64::Engine as _;
use entidb::cbor::{CborError, Int, Simple, Value, decode, encode, validate_canonical};
use serde_json::Value as Json;

/// The shared test-data directory: `$ENTIDB_SHARED_DIR`, or `shared/` beside the repository.
fn shared_dir() -> PathBuf {
    match std::env::var_os("ENTIDB_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")),
    }
}

fn load(name: &str) -> Vec<Json> {
    let path = shared_dir().join("testdata/cbor").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read CBOR test vectors at {}: {e}. Set ENTIDB_SHARED_DIR to the shared \
             directory that holds testdata/cbor/.",
            path.display()
        )
    });
    match serde_json::from_str(&text) {
        Ok(Json::Array(entries)) => entries,
        other => panic!("{} is not a JSON array: {other:?}", path.display()),
    }
}

struct Vector {
    hex: String,
    bytes: Vec<u8>,
    roundtrip: bool,
    decoded: Option<Json>,
    diagnostic: Option<String>,
    /// The literal of a numeric `decoded` value, as written in the file (serde_json reads
    /// integers beyond 64 bits as floats, and may round floats differently from Rust).
    number_literal: Option<String>,
}

fn vectors() -> Vec<Vector> {
    let raw = std::fs::read_to_string(shared_dir().join("testdata/cbor/appendix_a.json"))
        .expect("appendix_a.json was just read");
    let vectors: Vec<Vector> = load("appendix_a.json")
        .into_iter()
        .map(|e| {
            let hex = e["hex"].as_str().expect("hex").to_owned();
            let bytes = hex::decode(&hex).expect("valid hex");
            let b64 = base64::engine::general_purpose::STANDARD
                .decode(e["cbor"].as_str().expect("cbor"))
                .expect("valid base64");
            assert_eq!(bytes, b64, "hex and cbor fields disagree for {hex}");
            let number_literal = match e.get("decoded") {
                Some(Json::Number(n)) => {
                    let lit = raw_decoded_literal(&raw, &hex).expect("number literal in file");
                    let as_float: f64 = lit.parse().expect("number literal");
                    let json = n.as_f64().expect("number");
                    assert!(
                        (as_float - json).abs() <= json.abs() * 1e-15,
                        "{hex}: {lit} vs {n}"
                    );
                    Some(lit)
                }
                _ => None,
            };
            Vector {
                number_literal,
                hex,
                bytes,
                roundtrip: e["roundtrip"].as_bool().expect("roundtrip"),
                decoded: e.get("decoded").cloned(),
                diagnostic: e
                    .get("diagnostic")
                    .and_then(Json::as_str)
                    .map(str::to_owned),
            }
        })
        .collect();
    assert!(
        vectors.len() >= 80,
        "expected the full appendix, got {} vectors",
        vectors.len()
    );
    vectors
}

/// RFC 7049 listed `f818` as simple(24); RFC 8949 §3.3 made two-byte simple values below 32
/// not well-formed, and `fail.json` lists it. It is checked in its own test below.
const RFC7049_ONLY: &str = "f818";

/// Builds the value a bignum tag denotes from the magnitude in the tag's byte string.
fn bignum_to_string(tag: u64, bytes: &[u8]) -> String {
    // Decimal of an arbitrary-size big-endian magnitude, by repeated division.
    let mut digits = Vec::new();
    let mut n: Vec<u8> = bytes.to_vec();
    while n.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in &mut n {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(char::from(b'0' + rem as u8));
    }
    if digits.is_empty() {
        digits.push('0');
    }
    let magnitude: String = digits.iter().rev().collect();
    match tag {
        2 => magnitude,
        // Tag 3 denotes -1 - n; add 1 to the decimal magnitude.
        3 => {
            let mut d: Vec<u8> = magnitude.bytes().map(|c| c - b'0').collect();
            let mut i = d.len();
            loop {
                if i == 0 {
                    d.insert(0, 1);
                    break;
                }
                i -= 1;
                if d[i] == 9 {
                    d[i] = 0;
                } else {
                    d[i] += 1;
                    break;
                }
            }
            format!(
                "-{}",
                d.iter().map(|x| char::from(b'0' + x)).collect::<String>()
            )
        }
        _ => panic!("not a bignum tag: {tag}"),
    }
}

/// Asserts that `value` is the integer written in decimal as `text`: an [`Int`], or a bignum
/// tag for integers outside CBOR's native range.
#[track_caller]
fn assert_integer(value: &Value, text: &str, ctx: &str) {
    if let Some(i) = value.as_int() {
        assert_eq!(i.as_i128().to_string(), text, "{ctx}");
    } else if let Some((tag @ (2 | 3), inner)) = value.as_tag() {
        let bytes = inner.as_bytes().expect("bignum tag holds a byte string");
        assert_eq!(bignum_to_string(tag, bytes), text, "{ctx}");
        // Only integers that do not fit an Int may arrive as bignums.
        assert!(
            text.parse::<i128>()
                .map_or(true, |n| Int::try_from(n).is_err()),
            "{ctx}"
        );
    } else {
        panic!("{ctx}: expected the integer {text}, got {value}");
    }
}

/// serde_json (without `arbitrary_precision`) reads integers beyond 64 bits as floats; this
/// finds the literal of the `decoded` field of the entry with `hex` in the raw file, so such
/// integers can be compared exactly.
fn raw_decoded_literal(raw: &str, hex: &str) -> Option<String> {
    let start = raw.find(&format!("\"hex\": \"{hex}\""))?;
    let rest = &raw[start + hex.len() + 8..];
    let entry = &rest[..rest.find("\"hex\"").unwrap_or(rest.len())];
    let decoded = entry.find("\"decoded\":")?;
    let literal = entry[decoded + 10..].trim_start();
    let end = literal
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
        .unwrap_or(literal.len());
    (end > 0).then(|| literal[..end].to_owned())
}

/// Asserts that `value` is what the JSON `expected` describes.
#[track_caller]
fn assert_matches_json(value: &Value, expected: &Json, ctx: &str) {
    match expected {
        Json::Null => assert!(value.is_null(), "{ctx}: expected null, got {value}"),
        Json::Bool(b) => assert_eq!(value.as_bool(), Some(*b), "{ctx}"),
        Json::Number(n) => {
            if n.is_f64() {
                let x = n.as_f64().expect("f64");
                let got = value
                    .as_f64()
                    .unwrap_or_else(|| panic!("{ctx}: expected the float {x}, got {value}"));
                // serde_json may be one ulp off; top-level numbers are compared exactly above.
                assert!((got - x).abs() <= x.abs() * 1e-15, "{ctx}: {got} != {x}");
            } else {
                assert_integer(value, &n.to_string(), ctx);
            }
        }
        Json::String(s) => assert_eq!(value.as_text(), Some(s.as_str()), "{ctx}"),
        Json::Array(items) => {
            let got = value
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: expected array"));
            assert_eq!(got.len(), items.len(), "{ctx}");
            for (g, e) in got.iter().zip(items) {
                assert_matches_json(g, e, ctx);
            }
        }
        Json::Object(map) => {
            let got = value
                .as_map()
                .unwrap_or_else(|| panic!("{ctx}: expected map"));
            assert_eq!(got.len(), map.len(), "{ctx}");
            for (k, e) in map {
                let v = value
                    .get(k)
                    .unwrap_or_else(|| panic!("{ctx}: missing key {k:?}"));
                assert_matches_json(v, e, ctx);
            }
        }
    }
}

/// A tiny parser for the diagnostic notation used by the vectors: numbers, `Infinity`,
/// `-Infinity`, `NaN`, `true`, `false`, `null`, `undefined`, `simple(N)`, `N(item)`, `h'..'`,
/// `"text"`, `[..]`, `{k: v, ..}` and indefinite byte strings `(_ h'..', ..)`.
struct Diag<'a> {
    s: &'a str,
}

impl Diag<'_> {
    fn parse(s: &str) -> Value {
        let mut p = Diag { s: s.trim() };
        let v = p.item();
        assert!(p.s.trim().is_empty(), "unparsed diagnostic rest {:?}", p.s);
        v
    }

    fn eat(&mut self, prefix: &str) -> bool {
        self.s = self.s.trim_start();
        match self.s.strip_prefix(prefix) {
            Some(rest) => {
                self.s = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, prefix: &str) {
        assert!(self.eat(prefix), "expected {prefix:?} at {:?}", self.s);
    }

    fn number_text(&mut self) -> &str {
        let end = self
            .s
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
            .unwrap_or(self.s.len());
        let (num, rest) = self.s.split_at(end);
        self.s = rest;
        num
    }

    fn item(&mut self) -> Value {
        for (word, value) in [
            ("Infinity", Value::Float(f64::INFINITY)),
            ("-Infinity", Value::Float(f64::NEG_INFINITY)),
            ("NaN", Value::Float(f64::NAN)),
            ("true", Value::Bool(true)),
            ("false", Value::Bool(false)),
            ("null", Value::Null),
            ("undefined", Value::Undefined),
        ] {
            if self.eat(word) {
                return value;
            }
        }
        if self.eat("simple(") {
            let n: u8 = self.number_text().parse().expect("simple number");
            self.expect(")");
            return Value::Simple(Simple::new(n).expect("valid simple value"));
        }
        if self.eat("h'") {
            let end = self.s.find('\'').expect("closing quote");
            let bytes = hex::decode(&self.s[..end]).expect("hex");
            self.s = &self.s[end + 1..];
            return Value::Bytes(bytes);
        }
        if self.eat("\"") {
            let end = self.s.find('"').expect("closing quote");
            let text = self.s[..end].to_owned();
            self.s = &self.s[end + 1..];
            return Value::Text(text);
        }
        if self.eat("(_") {
            let mut bytes = Vec::new();
            loop {
                match self.item() {
                    Value::Bytes(chunk) => bytes.extend(chunk),
                    other => panic!("unexpected chunk {other}"),
                }
                if self.eat(")") {
                    return Value::Bytes(bytes);
                }
                self.expect(",");
            }
        }
        if self.eat("[") {
            let mut items = Vec::new();
            while !self.eat("]") {
                items.push(self.item());
                self.eat(",");
            }
            return Value::Array(items);
        }
        if self.eat("{") {
            let mut entries = Vec::new();
            while !self.eat("}") {
                let k = self.item();
                self.expect(":");
                let v = self.item();
                entries.push((k, v));
                self.eat(",");
            }
            return Value::Map(entries);
        }
        self.s = self.s.trim_start();
        let num = self.number_text().to_owned();
        assert!(!num.is_empty(), "cannot parse diagnostic at {:?}", self.s);
        if self.eat("(") {
            let tag: u64 = num.parse().expect("tag number");
            let inner = self.item();
            self.expect(")");
            return Value::Tag(tag, Box::new(inner));
        }
        if num.contains(['.', 'e', 'E']) {
            Value::Float(num.parse().expect("float"))
        } else {
            let n: i128 = num.parse().expect("integer");
            Value::Int(Int::try_from(n).expect("integer in range"))
        }
    }
}

#[test]
fn appendix_a_vectors() {
    let mut checked_json = 0;
    let mut checked_diag = 0;
    let mut roundtrips = 0;
    for v in vectors().iter().filter(|v| v.hex != RFC7049_ONLY) {
        let ctx = &v.hex;
        let value = decode(&v.bytes).unwrap_or_else(|e| panic!("{ctx}: decode failed: {e}"));
        if let Some(lit) = &v.number_literal {
            if lit.contains(['.', 'e', 'E']) {
                let x: f64 = lit.parse().expect("float literal");
                let got = value
                    .as_f64()
                    .unwrap_or_else(|| panic!("{ctx}: expected {lit}"));
                assert_eq!(got.to_bits(), x.to_bits(), "{ctx}: {got} != {lit}");
            } else {
                assert_integer(&value, lit, ctx);
            }
            checked_json += 1;
        } else if let Some(expected) = &v.decoded {
            assert_matches_json(&value, expected, ctx);
            checked_json += 1;
        }
        if let Some(diag) = &v.diagnostic {
            let expected = Diag::parse(diag);
            assert_eq!(value, expected, "{ctx}: decoded {value}, diagnostic {diag}");
            // Display writes diagnostic notation; it matches except for the indefinite form.
            if !diag.starts_with("(_") {
                assert_eq!(value.to_string(), *diag, "{ctx}");
            }
            checked_diag += 1;
        }
        let encoded = encode(&value);
        if v.roundtrip {
            assert_eq!(
                hex::encode(&encoded),
                v.hex,
                "{ctx}: encode(decode(x)) != x"
            );
            assert_eq!(validate_canonical(&v.bytes), Ok(()), "{ctx}");
            roundtrips += 1;
        } else {
            assert_eq!(
                validate_canonical(&encoded),
                Ok(()),
                "{ctx}: re-encoding not canonical"
            );
            assert_eq!(decode(&encoded).as_ref(), Ok(&value), "{ctx}");
            assert_ne!(encoded, v.bytes, "{ctx}: marked as not round-tripping");
            assert!(
                matches!(
                    validate_canonical(&v.bytes),
                    Err(CborError::NotCanonical { .. })
                ),
                "{ctx}: non-canonical input accepted as canonical"
            );
        }
    }
    assert!(
        checked_json >= 50,
        "only {checked_json} decoded values checked"
    );
    assert!(
        checked_diag >= 20,
        "only {checked_diag} diagnostics checked"
    );
    assert!(roundtrips >= 60, "only {roundtrips} round trips checked");
    let numbers = vectors()
        .iter()
        .filter(|v| v.number_literal.is_some())
        .count();
    assert!(
        numbers >= 30,
        "only {numbers} numbers checked against their literal"
    );
}

/// `f818` is in RFC 7049's Appendix A as simple(24), but RFC 8949 §3.3 says a two-byte simple
/// value below 32 is not well-formed (and RFC 8949's own appendix dropped it); `fail.json`
/// lists it. We follow RFC 8949: it must be rejected.
#[test]
fn rfc7049_simple_24_is_rejected() {
    let vector = vectors().into_iter().find(|v| v.hex == RFC7049_ONLY);
    let vector = vector.expect("appendix_a.json no longer lists f818; update this test");
    assert_eq!(vector.diagnostic.as_deref(), Some("simple(24)"));
    let expected = CborError::InvalidSimple {
        offset: 0,
        value: 24,
    };
    assert_eq!(decode(&vector.bytes), Err(expected.clone()));
    assert_eq!(validate_canonical(&vector.bytes), Err(expected.clone()));
    assert_eq!(entidb::cbor::canonicalize(&vector.bytes), Err(expected));
    let fail = load("fail.json");
    assert!(
        fail.iter().any(|e| e["hex"] == RFC7049_ONLY),
        "fail.json should list f818"
    );
}

#[test]
fn bignum_helper() {
    assert_eq!(
        bignum_to_string(2, &[1, 0, 0, 0, 0, 0, 0, 0, 0]),
        "18446744073709551616"
    );
    assert_eq!(
        bignum_to_string(3, &[1, 0, 0, 0, 0, 0, 0, 0, 0]),
        "-18446744073709551617"
    );
    assert_eq!(bignum_to_string(3, &[]), "-1");
    assert_eq!(bignum_to_string(3, &[9]), "-10");
}
