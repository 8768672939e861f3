//! The relay: follows interaction-server's log (as role `service`, every tenant) from a stored
//! cursor. For each event it updates the mirror of what agents hold and, when the event is addressed
//! to an agent with a live session, appends it to session-service's own log (`relayed_from` set) for
//! that session's `Connect` streams. The relayed events, the mirror changes and the new cursor commit
//! together, so a restart of either service neither loses nor repeats an event. When
//! interaction-server goes away the relay reconnects with backoff and resumes from its cursor.

use crate::domain::{Emitted, Mirror, agent_key};
use crate::switch::Switch;
use crate::writer::{Commit, View, Writer};
use futures::FutureExt;
use ixn_proto::events::Event;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// Events taken off the stream into one commit at most.
const MAX_RELAY_BATCH: usize = 256;
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Follows until `stop` turns true.
pub async fn run(
    switch: Arc<Switch>,
    writer: Arc<Writer>,
    view: Arc<Mutex<View>>,
    mut cursor: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_START;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut stream = match switch.follow(cursor).await {
            Ok(stream) => {
                tracing::info!(cursor, "following interaction-server");
                stream
            }
            Err(e) => {
                tracing::debug!(error = %e, "interaction-server not reachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                message = stream.message() => message,
                _ = stop.changed() => return,
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
            let last = events.last().map(|e| e.sequence).unwrap_or(cursor);
            if events.first().is_some_and(|e| e.sequence != cursor + 1) {
                tracing::warn!(
                    cursor,
                    next = events[0].sequence,
                    "interaction-server's log jumped"
                );
            }
            let handling = ixn_proto::trace::linked_span(
                "relay",
                "consumer",
                events.iter().map(|e| e.traceparent.as_str()),
            );
            let commit = relay_commit(&view, events, last);
            if let Err(e) = writer.commit(commit).instrument(handling).await {
                tracing::error!(error = %e, "relaying failed; resuming from the last committed event");
                break;
            }
            cursor = last;
            backoff = BACKOFF_START;
        }
    }
}

/// The commit for a run of interaction-server's events.
fn relay_commit(view: &Mutex<View>, events: Vec<Event>, cursor: u64) -> Commit {
    let view = view.lock().expect("view");
    let mut commit = Commit {
        cursor: Some(cursor),
        ..Default::default()
    };
    for event in events {
        commit.mirror.extend(Mirror::changes(&event));
        let addressed = event
            .to
            .iter()
            .filter_map(|p| p.agent_id())
            .any(|agent| view.by_agent.contains_key(&agent_key(&event.tenant, agent)));
        if addressed && let Some(body) = event.body.clone() {
            commit.events.push(Emitted {
                tenant: event.tenant.clone(),
                actor: event.actor.clone().unwrap_or_default(),
                to: event.to.clone(),
                body,
                relayed: Some(event),
            });
        }
    }
    commit
}
