//! The one writer. Every mutating command goes through it, in the order it arrives:
//!
//! 1. it takes every command waiting (up to [`MAX_BATCH`]) and opens one transaction;
//! 2. for each: a recorded outcome of the same request is answered again (a different request under
//!    that id is `REQUEST_ID_REUSED`); otherwise the domain decides against the in-memory state, the
//!    events get the next sequences, are folded into the state and written with the changed rows and
//!    the outcome;
//! 3. it commits once (one fsync for the whole batch: group commit), and only then answers the
//!    callers and publishes the events to the log.
//!
//! Sequences are assigned here, contiguously, and become visible in that order. If a commit fails,
//! nobody was answered yes: the state is reloaded from the store and every caller gets UNAVAILABLE.
//!
//! On a store several replicas share, the transaction first takes the writers' lock and folds in
//! the events other replicas committed since this one last looked (they are published to this
//! replica's subscribers as well), so every command is decided against the current state. Between
//! batches a notification from the store has the writer fold them in too. Every row written is a
//! compare-and-set; should one fail (the state was wrong), the state is reloaded and the batch is
//! decided again, so no command fails because of another.

use crate::domain::{
    self, AgentKey, Caller, Command, Ctx, Decision, Micros, Platform, Reply, State,
};
use crate::error::Error;
use crate::store::{Reads, Store, StoreError, Tx};
use foldhash::HashMap;
use ixn_proto::auth::Role;
use ixn_proto::clock::Clock;
use ixn_proto::error::{Failure, Reason};
use ixn_proto::events::Event;
use ixn_proto::hosting::StoreHealth;
use ixn_proto::interaction as pb;
use ixn_proto::log::{Log, LogEntry};
use ixn_proto::store::{Batch, REPLAY_CHUNK};
use ixn_proto::wire::SharedEvent;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

/// The most commands one transaction carries.
pub const MAX_BATCH: usize = 1_024;
/// The name of the writer's thread (what `top -H`, `perf` and the benchmark find it by).
pub const WRITER_THREAD: &str = "ixn-writer";
/// How long a successful outcome is kept for retries (AIP-155 asks for at least 24 hours).
const REQUEST_RETENTION_US: Micros = 25 * 3_600 * 1_000_000;
/// How often old outcomes are pruned.
const PRUNE_EVERY_US: Micros = 60 * 1_000_000;

/// A command with what identifies its request.
#[derive(Debug)]
pub struct Submission {
    pub caller: Caller,
    pub request_id: String,
    /// A digest of the decoded request: a retry must match it.
    pub fingerprint: Vec<u8>,
    pub command: Command,
    /// W3C trace context of the span that handled the request; carried by its events.
    pub traceparent: String,
}

/// The answer to a command, as the RPC returns it.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Submit(pb::SubmitResponse),
    Pull(pb::PullResponse),
    Deliver(pb::DeliverResponse),
    Accept(pb::AcceptResponse),
    Reject(pb::RejectResponse),
    StopProcessing(pb::StopProcessingResponse),
    PlaceInQueue(pb::PlaceInQueueResponse),
    ChangeProperties(pb::ChangePropertiesResponse),
    Agent(pb::Agent),
    Nothing,
}

impl Answer {
    fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Submit(m) => m.encode_to_vec(),
            Answer::Pull(m) => m.encode_to_vec(),
            Answer::Deliver(m) => m.encode_to_vec(),
            Answer::Accept(m) => m.encode_to_vec(),
            Answer::Reject(m) => m.encode_to_vec(),
            Answer::StopProcessing(m) => m.encode_to_vec(),
            Answer::PlaceInQueue(m) => m.encode_to_vec(),
            Answer::ChangeProperties(m) => m.encode_to_vec(),
            Answer::Agent(m) => m.encode_to_vec(),
            Answer::Nothing => Vec::new(),
        }
    }

    /// Reads back a recorded answer to `command`.
    fn decode(command: &Command, bytes: &[u8]) -> Result<Answer, prost::DecodeError> {
        Ok(match command {
            Command::Submit { .. } => Answer::Submit(Message::decode(bytes)?),
            Command::Pull { .. } => Answer::Pull(Message::decode(bytes)?),
            Command::Deliver { .. } => Answer::Deliver(Message::decode(bytes)?),
            Command::Accept { .. } => Answer::Accept(Message::decode(bytes)?),
            Command::Reject { .. } => Answer::Reject(Message::decode(bytes)?),
            Command::StopProcessing { .. } => Answer::StopProcessing(Message::decode(bytes)?),
            Command::PlaceInQueue { .. } => Answer::PlaceInQueue(Message::decode(bytes)?),
            Command::ChangeProperties { .. } => Answer::ChangeProperties(Message::decode(bytes)?),
            Command::ExpireInvites => Answer::Nothing,
            _ => Answer::Agent(Message::decode(bytes)?),
        })
    }
}

enum Job {
    Execute(Box<Submission>, oneshot::Sender<Result<Answer, Error>>),
    /// The invite timer: revoke what is due.
    Expire,
    /// While the store is unreachable: try a write, and report.
    Probe(oneshot::Sender<()>),
    /// How many interactions are in each state (for the metrics).
    Census(oneshot::Sender<Census>),
    /// An agent as committed (GetAgent on the embedded store); `None` while the state is stale.
    Agent(AgentKey, oneshot::Sender<Option<domain::Agent>>),
    /// Another replica committed: fold its events in.
    CatchUp,
}

/// Interactions by state, in [`Census::STATES`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census(pub [u64; 5]);

impl Census {
    pub const STATES: [&'static str; 5] = ["queued", "routing", "invited", "handling", "stopped"];

    fn index(phase: domain::Phase) -> usize {
        match phase {
            domain::Phase::Queued => 0,
            domain::Phase::Routing => 1,
            domain::Phase::Invited => 2,
            domain::Phase::Handling => 3,
            domain::Phase::Stopped => 4,
        }
    }
}

/// The handle the API holds.
#[derive(Debug)]
pub struct Engine {
    /// Taken away at shutdown: the writer ends once the last sender is gone.
    jobs: std::sync::RwLock<Option<mpsc::Sender<Job>>>,
    pub log: Arc<Log>,
    pub reads: Reads,
    pub platform: Arc<Platform>,
    pub clock: Clock,
    /// Whether the last commit (or probe) reached the store.
    pub health: StoreHealth,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Engine {
    /// Loads the state from the store and starts the writer thread and the invite timer (and, on
    /// a shared store, the listener for other replicas' commits).
    pub fn start<S: Store>(
        mut store: S,
        platform: Platform,
        clock: Clock,
    ) -> Result<Arc<Engine>, StoreError> {
        let loaded = store.load()?;
        let reads = store.reads();
        let log = Arc::new(Log::new(loaded.head, reads.history()));
        let platform = Arc::new(platform);
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let (deadline_tx, deadline_rx) = watch::channel(loaded.state.next_deadline());
        let health = StoreHealth::default();
        let catch_up = Arc::new(AtomicBool::new(false));
        let changed =
            ixn_proto::store::catch_up_on_notify(&jobs, catch_up.clone(), || Job::CatchUp);
        if let Some(listener) = store.listen(changed) {
            tokio::spawn(listener);
        }
        let writer = Writer {
            store,
            core: Core {
                health: health.clone(),
                stopped: None,
                state: loaded.state,
                agent_versions: loaded.agent_versions,
                next_seq: loaded.head + 1,
                log: log.clone(),
                platform: platform.clone(),
            },
            clock: clock.clone(),
            deadline: deadline_tx,
            last_prune: 0,
            catch_up,
            stale: false,
        };
        let handle = std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || writer.run(rx))?;
        tokio::spawn(invite_timer(jobs.downgrade(), deadline_rx, clock.clone()));
        Ok(Arc::new(Engine {
            jobs: std::sync::RwLock::new(Some(jobs)),
            log,
            reads,
            platform,
            clock,
            health,
            writer: std::sync::Mutex::new(Some(handle)),
        }))
    }

    /// Runs a command through the writer; answers once its events are durable.
    pub async fn execute(&self, submission: Submission) -> Result<Answer, Error> {
        let (tx, rx) = oneshot::channel();
        let jobs = self.jobs.read().expect("engine jobs").clone();
        jobs.ok_or(Error::Unavailable("the server is shutting down"))?
            .send(Job::Execute(Box::new(submission), tx))
            .await
            .map_err(|_| Error::Unavailable("the writer has stopped"))?;
        rx.await
            .map_err(|_| Error::Unavailable("the writer has stopped"))?
    }

    /// Has the writer try a write to the store, which reports the outcome to [`Engine::health`].
    pub async fn probe(&self) {
        self.ask(Job::Probe).await;
    }

    /// How many interactions are in each state; `None` while shutting down.
    pub async fn census(&self) -> Option<Census> {
        self.ask(Job::Census).await
    }

    /// The agent as committed: its own state and what it holds, with each holding's media. On the
    /// embedded store the writer's state between two batches is exactly what is committed, so the
    /// writer answers from memory; on a shared store other replicas change agents too, and the
    /// store is read.
    pub async fn agent(&self, tenant: &str, agent_id: &str) -> Result<domain::Agent, Error> {
        if let Some(read) = self.reads.shared_agent(tenant, agent_id).await {
            return Ok(read?);
        }
        self.ask(|reply| Job::Agent(AgentKey::new(tenant, agent_id), reply))
            .await
            .ok_or(Error::Unavailable("the writer has stopped"))?
            .ok_or(Error::Unavailable("the store is unreachable"))
    }

    /// Has the writer answer `job` between two batches; `None` while shutting down.
    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let jobs = self.jobs.read().expect("engine jobs").clone()?;
        jobs.send(job(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops taking commands, lets the writer commit and answer what it already has, and waits for
    /// it to release the store. Blocks: call from a blocking thread.
    pub fn shutdown(&self) {
        self.jobs.write().expect("engine jobs").take();
        let handle = self.writer.lock().expect("writer handle").take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Sends `Expire` when the earliest invite deadline passes.
async fn invite_timer(
    jobs: mpsc::WeakSender<Job>,
    mut deadline: watch::Receiver<Option<Micros>>,
    clock: Clock,
) {
    loop {
        let next = *deadline.borrow_and_update();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = clock.sleep_until(at) => {
                        let Some(jobs) = jobs.upgrade() else { return };
                        if jobs.send(Job::Expire).await.is_err() {
                            return;
                        }
                        // Wait for the writer to publish the next deadline.
                        if deadline.changed().await.is_err() {
                            return;
                        }
                    }
                    changed = deadline.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if deadline.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What the writer thread owns.
struct Writer<S> {
    store: S,
    core: Core,
    clock: Clock,
    deadline: watch::Sender<Option<Micros>>,
    last_prune: Micros,
    /// Set while a [`Job::CatchUp`] waits.
    catch_up: Arc<AtomicBool>,
    /// The state could not be read back after a failed commit.
    stale: bool,
}

/// The state the writer decides against, and what it keeps in step with it.
struct Core {
    health: StoreHealth,
    /// How many interactions are stopped (they live in the store alone): counted in the store at
    /// the first census (only metrics ask), then kept up to date by each commit.
    stopped: Option<u64>,
    state: State,
    /// Each agent row's version: the sequence of the last event that changed it.
    agent_versions: HashMap<AgentKey, u64>,
    next_seq: u64,
    log: Arc<Log>,
    platform: Arc<Platform>,
}

/// What one attempt at a batch produced, for the callers once it commits.
#[derive(Default)]
struct Outcome {
    /// The answer to each job of the batch, by position (none for the invite timer's).
    answers: Vec<Option<Result<Answer, Error>>>,
    entries: Vec<Arc<LogEntry>>,
    /// The interactions changed, with the version each had before the batch (`None`: new).
    touched: BTreeMap<uuid::Uuid, Option<u64>>,
    /// The agents changed, with the version each row had before the batch.
    agents: BTreeMap<AgentKey, u64>,
    /// Stopped interactions read from the store for a command, forgotten after the batch.
    loaded: Vec<uuid::Uuid>,
}

/// The rows one event changed.
struct Folded {
    interaction: Option<(uuid::Uuid, Option<u64>)>,
    agents: Vec<AgentKey>,
}

impl<S: Store> Writer<S> {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(batch) = ixn_proto::store::next_batch(&mut rx, MAX_BATCH) {
            self.run_batch(batch);
        }
    }

    fn run_batch(&mut self, jobs: Vec<Job>) {
        let mut batch = Vec::with_capacity(jobs.len());
        let mut catch_up = false;
        for job in jobs {
            match job {
                Job::Probe(done) => {
                    let ok =
                        self.store.probe().is_ok() && (!self.stale || self.try_reload().is_ok());
                    self.core.health.report(ok);
                    let _ = done.send(());
                }
                Job::Census(reply) => {
                    let _ = reply.send(self.core.census(&mut self.store));
                }
                Job::Agent(key, reply) => {
                    // Before this batch: every earlier one is committed, and nothing else is in
                    // the state (a failed commit reloads it, or leaves it stale).
                    let agent = (!self.stale).then(|| {
                        let agent = self.core.state.agents.get(&key);
                        agent.cloned().unwrap_or_else(|| domain::Agent::new(&key))
                    });
                    let _ = reply.send(agent);
                }
                Job::CatchUp => {
                    // Cleared as soon as taken: a notification from now on queues another.
                    self.catch_up.store(false, Ordering::Release);
                    catch_up = true;
                }
                job => batch.push(job),
            }
        }
        let now = self.clock.now();
        if self.stale && self.try_reload().is_err() {
            for job in batch {
                if let Job::Execute(_, tx) = job {
                    let _ = tx.send(Err(Error::Unavailable("the store is unreachable")));
                }
            }
            return;
        }
        if catch_up
            && batch.is_empty()
            && let Err(e) = self.fold_committed()
        {
            tracing::error!(error = %e, "other replicas' events cannot be read; reloading");
            self.reload();
        }
        if !batch.is_empty() {
            self.commit_batch(batch, now);
        }
        self.deadline.send_if_modified(|d| {
            let next = self.core.state.next_deadline();
            let changed = *d != next;
            *d = next;
            changed || next.is_some_and(|n| n <= now)
        });
    }

    /// Decides, writes and commits a batch, then answers its callers and publishes its events.
    fn commit_batch(&mut self, mut batch: Vec<Job>, now: Micros) {
        let started = std::time::Instant::now();
        let changes = batch.len();
        let span = ixn_proto::trace::linked_span(
            "store commit",
            "internal",
            batch.iter().filter_map(|job| match job {
                Job::Execute(s, _) => Some(s.traceparent.as_str()),
                _ => None,
            }),
        );
        let _commit = span.enter();
        let mut retried = false;
        let result = loop {
            let mut outcome = Outcome::default();
            let result = self.attempt(&batch, now, &mut outcome);
            match result {
                Err(StoreError::Conflict(what)) if !retried => {
                    // The state was not the store's: read it again and decide again.
                    tracing::warn!(%what, "a compare-and-set failed; deciding the batch again");
                    self.reload();
                    if self.stale {
                        break Err(StoreError::Conflict(what));
                    }
                    retried = true;
                }
                result => break result.map(|()| outcome),
            }
        };
        self.core.health.report(result.is_ok());
        match result {
            Ok(outcome) => {
                ixn_proto::measure::commit(started.elapsed(), changes);
                self.core.count_stopped(&outcome.entries);
                self.core.log.publish(outcome.entries);
                for (job, answer) in batch.drain(..).zip(outcome.answers) {
                    if let (Job::Execute(_, tx), Some(answer)) = (job, answer) {
                        let _ = tx.send(answer);
                    }
                }
                for id in outcome.touched.keys() {
                    self.core.state.forget_stopped(*id);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "batch commit failed; reloading the state from the store");
                for job in batch {
                    if let Job::Execute(_, tx) = job {
                        let _ = tx.send(Err(Error::Unavailable("the store failed to commit")));
                    }
                }
                self.reload();
            }
        }
    }

    /// Reads the state back from the store, and publishes what other replicas committed that this
    /// one's subscribers have not seen. Until that succeeds the state is stale: nothing is decided
    /// against it (every command is UNAVAILABLE) and each probe tries again.
    fn reload(&mut self) {
        self.stale = true;
        if let Err(e) = self.try_reload() {
            tracing::error!(error = %e, "the state cannot be read back from the store; retrying");
            self.core.health.report(false);
        }
    }

    fn try_reload(&mut self) -> Result<(), StoreError> {
        let loaded = self.store.load()?;
        let core = &mut self.core;
        core.state = loaded.state;
        core.agent_versions = loaded.agent_versions;
        core.next_seq = loaded.head + 1;
        let mut published = core.log.head();
        while published < loaded.head {
            // Only up to the loaded head: what others commit after it is folded in later.
            let mut entries = self.store.events_after(published, REPLAY_CHUNK)?;
            entries.retain(|e| e.sequence <= loaded.head);
            let Some(last) = entries.last().map(|e| e.sequence) else {
                break;
            };
            published = last;
            core.count_stopped(&entries);
            core.log.publish(entries);
        }
        self.stale = false;
        Ok(())
    }

    /// Folds in (and publishes) the events other replicas committed since the last look.
    fn fold_committed(&mut self) -> Result<(), StoreError> {
        loop {
            let entries = self
                .store
                .events_after(self.core.next_seq - 1, REPLAY_CHUNK)?;
            if entries.is_empty() {
                return Ok(());
            }
            self.core.fold_foreign(entries)?;
        }
    }

    /// One attempt at a batch, in one transaction.
    fn attempt(&mut self, batch: &[Job], now: Micros, out: &mut Outcome) -> Result<(), StoreError> {
        let mut tx = self
            .store
            .begin(&mut batch.iter().filter_map(|job| match job {
                Job::Execute(s, _) if !s.request_id.is_empty() => Some((
                    s.caller.tenant.clone(),
                    s.caller.sub.clone(),
                    s.command.name().to_owned(),
                    s.request_id.clone(),
                )),
                _ => None,
            }))?;
        let core = &mut self.core;
        if let Some(head) = tx.shared_head() {
            // Under the writers' lock: what other replicas committed comes first.
            while core.next_seq <= head {
                let entries = tx.events_after(core.next_seq - 1, REPLAY_CHUNK)?;
                if entries.is_empty() {
                    return Err(StoreError::Conflict(format!("the log (head {head})")));
                }
                core.fold_foreign(entries)?;
            }
        }
        core.apply(&mut tx, batch, now, out)?;
        if now - self.last_prune > PRUNE_EVERY_US {
            tx.prune_requests(now - REQUEST_RETENTION_US)?;
            self.last_prune = now;
        }
        tx.commit()
    }
}

impl Core {
    fn census<S: Store>(&mut self, store: &mut S) -> Census {
        let mut census = Census::default();
        for i in self.state.interactions.values() {
            if i.phase != domain::Phase::Stopped {
                census.0[Census::index(i.phase)] += 1;
            }
        }
        if self.stopped.is_none() {
            // Between batches everything in memory is live; the rest of the store is stopped.
            let live: u64 = census.0.iter().sum();
            match store.count_interactions() {
                Ok(all) => self.stopped = Some(all.saturating_sub(live)),
                Err(e) => tracing::warn!(error = %e, "stopped interactions cannot be counted"),
            }
        }
        census.0[Census::index(domain::Phase::Stopped)] = self.stopped.unwrap_or(0);
        census
    }

    fn count_stopped(&mut self, entries: &[Arc<LogEntry>]) {
        if let Some(stopped) = self.stopped.as_mut() {
            *stopped += entries
                .iter()
                .filter(|e| e.kind == "ProcessingStopped")
                .count() as u64;
        }
    }

    /// Folds one event into the state; says which rows it changed. An agent's row is its own state
    /// (login, media, Ready / Not Ready): what it holds is read from the interactions' rows, so an
    /// interaction changing hands rewrites no agent.
    fn fold(
        &mut self,
        id: Option<uuid::Uuid>,
        tenant: &str,
        sequence: u64,
        time: Micros,
        body: &ixn_proto::events::event::Body,
    ) -> Folded {
        let before = id
            .and_then(|id| self.state.interactions.get(&id))
            .map(|i| i.version);
        self.state.evolve(tenant, sequence, time, body);
        Folded {
            interaction: id.map(|id| (id, before)),
            agents: agents_named(tenant, body),
        }
    }

    /// Folds in events another replica committed, and publishes them here.
    fn fold_foreign(&mut self, entries: Vec<Arc<LogEntry>>) -> Result<(), StoreError> {
        for entry in &entries {
            if entry.sequence != self.next_seq {
                return Err(StoreError::Conflict(format!(
                    "the log (sequence {} where {} was next)",
                    entry.sequence, self.next_seq
                )));
            }
            let Some(body) = entry.event.body.as_ref() else {
                return Err(StoreError::Corrupt(format!("event {}", entry.sequence)));
            };
            let time = entry
                .event
                .time
                .as_ref()
                .map(ixn_proto::clock::micros)
                .unwrap_or_default();
            let folded = self.fold(
                interaction_of(body),
                &entry.tenant,
                entry.sequence,
                time,
                body,
            );
            for key in folded.agents {
                self.agent_versions.insert(key, entry.sequence);
            }
            if let Some((id, _)) = folded.interaction {
                self.state.forget_stopped(id);
            }
            self.next_seq += 1;
        }
        self.count_stopped(&entries);
        self.log.publish(entries);
        Ok(())
    }

    /// Decides each command of the batch and writes what it changed.
    fn apply<T: Tx>(
        &mut self,
        tx: &mut T,
        batch: &[Job],
        now: Micros,
        out: &mut Outcome,
    ) -> Result<(), StoreError> {
        let mut new_id: fn() -> uuid::Uuid = uuid::Uuid::now_v7;
        let system = Submission {
            caller: Caller {
                tenant: String::new(),
                role: Role::Admin,
                sub: "system".into(),
                agent_id: None,
            },
            request_id: String::new(),
            fingerprint: Vec::new(),
            command: Command::ExpireInvites,
            traceparent: String::new(),
        };
        for job in batch {
            let submission = match job {
                Job::Execute(s, _) => s.as_ref(),
                Job::Expire => &system,
                // Taken out of the batch before it opens.
                Job::Probe(_) | Job::Census(_) | Job::Agent(..) | Job::CatchUp => {
                    out.answers.push(None);
                    continue;
                }
            };
            let answer = self.decide(tx, submission, now, &mut new_id, out)?;
            out.answers.push(Some(answer));
        }
        for (id, expected) in out.touched.iter() {
            if let Some(i) = self.state.interactions.get(id) {
                tx.save_interaction(i, *expected)?;
            }
        }
        for (key, expected) in out.agents.iter() {
            if let Some(agent) = self.state.agents.get(key) {
                let version = self.agent_versions.get(key).copied().unwrap_or_default();
                tx.save_agent(&agent.row(&self.platform), *expected, version)?;
            }
        }
        for id in std::mem::take(&mut out.loaded) {
            if !out.touched.contains_key(&id) {
                self.state.forget_stopped(id);
            }
        }
        Ok(())
    }

    /// Decides one command: its answer, and its events appended and folded into the state.
    fn decide<T: Tx>(
        &mut self,
        tx: &mut T,
        submission: &Submission,
        now: Micros,
        new_id: &mut fn() -> uuid::Uuid,
        out: &mut Outcome,
    ) -> Result<Result<Answer, Error>, StoreError> {
        let method = submission.command.name();
        let caller = &submission.caller;
        if !submission.request_id.is_empty()
            && let Some(done) =
                tx.request(&caller.tenant, &caller.sub, method, &submission.request_id)?
        {
            return Ok(if done.fingerprint == submission.fingerprint {
                Answer::decode(&submission.command, &done.response)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
                    .map_err(Error::from)
            } else {
                Err(Failure::new(
                    Reason::RequestIdReused,
                    "this request_id was used for a different request",
                )
                .with_meta("request_id", &submission.request_id)
                .into())
            });
        }
        // A stopped interaction lives in the store alone; the domain needs it to answer
        // ALREADY_STOPPED (it is forgotten again after the batch, and not rewritten).
        if let Some(id) = submission.command.interaction_id()
            && !self.state.interactions.contains_key(&id)
            && let Some(stopped) = tx.interaction(id)?
        {
            self.state.insert(stopped);
            out.loaded.push(id);
        }
        let mut ctx = Ctx {
            now,
            platform: &self.platform,
            new_id,
        };
        let Decision {
            events,
            reply: plan,
        } = match domain::decide(&self.state, caller, &submission.command, &mut ctx) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.into())),
        };
        let mut last_seq = 0;
        for emitted in events {
            let body = emitted.body;
            let interaction_id = ixn_proto::event::interaction_id(&body).map(str::to_owned);
            let id = interaction_of(&body);
            // An event's tenant is its interaction's (the invite timer works across tenants).
            let tenant = id
                .and_then(|id| self.state.interactions.get(&id))
                .map(|i| i.tenant.clone())
                .unwrap_or_else(|| caller.tenant.clone());
            let sequence = self.next_seq;
            self.next_seq += 1;
            last_seq = sequence;
            let folded = self.fold(id, &tenant, sequence, now, &body);
            if let Some((id, before)) = folded.interaction {
                out.touched.entry(id).or_insert(before);
            }
            for key in folded.agents {
                let before = self.agent_versions.insert(key.clone(), sequence);
                out.agents.entry(key).or_insert(before.unwrap_or(0));
            }
            let submitter = folded
                .interaction
                .and_then(|(id, _)| self.state.interactions.get(&id))
                .map(|i| domain::party_key(&i.submitted_by));
            let entry = LogEntry {
                sequence,
                tenant: tenant.clone(),
                kind: ixn_proto::event::kind(&body),
                interaction_id,
                reporting: ixn_proto::event::is_reporting(&body),
                recipients: emitted.to.iter().map(domain::party_key).collect(),
                submitter,
                event: SharedEvent::new(Event {
                    sequence,
                    event_id: domain::text(uuid::Uuid::now_v7()),
                    time: Some(domain::timestamp(now)),
                    source: ixn_proto::event::SOURCE_INTERACTION_SERVER.into(),
                    tenant,
                    correlation_id: submission.request_id.clone(),
                    traceparent: submission.traceparent.clone(),
                    actor: Some(emitted.actor),
                    to: emitted.to,
                    relayed_from: None,
                    body: Some(body),
                }),
            };
            tx.append(&entry)?;
            out.entries.push(Arc::new(entry));
        }
        let answer = answer(
            &self.state,
            &self.platform,
            &submission.command,
            &plan,
            last_seq,
        );
        if !submission.request_id.is_empty() {
            tx.record_request(
                &caller.tenant,
                &caller.sub,
                method,
                &submission.request_id,
                &submission.fingerprint,
                &answer.encode(),
                now,
            )?;
        }
        Ok(Ok(answer))
    }
}

/// The interaction an event concerns.
fn interaction_of(body: &ixn_proto::events::event::Body) -> Option<uuid::Uuid> {
    ixn_proto::event::interaction_id(body).and_then(|i| i.parse().ok())
}

/// The answer to a command whose events are applied; `sequence` is its last event's.
fn answer(
    state: &State,
    platform: &Platform,
    command: &Command,
    plan: &Reply,
    sequence: u64,
) -> Answer {
    let interaction = |id: &Uuid| state.interactions.get(id).map(|i| i.to_proto());
    match (command, plan) {
        (Command::Submit { .. }, Reply::Interaction(id)) => Answer::Submit(pb::SubmitResponse {
            interaction: interaction(id),
            sequence,
        }),
        (Command::Pull { .. }, Reply::Pulled(id)) => Answer::Pull(pb::PullResponse {
            interaction: id.as_ref().and_then(interaction),
            sequence,
        }),
        (Command::Deliver { .. }, Reply::Invited { ticket_id, expires }) => {
            Answer::Deliver(pb::DeliverResponse {
                ticket_id: domain::text(ticket_id),
                expire_time: Some(domain::timestamp(*expires)),
                sequence,
            })
        }
        (Command::Accept { .. }, Reply::Interaction(id)) => Answer::Accept(pb::AcceptResponse {
            interaction: interaction(id),
            sequence,
        }),
        (Command::Reject { .. }, Reply::Ack(id)) => Answer::Reject(pb::RejectResponse {
            interaction_id: domain::text(id),
            sequence,
        }),
        (Command::StopProcessing { .. }, Reply::Ack(id)) => {
            Answer::StopProcessing(pb::StopProcessingResponse {
                interaction_id: domain::text(id),
                sequence,
            })
        }
        (Command::PlaceInQueue { .. }, Reply::Ack(id)) => {
            Answer::PlaceInQueue(pb::PlaceInQueueResponse {
                interaction_id: domain::text(id),
                sequence,
            })
        }
        (Command::ChangeProperties { .. }, Reply::Interaction(id)) => {
            Answer::ChangeProperties(pb::ChangePropertiesResponse {
                interaction: interaction(id),
                sequence,
            })
        }
        (_, Reply::Agent(key)) => {
            let mut agent = state
                .agents
                .get(key)
                .map(|a| a.to_proto(platform))
                .unwrap_or_default();
            agent.sequence = sequence;
            Answer::Agent(agent)
        }
        _ => Answer::Nothing,
    }
}

/// The agents whose rows an event changes: those it names.
fn agents_named(tenant: &str, body: &ixn_proto::events::event::Body) -> Vec<domain::AgentKey> {
    use ixn_proto::events::event::Body;
    let party = match body {
        Body::AgentLogin(b) => b.agent.as_ref(),
        Body::AgentLogout(b) => b.agent.as_ref(),
        Body::MediaAdded(b) => b.agent.as_ref(),
        Body::MediaRemoved(b) => b.agent.as_ref(),
        Body::ReadyForMedia(b) => b.agent.as_ref(),
        Body::NotReadyForMedia(b) => b.agent.as_ref(),
        Body::MediaStateReasonChanged(b) => b.agent.as_ref(),
        _ => None,
    };
    party
        .map(|p| domain::AgentKey::new(tenant, &p.agent_id))
        .into_iter()
        .collect()
}
