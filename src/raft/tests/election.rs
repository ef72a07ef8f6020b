//! Election, PreVote and CheckQuorum (checklist E*, V*, Q*).

use super::*;

fn vote_requests(rd: &Ready) -> Vec<(u64, u64, RequestVote)> {
    rd.messages
        .iter()
        .filter_map(|m| match body_of(m) {
            Body::RequestVote(rv) => Some((m.to, m.term, *rv)),
            _ => None,
        })
        .collect()
}

fn vote_answer(rd: &Ready, to: u64) -> Option<(u64, bool)> {
    rd.messages.iter().find_map(|m| match body_of(m) {
        Body::RequestVoteResponse(r) if m.to == to => Some((m.term, r.granted)),
        _ => None,
    })
}

#[test]
fn e1_new_node_is_silent_follower() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[1, 1, 2], 2, 1, 2);
    assert_eq!(n.role, Role::Follower);
    assert!(!n.has_ready());
    for _ in 0..9 {
        n.tick();
    }
    assert!(n.ready().messages.is_empty());
}

#[test]
fn e2_higher_term_makes_any_role_follower() {
    for role in [
        Role::Follower,
        Role::Candidate,
        Role::Leader,
        Role::PreCandidate,
    ] {
        let mut c = cfg(1);
        c.pre_vote = role == Role::PreCandidate;
        let mut n = node_with(c, &[1, 2, 3], &[], 0, 0, 0);
        match role {
            Role::Follower => {}
            Role::Candidate | Role::PreCandidate => n.campaign(false),
            Role::Leader => {
                n.campaign(false);
                n.step(vote_resp(2, 1, 1, true, false));
            }
        }
        assert_eq!(n.role, role);
        n.step(append(2, 1, 5, (0, 0), vec![], 0));
        assert_eq!(
            (n.role, n.term, n.leader),
            (Role::Follower, 5, 2),
            "from {role:?}"
        );
    }
}

#[test]
fn e3_lower_term_message_changes_nothing_and_gets_our_term() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[1, 2], 5, 3, 1);
    drain(&mut n);
    n.step(append(2, 1, 4, (2, 2), vec![ent(3, 4)], 3));
    assert_eq!((n.term, n.vote, n.commit, n.log.last_index()), (5, 3, 1, 2));
    let rd = n.ready();
    assert!(rd.hard_state.is_none());
    assert_eq!(rd.messages.len(), 1);
    assert_eq!(rd.messages[0].term, 5);
    assert_eq!(rd.messages[0].to, 2);
}

#[test]
fn e4_timeout_starts_election() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[1, 1, 2], 2, 0, 1);
    drain(&mut n);
    tick_timeout(&mut n);
    assert_eq!(n.role, Role::Candidate);
    let rd = n.ready();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((3, 1)));
    let reqs = vote_requests(&rd);
    assert_eq!(reqs.len(), 2);
    for (to, term, rv) in reqs {
        assert!(to == 2 || to == 3);
        assert_eq!(term, 3);
        assert_eq!(
            (rv.last_log_index, rv.last_log_term, rv.pre_vote),
            (3, 2, false)
        );
    }
}

#[test]
fn e5_candidate_retries_at_next_term() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    tick_timeout(&mut n);
    assert_eq!(n.term, 1);
    n.ready();
    tick_timeout(&mut n);
    assert_eq!((n.role, n.term), (Role::Candidate, 2));
    assert_eq!(vote_requests(&n.ready()).len(), 2);
}

#[test]
fn e6_vote_counting_table() {
    // (voters, grants, denials) -> role
    let cases: &[(u64, &[u64], &[u64], Role)] = &[
        (1, &[], &[], Role::Leader),
        (3, &[2], &[], Role::Leader),
        (3, &[], &[2], Role::Candidate),
        (3, &[], &[2, 3], Role::Follower),
        (5, &[2], &[], Role::Candidate),
        (5, &[2, 3], &[], Role::Leader),
        (5, &[2], &[3, 4], Role::Candidate),
        (5, &[], &[2, 3, 4], Role::Follower),
    ];
    for (size, grants, denials, want) in cases {
        let voters: Vec<u64> = (1..=*size).collect();
        let mut n = node_with(cfg(1), &voters, &[], 0, 0, 0);
        n.campaign(false);
        for &g in *grants {
            n.step(vote_resp(g, 1, 1, true, false));
        }
        for &d in *denials {
            n.step(vote_resp(d, 1, 1, false, false));
        }
        assert_eq!(
            n.role, *want,
            "size {size} grants {grants:?} denials {denials:?}"
        );
    }
}

#[test]
fn e7_one_vote_per_term() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[], 1, 2, 0);
    n.step(vote_req(2, 1, 1, 0, 0, false));
    assert_eq!(vote_answer(&n.ready(), 2), Some((1, true)));
    n.step(vote_req(3, 1, 1, 0, 0, false));
    assert_eq!(vote_answer(&n.ready(), 3), Some((1, false)));
    assert_eq!(n.vote, 2);
}

#[test]
fn e8_up_to_date_check() {
    // voter log [1, 2, 2] (last term 2, index 3)
    let cases = [
        ((3, 2), true),
        ((4, 2), true),
        ((2, 2), false),
        ((1, 3), true), // higher term beats longer log
        ((9, 1), false),
    ];
    for ((li, lt), want) in cases {
        let mut n = node_with(cfg(1), &[1, 2, 3], &[1, 2, 2], 2, 0, 0);
        n.step(vote_req(2, 1, 3, li, lt, false));
        assert_eq!(
            vote_answer(&n.ready(), 2).map(|a| a.1),
            Some(want),
            "({li}, {lt})"
        );
    }
}

#[test]
fn e9_follower_with_leader_votes_for_no_one_else() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[], 1, 0, 0);
    n.step(heartbeat(2, 1, 2, 0, 0));
    n.ready();
    n.step(vote_req(3, 1, 2, 5, 2, false));
    assert_eq!(vote_answer(&n.ready(), 3), Some((2, false)));
}

#[test]
fn e10_candidate_accepts_same_term_leader() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    n.campaign(false);
    n.step(heartbeat(2, 1, 1, 0, 0));
    assert_eq!((n.role, n.leader, n.term), (Role::Follower, 2, 1));
}

#[test]
fn e11_randomized_timeouts_in_range() {
    let mut seen = HashSet::new();
    let mut ties = 0;
    for round in 0..500u64 {
        let mut ts = vec![];
        for id in 1..=5u64 {
            let mut c = cfg(id);
            c.seed = round * 1000 + id;
            let mut n = node_with(c, &[1, 2, 3, 4, 5], &[], 0, 0, 0);
            let t = n.randomized_timeout;
            assert!((10..20).contains(&t), "timeout {t} out of [10, 20)");
            seen.insert(t);
            ts.push(t);
            // Redrawn on each reset: ticking to the timeout campaigns exactly then.
            for _ in 0..t - 1 {
                n.tick();
            }
            assert_eq!(n.role, Role::Follower);
            n.tick();
            assert_eq!(n.role, Role::Candidate);
        }
        let min = *ts.iter().min().unwrap();
        if ts.iter().filter(|&&t| t == min).count() > 1 {
            ties += 1;
        }
    }
    assert_eq!(seen.len(), 10, "every value in [10, 20) should be drawn");
    assert!(ties <= 150, "{ties} ties of 500");
}

#[test]
fn e11_vote_grant_resets_timer() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    for _ in 0..9 {
        n.tick();
    }
    n.step(vote_req(2, 1, 1, 0, 0, false));
    assert_eq!(n.election_elapsed, 0);
    for _ in 0..9 {
        n.tick();
    }
    assert_eq!(n.role, Role::Follower);
}

#[test]
fn e12_isolated_candidate_cannot_win_but_raises_terms() {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.isolate(3);
    net.propose(1, "a");
    net.campaign(3);
    net.campaign(3);
    let t3 = net.node(3).term;
    assert!(t3 > net.node(1).term);
    net.heal();
    net.campaign(3);
    // 3's log is short of "a": it cannot win, but everyone moved to its term.
    assert_ne!(net.node(3).role, Role::Leader);
    let t = net.node(3).term;
    assert!(net.peers.values().all(|p| p.raw.term == t));
    net.campaign(1);
    assert_eq!(net.leader(), Some(1));
}

#[test]
fn e13_winner_overwrites_uncommitted_higher_term_entries() {
    let mut net = Net::new(5, |_| {});
    // n1, n2 = [t1], n3 = [t2], n4, n5 voted in term 2 with empty logs.
    for (id, terms, term, vote) in [
        (1u64, vec![1u64], 1u64, 0u64),
        (2, vec![1], 1, 0),
        (3, vec![2], 2, 3),
        (4, vec![], 2, 3),
        (5, vec![], 2, 3),
    ] {
        let p = net.peers.get_mut(&id).unwrap();
        p.raw = node_with(cfg(id), &[1, 2, 3, 4, 5], &terms, term, vote, 0);
        p.hs = HardState {
            term,
            vote,
            commit: 0,
        };
    }
    net.campaign(1); // term 2: loses (4, 5 and 3 voted in term 2)
    assert_ne!(net.node(1).role, Role::Leader);
    net.campaign(1); // term 3: wins
    assert_eq!(net.node(1).role, Role::Leader);
    net.settle();
    for id in 1..=5 {
        assert_eq!(net.log_terms(id), vec![1, 3], "node {id}");
    }
}

#[test]
fn e14_qualifying_higher_term_vote_granted_from_any_role() {
    for role in [Role::Follower, Role::Candidate, Role::Leader] {
        let mut n = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
        if role != Role::Follower {
            n.campaign(false);
        }
        if role == Role::Leader {
            n.step(vote_resp(2, 1, 1, true, false));
        }
        n.ready();
        n.step(vote_req(3, 1, 2, 10, 2, false));
        assert_eq!((n.role, n.term, n.vote), (Role::Follower, 2, 3), "{role:?}");
        assert_eq!(vote_answer(&n.ready(), 3), Some((2, true)));
    }
}

#[test]
fn e15_late_votes_of_left_round_ignored() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    n.campaign(false);
    n.step(heartbeat(2, 1, 1, 0, 0));
    assert_eq!(n.role, Role::Follower);
    n.step(vote_resp(3, 1, 1, true, false));
    assert_eq!(n.role, Role::Follower);
    assert!(n.votes.is_empty());
}

#[test]
fn e16_non_voter_never_campaigns() {
    let mut n = node_with(cfg(1), &[2, 3, 4], &[], 1, 0, 0);
    for _ in 0..100 {
        n.tick();
    }
    n.step(msg(2, 1, 1, Body::TimeoutNow(TimeoutNow {})));
    n.step(vote_resp(2, 1, 2, true, false));
    n.step(vote_resp(3, 1, 2, true, false));
    assert_eq!(n.role, Role::Follower);
    assert!(vote_requests(&n.ready()).is_empty());
}

#[test]
fn planted_vote_twice_grants_second_candidate() {
    let mut c = cfg(1);
    c.planted_bug = PlantedBug::VoteTwice;
    let mut n = node_with(c, &[1, 2, 3], &[], 1, 2, 0);
    n.step(vote_req(3, 1, 1, 0, 0, false));
    assert_eq!(vote_answer(&n.ready(), 3), Some((1, true)));
}

// ----- PreVote -----

fn pv_cfg(id: u64) -> Config {
    let mut c = cfg(id);
    c.pre_vote = true;
    c
}

#[test]
fn v1_pre_candidate_keeps_term_and_asks_term_plus_one() {
    let mut n = node_with(pv_cfg(1), &[1, 2, 3], &[1, 1], 1, 0, 0);
    drain(&mut n);
    tick_timeout(&mut n);
    assert_eq!((n.role, n.term, n.vote), (Role::PreCandidate, 1, 0));
    let rd = n.ready();
    assert!(rd.hard_state.is_none());
    let reqs = vote_requests(&rd);
    assert_eq!(reqs.len(), 2);
    for (_, term, rv) in reqs {
        assert_eq!(
            (term, rv.pre_vote, rv.last_log_index, rv.last_log_term),
            (2, true, 2, 1)
        );
    }
}

#[test]
fn v2_answering_prevote_changes_nothing() {
    for role in [Role::Follower, Role::Candidate, Role::Leader] {
        for ((li, lt), want) in [((2, 1), true), ((1, 1), false)] {
            let mut n = node_with(cfg(1), &[1, 2, 3], &[1, 1], 1, 0, 0);
            if role != Role::Follower {
                n.campaign(false);
            }
            if role == Role::Leader {
                n.step(vote_resp(2, 1, 2, true, false));
            }
            drain(&mut n);
            let before = (n.term, n.vote, n.role);
            // Leader's own log grew by its no-op: compare against its up-to-dateness.
            let want = want && role != Role::Leader;
            n.step(vote_req(3, 1, n.term + 1, li, lt, true));
            assert_eq!((n.term, n.vote, n.role), before, "{role:?}");
            let rd = n.ready();
            assert!(rd.hard_state.is_none());
            assert_eq!(
                vote_answer(&rd, 3).map(|a| a.1),
                Some(want),
                "{role:?} ({li},{lt})"
            );
        }
    }
}

#[test]
fn v3_prevote_majority_then_real_election() {
    let mut n = node_with(pv_cfg(1), &[1, 2, 3], &[], 1, 0, 0);
    tick_timeout(&mut n);
    n.ready();
    n.step(vote_resp(2, 1, 2, true, true));
    assert_eq!((n.role, n.term), (Role::Candidate, 2));
    let reqs = vote_requests(&n.ready());
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|(_, t, rv)| *t == 2 && !rv.pre_vote));

    let mut n = node_with(pv_cfg(1), &[1, 2, 3], &[], 1, 0, 0);
    tick_timeout(&mut n);
    n.step(vote_resp(2, 1, 1, false, true));
    n.step(vote_resp(3, 1, 1, false, true));
    assert_eq!((n.role, n.term), (Role::Follower, 1));
}

#[test]
fn v4_rejoining_node_cannot_disturb_leader() {
    let mut net = Net::new(3, |c| c.pre_vote = true);
    net.elect(1);
    net.isolate(3);
    for i in 0..3 {
        net.propose(1, &format!("x{i}"));
    }
    for _ in 0..5 {
        tick_timeout(net.node(3));
        net.settle();
    }
    assert_eq!(net.node(3).term, 1);
    net.heal();
    tick_timeout(net.node(3));
    net.settle();
    assert_eq!(net.leader(), Some(1));
    assert!(net.peers.values().all(|p| p.raw.term == 1));
}

#[test]
fn v5_lower_term_prevote_refused_explicitly_and_cluster_elects() {
    let mut n = node_with(pv_cfg(1), &[1, 2, 3], &[], 5, 0, 0);
    n.step(vote_req(3, 1, 3, 0, 0, true));
    assert_eq!(vote_answer(&n.ready(), 3), Some((5, false)));

    let mut net = Net::new(3, |c| {
        c.pre_vote = true;
        c.check_quorum = true;
    });
    net.elect(1);
    net.isolate(3);
    net.propose(1, "a");
    // 2 ends up at a higher term than 3.
    net.isolate(1);
    net.cut.remove(&(2, 3));
    net.cut.remove(&(3, 2));
    let mut elected = false;
    for _ in 0..3 * 20 {
        net.tick(2);
        net.tick(3);
        net.settle();
        if net.node(2).role == Role::Leader || net.node(3).role == Role::Leader {
            elected = true;
            break;
        }
    }
    assert!(elected, "no leader among 2 and 3 within 3 timeouts");
    assert_eq!(net.node(2).role, Role::Leader, "3 lacks entry a");
}

// ----- CheckQuorum -----

fn cq_cfg(id: u64) -> Config {
    let mut c = cfg(id);
    c.check_quorum = true;
    c
}

#[test]
fn q1_leader_without_quorum_steps_down() {
    let mut net = Net::new(3, |c| c.check_quorum = true);
    net.elect(1);
    net.isolate(1);
    // Acks from before the cut count for the current round; within two rounds it steps down.
    for _ in 0..21 {
        net.tick(1);
        net.settle();
    }
    assert_eq!(net.node(1).role, Role::Follower);

    // With peer replies every tick it stays leader.
    let mut net = Net::new(3, |c| c.check_quorum = true);
    net.elect(1);
    for _ in 0..50 {
        net.tick(1);
        net.settle();
    }
    assert_eq!(net.node(1).role, Role::Leader);
}

#[test]
fn q2_follower_in_lease_ignores_vote_requests() {
    let mut n = node_with(cq_cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    n.step(heartbeat(1, 2, 1, 0, 0));
    for _ in 0..5 {
        n.tick();
    }
    n.ready();
    n.step(vote_req(3, 2, 2, 0, 0, false));
    assert_eq!(n.term, 1);
    assert!(n.ready().messages.is_empty());
    // Transfer-triggered requests pass.
    let mut m = vote_req(3, 2, 2, 0, 0, false);
    if let Some(Body::RequestVote(rv)) = m.body.as_mut() {
        rv.transfer = true;
    }
    n.step(m);
    assert_eq!((n.term, n.vote), (2, 3));
    // Past T without leader contact, requests are considered.
    let mut n = node_with(cq_cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    n.step(heartbeat(1, 2, 1, 0, 0));
    for _ in 0..10 {
        n.tick();
    }
    n.step(vote_req(3, 2, 2, 0, 0, false));
    assert_eq!((n.term, n.vote), (2, 3));
}

#[test]
fn q3_stale_leader_learns_higher_term_and_election_follows() {
    let mut net = Net::new(3, |c| c.check_quorum = true);
    net.elect(1);
    net.isolate(1);
    for _ in 0..2 {
        net.node(3).campaign(false);
        net.settle();
    }
    net.heal();
    net.node(1).bcast_heartbeat(0);
    net.settle();
    assert_eq!(net.node(1).role, Role::Follower);
    assert_eq!(net.n(1).term, net.n(3).term);
    // A real election follows.
    for _ in 0..100 {
        net.tick_all();
        net.settle();
        if net.leader().is_some() {
            break;
        }
    }
    assert!(net.leader().is_some());
}

/// A voter that refuses a higher-term vote request (the candidate's log is behind) adopts
/// the term but keeps its election timer: only a granted vote restarts it (Raft Figure 2).
/// Otherwise a stale candidate with a faster clock starves every election (PreVote off).
#[test]
fn e_refused_vote_request_keeps_the_election_timer() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[1, 1, 1], 1, 0, 0);
    let timeout = n.randomized_timeout;
    for _ in 0..timeout - 1 {
        n.tick();
    }
    let elapsed = n.election_elapsed;
    assert_eq!(elapsed, timeout - 1);
    // Node 3 asks at term 5 with an empty log: refused, term adopted.
    n.step(vote_req(3, 1, 5, 0, 0, false));
    assert_eq!(n.term, 5);
    assert_eq!(vote_answer(&n.ready(), 3), Some((5, false)));
    assert_eq!(
        n.election_elapsed, elapsed,
        "a refused vote request restarted the election timer"
    );
    // Still within the (redrawn) timeout window: the node campaigns once it expires.
    let mut ticks = 0;
    while n.role == Role::Follower {
        n.tick();
        ticks += 1;
        assert!(
            ticks <= 2 * cfg(1).election_tick,
            "never campaigned ({ticks} ticks)"
        );
    }
    assert_eq!(n.term, 6, "campaigns in the next term");
}

/// A granted vote does restart the timer.
#[test]
fn e_granted_vote_restarts_the_election_timer() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[1], 1, 0, 0);
    n.tick();
    n.tick();
    n.step(vote_req(3, 1, 5, 5, 1, false));
    assert_eq!(vote_answer(&n.ready(), 3), Some((5, true)));
    assert_eq!(n.election_elapsed, 0);
}
