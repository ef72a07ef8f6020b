//! Membership changes: the configuration in force, how a change is proposed, and the rules that
//! keep two configurations from ever deciding independently.
//!
//! **When a configuration takes effect: when its entry is appended**, on every node, committed
//! or not (Raft dissertation §4.1). Elections and commitment always use the newest
//! configuration in the node's own log. If that entry is truncated away (a new leader did not
//! have it), the node falls back to the newest one left. [`Membership`] keeps exactly this:
//! the configuration of the newest committed (or snapshotted) entry, plus the uncommitted
//! configuration entries above it, so truncation is one `retain`.
//!
//! Why it is safe: (1) the leader proposes a change only when no configuration entry is
//! uncommitted and it is not joint, so at most one change is ever in flight; (2) it proposes
//! none before an entry of its own term is committed (the single-server bug of 2015, raft-dev
//! "bug in single-server membership changes": a leader of a new term could otherwise add a
//! change on top of an uncommitted change of a deposed leader, and the two configurations would
//! not overlap); (3) a change of more than one voter goes through the joint configuration
//! C_old,new, in which every decision needs a majority of both halves, and the leader leaves it
//! (appends C_new) by itself once C_old,new is committed (§4.3). A change of exactly one voter
//! is done directly: any majority of C_old and any majority of C_new share a node (§4.2).
//!
//! Learners receive entries and snapshots but are never asked for votes and never counted in
//! a quorum (every quorum question goes through [`JointConfig`](super::quorum::JointConfig)
//! over voters only).

use super::node::RawNode;
use super::quorum::JointConfig;
use super::tracker::Progress;
use super::{ConfState, Entry, EntryType, LogStore, PlantedBug, Role};
use crate::pb::raftpb::Member;
use bytes::Bytes;
use prost::Message as _;
use std::fmt;

/// One step of a membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfChangeOp {
    /// Make `id` a voter: a new node, or the promotion of a learner. `context` (the node
    /// layer's addresses) replaces the member's context when non-empty.
    AddVoter { id: u64, context: Bytes },
    /// Add `id` as a learner (it must not be a member yet).
    AddLearner { id: u64, context: Bytes },
    /// Remove voter or learner `id`; its id is never accepted again.
    Remove { id: u64 },
}

/// A membership change request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfChangeRequest {
    pub ops: Vec<ConfChangeOp>,
    /// Only apply if the configuration in force is the one at this index (hashicorp/raft's
    /// `prevIndex`): two operators reading the same configuration cannot both change it.
    pub expected_conf_index: Option<u64>,
}

/// Why a membership change was refused. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfChangeError {
    NotLeader {
        leader: Option<u64>,
    },
    TransferInProgress,
    /// A configuration entry is not committed yet, or the cluster is joint.
    ChangeInProgress {
        conf_index: u64,
    },
    /// This leader has not committed an entry of its own term yet (try again shortly).
    LeaderNotReady,
    /// `expected_conf_index` did not match.
    ConfIndexMismatch {
        current: u64,
    },
    /// The change makes no sense for the current configuration.
    Invalid(String),
}

impl fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfChangeError::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader (node {l} is)")
            }
            ConfChangeError::NotLeader { leader: None } => {
                write!(f, "not the leader (leader unknown)")
            }
            ConfChangeError::TransferInProgress => {
                write!(f, "a leadership transfer is in progress")
            }
            ConfChangeError::ChangeInProgress { conf_index } => write!(
                f,
                "another membership change (configuration entry {conf_index}) is still in progress"
            ),
            ConfChangeError::LeaderNotReady => {
                write!(
                    f,
                    "the new leader has not committed an entry of its term yet; retry"
                )
            }
            ConfChangeError::ConfIndexMismatch { current } => write!(
                f,
                "the configuration changed meanwhile (it is now the one at index {current})"
            ),
            ConfChangeError::Invalid(why) => write!(f, "invalid membership change: {why}"),
        }
    }
}

impl std::error::Error for ConfChangeError {}

/// True if `id` votes in `conf` (in either half while joint).
pub(crate) fn votes_in(conf: &ConfState, id: u64) -> bool {
    conf.voters.contains(&id) || conf.voters_outgoing.contains(&id)
}

/// True if `id` is a voter or learner of `conf`.
pub fn is_member(conf: &ConfState, id: u64) -> bool {
    votes_in(conf, id) || conf.learners.contains(&id)
}

/// Every member (voters of both halves and learners), each once, in id order.
pub fn members(conf: &ConfState) -> Vec<u64> {
    let mut ids: Vec<u64> = conf
        .voters
        .iter()
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners)
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Every member except `me`, in id order.
pub(crate) fn others(conf: &ConfState, me: u64) -> Vec<u64> {
    let mut ids = members(conf);
    ids.retain(|&id| id != me);
    ids
}

/// The member's context in `conf` (empty if none).
pub fn member_context(conf: &ConfState, id: u64) -> &[u8] {
    conf.members
        .iter()
        .find(|m| m.id == id)
        .map_or(&[][..], |m| &m.context[..])
}

fn set_context(conf: &mut ConfState, id: u64, context: &Bytes) {
    if context.is_empty() {
        return;
    }
    conf.members.retain(|m| m.id != id);
    conf.members.push(Member {
        id,
        context: context.to_vec().into(),
    });
}

/// The configuration that `req` makes of `cur` (not joint). More than one voter added or
/// removed gives a joint configuration with `cur`'s voters as the outgoing half.
pub fn apply_changes(
    cur: &ConfState,
    ops: &[ConfChangeOp],
    simple_only: bool,
) -> Result<ConfState, ConfChangeError> {
    let invalid = |s: String| Err(ConfChangeError::Invalid(s));
    if !cur.voters_outgoing.is_empty() {
        return invalid("the configuration is joint".into());
    }
    if ops.is_empty() {
        return invalid("no change given".into());
    }
    let mut next = cur.clone();
    for op in ops {
        match op {
            ConfChangeOp::AddVoter { id, context } | ConfChangeOp::AddLearner { id, context } => {
                let id = *id;
                if id == 0 {
                    return invalid("node id 0 is reserved".into());
                }
                if next.removed.contains(&id) {
                    return invalid(format!(
                        "node {id} was removed from this cluster; ids are never reused, pick a new one"
                    ));
                }
                let voter = matches!(op, ConfChangeOp::AddVoter { .. });
                if next.voters.contains(&id) {
                    return invalid(if voter {
                        format!("node {id} is already a voter")
                    } else {
                        format!("node {id} is a voter; remove it instead of demoting it")
                    });
                }
                if !voter && next.learners.contains(&id) {
                    return invalid(format!("node {id} is already a learner"));
                }
                if voter {
                    next.learners.retain(|&l| l != id);
                    next.voters.push(id);
                } else {
                    next.learners.push(id);
                }
                set_context(&mut next, id, context);
            }
            ConfChangeOp::Remove { id } => {
                let id = *id;
                if next.removed.contains(&id) {
                    // What a retry after an uncertain outcome finds (as "already a voter").
                    return invalid(format!("node {id} was removed already"));
                }
                if !is_member(&next, id) {
                    return invalid(format!("node {id} is not a member"));
                }
                next.voters.retain(|&v| v != id);
                next.learners.retain(|&l| l != id);
                next.members.retain(|m| m.id != id);
                next.removed.push(id);
            }
        }
    }
    if next.voters.is_empty() {
        return invalid("the change would leave no voter".into());
    }
    let changed_voters = next
        .voters
        .iter()
        .filter(|v| !cur.voters.contains(v))
        .count()
        + cur
            .voters
            .iter()
            .filter(|v| !next.voters.contains(v))
            .count();
    if changed_voters > 1 {
        if simple_only {
            return invalid(format!(
                "{changed_voters} voters change: needs a joint change"
            ));
        }
        next.voters_outgoing = cur.voters.clone();
    }
    normalize(&mut next);
    Ok(next)
}

/// Sorted, deduplicated lists: equal configurations encode equally.
fn normalize(c: &mut ConfState) {
    for l in [
        &mut c.voters,
        &mut c.learners,
        &mut c.voters_outgoing,
        &mut c.removed,
    ] {
        l.sort_unstable();
        l.dedup();
    }
    c.members.sort_by_key(|m| m.id);
}

/// Decodes a configuration entry's data. A malformed one (only a broken or hostile leader
/// could send it) is ignored with an error line: the previous configuration stays.
pub(crate) fn decode_conf(e: &Entry) -> Option<ConfState> {
    match ConfState::decode(&e.data[..]) {
        Ok(c) => Some(c),
        Err(err) => {
            log::error!(
                "configuration entry {} is malformed ({err}); ignored",
                e.index
            );
            None
        }
    }
}

/// The configuration in force: the newest committed one and any uncommitted ones above it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Membership {
    /// (index, configuration) of the newest committed configuration entry or snapshot.
    base: (u64, ConfState),
    /// Configuration entries above `base`, in index order.
    pending: Vec<(u64, ConfState)>,
}

impl Membership {
    pub(crate) fn new(index: u64, conf: ConfState) -> Membership {
        Membership {
            base: (index, conf),
            pending: Vec::new(),
        }
    }

    /// The configuration in force (the newest in the log).
    pub(crate) fn current(&self) -> &ConfState {
        self.pending.last().map_or(&self.base.1, |(_, c)| c)
    }

    /// (index, configuration) of the newest committed configuration (as of the last
    /// `on_commit`).
    pub(crate) fn committed(&self) -> (u64, &ConfState) {
        (self.base.0, &self.base.1)
    }

    /// Index of the entry (or snapshot) that holds the configuration in force.
    pub(crate) fn index(&self) -> u64 {
        self.pending.last().map_or(self.base.0, |(i, _)| *i)
    }

    /// Entries from `ents[0].index` on replace the log's suffix: configurations appended at or
    /// above it are gone, the new entries' configurations take effect. True if the
    /// configuration in force changed.
    pub(crate) fn on_append(&mut self, ents: &[Entry]) -> bool {
        let Some(first) = ents.first() else {
            return false;
        };
        let before = self.index();
        self.pending.retain(|(i, _)| *i < first.index);
        for e in ents {
            if e.entry_type == EntryType::EntryConfChange as i32 {
                if let Some(c) = decode_conf(e) {
                    self.pending.push((e.index, c));
                }
            }
        }
        self.index() != before
    }

    /// `commit` moved: configurations at or below it become the base.
    pub(crate) fn on_commit(&mut self, commit: u64) {
        while self.pending.first().is_some_and(|(i, _)| *i <= commit) {
            self.base = self.pending.remove(0);
        }
    }

    /// A snapshot replaced the log.
    pub(crate) fn reset(&mut self, index: u64, conf: ConfState) {
        *self = Membership::new(index, conf);
    }

    /// (index, configuration) in force just below `index`: the newest tracked one before it.
    /// `None` if that is older than the committed configuration (no longer tracked).
    pub(crate) fn before(&self, index: u64) -> Option<(u64, &ConfState)> {
        self.pending
            .iter()
            .rev()
            .find(|(i, _)| *i < index)
            .map(|(i, c)| (*i, c))
            .or_else(|| (self.base.0 < index).then_some((self.base.0, &self.base.1)))
    }

    /// A configuration entry above `commit` exists.
    pub(crate) fn has_uncommitted(&self, commit: u64) -> bool {
        self.index() > commit
    }
}

impl<S: LogStore> RawNode<S> {
    /// The quorum of the configuration in force (all quorum arithmetic is in `quorum.rs`).
    pub(super) fn quorum(&self) -> JointConfig<'_> {
        let c = self.members.current();
        JointConfig::new(&c.voters, &c.voters_outgoing)
    }

    /// The configuration in force.
    pub(crate) fn conf(&self) -> &ConfState {
        self.members.current()
    }

    /// Appends to the log (truncating a conflicting suffix) and lets the appended
    /// configurations take effect. Every append of the core goes through here.
    pub(super) fn append_log(&mut self, ents: Vec<Entry>) {
        let changed = self.members.on_append(&ents);
        self.log.append(ents);
        if changed {
            self.on_conf_changed();
        }
    }

    /// The configuration in force changed (appended, truncated or restored).
    pub(super) fn on_conf_changed(&mut self) {
        self.conf_changed = true;
        if self.role == Role::Leader {
            self.sync_progress();
        } else if self.role != Role::Follower && !self.is_voter(self.id()) {
            // A (pre-)candidate that is no voter any more stops campaigning.
            let term = self.term;
            self.become_follower(term, 0);
        }
    }

    /// Leader: progress for exactly the other members of the configuration in force.
    pub(super) fn sync_progress(&mut self) {
        let ids = others(self.conf(), self.id());
        self.prs.retain(|id, _| ids.contains(id));
        // New members start probing at the last entry (the configuration entry that added
        // them, when called from `append_log`), so the next broadcast carries it at once.
        let next = self.log.last_index().max(1);
        for id in ids {
            self.prs.entry(id).or_insert_with(|| Progress::new(next));
        }
        self.pending_bcast = true;
    }

    /// Proposes a membership change; on success, the index of its configuration entry.
    pub fn propose_conf_change(&mut self, req: &ConfChangeRequest) -> Result<u64, ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader {
                leader: (self.leader != 0).then_some(self.leader),
            });
        }
        if self.transferee != 0 {
            return Err(ConfChangeError::TransferInProgress);
        }
        let bug = self.cfg.planted_bug();
        if !self.committed_own_term() && bug != PlantedBug::ConfChangeBeforeCommit {
            return Err(ConfChangeError::LeaderNotReady);
        }
        let conf_index = self.members.index();
        let busy =
            self.members.has_uncommitted(self.commit) || !self.conf().voters_outgoing.is_empty();
        if busy && bug != PlantedBug::TwoConfChanges {
            return Err(ConfChangeError::ChangeInProgress { conf_index });
        }
        if let Some(want) = req.expected_conf_index {
            if want != conf_index {
                return Err(ConfChangeError::ConfIndexMismatch {
                    current: conf_index,
                });
            }
        }
        let mut cur = self.conf().clone();
        if bug == PlantedBug::TwoConfChanges {
            cur.voters_outgoing.clear();
        }
        let mut next = apply_changes(&cur, &req.ops, false)?;
        if bug == PlantedBug::SkipJoint {
            next.voters_outgoing.clear();
        }
        Ok(self.append_conf(next))
    }

    /// Appends a configuration entry of the current term; returns its index.
    fn append_conf(&mut self, conf: ConfState) -> u64 {
        let index = self.log.last_index() + 1;
        log::info!(
            "node {} proposes configuration at {index}: voters {:?} outgoing {:?} learners {:?}",
            self.id(),
            conf.voters,
            conf.voters_outgoing,
            conf.learners
        );
        self.append_log(vec![Entry {
            index,
            term: self.term,
            entry_type: EntryType::EntryConfChange as i32,
            data: conf.encode_to_vec().into(),
        }]);
        self.pending_bcast = true;
        index
    }

    /// Leader, after commit moved: leave a committed joint configuration (append C_new), and
    /// hand leadership over once a configuration without this node as a voter is committed.
    pub(super) fn after_commit_membership(&mut self) {
        self.members.on_commit(self.commit);
        if self.role != Role::Leader || self.members.has_uncommitted(self.commit) {
            return;
        }
        if !self.conf().voters_outgoing.is_empty() {
            let mut next = self.conf().clone();
            next.voters_outgoing.clear();
            self.append_conf(next);
            return;
        }
        if !self.is_voter(self.id()) {
            self.hand_off_leadership();
        }
    }

    /// A leader that is no longer a voter: transfer to the most up-to-date voter, then step
    /// down (it goes on as a learner or, if removed, stops). Retried from `tick_leader` each
    /// election timeout until a voter caught up.
    pub(super) fn hand_off_leadership(&mut self) {
        let best = self
            .prs
            .iter()
            .filter(|(id, _)| votes_in(self.members.current(), **id))
            .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        let Some(to) = best else { return };
        if self.transferee != to {
            log::info!(
                "node {} is no longer a voter: handing leadership to {to}",
                self.id()
            );
            self.transferee = to;
            self.election_elapsed = 0;
        }
        if self
            .prs
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index())
        {
            self.maybe_finish_transfer(to);
        } else {
            self.send_append(to, true);
        }
    }

    /// (index, configuration) in force just below log index `index` (`None` if older than
    /// the committed configuration). The simulator's checker judges each change against it.
    pub fn conf_before(&self, index: u64) -> Option<(u64, &ConfState)> {
        self.members.before(index)
    }

    /// The configuration in force and the index of the entry (or snapshot) holding it.
    pub fn conf_state(&self) -> (u64, &ConfState) {
        (self.members.index(), self.members.current())
    }

    /// (match index, in snapshot transfer) of member `id` as the leader tracks it; `None` on
    /// followers and for non-members.
    pub fn progress_of(&self, id: u64) -> Option<(u64, bool)> {
        self.prs
            .get(&id)
            .map(|p| (p.matched, p.state == super::ProgressState::Snapshot))
    }

    /// True once this node learned that the cluster removed it (a member answered it with
    /// `Removed`). It takes no part any more; the shell should stop it.
    pub fn is_removed(&self) -> bool {
        self.removed_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        }
    }

    fn add(id: u64) -> ConfChangeOp {
        ConfChangeOp::AddVoter {
            id,
            context: Bytes::new(),
        }
    }

    #[test]
    fn one_voter_is_simple_two_is_joint() {
        let c = conf(&[1, 2, 3], &[]);
        let s = apply_changes(&c, &[add(4)], false).unwrap();
        assert_eq!(s.voters, vec![1, 2, 3, 4]);
        assert!(s.voters_outgoing.is_empty());
        let j = apply_changes(&c, &[add(4), add(5)], false).unwrap();
        assert_eq!(j.voters, vec![1, 2, 3, 4, 5]);
        assert_eq!(j.voters_outgoing, vec![1, 2, 3]);
        // Replacing one voter by another changes two voters: joint.
        let r = apply_changes(&c, &[ConfChangeOp::Remove { id: 3 }, add(4)], false).unwrap();
        assert_eq!(
            (r.voters.clone(), r.voters_outgoing.clone()),
            (vec![1, 2, 4], vec![1, 2, 3])
        );
        assert_eq!(r.removed, vec![3]);
        assert!(apply_changes(&c, &[add(4), add(5)], true).is_err());
    }

    #[test]
    fn promotion_of_a_learner_is_a_voter_change() {
        let c = conf(&[1, 2, 3], &[4]);
        let p = apply_changes(&c, &[add(4)], false).unwrap();
        assert_eq!((p.voters, p.learners), (vec![1, 2, 3, 4], vec![]));
    }

    #[test]
    fn refuses_what_makes_no_sense() {
        let mut c = conf(&[1, 2, 3], &[4]);
        c.removed = vec![9];
        for (ops, why) in [
            (vec![add(2)], "already a voter"),
            (vec![add(9)], "removed"),
            (vec![add(0)], "reserved"),
            (vec![ConfChangeOp::Remove { id: 7 }], "not a member"),
            (
                vec![ConfChangeOp::Remove { id: 9 }],
                "node 9 was removed already",
            ),
            (
                vec![ConfChangeOp::AddLearner {
                    id: 4,
                    context: Bytes::new(),
                }],
                "already a learner",
            ),
            (
                vec![ConfChangeOp::AddLearner {
                    id: 1,
                    context: Bytes::new(),
                }],
                "demoting",
            ),
            (
                (1..=3).map(|id| ConfChangeOp::Remove { id }).collect(),
                "no voter",
            ),
            (vec![], "no change"),
        ] {
            let e = apply_changes(&c, &ops, false).unwrap_err().to_string();
            assert!(e.contains(why), "{ops:?}: {e}");
        }
        let mut j = conf(&[1, 2], &[]);
        j.voters_outgoing = vec![1, 2, 3];
        assert!(
            apply_changes(&j, &[add(5)], false).is_err(),
            "joint: no new change"
        );
    }

    #[test]
    fn truncation_falls_back_to_the_previous_configuration() {
        let entry = |index, c: &ConfState| Entry {
            index,
            term: 1,
            entry_type: EntryType::EntryConfChange as i32,
            data: c.encode_to_vec().into(),
        };
        let (c1, c2, c3) = (
            conf(&[1, 2, 3], &[]),
            conf(&[1, 2, 3, 4], &[]),
            conf(&[1, 2, 3], &[5]),
        );
        let mut m = Membership::new(0, c1.clone());
        assert!(m.on_append(&[entry(5, &c2)]));
        assert_eq!((m.index(), m.current()), (5, &c2));
        // A new leader's log replaces index 5 with an ordinary entry: back to c1.
        let plain = Entry {
            index: 5,
            term: 2,
            ..Entry::default()
        };
        assert!(m.on_append(&[plain]));
        assert_eq!((m.index(), m.current()), (0, &c1));
        assert!(m.on_append(&[entry(6, &c3)]));
        m.on_commit(6);
        assert!(!m.has_uncommitted(6));
        // Committed configurations are the base: a later append above them keeps them.
        assert!(!m.on_append(&[Entry {
            index: 7,
            term: 2,
            ..Entry::default()
        }]));
        assert_eq!(m.current(), &c3);
    }
}
