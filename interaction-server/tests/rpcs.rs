//! Every RPC of interaction-server's `InteractionService` (StopProcessing has its own file,
//! `stop_processing.rs`) and `AgentService`, the idempotency rules (AIP-155), health and reflection,
//! each played against a real server on a real socket.
//!
//! Each RPC has at least one success and one failure. Where an operation emits events, each party's
//! stream is opened before it and read up to a *fence* (an event the party is sure to see, caused
//! after the operation), so the exact set of events is asserted — no more, no fewer — and a failure
//! is shown to emit nothing. Time moves only when a test advances the server's manual clock; nothing
//! sleeps, and waiting for an event is bounded by [`Subscription::next`].

mod common;

use common::*;
use interaction_server::clock::ManualClock;
use interaction_server::domain::{self, PlatformConfig, ReasonConfig};
use ixn_proto::common::{AgentParty, AgentState, Party, Reason};
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::events::event::Body;
use ixn_proto::events::{Event, InviteOutcome, SubscribeRequest};
use ixn_proto::interaction::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tonic::Status;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A platform from its configuration section.
fn platform(config: PlatformConfig) -> domain::Platform {
    domain::Platform::from_config(&config).expect("a valid platform")
}

/// The test platform's capacity (100, so that fences can invite agents freely) with more settings.
fn roomy(config: PlatformConfig) -> domain::Platform {
    platform(PlatformConfig {
        default_capacity: Some(100),
        ..config
    })
}

fn reason_code(code: &str) -> Reason {
    Reason {
        code: code.into(),
        ..Default::default()
    }
}

fn free_text(text: &str) -> Reason {
    Reason {
        description: text.into(),
        ..Default::default()
    }
}

fn reason_config(code: &str, description: &str) -> ReasonConfig {
    ReasonConfig {
        code: code.into(),
        description: description.into(),
        system_name: String::new(),
    }
}

fn agent_party(agent: &str) -> Party {
    Party::agent(agent, format!("place-{agent}"))
}

fn agent_at(agent: &str) -> AgentParty {
    AgentParty {
        agent_id: agent.into(),
        place_id: format!("place-{agent}"),
    }
}

fn body(e: &Event) -> &Body {
    e.body.as_ref().expect("an event has a body")
}

/// Asserts that `result` failed with the contract's `expected` reason and its gRPC code, and
/// returns the failure for further checks (metadata, field violations).
#[track_caller]
fn assert_fails<T: std::fmt::Debug>(result: Result<T, Status>, expected: R) -> Failure {
    let status = match result {
        Ok(v) => panic!("expected {expected}, got success: {v:?}"),
        Err(status) => status,
    };
    let failure =
        Failure::from_status(&status).unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(failure.reason, expected, "{status:?}");
    assert_eq!(status.code(), expected.code(), "{status:?}");
    failure
}

/// Asserts an `INVALID_ARGUMENT` whose `BadRequest` names `field`.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let failure = assert_fails(result, R::InvalidArgument);
    assert!(
        failure.violations.iter().any(|(f, _)| f == field),
        "expected a violation of `{field}`, got {:?}",
        failure.violations
    );
}

/// Opens `client`'s stream at the head of the log: it shows only what happens from now on.
async fn follow(client: &mut Client) -> Subscription {
    let stream = client
        .events
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            from_head: true,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    Subscription { stream }
}

/// Waits for the next event about `id` on `stream`, passing over events about anything else.
async fn next_about(stream: &mut Subscription, id: &str) -> Event {
    loop {
        let e = stream.next().await.expect("the stream failed");
        if ixn_proto::event::interaction_id(body(&e)) == Some(id) {
            return e;
        }
    }
}

/// The events that concern no interaction (the agents' events).
fn agent_events(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| ixn_proto::event::interaction_id(body(e)).is_none())
        .cloned()
        .collect()
}

fn submit_request(queue: &str, media: &str, properties: &[(&str, &str)]) -> SubmitRequest {
    SubmitRequest {
        request_id: rid(),
        media_type: media.into(),
        queue: queue.into(),
        properties: properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn login_request(agent: &str) -> AgentLoginRequest {
    AgentLoginRequest {
        request_id: rid(),
        agent_id: agent.into(),
        place_id: format!("place-{agent}"),
    }
}

fn logout_request(agent: &str, reason: Option<Reason>) -> AgentLogoutRequest {
    AgentLogoutRequest {
        request_id: rid(),
        agent_id: agent.into(),
        reason,
    }
}

fn add_media_request(agent: &str, media: &str, ready: bool) -> AddMediaRequest {
    AddMediaRequest {
        request_id: rid(),
        agent_id: agent.into(),
        media_type: media.into(),
        ready,
        reason: None,
    }
}

fn set_ready_request(agent: &str, media: &str) -> SetReadyRequest {
    SetReadyRequest {
        request_id: rid(),
        agent_id: agent.into(),
        media_type: media.into(),
    }
}

fn set_not_ready_request(agent: &str, media: &str, reason: Option<Reason>) -> SetNotReadyRequest {
    SetNotReadyRequest {
        request_id: rid(),
        agent_id: agent.into(),
        media_type: media.into(),
        reason,
    }
}

fn remove_media_request(agent: &str, media: &str) -> RemoveMediaRequest {
    RemoveMediaRequest {
        request_id: rid(),
        agent_id: agent.into(),
        media_type: media.into(),
    }
}

fn change_reason_request(
    agent: &str,
    media: &str,
    reason: Reason,
) -> ChangeMediaStateReasonRequest {
    ChangeMediaStateReasonRequest {
        request_id: rid(),
        agent_id: agent.into(),
        media_type: media.into(),
        reason: Some(reason),
    }
}

fn pull_request(queue: &str, media: &str, id: &str) -> PullRequest {
    PullRequest {
        request_id: rid(),
        queue: queue.into(),
        media_type: media.into(),
        interaction_id: id.into(),
    }
}

fn reject_request(id: &str, ticket: &str) -> RejectRequest {
    RejectRequest {
        request_id: rid(),
        interaction_id: id.into(),
        ticket_id: ticket.into(),
        reason: Some(reason_code("busy")),
    }
}

fn place_request(id: &str, queue: &str) -> PlaceInQueueRequest {
    PlaceInQueueRequest {
        request_id: rid(),
        interaction_id: id.into(),
        queue: queue.into(),
    }
}

fn change_request(id: &str, changed: &[(&str, &str)], deleted: &[&str]) -> ChangePropertiesRequest {
    ChangePropertiesRequest {
        request_id: rid(),
        interaction_id: id.into(),
        changed: changed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        deleted: deleted.iter().map(|k| (*k).to_owned()).collect(),
    }
}

fn list_request(
    page_size: i32,
    page_token: &str,
    state: InteractionState,
) -> ListInteractionsRequest {
    ListInteractionsRequest {
        page_size,
        page_token: page_token.into(),
        state: state as i32,
        queue: String::new(),
    }
}

/// The media state an agent shows for `media`.
fn media_of<'a>(agent: &'a Agent, media: &str) -> &'a AgentMedia {
    agent
        .media
        .iter()
        .find(|m| m.media_type == media)
        .unwrap_or_else(|| panic!("{} has no {media}: {agent:?}", agent.agent_id))
}

/// The parties of most tests: agents `a1` and `a2` logged in and Ready on chat.
struct Parties {
    server: TestServer,
    ms: Client,
    ms2: Client,
    r1: Client,
    r2: Client,
    a1: Client,
    a2: Client,
    reporter: Client,
    admin: Client,
    service: Client,
    _dir: tempfile::TempDir,
}

impl Parties {
    async fn new() -> Parties {
        Parties::on(test_platform()).await
    }

    async fn on(platform: domain::Platform) -> Parties {
        let dir = tempfile::tempdir().unwrap();
        let server =
            TestServer::start_with(dir.path(), platform, ManualClock::starting_now()).await;
        let mut service = server.client(Who::service()).await;
        service.ready_agent("a1", &["chat"]).await;
        service.ready_agent("a2", &["chat"]).await;
        Parties {
            ms: server.client(Who::media_server("ms1")).await,
            ms2: server.client(Who::media_server("ms2")).await,
            r1: server.client(Who::router("r1")).await,
            r2: server.client(Who::router("r2")).await,
            a1: server.client(Who::agent("a1")).await,
            a2: server.client(Who::agent("a2")).await,
            reporter: server.client(Who::reporter()).await,
            admin: server.client(Who::admin()).await,
            service,
            server,
            _dir: dir,
        }
    }

    /// QUEUED in `q`, submitted by ms1.
    async fn queued(&mut self) -> String {
        self.ms.submit("q", "chat").await.unwrap().interaction_id
    }

    /// ROUTING by r1.
    async fn routing(&mut self) -> String {
        let id = self.queued().await;
        self.r1.pull("q", &id).await.unwrap();
        id
    }

    /// INVITED: r1 routes it and invites `agent`; the ticket.
    async fn invited(&mut self, agent: &str) -> (String, String) {
        let id = self.routing().await;
        let ticket = self.r1.deliver(&id, agent).await.unwrap().ticket_id;
        (id, ticket)
    }

    /// HANDLING by a1.
    async fn handling(&mut self) -> String {
        let (id, ticket) = self.invited("a1").await;
        self.a1.accept(&id, &ticket).await.unwrap();
        id
    }

    /// A reporting fence: seen by reporters, routers, service and admin.
    async fn reporting_fence(&self) -> String {
        let mut admin = self.admin.clone();
        admin.submit("fence", "chat").await.unwrap().interaction_id
    }

    /// A fence for ms1's stream: its own submission.
    async fn ms_fence(&self) -> String {
        let mut ms = self.ms.clone();
        ms.submit("fence", "chat").await.unwrap().interaction_id
    }

    /// A fence for an agent's stream: an invite addressed to it (it must be Ready on chat).
    async fn agent_fence(&self, agent: &str) -> String {
        let id = self.reporting_fence().await;
        let mut router = self.server.client(Who::router("fence-router")).await;
        router.pull("fence", &id).await.unwrap();
        router.deliver(&id, agent).await.unwrap();
        id
    }

    async fn agent(&self, agent: &str) -> Agent {
        self.service.clone().get_agent(agent).await
    }

    /// Logs `agent` in (as the service), with `media` active but Not Ready.
    async fn not_ready_agent(&mut self, agent: &str, media: &[&str]) {
        self.service
            .agents
            .login(login_request(agent))
            .await
            .unwrap();
        for m in media {
            self.service
                .agents
                .add_media(add_media_request(agent, m, false))
                .await
                .unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Submit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_media_server_submits_into_a_queue() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;
    let mut ms = follow(&mut p.ms).await;

    let request = submit_request("sales", "chat", &[("customer", "42")]);
    let response =
        p.ms.interactions
            .submit(request.clone())
            .await
            .unwrap()
            .into_inner();

    let i = response.interaction.clone().unwrap();
    assert_eq!(i.state(), InteractionState::Queued);
    assert_eq!(i.queue, "sales");
    assert_eq!(i.media_type, "chat");
    assert_eq!(i.tenant, "t1");
    assert_eq!(i.owner, None);
    assert_eq!(i.submitted_by, Some(Party::media_server("ms1")));
    assert_eq!(i.properties, request.properties);
    let fence = p.reporting_fence().await;
    let seen = reporter.until_fence(&fence).await;
    assert_eq!(kinds(&seen), ["InteractionSubmitted"]);
    assert_eq!(seen[0].sequence, response.sequence);
    assert_eq!(seen[0].correlation_id, request.request_id);
    assert_eq!(seen[0].actor, Some(Party::media_server("ms1")));
    let Body::InteractionSubmitted(submitted) = body(&seen[0]) else {
        unreachable!()
    };
    assert_eq!(submitted.interaction.as_ref(), Some(&i));
    // The submitter sees the reporting events of its own submission.
    let ms_fence = p.ms_fence().await;
    assert_eq!(
        kinds(&ms.until_fence(&ms_fence).await),
        ["InteractionSubmitted"]
    );
    assert_eq!(p.ms.get(&i.interaction_id).await.unwrap(), i);
    p.server.stop().await;
}

#[tokio::test]
async fn an_agent_submits_and_owns_it_at_once() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;
    let mut a1 = follow(&mut p.a1).await;

    let response =
        p.a1.interactions
            .submit(submit_request("", "chat", &[]))
            .await
            .unwrap()
            .into_inner();

    let i = response.interaction.unwrap();
    let id = i.interaction_id.clone();
    assert_eq!(i.state(), InteractionState::Handling);
    assert_eq!(i.owner, Some(agent_party("a1")));
    assert_eq!(i.submitted_by, Some(agent_party("a1")));
    let agent = p.agent("a1").await;
    assert!(agent.interaction_ids.contains(&id));
    assert_eq!(media_of(&agent, "chat").load, 1);
    let fence = p.agent_fence("a1").await;
    let seen = about(&reporter.until_fence(&fence).await, &id);
    assert_eq!(kinds(&seen), ["InteractionSubmitted", "PartyAdded"]);
    let Body::PartyAdded(added) = body(&seen[1]) else {
        unreachable!()
    };
    assert_eq!(added.party, Some(agent_party("a1")));
    assert_eq!(seen[1].sequence, response.sequence);
    // Nothing is addressed to the agent: the response is its news.
    assert!(about(&a1.until_fence(&fence).await, &id).is_empty());
    p.server.stop().await;
}

#[tokio::test]
async fn an_agent_that_is_not_logged_in_cannot_submit() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;
    let mut stranger = p.server.client(Who::agent("a9")).await;

    let result = stranger.submit("", "chat").await;

    let failure = assert_fails(result, R::AgentNotAvailable);
    assert_eq!(
        failure.metadata.get("agent_id").map(String::as_str),
        Some("a9")
    );
    let fence = p.reporting_fence().await;
    let seen = reporter.until_fence(&fence).await;
    assert!(
        seen.is_empty(),
        "a refused submit emitted {:?}",
        kinds(&seen)
    );
    p.server.stop().await;
}

#[tokio::test]
async fn submit_refuses_bad_arguments_and_emits_nothing() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;
    let big = "x".repeat(4_000);
    let too_many: Vec<(String, String)> = (0..65).map(|n| (format!("k{n}"), "v".into())).collect();
    let too_many: Vec<(&str, &str)> = too_many
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cases = [
        (
            "unknown media",
            submit_request("q", "fax", &[]),
            "media_type",
        ),
        (
            "no queue from a media server",
            submit_request("", "chat", &[]),
            "queue",
        ),
        (
            "too many properties",
            submit_request("q", "chat", &too_many),
            "properties",
        ),
        (
            "an oversized value",
            submit_request("q", "chat", &[("k", &"x".repeat(4_097))]),
            "properties",
        ),
        (
            "oversized in all",
            submit_request(
                "q",
                "chat",
                &[
                    ("a", &big),
                    ("b", &big),
                    ("c", &big),
                    ("d", &big),
                    ("e", &big),
                ],
            ),
            "properties",
        ),
    ];
    for (name, request, field) in cases {
        let result = p.ms.interactions.submit(request).await;
        let failure = assert_fails(result, R::InvalidArgument);
        assert!(
            failure.violations.iter().any(|(f, _)| f == field),
            "{name}: {:?}",
            failure.violations
        );
    }
    let fence = p.reporting_fence().await;
    let seen = reporter.until_fence(&fence).await;
    assert!(
        seen.is_empty(),
        "refused submits emitted {:?}",
        kinds(&seen)
    );
    p.server.stop().await;
}

#[tokio::test]
async fn routers_reporters_and_the_service_may_not_submit() {
    let p = Parties::new().await;
    for who in [Who::router("r1"), Who::reporter(), Who::service()] {
        let mut client = p.server.client(who.clone()).await;
        assert_fails(client.submit("q", "chat").await, R::RoleDenied);
    }
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Pull
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_router_pulls_the_oldest_queued_interaction_first() {
    let mut p = Parties::new().await;
    let first = p.queued().await;
    let second = p.queued().await;
    let third = p.queued().await;
    let elsewhere = p.ms.submit("other", "chat").await.unwrap().interaction_id;
    let mut reporter = follow(&mut p.reporter).await;

    let mut taken = Vec::new();
    let mut sequences = Vec::new();
    for _ in 0..3 {
        let pulled = p.r1.pull("q", "").await.unwrap();
        let i = pulled.interaction.unwrap();
        assert_eq!(i.state(), InteractionState::Routing);
        assert_eq!(i.owner, Some(Party::router("r1")));
        taken.push(i.interaction_id);
        sequences.push(pulled.sequence);
    }
    let empty = p.r1.pull("q", "").await.unwrap();

    assert_eq!(taken, [first.clone(), second, third]);
    assert_eq!(empty.interaction, None, "the queue is drained");
    let fence = p.reporting_fence().await;
    let seen = reporter.until_fence(&fence).await;
    assert_eq!(
        kinds(&seen),
        [
            "TakenFromQueue",
            "PartyAdded",
            "TakenFromQueue",
            "PartyAdded",
            "TakenFromQueue",
            "PartyAdded"
        ]
    );
    let Body::TakenFromQueue(from) = body(&seen[0]) else {
        unreachable!()
    };
    assert_eq!(
        (from.interaction_id.as_str(), from.queue.as_str()),
        (first.as_str(), "q")
    );
    let Body::PartyAdded(added) = body(&seen[1]) else {
        unreachable!()
    };
    assert_eq!(added.party, Some(Party::router("r1")));
    assert_eq!(seen[1].sequence, sequences[0]);
    assert_eq!(
        p.admin.get(&elsewhere).await.unwrap().state(),
        InteractionState::Queued,
        "another queue is untouched"
    );
    p.server.stop().await;
}

#[tokio::test]
async fn an_agent_pulls_only_what_it_is_ready_for() {
    let mut p = Parties::new().await;
    p.not_ready_agent("a3", &["chat"]).await;
    let mut a3 = p.server.client(Who::agent("a3")).await;
    let email = p.ms.submit("q", "email").await.unwrap().interaction_id;
    let chat = p.queued().await;

    // Not Ready on chat: a named pull is refused, an unnamed one finds nothing it may take.
    let named = a3.pull("q", &chat).await;
    assert_fails(named, R::AgentNotAvailable);
    assert_eq!(a3.pull("q", "").await.unwrap().interaction, None);

    p.service
        .agents
        .set_ready(set_ready_request("a3", "chat"))
        .await
        .unwrap();
    let mut reporter = follow(&mut p.reporter).await;
    let pulled = a3.pull("q", "").await.unwrap();

    // The older email interaction is passed over: the agent is Ready on chat only.
    let i = pulled.interaction.unwrap();
    assert_eq!(i.interaction_id, chat);
    assert_eq!(i.state(), InteractionState::Handling);
    assert_eq!(i.owner, Some(agent_party("a3")));
    let fence = p.reporting_fence().await;
    let seen = reporter.until_fence(&fence).await;
    assert_eq!(kinds(&seen), ["TakenFromQueue", "PartyAdded"]);
    let Body::PartyAdded(added) = body(&seen[1]) else {
        unreachable!()
    };
    assert_eq!(added.party, Some(agent_party("a3")));
    assert_eq!(
        p.admin.get(&email).await.unwrap().state(),
        InteractionState::Queued
    );
    // Asking for the email one explicitly finds nothing the agent may take.
    let email_only = a3
        .interactions
        .pull(pull_request("q", "email", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(email_only.interaction, None);
    // An agent that is not logged in pulls nothing.
    let mut stranger = p.server.client(Who::agent("a9")).await;
    assert_fails(stranger.pull("q", "").await, R::AgentNotAvailable);
    p.server.stop().await;
}

#[tokio::test]
async fn pulling_an_empty_queue_answers_nothing_and_emits_nothing() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;

    let pulled = p.r1.pull("empty", "").await.unwrap();

    assert_eq!(pulled.interaction, None);
    assert_eq!(pulled.sequence, 0);
    let fence = p.reporting_fence().await;
    let seen = reporter.until_fence(&fence).await;
    assert!(seen.is_empty(), "an empty pull emitted {:?}", kinds(&seen));
    p.server.stop().await;
}

#[tokio::test]
async fn media_servers_reporters_and_admins_may_not_pull() {
    let mut p = Parties::new().await;
    let id = p.queued().await;
    assert_fails(p.ms.pull("q", &id).await, R::RoleDenied);
    assert_fails(p.reporter.pull("q", "").await, R::RoleDenied);
    assert_fails(p.admin.pull("q", "").await, R::RoleDenied);
    assert_eq!(
        p.admin.get(&id).await.unwrap().state(),
        InteractionState::Queued
    );
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Deliver
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_owning_router_invites_an_agent() {
    let mut p = Parties::new().await;
    let id = p.routing().await;
    let mut a1 = follow(&mut p.a1).await;
    let mut reporter = follow(&mut p.reporter).await;
    let mut r1 = follow(&mut p.r1).await;
    let now = p.server.clock.now();

    let delivered = p.r1.deliver(&id, "a1").await.unwrap();

    let deadline = domain::timestamp(now + 30_000_000);
    assert_eq!(
        delivered.expire_time,
        Some(deadline),
        "the default delivering timeout is 30 s"
    );
    let fence = p.agent_fence("a1").await;
    let to_agent = a1.until_fence(&fence).await;
    assert_eq!(kinds(&to_agent), ["Invite→agent:a1@place-a1"]);
    let Body::Invite(invite) = body(&to_agent[0]) else {
        unreachable!()
    };
    assert_eq!(invite.ticket_id, delivered.ticket_id);
    assert_eq!(invite.expire_time, Some(deadline));
    let offered = invite.interaction.as_ref().unwrap();
    assert_eq!(offered.interaction_id, id);
    assert_eq!(offered.state(), InteractionState::Invited);
    let reported = about(&reporter.until_fence(&fence).await, &id);
    assert_eq!(kinds(&reported), ["AgentInvited"]);
    let Body::AgentInvited(invited) = body(&reported[0]) else {
        unreachable!()
    };
    assert_eq!(invited.ticket_id, delivered.ticket_id);
    assert_eq!(invited.agent, Some(agent_at("a1")));
    assert_eq!(invited.expire_time, Some(deadline));
    assert_eq!(reported[0].sequence, delivered.sequence);
    // The router hears nothing addressed to it, only the reporting event.
    assert_eq!(
        kinds(&about(&r1.until_fence(&fence).await, &id)),
        ["AgentInvited"]
    );
    let now_invited = p.r1.get(&id).await.unwrap();
    assert_eq!(now_invited.state(), InteractionState::Invited);
    assert_eq!(now_invited.owner, Some(Party::router("r1")));
    let pending = now_invited.invite.unwrap();
    assert_eq!(pending.ticket_id, delivered.ticket_id);
    assert_eq!(pending.expire_time, Some(deadline));
    p.server.stop().await;
}

#[tokio::test]
async fn only_the_owning_router_may_deliver() {
    let mut p = Parties::new().await;
    let routed = p.routing().await;
    let queued = p.queued().await;
    let mut reporter = follow(&mut p.reporter).await;

    assert_fails(p.r2.deliver(&routed, "a1").await, R::NotOwner);
    // A queued interaction has no owner: no router may deliver it.
    assert_fails(p.r1.deliver(&queued, "a1").await, R::NotOwner);
    let mut a1 = p.a1.clone();
    assert_fails(
        a1.interactions
            .deliver(DeliverRequest {
                request_id: rid(),
                interaction_id: routed.clone(),
                agent_id: "a2".into(),
                timeout_ms: 0,
            })
            .await,
        R::RoleDenied,
    );

    let fence = p.reporting_fence().await;
    let seen = reporter.until_fence(&fence).await;
    assert!(
        seen.is_empty(),
        "refused deliveries emitted {:?}",
        kinds(&seen)
    );
    assert_eq!(
        p.r1.get(&routed).await.unwrap().state(),
        InteractionState::Routing
    );
    p.server.stop().await;
}

#[tokio::test]
async fn deliver_takes_its_own_timeout_within_bounds() {
    let mut p = Parties::new().await;
    let id = p.routing().await;
    let now = p.server.clock.now();
    let deliver = |timeout_ms| DeliverRequest {
        request_id: rid(),
        interaction_id: id.clone(),
        agent_id: "a1".into(),
        timeout_ms,
    };

    let too_long = p.r1.interactions.deliver(deliver(3_600_001)).await;
    let delivered =
        p.r1.interactions
            .deliver(deliver(2_000))
            .await
            .unwrap()
            .into_inner();

    assert_invalid(too_long, "timeout_ms");
    assert_eq!(
        delivered.expire_time,
        Some(domain::timestamp(now + 2_000_000))
    );
    p.server.stop().await;
}

#[tokio::test]
async fn an_agent_not_ready_or_not_logged_in_is_not_available() {
    let mut p = Parties::new().await;
    p.not_ready_agent("a3", &["chat"]).await;
    p.service.ready_agent("a4", &["email"]).await;
    let id = p.routing().await;
    let mut reporter = follow(&mut p.reporter).await;

    for (agent, why) in [
        ("a3", "Not Ready on chat"),
        ("a4", "Ready on email only"),
        ("a9", "never logged in"),
    ] {
        let failure = assert_fails(p.r1.deliver(&id, agent).await, R::AgentNotAvailable);
        assert_eq!(
            failure.metadata.get("agent_id").map(String::as_str),
            Some(agent),
            "{why}"
        );
    }
    // Logged out: was available, is not any more.
    p.service
        .agents
        .logout(logout_request("a2", None))
        .await
        .unwrap();
    assert_fails(p.r1.deliver(&id, "a2").await, R::AgentNotAvailable);

    let fence = p.reporting_fence().await;
    assert!(about(&reporter.until_fence(&fence).await, &id).is_empty());
    assert_eq!(
        p.r1.get(&id).await.unwrap().state(),
        InteractionState::Routing
    );
    p.server.stop().await;
}

#[tokio::test]
async fn an_agent_at_capacity_is_not_available() {
    let mut p = Parties::on(platform(PlatformConfig {
        default_capacity: Some(1),
        ..Default::default()
    }))
    .await;
    let (first, ticket) = p.invited("a1").await;
    let second = p.routing().await;

    // The open invite fills a1's one chat slot.
    let failure = assert_fails(p.r1.deliver(&second, "a1").await, R::AgentNotAvailable);
    assert_eq!(
        failure.metadata.get("agent_id").map(String::as_str),
        Some("a1")
    );
    assert_eq!(
        p.r1.get(&second).await.unwrap().state(),
        InteractionState::Routing
    );
    let agent = p.agent("a1").await;
    assert_eq!(
        (
            media_of(&agent, "chat").load,
            media_of(&agent, "chat").capacity
        ),
        (1, 1)
    );
    // Pull respects the capacity too.
    let queued = p.queued().await;
    assert_fails(p.a1.pull("q", &queued).await, R::AgentNotAvailable);
    assert_eq!(p.a1.pull("q", "").await.unwrap().interaction, None);

    // Once the invite is rejected the slot is free again.
    p.a1.interactions
        .reject(reject_request(&first, &ticket))
        .await
        .unwrap();
    p.r1.deliver(&second, "a1").await.unwrap();
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Accept
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_invited_agent_accepts_and_handles_it() {
    let mut p = Parties::new().await;
    let (id, ticket) = p.invited("a1").await;
    let mut r1 = follow(&mut p.r1).await;
    let mut reporter = follow(&mut p.reporter).await;
    let mut a1 = follow(&mut p.a1).await;

    let accepted = p.a1.accept(&id, &ticket).await.unwrap();

    let i = accepted.interaction.unwrap();
    assert_eq!(i.state(), InteractionState::Handling);
    assert_eq!(i.owner, Some(agent_party("a1")));
    assert_eq!(i.invite, None);
    let fence = p.agent_fence("a1").await;
    let to_router = about(&r1.until_fence(&fence).await, &id);
    assert_eq!(
        kinds(&to_router),
        ["InviteEnded→router:r1", "PartyRemoved", "PartyAdded"]
    );
    let Body::InviteEnded(ended) = body(&to_router[0]) else {
        unreachable!()
    };
    assert_eq!(ended.outcome(), InviteOutcome::Accepted);
    assert_eq!(ended.ticket_id, ticket);
    let reported = about(&reporter.until_fence(&fence).await, &id);
    assert_eq!(kinds(&reported), ["PartyRemoved", "PartyAdded"]);
    let (Body::PartyRemoved(removed), Body::PartyAdded(added)) =
        (body(&reported[0]), body(&reported[1]))
    else {
        unreachable!()
    };
    assert_eq!(removed.party, Some(Party::router("r1")));
    assert_eq!(added.party, Some(agent_party("a1")));
    assert_eq!(reported[1].sequence, accepted.sequence);
    assert!(about(&a1.until_fence(&fence).await, &id).is_empty());
    assert_fails(p.r1.get(&id).await, R::NotOwner);
    p.server.stop().await;
}

#[tokio::test]
async fn a_wrong_ticket_or_another_agent_cannot_accept() {
    let mut p = Parties::new().await;
    let (id, ticket) = p.invited("a1").await;
    let before = p.admin.get(&id).await.unwrap();
    let mut reporter = follow(&mut p.reporter).await;

    let unknown = rid();
    let failure = assert_fails(p.a1.accept(&id, &unknown).await, R::InviteNotFound);
    assert_eq!(failure.metadata.get("ticket_id"), Some(&unknown));
    assert_fails(p.a2.accept(&id, &ticket).await, R::NotOwner);
    assert_fails(p.a1.accept("not-a-uuid", &ticket).await, R::InvalidArgument);
    let mut router = p.r1.clone();
    assert_fails(router.accept(&id, &ticket).await, R::RoleDenied);

    let fence = p.reporting_fence().await;
    assert!(about(&reporter.until_fence(&fence).await, &id).is_empty());
    assert_eq!(p.admin.get(&id).await.unwrap(), before);
    // The invite still stands for its agent.
    p.a1.accept(&id, &ticket).await.unwrap();
    p.server.stop().await;
}

#[tokio::test]
async fn an_invite_past_its_deadline_cannot_be_accepted() {
    let mut p = Parties::new().await;
    let (id, ticket) = p.invited("a1").await;
    let mut reporter = follow(&mut p.reporter).await;

    // At the deadline the invite is gone, whether or not the timer has revoked it yet.
    p.server.clock.advance(Duration::from_secs(30));
    let result = p.a1.accept(&id, &ticket).await;

    assert_fails(result, R::InviteNotFound);
    let fence = p.reporting_fence().await;
    let seen = about(&reporter.until_fence(&fence).await, &id);
    assert!(seen.is_empty(), "a late accept emitted {:?}", kinds(&seen));
    assert_ne!(
        p.admin.get(&id).await.unwrap().state(),
        InteractionState::Handling
    );
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Reject
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_invited_agent_rejects_and_the_router_routes_again() {
    let mut p = Parties::new().await;
    let (id, ticket) = p.invited("a1").await;
    let mut r1 = follow(&mut p.r1).await;
    let mut reporter = follow(&mut p.reporter).await;

    let rejected =
        p.a1.interactions
            .reject(reject_request(&id, &ticket))
            .await
            .unwrap()
            .into_inner();

    assert_eq!(rejected.interaction_id, id);
    let fence = p.reporting_fence().await;
    let to_router = about(&r1.until_fence(&fence).await, &id);
    assert_eq!(kinds(&to_router), ["InviteEnded→router:r1", "Rejected"]);
    let Body::InviteEnded(ended) = body(&to_router[0]) else {
        unreachable!()
    };
    assert_eq!(ended.outcome(), InviteOutcome::Rejected);
    let reported = about(&reporter.until_fence(&fence).await, &id);
    assert_eq!(kinds(&reported), ["Rejected"]);
    let Body::Rejected(r) = body(&reported[0]) else {
        unreachable!()
    };
    assert_eq!(r.ticket_id, ticket);
    assert_eq!(r.agent, Some(agent_at("a1")));
    assert_eq!(r.reason, Some(reason_code("busy")));
    assert_eq!(reported[0].sequence, rejected.sequence);
    let i = p.r1.get(&id).await.unwrap();
    assert_eq!(i.state(), InteractionState::Routing);
    assert_eq!(i.owner, Some(Party::router("r1")));
    assert_eq!(i.invite, None);
    assert!(!p.agent("a1").await.interaction_ids.contains(&id));
    p.server.stop().await;
}

#[tokio::test]
async fn an_answered_invite_cannot_be_rejected_again() {
    let mut p = Parties::new().await;
    let (id, ticket) = p.invited("a1").await;
    p.a1.interactions
        .reject(reject_request(&id, &ticket))
        .await
        .unwrap();
    let mut reporter = follow(&mut p.reporter).await;

    let again = p.a1.interactions.reject(reject_request(&id, &ticket)).await;
    assert_fails(again, R::InviteNotFound);
    assert_fails(p.a1.accept(&id, &ticket).await, R::InviteNotFound);

    let fence = p.reporting_fence().await;
    assert!(about(&reporter.until_fence(&fence).await, &id).is_empty());
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The invite timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_invite_times_out_at_the_delivering_timeout() {
    let mut p = Parties::on(roomy(PlatformConfig {
        invite_timeout_ms: Some(5_000),
        ..Default::default()
    }))
    .await;
    let (id, ticket) = p.invited("a1").await;
    let mut a1 = follow(&mut p.a1).await;
    let mut r1 = follow(&mut p.r1).await;
    let mut reporter = follow(&mut p.reporter).await;

    // Just before the deadline nothing happens.
    p.server.clock.advance(Duration::from_millis(4_999));
    let fence = p.agent_fence("a1").await;
    let early = about(&a1.until_fence(&fence).await, &id);
    assert!(early.is_empty(), "before its deadline: {:?}", kinds(&early));
    assert_eq!(
        p.r1.get(&id).await.unwrap().state(),
        InteractionState::Invited
    );

    // At the deadline the timer revokes it, without any request.
    p.server.clock.advance(Duration::from_millis(1));
    let revoked = next_about(&mut a1, &id).await;
    let ended = next_about(&mut r1, &id).await;

    assert_eq!(
        kinds(std::slice::from_ref(&revoked)),
        ["Revoked→agent:a1@place-a1"]
    );
    let Body::Revoked(r) = body(&revoked) else {
        unreachable!()
    };
    assert_eq!(
        (r.ticket_id.as_str(), r.cause.as_str()),
        (ticket.as_str(), "invite-timeout")
    );
    assert_eq!(revoked.actor, Some(Party::system("invite-timeout")));
    assert_eq!(
        kinds(std::slice::from_ref(&ended)),
        ["InviteEnded→router:r1"]
    );
    let Body::InviteEnded(e) = body(&ended) else {
        unreachable!()
    };
    assert_eq!(e.outcome(), InviteOutcome::TimedOut);
    assert_eq!(e.ticket_id, ticket);
    // Nothing more about it, to anyone.
    let fence = p.agent_fence("a1").await;
    assert!(about(&a1.until_fence(&fence).await, &id).is_empty());
    assert!(about(&r1.until_fence(&fence).await, &id).is_empty());
    assert!(about(&reporter.until_fence(&fence).await, &id).is_empty());
    let i = p.r1.get(&id).await.unwrap();
    assert_eq!(i.state(), InteractionState::Routing);
    assert_eq!(i.owner, Some(Party::router("r1")));
    assert_eq!(i.invite, None);
    assert!(!p.agent("a1").await.interaction_ids.contains(&id));
    assert_fails(p.a1.accept(&id, &ticket).await, R::InviteNotFound);
    // The router may invite again.
    p.r1.deliver(&id, "a2").await.unwrap();
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// PlaceInQueue
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_routing_router_places_it_back_in_a_queue() {
    let mut p = Parties::new().await;
    let id = p.routing().await;
    let mut r1 = follow(&mut p.r1).await;
    let mut reporter = follow(&mut p.reporter).await;

    let placed =
        p.r1.interactions
            .place_in_queue(place_request(&id, "q2"))
            .await
            .unwrap()
            .into_inner();

    assert_eq!(placed.interaction_id, id);
    let fence = p.reporting_fence().await;
    let reported = about(&reporter.until_fence(&fence).await, &id);
    assert_eq!(kinds(&reported), ["PartyRemoved", "PlacedInQueue"]);
    let (Body::PartyRemoved(removed), Body::PlacedInQueue(queued)) =
        (body(&reported[0]), body(&reported[1]))
    else {
        unreachable!()
    };
    assert_eq!(removed.party, Some(Party::router("r1")));
    assert_eq!(queued.queue, "q2");
    assert_eq!(reported[1].sequence, placed.sequence);
    // The router asked: nothing is addressed to it.
    assert_eq!(
        kinds(&about(&r1.until_fence(&fence).await, &id)),
        ["PartyRemoved", "PlacedInQueue"]
    );
    let i = p.admin.get(&id).await.unwrap();
    assert_eq!(i.state(), InteractionState::Queued);
    assert_eq!((i.queue.as_str(), i.owner.as_ref()), ("q2", None));
    let pulled = p.r2.pull("q2", "").await.unwrap().interaction.unwrap();
    assert_eq!(pulled.interaction_id, id);
    p.server.stop().await;
}

#[tokio::test]
async fn placing_an_invited_interaction_in_a_queue_revokes_the_invite() {
    let mut p = Parties::new().await;
    let (id, ticket) = p.invited("a1").await;
    let mut a1 = follow(&mut p.a1).await;
    let mut reporter = follow(&mut p.reporter).await;

    p.r1.interactions
        .place_in_queue(place_request(&id, "q"))
        .await
        .unwrap();

    let fence = p.agent_fence("a1").await;
    let to_agent = about(&a1.until_fence(&fence).await, &id);
    assert_eq!(kinds(&to_agent), ["Revoked→agent:a1@place-a1"]);
    let Body::Revoked(r) = body(&to_agent[0]) else {
        unreachable!()
    };
    assert_eq!(
        (r.ticket_id.as_str(), r.cause.as_str()),
        (ticket.as_str(), "placed-in-queue")
    );
    assert_eq!(
        kinds(&about(&reporter.until_fence(&fence).await, &id)),
        ["PartyRemoved", "PlacedInQueue"]
    );
    assert!(!p.agent("a1").await.interaction_ids.contains(&id));
    assert_fails(p.a1.accept(&id, &ticket).await, R::InviteNotFound);
    p.server.stop().await;
}

#[tokio::test]
async fn the_handling_agent_places_it_back_in_a_queue() {
    let mut p = Parties::new().await;
    let id = p.handling().await;
    let mut reporter = follow(&mut p.reporter).await;

    p.a1.interactions
        .place_in_queue(place_request(&id, "q"))
        .await
        .unwrap();

    let fence = p.reporting_fence().await;
    let reported = about(&reporter.until_fence(&fence).await, &id);
    assert_eq!(kinds(&reported), ["PartyRemoved", "PlacedInQueue"]);
    let Body::PartyRemoved(removed) = body(&reported[0]) else {
        unreachable!()
    };
    assert_eq!(removed.party, Some(agent_party("a1")));
    assert_eq!(
        p.admin.get(&id).await.unwrap().state(),
        InteractionState::Queued
    );
    assert!(p.agent("a1").await.interaction_ids.is_empty());
    p.server.stop().await;
}

#[tokio::test]
async fn place_in_queue_is_for_the_owner_and_not_for_what_is_queued() {
    let mut p = Parties::new().await;
    let routed = p.routing().await;
    let handled = p.handling().await;
    let queued = p.queued().await;
    let mut reporter = follow(&mut p.reporter).await;

    let mut a2 = p.a2.clone();
    let mut ms = p.ms.clone();
    let cases = [
        (
            "another router",
            p.r2.interactions
                .place_in_queue(place_request(&routed, "q"))
                .await,
            R::NotOwner,
        ),
        (
            "another agent",
            a2.interactions
                .place_in_queue(place_request(&handled, "q"))
                .await,
            R::NotOwner,
        ),
        (
            "the submitter",
            ms.interactions
                .place_in_queue(place_request(&routed, "q"))
                .await,
            R::RoleDenied,
        ),
        (
            "already queued",
            p.admin
                .interactions
                .place_in_queue(place_request(&queued, "q2"))
                .await,
            R::InvalidState,
        ),
        (
            "no queue",
            p.r1.interactions
                .place_in_queue(place_request(&routed, ""))
                .await,
            R::InvalidArgument,
        ),
    ];
    for (name, result, expected) in cases {
        let status = result.expect_err(name);
        assert_eq!(reason_of(&status), expected, "{name}: {status:?}");
        assert_eq!(status.code(), expected.code(), "{name}");
    }

    let fence = p.reporting_fence().await;
    let seen = about_any(
        &reporter.until_fence(&fence).await,
        &[&routed, &handled, &queued],
    );
    assert!(
        seen.is_empty(),
        "refused requeues emitted {:?}",
        kinds(&seen)
    );
    let i = p.admin.get(&queued).await.unwrap();
    assert_eq!(
        (i.state(), i.queue.as_str()),
        (InteractionState::Queued, "q")
    );
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// ChangeProperties
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_submitter_and_the_owner_change_and_delete_properties() {
    let mut p = Parties::new().await;
    let submitted =
        p.ms.interactions
            .submit(submit_request("q", "chat", &[("a", "1"), ("b", "2")]))
            .await
            .unwrap()
            .into_inner();
    let id = submitted.interaction.unwrap().interaction_id;
    let mut reporter = follow(&mut p.reporter).await;

    let by_submitter =
        p.ms.interactions
            .change_properties(change_request(&id, &[("c", "3")], &["a"]))
            .await
            .unwrap()
            .into_inner();
    p.r1.pull("q", &id).await.unwrap();
    let by_owner =
        p.r1.interactions
            .change_properties(change_request(&id, &[("b", "20")], &[]))
            .await
            .unwrap()
            .into_inner();

    let props = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    };
    assert_eq!(
        by_submitter.interaction.unwrap().properties,
        props(&[("b", "2"), ("c", "3")])
    );
    assert_eq!(
        by_owner.interaction.unwrap().properties,
        props(&[("b", "20"), ("c", "3")])
    );
    let fence = p.reporting_fence().await;
    let reported: Vec<Event> = about(&reporter.until_fence(&fence).await, &id)
        .into_iter()
        .filter(|e| is(&e.body, "PropertiesChanged"))
        .collect();
    assert_eq!(reported.len(), 2);
    let Body::PropertiesChanged(first) = body(&reported[0]) else {
        unreachable!()
    };
    assert_eq!(first.changed, props(&[("c", "3")]));
    assert_eq!(first.deleted, ["a"]);
    assert_eq!(reported[0].sequence, by_submitter.sequence);
    assert_eq!(reported[1].sequence, by_owner.sequence);
    assert_eq!(reported[1].actor, Some(Party::router("r1")));
    assert_eq!(
        p.admin.get(&id).await.unwrap().properties,
        props(&[("b", "20"), ("c", "3")])
    );
    p.server.stop().await;
}

#[tokio::test]
async fn change_properties_refuses_the_non_entitled_and_empty_changes() {
    let mut p = Parties::new().await;
    let id = p.handling().await;
    let before = p.admin.get(&id).await.unwrap();
    let mut reporter = follow(&mut p.reporter).await;

    let change = || change_request(&id, &[("k", "v")], &[]);
    assert_fails(
        p.r1.interactions.change_properties(change()).await,
        R::NotOwner,
    );
    assert_fails(
        p.a2.interactions.change_properties(change()).await,
        R::NotOwner,
    );
    assert_fails(
        p.ms2.interactions.change_properties(change()).await,
        R::NotOwner,
    );
    assert_fails(
        p.reporter.interactions.change_properties(change()).await,
        R::RoleDenied,
    );
    assert_invalid(
        p.a1.interactions
            .change_properties(change_request(&id, &[], &[]))
            .await,
        "changed",
    );

    let fence = p.reporting_fence().await;
    assert!(about(&reporter.until_fence(&fence).await, &id).is_empty());
    assert_eq!(p.admin.get(&id).await.unwrap(), before);
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Get
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_shows_each_role_what_it_may_see() {
    let mut p = Parties::new().await;
    let (invited, _) = p.invited("a1").await;
    let handled = p.handling().await;
    let mut r3 = p.server.client(Who::router("r3")).await;

    // The submitter and the readers of everything see both.
    for client in [&mut p.ms, &mut p.reporter, &mut p.admin, &mut p.service] {
        for id in [&invited, &handled] {
            let i = client
                .get(id)
                .await
                .unwrap_or_else(|s| panic!("{:?}: {s:?}", client.who));
            assert_eq!(&i.interaction_id, id);
        }
    }
    // The invited agent sees what it is invited to and what it handles.
    assert_eq!(
        p.a1.get(&invited).await.unwrap().state(),
        InteractionState::Invited
    );
    assert_eq!(
        p.a1.get(&handled).await.unwrap().state(),
        InteractionState::Handling
    );
    // The router sees what it owns, not what it handed over.
    assert_eq!(
        p.r1.get(&invited).await.unwrap().state(),
        InteractionState::Invited
    );
    assert_fails(p.r1.get(&handled).await, R::NotOwner);
    // Others see neither.
    for client in [&mut p.ms2, &mut p.a2, &mut r3] {
        assert_fails(client.get(&invited).await, R::NotOwner);
        assert_fails(client.get(&handled).await, R::NotOwner);
    }
    p.server.stop().await;
}

#[tokio::test]
async fn get_answers_another_tenant_as_if_it_did_not_exist() {
    let mut p = Parties::new().await;
    let id = p.queued().await;
    let mut foreign = p.server.client(Who::reporter().in_tenant("t2")).await;

    let failure = assert_fails(foreign.get(&id).await, R::InteractionNotFound);
    assert_eq!(failure.metadata.get("interaction_id"), Some(&id));
    assert_fails(p.reporter.get(&rid()).await, R::InteractionNotFound);
    assert_invalid(p.reporter.get("not-a-uuid").await, "interaction_id");
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// List
// ---------------------------------------------------------------------------------------------

/// Every page of a listing, following `next_page_token` to the end.
async fn all_pages(
    client: &mut Client,
    page_size: i32,
    state: InteractionState,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .interactions
            .list(list_request(page_size, &token, state))
            .await
            .unwrap()
            .into_inner();
        pages.push(
            page.interactions
                .into_iter()
                .map(|i| i.interaction_id)
                .collect(),
        );
        if page.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() <= 100, "paging does not end");
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn list_pages_cover_every_interaction_exactly_once() {
    let mut p = Parties::new().await;
    let mut ids = BTreeSet::new();
    for _ in 0..7 {
        ids.insert(p.queued().await);
    }

    let pages = all_pages(&mut p.reporter, 3, InteractionState::Unspecified).await;

    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 1]);
    let listed: Vec<&String> = pages.iter().flatten().collect();
    let unique: BTreeSet<String> = listed.iter().map(|s| (*s).clone()).collect();
    assert_eq!(
        listed.len(),
        unique.len(),
        "an interaction was listed twice"
    );
    assert_eq!(unique, ids);
    // A page that ends exactly at the last interaction says no more follow.
    let exact = all_pages(&mut p.reporter, 7, InteractionState::Unspecified).await;
    assert_eq!(exact.len(), 1);
    assert_eq!(exact[0].len(), 7);
    p.server.stop().await;
}

#[tokio::test]
async fn list_filters_by_state_and_by_what_the_caller_may_see() {
    let mut p = Parties::new().await;
    let queued = p.queued().await;
    let routed = p.routing().await;
    let handled = p.handling().await;
    let foreign = p.ms2.submit("q", "chat").await.unwrap().interaction_id;

    let flat =
        |pages: Vec<Vec<String>>| -> BTreeSet<String> { pages.into_iter().flatten().collect() };
    let set = |ids: &[&String]| -> BTreeSet<String> { ids.iter().map(|s| (*s).clone()).collect() };
    assert_eq!(
        flat(all_pages(&mut p.reporter, 0, InteractionState::Queued).await),
        set(&[&queued, &foreign])
    );
    assert_eq!(
        flat(all_pages(&mut p.reporter, 0, InteractionState::Routing).await),
        set(&[&routed])
    );
    assert_eq!(
        flat(all_pages(&mut p.ms, 0, InteractionState::Unspecified).await),
        set(&[&queued, &routed, &handled]),
        "a media server lists its own submissions"
    );
    assert_eq!(
        flat(all_pages(&mut p.r1, 0, InteractionState::Unspecified).await),
        set(&[&routed]),
        "a router lists what it owns"
    );
    assert_eq!(
        flat(all_pages(&mut p.a1, 0, InteractionState::Unspecified).await),
        set(&[&handled]),
        "an agent lists what it holds"
    );
    p.server.stop().await;
}

#[tokio::test]
async fn list_refuses_a_page_size_out_of_range() {
    let mut p = Parties::new().await;
    for size in [5_000, 1_001, -1] {
        let result = p
            .reporter
            .interactions
            .list(list_request(size, "", InteractionState::Unspecified))
            .await;
        assert_invalid(result, "page_size");
    }
    let token = p
        .reporter
        .interactions
        .list(list_request(10, "garbage", InteractionState::Unspecified))
        .await;
    assert_invalid(token, "page_token");
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// AgentService
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_agent_service_is_for_the_service_and_admins_only() {
    let p = Parties::new().await;
    for who in [
        Who::agent("a1"),
        Who::router("r1"),
        Who::media_server("ms1"),
        Who::reporter(),
    ] {
        let mut c = p.server.client(who).await;
        assert_fails(c.agents.login(login_request("a5")).await, R::RoleDenied);
        assert_fails(
            c.agents.logout(logout_request("a1", None)).await,
            R::RoleDenied,
        );
        assert_fails(
            c.agents
                .add_media(add_media_request("a1", "email", true))
                .await,
            R::RoleDenied,
        );
        assert_fails(
            c.agents
                .remove_media(remove_media_request("a1", "chat"))
                .await,
            R::RoleDenied,
        );
        assert_fails(
            c.agents.set_ready(set_ready_request("a1", "chat")).await,
            R::RoleDenied,
        );
        assert_fails(
            c.agents
                .set_not_ready(set_not_ready_request("a1", "chat", None))
                .await,
            R::RoleDenied,
        );
        assert_fails(
            c.agents
                .change_media_state_reason(change_reason_request(
                    "a1",
                    "chat",
                    reason_code("break"),
                ))
                .await,
            R::RoleDenied,
        );
        let get = c
            .agents
            .get_agent(GetAgentRequest {
                agent_id: "a1".into(),
            })
            .await;
        assert_fails(get, R::RoleDenied);
        assert_fails(
            c.agents.get_platform(GetPlatformRequest {}).await,
            R::RoleDenied,
        );
    }
    // Nothing changed for a1, and an admin may use the switch.
    let agent = p.agent("a1").await;
    assert!(agent.logged_in);
    assert_eq!(agent.media.len(), 1);
    let mut admin = p.admin.clone();
    admin.agents.login(login_request("a5")).await.unwrap();
    p.server.stop().await;
}

#[tokio::test]
async fn login_reports_agent_login_and_a_second_login_is_refused() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;

    let agent = p
        .service
        .agents
        .login(login_request("a3"))
        .await
        .unwrap()
        .into_inner();
    let again = p.service.agents.login(login_request("a3")).await;
    let by_admin = p.admin.agents.login(login_request("a3")).await;

    assert!(agent.logged_in);
    assert_eq!(
        (agent.agent_id.as_str(), agent.place_id.as_str()),
        ("a3", "place-a3")
    );
    assert!(agent.media.is_empty());
    let failure = assert_fails(again, R::AlreadyLoggedIn);
    assert_eq!(
        failure.metadata.get("agent_id").map(String::as_str),
        Some("a3")
    );
    assert_fails(by_admin, R::AlreadyLoggedIn);
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert_eq!(kinds(&seen), ["AgentLogin"]);
    let Body::AgentLogin(login) = body(&seen[0]) else {
        unreachable!()
    };
    assert_eq!(login.agent, Some(agent_at("a3")));
    assert_eq!(seen[0].sequence, agent.sequence);
    p.server.stop().await;
}

#[tokio::test]
async fn logout_logs_the_agent_out() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;

    let agent = p
        .service
        .agents
        .logout(logout_request("a2", Some(reason_code("end-of-shift"))))
        .await
        .unwrap()
        .into_inner();

    assert!(!agent.logged_in);
    assert!(agent.media.is_empty());
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert_eq!(kinds(&seen), ["AgentLogout"]);
    let Body::AgentLogout(logout) = body(&seen[0]) else {
        unreachable!()
    };
    assert_eq!(logout.agent, Some(agent_at("a2")));
    // The configured reason, looked up by its code.
    assert_eq!(
        logout.reason.as_ref().map(|r| r.description.as_str()),
        Some("End of shift")
    );
    assert!(!p.agent("a2").await.logged_in);
    // Logged out, it may log in again.
    p.service.agents.login(login_request("a2")).await.unwrap();
    p.server.stop().await;
}

#[tokio::test]
async fn logout_is_refused_while_the_agent_owns_or_is_invited_to_anything() {
    let mut p = Parties::new().await;
    let handled = p.handling().await;
    let (invited, ticket) = p.invited("a1").await;
    let mut reporter = follow(&mut p.reporter).await;

    let result = p.service.agents.logout(logout_request("a1", None)).await;

    let failure = assert_fails(result, R::OngoingInteraction);
    let ids: BTreeSet<&str> = failure
        .metadata
        .get("interaction_ids")
        .expect("the ids in the metadata")
        .split(',')
        .collect();
    assert_eq!(ids, BTreeSet::from([handled.as_str(), invited.as_str()]));
    assert!(p.agent("a1").await.logged_in);
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert!(
        seen.is_empty(),
        "a refused logout emitted {:?}",
        kinds(&seen)
    );

    // Once it holds nothing, it may log out.
    p.a1.interactions
        .reject(reject_request(&invited, &ticket))
        .await
        .unwrap();
    p.a1.stop(&handled).await.unwrap();
    p.service
        .agents
        .logout(logout_request("a1", None))
        .await
        .unwrap();
    p.server.stop().await;
}

#[tokio::test]
async fn logout_needs_a_reason_where_the_platform_requires_one() {
    let mut p = Parties::on(roomy(PlatformConfig {
        logout_reason_required: Some(true),
        ..Default::default()
    }))
    .await;

    let missing = p.service.agents.logout(logout_request("a1", None)).await;
    let empty = p
        .service
        .agents
        .logout(logout_request("a1", Some(Reason::default())))
        .await;
    let unlisted = p
        .service
        .agents
        .logout(logout_request("a1", Some(reason_code("gone-fishing"))))
        .await;

    assert_fails(missing, R::LogoutReasonRequired);
    assert_fails(empty, R::LogoutReasonRequired);
    assert_fails(unlisted, R::ReasonNotAllowed);
    assert!(p.agent("a1").await.logged_in);
    let agent = p
        .service
        .agents
        .logout(logout_request("a1", Some(reason_code("break"))))
        .await
        .unwrap()
        .into_inner();
    assert!(!agent.logged_in);
    p.server.stop().await;
}

/// The contract: `LOGOUT_REASON_REQUIRED` — "metadata carries the allowed reasons" (what AF1 offers).
#[tokio::test]
async fn logout_reason_required_names_the_allowed_reasons() {
    let mut p = Parties::on(roomy(PlatformConfig {
        logout_reason_required: Some(true),
        ..Default::default()
    }))
    .await;

    let result = p.service.agents.logout(logout_request("a1", None)).await;

    let failure = assert_fails(result, R::LogoutReasonRequired);
    let offered: BTreeSet<&str> = failure
        .metadata
        .values()
        .flat_map(|v| v.split(','))
        .collect();
    for code in ["end-of-shift", "break"] {
        assert!(
            offered.contains(code),
            "the allowed reason `{code}` is not in the metadata {:?}",
            failure.metadata
        );
    }
    p.server.stop().await;
}

#[tokio::test]
async fn add_media_is_not_ready_with_the_default_reason_unless_ready() {
    let mut p = Parties::new().await;
    p.service.agents.login(login_request("a3")).await.unwrap();
    let mut reporter = follow(&mut p.reporter).await;

    let not_ready = p
        .service
        .agents
        .add_media(add_media_request("a3", "chat", false))
        .await
        .unwrap()
        .into_inner();
    let ready = p
        .service
        .agents
        .add_media(add_media_request("a3", "email", true))
        .await
        .unwrap()
        .into_inner();

    let default = domain::Platform::default().default_not_ready_reason;
    let chat = media_of(&not_ready, "chat");
    assert_eq!(chat.state(), AgentState::NotReady);
    assert_eq!(chat.reason.as_ref(), Some(&default));
    let email = media_of(&ready, "email");
    assert_eq!(email.state(), AgentState::Ready);
    assert_eq!(email.reason, None);
    assert_eq!(media_of(&ready, "chat").state(), AgentState::NotReady);
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert_eq!(kinds(&seen), ["MediaAdded", "MediaAdded"]);
    let Body::MediaAdded(added) = body(&seen[0]) else {
        unreachable!()
    };
    assert_eq!(added.media_type, "chat");
    assert_eq!(added.state(), AgentState::NotReady);
    assert_eq!(added.reason.as_ref(), Some(&default));
    assert_eq!(seen[1].sequence, ready.sequence);
    p.server.stop().await;
}

#[tokio::test]
async fn add_media_refuses_unknown_media_and_media_already_active() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;

    assert_invalid(
        p.service
            .agents
            .add_media(add_media_request("a1", "fax", true))
            .await,
        "media_type",
    );
    let twice = p
        .service
        .agents
        .add_media(add_media_request("a1", "chat", false))
        .await;
    let failure = assert_fails(twice, R::InvalidState);
    assert_eq!(
        failure.metadata.get("agent_id").map(String::as_str),
        Some("a1")
    );

    let fence = p.reporting_fence().await;
    assert!(agent_events(&reporter.until_fence(&fence).await).is_empty());
    assert_eq!(
        media_of(&p.agent("a1").await, "chat").state(),
        AgentState::Ready
    );
    p.server.stop().await;
}

#[tokio::test]
async fn remove_media_deactivates_an_active_media() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;

    let agent = p
        .service
        .agents
        .remove_media(remove_media_request("a1", "chat"))
        .await
        .unwrap()
        .into_inner();
    let again = p
        .service
        .agents
        .remove_media(remove_media_request("a1", "chat"))
        .await;

    assert!(agent.media.is_empty());
    assert!(agent.logged_in);
    assert_fails(again, R::InvalidState);
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert_eq!(kinds(&seen), ["MediaRemoved"]);
    let Body::MediaRemoved(removed) = body(&seen[0]) else {
        unreachable!()
    };
    assert_eq!(removed.media_type, "chat");
    // Without the media the agent cannot be invited.
    let id = p.routing().await;
    assert_fails(p.r1.deliver(&id, "a1").await, R::AgentNotAvailable);
    p.server.stop().await;
}

#[tokio::test]
async fn remove_media_is_refused_where_the_platform_cannot_deactivate_channels() {
    let mut p = Parties::on(roomy(PlatformConfig {
        channel_deactivation_supported: Some(false),
        ..Default::default()
    }))
    .await;

    let result = p
        .service
        .agents
        .remove_media(remove_media_request("a1", "chat"))
        .await;

    assert_fails(result, R::InvalidState);
    assert_eq!(
        media_of(&p.agent("a1").await, "chat").state(),
        AgentState::Ready
    );
    p.server.stop().await;
}

#[tokio::test]
async fn set_ready_makes_a_not_ready_media_ready() {
    let mut p = Parties::new().await;
    p.not_ready_agent("a3", &["chat"]).await;
    let mut reporter = follow(&mut p.reporter).await;

    let agent = p
        .service
        .agents
        .set_ready(set_ready_request("a3", "chat"))
        .await
        .unwrap()
        .into_inner();
    let inactive = p
        .service
        .agents
        .set_ready(set_ready_request("a3", "email"))
        .await;
    let logged_out = p
        .service
        .agents
        .set_ready(set_ready_request("a9", "chat"))
        .await;
    // Ready already: nothing to do, nothing emitted.
    let no_op = p
        .service
        .agents
        .set_ready(set_ready_request("a3", "chat"))
        .await
        .unwrap()
        .into_inner();

    let chat = media_of(&agent, "chat");
    assert_eq!(
        (chat.state(), chat.reason.as_ref()),
        (AgentState::Ready, None)
    );
    assert_fails(inactive, R::InvalidState);
    assert_fails(logged_out, R::AgentNotAvailable);
    assert_eq!(no_op.sequence, 0);
    assert_eq!(media_of(&no_op, "chat").state(), AgentState::Ready);
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert_eq!(kinds(&seen), ["ReadyForMedia"]);
    assert_eq!(seen[0].sequence, agent.sequence);
    p.server.stop().await;
}

#[tokio::test]
async fn set_not_ready_takes_a_listed_reason_and_refuses_others() {
    let mut p = Parties::new().await;
    let mut reporter = follow(&mut p.reporter).await;

    // A listed code: the configured reason is recorded, whatever text came with it.
    let listed = Reason {
        code: "break".into(),
        description: "my own words".into(),
        system_name: String::new(),
    };
    let agent = p
        .service
        .agents
        .set_not_ready(set_not_ready_request("a1", "chat", Some(listed)))
        .await
        .unwrap()
        .into_inner();
    let unlisted = p
        .service
        .agents
        .set_not_ready(set_not_ready_request(
            "a1",
            "chat",
            Some(reason_code("nap")),
        ))
        .await;
    let text = p
        .service
        .agents
        .set_not_ready(set_not_ready_request(
            "a1",
            "chat",
            Some(free_text("traffic")),
        ))
        .await;

    let chat = media_of(&agent, "chat");
    assert_eq!(chat.state(), AgentState::NotReady);
    let recorded = chat.reason.clone().unwrap();
    assert_eq!(
        (recorded.code.as_str(), recorded.description.as_str()),
        ("break", "Break")
    );
    let failure = assert_fails(unlisted, R::ReasonNotAllowed);
    assert_eq!(
        failure.metadata.get("code").map(String::as_str),
        Some("nap")
    );
    assert_fails(text, R::ReasonNotAllowed);
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert_eq!(kinds(&seen), ["NotReadyForMedia"]);
    let Body::NotReadyForMedia(not_ready) = body(&seen[0]) else {
        unreachable!()
    };
    assert_eq!(not_ready.reason.as_ref(), Some(&recorded));
    assert_eq!(
        media_of(&p.agent("a1").await, "chat").reason,
        Some(recorded)
    );
    p.server.stop().await;
}

#[tokio::test]
async fn set_not_ready_takes_free_text_where_the_platform_allows_it() {
    let mut p = Parties::on(roomy(PlatformConfig {
        free_text_reasons_allowed: Some(true),
        ..Default::default()
    }))
    .await;

    let agent = p
        .service
        .agents
        .set_not_ready(set_not_ready_request(
            "a1",
            "chat",
            Some(free_text("traffic")),
        ))
        .await
        .unwrap()
        .into_inner();
    let unlisted = p
        .service
        .agents
        .set_not_ready(set_not_ready_request(
            "a1",
            "chat",
            Some(reason_code("nap")),
        ))
        .await;

    let chat = media_of(&agent, "chat");
    assert_eq!(chat.state(), AgentState::NotReady);
    assert_eq!(chat.reason, Some(free_text("traffic")));
    // Free text is allowed; an unlisted code still is not.
    assert_fails(unlisted, R::ReasonNotAllowed);
    p.server.stop().await;
}

#[tokio::test]
async fn change_media_state_reason_applies_to_a_not_ready_media_only() {
    let mut p = Parties::new().await;
    p.not_ready_agent("a3", &["chat"]).await;
    let mut reporter = follow(&mut p.reporter).await;

    let agent = p
        .service
        .agents
        .change_media_state_reason(change_reason_request("a3", "chat", reason_code("lunch")))
        .await
        .unwrap()
        .into_inner();
    let on_ready = p
        .service
        .agents
        .change_media_state_reason(change_reason_request("a1", "chat", reason_code("lunch")))
        .await;
    let unlisted = p
        .service
        .agents
        .change_media_state_reason(change_reason_request("a3", "chat", reason_code("nap")))
        .await;

    let chat = media_of(&agent, "chat");
    assert_eq!(chat.state(), AgentState::NotReady);
    assert_eq!(chat.reason.as_ref().map(|r| r.code.as_str()), Some("lunch"));
    assert_fails(on_ready, R::InvalidState);
    assert_fails(unlisted, R::ReasonNotAllowed);
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert_eq!(kinds(&seen), ["MediaStateReasonChanged"]);
    let Body::MediaStateReasonChanged(changed) = body(&seen[0]) else {
        unreachable!()
    };
    assert_eq!(
        changed.reason.as_ref().map(|r| r.code.as_str()),
        Some("lunch")
    );
    assert_eq!(
        media_of(&p.agent("a1").await, "chat").state(),
        AgentState::Ready
    );
    p.server.stop().await;
}

#[tokio::test]
async fn get_agent_shows_the_load_and_what_the_agent_holds() {
    let mut p = Parties::new().await;
    let handled = p.handling().await;
    let (invited, _) = p.invited("a1").await;
    let submitted = p.a1.submit("", "chat").await.unwrap().interaction_id;

    let agent = p.agent("a1").await;

    assert!(agent.logged_in);
    assert_eq!(agent.place_id, "place-a1");
    let held: BTreeSet<&str> = agent.interaction_ids.iter().map(String::as_str).collect();
    assert_eq!(
        held,
        BTreeSet::from([handled.as_str(), invited.as_str(), submitted.as_str()])
    );
    let chat = media_of(&agent, "chat");
    assert_eq!((chat.load, chat.capacity), (3, 100));
    assert_eq!(chat.state(), AgentState::Ready);

    p.ms.stop(&handled).await.unwrap();
    let after = p.agent("a1").await;
    assert_eq!(media_of(&after, "chat").load, 2);
    assert!(!after.interaction_ids.contains(&handled));
    // An agent never seen is simply logged out.
    let unknown = p.agent("a9").await;
    assert!(!unknown.logged_in);
    assert!(unknown.media.is_empty() && unknown.interaction_ids.is_empty());
    // Another tenant's a1 is another agent, never seen.
    let mut foreign = p.server.client(Who::service().in_tenant("t2")).await;
    let elsewhere = foreign.get_agent("a1").await;
    assert!(!elsewhere.logged_in);
    assert!(elsewhere.interaction_ids.is_empty());
    p.server.stop().await;
}

#[tokio::test]
async fn get_platform_returns_the_configured_platform() {
    let config = PlatformConfig {
        logout_reason_required: Some(true),
        free_text_reasons_allowed: Some(true),
        channel_deactivation_supported: Some(false),
        logout_reasons: Some(vec![reason_config("home", "Going home")]),
        not_ready_reasons: Some(vec![
            reason_config("meeting", "Meeting"),
            reason_config("training", "Training"),
        ]),
        default_not_ready_reason: Some("training".into()),
        media_types: Some(vec!["chat".into(), "sms".into()]),
        default_capacity: Some(3),
        capacity: None,
        invite_timeout_ms: Some(12_000),
    };
    let mut p = Parties::on(platform(config)).await;

    let got = p
        .service
        .agents
        .get_platform(GetPlatformRequest {})
        .await
        .unwrap()
        .into_inner();

    let reason = |code: &str, description: &str| Reason {
        code: code.into(),
        description: description.into(),
        system_name: String::new(),
    };
    assert_eq!(
        got,
        Platform {
            logout_reason_required: true,
            free_text_reasons_allowed: true,
            channel_deactivation_supported: false,
            logout_reasons: vec![reason("home", "Going home")],
            not_ready_reasons: vec![reason("meeting", "Meeting"), reason("training", "Training")],
            default_not_ready_reason: Some(reason("training", "Training")),
            media_types: vec!["chat".into(), "sms".into()],
            default_capacity: 3,
            invite_timeout_ms: 12_000,
        }
    );
    let mut a1 = p.a1.clone();
    assert_fails(
        a1.agents.get_platform(GetPlatformRequest {}).await,
        R::RoleDenied,
    );
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Idempotency (AIP-155)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_retried_submit_returns_the_recorded_response_and_emits_nothing() {
    let mut p = Parties::new().await;
    let request = submit_request("q", "chat", &[("k", "v")]);

    let first =
        p.ms.interactions
            .submit(request.clone())
            .await
            .unwrap()
            .into_inner();
    let id = first.interaction.clone().unwrap().interaction_id;
    // The interaction moves on; a retry still answers what the first call answered.
    p.r1.pull("q", &id).await.unwrap();
    let retry =
        p.ms.interactions
            .submit(request.clone())
            .await
            .unwrap()
            .into_inner();

    assert_eq!(retry, first);
    let mut log = p.reporter.subscribe(0).await;
    let fence = p.reporting_fence().await;
    let submitted: Vec<Event> = log
        .until_fence(&fence)
        .await
        .into_iter()
        .filter(|e| is(&e.body, "InteractionSubmitted"))
        .collect();
    assert_eq!(submitted.len(), 1, "one submission in the whole log");
    assert_eq!(submitted[0].correlation_id, request.request_id);
    p.server.stop().await;
}

#[tokio::test]
async fn a_retried_stop_returns_the_same_ack_and_emits_nothing() {
    let mut p = Parties::new().await;
    let id = p.routing().await;
    let request = StopProcessingRequest {
        request_id: rid(),
        interaction_id: id.clone(),
        reason: reason("done"),
    };

    let first =
        p.ms.interactions
            .stop_processing(request.clone())
            .await
            .unwrap()
            .into_inner();
    let retry =
        p.ms.interactions
            .stop_processing(request)
            .await
            .unwrap()
            .into_inner();

    assert_eq!(
        retry, first,
        "a retry is answered the ack, not ALREADY_STOPPED"
    );
    let mut log = p.reporter.subscribe(0).await;
    let fence = p.reporting_fence().await;
    let seen = about(&log.until_fence(&fence).await, &id);
    let stops: Vec<&Event> = seen
        .iter()
        .filter(|e| is(&e.body, "ProcessingStopped"))
        .collect();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].sequence, first.sequence);
    // A new request (a new id) is a second stop, and is refused.
    assert_fails(p.ms.stop(&id).await, R::AlreadyStopped);
    p.server.stop().await;
}

#[tokio::test]
async fn a_retried_agent_login_returns_the_recorded_agent_and_emits_nothing() {
    let mut p = Parties::new().await;
    let request = login_request("a3");
    let mut reporter = follow(&mut p.reporter).await;

    let first = p
        .service
        .agents
        .login(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = p.service.agents.login(request).await.unwrap().into_inner();

    assert_eq!(
        retry, first,
        "a retry is answered the outcome, not ALREADY_LOGGED_IN"
    );
    let fence = p.reporting_fence().await;
    let seen = agent_events(&reporter.until_fence(&fence).await);
    assert_eq!(kinds(&seen), ["AgentLogin"]);
    p.server.stop().await;
}

#[tokio::test]
async fn an_outcome_is_kept_for_24_hours() {
    let mut p = Parties::new().await;
    let request = submit_request("q", "chat", &[]);
    let first =
        p.ms.interactions
            .submit(request.clone())
            .await
            .unwrap()
            .into_inner();

    p.server.clock.advance(Duration::from_secs(24 * 3_600));
    // Tokens last an hour: the retry carries a fresh one. Another request first lets the server
    // prune what it keeps no longer.
    let mut ms = p.server.client(Who::media_server("ms1")).await;
    ms.submit("q", "chat").await.unwrap();
    let retry = ms.interactions.submit(request).await.unwrap().into_inner();

    assert_eq!(retry, first);
    p.server.stop().await;
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_refused() {
    let mut p = Parties::new().await;
    let request = submit_request("q", "chat", &[]);
    p.ms.interactions.submit(request.clone()).await.unwrap();
    let mut reporter = follow(&mut p.reporter).await;

    let other = SubmitRequest {
        queue: "elsewhere".into(),
        ..request.clone()
    };
    let result = p.ms.interactions.submit(other).await;

    let failure = assert_fails(result, R::RequestIdReused);
    assert_eq!(failure.code, tonic::Code::AlreadyExists);
    assert_eq!(
        failure.metadata.get("request_id"),
        Some(&request.request_id)
    );
    let fence = p.reporting_fence().await;
    let seen = reporter.until_fence(&fence).await;
    assert!(seen.is_empty(), "a reused id emitted {:?}", kinds(&seen));
    p.server.stop().await;
}

#[tokio::test]
async fn a_failed_request_is_not_recorded_and_its_retry_runs_again() {
    let mut p = Parties::new().await;
    let mut a3 = p.server.client(Who::agent("a3")).await;
    let request = submit_request("", "chat", &[]);

    // Not logged in: refused, and nothing recorded under the id.
    assert_fails(
        a3.interactions.submit(request.clone()).await,
        R::AgentNotAvailable,
    );
    p.service.agents.login(login_request("a3")).await.unwrap();
    let retry = a3
        .interactions
        .submit(request.clone())
        .await
        .unwrap()
        .into_inner();

    let i = retry.interaction.unwrap();
    assert_eq!(i.state(), InteractionState::Handling);
    assert_eq!(i.owner, Some(agent_party("a3")));

    // The same for the switch: a refused logout runs again once the agent holds nothing.
    let logout = logout_request("a3", None);
    assert_fails(
        p.service.agents.logout(logout.clone()).await,
        R::OngoingInteraction,
    );
    a3.stop(&i.interaction_id).await.unwrap();
    let agent = p.service.agents.logout(logout).await.unwrap().into_inner();
    assert!(!agent.logged_in);
    p.server.stop().await;
}

#[tokio::test]
async fn identical_concurrent_requests_have_one_outcome() {
    let mut p = Parties::new().await;
    let request = submit_request("q", "chat", &[]);
    let (mut first, mut second) = (p.ms.clone(), p.ms.clone());

    let (one, two) = tokio::join!(
        first.interactions.submit(request.clone()),
        second.interactions.submit(request.clone())
    );

    let (one, two) = (one.unwrap().into_inner(), two.unwrap().into_inner());
    assert_eq!(one, two);
    let listed = all_pages(&mut p.reporter, 0, InteractionState::Queued).await;
    assert_eq!(listed.concat().len(), 1, "one interaction, not two");
    let mut log = p.reporter.subscribe(0).await;
    let fence = p.reporting_fence().await;
    let caused: Vec<Event> = log
        .until_fence(&fence)
        .await
        .into_iter()
        .filter(|e| e.correlation_id == request.request_id)
        .collect();
    assert_eq!(kinds(&caused), ["InteractionSubmitted"]);
    p.server.stop().await;
}

#[tokio::test]
async fn the_same_request_id_from_two_callers_is_two_requests() {
    let mut p = Parties::new().await;
    let request = submit_request("q", "chat", &[]);

    let one =
        p.ms.interactions
            .submit(request.clone())
            .await
            .unwrap()
            .into_inner();
    let two = p
        .ms2
        .interactions
        .submit(request.clone())
        .await
        .unwrap()
        .into_inner();

    let (one, two) = (one.interaction.unwrap(), two.interaction.unwrap());
    assert_ne!(one.interaction_id, two.interaction_id);
    assert_eq!(one.submitted_by, Some(Party::media_server("ms1")));
    assert_eq!(two.submitted_by, Some(Party::media_server("ms2")));
    let mut log = p.reporter.subscribe(0).await;
    let fence = p.reporting_fence().await;
    let caused: Vec<Event> = log
        .until_fence(&fence)
        .await
        .into_iter()
        .filter(|e| e.correlation_id == request.request_id)
        .collect();
    assert_eq!(
        kinds(&caused),
        ["InteractionSubmitted", "InteractionSubmitted"]
    );
    p.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Health and reflection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_answers_serving_without_a_token() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let p = Parties::new().await;
    let mut health = HealthClient::new(p.server.channel().await);

    for service in [
        "",
        "ixn.interaction.v1.InteractionService",
        "ixn.interaction.v1.AgentService",
        "ixn.events.v1.EventService",
    ] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("`{service}`: {s:?}"))
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "`{service}`");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    p.server.stop().await;
}

/// The services reflection lists, asked without a token.
async fn reflected_services(server: &TestServer) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a list of services: {answer:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn reflection_lists_the_contract_services_without_a_token() {
    let p = Parties::new().await;

    let services = reflected_services(&p.server).await;

    for expected in [
        "ixn.interaction.v1.InteractionService",
        "ixn.interaction.v1.AgentService",
        "ixn.events.v1.EventService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.contains(expected),
            "{expected} is not in {services:?}"
        );
    }
    p.server.stop().await;
}

/// Reflection advertises what this server serves: SessionService is session-service's.
#[tokio::test]
async fn reflection_lists_only_services_this_server_serves() {
    let p = Parties::new().await;

    let services = reflected_services(&p.server).await;

    assert!(
        !services.contains("ixn.session.v1.SessionService"),
        "interaction-server advertises a service it does not serve: {services:?}"
    );
    p.server.stop().await;
}
