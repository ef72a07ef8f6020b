//! Log replication, heartbeats, flow control and persistence ordering (L*, H*, F*, C*).

use super::*;

/// A leader of term `term` over voters 1..=n with log `terms` (elected by hand; its no-op
/// is appended and persisted).
fn leader_with(n: u64, terms: &[u64], term: u64) -> RawNode<MemLog> {
    let voters: Vec<u64> = (1..=n).collect();
    let mut l = node_with(cfg(1), &voters, terms, term - 1, 0, 0);
    l.campaign(false);
    for v in 2..=n {
        l.step(vote_resp(v, 1, term, true, false));
    }
    assert_eq!(l.role, Role::Leader);
    drain(&mut l);
    l
}

fn appends(rd: &Ready) -> Vec<(u64, AppendEntries)> {
    rd.messages
        .iter()
        .filter_map(|m| match body_of(m) {
            Body::AppendEntries(a) => Some((m.to, a.clone())),
            _ => None,
        })
        .collect()
}

fn append_resp(rd: &Ready) -> Option<AppendEntriesResponse> {
    rd.messages.iter().find_map(|m| match body_of(m) {
        Body::AppendEntriesResponse(r) => Some(*r),
        _ => None,
    })
}

fn terms_of(n: &RawNode<MemLog>) -> Vec<u64> {
    (n.log.first_index()..=n.log.last_index())
        .map(|i| n.log.term(i).unwrap())
        .collect()
}

#[test]
fn l1_proposal_appended_and_shipped() {
    let mut l = leader_with(3, &[1], 2);
    // Let both followers match the no-op so they are in replicate.
    l.step(append_ok(2, 1, 2, 2));
    l.step(append_ok(3, 1, 2, 2));
    drain(&mut l);
    let idx = l.propose(Bytes::from("x")).unwrap();
    assert_eq!(idx, 3);
    let rd = l.ready();
    assert_eq!(rd.entries.len(), 1);
    assert_eq!((rd.entries[0].index, rd.entries[0].term), (3, 2));
    let aps = appends(&rd);
    assert_eq!(aps.len(), 2);
    for (_, a) in aps {
        assert_eq!(
            (a.prev_log_index, a.prev_log_term, a.entries.len()),
            (2, 2, 1)
        );
        assert_eq!(a.commit, l.commit);
    }
}

#[test]
fn l2_follower_refuses_proposals_with_leader_hint() {
    let mut n = node_with(cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    assert_eq!(
        n.propose(Bytes::from("x")),
        Err(ProposeError::NotLeader { leader: None })
    );
    n.step(heartbeat(1, 2, 1, 0, 0));
    assert_eq!(
        n.propose(Bytes::from("x")),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
    assert_eq!(n.log.last_index(), 0);
}

#[test]
fn l3_new_leader_appends_noop_and_replicates() {
    let mut l = node_with(cfg(1), &[1, 2, 3], &[1, 1], 1, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 2, true, false));
    let rd = l.ready();
    assert_eq!(rd.entries.len(), 1);
    assert_eq!((rd.entries[0].index, rd.entries[0].term), (3, 2));
    assert!(rd.entries[0].data.is_empty());
    let to: HashSet<u64> = appends(&rd).iter().map(|(t, _)| *t).collect();
    assert_eq!(to, HashSet::from([2, 3]));
}

#[test]
fn l4_commit_needs_majority_of_current_term() {
    // (voters, acks by peers (match index), expected commit). Leader log [1, 1, 2(no-op)]
    // at term 2, so index 3 is the first current-term entry.
    type Acks<'a> = &'a [(u64, u64)];
    let cases: &[(u64, Acks, u64)] = &[
        (1, &[], 3),
        (3, &[], 0),
        (3, &[(2, 3)], 3),
        (3, &[(2, 2)], 0), // majority stores 2, but its term is 1
        (4, &[(2, 3)], 0),
        (4, &[(2, 3), (3, 3)], 3),
        (5, &[(2, 3), (3, 3)], 3),
        (5, &[(2, 3)], 0),
    ];
    for (n, acks, want) in cases {
        let mut l = leader_with(*n, &[1, 1], 2);
        for &(p, i) in *acks {
            l.step(append_ok(p, 1, 2, i));
        }
        assert_eq!(l.commit, *want, "{n} voters, acks {acks:?}");
    }
}

#[test]
fn l5_old_term_entry_not_committed_by_counting() {
    // 2 voters, leader at term 3 with log [1, 2] + no-op 3 at index 3.
    let mut l = leader_with(2, &[1, 2], 3);
    l.step(append_ok(2, 1, 3, 2));
    assert_eq!(l.commit, 0);
    l.step(append_ok(2, 1, 3, 3));
    assert_eq!(l.commit, 3);

    // The planted bug commits it.
    let voters = [1, 2];
    let mut c = cfg(1);
    c.planted_bug = PlantedBug::CommitOldTerm;
    let mut l = node_with(c, &voters, &[1, 2], 2, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 3, true, false));
    drain(&mut l);
    l.step(append_ok(2, 1, 3, 2));
    assert_eq!(l.commit, 2);
}

/// Raft paper Figure 8 on 5 nodes, from state (b): S1 and S2 hold (2, t2), S5 holds (2, t3),
/// S3 and S4 only (1, t1). S1 wins term 4 and gets (2, t2) onto S3 while its own term-4
/// entry is held back. Correct Raft must not commit index 2; then S5 wins term 5 and
/// overwrites it. With `PlantedBug::CommitOldTerm` index 2 is committed and applied, and
/// S5's overwrite hits a committed entry: the core's fatal invariant check fires.
fn figure8(bug: PlantedBug) -> Net {
    let mut net = Net::new(5, |c| c.planted_bug = bug);
    for (id, terms) in [
        (1u64, vec![1u64, 2]),
        (2, vec![1, 2]),
        (3, vec![1]),
        (4, vec![1]),
        (5, vec![1, 3]),
    ] {
        let p = net.peers.get_mut(&id).unwrap();
        let mut c = cfg(id);
        c.planted_bug = bug;
        c.max_msg_bytes = 1; // one entry per AppendEntries
        p.raw = node_with(c, &[1, 2, 3, 4, 5], &terms, 3, 0, 1);
        p.hs = HardState {
            term: 3,
            vote: 0,
            commit: 1,
        };
        p.applied = vec![ent(1, 1)];
    }
    // (c): S1 leads term 4; its term-4 entries never leave it.
    net.isolate(5);
    net.isolate(4);
    net.filter = Some(Box::new(|m: &mut Message| {
        if let Some(Body::AppendEntries(a)) = m.body.as_mut() {
            a.entries.retain(|e| e.term != 4);
        }
        true
    }));
    net.campaign(1);
    assert_eq!(net.n(1).role, Role::Leader);
    net.tick(1);
    net.settle();
    assert_eq!(net.log_terms(3), vec![1, 2]);
    // (d): S1 is cut off; S5 wins term 5 with S2, S3, S4 and replicates (2, t3).
    net.filter = None;
    net.heal();
    net.isolate(1);
    net.campaign(5); // term 4: S2, S3 already voted for S1
    net.campaign(5); // term 5
    assert_eq!(net.n(5).role, Role::Leader);
    net.propose(5, "after");
    net
}

#[test]
fn l5_figure8_old_term_entry_never_committed_by_counting() {
    let net = figure8(PlantedBug::None);
    assert_eq!(net.log_terms(2), vec![1, 3, 5, 5]);
    assert_eq!(net.log_terms(3), vec![1, 3, 5, 5]);
    assert!(net
        .peers
        .values()
        .all(|p| p.applied.iter().all(|e| e.term != 2)));
    // The planted bug commits (2, t2) and then S5's overwrite is caught as fatal.
    let r = std::panic::catch_unwind(|| figure8(PlantedBug::CommitOldTerm));
    let err = r.err().expect("CommitOldTerm was not caught");
    let text = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        text.contains("raft invariant breach"),
        "unexpected failure: {text}"
    );
}

#[test]
fn l6_commit_covers_earlier_terms_in_order() {
    let mut net = Net::new(3, |_| {});
    for (id, terms) in [(1u64, vec![1u64, 2]), (2, vec![1, 2]), (3, vec![1])] {
        let p = net.peers.get_mut(&id).unwrap();
        p.raw = node_with(cfg(id), &[1, 2, 3], &terms, 2, 0, 0);
        p.hs.term = 2;
    }
    net.elect(1);
    net.propose(1, "p");
    let applied: Vec<(u64, u64)> = net.peers[&1]
        .applied
        .iter()
        .map(|e| (e.index, e.term))
        .collect();
    assert_eq!(applied, vec![(1, 1), (2, 2), (3, 3), (4, 3)]);
    assert_eq!(net.peers[&1].applied[3].data, "p");
    for id in 2..=3 {
        net.node(1).bcast_heartbeat(0);
        net.settle();
        assert_eq!(net.peers[&id].applied.len(), 4, "node {id}");
    }
}

#[test]
fn l7_consistency_check() {
    for (prev, ok) in [((2, 1), false), ((3, 3), false), ((2, 2), true)] {
        let mut n = node_with(cfg(2), &[1, 2, 3], &[1, 2], 3, 0, 0);
        n.step(append(1, 2, 3, prev, vec![], 0));
        let r = append_resp(&n.ready()).unwrap();
        assert_eq!(r.success, ok, "prev {prev:?}");
        if ok {
            assert_eq!(r.match_index, 2);
        }
    }
}

#[test]
fn l8_skip_truncate_append() {
    let mut n = node_with(cfg(2), &[1, 2, 3], &[1, 2, 3], 4, 0, 0);
    n.step(append(1, 2, 4, (1, 1), vec![ent(2, 2)], 0));
    let rd = drain(&mut n);
    assert!(rd.entries.is_empty());
    assert_eq!(terms_of(&n), vec![1, 2, 3]);

    n.step(append(1, 2, 4, (1, 1), vec![ent(2, 3), ent(3, 4)], 0));
    let rd = drain(&mut n);
    assert_eq!(
        rd.entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        vec![(2, 3), (3, 4)]
    );
    assert_eq!(terms_of(&n), vec![1, 3, 4]);
    assert_eq!(n.store().last_index(), 3);
}

#[test]
fn l9_follower_commit_is_capped_by_what_the_message_vouches_for() {
    let mut n = node_with(cfg(2), &[1, 2, 3], &[1, 2], 2, 0, 0);
    n.step(append(1, 2, 2, (1, 1), vec![], 5));
    assert_eq!(n.commit, 1);
    n.step(append(1, 2, 2, (2, 2), vec![], 5));
    assert_eq!(n.commit, 2);
    n.step(append(1, 2, 2, (1, 1), vec![], 1));
    assert_eq!(n.commit, 2);
}

#[test]
fn l10_conflict_at_or_below_commit_is_fatal() {
    let r = std::panic::catch_unwind(|| {
        let mut n = node_with(cfg(2), &[1, 2, 3], &[1, 1, 1], 2, 0, 2);
        n.step(append(1, 2, 2, (1, 1), vec![ent(2, 2), ent(3, 2)], 3));
        n
    });
    assert!(r.is_err(), "conflict at committed index 2 must be fatal");
    // Above commit it is an ordinary truncation.
    let mut n = node_with(cfg(2), &[1, 2, 3], &[1, 1, 1], 2, 0, 2);
    n.step(append(1, 2, 2, (2, 1), vec![ent(3, 2)], 3));
    assert_eq!(terms_of(&n), vec![1, 1, 2]);
}

#[test]
fn l11_figure7_followers_repaired() {
    let leader: Vec<u64> = vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: Vec<Vec<u64>> = vec![
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6],
        vec![1, 1, 1, 4],
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        vec![1, 1, 1, 4, 4, 4, 4],
        vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    for f in followers {
        let mut net = Net::new(3, |_| {});
        let fterm = *f.last().unwrap();
        for (id, terms, term) in [(1u64, &leader, 7u64), (2, &f, fterm), (3, &vec![], 0)] {
            let p = net.peers.get_mut(&id).unwrap();
            p.raw = node_with(cfg(id), &[1, 2, 3], terms, term, 0, 0);
            p.hs.term = term;
        }
        // 1 wins with 3's vote (3 has an empty log); 2 may refuse.
        net.elect(1);
        net.propose(1, "z");
        net.node(1).bcast_heartbeat(0);
        net.settle();
        let lt = net.log_terms(1);
        assert_eq!(net.log_terms(2), lt, "follower {f:?}");
        assert_eq!(net.log_terms(3), lt);
    }
}

#[test]
fn l12_fast_backtracking_skips_a_term_per_round_trip() {
    // Follower [1,2,2,3x8] rejects prev (7, t4) with hint (7, t3).
    let mut f = node_with(cfg(2), &[1, 2], &[1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3], 4, 0, 0);
    f.step(append(1, 2, 4, (7, 4), vec![], 0));
    let r = append_resp(&f.ready()).unwrap();
    assert!(!r.success);
    assert_eq!((r.reject_index, r.hint_index, r.hint_term), (7, 7, 3));
    // Leader [1,2,2,4,4,4,4] (+ its no-op at 8, term 5) probing at next 8 -> prev (7, 4).
    let mut l = leader_with(2, &[1, 2, 2, 4, 4, 4, 4], 5);
    // Pretend the append with prev 7 was the outstanding probe.
    let msg = msg(2, 1, 5, Body::AppendEntriesResponse(r));
    l.step(msg);
    let aps = appends(&l.ready());
    assert_eq!(aps.len(), 1);
    assert_eq!((aps[0].1.prev_log_index, aps[0].1.prev_log_term), (3, 2));
}

#[test]
fn l13_stale_append_into_compacted_prefix() {
    let mut store = log_with(&[1, 1, 2, 3, 3, 3]);
    store.compact(5, 3).unwrap();
    let init = InitialState {
        hard_state: HardState {
            term: 3,
            vote: 0,
            commit: 5,
        },
        conf: conf(&[1, 2, 3]),
        applied: 5,
    };
    let mut n = RawNode::new(cfg(2), store, init).unwrap();
    n.step(append(1, 2, 3, (3, 2), vec![ent(4, 3)], 3));
    let r = append_resp(&n.ready()).unwrap();
    assert!(r.success);
    assert_eq!(r.match_index, 5);
    // The leader never moves its match point down on such an answer.
    let mut l = leader_with(3, &[1, 1, 2, 3, 3, 3], 4);
    l.step(append_ok(2, 1, 4, 7));
    l.step(append_ok(2, 1, 4, 5));
    assert_eq!(l.prs[&2].matched, 7);
}

#[test]
fn l14_leader_handles_responses() {
    let mut l = leader_with(3, &[1, 1], 2);
    // Probe at next 3: a stale rejection of prev 1 is ignored.
    let rej = |idx: u64, hint: u64| {
        msg(
            2,
            1,
            2,
            Body::AppendEntriesResponse(AppendEntriesResponse {
                success: false,
                reject_index: idx,
                hint_index: hint,
                hint_term: 0,
                ..Default::default()
            }),
        )
    };
    l.step(rej(1, 0));
    assert_eq!(l.prs[&2].next, 3);
    // The current rejection (prev 2) lowers next, never below match + 1.
    l.step(rej(2, 1));
    assert_eq!(l.prs[&2].next, 2);
    assert!(!appends(&l.ready()).is_empty());
    l.step(append_ok(2, 1, 2, 3));
    assert_eq!((l.prs[&2].matched, l.prs[&2].next), (3, 4));
    assert_eq!(l.commit, 3);
    l.step(rej(2, 1));
    assert_eq!(l.prs[&2].next, 4);
    assert_eq!(l.prs[&2].state, ProgressState::Replicate);
}

#[test]
fn l15_deposed_leader_append_changes_nothing() {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.propose(1, "a");
    net.elect(2);
    net.propose(2, "b");
    net.elect(1);
    let before: Vec<Vec<u64>> = (1..=3).map(|i| net.log_terms(i)).collect();
    // Term-2 append from 2 (its old leadership) with a conflicting entry.
    let old = append(2, 3, 2, (3, 2), vec![ent(4, 2), ent(5, 2)], 4);
    net.node(3).step(old);
    net.settle();
    let after: Vec<Vec<u64>> = (1..=3).map(|i| net.log_terms(i)).collect();
    assert_eq!(before, after);
}

// ----- heartbeats -----

#[test]
fn h1_heartbeat_commit_capped_by_match() {
    let mut l = leader_with(3, &[1, 1, 1, 1, 1], 2);
    l.step(append_ok(2, 1, 2, 5));
    l.step(append_ok(3, 1, 2, 6));
    assert_eq!(l.commit, 6);
    drain(&mut l);
    l.tick();
    let rd = l.ready();
    let hbs: HashMap<u64, u64> = rd
        .messages
        .iter()
        .filter_map(|m| match body_of(m) {
            Body::Heartbeat(h) => Some((m.to, h.commit)),
            _ => None,
        })
        .collect();
    assert_eq!(hbs, HashMap::from([(2, 5), (3, 6)]));
    // A follower's ticks send nothing.
    let mut f = node_with(cfg(2), &[1, 2, 3], &[1], 1, 0, 0);
    f.step(heartbeat(1, 2, 1, 0, 0));
    f.ready();
    for _ in 0..5 {
        f.tick();
    }
    assert!(f.ready().messages.is_empty());
}

#[test]
fn h2_heartbeat_resets_timer_and_raises_commit() {
    let mut f = node_with(cfg(2), &[1, 2, 3], &[1, 1, 1], 1, 0, 2);
    for _ in 0..9 {
        f.tick();
    }
    f.step(heartbeat(1, 2, 1, 3, 0));
    assert_eq!((f.commit, f.leader), (3, 1));
    f.step(heartbeat(1, 2, 1, 1, 0));
    assert_eq!(f.commit, 3);
    assert!(matches!(
        f.ready().messages.as_slice(),
        [m1, m2] if matches!(body_of(m1), Body::HeartbeatResponse(_)) && m2.to == 1
    ));
    for _ in 0..9 {
        f.tick();
    }
    assert_eq!(f.role, Role::Follower);
}

#[test]
fn h3_heartbeat_reply_from_lagging_follower_resends() {
    let mut l = leader_with(3, &[1, 1], 2);
    l.step(hb_resp(2, 1, 2, 0));
    assert_eq!(appends(&l.ready()).len(), 1);
    l.step(append_ok(2, 1, 2, 3));
    l.ready();
    l.step(hb_resp(2, 1, 2, 0));
    assert!(appends(&l.ready()).is_empty());
}

// ----- flow control -----

#[test]
fn f1_probe_sends_one_append_until_answered() {
    let mut l = leader_with(2, &[], 1);
    l.ready();
    for i in 0..10 {
        l.propose(Bytes::from(format!("p{i}"))).unwrap();
    }
    // The no-op went out as the probe at election: nothing more until a reply.
    assert!(appends(&l.ready()).is_empty());
    l.step(hb_resp(2, 1, 1, 0));
    assert_eq!(appends(&l.ready()).len(), 1);
}

/// A burst of heartbeat answers (a follower catching up on the heartbeats it missed while
/// stalled) resumes a probe once per tick, not once per answer.
#[test]
fn f1b_heartbeat_answers_resume_a_probe_at_most_once_per_tick() {
    let mut l = leader_with(2, &[], 1);
    l.ready();
    for i in 0..10 {
        l.propose(Bytes::from(format!("p{i}"))).unwrap();
    }
    assert!(appends(&l.ready()).is_empty());
    for _ in 0..20 {
        l.step(hb_resp(2, 1, 1, 0));
    }
    assert_eq!(
        appends(&l.ready()).len(),
        1,
        "one probe for the whole burst"
    );
    // Still unanswered a tick later: the next heartbeat answer probes again.
    l.tick();
    l.ready();
    l.step(hb_resp(2, 1, 1, 0));
    l.step(hb_resp(2, 1, 1, 0));
    assert_eq!(appends(&l.ready()).len(), 1);
}

#[test]
fn f2_first_success_switches_to_pipelining() {
    let mut c = cfg(1);
    c.max_msg_bytes = 1; // one entry per message
    let mut l = node_with(c, &[1, 2], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    drain(&mut l);
    for i in 0..5 {
        l.propose(Bytes::from(format!("p{i}"))).unwrap();
    }
    l.ready();
    l.step(append_ok(2, 1, 1, 1));
    assert_eq!(l.prs[&2].state, ProgressState::Replicate);
    let with_entries = appends(&l.ready())
        .into_iter()
        .filter(|(_, a)| !a.entries.is_empty())
        .count();
    assert_eq!(with_entries, 5);
    assert_eq!(l.prs[&2].next, 7);
}

#[test]
fn f3_inflight_window_caps_and_acks_free() {
    let mut c = cfg(1);
    c.max_msg_bytes = 1;
    c.max_inflight_msgs = 3;
    let mut l = node_with(c, &[1, 2], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    drain(&mut l);
    l.step(append_ok(2, 1, 1, 1));
    drain(&mut l);
    for i in 0..10 {
        l.propose(Bytes::from(format!("p{i}"))).unwrap();
    }
    assert_eq!(appends(&drain(&mut l)).len(), 3);
    l.step(append_ok(2, 1, 1, 2));
    assert_eq!(appends(&drain(&mut l)).len(), 1);
    l.step(append_ok(2, 1, 1, 4));
    assert_eq!(appends(&drain(&mut l)).len(), 2);
}

#[test]
fn f3_inflight_window_capped_by_bytes() {
    let mut c = cfg(1);
    c.max_msg_bytes = 1; // one entry per message
    c.max_inflight_bytes = 2500;
    let mut l = node_with(c, &[1, 2], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    drain(&mut l);
    l.step(append_ok(2, 1, 1, 1));
    drain(&mut l);
    // Mixed sizes: 1000, 1000, 1000 (window now 3000 >= 2500: full), then small ones.
    for size in [1000usize, 1000, 1000, 10, 10] {
        l.propose(Bytes::from(vec![7u8; size])).unwrap();
    }
    assert_eq!(appends(&drain(&mut l)).len(), 3);
    // Acking the first frees ~1000 bytes: one more (the 4th entry, small) fits, then the 5th.
    l.step(append_ok(2, 1, 1, 2));
    let with_entries = appends(&drain(&mut l))
        .iter()
        .filter(|(_, a)| !a.entries.is_empty())
        .count();
    assert_eq!(with_entries, 2);
    assert_eq!(l.prs[&2].next, 7);
}

#[test]
fn f4_rejection_in_replicate_probes_and_stale_rejection_ignored() {
    let mut l = leader_with(2, &[1, 1, 1, 1], 2);
    l.step(append_ok(2, 1, 2, 3));
    assert_eq!(l.prs[&2].state, ProgressState::Replicate);
    let rej = |idx: u64, hint: u64| {
        msg(
            2,
            1,
            2,
            Body::AppendEntriesResponse(AppendEntriesResponse {
                success: false,
                reject_index: idx,
                hint_index: hint,
                ..Default::default()
            }),
        )
    };
    l.step(rej(2, 2)); // stale: at or below match
    assert_eq!(l.prs[&2].state, ProgressState::Replicate);
    l.step(rej(4, 3));
    assert_eq!(l.prs[&2].state, ProgressState::Probe);
    assert_eq!(l.prs[&2].next, 4);
}

#[test]
fn f5_unreachable_moves_replicate_to_probe() {
    let mut l = leader_with(2, &[1, 1, 1, 1], 2);
    l.step(append_ok(2, 1, 2, 3));
    l.prs.get_mut(&2).unwrap().next = 6;
    l.report_unreachable(2);
    assert_eq!(l.prs[&2].state, ProgressState::Probe);
    assert_eq!(l.prs[&2].next, 4);
}

#[test]
fn f6_caught_up_probe_returns_to_replicate_via_heartbeat() {
    let mut net = Net::new(2, |_| {});
    net.elect(1);
    net.node(1).report_unreachable(2);
    assert_eq!(net.node(1).prs[&2].state, ProgressState::Probe);
    net.tick(1);
    net.settle();
    assert_eq!(net.node(1).prs[&2].state, ProgressState::Replicate);
}

#[test]
fn f7_uncommitted_bytes_cap() {
    let mut c = cfg(1);
    c.max_uncommitted_bytes = 100;
    let mut l = node_with(c, &[1, 2], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    drain(&mut l);
    // One oversize proposal passes when nothing is pending.
    l.propose(Bytes::from(vec![0u8; 150])).unwrap();
    assert_eq!(
        l.propose(Bytes::from(vec![0u8; 1])),
        Err(ProposeError::Overloaded)
    );
    assert!(l.propose(Bytes::new()).is_ok(), "empty entries always pass");
    drain(&mut l);
    l.step(append_ok(2, 1, 1, l.log.last_index()));
    assert_eq!(l.uncommitted_bytes, 0);
    l.propose(Bytes::from(vec![0u8; 60])).unwrap();
    l.propose(Bytes::from(vec![0u8; 40])).unwrap();
    assert_eq!(
        l.propose(Bytes::from(vec![0u8; 1])),
        Err(ProposeError::Overloaded)
    );
}

// ----- persistence ordering -----

#[test]
fn c1_vote_grant_in_same_ready_as_hard_state() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[], 1, 0, 0);
    n.step(vote_req(2, 1, 2, 0, 0, false));
    let rd = n.ready();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((2, 2)));
    assert_eq!(rd.messages.len(), 1);
}

#[test]
fn c2_append_ack_in_same_ready_as_entries() {
    let mut n = node_with(cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    n.step(append(1, 2, 1, (0, 0), vec![ent(1, 1)], 0));
    let rd = n.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(append_resp(&rd).unwrap().success);
}

#[test]
fn c3_leader_counts_itself_only_after_persisting() {
    let mut l = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    let rd = l.ready(); // not persisted yet
    l.store_mut().append(&rd.entries).unwrap();
    l.step(append_ok(2, 1, 1, 1));
    assert_eq!(l.commit, 0);
    l.step(append_ok(3, 1, 1, 1));
    assert_eq!(l.commit, 1, "a follower quorum does not need the leader");
    let i = l.propose(Bytes::from("x")).unwrap();
    let rd = l.ready();
    l.store_mut().append(&rd.entries).unwrap();
    l.step(append_ok(2, 1, 1, i));
    // Leader unpersisted: only one replica of index 2 counts.
    assert_eq!(l.commit, 1);
    l.on_persisted(i, 1);
    assert_eq!(l.commit, 2);

    let mut l = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    let rd = l.ready();
    l.store_mut().append(&rd.entries).unwrap();
    l.step(append_ok(3, 1, 1, 0));
    assert_eq!(l.commit, 0);
    l.on_persisted(1, 1);
    assert_eq!(l.commit, 0, "self alone is not a quorum of 3");
    l.step(append_ok(2, 1, 1, 1));
    assert_eq!(l.commit, 1);
}

#[test]
fn c4_single_voter_commits_only_after_persist() {
    let mut n = node_with(cfg(1), &[1], &[], 0, 0, 0);
    n.campaign(false);
    assert_eq!(n.role, Role::Leader);
    let rd = n.ready();
    assert!(rd.committed.is_empty());
    n.store_mut().append(&rd.entries).unwrap();
    n.propose(Bytes::from("x")).unwrap();
    let rd2 = n.ready();
    assert!(rd2.committed.is_empty());
    assert_eq!(n.commit, 0);
    n.store_mut().append(&rd2.entries).unwrap();
    n.on_persisted(2, 1);
    assert_eq!(n.commit, 2);
    assert_eq!(n.ready().committed.len(), 2);
}

#[test]
fn c5_restart_keeps_vote() {
    let mut n = node_with(cfg(1), &[1, 2, 3], &[], 4, 2, 0);
    n.step(vote_req(3, 1, 4, 5, 4, false));
    assert!(!n
        .ready()
        .messages
        .iter()
        .any(|m| matches!(body_of(m), Body::RequestVoteResponse(r) if r.granted)));
    n.step(vote_req(2, 1, 4, 5, 4, false));
    assert!(n
        .ready()
        .messages
        .iter()
        .any(|m| matches!(body_of(m), Body::RequestVoteResponse(r) if r.granted)));
}

#[test]
fn c6_restarts_keep_invariants() {
    let mut net = Net::new(3, |_| {});
    let mut rng = crate::rng::Rng::new(7);
    for round in 0..40 {
        let id = rng.range(1, 4);
        if rng.chance(0.3) {
            net.restart(id);
        }
        for _ in 0..rng.range(1, 25) {
            net.tick_all();
            net.settle();
        }
        if let Some(l) = net.leader() {
            let _ = net.node(l).propose(Bytes::from(format!("r{round}")));
            net.settle();
        }
    }
    let total: usize = net.peers.values().map(|p| p.applied.len()).max().unwrap();
    assert!(total > 10, "the cluster made progress ({total})");
}

#[test]
fn c7_restart_reapplies_above_applied() {
    let init = InitialState {
        hard_state: HardState {
            term: 1,
            vote: 0,
            commit: 8,
        },
        conf: conf(&[1, 2, 3]),
        applied: 5,
    };
    let mut n = RawNode::new(cfg(1), log_with(&[1; 10]), init).unwrap();
    let rd = n.ready();
    let idx: Vec<u64> = rd.committed.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![6, 7, 8]);
}

#[test]
fn c8_stale_persist_ack_ignored() {
    let mut f = node_with(cfg(2), &[1, 2, 3], &[1], 2, 0, 1);
    f.step(append(1, 2, 2, (1, 1), vec![ent(2, 2), ent(3, 2)], 1));
    let rd1 = f.ready();
    f.store_mut().append(&rd1.entries).unwrap();
    f.step(append(3, 2, 3, (1, 1), vec![ent(2, 3), ent(3, 3)], 1));
    let rd2 = f.ready();
    assert_eq!(rd2.entries[0].index, 2);
    f.on_persisted(3, 2); // stale ack for the term-2 entries
    assert_eq!(f.persisted, 1);
    assert!(f.log.term(3) == Ok(3));
    f.store_mut().append(&rd2.entries).unwrap();
    f.on_persisted(3, 3);
    assert_eq!(f.persisted, 3);
}

/// Drives a 3-node in-memory cluster through an election and some writes, handling every
/// Ready with the core's split (`Ready::take_messages`): the messages allowed out before the
/// sync must only ever be the leader's own (AppendEntries / heartbeats ...); vote grants and
/// append acks always wait for the sync. (Moved from the server, whose
/// `split_early_messages` made this decision before the core did.)
#[test]
fn c6_vote_grants_and_append_acks_never_leave_before_the_sync() {
    let mut nodes: Vec<RawNode<MemLog>> = (1..=3)
        .map(|id| {
            let init = InitialState {
                conf: conf(&[1, 2, 3]),
                ..Default::default()
            };
            RawNode::new(Config::new(id), MemLog::new(), init).unwrap()
        })
        .collect();
    let mut wire: Vec<Message> = Vec::new();
    let (mut early_appends, mut late_grants, mut late_acks) = (0, 0, 0);
    let mut pump = |nodes: &mut Vec<RawNode<MemLog>>, wire: &mut Vec<Message>| {
        for _ in 0..50 {
            for n in nodes.iter_mut() {
                while n.has_ready() {
                    let leader = n.role() == Role::Leader;
                    let mut rd = n.ready();
                    let must_sync = rd.must_sync;
                    let (early, late) = rd.take_messages();
                    assert!(leader || early.is_empty(), "only a leader sends early");
                    for m in &early {
                        match m.body.as_ref().unwrap() {
                            Body::AppendEntries(ae) => {
                                early_appends += usize::from(!ae.entries.is_empty())
                            }
                            Body::Heartbeat(_) | Body::InstallSnapshot(_) | Body::TimeoutNow(_) => {
                            }
                            other => panic!("sent before the sync: {other:?}"),
                        }
                    }
                    for m in &late {
                        match m.body.as_ref().unwrap() {
                            Body::RequestVoteResponse(r) if r.granted => late_grants += 1,
                            Body::AppendEntriesResponse(_) => late_acks += 1,
                            _ => {}
                        }
                    }
                    assert!(rd.entries.is_empty() || must_sync, "entries need a sync");
                    // The "sync", then everything else goes out.
                    n.store_mut().append(&rd.entries).unwrap();
                    wire.extend(early);
                    wire.extend(late);
                    if let Some(last) = rd.committed.last() {
                        n.on_applied(last.index);
                    }
                    if let Some(last) = rd.entries.last() {
                        n.on_persisted(last.index, last.term);
                    }
                }
            }
            if wire.is_empty() {
                return;
            }
            for m in std::mem::take(wire) {
                nodes[m.to as usize - 1].step(m);
            }
        }
    };
    // Node 1 times out and wins (PreVote, then the vote); the others grant.
    for _ in 0..20 {
        nodes[0].tick();
    }
    pump(&mut nodes, &mut wire);
    assert_eq!(nodes[0].role(), Role::Leader);
    for i in 0..5u8 {
        nodes[0].propose(Bytes::from(vec![i; 10])).unwrap();
        pump(&mut nodes, &mut wire);
    }
    assert_eq!(nodes[0].status().commit, 6, "the no-op and 5 writes commit");
    assert!(late_grants >= 2, "votes were granted (after the sync)");
    assert!(late_acks >= 10, "appends were acked (after the sync)");
    assert!(early_appends >= 6, "the leader's appends went out early");
}

/// A node that becomes leader in the same Ready as its new term and vote sends nothing early
/// (the term and vote must be durable first); a leader's answer to a stale peer waits for
/// the sync while its appends leave early.
#[test]
fn c7_term_or_vote_change_and_answers_wait_for_the_sync() {
    let mut l = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    assert_eq!(l.role, Role::Leader);
    let mut rd = l.ready();
    assert!(rd.must_sync, "new term and vote");
    assert_eq!(rd.early_messages, 0);
    let (early, late) = rd.take_messages();
    assert!(early.is_empty());
    assert!(late
        .iter()
        .any(|m| matches!(body_of(m), Body::AppendEntries(_))));
    l.store_mut().append(&rd.entries).unwrap();
    l.on_persisted(1, 1);
    // The followers ack the no-op (they leave Probe, so the next entry is sent at once).
    l.step(append_ok(2, 1, 1, 1));
    l.step(append_ok(3, 1, 1, 1));
    drain(&mut l);
    // Same term and vote now: appends early, the answer to a stale leader late.
    l.propose(Bytes::from("x")).unwrap();
    l.step(heartbeat(3, 1, 0, 0, 0));
    let mut rd = l.ready();
    assert!(rd.hard_state.is_none_or(|h| (h.term, h.vote) == (1, 1)));
    assert!(rd.must_sync, "entries");
    let (early, late) = rd.take_messages();
    assert!(!early.is_empty());
    assert!(early
        .iter()
        .all(|m| matches!(body_of(m), Body::AppendEntries(_))));
    assert!(matches!(
        late.as_slice(),
        [m] if matches!(body_of(m), Body::HeartbeatResponse(_)) && m.to == 3
    ));
    // A commit-only hard state change needs no sync.
    let mut f = node_with(cfg(2), &[1, 2, 3], &[1, 1], 1, 1, 0);
    drain(&mut f);
    f.step(heartbeat(1, 2, 1, 2, 0));
    let rd = f.ready();
    assert_eq!(rd.hard_state.map(|h| h.commit), Some(2));
    assert!(!rd.must_sync);
}
