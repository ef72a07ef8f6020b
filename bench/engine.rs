//! The load generator: one thread, one mio `Poll`, many non-blocking connections, each with up
//! to `pipeline` requests in flight.
//!
//! Closed loop (`rate == None`): every connection keeps `pipeline` requests outstanding and
//! sends the next one as soon as a reply arrives; latency is reply time minus send time.
//! Open loop (`rate == Some(r)`): operation `i` is due at `start + i/r` (see `schedule`); due
//! operations go to any connection with a free pipeline slot, or wait in a backlog, and latency
//! is measured from the *intended* start, so a stalled server is charged for the whole stall.

use crate::driver::{Codec, Driver, Outcome, Reply};
use crate::schedule::Schedule;
use crate::stats::{fmt_ns, fmt_rate, new_histogram};
use crate::workload::{Op, OpGen};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use raftkv::net::conn::ReadStatus;
use raftkv::net::tls::TlsSession;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How to generate load.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub clients: usize,
    pub pipeline: usize,
    /// Open-loop target rate in ops/s; `None` = closed loop.
    pub rate: Option<f64>,
    /// Measured time after the warm-up; `None` = until the workload runs out (preload).
    pub duration: Option<Duration>,
    pub warmup: Duration,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// A progress bar moved to the count of completed operations every second (the preload's;
    /// hidden when stderr is not a terminal).
    pub bar: Option<indicatif::ProgressBar>,
    /// After the end, how long to wait for replies still in flight.
    pub drain_timeout: Duration,
}

/// Raw results of one run.
pub struct RunResult {
    /// Latencies (ns) of successful operations started inside the measured window.
    pub overall: Histogram<u64>,
    /// Same, bucketed by the second (from the end of the warm-up) in which they completed.
    pub per_second: Vec<Histogram<u64>>,
    pub measured: Duration,
    /// Error replies and lost requests, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Successful gets/scans that found nothing.
    pub not_found: u64,
    /// Cas operations whose comparison failed.
    pub cas_failed: u64,
    /// Requests sent (including warm-up).
    pub sent: u64,
    /// Requests still unanswered (or, open loop, never sent) when the drain timed out.
    pub incomplete: u64,
    /// Reconnections after redirects or lost connections.
    pub reconnects: u64,
    /// Open loop: the largest number of due operations waiting for a free slot.
    pub max_backlog: usize,
    /// True when the run was cut short by Ctrl-C.
    pub interrupted: bool,
}

struct InFlight {
    id: u64,
    start: Instant,
    op: Op,
}

struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    codec: Box<dyn Codec>,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: BytesMut,
    inflight: VecDeque<InFlight>,
    /// When a dead connection may be re-opened.
    retry_at: Option<Instant>,
    /// Registered for WRITABLE too (a write is blocked).
    want_writable: bool,
    /// The connection's TLS session (`Driver::tls`): `wbuf` and `rbuf` hold plaintext.
    tls: Option<Box<TlsSession>>,
}

type Tls = Option<std::sync::Arc<rustls::ClientConfig>>;

/// Connects (and with `tls`, completes the TLS handshake while still blocking, so the
/// measured loop only ever moves application data).
fn connect(addr: SocketAddr, tls: &Tls) -> io::Result<(TcpStream, Option<Box<TlsSession>>)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    let session = match tls {
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let mut c = rustls::ClientConnection::new(cfg.clone(), name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.set_write_timeout(Some(Duration::from_secs(2)))?;
            while c.is_handshaking() {
                c.complete_io(&mut s)?;
            }
            Some(Box::new(TlsSession::from_client(c)))
        }
        None => None,
    };
    s.set_nonblocking(true)?;
    Ok((TcpStream::from_std(s), session))
}

/// Latency recording shared by the reply paths.
struct Recorder {
    overall: Histogram<u64>,
    per_second: Vec<Histogram<u64>>,
    /// The progress line's current second (includes warm-up).
    tick: Histogram<u64>,
    tick_errors: u64,
    measure_start: Instant,
    end: Option<Instant>,
}

impl Recorder {
    fn record(&mut self, start: Instant, now: Instant) {
        let ns = now.saturating_duration_since(start).as_nanos() as u64;
        self.tick.saturating_record(ns);
        if start < self.measure_start || self.end.is_some_and(|e| start >= e) {
            return;
        }
        self.overall.saturating_record(ns);
        if self.end.is_some() {
            let sec = now.saturating_duration_since(self.measure_start).as_secs() as usize;
            // Completions during the drain count toward the last second.
            let sec = sec.min(self.per_second.len().saturating_sub(1));
            if let Some(h) = self.per_second.get_mut(sec) {
                h.saturating_record(ns);
            }
        }
    }
}

/// Runs `gen` against `driver` until the duration elapses (or the workload ends).
pub fn run(cfg: &EngineConfig, driver: &dyn Driver, gen: &mut OpGen) -> Result<RunResult, String> {
    let targets = driver.targets()?;
    if targets.is_empty() {
        return Err("no target addresses".into());
    }
    let clients = cfg.clients.max(1);
    let pipeline = cfg.pipeline.max(1);
    let mut poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
    let mut conns = Vec::with_capacity(clients);
    let tls = driver.tls();
    for i in 0..clients {
        let addr = targets[i % targets.len()];
        let (mut stream, session) =
            connect(addr, &tls).map_err(|e| format!("connect {addr}: {e}"))?;
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)
            .map_err(|e| format!("register: {e}"))?;
        conns.push(Conn {
            addr,
            stream: Some(stream),
            codec: driver.codec(i),
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
            rbuf: BytesMut::with_capacity(64 * 1024),
            inflight: VecDeque::with_capacity(pipeline),
            retry_at: None,
            want_writable: false,
            tls: session,
        });
    }

    let t0 = Instant::now();
    let measure_start = t0 + cfg.warmup;
    let end = cfg.duration.map(|d| measure_start + d);
    let nsecs = cfg
        .duration
        .map_or(0, |d| d.as_secs_f64().ceil().max(1.0) as usize);
    let mut rec = Recorder {
        overall: new_histogram(),
        per_second: (0..nsecs).map(|_| new_histogram()).collect(),
        tick: new_histogram(),
        tick_errors: 0,
        measure_start,
        end,
    };
    let mut res = RunResult {
        overall: new_histogram(),
        per_second: Vec::new(),
        measured: Duration::ZERO,
        errors: BTreeMap::new(),
        not_found: 0,
        cas_failed: 0,
        sent: 0,
        incomplete: 0,
        reconnects: 0,
        max_backlog: 0,
        interrupted: false,
    };
    let mut schedule = cfg.rate.map(|r| Schedule::new(t0, r));
    let mut backlog: VecDeque<Instant> = VecDeque::new();
    let mut next_id: u64 = 1;
    let mut exhausted = false;
    let mut stop_at: Option<Instant> = None; // set when issuing stops; drain deadline follows
    let mut next_tick = t0 + Duration::from_secs(1);
    let mut rr = 0usize; // open-loop round robin
    let mut events = Events::with_capacity(1024);
    let mut read_chunk = vec![0u8; 256 * 1024];
    // Connections to refill and flush this pass: all at first, then those that got replies,
    // were re-opened, or (open loop) were given requests.
    let mut touched: Vec<usize> = (0..clients).collect();

    loop {
        let now = Instant::now();
        if stop_at.is_none() {
            let interrupted = crate::signals::interrupted();
            if interrupted || exhausted || end.is_some_and(|e| now >= e) {
                res.interrupted = interrupted;
                stop_at = Some(now);
            }
        }
        let inflight: usize = conns.iter().map(|c| c.inflight.len()).sum();
        if let Some(s) = stop_at {
            // Open loop: also nothing intended before the end still in the schedule (the
            // pass that noticed the end has not taken those yet).
            let scheduled_all = schedule
                .as_ref()
                .is_none_or(|sc| end.is_none_or(|e| sc.next_due() >= e) || exhausted);
            let sent_all =
                inflight == 0 && ((backlog.is_empty() && scheduled_all) || res.interrupted);
            if sent_all || now >= s + cfg.drain_timeout || crate::signals::interrupted() {
                res.incomplete = (inflight + backlog.len()) as u64;
                break;
            }
        }

        // Re-open connections lost to errors or redirects. If a node is gone, ask the driver
        // where to go now (leader discovery), at most once per pass.
        let mut rediscovered: Option<Vec<SocketAddr>> = None;
        for (i, c) in conns.iter_mut().enumerate() {
            if c.stream.is_none() && c.retry_at.is_some_and(|t| now >= t) {
                match connect(c.addr, &tls) {
                    Ok((mut s, session)) => {
                        c.tls = session;
                        if poll
                            .registry()
                            .register(&mut s, Token(i), Interest::READABLE)
                            .is_ok()
                        {
                            c.stream = Some(s);
                            c.retry_at = None;
                            c.want_writable = false;
                            touched.push(i);
                            c.codec = driver.codec(i);
                            res.reconnects += 1;
                        }
                    }
                    Err(_) => {
                        if rediscovered.is_none() {
                            rediscovered = Some(driver.targets().unwrap_or_default());
                        }
                        if let Some(t) = rediscovered.as_ref().filter(|t| !t.is_empty()) {
                            c.addr = t[i % t.len()];
                        }
                        c.retry_at = Some(Instant::now() + Duration::from_millis(100));
                    }
                }
            }
        }

        // Issue new requests. Open loop: every operation intended before the end is sent,
        // also when the pass that notices the end comes late (on a busy machine passes ~10 ms
        // apart lost the last ~13 of the 2,000 operations of a 1 s window at 2,000 ops/s).
        let horizon = match stop_at {
            None => Some(end.map_or(now, |e| now.min(e))),
            Some(_) if res.interrupted || exhausted => None,
            Some(_) => end,
        };
        if let Some(horizon) = horizon.filter(|_| stop_at.is_none() || schedule.is_some()) {
            let mut send = |c: &mut Conn, start: Instant, gen: &mut OpGen| -> bool {
                let Some(op) = gen.next_op() else {
                    return false;
                };
                c.codec.encode(next_id, &op, &mut c.wbuf);
                c.inflight.push_back(InFlight {
                    id: next_id,
                    start,
                    op,
                });
                next_id += 1;
                res.sent += 1;
                true
            };
            match &mut schedule {
                None => {
                    // Only connections that got replies (or were just opened) have free slots.
                    'conns: for &i in &touched {
                        let c = &mut conns[i];
                        while c.stream.is_some() && c.inflight.len() < pipeline {
                            if !send(c, now, gen) {
                                exhausted = true;
                                break 'conns;
                            }
                        }
                    }
                }
                Some(s) => {
                    while let Some(t) = s.take_due(horizon) {
                        backlog.push_back(t);
                    }
                    res.max_backlog = res.max_backlog.max(backlog.len());
                    let mut full = 0;
                    while !backlog.is_empty() && full < conns.len() {
                        let ci = rr % clients;
                        let c = &mut conns[ci];
                        rr = rr.wrapping_add(1);
                        if c.stream.is_none() || c.inflight.len() >= pipeline {
                            full += 1;
                            continue;
                        }
                        full = 0;
                        let t = backlog.pop_front().unwrap_or(now);
                        if !send(c, t, gen) {
                            exhausted = true;
                            break;
                        }
                        touched.push(ci);
                    }
                }
            }
        }

        // Flush what was queued.
        for &i in &touched {
            let c = &mut conns[i];
            if c.wpos < c.wbuf.len() && !c.want_writable {
                if let Err(e) = flush(c, &poll, i) {
                    fail_conn(c, &poll, &mut res, &format!("write: {e}"), i);
                }
            }
        }

        touched.clear();

        // Progress line, once a second.
        if now >= next_tick {
            if let Some(b) = &cfg.bar {
                b.set_position(rec.overall.len());
            }
            if cfg.progress {
                let elapsed = now.duration_since(t0).as_secs();
                let phase = if now < measure_start { " warmup" } else { "" };
                let h = &rec.tick;
                let q = |p| {
                    if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(p)
                    }
                };
                eprint!(
                    "\r\x1b[2K[{elapsed:>3}s{phase}] {:>8} ops/s  p50 {:>8}  p99 {:>8}  max {:>8}  errors {}  in flight {}  backlog {}",
                    fmt_rate(h.len() as f64),
                    fmt_ns(q(0.5)),
                    fmt_ns(q(0.99)),
                    fmt_ns(h.max()),
                    rec.tick_errors,
                    inflight,
                    backlog.len()
                );
            }
            rec.tick.reset();
            rec.tick_errors = 0;
            next_tick += Duration::from_secs(1);
        }

        // Wait for I/O, but not past the next thing that is due.
        let mut wake = next_tick;
        if let Some(s) = stop_at {
            wake = wake.min(s + cfg.drain_timeout);
        } else {
            if let Some(e) = end {
                wake = wake.min(e);
            }
            if let Some(s) = &schedule {
                if backlog.is_empty() {
                    wake = wake.min(s.next_due());
                }
            }
        }
        if conns.iter().any(|c| c.stream.is_none()) {
            wake = wake.min(now + Duration::from_millis(100));
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns.get_mut(i) else { continue };
            if c.stream.is_none() {
                continue;
            }
            if ev.is_writable() {
                if let Err(e) = flush(c, &poll, i) {
                    fail_conn(c, &poll, &mut res, &format!("write: {e}"), i);
                    continue;
                }
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                let closing = ev.is_read_closed() || ev.is_error();
                let outcome = read_replies(c, closing, &mut read_chunk, gen, &mut rec, &mut res);
                touched.push(i);
                match outcome {
                    Ok(None) => {}
                    Ok(Some(redirect)) => {
                        // A follower answered: move this connection to the leader it named.
                        fail_conn(c, &poll, &mut res, "dropped by leader redirect", i);
                        match crate::driver::resolve(&redirect) {
                            Ok(a) => {
                                c.addr = a;
                                c.retry_at = Some(Instant::now());
                            }
                            Err(e) => *res.errors.entry(e).or_default() += 1,
                        }
                    }
                    Err(e) => fail_conn(c, &poll, &mut res, &e, i),
                }
            }
        }
    }

    if cfg.progress {
        eprintln!();
    }
    res.measured = match (stop_at, end) {
        (Some(s), Some(e)) => s.min(e).saturating_duration_since(measure_start),
        (Some(s), None) => s.saturating_duration_since(measure_start),
        _ => Duration::ZERO,
    };
    res.overall = rec.overall;
    res.per_second = rec.per_second;
    if res.interrupted {
        // Only whole seconds that were actually measured.
        res.per_second.truncate(res.measured.as_secs() as usize);
    }
    Ok(res)
}

/// Writes as much of the connection's buffer as the socket takes.
///
/// Connections are registered for READABLE only; WRITABLE is added while a write is blocked (a
/// full socket buffer) and dropped once the buffer drains, so idle-writable sockets do not wake
/// the loop.
fn flush(c: &mut Conn, poll: &Poll, token: usize) -> io::Result<()> {
    let Some(s) = c.stream.as_mut() else {
        return Ok(());
    };
    let blocked = match c.tls.as_mut() {
        // Records out first; more plaintext is encrypted only into an empty TLS buffer.
        Some(tls) => loop {
            if !tls.write_out(s)? {
                break true;
            }
            if c.wpos == c.wbuf.len() {
                break false;
            }
            c.wpos += tls.encrypt(&c.wbuf[c.wpos..])?;
        },
        None => {
            while c.wpos < c.wbuf.len() {
                match s.write(&c.wbuf[c.wpos..]) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed")),
                    Ok(n) => c.wpos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            c.wpos < c.wbuf.len()
        }
    };
    if blocked != c.want_writable {
        let interest = if blocked {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry().reregister(s, Token(token), interest)?;
        c.want_writable = blocked;
    }
    if !blocked {
        c.wbuf.clear();
        c.wpos = 0;
    }
    Ok(())
}

/// Closes a connection: its requests in flight count as errors of kind `why`.
fn fail_conn(c: &mut Conn, poll: &Poll, res: &mut RunResult, why: &str, _index: usize) {
    if let Some(mut s) = c.stream.take() {
        let _ = poll.registry().deregister(&mut s);
    }
    let lost = c.inflight.len() as u64;
    if lost > 0 {
        *res.errors.entry(format!("lost: {why}")).or_default() += lost;
    }
    c.inflight.clear();
    c.wbuf.clear();
    c.wpos = 0;
    c.rbuf.clear();
    c.tls = None;
    c.retry_at = Some(Instant::now() + Duration::from_millis(100));
}

/// Reads until the socket is drained and handles every complete reply. Returns a leader address
/// when a reply redirected us, `Err` when the connection is unusable.
fn read_replies(
    c: &mut Conn,
    closing: bool,
    chunk: &mut [u8],
    gen: &mut OpGen,
    rec: &mut Recorder,
    res: &mut RunResult,
) -> Result<Option<String>, String> {
    let mut closed = false;
    if let (Some(s), Some(tls)) = (c.stream.as_mut(), c.tls.as_mut()) {
        loop {
            match tls.read_some(s, &mut c.rbuf) {
                Ok(ReadStatus::Eof) => {
                    closed = true;
                    break;
                }
                Ok(ReadStatus::WouldBlock) => break,
                Ok(ReadStatus::Drained(_)) if !closing => break,
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    } else if let Some(s) = c.stream.as_mut() {
        loop {
            match s.read(chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    c.rbuf.extend_from_slice(&chunk[..n]);
                    // A short read drained the socket (epoll(7): for stream sockets a short
                    // read means the read space is exhausted; new data raises a new edge), so
                    // skip the extra read that would only return WouldBlock.
                    if n < chunk.len() && !closing {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
    let now = Instant::now();
    let mut redirect = None;
    while let Some(reply) = c.codec.decode(&mut c.rbuf)? {
        let Reply { id, outcome } = reply;
        let pos = match id {
            None => (!c.inflight.is_empty()).then_some(0),
            Some(id) => c.inflight.iter().position(|f| f.id == id),
        };
        let Some(pos) = pos else {
            *res.errors.entry("reply to no request".into()).or_default() += 1;
            continue;
        };
        let Some(f) = c.inflight.remove(pos) else {
            continue;
        };
        c.codec.completed(f.id);
        match outcome {
            Outcome::Ok { found, version } => {
                rec.record(f.start, now);
                if !found {
                    res.not_found += 1;
                }
                gen.observe_version(&f.op, version);
            }
            Outcome::CasFailed { version } => {
                rec.record(f.start, now);
                res.cas_failed += 1;
                gen.observe_version(&f.op, version);
            }
            Outcome::Error { kind, redirect: r } => {
                rec.tick_errors += 1;
                *res.errors.entry(kind).or_default() += 1;
                if r.is_some() {
                    redirect = r;
                }
            }
        }
    }
    if redirect.is_some() {
        return Ok(redirect);
    }
    if closed {
        return Err("connection closed by server".into());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Consistency, DriverOptions};
    use crate::keys::KeyDist;
    use crate::nullserver::NullServer;
    use crate::raftkv_driver::RaftkvDriver;
    use crate::workload::Workload;

    fn driver(srv: &NullServer) -> RaftkvDriver {
        let opts = DriverOptions {
            value: vec![b'x'; 16],
            consistency: Consistency::Linearizable,
            sessions: true,
            token: None,
        };
        RaftkvDriver::new(vec![srv.addr.to_string()], &opts, false)
    }

    fn cfg(rate: Option<f64>, duration: Option<Duration>) -> EngineConfig {
        EngineConfig {
            clients: 4,
            pipeline: 8,
            rate,
            duration,
            warmup: Duration::from_millis(100),
            progress: false,
            bar: None,
            drain_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn preload_sends_every_key_exactly_once_and_stops() {
        let srv = NullServer::start().unwrap();
        let mut gen = OpGen::new(Workload::Preload { n: 1000 }, KeyDist::uniform(1000), 0);
        let mut c = cfg(None, None);
        c.warmup = Duration::ZERO;
        let r = run(&c, &driver(&srv), &mut gen).unwrap();
        assert_eq!(r.sent, 1000);
        assert_eq!(r.overall.len(), 1000);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.incomplete, 0);
    }

    #[test]
    fn closed_loop_runs_for_the_duration_and_records_per_second() {
        let srv = NullServer::start().unwrap();
        let mut gen = OpGen::new(
            Workload::Mixed { read_ratio: 0.5 },
            KeyDist::uniform(100),
            1,
        );
        let r = run(
            &cfg(None, Some(Duration::from_millis(1500))),
            &driver(&srv),
            &mut gen,
        )
        .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.overall.len() > 100, "only {} ops", r.overall.len());
        assert_eq!(r.per_second.len(), 2);
        let per_sec: u64 = r.per_second.iter().map(|h| h.len()).sum();
        assert_eq!(per_sec, r.overall.len());
        assert!(r.measured >= Duration::from_millis(1500));
        // Warm-up requests were sent but not recorded.
        assert!(r.sent > r.overall.len());
    }

    #[test]
    fn open_loop_sends_at_the_requested_rate() {
        let srv = NullServer::start().unwrap();
        let mut gen = OpGen::new(Workload::Put, KeyDist::uniform(100), 2);
        let rate = 2000.0;
        let r = run(
            &cfg(Some(rate), Some(Duration::from_secs(1))),
            &driver(&srv),
            &mut gen,
        )
        .unwrap();
        // Intended starts inside the 1 s window: exactly `rate` of them (+-1 at the edges); an
        // idle null server answers all of them.
        let n = r.overall.len() as f64;
        assert!(
            (n - rate).abs() <= 2.0,
            "{n} ops recorded at {rate} ops/s (sent {}, incomplete {}, max backlog {}, errors {:?})",
            r.sent,
            r.incomplete,
            r.max_backlog,
            r.errors
        );
        // Warm-up (0.1 s) plus window, +-1 for each edge.
        assert!((r.sent as f64 - 2200.0).abs() <= 2.0, "sent {}", r.sent);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }

    /// Sends everything to a fixed address (no leader discovery).
    struct Fixed(SocketAddr, RaftkvDriver);
    impl Driver for Fixed {
        fn name(&self) -> String {
            "fixed".into()
        }
        fn check(&self, _: &[crate::workload::OpKind], _: Consistency) -> Result<(), String> {
            Ok(())
        }
        fn targets(&self) -> Result<Vec<SocketAddr>, String> {
            Ok(vec![self.0])
        }
        fn codec(&self, i: usize) -> Box<dyn Codec> {
            self.1.codec(i)
        }
    }

    #[test]
    fn not_leader_replies_move_connections_to_the_named_leader() {
        let leader = NullServer::start().unwrap();
        let follower = NullServer::start_follower_of(leader.addr).unwrap();
        let d = Fixed(follower.addr, driver(&leader));
        let mut gen = OpGen::new(Workload::Put, KeyDist::uniform(100), 4);
        let r = run(&cfg(None, Some(Duration::from_millis(500))), &d, &mut gen).unwrap();
        // Each of the 4 connections is redirected once: its first reply is NOT_LEADER, the rest
        // of its pipeline is dropped with it, and it reconnects to the leader.
        assert_eq!(r.reconnects, 4, "errors {:?}", r.errors);
        assert!(r.errors.get("raftkv: NOT_LEADER").is_some_and(|&n| n >= 4));
        assert!(
            r.overall.len() > 50,
            "only {} ops after the redirect",
            r.overall.len()
        );
    }

    #[test]
    fn unreachable_target_is_a_clear_error() {
        // Bind and drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = DriverOptions {
            value: vec![],
            consistency: Consistency::Linearizable,
            sessions: false,
            token: None,
        };
        let d = crate::redis::RedisDriver::new("redis", vec![format!("127.0.0.1:{port}")], &opts);
        let mut gen = OpGen::new(Workload::Put, KeyDist::uniform(1), 0);
        let err = run(&cfg(None, Some(Duration::from_millis(10))), &d, &mut gen)
            .err()
            .unwrap();
        assert!(err.contains("connect 127.0.0.1"), "{err}");
    }
}
