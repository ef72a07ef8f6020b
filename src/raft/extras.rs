//! Reads (ReadIndex and lease), leadership transfer, snapshots and transport reports.

use super::node::RawNode;
use super::read_only::Confirmed;
use super::tracker::ProgressState;
use super::{LogStore, PlantedBug, ProposeError, ReadState, Role, SnapshotMeta};
use crate::pb::raftpb::message::Body;
use crate::pb::raftpb::{InstallSnapshotResponse, Message, ReadIndexResponse};

impl<S: LogStore> RawNode<S> {
    fn not_leader(&self) -> ProposeError {
        ProposeError::NotLeader {
            leader: (self.leader != 0).then_some(self.leader),
        }
    }

    /// Starts a ReadIndex round for request `ctx`; the answer arrives in `Ready::reads`
    /// (or `Ready::failed_reads`). On the leader it is confirmed by a heartbeat quorum. On a
    /// follower that knows its leader it is queued: the next Ready sends every queued read to
    /// the leader in one `ReadIndex` message, and the leader's `ReadIndexResponse` gives the
    /// index to serve at (follower ReadIndex, Raft dissertation §6.4). A follower's read fails
    /// when the term or the leader changes, or when no answer came within
    /// `REMOTE_READ_TIMEOUT_ELECTIONS` election timeouts. A node that knows no leader (or is
    /// campaigning) returns `NotLeader`.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        if self.role == Role::Follower && self.leader != 0 && self.removed_at.is_none() {
            self.read_only.queued.push(ctx);
            return Ok(());
        }
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if self.cfg.planted_bug() == PlantedBug::CommitOldTerm && self.log.last_term() != self.term
        {
            // Planted bug: the start-of-term no-op was held back (see become_leader).
            self.append_noop();
        }
        if !self.committed_own_term() {
            // The commit index is not known to be current until our no-op commits (§6.4).
            self.read_only.deferred.push((0, vec![ctx]));
            return Ok(());
        }
        self.start_read(0, vec![ctx]);
        Ok(())
    }

    /// Leader: follower `from` asks for a read index for `ctxs` (its own request ids). The
    /// same confirmation as the leader's own reads; the answer is a `ReadIndexResponse`.
    pub(super) fn handle_read_index(&mut self, from: u64, ctxs: Vec<u64>) {
        if ctxs.is_empty() || !self.prs.contains_key(&from) {
            return;
        }
        if !self.read_only.admit_remote(ctxs.len()) {
            log::warn!(
                "node {}: {} reads of node {from} dropped: {} followers' reads already wait",
                self.id(),
                ctxs.len(),
                super::read_only::MAX_REMOTE_READS
            );
            return;
        }
        if !self.committed_own_term() {
            self.read_only.deferred.push((from, ctxs));
            return;
        }
        self.start_read(from, ctxs);
    }

    /// Records commit for the reads `ctxs` of `origin` (0 = this node) and arranges a tagged
    /// heartbeat round to confirm them.
    pub(super) fn start_read(&mut self, origin: u64, ctxs: Vec<u64>) {
        let me = self.id();
        let index = self.commit;
        if self.quorum().has_quorum(|v| v == me) {
            self.deliver_reads(vec![Confirmed {
                origin,
                ctxs,
                index,
            }]);
            return;
        }
        self.read_only.add(origin, ctxs, index, me);
        self.pending_read_hb = true;
    }

    /// Confirmed reads: this node's go to `Ready::reads`, a follower's back to it.
    pub(super) fn deliver_reads(&mut self, confirmed: Vec<Confirmed>) {
        for c in confirmed {
            if c.origin == 0 {
                let index = c.index;
                self.reads
                    .extend(c.ctxs.into_iter().map(|ctx| ReadState { ctx, index }));
            } else {
                self.read_only.release_remote(c.ctxs.len());
                self.send(
                    c.origin,
                    Body::ReadIndexResponse(ReadIndexResponse {
                        ctxs: c.ctxs,
                        index: c.index,
                    }),
                );
            }
        }
    }

    /// Follower: the leader answered `ctxs` at `index`.
    pub(super) fn handle_read_index_response(&mut self, from: u64, r: ReadIndexResponse) {
        if self.role != Role::Follower || from != self.leader {
            return;
        }
        let index = r.index;
        let ctxs = self.read_only.answered(r.ctxs);
        self.reads
            .extend(ctxs.into_iter().map(|ctx| ReadState { ctx, index }));
    }

    /// Number of reads waiting for confirmation (tests, status).
    pub fn pending_reads(&self) -> usize {
        self.read_only.len()
    }

    /// Leader-lease read: if this leader holds a valid lease, the index to serve at once.
    /// A lease needs `check_quorum && lease_read`, an entry of this term committed, no transfer
    /// in progress, and heartbeat acks from a quorum for heartbeats sent less than
    /// `election_tick - margin` ticks ago (voters ignore other candidates for `election_tick`
    /// ticks after hearing from us). Otherwise `NoLease`: fall back to `read_index`.
    pub fn lease_read(&mut self) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if !(self.cfg.check_quorum && self.cfg.lease_read) {
            return Err(ProposeError::NoLease);
        }
        if self.transferee != 0 || !self.committed_own_term() {
            return Err(ProposeError::NoLease);
        }
        let margin = (self.cfg.election_tick as u64 / 10).max(1);
        let window = (self.cfg.election_tick as u64).saturating_sub(margin);
        let (me, now, fence) = (self.id(), self.now, self.lease_fence);
        let fresh = |id: u64| {
            id == me
                || self.prs.get(&id).is_some_and(|p| {
                    p.lease_tick
                        .is_some_and(|t| t >= fence && now.saturating_sub(t) < window)
                })
        };
        if self.quorum().has_quorum(fresh) {
            Ok(self.commit)
        } else {
            Err(ProposeError::NoLease)
        }
    }

    /// Asks the leader to hand leadership to `to`. Ignored on followers, for non-voters and
    /// for the current target; `to == self` cancels a pending transfer.
    pub fn transfer_leader(&mut self, to: u64) {
        if self.role != Role::Leader {
            return;
        }
        if to == self.id() {
            self.transferee = 0;
            return;
        }
        if !self.is_voter(to) || !self.prs.contains_key(&to) || self.transferee == to {
            return;
        }
        self.transferee = to;
        // The transfer gets one election timeout to finish (checked in tick_leader).
        self.election_elapsed = 0;
        let caught_up = self
            .prs
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.maybe_finish_transfer(to);
        } else {
            self.send_append(to, true);
        }
    }

    /// Target of a pending leadership transfer (leader only).
    pub fn pending_transfer(&self) -> Option<u64> {
        (self.transferee != 0).then_some(self.transferee)
    }

    /// The follower received, verified and made durable a complete snapshot. Returns true if
    /// the core accepts it: the next Ready carries it in `Ready::snapshot`, and the shell then
    /// resets the log store to it and restores the state machine from it.
    /// False: stale (at or below commit), ignore it. If the log already holds the snapshot's
    /// last entry, commit just moves up to it and false is returned.
    pub fn restore_snapshot(&mut self, meta: SnapshotMeta) -> bool {
        if self.role == Role::Leader || meta.index <= self.commit {
            return false;
        }
        if self.log.match_term(meta.index, meta.term) {
            self.commit = meta.index;
            return false;
        }
        log::info!(
            "node {} restores snapshot at ({}, {})",
            self.id(),
            meta.index,
            meta.term
        );
        self.log.restore(meta.index, meta.term);
        self.commit = meta.index;
        self.applied = meta.index;
        self.handed = meta.index;
        self.persisted = meta.index;
        if let Some(conf) = &meta.conf {
            self.members.reset(meta.index, conf.clone());
            self.on_conf_changed();
        }
        self.pending_snapshot = Some(meta);
        true
    }

    /// The transport could not reach `peer`: stop pipelining to it.
    pub fn report_unreachable(&mut self, peer: u64) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.prs.get_mut(&peer) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// A snapshot stream to `peer` finished (`ok`) or failed. Either way the peer is probed
    /// next (after the snapshot on success), paused until its next heartbeat ack.
    pub fn report_snapshot(&mut self, peer: u64, ok: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.prs.get_mut(&peer) {
            if pr.state == ProgressState::Snapshot {
                if !ok {
                    pr.pending_snapshot = 0;
                }
                pr.become_probe();
                pr.probe_sent = true;
            }
        }
    }

    /// An InstallSnapshotResponse passed the term checks: hand it to the shell, and if it
    /// reports the snapshot installed, the follower matches up to its index.
    pub(super) fn handle_snapshot_response(
        &mut self,
        from: u64,
        term: u64,
        r: InstallSnapshotResponse,
    ) {
        let first_index = self.log.first_index();
        if r.done && r.success && r.index <= self.log.last_index() {
            if let Some(pr) = self.prs.get_mut(&from) {
                pr.recent_active = true;
                pr.maybe_update(r.index);
                if pr.state == ProgressState::Snapshot
                    && (pr.matched >= pr.pending_snapshot || pr.matched + 1 >= first_index)
                {
                    pr.become_probe();
                    pr.become_replicate();
                }
                if self.maybe_commit() {
                    self.pending_commit_bcast = true;
                }
                self.send_append(from, true);
            }
        }
        self.snapshot_msgs.push(Message {
            from,
            to: self.id(),
            term,
            body: Some(Body::InstallSnapshotResponse(r)),
        });
    }
}
