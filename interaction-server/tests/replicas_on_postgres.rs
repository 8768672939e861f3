//! Two interaction-server replicas on one PostgreSQL (`IXN_TEST_DATABASE_URL`), racing: every
//! contested change has exactly one winner, no capacity is exceeded, every replica's subscribers see
//! the same gapless log, and an invite times out once, whichever replica is left to time it out.
//! Without the variable, the suite says that it is skipped.

#[cfg(not(postgres_tests))]
#[test]
#[ignore = "IXN_TEST_DATABASE_URL is not set: the replicas suite is skipped"]
fn on_postgres() {}

#[cfg(postgres_tests)]
mod common;

#[cfg(postgres_tests)]
mod replicas {
    use super::common::*;
    use interaction_server::clock::Clock;
    use interaction_server::clock::ManualClock;
    use interaction_server::domain::{Platform, PlatformConfig};
    use interaction_server::server::{self, Options, ServeError};
    use interaction_server::store::StoreError;
    use ixn_proto::error::Reason as R;
    use ixn_proto::events::event::Body;
    use ixn_proto::events::{Event, InviteOutcome};
    use ixn_proto::interaction::SubmitRequest;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    /// Two replicas sharing one store (the schema is named after the directory) and one clock.
    async fn replicas(dir: &std::path::Path, platform: Platform) -> (TestServer, TestServer) {
        let clock = ManualClock::starting_now();
        let a = TestServer::start_with(dir, platform.clone(), clock.clone()).await;
        let b = TestServer::start_with(dir, platform, clock).await;
        (a, b)
    }

    /// Reads a stream through `head`, asserting that it neither skips nor repeats a sequence.
    async fn read_through(stream: &mut Subscription, first: u64, head: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut expected = first;
        while expected <= head {
            let event = stream.next().await.expect("the stream goes on");
            assert_eq!(event.sequence, expected, "a gap or a repeat in the stream");
            expected += 1;
            events.push(event);
        }
        events
    }

    /// `n` agents, each Ready on chat and invited (through `server`) to an interaction of its own:
    /// (agent, interaction, ticket).
    async fn invite(server: &TestServer, n: usize) -> Vec<(String, String, String)> {
        let mut service = server.client(Who::service()).await;
        let mut media = server.client(Who::media_server("ms")).await;
        let mut router = server.client(Who::router("r1")).await;
        let mut invited = Vec::new();
        for k in 0..n {
            let agent = format!("agent-{k}");
            service.ready_agent(&agent, &["chat"]).await;
            let id = media.submit("q", "chat").await.unwrap().interaction_id;
            router.pull("q", &id).await.unwrap();
            let ticket = router.deliver(&id, &agent).await.unwrap().ticket_id;
            invited.push((agent, id, ticket));
        }
        invited
    }

    /// Submits an interaction whose only purpose is to be seen: the sequence of its event.
    async fn fence(server: &TestServer) -> u64 {
        let mut media = server.client(Who::media_server("fence")).await;
        media
            .interactions
            .submit(SubmitRequest {
                request_id: rid(),
                media_type: "chat".into(),
                queue: "fences".into(),
                properties: Default::default(),
            })
            .await
            .unwrap()
            .into_inner()
            .sequence
    }

    fn ids(events: &[Event]) -> Vec<(u64, String)> {
        events
            .iter()
            .map(|e| (e.sequence, e.event_id.clone()))
            .collect()
    }

    fn interaction_of(e: &Event) -> Option<String> {
        match &e.body {
            Some(Body::ProcessingStopped(b)) => Some(b.interaction_id.clone()),
            Some(Body::Revoked(b)) => Some(b.interaction_id.clone()),
            Some(Body::InviteEnded(b)) => Some(b.interaction_id.clone()),
            _ => None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_contested_stops_have_one_winner_each_and_both_replicas_serve_one_log() {
        const N: usize = 1_000;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = replicas(dir.path(), test_platform()).await;
        // Subscribers on both replicas, open before anything is written.
        let mut on_a = a.client(Who::admin()).await.subscribe(0).await;
        let mut on_b = b.client(Who::admin()).await.subscribe(0).await;
        let media_a = a.client(Who::media_server("ms")).await;
        let media_b = b.client(Who::media_server("ms")).await;
        let admin_b = b.client(Who::admin()).await;

        // Submitted through both replicas at once.
        let mut submits = tokio::task::JoinSet::new();
        for k in 0..N {
            let mut client = if k % 2 == 0 {
                media_a.clone()
            } else {
                media_b.clone()
            };
            submits.spawn(async move { client.submit("q", "chat").await.unwrap().interaction_id });
        }
        let ids_submitted: Vec<String> = submits.join_all().await;
        assert_eq!(ids_submitted.iter().collect::<BTreeSet<_>>().len(), N);

        // Each interaction stopped twice at once: by its media server on one replica, by an admin
        // on the other.
        let mut races = tokio::task::JoinSet::new();
        for (k, id) in ids_submitted.iter().enumerate() {
            let (mut first, mut second) = if k % 2 == 0 {
                (media_a.clone(), admin_b.clone())
            } else {
                (admin_b.clone(), media_a.clone())
            };
            let id = id.clone();
            races.spawn(async move {
                let (x, y) = tokio::join!(first.stop(&id), second.stop(&id));
                (id, x, y)
            });
        }
        let mut head = 0;
        for (id, x, y) in races.join_all().await {
            let (won, lost) = match (x, y) {
                (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
                (x, y) => panic!("{id}: exactly one stop must win, got {x:?} and {y:?}"),
            };
            assert_eq!(won.interaction_id, id);
            assert_eq!(reason_of(&lost), R::AlreadyStopped, "{id}: {lost:?}");
            head = head.max(won.sequence);
        }

        // 1,000 submissions and 1,000 stops: the whole log, in order, on both replicas.
        assert_eq!(head, 2 * N as u64);
        let log_a = read_through(&mut on_a, 1, head).await;
        let log_b = read_through(&mut on_b, 1, head).await;
        assert_eq!(
            ids(&log_a),
            ids(&log_b),
            "the replicas serve different logs"
        );
        let stopped: Vec<String> = log_a
            .iter()
            .filter(|e| is(&e.body, "ProcessingStopped"))
            .filter_map(interaction_of)
            .collect();
        assert_eq!(stopped.len(), N, "one ProcessingStopped per interaction");
        assert_eq!(
            stopped.iter().collect::<BTreeSet<_>>(),
            ids_submitted.iter().collect::<BTreeSet<_>>()
        );
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_never_together_exceed_an_agents_capacity() {
        const AGENTS: usize = 100;
        let dir = tempfile::tempdir().unwrap();
        let platform = Platform::from_config(&PlatformConfig {
            default_capacity: Some(1),
            ..Default::default()
        })
        .unwrap();
        let (a, b) = replicas(dir.path(), platform).await;
        let mut service = a.client(Who::service()).await;
        let mut media = a.client(Who::media_server("ms")).await;
        let mut router_a = a.client(Who::router("r1")).await;
        let router_b = b.client(Who::router("r1")).await;
        let mut pairs = Vec::new();
        for k in 0..AGENTS {
            let agent = format!("agent-{k}");
            service.ready_agent(&agent, &["chat"]).await;
            let mut pair = Vec::new();
            for _ in 0..2 {
                let id = media.submit("q", "chat").await.unwrap().interaction_id;
                router_a.pull("q", &id).await.unwrap();
                pair.push(id);
            }
            pairs.push((agent, pair));
        }

        // Each agent (capacity 1) is offered two interactions at once, one through each replica.
        let mut races = tokio::task::JoinSet::new();
        for (agent, pair) in pairs {
            let (mut x, mut y) = (router_a.clone(), router_b.clone());
            races.spawn(async move {
                let (first, second) =
                    tokio::join!(x.deliver(&pair[0], &agent), y.deliver(&pair[1], &agent));
                (agent, first, second)
            });
        }
        for (agent, first, second) in races.join_all().await {
            match (first, second) {
                (Ok(_), Err(lost)) | (Err(lost), Ok(_)) => {
                    assert_eq!(reason_of(&lost), R::AgentNotAvailable, "{agent}: {lost:?}")
                }
                (x, y) => panic!("{agent}: exactly one invite must be taken, got {x:?} and {y:?}"),
            }
        }
        // Both replicas agree on each agent's load, and the store holds it.
        let mut service_b = b.client(Who::service()).await;
        for k in 0..AGENTS {
            let agent = format!("agent-{k}");
            let held = service_b
                .agents
                .get_agent(ixn_proto::interaction::GetAgentRequest {
                    agent_id: agent.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            let load: u32 = held.media.iter().map(|m| m.load).sum();
            assert_eq!(load, 1, "{agent} holds {load}");
        }
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invite_times_out_once_and_on_the_replica_left_when_the_one_that_set_it_is_gone() {
        const INVITES: usize = 40;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_now();
        let a = TestServer::start_with(dir.path(), test_platform(), clock.clone()).await;
        let b = TestServer::start_with(dir.path(), test_platform(), clock.clone()).await;
        let mut on_b = b.client(Who::admin()).await.subscribe(0).await;
        let invited = invite(&a, INVITES).await;
        let fence_a = fence(&a).await;

        // The replica that set the timers goes away; the other one times the invites out.
        a.stop().await;
        clock.advance(Duration::from_secs(600));
        let mut seen = read_through(&mut on_b, 1, fence_a).await;
        let mut revoked: BTreeMap<String, usize> = BTreeMap::new();
        while revoked.len() < INVITES {
            let event = on_b.next().await.expect("the stream goes on");
            assert_eq!(event.sequence, seen.len() as u64 + 1, "a gap or a repeat");
            if let (true, Some(id)) = (is(&event.body, "Revoked"), interaction_of(&event)) {
                *revoked.entry(id).or_default() += 1;
            }
            seen.push(event);
        }
        // Nothing more: a fence after the revocations comes next, with no second revocation.
        let fence_b = fence(&b).await;
        let rest = read_through(&mut on_b, seen.len() as u64 + 1, fence_b).await;
        assert!(
            rest.iter().all(|e| !is(&e.body, "Revoked")),
            "an invite was revoked twice"
        );
        assert!(revoked.values().all(|n| *n == 1), "{revoked:?}");
        let expected: BTreeSet<&String> = invited.iter().map(|(_, id, _)| id).collect();
        assert_eq!(revoked.keys().collect::<BTreeSet<_>>(), expected);
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accept_racing_the_timeout_on_another_replica_either_wins_or_is_revoked_never_both()
    {
        const INVITES: usize = 60;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_now();
        let a = TestServer::start_with(dir.path(), test_platform(), clock.clone()).await;
        let b = TestServer::start_with(dir.path(), test_platform(), clock.clone()).await;
        let mut on_a = a.client(Who::admin()).await.subscribe(0).await;
        let invited = invite(&a, INVITES).await;

        // Accepts through replica B while the deadline passes on both replicas' timers.
        let mut accepts = tokio::task::JoinSet::new();
        for (k, (agent, id, ticket)) in invited.iter().cloned().enumerate() {
            let mut client = b.client(Who::agent(&agent)).await;
            let clock = clock.clone();
            accepts.spawn(async move {
                if k == INVITES / 2 {
                    clock.advance(Duration::from_secs(600));
                }
                (id.clone(), client.accept(&id, &ticket).await)
            });
        }
        let outcomes: BTreeMap<String, bool> = accepts
            .join_all()
            .await
            .into_iter()
            .map(|(id, accepted)| (id, accepted.is_ok()))
            .collect();
        let fence_b = fence(&b).await;
        let log = read_through(&mut on_a, 1, fence_b).await;
        for (id, accepted) in &outcomes {
            let about: Vec<&Event> = log
                .iter()
                .filter(|e| interaction_of(e).as_ref() == Some(id))
                .collect();
            let ended: Vec<i32> = about
                .iter()
                .filter_map(|e| match &e.body {
                    Some(Body::InviteEnded(b)) => Some(b.outcome),
                    _ => None,
                })
                .collect();
            let revokes = about.iter().filter(|e| is(&e.body, "Revoked")).count();
            let outcome = if *accepted {
                InviteOutcome::Accepted
            } else {
                InviteOutcome::TimedOut
            };
            assert_eq!(ended, vec![outcome as i32], "{id}: accepted {accepted}");
            assert_eq!(
                revokes,
                usize::from(!*accepted),
                "{id}: accepted {accepted}"
            );
        }
        a.stop().await;
        b.stop().await;
    }

    /// A connection to the database a server made (and stopped) in `dir`, and its URL.
    async fn migrated(dir: &std::path::Path) -> (tokio_postgres::Client, String) {
        let server = TestServer::start(dir).await;
        server.stop().await;
        let url = database_url(dir).await.unwrap();
        let config: tokio_postgres::Config = url.parse().unwrap();
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        (client, url)
    }

    #[tokio::test]
    async fn request_outcomes_are_keyed_by_request_id_first_and_compared_byte_by_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (client, _) = migrated(dir.path()).await;
        let key: Vec<(String, Option<String>)> = client
            .query(
                "SELECT a.attname::text, c.collname::text
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 LEFT JOIN pg_collation c ON c.oid = a.attcollation
                 WHERE i.indrelid = 'requests'::regclass AND i.indisprimary
                 ORDER BY k.n",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let c = Some("C".to_owned());
        assert_eq!(
            key,
            vec![
                ("request_id".to_owned(), c.clone()),
                ("tenant".to_owned(), c.clone()),
                ("subject".to_owned(), c.clone()),
                ("method".to_owned(), c),
            ]
        );
    }

    #[tokio::test]
    async fn a_database_migrated_by_a_newer_build_is_refused_with_its_versions() {
        let dir = tempfile::tempdir().unwrap();
        let (client, url) = migrated(dir.path()).await;
        client
            .execute(
                "INSERT INTO interaction_server_migrations (version, name, applied_on, checksum)
                 VALUES (999, 'from_the_future', '2030-01-01', '0')",
                &[],
            )
            .await
            .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut options = Options::new(
            dir.path().to_owned(),
            vec![secret()],
            test_platform(),
            Clock::Manual(ManualClock::starting_now()),
        );
        options.database_url = Some(url);
        let refused = server::serve(listener, options, std::future::pending::<()>()).await;
        match refused {
            Err(ServeError::Store(
                e @ StoreError::NewerSchema {
                    found: 999,
                    known: 3,
                },
            )) => {
                let message = e.to_string();
                assert!(message.contains("newer version"), "{message}");
            }
            other => panic!("a newer schema must be refused: {other:?}"),
        }
    }
}
