//! session-service's tables, on the shared SQLite plumbing (`ixn_proto::sqlite`: the log, request
//! outcomes, the directory lock): sessions, the mirror of what agents hold, and the cursor of the
//! relay in interaction-server's log.

use super::{Folded, Loaded, Reads, Rows, decode};
use crate::domain::{MirrorChange, agent_key};
use ixn_proto::pg::Elector;
use ixn_proto::session::Session;
use ixn_proto::sqlite::{Batch, Database, Readers};
use ixn_proto::store::{BoxFuture, StoreError};
use prost::Message;
use rusqlite::{OptionalExtension, params};
use std::path::Path;

/// The schema version this build writes; a database with a newer one is refused. 2: request
/// outcomes live in `request_outcomes`, keyed by request id first (`ixn_proto::sqlite`).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_live ON sessions (state) WHERE state <> 3;
-- The mirror: what each agent owns or is invited to, and the media of live interactions.
CREATE TABLE IF NOT EXISTS holdings (
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    PRIMARY KEY (tenant, agent_id, interaction_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holdings_interaction ON holdings (interaction_id);
CREATE TABLE IF NOT EXISTS interaction_media (
    interaction_id TEXT PRIMARY KEY,
    media TEXT NOT NULL
) WITHOUT ROWID;
";

/// The embedded store: SQLite in the data directory, owned by one process.
#[derive(Debug)]
pub struct Sqlite {
    db: Database,
}

impl Sqlite {
    pub fn open(data_dir: &Path) -> Result<Sqlite, StoreError> {
        let db = Database::open(data_dir, "sessions.db", SCHEMA, SCHEMA_VERSION)?;
        Ok(Sqlite { db })
    }
}

impl super::Store for Sqlite {
    type Tx<'a> = Batch<'a>;

    fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        self.db.begin()
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.db.probe()
    }

    fn reads(&self) -> Reads {
        Reads::Sqlite(self.db.readers())
    }

    fn committed(&mut self, _after: u64) -> Result<Folded, StoreError> {
        // Nobody else writes here.
        Ok(Folded::default())
    }

    fn listen(
        &self,
        _changed: Box<dyn Fn() -> bool + Send + 'static>,
    ) -> Option<BoxFuture<'static, ()>> {
        None
    }

    fn elector(&self) -> Option<Elector> {
        None
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let conn = self.db.conn();
        let mut loaded = Loaded {
            head: self.db.head()?,
            ..Default::default()
        };
        let mut stmt = conn.prepare("SELECT body FROM sessions WHERE state <> 3")?;
        for body in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))? {
            loaded.sessions.push(decode(&body?)?);
        }
        let mut stmt = conn.prepare("SELECT interaction_id, media FROM interaction_media")?;
        for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
            let (interaction, media) = row?;
            loaded
                .mirror
                .apply(&MirrorChange::Media { interaction, media });
        }
        let mut stmt = conn.prepare("SELECT tenant, agent_id, interaction_id FROM holdings")?;
        for row in stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })? {
            let (tenant, agent, interaction) = row?;
            loaded.mirror.apply(&MirrorChange::Hold {
                agent: agent_key(&tenant, &agent),
                interaction,
            });
        }
        loaded.cursor = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'relay_cursor'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0) as u64;
        Ok(loaded)
    }
}

impl Rows for Batch<'_> {
    fn save_session(&mut self, s: &Session, _was: Option<u64>) -> Result<(), StoreError> {
        self.statement(
                "INSERT INTO sessions (session_id, tenant, agent_id, state, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (session_id) DO UPDATE SET state = excluded.state, body = excluded.body",
            )?
            .execute(params![
                s.session_id,
                s.tenant,
                s.agent_id,
                s.state,
                s.encode_to_vec()
            ])?;
        Ok(())
    }

    fn save_mirror(&mut self, change: &MirrorChange) -> Result<(), StoreError> {
        match change {
            MirrorChange::Media { interaction, media } => {
                self.statement(
                    "INSERT INTO interaction_media (interaction_id, media) VALUES (?1, ?2)
                     ON CONFLICT (interaction_id) DO UPDATE SET media = excluded.media",
                )?
                .execute(params![interaction, media])?;
            }
            MirrorChange::Hold { agent, interaction } => {
                self.statement(
                    "INSERT OR IGNORE INTO holdings (tenant, agent_id, interaction_id) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![agent.0, agent.1, interaction])?;
            }
            MirrorChange::Release { agent, interaction } => {
                self.statement(
                    "DELETE FROM holdings WHERE tenant = ?1 AND agent_id = ?2 AND interaction_id = ?3",
                )?
                .execute(params![agent.0, agent.1, interaction])?;
            }
            MirrorChange::Forget { interaction } => {
                self.statement("DELETE FROM holdings WHERE interaction_id = ?1")?
                    .execute([interaction])?;
                self.statement("DELETE FROM interaction_media WHERE interaction_id = ?1")?
                    .execute([interaction])?;
            }
        }
        Ok(())
    }

    fn save_cursor(&mut self, _from: u64, cursor: u64) -> Result<(), StoreError> {
        self.statement(
            "INSERT INTO meta (key, value) VALUES ('relay_cursor', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute([cursor as i64])?;
        Ok(())
    }

    fn sessions(&mut self, ids: &[String]) -> Result<Vec<Session>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(one_session(self.statement(SESSION)?, id)?);
        }
        Ok(found)
    }
}

/// A session in any state, disposed ones included.
pub(super) fn session(readers: &Readers, session_id: &str) -> Result<Option<Session>, StoreError> {
    readers.with(|c| one_session(&mut *c.prepare_cached(SESSION)?, session_id))
}

/// A session's row, by its id.
static SESSION: &str = "SELECT body FROM sessions WHERE session_id = ?1";

/// The session, with `stmt` prepared from [`SESSION`].
fn one_session(
    stmt: &mut rusqlite::Statement<'_>,
    session_id: &str,
) -> Result<Option<Session>, StoreError> {
    let body = stmt
        .query_row([session_id], |r| r.get::<_, Vec<u8>>(0))
        .optional()?;
    body.map(|b| decode(&b)).transpose()
}
