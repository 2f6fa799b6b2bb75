//! Errors. One enum for the engine, with variants that say what happened and what to do.

use entidb_io::IoError;

use crate::cbor::CborError;
use crate::ids::EntityId;

/// Result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A backend call failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the engine was doing.
        context: &'static str,
        /// The backend's error.
        #[source]
        source: IoError,
    },
    /// Stored data failed a check. Nothing was changed; run `verify` and restore from a backup.
    #[error("corruption in {file} at offset {offset}: {detail}")]
    Corruption {
        /// The file.
        file: String,
        /// Byte offset of the damage.
        offset: u64,
        /// What check failed.
        detail: String,
    },
    /// Another process (or another open `Database` in this process) holds the database.
    #[error("database is locked: {path} is held by another process")]
    Locked {
        /// The lock file.
        path: String,
    },
    /// A sync failed earlier; the database refuses writes until it is reopened (the durable
    /// state of the failed writes is unknown).
    #[error("database stopped after an I/O error on sync ({cause}); reopen it to recover")]
    FailStopped {
        /// The error that stopped it.
        cause: String,
    },
    /// The database was closed.
    #[error("database is closed")]
    Closed,
    /// An expected-version check failed.
    #[error(
        "version conflict on {collection}/{id}: expected {expected}, found {actual}",
        expected = fmt_version(*.expected),
        actual = fmt_version(*.actual)
    )]
    VersionConflict {
        /// Collection name.
        collection: String,
        /// Entity id.
        id: EntityId,
        /// The version the caller expected (`None`: must not exist).
        expected: Option<u64>,
        /// The version found (`None`: does not exist).
        actual: Option<u64>,
    },
    /// A document is not valid CBOR (or could not be converted).
    #[error("invalid document: {0}")]
    Document(#[from] CborError),
    /// A collection name is not acceptable.
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidCollectionName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The collection does not exist.
    #[error("collection {0:?} does not exist")]
    CollectionNotFound(String),
    /// The collection exists already.
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    /// A value or request is larger than the engine accepts.
    #[error("{what} is too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The change feed no longer holds the requested sequence.
    #[error("change feed does not retain sequence {requested}; the oldest retained is {oldest}")]
    FeedTruncated {
        /// The sequence asked for.
        requested: u64,
        /// The oldest sequence still retained.
        oldest: u64,
    },
    /// The files were written by a newer (or unknown) format version.
    #[error("unsupported format in {file}: {detail}")]
    UnsupportedFormat {
        /// The file.
        file: String,
        /// What was found.
        detail: String,
    },
    /// An invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A migration step failed; the database stays at the version before that step.
    #[error(
        "migration to schema version {version} failed (the database stays at the previous version): {cause}"
    )]
    MigrationFailed {
        /// The version the step would have produced.
        version: u64,
        /// Why.
        #[source]
        cause: Box<Error>,
    },
    /// The database's schema version is newer than every migration step this application
    /// has: it was written by a newer version of the application.
    #[error(
        "the database is at schema version {found}, newer than this application's {supported}; upgrade the application"
    )]
    SchemaTooNew {
        /// The database's version.
        found: u64,
        /// The highest version the application knows.
        supported: u64,
    },
    /// The handle is read-only ([`Options::read_only`](crate::Options::read_only)).
    #[error("the database is open read-only; writes, checkpoints and compactions are refused")]
    ReadOnly,
    /// The key does not open this encrypted database.
    #[error("wrong encryption key")]
    WrongKey,
    /// Encryption is not set up the way the database was opened (an encrypted database
    /// opened without a key, a plaintext one with a key, or a key of the wrong kind).
    #[error("encryption: {0}")]
    Encryption(String),
    /// A backup file is damaged, truncated, or not a backup. Nothing was restored from it.
    #[error("invalid backup: {0}")]
    InvalidBackup(String),
    /// A commit would give two documents equal values in a unique index. Nothing of the
    /// transaction was written.
    #[error(
        "unique index {index:?} of {collection:?}: value {value} of {id} is already used by {existing}"
    )]
    UniqueViolation {
        /// Collection name.
        collection: String,
        /// Index name.
        index: String,
        /// The duplicated value(s), in CBOR diagnostic notation.
        value: String,
        /// The entity whose write was refused.
        id: EntityId,
        /// The entity that has the value.
        existing: EntityId,
    },
    /// The index does not exist (in this snapshot or transaction).
    #[error("index {index:?} of collection {collection:?} does not exist")]
    IndexNotFound {
        /// Collection name.
        collection: String,
        /// Index name.
        index: String,
    },
    /// An index with this name exists on the collection.
    #[error("index {index:?} of collection {collection:?} already exists")]
    IndexExists {
        /// Collection name.
        collection: String,
        /// Index name.
        index: String,
    },
    /// A document's values for an ordered index encode larger than the index accepts.
    /// Nothing of the transaction was written; use an equality index for such fields.
    #[error(
        "index {index:?} of {collection:?}: key of {size} bytes is larger than {limit}; use an equality index for large values"
    )]
    IndexKeyTooLarge {
        /// Collection name.
        collection: String,
        /// Index name.
        index: String,
        /// Encoded size of the values.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A predicate scan was asked for on a database opened with
    /// [`Options::forbid_full_scans`](crate::Options::forbid_full_scans).
    #[error(
        "full scan of collection {collection:?} refused: this database forbids full scans; look up through an index instead"
    )]
    FullScanForbidden {
        /// Collection name.
        collection: String,
    },
}

fn fmt_version(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("version {v}"),
        None => "absent".to_owned(),
    }
}

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(IoError) -> Error {
        move |source| match source {
            IoError::Locked { path } => Error::Locked { path },
            IoError::WrongKey { .. } => Error::WrongKey,
            IoError::Tampered { path, detail } => Error::Corruption {
                file: path,
                offset: 0,
                detail: format!(
                    "authentication failed ({detail}): the file was damaged or altered"
                ),
            },
            e @ (IoError::NotEncrypted { .. }
            | IoError::KeyDerivation { .. }
            | IoError::Cipher { .. }
            | IoError::NoEntropy { .. }) => Error::Encryption(e.to_string()),
            source => Error::Io { context, source },
        }
    }

    pub(crate) fn corruption(file: &str, offset: u64, detail: impl Into<String>) -> Error {
        Error::Corruption {
            file: file.to_owned(),
            offset,
            detail: detail.into(),
        }
    }

    /// Whether this error means stored data is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}
