//! The Logout use case (seed 003) over real sockets, both services running: the Basic Flow and its
//! post-conditions, a platform without channel deactivation, AF1 (a logout reason is required), EF1
//! (an ongoing interaction), and EF2 / EF3 caused by a real outage of interaction-server (the
//! "switch"). Failures injected at the switch (a refusal part-way, step 5) are in `logout_faults.rs`.
//!
//! Every test reads the session's `Connect` stream and asserts the exact kinds and order of the
//! events; "nothing was emitted" is proven with a fence (the next event that must come is the first
//! one seen). The switch's own view of the agent is read with `AgentService.GetAgent` as role
//! `service`. Nothing sleeps: waits are on streams, bounded by the harness's `PATIENCE`.

#[macro_use]
mod common;

use common::*;
use interaction_server::domain::{PlatformConfig, ReasonConfig};
use ixn_proto::auth::Role;
use ixn_proto::common::{AgentState, Party};
use ixn_proto::error::Reason as R;
use ixn_proto::events::event::Body;
use ixn_proto::events::{Event, SubscribeRequest};
use ixn_proto::interaction::AcceptRequest;
use ixn_proto::session::SessionState;
use tonic::Code;

#[tokio::test]
async fn basic_flow_disposes_in_the_seed_order_and_closes_the_connect_stream() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    assert_eq!(session.state(), SessionState::Active);
    let mut bus = desktop.connect(&session.session_id, 0).await;
    let created = bus.until("ChannelCreated").await;
    assert_eq!(
        kinds(&created),
        ["SessionCreated", "ChannelGroupCreated", "ChannelCreated"]
    );
    assert_eq!(
        kinds(&[bus.next().await.unwrap().unwrap()]),
        ["ChannelCreated"]
    );

    let ack = desktop.logout(&session.session_id, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), logout_kinds(2, 2));
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    let after = desktop.get(&session.session_id).await.unwrap();
    assert_eq!(after.state(), SessionState::Disposed);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Helpers of this file (the shared harness is `common`).
// ---------------------------------------------------------------------------------------------

/// Reads the creation events of a session with `n` channels and any `ready` AgentStateChanged after.
async fn read_creation(bus: &mut Stream, n: usize, ready: usize) -> Vec<Event> {
    let mut seen = Vec::new();
    for _ in 0..2 + n + ready {
        seen.push(bus.next().await.unwrap().expect("the stream is open"));
    }
    let mut expected = vec!["SessionCreated", "ChannelGroupCreated"];
    expected.extend(std::iter::repeat_n("ChannelCreated", n));
    expected.extend(std::iter::repeat_n("AgentStateChanged", ready));
    assert_eq!(kinds(&seen), expected);
    seen
}

/// An interaction of `media` routed to `agent`: a media server submits it, a router takes it from
/// the queue and delivers it. Returns (interaction id, ticket id).
async fn offer(stack: &Stack, agent: &str, media: &str) -> (String, String) {
    let mut ms = stack.ixn(Role::MediaServer, "ms1");
    let interaction = ms.submit("q1", media).await;
    let mut router = stack.ixn(Role::Router, "r1");
    let pulled = router.pull("q1", &interaction.interaction_id).await;
    assert!(pulled.interaction.is_some(), "the router takes it");
    let delivered = router
        .deliver(&interaction.interaction_id, agent)
        .await
        .expect("Deliver");
    (interaction.interaction_id, delivered.ticket_id)
}

fn reason_config(code: &str, description: &str) -> ReasonConfig {
    ReasonConfig {
        code: code.into(),
        description: description.into(),
        system_name: String::new(),
    }
}

/// A platform that requires a logout reason, listing three.
fn reason_required() -> PlatformConfig {
    PlatformConfig {
        logout_reason_required: Some(true),
        logout_reasons: Some(vec![
            reason_config("end-of-shift", "End of shift"),
            reason_config("break", "Break"),
            reason_config("personal", "Personal"),
        ]),
        ..platform()
    }
}

/// The kinds of a complete logout of `n` channels, `ready` of them Ready, with deactivation.
fn full_logout(n: usize, ready: usize, deactivation: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    out.extend(std::iter::repeat_n("AgentStateChanged", ready));
    if deactivation {
        out.extend(std::iter::repeat_n("ChannelDeactivated", n));
    }
    out.extend(std::iter::repeat_n("ChannelDisposed", n));
    out.push("ChannelGroupDisposed");
    out.push("SessionDisposed");
    out
}

// ---------------------------------------------------------------------------------------------
// Basic Flow
// ---------------------------------------------------------------------------------------------

/// Three channels, the first and the last Ready: step 3 makes exactly those Not Ready (in channel
/// order, with the default reason), step 4 deactivates all three, step 6 disposes of the channels,
/// the group and the session; the stream then ends with OK and the response names SessionDisposed.
/// After it the switch has the agent logged out, the session reads DISPOSED, a retry of the same
/// request answers the same and emits nothing, and the agent can log in again.
#[tokio::test]
async fn basic_flow_with_three_channels_some_ready() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop
        .login(&["voice", "chat", "email"], false)
        .await
        .unwrap();
    let sid = session.session_id.clone();
    desktop.set_ready(&sid, "voice").await.unwrap();
    let before = desktop.set_ready(&sid, "email").await.unwrap();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 3, 2).await;

    let switch = switch_view(&stack, "a1").await;
    assert!(switch.logged_in);
    assert_eq!(switch_media(&switch, "voice").state(), AgentState::Ready);
    assert_eq!(switch_media(&switch, "chat").state(), AgentState::NotReady);
    assert_eq!(switch_media(&switch, "email").state(), AgentState::Ready);

    let request_id = rid();
    let ack = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    assert_eq!(ack.session_id, sid);
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), full_logout(3, 2, true));

    let agent = Party::agent("a1", "place-a1");
    for pair in rest.windows(2) {
        assert!(pair[0].sequence < pair[1].sequence, "in log order");
    }
    for e in &rest {
        assert_eq!(e.actor.as_ref(), Some(&agent), "the agent did it");
        assert_eq!(e.to, std::slice::from_ref(&agent), "addressed to the agent");
        assert!(e.relayed_from.is_none());
    }
    // Step 3: the Ready channels, in channel order, Not Ready with the default reason.
    let id_of = |media: &str| channel(&before, media).channel_id.clone();
    for (e, media) in rest[..2].iter().zip(["voice", "email"]) {
        let changed = take!(e, AgentStateChanged);
        assert_eq!(changed.session_id, sid);
        assert_eq!(changed.media_type, media);
        assert_eq!(changed.channel_id, id_of(media));
        assert_eq!(changed.state(), AgentState::NotReady);
        assert_eq!(changed.reason.as_ref().unwrap().code, DEFAULT_NOT_READY);
    }
    // Step 4: every active channel, in channel order.
    for (e, media) in rest[2..5].iter().zip(["voice", "chat", "email"]) {
        let deactivated = take!(e, ChannelDeactivated);
        assert_eq!(deactivated.media_type, media);
        assert_eq!(deactivated.channel_id, id_of(media));
    }
    // Step 6: each channel, then the group, then the session.
    for (e, media) in rest[5..8].iter().zip(["voice", "chat", "email"]) {
        assert_eq!(take!(e, ChannelDisposed).channel_id, id_of(media));
    }
    let group = take!(&rest[8], ChannelGroupDisposed);
    assert_eq!(
        group.channel_group_id,
        before.channel_group.as_ref().unwrap().channel_group_id
    );
    let disposed = take!(&rest[9], SessionDisposed);
    assert_eq!(disposed.session_id, sid);
    assert_eq!(disposed.reason, None, "no logout reason was given");
    assert_eq!(rest[9].sequence, ack.sequence);

    // Post-conditions: logged out at the switch, the session disposed.
    let switch = switch_view(&stack, "a1").await;
    assert!(!switch.logged_in, "{switch:?}");
    assert!(switch.media.is_empty(), "{switch:?}");
    let after = desktop.get(&sid).await.unwrap();
    assert_eq!(after.state(), SessionState::Disposed);

    // A retry of the same request: the same answer, and nothing new in the log. The agent's
    // subscription to session-service's log from the SessionDisposed on shows, first, the next
    // login's SessionCreated (the fence).
    let mut log = Stream {
        stream: desktop
            .events
            .subscribe(SubscribeRequest {
                after_sequence: ack.sequence,
                from_head: false,
                filter: None,
            })
            .await
            .unwrap()
            .into_inner(),
    };
    let again = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    assert_eq!(again, ack);

    // The MediaBar begins the Basic Login flow: a second login works.
    let second = desktop
        .login(&["voice", "chat", "email"], true)
        .await
        .unwrap();
    assert_ne!(second.session_id, sid);
    assert_eq!(second.state(), SessionState::Active);
    assert_eq!(second.created_sequence, ack.sequence + 1);
    let first_after = log.next().await.unwrap().unwrap();
    assert_eq!(
        take!(&first_after, SessionCreated).session_id,
        second.session_id
    );
    let switch = switch_view(&stack, "a1").await;
    assert!(switch.logged_in);
    assert_eq!(
        switch_media_types(&switch),
        ["chat", "email", "voice"],
        "{switch:?}"
    );

    // The old logout retried while the new session lives: the recorded answer, the new session
    // untouched. A new logout of the old session finds no live session.
    let again = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    assert_eq!(again, ack);
    assert_eq!(desktop.get(&second.session_id).await.unwrap(), second);
    let err = desktop.logout(&sid, None).await.unwrap_err();
    failure(&err, R::SessionNotFound, Code::NotFound);
    assert_eq!(desktop.get(&second.session_id).await.unwrap(), second);
    stack.stop().await;
}

/// Every event a Logout causes carries the Logout's `request_id` as its `correlation_id`
/// (the contract's envelope: "the `request_id` that caused it"), steps 3 and 4 included.
#[tokio::test]
async fn logout_events_carry_the_logout_request_id() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2, 0).await;

    let request_id = rid();
    desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), full_logout(2, 2, true));
    let correlations: Vec<(&str, &str)> = rest
        .iter()
        .map(|e| (kind_of(e), e.correlation_id.as_str()))
        .collect();
    let expected: Vec<(&str, &str)> = rest
        .iter()
        .map(|e| (kind_of(e), request_id.as_str()))
        .collect();
    assert_eq!(correlations, expected);
    stack.stop().await;
}

/// A platform without channel deactivation: step 4 does nothing, so no ChannelDeactivated; the
/// switch still logs the agent out (and forgets its media), and the agent can log in again.
#[tokio::test]
async fn without_channel_deactivation_no_channel_is_deactivated() {
    let stack = Stack::start_with(PlatformConfig {
        channel_deactivation_supported: Some(false),
        ..platform()
    })
    .await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    assert!(!session.channel_deactivation_supported);
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2, 0).await;

    let ack = desktop.logout(&sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), full_logout(2, 2, false));
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert_eq!(
        desktop.get(&sid).await.unwrap().state(),
        SessionState::Disposed
    );
    let switch = switch_view(&stack, "a1").await;
    assert!(!switch.logged_in, "{switch:?}");

    let second = desktop.login(&["chat", "email"], false).await.unwrap();
    assert_eq!(second.state(), SessionState::Active);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// AF1: the platform requires a logout reason
// ---------------------------------------------------------------------------------------------

/// Without a reason the answer is LOGOUT_REASON_REQUIRED (the seed's NeedInfo) listing the
/// platform's reasons, and nothing changes; an unlisted reason or free text is REASON_NOT_ALLOWED.
/// The resubmission with a listed reason and the same `request_id` then runs the Basic Flow, the
/// reason on the Ready channel's AgentStateChanged and on SessionDisposed. The first event after
/// the refusals is the resubmission's: the refusals emitted nothing.
#[tokio::test]
async fn af1_logout_reason_required_then_resubmitted_with_the_same_request_id() {
    let stack = Stack::start_with(reason_required()).await;
    let mut desktop = stack.desktop("a1");
    let session = desktop
        .login(&["voice", "chat", "email"], false)
        .await
        .unwrap();
    let sid = session.session_id.clone();
    // The reasons collected at login: what the MediaBar offers.
    assert!(session.logout_reason_required);
    let offered: Vec<&str> = session
        .logout_reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect();
    assert_eq!(offered, ["end-of-shift", "break", "personal"]);
    let before = desktop.set_ready(&sid, "chat").await.unwrap();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 3, 1).await;
    let switch_before = switch_view(&stack, "a1").await;

    let request_id = rid();
    let empty = Some(Default::default());
    for why in [None, empty] {
        let err = desktop
            .logout_as(&request_id, &sid, why.clone())
            .await
            .unwrap_err();
        let f = failure(&err, R::LogoutReasonRequired, Code::FailedPrecondition);
        assert_eq!(
            f.metadata.get("logout_reasons").map(String::as_str),
            Some("end-of-shift,break,personal"),
            "{why:?}: {f:?}"
        );
        assert_eq!(desktop.get(&sid).await.unwrap(), before, "{why:?}");
    }
    // A reason the platform does not list for logout (`lunch` is a Not Ready reason only), or free
    // text where none is allowed.
    let free_text = Some(ixn_proto::common::Reason {
        description: "going home".into(),
        ..Default::default()
    });
    for why in [reason("vacation"), reason("lunch"), free_text] {
        let err = desktop
            .logout_as(&request_id, &sid, why.clone())
            .await
            .unwrap_err();
        failure(&err, R::ReasonNotAllowed, Code::InvalidArgument);
        assert_eq!(desktop.get(&sid).await.unwrap(), before, "{why:?}");
    }
    assert_eq!(switch_view(&stack, "a1").await, switch_before);

    // The resubmission, same request_id, with a listed reason.
    let ack = desktop
        .logout_as(&request_id, &sid, reason("end-of-shift"))
        .await
        .unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), full_logout(3, 1, true));
    let changed = take!(&rest[0], AgentStateChanged);
    assert_eq!(changed.media_type, "chat");
    assert_eq!(changed.state(), AgentState::NotReady);
    assert_eq!(changed.reason.as_ref().unwrap().code, "end-of-shift");
    let disposed = take!(rest.last().unwrap(), SessionDisposed);
    assert_eq!(disposed.reason.as_ref().unwrap().code, "end-of-shift");
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert!(!switch_view(&stack, "a1").await.logged_in);
    assert_eq!(
        desktop.get(&sid).await.unwrap().state(),
        SessionState::Disposed
    );
    stack.stop().await;
}

/// On a platform that does not require a reason, an unlisted one is still refused
/// (REASON_NOT_ALLOWED, nothing changes), and a listed one is carried to SessionDisposed.
#[tokio::test]
async fn an_unlisted_logout_reason_is_not_allowed() {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 1, 0).await;

    let err = desktop
        .logout(&sid, reason("not-a-reason"))
        .await
        .unwrap_err();
    let f = failure(&err, R::ReasonNotAllowed, Code::InvalidArgument);
    assert_eq!(
        f.metadata.get("code").map(String::as_str),
        Some("not-a-reason")
    );
    assert_eq!(desktop.get(&sid).await.unwrap(), session);
    assert_eq!(
        switch_media(&switch_view(&stack, "a1").await, "chat").state(),
        AgentState::Ready
    );

    desktop.logout(&sid, reason("break")).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), full_logout(1, 1, true));
    assert_eq!(
        take!(&rest[0], AgentStateChanged)
            .reason
            .as_ref()
            .unwrap()
            .code,
        "break"
    );
    let disposed = take!(rest.last().unwrap(), SessionDisposed);
    assert_eq!(disposed.reason.as_ref().unwrap().code, "break");
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// EF1: an ongoing interaction
// ---------------------------------------------------------------------------------------------

/// How the agent holds the interaction in an EF1 test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Holding {
    Invited,
    Owning,
}

/// The agent holds an interaction: ONGOING_INTERACTION naming it, and nothing changes — the
/// session, its channels and the switch's view are as before, and nothing is emitted (the next
/// event on `Connect` is the stop's Revoked). Once the interaction is stopped the logout succeeds.
async fn ef1(holding: Holding) {
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2, 0).await;

    let (interaction_id, ticket_id) = offer(&stack, "a1", "chat").await;
    // The relayed Invite commits with the mirror's update: from here session-service knows.
    let invite = bus.next().await.unwrap().unwrap();
    assert_eq!(take!(&invite, Invite).ticket_id, ticket_id);
    if holding == Holding::Owning {
        stack
            .ixn(Role::Agent, "a1")
            .interactions
            .accept(AcceptRequest {
                request_id: rid(),
                interaction_id: interaction_id.clone(),
                ticket_id: ticket_id.clone(),
            })
            .await
            .expect("Accept");
    }
    let before = desktop.get(&sid).await.unwrap();
    assert_eq!(
        channel(&before, "chat").interaction_ids,
        std::slice::from_ref(&interaction_id),
        "the session shows what the agent holds"
    );
    let switch_before = switch_view(&stack, "a1").await;
    assert_eq!(
        switch_before.interaction_ids,
        std::slice::from_ref(&interaction_id)
    );

    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    let f = failure(&err, R::OngoingInteraction, Code::FailedPrecondition);
    assert_eq!(
        f.metadata.get("interaction_ids"),
        Some(&interaction_id),
        "{f:?}"
    );
    // Post-condition: as if the logout never happened.
    assert_eq!(desktop.get(&sid).await.unwrap(), before);
    assert_eq!(switch_view(&stack, "a1").await, switch_before);

    // The interaction ends: its Revoked is the next event on the bus (the fence).
    stack
        .ixn(Role::MediaServer, "ms1")
        .stop(&interaction_id)
        .await;
    let revoked = bus.next().await.unwrap().unwrap();
    let revoked = take!(&revoked, Revoked);
    assert_eq!(revoked.interaction_id, interaction_id);
    match holding {
        Holding::Invited => assert_eq!(revoked.ticket_id, ticket_id),
        Holding::Owning => assert_eq!(revoked.ticket_id, ""),
    }

    let ack = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), full_logout(2, 2, true));
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert!(!switch_view(&stack, "a1").await.logged_in);
    stack.stop().await;
}

#[tokio::test]
async fn ef1_an_invited_agent_cannot_log_out_until_the_interaction_is_stopped() {
    ef1(Holding::Invited).await;
}

#[tokio::test]
async fn ef1_an_owning_agent_cannot_log_out_until_the_interaction_is_stopped() {
    ef1(Holding::Owning).await;
}

/// EF1 is checked before AF1 (the seed's step 3 before step 4): an agent holding an interaction on
/// a platform that requires a reason hears ONGOING_INTERACTION, not LOGOUT_REASON_REQUIRED.
#[tokio::test]
async fn ef1_is_checked_before_af1() {
    let stack = Stack::start_with(reason_required()).await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 1, 0).await;
    let (interaction_id, _) = offer(&stack, "a1", "chat").await;
    assert_eq!(kind_of(&bus.next().await.unwrap().unwrap()), "Invite");

    let err = desktop.logout(&sid, None).await.unwrap_err();
    failure(&err, R::OngoingInteraction, Code::FailedPrecondition);

    stack
        .ixn(Role::MediaServer, "ms1")
        .stop(&interaction_id)
        .await;
    assert_eq!(kind_of(&bus.next().await.unwrap().unwrap()), "Revoked");
    let err = desktop.logout(&sid, None).await.unwrap_err();
    failure(&err, R::LogoutReasonRequired, Code::FailedPrecondition);
    desktop.logout(&sid, reason("personal")).await.unwrap();
    assert_eq!(kinds(&bus.drain_to_end().await), full_logout(1, 1, true));
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// EF2, EF3: the switch is down
// ---------------------------------------------------------------------------------------------

/// EF2 by a real outage: the first Not Ready cannot reach the switch, so NOT_READY_FAILED with code
/// UNAVAILABLE; nothing was done, so nothing changed, and the agent is still logged in with both
/// channels Ready at the switch. Once the switch is back, the same request carries on and completes.
#[tokio::test]
async fn ef2_switch_unreachable_then_the_same_logout_completes() {
    let mut stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2, 0).await;

    stack.stop_interaction_server().await;
    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    let f = failure(&err, R::NotReadyFailed, Code::Unavailable);
    assert_eq!(
        f.metadata.get("media_type").map(String::as_str),
        Some("chat")
    );
    assert_eq!(f.metadata.get("session_id"), Some(&sid));
    assert_eq!(desktop.get(&sid).await.unwrap(), session);

    stack.start_interaction_server().await;
    let switch = switch_view(&stack, "a1").await;
    assert!(switch.logged_in, "the agent is still logged in: {switch:?}");
    assert_eq!(switch_media(&switch, "chat").state(), AgentState::Ready);
    assert_eq!(switch_media(&switch, "email").state(), AgentState::Ready);

    let ack = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), full_logout(2, 2, true));
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert!(!switch_view(&stack, "a1").await.logged_in);
    stack.stop().await;
}

/// EF3 by a real outage: no channel is Ready, so step 3 has nothing to do and the first
/// deactivation cannot reach the switch: DEACTIVATION_FAILED with code UNAVAILABLE, nothing
/// changed, the agent still logged in with both media. Once the switch is back the same request
/// completes.
#[tokio::test]
async fn ef3_switch_unreachable_then_the_same_logout_completes() {
    let mut stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], false).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2, 0).await;

    stack.stop_interaction_server().await;
    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    let f = failure(&err, R::DeactivationFailed, Code::Unavailable);
    assert_eq!(
        f.metadata.get("media_type").map(String::as_str),
        Some("chat")
    );
    assert_eq!(desktop.get(&sid).await.unwrap(), session);

    stack.start_interaction_server().await;
    let switch = switch_view(&stack, "a1").await;
    assert!(switch.logged_in, "{switch:?}");
    assert_eq!(switch_media_types(&switch), ["chat", "email"]);

    let ack = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), full_logout(2, 0, true));
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert!(!switch_view(&stack, "a1").await.logged_in);
    stack.stop().await;
}
