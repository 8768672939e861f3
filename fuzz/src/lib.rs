//! What the fuzz targets share: small pools the inputs pick names from (so that callers, agents,
//! queues and ids collide often enough for the interesting paths), and [`world::World`],
//! interaction-server's domain driven as its engine drives it, with every invariant checked after
//! each command.
//!
//! The targets themselves (`fuzz_targets/`) only read libFuzzer's bytes into commands.

#![forbid(unsafe_code)]

pub mod pick;
pub mod world;
