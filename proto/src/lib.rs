//! The wire contract of the contact-centre services, compiled from `proto/`, and the hand-written
//! helpers that both services share so that nothing is written twice:
//!
//! - [`common`], [`events`], [`interaction`], [`session`]: the generated messages and services.
//! - [`error`]: the contract's `reason` strings and their mapping to a gRPC status with `ErrorInfo`.
//! - [`auth`]: token claims, minting and verification (HS256, audience `ixn`, key rotation by `kid`).
//! - [`party`]: constructors and comparisons for `Party`.
//! - [`event`]: what kind an event body is, whom it concerns, and the envelope's conventions.
//! - [`validate`]: argument checks (ids, names, reasons) and request fingerprints.
//! - [`clock`]: injected time, so tests move it instead of sleeping.
//! - [`store`]: what both stores share: the error, the writer's transaction over the log and the
//!   request outcomes, the log's history.
//! - [`sqlite`]: the embedded store's plumbing: the locked data directory, the event log and
//!   request-outcome tables, read-only connections.
//! - [`pg`]: the shared store's plumbing, for several replicas on one PostgreSQL: migrations, the
//!   writers' lock and contiguous sequences, `LISTEN/NOTIFY`, pooled reads.
//! - [`log`]: committed events as subscribers read them (a ring plus the store), and the loop that
//!   feeds one stream.
//! - [`subscribe`]: `EventService.Subscribe` over a service's log.
//! - [`measure`]: the Prometheus metrics both services export, and their `/metrics` endpoint.
//! - [`observe`]: the tower layer that gives every call its span and its RPC metrics.
//! - [`hosting`]: health, reflection, listener settings, signals and the bounded drain of both servers.
//! - [`settings`]: flags, `IXN_*` variables and the TOML file, checked alike (exit 64 when wrong).
//! - [`trace`]: trace context carried from calls into events.
//! - [`wire`]: events encoded once, and the codec that streams them as they are.

#![forbid(unsafe_code)]

/// The generated code, nested as the packages are so that cross-package references resolve: each
/// package's messages and clients, then its servers (see `build.rs`).
pub mod ixn {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("ixn.common.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("ixn.events.v1");
            tonic::include_proto!("ixn.events.v1.servers");
        }
    }
    pub mod interaction {
        pub mod v1 {
            tonic::include_proto!("ixn.interaction.v1");
            tonic::include_proto!("ixn.interaction.v1.servers");
        }
    }
    pub mod session {
        pub mod v1 {
            tonic::include_proto!("ixn.session.v1");
            tonic::include_proto!("ixn.session.v1.servers");
        }
    }
}

pub use ixn::common::v1 as common;
pub use ixn::events::v1 as events;
pub use ixn::interaction::v1 as interaction;
pub use ixn::session::v1 as session;

/// The encoded `FileDescriptorSet` of the whole contract, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ixn_descriptor.bin"));

pub mod auth;
pub mod clock;
pub mod error;
pub mod event;
pub mod hosting;
pub mod log;
pub mod measure;
pub mod observe;
pub mod party;
pub mod pg;
pub mod settings;
pub mod sqlite;
pub mod store;
pub mod subscribe;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod validate;
pub mod wire;
