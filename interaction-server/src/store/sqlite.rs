//! SQLite implementation of the store.

use crate::domain::{Agent, Interaction, Micros, Phase, State, party_key};
use crate::log::LogEntry;
use fs4::fs_std::FileExt;
use ixn_proto::events::Event;
use ixn_proto::interaction as pb;
use prost::Message;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The schema version this build writes; a database with a newer one is refused.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- The log. `body` is the encoded Event; the other columns let a replay filter without decoding.
CREATE TABLE IF NOT EXISTS events (
    sequence INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    interaction_id TEXT,
    reporting INTEGER NOT NULL,
    recipients TEXT NOT NULL,
    submitter TEXT,
    body BLOB NOT NULL
);
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
-- Outcomes of successful mutating requests, kept at least 24 hours (AIP-155).
CREATE TABLE IF NOT EXISTS requests (
    tenant TEXT NOT NULL,
    subject TEXT NOT NULL,
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    response BLOB NOT NULL,
    created_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, subject, method, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_created ON requests (created_us);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {0} is in use by another process")]
    Locked(PathBuf),
    #[error(
        "the database was written by a newer version (schema {found}, this build knows {known})"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored row cannot be decoded: {0}")]
    Corrupt(String),
}

/// A recorded outcome of a request.
#[derive(Clone, Debug)]
pub struct StoredRequest {
    pub fingerprint: Vec<u8>,
    pub response: Vec<u8>,
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

/// The writer's side of the store. Owned by the engine's thread.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Held for the life of the process: a second process on the same directory refuses to start.
    _lock: Arc<File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is synced at every commit, so an acknowledged transition survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "busy_timeout", 5_000)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if need be) the store in `data_dir`, locking the directory.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let lock = File::create(data_dir.join("LOCK"))?;
        if !lock.try_lock_exclusive().unwrap_or(false) {
            return Err(StoreError::Locked(data_dir.to_owned()));
        }
        let path = data_dir.join("interactions.db");
        let conn = open_writer(&path)?;
        conn.execute_batch(SCHEMA)?;
        let found: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    found: v,
                    known: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION],
                )?;
            }
        }
        Ok(Store {
            conn,
            path,
            _lock: Arc::new(lock),
        })
    }

    /// Read-only connections on the same database.
    pub fn readers(&self) -> Readers {
        Readers {
            path: self.path.clone(),
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The state to decide against: every agent and every live interaction; and the head of the log.
    pub fn load(&self) -> Result<(State, u64), StoreError> {
        let mut state = State::default();
        let mut stmt = self.conn.prepare("SELECT body FROM agents")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        for body in rows {
            let agent = pb::Agent::decode(body?.as_slice())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            state.insert_agent(Agent::from_proto(&agent));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT body, queued_seq FROM interactions WHERE state <> 5")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (body, queued_seq) = row?;
            state.insert(decode_interaction(&body, queued_seq as u64)?);
        }
        let head: Option<i64> =
            self.conn
                .query_row("SELECT max(sequence) FROM events", [], |r| r.get(0))?;
        Ok((state, head.unwrap_or(0) as u64))
    }

    /// Starts the batch's transaction.
    pub fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(Batch { tx })
    }
}

/// One open transaction of the writer: everything in it commits together or not at all.
pub struct Batch<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl Batch<'_> {
    pub fn request(
        &self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT fingerprint, response FROM requests
             WHERE tenant = ?1 AND subject = ?2 AND method = ?3 AND request_id = ?4",
        )?;
        Ok(stmt
            .query_row(params![tenant, subject, method, request_id], |r| {
                Ok(StoredRequest {
                    fingerprint: r.get(0)?,
                    response: r.get(1)?,
                })
            })
            .optional()?)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record_request(
        &self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
        fingerprint: &[u8],
        response: &[u8],
        now: Micros,
    ) -> Result<(), StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO requests (tenant, subject, method, request_id, fingerprint, response, created_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        stmt.execute(params![
            tenant,
            subject,
            method,
            request_id,
            fingerprint,
            response,
            now
        ])?;
        Ok(())
    }

    /// A stopped interaction the state no longer holds.
    pub fn interaction(&self, id: Uuid) -> Result<Option<Interaction>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT body, queued_seq FROM interactions WHERE id = ?1")?;
        let row = stmt
            .query_row([id.to_string()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?;
        row.map(|(body, q)| decode_interaction(&body, q as u64))
            .transpose()
    }

    pub fn append(&self, entry: &LogEntry) -> Result<(), StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO events (sequence, tenant, kind, interaction_id, reporting, recipients, submitter, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        stmt.execute(params![
            entry.sequence as i64,
            entry.tenant,
            entry.kind,
            entry.interaction_id,
            entry.reporting,
            encode_recipients(&entry.recipients),
            entry.submitter,
            entry.event.encode_to_vec(),
        ])?;
        Ok(())
    }

    pub fn save_interaction(&self, i: &Interaction) -> Result<(), StoreError> {
        let mut stmt = self.tx.prepare_cached(
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

    pub fn save_agent(&self, agent: &pb::Agent) -> Result<(), StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO agents (tenant, agent_id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant, agent_id) DO UPDATE SET body = excluded.body",
        )?;
        stmt.execute(params![agent.tenant, agent.agent_id, agent.encode_to_vec()])?;
        Ok(())
    }

    /// Forgets request outcomes recorded before `before`.
    pub fn prune_requests(&self, before: Micros) -> Result<usize, StoreError> {
        Ok(self
            .tx
            .execute("DELETE FROM requests WHERE created_us < ?1", [before])?)
    }

    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit()?)
    }
}

/// The `recipients` column: the party keys as a JSON array. A key may contain spaces (names allow
/// them), so a separator would split one key into two.
fn encode_recipients(keys: &[String]) -> String {
    serde_json::to_string(keys).expect("strings encode")
}

fn decode_recipients(column: &str) -> Result<Vec<String>, StoreError> {
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

fn decode_interaction(body: &[u8], queued_seq: u64) -> Result<Interaction, StoreError> {
    let p = pb::Interaction::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Interaction::from_proto(&p, queued_seq)
        .ok_or_else(|| StoreError::Corrupt(format!("interaction {}", p.interaction_id)))
}

/// A pool of read-only connections. Reads run on blocking threads and see only committed data.
#[derive(Clone)]
pub struct Readers {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").field("path", &self.path).finish()
    }
}

/// Events read from the store in one short transaction at most (a long read would hold back WAL
/// checkpoints).
pub const REPLAY_CHUNK: usize = 512;

impl Readers {
    fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = self.pool.lock().expect("reader pool").pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.pragma_update(None, "busy_timeout", 5_000)?;
                c
            }
        };
        let result = f(&conn);
        self.pool.lock().expect("reader pool").push(conn);
        result
    }

    /// Runs a read on a blocking thread.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Readers) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let readers = self.clone();
        tokio::task::spawn_blocking(move || f(&readers))
            .await
            .unwrap_or_else(|e| Err(StoreError::Corrupt(format!("read task failed: {e}"))))
    }

    /// The interaction, in any state, if it belongs to `tenant`.
    pub fn interaction(
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
    pub fn list(
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

    /// Up to `limit` events after `after`, in sequence order.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT sequence, tenant, kind, interaction_id, reporting, recipients, submitter, body
                 FROM events WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, bool>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Vec<u8>>(7)?,
                ))
            })?;
            rows.map(|row| {
                let (sequence, tenant, kind, interaction_id, reporting, recipients, submitter, body) =
                    row?;
                let event =
                    Event::decode(body.as_slice()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(Arc::new(LogEntry {
                    sequence: sequence as u64,
                    tenant,
                    kind: ixn_proto::event::KINDS
                        .iter()
                        .find(|k| **k == kind)
                        .copied()
                        .unwrap_or("unknown"),
                    interaction_id,
                    reporting,
                    recipients: decode_recipients(&recipients)?,
                    submitter,
                    event,
                }))
            })
            .collect()
        })
    }
}

impl Readers {
    /// The agent's committed row.
    pub fn agent(&self, tenant: &str, agent_id: &str) -> Result<Option<pb::Agent>, StoreError> {
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
