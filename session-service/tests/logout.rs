//! The Logout use case over real sockets, both services running.

mod common;

use common::*;
use ixn_proto::session::SessionState;

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
    assert_eq!(
        kinds(&rest),
        [
            "AgentStateChanged",
            "AgentStateChanged",
            "ChannelDeactivated",
            "ChannelDeactivated",
            "ChannelDisposed",
            "ChannelDisposed",
            "ChannelGroupDisposed",
            "SessionDisposed",
        ]
    );
    assert_eq!(rest.last().unwrap().sequence, ack.sequence);
    let after = desktop.get(&session.session_id).await.unwrap();
    assert_eq!(after.state(), SessionState::Disposed);
    stack.stop().await;
}
