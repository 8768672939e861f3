//! session-service's store: sessions, the mirror of what agents hold, and the relay's cursor in
//! interaction-server's log, beside the shared log and request outcomes. One trait, two
//! implementations: SQLite in a data directory (one process), and PostgreSQL that several replicas
//! share.

mod postgres;
mod sqlite;

pub use postgres::Postgres;
pub use sqlite::Sqlite;

use crate::domain::{AgentKey, Mirror, MirrorChange};
use ixn_proto::log::LogEntry;
use ixn_proto::pg::{Elector, Pool};
use ixn_proto::session::{Session, SessionState};
use ixn_proto::sqlite::Readers;
use ixn_proto::store::{Batch, BoxFuture, History, StoreError, StoredRequest};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the service keeps in memory, read back at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sessions: Vec<Session>,
    /// What agents hold (on a shared store it is read where needed, and left empty here).
    pub mirror: Mirror,
    /// The last interaction-server sequence relayed.
    pub cursor: u64,
    pub head: u64,
}

/// A store the writer thread drives.
pub trait Store: Send + 'static {
    type Tx<'a>: Batch + Rows
    where
        Self: 'a;

    fn begin(&mut self) -> Result<Self::Tx<'_>, StoreError>;

    /// Every live session, the mirror, the relay cursor and the head of the log.
    fn load(&mut self) -> Result<Loaded, StoreError>;

    /// Whether the store takes a write.
    fn probe(&mut self) -> Result<(), StoreError>;

    fn reads(&self) -> Reads;

    /// Outside a batch: up to a chunk of committed events after `after`, and the sessions they
    /// touch as they are now (what other replicas committed).
    fn committed(&mut self, after: u64) -> Result<Folded, StoreError>;

    /// On a shared store: a task that calls `changed` whenever another replica may have committed,
    /// until `changed` returns false.
    fn listen(
        &self,
        changed: Box<dyn Fn() -> bool + Send + 'static>,
    ) -> Option<BoxFuture<'static, ()>>;

    /// On a shared store: who may relay (one replica at a time).
    fn elector(&self) -> Option<Elector>;
}

/// Events other replicas committed, and the sessions they touch.
#[derive(Debug, Default)]
pub struct Folded {
    pub entries: Vec<Arc<LogEntry>>,
    pub sessions: Vec<Session>,
}

/// session-service's rows, written in the writer's batch.
pub trait Rows {
    /// Writes the session; `was` is the version the store must still have (`None`: a new
    /// session). On a shared store a row changed meanwhile, or a second live session of the agent,
    /// is a [`StoreError::Conflict`].
    fn save_session(&mut self, s: &Session, was: Option<u64>) -> Result<(), StoreError>;
    fn save_mirror(&mut self, change: &MirrorChange) -> Result<(), StoreError>;
    /// Moves the relay's cursor from `from` to `to` (on a shared store, only if it is at `from`).
    fn save_cursor(&mut self, from: u64, to: u64) -> Result<(), StoreError>;
    /// The sessions of these ids, as stored.
    fn sessions(&mut self, ids: &[String]) -> Result<Vec<Session>, StoreError>;
}

/// The ids of the sessions that events are about.
pub fn touched(entries: &[Arc<LogEntry>]) -> Vec<String> {
    let mut ids: Vec<String> = entries
        .iter()
        .filter_map(|e| crate::domain::session_of(&e.event))
        .map(str::to_owned)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn decode(body: &[u8]) -> Result<Session, StoreError> {
    Session::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Whether a session is over.
pub fn is_disposed(s: &Session) -> bool {
    s.state() == SessionState::Disposed
}

/// The handlers' reads: committed rows only.
#[derive(Clone, Debug)]
pub enum Reads {
    Sqlite(Readers),
    /// The readers' pool, and the pool of the agents' locks.
    Postgres(Pool, Pool),
}

impl Reads {
    /// Whether other replicas write to the same store (memory is then not the whole truth).
    pub fn shared(&self) -> bool {
        matches!(self, Reads::Postgres(..))
    }

    /// A session in any state, disposed ones included.
    pub async fn session(&self, session_id: &str) -> Result<Option<Session>, StoreError> {
        match self {
            Reads::Sqlite(readers) => {
                let id = session_id.to_owned();
                readers.run(move |r| sqlite::session(r, &id)).await
            }
            Reads::Postgres(pool, _) => postgres::session(pool, session_id).await,
        }
    }

    /// The recorded outcome of a request, if committed.
    pub async fn request(
        &self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StoreError> {
        match self {
            Reads::Sqlite(readers) => {
                let key = [tenant, subject, method, request_id].map(str::to_owned);
                readers
                    .run(move |r| r.request(&key[0], &key[1], &key[2], &key[3]))
                    .await
            }
            Reads::Postgres(pool, _) => {
                postgres::request(pool, tenant, subject, method, request_id).await
            }
        }
    }

    /// On a shared store: what the agent holds (interaction → media).
    pub async fn held_by(&self, key: &AgentKey) -> Result<BTreeMap<String, String>, StoreError> {
        match self {
            Reads::Sqlite(_) => Ok(BTreeMap::new()),
            Reads::Postgres(pool, _) => postgres::held_by(pool, key).await,
        }
    }

    /// On a shared store: records that replica `number` has a `Connect` stream of the session open
    /// (or no longer has), since `at`.
    pub async fn connected(
        &self,
        session_id: &str,
        number: i32,
        open: bool,
        at: i64,
    ) -> Result<(), StoreError> {
        match self {
            Reads::Sqlite(_) => Ok(()),
            Reads::Postgres(pool, _) => {
                postgres::connected(pool, session_id, number, open, at).await
            }
        }
    }

    /// On a shared store: when a desktop was last connected to the session through a replica
    /// other than `number` (`now` if it still is, through one that lives), if ever.
    pub async fn last_connected(
        &self,
        session_id: &str,
        number: i32,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        match self {
            Reads::Sqlite(_) => Ok(None),
            Reads::Postgres(pool, _) => {
                postgres::last_connected(pool, session_id, number, now).await
            }
        }
    }

    /// On a shared store: takes the streams of replicas that are gone as ended (`now`), and
    /// forgets streams that ended more than `keep` ago and those of ended sessions.
    pub async fn forget_absent(&self, now: i64, keep: i64) -> Result<(), StoreError> {
        match self {
            Reads::Sqlite(_) => Ok(()),
            Reads::Postgres(pool, _) => postgres::forget_absent(pool, now, keep).await,
        }
    }

    /// On a shared store: the relay's cursor as committed.
    pub async fn cursor(&self) -> Result<u64, StoreError> {
        match self {
            Reads::Sqlite(_) => Ok(0),
            Reads::Postgres(pool, _) => postgres::cursor(pool).await,
        }
    }

    /// Where subscribers behind the in-memory ring read the log.
    pub fn history(&self) -> Arc<dyn History> {
        match self {
            Reads::Sqlite(readers) => Arc::new(readers.clone()),
            Reads::Postgres(pool, _) => Arc::new(pool.clone()),
        }
    }
}

/// On a shared store, the lock that orders the operations on one agent across replicas (held until
/// dropped), and the agent's live session as committed once it is held.
#[derive(Debug)]
pub struct AgentLock {
    _lock: ixn_proto::pg::Advisory,
    pub live: Option<Session>,
}

impl Reads {
    /// Takes the agent's lock across replicas (`None` on a store one process owns).
    pub async fn lock_agent(&self, key: &AgentKey) -> Result<Option<AgentLock>, StoreError> {
        match self {
            Reads::Sqlite(_) => Ok(None),
            Reads::Postgres(_, locks) => postgres::lock_agent(locks, key).await.map(Some),
        }
    }
}
