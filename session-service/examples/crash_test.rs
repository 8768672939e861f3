//! `cargo xtask crash-test [--cycles N] [--seed S] [--release] [--database-url URL]`: both services
//! (the built binaries, named by `IXN_CRASH_BIN_DIR`) on a fresh data directory (or, with
//! `--database-url`, a fresh schema each on that PostgreSQL), under a mixed load, killed with
//! SIGKILL at random moments and restarted; after every kill it checks that nothing acknowledged was lost, nothing
//! was applied twice and each log, followed across the kills, has no gap and no duplicate.
//!
//! The load, each part a task of its own:
//! - flows: a media server submits into a queue, the router pulls and delivers to an agent, the
//!   agent accepts, then stops processing or places the interaction back in the queue;
//! - churning agents: login, Ready, Not Ready, logout, over and over, through session-service (which
//!   carries each step to interaction-server, the switch);
//! - handling agents, logged in and Ready throughout, whose invites session-service relays;
//! - one follower per log (`Subscribe` as an administrator), resuming after its last sequence
//!   whenever its stream breaks.
//!
//! A cycle: the load runs for a random while, then interaction-server, session-service or both are
//! killed (SIGKILL: no drain, no flush). The load stops. Each request that failed is retried with
//! its `request_id` after the restart, as a client would, until it is answered. Then:
//! - every acknowledged request of interaction-server has its events at the sequence its answer
//!   gave, in one contiguous run, and no request's events appear twice (`lost`, `duplicates`);
//! - every acknowledged request of session-service has its events in session-service's log;
//! - each interaction, session and agent (at the switch) is in the state the acknowledged requests
//!   left it in: nothing acknowledged is missing, nothing unacknowledged is half applied;
//! - each follower saw every sequence once, in order (`gaps`, `duplicates`), and what it saw live,
//!   before the kill, is what a fresh replay of the durable log now shows (a change shown to a
//!   subscriber and then lost counts as `lost`);
//! - every event of interaction-server's log addressed to a handling agent was relayed into
//!   session-service's log exactly once.
//!
//! It ends with `cycles=N acked=A lost=L gaps=G duplicates=D` and exits non-zero unless all three
//! are 0 and nothing else went wrong (a request refused, a service that did not come back). The
//! seed it prints replays the same random choices.

mod support;

use ixn_proto::auth::{self, Claims, Role, Secret};
use ixn_proto::common::party;
use ixn_proto::events::event_service_client::EventServiceClient;
use ixn_proto::events::{Event, SubscribeRequest};
use ixn_proto::interaction::agent_service_client::AgentServiceClient;
use ixn_proto::interaction::interaction_service_client::InteractionServiceClient;
use ixn_proto::interaction::{self as ix, InteractionState};
use ixn_proto::session::session_service_client::SessionServiceClient;
use ixn_proto::session::{self as ss, SessionState};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Authed, Bearer, Service, Services, reason, rid};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long anything that must happen may take before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(20);
const TENANT: &str = "t1";
/// Concurrent interaction flows.
const FLOWS: usize = 6;
/// Agents that take the flows' interactions, logged in throughout.
const HANDLERS: usize = 3;
/// Agents that log in and out over and over.
const CHURNERS: usize = 3;
/// How long the load runs before a kill: a random moment in this range (milliseconds).
const LOAD_MS: std::ops::Range<u64> = 50..1_500;

// ------------------------------------------------------------------------------------------------
// The services, as child processes that can be killed.

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("an address is a URL")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

// ------------------------------------------------------------------------------------------------
// Requests: each kept whole, so that one that failed can be sent again with its `request_id`.

/// One request, and who sends it.
#[derive(Clone, Debug)]
enum Call {
    Submit(ix::SubmitRequest),
    Pull(ix::PullRequest),
    Deliver(ix::DeliverRequest),
    Accept(String, ix::AcceptRequest),
    Stop(String, ix::StopProcessingRequest),
    Place(String, ix::PlaceInQueueRequest),
    Login(String, ss::LoginRequest),
    Ready(String, ss::SetReadyRequest),
    NotReady(String, ss::SetNotReadyRequest),
    Logout(String, ss::LogoutRequest),
}

/// What an answer tells the load about what it changed.
#[derive(Clone, Debug, Default)]
struct Ack {
    /// Where the change is in the log of the service that answered (interaction-server's
    /// requests and session-service's Logout).
    sequence: Option<u64>,
    interaction_id: String,
    ticket_id: String,
    session_id: String,
}

impl Ack {
    fn at(sequence: u64) -> Ack {
        Ack {
            sequence: Some(sequence),
            ..Ack::default()
        }
    }

    fn of(sequence: u64, interaction: Option<ix::Interaction>) -> Ack {
        Ack {
            interaction_id: interaction.map(|i| i.interaction_id).unwrap_or_default(),
            ..Ack::at(sequence)
        }
    }

    fn session(session: ss::Session) -> Ack {
        Ack {
            session_id: session.session_id,
            ..Ack::default()
        }
    }
}

impl Call {
    fn request_id(&self) -> &str {
        match self {
            Call::Submit(r) => &r.request_id,
            Call::Pull(r) => &r.request_id,
            Call::Deliver(r) => &r.request_id,
            Call::Accept(_, r) => &r.request_id,
            Call::Stop(_, r) => &r.request_id,
            Call::Place(_, r) => &r.request_id,
            Call::Login(_, r) => &r.request_id,
            Call::Ready(_, r) => &r.request_id,
            Call::NotReady(_, r) => &r.request_id,
            Call::Logout(_, r) => &r.request_id,
        }
    }

    /// The service whose log holds the request's events.
    fn service(&self) -> Service {
        match self {
            Call::Login(..) | Call::Ready(..) | Call::NotReady(..) | Call::Logout(..) => {
                Service::Sessions
            }
            _ => Service::Interactions,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Call::Submit(_) => "Submit",
            Call::Pull(_) => "Pull",
            Call::Deliver(_) => "Deliver",
            Call::Accept(..) => "Accept",
            Call::Stop(..) => "StopProcessing",
            Call::Place(..) => "PlaceInQueue",
            Call::Login(..) => "Login",
            Call::Ready(..) => "SetReady",
            Call::NotReady(..) => "SetNotReady",
            Call::Logout(..) => "Logout",
        }
    }
}

/// Clients of both services, as any party. Channels reconnect by themselves after a restart.
struct Clients {
    secret: Secret,
    ixn: Channel,
    sessions: Channel,
    ixn_addr: SocketAddr,
    session_addr: SocketAddr,
}

impl Clients {
    fn bearer(&self, role: Role, sub: &str) -> Bearer {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut claims = Claims::new(role, sub, TENANT, now, 24 * 3_600);
        if role == Role::Agent {
            claims.agent_id = Some(sub.to_owned());
        }
        Bearer(
            format!("Bearer {}", auth::mint(&self.secret, &claims))
                .parse()
                .expect("a token is ASCII"),
        )
    }

    fn interactions(&self, role: Role, sub: &str) -> InteractionServiceClient<Authed> {
        InteractionServiceClient::with_interceptor(self.ixn.clone(), self.bearer(role, sub))
    }

    fn switch(&self) -> AgentServiceClient<Authed> {
        AgentServiceClient::with_interceptor(self.ixn.clone(), self.bearer(Role::Admin, "admin"))
    }

    fn desktop(&self, agent: &str) -> SessionServiceClient<Authed> {
        SessionServiceClient::with_interceptor(
            self.sessions.clone(),
            self.bearer(Role::Agent, agent),
        )
    }

    fn log(&self, service: Service) -> EventServiceClient<Authed> {
        let channel = match service {
            Service::Interactions => self.ixn.clone(),
            Service::Sessions => self.sessions.clone(),
        };
        EventServiceClient::with_interceptor(channel, self.bearer(Role::Admin, "admin"))
    }

    async fn send(&self, call: &Call) -> Result<Ack, Status> {
        let router = || self.interactions(Role::Router, "r1");
        let agent = |agent: &str| self.interactions(Role::Agent, agent);
        Ok(match call.clone() {
            Call::Submit(r) => {
                let mut media_server = self.interactions(Role::MediaServer, "ms1");
                let a = media_server.submit(r).await?.into_inner();
                Ack::of(a.sequence, a.interaction)
            }
            Call::Pull(r) => {
                let a = router().pull(r).await?.into_inner();
                Ack::of(a.sequence, a.interaction)
            }
            Call::Deliver(r) => {
                let a = router().deliver(r).await?.into_inner();
                Ack {
                    ticket_id: a.ticket_id,
                    ..Ack::at(a.sequence)
                }
            }
            Call::Accept(who, r) => {
                let a = agent(&who).accept(r).await?.into_inner();
                Ack::of(a.sequence, a.interaction)
            }
            Call::Stop(who, r) => {
                Ack::at(agent(&who).stop_processing(r).await?.into_inner().sequence)
            }
            Call::Place(who, r) => {
                Ack::at(agent(&who).place_in_queue(r).await?.into_inner().sequence)
            }
            Call::Login(who, r) => Ack::session(self.desktop(&who).login(r).await?.into_inner()),
            Call::Ready(who, r) => {
                Ack::session(self.desktop(&who).set_ready(r).await?.into_inner())
            }
            Call::NotReady(who, r) => {
                Ack::session(self.desktop(&who).set_not_ready(r).await?.into_inner())
            }
            Call::Logout(who, r) => {
                let a = self.desktop(&who).logout(r).await?.into_inner();
                Ack {
                    session_id: a.session_id,
                    ..Ack::at(a.sequence)
                }
            }
        })
    }
}

/// A status in a sentence: its code, its ErrorInfo reason if any, its message.
fn describe(status: &Status) -> String {
    let reason = ixn_proto::error::reason_of(status)
        .map(|r| format!(" {}", r.as_str()))
        .unwrap_or_default();
    format!("{:?}{reason}: {}", status.code(), status.message())
}

/// Errors a kill explains: the request may or may not have been applied, and is sent again.
fn in_doubt(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

// ------------------------------------------------------------------------------------------------
// The load: workers that each know what state their requests left things in.

/// An interaction flow: one interaction at a time, submitted into the flow's queue and taken
/// through routing and handling until it is stopped.
struct Flow {
    queue: String,
    agent: String,
    /// The interaction being processed, its state as acknowledged, and its invite's ticket.
    current: Option<(String, InteractionState, String)>,
    /// Interactions this flow stopped during the cycle.
    stopped: Vec<String>,
}

/// An agent that logs in and out through session-service.
struct Churner {
    agent: String,
    /// The live session and whether its chat channel is Ready.
    session: Option<(String, bool)>,
    /// The last disposed session.
    disposed: Option<String>,
}

enum Load {
    Flow(Flow),
    Churner(Churner),
}

/// What one worker did during a cycle.
struct Worker {
    load: Load,
    rng: fastrand::Rng,
    acked: Vec<(Call, Ack)>,
    /// The request a kill interrupted.
    pending: Option<(Call, Status)>,
}

impl Worker {
    fn next_call(&mut self) -> Call {
        match &mut self.load {
            Load::Flow(flow) => match &flow.current {
                None => Call::Submit(ix::SubmitRequest {
                    request_id: rid(),
                    media_type: "chat".into(),
                    queue: flow.queue.clone(),
                    properties: [("flow".to_owned(), flow.queue.clone())].into(),
                }),
                Some((id, state, ticket)) => match state {
                    InteractionState::Queued => Call::Pull(ix::PullRequest {
                        request_id: rid(),
                        queue: flow.queue.clone(),
                        media_type: String::new(),
                        interaction_id: id.clone(),
                    }),
                    InteractionState::Routing => Call::Deliver(ix::DeliverRequest {
                        request_id: rid(),
                        interaction_id: id.clone(),
                        agent_id: flow.agent.clone(),
                        timeout_ms: 0,
                    }),
                    InteractionState::Invited => Call::Accept(
                        flow.agent.clone(),
                        ix::AcceptRequest {
                            request_id: rid(),
                            interaction_id: id.clone(),
                            ticket_id: ticket.clone(),
                        },
                    ),
                    _ if self.rng.u8(..4) == 0 => Call::Place(
                        flow.agent.clone(),
                        ix::PlaceInQueueRequest {
                            request_id: rid(),
                            interaction_id: id.clone(),
                            queue: flow.queue.clone(),
                        },
                    ),
                    _ => Call::Stop(
                        flow.agent.clone(),
                        ix::StopProcessingRequest {
                            request_id: rid(),
                            interaction_id: id.clone(),
                            reason: reason("done"),
                        },
                    ),
                },
            },
            Load::Churner(churner) => {
                let agent = churner.agent.clone();
                match &churner.session {
                    None => Call::Login(
                        agent,
                        ss::LoginRequest {
                            request_id: rid(),
                            agent_id: String::new(),
                            place_id: format!("place-{}", churner.agent),
                            media_types: vec!["chat".into()],
                            ready: false,
                        },
                    ),
                    Some((session_id, _)) if self.rng.u8(..3) == 0 => Call::Logout(
                        agent,
                        ss::LogoutRequest {
                            request_id: rid(),
                            session_id: session_id.clone(),
                            reason: reason("end-of-shift"),
                        },
                    ),
                    Some((session_id, false)) => Call::Ready(
                        agent,
                        ss::SetReadyRequest {
                            request_id: rid(),
                            session_id: session_id.clone(),
                            media_type: "chat".into(),
                        },
                    ),
                    Some((session_id, true)) => Call::NotReady(
                        agent,
                        ss::SetNotReadyRequest {
                            request_id: rid(),
                            session_id: session_id.clone(),
                            media_type: "chat".into(),
                            reason: reason("break"),
                        },
                    ),
                }
            }
        }
    }

    /// The state an acknowledged request left things in.
    fn apply(&mut self, call: &Call, ack: &Ack) {
        match &mut self.load {
            Load::Flow(flow) => match call {
                Call::Submit(_) => {
                    flow.current = Some((
                        ack.interaction_id.clone(),
                        InteractionState::Queued,
                        String::new(),
                    ))
                }
                Call::Stop(_, r) => {
                    flow.stopped.push(r.interaction_id.clone());
                    flow.current = None;
                }
                _ => {
                    if let Some((_, state, ticket)) = flow.current.as_mut() {
                        (*state, *ticket) = match call {
                            Call::Pull(_) => (InteractionState::Routing, String::new()),
                            Call::Deliver(_) => (InteractionState::Invited, ack.ticket_id.clone()),
                            Call::Accept(..) => (InteractionState::Handling, String::new()),
                            _ => (InteractionState::Queued, String::new()),
                        };
                    }
                }
            },
            Load::Churner(churner) => match call {
                Call::Login(..) => churner.session = Some((ack.session_id.clone(), false)),
                Call::Ready(..) => churner.session.as_mut().expect("a session").1 = true,
                Call::NotReady(..) => churner.session.as_mut().expect("a session").1 = false,
                Call::Logout(_, r) => {
                    churner.session = None;
                    churner.disposed = Some(r.session_id.clone());
                }
                _ => {}
            },
        }
        self.acked.push((call.clone(), ack.clone()));
    }

    /// Sends requests until told to stop or until one fails.
    async fn run(mut self, clients: Arc<Clients>, stop: Arc<AtomicBool>) -> Worker {
        while !stop.load(Ordering::Relaxed) {
            let call = self.next_call();
            match clients.send(&call).await {
                Ok(ack) => self.apply(&call, &ack),
                Err(status) => {
                    self.pending = Some((call, status));
                    break;
                }
            }
        }
        self
    }
}

// ------------------------------------------------------------------------------------------------
// Followers: one per log, resuming after its last sequence whenever its stream breaks.

/// What a follower keeps of an event.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    sequence: u64,
    event_id: String,
    correlation_id: String,
    /// Addressed to a handling agent (interaction-server's log): to be relayed.
    to_handler: bool,
}

#[derive(Default)]
struct Followed {
    /// What arrived after the last verified sequence, in order of arrival.
    events: Vec<Seen>,
    last: u64,
    gaps: u64,
    duplicates: u64,
    /// Refusals to resume (SEQUENCE_OUT_OF_RANGE: the log lost what the follower saw).
    refusals: Vec<String>,
    /// session-service's log: how often each sequence of interaction-server's log was relayed.
    relayed: HashMap<u64, u32>,
}

struct Follower {
    service: Service,
    state: Arc<Mutex<Followed>>,
    progress: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(service: Service, clients: &Clients, handlers: &[String]) -> Follower {
        let state = Arc::new(Mutex::new(Followed::default()));
        let (tx, progress) = watch::channel(0);
        // A channel of its own, with no per-request timeout: the stream lasts.
        let addr = match service {
            Service::Interactions => clients.ixn_addr,
            Service::Sessions => clients.session_addr,
        };
        let mut client = EventServiceClient::with_interceptor(
            Endpoint::from_shared(format!("http://{addr}"))
                .expect("an address is a URL")
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy(),
            clients.bearer(Role::Admin, "admin"),
        );
        let handlers: HashSet<String> = handlers.iter().cloned().collect();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let after = shared.lock().expect("follower state").last;
                let request = SubscribeRequest {
                    after_sequence: after,
                    ..Default::default()
                };
                match client.subscribe(request).await {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(event)) => {
                                    let last = shared
                                        .lock()
                                        .expect("follower state")
                                        .record(event, &handlers);
                                    tx.send_replace(last);
                                }
                                Ok(None) => break,
                                Err(status) => {
                                    shared.lock().expect("follower state").refused(status);
                                    break;
                                }
                            }
                        }
                    }
                    Err(status) => shared.lock().expect("follower state").refused(status),
                }
                // Paces reconnection while the service is down.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Follower {
            service,
            state,
            progress,
            task,
        }
    }

    /// Waits until the follower has seen something `seen` accepts; its sequence.
    async fn until(
        &mut self,
        mut seen: impl FnMut(&Followed) -> Option<u64>,
    ) -> Result<u64, String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(sequence) = seen(&self.state.lock().expect("follower state")) {
                return Ok(sequence);
            }
            match tokio::time::timeout_at(deadline, self.progress.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(format!(
                        "the follower of {} stopped at sequence {}",
                        self.service.name(),
                        *self.progress.borrow()
                    ));
                }
            }
        }
    }
}

impl Followed {
    fn record(&mut self, event: Event, handlers: &HashSet<String>) -> u64 {
        if event.sequence <= self.last {
            self.duplicates += 1;
            return self.last;
        }
        if event.sequence != self.last + 1 {
            self.gaps += 1;
        }
        self.last = event.sequence;
        if let Some(from) = &event.relayed_from {
            *self.relayed.entry(from.sequence).or_default() += 1;
        }
        let to_handler = event.to.iter().any(
            |p| matches!(&p.kind, Some(party::Kind::Agent(a)) if handlers.contains(&a.agent_id)),
        );
        self.events.push(Seen {
            sequence: event.sequence,
            event_id: event.event_id,
            correlation_id: event.correlation_id,
            to_handler,
        });
        self.last
    }

    fn refused(&mut self, status: Status) {
        if !in_doubt(&status) {
            let what = format!("{:?}: {}", status.code(), status.message());
            if self.refusals.last() != Some(&what) {
                self.refusals.push(what);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The run.

#[derive(Default)]
struct Tally {
    /// Cycles completed.
    cycles: u64,
    acked: u64,
    lost: u64,
    gaps: u64,
    duplicates: u64,
    /// What went wrong, each in a sentence.
    problems: Vec<String>,
}

impl Tally {
    fn lost(&mut self, what: String) {
        self.lost += 1;
        self.problems.push(format!("lost: {what}"));
    }

    fn duplicate(&mut self, what: String) {
        self.duplicates += 1;
        self.problems.push(format!("duplicate: {what}"));
    }
}

struct Run {
    services: Services,
    clients: Arc<Clients>,
    rng: fastrand::Rng,
    workers: Vec<Worker>,
    ixn_log: Follower,
    session_log: Follower,
    /// The fence agent's session, toggled to mark a point in session-service's log.
    fence_session: String,
    fence_ready: bool,
    /// The sequences verified so far, in each log.
    ixn_verified: u64,
    session_verified: u64,
    /// The `request_id`s whose events are in interaction-server's verified log.
    applied: HashSet<u128>,
    tally: Tally,
}

impl Run {
    /// Sends `call` until it is answered, through restarts; a refusal is returned.
    async fn settle(&self, call: &Call) -> Result<Ack, Status> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.clients.send(call).await {
                Err(status) if in_doubt(&status) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answer => return answer,
            }
        }
    }

    /// One cycle: load, a kill at a random moment, restart, retries, checks.
    async fn cycle(&mut self, n: u64, of: u64) -> Result<(), String> {
        let stop = Arc::new(AtomicBool::new(false));
        let running: Vec<_> = self
            .workers
            .drain(..)
            .map(|w| tokio::spawn(w.run(self.clients.clone(), stop.clone())))
            .collect();
        let load = Duration::from_millis(self.rng.u64(LOAD_MS));
        tokio::time::sleep(load).await;
        let victims: &[Service] = match self.rng.u8(..3) {
            0 => &[Service::Interactions],
            1 => &[Service::Sessions],
            _ => &[Service::Interactions, Service::Sessions],
        };
        for &victim in victims {
            self.services.kill(victim);
        }
        stop.store(true, Ordering::Relaxed);
        for worker in running {
            self.workers.push(
                worker
                    .await
                    .map_err(|e| format!("a worker panicked: {e}"))?,
            );
        }
        for &victim in victims {
            self.services.start(victim).await?;
        }
        let mut retried = 0;
        for i in 0..self.workers.len() {
            let Some((call, status)) = self.workers[i].pending.take() else {
                continue;
            };
            if !in_doubt(&status) {
                self.tally.problems.push(format!(
                    "{} {} refused before any retry: {}",
                    call.name(),
                    call.request_id(),
                    describe(&status)
                ));
                return Err("a request was refused".into());
            }
            retried += 1;
            match self.settle(&call).await {
                Ok(ack) => self.workers[i].apply(&call, &ack),
                Err(status) => {
                    self.tally.lost(format!(
                        "{} {} sent again after the restart: {}",
                        call.name(),
                        call.request_id(),
                        describe(&status)
                    ));
                    return Err("a request could not be completed".into());
                }
            }
        }
        let acked: usize = self.workers.iter().map(|w| w.acked.len()).sum();
        let problems = self.tally.problems.len();
        if let Err(e) = self.verify().await {
            self.count_followers();
            return Err(e);
        }
        let killed: Vec<_> = victims.iter().map(|v| v.name()).collect();
        println!(
            "cycle {n}/{of}: killed {} after {} ms; {acked} acknowledged ({retried} after a retry); logs verified to {} and {}: {}",
            killed.join(" and "),
            load.as_millis(),
            self.ixn_verified,
            self.session_verified,
            match self.tally.problems.len() - problems {
                0 => "ok".to_owned(),
                k => format!("{k} problem(s)"),
            }
        );
        Ok(())
    }

    /// The checks after a restart; see the module's documentation.
    async fn verify(&mut self) -> Result<(), String> {
        // Fences: a change in each log, made now, that each follower must reach.
        let fence = Call::Submit(ix::SubmitRequest {
            request_id: rid(),
            media_type: "chat".into(),
            queue: "fence".into(),
            properties: Default::default(),
        });
        let ixn_fence = self
            .settle(&fence)
            .await
            .map_err(|s| format!("the fence in interaction-server's log: {}", describe(&s)))?
            .sequence
            .unwrap_or_default();
        self.fence_ready = !self.fence_ready;
        let (request_id, session_id) = (rid(), self.fence_session.clone());
        let toggle = if self.fence_ready {
            Call::Ready(
                "f1".into(),
                ss::SetReadyRequest {
                    request_id: request_id.clone(),
                    session_id,
                    media_type: "chat".into(),
                },
            )
        } else {
            Call::NotReady(
                "f1".into(),
                ss::SetNotReadyRequest {
                    request_id: request_id.clone(),
                    session_id,
                    media_type: "chat".into(),
                    reason: reason("break"),
                },
            )
        };
        self.settle(&toggle)
            .await
            .map_err(|s| format!("the fence in session-service's log: {}", describe(&s)))?;
        self.tally.acked += 2;
        self.ixn_log
            .until(|f| (f.last >= ixn_fence).then_some(f.last))
            .await?;
        let session_fence = self
            .session_log
            .until(|f| {
                f.events
                    .iter()
                    .find(|e| e.correlation_id == request_id)
                    .map(|e| e.sequence)
            })
            .await?;

        self.count_followers();

        // What was relayed: every event of interaction-server's addressed to a handling agent.
        let to_relay: Vec<u64> = {
            let followed = self.ixn_log.state.lock().expect("follower state");
            followed
                .events
                .iter()
                .filter(|e| e.sequence <= ixn_fence && e.to_handler)
                .map(|e| e.sequence)
                .collect()
        };
        // Relaying is in order: once the last is there, all are (or are lost). A relay that never
        // comes shows as lost below.
        if let Some(&last) = to_relay.last() {
            let _ = self
                .session_log
                .until(|f| f.relayed.contains_key(&last).then_some(last))
                .await;
        }
        {
            let followed = self.session_log.state.lock().expect("follower state");
            for sequence in &to_relay {
                match followed.relayed.get(sequence).copied().unwrap_or(0) {
                    1 => {}
                    0 => self.tally.lost(format!(
                        "interaction-server's event {sequence} was not relayed to its agent"
                    )),
                    n => self.tally.duplicate(format!(
                        "interaction-server's event {sequence} was relayed {n} times"
                    )),
                }
            }
        }

        // Each log as the follower saw it live against a fresh replay of what is durable.
        let ixn_events = self.replayed(Service::Interactions, ixn_fence).await?;
        let session_events = self.replayed(Service::Sessions, session_fence).await?;

        // Every acknowledged request's events, once.
        let mut runs: HashMap<&str, Vec<u64>> = HashMap::new();
        for e in &ixn_events {
            runs.entry(e.correlation_id.as_str())
                .or_default()
                .push(e.sequence);
        }
        let by_sequence: HashMap<u64, &Seen> = ixn_events.iter().map(|e| (e.sequence, e)).collect();
        let in_session_log: HashSet<&str> = session_events
            .iter()
            .map(|e| e.correlation_id.as_str())
            .collect();
        let workers = std::mem::take(&mut self.workers);
        for (call, ack) in workers.iter().flat_map(|w| &w.acked) {
            let id = call.request_id();
            self.tally.acked += 1;
            match call.service() {
                Service::Interactions => {
                    let sequence = ack.sequence.unwrap_or_default();
                    match by_sequence.get(&sequence) {
                        Some(e) if e.correlation_id == id => {}
                        found => self.tally.lost(format!(
                            "{} {id}, acknowledged at sequence {sequence}: the log holds {}",
                            call.name(),
                            found.map_or("nothing there".into(), |e| format!(
                                "request {}",
                                e.correlation_id
                            ))
                        )),
                    }
                    let run = runs.get(id).map(Vec::as_slice).unwrap_or_default();
                    if run.windows(2).any(|w| w[1] != w[0] + 1) {
                        self.tally.duplicate(format!(
                            "{} {id} has events apart in the log: {run:?}",
                            call.name()
                        ));
                    }
                }
                Service::Sessions => {
                    if !in_session_log.contains(id) {
                        self.tally.lost(format!(
                            "{} {id} acknowledged by session-service: no event of it in its log",
                            call.name()
                        ));
                    }
                }
            }
        }
        for e in &ixn_events {
            if let Ok(id) = uuid::Uuid::parse_str(&e.correlation_id)
                && self.applied.contains(&id.as_u128())
            {
                self.tally.duplicate(format!(
                    "request {} applied again at sequence {}",
                    e.correlation_id, e.sequence
                ));
            }
        }
        self.applied.extend(
            ixn_events
                .iter()
                .filter_map(|e| uuid::Uuid::parse_str(&e.correlation_id).ok())
                .map(|id| id.as_u128()),
        );
        self.workers = workers;
        self.states().await?;
        for w in &mut self.workers {
            w.acked.clear();
            if let Load::Flow(flow) = &mut w.load {
                flow.stopped.clear();
            }
        }
        self.ixn_verified = ixn_fence;
        self.session_verified = session_fence;
        Ok(())
    }

    /// What each follower met on the way: gaps, duplicates, refusals to resume.
    fn count_followers(&mut self) {
        for follower in [&self.ixn_log, &self.session_log] {
            let mut followed = follower.state.lock().expect("follower state");
            self.tally.gaps += std::mem::take(&mut followed.gaps);
            self.tally.duplicates += std::mem::take(&mut followed.duplicates);
            for refusal in std::mem::take(&mut followed.refusals) {
                self.tally.lost(format!(
                    "the follower of {} could not resume: {refusal}",
                    follower.service.name()
                ));
            }
        }
    }

    /// The follower's events up to `fence`, checked against a fresh replay from the last verified
    /// sequence; they leave the follower's memory.
    async fn replayed(&mut self, service: Service, fence: u64) -> Result<Vec<Seen>, String> {
        let (follower, after) = match service {
            Service::Interactions => (&self.ixn_log, self.ixn_verified),
            Service::Sessions => (&self.session_log, self.session_verified),
        };
        let live: Vec<Seen> = {
            let mut followed = follower.state.lock().expect("follower state");
            let at = followed
                .events
                .iter()
                .position(|e| e.sequence > fence)
                .unwrap_or(followed.events.len());
            let keep = followed.events.split_off(at);
            std::mem::replace(&mut followed.events, keep)
        };
        let mut stream = self
            .clients
            .log(service)
            .subscribe(SubscribeRequest {
                after_sequence: after,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("replaying {}: {}", service.name(), describe(&s)))?
            .into_inner();
        let mut durable = Vec::new();
        while durable.last().is_none_or(|e: &Seen| e.sequence < fence) {
            let event = tokio::time::timeout(PATIENCE, stream.message())
                .await
                .map_err(|_| format!("replaying {}: nothing for {PATIENCE:?}", service.name()))?
                .map_err(|s| format!("replaying {}: {}", service.name(), describe(&s)))?
                .ok_or_else(|| format!("replaying {}: the stream ended", service.name()))?;
            durable.push(Seen {
                sequence: event.sequence,
                event_id: event.event_id,
                correlation_id: event.correlation_id,
                to_handler: false,
            });
        }
        let key = |e: &Seen| (e.sequence, e.event_id.clone());
        let (live_keys, durable_keys): (Vec<_>, Vec<_>) = (
            live.iter().map(key).collect(),
            durable.iter().map(key).collect(),
        );
        if live_keys != durable_keys {
            let differ = live_keys
                .iter()
                .zip(&durable_keys)
                .position(|(a, b)| a != b)
                .unwrap_or(live_keys.len().min(durable_keys.len()));
            self.tally.lost(format!(
                "{}'s log after {after}: the follower saw {} events live, a replay shows {}; they differ from the {}th on ({:?} against {:?})",
                service.name(),
                live_keys.len(),
                durable_keys.len(),
                differ + 1,
                live_keys.get(differ),
                durable_keys.get(differ),
            ));
        }
        Ok(durable)
    }

    /// Each interaction, session and agent is in the state the acknowledged requests left it in.
    async fn states(&mut self) -> Result<(), String> {
        let admin = self.clients.interactions(Role::Admin, "admin");
        let mut expected: Vec<(String, InteractionState)> = Vec::new();
        let mut churners = Vec::new();
        for w in &self.workers {
            match &w.load {
                Load::Flow(flow) => {
                    expected.extend(
                        flow.current
                            .iter()
                            .map(|(id, state, _)| (id.clone(), *state)),
                    );
                    expected.extend(
                        flow.stopped
                            .iter()
                            .map(|id| (id.clone(), InteractionState::Stopped)),
                    );
                }
                Load::Churner(c) => {
                    churners.push((c.agent.clone(), c.session.clone(), c.disposed.clone()))
                }
            }
        }
        for (id, state) in expected {
            let found = admin
                .clone()
                .get(ix::GetInteractionRequest {
                    interaction_id: id.clone(),
                })
                .await
                .map_err(|s| format!("Get {id}: {}", describe(&s)))?
                .into_inner();
            if found.state() != state {
                self.tally.lost(format!(
                    "interaction {id} is {:?}, acknowledged as {state:?}",
                    found.state()
                ));
            }
        }
        for (agent, live, disposed) in churners {
            let at_switch = self
                .clients
                .switch()
                .get_agent(ix::GetAgentRequest {
                    agent_id: agent.clone(),
                })
                .await
                .map_err(|s| format!("GetAgent {agent}: {}", describe(&s)))?
                .into_inner();
            let switch_chat = at_switch
                .media
                .iter()
                .find(|m| m.media_type == "chat")
                .map(|m| m.state());
            let desktop = self.clients.desktop(&agent);
            let session = |id: String| {
                let mut desktop = desktop.clone();
                async move {
                    desktop
                        .get_session(ss::GetSessionRequest {
                            session_id: id.clone(),
                        })
                        .await
                        .map(|s| s.into_inner())
                        .map_err(|s| format!("GetSession {id}: {}", describe(&s)))
                }
            };
            if let Some((id, ready)) = live {
                let found = session(id.clone()).await?;
                let chat = found
                    .channel_group
                    .iter()
                    .flat_map(|g| &g.channels)
                    .find(|c| c.media_type == "chat")
                    .map(|c| c.state());
                let want = if ready {
                    ixn_proto::common::AgentState::Ready
                } else {
                    ixn_proto::common::AgentState::NotReady
                };
                if found.state() != SessionState::Active || chat != Some(want) {
                    self.tally.lost(format!(
                        "session {id} of {agent} is {:?} with chat {chat:?}, acknowledged as ACTIVE with chat {want:?}",
                        found.state()
                    ));
                }
                if !at_switch.logged_in || switch_chat != Some(want) {
                    self.tally.lost(format!(
                        "{agent} at the switch: logged in {}, chat {switch_chat:?}; its session says chat {want:?}",
                        at_switch.logged_in
                    ));
                }
            } else {
                if let Some(id) = disposed {
                    let found = session(id.clone()).await?;
                    if found.state() != SessionState::Disposed {
                        self.tally.lost(format!(
                            "session {id} of {agent} is {:?}, its logout was acknowledged",
                            found.state()
                        ));
                    }
                }
                if at_switch.logged_in {
                    self.tally.lost(format!(
                        "{agent} is logged in at the switch, its logout was acknowledged"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Logs in an agent through session-service; its session id.
async fn login(clients: &Clients, agent: &str, ready: bool) -> Result<String, String> {
    clients
        .desktop(agent)
        .login(ss::LoginRequest {
            request_id: rid(),
            agent_id: String::new(),
            place_id: format!("place-{agent}"),
            media_types: vec!["chat".into()],
            ready,
        })
        .await
        .map(|s| s.into_inner().session_id)
        .map_err(|s| format!("login of {agent}: {}", describe(&s)))
}

struct Options {
    cycles: u64,
    seed: u64,
    /// PostgreSQL instead of SQLite in the data directory.
    database_url: Option<String>,
}

/// On PostgreSQL: a schema for each service, made for this run.
struct Schemas {
    client: tokio_postgres::Client,
    names: [String; 2],
}

impl Schemas {
    async fn create(url: &str) -> Result<Schemas, String> {
        let client = support::postgres(url).await?;
        let names = ["ixn", "sessions"].map(|s| format!("crash_test_{}_{s}", std::process::id()));
        for name in &names {
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
                ))
                .await
                .map_err(|e| format!("PostgreSQL: {e}"))?;
        }
        Ok(Schemas { client, names })
    }

    async fn drop(&self) {
        for name in &self.names {
            let _ = self
                .client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        cycles: 10,
        database_url: None,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--cycles" => options.cycles = value("--cycles")?.max(1),
            "--seed" => options.seed = value("--seed")?,
            "--database-url" => {
                options.database_url =
                    Some(args.next().ok_or("--database-url needs a PostgreSQL URL")?)
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (--cycles N, --seed S, --database-url URL)"
                ));
            }
        }
    }
    Ok(options)
}

async fn run(
    options: &Options,
    dir: &Path,
    schemas: Option<(&str, &Schemas)>,
) -> Result<Tally, String> {
    let Some(bin_dir) = std::env::var_os("IXN_CRASH_BIN_DIR").map(PathBuf::from) else {
        return Err(
            "IXN_CRASH_BIN_DIR must name the directory of the built binaries (cargo xtask crash-test sets it)".into(),
        );
    };
    std::fs::write(
        dir.join("platform.toml"),
        "[platform]\ndefault_capacity = 1000\n",
    )
    .map_err(|e| e.to_string())?;
    let mut services = Services::new(bin_dir, dir)?;
    services.log_filter = "warn";
    services.database = schemas.map(|(url, s)| {
        let [ixn, sessions] = &s.names;
        (
            ixn_proto::pg::in_schema(url, ixn),
            ixn_proto::pg::in_schema(url, sessions),
        )
    });
    services.start(Service::Interactions).await?;
    services.start(Service::Sessions).await?;
    let clients = Arc::new(Clients {
        secret: Secret {
            kid: None,
            bytes: services.secret.clone().into_bytes(),
        },
        ixn: channel(services.ixn_addr),
        sessions: channel(services.session_addr),
        ixn_addr: services.ixn_addr,
        session_addr: services.session_addr,
    });
    let handlers: Vec<String> = (1..=HANDLERS).map(|i| format!("h{i}")).collect();
    for agent in &handlers {
        login(&clients, agent, true).await?;
    }
    let fence_session = login(&clients, "f1", false).await?;
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let workers: Vec<Worker> = (0..FLOWS)
        .map(|k| {
            Load::Flow(Flow {
                queue: format!("q{k}"),
                agent: handlers[k % HANDLERS].clone(),
                current: None,
                stopped: Vec::new(),
            })
        })
        .chain((1..=CHURNERS).map(|i| {
            Load::Churner(Churner {
                agent: format!("c{i}"),
                session: None,
                disposed: None,
            })
        }))
        .map(|load| Worker {
            load,
            rng: fastrand::Rng::with_seed(rng.u64(..)),
            acked: Vec::new(),
            pending: None,
        })
        .collect();
    let mut run = Run {
        ixn_log: Follower::start(Service::Interactions, &clients, &handlers),
        session_log: Follower::start(Service::Sessions, &clients, &handlers),
        services,
        clients,
        rng,
        workers,
        fence_session,
        fence_ready: false,
        ixn_verified: 0,
        session_verified: 0,
        applied: HashSet::new(),
        tally: Tally::default(),
    };
    for n in 1..=options.cycles {
        let outcome = run.cycle(n, options.cycles).await;
        if let Err(e) = outcome {
            run.tally.problems.push(format!("cycle {n}: {e}"));
            break;
        }
        run.tally.cycles = n;
        if !run.tally.problems.is_empty() {
            break;
        }
    }
    run.ixn_log.task.abort();
    run.session_log.task.abort();
    Ok(run.tally)
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("crash-test: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!(
        "crash test: {} cycles on {}, seed {} (--seed {} replays its choices)",
        options.cycles,
        if options.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        options.seed,
        options.seed,
    );
    let started = Instant::now();
    let schemas = match &options.database_url {
        Some(url) => match Schemas::create(url).await {
            Ok(schemas) => Some((url.as_str(), schemas)),
            Err(e) => {
                eprintln!("crash-test: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let tally = match run(&options, dir.path(), schemas.as_ref().map(|(u, s)| (*u, s))).await {
        Ok(tally) => tally,
        Err(e) => Tally {
            problems: vec![e],
            ..Tally::default()
        },
    };
    for problem in &tally.problems {
        println!("  - {problem}");
    }
    println!("took {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "cycles={} acked={} lost={} gaps={} duplicates={}",
        tally.cycles, tally.acked, tally.lost, tally.gaps, tally.duplicates
    );
    if tally.problems.is_empty()
        && tally.cycles == options.cycles
        && tally.lost + tally.gaps + tally.duplicates == 0
    {
        if let Some((_, schemas)) = &schemas {
            schemas.drop().await;
        }
        ExitCode::SUCCESS
    } else {
        let kept = dir.keep();
        println!("the services' logs are kept in {}", kept.display());
        if let Some((_, schemas)) = &schemas {
            println!(
                "and their data in the schemas {}",
                schemas.names.join(" and ")
            );
        } else {
            println!("with their data");
        }
        ExitCode::FAILURE
    }
}
