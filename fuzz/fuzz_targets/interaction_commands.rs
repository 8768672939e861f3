//! Sequences of commands from arbitrary callers against interaction-server's domain, with time
//! moving between them. Callers are drawn from small pools (two tenants, every role, a few agents,
//! routers and media servers) so that they collide on the same interactions, tickets and agents.
//!
//! Each command is one the API would pass on: its caller's role may call it and its arguments are
//! valid. [`World::run`] checks after each one that a refusal changed nothing and that every
//! invariant of the state holds; at the end the whole log is replayed once more.

#![no_main]

use arbitrary::Arbitrary;
use interaction_server::domain::{Caller, Command, MAX_INVITE_TIMEOUT_MS};
use interaction_server::limits;
use ixn_fuzz::pick::{
    AGENTS, MEDIA, MEDIA_SERVERS, PLACES, PROPERTY_KEYS, PlatformPick, QUEUES, ROUTERS, ReasonPick,
    TENANTS, pick,
};
use ixn_fuzz::world::{World, system};
use ixn_proto::auth::Role;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
struct Input {
    platform: PlatformPick,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
struct Step {
    wait: Wait,
    who: Who,
    op: Op,
}

/// How time moves before the step.
#[derive(Arbitrary, Debug)]
enum Wait {
    No,
    Ms(u16),
    /// To the earliest open invite's deadline exactly, or just before it.
    ToDeadline {
        just_before: bool,
    },
}

/// The caller, as its token says: a role among those the method allows (the API refuses the
/// others before the domain), a subject and an agent id from the pools.
#[derive(Arbitrary, Debug)]
struct Who {
    tenant: u8,
    role: u8,
    id: u8,
    /// A token of another role may carry an `agent_id` claim too.
    stray_agent_claim: Option<u8>,
}

/// A map of properties within the API's limits, its values at times as long as they may be (so a
/// change can take the whole over its bounds).
#[derive(Arbitrary, Debug)]
struct Props(Vec<(u8, u8)>);

impl Props {
    fn map(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .take(4)
            .map(|(k, v)| {
                let len = [0, 1, 40, limits::MAX_PROPERTY_VALUE_BYTES][usize::from(*v % 4)];
                (pick(PROPERTY_KEYS, *k).to_owned(), "v".repeat(len))
            })
            .collect()
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Submit {
        media: u8,
        queue: Option<u8>,
        properties: Props,
    },
    Pull {
        queue: u8,
        media: Option<u8>,
        target: Option<u8>,
    },
    Deliver {
        target: u8,
        agent: u8,
        timeout_ms: u32,
    },
    Accept {
        target: u8,
        ticket: u8,
    },
    Reject {
        target: u8,
        ticket: u8,
        reason: ReasonPick,
    },
    Stop {
        target: u8,
        reason: ReasonPick,
    },
    PlaceInQueue {
        target: u8,
        queue: u8,
    },
    ChangeProperties {
        target: u8,
        changed: Props,
        deleted: Vec<u8>,
    },
    ExpireInvites,
    Login {
        agent: u8,
        place: u8,
    },
    Logout {
        agent: u8,
        reason: ReasonPick,
    },
    AddMedia {
        agent: u8,
        media: u8,
        ready: bool,
        reason: ReasonPick,
    },
    RemoveMedia {
        agent: u8,
        media: u8,
    },
    SetReady {
        agent: u8,
        media: u8,
    },
    SetNotReady {
        agent: u8,
        media: u8,
        reason: ReasonPick,
    },
    ChangeReason {
        agent: u8,
        media: u8,
        reason: ReasonPick,
    },
}

const SUBMIT: &[Role] = &[Role::MediaServer, Role::Agent, Role::Admin];
const PULL: &[Role] = &[Role::Agent, Role::Router];
const DELIVER: &[Role] = &[Role::Router];
const INVITEE: &[Role] = &[Role::Agent];
const STOP_OR_CHANGE: &[Role] = &[Role::MediaServer, Role::Agent, Role::Router, Role::Admin];
const PLACE_IN_QUEUE: &[Role] = &[Role::Agent, Role::Router, Role::Admin];
const SWITCH: &[Role] = &[Role::Service, Role::Admin];

impl Who {
    fn caller(&self, roles: &[Role]) -> Caller {
        let role = roles[usize::from(self.role) % roles.len()];
        let tenant = pick(TENANTS, self.tenant).to_owned();
        let (sub, agent_id) = match role {
            Role::Agent => {
                let a = pick(AGENTS, self.id);
                (format!("user-{a}"), Some(a.to_owned()))
            }
            other => {
                let sub = match other {
                    Role::Router => pick(ROUTERS, self.id),
                    Role::MediaServer => pick(MEDIA_SERVERS, self.id),
                    Role::Service => "session-service",
                    _ => "ops",
                };
                let claim = self.stray_agent_claim.map(|a| pick(AGENTS, a).to_owned());
                (sub.to_owned(), claim)
            }
        };
        Caller {
            tenant,
            role,
            sub,
            agent_id,
        }
    }
}

/// The caller and command the step stands for, or `None` where the API would refuse the request
/// before the domain (an argument out of bounds).
fn resolve(w: &World, who: &Who, op: &Op) -> Option<(Caller, Command)> {
    let id = |n: u8| w.pick_interaction(n);
    let media = |n: u8| pick(MEDIA, n).to_owned();
    let agent = |n: u8| pick(AGENTS, n).to_owned();
    Some(match op {
        Op::Submit {
            media: m,
            queue,
            properties,
        } => {
            let caller = who.caller(SUBMIT);
            let queue = queue.map(|q| pick(QUEUES, q)).unwrap_or_default();
            // Only an agent (who owns it at once) may leave the queue empty.
            if queue.is_empty() && caller.role != Role::Agent {
                return None;
            }
            let properties = properties.map();
            limits::check_properties(&properties, "properties").ok()?;
            let command = Command::Submit {
                media_type: media(*m),
                queue: queue.to_owned(),
                properties,
            };
            (caller, command)
        }
        Op::Pull {
            queue,
            media: m,
            target,
        } => (
            who.caller(PULL),
            Command::Pull {
                queue: pick(QUEUES, *queue).to_owned(),
                media_type: m.map(media),
                interaction_id: target.map(id),
            },
        ),
        Op::Deliver {
            target,
            agent: a,
            timeout_ms,
        } => (
            who.caller(DELIVER),
            Command::Deliver {
                interaction_id: id(*target),
                agent_id: agent(*a),
                timeout_ms: u64::from(*timeout_ms) % (MAX_INVITE_TIMEOUT_MS + 1),
            },
        ),
        Op::Accept { target, ticket } => (
            who.caller(INVITEE),
            Command::Accept {
                interaction_id: id(*target),
                ticket_id: w.pick_ticket(*ticket),
            },
        ),
        Op::Reject {
            target,
            ticket,
            reason,
        } => (
            who.caller(INVITEE),
            Command::Reject {
                interaction_id: id(*target),
                ticket_id: w.pick_ticket(*ticket),
                reason: reason.reason(),
            },
        ),
        Op::Stop { target, reason } => (
            who.caller(STOP_OR_CHANGE),
            Command::StopProcessing {
                interaction_id: id(*target),
                reason: reason.reason(),
            },
        ),
        Op::PlaceInQueue { target, queue } => (
            who.caller(PLACE_IN_QUEUE),
            Command::PlaceInQueue {
                interaction_id: id(*target),
                queue: pick(QUEUES, *queue).to_owned(),
            },
        ),
        Op::ChangeProperties {
            target,
            changed,
            deleted,
        } => {
            let changed = changed.map();
            let deleted: Vec<String> = deleted
                .iter()
                .take(4)
                .map(|k| pick(PROPERTY_KEYS, *k).to_owned())
                .collect();
            if changed.is_empty() && deleted.is_empty() {
                return None;
            }
            limits::check_properties(&changed, "changed").ok()?;
            (
                who.caller(STOP_OR_CHANGE),
                Command::ChangeProperties {
                    interaction_id: id(*target),
                    changed,
                    deleted,
                },
            )
        }
        Op::ExpireInvites => (system(), Command::ExpireInvites),
        Op::Login { agent: a, place } => (
            who.caller(SWITCH),
            Command::AgentLogin {
                agent_id: agent(*a),
                place_id: pick(PLACES, *place).to_owned(),
            },
        ),
        Op::Logout { agent: a, reason } => (
            who.caller(SWITCH),
            Command::AgentLogout {
                agent_id: agent(*a),
                reason: reason.reason(),
            },
        ),
        Op::AddMedia {
            agent: a,
            media: m,
            ready,
            reason,
        } => (
            who.caller(SWITCH),
            Command::AddMedia {
                agent_id: agent(*a),
                media_type: media(*m),
                ready: *ready,
                reason: reason.reason(),
            },
        ),
        Op::RemoveMedia { agent: a, media: m } => (
            who.caller(SWITCH),
            Command::RemoveMedia {
                agent_id: agent(*a),
                media_type: media(*m),
            },
        ),
        Op::SetReady { agent: a, media: m } => (
            who.caller(SWITCH),
            Command::SetReady {
                agent_id: agent(*a),
                media_type: media(*m),
            },
        ),
        Op::SetNotReady {
            agent: a,
            media: m,
            reason,
        } => (
            who.caller(SWITCH),
            Command::SetNotReady {
                agent_id: agent(*a),
                media_type: media(*m),
                reason: reason.reason(),
            },
        ),
        Op::ChangeReason {
            agent: a,
            media: m,
            reason,
        } => {
            // The API requires a reason here.
            let reason = reason
                .reason()
                .filter(|r| !interaction_server::domain::is_empty_reason(r))?;
            (
                who.caller(SWITCH),
                Command::ChangeMediaStateReason {
                    agent_id: agent(*a),
                    media_type: media(*m),
                    reason,
                },
            )
        }
    })
}

/// Keeps a run's length bounded: every step re-checks the whole state.
const MAX_STEPS: usize = 96;

fuzz_target!(|input: Input| {
    let mut w = World::new(input.platform.platform());
    for step in input.steps.iter().take(MAX_STEPS) {
        match step.wait {
            Wait::No => {}
            Wait::Ms(ms) => w.now += i64::from(ms) * 1_000,
            Wait::ToDeadline { just_before } => {
                if let Some(deadline) = w.state.next_deadline() {
                    let to = if just_before { deadline - 1 } else { deadline };
                    w.now = w.now.max(to);
                }
            }
        }
        if let Some((caller, command)) = resolve(&w, &step.who, &step.op) {
            let _ = w.run(&caller, &command);
        }
    }
    w.check_full_replay();
});
