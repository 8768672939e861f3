//! The `interaction-server` binary: parses flags and calls the library.

use interaction_server::clock::Clock;
use interaction_server::config::{self, Cli, Command, ServeArgs, TokenArgs};
use interaction_server::server::{self, Options};
use ixn_proto::auth::{self, Claims, Role, SecretSource};
use ixn_proto::settings::{self, EXIT_CONFIG};
use ixn_proto::trace;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc: see the workspace Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let loaded =
        match settings::load::<Cli>(std::env::args_os().collect(), "config", config::FILE_TABLES) {
            Ok(loaded) => loaded,
            Err(e) => return e.report(),
        };
    match loaded.cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Serve(args)) => serve(args, loaded.file),
        None => serve(loaded.cli.serve, loaded.file),
    }
}

fn serve(args: ServeArgs, file: Option<(std::path::PathBuf, toml::Table)>) -> ExitCode {
    let platform = match config::platform(file.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let environment = std::env::var(auth::SECRET_ENV).ok();
    if args.database_url.is_some()
        && args.jwt_secret_file.is_none()
        && environment.as_deref().is_none_or(|v| v.trim().is_empty())
    {
        eprintln!(
            "configuration error: with --database-url the signing secret must be given ({} or \
             --jwt-secret-file): every replica checks tokens against the same one",
            auth::SECRET_ENV
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let secrets = match auth::resolve_secrets(
        environment,
        args.jwt_secret_file.as_deref(),
        &args.data_dir,
    ) {
        Ok((secrets, source)) => {
            if let SecretSource::Generated(path) = &source {
                eprintln!(
                    "generated a signing secret in {}; mint a token with:\n  interaction-server token --role agent --agent-id a1 --tenant t1 --data-dir {}",
                    path.display(),
                    args.data_dir.display()
                );
            }
            secrets
        }
        Err(e) => {
            eprintln!("configuration error: signing secret: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let transport = match args.transport.transport() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = ixn_proto::hosting::runtime().expect("tokio runtime");
    runtime.block_on(async move {
        let telemetry = match trace::init(
            "interaction-server",
            args.log_format,
            trace::otlp_from_env(),
        ) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("configuration error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let (listener, metrics) =
            match ixn_proto::hosting::bind(args.listen, args.metrics_listen).await {
                Ok(bound) => bound,
                Err(e) => {
                    eprintln!("configuration error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
        let options = Options {
            data_dir: args.data_dir,
            database_url: args.database_url,
            secrets,
            platform,
            clock: Clock::System,
            metrics,
            shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
            transport,
        };
        let served = server::serve(listener, options, ixn_proto::hosting::shutdown_signal()).await;
        telemetry.shutdown().await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("interaction-server: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn token(args: TokenArgs) -> ExitCode {
    let Some(role) = Role::parse(&args.role) else {
        eprintln!(
            "configuration error: --role must be media_server, agent, router, reporter, service or admin"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    if role == Role::Agent && args.agent_id.is_none() {
        eprintln!("configuration error: --agent-id is required for role agent");
        return ExitCode::from(EXIT_CONFIG);
    }
    let secrets = match auth::resolve_secrets(
        std::env::var(auth::SECRET_ENV).ok(),
        args.jwt_secret_file.as_deref(),
        &args.data_dir,
    ) {
        Ok((secrets, _)) => secrets,
        Err(e) => {
            eprintln!("configuration error: signing secret: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let sub = args
        .sub
        .or_else(|| args.agent_id.clone())
        .unwrap_or_else(|| role.as_str().to_owned());
    let mut claims = Claims::new(role, &sub, &args.tenant, Clock::System.now_secs(), args.ttl);
    claims.agent_id = args.agent_id;
    println!("{}", auth::mint(&secrets[0], &claims));
    ExitCode::SUCCESS
}
