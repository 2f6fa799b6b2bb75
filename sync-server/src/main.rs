//! The `entidb` command: `entidb serve` runs the sync server; `entidb token` mints a token.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use entidb_server::config::Config;

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
    /// Signing keys, ID=SECRET[,ID=SECRET...] (secrets of at least 32 bytes).
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
    /// Signing key ID=SECRET (the first one is used); without it, the development key of
    /// --data-dir.
    #[arg(long, env = "ENTIDB_KEYS", hide_env_values = true)]
    keys: Option<String>,
    /// Data directory holding the development key.
    #[arg(long, env = "ENTIDB_DATA_DIR", default_value = "./entidb-data")]
    data_dir: PathBuf,
}

fn serve_config(a: &ServeArgs) -> Result<Config, entidb_server::config::ConfigError> {
    let mut c = match &a.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = &a.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = &a.listen {
        c.listen = v.clone();
    }
    if let Some(v) = &a.keys {
        c.keys = Config::parse_keys(v)?;
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
    match cli.command {
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
                    return ExitCode::FAILURE;
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
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token(args) => {
            let key = match &args.keys {
                Some(k) => Config::parse_keys(k)
                    .map_err(entidb_server::ServeError::from)
                    .and_then(|keys| {
                        keys.into_iter().next().ok_or_else(|| {
                            entidb_server::ServeError::Config(
                                entidb_server::config::ConfigError::Invalid(
                                    "--keys is empty".into(),
                                ),
                            )
                        })
                    }),
                None => entidb_server::dev_key(&args.data_dir),
            };
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
