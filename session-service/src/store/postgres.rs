//! PostgreSQL implementation of session-service's tables, for several replicas on one database (or
//! schema) of their own. The log, request outcomes, the writers' lock and notifications are the
//! shared plumbing of `ixn_proto::pg`.
//!
//! - Operations on one agent are ordered across replicas by an advisory lock per agent
//!   ([`lock_agent`]), under which the agent's session is read as committed.
//! - Every session write is a compare-and-set on its version, and a unique index keeps one live
//!   session per agent; the relay's cursor moves only from where the relaying replica found it.
//! - The mirror of what agents hold is read from its tables where it is needed.

use super::{AgentLock, Folded, Loaded, Reads, Rows, decode, touched};
use crate::domain::{AgentKey, MirrorChange};
use ixn_proto::pg::{self, Database, Elector, Migrations, Pool};
use ixn_proto::session::Session;
use ixn_proto::store::{Batch, BoxFuture, REPLAY_CHUNK, StoreError, StoredRequest};
use prost::Message;
use std::collections::BTreeMap;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// A session's state column for "disposed" (as on SQLite).
const DISPOSED: i16 = 3;

/// The shared store: replicas of session-service on one PostgreSQL database (or schema).
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
            table: "session_service_migrations",
        };
        let db = Database::open(url, migrations, "sessions").await?;
        Ok(Postgres { db })
    }

    /// Marks this replica present (see [`pg::present`]) while the lease lives.
    pub async fn presence(&self) -> Result<(pg::Presence, pg::Lease), StoreError> {
        self.db.presence().await
    }
}

impl super::Store for Postgres {
    type Tx<'a> = pg::Batch<'a>;

    fn begin(&mut self) -> Result<pg::Batch<'_>, StoreError> {
        self.db.begin()
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        // Under the writers' lock: the rows and the head are of one moment.
        let batch = self.db.begin()?;
        let head = batch.shared_head().unwrap_or(0);
        let tx = batch.tx();
        let live = batch
            .block_on(tx.query("SELECT body FROM sessions WHERE state <> $1", &[&DISPOSED]))?;
        let cursor: i64 = batch
            .block_on(tx.query_one("SELECT cursor FROM relay WHERE id = 1", &[]))?
            .get(0);
        let sessions = live
            .iter()
            .map(|r| decode(r.get(0)))
            .collect::<Result<_, _>>()?;
        Ok(Loaded {
            sessions,
            mirror: Default::default(),
            cursor: cursor as u64,
            head,
        })
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.db.probe()
    }

    fn reads(&self) -> Reads {
        Reads::Postgres(self.db.pool(), self.db.locks())
    }

    fn committed(&mut self, after: u64) -> Result<Folded, StoreError> {
        let entries = self.db.events_after(after, REPLAY_CHUNK)?;
        let ids = touched(&entries);
        let sessions = if ids.is_empty() {
            Vec::new()
        } else {
            let rows = self.db.query(
                "SELECT body FROM sessions WHERE session_id = ANY($1)",
                &[&ids],
            )?;
            rows.iter()
                .map(|r| decode(r.get(0)))
                .collect::<Result<_, _>>()?
        };
        Ok(Folded { entries, sessions })
    }

    fn listen(
        &self,
        changed: Box<dyn Fn() -> bool + Send + 'static>,
    ) -> Option<BoxFuture<'static, ()>> {
        Some(Box::pin(self.db.listen(changed)))
    }

    fn elector(&self) -> Option<Elector> {
        Some(self.db.elector("relay"))
    }
}

/// One row changed, or a [`StoreError::Conflict`] naming what.
fn one(changed: u64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(what()))
    }
}

impl Rows for pg::Batch<'_> {
    fn save_session(&mut self, s: &Session, was: Option<u64>) -> Result<(), StoreError> {
        let (state, version, body) = (s.state as i16, s.version as i64, s.encode_to_vec());
        let changed = match was {
            // A second live session of the agent (another replica's login) is refused here too.
            None => {
                let insert = self.statement(
                    "INSERT INTO sessions (session_id, tenant, agent_id, state, version, body)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )?;
                self.block_on(self.tx().execute(
                    &insert,
                    &[
                        &s.session_id,
                        &s.tenant,
                        &s.agent_id,
                        &state,
                        &version,
                        &body,
                    ],
                ))?
            }
            Some(was) => {
                let update = self.statement(
                    "UPDATE sessions SET state = $2, version = $3, body = $4
                     WHERE session_id = $1 AND version = $5",
                )?;
                self.block_on(self.tx().execute(
                    &update,
                    &[&s.session_id, &state, &version, &body, &(was as i64)],
                ))?
            }
        };
        one(changed, || format!("session {}", s.session_id))
    }

    fn save_mirror(&mut self, change: &MirrorChange) -> Result<(), StoreError> {
        let tx = self.tx();
        let done = match change {
            MirrorChange::Media { interaction, media } => self.block_on(tx.execute(
                "INSERT INTO interaction_media (interaction_id, media) VALUES ($1, $2)
                 ON CONFLICT (interaction_id) DO UPDATE SET media = excluded.media",
                &[interaction, media],
            )),
            MirrorChange::Hold { agent, interaction } => self.block_on(tx.execute(
                "INSERT INTO holdings (tenant, agent_id, interaction_id) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&agent.0, &agent.1, interaction],
            )),
            MirrorChange::Release { agent, interaction } => self.block_on(tx.execute(
                "DELETE FROM holdings WHERE tenant = $1 AND agent_id = $2 AND interaction_id = $3",
                &[&agent.0, &agent.1, interaction],
            )),
            MirrorChange::Forget { interaction } => self.block_on(async {
                tx.execute(
                    "DELETE FROM holdings WHERE interaction_id = $1",
                    &[interaction],
                )
                .await?;
                tx.execute(
                    "DELETE FROM interaction_media WHERE interaction_id = $1",
                    &[interaction],
                )
                .await
            }),
        };
        done?;
        Ok(())
    }

    fn save_cursor(&mut self, from: u64, to: u64) -> Result<(), StoreError> {
        let changed = self.block_on(self.tx().execute(
            "UPDATE relay SET cursor = $2 WHERE id = 1 AND cursor = $1",
            &[&(from as i64), &(to as i64)],
        ))?;
        one(changed, || format!("the relay's cursor (not at {from})"))
    }

    fn sessions(&mut self, ids: &[String]) -> Result<Vec<Session>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.block_on(self.tx().query(
            "SELECT body FROM sessions WHERE session_id = ANY($1)",
            &[&ids],
        ))?;
        rows.iter().map(|r| decode(r.get(0))).collect()
    }
}

pub(super) async fn session(pool: &Pool, session_id: &str) -> Result<Option<Session>, StoreError> {
    let client = pool.client().await?;
    let row = client
        .query_opt(
            "SELECT body FROM sessions WHERE session_id = $1",
            &[&session_id],
        )
        .await?;
    row.map(|r| decode(r.get(0))).transpose()
}

pub(super) async fn request(
    pool: &Pool,
    tenant: &str,
    subject: &str,
    method: &str,
    request_id: &str,
) -> Result<Option<StoredRequest>, StoreError> {
    let client = pool.client().await?;
    let row = client
        .query_opt(
            "SELECT fingerprint, response FROM requests
             WHERE tenant = $1 AND subject = $2 AND method = $3 AND request_id = $4",
            &[&tenant, &subject, &method, &request_id],
        )
        .await?;
    Ok(row.map(|r| StoredRequest {
        fingerprint: r.get(0),
        response: r.get(1),
    }))
}

pub(super) async fn held_by(
    pool: &Pool,
    key: &AgentKey,
) -> Result<BTreeMap<String, String>, StoreError> {
    let client = pool.client().await?;
    let rows = client
        .query(
            "SELECT h.interaction_id, coalesce(m.media, '') FROM holdings h
             LEFT JOIN interaction_media m USING (interaction_id)
             WHERE h.tenant = $1 AND h.agent_id = $2",
            &[&key.0, &key.1],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub(super) async fn cursor(pool: &Pool) -> Result<u64, StoreError> {
    let client = pool.client().await?;
    let cursor: i64 = client
        .query_one("SELECT cursor FROM relay WHERE id = 1", &[])
        .await?
        .get(0);
    Ok(cursor as u64)
}

pub(super) async fn connected(
    pool: &Pool,
    session_id: &str,
    number: i32,
    open: bool,
    at: i64,
) -> Result<(), StoreError> {
    let client = pool.client().await?;
    client
        .execute(
            "INSERT INTO connections (session_id, replica, open, since_us) VALUES ($1, $2, $3, $4)
             ON CONFLICT (session_id, replica) DO UPDATE SET open = excluded.open, since_us = excluded.since_us",
            &[&session_id, &number, &open, &at],
        )
        .await?;
    Ok(())
}

pub(super) async fn last_connected(
    pool: &Pool,
    session_id: &str,
    number: i32,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let client = pool.client().await?;
    // A stream open on a replica that is gone ended when that was first noticed: from then on the
    // desktop has a whole grace to come back through another replica.
    let closed = format!(
        "UPDATE connections SET open = false, since_us = $2
         WHERE session_id = $1 AND open AND NOT {}",
        pg::present("replica")
    );
    client.execute(&closed, &[&session_id, &now]).await?;
    // A stream still open on a live replica counts as connected now.
    let sql = format!(
        "SELECT max(CASE WHEN open AND {} THEN $3 ELSE since_us END) FROM connections
         WHERE session_id = $1 AND replica <> $2",
        pg::present("replica")
    );
    Ok(client
        .query_one(&sql, &[&session_id, &number, &now])
        .await?
        .get(0))
}

pub(super) async fn forget_absent(pool: &Pool, now: i64, keep: i64) -> Result<(), StoreError> {
    let client = pool.client().await?;
    // Streams of replicas that are gone ended now, as far as anyone can tell.
    let closed = format!(
        "UPDATE connections SET open = false, since_us = $1 WHERE open AND NOT {}",
        pg::present("replica")
    );
    client.execute(&closed, &[&now]).await?;
    client
        .execute(
            "DELETE FROM connections c WHERE (NOT c.open AND c.since_us < $1)
               OR NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = c.session_id AND s.state <> $2)",
            &[&(now - keep), &DISPOSED],
        )
        .await?;
    Ok(())
}

pub(super) async fn lock_agent(pool: &Pool, key: &AgentKey) -> Result<AgentLock, StoreError> {
    // Names hold no control character, so the lock's name is unambiguous (and at worst two agents
    // whose names hash alike share a lock: slower, never wrong).
    let lock = pool
        .advisory_lock(&format!("agent\u{1f}{}\u{1f}{}", key.0, key.1))
        .await?;
    let row = lock
        .client()
        .query_opt(
            "SELECT body FROM sessions WHERE tenant = $1 AND agent_id = $2 AND state <> $3",
            &[&key.0, &key.1, &DISPOSED],
        )
        .await?;
    let live = row.map(|r| decode(r.get(0))).transpose()?;
    Ok(AgentLock { _lock: lock, live })
}
