//! How both services are hosted: health and reflection beside the contract's services, accepted
//! connections with Nagle's algorithm off, and an orderly, bounded drain.
//!
//! On shutdown: health says NOT_SERVING for every service and overall, streams are told to end with
//! UNAVAILABLE (clients resume by sequence), the listener stops accepting, in-flight calls finish —
//! for at most the configured grace ([`DEFAULT_DRAIN_GRACE`]) on the server's clock, since a client that stopped reading cannot be
//! sent its UNAVAILABLE and would otherwise hold the server (and its data directory) forever.

use crate::clock::{Clock, Micros};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The largest request a client may send (the transport refuses more with OUT_OF_RANGE).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// How long a drain waits for open calls and streams to finish, unless configured otherwise.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(20);

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";
/// A health service name that is SERVING for as long as the process runs: a liveness probe asks
/// for it, so that a store outage (which the overall status reports) does not restart the pod.
pub const LIVENESS: &str = "liveness";

/// Health (every named service SERVING) and reflection advertising exactly the named services: the
/// contract's descriptor set holds both services' packages, and a tool should list only what this
/// server answers.
pub async fn health_and_reflection(
    names: &[&'static str],
    routes: Routes,
) -> Result<(HealthReporter, Routes), tonic_reflection::server::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in names.iter().chain(&[LIVENESS]) {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(HEALTH)
        .with_service_name(REFLECTION);
    for name in names {
        reflection = reflection.with_service_name(*name);
    }
    let routes = routes
        .add_service(health_service)
        .add_service(reflection.build_v1()?);
    Ok((health, routes))
}

/// Whether the store answered its last commit or probe. The writer reports; health follows.
#[derive(Clone, Debug)]
pub struct StoreHealth(Arc<watch::Sender<bool>>);

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth(Arc::new(watch::channel(true).0))
    }
}

impl StoreHealth {
    /// Records the outcome of a commit or probe; only a change wakes anyone.
    pub fn report(&self, ok: bool) {
        self.0.send_if_modified(|was| {
            let changed = *was != ok;
            *was = ok;
            changed
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    /// While the store is unreachable, runs `probe` every [`PROBE_EVERY`] (a probe reports its
    /// own outcome); returns when the health's last holder is gone.
    pub async fn probe_while_down<F, Fut>(self, probe: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut rx = self.subscribe();
        drop(self);
        loop {
            if rx.wait_for(|ok| !*ok).await.is_err() {
                return;
            }
            tokio::time::sleep(PROBE_EVERY).await;
            probe().await;
        }
    }
}

/// How often an unreachable store is tried again.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What the transport allows each connection, so that no client can hold the server's resources
/// without bound: streams at once, and how long a silent peer is kept.
#[derive(Clone, Debug)]
pub struct Transport {
    /// Streams (calls) one connection may have open at once; more wait for one to end.
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 PING checks an idle connection's peer.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// TCP keepalive on accepted connections, for peers gone without a trace.
    pub tcp_keepalive: Duration,
    /// The calls each caller may make; none: unlimited.
    pub rate_limit: Option<crate::auth::RateLimit>,
    /// TLS (and, with a client CA, mutual TLS); none: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            max_concurrent_streams: 1_024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            rate_limit: None,
            tls: None,
        }
    }
}

/// The transport's settings, as both services take them.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// Calls (streams) one connection may have open at once; more wait for one to end.
    #[arg(long, env = "IXN_MAX_CONCURRENT_STREAMS", default_value_t = 1_024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 PING checks a connection's peer (ms).
    #[arg(long, env = "IXN_KEEPALIVE_INTERVAL_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed (ms).
    #[arg(long, env = "IXN_KEEPALIVE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_timeout_ms: u64,
    /// Calls per second each caller (a token's tenant, role and subject) may make on average;
    /// more are refused with RATE_LIMITED. 0: unlimited.
    #[arg(long, env = "IXN_RATE_LIMIT_PER_S", default_value_t = 0)]
    pub rate_limit_per_s: u32,
    /// Calls a caller may make at once above its rate (default: one second's worth).
    #[arg(long, env = "IXN_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<std::num::NonZeroU32>,
    /// PEM certificate chain to serve TLS with; plaintext when unset.
    #[arg(long, env = "IXN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "IXN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): every client must present a certificate signed by one (mutual TLS).
    #[arg(long, env = "IXN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Reads a PEM file a setting names; the error names the setting.
pub fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {} ({flag}): {e}", path.display()))
}

impl TransportArgs {
    /// The transport these settings describe; an unreadable or unusable certificate or key names
    /// its setting.
    pub fn transport(&self) -> Result<Transport, String> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        if self.rate_limit_per_s == 0 && self.rate_limit_burst.is_some() {
            return Err("--rate-limit-burst needs --rate-limit-per-s".into());
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let identity =
                    Identity::from_pem(read_pem(cert, "--tls-cert")?, read_pem(key, "--tls-key")?);
                let mut tls = ServerTlsConfig::new().identity(identity);
                if let Some(ca) = &self.tls_client_ca {
                    tls =
                        tls.client_ca_root(Certificate::from_pem(read_pem(ca, "--tls-client-ca")?));
                }
                // The certificate, the key and the CA are parsed here, not once serving.
                tonic::transport::Server::builder()
                    .tls_config(tls.clone())
                    .map_err(|e| {
                        format!("--tls-cert, --tls-key or --tls-client-ca cannot be used: {e}")
                    })?;
                Some(tls)
            }
            _ => None,
        };
        Ok(Transport {
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: Duration::from_millis(self.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            rate_limit: std::num::NonZeroU32::new(self.rate_limit_per_s).map(|per_second| {
                crate::auth::RateLimit {
                    per_second,
                    burst: self.rate_limit_burst.unwrap_or(per_second),
                }
            }),
            tls,
            ..Transport::default()
        })
    }
}

/// How a server is hosted besides its routes and listener.
#[derive(Debug)]
pub struct Hosting {
    pub clock: Clock,
    /// The contract's services this server answers.
    pub names: Vec<&'static str>,
    pub health: HealthReporter,
    /// Turns true when the drain starts: every stream watches it.
    pub draining: watch::Sender<bool>,
    pub store: StoreHealth,
    /// How long the drain may take.
    pub grace: Duration,
    pub transport: Transport,
}

/// Serves `routes` on `listener` until `shutdown` completes, then drains as the module says.
/// Health is SERVING while the store answers and no drain has started, NOT_SERVING otherwise.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    hosting: Hosting,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let Hosting {
        clock,
        names,
        health,
        draining,
        store,
        grace,
        transport,
    } = hosting;
    let (deadline_tx, deadline) = oneshot::channel::<Micros>();
    let (reported_tx, mut reported) = watch::channel(false);
    tokio::spawn(follow_health(
        health,
        names,
        store.subscribe(),
        draining.subscribe(),
        reported_tx,
    ));
    let signal = {
        let clock = clock.clone();
        async move {
            shutdown.await;
            tracing::info!(?grace, "draining");
            // Fixed before anyone is told of the drain.
            let _ = deadline_tx.send(clock.now() + grace.as_micros() as Micros);
            draining.send_replace(true);
            // Load balancers hear NOT_SERVING before the listener closes.
            let _ = reported.wait_for(|r| *r).await;
        }
    };
    let grace_over = async move {
        match deadline.await {
            Ok(deadline) => clock.sleep_until(deadline).await,
            Err(_) => std::future::pending().await,
        }
    };
    // Nagle's algorithm off: with it, a response of more than one segment waits for the client's
    // delayed ACK (about 40 ms) before its last segment goes out.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(transport.tcp_keepalive));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = transport.tls {
        builder = builder.tls_config(tls)?;
    }
    let serving = builder
        .max_concurrent_streams(transport.max_concurrent_streams)
        .http2_keepalive_interval(Some(transport.keepalive_interval))
        .http2_keepalive_timeout(Some(transport.keepalive_timeout))
        .layer(crate::observe::ObserveLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::select! {
        result = serving => result,
        () = grace_over => {
            tracing::warn!(?grace, "the drain did not finish in time; stopping with calls or streams still open");
            Ok(())
        }
    }
}

/// Keeps every named service's status and the overall one in step with the store and the drain;
/// says through `reported` once NOT_SERVING for the drain has been published.
async fn follow_health(
    health: HealthReporter,
    names: Vec<&'static str>,
    mut store: watch::Receiver<bool>,
    mut draining: watch::Receiver<bool>,
    reported: watch::Sender<bool>,
) {
    loop {
        let store_ok = *store.borrow_and_update();
        let drain = *draining.borrow_and_update();
        let status = if store_ok && !drain {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in names.iter().chain(&[""]) {
            health.set_service_status(*name, status).await;
        }
        if !store_ok {
            tracing::warn!("the store is unreachable: NOT_SERVING");
        }
        if drain {
            reported.send_replace(true);
            return;
        }
        tokio::select! {
            changed = store.changed() => if changed.is_err() { return },
            changed = draining.changed() => if changed.is_err() { return },
        }
    }
}

/// Binds the gRPC listener and, if asked for, the metrics one; an address that cannot be bound is
/// a configuration error naming its setting.
pub async fn bind(
    listen: std::net::SocketAddr,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(TcpListener, Option<TcpListener>), String> {
    let grpc = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen} (--listen): {e}"))?;
    let metrics = match metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (--metrics-listen): {e}"))?,
        ),
        None => None,
    };
    Ok((grpc, metrics))
}

/// The tokio runtime both services run on: one worker per CPU, and the LIFO slot off where the
/// build has `--cfg tokio_unstable` (`.cargo/config.toml` sets it for the workspace).
///
/// With the slot, the task a finishing call wakes (its connection's, to write the answer) runs next
/// on that worker, ahead of the calls already woken. A group commit answers tens of calls at once
/// over a few connections, so each connection wrote each answer in a `writev` of its own: 0.87 of
/// them per StopProcessing. Without the slot the woken calls run first and each connection writes
/// their answers together: 0.24 per StopProcessing, and a ninth less of the workers' CPU.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_builder().build()
}

fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (a developer's Ctrl-C): both drain the same way.
///
/// The handlers are installed when this is called, not when the future is first polled: a signal
/// that arrives once the server says it is serving is never the default action (exit by signal).
/// Call it from within the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_woken_task_waits_behind_the_tasks_already_queued() {
        // One worker, so that nothing is stolen: the order is the scheduler's alone.
        let runtime = runtime_builder().worker_threads(1).build().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let log = order.clone();
        runtime.block_on(async move {
            let (x, y) = tokio::spawn(async move {
                let (wake, woken) = oneshot::channel::<()>();
                let log_y = log.clone();
                let y = tokio::spawn(async move {
                    let _ = woken.await;
                    log_y.lock().unwrap().push("woken");
                });
                // Y runs and waits for its wake.
                tokio::task::yield_now().await;
                let x = tokio::spawn(async move { log.lock().unwrap().push("queued") });
                wake.send(()).unwrap();
                (x, y)
            })
            .await
            .unwrap();
            x.await.unwrap();
            y.await.unwrap();
        });
        // With the LIFO slot, the woken task would have run first.
        assert_eq!(
            *order.lock().unwrap(),
            ["queued", "woken"],
            "the LIFO slot is on: was this built without `--cfg tokio_unstable`? (a RUSTFLAGS \
             variable replaces the rustflags of .cargo/config.toml, so it must repeat them)"
        );
    }
}
