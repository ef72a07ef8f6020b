//! Client library against fake servers: redirects, retries with the same seq, immediate errors,
//! deadlines.

use raftkv::client::{Client, ClientError, ClientOptions};
use raftkv::net::framing::{blocking, DEFAULT_MAX_FRAME};
use raftkv::pb::kvpb::{self, response::Result as R, ErrorCode};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the fake server does with request number `n` (counted over all connections).
enum Action {
    Reply(R),
    /// Answer with this response id instead of the request's.
    ReplyWithId(u64, R),
    /// Close the connection without answering.
    Drop,
    /// Never answer (keep the connection open).
    Hang,
}

type Handler = Box<dyn FnMut(usize, &kvpb::Request) -> Action + Send>;

/// A fake server on 127.0.0.1:0 that records every request it reads. Stops in Drop.
struct FakeServer {
    addr: String,
    requests: Arc<Mutex<Vec<kvpb::Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(handler: impl FnMut(usize, &kvpb::Request) -> Action + Send + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let mut handler: Handler = Box::new(handler);
        let thread = std::thread::spawn(move || {
            let mut hung = Vec::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                // Poll so that Drop can stop us even while a client keeps its connection open.
                let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
                // Serve this connection until it closes or we drop/hang it.
                loop {
                    let req = match blocking::read_msg::<kvpb::Request, _>(
                        &mut stream,
                        DEFAULT_MAX_FRAME,
                    ) {
                        Ok(req) => req,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) && !stop2.load(Ordering::SeqCst) =>
                        {
                            continue
                        }
                        Err(_) => break,
                    };
                    let n = {
                        let mut r = reqs.lock().unwrap();
                        r.push(req.clone());
                        r.len() - 1
                    };
                    match handler(n, &req) {
                        Action::Reply(result) => {
                            let resp = kvpb::Response {
                                id: req.id,
                                result: Some(result),
                            };
                            if blocking::write_msg(&mut stream, &resp).is_err() {
                                break;
                            }
                        }
                        Action::ReplyWithId(id, result) => {
                            let resp = kvpb::Response {
                                id,
                                result: Some(result),
                            };
                            if blocking::write_msg(&mut stream, &resp).is_err() {
                                break;
                            }
                        }
                        Action::Drop => break,
                        Action::Hang => {
                            hung.push(stream);
                            break;
                        }
                    }
                }
            }
        });
        FakeServer {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<kvpb::Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn error(code: ErrorCode, leader_addr: &str) -> R {
    R::Error(kvpb::Error {
        code: code as i32,
        message: format!("fake {}", code.as_str_name()),
        leader_id: 0,
        leader_addr: leader_addr.to_string(),
    })
}

fn put_ok(version: u64) -> R {
    R::Put(kvpb::PutResponse {
        version,
        ..Default::default()
    })
}

fn opts(timeout_ms: u64) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(timeout_ms),
        ..Default::default()
    }
}

#[test]
fn follows_not_leader_redirect() {
    let leader = FakeServer::start(|_, _| Action::Reply(put_ok(42)));
    let leader_addr = leader.addr.clone();
    let follower =
        FakeServer::start(move |_, _| Action::Reply(error(ErrorCode::NotLeader, &leader_addr)));
    let mut c = Client::new(vec![follower.addr.clone()], opts(5000));
    assert_eq!(c.put(b"k", b"v").unwrap().version, 42);
    let (f, l) = (follower.requests(), leader.requests());
    assert_eq!(f.len(), 1);
    assert_eq!(l.len(), 1);
    assert_eq!(f[0].seq, 1);
    assert_eq!(
        (l[0].client_id, l[0].seq),
        (c.client_id(), 1),
        "redirect keeps the seq"
    );
    // The client stays on the leader.
    assert_eq!(c.put(b"k", b"v2").unwrap().version, 42);
    assert_eq!(follower.requests().len(), 1);
    let l = leader.requests();
    assert_eq!((l[1].seq, l[1].acked_seq), (2, 1));
}

#[test]
fn not_leader_without_hint_tries_next_endpoint() {
    let a = FakeServer::start(|_, _| Action::Reply(error(ErrorCode::NotLeader, "")));
    let b = FakeServer::start(|_, _| Action::Reply(R::Get(kvpb::GetResponse::default())));
    let mut c = Client::new(vec![a.addr.clone(), b.addr.clone()], opts(5000));
    assert!(!c.get(b"k").unwrap().found);
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests().len(), 1);
    assert_eq!(b.requests()[0].seq, 0, "reads carry no seq");
}

#[test]
fn dropped_connection_and_retryable_errors_retry_with_same_seq() {
    let s = FakeServer::start(|n, _| match n {
        0 => Action::Drop,
        1 => Action::Reply(error(ErrorCode::Unavailable, "")),
        2 => Action::Reply(error(ErrorCode::Uncertain, "")),
        _ => Action::Reply(put_ok(7)),
    });
    let mut c = Client::new(vec![s.addr.clone()], opts(5000));
    assert_eq!(c.put(b"k", b"v").unwrap().version, 7);
    let reqs = s.requests();
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        assert_eq!((r.client_id, r.seq, r.acked_seq), (c.client_id(), 1, 0));
        assert_ne!(r.client_id, 0);
    }
    let ids: std::collections::BTreeSet<u64> = reqs.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 4, "each attempt has its own request id");
}

#[test]
fn bad_request_fails_immediately() {
    let s = FakeServer::start(|_, _| Action::Reply(error(ErrorCode::BadRequest, "")));
    let mut c = Client::new(vec![s.addr.clone()], opts(5000));
    let start = Instant::now();
    match c.put(b"k", b"v") {
        Err(ClientError::Server(e)) => assert_eq!(e.code(), ErrorCode::BadRequest),
        other => panic!("expected a server error, got {other:?}"),
    }
    // Answered at once: not one retry, so far less than the 5 s deadline it would otherwise
    // retry until (half of it leaves room for any scheduling delay).
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "BAD_REQUEST took {:?} with a 5 s deadline",
        start.elapsed()
    );
    assert_eq!(s.requests().len(), 1, "no retry");
    // The failed write's seq is finished: the next write takes a new one and acks the old.
    let _ = c.put(b"k", b"v");
    let r = s.requests();
    assert_eq!((r[1].seq, r[1].acked_seq), (2, 1));
}

#[test]
fn too_large_fails_immediately() {
    let s = FakeServer::start(|_, _| Action::Reply(error(ErrorCode::TooLarge, "")));
    let mut c = Client::new(vec![s.addr.clone()], opts(5000));
    match c.get(b"k") {
        Err(ClientError::Server(e)) => assert_eq!(e.code(), ErrorCode::TooLarge),
        other => panic!("expected a server error, got {other:?}"),
    }
    assert_eq!(s.requests().len(), 1);
}

/// Every wait inside the client (connect, read, backoff sleep) ends at the operation's
/// deadline, so a call returns at its deadline plus scheduling delay. The delay allowed is
/// generous (a loaded 2-core VM can leave a thread unscheduled for hundreds of ms); a client
/// that waited a whole extra attempt (a 2 s connect timeout, a 5 s default deadline) exceeds it.
const SCHEDULING_SLACK: Duration = Duration::from_millis(1200);

fn assert_timeout_within(
    r: Result<kvpb::PutResponse, ClientError>,
    start: Instant,
    deadline: Duration,
) {
    match r {
        Err(ClientError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took < deadline + SCHEDULING_SLACK,
        "took {took:?} with a {deadline:?} deadline (allowed: + {SCHEDULING_SLACK:?})"
    );
}

#[test]
fn no_server_times_out_within_deadline() {
    // A port that nothing listens on: bind, note it, close.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut c = Client::new(vec![addr], opts(300));
    let start = Instant::now();
    assert_timeout_within(c.put(b"k", b"v"), start, Duration::from_millis(300));
    // It kept retrying until the deadline, not giving up at the first refused connect.
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "gave up after {:?}, before the 300 ms deadline",
        start.elapsed()
    );
}

#[test]
fn silent_server_cannot_hang_the_client() {
    let s = FakeServer::start(|_, _| Action::Hang);
    let mut c = Client::new(vec![s.addr.clone()], opts(300));
    let start = Instant::now();
    assert_timeout_within(c.put(b"k", b"v"), start, Duration::from_millis(300));
    assert_eq!(s.requests().len(), 1);
}

#[test]
fn status_asks_that_endpoint_without_redirect() {
    let s = FakeServer::start(|_, _| {
        Action::Reply(R::Status(kvpb::StatusResponse {
            node_id: 3,
            role: "follower".into(),
            leader_addr: "127.0.0.1:1".into(),
            ..Default::default()
        }))
    });
    let mut c = Client::new(vec![], opts(1000));
    let st = c.status(&s.addr).unwrap();
    assert_eq!((st.node_id, st.role.as_str()), (3, "follower"));
    let reqs = s.requests();
    assert_eq!(reqs.len(), 1);
    assert!(matches!(reqs[0].op, Some(kvpb::request::Op::Status(_))));
}

#[test]
fn client_ids_differ_between_clients() {
    let a = Client::new(vec![], ClientOptions::default());
    let b = Client::new(vec![], ClientOptions::default());
    assert_ne!(a.client_id(), 0);
    assert_ne!(a.client_id(), b.client_id());
}

#[test]
fn redirect_loop_ends_in_timeout() {
    // Two "followers" that each name the other as leader.
    let b_addr = Arc::new(Mutex::new(String::new()));
    let b_addr2 = b_addr.clone();
    let a = FakeServer::start(move |_, _| {
        let to = b_addr2.lock().unwrap().clone();
        Action::Reply(error(ErrorCode::NotLeader, &to))
    });
    let a_addr = a.addr.clone();
    let b = FakeServer::start(move |_, _| Action::Reply(error(ErrorCode::NotLeader, &a_addr)));
    *b_addr.lock().unwrap() = b.addr.clone();
    let mut c = Client::new(vec![a.addr.clone()], opts(300));
    let start = Instant::now();
    assert_timeout_within(c.put(b"k", b"v"), start, Duration::from_millis(300));
    let (ra, rb) = (a.requests(), b.requests());
    assert!(!ra.is_empty() && !rb.is_empty());
    assert!(ra.iter().chain(rb.iter()).all(|r| r.seq == 1));
    // Backoff kicks in: a tight loop would send thousands of requests in 300 ms.
    assert!(
        ra.len() + rb.len() < 100,
        "{} requests",
        ra.len() + rb.len()
    );
}

fn opts_attempt(timeout_ms: u64, attempt_ms: u64) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(timeout_ms),
        attempt_timeout: Duration::from_millis(attempt_ms),
        ..Default::default()
    }
}

#[test]
fn too_large_with_request_id_zero_is_matched_not_retried() {
    // A server that could not read the id of an oversized frame answers with id 0.
    let s = FakeServer::start(|_, _| Action::ReplyWithId(0, error(ErrorCode::TooLarge, "")));
    let other = FakeServer::start(|_, _| Action::Reply(put_ok(1)));
    let mut c = Client::new(vec![s.addr.clone(), other.addr.clone()], opts(5000));
    let start = Instant::now();
    match c.put(b"k", b"v") {
        Err(ClientError::Server(e)) => assert_eq!(e.code(), ErrorCode::TooLarge),
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "TOO_LARGE took {:?} with a 5 s deadline",
        start.elapsed()
    );
    assert_eq!(s.requests().len(), 1, "no retry");
    assert!(other.requests().is_empty(), "not re-sent elsewhere");
}

#[test]
fn request_over_max_frame_is_refused_without_sending() {
    let s = FakeServer::start(|_, _| Action::Reply(put_ok(1)));
    let mut c = Client::new(
        vec![s.addr.clone()],
        ClientOptions {
            max_frame: 1000,
            ..opts(5000)
        },
    );
    match c.put(b"k", &[b'v'; 1000]) {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code(), ErrorCode::TooLarge);
            assert!(e.message.contains("not sent"), "{}", e.message);
        }
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    assert!(s.requests().is_empty());
    // Just under the limit goes through.
    c.put(b"k", &[b'v'; 900]).unwrap();
    assert_eq!(s.requests().len(), 1);
    // Refused before any connect: no reachable server needed to say so.
    let mut c = Client::new(
        vec!["127.0.0.1:1".into()],
        ClientOptions {
            max_frame: 1000,
            ..opts(5000)
        },
    );
    let start = Instant::now();
    match c.put(b"k", &[b'v'; 1000]) {
        Err(ClientError::Server(e)) => assert_eq!(e.code(), ErrorCode::TooLarge),
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn response_over_max_frame_fails_at_once() {
    let s = FakeServer::start(|_, _| {
        Action::Reply(R::Get(kvpb::GetResponse {
            found: true,
            value: vec![b'x'; 5000].into(),
            version: 1,
        }))
    });
    let mut c = Client::new(
        vec![s.addr.clone()],
        ClientOptions {
            max_frame: 1000,
            ..opts(5000)
        },
    );
    match c.get(b"k") {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code(), ErrorCode::TooLarge);
            assert!(e.message.contains("response"), "{}", e.message);
        }
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    assert_eq!(s.requests().len(), 1, "no retry");
}

/// A first endpoint that accepts but never answers costs one attempt timeout, not the
/// deadline: the bound is the attempt timeout plus the scheduling slack, far below the 5 s
/// deadline a client without per-attempt limits would spend.
#[test]
fn hung_first_endpoint_costs_one_attempt() {
    let hung = FakeServer::start(|_, _| Action::Hang);
    let live = FakeServer::start(|_, _| Action::Reply(put_ok(9)));
    let attempt = Duration::from_millis(300);
    let mut c = Client::new(
        vec![hung.addr.clone(), live.addr.clone()],
        opts_attempt(5000, attempt.as_millis() as u64),
    );
    let start = Instant::now();
    assert_eq!(c.put(b"k", b"v").unwrap().version, 9);
    let took = start.elapsed();
    eprintln!("put with a hung first endpoint took {took:?} (attempt timeout {attempt:?})");
    assert!(
        took < attempt + SCHEDULING_SLACK,
        "took {took:?}; allowed one attempt ({attempt:?}) + {SCHEDULING_SLACK:?}"
    );
    let (h, l) = (hung.requests(), live.requests());
    assert_eq!((h.len(), l.len()), (1, 1));
    assert_eq!((h[0].seq, l[0].seq), (1, 1), "the retry keeps the seq");
    assert_eq!(l[0].acked_seq, 0, "the retried write is not acknowledged");
}

/// A server slower than the attempt timeout is abandoned, retried with the same seq and waited
/// for longer each time, so it still answers within the deadline.
#[test]
fn slow_server_gets_longer_attempts_with_the_same_seq() {
    let s = FakeServer::start(|_, _| {
        std::thread::sleep(Duration::from_millis(300));
        Action::Reply(put_ok(5))
    });
    let mut c = Client::new(vec![s.addr.clone()], opts_attempt(5000, 100));
    let start = Instant::now();
    let r = c.put(b"k", b"v");
    let reqs = s.requests();
    eprintln!(
        "slow server: {} attempts in {:?}: {r:?}",
        reqs.len(),
        start.elapsed()
    );
    assert_eq!(r.unwrap().version, 5);
    assert!(
        reqs.len() >= 2,
        "the first 100 ms attempt cannot have waited 300 ms"
    );
    assert!(
        reqs.iter().all(|q| (q.seq, q.acked_seq) == (1, 0)),
        "{reqs:?}"
    );
}

/// The timeout names what went wrong (the hung node), not the redirect that followed it.
#[test]
fn timeout_names_the_real_problem_not_the_redirect() {
    let hung = FakeServer::start(|_, _| Action::Hang);
    let hung_addr = hung.addr.clone();
    let follower =
        FakeServer::start(move |_, _| Action::Reply(error(ErrorCode::NotLeader, &hung_addr)));
    let mut c = Client::new(vec![follower.addr.clone()], opts_attempt(1000, 200));
    match c.put(b"k", b"v") {
        Err(ClientError::Timeout(msg)) => {
            assert!(
                msg.contains(&hung.addr) && msg.contains("no answer"),
                "{msg}"
            );
            assert!(!msg.contains("NOT_LEADER"), "{msg}");
            assert!(msg.contains("may or may not have been applied"), "{msg}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// SHUTTING_DOWN for a write means "may or may not have applied": the client retries it on
/// the next endpoint with the same seq (safe: the session applies it once) and, if the deadline
/// passes, says the outcome is unknown.
#[test]
fn shutting_down_write_is_retried_elsewhere_with_the_same_seq() {
    let stopping = FakeServer::start(|_, _| Action::Reply(error(ErrorCode::ShuttingDown, "")));
    let next = FakeServer::start(|_, _| Action::Reply(put_ok(11)));
    let mut c = Client::new(vec![stopping.addr.clone(), next.addr.clone()], opts(5000));
    assert_eq!(c.put(b"k", b"v").unwrap().version, 11);
    let (a, b) = (stopping.requests(), next.requests());
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(
        (b[0].client_id, b[0].seq, b[0].acked_seq),
        (a[0].client_id, a[0].seq, 0)
    );

    let mut c = Client::new(vec![stopping.addr.clone()], opts(300));
    match c.put(b"k", b"v") {
        Err(ClientError::Timeout(msg)) => {
            assert!(msg.contains("SHUTTING_DOWN"), "{msg}");
            assert!(msg.contains("may or may not have been applied"), "{msg}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}
