//! Configuration: command-line flags, each with an `IXN_*` environment variable and a key of the
//! optional TOML file (`--config`), whose `[platform]` table holds what does not fit on a command
//! line (the platform's reason lists). See [`ixn_proto::settings`] for the precedence.

use crate::domain::{Platform, PlatformConfig};
use clap::{Args, Parser, Subcommand};
use ixn_proto::hosting::LogFormat;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "interaction-server",
    version,
    about = "Owns interactions and who processes them."
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve(ServeArgs),
    /// Mint a token signed with the server's secret, for trying the API by hand.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "IXN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory of the SQLite database (and the generated signing secret, if none is given).
    #[arg(long, env = "IXN_DATA_DIR", default_value = "data/interaction-server")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the shared store (`postgres://user:password@host/db`), instead of SQLite in
    /// the data directory: several replicas may serve one database at once.
    #[arg(long, env = "IXN_DATABASE_URL", value_parser = ixn_proto::pg::parse_url, hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the signing secret (`secret`, or lines of `kid=secret`); `IXN_JWT_SECRET` wins.
    #[arg(long, env = "IXN_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// TOML configuration file: any of these settings by long name (`metrics_listen = "…"`), and a
    /// `[platform]` table (reasons, media, capacities, invite timeout).
    #[arg(long, env = "IXN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (`GET /metrics`); none when unset.
    #[arg(long, env = "IXN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long a drain (SIGTERM, SIGINT) lets open calls and streams finish before exiting (ms).
    #[arg(long, env = "IXN_SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,
    /// Log format; `RUST_LOG` filters what is logged.
    #[arg(long, env = "IXN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub transport: ixn_proto::hosting::TransportArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// media_server, agent, router, reporter, service or admin.
    #[arg(long)]
    pub role: String,
    #[arg(long, default_value = "t1")]
    pub tenant: String,
    /// The token's subject; defaults to the agent id, or to the role's name.
    #[arg(long)]
    pub sub: Option<String>,
    /// Required for role agent.
    #[arg(long)]
    pub agent_id: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3_600)]
    pub ttl: i64,
    #[arg(long, env = "IXN_DATA_DIR", default_value = "data/interaction-server")]
    pub data_dir: PathBuf,
    #[arg(long, env = "IXN_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
}

/// The tables of the configuration file that are not flags.
pub const FILE_TABLES: &[&str] = &["platform"];

/// The configuration file's tables.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(default)]
    pub platform: PlatformConfig,
}

/// Reads the platform from the configuration file, if any; a bad value names the setting.
pub fn platform(file: Option<&(PathBuf, toml::Table)>) -> Result<Platform, String> {
    let config = match file {
        Some((path, table)) => table
            .clone()
            .try_into::<FileConfig>()
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => FileConfig::default(),
    };
    Platform::from_config(&config.platform)
}
