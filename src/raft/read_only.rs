//! ReadIndex bookkeeping (Raft dissertation §6.4) on the leader.
//!
//! Each read records the commit index at request time and a fresh sequence number `seq`. The
//! leader broadcasts a heartbeat tagged with `seq`; once a quorum (self included) echoes a tag,
//! that read and every earlier one are confirmed: the leader was still leader after they were
//! requested. Tags are unique per leader term (the queue is cleared on every role change) and
//! acks carry the term, so a stale ack can never confirm a read of a later term.

use super::ReadState;
use std::collections::{HashSet, VecDeque};

struct ReadReq {
    ctx: u64,
    index: u64,
    seq: u64,
    acks: HashSet<u64>,
}

#[derive(Default)]
pub(crate) struct ReadOnly {
    next_seq: u64,
    pending: VecDeque<ReadReq>,
    /// Reads that arrived before this leader committed an entry of its own term.
    pub(crate) deferred: Vec<u64>,
}

impl ReadOnly {
    /// Queues a read of `ctx` at `index`; returns the heartbeat tag to confirm it with.
    pub(crate) fn add(&mut self, ctx: u64, index: u64, self_id: u64) -> u64 {
        self.next_seq += 1;
        let mut acks = HashSet::new();
        acks.insert(self_id);
        self.pending.push_back(ReadReq {
            ctx,
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

    /// `from` echoed `seq`. Returns the reads that became safe (in request order).
    pub(crate) fn ack(
        &mut self,
        from: u64,
        seq: u64,
        is_quorum: impl Fn(&HashSet<u64>) -> bool,
    ) -> Vec<ReadState> {
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
            .map(|r| ReadState {
                ctx: r.ctx,
                index: r.index,
            })
            .collect()
    }

    /// Drops everything (leadership lost); returns the ctxs to fail.
    pub(crate) fn fail_all(&mut self) -> Vec<u64> {
        let mut out: Vec<u64> = self.deferred.drain(..).collect();
        out.extend(self.pending.drain(..).map(|r| r.ctx));
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len() + self.deferred.len()
    }
}
