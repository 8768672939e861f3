//! Test harness: a real interaction-server on a real socket (`127.0.0.1:0`, listener handed in),
//! with a manual clock, and clients that carry tokens for any role.
//!
//! Exact event sets are asserted without sleeping: after the operation under test, a *fence* — an
//! event that the party is sure to see, caused after the operation — is produced, and the party's
//! stream is read up to it. Since a stream is in sequence order, nothing the operation caused can
//! arrive after the fence.

#![allow(dead_code)]

use interaction_server::clock::{Clock, ManualClock};
use interaction_server::domain::{Platform, PlatformConfig};
use interaction_server::server::{self, Options};
use ixn_proto::auth::{self, Claims, Role, Secret};
use ixn_proto::common::Reason;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::events::event::Body;
use ixn_proto::events::event_service_client::EventServiceClient;
use ixn_proto::events::{Event, EventFilter, SubscribeRequest};
use ixn_proto::interaction::agent_service_client::AgentServiceClient;
use ixn_proto::interaction::interaction_service_client::InteractionServiceClient;
use ixn_proto::interaction::*;
#[allow(unused_imports)]
pub use ixn_proto::testing::{Process, sample, scrape};
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A bound on how long a test waits for something that must happen; reaching it is a failure, never
/// a way of waiting for time to pass.
pub use ixn_proto::testing::PATIENCE;

pub const SECRET: &[u8] = b"test-secret-0123456789abcdef";

pub fn secret() -> Secret {
    Secret {
        kid: None,
        bytes: SECRET.to_vec(),
    }
}

/// Whether this test binary runs its suite on PostgreSQL (a `*_on_postgres` one) or SQLite.
pub fn on_postgres() -> bool {
    ixn_proto::testing::on_postgres(env!("CARGO_CRATE_NAME"))
}

/// The store of a server on `data_dir`: SQLite in it, or a PostgreSQL schema named after it.
pub async fn database_url(data_dir: &Path) -> Option<String> {
    ixn_proto::testing::database_url(env!("CARGO_CRATE_NAME"), data_dir).await
}

/// A running server.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub clock: ManualClock,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), server::ServeError>>>,
}

/// The platform most tests run on: capacities raised so that fences can invite agents freely.
pub fn test_platform() -> Platform {
    Platform::from_config(&PlatformConfig {
        default_capacity: Some(100),
        ..Default::default()
    })
    .expect("test platform")
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> TestServer {
        Self::start_with(data_dir, test_platform(), ManualClock::starting_now()).await
    }

    pub async fn start_with(data_dir: &Path, platform: Platform, clock: ManualClock) -> TestServer {
        Self::start_configured(data_dir, platform, clock, |_| {}).await
    }

    /// A server whose options the test sets beyond the usual ones.
    pub async fn start_configured(
        data_dir: &Path,
        platform: Platform,
        clock: ManualClock,
        configure: impl FnOnce(&mut Options),
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let mut options = Options::new(
            data_dir.to_owned(),
            vec![secret()],
            platform,
            Clock::Manual(clock.clone()),
        );
        options.database_url = database_url(data_dir).await;
        configure(&mut options);
        let handle = tokio::spawn(server::serve(listener, options, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            clock,
            data_dir: data_dir.to_owned(),
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Drains and stops the server; the data directory is released when this returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    fn endpoint(&self) -> tonic::transport::Endpoint {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).unwrap()
    }

    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.unwrap()
    }

    /// A client for `party`.
    pub async fn client(&self, party: Who) -> Client {
        self.client_on(self.channel().await, party)
    }

    /// A client for `party` whose connection takes in at most HTTP/2's initial 64 KiB before its
    /// reader reads: a stream it stops reading fills the transport after a few events.
    pub async fn client_with_small_windows(&self, party: Who) -> Client {
        let channel = self
            .endpoint()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        self.client_on(channel, party)
    }

    fn client_on(&self, channel: Channel, party: Who) -> Client {
        let token = party.token(self.clock.now() / 1_000_000, 3_600);
        Client::new(channel, party, token)
    }
}

/// Who a client is.
#[derive(Clone, Debug)]
pub struct Who {
    pub role: Role,
    pub sub: String,
    pub tenant: String,
    pub agent_id: Option<String>,
}

impl Who {
    pub fn new(role: Role, sub: &str, tenant: &str) -> Who {
        Who {
            role,
            sub: sub.into(),
            tenant: tenant.into(),
            agent_id: (role == Role::Agent).then(|| sub.to_owned()),
        }
    }
    pub fn media_server(sub: &str) -> Who {
        Who::new(Role::MediaServer, sub, "t1")
    }
    pub fn agent(agent: &str) -> Who {
        Who::new(Role::Agent, agent, "t1")
    }
    pub fn router(sub: &str) -> Who {
        Who::new(Role::Router, sub, "t1")
    }
    pub fn reporter() -> Who {
        Who::new(Role::Reporter, "reports", "t1")
    }
    pub fn service() -> Who {
        Who::new(Role::Service, "session-service", "t1")
    }
    pub fn admin() -> Who {
        Who::new(Role::Admin, "ops", "t1")
    }
    pub fn in_tenant(mut self, tenant: &str) -> Who {
        self.tenant = tenant.into();
        self
    }

    pub fn token(&self, now_secs: i64, ttl: i64) -> String {
        let mut claims = Claims::new(self.role, &self.sub, &self.tenant, now_secs, ttl);
        claims.agent_id = self.agent_id.clone();
        auth::mint(&secret(), &claims)
    }
}

#[derive(Clone)]
pub struct Bearer(pub MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// The three services, as one party.
#[derive(Clone)]
pub struct Client {
    pub who: Who,
    pub interactions: InteractionServiceClient<Authed>,
    pub agents: AgentServiceClient<Authed>,
    pub events: EventServiceClient<Authed>,
}

pub fn rid() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn reason(code: &str) -> Option<Reason> {
    Some(Reason {
        code: code.into(),
        description: String::new(),
        system_name: String::new(),
    })
}

impl Client {
    pub fn new(channel: Channel, who: Who, token: String) -> Client {
        let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
        Client {
            who,
            interactions: InteractionServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            agents: AgentServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            events: EventServiceClient::with_interceptor(channel, bearer),
        }
    }

    pub async fn submit(&mut self, queue: &str, media: &str) -> Result<Interaction, Status> {
        let r = self
            .interactions
            .submit(SubmitRequest {
                request_id: rid(),
                media_type: media.into(),
                queue: queue.into(),
                properties: Default::default(),
            })
            .await?
            .into_inner();
        Ok(r.interaction.unwrap())
    }

    pub async fn pull(&mut self, queue: &str, id: &str) -> Result<PullResponse, Status> {
        Ok(self
            .interactions
            .pull(PullRequest {
                request_id: rid(),
                queue: queue.into(),
                media_type: String::new(),
                interaction_id: id.into(),
            })
            .await?
            .into_inner())
    }

    pub async fn deliver(&mut self, id: &str, agent: &str) -> Result<DeliverResponse, Status> {
        Ok(self
            .interactions
            .deliver(DeliverRequest {
                request_id: rid(),
                interaction_id: id.into(),
                agent_id: agent.into(),
                timeout_ms: 0,
            })
            .await?
            .into_inner())
    }

    pub async fn accept(&mut self, id: &str, ticket: &str) -> Result<AcceptResponse, Status> {
        Ok(self
            .interactions
            .accept(AcceptRequest {
                request_id: rid(),
                interaction_id: id.into(),
                ticket_id: ticket.into(),
            })
            .await?
            .into_inner())
    }

    pub async fn stop(&mut self, id: &str) -> Result<StopProcessingResponse, Status> {
        Ok(self
            .interactions
            .stop_processing(StopProcessingRequest {
                request_id: rid(),
                interaction_id: id.into(),
                reason: reason("done"),
            })
            .await?
            .into_inner())
    }

    /// The agent as `GetAgent` reports it.
    pub async fn get_agent(&mut self, agent: &str) -> Agent {
        self.agents
            .get_agent(GetAgentRequest {
                agent_id: agent.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn get(&mut self, id: &str) -> Result<Interaction, Status> {
        Ok(self
            .interactions
            .get(GetInteractionRequest {
                interaction_id: id.into(),
            })
            .await?
            .into_inner())
    }

    /// Logs `agent` in and makes it Ready on `media` (as a service).
    pub async fn ready_agent(&mut self, agent: &str, media: &[&str]) {
        self.agents
            .login(AgentLoginRequest {
                request_id: rid(),
                agent_id: agent.into(),
                place_id: format!("place-{agent}"),
            })
            .await
            .unwrap();
        for m in media {
            self.agents
                .add_media(AddMediaRequest {
                    request_id: rid(),
                    agent_id: agent.into(),
                    media_type: (*m).into(),
                    ready: true,
                    reason: None,
                })
                .await
                .unwrap();
        }
    }

    pub async fn subscribe(&mut self, after: u64) -> Subscription {
        let stream = self
            .events
            .subscribe(SubscribeRequest {
                after_sequence: after,
                from_head: false,
                filter: Some(EventFilter::default()),
            })
            .await
            .unwrap()
            .into_inner();
        Subscription { stream }
    }
}

/// An open event stream.
pub struct Subscription {
    pub stream: tonic::Streaming<Event>,
}

impl Subscription {
    /// The next event; a test fails if none comes within [`PATIENCE`].
    pub async fn next(&mut self) -> Result<Event, Status> {
        match tokio::time::timeout(PATIENCE, self.stream.message()).await {
            Ok(Ok(Some(e))) => Ok(e),
            Ok(Ok(None)) => Err(Status::cancelled("the stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// Every event up to (not including) the first one that concerns `fence` (an interaction id).
    pub async fn until_fence(&mut self, fence: &str) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await.expect("stream failed before its fence");
            let body = e.body.as_ref().unwrap();
            if ixn_proto::event::interaction_id(body) == Some(fence) {
                return seen;
            }
            seen.push(e);
        }
    }
}

/// `kind@interaction→to` descriptions of events, for readable assertions.
pub fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let body = e.body.as_ref().unwrap();
            let to: Vec<String> = e.to.iter().map(|p| p.label()).collect();
            if to.is_empty() {
                ixn_proto::event::kind(body).to_string()
            } else {
                format!("{}→{}", ixn_proto::event::kind(body), to.join(","))
            }
        })
        .collect()
}

/// The contract reason of a failed call.
pub fn reason_of(status: &Status) -> R {
    Failure::from_status(status)
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
        .reason
}

/// Only the events of one interaction.
pub fn about(events: &[Event], id: &str) -> Vec<Event> {
    about_any(events, &[id])
}

/// Only the events of some interactions.
pub fn about_any(events: &[Event], ids: &[&str]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| {
            e.body
                .as_ref()
                .and_then(|b| ixn_proto::event::interaction_id(b))
                .is_some_and(|id| ids.contains(&id))
        })
        .cloned()
        .collect()
}

pub fn is(body: &Option<Body>, kind: &str) -> bool {
    body.as_ref()
        .is_some_and(|b| ixn_proto::event::kind(b) == kind)
}

/// Starts the server binary on `data_dir` and a free port (see [`Process::spawn`]).
pub fn start_process(
    data_dir: &Path,
    mut command: std::process::Command,
    metrics: bool,
) -> Process {
    command
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--log-format")
        .arg("json");
    Process::spawn(command, "interaction-server serving", metrics)
}

/// The test's secret for a binary.
pub fn binary(path: &str) -> std::process::Command {
    ixn_proto::testing::binary(path, SECRET)
}

/// A client of a server running as a process.
pub async fn process_client(process: &Process, who: Who) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", process.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Client::new(channel, who.clone(), who.token(now, 3_600))
}
