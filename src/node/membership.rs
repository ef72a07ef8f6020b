//! Membership in the node layer: what a member's context in the Raft configuration holds (its
//! addresses, and whether it is to be promoted), turning a client's `MemberChange` into the
//! core's change, the `member list` answer, and automatic promotion of caught-up learners.
//! The core decides what is safe (`raft/membership.rs`); this decides what operators see.
//!
//! Growing a cluster is learners first, then promotion (openraft's way): `ADD` makes the new
//! node a learner marked `promote`; the leader promotes it once it has held the leader's log to
//! within [`PromotionPolicy::max_lag`] entries, outside any snapshot transfer, for
//! [`PromotionPolicy::ticks`] consecutive ticks. A voter that joins before it caught up would
//! count towards the quorum while it cannot acknowledge anything: with 3 voters and one slow
//! new one, one more failure stops commits.

use crate::kv::{error_result, ApplyResult};
use crate::pb::kvpb::{self, member_op::Kind, ErrorCode};
use crate::raft::{
    member_context, ConfChangeError, ConfChangeOp, ConfChangeRequest, ConfState, LogStore, RawNode,
    Role,
};
use bytes::Bytes;
use prost::Message as _;
use std::collections::BTreeMap;

/// When a learner marked `promote` becomes a voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromotionPolicy {
    /// Entries the learner may lag behind the leader's last index and still count as caught
    /// up.
    pub max_lag: u64,
    /// Consecutive ticks it must stay caught up (0 = never promote automatically).
    pub ticks: u32,
}

/// Default lag: about a tenth of a second of writes at the 3-node write throughput measured
/// in docs/bench.md (≈1,000 ops/s at one client): a learner this close catches the rest up
/// within one AppendEntries.
pub const DEFAULT_PROMOTE_MAX_LAG: u64 = 100;
/// Default ticks caught up before promotion: one election timeout (10 ticks of 50 ms), so a
/// learner that only touched the leader's log once is not promoted.
pub const DEFAULT_PROMOTE_TICKS: u32 = 10;

impl Default for PromotionPolicy {
    fn default() -> Self {
        PromotionPolicy {
            max_lag: DEFAULT_PROMOTE_MAX_LAG,
            ticks: DEFAULT_PROMOTE_TICKS,
        }
    }
}

/// A member's context as the node layer writes it into the configuration.
pub fn encode_context(peer_addr: &str, client_addr: &str, promote: bool) -> Bytes {
    kvpb::MemberContext {
        peer_addr: peer_addr.into(),
        client_addr: client_addr.into(),
        promote,
    }
    .encode_to_vec()
    .into()
}

/// A member's context (empty for a member without one, or one that does not decode).
pub fn context_of(conf: &ConfState, id: u64) -> kvpb::MemberContext {
    kvpb::MemberContext::decode(member_context(conf, id)).unwrap_or_default()
}

/// The core's operations for a client's change; `Err` names what is wrong with it.
pub fn change_ops(conf: &ConfState, req: &kvpb::MemberChange) -> Result<Vec<ConfChangeOp>, String> {
    if req.ops.is_empty() {
        return Err("a membership change needs at least one operation".into());
    }
    req.ops
        .iter()
        .map(|op| {
            let kind = Kind::try_from(op.kind).map_err(|_| format!("unknown kind {}", op.kind))?;
            let id = op.id;
            Ok(match kind {
                Kind::Add | Kind::AddLearner => {
                    if op.peer_addr.is_empty() {
                        return Err(format!("adding node {id} needs its peer address"));
                    }
                    ConfChangeOp::AddLearner {
                        id,
                        context: encode_context(&op.peer_addr, &op.client_addr, kind == Kind::Add),
                    }
                }
                Kind::Promote => {
                    if !conf.learners.contains(&id) {
                        return Err(format!("node {id} is not a learner"));
                    }
                    let c = context_of(conf, id);
                    ConfChangeOp::AddVoter {
                        id,
                        context: encode_context(&c.peer_addr, &c.client_addr, false),
                    }
                }
                Kind::Remove => ConfChangeOp::Remove { id },
            })
        })
        .collect()
}

/// The answer to a refused membership change.
pub fn change_refusal(e: ConfChangeError, leader_addr: impl Fn(u64) -> String) -> ApplyResult {
    let message = e.to_string();
    let code = match e {
        ConfChangeError::NotLeader { leader } => {
            let leader_id = leader.unwrap_or(0);
            return ApplyResult::Error(kvpb::Error {
                code: ErrorCode::NotLeader as i32,
                message,
                leader_id,
                leader_addr: leader_addr(leader_id),
            });
        }
        ConfChangeError::TransferInProgress
        | ConfChangeError::ChangeInProgress { .. }
        | ConfChangeError::LeaderNotReady => ErrorCode::Unavailable,
        ConfChangeError::ConfIndexMismatch { .. } => ErrorCode::Conflict,
        ConfChangeError::Invalid(_) => ErrorCode::BadRequest,
    };
    error_result(code, message)
}

/// The request for the core (`expected_conf_index` 0 = unconditional).
pub fn change_request(ops: Vec<ConfChangeOp>, expected_conf_index: u64) -> ConfChangeRequest {
    ConfChangeRequest {
        ops,
        expected_conf_index: (expected_conf_index != 0).then_some(expected_conf_index),
    }
}

/// The configuration in force as `member list` shows it, with the leader's view of each
/// member's progress when answered by the leader.
pub fn member_list<L: LogStore>(
    core: &RawNode<L>,
    policy: PromotionPolicy,
) -> kvpb::MemberListResponse {
    let (conf_index, conf) = core.conf_state();
    let me = core.status().id;
    let last = core.store().last_index().max(core.status().commit);
    let leading = core.role() == Role::Leader;
    let members = crate::raft::members(conf)
        .into_iter()
        .map(|id| {
            let c = context_of(conf, id);
            let role = if conf.voters.contains(&id) {
                "voter"
            } else if conf.voters_outgoing.contains(&id) {
                "outgoing"
            } else {
                "learner"
            };
            let (match_index, caught_up) = match (leading, id == me) {
                (true, true) => (last, true),
                (true, false) => core.progress_of(id).map_or((0, false), |(m, snap)| {
                    (m, !snap && m + policy.max_lag >= last)
                }),
                _ => (0, false),
            };
            kvpb::MemberInfo {
                id,
                peer_addr: c.peer_addr,
                client_addr: c.client_addr,
                role: role.into(),
                match_index,
                caught_up,
                promote: c.promote && role == "learner",
            }
        })
        .collect();
    kvpb::MemberListResponse {
        members,
        conf_index,
        joint: !conf.voters_outgoing.is_empty(),
        leader_id: core.leader().unwrap_or(0),
        removed: conf.removed.clone(),
    }
}

/// Leader's bookkeeping for automatic promotion: ticks each `promote` learner has been
/// caught up in a row.
#[derive(Debug, Default)]
pub struct Promoter {
    caught_up_ticks: BTreeMap<u64, u32>,
}

impl Promoter {
    /// Once per tick: the learner to promote now, if one has been caught up long enough.
    /// Forgets everything when not leading (a new leader counts afresh).
    pub fn tick<L: LogStore>(&mut self, core: &RawNode<L>, policy: PromotionPolicy) -> Option<u64> {
        if core.role() != Role::Leader || policy.ticks == 0 {
            self.caught_up_ticks.clear();
            return None;
        }
        let (_, conf) = core.conf_state();
        let last = core.store().last_index();
        self.caught_up_ticks
            .retain(|id, _| conf.learners.contains(id));
        let mut ready = None;
        for &id in &conf.learners {
            let caught_up = context_of(conf, id).promote
                && core
                    .progress_of(id)
                    .is_some_and(|(m, snap)| !snap && m + policy.max_lag >= last);
            let n = self.caught_up_ticks.entry(id).or_insert(0);
            *n = if caught_up { n.saturating_add(1) } else { 0 };
            if *n >= policy.ticks && ready.is_none() {
                ready = Some(id);
            }
        }
        ready
    }
}

/// The voter to hand leadership to for `leader transfer` without an id: the most
/// up-to-date other voter (ties: the lowest id).
pub fn transfer_target<L: LogStore>(core: &RawNode<L>) -> Option<u64> {
    let (_, conf) = core.conf_state();
    let me = core.status().id;
    conf.voters
        .iter()
        .filter(|&&v| v != me)
        .filter_map(|&v| core.progress_of(v).map(|(m, _)| (m, std::cmp::Reverse(v))))
        .max()
        .map(|(_, std::cmp::Reverse(v))| v)
}
