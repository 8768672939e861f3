//! The contract's error `reason` strings and the one mapping from a failure to a gRPC status carrying
//! a `google.rpc.ErrorInfo` (domain `ixn`) and, for bad arguments, a `BadRequest`.
//!
//! Each service keeps its own error enum; both turn it into a [`Failure`] here, so a client can branch
//! on the code and the reason whichever service answered.

use std::collections::{BTreeMap, HashMap};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error of this contract.
pub const DOMAIN: &str = "ixn";

macro_rules! reasons {
    ($($variant:ident => $text:literal, $code:ident;)*) => {
        /// A `reason` of the contract, with its default gRPC code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason { $($variant),* }

        impl Reason {
            /// Every reason, in the contract's order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The wire string, as `ErrorInfo.reason` carries it.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $text),* }
            }

            /// The gRPC code the contract gives this reason (some reasons allow another; see
            /// [`Failure::with_code`]).
            pub fn code(self) -> Code {
                match self { $(Reason::$variant => Code::$code),* }
            }

            /// Parses a wire string.
            pub fn parse(text: &str) -> Option<Reason> {
                match text { $($text => Some(Reason::$variant),)* _ => None }
            }
        }
    };
}

reasons! {
    TokenInvalid => "TOKEN_INVALID", Unauthenticated;
    TokenExpired => "TOKEN_EXPIRED", Unauthenticated;
    RoleDenied => "ROLE_DENIED", PermissionDenied;
    InvalidArgument => "INVALID_ARGUMENT", InvalidArgument;
    InteractionNotFound => "INTERACTION_NOT_FOUND", NotFound;
    AlreadyStopped => "ALREADY_STOPPED", FailedPrecondition;
    NotOwner => "NOT_OWNER", PermissionDenied;
    InvalidState => "INVALID_STATE", FailedPrecondition;
    InviteNotFound => "INVITE_NOT_FOUND", NotFound;
    AgentNotAvailable => "AGENT_NOT_AVAILABLE", FailedPrecondition;
    RequestIdReused => "REQUEST_ID_REUSED", AlreadyExists;
    SequenceOutOfRange => "SEQUENCE_OUT_OF_RANGE", OutOfRange;
    SubscriberTooSlow => "SUBSCRIBER_TOO_SLOW", ResourceExhausted;
    RateLimited => "RATE_LIMITED", ResourceExhausted;
    SessionNotFound => "SESSION_NOT_FOUND", NotFound;
    ChannelNotFound => "CHANNEL_NOT_FOUND", NotFound;
    AlreadyLoggedIn => "ALREADY_LOGGED_IN", AlreadyExists;
    ReasonNotAllowed => "REASON_NOT_ALLOWED", InvalidArgument;
    OngoingInteraction => "ONGOING_INTERACTION", FailedPrecondition;
    LogoutReasonRequired => "LOGOUT_REASON_REQUIRED", FailedPrecondition;
    NotReadyFailed => "NOT_READY_FAILED", Aborted;
    DeactivationFailed => "DEACTIVATION_FAILED", Aborted;
    SwitchLogoutFailed => "SWITCH_LOGOUT_FAILED", Unavailable;
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as the wire shows it: a code, a reason, a message for people, the ids involved, and for
/// bad arguments the offending fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub code: Code,
    pub message: String,
    /// `ErrorInfo.metadata`: the ids involved; lists are comma-separated.
    pub metadata: BTreeMap<String, String>,
    /// `BadRequest` field violations: (field, description).
    pub violations: Vec<(String, String)>,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Failure {
            reason,
            code: reason.code(),
            message: message.into(),
            metadata: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    /// An `INVALID_ARGUMENT` naming the field at fault.
    pub fn invalid_argument(field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        let mut failure = Failure::new(Reason::InvalidArgument, format!("{field}: {description}"));
        failure.violations.push((field.to_owned(), description));
        failure
    }

    pub fn with_meta(mut self, key: &str, value: impl ToString) -> Self {
        self.metadata.insert(key.to_owned(), value.to_string());
        self
    }

    /// For the reasons whose code depends on the cause (e.g. `NOT_READY_FAILED` is `UNAVAILABLE`
    /// when the switch is unreachable).
    pub fn with_code(mut self, code: Code) -> Self {
        self.code = code;
        self
    }

    pub fn into_status(self) -> Status {
        let metadata: HashMap<String, String> = self.metadata.into_iter().collect();
        let mut details = ErrorDetails::with_error_info(self.reason.as_str(), DOMAIN, metadata);
        for (field, description) in self.violations {
            details.add_bad_request_violation(field, description);
        }
        Status::with_error_details(self.code, self.message, details)
    }

    /// Reads a failure back from a status (for clients and tests). `None` when the status carries no
    /// `ErrorInfo` of this domain, e.g. a transport error.
    pub fn from_status(status: &Status) -> Option<Failure> {
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        let reason = Reason::parse(&info.reason)?;
        let violations = status
            .get_details_bad_request()
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .collect()
            })
            .unwrap_or_default();
        Some(Failure {
            reason,
            code: status.code(),
            message: status.message().to_owned(),
            metadata: info.metadata.into_iter().collect(),
            violations,
        })
    }
}

impl From<Failure> for Status {
    fn from(failure: Failure) -> Status {
        failure.into_status()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for Failure {}

/// The reason of a status, if it carries one of this contract.
pub fn reason_of(status: &Status) -> Option<Reason> {
    Failure::from_status(status).map(|f| f.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_survives_the_wire_representation() {
        let failure = Failure::invalid_argument("interaction_id", "not a UUID")
            .with_meta("interaction_id", "x");
        let status = failure.clone().into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(Failure::from_status(&status), Some(failure));
    }

    #[test]
    fn every_reason_parses_back() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(*reason));
        }
        assert_eq!(Reason::ALL.len(), 23);
    }
}
