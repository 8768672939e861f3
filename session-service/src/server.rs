//! Wiring: SessionService and EventService (over session-service's own log), health and reflection
//! on a bound listener; the relay that follows interaction-server; an orderly shutdown.

use crate::api::Api;
use crate::domain::agent_key;
use crate::relay;
use crate::store::Store;
use crate::switch::Switch;
use crate::writer::{View, Writer};
use ixn_proto::auth::{Authenticator, Secret, Verifier};
use ixn_proto::clock::Clock;
use ixn_proto::common::AgentState;
use ixn_proto::events::event_service_server::EventServiceServer;
use ixn_proto::hosting::{self, Hosting, MAX_MESSAGE_BYTES};
use ixn_proto::log::Log;
use ixn_proto::measure;
use ixn_proto::session::SessionState;
use ixn_proto::session::session_service_server::SessionServiceServer;
use ixn_proto::sqlite::StoreError;
use ixn_proto::subscribe::Events;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

/// Everything a server needs besides its listener.
#[derive(Debug)]
pub struct Options {
    pub data_dir: PathBuf,
    /// The deployment's signing secrets: tokens are checked against them, and the first one signs
    /// session-service's own token towards interaction-server.
    pub secrets: Vec<Secret>,
    /// interaction-server's URL, e.g. `http://127.0.0.1:50051`.
    pub interaction_server: String,
    pub clock: Clock,
    /// How long a session may have no `Connect` stream before its Ready channels go Not Ready.
    pub connection_lost_grace: Duration,
    /// The deadline of each call to interaction-server.
    pub switch_timeout: Duration,
    /// Where to serve `/metrics` (Prometheus); none: metrics are not recorded.
    pub metrics: Option<TcpListener>,
    /// How long a drain may take.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the reflection service cannot be built: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("no signing secret is configured")]
    NoSecret,
    #[error("metrics cannot be recorded: {0}")]
    Metrics(String),
}

/// Serves until `shutdown` completes, then drains (see `ixn_proto::hosting`), stops the relay and
/// lets the writer commit what it has before the data directory is released.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let secret = options
        .secrets
        .first()
        .cloned()
        .ok_or(ServeError::NoSecret)?;
    let store = Store::open(&options.data_dir)?;
    let loaded = store.load()?;
    let readers = store.readers();
    let log = Arc::new(Log::new(loaded.head, Arc::new(readers.clone())));
    let mut view = View {
        mirror: loaded.mirror,
        ..Default::default()
    };
    for s in loaded.sessions {
        view.by_agent
            .insert(agent_key(&s.tenant, &s.agent_id), s.session_id.clone());
        view.sessions.insert(s.session_id.clone(), s);
    }
    let live: Vec<String> = view.sessions.keys().cloned().collect();
    let view = Arc::new(Mutex::new(view));
    let clock = options.clock.clone();
    let writer = Arc::new(Writer::start(
        store,
        loaded.head,
        view.clone(),
        log.clone(),
        clock.clone(),
    )?);
    let switch = Arc::new(Switch::new(
        &options.interaction_server,
        secret,
        clock.clone(),
        options.switch_timeout,
    )?);
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %options.data_dir.display(),
        interaction_server = %options.interaction_server,
        head = loaded.head,
        relay_cursor = loaded.cursor,
        "session-service serving"
    );

    if let Some(listener) = options.metrics {
        let handle = measure::install().map_err(ServeError::Metrics)?;
        let (view, log) = (view.clone(), log.clone());
        let refresh = move || {
            measure::set(measure::SUBSCRIBER_LAG, log.max_lag() as f64);
            census(&view.lock().expect("view"));
            std::future::ready(())
        };
        tokio::spawn(measure::serve(listener, handle, refresh));
    }
    // Weak: the task must not keep the writer (and its health) alive once the server is gone.
    tokio::spawn(writer.health.clone().probe_while_down({
        let writer = Arc::downgrade(&writer);
        move || {
            let writer = writer.upgrade();
            async move {
                if let Some(writer) = writer {
                    writer.probe().await
                }
            }
        }
    }));

    let (stop_relay, relay_stopped) = watch::channel(false);
    let relay = tokio::spawn(relay::run(
        switch.clone(),
        writer.clone(),
        view.clone(),
        loaded.cursor,
        relay_stopped,
    ));

    let (draining_tx, draining) = watch::channel(false);
    let api = Api::new(
        view,
        writer.clone(),
        switch,
        readers,
        log.clone(),
        clock.clone(),
        options.connection_lost_grace,
        draining.clone(),
    );
    // After a restart no desktop is connected: every live session's grace period starts now.
    for session_id in live {
        api.inner
            .connections
            .disconnected(api.inner.clone(), &session_id);
    }
    let auth_clock = clock.clone();
    let auth = Authenticator::new(Verifier::new(&options.secrets), move || {
        auth_clock.now_secs()
    });
    let events = Events::new(log, clock.clone(), draining);
    let routes = Routes::new(InterceptedService::new(
        SessionServiceServer::new(api).max_decoding_message_size(MAX_MESSAGE_BYTES),
        auth.clone(),
    ))
    .add_service(InterceptedService::new(
        EventServiceServer::new(events).max_decoding_message_size(MAX_MESSAGE_BYTES),
        auth,
    ));
    let names = [
        SessionServiceServer::<Api>::NAME,
        EventServiceServer::<Events>::NAME,
    ];
    let (health, routes) = hosting::health_and_reflection(&names, routes).await?;
    let hosting = Hosting {
        clock,
        names: names.to_vec(),
        health,
        draining: draining_tx,
        store: writer.health.clone(),
        grace: options.shutdown_grace,
    };
    let result = hosting::serve(routes, listener, hosting, shutdown).await;
    stop_relay.send_replace(true);
    let _ = relay.await;
    let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
    tracing::info!("stopped");
    Ok(result?)
}

/// Sets the gauges of live sessions and their channels by state.
fn census(view: &View) {
    let (mut active, mut logging_out) = (0u64, 0u64);
    let (mut ready, mut not_ready, mut inactive) = (0u64, 0u64, 0u64);
    for session in view.sessions.values() {
        if session.state() == SessionState::LoggingOut {
            logging_out += 1;
        } else {
            active += 1;
        }
        let channels = session.channel_group.iter().flat_map(|g| &g.channels);
        for channel in channels {
            match (channel.active, channel.state()) {
                (false, _) => inactive += 1,
                (true, AgentState::Ready) => ready += 1,
                (true, _) => not_ready += 1,
            }
        }
    }
    measure::set_state(measure::SESSIONS, "active", active as f64);
    measure::set_state(measure::SESSIONS, "logging_out", logging_out as f64);
    measure::set_state(measure::CHANNELS, "ready", ready as f64);
    measure::set_state(measure::CHANNELS, "not_ready", not_ready as f64);
    measure::set_state(measure::CHANNELS, "inactive", inactive as f64);
}
