//! The PostgreSQL plumbing both services' stores share, for several replicas of a service on one
//! database (or schema: the URL's `options=-csearch_path=…` names it).
//!
//! - Every service's first migration creates the common tables besides its own: `log_head` (one row,
//!   the head of the log), `events` (the log) and `requests` (the outcomes of requests).
//! - Migrations are versioned (refinery) and applied at start under an advisory lock, so replicas
//!   starting together apply them once; a database migrated by a newer build is refused.
//! - The writers of all replicas are ordered by the row lock on the log's head (`log_head`), taken
//!   first in every batch's transaction and held until it commits. Sequences are assigned under it,
//!   so they are contiguous and no lower sequence can become visible after a higher one; and a
//!   replica folds in what others committed before it decides, so it decides against the current
//!   state.
//! - The transaction's changes are buffered and written at commit, a statement per table, so a batch
//!   costs a few round trips whatever its size.
//! - Each commit notifies the log's channel (naming the replica and the new head); every replica
//!   listens on a dedicated connection and reads the log from its cursor when another one commits,
//!   and again after any reconnect.
//! - Reads go through a pool and see only what is committed.

use crate::clock::Micros;
use crate::log::LogEntry;
use crate::store::{
    BoxFuture, History, REPLAY_CHUNK, RequestKey, StoreError, StoredRequest, encode_recipients,
    entry_from_row,
};
use futures::{StreamExt, TryFutureExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};

/// Readers' pool size: reads are short, and a replica is one of several.
const POOL_SIZE: usize = 16;
/// Connections holding advisory locks at once (each for the length of one operation). Apart from
/// the readers' pool: an operation holding a lock still reads, and must never wait for a reader's
/// connection that another lock holder has.
const LOCKS_POOL_SIZE: usize = 16;
/// How long the listener waits before reconnecting.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// The versioned migrations of a service, as refinery embeds them.
pub struct Migrations {
    pub runner: refinery::Runner,
    /// Where the applied versions are recorded (a service's own, in case two share a schema).
    pub table: &'static str,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrations")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Parses a connection URL (`postgres://…` or `host=… dbname=…`).
pub fn config(url: &str) -> Result<Config, StoreError> {
    url.parse::<Config>()
        .map_err(|e| StoreError::Pool(format!("the database URL is not valid: {e}")))
}

/// `url` with the connection's `search_path` set to `schema`: a schema of its own on a shared
/// database (tests, benchmarks).
pub fn in_schema(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-csearch_path%3D{schema}")
}

/// Checks a URL as a setting (clap's `value_parser`).
pub fn parse_url(url: &str) -> Result<String, String> {
    config(url)
        .map(|_| url.to_owned())
        .map_err(|e| e.to_string())
}

/// What a log line may say of a URL: no password.
pub fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

async fn connect(config: &Config) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The writer's own runtime: its connection is driven on the writer's thread, inside each
/// `block_on`. A round trip is then one socket write and one wait in the writer's own poll, with no
/// hand-off to a runtime worker and back (two thread wake-ups per statement, which cost more than
/// the statement on a small machine). Between batches nothing drives the connection; it has
/// nothing in flight then, and [`Database::client`] lets it read what arrived (a closed socket)
/// before each batch.
struct WriterRuntime(Option<tokio::runtime::Runtime>);

impl WriterRuntime {
    fn new() -> Result<WriterRuntime, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(WriterRuntime(Some(rt)))
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.0.as_ref().expect("until dropped").block_on(future)
    }
}

impl Drop for WriterRuntime {
    fn drop(&mut self) {
        // A store may be dropped on a runtime thread (a test's, or a failed start), where an
        // ordinary runtime drop would block.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Bounds on the writer's connection. The writers' lock is held by an open transaction: one that a
/// stalled or cut-off replica leaves open is ended by the server, and a writer waiting for the lock
/// (or a statement that hangs) gives up, so health turns NOT_SERVING rather than everything
/// waiting for TCP to notice.
const WRITER_LIMITS: &str = "SET lock_timeout = '10s';
    SET statement_timeout = '30s';
    SET idle_in_transaction_session_timeout = '30s'";

async fn connect_writer(config: &Config) -> Result<Client, StoreError> {
    let client = connect(config).await?;
    client.batch_execute(WRITER_LIMITS).await?;
    Ok(client)
}

/// Applies the migrations the database lacks, under an advisory lock; refuses a newer database.
async fn migrate(config: &Config, mut migrations: Migrations) -> Result<(), StoreError> {
    // Any fixed key: the lock only keeps replicas that start together from migrating at once.
    const LOCK: i64 = 0x0069_786e_5f6d_6967; // "ixn_mig"
    let mut client = connect(config).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await?;
    let result = async {
        let known = migrations
            .runner
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .max()
            .unwrap_or(0);
        let exists: Option<String> = client
            .query_one("SELECT to_regclass($1)::text", &[&migrations.table])
            .await?
            .get(0);
        if exists.is_some() {
            let found: Option<i64> = client
                .query_one(
                    &format!("SELECT max(version)::bigint FROM {}", migrations.table),
                    &[],
                )
                .await?
                .get(0);
            if let Some(found) = found.filter(|f| *f > known) {
                return Err(StoreError::NewerSchema { found, known });
            }
        }
        migrations
            .runner
            .set_migration_table_name(migrations.table)
            .run_async(&mut client)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(())
    }
    .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await;
    result
}

/// A service's database: the writer's connection (driven from the writer's thread), the readers'
/// pool, and the log's notification channel.
pub struct Database {
    config: Config,
    /// The writer's connection, opened on the writer's thread at its first use.
    client: Option<Client>,
    statements: HashMap<&'static str, Statement>,
    rt: WriterRuntime,
    channel: String,
    /// Names this process in its notifications, so that it does not read back its own commits.
    replica: String,
    pool: Pool,
    /// Connections created only as advisory locks are taken ([`Pool::advisory_lock`]).
    locks: Pool,
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    commit_point: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &describe(&self.config))
            .field("channel", &self.channel)
            .finish()
    }
}

impl Database {
    /// Connects, brings the schema up to date, and opens the writer's connection and the pool.
    /// `name` names the service's fault point (`commit <name>`).
    pub async fn open(
        url: &str,
        migrations: Migrations,
        name: &str,
    ) -> Result<Database, StoreError> {
        let config = config(url)?;
        migrate(&config, migrations).await?;
        let schema: String = connect(&config)
            .await?
            .query_one("SELECT current_schema()::text", &[])
            .await?
            .get(0);
        // One channel per schema: replicas of other deployments on the same database stay apart.
        let channel: String = format!("ixn_log_{schema}").chars().take(63).collect();
        let pool = |size| {
            let manager = deadpool_postgres::Manager::from_config(
                config.clone(),
                NoTls,
                deadpool_postgres::ManagerConfig {
                    recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                },
            );
            deadpool_postgres::Pool::builder(manager)
                .max_size(size)
                .build()
                .map(Pool)
                .map_err(|e| StoreError::Pool(e.to_string()))
        };
        let (readers, locks) = (pool(POOL_SIZE)?, pool(LOCKS_POOL_SIZE)?);
        Ok(Database {
            config,
            client: None,
            statements: HashMap::new(),
            rt: WriterRuntime::new()?,
            channel,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            pool: readers,
            locks,
            commit_point: format!("commit {name}"),
        })
    }

    /// The readers' pool.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// The pool of connections that hold advisory locks.
    pub fn locks(&self) -> Pool {
        self.locks.clone()
    }

    /// Runs a future to completion on the writer's thread (never on a runtime thread).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// The writer's connection, reconnected if it was lost.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_some() {
            // The connection runs only inside `block_on`: one turn lets it see a socket that was
            // closed while the writer waited for work, so the batch goes to a new one.
            self.rt.block_on(tokio::task::yield_now());
        }
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.statements.clear();
            let client = self.rt.block_on(connect_writer(&self.config))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs one statement outside a batch, on the writer's connection (loading at start).
    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.client()?;
        let client = self.client.as_ref().expect("connected above");
        Ok(self.rt.block_on(client.query(sql, params))?)
    }

    /// Up to `limit` committed events after `after` (no lock: committed events are contiguous).
    pub fn events_after(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        self.client()?;
        let client = self.client.as_ref().expect("connected above");
        self.rt.block_on(read_events(client, after, limit))
    }

    /// Opens a batch's transaction and takes the writers' lock; the head it reads is current. The
    /// `BEGIN` and the lock's statement go out together: one round trip.
    pub fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        self.begin_reading(Vec::new())
    }

    /// [`Database::begin`], reading the recorded outcomes of `requests` (the batch's) in the same
    /// round trip, so that [`crate::store::Batch::request`] need not ask for each. The look-ups
    /// run after the lock is granted: they see every outcome committed before the batch.
    pub fn begin_reading(&mut self, requests: Vec<RequestKey>) -> Result<Batch<'_>, StoreError> {
        self.client()?;
        let Database {
            client,
            statements,
            rt,
            channel,
            replica,
            commit_point,
            ..
        } = self;
        let client = client.as_ref().expect("connected above");
        let mut batch = Batch {
            client,
            open: false,
            rt,
            statements,
            channel,
            replica,
            commit_point,
            head: 0,
            events: EventColumns::default(),
            recorded: HashMap::new(),
            known: HashMap::new(),
            prune_before: None,
        };
        let lock = batch.statement("SELECT sequence FROM log_head WHERE id = 1 FOR UPDATE")?;
        let lookups = batch.look_up(&requests)?;
        // From here on the batch ends its transaction when dropped, whatever comes back.
        batch.open = true;
        let (begun, head, found) = rt.block_on(async {
            futures::join!(
                client.batch_execute("BEGIN"),
                client.query_one(&lock, &[]),
                lookups
            )
        });
        begun?;
        batch.head = head?.get::<_, i64>(0) as u64;
        batch.known.extend(requests.into_iter().zip(found?));
        Ok(batch)
    }

    /// Whether the store takes a write: a one-row transaction, committed.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        let batch = self.begin()?;
        batch.commit_with(|_| Ok(async { Ok(()) }))
    }

    /// Who may do what one replica at a time does (`name`), in this schema.
    pub fn elector(&self, name: &str) -> Elector {
        Elector {
            config: self.config.clone(),
            name: name.to_owned(),
        }
    }

    /// Listens for other replicas' commits: `changed` is called after each, and after every
    /// (re)connect, until it returns false.
    pub fn listen<F: Fn() -> bool + Send + 'static>(
        &self,
        changed: F,
    ) -> impl Future<Output = ()> + Send + use<F> {
        listen(
            self.config.clone(),
            self.channel.clone(),
            self.replica.clone(),
            changed,
        )
    }
}

async fn read_events(
    client: &Client,
    after: u64,
    limit: usize,
) -> Result<Vec<Arc<LogEntry>>, StoreError> {
    let rows = client
        .query(
            "SELECT sequence, tenant, kind, interaction_id, reporting, recipients, submitter, body
             FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            &[&(after as i64), &(limit as i64)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            entry_from_row(
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                bytes::Bytes::copy_from_slice(r.get(7)),
            )
        })
        .collect()
}

async fn listen(config: Config, channel: String, replica: String, changed: impl Fn() -> bool) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let replica = replica.clone();
                let driver = tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            // A commit of this replica's own is already folded in.
                            Ok(AsyncMessage::Notification(n))
                                if n.payload().split(' ').next() == Some(replica.as_str()) => {}
                            Ok(AsyncMessage::Notification(_)) => {
                                if tx.send(()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "the log's listener lost PostgreSQL");
                                return;
                            }
                        }
                    }
                });
                let quoted = format!("\"{}\"", channel.replace('"', "\"\""));
                match client.batch_execute(&format!("LISTEN {quoted}")).await {
                    // Whatever was committed while not listening is read now.
                    Ok(()) => {
                        if !changed() {
                            driver.abort();
                            return;
                        }
                        while rx.recv().await.is_some() {
                            // Coalesce a burst of notifications into one read.
                            while rx.try_recv().is_ok() {}
                            if !changed() {
                                driver.abort();
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN on the log's channel"),
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "the log's listener cannot reach PostgreSQL"),
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
        if !changed() {
            return;
        }
    }
}

/// One open transaction of the writer. What it appends is buffered and written at commit.
///
/// The transaction is the writer connection's own (`BEGIN` … `COMMIT` as statements, rather than
/// tokio-postgres's `Transaction`), so that its first statement can travel with the `BEGIN`; it is
/// rolled back when the batch is dropped uncommitted.
pub struct Batch<'a> {
    client: &'a Client,
    /// Whether the transaction may be open: a `BEGIN` was sent and no `COMMIT`.
    open: bool,
    rt: &'a WriterRuntime,
    statements: &'a mut HashMap<&'static str, Statement>,
    channel: &'a str,
    replica: &'a str,
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    commit_point: &'a str,
    /// The head under the lock; advanced by what this batch appends.
    head: u64,
    events: EventColumns,
    recorded: HashMap<RequestKey, (StoredRequest, Micros)>,
    /// Outcomes read ahead for the batch's requests (`None`: none recorded).
    known: HashMap<RequestKey, Option<StoredRequest>>,
    prune_before: Option<Micros>,
}

impl<'a> Batch<'a> {
    /// Runs a future on the writer's thread.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// The connection, inside the batch's transaction, for a service's own tables.
    pub fn tx(&self) -> &'a Client {
        self.client
    }

    /// A statement prepared once per connection.
    pub fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.rt.block_on(self.client.prepare(sql))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// The recorded outcomes of `keys`, in their order: one statement per request (each found by
    /// the primary key), sent together when the future is first polled.
    fn look_up<'k>(
        &mut self,
        keys: &'k [RequestKey],
    ) -> Result<
        impl Future<Output = Result<Vec<Option<StoredRequest>>, tokio_postgres::Error>> + use<'a, 'k>,
        StoreError,
    > {
        let statement = self.statement(
            "SELECT fingerprint, response FROM requests
             WHERE tenant = $1 AND subject = $2 AND method = $3 AND request_id = $4",
        )?;
        let tx = self.client;
        Ok(futures::future::try_join_all(keys.iter().map(
            move |(t, s, m, i)| {
                let statement = statement.clone();
                async move {
                    let row = tx.query_opt(&statement, &[t, s, m, i]).await?;
                    Ok(row.map(|r| StoredRequest {
                        fingerprint: r.get(0),
                        response: r.get(1),
                    }))
                }
            },
        )))
    }

    /// Writes the service's rows (the future `rows` makes, which may refuse with
    /// [`StoreError::Conflict`]) together with what the batch buffered, advances the head,
    /// notifies the other replicas and commits: every write goes out in one round trip, the
    /// `COMMIT` in a second once they all succeeded.
    pub fn commit_with<F>(
        mut self,
        rows: impl FnOnce(&mut Batch<'a>) -> Result<F, StoreError>,
    ) -> Result<(), StoreError>
    where
        F: std::future::Future<Output = Result<(), StoreError>> + 'a,
    {
        let rows_written = rows(&mut self)?;
        let events = std::mem::take(&mut self.events);
        let recorded = std::mem::take(&mut self.recorded);
        let insert_events = self.statement(
            "INSERT INTO events (sequence, tenant, kind, interaction_id, reporting, recipients, submitter, body)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::boolean[],
                                  $6::text[], $7::text[], $8::bytea[])",
        )?;
        let insert_requests = self.statement(
            "INSERT INTO requests (tenant, subject, method, request_id, fingerprint, response, created_us)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                                  $6::bytea[], $7::bigint[])",
        )?;
        let tx = self.client;
        let head = self.head as i64;
        let channel = self.channel;
        let payload = format!("{} {head}", self.replica);
        let prune_before = self.prune_before;
        self.rt.block_on(async {
            // Sent together (tokio-postgres pipelines them on the connection).
            let appended = !events.sequence.is_empty();
            let events_written = async {
                if !appended {
                    return Ok(0);
                }
                let columns = events;
                tx.execute(
                    &insert_events,
                    &[
                        &columns.sequence,
                        &columns.tenant,
                        &columns.kind,
                        &columns.interaction_id,
                        &columns.reporting,
                        &columns.recipients,
                        &columns.submitter,
                        &columns.body,
                    ],
                )
                .await
            };
            let requests_written = async {
                if recorded.is_empty() {
                    return Ok(0);
                }
                let mut c: (Vec<String>, Vec<String>, Vec<String>, Vec<String>) =
                    Default::default();
                let mut d: (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<i64>) = Default::default();
                for ((tenant, subject, method, request_id), (stored, at)) in recorded {
                    c.0.push(tenant);
                    c.1.push(subject);
                    c.2.push(method);
                    c.3.push(request_id);
                    d.0.push(stored.fingerprint);
                    d.1.push(stored.response);
                    d.2.push(at);
                }
                tx.execute(
                    &insert_requests,
                    &[&c.0, &c.1, &c.2, &c.3, &d.0, &d.1, &d.2],
                )
                .await
            };
            let head_moved = async {
                if !appended {
                    return Ok(0);
                }
                tx.execute("UPDATE log_head SET sequence = $1 WHERE id = 1", &[&head])
                    .await
            };
            let notified = async {
                if !appended {
                    return Ok(0);
                }
                tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                    .await
            };
            let pruned = async {
                match prune_before {
                    Some(before) => {
                        tx.execute("DELETE FROM requests WHERE created_us < $1", &[&before])
                            .await
                    }
                    None => Ok(0),
                }
            };
            futures::try_join!(
                rows_written,
                events_written.err_into(),
                requests_written.err_into(),
                head_moved.err_into(),
                notified.err_into(),
                pruned.err_into(),
            )
        })?;
        // Tests make the store unreachable with `commit <name>`.
        #[cfg(feature = "failpoints")]
        if fail::eval(self.commit_point, |_| ()).is_some() {
            return Err(StoreError::Io(std::io::Error::other(
                "the store is unreachable (fault point)",
            )));
        }
        // Whatever the answer, the transaction is over: a failed COMMIT has ended it too.
        self.open = false;
        Ok(self.rt.block_on(self.client.batch_execute("COMMIT"))?)
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.open {
            // On the writer's thread, before the connection's next batch. Should it fail, the
            // connection is gone, and the server ends the transaction with it.
            if let Err(e) = self.rt.block_on(self.client.batch_execute("ROLLBACK")) {
                tracing::warn!(error = %e, "a batch could not be rolled back");
            }
        }
    }
}

/// The events a batch appends, column by column (written with one `unnest`).
#[derive(Default)]
struct EventColumns {
    sequence: Vec<i64>,
    tenant: Vec<String>,
    kind: Vec<String>,
    interaction_id: Vec<Option<String>>,
    reporting: Vec<bool>,
    recipients: Vec<String>,
    submitter: Vec<Option<String>>,
    body: Vec<Vec<u8>>,
}

impl crate::store::Batch for Batch<'_> {
    fn shared_head(&self) -> Option<u64> {
        Some(self.head)
    }

    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<Arc<LogEntry>>, StoreError> {
        self.rt.block_on(read_events(self.client, after, limit))
    }

    fn request(
        &mut self,
        tenant: &str,
        subject: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StoreError> {
        let key = (
            tenant.into(),
            subject.into(),
            method.into(),
            request_id.into(),
        );
        if let Some((stored, _)) = self.recorded.get(&key) {
            return Ok(Some(stored.clone()));
        }
        if let Some(known) = self.known.get(&key) {
            return Ok(known.clone());
        }
        let lookup = self.look_up(std::slice::from_ref(&key))?;
        let found = self.rt.block_on(lookup)?.pop().flatten();
        self.known.insert(key, found.clone());
        Ok(found)
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
        let stored = StoredRequest {
            fingerprint: fingerprint.to_vec(),
            response: response.to_vec(),
        };
        self.recorded.insert(
            (
                tenant.into(),
                subject.into(),
                method.into(),
                request_id.into(),
            ),
            (stored, now),
        );
        Ok(())
    }

    fn prune_requests(&mut self, before: Micros) -> Result<(), StoreError> {
        self.prune_before = Some(before);
        Ok(())
    }

    fn append(&mut self, entry: &LogEntry) -> Result<(), StoreError> {
        if entry.sequence != self.head + 1 {
            return Err(StoreError::Conflict(format!(
                "the log (sequence {} after head {})",
                entry.sequence, self.head
            )));
        }
        self.head = entry.sequence;
        let e = &mut self.events;
        e.sequence.push(entry.sequence as i64);
        e.tenant.push(entry.tenant.clone());
        e.kind.push(entry.kind.to_owned());
        e.interaction_id.push(entry.interaction_id.clone());
        e.reporting.push(entry.reporting);
        e.recipients.push(encode_recipients(&entry.recipients));
        e.submitter.push(entry.submitter.clone());
        e.body.push(entry.event.bytes().to_vec());
        Ok(())
    }

    fn commit(self) -> Result<(), StoreError> {
        self.commit_with(|_| Ok(async { Ok(()) }))
    }
}

/// The readers' pool: reads see only what is committed.
#[derive(Clone)]
pub struct Pool(deadpool_postgres::Pool);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.0
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))
    }
}

/// The advisory lock key of `name` in the connection's schema (replicas of other deployments on
/// the same database stay apart).
const LOCK_KEY: &str = "hashtextextended(current_schema() || '/' || $1, 0)";

impl Pool {
    /// Takes the advisory lock `name` on a pooled connection, waiting for whoever holds it; held
    /// until the [`Advisory`] is dropped, or the connection ends.
    pub async fn advisory_lock(&self, name: &str) -> Result<Advisory, StoreError> {
        // Held before waiting: if the wait is abandoned, dropping it still releases what the
        // connection takes afterwards.
        let lock = Advisory {
            client: Some(self.client().await?),
        };
        lock.client()
            .execute(&format!("SELECT pg_advisory_lock({LOCK_KEY})"), &[&name])
            .await?;
        Ok(lock)
    }
}

/// A session-level advisory lock held on a pooled connection.
pub struct Advisory {
    client: Option<deadpool_postgres::Object>,
}

impl std::fmt::Debug for Advisory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advisory").finish_non_exhaustive()
    }
}

impl Advisory {
    /// The connection holding the lock.
    pub fn client(&self) -> &deadpool_postgres::Object {
        self.client.as_ref().expect("held until dropped")
    }
}

impl Drop for Advisory {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            // Runs after whatever the connection still has to do: the pool gets it back unlocked.
            Ok(rt) => {
                rt.spawn(async move {
                    if client
                        .batch_execute("SELECT pg_advisory_unlock_all()")
                        .await
                        .is_err()
                    {
                        // Never back to the pool with a lock: closing the connection releases it.
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

/// The first key of the replicas' presence locks (the two-key form of advisory locks), "ixn\0".
const PRESENCE: i64 = 0x6978_6e00;

/// SQL that is true while the replica numbered by the expression `replica` (see
/// [`Database::presence`]) holds its presence lock: rows it wrote count only while it lives.
pub fn present(replica: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
           AND l.objsubid = 2 AND l.classid::bigint = {PRESENCE} AND l.objid::bigint = ({replica})::bigint
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    )
}

impl Database {
    /// Marks this process present, under a number no other live replica has, while the lease
    /// lives (a lock on a connection of its own, which other replicas see in `pg_locks`).
    pub async fn presence(&self) -> Result<(Presence, Lease), StoreError> {
        loop {
            let bytes = uuid::Uuid::new_v4().into_bytes();
            let presence = Presence {
                config: self.config.clone(),
                number: i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & i32::MAX,
            };
            if let Some(lease) = presence.renew().await? {
                return Ok((presence, lease));
            }
        }
    }
}

/// A replica's presence: its number, and how to take its lock again once lost.
#[derive(Clone)]
pub struct Presence {
    config: Config,
    number: i32,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("number", &self.number)
            .finish()
    }
}

impl Presence {
    pub fn number(&self) -> i32 {
        self.number
    }

    /// Takes the presence lock (again), unless a connection still holds it.
    pub async fn renew(&self) -> Result<Option<Lease>, StoreError> {
        let (client, ended) = lease_connection(&self.config).await?;
        let held: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1::bigint::int4, $2)",
                &[&PRESENCE, &self.number],
            )
            .await?
            .get(0);
        Ok(held.then_some(Lease {
            _client: client,
            ended,
        }))
    }
}

/// A connection of its own, and what completes when it ends.
async fn lease_connection(
    config: &Config,
) -> Result<(Client, tokio::sync::oneshot::Receiver<()>), StoreError> {
    let (client, connection) = config.connect(NoTls).await?;
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "a PostgreSQL connection holding a lock ended");
        }
        let _ = ended_tx.send(());
    });
    Ok((client, ended))
}

/// Elects one replica at a time for a role: the holder of a session-level advisory lock on a
/// connection of its own.
#[derive(Clone)]
pub struct Elector {
    config: Config,
    name: String,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector").field("name", &self.name).finish()
    }
}

impl Elector {
    /// The role, if no other replica holds it.
    pub async fn try_acquire(&self) -> Result<Option<Lease>, StoreError> {
        let (client, ended) = lease_connection(&self.config).await?;
        let held: bool = client
            .query_one(
                &format!("SELECT pg_try_advisory_lock({LOCK_KEY})"),
                &[&self.name],
            )
            .await?
            .get(0);
        Ok(held.then_some(Lease {
            _client: client,
            ended,
        }))
    }
}

/// A role held until dropped, or until its connection ends (another replica may then take it).
#[derive(Debug)]
pub struct Lease {
    _client: Client,
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl Lease {
    /// Completes when the role is lost.
    pub async fn lost(&mut self) {
        let _ = (&mut self.ended).await;
    }
}

impl History for Pool {
    fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<LogEntry>>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            read_events(&client, after, limit.min(REPLAY_CHUNK)).await
        })
    }

    fn committed_head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let head: i64 = client
                .query_one("SELECT sequence FROM log_head WHERE id = 1", &[])
                .await?
                .get(0);
            Ok(Some(head as u64))
        })
    }
}
