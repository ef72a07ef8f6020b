//! The simulated world: nodes, network, clients, and one event queue ordered by (time, seq).
//!
//! A run has two phases. **Chaos**: nodes tick at different rates, the network drops, delays,
//! duplicates and reorders, and a fault schedule partitions (symmetric and one-way), heals,
//! crashes and restarts nodes and slows disks. **Quiet**: everything is healed and restarted,
//! the network is calm, clients finish; by the end a leader must lead, every node must have
//! caught up and every client operation must have completed (liveness).
//!
//! Safety invariants are checked after every event (see [`crate::sim::checker`]); the client
//! history is checked for linearizability at the end. Everything is driven by one seeded
//! [`Rng`] and ordered collections, so a seed reproduces its run (and trace) exactly.

use crate::node::NodeBug;
#[cfg(any(test, feature = "sim-bugs"))]
use crate::raft::PlantedBug;
use crate::raft::{Config, LogStore, Message, Role};
use crate::rng::Rng;
use crate::sim::checker::Checker;
use crate::sim::client::{ClientAction, ClientReq, Reply, SimClient};
use crate::sim::linearize::{self, Operation, Verdict};
use crate::sim::net::{Net, NetParams};
use crate::sim::node::{describe_msg, Action, Input, NodeParams, SimNode};
use crate::snapshot::SnapshotPolicy;
use std::collections::BTreeMap;

mod membership;

/// A Raft bug to plant in the core, to prove the checkers catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    None,
    /// Grant more than one vote per term.
    VoteTwice,
    /// Commit old-term entries by counting replicas (Figure 8).
    CommitOldTerm,
    /// Accept a membership change while another is in flight.
    TwoConfChanges,
    /// Switch a multi-voter change directly, without the joint configuration.
    SkipJoint,
    /// A new leader changes membership before committing an entry of its own term.
    ConfChangeBeforeCommit,
    /// Count learners towards the commit quorum.
    LearnerVotes,
}

impl Bug {
    /// The bug needs membership changes to show.
    pub fn is_membership(self) -> bool {
        matches!(
            self,
            Bug::TwoConfChanges | Bug::SkipJoint | Bug::ConfChangeBeforeCommit | Bug::LearnerVotes
        )
    }
}

/// Most members (voters and learners) the membership schedule grows a cluster to.
const MAX_MEMBERS: usize = 7;
/// Fewest voters it shrinks one to (fewer leave no fault tolerance for the other faults).
const MIN_VOTERS: usize = 3;

/// Options for one run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub nodes: usize,
    /// Length of the chaos phase in base ticks (10 simulated ms each).
    pub ticks: u64,
    /// Cap on events processed in the chaos phase.
    pub max_steps: u64,
    pub clients: usize,
    pub keys: u64,
    pub bug: Bug,
    /// A planted node-layer bug (`src/node/`), to prove the checks catch it.
    pub node_bug: NodeBug,
    /// Record a readable trace.
    pub trace: bool,
    /// Check the leader commit rule (L4) directly; off, only its consequences are checked.
    pub check_commit_rule: bool,
    /// Change the membership during the chaos phase: add learners (new ids), promote them
    /// (alone, or two at once through the joint configuration), replace a voter, remove
    /// voters (the leader too), interleaved with every other fault.
    pub membership: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 5,
            ticks: 300,
            max_steps: u64::MAX,
            clients: 4,
            keys: 3,
            bug: Bug::None,
            node_bug: NodeBug::None,
            trace: false,
            check_commit_rule: true,
            membership: false,
        }
    }
}

impl SimOptions {
    /// A bug (core or node layer) is planted: the fault schedule is biased to expose it.
    pub fn planted(&self) -> bool {
        self.bug != Bug::None || self.node_bug != NodeBug::None
    }
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct SeedResult {
    pub seed: u64,
    pub violation: Option<String>,
    /// Entries committed (highest committed index).
    pub commits: u64,
    /// Configuration entries committed (membership changes, joint ones counted twice).
    pub conf_changes: u64,
    pub elections: u64,
    pub events: u64,
    /// Client operations that completed / stayed unknown.
    pub ops_done: u64,
    pub ops_unknown: u64,
    /// The linearizability search ran out of budget.
    pub inconclusive: bool,
    /// The trace (empty unless requested) and a hash of it.
    pub trace: Vec<String>,
    pub trace_hash: u64,
}

/// Base tick length in simulated ms.
const TICK_MS: u64 = 10;
/// Client request timeout in ms.
const CLIENT_TIMEOUT: u64 = 150;

#[derive(Debug)]
enum Event {
    Tick(u64),
    Deliver(Message),
    SyncDone {
        node: u64,
        incarnation: u64,
    },
    ClientArrive {
        node: u64,
        req: ClientReq,
    },
    ClientReply {
        client: usize,
        attempt: u64,
        seq: u64,
        reply: Reply,
    },
    ClientTimeout {
        client: usize,
        attempt: u64,
    },
    ClientResume(usize),
    ClientStart(usize),
    Fault,
    Crash(u64),
    Restart(u64),
    Quiet,
    End,
}

struct World {
    opts: SimOptions,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: Vec<SimNode>,
    tick_ms: Vec<u64>,
    net: Net,
    clients: Vec<SimClient>,
    history: Vec<Operation>,
    clock: u64,
    checker: Checker,
    quiet: bool,
    /// Clients stop starting operations after this time.
    stop_at: u64,
    trace: Vec<String>,
    trace_hash: u64,
    events: u64,
    /// Elections already seen by the fault schedule.
    elections_seen: u64,
    /// Cluster-wide core settings drawn per seed (new members get them too).
    pre_vote: bool,
    check_quorum: bool,
}

fn fnv(h: &mut u64, s: &str) {
    for b in s.bytes().chain(std::iter::once(b'\n')) {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

impl World {
    fn at(&mut self, delay: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), ev);
    }

    fn log(&mut self, s: String) {
        if self.opts.trace {
            let line = format!("{:>7} {s}", self.now);
            fnv(&mut self.trace_hash, &line);
            self.trace.push(line);
        }
    }

    fn node(&mut self, id: u64) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
    }

    /// Runs node actions: sends, replies, syncs, trace lines.
    fn actions(&mut self, id: u64, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Send(m) => {
                    let delays = self.net.send(m.from, m.to, &mut self.rng);
                    if self.opts.trace {
                        let d = if delays.is_empty() {
                            " (lost)".to_string()
                        } else if delays.len() > 1 {
                            " (duplicated)".to_string()
                        } else {
                            String::new()
                        };
                        self.log(format!("send {}{d}", describe_msg(&m)));
                    }
                    for d in delays {
                        self.at(d, Event::Deliver(m.clone()));
                    }
                }
                Action::Reply {
                    client,
                    attempt,
                    seq,
                    reply,
                } => {
                    if self.rng.chance(self.net.params.drop / 2.0) {
                        continue;
                    }
                    let d = self.rng.range(1, 5);
                    self.at(
                        d,
                        Event::ClientReply {
                            client,
                            attempt,
                            seq,
                            reply,
                        },
                    );
                }
                Action::Sync { latency } => {
                    let incarnation = self.node(id).incarnation;
                    self.log(format!("node {id} sync started ({latency} ms)"));
                    self.at(
                        latency,
                        Event::SyncDone {
                            node: id,
                            incarnation,
                        },
                    );
                }
                Action::Trace(s) => self.log(s),
            }
        }
    }

    fn client_action(&mut self, c: usize, a: ClientAction) {
        match a {
            ClientAction::Send { node, req } => {
                let attempt = req.attempt;
                if self.opts.trace {
                    self.log(format!(
                        "client {} -> node {node} attempt {attempt} seq {} {:?}",
                        c + 1,
                        req.seq,
                        short_op(&req)
                    ));
                }
                if !self.rng.chance(self.net.params.drop / 2.0) {
                    let d = self.rng.range(1, 5);
                    self.at(d, Event::ClientArrive { node, req });
                }
                self.at(CLIENT_TIMEOUT, Event::ClientTimeout { client: c, attempt });
            }
            ClientAction::Retry { after } => self.at(after, Event::ClientResume(c)),
            ClientAction::Think { after } => {
                if self.now + after < self.stop_at {
                    self.at(after, Event::ClientStart(c));
                }
            }
            ClientAction::Nothing => {}
        }
    }

    fn node_input(&mut self, id: u64, inp: Input) -> Result<(), String> {
        let mut out = Vec::new();
        let now = self.now;
        let n = &mut self.nodes[(id - 1) as usize];
        let before = n.applied();
        let (proposals, installs) = (n.proposals, n.installs);
        n.input(inp, now, &mut self.rng, &mut self.checker, &mut out)?;
        let proposed = n.proposals > proposals;
        self.actions(id, out);
        self.retire_if_removed(id);
        self.after_commit(id, before);
        self.after_install(id, installs);
        // Fault trigger: a leader sometimes crashes right after appending a proposal, so the
        // entry may exist on it alone (a conflicting tail for later leaders to overwrite).
        let p = if self.opts.planted() { 0.15 } else { 0.01 };
        if proposed && !self.quiet && self.rng.chance(p) {
            let d = self.rng.range(0, 4);
            self.at(d, Event::Crash(id));
        }
        Ok(())
    }

    /// Fault trigger: a follower that just installed a received snapshot sometimes crashes a
    /// moment later, before its next sync: the window in which a snapshot whose state was used
    /// before it was durable would be lost.
    fn after_install(&mut self, id: u64, before: u64) {
        if self.quiet || self.nodes[(id - 1) as usize].installs <= before {
            return;
        }
        let p = if self.opts.planted() { 0.3 } else { 0.03 };
        if self.rng.chance(p) {
            let d = self.rng.range(0, 3);
            self.at(d, Event::Crash(id));
        }
    }

    /// Fault trigger: a leader that just applied (and answered clients for) newly committed
    /// entries sometimes crashes a moment later, before what it sent next reaches the
    /// followers.
    fn after_commit(&mut self, id: u64, before: u64) {
        let n = &self.nodes[(id - 1) as usize];
        let (role, _, _) = n.observed();
        if self.quiet || role != Role::Leader || n.applied() <= before {
            return;
        }
        let p = if self.opts.planted() { 0.05 } else { 0.005 };
        if self.rng.chance(p) {
            let d = self.rng.range(0, 6);
            self.at(d, Event::Crash(id));
        }
    }

    fn crash(&mut self, id: u64) {
        let n = &mut self.nodes[(id - 1) as usize];
        if n.up {
            n.crash(&mut self.rng);
            // Power loss: messages still in the node's send buffers are lost (each in-flight
            // message from it, with probability 1/2).
            let rng = &mut self.rng;
            let p = if self.opts.planted() { 0.9 } else { 0.5 };
            let before = self.queue.len();
            self.queue.retain(|_, ev| match ev {
                Event::Deliver(m) if m.from == id => !rng.chance(p),
                _ => true,
            });
            let lost = before - self.queue.len();
            self.log(format!("CRASH node {id} ({lost} messages in flight lost)"));
        }
    }

    fn restart(&mut self, id: u64) -> Result<(), String> {
        let n = &mut self.nodes[(id - 1) as usize];
        if !n.up && !n.retired {
            n.restart(&mut self.checker)?;
            let (hs, last) = (n.disk.durable.hard_state, n.disk.durable.log.last_index());
            self.log(format!(
                "RESTART node {id} (term {} vote {} commit {}, last index {last})",
                hs.term, hs.vote, hs.commit
            ));
        }
        Ok(())
    }

    /// One random fault.
    fn fault(&mut self) -> Result<(), String> {
        if self.opts.membership {
            // Planted membership bugs need changes often, with the other faults between them.
            let p = if self.opts.bug.is_membership() {
                0.6
            } else {
                0.4
            };
            if self.rng.chance(p) {
                return self.membership_fault();
            }
        }
        let ids = self.ids();
        let n = ids.len() as u64;
        let bias = self.opts.planted();
        let roll = self.rng.range(0, 100);
        if roll < 25 {
            // Partition a random subset away (sometimes one-way).
            let mut side: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|_| self.rng.chance(0.4))
                .collect();
            if side.is_empty() || side.len() as u64 == n {
                side = vec![1 + self.rng.range(0, n)];
            }
            let one_way = self.rng.chance(0.25);
            self.net.partition(&ids, &side, one_way);
            self.log(format!(
                "PARTITION {side:?} from the rest{}",
                if one_way {
                    " (one-way: outbound cut)"
                } else {
                    ""
                }
            ));
        } else if roll < 40 {
            self.net.heal();
            self.log("HEAL network".to_string());
        } else if roll < (if bias { 70 } else { 58 }) {
            // Crash a node; prefer the leader half of the time.
            let leader = ids.iter().copied().find(|&i| {
                self.nodes[(i - 1) as usize]
                    .role()
                    .is_some_and(|r| r.0 == Role::Leader)
            });
            let victim = match leader {
                Some(l) if self.rng.chance(0.5) => l,
                _ => 1 + self.rng.range(0, n),
            };
            self.crash(victim);
            // Usually bring it back after a while (churn), sometimes leave it to a later fault.
            if self.rng.chance(if bias { 0.9 } else { 0.5 }) {
                let d = if bias {
                    self.rng.range(20, 150)
                } else {
                    self.rng.range(50, 800)
                };
                self.at(d, Event::Restart(victim));
            }
        } else if roll < 80 {
            // Restart a crashed node.
            let down: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|&i| !self.nodes[(i - 1) as usize].up)
                .collect();
            if !down.is_empty() {
                let id = down[self.rng.range(0, down.len() as u64) as usize];
                self.restart(id)?;
            }
        } else if roll < 88 {
            let a = 1 + self.rng.range(0, n);
            let b = 1 + self.rng.range(0, n);
            self.net.cut_link(a, b);
            self.log(format!("CUT link {a}->{b}"));
        } else if roll < 94 {
            let id = 1 + self.rng.range(0, n);
            let slow = self.rng.chance(0.5);
            let p = &mut self.node(id).params;
            if slow {
                p.sync_min = 10;
                p.sync_max = 60;
            } else {
                p.sync_min = 0;
                p.sync_max = 3;
            }
            self.log(format!(
                "DISK node {id} {}",
                if slow { "slow" } else { "fast" }
            ));
        } else if roll < 97 {
            // Leadership transfer from the current leader (if any) to a random node.
            let leader = ids.iter().copied().find(|&i| {
                self.nodes[(i - 1) as usize]
                    .role()
                    .is_some_and(|r| r.0 == Role::Leader)
            });
            if let Some(l) = leader {
                let to = 1 + self.rng.range(0, n);
                self.node_input(l, Input::Transfer(to))?;
            }
        } else {
            let drop = [0.0, 0.02, 0.1, 0.3][self.rng.range(0, 4) as usize];
            self.net.params.drop = drop;
            self.net.params.dup = if self.rng.chance(0.5) { 0.02 } else { 0.0 };
            self.net.params.max_delay = [4, 10, 40][self.rng.range(0, 3) as usize];
            self.log(format!(
                "NET drop {drop} dup {} delay <{}",
                self.net.params.dup, self.net.params.max_delay
            ));
        }
        Ok(())
    }

    fn step(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::Tick(id) => {
                let d = self.tick_ms[(id - 1) as usize];
                self.at(d, Event::Tick(id));
                if self.nodes[(id - 1) as usize].up {
                    self.log(format!("tick node {id}"));
                    self.node_input(id, Input::Tick)?;
                }
            }
            Event::Deliver(m) => {
                let (from, to) = (m.from, m.to);
                if !self.net.connected(from, to) {
                    return Ok(());
                }
                let idx = (to.wrapping_sub(1)) as usize;
                if idx >= self.nodes.len() || !self.nodes[idx].up {
                    return Ok(());
                }
                if self.opts.trace {
                    self.log(format!("deliver {}", describe_msg(&m)));
                }
                self.node_input(to, Input::Msg(m))?;
            }
            Event::SyncDone { node, incarnation } => {
                let live = {
                    let n = &self.nodes[(node - 1) as usize];
                    n.up && n.incarnation == incarnation
                };
                if live {
                    self.log(format!("node {node} sync done"));
                    let n = &mut self.nodes[(node - 1) as usize];
                    let (before, installs) = (n.applied(), n.installs);
                    let mut out = Vec::new();
                    let now = self.now;
                    n.sync_done(now, &mut self.rng, &mut self.checker, &mut out)?;
                    let failed_stop = !n.up;
                    self.actions(node, out);
                    self.retire_if_removed(node);
                    self.after_commit(node, before);
                    self.after_install(node, installs);
                    if failed_stop {
                        // The node fail-stopped on a failed sync: an operator (here the world)
                        // restarts it, from what its disk holds.
                        let d = self.rng.range(20, 300);
                        self.at(d, Event::Restart(node));
                    }
                }
            }
            Event::ClientArrive { node, req } => {
                if self.nodes[(node - 1) as usize].up {
                    self.node_input(node, Input::Client(req))?;
                }
            }
            Event::ClientReply {
                client,
                attempt,
                seq,
                reply,
            } => {
                self.clock += 1;
                if self.opts.trace {
                    self.log(format!(
                        "client {} <- attempt {attempt} {reply:?}",
                        client + 1
                    ));
                }
                let a = self.clients[client].on_reply(
                    attempt,
                    seq,
                    reply,
                    &mut self.history,
                    self.clock,
                );
                self.client_action(client, a);
            }
            Event::ClientTimeout { client, attempt } => {
                let stopping = self.quiet;
                if self.clients[client].attempt == attempt && self.clients[client].busy() {
                    self.log(format!("client {} timeout attempt {attempt}", client + 1));
                }
                let a = self.clients[client].on_timeout(attempt, &mut self.history, stopping);
                self.client_action(client, a);
            }
            Event::ClientResume(c) => {
                let a = self.clients[c].resume();
                self.client_action(c, a);
            }
            Event::ClientStart(c) => {
                if !self.clients[c].busy() {
                    self.clock += 1;
                    let a = self.clients[c].start(&mut self.history, self.clock);
                    self.client_action(c, a);
                }
            }
            Event::Fault => {
                if !self.quiet {
                    self.fault()?;
                    let gap = if self.opts.planted() {
                        self.rng.range(20, 150)
                    } else {
                        self.rng.range(20, 300)
                    };
                    self.at(gap, Event::Fault);
                }
            }
            Event::Crash(id) => {
                if !self.quiet {
                    self.crash(id);
                    let d = self.rng.range(20, 300);
                    self.at(d, Event::Restart(id));
                }
            }
            Event::Restart(id) => {
                if !self.quiet {
                    self.restart(id)?;
                }
            }
            Event::Quiet => {
                self.quiet = true;
                self.net.heal();
                self.net.params = NetParams::calm();
                for id in self.ids() {
                    self.restart(id)?;
                    let p = &mut self.node(id).params;
                    p.sync_min = 0;
                    p.sync_max = 3;
                    p.sync_fail = 0.0;
                    p.append_full = 0.0;
                }
                self.log("QUIET: network healed and calm, all nodes up".to_string());
            }
            Event::End => {}
        }
        // A freshly elected leader sometimes crashes soon after (a leader that replicated its
        // entries to a minority only: the Figure 8 shapes).
        if self.checker.elections > self.elections_seen {
            self.elections_seen = self.checker.elections;
            let bias = self.opts.planted();
            let p = if bias { 0.7 } else { 0.1 };
            if let Some((id, _)) = self.checker.last_leader {
                if !self.quiet && self.rng.chance(p) {
                    let d = self.rng.range(1, if bias { 15 } else { 40 });
                    self.at(d, Event::Crash(id));
                }
            }
        }
        // Durability of committed entries, after every event.
        let disks: Vec<(u64, &crate::sim::disk::Durable)> =
            self.nodes.iter().map(|n| (n.id, &n.disk.durable)).collect();
        self.checker.check_durable(&disks)
    }

    /// End-of-run liveness: one leader, everyone caught up, no client op outstanding.
    fn liveness(&self) -> Result<(), String> {
        let mut leader = None;
        let mut max_commit = 0;
        for n in &self.nodes {
            if let Some((role, term, _, commit)) = n.role() {
                max_commit = max_commit.max(commit);
                if role == Role::Leader {
                    if leader.is_some() {
                        return Err("liveness: two leaders at the end of the quiet period".into());
                    }
                    leader = Some((n.id, term));
                }
            }
        }
        let Some((lid, term)) = leader else {
            return Err("liveness: no leader at the end of the quiet period".into());
        };
        // Every member of the leader's configuration (nodes removed or never admitted are
        // not judged; one told it was removed has stopped).
        let members = self.members_of(lid);
        for n in self.nodes.iter().filter(|n| members.contains(&n.id)) {
            let Some((_, t, l, _)) = n.role() else {
                return Err(format!("liveness: node {} down in the quiet period", n.id));
            };
            if t != term || l != Some(lid) {
                return Err(format!(
                    "liveness: node {} at term {t} follows {l:?}, but node {lid} leads term {term}",
                    n.id
                ));
            }
            if n.applied() < max_commit {
                return Err(format!(
                    "liveness: node {} applied only {} of commit {max_commit} after the quiet period",
                    n.id,
                    n.applied()
                ));
            }
        }
        for c in &self.clients {
            if c.busy() {
                return Err(format!(
                    "liveness: operation not completed after the quiet period: {}",
                    c.describe()
                ));
            }
        }
        Ok(())
    }
}

fn short_op(req: &ClientReq) -> String {
    use crate::pb::kvpb::command::Op;
    use crate::sim::client::{decode_val, ReqOp};
    match &req.op {
        ReqOp::Read { key } => format!("get {}", String::from_utf8_lossy(key)),
        ReqOp::Write(c) => match &c.op {
            Some(Op::Put(p)) => format!(
                "put {}={}",
                String::from_utf8_lossy(&p.key),
                decode_val(&p.value)
            ),
            Some(Op::Delete(d)) => format!("delete {}", String::from_utf8_lossy(&d.key)),
            Some(Op::Cas(x)) => format!(
                "cas {} v{} -> {}",
                String::from_utf8_lossy(&x.key),
                x.expected_version,
                if x.delete {
                    "delete".to_string()
                } else {
                    decode_val(&x.value).to_string()
                }
            ),
            Some(Op::Alarm(a)) => format!("alarm raise={}", a.raise),
            Some(other) => format!("{other:?}"),
            None => "empty".to_string(),
        },
    }
}

/// Sets the planted bug in a core config (only builds with the `sim-bugs` feature, or tests,
/// can plant one: the shipped core has no switch).
#[cfg(any(test, feature = "sim-bugs"))]
fn plant(cfg: &mut Config, bug: Bug) {
    cfg.planted_bug = match bug {
        Bug::None => PlantedBug::None,
        Bug::VoteTwice => PlantedBug::VoteTwice,
        Bug::CommitOldTerm => PlantedBug::CommitOldTerm,
        Bug::TwoConfChanges => PlantedBug::TwoConfChanges,
        Bug::SkipJoint => PlantedBug::SkipJoint,
        Bug::ConfChangeBeforeCommit => PlantedBug::ConfChangeBeforeCommit,
        Bug::LearnerVotes => PlantedBug::LearnerVotes,
    };
}

#[cfg(not(any(test, feature = "sim-bugs")))]
fn plant(_cfg: &mut Config, bug: Bug) {
    assert!(
        bug == Bug::None,
        "planted bug {bug:?} needs a build with the sim-bugs feature"
    );
}

/// A snapshot policy with small thresholds for node `id` of `n`: the server's
/// `SnapshotPolicy` (the same due-index, byte-threshold, stagger and compaction arithmetic),
/// so every seed exercises it. With `bias` (planted-bug runs) every member snapshots on the
/// entry threshold alone and compacts fully, so followers that fall behind need snapshot
/// transfers: the window snapshot bugs need.
fn sim_policy(rng: &mut Rng, id: u64, n: u64, bias: bool) -> SnapshotPolicy {
    SnapshotPolicy {
        // Planted-bug runs snapshot more often, so lagging followers need transfers.
        max_log_entries: if bias {
            rng.range(5, 20)
        } else {
            rng.range(15, 80)
        },
        // Commands are ~30 bytes: a byte threshold of a few dozen entries in some runs.
        max_log_bytes: if !bias && rng.chance(0.3) {
            rng.range(500, 3000)
        } else {
            u64::MAX
        },
        // Entries kept below the snapshot: followers slightly behind catch up from the log.
        trailing_entries: if bias || rng.chance(0.5) {
            0
        } else {
            rng.range(1, 40)
        },
        stagger: (!bias && rng.chance(0.5)).then_some((id - 1, n)),
    }
}

/// Node `id` of a cluster bootstrapped with `voters` (empty for a node that joins later),
/// with its per-seed tunables, and its tick length (clocks run at different rates: 8..13 ms
/// per tick).
fn new_node(
    rng: &mut Rng,
    id: u64,
    voters: Vec<u64>,
    opts: &SimOptions,
    (pre_vote, check_quorum): (bool, bool),
) -> (SimNode, u64) {
    let bias = opts.planted();
    let n = voters.len().max(1) as u64;
    let mut cfg = Config::new(id);
    cfg.election_tick = 10;
    cfg.heartbeat_tick = 2;
    cfg.pre_vote = pre_vote;
    cfg.check_quorum = check_quorum;
    cfg.max_inflight_msgs = 8;
    // One entry per append in some runs (and in planted-bug runs): followers then hold a
    // new leader's old-term entries before its own-term ones, the Figure 8 window.
    cfg.max_msg_bytes = if bias || rng.chance(0.3) { 1 } else { 4096 };
    cfg.seed = rng.next_u64();
    plant(&mut cfg, opts.bug);
    let params = NodeParams {
        sync_min: 0,
        sync_max: rng.range(1, 10),
        policy: sim_policy(rng, id, n, bias),
        chunk: if rng.chance(0.3) { 64 } else { 1 << 20 },
        torn: rng.chance(0.5),
        read_bytes_per_pass: if rng.chance(0.3) {
            rng.range(1, 60) as usize
        } else {
            0
        },
        sync_fail: if opts.node_bug == NodeBug::IgnoreSyncFailure || rng.chance(0.2) {
            rng.range(1, 6) as f64 / 100.0
        } else {
            0.0
        },
        check_commit_rule: opts.check_commit_rule,
        bug: opts.node_bug,
        // Around the clients' own timeout, so the node layer's TIMEOUT answers (the
        // server's request deadline) race the clients' retries in some runs.
        request_timeout: rng.range(CLIENT_TIMEOUT / 2, CLIENT_TIMEOUT * 3),
        // A disk that is full now and then (appends deferred, acks withheld).
        append_full: if rng.chance(0.2) {
            rng.range(1, 20) as f64 / 100.0
        } else {
            0.0
        },
        promotion: crate::node::membership::PromotionPolicy {
            max_lag: rng.range(0, 50),
            ticks: rng.range(1, 20) as u32,
        },
    };
    (
        SimNode::new(cfg, voters, params),
        TICK_MS - 2 + rng.range(0, 5),
    )
}

/// Runs one seeded schedule.
pub fn run_seed(seed: u64, opts: &SimOptions) -> SeedResult {
    let mut rng = Rng::new(seed);
    let n = opts.nodes.max(1);
    let voters: Vec<u64> = (1..=n as u64).collect();
    let pre_vote = rng.chance(0.7);
    let check_quorum = rng.chance(0.7);
    let mut nodes = Vec::new();
    let mut tick_ms = Vec::new();
    for &id in &voters {
        let (node, tick) = new_node(&mut rng, id, voters.clone(), opts, (pre_vote, check_quorum));
        nodes.push(node);
        tick_ms.push(tick);
    }
    let clients = (0..opts.clients)
        .map(|i| SimClient::new(i, n as u64, opts.keys, rng.fork()))
        .collect();
    let chaos = opts.ticks * TICK_MS;
    let quiet_len = 400 * TICK_MS;
    let mut w = World {
        opts: opts.clone(),
        rng,
        now: 0,
        seq: 0,
        queue: BTreeMap::new(),
        nodes,
        tick_ms,
        net: Net::new(NetParams {
            drop: 0.02,
            dup: 0.01,
            min_delay: 1,
            max_delay: 8,
        }),
        clients,
        history: Vec::new(),
        clock: 0,
        checker: Checker::with_voters(&voters),
        quiet: false,
        stop_at: chaos + quiet_len / 3,
        trace: Vec::new(),
        trace_hash: 0xcbf2_9ce4_8422_2325,
        events: 0,
        elections_seen: 0,
        pre_vote,
        check_quorum,
    };
    w.log(format!(
        "seed {seed}: {n} nodes, pre_vote {pre_vote}, check_quorum {check_quorum}, bug {:?}",
        opts.bug
    ));
    let mut inconclusive = false;
    let result = (|| -> Result<(), String> {
        for id in w.ids() {
            w.restart(id)?;
            let d = w.rng.range(0, TICK_MS);
            w.at(d, Event::Tick(id));
        }
        for c in 0..w.clients.len() {
            let d = w.rng.range(0, 50);
            w.at(d, Event::ClientStart(c));
        }
        let d = w.rng.range(50, 300);
        w.at(d, Event::Fault);
        w.at(chaos, Event::Quiet);
        w.at(chaos + quiet_len, Event::End);
        let mut chaos_steps = 0u64;
        while let Some(((t, _), ev)) = w.queue.pop_first() {
            w.now = t;
            w.events += 1;
            if !w.quiet {
                chaos_steps += 1;
                if chaos_steps > opts.max_steps {
                    // Step budget spent: jump to the quiet phase.
                    w.queue.retain(|_, e| !matches!(e, Event::Quiet));
                    w.step(Event::Quiet)?;
                    continue;
                }
            }
            let end = matches!(ev, Event::End);
            w.step(ev)?;
            if end {
                break;
            }
        }
        w.liveness()?;
        match linearize::check(&w.history) {
            Verdict::Ok => Ok(()),
            Verdict::Inconclusive(s) => {
                inconclusive = true;
                w.log(format!("linearizability inconclusive: {s}"));
                Ok(())
            }
            Verdict::Violation(v) => Err(format!("linearizability: {v}")),
        }
    })();
    let violation = result.err();
    if let Some(v) = &violation {
        w.log(format!("VIOLATION: {v}"));
    }
    let ops_done = w.history.iter().filter(|o| o.ret.is_some()).count() as u64;
    SeedResult {
        seed,
        violation,
        commits: w.checker.max_committed(),
        conf_changes: w.checker.conf_changes_committed(),
        elections: w.checker.elections,
        events: w.events,
        ops_done,
        ops_unknown: w.history.len() as u64 - ops_done,
        inconclusive,
        trace: w.trace,
        trace_hash: w.trace_hash,
    }
}
