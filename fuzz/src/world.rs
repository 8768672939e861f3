//! interaction-server's pure domain, driven the way its engine drives it, with the state's
//! invariants checked after every command.
//!
//! Like the engine, [`World::run`] loads a stopped interaction from the "store" when a command names
//! it, decides, folds each event with the next log sequence, and forgets stopped interactions again
//! afterwards. Beside it, a replica folds every event read back from its encoding (the log replay),
//! and [`World::check`] compares the two, and the state rebuilt from the rows the store keeps (a
//! restart), with the live state.

use interaction_server::domain::{
    Agent, AgentKey, Caller, Command, Ctx, Decision, DomainError, Interaction, Phase, Platform,
    Reply, State, decide, invariants,
};
use ixn_proto::auth::Role;
use ixn_proto::clock::Micros;
use ixn_proto::common::Party;
use ixn_proto::event::{interaction_id, is_reporting};
use ixn_proto::events::{self as ev, event::Body};
use prost::Message;
use std::collections::HashMap;
use uuid::Uuid;

/// 2023-11-14T22:13:20Z, in microseconds.
pub const START: Micros = 1_700_000_000_000_000;

/// One event as the log keeps it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub tenant: String,
    pub seq: u64,
    pub time: Micros,
    /// The parties a directed event is addressed to.
    pub to: Vec<Party>,
    pub body: Body,
}

impl Logged {
    /// The event as interaction-server's stream carries it.
    pub fn event(&self) -> ev::Event {
        ev::Event {
            sequence: self.seq,
            tenant: self.tenant.clone(),
            to: self.to.clone(),
            body: Some(self.body.clone()),
            ..ev::Event::default()
        }
    }
}

/// The domain with what the engine adds around it: a clock, ids, the log and the store's rows of
/// stopped interactions.
#[derive(Debug)]
pub struct World {
    pub state: State,
    pub platform: Platform,
    pub now: Micros,
    /// The last id handed out (interactions and tickets alike): ids are `Uuid::from_u128(1)`, `2`…
    pub last_id: u128,
    pub seq: u64,
    pub log: Vec<Logged>,
    /// Stopped interactions, which live in the store alone.
    pub stopped: HashMap<Uuid, Interaction>,
    /// Every ticket Deliver handed out, in order.
    pub tickets: Vec<Uuid>,
    /// The state folded from the log's encoded events alone.
    replica: State,
}

/// What the caller of the invite timer is: the engine's own, of no tenant.
pub fn system() -> Caller {
    Caller {
        tenant: String::new(),
        role: Role::Admin,
        sub: "system".into(),
        agent_id: None,
    }
}

impl World {
    pub fn new(platform: Platform) -> World {
        World {
            state: State::default(),
            platform,
            now: START,
            last_id: 0,
            seq: 0,
            log: Vec::new(),
            stopped: HashMap::new(),
            tickets: Vec::new(),
            replica: State::default(),
        }
    }

    /// Every interaction id known (live or stopped), sorted: what commands pick targets from.
    pub fn interaction_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .state
            .interactions
            .keys()
            .chain(self.stopped.keys())
            .copied()
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The `n`th known interaction, or (one past the end) an id nobody has.
    pub fn pick_interaction(&self, n: u8) -> Uuid {
        let ids = self.interaction_ids();
        let i = usize::from(n) % (ids.len() + 1);
        ids.get(i).copied().unwrap_or(Uuid::from_u128(u128::MAX))
    }

    /// The `n`th ticket handed out, or (one past the end) a ticket nobody has.
    pub fn pick_ticket(&self, n: u8) -> Uuid {
        let i = usize::from(n) % (self.tickets.len() + 1);
        self.tickets
            .get(i)
            .copied()
            .unwrap_or(Uuid::from_u128(u128::MAX - 1))
    }

    /// Runs one command as the engine does, checking every invariant afterwards. A refusal must
    /// leave everything as it was.
    pub fn run(&mut self, caller: &Caller, command: &Command) -> Result<Decision, DomainError> {
        let before = self.state.clone();
        let stopped_before = self.stopped.clone();
        let logged_before = self.log.len();
        let result = self.apply(caller, command);
        match &result {
            Err(_) => {
                assert_eq!(
                    self.state, before,
                    "a refused {command:?} changed the state"
                );
                assert_eq!(
                    self.stopped, stopped_before,
                    "a refused command changed the store"
                );
                assert_eq!(
                    self.log.len(),
                    logged_before,
                    "a refused command logged events"
                );
            }
            Ok(decision) => {
                if decision.events.is_empty() {
                    assert_eq!(self.state, before, "{command:?} changed the state silently");
                }
                self.check_decision(&before, caller, command, decision, logged_before);
            }
        }
        self.check(&before, caller, command);
        result
    }

    /// The engine's steps, without checks.
    fn apply(&mut self, caller: &Caller, command: &Command) -> Result<Decision, DomainError> {
        // A stopped interaction is loaded for the command that names it, and forgotten after.
        let loaded = command
            .interaction_id()
            .filter(|id| !self.state.interactions.contains_key(id))
            .and_then(|id| self.stopped.get(&id).cloned());
        let loaded_id = loaded.as_ref().map(|i| i.id);
        if let Some(i) = loaded {
            self.state.insert(i);
        }
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
        let decision = match decide(&self.state, caller, command, &mut ctx) {
            Ok(d) => d,
            Err(e) => {
                if let Some(id) = loaded_id {
                    self.state.forget_stopped(id);
                }
                return Err(e);
            }
        };
        for e in &decision.events {
            self.seq += 1;
            // An event belongs to its interaction's tenant (the timer's too), else the caller's.
            let tenant = interaction_id(&e.body)
                .and_then(|id| id.parse::<Uuid>().ok())
                .and_then(|id| self.state.interactions.get(&id))
                .map_or_else(|| caller.tenant.clone(), |i| i.tenant.clone());
            self.state.evolve(&tenant, self.seq, self.now, &e.body);
            // The replica folds the event as the store gives it back.
            let stored = ev::Event {
                body: Some(e.body.clone()),
                ..ev::Event::default()
            }
            .encode_to_vec();
            let read = ev::Event::decode(stored.as_slice()).expect("an encoded event decodes");
            let body = read.body.expect("the body survives its encoding");
            self.replica.evolve(&tenant, self.seq, self.now, &body);
            self.log.push(Logged {
                tenant,
                seq: self.seq,
                time: self.now,
                to: e.to.clone(),
                body,
            });
        }
        if let Reply::Invited { ticket_id, .. } = decision.reply {
            self.tickets.push(ticket_id);
        }
        Ok(decision)
    }

    /// What a successful decision must look like, checked before stopped interactions are
    /// forgotten (the answer is read from the state as the events left it).
    fn check_decision(
        &mut self,
        before: &State,
        caller: &Caller,
        command: &Command,
        decision: &Decision,
        logged_before: usize,
    ) {
        let events = &self.log[logged_before..];
        for e in &decision.events {
            assert_eq!(
                e.to.is_empty(),
                is_reporting(&e.body),
                "directed events, and only they, are addressed: {e:?}"
            );
            if matches!(command, Command::ExpireInvites) {
                assert_eq!(e.actor, Party::system("invite-timeout"));
            } else {
                assert!(e.actor.same_as(&before.party_of(caller)), "{e:?}");
            }
        }
        match &decision.reply {
            Reply::Interaction(id) | Reply::Ack(id) => {
                let i = self.state.interactions.get(id).expect("answered with it");
                assert_eq!(i.tenant, caller.tenant);
            }
            Reply::Pulled(Some(id)) => {
                let i = &self.state.interactions[id];
                let party = self.state.party_of(caller);
                assert!(i.owned_by(&party), "pulled but not owned: {i:?}");
                let phase = if caller.role == Role::Agent {
                    Phase::Handling
                } else {
                    Phase::Routing
                };
                assert_eq!(i.phase, phase);
            }
            Reply::Pulled(None) => assert!(decision.events.is_empty()),
            Reply::Invited { ticket_id, expires } => {
                let Command::Deliver {
                    interaction_id,
                    timeout_ms,
                    ..
                } = command
                else {
                    panic!("{command:?} answered with an invite");
                };
                let timeout = match timeout_ms {
                    0 => self.platform.invite_timeout_ms,
                    t => *t,
                };
                assert_eq!(*expires, self.now + timeout as i64 * 1_000);
                let i = &self.state.interactions[interaction_id];
                let invite = i.invite.as_ref().expect("an invite was delivered");
                assert_eq!(i.phase, Phase::Invited);
                assert_eq!((invite.ticket, invite.expires), (*ticket_id, *expires));
            }
            Reply::Agent(key) => {
                assert_eq!(key.tenant, caller.tenant);
                assert!(self.state.agents.contains_key(key));
            }
            Reply::Nothing => {}
        }
        // Versions rise by one per event folded into the interaction or agent, and nothing else
        // moves them.
        let mut folded: HashMap<Uuid, u64> = HashMap::new();
        let mut agent_events: HashMap<AgentKey, u64> = HashMap::new();
        for logged in events {
            let b = &logged.body;
            if let Some(party) = agent_of(b) {
                *agent_events
                    .entry(AgentKey::new(&logged.tenant, party))
                    .or_default() += 1;
            }
            let changes_interaction = is_reporting(b)
                && !matches!(b, Body::TakenFromQueue(_) | Body::InteractionSubmitted(_));
            if let Some(id) = interaction_id(b).and_then(|id| id.parse().ok())
                && changes_interaction
            {
                *folded.entry(id).or_default() += 1;
            }
        }
        for (id, i) in &self.state.interactions {
            let was = before.interactions.get(id);
            let expected = match was {
                Some(was) => was.version + folded.get(id).copied().unwrap_or(0),
                None => 1 + folded.get(id).copied().unwrap_or(0),
            };
            assert_eq!(i.version, expected, "version of {id}");
            if was != Some(i) {
                assert_eq!(i.updated, self.now, "{id} changed at another time");
            }
            assert!(i.created <= i.updated);
        }
        for (key, a) in &self.state.agents {
            let was = before.agents.get(key).map_or(0, |a| a.version);
            let n = agent_events.get(key).copied().unwrap_or(0);
            assert_eq!(a.version, was + n, "version of {key:?}");
        }
    }

    /// The state's invariants, after every command (refused or not). Stopped interactions are
    /// forgotten here, as the engine does after each batch.
    fn check(&mut self, before: &State, caller: &Caller, command: &Command) {
        let stopped_now: Vec<Uuid> = self
            .state
            .interactions
            .values()
            .filter(|i| i.phase == Phase::Stopped)
            .map(|i| i.id)
            .collect();
        for id in stopped_now {
            let i = self.state.interactions[&id].clone();
            // STOPPED is terminal: once stopped, the interaction never changes again.
            if let Some(was) = self.stopped.get(&id) {
                assert_eq!(was, &i, "a stopped interaction changed");
            }
            assert!(i.owner.is_none() && i.invite.is_none());
            self.stopped.insert(id, i);
            self.state.forget_stopped(id);
            assert!(!self.state.interactions.contains_key(&id));
        }
        let state = &self.state;
        for id in state.interactions.keys() {
            assert!(!self.stopped.contains_key(id), "{id} left STOPPED");
        }
        // The stopped ones are in the store alone, so the queues named are checked as well.
        let queues: Vec<(&str, &str)> = crate::pick::TENANTS
            .iter()
            .flat_map(|t| {
                crate::pick::QUEUES
                    .iter()
                    .chain(&[""])
                    .map(move |q| (*t, *q))
            })
            .collect();
        if let Err(broken) = invariants::check(
            &self.platform,
            before,
            state,
            caller,
            command,
            self.now,
            &queues,
        ) {
            panic!("{broken}");
        }

        // The log replays to the live state (stopped interactions aside, which the store keeps).
        let mut replayed = self.replica.clone();
        for id in self.stopped.keys() {
            let i = replayed.interactions.get(id).expect("the log knows it");
            assert_eq!(i, &self.stopped[id], "the log replays {id} otherwise");
            replayed.forget_stopped(*id);
        }
        assert_eq!(&replayed, state, "the log does not replay to the state");

        // A restart rebuilds the live state from the rows the store keeps.
        let mut restarted = State::default();
        for a in state.agents.values() {
            restarted.insert_agent(Agent::from_proto(&a.to_proto(&self.platform)));
        }
        for i in state.interactions.values() {
            let row = Interaction::from_proto(&i.to_proto(), i.queued_seq)
                .expect("an interaction reads back");
            assert_eq!(&row, i, "an interaction's row reads back otherwise");
            restarted.insert(row);
        }
        assert_eq!(&restarted, state, "a restart rebuilds another state");
    }

    /// The whole log replayed from an empty state, once more from the start.
    pub fn check_full_replay(&self) {
        let mut replayed = State::default();
        for l in &self.log {
            replayed.evolve(&l.tenant, l.seq, l.time, &l.body);
        }
        assert_eq!(replayed, self.replica);
    }
}

/// The agent an agent event is about.
fn agent_of(body: &Body) -> Option<&str> {
    let party = match body {
        Body::AgentLogin(b) => &b.agent,
        Body::AgentLogout(b) => &b.agent,
        Body::MediaAdded(b) => &b.agent,
        Body::MediaRemoved(b) => &b.agent,
        Body::ReadyForMedia(b) => &b.agent,
        Body::NotReadyForMedia(b) => &b.agent,
        Body::MediaStateReasonChanged(b) => &b.agent,
        _ => return None,
    };
    party.as_ref().map(|p| p.agent_id.as_str())
}
