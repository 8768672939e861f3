//! Several replicas of session-service on one PostgreSQL schema, with one interaction-server: a
//! session logged in through one replica is changed and logged out through another; logins and
//! changes racing through both replicas give one session and lose no change; and interaction-server's
//! events are relayed exactly once, by whichever replica holds the relay's role, also when it goes
//! away. Skipped (and says so) without `IXN_TEST_DATABASE_URL`.

#[cfg(postgres_tests)]
#[macro_use]
mod common;

#[cfg(postgres_tests)]
mod replicas {
    use super::common::*;
    use interaction_server::domain::PlatformConfig;
    use ixn_proto::auth::Role;
    use ixn_proto::common::{AgentState, Reason};
    use ixn_proto::error::Reason as R;
    use ixn_proto::events::Event;
    use ixn_proto::events::event::Body;
    use ixn_proto::session::{SessionState, SetNotReadyRequest};

    /// Where each relayed event came from: interaction-server's sequence and event id.
    fn relayed(events: &[Event]) -> Vec<(u64, String)> {
        events
            .iter()
            .filter_map(|e| e.relayed_from.as_ref())
            .map(|r| (r.sequence, r.event_id.clone()))
            .collect()
    }

    #[tokio::test]
    async fn a_session_logged_in_through_one_replica_is_changed_and_logged_out_through_another() {
        let stack = Stack::start().await;
        let b = stack.session_replica().await;
        let mut on_a = stack.desktop("a1");
        let mut on_b = stack.desktop_at(b.addr, "a1");

        let session = on_a.login(&["chat", "email"], false).await.unwrap();
        let id = session.session_id.clone();
        // B serves the session A created: its log and its row.
        let mut bus = on_b.connect(&id, 0).await;
        assert_eq!(on_b.get(&id).await.unwrap(), session);

        let ready = on_b.set_ready(&id, "chat").await.unwrap();
        assert_eq!(ready.version, session.version + 1);
        let seen_on_a = on_a.get(&id).await.unwrap();
        assert_eq!(seen_on_a, ready, "A reads what B committed");
        assert_eq!(
            channel(&seen_on_a, "chat").state(),
            AgentState::Ready,
            "the change made through B"
        );
        // A second login of the agent through B is refused: A's session is live.
        let again = on_b.login(&["chat"], false).await.unwrap_err();
        assert_eq!(reason_of(&again), R::AlreadyLoggedIn);

        let out = on_b.logout(&id, None).await.unwrap();
        let events = bus.drain_to_end().await;
        assert_eq!(
            kinds(&events),
            [
                "SessionCreated",
                "ChannelGroupCreated",
                "ChannelCreated",
                "ChannelCreated",
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
        assert_eq!(events.last().unwrap().sequence, out.sequence);
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=12).collect::<Vec<_>>(), "one gapless log");
        assert_eq!(on_a.get(&id).await.unwrap().state(), SessionState::Disposed);
        assert!(
            switch_view(&stack, "a1").await.media.is_empty(),
            "logged out at the switch"
        );
        // The agent may log in again, through either replica.
        on_a.login(&["chat"], false).await.unwrap();
        b.stop().await;
        stack.stop().await;
    }

    #[tokio::test]
    async fn logins_of_one_agent_racing_through_two_replicas_give_one_session() {
        let stack = Stack::start().await;
        let b = stack.session_replica().await;
        let agents: Vec<String> = (0..20).map(|i| format!("racer-{i}")).collect();
        let races = agents.iter().map(|agent| {
            let (mut on_a, mut on_b) = (stack.desktop(agent), stack.desktop_at(b.addr, agent));
            async move {
                tokio::join!(
                    async move { on_a.login(&["chat"], true).await },
                    async move { on_b.login(&["chat"], true).await }
                )
            }
        });
        for (agent, (a, b)) in agents.iter().zip(futures::future::join_all(races).await) {
            let (won, lost) = match (a, b) {
                (Ok(s), Err(e)) | (Err(e), Ok(s)) => (s, e),
                other => panic!("{agent}: expected one login and one refusal, got {other:?}"),
            };
            assert_eq!(reason_of(&lost), R::AlreadyLoggedIn, "{agent}");
            assert_eq!(won.agent_id, *agent);
        }
        b.stop().await;
        stack.stop().await;
    }

    #[tokio::test]
    async fn changes_racing_through_two_replicas_are_each_kept() {
        let stack = Stack::start_with(PlatformConfig {
            free_text_reasons_allowed: Some(true),
            ..platform()
        })
        .await;
        let b = stack.session_replica().await;
        let mut on_a = stack.desktop("a1");
        let session = on_a.login(&["chat"], true).await.unwrap();
        let id = session.session_id.clone();
        let mut bus = on_a.connect(&id, 0).await;
        bus.until("ChannelCreated").await;

        // Each change sets another reason, so each makes an event and a new version.
        const CHANGES: u64 = 30;
        let changes = (0..CHANGES).map(|i| {
            let mut desktop = if i % 2 == 0 {
                stack.desktop("a1")
            } else {
                stack.desktop_at(b.addr, "a1")
            };
            let id = id.clone();
            async move {
                desktop
                    .client
                    .set_not_ready(SetNotReadyRequest {
                        request_id: rid(),
                        session_id: id,
                        media_type: "chat".into(),
                        reason: Some(Reason {
                            description: format!("change {i}"),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(|r| r.into_inner().version)
            }
        });
        let mut versions: Vec<u64> = futures::future::join_all(changes)
            .await
            .into_iter()
            .map(|r| r.expect("every change is taken"))
            .collect();
        versions.sort_unstable();
        assert_eq!(
            versions,
            (session.version + 1..=session.version + CHANGES).collect::<Vec<_>>(),
            "each change decided on the one before it"
        );
        let stored = stack.desktop_at(b.addr, "a1").get(&id).await.unwrap();
        assert_eq!(stored.version, session.version + CHANGES);
        let mut reasons = Vec::new();
        for _ in 0..CHANGES {
            let e = bus.next().await.unwrap().expect("the stream is open");
            let changed = take!(&e, AgentStateChanged);
            reasons.push(changed.reason.clone().unwrap().description);
        }
        reasons.sort();
        reasons.dedup();
        assert_eq!(
            reasons.len() as u64,
            CHANGES,
            "every change is in the log once"
        );
        b.stop().await;
        stack.stop().await;
    }

    /// Waits until the replicas have recorded that no `Connect` stream of the session is open (a
    /// stream's end reaches its server after the client drops it).
    async fn gone_from(stack: &Stack, session_id: &str) {
        let url = database_url(&stack.session_dir).await.unwrap();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let open: i64 = client
                    .query_one(
                        "SELECT count(*) FROM connections WHERE session_id = $1 AND open",
                        &[&session_id],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if open == 0 {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        waited
            .await
            .expect("the stream's end is recorded within PATIENCE");
    }

    #[tokio::test]
    async fn the_connection_lost_grace_counts_the_streams_of_every_replica() {
        let stack = Stack::start().await;
        let b = stack.session_replica().await;
        let mut on_a = stack.desktop("a1");
        let mut on_b = stack.desktop_at(b.addr, "a1");
        // Logged in through A with no desktop connected: A's grace starts.
        let session = on_a.login(&["chat"], true).await.unwrap();
        let id = session.session_id.clone();
        // The desktop connects through B.
        let mut bus = on_b.connect(&id, 0).await;
        bus.until("ChannelCreated").await;

        // A's grace ends, but the desktop is connected through B: nothing changes.
        stack
            .clock
            .advance(stack.grace + std::time::Duration::from_secs(1));
        assert_eq!(
            channel(&on_a.get(&id).await.unwrap(), "chat").state(),
            AgentState::Ready
        );
        fence(&mut on_b, &mut bus, &id, "chat", "break").await;
        on_b.set_ready(&id, "chat").await.unwrap();
        let ready = bus.next().await.unwrap().unwrap();
        let last = ready.sequence;

        // The desktop goes: after the grace from then, the channel goes Not Ready, once.
        drop(bus);
        gone_from(&stack, &id).await;
        let mut log = on_a.log_after(last).await;
        stack
            .clock
            .advance(stack.grace + std::time::Duration::from_secs(1));
        let lost = log.next().await.unwrap().expect("the stream is open");
        let changed = take!(&lost, AgentStateChanged);
        assert_eq!(changed.state(), AgentState::NotReady);
        assert!(matches!(
            lost.actor.as_ref().and_then(|p| p.kind.as_ref()),
            Some(ixn_proto::common::party::Kind::System(s)) if s.what == "connection-lost"
        ));
        b.stop().await;
        stack.stop().await;
    }

    #[tokio::test]
    async fn events_are_relayed_once_and_the_role_moves_when_its_replica_goes_away() {
        let mut stack = Stack::start().await;
        let mut on_a = stack.desktop("a1");
        let session = on_a.login(&["chat"], true).await.unwrap();
        let id = session.session_id.clone();
        let first = offer(&stack, "a1", "chat").await;
        // Only A runs: it relays.
        let mut bus_a = on_a.connect(&id, 0).await;
        bus_a.until("Invite").await;

        let b = stack.session_replica().await;
        let mut on_b = stack.desktop_at(b.addr, "a1");
        let mut bus_b = on_b.connect(&id, 0).await;
        let before = bus_b.until("Invite").await;
        stack.stop_session_service().await;
        // A is gone: B takes the role and relays from where A's commits left the cursor.
        let second = offer(&stack, "a1", "chat").await;
        let mut after = Vec::new();
        loop {
            let e = bus_b.next().await.unwrap().expect("the stream is open");
            let done = is(&e, "Invite")
                && ixn_proto::event::interaction_id(body(&e)) == Some(second.as_str());
            after.push(e);
            if done {
                break;
            }
        }
        let seen: Vec<Event> = before.into_iter().chain(after).collect();
        let got = relayed(&seen);
        let mut originals = stack.ixn(Role::Agent, "a1").subscribe(0).await;
        let mut expected = Vec::new();
        let last = got.last().unwrap().0;
        while expected.last().is_none_or(|(s, _)| *s < last) {
            let e = originals.next().await.unwrap().unwrap();
            expected.push((e.sequence, e.event_id));
        }
        assert_eq!(
            got, expected,
            "each event addressed to the agent, once, in order"
        );

        // B knows what the agent holds, though A relayed the first invite.
        let refused = on_b.logout(&id, None).await.unwrap_err();
        assert_eq!(reason_of(&refused), R::OngoingInteraction);
        let held = failure(
            &refused,
            R::OngoingInteraction,
            tonic::Code::FailedPrecondition,
        )
        .metadata
        .get("interaction_ids")
        .cloned()
        .unwrap_or_default();
        let mut both = [first, second];
        both.sort();
        assert_eq!(held, both.join(","));
        b.stop().await;
        stack.stop().await;
    }
}

#[cfg(not(postgres_tests))]
#[test]
#[ignore = "IXN_TEST_DATABASE_URL is not set: this suite's PostgreSQL run is skipped"]
fn on_postgres() {}
