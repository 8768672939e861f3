//! Configuration: command-line flags, each with an environment variable and a key of the optional
//! TOML file (`--config`). See [`ixn_proto::settings`] for the precedence.

use clap::Parser;
use ixn_proto::hosting::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[derive(Debug, Parser)]
#[command(
    name = "session-service",
    version,
    about = "Owns agent sessions: login, channels, Ready / Not Ready and logout."
)]
pub struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, env = "IXN_SESSION_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Directory of the SQLite database.
    #[arg(
        long,
        env = "IXN_SESSION_DATA_DIR",
        default_value = "data/session-service"
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the shared store (`postgres://user:password@host/db`), instead of SQLite in
    /// the data directory: several replicas may serve one database at once. A database (or
    /// schema) of session-service's own, not interaction-server's.
    #[arg(long, env = "IXN_SESSION_DATABASE_URL", value_parser = ixn_proto::pg::parse_url, hide_env_values = true)]
    pub database_url: Option<String>,
    /// interaction-server's URL.
    #[arg(
        long,
        env = "IXN_INTERACTION_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub interaction_server: String,
    /// PEM CA certificate(s) to verify interaction-server's certificate with, for an `https://`
    /// URL; the system's roots when unset.
    #[arg(long, env = "IXN_INTERACTION_SERVER_CA")]
    pub interaction_server_ca: Option<PathBuf>,
    /// PEM client certificate to present to interaction-server (mutual TLS).
    #[arg(
        long,
        env = "IXN_INTERACTION_SERVER_CERT",
        requires = "interaction_server_key"
    )]
    pub interaction_server_cert: Option<PathBuf>,
    /// PEM private key of `--interaction-server-cert`.
    #[arg(
        long,
        env = "IXN_INTERACTION_SERVER_KEY",
        requires = "interaction_server_cert"
    )]
    pub interaction_server_key: Option<PathBuf>,
    /// File holding the signing secret shared with interaction-server (`secret`, or lines of
    /// `kid=secret`); `IXN_JWT_SECRET` wins.
    #[arg(long, env = "IXN_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// How long a session may have no Connect stream before its Ready channels go Not Ready (ms).
    #[arg(long, env = "IXN_CONNECTION_LOST_GRACE_MS", default_value_t = 60_000)]
    pub connection_lost_grace_ms: u64,
    /// The deadline of each call to interaction-server (ms).
    #[arg(long, env = "IXN_SWITCH_TIMEOUT_MS", default_value_t = 5_000)]
    pub switch_timeout_ms: u64,
    /// TOML configuration file: any of these settings by long name (`metrics_listen = "…"`).
    #[arg(long, env = "IXN_SESSION_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (`GET /metrics`); none when unset.
    #[arg(long, env = "IXN_SESSION_METRICS_LISTEN")]
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

impl Cli {
    /// How to speak TLS to interaction-server: for an `https://` URL, its CA (or the system's
    /// roots) and the client certificate to present, if any.
    pub fn interaction_server_tls(&self) -> Result<Option<ClientTlsConfig>, String> {
        use ixn_proto::hosting::read_pem;
        let https = self.interaction_server.starts_with("https://");
        if !https
            && (self.interaction_server_ca.is_some() || self.interaction_server_cert.is_some())
        {
            return Err(
                "--interaction-server-ca and --interaction-server-cert need an https:// --interaction-server"
                    .into(),
            );
        }
        if !https {
            return Ok(None);
        }
        let mut tls = match &self.interaction_server_ca {
            Some(ca) => {
                let pem = read_pem(ca, "--interaction-server-ca")?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!(
                        "{} (--interaction-server-ca) holds no PEM certificate",
                        ca.display()
                    ));
                }
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let (Some(cert), Some(key)) =
            (&self.interaction_server_cert, &self.interaction_server_key)
        {
            tls = tls.identity(Identity::from_pem(
                read_pem(cert, "--interaction-server-cert")?,
                read_pem(key, "--interaction-server-key")?,
            ));
        }
        // The certificates and the key are parsed here, not at the first call.
        tonic::transport::Endpoint::from_shared(self.interaction_server.clone())
            .and_then(|endpoint| endpoint.tls_config(tls.clone()))
            .map_err(|e| {
                format!(
                    "--interaction-server-ca, --interaction-server-cert or --interaction-server-key \
                     cannot be used: {e}"
                )
            })?;
        Ok(Some(tls))
    }
}
