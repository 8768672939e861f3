//! The pure state machine of interactions and agents. No I/O, no clock, no randomness: everything
//! comes in through [`Ctx`].
//!
//! - [`decide`] turns a command from a caller into the events it causes, or a [`DomainError`]; it
//!   never mutates, so a refused command changes nothing.
//! - [`State::evolve`] folds one event into the state. The state after a command is the fold of its
//!   events, which is also how the log replays: the two cannot disagree.
//!
//! Checks run in the contract's order: existence in the caller's tenant → already stopped →
//! entitlement → state. (Token, role and argument checks happen before, in the API layer.)

mod error;
pub mod invariants;
mod platform;
mod state;

pub use error::DomainError;
pub use platform::{
    MAX_INVITE_TIMEOUT_MS, Platform, PlatformConfig, ReasonConfig, is_empty_reason,
};
pub use state::{Agent, AgentKey, Interaction, Invite, Media, Phase, State, party_key};

use ixn_proto::auth::Role;
use ixn_proto::common::{AgentParty, Party, Reason};
use ixn_proto::events::{self as ev, event::Body};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Microseconds since the Unix epoch.
pub use ixn_proto::clock::Micros;

/// Who is asking, as the verified token says, in one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    pub tenant: String,
    pub role: Role,
    pub sub: String,
    /// Set for role `agent`.
    pub agent_id: Option<String>,
}

impl Caller {
    /// The caller's agent id ("" for other roles).
    pub fn agent(&self) -> &str {
        self.agent_id.as_deref().unwrap_or_default()
    }
}

/// A command to the domain, with its arguments already validated.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Submit {
        media_type: String,
        queue: String,
        properties: BTreeMap<String, String>,
    },
    Pull {
        queue: String,
        media_type: Option<String>,
        interaction_id: Option<Uuid>,
    },
    Deliver {
        interaction_id: Uuid,
        agent_id: String,
        timeout_ms: u64,
    },
    Accept {
        interaction_id: Uuid,
        ticket_id: Uuid,
    },
    Reject {
        interaction_id: Uuid,
        ticket_id: Uuid,
        reason: Option<Reason>,
    },
    StopProcessing {
        interaction_id: Uuid,
        reason: Option<Reason>,
    },
    PlaceInQueue {
        interaction_id: Uuid,
        queue: String,
    },
    ChangeProperties {
        interaction_id: Uuid,
        changed: BTreeMap<String, String>,
        deleted: Vec<String>,
    },
    /// Revokes every invite whose deadline has passed (the system's timer).
    ExpireInvites,
    AgentLogin {
        agent_id: String,
        place_id: String,
    },
    AgentLogout {
        agent_id: String,
        reason: Option<Reason>,
    },
    AddMedia {
        agent_id: String,
        media_type: String,
        ready: bool,
        reason: Option<Reason>,
    },
    RemoveMedia {
        agent_id: String,
        media_type: String,
    },
    SetReady {
        agent_id: String,
        media_type: String,
    },
    SetNotReady {
        agent_id: String,
        media_type: String,
        reason: Option<Reason>,
    },
    ChangeMediaStateReason {
        agent_id: String,
        media_type: String,
        reason: Reason,
    },
}

impl Command {
    /// The method that, with tenant, caller and request id, keys the command's recorded outcome.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Submit { .. } => "Submit",
            Command::Pull { .. } => "Pull",
            Command::Deliver { .. } => "Deliver",
            Command::Accept { .. } => "Accept",
            Command::Reject { .. } => "Reject",
            Command::StopProcessing { .. } => "StopProcessing",
            Command::PlaceInQueue { .. } => "PlaceInQueue",
            Command::ChangeProperties { .. } => "ChangeProperties",
            Command::ExpireInvites => "ExpireInvites",
            Command::AgentLogin { .. } => "AgentService.Login",
            Command::AgentLogout { .. } => "AgentService.Logout",
            Command::AddMedia { .. } => "AddMedia",
            Command::RemoveMedia { .. } => "RemoveMedia",
            Command::SetReady { .. } => "SetReady",
            Command::SetNotReady { .. } => "SetNotReady",
            Command::ChangeMediaStateReason { .. } => "ChangeMediaStateReason",
        }
    }

    /// The interaction the command names, if it names one (the store loads it before deciding).
    pub fn interaction_id(&self) -> Option<Uuid> {
        match self {
            Command::Pull { interaction_id, .. } => *interaction_id,
            Command::Deliver { interaction_id, .. }
            | Command::Accept { interaction_id, .. }
            | Command::Reject { interaction_id, .. }
            | Command::StopProcessing { interaction_id, .. }
            | Command::PlaceInQueue { interaction_id, .. }
            | Command::ChangeProperties { interaction_id, .. } => Some(*interaction_id),
            _ => None,
        }
    }
}

/// What `decide` needs from outside: the time, the platform, and fresh ids.
pub struct Ctx<'a> {
    pub now: Micros,
    pub platform: &'a Platform,
    pub new_id: &'a mut dyn FnMut() -> Uuid,
}

/// One event a command causes, before the log gives it a sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    pub actor: Party,
    /// The parties it is addressed to; empty for reporting events.
    pub to: Vec<Party>,
    pub body: Body,
}

/// What the caller is answered with, read from the state once the events are applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The interaction as it now is.
    Interaction(Uuid),
    /// Pull: the interaction taken, or none when the queue held nothing the caller may take.
    Pulled(Option<Uuid>),
    /// Deliver: the invite's ticket and deadline.
    Invited { ticket_id: Uuid, expires: Micros },
    /// An acknowledgement naming the interaction (the sequence is the last event's).
    Ack(Uuid),
    /// The agent as it now is.
    Agent(AgentKey),
    /// Nothing to answer (the system's own commands).
    Nothing,
}

/// The outcome of a command: its events, in log order, and how to answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub events: Vec<Emitted>,
    pub reply: Reply,
}

const CAUSE_STOPPED: &str = "stopped";
const CAUSE_PLACED_IN_QUEUE: &str = "placed-in-queue";
const CAUSE_INVITE_TIMEOUT: &str = "invite-timeout";

/// Decides what `command` from `caller` does to `state`: the events, or why nothing happens.
pub fn decide(
    state: &State,
    caller: &Caller,
    command: &Command,
    ctx: &mut Ctx<'_>,
) -> Result<Decision, DomainError> {
    let actor = state.party_of(caller);
    let mut out = Out {
        actor,
        events: Vec::new(),
    };
    let reply = match command {
        Command::Submit {
            media_type,
            queue,
            properties,
        } => {
            let id = (ctx.new_id)();
            let (phase, owner) = if caller.role == Role::Agent {
                state.logged_in_agent(&caller.tenant, caller.agent())?;
                (Phase::Handling, Some(out.actor.clone()))
            } else {
                (Phase::Queued, None)
            };
            let interaction = Interaction {
                id,
                tenant: caller.tenant.clone(),
                media_type: media_type.clone(),
                phase,
                queue: queue.clone(),
                owner: owner.clone(),
                submitted_by: out.actor.clone(),
                invite: None,
                properties: properties.clone(),
                created: ctx.now,
                updated: ctx.now,
                stop_reason: None,
                stopped_by: None,
                version: 1,
                queued_seq: 0,
            };
            out.report(Body::InteractionSubmitted(ev::InteractionSubmitted {
                interaction: Some(interaction.to_proto()),
            }));
            if let Some(owner) = owner {
                out.report(party_added(id, owner));
            }
            Reply::Interaction(id)
        }

        Command::Pull {
            queue,
            media_type,
            interaction_id,
        } => {
            // Existence in the caller's tenant, and not stopped, before the agent's availability.
            let named = match interaction_id {
                Some(id) => Some(state.live(&caller.tenant, *id)?),
                None => None,
            };
            let agent = match caller.role {
                Role::Agent => Some(state.logged_in_agent(&caller.tenant, caller.agent())?),
                _ => None,
            };
            // An agent may take only media it is Ready on and has room for.
            let may_take = |i: &Interaction| {
                media_type.as_ref().is_none_or(|m| *m == i.media_type)
                    && agent.is_none_or(|a| a.can_take(&i.media_type, ctx.platform))
            };
            let chosen = match named {
                Some(i) => {
                    if i.phase != Phase::Queued || i.queue != *queue {
                        return Err(DomainError::InvalidState {
                            id: i.id,
                            state: i.phase.name(),
                            what: "only an interaction waiting in the named queue can be pulled",
                        });
                    }
                    if !may_take(i) {
                        return Err(DomainError::AgentNotAvailable {
                            agent_id: caller.agent().to_owned(),
                            why: "not Ready on that media, or at capacity",
                        });
                    }
                    Some(i)
                }
                None => state.queued(&caller.tenant, queue).find(|i| may_take(i)),
            };
            match chosen {
                Some(i) => {
                    out.report(Body::TakenFromQueue(ev::TakenFromQueue {
                        interaction_id: text(i.id),
                        queue: queue.clone(),
                    }));
                    out.report(party_added(i.id, out.actor.clone()));
                    Reply::Pulled(Some(i.id))
                }
                None => Reply::Pulled(None),
            }
        }

        Command::Deliver {
            interaction_id,
            agent_id,
            timeout_ms,
        } => {
            let i = state.live(&caller.tenant, *interaction_id)?;
            if !i.owned_by(&out.actor) {
                return Err(DomainError::NotOwner(i.id));
            }
            if i.phase != Phase::Routing {
                return Err(DomainError::InvalidState {
                    id: i.id,
                    state: i.phase.name(),
                    what: "only an interaction being routed can be delivered",
                });
            }
            let agent = state.logged_in_agent(&caller.tenant, agent_id)?;
            if !agent.can_take(&i.media_type, ctx.platform) {
                return Err(DomainError::AgentNotAvailable {
                    agent_id: agent_id.clone(),
                    why: "not Ready on that media, or at capacity",
                });
            }
            let ticket_id = (ctx.new_id)();
            let timeout = if *timeout_ms == 0 {
                ctx.platform.invite_timeout_ms
            } else {
                *timeout_ms
            };
            let expires = ctx.now + (timeout as i64) * 1_000;
            let agent_party = agent.party();
            let mut offered = i.clone();
            offered.phase = Phase::Invited;
            offered.invite = Some(Invite {
                ticket: ticket_id,
                agent: agent_party.clone(),
                expires,
            });
            out.direct(
                agent_party.clone().into(),
                Body::Invite(ev::Invite {
                    ticket_id: text(ticket_id),
                    interaction: Some(offered.to_proto()),
                    expire_time: Some(timestamp(expires)),
                }),
            );
            out.report(Body::AgentInvited(ev::AgentInvited {
                interaction_id: text(i.id),
                ticket_id: text(ticket_id),
                agent: Some(agent_party),
                expire_time: Some(timestamp(expires)),
            }));
            Reply::Invited { ticket_id, expires }
        }

        Command::Accept {
            interaction_id,
            ticket_id,
        } => {
            let (i, invite) = state.open_invite(caller, *interaction_id, *ticket_id, ctx.now)?;
            let router = i
                .owner
                .clone()
                .expect("an invited interaction has a router");
            out.direct(
                router.clone(),
                invite_ended(i.id, invite, ev::InviteOutcome::Accepted),
            );
            out.report(party_removed(i.id, router));
            out.report(party_added(i.id, invite.agent.clone().into()));
            Reply::Interaction(i.id)
        }

        Command::Reject {
            interaction_id,
            ticket_id,
            reason,
        } => {
            let (i, invite) = state.open_invite(caller, *interaction_id, *ticket_id, ctx.now)?;
            let router = i
                .owner
                .clone()
                .expect("an invited interaction has a router");
            out.direct(
                router,
                invite_ended(i.id, invite, ev::InviteOutcome::Rejected),
            );
            out.report(Body::Rejected(ev::Rejected {
                interaction_id: text(i.id),
                ticket_id: text(invite.ticket),
                agent: Some(invite.agent.clone()),
                reason: reason.clone(),
            }));
            Reply::Ack(i.id)
        }

        Command::StopProcessing {
            interaction_id,
            reason,
        } => {
            let i = state.live(&caller.tenant, *interaction_id)?;
            if !may_change(caller, i, &out.actor) {
                return Err(DomainError::NotOwner(i.id));
            }
            out.release(i, CAUSE_STOPPED, reason.as_ref());
            out.report(Body::ProcessingStopped(ev::ProcessingStopped {
                interaction_id: text(i.id),
                reason: reason.clone(),
                stopped_by: Some(out.actor.clone()),
            }));
            Reply::Ack(i.id)
        }

        Command::PlaceInQueue {
            interaction_id,
            queue,
        } => {
            let i = state.live(&caller.tenant, *interaction_id)?;
            if !(caller.role == Role::Admin || i.owned_by(&out.actor)) {
                return Err(DomainError::NotOwner(i.id));
            }
            if i.phase == Phase::Queued {
                return Err(DomainError::InvalidState {
                    id: i.id,
                    state: i.phase.name(),
                    what: "the interaction is already in a queue",
                });
            }
            out.release(i, CAUSE_PLACED_IN_QUEUE, None);
            out.report(Body::PlacedInQueue(ev::PlacedInQueue {
                interaction_id: text(i.id),
                queue: queue.clone(),
            }));
            Reply::Ack(i.id)
        }

        Command::ChangeProperties {
            interaction_id,
            changed,
            deleted,
        } => {
            let i = state.live(&caller.tenant, *interaction_id)?;
            if !may_change(caller, i, &out.actor) {
                return Err(DomainError::NotOwner(i.id));
            }
            let mut after = i.properties.clone();
            for key in deleted {
                after.remove(key);
            }
            after.extend(changed.iter().map(|(k, v)| (k.clone(), v.clone())));
            crate::limits::check_properties(&after, "changed")?;
            out.report(Body::PropertiesChanged(ev::PropertiesChanged {
                interaction_id: text(i.id),
                changed: changed.clone(),
                deleted: deleted.clone(),
            }));
            Reply::Interaction(i.id)
        }

        Command::ExpireInvites => {
            out.actor = Party::system(CAUSE_INVITE_TIMEOUT);
            for i in state.expired_invites(ctx.now) {
                let invite = i
                    .invite
                    .as_ref()
                    .expect("an expiring interaction has an invite");
                out.direct(
                    invite.agent.clone().into(),
                    Body::Revoked(ev::Revoked {
                        interaction_id: text(i.id),
                        ticket_id: text(invite.ticket),
                        cause: CAUSE_INVITE_TIMEOUT.into(),
                    }),
                );
                let router = i
                    .owner
                    .clone()
                    .expect("an invited interaction has a router");
                out.direct(
                    router,
                    invite_ended(i.id, invite, ev::InviteOutcome::TimedOut),
                );
            }
            Reply::Nothing
        }

        Command::AgentLogin { agent_id, place_id } => {
            let key = AgentKey::new(&caller.tenant, agent_id);
            if state.agents.get(&key).is_some_and(|a| a.logged_in) {
                return Err(DomainError::AlreadyLoggedIn(agent_id.clone()));
            }
            out.report(Body::AgentLogin(ev::AgentLogin {
                agent: Some(AgentParty {
                    agent_id: agent_id.clone(),
                    place_id: place_id.clone(),
                }),
            }));
            Reply::Agent(key)
        }

        Command::AgentLogout { agent_id, reason } => {
            let agent = state.logged_in_agent(&caller.tenant, agent_id)?;
            if !agent.holding.is_empty() {
                return Err(DomainError::OngoingInteraction {
                    agent_id: agent_id.clone(),
                    interaction_ids: agent.holding.keys().copied().collect(),
                });
            }
            let reason = ctx.platform.logout_reason(reason.as_ref())?;
            if reason.is_none() && ctx.platform.logout_reason_required {
                return Err(DomainError::LogoutReasonRequired {
                    allowed: ctx
                        .platform
                        .logout_reasons
                        .iter()
                        .map(|r| r.code.clone())
                        .collect(),
                });
            }
            out.report(Body::AgentLogout(ev::AgentLogout {
                agent: Some(agent.party()),
                reason,
            }));
            Reply::Agent(agent.key())
        }

        Command::AddMedia {
            agent_id,
            media_type,
            ready,
            reason,
        } => {
            let agent = state.logged_in_agent(&caller.tenant, agent_id)?;
            if agent.media.contains_key(media_type) {
                return Err(agent_state(agent_id, "the media is already active"));
            }
            let (state_value, reason) = if *ready {
                (ixn_proto::common::AgentState::Ready, None)
            } else {
                let r = ctx.platform.not_ready_reason(reason.as_ref())?;
                (ixn_proto::common::AgentState::NotReady, Some(r))
            };
            out.report(Body::MediaAdded(ev::MediaAdded {
                agent: Some(agent.party()),
                media_type: media_type.clone(),
                state: state_value as i32,
                reason,
            }));
            Reply::Agent(agent.key())
        }

        Command::RemoveMedia {
            agent_id,
            media_type,
        } => {
            let agent = state.logged_in_agent(&caller.tenant, agent_id)?;
            if !ctx.platform.channel_deactivation_supported {
                return Err(agent_state(
                    agent_id,
                    "the platform does not support channel deactivation",
                ));
            }
            agent.media_of(media_type)?;
            out.report(Body::MediaRemoved(ev::MediaRemoved {
                agent: Some(agent.party()),
                media_type: media_type.clone(),
            }));
            Reply::Agent(agent.key())
        }

        Command::SetReady {
            agent_id,
            media_type,
        } => {
            let agent = state.logged_in_agent(&caller.tenant, agent_id)?;
            if !agent.media_of(media_type)?.ready {
                out.report(Body::ReadyForMedia(ev::ReadyForMedia {
                    agent: Some(agent.party()),
                    media_type: media_type.clone(),
                }));
            }
            Reply::Agent(agent.key())
        }

        Command::SetNotReady {
            agent_id,
            media_type,
            reason,
        } => {
            let agent = state.logged_in_agent(&caller.tenant, agent_id)?;
            let media = agent.media_of(media_type)?;
            let reason = ctx.platform.not_ready_reason(reason.as_ref())?;
            if media.ready || media.reason.as_ref() != Some(&reason) {
                out.report(Body::NotReadyForMedia(ev::NotReadyForMedia {
                    agent: Some(agent.party()),
                    media_type: media_type.clone(),
                    reason: Some(reason),
                }));
            }
            Reply::Agent(agent.key())
        }

        Command::ChangeMediaStateReason {
            agent_id,
            media_type,
            reason,
        } => {
            let agent = state.logged_in_agent(&caller.tenant, agent_id)?;
            if agent.media_of(media_type)?.ready {
                return Err(agent_state(agent_id, "a Ready media carries no reason"));
            }
            let reason = ctx.platform.not_ready_reason(Some(reason))?;
            out.report(Body::MediaStateReasonChanged(ev::MediaStateReasonChanged {
                agent: Some(agent.party()),
                media_type: media_type.clone(),
                reason: Some(reason),
            }));
            Reply::Agent(agent.key())
        }
    };
    Ok(Decision {
        events: out.events,
        reply,
    })
}

/// The events of one decision, all with the same actor.
struct Out {
    actor: Party,
    events: Vec<Emitted>,
}

impl Out {
    fn report(&mut self, body: Body) {
        self.events.push(Emitted {
            actor: self.actor.clone(),
            to: Vec::new(),
            body,
        });
    }

    fn direct(&mut self, to: Party, body: Body) {
        self.events.push(Emitted {
            actor: self.actor.clone(),
            to: vec![to],
            body,
        });
    }

    /// Takes the interaction away from its invitee and owner, telling each of them (Stop Processing
    /// versions A–D; PlaceInQueue alike). An agent owner is told of a stop even when it asked for it
    /// (version C); a router that asked hears nothing (version D), one that did not is told the
    /// interaction was abandoned (version B).
    fn release(&mut self, i: &Interaction, cause: &str, stop_reason: Option<&Reason>) {
        let stopping = cause == CAUSE_STOPPED;
        let revoked = |ticket: Option<Uuid>| {
            Body::Revoked(ev::Revoked {
                interaction_id: text(i.id),
                ticket_id: ticket.map(text).unwrap_or_default(),
                cause: cause.to_owned(),
            })
        };
        if let Some(invite) = &i.invite {
            self.direct(invite.agent.clone().into(), revoked(Some(invite.ticket)));
        }
        if let Some(owner) = &i.owner {
            let asked = owner.same_as(&self.actor);
            if owner.agent_id().is_some() {
                if !asked || stopping {
                    self.direct(owner.clone(), revoked(None));
                }
            } else if !asked {
                let body = if stopping {
                    Body::Abandoned(ev::Abandoned {
                        interaction_id: text(i.id),
                        reason: stop_reason.cloned(),
                    })
                } else {
                    revoked(None)
                };
                self.direct(owner.clone(), body);
            }
            self.report(party_removed(i.id, owner.clone()));
        }
    }
}

/// Who may stop an interaction or change its properties: an admin, its submitting media server, or
/// its owner.
fn may_change(caller: &Caller, i: &Interaction, actor: &Party) -> bool {
    match caller.role {
        Role::Admin => true,
        Role::MediaServer => i.submitted_by == *actor,
        Role::Agent | Role::Router => i.owned_by(actor),
        _ => false,
    }
}

/// An id as the contract writes it (lower case, hyphenated), without `to_string`'s formatting
/// machinery: the writer writes several per command.
pub fn text(id: impl std::borrow::Borrow<Uuid>) -> String {
    let mut buf = Uuid::encode_buffer();
    id.borrow().hyphenated().encode_lower(&mut buf).to_owned()
}

fn party_added(id: Uuid, party: Party) -> Body {
    Body::PartyAdded(ev::PartyAdded {
        interaction_id: text(id),
        party: Some(party),
    })
}

fn party_removed(id: Uuid, party: Party) -> Body {
    Body::PartyRemoved(ev::PartyRemoved {
        interaction_id: text(id),
        party: Some(party),
    })
}

fn invite_ended(id: Uuid, invite: &Invite, outcome: ev::InviteOutcome) -> Body {
    Body::InviteEnded(ev::InviteEnded {
        interaction_id: text(id),
        ticket_id: text(invite.ticket),
        agent: Some(invite.agent.clone()),
        outcome: outcome as i32,
    })
}

fn agent_state(agent_id: &str, what: &'static str) -> DomainError {
    DomainError::AgentState {
        agent_id: agent_id.to_owned(),
        what,
    }
}

pub use ixn_proto::clock::{micros, timestamp};

#[cfg(test)]
mod tests;
