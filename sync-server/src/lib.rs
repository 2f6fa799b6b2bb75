//! # entidb-server
//!
//! The EntiDB sync server (`entidb serve`) and the operator commands of the `entidb` binary.
//! It hosts many EntiDB databases in one data directory and serves the sync protocol of
//! `docs/sync-protocol.md` over HTTP (axum on tokio). The wire types are `entidb-sync`'s.

pub mod auth;
pub mod config;
pub mod error;
mod field_merge;
pub mod hosted;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod service;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use entidb::Options;
use entidb_sync::wire::Claims;
use tokio::sync::watch;

use crate::auth::Keys;
use crate::config::{Config, ConfigError, KeyConfig};
use crate::hosted::Hosts;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory or the listening socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What the server was doing.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Another server has the data directory (its lock file `.server-lock` is held).
    #[error("{}: another entidb server is using this data directory (stop it first)", dir.display())]
    DataDirInUse {
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// A token could not be signed.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// Creating the example database failed.
    #[error("creating the example database: {0}")]
    Setup(#[from] error::ApiError),
}

impl ServeError {
    /// The exit code `entidb serve` ends with on this error (`docs/operations.md`): 2 a bad
    /// configuration, 3 the data directory in use by another server, 4 any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 2,
            ServeError::DataDirInUse { .. } => 3,
            _ => 4,
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let context = context.into();
    move |source| ServeError::Io { context, source }
}

/// Name of the development signing key file in the data directory.
pub const DEV_KEY_FILE: &str = ".dev-signing-key";

/// The development key of `data_dir`, created (32 random bytes, hex, mode 0600) if missing.
pub fn dev_key(data_dir: &std::path::Path) -> Result<KeyConfig, ServeError> {
    let path = data_dir.join(DEV_KEY_FILE);
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let secret = match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => s.trim().to_owned(),
        Ok(_) => {
            return Err(ServeError::Config(ConfigError::Invalid(format!(
                "{} holds a key shorter than 32 bytes; delete it to get a new one",
                path.display()
            ))));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| ServeError::Io {
                context: "generating a development key".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let secret = hex::encode(b);
            // Written beside it, then linked into place: a reader (`entidb token` run while
            // the server starts) never sees a partly written key, and of two writers the
            // second reads the first one's key.
            let tmp = data_dir.join(format!("{DEV_KEY_FILE}.{}.tmp", hex::encode(&b[..8])));
            write_private(&tmp, &secret).map_err(io(format!("writing {}", tmp.display())))?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => secret,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return dev_key(data_dir);
                }
                Err(e) => return Err(io(format!("writing {}", path.display()))(e)),
            }
        }
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    Ok(KeyConfig {
        id: "dev".into(),
        secret,
    })
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Signs a token for `client` on `db` with `scope`, valid for `ttl_secs`.
pub fn mint_token(
    key: &KeyConfig,
    db: &str,
    client: &str,
    scope: &[String],
    ttl_secs: u64,
) -> Result<String, ServeError> {
    if key.secret.len() < 32 {
        return Err(ServeError::Config(ConfigError::Invalid(format!(
            "signing key {:?} is shorter than 32 bytes",
            key.id
        ))));
    }
    let now = auth::now_secs();
    let exp = now.checked_add(ttl_secs).ok_or_else(|| {
        ServeError::Config(ConfigError::Invalid(format!(
            "a token lifetime of {ttl_secs} s ends past the year 292 billion; give a shorter --ttl-secs"
        )))
    })?;
    let claims = Claims {
        sub: client.to_owned(),
        db: db.to_owned(),
        scope: scope.to_vec(),
        exp,
        iat: now,
    };
    Ok(auth::mint(&key.id, key.secret.as_bytes(), &claims)?)
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Runs the server until `stop` completes, then finishes in-flight requests and closes every
/// database. Prints the listening address (and, in development mode, a token and a curl
/// example) to stdout.
pub async fn serve(
    mut config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    // Commits run on the request workers, one database per host among many: a lone push's
    // disk sync is handed to an I/O thread rather than run on the worker, so a sync never
    // holds up the other requests that worker serves (`Options::inline_sync`).
    let options = Options::default()
        .memtable_bytes(config.memtable_mib << 20)
        .cache_bytes(config.cache_mib << 20)
        .feed_retention(config.retention)
        .inline_sync(false);
    let hosts = Arc::new(Hosts::new(config.data_dir.clone(), options).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            ServeError::DataDirInUse {
                dir: config.data_dir.clone(),
            }
        } else {
            io(format!("creating {}", config.data_dir.display()))(e)
        }
    })?);
    // The development key is read or created under the data directory's lock.
    let dev = config.keys.is_empty();
    if dev {
        config.keys.push(dev_key(&config.data_dir)?);
    }
    if dev && hosts.names()?.is_empty() {
        hosts.create("app").await?;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(io(format!("listening on {}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(io("reading the listening address"))?;
    println!("entidb serve: listening on http://{addr}");
    // The examples name an address a client can connect to: bound to all interfaces (as in
    // the container image), the loopback one.
    let mut shown = addr;
    if addr.ip().is_unspecified() {
        shown.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    println!("data directory: {}", config.data_dir.display());
    if dev {
        let token = mint_token(
            &config.keys[0],
            "*",
            "dev",
            &["read".into(), "write".into(), "admin".into()],
            30 * 24 * 3600,
        )?;
        println!(
            "development mode: no signing keys configured; tokens are signed with the key in {}",
            config.data_dir.join(DEV_KEY_FILE).display()
        );
        println!("dev token (client \"dev\", all databases, read+write+admin, 30 days):");
        println!("  {token}");
        println!("try it:");
        println!(
            "  curl -s -H 'authorization: Bearer {token}' -H 'content-type: application/json' \\\n    -d '{{\"client_id\":\"dev\",\"ops\":[{{\"op_id\":1,\"collection\":\"notes\",\"id\":\"0190a5c2-0000-7000-8000-000000000001\",\"kind\":\"put\",\"doc\":{{\"text\":\"hello\"}},\"base_version\":null,\"hlc\":{{\"millis\":1,\"counter\":0,\"node\":\"dev\"}}}}]}}' \\\n    http://{shown}/v2/db/app/push"
        );
        println!(
            "  curl -s -H 'authorization: Bearer {token}' 'http://{shown}/v2/db/app/pull?since=0'"
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let (tx, rx) = watch::channel(false);
    let mut stopping = rx.clone();
    let metrics = Arc::new(metrics::Metrics::new());
    let (cut, cut_rx) = watch::channel(false);
    let listener = listener::Limited::new(
        listener,
        config.max_connections,
        config.idle_timeout(),
        metrics.connections.clone(),
        cut_rx,
    );
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let config_live = config.max_live;
    let state = http::AppState {
        keys: Arc::new(Keys::new(&config.keys)),
        config: Arc::new(config),
        hosts: hosts.clone(),
        shutdown: rx,
        metrics,
        live: Arc::new(tokio::sync::Semaphore::new(
            config_live.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        )),
    };
    let app = http::router(state);
    let serve = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = tx.send(true);
        })
        .into_future();
    // The drain is bounded: connections that outlast `shutdown_grace_ms` after the signal
    // (a client that never finishes its request, a stalled upload) do not keep the databases
    // from being closed before the orchestrator's own deadline kills the process. They are
    // cut then: each fails its next read or write, and hyper drops the request it runs (a
    // push is all or nothing: its transaction commits or it does not). A request that gets
    // to a database after `close_all` began is answered 503.
    let overdue = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        r = serve => r.map_err(io("serving")),
        () = overdue => {
            tracing::warn!(?grace, "connections still open after the shutdown grace; cutting them and closing the databases");
            let _ = cut.send(true);
            // Let the connections' tasks see the cut and drop their handlers.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        }
    };
    hosts.close_all().await;
    tracing::info!("databases closed");
    result
}
