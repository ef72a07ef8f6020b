//! The node layer shared by the shells: what a node does with the core's output between
//! "bytes came in" and "bytes go out" that is not a socket or a file.
//!
//! - `ready.rs`: the production [`Ready`](crate::raft::Ready) handling, in its phases: the
//!   leader's early sends before its own sync, apply-and-answer before the local sync, commit
//!   broadcasts after the answers, the sync, the messages that wait for it, followers applying
//!   after their acks are out, snapshot transfer, `on_persisted`;
//! - `replica.rs`: the core, the KV state machine and the pending requests of one node: how
//!   writes are proposed and reads started (ReadIndex, lease, stale), how applying entries,
//!   confirming reads, installing a snapshot and losing leadership answer them;
//! - `requests.rs`: the pending request tables, their deadlines, and the one place an answer
//!   is made;
//! - `membership.rs`: member contexts (addresses), `member add/promote/remove/list`, and the
//!   automatic promotion of caught-up learners;
//! - `transfer.rs`: snapshot streams to followers, the receiver, and the order in which a
//!   received snapshot is installed (durable, core, log, state machine, answer).
//!
//! The mio server (`src/server/`) and the simulator (`src/sim/node.rs`) both hold a
//! [`Replica`] and run the Ready phases over it, each implementing the small [`ReadyShell`]
//! trait for what differs (the outbox, the durable log, snapshot transfer), so every
//! simulated seed exercises the ordering and the request handling that ship.
//! The simulator's disk loses unsynced writes on a crash, so a node-layer bug that
//! acknowledges before the sync is caught (see `tools/mutation-check.sh`).
//!
//! [`NodeBug`]: planted node-layer bugs for the simulator's self-test (`sim-bugs` builds only).

pub mod membership;
mod ready;
mod replica;
mod requests;
mod transfer;

pub use ready::{after_sync, handle_ready, merge_deferred, AfterSync, ReadyShell, SyncStatus};
pub use replica::{LeadershipChange, Replica, ReplicaConfig, StagedSnapshot};
pub use requests::{ReadOp, ReplyAddr, Requests};
pub use transfer::{install_received, install_staged, Installed, ResetLog, Transfers};

/// TEST ONLY: node-layer bugs the simulator can plant to prove its checks catch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeBug {
    /// Correct behaviour.
    #[default]
    None,
    /// Sends the messages that must wait for the sync (a follower's append acks, vote grants)
    /// before it.
    AckBeforeSync,
    /// A leader answers a write as soon as it is appended, before it commits.
    AnswerBeforeCommit,
    /// A follower installs a received snapshot's state and answers it before the snapshot is
    /// durable.
    SnapshotBeforeDurable,
    /// A failed sync (EIO, ENOSPC) is treated as done: the node acknowledges writes the disk
    /// dropped (PostgreSQL's "fsyncgate": a retried fsync may succeed with the data gone).
    IgnoreSyncFailure,
    /// A follower serves a read as soon as the leader answers its ReadIndex, from whatever it
    /// has applied, instead of waiting until it applied up to the read index.
    FollowerReadBeforeApply,
}
