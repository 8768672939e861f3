//! The service's one error type and its one mapping to a gRPC status. Handlers never build a
//! `Status` by hand.

use crate::domain::DomainError;
use crate::store::StoreError;
use ixn_proto::error::{Failure, Reason};
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain refused the command.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A failure decided before the domain (token, role, arguments, idempotency).
    #[error(transparent)]
    Failure(#[from] Failure),
    /// The store could not be read or written: nothing was acknowledged.
    #[error("the store is unavailable: {0}")]
    Store(#[from] StoreError),
    /// The server is shutting down or its writer has stopped.
    #[error("the server is unavailable: {0}")]
    Unavailable(&'static str),
}

impl From<DomainError> for Failure {
    fn from(e: DomainError) -> Failure {
        let message = e.to_string();
        match e {
            DomainError::InteractionNotFound(id) => {
                Failure::new(Reason::InteractionNotFound, message).with_meta("interaction_id", id)
            }
            DomainError::AlreadyStopped(id) => {
                Failure::new(Reason::AlreadyStopped, message).with_meta("interaction_id", id)
            }
            DomainError::NotOwner(id) => {
                Failure::new(Reason::NotOwner, message).with_meta("interaction_id", id)
            }
            DomainError::InvalidState { id, state, .. } => {
                Failure::new(Reason::InvalidState, message)
                    .with_meta("interaction_id", id)
                    .with_meta("state", state)
            }
            DomainError::InviteNotFound(ticket) => {
                Failure::new(Reason::InviteNotFound, message).with_meta("ticket_id", ticket)
            }
            DomainError::AgentNotAvailable { agent_id, .. } => {
                Failure::new(Reason::AgentNotAvailable, message).with_meta("agent_id", agent_id)
            }
            DomainError::AgentState { agent_id, .. } => {
                Failure::new(Reason::InvalidState, message).with_meta("agent_id", agent_id)
            }
            DomainError::AlreadyLoggedIn(agent_id) => {
                Failure::new(Reason::AlreadyLoggedIn, message).with_meta("agent_id", agent_id)
            }
            DomainError::ReasonNotAllowed(code) => {
                Failure::new(Reason::ReasonNotAllowed, message).with_meta("code", code)
            }
            DomainError::OngoingInteraction {
                agent_id,
                interaction_ids,
            } => {
                let ids: Vec<String> = interaction_ids.iter().map(|i| i.to_string()).collect();
                Failure::new(Reason::OngoingInteraction, message)
                    .with_meta("agent_id", agent_id)
                    .with_meta("interaction_ids", ids.join(","))
            }
            DomainError::LogoutReasonRequired { allowed } => {
                Failure::new(Reason::LogoutReasonRequired, message)
                    .with_meta("logout_reasons", allowed.join(","))
            }
            DomainError::InvalidArgument { field, what } => Failure::invalid_argument(field, what),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Domain(d) => Failure::from(d).into_status(),
            Error::Failure(f) => f.into_status(),
            Error::Store(s) => {
                tracing::error!(error = %s, "store failure");
                Status::unavailable(format!("the store is unavailable: {s}"))
            }
            Error::Unavailable(what) => Status::unavailable(what),
        }
    }
}
