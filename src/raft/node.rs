//! `RawNode`: state, construction, tick, the `step` dispatcher with Raft's term rules, and
//! the `Ready` output batch. Role-specific handlers live in election.rs, replication.rs and
//! extras.rs.

use super::log::RaftLog;
use super::membership::{votes_in, Membership};
use super::read_only::ReadOnly;
use super::tracker::{ProgressMap, Votes};
use super::{
    Config, Entry, EntryType, HardState, InitialState, LogError, LogStore, Message, ReadState,
    Ready, Role, SnapshotMeta, Status,
};
use crate::pb::raftpb::message::Body;
use crate::pb::raftpb::{HeartbeatResponse, ReadIndex, Removed, RequestVoteResponse};
use crate::rng::Rng;
use std::collections::VecDeque;

/// A Raft node. Generic over the log store it reads.
pub struct RawNode<S: LogStore> {
    pub(super) cfg: Config,
    pub(super) log: RaftLog<S>,
    pub(super) rng: Rng,

    // Persistent state (emitted in `Ready::hard_state` whenever it changes).
    pub(super) term: u64,
    pub(super) vote: u64,
    pub(super) commit: u64,

    pub(super) role: Role,
    /// Known leader of `term` (0 = none).
    pub(super) leader: u64,
    /// The configuration in force and the uncommitted configuration entries (membership.rs).
    pub(super) members: Membership,
    /// The configuration in force changed since the last `Ready` (it carries the new one).
    pub(super) conf_changed: bool,
    /// Index of the configuration that removed this node, once a member told us (`Removed`).
    pub(super) removed_at: Option<u64>,
    /// Highest index known durable in the local store and matching the current log.
    pub(super) persisted: u64,
    /// Highest index the state machine applied.
    pub(super) applied: u64,
    /// Highest index handed out in `Ready::committed`.
    pub(super) handed: u64,

    /// Logical clock (ticks since construction).
    pub(super) now: u64,
    pub(super) election_elapsed: u32,
    pub(super) heartbeat_elapsed: u32,
    pub(super) randomized_timeout: u32,
    /// With lease reads on: a freshly started node refuses votes for one election timeout,
    /// because it forgot whether it promised a leader not to (its lease).
    pub(super) quiet_boot: bool,

    /// Votes (or pre-votes) received in the current campaign, self included.
    pub(super) votes: Votes,
    /// Leader only: progress of every other member.
    pub(super) prs: ProgressMap,
    pub(super) read_only: ReadOnly,
    /// Leader only: target of a pending leadership transfer (0 = none).
    pub(super) transferee: u64,
    /// Leader only: lease acks for heartbeats sent before this tick do not count.
    pub(super) lease_fence: u64,
    /// Leader only: (index, payload bytes) of uncommitted proposals, for max_uncommitted_bytes.
    pub(super) uncommitted: VecDeque<(u64, u64)>,
    pub(super) uncommitted_bytes: u64,
    /// Leader only: new entries to broadcast at the next `ready()` (batches proposals).
    pub(super) pending_bcast: bool,
    /// Leader only: commit advanced; tell followers at the next `ready()`.
    pub(super) pending_commit_bcast: bool,
    /// Leader only: a new ReadIndex round needs its tagged heartbeat.
    pub(super) pending_read_hb: bool,
    /// Tag of the read heartbeat round waiting for its quorum (0: none). While one is out,
    /// reads that arrive wait for the next round, started once it is confirmed (or by the
    /// periodic heartbeat): under load a round confirms a whole batch instead of each loop
    /// pass's few reads costing a heartbeat to every peer and their answers.
    pub(super) read_hb_in_flight: u64,

    /// Last hard state handed out.
    pub(super) prev_hs: HardState,
    // Outputs accumulated for the next Ready.
    pub(super) msgs: Vec<Message>,
    pub(super) reads: Vec<ReadState>,
    pub(super) failed_reads: Vec<u64>,
    pub(super) snapshot_sends: Vec<u64>,
    pub(super) snapshot_msgs: Vec<Message>,
    /// A snapshot taken by `restore_snapshot`, for the next `Ready::snapshot`.
    pub(super) pending_snapshot: Option<SnapshotMeta>,
}

impl<S: LogStore> RawNode<S> {
    /// Builds a node from durable state. It starts as a follower and stays silent until its
    /// election timer fires. Errors on an invalid config (id 0, heartbeat >= election, lease
    /// read without check quorum).
    pub fn new(cfg: Config, store: S, init: InitialState) -> Result<RawNode<S>, String> {
        cfg.validate()?;
        let log = RaftLog::new(store);
        let (snap_index, _) = log.snapshot_index_term();
        let last = log.last_index();
        let hs = init.hard_state;
        if hs.commit > last {
            log::warn!(
                "node {}: persisted commit {} above last log index {last}; capping",
                cfg.id,
                hs.commit
            );
        }
        let applied = init.applied.max(snap_index).min(last);
        let commit = hs.commit.min(last).max(applied);
        let mut rng = Rng::new(cfg.seed);
        let randomized_timeout =
            rng.range(cfg.election_tick as u64, 2 * cfg.election_tick as u64) as u32;
        let quiet_boot = cfg.lease_read;
        let members = Membership::new(snap_index, init.conf);
        let mut node = RawNode {
            prev_hs: HardState {
                term: hs.term,
                vote: hs.vote,
                commit,
            },
            term: hs.term,
            vote: hs.vote,
            commit,
            role: Role::Follower,
            leader: 0,
            members,
            conf_changed: false,
            removed_at: None,
            persisted: last,
            applied,
            handed: applied,
            now: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout,
            quiet_boot,
            votes: Votes::default(),
            prs: ProgressMap::default(),
            read_only: ReadOnly::default(),
            transferee: 0,
            lease_fence: 0,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            pending_bcast: false,
            pending_commit_bcast: false,
            pending_read_hb: false,
            read_hb_in_flight: 0,
            msgs: Vec::new(),
            reads: Vec::new(),
            failed_reads: Vec::new(),
            snapshot_sends: Vec::new(),
            snapshot_msgs: Vec::new(),
            pending_snapshot: None,
            cfg,
            log,
            rng,
        };
        node.load_log_configurations()?;
        Ok(node)
    }

    /// Configurations take effect when appended, so those in the log above the snapshot (or
    /// the bootstrap configuration) are in force after a restart too: read them back. This
    /// reads the log once more at startup (the shell's replay reads the committed part too).
    fn load_log_configurations(&mut self) -> Result<(), String> {
        let (mut next, last) = (self.log.first_index(), self.log.last_index());
        while next <= last {
            let ents = self
                .log
                .entries(next, last + 1, 8 << 20)
                .map_err(|e| format!("reading configurations from the log at {next}: {e}"))?;
            let Some(end) = ents.last().map(|e| e.index) else {
                break;
            };
            let confs: Vec<Entry> = ents
                .into_iter()
                .filter(|e| e.entry_type == EntryType::EntryConfChange as i32)
                .collect();
            for e in &confs {
                self.members.on_append(std::slice::from_ref(e));
            }
            next = end + 1;
        }
        self.members.on_commit(self.commit);
        Ok(())
    }

    // ----- small helpers -----

    pub(super) fn id(&self) -> u64 {
        self.cfg.id
    }

    /// True if `id` votes in the configuration in force (either half while joint).
    pub(super) fn is_voter(&self, id: u64) -> bool {
        votes_in(self.members.current(), id)
    }

    pub(super) fn send(&mut self, to: u64, body: Body) {
        let term = self.term;
        self.send_at(to, term, body);
    }

    pub(super) fn send_at(&mut self, to: u64, term: u64, body: Body) {
        self.msgs.push(Message {
            from: self.cfg.id,
            to,
            term,
            body: Some(body),
        });
    }

    pub(super) fn reset_randomized_timeout(&mut self) {
        let t = self.cfg.election_tick as u64;
        self.randomized_timeout = self.rng.range(t, 2 * t) as u32;
    }

    /// Common part of every role change: adopt `term` (clearing the vote if it is new), forget
    /// the leader, restart the timers, and drop all leader-only state.
    pub(super) fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = 0;
        }
        self.leader = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.transferee = 0;
        // A follower's reads sent to (or queued for) the leader of the old term can no longer
        // be answered by it: fail them now rather than at their timeout.
        let failed = self.read_only.fail_remote();
        self.failed_reads.extend(failed);
        if self.role == Role::Leader {
            let failed = self.read_only.fail_all();
            self.failed_reads.extend(failed);
            self.prs.clear();
            self.uncommitted.clear();
            self.uncommitted_bytes = 0;
            self.pending_bcast = false;
            self.pending_commit_bcast = false;
            self.pending_read_hb = false;
            self.read_hb_in_flight = 0;
        }
    }

    pub(super) fn become_follower(&mut self, term: u64, leader: u64) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    /// The leader has committed an entry of its own term (reads, leases and membership changes
    /// need this). Public for the simulator's checker, which judges each configuration change.
    pub fn committed_own_term(&self) -> bool {
        self.log
            .term(self.commit)
            .map(|t| t == self.term)
            .unwrap_or(false)
    }

    // ----- inputs -----

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.tick_after_stall(1);
    }

    /// Advances logical time by `elapsed` ticks that passed while this node was not running
    /// (a pass of its own loop that outlasted a tick: a slow fsync, CPU starvation, SIGSTOP).
    /// The clock (`now`: leases, read deadlines) moves by all of them; the election and
    /// heartbeat timers by one. A node's own stall is no evidence that its peers went silent:
    /// what they sent meanwhile is still unread in its sockets. Counting the stall as silence
    /// made every node of a cluster whose shared disk stalled one 645 ms Ready (seen in CI,
    /// election timeout 500-1000 ms) campaign, and the leader step down, the moment the stall
    /// ended. Go's tickers drop the ticks a busy receiver missed, which gives etcd this rule;
    /// here it is explicit, because the lease must still see every tick. Slower timers are
    /// safe: a follower that counts fewer ticks refuses votes longer (`in_lease`), which only
    /// strengthens the lease its leader relies on, and a leader's lease is judged by `now`.
    /// `elapsed == 0` is a no-op.
    pub fn tick_after_stall(&mut self, elapsed: u64) {
        if elapsed == 0 {
            return;
        }
        self.now += elapsed;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        // Reads whose ReadIndex (or its answer) was lost, or that the leader could not confirm.
        let expired = self.read_only.expire_remote(self.now);
        self.failed_reads.extend(expired);
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.cfg.election_tick {
            self.quiet_boot = false;
        }
        if self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            self.reset_randomized_timeout();
            if self.is_voter(self.id()) && self.removed_at.is_none() {
                self.campaign(false);
            } else if self.removed_at.is_none()
                && self.members.current().removed.contains(&self.id())
            {
                self.ask_if_removed();
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let me = self.id();
                if !self.prs.quorum_recently_active(self.quorum(), me) {
                    log::info!(
                        "node {} steps down: no quorum heard in term {}",
                        me,
                        self.term
                    );
                    self.become_follower(self.term, 0);
                    return;
                }
                for pr in self.prs.values_mut() {
                    pr.recent_active = false;
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.transferee = 0;
            if !self.is_voter(self.id()) && !self.members.has_uncommitted(self.commit) {
                // Removed or demoted, and the handoff did not finish yet: try again.
                self.hand_off_leadership();
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            let seq = self.read_only.last_seq();
            if seq != 0 {
                // This round was sent after every pending read arrived: it confirms them all
                // (and retries a lost read round).
                self.read_hb_in_flight = seq;
                self.pending_read_hb = false;
            }
            self.bcast_heartbeat(seq);
        }
    }

    /// Feeds a message from a peer. Messages from unknown nodes or with stale terms are handled
    /// as Raft says (ignored or answered), never a panic.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id() || m.from == self.id() || m.from == 0 {
            return;
        }
        let Some(body) = m.body else { return };
        let (from, mterm) = (m.from, m.term);
        if let Body::Removed(r) = &body {
            self.handle_removed(from, r.conf_index);
            return;
        }
        if self.is_removed_peer(from) && !(mterm == self.term && self.leader == from) {
            // A node whose removal is committed (it was down, or partitioned, when that
            // happened): nothing it says counts; tell it so it stops. Only a committed removal
            // counts here: an uncommitted one may be truncated away by a new leader, and that
            // leader may be the node it removes. The exception is a removed leader in its own
            // term: until a successor takes over it still leads (it hands leadership over with
            // TimeoutNow, `hand_off_leadership`).
            let conf_index = self.members.committed().0;
            self.send(from, Body::Removed(Removed { conf_index }));
            return;
        }
        if mterm > u64::MAX / 2 {
            // No real cluster gets here; refusing keeps term + 1 arithmetic safe.
            log::warn!(
                "node {}: dropping message from {from} with absurd term {mterm}",
                self.id()
            );
            return;
        }

        // Term rules (Raft §5.1), with the PreVote / CheckQuorum exceptions.
        if mterm > self.term {
            match &body {
                Body::RequestVote(rv) => {
                    // A candidate outside our configuration is heard only if its log is at
                    // least as up to date as ours: it may hold a configuration we lack (a
                    // promoted learner our stale configuration does not list). Ignoring all
                    // of them left a cluster without a leader for good (simulator seed 71901,
                    // 3 nodes, --membership: the newest logs were such a learner's and a
                    // leader's that had appended its own removal). One with an older log
                    // cannot win and cannot move our term (hashicorp/raft#526); a node whose
                    // removal is committed was stopped above (`is_removed_peer`).
                    let stale = !self.log.is_up_to_date(rv.last_log_index, rv.last_log_term);
                    if !self.is_voter(from) && stale {
                        return;
                    }
                    if self.in_lease() && !rv.transfer {
                        // We heard from a leader recently: ignore a disruptive candidate (Q2).
                        return;
                    }
                    if !rv.pre_vote {
                        // Adopt the term but keep the election timer running: only a granted
                        // vote restarts it (Raft Figure 2; the grant below does). Restarting it
                        // for every request, granted or not, let a candidate with a stale log
                        // and a faster clock keep every other voter from ever timing out while
                        // PreVote is off (simulator seed 5266, 5 nodes: no leader for 4 s).
                        let elapsed = self.election_elapsed;
                        self.become_follower(mterm, 0);
                        self.election_elapsed = elapsed;
                    }
                }
                Body::RequestVoteResponse(r) if r.pre_vote && r.granted => {
                    // Granted pre-votes carry the term we asked for; nothing to adopt.
                }
                Body::AppendEntries(_)
                | Body::Heartbeat(_)
                | Body::InstallSnapshot(_)
                | Body::TimeoutNow(_) => self.become_follower(mterm, from),
                _ => self.become_follower(mterm, 0),
            }
        } else if mterm < self.term {
            match &body {
                Body::AppendEntries(_) | Body::Heartbeat(_) | Body::InstallSnapshot(_) => {
                    // A deposed leader: tell it our term so it steps down (Q3).
                    self.send(
                        from,
                        Body::HeartbeatResponse(HeartbeatResponse {
                            context: 0,
                            lease_tick: 0,
                            no_space: false,
                        }),
                    );
                }
                Body::RequestVote(rv) => {
                    // Refuse explicitly so a lagging (pre-)candidate learns the term (V5).
                    self.send(
                        from,
                        Body::RequestVoteResponse(RequestVoteResponse {
                            pre_vote: rv.pre_vote,
                            granted: false,
                        }),
                    );
                }
                _ => {}
            }
            return;
        }

        match body {
            Body::RequestVote(rv) => self.handle_vote_request(from, mterm, rv),
            Body::RequestVoteResponse(r) => self.handle_vote_response(from, mterm, r),
            Body::AppendEntries(ae) => {
                if self.accept_leader(from) {
                    self.handle_append(from, ae);
                }
            }
            Body::Heartbeat(hb) => {
                if self.accept_leader(from) {
                    self.handle_heartbeat(from, hb);
                }
            }
            Body::InstallSnapshot(is) => {
                if self.accept_leader(from) {
                    self.snapshot_msgs.push(Message {
                        from,
                        to: self.id(),
                        term: mterm,
                        body: Some(Body::InstallSnapshot(is)),
                    });
                }
            }
            Body::AppendEntriesResponse(r) => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, r);
                }
            }
            Body::HeartbeatResponse(r) => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, r);
                }
            }
            Body::InstallSnapshotResponse(r) => {
                if self.role == Role::Leader {
                    self.handle_snapshot_response(from, mterm, r);
                }
            }
            Body::TimeoutNow(_) => {
                if self.role != Role::Leader && self.leader == from {
                    self.handle_timeout_now();
                }
            }
            Body::ReadIndex(r) => {
                if self.role == Role::Leader {
                    self.handle_read_index(from, r.ctxs);
                }
            }
            Body::ReadIndexResponse(r) => self.handle_read_index_response(from, r),
            Body::Removed(_) => {}
        }
    }

    /// Our own configuration lists us as removed, but no member has said so: a removed
    /// follower (the leader stops sending to it once the removal is appended) or a leader
    /// that removed itself and handed off. Neither campaigns, so without this it would sit
    /// forever. Each voter answers `Removed` once the removal is committed in its log; the
    /// message is a HeartbeatResponse, which a voter without the committed removal ignores.
    fn ask_if_removed(&mut self) {
        let c = self.members.current();
        let mut voters: Vec<u64> = c.voters.iter().chain(&c.voters_outgoing).copied().collect();
        voters.sort_unstable();
        voters.dedup();
        let me = self.id();
        for v in voters.into_iter().filter(|&v| v != me) {
            self.send(
                v,
                Body::HeartbeatResponse(HeartbeatResponse {
                    context: 0,
                    lease_tick: 0,
                    no_space: false,
                }),
            );
        }
    }

    /// `id`'s removal is committed and it is no member of the configuration in force.
    fn is_removed_peer(&self, id: u64) -> bool {
        self.members.committed().1.removed.contains(&id)
            && !super::membership::is_member(self.members.current(), id)
    }

    /// A member says the cluster removed us. Believed only from a voter of our configuration
    /// (peers are authenticated below the core); we stop taking part for good.
    fn handle_removed(&mut self, from: u64, conf_index: u64) {
        if self.removed_at.is_some() || !self.is_voter(from) {
            return;
        }
        log::warn!(
            "node {}: node {from} says this node was removed from the cluster (configuration {conf_index})",
            self.id()
        );
        self.removed_at = Some(conf_index);
        let term = self.term;
        self.become_follower(term, 0);
    }

    /// A leader-only message at our term from `from`: follow it. False if we are the leader
    /// ourselves (two leaders in a term cannot happen; ignore defensively).
    fn accept_leader(&mut self, from: u64) -> bool {
        if self.role == Role::Leader {
            log::error!(
                "node {}: leader message from {from} in own leadership term {}",
                self.id(),
                self.term
            );
            return false;
        }
        if self.role != Role::Follower {
            self.become_follower(self.term, from);
        }
        self.leader = from;
        self.election_elapsed = 0;
        true
    }

    /// A follower that heard from its leader within the election timeout (CheckQuorum on)
    /// refuses to be disrupted by vote requests.
    pub(super) fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.leader != 0 || self.quiet_boot)
            && self.election_elapsed < self.cfg.election_tick
    }

    /// Everything up to (index, term) handed out in `Ready::entries` is durable. A stale ack
    /// (the entry at `index` now has another term) is ignored.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        if !self.log.stable_to(index, term) {
            return;
        }
        if index > self.persisted {
            self.persisted = index;
            if self.role == Role::Leader && self.maybe_commit() {
                self.pending_commit_bcast = true;
            }
        }
    }

    /// The state machine applied everything up to `index`.
    pub fn on_applied(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    // ----- outputs -----

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }

    fn committed_available(&self) -> bool {
        self.handed < self.commit.min(self.log.last_index())
    }

    /// True if `ready()` would return something.
    pub fn has_ready(&self) -> bool {
        self.hard_state() != self.prev_hs
            || self.log.has_unemitted()
            || !self.msgs.is_empty()
            || self.committed_available()
            || !self.reads.is_empty()
            || !self.failed_reads.is_empty()
            || !self.snapshot_sends.is_empty()
            || !self.snapshot_msgs.is_empty()
            || self.pending_snapshot.is_some()
            || self.conf_changed
            || !self.read_only.queued.is_empty()
            || (self.role == Role::Leader
                && (self.pending_bcast
                    || self.pending_commit_bcast
                    || (self.pending_read_hb && self.read_hb_in_flight == 0)))
    }

    /// Drains the outputs accumulated since the last call.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.pending_bcast || self.pending_commit_bcast {
                let if_empty = self.pending_commit_bcast;
                self.pending_bcast = false;
                self.pending_commit_bcast = false;
                self.bcast_append(if_empty);
            }
            if self.pending_read_hb && self.read_hb_in_flight == 0 {
                self.pending_read_hb = false;
                let seq = self.read_only.last_seq();
                self.read_hb_in_flight = seq;
                self.bcast_heartbeat(seq);
            }
        }
        if !self.read_only.queued.is_empty() {
            // Every read queued since the last Ready goes to the leader in one message.
            let timeout =
                super::read_only::REMOTE_READ_TIMEOUT_ELECTIONS * self.cfg.election_tick as u64;
            let ctxs = self.read_only.send_queued(self.now + timeout);
            let leader = self.leader;
            self.send(leader, Body::ReadIndex(ReadIndex { ctxs }));
        }
        self.members.on_commit(self.commit);
        let conf = std::mem::take(&mut self.conf_changed).then(|| self.members.current().clone());
        let mut rd = Ready {
            snapshot: self.pending_snapshot.take(),
            conf,
            ..Ready::default()
        };
        let hs = self.hard_state();
        let keeps_term_vote = hs.term == self.prev_hs.term && hs.vote == self.prev_hs.vote;
        if hs != self.prev_hs {
            rd.hard_state = Some(hs);
            self.prev_hs = hs;
        }
        rd.entries = self.log.take_unemitted();
        // A commit-only hard state change needs no sync (commit is recomputed after a crash).
        rd.must_sync = !keeps_term_vote || !rd.entries.is_empty();
        let (mut before, after): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.msgs)
            .into_iter()
            .partition(|m| keeps_term_vote && self.may_leave_before_sync(m));
        rd.early_messages = before.len();
        before.extend(after);
        rd.messages = before;
        if self.committed_available() {
            let hi = self.commit.min(self.log.last_index());
            let max = self.cfg.max_msg_bytes.max(1 << 20);
            match self.log.entries(self.handed + 1, hi + 1, max) {
                Ok(ents) => {
                    if let Some(last) = ents.last() {
                        self.handed = last.index;
                    }
                    rd.committed = ents;
                }
                Err(e) => {
                    log::error!(
                        "node {}: cannot read committed entries {}..={hi}: {e}",
                        self.id(),
                        self.handed + 1
                    );
                    if e == LogError::Compacted {
                        // The shell compacted past what it was handed (it must have installed
                        // a snapshot covering it): continue after the snapshot rather than
                        // reporting a Ready forever.
                        self.handed = self.handed.max(self.log.snapshot_index_term().0);
                    }
                }
            }
        }
        rd.reads = std::mem::take(&mut self.reads);
        rd.failed_reads = std::mem::take(&mut self.failed_reads);
        rd.snapshot_sends = std::mem::take(&mut self.snapshot_sends);
        rd.snapshot_msgs = std::mem::take(&mut self.snapshot_msgs);
        rd
    }

    /// Messages that promise nothing about this node's own disk, so they may leave before
    /// the Ready's sync (only asked when the persisted term and vote are unchanged, so no
    /// message carries a term that is not yet durable):
    /// - a leader's replication messages (AppendEntries, Heartbeat, InstallSnapshot,
    ///   TimeoutNow of the current term): it counts its entries towards commit only after
    ///   `on_persisted` (Raft dissertation §10.2.1), so the leader's and the followers' syncs
    ///   overlap;
    /// - follower reads: a follower's `ReadIndex` only asks, and a leader's
    ///   `ReadIndexResponse` reports a commit index, which already counts this leader's
    ///   entries only once durable. Neither waits behind a sync of appended entries.
    ///
    /// Everything else (vote grants, append and heartbeat answers, ...) promises state that
    /// must be durable first.
    fn may_leave_before_sync(&self, m: &Message) -> bool {
        if m.term != self.term {
            return false;
        }
        match m.body {
            Some(
                Body::AppendEntries(_)
                | Body::Heartbeat(_)
                | Body::InstallSnapshot(_)
                | Body::TimeoutNow(_),
            ) => self.role == Role::Leader,
            Some(Body::ReadIndex(_)) => self.role == Role::Follower,
            Some(Body::ReadIndexResponse(_)) => self.role == Role::Leader,
            _ => false,
        }
    }

    /// Current status.
    pub fn status(&self) -> Status {
        Status {
            id: self.id(),
            role: self.role,
            term: self.term,
            leader: (self.leader != 0).then_some(self.leader),
            commit: self.commit,
            applied: self.applied,
            conf: self.members.current().clone(),
            progress: self
                .prs
                .iter()
                .map(|(&id, p)| (id, p.matched, p.next))
                .collect(),
        }
    }

    /// Current role (cheaper than [`status`](Self::status)).
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term (cheaper than [`status`](Self::status): no allocation).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The leader this node knows of in its term (cheaper than [`status`](Self::status)).
    pub fn leader(&self) -> Option<u64> {
        (self.leader != 0).then_some(self.leader)
    }

    /// The log store.
    pub fn store(&self) -> &S {
        &self.log.store
    }

    /// The log store, for the shell to append, sync and compact.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.log.store
    }
}
