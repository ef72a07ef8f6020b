//! Snapshots and compaction (S*).

use super::*;

fn meta(index: u64, term: u64, voters: &[u64]) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        conf: Some(conf(voters)),
        ..Default::default()
    }
}

#[test]
fn s1_newer_snapshot_resets_log() {
    let mut n = node_with(cfg(2), &[1, 2], &[1, 1, 1], 11, 0, 1);
    assert!(n.restore_snapshot(meta(11, 11, &[1, 2, 3])));
    assert_eq!((n.commit, n.applied), (11, 11));
    assert_eq!(n.log.last_index(), 11);
    assert_eq!(n.log.term(11), Ok(11));
    assert_eq!(n.conf().voters, vec![1, 2, 3]);
    // The next Ready carries it: the shell resets the store to it first.
    let rd = n.ready();
    assert_eq!(
        rd.snapshot.as_ref().map(|m| (m.index, m.term)),
        Some((11, 11))
    );
    assert!(rd.committed.is_empty(), "{:?}", rd.committed);
    n.store_mut().reset(11, 11);
    assert!(n.ready().snapshot.is_none(), "handed over once");
    assert_eq!((n.log.first_index(), n.log.last_index()), (12, 11));
    assert!(!n.restore_snapshot(meta(11, 11, &[1, 2, 3])));
    // Nothing at or below the snapshot is handed out for applying.
    assert!(n.ready().committed.is_empty());
}

#[test]
fn s2_stale_snapshot_ignored_matching_one_moves_commit() {
    let mut n = node_with(cfg(2), &[1, 2], &[1, 1, 1], 1, 0, 1);
    assert!(!n.restore_snapshot(meta(1, 1, &[1, 2])));
    assert_eq!(n.commit, 1);
    assert!(!n.restore_snapshot(meta(2, 1, &[1, 2])));
    assert_eq!(n.commit, 2);
    assert_eq!(n.log.last_index(), 3);
}

/// Net where node 1 leads, node 3 was cut off while the leader committed and compacted.
fn compacted_net() -> Net {
    let mut net = Net::new(3, |_| {});
    net.elect(1);
    net.isolate(3);
    for i in 0..5 {
        net.propose(1, &format!("v{i}"));
    }
    let (ci, ct) = {
        let l = net.node(1);
        (l.applied, l.log.term(l.applied).unwrap())
    };
    net.node(1).store_mut().compact(ci, ct).unwrap();
    net.heal();
    net
}

#[test]
fn s3_leader_requests_snapshot_for_compacted_follower() {
    let mut net = compacted_net();
    net.tick(1);
    net.settle();
    assert_eq!(net.peers[&1].snapshot_sends, vec![3]);
    assert_eq!(net.node(1).prs[&3].state, ProgressState::Snapshot);
    // Only once per attempt.
    net.tick(1);
    net.settle();
    assert_eq!(net.peers[&1].snapshot_sends, vec![3]);

    // An inactive follower gets none.
    let mut l = node_with(cfg(1), &[1, 2], &[1, 1], 1, 0, 2);
    l.store_mut().compact(2, 1).unwrap();
    l.campaign(false);
    l.step(vote_resp(2, 1, 2, true, false));
    drain(&mut l);
    l.prs.get_mut(&2).unwrap().next = 1;
    l.prs.get_mut(&2).unwrap().probe_sent = false;
    l.prs.get_mut(&2).unwrap().recent_active = false;
    l.send_append(2, true);
    assert!(l.ready().snapshot_sends.is_empty());
}

#[test]
fn s4_snapshot_reports() {
    // (ok, expected next) after pending snapshot at 10, match 2.
    for (ok, next) in [(true, 11), (false, 3)] {
        let mut l = node_with(cfg(1), &[1, 2], &[], 0, 0, 0);
        l.campaign(false);
        l.step(vote_resp(2, 1, 1, true, false));
        let pr = l.prs.get_mut(&2).unwrap();
        pr.matched = 2;
        pr.become_snapshot(10);
        assert!(pr.is_paused(10, 0));
        l.report_snapshot(2, ok);
        let pr = &l.prs[&2];
        assert_eq!(
            (pr.state, pr.next, pr.probe_sent),
            (ProgressState::Probe, next, true)
        );
    }
}

#[test]
fn s5_snapshot_ack_ends_snapshot_state() {
    let mut l = node_with(cfg(1), &[1, 2], &[1; 11], 1, 0, 11);
    l.store_mut().compact(11, 1).unwrap();
    l.campaign(false);
    l.step(vote_resp(2, 1, 2, true, false));
    drain(&mut l);
    l.prs.get_mut(&2).unwrap().become_snapshot(11);
    l.step(msg(
        2,
        1,
        2,
        Body::InstallSnapshotResponse(InstallSnapshotResponse {
            index: 11,
            next_offset: 0,
            success: true,
            done: true,
        }),
    ));
    let pr = &l.prs[&2];
    assert_eq!((pr.state, pr.matched), (ProgressState::Replicate, 11));
    let rd = l.ready();
    assert_eq!(rd.snapshot_msgs.len(), 1, "passed on to the shell");
    let appends = rd
        .messages
        .iter()
        .filter(|m| matches!(body_of(m), Body::AppendEntries(_)))
        .count();
    assert_eq!(appends, 1);
}

#[test]
fn s6_s8_lagging_follower_catches_up_via_snapshot() {
    let mut net = compacted_net();
    net.tick(1);
    net.settle();
    assert_eq!(net.peers[&1].snapshot_sends, vec![3]);
    // The shell streams the snapshot: follower verifies it and restores.
    let (si, st) = net.node(1).log.snapshot_index_term();
    let leader_term = net.node(1).term;
    net.node(3).step(msg(
        1,
        3,
        leader_term,
        Body::InstallSnapshot(InstallSnapshot {
            meta: Some(meta(si, st, &[1, 2, 3])),
            offset: 0,
            data: Bytes::new(),
            done: true,
            crc: 0,
        }),
    ));
    let rd = net.node(3).ready();
    assert_eq!(rd.snapshot_msgs.len(), 1);
    net.queue.extend(rd.messages);
    assert!(net.install_snapshot(3, meta(si, st, &[1, 2, 3])));
    net.node(1).report_snapshot(3, true);
    net.tick(1);
    net.settle();
    net.propose(1, "after");
    let applied: Vec<u64> = net.peers[&3].applied.iter().map(|e| e.index).collect();
    let last = net.node(1).log.last_index();
    // Before the cut it applied the no-op at 1; then the snapshot; then from si + 1 on.
    let mut want = vec![1];
    want.extend((si + 1)..=last);
    assert_eq!(applied, want);
    assert_eq!(net.log_terms(3).len() as u64, last - si);
}

#[test]
fn s7_memlog_compaction_rules() {
    let mut m = log_with(&[1, 1, 2, 2]);
    assert!(m.compact(5, 2).is_err(), "above last index");
    assert!(m.compact(3, 1).is_err(), "term mismatch");
    m.compact(3, 2).unwrap();
    assert_eq!((m.first_index(), m.last_index()), (4, 4));
    assert_eq!(m.term(3), Ok(2));
    assert_eq!(m.term(2), Err(LogError::Compacted));
    assert!(m.append(&[ent(3, 3)]).is_err(), "inside the snapshot");
    assert!(m.append(&[ent(6, 3)]).is_err(), "gap");
    m.append(&[ent(4, 3), ent(5, 3)]).unwrap();
    assert_eq!(m.term(4), Ok(3));
}

#[test]
fn install_snapshot_at_stale_term_answered_with_our_term() {
    let mut n = node_with(cfg(2), &[1, 2], &[], 5, 0, 0);
    n.step(msg(
        1,
        2,
        3,
        Body::InstallSnapshot(InstallSnapshot {
            meta: Some(meta(4, 3, &[1, 2])),
            ..Default::default()
        }),
    ));
    let rd = n.ready();
    assert!(rd.snapshot_msgs.is_empty());
    assert_eq!(rd.messages.len(), 1);
    assert_eq!(rd.messages[0].term, 5);
}

#[test]
fn s9_snapshot_can_demote_to_learner_which_never_campaigns() {
    let mut n = node_with(cfg(3), &[1, 2, 3], &[1], 1, 0, 1);
    let m = SnapshotMeta {
        index: 5,
        term: 2,
        conf: Some(ConfState {
            voters: vec![1, 2],
            learners: vec![3],
            ..ConfState::default()
        }),
        ..Default::default()
    };
    assert!(n.restore_snapshot(m));
    n.store_mut().reset(5, 2);
    assert_eq!(n.status().conf.learners, vec![3]);
    for _ in 0..100 {
        n.tick();
    }
    assert_eq!(n.role, Role::Follower);
    assert!(n.ready().messages.is_empty());
}

#[test]
fn restart_after_snapshot_keeps_first_index_and_catches_up() {
    let mut net = compacted_net();
    net.auto_snapshot = true;
    net.tick(1);
    net.settle();
    assert!(net.snapshots_installed >= 1);
    net.restart(3);
    let (si, _) = net.n(3).log.snapshot_index_term();
    assert_eq!(net.n(3).log.first_index(), si + 1);
    net.propose(1, "z");
    net.tick(1);
    net.settle();
    assert_eq!(
        net.log_terms(3).len() as u64,
        net.n(3).log.last_index() - si
    );
    assert_eq!(net.n(3).log.last_index(), net.n(1).log.last_index());
    assert_eq!(net.n(3).commit, net.n(1).commit);
}
