//! Both services on mutual TLS, with certificates made by the test: desktops reach session-service,
//! and session-service reaches interaction-server (the switch calls and the relayed event stream),
//! each presenting a certificate the deployment's CA signed. Without its certificate,
//! session-service cannot reach interaction-server, and a login fails changing nothing.

mod common;

use common::*;
use ixn_proto::common::AgentState;
use ixn_proto::events::event::Body;
use tonic::Code;

#[tokio::test]
async fn the_whole_stack_works_on_mutual_tls() {
    let stack = Stack::start_tls(StackTls::new(true)).await;
    let mut desktop = stack.desktop("a1");
    // Login reads the platform from interaction-server and logs in at its switch.
    let session = desktop.login(&["chat"], true).await.unwrap();
    let at_switch = switch_view(&stack, "a1").await;
    assert_eq!(switch_media_types(&at_switch), ["chat"]);
    assert_eq!(switch_media(&at_switch, "chat").state(), AgentState::Ready);

    // interaction-server's events reach the desktop through session-service's relay.
    let mut bus = desktop.connect(&session.session_id, 0).await;
    let offered = offer(&stack, "a1", "chat").await;
    let invite = bus.until("Invite").await.pop().unwrap();
    let Body::Invite(invite) = body(&invite) else {
        unreachable!()
    };
    assert_eq!(invite.interaction.as_ref().unwrap().interaction_id, offered);
    stack.stop().await;
}

#[tokio::test]
async fn without_its_certificate_session_service_cannot_reach_interaction_server() {
    let stack = Stack::start_tls(StackTls::new(false)).await;
    let mut desktop = stack.desktop("a1");
    let refused = desktop.login(&["chat"], true).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Nothing reached the switch, and no session was made.
    let at_switch = switch_view(&stack, "a1").await;
    assert!(switch_media_types(&at_switch).is_empty(), "{at_switch:?}");
    // session-service's log is empty: even its first sequence is beyond the head.
    let mut admin = stack.session_admin();
    let beyond = admin
        .events
        .subscribe(ixn_proto::events::SubscribeRequest {
            after_sequence: 1,
            from_head: false,
            filter: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(&beyond),
        ixn_proto::error::Reason::SequenceOutOfRange
    );
    stack.stop().await;
}
