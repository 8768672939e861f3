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

use crate::domain::{self, Caller, Command, Ctx, Decision, Micros, Platform, Reply, State};
use crate::error::Error;
use crate::store::{Readers, Rows, Store, StoreError};
use ixn_proto::auth::Role;
use ixn_proto::clock::Clock;
use ixn_proto::error::{Failure, Reason};
use ixn_proto::events::Event;
use ixn_proto::hosting::StoreHealth;
use ixn_proto::interaction as pb;
use ixn_proto::log::{Log, LogEntry};
use prost::Message;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

/// The most commands one transaction carries.
pub const MAX_BATCH: usize = 1_024;
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
    pub readers: Readers,
    pub platform: Arc<Platform>,
    pub clock: Clock,
    /// Whether the last commit (or probe) reached the store.
    pub health: StoreHealth,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Engine {
    /// Loads the state from the store and starts the writer thread and the invite timer.
    pub fn start(
        store: Store,
        platform: Platform,
        clock: Clock,
    ) -> Result<Arc<Engine>, StoreError> {
        let (state, head) = store.load()?;
        let readers = store.readers();
        let log = Arc::new(Log::new(head, readers.clone()));
        let platform = Arc::new(platform);
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let (deadline_tx, deadline_rx) = watch::channel(state.next_deadline());
        let health = StoreHealth::default();
        let writer = Writer {
            health: health.clone(),
            stopped: None,
            store,
            state,
            next_seq: head + 1,
            log: log.clone(),
            platform: platform.clone(),
            clock: clock.clone(),
            deadline: deadline_tx,
            last_prune: 0,
        };
        let handle = std::thread::Builder::new()
            .name("ixn-writer".into())
            .spawn(move || writer.run(rx))?;
        tokio::spawn(invite_timer(jobs.downgrade(), deadline_rx, clock.clone()));
        Ok(Arc::new(Engine {
            jobs: std::sync::RwLock::new(Some(jobs)),
            log,
            readers,
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
        let (tx, rx) = oneshot::channel();
        let jobs = self.jobs.read().expect("engine jobs").clone();
        let Some(jobs) = jobs else { return };
        if jobs.send(Job::Probe(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// How many interactions are in each state; `None` while shutting down.
    pub async fn census(&self) -> Option<Census> {
        let (tx, rx) = oneshot::channel();
        let jobs = self.jobs.read().expect("engine jobs").clone()?;
        jobs.send(Job::Census(tx)).await.ok()?;
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
struct Writer {
    health: StoreHealth,
    /// How many interactions are stopped (they live in the store alone): counted in the store at
    /// the first census (only metrics ask), then kept up to date by each commit.
    stopped: Option<u64>,
    store: Store,
    state: State,
    next_seq: u64,
    log: Arc<Log>,
    platform: Arc<Platform>,
    clock: Clock,
    deadline: watch::Sender<Option<Micros>>,
    last_prune: Micros,
}

type Pending = (
    Option<oneshot::Sender<Result<Answer, Error>>>,
    Result<Answer, Error>,
);

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(batch) = ixn_proto::sqlite::next_batch(&mut rx, MAX_BATCH) {
            self.run_batch(batch);
        }
    }

    fn run_batch(&mut self, jobs: Vec<Job>) {
        let mut batch = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Probe(done) => {
                    self.health.report(self.store.probe().is_ok());
                    let _ = done.send(());
                }
                Job::Census(reply) => {
                    let _ = reply.send(self.census());
                }
                job => batch.push(job),
            }
        }
        if batch.is_empty() {
            return;
        }
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
        let now = self.clock.now();
        let first_seq = self.next_seq;
        let mut pending: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut entries = Vec::new();
        let mut touched = BTreeSet::new();
        let mut agents = BTreeSet::new();
        let result = self.apply_batch(
            batch,
            now,
            &mut pending,
            &mut entries,
            &mut touched,
            &mut agents,
        );
        self.health.report(result.is_ok());
        match result {
            Ok(()) => {
                ixn_proto::measure::commit(started.elapsed(), changes);
                if let Some(stopped) = self.stopped.as_mut() {
                    *stopped += entries
                        .iter()
                        .filter(|e| e.kind == "ProcessingStopped")
                        .count() as u64;
                }
                self.log.publish(entries);
                for (tx, answer) in pending {
                    if let Some(tx) = tx {
                        let _ = tx.send(answer);
                    }
                }
                for id in touched {
                    self.state.forget_stopped(id);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "batch commit failed; reloading the state from the store");
                for (tx, _) in pending {
                    if let Some(tx) = tx {
                        let _ = tx.send(Err(Error::Unavailable("the store failed to commit")));
                    }
                }
                match self.store.load() {
                    Ok((state, head)) => {
                        self.state = state;
                        self.next_seq = head + 1;
                    }
                    Err(e) => panic!("the store cannot be read back after a failed commit: {e}"),
                }
                debug_assert!(self.next_seq >= first_seq);
            }
        }
        self.deadline.send_if_modified(|d| {
            let next = self.state.next_deadline();
            let changed = *d != next;
            *d = next;
            changed || next.is_some_and(|n| n <= now)
        });
    }

    fn census(&mut self) -> Census {
        let mut census = Census::default();
        for i in self.state.interactions.values() {
            if i.phase != domain::Phase::Stopped {
                census.0[Census::index(i.phase)] += 1;
            }
        }
        if self.stopped.is_none() {
            // Between batches everything in memory is live; the rest of the store is stopped.
            let live: u64 = census.0.iter().sum();
            match self.store.count_interactions() {
                Ok(all) => self.stopped = Some(all.saturating_sub(live)),
                Err(e) => tracing::warn!(error = %e, "stopped interactions cannot be counted"),
            }
        }
        census.0[Census::index(domain::Phase::Stopped)] = self.stopped.unwrap_or(0);
        census
    }

    fn apply_batch(
        &mut self,
        batch: Vec<Job>,
        now: Micros,
        pending: &mut Vec<Pending>,
        entries: &mut Vec<Arc<LogEntry>>,
        touched: &mut BTreeSet<Uuid>,
        agents: &mut BTreeSet<domain::AgentKey>,
    ) -> Result<(), StoreError> {
        let tx = self.store.begin()?;
        let mut new_id = Uuid::now_v7;
        let mut loaded = Vec::new();
        for job in batch {
            let (submission, reply) = match job {
                Job::Execute(s, reply) => (*s, Some(reply)),
                Job::Expire => {
                    let system = Caller {
                        tenant: String::new(),
                        role: Role::Admin,
                        sub: "system".into(),
                        agent_id: None,
                    };
                    let s = Submission {
                        caller: system,
                        request_id: String::new(),
                        fingerprint: Vec::new(),
                        command: Command::ExpireInvites,
                        traceparent: String::new(),
                    };
                    (s, None)
                }
                // Taken out of the batch before it opens.
                Job::Probe(_) | Job::Census(_) => continue,
            };
            let method = submission.command.name();
            let caller = &submission.caller;
            if !submission.request_id.is_empty()
                && let Some(done) =
                    tx.request(&caller.tenant, &caller.sub, method, &submission.request_id)?
            {
                let answer = if done.fingerprint == submission.fingerprint {
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
                };
                pending.push((reply, answer));
                continue;
            }
            // A stopped interaction lives in the store alone; the domain needs it to answer
            // ALREADY_STOPPED (it is forgotten again after the batch, and not rewritten).
            if let Some(id) = submission.command.interaction_id()
                && !self.state.interactions.contains_key(&id)
                && let Some(stopped) = tx.interaction(id)?
            {
                self.state.insert(stopped);
                loaded.push(id);
            }
            let mut ctx = Ctx {
                now,
                platform: &self.platform,
                new_id: &mut new_id,
            };
            let decision = match domain::decide(&self.state, caller, &submission.command, &mut ctx)
            {
                Ok(d) => d,
                Err(e) => {
                    pending.push((reply, Err(e.into())));
                    continue;
                }
            };
            let Decision {
                events,
                reply: plan,
            } = decision;
            let mut last_seq = 0;
            for emitted in events {
                let body = emitted.body;
                let interaction_id = ixn_proto::event::interaction_id(&body).map(str::to_owned);
                let parsed = interaction_id
                    .as_deref()
                    .and_then(|i| i.parse::<Uuid>().ok());
                // An event's tenant is its interaction's (the invite timer works across tenants).
                let tenant = parsed
                    .and_then(|id| self.state.interactions.get(&id))
                    .map(|i| i.tenant.clone())
                    .unwrap_or_else(|| caller.tenant.clone());
                let sequence = self.next_seq;
                self.next_seq += 1;
                last_seq = sequence;
                // The agents holding the interaction before and after: their loads change.
                let mut holders = holders_of(&self.state, parsed);
                self.state.evolve(&tenant, sequence, now, &body);
                holders.extend(holders_of(&self.state, parsed));
                agents.extend(holders.iter().map(|a| domain::AgentKey::new(&tenant, a)));
                if let Some(id) = parsed {
                    touched.insert(id);
                }
                agents.extend(agents_named(&tenant, &body));
                let submitter = parsed
                    .and_then(|id| self.state.interactions.get(&id))
                    .map(|i| domain::party_key(&i.submitted_by));
                let entry = LogEntry {
                    sequence,
                    tenant: tenant.clone(),
                    kind: ixn_proto::event::kind(&body),
                    interaction_id,
                    reporting: ixn_proto::event::is_reporting(&body),
                    recipients: emitted.to.iter().map(domain::party_key).collect(),
                    submitter,
                    event: Event {
                        sequence,
                        event_id: Uuid::now_v7().to_string(),
                        time: Some(domain::timestamp(now)),
                        source: ixn_proto::event::SOURCE_INTERACTION_SERVER.into(),
                        tenant,
                        correlation_id: submission.request_id.clone(),
                        traceparent: submission.traceparent.clone(),
                        actor: Some(emitted.actor),
                        to: emitted.to,
                        relayed_from: None,
                        body: Some(body),
                    },
                };
                tx.append(&entry)?;
                entries.push(Arc::new(entry));
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
            pending.push((reply, Ok(answer)));
        }
        for id in touched.iter() {
            if let Some(i) = self.state.interactions.get(id) {
                tx.save_interaction(i)?;
            }
        }
        for key in agents.iter() {
            if let Some(agent) = self.state.agents.get(key) {
                tx.save_agent(&agent.to_proto(&self.platform))?;
            }
        }
        for id in loaded {
            if !touched.contains(&id) {
                self.state.forget_stopped(id);
            }
        }
        if now - self.last_prune > PRUNE_EVERY_US {
            tx.prune_requests(now - REQUEST_RETENTION_US)?;
            self.last_prune = now;
        }
        tx.commit()
    }
}

/// The agents holding an interaction.
fn holders_of(state: &State, interaction: Option<Uuid>) -> Vec<String> {
    interaction
        .and_then(|id| state.interactions.get(&id))
        .map(|i| i.holders().map(str::to_owned).collect())
        .unwrap_or_default()
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
                ticket_id: ticket_id.to_string(),
                expire_time: Some(domain::timestamp(*expires)),
                sequence,
            })
        }
        (Command::Accept { .. }, Reply::Interaction(id)) => Answer::Accept(pb::AcceptResponse {
            interaction: interaction(id),
            sequence,
        }),
        (Command::Reject { .. }, Reply::Ack(id)) => Answer::Reject(pb::RejectResponse {
            interaction_id: id.to_string(),
            sequence,
        }),
        (Command::StopProcessing { .. }, Reply::Ack(id)) => {
            Answer::StopProcessing(pb::StopProcessingResponse {
                interaction_id: id.to_string(),
                sequence,
            })
        }
        (Command::PlaceInQueue { .. }, Reply::Ack(id)) => {
            Answer::PlaceInQueue(pb::PlaceInQueueResponse {
                interaction_id: id.to_string(),
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

/// The agents whose rows an event changes: those it names, and the holders of its interaction.
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
