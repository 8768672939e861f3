//! The `interaction-server` binary: parses flags and calls the library.

use clap::Parser;
use interaction_server::clock::Clock;
use interaction_server::config::{self, Cli, Command, ServeArgs, TokenArgs};
use interaction_server::server::{self, Options};
use ixn_proto::auth::{self, Claims, Role, SecretSource};
use std::process::ExitCode;

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    ixn_proto::hosting::init_logs(args.log_format);
    let platform = match config::platform(args.config.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let secrets = match auth::resolve_secrets(
        std::env::var(auth::SECRET_ENV).ok(),
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
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", args.listen);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let options = Options {
            data_dir: args.data_dir,
            secrets,
            platform,
            clock: Clock::System,
        };
        match server::serve(listener, options, ixn_proto::hosting::shutdown_signal()).await {
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
