//! session-service owns agent sessions — the seed's HIS: login, the channel group and its channels,
//! Ready / Not Ready with reasons, channel activation, and the multi-step logout of the Logout use
//! case. It is the desktop's single connection: `Connect` carries the session's events and the
//! interaction events addressed to its agent.
//!
//! Where to read about each part:
//!
//! - [`domain`]: sessions, the logout plan (EF1, AF1) and the mirror of what agents hold; pure.
//! - [`api`]: the handlers. Each runs under its agent's lock: check, call the switch, commit.
//! - [`switch`]: the client of interaction-server's `AgentService` (the "switch") and event stream.
//! - [`relay`]: follows interaction-server's log from a stored cursor, keeps the mirror, relays what
//!   is addressed to agents with sessions into this service's log.
//! - [`writer`]: the one writer (group commit); memory changes only after the disk has.
//! - [`store`]: session-service's tables on the shared SQLite plumbing.
//! - [`server`]: wiring and shutdown.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod relay;
pub mod server;
pub mod store;
pub mod switch;
pub mod writer;
