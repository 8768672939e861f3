//! SQLite implementation of interaction-server's own tables (the log and request outcomes are the
//! shared ones of `ixn_proto::sqlite`). One process owns the data directory, so its writes need no
//! compare-and-set: the writer's state is the only one.

use super::{
    Columns, ListQuery, Loaded, Reads, StoredInteraction, Visibility, decode, decode_interaction,
};
use crate::domain::{Agent, Interaction, State};
use ixn_proto::interaction as pb;
use ixn_proto::log::LogEntry;
use ixn_proto::sqlite::{Batch, Database, Readers, StoreError};
use ixn_proto::store::{BoxFuture, RequestKey};
use prost::Message;
use rusqlite::{OptionalExtension, params};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// The schema version this build writes; a database with a newer one is refused. 2: request
/// outcomes live in `request_outcomes`, keyed by request id first (`ixn_proto::sqlite`). 3: an
/// agent's row no longer says what it holds; the interactions' rows do, so an older build would
/// read every agent as holding nothing. (Which indexes serve the live interactions is not part of
/// the version: each build makes the ones it reads from the same rows.)
const SCHEMA_VERSION: i64 = 3;

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
CREATE INDEX IF NOT EXISTS interactions_tenant ON interactions (tenant, id);
-- The live interactions, which are loaded at start; in id order, so that interactions stopped in
-- about the order they came in leave from the same few pages. What each agent holds is served from
-- memory, so no index by owner or invitee is kept: one moved an entry to a page of a random agent
-- at every change of hands.
DROP INDEX IF EXISTS interactions_owned;
DROP INDEX IF EXISTS interactions_invited;
CREATE INDEX IF NOT EXISTS interactions_live ON interactions (id) WHERE state <> 5;
-- Each agent's own state: login, media, Ready / Not Ready (`Agent::row`). Rewritten only by the
-- agent's own events, never when an interaction changes hands.
CREATE TABLE IF NOT EXISTS agents (
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (tenant, agent_id)
) WITHOUT ROWID;
";

/// The live interactions, loaded at start (through `interactions_live`).
const LIVE: &str = "SELECT body, queued_seq FROM interactions WHERE state <> 5";

/// The embedded store: a SQLite database in a data directory this process locks.
#[derive(Debug)]
pub struct Sqlite {
    db: Database,
}

impl Sqlite {
    /// Opens (creating if need be) the store in `data_dir`, locking the directory.
    pub fn open(data_dir: &Path) -> Result<Sqlite, StoreError> {
        let db = Database::open(data_dir, "interactions.db", SCHEMA, SCHEMA_VERSION)?;
        Ok(Sqlite { db })
    }
}

impl super::Store for Sqlite {
    type Tx<'a> = Batch<'a>;

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut state = State::default();
        let mut stmt = self.db.conn().prepare("SELECT body FROM agents")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        for body in rows {
            state.insert_agent(Agent::from_proto(&decode(&body?)?));
        }
        let mut stmt = self.db.conn().prepare(LIVE)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (body, queued_seq) = row?;
            state.insert(decode_interaction(&body, queued_seq as u64)?);
        }
        Ok(Loaded {
            state,
            head: self.db.head()?,
            agent_versions: Default::default(),
        })
    }

    fn begin(
        &mut self,
        _requests: &mut dyn Iterator<Item = RequestKey>,
    ) -> Result<Batch<'_>, StoreError> {
        // Look-ups are local: the keys are never built.
        self.db.begin()
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.db.probe()
    }

    fn count_interactions(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .db
            .conn()
            .query_row("SELECT count(*) FROM interactions", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        self.db.readers().events_after(after, limit)
    }

    fn reads(&self) -> Reads {
        Reads::Sqlite(self.db.readers())
    }

    fn listen(
        &self,
        _changed: Box<dyn Fn() -> bool + Send + 'static>,
    ) -> Option<BoxFuture<'static, ()>> {
        None
    }
}

impl super::Tx for Batch<'_> {
    fn interaction(&mut self, id: Uuid) -> Result<Option<Interaction>, StoreError> {
        let row = self
            .statement("SELECT body, queued_seq FROM interactions WHERE id = ?1")?
            .query_row([id.to_string()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?;
        row.map(|(body, q)| decode_interaction(&body, q as u64))
            .transpose()
    }

    fn save_interaction(
        &mut self,
        i: &Interaction,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let c = Columns::of(i);
        let mut id = uuid::Uuid::encode_buffer();
        let id: &str = i.id.hyphenated().encode_lower(&mut id);
        let body = i.to_proto().encode_to_vec();
        if expected.is_some() {
            // The row is there (this process wrote it): an UPDATE finds it with one search, where
            // an INSERT … ON CONFLICT searches for the conflict first and then updates.
            let updated = self
                .statement(
                    "UPDATE interactions SET state = ?2, queue = ?3, owner = ?4, invitee = ?5,
                   queued_seq = ?6, version = ?7, body = ?8
                 WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    c.state,
                    i.queue,
                    c.owner,
                    c.invitee,
                    i.queued_seq as i64,
                    i.version as i64,
                    body,
                ])?;
            if updated == 1 {
                return Ok(());
            }
        }
        self.statement(
            "INSERT INTO interactions (id, tenant, state, queue, owner, invitee, submitter, queued_seq, version, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, queue = excluded.queue,
               owner = excluded.owner, invitee = excluded.invitee, queued_seq = excluded.queued_seq,
               version = excluded.version, body = excluded.body",
        )?
        .execute(params![
            id,
            i.tenant,
            c.state,
            i.queue,
            c.owner,
            c.invitee,
            c.submitter,
            i.queued_seq as i64,
            i.version as i64,
            body,
        ])?;
        Ok(())
    }

    fn save_agent(
        &mut self,
        agent: &pb::Agent,
        _expected: u64,
        _version: u64,
    ) -> Result<(), StoreError> {
        self.statement(
            "INSERT INTO agents (tenant, agent_id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant, agent_id) DO UPDATE SET body = excluded.body",
        )?
        .execute(params![agent.tenant, agent.agent_id, agent.encode_to_vec()])?;
        Ok(())
    }
}

/// The interaction, in any state, if it belongs to `tenant`.
pub(super) fn interaction(
    readers: &Readers,
    tenant: &str,
    id: Uuid,
) -> Result<Option<StoredInteraction>, StoreError> {
    readers.with(|c| {
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
        row.map(|(body, owner, invitee, submitter)| Ok((decode(&body)?, owner, invitee, submitter)))
            .transpose()
    })
}

/// A page of the tenant's interactions after `after` (an id), in id order.
pub(super) fn list(readers: &Readers, q: &ListQuery) -> Result<Vec<pb::Interaction>, StoreError> {
    readers.with(|c| {
        let mut sql = String::from("SELECT body FROM interactions WHERE tenant = ?1 AND id > ?2");
        let mut args: Vec<rusqlite::types::Value> = vec![
            q.tenant.clone().into(),
            q.after.map(|a| a.to_string()).unwrap_or_default().into(),
        ];
        match &q.visibility {
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
        if let Some(phase) = q.state {
            args.push(i64::from(phase.to_proto() as i32).into());
            sql.push_str(&format!(" AND state = ?{}", args.len()));
        }
        if let Some(queue) = &q.queue {
            args.push(queue.clone().into());
            sql.push_str(&format!(" AND queue = ?{}", args.len()));
        }
        args.push((q.limit as i64).into());
        sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
        let mut stmt = c.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|body| decode(&body?)).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text column `column` of every row `sql` returns.
    fn texts(store: &Sqlite, sql: &str, column: usize) -> Vec<String> {
        let mut stmt = store.db.conn().prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(column)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn the_live_interactions_are_found_by_an_index_and_none_follows_who_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(dir.path()).unwrap();
        // Start-up reads the live ones alone, however many stopped ones the table keeps.
        assert_eq!(
            texts(&store, &format!("EXPLAIN QUERY PLAN {LIVE}"), 3),
            ["SCAN interactions USING INDEX interactions_live"]
        );
        // An interaction changing hands rewrites its row and no index entry elsewhere: the only
        // indexes are the ones by tenant and of the live interactions, both in id order.
        let names = texts(
            &store,
            "SELECT name FROM pragma_index_list('interactions') WHERE origin = 'c' ORDER BY name",
            0,
        );
        assert_eq!(names, ["interactions_live", "interactions_tenant"]);
    }
}
