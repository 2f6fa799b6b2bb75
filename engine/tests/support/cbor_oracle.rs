//! The agreement oracle of the CBOR codec, shared by the property tests
//! (`engine/tests/cbor_props.rs`) and the fuzz target (`fuzz/fuzz_targets/cbor_decode.rs`):
//! on any input, decode, canonicalize, validate, validate_canonical and item_len never panic
//! and always agree.

use entidb::cbor::{
    CborError, canonicalize, decode, encode, is_canonical, item_len, try_encode, validate,
    validate_canonical,
};

/// Panics if the codec's entry points disagree about `bytes`.
pub fn check_agreement(bytes: &[u8]) {
    let decoded = decode(bytes);
    let canonical = canonicalize(bytes);
    let strict = validate_canonical(bytes);
    // Canonical::from_cbor is canonicalize, kept as shared bytes.
    assert_eq!(
        entidb::cbor::Canonical::from_cbor(bytes).map(|c| c.to_vec()),
        canonical.clone(),
        "Canonical::from_cbor vs canonicalize"
    );

    // decode and canonicalize accept the same inputs and report the same error; validate is
    // canonicalize without the output.
    assert_eq!(
        decoded.as_ref().err(),
        canonical.as_ref().err(),
        "decode vs canonicalize"
    );
    assert_eq!(
        validate(bytes),
        canonical.as_ref().map(|_| ()).map_err(Clone::clone)
    );

    // validate_canonical is Ok for canonical input (which canonicalize returns unchanged),
    // NotCanonical exactly when the input is valid but not canonical, and another error
    // exactly when the input is invalid.
    match &strict {
        Ok(()) => {
            assert!(is_canonical(bytes));
            assert_eq!(
                canonical.as_deref(),
                Ok(bytes),
                "canonical input must pass through"
            );
        }
        Err(CborError::NotCanonical { .. }) => {
            assert!(
                canonical.is_ok(),
                "NotCanonical but canonicalize failed: {canonical:?}"
            );
            assert_ne!(canonical.as_deref(), Ok(bytes));
        }
        Err(_) => assert!(
            decoded.is_err(),
            "validate_canonical {strict:?} but decode ok"
        ),
    }

    // Whatever decodes re-encodes to the canonical form, which is stable.
    if let (Ok(value), Ok(canonical)) = (&decoded, &canonical) {
        assert_eq!(
            &encode(value),
            canonical,
            "encode(decode(x)) != canonicalize(x)"
        );
        assert_eq!(try_encode(value).as_ref(), Ok(canonical));
        assert_eq!(validate_canonical(canonical), Ok(()));
        assert_eq!(decode(canonical).as_ref(), Ok(value));
        assert_eq!(item_len(bytes), Ok(bytes.len()));
    }

    // item_len finds the same item boundary, skipping only the duplicate-key check.
    if let Ok(n) = item_len(bytes) {
        assert!(n <= bytes.len());
        if n == bytes.len() && decoded.is_err() {
            assert!(
                matches!(decoded, Err(CborError::DuplicateMapKey { .. })),
                "{decoded:?}"
            );
        }
    }

    // Errors point into the input.
    for err in [decoded.err(), strict.err()].into_iter().flatten() {
        assert!(
            err.offset().is_some_and(|offset| offset <= bytes.len()),
            "{err}"
        );
    }
}
