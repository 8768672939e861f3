//! How both services are hosted: health and reflection beside the contract's services, accepted
//! connections with Nagle's algorithm off, and an orderly, bounded drain.
//!
//! On shutdown: health says NOT_SERVING for every service and overall, streams are told to end with
//! UNAVAILABLE (clients resume by sequence), the listener stops accepting, in-flight calls finish —
//! for at most [`DRAIN_GRACE`] on the server's clock, since a client that stopped reading cannot be
//! sent its UNAVAILABLE and would otherwise hold the server (and its data directory) forever.

use crate::clock::{Clock, Micros};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The largest request a client may send (the transport refuses more with OUT_OF_RANGE).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// How long a drain waits for open calls and streams to finish before the server stops anyway.
pub const DRAIN_GRACE: Duration = Duration::from_secs(20);

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

/// Health (every named service SERVING) and reflection advertising exactly the named services: the
/// contract's descriptor set holds both services' packages, and a tool should list only what this
/// server answers.
pub async fn health_and_reflection(
    names: &[&'static str],
    routes: Routes,
) -> Result<(HealthReporter, Routes), tonic_reflection::server::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in names {
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

/// Serves `routes` on `listener` until `shutdown` completes, then drains as the module says.
/// `draining` turns true when the drain starts: every stream watches it.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    clock: Clock,
    names: &[&'static str],
    health: HealthReporter,
    draining: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (deadline_tx, deadline) = oneshot::channel::<Micros>();
    let names = names.to_vec();
    let signal = {
        let clock = clock.clone();
        async move {
            shutdown.await;
            tracing::info!("draining");
            // Fixed before anyone is told of the drain.
            let _ = deadline_tx.send(clock.now() + DRAIN_GRACE.as_micros() as Micros);
            for name in names {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            draining.send_replace(true);
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
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::select! {
        result = serving => result,
        () = grace_over => {
            tracing::warn!(grace = ?DRAIN_GRACE, "the drain did not finish in time; stopping with calls or streams still open");
            Ok(())
        }
    }
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (a developer's Ctrl-C): both drain the same way.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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

/// Starts logging to standard error, filtered by `RUST_LOG` (default `info`).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
