//! The HTTP listener (`--http-addr`) of real `raftkv serve` processes: `/livez`, `/readyz`
//! (503 on a node cut off from the others, 200 again when they return), `/status` (valid
//! JSON), `/metrics` (parses as Prometheus text; counters move with operations), keep-alive,
//! and hostile clients (a huge header, garbage, a stalled half request, many connections at
//! once) that get an error or a close while the node keeps serving.
//!
//! The bounds used here are the ones `src/server/http.rs` states: `MAX_CONNS`,
//! `IDLE_TIMEOUT` (plus slack for a loaded machine).

mod common;

use common::{wait_for, Cluster};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use raftkv::server::http::{IDLE_TIMEOUT, MAX_CONNS, MAX_HEAD};

/// A parsed HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// A client connection and the bytes read past the last response (pipelined answers).
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads one response (Content-Length framed; for a HEAD request, `head_only`, no body
    /// follows); None on EOF, reset or timeout first.
    fn read_resp(&mut self, head_only: bool) -> Option<Resp> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let mut lines = head.split("\r\n");
                let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())?;
                let len = if head_only { 0 } else { len };
                while self.buf.len() < end + 4 + len {
                    let n = self.s.read(&mut chunk).ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).to_string();
                self.buf.drain(..end + 4 + len);
                return Some(Resp {
                    status,
                    headers,
                    body,
                });
            }
            let n = self.s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn read_resp(s: &mut TcpStream) -> Option<Resp> {
    Conn {
        s: s.try_clone().ok()?,
        buf: Vec::new(),
    }
    .read_resp(false)
}

fn connect(addr: &str) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(s)
}

/// One GET on a fresh connection (`Connection: close`); None if the node does not answer.
fn get(addr: &str, path: &str) -> Option<Resp> {
    let mut s = connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    read_resp(&mut s)
}

/// Polls `path` on `addr` until it answers `status`; returns that response.
fn wait_status(addr: &str, path: &str, status: u16, within: Duration) -> Resp {
    let start = Instant::now();
    loop {
        let last = match get(addr, path) {
            Some(r) if r.status == status => return r,
            r => r.map(|r| (r.status, r.body)),
        };
        assert!(
            start.elapsed() < within,
            "{addr}{path}: no {status} within {within:?}; last answer {last:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let r = get(addr, "/metrics").expect("metrics answered");
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = r.body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("metrics page parses as Prometheus text")
}

/// The value of `name` (whose labels include every `labels` pair); panics if absent.
fn metric(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} on the page"));
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
        other => panic!("{name}: unexpected value {other:?}"),
    }
}

#[test]
fn livez_status_and_readyz_follow_the_cluster() {
    let mut c = Cluster::start_http(3, &[]);
    c.wait_leader();
    for id in 1..=3 {
        let h = c.http_addr(id);
        let r = get(&h, "/livez").expect("livez answered");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        let r = get(&h, "/status").expect("status answered");
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", r.body));
        assert_eq!(v["node_id"], id, "{}", r.body);
        for f in ["role", "term", "leader_id", "commit", "applied", "peers"] {
            assert!(v.get(f).is_some(), "/status lacks {f}: {}", r.body);
        }
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json"));
        wait_status(&h, "/readyz", 200, Duration::from_secs(10));
        let r = get(&h, "/nope").expect("404 answered");
        assert_eq!(r.status, 404);
    }
    // Cut node 1 off: kill the other two. It loses its leader within an election timeout
    // (10 ticks of 10 ms here) and says why.
    c.kill(2);
    c.kill(3);
    let r = wait_status(&c.http_addr(1), "/readyz", 503, Duration::from_secs(10));
    assert!(r.body.starts_with("not ready: "), "{}", r.body);
    assert_eq!(r.body.lines().count(), 1, "{}", r.body);
    // Still live: the loop turns.
    assert_eq!(get(&c.http_addr(1), "/livez").map(|r| r.status), Some(200));
    c.start_node(2);
    c.start_node(3);
    wait_status(&c.http_addr(1), "/readyz", 200, Duration::from_secs(15));
}

#[test]
fn metrics_parse_and_move() {
    let mut c = Cluster::start_http(3, &[]);
    let leader = c.wait_leader();
    let h = c.http_addr(leader);
    let before = scrape(&h);
    for name in [
        "raftkv_server_term",
        "raftkv_server_leader_changes_seen_total",
        "raftkv_server_commit_index",
        "raftkv_server_applied_index",
        "raftkv_log_first_index",
        "raftkv_log_last_index",
        "raftkv_server_proposals_total",
        "raftkv_server_proposals_applied_total",
        "raftkv_server_proposals_refused_total",
        "raftkv_server_read_index_rounds_total",
        "raftkv_client_connections",
        "raftkv_disk_log_sync_duration_seconds",
        "raftkv_disk_log_append_duration_seconds",
        "raftkv_loop_pass_duration_seconds",
        "raftkv_snapshots_taken_total",
        "raftkv_snapshots_sent_total",
        "raftkv_snapshots_received_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            before.samples.iter().any(|s| s.metric == name),
            "{name} missing from /metrics"
        );
    }
    assert_eq!(
        metric(&before, "raftkv_server_role", &[("role", "leader")]),
        1.0
    );
    assert!(metric(&before, "process_resident_memory_bytes", &[]) > 0.0);
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    for p in &others {
        let up = metric(
            &before,
            "raftkv_peer_connected",
            &[("peer", &p.to_string())],
        );
        assert_eq!(up, 1.0, "leader's link to peer {p}");
    }
    let mut cl = c.client();
    cl.put(b"k", b"v").expect("put");
    cl.get(b"k").expect("linearizable get");
    let after = scrape(&h);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        let (b, a) = (metric(&before, name, labels), metric(&after, name, labels));
        assert!(a > b, "{name}{labels:?} did not rise: {b} -> {a}");
    };
    moved("raftkv_server_proposals_total", &[]);
    moved("raftkv_server_proposals_applied_total", &[]);
    moved("raftkv_client_requests_total", &[("op", "put")]);
    moved("raftkv_client_requests_total", &[("op", "get")]);
    moved("raftkv_client_responses_total", &[("result", "ok")]);
    moved("raftkv_server_read_index_rounds_total", &[]);
    moved("raftkv_server_commit_index", &[]);
    moved("raftkv_disk_log_sync_duration_seconds_count", &[]);
    // A killed leader: the others see a new one.
    let seen: Vec<f64> = others
        .iter()
        .map(|&i| {
            metric(
                &scrape(&c.http_addr(i)),
                "raftkv_server_leader_changes_seen_total",
                &[],
            )
        })
        .collect();
    c.kill(leader);
    for (&i, &b) in others.iter().zip(&seen) {
        wait_for("a leader change counted", Duration::from_secs(15), || {
            let v = metric(
                &scrape(&c.http_addr(i)),
                "raftkv_server_leader_changes_seen_total",
                &[],
            );
            (v > b).then_some(())
        });
    }
}

/// Reads until EOF, an error (reset) or a complete response; Err if nothing happens by the
/// read timeout.
fn error_or_close(s: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(format!("closed after {:?}", String::from_utf8_lossy(&buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "no error or close; got {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Err(e) => return Ok(format!("reset ({e})")),
        }
    }
}

#[test]
fn keep_alive_and_pipelining() {
    let c = Cluster::start_http(1, &[]);
    c.wait_leader();
    let mut c1 = Conn {
        s: connect(&c.http_addr(1)).unwrap(),
        buf: Vec::new(),
    };
    for _ in 0..3 {
        write!(c1.s, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = c1
            .read_resp(false)
            .expect("answer on the kept-alive connection");
        assert_eq!(r.status, 200);
    }
    // Pipelined, split at odd places.
    let reqs =
        "GET /livez HTTP/1.1\r\n\r\nHEAD /status HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n";
    for part in [&reqs[..7], &reqs[7..30], &reqs[30..]] {
        c1.s.write_all(part.as_bytes()).unwrap();
        c1.s.flush().unwrap();
    }
    let a = c1.read_resp(false).unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
    // HEAD: a Content-Length and no body: the next response follows directly.
    let h = c1.read_resp(true).unwrap();
    assert_eq!(h.status, 200);
    assert!(h
        .headers
        .iter()
        .any(|(k, v)| k == "content-length" && v != "0"));
    let r = c1.read_resp(false).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // A POST with a small body is read and refused; the connection stays usable.
    write!(
        c1.s,
        "POST /livez HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET /livez HTTP/1.1\r\n\r\n"
    )
    .unwrap();
    assert_eq!(c1.read_resp(false).unwrap().status, 405);
    assert_eq!(c1.read_resp(false).unwrap().status, 200);
    let mut s = c1.s;
    // Connection: close is honoured.
    write!(s, "GET /livez HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(read_resp(&mut s).unwrap().status, 200);
    assert!(error_or_close(&mut s).is_ok());
    // 100 pipelined metrics pages (more than MAX_OUT of answers), then a half-close before
    // reading any: every answer still arrives.
    let mut c2 = Conn {
        s: connect(&c.http_addr(1)).unwrap(),
        buf: Vec::new(),
    };
    c2.s.write_all("GET /metrics HTTP/1.1\r\n\r\n".repeat(100).as_bytes())
        .unwrap();
    c2.s.shutdown(std::net::Shutdown::Write).unwrap();
    for i in 0..100 {
        let r = c2.read_resp(false);
        assert_eq!(r.map(|r| r.status), Some(200), "answer {i} of 100");
    }
}

#[test]
fn hostile_clients_get_an_error_or_a_close_and_the_node_serves_on() {
    let c = Cluster::start_http(1, &[]);
    c.wait_leader();
    let h = c.http_addr(1);
    let mut cl = c.client();

    // A 100 KiB header.
    let mut s = connect(&h).unwrap();
    let big = format!(
        "GET /livez HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let _ = s.write_all(big.as_bytes()); // may fail once the node has closed
    let got = error_or_close(&mut s).expect("an answer to a 100 KiB header");
    assert!(
        got.contains("431") || got.starts_with("reset") || got.starts_with("closed"),
        "{got}"
    );
    const { assert!(MAX_HEAD < 100 << 10) };

    // Garbage.
    let mut s = connect(&h).unwrap();
    s.write_all(b"\x00\x01\x02\xffgarbage\r\n\r\n").unwrap();
    let got = error_or_close(&mut s).expect("an answer to garbage");
    assert!(got.contains("400"), "{got}");
    // An oversized body.
    let mut s = connect(&h).unwrap();
    s.write_all(b"POST /livez HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    let got = error_or_close(&mut s).expect("an answer to a large body");
    assert!(got.contains("413"), "{got}");

    // Half a request, then silence: closed after IDLE_TIMEOUT; meanwhile the node serves.
    let t0 = Instant::now();
    let mut stalled = connect(&h).unwrap();
    stalled
        .set_read_timeout(Some(IDLE_TIMEOUT + Duration::from_secs(5)))
        .unwrap();
    stalled.write_all(b"GET /livez HTTP/1.1\r\nHos").unwrap();
    cl.put(b"during-stall", b"1")
        .expect("put while a client stalls");
    assert_eq!(get(&h, "/livez").map(|r| r.status), Some(200));
    let got = error_or_close(&mut stalled).expect("the stalled client is closed");
    let waited = t0.elapsed();
    assert!(
        waited >= IDLE_TIMEOUT,
        "closed after {waited:?}, before the stated {IDLE_TIMEOUT:?}: {got}"
    );

    // 200 connections at once, each sending a request: at most MAX_CONNS are served, the
    // rest get 503 or a close; the client protocol is unaffected meanwhile.
    let conns: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect(&h).expect("connect");
            let _ = s.write_all(b"GET /livez HTTP/1.1\r\n\r\n");
            s
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for s in &conns {
        let mut stream = s.try_clone().unwrap();
        match read_resp(&mut stream) {
            Some(r) if r.status == 200 => ok += 1,
            Some(r) if r.status == 503 => refused += 1,
            None => refused += 1,
            Some(r) => panic!("unexpected {} {}", r.status, r.body),
        }
    }
    assert!(
        (1..=MAX_CONNS).contains(&ok) && ok + refused == 200,
        "served {ok}, refused {refused}; MAX_CONNS {MAX_CONNS}"
    );
    cl.put(b"during-flood", b"1")
        .expect("put while HTTP is saturated");
    drop(conns);
    wait_status(&h, "/livez", 200, Duration::from_secs(10));
    cl.put(b"after", b"1").expect("put afterwards");
    let m = scrape(&h);
    assert!(metric(&m, "raftkv_http_timeouts_total", &[]) >= 1.0);
    assert!(metric(&m, "raftkv_http_connections_rejected_total", &[]) >= (200 - MAX_CONNS) as f64);
}

#[test]
fn bench_scrapes_metrics_and_reports_each_nodes_loop_p99() {
    let c = Cluster::start_http(3, &[]);
    c.wait_leader();
    let http: Vec<String> = (1..=3).map(|i| c.http_addr(i)).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftkv-bench"))
        .args(["put", "--duration", "1", "--warmup", "0", "--keys", "100"])
        .arg(format!("--endpoints={}", c.endpoints().join(",")))
        .arg(format!("--metrics-addrs={}", http.join(",")))
        .args(["--scrape-metrics-hz", "10"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The scraper's first round (one scrape per node) starts with the run, whatever the
    // machine's speed: at least 3, and none may fail.
    let ok: u64 = err
        .split(" scrapes ok")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ok >= 3 && err.contains(", 0 failed"), "{err}");
    for a in &http {
        let line = err.lines().find(|l| l.contains(a.as_str())).unwrap_or("");
        assert!(line.contains("loop passes, p99 <="), "node {a}: {err}");
    }
}
