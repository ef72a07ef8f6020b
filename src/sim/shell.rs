//! The simulator's side of the node layer's Ready phases (`ReadyShell`), and the planted
//! node-layer bug that needs the shell.

use super::checker::Checker;
use super::node::{Action, SimNode, SimRef};
use super::trace::trace_entries;
use crate::node::{install_staged, NodeBug, ReadyShell, Replica, SyncStatus};
use crate::pb::kvpb;
use crate::raft::{
    Entry, EntryType, HardState, LogStore, MemLog, Message, RawNode, ReadState, SnapshotMeta,
};
use crate::rng::Rng;
use crate::sim::client::Reply;
use prost::Message as _;

/// The simulator's side of the node layer's Ready phases: messages become `Action::Send`
/// (the network delays, drops and reorders them), the log and hard state go to the simulated
/// `Disk` (durable only once a simulated sync completes; a crash loses the rest), and a sync
/// is `Pending` until the world delivers `SyncDone`.
pub(super) struct SimShell<'a> {
    node: &'a mut SimNode,
    rng: &'a mut Rng,
    checker: &'a mut Checker,
    out: &'a mut Vec<Action>,
}

impl SimNode {
    /// This node as the node layer's `ReadyShell` for one call.
    pub(super) fn shell<'a>(
        &'a mut self,
        rng: &'a mut Rng,
        checker: &'a mut Checker,
        out: &'a mut Vec<Action>,
    ) -> SimShell<'a> {
        SimShell {
            node: self,
            rng,
            checker,
            out,
        }
    }
}

impl SimShell<'_> {
    /// Appends to the simulated log and disk (the checker sees every append).
    /// Appends to the simulated log and disk (the checker sees every append). Entries at or
    /// below `last_commit` must not change.
    fn append_to_disk(&mut self, entries: &[Entry], last_commit: u64) -> Result<(), String> {
        let id = self.node.id;
        let raw = self
            .node
            .rep
            .as_mut()
            .expect("a running node has a replica")
            .core_mut();
        let prev_term = raw.store().term(entries[0].index - 1).ok();
        self.checker.on_append(id, prev_term, entries)?;
        // Never rewrite an entry at or below the commit index this node knew.
        for e in entries.iter().take_while(|e| e.index <= last_commit) {
            match raw.store().term(e.index) {
                Ok(t) if t != e.term => {
                    return Err(format!(
                        "node {id}: overwrites index {} (term {t}) with term {} at or below \
                         its commit {last_commit}",
                        e.index, e.term
                    ))
                }
                _ => {}
            }
        }
        raw.store_mut()
            .append(entries)
            .map_err(|e| format!("node {id}: log append: {e}"))?;
        self.node.disk.append(entries);
        self.out.push(Action::Trace(format!(
            "node {id} append {}",
            trace_entries(entries)
        )));
        Ok(())
    }

    /// The last index up to which the durable log holds what the core holds: all of it,
    /// unless a full disk deferred entries (then up to just before the first of them).
    fn log_agrees_through(&self) -> u64 {
        let stored = self
            .node
            .rep
            .as_ref()
            .map_or(0, |r| r.core().store().last_index());
        match self.node.unlogged.first() {
            Some(e) => stored.min(e.index - 1),
            None => stored,
        }
    }

    fn rep(&mut self) -> &mut Replica<MemLog, SimRef> {
        self.node
            .rep
            .as_mut()
            .expect("a running node has a replica")
    }
}

impl ReadyShell for SimShell<'_> {
    type Store = MemLog;

    fn core(&mut self) -> &mut RawNode<MemLog> {
        self.rep().core_mut()
    }

    fn bug(&self) -> NodeBug {
        self.node.params.bug
    }

    fn send(&mut self, m: Message) {
        self.out.push(Action::Send(m));
    }

    fn save_term_vote(&mut self, mut hs: HardState) -> Result<(), String> {
        // As the server's commit hint: never beyond what the durable log holds as the core
        // does (a deferred append leaves a stale suffix there that a restart must not apply).
        hs.commit = hs.commit.min(self.log_agrees_through());
        self.out.push(Action::Trace(format!(
            "node {} write hardstate term {} vote {} commit {}",
            self.node.id, hs.term, hs.vote, hs.commit
        )));
        self.node.disk.set_hard_state(hs);
        Ok(())
    }

    /// With probability `append_full` the disk is full: nothing is written, the entries
    /// wait (with any waiting before them) and acks are withheld, as in the server.
    fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        // Stored entries from the first deferred one on may be a stale suffix the core has
        // already replaced: rewriting them is no rewrite of a committed entry.
        let guard = self.log_agrees_through().min(self.node.last_commit);
        let batch = crate::node::merge_deferred(std::mem::take(&mut self.node.unlogged), entries);
        if batch.is_empty() {
            return Ok(());
        }
        let full = self.node.params.append_full;
        if full > 0.0 && self.rng.chance(full) {
            self.out.push(Action::Trace(format!(
                "node {} append {} deferred: disk full (ENOSPC)",
                self.node.id,
                trace_entries(&batch)
            )));
            self.node.unlogged = batch;
            return Ok(());
        }
        self.append_to_disk(&batch, guard)
    }

    fn withholding_acks(&self) -> bool {
        !self.node.unlogged.is_empty()
    }

    fn sync(&mut self) -> Result<SyncStatus, String> {
        if !self.node.disk.dirty() {
            return Ok(SyncStatus::Done);
        }
        let p = &self.node.params;
        let latency = self.rng.range(p.sync_min, p.sync_max + 1);
        self.out.push(Action::Sync { latency });
        Ok(SyncStatus::Pending)
    }

    fn flush_clients(&mut self) {
        self.node.deliver_answers(self.out);
    }

    fn apply_and_serve(
        &mut self,
        committed: Vec<Entry>,
        reads: Vec<ReadState>,
        failed_reads: Vec<u64>,
    ) -> Result<(), String> {
        let applied = self.rep().applied();
        for e in committed.iter().filter(|e| e.index > applied) {
            self.node.check_apply(e, self.checker, self.out)?;
        }
        let any = committed.last().is_some_and(|e| e.index > applied);
        let mut reads = reads;
        if self.node.params.bug == NodeBug::FollowerReadBeforeApply
            && self.rep().core().role() != crate::raft::Role::Leader
        {
            // PLANTED BUG: serve at once, whatever the read index (never in the server).
            for r in &mut reads {
                r.index = 0;
            }
        }
        self.rep().apply_and_serve(committed, reads, failed_reads);
        if any {
            self.node.maybe_snapshot(self.out)?;
        }
        Ok(())
    }

    fn on_appended_as_leader(&mut self, entries: &[Entry]) {
        if self.node.params.bug == NodeBug::AnswerBeforeCommit {
            self.node.answer_before_commit(entries, self.out);
        }
        let id = self.node.id;
        let Some(raw) = self.node.rep.as_ref().map(|r| r.core()) else {
            return;
        };
        let (term, commit) = (raw.term(), (raw.status().commit, raw.committed_own_term()));
        for e in entries
            .iter()
            .filter(|e| e.entry_type == EntryType::EntryConfChange as i32)
        {
            // Reported after this event (`check_durable`): this hook cannot fail the Ready.
            let core_prev = raw.conf_before(e.index);
            if let Err(v) =
                self.checker
                    .on_conf_appended(id, term, e, raw.store(), commit, core_prev)
            {
                self.checker.note_violation(v);
            }
        }
    }

    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), String> {
        let reply = install_staged(self.rep(), &meta)?;
        let bytes = self.rep().applied_bytes();
        let n = &mut *self.node;
        n.bytes_at_snapshot = bytes;
        n.installs += 1;
        // The log restarts after the snapshot: deferred entries are covered by it.
        n.unlogged.clear();
        n.disk.reset_log(meta.index, meta.term);
        self.checker.on_snapshot(n.id, meta.index, meta.term)?;
        self.out.push(Action::Trace(format!(
            "node {} installed snapshot {}/t{}",
            n.id, meta.index, meta.term
        )));
        self.out.push(Action::Send(reply));
        Ok(())
    }

    fn snapshot_sends(&mut self, peers: Vec<u64>) {
        self.node.send_snapshots(peers, self.out);
    }

    fn snapshot_msgs(&mut self, msgs: Vec<Message>) -> Result<(), String> {
        for m in msgs {
            self.node.snapshot_msg(m, self.out)?;
        }
        Ok(())
    }
}

impl SimNode {
    /// PLANTED BUG (`NodeBug::AnswerBeforeCommit`): a leader answers each write as soon as it
    /// is appended, as if it had applied at its index.
    fn answer_before_commit(&mut self, entries: &[Entry], out: &mut Vec<Action>) {
        use kvpb::command::Op;
        use kvpb::response::Result as R;
        for e in entries {
            let Ok(cmd) = kvpb::Command::decode(&e.data[..]) else {
                continue;
            };
            let Some(&to) = self
                .rep
                .as_mut()
                .and_then(|r| r.requests().pending_write(e.index))
            else {
                continue;
            };
            let r = match cmd.op {
                Some(Op::Put(_)) => R::Put(kvpb::PutResponse {
                    version: e.index,
                    ..Default::default()
                }),
                Some(Op::Delete(_)) => R::Delete(kvpb::DeleteResponse {
                    deleted: true,
                    count: 0,
                }),
                Some(Op::Cas(_)) => R::Cas(kvpb::CasResponse {
                    succeeded: true,
                    version: e.index,
                }),
                // The simulator's clients send only the ops above.
                Some(_) | None => continue,
            };
            out.push(Action::Reply {
                client: to.client,
                attempt: to.attempt,
                seq: to.seq,
                reply: Reply::Write(Box::new(r)),
            });
        }
    }
}
