//! Log replication (Raft §5.3, §5.4.2): proposals, AppendEntries on both sides, heartbeats,
//! commit counting and flow control.

use super::log::entry_size;
use super::node::RawNode;
use super::quorum::JointConfig;
use super::tracker::ProgressState;
use super::{Entry, EntryType, LogError, LogStore, PlantedBug, ProposeError, Role};
use crate::pb::raftpb::message::Body;
use crate::pb::raftpb::{
    AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse, TimeoutNow,
};
use bytes::Bytes;

impl<S: LogStore> RawNode<S> {
    /// Proposes a command; on the leader, returns the index it will have.
    pub fn propose(&mut self, data: Bytes) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: (self.leader != 0).then_some(self.leader),
            });
        }
        if self.transferee != 0 {
            return Err(ProposeError::TransferInProgress);
        }
        let size = data.len() as u64;
        let limit = self.cfg.max_uncommitted_bytes;
        // One oversize proposal passes when nothing is pending; empty entries always pass.
        if limit > 0
            && size > 0
            && self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > limit
        {
            return Err(ProposeError::Overloaded);
        }
        let index = self.log.last_index() + 1;
        self.append_log(vec![Entry {
            index,
            term: self.term,
            entry_type: EntryType::EntryNormal as i32,
            data,
        }]);
        if size > 0 {
            self.uncommitted.push_back((index, size));
            self.uncommitted_bytes += size;
        }
        // Sent at the next ready(): many proposals share one AppendEntries.
        self.pending_bcast = true;
        Ok(index)
    }

    /// Sends `to` the entries from its next index (or a snapshot request if they were
    /// compacted). Returns true if a message went out.
    pub(super) fn send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let (max_inflight, max_bytes) = (self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
        let Some(pr) = self.prs.get(&to) else {
            return false;
        };
        if pr.is_paused(max_inflight, max_bytes) {
            return false;
        }
        let next = pr.next;
        let prev = next - 1;
        let last = self.log.last_index();
        let prev_term = self.log.term(prev);
        let ents = self.log.entries(next, last + 1, self.cfg.max_msg_bytes);
        match (prev_term, ents) {
            (Ok(prev_term), Ok(ents)) => {
                if ents.is_empty() && !send_if_empty {
                    return false;
                }
                let n = ents.len();
                let end = ents.last().map(|e| e.index).unwrap_or(prev);
                let bytes: u64 = ents.iter().map(entry_size).sum();
                if let Some(pr) = self.prs.get_mut(&to) {
                    pr.sent_entries(n, end, bytes);
                }
                let commit = self.commit;
                self.send(
                    to,
                    Body::AppendEntries(AppendEntries {
                        prev_log_index: prev,
                        prev_log_term: prev_term,
                        entries: ents,
                        commit,
                    }),
                );
                true
            }
            (Err(LogError::Compacted), _) | (_, Err(LogError::Compacted)) => {
                // The entries it needs are gone: it needs a snapshot (only if it is alive).
                let (snap_index, _) = self.log.snapshot_index_term();
                let Some(pr) = self.prs.get_mut(&to) else {
                    return false;
                };
                if !pr.recent_active {
                    return false;
                }
                pr.become_snapshot(snap_index);
                if !self.snapshot_sends.contains(&to) {
                    self.snapshot_sends.push(to);
                }
                false
            }
            (Err(e), _) | (_, Err(e)) => {
                log::error!(
                    "node {}: cannot read log for {to} at {next}: {e}",
                    self.id()
                );
                false
            }
        }
    }

    pub(super) fn bcast_append(&mut self, send_if_empty: bool) {
        let peers: Vec<u64> = self.prs.keys().copied().collect();
        for p in peers {
            // Pipelining: a replicating peer gets as many batches as its window allows.
            if self.send_append(p, send_if_empty) {
                while self.send_append(p, false) {}
            }
        }
    }

    pub(super) fn bcast_heartbeat(&mut self, context: u64) {
        let peers: Vec<(u64, u64)> = self.prs.iter().map(|(&id, p)| (id, p.matched)).collect();
        let now = self.now;
        for (p, matched) in peers {
            // Never tell a follower to commit past what it is known to hold (H1).
            let commit = self.commit.min(matched);
            self.send(
                p,
                Body::Heartbeat(Heartbeat {
                    commit,
                    context,
                    lease_tick: now,
                }),
            );
        }
    }

    /// Recomputes commit from the voters' match indexes (self = locally persisted). Only an
    /// entry of the current term is committed by counting (Raft §5.4.2). True if it moved.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let me = self.id();
        let c = self.members.current();
        let counted: Vec<u64> = if self.cfg.planted_bug() == PlantedBug::LearnerVotes {
            c.voters.iter().chain(&c.learners).copied().collect()
        } else {
            c.voters.clone()
        };
        let quorum = JointConfig::new(&counted, &c.voters_outgoing);
        let n = self
            .prs
            .committed_index(quorum, me, self.persisted)
            .min(self.log.last_index());
        if n <= self.commit {
            return false;
        }
        let ok = self.cfg.planted_bug() == PlantedBug::CommitOldTerm
            || self.log.term(n).map(|t| t == self.term).unwrap_or(false);
        if !ok {
            return false;
        }
        self.commit = n;
        self.on_leader_commit();
        self.after_commit_membership();
        true
    }

    /// Bookkeeping after the leader's commit moved.
    fn on_leader_commit(&mut self) {
        while let Some(&(idx, size)) = self.uncommitted.front() {
            if idx > self.commit {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(size);
        }
        if !self.read_only.deferred.is_empty() && self.committed_own_term() {
            let deferred: Vec<(u64, Vec<u64>)> = self.read_only.deferred.drain(..).collect();
            for (origin, ctxs) in deferred {
                self.start_read(origin, ctxs);
            }
        }
    }

    // ----- follower side -----

    pub(super) fn handle_append(&mut self, from: u64, ae: AppendEntries) {
        if ae.prev_log_index > self.log.last_index() {
            // We lack prev (this also keeps the arithmetic below away from absurd indexes).
            self.reject_append(from, ae.prev_log_index, ae.prev_log_term);
            return;
        }
        let mut prev = ae.prev_log_index;
        let mut prev_term = ae.prev_log_term;
        let vouched = prev + ae.entries.len() as u64;
        // Validate what came off the network: consecutive indexes, sane terms.
        for (i, e) in ae.entries.iter().enumerate() {
            if e.index != prev + 1 + i as u64 || e.term > self.term || e.term == 0 {
                log::warn!(
                    "node {}: malformed AppendEntries from {from}: entry {} term {} after prev {prev}",
                    self.id(),
                    e.index,
                    e.term
                );
                return;
            }
        }
        let mut ents = ae.entries;
        if prev < self.commit {
            // Everything up to commit is known to match a current leader's log; check what we
            // can (a mismatch there means committed data is being rewritten: fatal).
            if let Ok(t) = self.log.term(prev) {
                if t != prev_term {
                    self.fatal_conflict(from, prev, t, prev_term);
                }
            }
            let skip = ((self.commit - prev) as usize).min(ents.len());
            for e in &ents[..skip] {
                if let Ok(t) = self.log.term(e.index) {
                    if t != e.term {
                        self.fatal_conflict(from, e.index, t, e.term);
                    }
                }
            }
            ents.drain(..skip);
            if ents.is_empty() {
                let commit = self.commit;
                self.send(from, Body::AppendEntriesResponse(ack(commit)));
                return;
            }
            prev = self.commit;
            prev_term = match self.log.term(prev) {
                Ok(t) => t,
                Err(e) => {
                    log::error!("node {}: commit {prev} not in log: {e}", self.id());
                    return;
                }
            };
        }
        if !self.log.match_term(prev, prev_term) {
            self.reject_append(from, ae.prev_log_index, ae.prev_log_term);
            return;
        }
        // Skip entries we hold with the same term; truncate from the first conflict.
        let mut conflict = None;
        for (i, e) in ents.iter().enumerate() {
            match self.log.term(e.index) {
                Ok(t) if t == e.term => {}
                Ok(t) => {
                    if e.index <= self.commit {
                        self.fatal_conflict(from, e.index, t, e.term);
                    }
                    conflict = Some(i);
                    break;
                }
                Err(_) => {
                    conflict = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = conflict {
            let at = ents[i].index;
            self.persisted = self.persisted.min(at - 1);
            self.append_log(ents.split_off(i));
        }
        let new_commit = ae.commit.min(vouched);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        self.send(from, Body::AppendEntriesResponse(ack(vouched)));
    }

    fn fatal_conflict(&self, from: u64, index: u64, have: u64, got: u64) -> ! {
        panic!(
            "raft invariant breach on node {}: leader {from} (term {}) conflicts at committed \
             index {index} (have term {have}, leader has {got}, commit {})",
            self.id(),
            self.term,
            self.commit
        );
    }

    /// Rejects an append whose (prev index, prev term) we lack, with a fast-backtracking hint:
    /// our last index <= prev whose term <= prev term (Raft §5.3, dissertation §3.5).
    fn reject_append(&mut self, from: u64, prev: u64, prev_term: u64) {
        let mut i = prev.min(self.log.last_index());
        let hint_term = loop {
            match self.log.term(i) {
                Ok(t) if t > prev_term && i > self.commit => i -= 1,
                Ok(t) => break t,
                Err(_) => break 0,
            }
        };
        self.send(
            from,
            Body::AppendEntriesResponse(AppendEntriesResponse {
                success: false,
                match_index: 0,
                reject_index: prev,
                hint_index: i,
                hint_term,
            }),
        );
    }

    pub(super) fn handle_heartbeat(&mut self, from: u64, hb: Heartbeat) {
        let c = hb.commit.min(self.log.last_index());
        if c > self.commit {
            self.commit = c;
        }
        self.send(
            from,
            Body::HeartbeatResponse(HeartbeatResponse {
                context: hb.context,
                lease_tick: hb.lease_tick,
                // The shell's field (raftkv's space report); the core never sets it.
                no_space: false,
            }),
        );
    }

    // ----- leader side -----

    /// Largest index <= `index` whose term is <= `term` in our log.
    fn find_conflict_by_term(&self, index: u64, term: u64) -> u64 {
        let mut i = index.min(self.log.last_index());
        loop {
            match self.log.term(i) {
                Ok(t) if t > term && i > 0 => i -= 1,
                _ => return i,
            }
        }
    }

    pub(super) fn handle_append_response(&mut self, from: u64, r: AppendEntriesResponse) {
        let first_index = self.log.first_index();
        let last_index = self.log.last_index();
        let Some(pr) = self.prs.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if !r.success {
            if r.reject_index > last_index {
                // We never sent such an append: a confused or malicious peer.
                return;
            }
            let hint = if r.hint_term > 0 {
                self.find_conflict_by_term(r.hint_index, r.hint_term)
            } else {
                r.hint_index.min(last_index)
            };
            let Some(pr) = self.prs.get_mut(&from) else {
                return;
            };
            if pr.maybe_decr_to(r.reject_index, hint) {
                self.send_append(from, true);
            }
            return;
        }
        if r.match_index > last_index {
            log::warn!(
                "node {}: ack from {from} for index {} beyond our last {last_index}",
                self.cfg.id,
                r.match_index
            );
            return;
        }
        let probe_caught_up = pr.state == ProgressState::Probe && pr.matched == r.match_index;
        if !(pr.maybe_update(r.match_index) || probe_caught_up) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched + 1 >= first_index => {
                pr.become_probe();
                pr.become_replicate();
            }
            _ => {}
        }
        if self.maybe_commit() {
            self.pending_commit_bcast = true;
        }
        while self.send_append(from, false) {}
        self.maybe_finish_transfer(from);
    }

    /// The transfer target caught up: tell it to campaign now.
    pub(super) fn maybe_finish_transfer(&mut self, from: u64) {
        if self.transferee == from
            && self
                .prs
                .get(&from)
                .is_some_and(|p| p.matched == self.log.last_index())
        {
            self.send(from, Body::TimeoutNow(TimeoutNow {}));
            // The target may campaign (past voters' leases) whenever TimeoutNow arrives, even
            // after we abandon the transfer: no lease reads for the rest of this term.
            self.lease_fence = u64::MAX;
            if !self.is_voter(self.id()) {
                // Removed (or demoted) and handed over: stop leading now rather than wait for
                // the successor's first message.
                let term = self.term;
                self.become_follower(term, 0);
            }
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: u64, r: HeartbeatResponse) {
        let (max_inflight, max_bytes) = (self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
        let last = self.log.last_index();
        let (fence, now) = (self.lease_fence, self.now);
        let Some(pr) = self.prs.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        // Only an echo of a tick we actually sent (<= now) can extend the lease.
        if r.lease_tick >= fence && r.lease_tick <= now {
            pr.lease_tick = Some(pr.lease_tick.unwrap_or(0).max(r.lease_tick));
        }
        // Resume replication (re-probe, or free a slot of a full window that may hold lost
        // appends) at most once per tick. A follower that was stalled for seconds (restoring a
        // large snapshot, say) answers the heartbeats it missed all at once; resuming on each
        // answer sent one full-size append per answer (dozens of MB read and encoded by the
        // leader in one pass, a ~240 ms stall seen).
        if pr.hb_resumed_at != Some(now) {
            pr.hb_resumed_at = Some(now);
            pr.probe_sent = false;
            // A lost append then shows up as a rejection and a probe.
            if pr.state == ProgressState::Replicate && pr.window_full(max_inflight, max_bytes) {
                pr.free_first();
            }
            if pr.matched < last || pr.state == ProgressState::Probe {
                self.send_append(from, true);
            }
        }
        if r.context != 0 {
            let c = self.members.current();
            let quorum = JointConfig::new(&c.voters, &c.voters_outgoing);
            let confirmed = self.read_only.ack(from, r.context, |acks| {
                quorum.has_quorum(|v| acks.contains(&v))
            });
            self.deliver_reads(confirmed);
            if self.read_hb_in_flight != 0 && self.read_only.first_seq() > self.read_hb_in_flight {
                // The round in flight is confirmed: reads that arrived meanwhile
                // (`pending_read_hb`) get the next one at the next Ready.
                self.read_hb_in_flight = 0;
            }
        }
    }
}

fn ack(match_index: u64) -> AppendEntriesResponse {
    AppendEntriesResponse {
        success: true,
        match_index,
        reject_index: 0,
        hint_index: 0,
        hint_term: 0,
    }
}
