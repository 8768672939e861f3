//! `EventService.Subscribe` over real sockets: a replay after a sequence, then live, in sequence
//! order with no gap and no duplicate (also while several clients commit at once); `from_head`;
//! SEQUENCE_OUT_OF_RANGE; the filters; who sees what (the Subscribe column of the contract's
//! authorization table, from memory and, after a restart, from the store, including names with
//! spaces); a token that expires ends its stream with TOKEN_EXPIRED; draining ends streams with
//! UNAVAILABLE and completes even when a subscriber has stopped reading; a subscriber that stopped
//! reading is cut with SUBSCRIBER_TOO_SLOW once its bounded buffer has stayed full, and resumes; and
//! a replay longer than the in-memory ring.
//!
//! Streams are read up to a known sequence or a fence (an event the reader is sure to see, caused
//! after what is under test), never after a sleep. What a party should see is computed from an
//! admin's copy of the whole log and compared event for event.

mod common;

use common::*;
use interaction_server::clock::ManualClock;
use ixn_proto::auth::Role;
use ixn_proto::error::Reason as R;
use ixn_proto::events::event::Body;
use ixn_proto::events::{Event, EventFilter, SubscribeRequest};
use ixn_proto::interaction::*;
use ixn_proto::log::{DEFAULT_PATIENCE, RING_CAPACITY};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::{Code, Status};

/// The invite timeout of the platform, plus a second.
const PAST_INVITE_DEADLINE: Duration = Duration::from_secs(31);

/// Opens a stream with a request of the test's choosing.
async fn open(client: &mut Client, request: SubscribeRequest) -> Result<Subscription, Status> {
    let stream = client.events.subscribe(request).await?.into_inner();
    Ok(Subscription { stream })
}

fn after(after_sequence: u64) -> SubscribeRequest {
    SubscribeRequest {
        after_sequence,
        from_head: false,
        filter: None,
    }
}

fn filtered(kinds: &[&str], interaction_ids: &[&str]) -> SubscribeRequest {
    SubscribeRequest {
        after_sequence: 0,
        from_head: false,
        filter: Some(EventFilter {
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            interaction_ids: interaction_ids.iter().map(|i| (*i).to_owned()).collect(),
        }),
    }
}

/// Submits as `client` (a media server or an admin): the interaction id and its event's sequence.
async fn submit(client: &mut Client, queue: &str) -> (String, u64) {
    submit_with(client, queue, BTreeMap::new()).await
}

async fn submit_with(
    client: &mut Client,
    queue: &str,
    properties: BTreeMap<String, String>,
) -> (String, u64) {
    let response = client
        .interactions
        .submit(SubmitRequest {
            request_id: rid(),
            media_type: "chat".into(),
            queue: queue.into(),
            properties,
        })
        .await
        .unwrap()
        .into_inner();
    (
        response.interaction.unwrap().interaction_id,
        response.sequence,
    )
}

/// Every event up to and including sequence `last`, for a viewer that sees it.
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

fn interaction_of(e: &Event) -> Option<&str> {
    e.body.as_ref().and_then(ixn_proto::event::interaction_id)
}

fn concerns(e: &Event, id: &str) -> bool {
    interaction_of(e) == Some(id)
}

fn kind(e: &Event) -> &'static str {
    ixn_proto::event::kind(e.body.as_ref().unwrap())
}

fn is_reporting(e: &Event) -> bool {
    ixn_proto::event::is_reporting(e.body.as_ref().unwrap())
}

fn addressed_to_agent(e: &Event, agent: &str) -> bool {
    e.to.iter().any(|p| p.agent_id() == Some(agent))
}

fn addressed_to_router(e: &Event, router: &str) -> bool {
    e.to.iter().any(|p| p.router_id() == Some(router))
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

/// `tasks` media servers submitting `each` interactions with `properties` at once, each on its own
/// connection.
async fn submit_concurrently(
    server: &TestServer,
    tasks: usize,
    each: usize,
    properties: BTreeMap<String, String>,
) -> Vec<String> {
    let mut handles = Vec::new();
    for task in 0..tasks {
        let mut ms = server.client(Who::media_server(&format!("ms{task}"))).await;
        let properties = properties.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(each);
            for _ in 0..each {
                ids.push(submit_with(&mut ms, "bulk", properties.clone()).await.0);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.extend(handle.await.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_is_in_order_without_gap_or_duplicate_while_clients_commit_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    let mut submitted = Vec::new();
    for _ in 0..20 {
        submitted.push(submit(&mut admin, "before").await.0);
    }
    // Connected before the burst: replays the first 20, then follows live.
    let mut from_start = admin.subscribe(0).await;

    // Four clients × 50 submissions at once; a second admin and a reporter connect from 0 halfway.
    let (halfway_tx, halfway_rx) = oneshot::channel();
    let mut halfway_tx = Some(halfway_tx);
    let mut tasks = Vec::new();
    for task in 0..4 {
        let mut ms = server.client(Who::media_server(&format!("ms{task}"))).await;
        let mut halfway = if task == 0 { halfway_tx.take() } else { None };
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..50 {
                ids.push(submit(&mut ms, "burst").await.0);
                if n == 24
                    && let Some(tx) = halfway.take()
                {
                    let _ = tx.send(());
                }
            }
            ids
        }));
    }
    halfway_rx.await.unwrap();
    let mut joined_halfway = admin.subscribe(0).await;
    let mut reporter = server.client(Who::reporter()).await;
    let mut reporter_halfway = reporter.subscribe(0).await;
    for task in tasks {
        submitted.extend(task.await.unwrap());
    }
    let (fence, last) = submit(&mut admin, "fence").await;
    submitted.push(fence);

    let all = read_through(&mut from_start, last).await;
    assert_contiguous(&all, 1);
    assert_no_duplicate(&all);
    // Each submission is one event: every one is there exactly once.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in &all {
        *counts.entry(interaction_of(e).unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), submitted.len());
    assert!(
        submitted
            .iter()
            .all(|id| counts.get(id.as_str()) == Some(&1))
    );
    assert_eq!(read_through(&mut joined_halfway, last).await, all);
    // Every event here is a reporting one, so the reporter sees the same.
    assert_eq!(read_through(&mut reporter_halfway, last).await, all);

    // A replay after a sequence in the middle is exactly the rest.
    let middle = last / 2;
    let mut rest = admin.subscribe(middle).await;
    assert_eq!(read_through(&mut rest, last).await, all[middle as usize..]);

    // And every stream goes on live with the next event.
    let (next, sequence) = submit(&mut admin, "next").await;
    assert_eq!(sequence, last + 1);
    for stream in [&mut from_start, &mut joined_halfway, &mut rest] {
        let e = stream.next().await.unwrap();
        assert_eq!((e.sequence, concerns(&e, &next)), (last + 1, true));
    }
    server.stop().await;
}

#[tokio::test]
async fn from_head_and_after_the_head_start_with_the_next_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    let mut head = 0;
    for _ in 0..5 {
        head = submit(&mut admin, "q").await.1;
    }

    let mut at_head = open(
        &mut admin,
        SubscribeRequest {
            after_sequence: 0,
            from_head: true,
            filter: None,
        },
    )
    .await
    .unwrap();
    let mut after_head = admin.subscribe(head).await;
    let (next, sequence) = submit(&mut admin, "q").await;
    assert_eq!(sequence, head + 1);
    for stream in [&mut at_head, &mut after_head] {
        let e = stream.next().await.unwrap();
        assert_eq!(
            (e.sequence, concerns(&e, &next)),
            (head + 1, true),
            "only new events: {:?}",
            kinds(&[e])
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn after_sequence_beyond_the_head_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    let mut reporter = server.client(Who::reporter()).await;

    // An empty log has its head at 0.
    let status = open(&mut admin, after(1)).await.err().expect("refused");
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(reason_of(&status), R::SequenceOutOfRange);

    let mut head = 0;
    for _ in 0..3 {
        head = submit(&mut admin, "q").await.1;
    }
    for client in [&mut admin, &mut reporter] {
        let status = open(&mut *client, after(head + 1))
            .await
            .err()
            .expect("refused");
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(reason_of(&status), R::SequenceOutOfRange);
        let status = open(&mut *client, after(u64::MAX))
            .await
            .err()
            .expect("refused");
        assert_eq!(reason_of(&status), R::SequenceOutOfRange);
        assert!(open(&mut *client, after(head)).await.is_ok());
    }
    server.stop().await;
}

/// Which events of the log a filtered stream should carry.
type Wanted<'a> = Box<dyn Fn(&Event) -> bool + 'a>;

#[tokio::test]
async fn filters_keep_only_the_kinds_and_interactions_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server
        .client(Who::service())
        .await
        .ready_agent("a1", &["chat"])
        .await;
    let mut ms = server.client(Who::media_server("ms1")).await;
    let mut router = server.client(Who::router("r1")).await;
    let mut a1 = server.client(Who::agent("a1")).await;
    let mut admin = server.client(Who::admin()).await;

    let (handled, _) = submit(&mut ms, "q").await;
    router.pull("q", &handled).await.unwrap();
    let ticket = router.deliver(&handled, "a1").await.unwrap().ticket_id;
    a1.accept(&handled, &ticket).await.unwrap();
    a1.stop(&handled).await.unwrap();
    let (routed, _) = submit(&mut ms, "q").await;
    router.pull("q", &routed).await.unwrap();
    router.stop(&routed).await.unwrap();
    submit(&mut ms, "q").await;
    // The fence: submitted, routed, offered to a1, stopped by the router. Its ProcessingStopped is
    // the last event of the log.
    let (fence, _) = submit(&mut admin, "q").await;
    router.pull("q", &fence).await.unwrap();
    router.deliver(&fence, "a1").await.unwrap();
    let last = router.stop(&fence).await.unwrap().sequence;
    let log = read_through(&mut admin.subscribe(0).await, last).await;

    let wanted_kinds = ["PartyAdded", "ProcessingStopped"];
    let wanted_ids = [handled.as_str(), fence.as_str()];
    let cases: [(&str, SubscribeRequest, Wanted); 3] = [
        (
            "kinds",
            filtered(&wanted_kinds, &[]),
            Box::new(|e| wanted_kinds.contains(&kind(e))),
        ),
        (
            "interaction ids",
            filtered(&[], &wanted_ids),
            Box::new(|e| interaction_of(e).is_some_and(|i| wanted_ids.contains(&i))),
        ),
        (
            "both",
            filtered(&wanted_kinds, &wanted_ids),
            Box::new(|e| {
                wanted_kinds.contains(&kind(e))
                    && interaction_of(e).is_some_and(|i| wanted_ids.contains(&i))
            }),
        ),
    ];
    for (name, request, wanted) in cases {
        let mut stream = open(&mut admin, request).await.unwrap();
        let got = read_through(&mut stream, last).await;
        let expected: Vec<Event> = log.iter().filter(|e| wanted(e)).cloned().collect();
        assert!(!expected.is_empty() && expected.len() < log.len(), "{name}");
        assert_eq!(kinds(&got), kinds(&expected), "{name}");
        assert_eq!(got, expected, "{name}");
    }

    // A filter narrows what the caller may see; it never widens it: an agent asking for PartyAdded
    // (reporting) and Invite gets only its invites.
    let mut invites = open(&mut a1, filtered(&["Invite", "PartyAdded"], &[]))
        .await
        .unwrap();
    let got = read_to_fence(&mut invites, &fence).await;
    let expected: Vec<Event> = log
        .iter()
        .filter(|e| kind(e) == "Invite" && addressed_to_agent(e, "a1"))
        .cloned()
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got, expected);
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_kind_or_a_malformed_interaction_id_is_an_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    for request in [
        filtered(&["NoSuchKind"], &[]),
        filtered(&["ProcessingStopped", "Stopped"], &[]),
        filtered(&[], &["not-a-uuid"]),
    ] {
        let status = open(&mut admin, request.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{request:?} was accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert_eq!(reason_of(&status), R::InvalidArgument, "{request:?}");
    }
    server.stop().await;
}

/// The fences of the visibility scenario: one interaction per party, each sure to be seen by it.
struct Fences {
    ms1: String,
    ms2: String,
    a1: String,
    a2: String,
    t2_ms1: String,
    t2_a1: String,
    /// The last event of tenant t1 (a reporting one).
    t1_last: String,
    /// The last event of the log (tenant t2).
    t2_last: String,
}

/// Makes `router` take `id` from `queue` and offer it to `agent`, whose stream then has the Invite.
async fn offer(router: &mut Client, queue: &str, id: &str, agent: &str) {
    router.pull(queue, id).await.unwrap();
    router.deliver(id, agent).await.unwrap();
}

/// Interactions in two tenants, with every kind of directed event.
async fn build_two_tenants(server: &TestServer) -> Fences {
    let t1_service = server.client(Who::service()).await;
    let t2_service = server.client(Who::service().in_tenant("t2")).await;
    for (mut service, agents) in [(t1_service, &["a1", "a2"][..]), (t2_service, &["a1"][..])] {
        for agent in agents {
            service.ready_agent(agent, &["chat"]).await;
        }
    }
    let mut ms1 = server.client(Who::media_server("ms1")).await;
    let mut ms2 = server.client(Who::media_server("ms2")).await;
    let mut r1 = server.client(Who::router("r1")).await;
    let mut r2 = server.client(Who::router("r2")).await;
    let mut a1 = server.client(Who::agent("a1")).await;
    let mut a2 = server.client(Who::agent("a2")).await;
    let mut admin = server.client(Who::admin()).await;

    // ms1's: routed by r1, offered to a1, accepted, then stopped by ms1 (Revoked to a1).
    let (i1, _) = submit(&mut ms1, "q").await;
    r1.pull("q", &i1).await.unwrap();
    let ticket = r1.deliver(&i1, "a1").await.unwrap().ticket_id;
    a1.accept(&i1, &ticket).await.unwrap();
    ms1.stop(&i1).await.unwrap();
    // ms2's: routed by r2, offered to a2, rejected, then stopped by ms2 (Abandoned to r2).
    let (i2, _) = submit(&mut ms2, "q").await;
    r2.pull("q", &i2).await.unwrap();
    let ticket = r2.deliver(&i2, "a2").await.unwrap().ticket_id;
    a2.interactions
        .reject(RejectRequest {
            request_id: rid(),
            interaction_id: i2.clone(),
            ticket_id: ticket,
            reason: None,
        })
        .await
        .unwrap();
    ms2.stop(&i2).await.unwrap();
    // ms1's: offered to a2 by r1 until the invite times out, then placed back in a queue.
    let (i3, _) = submit(&mut ms1, "q").await;
    r1.pull("q", &i3).await.unwrap();
    let mut watch = admin
        .subscribe(r1.deliver(&i3, "a2").await.unwrap().sequence)
        .await;
    server.clock.advance(PAST_INVITE_DEADLINE);
    let timed_out = watch.next().await.unwrap();
    assert!(matches!(&timed_out.body, Some(Body::Revoked(r)) if r.cause == "invite-timeout"));
    r1.interactions
        .place_in_queue(PlaceInQueueRequest {
            request_id: rid(),
            interaction_id: i3.clone(),
            queue: "q2".into(),
        })
        .await
        .unwrap();
    // a1's own: it owns it at once; an admin changes its properties.
    let (i4, _) = submit(&mut a1, "").await;
    admin
        .interactions
        .change_properties(ChangePropertiesRequest {
            request_id: rid(),
            interaction_id: i4,
            changed: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            deleted: vec![],
        })
        .await
        .unwrap();
    // Tenant t2, with the same names: ms1 submits, r1 routes, a1 is offered it.
    let mut t2_ms1 = server
        .client(Who::media_server("ms1").in_tenant("t2"))
        .await;
    let mut t2_r1 = server.client(Who::router("r1").in_tenant("t2")).await;
    let (j1, _) = submit(&mut t2_ms1, "q").await;
    offer(&mut t2_r1, "q", &j1, "a1").await;

    // The fences.
    let mut fence_router = server.client(Who::router("fence-router")).await;
    let mut t2_fence_router = server
        .client(Who::router("fence-router").in_tenant("t2"))
        .await;
    let mut t2_admin = server.client(Who::admin().in_tenant("t2")).await;
    let ms1_fence = submit(&mut ms1, "fence").await.0;
    let ms2_fence = submit(&mut ms2, "fence").await.0;
    let a1_fence = submit(&mut admin, "fence").await.0;
    offer(&mut fence_router, "fence", &a1_fence, "a1").await;
    let a2_fence = submit(&mut admin, "fence").await.0;
    offer(&mut fence_router, "fence", &a2_fence, "a2").await;
    let t2_ms1_fence = submit(&mut t2_ms1, "fence").await.0;
    let t2_a1_fence = submit(&mut t2_admin, "fence").await.0;
    offer(&mut t2_fence_router, "fence", &t2_a1_fence, "a1").await;
    let t1_last = submit(&mut admin, "fence").await.0;
    let t2_last = submit(&mut t2_admin, "fence").await.0;
    Fences {
        ms1: ms1_fence,
        ms2: ms2_fence,
        a1: a1_fence,
        a2: a2_fence,
        t2_ms1: t2_ms1_fence,
        t2_a1: t2_a1_fence,
        t1_last,
        t2_last,
    }
}

/// Reads `who`'s stream from the beginning to its fence and checks it is exactly the events of
/// `log` (its tenant's whole log) up to the fence that `may_see` keeps. `when` names the check.
async fn check_view(
    server: &TestServer,
    when: &str,
    who: Who,
    fence: &str,
    log: &[Event],
    may_see: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let name = format!(
        "{when}: {} {} in {}",
        who.role.as_str(),
        who.sub,
        who.tenant
    );
    let mut client = server.client(who).await;
    let got = read_to_fence(&mut client.subscribe(0).await, fence).await;
    let last = got.last().unwrap().sequence;
    let expected: Vec<Event> = log
        .iter()
        .filter(|e| e.sequence <= last && may_see(e))
        .cloned()
        .collect();
    assert_eq!(kinds(&got), kinds(&expected), "{name}");
    assert_eq!(got, expected, "{name}");
    got
}

/// Checks every party's view of the two tenants' log.
async fn check_every_view(server: &TestServer, f: &Fences, when: &str) {
    let t1 = read_to_fence(
        &mut server.client(Who::admin()).await.subscribe(0).await,
        &f.t1_last,
    )
    .await;
    let t2 = read_to_fence(
        &mut server
            .client(Who::admin().in_tenant("t2"))
            .await
            .subscribe(0)
            .await,
        &f.t2_last,
    )
    .await;
    assert!(t1.iter().all(|e| e.tenant == "t1"));
    assert!(t2.iter().all(|e| e.tenant == "t2"));

    // A media server: the reporting events of its own submissions.
    let submitted_by = |log: &[Event], server_id: &str| -> HashSet<String> {
        log.iter()
            .filter_map(|e| match &e.body {
                Some(Body::InteractionSubmitted(s)) => s.interaction.as_ref(),
                _ => None,
            })
            .filter(|i| {
                i.submitted_by
                    .as_ref()
                    .is_some_and(|p| p.media_server_id() == Some(server_id))
            })
            .map(|i| i.interaction_id.clone())
            .collect()
    };
    for (ms, fence) in [("ms1", &f.ms1), ("ms2", &f.ms2)] {
        let own = submitted_by(&t1, ms);
        let seen = check_view(server, when, Who::media_server(ms), fence, &t1, |e| {
            is_reporting(e) && interaction_of(e).is_some_and(|i| own.contains(i))
        })
        .await;
        assert!(seen.len() > 3, "{ms} saw {:?}", kinds(&seen));
    }
    // An agent: what is addressed to it.
    let a1 = check_view(server, when, Who::agent("a1"), &f.a1, &t1, |e| {
        addressed_to_agent(e, "a1")
    })
    .await;
    assert_eq!(
        a1.iter().map(kind).collect::<Vec<_>>(),
        ["Invite", "Revoked", "Invite"]
    );
    let a2 = check_view(server, when, Who::agent("a2"), &f.a2, &t1, |e| {
        addressed_to_agent(e, "a2")
    })
    .await;
    assert_eq!(
        a2.iter().map(kind).collect::<Vec<_>>(),
        ["Invite", "Invite", "Revoked", "Invite"]
    );
    // A router: what is addressed to it, and every reporting event.
    for router in ["r1", "r2"] {
        let seen = check_view(server, when, Who::router(router), &f.t1_last, &t1, |e| {
            is_reporting(e) || addressed_to_router(e, router)
        })
        .await;
        let directed: Vec<&str> = seen.iter().filter(|e| !e.to.is_empty()).map(kind).collect();
        let expected: &[&str] = match router {
            "r1" => &["InviteEnded", "InviteEnded"],
            _ => &["InviteEnded", "Abandoned"],
        };
        assert_eq!(directed, expected, "{router}");
    }
    // A reporter: every reporting event, nothing directed.
    check_view(server, when, Who::reporter(), &f.t1_last, &t1, is_reporting).await;
    // The service of one tenant, and an admin: everything of that tenant.
    check_view(server, when, Who::service(), &f.t1_last, &t1, |_| true).await;

    // The other tenant: the same names see nothing of t1.
    let own = submitted_by(&t2, "ms1");
    check_view(
        server,
        when,
        Who::media_server("ms1").in_tenant("t2"),
        &f.t2_ms1,
        &t2,
        |e| is_reporting(e) && interaction_of(e).is_some_and(|i| own.contains(i)),
    )
    .await;
    let t2_a1 = check_view(
        server,
        when,
        Who::agent("a1").in_tenant("t2"),
        &f.t2_a1,
        &t2,
        |e| addressed_to_agent(e, "a1"),
    )
    .await;
    assert_eq!(t2_a1.len(), 2);
    check_view(
        server,
        when,
        Who::reporter().in_tenant("t2"),
        &f.t2_last,
        &t2,
        is_reporting,
    )
    .await;

    // A service acting for every tenant: the whole log, both tenants, every sequence.
    let everything = Who::new(Role::Service, "session-service", "*");
    let mut both: Vec<Event> = t1.iter().chain(&t2).cloned().collect();
    both.sort_by_key(|e| e.sequence);
    let seen = check_view(server, when, everything, &f.t2_last, &both, |_| true).await;
    assert_contiguous(&seen, 1);
}

#[tokio::test]
async fn each_role_sees_what_the_contract_says_live_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let fences = build_two_tenants(&server).await;
    // From memory (the ring)…
    check_every_view(&server, &fences, "from memory").await;

    // …and from the store, which is all a restarted server has.
    let now = server.clock.now();
    server.stop().await;
    let server = TestServer::start_with(dir.path(), test_platform(), ManualClock::new(now)).await;
    check_every_view(&server, &fences, "from the store").await;
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_ends_the_stream_and_a_fresh_one_resumes_without_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    let now_secs = || server.clock.now() / 1_000_000;

    // A stream opened with a token that expires in a minute.
    let short = Who::admin().token(now_secs(), 60);
    let mut expiring = Client::new(server.channel().await, Who::admin(), short);
    for _ in 0..3 {
        submit(&mut admin, "q").await;
    }
    let (_, seen_up_to) = submit(&mut admin, "q").await;
    let mut stream = expiring.subscribe(0).await;
    let seen = read_through(&mut stream, seen_up_to).await;
    assert_contiguous(&seen, 1);

    server.clock.advance(Duration::from_secs(61));
    let ended = stream.next().await.expect_err("the stream must end");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert_eq!(reason_of(&ended), R::TokenExpired);
    // Nor can that token open another.
    let refused = open(&mut expiring, after(seen_up_to)).await.err().unwrap();
    assert_eq!(reason_of(&refused), R::TokenExpired);

    // Meanwhile the log moves on; a fresh token resumes after the last sequence seen.
    for _ in 0..3 {
        submit(&mut admin, "q").await;
    }
    let (_, last) = submit(&mut admin, "q").await;
    let fresh = Who::admin().token(now_secs(), 60);
    let mut renewed = Client::new(server.channel().await, Who::admin(), fresh);
    let mut resumed = renewed.subscribe(seen_up_to).await;
    let rest = read_through(&mut resumed, last).await;
    assert_contiguous(&rest, seen_up_to + 1);
    assert_eq!(rest.len(), 4);
    server.stop().await;
}

#[tokio::test]
async fn draining_ends_an_open_stream_with_unavailable_and_the_stop_completes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    let mut reporter = server.client(Who::reporter()).await;
    let (_, last) = submit(&mut admin, "q").await;
    let mut caught_up = admin.subscribe(0).await;
    assert_eq!(read_through(&mut caught_up, last).await.len(), 1);
    let mut waiting = reporter.subscribe(last).await;

    let stopping = tokio::spawn(server.stop());
    for stream in [&mut caught_up, &mut waiting] {
        let ended = stream.next().await.expect_err("the stream must end");
        assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    }
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the stop did not complete")
        .unwrap();
}

#[tokio::test]
async fn draining_is_not_held_up_forever_by_a_subscriber_that_stopped_reading() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    // A consumer that hung: its stream is open and never read again, so the transport's flow
    // control window and the server's per-subscriber buffer fill up (some 10 MB of events).
    let mut hung = server.client(Who::reporter()).await;
    let stalled = hung.subscribe(0).await;
    let big: BTreeMap<String, String> = (0..4)
        .map(|n| (format!("k{n}"), "x".repeat(4_000)))
        .collect();
    submit_concurrently(&server, 8, 80, big).await;
    let (_, last) = submit(&mut admin, "fence").await;
    let mut caught_up = admin.subscribe(last).await;

    let clock = server.clock.clone();
    let stopping = tokio::spawn(server.stop());
    // The drain has begun once a reader that keeps up is told so.
    let ended = caught_up.next().await.expect_err("the stream must end");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    // However long a drain may wait for open streams, it must end: a hung consumer must not keep
    // the server (and its data directory) forever.
    clock.advance(Duration::from_secs(600));
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the stop did not complete: a stalled stream holds the drain")
        .unwrap();
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_with_a_bounded_buffer_and_resumes_without_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    // Small windows: the transport is soon full, and then the feeder's wait on the full buffer is
    // the last one before the cut (a transport still taking events would end each wait early).
    let mut hung = server.client_with_small_windows(Who::reporter()).await;
    let mut stalled = hung.subscribe(0).await;
    // Another reader that keeps up, on its own connection.
    let mut reader = server.client(Who::reporter()).await;
    let mut keeping_up = reader.subscribe(0).await;
    // Some 20 MB of events, far more than the buffer and the transport's windows hold.
    let big: BTreeMap<String, String> = (0..4)
        .map(|n| (format!("k{n}"), "x".repeat(4_000)))
        .collect();
    submit_concurrently(&server, 8, 150, big).await;
    let (_, last) = submit(&mut admin, "fence").await;
    let committed: usize = read_through(&mut keeping_up, last)
        .await
        .iter()
        .map(prost::Message::encoded_len)
        .sum();

    // The stalled stream's feeder now waits for room in the full buffer, with a deadline of the
    // patience; once the clock passes it, the stream is cut.
    let deadline = server.clock.now() + DEFAULT_PATIENCE.as_micros() as i64;
    tokio::time::timeout(PATIENCE, server.clock.someone_sleeps_until(deadline))
        .await
        .expect("the stalled stream's feeder never waited on a full buffer");
    server.clock.advance(DEFAULT_PATIENCE);

    // The reader comes back: what was buffered, in order, then the cut, naming the last sequence.
    let mut held = Vec::new();
    let cut = loop {
        match stalled.next().await {
            Ok(e) => held.push(e),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), Code::ResourceExhausted, "{cut:?}");
    let failure = ixn_proto::error::Failure::from_status(&cut).unwrap();
    assert_eq!(failure.reason, R::SubscriberTooSlow);
    assert_contiguous(&held, 1);
    let resume_at = held.last().map_or(0, |e| e.sequence);
    assert_eq!(failure.metadata["after_sequence"], resume_at.to_string());
    // What the server held for it was bounded by the buffer and the transport's windows, not by
    // what was committed.
    let held_bytes: usize = held.iter().map(prost::Message::encoded_len).sum();
    assert!(
        resume_at < last && held_bytes < committed / 2,
        "the stalled stream held {held_bytes} of {committed} bytes (sequences 1..={resume_at} of {last})"
    );

    // It resumes from its last sequence and misses nothing; the reader that kept up was not cut.
    let mut resumed = hung.subscribe(resume_at).await;
    let rest = read_through(&mut resumed, last).await;
    assert_contiguous(&rest, resume_at + 1);
    let (_, after_cut) = submit(&mut admin, "fence").await;
    let live = keeping_up
        .next()
        .await
        .expect("the reader that kept up was cut");
    assert_eq!(live.sequence, after_cut);
    server.stop().await;
}

#[tokio::test]
async fn names_with_spaces_keep_their_events_to_themselves_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut service = server.client(Who::service()).await;
    service.ready_agent("Jane", &["chat"]).await;
    service.ready_agent("Jane Doe", &["chat"]).await;
    let mut ms = server.client(Who::media_server("ms1")).await;
    let mut router = server.client(Who::router("router one")).await;
    let mut fence_router = server.client(Who::router("fence-router")).await;
    let mut admin = server.client(Who::admin()).await;

    // Offered to "Jane Doe" by "router one", then stopped by the media server: Invite and Revoked
    // to the agent, Abandoned to the router.
    let (offered, _) = submit(&mut ms, "q").await;
    offer(&mut router, "q", &offered, "Jane Doe").await;
    ms.stop(&offered).await.unwrap();
    // Fences: an invite to each agent, and a reporting event for the router.
    let (jane_fence, _) = submit(&mut admin, "fence").await;
    offer(&mut fence_router, "fence", &jane_fence, "Jane").await;
    let (jane_doe_fence, _) = submit(&mut admin, "fence").await;
    offer(&mut fence_router, "fence", &jane_doe_fence, "Jane Doe").await;
    let (router_fence, last) = submit(&mut admin, "fence").await;
    let log = read_through(&mut admin.subscribe(0).await, last).await;

    let fences = [jane_fence, jane_doe_fence, router_fence];
    check_names_with_spaces(&server, &log, &fences, "from memory").await;
    let now = server.clock.now();
    server.stop().await;
    let server = TestServer::start_with(dir.path(), test_platform(), ManualClock::new(now)).await;
    check_names_with_spaces(&server, &log, &fences, "from the store").await;
    server.stop().await;
}

/// What "Jane", "router one" and "Jane Doe" see, each read up to its fence.
async fn check_names_with_spaces(
    server: &TestServer,
    log: &[Event],
    fences: &[String; 3],
    when: &str,
) {
    let [jane_fence, jane_doe_fence, router_fence] = fences;
    // "Jane" sees only her own invite, never what is addressed to "Jane Doe".
    let jane = check_view(server, when, Who::agent("Jane"), jane_fence, log, |e| {
        addressed_to_agent(e, "Jane")
    })
    .await;
    assert_eq!(jane.len(), 1, "{when}: Jane saw {:?}", kinds(&jane));
    let router = check_view(
        server,
        when,
        Who::router("router one"),
        router_fence,
        log,
        |e| is_reporting(e) || addressed_to_router(e, "router one"),
    )
    .await;
    let directed: Vec<&str> = router
        .iter()
        .filter(|e| !e.to.is_empty())
        .map(kind)
        .collect();
    assert_eq!(directed, ["Abandoned"], "{when}");
    let jane_doe = check_view(
        server,
        when,
        Who::agent("Jane Doe"),
        jane_doe_fence,
        log,
        |e| addressed_to_agent(e, "Jane Doe"),
    )
    .await;
    assert_eq!(
        jane_doe.iter().map(kind).collect::<Vec<_>>(),
        ["Invite", "Revoked", "Invite"],
        "{when}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_the_ring_is_served_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut admin = server.client(Who::admin()).await;
    // Connected from the start and read only at the end: it falls behind while the log grows.
    let mut laggard = admin.subscribe(0).await;
    // Enough that the beginning of the log has left the ring: a replay from 0 starts in the store
    // and goes on in memory.
    let (tasks, each) = (16, (RING_CAPACITY + 2_000) / 16);
    submit_concurrently(&server, tasks, each, BTreeMap::new()).await;
    let (fence, last) = submit(&mut admin, "fence").await;
    assert_eq!(last, (tasks * each) as u64 + 1);
    assert!(last as usize > RING_CAPACITY + 1);

    let replayed = read_through(&mut admin.subscribe(0).await, last).await;
    assert_contiguous(&replayed, 1);
    assert_no_duplicate(&replayed);
    assert!(concerns(replayed.last().unwrap(), &fence));
    assert_eq!(read_through(&mut laggard, last).await, replayed);
    drop(laggard);

    // After a restart the ring is empty: the replay comes from the store, then goes on live.
    let now = server.clock.now();
    server.stop().await;
    let server = TestServer::start_with(dir.path(), test_platform(), ManualClock::new(now)).await;
    let mut admin = server.client(Who::admin()).await;
    let mut after_restart = admin.subscribe(0).await;
    assert_eq!(read_through(&mut after_restart, last).await, replayed);
    let (next, sequence) = submit(&mut admin, "next").await;
    assert_eq!(sequence, last + 1);
    let live = after_restart.next().await.unwrap();
    assert_eq!((live.sequence, concerns(&live, &next)), (last + 1, true));
    server.stop().await;
}
