//! ReadIndex, lease reads and leadership transfer (R*, T*).

use super::*;

fn tagged_heartbeats(rd: &Ready) -> Vec<(u64, u64)> {
    rd.messages
        .iter()
        .filter_map(|m| match body_of(m) {
            Body::Heartbeat(h) if h.context != 0 => Some((m.to, h.context)),
            _ => None,
        })
        .collect()
}

/// 3-voter leader (id 1, term 1) whose no-op is committed.
fn ready_leader() -> RawNode<MemLog> {
    let mut l = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    drain(&mut l);
    l.step(append_ok(2, 1, 1, 1));
    drain(&mut l);
    assert_eq!(l.commit, 1);
    l
}

#[test]
fn r1_read_index_confirmed_by_quorum() {
    let mut l = ready_leader();
    l.read_index(42).unwrap();
    let rd = l.ready();
    let hbs = tagged_heartbeats(&rd);
    assert_eq!(hbs.len(), 2);
    assert!(rd.reads.is_empty());
    let tag = hbs[0].1;
    l.step(hb_resp(2, 1, 1, tag));
    assert_eq!(l.ready().reads, vec![ReadState { ctx: 42, index: 1 }]);

    // A single voter answers at once (after its own no-op commits).
    let mut s = node_with(cfg(1), &[1], &[], 0, 0, 0);
    s.campaign(false);
    drain(&mut s);
    s.read_index(7).unwrap();
    assert_eq!(s.ready().reads, vec![ReadState { ctx: 7, index: 1 }]);
}

#[test]
fn r2_new_leader_defers_reads_until_own_term_commit() {
    let mut l = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    drain(&mut l);
    l.read_index(5).unwrap();
    let rd = l.ready();
    assert!(rd.reads.is_empty());
    assert!(tagged_heartbeats(&rd).is_empty());
    l.step(append_ok(2, 1, 1, 1));
    let rd = l.ready();
    let hbs = tagged_heartbeats(&rd);
    assert_eq!(hbs.len(), 2);
    l.step(hb_resp(3, 1, 1, hbs[0].1));
    assert_eq!(l.ready().reads, vec![ReadState { ctx: 5, index: 1 }]);
}

/// The `ReadIndex` messages (to, ctxs) in a Ready.
fn read_index_msgs(rd: &Ready) -> Vec<(u64, Vec<u64>)> {
    rd.messages
        .iter()
        .filter_map(|m| match body_of(m) {
            Body::ReadIndex(r) => Some((m.to, r.ctxs.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn r3_follower_read_gets_leaders_commit() {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.propose(1, "a");
    net.propose(1, "b");
    net.settle();
    let commit = net.n(1).commit;
    assert!(commit >= 3, "commit {commit}");
    net.node(2).read_index(5).unwrap();
    // The round trip to the leader and its heartbeat quorum: nothing before it.
    assert!(net.peers[&2].reads.is_empty());
    net.settle();
    assert_eq!(
        net.peers[&2].reads,
        vec![ReadState {
            ctx: 5,
            index: commit
        }]
    );
    assert!(
        net.peers[&1].reads.is_empty(),
        "the leader keeps no ReadState of it"
    );
    assert_eq!(net.n(2).pending_reads(), 0);
    assert_eq!(net.n(1).pending_reads(), 0);
}

#[test]
fn r3_follower_reads_are_batched_one_message_per_ready() {
    let mut f = node_with(cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    f.step(heartbeat(1, 2, 1, 0, 0));
    drain(&mut f);
    for ctx in 1..=20 {
        f.read_index(ctx).unwrap();
    }
    let rd = f.ready();
    let sent = read_index_msgs(&rd);
    assert_eq!(sent, vec![(1, (1..=20).collect::<Vec<u64>>())], "{sent:?}");
    assert_eq!(f.pending_reads(), 20);
    // Nothing more to send until new reads arrive.
    assert!(read_index_msgs(&f.ready()).is_empty());
    f.read_index(21).unwrap();
    assert_eq!(read_index_msgs(&f.ready()), vec![(1, vec![21])]);

    // The leader answers a whole batch with one message after one heartbeat quorum.
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    for ctx in 1..=20 {
        net.node(3).read_index(ctx).unwrap();
    }
    let seen = std::rc::Rc::new(std::cell::RefCell::new((0usize, 0usize)));
    let s2 = seen.clone();
    net.filter = Some(Box::new(move |m: &mut Message| {
        match m.body {
            Some(Body::ReadIndex(_)) => s2.borrow_mut().0 += 1,
            Some(Body::ReadIndexResponse(_)) => s2.borrow_mut().1 += 1,
            _ => {}
        }
        true
    }));
    net.settle();
    assert_eq!(
        *seen.borrow(),
        (1, 1),
        "(ReadIndex, ReadIndexResponse) messages"
    );
    let ctxs: Vec<u64> = net.peers[&3].reads.iter().map(|r| r.ctx).collect();
    assert_eq!(ctxs, (1..=20).collect::<Vec<u64>>());
}

#[test]
fn r3_follower_without_leader_fails_at_once() {
    let mut f = node_with(cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    assert_eq!(
        f.read_index(1),
        Err(ProposeError::NotLeader { leader: None })
    );
    assert_eq!(f.pending_reads(), 0);
    assert!(!f.has_ready());
    // A candidate has no leader either.
    f.campaign(false);
    assert_eq!(
        f.read_index(2),
        Err(ProposeError::NotLeader { leader: None })
    );
}

#[test]
fn r3_leader_without_quorum_never_answers_and_the_follower_times_out() {
    // 5 voters; the leader 1 and follower 2 still talk, 3..5 are cut off: 2 of 5 is no quorum.
    let mut net = Net::new(5, |_| {});
    net.elect(1);
    net.propose(1, "a");
    net.settle();
    for a in 1..=2 {
        for b in 3..=5 {
            net.cut.insert((a, b));
            net.cut.insert((b, a));
        }
    }
    net.node(2).read_index(7).unwrap();
    net.settle();
    assert_eq!(
        net.n(1).pending_reads(),
        1,
        "the leader holds it unconfirmed"
    );
    let timeout = super::super::read_only::REMOTE_READ_TIMEOUT_ELECTIONS * 10;
    for t in 0..timeout {
        assert!(
            net.peers[&2].failed_reads.is_empty(),
            "failed early at tick {t}"
        );
        net.tick(1);
        net.tick(2);
        net.settle();
    }
    assert!(net.peers[&2].reads.is_empty(), "{:?}", net.peers[&2].reads);
    assert_eq!(net.peers[&2].failed_reads, vec![7]);
    // It was the timeout, not a leader change: 1 still leads term 1 for 2.
    assert_eq!((net.n(2).term, net.n(2).leader), (1, 1));
    assert_eq!(net.n(2).pending_reads(), 0);
}

#[test]
fn r3_deposed_leaders_answer_is_ignored() {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.settle();
    // Hold everything from the leader; 2 asks for a read index.
    net.node(2).read_index(9).unwrap();
    net.process(2);
    let ask: Vec<Message> = net.queue.drain(..).collect();
    assert!(matches!(
        ask[..],
        [Message {
            to: 1,
            body: Some(Body::ReadIndex(_)),
            ..
        }]
    ));
    for m in ask {
        net.node(1).step(m);
    }
    // The leader confirms it (3 acks) but its answer is held back.
    net.process(1);
    let hbs: Vec<Message> = net.queue.drain(..).collect();
    for m in hbs.into_iter().filter(|m| m.to == 3) {
        net.node(3).step(m);
    }
    net.process(3);
    for m in net.queue.drain(..).collect::<Vec<_>>() {
        net.node(1).step(m);
    }
    net.process(1);
    let answer: Vec<Message> = net
        .queue
        .drain(..)
        .filter(|m| matches!(m.body, Some(Body::ReadIndexResponse(_))))
        .collect();
    assert_eq!(answer.len(), 1, "the leader answered");
    // 3 becomes leader of term 2 and 2 follows it: 2's read fails with the term change.
    net.elect(3);
    net.settle();
    assert_eq!(net.n(2).term, 2);
    assert_eq!(net.peers[&2].failed_reads, vec![9]);
    // The old answer (term 1) arrives now: ignored, nothing served.
    for m in answer {
        net.node(2).step(m);
    }
    net.settle();
    assert!(net.peers[&2].reads.is_empty(), "{:?}", net.peers[&2].reads);
    assert_eq!(net.n(2).pending_reads(), 0);
}

#[test]
fn r3_answer_from_a_non_leader_or_for_unknown_reads_is_ignored() {
    let mut f = node_with(cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    f.step(heartbeat(1, 2, 1, 0, 0));
    f.read_index(4).unwrap();
    drain(&mut f);
    let resp = |from, ctxs: Vec<u64>| {
        msg(
            from,
            2,
            1,
            Body::ReadIndexResponse(ReadIndexResponse { ctxs, index: 3 }),
        )
    };
    // Same term, but not from the leader.
    f.step(resp(3, vec![4]));
    // From the leader, for a read never sent.
    f.step(resp(1, vec![99]));
    assert!(f.ready().reads.is_empty());
    f.step(resp(1, vec![4]));
    assert_eq!(f.ready().reads, vec![ReadState { ctx: 4, index: 3 }]);
    // A duplicate answer serves nothing twice.
    f.step(resp(1, vec![4]));
    assert!(f.ready().reads.is_empty());
}

#[test]
fn r3_new_leader_defers_a_followers_read_until_its_term_commits() {
    let mut l = node_with(cfg(1), &[1, 2, 3], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    drain(&mut l);
    l.step(msg(2, 1, 1, Body::ReadIndex(ReadIndex { ctxs: vec![3] })));
    let rd = l.ready();
    assert!(tagged_heartbeats(&rd).is_empty());
    l.step(append_ok(3, 1, 1, 1));
    let hbs = tagged_heartbeats(&l.ready());
    assert_eq!(hbs.len(), 2);
    l.step(hb_resp(3, 1, 1, hbs[0].1));
    let rd = l.ready();
    let answers: Vec<(u64, ReadIndexResponse)> = rd
        .messages
        .iter()
        .filter_map(|m| match body_of(m) {
            Body::ReadIndexResponse(r) => Some((m.to, r.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        vec![(
            2,
            ReadIndexResponse {
                ctxs: vec![3],
                index: 1
            }
        )]
    );
    assert!(rd.reads.is_empty());
}

#[test]
fn r4_ack_confirms_earlier_reads_and_frees_them() {
    let mut l = ready_leader();
    l.read_index(1).unwrap();
    let t1 = tagged_heartbeats(&l.ready())[0].1;
    l.read_index(2).unwrap();
    // The first round is still out (r13): the periodic heartbeat carries read 2's tag.
    for _ in 0..l.cfg.heartbeat_tick {
        l.tick();
    }
    let t2 = tagged_heartbeats(&l.ready())[0].1;
    assert!(t2 > t1);
    l.step(hb_resp(2, 1, 1, t2));
    let ctxs: Vec<u64> = l.ready().reads.iter().map(|r| r.ctx).collect();
    assert_eq!(ctxs, vec![1, 2]);
    assert_eq!(l.pending_reads(), 0);
}

#[test]
fn r5_stale_acks_cannot_confirm_reads_of_deposed_leader() {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.node(1).read_index(9).unwrap();
    net.process(1);
    // Hold 1's tagged heartbeats; elect 2 and commit there.
    let held: Vec<Message> = net.queue.drain(..).collect();
    net.elect(2);
    net.propose(2, "w");
    // Old leader learnt about the new term: its read failed, not answered.
    assert!(net.peers[&1].failed_reads.contains(&9));
    // Releasing the old heartbeats and acks confirms nothing.
    for m in held {
        net.node(m.to).step(m);
    }
    net.settle();
    assert!(net.peers[&1].reads.is_empty());
    // A new read on 2 is at least the commit index at request time.
    let c = net.node(2).commit;
    net.node(2).read_index(10).unwrap();
    net.settle();
    let r = &net.peers[&2].reads;
    assert_eq!(r.len(), 1);
    assert!(r[0].index >= c);
}

/// A 3-node cluster with lease reads whose leader 1 holds a fresh lease.
fn lease_cluster() -> (Net, u64) {
    let mut net = Net::new(3, |c| {
        c.check_quorum = true;
        c.lease_read = true;
        c.pre_vote = true;
    });
    for p in net.peers.values_mut() {
        p.raw.quiet_boot = false;
    }
    net.elect(1);
    net.tick(1);
    net.settle();
    let commit = net.node(1).commit;
    assert_eq!(net.node(1).lease_read(), Ok(commit));
    (net, commit)
}

#[test]
fn r6_lease_read() {
    // Lease reads without CheckQuorum are a config error.
    let mut c = cfg(1);
    c.lease_read = true;
    assert!(RawNode::new(c, MemLog::new(), InitialState::default()).is_err());

    // Fresh nodes refuse votes for one timeout (they may have promised a lease); the helper
    // skips that, elects 1 and lets a heartbeat round acked by a quorum give it the lease.
    let (mut net, _) = lease_cluster();
    // Isolated past the lease window: refused.
    net.isolate(1);
    for _ in 0..9 {
        net.tick(1);
        net.settle();
    }
    assert_eq!(net.node(1).lease_read(), Err(ProposeError::NoLease));
    // Followers never serve lease reads.
    assert!(matches!(
        net.node(2).lease_read(),
        Err(ProposeError::NotLeader { .. })
    ));
    // Lease reads off: NoLease.
    let mut net = Net::new(3, |c| c.check_quorum = true);
    net.elect(1);
    net.tick(1);
    net.settle();
    assert_eq!(net.node(1).lease_read(), Err(ProposeError::NoLease));
}

/// Every node stalled at once for three election timeouts (a disk they share blocked their
/// loops: seen in CI as a 645 ms Ready on all three nodes of a 500 ms-timeout cluster).
/// `tick_after_stall` moves the clock by all of it, so the lease is gone, but the timers by
/// one tick: nobody campaigns, the leader keeps its term, and its next heartbeat round earns
/// the lease back. The same time as single ticks with nothing delivered (peers really silent)
/// makes the leader step down (check-quorum) and the followers campaign: the difference is
/// the stall rule, not the length.
#[test]
fn r6b_a_stall_expires_the_lease_but_counts_as_one_tick_for_the_timers() {
    let stall = 3 * u64::from(cfg(1).election_tick);
    let roles = |net: &Net| (1..=3).map(|id| net.n(id).role).collect::<Vec<_>>();
    let (mut net, commit) = lease_cluster();
    let term = net.n(1).term();
    for id in 1..=3 {
        net.node(id).tick_after_stall(stall);
    }
    assert_eq!(net.node(1).lease_read(), Err(ProposeError::NoLease));
    assert_eq!(
        roles(&net),
        vec![Role::Leader, Role::Follower, Role::Follower],
        "a stall of {stall} ticks ran out a timer"
    );
    net.settle();
    let terms: Vec<u64> = (1..=3).map(|id| net.n(id).term()).collect();
    assert_eq!(
        (net.leader(), terms),
        (Some(1), vec![term; 3]),
        "a stall of {stall} ticks started an election"
    );
    net.tick(1);
    net.settle();
    assert_eq!(net.node(1).lease_read(), Ok(commit));

    let (mut net, _) = lease_cluster();
    for _ in 0..stall {
        for id in 1..=3 {
            net.node(id).tick();
        }
    }
    let after = roles(&net);
    assert!(
        after[0] != Role::Leader && after[1..].iter().any(|r| *r != Role::Follower),
        "{stall} single ticks of silence left roles {after:?}: leader kept, nobody campaigned"
    );
}

#[test]
fn failed_reads_on_losing_leadership() {
    let mut l = ready_leader();
    l.read_index(3).unwrap();
    l.read_index(4).unwrap();
    l.step(heartbeat(2, 1, 2, 0, 0));
    assert_eq!(l.role, Role::Follower);
    let mut f = l.ready().failed_reads;
    f.sort();
    assert_eq!(f, vec![3, 4]);
}

// ----- leadership transfer -----

#[test]
fn t1_transfer_to_up_to_date_voter() {
    let mut net = Net::new(3, |c| {
        c.check_quorum = true;
        c.pre_vote = true;
    });
    net.elect(1);
    net.propose(1, "a");
    net.node(1).transfer_leader(2);
    net.settle();
    assert_eq!(net.leader(), Some(2));
    assert_eq!(net.node(1).role, Role::Follower);
    assert_eq!(net.node(1).pending_transfer(), None);
}

#[test]
fn t2_lagging_target_caught_up_first() {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.isolate(3);
    net.propose(1, "a");
    net.heal();
    net.node(1).transfer_leader(3);
    let rd = net.node(1).ready();
    assert!(!rd
        .messages
        .iter()
        .any(|m| matches!(body_of(m), Body::TimeoutNow(_))));
    net.queue.extend(rd.messages);
    net.settle();
    assert_eq!(net.leader(), Some(3));
    assert_eq!(net.log_terms(3), net.log_terms(1));
}

#[test]
fn t3_proposals_refused_during_transfer() {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.isolate(3);
    net.propose(1, "a");
    net.node(1).transfer_leader(3);
    let last = net.node(1).log.last_index();
    assert_eq!(
        net.node(1).propose(Bytes::from("b")),
        Err(ProposeError::TransferInProgress)
    );
    assert_eq!(net.node(1).log.last_index(), last);
}

#[test]
fn t4_transfer_abandoned_after_election_timeout() {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.isolate(3);
    net.propose(1, "a");
    net.node(1).transfer_leader(3);
    for _ in 0..5 {
        net.tick(1);
    }
    // Same target again does not extend the deadline.
    net.node(1).transfer_leader(3);
    for _ in 0..5 {
        net.tick(1);
    }
    assert_eq!(net.node(1).role, Role::Leader);
    assert_eq!(net.node(1).pending_transfer(), None);
    // Another target replaces; self cancels.
    net.node(1).transfer_leader(3);
    net.node(1).transfer_leader(2);
    assert_eq!(net.node(1).pending_transfer(), Some(2));
    net.node(1).transfer_leader(1);
    assert_eq!(net.node(1).pending_transfer(), None);
}

#[test]
fn t5_transfer_to_self_or_non_member_is_noop_and_higher_term_clears() {
    let mut l = ready_leader();
    l.transfer_leader(1);
    l.transfer_leader(9);
    assert_eq!(l.pending_transfer(), None);
    l.transfer_leader(3);
    assert_eq!(l.pending_transfer(), Some(3));
    l.step(vote_req(2, 1, 5, 10, 5, false));
    assert_eq!(l.role, Role::Follower);
    assert_eq!(l.transferee, 0);
}

#[test]
fn lease_void_after_timeout_now_and_quiet_boot_refuses_votes() {
    let mut net = Net::new(3, |c| {
        c.check_quorum = true;
        c.lease_read = true;
    });
    for p in net.peers.values_mut() {
        p.raw.quiet_boot = false;
    }
    net.elect(1);
    net.tick(1);
    net.settle();
    assert!(net.node(1).lease_read().is_ok());
    // Start a transfer to a node that cannot answer: TimeoutNow goes out, lease is gone for
    // the rest of the term even after the transfer is abandoned.
    net.cut.insert((2, 1));
    net.node(1).transfer_leader(2);
    assert_eq!(net.node(1).lease_read(), Err(ProposeError::NoLease));
    net.cut.clear();
    net.filter = Some(Box::new(|m: &mut Message| {
        !matches!(m.body, Some(Body::TimeoutNow(_)))
    }));
    for _ in 0..12 {
        net.tick(1);
        net.settle();
    }
    assert_eq!(net.node(1).role, Role::Leader);
    assert_eq!(net.node(1).pending_transfer(), None);
    assert_eq!(net.node(1).lease_read(), Err(ProposeError::NoLease));

    // A freshly started node with lease reads refuses (ignores) votes for one timeout.
    let mut c = cfg(2);
    c.check_quorum = true;
    c.lease_read = true;
    let mut n = RawNode::new(
        c,
        MemLog::new(),
        InitialState {
            conf: conf(&[1, 2, 3]),
            ..Default::default()
        },
    )
    .unwrap();
    n.step(vote_req(3, 2, 1, 0, 0, false));
    assert_eq!((n.term, n.vote), (0, 0));
    for _ in 0..10 {
        n.tick();
    }
    n.step(vote_req(3, 2, 2, 0, 0, false));
    assert_eq!((n.term, n.vote), (2, 3));
}

/// Reads across a leadership transfer (stale reads after a transfer were found in TiKV and
/// openraft): a ReadIndex started on the old leader is either confirmed at an index holding
/// every write acknowledged before it, or failed; the old leader, cut off after handing over,
/// serves no lease read; the new leader's first read sees the write acknowledged before the
/// transfer.
#[test]
fn t6_reads_across_a_transfer_stay_linearizable() {
    let mut net = Net::new(3, |c| {
        c.check_quorum = true;
        c.lease_read = true;
    });
    for p in net.peers.values_mut() {
        p.raw.quiet_boot = false;
    }
    net.elect(1);
    let acked = net.propose(1, "before-transfer");
    assert!(net.n(1).commit >= acked);
    // A read in flight on 1 while it hands leadership to 2.
    net.node(1).read_index(7).unwrap();
    net.node(1).transfer_leader(2);
    net.settle();
    assert_eq!(net.leader(), Some(2));
    let p1 = &net.peers[&1];
    let served = p1.reads.iter().find(|r| r.ctx == 7);
    let failed = p1.failed_reads.contains(&7);
    assert!(
        served.is_some_and(|r| r.index >= acked) || (served.is_none() && failed),
        "read 7 on the old leader: served {served:?}, failed {failed}, write acked at {acked}"
    );
    // 1 is a follower now: no lease; its ReadIndex goes to 2 and sees the acknowledged write.
    assert!(net.node(1).lease_read().is_err());
    net.node(1).read_index(8).unwrap();
    net.settle();
    let r8 = net.peers[&1].reads.iter().find(|r| r.ctx == 8).cloned();
    assert!(
        r8.as_ref().is_some_and(|r| r.index >= acked),
        "follower read on 1 {r8:?}, write acked at {acked}"
    );
    // The new leader's read is confirmed at an index holding the acknowledged write.
    net.node(2).read_index(9).unwrap();
    net.settle();
    net.tick(2);
    net.settle();
    let r = net.peers[&2].reads.iter().find(|r| r.ctx == 9).cloned();
    assert!(
        r.as_ref().is_some_and(|r| r.index >= acked),
        "new leader's read {r:?}, write acked at {acked}"
    );
}

#[test]
fn r3_single_voter_answers_a_learners_reads_at_once_and_never_runs_out_of_room() {
    let init = InitialState {
        hard_state: HardState::default(),
        conf: ConfState {
            voters: vec![1],
            learners: vec![2],
            ..ConfState::default()
        },
        applied: 0,
    };
    let mut l = RawNode::new(cfg(1), MemLog::new(), init).unwrap();
    l.campaign(false);
    drain(&mut l);
    assert_eq!(l.role, Role::Leader);
    let cap = super::super::read_only::MAX_REMOTE_READS as u64;
    // Three full batches: answered reads must free their room under the cap.
    for round in 0..3u64 {
        let ctxs: Vec<u64> = (round * cap..(round + 1) * cap).collect();
        l.step(msg(
            2,
            1,
            1,
            Body::ReadIndex(ReadIndex { ctxs: ctxs.clone() }),
        ));
        let rd = l.ready();
        let answered: Vec<&ReadIndexResponse> = rd
            .messages
            .iter()
            .filter_map(|m| match body_of(m) {
                Body::ReadIndexResponse(r) if m.to == 2 => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(answered.len(), 1, "round {round}");
        assert_eq!(answered[0].ctxs, ctxs, "round {round}");
        assert_eq!(answered[0].index, l.commit);
        assert_eq!(l.pending_reads(), 0);
    }
}

/// Follower reads never wait behind a sync of appended entries: a follower's `ReadIndex` and
/// the leader's `ReadIndexResponse` are among the messages that may leave before it (they
/// promise nothing durable), while the append ack in the same Ready waits. A Ready that
/// changes the term sends nothing early, read requests included.
#[test]
fn r12_follower_read_messages_leave_before_the_sync() {
    let is_read_index = |m: &Message| matches!(body_of(m), Body::ReadIndex(_));
    let mut f = node_with(cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    f.step(heartbeat(1, 2, 1, 0, 0));
    drain(&mut f);
    f.step(append(1, 2, 1, (0, 0), vec![ent(1, 1)], 0));
    f.read_index(9).unwrap();
    let mut rd = f.ready();
    assert!(rd.must_sync, "an appended entry");
    let (early, late) = rd.take_messages();
    assert!(
        matches!(early.as_slice(), [m] if is_read_index(m) && m.to == 1),
        "early {early:?}"
    );
    assert!(
        matches!(late.as_slice(), [m] if matches!(body_of(m), Body::AppendEntriesResponse(_))),
        "late {late:?}"
    );

    // A new leader of a new term: the read request waits for the term to be durable.
    let mut f = node_with(cfg(2), &[1, 2, 3], &[], 1, 0, 0);
    f.step(heartbeat(1, 2, 1, 0, 0));
    drain(&mut f);
    f.step(heartbeat(3, 2, 2, 0, 0));
    f.read_index(10).unwrap();
    let mut rd = f.ready();
    assert!(rd.must_sync, "new term");
    let (early, late) = rd.take_messages();
    assert!(early.is_empty(), "early {early:?}");
    assert!(
        late.iter().any(|m| is_read_index(m) && m.to == 3),
        "late {late:?}"
    );

    // The leader's answer leaves before the sync of an entry proposed in the same Ready.
    let mut l = ready_leader();
    l.step(msg(2, 1, 1, Body::ReadIndex(ReadIndex { ctxs: vec![5] })));
    let hbs = tagged_heartbeats(&drain(&mut l));
    assert_eq!(hbs.len(), 2, "{hbs:?}");
    l.propose(Bytes::from("x")).unwrap();
    l.step(hb_resp(3, 1, 1, hbs[0].1));
    let mut rd = l.ready();
    assert!(rd.must_sync, "the proposed entry");
    let (early, late) = rd.take_messages();
    assert!(
        early.iter().any(|m| m.to == 2
            && matches!(body_of(m), Body::ReadIndexResponse(r) if r.ctxs == [5] && r.index == 1)),
        "early {early:?}"
    );
    assert!(
        !late
            .iter()
            .any(|m| matches!(body_of(m), Body::ReadIndexResponse(_))),
        "late {late:?}"
    );
}

/// One read heartbeat round at a time: reads that arrive while a round waits for its quorum
/// are confirmed together by the next round, sent once the first is confirmed (or by the
/// periodic heartbeat if its answers were lost). Under load that is one round per batch, not
/// one per loop pass.
#[test]
fn r13_one_read_round_in_flight_batches_later_reads() {
    let mut l = ready_leader();
    l.read_index(1).unwrap();
    let hbs = tagged_heartbeats(&l.ready());
    assert_eq!(hbs.len(), 2, "{hbs:?}");
    let first = hbs[0].1;
    // Two more reads (one the leader's, one a follower's) while the first round is out:
    // no new round yet, and nothing is ready to do.
    l.read_index(2).unwrap();
    l.step(msg(3, 1, 1, Body::ReadIndex(ReadIndex { ctxs: vec![7] })));
    assert!(!l.has_ready(), "a second round while the first waits");
    assert!(tagged_heartbeats(&l.ready()).is_empty());
    // The first round's quorum: read 1 is served, and the next round goes out at once.
    l.step(hb_resp(2, 1, 1, first));
    let rd = l.ready();
    assert_eq!(rd.reads, vec![ReadState { ctx: 1, index: 1 }]);
    let hbs = tagged_heartbeats(&rd);
    assert_eq!(hbs.len(), 2, "{hbs:?}");
    let second = hbs[0].1;
    assert!(second > first);
    // A late ack of the first round confirms nothing new and starts nothing.
    l.step(hb_resp(3, 1, 1, first));
    let rd = l.ready();
    assert!(rd.reads.is_empty() && tagged_heartbeats(&rd).is_empty());
    // The second round's answers are lost: the periodic heartbeat carries its tag again.
    l.read_index(3).unwrap();
    assert!(tagged_heartbeats(&l.ready()).is_empty());
    for _ in 0..l.cfg.heartbeat_tick {
        l.tick();
    }
    let hbs = tagged_heartbeats(&l.ready());
    assert_eq!(hbs.len(), 2, "{hbs:?}");
    let third = hbs[0].1;
    assert!(third > second);
    // Its quorum confirms everything pending, in order.
    l.step(hb_resp(2, 1, 1, third));
    let rd = l.ready();
    assert_eq!(
        rd.reads,
        vec![
            ReadState { ctx: 2, index: 1 },
            ReadState { ctx: 3, index: 1 }
        ]
    );
    assert!(rd.messages.iter().any(|m| m.to == 3
        && matches!(body_of(m), Body::ReadIndexResponse(r) if r.ctxs == [7] && r.index == 1)));
    assert_eq!(l.pending_reads(), 0);
    // Nothing in flight now: the next read gets its round at the next Ready.
    l.read_index(4).unwrap();
    assert_eq!(tagged_heartbeats(&l.ready()).len(), 2);
}
