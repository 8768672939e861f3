//! Wiring: the gRPC services, health and reflection on a bound listener, and an orderly shutdown.
//!
//! `serve` takes the listener and the shutdown signal from its caller, so `main` and the tests start
//! the server the same way (tests bind `127.0.0.1:0` and hand the listener in: no port races).

use crate::api::{Api, Events};
use crate::domain::Platform;
use crate::engine::{Census, Engine};
use crate::store::{Postgres, Sqlite, StoreError};
use ixn_proto::auth::{Authenticator, Secret, Verifier};
use ixn_proto::clock::Clock;
use ixn_proto::events::event_service_server::EventServiceServer;
use ixn_proto::hosting::{self, Hosting, MAX_MESSAGE_BYTES};
use ixn_proto::interaction::agent_service_server::AgentServiceServer;
use ixn_proto::interaction::interaction_service_server::InteractionServiceServer;
use ixn_proto::measure;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

/// Everything a server needs besides its listener.
#[derive(Debug)]
pub struct Options {
    /// Where the embedded store (SQLite) lives, unless `database_url` names a shared one.
    pub data_dir: PathBuf,
    /// The shared store (PostgreSQL) that several replicas may use at once.
    pub database_url: Option<String>,
    /// The signing secrets tokens are checked against (several during a rotation).
    pub secrets: Vec<Secret>,
    pub platform: Platform,
    pub clock: Clock,
    /// Where to serve `/metrics` (Prometheus); none: metrics are not recorded.
    pub metrics: Option<TcpListener>,
    /// How long a drain may take.
    pub shutdown_grace: Duration,
    /// Per-connection limits and keepalive.
    pub transport: hosting::Transport,
}

impl Options {
    /// Options with the defaults for what a caller rarely sets.
    pub fn new(
        data_dir: PathBuf,
        secrets: Vec<Secret>,
        platform: Platform,
        clock: Clock,
    ) -> Options {
        Options {
            data_dir,
            database_url: None,
            secrets,
            platform,
            clock,
            metrics: None,
            shutdown_grace: hosting::DEFAULT_DRAIN_GRACE,
            transport: hosting::Transport::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the reflection service cannot be built: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("metrics cannot be recorded: {0}")]
    Metrics(String),
}

/// Serves until `shutdown` completes, then drains: health says NOT_SERVING, streams end with
/// UNAVAILABLE (subscribers resume by sequence), in-flight calls finish, the writer commits what it
/// has and releases the data directory.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (platform, clock) = (options.platform, options.clock.clone());
    // Loading reads the whole live state: on a blocking thread.
    let (engine, store) = match &options.database_url {
        Some(url) => {
            let store = Postgres::open(url).await?;
            let described = ixn_proto::pg::describe(&ixn_proto::pg::config(url)?);
            let engine = tokio::task::spawn_blocking(move || Engine::start(store, platform, clock));
            (engine, described)
        }
        None => {
            let store = Sqlite::open(&options.data_dir)?;
            let engine = tokio::task::spawn_blocking(move || Engine::start(store, platform, clock));
            (engine, options.data_dir.display().to_string())
        }
    };
    let engine = engine
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        %store,
        head = engine.log.head(),
        "interaction-server serving"
    );
    let auth = Authenticator::new(Verifier::new(&options.secrets), options.clock.clone())
        .limiting(options.transport.rate_limit);

    if let Some(listener) = options.metrics {
        let handle = measure::install().map_err(ServeError::Metrics)?;
        let engine = Arc::downgrade(&engine);
        let refresh = move || {
            let engine = engine.upgrade();
            async move {
                let Some(engine) = engine else { return };
                measure::set(measure::SUBSCRIBER_LAG, engine.log.max_lag() as f64);
                if let Some(census) = engine.census().await {
                    for (state, n) in Census::STATES.iter().zip(census.0) {
                        measure::set_state(measure::INTERACTIONS, state, n as f64);
                    }
                }
            }
        };
        tokio::spawn(measure::serve(listener, handle, refresh));
    }
    // Weak: the task must not keep the engine (and its health) alive once the server is gone.
    tokio::spawn(engine.health.clone().probe_while_down({
        let engine = Arc::downgrade(&engine);
        move || {
            let engine = engine.upgrade();
            async move {
                if let Some(engine) = engine {
                    engine.probe().await
                }
            }
        }
    }));

    let (draining_tx, draining) = watch::channel(false);
    let api = Api::new(engine.clone());
    let events = Events::new(engine.log.clone(), options.clock.clone(), draining);
    let routes = Routes::new(InterceptedService::new(
        InteractionServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        auth.clone(),
    ))
    .add_service(InterceptedService::new(
        AgentServiceServer::new(api).max_decoding_message_size(MAX_MESSAGE_BYTES),
        auth.clone(),
    ))
    .add_service(InterceptedService::new(
        EventServiceServer::new(events).max_decoding_message_size(MAX_MESSAGE_BYTES),
        auth,
    ));
    let names = [
        InteractionServiceServer::<Api>::NAME,
        AgentServiceServer::<Api>::NAME,
        EventServiceServer::<Events>::NAME,
    ];
    let (health, routes) = hosting::health_and_reflection(&names, routes).await?;
    let hosting = Hosting {
        clock: options.clock.clone(),
        names: names.to_vec(),
        health,
        draining: draining_tx,
        store: engine.health.clone(),
        grace: options.shutdown_grace,
        transport: options.transport.clone(),
    };
    let result = hosting::serve(routes, listener, hosting, shutdown).await;
    // Whatever the writer already holds is committed and answered before the store is released.
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    tracing::info!("stopped");
    Ok(result?)
}
