//! The durable copy: the event log, the current row of every interaction and agent, and the outcomes
//! of successful requests (idempotency), in SQLite.
//!
//! One process owns the data directory (a lock file says so); inside it, one writer connection
//! commits each batch of transitions in one transaction (WAL, `synchronous=FULL`: an acknowledged
//! change survives power loss) and read-only connections serve reads, which see only what is
//! committed.

mod sqlite;

pub use sqlite::{REPLAY_CHUNK, Readers, Store, StoreError, StoredRequest, Visibility};
