//! The state the domain decides against, and the fold of events into it.
//!
//! Indexes (queues, invite deadlines, what each agent holds) are derived from the interactions and
//! kept in step by [`State::update`], the one place an interaction changes.

use super::{Caller, DomainError, Micros, Platform, micros, timestamp};
use foldhash::HashMap;
use ixn_proto::auth::Role;
use ixn_proto::common::{AgentParty, AgentState, Party, Reason};
use ixn_proto::events::event::Body;
use ixn_proto::interaction::{self as pb, InteractionState};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Where an interaction is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Queued,
    Routing,
    Invited,
    Handling,
    Stopped,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Queued => "QUEUED",
            Phase::Routing => "ROUTING",
            Phase::Invited => "INVITED",
            Phase::Handling => "HANDLING",
            Phase::Stopped => "STOPPED",
        }
    }

    pub fn to_proto(self) -> InteractionState {
        match self {
            Phase::Queued => InteractionState::Queued,
            Phase::Routing => InteractionState::Routing,
            Phase::Invited => InteractionState::Invited,
            Phase::Handling => InteractionState::Handling,
            Phase::Stopped => InteractionState::Stopped,
        }
    }

    pub fn from_proto(state: InteractionState) -> Option<Phase> {
        Some(match state {
            InteractionState::Queued => Phase::Queued,
            InteractionState::Routing => Phase::Routing,
            InteractionState::Invited => Phase::Invited,
            InteractionState::Handling => Phase::Handling,
            InteractionState::Stopped => Phase::Stopped,
            InteractionState::Unspecified => return None,
        })
    }
}

/// An open invite: one agent may accept until `expires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    pub ticket: Uuid,
    pub agent: AgentParty,
    pub expires: Micros,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Interaction {
    pub id: Uuid,
    pub tenant: String,
    pub media_type: String,
    pub phase: Phase,
    /// The queue it waits in (QUEUED) or last waited in.
    pub queue: String,
    /// The one processor, if any: a router (ROUTING, INVITED) or an agent (HANDLING).
    pub owner: Option<Party>,
    pub submitted_by: Party,
    pub invite: Option<Invite>,
    pub properties: BTreeMap<String, String>,
    pub created: Micros,
    pub updated: Micros,
    pub stop_reason: Option<Reason>,
    pub stopped_by: Option<Party>,
    pub version: u64,
    /// The log sequence at which it entered its queue: first in, first out.
    pub queued_seq: u64,
}

impl Interaction {
    /// Whether `party` is the current owner.
    pub fn owned_by(&self, party: &Party) -> bool {
        self.owner.as_ref().is_some_and(|o| o.same_as(party))
    }

    /// The agents that hold it: its agent owner and its invitee.
    pub fn holders(&self) -> impl Iterator<Item = &str> {
        let owner = self.owner.as_ref().and_then(Party::agent_id);
        let invitee = self.invite.as_ref().map(|i| i.agent.agent_id.as_str());
        owner.into_iter().chain(invitee)
    }

    pub fn to_proto(&self) -> pb::Interaction {
        pb::Interaction {
            interaction_id: super::text(self.id),
            tenant: self.tenant.clone(),
            media_type: self.media_type.clone(),
            state: self.phase.to_proto() as i32,
            queue: self.queue.clone(),
            owner: self.owner.clone(),
            submitted_by: Some(self.submitted_by.clone()),
            invite: self.invite.as_ref().map(|i| pb::PendingInvite {
                ticket_id: super::text(i.ticket),
                agent: Some(i.agent.clone()),
                expire_time: Some(timestamp(i.expires)),
            }),
            properties: self.properties.clone(),
            create_time: Some(timestamp(self.created)),
            update_time: Some(timestamp(self.updated)),
            stop_reason: self.stop_reason.clone(),
            stopped_by: self.stopped_by.clone(),
            version: self.version,
        }
    }

    /// Reads back what [`Interaction::to_proto`] wrote (events and the store keep that form).
    pub fn from_proto(p: &pb::Interaction, queued_seq: u64) -> Option<Interaction> {
        Some(Interaction {
            id: p.interaction_id.parse().ok()?,
            tenant: p.tenant.clone(),
            media_type: p.media_type.clone(),
            phase: Phase::from_proto(p.state())?,
            queue: p.queue.clone(),
            owner: p.owner.clone(),
            submitted_by: p.submitted_by.clone()?,
            invite: match &p.invite {
                Some(i) => Some(Invite {
                    ticket: i.ticket_id.parse().ok()?,
                    agent: i.agent.clone()?,
                    expires: micros(i.expire_time.as_ref()?),
                }),
                None => None,
            },
            properties: p.properties.clone(),
            created: micros(p.create_time.as_ref()?),
            updated: micros(p.update_time.as_ref()?),
            stop_reason: p.stop_reason.clone(),
            stopped_by: p.stopped_by.clone(),
            version: p.version,
            queued_seq,
        })
    }
}

/// An agent's state on one media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    pub ready: bool,
    /// The Not Ready reason.
    pub reason: Option<Reason>,
}

/// Agents are keyed by tenant and agent id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentKey {
    pub tenant: String,
    pub agent_id: String,
}

impl AgentKey {
    pub fn new(tenant: &str, agent_id: &str) -> AgentKey {
        AgentKey {
            tenant: tenant.to_owned(),
            agent_id: agent_id.to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    pub tenant: String,
    pub agent_id: String,
    pub place_id: String,
    pub logged_in: bool,
    pub media: BTreeMap<String, Media>,
    /// What the agent owns or is invited to, with each interaction's media (its load).
    pub holding: BTreeMap<Uuid, String>,
    pub version: u64,
}

impl Agent {
    /// An agent never seen: logged out, with no media and nothing held.
    pub fn new(key: &AgentKey) -> Agent {
        Agent {
            tenant: key.tenant.clone(),
            agent_id: key.agent_id.clone(),
            place_id: String::new(),
            logged_in: false,
            media: BTreeMap::new(),
            holding: BTreeMap::new(),
            version: 0,
        }
    }

    pub fn key(&self) -> AgentKey {
        AgentKey::new(&self.tenant, &self.agent_id)
    }

    pub fn party(&self) -> AgentParty {
        AgentParty {
            agent_id: self.agent_id.clone(),
            place_id: self.place_id.clone(),
        }
    }

    /// How many interactions of `media` the agent holds.
    pub fn load(&self, media: &str) -> u32 {
        self.holding.values().filter(|m| *m == media).count() as u32
    }

    /// Whether the agent may be given one more interaction of `media`: Ready on it, below capacity.
    pub fn can_take(&self, media: &str, platform: &Platform) -> bool {
        self.logged_in
            && self.media.get(media).is_some_and(|m| m.ready)
            && self.load(media) < platform.capacity(media)
    }

    pub fn media_of(&self, media: &str) -> Result<&Media, DomainError> {
        self.media
            .get(media)
            .ok_or_else(|| DomainError::AgentState {
                agent_id: self.agent_id.clone(),
                what: "the media is not active for the agent",
            })
    }

    pub fn to_proto(&self, platform: &Platform) -> pb::Agent {
        let mut agent = self.row(platform);
        for media in &mut agent.media {
            media.load = self.load(&media.media_type);
        }
        agent.interaction_ids = self.holding.keys().map(Uuid::to_string).collect();
        agent
    }

    /// What the store keeps of the agent: its own state, without what it holds (no
    /// `interaction_ids`, every load 0), which the interactions' rows say.
    pub fn row(&self, platform: &Platform) -> pb::Agent {
        pb::Agent {
            agent_id: self.agent_id.clone(),
            tenant: self.tenant.clone(),
            place_id: self.place_id.clone(),
            logged_in: self.logged_in,
            media: self
                .media
                .iter()
                .map(|(name, m)| pb::AgentMedia {
                    media_type: name.clone(),
                    state: if m.ready {
                        AgentState::Ready
                    } else {
                        AgentState::NotReady
                    } as i32,
                    reason: m.reason.clone(),
                    load: 0,
                    capacity: platform.capacity(name),
                })
                .collect(),
            interaction_ids: Vec::new(),
            version: self.version,
            sequence: 0,
        }
    }
}

/// Everything the domain decides against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The interactions known here: every live one; a stopped one only while a command needs it
    /// (the server keeps stopped interactions in the store alone).
    pub interactions: HashMap<Uuid, Interaction>,
    pub agents: HashMap<AgentKey, Agent>,
    /// (tenant, queue) → waiting interactions in arrival order.
    queues: BTreeMap<(String, String), BTreeSet<(u64, Uuid)>>,
    /// Open invites by deadline.
    deadlines: BTreeSet<(Micros, Uuid)>,
}

impl State {
    /// The caller as a party; an agent is named with the place it is logged in at.
    pub fn party_of(&self, caller: &Caller) -> Party {
        match caller.role {
            Role::Agent => {
                let place = self
                    .agents
                    .get(&AgentKey::new(&caller.tenant, caller.agent()))
                    .map(|a| a.place_id.clone())
                    .unwrap_or_default();
                Party::agent(caller.agent(), place)
            }
            Role::Router => Party::router(&caller.sub),
            Role::MediaServer => Party::media_server(&caller.sub),
            Role::Admin => Party::admin(&caller.sub),
            Role::Service => Party::service(&caller.sub),
            Role::Reporter => Party::reporter(&caller.sub),
        }
    }

    /// A live interaction of the tenant: another tenant's is answered as if it did not exist.
    pub fn live(&self, tenant: &str, id: Uuid) -> Result<&Interaction, DomainError> {
        match self.interactions.get(&id) {
            Some(i) if i.tenant == tenant => match i.phase {
                Phase::Stopped => Err(DomainError::AlreadyStopped(id)),
                _ => Ok(i),
            },
            _ => Err(DomainError::InteractionNotFound(id)),
        }
    }

    /// The interaction and its open invite with `ticket`, for the invited agent.
    pub fn open_invite(
        &self,
        caller: &Caller,
        id: Uuid,
        ticket: Uuid,
        now: Micros,
    ) -> Result<(&Interaction, &Invite), DomainError> {
        let i = self.live(&caller.tenant, id)?;
        let invite = i
            .invite
            .as_ref()
            .filter(|inv| inv.ticket == ticket)
            .ok_or(DomainError::InviteNotFound(ticket))?;
        if invite.agent.agent_id != caller.agent() {
            return Err(DomainError::NotOwner(id));
        }
        // Past its deadline an invite is gone, even before the timer has revoked it.
        if now >= invite.expires {
            return Err(DomainError::InviteNotFound(ticket));
        }
        Ok((i, invite))
    }

    /// The agent, if logged in.
    pub fn logged_in_agent(&self, tenant: &str, agent_id: &str) -> Result<&Agent, DomainError> {
        self.agents
            .get(&AgentKey::new(tenant, agent_id))
            .filter(|a| a.logged_in)
            .ok_or_else(|| DomainError::AgentNotAvailable {
                agent_id: agent_id.to_owned(),
                why: "not logged in",
            })
    }

    /// The interactions waiting in a queue, oldest first.
    pub fn queued<'a>(
        &'a self,
        tenant: &str,
        queue: &str,
    ) -> impl Iterator<Item = &'a Interaction> + 'a {
        self.queues
            .get(&(tenant.to_owned(), queue.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.interactions.get(id))
    }

    /// Interactions whose invite deadline is at or before `now`.
    pub fn expired_invites(&self, now: Micros) -> impl Iterator<Item = &Interaction> {
        self.deadlines
            .iter()
            .take_while(move |(deadline, _)| *deadline <= now)
            .filter_map(|(_, id)| self.interactions.get(id))
    }

    /// The earliest open invite deadline.
    pub fn next_deadline(&self) -> Option<Micros> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Adds an interaction read from the store, with its indexes.
    pub fn insert(&mut self, interaction: Interaction) {
        let id = interaction.id;
        self.interactions.insert(id, interaction);
        self.index(id, true);
    }

    /// Forgets a stopped interaction (the store keeps it); live ones are never forgotten.
    pub fn forget_stopped(&mut self, id: Uuid) {
        if self
            .interactions
            .get(&id)
            .is_some_and(|i| i.phase == Phase::Stopped)
        {
            self.interactions.remove(&id);
        }
    }

    /// Adds an agent read from the store.
    pub fn insert_agent(&mut self, agent: Agent) {
        self.agents.insert(agent.key(), agent);
    }

    /// Folds one event of `tenant` into the state. `seq` is its log position, `time` its time.
    pub fn evolve(&mut self, tenant: &str, seq: u64, time: Micros, body: &Body) {
        let id = |text: &str| text.parse::<Uuid>().ok();
        match body {
            Body::InteractionSubmitted(b) => {
                if let Some(i) = b
                    .interaction
                    .as_ref()
                    .and_then(|p| Interaction::from_proto(p, seq))
                {
                    self.insert(i);
                }
            }
            Body::PlacedInQueue(b) => self.update(id(&b.interaction_id), time, |i| {
                i.phase = Phase::Queued;
                i.queue = b.queue.clone();
                i.owner = None;
                i.invite = None;
                i.queued_seq = seq;
            }),
            Body::AgentInvited(b) => self.update(id(&b.interaction_id), time, |i| {
                if let (Some(ticket), Some(agent), Some(expires)) =
                    (id(&b.ticket_id), &b.agent, &b.expire_time)
                {
                    i.phase = Phase::Invited;
                    i.invite = Some(Invite {
                        ticket,
                        agent: agent.clone(),
                        expires: micros(expires),
                    });
                }
            }),
            Body::InviteEnded(b) => self.update(id(&b.interaction_id), time, end_invite),
            Body::Rejected(b) => self.update(id(&b.interaction_id), time, end_invite),
            Body::PartyAdded(b) => self.update(id(&b.interaction_id), time, |i| {
                if let Some(party) = &b.party {
                    i.phase = if party.agent_id().is_some() {
                        Phase::Handling
                    } else {
                        Phase::Routing
                    };
                    i.owner = Some(party.clone());
                    i.invite = None;
                }
            }),
            Body::PartyRemoved(b) => self.update(id(&b.interaction_id), time, |i| {
                if b.party.as_ref().is_some_and(|p| i.owned_by(p)) {
                    i.owner = None;
                }
            }),
            Body::ProcessingStopped(b) => self.update(id(&b.interaction_id), time, |i| {
                i.phase = Phase::Stopped;
                i.owner = None;
                i.invite = None;
                i.stop_reason = b.reason.clone();
                i.stopped_by = b.stopped_by.clone();
            }),
            Body::PropertiesChanged(b) => self.update(id(&b.interaction_id), time, |i| {
                for key in &b.deleted {
                    i.properties.remove(key);
                }
                i.properties
                    .extend(b.changed.iter().map(|(k, v)| (k.clone(), v.clone())));
            }),
            Body::AgentLogin(b) => self.agent_event(tenant, &b.agent, |a| {
                let place = b.agent.as_ref().map(|p| p.place_id.clone());
                a.logged_in = true;
                a.place_id = place.unwrap_or_default();
                a.media.clear();
            }),
            Body::AgentLogout(b) => self.agent_event(tenant, &b.agent, |a| {
                a.logged_in = false;
                a.media.clear();
            }),
            Body::MediaAdded(b) => self.agent_event(tenant, &b.agent, |a| {
                a.media.insert(
                    b.media_type.clone(),
                    Media {
                        ready: b.state() == AgentState::Ready,
                        reason: b.reason.clone(),
                    },
                );
            }),
            Body::MediaRemoved(b) => self.agent_event(tenant, &b.agent, |a| {
                a.media.remove(&b.media_type);
            }),
            Body::ReadyForMedia(b) => self.agent_event(tenant, &b.agent, |a| {
                if let Some(m) = a.media.get_mut(&b.media_type) {
                    m.ready = true;
                    m.reason = None;
                }
            }),
            Body::NotReadyForMedia(b) => self.agent_event(tenant, &b.agent, |a| {
                if let Some(m) = a.media.get_mut(&b.media_type) {
                    m.ready = false;
                    m.reason = b.reason.clone();
                }
            }),
            Body::MediaStateReasonChanged(b) => self.agent_event(tenant, &b.agent, |a| {
                if let Some(m) = a.media.get_mut(&b.media_type) {
                    m.reason = b.reason.clone();
                }
            }),
            // Directed events and TakenFromQueue tell of changes that their companion reporting
            // events make; session events are not interaction-server's.
            _ => {}
        }
    }

    /// Changes one interaction, keeping every index in step.
    fn update(&mut self, id: Option<Uuid>, time: Micros, change: impl FnOnce(&mut Interaction)) {
        let Some(id) = id.filter(|id| self.interactions.contains_key(id)) else {
            return;
        };
        self.index(id, false);
        let i = self.interactions.get_mut(&id).expect("checked above");
        change(i);
        i.version += 1;
        i.updated = time;
        self.index(id, true);
    }

    /// Adds (or removes) the interaction's entries in the queue, deadline and holding indexes.
    fn index(&mut self, id: Uuid, add: bool) {
        // Borrowed field by field: the interaction is read while the indexes change.
        let State {
            interactions,
            agents,
            queues,
            deadlines,
        } = self;
        let Some(i) = interactions.get(&id) else {
            return;
        };
        if i.phase == Phase::Queued {
            let key = (i.tenant.clone(), i.queue.clone());
            let entry = (i.queued_seq, id);
            if add {
                queues.entry(key).or_default().insert(entry);
            } else if let Some(set) = queues.get_mut(&key) {
                set.remove(&entry);
                if set.is_empty() {
                    queues.remove(&key);
                }
            }
        }
        if let Some(inv) = &i.invite {
            let entry = (inv.expires, id);
            if add {
                deadlines.insert(entry);
            } else {
                deadlines.remove(&entry);
            }
        }
        for agent_id in i.holders() {
            let agent = agent_entry(agents, &i.tenant, agent_id);
            if add {
                agent.holding.insert(id, i.media_type.clone());
            } else {
                agent.holding.remove(&id);
            }
        }
    }

    fn agent_event(
        &mut self,
        tenant: &str,
        party: &Option<AgentParty>,
        change: impl FnOnce(&mut Agent),
    ) {
        if let Some(party) = party {
            let agent = agent_entry(&mut self.agents, tenant, &party.agent_id);
            change(agent);
            agent.version += 1;
        }
    }
}

fn end_invite(i: &mut Interaction) {
    i.invite = None;
    if i.phase == Phase::Invited {
        i.phase = Phase::Routing;
    }
}

impl Agent {
    /// Reads back an agent the store kept with [`Agent::row`] (or, in an older row, with
    /// [`Agent::to_proto`]). What it holds is not read back: the interactions loaded after it say
    /// that.
    pub fn from_proto(p: &pb::Agent) -> Agent {
        Agent {
            tenant: p.tenant.clone(),
            agent_id: p.agent_id.clone(),
            place_id: p.place_id.clone(),
            logged_in: p.logged_in,
            media: p
                .media
                .iter()
                .map(|m| {
                    let media = Media {
                        ready: m.state() == AgentState::Ready,
                        reason: m.reason.clone(),
                    };
                    (m.media_type.clone(), media)
                })
                .collect(),
            holding: BTreeMap::new(),
            version: p.version,
        }
    }
}

/// The agent's entry, made (logged out, holding nothing) if it was never seen.
fn agent_entry<'a>(
    agents: &'a mut HashMap<AgentKey, Agent>,
    tenant: &str,
    agent_id: &str,
) -> &'a mut Agent {
    agents
        .entry(AgentKey::new(tenant, agent_id))
        .or_insert_with_key(Agent::new)
}

/// A short key naming a party in the store's columns: `a:<agent>`, `r:<router>`, `m:<server>`.
pub fn party_key(party: &Party) -> String {
    party.key()
}
