//! `cargo xtask demo`: starts interaction-server and session-service (the built binaries, named by
//! `IXN_DEMO_BIN_DIR`) on a fresh temporary data directory and plays every seed flow over gRPC, as a
//! media server, a router, agents (through session-service, the desktop's single connection) and a
//! reporter would. For each flow it prints what each party saw and checks it against the seed's
//! table; it exits non-zero on any difference.
//!
//! What a party "saw" of a flow is read up to a fence — an event the party is sure to see, caused
//! after the flow — so a missing event and an extra one are both caught.

mod support;

use ixn_proto::auth::{self, Claims, Role, Secret};
use ixn_proto::common::Reason;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::events::event_service_client::EventServiceClient;
use ixn_proto::events::{Event, EventFilter, SubscribeRequest};
use ixn_proto::interaction::interaction_service_client::InteractionServiceClient;
use ixn_proto::interaction::*;
use ixn_proto::session::session_service_client::SessionServiceClient;
use ixn_proto::session::{self as ss, Session};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use support::{Authed, Bearer, Service, Services, reason, rid};
use tonic::Status;
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(15);

impl Services {
    fn channel(addr: SocketAddr) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy()
    }

    fn token(&self, role: Role, sub: &str, agent: Option<&str>) -> Bearer {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs() as i64;
        let mut claims = Claims::new(role, sub, "t1", now, 3_600);
        claims.agent_id = agent.map(str::to_owned);
        let secret = Secret {
            kid: None,
            bytes: self.secret.as_bytes().to_vec(),
        };
        Bearer(
            format!("Bearer {}", auth::mint(&secret, &claims))
                .parse()
                .expect("header"),
        )
    }

    fn interactions(&self, role: Role, sub: &str) -> InteractionServiceClient<Authed> {
        let agent = (role == Role::Agent).then_some(sub);
        InteractionServiceClient::with_interceptor(
            Self::channel(self.ixn_addr),
            self.token(role, sub, agent),
        )
    }

    fn events(&self, role: Role, sub: &str) -> EventServiceClient<Authed> {
        EventServiceClient::with_interceptor(
            Self::channel(self.ixn_addr),
            self.token(role, sub, None),
        )
    }

    fn desktop(&self, agent: &str) -> SessionServiceClient<Authed> {
        SessionServiceClient::with_interceptor(
            Self::channel(self.session_addr),
            self.token(Role::Agent, agent, Some(agent)),
        )
    }
}

/// One party's stream of events.
struct Feed {
    name: String,
    stream: tonic::Streaming<Event>,
}

impl Feed {
    async fn next(&mut self) -> Result<Option<Event>, Status> {
        match tokio::time::timeout(PATIENCE, self.stream.message()).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{}: nothing within {PATIENCE:?}",
                self.name
            ))),
        }
    }

    /// Events up to the first one `is_fence` accepts (excluded).
    async fn until(&mut self, is_fence: impl Fn(&Event) -> bool) -> Result<Vec<Event>, Status> {
        let mut seen = Vec::new();
        loop {
            match self.next().await? {
                Some(e) if is_fence(&e) => return Ok(seen),
                Some(e) => seen.push(e),
                None => {
                    return Err(Status::cancelled(format!(
                        "{}: the stream ended",
                        self.name
                    )));
                }
            }
        }
    }
}

fn kind(e: &Event) -> &'static str {
    ixn_proto::event::kind(e.body.as_ref().expect("body"))
}

fn about<'a>(events: &'a [Event], id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| {
            e.body
                .as_ref()
                .and_then(|b| ixn_proto::event::interaction_id(b))
                == Some(id)
        })
        .collect()
}

/// `Kind`, or `Kind→party` for a directed event.
fn describe(events: &[&Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let to: Vec<String> = e.to.iter().map(|p| p.label()).collect();
            let detail = match e.body.as_ref() {
                Some(ixn_proto::events::event::Body::PartyRemoved(b)) => {
                    format!(
                        "({})",
                        b.party.as_ref().map(|p| p.label()).unwrap_or_default()
                    )
                }
                _ => String::new(),
            };
            if to.is_empty() {
                format!("{}{detail}", kind(e))
            } else {
                format!("{}{detail}→{}", kind(e), to.join(","))
            }
        })
        .collect()
}

/// The transcript and its verdicts.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn flow(&self, title: &str) {
        println!("\n== {title}");
    }

    fn saw(&mut self, who: &str, got: Vec<String>, want: &[&str]) {
        let ok = got.iter().map(String::as_str).eq(want.iter().copied());
        println!(
            "  {who:<28} {}{}",
            if got.is_empty() {
                "—".to_owned()
            } else {
                got.join(", ")
            },
            if ok {
                ""
            } else {
                "   ✗ differs from the seed"
            }
        );
        if !ok {
            self.failures
                .push(format!("{who}: saw {got:?}, the seed says {want:?}"));
        }
    }

    fn answer(&mut self, who: &str, got: Result<String, Status>, want: &str) {
        let text = match &got {
            Ok(ok) => ok.clone(),
            Err(status) => match Failure::from_status(status) {
                Some(f) => format!("{} ({:?})", f.reason, status.code()),
                None => format!("{:?}: {}", status.code(), status.message()),
            },
        };
        let ok = text.starts_with(want);
        println!(
            "  {who:<28} {text}{}",
            if ok {
                ""
            } else {
                "   ✗ differs from the seed"
            }
        );
        if !ok {
            self.failures
                .push(format!("{who}: answered {text}, the seed says {want}"));
        }
    }
}

/// The demo's cast.
struct Cast {
    ms: InteractionServiceClient<Authed>,
    router: InteractionServiceClient<Authed>,
    admin: InteractionServiceClient<Authed>,
    reporter_feed: Feed,
    router_feed: Feed,
    ms_feed: Feed,
}

/// A logged-in agent: its desktop, its session and its message bus.
struct Agent {
    name: String,
    desktop: SessionServiceClient<Authed>,
    ixn: InteractionServiceClient<Authed>,
    session: Session,
    bus: Feed,
    /// Toggled to make a fence event on the bus.
    email_ready: bool,
}

impl Agent {
    async fn login(svc: &Services, name: &str, ready: bool) -> Result<Agent, Status> {
        let mut desktop = svc.desktop(name);
        let session = desktop
            .login(ss::LoginRequest {
                request_id: rid(),
                agent_id: String::new(),
                place_id: format!("place-{name}"),
                media_types: vec!["chat".into(), "email".into()],
                ready,
            })
            .await?
            .into_inner();
        let stream = desktop
            .connect(ss::ConnectRequest {
                session_id: session.session_id.clone(),
                after_sequence: 0,
            })
            .await?
            .into_inner();
        let mut bus = Feed {
            name: format!("agent {name}"),
            stream,
        };
        // The session's own creation events come first.
        bus.until(|e| kind(e) == "ChannelCreated" && channel_media(e) == "email")
            .await?;
        Ok(Agent {
            name: name.into(),
            ixn: svc.interactions(Role::Agent, name),
            desktop,
            session,
            bus,
            email_ready: ready,
        })
    }

    /// Everything on the bus about `id`, up to a fence the agent makes itself.
    async fn saw(&mut self, id: &str) -> Result<Vec<Event>, Status> {
        let seen = self.saw_all().await?;
        Ok(about(&seen, id).into_iter().cloned().collect())
    }

    /// Everything on the bus up to a fence the agent makes itself (a change of its email channel).
    async fn saw_all(&mut self) -> Result<Vec<Event>, Status> {
        self.email_ready = !self.email_ready;
        let session_id = self.session.session_id.clone();
        if self.email_ready {
            self.desktop
                .set_ready(ss::SetReadyRequest {
                    request_id: rid(),
                    session_id,
                    media_type: "email".into(),
                })
                .await?;
        } else {
            self.desktop
                .set_not_ready(ss::SetNotReadyRequest {
                    request_id: rid(),
                    session_id,
                    media_type: "email".into(),
                    reason: reason("break"),
                })
                .await?;
        }
        self.bus
            .until(|e| kind(e) == "AgentStateChanged" && channel_media(e) == "email")
            .await
    }

    /// What the bus shows of a logout: Not Ready for each Ready channel (chat is, email as toggled),
    /// deactivation and disposal of both channels, then the group and the session.
    fn logout_events(&self) -> Vec<&'static str> {
        let ready = 1 + usize::from(self.email_ready);
        let mut kinds = vec!["AgentStateChanged"; ready];
        kinds.extend([
            "ChannelDeactivated",
            "ChannelDeactivated",
            "ChannelDisposed",
            "ChannelDisposed",
            "ChannelGroupDisposed",
            "SessionDisposed",
        ]);
        kinds
    }
}

fn channel_media(e: &Event) -> &str {
    match e.body.as_ref() {
        Some(ixn_proto::events::event::Body::ChannelCreated(b)) => &b.media_type,
        Some(ixn_proto::events::event::Body::AgentStateChanged(b)) => &b.media_type,
        _ => "",
    }
}

impl Cast {
    /// Submitted by ms1 into `demo`, pulled by r1 (ROUTING).
    async fn routing(&mut self) -> Result<String, Status> {
        let id = self
            .ms
            .submit(SubmitRequest {
                request_id: rid(),
                media_type: "chat".into(),
                queue: "demo".into(),
                properties: Default::default(),
            })
            .await?
            .into_inner()
            .interaction
            .map(|i| i.interaction_id)
            .unwrap_or_default();
        self.router
            .pull(PullRequest {
                request_id: rid(),
                queue: "demo".into(),
                media_type: String::new(),
                interaction_id: id.clone(),
            })
            .await?;
        Ok(id)
    }

    /// HANDLING by `agent`: routed, delivered, the relayed Invite read off the bus, accepted.
    async fn handling(&mut self, agent: &mut Agent) -> Result<String, Status> {
        let id = self.invited(agent).await?;
        agent.bus.until(|e| kind(e) == "Invite").await?;
        let pending = self
            .admin
            .get(GetInteractionRequest {
                interaction_id: id.clone(),
            })
            .await?
            .into_inner()
            .invite
            .map(|i| i.ticket_id)
            .unwrap_or_default();
        agent
            .ixn
            .accept(AcceptRequest {
                request_id: rid(),
                interaction_id: id.clone(),
                ticket_id: pending,
            })
            .await?;
        Ok(id)
    }

    /// INVITED: routed and delivered to `agent`.
    async fn invited(&mut self, agent: &Agent) -> Result<String, Status> {
        let id = self.routing().await?;
        self.router
            .deliver(DeliverRequest {
                request_id: rid(),
                interaction_id: id.clone(),
                agent_id: agent.name.clone(),
                timeout_ms: 0,
            })
            .await?;
        Ok(id)
    }

    /// What the reporter, the router and the media server saw of `id`, up to a reporting fence.
    async fn observers(
        &mut self,
        id: &str,
    ) -> Result<(Vec<Event>, Vec<Event>, Vec<Event>), Status> {
        let fence = self
            .ms
            .submit(SubmitRequest {
                request_id: rid(),
                media_type: "chat".into(),
                queue: "fence".into(),
                properties: Default::default(),
            })
            .await?
            .into_inner()
            .interaction
            .map(|i| i.interaction_id)
            .unwrap_or_default();
        let is_fence = |e: &Event| {
            e.body
                .as_ref()
                .and_then(|b| ixn_proto::event::interaction_id(b))
                == Some(fence.as_str())
        };
        let own = |v: Vec<Event>| about(&v, id).into_iter().cloned().collect::<Vec<_>>();
        Ok((
            own(self.reporter_feed.until(is_fence).await?),
            own(self.router_feed.until(is_fence).await?),
            own(self.ms_feed.until(is_fence).await?),
        ))
    }
}

/// Reads every party up to a fence, so that what a flow's setup caused is not counted as the flow's.
async fn settle(cast: &mut Cast, agents: &mut [&mut Agent]) -> Result<(), Status> {
    cast.observers("").await?;
    for agent in agents.iter_mut() {
        agent.saw_all().await?;
    }
    Ok(())
}

fn directed(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| !e.to.is_empty()).collect()
}

fn all(events: &[Event]) -> Vec<&Event> {
    events.iter().collect()
}

fn stop(id: &str) -> StopProcessingRequest {
    StopProcessingRequest {
        request_id: rid(),
        interaction_id: id.into(),
        reason: reason("done"),
    }
}

fn ack(r: Result<tonic::Response<StopProcessingResponse>, Status>) -> Result<String, Status> {
    r.map(|r| format!("ack (sequence {})", r.into_inner().sequence))
}

fn logout(session: &Session, request_id: &str, why: Option<Reason>) -> ss::LogoutRequest {
    ss::LogoutRequest {
        request_id: request_id.into(),
        session_id: session.session_id.clone(),
        reason: why,
    }
}

async fn play(svc: &mut Services, report: &mut Report) -> Result<(), Status> {
    let subscribe = |mut client: EventServiceClient<Authed>, name: &str| {
        let name = name.to_owned();
        async move {
            let stream = client
                .subscribe(SubscribeRequest {
                    after_sequence: 0,
                    from_head: true,
                    filter: Some(EventFilter::default()),
                })
                .await?
                .into_inner();
            Ok::<Feed, Status>(Feed { name, stream })
        }
    };
    let mut cast = Cast {
        ms: svc.interactions(Role::MediaServer, "ms1"),
        router: svc.interactions(Role::Router, "r1"),
        admin: svc.interactions(Role::Admin, "ops"),
        reporter_feed: subscribe(svc.events(Role::Reporter, "reports"), "reporter").await?,
        router_feed: subscribe(svc.events(Role::Router, "r1"), "router r1").await?,
        ms_feed: subscribe(svc.events(Role::MediaServer, "ms1"), "media server ms1").await?,
    };
    let mut a1 = Agent::login(svc, "a1", true).await?;
    let mut a2 = Agent::login(svc, "a2", true).await?;

    report.flow("Stop Processing A: the media server stops; agent a1 handles the interaction");
    let id = cast.handling(&mut a1).await?;
    settle(&mut cast, &mut [&mut a1, &mut a2]).await?;
    report.answer(
        "media server ms1 (requester)",
        ack(cast.ms.stop_processing(stop(&id)).await),
        "ack",
    );
    let (reporter, router, _) = cast.observers(&id).await?;
    report.saw(
        "agent a1 (owner)",
        describe(&all(&a1.saw(&id).await?)),
        &["Revoked→agent:a1@place-a1"],
    );
    report.saw("router r1", describe(&directed(&router)), &[]);
    report.saw(
        "reporter",
        describe(&all(&reporter)),
        &["PartyRemoved(agent:a1@place-a1)", "ProcessingStopped"],
    );

    report.flow("Stop Processing B: the media server stops; router r1 routes the interaction");
    let id = cast.routing().await?;
    settle(&mut cast, &mut [&mut a1, &mut a2]).await?;
    report.answer(
        "media server ms1 (requester)",
        ack(cast.ms.stop_processing(stop(&id)).await),
        "ack",
    );
    let (reporter, router, _) = cast.observers(&id).await?;
    report.saw(
        "router r1 (owner)",
        describe(&directed(&router)),
        &["Abandoned→router:r1"],
    );
    report.saw(
        "reporter",
        describe(&all(&reporter)),
        &["PartyRemoved(router:r1)", "ProcessingStopped"],
    );

    report.flow("Stop Processing C: agent a1 stops the interaction it handles");
    let id = cast.handling(&mut a1).await?;
    settle(&mut cast, &mut [&mut a1, &mut a2]).await?;
    report.answer(
        "agent a1 (requester, owner)",
        ack(a1.ixn.stop_processing(stop(&id)).await),
        "ack",
    );
    let (reporter, router, _) = cast.observers(&id).await?;
    report.saw(
        "agent a1",
        describe(&all(&a1.saw(&id).await?)),
        &["Revoked→agent:a1@place-a1"],
    );
    report.saw("router r1", describe(&directed(&router)), &[]);
    report.saw(
        "reporter",
        describe(&all(&reporter)),
        &["PartyRemoved(agent:a1@place-a1)", "ProcessingStopped"],
    );

    report.flow("Stop Processing D: router r1 stops the interaction it routes");
    let id = cast.routing().await?;
    settle(&mut cast, &mut [&mut a1, &mut a2]).await?;
    report.answer(
        "router r1 (requester, owner)",
        ack(cast.router.stop_processing(stop(&id)).await),
        "ack",
    );
    let (reporter, router, _) = cast.observers(&id).await?;
    report.saw("router r1", describe(&directed(&router)), &[]);
    report.saw(
        "reporter",
        describe(&all(&reporter)),
        &["PartyRemoved(router:r1)", "ProcessingStopped"],
    );

    report.flow("Stop Processing Unsuccessful: agent a2 asks to stop what a1 handles");
    let id = cast.handling(&mut a1).await?;
    settle(&mut cast, &mut [&mut a1, &mut a2]).await?;
    report.answer(
        "agent a2 (requester)",
        ack(a2.ixn.stop_processing(stop(&id)).await),
        "NOT_OWNER",
    );
    let (reporter, router, ms) = cast.observers(&id).await?;
    report.saw("agent a1", describe(&all(&a1.saw(&id).await?)), &[]);
    report.saw("agent a2", describe(&all(&a2.saw(&id).await?)), &[]);
    report.saw("router r1", describe(&all(&router)), &[]);
    report.saw("media server ms1", describe(&all(&ms)), &[]);
    report.saw("reporter", describe(&all(&reporter)), &[]);
    // Clean up: a1 stops it (version C again) and reads its Revoked.
    a1.ixn.stop_processing(stop(&id)).await?;
    a1.saw(&id).await?;

    report.flow("Logout EF1: agent a2 is invited to an interaction when it asks to log out");
    let id = cast.invited(&a2).await?;
    a2.bus.until(|e| kind(e) == "Invite").await?;
    let answer = a2
        .desktop
        .logout(logout(&a2.session, &rid(), reason("end-of-shift")))
        .await
        .map(|_| "logged out".to_owned());
    report.answer("agent a2 (MediaBar)", answer, "ONGOING_INTERACTION");
    report.saw(
        "agent a2 (message bus)",
        describe(&all(&a2.saw_all().await?)),
        &[],
    );
    cast.router.stop_processing(stop(&id)).await?;
    a2.saw(&id).await?;

    report.flow("Logout AF1: the platform requires a reason; the MediaBar resubmits with one");
    let request_id = rid();
    let answer = a2
        .desktop
        .logout(logout(&a2.session, &request_id, None))
        .await;
    let offered = answer
        .as_ref()
        .err()
        .and_then(Failure::from_status)
        .and_then(|f| f.metadata.get("logout_reasons").cloned())
        .unwrap_or_default();
    report.answer(
        "agent a2 (MediaBar)",
        answer.map(|_| "logged out".to_owned()),
        "LOGOUT_REASON_REQUIRED",
    );
    println!("  {:<28} offers: {offered}", "");
    let done = a2
        .desktop
        .logout(logout(&a2.session, &request_id, reason("end-of-shift")))
        .await
        .map(|r| format!("logged out (sequence {})", r.into_inner().sequence));
    report.answer("agent a2 (resubmitted)", done, "logged out");
    let mut bus = Vec::new();
    while let Some(e) = a2.bus.next().await? {
        bus.push(e);
    }
    let expected = a2.logout_events();
    report.saw(
        "agent a2 (message bus)",
        bus.iter().map(|e| kind(e).to_owned()).collect(),
        &expected,
    );
    println!("  {:<28} the bus closed (OK)", "");

    report.flow("Logout, Basic Flow: agent a1 logs out with a reason");
    let done = a1
        .desktop
        .logout(logout(&a1.session, &rid(), reason("end-of-shift")))
        .await
        .map(|r| format!("logged out (sequence {})", r.into_inner().sequence));
    report.answer("agent a1 (MediaBar)", done, "logged out");
    let mut bus = Vec::new();
    while let Some(e) = a1.bus.next().await? {
        bus.push(e);
    }
    let expected = a1.logout_events();
    report.saw(
        "agent a1 (message bus)",
        bus.iter().map(|e| kind(e).to_owned()).collect(),
        &expected,
    );

    for (title, ready, expected) in [
        (
            "Logout EF2: the switch cannot make a Ready channel Not Ready",
            true,
            R::NotReadyFailed,
        ),
        (
            "Logout EF3: the switch cannot deactivate a channel",
            false,
            R::DeactivationFailed,
        ),
    ] {
        report.flow(title);
        let name = if ready { "a3" } else { "a4" };
        let mut agent = Agent::login(svc, name, ready).await?;
        svc.stop(Service::Interactions);
        println!("  {:<28} interaction-server stopped", "");
        let request_id = rid();
        let answer = agent
            .desktop
            .logout(logout(&agent.session, &request_id, reason("end-of-shift")))
            .await
            .map(|_| "logged out".to_owned());
        report.answer(
            &format!("agent {name} (MediaBar)"),
            answer,
            expected.as_str(),
        );
        let session = agent
            .desktop
            .get_session(ss::GetSessionRequest {
                session_id: agent.session.session_id.clone(),
            })
            .await?
            .into_inner();
        report.answer(
            &format!("agent {name} session"),
            Ok(format!("{:?}", session.state())),
            "Active",
        );
        if let Err(e) = svc.start(Service::Interactions).await {
            return Err(Status::unavailable(e));
        }
        println!(
            "  {:<28} interaction-server restarted; the MediaBar retries",
            ""
        );
        let done = agent
            .desktop
            .logout(logout(&agent.session, &request_id, reason("end-of-shift")))
            .await
            .map(|_| "logged out".to_owned());
        report.answer(&format!("agent {name} (retry)"), done, "logged out");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(bin_dir) = std::env::var_os("IXN_DEMO_BIN_DIR").map(PathBuf::from) else {
        eprintln!(
            "IXN_DEMO_BIN_DIR must name the directory of the built binaries (cargo xtask demo sets it)"
        );
        return ExitCode::from(2);
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        dir.path().join("platform.toml"),
        "[platform]\nlogout_reason_required = true\ndefault_capacity = 5\n",
    )
    .expect("platform configuration");
    let mut svc = match Services::new(bin_dir, dir.path()) {
        Ok(svc) => svc,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    for service in [Service::Interactions, Service::Sessions] {
        if let Err(e) = svc.start(service).await {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "interaction-server on {}, session-service on {}, data in {}",
        svc.ixn_addr,
        svc.session_addr,
        dir.path().display()
    );
    let mut report = Report::default();
    if let Err(status) = play(&mut svc, &mut report).await {
        report
            .failures
            .push(format!("the demo could not go on: {status:?}"));
    }
    drop(svc);
    show_logs_on_failure(dir.path(), &report);
    if report.failures.is_empty() {
        println!("\nevery flow matches the seeds");
        ExitCode::SUCCESS
    } else {
        println!("\n{} difference(s) from the seeds:", report.failures.len());
        for f in &report.failures {
            println!("  - {f}");
        }
        ExitCode::FAILURE
    }
}

fn show_logs_on_failure(dir: &Path, report: &Report) {
    if report.failures.is_empty() {
        return;
    }
    for name in ["interaction-server.log", "session-service.log"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            println!("\n-- last lines of {name}:");
            for line in tail.into_iter().rev() {
                println!("{line}");
            }
        }
    }
}
