//! The `entidb` command: `entidb serve` runs the sync server; `entidb token` mints a token;
//! the operator commands inspect, verify, compact, back up, restore, dump and load databases
//! (exit codes in `entidb_server::tools`).

/// The server's allocator (feature `mimalloc`, default; see `Cargo.toml`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use entidb_server::config::{Config, KeyConfig};

/// EntiDB: the sync server and operator tools.
#[derive(Debug, Parser)]
#[command(name = "entidb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sync server. With no arguments: data in ./entidb-data, a development key, an
    /// "app" database, a printed token and curl example.
    Serve(ServeArgs),
    /// Mint a bearer token (JWT HS256) for a client.
    Token(TokenArgs),
    /// Show a database: sequence, segments, collections with counts and sizes, indexes.
    Inspect {
        /// The database directory.
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a database (manifest, WAL, every segment checksum, every index against the
    /// documents) or a backup file (every frame checksum and the whole-file SHA-256). Exit 1
    /// if anything is wrong.
    Verify {
        /// A database directory or a backup file.
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Merge all segments of a database, reclaiming space.
    Compact {
        /// The database directory.
        path: PathBuf,
    },
    /// Release a change-feed hold of a database (`inspect` lists them), so that its feed
    /// retention applies again to the records the hold kept. A sync client's hold is
    /// `entidb-sync`: release it only for a database that stops syncing (a replicator
    /// still attached sets it again at its next capture). Exit 1 if there is no such hold.
    ReleaseHold {
        /// The database directory.
        path: PathBuf,
        /// The hold's name.
        name: String,
    },
    /// Back up a consistent snapshot of a database to a file (streaming; the database is
    /// not written to).
    Backup {
        /// The database directory.
        path: PathBuf,
        /// The backup file to write (replaced atomically).
        file: PathBuf,
    },
    /// Restore a backup into a new database directory (checked completely before it is put
    /// in place).
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The database directory to create.
        path: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Write every entity as a JSON line (`{"collection", "id", "doc"}`; bytes and tags by
    /// the documented mapping) to standard output.
    Dump {
        /// The database directory.
        path: PathBuf,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
    },
    /// Run the benchmark workloads (shared/bench/WORKLOADS.md) against SQLite and redb in
    /// this process and print a table of medians and ratios. W1-W10 by default; `--indexes`
    /// for the index and full-text workloads (I1-I3, F1-F2). Pass `--scale F` (default 1),
    /// `--runs N` (default 3), `--compare sqlite,redb`, `--value random|doc`, `--dir D`,
    /// `--no-w9`.
    #[command(disable_help_flag = false)]
    Bench {
        /// The index and full-text workloads instead of W1-W10.
        #[arg(long)]
        indexes: bool,
        /// Options of the workloads (see above).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Re-encrypt an encrypted database with a new passphrase: the current one in
    /// ENTIDB_PASSPHRASE, the new one in ENTIDB_NEW_PASSPHRASE. Crash-safe: afterwards exactly
    /// one of the two opens it.
    Rekey {
        /// The database directory (not open anywhere).
        path: PathBuf,
    },
    /// Read JSON lines written by `dump` (FILE, or - for standard input) into a database
    /// (created if missing).
    Load {
        /// The database directory.
        path: PathBuf,
        /// The JSON lines file, or - for standard input.
        file: PathBuf,
    },
}

/// Run an operator command on a small runtime and map its outcome to an exit code.
fn tool(
    name: &str,
    f: impl std::future::Future<Output = entidb_server::tools::Outcome>,
) -> ExitCode {
    use entidb_server::tools::Outcome;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("entidb {name}: cannot start the runtime: {e}");
            return ExitCode::from(4);
        }
    };
    let outcome = rt.block_on(f);
    match &outcome {
        Outcome::Ok | Outcome::Problems => {}
        Outcome::Usage(m) | Outcome::Locked(m) | Outcome::Failed(m) => {
            eprintln!("entidb {name}: {m}");
        }
    }
    ExitCode::from(outcome.code())
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (flags and environment override it).
    #[arg(long, env = "ENTIDB_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (one database per subdirectory).
    #[arg(long, env = "ENTIDB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listen address, host:port (port 0: any free port).
    #[arg(long, env = "ENTIDB_LISTEN")]
    listen: Option<String>,
    /// Signing keys, ID=SECRET[,ID=SECRET...] (secrets of at least 32 bytes); empty counts
    /// as not given.
    #[arg(long, env = "ENTIDB_KEYS", hide_env_values = true)]
    keys: Option<String>,
    /// Oplog retention per database, in transactions.
    #[arg(long, env = "ENTIDB_RETENTION")]
    retention: Option<u64>,
    /// Largest request body in bytes.
    #[arg(long, env = "ENTIDB_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most ops per push.
    #[arg(long, env = "ENTIDB_MAX_OPS_PER_PUSH")]
    max_ops_per_push: Option<usize>,
    /// Largest pull/bootstrap page.
    #[arg(long, env = "ENTIDB_MAX_PAGE")]
    max_page: Option<usize>,
    /// Most prompt requests in flight (pulls and event streams excluded).
    #[arg(long, env = "ENTIDB_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
    /// Most long polls and event streams waiting at once.
    #[arg(long, env = "ENTIDB_MAX_LIVE")]
    max_live: Option<usize>,
    /// Most open HTTP connections.
    #[arg(long, env = "ENTIDB_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// CORS origins, comma-separated (`*`: any).
    #[arg(long, env = "ENTIDB_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Option<Vec<String>>,
    /// OTLP/HTTP endpoint for traces (for example http://127.0.0.1:4318).
    #[arg(long, env = "ENTIDB_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log format.
    #[arg(long, env = "ENTIDB_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The client id (`sub` claim).
    #[arg(long)]
    client: String,
    /// The database (`*`: any).
    #[arg(long, default_value = "*")]
    db: String,
    /// Scopes, comma-separated: read, write, read:COLLECTION, write:COLLECTION, admin.
    #[arg(long, value_delimiter = ',', default_value = "read,write")]
    scope: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// Signing key ID=SECRET (the first one is used); without it (or empty), the first key of
    /// --config, else the development key of the data directory.
    #[arg(long, env = "ENTIDB_KEYS", hide_env_values = true)]
    keys: Option<String>,
    /// The server's TOML configuration file: its keys and data directory, as `entidb serve`
    /// reads them (flags and environment override it).
    #[arg(long, env = "ENTIDB_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory holding the development key (default: the configuration file's, else
    /// ./entidb-data).
    #[arg(long, env = "ENTIDB_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// The key `entidb token` signs with: the first one `entidb serve` would verify with, given
/// the same flags, environment and configuration file (its development key when there are
/// none).
fn token_key(args: &TokenArgs) -> Result<KeyConfig, entidb_server::ServeError> {
    let c = shared_config(args.config.as_ref(), args.data_dir.as_ref(), &args.keys)?;
    match c.keys.into_iter().next() {
        Some(first) => Ok(first),
        None => entidb_server::dev_key(&c.data_dir),
    }
}

/// The settings `serve` and `token` share, in their precedence (flags and environment over
/// the file over the defaults): the configuration file, the data directory and the keys.
/// An empty `--keys` / `ENTIDB_KEYS` (what `docker/compose.yaml` passes when no keys are
/// set) counts as not given, so it does not replace the keys of the file.
fn shared_config(
    file: Option<&PathBuf>,
    data_dir: Option<&PathBuf>,
    keys: &Option<String>,
) -> Result<Config, entidb_server::config::ConfigError> {
    let mut c = match file {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = keys.as_deref().filter(|k| !k.trim().is_empty()) {
        c.keys = Config::parse_keys(v)?;
    }
    Ok(c)
}

fn serve_config(a: &ServeArgs) -> Result<Config, entidb_server::config::ConfigError> {
    let mut c = shared_config(a.config.as_ref(), a.data_dir.as_ref(), &a.keys)?;
    if let Some(v) = &a.listen {
        c.listen = v.clone();
    }
    if let Some(v) = a.retention {
        c.retention = v;
    }
    if let Some(v) = a.max_body_bytes {
        c.max_body_bytes = v;
    }
    if let Some(v) = a.max_ops_per_push {
        c.max_ops_per_push = v;
    }
    if let Some(v) = a.max_page {
        c.max_page = v;
    }
    if let Some(v) = a.max_in_flight {
        c.max_in_flight = v;
    }
    if let Some(v) = a.max_live {
        c.max_live = v;
    }
    if let Some(v) = a.max_connections {
        c.max_connections = v;
    }
    if let Some(v) = &a.cors_origins {
        c.cors_origins = v.clone();
    }
    if let Some(v) = &a.otlp_endpoint {
        c.otlp_endpoint = Some(v.clone());
    }
    Ok(c)
}

/// Installs the log subscriber (and the OpenTelemetry layer when an OTLP endpoint is set).
/// Returns the tracer provider, to be flushed at exit.
fn init_logs(
    format: &str,
    otlp: Option<&str>,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("ENTIDB_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().with_filter(filter()).boxed()
    } else {
        fmt.with_filter(filter()).boxed()
    };
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(None);
    };
    let endpoint = endpoint.trim_end_matches('/');
    let url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    };
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("entidb")
                .build(),
        )
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("entidb-server"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(Some(provider))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use entidb_server::tools;
    match cli.command {
        Command::Inspect { path, json } => tool("inspect", tools::inspect(&path, json)),
        Command::Verify { path, json } => tool("verify", tools::verify(&path, json)),
        Command::Compact { path } => tool("compact", tools::compact(&path)),
        Command::ReleaseHold { path, name } => {
            tool("release-hold", tools::release_hold(&path, &name))
        }
        Command::Backup { path, file } => tool("backup", tools::backup(&path, &file)),
        Command::Restore { file, path, force } => {
            tool("restore", tools::restore(&file, &path, force))
        }
        Command::Dump { path, collection } => {
            tool("dump", tools::dump(&path, collection.as_deref()))
        }
        Command::Load { path, file } => tool("load", tools::load(&path, &file)),
        Command::Rekey { path } => tool("rekey", tools::rekey(&path)),
        Command::Bench { indexes, args } => {
            // The workloads read `--bench` as "real sizes"; without it they run a smoke pass.
            let mut argv = vec!["entidb-bench".to_owned(), "--bench".to_owned()];
            argv.extend(args);
            let r = if indexes {
                entidb_bench::indexes::run(argv)
            } else {
                entidb_bench::workloads::run(argv, &["bench"])
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("entidb bench: {e}");
                    ExitCode::from(4)
                }
            }
        }
        Command::Serve(args) => {
            let config = match serve_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("entidb serve: {e}");
                    return ExitCode::from(2);
                }
            };
            let provider = match init_logs(&args.log_format, config.otlp_endpoint.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("entidb serve: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("entidb serve: cannot start the runtime: {e}");
                    return ExitCode::from(4);
                }
            };
            let result = rt.block_on(entidb_server::serve(
                config,
                entidb_server::shutdown_signal(),
            ));
            if let Some(p) = provider
                && let Err(e) = p.shutdown()
            {
                eprintln!("entidb serve: flushing traces: {e}");
            }
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("entidb serve: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Token(args) => {
            let key = token_key(&args);
            let token = key.and_then(|k| {
                entidb_server::mint_token(&k, &args.db, &args.client, &args.scope, args.ttl_secs)
            });
            match token {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("entidb token: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
