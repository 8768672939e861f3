//! The `session-service` binary: parses flags and calls the library.

use clap::Parser;
use ixn_proto::auth;
use ixn_proto::clock::Clock;
use session_service::config::Cli;
use session_service::server::{self, Options};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ixn_proto::hosting::init_logs(cli.log_format);
    if !cli.interaction_server.starts_with("http://")
        && !cli.interaction_server.starts_with("https://")
    {
        eprintln!("configuration error: --interaction-server must be an http:// or https:// URL");
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.switch_timeout_ms == 0 {
        eprintln!("configuration error: --switch-timeout-ms must be positive");
        return ExitCode::from(EXIT_CONFIG);
    }
    // The secret is shared with interaction-server, so it is never generated here.
    let secrets = match (
        std::env::var(auth::SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty()),
        &cli.jwt_secret_file,
    ) {
        (Some(value), _) => auth::parse_secrets(&value),
        (None, Some(file)) => {
            std::fs::read_to_string(file).and_then(|text| auth::parse_secrets(&text))
        }
        (None, None) => {
            eprintln!(
                "configuration error: set IXN_JWT_SECRET or --jwt-secret-file to interaction-server's signing secret"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let secrets = match secrets {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: signing secret: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(cli.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", cli.listen);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let options = Options {
            data_dir: cli.data_dir,
            secrets,
            interaction_server: cli.interaction_server,
            clock: Clock::System,
            connection_lost_grace: Duration::from_millis(cli.connection_lost_grace_ms),
            switch_timeout: Duration::from_millis(cli.switch_timeout_ms),
        };
        match server::serve(listener, options, ixn_proto::hosting::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("session-service: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
