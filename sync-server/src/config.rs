//! Server configuration: defaults, then a TOML file, then environment and flags (the CLI
//! merges those two with clap).

use std::collections::BTreeMap;
use std::path::PathBuf;

use entidb_sync::wire::ConflictPolicy;
use serde::Deserialize;

/// One signing key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id (`kid` header of tokens signed with it).
    pub id: String,
    /// The secret, at least 32 bytes.
    pub secret: String,
}

/// Everything `entidb serve` can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding one EntiDB database per hosted database.
    pub data_dir: PathBuf,
    /// Address to listen on (`host:port`; port 0 picks a free port).
    pub listen: String,
    /// Signing keys; every listed key verifies tokens, the first one signs dev tokens. With no
    /// keys the server generates a development key in `data_dir/.dev-signing-key`.
    pub keys: Vec<KeyConfig>,
    /// How many transactions each database's oplog retains; a client further behind must
    /// bootstrap again.
    pub retention: u64,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most ops in one push.
    pub max_ops_per_push: usize,
    /// Largest pull page (oplog records) and bootstrap page (entities).
    pub max_page: usize,
    /// Longest long-poll wait, milliseconds.
    pub max_wait_ms: u64,
    /// Requests slower than this fail with 408 (long polls are capped below it).
    pub request_timeout_ms: u64,
    /// Most prompt requests (everything but pulls and event streams) in flight at once;
    /// more wait for a slot.
    pub max_in_flight: usize,
    /// Most long polls and event streams waiting at once; more get 503.
    pub max_live: usize,
    /// Most open HTTP connections; the next one is accepted when one closes.
    pub max_connections: usize,
    /// A connection with no bytes read or written for this long is closed, milliseconds (at
    /// least 1 s above `request_timeout_ms`: a request being handled is silent). Not given:
    /// 75 s, or `request_timeout_ms` + 5 s if that is more (see [`Config::idle_timeout`]).
    pub idle_timeout_ms: Option<u64>,
    /// How far ahead of the server's clock an op's HLC stamp may be, milliseconds; a later
    /// stamp counts as this far ahead (last-writer-wins and field merge compare stamps).
    pub max_clock_skew_ms: u64,
    /// After SIGTERM, how long open connections may take to finish before the server closes
    /// its databases anyway, milliseconds.
    pub shutdown_grace_ms: u64,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Memtable budget per hosted database, MiB.
    pub memtable_mib: u64,
    /// Block cache budget per hosted database, MiB.
    pub cache_mib: u64,
    /// Conflict policy per collection (`collection` or `database/collection`).
    pub policies: BTreeMap<String, ConflictPolicy>,
    /// OTLP/HTTP endpoint (for example `http://127.0.0.1:4318`); when set, every request is
    /// exported as a trace span.
    pub otlp_endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./entidb-data"),
            listen: "127.0.0.1:7420".into(),
            keys: Vec::new(),
            retention: 100_000,
            max_body_bytes: 8 << 20,
            max_ops_per_push: 1000,
            max_page: 1000,
            max_wait_ms: 25_000,
            request_timeout_ms: 30_000,
            max_in_flight: 1024,
            max_live: 10_000,
            max_connections: 16_384,
            idle_timeout_ms: None,
            shutdown_grace_ms: 20_000,
            max_clock_skew_ms: 300_000,
            cors_origins: Vec::new(),
            memtable_mib: 16,
            cache_mib: 16,
            policies: BTreeMap::new(),
            otlp_endpoint: None,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks ranges; called before the server starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for k in &self.keys {
            if k.secret.len() < 32 {
                return bad(format!("signing key {:?} is shorter than 32 bytes", k.id));
            }
            if k.id.is_empty() {
                return bad("a signing key has an empty id".into());
            }
            // A token names its key by id: two keys with one id would verify against
            // whichever comes first (a rotation that reuses an id with a new secret would
            // refuse every new token).
            if self.keys.iter().filter(|o| o.id == k.id).count() > 1 {
                return bad(format!(
                    "signing key id {:?} is configured twice; give the new key a new id",
                    k.id
                ));
            }
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes must be at least 1024".into());
        }
        if self.max_ops_per_push == 0
            || self.max_page == 0
            || self.max_in_flight == 0
            || self.max_live == 0
            || self.max_connections == 0
        {
            return bad(
                "max_ops_per_push, max_page, max_in_flight, max_live and max_connections must be positive"
                    .into(),
            );
        }
        // While a handler runs, the connection is silent: a request that may take up to
        // `request_timeout_ms` (and a long poll, below it) must not count as idle.
        if self
            .idle_timeout_ms
            .is_some_and(|idle| idle < self.request_timeout_ms + 1000)
        {
            return bad("idle_timeout_ms must be at least 1 s above request_timeout_ms".into());
        }
        if self.max_wait_ms + 1000 > self.request_timeout_ms {
            return bad("max_wait_ms must be at least 1 s below request_timeout_ms".into());
        }
        if self.retention == 0 {
            return bad("retention must be positive".into());
        }
        Ok(())
    }

    /// How long a connection may stay silent: `idle_timeout_ms`, or by default 75 s, or
    /// `request_timeout_ms` + 5 s if that is more (so that a configuration written before
    /// the setting existed, with long requests, keeps working).
    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.idle_timeout_ms
                .unwrap_or_else(|| self.request_timeout_ms.saturating_add(5000).max(75_000)),
        )
    }

    /// The conflict policy of `collection` in `database`.
    pub fn policy(&self, database: &str, collection: &str) -> ConflictPolicy {
        self.policies
            .get(&format!("{database}/{collection}"))
            .or_else(|| self.policies.get(collection))
            .copied()
            .unwrap_or_default()
    }

    /// Parses `ID=SECRET[,ID=SECRET...]` (the `--keys` flag and `ENTIDB_KEYS`).
    pub fn parse_keys(text: &str) -> Result<Vec<KeyConfig>, ConfigError> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|pair| {
                let (id, secret) = pair.trim().split_once('=').ok_or_else(|| {
                    ConfigError::Invalid(format!("key {pair:?} is not of the form ID=SECRET"))
                })?;
                Ok(KeyConfig {
                    id: id.to_owned(),
                    secret: secret.to_owned(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_policies_resolve() {
        let c: Config = toml::from_str(
            r#"
            listen = "0.0.0.0:9000"
            [policies]
            notes = "last_writer_wins"
            "app/notes" = "client_wins"
            "#,
        )
        .expect("parse");
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.max_ops_per_push, 1000);
        assert_eq!(c.policy("app", "notes"), ConflictPolicy::ClientWins);
        assert_eq!(c.policy("other", "notes"), ConflictPolicy::LastWriterWins);
        assert_eq!(c.policy("other", "x"), ConflictPolicy::ServerWins);
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }

    #[test]
    fn validation_rejects_short_keys() {
        let c = Config {
            keys: Config::parse_keys("k1=short").expect("parse"),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let twice = Config {
            keys: Config::parse_keys(
                "k1=0123456789abcdef0123456789abcdef,k1=fedcba9876543210fedcba9876543210",
            )
            .expect("parse"),
            ..Config::default()
        };
        let idle = Config {
            idle_timeout_ms: Some(30_999),
            ..Config::default()
        };
        let err = idle
            .validate()
            .expect_err("a long poll would count as idle");
        assert!(err.to_string().contains("idle_timeout_ms"), "{err}");
        // Not given, it follows long requests (a configuration from before it existed).
        let long = Config {
            max_wait_ms: 60_000,
            request_timeout_ms: 90_000,
            ..Config::default()
        };
        assert!(long.validate().is_ok());
        assert_eq!(long.idle_timeout(), std::time::Duration::from_secs(95));
        assert_eq!(
            Config::default().idle_timeout(),
            std::time::Duration::from_secs(75)
        );
        let none = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert!(none.validate().is_err());
        let err = twice.validate().expect_err("a key id twice");
        assert!(
            err.to_string().contains("\"k1\" is configured twice"),
            "{err}"
        );
        assert!(Config::parse_keys("nokey").is_err());
        assert!(Config::default().validate().is_ok());
    }
}
