//! One replica's state between the core and the shell: the Raft core, the KV state machine,
//! the pending client requests, and what happens to them when entries apply, reads are
//! confirmed, a snapshot is installed or leadership changes. The server and the simulator
//! both hold one and drive it the same way, so the simulator checks the request handling
//! that ships.
//!
//! Nothing here touches a socket, a file or a clock: the shell passes the time (milliseconds
//! on its own clock) with each request and to [`Replica::expire`], and takes the answers
//! from [`Replica::requests`] (see `requests.rs`).

use super::membership::{self as members, Promoter, PromotionPolicy};
use super::requests::{ReadOp, ReplyAddr, Requests};
use crate::kv::{error_result, ApplyResult, KvStore};
use crate::pb::kvpb::{self, ErrorCode};
use crate::raft::{
    ConfState, Entry, EntryType, LogStore, Message, ProposeError, RawNode, ReadState, Role,
    SnapshotMeta,
};
use crate::snapshot::LogStats;
use std::collections::HashMap;

/// What a replica needs to know beyond its core.
#[derive(Debug, Clone, Default)]
pub struct ReplicaConfig {
    /// Milliseconds after which a request not yet answered gets TIMEOUT.
    pub request_timeout_ms: u64,
    /// Serve LEASE reads from the leader lease (else they take the ReadIndex path).
    pub lease_read: bool,
    /// A follower serves LINEARIZABLE and LEASE reads itself through follower ReadIndex (it
    /// asks the leader for a read index and serves from its own state once applied up to it);
    /// off: it answers them NOT_LEADER (the client redirects to the leader).
    pub follower_reads: bool,
    /// Client addresses of the members, for NOT_LEADER redirects.
    pub client_addrs: HashMap<u64, String>,
    /// Keys and values per scan page (`limits::max_scan_page`: the page and its framing fit
    /// the response frame); 0 = unbounded.
    pub max_scan_bytes: usize,
    /// Answers to confirmed reads made per call (one shell pass), in bytes; 0 = unbounded.
    /// The rest wait for the next pass, so many pipelined large reads cannot make one pass
    /// long enough to cost a leader its quorum.
    pub max_read_bytes_per_pass: usize,
    /// When a learner marked `promote` is made a voter.
    pub promotion: PromotionPolicy,
    /// A client connection's queued output bound (`--client-output-limit`; 0 = none): while
    /// a connection is at it, its confirmed reads stay queued ([`Replica::client_output`]).
    pub max_client_output: usize,
}

/// A leadership change seen by [`Replica::check_leadership`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadershipChange {
    /// `Some(term)` while this node leads in `term`.
    pub leading: Option<u64>,
    /// Whether this node stopped or started leading (outbound snapshot streams are dropped).
    pub role_changed: bool,
}

/// A received snapshot the core took, waiting for the Ready that installs it.
pub struct StagedSnapshot {
    pub meta: SnapshotMeta,
    pub kv: KvStore,
    /// The `done` answer for the leader, sent once it is installed.
    pub reply: Message,
}

/// The core, the state machine and the requests of one node.
pub struct Replica<L: LogStore, A> {
    id: u64,
    core: RawNode<L>,
    kv: KvStore,
    /// Index of the last entry applied (configuration entries included; the KV store's own
    /// applied index counts only the entries it executed).
    applied: u64,
    /// Command bytes applied over this replica's life (the snapshot policy's byte count).
    applied_bytes: u64,
    requests: Requests<A>,
    cfg: ReplicaConfig,
    /// Some(term) while this node is leader in `term`.
    leader_term: Option<u64>,
    last_leader: Option<u64>,
    staged: Option<StagedSnapshot>,
    /// Confirmed, applied reads wait for the next pass (the answer budget ran out).
    more_reads: bool,
    /// (index, configuration) of the newest configuration entry applied (or snapshot):
    /// what a snapshot of the state machine records. The core's configuration in force may
    /// be newer (it takes effect when appended).
    applied_conf: (u64, ConfState),
    promoter: Promoter,
}

/// Serves a read from the state machine; a scan page holds at most `max_scan_bytes` of keys
/// and values.
fn serve(kv: &KvStore, op: &ReadOp, max_scan_bytes: usize) -> ApplyResult {
    match op {
        ReadOp::Get(g) => ApplyResult::Get(kv.get(&g.key)),
        ReadOp::Scan(s) => ApplyResult::Scan(kv.scan_page(s, max_scan_bytes)),
        ReadOp::SnapshotPoint => ApplyResult::SnapshotBegin(kvpb::SnapshotBeginResponse {
            read_index: kv.applied(),
            ..Default::default()
        }),
        ReadOp::MultiGet(m) => ApplyResult::MultiGet(kv.multi_get(&m.keys)),
    }
}

impl<L: LogStore, A: ReplyAddr> Replica<L, A> {
    /// A replica over `core`, whose state machine `kv` has applied through `applied`.
    /// `applied_conf`: the configuration of the newest snapshot or configuration entry at or
    /// below `applied` (the shell's recovery replayed the entries up to it).
    pub fn new(
        core: RawNode<L>,
        kv: KvStore,
        applied: u64,
        applied_conf: (u64, ConfState),
        cfg: ReplicaConfig,
    ) -> Self {
        let mut requests = Requests::new(cfg.request_timeout_ms);
        requests.set_max_output(cfg.max_client_output);
        Replica {
            applied_conf,
            promoter: Promoter::default(),
            id: core.status().id,
            core,
            kv,
            applied,
            applied_bytes: 0,
            requests,
            cfg,
            leader_term: None,
            last_leader: None,
            staged: None,
            more_reads: false,
        }
    }

    pub fn core(&self) -> &RawNode<L> {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut RawNode<L> {
        &mut self.core
    }

    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// Index of the last entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Command bytes applied over this replica's life.
    pub fn applied_bytes(&self) -> u64 {
        self.applied_bytes
    }

    /// The pending requests (the shell takes their answers and expires their deadlines).
    pub fn requests(&mut self) -> &mut Requests<A> {
        &mut self.requests
    }

    /// Answers TIMEOUT to requests whose deadline passed (`now` on the shell's clock).
    pub fn expire(&mut self, now: u64) {
        self.requests.expire(now);
    }

    /// Serves confirmed reads that are applied, within the per-pass answer budget; notes
    /// whether more wait ([`Replica::has_more_reads`]).
    fn serve_reads(&mut self) {
        let (kv, page) = (&self.kv, self.scan_budget());
        self.more_reads =
            self.requests
                .serve_confirmed(self.applied, self.cfg.max_read_bytes_per_pass, |op| {
                    serve(kv, op, page)
                });
    }

    /// The shell's count of a client connection's queued output bytes (after queueing or
    /// flushing; 0 when it closed): its reads wait while it is at the bound, and are served
    /// again (from the next pass) once it drained below it.
    pub fn client_output(&mut self, conn: u64, bytes: usize) {
        if self.requests.set_output(conn, bytes) {
            self.more_reads = true;
        }
    }

    /// True if confirmed, applied reads wait because a pass's answer budget ran out: the shell
    /// calls [`Replica::serve_more_reads`] in its next pass (and does not sleep before it).
    pub fn has_more_reads(&self) -> bool {
        self.more_reads
    }

    /// Serves the next budget of confirmed reads (see [`Replica::has_more_reads`]).
    pub fn serve_more_reads(&mut self) {
        self.serve_reads();
    }

    /// Bytes of keys and values per scan page.
    fn scan_budget(&self) -> usize {
        match self.cfg.max_scan_bytes {
            0 => usize::MAX,
            n => n,
        }
    }

    /// The earliest deadline of a pending request (milliseconds on the shell's clock).
    pub fn next_deadline(&self) -> Option<u64> {
        self.requests.next_deadline()
    }

    /// Client address of member `id`: from the configuration (members added at run time),
    /// else from the shell's bootstrap list.
    pub fn client_addr(&self, id: u64) -> String {
        let c = members::context_of(self.core.conf_state().1, id);
        if !c.client_addr.is_empty() {
            return c.client_addr;
        }
        self.cfg.client_addrs.get(&id).cloned().unwrap_or_default()
    }

    /// The NOT_LEADER / UNAVAILABLE error for a refused proposal or read.
    pub fn refusal(&self, e: ProposeError) -> ApplyResult {
        match e {
            ProposeError::NotLeader { leader } => {
                let leader_id = leader.filter(|&l| l != self.id).unwrap_or(0);
                ApplyResult::Error(kvpb::Error {
                    code: ErrorCode::NotLeader as i32,
                    message: match leader_id {
                        0 => "not the leader; leader unknown".into(),
                        l => format!("not the leader; try node {l}"),
                    },
                    leader_id,
                    leader_addr: self.client_addr(leader_id),
                })
            }
            ProposeError::TransferInProgress => error_result(
                ErrorCode::Unavailable,
                "leadership transfer in progress".into(),
            ),
            ProposeError::NoLease => error_result(ErrorCode::Unavailable, "no leader lease".into()),
            ProposeError::Overloaded => error_result(
                ErrorCode::Unavailable,
                "too many uncommitted writes; retry later".into(),
            ),
        }
    }

    /// Proposes raising or clearing the NO_SPACE alarm (a `kvpb::Alarm` command; nobody waits
    /// for its answer). Returns its log index.
    pub fn propose_alarm(&mut self, raise: bool) -> Result<u64, ProposeError> {
        let cmd = kvpb::Command {
            op: Some(kvpb::command::Op::Alarm(kvpb::Alarm {
                raise,
                node_id: if raise { self.id } else { 0 },
            })),
            ..Default::default()
        };
        let index = self.core.propose(crate::kv::encode_command(&cmd))?;
        log::warn!(
            "node {} proposed {} the NO_SPACE alarm at index {index}",
            self.id,
            if raise { "raising" } else { "clearing" }
        );
        Ok(index)
    }

    /// Proposes a write for `to`, arrived at `now`. Returns its log index if the core took it
    /// (it is answered when it applies); a refusal is answered at once. While the NO_SPACE
    /// alarm is raised, a write that adds data is refused up front (every replica would refuse
    /// it at apply time anyway: `KvStore::apply`).
    pub fn write(&mut self, to: A, cmd: &kvpb::Command, now: u64) -> Option<u64> {
        if let Some(by) = self.kv.alarm() {
            if crate::kv::grows_state(cmd.op.as_ref()) {
                self.requests.answer(to, crate::kv::no_space_result(by));
                return None;
            }
        }
        match self.core.propose(crate::kv::encode_command(cmd)) {
            Ok(index) => {
                let term = self.core.term();
                self.requests.add_write(index, term, to, now);
                Some(index)
            }
            Err(e) => {
                let r = self.refusal(e);
                self.requests.answer(to, r);
                None
            }
        }
    }

    /// Proposes a membership change for `to`, arrived at `now`: answered with the index of
    /// its configuration entry once that applies; a refusal is answered at once.
    pub fn change_members(&mut self, to: A, req: &kvpb::MemberChange, now: u64) -> Option<u64> {
        let ops = match members::change_ops(self.core.conf_state().1, req) {
            Ok(ops) => ops,
            Err(why) => {
                self.requests
                    .answer(to, error_result(ErrorCode::BadRequest, why));
                return None;
            }
        };
        let req = members::change_request(ops, req.expected_conf_index);
        match self.core.propose_conf_change(&req) {
            Ok(index) => {
                let term = self.core.term();
                self.requests.add_write(index, term, to, now);
                Some(index)
            }
            Err(e) => {
                let r = members::change_refusal(e, |l| self.client_addr(l));
                self.requests.answer(to, r);
                None
            }
        }
    }

    /// The configuration as `member list` shows it: answered by the leader, whose view of
    /// each member's progress it includes (a follower redirects).
    pub fn member_list(&self) -> ApplyResult {
        if self.core.role() != Role::Leader {
            return self.refusal(ProposeError::NotLeader {
                leader: self.core.leader(),
            });
        }
        ApplyResult::MemberList(members::member_list(&self.core, self.cfg.promotion))
    }

    /// Hands leadership to `to` (0 = the most up-to-date other voter); answered at once
    /// with the target (the client watches the leader change).
    pub fn transfer_leader(&mut self, to: u64) -> ApplyResult {
        if self.core.role() != Role::Leader {
            return self.refusal(ProposeError::NotLeader {
                leader: self.core.leader(),
            });
        }
        let target = match to {
            0 => members::transfer_target(&self.core),
            id => Some(id),
        };
        let Some(target) = target.filter(|&t| t != self.id) else {
            return error_result(
                ErrorCode::BadRequest,
                "no other voter to hand leadership to".into(),
            );
        };
        if !self.core.conf_state().1.voters.contains(&target) {
            return error_result(
                ErrorCode::BadRequest,
                format!("node {target} is not a voter"),
            );
        }
        self.core.transfer_leader(target);
        ApplyResult::LeaderTransfer(kvpb::LeaderTransferResponse { to: target })
    }

    /// The Raft ticks owed since the last call: `elapsed` is 1 on time, more after a stall of
    /// this node (see `RawNode::tick_after_stall`: the clock sees them all, the timers one).
    /// Both shells call this, the server after each poll and the simulator after a sync
    /// that held back its ticks.
    pub fn tick(&mut self, elapsed: u64) {
        if elapsed == 0 {
            return;
        }
        self.core.tick_after_stall(elapsed);
        self.tick_membership();
    }

    /// Once per tick (after the core's): the leader promotes a learner that has been caught
    /// up long enough (counted in timer ticks, so a stall delays a promotion, never hurries
    /// it). A refused promotion (another change in flight) is retried on a later tick.
    fn tick_membership(&mut self) {
        let Some(id) = self.promoter.tick(&self.core, self.cfg.promotion) else {
            return;
        };
        let req = kvpb::MemberChange {
            ops: vec![kvpb::MemberOp {
                kind: kvpb::member_op::Kind::Promote as i32,
                id,
                ..Default::default()
            }],
            expected_conf_index: 0,
        };
        let Ok(ops) = members::change_ops(self.core.conf_state().1, &req) else {
            return;
        };
        match self
            .core
            .propose_conf_change(&members::change_request(ops, 0))
        {
            Ok(index) => log::info!(
                "node {}: promoting caught-up learner {id} (entry {index})",
                self.id
            ),
            Err(e) => log::debug!("node {}: promotion of {id} deferred: {e}", self.id),
        }
    }

    /// (index, configuration) of the newest configuration applied.
    pub fn applied_conf(&self) -> &(u64, ConfState) {
        &self.applied_conf
    }

    /// Starts a read for `to` at consistency `c`, arrived at `now`. `tick_overdue`: a Raft
    /// tick is due but not yet applied, so the lease clock lags real time and a lease read
    /// takes the ReadIndex path (always safe) instead.
    pub fn read(&mut self, to: A, c: kvpb::Consistency, op: ReadOp, now: u64, tick_overdue: bool) {
        use kvpb::Consistency;
        let leading = self.core.role() == Role::Leader;
        if c != Consistency::Stale && !leading && !self.cfg.follower_reads {
            let r = self.refusal(ProposeError::NotLeader {
                leader: self.core.leader(),
            });
            self.requests.answer(to, r);
            return;
        }
        match c {
            Consistency::Stale => {
                let r = serve(&self.kv, &op, self.scan_budget());
                self.requests.answer(to, r);
            }
            // A follower holds no lease: LEASE reads take the follower ReadIndex path there.
            Consistency::Lease if self.cfg.lease_read && !tick_overdue && leading => {
                match self.core.lease_read() {
                    Ok(index) => {
                        let ctx = self.requests.add_read(to, op, now);
                        self.requests.confirm_read(ctx, index);
                        self.serve_reads();
                    }
                    // No valid lease right now: fall back to ReadIndex.
                    Err(ProposeError::NoLease) => self.read_index(to, op, now),
                    Err(e) => {
                        let r = self.refusal(e);
                        self.requests.answer(to, r);
                    }
                }
            }
            // LINEARIZABLE, and LEASE when lease reads are off or the lease clock lags.
            _ => self.read_index(to, op, now),
        }
    }

    fn read_index(&mut self, to: A, op: ReadOp, now: u64) {
        // `add_read` registers the read under exactly this context.
        match self.core.read_index(self.requests.next_read_ctx()) {
            Ok(()) => {
                self.requests.add_read(to, op, now);
            }
            Err(e) => {
                let r = self.refusal(e);
                self.requests.answer(to, r);
            }
        }
    }

    /// Applies committed entries (answering their writes), then serves the reads they
    /// unblock and fails `failed_reads`. Entries at or below the applied index are skipped.
    pub fn apply_and_serve(
        &mut self,
        committed: Vec<Entry>,
        reads: Vec<ReadState>,
        failed_reads: Vec<u64>,
    ) {
        let before = self.applied;
        for e in committed {
            if e.index <= self.applied {
                continue;
            }
            self.applied_bytes += e.data.len() as u64;
            let result = if e.entry_type == EntryType::EntryNormal as i32 {
                self.kv.apply(e.index, &e.data)
            } else {
                self.apply_conf(&e)
            };
            self.applied = e.index;
            self.requests.applied_write(e.index, e.term, result);
        }
        if self.applied > before {
            self.core.on_applied(self.applied);
        }
        for rs in reads {
            self.requests.confirm_read(rs.ctx, rs.index);
        }
        self.serve_reads();
        for ctx in failed_reads {
            self.requests.read_failed(ctx);
        }
    }

    /// A configuration entry applied: it is what snapshots from now on record, and the
    /// change request that proposed it (if here) is answered.
    fn apply_conf(&mut self, e: &Entry) -> Option<ApplyResult> {
        use prost::Message as _;
        match ConfState::decode(&e.data[..]) {
            Ok(conf) => {
                log::info!(
                    "node {}: configuration {} applied: voters {:?} outgoing {:?} learners {:?}",
                    self.id,
                    e.index,
                    conf.voters,
                    conf.voters_outgoing,
                    conf.learners
                );
                self.applied_conf = (e.index, conf);
                Some(ApplyResult::MemberChange(kvpb::MemberChangeResponse {
                    conf_index: e.index,
                }))
            }
            Err(err) => {
                // The core ignored it the same way: the previous configuration stays.
                log::error!("configuration entry {} does not decode: {err}", e.index);
                None
            }
        }
    }

    /// What the snapshot policy looks at (`SnapshotPolicy::should_snapshot`, `compact_index`),
    /// given the newest durable snapshot's index and the command bytes applied since it.
    pub fn log_stats(&self, snapshot_index: u64, bytes_since_snapshot: u64) -> LogStats {
        LogStats {
            snapshot_index,
            applied: self.kv.applied(),
            bytes_since_snapshot,
            first_index: self.core.store().first_index(),
        }
    }

    /// The metadata of a snapshot of the state machine as it is now: its applied index, that
    /// entry's term, and the configuration in force. Both shells take snapshots with it (the
    /// server in a fork()ed child, the simulator inline).
    pub fn snapshot_meta(&self) -> Result<SnapshotMeta, String> {
        let index = self.kv.applied();
        let term = self
            .core
            .store()
            .term(index)
            .map_err(|e| format!("cannot snapshot at index {index}: {e}"))?;
        Ok(SnapshotMeta {
            index,
            term,
            conf: Some(self.conf_at(index)),
            // Set by the server, which knows the cluster id (`server::snap`).
            cluster_id: Default::default(),
        })
    }

    /// The configuration in force at `index` (>= the newest applied configuration entry):
    /// the applied one. Snapshots are taken at the state machine's applied index.
    fn conf_at(&self, index: u64) -> ConfState {
        debug_assert!(index >= self.applied_conf.0);
        self.applied_conf.1.clone()
    }

    /// Holds a durable received snapshot the core took until its Ready installs it.
    pub fn stage_snapshot(&mut self, s: StagedSnapshot) {
        assert!(self.staged.is_none(), "one staged snapshot at a time");
        self.staged = Some(s);
    }

    /// The staged snapshot (see [`Replica::stage_snapshot`]).
    pub fn take_staged(&mut self) -> Option<StagedSnapshot> {
        self.staged.take()
    }

    /// A received snapshot at `index` is durable and the core took it: its state replaces
    /// the state machine. Only a follower receives snapshots, so writes still pending here
    /// are from a lost leadership and their entries may have been replaced by the snapshot
    /// (never applied here one by one): they are answered UNCERTAIN. Reads stay: confirmed
    /// ones are served from the newer state, unconfirmed ones wait for their confirmation.
    pub fn installed_snapshot(&mut self, index: u64, conf: Option<ConfState>, kv: KvStore) {
        self.kv = kv;
        self.applied = index;
        if let Some(conf) = conf {
            self.applied_conf = (index, conf);
        }
        self.requests.fail_writes(
            ErrorCode::Uncertain,
            "leadership lost; the write may or may not apply",
        );
        self.serve_reads();
    }

    /// Notices leadership changes after a Ready; a lost leadership answers its pending
    /// writes UNCERTAIN (they may still commit: a retry with the same session seq is
    /// exactly-once) and its unconfirmed reads UNAVAILABLE.
    pub fn check_leadership(&mut self) -> LeadershipChange {
        let leading = (self.core.role() == Role::Leader).then_some(self.core.term());
        let role_changed = leading != self.leader_term;
        if role_changed {
            if let Some(t) = self.leader_term {
                log::info!("node {} lost leadership of term {t}", self.id);
                self.requests.fail_writes_and_unconfirmed_reads(
                    ErrorCode::Uncertain,
                    "leadership lost; the write may or may not apply",
                    self.core.status().commit,
                );
            }
            if let Some(t) = leading {
                log::info!("node {} became leader in term {t}", self.id);
            }
            self.leader_term = leading;
        }
        let leader = self.core.leader();
        if leader != self.last_leader {
            if let Some(l) = leader.filter(|&l| l != self.id) {
                log::info!(
                    "node {} following leader {l} in term {}",
                    self.id,
                    self.core.term()
                );
            }
            self.last_leader = leader;
        }
        LeadershipChange {
            leading,
            role_changed,
        }
    }

    /// Some(term) while this node leads in `term` (as of the last `check_leadership`).
    pub fn leader_term(&self) -> Option<u64> {
        self.leader_term
    }

    /// Answers everything pending with SHUTTING_DOWN. A write may still commit after this
    /// node stops (it may already be on a majority), so the message says so.
    pub fn shutdown(&mut self) {
        self.requests.fail_all(
            ErrorCode::ShuttingDown,
            "the server is shutting down; a write may or may not have been applied",
        );
    }
}
