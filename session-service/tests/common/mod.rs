//! Test harness: interaction-server and session-service, both real, on real sockets
//! (`127.0.0.1:0`, listeners handed in), sharing one manual clock and one signing secret.
//! Either can be stopped and started again on its data directory.

#![allow(dead_code)]

use interaction_server::domain::{Platform, PlatformConfig};
use ixn_proto::auth::{self, Claims, Role, Secret};
use ixn_proto::clock::{Clock, ManualClock};
use ixn_proto::common::Reason;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::events::Event;
use ixn_proto::events::event::Body;
use ixn_proto::events::event_service_client::EventServiceClient;
use ixn_proto::events::{EventFilter, SubscribeRequest};
use ixn_proto::interaction::agent_service_client::AgentServiceClient;
use ixn_proto::interaction::interaction_service_client::InteractionServiceClient;
use ixn_proto::interaction::{Agent, AgentMedia, GetAgentRequest};
use ixn_proto::interaction::{
    DeliverRequest, DeliverResponse, Interaction, PullRequest, PullResponse, StopProcessingRequest,
    StopProcessingResponse, SubmitRequest,
};
use ixn_proto::session::session_service_client::SessionServiceClient;
use ixn_proto::session::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A bound on how long a test waits for something that must happen; reaching it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(10);
pub const SECRET: &[u8] = b"test-secret-0123456789abcdef";

pub fn secret() -> Secret {
    Secret {
        kid: None,
        bytes: SECRET.to_vec(),
    }
}

/// The platform of most tests: a logout reason is not required; deactivation is supported.
pub fn platform() -> PlatformConfig {
    PlatformConfig {
        default_capacity: Some(10),
        ..Default::default()
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

/// One server task with its shutdown.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap();
    }
}

/// Both services.
pub struct Stack {
    pub clock: ManualClock,
    pub ixn_dir: PathBuf,
    pub session_dir: PathBuf,
    pub platform: PlatformConfig,
    pub ixn: Option<Running>,
    pub sessions: Option<Running>,
    /// interaction-server's address stays the same across its restarts (session-service follows it).
    pub ixn_addr: SocketAddr,
    pub grace: Duration,
    /// Both services on mutual TLS, when set.
    pub tls: Option<StackTls>,
    /// The proxy session-service reaches interaction-server through, when set: a test cuts,
    /// stalls or slows it.
    pub link: Option<ixn_proto::testing::Link>,
    _dir: Option<tempfile::TempDir>,
}

/// The certificates of a stack on mutual TLS: one CA signs both servers' certificates (for
/// `localhost`) and every client's, session-service's towards interaction-server included.
pub struct StackTls {
    pub ca: ixn_proto::testing::Pki,
    pub server: ixn_proto::testing::Issued,
    pub client: ixn_proto::testing::Issued,
    /// Whether session-service presents its certificate to interaction-server.
    pub switch_presents_certificate: bool,
}

impl StackTls {
    pub fn new(switch_presents_certificate: bool) -> StackTls {
        let ca = ixn_proto::testing::Pki::new("stack CA");
        StackTls {
            server: ca.server("localhost"),
            client: ca.client("session-service"),
            ca,
            switch_presents_certificate,
        }
    }
}

async fn listener_at(addr: Option<SocketAddr>) -> TcpListener {
    let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    // A restarted server takes its old port again; the previous socket may linger briefly.
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(platform()).await
    }

    pub async fn start_with(platform: PlatformConfig) -> Stack {
        Self::start_configured(platform, None, false).await
    }

    /// Both services on mutual TLS.
    pub async fn start_tls(tls: StackTls) -> Stack {
        Self::start_configured(platform(), Some(tls), false).await
    }

    /// session-service reaches interaction-server through a [`ixn_proto::testing::Link`].
    pub async fn start_linked() -> Stack {
        Self::start_configured(platform(), None, true).await
    }

    async fn start_configured(
        platform: PlatformConfig,
        tls: Option<StackTls>,
        linked: bool,
    ) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let mut stack = Stack {
            clock: ManualClock::starting_now(),
            ixn_dir: dir.path().join("interaction-server"),
            session_dir: dir.path().join("session-service"),
            platform,
            ixn: None,
            sessions: None,
            ixn_addr: "127.0.0.1:0".parse().unwrap(),
            grace: Duration::from_secs(60),
            tls,
            link: None,
            _dir: Some(dir),
        };
        stack.start_interaction_server().await;
        if linked {
            stack.link = Some(ixn_proto::testing::Link::start(stack.ixn_addr).await);
        }
        stack.start_session_service().await;
        stack
    }

    pub async fn start_interaction_server(&mut self) {
        let reuse = (self.ixn_addr.port() != 0).then_some(self.ixn_addr);
        let listener = listener_at(reuse).await;
        self.ixn_addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let mut options = interaction_server::server::Options::new(
            self.ixn_dir.clone(),
            vec![secret()],
            Platform::from_config(&self.platform).unwrap(),
            Clock::Manual(self.clock.clone()),
        );
        if let Some(tls) = &self.tls {
            options.transport.tls = Some(tls.ca.server_tls(&tls.server, true));
        }
        let handle = tokio::spawn(async move {
            interaction_server::server::serve(listener, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        self.ixn = Some(Running {
            addr: self.ixn_addr,
            shutdown: Some(tx),
            handle,
        });
    }

    pub async fn stop_interaction_server(&mut self) {
        if let Some(r) = self.ixn.take() {
            r.stop().await;
        }
    }

    pub async fn start_session_service(&mut self) {
        let listener = listener_at(self.sessions.as_ref().map(|r| r.addr)).await;
        self.sessions = Some(self.spawn_session_service(listener).await);
    }

    /// Another replica of session-service on the same store (on PostgreSQL: the same schema).
    pub async fn session_replica(&self) -> Running {
        self.spawn_session_service(listener_at(None).await).await
    }

    async fn spawn_session_service(&self, listener: TcpListener) -> Running {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let mut transport = ixn_proto::hosting::Transport::default();
        let mut interaction_server_tls = None;
        if let Some(tls) = &self.tls {
            transport.tls = Some(tls.ca.server_tls(&tls.server, true));
            let presented = tls.switch_presents_certificate.then_some(&tls.client);
            interaction_server_tls = Some(tls.ca.client_tls(presented));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let options = session_service::server::Options {
            data_dir: self.session_dir.clone(),
            database_url: database_url(&self.session_dir).await,
            secrets: vec![secret()],
            interaction_server: format!(
                "{scheme}://{}",
                self.link.as_ref().map_or(self.ixn_addr, |link| link.addr)
            ),
            interaction_server_tls,
            clock: Clock::Manual(self.clock.clone()),
            connection_lost_grace: self.grace,
            switch_timeout: Duration::from_secs(2),
            metrics: None,
            shutdown_grace: ixn_proto::hosting::DEFAULT_DRAIN_GRACE,
            transport,
        };
        let handle = tokio::spawn(async move {
            session_service::server::serve(listener, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Running {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    pub async fn stop_session_service(&mut self) -> SocketAddr {
        let r = self.sessions.take().expect("session-service runs");
        let addr = r.addr;
        r.stop().await;
        addr
    }

    /// Restarts session-service on the same data directory and port.
    pub async fn restart_session_service(&mut self) {
        let addr = self.stop_session_service().await;
        let listener = listener_at(Some(addr)).await;
        drop(listener);
        self.sessions = Some(Running {
            addr,
            shutdown: None,
            handle: tokio::spawn(async {}),
        });
        self.start_session_service().await;
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.sessions.take() {
            r.stop().await;
        }
        self.stop_interaction_server().await;
    }

    pub fn token(&self, role: Role, sub: &str, tenant: &str, agent: Option<&str>) -> String {
        let mut claims = Claims::new(role, sub, tenant, self.clock.now() / 1_000_000, 3_600);
        claims.agent_id = agent.map(str::to_owned);
        auth::mint(&secret(), &claims)
    }

    /// A channel to either service, on TLS with the stack's client certificate if the stack is.
    fn channel(&self, addr: SocketAddr) -> Channel {
        channel_to(addr, self.tls.as_ref())
    }

    /// A desktop: an agent's client of session-service.
    pub fn desktop(&self, agent: &str) -> Desktop {
        let token = self.token(Role::Agent, agent, "t1", Some(agent));
        Desktop::new(
            self.channel(self.sessions.as_ref().unwrap().addr),
            agent,
            token,
        )
    }

    /// A desktop talking to the session-service at `addr` (a replica).
    pub fn desktop_at(&self, addr: SocketAddr, agent: &str) -> Desktop {
        let token = self.token(Role::Agent, agent, "t1", Some(agent));
        Desktop::new(self.channel(addr), agent, token)
    }

    /// An admin's client of session-service.
    pub fn session_admin(&self) -> Desktop {
        let token = self.token(Role::Admin, "ops", "t1", None);
        Desktop::new(
            self.channel(self.sessions.as_ref().unwrap().addr),
            "",
            token,
        )
    }

    /// A client of interaction-server as `role`.
    pub fn ixn(&self, role: Role, sub: &str) -> Ixn {
        let agent = (role == Role::Agent).then_some(sub);
        let token = self.token(role, sub, "t1", agent);
        let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
        let channel = self.channel(self.ixn_addr);
        Ixn {
            interactions: InteractionServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            events: EventServiceClient::with_interceptor(channel, bearer),
        }
    }
}

/// A lazily connecting channel to `addr`, on TLS with `tls`'s client certificate if given.
pub fn channel_to(addr: SocketAddr, tls: Option<&StackTls>) -> Channel {
    match tls {
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
        Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls.ca.client_tls(Some(&tls.client)))
            .unwrap()
            .connect_lazy(),
    }
}

#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// A media server submits a `media` interaction, router r1 takes it and invites `agent`: its id.
pub async fn offer(stack: &Stack, agent: &str, media: &str) -> String {
    let id = stack
        .ixn(Role::MediaServer, "ms1")
        .submit("q", media)
        .await
        .interaction_id;
    let mut router = stack.ixn(Role::Router, "r1");
    router.pull("q", &id).await;
    router.deliver(&id, agent).await.unwrap();
    id
}

/// A SetNotReady (reason code `why`) the test makes to prove nothing happened before it: its
/// AgentStateChanged must be the next event on `bus`.
pub async fn fence(desktop: &mut Desktop, bus: &mut Stream, session: &str, media: &str, why: &str) {
    let request_id = rid();
    desktop
        .client
        .set_not_ready(SetNotReadyRequest {
            request_id: request_id.clone(),
            session_id: session.into(),
            media_type: media.into(),
            reason: reason(why),
        })
        .await
        .unwrap();
    let e = bus
        .next()
        .await
        .expect("the stream failed")
        .expect("the stream ended");
    assert_eq!(
        e.correlation_id, request_id,
        "expected the fence, got {e:?}"
    );
    let Body::AgentStateChanged(c) = body(&e) else {
        panic!("expected the fence's AgentStateChanged, got {e:?}");
    };
    let code = c.reason.as_ref().map(|r| r.code.as_str()).unwrap_or("");
    assert_eq!((c.media_type.as_str(), code), (media, why));
}

pub fn rid() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn reason(code: &str) -> Option<Reason> {
    Some(Reason {
        code: code.into(),
        ..Default::default()
    })
}

pub fn reason_of(status: &Status) -> R {
    Failure::from_status(status)
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
        .reason
}

/// An agent's (or admin's) client of session-service.
#[derive(Clone)]
pub struct Desktop {
    pub agent: String,
    pub client: SessionServiceClient<Authed>,
    pub events: EventServiceClient<Authed>,
}

impl Desktop {
    pub fn new(channel: Channel, agent: &str, token: String) -> Desktop {
        let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
        Desktop {
            agent: agent.into(),
            client: SessionServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            events: EventServiceClient::with_interceptor(channel, bearer),
        }
    }

    pub async fn login(&mut self, media: &[&str], ready: bool) -> Result<Session, Status> {
        Ok(self
            .client
            .login(LoginRequest {
                request_id: rid(),
                agent_id: String::new(),
                place_id: format!("place-{}", self.agent),
                media_types: media.iter().map(|m| m.to_string()).collect(),
                ready,
            })
            .await?
            .into_inner())
    }

    pub async fn logout(
        &mut self,
        session: &str,
        why: Option<Reason>,
    ) -> Result<LogoutResponse, Status> {
        self.logout_as(&rid(), session, why).await
    }

    pub async fn logout_as(
        &mut self,
        request_id: &str,
        session: &str,
        why: Option<Reason>,
    ) -> Result<LogoutResponse, Status> {
        Ok(self
            .client
            .logout(LogoutRequest {
                request_id: request_id.into(),
                session_id: session.into(),
                reason: why,
            })
            .await?
            .into_inner())
    }

    pub async fn get(&mut self, session: &str) -> Result<Session, Status> {
        Ok(self
            .client
            .get_session(GetSessionRequest {
                session_id: session.into(),
            })
            .await?
            .into_inner())
    }

    pub async fn set_ready(&mut self, session: &str, media: &str) -> Result<Session, Status> {
        Ok(self
            .client
            .set_ready(SetReadyRequest {
                request_id: rid(),
                session_id: session.into(),
                media_type: media.into(),
            })
            .await?
            .into_inner())
    }

    /// The caller's events in session-service's log after `after`, read with `Subscribe`: not a
    /// `Connect` stream, so its desktop still counts as gone.
    pub async fn log_after(&mut self, after: u64) -> Stream {
        let stream = self
            .events
            .subscribe(SubscribeRequest {
                after_sequence: after,
                from_head: false,
                filter: None,
            })
            .await
            .unwrap()
            .into_inner();
        Stream { stream }
    }

    pub async fn connect(&mut self, session: &str, after: u64) -> Stream {
        let stream = self
            .client
            .connect(ConnectRequest {
                session_id: session.into(),
                after_sequence: after,
            })
            .await
            .unwrap()
            .into_inner();
        Stream { stream }
    }
}

/// A client of interaction-server.
#[derive(Clone)]
pub struct Ixn {
    pub interactions: InteractionServiceClient<Authed>,
    pub events: EventServiceClient<Authed>,
}

impl Ixn {
    pub async fn submit(&mut self, queue: &str, media: &str) -> Interaction {
        self.interactions
            .submit(SubmitRequest {
                request_id: rid(),
                media_type: media.into(),
                queue: queue.into(),
                properties: Default::default(),
            })
            .await
            .unwrap()
            .into_inner()
            .interaction
            .unwrap()
    }

    pub async fn pull(&mut self, queue: &str, id: &str) -> PullResponse {
        self.interactions
            .pull(PullRequest {
                request_id: rid(),
                queue: queue.into(),
                media_type: String::new(),
                interaction_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
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

    pub async fn stop(&mut self, id: &str) -> StopProcessingResponse {
        self.interactions
            .stop_processing(StopProcessingRequest {
                request_id: rid(),
                interaction_id: id.into(),
                reason: None,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn subscribe(&mut self, after: u64) -> Stream {
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
        Stream { stream }
    }
}

/// An open event stream.
pub struct Stream {
    pub stream: tonic::Streaming<Event>,
}

impl Stream {
    /// The next event, `Ok(None)` when the stream ended with OK; failing after [`PATIENCE`].
    pub async fn next(&mut self) -> Result<Option<Event>, Status> {
        match tokio::time::timeout(PATIENCE, self.stream.message()).await {
            Ok(result) => result,
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// Events until one of `kind` (included).
    pub async fn until(&mut self, kind: &str) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let e = self
                .next()
                .await
                .expect("stream failed")
                .unwrap_or_else(|| panic!("stream ended before {kind}; saw {:?}", kinds(&seen)));
            let done = kind_of(&e) == kind;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }

    /// Every event until the stream ends with OK.
    pub async fn drain_to_end(&mut self) -> Vec<Event> {
        let mut seen = Vec::new();
        while let Some(e) = self.next().await.expect("stream failed") {
            seen.push(e);
        }
        seen
    }
}

/// The events a whole logout emits on the session's stream: a Not Ready change for each of `ready`
/// channels, then each of `channels` deactivated and disposed, the group, the session.
pub fn logout_kinds(ready: usize, channels: usize) -> Vec<&'static str> {
    let mut kinds = vec!["AgentStateChanged"; ready];
    kinds.extend(std::iter::repeat_n("ChannelDeactivated", channels));
    kinds.extend(std::iter::repeat_n("ChannelDisposed", channels));
    kinds.extend(["ChannelGroupDisposed", "SessionDisposed"]);
    kinds
}

pub fn kind_of(e: &Event) -> &'static str {
    ixn_proto::event::kind(e.body.as_ref().unwrap())
}

pub fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(kind_of).collect()
}

pub fn is(e: &Event, kind: &str) -> bool {
    e.body
        .as_ref()
        .is_some_and(|b| ixn_proto::event::kind(b) == kind)
}

pub fn body(e: &Event) -> &Body {
    e.body.as_ref().unwrap()
}

/// The data directories, for tests that look at the store.
pub fn dirs(stack: &Stack) -> (&Path, &Path) {
    (&stack.ixn_dir, &stack.session_dir)
}

// ---------------------------------------------------------------------------------------------
// What the Logout tests read at both ends: the switch's view of the agent, the session's channels,
// failures and event bodies.
// ---------------------------------------------------------------------------------------------

/// The default platform's Not Ready reason: what step 3 uses when the logout gives no reason.
pub const DEFAULT_NOT_READY: &str = "after-call-work";

/// The switch's (interaction-server's) view of an agent, read as role `service`.
pub async fn switch_view(stack: &Stack, agent: &str) -> Agent {
    let token = stack.token(Role::Service, "s", "t1", None);
    let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
    let channel = channel_to(stack.ixn_addr, stack.tls.as_ref());
    AgentServiceClient::with_interceptor(channel, bearer)
        .get_agent(GetAgentRequest {
            agent_id: agent.into(),
        })
        .await
        .expect("GetAgent")
        .into_inner()
}

pub fn switch_media<'a>(agent: &'a Agent, media: &str) -> &'a AgentMedia {
    agent
        .media
        .iter()
        .find(|m| m.media_type == media)
        .unwrap_or_else(|| panic!("the switch has no {media} media for the agent: {agent:?}"))
}

pub fn switch_media_types(agent: &Agent) -> Vec<&str> {
    let mut media: Vec<&str> = agent.media.iter().map(|m| m.media_type.as_str()).collect();
    media.sort_unstable();
    media
}

pub fn channel<'a>(s: &'a Session, media: &str) -> &'a ixn_proto::session::Channel {
    s.channel_group
        .as_ref()
        .and_then(|g| g.channels.iter().find(|c| c.media_type == media))
        .unwrap_or_else(|| panic!("the session has no {media} channel: {s:?}"))
}

pub fn reason_code(r: Option<&Reason>) -> Option<&str> {
    r.map(|r| r.code.as_str())
}

/// The failure's ErrorInfo, after checking its reason and gRPC code.
pub fn failure(status: &Status, reason: R, code: Code) -> Failure {
    assert_eq!(reason_of(status), reason, "{status:?}");
    assert_eq!(status.code(), code, "{status:?}");
    Failure::from_status(status).unwrap()
}

/// Takes the body of an event of the expected kind.
#[allow(unused_macros)]
macro_rules! take {
    ($event:expr, $kind:ident) => {
        match body($event) {
            Body::$kind(b) => b,
            other => panic!(
                "expected {}, got {}",
                stringify!($kind),
                ixn_proto::event::kind(other)
            ),
        }
    };
}

/// interaction-server in this process on the system clock, and session-service as its own binary
/// (a real process: signals, flags, the environment, its own telemetry).
pub struct Live {
    pub ixn: Running,
    pub ixn_addr: SocketAddr,
    pub sessions: ixn_proto::testing::Process,
    _dir: tempfile::TempDir,
}

impl Live {
    /// Starts both; `metrics` serves interaction-server's `/metrics` (once per test process: the
    /// recorder is global) and `session_metrics` session-service's; `configure` adds to
    /// session-service's command line and environment.
    pub async fn start(
        metrics: Option<TcpListener>,
        session_metrics: bool,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Live {
        Self::start_on(platform(), metrics, session_metrics, configure).await
    }

    /// As [`Live::start`], on interaction-server's `platform`.
    pub async fn start_on(
        platform: PlatformConfig,
        metrics: Option<TcpListener>,
        session_metrics: bool,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Live {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ixn_addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let mut options = interaction_server::server::Options::new(
            dir.path().join("interaction-server"),
            vec![secret()],
            Platform::from_config(&platform).unwrap(),
            Clock::System,
        );
        options.metrics = metrics;
        let handle = tokio::spawn(async move {
            interaction_server::server::serve(listener, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let mut command = ixn_proto::testing::binary(env!("CARGO_BIN_EXE_session-service"), SECRET);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path().join("session-service"))
            .arg("--interaction-server")
            .arg(format!("http://{ixn_addr}"))
            .arg("--log-format")
            .arg("json");
        if session_metrics {
            command.arg("--metrics-listen").arg("127.0.0.1:0");
        }
        configure(&mut command);
        let sessions =
            ixn_proto::testing::Process::spawn(command, "session-service serving", session_metrics);
        Live {
            ixn: Running {
                addr: ixn_addr,
                shutdown: Some(tx),
                handle,
            },
            ixn_addr,
            sessions,
            _dir: dir,
        }
    }

    pub fn token(role: Role, sub: &str, agent: Option<&str>) -> String {
        let mut claims = Claims::new(role, sub, "t1", Clock::System.now_secs(), 3_600);
        claims.agent_id = agent.map(str::to_owned);
        auth::mint(&secret(), &claims)
    }

    pub fn desktop(&self, agent: &str) -> Desktop {
        let token = Self::token(Role::Agent, agent, Some(agent));
        Desktop::new(channel_to(self.sessions.addr, None), agent, token)
    }

    pub fn ixn(&self, role: Role, sub: &str) -> Ixn {
        let agent = (role == Role::Agent).then_some(sub);
        let bearer = Bearer(
            format!("Bearer {}", Self::token(role, sub, agent))
                .parse()
                .unwrap(),
        );
        let channel = channel_to(self.ixn_addr, None);
        Ixn {
            interactions: InteractionServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            events: EventServiceClient::with_interceptor(channel, bearer),
        }
    }
}
