//! ReadIndex bookkeeping (Raft dissertation §6.4): the leader's confirmation rounds, and a
//! follower's reads waiting for its leader's answer.
//!
//! Leader: each read (its own shell's, or a batch a follower forwarded in a `ReadIndex`
//! message) records the commit index at request time and a fresh sequence number `seq`. The
//! leader broadcasts a heartbeat tagged with `seq`; once a quorum (self included) echoes a tag,
//! that read and every earlier one are confirmed: the leader was still leader after they were
//! requested. Tags are unique per leader term (the queue is cleared on every role change) and
//! acks carry the term, so a stale ack can never confirm a read of a later term. A confirmed
//! read of a follower is answered with a `ReadIndexResponse` (etcd-io/raft's MsgReadIndexResp).
//!
//! Follower: reads are queued until the next `Ready`, which sends them all to the leader in
//! one `ReadIndex` message; they then wait for the answer. They fail (`Ready::failed_reads`)
//! when the term or the leader changes (`RawNode::reset`) and when no answer came within
//! [`REMOTE_READ_TIMEOUT_ELECTIONS`] election timeouts (the request or the answer was lost, or
//! the leader could not confirm): a follower's read never waits forever.

use std::collections::{HashSet, VecDeque};

/// A follower's read with no answer after this many election timeouts fails. The leader
/// answers within a heartbeat round trip once it has committed an entry of its term; a new
/// leader does that within about one election timeout, so two leave room for both.
pub(crate) const REMOTE_READ_TIMEOUT_ELECTIONS: u64 = 2;

/// Most followers' reads a leader holds unconfirmed (and deferred); a `ReadIndex` beyond it is
/// dropped (its follower times it out). Bounds a leader's memory when it cannot confirm
/// anything (no quorum, CheckQuorum off).
pub(crate) const MAX_REMOTE_READS: usize = 1 << 16;

struct ReadReq {
    /// Who asked: 0 = this leader's own shell, else the follower to answer.
    origin: u64,
    ctxs: Vec<u64>,
    index: u64,
    seq: u64,
    acks: HashSet<u64>,
}

/// Reads the leader confirmed at `index`: its own (`origin` 0) or a follower's.
pub(crate) struct Confirmed {
    pub(crate) origin: u64,
    pub(crate) ctxs: Vec<u64>,
    pub(crate) index: u64,
}

#[derive(Default)]
pub(crate) struct ReadOnly {
    next_seq: u64,
    pending: VecDeque<ReadReq>,
    /// Reads (origin, ctxs) that arrived before this leader committed an entry of its own term.
    pub(crate) deferred: Vec<(u64, Vec<u64>)>,
    /// Leader: ctxs of followers' reads in `pending` and `deferred` (for `MAX_REMOTE_READS`).
    remote_held: usize,
    /// Follower: reads to send to the leader at the next Ready.
    pub(crate) queued: Vec<u64>,
    /// Follower: (deadline tick, ctxs) per `ReadIndex` sent, in send order.
    sent: VecDeque<(u64, Vec<u64>)>,
    /// Follower: ctxs sent and not yet answered, failed or timed out.
    waiting: HashSet<u64>,
}

impl ReadOnly {
    /// Queues reads `ctxs` of `origin` at `index`; returns the heartbeat tag to confirm them
    /// with.
    pub(crate) fn add(&mut self, origin: u64, ctxs: Vec<u64>, index: u64, self_id: u64) -> u64 {
        self.next_seq += 1;
        let mut acks = HashSet::new();
        acks.insert(self_id);
        self.pending.push_back(ReadReq {
            origin,
            ctxs,
            index,
            seq: self.next_seq,
            acks,
        });
        self.next_seq
    }

    /// Tag of the newest pending read (periodic heartbeats carry it, so a lost round retries).
    pub(crate) fn last_seq(&self) -> u64 {
        self.pending.back().map(|r| r.seq).unwrap_or(0)
    }

    /// Tag of the oldest pending read (`u64::MAX` if none): every round up to it is confirmed.
    pub(crate) fn first_seq(&self) -> u64 {
        self.pending.front().map(|r| r.seq).unwrap_or(u64::MAX)
    }

    /// `from` echoed `seq`. Returns the reads that became safe (in request order).
    pub(crate) fn ack(
        &mut self,
        from: u64,
        seq: u64,
        is_quorum: impl Fn(&HashSet<u64>) -> bool,
    ) -> Vec<Confirmed> {
        if seq == 0 {
            return Vec::new();
        }
        // An echo of tag `seq` proves leadership at a time after every read with tag <= seq.
        let mut confirmed = None;
        for (i, r) in self.pending.iter_mut().enumerate() {
            if r.seq > seq {
                break;
            }
            r.acks.insert(from);
            if is_quorum(&r.acks) {
                confirmed = Some(i);
            }
        }
        let Some(last) = confirmed else {
            return Vec::new();
        };
        self.pending
            .drain(..=last)
            .map(|r| Confirmed {
                origin: r.origin,
                ctxs: r.ctxs,
                index: r.index,
            })
            .collect()
    }

    /// Leader: may it hold `n` more followers' reads? Counts them if so.
    pub(crate) fn admit_remote(&mut self, n: usize) -> bool {
        if self.remote_held.saturating_add(n) > MAX_REMOTE_READS {
            return false;
        }
        self.remote_held += n;
        true
    }

    /// Leader: `n` followers' reads were answered (see `admit_remote`).
    pub(crate) fn release_remote(&mut self, n: usize) {
        self.remote_held = self.remote_held.saturating_sub(n);
    }

    /// Drops everything (leadership lost); returns this node's own ctxs to fail. Followers'
    /// reads are dropped unanswered: each follower fails them itself when it sees the new term
    /// or leader, or times them out.
    pub(crate) fn fail_all(&mut self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for (origin, ctxs) in self.deferred.drain(..) {
            if origin == 0 {
                out.extend(ctxs);
            }
        }
        for r in self.pending.drain(..) {
            if r.origin == 0 {
                out.extend(r.ctxs);
            }
        }
        self.remote_held = 0;
        out.extend(self.fail_remote());
        out
    }

    /// Follower: moves the queued reads to the waiting set, failing at tick `deadline`;
    /// returns them for one `ReadIndex` message (empty: nothing to send).
    pub(crate) fn send_queued(&mut self, deadline: u64) -> Vec<u64> {
        let ctxs = std::mem::take(&mut self.queued);
        if !ctxs.is_empty() {
            self.waiting.extend(ctxs.iter().copied());
            self.sent.push_back((deadline, ctxs.clone()));
        }
        ctxs
    }

    /// Follower: the leader answered `ctxs`; returns those still waiting (a ctx already timed
    /// out, or never sent, is not served).
    pub(crate) fn answered(&mut self, ctxs: Vec<u64>) -> Vec<u64> {
        let out: Vec<u64> = ctxs
            .into_iter()
            .filter(|c| self.waiting.remove(c))
            .collect();
        // Drop answered batches from the front so `sent` does not grow while all is well.
        while self
            .sent
            .front()
            .is_some_and(|(_, b)| b.iter().all(|c| !self.waiting.contains(c)))
        {
            self.sent.pop_front();
        }
        out
    }

    /// Follower: the reads sent before tick `now` - `deadline` that are still unanswered.
    pub(crate) fn expire_remote(&mut self, now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while self.sent.front().is_some_and(|(d, _)| *d <= now) {
            if let Some((_, ctxs)) = self.sent.pop_front() {
                out.extend(ctxs.into_iter().filter(|c| self.waiting.remove(c)));
            }
        }
        out
    }

    /// Follower: every read queued or waiting (term or leader changed); returns them to fail.
    pub(crate) fn fail_remote(&mut self) -> Vec<u64> {
        let mut out = std::mem::take(&mut self.queued);
        for (_, ctxs) in self.sent.drain(..) {
            out.extend(ctxs.into_iter().filter(|c| self.waiting.remove(c)));
        }
        self.waiting.clear();
        out
    }

    /// Reads waiting: the leader's unconfirmed and deferred ones, a follower's queued and
    /// unanswered ones.
    pub(crate) fn len(&self) -> usize {
        self.pending.iter().map(|r| r.ctxs.len()).sum::<usize>()
            + self.deferred.iter().map(|(_, c)| c.len()).sum::<usize>()
            + self.queued.len()
            + self.waiting.len()
    }
}
