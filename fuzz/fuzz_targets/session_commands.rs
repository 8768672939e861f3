//! Sequences of session-service operations (Login, Ready / Not Ready, channel activation, the
//! Logout use case, the connection-lost grace) from arbitrary agents and administrators, against
//! session-service's domain, with interaction-server's domain as the switch and as the source of the
//! mirror of what agents hold.
//!
//! Each operation runs the domain's checks and changes in the order its handler does, calling the
//! switch in between; any switch call may be unreachable (the fault a step chooses), which is how
//! Logout's EF2/EF3 and an unfinished Login happen. Routers, media servers and agents meanwhile
//! submit, deliver, accept, reject and stop interactions at the switch, and the relay folds its
//! events into the mirror when a step says so (it may lag behind, as the real one does).
//!
//! Checked after every step: a refusal before the first switch change changed nothing; the view's
//! sessions and agents agree; each session's channels are well formed and agree with the switch's
//! media state; a disposed session never changes again and is never found live; a session's version
//! rises by one per commit; its events are addressed to its agent and, folded, tell its channels'
//! states; after the relay has caught up the mirror holds exactly what the switch says each agent
//! holds; a Logout that passed EF1 on a caught-up mirror is not refused by the switch for an
//! ongoing interaction; and every invariant of interaction-server's domain ([`World`]).

#![no_main]

use arbitrary::Arbitrary;
use interaction_server::domain::{
    AgentKey, Caller, Command, Decision, DomainError, MAX_INVITE_TIMEOUT_MS,
};
use ixn_fuzz::pick::{
    AGENTS, MEDIA, MEDIA_SERVERS, PLACES, PlatformPick, QUEUES, ROUTERS, ReasonPick, TENANTS, pick,
};
use ixn_fuzz::world::{World, system};
use ixn_proto::auth::Role;
use ixn_proto::common::{AgentState, Party, Reason};
use ixn_proto::events::event::Body;
use ixn_proto::session::{Channel, ChannelGroup, Session, SessionState};
use libfuzzer_sys::fuzz_target;
use session_service::domain::{self, Emitted, Mirror, agent_key};
use session_service::writer::View;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

#[derive(Arbitrary, Debug)]
struct Input {
    platform: PlatformPick,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
struct Step {
    /// Which of the step's switch calls are unreachable: bit `n` for the `n`th call.
    faults: u16,
    /// Whether the relay catches up with the switch's log after the step.
    relay: bool,
    op: Op,
}

/// A desktop's caller: the agent itself, or an administrator, in a tenant.
#[derive(Arbitrary, Debug)]
struct Who {
    tenant: u8,
    agent: u8,
    admin: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Login {
        who: Who,
        /// The request's `agent_id`: an agent may leave it empty, an administrator names one.
        agent_id: Option<u8>,
        place: u8,
        media: Vec<u8>,
        ready: bool,
    },
    Logout {
        who: Who,
        session: u8,
        reason: ReasonPick,
    },
    SetReady {
        who: Who,
        session: u8,
        media: u8,
    },
    SetNotReady {
        who: Who,
        session: u8,
        media: u8,
        reason: ReasonPick,
    },
    Activate {
        who: Who,
        session: u8,
        media: u8,
    },
    Deactivate {
        who: Who,
        session: u8,
        media: u8,
    },
    /// Every `Connect` stream of the session has been gone past the grace period.
    ConnectionLost {
        session: u8,
    },
    /// Interaction traffic at interaction-server, by parties other than session-service.
    Traffic {
        tenant: u8,
        traffic: Traffic,
    },
}

#[derive(Arbitrary, Debug)]
enum Traffic {
    Submit {
        media: u8,
        queue: u8,
    },
    Pull {
        router: u8,
        queue: u8,
    },
    Deliver {
        router: u8,
        target: u8,
        agent: u8,
        timeout_ms: u32,
    },
    Accept {
        agent: u8,
        target: u8,
        ticket: u8,
    },
    Reject {
        agent: u8,
        target: u8,
        ticket: u8,
    },
    Stop {
        target: u8,
    },
    PlaceInQueue {
        target: u8,
        queue: u8,
    },
    /// An agent's own Submit: it owns the interaction at once.
    AgentSubmit {
        agent: u8,
        media: u8,
    },
    Wait {
        ms: u16,
        expire: bool,
    },
}

/// Login's media pool: the platform's, and one it does not know.
const LOGIN_MEDIA: &[&str] = &["voice", "chat", "email", "fax"];

/// Why an operation failed; only whether it did matters here.
#[derive(Debug)]
enum Failed {
    /// Refused before anything changed: by the arguments, the session or the switch's refusal.
    Refused,
    /// A switch call was refused or unreachable after earlier steps changed things.
    Partway,
}

/// Per media: (active, Ready).
type Told = BTreeMap<String, (bool, bool)>;

/// A channel operation's change to its session, made once the switch has agreed.
type Change = Box<dyn FnOnce(&mut Session) -> Emitted>;

struct Model {
    switch: World,
    view: View,
    /// Every session ever created, in order (the store keeps disposed ones).
    all: Vec<Session>,
    /// Disposed sessions as they were disposed.
    disposed: HashMap<String, Session>,
    /// Commits per session since its creation.
    commits: HashMap<String, u64>,
    /// Per session, its channels as its events tell them; `None` once disposed.
    told: HashMap<String, Option<Told>>,
    /// How far the relay has followed the switch's log.
    relayed: usize,
    last_id: u128,
    /// The faults left for this step's switch calls.
    faults: u16,
    /// Whether the current operation made a change yet (the switch's or a commit).
    changed: bool,
}

fn service(tenant: &str) -> Caller {
    Caller {
        tenant: tenant.to_owned(),
        role: Role::Service,
        sub: "session-service".into(),
        agent_id: None,
    }
}

impl Model {
    fn new(input: &Input) -> Model {
        Model {
            switch: World::new(input.platform.platform()),
            view: View::default(),
            all: Vec::new(),
            disposed: HashMap::new(),
            commits: HashMap::new(),
            told: HashMap::new(),
            relayed: 0,
            last_id: 0,
            faults: 0,
            changed: false,
        }
    }

    fn new_id(&mut self) -> String {
        self.last_id += 1;
        Uuid::from_u128(self.last_id).to_string()
    }

    /// One call to the switch's `AgentService`, as session-service's service identity.
    fn call(&mut self, tenant: &str, command: Command) -> Result<Decision, Option<DomainError>> {
        let unreachable = self.faults & 1 == 1;
        self.faults >>= 1;
        if unreachable {
            return Err(None);
        }
        let decision = self.switch.run(&service(tenant), &command).map_err(Some)?;
        if !decision.events.is_empty() {
            self.changed = true;
        }
        Ok(decision)
    }

    /// A failure: a refusal if nothing changed yet, else part-way.
    fn failed(&self) -> Failed {
        if self.changed {
            Failed::Partway
        } else {
            Failed::Refused
        }
    }

    /// The session the caller may act on, live (a disposed one is not found).
    fn session_for(&self, who: &Who, n: u8) -> Option<Session> {
        let s = self.pick_session(n)?;
        let tenant = pick(TENANTS, who.tenant);
        let visible = s.tenant == tenant && (who.admin || pick(AGENTS, who.agent) == s.agent_id);
        if !visible {
            return None;
        }
        self.view.sessions.get(&s.session_id).cloned()
    }

    fn pick_session(&self, n: u8) -> Option<&Session> {
        self.all.get(usize::from(n) % (self.all.len() + 1))
    }

    fn actor(who: &Who, s: &Session) -> Party {
        if who.admin {
            Party::admin("ops")
        } else {
            domain::agent_of(s)
        }
    }

    /// Commits a session's events with the session as they leave it.
    fn commit(&mut self, events: Vec<Emitted>, s: Session) {
        assert!(
            !self.disposed.contains_key(&s.session_id),
            "a disposed session changed"
        );
        let agent = domain::agent_of(&s);
        let told = self
            .told
            .entry(s.session_id.clone())
            .or_insert(Some(BTreeMap::new()));
        for e in &events {
            assert_eq!(e.tenant, s.tenant);
            assert_eq!(e.to, vec![agent.clone()], "{e:?}");
            let event = ixn_proto::events::Event {
                body: Some(e.body.clone()),
                ..Default::default()
            };
            assert_eq!(domain::session_of(&event), Some(s.session_id.as_str()));
            let channels = told.as_mut().expect("no event follows SessionDisposed");
            let media_of = |channel_id: &str| {
                domain::channels(&s)
                    .iter()
                    .find(|c| c.channel_id == channel_id)
                    .map(|c| c.media_type.clone())
                    .expect("an event names a channel of its session")
            };
            match &e.body {
                Body::ChannelCreated(c) => {
                    let ready = c.state() == AgentState::Ready;
                    channels.insert(c.media_type.clone(), (c.active, ready));
                }
                Body::AgentStateChanged(c) => {
                    assert_eq!(media_of(&c.channel_id), c.media_type);
                    let entry = channels.get_mut(&c.media_type).expect("created before");
                    entry.1 = c.state() == AgentState::Ready;
                }
                Body::ChannelActivated(c) => {
                    assert_eq!(media_of(&c.channel_id), c.media_type);
                    *channels.get_mut(&c.media_type).expect("created before") = (true, false);
                }
                Body::ChannelDeactivated(c) => {
                    assert_eq!(media_of(&c.channel_id), c.media_type);
                    channels.get_mut(&c.media_type).expect("created before").0 = false;
                }
                Body::SessionDisposed(_) => *told = None,
                _ => {}
            }
        }
        match self.commits.get_mut(&s.session_id) {
            Some(n) => *n += 1,
            None => {
                self.commits.insert(s.session_id.clone(), 0);
                self.all.push(s.clone());
            }
        }
        if s.state() == SessionState::Disposed {
            self.disposed.insert(s.session_id.clone(), s.clone());
        }
        self.view.put(s);
        self.changed = true;
    }

    fn login(
        &mut self,
        who: &Who,
        agent_id: Option<u8>,
        place: u8,
        media: &[u8],
        ready: bool,
    ) -> Result<(), Failed> {
        let tenant = pick(TENANTS, who.tenant).to_owned();
        let requested = agent_id.map(|a| pick(AGENTS, a)).unwrap_or_default();
        let agent_id = if who.admin {
            if requested.is_empty() {
                return Err(Failed::Refused);
            }
            requested.to_owned()
        } else {
            let own = pick(AGENTS, who.agent);
            if !requested.is_empty() && requested != own {
                return Err(Failed::Refused);
            }
            own.to_owned()
        };
        let media: Vec<String> = media
            .iter()
            .take(5)
            .map(|m| pick(LOGIN_MEDIA, *m).to_owned())
            .collect();
        let distinct: BTreeSet<&String> = media.iter().collect();
        if media.is_empty() || distinct.len() != media.len() {
            return Err(Failed::Refused);
        }
        let key = agent_key(&tenant, &agent_id);
        if self.view.by_agent.contains_key(&key) {
            return Err(Failed::Refused);
        }
        // GetPlatform: a read, which may be unreachable too.
        if self.faults & 1 == 1 {
            return Err(Failed::Refused);
        }
        self.faults >>= 1;
        let platform = self.switch.platform.clone();
        if media.iter().any(|m| !platform.knows_media(m)) {
            return Err(Failed::Refused);
        }
        let place = pick(PLACES, place).to_owned();
        let login = Command::AgentLogin {
            agent_id: agent_id.clone(),
            place_id: place.clone(),
        };
        // An agent logged in at the switch with no session here is taken over.
        let adopted = match self.call(&tenant, login) {
            Ok(_) => None,
            Err(Some(DomainError::AlreadyLoggedIn(_))) => {
                if self.faults & 1 == 1 {
                    return Err(self.failed());
                }
                self.faults >>= 1;
                let a = &self.switch.state.agents[&AgentKey::new(&tenant, &agent_id)];
                Some(a.media.clone())
            }
            Err(_) => return Err(self.failed()),
        };
        for m in &media {
            let present = adopted.as_ref().and_then(|a| a.get(m));
            let command = match present {
                None => Command::AddMedia {
                    agent_id: agent_id.clone(),
                    media_type: m.clone(),
                    ready,
                    reason: None,
                },
                Some(p) if p.ready == ready => continue,
                Some(_) if ready => Command::SetReady {
                    agent_id: agent_id.clone(),
                    media_type: m.clone(),
                },
                Some(_) => Command::SetNotReady {
                    agent_id: agent_id.clone(),
                    media_type: m.clone(),
                    reason: Some(platform.default_not_ready_reason.clone()),
                },
            };
            self.call(&tenant, command).map_err(|_| self.failed())?;
        }
        let default_reason = Some(platform.default_not_ready_reason.clone());
        let session = Session {
            session_id: self.new_id(),
            tenant: tenant.clone(),
            agent_id: agent_id.clone(),
            place_id: place,
            state: SessionState::Active as i32,
            channel_group: Some(ChannelGroup {
                channel_group_id: self.new_id(),
                channels: media
                    .iter()
                    .map(|m| Channel {
                        channel_id: self.new_id(),
                        media_type: m.clone(),
                        active: true,
                        state: if ready {
                            AgentState::Ready
                        } else {
                            AgentState::NotReady
                        } as i32,
                        reason: if ready { None } else { default_reason.clone() },
                        interaction_ids: Vec::new(),
                    })
                    .collect(),
            }),
            logout_reasons: platform.logout_reasons.clone(),
            not_ready_reasons: platform.not_ready_reasons.clone(),
            logout_reason_required: platform.logout_reason_required,
            free_text_reasons_allowed: platform.free_text_reasons_allowed,
            version: 1,
            default_not_ready_reason: default_reason,
            channel_deactivation_supported: platform.channel_deactivation_supported,
            created_sequence: 0,
        };
        let events = domain::created(&session, &Self::actor(who, &session));
        assert_eq!(events.len(), 2 + media.len());
        self.commit(events, session.clone());
        // The switch has the agent logged in, Ready or Not Ready on each media as asked.
        let a = &self.switch.state.agents[&AgentKey::new(&tenant, &agent_id)];
        assert!(a.logged_in);
        for m in &media {
            assert_eq!(
                a.media.get(m).map(|m| m.ready),
                Some(ready),
                "{m} after login"
            );
        }
        Ok(())
    }

    fn logout(&mut self, who: &Who, n: u8, reason: ReasonPick) -> Result<(), Failed> {
        let mut s = self.session_for(who, n).ok_or(Failed::Refused)?;
        let (tenant, agent_id) = (s.tenant.clone(), s.agent_id.clone());
        let actor = Self::actor(who, &s);
        let key = agent_key(&tenant, &agent_id);
        // Steps 1 and 2: EF1, AF1.
        let held = self.view.mirror.held_by(&key);
        let caught_up = self.relayed == self.switch.log.len();
        let plan = domain::plan_logout(&s, &held, reason.reason().as_ref())
            .map_err(|_| Failed::Refused)?;
        // Step 3.
        let ready: Vec<String> = domain::channels(&s)
            .iter()
            .filter(|c| c.active && domain::is_ready(c))
            .map(|c| c.media_type.clone())
            .collect();
        for media in ready {
            let command = Command::SetNotReady {
                agent_id: agent_id.clone(),
                media_type: media.clone(),
                reason: Some(plan.not_ready_reason.clone()),
            };
            self.call(&tenant, command).map_err(|_| self.failed())?;
            s.state = SessionState::LoggingOut as i32;
            let event = domain::state_changed(
                &mut s,
                &media,
                false,
                Some(plan.not_ready_reason.clone()),
                &actor,
            );
            self.commit(vec![event], s.clone());
        }
        // Step 4.
        if s.channel_deactivation_supported {
            let active: Vec<String> = domain::channels(&s)
                .iter()
                .filter(|c| c.active)
                .map(|c| c.media_type.clone())
                .collect();
            for media in active {
                let command = Command::RemoveMedia {
                    agent_id: agent_id.clone(),
                    media_type: media.clone(),
                };
                self.call(&tenant, command).map_err(|_| self.failed())?;
                s.state = SessionState::LoggingOut as i32;
                let event = domain::activation_changed(&mut s, &media, false, None, &actor);
                self.commit(vec![event], s.clone());
            }
        }
        // Step 5.
        let logout = Command::AgentLogout {
            agent_id: agent_id.clone(),
            reason: plan.reason.clone(),
        };
        match self.call(&tenant, logout) {
            Ok(_) | Err(Some(DomainError::AgentNotAvailable { .. })) => {}
            Err(Some(DomainError::OngoingInteraction { .. })) => {
                assert!(
                    !caught_up,
                    "EF1 passed on a caught-up mirror, yet the switch saw an interaction"
                );
                return Err(self.failed());
            }
            Err(_) => return Err(self.failed()),
        }
        // Step 6.
        let events = domain::disposed(&mut s, plan.reason.clone(), &actor);
        let channels = domain::channels(&s).len();
        assert_eq!(events.len(), channels + 2);
        assert!(matches!(
            events.last().map(|e| &e.body),
            Some(Body::SessionDisposed(_))
        ));
        for c in domain::channels(&s) {
            assert!(
                !(c.active && domain::is_ready(c)),
                "a disposed channel is Ready"
            );
            if s.channel_deactivation_supported {
                assert!(!c.active, "a disposed channel is active");
            }
        }
        self.commit(events, s);
        let a = &self.switch.state.agents[&AgentKey::new(&tenant, &agent_id)];
        assert!(!a.logged_in, "the agent is still logged in at the switch");
        Ok(())
    }

    /// SetReady, SetNotReady, ActivateChannel, DeactivateChannel: the checks and change each
    /// handler makes around its one switch call.
    fn channel_op(&mut self, who: &Who, n: u8, op: &Op) -> Result<(), Failed> {
        let mut s = self.session_for(who, n).ok_or(Failed::Refused)?;
        let actor = Self::actor(who, &s);
        let refused = |_| Failed::Refused;
        let (command, change): (Command, Change) = match op {
            Op::SetReady { media, .. } => {
                let media = pick(MEDIA, *media).to_owned();
                let c = domain::channel(&s, &media).map_err(refused)?;
                if !c.active {
                    return Err(Failed::Refused);
                }
                if domain::is_ready(c) {
                    return Ok(());
                }
                let command = Command::SetReady {
                    agent_id: s.agent_id.clone(),
                    media_type: media.clone(),
                };
                (
                    command,
                    Box::new(move |s| domain::state_changed(s, &media, true, None, &actor)),
                )
            }
            Op::SetNotReady { media, reason, .. } => {
                let media = pick(MEDIA, *media).to_owned();
                let reason =
                    domain::not_ready_reason(&s, reason.reason().as_ref()).map_err(refused)?;
                let c = domain::channel(&s, &media).map_err(refused)?;
                if !c.active {
                    return Err(Failed::Refused);
                }
                if !domain::is_ready(c) && c.reason.as_ref() == Some(&reason) {
                    return Ok(());
                }
                let command = Command::SetNotReady {
                    agent_id: s.agent_id.clone(),
                    media_type: media.clone(),
                    reason: Some(reason.clone()),
                };
                (
                    command,
                    Box::new(move |s| {
                        domain::state_changed(s, &media, false, Some(reason), &actor)
                    }),
                )
            }
            Op::Activate { media, .. } => {
                let media = pick(MEDIA, *media).to_owned();
                if domain::channel(&s, &media).map_err(refused)?.active {
                    return Ok(());
                }
                let command = Command::AddMedia {
                    agent_id: s.agent_id.clone(),
                    media_type: media.clone(),
                    ready: false,
                    reason: None,
                };
                let reason = s.default_not_ready_reason.clone();
                (
                    command,
                    Box::new(move |s| domain::activation_changed(s, &media, true, reason, &actor)),
                )
            }
            Op::Deactivate { media, .. } => {
                let media = pick(MEDIA, *media).to_owned();
                if !s.channel_deactivation_supported {
                    return Err(Failed::Refused);
                }
                if !domain::channel(&s, &media).map_err(refused)?.active {
                    return Ok(());
                }
                let command = Command::RemoveMedia {
                    agent_id: s.agent_id.clone(),
                    media_type: media.clone(),
                };
                (
                    command,
                    Box::new(move |s| domain::activation_changed(s, &media, false, None, &actor)),
                )
            }
            _ => unreachable!("not a channel operation"),
        };
        self.call(&s.tenant.clone(), command)
            .map_err(|_| Failed::Refused)?;
        let event = change(&mut s);
        self.commit(vec![event], s);
        Ok(())
    }

    /// The connection-lost grace: each Ready channel goes Not Ready with the default reason; a
    /// channel the switch fails on is left as it is.
    fn connection_lost(&mut self, n: u8) {
        let Some(id) = self.pick_session(n).map(|s| s.session_id.clone()) else {
            return;
        };
        let Some(mut s) = self.view.sessions.get(&id).cloned() else {
            return;
        };
        let actor = Party::system("connection-lost");
        let reason = s.default_not_ready_reason.clone().unwrap_or_default();
        let ready: Vec<String> = domain::channels(&s)
            .iter()
            .filter(|c| c.active && domain::is_ready(c))
            .map(|c| c.media_type.clone())
            .collect();
        for media in ready {
            let command = Command::SetNotReady {
                agent_id: s.agent_id.clone(),
                media_type: media.clone(),
                reason: Some(reason.clone()),
            };
            if self.call(&s.tenant.clone(), command).is_err() {
                continue;
            }
            let event = domain::state_changed(&mut s, &media, false, Some(reason.clone()), &actor);
            self.commit(vec![event], s.clone());
        }
    }

    fn traffic(&mut self, tenant: u8, t: &Traffic) {
        let tenant = pick(TENANTS, tenant).to_owned();
        let caller = |role: Role, sub: &str, agent: Option<&str>| Caller {
            tenant: tenant.clone(),
            role,
            sub: sub.to_owned(),
            agent_id: agent.map(str::to_owned),
        };
        let agent = |a: u8| {
            let a = pick(AGENTS, a);
            caller(Role::Agent, &format!("user-{a}"), Some(a))
        };
        let w = &mut self.switch;
        let (who, command) = match *t {
            Traffic::Submit { media, queue } => (
                caller(Role::MediaServer, pick(MEDIA_SERVERS, media), None),
                Command::Submit {
                    media_type: pick(MEDIA, media).to_owned(),
                    queue: pick(QUEUES, queue).to_owned(),
                    properties: BTreeMap::new(),
                },
            ),
            Traffic::AgentSubmit { agent: a, media } => (
                agent(a),
                Command::Submit {
                    media_type: pick(MEDIA, media).to_owned(),
                    queue: String::new(),
                    properties: BTreeMap::new(),
                },
            ),
            Traffic::Pull { router, queue } => (
                caller(Role::Router, pick(ROUTERS, router), None),
                Command::Pull {
                    queue: pick(QUEUES, queue).to_owned(),
                    media_type: None,
                    interaction_id: None,
                },
            ),
            Traffic::Deliver {
                router,
                target,
                agent: a,
                timeout_ms,
            } => (
                caller(Role::Router, pick(ROUTERS, router), None),
                Command::Deliver {
                    interaction_id: w.pick_interaction(target),
                    agent_id: pick(AGENTS, a).to_owned(),
                    timeout_ms: u64::from(timeout_ms) % (MAX_INVITE_TIMEOUT_MS + 1),
                },
            ),
            Traffic::Accept {
                agent: a,
                target,
                ticket,
            } => (
                agent(a),
                Command::Accept {
                    interaction_id: w.pick_interaction(target),
                    ticket_id: w.pick_ticket(ticket),
                },
            ),
            Traffic::Reject {
                agent: a,
                target,
                ticket,
            } => (
                agent(a),
                Command::Reject {
                    interaction_id: w.pick_interaction(target),
                    ticket_id: w.pick_ticket(ticket),
                    reason: None,
                },
            ),
            Traffic::Stop { target } => (
                caller(Role::Admin, "ops", None),
                Command::StopProcessing {
                    interaction_id: w.pick_interaction(target),
                    reason: None,
                },
            ),
            Traffic::PlaceInQueue { target, queue } => (
                caller(Role::Admin, "ops", None),
                Command::PlaceInQueue {
                    interaction_id: w.pick_interaction(target),
                    queue: pick(QUEUES, queue).to_owned(),
                },
            ),
            Traffic::Wait { ms, expire } => {
                w.now += i64::from(ms) * 1_000;
                if !expire {
                    return;
                }
                (system(), Command::ExpireInvites)
            }
        };
        let _ = w.run(&who, &command);
    }

    /// The relay follows the switch's log to its head, folding each event into the mirror.
    fn relay(&mut self) {
        for logged in &self.switch.log[self.relayed..] {
            for change in Mirror::changes(&logged.event()) {
                self.view.mirror.apply(&change);
            }
        }
        self.relayed = self.switch.log.len();
        // Caught up, the mirror holds what the switch says each agent holds.
        let (held, _) = self.view.mirror.rows();
        let mirrored: BTreeSet<(String, String, String, String)> = held
            .into_iter()
            .map(|((t, a), i, m)| (t, a, i, m))
            .collect();
        let holding: BTreeSet<(String, String, String, String)> = self
            .switch
            .state
            .agents
            .values()
            .flat_map(|a| {
                a.holding.iter().map(|(i, m)| {
                    (
                        a.tenant.clone(),
                        a.agent_id.clone(),
                        i.to_string(),
                        m.clone(),
                    )
                })
            })
            .collect();
        assert_eq!(mirrored, holding, "the mirror disagrees with the switch");
    }

    fn check(&self) {
        let v = &self.view;
        for (key, id) in &v.by_agent {
            let s = v.sessions.get(id).expect("an agent's session is live");
            assert_eq!(&agent_key(&s.tenant, &s.agent_id), key);
        }
        for (id, s) in &v.sessions {
            assert_eq!(id, &s.session_id);
            assert_ne!(s.state(), SessionState::Disposed);
            assert!(!self.disposed.contains_key(id));
            assert_eq!(v.by_agent.get(&agent_key(&s.tenant, &s.agent_id)), Some(id));
        }
        for s in &self.all {
            let id = &s.session_id;
            let s = v
                .sessions
                .get(id)
                .or_else(|| self.disposed.get(id))
                .expect("live or disposed");
            assert_eq!(s.version, 1 + self.commits[id], "version of session {id}");
            let channels = domain::channels(s);
            assert!(!channels.is_empty());
            let media: BTreeSet<&str> = channels.iter().map(|c| c.media_type.as_str()).collect();
            let ids: BTreeSet<&str> = channels.iter().map(|c| c.channel_id.as_str()).collect();
            assert_eq!(media.len(), channels.len(), "a media has two channels");
            assert_eq!(ids.len(), channels.len(), "two channels share an id");
            for c in channels {
                // Ready carries no reason, Not Ready always one.
                assert_eq!(domain::is_ready(c), c.reason.is_none(), "{c:?}");
            }
            // The session's events tell its channels' states.
            match &self.told[id] {
                None => assert_eq!(s.state(), SessionState::Disposed),
                Some(told) => {
                    let actual: Told = channels
                        .iter()
                        .map(|c| (c.media_type.clone(), (c.active, domain::is_ready(c))))
                        .collect();
                    assert_eq!(told, &actual, "the events of {id} tell another state");
                }
            }
        }
        // A live session's channels agree with the switch.
        for s in v.sessions.values() {
            let agent = &self.switch.state.agents[&AgentKey::new(&s.tenant, &s.agent_id)];
            assert!(
                agent.logged_in,
                "a live session's agent is logged out at the switch"
            );
            for c in domain::channels(s) {
                let at_switch = agent.media.get(&c.media_type);
                assert_eq!(c.active, at_switch.is_some(), "{c:?} against {at_switch:?}");
                if let Some(m) = at_switch {
                    assert_eq!(domain::is_ready(c), m.ready, "{c:?} against {m:?}");
                    let code = |r: Option<&Reason>| r.map(|r| r.code.clone());
                    assert_eq!(
                        code(c.reason.as_ref()),
                        code(m.reason.as_ref()),
                        "{c:?} against {m:?}"
                    );
                }
            }
        }
    }
}

/// Keeps a run's length bounded: every step re-checks both states.
const MAX_STEPS: usize = 96;

fuzz_target!(|input: Input| {
    let mut m = Model::new(&input);
    for step in input.steps.iter().take(MAX_STEPS) {
        m.faults = step.faults;
        m.changed = false;
        let views_before = (m.view.sessions.clone(), m.view.by_agent.clone());
        let switch_before = m.switch.state.clone();
        let result = match &step.op {
            Op::Login {
                who,
                agent_id,
                place,
                media,
                ready,
            } => m.login(who, *agent_id, *place, media, *ready),
            Op::Logout {
                who,
                session,
                reason,
            } => m.logout(who, *session, *reason),
            op @ (Op::SetReady { who, session, .. }
            | Op::SetNotReady { who, session, .. }
            | Op::Activate { who, session, .. }
            | Op::Deactivate { who, session, .. }) => m.channel_op(who, *session, op),
            Op::ConnectionLost { session } => {
                m.connection_lost(*session);
                Ok(())
            }
            Op::Traffic { tenant, traffic } => {
                m.traffic(*tenant, traffic);
                Ok(())
            }
        };
        if let Err(Failed::Refused) = result {
            assert_eq!(
                (m.view.sessions.clone(), m.view.by_agent.clone()),
                views_before,
                "a refusal changed a session"
            );
            assert_eq!(
                m.switch.state, switch_before,
                "a refusal changed the switch"
            );
        }
        if step.relay {
            m.relay();
        }
        m.check();
    }
    m.switch.check_full_replay();
});
