//! The SQLite plumbing both services' stores share.
//!
//! One process owns a data directory (a lock file says so). Inside it, one writer connection commits
//! each batch in one transaction (WAL, `synchronous=FULL`: an acknowledged change survives power
//! loss), and read-only connections serve reads, which see only what is committed. Every service's
//! database holds the same two tables besides its own: `events` (its log) and `request_outcomes`
//! (outcomes of successful requests, for idempotent retries). Checkpoints run mostly on a thread of
//! their own ([`Checkpoints`]).

use crate::clock::Micros;
use crate::log::LogEntry;
use crate::store::{BoxFuture, History, encode_recipients, entry_from_row};
pub use crate::store::{REPLAY_CHUNK, StoreError, StoredRequest, next_batch};
use fs4::fs_std::FileExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const COMMON_SCHEMA: &str = "
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
-- Outcomes of successful mutating requests, kept at least 24 hours (AIP-155). The request id
-- leads the key: ids that grow with time (UUIDv7) are added at the end of the index, where a
-- batch's outcomes share a few pages, instead of each under its caller somewhere else.
CREATE TABLE IF NOT EXISTS request_outcomes (
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    subject TEXT NOT NULL,
    method TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    response BLOB NOT NULL,
    created_us INTEGER NOT NULL,
    PRIMARY KEY (request_id, tenant, subject, method)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS request_outcomes_created ON request_outcomes (created_us);
";

/// The recorded outcome of a request, by its key (tenant, subject, method, request id).
static LOOKUP_REQUEST: &str = "SELECT fingerprint, response FROM request_outcomes
     WHERE tenant = ?1 AND subject = ?2 AND method = ?3 AND request_id = ?4";

/// The recorded outcome of a request, with `stmt` prepared from [`LOOKUP_REQUEST`].
fn lookup_request(
    stmt: &mut rusqlite::Statement<'_>,
    tenant: &str,
    subject: &str,
    method: &str,
    request_id: &str,
) -> Result<Option<StoredRequest>, StoreError> {
    Ok(stmt
        .query_row(params![tenant, subject, method, request_id], |r| {
            Ok(StoredRequest {
                fingerprint: r.get(0)?,
                response: r.get(1)?,
            })
        })
        .optional()?)
}

/// How many pages the WAL holds before it is checkpointed into the database (SQLite's automatic
/// checkpoint uses 1,000): fewer, larger checkpoints copy a page written by many commits once.
const CHECKPOINT_PAGES: std::ffi::c_int = 4_000;

/// Checkpoints, mostly off the writer. SQLite's automatic checkpoint copies the whole WAL into the
/// database inside the commit that fills it; here a thread with a connection of its own does that
/// copy (passive: it waits for no one) while the writer goes on committing. The WAL can only start
/// over once every frame in it is copied, and the writer keeps adding frames during the copy, so
/// when the thread is done the writer copies what it added meanwhile itself, between two batches
/// (a short checkpoint), and its next transaction starts the WAL over.
struct Checkpoints {
    /// Wakes the thread; one pending wake-up is enough, as a checkpoint copies the whole WAL.
    wake: std::sync::mpsc::SyncSender<()>,
    /// Set by the thread when a copy is done, taken by the writer.
    copied: Arc<std::sync::atomic::AtomicBool>,
    /// The thread, joined when the database is closed.
    thread: std::thread::JoinHandle<()>,
}

impl Checkpoints {
    /// Starts the thread for the database at `path`. It ends when `wake`'s sender is dropped.
    fn start(path: &Path) -> Result<Checkpoints, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "busy_timeout", 5_000)?;
        // A checkpoint syncs the database file before the WAL may be reused.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let (wake, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let copied = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = copied.clone();
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    let outcome = checkpoint(&conn);
                    // Wake-ups from commits made during the copy ask for nothing more: the writer
                    // copies those frames itself, and a commit after that wakes the thread anew.
                    while asked.try_recv().is_ok() {}
                    match outcome {
                        Ok(Checkpointed::Done { log, copied }) => {
                            tracing::debug!(%name, log, copied, "checkpointed");
                            done.store(true, std::sync::atomic::Ordering::Release);
                        }
                        // Another checkpoint was running (the writer's): the next commit past
                        // the threshold asks again.
                        Ok(Checkpointed::Busy) => {}
                        Err(e) => tracing::warn!(%name, error = %e, "a checkpoint failed"),
                    }
                }
            })?;
        Ok(Checkpoints {
            wake,
            copied,
            thread,
        })
    }
}

/// What a passive checkpoint did.
enum Checkpointed {
    /// It ran: the WAL's frames, and how many of them are in the database now.
    Done { log: i64, copied: i64 },
    /// Another connection was checkpointing.
    Busy,
}

/// A passive checkpoint on `conn`.
fn checkpoint(conn: &Connection) -> Result<Checkpointed, StoreError> {
    Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(match r.get::<_, i64>(0)? {
            0 => Checkpointed::Done {
                log: r.get(1)?,
                copied: r.get(2)?,
            },
            _ => Checkpointed::Busy,
        })
    })?)
}

/// The writer's connection to a service's database.
pub struct Database {
    conn: Connection,
    path: PathBuf,
    /// Set when the checkpoint thread has copied the WAL: the writer copies the rest.
    copied: Arc<std::sync::atomic::AtomicBool>,
    /// The checkpoint thread, which ends when the WAL hook (holding its wake-up sender) goes.
    checkpointer: Option<std::thread::JoinHandle<()>>,
    /// The name of the fault point that fails this database's commits in tests.
    commit_point: String,
    /// Held for the life of the process: a second process on the same directory refuses to start.
    _lock: File,
}

impl Drop for Database {
    /// The checkpoint thread is done with the file before the directory's lock is released, so
    /// that whoever opens it next finds no connection of this process still on it.
    fn drop(&mut self) {
        // Dropping the hook drops the thread's wake-up sender, and the thread ends.
        let _ = self.conn.wal_hook(
            None::<fn(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()>>,
        );
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .finish()
    }
}

impl Database {
    /// Opens (creating if need be) `file` in `data_dir`, locking the directory, and applies the
    /// common schema and the service's own (`schema`, at `version`).
    pub fn open(
        data_dir: &Path,
        file: &str,
        schema: &str,
        version: i64,
    ) -> Result<Database, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let lock = File::create(data_dir.join("LOCK"))?;
        if !lock.try_lock_exclusive().unwrap_or(false) {
            return Err(StoreError::Locked(data_dir.to_owned()));
        }
        let path = data_dir.join(file);
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "busy_timeout", 5_000)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the WAL is synced at every commit, so an acknowledged change survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(COMMON_SCHEMA)?;
        let found: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(v) = found
            && v > version
        {
            return Err(StoreError::NewerSchema {
                found: v,
                known: version,
            });
        }
        if found != Some(version) {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Outcomes recorded by a build that keyed them by caller first move to the new table.
            let legacy: i64 = tx.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'requests'",
                [],
                |r| r.get(0),
            )?;
            if legacy > 0 {
                tx.execute_batch(
                    "INSERT OR IGNORE INTO request_outcomes
                         (request_id, tenant, subject, method, fingerprint, response, created_us)
                         SELECT request_id, tenant, subject, method, fingerprint, response, created_us
                         FROM requests;
                     DROP TABLE requests;",
                )?;
            }
            // A build that knows an older version refuses the file from now on.
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [version],
            )?;
            tx.commit()?;
        }
        conn.execute_batch(schema)?;
        // Replaces SQLite's automatic checkpoint, which would run inside the writer's commits.
        let Checkpoints {
            wake,
            copied,
            thread,
        } = Checkpoints::start(&path)?;
        conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
            if pages >= CHECKPOINT_PAGES
                && let Err(std::sync::mpsc::TrySendError::Disconnected(())) = wake.try_send(())
            {
                // The thread is gone (it panicked): the writer checkpoints itself, as SQLite would.
                wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE)?;
            }
            Ok(())
        }))?;
        Ok(Database {
            copied,
            checkpointer: Some(thread),
            conn,
            path,
            commit_point: format!("commit {file}"),
            _lock: lock,
        })
    }

    /// The writer connection, for loading at start.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The sequence of the last event in the log (0 when empty).
    pub fn head(&self) -> Result<u64, StoreError> {
        let head: Option<i64> =
            self.conn
                .query_row("SELECT max(sequence) FROM events", [], |r| r.get(0))?;
        Ok(head.unwrap_or(0) as u64)
    }

    /// Read-only connections on the same database.
    pub fn readers(&self) -> Readers {
        Readers {
            path: self.path.clone(),
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts a batch's transaction.
    pub fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        if self
            .copied
            .swap(false, std::sync::atomic::Ordering::Acquire)
        {
            // The checkpoint thread copied the WAL; what was committed since is copied here, with
            // no commit in between, so that this transaction can start the WAL over.
            if let Err(e) = checkpoint(&self.conn) {
                tracing::warn!(path = %self.path.display(), error = %e, "a checkpoint failed");
            }
        }
        // Unchecked: the transaction borrows the connection shared, as the statements the batch
        // holds do; `&mut self` still keeps a second batch from starting beside this one.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        Ok(Batch {
            held: Vec::new(),
            conn: &self.conn,
            tx,
            commit_point: &self.commit_point,
        })
    }

    /// Whether the store takes a write: a one-row transaction, committed (and synced).
    pub fn probe(&mut self) -> Result<(), StoreError> {
        let mut batch = self.begin()?;
        batch
            .statement("UPDATE meta SET value = value WHERE key = 'schema'")?
            .execute([])?;
        batch.commit()
    }
}

/// One open transaction of the writer: everything in it commits together or not at all.
pub struct Batch<'a> {
    /// The statements this batch has run, held until it ends ([`Batch::statement`]). First, so
    /// that they go back to the connection's cache before the transaction ends.
    held: Vec<(&'static str, rusqlite::CachedStatement<'a>)>,
    conn: &'a Connection,
    tx: rusqlite::Transaction<'a>,
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    commit_point: &'a str,
}

impl<'a> Batch<'a> {
    /// The transaction, for a service's own tables.
    pub fn tx(&self) -> &rusqlite::Transaction<'_> {
        &self.tx
    }

    /// The statement for `sql`, prepared (or taken from the connection's cache) the first time this
    /// batch runs it and held until the batch ends. A batch writes the same few statements for
    /// every command in it; taking one from the cache for each row hashes its text and copies it
    /// into a new key, and gives it back (hashed again) after the row, which costs more than
    /// binding the row. Held statements are found by the address of their text, so `sql` is a
    /// literal or a `static` (two copies of one text are only prepared twice).
    pub fn statement(
        &mut self,
        sql: &'static str,
    ) -> Result<&mut rusqlite::Statement<'a>, StoreError> {
        let at = match self
            .held
            .iter()
            .position(|(held, _)| std::ptr::eq(*held, sql))
        {
            Some(at) => at,
            None => {
                self.held.push((sql, self.conn.prepare_cached(sql)?));
                self.held.len() - 1
            }
        };
        Ok(&mut self.held[at].1)
    }

    /// The recorded outcome of a request, if any (including one recorded earlier in this batch).
    pub fn request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StoreError> {
        lookup_request(
            self.statement(LOOKUP_REQUEST)?,
            tenant,
            subject,
            method,
            request_id,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record_request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
        fingerprint: &[u8],
        response: &[u8],
        now: Micros,
    ) -> Result<(), StoreError> {
        self.statement(
            "INSERT INTO request_outcomes (tenant, subject, method, request_id, fingerprint, response, created_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
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

    /// Forgets request outcomes recorded before `before`.
    pub fn prune_requests(&self, before: Micros) -> Result<usize, StoreError> {
        Ok(self.tx.execute(
            "DELETE FROM request_outcomes WHERE created_us < ?1",
            [before],
        )?)
    }

    /// Appends one event to the log.
    pub fn append(&mut self, entry: &LogEntry) -> Result<(), StoreError> {
        self.statement(
            "INSERT INTO events (sequence, tenant, kind, interaction_id, reporting, recipients, submitter, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            entry.sequence as i64,
            entry.tenant,
            entry.kind,
            entry.interaction_id,
            entry.reporting,
            encode_recipients(&entry.recipients),
            entry.submitter,
            entry.event.bytes(),
        ])?;
        Ok(())
    }

    pub fn commit(self) -> Result<(), StoreError> {
        // Tests make the store unreachable with `commit <file>` (e.g. `commit sessions.db`).
        #[cfg(feature = "failpoints")]
        if fail::eval(self.commit_point, |_| ()).is_some() {
            return Err(StoreError::Io(std::io::Error::other(
                "the store is unreachable (fault point)",
            )));
        }
        let Batch { held, tx, .. } = self;
        drop(held);
        Ok(tx.commit()?)
    }
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

impl Readers {
    /// Runs `f` on a pooled read-only connection (blocking: call from a blocking thread).
    pub fn with<R>(
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

    /// The recorded outcome of a request, if committed.
    pub fn request(
        &self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(LOOKUP_REQUEST)?;
            lookup_request(&mut stmt, tenant, subject, method, request_id)
        })
    }

    /// Up to `limit` events after `after`, in sequence order.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        self.with(|c| events_after(c, after, limit))
    }
}

/// Up to `limit` events after `after`, in sequence order, on any connection.
fn events_after(
    c: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<Arc<LogEntry>>, StoreError> {
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
        let (sequence, tenant, kind, interaction_id, reporting, recipients, submitter, body) = row?;
        entry_from_row(
            sequence,
            tenant,
            &kind,
            interaction_id,
            reporting,
            &recipients,
            submitter,
            body.into(),
        )
    })
    .collect()
}

impl History for Readers {
    fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<LogEntry>>, StoreError>> {
        Box::pin(self.run(move |r| r.events_after(after, limit)))
    }
}

impl crate::store::Batch for Batch<'_> {
    fn shared_head(&self) -> Option<u64> {
        None
    }

    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        events_after(&self.tx, after, limit)
    }

    fn request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StoreError> {
        Batch::request(self, tenant, subject, method, request_id)
    }

    fn record_request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
        fingerprint: &[u8],
        response: &[u8],
        now: Micros,
    ) -> Result<(), StoreError> {
        Batch::record_request(
            self,
            tenant,
            subject,
            method,
            request_id,
            fingerprint,
            response,
            now,
        )
    }

    fn prune_requests(&mut self, before: Micros) -> Result<(), StoreError> {
        Batch::prune_requests(self, before).map(drop)
    }

    fn append(&mut self, entry: &LogEntry) -> Result<(), StoreError> {
        Batch::append(self, entry)
    }

    fn commit(self) -> Result<(), StoreError> {
        Batch::commit(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled SQLite is built with the options `.cargo/config.toml` gives it (fdatasync for
    /// commits, no global allocation statistics). `HAVE_FDATASYNC` is not among the options SQLite
    /// reports, but it comes in the same variable as `DEFAULT_MEMSTATUS`, which is.
    #[test]
    fn the_bundled_sqlite_has_the_workspace_build_options() {
        let conn = Connection::open_in_memory().unwrap();
        let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "LIBSQLITE3_FLAGS did not reach the build: {options:?}"
        );
    }

    /// Outcomes recorded by a build that kept them in `requests` (keyed by caller first) are
    /// still answered after the upgrade, from the new table, and that build refuses the file now.
    #[test]
    fn outcomes_in_the_old_table_move_to_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("t.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE requests (
                    tenant TEXT NOT NULL, subject TEXT NOT NULL, method TEXT NOT NULL,
                    request_id TEXT NOT NULL, fingerprint BLOB NOT NULL, response BLOB NOT NULL,
                    created_us INTEGER NOT NULL,
                    PRIMARY KEY (tenant, subject, method, request_id)
                 ) WITHOUT ROWID;
                 CREATE INDEX requests_created ON requests (created_us);
                 INSERT INTO requests VALUES ('t1', 'a1', 'Submit', 'r-1', x'01', x'0203', 5);
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT INTO meta VALUES ('schema', 1);",
            )
            .unwrap();
        }
        let mut db = Database::open(dir.path(), "t.db", "", 2).unwrap();
        let mut tx = db.begin().unwrap();
        let found = tx.request("t1", "a1", "Submit", "r-1").unwrap().unwrap();
        assert_eq!(found.fingerprint, [1]);
        assert_eq!(found.response, [2, 3]);
        assert!(tx.request("t1", "a2", "Submit", "r-1").unwrap().is_none());
        let left: i64 = tx
            .tx()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('requests', 'requests_created')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
        tx.commit().unwrap();
        drop(db);
        assert!(matches!(
            Database::open(dir.path(), "t.db", "", 1),
            Err(StoreError::NewerSchema { found: 2, known: 1 })
        ));
        let mut db = Database::open(dir.path(), "t.db", "", 2).unwrap();
        let mut tx = db.begin().unwrap();
        assert!(tx.request("t1", "a1", "Submit", "r-1").unwrap().is_some());
    }

    /// A batch takes each statement it runs from the cache once and holds it for every row after:
    /// rows written through held statements are there once the batch commits, and gone with a
    /// batch dropped uncommitted (the statements go back before the transaction rolls back).
    #[test]
    fn a_batch_holds_each_statement_it_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Database::open(dir.path(), "t.db", "", 1).unwrap();
        let entry = |sequence| LogEntry {
            sequence,
            tenant: "t1".into(),
            kind: "InteractionSubmitted",
            interaction_id: None,
            reporting: false,
            recipients: vec!["a:agent-1".into()],
            submitter: None,
            event: crate::wire::SharedEvent::new(crate::events::Event {
                sequence,
                ..Default::default()
            }),
        };
        let mut batch = db.begin().unwrap();
        for sequence in 1..=3 {
            batch.append(&entry(sequence)).unwrap();
            let id = format!("r-{sequence}");
            batch
                .record_request("t1", "a1", "Submit", &id, &[1], &[2], 5)
                .unwrap();
            assert!(batch.request("t1", "a1", "Submit", &id).unwrap().is_some());
        }
        assert_eq!(batch.held.len(), 3, "one held statement per text");
        batch.commit().unwrap();
        assert_eq!(db.head().unwrap(), 3);

        let mut batch = db.begin().unwrap();
        batch.append(&entry(4)).unwrap();
        batch
            .record_request("t1", "a1", "Submit", "r-4", &[1], &[2], 5)
            .unwrap();
        drop(batch);
        assert_eq!(db.head().unwrap(), 3);
        let batch = db.begin().unwrap();
        let outcomes: i64 = batch
            .tx()
            .query_row("SELECT count(*) FROM request_outcomes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(outcomes, 3);
    }

    /// The WAL is checkpointed (off the writer) and reused: it stays near its checkpoint size
    /// however much is written, and what was written is all there after a reopen. Closing the
    /// database waits for the checkpoint thread, so the writer's connection is the last one and
    /// takes the WAL with it.
    #[test]
    fn the_wal_is_checkpointed_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![7u8; 2_000];
        let written: u64 = 400;
        {
            let mut db = Database::open(dir.path(), "t.db", "", 1).unwrap();
            for batch in 0..written {
                let tx = db.begin().unwrap();
                for i in 0..100 {
                    tx.tx()
                        .execute(
                            "INSERT INTO events (sequence, tenant, kind, reporting, recipients, body)
                             VALUES (?1, 't', 'k', 0, '', ?2)",
                            params![(batch * 100 + i + 1) as i64, body],
                        )
                        .unwrap();
                }
                tx.commit().unwrap();
            }
            // 40,000 rows of 2 kB: some 21,000 pages, five times what a checkpoint waits for. A
            // WAL never started over would hold them all.
            let wal = std::fs::metadata(dir.path().join("t.db-wal"))
                .unwrap()
                .len();
            let pages = wal / 4_096;
            let total = written * 100 * body.len() as u64 / 4_096;
            assert!(pages < total / 2, "the WAL holds {pages} of {total} pages");
            assert_eq!(db.head().unwrap(), written * 100);
        }
        assert!(!dir.path().join("t.db-wal").exists());
        let db = Database::open(dir.path(), "t.db", "", 1).unwrap();
        assert_eq!(db.head().unwrap(), written * 100);
    }
}
