//! The production ordering of one `Ready`, written once for the server and the simulator.
//!
//! Phases (`handle_ready` = `before_sync`, the sync, `after_sync`):
//! -. a received snapshot the core took (`Ready::snapshot`, already durable) is installed
//!    first: log reset, state machine replaced, its `done` answer sent;
//! 0. the messages the core allows out before the sync (`Ready::early_messages`): a
//!    leader's entries at once; its commit-only appends, heartbeats and read answers
//!    (`ReadIndexResponse`) after the answers to clients (phase 2), together, so a follower
//!    gets a read answer and the next read round's heartbeat in one write; a follower's
//!    `ReadIndex` in phase 2 too, flushed there only if a sync follows (else it leaves with
//!    the acks of phase 4, in one write);
//! 1. a term or vote change is made durable before anything depending on it leaves;
//! 2. a leader applies committed entries, answers their clients and serves reads *before* its
//!    own append + sync (every committed entry is already durable on a majority), then sends
//!    the deferred commit broadcasts and heartbeats;
//! 3. the entries are appended and, if `must_sync`, synced (the shell may complete the sync
//!    later: the simulator blocks the node until its simulated fsync ends);
//! 4. the messages that promise durable state (acks, vote grants) leave; a follower applies
//!    after its acks are on the wire (nobody waits on its state machine, the leader waits on
//!    its ack);
//! 5. snapshot streams to peers and snapshot transfer messages;
//! 6. `on_persisted` of the last entry appended.
//!
//! Assertions at the phase boundaries (`debug_assert!`, on in tests and the simulator's debug
//! builds; the simulator checks durability itself after every event): nothing that waits for
//! the sync leaves before it, and `on_persisted` only follows a completed sync.

use super::NodeBug;
use crate::pb::raftpb::message::Body;
use crate::raft::{
    ConfState, Entry, HardState, LogStore, Message, RawNode, ReadState, Ready, Role, SnapshotMeta,
};

/// Whether the sync the node layer asked for is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    /// Durable now (production: `fsync`/`msync` returned).
    Done,
    /// Started; the shell calls [`after_sync`](ReadyShell) with the [`AfterSync`] once the
    /// sync completes (the simulator: after a simulated latency, the node blocked meanwhile).
    Pending,
}

/// What differs between the shells, as the Ready phases need it.
pub trait ReadyShell {
    type Store: LogStore;
    /// The core.
    fn core(&mut self) -> &mut RawNode<Self::Store>;
    /// The planted node-layer bug in force (`NodeBug::None` outside the simulator).
    fn bug(&self) -> NodeBug {
        NodeBug::None
    }
    /// Puts a peer message in the outbox.
    fn send(&mut self, m: Message);
    /// Pushes queued peer messages onto the wire now (a no-op where sending is immediate).
    fn flush_peers(&mut self) {}
    /// Pushes queued client answers onto the wire now, if any wait.
    fn flush_clients(&mut self) {}
    /// Makes a changed term or vote durable (before anything that depends on it leaves).
    fn save_term_vote(&mut self, hs: HardState) -> Result<(), String>;
    /// Notes the commit index of a Ready's hard state (it may be persisted lazily).
    fn note_commit(&mut self, _commit: u64) {}
    /// Appends entries to the durable log (truncating a conflicting suffix); not yet synced.
    /// A shell that cannot (a full disk) may keep them to retry and say so with
    /// [`ReadyShell::withholding_acks`].
    fn append(&mut self, entries: &[Entry]) -> Result<(), String>;
    /// True while entries the core handed out are not in the log (the server's full disk):
    /// acks that would promise them are withheld and `on_persisted` is not called; the shell
    /// calls it itself once they are written.
    fn withholding_acks(&self) -> bool {
        false
    }
    /// Makes everything appended and saved so far durable, or starts doing so.
    fn sync(&mut self) -> Result<SyncStatus, String>;
    /// Applies committed entries (answering their clients), then serves the reads they unblock
    /// and fails `failed_reads`.
    fn apply_and_serve(
        &mut self,
        committed: Vec<Entry>,
        reads: Vec<ReadState>,
        failed_reads: Vec<u64>,
    ) -> Result<(), String>;
    /// Leader: the entries just appended (the `AnswerBeforeCommit` planted bug answers them).
    fn on_appended_as_leader(&mut self, _entries: &[Entry]) {}
    /// Installs the received snapshot the core took (`Ready::snapshot`): resets the log to
    /// it, makes it the state machine's state, sends its `done` answer.
    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), String>;
    /// The configuration in force changed (`Ready::conf`): the shell updates its peer
    /// directory before any message of this Ready leaves (a new member's first append).
    fn conf_changed(&mut self, _conf: &ConfState) {}
    /// Starts streaming the snapshot to these peers.
    fn snapshot_sends(&mut self, peers: Vec<u64>);
    /// InstallSnapshot chunks (follower) and their answers (leader).
    fn snapshot_msgs(&mut self, msgs: Vec<Message>) -> Result<(), String>;
}

/// The part of a Ready handled after its sync.
#[derive(Debug)]
pub struct AfterSync {
    late: Vec<Message>,
    follower_apply: Option<(Vec<Entry>, Vec<ReadState>, Vec<u64>)>,
    snapshot_sends: Vec<u64>,
    snapshot_msgs: Vec<Message>,
    /// (index, term) of the last entry appended.
    persisted: Option<(u64, u64)>,
    /// The Ready's commit index, noted once its entries are durable.
    commit: Option<u64>,
}

impl AfterSync {
    /// Only `on_persisted` of (index, term): for entries a shell deferred (a full disk) and
    /// wrote later, once their sync completes.
    pub fn persisted_only(index: u64, term: u64) -> AfterSync {
        AfterSync {
            late: Vec::new(),
            follower_apply: None,
            snapshot_sends: Vec::new(),
            snapshot_msgs: Vec::new(),
            persisted: Some((index, term)),
            commit: None,
        }
    }
}

/// The shell's planted bug; a constant `None` in builds without `sim-bugs` (the shipped
/// binary), so no bug branch is compiled into it.
#[inline]
fn planted<S: ReadyShell>(_shell: &S) -> NodeBug {
    #[cfg(any(test, feature = "sim-bugs"))]
    return _shell.bug();
    #[cfg(not(any(test, feature = "sim-bugs")))]
    return NodeBug::None;
}

/// An AppendEntries without entries (a commit-index update or probe), a heartbeat, or a
/// follower read's request or answer: nothing the sync could overlap with, so it need not
/// be on the wire before the answers to clients.
fn is_deferrable(m: &Message) -> bool {
    match &m.body {
        Some(Body::AppendEntries(a)) => a.entries.is_empty(),
        Some(Body::Heartbeat(_) | Body::ReadIndex(_) | Body::ReadIndexResponse(_)) => true,
        _ => false,
    }
}

/// The deferred entries with `entries` laid over them (a later append replaces the suffix
/// from its first index, as `Log::append` does).
pub fn merge_deferred(mut deferred: Vec<Entry>, entries: &[Entry]) -> Vec<Entry> {
    let (Some(d0), Some(e0)) = (deferred.first(), entries.first()) else {
        deferred.extend_from_slice(entries);
        return deferred;
    };
    let keep = e0.index.saturating_sub(d0.index) as usize;
    deferred.truncate(keep);
    deferred.extend_from_slice(entries);
    deferred
}

/// A successful AppendEntries answer: it promises the entries up to its match index.
fn is_append_ack(m: &Message) -> bool {
    matches!(&m.body, Some(Body::AppendEntriesResponse(r)) if r.success)
}

/// Handles one Ready in the production order. `Ok(Some(rest))`: the sync is pending; call
/// [`after_sync`] with `rest` once it completes. `Ok(None)`: fully handled.
pub fn handle_ready<S: ReadyShell>(shell: &mut S, rd: Ready) -> Result<Option<AfterSync>, String> {
    let must_sync = rd.must_sync;
    let rest = before_sync(shell, rd)?;
    if must_sync && shell.sync()? == SyncStatus::Pending {
        return Ok(Some(rest));
    }
    after_sync(shell, rest)?;
    Ok(None)
}

/// Phases 0-3 up to the sync.
fn before_sync<S: ReadyShell>(shell: &mut S, mut rd: Ready) -> Result<AfterSync, String> {
    let must_sync = rd.must_sync;
    if let Some(meta) = rd.snapshot.take() {
        // Nothing at or below a snapshot is handed out for applying.
        debug_assert!(rd.committed.iter().all(|e| e.index > meta.index));
        shell.install_snapshot(meta)?;
    }
    if let Some(conf) = rd.conf.take() {
        shell.conf_changed(&conf);
    }
    let (early, mut late) = rd.take_messages();
    if planted(shell) == NodeBug::AckBeforeSync {
        // PLANTED BUG: acks and vote grants leave before what they promise is durable.
        for m in std::mem::take(&mut late) {
            shell.send(m);
        }
    }
    // 0. Entries at once; messages that only carry the commit index or a heartbeat wait
    // until the answers to clients are out (phase 2).
    let (urgent, deferred): (Vec<Message>, Vec<Message>) =
        early.into_iter().partition(|m| !is_deferrable(m));
    if !urgent.is_empty() {
        for m in urgent {
            shell.send(m);
        }
        // Onto the wire now, not after the sync.
        shell.flush_peers();
    }
    // 1. Term/vote changes are durable before any message that depends on them.
    if let Some(hs) = rd.hard_state {
        shell.save_term_vote(hs)?;
    }
    // 2. A leader applies and answers before its own sync; a follower after its acks.
    let is_leader = shell.core().role() == Role::Leader;
    let (committed, reads, failed_reads) = (
        std::mem::take(&mut rd.committed),
        std::mem::take(&mut rd.reads),
        std::mem::take(&mut rd.failed_reads),
    );
    let mut follower_apply = None;
    if is_leader {
        shell.apply_and_serve(committed, reads, failed_reads)?;
        if !rd.entries.is_empty() || !deferred.is_empty() {
            // Answers onto the wire now: before the sync and before the commit broadcast.
            shell.flush_clients();
        }
    } else {
        follower_apply = Some((committed, reads, failed_reads));
    }
    if !deferred.is_empty() {
        for m in deferred {
            shell.send(m);
        }
        // Before the sync if there is one; a follower without one sends its ReadIndex with
        // its acks just below (phase 4 flushes), in one write instead of two.
        if is_leader || must_sync {
            shell.flush_peers();
        }
    }
    // 3. Append (the sync follows in `handle_ready`).
    let mut persisted = None;
    if let Some(last) = rd.entries.last() {
        persisted = Some((last.index, last.term));
        shell.append(&rd.entries)?;
        if is_leader {
            shell.on_appended_as_leader(&rd.entries);
        }
    }
    debug_assert!(
        persisted.is_none() || rd.must_sync,
        "entries appended without a sync"
    );
    if shell.withholding_acks() {
        // Nothing may say these entries are durable here: no successful append answers (a
        // follower simply does not ack; the leader re-sends) and no `on_persisted`.
        persisted = None;
        late.retain(|m| !is_append_ack(m));
    }
    Ok(AfterSync {
        late,
        follower_apply,
        snapshot_sends: rd.snapshot_sends,
        snapshot_msgs: rd.snapshot_msgs,
        persisted,
        commit: rd.hard_state.map(|hs| hs.commit),
    })
}

/// Phases 4-6, once the Ready's writes are durable.
pub fn after_sync<S: ReadyShell>(shell: &mut S, rest: AfterSync) -> Result<(), String> {
    if let Some(c) = rest.commit {
        shell.note_commit(c);
    }
    // 4. Messages that promise durable state, now that it is.
    for m in rest.late {
        shell.send(m);
    }
    if let Some((committed, reads, failed_reads)) = rest.follower_apply {
        // A follower's acks onto the wire before it applies.
        shell.flush_peers();
        shell.apply_and_serve(committed, reads, failed_reads)?;
    }
    // 5. Snapshots: stream to peers behind the compacted log; feed transfer messages.
    if !rest.snapshot_sends.is_empty() {
        shell.snapshot_sends(rest.snapshot_sends);
    }
    if !rest.snapshot_msgs.is_empty() {
        shell.snapshot_msgs(rest.snapshot_msgs)?;
    }
    // 6. Acknowledge durability.
    if let Some((index, term)) = rest.persisted {
        shell.core().on_persisted(index, term);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::tests::{append, cfg, ent, heartbeat, node_with};
    use crate::raft::MemLog;

    /// Records what the phases do, in order.
    struct Shell {
        core: RawNode<MemLog>,
        events: Vec<String>,
    }

    impl ReadyShell for Shell {
        type Store = MemLog;
        fn core(&mut self) -> &mut RawNode<MemLog> {
            &mut self.core
        }
        fn send(&mut self, m: Message) {
            let kind = match m.body {
                Some(Body::ReadIndex(_)) => "send ReadIndex",
                Some(Body::HeartbeatResponse(_)) => "send HeartbeatResponse",
                Some(Body::AppendEntriesResponse(_)) => "send AppendEntriesResponse",
                _ => "send other",
            };
            self.events.push(kind.into());
        }
        fn flush_peers(&mut self) {
            self.events.push("flush".into());
        }
        fn save_term_vote(&mut self, _hs: HardState) -> Result<(), String> {
            Ok(())
        }
        fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
            self.core
                .store_mut()
                .append(entries)
                .map_err(|e| e.to_string())
        }
        fn sync(&mut self) -> Result<SyncStatus, String> {
            self.events.push("sync".into());
            Ok(SyncStatus::Done)
        }
        fn apply_and_serve(
            &mut self,
            _c: Vec<Entry>,
            _r: Vec<ReadState>,
            _f: Vec<u64>,
        ) -> Result<(), String> {
            Ok(())
        }
        fn install_snapshot(&mut self, _meta: SnapshotMeta) -> Result<(), String> {
            Ok(())
        }
        fn snapshot_sends(&mut self, _peers: Vec<u64>) {}
        fn snapshot_msgs(&mut self, _msgs: Vec<Message>) -> Result<(), String> {
            Ok(())
        }
    }

    fn follower() -> Shell {
        let mut core = node_with(cfg(2), &[1, 2, 3], &[], 1, 0, 0);
        core.step(heartbeat(1, 2, 1, 0, 0));
        let mut s = Shell {
            core,
            events: Vec::new(),
        };
        let rd = s.core.ready();
        handle_ready(&mut s, rd).unwrap();
        s.events.clear();
        s
    }

    /// A follower's ReadIndex leaves before a sync when there is one, and otherwise in the same
    /// write (flush) as its heartbeat answer, not in a write of its own.
    #[test]
    fn follower_read_request_flushes_before_a_sync_else_with_the_acks() {
        let mut s = follower();
        s.core.step(heartbeat(1, 2, 1, 0, 0));
        s.core.read_index(1).unwrap();
        let rd = s.core.ready();
        assert!(!rd.must_sync);
        assert!(handle_ready(&mut s, rd).unwrap().is_none());
        let first_flush = s.events.iter().position(|e| e == "flush");
        assert_eq!(
            &s.events[..first_flush.unwrap_or(s.events.len())],
            ["send ReadIndex", "send HeartbeatResponse"],
            "events {:?}",
            s.events
        );

        let mut s = follower();
        s.core.step(append(1, 2, 1, (0, 0), vec![ent(1, 1)], 0));
        s.core.read_index(2).unwrap();
        let rd = s.core.ready();
        assert!(rd.must_sync);
        assert!(handle_ready(&mut s, rd).unwrap().is_none());
        assert_eq!(
            s.events[..4],
            [
                "send ReadIndex",
                "flush",
                "sync",
                "send AppendEntriesResponse"
            ],
            "events {:?}",
            s.events
        );
    }
}
