//! Restarts, over real sockets: "session-service restarted mid-stream resumes without losing or
//! repeating an event; interaction-server restarted while session-service follows it: relaying
//! resumes by itself".
//!
//! The yardstick for "nothing lost, nothing repeated" is interaction-server's own log: the events it
//! addressed to the agent (read back with a Subscribe as that agent) must be exactly the
//! `relayed_from` of what the agent's `Connect` stream delivered, once each and in order; and
//! session-service's own sequences on the stream must be contiguous. Nothing sleeps: the tests wait on
//! streams (bounded by `PATIENCE`) and fence with a change of their own that must be the next event.

mod common;

use common::*;
use ixn_proto::auth::Role;
use ixn_proto::common::{AgentState, Reason};
use ixn_proto::error::Reason as R;
use ixn_proto::events::Event;
use ixn_proto::events::event::Body;
use ixn_proto::interaction::agent_service_client::AgentServiceClient;
use ixn_proto::interaction::{Agent, GetAgentRequest};
use ixn_proto::session::{
    Channel as SessionChannel, DeactivateChannelRequest, Session, SessionState, SetNotReadyRequest,
};
use tonic::Code;
use tonic::transport::Endpoint;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The agent as the switch (interaction-server's `AgentService`) knows it.
async fn at_switch(stack: &Stack, agent: &str) -> Agent {
    let token = stack.token(Role::Service, "s", "t1", None);
    let channel = Endpoint::from_shared(format!("http://{}", stack.ixn_addr))
        .unwrap()
        .connect_lazy();
    let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
    AgentServiceClient::with_interceptor(channel, bearer)
        .get_agent(GetAgentRequest {
            agent_id: agent.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next event, which must be there.
async fn next(bus: &mut Stream) -> Event {
    bus.next()
        .await
        .expect("the stream failed")
        .expect("the stream ended")
}

/// What a stream still delivers until it ends, with an error or OK.
async fn rest(bus: &mut Stream) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Ok(Some(e)) = bus.next().await {
        seen.push(e);
    }
    seen
}

fn interaction_of(e: &Event) -> Option<&str> {
    ixn_proto::event::interaction_id(body(e))
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

/// The session without what the mirror adds when it is read (the interactions on each channel).
fn durable(mut s: Session) -> Session {
    for c in &mut s.channel_group.as_mut().unwrap().channels {
        c.interaction_ids.clear();
    }
    s
}

/// Asserts that the events a Connect stream delivered are contiguous in session-service's log
/// (the agent is the only one logged in, so every event of the log is its own), and that the
/// relayed ones are exactly interaction-server's events addressed to the agent, each once, in order.
async fn assert_exactly_once(stack: &Stack, agent: &str, seen: &[Event]) {
    let sequences: Vec<u64> = seen.iter().map(|e| e.sequence).collect();
    let first = sequences[0];
    assert_eq!(
        sequences,
        (first..first + seen.len() as u64).collect::<Vec<_>>(),
        "a gap or a repeat in {:?}",
        kinds(seen)
    );
    let relayed: Vec<(u64, String)> = seen
        .iter()
        .filter_map(|e| e.relayed_from.as_ref())
        .map(|r| {
            assert_eq!(r.source, "interaction-server");
            (r.sequence, r.event_id.clone())
        })
        .collect();
    let last = relayed.last().expect("something was relayed").0;
    let mut originals = stack.ixn(Role::Agent, agent).subscribe(0).await;
    let mut expected = Vec::new();
    while expected.last().is_none_or(|(s, _)| *s < last) {
        let e = next(&mut originals).await;
        expected.push((e.sequence, e.event_id));
    }
    assert_eq!(relayed, expected);
}

// ---------------------------------------------------------------------------------------------
// session-service restarted
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_restart_of_session_service_loses_and_repeats_no_event() {
    let mut stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop
        .login(&["chat", "email", "voice"], true)
        .await
        .unwrap();
    let sid = session.session_id.clone();
    let email_break = SetNotReadyRequest {
        request_id: rid(),
        session_id: sid.clone(),
        media_type: "email".into(),
        reason: reason("break"),
    };
    let answered = desktop
        .client
        .set_not_ready(email_break.clone())
        .await
        .unwrap()
        .into_inner();
    desktop
        .client
        .deactivate_channel(DeactivateChannelRequest {
            request_id: rid(),
            session_id: sid.clone(),
            media_type: "voice".into(),
        })
        .await
        .unwrap();
    let mut bus = desktop.connect(&sid, 0).await;
    let mut seen = bus.until("ChannelDeactivated").await;
    assert_eq!(seen.len(), 7);
    let x1 = offer(&stack, "a1", "chat").await;
    seen.extend(bus.until("Invite").await);
    let before = desktop.get(&sid).await.unwrap();
    assert_eq!(
        channel(&before, "chat").interaction_ids,
        std::slice::from_ref(&x1)
    );

    stack.stop_session_service().await;
    // The stream ends with the service, having delivered everything before it.
    assert!(rest(&mut bus).await.is_empty());
    let last_before = seen.last().unwrap().sequence;
    let delivered_before = seen.len();

    // While session-service is down, interaction-server addresses two more events to a1.
    let x2 = offer(&stack, "a1", "chat").await;
    stack.ixn(Role::MediaServer, "ms1").stop(&x1).await;

    // Started again on the same data directory. (The harness gives a service started after
    // `stop_session_service` a new port, so the desktop is made anew for it.)
    stack.start_session_service().await;
    let mut desktop = stack.desktop("a1");
    // The session survives as it was: channels, states, reasons.
    let after = desktop.get(&sid).await.unwrap();
    assert_eq!(durable(after.clone()), durable(before.clone()));
    assert_eq!(after.state(), SessionState::Active);
    assert_eq!(channel(&after, "chat").state(), AgentState::Ready);
    assert_eq!(channel(&after, "email").state(), AgentState::NotReady);
    assert_eq!(code_of(&channel(&after, "email").reason), "break");
    assert!(!channel(&after, "voice").active);
    // The agent is still logged in, and a request made before the restart is still remembered.
    let err = desktop.login(&["chat"], false).await.unwrap_err();
    assert_eq!(reason_of(&err), R::AlreadyLoggedIn);
    let again = desktop
        .client
        .set_not_ready(email_break.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(durable(again), durable(answered));

    // Reconnecting after the last sequence seen: what was committed while down, relayed once.
    let mut bus = desktop.connect(&sid, last_before).await;
    let resumed = bus.until("Revoked").await;
    assert_eq!(kinds(&resumed), ["Invite", "Revoked"]);
    assert_eq!(interaction_of(&resumed[0]), Some(x2.as_str()));
    assert_eq!(interaction_of(&resumed[1]), Some(x1.as_str()));
    assert_eq!(resumed[0].sequence, last_before + 1);
    seen.extend(resumed);
    // And what comes after the restart.
    let x3 = offer(&stack, "a1", "chat").await;
    let invite = bus.until("Invite").await;
    assert_eq!(invite.len(), 1);
    assert_eq!(interaction_of(&invite[0]), Some(x3.as_str()));
    seen.extend(invite);
    assert_exactly_once(&stack, "a1", &seen).await;

    // The mirror followed: x1 is gone, x2 and x3 are held.
    let now = desktop.get(&sid).await.unwrap();
    let mut held = channel(&now, "chat").interaction_ids.clone();
    held.sort();
    let mut expected = vec![x2.clone(), x3.clone()];
    expected.sort();
    assert_eq!(held, expected);

    // Replays across the restart are the same events: from the start, and after the last sequence
    // seen before it — exactly the rest, then nothing but the fence.
    let mut replay = desktop.connect(&sid, 0).await;
    for e in &seen {
        assert_eq!(next(&mut replay).await, *e);
    }
    let mut resume = desktop.connect(&sid, last_before).await;
    for e in &seen[delivered_before..] {
        assert_eq!(next(&mut resume).await, *e);
    }
    fence(&mut desktop, &mut resume, &sid, "chat", "lunch").await;
    stack.stop().await;
}

#[tokio::test]
async fn a_desktop_reading_connect_resumes_on_the_same_address_after_a_restart() {
    let mut stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    let mut seen = bus.until("ChannelCreated").await;
    let x1 = offer(&stack, "a1", "chat").await;
    seen.extend(bus.until("Invite").await);

    stack.restart_session_service().await;
    assert!(rest(&mut bus).await.is_empty());
    let last = seen.last().unwrap().sequence;

    // The same desktop, the same address: it resumes after the last sequence it saw.
    let mut bus = desktop.connect(&sid, last).await;
    let x2 = offer(&stack, "a1", "chat").await;
    let invite = next(&mut bus).await;
    assert!(is(&invite, "Invite"));
    assert_eq!(interaction_of(&invite), Some(x2.as_str()));
    assert_eq!(invite.sequence, last + 1);
    seen.push(invite);
    let mut ms = stack.ixn(Role::MediaServer, "ms1");
    ms.stop(&x1).await;
    ms.stop(&x2).await;
    for x in [&x1, &x2] {
        let revoked = next(&mut bus).await;
        assert!(is(&revoked, "Revoked"));
        assert_eq!(interaction_of(&revoked), Some(x.as_str()));
        seen.push(revoked);
    }
    fence(&mut desktop, &mut bus, &sid, "chat", "break").await;
    assert_exactly_once(&stack, "a1", &seen).await;
    stack.stop().await;
}

#[tokio::test]
async fn events_relayed_while_session_service_restarts_arrive_exactly_once() {
    const OFFERS: usize = 30;
    let mut stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    let mut seen = bus.until("ChannelCreated").await;

    // interaction-server keeps inviting a1 and taking the invite back, whatever session-service
    // is doing.
    let (mut ms, mut router) = (
        stack.ixn(Role::MediaServer, "ms1"),
        stack.ixn(Role::Router, "r1"),
    );
    let producer = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..OFFERS {
            let id = ms.submit("q", "chat").await.interaction_id;
            router.pull("q", &id).await;
            router.deliver(&id, "a1").await.unwrap();
            ms.stop(&id).await;
            ids.push(id);
        }
        ids
    });

    let relayed = |seen: &[Event]| seen.iter().filter(|e| e.relayed_from.is_some()).count();
    for target in [6, 24] {
        while relayed(&seen) < target {
            seen.push(next(&mut bus).await);
        }
        stack.restart_session_service().await;
        seen.extend(rest(&mut bus).await);
        bus = desktop.connect(&sid, seen.last().unwrap().sequence).await;
    }
    let ids = producer.await.unwrap();
    while relayed(&seen) < 2 * OFFERS {
        seen.push(next(&mut bus).await);
    }
    fence(&mut desktop, &mut bus, &sid, "chat", "break").await;

    // Each interaction: its Invite, then its Revoked, once.
    let relayed: Vec<(&str, &str)> = seen
        .iter()
        .filter(|e| e.relayed_from.is_some())
        .map(|e| (kind_of(e), interaction_of(e).unwrap()))
        .collect();
    let expected: Vec<(&str, &str)> = ids
        .iter()
        .flat_map(|id| [("Invite", id.as_str()), ("Revoked", id.as_str())])
        .collect();
    assert_eq!(relayed, expected);
    assert_exactly_once(&stack, "a1", &seen).await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// interaction-server restarted
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn relaying_resumes_by_itself_after_interaction_server_restarts() {
    let mut stack = Stack::start().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    let mut seen = bus.until("ChannelCreated").await;
    let x1 = offer(&stack, "a1", "chat").await;
    seen.extend(bus.until("Invite").await);

    stack.stop_interaction_server().await;
    stack.start_interaction_server().await;

    // Events made after the restart reach the desktop without the test doing anything else.
    let x2 = offer(&stack, "a1", "chat").await;
    let invite = next(&mut bus).await;
    assert!(is(&invite, "Invite"), "{invite:?}");
    assert_eq!(interaction_of(&invite), Some(x2.as_str()));
    seen.push(invite);
    stack.ixn(Role::MediaServer, "ms1").stop(&x1).await;
    let revoked = next(&mut bus).await;
    assert!(is(&revoked, "Revoked"), "{revoked:?}");
    assert_eq!(interaction_of(&revoked), Some(x1.as_str()));
    seen.push(revoked);
    // A second restart, for good measure: the relay's cursor is where it was.
    stack.stop_interaction_server().await;
    stack.start_interaction_server().await;
    stack.ixn(Role::MediaServer, "ms1").stop(&x2).await;
    let revoked = next(&mut bus).await;
    assert_eq!(interaction_of(&revoked), Some(x2.as_str()));
    seen.push(revoked);

    fence(&mut desktop, &mut bus, &sid, "chat", "break").await;
    assert_exactly_once(&stack, "a1", &seen).await;
    stack.stop().await;
}

#[tokio::test]
async fn start_up_order_does_not_matter() {
    let mut stack = Stack::start().await;
    stack.stop_interaction_server().await;
    stack.restart_session_service().await;

    // session-service is up, interaction-server is not: a login cannot reach the switch, and
    // creates nothing.
    let mut desktop = stack.desktop("a1");
    let err = desktop.login(&["chat"], true).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    stack.start_interaction_server().await;
    let session = desktop.login(&["chat"], true).await.unwrap();
    assert_eq!(session.created_sequence, 1);
    assert!(at_switch(&stack, "a1").await.logged_in);
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    let mut seen = bus.until("ChannelCreated").await;
    let x = offer(&stack, "a1", "chat").await;
    let invite = next(&mut bus).await;
    assert!(is(&invite, "Invite"), "{invite:?}");
    assert_eq!(interaction_of(&invite), Some(x.as_str()));
    seen.push(invite);
    fence(&mut desktop, &mut bus, &sid, "chat", "break").await;
    assert_exactly_once(&stack, "a1", &seen).await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The mirror
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_mirror_survives_a_restart_of_session_service() {
    let mut stack = Stack::start().await;
    let mut a1 = stack.desktop("a1");
    let s1 = a1.login(&["chat"], true).await.unwrap();
    let sid = s1.session_id.clone();
    let mut bus1 = a1.connect(&sid, 0).await;
    let mut a2 = stack.desktop("a2");
    let s2 = a2.login(&["chat"], true).await.unwrap();
    let mut bus2 = a2.connect(&s2.session_id, 0).await;

    let x = offer(&stack, "a1", "chat").await;
    bus1.until("Invite").await;
    // The holding comes from the AgentInvited after the Invite; an Invite relayed to a2 afterwards
    // proves the relay (and the mirror) went past it before the restart.
    let y = offer(&stack, "a2", "chat").await;
    bus2.until("Invite").await;
    let before = a1.get(&sid).await.unwrap();
    assert_eq!(
        channel(&before, "chat").interaction_ids,
        std::slice::from_ref(&x)
    );
    drop((bus1, bus2));

    stack.restart_session_service().await;

    let err = a1.logout(&sid, None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason_of(&err), R::OngoingInteraction);
    let failure = ixn_proto::error::Failure::from_status(&err).unwrap();
    assert_eq!(failure.metadata.get("interaction_ids"), Some(&x));
    assert_eq!(failure.metadata.get("session_id"), Some(&sid));
    // Refused at step 1 (EF1), from the mirror: nothing changed, here or at the switch.
    let now = a1.get(&sid).await.unwrap();
    assert_eq!(now, before);
    assert_eq!(now.state(), SessionState::Active);
    assert_eq!(channel(&now, "chat").state(), AgentState::Ready);
    assert!(channel(&now, "chat").active);
    let agent = at_switch(&stack, "a1").await;
    assert!(agent.logged_in);
    assert_eq!(agent.media[0].state(), AgentState::Ready);

    // Once the interaction is gone, the mirror (kept up after the restart) lets the logout through.
    let mut bus1 = a1.connect(&sid, 0).await;
    stack.ixn(Role::MediaServer, "ms1").stop(&x).await;
    let revoked = bus1.until("Revoked").await.pop().unwrap();
    assert_eq!(interaction_of(&revoked), Some(x.as_str()));
    assert!(
        channel(&a1.get(&sid).await.unwrap(), "chat")
            .interaction_ids
            .is_empty()
    );
    let ack = a1.logout(&sid, None).await.unwrap();
    let rest = bus1.drain_to_end().await;
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    assert!(matches!(
        body(rest.last().unwrap()),
        Body::SessionDisposed(_)
    ));
    // a2 still holds y, and is refused too.
    let err = a2.logout(&s2.session_id, None).await.unwrap_err();
    assert_eq!(reason_of(&err), R::OngoingInteraction);
    let failure = ixn_proto::error::Failure::from_status(&err).unwrap();
    assert_eq!(failure.metadata.get("interaction_ids"), Some(&y));
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The connection-lost grace across a restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn after_a_restart_the_grace_starts_again_for_every_session() {
    let mut stack = Stack::start().await;
    let mut a1 = stack.desktop("a1");
    let s1 = a1.login(&["chat"], true).await.unwrap();
    let mut bus1 = a1.connect(&s1.session_id, 0).await;
    let last1 = bus1.until("ChannelCreated").await.pop().unwrap().sequence;
    let mut a2 = stack.desktop("a2");
    let s2 = a2.login(&["chat"], true).await.unwrap();
    let mut bus2 = a2.connect(&s2.session_id, 0).await;
    let last2 = bus2.until("ChannelCreated").await.pop().unwrap().sequence;

    // A shorter grace this time: it is configurable.
    stack.grace = std::time::Duration::from_secs(5);
    stack.restart_session_service().await;
    assert!(rest(&mut bus1).await.is_empty());
    assert!(rest(&mut bus2).await.is_empty());
    // Once it answers, the restarted service has started the grace of each live session; a2's
    // desktop comes back within it, a1's does not.
    a1.get(&s1.session_id).await.unwrap();
    let mut bus2 = a2.connect(&s2.session_id, last2).await;
    // a1's own events, read without a Connect stream (which would count as its desktop back).
    let mut a1_log = a1.log_after(last1).await;
    stack.clock.advance(std::time::Duration::from_secs(6));
    let lost_seen = next(&mut a1_log).await;

    // The desktop comes back after the grace: its first event is the change the grace made.
    let mut bus1 = a1.connect(&s1.session_id, last1).await;
    let lost = next(&mut bus1).await;
    assert_eq!(lost, lost_seen);
    match body(&lost) {
        Body::AgentStateChanged(c) => {
            assert_eq!(c.media_type, "chat");
            assert_eq!(c.state(), AgentState::NotReady);
        }
        other => panic!("expected AgentStateChanged, got {other:?}"),
    }
    assert!(matches!(
        lost.actor.as_ref().and_then(|p| p.kind.as_ref()),
        Some(ixn_proto::common::party::Kind::System(s)) if s.what == "connection-lost"
    ));
    let s = a1.get(&s1.session_id).await.unwrap();
    assert_eq!(s.state(), SessionState::Active);
    assert_eq!(channel(&s, "chat").state(), AgentState::NotReady);
    assert_eq!(
        at_switch(&stack, "a1").await.media[0].state(),
        AgentState::NotReady
    );

    // a2 kept its channel Ready: the next event of a2 is its own change.
    assert_eq!(
        channel(&a2.get(&s2.session_id).await.unwrap(), "chat").state(),
        AgentState::Ready
    );
    fence(&mut a2, &mut bus2, &s2.session_id, "chat", "break").await;
    stack.stop().await;
}
