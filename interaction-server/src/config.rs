//! Configuration: command-line flags (each with an `IXN_*` environment variable) and an optional
//! TOML file for what does not fit on a command line (the platform's reason lists).

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
    /// File holding the signing secret (`secret`, or lines of `kid=secret`); `IXN_JWT_SECRET` wins.
    #[arg(long, env = "IXN_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// TOML configuration file (a `[platform]` table: reasons, media, capacities, invite timeout).
    #[arg(long, env = "IXN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format; `RUST_LOG` filters what is logged.
    #[arg(long, env = "IXN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub platform: PlatformConfig,
}

/// Reads the platform from the configuration file, if any; a bad value names the setting.
pub fn platform(file: Option<&PathBuf>) -> Result<Platform, String> {
    let config = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    Platform::from_config(&config.platform)
}
