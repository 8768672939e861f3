//! Sessions and the mirror of what each agent holds; pure (no I/O, no clock).
//!
//! A session is the wire type `Session` itself: its channel group and channels, and the platform's
//! reasons collected at login. The functions here check a request against a session and say which
//! events a change makes; the service performs the switch calls in between and commits the events.

use ixn_proto::common::{AgentState, Party, Reason};
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::events::event::Body;
use ixn_proto::events::{self as ev, Event, InviteOutcome};
use ixn_proto::session::{Channel, ChannelGroup, Session, SessionState};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Agents are keyed by tenant and agent id.
pub type AgentKey = (String, String);

pub fn agent_key(tenant: &str, agent_id: &str) -> AgentKey {
    (tenant.to_owned(), agent_id.to_owned())
}

/// One event a change makes, before the log gives it a sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    pub tenant: String,
    pub actor: Party,
    pub to: Vec<Party>,
    pub body: Body,
    /// Set for an event relayed from interaction-server.
    pub relayed: Option<Event>,
}

/// The party every event of a session is addressed to.
pub fn agent_of(s: &Session) -> Party {
    Party::agent(&s.agent_id, &s.place_id)
}

fn emit(s: &Session, actor: &Party, body: Body) -> Emitted {
    Emitted {
        tenant: s.tenant.clone(),
        actor: actor.clone(),
        to: vec![agent_of(s)],
        body,
        relayed: None,
    }
}

/// A new session's events: the session, its channel group, then each channel.
pub fn created(s: &Session, actor: &Party) -> Vec<Emitted> {
    let group = s.channel_group.clone().unwrap_or_default();
    let mut out = vec![
        emit(
            s,
            actor,
            Body::SessionCreated(ev::SessionCreated {
                session_id: s.session_id.clone(),
                agent: Some(ixn_proto::common::AgentParty {
                    agent_id: s.agent_id.clone(),
                    place_id: s.place_id.clone(),
                }),
            }),
        ),
        emit(
            s,
            actor,
            Body::ChannelGroupCreated(ev::ChannelGroupCreated {
                session_id: s.session_id.clone(),
                channel_group_id: group.channel_group_id.clone(),
            }),
        ),
    ];
    for c in &group.channels {
        out.push(emit(
            s,
            actor,
            Body::ChannelCreated(ev::ChannelCreated {
                session_id: s.session_id.clone(),
                channel_id: c.channel_id.clone(),
                media_type: c.media_type.clone(),
                active: c.active,
                state: c.state,
                reason: c.reason.clone(),
            }),
        ));
    }
    out
}

/// The session's channel of `media`.
pub fn channel<'a>(s: &'a Session, media: &str) -> Result<&'a Channel, Failure> {
    s.channel_group
        .as_ref()
        .and_then(|g| g.channels.iter().find(|c| c.media_type == media))
        .ok_or_else(|| {
            Failure::new(
                R::ChannelNotFound,
                format!("session {} has no {media} channel", s.session_id),
            )
            .with_meta("session_id", &s.session_id)
            .with_meta("media_type", media)
        })
}

fn channel_mut<'a>(s: &'a mut Session, media: &str) -> &'a mut Channel {
    s.channel_group
        .get_or_insert_with(ChannelGroup::default)
        .channels
        .iter_mut()
        .find(|c| c.media_type == media)
        .expect("the channel was checked before the change")
}

/// Whether a channel is Ready.
pub fn is_ready(c: &Channel) -> bool {
    c.state() == AgentState::Ready
}

/// The channels, in login order.
pub fn channels(s: &Session) -> &[Channel] {
    s.channel_group
        .as_ref()
        .map(|g| g.channels.as_slice())
        .unwrap_or_default()
}

fn is_empty(r: &Reason) -> bool {
    r.code.is_empty() && r.description.is_empty() && r.system_name.is_empty()
}

/// A listed code gives the configured reason; free text passes only where the platform allows it.
fn allowed(s: &Session, list: &[Reason], reason: &Reason) -> Result<Reason, Failure> {
    if !reason.code.is_empty() {
        return list
            .iter()
            .find(|r| r.code == reason.code)
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    R::ReasonNotAllowed,
                    format!("the platform does not list reason `{}`", reason.code),
                )
                .with_meta("code", &reason.code)
            });
    }
    if s.free_text_reasons_allowed {
        Ok(reason.clone())
    } else {
        Err(Failure::new(
            R::ReasonNotAllowed,
            "the platform allows no free-text reason",
        ))
    }
}

/// The Not Ready reason to use: the default for none, else one the platform lists.
pub fn not_ready_reason(s: &Session, reason: Option<&Reason>) -> Result<Reason, Failure> {
    match reason {
        Some(r) if !is_empty(r) => allowed(s, &s.not_ready_reasons, r),
        _ => Ok(s.default_not_ready_reason.clone().unwrap_or_default()),
    }
}

/// A session that can still be changed: not disposed.
pub fn live(s: &Session) -> Result<(), Failure> {
    if s.state() == SessionState::Disposed {
        Err(Failure::new(
            R::SessionNotFound,
            format!("session {} has ended", s.session_id),
        )
        .with_meta("session_id", &s.session_id))
    } else {
        Ok(())
    }
}

/// The change of a channel's agent state, and its event.
pub fn state_changed(
    s: &mut Session,
    media: &str,
    ready: bool,
    reason: Option<Reason>,
    actor: &Party,
) -> Emitted {
    let session_id = s.session_id.clone();
    let c = channel_mut(s, media);
    c.state = if ready {
        AgentState::Ready
    } else {
        AgentState::NotReady
    } as i32;
    c.reason = reason;
    let body = Body::AgentStateChanged(ev::AgentStateChanged {
        session_id,
        channel_id: c.channel_id.clone(),
        media_type: media.to_owned(),
        state: c.state,
        reason: c.reason.clone(),
    });
    s.version += 1;
    emit(s, actor, body)
}

/// The (de)activation of a channel, and its event. An activated channel is Not Ready with `reason`.
pub fn activation_changed(
    s: &mut Session,
    media: &str,
    active: bool,
    reason: Option<Reason>,
    actor: &Party,
) -> Emitted {
    let session_id = s.session_id.clone();
    let c = channel_mut(s, media);
    c.active = active;
    if active {
        c.state = AgentState::NotReady as i32;
        c.reason = reason;
    }
    let channel_id = c.channel_id.clone();
    let body = if active {
        Body::ChannelActivated(ev::ChannelActivated {
            session_id,
            channel_id,
            media_type: media.to_owned(),
        })
    } else {
        Body::ChannelDeactivated(ev::ChannelDeactivated {
            session_id,
            channel_id,
            media_type: media.to_owned(),
        })
    };
    s.version += 1;
    emit(s, actor, body)
}

/// What the Logout Basic Flow will do, decided by its first two steps.
#[derive(Clone, Debug, PartialEq)]
pub struct LogoutPlan {
    /// The logout reason, if given (and allowed).
    pub reason: Option<Reason>,
    /// The reason Ready channels are made Not Ready with (step 3): the logout reason if given, else
    /// the default Not Ready reason.
    pub not_ready_reason: Reason,
}

/// Steps 1 and 2 of the Basic Flow: EF1 (an ongoing interaction on any channel), then AF1 (the
/// platform requires a reason and none is given). Neither changes anything.
pub fn plan_logout(
    s: &Session,
    held: &BTreeMap<String, String>,
    reason: Option<&Reason>,
) -> Result<LogoutPlan, Failure> {
    if !held.is_empty() {
        let ids: Vec<&str> = held.keys().map(String::as_str).collect();
        return Err(Failure::new(
            R::OngoingInteraction,
            "an interaction is underway; the logout is not possible",
        )
        .with_meta("session_id", &s.session_id)
        .with_meta("interaction_ids", ids.join(",")));
    }
    let reason = match reason {
        Some(r) if !is_empty(r) => Some(allowed(s, &s.logout_reasons, r)?),
        _ => None,
    };
    if reason.is_none() && s.logout_reason_required {
        let codes: Vec<&str> = s.logout_reasons.iter().map(|r| r.code.as_str()).collect();
        return Err(Failure::new(
            R::LogoutReasonRequired,
            "the platform requires a logout reason",
        )
        .with_meta("session_id", &s.session_id)
        .with_meta("logout_reasons", codes.join(",")));
    }
    let not_ready_reason = reason
        .clone()
        .or_else(|| s.default_not_ready_reason.clone())
        .unwrap_or_default();
    Ok(LogoutPlan {
        reason,
        not_ready_reason,
    })
}

/// Step 6: each channel, then the channel group, then the session is disposed, each with its event.
pub fn disposed(s: &mut Session, reason: Option<Reason>, actor: &Party) -> Vec<Emitted> {
    let mut out = Vec::new();
    for c in channels(s) {
        out.push(emit(
            s,
            actor,
            Body::ChannelDisposed(ev::ChannelDisposed {
                session_id: s.session_id.clone(),
                channel_id: c.channel_id.clone(),
            }),
        ));
    }
    let group = s
        .channel_group
        .as_ref()
        .map(|g| g.channel_group_id.clone())
        .unwrap_or_default();
    out.push(emit(
        s,
        actor,
        Body::ChannelGroupDisposed(ev::ChannelGroupDisposed {
            session_id: s.session_id.clone(),
            channel_group_id: group,
        }),
    ));
    out.push(emit(
        s,
        actor,
        Body::SessionDisposed(ev::SessionDisposed {
            session_id: s.session_id.clone(),
            reason,
        }),
    ));
    s.state = SessionState::Disposed as i32;
    s.version += 1;
    out
}

/// The session an event of session-service's own is about (none for a relayed one).
pub fn session_of(event: &Event) -> Option<&str> {
    let id = match event.body.as_ref()? {
        Body::SessionCreated(b) => &b.session_id,
        Body::ChannelGroupCreated(b) => &b.session_id,
        Body::ChannelCreated(b) => &b.session_id,
        Body::AgentStateChanged(b) => &b.session_id,
        Body::ChannelActivated(b) => &b.session_id,
        Body::ChannelDeactivated(b) => &b.session_id,
        Body::ChannelDisposed(b) => &b.session_id,
        Body::ChannelGroupDisposed(b) => &b.session_id,
        Body::SessionDisposed(b) => &b.session_id,
        _ => return None,
    };
    Some(id)
}

/// Whether an event ends the session it belongs to (its `Connect` streams then close with OK).
pub fn ends_session(event: &Event, session_id: &str) -> bool {
    matches!(&event.body, Some(Body::SessionDisposed(d)) if d.session_id == session_id)
}

/// A change to the mirror of what agents hold, read off interaction-server's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorChange {
    /// An interaction's media, from its submission or an invite.
    Media { interaction: String, media: String },
    Hold {
        agent: AgentKey,
        interaction: String,
    },
    Release {
        agent: AgentKey,
        interaction: String,
    },
    /// The interaction stopped: nobody holds it any more.
    Forget { interaction: String },
}

/// One holding: the agent, the interaction and its media.
pub type Held = (AgentKey, String, String);

/// What each agent owns or is invited to, as interaction-server's stream says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mirror {
    /// agent → interaction → media.
    holdings: HashMap<AgentKey, BTreeMap<String, String>>,
    /// interaction → the agents holding it.
    holders: HashMap<String, BTreeSet<AgentKey>>,
    /// Live interaction → media.
    media: HashMap<String, String>,
}

impl Mirror {
    /// What an agent holds: interaction → media.
    pub fn held_by(&self, key: &AgentKey) -> BTreeMap<String, String> {
        self.holdings.get(key).cloned().unwrap_or_default()
    }

    /// The mirror changes an interaction-server event makes.
    pub fn changes(event: &Event) -> Vec<MirrorChange> {
        let tenant = &event.tenant;
        // The change for `party` (if an agent) now holding, or no longer holding, `interaction`.
        let hold = |party: Option<&Party>, interaction: &str, held: bool| {
            let agent = agent_key(tenant, party?.agent_id()?);
            let interaction = interaction.to_owned();
            Some(if held {
                MirrorChange::Hold { agent, interaction }
            } else {
                MirrorChange::Release { agent, interaction }
            })
        };
        let invited = |a: &Option<ixn_proto::common::AgentParty>| a.clone().map(Party::from);
        let Some(body) = &event.body else {
            return Vec::new();
        };
        let media = |i: &ixn_proto::interaction::Interaction| MirrorChange::Media {
            interaction: i.interaction_id.clone(),
            media: i.media_type.clone(),
        };
        match body {
            Body::InteractionSubmitted(b) => b.interaction.iter().map(media).collect(),
            // The directed events say as much as their reporting companions (AgentInvited,
            // PartyRemoved) and arrive first: the mirror does not depend on both being relayed
            // in one batch.
            Body::Invite(b) => match &b.interaction {
                Some(i) => [
                    Some(media(i)),
                    hold(event.to.first(), &i.interaction_id, true),
                ]
                .into_iter()
                .flatten()
                .collect(),
                None => Vec::new(),
            },
            Body::Revoked(b) => hold(event.to.first(), &b.interaction_id, false)
                .into_iter()
                .collect(),
            Body::PartyAdded(b) => hold(b.party.as_ref(), &b.interaction_id, true)
                .into_iter()
                .collect(),
            Body::PartyRemoved(b) => hold(b.party.as_ref(), &b.interaction_id, false)
                .into_iter()
                .collect(),
            Body::AgentInvited(b) => hold(invited(&b.agent).as_ref(), &b.interaction_id, true)
                .into_iter()
                .collect(),
            Body::InviteEnded(b) if b.outcome() != InviteOutcome::Accepted => {
                hold(invited(&b.agent).as_ref(), &b.interaction_id, false)
                    .into_iter()
                    .collect()
            }
            Body::Rejected(b) => hold(invited(&b.agent).as_ref(), &b.interaction_id, false)
                .into_iter()
                .collect(),
            Body::ProcessingStopped(b) => vec![MirrorChange::Forget {
                interaction: b.interaction_id.clone(),
            }],
            _ => Vec::new(),
        }
    }

    pub fn apply(&mut self, change: &MirrorChange) {
        match change {
            MirrorChange::Media { interaction, media } => {
                self.media.insert(interaction.clone(), media.clone());
            }
            MirrorChange::Hold { agent, interaction } => {
                let media = self.media.get(interaction).cloned().unwrap_or_default();
                self.holdings
                    .entry(agent.clone())
                    .or_default()
                    .insert(interaction.clone(), media);
                self.holders
                    .entry(interaction.clone())
                    .or_default()
                    .insert(agent.clone());
            }
            MirrorChange::Release { agent, interaction } => self.release(agent, interaction),
            MirrorChange::Forget { interaction } => {
                for agent in self.holders.remove(interaction).unwrap_or_default() {
                    self.release(&agent, interaction);
                }
                self.media.remove(interaction);
            }
        }
    }

    fn release(&mut self, agent: &AgentKey, interaction: &str) {
        if let Some(held) = self.holdings.get_mut(agent) {
            held.remove(interaction);
            if held.is_empty() {
                self.holdings.remove(agent);
            }
        }
        if let Some(holders) = self.holders.get_mut(interaction) {
            holders.remove(agent);
            if holders.is_empty() {
                self.holders.remove(interaction);
            }
        }
    }

    /// Every (agent, interaction, media) held, and every live interaction's media: what the store
    /// keeps.
    pub fn rows(&self) -> (Vec<Held>, Vec<(String, String)>) {
        let held = self
            .holdings
            .iter()
            .flat_map(|(agent, m)| {
                m.iter()
                    .map(move |(i, media)| (agent.clone(), i.clone(), media.clone()))
            })
            .collect();
        let media = self
            .media
            .iter()
            .map(|(i, m)| (i.clone(), m.clone()))
            .collect();
        (held, media)
    }
}

#[cfg(test)]
mod tests;
