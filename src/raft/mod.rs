//! The Raft consensus core: a pure, deterministic state machine.
//!
//! No sockets, no files, no clock, no global randomness. The shell (server or simulator) feeds it
//! inputs and drains its outputs, in the style of etcd-io/raft's `Ready`:
//!
//! Inputs: [`RawNode::tick`], [`RawNode::step`] (a peer message), [`RawNode::propose`],
//! [`RawNode::read_index`], [`RawNode::on_persisted`], [`RawNode::on_applied`],
//! [`RawNode::restore_snapshot`], [`RawNode::report_unreachable`], [`RawNode::report_snapshot`],
//! [`RawNode::transfer_leader`], [`RawNode::propose_conf_change`].
//!
//! Outputs: [`RawNode::ready`] returns a [`Ready`]. The shell must handle it **in this order**:
//! 1. send the first `early_messages` of `messages` (they may leave before the sync: see
//!    below);
//! 2. write `hard_state` (if any) and append `entries` (if any) to durable storage and, if
//!    `must_sync`, sync;
//! 3. only then send the rest of `messages` ([`Ready::take_messages`] splits them; a vote grant
//!    or an append ack must never leave before the state it depends on is durable);
//! 4. apply `committed` to the state machine in order, then call [`RawNode::on_applied`];
//! 5. serve `reads` whose index is <= applied;
//! 6. stream the current snapshot to each peer in `snapshot_sends`;
//! 7. call [`RawNode::on_persisted`] with the last (index, term) written in step 2.
//!
//! The core, not the shell, decides what may leave before the sync (like raft-rs
//! `Ready::messages` / `persisted_messages` and etcd-io/raft's `msgsAfterAppend`; here one list
//! with a boundary, `early_messages`, so a test reading `messages` sees every message): only while
//! the Ready keeps the persisted term and vote, a leader's AppendEntries, Heartbeat,
//! InstallSnapshot, TimeoutNow and ReadIndexResponse messages and a follower's ReadIndex
//! messages are in the first `early_messages` (Raft dissertation §10.2.1). They promise nothing
//! about the sender's disk: the leader counts its own entries towards commit (and so towards a
//! read index) only after `on_persisted`, and a follower's ReadIndex only asks. Committed entries are durable on a majority, so a
//! shell may also apply them (step 4) before its own sync.
//!
//! The core reads the durable log through the [`LogStore`] trait; it owns the store and the
//! shell writes to it through [`RawNode::store_mut`].
//!
//! API CONTRACT: the public items below are what the server and the simulator program against.
//! The implementation (modules under `src/raft/`) is the core issue's work.

use crate::pb::raftpb;
use std::fmt;

pub use raftpb::{ConfState, Entry, EntryType, HardState, Member, Message, SnapshotMeta};

/// Errors reading the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The index is at or below the snapshot index (entries were compacted away).
    Compacted,
    /// The index is above the last index.
    Unavailable,
    /// The storage layer failed (I/O, corruption). Fatal for the node.
    Io(String),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Compacted => write!(f, "log entry compacted"),
            LogError::Unavailable => write!(f, "log entry unavailable"),
            LogError::Io(e) => write!(f, "log storage error: {e}"),
        }
    }
}

impl std::error::Error for LogError {}

/// Read access to the durable log, as the core needs it. Implemented by
/// `storage::Log` (mmap'd segments) and by `MemLog` (tests and the simulator).
pub trait LogStore {
    /// (index, term) of the last entry covered by the newest snapshot; (0, 0) if none.
    fn snapshot_index_term(&self) -> (u64, u64);
    /// First index held in the log (snapshot index + 1).
    fn first_index(&self) -> u64;
    /// Last index held in the log (equal to the snapshot index when the log is empty).
    fn last_index(&self) -> u64;
    /// Term of the entry at `index`. The snapshot index itself answers the snapshot term;
    /// below it is `Compacted`, above the last index is `Unavailable`.
    fn term(&self, index: u64) -> Result<u64, LogError>;
    /// Entries in `[lo, hi)`, stopping once their total encoded size exceeds `max_bytes`
    /// (at least one entry is returned when `lo < hi`).
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, LogError>;
}

/// Core configuration. Times are in ticks; the shell decides how long a tick is.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: u64,
    /// Base election timeout T: each timeout is drawn uniformly from [T, 2T).
    pub election_tick: u32,
    /// Leader heartbeat interval (must be < election_tick).
    pub heartbeat_tick: u32,
    /// Run a PreVote round before a real election (Raft dissertation §9.6).
    pub pre_vote: bool,
    /// Leaders step down after an election timeout without hearing from a quorum.
    pub check_quorum: bool,
    /// Allow leader-lease reads (requires `check_quorum`).
    pub lease_read: bool,
    /// Max AppendEntries in flight per follower in replicate mode.
    pub max_inflight_msgs: usize,
    /// Max entry bytes in flight per follower in replicate mode (0 = no byte cap). One append
    /// may overshoot it; then the window is full until acks free it.
    pub max_inflight_bytes: u64,
    /// Max total entry bytes per AppendEntries.
    pub max_msg_bytes: u64,
    /// Max bytes of uncommitted entries a leader accepts (0 = unlimited).
    pub max_uncommitted_bytes: u64,
    /// Seed for election-timeout jitter.
    pub seed: u64,
    /// TEST ONLY: deliberately break the protocol so the simulator can prove it catches real
    /// bugs. Only compiled into test builds and builds with the `sim-bugs` feature (the
    /// simulator binary, the tests); the shipped `raftkv` binary has no such field, and
    /// [`Config::planted_bug`] is then the constant `PlantedBug::None`.
    #[cfg(any(test, feature = "sim-bugs"))]
    pub planted_bug: PlantedBug,
}

/// TEST ONLY: protocol bugs the core can be told to contain, for the simulator's self-test
/// (see [`Config::planted_bug`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlantedBug {
    /// Correct behaviour.
    #[default]
    None,
    /// Grants every vote request of its current term, even after voting for someone else
    /// (breaks "one vote per term": two leaders can win the same term).
    VoteTwice,
    /// Commits the highest index stored on a quorum regardless of its term (the Figure 8 bug:
    /// an old-term entry can be "committed" and later overwritten). To expose it, a new leader
    /// also holds back its start-of-term no-op until the first read (as in the paper's
    /// Figure 8, where leaders have no such entry).
    CommitOldTerm,
    /// Accepts a membership change while another is still uncommitted (or joint).
    TwoConfChanges,
    /// Switches the voter set of a multi-voter change directly, without the joint phase.
    SkipJoint,
    /// A new leader accepts a membership change before committing an entry of its own term.
    ConfChangeBeforeCommit,
    /// Counts learners' acknowledgements towards commit.
    LearnerVotes,
}

/// Default base election timeout in ticks: with the default 50 ms tick, a leader silent for
/// 0.5-1 s is replaced, well above a loaded loop pass or an fsync, yet quick to notice a crash.
pub const DEFAULT_ELECTION_TICKS: u32 = 10;
/// Default heartbeat interval in ticks: every tick, so a follower hears from its leader about
/// ten times per election timeout and one or two lost heartbeats never cause an election.
pub const DEFAULT_HEARTBEAT_TICKS: u32 = 1;

impl Config {
    /// The defaults for node `id` (the one place they are written: the server's config and
    /// the CLI start from these).
    pub fn new(id: u64) -> Config {
        Config {
            id,
            election_tick: DEFAULT_ELECTION_TICKS,
            heartbeat_tick: DEFAULT_HEARTBEAT_TICKS,
            pre_vote: true,
            check_quorum: true,
            lease_read: false,
            max_inflight_msgs: 256,
            max_inflight_bytes: 0,
            max_msg_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            seed: id,
            #[cfg(any(test, feature = "sim-bugs"))]
            planted_bug: PlantedBug::None,
        }
    }

    /// Checks the settings against each other (raft-rs `Config::validate`). `RawNode::new`
    /// refuses a config that fails.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("raft config: id must be non-zero".into());
        }
        if self.election_tick == 0 || self.heartbeat_tick == 0 {
            return Err("raft config: election_tick and heartbeat_tick must be > 0".into());
        }
        if self.heartbeat_tick >= self.election_tick {
            return Err(format!(
                "raft config: heartbeat_tick {} must be < election_tick {}",
                self.heartbeat_tick, self.election_tick
            ));
        }
        if self.lease_read && !self.check_quorum {
            return Err("raft config: lease_read requires check_quorum".into());
        }
        if self.max_inflight_msgs == 0 {
            return Err("raft config: max_inflight_msgs must be > 0".into());
        }
        Ok(())
    }

    /// The planted bug in force: always `PlantedBug::None` unless built for tests or with the
    /// `sim-bugs` feature (then the compiler drops every bug branch from the shipped binary).
    #[inline]
    pub fn planted_bug(&self) -> PlantedBug {
        #[cfg(any(test, feature = "sim-bugs"))]
        return self.planted_bug;
        #[cfg(not(any(test, feature = "sim-bugs")))]
        return PlantedBug::None;
    }
}

/// Durable state the node restarts from.
#[derive(Debug, Clone, Default)]
pub struct InitialState {
    /// Last persisted hard state (term, vote, commit).
    pub hard_state: HardState,
    /// Membership of the newest snapshot, or the bootstrap configuration if there is none.
    /// Configuration entries in the log above it are read back by `RawNode::new` itself.
    pub conf: ConfState,
    /// Index the state machine has applied (>= snapshot index). Committed entries above it are
    /// handed out again through `Ready::committed`.
    pub applied: u64,
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a proposal or read was not accepted. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the leader it knows of, if any.
    NotLeader { leader: Option<u64> },
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The uncommitted tail is over `max_uncommitted_bytes`.
    Overloaded,
    /// `lease_read` only: no valid lease (or lease reads disabled); use `read_index`.
    NoLease,
}

/// A linearizable read that became safe: serve request `ctx` once applied >= `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: u64,
}

/// Everything the shell must do after feeding the core some inputs. See the module docs for
/// the order.
#[derive(Debug, Default)]
pub struct Ready {
    /// Persist before sending `persisted_messages`.
    pub hard_state: Option<HardState>,
    /// Append to the log before sending `persisted_messages`. If `entries[0].index <=
    /// last_index`, the log is first truncated from that index (a conflicting suffix).
    pub entries: Vec<Entry>,
    /// The term or vote changed, or there are entries: sync before `persisted_messages` and
    /// `on_persisted`. (A hard state that only moves `commit` may be written lazily.)
    pub must_sync: bool,
    /// Every message to send, in two parts the core decides: the first `early_messages` may
    /// leave at once, before the sync (a leader's replication messages and read answers, a
    /// follower's read requests); the rest only once
    /// `hard_state` and `entries` are durable. [`Ready::take_messages`] splits them.
    pub messages: Vec<Message>,
    /// How many of `messages`, from the front, may be sent before the sync.
    pub early_messages: usize,
    /// Apply in order. Never at or below the applied index; each index exactly once.
    pub committed: Vec<Entry>,
    /// Reads confirmed by a quorum (on a follower: answered by its leader's ReadIndexResponse).
    pub reads: Vec<ReadState>,
    /// Reads that can no longer be confirmed (leadership lost; on a follower: the term or the
    /// leader changed, or the leader's answer did not come in time); answer them with an error.
    pub failed_reads: Vec<u64>,
    /// Peers that need the current snapshot (their next index was compacted away).
    pub snapshot_sends: Vec<u64>,
    /// InstallSnapshot chunks (follower) and InstallSnapshotResponses (leader) that passed the
    /// core's term checks; the shell's snapshot transfer handles them.
    pub snapshot_msgs: Vec<Message>,
    /// A received snapshot the core took (`restore_snapshot` returned true). Before anything
    /// else in this Ready the shell resets its log store to start right after it and makes
    /// it the state machine's state. It is already durable: the shell's receiver made it so
    /// before offering it to the core (etcd-io/raft and raft-rs hand the snapshot over in the
    /// Ready the same way, to be applied before the entries).
    pub snapshot: Option<SnapshotMeta>,
    /// The configuration in force changed (a configuration entry was appended or truncated
    /// away, or a snapshot was restored): the new one, for the shell's peer directory. It
    /// takes effect now, not when applied (see `membership.rs`).
    pub conf: Option<ConfState>,
}

impl Ready {
    /// Takes `messages` apart: (may leave before the sync, only after it).
    pub fn take_messages(&mut self) -> (Vec<Message>, Vec<Message>) {
        let mut early = std::mem::take(&mut self.messages);
        let late = early.split_off(self.early_messages.min(early.len()));
        self.early_messages = 0;
        (early, late)
    }

    /// Messages that must wait for the sync (`messages` after the early ones).
    pub fn persisted_messages(&self) -> &[Message] {
        &self.messages[self.early_messages.min(self.messages.len())..]
    }
}

/// A read-only view of the node for status reports.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit: u64,
    pub applied: u64,
    pub conf: ConfState,
    /// (peer id, match index, next index), leader only.
    pub progress: Vec<(u64, u64, u64)>,
}

// Implementation modules. `RawNode`'s methods are spread over node.rs (state, tick, step
// dispatch, Ready), election.rs, replication.rs and extras.rs (reads, transfer, snapshots).
mod election;
mod extras;
mod log;
mod membership;
mod memlog;
mod node;
mod quorum;
mod read_only;
mod replication;
#[cfg(test)]
pub(crate) mod tests;
mod tracker;

pub use membership::{
    apply_changes, is_member, member_context, members, ConfChangeError, ConfChangeOp,
    ConfChangeRequest,
};
pub use memlog::MemLog;
pub use node::RawNode;
pub use tracker::ProgressState;
