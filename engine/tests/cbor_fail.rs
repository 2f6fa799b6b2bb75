//! Every input in `shared/testdata/cbor/fail.json` (not well-formed CBOR) must be rejected.

use std::path::PathBuf;

use entidb::cbor::{
    Value, canonicalize, decode, from_canonical, is_canonical, validate, validate_canonical,
};

fn fail_vectors() -> Vec<(String, Vec<u8>)> {
    let dir = match std::env::var_os("ENTIDB_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")),
    };
    let path = dir.join("testdata/cbor/fail.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. Set ENTIDB_SHARED_DIR to the shared directory that holds \
             testdata/cbor/.",
            path.display()
        )
    });
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).expect("JSON array");
    entries
        .iter()
        .map(|e| {
            let hex = e["hex"].as_str().expect("hex field").to_owned();
            let bytes = hex::decode(&hex).expect("valid hex");
            (hex, bytes)
        })
        .collect()
}

#[test]
fn every_failure_vector_is_rejected() {
    let vectors = fail_vectors();
    assert!(
        vectors.len() > 600,
        "expected the full list, got {} inputs",
        vectors.len()
    );
    for (hex, bytes) in &vectors {
        let decoded = decode(bytes);
        assert!(decoded.is_err(), "{hex}: decode accepted {decoded:?}");
        let canonical = canonicalize(bytes);
        assert!(
            canonical.is_err(),
            "{hex}: canonicalize accepted {canonical:?}"
        );
        let strict = validate_canonical(bytes);
        assert!(strict.is_err(), "{hex}: validate_canonical accepted it");
        assert!(validate(bytes).is_err(), "{hex}: validate accepted it");
        assert!(!is_canonical(bytes), "{hex}: is_canonical accepted it");
        // The strict check reports a real defect, not a mere style issue.
        assert!(
            !matches!(strict, Err(entidb::cbor::CborError::NotCanonical { .. })),
            "{hex}: reported as merely non-canonical: {strict:?}"
        );
        assert_eq!(decoded.err(), canonical.err(), "{hex}");
        // The unchecked typed decode (for bytes already known canonical) returns on them
        // without a panic, and fails but for the few kinds of defect its doc names.
        let unchecked = from_canonical::<Value>(bytes);
        assert!(
            unchecked.is_err() || UNCHECKED_ACCEPTS.contains(&hex.as_str()),
            "{hex}: from_canonical gave {unchecked:?}"
        );
    }
}

/// The failure vectors `from_canonical` lets through (it does not validate): a two-byte
/// simple value below 32, indefinite strings nested in indefinite strings, and bytes after
/// the item.
const UNCHECKED_ACCEPTS: [&str; 8] = [
    "f814",
    "f815",
    "f816",
    "f817",
    "5f5f4100ffff",
    "7f7f6100ffff",
    "80ff",
    "9fffff",
];

#[test]
fn error_offsets_point_into_the_input() {
    for (hex, bytes) in fail_vectors() {
        for err in [decode(&bytes).err(), validate_canonical(&bytes).err()]
            .into_iter()
            .flatten()
        {
            let offset = err
                .offset()
                .unwrap_or_else(|| panic!("{hex}: {err} has no offset"));
            assert!(
                offset <= bytes.len(),
                "{hex}: offset {offset} beyond the input: {err}"
            );
            assert!(
                err.to_string().contains(&format!("byte {offset}")),
                "{hex}: {err}"
            );
        }
    }
}
