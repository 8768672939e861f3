//! `Connect`, the desktop's message bus, and the connection-lost grace: when every `Connect` stream
//! of a session has been gone for longer than the grace period, its Ready channels go Not Ready with
//! actor `SystemParty{connection-lost}`. The session itself stays until logout.

use super::{Inner, derived_id};
use crate::domain::{self, agent_key};
use ixn_proto::auth::Identity;
use ixn_proto::clock::Micros;
use ixn_proto::common::Party;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::log::{DEFAULT_PATIENCE, Feed, LogEntry, Outlet, follow};
use ixn_proto::session::Session;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// The actor of the changes the grace period makes.
pub const CONNECTION_LOST: &str = "connection-lost";

/// Open `Connect` streams per session.
#[derive(Debug, Default)]
pub struct Connections {
    sessions: Mutex<HashMap<String, Track>>,
    /// On a shared store: this replica's number, and where it records that a session gained its
    /// first stream here (`true`) or lost its last one, and when.
    shared: OnceLock<(i32, mpsc::UnboundedSender<Shared>)>,
}

/// A session gained its first stream on this replica (`open`) or lost its last, at a time;
/// answered once recorded.
pub type Shared = (String, bool, Micros, Option<oneshot::Sender<()>>);

#[derive(Debug, Default)]
struct Track {
    open: usize,
    /// Changes whenever the session gains or loses its last stream: a grace timer acts only if
    /// nothing changed since it started.
    generation: u64,
}

/// A `Connect` stream, and what completes once other replicas can see that it is open.
pub type Opened = (Outlet, Option<oneshot::Receiver<()>>);

/// Keeps a stream counted while it lives.
struct Open {
    inner: Arc<Inner>,
    session_id: String,
}

impl Drop for Open {
    fn drop(&mut self) {
        let connections = &self.inner.connections;
        let last = {
            let mut sessions = connections.sessions.lock().expect("connections");
            let track = sessions.entry(self.session_id.clone()).or_default();
            track.open = track.open.saturating_sub(1);
            track.open == 0
        };
        if last {
            connections.share(&self.session_id, false, self.inner.clock.now());
            connections.disconnected(self.inner.clone(), &self.session_id);
        }
    }
}

impl Connections {
    /// On a shared store: this replica's presence `number`, and where what [`Connections::share`]
    /// says goes (in order).
    pub fn shared(&self, number: i32, record: mpsc::UnboundedSender<Shared>) {
        let _ = self.shared.set((number, record));
    }

    /// This replica's presence number, on a shared store.
    pub fn number(&self) -> Option<i32> {
        self.shared.get().map(|(number, _)| *number)
    }

    /// Tells the other replicas that a session gained its first stream here, or lost its last;
    /// what completes once that is recorded.
    fn share(&self, session_id: &str, open: bool, at: Micros) -> Option<oneshot::Receiver<()>> {
        let (_, record) = self.shared.get()?;
        let (done, recorded) = oneshot::channel();
        let _ = record.send((session_id.to_owned(), open, at, Some(done)));
        Some(recorded)
    }

    /// Counts a new stream; on a shared store, with what completes once the other replicas can
    /// see it.
    fn connected(
        &self,
        inner: Arc<Inner>,
        session_id: &str,
    ) -> (Open, Option<oneshot::Receiver<()>>) {
        let mut sessions = self.sessions.lock().expect("connections");
        let track = sessions.entry(session_id.to_owned()).or_default();
        track.open += 1;
        track.generation += 1;
        let shared = if track.open == 1 {
            self.share(session_id, true, inner.clock.now())
        } else {
            None
        };
        let open = Open {
            inner,
            session_id: session_id.to_owned(),
        };
        (open, shared)
    }

    /// The session has no stream (any more): its grace period starts now.
    pub fn disconnected(&self, inner: Arc<Inner>, session_id: &str) {
        let generation = {
            let mut sessions = self.sessions.lock().expect("connections");
            let track = sessions.entry(session_id.to_owned()).or_default();
            track.generation += 1;
            track.generation
        };
        let deadline = inner.clock.now() + inner.grace.as_micros() as i64;
        Self::arm(inner, session_id, generation, deadline);
    }

    /// The grace timer: acts at `deadline` unless a stream came (or went) here since `generation`.
    fn arm(inner: Arc<Inner>, session_id: &str, generation: u64, deadline: Micros) {
        let session_id = session_id.to_owned();
        tokio::spawn(async move {
            inner.clock.sleep_until(deadline).await;
            if inner.connections.still_gone(&session_id, generation) {
                // Boxed: the timer task then stays small for the whole grace period (a few hundred
                // bytes rather than the whole of `connection_lost`), which every session has.
                Box::pin(inner.connection_lost(&session_id, generation)).await;
            }
        });
    }

    fn still_gone(&self, session_id: &str, generation: u64) -> bool {
        self.sessions
            .lock()
            .expect("connections")
            .get(session_id)
            .is_some_and(|t| t.open == 0 && t.generation == generation)
    }

    fn forget(&self, session_id: &str) {
        self.sessions
            .lock()
            .expect("connections")
            .remove(session_id);
    }
}

impl Inner {
    /// Opens a `Connect` stream: the session's events and the ones relayed to its agent, after
    /// `after` (at most `head`), ending with OK once `SessionDisposed` is delivered. On a shared
    /// store, with what
    /// completes once the other replicas can see that the session is connected here.
    pub fn connect(
        self: &Arc<Self>,
        who: &Identity,
        session: Session,
        after: u64,
        head: u64,
    ) -> Result<Opened, Failure> {
        domain::live(&session)?;
        if after > head {
            return Err(Failure::new(
                R::SequenceOutOfRange,
                format!("after_sequence {after} is beyond the head {head}"),
            )
            .with_meta("head", head));
        }
        let from = session.created_sequence;
        let key = Party::agent(&session.agent_id, "").key();
        let tenant = session.tenant.clone();
        let session_id = session.session_id.clone();
        let feed = Feed {
            log: self.log.clone(),
            visible: move |e: &LogEntry| {
                e.sequence >= from && e.tenant == tenant && e.recipients.contains(&key)
            },
            ends_after: {
                let id = session_id.clone();
                move |e: &LogEntry| domain::ends_session(&e.event, &id)
            },
            after: after.max(from.saturating_sub(1)),
            clock: self.clock.clone(),
            expires: who.claims.exp.saturating_mul(1_000_000),
            draining: self.draining.clone(),
        };
        let (open, shared) = self.connections.connected(self.clone(), &session_id);
        // A desktop that stops reading holds back only its own stream, and is cut once its buffer
        // has stayed full (see `log::stream`).
        let (tx, rx) = ixn_proto::log::stream(self.clock.clone(), DEFAULT_PATIENCE);
        tokio::spawn(async move {
            let _open = open;
            follow(feed, tx).await;
        });
        Ok((rx, shared))
    }

    /// The grace period is over with no stream: Ready channels go Not Ready.
    async fn connection_lost(self: &Arc<Self>, session_id: &str, generation: u64) {
        let found = match self
            .live_session(session_id)
            .filter(|_| !self.reads.shared())
        {
            Some(s) => Some(s),
            // On a shared store another replica may have changed or ended it.
            None => match self.reads.session(session_id).await {
                Ok(found) => found.filter(|s| !crate::store::is_disposed(s)),
                Err(e) => {
                    tracing::error!(session_id, error = %e, "connection lost, but the session cannot be read");
                    return;
                }
            },
        };
        let Some(found) = found else {
            self.connections.forget(session_id);
            return;
        };
        let _guard = match self.lock(&agent_key(&found.tenant, &found.agent_id)).await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(session_id, error = %e, "connection lost, but the agent cannot be locked");
                return;
            }
        };
        if !self.connections.still_gone(session_id, generation) {
            return;
        }
        // On a shared store the desktop may be connected to another replica, or was until lately:
        // the grace runs from when it was last connected anywhere.
        if let Some(number) = self.connections.number() {
            let grace = self.grace.as_micros() as Micros;
            let now = self.clock.now();
            let until = match self.reads.last_connected(session_id, number, now).await {
                Ok(Some(seen)) => (seen + grace > now).then_some(seen + grace),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(session_id, error = %e, "connection lost here, but whether it is elsewhere cannot be read");
                    Some(now + grace)
                }
            };
            if let Some(until) = until {
                Connections::arm(self.clone(), session_id, generation, until);
                return;
            }
        }
        let Some(mut session) = self.live_session(session_id) else {
            return;
        };
        let actor = Party::system(CONNECTION_LOST);
        let reason = session.default_not_ready_reason.clone().unwrap_or_default();
        let ready: Vec<String> = domain::channels(&session)
            .iter()
            .filter(|c| c.active && domain::is_ready(c))
            .map(|c| c.media_type.clone())
            .collect();
        for media in ready {
            let id = derived_id(&format!(
                "{CONNECTION_LOST}/{session_id}/{generation}/{media}"
            ));
            let result = self
                .switch
                .set_not_ready(
                    &session.tenant,
                    id,
                    &session.agent_id,
                    &media,
                    reason.clone(),
                    "",
                )
                .await;
            if let Err(e) = result {
                tracing::warn!(session_id, media, error = %e, "connection lost, but the switch could not make the channel Not Ready");
                continue;
            }
            let was = session.version;
            let event =
                domain::state_changed(&mut session, &media, false, Some(reason.clone()), &actor);
            if let Err(e) = self
                .commit(
                    vec![event],
                    Some(session.clone()),
                    Some(was),
                    None,
                    None,
                    "",
                )
                .await
            {
                tracing::error!(session_id, error = %e, "connection lost: the change could not be committed");
                return;
            }
        }
    }
}
