//! The HTTP/1.1 listener on the node's own loop (`--http-addr`): `/livez`, `/readyz`,
//! `/status` (JSON) and `/metrics` (Prometheus text format).
//!
//! Requests are parsed with `httparse` from the connection's input buffer: the head is
//! accumulated there until it is complete, so a request may arrive one byte at a time and
//! the loop never waits for it. Bounds, each answered with an error and a close (the
//! response is flushed, the write side shut down, and input discarded until the client closes
//! or [`LINGER`] passes, so the error is not destroyed by a RST):
//! - a request head over [`MAX_HEAD`] bytes or with over [`MAX_HEADERS`] headers: 431;
//! - a body over [`MAX_BODY`] bytes: 413 (a smaller one is read and ignored); chunked: 411;
//! - unparseable bytes: 400;
//! - a connection that has not completed a request within [`IDLE_TIMEOUT`] of its accept or
//!   of its previous request (idle keep-alive or a stalled partial request) is closed;
//! - beyond [`MAX_CONNS`] open HTTP connections a new one gets a best-effort 503 and a close;
//! - responses queued beyond [`MAX_OUT`] unsent bytes (a pipelining client that does not
//!   read) stop the parsing of further requests until the output drains.
//!
//! Keep-alive: HTTP/1.1 connections stay open unless the request says `Connection: close`;
//! HTTP/1.0 ones close unless it says `Connection: keep-alive`. Pipelined requests are
//! answered in order, also after the client half-closes its side. Only GET and HEAD are
//! served (others: 405).

use super::timers::TimerEvent;
use super::Server;
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Largest request head (request line + headers).
pub const MAX_HEAD: usize = 8 << 10;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Largest request body accepted (and ignored); none of the pages takes one.
pub const MAX_BODY: usize = 1 << 10;
/// Most HTTP connections open at once.
pub const MAX_CONNS: usize = 64;
/// A connection must complete a request this soon after its accept or previous request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection closed after an error may linger for the client to read it.
pub const LINGER: Duration = Duration::from_secs(2);
/// Unsent response bytes beyond which further pipelined requests wait.
pub const MAX_OUT: usize = 256 << 10;
/// Socket reads per connection per wake-up before yielding to others.
const READ_BUDGET: usize = 8;

/// One HTTP connection.
pub(super) struct HttpConn {
    stream: TcpStream,
    /// Received bytes not yet consumed by a complete request.
    input: Vec<u8>,
    /// Queued response bytes; `out[sent..]` is unsent.
    out: Vec<u8>,
    sent: usize,
    /// Close once `out` is flushed (an error, `Connection: close`, HTTP/1.0).
    close_after: bool,
    /// The write side is shut down: input is discarded until the client closes.
    draining: bool,
    /// The client closed its side: close once its complete requests are answered and written.
    eof: bool,
    /// When the connection is closed unless a request completes first.
    deadline: Instant,
}

impl HttpConn {
    fn pending_out(&self) -> usize {
        self.out.len() - self.sent
    }
}

/// What one request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Livez,
    Readyz,
    Status,
    Metrics,
    NotFound,
    MethodNotAllowed,
}

/// The outcome of parsing the start of a connection's input.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A complete request of `len` bytes (head and body).
    Request {
        len: usize,
        page: Page,
        head_only: bool,
        keep_alive: bool,
    },
    /// A request that is refused with this status; the connection is closed after it.
    Error(u16),
}

/// Parses the request at the start of `buf` (see the module comment for the bounds).
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Parsed::Error(431),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Error(431),
        Err(_) => return Parsed::Error(400),
    };
    if head_len > MAX_HEAD {
        return Parsed::Error(431);
    }
    let http10 = req.version == Some(0);
    let mut keep_alive = !http10;
    let mut body = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return Parsed::Error(400);
            };
            if n > MAX_BODY {
                return Parsed::Error(413);
            }
            body = n;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Error(411);
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        }
    }
    if buf.len() < head_len + body {
        return Parsed::Partial;
    }
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let head_only = method == "HEAD";
    let page = if method != "GET" && !head_only {
        Page::MethodNotAllowed
    } else {
        match path {
            "/livez" => Page::Livez,
            "/readyz" => Page::Readyz,
            "/status" => Page::Status,
            "/metrics" => Page::Metrics,
            _ => Page::NotFound,
        }
    };
    Parsed::Request {
        len: head_len + body,
        page,
        head_only,
        keep_alive,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Appends a whole response to `out` (`head_only`: the head of it, for HEAD).
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{allow}Connection: {conn}\r\n\r\n",
        reason(status),
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(body);
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Server {
    /// Accepts every pending HTTP connection (beyond [`MAX_CONNS`]: 503 and close).
    pub(super) fn accept_http(&mut self) {
        loop {
            let Some(listener) = self.http_listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    if self.http_conns.len() >= MAX_CONNS {
                        let mut out = Vec::new();
                        write_response(
                            &mut out,
                            503,
                            TEXT,
                            b"too many connections\n",
                            false,
                            false,
                        );
                        // Best effort: a fresh socket's send buffer takes this at once.
                        let _ = stream.write(&out);
                        self.metrics.http_rejected += 1;
                        continue;
                    }
                    let token = self.tokens.next_token();
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("cannot register HTTP connection from {addr}: {e}");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let deadline = Instant::now() + IDLE_TIMEOUT;
                    self.http_conns.insert(
                        token,
                        HttpConn {
                            stream,
                            input: Vec::new(),
                            out: Vec::new(),
                            sent: 0,
                            close_after: false,
                            draining: false,
                            eof: false,
                            deadline,
                        },
                    );
                    self.timers
                        .insert(deadline, TimerEvent::HttpDeadline(token));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("HTTP accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads, answers complete requests and writes, until the socket would block, the
    /// read budget is spent (then it is revisited next pass) or output backs up.
    pub(super) fn on_http_event(&mut self, token: Token) {
        let mut budget = READ_BUDGET;
        let mut buf = [0u8; 4096];
        loop {
            self.http_answer(token);
            if !self.http_flush(token) {
                return;
            }
            let Some(c) = self.http_conns.get_mut(&token) else {
                return;
            };
            if c.eof {
                // `http_answer` left output backed up (resumed when writable) or has answered
                // every complete request.
                if c.pending_out() == 0 {
                    self.http_close(token, "closed by client");
                }
                return;
            }
            if c.close_after && !c.draining {
                if c.pending_out() > 0 {
                    return; // Resumed when writable.
                }
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                c.draining = true;
                c.input.clear();
                c.deadline = Instant::now() + LINGER;
                let d = c.deadline;
                self.timers.insert(d, TimerEvent::HttpDeadline(token));
            }
            let Some(c) = self.http_conns.get_mut(&token) else {
                return;
            };
            if c.pending_out() > MAX_OUT {
                return; // Resumed when writable.
            }
            if budget == 0 {
                self.read_again.push(token);
                return;
            }
            budget -= 1;
            // Never read more than a whole bounded request needs: beyond that, parse refuses.
            let room = (MAX_HEAD + MAX_BODY).saturating_sub(c.input.len());
            let want = if c.draining {
                buf.len()
            } else {
                room.min(buf.len())
            };
            if want == 0 {
                // Unreachable in practice: parse answers 431 at MAX_HEAD.
                self.http_close(token, "input full");
                return;
            }
            match c.stream.read(&mut buf[..want]) {
                Ok(0) if !c.draining => {
                    // Half-closed after its requests: the complete ones are still answered.
                    c.eof = true;
                }
                Ok(0) => {
                    self.http_close(token, "closed by client");
                    return;
                }
                Ok(n) => {
                    if !c.draining {
                        c.input.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.http_close(token, &format!("read error: {e}"));
                    return;
                }
            }
        }
    }

    /// Answers every complete request at the start of the connection's input, unless more
    /// than [`MAX_OUT`] of answers stay unsent (then it stops until the socket is writable).
    fn http_answer(&mut self, token: Token) {
        loop {
            if self
                .http_conns
                .get(&token)
                .is_some_and(|c| c.pending_out() > MAX_OUT)
                && !self.http_flush(token)
            {
                return;
            }
            let Some(c) = self.http_conns.get_mut(&token) else {
                return;
            };
            if c.close_after || c.pending_out() > MAX_OUT || c.input.is_empty() {
                return;
            }
            match parse(&c.input) {
                Parsed::Partial => return,
                Parsed::Error(status) => {
                    log::debug!("HTTP connection {}: refused with {status}", token.0);
                    self.metrics.http_request(status);
                    let c = self.http_conns.get_mut(&token).expect("present above");
                    let body = format!("{}\n", reason(status));
                    write_response(&mut c.out, status, TEXT, body.as_bytes(), false, false);
                    c.close_after = true;
                    c.input.clear();
                    return;
                }
                Parsed::Request {
                    len,
                    page,
                    head_only,
                    keep_alive,
                } => {
                    c.input.drain(..len);
                    let (status, ctype, body) = self.http_page(page);
                    self.metrics.http_request(status);
                    let c = self.http_conns.get_mut(&token).expect("present above");
                    write_response(
                        &mut c.out,
                        status,
                        ctype,
                        body.as_bytes(),
                        keep_alive,
                        head_only,
                    );
                    if !keep_alive {
                        c.close_after = true;
                    }
                    c.deadline = Instant::now() + IDLE_TIMEOUT;
                }
            }
        }
    }

    fn http_page(&mut self, page: Page) -> (u16, &'static str, String) {
        match page {
            Page::Livez => (200, TEXT, "ok\n".into()),
            Page::Readyz => match self.not_ready() {
                None => (200, TEXT, "ready\n".into()),
                Some(why) => (503, TEXT, format!("not ready: {why}\n")),
            },
            Page::Status => {
                let s = self.status_response();
                let mut j = crate::json::status_json(None, &s);
                j.push('\n');
                (200, "application/json", j)
            }
            Page::Metrics => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics_page(),
            ),
            Page::NotFound => (404, TEXT, "not found\n".into()),
            Page::MethodNotAllowed => (405, TEXT, "method not allowed\n".into()),
        }
    }

    /// Why this node is not ready to serve, or None when it is. Ready means: it knows a
    /// leader (itself included) and has applied every entry through the commit index it
    /// knows. A node cut off from a quorum loses its leader within an election timeout (a
    /// follower stops hearing heartbeats and campaigns; a leader steps down by CheckQuorum).
    pub(super) fn not_ready(&self) -> Option<String> {
        let core = self.replica.core();
        if core.leader().is_none() {
            return Some(format!("no leader known in term {}", core.term()));
        }
        let commit = core.status().commit;
        let applied = self.replica.applied();
        if applied < commit {
            return Some(format!(
                "applied index {applied} behind commit index {commit}"
            ));
        }
        None
    }

    /// Writes queued output; false if the connection was closed for a write error.
    fn http_flush(&mut self, token: Token) -> bool {
        let Some(c) = self.http_conns.get_mut(&token) else {
            return false;
        };
        while c.sent < c.out.len() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(0) => {
                    self.http_close(token, "write returned 0");
                    return false;
                }
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.http_close(token, &format!("write error: {e}"));
                    return false;
                }
            }
        }
        c.out.clear();
        c.sent = 0;
        true
    }

    /// The connection's deadline timer fired: close it if the deadline really passed (a
    /// request completed since re-arms it).
    pub(super) fn on_http_deadline(&mut self, token: Token) {
        let Some(c) = self.http_conns.get(&token) else {
            return;
        };
        let now = Instant::now();
        if now >= c.deadline {
            let why = if c.draining {
                "linger timeout"
            } else if c.input.is_empty() {
                "idle timeout"
            } else {
                "partial request timeout"
            };
            self.metrics.http_timeouts += 1;
            self.http_close(token, why);
        } else {
            let d = c.deadline;
            self.timers.insert(d, TimerEvent::HttpDeadline(token));
        }
    }

    pub(super) fn http_close(&mut self, token: Token, why: &str) {
        if let Some(mut c) = self.http_conns.remove(&token) {
            log::debug!("closing HTTP connection {}: {why}", token.0);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Parsed {
        parse(s.as_bytes())
    }

    #[test]
    fn parses_pages_and_keep_alive() {
        assert_eq!(
            req("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Request {
                len: "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n".len(),
                page: Page::Livez,
                head_only: false,
                keep_alive: true
            }
        );
        let Parsed::Request {
            page, keep_alive, ..
        } = req("GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!((page, keep_alive), (Page::Metrics, false));
        let Parsed::Request {
            keep_alive,
            head_only,
            ..
        } = req("HEAD /status HTTP/1.1\r\nConnection: close\r\n\r\n")
        else {
            panic!()
        };
        assert!(!keep_alive && head_only);
        let Parsed::Request { page, len, .. } =
            req("POST /readyz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET")
        else {
            panic!()
        };
        assert_eq!((page, len), (Page::MethodNotAllowed, 47));
        let Parsed::Request { page, .. } = req("GET /nope HTTP/1.1\r\n\r\n") else {
            panic!()
        };
        assert_eq!(page, Page::NotFound);
    }

    #[test]
    fn partial_and_refused() {
        assert_eq!(req("GET /livez HTTP/1.1\r\nHost"), Parsed::Partial);
        assert_eq!(
            req("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parsed::Partial
        );
        assert_eq!(req("\x00\x01garbage\r\n\r\n"), Parsed::Error(400));
        assert_eq!(
            req("POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"),
            Parsed::Error(413)
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parsed::Error(400)
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Error(411)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(req(&big), Parsed::Error(431));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Parsed::Error(431)
        );
    }

    #[test]
    fn responses_have_length_and_connection() {
        let mut out = Vec::new();
        write_response(&mut out, 503, TEXT, b"no\n", false, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{s}");
        assert!(s.contains("Content-Length: 3\r\n") && s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\nno\n"));
        let mut out = Vec::new();
        write_response(&mut out, 200, TEXT, b"abc", true, true);
        assert!(String::from_utf8(out).unwrap().ends_with(
            "Content-Length: 3\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\n"
        ));
    }
}
