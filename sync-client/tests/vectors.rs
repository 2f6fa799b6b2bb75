//! The protocol's test vectors (`docs/sync-vectors/*.json`), checked on the client side: every
//! request decodes from its JSON form into the wire types and round-trips through CBOR; every
//! response decodes from the vector's CBOR bytes, re-encodes to exactly those bytes, and its
//! JSON form equals the vector's `response`. (`entidb-server`'s `tests/vectors.rs` replays the
//! same files against the real server.)
#![expect(clippy::unwrap_used, reason = "test: a failure is a test failure")]

use entidb_sync::wire::*;
use serde_json::Value;

fn check_request<T: Message + serde::Serialize + PartialEq + std::fmt::Debug>(
    json: &Value,
    cbor_hex: &str,
) {
    let typed: T = serde_json::from_value(json.clone()).unwrap();
    let cbor = Format::Cbor.encode(&typed).unwrap();
    assert_eq!(hex_encode(&cbor), cbor_hex, "the request's CBOR form");
    let back: T = Format::Cbor.decode(&cbor).unwrap();
    assert_eq!(back, typed);
    assert_eq!(serde_json::to_value(&back).unwrap(), *json);
}

fn check_response<T: Message + serde::Serialize + PartialEq + std::fmt::Debug>(
    cbor_hex: &str,
    json: &Value,
) {
    let bytes = hex_decode(cbor_hex);
    let typed: T = Format::Cbor.decode(&bytes).unwrap();
    // The one-pass readers of the bulk messages read what serde reads.
    assert_eq!(entidb::cbor::from_slice::<T>(&bytes).unwrap(), typed);
    assert_eq!(
        Format::Cbor.encode(&typed).unwrap(),
        bytes,
        "canonical re-encoding"
    );
    assert_eq!(serde_json::to_value(&typed).unwrap(), *json);
    let from_json: T = Format::Json
        .decode(&serde_json::to_vec(json).unwrap())
        .unwrap();
    assert_eq!(from_json, typed);
}

fn req_hex(v: &Value) -> &str {
    v["request_cbor_hex"]
        .as_str()
        .expect("a vector with a request gives its CBOR form")
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_vector_decodes_and_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/sync-vectors");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        match v["request_type"].as_str() {
            Some("PushRequest") => check_request::<PushRequest>(&v["request"], req_hex(&v)),
            Some("CreateDatabase") => check_request::<CreateDatabase>(&v["request"], req_hex(&v)),
            Some(other) => panic!("{}: unknown request type {other}", path.display()),
            None => {}
        }
        let hex = v["response_cbor_hex"].as_str().unwrap();
        let json = &v["response"];
        match v["response_type"].as_str().unwrap() {
            "PushResponse" => check_response::<PushResponse>(hex, json),
            "PullResponse" => check_response::<PullResponse>(hex, json),
            "BootstrapResponse" => check_response::<BootstrapResponse>(hex, json),
            "ErrorBody" => check_response::<ErrorBody>(hex, json),
            other => panic!("{}: unknown response type {other}", path.display()),
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} vectors found in {}", dir.display());
}
