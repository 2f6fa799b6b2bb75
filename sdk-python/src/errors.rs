//! The exception hierarchy (all under `entidb.Error`) and the mapping from engine and sync
//! errors.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    entidb,
    Error,
    PyException,
    "Base class of every EntiDB error."
);
create_exception!(
    entidb,
    NotFound,
    Error,
    "An index does not exist (reading a collection that does not exist finds nothing)."
);
create_exception!(
    entidb,
    Conflict,
    Error,
    "A write conflicts with the stored state (an expected version did not match)."
);
create_exception!(
    entidb,
    UniqueViolation,
    Conflict,
    "A unique index already holds the value; nothing of the transaction was written."
);
create_exception!(
    entidb,
    Corruption,
    Error,
    "Stored data failed a check; run verify and restore from a backup."
);
create_exception!(
    entidb,
    Closed,
    Error,
    "The database (or transaction) is closed."
);
create_exception!(entidb, Locked, Error, "Another process holds the database.");
create_exception!(
    entidb,
    InvalidArgument,
    Error,
    "An argument is not acceptable (a name, a query, an option)."
);
create_exception!(
    entidb,
    DocumentError,
    Error,
    "A document is not valid CBOR or has no canonical form."
);
create_exception!(
    entidb,
    TooLarge,
    Error,
    "A document, key or request is larger than allowed."
);
create_exception!(
    entidb,
    FullScanForbidden,
    Error,
    "The database forbids full scans; use an index."
);
create_exception!(
    entidb,
    FeedTruncated,
    Error,
    "The change feed no longer holds the requested sequence."
);
create_exception!(
    entidb,
    IoError,
    Error,
    "The storage failed (I/O error, or stopped after one)."
);
create_exception!(
    entidb,
    SyncError,
    Error,
    "Syncing failed (network, server or protocol)."
);
create_exception!(
    entidb,
    AuthError,
    SyncError,
    "The sync server refused the token (401) or its scopes (403)."
);

create_exception!(
    entidb,
    MigrationError,
    Error,
    "A migration step failed (the database stays at the previous version), or the database is newer than the application."
);

create_exception!(
    entidb,
    EncryptionError,
    Error,
    "Encryption is not set up the way the database was opened (a key for a plaintext database, none for an encrypted one, or a key of the wrong kind)."
);
create_exception!(
    entidb,
    WrongKey,
    EncryptionError,
    "The key does not open this encrypted database."
);

create_exception!(
    entidb,
    ReadOnly,
    Error,
    "The database was opened read-only; writes, checkpoints and compactions are refused."
);

/// Map an engine error to its exception.
pub fn engine(e: entidb::Error) -> PyErr {
    use entidb::Error as E;
    let msg = e.to_string();
    match e {
        E::CollectionNotFound(_) | E::IndexNotFound { .. } => NotFound::new_err(msg),
        E::VersionConflict { .. } => Conflict::new_err(msg),
        E::UniqueViolation { .. } => UniqueViolation::new_err(msg),
        E::Corruption { .. } | E::UnsupportedFormat { .. } | E::InvalidBackup(_) => {
            Corruption::new_err(msg)
        }
        E::Closed => Closed::new_err(msg),
        E::Locked { .. } => Locked::new_err(msg),
        E::Document(_) => DocumentError::new_err(msg),
        E::TooLarge { .. } | E::IndexKeyTooLarge { .. } => TooLarge::new_err(msg),
        E::FullScanForbidden { .. } => FullScanForbidden::new_err(msg),
        E::MigrationFailed { .. } | E::SchemaTooNew { .. } => MigrationError::new_err(msg),
        E::WrongKey => WrongKey::new_err(msg),
        E::ReadOnly => ReadOnly::new_err(msg),
        E::Encryption(_) => EncryptionError::new_err(msg),
        E::FeedTruncated { .. } => FeedTruncated::new_err(msg),
        E::Io { .. } | E::FailStopped { .. } => IoError::new_err(msg),
        E::InvalidArgument(_)
        | E::InvalidCollectionName { .. }
        | E::CollectionExists(_)
        | E::IndexExists { .. } => InvalidArgument::new_err(msg),
        _ => Error::new_err(msg),
    }
}

/// Map a sync error to its exception.
pub fn sync(e: entidb_sync::SyncError) -> PyErr {
    use entidb_sync::SyncError as S;
    let retryable = e.is_retryable();
    let err = match e {
        S::Local(e) => engine(e),
        S::Server { status, .. } if status == 401 || status == 403 => {
            AuthError::new_err(e.to_string())
        }
        S::Config(_) => InvalidArgument::new_err(e.to_string()),
        other => SyncError::new_err(other.to_string()),
    };
    // `err.retryable`: whether trying the same call later may succeed (network errors,
    // 408 and 5xx).
    Python::attach(|py| {
        let _ = err.value(py).setattr("retryable", retryable);
    });
    err
}

/// Register the exceptions on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("Conflict", py.get_type::<Conflict>())?;
    m.add("UniqueViolation", py.get_type::<UniqueViolation>())?;
    m.add("Corruption", py.get_type::<Corruption>())?;
    m.add("Closed", py.get_type::<Closed>())?;
    m.add("Locked", py.get_type::<Locked>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("DocumentError", py.get_type::<DocumentError>())?;
    m.add("TooLarge", py.get_type::<TooLarge>())?;
    m.add("FullScanForbidden", py.get_type::<FullScanForbidden>())?;
    m.add("FeedTruncated", py.get_type::<FeedTruncated>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    m.add("SyncError", py.get_type::<SyncError>())?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("MigrationError", py.get_type::<MigrationError>())?;
    m.add("EncryptionError", py.get_type::<EncryptionError>())?;
    m.add("WrongKey", py.get_type::<WrongKey>())?;
    m.add("ReadOnly", py.get_type::<ReadOnly>())?;
    Ok(())
}
