//! The `switchboard` binary: `switchboard serve [flags]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchboard::config::{Config, LogFormat, Overrides};
use switchboard::server::Server;

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "An actor-based real-time messaging server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: HTTP + WebSocket on one listener.
    Serve(ServeArgs),
    /// Apply the CQL schema (deploy/cql/schema.cql) to the store named by --store.
    Migrate(MigrateArgs),
}

/// `switchboard migrate`: creates the keyspace and tables if absent, and adds the columns
/// that an earlier version's tables lack (idempotent).
#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// TOML config file (its `[cql]` section: replication, consistency, ...).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// `cql://host:port[,host:port]/keyspace`.
    #[arg(long, env = "SWITCHBOARD_STORE")]
    store: Option<String>,
}

/// Each flag can also be set by `SWITCHBOARD_<NAME>` and in the config file; flags win
/// over the environment, the environment over the file.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP + WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Embedded store directory [default: ./data].
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Development auth: accept ?user=&device= without a token.
    #[arg(long, env = "SWITCHBOARD_DEV", num_args = 0..=1, default_missing_value = "true")]
    dev: Option<bool>,
    /// Allow --dev on a non-loopback listen address.
    #[arg(long, env = "SWITCHBOARD_DEV_ALLOW_REMOTE", num_args = 0..=1, default_missing_value = "true")]
    dev_allow_remote: Option<bool>,
    /// `embedded` or `cql://host:port[,host:port]/keyspace` [default: embedded].
    #[arg(long, env = "SWITCHBOARD_STORE")]
    store: Option<String>,
    /// NATS server URL(s); absent: a single node with the in-process bus.
    #[arg(long, env = "SWITCHBOARD_NATS")]
    nats: Option<String>,
    /// This node's id in a cluster [default: derived from host and port].
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    node_id: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Migrate(args) => migrate(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(
        args.config.as_deref(),
        Overrides {
            listen: args.listen,
            data_dir: args.data_dir,
            dev: args.dev,
            dev_allow_remote: args.dev_allow_remote,
            store: args.store,
            nats: args.nats,
            node_id: args.node_id,
        },
    )?;
    init_tracing(config.log_format);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let metrics = switchboard::metrics::install();
        let server = Server::start(config, metrics).await?;
        // A machine-readable line for scripts and tests that listen on port 0.
        println!("switchboard listening on {}", server.local_addr());
        server.run(shutdown_signal()).await
    })?;
    // Background tasks (HTTP keep-alives, timers) must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref(), Overrides { store: args.store, ..Overrides::default() })?;
    init_tracing(config.log_format);
    if !config.store.starts_with("cql://") {
        anyhow::bail!(
            "migrate applies the CQL schema: give --store cql://host:port/keyspace (the embedded store needs none)"
        );
    }
    let options = switchboard::server::cql_options(&config)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(switchboard::store::cql::CqlStore::migrate(&options))?;
    println!("schema applied to keyspace {}", options.keyspace);
    Ok(())
}

/// The config file (or the defaults), with flag and environment overrides, validated.
fn load_config(file: Option<&std::path::Path>, overrides: Overrides) -> anyhow::Result<Config> {
    let mut config = match file {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply(overrides);
    config.validate()?;
    Ok(config)
}

/// The log filter when `SWITCHBOARD_LOG` is unset. ractor opens an info-level span for
/// every actor it starts; an enabled span costs a few hundred bytes of subscriber state
/// for as long as it lives, which at a million user actors is real memory, so ractor is
/// held to warnings.
const DEFAULT_LOG_FILTER: &str = "info,ractor=warn";

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}
