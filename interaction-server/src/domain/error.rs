//! Why the domain refused a command. A refused command changes nothing.

use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("no interaction {0}")]
    InteractionNotFound(Uuid),
    #[error("interaction {0} was stopped before")]
    AlreadyStopped(Uuid),
    #[error("the caller is not entitled to interaction {0}")]
    NotOwner(Uuid),
    #[error("interaction {id} is {state}: {what}")]
    InvalidState {
        id: Uuid,
        state: &'static str,
        what: &'static str,
    },
    #[error("no open invite {0}")]
    InviteNotFound(Uuid),
    #[error("agent {agent_id} is not available: {why}")]
    AgentNotAvailable { agent_id: String, why: &'static str },
    #[error("agent {agent_id}: {what}")]
    AgentState {
        agent_id: String,
        what: &'static str,
    },
    #[error("agent {0} is already logged in")]
    AlreadyLoggedIn(String),
    #[error("the platform does not allow reason `{0}`")]
    ReasonNotAllowed(String),
    #[error("agent {agent_id} owns or is invited to interactions")]
    OngoingInteraction {
        agent_id: String,
        interaction_ids: Vec<Uuid>,
    },
    #[error("the platform requires a logout reason")]
    LogoutReasonRequired {
        /// The codes of the reasons the platform allows (what AF1 offers).
        allowed: Vec<String>,
    },
    #[error("{field}: {what}")]
    InvalidArgument { field: &'static str, what: String },
}
