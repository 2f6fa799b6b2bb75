//! Fuzzes the one-pass readers of the sync protocol's bulk messages (pull pages, bootstrap
//! pages, push requests and push answers; `entidb_sync::wire::fast_readers`) on arbitrary
//! input: they never panic, and whenever a reader takes a body, the serde path
//! (`entidb::cbor::from_slice`) reads the same message from it. `Message::from_cbor`, which
//! falls back to serde when a reader declines, agrees with serde on every input.

#![no_main]

use entidb_sync::wire::fast_readers;
use entidb_sync::wire::{BootstrapResponse, Message, PullResponse, PushRequest, PushResponse};
use libfuzzer_sys::fuzz_target;

fn agree<T: Message + PartialEq + std::fmt::Debug>(bytes: &[u8], reader: fn(&[u8]) -> Option<T>) {
    let serde = entidb::cbor::from_slice::<T>(bytes);
    if let Some(read) = reader(bytes) {
        assert_eq!(
            serde.as_ref().ok(),
            Some(&read),
            "the reader took a body serde reads otherwise"
        );
    }
    match (T::from_cbor(bytes), serde) {
        (Ok(read), Ok(serde)) => assert_eq!(read, serde),
        (Err(_), Err(_)) => {}
        (read, serde) => panic!("from_cbor gave {read:?}, serde {serde:?}"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    agree::<PullResponse>(bytes, fast_readers::pull_response);
    agree::<BootstrapResponse>(bytes, fast_readers::bootstrap_response);
    agree::<PushRequest>(bytes, fast_readers::push_request);
    agree::<PushResponse>(bytes, fast_readers::push_response);
});
