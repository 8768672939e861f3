//! Small pools of names and reasons. Inputs carry indexes into them (taken modulo the pool's length),
//! so every byte string means something and two commands often name the same thing.

use arbitrary::Arbitrary;
use interaction_server::domain::Platform;
use ixn_proto::common::Reason;

pub const TENANTS: &[&str] = &["t1", "t2"];
pub const AGENTS: &[&str] = &["a1", "a2", "a3"];
pub const ROUTERS: &[&str] = &["r1", "r2"];
pub const MEDIA_SERVERS: &[&str] = &["m1", "m2"];
pub const QUEUES: &[&str] = &["q1", "q2"];
pub const PLACES: &[&str] = &["p1", "p2"];
/// The default platform's media (the API refuses any other before the domain sees it).
pub const MEDIA: &[&str] = &["voice", "chat", "email"];
pub const PROPERTY_KEYS: &[&str] = &["k1", "k2", "k3", "k4", "k5", "k6"];

/// Picks `pool[i % len]`.
pub fn pick<'a>(pool: &[&'a str], i: u8) -> &'a str {
    pool[usize::from(i) % pool.len()]
}

/// A reason as a request may carry it: none, empty, a listed code of either list, an unlisted code,
/// or free text.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum ReasonPick {
    None,
    Empty,
    AfterCallWork,
    Break,
    EndOfShift,
    Unlisted,
    FreeText,
}

impl ReasonPick {
    pub fn reason(self) -> Option<Reason> {
        let code = |c: &str| Reason {
            code: c.to_owned(),
            ..Reason::default()
        };
        match self {
            ReasonPick::None => None,
            ReasonPick::Empty => Some(Reason::default()),
            ReasonPick::AfterCallWork => Some(code("after-call-work")),
            ReasonPick::Break => Some(code("break")),
            ReasonPick::EndOfShift => Some(code("end-of-shift")),
            ReasonPick::Unlisted => Some(code("coffee")),
            ReasonPick::FreeText => Some(Reason {
                description: "going home".into(),
                ..Reason::default()
            }),
        }
    }
}

/// The platform's settings that change what the domain decides; the rest keep their defaults.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct PlatformPick {
    pub default_capacity: u8,
    /// A capacity for voice alone, overriding the default.
    pub voice_capacity: Option<u8>,
    pub free_text_reasons_allowed: bool,
    pub channel_deactivation_supported: bool,
    pub logout_reason_required: bool,
    pub invite_timeout: u8,
}

impl PlatformPick {
    pub fn platform(self) -> Platform {
        let mut p = Platform {
            default_capacity: u32::from(self.default_capacity % 4),
            free_text_reasons_allowed: self.free_text_reasons_allowed,
            channel_deactivation_supported: self.channel_deactivation_supported,
            logout_reason_required: self.logout_reason_required,
            invite_timeout_ms: [1, 1_000, 30_000, 3_600_000][usize::from(self.invite_timeout % 4)],
            ..Platform::default()
        };
        if let Some(c) = self.voice_capacity {
            p.capacity.insert("voice".into(), u32::from(c % 4));
        }
        p
    }
}
