//! The durable copy: the event log, the current row of every interaction and agent, and the outcomes
//! of successful requests (idempotency), in SQLite. The log, the outcomes, the directory lock and the
//! read-only connections are the shared plumbing of `ixn_proto::sqlite`; this module adds
//! interaction-server's own tables.

mod sqlite;

pub use ixn_proto::sqlite::{Readers, StoreError};
pub use sqlite::{Reads, Rows, Store, Visibility};
