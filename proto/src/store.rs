//! What both services' stores share, whichever database holds them ([`crate::sqlite`] for one
//! process, [`crate::pg`] for several replicas): the error, the writer's transaction over the common
//! tables (the log and the outcomes of requests), and the log's history as subscribers read it.

use crate::clock::Micros;
use crate::log::LogEntry;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// Events read from the store in one short read at most (a long read would hold back SQLite's WAL
/// checkpoints, or PostgreSQL's vacuum).
pub const REPLAY_CHUNK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {0} is in use by another process")]
    Locked(PathBuf),
    #[error(
        "the database was written by a newer version (schema {found}, this build knows {known}); \
         run a build that knows it"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Pool(String),
    #[error("the schema cannot be migrated: {0}")]
    Migration(String),
    /// A compare-and-set found a row changed by someone else: nothing of the batch was applied.
    #[error("{0} changed concurrently")]
    Conflict(String),
    #[error("a stored row cannot be decoded: {0}")]
    Corrupt(String),
}

/// A recorded outcome of a request.
#[derive(Clone, Debug)]
pub struct StoredRequest {
    pub fingerprint: Vec<u8>,
    pub response: Vec<u8>,
}

/// The next batch for a writer thread: waits for one item, then takes whatever else is already
/// waiting, up to `max` (group commit). `None` once every sender is gone.
pub fn next_batch<T>(rx: &mut tokio::sync::mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.blocking_recv()?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The callback a shared store's listener calls on each of other replicas' commits: it queues one
/// catch-up `job` for the writer, however many notifications arrive before the writer takes it
/// (the writer clears `waiting` when it does), and says false once the writer is gone. When the
/// queue is full, the batches ahead fold the events in anyway.
pub fn catch_up_on_notify<J: Send + 'static>(
    jobs: &tokio::sync::mpsc::Sender<J>,
    waiting: Arc<std::sync::atomic::AtomicBool>,
    job: fn() -> J,
) -> Box<dyn Fn() -> bool + Send + 'static> {
    use std::sync::atomic::Ordering;
    let jobs = jobs.downgrade();
    Box::new(move || {
        let Some(jobs) = jobs.upgrade() else {
            return false;
        };
        if !waiting.swap(true, Ordering::AcqRel) && jobs.try_send(job()).is_err() {
            waiting.store(false, Ordering::Release);
        }
        true
    })
}

/// One open transaction of a service's writer over the common tables: everything in it commits
/// together or not at all.
pub trait Batch {
    /// On a store that several replicas share, the head of the log as this transaction sees it,
    /// under the lock that orders the writers (events up to it that the replica has not folded yet
    /// were written by another replica). `None` on a store one process owns.
    fn shared_head(&self) -> Option<u64>;

    /// Up to `limit` committed events after `after`, in sequence order.
    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError>;

    /// The recorded outcome of a request, if any (including one recorded earlier in this batch).
    fn request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StoreError>;

    #[allow(clippy::too_many_arguments)]
    fn record_request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
        fingerprint: &[u8],
        response: &[u8],
        now: Micros,
    ) -> Result<(), StoreError>;

    /// Forgets request outcomes recorded before `before`.
    fn prune_requests(&mut self, before: Micros) -> Result<(), StoreError>;

    /// Appends one event to the log.
    fn append(&mut self, entry: &LogEntry) -> Result<(), StoreError>;

    fn commit(self) -> Result<(), StoreError>;
}

/// What names a request's outcome: tenant, subject, method, request id.
pub type RequestKey = (String, String, String, String);

/// A boxed future, for the object-safe read traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a subscriber behind the in-memory ring reads the log from.
pub trait History: Send + Sync + std::fmt::Debug {
    /// Up to `limit` committed events after `after`, in sequence order.
    fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<LogEntry>>, StoreError>>;

    /// On a store that several replicas share, the head of the log as committed (other replicas'
    /// events up to it may not have reached this one's log yet). `None` where one process writes.
    fn committed_head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// Party keys may hold any character, spaces included: the column is a JSON array.
pub(crate) fn encode_recipients(keys: &[String]) -> String {
    serde_json::to_string(keys).expect("strings encode")
}

pub(crate) fn decode_recipients(column: &str) -> Result<Vec<String>, StoreError> {
    if !column.starts_with('[') {
        // A row written before the keys were JSON: space-separated.
        return Ok(column
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect());
    }
    serde_json::from_str(column).map_err(|e| StoreError::Corrupt(format!("recipients: {e}")))
}

/// Builds a log entry read back from either store's `events` table.
#[allow(clippy::too_many_arguments)]
pub(crate) fn entry_from_row(
    sequence: i64,
    tenant: String,
    kind: &str,
    interaction_id: Option<String>,
    reporting: bool,
    recipients: &str,
    submitter: Option<String>,
    body: bytes::Bytes,
) -> Result<Arc<LogEntry>, StoreError> {
    let event =
        crate::wire::SharedEvent::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Arc::new(LogEntry {
        sequence: sequence as u64,
        tenant,
        kind: crate::event::KINDS
            .iter()
            .find(|k| **k == kind)
            .copied()
            .unwrap_or("unknown"),
        interaction_id,
        reporting,
        recipients: decode_recipients(recipients)?,
        submitter,
        event,
    }))
}
