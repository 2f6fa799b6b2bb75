//! Fuzzes the one-pass readers of the sync protocol's bulk messages (`entidb_sync::wire`'s
//! `Message::from_cbor` for pull pages, bootstrap pages, push requests and push answers) on
//! arbitrary input: they never panic, and they accept exactly what the serde path
//! (`entidb::cbor::from_slice`) accepts, with the same message.

#![no_main]

use entidb_sync::wire::{BootstrapResponse, Message, PullResponse, PushRequest, PushResponse};
use libfuzzer_sys::fuzz_target;

fn agree<T: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    match (T::from_cbor(bytes), entidb::cbor::from_slice::<T>(bytes)) {
        (Ok(read), Ok(serde)) => assert_eq!(read, serde),
        (Err(_), Err(_)) => {}
        (read, serde) => panic!("the reader gave {read:?}, serde {serde:?}"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    agree::<PullResponse>(bytes);
    agree::<BootstrapResponse>(bytes);
    agree::<PushRequest>(bytes);
    agree::<PushResponse>(bytes);
});
