//! The durable copy: the event log, the current row of every interaction and agent, and the outcomes
//! of successful requests (idempotency). One trait, [`Store`], and two implementations: SQLite in a
//! data directory one process owns ([`Sqlite`], the embedded default), and PostgreSQL shared by
//! several replicas ([`Postgres`]). The log, the outcomes and each database's plumbing are the shared
//! ones of `ixn_proto::sqlite` and `ixn_proto::pg`; this module adds interaction-server's own tables.

mod postgres;
mod sqlite;

use crate::domain::{AgentKey, Interaction, Phase, State};
use ixn_proto::interaction as pb;
use ixn_proto::log::LogEntry;
use ixn_proto::store::{Batch, BoxFuture, History};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

pub use ixn_proto::store::StoreError;
pub use postgres::Postgres;
pub use sqlite::Sqlite;

/// What the writer starts from.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every agent and every live interaction.
    pub state: State,
    /// The sequence of the last event.
    pub head: u64,
    /// Each agent row's version, on a store whose writes compare-and-set it.
    pub agent_versions: HashMap<AgentKey, u64>,
}

/// The writer's side of the store. Owned by the engine's writer thread.
pub trait Store: Send + 'static {
    type Tx<'a>: Tx
    where
        Self: 'a;

    /// The state to decide against, and the head of the log.
    fn load(&mut self) -> Result<Loaded, StoreError>;

    /// Starts a batch's transaction (on a shared store, under the writers' lock).
    fn begin(&mut self) -> Result<Self::Tx<'_>, StoreError>;

    /// Whether the store takes a write.
    fn probe(&mut self) -> Result<(), StoreError>;

    /// How many interactions there are, stopped ones included.
    fn count_interactions(&mut self) -> Result<u64, StoreError>;

    /// Up to `limit` committed events after `after` (another replica's, on a shared store).
    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError>;

    /// The read side.
    fn reads(&self) -> Reads;

    /// On a shared store: a task that calls `changed` whenever another replica may have committed,
    /// until `changed` returns false.
    fn listen(
        &self,
        changed: Box<dyn Fn() -> bool + Send + 'static>,
    ) -> Option<BoxFuture<'static, ()>>;
}

/// interaction-server's rows, written in the writer's batch.
pub trait Tx: Batch {
    /// A stopped interaction the state no longer holds.
    fn interaction(&mut self, id: Uuid) -> Result<Option<Interaction>, StoreError>;

    /// Writes the interaction's row; `expected` is the version the store must still have (`None`:
    /// the row must not exist yet). A row changed meanwhile is a [`StoreError::Conflict`] at commit.
    fn save_interaction(
        &mut self,
        interaction: &Interaction,
        expected: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Writes the agent's row at `version`; `expected` is the version the store must still have
    /// (0: the row must not exist yet).
    fn save_agent(
        &mut self,
        agent: &pb::Agent,
        expected: u64,
        version: u64,
    ) -> Result<(), StoreError>;
}

/// Which interactions a reader may see (the contract's Get / List column).
#[derive(Clone, Debug)]
pub enum Visibility {
    All,
    SubmittedBy(String),
    /// Owned by or invited to (agent) — party key.
    HeldBy(String),
    OwnedBy(String),
}

/// A stored interaction with its party keys: owner, invitee, submitter.
pub type StoredInteraction = (pb::Interaction, String, String, String);

/// interaction-server's reads, which see only what is committed.
#[derive(Clone, Debug)]
pub enum Reads {
    Sqlite(ixn_proto::sqlite::Readers),
    Postgres(ixn_proto::pg::Pool),
}

impl Reads {
    /// The interaction, in any state, if it belongs to `tenant`.
    pub async fn interaction(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<StoredInteraction>, StoreError> {
        match self {
            Reads::Sqlite(readers) => {
                let tenant = tenant.to_owned();
                readers
                    .run(move |r| sqlite::interaction(r, &tenant, id))
                    .await
            }
            Reads::Postgres(pool) => postgres::interaction(pool, tenant, id).await,
        }
    }

    /// A page of the tenant's interactions after `after` (an id), in id order.
    pub async fn list(&self, query: ListQuery) -> Result<Vec<pb::Interaction>, StoreError> {
        match self {
            Reads::Sqlite(readers) => readers.run(move |r| sqlite::list(r, &query)).await,
            Reads::Postgres(pool) => postgres::list(pool, &query).await,
        }
    }

    /// The agent's committed row.
    pub async fn agent(
        &self,
        tenant: &str,
        agent_id: &str,
    ) -> Result<Option<pb::Agent>, StoreError> {
        match self {
            Reads::Sqlite(readers) => {
                let (tenant, agent_id) = (tenant.to_owned(), agent_id.to_owned());
                readers
                    .run(move |r| sqlite::agent(r, &tenant, &agent_id))
                    .await
            }
            Reads::Postgres(pool) => postgres::agent(pool, tenant, agent_id).await,
        }
    }

    /// Where subscribers behind the in-memory ring read the log.
    pub fn history(&self) -> Arc<dyn History> {
        match self {
            Reads::Sqlite(readers) => Arc::new(readers.clone()),
            Reads::Postgres(pool) => Arc::new(pool.clone()),
        }
    }
}

/// What `ListInteractions` asks for.
#[derive(Clone, Debug)]
pub struct ListQuery {
    pub tenant: String,
    pub visibility: Visibility,
    pub state: Option<Phase>,
    pub queue: Option<String>,
    pub after: Option<Uuid>,
    pub limit: usize,
}

/// The columns of an interaction's row besides its body.
pub(crate) struct Columns {
    pub state: i32,
    pub owner: String,
    pub invitee: String,
    pub submitter: String,
}

impl Columns {
    pub(crate) fn of(i: &Interaction) -> Columns {
        Columns {
            state: i.phase.to_proto() as i32,
            owner: i
                .owner
                .as_ref()
                .map(crate::domain::party_key)
                .unwrap_or_default(),
            invitee: i
                .invite
                .as_ref()
                .map(|inv| format!("a:{}", inv.agent.agent_id))
                .unwrap_or_default(),
            submitter: crate::domain::party_key(&i.submitted_by),
        }
    }
}

pub(crate) fn decode_interaction(body: &[u8], queued_seq: u64) -> Result<Interaction, StoreError> {
    use prost::Message;
    let p = pb::Interaction::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Interaction::from_proto(&p, queued_seq)
        .ok_or_else(|| StoreError::Corrupt(format!("interaction {}", p.interaction_id)))
}

pub(crate) fn decode<M: prost::Message + Default>(body: &[u8]) -> Result<M, StoreError> {
    M::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))
}
