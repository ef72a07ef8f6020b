//! Membership changes on real processes, with writes running and every acknowledged write
//! checked afterwards: 3 -> 5 -> 3, replacing a wiped node, removing the leader, a removed
//! node coming back, a learner catching up from a snapshot while the leader dies, leadership
//! transfer and linearizable reads, and the SIGTERM hand-off.

mod common;

use common::{status, wait_for, Cluster, ProcGuard, EXE};
use raftkv::client::{Client, ClientOptions};
use raftkv::pb::kvpb;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A client that rides out an election or a membership change.
fn patient(endpoints: Vec<String>) -> Client {
    Client::new(
        endpoints,
        ClientOptions {
            timeout: Duration::from_secs(15),
            ..Default::default()
        },
    )
}

/// Puts `w<i>` = `i` in a loop until stopped; remembers the acknowledged ones.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(endpoints: Vec<String>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut c = patient(endpoints);
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let (k, v) = (format!("w{i:06}"), i.to_string());
                // A failed write (timeout, uncertain) may or may not be in; only acks count.
                if c.put(k.as_bytes(), v.as_bytes()).is_ok() {
                    a.lock().unwrap().insert(k, v);
                }
            }
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until writes are acknowledged again after the change (the cluster serves),
    /// stops the writer and checks that every acknowledged write reads back (linearizable).
    fn stop_and_check(mut self, endpoints: Vec<String>) {
        let before = self.acked();
        wait_for(
            &format!("writes acknowledged after the change (had {before})"),
            Duration::from_secs(15),
            || (self.acked() >= before + 3).then_some(()),
        );
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let mut c = patient(endpoints);
        let got = common::scan_all(&mut c, "w");
        let lost: Vec<_> = acked
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        eprintln!(
            "{} writes acknowledged, {} keys read back",
            acked.len(),
            got.len()
        );
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits until the voters are exactly `want` (sorted) and nothing is joint.
fn wait_voters(c: &mut Client, want: &[u64], within: Duration) -> kvpb::MemberListResponse {
    let mut last = None;
    let start = Instant::now();
    loop {
        if let Ok(l) = c.member_list() {
            let mut voters: Vec<u64> = l
                .members
                .iter()
                .filter(|m| m.role == "voter")
                .map(|m| m.id)
                .collect();
            voters.sort_unstable();
            if voters == want && !l.joint {
                return l;
            }
            last = Some(l);
        }
        assert!(
            start.elapsed() < within,
            "voters never became {want:?}; last member list: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove(c: &mut Client, id: u64) {
    // Answered once applied, by the leader even when it removed itself (it stepped down in
    // the step that committed the removal; the committed write is still answered).
    common::remove_member(c, id);
}

/// A removed node exits by itself, with a non-zero status and the clear message.
fn expect_removed_exit(cluster: &mut Cluster, id: u64) {
    let st = cluster.wait_exit(id);
    assert!(!st.success(), "removed node {id} exited with {st}");
    let log = cluster.node_log(id);
    assert!(
        log.contains(&format!("node {id} was removed from the cluster")),
        "node {id}'s log has no removal message"
    );
}

fn all_endpoints(cluster: &Cluster) -> Vec<String> {
    cluster.endpoints()
}

#[test]
fn grow_three_to_five_and_shrink_back_to_three_while_writing() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_leader();
    let writer = Writer::start(cluster.endpoints());
    wait_for("first writes", Duration::from_secs(10), || {
        (writer.acked() > 5).then_some(())
    });
    let a = cluster.join_node();
    let b = cluster.join_node();
    let mut c = patient(all_endpoints(&cluster));
    let start = Instant::now();
    wait_voters(&mut c, &[1, 2, 3, a, b], Duration::from_secs(30));
    eprintln!("3 -> 5 (both joined and promoted) in {:?}", start.elapsed());
    // The CLI shows the five voters.
    let out = std::process::Command::new(EXE)
        .args(["member", "list", "--json", "--endpoints"])
        .arg(all_endpoints(&cluster).join(","))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "member list: {text}");
    assert_eq!(text.matches("\"role\":\"voter\"").count(), 5, "{text}");
    // Shrink by removing two of the original members (the leader may be one of them).
    for id in [1, 2] {
        remove(&mut c, id);
        expect_removed_exit(&mut cluster, id);
    }
    wait_voters(&mut c, &[3, a, b], Duration::from_secs(30));
    cluster.wait_leader();
    writer.stop_and_check(all_endpoints(&cluster));
    // `raftkv-log dump` shows the configuration entries decoded: node 2 has exited, and was a
    // voter when 1 was removed (1 itself may never have received its own removal).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftkv-log"))
        .arg("dump")
        .arg(cluster.data_dir(2))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout).to_string();
    let confs: Vec<&str> = dump.lines().filter(|l| l.contains("CONF")).collect();
    assert!(
        // (4 and 5 join at once: either may be added first.)
        confs
            .iter()
            .any(|l| !l.contains("learners=[]") && l.contains("+promote")),
        "no learner-to-promote entry in {confs:#?}"
    );
    assert!(
        confs.iter().any(|l| l.contains("removed=[1]")),
        "no removal of 1 in {confs:#?}"
    );
}

#[test]
fn a_wiped_node_refuses_to_rejoin_and_is_replaced_under_a_new_id() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_leader();
    let writer = Writer::start(cluster.endpoints());
    wait_for("first writes", Duration::from_secs(10), || {
        (writer.acked() > 5).then_some(())
    });
    let leader = cluster.wait_leader();
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    cluster.kill(victim);
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();
    // Restarted empty under its old id: it would have forgotten its vote. It refuses.
    cluster.start_node(victim);
    let st = cluster.wait_exit(victim);
    let log = cluster.node_log(victim);
    assert!(!st.success(), "wiped node started: {st}");
    assert!(
        log.contains("already exists"),
        "no clear refusal in the log"
    );
    let mut c = patient(all_endpoints(&cluster));
    remove(&mut c, victim);
    let new = cluster.join_node();
    let mut want = vec![new];
    want.extend((1..=3).filter(|&i| i != victim));
    want.sort_unstable();
    wait_voters(&mut c, &want, Duration::from_secs(30));
    writer.stop_and_check(all_endpoints(&cluster));
}

#[test]
fn removing_the_leader_hands_over_and_it_exits() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let writer = Writer::start(cluster.endpoints());
    wait_for("first writes", Duration::from_secs(10), || {
        (writer.acked() > 5).then_some(())
    });
    // Through the CLI: `member remove` of the leader reports success.
    let out = std::process::Command::new(EXE)
        .args(["member", "remove", &leader.to_string(), "--endpoints"])
        .arg(cluster.endpoints().join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "member remove {leader}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    expect_removed_exit(&mut cluster, leader);
    let new = cluster.wait_leader();
    assert_ne!(new, leader);
    let before = writer.acked();
    wait_for("writes after the removal", Duration::from_secs(10), || {
        (writer.acked() > before + 5).then_some(())
    });
    writer.stop_and_check(cluster.endpoints());
}

#[test]
fn a_removed_node_restarted_with_its_old_data_does_not_disrupt() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let mut c = patient(cluster.endpoints());
    c.put(b"before", b"1").unwrap();
    cluster.kill(victim);
    remove(&mut c, victim);
    let term = status(&cluster.addr(leader)).unwrap().term;
    let writer = Writer::start(cluster.endpoints());
    cluster.start_node(victim);
    expect_removed_exit(&mut cluster, victim);
    wait_for("writes", Duration::from_secs(10), || {
        (writer.acked() > 10).then_some(())
    });
    let after = status(&cluster.addr(leader)).unwrap();
    assert_eq!(
        (after.term, after.role.as_str()),
        (term, "leader"),
        "the removed node disturbed the cluster (term was {term})"
    );
    writer.stop_and_check(cluster.endpoints());
}

#[test]
fn a_learner_catches_up_from_a_snapshot_while_the_leader_is_killed() {
    let mut cluster = Cluster::start(3, &["--snapshot-entries=50", "--snapshot-trailing=5"]);
    cluster.wait_leader();
    let mut c = patient(cluster.endpoints());
    for i in 0..300 {
        c.put(format!("s{i:04}").as_bytes(), b"v").unwrap();
    }
    let writer = Writer::start(cluster.endpoints());
    let leader = cluster.wait_leader();
    let new = cluster.join_node();
    // Once the cluster has added it, the leader dies (mid snapshot transfer or just after).
    wait_for(
        "the learner in the configuration",
        Duration::from_secs(15),
        || {
            let l = c.member_list().ok()?;
            l.members.iter().any(|m| m.id == new).then_some(())
        },
    );
    cluster.kill(leader);
    // The new leader promotes it (the dead one stays a voter: killed, not removed).
    wait_voters(&mut c, &[1, 2, 3, new], Duration::from_secs(30));
    // Its own copy holds everything written before it joined.
    let mut local = Client::new(
        vec![cluster.addr(new)],
        ClientOptions {
            consistency: kvpb::Consistency::Stale,
            ..Default::default()
        },
    );
    wait_for("the new node's local copy", Duration::from_secs(15), || {
        (common::scan_all(&mut local, "s").len() == 300).then_some(())
    });
    let log = cluster.node_log(new);
    let installs = log.matches("installed snapshot at index").count();
    eprintln!("the new node installed {installs} snapshot(s)");
    // The log was compacted long before it joined (--snapshot-entries=50, 300 writes).
    assert!(installs >= 1, "the learner caught up without a snapshot");
    // A joined node restarts from its data directory (`--join` given again is harmless) and
    // is still a voter.
    cluster.stop(new);
    cluster.start_node(new);
    wait_for(
        "the joined node to follow again",
        Duration::from_secs(15),
        || {
            let s = status(&cluster.addr(new))?;
            (s.leader_id != 0 && s.voters.contains(&new)).then_some(())
        },
    );
    writer.stop_and_check(cluster.endpoints());
}

#[test]
fn leader_transfer_keeps_reads_linearizable() {
    // Lease reads on: they must not be served from an old leader's lease after a transfer.
    let cluster = Cluster::start(3, &["--lease-reads"]);
    cluster.wait_leader();
    let mut c = patient(cluster.endpoints());
    for round in 0..5 {
        let v = format!("v{round}");
        c.put(b"k", v.as_bytes()).unwrap();
        let old = cluster.wait_leader();
        let to = c.leader_transfer(0).unwrap();
        // Read at once: whoever answers, the acknowledged write must be seen.
        let got = c.get(b"k").unwrap();
        assert_eq!(
            got.value,
            v.as_bytes(),
            "round {round}: stale read after transfer {old} -> {to}"
        );
        let lease = cluster
            .client_with(kvpb::Consistency::Lease)
            .get(b"k")
            .unwrap();
        assert_eq!(lease.value, v.as_bytes(), "round {round}: stale lease read");
    }
    // The CLI waits for the new leader and names it.
    let old = cluster.wait_leader();
    let out = std::process::Command::new(EXE)
        .args(["leader", "transfer", "--json", "--endpoints"])
        .arg(cluster.endpoints().join(","))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "leader transfer: {text}");
    assert!(!text.contains(&format!("\"leader\":{old},")), "{text}");
    assert_ne!(cluster.wait_leader(), old, "{text}");
}

#[test]
fn sigterm_on_the_leader_hands_leadership_over() {
    // 50 ms ticks, 10-tick election timeout: without a hand-off the others would wait at
    // least 500 ms after the last heartbeat before even starting an election.
    let mut cluster = Cluster::start(3, &["--tick-ms=50", "--heartbeat-ticks=2"]);
    let leader = cluster.wait_leader();
    let writer = Writer::start(cluster.endpoints());
    wait_for("first writes", Duration::from_secs(10), || {
        (writer.acked() > 5).then_some(())
    });
    let start = Instant::now();
    cluster.signal(leader, libc::SIGTERM);
    let new = wait_for("a new leader", Duration::from_secs(10), || {
        (1..=3)
            .filter(|&i| i != leader)
            .find(|&i| status(&cluster.addr(i)).is_some_and(|s| s.role == "leader"))
    });
    let took = start.elapsed();
    eprintln!("SIGTERM on leader {leader}: node {new} leads after {took:?}");
    assert!(
        took < Duration::from_millis(250),
        "hand-off took {took:?}, not much less than the 500 ms election timeout"
    );
    let st = cluster.wait_exit(leader);
    assert!(st.success(), "old leader exited with {st}");
    writer.stop_and_check(cluster.endpoints());
}

/// Runs the `raftkv` CLI; returns (exit code, stdout).
fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(EXE).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The `"conf_index":N` of a `member ... --json` answer.
fn conf_index(json: &str) -> u64 {
    let rest = json.split("\"conf_index\":").nth(1).expect("conf_index");
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn cli_learner_promote_and_conditional_remove() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader();
    let eps = cluster.endpoints().join(",");
    let e = ["--endpoints", eps.as_str(), "--json"];
    // A learner that stays one (no node runs at that address: it never catches up).
    let (code, out) = cli(&[
        &["member", "add", "9", "127.0.0.1:1/127.0.0.1:2", "--learner"],
        &e[..],
    ]
    .concat());
    assert_eq!(code, 0, "{out}");
    let (code, list) = cli(&[&["member", "list"], &e[..]].concat());
    assert_eq!(code, 0, "{list}");
    assert!(list.contains(r#""id":9,"role":"learner""#), "{list}");
    assert!(list.contains(r#""promote":false"#), "{list}");
    let (code, out) = cli(&[&["member", "promote", "9"], &e[..]].concat());
    assert_eq!(code, 0, "{out}");
    let promoted = conf_index(&out);
    let (_, list) = cli(&[&["member", "list"], &e[..]].concat());
    assert!(list.contains(r#""id":9,"role":"voter""#), "{list}");
    // A stale configuration index is refused with CONFLICT (exit 4); the current one works.
    let stale = (promoted - 1).to_string();
    let (code, out) = cli(&[
        &["member", "remove", "9", "--expected-conf-index", &stale],
        &e[..],
    ]
    .concat());
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("CONFLICT"), "{out}");
    let current = conf_index(&list).to_string();
    let (code, out) = cli(&[
        &["member", "remove", "9", "--expected-conf-index", &current],
        &e[..],
    ]
    .concat());
    assert_eq!(code, 0, "{out}");
    // The id is never reused.
    let (code, out) = cli(&[&["member", "add", "9", "127.0.0.1:1"], &e[..]].concat());
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("never reused"), "{out}");
    // `status` shows the configuration.
    let (code, out) = cli(&["status", "--endpoints", &eps]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("configuration (entry"), "{out}");
}

/// `raftkv cluster add` grows a running local cluster, `cluster remove` shrinks it.
#[test]
fn local_cluster_add_and_remove() {
    // 3 nodes x 3 ports, then 3 for the added node 4.
    let base = raftkv::net::ports::free_port_range(12).expect("12 consecutive free ports");
    let dir = tempfile::tempdir().unwrap();
    let common_args = |cmd: &mut std::process::Command| {
        cmd.arg("--dir")
            .arg(dir.path())
            .arg(format!("--base-port={base}"))
            .args(["--tick-ms=10", "--log-level=warn", "--segment-size=1048576"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    };
    let mut cmd = std::process::Command::new(EXE);
    cmd.arg("cluster");
    common_args(&mut cmd);
    let _cluster = ProcGuard(cmd.spawn().unwrap());
    let eps = (base..base + 3)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    wait_for(
        "the local cluster to take a write",
        Duration::from_secs(20),
        || (cli(&["put", "--endpoints", &eps, "--timeout-ms=1000", "k", "v"]).0 == 0).then_some(()),
    );
    let mut cmd = std::process::Command::new(EXE);
    cmd.args(["cluster", "add"]);
    common_args(&mut cmd);
    let mut added = ProcGuard(cmd.spawn().unwrap());
    let mut c = patient(eps.split(',').map(str::to_string).collect());
    wait_voters(&mut c, &[1, 2, 3, 4], Duration::from_secs(30));
    let (code, out) = cli(&[
        "cluster",
        "remove",
        "4",
        "--dir",
        dir.path().to_str().unwrap(),
        &format!("--base-port={base}"),
    ]);
    assert_eq!(code, 0, "{out}");
    wait_voters(&mut c, &[1, 2, 3], Duration::from_secs(30));
    let st = wait_for("the removed node to exit", Duration::from_secs(15), || {
        added.0.try_wait().unwrap()
    });
    assert!(!st.success(), "removed node 4 exited with {st}");
}

/// A join whose answer was lost leaves the node a learner before it ever ran; starting it
/// (with --join again) goes ahead: a learner never voted, its empty disk forgets nothing.
#[test]
fn a_join_retried_after_the_change_was_made_starts() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_leader();
    let id = cluster.new_joining_node();
    let (peer, client) = {
        let n = cluster.nodes.iter().find(|n| n.id == id).unwrap();
        (n.peer_addr.clone(), n.client_addr.clone())
    };
    let eps = cluster.endpoints().join(",");
    let addrs = format!("{peer}/{client}");
    let (code, out) = cli(&[
        "member",
        "add",
        &id.to_string(),
        &addrs,
        "--endpoints",
        &eps,
    ]);
    assert_eq!(code, 0, "{out}");
    cluster.start_node(id);
    let mut c = patient(cluster.endpoints());
    wait_voters(&mut c, &[1, 2, 3, id], Duration::from_secs(30));
}
