//! One blocking connection to one endpoint, and the retry backoff.
//!
//! Every wait has two bounds: the operation's `deadline` (retries included) and the attempt's
//! own limits ([`Limits`]). The connect and the wait for an answer's first bytes end at the
//! attempt timeout, so a node that accepts connections but never answers (SIGSTOPped, wedged)
//! costs one attempt. Moving bytes — sending a large request, reading a large answer — is bounded
//! by the deadline, with the attempt timeout as the longest silence allowed in between (a node
//! that stops mid-frame also costs at most one attempt timeout more).

use crate::net::framing::{self, FrameError, HEADER_LEN};
use crate::pb::kvpb;
use crate::rng::Rng;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Socket timeouts must be nonzero; never go below this.
const MIN_IO_TIMEOUT: Duration = Duration::from_millis(1);

/// The slowest rate at which a healthy cluster is assumed to commit a request's bytes (send
/// them to the followers and sync them: a slow disk's sequential write rate): the wait for an
/// answer grows by the request's size over this rate (+2 s for a 20 MiB value), so a large
/// write is not abandoned and re-sent (another copy in the log) just for being large.
const COMMIT_BYTES_PER_SEC: f64 = 10.0 * 1024.0 * 1024.0;

/// The bounds of one attempt (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// End of the whole operation.
    pub deadline: Instant,
    /// Longest wait for an answer to start, and longest silence while bytes move.
    pub attempt: Duration,
    /// Largest response frame payload accepted.
    pub max_frame: usize,
}

/// The socket, plain or through TLS (rustls' blocking adapter over the same socket).
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(d)
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(d)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            // rustls buffers the record; `flush` sends it (requests are one write each).
            Stream::Tls(t) => t.write(buf).and_then(|n| t.flush().map(|_| n)),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// A TLS problem that trying again (or another endpoint of the same cluster) cannot fix: the
/// server's certificate is not trusted, the server does not speak TLS, or it does and the
/// client does not. The client fails at once with it instead of retrying until its deadline.
#[derive(Debug)]
pub struct TlsMismatch(pub String);

impl std::fmt::Display for TlsMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsMismatch {}

fn tls_mismatch(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsMismatch(msg))
}

/// True if `e` is a [`TlsMismatch`].
pub fn is_tls_mismatch(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<TlsMismatch>())
}

/// A connected endpoint.
pub struct Conn {
    pub addr: String,
    stream: Stream,
}

impl Conn {
    /// Connects to `addr` (`HOST:PORT`), giving up after `timeout` per address or at
    /// `deadline`; with `tls`, also completes the TLS handshake within the same bounds,
    /// checking the server's certificate against `addr`'s host.
    pub fn connect_tls(
        addr: &str,
        timeout: Duration,
        deadline: Instant,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> io::Result<Conn> {
        let mut conn = Conn::connect(addr, timeout, deadline)?;
        let Some(cfg) = tls else {
            return Ok(conn);
        };
        let sock = match conn.stream {
            Stream::Plain(s) => s,
            tls @ Stream::Tls(_) => {
                conn.stream = tls;
                return Ok(conn);
            }
        };
        let name = crate::net::tls::server_name(addr)?;
        let mut session = rustls::ClientConnection::new(cfg.clone(), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let left = remaining(deadline)?.min(timeout.max(MIN_IO_TIMEOUT));
        sock.set_read_timeout(Some(left))?;
        sock.set_write_timeout(Some(left))?;
        let mut sock = sock;
        while session.is_handshaking() {
            if let Err(e) = session.complete_io(&mut sock) {
                return Err(match e.kind() {
                    // rustls' verdicts (certificate refused, alert, not TLS at all).
                    io::ErrorKind::InvalidData => tls_mismatch(format!(
                        "TLS handshake failed: {e} (does this endpoint serve TLS, and is --tls-ca \
                         the CA that issued its certificate?)"
                    )),
                    io::ErrorKind::UnexpectedEof => tls_mismatch(
                        "closed during the TLS handshake (a plain TCP port? then drop --tls-ca)"
                            .into(),
                    ),
                    _ if is_timeout(&e) => timed_out(format!("TLS handshake: {e}")),
                    _ => e,
                });
            }
        }
        conn.stream = Stream::Tls(Box::new(rustls::StreamOwned::new(session, sock)));
        Ok(conn)
    }

    /// Connects to `addr` (`HOST:PORT`), giving up after `timeout` per address or at `deadline`.
    pub fn connect(addr: &str, timeout: Duration, deadline: Instant) -> io::Result<Conn> {
        let mut last_err = None;
        let addrs = addr.to_socket_addrs().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot resolve endpoint {addr:?}: {e}"))
        })?;
        for sa in addrs {
            let left = remaining(deadline)?.min(timeout.max(MIN_IO_TIMEOUT));
            match TcpStream::connect_timeout(&sa, left) {
                Ok(stream) => {
                    // Best effort: requests are small and latency matters.
                    let _ = stream.set_nodelay(true);
                    return Ok(Conn {
                        addr: addr.to_string(),
                        stream: Stream::Plain(stream),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    last_err = Some(io::Error::new(
                        e.kind(),
                        format!("connect timed out after {left:?}"),
                    ))
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("endpoint {addr:?} resolves to no address"),
            )
        }))
    }

    /// Sends `req` and waits for the response with the same id (see [`Limits`]). Responses with
    /// other ids (left over from an abandoned request) are skipped. An error answered with id
    /// 0 is taken as this request's: a server that could not read a frame's id (a framing error)
    /// answers so, and this connection carries one request at a time.
    ///
    /// A response header announcing more than `max_frame` bytes is an `InvalidData` error
    /// wrapping [`FrameError::TooLarge`] (see [`response_too_large`]).
    pub fn call(&mut self, req: &kvpb::Request, lim: &Limits) -> io::Result<kvpb::Response> {
        let frame = framing::frame_bytes(req);
        self.write_all_by(&frame, lim)?;
        // A large write is replicated and synced before it is answered: allow for its bytes.
        let commit_time = Duration::from_secs_f64(frame.len() as f64 / COMMIT_BYTES_PER_SEC);
        let answer_by = (Instant::now() + lim.attempt + commit_time).min(lim.deadline);
        loop {
            let mut header = [0u8; HEADER_LEN];
            self.read_exact_by(&mut header, answer_by, lim, "no answer")?;
            let len = u32::from_be_bytes(header) as usize;
            // A TLS alert record (type 21, version 3.x): the server speaks TLS and refused our
            // plaintext. Said so, instead of "frame too large".
            if header[0] == 21 && header[1] == 3 && matches!(self.stream, Stream::Plain(_)) {
                return Err(tls_mismatch(
                    "answered with a TLS alert: it serves TLS; give the cluster's CA file with \
                     --tls-ca (RAFTKV_TLS_CA)"
                        .into(),
                ));
            }
            if len > lim.max_frame {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    FrameError::TooLarge {
                        len,
                        max: lim.max_frame,
                        id: 0,
                    },
                ));
            }
            let mut payload = vec![0u8; len];
            self.read_exact_by(&mut payload, lim.deadline, lim, "answer stalled")?;
            let resp: kvpb::Response = framing::decode(payload.into())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let connection_error =
                resp.id == 0 && matches!(resp.result, Some(kvpb::response::Result::Error(_)));
            if resp.id == req.id || connection_error {
                return Ok(resp);
            }
            log::debug!(
                "client: skipping response {} from {} (waiting for {})",
                resp.id,
                self.addr,
                req.id
            );
        }
    }

    fn write_all_by(&mut self, mut buf: &[u8], lim: &Limits) -> io::Result<()> {
        while !buf.is_empty() {
            let left = remaining(lim.deadline)?;
            self.stream.set_write_timeout(Some(left.min(lim.attempt)))?;
            match self.stream.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    return Err(timed_out(format!(
                        "sending stalled for {:?}",
                        left.min(lim.attempt)
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fills `buf`, giving up at `until` or after `lim.attempt` without a byte.
    fn read_exact_by(
        &mut self,
        mut buf: &mut [u8],
        until: Instant,
        lim: &Limits,
        what: &str,
    ) -> io::Result<()> {
        let started = Instant::now();
        while !buf.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(format!("{what} within {:?}", started.elapsed())));
            }
            let wait = left.min(lim.attempt).max(MIN_IO_TIMEOUT);
            self.stream.set_read_timeout(Some(wait))?;
            match self.stream.read(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Loop: the check above turns a passed `until` into the error.
                Err(e) if is_timeout(&e) && wait < left => {
                    return Err(timed_out(format!("{what}: silent for {wait:?}")))
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A socket timeout: `WouldBlock` or `TimedOut` depending on the platform.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn timed_out(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, msg)
}

/// The [`FrameError::TooLarge`] inside an error from [`Conn::call`], if that is what it is.
pub fn response_too_large(e: &io::Error) -> Option<&FrameError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<FrameError>())
        .filter(|fe| matches!(fe, FrameError::TooLarge { .. }))
}

/// Time left until `deadline`, or a `TimedOut` error when it has passed.
pub fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(left.max(MIN_IO_TIMEOUT))
}

/// Capped exponential backoff with jitter.
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_millis(500);

    pub fn new() -> Backoff {
        Backoff {
            next: Self::INITIAL,
        }
    }

    /// Sleeps for the current delay (jittered to 50-100 %, never past `deadline`), then doubles it.
    pub fn sleep(&mut self, rng: &mut Rng, deadline: Instant) {
        let base = self.next.as_micros() as u64;
        let jittered = Duration::from_micros(rng.range(base / 2, base + 1));
        let d = jittered.min(deadline.saturating_duration_since(Instant::now()));
        if !d.is_zero() {
            std::thread::sleep(d);
        }
        self.next = (self.next * 2).min(Self::MAX);
    }
}
