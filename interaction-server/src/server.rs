//! Wiring: the gRPC services, health and reflection on a bound listener, and an orderly shutdown.
//!
//! `serve` takes the listener and the shutdown signal from its caller, so `main` and the tests start
//! the server the same way (tests bind `127.0.0.1:0` and hand the listener in: no port races).

use crate::api::{Api, Events};
use crate::domain::{Micros, Platform};
use crate::engine::Engine;
use crate::store::{Store, StoreError};
use ixn_proto::auth::{Authenticator, Secret, Verifier};
use ixn_proto::clock::Clock;
use ixn_proto::events::event_service_server::EventServiceServer;
use ixn_proto::interaction::agent_service_server::AgentServiceServer;
use ixn_proto::interaction::interaction_service_server::InteractionServiceServer;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;

/// Everything a server needs besides its listener.
#[derive(Debug)]
pub struct Options {
    pub data_dir: PathBuf,
    /// The signing secrets tokens are checked against (several during a rotation).
    pub secrets: Vec<Secret>,
    pub platform: Platform,
    pub clock: Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the reflection service cannot be built: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The largest request a client may send (the transport refuses more with OUT_OF_RANGE).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The accepted connections, with Nagle's algorithm off: with it, a response of more than one
/// segment waits for the client's delayed ACK (about 40 ms) before its last segment goes out.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// How long a drain waits, on the server's clock, for open calls and streams to finish before the
/// server stops anyway: a subscriber that stopped reading cannot be sent its UNAVAILABLE (the
/// transport's flow control holds it back), and would otherwise keep the server, and its data
/// directory, forever.
pub const DRAIN_GRACE: Duration = Duration::from_secs(20);

/// Serves until `shutdown` completes, then drains: health says NOT_SERVING, streams end with
/// UNAVAILABLE (subscribers resume by sequence), in-flight calls finish, the writer commits what it
/// has and releases the data directory.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = Store::open(&options.data_dir)?;
    let engine = Engine::start(store, options.platform, options.clock.clone())?;
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %options.data_dir.display(),
        head = engine.log.head(),
        "interaction-server serving"
    );
    let clock = options.clock.clone();
    let auth = Authenticator::new(Verifier::new(&options.secrets), move || clock.now_secs());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<InteractionServiceServer<Api>>().await;
    health.set_serving::<AgentServiceServer<Api>>().await;
    health.set_serving::<EventServiceServer<Events>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ixn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // Advertise only what this server serves: the contract's descriptor set also holds
        // session-service's SessionService.
        .with_service_name(InteractionServiceServer::<Api>::NAME)
        .with_service_name(AgentServiceServer::<Api>::NAME)
        .with_service_name(EventServiceServer::<Events>::NAME)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()?;

    let (draining_tx, draining) = watch::channel(false);
    let (drain_deadline_tx, drain_deadline) = oneshot::channel::<Micros>();
    let api = Api::new(engine.clone());
    let events = Events::new(engine.log.clone(), options.clock.clone(), draining);
    let signal = {
        let health = health.clone();
        let clock = options.clock.clone();
        async move {
            shutdown.await;
            tracing::info!("draining");
            // Fixed before anyone is told of the drain.
            let _ = drain_deadline_tx.send(clock.now() + DRAIN_GRACE.as_micros() as Micros);
            health
                .set_not_serving::<InteractionServiceServer<Api>>()
                .await;
            health.set_not_serving::<AgentServiceServer<Api>>().await;
            health.set_not_serving::<EventServiceServer<Events>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            draining_tx.send_replace(true);
        }
    };

    let grace_over = {
        let clock = options.clock.clone();
        async move {
            match drain_deadline.await {
                Ok(deadline) => clock.sleep_until(deadline).await,
                Err(_) => std::future::pending().await,
            }
        }
    };
    let serving = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(InterceptedService::new(
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
        ))
        .serve_with_incoming_shutdown(incoming(listener), signal);
    let result = tokio::select! {
        result = serving => result,
        () = grace_over => {
            tracing::warn!(grace = ?DRAIN_GRACE, "the drain did not finish in time; stopping with calls or streams still open");
            Ok(())
        }
    };
    // Whatever the writer already holds is committed and answered before the store is released.
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    tracing::info!("stopped");
    Ok(result?)
}
