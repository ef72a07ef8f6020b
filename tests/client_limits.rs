//! Process tests of the client's limits against real clusters: TOO_LARGE reaches the user at
//! once, a hung (SIGSTOPped) first endpoint costs one attempt, and a write answered
//! SHUTTING_DOWN is uncertain but safe to retry with its session seq.

use raftkv::client::{ClientOptions, DEFAULT_ATTEMPT_TIMEOUT};
use raftkv::net::framing::blocking;
use raftkv::pb::kvpb::{self, response::Result as R, ErrorCode};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Scheduling slack for a bound on elapsed time: a loaded 2-core VM can leave a process
/// unscheduled for hundreds of ms, and a CLI run includes starting a process.
const SLACK: Duration = Duration::from_millis(1500);

/// The CLI's default deadline (`--timeout-ms`): what a retried TOO_LARGE used to cost.
const CLI_DEADLINE: Duration = Duration::from_secs(5);

fn raftkv(args: &[String]) -> (i32, String, String, Duration) {
    let start = Instant::now();
    let out = Command::new(EXE).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// `--max-frame 2000` servers, a 3000-byte value: the server answers TOO_LARGE with the
/// request's id, and the CLI exits 4 after one round trip, well below its 5 s deadline (the
/// bound: half of it). A request over the client's own --max-frame is refused unsent.
#[test]
fn too_large_exits_4_at_once() {
    let cluster = Cluster::start(3, &["--max-frame=2000"]);
    cluster.wait_leader();

    // Raw: the error carries the id of the oversized request.
    let mut s = connect(&cluster.addr(1));
    blocking::write_msg(&mut s, &put_req(77, "big", &"x".repeat(3000))).unwrap();
    let r: kvpb::Response = blocking::read_msg(&mut s, 1 << 20).unwrap();
    assert!(
        r.id == 77 && matches!(&r.result, Some(R::Error(e)) if e.code() == ErrorCode::TooLarge),
        "{r:?}"
    );

    let ep = format!("--endpoints={}", cluster.endpoints().join(","));
    let big = "x".repeat(3000);
    let (code, _, err, took) = raftkv(&["put".into(), ep.clone(), "big".into(), big.clone()]);
    eprintln!("put of 3000 bytes to --max-frame 2000: exit {code} after {took:?}: {err}");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("TOO_LARGE"), "{err}");
    assert!(
        took < CLI_DEADLINE / 2,
        "took {took:?}; a TOO_LARGE answer needs one round trip, not retries to the {CLI_DEADLINE:?} deadline"
    );

    // Over the client's own limit: not sent at all.
    let (code, _, err, took) = raftkv(&[
        "put".into(),
        ep,
        "--max-frame=1000".into(),
        "big".into(),
        big,
    ]);
    eprintln!("put over the client's --max-frame: exit {code} after {took:?}: {err}");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not sent"), "{err}");
    assert!(took < CLI_DEADLINE / 2, "took {took:?}");
    // The cluster still serves normal requests.
    cluster.client().put(b"small", b"ok").unwrap();
}

/// Resumes a SIGSTOPped node when dropped (so the cluster's Drop can stop it normally even
/// when the test fails).
struct Resume<'a>(&'a Cluster, u64);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal(self.1, libc::SIGCONT);
    }
}

/// A SIGSTOPped first endpoint (a follower: the leader and a quorum are up) accepts
/// connections (the kernel completes the handshake) but never answers: it must cost one
/// attempt timeout, not the deadline. Bound: one default attempt timeout (1 s) plus slack,
/// below the 5 s deadline that every put/get used to spend.
#[test]
fn sigstopped_first_endpoint_costs_one_attempt() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let stopped = (1..=3).find(|&i| i != leader).unwrap();
    let mut endpoints = vec![cluster.addr(stopped)];
    endpoints.extend((1..=3).filter(|&i| i != stopped).map(|i| cluster.addr(i)));
    cluster.client().put(b"k", b"before").unwrap();
    cluster.signal(stopped, libc::SIGSTOP);
    let _resume = Resume(&cluster, stopped);

    let bound = DEFAULT_ATTEMPT_TIMEOUT + SLACK;
    let ep = format!("--endpoints={}", endpoints.join(","));
    let (code, out, err, took) = raftkv(&["put".into(), ep.clone(), "k".into(), "v".into()]);
    eprintln!("CLI put with node {stopped} SIGSTOPped first: exit {code} after {took:?} (bound {bound:?}) {err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(took < bound, "put took {took:?}; bound {bound:?}");
    let (code, out, err, took) = raftkv(&["get".into(), ep, "k".into()]);
    eprintln!("CLI get with node {stopped} SIGSTOPped first: exit {code} after {took:?} {out}");
    assert_eq!((code, out.as_str()), (0, "v\n"), "{err}");
    assert!(took < bound, "get took {took:?}; bound {bound:?}");

    // The library, same order, default options.
    let mut c = raftkv::client::Client::new(endpoints, ClientOptions::default());
    let start = Instant::now();
    c.put(b"k", b"lib").unwrap();
    let took = start.elapsed();
    eprintln!("library put with a SIGSTOPped first endpoint: {took:?}");
    assert!(took < bound, "library put took {took:?}; bound {bound:?}");
}

/// A leader SIGTERMed with a write in its log answers SHUTTING_DOWN, and the write may still
/// apply: here it does, deterministically (no follower has it, so only the old leader can win
/// the next election, and it commits its log). A retry with the same session seq is then
/// answered from the session table with the first application's version: applied once.
#[test]
fn shutting_down_write_may_apply_and_its_retry_is_exactly_once() {
    let mut cluster = Cluster::start(3, &["--no-check-quorum"]);
    let leader = cluster.wait_leader();
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    for &id in &followers {
        cluster.kill(id);
    }
    let session = |id| kvpb::Request {
        client_id: 0xC0FFEE,
        seq: 1,
        acked_seq: 0,
        ..put_req(id, "pending", "write")
    };
    let mut s = connect(&cluster.addr(leader));
    blocking::write_msg(&mut s, &session(1)).unwrap();
    // The write is in the leader's log once a later request on the connection is answered.
    let status = kvpb::Request {
        id: 2,
        op: Some(kvpb::request::Op::Status(kvpb::StatusRequest {})),
        ..Default::default()
    };
    blocking::write_msg(&mut s, &status).unwrap();
    let r: kvpb::Response = blocking::read_msg(&mut s, 1 << 20).unwrap();
    assert_eq!(r.id, 2, "{r:?}");
    cluster.stop(leader);
    let r: kvpb::Response = blocking::read_msg(&mut s, 1 << 20).unwrap();
    match &r.result {
        Some(R::Error(e)) if r.id == 1 && e.code() == ErrorCode::ShuttingDown => {
            assert!(e.message.contains("may or may not"), "{}", e.message)
        }
        other => panic!("expected SHUTTING_DOWN for request 1, got {r:?} / {other:?}"),
    }

    // The old leader and one follower: the follower's log is behind, so only the old leader
    // can be elected, and it commits the write answered SHUTTING_DOWN.
    cluster.start_node(leader);
    cluster.start_node(followers[0]);
    let mut c = cluster.client();
    let got = c.get(b"pending").unwrap();
    eprintln!("after restart: {got:?}");
    assert!(
        got.found && &got.value[..] == b"write",
        "the write answered SHUTTING_DOWN did apply here: {got:?}"
    );

    // The retry of the same (client_id, seq) returns the saved result: not applied again.
    let new_leader = cluster.wait_leader();
    let mut s = connect(&cluster.addr(new_leader));
    blocking::write_msg(&mut s, &session(3)).unwrap();
    let r: kvpb::Response = blocking::read_msg(&mut s, 1 << 20).unwrap();
    match r.result {
        Some(R::Put(p)) => assert_eq!(p.version, got.version, "retry re-applied the write"),
        other => panic!("retry: {other:?}"),
    }
    assert_eq!(c.get(b"pending").unwrap().version, got.version);
}
