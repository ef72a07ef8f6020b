//! The pending client requests of one node, and the one place they are answered.
//!
//! Three tables, as the server has always kept them:
//! - **writes** by log index: proposed here, answered when the entry at that index applies
//!   (with its result if it is still our entry, UNCERTAIN if another leader's entry took the
//!   index), or when leadership is lost (UNCERTAIN: it may still commit), or at its deadline;
//! - **reads** by read context: a ReadIndex round or lease read in flight;
//! - **confirmed** reads by read index: answered once `applied >= index`.
//!
//! `A` is the shell's reply address (the server: connection token and request id; the
//! simulator: client and attempt). Every answer is pushed to [`Requests::answers`]; the shell
//! drains it onto its connections at the points the Ready phases name, so an answer is
//! built in exactly one place and the ordering stays the node layer's.
//!
//! Deadlines: every request times out `timeout_ms` after it arrived (milliseconds on the
//! shell's clock). The timeout is the same for all, so arrival order is deadline order and a
//! FIFO queue replaces a timer per request: push on arrival, pop at the front once expired or
//! already answered. (The server used a timer-wheel insert and cancel per request before.)
//! On a millisecond clock a request stamped `now` may have arrived up to 1 ms later, so its
//! deadline is `now + timeout_ms + 1`: never early (tests/server.rs checks that TIMEOUT comes
//! no sooner than the flag says), at most 1 ms late.

use crate::idmap::{IdMap, IdSet};
use crate::kv::{error_result, ApplyResult};
use crate::pb::kvpb::{self, ErrorCode};
use std::collections::{BTreeMap, HashSet, VecDeque};

/// A reply address: which client connection it goes to (reads of a connection whose output is
/// over its limit wait, [`Requests::set_output`]).
pub trait ReplyAddr {
    fn conn(&self) -> u64;
}

impl ReplyAddr for u32 {
    fn conn(&self) -> u64 {
        u64::from(*self)
    }
}

/// A read served from the state machine.
#[derive(Debug, Clone)]
pub enum ReadOp {
    Get(kvpb::Get),
    Scan(kvpb::Scan),
    /// A backup's linearizable point (`kvpb::SnapshotBegin`): answered with a not-ready
    /// `SnapshotBeginResponse` whose `read_index` is the applied index when served; the shell,
    /// which owns the snapshot files, completes it.
    SnapshotPoint,
    MultiGet(kvpb::MultiGet),
}

#[derive(Debug)]
struct PendingWrite<A> {
    /// The term the write was proposed in: the entry that applies at its index answers it
    /// only if it carries this term.
    term: u64,
    to: A,
}

#[derive(Debug)]
struct PendingRead<A> {
    to: A,
    op: ReadOp,
}

/// What a deadline in the queue refers to.
#[derive(Debug, Clone, Copy)]
enum Key {
    Write { index: u64, term: u64 },
    Read(u64),
}

/// A table's entries in key order: answers made in bulk (leadership lost, shutdown) go out
/// in a deterministic order (the simulator replays seeds exactly; hash order differs per
/// map). The tables stay hash maps: the hot path only inserts and removes.
fn sorted<T>(m: IdMap<u64, T>) -> Vec<(u64, T)> {
    let mut v: Vec<(u64, T)> = m.into_iter().collect();
    v.sort_unstable_by_key(|(k, _)| *k);
    v
}

/// The pending request tables.
#[derive(Debug)]
pub struct Requests<A> {
    timeout_ms: u64,
    writes: IdMap<u64, PendingWrite<A>>,
    reads: IdMap<u64, PendingRead<A>>,
    /// Confirmed reads waiting for `applied >= index`: index -> read contexts.
    confirmed: BTreeMap<u64, Vec<u64>>,
    next_ctx: u64,
    /// (deadline, request) in arrival order.
    deadlines: VecDeque<(u64, Key)>,
    /// Answers not yet taken by the shell.
    answers: Vec<(A, ApplyResult)>,
    /// Bound on a connection's queued output (0 = none): its confirmed reads wait while its
    /// output (as the shell last reported it, plus the answers made since) reaches it.
    max_output: usize,
    /// Queued output bytes per connection, as the shell reports them (absent = 0).
    outputs: IdMap<u64, usize>,
    /// Connections whose confirmed reads wait for their output to drain.
    starved: IdSet<u64>,
}

impl<A: ReplyAddr> Requests<A> {
    /// Empty tables; requests time out `timeout_ms` after they arrive.
    pub fn new(timeout_ms: u64) -> Requests<A> {
        Requests {
            timeout_ms,
            writes: IdMap::default(),
            reads: IdMap::default(),
            confirmed: BTreeMap::new(),
            next_ctx: 1,
            deadlines: VecDeque::new(),
            answers: Vec::new(),
            max_output: 0,
            outputs: IdMap::default(),
            starved: IdSet::default(),
        }
    }

    /// Bounds each connection's queued output (see [`Requests::set_output`]); 0 = unbounded.
    pub fn set_max_output(&mut self, bytes: usize) {
        self.max_output = bytes;
    }

    /// Answers `to` (the one place an answer is made).
    pub fn answer(&mut self, to: A, result: ApplyResult) {
        self.answers.push((to, result));
    }

    /// Answers `to` with an error.
    pub fn fail(&mut self, to: A, code: ErrorCode, message: &str) {
        self.answer(to, error_result(code, message.to_string()));
    }

    /// The answers made since the last call, in the order they were made.
    pub fn take_answers(&mut self) -> std::vec::Drain<'_, (A, ApplyResult)> {
        self.answers.drain(..)
    }

    /// Swaps the answers made since the last call into `out` (which must be empty; its
    /// capacity is kept for the next answers, so a shell that reuses one buffer allocates
    /// nothing per call).
    pub fn swap_answers(&mut self, out: &mut Vec<(A, ApplyResult)>) {
        debug_assert!(out.is_empty(), "answers would be lost");
        std::mem::swap(&mut self.answers, out);
    }

    /// True if answers wait to be taken.
    pub fn has_answers(&self) -> bool {
        !self.answers.is_empty()
    }

    /// The deadline of a request stamped `now` (see the module comment for the `+ 1`).
    fn deadline(&self, now: u64) -> u64 {
        now.saturating_add(self.timeout_ms).saturating_add(1)
    }

    /// Tracks a write proposed at `index` in `term`, arrived at `now`.
    pub fn add_write(&mut self, index: u64, term: u64, to: A, now: u64) {
        let old = self.writes.insert(index, PendingWrite { term, to });
        if let Some(old) = old {
            // Cannot happen while pending writes are failed on leadership loss (a new write
            // at a used index needs a new term); answer conservatively if it ever does.
            self.fail(old.to, ErrorCode::Uncertain, "proposal superseded");
        }
        let deadline = self.deadline(now);
        self.deadlines
            .push_back((deadline, Key::Write { index, term }));
    }

    /// Who waits for the write proposed at `index`, if one does.
    pub fn pending_write(&self, index: u64) -> Option<&A> {
        self.writes.get(&index).map(|p| &p.to)
    }

    /// The entry at `index` of `term` applied with `result`: answers the write pending there.
    pub fn applied_write(&mut self, index: u64, term: u64, result: Option<ApplyResult>) {
        let Some(p) = self.writes.remove(&index) else {
            return;
        };
        if p.term == term {
            let r = result.unwrap_or_else(|| {
                error_result(ErrorCode::Internal, "write applied without a result".into())
            });
            self.answer(p.to, r);
        } else {
            // Another leader's entry took this index; ours was not applied here (it was lost,
            // or a retry of it may yet apply elsewhere).
            self.fail(
                p.to,
                ErrorCode::Uncertain,
                "leadership changed before the write committed",
            );
        }
    }

    /// Tracks a read under a fresh context, arrived at `now`; returns the context.
    pub fn add_read(&mut self, to: A, op: ReadOp, now: u64) -> u64 {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.reads.insert(ctx, PendingRead { to, op });
        let deadline = self.deadline(now);
        self.deadlines.push_back((deadline, Key::Read(ctx)));
        ctx
    }

    /// The context the next [`add_read`](Self::add_read) will use (the core is asked for a
    /// read index under it before the read is tracked).
    pub fn next_read_ctx(&self) -> u64 {
        self.next_ctx
    }

    /// The read `ctx` is confirmed at `index`: it is served once that index is applied.
    pub fn confirm_read(&mut self, ctx: u64, index: u64) {
        self.confirmed.entry(index).or_default().push(ctx);
    }

    /// The shell's count of `conn`'s queued output bytes (0 also when it closed). Returns true
    /// if reads of `conn` were waiting for its output and may be served now.
    pub fn set_output(&mut self, conn: u64, bytes: usize) -> bool {
        if bytes == 0 {
            self.outputs.remove(&conn);
        } else {
            self.outputs.insert(conn, bytes);
        }
        (self.max_output == 0 || bytes < self.max_output) && self.starved.remove(&conn)
    }

    /// True if `conn` may get another answer, having got `spent` bytes in this call: its
    /// output stays within `max_output` plus one answer.
    fn has_room(&self, conn: u64, spent: usize) -> bool {
        let queued = self.outputs.get(&conn).copied().unwrap_or(0);
        self.max_output == 0 || queued.saturating_add(spent) < self.max_output
    }

    /// Serves confirmed reads whose index is at or below `applied`, in order, with `serve`,
    /// until the answers made total `max_bytes` (0 = no bound; at least one read is served).
    /// A connection over its output bound (`set_max_output`) is skipped: its reads stay
    /// queued, in order, until `set_output` says it drained, while other connections' reads
    /// are served. Returns true if servable reads remain: the shell serves them in its next
    /// pass, after the answers made so far are on their way.
    pub fn serve_confirmed(
        &mut self,
        applied: u64,
        max_bytes: usize,
        serve: impl Fn(&ReadOp) -> ApplyResult,
    ) -> bool {
        let mut bytes = 0usize;
        let mut spent: IdMap<u64, usize> = IdMap::default();
        let due: Vec<u64> = self.confirmed.range(..=applied).map(|(&i, _)| i).collect();
        for index in due {
            let Some(ctxs) = self.confirmed.remove(&index) else {
                continue;
            };
            let mut kept = Vec::new();
            let mut ctxs = ctxs.into_iter();
            while let Some(ctx) = ctxs.next() {
                if max_bytes != 0 && bytes >= max_bytes {
                    kept.push(ctx);
                    kept.extend(ctxs);
                    self.confirmed.insert(index, kept);
                    return true;
                }
                let Some(conn) = self.reads.get(&ctx).map(|p| p.to.conn()) else {
                    continue; // answered already (timed out)
                };
                let got = spent.get(&conn).copied().unwrap_or(0);
                if !self.has_room(conn, got) {
                    self.starved.insert(conn);
                    kept.push(ctx);
                    continue;
                }
                if let Some(p) = self.reads.remove(&ctx) {
                    let r = serve(&p.op);
                    let n = r.encoded_len();
                    bytes = bytes.saturating_add(n);
                    spent.insert(conn, got.saturating_add(n));
                    self.answer(p.to, r);
                }
            }
            if !kept.is_empty() {
                self.confirmed.insert(index, kept);
            }
        }
        false
    }

    /// The core gave up on the read `ctx`: leadership (or, on a follower, the term or the
    /// leader) changed before it was confirmed, or a follower's leader did not answer in time.
    pub fn read_failed(&mut self, ctx: u64) {
        if let Some(p) = self.reads.remove(&ctx) {
            self.fail(
                p.to,
                ErrorCode::Unavailable,
                "read not confirmed: the leader changed or did not confirm it in time",
            );
        }
    }

    /// Answers every pending write with `code`, and every read not yet confirmed UNAVAILABLE
    /// (confirmed reads stay: they are served from this node's state once applied).
    pub fn fail_writes_and_unconfirmed_reads(
        &mut self,
        code: ErrorCode,
        msg: &str,
        committed: u64,
    ) {
        // A write at or below the commit index is decided: it applies here like any other
        // committed entry and is answered with its result then. (A leader that removed itself
        // steps down in the step that commits the removal, before the entry is applied.)
        let (done, lost): (IdMap<_, _>, IdMap<_, _>) = std::mem::take(&mut self.writes)
            .into_iter()
            .partition(|(index, _)| *index <= committed);
        self.writes = done;
        for (_, p) in sorted(lost) {
            self.fail(p.to, code, msg);
        }
        let confirmed: HashSet<u64> = self.confirmed.values().flatten().copied().collect();
        let mut unconfirmed: Vec<u64> = self
            .reads
            .keys()
            .filter(|c| !confirmed.contains(c))
            .copied()
            .collect();
        unconfirmed.sort_unstable();
        for ctx in unconfirmed {
            self.read_failed(ctx);
        }
    }

    /// Answers every pending write with `code` (reads stay).
    pub fn fail_writes(&mut self, code: ErrorCode, msg: &str) {
        for (_, p) in sorted(std::mem::take(&mut self.writes)) {
            self.fail(p.to, code, msg);
        }
    }

    /// Answers everything still pending with `code` (shutdown).
    pub fn fail_all(&mut self, code: ErrorCode, msg: &str) {
        self.fail_writes(code, msg);
        self.confirmed.clear();
        self.starved.clear();
        for (_, p) in sorted(std::mem::take(&mut self.reads)) {
            self.fail(p.to, code, msg);
        }
        self.deadlines.clear();
    }

    fn is_pending(&self, key: Key) -> bool {
        match key {
            Key::Write { index, term } => self.writes.get(&index).is_some_and(|p| p.term == term),
            Key::Read(ctx) => self.reads.contains_key(&ctx),
        }
    }

    /// Answers TIMEOUT to every request whose deadline is at or before `now`, and drops queue
    /// entries of requests already answered.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(deadline, key)) = self.deadlines.front() {
            let pending = self.is_pending(key);
            if pending && deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if !pending {
                continue;
            }
            match key {
                Key::Write { index, .. } => {
                    if let Some(p) = self.writes.remove(&index) {
                        self.fail(
                            p.to,
                            ErrorCode::Timeout,
                            "write not committed in time; it may or may not apply",
                        );
                    }
                }
                Key::Read(ctx) => {
                    if let Some(p) = self.reads.remove(&ctx) {
                        self.fail(p.to, ErrorCode::Timeout, "read not confirmed in time");
                    }
                }
            }
        }
    }

    /// The earliest deadline still pending (after [`expire`](Self::expire) has dropped the
    /// answered ones at the front), to bound the shell's sleep.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.front().map(|&(d, _)| d)
    }

    /// (pending writes, pending reads) for status and metrics.
    pub fn counts(&self) -> (usize, usize) {
        (self.writes.len(), self.reads.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: &ApplyResult) -> Option<i32> {
        match r {
            ApplyResult::Error(e) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn a_write_is_answered_once_by_the_entry_of_its_term() {
        let mut r: Requests<u32> = Requests::new(1000);
        r.add_write(5, 2, 7, 0);
        r.applied_write(5, 3, None);
        let a: Vec<_> = r.take_answers().collect();
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(code(&a[0].1), Some(ErrorCode::Uncertain as i32));
        // Answered: its deadline does not answer it again.
        r.expire(10_000);
        assert!(!r.has_answers());
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn deadlines_expire_in_arrival_order_and_skip_answered_requests() {
        let mut r: Requests<u32> = Requests::new(100);
        r.add_write(1, 1, 1, 0);
        let ctx = r.add_read(2, ReadOp::Get(kvpb::Get::default()), 10);
        r.add_write(2, 1, 3, 20);
        r.applied_write(
            1,
            1,
            Some(ApplyResult::Put(kvpb::PutResponse {
                version: 1,
                ..Default::default()
            })),
        );
        let _ = r.take_answers().count();
        // Deadlines 101 (answered), 111 and 121: a full 100 ms after each stamp, plus the
        // 1 ms a millisecond stamp may lag the arrival.
        r.expire(110);
        assert!(!r.has_answers(), "nothing is due before 111");
        assert_eq!(r.next_deadline(), Some(111));
        r.expire(111);
        let a: Vec<_> = r.take_answers().collect();
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0].0, code(&a[0].1)),
            (2, Some(ErrorCode::Timeout as i32))
        );
        r.read_failed(ctx); // already answered: nothing more
        assert!(!r.has_answers());
        r.expire(120);
        assert!(!r.has_answers(), "the second write is due at 121");
        r.expire(121);
        assert_eq!(r.take_answers().count(), 1);
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn leadership_loss_keeps_confirmed_reads() {
        let mut r: Requests<u32> = Requests::new(100);
        let c1 = r.add_read(1, ReadOp::Get(kvpb::Get::default()), 0);
        let _c2 = r.add_read(2, ReadOp::Get(kvpb::Get::default()), 0);
        r.add_write(9, 4, 3, 0);
        r.confirm_read(c1, 9);
        r.add_write(7, 4, 4, 0);
        // Index 7 is committed: it stays, to be answered when it applies.
        r.fail_writes_and_unconfirmed_reads(ErrorCode::Uncertain, "lost", 8);
        let mut who: Vec<u32> = r.take_answers().map(|(a, _)| a).collect();
        who.sort_unstable();
        assert_eq!(who, vec![2, 3]);
        assert_eq!(r.counts().0, 1, "the committed write was failed");
        r.serve_confirmed(9, 0, |_| ApplyResult::Get(kvpb::GetResponse::default()));
        let a: Vec<_> = r.take_answers().collect();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 1);
    }

    #[test]
    fn confirmed_reads_are_served_within_a_byte_budget_in_order() {
        let mut r: Requests<u32> = Requests::new(1000);
        for who in 0..5 {
            let ctx = r.add_read(who, ReadOp::Get(kvpb::Get::default()), 0);
            r.confirm_read(ctx, 3);
        }
        let big = || {
            ApplyResult::Get(kvpb::GetResponse {
                found: true,
                value: vec![0u8; 100].into(),
                version: 1,
            })
        };
        // Each answer is ~105 bytes: a 150-byte budget serves two, then says more remain.
        assert!(r.serve_confirmed(3, 150, |_| big()));
        let who: Vec<u32> = r.take_answers().map(|(a, _)| a).collect();
        assert_eq!(who, vec![0, 1]);
        assert!(r.serve_confirmed(3, 150, |_| big()));
        assert!(!r.serve_confirmed(3, 150, |_| big()), "all served");
        let who: Vec<u32> = r.take_answers().map(|(a, _)| a).collect();
        assert_eq!(who, vec![2, 3, 4]);
    }

    #[test]
    fn a_connection_at_its_output_bound_keeps_its_reads_queued_while_others_are_served() {
        let mut r: Requests<u32> = Requests::new(1000);
        r.set_max_output(1000);
        for who in [1u32, 2, 1, 2] {
            let ctx = r.add_read(who, ReadOp::Get(kvpb::Get::default()), 0);
            r.confirm_read(ctx, 3);
        }
        let ans = || {
            ApplyResult::Get(kvpb::GetResponse {
                found: true,
                value: vec![0u8; 600].into(),
                version: 1,
            })
        };
        // Connection 1 already has 900 bytes queued: one more answer (a connection may exceed
        // its bound by one answer), then its second read waits; connection 2 (nothing queued)
        // gets both of its answers (605 bytes after the first: still room).
        r.set_output(1, 900);
        assert!(
            !r.serve_confirmed(3, 0, |_| ans()),
            "only waiting reads remain"
        );
        let who: Vec<u32> = r.take_answers().map(|(a, _)| a).collect();
        assert_eq!(who, vec![1, 2, 2]);
        // Still full (the shell reports 1500 queued): nothing.
        assert!(!r.set_output(1, 1500), "still at its bound");
        assert!(!r.serve_confirmed(3, 0, |_| ans()));
        assert!(!r.has_answers());
        // Connection 1 drains: its read is served.
        assert!(r.set_output(1, 0), "its reads were waiting");
        assert!(!r.serve_confirmed(3, 0, |_| ans()));
        let who: Vec<u32> = r.take_answers().map(|(a, _)| a).collect();
        assert_eq!(who, vec![1]);
        assert_eq!(r.counts(), (0, 0));
    }
}
