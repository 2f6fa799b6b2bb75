//! Schema versions and migrations.
//!
//! A database has a schema version (0 when new), stored in the catalog under key `00 'V'` as a
//! u64 BE and read like any other key (so every snapshot sees its own version). Migration
//! steps are registered per target version; [`Database::migrate`] runs each missing step in
//! order, each in its own write transaction that also sets the new version, so a step and
//! its version commit together or not at all: a failing step (or a crash) leaves the database
//! at the previous version with none of that step's writes.

use entidb_io::{BoxFuture, MaybeSend, MaybeSync};

use crate::database::Database;
use crate::error::{Error, Result};
use crate::keys;
use crate::options::Options;
use crate::txn::WriteTxn;

/// A step: a function of the transaction it runs in (`Send + Sync` on native targets).
trait StepFn:
    for<'a> Fn(&'a mut WriteTxn) -> BoxFuture<'a, Result<()>> + MaybeSend + MaybeSync
{
}
impl<F> StepFn for F where
    F: for<'a> Fn(&'a mut WriteTxn) -> BoxFuture<'a, Result<()>> + MaybeSend + MaybeSync
{
}
type Step = Box<dyn StepFn>;

/// Registered migration steps, by the version each one produces.
///
/// ```
/// # futures_executor::block_on(async {
/// use entidb::{Database, Migrations, cbor::Value};
/// let migrations = Migrations::new()
///     .step(1, |tx| Box::pin(async move {
///         tx.collection("settings").put(entidb::EntityId::MIN, &Value::map([("theme", "dark")]))?;
///         Ok(())
///     }))
///     .step(2, |tx| Box::pin(async move {
///         tx.collection("users").create_index("by_email", entidb::IndexSpec::equality(["email"])).await
///     }));
/// let db = Database::memory().await?;
/// let report = db.migrate(&migrations).await?;
/// assert_eq!((report.from, report.to), (0, 2));
/// assert_eq!(db.schema_version().await?, 2);
/// # Ok::<(), entidb::Error>(())
/// # }).unwrap();
/// ```
#[derive(Default)]
pub struct Migrations {
    steps: std::collections::BTreeMap<u64, Step>,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrations")
            .field("versions", &self.steps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Migrations {
    /// No steps.
    pub fn new() -> Migrations {
        Migrations::default()
    }

    /// Register the step that takes the database from `version - 1` to `version`. It gets
    /// the write transaction it runs in (which will also set the version).
    pub fn step<F>(mut self, version: u64, f: F) -> Migrations
    where
        F: for<'a> Fn(&'a mut WriteTxn) -> BoxFuture<'a, Result<()>>
            + MaybeSend
            + MaybeSync
            + 'static,
    {
        self.steps.insert(version, Box::new(f));
        self
    }

    /// The version the steps lead to (0 without steps).
    pub fn target(&self) -> u64 {
        self.steps.keys().next_back().copied().unwrap_or(0)
    }
}

/// What [`Database::migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The version before.
    pub from: u64,
    /// The version after.
    pub to: u64,
}

impl WriteTxn {
    /// The schema version as this transaction sees it.
    pub async fn schema_version(&self) -> Result<u64> {
        let key = keys::schema_version_key();
        let bytes = match self.writes.get(&key[..]) {
            Some(v) => v.clone(),
            None => self.ctx().committed(&key).await?.map(|(_, b)| b),
        };
        decode_version(bytes.as_deref())
    }

    /// Set the schema version (committed with the transaction). [`Database::migrate`] does
    /// this for each step; set it yourself only for a hand-rolled migration.
    pub fn set_schema_version(&mut self, version: u64) {
        self.writes.insert(
            std::sync::Arc::from(keys::schema_version_key()),
            Some(std::sync::Arc::from(&version.to_be_bytes()[..])),
        );
    }
}

fn decode_version(bytes: Option<&[u8]>) -> Result<u64> {
    match bytes {
        None => Ok(0),
        Some(b) => b
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| Error::corruption("catalog", 0, "malformed schema version record")),
    }
}

impl Database {
    /// The committed schema version (0 for a database never migrated).
    pub async fn schema_version(&self) -> Result<u64> {
        let snap = self.snapshot();
        let v = snap
            .ctx()
            .committed(&keys::schema_version_key())
            .await?
            .map(|(_, b)| b);
        decode_version(v.as_deref())
    }

    /// Run every step above the current version, in order, each in its own transaction.
    /// Fails with [`Error::SchemaTooNew`] if the database is at a version above every step
    /// (written by a newer application), with [`Error::InvalidArgument`] if a step between
    /// the current version and the target is missing, and with [`Error::MigrationFailed`]
    /// if a step fails (the database stays at the version before that step).
    pub async fn migrate(&self, migrations: &Migrations) -> Result<MigrationReport> {
        let from = self.schema_version().await?;
        let target = migrations.target();
        if from > target {
            return Err(Error::SchemaTooNew {
                found: from,
                supported: target,
            });
        }
        for v in from + 1..=target {
            let step = migrations.steps.get(&v).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no migration step for version {v} (the database is at {from}, the target is {target})"
                ))
            })?;
            let mut tx = self.begin().await?;
            let current = tx.schema_version().await?;
            if current >= v {
                // Another handle migrated meanwhile.
                tx.abort();
                continue;
            }
            let fail = |cause: Error| Error::MigrationFailed {
                version: v,
                cause: Box::new(cause),
            };
            step(&mut tx).await.map_err(fail)?;
            tx.set_schema_version(v);
            tx.commit().await.map_err(fail)?;
        }
        Ok(MigrationReport { from, to: target })
    }

    /// Open a database and migrate it to the target of `migrations`.
    pub async fn open_migrated(
        backend: std::sync::Arc<dyn entidb_io::Backend>,
        options: Options,
        migrations: &Migrations,
    ) -> Result<(Database, MigrationReport)> {
        let db = Database::open_with(backend, options).await?;
        let report = db.migrate(migrations).await?;
        Ok((db, report))
    }
}
