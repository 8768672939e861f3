//! The one writer of session-service's store. Handlers and the relay hand it a [`Commit`]: events,
//! the session row, mirror changes, the relay cursor, a request's outcome. It takes every commit
//! waiting, writes them in one transaction (one fsync: group commit), and only after the commit
//! assigns the in-memory view, publishes the events to the log and answers. So each step of a logout
//! is durable before the next starts, and memory never shows what the disk does not have.

use crate::domain::{AgentKey, Emitted, Mirror, MirrorChange, agent_key};
use crate::store::{Rows, Store, is_disposed};
use ixn_proto::clock::{Clock, Micros};
use ixn_proto::events::event::Body;
use ixn_proto::events::{Event, RelayedFrom};
use ixn_proto::hosting::StoreHealth;
use ixn_proto::log::{Log, LogEntry};
use ixn_proto::session::Session;
use ixn_proto::sqlite::StoreError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The most commits one transaction carries.
const MAX_BATCH: usize = 512;
/// How long a successful outcome is kept for retries (AIP-155 asks for at least 24 hours).
const REQUEST_RETENTION_US: Micros = 25 * 3_600 * 1_000_000;
const PRUNE_EVERY_US: Micros = 60 * 1_000_000;

/// What the service holds in memory: committed state only.
#[derive(Debug, Default)]
pub struct View {
    /// Live sessions by id.
    pub sessions: HashMap<String, Session>,
    /// The live session of each agent.
    pub by_agent: HashMap<AgentKey, String>,
    pub mirror: Mirror,
}

/// A request's outcome, recorded with the change it made.
#[derive(Debug)]
pub struct Outcome {
    pub tenant: String,
    pub subject: String,
    pub method: &'static str,
    pub request_id: String,
    pub fingerprint: Vec<u8>,
    pub response: Response,
}

/// The recorded answer of a request.
#[derive(Clone, Debug)]
pub enum Response {
    /// The session as the change left it.
    Session,
    /// A logout: its session and the sequence of `SessionDisposed` (the last event).
    Logout,
}

/// One unit of change, committed whole or not at all.
#[derive(Debug, Default)]
pub struct Commit {
    pub events: Vec<Emitted>,
    /// The session as the change leaves it.
    pub session: Option<Session>,
    pub mirror: Vec<MirrorChange>,
    /// The relay's new position in interaction-server's log.
    pub cursor: Option<u64>,
    pub outcome: Option<Outcome>,
    /// The request that caused it.
    pub correlation_id: String,
    pub traceparent: String,
}

/// What a commit became.
#[derive(Clone, Debug)]
pub struct Committed {
    pub sequences: Vec<u64>,
    pub session: Option<Session>,
}

type Reply = oneshot::Sender<Result<Committed, String>>;

enum Job {
    Commit(Box<Commit>, Reply),
    /// While the store is unreachable: try a write, and report.
    Probe(oneshot::Sender<()>),
}

/// The handle the service holds.
#[derive(Debug)]
pub struct Writer {
    jobs: std::sync::RwLock<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Whether the last commit (or probe) reached the store.
    pub health: StoreHealth,
}

impl Writer {
    pub fn start(
        store: Store,
        head: u64,
        view: Arc<Mutex<View>>,
        log: Arc<Log>,
        clock: Clock,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let health = StoreHealth::default();
        let thread = Thread {
            health: health.clone(),
            store,
            next_seq: head + 1,
            view,
            log,
            clock,
            last_prune: 0,
        };
        let handle = std::thread::Builder::new()
            .name("session-writer".into())
            .spawn(move || thread.run(rx))?;
        Ok(Writer {
            jobs: std::sync::RwLock::new(Some(tx)),
            thread: Mutex::new(Some(handle)),
            health,
        })
    }

    /// Commits; answers once durable and visible.
    pub async fn commit(&self, commit: Commit) -> Result<Committed, String> {
        let jobs = self.jobs.read().expect("writer jobs").clone();
        let jobs = jobs.ok_or("the service is shutting down")?;
        let (tx, rx) = oneshot::channel();
        jobs.send(Job::Commit(Box::new(commit), tx))
            .await
            .map_err(|_| "the writer has stopped".to_owned())?;
        rx.await.map_err(|_| "the writer has stopped".to_owned())?
    }

    /// Has the writer try a write to the store, which reports the outcome to [`Writer::health`].
    pub async fn probe(&self) {
        let jobs = self.jobs.read().expect("writer jobs").clone();
        let Some(jobs) = jobs else { return };
        let (tx, rx) = oneshot::channel();
        if jobs.send(Job::Probe(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops taking commits and waits for the writer to finish what it has. Blocking.
    pub fn shutdown(&self) {
        self.jobs.write().expect("writer jobs").take();
        if let Some(handle) = self.thread.lock().expect("writer thread").take() {
            let _ = handle.join();
        }
    }
}

struct Thread {
    health: StoreHealth,
    store: Store,
    next_seq: u64,
    view: Arc<Mutex<View>>,
    log: Arc<Log>,
    clock: Clock,
    last_prune: Micros,
}

impl Thread {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(jobs) = ixn_proto::sqlite::next_batch(&mut rx, MAX_BATCH) {
            let mut batch = Vec::with_capacity(jobs.len());
            for job in jobs {
                match job {
                    Job::Commit(commit, reply) => batch.push((*commit, reply)),
                    Job::Probe(done) => {
                        self.health.report(self.store.probe().is_ok());
                        let _ = done.send(());
                    }
                }
            }
            if !batch.is_empty() {
                self.run_batch(batch);
            }
        }
    }

    fn run_batch(&mut self, mut batch: Vec<(Commit, Reply)>) {
        let first_seq = self.next_seq;
        let started = std::time::Instant::now();
        let span = ixn_proto::trace::linked_span(
            "store commit",
            "internal",
            batch.iter().map(|(c, _)| c.traceparent.as_str()),
        );
        let _commit = span.enter();
        let mut entries = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        let written = self.write(&mut batch, &mut entries, &mut results);
        self.health.report(written.is_ok());
        match written {
            Ok(()) => {
                ixn_proto::measure::commit(started.elapsed(), batch.len());
                {
                    let mut view = self.view.lock().expect("view");
                    for (commit, _) in &batch {
                        for change in &commit.mirror {
                            view.mirror.apply(change);
                        }
                        if let Some(s) = &commit.session {
                            let key = agent_key(&s.tenant, &s.agent_id);
                            if is_disposed(s) {
                                view.sessions.remove(&s.session_id);
                                if view.by_agent.get(&key) == Some(&s.session_id) {
                                    view.by_agent.remove(&key);
                                }
                            } else {
                                view.by_agent.insert(key, s.session_id.clone());
                                view.sessions.insert(s.session_id.clone(), s.clone());
                            }
                        }
                    }
                }
                self.log.publish(entries);
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                self.next_seq = first_seq;
                if let Ok(loaded) = self.store.load() {
                    self.next_seq = loaded.head + 1;
                }
                for (_, reply) in batch {
                    let _ = reply.send(Err(format!("the store failed to commit: {e}")));
                }
            }
        }
    }

    fn write(
        &mut self,
        batch: &mut [(Commit, Reply)],
        entries: &mut Vec<Arc<LogEntry>>,
        results: &mut Vec<Committed>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let tx = self.store.begin()?;
        for (commit, _) in batch.iter_mut() {
            let mut sequences = Vec::with_capacity(commit.events.len());
            for emitted in &commit.events {
                let sequence = self.next_seq;
                self.next_seq += 1;
                sequences.push(sequence);
                if let (Body::SessionCreated(created), Some(s)) =
                    (&emitted.body, commit.session.as_mut())
                    && created.session_id == s.session_id
                {
                    s.created_sequence = sequence;
                }
                let entry = entry(emitted, sequence, now, commit);
                tx.append(&entry)?;
                entries.push(Arc::new(entry));
            }
            if let Some(s) = &commit.session {
                tx.save_session(s)?;
            }
            for change in &commit.mirror {
                tx.save_mirror(change)?;
            }
            if let Some(cursor) = commit.cursor {
                tx.save_cursor(cursor)?;
            }
            if let Some(o) = &commit.outcome {
                let bytes = response_bytes(o, commit.session.as_ref(), &sequences);
                tx.record_request(
                    &o.tenant,
                    &o.subject,
                    o.method,
                    &o.request_id,
                    &o.fingerprint,
                    &bytes,
                    now,
                )?;
            }
            results.push(Committed {
                sequences,
                session: commit.session.clone(),
            });
        }
        if now - self.last_prune > PRUNE_EVERY_US {
            tx.prune_requests(now - REQUEST_RETENTION_US)?;
            self.last_prune = now;
        }
        tx.commit()
    }
}

/// The log entry of one event: session-service's own, or one relayed from interaction-server.
fn entry(emitted: &Emitted, sequence: u64, now: Micros, commit: &Commit) -> LogEntry {
    let event = match &emitted.relayed {
        Some(original) => Event {
            sequence,
            event_id: Uuid::now_v7().to_string(),
            source: ixn_proto::event::SOURCE_SESSION_SERVICE.into(),
            relayed_from: Some(RelayedFrom {
                source: original.source.clone(),
                sequence: original.sequence,
                event_id: original.event_id.clone(),
            }),
            ..original.clone()
        },
        None => Event {
            sequence,
            event_id: Uuid::now_v7().to_string(),
            time: Some(ixn_proto::clock::timestamp(now)),
            source: ixn_proto::event::SOURCE_SESSION_SERVICE.into(),
            tenant: emitted.tenant.clone(),
            correlation_id: commit.correlation_id.clone(),
            traceparent: commit.traceparent.clone(),
            actor: Some(emitted.actor.clone()),
            to: emitted.to.clone(),
            relayed_from: None,
            body: Some(emitted.body.clone()),
        },
    };
    let body = event.body.as_ref().expect("every event has a body");
    LogEntry {
        sequence,
        tenant: event.tenant.clone(),
        kind: ixn_proto::event::kind(body),
        interaction_id: ixn_proto::event::interaction_id(body).map(str::to_owned),
        reporting: false,
        recipients: event.to.iter().map(|p| p.key()).collect(),
        submitter: None,
        event,
    }
}

/// The recorded answer: what a retry of the same request returns.
pub fn response_bytes(o: &Outcome, session: Option<&Session>, sequences: &[u64]) -> Vec<u8> {
    use prost::Message;
    match o.response {
        Response::Session => session.cloned().unwrap_or_default().encode_to_vec(),
        Response::Logout => logout_response(session, sequences).encode_to_vec(),
    }
}

/// A logout's answer: the session, and the sequence of its `SessionDisposed`.
pub fn logout_response(
    session: Option<&Session>,
    sequences: &[u64],
) -> ixn_proto::session::LogoutResponse {
    ixn_proto::session::LogoutResponse {
        session_id: session.map(|s| s.session_id.clone()).unwrap_or_default(),
        sequence: sequences.last().copied().unwrap_or_default(),
    }
}
