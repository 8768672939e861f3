//! `SessionService` over real sockets, both services running: every RPC with at least one success and
//! one failure, checked three ways — the answer, the events on the agent's `Connect` stream, and what
//! the switch (interaction-server's `AgentService`) says.
//!
//! Also: `Connect` resuming after a sequence and relaying only the interaction events addressed to its
//! agent, request-id idempotency, the connection-lost grace (time moved only with the manual clock)
//! and session-service's own `EventService.Subscribe`.
//!
//! Nothing sleeps: a test waits on a stream (bounded by `PATIENCE`), and proves that something did
//! *not* happen with a fence — a later change of its own that must be the next event.

mod common;

use common::*;
use ixn_proto::auth::{self, Claims, Role, Secret};
use ixn_proto::common::party::Kind;
use ixn_proto::common::{AgentState, Party, Reason};
use ixn_proto::error::Reason as R;
use ixn_proto::events::event::Body;
use ixn_proto::events::event_service_client::EventServiceClient;
use ixn_proto::events::{Event, EventFilter, SubscribeRequest};
use ixn_proto::interaction::agent_service_client::AgentServiceClient;
use ixn_proto::interaction::{
    AddMediaRequest, Agent, AgentLoginRequest, AgentMedia, GetAgentRequest,
};
use ixn_proto::session::session_service_client::SessionServiceClient;
use ixn_proto::session::{
    ActivateChannelRequest, Channel as SessionChannel, ConnectRequest, DeactivateChannelRequest,
    LoginRequest, Session, SessionState, SetNotReadyRequest, SetReadyRequest,
};
use std::time::Duration;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

type Authed = InterceptedService<Channel, Bearer>;

/// The default Not Ready reason of the test platform (interaction-server's default configuration).
const DEFAULT_REASON: &str = "after-call-work";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn channel_to(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

fn bearer(token: &str) -> Bearer {
    Bearer(format!("Bearer {token}").parse().unwrap())
}

/// A client of session-service calling with `token`, whatever it is.
fn desktop_with(stack: &Stack, agent: &str, token: &str) -> Desktop {
    let channel = channel_to(stack.sessions.as_ref().unwrap().addr);
    Desktop {
        agent: agent.into(),
        client: SessionServiceClient::with_interceptor(channel.clone(), bearer(token)),
        events: EventServiceClient::with_interceptor(channel, bearer(token)),
    }
}

/// The switch, as role `service` sees it.
fn switch(stack: &Stack) -> AgentServiceClient<Authed> {
    let token = stack.token(Role::Service, "s", "t1", None);
    AgentServiceClient::with_interceptor(channel_to(stack.ixn_addr), bearer(&token))
}

/// The agent as the switch knows it.
async fn at_switch(stack: &Stack, agent: &str) -> Agent {
    switch(stack)
        .get_agent(GetAgentRequest {
            agent_id: agent.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn switch_media<'a>(agent: &'a Agent, media: &str) -> Option<&'a AgentMedia> {
    agent.media.iter().find(|m| m.media_type == media)
}

fn channel<'a>(s: &'a Session, media: &str) -> &'a SessionChannel {
    s.channel_group
        .as_ref()
        .unwrap()
        .channels
        .iter()
        .find(|c| c.media_type == media)
        .unwrap_or_else(|| panic!("no {media} channel in {s:?}"))
}

fn code_of(r: &Option<Reason>) -> &str {
    r.as_ref().map(|r| r.code.as_str()).unwrap_or("")
}

fn interaction_of(e: &Event) -> Option<&str> {
    ixn_proto::event::interaction_id(body(e))
}

fn is_system(p: &Option<Party>, what: &str) -> bool {
    matches!(p.as_ref().and_then(|p| p.kind.as_ref()), Some(Kind::System(s)) if s.what == what)
}

fn is_agent(p: &Option<Party>, agent: &str) -> bool {
    p.as_ref().and_then(Party::agent_id) == Some(agent)
}

fn state_change(e: &Event) -> &ixn_proto::events::AgentStateChanged {
    match body(e) {
        Body::AgentStateChanged(c) => c,
        other => panic!("expected AgentStateChanged, got {other:?}"),
    }
}

/// The next event, which must be there.
async fn next(bus: &mut Stream) -> Event {
    bus.next()
        .await
        .expect("the stream failed")
        .expect("the stream ended")
}

/// Asserts a status's code and contract reason.
#[track_caller]
fn assert_failure(status: &tonic::Status, code: Code, reason: R) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status), reason, "{status:?}");
}

fn not_ready(
    request_id: &str,
    session: &str,
    media: &str,
    why: Option<Reason>,
) -> SetNotReadyRequest {
    SetNotReadyRequest {
        request_id: request_id.into(),
        session_id: session.into(),
        media_type: media.into(),
        reason: why,
    }
}

fn ready(request_id: &str, session: &str, media: &str) -> SetReadyRequest {
    SetReadyRequest {
        request_id: request_id.into(),
        session_id: session.into(),
        media_type: media.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn login_creates_the_session_its_channels_and_logs_in_at_the_switch() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let request_id = rid();
    let session = desktop
        .client
        .login(LoginRequest {
            request_id: request_id.clone(),
            agent_id: String::new(),
            place_id: "p1".into(),
            media_types: vec!["chat".into(), "email".into()],
            ready: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.state(), SessionState::Active);
    assert_eq!(
        (
            session.tenant.as_str(),
            session.agent_id.as_str(),
            session.place_id.as_str()
        ),
        ("t1", "a1", "p1")
    );
    assert!(uuid::Uuid::try_parse(&session.session_id).is_ok());
    let group = session.channel_group.clone().unwrap();
    assert!(!group.channel_group_id.is_empty());
    assert_eq!(group.channels.len(), 2);
    for (c, media) in group.channels.iter().zip(["chat", "email"]) {
        assert_eq!(c.media_type, media);
        assert!(c.active);
        assert_eq!(c.state(), AgentState::NotReady);
        assert_eq!(code_of(&c.reason), DEFAULT_REASON);
        assert!(c.interaction_ids.is_empty());
    }
    // The platform's reasons travel with the session: what AF1 offers.
    assert_eq!(code_of(&session.default_not_ready_reason), DEFAULT_REASON);
    let codes = |l: &[Reason]| l.iter().map(|r| r.code.clone()).collect::<Vec<_>>();
    assert_eq!(
        codes(&session.not_ready_reasons),
        ["after-call-work", "break", "lunch", "logging-out"]
    );
    assert_eq!(codes(&session.logout_reasons), ["end-of-shift", "break"]);
    assert!(!session.logout_reason_required);
    assert!(!session.free_text_reasons_allowed);
    assert!(session.channel_deactivation_supported);
    assert_eq!(session.created_sequence, 1);

    // Connect from 0: the session, its group, one channel per media, in that order.
    let mut bus = desktop.connect(&session.session_id, 0).await;
    let mut created = Vec::new();
    for _ in 0..4 {
        created.push(next(&mut bus).await);
    }
    assert_eq!(
        kinds(&created),
        [
            "SessionCreated",
            "ChannelGroupCreated",
            "ChannelCreated",
            "ChannelCreated"
        ]
    );
    let sequences: Vec<u64> = created.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
    for e in &created {
        assert_eq!(e.source, "session-service");
        assert_eq!(e.tenant, "t1");
        assert_eq!(e.correlation_id, request_id);
        assert!(e.relayed_from.is_none());
        assert!(is_agent(&e.actor, "a1"));
        assert_eq!(e.to.len(), 1);
        assert_eq!(e.to[0].agent_id(), Some("a1"));
    }
    match body(&created[0]) {
        Body::SessionCreated(b) => {
            assert_eq!(b.session_id, session.session_id);
            assert_eq!(b.agent.as_ref().unwrap().agent_id, "a1");
            assert_eq!(b.agent.as_ref().unwrap().place_id, "p1");
        }
        other => panic!("{other:?}"),
    }
    match body(&created[1]) {
        Body::ChannelGroupCreated(b) => assert_eq!(b.channel_group_id, group.channel_group_id),
        other => panic!("{other:?}"),
    }
    for (e, c) in created[2..].iter().zip(&group.channels) {
        match body(e) {
            Body::ChannelCreated(b) => {
                assert_eq!(b.channel_id, c.channel_id);
                assert_eq!(b.media_type, c.media_type);
                assert!(b.active);
                assert_eq!(b.state(), AgentState::NotReady);
                assert_eq!(code_of(&b.reason), DEFAULT_REASON);
            }
            other => panic!("{other:?}"),
        }
    }

    // The switch agrees: logged in with those media, Not Ready with the default reason.
    let agent = at_switch(&stack, "a1").await;
    assert!(agent.logged_in);
    assert_eq!(agent.place_id, "p1");
    let mut media: Vec<&str> = agent.media.iter().map(|m| m.media_type.as_str()).collect();
    media.sort();
    assert_eq!(media, ["chat", "email"]);
    for m in &agent.media {
        assert_eq!(m.state(), AgentState::NotReady);
        assert_eq!(code_of(&m.reason), DEFAULT_REASON);
    }

    // Ready when asked.
    let mut other = stack.desktop("a2");
    let s2 = other.login(&["voice", "chat"], true).await.unwrap();
    for c in &s2.channel_group.as_ref().unwrap().channels {
        assert!(c.active);
        assert_eq!(c.state(), AgentState::Ready);
        assert!(c.reason.is_none() || code_of(&c.reason).is_empty());
    }
    let a2 = at_switch(&stack, "a2").await;
    assert!(a2.logged_in);
    assert_eq!(a2.media.len(), 2);
    assert!(a2.media.iter().all(|m| m.state() == AgentState::Ready));
    let mut bus2 = other.connect(&s2.session_id, 0).await;
    let created = bus2.until("ChannelCreated").await;
    assert_eq!(created.len(), 3);
    match body(&next(&mut bus2).await) {
        Body::ChannelCreated(b) => assert_eq!(b.state(), AgentState::Ready),
        other => panic!("{other:?}"),
    }
    stack.stop().await;
}

/// An agent left logged in at the switch with no session (a login that stopped half-way) is taken
/// over by the next Login, which leaves the switch with the media that Login asked for and no
/// other Ready one: a medium it did not name is removed, or, on a platform that cannot deactivate
/// channels, made Not Ready. Otherwise the switch would offer the agent work of a medium the
/// session has no channel for.
#[tokio::test]
async fn a_login_taking_over_the_agent_leaves_no_media_it_did_not_ask_for() {
    for deactivation in [true, false] {
        let stack = Stack::start_with(interaction_server::domain::PlatformConfig {
            channel_deactivation_supported: Some(deactivation),
            ..platform()
        })
        .await;
        let mut sw = switch(&stack);
        sw.login(AgentLoginRequest {
            request_id: rid(),
            agent_id: "a1".into(),
            place_id: "p0".into(),
        })
        .await
        .unwrap();
        for (media, ready) in [("voice", true), ("chat", false)] {
            sw.add_media(AddMediaRequest {
                request_id: rid(),
                agent_id: "a1".into(),
                media_type: media.into(),
                ready,
                reason: None,
            })
            .await
            .unwrap();
        }

        let session = stack.desktop("a1").login(&["chat"], true).await.unwrap();
        assert_eq!(channel(&session, "chat").state(), AgentState::Ready);
        let agent = at_switch(&stack, "a1").await;
        assert!(agent.logged_in);
        let chat = switch_media(&agent, "chat").expect("chat stays");
        assert_eq!(chat.state(), AgentState::Ready, "{deactivation}");
        match switch_media(&agent, "voice") {
            None => assert!(deactivation, "voice is removed only where it can be"),
            Some(voice) => {
                assert!(!deactivation, "voice must go: {agent:?}");
                assert_eq!(voice.state(), AgentState::NotReady);
                assert_eq!(code_of(&voice.reason), DEFAULT_REASON);
            }
        }
        stack.stop().await;
    }
}

#[tokio::test]
async fn a_second_login_is_already_logged_in_and_changes_nothing() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let mut bus = desktop.connect(&session.session_id, 0).await;
    bus.until("ChannelCreated").await;

    let err = desktop.login(&["email"], false).await.unwrap_err();
    assert_failure(&err, Code::AlreadyExists, R::AlreadyLoggedIn);
    // Even from another desktop of the same agent, or by an admin.
    let err = stack
        .desktop("a1")
        .login(&["chat"], true)
        .await
        .unwrap_err();
    assert_failure(&err, Code::AlreadyExists, R::AlreadyLoggedIn);
    let err = stack
        .session_admin()
        .client
        .login(LoginRequest {
            request_id: rid(),
            agent_id: "a1".into(),
            place_id: String::new(),
            media_types: vec!["chat".into()],
            ready: false,
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::AlreadyExists, R::AlreadyLoggedIn);

    // Nothing changed: same session, same channel, same switch state, no event.
    let now = desktop.get(&session.session_id).await.unwrap();
    assert_eq!(now, session);
    let agent = at_switch(&stack, "a1").await;
    assert_eq!(agent.media.len(), 1);
    assert_eq!(agent.media[0].state(), AgentState::Ready);
    fence(&mut desktop, &mut bus, &session.session_id, "chat", "break").await;
    stack.stop().await;
}

#[tokio::test]
async fn login_refuses_bad_arguments_and_changes_nothing() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let login = |media: &[&str], agent: &str| LoginRequest {
        request_id: rid(),
        agent_id: agent.into(),
        place_id: String::new(),
        media_types: media.iter().map(|m| m.to_string()).collect(),
        ready: false,
    };
    for (request, why) in [
        (login(&["sms"], ""), "unknown media"),
        (login(&["chat", "sms"], ""), "one unknown media"),
        (login(&[], ""), "no media"),
        (login(&["chat", "chat"], ""), "a media twice"),
        (login(&["chat"], "a2"), "another agent's id"),
    ] {
        let err = desktop.client.login(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err:?}");
        assert_eq!(reason_of(&err), R::InvalidArgument, "{why}");
    }
    let mut bad_id = login(&["chat"], "");
    bad_id.request_id = "not-a-uuid".into();
    let err = desktop.client.login(bad_id).await.unwrap_err();
    assert_failure(&err, Code::InvalidArgument, R::InvalidArgument);

    // Nothing changed: not logged in at the switch, and a proper login works.
    assert!(!at_switch(&stack, "a1").await.logged_in);
    assert!(!at_switch(&stack, "a2").await.logged_in);
    // Naming oneself is allowed.
    let session = desktop
        .client
        .login(login(&["chat"], "a1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.agent_id, "a1");
    assert_eq!(session.created_sequence, 1);
    stack.stop().await;
}

#[tokio::test]
async fn login_checks_the_token_and_the_role() {
    let stack = Stack::start().await;
    let request = || LoginRequest {
        request_id: rid(),
        agent_id: "a1".into(),
        place_id: String::new(),
        media_types: vec!["chat".into()],
        ready: false,
    };
    for role in [Role::Router, Role::MediaServer, Role::Reporter] {
        let token = stack.token(role, "x1", "t1", None);
        let err = desktop_with(&stack, "", &token)
            .client
            .login(request())
            .await
            .unwrap_err();
        assert_failure(&err, Code::PermissionDenied, R::RoleDenied);
    }
    // Signed with another secret; not a JWT at all; no token.
    let mut claims = Claims::new(
        Role::Agent,
        "a1",
        "t1",
        stack.clock.now() / 1_000_000,
        3_600,
    );
    claims.agent_id = Some("a1".into());
    let forged = auth::mint(
        &Secret {
            kid: None,
            bytes: b"another-secret-0123456789abcdef".to_vec(),
        },
        &claims,
    );
    for token in [forged.as_str(), "not-a-jwt"] {
        let err = desktop_with(&stack, "a1", token)
            .client
            .login(request())
            .await
            .unwrap_err();
        assert_failure(&err, Code::Unauthenticated, R::TokenInvalid);
    }
    let mut anonymous =
        SessionServiceClient::new(channel_to(stack.sessions.as_ref().unwrap().addr));
    let err = anonymous.login(request()).await.unwrap_err();
    assert_failure(&err, Code::Unauthenticated, R::TokenInvalid);

    // None of it logged anyone in.
    assert!(!at_switch(&stack, "a1").await.logged_in);
    stack.stop().await;
}

#[tokio::test]
async fn an_admin_logs_in_a_named_agent() {
    let stack = Stack::start().await;
    let mut admin = stack.session_admin();
    // An admin must name the agent.
    let err = admin
        .client
        .login(LoginRequest {
            request_id: rid(),
            agent_id: String::new(),
            place_id: String::new(),
            media_types: vec!["chat".into()],
            ready: false,
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::InvalidArgument, R::InvalidArgument);

    let session = admin
        .client
        .login(LoginRequest {
            request_id: rid(),
            agent_id: "a3".into(),
            place_id: "p3".into(),
            media_types: vec!["email".into()],
            ready: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.agent_id, "a3");
    assert_eq!(channel(&session, "email").state(), AgentState::Ready);
    let agent = at_switch(&stack, "a3").await;
    assert!(agent.logged_in);
    assert_eq!(agent.place_id, "p3");

    // The agent owns it: reads it and connects to it; the events name the admin as actor.
    let mut desktop = stack.desktop("a3");
    assert_eq!(desktop.get(&session.session_id).await.unwrap(), session);
    let mut bus = desktop.connect(&session.session_id, 0).await;
    let created = bus.until("ChannelCreated").await;
    assert_eq!(created.len(), 3);
    for e in &created {
        assert!(
            matches!(e.actor.as_ref().and_then(|p| p.kind.as_ref()), Some(Kind::Admin(a)) if a.subject == "ops"),
            "{e:?}"
        );
        assert_eq!(e.to[0].agent_id(), Some("a3"));
    }
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// SetReady / SetNotReady
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ready_and_not_ready_change_the_channel_and_the_switch() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], false).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    assert_eq!(bus.until("ChannelCreated").await.len(), 3);
    next(&mut bus).await;

    // Ready.
    let request_id = rid();
    let s = desktop
        .client
        .set_ready(ready(&request_id, &sid, "chat"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(channel(&s, "chat").state(), AgentState::Ready);
    assert_eq!(channel(&s, "email").state(), AgentState::NotReady);
    assert!(s.version > session.version);
    let e = next(&mut bus).await;
    assert_eq!(e.sequence, 5);
    assert_eq!(e.correlation_id, request_id);
    assert!(is_agent(&e.actor, "a1"));
    let c = state_change(&e);
    assert_eq!(
        (
            c.session_id.as_str(),
            c.channel_id.as_str(),
            c.media_type.as_str()
        ),
        (
            sid.as_str(),
            channel(&s, "chat").channel_id.as_str(),
            "chat"
        )
    );
    assert_eq!(c.state(), AgentState::Ready);
    let agent = at_switch(&stack, "a1").await;
    assert_eq!(
        switch_media(&agent, "chat").unwrap().state(),
        AgentState::Ready
    );
    assert_eq!(
        switch_media(&agent, "email").unwrap().state(),
        AgentState::NotReady
    );

    // Not Ready with a listed reason: the platform's full reason is kept.
    let s = desktop
        .client
        .set_not_ready(not_ready(&rid(), &sid, "chat", reason("lunch")))
        .await
        .unwrap()
        .into_inner();
    let chat = channel(&s, "chat");
    assert_eq!(chat.state(), AgentState::NotReady);
    assert_eq!(code_of(&chat.reason), "lunch");
    assert_eq!(chat.reason.as_ref().unwrap().description, "Lunch");
    let c = state_change(&next(&mut bus).await).clone();
    assert_eq!(c.state(), AgentState::NotReady);
    assert_eq!(code_of(&c.reason), "lunch");
    let agent = at_switch(&stack, "a1").await;
    let m = switch_media(&agent, "chat").unwrap();
    assert_eq!(m.state(), AgentState::NotReady);
    assert_eq!(code_of(&m.reason), "lunch");

    // Not Ready with no reason: the default one.
    let s = desktop
        .client
        .set_not_ready(not_ready(&rid(), &sid, "chat", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code_of(&channel(&s, "chat").reason), DEFAULT_REASON);
    assert_eq!(
        code_of(&state_change(&next(&mut bus).await).reason),
        DEFAULT_REASON
    );

    // Failures, none of which changes anything.
    let err = desktop.set_ready(&sid, "voice").await.unwrap_err();
    assert_failure(&err, Code::NotFound, R::ChannelNotFound);
    let err = desktop
        .client
        .set_not_ready(not_ready(&rid(), &sid, "voice", None))
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::ChannelNotFound);
    let err = desktop
        .client
        .set_not_ready(not_ready(&rid(), &sid, "chat", reason("nap")))
        .await
        .unwrap_err();
    assert_failure(&err, Code::InvalidArgument, R::ReasonNotAllowed);
    let free_text = Some(Reason {
        description: "because".into(),
        ..Default::default()
    });
    let err = desktop
        .client
        .set_not_ready(not_ready(&rid(), &sid, "chat", free_text))
        .await
        .unwrap_err();
    assert_failure(&err, Code::InvalidArgument, R::ReasonNotAllowed);
    let err = desktop.set_ready(&sid, "").await.unwrap_err();
    assert_failure(&err, Code::InvalidArgument, R::InvalidArgument);
    // Another agent's session does not exist for this caller.
    let err = stack
        .desktop("a2")
        .set_ready(&sid, "chat")
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    let agent = at_switch(&stack, "a1").await;
    assert_eq!(
        code_of(&switch_media(&agent, "chat").unwrap().reason),
        DEFAULT_REASON
    );

    // Ready on a deactivated channel is INVALID_STATE; so is Not Ready.
    desktop
        .client
        .deactivate_channel(DeactivateChannelRequest {
            request_id: rid(),
            session_id: sid.clone(),
            media_type: "email".into(),
        })
        .await
        .unwrap();
    assert!(is(&next(&mut bus).await, "ChannelDeactivated"));
    let err = desktop.set_ready(&sid, "email").await.unwrap_err();
    assert_failure(&err, Code::FailedPrecondition, R::InvalidState);
    let err = desktop
        .client
        .set_not_ready(not_ready(&rid(), &sid, "email", reason("break")))
        .await
        .unwrap_err();
    assert_failure(&err, Code::FailedPrecondition, R::InvalidState);
    assert!(!channel(&desktop.get(&sid).await.unwrap(), "email").active);

    // No failure emitted anything: the next event is the fence.
    fence(&mut desktop, &mut bus, &sid, "chat", "break").await;
    stack.stop().await;
}

#[tokio::test]
async fn an_interaction_the_switch_delivers_shows_on_its_channel() {
    let stack = Stack::start().await;
    let mut a1 = stack.desktop("a1");
    let s1 = a1.login(&["chat", "email"], true).await.unwrap();
    let mut bus1 = a1.connect(&s1.session_id, 0).await;
    let mut a2 = stack.desktop("a2");
    let s2 = a2.login(&["chat"], true).await.unwrap();
    let mut bus2 = a2.connect(&s2.session_id, 0).await;

    let x = offer(&stack, "a1", "chat").await;
    let invite = bus1.until("Invite").await.pop().unwrap();
    assert_eq!(interaction_of(&invite), Some(x.as_str()));
    // The mirror learns of the holding from the reporting AgentInvited that follows the Invite in
    // interaction-server's log; an Invite relayed to a2 afterwards proves the relay went past it.
    let y = offer(&stack, "a2", "chat").await;
    let invite = bus2.until("Invite").await.pop().unwrap();
    assert_eq!(interaction_of(&invite), Some(y.as_str()));

    let s = a1.get(&s1.session_id).await.unwrap();
    assert_eq!(
        channel(&s, "chat").interaction_ids,
        std::slice::from_ref(&x)
    );
    assert!(channel(&s, "email").interaction_ids.is_empty());
    let s = a2.get(&s2.session_id).await.unwrap();
    assert_eq!(
        channel(&s, "chat").interaction_ids,
        std::slice::from_ref(&y)
    );
    // The switch says the same.
    assert_eq!(
        at_switch(&stack, "a1").await.interaction_ids,
        std::slice::from_ref(&x)
    );

    // Once stopped, it is gone from the channel.
    stack.ixn(Role::MediaServer, "ms1").stop(&x).await;
    let revoked = bus1.until("Revoked").await.pop().unwrap();
    assert_eq!(interaction_of(&revoked), Some(x.as_str()));
    stack.ixn(Role::MediaServer, "ms1").stop(&y).await;
    bus2.until("Revoked").await;
    let s = a1.get(&s1.session_id).await.unwrap();
    assert!(channel(&s, "chat").interaction_ids.is_empty());
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// ActivateChannel / DeactivateChannel
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn channels_are_deactivated_and_activated_here_and_at_the_switch() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    bus.until("ChannelCreated").await;
    next(&mut bus).await;

    let request_id = rid();
    let s = desktop
        .client
        .deactivate_channel(DeactivateChannelRequest {
            request_id: request_id.clone(),
            session_id: sid.clone(),
            media_type: "chat".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!channel(&s, "chat").active);
    assert!(channel(&s, "email").active);
    let e = next(&mut bus).await;
    assert_eq!(e.correlation_id, request_id);
    match body(&e) {
        Body::ChannelDeactivated(b) => {
            assert_eq!(b.media_type, "chat");
            assert_eq!(b.channel_id, channel(&s, "chat").channel_id);
            assert_eq!(b.session_id, sid);
        }
        other => panic!("{other:?}"),
    }
    let agent = at_switch(&stack, "a1").await;
    assert!(switch_media(&agent, "chat").is_none());
    assert!(switch_media(&agent, "email").is_some());

    // Deactivating again changes nothing and emits nothing.
    desktop
        .client
        .deactivate_channel(DeactivateChannelRequest {
            request_id: rid(),
            session_id: sid.clone(),
            media_type: "chat".into(),
        })
        .await
        .unwrap();

    let s = desktop
        .client
        .activate_channel(ActivateChannelRequest {
            request_id: rid(),
            session_id: sid.clone(),
            media_type: "chat".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let chat = channel(&s, "chat");
    assert!(chat.active);
    assert_eq!(chat.state(), AgentState::NotReady);
    assert_eq!(code_of(&chat.reason), DEFAULT_REASON);
    let e = next(&mut bus).await;
    match body(&e) {
        Body::ChannelActivated(b) => {
            assert_eq!(b.media_type, "chat");
            assert_eq!(b.channel_id, chat.channel_id);
        }
        other => panic!("expected ChannelActivated, got {other:?}"),
    }
    let agent = at_switch(&stack, "a1").await;
    let m = switch_media(&agent, "chat").expect("chat is back at the switch");
    assert_eq!(m.state(), AgentState::NotReady);
    assert_eq!(code_of(&m.reason), DEFAULT_REASON);

    // Failures.
    for media in ["voice", "sms"] {
        let err = desktop
            .client
            .activate_channel(ActivateChannelRequest {
                request_id: rid(),
                session_id: sid.clone(),
                media_type: media.into(),
            })
            .await
            .unwrap_err();
        assert_failure(&err, Code::NotFound, R::ChannelNotFound);
        let err = desktop
            .client
            .deactivate_channel(DeactivateChannelRequest {
                request_id: rid(),
                session_id: sid.clone(),
                media_type: media.into(),
            })
            .await
            .unwrap_err();
        assert_failure(&err, Code::NotFound, R::ChannelNotFound);
    }
    let err = stack
        .desktop("a2")
        .client
        .deactivate_channel(DeactivateChannelRequest {
            request_id: rid(),
            session_id: sid.clone(),
            media_type: "email".into(),
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    assert!(switch_media(&at_switch(&stack, "a1").await, "email").is_some());
    fence(&mut desktop, &mut bus, &sid, "email", "break").await;
    stack.stop().await;
}

#[tokio::test]
async fn a_platform_without_deactivation_refuses_it() {
    let stack = Stack::start_with(interaction_server::domain::PlatformConfig {
        channel_deactivation_supported: Some(false),
        ..platform()
    })
    .await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    assert!(!session.channel_deactivation_supported);
    let mut bus = desktop.connect(&session.session_id, 0).await;
    bus.until("ChannelCreated").await;
    let err = desktop
        .client
        .deactivate_channel(DeactivateChannelRequest {
            request_id: rid(),
            session_id: session.session_id.clone(),
            media_type: "chat".into(),
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::FailedPrecondition, R::InvalidState);
    assert!(channel(&desktop.get(&session.session_id).await.unwrap(), "chat").active);
    let agent = at_switch(&stack, "a1").await;
    assert_eq!(
        switch_media(&agent, "chat").unwrap().state(),
        AgentState::Ready
    );
    fence(&mut desktop, &mut bus, &session.session_id, "chat", "break").await;
    stack.stop().await;
}

/// A channel deactivated while Ready is gone from the switch; the Logout must not try to make it
/// Not Ready there (step 3 is about channels the switch has), or the switch refuses and the agent can
/// never log out.
#[tokio::test]
async fn a_channel_deactivated_while_ready_does_not_hold_up_the_logout() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    bus.until("ChannelCreated").await;
    next(&mut bus).await;
    desktop
        .client
        .deactivate_channel(DeactivateChannelRequest {
            request_id: rid(),
            session_id: sid.clone(),
            media_type: "chat".into(),
        })
        .await
        .unwrap();
    assert!(is(&next(&mut bus).await, "ChannelDeactivated"));
    assert!(switch_media(&at_switch(&stack, "a1").await, "chat").is_none());

    let ack = desktop.logout(&sid, None).await;
    let ack = ack.unwrap_or_else(|e| {
        panic!(
            "the logout failed ({:?} {:?}): {}",
            e.code(),
            reason_of(&e),
            e.message()
        )
    });
    let rest = bus.drain_to_end().await;
    assert_eq!(
        kinds(&rest),
        [
            "AgentStateChanged",
            "ChannelDeactivated",
            "ChannelDisposed",
            "ChannelDisposed",
            "ChannelGroupDisposed",
            "SessionDisposed"
        ]
    );
    assert_eq!(state_change(&rest[0]).media_type, "email");
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert!(!at_switch(&stack, "a1").await.logged_in);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// GetSession
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_session_shows_a_session_to_its_agent_and_admins_of_its_tenant_only() {
    let stack = Stack::start().await;
    let mut a1 = stack.desktop("a1");
    let session = a1.login(&["chat"], false).await.unwrap();
    let sid = session.session_id.clone();

    assert_eq!(a1.get(&sid).await.unwrap(), session);
    assert_eq!(stack.session_admin().get(&sid).await.unwrap(), session);

    let mut a2 = stack.desktop("a2");
    a2.login(&["chat"], false).await.unwrap();
    let err = a2.get(&sid).await.unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    // The same agent id in another tenant, and that tenant's admin.
    let token = stack.token(Role::Agent, "a1", "t2", Some("a1"));
    let err = desktop_with(&stack, "a1", &token)
        .get(&sid)
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    let token = stack.token(Role::Admin, "ops", "t2", None);
    let err = desktop_with(&stack, "", &token)
        .get(&sid)
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    let err = a1.get(&uuid::Uuid::now_v7().to_string()).await.unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    for malformed in ["not-a-session", ""] {
        let err = a1.get(malformed).await.unwrap_err();
        assert_failure(&err, Code::InvalidArgument, R::InvalidArgument);
    }
    let token = stack.token(Role::Router, "r1", "t1", None);
    let err = desktop_with(&stack, "", &token)
        .get(&sid)
        .await
        .unwrap_err();
    assert_failure(&err, Code::PermissionDenied, R::RoleDenied);
    stack.stop().await;
}

/// A malformed session id is a bad argument for every RPC that takes one (the errors table;
/// arguments are checked before existence), not an unknown session.
#[tokio::test]
async fn every_rpc_refuses_a_malformed_session_id_as_invalid_argument() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    desktop.login(&["chat"], false).await.unwrap();
    for malformed in ["not-a-session", ""] {
        let mut outcomes = Vec::new();
        let c = &mut desktop.client;
        outcomes.push((
            "GetSession",
            c.get_session(ixn_proto::session::GetSessionRequest {
                session_id: malformed.into(),
            })
            .await
            .map(drop),
        ));
        outcomes.push((
            "SetReady",
            c.set_ready(ready(&rid(), malformed, "chat"))
                .await
                .map(drop),
        ));
        outcomes.push((
            "SetNotReady",
            c.set_not_ready(not_ready(&rid(), malformed, "chat", None))
                .await
                .map(drop),
        ));
        outcomes.push((
            "ActivateChannel",
            c.activate_channel(ActivateChannelRequest {
                request_id: rid(),
                session_id: malformed.into(),
                media_type: "chat".into(),
            })
            .await
            .map(drop),
        ));
        outcomes.push((
            "DeactivateChannel",
            c.deactivate_channel(DeactivateChannelRequest {
                request_id: rid(),
                session_id: malformed.into(),
                media_type: "chat".into(),
            })
            .await
            .map(drop),
        ));
        outcomes.push((
            "Logout",
            c.logout(ixn_proto::session::LogoutRequest {
                request_id: rid(),
                session_id: malformed.into(),
                reason: None,
            })
            .await
            .map(drop),
        ));
        outcomes.push((
            "Connect",
            c.connect(ConnectRequest {
                session_id: malformed.into(),
                after_sequence: 0,
            })
            .await
            .map(drop),
        ));
        let answers: Vec<(&str, Option<R>)> = outcomes
            .into_iter()
            .map(|(rpc, result)| (rpc, result.err().map(|e| reason_of(&e))))
            .collect();
        let expected: Vec<(&str, Option<R>)> = answers
            .iter()
            .map(|(rpc, _)| (*rpc, Some(R::InvalidArgument)))
            .collect();
        assert_eq!(answers, expected, "session_id {malformed:?}");
    }
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Connect
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_resumes_after_the_last_sequence_seen() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], false).await.unwrap();
    let sid = session.session_id.clone();
    desktop.set_ready(&sid, "chat").await.unwrap();
    desktop.set_ready(&sid, "email").await.unwrap();
    desktop
        .client
        .set_not_ready(not_ready(&rid(), &sid, "chat", reason("break")))
        .await
        .unwrap();

    // Everything from the start: 4 creation events and 3 changes, sequences 1..=7.
    let mut bus = desktop.connect(&sid, 0).await;
    let mut all = Vec::new();
    for _ in 0..7 {
        all.push(next(&mut bus).await);
    }
    let sequences: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=7).collect::<Vec<_>>());
    drop(bus);

    // Resuming after each sequence gives exactly the rest: the same events, then nothing until the
    // fence.
    for (i, seen) in all.iter().enumerate() {
        let mut bus = desktop.connect(&sid, seen.sequence).await;
        for expected in &all[i + 1..] {
            let e = next(&mut bus).await;
            assert_eq!(e, *expected);
        }
        if i == all.len() - 1 {
            fence(&mut desktop, &mut bus, &sid, "chat", "lunch").await;
        }
    }
    stack.stop().await;
}

#[tokio::test]
async fn connect_relays_the_interaction_events_addressed_to_its_agent_only() {
    let stack = Stack::start().await;
    let mut a1 = stack.desktop("a1");
    let s1 = a1.login(&["chat"], true).await.unwrap();
    let mut bus1 = a1.connect(&s1.session_id, 0).await;
    assert_eq!(bus1.until("ChannelCreated").await.len(), 3);
    let mut a2 = stack.desktop("a2");
    let s2 = a2.login(&["chat"], true).await.unwrap();
    let mut bus2 = a2.connect(&s2.session_id, 0).await;
    bus2.until("ChannelCreated").await;
    // The same agent id in another tenant is another agent.
    let token = stack.token(Role::Agent, "a1", "t2", Some("a1"));
    let mut other_tenant = desktop_with(&stack, "a1", &token);
    let s3 = other_tenant.login(&["chat"], true).await.unwrap();
    assert_eq!(s3.tenant, "t2");
    let mut bus3 = other_tenant.connect(&s3.session_id, 0).await;
    bus3.until("ChannelCreated").await;
    // interaction-server's own stream of what is addressed to a1: the originals.
    let mut originals = stack.ixn(Role::Agent, "a1").subscribe(0).await;

    let x = offer(&stack, "a1", "chat").await;
    let invite = next(&mut bus1).await;
    let Body::Invite(body_x) = body(&invite) else {
        panic!("expected the Invite, got {invite:?}");
    };
    assert_eq!(body_x.interaction.as_ref().unwrap().interaction_id, x);
    assert!(!body_x.ticket_id.is_empty());
    let original = originals.until("Invite").await.pop().unwrap();
    let relayed = invite.relayed_from.as_ref().expect("relayed_from is set");
    assert_eq!(relayed.source, "interaction-server");
    assert_eq!(relayed.sequence, original.sequence);
    assert_eq!(relayed.event_id, original.event_id);
    assert_eq!(invite.source, "session-service");
    assert_ne!(invite.event_id, original.event_id);
    // session-service's own sequence: after the 3 events of each of the three sessions.
    assert_eq!(invite.sequence, 10);
    assert_eq!(invite.body, original.body);
    assert_eq!(invite.to, original.to);
    assert_eq!(invite.actor, original.actor);

    // An interaction for a2 goes to a2 only.
    let y = offer(&stack, "a2", "chat").await;
    let invite_y = next(&mut bus2).await;
    assert!(is(&invite_y, "Invite"));
    assert_eq!(interaction_of(&invite_y), Some(y.as_str()));
    assert!(invite_y.relayed_from.is_some());

    // Revoked when the media server stops it while a1 is invited.
    stack.ixn(Role::MediaServer, "ms1").stop(&x).await;
    let revoked = next(&mut bus1).await;
    match body(&revoked) {
        Body::Revoked(r) => {
            assert_eq!(r.interaction_id, x);
            assert_eq!(r.ticket_id, body_x.ticket_id);
            assert_eq!(r.cause, "stopped");
        }
        other => panic!("expected Revoked, got {other:?}"),
    }
    let original = originals.until("Revoked").await.pop().unwrap();
    assert_eq!(
        revoked.relayed_from.as_ref().unwrap().sequence,
        original.sequence
    );
    assert!(revoked.sequence > invite.sequence);

    // Nothing of y reached a1: the next event of a1 is the fence, and a replay from 0 has none.
    stack.ixn(Role::MediaServer, "ms1").stop(&y).await;
    bus2.until("Revoked").await;
    fence(&mut a1, &mut bus1, &s1.session_id, "chat", "break").await;
    fence(
        &mut other_tenant,
        &mut bus3,
        &s3.session_id,
        "chat",
        "break",
    )
    .await;
    let mut replay = a1.connect(&s1.session_id, 0).await;
    let all = replay.until("AgentStateChanged").await;
    assert_eq!(
        kinds(&all),
        [
            "SessionCreated",
            "ChannelGroupCreated",
            "ChannelCreated",
            "Invite",
            "Revoked",
            "AgentStateChanged"
        ]
    );
    assert!(all.iter().all(|e| interaction_of(e) != Some(y.as_str())));
    assert!(
        all.iter()
            .all(|e| e.to.iter().all(|p| p.agent_id() == Some("a1")))
    );
    stack.stop().await;
}

#[tokio::test]
async fn connect_is_refused_to_other_agents_and_beyond_the_head() {
    let stack = Stack::start().await;
    let mut a1 = stack.desktop("a1");
    let session = a1.login(&["chat"], false).await.unwrap();
    let sid = session.session_id.clone();
    let connect = |after: u64| ConnectRequest {
        session_id: sid.clone(),
        after_sequence: after,
    };

    let err = stack
        .desktop("a2")
        .client
        .connect(connect(0))
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    let token = stack.token(Role::Agent, "a1", "t2", Some("a1"));
    let err = desktop_with(&stack, "a1", &token)
        .client
        .connect(connect(0))
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);

    // The head is 3 (SessionCreated, ChannelGroupCreated, ChannelCreated).
    let err = a1.client.connect(connect(4)).await.unwrap_err();
    assert_failure(&err, Code::OutOfRange, R::SequenceOutOfRange);
    let err = a1.client.connect(connect(u64::MAX)).await.unwrap_err();
    assert_failure(&err, Code::OutOfRange, R::SequenceOutOfRange);
    let err = a1
        .client
        .connect(ConnectRequest {
            session_id: "nope".into(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::InvalidArgument, R::InvalidArgument);
    let err = a1
        .client
        .connect(ConnectRequest {
            session_id: uuid::Uuid::now_v7().to_string(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);

    // At the head exactly: live events only. An admin may connect too.
    let mut bus = a1.connect(&sid, 3).await;
    let mut admin_bus = stack.session_admin().connect(&sid, 3).await;
    fence(&mut a1, &mut bus, &sid, "chat", "break").await;
    assert!(is(&next(&mut admin_bus).await, "AgentStateChanged"));
    stack.stop().await;
}

#[tokio::test]
async fn connect_ends_with_ok_after_session_disposed_and_logout_works_once() {
    let stack = Stack::start().await;
    let mut a1 = stack.desktop("a1");
    let session = a1.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = a1.connect(&sid, 0).await;
    bus.until("ChannelCreated").await;
    let mut second = a1.connect(&sid, 0).await;

    // Logout failures first: another agent's session; a reason the platform does not list.
    let err = stack.desktop("a2").logout(&sid, None).await.unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    let err = a1.logout(&sid, reason("nap")).await.unwrap_err();
    assert_failure(&err, Code::InvalidArgument, R::ReasonNotAllowed);
    assert_eq!(a1.get(&sid).await.unwrap().state(), SessionState::Active);

    let ack = a1.logout(&sid, reason("end-of-shift")).await.unwrap();
    assert_eq!(ack.session_id, sid);
    let rest = bus.drain_to_end().await;
    let last = rest.last().unwrap();
    assert!(is(last, "SessionDisposed"));
    assert_eq!(last.sequence, ack.sequence);
    // Every stream of the session ends, after the whole story.
    let all = second.drain_to_end().await;
    assert_eq!(all.last().unwrap(), last);
    assert!(!at_switch(&stack, "a1").await.logged_in);

    // The session is over: no new stream, no second logout.
    let err = a1
        .client
        .connect(ConnectRequest {
            session_id: sid.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    let err = a1.logout(&sid, None).await.unwrap_err();
    assert_failure(&err, Code::NotFound, R::SessionNotFound);
    assert_eq!(a1.get(&sid).await.unwrap().state(), SessionState::Disposed);
    // The agent may log in again.
    a1.login(&["chat"], false).await.unwrap();
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_retried_request_answers_again_and_emits_nothing() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let login = LoginRequest {
        request_id: rid(),
        agent_id: String::new(),
        place_id: "p1".into(),
        media_types: vec!["chat".into(), "email".into()],
        ready: false,
    };
    let first = desktop
        .client
        .login(login.clone())
        .await
        .unwrap()
        .into_inner();
    let again = desktop
        .client
        .login(login.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    let sid = first.session_id.clone();
    // The same id for another login is refused, even though the agent is logged in.
    let err = desktop
        .client
        .login(LoginRequest {
            ready: true,
            ..login.clone()
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::AlreadyExists, R::RequestIdReused);

    let request_id = rid();
    let first = desktop
        .client
        .set_ready(ready(&request_id, &sid, "chat"))
        .await
        .unwrap()
        .into_inner();
    let again = desktop
        .client
        .set_ready(ready(&request_id, &sid, "chat"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    let err = desktop
        .client
        .set_ready(ready(&request_id, &sid, "email"))
        .await
        .unwrap_err();
    assert_failure(&err, Code::AlreadyExists, R::RequestIdReused);
    // A method's ids are its own: the same id for SetNotReady is a new request.
    let not_ready_id = rid();
    let nr = not_ready(&not_ready_id, &sid, "chat", reason("break"));
    desktop.client.set_not_ready(nr.clone()).await.unwrap();
    desktop.client.set_not_ready(nr.clone()).await.unwrap();
    let err = desktop
        .client
        .set_not_ready(SetNotReadyRequest {
            reason: reason("lunch"),
            ..nr.clone()
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::AlreadyExists, R::RequestIdReused);
    // A retried SetReady after a later change answers what it answered then, and changes nothing.
    let replayed = desktop
        .client
        .set_ready(ready(&request_id, &sid, "chat"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed, first);
    assert_eq!(
        channel(&desktop.get(&sid).await.unwrap(), "chat").state(),
        AgentState::NotReady
    );

    // Exactly one event per request: 4 creation events, Ready, Not Ready, then the fence.
    let mut bus = desktop.connect(&sid, 0).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next(&mut bus).await);
    }
    assert_eq!(
        kinds(&seen),
        [
            "SessionCreated",
            "ChannelGroupCreated",
            "ChannelCreated",
            "ChannelCreated",
            "AgentStateChanged",
            "AgentStateChanged"
        ]
    );
    assert_eq!(seen[0].correlation_id, login.request_id);
    assert_eq!(seen[4].correlation_id, request_id);
    assert_eq!(seen[5].correlation_id, not_ready_id);
    fence(&mut desktop, &mut bus, &sid, "email", "lunch").await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Connection lost
// ---------------------------------------------------------------------------------------------

/// Drops a `Connect` stream and makes sure session-service has seen it go before the test moves the
/// clock (the grace starts when the server notices, so a clock moved before that would not count).
///
/// The fence is a call on the same HTTP/2 connection: the client writes the stream's RST_STREAM
/// before the call's HEADERS, so the server reads the reset first and wakes the task sending the
/// stream, which drops it and so wakes the task feeding it; that one ends and counts the session as
/// disconnected. On the test's single-threaded runtime those tasks are queued ahead of the call's
/// own, so the call's answer comes after. A second round trip is margin.
async fn hang_up(desktop: &mut Desktop, bus: Stream, session: &str) {
    drop(bus);
    desktop.get(session).await.unwrap();
    desktop.get(session).await.unwrap();
}

#[tokio::test]
async fn ready_channels_go_not_ready_when_the_connection_is_lost_for_the_grace() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], false).await.unwrap();
    let sid = session.session_id.clone();
    desktop.set_ready(&sid, "chat").await.unwrap();
    let mut bus = desktop.connect(&sid, 0).await;
    let seen = bus.until("AgentStateChanged").await;
    let last = seen.last().unwrap().sequence;

    hang_up(&mut desktop, bus, &sid).await;
    let mut log = desktop.log_after(last).await;
    stack.clock.advance(stack.grace + Duration::from_secs(1));
    let changed = next(&mut log).await;

    // The desktop comes back after the grace: its first event is the change the grace made.
    let mut bus = desktop.connect(&sid, last).await;
    let e = next(&mut bus).await;
    assert_eq!(e, changed);
    assert_eq!(e.sequence, last + 1);
    assert!(is_system(&e.actor, "connection-lost"), "{e:?}");
    let c = state_change(&e);
    assert_eq!(c.media_type, "chat");
    assert_eq!(c.state(), AgentState::NotReady);
    assert_eq!(code_of(&c.reason), DEFAULT_REASON);

    // The session stays; the switch agrees; only the Ready channel changed.
    let s = desktop.get(&sid).await.unwrap();
    assert_eq!(s.state(), SessionState::Active);
    assert_eq!(channel(&s, "chat").state(), AgentState::NotReady);
    assert_eq!(code_of(&channel(&s, "chat").reason), DEFAULT_REASON);
    assert_eq!(channel(&s, "email").state(), AgentState::NotReady);
    let agent = at_switch(&stack, "a1").await;
    assert!(agent.logged_in);
    assert_eq!(
        switch_media(&agent, "chat").unwrap().state(),
        AgentState::NotReady
    );
    fence(&mut desktop, &mut bus, &sid, "email", "break").await;
    // The desktop carries on.
    desktop.set_ready(&sid, "chat").await.unwrap();
    assert_eq!(
        state_change(&next(&mut bus).await).state(),
        AgentState::Ready
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_connect_within_the_grace_keeps_the_channels_as_they_are() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    let last = bus.until("ChannelCreated").await.last().unwrap().sequence;

    hang_up(&mut desktop, bus, &sid).await;
    stack.clock.advance(stack.grace - Duration::from_secs(1));
    let mut bus = desktop.connect(&sid, last).await;
    // Past the end of the grace that started when the first stream went, and far beyond.
    stack.clock.advance(Duration::from_secs(2));
    stack.clock.advance(stack.grace * 2);

    // Still Ready, here and at the switch; the next event is the test's own change.
    let s = desktop.get(&sid).await.unwrap();
    assert_eq!(channel(&s, "chat").state(), AgentState::Ready);
    let agent = at_switch(&stack, "a1").await;
    assert_eq!(
        switch_media(&agent, "chat").unwrap().state(),
        AgentState::Ready
    );
    fence(&mut desktop, &mut bus, &sid, "chat", "break").await;
    stack.stop().await;
}

#[tokio::test]
async fn a_session_never_connected_loses_ready_after_the_grace_and_stays() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    // Watch through session-service's EventService: it is not a Connect stream.
    let mut watch = desktop
        .events
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            from_head: false,
            filter: Some(EventFilter {
                kinds: vec!["AgentStateChanged".into()],
                interaction_ids: Vec::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner();

    stack.clock.advance(stack.grace + Duration::from_secs(1));
    let e = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("no event within PATIENCE")
        .unwrap()
        .unwrap();
    assert!(is_system(&e.actor, "connection-lost"));
    assert_eq!(state_change(&e).state(), AgentState::NotReady);
    let s = desktop.get(&sid).await.unwrap();
    assert_eq!(s.state(), SessionState::Active);
    assert_eq!(channel(&s, "chat").state(), AgentState::NotReady);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// session-service's own EventService
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn session_service_serves_its_log_in_order_to_an_admin() {
    let stack = Stack::start().await;
    let mut a1 = stack.desktop("a1");
    let s1 = a1.login(&["chat"], true).await.unwrap();
    let mut bus1 = a1.connect(&s1.session_id, 0).await;
    let mut a2 = stack.desktop("a2");
    let s2 = a2.login(&["email", "voice"], false).await.unwrap();
    a2.set_ready(&s2.session_id, "voice").await.unwrap();
    let x = offer(&stack, "a1", "chat").await;
    bus1.until("Invite").await;
    stack.ixn(Role::MediaServer, "ms1").stop(&x).await;
    bus1.until("Revoked").await;
    let ack = a2.logout(&s2.session_id, None).await.unwrap();

    let subscribe = SubscribeRequest {
        after_sequence: 0,
        from_head: false,
        filter: Some(EventFilter::default()),
    };
    let mut admin = stack.session_admin();
    let mut all = Stream {
        stream: admin
            .events
            .subscribe(subscribe.clone())
            .await
            .unwrap()
            .into_inner(),
    };
    let mut log = Vec::new();
    while log.last().is_none_or(|e: &Event| e.sequence < ack.sequence) {
        log.push(next(&mut all).await);
    }
    let sequences: Vec<u64> = log.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=ack.sequence).collect::<Vec<_>>());
    assert!(
        log.iter()
            .all(|e| e.tenant == "t1" && e.source == "session-service")
    );
    let ks = kinds(&log);
    assert_eq!(ks.iter().filter(|k| **k == "SessionCreated").count(), 2);
    assert_eq!(ks.iter().filter(|k| **k == "Invite").count(), 1);
    assert_eq!(ks.iter().filter(|k| **k == "Revoked").count(), 1);
    assert_eq!(ks.last(), Some(&"SessionDisposed"));
    assert!(
        log.iter()
            .filter(|e| matches!(body(e), Body::Invite(_) | Body::Revoked(_)))
            .all(|e| e.relayed_from.is_some())
    );
    // The same, again, from any point.
    let mut tail = Stream {
        stream: admin
            .events
            .subscribe(SubscribeRequest {
                after_sequence: 5,
                ..subscribe.clone()
            })
            .await
            .unwrap()
            .into_inner(),
    };
    for expected in &log[5..] {
        assert_eq!(next(&mut tail).await, *expected);
    }

    // An agent sees only what is addressed to it.
    let mut own = Stream {
        stream: a1
            .events
            .subscribe(subscribe.clone())
            .await
            .unwrap()
            .into_inner(),
    };
    let mine = own.until("Revoked").await;
    assert!(
        mine.iter()
            .all(|e| e.to.iter().any(|p| p.agent_id() == Some("a1")))
    );
    let expected: Vec<&Event> = log
        .iter()
        .filter(|e| e.to.iter().any(|p| p.agent_id() == Some("a1")))
        .collect();
    assert_eq!(mine.iter().collect::<Vec<_>>(), expected);

    // Beyond the head.
    let err = admin
        .events
        .subscribe(SubscribeRequest {
            after_sequence: ack.sequence + 1,
            ..subscribe
        })
        .await
        .unwrap_err();
    assert_failure(&err, Code::OutOfRange, R::SequenceOutOfRange);
    stack.stop().await;
}
