//! The relay: follows interaction-server's log (as role `service`, every tenant) from a stored
//! cursor. For each event it updates the mirror of what agents hold and, when the event is addressed
//! to an agent with a live session, appends it to session-service's own log (`relayed_from` set) for
//! that session's `Connect` streams. The relayed events, the mirror changes and the new cursor commit
//! together, so a restart of either service neither loses nor repeats an event. When
//! interaction-server goes away the relay reconnects with backoff and resumes from its cursor.
//!
//! On a shared store one replica relays at a time: the one holding the relay's role (an advisory
//! lock on a connection of its own). It reads the cursor as committed when it takes the role, and
//! each commit moves the cursor only from where it found it, so an event is never relayed twice.
//! The others wait, and take the role when its holder goes away.

use crate::domain::Mirror;
use crate::store::Reads;
use crate::switch::Switch;
use crate::writer::{Commit, Writer};
use futures::FutureExt;
use ixn_proto::events::Event;
use ixn_proto::pg::{Elector, Lease};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// Events taken off the stream into one commit at most.
const MAX_RELAY_BATCH: usize = 256;
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a replica that does not relay asks whether the role is free.
const ROLE_RETRY: Duration = Duration::from_secs(1);

/// What the relay works with.
pub struct Relay {
    pub switch: Arc<Switch>,
    pub writer: Arc<Writer>,
    /// The cursor loaded at start (on a shared store it is read again on taking the role).
    pub cursor: u64,
    /// On a shared store: the relay's role, and where its cursor is read.
    pub role: Option<(Elector, Reads)>,
}

/// Relays until `stop` turns true.
pub async fn run(relay: Relay, mut stop: watch::Receiver<bool>) {
    let Relay {
        switch,
        writer,
        mut cursor,
        role,
    } = relay;
    loop {
        let mut lease = None;
        if let Some((elector, reads)) = &role {
            match take_role(elector, reads, &mut stop).await {
                Some((held, at)) => {
                    lease = Some(held);
                    cursor = at;
                }
                None => return,
            }
        }
        let followed = follow(&switch, &writer, &mut cursor, &mut stop, lease.as_mut());
        if followed.await.is_break() || *stop.borrow() {
            return;
        }
    }
}

/// Waits for the relay's role; with it, the cursor as committed. `None` once stopped.
async fn take_role(
    elector: &Elector,
    reads: &Reads,
    stop: &mut watch::Receiver<bool>,
) -> Option<(Lease, u64)> {
    loop {
        if *stop.borrow() {
            return None;
        }
        match elector.try_acquire().await {
            Ok(Some(lease)) => match reads.cursor().await {
                Ok(cursor) => {
                    tracing::info!(cursor, "this replica relays interaction-server's events");
                    return Some((lease, cursor));
                }
                Err(e) => tracing::warn!(error = %e, "the relay's cursor cannot be read"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "the relay's role cannot be asked for"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ROLE_RETRY) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// Follows interaction-server while the role (if any) is held: `Break` once stopped, `Continue`
/// when the role is lost or a commit failed (the cursor must then be read again).
async fn follow(
    switch: &Switch,
    writer: &Writer,
    cursor: &mut u64,
    stop: &mut watch::Receiver<bool>,
    mut lease: Option<&mut Lease>,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let mut backoff = BACKOFF_START;
    loop {
        if *stop.borrow() {
            return Break(());
        }
        let lost = async {
            match lease.as_mut() {
                Some(lease) => lease.lost().await,
                None => std::future::pending().await,
            }
        };
        let cursor_at = *cursor;
        let connected = tokio::select! {
            connected = switch.follow(cursor_at) => connected,
            _ = lost => {
                tracing::warn!("the relay's role was lost");
                return Continue(());
            }
        };
        let mut stream = match connected {
            Ok(stream) => {
                tracing::info!(cursor, "following interaction-server");
                stream
            }
            Err(e) => {
                tracing::debug!(error = %e, "interaction-server not reachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Break(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        loop {
            let lost = async {
                match lease.as_mut() {
                    Some(lease) => lease.lost().await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                message = stream.message() => message,
                _ = stop.changed() => return Break(()),
                _ = lost => {
                    tracing::warn!("the relay's role was lost");
                    return Continue(());
                }
            };
            let mut events = match first {
                Ok(Some(event)) => vec![event],
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(code = ?status.code(), message = status.message(), "the stream from interaction-server ended");
                    break;
                }
            };
            // Whatever else has already arrived goes into the same commit.
            while events.len() < MAX_RELAY_BATCH {
                match stream.message().now_or_never() {
                    Some(Ok(Some(event))) => events.push(event),
                    _ => break,
                }
            }
            let from = *cursor;
            let last = events.last().map(|e| e.sequence).unwrap_or(from);
            if events.first().is_some_and(|e| e.sequence != from + 1) {
                tracing::warn!(
                    cursor = from,
                    next = events[0].sequence,
                    "interaction-server's log jumped"
                );
            }
            let handling = ixn_proto::trace::linked_span(
                "relay",
                "consumer",
                events.iter().map(|e| e.traceparent.as_str()),
            );
            let commit = relay_commit(events, from, last);
            if let Err(e) = writer.commit(commit).instrument(handling).await {
                tracing::error!(error = %e, "relaying failed; resuming from the last committed event");
                if lease.is_some() {
                    return Continue(());
                }
                break;
            }
            *cursor = last;
            backoff = BACKOFF_START;
        }
    }
}

/// The commit for a run of interaction-server's events: the mirror's changes, the cursor's move,
/// and the events, which the writer relays to the agents with a live session as it commits.
fn relay_commit(events: Vec<Event>, from: u64, to: u64) -> Commit {
    Commit {
        cursor: Some((from, to)),
        mirror: events.iter().flat_map(Mirror::changes).collect(),
        relayed: events,
        ..Default::default()
    }
}
