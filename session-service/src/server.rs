//! Wiring: SessionService and EventService (over session-service's own log), health and reflection
//! on a bound listener; the relay that follows interaction-server; an orderly shutdown.

use crate::api::Api;
use crate::relay::{self, Relay};
use crate::store::{Postgres, Reads, Sqlite, Store};
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
use ixn_proto::store::StoreError;
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
    /// Where the embedded store (SQLite) lives, unless `database_url` names a shared one.
    pub data_dir: PathBuf,
    /// The shared store (PostgreSQL) that several replicas may use at once.
    pub database_url: Option<String>,
    /// The deployment's signing secrets: tokens are checked against them, and the first one signs
    /// session-service's own token towards interaction-server.
    pub secrets: Vec<Secret>,
    /// interaction-server's URL, e.g. `http://127.0.0.1:50051`.
    pub interaction_server: String,
    /// TLS towards interaction-server (an `https://` URL): its CA and a client certificate.
    pub interaction_server_tls: Option<tonic::transport::ClientTlsConfig>,
    pub clock: Clock,
    /// How long a session may have no `Connect` stream before its Ready channels go Not Ready.
    pub connection_lost_grace: Duration,
    /// The deadline of each call to interaction-server.
    pub switch_timeout: Duration,
    /// Where to serve `/metrics` (Prometheus); none: metrics are not recorded.
    pub metrics: Option<TcpListener>,
    /// How long a drain may take.
    pub shutdown_grace: Duration,
    /// Per-connection limits and keepalive.
    pub transport: hosting::Transport,
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
    let (started, store, presence) = match &options.database_url {
        Some(url) => {
            let store = Postgres::open(url).await?;
            let presence = store.presence().await?;
            let described = ixn_proto::pg::describe(&ixn_proto::pg::config(url)?);
            let started = Started::start(store, options.clock.clone()).await?;
            (started, described, Some(presence))
        }
        None => {
            let store = Sqlite::open(&options.data_dir)?;
            let described = options.data_dir.display().to_string();
            let started = Started::start(store, options.clock.clone()).await?;
            (started, described, None)
        }
    };
    let Started {
        loaded_head,
        cursor,
        live,
        reads,
        role,
        log,
        view,
        writer,
    } = started;
    let clock = options.clock.clone();
    let switch = Arc::new(Switch::new(
        &options.interaction_server,
        options.interaction_server_tls.clone(),
        secret,
        clock.clone(),
        options.switch_timeout,
    )?);
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        store = %store,
        interaction_server = %options.interaction_server,
        head = loaded_head,
        relay_cursor = cursor,
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
        Relay {
            switch: switch.clone(),
            writer: writer.clone(),
            cursor,
            role,
        },
        relay_stopped,
    ));

    let (draining_tx, draining) = watch::channel(false);
    let api = Api::new(
        view,
        writer.clone(),
        switch,
        reads,
        log.clone(),
        clock.clone(),
        options.connection_lost_grace,
        draining.clone(),
    );
    let presence = presence.map(|(presence, lease)| {
        let (record, recorded) = tokio::sync::mpsc::unbounded_channel();
        api.inner.connections.shared(presence.number(), record);
        tokio::spawn(share_connections(
            api.inner.clone(),
            presence,
            lease,
            recorded,
        ))
    });
    // After a restart no desktop is connected: every live session's grace period starts now.
    for session_id in live {
        api.inner
            .connections
            .disconnected(api.inner.clone(), &session_id);
    }
    let auth = Authenticator::new(Verifier::new(&options.secrets), clock.clone())
        .limiting(options.transport.rate_limit);
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
        transport: options.transport.clone(),
    };
    let result = hosting::serve(routes, listener, hosting, shutdown).await;
    stop_relay.send_replace(true);
    let _ = relay.await;
    if let Some(presence) = presence {
        presence.abort();
    }
    let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
    tracing::info!("stopped");
    Ok(result?)
}

/// On a shared store: keeps this replica present (taking its lock again if its connection is lost),
/// records where its desktops are connected, in order, and forgets what replicas that are gone and
/// sessions that ended left.
async fn share_connections(
    inner: Arc<crate::api::Inner>,
    presence: ixn_proto::pg::Presence,
    lease: ixn_proto::pg::Lease,
    mut recorded: tokio::sync::mpsc::UnboundedReceiver<crate::api::Shared>,
) {
    const RENEW_EVERY: Duration = Duration::from_secs(1);
    const FORGET_EVERY: Duration = Duration::from_secs(3_600);
    let number = presence.number();
    let reads = &inner.reads;
    // Ended streams are kept well past any grace that may still be running on them.
    let keep = (inner.grace.as_micros() as i64 * 2).max(FORGET_EVERY.as_micros() as i64);
    let mut lease = Some(lease);
    let mut renew = tokio::time::interval(RENEW_EVERY);
    let mut forget = tokio::time::interval(FORGET_EVERY);
    loop {
        let held = lease.is_some();
        let lost = async {
            match lease.as_mut() {
                Some(lease) => lease.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            change = recorded.recv() => {
                let Some((session_id, open, at, done)) = change else { return };
                if let Err(e) = reads.connected(&session_id, number, open, at).await {
                    tracing::warn!(session_id, error = %e, "where the desktop is connected cannot be recorded");
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            _ = lost => {
                tracing::warn!(number, "this replica's presence was lost; taking it again");
                lease = None;
            }
            _ = renew.tick(), if !held => match presence.renew().await {
                Ok(again) => lease = again,
                Err(e) => tracing::warn!(error = %e, "the presence cannot be taken again"),
            },
            _ = forget.tick() => {
                if let Err(e) = reads.forget_absent(inner.clock.now(), keep).await {
                    tracing::warn!(error = %e, "what gone replicas left cannot be forgotten");
                }
            }
        }
    }
}

/// The store loaded, and the writer started on it.
struct Started {
    loaded_head: u64,
    cursor: u64,
    /// The live sessions' ids.
    live: Vec<String>,
    reads: Reads,
    role: Option<(ixn_proto::pg::Elector, Reads)>,
    log: Arc<Log>,
    view: Arc<Mutex<View>>,
    writer: Arc<Writer>,
}

impl Started {
    async fn start<S: Store>(store: S, clock: Clock) -> Result<Started, ServeError> {
        // Loading blocks (and on PostgreSQL drives the runtime itself): not on a runtime thread.
        let (store, loaded) = tokio::task::spawn_blocking(move || {
            let mut store = store;
            store.load().map(|loaded| (store, loaded))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let reads = store.reads();
        let role = store.elector().map(|elector| (elector, reads.clone()));
        let log = Arc::new(Log::new(loaded.head, reads.history()));
        let mut view = View {
            mirror: loaded.mirror,
            ..Default::default()
        };
        for s in loaded.sessions {
            view.put(s);
        }
        let live = view.sessions.keys().cloned().collect();
        let view = Arc::new(Mutex::new(view));
        let writer = Arc::new(Writer::start(
            store,
            loaded.head,
            view.clone(),
            log.clone(),
            clock,
        )?);
        Ok(Started {
            loaded_head: loaded.head,
            cursor: loaded.cursor,
            live,
            reads,
            role,
            log,
            view,
            writer,
        })
    }
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
