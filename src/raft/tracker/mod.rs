//! The leader's (and a candidate's) view of the other members: per-follower [`Progress`]
//! (match / next index and flow control, `progress.rs`) in a [`ProgressMap`], and the
//! [`Votes`] of a campaign, with the quorum questions asked of them (commit index, vote
//! outcome, CheckQuorum activity) answered by [`MajorityConfig`](super::quorum::MajorityConfig).
//! Modelled on raft-rs `src/tracker/`.

mod progress;

pub(crate) use progress::Progress;
pub use progress::ProgressState;

use super::quorum::{JointConfig, VoteResult};
use std::collections::{BTreeMap, HashMap};
use std::ops::{Deref, DerefMut};

/// Leader only: the progress of every other member, by id.
#[derive(Debug, Default)]
pub(crate) struct ProgressMap(BTreeMap<u64, Progress>);

impl Deref for ProgressMap {
    type Target = BTreeMap<u64, Progress>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for ProgressMap {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl ProgressMap {
    /// The highest index acknowledged by `quorum`; `me` counts with `persisted` (the leader's
    /// own log counts only once durable, and only if it is a voter).
    pub(crate) fn committed_index(&self, quorum: JointConfig, me: u64, persisted: u64) -> u64 {
        quorum.committed_index(|v| {
            if v == me {
                persisted
            } else {
                self.0.get(&v).map_or(0, |p| p.matched)
            }
        })
    }

    /// CheckQuorum: `quorum` (self included) was heard from since the last round.
    pub(crate) fn quorum_recently_active(&self, quorum: JointConfig, me: u64) -> bool {
        quorum.has_quorum(|v| v == me || self.0.get(&v).is_some_and(|p| p.recent_active))
    }
}

/// Votes (or pre-votes) received in the current campaign, self included.
#[derive(Debug, Default)]
pub(crate) struct Votes(HashMap<u64, bool>);

impl Votes {
    /// Records `from`'s answer; a second answer from the same member is ignored.
    pub(crate) fn record(&mut self, from: u64, granted: bool) {
        self.0.entry(from).or_insert(granted);
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The campaign's outcome so far in `quorum`.
    pub(crate) fn tally(&self, quorum: JointConfig) -> VoteResult {
        quorum.vote_result(|v| self.0.get(&v).copied())
    }
}
