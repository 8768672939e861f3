//! The Stop Processing seed, versions A–D, the INVITED and QUEUED cases, and the Unsuccessful
//! version, played over real sockets. For each, every party's stream is read up to a fence and must
//! show exactly the contract's events for the interaction — no more, no fewer — with
//! `ProcessingStopped` last and the ack naming its sequence.

mod common;

use common::*;
use ixn_proto::error::Reason as R;
use ixn_proto::events::Event;
use ixn_proto::interaction::{InteractionState, StopProcessingRequest};

/// The parties of a scenario, each with a stream opened before the stop.
struct World {
    server: TestServer,
    ms: Client,
    foreign_ms: Client,
    router: Client,
    a1: Client,
    a2: Client,
    reporter: Client,
    admin: Client,
    fence_router: Client,
    fence_admin: Client,
    _dir: tempfile::TempDir,
}

struct Streams {
    ms: Subscription,
    foreign_ms: Subscription,
    router: Subscription,
    a1: Subscription,
    a2: Subscription,
    reporter: Subscription,
}

/// What each party saw of one interaction.
struct Seen {
    ms: Vec<Event>,
    foreign_ms: Vec<Event>,
    router: Vec<Event>,
    a1: Vec<Event>,
    a2: Vec<Event>,
    reporter: Vec<Event>,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path()).await;
        let mut service = server.client(Who::service()).await;
        service.ready_agent("a1", &["chat"]).await;
        service.ready_agent("a2", &["chat"]).await;
        World {
            ms: server.client(Who::media_server("ms1")).await,
            foreign_ms: server.client(Who::media_server("ms2")).await,
            router: server.client(Who::router("r1")).await,
            a1: server.client(Who::agent("a1")).await,
            a2: server.client(Who::agent("a2")).await,
            reporter: server.client(Who::reporter()).await,
            admin: server.client(Who::admin()).await,
            fence_router: server.client(Who::router("fence-router")).await,
            fence_admin: server.client(Who::admin()).await,
            server,
            _dir: dir,
        }
    }

    /// Opens every party's stream after sequence `after`.
    async fn streams(&mut self, after: u64) -> Streams {
        Streams {
            ms: self.ms.subscribe(after).await,
            foreign_ms: self.foreign_ms.subscribe(after).await,
            router: self.router.subscribe(after).await,
            a1: self.a1.subscribe(after).await,
            a2: self.a2.subscribe(after).await,
            reporter: self.reporter.subscribe(after).await,
        }
    }

    /// Submitted by ms1 into queue `q`.
    async fn queued(&mut self) -> String {
        self.ms.submit("q", "chat").await.unwrap().interaction_id
    }

    /// ROUTING by r1.
    async fn routing(&mut self) -> String {
        let id = self.queued().await;
        let pulled = self.router.pull("q", &id).await.unwrap();
        assert_eq!(
            pulled.interaction.unwrap().state(),
            InteractionState::Routing
        );
        id
    }

    /// INVITED: r1 routes it and invites a1.
    async fn invited(&mut self) -> String {
        let id = self.routing().await;
        self.router.deliver(&id, "a1").await.unwrap();
        id
    }

    /// HANDLING by a1.
    async fn handling(&mut self) -> String {
        let id = self.routing().await;
        let ticket = self.router.deliver(&id, "a1").await.unwrap().ticket_id;
        let accepted = self.a1.accept(&id, &ticket).await.unwrap();
        assert_eq!(
            accepted.interaction.unwrap().state(),
            InteractionState::Handling
        );
        id
    }

    /// The head of the log (a reporter's view of the last event of a fresh submission).
    async fn head(&mut self) -> u64 {
        self.fence_admin
            .interactions
            .submit(ixn_proto::interaction::SubmitRequest {
                request_id: rid(),
                media_type: "chat".into(),
                queue: "head".into(),
                properties: Default::default(),
            })
            .await
            .unwrap()
            .into_inner()
            .sequence
    }

    /// Produces a fence for every party and reads each stream up to it, keeping what concerns `id`.
    async fn seen(&mut self, s: Streams, id: &str) -> Seen {
        self.seen_any(s, &[id]).await
    }

    /// As [`World::seen`], keeping what concerns any of `ids`.
    async fn seen_any(&mut self, mut s: Streams, ids: &[&str]) -> Seen {
        let about = |events: &[Event], _: &[&str]| about_any(events, ids);
        // Reporting fence, seen by routers and reporters.
        let reporting = self.fence_admin.submit("fence", "chat").await.unwrap();
        // The media servers' own submissions.
        let ms_fence = self.ms.submit("fence", "chat").await.unwrap();
        let foreign_fence = self.foreign_ms.submit("fence", "chat").await.unwrap();
        // Invites addressed to each agent.
        let mut agent_fences = Vec::new();
        for agent in ["a1", "a2"] {
            let f = self.fence_admin.submit("fence", "chat").await.unwrap();
            self.fence_router
                .pull("fence", &f.interaction_id)
                .await
                .unwrap();
            self.fence_router
                .deliver(&f.interaction_id, agent)
                .await
                .unwrap();
            agent_fences.push(f.interaction_id);
        }
        Seen {
            ms: about(&s.ms.until_fence(&ms_fence.interaction_id).await, ids),
            foreign_ms: about(
                &s.foreign_ms
                    .until_fence(&foreign_fence.interaction_id)
                    .await,
                ids,
            ),
            router: about(&s.router.until_fence(&reporting.interaction_id).await, ids),
            a1: about(&s.a1.until_fence(&agent_fences[0]).await, ids),
            a2: about(&s.a2.until_fence(&agent_fences[1]).await, ids),
            reporter: about(
                &s.reporter.until_fence(&reporting.interaction_id).await,
                ids,
            ),
        }
    }
}

fn assert_reporting_ends_with_stop(reporter: &[Event], ack_sequence: u64, removed: &str) {
    assert_eq!(kinds(reporter), ["PartyRemoved", "ProcessingStopped"]);
    let ixn_proto::events::event::Body::PartyRemoved(removed_body) =
        reporter[0].body.as_ref().unwrap()
    else {
        unreachable!()
    };
    assert_eq!(removed_body.party.as_ref().unwrap().label(), removed);
    assert_eq!(reporter.last().unwrap().sequence, ack_sequence);
    assert_eq!(reporter[1].sequence, reporter[0].sequence + 1);
}

#[tokio::test]
async fn version_a_media_server_stops_while_an_agent_handles() {
    let mut w = World::new().await;
    let id = w.handling().await;
    let head = w.head().await;
    let streams = w.streams(head).await;

    let ack = w.ms.stop(&id).await.unwrap();
    let seen = w.seen(streams, &id).await;

    assert_eq!(ack.interaction_id, id);
    assert_eq!(kinds(&seen.a1), ["Revoked→agent:a1@place-a1"]);
    assert_reporting_ends_with_stop(&seen.reporter, ack.sequence, "agent:a1@place-a1");
    // The media server sees the reporting events of its own submission, and nothing addressed to it.
    assert_eq!(kinds(&seen.ms), ["PartyRemoved", "ProcessingStopped"]);
    assert_eq!(kinds(&seen.router), ["PartyRemoved", "ProcessingStopped"]);
    assert!(
        seen.a2.is_empty(),
        "a bystander agent saw {:?}",
        kinds(&seen.a2)
    );
    assert!(seen.foreign_ms.is_empty());
    assert_eq!(
        w.admin.get(&id).await.unwrap().state(),
        InteractionState::Stopped
    );
    w.server.stop().await;
}

#[tokio::test]
async fn version_b_media_server_stops_while_a_router_routes() {
    let mut w = World::new().await;
    let id = w.routing().await;
    let head = w.head().await;
    let streams = w.streams(head).await;

    let ack = w.ms.stop(&id).await.unwrap();
    let seen = w.seen(streams, &id).await;

    assert_eq!(
        kinds(&seen.router),
        ["Abandoned→router:r1", "PartyRemoved", "ProcessingStopped"]
    );
    assert_reporting_ends_with_stop(&seen.reporter, ack.sequence, "router:r1");
    assert_eq!(kinds(&seen.ms), ["PartyRemoved", "ProcessingStopped"]);
    assert!(seen.a1.is_empty() && seen.a2.is_empty());
    assert!(seen.foreign_ms.is_empty());
    w.server.stop().await;
}

#[tokio::test]
async fn version_c_the_handling_agent_stops() {
    let mut w = World::new().await;
    let id = w.handling().await;
    let head = w.head().await;
    let streams = w.streams(head).await;
    // A second stream of the same agent gets the Revoked too.
    let mut second = w.a1.subscribe(head).await;

    let ack = w.a1.stop(&id).await.unwrap();
    let seen = w.seen(streams, &id).await;

    assert_eq!(kinds(&seen.a1), ["Revoked→agent:a1@place-a1"]);
    let again = second.next().await.unwrap();
    assert_eq!(kinds(&[again]), ["Revoked→agent:a1@place-a1"]);
    assert_reporting_ends_with_stop(&seen.reporter, ack.sequence, "agent:a1@place-a1");
    assert!(seen.a2.is_empty());
    assert_eq!(kinds(&seen.router), ["PartyRemoved", "ProcessingStopped"]);
    w.server.stop().await;
}

#[tokio::test]
async fn version_d_the_routing_router_stops() {
    let mut w = World::new().await;
    let id = w.routing().await;
    let head = w.head().await;
    let streams = w.streams(head).await;

    let ack = w.router.stop(&id).await.unwrap();
    let seen = w.seen(streams, &id).await;

    // The router gets the ack only: no Abandoned; it sees the reporting events as every router does.
    assert_eq!(kinds(&seen.router), ["PartyRemoved", "ProcessingStopped"]);
    assert_reporting_ends_with_stop(&seen.reporter, ack.sequence, "router:r1");
    assert!(seen.a1.is_empty() && seen.a2.is_empty());
    w.server.stop().await;
}

#[tokio::test]
async fn a_stop_while_invited_revokes_the_invite_and_abandons_the_router() {
    let mut w = World::new().await;
    let id = w.invited().await;
    let head = w.head().await;
    let streams = w.streams(head).await;

    let ack = w.ms.stop(&id).await.unwrap();
    let seen = w.seen(streams, &id).await;

    assert_eq!(kinds(&seen.a1), ["Revoked→agent:a1@place-a1"]);
    assert_eq!(
        kinds(&seen.router),
        ["Abandoned→router:r1", "PartyRemoved", "ProcessingStopped"]
    );
    assert_reporting_ends_with_stop(&seen.reporter, ack.sequence, "router:r1");
    assert!(seen.a2.is_empty());
    // The invited agent no longer holds it.
    let agent = w
        .server
        .client(Who::service())
        .await
        .agents
        .get_agent(ixn_proto::interaction::GetAgentRequest {
            agent_id: "a1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!agent.interaction_ids.contains(&id));
    w.server.stop().await;
}

#[tokio::test]
async fn the_router_stopping_while_invited_is_not_told_it_was_abandoned() {
    let mut w = World::new().await;
    let id = w.invited().await;
    let head = w.head().await;
    let streams = w.streams(head).await;

    let ack = w.router.stop(&id).await.unwrap();
    let seen = w.seen(streams, &id).await;

    assert_eq!(kinds(&seen.a1), ["Revoked→agent:a1@place-a1"]);
    assert_eq!(kinds(&seen.router), ["PartyRemoved", "ProcessingStopped"]);
    assert_reporting_ends_with_stop(&seen.reporter, ack.sequence, "router:r1");
    w.server.stop().await;
}

#[tokio::test]
async fn a_stop_while_queued_reports_only_processing_stopped() {
    let mut w = World::new().await;
    let id = w.queued().await;
    let head = w.head().await;
    let streams = w.streams(head).await;

    let ack = w.admin.stop(&id).await.unwrap();
    let seen = w.seen(streams, &id).await;

    assert_eq!(kinds(&seen.reporter), ["ProcessingStopped"]);
    assert_eq!(seen.reporter[0].sequence, ack.sequence);
    assert!(seen.a1.is_empty() && seen.a2.is_empty());
    assert_eq!(kinds(&seen.ms), ["ProcessingStopped"]);
    w.server.stop().await;
}

#[tokio::test]
async fn an_admin_stop_tells_the_owner_as_in_a_and_b() {
    let mut w = World::new().await;
    let handled = w.handling().await;
    let routed = w.routing().await;
    let head = w.head().await;
    let streams = w.streams(head).await;

    w.admin.stop(&handled).await.unwrap();
    w.admin.stop(&routed).await.unwrap();
    // Both interactions' events arrive on one set of streams; split them per interaction.
    let reporting_fence = w.fence_admin.submit("fence", "chat").await.unwrap();
    let mut s = streams;
    let reporter = s
        .reporter
        .until_fence(&reporting_fence.interaction_id)
        .await;
    let router = s.router.until_fence(&reporting_fence.interaction_id).await;
    assert_eq!(
        kinds(&about(&reporter, &handled)),
        ["PartyRemoved", "ProcessingStopped"]
    );
    assert_eq!(
        kinds(&about(&reporter, &routed)),
        ["PartyRemoved", "ProcessingStopped"]
    );
    assert_eq!(
        kinds(&about(&router, &routed)),
        ["Abandoned→router:r1", "PartyRemoved", "ProcessingStopped"]
    );
    let revoked = s.a1.next().await.unwrap();
    assert_eq!(
        kinds(std::slice::from_ref(&revoked)),
        ["Revoked→agent:a1@place-a1"]
    );
    assert_eq!(
        ixn_proto::event::interaction_id(revoked.body.as_ref().unwrap()),
        Some(handled.as_str())
    );
    w.server.stop().await;
}

#[tokio::test]
async fn unsuccessful_stops_answer_the_contract_reason_and_change_nothing() {
    let mut w = World::new().await;
    let handled = w.handling().await;
    let stopped = w.queued().await;
    w.admin.stop(&stopped).await.unwrap();
    let before = w.admin.get(&handled).await.unwrap();
    let head = w.head().await;
    let streams = w.streams(head).await;

    let mut a2 = w.a2.clone();
    let mut foreign = w.foreign_ms.clone();
    let mut other_tenant = w
        .server
        .client(Who::media_server("ms1").in_tenant("t2"))
        .await;
    let mut reporter = w.reporter.clone();
    let unknown = uuid::Uuid::now_v7().to_string();
    let cases: Vec<(&str, Result<_, tonic::Status>, R)> = vec![
        (
            "unknown id",
            w.ms.stop(&unknown).await,
            R::InteractionNotFound,
        ),
        (
            "already stopped",
            w.ms.stop(&stopped).await,
            R::AlreadyStopped,
        ),
        // "Already stopped" is checked before entitlement.
        (
            "already stopped, not entitled",
            a2.stop(&stopped).await,
            R::AlreadyStopped,
        ),
        ("non-owner agent", a2.stop(&handled).await, R::NotOwner),
        (
            "foreign media server",
            foreign.stop(&handled).await,
            R::NotOwner,
        ),
        (
            "other tenant",
            other_tenant.stop(&handled).await,
            R::InteractionNotFound,
        ),
        (
            "malformed id",
            w.ms.stop("not-a-uuid").await,
            R::InvalidArgument,
        ),
        (
            "reporter role",
            reporter.stop(&handled).await,
            R::RoleDenied,
        ),
    ];
    for (name, result, expected) in cases {
        let status = result.expect_err(name);
        assert_eq!(reason_of(&status), expected, "{name}: {status:?}");
    }
    // A request without a request_id, and one with an oversized reason.
    let bad_request =
        w.ms.interactions
            .stop_processing(StopProcessingRequest {
                request_id: String::new(),
                interaction_id: handled.clone(),
                reason: None,
            })
            .await
            .unwrap_err();
    assert_eq!(reason_of(&bad_request), R::InvalidArgument);
    let oversized =
        w.ms.interactions
            .stop_processing(StopProcessingRequest {
                request_id: rid(),
                interaction_id: handled.clone(),
                reason: Some(ixn_proto::common::Reason {
                    description: "x".repeat(10_000),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
    assert_eq!(reason_of(&oversized), R::InvalidArgument);
    // A token signed with another key.
    let mut forged = Client::new(
        w.server.channel().await,
        Who::media_server("ms1"),
        ixn_proto::auth::mint(
            &ixn_proto::auth::Secret {
                kid: None,
                bytes: b"another-secret-0123456789".to_vec(),
            },
            &ixn_proto::auth::Claims::new(
                ixn_proto::auth::Role::MediaServer,
                "ms1",
                "t1",
                w.server.clock.now() / 1_000_000,
                60,
            ),
        ),
    );
    let status = forged.stop(&handled).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason_of(&status), R::TokenInvalid);

    // Nothing changed, and no party heard anything about either interaction.
    let after = w.admin.get(&handled).await.unwrap();
    assert_eq!(after, before);
    let seen = w.seen_any(streams, &[&handled, &stopped]).await;
    let all = [
        seen.ms,
        seen.foreign_ms,
        seen.router,
        seen.a1,
        seen.a2,
        seen.reporter,
    ]
    .concat();
    assert!(all.is_empty(), "failed stops emitted {:?}", kinds(&all));
    w.server.stop().await;
}
