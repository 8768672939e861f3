//! Tests of the pure domain core (`decide` and `State::evolve`), without I/O.
//!
//! - A [`World`] harness runs commands the way the engine does: `decide`, then fold each event with
//!   `evolve`, giving it the next log sequence, and keeps the log.
//! - Unit tests: a success and a refusal for every command, the contract's Stop Processing table
//!   (versions A–D, INVITED, QUEUED and the unsuccessful cases, event by event and party by party),
//!   invite timeouts, capacity, Ready/Not Ready, and the Logout refusals.
//! - A property test: random command sequences from random callers of two tenants, with time moving
//!   and invites expiring, checking the state's invariants after every step (a refusal changes
//!   nothing; phase, owner and invite agree; STOPPED is terminal; agents' holdings match; capacity;
//!   tenants are isolated; the log replays to the same state), and a check that the generator
//!   really reaches every command's success and refusal and a stop from every live phase.

use super::*;
use ixn_proto::event::{interaction_id as event_interaction_id, is_reporting, kind};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use prost::Message;
use std::collections::{BTreeSet, HashSet};

const T1: &str = "t1";
const T2: &str = "t2";
/// 2023-11-14T22:13:20Z, in microseconds.
const START: Micros = 1_700_000_000_000_000;
const INVITE_TIMEOUT_MS: i64 = 30_000;

// ---------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------

fn caller(tenant: &str, role: Role, sub: &str, agent_id: Option<&str>) -> Caller {
    Caller {
        tenant: tenant.to_owned(),
        role,
        sub: sub.to_owned(),
        agent_id: agent_id.map(str::to_owned),
    }
}

fn agent(tenant: &str, agent_id: &str) -> Caller {
    caller(
        tenant,
        Role::Agent,
        &format!("user-{agent_id}"),
        Some(agent_id),
    )
}

fn router(tenant: &str, router_id: &str) -> Caller {
    caller(tenant, Role::Router, router_id, None)
}

fn media_server(tenant: &str, server_id: &str) -> Caller {
    caller(tenant, Role::MediaServer, server_id, None)
}

fn admin(tenant: &str) -> Caller {
    caller(tenant, Role::Admin, "ops", None)
}

fn service(tenant: &str) -> Caller {
    caller(tenant, Role::Service, "session-service", None)
}

/// The place the harness logs every agent in at.
fn place(agent_id: &str) -> String {
    format!("place-{agent_id}")
}

fn agent_party(agent_id: &str) -> Party {
    Party::agent(agent_id, place(agent_id))
}

fn reason(code: &str) -> Reason {
    Reason {
        code: code.to_owned(),
        ..Reason::default()
    }
}

fn free_text(text: &str) -> Reason {
    Reason {
        description: text.to_owned(),
        ..Reason::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

fn submit(media: &str, queue: &str) -> Command {
    Command::Submit {
        media_type: media.to_owned(),
        queue: queue.to_owned(),
        properties: BTreeMap::new(),
    }
}

fn pull(queue: &str) -> Command {
    Command::Pull {
        queue: queue.to_owned(),
        media_type: None,
        interaction_id: None,
    }
}

fn pull_named(queue: &str, id: Uuid) -> Command {
    Command::Pull {
        queue: queue.to_owned(),
        media_type: None,
        interaction_id: Some(id),
    }
}

fn deliver(id: Uuid, agent_id: &str) -> Command {
    Command::Deliver {
        interaction_id: id,
        agent_id: agent_id.to_owned(),
        timeout_ms: 0,
    }
}

fn accept(id: Uuid, ticket: Uuid) -> Command {
    Command::Accept {
        interaction_id: id,
        ticket_id: ticket,
    }
}

fn reject(id: Uuid, ticket: Uuid) -> Command {
    Command::Reject {
        interaction_id: id,
        ticket_id: ticket,
        reason: Some(reason("busy")),
    }
}

fn stop(id: Uuid) -> Command {
    Command::StopProcessing {
        interaction_id: id,
        reason: Some(reason("done")),
    }
}

fn place_in_queue(id: Uuid, queue: &str) -> Command {
    Command::PlaceInQueue {
        interaction_id: id,
        queue: queue.to_owned(),
    }
}

fn change_properties(id: Uuid, changed: &[(&str, &str)], deleted: &[&str]) -> Command {
    Command::ChangeProperties {
        interaction_id: id,
        changed: changed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        deleted: deleted.iter().map(|k| (*k).to_owned()).collect(),
    }
}

fn login(agent_id: &str) -> Command {
    Command::AgentLogin {
        agent_id: agent_id.to_owned(),
        place_id: place(agent_id),
    }
}

fn logout(agent_id: &str, reason: Option<Reason>) -> Command {
    Command::AgentLogout {
        agent_id: agent_id.to_owned(),
        reason,
    }
}

fn add_media(agent_id: &str, media: &str, ready: bool, reason: Option<Reason>) -> Command {
    Command::AddMedia {
        agent_id: agent_id.to_owned(),
        media_type: media.to_owned(),
        ready,
        reason,
    }
}

fn remove_media(agent_id: &str, media: &str) -> Command {
    Command::RemoveMedia {
        agent_id: agent_id.to_owned(),
        media_type: media.to_owned(),
    }
}

fn set_ready(agent_id: &str, media: &str) -> Command {
    Command::SetReady {
        agent_id: agent_id.to_owned(),
        media_type: media.to_owned(),
    }
}

fn set_not_ready(agent_id: &str, media: &str, reason: Option<Reason>) -> Command {
    Command::SetNotReady {
        agent_id: agent_id.to_owned(),
        media_type: media.to_owned(),
        reason,
    }
}

fn change_reason(agent_id: &str, media: &str, reason: Reason) -> Command {
    Command::ChangeMediaStateReason {
        agent_id: agent_id.to_owned(),
        media_type: media.to_owned(),
        reason,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading events
// ---------------------------------------------------------------------------------------------

/// One event as a line: its kind, a detail for some kinds, and whom it is addressed to, e.g.
/// `Revoked(stopped) -> agent:a1@place-a1` or `PartyRemoved(router:r1)`.
fn describe(e: &Emitted) -> String {
    let detail = match &e.body {
        Body::PartyAdded(b) => b.party.as_ref().map(Party::label),
        Body::PartyRemoved(b) => b.party.as_ref().map(Party::label),
        Body::Revoked(b) => Some(b.cause.clone()),
        Body::InviteEnded(b) => ev::InviteOutcome::try_from(b.outcome)
            .ok()
            .map(|o| o.as_str_name().to_owned()),
        Body::ProcessingStopped(b) => b.stopped_by.as_ref().map(|p| format!("by {}", p.label())),
        _ => None,
    };
    let mut line = kind(&e.body).to_owned();
    if let Some(detail) = detail {
        line += &format!("({detail})");
    }
    if !e.to.is_empty() {
        let to: Vec<String> = e.to.iter().map(Party::label).collect();
        line += &format!(" -> {}", to.join(","));
    }
    line
}

fn describe_all(d: &Decision) -> Vec<String> {
    d.events.iter().map(describe).collect()
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// The domain with what the engine would add around it: a clock, ids, and the log.
struct World {
    state: State,
    platform: Platform,
    now: Micros,
    /// The last id handed out: ids are `Uuid::from_u128(1)`, `2`, …
    last_id: u128,
    seq: u64,
    log: Vec<(String, u64, Micros, Body)>,
}

impl World {
    fn new() -> World {
        World::with_platform(Platform::default())
    }

    fn with_platform(platform: Platform) -> World {
        World {
            state: State::default(),
            platform,
            now: START,
            last_id: 0,
            seq: 0,
            log: Vec::new(),
        }
    }

    /// Decides, and on success folds each event into the state with the next sequence.
    fn run(&mut self, caller: &Caller, command: &Command) -> Result<Decision, DomainError> {
        let last_id = &mut self.last_id;
        let mut new_id = || {
            *last_id += 1;
            Uuid::from_u128(*last_id)
        };
        let mut ctx = Ctx {
            now: self.now,
            platform: &self.platform,
            new_id: &mut new_id,
        };
        let decision = decide(&self.state, caller, command, &mut ctx)?;
        for e in &decision.events {
            self.seq += 1;
            // An event belongs to its interaction's tenant (the timer's events too), else the
            // caller's.
            let tenant = event_interaction_id(&e.body)
                .and_then(|id| id.parse::<Uuid>().ok())
                .and_then(|id| self.state.interactions.get(&id))
                .map_or_else(|| caller.tenant.clone(), |i| i.tenant.clone());
            self.state.evolve(&tenant, self.seq, self.now, &e.body);
            self.log.push((tenant, self.seq, self.now, e.body.clone()));
        }
        Ok(decision)
    }

    /// Runs a command that must succeed.
    #[track_caller]
    fn ok(&mut self, caller: &Caller, command: Command) -> Decision {
        match self.run(caller, &command) {
            Ok(d) => d,
            Err(e) => panic!("{command:?} by {caller:?} was refused: {e:?}"),
        }
    }

    /// Runs a command that must be refused, checking that the refusal changed nothing.
    #[track_caller]
    fn refused(&mut self, caller: &Caller, command: Command) -> DomainError {
        let before = self.state.clone();
        let logged = self.log.len();
        match self.run(caller, &command) {
            Ok(d) => panic!(
                "{command:?} by {caller:?} succeeded: {:?}",
                describe_all(&d)
            ),
            Err(e) => {
                assert_eq!(self.state, before, "a refused command changed the state");
                assert_eq!(self.log.len(), logged, "a refused command logged events");
                e
            }
        }
    }

    fn advance_ms(&mut self, ms: i64) {
        self.now += ms * 1_000;
    }

    /// The system's timer.
    fn expire_invites(&mut self) -> Decision {
        self.ok(&service(T1), Command::ExpireInvites)
    }

    /// Logs the agent in (as session-service does) and makes it Ready on each media.
    fn login_ready(&mut self, tenant: &str, agent_id: &str, media: &[&str]) {
        let svc = service(tenant);
        self.ok(&svc, login(agent_id));
        for m in media {
            self.ok(&svc, add_media(agent_id, m, true, None));
        }
    }

    #[track_caller]
    fn submit(&mut self, by: &Caller, media: &str, queue: &str) -> Uuid {
        match self.ok(by, submit(media, queue)).reply {
            Reply::Interaction(id) => id,
            other => panic!("Submit answered {other:?}"),
        }
    }

    /// An interaction submitted by media server `m1` into `q1`, pulled by the router.
    fn routing(&mut self, tenant: &str, router_id: &str, media: &str) -> Uuid {
        let id = self.submit(&media_server(tenant, "m1"), media, "q1");
        let d = self.ok(&router(tenant, router_id), pull_named("q1", id));
        assert_eq!(d.reply, Reply::Pulled(Some(id)));
        id
    }

    /// A routed interaction delivered to the agent: its id and the invite's ticket.
    fn invited(
        &mut self,
        tenant: &str,
        router_id: &str,
        media: &str,
        agent_id: &str,
    ) -> (Uuid, Uuid) {
        let id = self.routing(tenant, router_id, media);
        match self
            .ok(&router(tenant, router_id), deliver(id, agent_id))
            .reply
        {
            Reply::Invited { ticket_id, .. } => (id, ticket_id),
            other => panic!("Deliver answered {other:?}"),
        }
    }

    /// A routed interaction delivered to the agent and accepted.
    fn handling(&mut self, tenant: &str, router_id: &str, media: &str, agent_id: &str) -> Uuid {
        let (id, ticket) = self.invited(tenant, router_id, media, agent_id);
        self.ok(&agent(tenant, agent_id), accept(id, ticket));
        id
    }

    #[track_caller]
    fn interaction(&self, id: Uuid) -> &Interaction {
        self.state
            .interactions
            .get(&id)
            .unwrap_or_else(|| panic!("no interaction {id}"))
    }

    #[track_caller]
    fn agent(&self, tenant: &str, agent_id: &str) -> &Agent {
        self.state
            .agents
            .get(&AgentKey::new(tenant, agent_id))
            .unwrap_or_else(|| panic!("no agent {tenant}/{agent_id}"))
    }

    fn holding(&self, tenant: &str, agent_id: &str) -> Vec<Uuid> {
        self.state
            .agents
            .get(&AgentKey::new(tenant, agent_id))
            .map(|a| a.holding.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The state folded from the log alone, each event read back from its encoding as the store
    /// keeps it.
    fn replayed(&self) -> State {
        let mut state = State::default();
        for (tenant, seq, time, body) in &self.log {
            let stored = ev::Event {
                body: Some(body.clone()),
                ..ev::Event::default()
            }
            .encode_to_vec();
            let read = ev::Event::decode(stored.as_slice()).expect("an encoded event decodes");
            state.evolve(
                tenant,
                *seq,
                *time,
                read.body.as_ref().expect("the body survives"),
            );
        }
        state
    }

    #[track_caller]
    fn assert_stopped(&self, id: Uuid, by: &Party) {
        let i = self.interaction(id);
        assert_eq!(i.phase, Phase::Stopped);
        assert_eq!(i.owner, None);
        assert_eq!(i.invite, None);
        assert_eq!(i.stopped_by.as_ref(), Some(by));
        assert_eq!(i.stop_reason, Some(reason("done")));
        for a in self.state.agents.values() {
            assert!(
                !a.holding.contains_key(&id),
                "{} still holds {id}",
                a.agent_id
            );
        }
        assert_eq!(self.replayed(), self.state);
    }
}

// ---------------------------------------------------------------------------------------------
// Submit
// ---------------------------------------------------------------------------------------------

#[test]
fn a_media_server_submits_into_a_queue() {
    let mut w = World::new();
    let m1 = media_server(T1, "m1");
    let mut properties = BTreeMap::new();
    properties.insert("subject".to_owned(), "hello".to_owned());
    let d = w.ok(
        &m1,
        Command::Submit {
            media_type: "chat".into(),
            queue: "q1".into(),
            properties: properties.clone(),
        },
    );
    assert_eq!(describe_all(&d), ["InteractionSubmitted"]);
    let Reply::Interaction(id) = d.reply else {
        panic!("{:?}", d.reply)
    };
    let i = w.interaction(id);
    assert_eq!(i.phase, Phase::Queued);
    assert_eq!(i.owner, None);
    assert_eq!(i.tenant, T1);
    assert_eq!(i.queue, "q1");
    assert_eq!(i.submitted_by, Party::media_server("m1"));
    assert_eq!(i.properties, properties);
    assert_eq!(i.created, START);
    assert_eq!(
        w.state.queued(T1, "q1").map(|i| i.id).collect::<Vec<_>>(),
        [id]
    );
    assert_eq!(w.state.queued(T2, "q1").count(), 0);
}

#[test]
fn an_agent_that_submits_owns_it_at_once() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &[]);
    let d = w.ok(&agent(T1, "a1"), submit("email", "q1"));
    assert_eq!(
        describe_all(&d),
        ["InteractionSubmitted", "PartyAdded(agent:a1@place-a1)"]
    );
    let Reply::Interaction(id) = d.reply else {
        panic!("{:?}", d.reply)
    };
    let i = w.interaction(id);
    assert_eq!(i.phase, Phase::Handling);
    assert_eq!(i.owner, Some(agent_party("a1")));
    assert_eq!(w.holding(T1, "a1"), [id]);
    assert_eq!(w.state.queued(T1, "q1").count(), 0);
}

#[test]
fn an_agent_that_is_not_logged_in_cannot_submit() {
    let mut w = World::new();
    assert!(matches!(
        w.refused(&agent(T1, "a1"), submit("chat", "q1")),
        DomainError::AgentNotAvailable { agent_id, .. } if agent_id == "a1"
    ));
}

// ---------------------------------------------------------------------------------------------
// Pull
// ---------------------------------------------------------------------------------------------

#[test]
fn a_router_pulls_the_oldest_interaction_of_the_queue() {
    let mut w = World::new();
    let m1 = media_server(T1, "m1");
    let first = w.submit(&m1, "chat", "q1");
    let second = w.submit(&m1, "chat", "q1");
    w.submit(&m1, "chat", "q2");
    let d = w.ok(&router(T1, "r1"), pull("q1"));
    assert_eq!(d.reply, Reply::Pulled(Some(first)));
    assert_eq!(
        describe_all(&d),
        ["TakenFromQueue", "PartyAdded(router:r1)"]
    );
    let i = w.interaction(first);
    assert_eq!(i.phase, Phase::Routing);
    assert_eq!(i.owner, Some(Party::router("r1")));
    assert_eq!(
        w.state.queued(T1, "q1").map(|i| i.id).collect::<Vec<_>>(),
        [second]
    );
}

#[test]
fn an_agent_pulls_only_media_it_is_ready_on_and_becomes_owner() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["voice"]);
    let m1 = media_server(T1, "m1");
    let chat = w.submit(&m1, "chat", "q1");
    let voice = w.submit(&m1, "voice", "q1");
    let d = w.ok(&agent(T1, "a1"), pull("q1"));
    assert_eq!(d.reply, Reply::Pulled(Some(voice)));
    assert_eq!(
        describe_all(&d),
        ["TakenFromQueue", "PartyAdded(agent:a1@place-a1)"]
    );
    assert_eq!(w.interaction(voice).phase, Phase::Handling);
    assert_eq!(w.interaction(chat).phase, Phase::Queued);
    assert_eq!(w.holding(T1, "a1"), [voice]);
    // At capacity (1) on voice, the next pull finds nothing it may take.
    w.submit(&m1, "voice", "q1");
    let d = w.ok(&agent(T1, "a1"), pull("q1"));
    assert_eq!(d.reply, Reply::Pulled(None));
    assert!(d.events.is_empty());
}

#[test]
fn pulling_from_an_empty_queue_takes_nothing() {
    let mut w = World::new();
    let d = w.ok(&router(T1, "r1"), pull("q1"));
    assert_eq!(d.reply, Reply::Pulled(None));
    assert!(d.events.is_empty());
    assert_eq!(w.state, State::default());
}

#[test]
fn pulling_a_named_interaction_that_is_not_waiting_in_that_queue_is_refused() {
    let mut w = World::new();
    let r1 = router(T1, "r1");
    let id = w.submit(&media_server(T1, "m1"), "chat", "q1");
    assert!(matches!(
        w.refused(&r1, pull_named("q2", id)),
        DomainError::InvalidState {
            state: "QUEUED",
            ..
        }
    ));
    w.ok(&r1, pull_named("q1", id));
    assert!(matches!(
        w.refused(&router(T1, "r2"), pull_named("q1", id)),
        DomainError::InvalidState {
            state: "ROUTING",
            ..
        }
    ));
    let missing = Uuid::from_u128(999);
    assert_eq!(
        w.refused(&r1, pull_named("q1", missing)),
        DomainError::InteractionNotFound(missing)
    );
}

#[test]
fn another_tenants_queue_and_interactions_are_invisible_to_a_pull() {
    let mut w = World::new();
    let id = w.submit(&media_server(T1, "m1"), "chat", "q1");
    let r1_t2 = router(T2, "r1");
    assert_eq!(w.ok(&r1_t2, pull("q1")).reply, Reply::Pulled(None));
    assert_eq!(
        w.refused(&r1_t2, pull_named("q1", id)),
        DomainError::InteractionNotFound(id)
    );
}

#[test]
fn an_agent_pulling_a_named_interaction_at_capacity_is_not_available() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let a1 = agent(T1, "a1");
    w.submit(&a1, "chat", "q1");
    let id = w.submit(&media_server(T1, "m1"), "chat", "q1");
    assert!(matches!(
        w.refused(&a1, pull_named("q1", id)),
        DomainError::AgentNotAvailable { agent_id, .. } if agent_id == "a1"
    ));
}

/// The contract's order of checks: existence in the caller's tenant comes before the state of the
/// agent, so a Pull naming an interaction that does not exist (or was stopped) is answered so,
/// whether or not the pulling agent is logged in.
#[test]
fn a_pull_naming_a_missing_or_stopped_interaction_is_answered_so_before_agent_availability() {
    let mut w = World::new();
    let missing = Uuid::from_u128(999);
    let a1 = agent(T1, "a1");
    assert_eq!(
        w.refused(&a1, pull_named("q1", missing)),
        DomainError::InteractionNotFound(missing)
    );
    let m1 = media_server(T1, "m1");
    let id = w.submit(&m1, "chat", "q1");
    w.ok(&m1, stop(id));
    assert_eq!(
        w.refused(&a1, pull_named("q1", id)),
        DomainError::AlreadyStopped(id)
    );
}

// ---------------------------------------------------------------------------------------------
// Deliver
// ---------------------------------------------------------------------------------------------

#[test]
fn delivering_invites_the_agent_until_the_default_deadline() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let id = w.routing(T1, "r1", "chat");
    w.advance_ms(5);
    let d = w.ok(&router(T1, "r1"), deliver(id, "a1"));
    assert_eq!(
        describe_all(&d),
        ["Invite -> agent:a1@place-a1", "AgentInvited"]
    );
    let Reply::Invited { ticket_id, expires } = d.reply else {
        panic!("{:?}", d.reply)
    };
    assert_eq!(expires, w.now + INVITE_TIMEOUT_MS * 1_000);
    let Body::Invite(invite) = &d.events[0].body else {
        unreachable!()
    };
    assert_eq!(invite.ticket_id, ticket_id.to_string());
    assert_eq!(invite.expire_time, Some(timestamp(expires)));
    // The offer shows the interaction as it now is: INVITED, with this invite.
    let offered = invite
        .interaction
        .as_ref()
        .expect("the offer names the interaction");
    assert_eq!(
        offered.state(),
        ixn_proto::interaction::InteractionState::Invited
    );
    assert_eq!(
        offered.invite.as_ref().map(|i| i.ticket_id.as_str()),
        Some(ticket_id.to_string().as_str())
    );
    let i = w.interaction(id);
    assert_eq!(i.phase, Phase::Invited);
    assert_eq!(i.owner, Some(Party::router("r1")));
    assert_eq!(
        i.invite,
        Some(Invite {
            ticket: ticket_id,
            agent: AgentParty {
                agent_id: "a1".into(),
                place_id: place("a1"),
            },
            expires,
        })
    );
    assert_eq!(w.holding(T1, "a1"), [id]);
    assert_eq!(w.state.next_deadline(), Some(expires));
}

#[test]
fn a_deliver_may_ask_for_its_own_timeout() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let id = w.routing(T1, "r1", "chat");
    let d = w.ok(
        &router(T1, "r1"),
        Command::Deliver {
            interaction_id: id,
            agent_id: "a1".into(),
            timeout_ms: 2_500,
        },
    );
    assert!(matches!(d.reply, Reply::Invited { expires, .. } if expires == START + 2_500_000));
}

#[test]
fn only_the_owning_router_delivers_and_only_while_routing() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    w.login_ready(T1, "a2", &["chat"]);
    let id = w.routing(T1, "r1", "chat");
    assert_eq!(
        w.refused(&router(T1, "r2"), deliver(id, "a1")),
        DomainError::NotOwner(id)
    );
    assert_eq!(
        w.refused(&router(T2, "r1"), deliver(id, "a1")),
        DomainError::InteractionNotFound(id)
    );
    w.ok(&router(T1, "r1"), deliver(id, "a1"));
    assert!(matches!(
        w.refused(&router(T1, "r1"), deliver(id, "a2")),
        DomainError::InvalidState {
            state: "INVITED",
            ..
        }
    ));
}

#[test]
fn delivering_to_a_not_ready_or_logged_out_agent_is_refused() {
    let mut w = World::new();
    let r1 = router(T1, "r1");
    let id = w.routing(T1, "r1", "chat");
    // Never logged in.
    assert!(matches!(
        w.refused(&r1, deliver(id, "a1")),
        DomainError::AgentNotAvailable { agent_id, .. } if agent_id == "a1"
    ));
    // Logged in, Not Ready on chat.
    w.ok(&service(T1), login("a1"));
    w.ok(&service(T1), add_media("a1", "chat", false, None));
    assert!(matches!(
        w.refused(&r1, deliver(id, "a1")),
        DomainError::AgentNotAvailable { .. }
    ));
    // Ready, but on another media.
    w.ok(&service(T1), add_media("a1", "voice", true, None));
    assert!(matches!(
        w.refused(&r1, deliver(id, "a1")),
        DomainError::AgentNotAvailable { .. }
    ));
    // Logged in and Ready in another tenant only.
    w.login_ready(T2, "a2", &["chat"]);
    assert!(matches!(
        w.refused(&r1, deliver(id, "a2")),
        DomainError::AgentNotAvailable { .. }
    ));
    w.ok(&service(T1), set_ready("a1", "chat"));
    w.ok(&r1, deliver(id, "a1"));
}

#[test]
fn delivering_to_an_agent_at_capacity_is_refused_until_capacity_is_raised() {
    for capacity in [1, 2] {
        let mut platform = Platform::default();
        platform.capacity.insert("chat".into(), capacity);
        let mut w = World::with_platform(platform);
        w.login_ready(T1, "a1", &["chat"]);
        // One invite pending counts towards the load.
        w.invited(T1, "r1", "chat", "a1");
        let id = w.routing(T1, "r1", "chat");
        let result = w.run(&router(T1, "r1"), &deliver(id, "a1"));
        if capacity == 1 {
            assert!(
                matches!(&result, Err(DomainError::AgentNotAvailable { agent_id, .. }) if agent_id == "a1"),
                "{result:?}"
            );
            assert_eq!(w.interaction(id).phase, Phase::Routing);
        } else {
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(w.agent(T1, "a1").load("chat"), 2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accept and Reject
// ---------------------------------------------------------------------------------------------

#[test]
fn accepting_hands_the_interaction_from_router_to_agent() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let (id, ticket) = w.invited(T1, "r1", "chat", "a1");
    let d = w.ok(&agent(T1, "a1"), accept(id, ticket));
    assert_eq!(
        describe_all(&d),
        [
            "InviteEnded(INVITE_OUTCOME_ACCEPTED) -> router:r1",
            "PartyRemoved(router:r1)",
            "PartyAdded(agent:a1@place-a1)",
        ]
    );
    assert_eq!(d.reply, Reply::Interaction(id));
    let i = w.interaction(id);
    assert_eq!(i.phase, Phase::Handling);
    assert_eq!(i.owner, Some(agent_party("a1")));
    assert_eq!(i.invite, None);
    assert_eq!(w.holding(T1, "a1"), [id]);
    assert_eq!(w.state.next_deadline(), None);
    // An answered ticket is gone.
    assert_eq!(
        w.refused(&agent(T1, "a1"), accept(id, ticket)),
        DomainError::InviteNotFound(ticket)
    );
}

#[test]
fn only_the_invited_agent_accepts_its_own_ticket() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    w.login_ready(T1, "a2", &["chat"]);
    let (id, ticket) = w.invited(T1, "r1", "chat", "a1");
    assert_eq!(
        w.refused(&agent(T1, "a2"), accept(id, ticket)),
        DomainError::NotOwner(id)
    );
    let wrong = Uuid::from_u128(999);
    assert_eq!(
        w.refused(&agent(T1, "a1"), accept(id, wrong)),
        DomainError::InviteNotFound(wrong)
    );
    assert_eq!(
        w.refused(&agent(T2, "a1"), accept(id, ticket)),
        DomainError::InteractionNotFound(id)
    );
}

#[test]
fn accepting_after_the_deadline_is_refused_even_before_the_timer_fires() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let (id, ticket) = w.invited(T1, "r1", "chat", "a1");
    w.advance_ms(INVITE_TIMEOUT_MS);
    assert_eq!(
        w.refused(&agent(T1, "a1"), accept(id, ticket)),
        DomainError::InviteNotFound(ticket)
    );
    assert_eq!(
        w.refused(&agent(T1, "a1"), reject(id, ticket)),
        DomainError::InviteNotFound(ticket)
    );
    assert_eq!(w.interaction(id).phase, Phase::Invited);
}

#[test]
fn rejecting_gives_the_interaction_back_to_the_router() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    w.login_ready(T1, "a2", &["chat"]);
    let (id, ticket) = w.invited(T1, "r1", "chat", "a1");
    let d = w.ok(&agent(T1, "a1"), reject(id, ticket));
    assert_eq!(
        describe_all(&d),
        [
            "InviteEnded(INVITE_OUTCOME_REJECTED) -> router:r1",
            "Rejected"
        ]
    );
    assert_eq!(d.reply, Reply::Ack(id));
    let i = w.interaction(id);
    assert_eq!(i.phase, Phase::Routing);
    assert_eq!(i.owner, Some(Party::router("r1")));
    assert_eq!(i.invite, None);
    assert!(w.holding(T1, "a1").is_empty());
    // The router may deliver again.
    w.ok(&router(T1, "r1"), deliver(id, "a2"));
}

#[test]
fn rejecting_someone_elses_or_an_unknown_ticket_is_refused() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let (id, ticket) = w.invited(T1, "r1", "chat", "a1");
    assert_eq!(
        w.refused(&agent(T1, "a2"), reject(id, ticket)),
        DomainError::NotOwner(id)
    );
    let wrong = Uuid::from_u128(999);
    assert_eq!(
        w.refused(&agent(T1, "a1"), reject(id, wrong)),
        DomainError::InviteNotFound(wrong)
    );
}

// ---------------------------------------------------------------------------------------------
// Stop Processing (seed 000): who receives what
// ---------------------------------------------------------------------------------------------

#[test]
fn stop_version_a_the_media_server_stops_while_an_agent_handles() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let id = w.handling(T1, "r1", "chat", "a1");
    let d = w.ok(&media_server(T1, "m1"), stop(id));
    assert_eq!(
        describe_all(&d),
        [
            "Revoked(stopped) -> agent:a1@place-a1",
            "PartyRemoved(agent:a1@place-a1)",
            "ProcessingStopped(by media-server:m1)",
        ]
    );
    assert_eq!(d.reply, Reply::Ack(id));
    assert!(
        d.events
            .iter()
            .all(|e| e.actor == Party::media_server("m1"))
    );
    w.assert_stopped(id, &Party::media_server("m1"));
}

#[test]
fn stop_version_b_the_media_server_stops_while_a_router_routes() {
    let mut w = World::new();
    let id = w.routing(T1, "r1", "chat");
    let d = w.ok(&media_server(T1, "m1"), stop(id));
    assert_eq!(
        describe_all(&d),
        [
            "Abandoned -> router:r1",
            "PartyRemoved(router:r1)",
            "ProcessingStopped(by media-server:m1)",
        ]
    );
    let Body::Abandoned(abandoned) = &d.events[0].body else {
        unreachable!()
    };
    assert_eq!(abandoned.interaction_id, id.to_string());
    assert_eq!(abandoned.reason, Some(reason("done")));
    assert_eq!(d.reply, Reply::Ack(id));
    w.assert_stopped(id, &Party::media_server("m1"));
}

#[test]
fn stop_version_c_the_owning_agent_stops() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let id = w.handling(T1, "r1", "chat", "a1");
    let d = w.ok(&agent(T1, "a1"), stop(id));
    assert_eq!(
        describe_all(&d),
        [
            "Revoked(stopped) -> agent:a1@place-a1",
            "PartyRemoved(agent:a1@place-a1)",
            "ProcessingStopped(by agent:a1@place-a1)",
        ]
    );
    assert_eq!(d.reply, Reply::Ack(id));
    w.assert_stopped(id, &agent_party("a1"));
    // The agent is free again.
    w.invited(T1, "r1", "chat", "a1");
}

#[test]
fn stop_version_d_the_owning_router_stops_and_hears_only_the_ack() {
    let mut w = World::new();
    let id = w.routing(T1, "r1", "chat");
    let d = w.ok(&router(T1, "r1"), stop(id));
    assert_eq!(
        describe_all(&d),
        ["PartyRemoved(router:r1)", "ProcessingStopped(by router:r1)"]
    );
    assert!(d.events.iter().all(|e| e.to.is_empty()));
    assert_eq!(d.reply, Reply::Ack(id));
    w.assert_stopped(id, &Party::router("r1"));
}

#[test]
fn stop_while_invited_by_the_media_server_revokes_the_invite_and_abandons_the_router() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let (id, ticket) = w.invited(T1, "r1", "chat", "a1");
    let d = w.ok(&media_server(T1, "m1"), stop(id));
    assert_eq!(
        describe_all(&d),
        [
            "Revoked(stopped) -> agent:a1@place-a1",
            "Abandoned -> router:r1",
            "PartyRemoved(router:r1)",
            "ProcessingStopped(by media-server:m1)",
        ]
    );
    let Body::Revoked(revoked) = &d.events[0].body else {
        unreachable!()
    };
    assert_eq!(revoked.ticket_id, ticket.to_string());
    w.assert_stopped(id, &Party::media_server("m1"));
    assert_eq!(w.state.next_deadline(), None);
    // The timer has nothing left to do.
    w.advance_ms(INVITE_TIMEOUT_MS);
    assert!(w.expire_invites().events.is_empty());
}

#[test]
fn stop_while_invited_by_the_router_revokes_the_invite_only() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let (id, _) = w.invited(T1, "r1", "chat", "a1");
    let d = w.ok(&router(T1, "r1"), stop(id));
    assert_eq!(
        describe_all(&d),
        [
            "Revoked(stopped) -> agent:a1@place-a1",
            "PartyRemoved(router:r1)",
            "ProcessingStopped(by router:r1)",
        ]
    );
    w.assert_stopped(id, &Party::router("r1"));
}

#[test]
fn stop_while_queued_only_reports_it() {
    for by in [media_server(T1, "m1"), admin(T1)] {
        let mut w = World::new();
        let id = w.submit(&media_server(T1, "m1"), "chat", "q1");
        let d = w.ok(&by, stop(id));
        assert_eq!(d.events.len(), 1);
        assert_eq!(kind(&d.events[0].body), "ProcessingStopped");
        assert!(d.events[0].to.is_empty());
        w.assert_stopped(id, &w.state.party_of(&by));
        assert_eq!(w.state.queued(T1, "q1").count(), 0);
    }
}

#[test]
fn stop_by_an_admin_tells_the_owner_as_in_versions_a_and_b() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    w.login_ready(T1, "a2", &["chat"]);
    let handled = w.handling(T1, "r1", "chat", "a1");
    let routed = w.routing(T1, "r2", "chat");
    let (invited, _) = w.invited(T1, "r1", "chat", "a2");
    let d = w.ok(&admin(T1), stop(handled));
    assert_eq!(
        describe_all(&d),
        [
            "Revoked(stopped) -> agent:a1@place-a1",
            "PartyRemoved(agent:a1@place-a1)",
            "ProcessingStopped(by admin:ops)",
        ]
    );
    let d = w.ok(&admin(T1), stop(routed));
    assert_eq!(
        describe_all(&d),
        [
            "Abandoned -> router:r2",
            "PartyRemoved(router:r2)",
            "ProcessingStopped(by admin:ops)",
        ]
    );
    let d = w.ok(&admin(T1), stop(invited));
    assert_eq!(
        describe_all(&d),
        [
            "Revoked(stopped) -> agent:a2@place-a2",
            "Abandoned -> router:r1",
            "PartyRemoved(router:r1)",
            "ProcessingStopped(by admin:ops)",
        ]
    );
    w.assert_stopped(handled, &Party::admin("ops"));
    w.assert_stopped(routed, &Party::admin("ops"));
    w.assert_stopped(invited, &Party::admin("ops"));
}

#[test]
fn stopping_an_unknown_interaction_is_not_found() {
    let mut w = World::new();
    let missing = Uuid::from_u128(999);
    assert_eq!(
        w.refused(&admin(T1), stop(missing)),
        DomainError::InteractionNotFound(missing)
    );
}

#[test]
fn stopping_twice_is_already_stopped_whoever_asks() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let id = w.handling(T1, "r1", "chat", "a1");
    w.ok(&agent(T1, "a1"), stop(id));
    for by in [
        agent(T1, "a1"),
        agent(T1, "a2"),
        media_server(T1, "m1"),
        media_server(T1, "m2"),
        router(T1, "r2"),
        admin(T1),
    ] {
        assert_eq!(w.refused(&by, stop(id)), DomainError::AlreadyStopped(id));
    }
    // Another tenant still does not see it at all.
    assert_eq!(
        w.refused(&admin(T2), stop(id)),
        DomainError::InteractionNotFound(id)
    );
}

#[test]
fn stopping_without_entitlement_is_not_owner() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    w.login_ready(T1, "a2", &["chat"]);
    let handled = w.handling(T1, "r1", "chat", "a1");
    let (invited, _) = w.invited(T1, "r1", "chat", "a2");
    for (by, id) in [
        (agent(T1, "a2"), handled),
        (media_server(T1, "m2"), handled),
        (router(T1, "r1"), handled),
        // The invited agent is not the owner.
        (agent(T1, "a2"), invited),
        (router(T1, "r2"), invited),
        (media_server(T1, "m2"), invited),
    ] {
        assert_eq!(
            w.refused(&by, stop(id)),
            DomainError::NotOwner(id),
            "{by:?}"
        );
    }
}

#[test]
fn stopping_another_tenants_interaction_is_not_found() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let id = w.handling(T1, "r1", "chat", "a1");
    for by in [
        media_server(T2, "m1"),
        agent(T2, "a1"),
        router(T2, "r1"),
        admin(T2),
    ] {
        assert_eq!(
            w.refused(&by, stop(id)),
            DomainError::InteractionNotFound(id)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// PlaceInQueue
// ---------------------------------------------------------------------------------------------

#[test]
fn the_owning_agent_places_it_back_at_the_end_of_a_queue() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let id = w.handling(T1, "r1", "chat", "a1");
    let waiting = w.submit(&media_server(T1, "m1"), "chat", "q2");
    let d = w.ok(&agent(T1, "a1"), place_in_queue(id, "q2"));
    assert_eq!(
        describe_all(&d),
        ["PartyRemoved(agent:a1@place-a1)", "PlacedInQueue"]
    );
    assert_eq!(d.reply, Reply::Ack(id));
    let i = w.interaction(id);
    assert_eq!(i.phase, Phase::Queued);
    assert_eq!(i.owner, None);
    assert_eq!(i.queue, "q2");
    assert!(w.holding(T1, "a1").is_empty());
    assert_eq!(
        w.state.queued(T1, "q2").map(|i| i.id).collect::<Vec<_>>(),
        [waiting, id]
    );
    assert_eq!(w.replayed(), w.state);
}

#[test]
fn the_router_places_an_invited_interaction_in_a_queue_revoking_the_invite() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let (id, _) = w.invited(T1, "r1", "chat", "a1");
    let d = w.ok(&router(T1, "r1"), place_in_queue(id, "q1"));
    assert_eq!(
        describe_all(&d),
        [
            "Revoked(placed-in-queue) -> agent:a1@place-a1",
            "PartyRemoved(router:r1)",
            "PlacedInQueue",
        ]
    );
    let i = w.interaction(id);
    assert_eq!(
        (i.phase, &i.owner, &i.invite),
        (Phase::Queued, &None, &None)
    );
    assert!(w.holding(T1, "a1").is_empty());
    assert_eq!(w.state.next_deadline(), None);
}

#[test]
fn placing_in_queue_needs_the_owner_and_a_processed_interaction() {
    let mut w = World::new();
    let id = w.routing(T1, "r1", "chat");
    assert_eq!(
        w.refused(&router(T1, "r2"), place_in_queue(id, "q1")),
        DomainError::NotOwner(id)
    );
    // An admin may, and then it is already queued.
    w.ok(&admin(T1), place_in_queue(id, "q1"));
    assert!(matches!(
        w.refused(&admin(T1), place_in_queue(id, "q2")),
        DomainError::InvalidState {
            state: "QUEUED",
            ..
        }
    ));
}

// ---------------------------------------------------------------------------------------------
// ChangeProperties
// ---------------------------------------------------------------------------------------------

#[test]
fn the_submitter_changes_and_deletes_properties() {
    let mut w = World::new();
    let m1 = media_server(T1, "m1");
    let id = w.submit(&m1, "chat", "q1");
    w.ok(&m1, change_properties(id, &[("a", "1"), ("b", "2")], &[]));
    let d = w.ok(&m1, change_properties(id, &[("c", "3")], &["a"]));
    assert_eq!(describe_all(&d), ["PropertiesChanged"]);
    assert_eq!(d.reply, Reply::Interaction(id));
    let expected: BTreeMap<String, String> = [("b", "2"), ("c", "3")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(w.interaction(id).properties, expected);
    assert_eq!(w.replayed(), w.state);
}

#[test]
fn changing_properties_needs_entitlement_and_stays_within_the_limits() {
    let mut w = World::new();
    let id = w.routing(T1, "r1", "chat");
    assert_eq!(
        w.refused(
            &media_server(T1, "m2"),
            change_properties(id, &[("a", "1")], &[])
        ),
        DomainError::NotOwner(id)
    );
    assert_eq!(
        w.refused(&router(T1, "r2"), change_properties(id, &[("a", "1")], &[])),
        DomainError::NotOwner(id)
    );
    w.ok(&router(T1, "r1"), change_properties(id, &[("a", "1")], &[]));
    let too_many: Vec<(String, String)> = (0..crate::limits::MAX_PROPERTIES)
        .map(|n| (format!("k{n}"), "v".to_owned()))
        .collect();
    let too_many: Vec<(&str, &str)> = too_many
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // 64 new keys and the existing "a": one too many in all.
    assert!(matches!(
        w.refused(&router(T1, "r1"), change_properties(id, &too_many, &[])),
        DomainError::InvalidArgument { .. }
    ));
    // Deleting "a" in the same request makes room.
    w.ok(&router(T1, "r1"), change_properties(id, &too_many, &["a"]));
    assert_eq!(
        w.interaction(id).properties.len(),
        crate::limits::MAX_PROPERTIES
    );
}

// ---------------------------------------------------------------------------------------------
// ExpireInvites
// ---------------------------------------------------------------------------------------------

#[test]
fn an_invite_past_its_deadline_is_revoked_and_the_router_told() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let (id, ticket) = w.invited(T1, "r1", "chat", "a1");
    w.advance_ms(INVITE_TIMEOUT_MS);
    let d = w.expire_invites();
    assert_eq!(
        describe_all(&d),
        [
            "Revoked(invite-timeout) -> agent:a1@place-a1",
            "InviteEnded(INVITE_OUTCOME_TIMED_OUT) -> router:r1",
        ]
    );
    assert!(
        d.events
            .iter()
            .all(|e| e.actor == Party::system("invite-timeout"))
    );
    let Body::Revoked(revoked) = &d.events[0].body else {
        unreachable!()
    };
    assert_eq!(revoked.ticket_id, ticket.to_string());
    let i = w.interaction(id);
    assert_eq!(i.phase, Phase::Routing);
    assert_eq!(i.owner, Some(Party::router("r1")));
    assert_eq!(i.invite, None);
    assert!(w.holding(T1, "a1").is_empty());
    assert_eq!(w.state.next_deadline(), None);
    // Done once: the timer finds nothing more, and the agent may be invited again.
    assert!(w.expire_invites().events.is_empty());
    w.ok(&router(T1, "r1"), deliver(id, "a1"));
    assert_eq!(w.replayed(), w.state);
}

#[test]
fn expiring_before_the_deadline_does_nothing() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    let (id, ticket) = w.invited(T1, "r1", "chat", "a1");
    w.advance_ms(INVITE_TIMEOUT_MS - 1);
    let before = w.state.clone();
    let d = w.expire_invites();
    assert!(d.events.is_empty());
    assert_eq!(d.reply, Reply::Nothing);
    assert_eq!(w.state, before);
    w.ok(&agent(T1, "a1"), accept(id, ticket));
}

#[test]
fn invites_expire_in_deadline_order_across_tenants() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    w.login_ready(T2, "a1", &["chat"]);
    let (late, _) = w.invited(T1, "r1", "chat", "a1");
    w.advance_ms(-1);
    let (early, _) = w.invited(T2, "r1", "chat", "a1");
    w.advance_ms(INVITE_TIMEOUT_MS + 1);
    let d = w.expire_invites();
    let ids: Vec<&str> = d
        .events
        .iter()
        .filter_map(|e| event_interaction_id(&e.body))
        .collect();
    let (early, late) = (early.to_string(), late.to_string());
    assert_eq!(
        ids,
        [early.as_str(), early.as_str(), late.as_str(), late.as_str()]
    );
    assert!(w.holding(T1, "a1").is_empty());
    assert!(w.holding(T2, "a1").is_empty());
    assert_eq!(w.replayed(), w.state);
}

// ---------------------------------------------------------------------------------------------
// AgentService: login, logout, media and Ready state
// ---------------------------------------------------------------------------------------------

#[test]
fn an_agent_logs_in_once_per_tenant() {
    let mut w = World::new();
    let d = w.ok(&service(T1), login("a1"));
    assert_eq!(describe_all(&d), ["AgentLogin"]);
    assert_eq!(d.reply, Reply::Agent(AgentKey::new(T1, "a1")));
    let a = w.agent(T1, "a1");
    assert!(a.logged_in);
    assert_eq!(a.place_id, place("a1"));
    assert!(a.media.is_empty());
    assert_eq!(
        w.refused(&admin(T1), login("a1")),
        DomainError::AlreadyLoggedIn("a1".into())
    );
    // The same agent id in another tenant is another agent.
    w.ok(&service(T2), login("a1"));
}

#[test]
fn logging_out_clears_the_agents_media() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat", "voice"]);
    let d = w.ok(&service(T1), logout("a1", Some(reason("end-of-shift"))));
    assert_eq!(describe_all(&d), ["AgentLogout"]);
    let Body::AgentLogout(b) = &d.events[0].body else {
        unreachable!()
    };
    // The configured reason, not merely the code sent.
    assert_eq!(
        b.reason.as_ref().map(|r| r.description.as_str()),
        Some("End of shift")
    );
    let a = w.agent(T1, "a1");
    assert!(!a.logged_in);
    assert!(a.media.is_empty());
    assert!(matches!(
        w.refused(&service(T1), logout("a1", None)),
        DomainError::AgentNotAvailable { .. }
    ));
    // Logged in again, it starts with no media.
    w.ok(&service(T1), login("a1"));
    assert!(w.agent(T1, "a1").media.is_empty());
}

#[test]
fn logout_is_refused_while_the_agent_owns_or_is_invited_to_something() {
    let mut w = World::new();
    w.platform.capacity.insert("chat".into(), 3);
    w.login_ready(T1, "a1", &["chat"]);
    let handled = w.handling(T1, "r1", "chat", "a1");
    let (invited, _) = w.invited(T1, "r1", "chat", "a1");
    let mut ids = vec![handled, invited];
    ids.sort();
    assert_eq!(
        w.refused(&service(T1), logout("a1", None)),
        DomainError::OngoingInteraction {
            agent_id: "a1".into(),
            interaction_ids: ids,
        }
    );
    w.ok(&agent(T1, "a1"), stop(handled));
    assert_eq!(
        w.refused(&service(T1), logout("a1", None)),
        DomainError::OngoingInteraction {
            agent_id: "a1".into(),
            interaction_ids: vec![invited],
        }
    );
    let ticket = w
        .interaction(invited)
        .invite
        .as_ref()
        .expect("invited")
        .ticket;
    w.ok(&agent(T1, "a1"), accept(invited, ticket));
    w.ok(&agent(T1, "a1"), stop(invited));
    w.ok(&service(T1), logout("a1", None));
}

#[test]
fn a_platform_that_requires_a_logout_reason_refuses_a_logout_without_one() {
    let mut w = World::new();
    w.platform.logout_reason_required = true;
    w.login_ready(T1, "a1", &["chat"]);
    for missing in [None, Some(Reason::default())] {
        assert_eq!(
            w.refused(&service(T1), logout("a1", missing)),
            DomainError::LogoutReasonRequired {
                allowed: vec!["end-of-shift".into(), "break".into()],
            }
        );
    }
    assert_eq!(
        w.refused(&service(T1), logout("a1", Some(reason("lunch")))),
        DomainError::ReasonNotAllowed("lunch".into())
    );
    assert_eq!(
        w.refused(&service(T1), logout("a1", Some(free_text("tired")))),
        DomainError::ReasonNotAllowed(String::new())
    );
    w.ok(&service(T1), logout("a1", Some(reason("break"))));
    assert!(!w.agent(T1, "a1").logged_in);
}

#[test]
fn adding_media_ready_or_not_ready_with_the_default_reason() {
    let mut w = World::new();
    w.ok(&service(T1), login("a1"));
    let d = w.ok(&service(T1), add_media("a1", "chat", false, None));
    assert_eq!(describe_all(&d), ["MediaAdded"]);
    w.ok(&admin(T1), add_media("a1", "voice", true, None));
    w.ok(
        &admin(T1),
        add_media("a1", "email", false, Some(reason("lunch"))),
    );
    let media = &w.agent(T1, "a1").media;
    assert_eq!(
        media["chat"],
        Media {
            ready: false,
            reason: Some(w.platform.default_not_ready_reason.clone())
        }
    );
    assert_eq!(
        media["voice"],
        Media {
            ready: true,
            reason: None
        }
    );
    assert_eq!(
        media["email"].reason.as_ref().map(|r| r.code.as_str()),
        Some("lunch")
    );
}

#[test]
fn adding_media_twice_or_to_a_logged_out_agent_or_with_an_unlisted_reason_is_refused() {
    let mut w = World::new();
    assert!(matches!(
        w.refused(&service(T1), add_media("a1", "chat", true, None)),
        DomainError::AgentNotAvailable { .. }
    ));
    w.login_ready(T1, "a1", &["chat"]);
    assert!(matches!(
        w.refused(&service(T1), add_media("a1", "chat", false, None)),
        DomainError::AgentState { .. }
    ));
    assert_eq!(
        w.refused(
            &service(T1),
            add_media("a1", "voice", false, Some(reason("nap")))
        ),
        DomainError::ReasonNotAllowed("nap".into())
    );
}

#[test]
fn removing_media_deactivates_the_channel() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat", "voice"]);
    let d = w.ok(&service(T1), remove_media("a1", "chat"));
    assert_eq!(describe_all(&d), ["MediaRemoved"]);
    assert_eq!(
        w.agent(T1, "a1").media.keys().collect::<Vec<_>>(),
        ["voice"]
    );
    assert!(matches!(
        w.refused(&service(T1), remove_media("a1", "chat")),
        DomainError::AgentState { .. }
    ));
}

#[test]
fn removing_media_is_refused_where_the_platform_cannot_deactivate_channels() {
    let mut w = World::new();
    w.platform.channel_deactivation_supported = false;
    w.login_ready(T1, "a1", &["chat"]);
    assert!(matches!(
        w.refused(&service(T1), remove_media("a1", "chat")),
        DomainError::AgentState { .. }
    ));
}

#[test]
fn set_ready_emits_only_when_the_state_changes() {
    let mut w = World::new();
    w.ok(&service(T1), login("a1"));
    w.ok(&service(T1), add_media("a1", "chat", false, None));
    let d = w.ok(&service(T1), set_ready("a1", "chat"));
    assert_eq!(describe_all(&d), ["ReadyForMedia"]);
    assert_eq!(
        w.agent(T1, "a1").media["chat"],
        Media {
            ready: true,
            reason: None
        }
    );
    assert!(
        w.ok(&service(T1), set_ready("a1", "chat"))
            .events
            .is_empty()
    );
    assert!(matches!(
        w.refused(&service(T1), set_ready("a1", "voice")),
        DomainError::AgentState { .. }
    ));
    assert!(matches!(
        w.refused(&service(T1), set_ready("a2", "chat")),
        DomainError::AgentNotAvailable { .. }
    ));
}

#[test]
fn set_not_ready_checks_the_reason_against_the_platform() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    assert_eq!(
        w.refused(
            &service(T1),
            set_not_ready("a1", "chat", Some(reason("nap")))
        ),
        DomainError::ReasonNotAllowed("nap".into())
    );
    assert_eq!(
        w.refused(
            &service(T1),
            set_not_ready("a1", "chat", Some(free_text("nap")))
        ),
        DomainError::ReasonNotAllowed(String::new())
    );
    let d = w.ok(
        &service(T1),
        set_not_ready("a1", "chat", Some(reason("break"))),
    );
    assert_eq!(describe_all(&d), ["NotReadyForMedia"]);
    let media = &w.agent(T1, "a1").media["chat"];
    assert!(!media.ready);
    assert_eq!(
        media.reason.as_ref().map(|r| r.description.as_str()),
        Some("Break")
    );
    // The same again changes nothing; no reason means the default.
    assert!(
        w.ok(
            &service(T1),
            set_not_ready("a1", "chat", Some(reason("break")))
        )
        .events
        .is_empty()
    );
    w.ok(&service(T1), set_not_ready("a1", "chat", None));
    assert_eq!(
        w.agent(T1, "a1").media["chat"].reason,
        Some(w.platform.default_not_ready_reason.clone())
    );
}

#[test]
fn free_text_reasons_pass_only_where_the_platform_allows_them() {
    let mut w = World::new();
    w.platform.free_text_reasons_allowed = true;
    w.login_ready(T1, "a1", &["chat"]);
    w.ok(
        &service(T1),
        set_not_ready("a1", "chat", Some(free_text("nap"))),
    );
    assert_eq!(
        w.agent(T1, "a1").media["chat"].reason,
        Some(free_text("nap"))
    );
    // A code must still be listed.
    assert_eq!(
        w.refused(
            &service(T1),
            set_not_ready("a1", "chat", Some(reason("nap")))
        ),
        DomainError::ReasonNotAllowed("nap".into())
    );
    w.ok(&service(T1), logout("a1", Some(free_text("home"))));
}

#[test]
fn changing_the_not_ready_reason() {
    let mut w = World::new();
    w.login_ready(T1, "a1", &["chat"]);
    assert!(matches!(
        w.refused(&service(T1), change_reason("a1", "chat", reason("lunch"))),
        DomainError::AgentState { .. }
    ));
    w.ok(&service(T1), set_not_ready("a1", "chat", None));
    let d = w.ok(&service(T1), change_reason("a1", "chat", reason("lunch")));
    assert_eq!(describe_all(&d), ["MediaStateReasonChanged"]);
    let media = &w.agent(T1, "a1").media["chat"];
    assert!(!media.ready);
    assert_eq!(
        media.reason.as_ref().map(|r| r.code.as_str()),
        Some("lunch")
    );
    assert_eq!(
        w.refused(&service(T1), change_reason("a1", "chat", reason("nap"))),
        DomainError::ReasonNotAllowed("nap".into())
    );
    assert!(matches!(
        w.refused(&service(T1), change_reason("a1", "voice", reason("lunch"))),
        DomainError::AgentState { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// The property test
// ---------------------------------------------------------------------------------------------

const AGENT_IDS: [&str; 4] = ["a1", "a2", "a3", "ghost"];
const MEDIA: [&str; 2] = ["voice", "chat"];
const QUEUES: [&str; 2] = ["q1", "q2"];

/// Everyone who calls in the property test: in each tenant three agents, two routers, two media
/// servers, an admin and session-service.
fn cast() -> Vec<Caller> {
    let mut cast = Vec::new();
    for tenant in [T1, T2] {
        for a in ["a1", "a2", "a3"] {
            cast.push(agent(tenant, a));
        }
        for r in ["r1", "r2"] {
            cast.push(router(tenant, r));
        }
        for m in ["m1", "m2"] {
            cast.push(media_server(tenant, m));
        }
        cast.push(admin(tenant));
        cast.push(service(tenant));
    }
    cast
}

/// The roles the contract's table allows for each operation (the API refuses the others): Submit;
/// Pull (routers or agents); Deliver (routers); Accept and Reject (agents); StopProcessing and
/// ChangeProperties; PlaceInQueue; AgentService.
const SUBMITTERS: &[Role] = &[Role::MediaServer, Role::Agent, Role::Admin];
const ROUTERS: &[Role] = &[Role::Router];
const AGENTS: &[Role] = &[Role::Agent];
const STOP_OR_CHANGE: &[Role] = &[Role::MediaServer, Role::Agent, Role::Router, Role::Admin];
const PLACE_IN_QUEUE: &[Role] = &[Role::Agent, Role::Router, Role::Admin];
const AGENT_SERVICE: &[Role] = &[Role::Service, Role::Admin];

/// Which interaction a command names.
#[derive(Clone, Debug)]
enum Target {
    /// One of those in the state (any tenant, stopped ones too).
    Existing(Index),
    /// One of those in the phase, if any, else as `Existing`.
    InPhase(Phase, Index),
    /// One that never existed.
    Missing(u8),
}

/// Who calls: the interaction's natural caller (its owner, invitee or submitter) when `natural`
/// and one exists with an allowed role, else anyone of an allowed role.
#[derive(Clone, Debug)]
struct Who {
    natural: bool,
    any: Index,
}

/// Which ticket an Accept or Reject names.
#[derive(Clone, Debug)]
enum Ticket {
    /// The interaction's open invite's, if it has one.
    Current,
    /// One handed out earlier (maybe answered, expired or of another interaction).
    Earlier(Index),
    Missing,
}

/// Which agent a Deliver invites.
#[derive(Clone, Debug)]
enum AgentPick {
    /// One of the interaction's tenant that can take its media now, if any.
    Available(Index),
    /// Any of `AGENT_IDS`.
    Named(usize),
}

#[derive(Clone, Debug)]
enum AgentOp {
    Login,
    Logout,
    AddMedia { ready: bool },
    RemoveMedia,
    SetReady,
    SetNotReady,
    ChangeReason,
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        who: Index,
        media: usize,
        queue: usize,
        properties: Vec<(u8, u8)>,
    },
    Pull {
        by_router: bool,
        who: Index,
        queue: usize,
        media: Option<usize>,
        named: Option<Target>,
    },
    Deliver {
        who: Who,
        target: Target,
        agent: AgentPick,
        timeout_ms: u64,
    },
    Accept {
        who: Who,
        target: Target,
        ticket: Ticket,
    },
    Reject {
        who: Who,
        target: Target,
        ticket: Ticket,
        reason: usize,
    },
    Stop {
        who: Who,
        target: Target,
        reason: usize,
    },
    PlaceInQueue {
        who: Who,
        target: Target,
        queue: usize,
    },
    ChangeProperties {
        who: Who,
        target: Target,
        changed: Vec<(u8, u8)>,
        deleted: Vec<u8>,
        oversized: bool,
    },
    /// Moves the clock, then the timer runs `ExpireInvites`.
    Advance { ms: i64 },
    /// The natural next command for a live interaction (a router pulls it, the router delivers it
    /// to an available agent, the invitee accepts or rejects, the owner stops or requeues it), so
    /// that interactions go through their whole lifecycle often.
    Progress { which: Index, choice: Index },
    Agent {
        who: Index,
        agent: usize,
        media: usize,
        reason: usize,
        op: AgentOp,
    },
}

fn phase() -> impl Strategy<Value = Phase> {
    prop::sample::select(vec![
        Phase::Queued,
        Phase::Routing,
        Phase::Invited,
        Phase::Handling,
        Phase::Stopped,
    ])
}

/// An interaction, mostly one in a phase the command applies to (`phase`, or any when `None`).
fn target_in(phase: Option<Phase>) -> impl Strategy<Value = Target> {
    let in_phase = match phase {
        Some(p) => Just(p).boxed(),
        None => self::phase().boxed(),
    };
    prop_oneof![
        5 => (in_phase, any::<Index>()).prop_map(|(p, ix)| Target::InPhase(p, ix)),
        3 => any::<Index>().prop_map(Target::Existing),
        1 => (0u8..4).prop_map(Target::Missing),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    target_in(None)
}

fn who() -> impl Strategy<Value = Who> {
    (prop::bool::weighted(0.75), any::<Index>()).prop_map(|(natural, any)| Who { natural, any })
}

fn ticket() -> impl Strategy<Value = Ticket> {
    prop_oneof![
        6 => Just(Ticket::Current),
        2 => any::<Index>().prop_map(Ticket::Earlier),
        1 => Just(Ticket::Missing),
    ]
}

fn pairs() -> impl Strategy<Value = Vec<(u8, u8)>> {
    prop::collection::vec((0u8..4, 0u8..4), 0..3)
}

fn agent_op() -> impl Strategy<Value = AgentOp> {
    prop_oneof![
        2 => Just(AgentOp::Login),
        2 => Just(AgentOp::Logout),
        3 => any::<bool>().prop_map(|ready| AgentOp::AddMedia { ready }),
        1 => Just(AgentOp::RemoveMedia),
        3 => Just(AgentOp::SetReady),
        3 => Just(AgentOp::SetNotReady),
        2 => Just(AgentOp::ChangeReason),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (any::<Index>(), 0..MEDIA.len(), 0..QUEUES.len(), pairs()).prop_map(
            |(who, media, queue, properties)| Op::Submit { who, media, queue, properties }
        ),
        6 => (
            prop::bool::weighted(0.7),
            any::<Index>(),
            0..QUEUES.len(),
            prop::option::weighted(0.2, 0..MEDIA.len()),
            prop::option::weighted(0.3, target_in(Some(Phase::Queued))),
        )
            .prop_map(|(by_router, who, queue, media, named)| Op::Pull {
                by_router,
                who,
                queue,
                media,
                named
            }),
        6 => (
            who(),
            target_in(Some(Phase::Routing)),
            prop_oneof![
                3 => any::<Index>().prop_map(AgentPick::Available),
                1 => (0..AGENT_IDS.len()).prop_map(AgentPick::Named),
            ],
            prop_oneof![Just(0u64), 1_000u64..60_000],
        )
            .prop_map(|(who, target, agent, timeout_ms)| Op::Deliver {
                who,
                target,
                agent,
                timeout_ms
            }),
        5 => (who(), target_in(Some(Phase::Invited)), ticket())
            .prop_map(|(who, target, ticket)| Op::Accept { who, target, ticket }),
        2 => (who(), target_in(Some(Phase::Invited)), ticket(), 0..REASONS)
            .prop_map(|(who, target, ticket, reason)| Op::Reject { who, target, ticket, reason }),
        3 => (who(), target(), 0..REASONS)
            .prop_map(|(who, target, reason)| Op::Stop { who, target, reason }),
        2 => (who(), target(), 0..QUEUES.len())
            .prop_map(|(who, target, queue)| Op::PlaceInQueue { who, target, queue }),
        2 => (
            who(),
            target(),
            pairs(),
            prop::collection::vec(0u8..4, 0..2),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(who, target, changed, deleted, oversized)| Op::ChangeProperties {
                who,
                target,
                changed,
                deleted,
                oversized
            }),
        3 => prop_oneof![3 => 0i64..10_000, 1 => 25_000i64..45_000]
            .prop_map(|ms| Op::Advance { ms }),
        10 => (any::<Index>(), any::<Index>())
            .prop_map(|(which, choice)| Op::Progress { which, choice }),
        8 => (
            any::<Index>(),
            prop_oneof![4 => 0..2usize, 1 => 0..AGENT_IDS.len()],
            0..MEDIA.len(),
            0..REASONS,
            agent_op(),
        )
            .prop_map(|(who, agent, media, reason, op)| Op::Agent {
                who,
                agent,
                media,
                reason,
                op
            }),
    ]
}

/// A platform with its switches and the chat capacity varied.
fn platform() -> impl Strategy<Value = Platform> {
    (any::<bool>(), any::<bool>(), any::<bool>(), 1u32..=3).prop_map(
        |(reason_required, free_text, deactivation, chat_capacity)| Platform {
            logout_reason_required: reason_required,
            free_text_reasons_allowed: free_text,
            channel_deactivation_supported: deactivation,
            capacity: [("chat".to_owned(), chat_capacity)].into(),
            ..Platform::default()
        },
    )
}

const REASONS: usize = 7;

/// Reasons, listed for Not Ready or logout or neither, empty, or free text.
fn pick_reason(n: usize) -> Option<Reason> {
    match n % REASONS {
        0 => None,
        1 => Some(Reason::default()),
        2 => Some(reason("break")),
        3 => Some(reason("lunch")),
        4 => Some(reason("end-of-shift")),
        5 => Some(reason("bogus")),
        _ => Some(free_text("gone fishing")),
    }
}

fn pick_caller(cast: &[Caller], roles: &[Role], ix: &Index) -> Caller {
    let allowed: Vec<&Caller> = cast.iter().filter(|c| roles.contains(&c.role)).collect();
    let chosen: &&Caller = ix.get(&allowed);
    (*chosen).clone()
}

/// The caller a party is, in a tenant (agents, routers, media servers and admins).
fn caller_of(tenant: &str, party: &Party) -> Option<Caller> {
    use ixn_proto::common::party::Kind;
    Some(match party.kind.as_ref()? {
        Kind::Agent(a) => agent(tenant, &a.agent_id),
        Kind::Router(r) => router(tenant, &r.router_id),
        Kind::MediaServer(m) => media_server(tenant, &m.server_id),
        Kind::Admin(_) => admin(tenant),
        _ => return None,
    })
}

fn properties(pairs: &[(u8, u8)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (format!("k{k}"), format!("v{v}")))
        .collect()
}

/// Turns a generated operation into a caller and a command against the current state.
struct Resolver<'a> {
    world: &'a World,
    cast: &'a [Caller],
    /// Every interaction id, with its phase, in a stable order.
    ids: Vec<(Uuid, Phase)>,
    /// Every ticket handed out so far.
    tickets: &'a [Uuid],
}

impl Resolver<'_> {
    fn interaction(&self, target: &Target) -> Uuid {
        let in_phase: Vec<Uuid> = match target {
            Target::InPhase(phase, _) => self
                .ids
                .iter()
                .filter(|(_, p)| p == phase)
                .map(|(id, _)| *id)
                .collect(),
            _ => Vec::new(),
        };
        match target {
            Target::InPhase(_, ix) if !in_phase.is_empty() => *ix.get(&in_phase),
            Target::Existing(ix) | Target::InPhase(_, ix) if !self.ids.is_empty() => {
                ix.get(&self.ids).0
            }
            Target::Existing(_) | Target::InPhase(..) => Uuid::from_u128(u128::MAX),
            Target::Missing(n) => Uuid::from_u128(u128::MAX - u128::from(*n)),
        }
    }

    /// The natural caller of the interaction for the operation, if `who` asks for it.
    fn who(&self, who: &Who, id: Uuid, roles: &[Role], invitee: bool) -> Caller {
        let natural = self
            .world
            .state
            .interactions
            .get(&id)
            .filter(|_| who.natural)
            .and_then(|i| {
                let party = if invitee {
                    i.invite.as_ref().map(|inv| Party::from(inv.agent.clone()))
                } else {
                    Some(i.owner.clone().unwrap_or_else(|| i.submitted_by.clone()))
                };
                caller_of(&i.tenant, &party?)
            })
            .filter(|c| roles.contains(&c.role));
        natural.unwrap_or_else(|| pick_caller(self.cast, roles, &who.any))
    }

    fn invitee(&self, pick: &AgentPick, id: Uuid) -> String {
        let available: Vec<&str> = match (pick, self.world.state.interactions.get(&id)) {
            (AgentPick::Available(_), Some(i)) => {
                let mut ids: Vec<&str> = self
                    .world
                    .state
                    .agents
                    .values()
                    .filter(|a| {
                        a.tenant == i.tenant && a.can_take(&i.media_type, &self.world.platform)
                    })
                    .map(|a| a.agent_id.as_str())
                    .collect();
                ids.sort();
                ids
            }
            _ => Vec::new(),
        };
        match pick {
            AgentPick::Available(ix) if !available.is_empty() => (*ix.get(&available)).to_owned(),
            AgentPick::Available(ix) => (*ix.get(&AGENT_IDS)).to_owned(),
            AgentPick::Named(n) => AGENT_IDS[*n].to_owned(),
        }
    }

    /// The natural next command for one of the live interactions (a Submit when there is none).
    fn progress(&self, which: &Index, choice: &Index) -> (Caller, Command) {
        let live: Vec<Uuid> = self
            .ids
            .iter()
            .filter(|(_, p)| *p != Phase::Stopped)
            .map(|(id, _)| *id)
            .collect();
        if live.is_empty() {
            let tenant = [T1, T2][choice.index(2)];
            return (
                media_server(tenant, "m1"),
                submit(MEDIA[choice.index(2)], "q1"),
            );
        }
        let i = &self.world.state.interactions[which.get(&live)];
        let owner = || {
            i.owner
                .as_ref()
                .and_then(|o| caller_of(&i.tenant, o))
                .expect("a processed interaction has an owner")
        };
        match i.phase {
            Phase::Queued => {
                let by = match choice.index(3) {
                    0 => router(&i.tenant, "r2"),
                    1 => router(&i.tenant, "r1"),
                    _ => agent(&i.tenant, "a1"),
                };
                (by, pull_named(&i.queue, i.id))
            }
            Phase::Routing if choice.index(5) > 0 => {
                let invitee = self.invitee(&AgentPick::Available(*choice), i.id);
                (owner(), deliver(i.id, &invitee))
            }
            Phase::Invited => {
                let invite = i
                    .invite
                    .as_ref()
                    .expect("an invited interaction has an invite");
                let by = agent(&i.tenant, &invite.agent.agent_id);
                if choice.index(4) > 0 {
                    (by, accept(i.id, invite.ticket))
                } else {
                    (by, reject(i.id, invite.ticket))
                }
            }
            _ if choice.index(3) == 0 => (owner(), place_in_queue(i.id, "q2")),
            _ => (owner(), stop(i.id)),
        }
    }

    fn ticket(&self, ticket: &Ticket, id: Uuid) -> Uuid {
        let current = self
            .world
            .state
            .interactions
            .get(&id)
            .and_then(|i| i.invite.as_ref())
            .map(|inv| inv.ticket);
        match ticket {
            Ticket::Current => current.unwrap_or(Uuid::from_u128(u128::MAX - 100)),
            Ticket::Earlier(ix) if !self.tickets.is_empty() => *ix.get(self.tickets),
            _ => Uuid::from_u128(u128::MAX - 100),
        }
    }

    fn resolve(&self, op: &Op) -> (Caller, Command) {
        match op {
            Op::Submit {
                who,
                media,
                queue,
                properties: pairs,
            } => (
                pick_caller(self.cast, SUBMITTERS, who),
                Command::Submit {
                    media_type: MEDIA[*media].into(),
                    queue: QUEUES[*queue].into(),
                    properties: properties(pairs),
                },
            ),
            Op::Pull {
                by_router,
                who,
                queue,
                media,
                named,
            } => {
                let named = named.as_ref().map(|t| self.interaction(t));
                // A named interaction is pulled from its own queue.
                let queue = named
                    .and_then(|id| self.world.state.interactions.get(&id))
                    .map_or(QUEUES[*queue], |i| i.queue.as_str());
                let roles = if *by_router { ROUTERS } else { AGENTS };
                (
                    pick_caller(self.cast, roles, who),
                    Command::Pull {
                        queue: queue.to_owned(),
                        media_type: media.map(|m| MEDIA[m].to_owned()),
                        interaction_id: named,
                    },
                )
            }
            Op::Deliver {
                who,
                target,
                agent,
                timeout_ms,
            } => {
                let id = self.interaction(target);
                (
                    self.who(who, id, ROUTERS, false),
                    Command::Deliver {
                        interaction_id: id,
                        agent_id: self.invitee(agent, id),
                        timeout_ms: *timeout_ms,
                    },
                )
            }
            Op::Accept {
                who,
                target,
                ticket,
            } => {
                let id = self.interaction(target);
                (
                    self.who(who, id, AGENTS, true),
                    accept(id, self.ticket(ticket, id)),
                )
            }
            Op::Reject {
                who,
                target,
                ticket,
                reason,
            } => {
                let id = self.interaction(target);
                (
                    self.who(who, id, AGENTS, true),
                    Command::Reject {
                        interaction_id: id,
                        ticket_id: self.ticket(ticket, id),
                        reason: pick_reason(*reason),
                    },
                )
            }
            Op::Stop {
                who,
                target,
                reason,
            } => {
                let id = self.interaction(target);
                (
                    self.who(who, id, STOP_OR_CHANGE, false),
                    Command::StopProcessing {
                        interaction_id: id,
                        reason: pick_reason(*reason),
                    },
                )
            }
            Op::PlaceInQueue { who, target, queue } => {
                let id = self.interaction(target);
                (
                    self.who(who, id, PLACE_IN_QUEUE, false),
                    place_in_queue(id, QUEUES[*queue]),
                )
            }
            Op::ChangeProperties {
                who,
                target,
                changed,
                deleted,
                oversized,
            } => {
                let id = self.interaction(target);
                let mut changed = properties(changed);
                if *oversized {
                    changed.insert(
                        "big".into(),
                        "x".repeat(crate::limits::MAX_PROPERTY_VALUE_BYTES + 1),
                    );
                }
                (
                    self.who(who, id, STOP_OR_CHANGE, false),
                    Command::ChangeProperties {
                        interaction_id: id,
                        changed,
                        deleted: deleted.iter().map(|k| format!("k{k}")).collect(),
                    },
                )
            }
            Op::Advance { .. } => (service(T1), Command::ExpireInvites),
            Op::Progress { which, choice } => self.progress(which, choice),
            Op::Agent {
                who,
                agent,
                media,
                reason,
                op,
            } => {
                let caller = pick_caller(self.cast, AGENT_SERVICE, who);
                let agent_id = AGENT_IDS[*agent];
                let media = MEDIA[*media];
                let reason = pick_reason(*reason);
                let command = match op {
                    AgentOp::Login => login(agent_id),
                    AgentOp::Logout => logout(agent_id, reason),
                    AgentOp::AddMedia { ready } => add_media(agent_id, media, *ready, reason),
                    AgentOp::RemoveMedia => remove_media(agent_id, media),
                    AgentOp::SetReady => set_ready(agent_id, media),
                    AgentOp::SetNotReady => set_not_ready(agent_id, media, reason),
                    AgentOp::ChangeReason => {
                        change_reason(agent_id, media, reason.unwrap_or_default())
                    }
                };
                (caller, command)
            }
        }
    }
}

/// What a run reached, for checking that the generator is not vacuous.
#[derive(Default)]
struct Coverage {
    /// Per command: (successes that emitted events, refusals).
    outcomes: BTreeMap<&'static str, (usize, usize)>,
    /// The phases from which a StopProcessing succeeded.
    stopped_from: BTreeSet<Phase>,
    phases: BTreeSet<Phase>,
}

/// Plays the operations from a starting cast of logged-in agents, checking every invariant after
/// every step.
fn play(platform: Platform, ops: &[Op], coverage: &mut Coverage) -> Result<(), TestCaseError> {
    let cast = cast();
    let mut w = World::with_platform(platform);
    w.login_ready(T1, "a1", &["voice", "chat"]);
    w.login_ready(T1, "a2", &["chat"]);
    w.ok(&service(T1), add_media("a2", "voice", false, None));
    w.login_ready(T2, "a1", &["voice", "chat"]);
    w.login_ready(T2, "a2", &["chat"]);
    let mut tickets: Vec<Uuid> = Vec::new();
    let mut stopped: HashSet<Uuid> = HashSet::new();
    for op in ops {
        if let Op::Advance { ms } = op {
            w.advance_ms(*ms);
        }
        let (caller, command) = {
            let mut ids: Vec<(Uuid, Phase)> = w
                .state
                .interactions
                .values()
                .map(|i| (i.id, i.phase))
                .collect();
            ids.sort();
            Resolver {
                world: &w,
                cast: &cast,
                ids,
                tickets: &tickets,
            }
            .resolve(op)
        };
        let before = w.state.clone();
        let logged_before = w.log.len();
        let phase_before = command
            .interaction_id()
            .and_then(|id| before.interactions.get(&id))
            .map(|i| i.phase);
        let result = w.run(&caller, &command);
        let entry = coverage.outcomes.entry(command.name()).or_default();
        match &result {
            Err(_) => {
                entry.1 += 1;
                prop_assert_eq!(&w.state, &before, "a refusal changed the state");
                prop_assert_eq!(w.log.len(), logged_before, "a refusal logged events");
            }
            Ok(d) => {
                if !d.events.is_empty() {
                    entry.0 += 1;
                }
                if let (Command::StopProcessing { .. }, Some(phase)) = (&command, phase_before) {
                    coverage.stopped_from.insert(phase);
                }
                if let Reply::Invited { ticket_id, .. } = d.reply {
                    tickets.push(ticket_id);
                }
                for e in &d.events {
                    prop_assert_eq!(
                        e.to.is_empty(),
                        is_reporting(&e.body),
                        "{}: directed events, and only they, are addressed",
                        describe(e)
                    );
                }
            }
        }
        check_invariants(&w, &before, &caller, &command, &mut stopped)?;
        coverage
            .phases
            .extend(w.state.interactions.values().map(|i| i.phase));
    }
    Ok(())
}

fn check_invariants(
    w: &World,
    before: &State,
    caller: &Caller,
    command: &Command,
    stopped: &mut HashSet<Uuid>,
) -> Result<(), TestCaseError> {
    let state = &w.state;
    let queues: Vec<(&str, &str)> = [T1, T2]
        .iter()
        .flat_map(|t| QUEUES.iter().map(move |q| (*t, *q)))
        .collect();
    invariants::check(&w.platform, before, state, caller, command, w.now, &queues)
        .map_err(TestCaseError::fail)?;
    // STOPPED is terminal.
    for id in stopped.iter() {
        let phase = state.interactions.get(id).map(|i| i.phase);
        prop_assert_eq!(phase, Some(Phase::Stopped), "{} left STOPPED", id);
    }
    stopped.extend(
        state
            .interactions
            .values()
            .filter(|i| i.phase == Phase::Stopped)
            .map(|i| i.id),
    );

    // The log replays to the same state.
    prop_assert_eq!(&w.replayed(), state, "the log does not replay");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_commands_keep_the_invariants(
        platform in platform(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        play(platform, &ops, &mut Coverage::default())?;
    }
}

/// The generator reaches what the property test claims to check: each command both succeeds (with
/// events) and is refused, every phase occurs, and a stop succeeds from every live phase.
#[test]
fn the_random_commands_reach_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let strategy = (platform(), prop::collection::vec(op(), 1..60));
    let mut coverage = Coverage::default();
    for _ in 0..128 {
        let (platform, ops) = strategy
            .new_tree(&mut runner)
            .expect("the strategy generates")
            .current();
        play(platform, &ops, &mut coverage).expect("the invariants hold");
    }
    for command in [
        "Submit",
        "Pull",
        "Deliver",
        "Accept",
        "Reject",
        "StopProcessing",
        "PlaceInQueue",
        "ChangeProperties",
        "AgentService.Login",
        "AgentService.Logout",
        "AddMedia",
        "RemoveMedia",
        "SetReady",
        "SetNotReady",
        "ChangeMediaStateReason",
    ] {
        let (ok, refused) = coverage.outcomes.get(command).copied().unwrap_or_default();
        assert!(
            ok > 0 && refused > 0,
            "{command}: {ok} successes, {refused} refusals"
        );
    }
    assert!(
        coverage.outcomes["ExpireInvites"].0 > 0,
        "no invite ever expired"
    );
    let live = [
        Phase::Queued,
        Phase::Routing,
        Phase::Invited,
        Phase::Handling,
    ];
    for phase in live {
        assert!(
            coverage.stopped_from.contains(&phase),
            "never stopped from {phase:?}"
        );
    }
    assert_eq!(coverage.phases.len(), 5, "{:?}", coverage.phases);
}
