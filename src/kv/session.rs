//! Exactly-once client sessions (Raft dissertation §6.3).
//!
//! Each client with a nonzero `client_id` numbers its writes `seq = 1, 2, ...` and reuses the seq
//! when it retries. The table keeps, per client, the results of every seq above what the client
//! has acknowledged (`acked_seq`), so pipelined writes and retries of any of them are answered
//! from the table instead of being applied twice.
//!
//! The table is replicated state: every decision depends only on the applied commands (log
//! indexes, never clocks), it lives in `BTreeMap`s so iteration order is fixed, and it is part of
//! the snapshot.
//!
//! Bounds: at most `max_sessions` clients (the least recently active one, by log index, is evicted
//! to make room) and at most [`MAX_RESULTS_PER_SESSION`] saved results per client (the lowest seq
//! is dropped). Anything dropped raises the client's `floor`, so a late retry of it is rejected
//! rather than applied a second time. Known gap: once a whole session is evicted its floor is
//! forgotten too, so a retry from a client idle for `max_sessions` other clients' writes starts a
//! fresh session (as in the dissertation, eviction trades memory for that guarantee).

use super::{bad_request, ApplyResult};
use std::collections::BTreeMap;

/// Default bound on the number of sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Bound on saved results per session (a client pipelining deeper than this without acking
/// loses exactly-once for its oldest writes: their retries are rejected, never re-applied).
pub const MAX_RESULTS_PER_SESSION: usize = 4096;

/// One client's session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Every seq <= floor has been acknowledged or forgotten: not re-applied, not answered.
    pub floor: u64,
    /// Log index of this client's most recent command (the LRU key).
    pub last_index: u64,
    /// Results of seqs above `floor`.
    pub results: BTreeMap<u64, ApplyResult>,
}

/// What to do with an incoming command.
#[derive(Debug)]
pub enum Check {
    /// New seq: apply it, then [`Sessions::record`] the result.
    Fresh,
    /// Already applied: answer with this saved result.
    Duplicate(ApplyResult),
    /// Invalid or expired: answer with this error, apply nothing.
    Reject(ApplyResult),
}

/// The session table.
#[derive(Debug, Clone, PartialEq)]
pub struct Sessions {
    pub(super) by_client: BTreeMap<u64, Session>,
    /// (last_index, client_id) of every session, oldest first (for LRU eviction).
    pub(super) lru: BTreeMap<(u64, u64), ()>,
    pub(super) max_sessions: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            by_client: BTreeMap::new(),
            lru: BTreeMap::new(),
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

impl Sessions {
    /// Classifies command (client_id, seq, acked_seq) at log index `index`, updating the client's
    /// acknowledgement floor and recency. `client_id` must be nonzero.
    pub fn check(&mut self, index: u64, client_id: u64, seq: u64, acked_seq: u64) -> Check {
        debug_assert_ne!(client_id, 0);
        if seq == 0 {
            return Check::Reject(bad_request(format!(
                "session {client_id}: seq must be >= 1"
            )));
        }
        if acked_seq >= seq {
            return Check::Reject(bad_request(format!(
                "session {client_id}: acked_seq {acked_seq} >= seq {seq}"
            )));
        }
        if !self.by_client.contains_key(&client_id) {
            if self.by_client.len() >= self.max_sessions.max(1) {
                self.evict_oldest();
            }
            self.by_client.insert(
                client_id,
                Session {
                    floor: acked_seq,
                    last_index: index,
                    results: BTreeMap::new(),
                },
            );
            self.lru.insert((index, client_id), ());
            return Check::Fresh;
        }
        self.touch(client_id, index);
        let Some(s) = self.by_client.get_mut(&client_id) else {
            return Check::Fresh; // unreachable: checked above
        };
        if acked_seq > s.floor {
            s.floor = acked_seq;
            // Keep only seqs above the floor.
            s.results = s.results.split_off(&(acked_seq + 1));
        }
        if let Some(r) = s.results.get(&seq) {
            return Check::Duplicate(r.clone());
        }
        if seq <= s.floor {
            return Check::Reject(bad_request(format!(
                "session {client_id}: seq {seq} expired (acknowledged or forgotten; floor {})",
                s.floor
            )));
        }
        Check::Fresh
    }

    /// Saves the result of a fresh (client_id, seq) (after [`Sessions::check`] said `Fresh`).
    pub fn record(&mut self, client_id: u64, seq: u64, result: ApplyResult) {
        if let Some(s) = self.by_client.get_mut(&client_id) {
            s.results.insert(seq, result);
            while s.results.len() > MAX_RESULTS_PER_SESSION {
                if let Some((dropped, _)) = s.results.pop_first() {
                    s.floor = s.floor.max(dropped);
                }
            }
        }
    }

    fn touch(&mut self, client_id: u64, index: u64) {
        if let Some(s) = self.by_client.get_mut(&client_id) {
            self.lru.remove(&(s.last_index, client_id));
            s.last_index = index;
            self.lru.insert((index, client_id), ());
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(((_, client_id), ())) = self.lru.pop_first() {
            self.by_client.remove(&client_id);
        }
    }

    /// Inserts a session read from a snapshot.
    pub(super) fn insert_restored(&mut self, client_id: u64, s: Session) {
        self.lru.insert((s.last_index, client_id), ());
        self.by_client.insert(client_id, s);
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}
