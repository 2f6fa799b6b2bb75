//! Fuzzes the CBOR decoder, canonicalizer and canonical validator on arbitrary input and
//! checks that they never panic and always agree.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../engine/tests/support/cbor_oracle.rs"]
mod cbor_oracle;

fuzz_target!(|bytes: &[u8]| cbor_oracle::check_agreement(bytes));
