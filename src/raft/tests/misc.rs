//! Robustness (bad input), config validation, status, and a randomized cluster run that
//! checks the I1/I2 invariants under drops, partitions and restarts.

use super::*;

#[test]
fn config_validation() {
    let bad = [
        Config { id: 0, ..cfg(1) },
        Config {
            heartbeat_tick: 10,
            ..cfg(1)
        },
        Config {
            lease_read: true,
            check_quorum: false,
            ..cfg(1)
        },
        Config {
            max_inflight_msgs: 0,
            ..cfg(1)
        },
    ];
    for c in bad {
        assert!(
            RawNode::new(c.clone(), MemLog::new(), InitialState::default()).is_err(),
            "{c:?}"
        );
    }
}

#[test]
fn misaddressed_unknown_and_malformed_messages_are_harmless() {
    let mut n = node_with(cfg(2), &[1, 2, 3], &[1], 1, 0, 1);
    n.step(heartbeat(1, 5, 9, 0, 0)); // addressed to someone else
    n.step(Message {
        from: 1,
        to: 2,
        term: 9,
        body: None,
    });
    assert_eq!(n.term, 1);
    // A sender outside the configuration asking for votes with an older log: ignored, term
    // unchanged (it cannot hold a newer configuration that lists it).
    n.step(vote_req(77, 2, 9, 0, 0, false));
    assert_eq!(n.term, 1);
    // With a log at least as new as ours it may (a learner promoted by an entry we lack):
    // heard, and granted if free to vote.
    n.step(vote_req(77, 2, 9, 100, 9, false));
    assert_eq!((n.term, n.vote), (9, 77));
    // Responses from unknown peers at a leader: ignored.
    let mut l = node_with(cfg(1), &[1, 2], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    l.step(append_ok(77, 1, 1, 100));
    l.step(hb_resp(77, 1, 1, 3));
    assert_eq!(l.commit, 0);
    // Malformed append (index gap) is dropped, log unchanged.
    let mut f = node_with(cfg(2), &[1, 2], &[1], 1, 0, 0);
    f.step(append(1, 2, 1, (1, 1), vec![ent(5, 1)], 5));
    assert_eq!((f.log.last_index(), f.commit), (1, 0));
    // Snapshot response before any snapshot: harmless.
    l.step(msg(
        2,
        1,
        1,
        Body::InstallSnapshotResponse(InstallSnapshotResponse::default()),
    ));
}

#[test]
fn absurd_numbers_from_the_network_do_not_panic() {
    let max = u64::MAX;
    let mut f = node_with(cfg(2), &[1, 2, 3], &[1], 1, 0, 1);
    f.step(append(1, 2, 1, (max, max), vec![ent(max, 1)], max));
    f.step(append(1, 2, 1, (max - 1, 1), vec![ent(max, 1)], max));
    f.step(heartbeat(1, 2, 1, max, max));
    f.step(vote_req(3, 2, max, max, max, true));
    f.step(vote_req(3, 2, max - 1, max, max, false));
    assert_eq!(f.log.last_index(), 1);
    assert_eq!(f.commit, 1);
    let mut l = node_with(cfg(1), &[1, 2], &[], 0, 0, 0);
    l.campaign(false);
    l.step(vote_resp(2, 1, 1, true, false));
    for (ri, hi, ht) in [(max, max, 0), (max, max, max), (0, max, 0), (1, max, 0)] {
        l.step(msg(
            2,
            1,
            1,
            Body::AppendEntriesResponse(AppendEntriesResponse {
                success: false,
                match_index: max,
                reject_index: ri,
                hint_index: hi,
                hint_term: ht,
            }),
        ));
    }
    l.step(append_ok(2, 1, 1, max));
    l.step(msg(
        2,
        1,
        1,
        Body::InstallSnapshotResponse(InstallSnapshotResponse {
            index: max,
            next_offset: max,
            success: true,
            done: true,
        }),
    ));
    l.step(hb_resp(2, 1, 1, max));
    drain(&mut l);
    assert_eq!(l.role, Role::Leader);
    assert!(l.prs[&2].matched <= l.log.last_index());
}

#[test]
fn status_reports_state() {
    let mut net = Net::new(3, |_| {});
    net.elect(2);
    net.propose(2, "x");
    let s = net.node(2).status();
    assert_eq!(
        (s.id, s.role, s.term, s.leader, s.commit),
        (2, Role::Leader, 1, Some(2), 2)
    );
    assert_eq!(s.applied, 2);
    assert_eq!(s.conf.voters, vec![1, 2, 3]);
    assert_eq!(s.progress, vec![(1, 2, 3), (3, 2, 3)]);
    let f = net.node(1).status();
    assert_eq!((f.role, f.leader, f.commit), (Role::Follower, Some(2), 2));
    assert!(f.progress.is_empty());
}

/// Randomized 5-node run: random drops, partitions, restarts and proposals, with the Net's
/// invariant checker on every step. Prints the seed on failure.
fn random_run(seed: u64, bug: PlantedBug) -> (usize, usize) {
    let mut rng = crate::rng::Rng::new(seed);
    let mut net = Net::new(5, |c| {
        c.pre_vote = true;
        c.check_quorum = true;
        c.seed = seed * 31 + c.id;
        c.planted_bug = bug;
    });
    let drop_rate = 0.1;
    let mut drops = rng.fork();
    net.chaos = Some((rng.fork(), 0.05));
    net.auto_snapshot = true;
    net.filter = Some(Box::new(move |_m: &mut Message| !drops.chance(drop_rate)));
    for step in 0..600 {
        match rng.range(0, 20) {
            0 => {
                let id = rng.range(1, 6);
                net.isolate(id);
            }
            1 => net.heal(),
            2 => {
                let id = rng.range(1, 6);
                net.restart(id);
            }
            3 => {
                // The shell snapshots and compacts up to what it applied.
                let id = rng.range(1, 6);
                let p = net.peers.get_mut(&id).unwrap();
                let applied = p.raw.applied;
                if let Ok(t) = p.raw.store().term(applied) {
                    p.raw.store_mut().compact(applied, t).unwrap();
                }
            }
            4..=6 => {
                if let Some(l) = net.leader() {
                    let _ = net.node(l).propose(Bytes::from(format!("s{step}")));
                }
            }
            _ => {}
        }
        net.tick_all();
        net.settle();
    }
    net.heal();
    net.filter = None;
    net.chaos = None;
    for _ in 0..100 {
        net.tick_all();
        net.settle();
    }
    let applied = net
        .peers
        .values()
        .map(|p| p.applied.last().map(|e| e.index).unwrap_or(0))
        .max()
        .unwrap_or(0);
    (applied as usize, net.snapshots_installed)
}

/// Seeds to run: `RAFT_SEEDS=a..b` (e.g. for a long soak), default 1..=4.
fn seeds() -> std::ops::Range<u64> {
    std::env::var("RAFT_SEEDS")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once("..")?;
            Some(a.parse().ok()?..b.parse().ok()?)
        })
        .unwrap_or(1..5)
}

#[test]
fn randomized_cluster_keeps_invariants() {
    let mut snaps = 0;
    for seed in seeds() {
        let r = std::panic::catch_unwind(|| random_run(seed, PlantedBug::None));
        match r {
            Ok((applied, s)) => {
                snaps += s;
                assert!(applied > 20, "seed {seed}: little progress ({applied})");
            }
            Err(e) => {
                eprintln!("randomized_cluster_keeps_invariants failed with seed {seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    assert!(snaps > 0, "no run exercised snapshot installation");
}

#[test]
fn planted_vote_twice_is_caught_by_the_invariant_checker() {
    let caught = (1..=20u64).find(|&seed| {
        std::panic::catch_unwind(|| random_run(seed, PlantedBug::VoteTwice)).is_err()
    });
    assert!(
        caught.is_some(),
        "VoteTwice never produced two leaders in a term"
    );
}
