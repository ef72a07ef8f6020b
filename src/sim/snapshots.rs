//! A simulated node's snapshots: taking them by the server's policy (inline, where the server
//! forks), and the production snapshot transfer (`node/transfer.rs`) over the simulated disk.

use super::disk::{DiskSink, SnapFile};
use super::node::{Action, SimNode};
use crate::node::{install_received, Installed, NodeBug};
use crate::pb::raftpb::message::Body;
use crate::raft::{LogStore, Message};
use crate::snapshot::{Received, SnapshotSource};

impl SimNode {
    /// Takes a local snapshot and compacts the log when enough has been applied.
    pub(super) fn maybe_snapshot(&mut self, out: &mut Vec<Action>) -> Result<(), String> {
        // As the server: no snapshot while a full disk keeps entries out of the log (some may
        // be applied already, and the log knows neither them nor their terms).
        if !self.unlogged.is_empty() {
            return Ok(());
        }
        let Some(rep) = self.rep.as_mut() else {
            return Ok(());
        };
        let policy = &self.params.policy;
        let bytes_since = rep.applied_bytes() - self.bytes_at_snapshot;
        let snap_index = self
            .disk
            .durable
            .snapshot
            .as_ref()
            .map_or(0, |s| s.meta.index);
        if !policy.should_snapshot(&rep.log_stats(snap_index, bytes_since)) {
            return Ok(());
        }
        let meta = rep
            .snapshot_meta()
            .map_err(|e| format!("node {}: {e}", self.id))?;
        let (index, term) = (meta.index, meta.term);
        let mut data = Vec::new();
        rep.kv()
            .write_snapshot(&mut data)
            .map_err(|e| format!("node {}: write_snapshot: {e}", self.id))?;
        let snap = SnapFile {
            meta,
            data: data.into(),
        };
        self.disk
            .save_snapshot(snap)
            .map_err(|e| format!("node {}: save snapshot: {e}", self.id))?;
        let compact_to = policy.compact_index(&rep.log_stats(index, bytes_since));
        self.bytes_at_snapshot = rep.applied_bytes();
        out.push(Action::Trace(format!(
            "node {} snapshot at {index}/t{term}, log compacted to {compact_to:?}",
            self.id
        )));
        let Some(c) = compact_to else {
            return Ok(());
        };
        let log = rep.core_mut().store_mut();
        let term_c = log
            .term(c)
            .map_err(|e| format!("node {}: term of compaction index {c}: {e}", self.id))?;
        self.disk
            .compact(c, term_c)
            .map_err(|e| format!("node {}: compact the durable log to {c}: {e}", self.id))?;
        log.compact(c, term_c)
            .map_err(|e| format!("node {}: compact to {c}: {e}", self.id))
    }

    /// Ready step 5 (leader): stream the durable snapshot to each peer that needs it.
    pub(super) fn send_snapshots(&mut self, peers: Vec<u64>, out: &mut Vec<Action>) {
        let Some(rep) = self.rep.as_mut() else {
            return;
        };
        let snap = self.disk.durable.snapshot.clone();
        let source = || snap.clone().map(|s| Box::new(s) as Box<dyn SnapshotSource>);
        let mut msgs = Vec::new();
        self.transfers
            .start(rep.core_mut(), peers, source, &mut msgs);
        out.extend(msgs.into_iter().map(Action::Send));
    }

    /// Ready step 5: InstallSnapshotResponses (leader) and InstallSnapshot chunks (follower),
    /// through the production sender, receiver and install order (`node/transfer.rs`).
    pub(super) fn snapshot_msg(&mut self, m: Message, out: &mut Vec<Action>) -> Result<(), String> {
        let Some(rep) = self.rep.as_mut() else {
            return Ok(());
        };
        if let Some(Body::InstallSnapshotResponse(_)) = &m.body {
            let mut msgs = Vec::new();
            self.transfers.on_response(rep.core_mut(), &m, &mut msgs);
            out.extend(msgs.into_iter().map(Action::Send));
            return Ok(());
        }
        let mut sink = DiskSink {
            disk: &mut self.disk,
            before_durable: self.params.bug == NodeBug::SnapshotBeforeDurable,
        };
        let applied = rep.kv().applied();
        let rs = match self.transfers.receiver().on_message(&mut sink, applied, &m) {
            Received::Ignored => return Ok(()),
            Received::Reply(r) => {
                out.push(Action::Send(r));
                return Ok(());
            }
            Received::Complete(rs) => rs,
        };
        out.push(Action::Send(rs.progress_reply()));
        match install_received(rep, &mut sink, *rs)? {
            Installed::Staged { meta, .. } => {
                out.push(Action::Trace(format!(
                    "node {} received snapshot {}/t{}, durable; the core took it",
                    self.id, meta.index, meta.term
                )));
            }
            Installed::Stale { meta, reply, .. } => {
                out.push(Action::Trace(format!(
                    "node {} refused stale snapshot {}/t{}",
                    self.id, meta.index, meta.term
                )));
                out.push(Action::Send(reply));
            }
            Installed::Invalid { why, .. } => {
                // Every simulated snapshot is made by a correct node and sent intact (the
                // CRC guards the transfer): an invalid one is a bug.
                return Err(format!(
                    "node {}: a snapshot from node {} failed validation: {why}",
                    self.id, m.from
                ));
            }
        }
        Ok(())
    }
}
