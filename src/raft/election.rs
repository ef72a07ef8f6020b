//! Leader election (Raft §5.2, §5.4.1) with PreVote (dissertation §9.6).

use super::membership::others;
use super::node::RawNode;
use super::quorum::VoteResult;
use super::tracker::Progress;
use super::{Entry, EntryType, LogStore, PlantedBug, Role};
use crate::pb::raftpb::message::Body;
use crate::pb::raftpb::{RequestVote, RequestVoteResponse};

impl<S: LogStore> RawNode<S> {
    /// Starts an election: a PreVote round first if configured (a transfer skips it).
    pub(super) fn campaign(&mut self, transfer: bool) {
        if !self.is_voter(self.id()) {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
        // Our own vote is counted inline (never as a message that could arrive late).
        if self.tally() {
            return;
        }
        self.request_votes(transfer);
    }

    /// Asks every other voter for its vote (or pre-vote, at term + 1, as a pre-candidate),
    /// with our last log index and term.
    fn request_votes(&mut self, transfer: bool) {
        let pre_vote = self.role == Role::PreCandidate;
        let term = if pre_vote { self.term + 1 } else { self.term };
        let rv = RequestVote {
            pre_vote,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        };
        let me = self.id();
        let c = self.conf();
        let mut voters: Vec<u64> = c.voters.iter().chain(&c.voters_outgoing).copied().collect();
        voters.sort_unstable();
        voters.dedup();
        voters.retain(|&v| v != me);
        for v in voters {
            self.send_at(v, term, Body::RequestVote(rv));
        }
    }

    /// Keeps term and vote; persists nothing (PreVote).
    fn become_pre_candidate(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
        let me = self.id();
        self.votes.record(me, true);
    }

    fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.role = Role::Candidate;
        let me = self.id();
        self.vote = me;
        self.votes.record(me, true);
    }

    pub(super) fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        let me = self.id();
        self.leader = me;
        let last = self.log.last_index();
        for id in others(self.conf(), me) {
            self.prs.insert(id, Progress::new(last + 1));
        }
        // Only acks for heartbeats of this term count towards a lease.
        self.lease_fence = self.now;
        // The no-op entry of the new term (Raft §8): commits everything before it and lets
        // reads proceed once it commits. The CommitOldTerm planted bug delays it until the
        // first read (see `read_index`; proposals add own-term entries anyway), opening the
        // paper's Figure 8 window: with an immediate no-op, old-term entries almost never
        // reach a quorum ahead of a current-term one and the bug would hide.
        if self.cfg.planted_bug() != PlantedBug::CommitOldTerm {
            self.append_noop();
        }
        self.pending_bcast = true;
        log::info!("node {me} became leader at term {term}");
    }

    /// Appends an empty entry of the current term.
    pub(super) fn append_noop(&mut self) {
        let index = self.log.last_index() + 1;
        self.append_log(vec![Entry {
            index,
            term: self.term,
            entry_type: EntryType::EntryNormal as i32,
            data: Default::default(),
        }]);
        self.pending_bcast = true;
    }

    /// Counts votes. Returns true if the campaign ended (won or lost).
    fn tally(&mut self) -> bool {
        match self.votes.tally(self.quorum()) {
            VoteResult::Won if self.role == Role::PreCandidate => {
                self.become_candidate();
                // Re-run the real election (may win at once as a single voter).
                if self.tally() {
                    return true;
                }
                self.request_votes(false);
                false
            }
            VoteResult::Won => {
                self.become_leader();
                true
            }
            VoteResult::Lost => {
                // A quorum can no longer be reached.
                let term = self.term;
                self.become_follower(term, 0);
                true
            }
            VoteResult::Pending => false,
        }
    }

    pub(super) fn handle_vote_request(&mut self, from: u64, mterm: u64, rv: RequestVote) {
        let can_vote = self.vote == from
            // Free to vote: no vote yet, and no leader known in this term (E9).
            || (self.vote == 0 && self.leader == 0)
            // A pre-vote for a future term commits us to nothing.
            || (rv.pre_vote && mterm > self.term)
            || (self.cfg.planted_bug() == PlantedBug::VoteTwice
                && !rv.pre_vote
                && mterm == self.term
                && self.role == Role::Follower);
        // Whether `from` is a voter is the candidate's business: it counts votes against its
        // own (possibly newer) configuration. Removed nodes never get here (`step`).
        let grant = can_vote && self.log.is_up_to_date(rv.last_log_index, rv.last_log_term);
        if grant {
            // Answer at the asked term: a granted pre-vote is for term+1, a vote for our term.
            self.send_at(
                from,
                mterm,
                Body::RequestVoteResponse(RequestVoteResponse {
                    pre_vote: rv.pre_vote,
                    granted: true,
                }),
            );
            if !rv.pre_vote {
                // Persisted via Ready::hard_state before the grant leaves (C1).
                self.vote = from;
                self.election_elapsed = 0;
                self.reset_randomized_timeout();
            }
        } else {
            self.send(
                from,
                Body::RequestVoteResponse(RequestVoteResponse {
                    pre_vote: rv.pre_vote,
                    granted: false,
                }),
            );
        }
    }

    pub(super) fn handle_vote_response(&mut self, from: u64, mterm: u64, r: RequestVoteResponse) {
        let wanted = match self.role {
            // A granted pre-vote is answered at term+1, a refusal at the voter's term (== ours;
            // higher ones already made us follower).
            Role::PreCandidate => r.pre_vote && (mterm == self.term + 1 || !r.granted),
            Role::Candidate => !r.pre_vote && mterm == self.term,
            _ => false,
        };
        if !wanted || !self.is_voter(from) {
            return;
        }
        self.votes.record(from, r.granted);
        self.tally();
    }

    /// A leader asked us to take over (leadership transfer): campaign now, skipping PreVote
    /// and voters' lease check.
    pub(super) fn handle_timeout_now(&mut self) {
        if self.is_voter(self.id()) {
            self.campaign(true);
        }
    }
}
