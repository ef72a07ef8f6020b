//! End-to-end tests: real `raftkv serve` processes on loopback, driven through the client
//! library and through raw sockets.
//!
//! Every cluster uses free ports (bound to 127.0.0.1:0 first), a temp dir, 10 ms ticks, and a
//! `Cluster` guard whose Drop kills every child. Waits poll with deadlines. Node logs go to
//! `<tempdir>/n<i>.log` and are printed when a test fails.

use bytes::Bytes;
use raftkv::client::{Client, ClientOptions};
use raftkv::net::framing::{blocking, frame_bytes};
use raftkv::pb::kvpb::{self, response::Result as R, ErrorCode};
use raftkv::rng::Rng;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn connect(addr: &str) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(s)
}

fn call(s: &mut TcpStream, req: &kvpb::Request) -> kvpb::Response {
    blocking::write_msg(s, req).unwrap();
    blocking::read_msg(s, 1 << 20).unwrap()
}

fn err_code(r: &kvpb::Response) -> Option<ErrorCode> {
    match &r.result {
        Some(R::Error(e)) => Some(e.code()),
        _ => None,
    }
}

fn seed() -> u64 {
    std::env::var("RAFTKV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Random puts/gets/deletes/cas/scans through the client library agree with a model map.
#[test]
fn operations_agree_with_a_model() {
    let seed = seed();
    eprintln!("seed {seed} (rerun with RAFTKV_SEED={seed})");
    let cluster = Cluster::start(3, &["--lease-reads"]);
    cluster.wait_leader();
    let mut c = cluster.client();
    let mut lease = Client::new(
        cluster.endpoints(),
        ClientOptions {
            timeout: Duration::from_secs(10),
            consistency: kvpb::Consistency::Lease,
            ..Default::default()
        },
    );
    let mut rng = Rng::new(seed);
    // key -> (value, version)
    let mut model: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for step in 0..300 {
        let key = format!("k{}", rng.next_u64() % 20);
        let ctx = format!("seed {seed} step {step} key {key}");
        match rng.next_u64() % 7 {
            0 | 1 => {
                let v = format!("v{step}");
                let r = c.put(key.as_bytes(), v.as_bytes()).expect(&ctx);
                assert!(
                    r.version > model.get(&key).map_or(0, |x| x.1),
                    "{ctx}: version must grow"
                );
                model.insert(key, (v, r.version));
            }
            2 | 3 => {
                let client = if step % 2 == 0 { &mut c } else { &mut lease };
                let r = client.get(key.as_bytes()).expect(&ctx);
                match model.get(&key) {
                    Some((v, ver)) => {
                        assert!(r.found, "{ctx}");
                        assert_eq!(r.value, v.as_bytes(), "{ctx}");
                        assert_eq!(r.version, *ver, "{ctx}");
                    }
                    None => assert!(!r.found, "{ctx}"),
                }
            }
            4 => {
                let r = c.delete(key.as_bytes()).expect(&ctx);
                assert_eq!(r.deleted, model.remove(&key).is_some(), "{ctx}");
            }
            5 => {
                let current = model.get(&key).map_or(0, |x| x.1);
                // Half the time a wrong expected version.
                let expect = if rng.next_u64() % 2 == 0 {
                    current
                } else {
                    current + 1
                };
                let v = format!("cas{step}");
                let r = c
                    .cas(kvpb::Cas {
                        key: Bytes::copy_from_slice(key.as_bytes()),
                        expected_version: expect,
                        value: Bytes::copy_from_slice(v.as_bytes()),
                        delete: false,
                    })
                    .expect(&ctx);
                assert_eq!(r.succeeded, expect == current, "{ctx}");
                if r.succeeded {
                    model.insert(key, (v, r.version));
                } else {
                    assert_eq!(r.version, current, "{ctx}: failed CAS reports the version");
                }
            }
            _ => {
                let got = scan_all(&mut c, "k");
                let want: BTreeMap<String, String> = model
                    .iter()
                    .map(|(k, (v, _))| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "{ctx}");
            }
        }
    }
}

/// SIGKILL the leader under write load: a new leader takes over, no acknowledged write is
/// lost, the old leader restarts from its log and catches up; then the whole cluster crashes
/// and restarts with every acknowledged write intact.
#[test]
fn leader_crash_and_full_restart_lose_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    let old_leader = cluster.wait_leader();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let (acked, stop, eps) = (acked.clone(), stop.clone(), cluster.endpoints());
            std::thread::spawn(move || {
                let mut c = Client::new(
                    eps,
                    ClientOptions {
                        timeout: Duration::from_secs(10),
                        ..Default::default()
                    },
                );
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (k, v) = (format!("w{t}-{i:05}"), format!("value-{t}-{i}"));
                    // A failed write has an unknown outcome; only acknowledged ones count.
                    if c.put(k.as_bytes(), v.as_bytes()).is_ok() {
                        acked.lock().unwrap().insert(k, v);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let count = || acked.lock().unwrap().len();
    wait_for("writes before the crash", Duration::from_secs(15), || {
        (count() >= 50).then_some(())
    });
    cluster.kill(old_leader);
    let at_kill = count();
    let new_leader = cluster.wait_leader();
    assert_ne!(new_leader, old_leader);
    wait_for("writes after the crash", Duration::from_secs(15), || {
        (count() >= at_kill + 50).then_some(())
    });
    cluster.start_node(old_leader);
    wait_for("writes after the restart", Duration::from_secs(15), || {
        (count() >= at_kill + 100).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // Every acknowledged write is readable (linearizable reads through the leader)...
    let mut c = cluster.client();
    let all = scan_all(&mut c, "w");
    for (k, v) in &acked {
        assert_eq!(all.get(k), Some(v), "acknowledged write {k} lost");
    }
    // ...and the restarted node caught up: its own state (stale local read) has them all.
    let leader = cluster.wait_leader();
    let commit = status(&cluster.addr(leader)).unwrap().commit_index;
    wait_for(
        "the old leader to catch up",
        Duration::from_secs(15),
        || (status(&cluster.addr(old_leader))?.applied_index >= commit).then_some(()),
    );
    let mut local = Client::new(
        vec![cluster.addr(old_leader)],
        ClientOptions {
            timeout: Duration::from_secs(5),
            consistency: kvpb::Consistency::Stale,
            ..Default::default()
        },
    );
    let on_old = scan_all(&mut local, "w");
    for (k, v) in &acked {
        assert_eq!(on_old.get(k), Some(v), "restarted node misses {k}");
    }

    // Crash everyone, restart everyone: all acknowledged data is still there.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_leader();
    let mut c = cluster.client();
    let after = scan_all(&mut c, "w");
    for (k, v) in &acked {
        assert_eq!(
            after.get(k),
            Some(v),
            "write {k} lost across a full restart"
        );
    }
    // A graceful stop exits 0.
    for id in 1..=3 {
        cluster.stop(id);
    }
}

/// A follower answers writes with NOT_LEADER naming the leader's client address, the client
/// library follows it, and a leader that loses its quorum answers pending writes with an
/// error (never success).
#[test]
fn follower_redirects_and_lost_quorum_fails_writes() {
    let mut cluster = Cluster::start(3, &["--request-timeout-ms=2000"]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();

    let mut s = connect(&cluster.addr(follower)).unwrap();
    let r = call(&mut s, &put_req(7, "a", "1"));
    assert_eq!(r.id, 7);
    match r.result {
        Some(R::Error(e)) => {
            assert_eq!(e.code(), ErrorCode::NotLeader);
            assert_eq!(e.leader_id, leader);
            assert_eq!(e.leader_addr, cluster.addr(leader));
        }
        other => panic!("expected NOT_LEADER, got {other:?}"),
    }
    // A linearizable read on a follower is redirected too.
    let get = kvpb::Request {
        id: 8,
        op: Some(kvpb::request::Op::Get(kvpb::Get {
            key: Bytes::from_static(b"a"),
        })),
        ..Default::default()
    };
    assert_eq!(err_code(&call(&mut s, &get)), Some(ErrorCode::NotLeader));

    // The client library, given only the follower, follows the redirect.
    let mut c = Client::new(vec![cluster.addr(follower)], ClientOptions::default());
    assert!(c.put(b"a", b"1").is_ok());
    assert_eq!(&c.get(b"a").unwrap().value[..], b"1");

    // Lose the quorum: a write to the old leader must not succeed.
    for id in (1..=3).filter(|&i| i != leader) {
        cluster.kill(id);
    }
    let mut s = connect(&cluster.addr(leader)).unwrap();
    let r = call(&mut s, &put_req(9, "b", "2"));
    let code = err_code(&r).unwrap_or_else(|| panic!("write without quorum answered {r:?}"));
    // CheckQuorum makes the leader step down (~100-200 ms) long before the 2 s deadline: the
    // pending write is answered UNCERTAIN (NOT_LEADER if it stepped down before it arrived).
    assert!(
        matches!(code, ErrorCode::Uncertain | ErrorCode::NotLeader),
        "{code:?}"
    );
}

/// Without CheckQuorum a leader cut off from its quorum keeps its role: pending writes and
/// reads hit the server-side deadline and are answered TIMEOUT.
#[test]
fn requests_time_out_without_a_quorum() {
    let mut cluster = Cluster::start(3, &["--no-check-quorum", "--request-timeout-ms=200"]);
    let leader = cluster.wait_leader();
    let mut c = Client::new(vec![cluster.addr(leader)], ClientOptions::default());
    c.put(b"x", b"1").unwrap();
    for id in (1..=3).filter(|&i| i != leader) {
        cluster.kill(id);
    }
    let mut s = connect(&cluster.addr(leader)).unwrap();
    let started = Instant::now();
    let r = call(&mut s, &put_req(21, "y", "2"));
    assert_eq!(
        (r.id, err_code(&r)),
        (21, Some(ErrorCode::Timeout)),
        "{r:?}"
    );
    // TIMEOUT is the server's request deadline (--request-timeout-ms=200), not earlier.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "TIMEOUT after {:?}, before the 200 ms request deadline",
        started.elapsed()
    );
    let get = kvpb::Request {
        id: 22,
        op: Some(kvpb::request::Op::Get(kvpb::Get {
            key: Bytes::from_static(b"x"),
        })),
        ..Default::default()
    };
    let r = call(&mut s, &get);
    assert_eq!(
        (r.id, err_code(&r)),
        (22, Some(ErrorCode::Timeout)),
        "{r:?}"
    );
    // STALE reads are local and still served.
    let stale = kvpb::Request {
        consistency: kvpb::Consistency::Stale as i32,
        ..get
    };
    let r = call(&mut s, &stale);
    assert!(
        matches!(&r.result, Some(R::Get(g)) if &g.value[..] == b"1"),
        "{r:?}"
    );
}

/// SIGTERM with a write pending: the client is told SHUTTING_DOWN and the node exits 0.
#[test]
fn graceful_shutdown_answers_pending_requests() {
    let mut cluster = Cluster::start(3, &["--no-check-quorum"]);
    let leader = cluster.wait_leader();
    for id in (1..=3).filter(|&i| i != leader) {
        cluster.kill(id);
    }
    let mut s = connect(&cluster.addr(leader)).unwrap();
    blocking::write_msg(&mut s, &put_req(31, "pending", "write")).unwrap();
    // The write is in (it cannot commit without a quorum) once a later request is answered.
    let r = call(
        &mut s,
        &kvpb::Request {
            id: 32,
            op: Some(kvpb::request::Op::Status(kvpb::StatusRequest {})),
            ..Default::default()
        },
    );
    assert_eq!(r.id, 32, "{r:?}");
    cluster.stop(leader); // SIGTERM, asserts exit status 0
    let r: kvpb::Response = blocking::read_msg(&mut s, 1 << 20).unwrap();
    assert_eq!(
        (r.id, err_code(&r)),
        (31, Some(ErrorCode::ShuttingDown)),
        "{r:?}"
    );
}

/// A client that pipelines far more responses than the output limit without reading is
/// throttled — the server stops reading its requests, so its writes block — but gets every
/// response in order once it reads; other clients are served meanwhile.
#[test]
fn backpressure_pauses_a_client_that_does_not_read() {
    let cluster = Cluster::start(1, &["--client-output-limit=65536"]);
    cluster.wait_leader();
    let addr = cluster.addr(1);
    let mut c = cluster.client();
    // 8 KB keys and values: 3000 gets are ~24 MB of requests and ~48 MB of responses, more
    // than loopback socket buffers can hold in either direction.
    let key = Bytes::from(vec![b'k'; 8000]);
    c.put(&key, &vec![b'v'; 8000]).unwrap();
    let n = 3000u64;
    let mut s = connect(&addr).unwrap();
    let mut r2 = s.try_clone().unwrap();
    let k2 = key.clone();
    let writer = std::thread::spawn(move || {
        for id in 1..=n {
            let req = kvpb::Request {
                id,
                consistency: kvpb::Consistency::Stale as i32,
                op: Some(kvpb::request::Op::Get(kvpb::Get { key: k2.clone() })),
                ..Default::default()
            };
            blocking::write_msg(&mut s, &req).unwrap();
        }
    });
    // While the pipelining client is stuck, another client is served...
    for i in 0..20 {
        c.put(format!("other{i}").as_bytes(), b"x").unwrap();
    }
    // ...and the stuck one cannot have sent everything: the server stopped reading it.
    assert!(
        !writer.is_finished(),
        "server kept reading a client that does not read"
    );
    for id in 1..=n {
        let r: kvpb::Response = blocking::read_msg(&mut r2, 1 << 20).unwrap();
        assert_eq!(r.id, id);
        assert!(matches!(&r.result, Some(R::Get(g)) if g.value.len() == 8000));
    }
    writer.join().unwrap();
}

/// A node whose data dir holds a snapshot (and no log) starts from it: the KV state is
/// restored, the log continues after the snapshot index, and after a restart snapshot + log
/// replay give back everything.
#[test]
fn node_starts_from_a_snapshot_and_continues_its_log() {
    use raftkv::kv::{encode_command, KvStore};
    use raftkv::pb::raftpb::{ConfState, SnapshotMeta};
    use raftkv::storage::SnapshotStore;
    let mut cluster = Cluster::start_with(1, &[], |root| {
        let mut kv = KvStore::new();
        for i in 1..=50u64 {
            let cmd = kvpb::Command {
                op: Some(kvpb::command::Op::Put(kvpb::Put {
                    key: Bytes::from(format!("s{i:03}")),
                    value: Bytes::from(format!("snap{i}")),
                    ..Default::default()
                })),
                ..Default::default()
            };
            kv.apply(i, &encode_command(&cmd));
        }
        let meta = SnapshotMeta {
            index: 50,
            term: 3,
            conf: Some(ConfState {
                voters: vec![1],
                learners: vec![],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut store = SnapshotStore::open(&root.join("n1").join("snap")).unwrap();
        let mut w = store.create(&meta).unwrap();
        kv.write_snapshot(&mut w).unwrap();
        w.finish().unwrap();
    });
    cluster.wait_leader();
    let st = status(&cluster.addr(1)).unwrap();
    assert!(st.applied_index >= 50 && st.term > 3, "{st:?}");
    assert_eq!(st.snapshot_index, 50);
    let mut c = cluster.client();
    assert_eq!(scan_all(&mut c, "s").len(), 50);
    assert_eq!(&c.get(b"s007").unwrap().value[..], b"snap7");
    let v = c.put(b"after", b"snapshot").unwrap().version;
    assert!(v > 50, "new writes follow the snapshot index, got {v}");
    cluster.kill(1);
    cluster.start_node(1);
    cluster.wait_leader();
    let mut c = cluster.client();
    assert_eq!(scan_all(&mut c, "s").len(), 50);
    assert_eq!(&c.get(b"after").unwrap().value[..], b"snapshot");
}

/// With tiny snapshot thresholds and segments, the leader snapshots and compacts its log while
/// a follower is down; the restarted follower is behind the compacted log and catches up through
/// an InstallSnapshot transfer; a full restart then recovers from snapshots + log.
#[test]
fn lagging_follower_catches_up_by_snapshot_transfer() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--snapshot-entries=100",
            "--snapshot-trailing=10",
            "--segment-size=8192",
        ],
    );
    let leader = cluster.wait_leader();
    let lagger = (1..=3).find(|&i| i != leader).unwrap();
    cluster.kill(lagger);
    // 4 concurrent writers: group commit batches their fsyncs.
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let eps = cluster.endpoints();
            std::thread::spawn(move || {
                let mut c = Client::new(eps, ClientOptions::default());
                let mut m = BTreeMap::new();
                for i in 0..125 {
                    let (k, v) = (
                        format!("p{t}-{i:04}"),
                        format!("value-{i}-{}", "x".repeat(40)),
                    );
                    c.put(k.as_bytes(), v.as_bytes()).unwrap();
                    m.insert(k, v);
                }
                m
            })
        })
        .collect();
    let mut model = BTreeMap::new();
    for w in writers {
        model.extend(w.join().unwrap());
    }
    // The leader's log no longer reaches back to the lagger's last entry.
    let st = wait_for("the leader to compact", Duration::from_secs(15), || {
        let st = status(&cluster.addr(leader))?;
        (st.first_log_index > 100 && st.snapshot_index > 0).then_some(st)
    });
    cluster.start_node(lagger);
    wait_for(
        "the lagger to install a snapshot and catch up",
        Duration::from_secs(20),
        || {
            let s = status(&cluster.addr(lagger))?;
            (s.snapshot_index >= st.snapshot_index && s.applied_index >= st.commit_index)
                .then_some(())
        },
    );
    let mut local = Client::new(
        vec![cluster.addr(lagger)],
        ClientOptions {
            timeout: Duration::from_secs(5),
            consistency: kvpb::Consistency::Stale,
            ..Default::default()
        },
    );
    assert_eq!(
        scan_all(&mut local, "p"),
        model,
        "lagger state after the transfer"
    );
    let log = std::fs::read_to_string(cluster.log_path(lagger)).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "no snapshot was installed"
    );
    // Full crash + restart: snapshots + log replay give back everything.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_leader();
    let mut c = cluster.client();
    assert_eq!(scan_all(&mut c, "p"), model, "after a full restart");
}

/// Garbage, oversized, truncated and empty requests get an error or a closed connection; the
/// node keeps serving other clients and loses nothing.
#[test]
fn bad_client_input_is_rejected_and_the_node_keeps_serving() {
    let cluster = Cluster::start(1, &["--max-frame=4096"]);
    cluster.wait_leader();
    let addr = cluster.addr(1);
    let mut good = cluster.client();
    good.put(b"keep", b"me").unwrap();

    // A bystander connection stays usable throughout.
    let mut bystander = connect(&addr).unwrap();

    let expect_error_then_close = |bytes: &[u8], code: ErrorCode| {
        let mut s = connect(&addr).unwrap();
        s.write_all(bytes).unwrap();
        let r: kvpb::Response = blocking::read_msg(&mut s, 1 << 20).unwrap();
        assert_eq!(err_code(&r), Some(code), "{r:?}");
        let mut rest = Vec::new();
        assert_eq!(
            s.read_to_end(&mut rest).unwrap(),
            0,
            "connection not closed"
        );
    };
    // Garbage payload in a well-formed frame.
    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 5]);
    expect_error_then_close(&garbage, ErrorCode::BadRequest);
    // A frame longer than the maximum (only the header is sent: it is refused unread).
    expect_error_then_close(&(1u32 << 20).to_be_bytes(), ErrorCode::TooLarge);
    // A real request far over the limit, sent whole: the server must still deliver its error
    // (no RST from closing with unread input) and then close.
    let big = frame_bytes(&put_req(3, "big", &"x".repeat(300_000)));
    expect_error_then_close(&big, ErrorCode::TooLarge);

    // A truncated frame, then the client goes away: the server just closes.
    {
        let mut s = connect(&addr).unwrap();
        let f = frame_bytes(&put_req(4, "t", "u"));
        s.write_all(&f[..f.len() - 2]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    }

    // Valid frames with an empty request, or only unknown fields: BAD_REQUEST, the connection
    // stays open and serves the next request.
    let mut s = connect(&addr).unwrap();
    let empty = kvpb::Request {
        id: 11,
        ..Default::default()
    };
    let r = call(&mut s, &empty);
    assert_eq!((r.id, err_code(&r)), (11, Some(ErrorCode::BadRequest)));
    // Field 99 (varint 1) and id 12: decodes with no op.
    let unknown = [0x08, 12, 0x98, 0x06, 0x01];
    let mut f = (unknown.len() as u32).to_be_bytes().to_vec();
    f.extend(unknown);
    s.write_all(&f).unwrap();
    let r: kvpb::Response = blocking::read_msg(&mut s, 1 << 20).unwrap();
    assert_eq!((r.id, err_code(&r)), (12, Some(ErrorCode::BadRequest)));
    let empty_key = put_req(13, "", "v");
    assert_eq!(
        err_code(&call(&mut s, &empty_key)),
        Some(ErrorCode::BadRequest)
    );
    let r = call(&mut s, &put_req(14, "after", "ok"));
    assert!(matches!(r.result, Some(R::Put(_))), "{r:?}");

    // The bystander and a fresh client still work, and nothing committed was lost.
    let r = call(&mut bystander, &put_req(1, "bystander", "fine"));
    assert!(matches!(r.result, Some(R::Put(_))), "{r:?}");
    assert_eq!(&good.get(b"keep").unwrap().value[..], b"me");
    assert_eq!(&good.get(b"after").unwrap().value[..], b"ok");
    assert!(!good.get(b"big").unwrap().found);
}

/// Garbage on the peer port closes that connection only.
#[test]
fn bad_peer_input_closes_only_that_connection() {
    let cluster = Cluster::start(1, &[]);
    cluster.wait_leader();
    let peer_addr = cluster
        .peers
        .split('=')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let mut s = connect(peer_addr).unwrap();
    let mut garbage = 6u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 6]);
    s.write_all(&garbage).unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    let mut c = cluster.client();
    c.put(b"still", b"up").unwrap();

    // A second node on the same data directory refuses to start.
    let ports = free_ports(2);
    let out = Command::new(EXE)
        .args(["serve", "--id=1"])
        .arg("--data-dir")
        .arg(cluster.dir.path().join("n1"))
        .args(peer_secret_args(cluster.dir.path()))
        .arg(format!(
            "--peers=1=127.0.0.1:{}/127.0.0.1:{}",
            ports[0], ports[1]
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by process"), "{err}");
    c.put(b"still", b"up again").unwrap();
}

fn raftkv(args: &[&str]) -> (i32, String) {
    let out = Command::new(EXE).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `raftkv cluster` starts a working cluster, the CLI talks to it, Ctrl-C (SIGINT) stops it
/// cleanly, and a restart keeps the data.
#[test]
fn cluster_command_and_cli() {
    // 6 consecutive free ports, reserved from the harness's allocator: the other tests
    // running meanwhile are never handed any of them.
    let base = raftkv::net::ports::free_port_range(6).expect("6 consecutive free ports");
    let dir = tempfile::tempdir().unwrap();
    let endpoints = (base..base + 3)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let start = |dir: &Path| {
        ProcGuard(
            Command::new(EXE)
                .args([
                    "cluster",
                    "--nodes",
                    "3",
                    "--tick-ms",
                    "10",
                    "--log-level",
                    "warn",
                ])
                .arg("--segment-size=1048576")
                .arg("--dir")
                .arg(dir)
                .arg(format!("--base-port={base}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut guard = start(dir.path());
    let ep = format!("--endpoints={endpoints}");
    wait_for("the CLI put to succeed", Duration::from_secs(20), || {
        (raftkv(&["put", &ep, "--timeout-ms=1000", "greeting", "hello"]).0 == 0).then_some(())
    });
    assert_eq!(raftkv(&["get", &ep, "greeting"]), (0, "hello\n".into()));
    // Secure by default: the first start generated the peer secret, readable by its owner only.
    let secret_path = dir.path().join("peer-secret");
    let secret = std::fs::read(&secret_path).expect("cluster generated a peer secret");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&secret_path.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(raftkv(&["get", &ep, "missing"]).0, 1);
    let (code, out) = raftkv(&["get", &ep, "--json", "greeting"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"value\":\"hello\""), "{out}");
    let (code, out) = raftkv(&["cas", &ep, "greeting", "--expect-version=999", "x"]);
    assert_eq!((code, out), (1, String::new()));
    let (code, out) = raftkv(&["status", &ep]);
    assert_eq!(code, 0);
    assert!(out.matches("leader").count() >= 3, "{out}");
    // One cluster id, on every node.
    let ids: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split(" cluster ").nth(1))
        .collect();
    assert_eq!(ids.len(), 1, "{out}");
    assert_eq!(ids.iter().next().unwrap().len(), 32, "{out}");
    assert_eq!(raftkv(&["del", &ep, "missing"]).0, 1);
    assert_eq!(raftkv(&["put", &ep]).0, 2, "usage error");
    assert_eq!(raftkv(&["put", &ep, "", "v"]).0, 4, "rejected: empty key");
    let (code, _) = raftkv(&["get", "--endpoints=127.0.0.1:1", "--timeout-ms=300", "k"]);
    assert_eq!(code, 3, "unreachable cluster");

    // Ctrl-C: SIGINT to the cluster process stops everything and exits 0.
    let banner = guard.interrupt_and_read_stdout();
    assert!(banner.contains(&endpoints), "{banner}");
    assert!(banner.contains("raftkv put"), "{banner}");
    wait_for(
        "the nodes to release their ports",
        Duration::from_secs(10),
        || {
            TcpStream::connect(format!("127.0.0.1:{base}"))
                .is_err()
                .then_some(())
        },
    );

    // Same command again: same ports, same data.
    let _guard = start(dir.path());
    let got = wait_for("the restarted cluster", Duration::from_secs(20), || {
        let (code, out) = raftkv(&["get", &ep, "--timeout-ms=1000", "greeting"]);
        (code == 0).then_some(out)
    });
    assert_eq!(got, "hello\n");
    assert_eq!(
        std::fs::read(&secret_path).unwrap(),
        secret,
        "the secret was not reused"
    );
}

/// Without peer credentials, or with a secret file every user may read, `raftkv serve`
/// refuses to start, says what to give it and touches nothing.
#[test]
fn serve_refuses_to_start_without_peer_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let ports = free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[String]| {
        Command::new(EXE)
            .args(["serve", "--id=1"])
            .arg("--data-dir")
            .arg(dir.path().join("n1"))
            .arg(format!(
                "--peers=1=127.0.0.1:{}/127.0.0.1:{}",
                ports[0], ports[1]
            ))
            .args(extra)
            .env_remove("RAFTKV_PEER_SECRET_FILE")
            .output()
            .unwrap()
    };
    let out = serve(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["--peer-secret-file", "--insecure-peers", "new-peer-secret"] {
        assert!(err.contains(want), "{err}");
    }
    assert!(
        !dir.path().join("n1").exists(),
        "touched the data dir before refusing"
    );

    let flags = common::peer_secret_args(dir.path());
    let secret = dir.path().join("peer-secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve(&flags);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&secret).unwrap();
    let hex = text.lines().find(|l| !l.starts_with('#')).unwrap();
    assert!(
        err.contains("every user") && err.contains("chmod 600") && !err.contains(hex),
        "{err}"
    );
    assert!(
        !dir.path().join("n1").exists(),
        "touched the data dir before refusing a world-readable secret"
    );
}

/// `n` scans of the prefix `p` (ids 1..=n), framed back to back for one pipelined write.
fn scan_batch(n: u64, consistency: kvpb::Consistency) -> Vec<u8> {
    let mut batch = Vec::new();
    for id in 1..=n {
        let req = kvpb::Request {
            id,
            consistency: consistency as i32,
            op: Some(kvpb::request::Op::Scan(kvpb::Scan {
                prefix: Bytes::from_static(b"p"),
                ..Default::default()
            })),
            ..Default::default()
        };
        blocking::write_msg(&mut batch, &req).unwrap();
    }
    batch
}

/// A 3-node cluster with `--client-output-limit=limit` holding `n` 1 MiB values (`p0`..),
/// its leader and a client.
fn output_limited_cluster(limit: u64, n: usize) -> (Cluster, u64, raftkv::client::Client) {
    let cluster = Cluster::start(
        3,
        &[
            "--segment-size=4194304",
            &format!("--client-output-limit={limit}"),
        ],
    );
    let leader = cluster.wait_leader();
    let mut c = cluster.client();
    let value = vec![b'v'; 1 << 20];
    for i in 0..n {
        c.put(format!("p{i}").as_bytes(), &value).unwrap();
    }
    (cluster, leader, c)
}

/// A client that pipelines many scans and never reads its answers holds the node's queued
/// output for it near `--client-output-limit` (issue 16: the limit was checked only before each
/// socket read, so 40 pipelined STALE scans written in one go took a node from 44 MiB to
/// 844 MiB). The node serves frames one at a time and stops at the one that crosses the
/// limit; the rest wait in the connection's input buffer. Bound: the limit plus one response
/// (a response is queued whole) and the input buffer, times two for allocator slack, plus
/// 32 MiB.
#[test]
fn a_client_that_never_reads_keeps_its_queued_output_near_its_limit() {
    let limit: u64 = 4 << 20;
    // 8 MiB of values: every scan answers about 8 MiB.
    let (cluster, leader, _) = output_limited_cluster(limit, 8);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let pid = cluster.pid(follower);
    let before = rss_bytes(pid);
    let mut s = connect(&cluster.addr(follower)).unwrap();
    let scans = 40u64;
    s.write_all(&scan_batch(scans, kvpb::Consistency::Stale))
        .unwrap();
    // Three status round trips on another connection: each answer means the node's loop has
    // turned again after the batch arrived (and it still serves everyone else).
    let mut peak = before;
    for _ in 0..3 {
        assert!(
            status(&cluster.addr(follower)).is_some(),
            "node stopped serving"
        );
        peak = peak.max(rss_bytes(pid));
    }
    let bound = output_growth_bound(limit, 8 << 20);
    assert!(
        peak - before <= bound,
        "RSS grew by {} MiB (from {} MiB) for a client that never reads; bound {} MiB",
        (peak - before) >> 20,
        before >> 20,
        bound >> 20
    );
    // Reading drains it: every scan is answered, in order.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for id in 1..=scans {
        let r: kvpb::Response = blocking::read_msg(&mut s, 64 << 20).unwrap();
        assert_eq!(r.id, id);
    }
}

/// `--max-clients`: a client beyond the limit is answered UNAVAILABLE ("too many clients")
/// and closed; once a client leaves, a new one is served (issue 16: a flood of clients slows
/// the node down instead of killing it).
#[test]
fn clients_beyond_max_clients_are_refused_with_a_clear_error() {
    let cluster = Cluster::start(1, &["--max-clients=2"]);
    cluster.wait_leader();
    let addr = cluster.addr(1);
    let status_req = kvpb::Request {
        id: 7,
        op: Some(kvpb::request::Op::Status(kvpb::StatusRequest {})),
        ..Default::default()
    };
    // Two clients are served (a status round trip each proves it accepted them).
    let mut a = connect(&addr).unwrap();
    assert!(matches!(
        call(&mut a, &status_req).result,
        Some(R::Status(_))
    ));
    let mut b = connect(&addr).unwrap();
    assert!(matches!(
        call(&mut b, &status_req).result,
        Some(R::Status(_))
    ));
    // The third is refused at once, with id 0 (it asked nothing yet), then closed.
    let mut c = connect(&addr).unwrap();
    let r: kvpb::Response = blocking::read_msg(&mut c, 1 << 20).unwrap();
    assert_eq!(
        (r.id, err_code(&r)),
        (0, Some(ErrorCode::Unavailable)),
        "{r:?}"
    );
    match &r.result {
        Some(R::Error(e)) => assert!(e.message.contains("too many clients"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    let mut rest = Vec::new();
    assert_eq!(
        c.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed after the refusal"
    );
    // The first two are still served; when one leaves, a new client gets in.
    assert!(matches!(
        call(&mut a, &status_req).result,
        Some(R::Status(_))
    ));
    drop(b);
    wait_for("a new client to be served", Duration::from_secs(5), || {
        let mut d = connect(&addr)?;
        matches!(call(&mut d, &status_req).result, Some(R::Status(_))).then_some(())
    });
}

/// Confirmed reads are answered at most `READ_BYTES_PER_PASS` (16 MiB) per loop pass (issue 16:
/// 60 pipelined linearizable scans of 8 MiB answered in one pass took 1.7 s and cost the leader
/// its quorum). Every scan is still answered, in order, and the leader keeps its term (the
/// 420 MiB of answers take many passes, each a few ms).
#[test]
fn many_pipelined_large_reads_are_answered_over_several_passes_without_an_election() {
    let cluster = Cluster::start(3, &["--segment-size=4194304"]);
    let leader = cluster.wait_leader();
    let mut c = cluster.client();
    let value = vec![b'v'; 1 << 20];
    // 7 MiB of values: one scan page (at most half a 16 MiB frame) holds them all.
    for i in 0..7 {
        c.put(format!("p{i}").as_bytes(), &value).unwrap();
    }
    let term = status(&cluster.addr(leader)).unwrap().term;
    let mut s = connect(&cluster.addr(leader)).unwrap();
    let scans = 60u64;
    s.write_all(&scan_batch(scans, kvpb::Consistency::Linearizable))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for id in 1..=scans {
        let r: kvpb::Response = blocking::read_msg(&mut s, 64 << 20).unwrap();
        assert_eq!(r.id, id);
        assert!(
            matches!(&r.result, Some(R::Scan(p)) if p.kvs.len() == 7),
            "scan {id}"
        );
    }
    let after = status(&cluster.addr(leader)).unwrap();
    assert_eq!(
        (after.term, after.leader_id),
        (term, leader),
        "an election happened while the reads were answered"
    );
}

/// A client's confirmed reads wait while its queued output is at `--client-output-limit`
/// (issue 16: stopping only the *reading* of its requests was not enough: linearizable reads
/// already taken in were all answered once confirmed, 40 × 7 MiB queued for a client that
/// never reads). Its reads stay queued and are served, in order, as it drains; meanwhile other
/// clients are answered. Bound on the leader's growth: the limit plus one response (a response
/// is queued whole) and the input buffer, times two for allocator slack, plus 32 MiB.
#[test]
fn a_client_over_its_output_limit_gets_no_more_read_answers_until_it_drains() {
    let limit: u64 = 4 << 20;
    let (cluster, leader, mut c) = output_limited_cluster(limit, 7);
    let pid = cluster.pid(leader);
    let before = rss_bytes(pid);
    let mut s = connect(&cluster.addr(leader)).unwrap();
    let scans = 40u64;
    // Small frames: all are taken in before the first answer exists (a ReadIndex round).
    s.write_all(&scan_batch(scans, kvpb::Consistency::Linearizable))
        .unwrap();
    // Another client is served meanwhile (reads and writes), and the leader stays bounded.
    let mut peak = before;
    for i in 0..20 {
        c.put(format!("other{i}").as_bytes(), b"x")
            .expect("another client's write");
        assert!(c.get(b"p0").expect("another client's read").found);
        peak = peak.max(rss_bytes(pid));
    }
    let bound = output_growth_bound(limit, 8 << 20);
    assert!(
        peak - before <= bound,
        "leader RSS grew by {} MiB (from {} MiB) for a client that never reads; bound {} MiB",
        (peak - before) >> 20,
        before >> 20,
        bound >> 20
    );
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for id in 1..=scans {
        let r: kvpb::Response = blocking::read_msg(&mut s, 64 << 20).unwrap();
        assert_eq!(r.id, id);
        assert!(
            matches!(&r.result, Some(R::Scan(p)) if p.kvs.len() == 7),
            "scan {id}: {:?}",
            err_code(&r)
        );
    }
}
