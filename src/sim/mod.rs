//! Deterministic cluster simulator: many seeded fault schedules against the real Raft core
//! and KV state machine, with safety, durability, linearizability and liveness checks.
//! See `docs/simulator.md`.
//!
//! - [`net`]: drops, delays, duplicates, reorders; symmetric and one-way partitions.
//! - [`disk`]: in-memory log store and a disk whose writes are durable only after a sync.
//! - [`node`]: the simulated shell around a `RawNode`, following the `Ready` order.
//! - [`client`]: simulated clients with exactly-once sessions and a recorded history.
//! - [`checker`]: safety invariants checked after every step.
//! - [`linearize`]: the linearizability checker for the client history.
//! - [`cluster`]: the world, its event queue and the fault schedule.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod disk;
pub mod linearize;
pub mod net;
pub mod node;
mod shell;
mod snapshots;
mod trace;

pub use cluster::{run_seed, Bug, SeedResult, SimOptions};
