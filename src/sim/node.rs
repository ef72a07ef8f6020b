//! The simulated, fault-injecting shell around one node: the same node layer the server runs
//! (`crate::node`: the replica with its request tables, the Ready phases, snapshot transfer
//! and install), over simulated storage, network and time.
//!
//! - this file: inputs (ticks, messages, client requests), crash and restart from durable
//!   state, driving Readies, and the checks made after each step;
//! - `shell.rs`: `SimShell`, the simulator's side of `ReadyShell`, over the simulated `Disk`
//!   (unsynced writes lost on a crash, torn writes) and network (`Action::Send`); a sync is
//!   `Pending` until the world delivers `SyncDone`;
//! - `snapshots.rs`: local snapshots by the server's `SnapshotPolicy`, and the production
//!   snapshot sender/receiver over the simulated disk.
//!
//! The node is single-threaded like the real server: while a sync is in progress it is blocked,
//! and inputs that arrive (messages, ticks, client requests) wait in a queue. A crash discards
//! the queue, the unsynced writes and all volatile state; a restart rebuilds the node from the
//! durable hard state, log and snapshot only.

use crate::kv::{ApplyResult, KvStore};
use crate::node::{
    self, AfterSync, NodeBug, ReadOp, ReadyShell, Replica, ReplicaConfig, Transfers,
};
use crate::pb::kvpb::{self, ErrorCode};
use crate::raft::MemLog;
use crate::raft::{
    ConfState, Config, Entry, EntryType, HardState, InitialState, LogStore, Message, RawNode, Role,
};
use crate::rng::Rng;
use crate::sim::checker::Checker;
use crate::sim::client::{ClientReq, Reply, ReqOp};
use crate::sim::disk::{Disk, MemPartial};
pub use crate::sim::trace::describe_msg;
use crate::snapshot::{SenderConfig, SnapshotPolicy};
use prost::Message as _;
use std::collections::{HashMap, VecDeque};

/// An input waiting for the node.
#[derive(Debug, Clone)]
pub enum Input {
    Tick,
    Msg(Message),
    Client(ClientReq),
    /// An operator asks this node (if leader) to hand leadership to the given peer.
    Transfer(u64),
    /// An operator asks this node (if leader) for a membership change.
    Member(kvpb::MemberChange),
}

/// The reply address of the simulated operator's membership changes (not a client).
pub const OPERATOR: usize = usize::MAX;

/// What the node asks the world to do.
#[derive(Debug)]
pub enum Action {
    /// Put a message on the network.
    Send(Message),
    /// Answer a client.
    Reply {
        client: usize,
        attempt: u64,
        seq: u64,
        reply: Reply,
    },
    /// A sync started; deliver `SyncDone` after `latency`.
    Sync { latency: u64 },
    /// A line for the trace.
    Trace(String),
}

/// Per-node tunables drawn per seed.
#[derive(Debug, Clone)]
pub struct NodeParams {
    /// Sync latency range in ms.
    pub sync_min: u64,
    pub sync_max: u64,
    /// When to take a local snapshot and how far to compact: the server's policy (entry and
    /// byte thresholds, trailing entries kept, the members' stagger), with small thresholds.
    pub policy: SnapshotPolicy,
    /// Max bytes per InstallSnapshot chunk.
    pub chunk: usize,
    /// Torn writes on crash.
    pub torn: bool,
    /// Check the leader commit rule (L4) directly.
    pub check_commit_rule: bool,
    /// Planted node-layer bug (simulator self-test).
    pub bug: NodeBug,
    /// Answers to confirmed reads per input (the server's per-pass budget; 0 = none): small
    /// in some seeds, so reads wait across inputs as they wait across server passes.
    pub read_bytes_per_pass: usize,
    /// Probability that a sync fails (EIO or ENOSPC: a write the disk could not make surfaces
    /// at the next sync, as writeback errors do on Linux).
    pub sync_fail: f64,
    /// Probability that an append finds the disk full (ENOSPC before anything is written):
    /// the node defers the entries and withholds its acks, as the server does
    /// (`server/space.rs`), and retries on its ticks.
    pub append_full: f64,
    /// The node answers TIMEOUT to a request still pending this long (ms).
    pub request_timeout: u64,
    /// When caught-up learners are promoted (drawn per seed).
    pub promotion: crate::node::membership::PromotionPolicy,
}

/// Where a simulated client's answer goes: the node layer's reply address.
#[derive(Debug, Clone, Copy)]
pub struct SimRef {
    pub(super) client: usize,
    pub(super) attempt: u64,
    pub(super) seq: u64,
}

impl crate::node::ReplyAddr for SimRef {
    fn conn(&self) -> u64 {
        self.client as u64
    }
}

/// One simulated node.
pub struct SimNode {
    pub id: u64,
    pub up: bool,
    pub incarnation: u64,
    pub(super) cfg: Config,
    pub(super) voters: Vec<u64>,
    /// The node layer (core, state machine, pending requests), while up.
    pub(super) rep: Option<Replica<MemLog, SimRef>>,
    pub disk: Disk,
    pub params: NodeParams,
    /// The part of a Ready waiting for its sync (the node is blocked meanwhile).
    pub(super) busy: Option<AfterSync>,
    pub(super) deferred: VecDeque<Input>,
    /// Entries a full disk kept out of the log (see `NodeParams::append_full`).
    pub(super) unlogged: Vec<Entry>,
    /// Snapshot streams to and from peers: the production sender and receiver (node layer).
    pub(super) transfers: Transfers<MemPartial>,
    /// The replica's applied bytes when the newest snapshot was taken or installed.
    pub(super) bytes_at_snapshot: u64,
    /// (role, term) after the last drive, to notice elections.
    pub(super) last_role: (Role, u64),
    pub(super) last_commit: u64,
    /// Proposals this node accepted as leader (over all incarnations).
    pub proposals: u64,
    /// Received snapshots installed (over all incarnations).
    pub installs: u64,
    /// Told it was removed from the cluster: stopped for good (the server exits).
    pub retired: bool,
}

/// The production sender's tuning with this seed's chunk size.
fn sender_config(chunk: usize) -> SenderConfig {
    SenderConfig {
        chunk_size: chunk.max(1),
        ..SenderConfig::default()
    }
}

/// What a simulated client makes of an answer. Every error that leaves the outcome open or
/// says "not now" (UNAVAILABLE, TIMEOUT, UNCERTAIN, SHUTTING_DOWN) is a retry: a write retried
/// with its session seq applies at most once, so the retry settles it.
fn reply_of(r: ApplyResult) -> Reply {
    match r {
        ApplyResult::Get(g) => Reply::Read(g),
        ApplyResult::Error(e) if e.code == ErrorCode::NotLeader as i32 => {
            Reply::NotLeader((e.leader_id != 0).then_some(e.leader_id))
        }
        ApplyResult::Error(e)
            if [
                ErrorCode::Unavailable,
                ErrorCode::Timeout,
                ErrorCode::Uncertain,
                ErrorCode::ShuttingDown,
            ]
            .iter()
            .any(|&c| c as i32 == e.code) =>
        {
            Reply::Unavailable
        }
        other => Reply::Write(Box::new(other)),
    }
}

impl SimNode {
    /// A fresh node of a cluster of `voters` (not started: call [`SimNode::restart`]).
    pub fn new(cfg: Config, voters: Vec<u64>, params: NodeParams) -> SimNode {
        let chunk = params.chunk;
        SimNode {
            id: cfg.id,
            up: false,
            incarnation: 0,
            cfg,
            voters,
            rep: None,
            disk: Disk::default(),
            params,
            busy: None,
            deferred: VecDeque::new(),
            unlogged: Vec::new(),
            transfers: Transfers::new(sender_config(chunk)),
            bytes_at_snapshot: 0,
            last_role: (Role::Follower, 0),
            last_commit: 0,
            proposals: 0,
            installs: 0,
            retired: false,
        }
    }

    /// Number of inputs waiting (trace/debug).
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Applied index of this incarnation.
    pub fn applied(&self) -> u64 {
        self.rep.as_ref().map_or(0, |r| r.applied())
    }

    /// Power loss: everything not durable is gone.
    pub fn crash(&mut self, rng: &mut Rng) {
        self.up = false;
        self.rep = None;
        self.busy = None;
        self.deferred.clear();
        self.unlogged.clear();
        self.disk.crash(self.params.torn, rng);
        self.transfers = Transfers::new(sender_config(self.params.chunk));
    }

    /// Boots from durable state only.
    pub fn restart(&mut self, checker: &mut Checker) -> Result<(), String> {
        self.incarnation += 1;
        self.disk.reconcile_log();
        let d = &self.disk.durable;
        let store = d.log.clone();
        let (kv, applied, conf) = match &d.snapshot {
            Some(s) => {
                let kv = KvStore::restore_snapshot(&mut &s.data[..]).map_err(|e| {
                    format!(
                        "node {}: restoring durable snapshot {}: {e}",
                        self.id, s.meta.index
                    )
                })?;
                let conf = s.meta.conf.clone().unwrap_or_else(|| self.bootstrap_conf());
                (kv, s.meta.index, conf)
            }
            None => (KvStore::new(), 0, self.bootstrap_conf()),
        };
        // The durable log continues the snapshot without a gap (it may hold the policy's
        // trailing entries below it).
        if store.first_index() > applied + 1 {
            return Err(format!(
                "node {}: durable log starts at {}, above snapshot {applied} + 1",
                self.id,
                store.first_index()
            ));
        }
        self.bytes_at_snapshot = 0;
        let mut hs: HardState = d.hard_state;
        hs.commit = hs.commit.max(applied);
        let mut cfg = self.cfg.clone();
        cfg.seed = cfg
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(self.incarnation);
        let conf_at_applied = conf.clone();
        let raw = RawNode::new(
            cfg,
            store,
            InitialState {
                hard_state: hs,
                conf,
                applied,
            },
        )
        .map_err(|e| format!("node {}: RawNode::new failed: {e}", self.id))?;
        let rep_cfg = ReplicaConfig {
            request_timeout_ms: self.params.request_timeout,
            lease_read: false,
            follower_reads: true,
            client_addrs: HashMap::new(),
            max_scan_bytes: 0,
            max_read_bytes_per_pass: self.params.read_bytes_per_pass,
            promotion: self.params.promotion,
            // Simulated clients take every answer at once: nothing queues.
            max_client_output: 0,
        };
        self.rep = Some(Replica::new(
            raw,
            kv,
            applied,
            (applied, conf_at_applied),
            rep_cfg,
        ));
        self.up = true;
        self.busy = None;
        self.deferred.clear();
        self.unlogged.clear();
        self.last_role = (Role::Follower, 0);
        self.last_commit = 0;
        checker.on_restart(self.id, applied);
        Ok(())
    }

    fn bootstrap_conf(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            ..ConfState::default()
        }
    }

    /// Feeds one input (or queues it while a sync is in progress).
    pub fn input(
        &mut self,
        inp: Input,
        now: u64,
        rng: &mut Rng,
        checker: &mut Checker,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if !self.up {
            return Ok(());
        }
        if self.busy.is_some() {
            self.deferred.push_back(inp);
            return Ok(());
        }
        if let Some(rep) = self.rep.as_mut().filter(|r| r.has_more_reads()) {
            // As the server does at the start of its next pass.
            rep.serve_more_reads();
        }
        if matches!(inp, Input::Tick) && !self.unlogged.is_empty() {
            // As the server's space-check timer: write what a full disk deferred.
            self.retry_unlogged(rng, checker, out)?;
            if self.busy.is_some() {
                self.deferred.push_back(inp);
                return Ok(());
            }
        }
        self.feed(inp, now, out);
        let r = self.drive(rng, checker, out);
        self.deliver_answers(out);
        r
    }

    /// `owed` ticks at once, as the server applies the ticks a stall held back.
    fn feed_ticks(&mut self, owed: u64, now: u64, out: &mut Vec<Action>) {
        let Some(rep) = self.rep.as_mut() else {
            return;
        };
        rep.tick(owed);
        rep.expire(now);
        // Retransmission timers of the snapshot streams (the server's tick does this).
        let mut msgs = Vec::new();
        self.transfers.tick(rep.core_mut(), &mut msgs);
        out.extend(msgs.into_iter().map(Action::Send));
    }

    fn feed(&mut self, inp: Input, now: u64, out: &mut Vec<Action>) {
        let id = self.id;
        let Some(rep) = self.rep.as_mut() else {
            return;
        };
        match inp {
            Input::Tick => self.feed_ticks(1, now, out),
            Input::Msg(m) => rep.core_mut().step(m),
            Input::Transfer(to) => {
                out.push(Action::Trace(format!(
                    "node {id} transfer leadership to {to}"
                )));
                rep.core_mut().transfer_leader(to);
            }
            Input::Member(mc) => {
                let to = SimRef {
                    client: OPERATOR,
                    attempt: 0,
                    seq: 0,
                };
                let index = rep.change_members(to, &mc, now);
                out.push(Action::Trace(format!(
                    "node {id} membership change {:?}: {}",
                    mc.ops
                        .iter()
                        .map(|o| format!("{:?} {}", o.kind(), o.id))
                        .collect::<Vec<_>>(),
                    index.map_or("refused".to_string(), |i| format!("entry {i}"))
                )));
            }
            Input::Client(req) => {
                let to = SimRef {
                    client: req.client,
                    attempt: req.attempt,
                    seq: req.seq,
                };
                match req.op {
                    ReqOp::Write(cmd) => {
                        if let Some(index) = rep.write(to, &cmd, now) {
                            out.push(Action::Trace(format!(
                                "node {id} propose client {} seq {} at index {index}",
                                cmd.client_id, cmd.seq
                            )));
                            self.proposals += 1;
                        }
                    }
                    ReqOp::Read { key } => {
                        let op = ReadOp::Get(kvpb::Get { key: key.into() });
                        rep.read(to, kvpb::Consistency::Linearizable, op, now, false);
                    }
                }
            }
        }
    }

    /// Turns the node layer's answers into replies to the simulated clients.
    pub(super) fn deliver_answers(&mut self, out: &mut Vec<Action>) {
        let Some(rep) = self.rep.as_mut() else {
            return;
        };
        for (to, r) in rep.requests().take_answers() {
            if to.client == OPERATOR {
                out.push(Action::Trace(format!("operator <- {r:?}")));
                continue;
            }
            out.push(Action::Reply {
                client: to.client,
                attempt: to.attempt,
                seq: to.seq,
                reply: reply_of(r),
            });
        }
    }

    /// The sync started by the last `Ready` completed.
    pub fn sync_done(
        &mut self,
        now: u64,
        rng: &mut Rng,
        checker: &mut Checker,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let Some(held) = self.busy.take() else {
            return Ok(());
        };
        if self.params.sync_fail > 0.0 && rng.chance(self.params.sync_fail) {
            let err = if rng.chance(0.5) { "EIO" } else { "ENOSPC" };
            // What the failed writeback did not write is gone (a torn prefix may be there).
            self.disk.crash(self.params.torn, rng);
            if self.params.bug != NodeBug::IgnoreSyncFailure {
                // Fail-stop, as the server does: it exits on a failed sync, never retries it
                // as if nothing happened. Volatile state is gone; the world restarts it.
                out.push(Action::Trace(format!(
                    "node {}: sync failed ({err}): fail-stop",
                    self.id
                )));
                self.crash(rng);
                return Ok(());
            }
            // PLANTED BUG: carries on as if the sync had succeeded.
            out.push(Action::Trace(format!(
                "node {}: sync failed ({err}), ignored (planted bug)",
                self.id
            )));
        }
        self.disk.sync().map_err(|e| {
            format!(
                "node {}: durability: its log does not hold what it wrote (writes a failed sync \
                 dropped?): {e}",
                self.id
            )
        })?;
        node::after_sync(&mut self.shell(rng, checker, out), held)?;
        self.drive(rng, checker, out)?;
        // As the server after a pass that outlasted its ticks: every tick owed first (the
        // clock sees them all, the election timers one), then what arrived meanwhile.
        let owed = self
            .deferred
            .iter()
            .filter(|i| matches!(i, Input::Tick))
            .count() as u64;
        if owed > 0 && self.busy.is_none() && self.up {
            self.deferred.retain(|i| !matches!(i, Input::Tick));
            self.feed_ticks(owed, now, out);
            self.drive(rng, checker, out)?;
        }
        while self.busy.is_none() && self.up {
            let Some(inp) = self.deferred.pop_front() else {
                break;
            };
            self.feed(inp, now, out);
            self.drive(rng, checker, out)?;
        }
        self.deliver_answers(out);
        Ok(())
    }

    /// Appends the entries a full disk deferred, if it has room now; their `on_persisted`
    /// follows the sync (the node is busy meanwhile).
    fn retry_unlogged(
        &mut self,
        rng: &mut Rng,
        checker: &mut Checker,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let mut shell = self.shell(rng, checker, out);
        shell.append(&[])?;
        if !shell.withholding_acks() {
            let last = self.rep.as_ref().map(|r| {
                let s = r.core().store();
                (s.last_index(), s.term(s.last_index()).unwrap_or(0))
            });
            if let Some((index, term)) = last {
                let p = &self.params;
                out.push(Action::Sync {
                    latency: rng.range(p.sync_min, p.sync_max + 1),
                });
                self.busy = Some(AfterSync::persisted_only(index, term));
            }
        }
        Ok(())
    }

    /// Handles `Ready`s until the core is quiet or a sync is in progress.
    fn drive(
        &mut self,
        rng: &mut Rng,
        checker: &mut Checker,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        loop {
            // Observe only when the store holds everything the core emitted: while a sync is
            // in progress (inputs wait) or when the core is quiet.
            if self.busy.is_some() || !self.up {
                return self.observe(checker, out);
            }
            let Some(rep) = self.rep.as_mut() else {
                return Ok(());
            };
            if !rep.core().has_ready() {
                // As the server after a pass's Readies: a lost leadership answers its
                // pending writes UNCERTAIN; outbound snapshot streams end with the role.
                if rep.check_leadership().role_changed {
                    self.transfers.drop_senders();
                }
                return self.observe(checker, out);
            }
            let rd = rep.core_mut().ready();
            // The production Ready phases (src/node/ready.rs); a pending sync blocks the node.
            if let Some(rest) = node::handle_ready(&mut self.shell(rng, checker, out), rd)? {
                self.busy = Some(rest);
                return self.observe(checker, out);
            }
        }
    }

    /// Records role changes and commit progress with the checker.
    fn observe(&mut self, checker: &mut Checker, out: &mut Vec<Action>) -> Result<(), String> {
        let Some(raw) = self.rep.as_ref().map(|r| r.core()) else {
            return Ok(());
        };
        let st = raw.status();
        // L4: while it leads, a leader's commit index only moves onto entries of its own term
        // (older entries commit beneath them, never by counting replicas: Figure 8).
        if self.params.check_commit_rule
            && self.last_role == (Role::Leader, st.term)
            && st.role == Role::Leader
            && st.commit > self.last_commit
        {
            match raw.store().term(st.commit) {
                Ok(t) if t != st.term => {
                    return Err(format!(
                        "commit rule: leader {} of term {} advanced its commit from {} to {}, an \
                         entry of older term {t}, by counting replicas (entries of terms {:?} \
                         were appended at that index elsewhere)",
                        self.id,
                        st.term,
                        self.last_commit,
                        st.commit,
                        checker.terms_at(st.commit, t, st.term)
                    ))
                }
                _ => {}
            }
        }
        if (st.role, st.term) != self.last_role {
            out.push(Action::Trace(format!(
                "node {} becomes {:?} at term {}",
                self.id, st.role, st.term
            )));
            self.last_role = (st.role, st.term);
            if st.role == Role::Leader {
                checker.on_leader(self.id, st.term, raw.store())?;
            }
        }
        if st.commit < self.last_commit {
            return Err(format!(
                "node {}: commit went backwards from {} to {}",
                self.id, self.last_commit, st.commit
            ));
        }
        // Entries a full disk deferred may be committed by the others (the core holds them).
        let held = self
            .unlogged
            .last()
            .map_or(0, |e| e.index)
            .max(raw.store().last_index());
        if st.commit > held {
            return Err(format!(
                "node {}: commit {} above its last index {}",
                self.id,
                st.commit,
                raw.store().last_index()
            ));
        }
        if st.commit > self.last_commit {
            out.push(Action::Trace(format!(
                "node {} commit {}",
                self.id, st.commit
            )));
        }
        self.last_commit = st.commit;
        Ok(())
    }

    /// Checks and traces an entry about to be applied (the replica applies it).
    pub(super) fn check_apply(
        &self,
        e: &Entry,
        checker: &mut Checker,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        checker.on_apply(self.id, e)?;
        if e.entry_type != EntryType::EntryNormal as i32 || e.data.is_empty() {
            return Ok(());
        }
        if let Ok(cmd) = kvpb::Command::decode(&e.data[..]) {
            out.push(Action::Trace(format!(
                "node {} apply {}/t{} client {} seq {}",
                self.id, e.index, e.term, cmd.client_id, cmd.seq
            )));
        }
        Ok(())
    }

    /// (role, term, commit) as last observed after handling input.
    pub fn observed(&self) -> (Role, u64, u64) {
        (self.last_role.0, self.last_role.1, self.last_commit)
    }

    /// Role and term, if up.
    pub fn role(&self) -> Option<(Role, u64, Option<u64>, u64)> {
        self.rep.as_ref().map(|r| {
            let s = r.core().status();
            (s.role, s.term, s.leader, s.commit)
        })
    }
}
