//! Peer authentication, as processes: nothing reaches a node's Raft core over its peer port
//! without the cluster's secret and cluster id (issue 13). A rogue process sends well-formed
//! Raft messages of every kind claiming every member id, without a handshake and after a
//! handshake with a wrong proof; a node of a second cluster is pointed at the first; a
//! member sends a frame claiming another member's id; a thousand garbage and half-done
//! handshakes hit a peer port at once. The cluster must not notice any of it beyond counters.

mod common;

use bytes::Bytes;
use common::*;
use raftkv::net::framing::{frame_bytes, frame_bytes_raw};
use raftkv::net::handshake::{Dialer, NONCE_LEN};
use raftkv::net::peer_auth::PeerSecrets;
use raftkv::pb::raftpb;
use raftkv::raft::Message;
use raftkv::server::parse_peers;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Long enough elections that a loaded test machine does not change the term by itself while
/// the test asserts that the term stays put (10 ms ticks x 100 = 1 s without a heartbeat).
const STEADY: &[&str] = &["--election-ticks=100"];

/// Each member's peer address, by id.
fn peer_addrs(c: &Cluster) -> Vec<(u64, String)> {
    parse_peers(&c.peers)
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.peer_addr))
        .collect()
}

/// What must not change: each node's term, last log index and commit index.
fn fingerprint(c: &Cluster) -> Vec<(u64, u64, u64, u64)> {
    c.nodes
        .iter()
        .map(|n| {
            let s = status(&n.client_addr).expect("node answers status");
            (n.id, s.term, s.last_log_index, s.commit_index)
        })
        .collect()
}

/// One Raft message of every kind from `from` to `to` at `term`, each with a body that
/// would change the receiver's state if believed (entries, commit indexes, snapshots).
fn every_kind(from: u64, to: u64, term: u64) -> Vec<Message> {
    use raftpb::message::Body;
    let entry = raftpb::Entry {
        index: 1_000,
        term,
        data: Bytes::from_static(b"a write no client made"),
        ..Default::default()
    };
    let bodies = vec![
        Body::RequestVote(raftpb::RequestVote {
            pre_vote: false,
            last_log_index: 1 << 40,
            last_log_term: term,
            transfer: true,
        }),
        Body::RequestVote(raftpb::RequestVote {
            pre_vote: true,
            last_log_index: 1 << 40,
            last_log_term: term,
            transfer: false,
        }),
        Body::RequestVoteResponse(raftpb::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        }),
        Body::AppendEntries(raftpb::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![entry],
            commit: 1_000,
        }),
        Body::AppendEntriesResponse(raftpb::AppendEntriesResponse {
            success: true,
            match_index: 1 << 30,
            ..Default::default()
        }),
        Body::Heartbeat(raftpb::Heartbeat {
            commit: 1 << 30,
            context: 1,
            lease_tick: 1 << 30,
        }),
        Body::HeartbeatResponse(raftpb::HeartbeatResponse {
            context: 1,
            lease_tick: 1 << 30,
            // Believed, it would raise the NO_SPACE alarm.
            no_space: true,
        }),
        // Believed, it would make the node stop for good.
        Body::Removed(raftpb::Removed { conf_index: 1 }),
        Body::InstallSnapshot(raftpb::InstallSnapshot {
            meta: Some(raftpb::SnapshotMeta {
                index: 1 << 20,
                term,
                conf: None,
                ..Default::default()
            }),
            offset: 0,
            data: Bytes::from_static(b"not a snapshot"),
            done: true,
            crc: 0,
        }),
        Body::InstallSnapshotResponse(raftpb::InstallSnapshotResponse {
            index: 1,
            next_offset: 1,
            success: true,
            done: true,
        }),
        Body::TimeoutNow(raftpb::TimeoutNow {}),
    ];
    bodies
        .into_iter()
        .map(|b| Message {
            from,
            to,
            term,
            body: Some(b),
        })
        .collect()
}

/// Low and very high terms (the bound check allows up to 2^62).
const TERMS: [u64; 2] = [1, 1 << 60];

/// Writes `bytes`, ignoring errors: the node closes refused connections.
fn send_all(s: &mut TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
}

/// Every message kind, claiming each member id, at low and high terms.
fn raft_barrage(target: u64, members: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &from in members {
        for term in TERMS {
            for m in every_kind(from, target, term) {
                out.extend_from_slice(&frame_bytes(&m));
            }
        }
    }
    out
}

/// Reads one frame payload (the node's CHALLENGE); None if the node closed first.
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).ok()?;
    let mut b = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut b).ok()?;
    Some(b)
}

/// Connects to `addr` (blocking, with read timeouts).
fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the peer port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn try_failures(http: &str, reason: &str) -> Option<u64> {
    let label = format!("reason=\"{reason}\"");
    try_metric(http, "raftkv_peer_handshake_failures_total", &label)
}

fn failures(http: &str, reason: &str) -> u64 {
    try_failures(http, reason).unwrap_or_else(|| panic!("no failure counters on {http}"))
}

/// Every node still running.
fn assert_all_alive(c: &mut Cluster) {
    for n in c.nodes.iter_mut() {
        let child = n.child.as_mut().expect("node started");
        let exited = child.try_wait().unwrap();
        assert!(exited.is_none(), "node {} exited: {exited:?}", n.id);
    }
}

/// Writes, then returns the cluster's data as every node holds it once caught up.
fn write_and_settle(c: &Cluster, n: usize) -> std::collections::BTreeMap<String, String> {
    let mut cl = c.client();
    for i in 0..n {
        cl.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
            .expect("put");
    }
    // Every node has applied everything (so the fingerprint is stable from here on).
    wait_for(
        "all nodes to apply the writes",
        Duration::from_secs(20),
        || {
            let f = fingerprint(c);
            let commits: Vec<u64> = c
                .nodes
                .iter()
                .map(|n| status(&n.client_addr).map_or(0, |s| s.applied_index))
                .collect();
            (commits.iter().all(|&a| a == f[0].3) && f.iter().all(|x| x.3 == f[0].3)).then_some(())
        },
    );
    scan_all(&mut cl, "k")
}

#[test]
fn rogue_raft_messages_change_nothing() {
    let mut c = Cluster::start_http(3, STEADY);
    c.wait_leader();
    let data = write_and_settle(&c, 20);
    let before = fingerprint(&c);
    let members: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    let cluster_id = status(&c.nodes[0].client_addr).unwrap().cluster_id;
    assert_eq!(cluster_id.len(), 32, "status shows the cluster id");
    let wrong = PeerSecrets::parse(&"ab".repeat(32), "wrong secret").unwrap();
    let mut sent = 0;
    for (target, addr) in peer_addrs(&c) {
        // 1. No handshake at all: Raft frames straight away.
        let mut s = connect(&addr);
        send_all(&mut s, &raft_barrage(target, &members));
        // 2. The right cluster id, claiming each member, then a wrong proof.
        for &from in &members {
            let id = raftkv::storage::cluster_id::ClusterId::parse(&cluster_id);
            let nonce = [from as u8; NONCE_LEN];
            let d = Dialer::new(from, target, id.into(), nonce);
            let mut s = connect(&addr);
            send_all(&mut s, &frame_bytes_raw(&d.hello()));
            let challenge = read_frame(&mut s);
            if from != target {
                assert!(
                    challenge.is_some(),
                    "node {target} sent no challenge to {from}"
                );
            }
            let mut proof = b"RKVP\x01\x03".to_vec();
            proof.extend_from_slice(&wrong.prove(b"not the transcript"));
            send_all(&mut s, &frame_bytes_raw(&proof));
            send_all(&mut s, &raft_barrage(target, &members));
            sent += 1;
        }
    }
    // Every refused connection is counted before the test looks at the nodes.
    wait_for(
        "the nodes to refuse every rogue",
        Duration::from_secs(10),
        || {
            let n: u64 = (1..=3)
                .map(|id| {
                    let h = c.http_addr(id);
                    failures(&h, "bad_proof") + failures(&h, "unknown_sender")
                })
                .sum();
            (n >= sent).then_some(())
        },
    );
    for id in 1..=3 {
        let h = c.http_addr(id);
        let no_hs = failures(&h, "oversized") + failures(&h, "malformed");
        assert!(
            no_hs >= 1,
            "node {id}: the handshake-less rogue was not refused"
        );
        assert_eq!(metric(&h, "raftkv_peer_frames_spoofed_total", ""), 0);
    }
    assert_all_alive(&mut c);
    let after = fingerprint(&c);
    assert_eq!(before, after, "(id, term, last log index, commit) changed");
    let mut cl = c.client();
    assert_eq!(scan_all(&mut cl, "k"), data, "data changed");
    cl.put(b"after", b"attack").expect("clients see no error");
    assert_eq!(&cl.get(b"after").unwrap().value[..], b"attack");
}

#[test]
fn a_node_of_another_cluster_is_refused_by_both_sides() {
    let mut a = Cluster::start_http(3, STEADY);
    a.wait_leader();
    let data = write_and_settle(&a, 5);
    // Cluster B: same ids, and even the same secret (a copy of A's files, as when two local
    // test clusters share a setup): only the cluster id tells them apart.
    let secret = a.dir.path().join("peer-secret");
    let mut b = Cluster::start_http_with(3, STEADY, |root| {
        std::fs::copy(&secret, root.join("peer-secret")).unwrap();
    });
    b.wait_leader();
    let (ida, idb) = (cluster_id_of(&a, 1), cluster_id_of(&b, 1));
    assert_ne!(ida, idb, "two bootstraps made the same cluster id");
    // B's node 3 comes back on A's node 3's ports with A's member list.
    b.kill(3);
    a.kill(3);
    b.peers = a.peers.clone();
    b.nodes[2].client_addr = a.nodes[2].client_addr.clone();
    b.nodes[2].http_addr = a.nodes[2].http_addr.clone();
    let before_a: Vec<u64> = (1..=2)
        .map(|id| failures(&a.http_addr(id), "wrong_cluster"))
        .collect();
    b.start_node(3);
    wait_for(
        "both sides to refuse each other",
        Duration::from_secs(20),
        || {
            let a_refused = (1..=2)
                .all(|id| failures(&a.http_addr(id), "wrong_cluster") > before_a[id as usize - 1]);
            let b_refused = try_failures(&b.http_addr(3), "wrong_cluster").is_some_and(|n| n > 0);
            (a_refused && b_refused).then_some(())
        },
    );
    assert_eq!(
        cluster_id_of(&b, 3),
        idb,
        "the intruder took on A's cluster id"
    );
    // A keeps serving with its two nodes, its data its own.
    let mut cl = raftkv::client::Client::new(
        a.nodes[..2].iter().map(|n| n.client_addr.clone()).collect(),
        Default::default(),
    );
    assert_eq!(scan_all(&mut cl, "k"), data);
    cl.put(b"still", b"ours").expect("cluster A serves");
    let s3 = status(&b.nodes[2].client_addr).unwrap();
    assert!(
        s3.leader_id != 1 && s3.leader_id != 2,
        "the intruder follows a leader of cluster A: {s3:?}"
    );
}

fn cluster_id_of(c: &Cluster, id: u64) -> String {
    let addr = &c.nodes[id as usize - 1].client_addr;
    status(addr).expect("status").cluster_id
}

#[test]
fn a_member_cannot_speak_for_another() {
    let mut c = Cluster::start_http(3, STEADY);
    c.wait_leader();
    write_and_settle(&c, 5);
    let before = fingerprint(&c);
    // This process holds the real secret and authenticates, legitimately, as node 2 to node 1;
    // then it sends messages claiming to be node 3, at a high term.
    let addr = peer_addrs(&c)[0].1.clone();
    let mut s = peer_conn_as(c.dir.path(), &addr, &c.nodes[0].client_addr, 2, 1);
    let spoofed = every_kind(3, 1, 1 << 60);
    for m in &spoofed {
        s.write_all(&frame_bytes(m)).unwrap();
    }
    let h = c.http_addr(1);
    let n = spoofed.len() as u64;
    wait_for(
        "node 1 to drop the spoofed frames",
        Duration::from_secs(10),
        || (metric(&h, "raftkv_peer_frames_spoofed_total", "") >= n).then_some(()),
    );
    assert_eq!(metric(&h, "raftkv_peer_frames_spoofed_total", ""), n);
    // The connection itself is fine (it was authenticated): still open.
    assert!(metric(&h, "raftkv_peer_handshakes_total", "") >= 1);
    assert_all_alive(&mut c);
    assert_eq!(
        fingerprint(&c),
        before,
        "(id, term, last log index, commit) changed"
    );
}

#[test]
fn a_thousand_garbage_and_half_handshakes_leave_the_cluster_serving() {
    let mut c = Cluster::start_http(3, STEADY);
    c.wait_leader();
    let leader = c.wait_leader();
    let addr = peer_addrs(&c)[leader as usize - 1].1.clone();
    let id = raftkv::storage::cluster_id::ClusterId::parse(&cluster_id_of(&c, 1));
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("garbage seed {seed}");
    let mut conns = Vec::new();
    for i in 0..1000u64 {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            panic!("connection {i} to the leader's peer port failed");
        };
        match i % 4 {
            // Random bytes.
            0 => {
                let junk: Vec<u8> = (0..64)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (seed >> 56) as u8
                    })
                    .collect();
                send_all(&mut s, &junk);
            }
            // A HELLO, then nothing (half a handshake).
            1 => send_all(
                &mut s,
                &frame_bytes_raw(&Dialer::new(2, leader, id.into(), [1; NONCE_LEN]).hello()),
            ),
            // Half a frame header.
            2 => send_all(&mut s, &[0, 0]),
            // Nothing at all.
            _ => {}
        }
        conns.push(s);
    }
    // While all of them are open, the cluster serves.
    let mut cl = c.client();
    for i in 0..20 {
        cl.put(format!("during{i}").as_bytes(), b"x")
            .expect("put during the flood");
    }
    // Each one is refused within the handshake timeout (2 s): malformed or timed out.
    let h = c.http_addr(leader);
    wait_for(
        "the leader to refuse all 1000",
        Duration::from_secs(15),
        || {
            let n: u64 = ["malformed", "oversized", "timeout", "unknown_sender"]
                .iter()
                .map(|r| failures(&h, r))
                .sum();
            (n >= 1000).then_some(())
        },
    );
    drop(conns);
    assert_all_alive(&mut c);
    cl.put(b"after", b"flood").expect("put after the flood");
    assert_eq!(&cl.get(b"after").unwrap().value[..], b"flood");
}

/// The member that bootstrapped the cluster id (the lowest id) loses its data directory and
/// comes back empty: it must rejoin its cluster (taking the id the others hold), not make a
/// new one that every other member refuses.
#[test]
fn a_wiped_bootstrap_member_rejoins_its_cluster() {
    let mut c = Cluster::start_http(3, STEADY);
    c.wait_leader();
    let data = write_and_settle(&c, 5);
    let id = cluster_id_of(&c, 2);
    // The whole cluster restarts, so that the leader's view of node 1 starts afresh (a
    // leader that saw node 1 acknowledge entries does not expect it to lose them: Raft
    // assumes durable logs, and this test is about the cluster id, not that).
    for id in 1..=3 {
        c.kill(id);
    }
    std::fs::remove_dir_all(c.data_dir(1)).unwrap();
    // Node 1 first, up before the others: its identity check refuses an empty data dir when
    // a member answers with a term (`serve`'s join check), and the others, restarted at the
    // same moment, sometimes answered first (seen: node 2 up 5 ms before node 1 asked).
    c.start_node(1);
    let addr1 = c.addr(1);
    wait_for("node 1 to serve", Duration::from_secs(10), || {
        status(&addr1)
    });
    for id in 2..=3 {
        c.start_node(id);
    }
    // The leader learns that the follower lost its log only when an append to it fails
    // (heartbeats carry no log position), so keep writing while waiting (as tests/limits.rs).
    let mut cl = c.client();
    cl.put(b"nudge0", b"x").expect("put");
    let leader = c.wait_leader() as usize - 1;
    let target = status(&c.nodes[leader].client_addr).unwrap().commit_index;
    let mut nudge = 0;
    let caught_up = (0..1000).any(|_| {
        nudge += 1;
        cl.put(format!("nudge{nudge}").as_bytes(), b"x")
            .expect("put");
        status(&c.nodes[0].client_addr)
            .is_some_and(|s| s.cluster_id == id && s.applied_index >= target)
    });
    assert!(
        caught_up,
        "node 1 did not catch up (cluster {id}): {:?}",
        status(&c.nodes[0].client_addr)
    );
    let stored = raftkv::storage::cluster_id::read(&c.data_dir(1)).unwrap();
    assert_eq!(stored.map(|i| i.to_string()), Some(id));
    assert_eq!(scan_all(&mut cl, "k"), data);
}

/// SIGHUP re-reads the peer secret, so the documented rotation (the new secret as line 2, then
/// line 1, then alone) runs without a restart: after each step a node proves with the file's
/// first line and accepts only the file's lines. Links that were up stay up (same leader and
/// term, writes commit), and a node restarted with the rotated file rejoins through fresh
/// handshakes both ways.
#[test]
fn sighup_rotates_the_peer_secret_without_a_restart() {
    let mut c = Cluster::start_http(3, STEADY);
    let leader = c.wait_leader();
    let term = status(&c.addr(leader)).unwrap().term;
    let file = c.dir.path().join("peer-secret");
    let text = std::fs::read_to_string(&file).unwrap();
    let old = text.lines().find(|l| !l.starts_with('#')).unwrap().trim();
    let old = old.to_string();
    let new = "cd".repeat(32);
    let secrets = |lines: &[&str]| PeerSecrets::parse(&lines.join("\n"), "test").unwrap();
    // Two followers: handshakes as `from` to `target` leave the leader's links alone.
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let (from, target) = (followers[0], followers[1]);
    let target_peer = peer_addrs(&c)[target as usize - 1].1.clone();
    let node_proves_with = |hex: &str| {
        try_peer_conn_as(
            &secrets(&[hex]),
            &target_peer,
            &c.addr(target),
            from,
            target,
        )
        .is_ok()
    };
    let steps: [&[&str]; 3] = [&[&old, &new], &[&new, &old], &[&new]];
    for (n, lines) in steps.iter().enumerate() {
        let n = n as u64 + 1;
        std::fs::write(
            &file,
            format!("# rotation step {n}\n{}\n", lines.join("\n")),
        )
        .unwrap();
        hup_all(&c, "ok", n);
        let first = lines[0];
        let other = if first == old { &new } else { &old };
        assert!(
            node_proves_with(first) && !node_proves_with(other),
            "step {n}: node {target} does not prove with the first line only"
        );
    }
    // The old secret alone is no longer accepted: a proof made with it is refused.
    let http = c.http_addr(target);
    let refused = try_failures(&http, "bad_proof").unwrap_or(0);
    let mut s = try_peer_conn_as(
        &secrets(&[&old, &new]),
        &target_peer,
        &c.addr(target),
        from,
        target,
    )
    .expect("the node proves with the new secret, which the dialer accepts");
    let mut byte = [0u8; 1];
    assert!(
        matches!(s.read(&mut byte), Ok(0) | Err(_)),
        "a proof made with the removed secret was accepted"
    );
    wait_for("the refusal counted", Duration::from_secs(10), || {
        (try_failures(&http, "bad_proof")? > refused).then_some(())
    });
    // The links that were up stayed up.
    assert_eq!(c.wait_leader(), leader, "a reload changed the leader");
    assert_eq!(
        status(&c.addr(leader)).unwrap().term,
        term,
        "a reload moved the term"
    );
    let mut cl = c.client();
    cl.put(b"rotated", b"1")
        .expect("a write after the rotation");
    // A restarted node has only the new secret, and so have the others.
    c.kill(from);
    c.start_node(from);
    cl.put(b"rejoined", b"1")
        .expect("a write after the restart");
    let commit = status(&c.addr(leader)).unwrap().commit_index;
    wait_for(
        "the restarted node to catch up",
        Duration::from_secs(20),
        || (status(&c.addr(from))?.commit_index >= commit).then_some(()),
    );
}
