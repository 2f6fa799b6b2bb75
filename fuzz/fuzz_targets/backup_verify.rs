//! Fuzzes the backup reader: `verify_backup` and `Database::restore` must never panic, must
//! reject anything that is not a valid backup with `InvalidBackup`, and must agree (a file
//! that verifies restores, one that does not is refused by restore too).

#![no_main]

use std::sync::Arc;

use entidb::{Database, Error, Options, SliceSource, verify_backup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    futures_executor::block_on(async {
        let verified = verify_backup(&mut SliceSource::new(bytes)).await;
        if let Err(e) = &verified {
            assert!(matches!(e, Error::InvalidBackup(_)), "{e}");
        }
        let restored = Database::restore(
            &mut SliceSource::new(bytes),
            Arc::new(entidb::io::MemoryBackend::new()),
            Options::default(),
        )
        .await;
        match (&verified, &restored) {
            (Ok(v), Ok((_, r))) => assert_eq!(v.entities, r.entities),
            (Err(_), Err(Error::InvalidBackup(_))) => {}
            (v, r) => panic!(
                "verify and restore disagree: {v:?} vs {:?}",
                r.as_ref().map(|x| &x.1)
            ),
        }
    });
});
