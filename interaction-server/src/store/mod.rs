//! The durable copy: the event log, the current row of every interaction and agent, and the outcomes
//! of successful requests (idempotency). One trait, [`Store`], and two implementations: SQLite in a
//! data directory one process owns ([`Sqlite`], the embedded default), and PostgreSQL shared by
//! several replicas ([`Postgres`]). The log, the outcomes and each database's plumbing are the shared
//! ones of `ixn_proto::sqlite` and `ixn_proto::pg`; this module adds interaction-server's own tables.

mod postgres;
mod sqlite;

use crate::domain::{Agent, AgentKey, Interaction, Phase, State};
use foldhash::HashMap;
use ixn_proto::interaction as pb;
use ixn_proto::log::LogEntry;
use ixn_proto::store::{Batch, BoxFuture, History, RequestKey};
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

    /// Starts a batch's transaction (on a shared store, under the writers' lock). `requests` are
    /// the batch's (tenant, subject, method, request id): a store whose look-ups are remote reads
    /// their recorded outcomes in the same round trip; one whose look-ups are local never builds
    /// the keys.
    fn begin(
        &mut self,
        requests: &mut dyn Iterator<Item = RequestKey>,
    ) -> Result<Self::Tx<'_>, StoreError>;

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

    /// Writes the agent's row ([`crate::domain::Agent::row`]: what it holds is not in it) at
    /// `version`; `expected` is the version the store must still have (0: the row must not exist
    /// yet).
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

    /// The agent as committed, on a store several replicas share: its row, and what it holds (read
    /// from the interactions' rows). `None` on the embedded store, whose writer holds the committed
    /// state of every agent and answers instead ([`crate::engine::Engine::agent`]).
    pub async fn shared_agent(
        &self,
        tenant: &str,
        agent_id: &str,
    ) -> Option<Result<Agent, StoreError>> {
        match self {
            Reads::Sqlite(_) => None,
            Reads::Postgres(pool) => Some(postgres::agent(pool, tenant, agent_id).await),
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
                .map(|inv| agent_key(&inv.agent.agent_id))
                .unwrap_or_default(),
            submitter: crate::domain::party_key(&i.submitted_by),
        }
    }
}

/// The key naming an agent in the interactions' `owner` and `invitee` columns.
pub(crate) fn agent_key(agent_id: &str) -> String {
    crate::domain::party_key(&ixn_proto::common::Party::agent(agent_id, ""))
}

/// An agent as reads return it, from rows of one snapshot: its own row (kind 0; an agent never
/// seen has none, and is logged out) and each live interaction it owns or is invited to (kind 1),
/// which say what it holds. What an older row still lists of its holdings is not read back.
pub(crate) fn agent_from_rows(
    tenant: &str,
    agent_id: &str,
    rows: impl IntoIterator<Item = (i64, Vec<u8>)>,
) -> Result<Agent, StoreError> {
    let mut agent = None;
    let mut held = Vec::new();
    for (kind, body) in rows {
        if kind == 0 {
            agent = Some(Agent::from_proto(&decode(&body)?));
        } else {
            let i: pb::Interaction = decode(&body)?;
            let id = i
                .interaction_id
                .parse::<Uuid>()
                .map_err(|_| StoreError::Corrupt(format!("interaction {}", i.interaction_id)))?;
            held.push((id, i.media_type));
        }
    }
    let mut agent = agent.unwrap_or_else(|| Agent::new(&AgentKey::new(tenant, agent_id)));
    agent.holding.extend(held);
    Ok(agent)
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn held(id: Uuid, media: &str) -> (i64, Vec<u8>) {
        let i = pb::Interaction {
            interaction_id: id.to_string(),
            media_type: media.into(),
            ..Default::default()
        };
        (1, i.encode_to_vec())
    }

    /// A row written when agents' rows still listed their holdings says nothing that counts: the
    /// interactions' rows do.
    #[test]
    fn what_an_agent_holds_comes_from_the_interactions_not_its_row() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let stale = pb::Agent {
            agent_id: "a1".into(),
            tenant: "t1".into(),
            logged_in: true,
            media: vec![pb::AgentMedia {
                media_type: "chat".into(),
                load: 2,
                capacity: 3,
                ..Default::default()
            }],
            interaction_ids: vec![Uuid::now_v7().to_string(), a.to_string()],
            version: 4,
            ..Default::default()
        };
        let rows = vec![
            (0, stale.encode_to_vec()),
            held(a, "chat"),
            held(b, "email"),
        ];

        let agent = agent_from_rows("t1", "a1", rows).unwrap();

        assert_eq!(
            agent.holding,
            [(a, "chat".to_owned()), (b, "email".to_owned())].into()
        );
        assert_eq!(agent.load("chat"), 1);
        assert_eq!((agent.logged_in, agent.version), (true, 4));
    }

    /// An agent with no row of its own (never logged in) still shows what it holds; one that has
    /// neither is an agent never seen.
    #[test]
    fn an_agent_without_a_row_holds_what_the_interactions_say() {
        let a = Uuid::now_v7();
        let never_seen = Agent::new(&AgentKey::new("t1", "a1"));

        let agent = agent_from_rows("t1", "a1", [held(a, "chat")]).unwrap();

        assert_eq!(
            (agent.tenant.as_str(), agent.agent_id.as_str()),
            ("t1", "a1")
        );
        assert!(!agent.logged_in && agent.media.is_empty());
        assert_eq!(agent.holding, [(a, "chat".to_owned())].into());
        assert_eq!(agent_from_rows("t1", "a1", []).unwrap(), never_seen);
    }
}
