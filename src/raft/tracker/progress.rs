//! The leader's view of one follower: how far it matches, what to send next, and the flow
//! control state (modelled on etcd-io/raft's tracker.Progress).

use std::collections::VecDeque;

/// Flow-control state of a follower as seen by the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: at most one append in flight.
    Probe,
    /// Matching point known: appends are pipelined optimistically, up to the inflight window.
    Replicate,
    /// The follower needs a snapshot (its next entry is compacted); no appends until it ends.
    Snapshot,
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) matched: u64,
    pub(crate) next: u64,
    pub(crate) state: ProgressState,
    /// Probe: an append is outstanding, send nothing more until a reply or heartbeat ack.
    pub(crate) probe_sent: bool,
    /// Snapshot state: index of the snapshot being sent.
    pub(crate) pending_snapshot: u64,
    /// Replicate: (last index, entry bytes) of each append in flight, oldest first.
    pub(crate) inflights: VecDeque<(u64, u64)>,
    /// Sum of the entry bytes in `inflights`.
    pub(crate) inflight_bytes: u64,
    /// Heard from since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// Newest Heartbeat.lease_tick this peer echoed (leader lease).
    pub(crate) lease_tick: Option<u64>,
    /// Tick at which a heartbeat response last resumed replication to this peer (at most once
    /// per tick: see `handle_heartbeat_response`).
    pub(crate) hb_resumed_at: Option<u64>,
}

impl Progress {
    pub(crate) fn new(next: u64) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            inflights: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            lease_tick: None,
            hb_resumed_at: None,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.inflights.clear();
        self.inflight_bytes = 0;
    }

    /// Probe from just after the snapshot (if one was sent) or after the match point.
    pub(crate) fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub(crate) fn become_snapshot(&mut self, index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = index;
    }

    /// Nothing may be sent now. `max_bytes` 0 = no byte cap.
    pub(crate) fn is_paused(&self, max_inflight: usize, max_bytes: u64) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.window_full(max_inflight, max_bytes),
            ProgressState::Snapshot => true,
        }
    }

    /// The replicate window is full (by count or by bytes).
    pub(crate) fn window_full(&self, max_inflight: usize, max_bytes: u64) -> bool {
        self.inflights.len() >= max_inflight || (max_bytes > 0 && self.inflight_bytes >= max_bytes)
    }

    /// Frees the oldest in-flight append (it may have been lost).
    pub(crate) fn free_first(&mut self) {
        if let Some((_, b)) = self.inflights.pop_front() {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(b);
        }
    }

    /// Records an append of `n` entries (`bytes` in total) ending at `last` just sent.
    pub(crate) fn sent_entries(&mut self, n: usize, last: u64, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if n > 0 {
                    self.next = last + 1;
                    self.inflights.push_back((last, bytes));
                    self.inflight_bytes += bytes;
                }
            }
            ProgressState::Probe => {
                if n > 0 {
                    self.probe_sent = true;
                }
            }
            ProgressState::Snapshot => {}
        }
    }

    /// A success ack up to `index`. Returns false if it told us nothing new (stale).
    pub(crate) fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        while self.inflights.front().is_some_and(|&(l, _)| l <= index) {
            self.free_first();
        }
        updated
    }

    /// A rejection of the append with prev index `rejected`; `hint` is where the leader
    /// should probe next (already matched against its own log). Returns false if stale.
    pub(crate) fn maybe_decr_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            // Only a rejection above the match point can be current.
            if rejected <= self.matched {
                return false;
            }
            self.become_probe();
            self.next = (self.matched + 1).max(hint.min(rejected) + 1);
            return true;
        }
        // Probe: only the answer to the outstanding probe (prev = next - 1) counts.
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = (self.matched + 1).max(hint.min(rejected) + 1);
        self.probe_sent = false;
        true
    }
}
