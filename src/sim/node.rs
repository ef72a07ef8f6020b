//! The simulated, fault-injecting shell around one `RawNode`: what the server does, minus
//! sockets and files.
//!
//! Each `Ready` goes through the node layer's production phases (`crate::node::handle_ready`,
//! the code the server runs): `SimShell` (end of this file) is the simulator's side of
//! `ReadyShell`, over the simulated `Disk` (unsynced writes lost on a crash, torn writes) and
//! the simulated network (`Action::Send`). A sync is `Pending` until the world delivers
//! `SyncDone`. Client requests, local snapshots and snapshot transfer are handled here.
//!
//! The node is single-threaded like the real server: while a sync is in progress it is blocked,
//! and inputs that arrive (messages, ticks, client requests) wait in a queue. A crash discards
//! the queue, the unsynced writes and all volatile state; a restart rebuilds the node from the
//! durable hard state, log and snapshot only.

use crate::kv::KvStore;
use crate::node::{self, AfterSync, NodeBug, ReadyShell, SyncStatus};
use crate::pb::kvpb;
use crate::pb::raftpb::message::Body;
use crate::pb::raftpb::{InstallSnapshot, InstallSnapshotResponse};
use crate::raft::MemLog;
use crate::raft::{
    ConfState, Config, Entry, EntryType, HardState, InitialState, LogStore, Message, RawNode,
    ReadState, Role, SnapshotMeta,
};
use crate::rng::Rng;
use crate::sim::checker::Checker;
use crate::sim::client::{ClientReq, Reply, ReqOp};
use crate::sim::disk::{Disk, SnapFile};
use prost::Message as _;
use std::collections::{BTreeMap, VecDeque};

/// An input waiting for the node.
#[derive(Debug, Clone)]
pub enum Input {
    Tick,
    Msg(Message),
    Client(ClientReq),
    /// An operator asks this node (if leader) to hand leadership to the given peer.
    Transfer(u64),
}

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
    /// Take a local snapshot every this many applied entries.
    pub snapshot_every: u64,
    /// Max bytes per InstallSnapshot chunk.
    pub chunk: usize,
    /// Torn writes on crash.
    pub torn: bool,
    /// Check the leader commit rule (L4) directly.
    pub check_commit_rule: bool,
    /// Planted node-layer bug (simulator self-test).
    pub bug: NodeBug,
}

/// One simulated node.
pub struct SimNode {
    pub id: u64,
    pub up: bool,
    pub incarnation: u64,
    cfg: Config,
    voters: Vec<u64>,
    pub raw: Option<RawNode<MemLog>>,
    pub kv: KvStore,
    pub disk: Disk,
    pub params: NodeParams,
    /// The part of a Ready waiting for its sync (the node is blocked meanwhile).
    busy: Option<AfterSync>,
    deferred: VecDeque<Input>,
    applied: u64,
    /// Writes proposed here, by (client_id, seq): the client to answer.
    writes: BTreeMap<(u64, u64), (usize, u64)>,
    /// Reads started here, by ctx: (client, attempt, key).
    reads: BTreeMap<u64, (usize, u64, Vec<u8>)>,
    /// Confirmed reads waiting for the apply index.
    ready_reads: Vec<ReadState>,
    next_ctx: u64,
    /// Snapshot being received: (meta, bytes so far).
    snap_in: Option<(SnapshotMeta, Vec<u8>)>,
    /// Snapshot streams to peers: peer -> (snapshot being sent, time of the last chunk).
    snap_out: BTreeMap<u64, (SnapFile, u64)>,
    /// (role, term) after the last drive, to notice elections.
    last_role: (Role, u64),
    last_commit: u64,
    /// Proposals this node accepted as leader (over all incarnations).
    pub proposals: u64,
}

fn trace_entries(ents: &[Entry]) -> String {
    match (ents.first(), ents.last()) {
        (Some(a), Some(b)) if a.index == b.index => format!("[{}/t{}]", a.index, a.term),
        (Some(a), Some(b)) => format!("[{}/t{}..{}/t{}]", a.index, a.term, b.index, b.term),
        _ => "[]".to_string(),
    }
}

/// A compact one-line description of a message for the trace.
pub fn describe_msg(m: &Message) -> String {
    let body = match &m.body {
        Some(Body::RequestVote(v)) => format!(
            "{}Vote(last {}/t{}{})",
            if v.pre_vote { "Pre" } else { "" },
            v.last_log_index,
            v.last_log_term,
            if v.transfer { ", transfer" } else { "" }
        ),
        Some(Body::RequestVoteResponse(v)) => format!(
            "{}VoteResp({})",
            if v.pre_vote { "Pre" } else { "" },
            if v.granted { "grant" } else { "reject" }
        ),
        Some(Body::AppendEntries(a)) => format!(
            "App(prev {}/t{}, {}, commit {})",
            a.prev_log_index,
            a.prev_log_term,
            trace_entries(&a.entries),
            a.commit
        ),
        Some(Body::AppendEntriesResponse(a)) => {
            if a.success {
                format!("AppResp(ok, match {})", a.match_index)
            } else {
                format!(
                    "AppResp(reject {}, hint {}/t{})",
                    a.reject_index, a.hint_index, a.hint_term
                )
            }
        }
        Some(Body::Heartbeat(h)) => format!("Heartbeat(commit {}, ctx {})", h.commit, h.context),
        Some(Body::HeartbeatResponse(h)) => format!("HeartbeatResp(ctx {})", h.context),
        Some(Body::InstallSnapshot(s)) => format!(
            "InstallSnapshot({}/t{}, off {}, {} bytes{})",
            s.meta.as_ref().map_or(0, |x| x.index),
            s.meta.as_ref().map_or(0, |x| x.term),
            s.offset,
            s.data.len(),
            if s.done { ", done" } else { "" }
        ),
        Some(Body::InstallSnapshotResponse(s)) => format!(
            "InstallSnapshotResp({}, ok {}, done {})",
            s.index, s.success, s.done
        ),
        Some(Body::TimeoutNow(_)) => "TimeoutNow".to_string(),
        None => "Empty".to_string(),
    };
    format!("{}->{} t{} {}", m.from, m.to, m.term, body)
}

impl SimNode {
    /// A fresh node of a cluster of `voters` (not started: call [`SimNode::restart`]).
    pub fn new(cfg: Config, voters: Vec<u64>, params: NodeParams) -> SimNode {
        SimNode {
            id: cfg.id,
            up: false,
            incarnation: 0,
            cfg,
            voters,
            raw: None,
            kv: KvStore::new(),
            disk: Disk::default(),
            params,
            busy: None,
            deferred: VecDeque::new(),
            applied: 0,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready_reads: Vec::new(),
            next_ctx: 0,
            snap_in: None,
            snap_out: BTreeMap::new(),
            last_role: (Role::Follower, 0),
            last_commit: 0,
            proposals: 0,
        }
    }

    /// Number of inputs waiting (trace/debug).
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Applied index of this incarnation.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Power loss: everything not durable is gone.
    pub fn crash(&mut self, rng: &mut Rng) {
        self.up = false;
        self.raw = None;
        self.busy = None;
        self.deferred.clear();
        self.disk.crash(self.params.torn, rng);
        self.writes.clear();
        self.reads.clear();
        self.ready_reads.clear();
        self.snap_in = None;
        self.snap_out.clear();
        self.kv = KvStore::new();
    }

    /// Boots from durable state only.
    pub fn restart(&mut self, checker: &mut Checker) -> Result<(), String> {
        self.incarnation += 1;
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
        // The durable log never starts below the snapshot (the shell guarantees it).
        if store.snapshot_index_term().0 < applied {
            return Err(format!(
                "node {}: durable log starts at {} below snapshot {applied}",
                self.id,
                store.first_index()
            ));
        }
        let mut hs: HardState = d.hard_state;
        hs.commit = hs.commit.max(applied);
        let mut cfg = self.cfg.clone();
        cfg.seed = cfg
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(self.incarnation);
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
        self.raw = Some(raw);
        self.kv = kv;
        self.applied = applied;
        self.up = true;
        self.busy = None;
        self.deferred.clear();
        self.last_role = (Role::Follower, 0);
        self.last_commit = 0;
        checker.on_restart(self.id, applied);
        Ok(())
    }

    fn bootstrap_conf(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: Vec::new(),
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
        self.feed(inp, now, out);
        self.drive(now, rng, checker, out)
    }

    fn feed(&mut self, inp: Input, now: u64, out: &mut Vec<Action>) {
        let Some(raw) = self.raw.as_mut() else {
            return;
        };
        match inp {
            Input::Tick => {
                raw.tick();
                // Snapshot streams that got no answer count as failed.
                let stale: Vec<u64> = self
                    .snap_out
                    .iter()
                    .filter(|(_, (_, t))| now.saturating_sub(*t) > 300)
                    .map(|(&p, _)| p)
                    .collect();
                for p in stale {
                    self.snap_out.remove(&p);
                    raw.report_snapshot(p, false);
                }
            }
            Input::Msg(m) => raw.step(m),
            Input::Transfer(to) => {
                out.push(Action::Trace(format!(
                    "node {} transfer leadership to {to}",
                    self.id
                )));
                raw.transfer_leader(to);
            }
            Input::Client(req) => {
                let reply = match &req.op {
                    ReqOp::Write(cmd) => {
                        let data = crate::kv::encode_command(cmd);
                        match raw.propose(data) {
                            Ok(index) => {
                                out.push(Action::Trace(format!(
                                    "node {} propose client {} seq {} at index {index}",
                                    self.id, cmd.client_id, cmd.seq
                                )));
                                self.writes
                                    .insert((cmd.client_id, cmd.seq), (req.client, req.attempt));
                                self.proposals += 1;
                                None
                            }
                            Err(crate::raft::ProposeError::NotLeader { leader }) => {
                                Some(Reply::NotLeader(leader))
                            }
                            Err(_) => Some(Reply::Unavailable),
                        }
                    }
                    ReqOp::Read { key } => {
                        self.next_ctx += 1;
                        let ctx = self.next_ctx;
                        match raw.read_index(ctx) {
                            Ok(()) => {
                                self.reads
                                    .insert(ctx, (req.client, req.attempt, key.clone()));
                                None
                            }
                            Err(crate::raft::ProposeError::NotLeader { leader }) => {
                                Some(Reply::NotLeader(leader))
                            }
                            Err(_) => Some(Reply::Unavailable),
                        }
                    }
                };
                if let Some(reply) = reply {
                    out.push(Action::Reply {
                        client: req.client,
                        attempt: req.attempt,
                        seq: req.seq,
                        reply,
                    });
                }
            }
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
        self.disk
            .sync()
            .map_err(|e| format!("node {}: disk sync: {e}", self.id))?;
        node::after_sync(&mut self.shell(now, rng, checker, out), held)?;
        self.drive(now, rng, checker, out)?;
        while self.busy.is_none() && self.up {
            let Some(inp) = self.deferred.pop_front() else {
                break;
            };
            self.feed(inp, now, out);
            self.drive(now, rng, checker, out)?;
        }
        Ok(())
    }

    /// Handles `Ready`s until the core is quiet or a sync is in progress.
    fn drive(
        &mut self,
        now: u64,
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
            let Some(raw) = self.raw.as_mut() else {
                return Ok(());
            };
            if !raw.has_ready() {
                return self.observe(checker, out);
            }
            let rd = raw.ready();
            // The production Ready phases (src/node/ready.rs); a pending sync blocks the node.
            if let Some(rest) = node::handle_ready(&mut self.shell(now, rng, checker, out), rd)? {
                self.busy = Some(rest);
                return self.observe(checker, out);
            }
        }
    }

    /// Records role changes and commit progress with the checker.
    fn observe(&mut self, checker: &mut Checker, out: &mut Vec<Action>) -> Result<(), String> {
        let Some(raw) = self.raw.as_ref() else {
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
        if st.commit > raw.store().last_index() {
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

    fn apply(
        &mut self,
        e: &Entry,
        checker: &mut Checker,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        checker.on_apply(self.id, e)?;
        self.applied = e.index;
        let data: &[u8] = if e.entry_type == EntryType::EntryNormal as i32 {
            &e.data
        } else {
            &[]
        };
        let res = self.kv.apply(e.index, data);
        if data.is_empty() {
            return Ok(());
        }
        let Ok(cmd) = kvpb::Command::decode(data) else {
            return Ok(());
        };
        out.push(Action::Trace(format!(
            "node {} apply {}/t{} client {} seq {}",
            self.id, e.index, e.term, cmd.client_id, cmd.seq
        )));
        if let Some((client, attempt)) = self.writes.remove(&(cmd.client_id, cmd.seq)) {
            if let Some(r) = res {
                out.push(Action::Reply {
                    client,
                    attempt,
                    seq: cmd.seq,
                    reply: Reply::Write(r),
                });
            }
        }
        Ok(())
    }

    fn serve_reads(&mut self, out: &mut Vec<Action>) {
        let applied = self.applied;
        let mut keep = Vec::new();
        for rs in std::mem::take(&mut self.ready_reads) {
            if rs.index > applied {
                keep.push(rs);
                continue;
            }
            if let Some((client, attempt, key)) = self.reads.remove(&rs.ctx) {
                out.push(Action::Trace(format!(
                    "node {} read ctx {} at index {} (applied {applied})",
                    self.id, rs.ctx, rs.index
                )));
                out.push(Action::Reply {
                    client,
                    attempt,
                    seq: 0,
                    reply: Reply::Read(self.kv.get(&key)),
                });
            }
        }
        self.ready_reads = keep;
    }

    /// Takes a local snapshot and compacts the log when enough has been applied.
    fn maybe_snapshot(&mut self, out: &mut Vec<Action>) -> Result<(), String> {
        let Some(raw) = self.raw.as_mut() else {
            return Ok(());
        };
        let (snap_index, _) = raw.store().snapshot_index_term();
        if self.applied < snap_index + self.params.snapshot_every {
            return Ok(());
        }
        let index = self.applied;
        let term = raw
            .store()
            .term(index)
            .map_err(|e| format!("node {}: term of applied index {index}: {e}", self.id))?;
        let mut data = Vec::new();
        self.kv
            .write_snapshot(&mut data)
            .map_err(|e| format!("node {}: write_snapshot: {e}", self.id))?;
        let conf = raw.status().conf;
        let snap = SnapFile {
            meta: SnapshotMeta {
                index,
                term,
                conf: Some(conf),
            },
            data: data.into(),
        };
        self.disk
            .save_snapshot(snap, false)
            .map_err(|e| format!("node {}: save snapshot: {e}", self.id))?;
        raw.store_mut()
            .compact(index, term)
            .map_err(|e| format!("node {}: compact: {e}", self.id))?;
        out.push(Action::Trace(format!(
            "node {} snapshot at {index}/t{term}, log compacted",
            self.id
        )));
        Ok(())
    }

    /// Starts streaming the current snapshot to `peer`: one chunk now, the next one each time
    /// the peer acknowledges (like a TCP stream: chunks never overtake each other).
    fn send_snapshot(&mut self, peer: u64, now: u64, out: &mut Vec<Action>) {
        let Some(snap) = self.disk.durable.snapshot.clone() else {
            return;
        };
        self.send_chunk(peer, &snap, 0, out);
        self.snap_out.insert(peer, (snap, now));
    }

    fn send_chunk(&self, peer: u64, snap: &SnapFile, off: usize, out: &mut Vec<Action>) {
        let Some(raw) = self.raw.as_ref() else {
            return;
        };
        let len = snap.data.len();
        let end = (off + self.params.chunk.max(1)).min(len);
        let done = end == len;
        out.push(Action::Send(Message {
            from: self.id,
            to: peer,
            term: raw.status().term,
            body: Some(Body::InstallSnapshot(InstallSnapshot {
                meta: Some(snap.meta.clone()),
                offset: off as u64,
                data: snap.data.slice(off.min(len)..end),
                done,
                crc: if done { crc32fast::hash(&snap.data) } else { 0 },
            })),
        }));
    }

    fn snapshot_msg(
        &mut self,
        m: Message,
        now: u64,
        checker: &mut Checker,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let from = m.from;
        match m.body {
            Some(Body::InstallSnapshotResponse(r)) => {
                let Some((snap, _)) = self.snap_out.get(&from) else {
                    return Ok(());
                };
                if r.index != snap.meta.index {
                    return Ok(()); // an answer about an older stream
                }
                if r.success && !r.done {
                    // Next chunk, unless this ack is a duplicate of an older one.
                    let off = r.next_offset as usize;
                    if off > 0 && off < snap.data.len() {
                        let snap = snap.clone();
                        self.send_chunk(from, &snap, off, out);
                        self.snap_out.insert(from, (snap, now));
                    }
                    return Ok(());
                }
                self.snap_out.remove(&from);
                if let Some(raw) = self.raw.as_mut() {
                    raw.report_snapshot(from, r.success && r.done);
                }
            }
            Some(Body::InstallSnapshot(s)) => {
                let Some(meta) = s.meta.clone() else {
                    return Ok(());
                };
                if s.offset == 0 {
                    self.snap_in = Some((meta.clone(), Vec::new()));
                }
                let ok = match self.snap_in.as_mut() {
                    Some((mm, buf)) if mm.index == meta.index && buf.len() as u64 == s.offset => {
                        buf.extend_from_slice(&s.data);
                        true
                    }
                    // A duplicated chunk already received: ignore it.
                    Some((mm, buf)) if mm.index == meta.index && (buf.len() as u64) > s.offset => {
                        return Ok(());
                    }
                    _ => false,
                };
                let respond =
                    |success: bool, done: bool, next: u64, out: &mut Vec<Action>, term| {
                        out.push(Action::Send(Message {
                            from: m.to,
                            to: from,
                            term,
                            body: Some(Body::InstallSnapshotResponse(InstallSnapshotResponse {
                                index: meta.index,
                                next_offset: next,
                                success,
                                done,
                            })),
                        }));
                    };
                let term = self.raw.as_ref().map_or(0, |r| r.status().term);
                if !ok {
                    self.snap_in = None;
                    respond(false, false, 0, out, term);
                    return Ok(());
                }
                if !s.done {
                    let got = self.snap_in.as_ref().map_or(0, |(_, b)| b.len() as u64);
                    respond(true, false, got, out, term);
                    return Ok(());
                }
                let Some((meta, buf)) = self.snap_in.take() else {
                    return Ok(());
                };
                if crc32fast::hash(&buf) != s.crc {
                    respond(false, false, 0, out, term);
                    return Ok(());
                }
                let Some(raw) = self.raw.as_mut() else {
                    return Ok(());
                };
                if raw.restore_snapshot(meta.clone()) {
                    let kv = KvStore::restore_snapshot(&mut &buf[..]).map_err(|e| {
                        format!("node {}: restore snapshot {}: {e}", self.id, meta.index)
                    })?;
                    raw.store_mut().reset(meta.index, meta.term);
                    let snap = SnapFile {
                        meta: meta.clone(),
                        data: buf.into(),
                    };
                    if self.params.bug == NodeBug::SnapshotBeforeDurable {
                        // PLANTED BUG: state restored and answered, the file saved only later.
                        self.disk.install_before_durable(snap)?;
                    } else {
                        self.disk.save_snapshot(snap, true).map_err(|e| {
                            format!("node {}: save installed snapshot: {e}", self.id)
                        })?;
                    }
                    checker.on_snapshot(self.id, meta.index, meta.term)?;
                    self.kv = kv;
                    self.applied = meta.index;
                    out.push(Action::Trace(format!(
                        "node {} installed snapshot {}/t{}",
                        self.id, meta.index, meta.term
                    )));
                    self.serve_reads(out);
                } else {
                    out.push(Action::Trace(format!(
                        "node {} refused stale snapshot {}/t{}",
                        self.id, meta.index, meta.term
                    )));
                }
                let term = self.raw.as_ref().map_or(0, |r| r.status().term);
                respond(true, true, 0, out, term);
            }
            _ => {}
        }
        Ok(())
    }

    /// (role, term, commit) as last observed after handling input.
    pub fn observed(&self) -> (Role, u64, u64) {
        (self.last_role.0, self.last_role.1, self.last_commit)
    }

    /// Role and term, if up.
    pub fn role(&self) -> Option<(Role, u64, Option<u64>, u64)> {
        self.raw.as_ref().map(|r| {
            let s = r.status();
            (s.role, s.term, s.leader, s.commit)
        })
    }
}

/// The simulator's side of the node layer's Ready phases: messages become `Action::Send`
/// (the network delays, drops and reorders them), the log and hard state go to the simulated
/// `Disk` (durable only once a simulated sync completes; a crash loses the rest), and a sync
/// is `Pending` until the world delivers `SyncDone`.
struct SimShell<'a> {
    node: &'a mut SimNode,
    now: u64,
    rng: &'a mut Rng,
    checker: &'a mut Checker,
    out: &'a mut Vec<Action>,
}

impl SimNode {
    /// This node as the node layer's `ReadyShell` for one call.
    fn shell<'a>(
        &'a mut self,
        now: u64,
        rng: &'a mut Rng,
        checker: &'a mut Checker,
        out: &'a mut Vec<Action>,
    ) -> SimShell<'a> {
        SimShell {
            node: self,
            now,
            rng,
            checker,
            out,
        }
    }
}

impl SimShell<'_> {
    fn raw(&mut self) -> &mut RawNode<MemLog> {
        self.node.raw.as_mut().expect("a running node has a core")
    }
}

impl ReadyShell for SimShell<'_> {
    type Store = MemLog;

    fn core(&mut self) -> &mut RawNode<MemLog> {
        self.raw()
    }

    fn bug(&self) -> NodeBug {
        self.node.params.bug
    }

    fn send(&mut self, m: Message) {
        self.out.push(Action::Send(m));
    }

    fn save_term_vote(&mut self, hs: HardState) -> Result<(), String> {
        self.out.push(Action::Trace(format!(
            "node {} write hardstate term {} vote {} commit {}",
            self.node.id, hs.term, hs.vote, hs.commit
        )));
        self.node.disk.set_hard_state(hs);
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        let id = self.node.id;
        let last_commit = self.node.last_commit;
        let raw = self.node.raw.as_mut().expect("a running node has a core");
        let prev_term = raw.store().term(entries[0].index - 1).ok();
        self.checker.on_append(id, prev_term, entries)?;
        // Never rewrite an entry at or below the commit index this node knew.
        for e in entries.iter().take_while(|e| e.index <= last_commit) {
            match raw.store().term(e.index) {
                Ok(t) if t != e.term => {
                    return Err(format!(
                        "node {id}: overwrites index {} (term {t}) with term {} at or below \
                         its commit {last_commit}",
                        e.index, e.term
                    ))
                }
                _ => {}
            }
        }
        raw.store_mut()
            .append(entries)
            .map_err(|e| format!("node {id}: log append: {e}"))?;
        self.node.disk.append(entries);
        self.out.push(Action::Trace(format!(
            "node {id} append {}",
            trace_entries(entries)
        )));
        Ok(())
    }

    fn sync(&mut self) -> Result<SyncStatus, String> {
        if !self.node.disk.dirty() {
            return Ok(SyncStatus::Done);
        }
        let p = &self.node.params;
        let latency = self.rng.range(p.sync_min, p.sync_max + 1);
        self.out.push(Action::Sync { latency });
        Ok(SyncStatus::Pending)
    }

    fn apply_and_serve(
        &mut self,
        committed: Vec<Entry>,
        reads: Vec<ReadState>,
        failed_reads: Vec<u64>,
    ) -> Result<(), String> {
        let n = &mut *self.node;
        if let Some(last) = committed.last().map(|e| e.index) {
            for e in &committed {
                n.apply(e, self.checker, self.out)?;
            }
            self.raw().on_applied(last);
            self.node.maybe_snapshot(self.out)?;
        }
        let n = &mut *self.node;
        n.ready_reads.extend(reads);
        for ctx in failed_reads {
            if let Some((client, attempt, _)) = n.reads.remove(&ctx) {
                self.out.push(Action::Reply {
                    client,
                    attempt,
                    seq: 0,
                    reply: Reply::Unavailable,
                });
            }
        }
        n.serve_reads(self.out);
        Ok(())
    }

    fn on_appended_as_leader(&mut self, entries: &[Entry]) {
        if self.node.params.bug == NodeBug::AnswerBeforeCommit {
            self.node.answer_before_commit(entries, self.out);
        }
    }

    fn snapshot_sends(&mut self, peers: Vec<u64>) {
        for peer in peers {
            self.node.send_snapshot(peer, self.now, self.out);
        }
    }

    fn snapshot_msgs(&mut self, msgs: Vec<Message>) -> Result<(), String> {
        for m in msgs {
            self.node
                .snapshot_msg(m, self.now, self.checker, self.out)?;
        }
        Ok(())
    }
}

impl SimNode {
    /// PLANTED BUG (`NodeBug::AnswerBeforeCommit`): a leader answers each write as soon as it
    /// is appended, as if it had applied at its index.
    fn answer_before_commit(&mut self, entries: &[Entry], out: &mut Vec<Action>) {
        use kvpb::command::Op;
        use kvpb::response::Result as R;
        for e in entries {
            let Ok(cmd) = kvpb::Command::decode(&e.data[..]) else {
                continue;
            };
            let Some((client, attempt)) = self.writes.remove(&(cmd.client_id, cmd.seq)) else {
                continue;
            };
            let r = match cmd.op {
                Some(Op::Put(_)) => R::Put(kvpb::PutResponse { version: e.index }),
                Some(Op::Delete(_)) => R::Delete(kvpb::DeleteResponse { deleted: true }),
                Some(Op::Cas(_)) => R::Cas(kvpb::CasResponse {
                    succeeded: true,
                    version: e.index,
                }),
                None => continue,
            };
            out.push(Action::Reply {
                client,
                attempt,
                seq: cmd.seq,
                reply: Reply::Write(r),
            });
        }
    }
}
