//! session-service's tables, on the shared SQLite plumbing (`ixn_proto::sqlite`: the log, request
//! outcomes, the directory lock): sessions, the mirror of what agents hold, and the cursor of the
//! relay in interaction-server's log.

use crate::domain::{Mirror, MirrorChange, agent_key};
use ixn_proto::session::{Session, SessionState};
use ixn_proto::sqlite::{Batch, Database, Readers, StoreError};
use prost::Message;
use rusqlite::{OptionalExtension, params};
use std::path::Path;

const SCHEMA_VERSION: i64 = 1;

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

/// What the service keeps in memory, read back at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sessions: Vec<Session>,
    pub mirror: Mirror,
    /// The last interaction-server sequence relayed.
    pub cursor: u64,
    pub head: u64,
}

#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let db = Database::open(data_dir, "sessions.db", SCHEMA, SCHEMA_VERSION)?;
        Ok(Store { db })
    }

    pub fn readers(&self) -> Readers {
        self.db.readers()
    }

    pub fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        self.db.begin()
    }

    /// Whether the store takes a write.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        self.db.probe()
    }

    /// Every live session, the mirror, the relay cursor and the head of the log.
    pub fn load(&self) -> Result<Loaded, StoreError> {
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

fn decode(body: &[u8]) -> Result<Session, StoreError> {
    Session::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// session-service's rows, written in the writer's batch.
pub trait Rows {
    fn save_session(&self, s: &Session) -> Result<(), StoreError>;
    fn save_mirror(&self, change: &MirrorChange) -> Result<(), StoreError>;
    fn save_cursor(&self, cursor: u64) -> Result<(), StoreError>;
}

impl Rows for Batch<'_> {
    fn save_session(&self, s: &Session) -> Result<(), StoreError> {
        self.tx()
            .prepare_cached(
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

    fn save_mirror(&self, change: &MirrorChange) -> Result<(), StoreError> {
        let tx = self.tx();
        match change {
            MirrorChange::Media { interaction, media } => {
                tx.prepare_cached(
                    "INSERT INTO interaction_media (interaction_id, media) VALUES (?1, ?2)
                     ON CONFLICT (interaction_id) DO UPDATE SET media = excluded.media",
                )?
                .execute(params![interaction, media])?;
            }
            MirrorChange::Hold { agent, interaction } => {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO holdings (tenant, agent_id, interaction_id) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![agent.0, agent.1, interaction])?;
            }
            MirrorChange::Release { agent, interaction } => {
                tx.prepare_cached(
                    "DELETE FROM holdings WHERE tenant = ?1 AND agent_id = ?2 AND interaction_id = ?3",
                )?
                .execute(params![agent.0, agent.1, interaction])?;
            }
            MirrorChange::Forget { interaction } => {
                tx.prepare_cached("DELETE FROM holdings WHERE interaction_id = ?1")?
                    .execute([interaction])?;
                tx.prepare_cached("DELETE FROM interaction_media WHERE interaction_id = ?1")?
                    .execute([interaction])?;
            }
        }
        Ok(())
    }

    fn save_cursor(&self, cursor: u64) -> Result<(), StoreError> {
        self.tx()
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('relay_cursor', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([cursor as i64])?;
        Ok(())
    }
}

/// session-service's reads.
pub trait Reads {
    /// A session in any state, disposed ones included.
    fn session(&self, session_id: &str) -> Result<Option<Session>, StoreError>;
}

impl Reads for Readers {
    fn session(&self, session_id: &str) -> Result<Option<Session>, StoreError> {
        self.with(|c| {
            let body = c
                .prepare_cached("SELECT body FROM sessions WHERE session_id = ?1")?
                .query_row([session_id], |r| r.get::<_, Vec<u8>>(0))
                .optional()?;
            body.map(|b| decode(&b)).transpose()
        })
    }
}

/// Whether a session is over.
pub fn is_disposed(s: &Session) -> bool {
    s.state() == SessionState::Disposed
}
