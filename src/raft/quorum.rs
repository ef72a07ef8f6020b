//! Quorum arithmetic, in one place: the index a quorum has acknowledged (commit), the outcome
//! of a vote, and whether a set of members forms a quorum (CheckQuorum, ReadIndex, leases).
//!
//! Shaped like raft-rs `src/quorum/majority.rs` and `joint.rs`: every question is asked of a
//! [`MajorityConfig`] (one voter set) through closures that look up each voter's answer, and a
//! [`JointConfig`] combines the incoming and, during joint consensus (Raft dissertation §4.3),
//! the outgoing majority: both must agree. The core asks every question of a `JointConfig`;
//! outside a change its outgoing half is absent and it answers as the incoming majority.

/// Outcome of an election as far as the votes received so far tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoteResult {
    /// Not decided: enough voters have not answered yet to win or lose.
    Pending,
    /// A quorum has granted.
    Won,
    /// So many refused that a quorum can no longer be reached.
    Lost,
}

/// A single majority configuration: a set of voters, any majority of which decides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MajorityConfig<'a> {
    voters: &'a [u64],
}

impl<'a> MajorityConfig<'a> {
    pub(crate) fn new(voters: &'a [u64]) -> MajorityConfig<'a> {
        MajorityConfig { voters }
    }

    /// Members needed for a majority (1 for an empty set, which then never has one).
    pub(crate) fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// True if the voters for which `member` holds form a majority. Non-voters are ignored
    /// (`member` is only asked about voters).
    pub(crate) fn has_quorum(&self, member: impl Fn(u64) -> bool) -> bool {
        let n = self.voters.iter().filter(|&&v| member(v)).count();
        n >= self.quorum()
    }

    /// The highest index that a majority has acknowledged, given each voter's acknowledged
    /// index (`acked`). 0 for an empty voter set (nothing can be committed by counting).
    pub(crate) fn committed_index(&self, acked: impl Fn(u64) -> u64) -> u64 {
        if self.voters.is_empty() {
            return 0;
        }
        let mut idx: Vec<u64> = self.voters.iter().map(|&v| acked(v)).collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        idx[self.quorum() - 1]
    }

    /// Tallies the votes: `vote(v)` is `Some(granted)` for a voter that answered, `None` for
    /// one that did not (yet). Answers of non-voters are never asked for.
    pub(crate) fn vote_result(&self, vote: impl Fn(u64) -> Option<bool>) -> VoteResult {
        let (mut granted, mut missing) = (0, 0);
        for &v in self.voters {
            match vote(v) {
                Some(true) => granted += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let q = self.quorum();
        if granted >= q {
            VoteResult::Won
        } else if granted + missing >= q {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// The quorum of a configuration: the incoming voters' majority and, while joint, the
/// outgoing voters' majority too. Every decision needs both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JointConfig<'a> {
    incoming: MajorityConfig<'a>,
    /// `None` outside joint consensus.
    outgoing: Option<MajorityConfig<'a>>,
}

impl<'a> JointConfig<'a> {
    /// `outgoing` empty = not joint.
    pub(crate) fn new(incoming: &'a [u64], outgoing: &'a [u64]) -> JointConfig<'a> {
        JointConfig {
            incoming: MajorityConfig::new(incoming),
            outgoing: (!outgoing.is_empty()).then(|| MajorityConfig::new(outgoing)),
        }
    }

    /// True if `member` holds for a majority of each half.
    pub(crate) fn has_quorum(&self, member: impl Fn(u64) -> bool) -> bool {
        self.incoming.has_quorum(&member) && self.outgoing.is_none_or(|o| o.has_quorum(&member))
    }

    /// The highest index acknowledged by a majority of each half: the smaller of the two.
    pub(crate) fn committed_index(&self, acked: impl Fn(u64) -> u64) -> u64 {
        let inc = self.incoming.committed_index(&acked);
        self.outgoing
            .map_or(inc, |o| inc.min(o.committed_index(&acked)))
    }

    /// Won only if both halves won; lost as soon as either half lost.
    pub(crate) fn vote_result(&self, vote: impl Fn(u64) -> Option<bool>) -> VoteResult {
        let inc = self.incoming.vote_result(&vote);
        let out = self
            .outgoing
            .map_or(VoteResult::Won, |o| o.vote_result(&vote));
        match (inc, out) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_needs_both_majorities() {
        let (old, new) = ([1, 2, 3], [3, 4, 5]);
        let j = JointConfig::new(&new, &old);
        // {1, 2, 3} is a majority of old but only 1 of 3 of new.
        assert!(!j.has_quorum(|v| v <= 3));
        assert!(j.has_quorum(|v| v == 2 || v == 3 || v == 4));
        // Acks: 1..=5 -> 50, 40, 30, 20, 10. Old majority: 40; new majority (30, 20, 10): 20.
        assert_eq!(j.committed_index(|v| 60 - 10 * v), 20);
        // Votes: old half wins with 1, 2; new half still pending.
        assert_eq!(
            j.vote_result(|v| (v <= 2).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(j.vote_result(|v| (v <= 4).then_some(true)), VoteResult::Won);
        // New half lost (4 and 5 refuse): lost, whatever the old half says.
        assert_eq!(j.vote_result(|v| Some(v <= 3)), VoteResult::Lost);
        let simple = JointConfig::new(&new, &[]);
        assert!(
            simple.has_quorum(|v| v >= 4),
            "not joint: the incoming majority alone"
        );
        assert_eq!(simple.committed_index(|v| 60 - 10 * v), 20);
    }

    #[test]
    fn committed_index_is_the_quorum_th_highest_ack() {
        let voters = [1, 2, 3, 4, 5];
        let c = MajorityConfig::new(&voters);
        let acks = [9, 7, 5, 3, 1];
        assert_eq!(c.committed_index(|v| acks[v as usize - 1]), 5);
        let one = [7];
        assert_eq!(MajorityConfig::new(&one).committed_index(|_| 4), 4);
        assert_eq!(MajorityConfig::new(&[]).committed_index(|_| 4), 0);
        let four = [1, 2, 3, 4];
        // 4 voters need 3: the third-highest of (8, 6, 4, 2).
        assert_eq!(
            MajorityConfig::new(&four).committed_index(|v| 10 - 2 * v),
            4
        );
    }

    #[test]
    fn vote_result_wins_loses_or_waits() {
        let voters = [1, 2, 3];
        let c = MajorityConfig::new(&voters);
        assert_eq!(
            c.vote_result(|v| (v == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(c.vote_result(|v| (v <= 2).then_some(true)), VoteResult::Won);
        assert_eq!(
            c.vote_result(|v| Some(v == 1)),
            VoteResult::Lost,
            "one grant, two refusals of three"
        );
        assert_eq!(
            c.vote_result(|v| if v == 1 {
                Some(true)
            } else if v == 2 {
                Some(false)
            } else {
                None
            }),
            VoteResult::Pending
        );
        assert_eq!(
            MajorityConfig::new(&[]).vote_result(|_| None),
            VoteResult::Lost
        );
    }

    #[test]
    fn has_quorum_counts_voters_only() {
        let voters = [1, 2, 3, 4, 5];
        let c = MajorityConfig::new(&voters);
        assert!(c.has_quorum(|v| v <= 3));
        assert!(!c.has_quorum(|v| v <= 2));
        assert!(!c.has_quorum(|v| v > 5), "non-voters never count");
    }
}
