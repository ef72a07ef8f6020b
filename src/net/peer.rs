//! Outbound connection to one Raft peer.
//!
//! Each node dials every other node and only *sends* on that connection; it receives peer
//! messages on the connections others dialled to it (as etcd's rafthttp does with its stream
//! pairs). A peer is `Idle` (waiting for its reconnect timer), `Connecting` (non-blocking connect
//! in flight), `Handshaking` (our HELLO sent, waiting for the other side's CHALLENGE, see
//! `net::handshake`) or `Connected` (both sides proved who they are; Raft messages flow).
//! Messages sent before then are held (within the same bound) and written right after our PROOF,
//! so nothing but the handshake ever precedes it on the wire.
//!
//! Messages are never queued forever: while idle they are dropped at once (the caller reports
//! the peer unreachable to the core, which falls back to probing), and the outbound queue of a
//! connected or connecting peer is bounded. Reconnects back off exponentially, capped. The
//! backoff starts over only after a connection stayed up for `stable_after` (1 s): a peer that
//! accepts and closes at once (restarting, overloaded, a proxy in front of a dead node) is
//! redialled with growing delays, not at the minimum delay forever.

use super::conn::{Conn, ReadStatus};
use super::framing::{frame_bytes_raw, FrameError};
use super::handshake::{self, Agreed, AuthError, Dialer};
use super::peer_auth::PeerSecrets;
use bytes::Bytes;
use mio::net::TcpStream;
use mio::{event::Event, Interest, Registry, Token};
use std::collections::VecDeque;
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
    Handshaking,
    Connected,
}

/// What an event on the peer's socket meant.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerEvent {
    Nothing,
    /// The handshake succeeded: the other side is the member we dialled, of this cluster.
    Connected(Agreed),
    /// The connection failed or broke; it has been torn down. Schedule a reconnect after the
    /// returned delay.
    Failed(Duration),
    /// The other side failed the handshake; torn down like `Failed`.
    AuthFailed(AuthError, Duration),
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
    secrets: PeerSecrets,
    /// The handshake in progress (Connecting, Handshaking).
    dialer: Option<Dialer>,
    /// Messages sent before the handshake finished, written after our PROOF.
    held: VecDeque<Bytes>,
    held_bytes: usize,
}

impl Peer {
    pub fn new(id: u64, addr: String, opts: PeerOptions, secrets: PeerSecrets) -> Peer {
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
            secrets,
            dialer: None,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The secrets the next handshake proves with (SIGHUP: `server/reload.rs`). A link that
    /// is up keeps going: its peer proved itself when it was set up.
    pub fn set_secrets(&mut self, secrets: PeerSecrets) {
        self.secrets = secrets;
    }

    /// The token of the current connection attempt, if any.
    pub fn token(&self) -> Option<Token> {
        self.token
    }

    /// Starts a non-blocking connect, registered under `token`, that will run `dialer`'s
    /// handshake; with `tls`, inside a TLS session that checks the peer's certificate
    /// against its address and presents ours. On an immediate failure the peer stays idle and
    /// the reconnect delay is returned as the error.
    pub fn connect(
        &mut self,
        registry: &Registry,
        token: Token,
        dialer: Dialer,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<(), Duration> {
        if self.state != PeerState::Idle {
            return Ok(());
        }
        let session = match tls {
            Some(cfg) => {
                match super::tls::server_name(&self.addr)
                    .and_then(|name| super::tls::TlsSession::client(cfg, name))
                {
                    Ok(s) => Some(s),
                    Err(e) => {
                        log::warn!("peer {} ({}): TLS: {e}", self.id, self.addr);
                        return Err(self.next_backoff());
                    }
                }
            }
            None => None,
        };
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
                // All this side ever reads is the handshake.
                let mut conn = Conn::new(stream, handshake::MAX_FRAME);
                if let Some(s) = session {
                    // The HELLO waits in the queue until the TLS handshake is done.
                    conn.set_tls(s);
                }
                conn.queue(frame_bytes_raw(&dialer.hello()));
                self.conn = Some(conn);
                self.dialer = Some(dialer);
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
        // The bound is on Raft messages: the handshake's own frames do not count.
        let queued = match (&self.conn, self.state) {
            (Some(conn), PeerState::Connected) => conn.pending_out(),
            _ => self.held_bytes,
        };
        let fits = queued + frame.len() <= self.opts.max_queue_bytes;
        match (&mut self.conn, self.state) {
            (Some(conn), PeerState::Connected) if fits => conn.queue(frame),
            (Some(_), PeerState::Connecting | PeerState::Handshaking) if fits => {
                self.held_bytes += frame.len();
                self.held.push_back(frame);
            }
            _ => {
                self.dropped += 1;
                return false;
            }
        }
        true
    }

    /// Writes queued messages (the handshake's, or a connected peer's). An error tears the
    /// connection down and returns the reconnect delay.
    pub fn flush(&mut self, registry: &Registry) -> Result<(), Duration> {
        if !matches!(self.state, PeerState::Connected | PeerState::Handshaking) {
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

    /// Bytes waiting to be written (held until the handshake is done, or queued).
    pub fn pending_out(&self) -> usize {
        self.held_bytes + self.conn.as_ref().map_or(0, |c| c.pending_out())
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
                    log::debug!("peer {} ({}): connected, handshaking", self.id, self.addr);
                    self.state = PeerState::Handshaking;
                    // The backoff is not reset here: only once the link proved stable (see
                    // teardown), so accept-then-close does not mean reconnecting at once.
                    self.connected_at = Some(Instant::now());
                    self.dropped = 0;
                    // Our HELLO; the CHALLENGE comes back as a readable event.
                    return match self.flush(registry) {
                        Ok(()) => PeerEvent::Nothing,
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
        // Handshaking or connected. After its CHALLENGE the other side never sends on this
        // connection; readable then means EOF or error.
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            loop {
                let Some(conn) = &mut self.conn else {
                    return PeerEvent::Nothing;
                };
                match conn.read_some() {
                    Ok(ReadStatus::Data(_) | ReadStatus::Drained(_)) => {
                        if let Some(ev) = self.on_handshake_bytes(registry) {
                            return ev;
                        }
                        continue;
                    }
                    Ok(ReadStatus::WouldBlock) => break,
                    // TLS refused (by us or by the other side's alert).
                    Err(e) if e.kind() == io::ErrorKind::InvalidData && conn.is_tls() => {
                        return self.auth_failed(registry, AuthError::Tls(e.to_string()));
                    }
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

    /// Takes the CHALLENGE off the read buffer once it is complete: on success writes our
    /// PROOF and then the held messages (the peer is `Connected`); on failure tears down. Bytes
    /// after the handshake are unexpected and discarded.
    fn on_handshake_bytes(&mut self, registry: &Registry) -> Option<PeerEvent> {
        let conn = self.conn.as_mut()?;
        if self.state != PeerState::Handshaking {
            conn.discard_input();
            return None;
        }
        let frame = match conn.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(FrameError::TooLarge { len, .. }) => {
                return Some(self.auth_failed(registry, AuthError::Oversized(len)))
            }
            Err(FrameError::Decode { .. }) => {
                return Some(self.auth_failed(registry, AuthError::Malformed("bad frame")))
            }
        };
        let dialer = self.dialer.take()?;
        let (proof, agreed) = match dialer.on_challenge(&frame, &self.secrets) {
            Ok(r) => r,
            Err(e) => return Some(self.auth_failed(registry, e)),
        };
        conn.discard_input();
        conn.queue(frame_bytes_raw(&proof));
        for f in self.held.drain(..) {
            conn.queue(f);
        }
        self.held_bytes = 0;
        self.state = PeerState::Connected;
        log::info!("peer {} ({}): connected, authenticated", self.id, self.addr);
        Some(match self.flush(registry) {
            Ok(()) => PeerEvent::Connected(agreed),
            Err(d) => PeerEvent::Failed(d),
        })
    }

    fn auth_failed(&mut self, registry: &Registry, e: AuthError) -> PeerEvent {
        PeerEvent::AuthFailed(e, self.teardown(registry))
    }

    /// Drops the connection (and its queue); returns the reconnect delay. A connection that
    /// stayed up for `stable_after` starts the backoff over; a shorter one keeps it growing.
    pub fn teardown(&mut self, registry: &Registry) -> Duration {
        if let Some(mut conn) = self.conn.take() {
            let _ = registry.deregister(&mut conn.stream);
        }
        self.dialer = None;
        self.held.clear();
        self.held_bytes = 0;
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
    use crate::net::handshake::{AcceptStep, Acceptor, NONCE_LEN};
    use crate::storage::cluster_id::ClusterId;
    use mio::{Events, Poll};
    use std::io::{Read, Write};

    fn cluster() -> Option<ClusterId> {
        ClusterId::from_bytes([7; 16])
    }

    fn dialer() -> Dialer {
        Dialer::new(1, 2, cluster().into(), [1; NONCE_LEN])
    }

    fn peer(addr: String, opts: PeerOptions) -> Peer {
        Peer::new(2, addr, opts, PeerSecrets::insecure())
    }

    /// Reads one frame payload from a blocking socket.
    fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).unwrap();
        let mut b = vec![0u8; u32::from_be_bytes(h) as usize];
        s.read_exact(&mut b).unwrap();
        b
    }

    /// Plays node 2's side of the handshake on `srv` with `secrets`.
    fn accept_handshake(srv: &mut std::net::TcpStream, secrets: &PeerSecrets) -> Acceptor {
        let mut acc = Acceptor::new(2, cluster().into(), [2; NONCE_LEN]);
        let hello = read_frame(srv);
        let AcceptStep::Reply(ch) = acc.on_frame(&hello, secrets, |id| id == 1).unwrap() else {
            panic!("no challenge");
        };
        srv.write_all(&frame_bytes_raw(&ch)).unwrap();
        acc
    }

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
        let mut p = peer(addr, opts);
        let delays: Vec<u64> = (0..5)
            .map(|_| p.next_backoff().as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        // Idle peers drop messages.
        assert!(!p.send(Bytes::from_static(b"x")));
        assert_eq!(p.dropped, 1);
    }

    #[test]
    fn handshakes_then_sends_what_was_held_and_bounds_its_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut poll = Poll::new().unwrap();
        let opts = PeerOptions {
            max_queue_bytes: 8,
            ..Default::default()
        };
        let mut p = peer(addr, opts);
        p.connect(poll.registry(), Token(5), dialer(), None)
            .unwrap();
        assert_eq!(p.state(), PeerState::Connecting);
        // Held while connecting, within the bound; over the bound is dropped.
        assert!(p.send(Bytes::from_static(b"hello")));
        assert!(!p.send(Bytes::from_static(b"world")));
        let (mut srv, _) = listener.accept().unwrap();
        until_handshaking(&mut poll, &mut p);
        let mut acc = accept_handshake(&mut srv, &PeerSecrets::insecure());
        let agreed = match next_event(&mut poll, &mut p) {
            PeerEvent::Connected(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!((agreed.peer, Some(agreed.cluster)), (2, cluster()));
        // Our PROOF comes first, then the held message: nothing precedes the handshake.
        let proof = read_frame(&mut srv);
        let done = acc.on_frame(&proof, &PeerSecrets::insecure(), |_| true);
        assert!(matches!(done, Ok(AcceptStep::Done(_))), "{done:?}");
        let mut buf = [0u8; 5];
        srv.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // The remote closing is noticed as a failure with a reconnect delay.
        drop(srv);
        assert!(matches!(
            next_event(&mut poll, &mut p),
            PeerEvent::Failed(_)
        ));
        assert_eq!(p.state(), PeerState::Idle);
    }

    #[test]
    fn an_acceptor_without_the_secret_is_refused_and_gets_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut poll = Poll::new().unwrap();
        let secret = PeerSecrets::parse("00112233445566778899aabbccddeeff", "t").unwrap();
        let mut p = Peer::new(2, addr, PeerOptions::default(), secret);
        p.connect(poll.registry(), Token(5), dialer(), None)
            .unwrap();
        assert!(p.send(Bytes::from_static(b"raft message")));
        let (mut srv, _) = listener.accept().unwrap();
        until_handshaking(&mut poll, &mut p);
        accept_handshake(&mut srv, &PeerSecrets::insecure());
        match next_event(&mut poll, &mut p) {
            PeerEvent::AuthFailed(AuthError::BadProof, _) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(p.state(), PeerState::Idle);
        let mut rest = Vec::new();
        srv.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "sent {} bytes to an impostor", rest.len());
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

    /// Polls until the peer's TCP connect completed (it is handshaking).
    fn until_handshaking(poll: &mut Poll, p: &mut Peer) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Events::with_capacity(8);
        while p.state() != PeerState::Handshaking {
            assert!(Instant::now() < deadline, "never connected");
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            for ev in events.iter() {
                assert_eq!(p.on_event(poll.registry(), ev), PeerEvent::Nothing);
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
        let mut p = peer(addr, opts);
        // The other side accepts, then closes at once: each attempt connects, so the old code
        // reset the backoff every time (10, 10, 10, ...). It must keep growing instead.
        let mut delays = Vec::new();
        for i in 0..5 {
            p.connect(poll.registry(), Token(i), dialer(), None)
                .unwrap();
            until_handshaking(&mut poll, &mut p);
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
        p.connect(poll.registry(), Token(9), dialer(), None)
            .unwrap();
        until_handshaking(&mut poll, &mut p);
        p.connected_at = Some(Instant::now() - Duration::from_secs(3600));
        let (srv, _) = listener.accept().unwrap();
        drop(srv);
        assert_eq!(
            next_event(&mut poll, &mut p),
            PeerEvent::Failed(Duration::from_millis(10))
        );
    }
}
