//! What kind an event body is and which interaction it concerns: the facts every producer and
//! consumer of the shared event schema needs, kept in one place.

use crate::events::event::Body;

/// `Event.source` of interaction-server's log.
pub const SOURCE_INTERACTION_SERVER: &str = "interaction-server";
/// `Event.source` of session-service's log.
pub const SOURCE_SESSION_SERVICE: &str = "session-service";

macro_rules! kinds {
    ($($variant:ident),* $(,)?) => {
        /// The kind of an event: its body's message name, as `EventFilter.kinds` names it.
        pub fn kind(body: &Body) -> &'static str {
            match body { $(Body::$variant(_) => stringify!($variant)),* }
        }

        /// Every kind name.
        pub const KINDS: &[&str] = &[$(stringify!($variant)),*];
    };
}

kinds!(
    Invite,
    Revoked,
    InviteEnded,
    Abandoned,
    InteractionSubmitted,
    PlacedInQueue,
    TakenFromQueue,
    AgentInvited,
    Rejected,
    PartyAdded,
    PartyRemoved,
    ProcessingStopped,
    PropertiesChanged,
    AgentLogin,
    AgentLogout,
    MediaAdded,
    MediaRemoved,
    ReadyForMedia,
    NotReadyForMedia,
    MediaStateReasonChanged,
    SessionCreated,
    ChannelGroupCreated,
    ChannelCreated,
    AgentStateChanged,
    ChannelActivated,
    ChannelDeactivated,
    ChannelDisposed,
    ChannelGroupDisposed,
    SessionDisposed,
);

/// Whether interaction-server's event is a reporting event (seen by reporters), as opposed to one
/// directed at the parties in `to`.
pub fn is_reporting(body: &Body) -> bool {
    !matches!(
        body,
        Body::Invite(_) | Body::Revoked(_) | Body::InviteEnded(_) | Body::Abandoned(_)
    ) && !is_session_event(body)
}

/// Whether the body is one of session-service's own events.
pub fn is_session_event(body: &Body) -> bool {
    matches!(
        body,
        Body::SessionCreated(_)
            | Body::ChannelGroupCreated(_)
            | Body::ChannelCreated(_)
            | Body::AgentStateChanged(_)
            | Body::ChannelActivated(_)
            | Body::ChannelDeactivated(_)
            | Body::ChannelDisposed(_)
            | Body::ChannelGroupDisposed(_)
            | Body::SessionDisposed(_)
    )
}

/// The interaction an event concerns, if any.
pub fn interaction_id(body: &Body) -> Option<&str> {
    let id = match body {
        Body::Invite(b) => b.interaction.as_ref().map(|i| i.interaction_id.as_str())?,
        Body::Revoked(b) => &b.interaction_id,
        Body::InviteEnded(b) => &b.interaction_id,
        Body::Abandoned(b) => &b.interaction_id,
        Body::InteractionSubmitted(b) => {
            b.interaction.as_ref().map(|i| i.interaction_id.as_str())?
        }
        Body::PlacedInQueue(b) => &b.interaction_id,
        Body::TakenFromQueue(b) => &b.interaction_id,
        Body::AgentInvited(b) => &b.interaction_id,
        Body::Rejected(b) => &b.interaction_id,
        Body::PartyAdded(b) => &b.interaction_id,
        Body::PartyRemoved(b) => &b.interaction_id,
        Body::ProcessingStopped(b) => &b.interaction_id,
        Body::PropertiesChanged(b) => &b.interaction_id,
        _ => return None,
    };
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ChannelCreated, Invite, ProcessingStopped};

    #[test]
    fn kinds_are_message_names() {
        assert_eq!(
            kind(&Body::ProcessingStopped(ProcessingStopped::default())),
            "ProcessingStopped"
        );
        assert_eq!(KINDS.len(), 29);
    }

    #[test]
    fn directed_and_session_events_are_not_reporting() {
        assert!(!is_reporting(&Body::Invite(Invite::default())));
        assert!(!is_reporting(&Body::ChannelCreated(
            ChannelCreated::default()
        )));
        assert!(is_reporting(&Body::ProcessingStopped(
            ProcessingStopped::default()
        )));
    }
}
