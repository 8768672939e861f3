//! PostgreSQL implementation of interaction-server's own tables, for several replicas on one
//! database (the log, request outcomes, the writers' lock and notifications are the shared plumbing
//! of `ixn_proto::pg`).
//!
//! Every row a batch writes is a compare-and-set: an interaction's on its version, an agent's on
//! the sequence of the last event that changed it. A replica decides against its state only after
//! folding in what other replicas committed (under the writers' lock), so a compare-and-set fails
//! only if that state is wrong; the whole batch is then refused with [`StoreError::Conflict`] and
//! the engine reloads and decides again.

use super::{
    Columns, ListQuery, Loaded, Reads, StoredInteraction, Visibility, decode, decode_interaction,
};
use crate::domain::{Agent, Interaction, State};
use ixn_proto::interaction as pb;
use ixn_proto::log::LogEntry;
use ixn_proto::pg::{self, Database, Migrations, Pool};
use ixn_proto::store::{Batch, BoxFuture, RequestKey, StoreError, StoredRequest};
use prost::Message;
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// The shared store: replicas of interaction-server on one PostgreSQL database (or schema).
#[derive(Debug)]
pub struct Postgres {
    db: Database,
}

impl Postgres {
    /// Connects, applies the migrations this build has (refusing a database migrated by a newer
    /// build), and opens the writer's connection and the readers' pool.
    pub async fn open(url: &str) -> Result<Postgres, StoreError> {
        let migrations = Migrations {
            runner: embedded::migrations::runner(),
            table: "interaction_server_migrations",
        };
        let db = Database::open(url, migrations, "interactions").await?;
        Ok(Postgres { db })
    }
}

impl super::Store for Postgres {
    type Tx<'a> = PgTx<'a>;

    fn load(&mut self) -> Result<Loaded, StoreError> {
        // Under the writers' lock: the rows and the head are of one moment.
        let batch = self.db.begin()?;
        let head = batch.shared_head().unwrap_or(0);
        let tx = batch.tx();
        let agents = batch.block_on(tx.query("SELECT version, body FROM agents", &[]))?;
        let live = batch.block_on(tx.query(
            "SELECT body, queued_seq FROM interactions WHERE state <> 5",
            &[],
        ))?;
        let mut loaded = Loaded {
            state: State::default(),
            head,
            agent_versions: Default::default(),
        };
        for row in agents {
            let agent = Agent::from_proto(&decode::<pb::Agent>(row.get(1))?);
            loaded
                .agent_versions
                .insert(agent.key(), row.get::<_, i64>(0) as u64);
            loaded.state.insert_agent(agent);
        }
        for row in live {
            let queued_seq: i64 = row.get(1);
            loaded
                .state
                .insert(decode_interaction(row.get(0), queued_seq as u64)?);
        }
        Ok(loaded)
    }

    fn begin(
        &mut self,
        requests: &mut dyn Iterator<Item = RequestKey>,
    ) -> Result<PgTx<'_>, StoreError> {
        Ok(PgTx {
            batch: self.db.begin_reading(requests.collect())?,
            inserted: Vec::new(),
            updated: Vec::new(),
            agents: Vec::new(),
        })
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.db.probe()
    }

    fn count_interactions(&mut self) -> Result<u64, StoreError> {
        let rows = self.db.query("SELECT count(*) FROM interactions", &[])?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as u64)
    }

    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        self.db.events_after(after, limit)
    }

    fn reads(&self) -> Reads {
        Reads::Postgres(self.db.pool())
    }

    fn listen(
        &self,
        changed: Box<dyn Fn() -> bool + Send + 'static>,
    ) -> Option<BoxFuture<'static, ()>> {
        Some(Box::pin(self.db.listen(changed)))
    }
}

/// An interaction's row as written.
struct Row {
    id: String,
    tenant: String,
    columns: Columns,
    queue: String,
    queued_seq: i64,
    version: i64,
    body: Vec<u8>,
    expected: i64,
}

/// An agent's row as written.
struct AgentRow {
    tenant: String,
    agent_id: String,
    version: i64,
    body: Vec<u8>,
    expected: i64,
}

/// A batch's transaction: the shared one, and interaction-server's rows, written at commit.
pub struct PgTx<'a> {
    batch: pg::Batch<'a>,
    inserted: Vec<Row>,
    updated: Vec<Row>,
    agents: Vec<AgentRow>,
}

impl Batch for PgTx<'_> {
    fn shared_head(&self) -> Option<u64> {
        self.batch.shared_head()
    }

    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        self.batch.events_after(after, limit)
    }

    fn request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StoreError> {
        self.batch.request(tenant, subject, method, request_id)
    }

    fn record_request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
        fingerprint: &[u8],
        response: &[u8],
        now: ixn_proto::clock::Micros,
    ) -> Result<(), StoreError> {
        self.batch.record_request(
            tenant,
            subject,
            method,
            request_id,
            fingerprint,
            response,
            now,
        )
    }

    fn prune_requests(&mut self, before: ixn_proto::clock::Micros) -> Result<(), StoreError> {
        self.batch.prune_requests(before)
    }

    fn append(&mut self, entry: &LogEntry) -> Result<(), StoreError> {
        self.batch.append(entry)
    }

    fn commit(self) -> Result<(), StoreError> {
        let PgTx {
            batch,
            inserted,
            updated,
            agents,
        } = self;
        batch.commit_with(move |b| write_rows(b, inserted, updated, agents))
    }
}

impl super::Tx for PgTx<'_> {
    fn interaction(&mut self, id: Uuid) -> Result<Option<Interaction>, StoreError> {
        let statement = self
            .batch
            .statement("SELECT body, queued_seq FROM interactions WHERE id = $1")?;
        let row = self
            .batch
            .block_on(self.batch.tx().query_opt(&statement, &[&id.to_string()]))?;
        row.map(|r| decode_interaction(r.get(0), r.get::<_, i64>(1) as u64))
            .transpose()
    }

    fn save_interaction(
        &mut self,
        i: &Interaction,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let row = Row {
            id: i.id.to_string(),
            tenant: i.tenant.clone(),
            columns: Columns::of(i),
            queue: i.queue.clone(),
            queued_seq: i.queued_seq as i64,
            version: i.version as i64,
            body: i.to_proto().encode_to_vec(),
            expected: expected.unwrap_or(0) as i64,
        };
        match expected {
            None => self.inserted.push(row),
            Some(_) => self.updated.push(row),
        }
        Ok(())
    }

    fn save_agent(
        &mut self,
        agent: &pb::Agent,
        expected: u64,
        version: u64,
    ) -> Result<(), StoreError> {
        self.agents.push(AgentRow {
            tenant: agent.tenant.clone(),
            agent_id: agent.agent_id.clone(),
            version: version as i64,
            body: agent.encode_to_vec(),
            expected: expected as i64,
        });
        Ok(())
    }
}

/// Writes the batch's rows, a statement per kind, sent together (with the log's rows, by
/// `commit_with`); every one a compare-and-set.
fn write_rows<'a>(
    b: &mut pg::Batch<'a>,
    inserted: Vec<Row>,
    updated: Vec<Row>,
    agents: Vec<AgentRow>,
) -> Result<impl Future<Output = Result<(), StoreError>> + use<'a>, StoreError> {
    let insert = b.statement(
        "INSERT INTO interactions (id, tenant, state, queue, owner, invitee, submitter, queued_seq, version, body)
         SELECT * FROM unnest($1::text[], $2::text[], $3::smallint[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bytea[])
         ON CONFLICT (id) DO NOTHING",
    )?;
    // Changes go one statement per row, sent together: each finds its row by the primary key
    // whatever the planner thinks of the table's size.
    let update = b.statement(
        "UPDATE interactions SET state = $2, queue = $3, owner = $4, invitee = $5,
           queued_seq = $6, version = $7, body = $8
         WHERE id = $1 AND version = $9",
    )?;
    let (new_agents, changed_agents): (Vec<AgentRow>, Vec<AgentRow>) =
        agents.into_iter().partition(|a| a.expected == 0);
    let insert_agents = b.statement(
        "INSERT INTO agents (tenant, agent_id, version, body)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[])
         ON CONFLICT (tenant, agent_id) DO NOTHING",
    )?;
    let update_agents = b.statement(
        "UPDATE agents SET version = $3, body = $4
         WHERE tenant = $1 AND agent_id = $2 AND version = $5",
    )?;
    let tx = b.tx();
    Ok(async move {
        let inserts = async {
            if inserted.is_empty() {
                return Ok(0);
            }
            let c = InteractionColumns::of(&inserted);
            let params: [&(dyn ToSql + Sync); 10] = [
                &c.id,
                &c.tenant,
                &c.state,
                &c.queue,
                &c.owner,
                &c.invitee,
                &c.submitter,
                &c.queued_seq,
                &c.version,
                &c.body,
            ];
            tx.execute(&insert, &params).await
        };
        let updates = futures::future::try_join_all(updated.iter().map(|r| {
            let update = &update;
            async move {
                let state = r.columns.state as i16;
                tx.execute(
                    update,
                    &[
                        &r.id,
                        &state,
                        &r.queue,
                        &r.columns.owner,
                        &r.columns.invitee,
                        &r.queued_seq,
                        &r.version,
                        &r.body,
                        &r.expected,
                    ],
                )
                .await
            }
        }));
        let agent_inserts = async {
            if new_agents.is_empty() {
                return Ok(0);
            }
            let c = AgentColumns::of(&new_agents);
            tx.execute(
                &insert_agents,
                &[&c.tenant, &c.agent_id, &c.version, &c.body],
            )
            .await
        };
        let agent_updates = futures::future::try_join_all(changed_agents.iter().map(|a| {
            let update_agents = &update_agents;
            async move {
                tx.execute(
                    update_agents,
                    &[&a.tenant, &a.agent_id, &a.version, &a.body, &a.expected],
                )
                .await
            }
        }));
        let counts = futures::try_join!(inserts, updates, agent_inserts, agent_updates)?;
        let expected = (
            inserted.len() as u64,
            updated.len() as u64,
            new_agents.len() as u64,
            changed_agents.len() as u64,
        );
        let counts = (
            counts.0,
            counts.1.iter().sum::<u64>(),
            counts.2,
            counts.3.iter().sum::<u64>(),
        );
        if counts.0 != expected.0 || counts.1 != expected.1 {
            return Err(StoreError::Conflict("an interaction's row".into()));
        }
        if counts.2 != expected.2 || counts.3 != expected.3 {
            return Err(StoreError::Conflict("an agent's row".into()));
        }
        Ok(())
    })
}

#[derive(Default)]
struct InteractionColumns {
    id: Vec<String>,
    tenant: Vec<String>,
    state: Vec<i16>,
    queue: Vec<String>,
    owner: Vec<String>,
    invitee: Vec<String>,
    submitter: Vec<String>,
    queued_seq: Vec<i64>,
    version: Vec<i64>,
    body: Vec<Vec<u8>>,
    expected: Vec<i64>,
}

impl InteractionColumns {
    fn of(rows: &[Row]) -> InteractionColumns {
        let mut c = InteractionColumns::default();
        for r in rows {
            c.id.push(r.id.clone());
            c.tenant.push(r.tenant.clone());
            c.state.push(r.columns.state as i16);
            c.queue.push(r.queue.clone());
            c.owner.push(r.columns.owner.clone());
            c.invitee.push(r.columns.invitee.clone());
            c.submitter.push(r.columns.submitter.clone());
            c.queued_seq.push(r.queued_seq);
            c.version.push(r.version);
            c.body.push(r.body.clone());
            c.expected.push(r.expected);
        }
        c
    }
}

#[derive(Default)]
struct AgentColumns {
    tenant: Vec<String>,
    agent_id: Vec<String>,
    version: Vec<i64>,
    body: Vec<Vec<u8>>,
    expected: Vec<i64>,
}

impl AgentColumns {
    fn of(rows: &[AgentRow]) -> AgentColumns {
        let mut c = AgentColumns::default();
        for r in rows {
            c.tenant.push(r.tenant.clone());
            c.agent_id.push(r.agent_id.clone());
            c.version.push(r.version);
            c.body.push(r.body.clone());
            c.expected.push(r.expected);
        }
        c
    }
}

/// The interaction, in any state, if it belongs to `tenant`.
pub(super) async fn interaction(
    pool: &Pool,
    tenant: &str,
    id: Uuid,
) -> Result<Option<StoredInteraction>, StoreError> {
    let client = pool.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT body, owner, invitee, submitter FROM interactions WHERE id = $1 AND tenant = $2",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&id.to_string(), &tenant])
        .await?;
    row.map(|r| Ok((decode(r.get(0))?, r.get(1), r.get(2), r.get(3))))
        .transpose()
}

/// A page of the tenant's interactions after `after` (an id), in id order.
pub(super) async fn list(pool: &Pool, q: &ListQuery) -> Result<Vec<pb::Interaction>, StoreError> {
    let mut sql = String::from("SELECT body FROM interactions WHERE tenant = $1 AND id > $2");
    let after = q.after.map(|a| a.to_string()).unwrap_or_default();
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> =
        vec![Box::new(q.tenant.clone()), Box::new(after)];
    match &q.visibility {
        Visibility::All => {}
        Visibility::SubmittedBy(key) => {
            args.push(Box::new(key.clone()));
            sql.push_str(&format!(" AND submitter = ${}", args.len()));
        }
        Visibility::OwnedBy(key) => {
            args.push(Box::new(key.clone()));
            sql.push_str(&format!(" AND owner = ${}", args.len()));
        }
        Visibility::HeldBy(key) => {
            args.push(Box::new(key.clone()));
            let n = args.len();
            sql.push_str(&format!(" AND (owner = ${n} OR invitee = ${n})"));
        }
    }
    if let Some(phase) = q.state {
        args.push(Box::new(phase.to_proto() as i16));
        sql.push_str(&format!(" AND state = ${}", args.len()));
    }
    if let Some(queue) = &q.queue {
        args.push(Box::new(queue.clone()));
        sql.push_str(&format!(" AND queue = ${}", args.len()));
    }
    args.push(Box::new(q.limit as i64));
    // The column's collation is "C" (byte order, as SQLite's): ids are UUIDv7, so time order.
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
    let client = pool.client().await?;
    let statement = client.prepare_cached(&sql).await?;
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&statement, &params).await?;
    rows.iter().map(|r| decode(r.get(0))).collect()
}

/// The agent's committed row, with the live interactions it owns or is invited to, read in one
/// statement (one snapshot).
pub(super) async fn agent(pool: &Pool, tenant: &str, agent_id: &str) -> Result<Agent, StoreError> {
    let client = pool.client().await?;
    // UNION compares the second column, so both sides need one collation: the ids' byte order.
    let statement = client
        .prepare_cached(
            "SELECT 0, agent_id COLLATE \"C\", body FROM agents WHERE tenant = $1 AND agent_id = $2
             UNION SELECT 1, id, body FROM interactions
                 WHERE tenant = $1 AND state <> 5 AND owner = $3
             UNION SELECT 1, id, body FROM interactions
                 WHERE tenant = $1 AND state <> 5 AND invitee = $3 AND invitee <> ''",
        )
        .await?;
    let key = super::agent_key(agent_id);
    let rows = client
        .query(&statement, &[&tenant, &agent_id, &key])
        .await?;
    super::agent_from_rows(
        tenant,
        agent_id,
        rows.iter()
            .map(|r| (i64::from(r.get::<_, i32>(0)), r.get::<_, Vec<u8>>(2))),
    )
}
