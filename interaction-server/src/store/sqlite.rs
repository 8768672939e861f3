//! SQLite implementation of interaction-server's own tables (the log and request outcomes are the
//! shared ones of `ixn_proto::sqlite`).

use crate::domain::{Agent, Interaction, Phase, State, party_key};
use ixn_proto::interaction as pb;
use ixn_proto::sqlite::{Batch, Database, Readers, StoreError};
use prost::Message;
use rusqlite::{OptionalExtension, params};
use std::path::Path;
use uuid::Uuid;

/// The schema version this build writes; a database with a newer one is refused.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
-- The current row of each interaction. Ids are UUIDv7, so inserts append to the index.
CREATE TABLE IF NOT EXISTS interactions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    state INTEGER NOT NULL,
    queue TEXT NOT NULL,
    owner TEXT NOT NULL,
    invitee TEXT NOT NULL,
    submitter TEXT NOT NULL,
    queued_seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS interactions_live ON interactions (state) WHERE state <> 5;
CREATE INDEX IF NOT EXISTS interactions_tenant ON interactions (tenant, id);
CREATE TABLE IF NOT EXISTS agents (
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (tenant, agent_id)
) WITHOUT ROWID;
";

/// Which interactions a reader may see (the contract's Get / List column).
#[derive(Clone, Debug)]
pub enum Visibility {
    All,
    SubmittedBy(String),
    /// Owned by or invited to (agent) — party key.
    HeldBy(String),
    OwnedBy(String),
}

/// The writer's side of the store. Owned by the engine's thread.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (creating if need be) the store in `data_dir`, locking the directory.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let db = Database::open(data_dir, "interactions.db", SCHEMA, SCHEMA_VERSION)?;
        Ok(Store { db })
    }

    /// Read-only connections on the same database.
    pub fn readers(&self) -> Readers {
        self.db.readers()
    }

    /// The state to decide against: every agent and every live interaction; and the head of the log.
    pub fn load(&self) -> Result<(State, u64), StoreError> {
        let mut state = State::default();
        let mut stmt = self.db.conn().prepare("SELECT body FROM agents")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        for body in rows {
            let agent = pb::Agent::decode(body?.as_slice())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            state.insert_agent(Agent::from_proto(&agent));
        }
        let mut stmt = self
            .db
            .conn()
            .prepare("SELECT body, queued_seq FROM interactions WHERE state <> 5")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (body, queued_seq) = row?;
            state.insert(decode_interaction(&body, queued_seq as u64)?);
        }
        Ok((state, self.db.head()?))
    }

    /// Starts the batch's transaction.
    pub fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        self.db.begin()
    }

    /// How many interactions there are, stopped ones included (read from the smallest index).
    pub fn count_interactions(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .db
            .conn()
            .query_row("SELECT count(*) FROM interactions", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Whether the store takes a write.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        self.db.probe()
    }
}

/// interaction-server's rows, written in the writer's batch.
pub trait Rows {
    fn interaction(&self, id: Uuid) -> Result<Option<Interaction>, StoreError>;
    fn save_interaction(&self, i: &Interaction) -> Result<(), StoreError>;
    fn save_agent(&self, agent: &pb::Agent) -> Result<(), StoreError>;
}

impl Rows for Batch<'_> {
    /// A stopped interaction the state no longer holds.
    fn interaction(&self, id: Uuid) -> Result<Option<Interaction>, StoreError> {
        let mut stmt = self
            .tx()
            .prepare_cached("SELECT body, queued_seq FROM interactions WHERE id = ?1")?;
        let row = stmt
            .query_row([id.to_string()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?;
        row.map(|(body, q)| decode_interaction(&body, q as u64))
            .transpose()
    }

    fn save_interaction(&self, i: &Interaction) -> Result<(), StoreError> {
        let mut stmt = self.tx().prepare_cached(
            "INSERT INTO interactions (id, tenant, state, queue, owner, invitee, submitter, queued_seq, version, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, queue = excluded.queue,
               owner = excluded.owner, invitee = excluded.invitee, queued_seq = excluded.queued_seq,
               version = excluded.version, body = excluded.body",
        )?;
        stmt.execute(params![
            i.id.to_string(),
            i.tenant,
            i.phase.to_proto() as i32,
            i.queue,
            i.owner.as_ref().map(party_key).unwrap_or_default(),
            i.invite
                .as_ref()
                .map(|inv| format!("a:{}", inv.agent.agent_id))
                .unwrap_or_default(),
            party_key(&i.submitted_by),
            i.queued_seq as i64,
            i.version as i64,
            i.to_proto().encode_to_vec(),
        ])?;
        Ok(())
    }

    fn save_agent(&self, agent: &pb::Agent) -> Result<(), StoreError> {
        let mut stmt = self.tx().prepare_cached(
            "INSERT INTO agents (tenant, agent_id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant, agent_id) DO UPDATE SET body = excluded.body",
        )?;
        stmt.execute(params![agent.tenant, agent.agent_id, agent.encode_to_vec()])?;
        Ok(())
    }
}

fn decode_interaction(body: &[u8], queued_seq: u64) -> Result<Interaction, StoreError> {
    let p = pb::Interaction::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Interaction::from_proto(&p, queued_seq)
        .ok_or_else(|| StoreError::Corrupt(format!("interaction {}", p.interaction_id)))
}

/// interaction-server's reads.
pub trait Reads {
    fn interaction(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<(pb::Interaction, String, String, String)>, StoreError>;
    fn list(
        &self,
        tenant: &str,
        visibility: &Visibility,
        state: Option<Phase>,
        queue: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<pb::Interaction>, StoreError>;
    fn agent(&self, tenant: &str, agent_id: &str) -> Result<Option<pb::Agent>, StoreError>;
}

impl Reads for Readers {
    /// The interaction, in any state, if it belongs to `tenant`.
    fn interaction(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<(pb::Interaction, String, String, String)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT body, owner, invitee, submitter FROM interactions WHERE id = ?1 AND tenant = ?2",
            )?;
            let row = stmt
                .query_row(params![id.to_string(), tenant], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .optional()?;
            row.map(|(body, owner, invitee, submitter)| {
                let p = pb::Interaction::decode(body.as_slice())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((p, owner, invitee, submitter))
            })
            .transpose()
        })
    }

    /// A page of the tenant's interactions after `after` (an id), in id order.
    fn list(
        &self,
        tenant: &str,
        visibility: &Visibility,
        state: Option<Phase>,
        queue: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<pb::Interaction>, StoreError> {
        self.with(|c| {
            let mut sql =
                String::from("SELECT body FROM interactions WHERE tenant = ?1 AND id > ?2");
            let mut args: Vec<rusqlite::types::Value> = vec![
                tenant.to_owned().into(),
                after.map(|a| a.to_string()).unwrap_or_default().into(),
            ];
            match visibility {
                Visibility::All => {}
                Visibility::SubmittedBy(key) => {
                    args.push(key.clone().into());
                    sql.push_str(&format!(" AND submitter = ?{}", args.len()));
                }
                Visibility::OwnedBy(key) => {
                    args.push(key.clone().into());
                    sql.push_str(&format!(" AND owner = ?{}", args.len()));
                }
                Visibility::HeldBy(key) => {
                    args.push(key.clone().into());
                    let n = args.len();
                    sql.push_str(&format!(" AND (owner = ?{n} OR invitee = ?{n})"));
                }
            }
            if let Some(phase) = state {
                args.push(i64::from(phase.to_proto() as i32).into());
                sql.push_str(&format!(" AND state = ?{}", args.len()));
            }
            if let Some(queue) = queue {
                args.push(queue.to_owned().into());
                sql.push_str(&format!(" AND queue = ?{}", args.len()));
            }
            args.push((limit as i64).into());
            sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
            let mut stmt = c.prepare_cached(&sql)?;
            let rows =
                stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, Vec<u8>>(0))?;
            rows.map(|body| {
                pb::Interaction::decode(body?.as_slice())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
        })
    }

    /// The agent's committed row.
    fn agent(&self, tenant: &str, agent_id: &str) -> Result<Option<pb::Agent>, StoreError> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT body FROM agents WHERE tenant = ?1 AND agent_id = ?2")?;
            let body = stmt
                .query_row(params![tenant, agent_id], |r| r.get::<_, Vec<u8>>(0))
                .optional()?;
            body.map(|b| {
                pb::Agent::decode(b.as_slice()).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .transpose()
        })
    }
}
