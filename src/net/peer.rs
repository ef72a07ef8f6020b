//! Outbound connection to one Raft peer.
//!
//! Each node dials every other node and only *sends* on that connection; it receives peer
//! messages on the connections others dialled to it (as etcd's rafthttp does with its stream
//! pairs). A peer is `Idle` (waiting for its reconnect timer), `Connecting` (non-blocking connect
//! in flight) or `Connected`.
//!
//! Messages are never queued forever: while idle they are dropped at once (the caller reports
//! the peer unreachable to the core, which falls back to probing), and the outbound queue of a
//! connected or connecting peer is bounded. Reconnects back off exponentially, capped. The
//! backoff starts over only after a connection stayed up for `stable_after` (1 s): a peer that
//! accepts and closes at once (restarting, overloaded, a proxy in front of a dead node) is
//! redialled with growing delays, not at the minimum delay forever.

use super::conn::{Conn, ReadStatus};
use bytes::Bytes;
use mio::net::TcpStream;
use mio::{event::Event, Interest, Registry, Token};
use std::io;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

/// Reconnect and queueing limits.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// First reconnect delay after a failure.
    pub backoff_min: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// Max bytes queued for a peer; beyond it messages are dropped.
    pub max_queue_bytes: usize,
    /// A connection that lasted at least this long resets the backoff when it ends.
    pub stable_after: Duration,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            max_queue_bytes: 64 << 20,
            stable_after: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Idle,
    Connecting,
    Connected,
}

/// What an event on the peer's socket meant.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerEvent {
    Nothing,
    /// The connection is now established.
    Connected,
    /// The connection failed or broke; it has been torn down. Schedule a reconnect after the
    /// returned delay.
    Failed(Duration),
}

/// One outbound peer link.
pub struct Peer {
    pub id: u64,
    pub addr: String,
    opts: PeerOptions,
    state: PeerState,
    conn: Option<Conn>,
    token: Option<Token>,
    backoff: Duration,
    /// When the current connection was established (None unless connected).
    connected_at: Option<Instant>,
    /// Messages dropped since the last connect (for logging).
    pub dropped: u64,
}

impl Peer {
    pub fn new(id: u64, addr: String, opts: PeerOptions) -> Peer {
        let backoff = opts.backoff_min;
        Peer {
            id,
            addr,
            opts,
            state: PeerState::Idle,
            conn: None,
            token: None,
            backoff,
            connected_at: None,
            dropped: 0,
        }
    }

    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The token of the current connection attempt, if any.
    pub fn token(&self) -> Option<Token> {
        self.token
    }

    /// Starts a non-blocking connect, registered under `token`. On an immediate failure the
    /// peer stays idle and the reconnect delay is returned as the error.
    pub fn connect(&mut self, registry: &Registry, token: Token) -> Result<(), Duration> {
        if self.state != PeerState::Idle {
            return Ok(());
        }
        let attempt = || -> io::Result<TcpStream> {
            let addr = self.addr.to_socket_addrs()?.next().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing")
            })?;
            let mut stream = TcpStream::connect(addr)?;
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        };
        match attempt() {
            Ok(stream) => {
                self.conn = Some(Conn::new(stream, super::framing::DEFAULT_MAX_FRAME));
                self.token = Some(token);
                self.state = PeerState::Connecting;
                Ok(())
            }
            Err(e) => {
                log::debug!("peer {} ({}): connect failed: {e}", self.id, self.addr);
                Err(self.next_backoff())
            }
        }
    }

    /// The delay before the next attempt; doubles it for the time after (capped).
    fn next_backoff(&mut self) -> Duration {
        let d = self.backoff;
        self.backoff = (self.backoff * 2).min(self.opts.backoff_max);
        d
    }

    /// Queues one encoded message. Returns false if it was dropped: the peer is idle (not
    /// connected) or its queue is full.
    pub fn send(&mut self, frame: Bytes) -> bool {
        match (&mut self.conn, self.state) {
            (Some(conn), PeerState::Connecting | PeerState::Connected)
                if conn.pending_out() + frame.len() <= self.opts.max_queue_bytes =>
            {
                conn.queue(frame);
                true
            }
            _ => {
                self.dropped += 1;
                false
            }
        }
    }

    /// Writes queued messages (connected peers only). An error tears the connection down and
    /// returns the reconnect delay.
    pub fn flush(&mut self, registry: &Registry) -> Result<(), Duration> {
        if self.state != PeerState::Connected {
            return Ok(());
        }
        let res = match &mut self.conn {
            Some(conn) => conn.flush(),
            None => return Ok(()),
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                log::info!("peer {} ({}): write failed: {e}", self.id, self.addr);
                Err(self.teardown(registry))
            }
        }
    }

    /// Bytes waiting to be written.
    pub fn pending_out(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.pending_out())
    }

    /// Handles a readiness event for this peer's token.
    pub fn on_event(&mut self, registry: &Registry, ev: &Event) -> PeerEvent {
        let Some(conn) = &mut self.conn else {
            return PeerEvent::Nothing;
        };
        if self.state == PeerState::Connecting {
            if ev.is_error() || ev.is_read_closed() || ev.is_write_closed() {
                let err = conn.stream.take_error().ok().flatten();
                log::debug!("peer {} ({}): connect failed: {err:?}", self.id, self.addr);
                return PeerEvent::Failed(self.teardown(registry));
            }
            if !ev.is_writable() {
                return PeerEvent::Nothing;
            }
            // mio: a writable event on a connecting socket means connected *or* failed.
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    log::debug!("peer {} ({}): connect failed: {e}", self.id, self.addr);
                    return PeerEvent::Failed(self.teardown(registry));
                }
            }
            match conn.stream.peer_addr() {
                Ok(_) => {
                    log::info!("peer {} ({}): connected", self.id, self.addr);
                    self.state = PeerState::Connected;
                    // The backoff is not reset here: only once the link proved stable (see
                    // teardown), so accept-then-close does not mean reconnecting at once.
                    self.connected_at = Some(Instant::now());
                    self.dropped = 0;
                    return match self.flush(registry) {
                        Ok(()) => PeerEvent::Connected,
                        Err(d) => PeerEvent::Failed(d),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return PeerEvent::Nothing,
                Err(e) => {
                    log::debug!("peer {} ({}): connect failed: {e}", self.id, self.addr);
                    return PeerEvent::Failed(self.teardown(registry));
                }
            }
        }
        // Connected. The peer never sends on this connection; readable means EOF or error.
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            loop {
                match conn.read_some() {
                    Ok(ReadStatus::Data(_) | ReadStatus::Drained(_)) => {
                        // Unexpected bytes: discard them.
                        while let Ok(Some(_)) = conn.next_frame() {}
                        continue;
                    }
                    Ok(ReadStatus::WouldBlock) => break,
                    Ok(ReadStatus::Eof) | Err(_) => {
                        log::info!("peer {} ({}): connection closed", self.id, self.addr);
                        return PeerEvent::Failed(self.teardown(registry));
                    }
                }
            }
        }
        if ev.is_writable() {
            if let Err(d) = self.flush(registry) {
                return PeerEvent::Failed(d);
            }
        }
        PeerEvent::Nothing
    }

    /// Drops the connection (and its queue); returns the reconnect delay. A connection that
    /// stayed up for `stable_after` starts the backoff over; a shorter one keeps it growing.
    pub fn teardown(&mut self, registry: &Registry) -> Duration {
        if let Some(mut conn) = self.conn.take() {
            let _ = registry.deregister(&mut conn.stream);
        }
        self.token = None;
        self.state = PeerState::Idle;
        if self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() >= self.opts.stable_after)
        {
            self.backoff = self.opts.backoff_min;
        }
        self.next_backoff()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    #[test]
    fn backoff_doubles_and_caps() {
        let opts = PeerOptions {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            max_queue_bytes: 100,
            ..Default::default()
        };
        // A port nobody listens on: bind then drop.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let mut p = Peer::new(2, addr, opts);
        let delays: Vec<u64> = (0..5)
            .map(|_| p.next_backoff().as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        // Idle peers drop messages.
        assert!(!p.send(Bytes::from_static(b"x")));
        assert_eq!(p.dropped, 1);
    }

    #[test]
    fn connects_sends_and_bounds_its_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut poll = Poll::new().unwrap();
        let mut p = Peer::new(
            2,
            addr,
            PeerOptions {
                max_queue_bytes: 8,
                ..Default::default()
            },
        );
        p.connect(poll.registry(), Token(5)).unwrap();
        assert_eq!(p.state(), PeerState::Connecting);
        // Queued while connecting, within the bound; over the bound is dropped.
        assert!(p.send(Bytes::from_static(b"hello")));
        assert!(!p.send(Bytes::from_static(b"world")));
        let (mut srv, _) = listener.accept().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Events::with_capacity(8);
        while p.state() != PeerState::Connected {
            assert!(Instant::now() < deadline, "never connected");
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            for ev in events.iter() {
                assert_eq!(ev.token(), Token(5));
                let r = p.on_event(poll.registry(), ev);
                assert!(!matches!(r, PeerEvent::Failed(_)), "{r:?}");
            }
        }
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut srv, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // The remote closing is noticed as a failure with a reconnect delay.
        drop(srv);
        let mut failed = false;
        while !failed {
            assert!(Instant::now() < deadline, "close not noticed");
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            for ev in events.iter() {
                failed |= matches!(p.on_event(poll.registry(), ev), PeerEvent::Failed(_));
            }
        }
        assert_eq!(p.state(), PeerState::Idle);
    }

    /// Polls until the peer reports something other than `Nothing`.
    fn next_event(poll: &mut Poll, p: &mut Peer) -> PeerEvent {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Events::with_capacity(8);
        loop {
            assert!(Instant::now() < deadline, "no peer event");
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            for ev in events.iter() {
                let r = p.on_event(poll.registry(), ev);
                if r != PeerEvent::Nothing {
                    return r;
                }
            }
        }
    }

    #[test]
    fn backoff_resets_only_after_a_connection_that_lasted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut poll = Poll::new().unwrap();
        let opts = PeerOptions {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            stable_after: Duration::from_secs(3600),
            ..Default::default()
        };
        let mut p = Peer::new(2, addr, opts);
        // The other side accepts, then closes at once: each attempt connects, so the old code
        // reset the backoff every time (10, 10, 10, ...). It must keep growing instead.
        let mut delays = Vec::new();
        for i in 0..5 {
            p.connect(poll.registry(), Token(i)).unwrap();
            assert_eq!(next_event(&mut poll, &mut p), PeerEvent::Connected);
            // Raft latency: no Nagle on the (outbound) peer socket either.
            assert!(p.conn.as_ref().unwrap().stream.nodelay().unwrap());
            let (srv, _) = listener.accept().unwrap();
            drop(srv);
            match next_event(&mut poll, &mut p) {
                PeerEvent::Failed(d) => delays.push(d.as_millis() as u64),
                other => panic!("close not noticed: {other:?}"),
            }
        }
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        // A connection that stayed up long enough starts the backoff over.
        p.connect(poll.registry(), Token(9)).unwrap();
        assert_eq!(next_event(&mut poll, &mut p), PeerEvent::Connected);
        p.connected_at = Some(Instant::now() - Duration::from_secs(3600));
        let (srv, _) = listener.accept().unwrap();
        drop(srv);
        assert_eq!(
            next_event(&mut poll, &mut p),
            PeerEvent::Failed(Duration::from_millis(10))
        );
    }
}
