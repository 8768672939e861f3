//! The invariants of a [`State`] reached by commands: what the property tests (`domain/tests.rs`)
//! and the fuzz targets (`fuzz/`) check after every command.

use super::{Agent, AgentKey, Caller, Command, Interaction, Phase, Platform, State};
use ixn_proto::auth::Role;
use ixn_proto::clock::Micros;
use ixn_proto::common::Party;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Checks `state`, reached from `before` by `caller`'s `command` at `now`; the first invariant it
/// breaks, in a sentence.
///
/// - Phase, owner and invite agree: at most one processor, an invite only while INVITED.
/// - Each queue (those holding QUEUED interactions, and any `queues` names) lists exactly its QUEUED
///   interactions, first in first out; the next invite deadline is the earliest invite's, and the
///   timer leaves no expired invite.
/// - Each agent holds exactly what the interactions name, only while logged in (and a logged-out
///   agent has no media), within capacity but for an agent's own Submit; its media are the
///   platform's, a Ready one without a reason and a Not Ready one with one.
/// - Nothing of another tenant changes (the timer alone works across tenants).
pub fn check(
    platform: &Platform,
    before: &State,
    state: &State,
    caller: &Caller,
    command: &Command,
    now: Micros,
    queues: &[(&str, &str)],
) -> Result<(), String> {
    let mut holding: BTreeMap<AgentKey, BTreeMap<Uuid, String>> = BTreeMap::new();
    let mut named: BTreeSet<(String, String)> = queues
        .iter()
        .map(|(t, q)| ((*t).to_owned(), (*q).to_owned()))
        .collect();
    let mut deadlines: Vec<Micros> = Vec::new();
    for (id, i) in &state.interactions {
        ensure(*id == i.id, || format!("{id} is filed as {}", i.id))?;
        let router = i.owner.as_ref().and_then(Party::router_id).is_some();
        let agent = i.owner.as_ref().and_then(Party::agent_id).is_some();
        let consistent = match i.phase {
            Phase::Queued | Phase::Stopped => i.owner.is_none() && i.invite.is_none(),
            Phase::Routing => router && i.invite.is_none(),
            Phase::Invited => router && i.invite.is_some(),
            Phase::Handling => agent && i.invite.is_none(),
        };
        ensure(consistent, || {
            format!(
                "{:?} owned by {:?}, invite {:?}",
                i.phase, i.owner, i.invite
            )
        })?;
        for agent_id in i.holders() {
            holding
                .entry(AgentKey::new(&i.tenant, agent_id))
                .or_default()
                .insert(*id, i.media_type.clone());
        }
        if i.phase == Phase::Queued {
            named.insert((i.tenant.clone(), i.queue.clone()));
        }
        if let Some(invite) = &i.invite {
            deadlines.push(invite.expires);
            ensure(
                !matches!(command, Command::ExpireInvites) || invite.expires > now,
                || format!("the expired invite of {id} survived the timer"),
            )?;
        }
    }

    for (tenant, queue) in &named {
        let listed: Vec<Uuid> = state.queued(tenant, queue).map(|i| i.id).collect();
        let mut expected: Vec<&Interaction> = state
            .interactions
            .values()
            .filter(|i| i.phase == Phase::Queued && &i.tenant == tenant && &i.queue == queue)
            .collect();
        expected.sort_by_key(|i| i.queued_seq);
        let expected: Vec<Uuid> = expected.iter().map(|i| i.id).collect();
        ensure(listed == expected, || {
            format!("queue {tenant}/{queue} lists {listed:?}, not {expected:?}")
        })?;
    }
    let earliest = deadlines.iter().min().copied();
    ensure(state.next_deadline() == earliest, || {
        format!(
            "the next deadline is {:?}, not {earliest:?}",
            state.next_deadline()
        )
    })?;

    if let Some(key) = holding.keys().find(|k| !state.agents.contains_key(*k)) {
        return Err(format!("{key:?} holds but is unknown"));
    }
    let nothing = BTreeMap::new();
    for (key, a) in &state.agents {
        ensure(
            (&a.tenant, &a.agent_id) == (&key.tenant, &key.agent_id),
            || format!("{key:?} is filed as {}/{}", a.tenant, a.agent_id),
        )?;
        let expected = holding.get(key).unwrap_or(&nothing);
        ensure(&a.holding == expected, || {
            format!("{key:?} holds {:?}, not {expected:?}", a.holding)
        })?;
        ensure(
            a.logged_in || (a.holding.is_empty() && a.media.is_empty()),
            || {
                format!(
                    "logged-out {key:?} holds {:?}, media {:?}",
                    a.holding, a.media
                )
            },
        )?;
        for media in a.holding.values().collect::<BTreeSet<_>>() {
            let load = a.load(media);
            let was = before.agents.get(key).map_or(0, |a| a.load(media));
            let own_submit = caller.role == Role::Agent
                && caller.tenant == key.tenant
                && caller.agent() == key.agent_id
                && matches!(command, Command::Submit { media_type, .. } if media_type == media);
            ensure(
                load <= platform.capacity(media) || load <= was || own_submit,
                || {
                    format!(
                        "{key:?} holds {load} {media} over capacity after {command:?} by {caller:?}"
                    )
                },
            )?;
        }
        for (media, m) in &a.media {
            ensure(platform.knows_media(media), || {
                format!("{key:?} has media {media} the platform does not know")
            })?;
            ensure(m.ready == m.reason.is_none(), || {
                format!("{key:?} on {media}: {m:?}")
            })?;
        }
    }

    if !matches!(command, Command::ExpireInvites) {
        let others = |s: &State| {
            let interactions: BTreeMap<Uuid, Interaction> = s
                .interactions
                .iter()
                .filter(|(_, i)| i.tenant != caller.tenant)
                .map(|(id, i)| (*id, i.clone()))
                .collect();
            let agents: BTreeMap<AgentKey, Agent> = s
                .agents
                .iter()
                .filter(|(k, _)| k.tenant != caller.tenant)
                .map(|(k, a)| (k.clone(), a.clone()))
                .collect();
            (interactions, agents)
        };
        ensure(others(before) == others(state), || {
            "another tenant changed".to_owned()
        })?;
    }
    Ok(())
}

fn ensure(holds: bool, broken: impl FnOnce() -> String) -> Result<(), String> {
    if holds { Ok(()) } else { Err(broken()) }
}
