//! The `session-service` binary: parses flags and calls the library.

use ixn_proto::auth;
use ixn_proto::clock::Clock;
use ixn_proto::settings::{self, EXIT_CONFIG};
use ixn_proto::trace;
use session_service::config::Cli;
use session_service::server::{self, Options};
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc: see the workspace Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match settings::load::<Cli>(std::env::args_os().collect(), "config", &[]) {
        Ok(loaded) => loaded.cli,
        Err(e) => return e.report(),
    };
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
    let interaction_server_tls = match cli.interaction_server_tls() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let transport = match cli.transport.transport() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = ixn_proto::hosting::runtime().expect("tokio runtime");
    runtime.block_on(async move {
        let telemetry = match trace::init("session-service", cli.log_format, trace::otlp_from_env())
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("configuration error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let (listener, metrics) =
            match ixn_proto::hosting::bind(cli.listen, cli.metrics_listen).await {
                Ok(bound) => bound,
                Err(e) => {
                    eprintln!("configuration error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
        let options = Options {
            metrics,
            shutdown_grace: Duration::from_millis(cli.shutdown_grace_ms),
            data_dir: cli.data_dir,
            database_url: cli.database_url,
            secrets,
            interaction_server: cli.interaction_server,
            interaction_server_tls,
            clock: Clock::System,
            connection_lost_grace: Duration::from_millis(cli.connection_lost_grace_ms),
            switch_timeout: Duration::from_millis(cli.switch_timeout_ms),
            transport,
        };
        let served = server::serve(listener, options, ixn_proto::hosting::shutdown_signal()).await;
        telemetry.shutdown().await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("session-service: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
