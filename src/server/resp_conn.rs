//! A RESP (Redis protocol) client connection's state: the incremental parser, and the queue
//! that releases replies in request order.
//!
//! Every command gets the next id (from 1) and a slot at the back of the queue, either already
//! holding its reply (commands answered locally: PING, errors, ...) or waiting for the
//! replica's answer to the request it became. Answers come back in any order (a write waits
//! for its commit, a read for its ReadIndex, a refusal is at once); Redis clients expect them
//! in order, so a reply leaves only when every earlier one has. The queue's length (with the
//! commands deferred, below) is the connection's in-flight count, held to
//! `--max-client-inflight` like a native client's.
//!
//! Program order: Redis runs one connection's commands one after the other, so a pipelined
//! `SET k v; GET k` reads `v`. Here a read is confirmed at the commit index when it arrives,
//! which does not yet include a write still being replicated, and a read confirmed earlier is
//! served after whatever has applied by then, a later write included. So requests of one
//! class (reads, writes) run together, pipelined — writes commit in log order, reads see at
//! least the state of their arrival — and a command of the other class waits, with every
//! command behind it, until the connection's requests in flight are answered.

use super::resp_commands::Expect;
use crate::kv::ApplyResult;
use crate::net::conn::Conn;
use crate::pb::kvpb::{self, ErrorCode};
use crate::resp::{Parser, Reply};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeSet, VecDeque};

/// Bytes of the buffer replies are encoded into, allocated at once (a new one is taken when
/// less than a quarter is left).
const OUT_CHUNK: usize = 4096;

/// SCAN cursors remembered per connection (older ones are forgotten: `-ERR invalid cursor`).
const MAX_CURSORS: usize = 64;

/// Requests that may be in flight together on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Read,
    Write,
}

enum Slot {
    /// Waiting for the replica; the seq of a write (0 for a read).
    Waiting(Expect, u64),
    Ready(Reply),
}

/// The RESP side of a client connection.
pub(crate) struct RespState {
    pub(super) parser: Parser,
    /// Id of the command in `slots[0]`.
    base: u64,
    /// Each with the protocol its command was read under (true: RESP3), so that replies
    /// owed from before a `HELLO` keep the old encoding.
    slots: VecDeque<(bool, Slot)>,
    /// `HELLO 3` was sent: replies in RESP3 (maps, nulls) until `HELLO 2`.
    pub(super) resp3: bool,
    /// READONLY was sent: reads are served from this node's state (STALE), any node.
    pub(super) stale_reads: bool,
    /// CLIENT SETNAME.
    pub(super) name: Bytes,
    /// SCAN continuation keys by cursor number (Redis clients parse cursors as integers, so
    /// the native continuation key stays here and the client gets its number).
    cursors: VecDeque<(u64, Bytes)>,
    next_cursor: u64,
    /// Bytes of the replies made but held back behind one still waiting (they count against
    /// the output limit like queued bytes).
    held: usize,
    /// Requests in flight (waiting slots), all of `class`.
    requests: usize,
    class: Class,
    /// Commands parsed but not yet run: one of the other class waits for `requests` to
    /// drain, and every command behind it waits with it (see the module comment).
    pub(super) deferred: VecDeque<Vec<Bytes>>,
    /// This connection's exactly-once session id (nonzero, assigned by the server at accept:
    /// see `Server::resp_session_id`). Every write carries it with its own seq, so a re-send
    /// of the same write (forwarding after a broken link) is answered from the leader's
    /// session table instead of applied twice.
    client_id: u64,
    /// Last seq handed to a write.
    seq: u64,
    /// Seqs of the writes not answered yet: everything below the lowest is acknowledged
    /// (`acked_seq`), so the state machine drops their saved results.
    unanswered: BTreeSet<u64>,
    /// The rest of the chunk replies are encoded into (see `release`).
    out: BytesMut,
}

impl RespState {
    pub(super) fn new(max_command: usize, max_args: usize, client_id: u64) -> RespState {
        RespState {
            parser: Parser::new(max_command, max_args),
            base: 1,
            slots: VecDeque::new(),
            resp3: false,
            stale_reads: false,
            name: Bytes::new(),
            cursors: VecDeque::new(),
            next_cursor: 1,
            held: 0,
            requests: 0,
            class: Class::Read,
            deferred: VecDeque::new(),
            client_id,
            seq: 0,
            unanswered: BTreeSet::new(),
            out: BytesMut::new(),
        }
    }

    /// The session fields of the next write: (client_id, seq, acked_seq).
    pub(super) fn next_write(&mut self) -> (u64, u64, u64) {
        let acked = self.unanswered.first().map_or(self.seq, |&s| s - 1);
        self.seq += 1;
        self.unanswered.insert(self.seq);
        (self.client_id, self.seq, acked)
    }

    /// Commands whose replies have not been queued on the socket yet (deferred ones too).
    pub(super) fn unreleased(&self) -> usize {
        self.slots.len() + self.deferred.len()
    }

    /// Bytes of replies held back for order.
    pub(super) fn held_bytes(&self) -> usize {
        self.held
    }

    /// Requests in flight.
    pub(super) fn requests(&self) -> usize {
        self.requests
    }

    /// Whether a request of `class` may start now (nothing of the other class in flight).
    pub(super) fn may_start(&self, class: Class) -> bool {
        self.requests == 0 || self.class == class
    }

    /// Adds a command answered at once.
    pub(super) fn push_reply(&mut self, r: Reply) {
        self.held += r.size();
        self.slots.push_back((self.resp3, Slot::Ready(r)));
    }

    /// Adds a command waiting for the replica (`seq`: a write's, from [`RespState::next_write`],
    /// else 0); returns its request id.
    pub(super) fn push_waiting(&mut self, e: Expect, class: Class, seq: u64) -> u64 {
        debug_assert!(self.may_start(class));
        self.requests += 1;
        self.class = class;
        self.slots.push_back((self.resp3, Slot::Waiting(e, seq)));
        self.base + self.slots.len() as u64 - 1
    }

    /// The replica answered request `id` (`leader_resp`: the leader's RESP address, for a
    /// NOT_LEADER error). An id without a waiting slot (0: a refusal at accept) is replied
    /// at the back of the queue.
    pub(super) fn answered(&mut self, id: u64, result: ApplyResult, leader_resp: Option<&str>) {
        let slot = id
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.slots.len());
        let Some(i) = slot else {
            self.push_reply(error_reply(&result, leader_resp).unwrap_or(Reply::Simple("OK")));
            return;
        };
        let (_, Slot::Waiting(expect, seq)) = &self.slots[i] else {
            return; // already answered (cannot happen: one answer per request)
        };
        // Answered, whatever the answer: a TIMEOUT write is acknowledged too (the client has
        // its answer and will never see another), so a copy of it still in a log applies at
        // most once, and not at all after the next write has raised the floor past it.
        self.unanswered.remove(seq);
        self.requests -= 1;
        let reply = match error_reply(&result, leader_resp) {
            Some(e) => e,
            None => expect.reply(result, &mut |k| self.remember_cursor(k)),
        };
        self.held += reply.size();
        self.slots[i].1 = Slot::Ready(reply);
    }

    /// Queues every reply at the front that is ready, in order, on `conn`.
    pub(super) fn release(&mut self, conn: &mut Conn) {
        if !matches!(self.slots.front(), Some((_, Slot::Ready(_)))) {
            return;
        }
        // Replies are encoded into the rest of one chunk shared by many of them (split off
        // and queued as they are made), not into a fresh buffer each: one allocation per
        // chunk instead of one per reply.
        if self.out.capacity() < OUT_CHUNK / 4 {
            self.out = BytesMut::with_capacity(OUT_CHUNK);
        }
        let mut large = Vec::new();
        while let Some((_, Slot::Ready(_))) = self.slots.front() {
            if let Some((resp3, Slot::Ready(r))) = self.slots.pop_front() {
                self.held -= r.size();
                r.encode(&mut self.out, &mut large, resp3);
            }
            self.base += 1;
        }
        for b in large {
            conn.queue(b);
        }
        conn.queue(self.out.split().freeze());
    }

    /// A cursor number for a continuation key.
    fn remember_cursor(&mut self, key: Bytes) -> u64 {
        let n = self.next_cursor;
        self.next_cursor += 1;
        if self.cursors.len() == MAX_CURSORS {
            self.cursors.pop_front();
        }
        self.cursors.push_back((n, key));
        n
    }

    /// The continuation key of cursor `n` (0 = from the start).
    pub(super) fn cursor(&self, n: u64) -> Option<Bytes> {
        if n == 0 {
            return Some(Bytes::new());
        }
        self.cursors
            .iter()
            .find(|(c, _)| *c == n)
            .map(|(_, k)| k.clone())
    }
}

/// The RESP error for an error result (None if the result is not an error). The first word
/// is the kind a client can match on; `NOTLEADER` names the leader's RESP address.
fn error_reply(result: &ApplyResult, leader_resp: Option<&str>) -> Option<Reply> {
    let ApplyResult::Error(e) = result else {
        return None;
    };
    let msg = &e.message;
    Some(Reply::Error(match e.code() {
        ErrorCode::NotLeader => match (e.leader_id, leader_resp) {
            (0, _) => "NOTLEADER leader unknown; retry later".to_string(),
            (id, Some(addr)) => format!("NOTLEADER leader is node {id} at {addr}"),
            (id, None) => format!("NOTLEADER leader is node {id} (no RESP address known)"),
        },
        ErrorCode::Timeout => format!("TIMEOUT {msg}"),
        ErrorCode::Unavailable => format!("UNAVAILABLE {msg}"),
        ErrorCode::Uncertain => format!("UNCERTAIN {msg}"),
        ErrorCode::ShuttingDown => format!("SHUTTINGDOWN {msg}"),
        // Redis refuses writes past maxmemory with -OOM; a full disk is raftkv's analogue,
        // but a distinct kind, so a client does not mistake it for memory pressure.
        ErrorCode::NoSpace => format!("NOSPACE {msg}"),
        ErrorCode::Conflict => format!("CONFLICT {msg}"),
        ErrorCode::Unauthenticated => super::resp_commands::NOAUTH.to_string(),
        ErrorCode::BadRequest
        | ErrorCode::TooLarge
        | ErrorCode::Internal
        | ErrorCode::ErrorUnknown => format!("ERR {msg}"),
    }))
}

/// A Get answer as a bulk string or nil.
pub(super) fn value_reply(g: &kvpb::GetResponse) -> Reply {
    if g.found {
        Reply::Bulk(g.value.clone())
    } else {
        Reply::Nil
    }
}

/// The base of this process' RESP session ids: random (the kernel's CSPRNG), so that ids
/// differ across nodes and restarts with overwhelming probability, as native clients' random
/// ids do; if the kernel will not give randomness, the clock, process id and node id.
pub(super) fn session_base(node_id: u64) -> u64 {
    match crate::entropy::bytes::<8>() {
        Ok(b) => u64::from_le_bytes(b),
        Err(e) => {
            log::warn!("no kernel randomness for RESP session ids ({e}); using the clock");
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32) ^ node_id.rotate_right(16)
        }
    }
}

/// The session id of the connection with `token` (never reused in a process): splitmix64's
/// finalizer of `base + token`, a bijection, so two connections of one process never share an
/// id, and ids of other processes (other bases) collide only by chance (about n² / 2^65 for n
/// live sessions). Never 0 (0 means "no session").
pub(super) fn session_id(base: u64, token: mio::Token) -> u64 {
    let mut z = base.wrapping_add(token.0 as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z.max(1)
}

impl super::Server {
    /// Handles the RESP commands buffered on `token`, one at a time, stopping (paused) where
    /// the connection reaches its backpressure limit, like `handle_buffered` for frames.
    /// False if the connection is gone, failed or paused.
    pub(super) fn handle_resp_buffered(&mut self, token: mio::Token) -> bool {
        let max_out = self.cfg.max_client_pending_bytes;
        let max_inflight = self.cfg.max_client_inflight;
        loop {
            let Some(super::Endpoint::Client(c)) = self.endpoints.get_mut(&token) else {
                return false;
            };
            if c.closing {
                return false;
            }
            if c.over_limit(max_out, max_inflight) {
                c.paused = true;
                return false;
            }
            let Some(state) = c.resp.as_mut() else {
                return false;
            };
            if state.requests() == 0 {
                if let Some(args) = state.deferred.pop_front() {
                    self.run_resp_command(token, args);
                    self.deliver_answers();
                    continue;
                }
            }
            match state.parser.next(c.conn.input_mut()) {
                Ok(Some(args)) if !state.deferred.is_empty() => {
                    state.deferred.push_back(args);
                    c.inflight = state.unreleased();
                }
                Ok(Some(args)) => {
                    self.run_resp_command(token, args);
                    self.deliver_answers();
                }
                Ok(None) => return true,
                Err(e) => {
                    log::debug!("RESP client {}: {e}; closing", token.0);
                    self.resp_reply(token, Reply::err(e));
                    self.resp_close_after_replies(token);
                    return false;
                }
            }
        }
    }

    /// Adds a reply made at once (behind any still waiting) and releases what is ready.
    pub(super) fn resp_reply(&mut self, token: mio::Token, r: Reply) {
        let Some(super::Endpoint::Client(c)) = self.endpoints.get_mut(&token) else {
            return;
        };
        let Some(state) = c.resp.as_mut() else {
            return;
        };
        state.push_reply(r);
        state.release(&mut c.conn);
        c.inflight = state.unreleased();
        self.dirty_clients.insert(token);
    }

    /// The replica's answer to RESP request `id`: into its slot; releases what is ready.
    pub(super) fn resp_answer(&mut self, token: mio::Token, id: u64, result: ApplyResult) {
        let leader = match &result {
            ApplyResult::Error(e) if e.code() == ErrorCode::NotLeader => {
                self.cfg.redis_addr_of(e.leader_id).map(str::to_owned)
            }
            _ => None,
        };
        let Some(super::Endpoint::Client(c)) = self.endpoints.get_mut(&token) else {
            return;
        };
        let Some(state) = c.resp.as_mut() else {
            return;
        };
        state.answered(id, result, leader.as_deref());
        state.release(&mut c.conn);
        c.inflight = state.unreleased();
        if state.requests() == 0 && !state.deferred.is_empty() {
            // Deferred commands may run now: next pass, through the reading path (not from
            // here, which the answering path calls).
            self.read_again.push(token);
        }
        self.dirty_clients.insert(token);
    }

    /// Stops reading from `token` and closes it once every reply is out (QUIT, a protocol
    /// error), lingering at most as long as a native connection closed for an error.
    pub(super) fn resp_close_after_replies(&mut self, token: mio::Token) {
        if let Some(super::Endpoint::Client(c)) = self.endpoints.get_mut(&token) {
            c.closing = true;
            c.conn.discard_input();
        }
        self.linger_then_close(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::error_result;

    fn get(v: &str) -> ApplyResult {
        ApplyResult::Get(kvpb::GetResponse {
            found: true,
            value: Bytes::from(v.to_string()),
            version: 1,
        })
    }

    /// Answers arriving out of order leave in request order, each as soon as it can.
    #[test]
    fn replies_leave_in_request_order() {
        let mut s = RespState::new(1024, 16, 7);
        let a = s.push_waiting(Expect::Get, Class::Read, 0);
        s.push_reply(Reply::Simple("PONG"));
        let b = s.push_waiting(Expect::Get, Class::Read, 0);
        assert!(!s.may_start(Class::Write));
        assert_eq!((a, b), (1, 3));
        s.answered(b, get("b"), None);
        assert_eq!(s.unreleased(), 3, "b waits behind a");
        s.answered(a, error_result(ErrorCode::Timeout, "slow".into()), None);
        assert!(s.may_start(Class::Write), "nothing in flight");
        let order: Vec<Reply> = s
            .slots
            .iter()
            .map(|(_, sl)| match sl {
                Slot::Ready(r) => r.clone(),
                Slot::Waiting(..) => Reply::Nil,
            })
            .collect();
        assert_eq!(
            order,
            vec![
                Reply::Error("TIMEOUT slow".into()),
                Reply::Simple("PONG"),
                Reply::text("b")
            ]
        );
    }

    #[test]
    fn cursors_are_bounded() {
        let mut s = RespState::new(1024, 16, 7);
        let first = s.remember_cursor(Bytes::from_static(b"k1"));
        for _ in 0..MAX_CURSORS {
            s.remember_cursor(Bytes::from_static(b"k"));
        }
        assert_eq!(s.cursor(first), None, "the oldest is forgotten");
        assert_eq!(s.cursor(0), Some(Bytes::new()));
        assert_eq!(s.cursors.len(), MAX_CURSORS);
    }

    /// Writes number 1, 2, ... in one session; acked_seq is below the oldest unanswered write,
    /// whatever order the answers come in.
    #[test]
    fn writes_carry_the_session_and_acknowledge_answered_seqs() {
        let mut s = RespState::new(1024, 16, 42);
        let put = || ApplyResult::Put(kvpb::PutResponse::default());
        let (c1, s1, a1) = s.next_write();
        let w1 = s.push_waiting(Expect::Ok, Class::Write, s1);
        let (_, s2, a2) = s.next_write();
        let w2 = s.push_waiting(Expect::Ok, Class::Write, s2);
        assert_eq!((c1, s1, a1, s2, a2), (42, 1, 0, 2, 0));
        s.answered(w2, put(), None);
        assert_eq!(s.next_write(), (42, 3, 0), "seq 1 is still unanswered");
        s.answered(w1, error_result(ErrorCode::Timeout, "slow".into()), None);
        assert_eq!(s.next_write(), (42, 4, 2), "3 unanswered (never pushed)");
    }

    #[test]
    fn session_ids_differ_per_connection_and_are_nonzero() {
        let base = session_base(1);
        let ids: std::collections::BTreeSet<u64> = (0..10_000)
            .map(|t| session_id(base, mio::Token(t)))
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
        assert_ne!(session_base(1), base, "a restart gets another base");
    }
}
