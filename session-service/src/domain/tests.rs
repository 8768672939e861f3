//! Unit tests of the session domain: the logout plan (EF1, AF1, reasons), channel changes and the
//! mirror of what agents hold.

use super::*;
use ixn_proto::common::AgentParty;
use ixn_proto::events::{
    AgentInvited, InteractionSubmitted, InviteEnded, PartyAdded, ProcessingStopped,
};
use ixn_proto::interaction::Interaction;

fn reason(code: &str) -> Reason {
    Reason {
        code: code.into(),
        ..Default::default()
    }
}

fn session(required: bool) -> Session {
    Session {
        session_id: "s1".into(),
        tenant: "t1".into(),
        agent_id: "a1".into(),
        place_id: "p1".into(),
        state: SessionState::Active as i32,
        channel_group: Some(ChannelGroup {
            channel_group_id: "g1".into(),
            channels: vec![Channel {
                channel_id: "c1".into(),
                media_type: "chat".into(),
                active: true,
                state: AgentState::Ready as i32,
                reason: None,
                interaction_ids: vec![],
            }],
        }),
        logout_reasons: vec![reason("end-of-shift")],
        not_ready_reasons: vec![reason("break")],
        logout_reason_required: required,
        default_not_ready_reason: Some(reason("break")),
        channel_deactivation_supported: true,
        ..Default::default()
    }
}

#[test]
fn ef1_comes_before_af1_and_names_the_interactions() {
    let held = BTreeMap::from([("i1".to_owned(), "chat".to_owned())]);
    let e = plan_logout(&session(true), &held, None).unwrap_err();
    assert_eq!(e.reason, R::OngoingInteraction);
    assert_eq!(e.metadata["interaction_ids"], "i1");
}

#[test]
fn af1_offers_the_logout_reasons_and_a_listed_reason_passes() {
    let e = plan_logout(&session(true), &BTreeMap::new(), None).unwrap_err();
    assert_eq!(e.reason, R::LogoutReasonRequired);
    assert_eq!(e.metadata["logout_reasons"], "end-of-shift");
    let plan = plan_logout(
        &session(true),
        &BTreeMap::new(),
        Some(&reason("end-of-shift")),
    )
    .unwrap();
    assert_eq!(plan.not_ready_reason.code, "end-of-shift");
    let e = plan_logout(&session(true), &BTreeMap::new(), Some(&reason("nope"))).unwrap_err();
    assert_eq!(e.reason, R::ReasonNotAllowed);
}

#[test]
fn without_a_reason_step_three_uses_the_default_not_ready_reason() {
    let plan = plan_logout(&session(false), &BTreeMap::new(), None).unwrap();
    assert_eq!(plan.reason, None);
    assert_eq!(plan.not_ready_reason.code, "break");
}

#[test]
fn free_text_needs_the_platform_to_allow_it() {
    let mut s = session(false);
    let text = Reason {
        description: "going home".into(),
        ..Default::default()
    };
    assert_eq!(
        not_ready_reason(&s, Some(&text)).unwrap_err().reason,
        R::ReasonNotAllowed
    );
    s.free_text_reasons_allowed = true;
    assert_eq!(not_ready_reason(&s, Some(&text)).unwrap(), text);
}

#[test]
fn disposal_emits_channels_then_group_then_session() {
    let mut s = session(false);
    let actor = agent_of(&s);
    let events = disposed(&mut s, None, &actor);
    let kinds: Vec<_> = events
        .iter()
        .map(|e| ixn_proto::event::kind(&e.body))
        .collect();
    assert_eq!(
        kinds,
        ["ChannelDisposed", "ChannelGroupDisposed", "SessionDisposed"]
    );
    assert_eq!(s.state(), SessionState::Disposed);
    assert!(events.iter().all(|e| e.to == vec![agent_of(&s)]));
}

#[test]
fn a_state_change_updates_the_channel_and_says_so() {
    let mut s = session(false);
    let actor = agent_of(&s);
    let e = state_changed(&mut s, "chat", false, Some(reason("break")), &actor);
    assert!(!is_ready(&channels(&s)[0]));
    assert!(matches!(e.body, Body::AgentStateChanged(ref b) if b.channel_id == "c1"));
    assert_eq!(channel(&s, "voice").unwrap_err().reason, R::ChannelNotFound);
}

fn event(body: Body, to: Vec<Party>) -> Event {
    Event {
        tenant: "t1".into(),
        to,
        body: Some(body),
        ..Default::default()
    }
}

#[test]
fn the_mirror_follows_invites_ownership_and_stops() {
    let mut m = Mirror::default();
    let a1 = AgentParty {
        agent_id: "a1".into(),
        place_id: "p".into(),
    };
    let key = agent_key("t1", "a1");
    let apply = |m: &mut Mirror, e: Event| {
        for c in Mirror::changes(&e) {
            m.apply(&c);
        }
    };
    apply(
        &mut m,
        event(
            Body::InteractionSubmitted(InteractionSubmitted {
                interaction: Some(Interaction {
                    interaction_id: "i1".into(),
                    media_type: "chat".into(),
                    ..Default::default()
                }),
            }),
            vec![],
        ),
    );
    apply(
        &mut m,
        event(
            Body::AgentInvited(AgentInvited {
                interaction_id: "i1".into(),
                agent: Some(a1.clone()),
                ..Default::default()
            }),
            vec![],
        ),
    );
    assert_eq!(
        m.held_by(&key),
        BTreeMap::from([("i1".into(), "chat".into())])
    );
    // An accepted invite stays held (PartyAdded follows); a rejected one is released.
    apply(
        &mut m,
        event(
            Body::InviteEnded(InviteEnded {
                interaction_id: "i1".into(),
                agent: Some(a1.clone()),
                outcome: InviteOutcome::Accepted as i32,
                ..Default::default()
            }),
            vec![],
        ),
    );
    apply(
        &mut m,
        event(
            Body::PartyAdded(PartyAdded {
                interaction_id: "i1".into(),
                party: Some(a1.clone().into()),
            }),
            vec![],
        ),
    );
    assert_eq!(m.held_by(&key).len(), 1);
    apply(
        &mut m,
        event(
            Body::ProcessingStopped(ProcessingStopped {
                interaction_id: "i1".into(),
                ..Default::default()
            }),
            vec![],
        ),
    );
    assert!(m.held_by(&key).is_empty());
    assert_eq!(m.rows(), (vec![], vec![]));
}
