//! raftkv: a single-threaded, Raft-replicated key-value store.
//!
//! Layout (each module is small and named for what it is):
//! - [`raft`]: the consensus core, a pure deterministic state machine (no I/O, no clock).
//! - [`sim`]: the deterministic cluster simulator that drives the core under faults.
//! - [`storage`]: the durable log (mmap'd segments), hard state and snapshot files.
//! - [`net`]: framing, the mio reactor pieces and the timer wheel.
//! - [`kv`]: the replicated key-value state machine with exactly-once client sessions.
//! - [`server`]: glue that runs one node on one thread.
//! - [`logger`]: a minimal stderr `log::Log` (RAFTKV_LOG / --log-level).
//! - [`snapshot`]: background snapshot creation, compaction policy, InstallSnapshot streaming.
//! - [`client`]: blocking client library used by the CLI, the bench tool and tests.
//! - [`pb`]: protobuf types generated from `proto/`.
//! - [`progress`]: progress bars for the CLI and tools (hidden when stderr is no terminal).
//! - [`limits`]: the size limits (frame, entry, snapshot fields) every reader and writer shares.
//! - [`rng`]: seeded PRNG (no global randomness anywhere).
//! - [`entropy`]: the kernel's randomness, only for what must be unguessable (nonces, ids, secrets).

pub mod client;
pub mod entropy;
pub mod idmap;
pub mod json;
pub mod kv;
pub mod limits;
pub mod logger;
pub mod net;
pub mod node;
pub mod pb;
pub mod progress;
pub mod raft;
pub mod resp;
pub mod rng;
pub mod server;
pub mod sim;
pub mod snapshot;
pub mod storage;
