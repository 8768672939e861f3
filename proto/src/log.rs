//! The committed events as subscribers read them: a ring of the most recent ones in memory, shared
//! by every live subscriber (each event is built once), and the store for a subscriber that is behind
//! the ring. The head sequence is a watch, so a caught-up subscriber waits without polling. Each
//! event is encoded once, when it is committed: the store keeps those bytes and every stream sends
//! them (see [`crate::wire`]).
//!
//! [`follow`] is the loop that feeds one stream, for `Subscribe` and session-service's `Connect`.

use crate::auth::Role;
use crate::clock::{Clock, Micros};
use crate::error::{Failure, Reason};
use crate::events::EventFilter;
use crate::store::{History, REPLAY_CHUNK, StoreError};
use crate::wire::{EncodedEvent, SharedEvent};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use tracing::Instrument;

/// One committed event and what deciding who may see it takes, without decoding its body.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub sequence: u64,
    pub tenant: String,
    pub kind: &'static str,
    pub interaction_id: Option<String>,
    pub reporting: bool,
    /// Party keys (`a:<agent>`, `r:<router>`…) of the parties it is addressed to.
    pub recipients: Vec<String>,
    /// Party key of the submitter of the interaction it concerns.
    pub submitter: Option<String>,
    pub event: SharedEvent,
}

/// At most how many recent events stay in memory for live subscribers (at least this less
/// [`EVICTED_TOGETHER`] once the ring has filled).
pub const RING_CAPACITY: usize = 16_384;

/// How many of the oldest events leave a full ring at once: the thread that frees them is woken
/// once for that many, not at every commit.
const EVICTED_TOGETHER: usize = 1_024;
const _: () = assert!(EVICTED_TOGETHER <= RING_CAPACITY);

/// Frees entries that left the ring on a thread of its own. An entry is several allocations (its
/// strings and its encoding; the decoded event, if a reader asked for it) that have long left the
/// cache, and whoever publishes (a service's single writer) has better things to do than free
/// them. Should that thread fall behind, the publisher frees them itself.
fn discard(entries: Vec<Arc<LogEntry>>) {
    static BIN: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Vec<Arc<LogEntry>>>>> =
        std::sync::OnceLock::new();
    if entries.is_empty() {
        return;
    }
    let bin = BIN.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Arc<LogEntry>>>(64);
        std::thread::Builder::new()
            .name("log-discard".into())
            .spawn(move || rx.iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    if let Some(bin) = bin {
        // Full (or gone): dropped here instead.
        let _ = bin.try_send(entries);
    }
}

#[derive(Debug)]
pub struct Log {
    ring: RwLock<VecDeque<Arc<LogEntry>>>,
    head: watch::Sender<u64>,
    history: Arc<dyn History>,
    /// Where each open stream is, for the lag metric.
    followers: Mutex<Vec<Weak<AtomicU64>>>,
}

/// An open stream's place in the log, while it is open (and counted as a subscriber).
#[derive(Debug)]
pub struct Follower(Arc<AtomicU64>);

impl Follower {
    pub fn at(&self, sequence: u64) {
        self.0.store(sequence, Ordering::Relaxed);
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        crate::measure::subscribers(-1.0);
    }
}

impl Log {
    pub fn new(head: u64, history: Arc<dyn History>) -> Log {
        Log {
            ring: RwLock::new(VecDeque::with_capacity(RING_CAPACITY)),
            head: watch::Sender::new(head),
            history,
            followers: Mutex::new(Vec::new()),
        }
    }

    /// The sequence of the last committed event.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The head a reader may ask to follow from: this log's, or on a shared store the committed
    /// one when other replicas' events have yet to reach this log (they are on their way).
    pub async fn known_head(&self) -> Result<u64, StoreError> {
        let head = self.head();
        Ok(match self.history.committed_head().await? {
            Some(committed) => committed.max(head),
            None => head,
        })
    }

    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Makes committed events visible, in sequence order. Entries already published are skipped;
    /// should the rest not follow the head, the ring starts again after the gap (readers behind it
    /// read the store), so it never holds anything but a contiguous run.
    pub fn publish(&self, entries: Vec<Arc<LogEntry>>) {
        let head = self.head();
        let mut entries = entries.into_iter().filter(|e| e.sequence > head).peekable();
        let Some(first) = entries.peek().map(|e| e.sequence) else {
            return;
        };
        let mut last = head;
        let mut evicted = Vec::new();
        {
            let mut ring = self.ring.write().expect("log ring");
            if first != head + 1 {
                tracing::error!(
                    head,
                    first,
                    "events published after a gap; the ring restarts"
                );
                ring.clear();
            }
            for entry in entries {
                if entry.sequence != last + 1 && last != head {
                    tracing::error!(
                        after = last,
                        next = entry.sequence,
                        "a gap in a published run"
                    );
                    ring.clear();
                }
                last = entry.sequence;
                if ring.len() == RING_CAPACITY {
                    evicted.extend(ring.drain(..EVICTED_TOGETHER));
                }
                ring.push_back(entry);
            }
        }
        crate::measure::events_appended(last - head);
        self.head.send_replace(last);
        discard(evicted);
    }

    /// Registers an open stream that has read up to `after`.
    pub fn follower(&self, after: u64) -> Follower {
        let place = Arc::new(AtomicU64::new(after));
        let mut followers = self.followers.lock().expect("log followers");
        followers.retain(|f| f.strong_count() > 0);
        followers.push(Arc::downgrade(&place));
        crate::measure::subscribers(1.0);
        Follower(place)
    }

    /// How many events the furthest-behind open stream has still to read.
    pub fn max_lag(&self) -> u64 {
        let head = self.head();
        let mut followers = self.followers.lock().expect("log followers");
        followers.retain(|f| f.strong_count() > 0);
        followers
            .iter()
            .filter_map(Weak::upgrade)
            .map(|f| head.saturating_sub(f.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0)
    }

    /// Forgets the ring (after a failed commit the engine reloads; the store is the truth).
    pub fn reset(&self, head: u64) {
        self.ring.write().expect("log ring").clear();
        self.head.send_replace(head);
    }

    /// Up to `max` events after `after`, from memory when the ring still has them.
    pub async fn read_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        if let Some(entries) = self.ring_after(after, max) {
            return Ok(entries);
        }
        self.history.events_after(after, max).await
    }

    fn ring_after(&self, after: u64, max: usize) -> Option<Vec<Arc<LogEntry>>> {
        let ring = self.ring.read().expect("log ring");
        let first = ring.front()?.sequence;
        if after + 1 < first {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        Some(ring.iter().skip(skip).take(max).cloned().collect())
    }
}

/// Who is reading, as far as what they may see goes.
#[derive(Clone, Debug)]
pub struct Viewer {
    /// `None`: every tenant (role `service` with the `*` tenant).
    pub tenant: Option<String>,
    pub role: Role,
    /// The viewer's party key: `a:<agent>`, `r:<router>`, `m:<server>`.
    pub key: String,
}

impl Viewer {
    /// The contract's Subscribe column of the authorization table.
    pub fn may_see(&self, e: &LogEntry) -> bool {
        if self.tenant.as_ref().is_some_and(|t| *t != e.tenant) {
            return false;
        }
        match self.role {
            Role::Service | Role::Admin => true,
            Role::Reporter => e.reporting,
            Role::Router => e.reporting || e.recipients.contains(&self.key),
            Role::Agent => e.recipients.contains(&self.key),
            Role::MediaServer => e.reporting && e.submitter.as_ref() == Some(&self.key),
        }
    }
}

/// Whether an entry passes the subscriber's own filter.
pub fn passes(filter: &EventFilter, e: &LogEntry) -> bool {
    (filter.kinds.is_empty() || filter.kinds.iter().any(|k| k == e.kind))
        && (filter.interaction_ids.is_empty()
            || e.interaction_id
                .as_ref()
                .is_some_and(|id| filter.interaction_ids.contains(id)))
}

/// What one stream is fed with, and when it ends.
pub struct Feed<V, E> {
    pub log: Arc<Log>,
    /// Whether the stream's caller may see an entry (its role, tenant, filter…).
    pub visible: V,
    /// Whether the stream ends, with OK, once this entry is delivered (a disposed session).
    pub ends_after: E,
    /// The last sequence the caller has; the stream starts after it.
    pub after: u64,
    pub clock: Clock,
    /// When the caller's token expires (microseconds): the stream then ends with TOKEN_EXPIRED.
    pub expires: Micros,
    /// Flips to true when the server drains: the stream ends with UNAVAILABLE.
    pub draining: watch::Receiver<bool>,
}

impl<V, E> std::fmt::Debug for Feed<V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

fn expired(after: u64) -> Status {
    Failure::new(
        Reason::TokenExpired,
        "the token has expired; resume with a fresh one",
    )
    .with_meta("after_sequence", after)
    .into_status()
}

/// Events buffered per stream, beyond what the transport holds.
pub const STREAM_BUFFER: usize = 256;

/// How long a stream's buffer may stay full before the stream is cut with `SUBSCRIBER_TOO_SLOW`.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(10);

/// Opens a stream's two ends: the feeder's [`Inlet`] and the transport's [`Outlet`].
///
/// A reader that stops reading fills the transport's window and then this buffer; once the buffer
/// has stayed full for `patience` on `clock`, the stream is cut. What the server holds for a stalled
/// reader is therefore bounded by the buffer, whatever is committed meanwhile: the rest stays in the
/// log, and the reader resumes from the last sequence it received.
pub fn stream(clock: Clock, patience: Duration) -> (Inlet, Outlet) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let (end_tx, end_rx) = oneshot::channel();
    (
        Inlet {
            tx,
            end: Some(end_tx),
            clock,
            patience,
            sent: None,
            draining: None,
            expires: Micros::MAX,
        },
        Outlet {
            rx,
            end: Some(end_rx),
        },
    )
}

/// The feeding end of a stream.
#[derive(Debug)]
pub struct Inlet {
    tx: mpsc::Sender<EncodedEvent>,
    /// How the stream ends once what is buffered is read: with a status, or OK (`None`).
    end: Option<oneshot::Sender<Option<Status>>>,
    clock: Clock,
    patience: Duration,
    /// The sequence of the last event put in the buffer.
    sent: Option<u64>,
    /// While waiting for room, a drain or the token's expiry ends the stream as they always do.
    draining: Option<watch::Receiver<bool>>,
    expires: Micros,
}

/// Why an event could not be sent: the stream is over.
#[derive(Debug)]
pub struct Gone;

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down; resume from the last sequence")
}

impl Inlet {
    /// Buffers one event, waiting for room for at most the patience. A reader that is gone, or
    /// that let the buffer stay full that long (the stream is then cut), is `Gone`; so is one whose
    /// wait a drain or its token's expiry ended.
    pub async fn send(&mut self, sequence: u64, event: EncodedEvent) -> Result<(), Gone> {
        let event = match self.tx.try_send(event) {
            Ok(()) => {
                self.sent = Some(sequence);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Gone),
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        let deadline = self.clock.now() + self.patience.as_micros() as Micros;
        let draining = async {
            match self.draining.as_mut() {
                Some(d) => {
                    let _ = d.wait_for(|d| *d).await;
                }
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            sent = self.tx.send(event) => {
                sent.map_err(|_| Gone)?;
                self.sent = Some(sequence);
                return Ok(());
            }
            () = self.clock.sleep_until(deadline) => None,
            () = draining => Some(shutting_down()),
            () = self.clock.sleep_until(self.expires) => Some(expired(sequence - 1)),
        };
        match ended {
            Some(status) => self.end(status),
            None => self.cut(),
        }
        Err(Gone)
    }

    /// Ends the stream with `status`, after what is buffered; never waits for the reader.
    pub fn end(&mut self, status: Status) {
        if let Some(end) = self.end.take() {
            let _ = end.send(Some(status));
        }
    }

    /// Ends the stream with OK, after what is buffered (a disposed session's `Connect`). A feeder
    /// that stops without ending its stream so ends it with UNAVAILABLE: a client resumes.
    pub fn finish(&mut self) {
        if let Some(end) = self.end.take() {
            let _ = end.send(None);
        }
    }

    /// Cuts the stream of a reader that stopped reading. It resumes from the last sequence it
    /// received, which is the one given here once it has read what is buffered.
    fn cut(&mut self) {
        crate::measure::subscriber_cut();
        tracing::info!(after = ?self.sent, "a reader stopped reading: its stream is cut");
        let mut failure = Failure::new(
            Reason::SubscriberTooSlow,
            "the stream's buffer stayed full; resume from the last sequence received",
        );
        if let Some(sent) = self.sent {
            failure = failure.with_meta("after_sequence", sent);
        }
        self.end(failure.into_status());
    }

    /// Completes when the reader is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The transport's end of a stream: the buffered events, then the status the stream ended with.
#[derive(Debug)]
pub struct Outlet {
    rx: mpsc::Receiver<EncodedEvent>,
    end: Option<oneshot::Receiver<Option<Status>>>,
}

impl futures::Stream for Outlet {
    type Item = Result<EncodedEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(event) = std::task::ready!(self.rx.poll_recv(cx)) {
            return Poll::Ready(Some(Ok(event)));
        }
        // The feeder is gone, and with it the sender of this: it is ready.
        let ended = match self.end.as_mut() {
            Some(end) => match std::task::ready!(Pin::new(end).poll(cx)) {
                Ok(status) => status,
                Err(_) => Some(Status::unavailable(
                    "the stream stopped; resume from the last sequence",
                )),
            },
            None => None,
        };
        self.end = None;
        Poll::Ready(ended.map(Err))
    }
}

/// Feeds one stream until its reader goes away, it ends, its token expires, the server drains or the
/// reader stops reading. Each entry is delivered at most once and in sequence order; a reader that
/// falls behind holds back only this task (what it has not read stays in the log).
pub async fn follow<V, E>(feed: Feed<V, E>, mut tx: Inlet)
where
    V: Fn(&LogEntry) -> bool,
    E: Fn(&LogEntry) -> bool,
{
    let Feed {
        log,
        visible,
        ends_after,
        mut after,
        clock,
        expires,
        mut draining,
    } = feed;
    tx.draining = Some(draining.clone());
    tx.expires = expires;
    let mut head = log.watch_head();
    let place = log.follower(after);
    loop {
        if *draining.borrow() {
            tx.end(shutting_down());
            return;
        }
        let known = *head.borrow_and_update();
        if after >= known {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = draining.changed() => {}
                _ = tx.closed() => return,
                _ = clock.sleep_until(expires) => {
                    tx.end(expired(after));
                    return;
                }
            }
            continue;
        }
        let entries = match log.read_after(after, REPLAY_CHUNK).await {
            Ok(entries) => entries,
            Err(e) => {
                tx.end(Status::unavailable(e.to_string()));
                return;
            }
        };
        if entries.is_empty() {
            // The head is published after the commit, so this is not expected; never spin on it.
            tokio::task::yield_now().await;
            continue;
        }
        let delivery = crate::trace::linked_span(
            "stream delivery",
            "producer",
            entries.iter().map(|e| e.event.traceparent()),
        );
        let delivered = async {
            for entry in entries {
                if clock.now() >= expires || *draining.borrow() {
                    break;
                }
                after = entry.sequence;
                if visible(&entry) {
                    if tx
                        .send(entry.sequence, entry.event.encoded())
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    if ends_after(&entry) {
                        tx.finish();
                        return false;
                    }
                }
            }
            true
        }
        .instrument(delivery)
        .await;
        if !delivered {
            return;
        }
        place.at(after);
        if clock.now() >= expires {
            tx.end(expired(after));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::events::Event;
    use crate::store::BoxFuture;

    /// Every event stays in the ring: nothing is read from a store.
    #[derive(Debug)]
    struct InRingOnly;

    impl History for InRingOnly {
        fn events_after(
            &self,
            _after: u64,
            _limit: usize,
        ) -> BoxFuture<'_, Result<Vec<Arc<LogEntry>>, StoreError>> {
            Box::pin(std::future::ready(Ok(Vec::new())))
        }
    }

    /// Follows `log` from the start until the first entry is delivered.
    async fn first_sent(log: &Arc<Log>, clock: &Clock) -> EncodedEvent {
        use futures::StreamExt;
        let (tx, mut rx) = stream(clock.clone(), DEFAULT_PATIENCE);
        let feed = Feed {
            log: log.clone(),
            visible: |_: &LogEntry| true,
            ends_after: |_: &LogEntry| true,
            after: 0,
            clock: clock.clone(),
            expires: Micros::MAX,
            draining: watch::channel(false).1,
        };
        tokio::spawn(follow(feed, tx));
        let sent = rx.next().await.expect("one event").expect("sent");
        assert!(
            rx.next().await.is_none(),
            "the stream ends with OK after it"
        );
        sent
    }

    fn entry_of(event: Event) -> Arc<LogEntry> {
        Arc::new(LogEntry {
            sequence: event.sequence,
            tenant: event.tenant.clone(),
            kind: "interaction_submitted",
            interaction_id: None,
            reporting: false,
            recipients: Vec::new(),
            submitter: None,
            event: SharedEvent::new(event),
        })
    }

    fn entry(sequence: u64) -> Arc<LogEntry> {
        entry_of(Event {
            sequence,
            ..Event::default()
        })
    }

    #[test]
    fn a_full_ring_lets_its_oldest_events_go_together() {
        let log = Log::new(0, Arc::new(InRingOnly));
        let full = RING_CAPACITY as u64;
        log.publish((1..=full).map(entry).collect());
        assert_eq!(log.ring_after(0, 1).expect("in the ring")[0].sequence, 1);
        log.publish(vec![entry(full + 1)]);
        let oldest = EVICTED_TOGETHER as u64 + 1;
        assert!(
            log.ring_after(oldest - 2, 1).is_none(),
            "read from the store"
        );
        let kept = log.ring_after(oldest - 1, usize::MAX).expect("in the ring");
        assert_eq!(kept.first().map(|e| e.sequence), Some(oldest));
        assert_eq!(kept.last().map(|e| e.sequence), Some(full + 1));
        assert_eq!(log.head(), full + 1);
    }

    #[tokio::test]
    async fn every_stream_sends_the_bytes_encoded_at_commit() {
        let clock = Clock::Manual(ManualClock::starting_now());
        let log = Arc::new(Log::new(0, Arc::new(InRingOnly)));
        let event = Event {
            sequence: 1,
            event_id: "0190b8f0-0000-7000-8000-000000000001".into(),
            tenant: "t1".into(),
            correlation_id: "c".into(),
            ..Event::default()
        };
        let committed = entry_of(event.clone());
        let at = committed.event.bytes().as_ptr();
        log.publish(vec![committed]);
        for _ in 0..2 {
            let sent = first_sent(&log, &clock).await;
            assert_eq!(
                sent.0.as_ptr(),
                at,
                "the stream sends the committed bytes, not a copy"
            );
            assert_eq!(sent.decode().expect("an Event"), event);
        }
    }
}
