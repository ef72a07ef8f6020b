//! Membership changes: learners, simple and joint changes, the safety rules, removing the
//! leader, removed nodes, and configurations across truncation and restart.

use super::*;
use crate::raft::{ConfChangeError, ConfChangeOp, ConfChangeRequest};

fn add_voter(id: u64) -> ConfChangeOp {
    ConfChangeOp::AddVoter {
        id,
        context: Bytes::from(format!("addr-{id}")),
    }
}

fn add_learner(id: u64) -> ConfChangeOp {
    ConfChangeOp::AddLearner {
        id,
        context: Bytes::from(format!("addr-{id}")),
    }
}

fn change(net: &mut Net, leader: u64, ops: Vec<ConfChangeOp>) -> Result<u64, ConfChangeError> {
    let r = net.node(leader).propose_conf_change(&ConfChangeRequest {
        ops,
        expected_conf_index: None,
    });
    net.settle();
    r
}

fn voters(net: &Net, id: u64) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let c = net.n(id).conf();
    (
        c.voters.clone(),
        c.voters_outgoing.clone(),
        c.learners.clone(),
    )
}

/// A 3-node cluster with 1 elected and its no-op committed.
fn three() -> Net {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net
}

#[test]
fn a_learner_gets_the_log_but_never_counts() {
    let mut net = three();
    net.add_node(4);
    change(&mut net, 1, vec![add_learner(4)]).unwrap();
    net.propose(1, "x");
    assert_eq!(net.n(4).log.last_index(), net.n(1).log.last_index());
    assert_eq!(voters(&net, 4), (vec![1, 2, 3], vec![], vec![4]));
    // Voters 2 and 3 cut off: the learner's ack must not make a quorum with the leader's.
    net.isolate(2);
    net.isolate(3);
    let before = net.n(1).commit;
    let i = net.node(1).propose(Bytes::from("y")).unwrap();
    net.settle();
    assert_eq!(
        net.n(4).log.last_index(),
        i,
        "the learner still gets the entry"
    );
    assert_eq!(
        net.n(1).commit,
        before,
        "learner ack counted towards commit"
    );
    // A learner never campaigns, however long it hears nothing.
    for _ in 0..100 {
        net.tick(4);
    }
    net.settle();
    assert_eq!(net.n(4).role, Role::Follower);
    assert_eq!(net.n(4).term, net.n(1).term);
}

#[test]
fn planted_learner_votes_bug_commits_without_a_quorum() {
    // The same scenario with the planted bug: commit moves on the learner's ack alone. Proves
    // the test above (and the simulator's learner checks) can fail.
    let mut net = Net::new(3, |c| c.planted_bug = PlantedBug::LearnerVotes);
    net.elect(1);
    net.add_node(4);
    net.add_node(5);
    change(&mut net, 1, vec![add_learner(4)]).unwrap();
    change(&mut net, 1, vec![add_learner(5)]).unwrap();
    net.isolate(2);
    net.isolate(3);
    let i = net.node(1).propose(Bytes::from("y")).unwrap();
    net.settle();
    assert_eq!(net.n(1).commit, i);
}

#[test]
fn one_voter_change_is_direct_and_counts_at_once() {
    let mut net = three();
    net.add_node(4);
    let at = change(&mut net, 1, vec![add_voter(4)]).unwrap();
    assert_eq!(voters(&net, 1), (vec![1, 2, 3, 4], vec![], vec![]));
    assert!(net.n(1).commit >= at);
    // Four voters need three: with 3 and 4 gone, 1 and 2 cannot commit.
    net.isolate(3);
    net.isolate(4);
    let before = net.n(1).commit;
    net.node(1).propose(Bytes::from("z")).unwrap();
    net.settle();
    assert_eq!(net.n(1).commit, before);
    net.heal();
    net.tick_all();
    net.settle();
    assert!(net.n(1).commit > before);
}

#[test]
fn joint_change_needs_both_majorities_and_leaves_by_itself() {
    let mut net = three();
    net.add_node(4);
    net.add_node(5);
    // While the joint entry replicates, 2 and 3 are cut off: {1, 4, 5} is a majority of the
    // new voters but only one of three old ones, so C_old,new must not commit.
    net.isolate(2);
    net.isolate(3);
    let at = change(&mut net, 1, vec![add_voter(4), add_voter(5)]).unwrap();
    assert_eq!(
        voters(&net, 1),
        (vec![1, 2, 3, 4, 5], vec![1, 2, 3], vec![])
    );
    assert!(
        net.n(1).commit < at,
        "joint entry committed without the old majority"
    );
    assert_eq!(
        net.node(1)
            .propose_conf_change(&ConfChangeRequest {
                ops: vec![ConfChangeOp::Remove { id: 5 }],
                expected_conf_index: None
            })
            .unwrap_err(),
        ConfChangeError::ChangeInProgress { conf_index: at },
        "a second change while the first is in flight"
    );
    net.heal();
    net.tick_all();
    net.settle();
    // Committed; the leader appended C_new at once and it committed too.
    assert_eq!(voters(&net, 1), (vec![1, 2, 3, 4, 5], vec![], vec![]));
    for id in 1..=5 {
        assert_eq!(
            voters(&net, id),
            (vec![1, 2, 3, 4, 5], vec![], vec![]),
            "node {id}"
        );
    }
    let (conf_index, _) = net.n(1).conf_state();
    assert!(net.n(1).commit >= conf_index && conf_index > at);
}

#[test]
fn joint_election_needs_both_majorities() {
    let mut net = three();
    net.add_node(4);
    net.add_node(5);
    // Everyone but 3 gets the joint entry; 2's acks are lost, so no majority of the old
    // voters {1, 2, 3} holds it and it stays uncommitted.
    net.filter = Some(Box::new(|m| match m.body {
        Some(Body::AppendEntries(_)) => m.to != 3,
        Some(Body::AppendEntriesResponse(_)) => m.from != 2,
        _ => true,
    }));
    change(&mut net, 1, vec![add_voter(4), add_voter(5)]).unwrap();
    net.filter = None;
    assert_eq!(voters(&net, 2).1, vec![1, 2, 3], "node 2 is joint");
    assert!(net.n(1).commit < net.n(1).conf_state().0);
    // 1 and 3 gone: 4 gets 2's and 5's votes, a majority of the new voters {1..5}, but only
    // one of the old {1, 2, 3}.
    net.isolate(1);
    net.isolate(3);
    net.node(4).campaign(true);
    net.settle();
    assert_ne!(net.n(4).role, Role::Leader, "won without the old majority");
    assert_ne!(net.n(2).role, Role::Leader);
    // With 3 back, 2 wins: 3 (old half) and 4, 5 (new half) vote for it.
    net.heal();
    net.isolate(1);
    net.node(2).campaign(true);
    net.settle();
    let roles: Vec<_> = (1..=5)
        .map(|i| {
            (
                i,
                net.n(i).role,
                net.n(i).term,
                net.n(i).vote,
                net.n(i).log.last_index(),
                voters(&net, i),
            )
        })
        .collect();
    assert_eq!(net.n(2).role, Role::Leader, "{roles:?}");
    // The new leader finishes the change: commits C_old,new with its no-op, then leaves it.
    net.tick_all();
    net.settle();
    assert_eq!(voters(&net, 2), (vec![1, 2, 3, 4, 5], vec![], vec![]));
}

#[test]
fn a_new_leader_proposes_no_change_before_its_first_commit() {
    let mut net = three();
    // 2 takes over, but no append ack reaches it: its no-op stays uncommitted.
    net.filter = Some(Box::new(|m| {
        !matches!(m.body, Some(Body::AppendEntriesResponse(_)))
    }));
    net.node(2).campaign(true);
    net.settle();
    assert_eq!(net.n(2).role, Role::Leader);
    net.add_node(4);
    let r = net.node(2).propose_conf_change(&ConfChangeRequest {
        ops: vec![add_learner(4)],
        expected_conf_index: None,
    });
    assert_eq!(r.unwrap_err(), ConfChangeError::LeaderNotReady);
    net.filter = None;
    net.tick(2);
    net.settle();
    assert!(change(&mut net, 2, vec![add_learner(4)]).is_ok());
}

#[test]
fn conditional_change_refuses_a_stale_configuration_index() {
    let mut net = three();
    net.add_node(4);
    net.add_node(5);
    let (seen, _) = net.n(1).conf_state();
    change(&mut net, 1, vec![add_learner(4)]).unwrap();
    let r = net.node(1).propose_conf_change(&ConfChangeRequest {
        ops: vec![add_learner(5)],
        expected_conf_index: Some(seen),
    });
    let (now, _) = net.n(1).conf_state();
    assert_eq!(
        r.unwrap_err(),
        ConfChangeError::ConfIndexMismatch { current: now }
    );
    let r = net.node(1).propose_conf_change(&ConfChangeRequest {
        ops: vec![add_learner(5)],
        expected_conf_index: Some(now),
    });
    assert!(r.is_ok());
}

#[test]
fn removing_the_leader_hands_leadership_over() {
    let mut net = three();
    net.propose(1, "a");
    change(&mut net, 1, vec![ConfChangeOp::Remove { id: 1 }]).unwrap();
    // The removal committed; 1 sent TimeoutNow to the most up-to-date voter and stepped down.
    let roles: Vec<_> = (1..=3)
        .map(|i| (i, net.n(i).role, net.n(i).term, voters(&net, i)))
        .collect();
    let leader = net
        .leader()
        .unwrap_or_else(|| panic!("no leader without an election timeout: {roles:?}"));
    assert!(leader == 2 || leader == 3, "leader {leader}");
    assert_ne!(net.n(1).role, Role::Leader);
    assert_eq!(voters(&net, leader), (vec![2, 3], vec![], vec![]));
    assert!(net.n(leader).conf().removed.contains(&1));
    // The cluster goes on without 1.
    let i = net.propose(leader, "b");
    assert!(net.n(leader).commit >= i);
}

#[test]
fn a_removed_node_that_comes_back_is_told_and_cannot_disrupt() {
    let mut net = three();
    // 3 is down while the cluster removes it.
    net.isolate(3);
    change(&mut net, 1, vec![ConfChangeOp::Remove { id: 3 }]).unwrap();
    let term = net.n(1).term;
    assert_eq!(voters(&net, 1).0, vec![1, 2]);
    // 3 returns still believing it is a voter and campaigns (no PreVote help: a real vote).
    net.heal();
    net.node(3).campaign(true);
    net.settle();
    assert_eq!(
        net.n(1).term,
        term,
        "a removed node moved the cluster's term"
    );
    assert_eq!(net.leader(), Some(1));
    assert!(net.n(3).is_removed(), "node 3 was not told it was removed");
    // Told, it never campaigns again.
    for _ in 0..100 {
        net.tick(3);
    }
    net.settle();
    assert_eq!(net.leader(), Some(1));
    assert_eq!(net.n(1).term, term);
}

#[test]
fn a_truncated_configuration_entry_stops_being_in_force() {
    let mut net = three();
    net.add_node(4);
    // 1 appends a change that nobody receives, then is cut off.
    net.isolate(1);
    let at = net
        .node(1)
        .propose_conf_change(&ConfChangeRequest {
            ops: vec![add_learner(4)],
            expected_conf_index: None,
        })
        .unwrap();
    net.settle();
    assert_eq!(voters(&net, 1).2, vec![4], "in force on 1 once appended");
    // 2 and 3 elect 2, whose no-op takes index `at`.
    net.node(2).campaign(true);
    net.settle();
    assert_eq!(net.n(2).role, Role::Leader);
    net.heal();
    net.tick_all();
    net.settle();
    // 1 took 2's log: the entry holding the change is gone, and so is the change.
    assert_eq!(net.n(1).log.term(at), Ok(net.n(2).term));
    assert_eq!(voters(&net, 1), (vec![1, 2, 3], vec![], vec![]));
    assert!(net.n(1).conf_state().0 < at);
}

#[test]
fn configurations_in_the_log_survive_a_restart() {
    let mut net = three();
    net.add_node(4);
    change(&mut net, 1, vec![add_learner(4)]).unwrap();
    net.isolate(2);
    net.isolate(3);
    // An uncommitted change is in force after a restart too (it takes effect when appended).
    net.node(1)
        .propose_conf_change(&ConfChangeRequest {
            ops: vec![add_voter(4)],
            expected_conf_index: None,
        })
        .unwrap();
    net.settle();
    let before = net.n(1).conf_state();
    let before = (before.0, before.1.clone());
    net.restart(1);
    let after = net.n(1).conf_state();
    assert_eq!((after.0, after.1.clone()), before);
    net.restart(2);
    assert_eq!(voters(&net, 2), (vec![1, 2, 3], vec![], vec![4]));
}

#[test]
fn a_node_that_appended_its_own_removal_asks_and_is_told() {
    let mut net = three();
    // The leader removes 3, then itself: it appended its own removal, handed off, and is no
    // voter in its own configuration, so it never campaigns. It must still learn it is out.
    change(&mut net, 1, vec![ConfChangeOp::Remove { id: 3 }]).unwrap();
    let term = net.n(1).term;
    change(&mut net, 1, vec![ConfChangeOp::Remove { id: 1 }]).unwrap();
    assert!(
        net.n(1).conf().removed.contains(&1),
        "1 never appended its removal"
    );
    for _ in 0..100 {
        net.tick(1);
        net.tick(3);
        net.settle();
    }
    assert!(net.n(3).is_removed(), "removed follower 3 was never told");
    assert!(net.n(1).is_removed(), "removed leader 1 was never told");
    assert_eq!(net.leader(), Some(2));
    assert!(
        net.n(2).term <= term + 1,
        "asking moved the term: {}",
        net.n(2).term
    );
}
