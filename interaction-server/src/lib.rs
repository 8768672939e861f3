//! interaction-server owns interactions (chat, email, voice…) and who processes them, and is the
//! authority on agents' media state (the "switch" of the Logout use case). Every change is an event
//! in a durable, replayable log.
//!
//! How a request flows, and where to read about each step:
//!
//! - [`api`]: tonic handlers. They authenticate the token ([`auth`]), check the role and the
//!   arguments, and hand a [`domain::Command`] to the engine.
//! - [`engine`]: the one writer. It decides each command against the in-memory state
//!   ([`domain`], pure), commits the batch's events and rows in one transaction ([`store`], group
//!   commit), and only then answers and publishes the events to the log.
//! - `ixn_proto::log`: the committed events, in a ring that live subscribers read, falling back to
//!   the store for those that are behind.
//! - [`server`]: wiring of the gRPC services, health and reflection on a bound listener.
//! - [`clock`]: time comes from an injected clock, so tests move it instead of sleeping.

#![forbid(unsafe_code)]

pub mod api;
/// Time, injected (shared with session-service).
pub use ixn_proto::clock;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod limits;
pub mod server;
pub mod store;
