//! The switch platform's behaviour, from configuration: which media exist, agents' capacities, the
//! invite timeout, and the reason lists that Not Ready and logout are checked against.

use super::DomainError;
use ixn_proto::common::Reason;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A reason as configuration writes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonConfig {
    pub code: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub system_name: String,
}

impl From<&ReasonConfig> for Reason {
    fn from(r: &ReasonConfig) -> Reason {
        Reason {
            code: r.code.clone(),
            description: r.description.clone(),
            system_name: r.system_name.clone(),
        }
    }
}

/// The platform section of the configuration file (`[platform]`), every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    pub logout_reason_required: Option<bool>,
    pub free_text_reasons_allowed: Option<bool>,
    pub channel_deactivation_supported: Option<bool>,
    pub logout_reasons: Option<Vec<ReasonConfig>>,
    pub not_ready_reasons: Option<Vec<ReasonConfig>>,
    /// The code of the default Not Ready reason; it must be one of `not_ready_reasons`.
    pub default_not_ready_reason: Option<String>,
    pub media_types: Option<Vec<String>>,
    pub default_capacity: Option<u32>,
    /// Per-media capacities overriding `default_capacity`.
    pub capacity: Option<BTreeMap<String, u32>>,
    pub invite_timeout_ms: Option<u64>,
}

/// The platform as the domain uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct Platform {
    pub logout_reason_required: bool,
    pub free_text_reasons_allowed: bool,
    pub channel_deactivation_supported: bool,
    pub logout_reasons: Vec<Reason>,
    pub not_ready_reasons: Vec<Reason>,
    pub default_not_ready_reason: Reason,
    pub media_types: Vec<String>,
    pub default_capacity: u32,
    pub capacity: BTreeMap<String, u32>,
    /// The delivering timeout: how long an invite stands.
    pub invite_timeout_ms: u64,
}

/// The longest invite timeout a Deliver may ask for (one hour).
pub const MAX_INVITE_TIMEOUT_MS: u64 = 3_600_000;

fn reason(code: &str, description: &str) -> Reason {
    Reason {
        code: code.to_owned(),
        description: description.to_owned(),
        system_name: String::new(),
    }
}

impl Default for Platform {
    fn default() -> Platform {
        Platform {
            logout_reason_required: false,
            free_text_reasons_allowed: false,
            channel_deactivation_supported: true,
            logout_reasons: vec![
                reason("end-of-shift", "End of shift"),
                reason("break", "Break"),
            ],
            not_ready_reasons: vec![
                reason("after-call-work", "After call work"),
                reason("break", "Break"),
                reason("lunch", "Lunch"),
                reason("logging-out", "Logging out"),
            ],
            default_not_ready_reason: reason("after-call-work", "After call work"),
            media_types: vec!["voice".into(), "chat".into(), "email".into()],
            default_capacity: 1,
            capacity: BTreeMap::new(),
            invite_timeout_ms: 30_000,
        }
    }
}

impl Platform {
    /// The platform from its configuration section, defaults filling what it leaves out.
    pub fn from_config(config: &PlatformConfig) -> Result<Platform, String> {
        let mut platform = Platform::default();
        let list = |l: &Vec<ReasonConfig>| l.iter().map(Reason::from).collect::<Vec<_>>();
        if let Some(v) = config.logout_reason_required {
            platform.logout_reason_required = v;
        }
        if let Some(v) = config.free_text_reasons_allowed {
            platform.free_text_reasons_allowed = v;
        }
        if let Some(v) = config.channel_deactivation_supported {
            platform.channel_deactivation_supported = v;
        }
        if let Some(l) = &config.logout_reasons {
            platform.logout_reasons = list(l);
        }
        if let Some(l) = &config.not_ready_reasons {
            platform.not_ready_reasons = list(l);
        }
        if let Some(code) = &config.default_not_ready_reason {
            platform.default_not_ready_reason = platform
                .not_ready_reasons
                .iter()
                .find(|r| &r.code == code)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "platform.default_not_ready_reason `{code}` is not in not_ready_reasons"
                    )
                })?;
        } else if !platform
            .not_ready_reasons
            .iter()
            .any(|r| r.code == platform.default_not_ready_reason.code)
        {
            platform.default_not_ready_reason = platform
                .not_ready_reasons
                .first()
                .cloned()
                .ok_or("platform.not_ready_reasons must not be empty")?;
        }
        if let Some(media) = &config.media_types {
            if media.is_empty() || media.iter().any(|m| m.is_empty() || m.len() > 64) {
                return Err(
                    "platform.media_types must be non-empty names of 64 bytes at most".into(),
                );
            }
            platform.media_types = media.clone();
        }
        if let Some(c) = config.default_capacity {
            platform.default_capacity = c;
        }
        if let Some(c) = &config.capacity {
            if let Some(unknown) = c.keys().find(|m| !platform.media_types.contains(m)) {
                return Err(format!("platform.capacity names unknown media `{unknown}`"));
            }
            platform.capacity = c.clone();
        }
        if let Some(ms) = config.invite_timeout_ms {
            if ms == 0 || ms > MAX_INVITE_TIMEOUT_MS {
                return Err(format!(
                    "platform.invite_timeout_ms must be 1..={MAX_INVITE_TIMEOUT_MS}"
                ));
            }
            platform.invite_timeout_ms = ms;
        }
        Ok(platform)
    }

    pub fn knows_media(&self, media: &str) -> bool {
        self.media_types.iter().any(|m| m == media)
    }

    /// How many interactions of `media` an agent may hold at once.
    pub fn capacity(&self, media: &str) -> u32 {
        self.capacity
            .get(media)
            .copied()
            .unwrap_or(self.default_capacity)
    }

    /// The Not Ready reason to record: the default for an empty reason, else one the platform allows.
    /// A logout reason is a valid Not Ready reason too: the Logout use case makes Ready channels Not
    /// Ready with it (step 3).
    pub fn not_ready_reason(&self, reason: Option<&Reason>) -> Result<Reason, DomainError> {
        match reason {
            Some(r) if !is_empty_reason(r) => self
                .allowed(&self.not_ready_reasons, r)
                .or_else(|_| self.allowed(&self.logout_reasons, r)),
            _ => Ok(self.default_not_ready_reason.clone()),
        }
    }

    /// The logout reason to record, if any was given.
    pub fn logout_reason(&self, reason: Option<&Reason>) -> Result<Option<Reason>, DomainError> {
        match reason {
            Some(r) if !is_empty_reason(r) => self.allowed(&self.logout_reasons, r).map(Some),
            _ => Ok(None),
        }
    }

    /// A listed code gives the configured reason; free text passes only where the platform allows it.
    fn allowed(&self, list: &[Reason], reason: &Reason) -> Result<Reason, DomainError> {
        if !reason.code.is_empty() {
            return list
                .iter()
                .find(|r| r.code == reason.code)
                .cloned()
                .ok_or_else(|| DomainError::ReasonNotAllowed(reason.code.clone()));
        }
        if self.free_text_reasons_allowed {
            Ok(reason.clone())
        } else {
            Err(DomainError::ReasonNotAllowed(String::new()))
        }
    }
}

/// A reason with neither code nor text means "none given".
pub fn is_empty_reason(reason: &Reason) -> bool {
    reason.code.is_empty() && reason.description.is_empty() && reason.system_name.is_empty()
}
