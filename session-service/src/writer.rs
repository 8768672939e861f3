//! The one writer of session-service's store. Handlers and the relay hand it a [`Commit`]: events,
//! the session row, mirror changes, the relay cursor, a request's outcome. It takes every commit
//! waiting, writes them in one transaction (one fsync: group commit), and only after the commit
//! assigns the in-memory view, publishes the events to the log and answers. So each step of a logout
//! is durable before the next starts, and memory never shows what the disk does not have.
//!
//! On a shared store the writer first folds in what other replicas committed (under the writers'
//! lock at each batch, and whenever they notify): their events go to this replica's log, and the
//! sessions they touch are read again.

use crate::domain::{AgentKey, Emitted, Mirror, MirrorChange, agent_key};
use crate::store::{Folded, Rows, Store, is_disposed, touched};
use ixn_proto::clock::{Clock, Micros};
use ixn_proto::events::event::Body;
use ixn_proto::events::{Event, RelayedFrom};
use ixn_proto::hosting::StoreHealth;
use ixn_proto::log::{Log, LogEntry};
use ixn_proto::session::Session;
use ixn_proto::store::{Batch, REPLAY_CHUNK, StoreError};
use ixn_proto::wire::SharedEvent;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

impl View {
    /// Takes a session as committed: live, or gone once disposed.
    pub fn put(&mut self, s: Session) {
        let key = agent_key(&s.tenant, &s.agent_id);
        if is_disposed(&s) {
            self.sessions.remove(&s.session_id);
            if self.by_agent.get(&key) == Some(&s.session_id) {
                self.by_agent.remove(&key);
            }
        } else {
            // A read that raced a newer change (folded outside the writers' lock) is not taken.
            if self
                .sessions
                .get(&s.session_id)
                .is_some_and(|old| old.version > s.version)
            {
                return;
            }
            if let Some(old) = self.by_agent.insert(key, s.session_id.clone())
                && old != s.session_id
            {
                self.sessions.remove(&old);
            }
            self.sessions.insert(s.session_id.clone(), s);
        }
    }

    /// Takes the agent's live session as committed (`None`: it has none).
    pub fn put_agent(&mut self, key: &AgentKey, live: Option<Session>) {
        match live {
            Some(s) => self.put(s),
            None => {
                if let Some(id) = self.by_agent.remove(key) {
                    self.sessions.remove(&id);
                }
            }
        }
    }
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
    /// The session's version the change was decided against (`None`: a new session).
    pub session_was: Option<u64>,
    pub mirror: Vec<MirrorChange>,
    /// interaction-server's events to relay to the agents they are addressed to, for those with a
    /// live session when this commits (decided under the writers' lock, after what other replicas
    /// committed is folded in).
    pub relayed: Vec<Event>,
    /// The relay's move in interaction-server's log: from, to.
    pub cursor: Option<(u64, u64)>,
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
    /// On a shared store: fold in what other replicas committed.
    CatchUp,
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
    pub fn start<S: Store>(
        store: S,
        head: u64,
        view: Arc<Mutex<View>>,
        log: Arc<Log>,
        clock: Clock,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let health = StoreHealth::default();
        let catch_up = Arc::new(AtomicBool::new(false));
        let changed = ixn_proto::store::catch_up_on_notify(&tx, catch_up.clone(), || Job::CatchUp);
        if let Some(listener) = store.listen(changed) {
            tokio::spawn(listener);
        }
        let thread = Thread {
            health: health.clone(),
            store,
            next_seq: head + 1,
            view,
            log,
            clock,
            last_prune: 0,
            catch_up,
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

struct Thread<S> {
    health: StoreHealth,
    store: S,
    next_seq: u64,
    view: Arc<Mutex<View>>,
    log: Arc<Log>,
    clock: Clock,
    last_prune: Micros,
    /// Set while a [`Job::CatchUp`] from the listener waits.
    catch_up: Arc<AtomicBool>,
}

impl<S: Store> Thread<S> {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(jobs) = ixn_proto::store::next_batch(&mut rx, MAX_BATCH) {
            let mut batch = Vec::with_capacity(jobs.len());
            let mut probes = Vec::new();
            for job in jobs {
                match job {
                    Job::Commit(commit, reply) => batch.push((*commit, reply)),
                    Job::Probe(done) => {
                        self.health.report(self.store.probe().is_ok());
                        probes.push(done);
                    }
                    Job::CatchUp => {
                        // Cleared as soon as taken: a notification from now on queues another.
                        self.catch_up.store(false, Ordering::Release);
                    }
                }
            }
            if batch.is_empty() {
                if let Err(e) = self.fold_committed() {
                    // Not serving until it works: the health probe's retries fold them in again.
                    tracing::error!(error = %e, "other replicas' events cannot be read");
                    self.health.report(false);
                }
            } else {
                self.run_batch(batch);
            }
            // Answered once health says all of it, the catch-up included.
            for done in probes {
                let _ = done.send(());
            }
        }
    }

    /// Folds in what other replicas committed, outside a batch.
    fn fold_committed(&mut self) -> Result<(), StoreError> {
        loop {
            let folded = self.store.committed(self.next_seq - 1)?;
            if folded.entries.is_empty() {
                return Ok(());
            }
            fold(&mut self.next_seq, &self.view, &self.log, folded);
        }
    }

    fn run_batch(&mut self, batch: Vec<(Commit, Reply)>) {
        match self.try_batch(batch) {
            Ok(()) => {}
            // A compare-and-set failed (another replica changed a row this batch decided on):
            // each commit again on its own, so that only the one that conflicts fails.
            Err((StoreError::Conflict(what), batch)) if batch.len() > 1 => {
                tracing::warn!(%what, "a compare-and-set failed; committing the batch one by one");
                for one in batch {
                    self.run_batch(vec![one]);
                }
            }
            Err((e, batch)) => {
                tracing::error!(error = %e, "commit failed");
                for (_, reply) in batch {
                    let _ = reply.send(Err(format!("the store failed to commit: {e}")));
                }
            }
        }
    }

    /// Commits a batch and answers it, or gives it back with why it failed.
    fn try_batch(
        &mut self,
        mut batch: Vec<(Commit, Reply)>,
    ) -> Result<(), (StoreError, Vec<(Commit, Reply)>)> {
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
        self.health
            .report(written.is_ok() || matches!(written, Err(StoreError::Conflict(_))));
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
                            view.put(s.clone());
                        }
                    }
                }
                self.log.publish(entries);
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
                Ok(())
            }
            Err(e) => {
                // Nothing of this batch is in the log: the next sequence follows what is published
                // (on a shared store, what a commit whose answer was lost wrote is folded in later,
                // as another replica's would be).
                self.next_seq = self.log.head() + 1;
                if self.store.reads().shared() {
                    return Err((e, batch));
                }
                if let Ok(loaded) = self.store.load() {
                    self.next_seq = loaded.head + 1;
                }
                Err((e, batch))
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
        let mut tx = self.store.begin()?;
        if let Some(head) = tx.shared_head() {
            // Under the writers' lock: what other replicas committed comes first.
            while self.next_seq <= head {
                let entries = tx.events_after(self.next_seq - 1, REPLAY_CHUNK)?;
                if entries.is_empty() {
                    return Err(StoreError::Corrupt(format!(
                        "the log's head is {head} but nothing follows {}",
                        self.next_seq - 1
                    )));
                }
                let sessions = tx.sessions(&touched(&entries))?;
                fold(
                    &mut self.next_seq,
                    &self.view,
                    &self.log,
                    Folded { entries, sessions },
                );
            }
        }
        {
            let view = self.view.lock().expect("view");
            for (commit, _) in batch.iter_mut() {
                for event in std::mem::take(&mut commit.relayed) {
                    commit.events.extend(to_live_agent(&view, event));
                }
            }
        }
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
                tx.save_session(s, commit.session_was)?;
            }
            for change in &commit.mirror {
                tx.save_mirror(change)?;
            }
            if let Some((from, to)) = commit.cursor {
                tx.save_cursor(from, to)?;
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

/// An event of interaction-server's, to relay if it is addressed to an agent with a live session.
fn to_live_agent(view: &View, event: Event) -> Option<Emitted> {
    let addressed = event
        .to
        .iter()
        .filter_map(|p| p.agent_id())
        .any(|agent| view.by_agent.contains_key(&agent_key(&event.tenant, agent)));
    let body = event.body.clone().filter(|_| addressed)?;
    Some(Emitted {
        tenant: event.tenant.clone(),
        actor: event.actor.clone().unwrap_or_default(),
        to: event.to.clone(),
        body,
        relayed: Some(event),
    })
}

/// Takes what other replicas committed: their events go to the log, their sessions to memory.
fn fold(next_seq: &mut u64, view: &Mutex<View>, log: &Log, folded: Folded) {
    let Some(last) = folded.entries.last() else {
        return;
    };
    *next_seq = (*next_seq).max(last.sequence + 1);
    {
        let mut view = view.lock().expect("view");
        for s in folded.sessions {
            view.put(s);
        }
    }
    log.publish(folded.entries);
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
        event: SharedEvent::new(event),
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
