//! One blocking connection to one endpoint, and the retry backoff.

use crate::net::framing::{blocking, DEFAULT_MAX_FRAME};
use crate::pb::kvpb;
use crate::rng::Rng;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Socket timeouts must be nonzero; never go below this.
const MIN_IO_TIMEOUT: Duration = Duration::from_millis(1);

/// A connected endpoint.
pub struct Conn {
    pub addr: String,
    stream: TcpStream,
}

impl Conn {
    /// Connects to `addr` (`HOST:PORT`), giving up at `deadline`.
    pub fn connect(addr: &str, deadline: Instant) -> io::Result<Conn> {
        let mut last_err = None;
        let addrs = addr.to_socket_addrs().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot resolve endpoint {addr:?}: {e}"))
        })?;
        for sa in addrs {
            let left = remaining(deadline)?;
            match TcpStream::connect_timeout(&sa, left) {
                Ok(stream) => {
                    // Best effort: requests are small and latency matters.
                    let _ = stream.set_nodelay(true);
                    return Ok(Conn {
                        addr: addr.to_string(),
                        stream,
                    });
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

    /// Sends `req` and waits for the response with the same id, giving up at `deadline`.
    /// Responses with other ids (left over from an abandoned request) are skipped.
    pub fn call(&mut self, req: &kvpb::Request, deadline: Instant) -> io::Result<kvpb::Response> {
        self.stream.set_write_timeout(Some(remaining(deadline)?))?;
        blocking::write_msg(&mut self.stream, req)?;
        loop {
            self.stream.set_read_timeout(Some(remaining(deadline)?))?;
            let resp: kvpb::Response = blocking::read_msg(&mut self.stream, DEFAULT_MAX_FRAME)?;
            if resp.id == req.id {
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
