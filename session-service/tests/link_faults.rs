//! Network faults between session-service and interaction-server, made by a TCP proxy on the link
//! between them (`ixn_proto::testing::Link`): cut, stalled and slowed mid-stream. Relaying resumes
//! from where it was, missing and doubling nothing; a logout while the switch cannot be reached
//! fails as the Logout's EF2 and EF3 say, changing nothing it did not say, and the same request
//! succeeds once the link is back.

mod common;

use common::*;
use ixn_proto::error::Reason as R;
use ixn_proto::events::Event;
use std::collections::HashSet;
use std::time::Duration;
use tonic::Code;

fn link(stack: &Stack) -> &ixn_proto::testing::Link {
    stack.link.as_ref().expect("a linked stack")
}

/// The interaction an Invite is for.
fn invited(e: &Event) -> String {
    match body(e) {
        ixn_proto::events::event::Body::Invite(b) => {
            b.interaction.as_ref().unwrap().interaction_id.clone()
        }
        _ => panic!("expected an Invite, got {}", kind_of(e)),
    }
}

/// Reads the desktop's bus up to the Invite for `id`: it must be the only relayed event there, and
/// come once.
async fn invite_for(bus: &mut Stream, id: &str, relayed: &mut HashSet<u64>) {
    let invite = bus.until("Invite").await.pop().unwrap();
    assert_eq!(invited(&invite), id);
    let from = invite.relayed_from.as_ref().expect("a relayed event");
    assert!(
        relayed.insert(from.sequence),
        "interaction-server's event {} was relayed twice",
        from.sequence
    );
}

#[tokio::test]
async fn relaying_resumes_after_a_cut_and_a_stall_missing_and_doubling_nothing() {
    let stack = Stack::start_linked().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let mut bus = desktop.connect(&session.session_id, 0).await;
    let mut relayed = HashSet::new();

    let first = offer(&stack, "a1", "chat").await;
    invite_for(&mut bus, &first, &mut relayed).await;

    // Cut: the relay's stream breaks; what interaction-server commits meanwhile waits in its log.
    link(&stack).cut();
    let during_cut = offer(&stack, "a1", "chat").await;
    link(&stack).restore();
    invite_for(&mut bus, &during_cut, &mut relayed).await;

    // Stall: the connection stays open but carries nothing; then it flows again.
    link(&stack).stall();
    let during_stall = offer(&stack, "a1", "chat").await;
    link(&stack).restore();
    invite_for(&mut bus, &during_stall, &mut relayed).await;

    // Slow: every chunk late, still in order and once.
    link(&stack).set(ixn_proto::testing::LinkMode::Slow(Duration::from_millis(
        20,
    )));
    let while_slow = offer(&stack, "a1", "chat").await;
    invite_for(&mut bus, &while_slow, &mut relayed).await;
    link(&stack).restore();

    // Nothing else came in between: the next event is a fence the desktop causes now.
    fence(&mut desktop, &mut bus, &session.session_id, "chat", "break").await;
    let held = desktop.get(&session.session_id).await.unwrap();
    let mut holding = channel(&held, "chat").interaction_ids.clone();
    holding.sort();
    let mut offered = vec![first, during_cut, during_stall, while_slow];
    offered.sort();
    assert_eq!(holding, offered, "the mirror of what a1 holds");
    stack.stop().await;
}

#[tokio::test]
async fn a_logout_while_the_link_is_cut_fails_as_ef2_and_succeeds_once_it_is_back() {
    let stack = Stack::start_linked().await;
    let mut desktop = stack.desktop("a1");
    let session = desktop.login(&["chat", "email"], true).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    bus.until("ChannelCreated").await;
    bus.until("ChannelCreated").await;
    let switch_before = switch_view(&stack, "a1").await;

    link(&stack).cut();
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
    assert_eq!(desktop.get(&sid).await.unwrap(), session, "nothing changed");
    assert_eq!(switch_view(&stack, "a1").await, switch_before);

    link(&stack).restore();
    desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(
        kinds(&rest),
        logout_kinds(2, 2),
        "the failure emitted nothing, the retry everything once"
    );
    assert!(!switch_view(&stack, "a1").await.logged_in);
    stack.stop().await;
}

#[tokio::test]
async fn a_logout_of_not_ready_channels_while_the_link_is_cut_fails_as_ef3() {
    let stack = Stack::start_linked().await;
    let mut desktop = stack.desktop("a1");
    // Not Ready from the start: the logout's first switch call is the deactivation.
    let session = desktop.login(&["chat"], false).await.unwrap();
    let sid = session.session_id.clone();
    let mut bus = desktop.connect(&sid, 0).await;
    bus.until("ChannelCreated").await;

    link(&stack).cut();
    let request_id = rid();
    let err = desktop
        .logout_as(&request_id, &sid, None)
        .await
        .unwrap_err();
    failure(&err, R::DeactivationFailed, Code::Unavailable);
    assert_eq!(desktop.get(&sid).await.unwrap(), session, "nothing changed");

    link(&stack).restore();
    desktop.logout_as(&request_id, &sid, None).await.unwrap();
    let rest = bus.drain_to_end().await;
    assert_eq!(kinds(&rest), logout_kinds(0, 1));
    stack.stop().await;
}
