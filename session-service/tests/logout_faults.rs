//! The Logout use case's failures at the switch, made deterministic with the `failpoints` feature
//! (this target is built only with it: `required-features` in Cargo.toml): EF2 (a Not Ready fails
//! part-way), EF3 (a deactivation fails part-way) and step 5 (the switch refuses the logout, or
//! cannot be reached). For each: the error's reason and code, the seed's post-conditions (what
//! earlier steps did stays done, the agent stays logged in, nothing is disposed), the exact events
//! on `Connect`, and a retry with the same `request_id` that carries on from where it stopped.
//!
//! Fault points are process-global, so every test holds a `fail::FailScenario` (which serializes
//! them) from start to end. Nothing sleeps: waits are on streams, bounded by the harness's
//! `PATIENCE`, and "nothing more was emitted" is proven by the retry's first event (a fence).

#[macro_use]
mod common;

use common::*;
use ixn_proto::common::AgentState;
use ixn_proto::error::Reason as R;
use ixn_proto::events::Event;
use ixn_proto::events::event::Body;
use ixn_proto::session::SessionState;
use tonic::Code;

/// Reads the creation events of a session with `n` channels.
async fn read_creation(bus: &mut Stream, n: usize) {
    let mut seen = Vec::new();
    for _ in 0..2 + n {
        seen.push(bus.next().await.unwrap().expect("the stream is open"));
    }
    let mut expected = vec!["SessionCreated", "ChannelGroupCreated"];
    expected.extend(std::iter::repeat_n("ChannelCreated", n));
    assert_eq!(kinds(&seen), expected);
}

/// The next `n` events, the stream still open.
async fn read(bus: &mut Stream, n: usize) -> Vec<Event> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(bus.next().await.unwrap().expect("the stream is open"));
    }
    seen
}

/// The media of a run of AgentStateChanged / ChannelDeactivated events.
fn media_of(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .map(|e| match body(e) {
            Body::AgentStateChanged(b) => b.media_type.as_str(),
            Body::ChannelDeactivated(b) => b.media_type.as_str(),
            other => panic!("no media on {}", ixn_proto::event::kind(other)),
        })
        .collect()
}

/// The tail of a completed logout of `n` channels: each disposed, then the group and the session.
fn disposal(n: usize) -> Vec<&'static str> {
    let mut out = vec!["ChannelDisposed"; n];
    out.push("ChannelGroupDisposed");
    out.push("SessionDisposed");
    out
}

// ---------------------------------------------------------------------------------------------
// EF2: Not Ready failure
// ---------------------------------------------------------------------------------------------

/// Three Ready channels; the switch refuses the second Not Ready. NOT_READY_FAILED with code
/// ABORTED. Post-conditions: the first channel stays Not Ready (session and switch agree), the
/// other two are still Ready, the agent is still logged in, nothing was deactivated or disposed,
/// and `Connect` showed exactly one AgentStateChanged. The retry with the same request_id carries
/// on: only the remaining two channels change state, then the flow completes.
#[tokio::test]
async fn ef2_a_refused_not_ready_stops_the_logout_and_the_retry_carries_on() {
    let scenario = fail::FailScenario::setup();
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop
        .login(&["voice", "chat", "email"], true)
        .await
        .unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 3).await;

    fail::cfg("switch-not-ready", "1*off->return").unwrap();
    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    let f = failure(&err, R::NotReadyFailed, Code::Aborted);
    assert_eq!(
        f.metadata.get("media_type").map(String::as_str),
        Some("chat")
    );
    assert_eq!(f.metadata.get("session_id"), Some(&sid));

    // What step 3 did before the failure stays done; nothing else happened.
    let first = read(&mut bus, 1).await;
    let changed = take!(&first[0], AgentStateChanged);
    assert_eq!(changed.media_type, "voice");
    assert_eq!(changed.state(), AgentState::NotReady);
    let after = desktop.get(&sid).await.unwrap();
    assert_eq!(after.state(), SessionState::LoggingOut);
    let voice = channel(&after, "voice");
    assert_eq!(voice.state(), AgentState::NotReady);
    assert_eq!(reason_code(voice.reason.as_ref()), Some(DEFAULT_NOT_READY));
    for media in ["chat", "email"] {
        assert_eq!(channel(&after, media).state(), AgentState::Ready, "{media}");
    }
    for media in ["voice", "chat", "email"] {
        assert!(channel(&after, media).active, "{media} is still active");
    }
    let switch = switch_view(&stack, "a1").await;
    assert!(switch.logged_in, "the agent is still logged in: {switch:?}");
    let voice = switch_media(&switch, "voice");
    assert_eq!(voice.state(), AgentState::NotReady);
    assert_eq!(reason_code(voice.reason.as_ref()), Some(DEFAULT_NOT_READY));
    assert_eq!(switch_media(&switch, "chat").state(), AgentState::Ready);
    assert_eq!(switch_media(&switch, "email").state(), AgentState::Ready);

    // The retry carries on from the failed channel.
    fail::remove("switch-not-ready");
    let ack = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    let mut expected = vec!["AgentStateChanged", "AgentStateChanged"];
    expected.extend(["ChannelDeactivated"; 3]);
    expected.extend(disposal(3));
    assert_eq!(kinds(&rest), expected);
    assert_eq!(media_of(&rest[..2]), ["chat", "email"]);
    assert_eq!(media_of(&rest[2..5]), ["voice", "chat", "email"]);
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert_eq!(
        desktop.get(&sid).await.unwrap().state(),
        SessionState::Disposed
    );
    assert!(!switch_view(&stack, "a1").await.logged_in);
    stack.stop().await;
    scenario.teardown();
}

/// The switch cannot be reached for the first Not Ready: NOT_READY_FAILED with code UNAVAILABLE;
/// nothing was done, so nothing changed. Once reachable, the same request completes.
#[tokio::test]
async fn ef2_an_unreachable_switch_answers_unavailable() {
    let scenario = fail::FailScenario::setup();
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2).await;
    let switch_before = switch_view(&stack, "a1").await;

    fail::cfg("switch-not-ready", "return(unreachable)").unwrap();
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
    assert_eq!(desktop.get(&sid).await.unwrap(), session);
    assert_eq!(switch_view(&stack, "a1").await, switch_before);

    fail::remove("switch-not-ready");
    desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    let mut expected = vec!["AgentStateChanged"; 2];
    expected.extend(["ChannelDeactivated"; 2]);
    expected.extend(disposal(2));
    assert_eq!(kinds(&rest), expected, "the failure emitted nothing");
    stack.stop().await;
    scenario.teardown();
}

// ---------------------------------------------------------------------------------------------
// EF3: Deactivation failure
// ---------------------------------------------------------------------------------------------

/// Two Ready channels; the switch refuses the second deactivation. Step 3 completed (both Not
/// Ready), the first channel is deactivated and stays so (session and switch agree), the second is
/// still active, the agent still logged in: DEACTIVATION_FAILED with code ABORTED. The retry
/// deactivates only the second channel and completes.
#[tokio::test]
async fn ef3_a_refused_deactivation_stops_the_logout_and_the_retry_carries_on() {
    let scenario = fail::FailScenario::setup();
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2).await;

    fail::cfg("switch-deactivate", "1*off->return").unwrap();
    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    let f = failure(&err, R::DeactivationFailed, Code::Aborted);
    assert_eq!(
        f.metadata.get("media_type").map(String::as_str),
        Some("email")
    );

    let done = read(&mut bus, 3).await;
    assert_eq!(
        kinds(&done),
        [
            "AgentStateChanged",
            "AgentStateChanged",
            "ChannelDeactivated"
        ]
    );
    assert_eq!(media_of(&done), ["chat", "email", "chat"]);
    let after = desktop.get(&sid).await.unwrap();
    assert_eq!(after.state(), SessionState::LoggingOut);
    assert!(!channel(&after, "chat").active, "chat stays deactivated");
    assert!(channel(&after, "email").active, "email is still active");
    for media in ["chat", "email"] {
        assert_eq!(channel(&after, media).state(), AgentState::NotReady);
    }
    let switch = switch_view(&stack, "a1").await;
    assert!(switch.logged_in, "the agent is still logged in: {switch:?}");
    assert_eq!(switch_media_types(&switch), ["email"], "{switch:?}");
    assert_eq!(switch_media(&switch, "email").state(), AgentState::NotReady);

    fail::remove("switch-deactivate");
    let ack = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    let mut expected = vec!["ChannelDeactivated"];
    expected.extend(disposal(2));
    assert_eq!(kinds(&rest), expected);
    assert_eq!(media_of(&rest[..1]), ["email"]);
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert!(!switch_view(&stack, "a1").await.logged_in);
    stack.stop().await;
    scenario.teardown();
}

/// The switch cannot be reached for the first deactivation: DEACTIVATION_FAILED with code
/// UNAVAILABLE, after step 3 made the Ready channel Not Ready (which stays done).
#[tokio::test]
async fn ef3_an_unreachable_switch_answers_unavailable() {
    let scenario = fail::FailScenario::setup();
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 1).await;

    fail::cfg("switch-deactivate", "return(unreachable)").unwrap();
    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    failure(&err, R::DeactivationFailed, Code::Unavailable);
    let after = desktop.get(&sid).await.unwrap();
    assert_eq!(channel(&after, "chat").state(), AgentState::NotReady);
    assert!(channel(&after, "chat").active);
    let switch = switch_view(&stack, "a1").await;
    assert!(switch.logged_in);
    assert_eq!(switch_media(&switch, "chat").state(), AgentState::NotReady);

    fail::remove("switch-deactivate");
    desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    let mut expected = vec!["AgentStateChanged", "ChannelDeactivated"];
    expected.extend(disposal(1));
    assert_eq!(kinds(&rest), expected);
    stack.stop().await;
    scenario.teardown();
}

// ---------------------------------------------------------------------------------------------
// Step 5: the switch logout
// ---------------------------------------------------------------------------------------------

/// Steps 3 and 4 complete; then the switch refuses the logout with ONGOING_INTERACTION (an
/// interaction arrived after step 1): the answer is ONGOING_INTERACTION, nothing is disposed, and
/// what steps 3–4 did stays done. A second try finds the switch unreachable: SWITCH_LOGOUT_FAILED
/// with code UNAVAILABLE, nothing changes. The third try, same request_id, completes with only the
/// disposal left to do.
#[tokio::test]
async fn step5_a_refused_or_unreachable_switch_logout_disposes_of_nothing() {
    let scenario = fail::FailScenario::setup();
    let stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2).await;

    fail::cfg("switch-logout", "return(ongoing)").unwrap();
    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    let f = failure(&err, R::OngoingInteraction, Code::FailedPrecondition);
    assert_eq!(
        f.metadata.get("interaction_ids").map(String::as_str),
        Some("injected")
    );
    assert_eq!(f.metadata.get("session_id"), Some(&sid));

    let done = read(&mut bus, 4).await;
    assert_eq!(
        kinds(&done),
        [
            "AgentStateChanged",
            "AgentStateChanged",
            "ChannelDeactivated",
            "ChannelDeactivated"
        ]
    );
    assert_eq!(media_of(&done), ["chat", "email", "chat", "email"]);
    let stopped = desktop.get(&sid).await.unwrap();
    assert_eq!(stopped.state(), SessionState::LoggingOut, "not disposed");
    for media in ["chat", "email"] {
        let c = channel(&stopped, media);
        assert_eq!(c.state(), AgentState::NotReady, "{media}");
        assert!(!c.active, "{media} stays deactivated");
    }
    let switch = switch_view(&stack, "a1").await;
    assert!(switch.logged_in, "{switch:?}");
    assert!(switch.media.is_empty(), "{switch:?}");

    fail::cfg("switch-logout", "return(unreachable)").unwrap();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    let f = failure(&err, R::SwitchLogoutFailed, Code::Unavailable);
    assert_eq!(f.metadata.get("session_id"), Some(&sid));
    assert_eq!(desktop.get(&sid).await.unwrap(), stopped);
    assert_eq!(switch_view(&stack, "a1").await, switch);

    fail::remove("switch-logout");
    let ack = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), disposal(2), "the failures emitted nothing");
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert_eq!(
        desktop.get(&sid).await.unwrap().state(),
        SessionState::Disposed
    );
    assert!(!switch_view(&stack, "a1").await.logged_in);
    stack.stop().await;
    scenario.teardown();
}

/// What a Logout stopped at EF2 did is durable: after session-service restarts, the session still
/// reads LOGGING_OUT with the first channel Not Ready, a `Connect` resumed after the last seen
/// event shows nothing new, and the retry with the same request_id carries on from there.
#[tokio::test]
async fn ef2_progress_survives_a_restart_and_the_retry_carries_on() {
    let scenario = fail::FailScenario::setup();
    let mut stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    read_creation(&mut bus, 2).await;

    fail::cfg("switch-not-ready", "1*off->return").unwrap();
    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    failure(&err, R::NotReadyFailed, Code::Aborted);
    let first = read(&mut bus, 1).await;
    assert_eq!(media_of(&first), ["chat"]);
    let stopped = desktop.get(&sid).await.unwrap();
    assert_eq!(stopped.state(), SessionState::LoggingOut);
    fail::remove("switch-not-ready");
    drop(bus);

    stack.restart_session_service().await;
    let mut desktop = stack.desktop("a1");
    assert_eq!(desktop.get(&sid).await.unwrap(), stopped);
    let mut bus = desktop.connect(&sid, first[0].sequence).await;
    let ack = desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    let mut expected = vec!["AgentStateChanged"];
    expected.extend(["ChannelDeactivated"; 2]);
    expected.extend(disposal(2));
    assert_eq!(kinds(&rest), expected);
    assert_eq!(media_of(&rest[..1]), ["email"]);
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert!(!switch_view(&stack, "a1").await.logged_in);
    stack.stop().await;
    scenario.teardown();
}
