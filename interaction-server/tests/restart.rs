//! Restarts over real sockets: the "Done when" — stop the server, start it on the same data
//! directory, and every interaction, owner and event is there; a subscriber resuming after its last
//! sequence gets exactly the rest. Also: an invite that expired while the server was down, every
//! acknowledged change surviving a stop in the middle of a burst, the data directory's lock, and
//! idempotent retries answered from the store.
//!
//! Each test builds its state on one server, records what the API says about it, stops that server
//! (which drains and releases the data directory) and starts a new one on the same directory with a
//! clock reading the same time, so invite deadlines stand where they stood. Exact event sets are read
//! up to a known sequence or a fence, never after a sleep.

mod common;

use common::*;
use interaction_server::clock::{Clock, ManualClock};
use interaction_server::domain::Platform;
use interaction_server::server::{self, Options, ServeError};
use interaction_server::store::StoreError;
use ixn_proto::common::AgentState;
use ixn_proto::error::Reason as R;
use ixn_proto::events::event::Body;
use ixn_proto::events::{Event, InviteOutcome};
use ixn_proto::interaction::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// The invite timeout of the default platform, plus a second.
const PAST_INVITE_DEADLINE: Duration = Duration::from_secs(31);

/// Starts a server on `dir` whose clock reads `now` (microseconds), on the default platform: every
/// agent has a capacity of 1 per media, so a restored load shows in what Deliver accepts.
async fn start_at(dir: &Path, now: i64) -> TestServer {
    TestServer::start_with(dir, Platform::default(), ManualClock::new(now)).await
}

/// Starts a server on `dir` at the present time, with agent a1 logged in and Ready on chat.
async fn start_with_a1_ready(dir: &Path) -> TestServer {
    let server = start_at(dir, ManualClock::starting_now().now()).await;
    server
        .client(Who::service())
        .await
        .ready_agent("a1", &["chat"])
        .await;
    server
}

/// Stops `server` and starts a new one on the same directory, at the same time.
async fn restart(server: TestServer) -> TestServer {
    let (dir, now) = (server.data_dir.clone(), server.clock.now());
    server.stop().await;
    start_at(&dir, now).await
}

/// Submits as `client` (a media server or an admin) with `properties`; the interaction id and the
/// sequence of its event.
async fn submit(client: &mut Client, queue: &str, properties: &[(&str, &str)]) -> (String, u64) {
    let response = client
        .interactions
        .submit(SubmitRequest {
            request_id: rid(),
            media_type: "chat".into(),
            queue: queue.into(),
            properties: props(properties),
        })
        .await
        .unwrap()
        .into_inner();
    (
        response.interaction.unwrap().interaction_id,
        response.sequence,
    )
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Every event up to and including sequence `last`, for a viewer that sees every event (an admin).
async fn read_through(subscription: &mut Subscription, last: u64) -> Vec<Event> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|e: &Event| e.sequence < last) {
        let e = subscription.next().await.expect("the stream failed");
        assert!(e.sequence <= last, "read past {last}: {}", e.sequence);
        seen.push(e);
    }
    seen
}

/// Every event up to and including the first that concerns interaction `fence`.
async fn read_to_fence(subscription: &mut Subscription, fence: &str) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let e = subscription.next().await.expect("the stream failed");
        let done = concerns(&e, fence);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

fn concerns(e: &Event, id: &str) -> bool {
    e.body
        .as_ref()
        .and_then(ixn_proto::event::interaction_id)
        .is_some_and(|i| i == id)
}

/// The whole log as an admin replays it from the beginning, through `last`.
async fn admin_log(server: &TestServer, last: u64) -> Vec<Event> {
    let mut admin = server.client(Who::admin()).await;
    let mut subscription = admin.subscribe(0).await;
    read_through(&mut subscription, last).await
}

fn assert_contiguous(events: &[Event], first: u64) {
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (first..first + events.len() as u64).collect();
    assert_eq!(sequences, expected, "the sequences are not contiguous");
}

fn assert_no_duplicate(events: &[Event]) {
    let ids: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "an event arrived twice");
    assert!(
        events.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "the events are not in sequence order"
    );
}

async fn get_agent(service: &mut Client, agent: &str) -> Agent {
    service
        .agents
        .get_agent(GetAgentRequest {
            agent_id: agent.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn list_all(admin: &mut Client) -> ListInteractionsResponse {
    admin
        .interactions
        .list(ListInteractionsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn media<'a>(agent: &'a Agent, media_type: &str) -> &'a AgentMedia {
    agent
        .media
        .iter()
        .find(|m| m.media_type == media_type)
        .unwrap_or_else(|| panic!("{} has no {media_type}", agent.agent_id))
}

/// The interactions of the varied state, by what they are left as.
struct Varied {
    queued_first: String,
    queued_second: String,
    routing: String,
    invited: String,
    invite_ticket: String,
    handling: String,
    stopped: String,
    owned_by_agent: String,
}

impl Varied {
    fn all(&self) -> [&str; 7] {
        [
            &self.queued_first,
            &self.queued_second,
            &self.routing,
            &self.invited,
            &self.handling,
            &self.stopped,
            &self.owned_by_agent,
        ]
    }
}

const AGENTS: [&str; 4] = ["a1", "a2", "a3", "a4"];

/// Agents in every media state and interactions in every state, with properties.
async fn build_varied(server: &TestServer) -> Varied {
    let mut service = server.client(Who::service()).await;
    let mut ms = server.client(Who::media_server("ms1")).await;
    let mut router = server.client(Who::router("r1")).await;
    let mut a2 = server.client(Who::agent("a2")).await;
    let mut a3 = server.client(Who::agent("a3")).await;

    // a1: Ready on chat. a2: Ready on chat, Not Ready on email for a break. a3: Not Ready on voice
    // with the default reason, then changed to lunch. a4: logged in, then out.
    service.ready_agent("a1", &["chat"]).await;
    service.ready_agent("a2", &["chat"]).await;
    service
        .agents
        .add_media(AddMediaRequest {
            request_id: rid(),
            agent_id: "a2".into(),
            media_type: "email".into(),
            ready: false,
            reason: reason("break"),
        })
        .await
        .unwrap();
    service.ready_agent("a3", &[]).await;
    service
        .agents
        .add_media(AddMediaRequest {
            request_id: rid(),
            agent_id: "a3".into(),
            media_type: "voice".into(),
            ready: false,
            reason: None,
        })
        .await
        .unwrap();
    service
        .agents
        .change_media_state_reason(ChangeMediaStateReasonRequest {
            request_id: rid(),
            agent_id: "a3".into(),
            media_type: "voice".into(),
            reason: reason("lunch"),
        })
        .await
        .unwrap();
    service.ready_agent("a4", &["chat"]).await;
    service
        .agents
        .logout(AgentLogoutRequest {
            request_id: rid(),
            agent_id: "a4".into(),
            reason: reason("end-of-shift"),
        })
        .await
        .unwrap();

    let (queued_first, _) = submit(&mut ms, "q", &[("customer", "c-1"), ("lang", "en")]).await;
    let (routing, _) = submit(&mut ms, "q", &[("customer", "c-2")]).await;
    router.pull("q", &routing).await.unwrap();
    let (invited, _) = submit(&mut ms, "q", &[]).await;
    router.pull("q", &invited).await.unwrap();
    let invite_ticket = router.deliver(&invited, "a1").await.unwrap().ticket_id;
    let (handling, _) = submit(&mut ms, "q", &[("topic", "billing")]).await;
    router.pull("q", &handling).await.unwrap();
    let ticket = router.deliver(&handling, "a2").await.unwrap().ticket_id;
    a2.accept(&handling, &ticket).await.unwrap();
    a2.interactions
        .change_properties(ChangePropertiesRequest {
            request_id: rid(),
            interaction_id: handling.clone(),
            changed: props(&[("note", "vip")]),
            deleted: vec!["topic".into()],
        })
        .await
        .unwrap();
    let (stopped, _) = submit(&mut ms, "q", &[]).await;
    router.pull("q", &stopped).await.unwrap();
    ms.stop(&stopped).await.unwrap();
    let (queued_second, _) = submit(&mut ms, "q", &[]).await;
    // An agent's own submission: it owns it at once.
    let owned_by_agent = a3
        .interactions
        .submit(SubmitRequest {
            request_id: rid(),
            media_type: "email".into(),
            queue: String::new(),
            properties: props(&[("subject", "refund")]),
        })
        .await
        .unwrap()
        .into_inner()
        .interaction
        .unwrap()
        .interaction_id;

    Varied {
        queued_first,
        queued_second,
        routing,
        invited,
        invite_ticket,
        handling,
        stopped,
        owned_by_agent,
    }
}

#[tokio::test]
async fn every_interaction_owner_and_event_is_there_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_at(dir.path(), ManualClock::starting_now().now()).await;
    let v = build_varied(&server).await;
    let (_, head) = submit(&mut server.client(Who::admin()).await, "fence", &[]).await;

    let mut admin = server.client(Who::admin()).await;
    let mut service = server.client(Who::service()).await;
    let mut interactions = Vec::new();
    for id in v.all() {
        interactions.push(admin.get(id).await.unwrap());
    }
    let mut agents = Vec::new();
    for agent in AGENTS {
        agents.push(get_agent(&mut service, agent).await);
    }
    let listed = list_all(&mut admin).await;
    let log = admin_log(&server, head).await;

    // The state is what it was built to be, so that comparing it after the restart means something.
    let states: Vec<InteractionState> = interactions.iter().map(|i| i.state()).collect();
    use InteractionState::*;
    assert_eq!(
        states,
        [
            Queued, Queued, Routing, Invited, Handling, Stopped, Handling
        ]
    );
    assert_eq!(
        interactions[4].owner.as_ref().unwrap().agent_id(),
        Some("a2")
    );
    assert_eq!(
        interactions[6].owner.as_ref().unwrap().agent_id(),
        Some("a3")
    );
    assert_eq!(interactions[4].properties, props(&[("note", "vip")]));
    let email = media(&agents[1], "email");
    assert_eq!(email.state(), AgentState::NotReady);
    assert_eq!(email.reason.as_ref().unwrap().code, "break");
    assert_eq!(
        media(&agents[2], "voice").reason.as_ref().unwrap().code,
        "lunch"
    );
    assert!(agents[0].logged_in && !agents[3].logged_in);
    assert_eq!(agents[0].interaction_ids, std::slice::from_ref(&v.invited));
    assert_contiguous(&log, 1);

    let server = restart(server).await;
    let mut admin = server.client(Who::admin()).await;
    let mut service = server.client(Who::service()).await;
    let mut router = server.client(Who::router("r1")).await;
    let mut a1 = server.client(Who::agent("a1")).await;

    for (id, before) in v.all().into_iter().zip(&interactions) {
        assert_eq!(&admin.get(id).await.unwrap(), before, "interaction {id}");
    }
    for (agent, before) in AGENTS.into_iter().zip(&agents) {
        assert_eq!(
            &get_agent(&mut service, agent).await,
            before,
            "agent {agent}"
        );
    }
    assert_eq!(list_all(&mut admin).await, listed);
    // The log replays identically, and new events continue right after its head.
    let mut from_start = admin.subscribe(0).await;
    assert_eq!(read_through(&mut from_start, head).await, log);
    let (next, sequence) = submit(&mut admin, "fence", &[]).await;
    assert_eq!(sequence, head + 1);
    let live = from_start.next().await.unwrap();
    assert_eq!((live.sequence, concerns(&live, &next)), (head + 1, true));

    // The loads came back with the interactions: a1 holds its invite and a2 its interaction, each
    // at its capacity of one chat.
    for agent in ["a1", "a2"] {
        let refused = router.deliver(&v.routing, agent).await.unwrap_err();
        assert_eq!(reason_of(&refused), R::AgentNotAvailable, "{agent}");
    }
    // The queue kept its order: the first one submitted is taken first.
    let pulled = router.pull("q", "").await.unwrap();
    assert_eq!(
        pulled.interaction.unwrap().interaction_id,
        v.queued_first,
        "the oldest queued interaction is pulled first"
    );

    // The invite's deadline survived: past it, the agent is revoked and the router told.
    let mut a1_stream = a1.subscribe(pulled.sequence).await;
    let mut router_stream = router.subscribe(pulled.sequence).await;
    server.clock.advance(PAST_INVITE_DEADLINE);
    let revoked = a1_stream.next().await.unwrap();
    let Some(Body::Revoked(r)) = &revoked.body else {
        panic!("expected Revoked, got {:?}", kinds(&[revoked]));
    };
    assert_eq!(
        (
            r.interaction_id.as_str(),
            r.ticket_id.as_str(),
            r.cause.as_str()
        ),
        (
            v.invited.as_str(),
            v.invite_ticket.as_str(),
            "invite-timeout"
        )
    );
    let ended = router_stream.next().await.unwrap();
    let Some(Body::InviteEnded(e)) = &ended.body else {
        panic!("expected InviteEnded, got {:?}", kinds(&[ended]));
    };
    assert_eq!(e.interaction_id, v.invited);
    assert_eq!(e.outcome(), InviteOutcome::TimedOut);
    assert_eq!(ended.sequence, revoked.sequence + 1);
    let invited = admin.get(&v.invited).await.unwrap();
    assert_eq!(invited.state(), InteractionState::Routing);
    assert!(invited.invite.is_none());
    assert_eq!(
        reason_of(&a1.accept(&v.invited, &v.invite_ticket).await.unwrap_err()),
        R::InviteNotFound
    );

    // And work carries on: a new invite to the freed agent, accepted, then stopped by the agent.
    let ticket = router.deliver(&v.invited, "a1").await.unwrap().ticket_id;
    let accepted = a1.accept(&v.invited, &ticket).await.unwrap();
    assert_eq!(
        accepted.interaction.unwrap().state(),
        InteractionState::Handling
    );
    let ack = a1.stop(&v.invited).await.unwrap();
    assert_eq!(
        kinds(&read_through(&mut a1_stream, ack.sequence - 2).await),
        ["Invite→agent:a1@place-a1", "Revoked→agent:a1@place-a1"]
    );
    assert_eq!(
        admin.get(&v.invited).await.unwrap().state(),
        InteractionState::Stopped
    );
    assert!(
        get_agent(&mut service, "a1")
            .await
            .interaction_ids
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn an_invite_whose_deadline_passed_while_the_server_was_down_is_revoked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_a1_ready(dir.path()).await;
    let mut ms = server.client(Who::media_server("ms1")).await;
    let mut router = server.client(Who::router("r1")).await;
    let (id, _) = submit(&mut ms, "q", &[]).await;
    router.pull("q", &id).await.unwrap();
    let delivered = router.deliver(&id, "a1").await.unwrap();
    let (dir_path, now) = (server.data_dir.clone(), server.clock.now());
    server.stop().await;

    // Down for longer than the invite stood.
    let later = now + PAST_INVITE_DEADLINE.as_micros() as i64;
    let server = start_at(&dir_path, later).await;
    let mut a1 = server.client(Who::agent("a1")).await;
    let mut a1_stream = a1.subscribe(delivered.sequence).await;
    let refused = a1.accept(&id, &delivered.ticket_id).await.unwrap_err();
    assert_eq!(reason_of(&refused), R::InviteNotFound);
    // Nothing moves the clock: the timer fires on what it loaded.
    let revoked = a1_stream.next().await.unwrap();
    let Some(Body::Revoked(r)) = &revoked.body else {
        panic!("expected Revoked, got {:?}", kinds(&[revoked]));
    };
    assert_eq!(
        (r.interaction_id.as_str(), r.cause.as_str()),
        (id.as_str(), "invite-timeout")
    );
    assert_eq!(revoked.sequence, delivered.sequence + 1);
    let mut admin = server.client(Who::admin()).await;
    let after = admin.get(&id).await.unwrap();
    assert_eq!(after.state(), InteractionState::Routing);
    assert!(after.invite.is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_resuming_after_a_restart_gets_exactly_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_at(dir.path(), ManualClock::starting_now().now()).await;
    let mut service = server.client(Who::service()).await;
    service.ready_agent("a1", &["chat"]).await;
    let mut ms = server.client(Who::media_server("ms1")).await;
    let mut router = server.client(Who::router("r1")).await;
    for n in 0..12 {
        let (id, _) = submit(&mut ms, "q", &[]).await;
        if n % 4 == 0 {
            router.pull("q", &id).await.unwrap();
            ms.stop(&id).await.unwrap();
        }
    }
    // Directed events too, which a reporter must not see.
    let (invited, _) = submit(&mut ms, "q", &[]).await;
    router.pull("q", &invited).await.unwrap();
    router.deliver(&invited, "a1").await.unwrap();
    let (_, head) = submit(&mut server.client(Who::admin()).await, "fence", &[]).await;

    // A consumer that crashed after reading half of the log.
    let mut admin = server.client(Who::admin()).await;
    let mut crashed = admin.subscribe(0).await;
    let read_before_crash = read_through(&mut crashed, head / 2).await;
    drop(crashed);
    let last_seen_by_admin = read_before_crash.last().unwrap().sequence;

    // A reporter that read a few events and is still connected when the server drains: it gets
    // what was already sent, then UNAVAILABLE.
    let mut reporter = server.client(Who::reporter()).await;
    let mut draining = reporter.subscribe(0).await;
    let mut seen_by_reporter = vec![draining.next().await.unwrap()];
    let (dir_path, now) = (server.data_dir.clone(), server.clock.now());
    let stopping = tokio::spawn(server.stop());
    let ended = loop {
        match draining.next().await {
            Ok(e) => seen_by_reporter.push(e),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the stop did not complete")
        .unwrap();

    let server = start_at(&dir_path, now).await;
    let mut ms = server.client(Who::media_server("ms1")).await;
    let mut router = server.client(Who::router("r1")).await;
    for _ in 0..5 {
        let (id, _) = submit(&mut ms, "q", &[]).await;
        router.pull("q", &id).await.unwrap();
    }
    router.stop(&invited).await.unwrap();
    let mut admin = server.client(Who::admin()).await;
    let (fence, new_head) = submit(&mut admin, "fence", &[]).await;
    let full = admin_log(&server, new_head).await;
    assert_contiguous(&full, 1);

    // The admin resumes after its last sequence: exactly the rest, no gap, no duplicate.
    let mut resumed = admin.subscribe(last_seen_by_admin).await;
    let rest = read_through(&mut resumed, new_head).await;
    assert_contiguous(&rest, last_seen_by_admin + 1);
    assert_eq!(rest, full[last_seen_by_admin as usize..]);

    // The reporter resumes after the last sequence it received: together, its two streams are the
    // reporting events of the log, each once.
    let last_seen_by_reporter = seen_by_reporter.last().unwrap().sequence;
    let mut reporter = server.client(Who::reporter()).await;
    let mut resumed = reporter.subscribe(last_seen_by_reporter).await;
    let mut together = seen_by_reporter;
    together.extend(read_to_fence(&mut resumed, &fence).await);
    assert_no_duplicate(&together);
    let reporting: Vec<Event> = full
        .iter()
        .filter(|e| ixn_proto::event::is_reporting(e.body.as_ref().unwrap()))
        .cloned()
        .collect();
    assert!(reporting.len() < full.len(), "the log has directed events");
    assert_eq!(together, reporting);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_submission_survives_a_stop_in_the_middle_of_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_at(dir.path(), ManualClock::starting_now().now()).await;
    // Four media servers submit as fast as they can until the server refuses them.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let mut tasks = Vec::new();
    for task in 0..4 {
        let mut ms = server.client(Who::media_server(&format!("ms{task}"))).await;
        let mut started = if task == 0 { started_tx.take() } else { None };
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let submitted = ms
                    .interactions
                    .submit(SubmitRequest {
                        request_id: rid(),
                        media_type: "chat".into(),
                        queue: "q".into(),
                        properties: Default::default(),
                    })
                    .await;
                let Ok(response) = submitted else {
                    return acked;
                };
                let response = response.into_inner();
                acked.push((
                    response.interaction.unwrap().interaction_id,
                    response.sequence,
                ));
                if acked.len() == 20
                    && let Some(tx) = started.take()
                {
                    let _ = tx.send(());
                }
            }
        }));
    }
    started_rx.await.unwrap();
    let (dir_path, now) = (server.data_dir.clone(), server.clock.now());
    server.stop().await;
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap());
    }

    // Every acknowledged submission is in the log, once, at the sequence its answer named; the log
    // has no gap (a call cut off by the stop may or may not have committed: either is fine).
    let server = start_at(&dir_path, now).await;
    let mut admin = server.client(Who::admin()).await;
    let (_, head) = submit(&mut admin, "fence", &[]).await;
    let log = admin_log(&server, head).await;
    assert_contiguous(&log, 1);
    let logged: std::collections::HashMap<&str, u64> = log
        .iter()
        .map(|e| {
            (
                ixn_proto::event::interaction_id(e.body.as_ref().unwrap()).unwrap(),
                e.sequence,
            )
        })
        .collect();
    assert_eq!(
        logged.len(),
        log.len(),
        "an interaction was submitted twice"
    );
    assert!(acked.len() >= 20);
    for (id, sequence) in &acked {
        assert_eq!(
            logged.get(id.as_str()),
            Some(sequence),
            "acknowledged {id} is lost"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    if common::on_postgres() {
        eprintln!("not on PostgreSQL, where replicas share the store: see replicas_on_postgres.rs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    let (_, head) = submit(&mut admin, "q", &[]).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = server::serve(
        listener,
        Options::new(
            dir.path().to_owned(),
            vec![secret()],
            test_platform(),
            Clock::Manual(ManualClock::starting_now()),
        ),
        std::future::pending::<()>(),
    );
    let refused = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("a second server on a data directory in use must refuse at once, not serve");
    assert!(
        matches!(refused, Err(ServeError::Store(StoreError::Locked(_)))),
        "{refused:?}"
    );

    // The first one is unharmed and keeps going.
    let (_, next) = submit(&mut admin, "q", &[]).await;
    assert_eq!(next, head + 1);
    server.stop().await;
    // Once it has stopped, the directory is free again, with everything in it.
    let server = TestServer::start(dir.path()).await;
    let log = admin_log(&server, next).await;
    assert_contiguous(&log, 1);
    server.stop().await;
}

#[tokio::test]
async fn an_idempotent_retry_after_a_restart_returns_the_recorded_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_at(dir.path(), ManualClock::starting_now().now()).await;
    let mut service = server.client(Who::service()).await;
    service.ready_agent("a1", &["chat"]).await;
    let mut ms = server.client(Who::media_server("ms1")).await;
    let mut router = server.client(Who::router("r1")).await;
    let mut a1 = server.client(Who::agent("a1")).await;

    let submit_request = SubmitRequest {
        request_id: rid(),
        media_type: "chat".into(),
        queue: "q".into(),
        properties: props(&[("customer", "c-9"), ("lang", "fr")]),
    };
    let submitted = ms
        .interactions
        .submit(submit_request.clone())
        .await
        .unwrap()
        .into_inner();
    let id = submitted
        .interaction
        .as_ref()
        .unwrap()
        .interaction_id
        .clone();
    let pull_request = PullRequest {
        request_id: rid(),
        queue: "q".into(),
        media_type: String::new(),
        interaction_id: id.clone(),
    };
    let pulled = router
        .interactions
        .pull(pull_request.clone())
        .await
        .unwrap()
        .into_inner();
    let deliver_request = DeliverRequest {
        request_id: rid(),
        interaction_id: id.clone(),
        agent_id: "a1".into(),
        timeout_ms: 0,
    };
    let delivered = router
        .interactions
        .deliver(deliver_request.clone())
        .await
        .unwrap()
        .into_inner();
    let accept_request = AcceptRequest {
        request_id: rid(),
        interaction_id: id.clone(),
        ticket_id: delivered.ticket_id.clone(),
    };
    let accepted = a1
        .interactions
        .accept(accept_request.clone())
        .await
        .unwrap()
        .into_inner();
    let stop_request = StopProcessingRequest {
        request_id: rid(),
        interaction_id: id.clone(),
        reason: reason("done"),
    };
    let stopped = ms
        .interactions
        .stop_processing(stop_request.clone())
        .await
        .unwrap()
        .into_inner();
    let not_ready_request = SetNotReadyRequest {
        request_id: rid(),
        agent_id: "a1".into(),
        media_type: "chat".into(),
        reason: reason("break"),
    };
    let not_ready = service
        .agents
        .set_not_ready(not_ready_request.clone())
        .await
        .unwrap()
        .into_inner();
    let head = not_ready.sequence;
    assert_eq!(stopped.sequence + 1, head);

    let server = restart(server).await;
    let mut ms = server.client(Who::media_server("ms1")).await;
    let mut router = server.client(Who::router("r1")).await;
    let mut a1 = server.client(Who::agent("a1")).await;
    let mut service = server.client(Who::service()).await;
    let mut admin = server.client(Who::admin()).await;
    let mut watch = admin.subscribe(head).await;

    // Every retry answers what the first call answered, even where the request could not run again
    // (the ticket is gone, the interaction stopped, the agent already Not Ready).
    let again = ms.interactions.submit(submit_request).await.unwrap();
    assert_eq!(again.into_inner(), submitted);
    let again = router.interactions.pull(pull_request).await.unwrap();
    assert_eq!(again.into_inner(), pulled);
    let again = router.interactions.deliver(deliver_request).await.unwrap();
    assert_eq!(again.into_inner(), delivered);
    let again = a1.interactions.accept(accept_request).await.unwrap();
    assert_eq!(again.into_inner(), accepted);
    let again = ms
        .interactions
        .stop_processing(stop_request.clone())
        .await
        .unwrap();
    assert_eq!(again.into_inner(), stopped);
    let again = service
        .agents
        .set_not_ready(not_ready_request)
        .await
        .unwrap();
    assert_eq!(again.into_inner(), not_ready);

    // None of them emitted anything: the next event is the fence, right after the old head.
    let (fence, sequence) = submit(&mut admin, "fence", &[]).await;
    assert_eq!(sequence, head + 1);
    let next = watch.next().await.unwrap();
    assert!(concerns(&next, &fence), "{:?}", kinds(&[next]));

    // The same id for a different request is still refused.
    let reused = ms
        .interactions
        .stop_processing(StopProcessingRequest {
            reason: reason("other"),
            ..stop_request
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(reason_of(&reused), R::RequestIdReused);
    assert_eq!(
        admin.get(&id).await.unwrap().state(),
        InteractionState::Stopped
    );
    server.stop().await;
}

/// An agent's stored row keeps the capacity of when the agent last changed. After a restart with
/// another capacity, GetAgent says the one that decisions use.
#[tokio::test]
async fn get_agent_shows_the_capacity_the_server_runs_with() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_a1_ready(dir.path()).await;
    let (data, now) = (server.data_dir.clone(), server.clock.now());
    server.stop().await;
    let platform = Platform {
        default_capacity: 4,
        ..Platform::default()
    };
    let server = TestServer::start_with(&data, platform, ManualClock::new(now)).await;

    let agent = server.client(Who::service()).await.get_agent("a1").await;

    let chat = agent.media.iter().find(|m| m.media_type == "chat").unwrap();
    assert_eq!((chat.capacity, chat.state()), (4, AgentState::Ready));
    server.stop().await;
}
