//! Arbitrary bytes decoded as the request of every RPC of both services, then put through the
//! argument checks its handler applies, in the handler's order (the handlers compose the shared
//! checks of `ixn_proto::validate`, interaction-server's `limits` and the platform's media list;
//! each function below names the handler it follows).
//!
//! Asserted: nothing panics; what a check accepts keeps its promise (a UUID field parses to the same
//! UUID, a name is 1 to `MAX_NAME_BYTES` bytes without control characters, a reason's parts are
//! within their bounds, properties within `limits`, a timeout within the maximum, a page size within
//! range, Login's media distinct and within the channel limit); a refusal is `INVALID_ARGUMENT`
//! naming a field, and survives the trip through gRPC headers; a request's fingerprint (what tells
//! a retry from a reuse of its id) is the same after re-encoding and decoding it. An accepted
//! interaction-server request's command is then decided against a small state: whatever strings
//! passed the checks, the domain does not panic on them.
//!
//! Input: the first byte picks the RPC (and, in its top bit, whether the caller is an agent, which
//! changes Submit's and Login's checks); the rest is the protobuf message.

#![no_main]

use interaction_server::domain::{
    Caller, Command, Ctx, MAX_INVITE_TIMEOUT_MS, Platform, Reply, State, decide, is_empty_reason,
};
use interaction_server::limits;
use ixn_proto::auth::Role;
use ixn_proto::common::Reason;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::events::SubscribeRequest;
use ixn_proto::interaction as pb;
use ixn_proto::session as sb;
use ixn_proto::subscribe::{MAX_FILTER_ENTRIES, check_filter};
use ixn_proto::validate::{self, MAX_NAME_BYTES, MAX_REASON_CODE_BYTES, MAX_REASON_TEXT_BYTES};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use tonic::codegen::http::HeaderMap;
use uuid::Uuid;

/// Session-service's limit on one session's channels (its Login handler's `MAX_CHANNELS`).
const MAX_CHANNELS: usize = 16;

fn checked_uuid(field: &str, value: &str) -> Result<Uuid, Failure> {
    let r = validate::uuid(field, value);
    if let Ok(id) = &r {
        assert_eq!(Uuid::try_parse(value).ok(), Some(*id), "{field}: {value:?}");
    }
    r
}

fn request_id(value: &str) -> Result<(), Failure> {
    let r = validate::request_id(value);
    assert_eq!(r.is_ok(), checked_uuid("request_id", value).is_ok());
    r
}

fn is_name(value: &str) -> bool {
    value.len() <= MAX_NAME_BYTES && !value.chars().any(char::is_control)
}

fn name(field: &str, value: &str) -> Result<(), Failure> {
    let r = validate::name(field, value);
    assert_eq!(
        r.is_ok(),
        !value.is_empty() && is_name(value),
        "{field}: {value:?}"
    );
    r
}

fn optional_name(field: &str, value: &str) -> Result<(), Failure> {
    let r = validate::optional_name(field, value);
    assert_eq!(r.is_ok(), is_name(value), "{field}: {value:?}");
    r
}

fn reason(field: &str, reason: Option<&Reason>) -> Result<(), Failure> {
    let r = validate::reason(field, reason);
    if r.is_ok()
        && let Some(reason) = reason
    {
        assert!(reason.code.len() <= MAX_REASON_CODE_BYTES);
        assert!(reason.system_name.len() <= MAX_REASON_CODE_BYTES);
        assert!(reason.description.len() <= MAX_REASON_TEXT_BYTES);
    }
    r
}

/// interaction-server's `Api::media`: a name the platform lists.
fn media(field: &str, value: &str) -> Result<(), Failure> {
    name(field, value)?;
    if platform().knows_media(value) {
        Ok(())
    } else {
        Err(Failure::invalid_argument(field, "unknown media"))
    }
}

fn properties(field: &'static str, map: &BTreeMap<String, String>) -> Result<(), Failure> {
    limits::check_properties(map, field).map_err(Failure::from)?;
    assert!(map.len() <= limits::MAX_PROPERTIES);
    let mut total = 0;
    for (k, v) in map {
        assert!(!k.is_empty() && k.len() <= limits::MAX_PROPERTY_KEY_BYTES);
        assert!(v.len() <= limits::MAX_PROPERTY_VALUE_BYTES);
        total += k.len() + v.len();
    }
    assert!(total <= limits::MAX_PROPERTIES_BYTES);
    Ok(())
}

fn platform() -> &'static Platform {
    static PLATFORM: OnceLock<Platform> = OnceLock::new();
    PLATFORM.get_or_init(Platform::default)
}

/// A small state to decide accepted commands against: an agent logged in and Ready, and an
/// interaction in each live phase (ids 1 to 4 and tickets from the same counter).
fn seeded() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut w = ixn_fuzz::world::World::new(Platform::default());
        let svc = |a: &str| Caller {
            tenant: "t1".into(),
            role: Role::Service,
            sub: "session-service".into(),
            agent_id: Some(a.into()),
        };
        let router = Caller {
            tenant: "t1".into(),
            role: Role::Router,
            sub: "r1".into(),
            agent_id: None,
        };
        let server = Caller {
            tenant: "t1".into(),
            role: Role::MediaServer,
            sub: "m1".into(),
            agent_id: None,
        };
        for a in ["a1", "a2"] {
            w.run(
                &svc(a),
                &Command::AgentLogin {
                    agent_id: a.into(),
                    place_id: "p1".into(),
                },
            )
            .expect("logs in");
            w.run(
                &svc(a),
                &Command::AddMedia {
                    agent_id: a.into(),
                    media_type: "chat".into(),
                    ready: true,
                    reason: None,
                },
            )
            .expect("adds media");
        }
        for _ in 0..3 {
            w.run(
                &server,
                &Command::Submit {
                    media_type: "chat".into(),
                    queue: "q1".into(),
                    properties: BTreeMap::new(),
                },
            )
            .expect("submits");
        }
        let pull = Command::Pull {
            queue: "q1".into(),
            media_type: None,
            interaction_id: None,
        };
        let first = w.run(&router, &pull).expect("pulls");
        let second = w.run(&router, &pull).expect("pulls");
        for (decision, agent) in [(first, "a1"), (second, "a2")] {
            let Reply::Pulled(Some(id)) = decision.reply else {
                panic!("Pull answered {:?}", decision.reply);
            };
            w.run(
                &router,
                &Command::Deliver {
                    interaction_id: id,
                    agent_id: agent.into(),
                    timeout_ms: 0,
                },
            )
            .expect("delivers");
        }
        w.state
    })
}

/// Decides an accepted command against the seeded state, and folds its events into a copy.
fn decide_accepted(caller_is_agent: bool, role: Role, command: Command) {
    let caller = Caller {
        tenant: "t1".into(),
        role: if caller_is_agent { Role::Agent } else { role },
        sub: "user-a1".into(),
        agent_id: Some("a1".into()),
    };
    let state = seeded();
    let mut last = 100u128;
    let mut new_id = || {
        last += 1;
        Uuid::from_u128(last)
    };
    let mut ctx = Ctx {
        now: ixn_fuzz::world::START,
        platform: platform(),
        new_id: &mut new_id,
    };
    if let Ok(decision) = decide(state, &caller, &command, &mut ctx) {
        let mut after = state.clone();
        for e in &decision.events {
            after.evolve("t1", 1_000, ixn_fuzz::world::START, &e.body);
        }
    }
}

/// What a refusal must be: `INVALID_ARGUMENT` naming a field, intact after the trip through the
/// gRPC trailers.
fn check_refusal(f: Failure) {
    assert_eq!(f.reason, R::InvalidArgument, "{f:?}");
    assert!(f.violations.iter().all(|(field, _)| !field.is_empty()));
    assert!(!f.violations.is_empty(), "{f:?}");
    let status = f.clone().into_status();
    let mut headers = HeaderMap::new();
    status
        .add_header(&mut headers)
        .expect("a refusal encodes into headers");
    let back = tonic::Status::from_header_map(&headers).expect("and decodes back");
    assert_eq!(back.code(), status.code());
    let read = Failure::from_status(&back).expect("with its ErrorInfo");
    assert_eq!(read.reason, f.reason);
    assert_eq!(read.violations, f.violations);
}

/// Decodes `bytes` as `M`; a request that decodes keeps its fingerprint through re-encoding.
fn decoded<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded request decodes");
    assert_eq!(again, m);
    assert_eq!(validate::fingerprint(&again), validate::fingerprint(&m));
    Some(m)
}

macro_rules! rpcs {
    ($selector:expr, $bytes:expr, $agent:expr; $($ty:ty => $check:expr),* $(,)?) => {{
        let checks: &[fn(&[u8], bool) -> Option<Result<(), Failure>>] = &[
            $(|bytes, agent| {
                let r: $ty = decoded(bytes)?;
                let check: fn(&$ty, bool) -> Result<(), Failure> = $check;
                Some(check(&r, agent))
            }),*
        ];
        let check = checks[usize::from($selector) % checks.len()];
        if let Some(Err(f)) = check($bytes, $agent) {
            check_refusal(f);
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let agent = selector & 0x80 != 0;
    rpcs!(selector & 0x7f, bytes, agent;
        // interaction-server: InteractionService (api/interactions.rs).
        pb::SubmitRequest => |r, agent| {
            request_id(&r.request_id)?;
            media("media_type", &r.media_type)?;
            if agent {
                optional_name("queue", &r.queue)?;
            } else {
                name("queue", &r.queue)?;
            }
            properties("properties", &r.properties)?;
            decide_accepted(agent, Role::MediaServer, Command::Submit {
                media_type: r.media_type.clone(),
                queue: r.queue.clone(),
                properties: r.properties.clone(),
            });
            Ok(())
        },
        pb::PullRequest => |r, agent| {
            request_id(&r.request_id)?;
            name("queue", &r.queue)?;
            if !r.media_type.is_empty() {
                media("media_type", &r.media_type)?;
            }
            let interaction_id = match r.interaction_id.as_str() {
                "" => None,
                id => Some(checked_uuid("interaction_id", id)?),
            };
            decide_accepted(agent, Role::Router, Command::Pull {
                queue: r.queue.clone(),
                media_type: (!r.media_type.is_empty()).then(|| r.media_type.clone()),
                interaction_id,
            });
            Ok(())
        },
        pb::DeliverRequest => |r, _| {
            request_id(&r.request_id)?;
            let interaction_id = checked_uuid("interaction_id", &r.interaction_id)?;
            name("agent_id", &r.agent_id)?;
            if u64::from(r.timeout_ms) > MAX_INVITE_TIMEOUT_MS {
                return Err(Failure::invalid_argument("timeout_ms", "too long"));
            }
            decide_accepted(false, Role::Router, Command::Deliver {
                interaction_id,
                agent_id: r.agent_id.clone(),
                timeout_ms: u64::from(r.timeout_ms),
            });
            Ok(())
        },
        pb::AcceptRequest => |r, _| {
            request_id(&r.request_id)?;
            let command = Command::Accept {
                interaction_id: checked_uuid("interaction_id", &r.interaction_id)?,
                ticket_id: checked_uuid("ticket_id", &r.ticket_id)?,
            };
            decide_accepted(true, Role::Agent, command);
            Ok(())
        },
        pb::RejectRequest => |r, _| {
            request_id(&r.request_id)?;
            reason("reason", r.reason.as_ref())?;
            let command = Command::Reject {
                interaction_id: checked_uuid("interaction_id", &r.interaction_id)?,
                ticket_id: checked_uuid("ticket_id", &r.ticket_id)?,
                reason: r.reason.clone(),
            };
            decide_accepted(true, Role::Agent, command);
            Ok(())
        },
        pb::StopProcessingRequest => |r, agent| {
            request_id(&r.request_id)?;
            reason("reason", r.reason.as_ref())?;
            let command = Command::StopProcessing {
                interaction_id: checked_uuid("interaction_id", &r.interaction_id)?,
                reason: r.reason.clone(),
            };
            decide_accepted(agent, Role::Admin, command);
            Ok(())
        },
        pb::PlaceInQueueRequest => |r, agent| {
            request_id(&r.request_id)?;
            let interaction_id = checked_uuid("interaction_id", &r.interaction_id)?;
            name("queue", &r.queue)?;
            decide_accepted(agent, Role::Router, Command::PlaceInQueue {
                interaction_id,
                queue: r.queue.clone(),
            });
            Ok(())
        },
        pb::ChangePropertiesRequest => |r, agent| {
            request_id(&r.request_id)?;
            let interaction_id = checked_uuid("interaction_id", &r.interaction_id)?;
            if r.changed.is_empty() && r.deleted.is_empty() {
                return Err(Failure::invalid_argument("changed", "nothing to change"));
            }
            properties("changed", &r.changed)?;
            if r.deleted.len() > limits::MAX_PROPERTIES {
                return Err(Failure::invalid_argument("deleted", "too many keys"));
            }
            for key in &r.deleted {
                name("deleted", key)?;
            }
            decide_accepted(agent, Role::Admin, Command::ChangeProperties {
                interaction_id,
                changed: r.changed.clone(),
                deleted: r.deleted.clone(),
            });
            Ok(())
        },
        pb::GetInteractionRequest => |r, _| {
            checked_uuid("interaction_id", &r.interaction_id).map(|_| ())
        },
        pb::ListInteractionsRequest => |r, _| {
            if !(0..=limits::MAX_PAGE_SIZE).contains(&r.page_size) {
                return Err(Failure::invalid_argument("page_size", "out of range"));
            }
            if !r.page_token.is_empty() {
                checked_uuid("page_token", &r.page_token)?;
            }
            let _ = r.state();
            optional_name("queue", &r.queue)
        },
        // interaction-server: AgentService, the switch (api/agents.rs).
        pb::AgentLoginRequest => |r, _| {
            request_id(&r.request_id)?;
            name("agent_id", &r.agent_id)?;
            optional_name("place_id", &r.place_id)?;
            decide_accepted(false, Role::Service, Command::AgentLogin {
                agent_id: r.agent_id.clone(),
                place_id: r.place_id.clone(),
            });
            Ok(())
        },
        pb::AgentLogoutRequest => |r, _| {
            request_id(&r.request_id)?;
            name("agent_id", &r.agent_id)?;
            reason("reason", r.reason.as_ref())?;
            decide_accepted(false, Role::Service, Command::AgentLogout {
                agent_id: r.agent_id.clone(),
                reason: r.reason.clone(),
            });
            Ok(())
        },
        pb::AddMediaRequest => |r, _| {
            request_id(&r.request_id)?;
            name("agent_id", &r.agent_id)?;
            media("media_type", &r.media_type)?;
            reason("reason", r.reason.as_ref())?;
            decide_accepted(false, Role::Service, Command::AddMedia {
                agent_id: r.agent_id.clone(),
                media_type: r.media_type.clone(),
                ready: r.ready,
                reason: r.reason.clone(),
            });
            Ok(())
        },
        pb::RemoveMediaRequest => |r, _| {
            request_id(&r.request_id)?;
            name("agent_id", &r.agent_id)?;
            media("media_type", &r.media_type)?;
            decide_accepted(false, Role::Service, Command::RemoveMedia {
                agent_id: r.agent_id.clone(),
                media_type: r.media_type.clone(),
            });
            Ok(())
        },
        pb::SetReadyRequest => |r, _| {
            request_id(&r.request_id)?;
            name("agent_id", &r.agent_id)?;
            media("media_type", &r.media_type)?;
            decide_accepted(false, Role::Service, Command::SetReady {
                agent_id: r.agent_id.clone(),
                media_type: r.media_type.clone(),
            });
            Ok(())
        },
        pb::SetNotReadyRequest => |r, _| {
            request_id(&r.request_id)?;
            name("agent_id", &r.agent_id)?;
            media("media_type", &r.media_type)?;
            reason("reason", r.reason.as_ref())?;
            decide_accepted(false, Role::Service, Command::SetNotReady {
                agent_id: r.agent_id.clone(),
                media_type: r.media_type.clone(),
                reason: r.reason.clone(),
            });
            Ok(())
        },
        pb::ChangeMediaStateReasonRequest => |r, _| {
            request_id(&r.request_id)?;
            name("agent_id", &r.agent_id)?;
            media("media_type", &r.media_type)?;
            reason("reason", r.reason.as_ref())?;
            let reason = r
                .reason
                .clone()
                .filter(|reason| !is_empty_reason(reason))
                .ok_or_else(|| Failure::invalid_argument("reason", "is required"))?;
            decide_accepted(false, Role::Service, Command::ChangeMediaStateReason {
                agent_id: r.agent_id.clone(),
                media_type: r.media_type.clone(),
                reason,
            });
            Ok(())
        },
        pb::GetAgentRequest => |r, _| name("agent_id", &r.agent_id),
        // Both services: EventService (ixn_proto::subscribe).
        SubscribeRequest => |r, _| {
            let filter = r.filter.clone().unwrap_or_default();
            check_filter(&filter)?;
            assert!(filter.kinds.len() <= MAX_FILTER_ENTRIES);
            assert!(filter.interaction_ids.len() <= MAX_FILTER_ENTRIES);
            for kind in &filter.kinds {
                assert!(ixn_proto::event::KINDS.contains(&kind.as_str()));
            }
            for id in &filter.interaction_ids {
                assert!(Uuid::try_parse(id).is_ok());
            }
            Ok(())
        },
        // session-service: SessionService (api/sessions.rs), the caller agent `a1` or an admin.
        sb::LoginRequest => |r, agent| {
            request_id(&r.request_id)?;
            if agent {
                if !r.agent_id.is_empty() && r.agent_id != "a1" {
                    return Err(Failure::invalid_argument("agent_id", "an agent logs in as itself"));
                }
            } else {
                name("agent_id", &r.agent_id)?;
            }
            optional_name("place_id", &r.place_id)?;
            if r.media_types.is_empty() || r.media_types.len() > MAX_CHANNELS {
                return Err(Failure::invalid_argument("media_types", "count"));
            }
            for (i, media) in r.media_types.iter().enumerate() {
                name("media_types", media)?;
                if r.media_types[..i].contains(media) {
                    return Err(Failure::invalid_argument("media_types", "named twice"));
                }
            }
            Ok(())
        },
        sb::LogoutRequest => |r, _| {
            request_id(&r.request_id)?;
            checked_uuid("session_id", &r.session_id)?;
            reason("reason", r.reason.as_ref())
        },
        sb::SetReadyRequest => |r, _| {
            request_id(&r.request_id)?;
            name("media_type", &r.media_type)?;
            checked_uuid("session_id", &r.session_id).map(|_| ())
        },
        sb::SetNotReadyRequest => |r, _| {
            request_id(&r.request_id)?;
            name("media_type", &r.media_type)?;
            reason("reason", r.reason.as_ref())?;
            checked_uuid("session_id", &r.session_id).map(|_| ())
        },
        sb::ActivateChannelRequest => |r, _| {
            request_id(&r.request_id)?;
            name("media_type", &r.media_type)?;
            checked_uuid("session_id", &r.session_id).map(|_| ())
        },
        sb::DeactivateChannelRequest => |r, _| {
            request_id(&r.request_id)?;
            name("media_type", &r.media_type)?;
            checked_uuid("session_id", &r.session_id).map(|_| ())
        },
        sb::GetSessionRequest => |r, _| checked_uuid("session_id", &r.session_id).map(|_| ()),
        sb::ConnectRequest => |r, _| checked_uuid("session_id", &r.session_id).map(|_| ()),
    );
});
