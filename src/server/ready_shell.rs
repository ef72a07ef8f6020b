//! The server's side of the node layer's Ready phases (`crate::node::ReadyShell`): peer
//! messages go to the peer links' queues and are flushed onto the sockets when the phases say
//! so, term/vote changes go to the hard state file, entries to the mmap'd log and one
//! `msync` per Ready, answers to the client connections. The ordering itself lives in
//! `src/node/ready.rs`, and what applying does to requests in `src/node/replica.rs`, both
//! shared with the simulator.

use super::Server;
use crate::node::{ReadyShell, SyncStatus};
use crate::raft::{
    ConfState, Entry, HardState, LogStore, Message, RawNode, ReadState, Ready, SnapshotMeta,
};
use crate::storage::Log;

impl Server {
    /// Handles every Ready the core has, then reports unreachable peers and notices
    /// leadership changes.
    pub(super) fn process_ready(&mut self) -> Result<(), String> {
        let mut any = false;
        while self.replica.core().has_ready() {
            any = true;
            let rd = self.replica.core_mut().ready();
            self.handle_ready(rd)?;
        }
        if !self.unreachable.is_empty() {
            for id in std::mem::take(&mut self.unreachable) {
                self.replica.core_mut().report_unreachable(id);
            }
        }
        if any && self.replica.check_leadership().role_changed {
            self.snaps.transfers.drop_senders();
        }
        if self.replica.core().is_removed() {
            return Err(format!(
                "node {} was removed from the cluster: it cannot rejoin under this id (ids are \
                 never reused). To bring this machine back, wipe its data directory and join \
                 with a new id: raftkv serve --join ENDPOINTS --id NEW_ID ...",
                self.cfg.id
            ));
        }
        Ok(())
    }

    /// One Ready in the production order: the node layer's phases (`src/node/ready.rs`) over
    /// this server's sockets, log and hard state file. The sync here is synchronous, so the
    /// node layer never leaves part of it pending.
    fn handle_ready(&mut self, rd: Ready) -> Result<(), String> {
        self.appended_unsynced = false;
        let pending = crate::node::handle_ready(self, rd)?;
        debug_assert!(pending.is_none(), "the server's sync is synchronous");
        Ok(())
    }
}

impl ReadyShell for Server {
    type Store = Log;

    fn core(&mut self) -> &mut RawNode<Log> {
        self.replica.core_mut()
    }

    fn send(&mut self, m: Message) {
        self.send_peer(m);
    }

    fn conf_changed(&mut self, conf: &ConfState) {
        self.update_peer_links(conf);
    }

    fn flush_peers(&mut self) {
        Server::flush_peers(self);
    }

    fn flush_clients(&mut self) {
        if !self.dirty_clients.is_empty() || self.replica.requests().has_answers() {
            Server::flush_clients(self);
        }
    }

    /// Term/vote changes are written at once; the commit index rides along lazily (see
    /// `persist_commit_hint`), and only one whose entries are already durable here.
    fn save_term_vote(&mut self, hs: HardState) -> Result<(), String> {
        if hs.term != self.saved_hs.term || hs.vote != self.saved_hs.vote {
            let to_save = HardState {
                term: hs.term,
                vote: hs.vote,
                commit: self.commit_hint,
            };
            self.hs_file
                .save(&to_save)
                .map_err(|e| format!("saving hard state: {e}"))?;
            self.saved_hs = to_save;
        }
        Ok(())
    }

    /// Capped at what the log holds as the core does: entries a full disk deferred
    /// (`space.rs`) may be committed by the others, but a hint beyond the log would make a
    /// restart refuse it, and one over a stale suffix (the deferred entries replace it) would
    /// make a restart apply the wrong entries.
    fn note_commit(&mut self, commit: u64) {
        let mut held = self.replica.core().store().last_index();
        if let Some(first) = self.space.deferred.first() {
            // From there on the log may hold a stale suffix the core already replaced.
            held = held.min(first.index - 1);
        }
        self.commit_hint = self.commit_hint.max(commit.min(held));
    }

    /// On a full disk the entries are deferred, not logged (`space.rs`): not fatal.
    fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        let t0 = std::time::Instant::now();
        if self.append_or_defer(entries)? {
            self.metrics.log_append.observe(t0.elapsed());
            self.appended_unsynced = true;
        }
        debug_assert_eq!(self.replica.core().store().check_invariants(), Ok(()));
        Ok(())
    }

    fn withholding_acks(&self) -> bool {
        Server::withholding_acks(self)
    }

    /// Group commit: one sync for everything proposed or received in this Ready. (A term or
    /// vote change alone was made durable by the hard state file's own write.)
    fn sync(&mut self) -> Result<SyncStatus, String> {
        if std::mem::take(&mut self.appended_unsynced) {
            let t0 = std::time::Instant::now();
            self.replica
                .core_mut()
                .store_mut()
                .sync()
                .map_err(|e| format!("syncing the log: {e}"))?;
            self.metrics.log_sync.observe(t0.elapsed());
        }
        Ok(SyncStatus::Done)
    }

    fn apply_and_serve(
        &mut self,
        committed: Vec<Entry>,
        reads: Vec<ReadState>,
        failed_reads: Vec<u64>,
    ) -> Result<(), String> {
        let bytes = self.replica.applied_bytes();
        self.metrics.read_index_rounds += reads.len() as u64;
        self.replica.apply_and_serve(committed, reads, failed_reads);
        // The snapshot policy counts command bytes applied since the newest snapshot.
        self.snaps.bytes_since += self.replica.applied_bytes() - bytes;
        Ok(())
    }

    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), String> {
        Server::install_snapshot(self, meta)
    }

    fn snapshot_sends(&mut self, peers: Vec<u64>) {
        self.on_snapshot_sends(peers);
    }

    fn snapshot_msgs(&mut self, msgs: Vec<Message>) -> Result<(), String> {
        self.on_snapshot_msgs(msgs)
    }
}
