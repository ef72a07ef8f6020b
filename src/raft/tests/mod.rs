//! Unit tests for the Raft core. `Net` is a tiny deterministic in-memory network of
//! `RawNode<MemLog>`s that handles each `Ready` exactly as the module docs prescribe and
//! checks the safety invariants (I1, I2) on every step.

mod election;
mod membership;
mod misc;
mod reads;
mod replication;
mod snapshot;

use super::*;
use crate::pb::raftpb::message::Body;
use crate::pb::raftpb::*;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Test config: T = 10, heartbeat 1, PreVote and CheckQuorum off unless a test turns them on.
pub(crate) fn cfg(id: u64) -> Config {
    let mut c = Config::new(id);
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

pub(crate) fn conf(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        learners: vec![],
        ..ConfState::default()
    }
}

pub(crate) fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        entry_type: EntryType::EntryNormal as i32,
        data: Bytes::from(format!("{index}@{term}")),
    }
}

/// A MemLog holding entries 1.. with the given terms.
pub(crate) fn log_with(terms: &[u64]) -> MemLog {
    let mut m = MemLog::new();
    let ents: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| ent(i as u64 + 1, t))
        .collect();
    m.append(&ents).unwrap();
    m
}

/// A single node with `terms` in its log and hard state `hs`, voters `voters`.
pub(crate) fn node_with(
    c: Config,
    voters: &[u64],
    terms: &[u64],
    term: u64,
    vote: u64,
    commit: u64,
) -> RawNode<MemLog> {
    let init = InitialState {
        hard_state: HardState { term, vote, commit },
        conf: conf(voters),
        applied: commit,
    };
    RawNode::new(c, log_with(terms), init).unwrap()
}

pub(crate) fn msg(from: u64, to: u64, term: u64, body: Body) -> Message {
    Message {
        from,
        to,
        term,
        body: Some(body),
    }
}

pub(crate) fn vote_req(from: u64, to: u64, term: u64, li: u64, lt: u64, pre: bool) -> Message {
    msg(
        from,
        to,
        term,
        Body::RequestVote(RequestVote {
            pre_vote: pre,
            last_log_index: li,
            last_log_term: lt,
            transfer: false,
        }),
    )
}

pub(crate) fn vote_resp(from: u64, to: u64, term: u64, granted: bool, pre: bool) -> Message {
    msg(
        from,
        to,
        term,
        Body::RequestVoteResponse(RequestVoteResponse {
            pre_vote: pre,
            granted,
        }),
    )
}

pub(crate) fn append(
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    ents: Vec<Entry>,
    commit: u64,
) -> Message {
    msg(
        from,
        to,
        term,
        Body::AppendEntries(AppendEntries {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries: ents,
            commit,
        }),
    )
}

pub(crate) fn append_ok(from: u64, to: u64, term: u64, index: u64) -> Message {
    msg(
        from,
        to,
        term,
        Body::AppendEntriesResponse(AppendEntriesResponse {
            success: true,
            match_index: index,
            ..Default::default()
        }),
    )
}

pub(crate) fn heartbeat(from: u64, to: u64, term: u64, commit: u64, ctx: u64) -> Message {
    msg(
        from,
        to,
        term,
        Body::Heartbeat(Heartbeat {
            commit,
            context: ctx,
            lease_tick: 0,
        }),
    )
}

pub(crate) fn hb_resp(from: u64, to: u64, term: u64, ctx: u64) -> Message {
    msg(
        from,
        to,
        term,
        Body::HeartbeatResponse(HeartbeatResponse {
            context: ctx,
            lease_tick: 0,
            no_space: false,
        }),
    )
}

/// Ticks until the node's timer fires (at most 2T ticks).
pub(crate) fn tick_timeout(n: &mut RawNode<MemLog>) {
    let t = n.randomized_timeout - n.election_elapsed;
    for _ in 0..t {
        n.tick();
    }
}

/// Drains a single node's Ready the way a shell would (persist to its MemLog, apply,
/// acknowledge) and returns it.
pub(crate) fn drain(n: &mut RawNode<MemLog>) -> Ready {
    let rd = n.ready();
    if !rd.entries.is_empty() {
        n.store_mut().append(&rd.entries).unwrap();
    }
    if let Some(last) = rd.committed.last() {
        n.on_applied(last.index);
    }
    if let Some(last) = rd.entries.last() {
        n.on_persisted(last.index, last.term);
    }
    rd
}

pub(crate) fn body_of(m: &Message) -> &Body {
    m.body.as_ref().unwrap()
}

/// One node of the harness with its durable state and what it applied.
pub(crate) struct Peer {
    pub(crate) raw: RawNode<MemLog>,
    pub(crate) hs: HardState,
    pub(crate) applied: Vec<Entry>,
    pub(crate) reads: Vec<ReadState>,
    pub(crate) failed_reads: Vec<u64>,
    pub(crate) snapshot_sends: Vec<u64>,
    /// Index of the snapshot installed last (the apply stream may jump to just above it).
    pub(crate) snap_index: u64,
    pub(crate) cfg: Config,
}

impl Peer {
    /// A fresh node (empty log) starting from configuration `conf`.
    pub(crate) fn new(c: Config, conf: ConfState) -> Peer {
        let init = InitialState {
            hard_state: HardState::default(),
            conf,
            applied: 0,
        };
        Peer {
            raw: RawNode::new(c.clone(), MemLog::new(), init).unwrap(),
            hs: HardState::default(),
            applied: vec![],
            reads: vec![],
            failed_reads: vec![],
            snapshot_sends: vec![],
            snap_index: 0,
            cfg: c,
        }
    }
}

/// Sees (and may rewrite) each message before delivery; returns false to drop it.
pub(crate) type MsgFilter = Box<dyn FnMut(&mut Message) -> bool>;

/// Deterministic in-memory network with invariant checks.
pub(crate) struct Net {
    pub(crate) peers: BTreeMap<u64, Peer>,
    pub(crate) queue: VecDeque<Message>,
    /// Directed links that drop everything.
    pub(crate) cut: HashSet<(u64, u64)>,
    /// Message filter: returns false to drop.
    pub(crate) filter: Option<MsgFilter>,
    /// If set: deliver queued messages in random order and duplicate some (rate).
    pub(crate) chaos: Option<(crate::rng::Rng, f64)>,
    /// Act as the snapshot-transfer shell: send InstallSnapshot for `snapshot_sends`, install
    /// received snapshots and acknowledge them; a lost stream is reported as failed.
    pub(crate) auto_snapshot: bool,
    /// Snapshots installed (accepted by `restore_snapshot`) so far.
    pub(crate) snapshots_installed: usize,
    /// Leader seen per term (I1).
    leaders: HashMap<u64, u64>,
    /// Committed (index -> (term, data)) as applied anywhere (I1/I2).
    committed: HashMap<u64, (u64, Bytes)>,
}

impl Net {
    pub(crate) fn new(n: u64, tweak: impl Fn(&mut Config)) -> Net {
        let ids: Vec<u64> = (1..=n).collect();
        let mut peers = BTreeMap::new();
        for &id in &ids {
            let mut c = cfg(id);
            tweak(&mut c);
            peers.insert(id, Peer::new(c, conf(&ids)));
        }
        Net {
            peers,
            queue: VecDeque::new(),
            cut: HashSet::new(),
            filter: None,
            chaos: None,
            auto_snapshot: false,
            snapshots_installed: 0,
            leaders: HashMap::new(),
            committed: HashMap::new(),
        }
    }

    /// Adds a new, empty node `id` that knows no configuration (a joining node: it learns
    /// the configuration from the leader's log).
    pub(crate) fn add_node(&mut self, id: u64) {
        self.peers
            .insert(id, Peer::new(cfg(id), ConfState::default()));
    }

    pub(crate) fn node(&mut self, id: u64) -> &mut RawNode<MemLog> {
        &mut self.peers.get_mut(&id).unwrap().raw
    }

    pub(crate) fn n(&self, id: u64) -> &RawNode<MemLog> {
        &self.peers[&id].raw
    }

    pub(crate) fn isolate(&mut self, id: u64) {
        for &o in self.peers.keys() {
            if o != id {
                self.cut.insert((id, o));
                self.cut.insert((o, id));
            }
        }
    }

    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Handles one node's Ready per the contract; messages go to the queue.
    pub(crate) fn process(&mut self, id: u64) {
        let p = self.peers.get_mut(&id).unwrap();
        if !p.raw.has_ready() {
            return;
        }
        let rd = p.raw.ready();
        if let Some(m) = &rd.snapshot {
            // Installed before anything else of the Ready.
            p.raw.store_mut().reset(m.index, m.term);
            p.snap_index = m.index;
        }
        if let Some(hs) = rd.hard_state {
            assert!(hs.term >= p.hs.term, "term went back on {id}");
            if hs.term == p.hs.term && p.hs.vote != 0 && p.cfg.planted_bug == PlantedBug::None {
                assert!(hs.vote == p.hs.vote, "vote changed within term on {id}");
            }
            p.hs = hs;
        }
        if !rd.entries.is_empty() {
            p.raw.store_mut().append(&rd.entries).unwrap();
        }
        self.queue.extend(rd.messages);
        for e in &rd.committed {
            let last = p
                .applied
                .last()
                .map(|e| e.index)
                .unwrap_or(0)
                .max(p.snap_index);
            assert_eq!(e.index, last + 1, "node {id} applied out of order");
            match self.committed.get(&e.index) {
                Some((t, d)) => assert!(
                    *t == e.term && *d == e.data,
                    "node {id} applied ({}, {}) but ({}, {t}) was applied elsewhere",
                    e.index,
                    e.term,
                    e.index
                ),
                None => {
                    self.committed.insert(e.index, (e.term, e.data.clone()));
                }
            }
            p.applied.push(e.clone());
        }
        if let Some(last) = rd.committed.last() {
            p.raw.on_applied(last.index);
        }
        p.reads.extend(rd.reads);
        p.failed_reads.extend(rd.failed_reads);
        p.snapshot_sends.extend(rd.snapshot_sends.iter().copied());
        if let Some(last) = rd.entries.last() {
            p.raw.on_persisted(last.index, last.term);
        }
        if self.auto_snapshot {
            let (si, st) = p.raw.store().snapshot_index_term();
            for &to in &rd.snapshot_sends {
                let m = msg(
                    id,
                    to,
                    p.raw.term,
                    Body::InstallSnapshot(InstallSnapshot {
                        meta: Some(SnapshotMeta {
                            index: si,
                            term: st,
                            conf: Some(p.raw.conf().clone()),
                            ..Default::default()
                        }),
                        offset: 0,
                        data: Bytes::new(),
                        done: true,
                        crc: 0,
                    }),
                );
                self.queue.push_back(m);
            }
            for m in rd.snapshot_msgs {
                if let Some(Body::InstallSnapshot(is)) = m.body {
                    let Some(meta) = is.meta else { continue };
                    let index = meta.index;
                    self.install_snapshot(id, meta);
                    let p = self.peers.get_mut(&id).unwrap();
                    let reply = msg(
                        id,
                        m.from,
                        p.raw.term,
                        Body::InstallSnapshotResponse(InstallSnapshotResponse {
                            index,
                            next_offset: 0,
                            success: true,
                            done: true,
                        }),
                    );
                    self.queue.push_back(reply);
                }
            }
        }
        let p = self.peers.get_mut(&id).unwrap();
        if p.raw.role == Role::Leader {
            let term = p.raw.term;
            let prev = self.leaders.insert(term, id);
            assert!(
                prev.is_none() || prev == Some(id),
                "two leaders in term {term}"
            );
        }
    }

    pub(crate) fn process_all(&mut self) {
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
    }

    /// Delivers messages (and follow-ups) until the network is quiet.
    pub(crate) fn settle(&mut self) {
        for _ in 0..100_000 {
            self.process_all();
            let m = match self.chaos.as_mut() {
                Some((rng, dup)) if !self.queue.is_empty() => {
                    let i = rng.range(0, self.queue.len() as u64) as usize;
                    if rng.chance(*dup) {
                        Some(self.queue[i].clone())
                    } else {
                        self.queue.swap_remove_back(i)
                    }
                }
                _ => self.queue.pop_front(),
            };
            let Some(m) = m else {
                return;
            };
            self.deliver(m);
        }
        panic!("network did not settle");
    }

    fn deliver(&mut self, mut m: Message) {
        let mut lost = self.cut.contains(&(m.from, m.to));
        if !lost {
            if let Some(f) = self.filter.as_mut() {
                lost = !f(&mut m);
            }
        }
        if lost {
            if self.auto_snapshot && matches!(m.body, Some(Body::InstallSnapshot(_))) {
                if let Some(p) = self.peers.get_mut(&m.from) {
                    p.raw.report_snapshot(m.to, false);
                }
            }
            return;
        }
        if let Some(p) = self.peers.get_mut(&m.to) {
            p.raw.step(m);
        }
    }

    pub(crate) fn tick(&mut self, id: u64) {
        self.node(id).tick();
    }

    pub(crate) fn tick_all(&mut self) {
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.node(id).tick();
        }
    }

    /// Makes `id` campaign now and settles.
    pub(crate) fn campaign(&mut self, id: u64) {
        self.node(id).campaign(false);
        self.settle();
    }

    /// Elects `id` (skipping PreVote/lease obstacles via a direct campaign) and settles.
    pub(crate) fn elect(&mut self, id: u64) {
        self.campaign(id);
        assert_eq!(self.node(id).role, Role::Leader, "node {id} failed to win");
    }

    pub(crate) fn propose(&mut self, id: u64, data: &str) -> u64 {
        let i = self
            .node(id)
            .propose(Bytes::from(data.to_string()))
            .unwrap();
        self.settle();
        i
    }

    pub(crate) fn leader(&self) -> Option<u64> {
        self.peers
            .iter()
            .find(|(_, p)| p.raw.role == Role::Leader)
            .map(|(&id, _)| id)
    }

    /// (term of each entry) of `id`'s log.
    pub(crate) fn log_terms(&self, id: u64) -> Vec<u64> {
        let raw = &self.peers[&id].raw;
        (raw.log.first_index()..=raw.log.last_index())
            .map(|i| raw.log.term(i).unwrap())
            .collect()
    }

    /// Offers a received snapshot to `id`'s core as the shell would; the store is reset when
    /// the next Ready carries it (`process`).
    pub(crate) fn install_snapshot(&mut self, id: u64, meta: SnapshotMeta) -> bool {
        let p = self.peers.get_mut(&id).unwrap();
        if !p.raw.restore_snapshot(meta) {
            return false;
        }
        self.snapshots_installed += 1;
        true
    }

    /// Restarts `id` from its durable state (everything written so far is durable here).
    pub(crate) fn restart(&mut self, id: u64) {
        let p = self.peers.get_mut(&id).unwrap();
        let store = p.raw.store().clone();
        let applied = p
            .applied
            .last()
            .map(|e| e.index)
            .unwrap_or(0)
            .max(p.snap_index);
        let init = InitialState {
            hard_state: p.hs,
            conf: p.raw.conf().clone(),
            applied,
        };
        p.raw = RawNode::new(p.cfg.clone(), store, init).unwrap();
    }
}
