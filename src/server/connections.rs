//! Inbound connections, client and peer alike: accepting them, reading their frames within a
//! per-connection budget and the client backpressure limits, answering framing errors, and
//! closing them (a client closed for a framing error lingers until its error is read).

use super::resp_conn::RespState;
use super::timers::TimerEvent;
use super::{ClientConn, Endpoint, PeerAuth, PeerIn, Server};
use crate::kv::error_result;
use crate::net::conn::{Conn, ReadStatus};
use crate::net::framing::FrameError;
use crate::net::handshake::AuthError;
use crate::net::reactor::{PEER_LISTENER, REDIS_LISTENER};
use crate::net::tls::TlsSession;
use crate::pb::kvpb::ErrorCode;
use mio::{Interest, Token};
use std::time::{Duration, Instant};

/// Socket reads per connection per wake-up before yielding to others (fairness).
const READ_BUDGET: usize = 16;
/// How long a client connection closed for a framing error may linger to receive our error.
const LINGER: Duration = Duration::from_secs(2);

impl Server {
    pub(super) fn accept(&mut self, which: Token) {
        loop {
            let listener = match which {
                PEER_LISTENER => self.peer_listener.as_ref(),
                REDIS_LISTENER => self.redis_listener.as_ref(),
                _ => self.client_listener.as_ref(),
            };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    let token = self.tokens.next_token();
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("cannot register connection from {addr}: {e}");
                        continue;
                    }
                    let ep = if which == PEER_LISTENER {
                        let Some(ep) = self.new_peer_in(token, stream, addr) else {
                            continue;
                        };
                        ep
                    } else {
                        let mut conn = Conn::new(stream, self.cfg.max_frame);
                        if let Some(tls) = &self.cfg.tls.client {
                            match TlsSession::server(tls) {
                                Ok(s) => {
                                    conn.set_tls(s);
                                    // A client that never finishes its TLS handshake is
                                    // closed, as a stalled peer handshake is.
                                    let deadline = Instant::now() + self.cfg.peer_handshake_timeout;
                                    self.timers
                                        .insert(deadline, TimerEvent::PeerHandshake(token));
                                }
                                Err(e) => {
                                    log::warn!("client connection from {addr}: {e}");
                                    let _ = self.poll.registry().deregister(&mut conn.stream);
                                    continue;
                                }
                            }
                        }
                        log::debug!("client connection from {addr}");
                        self.clients += 1;
                        self.metrics.client_accepted += 1;
                        // RESP: its own parser, bounded like a native frame.
                        let resp = (which == REDIS_LISTENER).then(|| {
                            Box::new(RespState::new(
                                crate::limits::resp_max_command(self.cfg.max_frame),
                                crate::limits::RESP_MAX_ARGS,
                                super::resp_conn::session_id(self.resp_session_base, token),
                            ))
                        });
                        Endpoint::Client(ClientConn {
                            conn,
                            inflight: 0,
                            paused: false,
                            closing: false,
                            resp,
                            token_tag: None,
                        })
                    };
                    self.endpoints.insert(token, ep);
                    if which != PEER_LISTENER && self.clients > self.cfg.max_clients {
                        self.refuse_client(token, &addr);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next event.
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// An inbound peer connection: it starts in its handshake, reading at most a handshake
    /// frame, with a deadline.
    fn new_peer_in(
        &mut self,
        token: Token,
        mut stream: mio::net::TcpStream,
        addr: std::net::SocketAddr,
    ) -> Option<Endpoint> {
        let Some(acceptor) = self.new_acceptor() else {
            let _ = self.poll.registry().deregister(&mut stream);
            return None;
        };
        let mut conn = Conn::new(stream, crate::net::handshake::MAX_FRAME);
        if let Some(tls) = &self.cfg.tls.peer {
            // The handshake deadline below covers the TLS handshake too.
            match TlsSession::server(&tls.server) {
                Ok(s) => conn.set_tls(s),
                Err(e) => {
                    log::warn!("peer connection from {addr}: {e}");
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    return None;
                }
            }
        }
        log::debug!("peer connection from {addr}");
        let deadline = Instant::now() + self.cfg.peer_handshake_timeout;
        self.timers
            .insert(deadline, TimerEvent::PeerHandshake(token));
        Some(Endpoint::PeerIn(PeerIn {
            conn,
            addr,
            auth: PeerAuth::Handshake(Box::new(acceptor)),
        }))
    }

    /// An inbound peer connection's handshake deadline: closed if it has not completed. A TLS
    /// client connection's: closed if its TLS handshake has not completed.
    pub(super) fn on_handshake_deadline(&mut self, token: Token) {
        let p = match self.endpoints.get(&token) {
            Some(Endpoint::PeerIn(p)) => p,
            Some(Endpoint::Client(c)) => {
                if c.conn.tls_handshaking() {
                    log::debug!("client connection {}: TLS handshake timeout", token.0);
                    self.close(token, "TLS handshake timeout");
                }
                return;
            }
            None => return,
        };
        if let PeerAuth::Handshake(_) = p.auth {
            let who = p.addr.to_string();
            self.auth_failed(&who, &AuthError::Timeout);
            self.close(token, "handshake timeout");
        }
    }

    /// More clients than `--max-clients`: this one is told so (UNAVAILABLE, request id 0) and
    /// closed, so that a flood of connections slows the node down instead of exhausting its
    /// memory or file descriptors. The limit bounds what clients can make the node hold: per
    /// client at most the output limit plus one response and one read buffer.
    fn refuse_client(&mut self, token: Token, addr: &std::net::SocketAddr) {
        let max = self.cfg.max_clients;
        log::warn!("refusing client {addr}: {max} clients connected (--max-clients)");
        let msg = format!("too many clients: this node serves at most {max} (--max-clients)");
        self.answer_and_close(token, 0, error_result(ErrorCode::Unavailable, msg));
    }

    pub(super) fn on_writable(&mut self, token: Token) {
        if let Some(Endpoint::PeerIn(p)) = self.endpoints.get_mut(&token) {
            // Only a CHALLENGE is ever written on an inbound peer connection.
            if let Err(e) = p.conn.flush() {
                self.close(token, &format!("write error: {e}"));
            }
            return;
        }
        self.flush_client(token);
    }

    /// Reads from a client or inbound peer connection until it would block, its budget is
    /// spent (then it is revisited next iteration) or backpressure pauses it. With
    /// `stop_when_drained`, a short read (see [`ReadStatus::Drained`]) also ends it, saving the
    /// `read` that would only return `WouldBlock`: one syscall per request on a busy leader.
    pub(super) fn on_readable(&mut self, token: Token, stop_when_drained: bool) {
        let mut budget = READ_BUDGET;
        loop {
            let max_out = self.cfg.max_client_pending_bytes;
            let max_inflight = self.cfg.max_client_inflight;
            let Some(ep) = self.endpoints.get_mut(&token) else {
                return;
            };
            let (is_client, buffered) = match ep {
                Endpoint::Client(c) if c.closing => {
                    // Discard input until the client closes its side.
                    let status = c.conn.read_some();
                    c.conn.discard_input();
                    match status {
                        Ok(ReadStatus::Data(_) | ReadStatus::Drained(_)) if budget > 0 => {
                            budget -= 1;
                            continue;
                        }
                        Ok(ReadStatus::Data(_) | ReadStatus::Drained(_)) => {
                            self.read_again.push(token)
                        }
                        Ok(ReadStatus::WouldBlock) => {}
                        Ok(ReadStatus::Eof) | Err(_) => self.close(token, "closed after error"),
                    }
                    return;
                }
                Endpoint::Client(c) => {
                    if c.over_limit(max_out, max_inflight) {
                        c.paused = true;
                        return;
                    }
                    (true, c.conn.buffered_in() > 0)
                }
                Endpoint::PeerIn(p) => (false, p.conn.buffered_in() > 0),
            };
            // Frames left in the buffer by a pause come first: reading on before they are
            // served would let the buffer grow by a read per resume.
            if buffered && !self.handle_buffered(token, is_client) {
                return;
            }
            if budget == 0 {
                self.read_again.push(token);
                return;
            }
            budget -= 1;
            let Some(conn) = self.endpoint_conn(token) else {
                return;
            };
            let status = conn.read_some();
            if !self.handle_buffered(token, is_client) {
                // Gone, failed, or paused for backpressure: a paused client's remaining frames
                // wait in its buffer (an end of file is seen again by the next read).
                return;
            }
            match status {
                Ok(ReadStatus::Drained(_)) if stop_when_drained => return,
                Ok(ReadStatus::Data(_) | ReadStatus::Drained(_)) => continue,
                Ok(ReadStatus::WouldBlock) => return,
                Ok(ReadStatus::Eof) => {
                    self.close(token, "closed by peer");
                    return;
                }
                Err(e) => {
                    // A refused TLS handshake on the peer port is an authentication failure
                    // (counted and logged as one), not just a broken connection.
                    let who = match self.endpoints.get(&token) {
                        Some(Endpoint::PeerIn(p))
                            if e.kind() == std::io::ErrorKind::InvalidData =>
                        {
                            Some(p.addr.to_string())
                        }
                        _ => None,
                    };
                    if let Some(who) = who {
                        self.auth_failed(&who, &AuthError::Tls(e.to_string()));
                    }
                    self.close(token, &format!("read error: {e}"));
                    return;
                }
            }
        }
    }

    /// The connection of an inbound endpoint.
    fn endpoint_conn(&mut self, token: Token) -> Option<&mut Conn> {
        match self.endpoints.get_mut(&token)? {
            Endpoint::Client(c) => Some(&mut c.conn),
            Endpoint::PeerIn(p) => Some(&mut p.conn),
        }
    }

    /// Handles the frames buffered on `token`, one at a time. A client whose queued output or
    /// in-flight count reaches its limit stops at the frame where it does, however many it
    /// pipelined in one read (issue 16: checking only before each 64 KiB read let 40 pipelined
    /// scans queue 800 MB); its other frames wait in the buffer until its output drains.
    /// False if the connection is gone, failed or paused.
    fn handle_buffered(&mut self, token: Token, is_client: bool) -> bool {
        if let Some(Endpoint::Client(ClientConn { resp: Some(_), .. })) = self.endpoints.get(&token)
        {
            return self.handle_resp_buffered(token);
        }
        let max_out = self.cfg.max_client_pending_bytes;
        let max_inflight = self.cfg.max_client_inflight;
        loop {
            let next = match self.endpoints.get_mut(&token) {
                None => return false,
                Some(Endpoint::Client(c)) => {
                    if c.closing {
                        return false;
                    }
                    if c.over_limit(max_out, max_inflight) {
                        c.paused = true;
                        return false;
                    }
                    c.conn.next_frame()
                }
                Some(Endpoint::PeerIn(p)) => p.conn.next_frame(),
            };
            match next {
                Ok(Some(f)) if is_client => self.on_client_frame(token, f),
                Ok(Some(f)) => self.on_peer_frame(token, f),
                Ok(None) => return true,
                Err(e) => {
                    self.on_frame_error(token, is_client, e);
                    return false;
                }
            }
        }
    }

    /// Sends one last answer to a client and closes the connection once it is out (lingering
    /// while the client reads it, at most [`LINGER`]).
    fn answer_and_close(&mut self, token: Token, id: u64, result: crate::kv::ApplyResult) {
        self.send_response(token, id, result);
        if let Some(Endpoint::Client(c)) = self.endpoints.get_mut(&token) {
            c.closing = true;
            c.conn.discard_input();
        }
        self.linger_then_close(token);
    }

    /// Closes a connection marked `closing` once its last answers are out, or after
    /// [`LINGER`] at most.
    pub(super) fn linger_then_close(&mut self, token: Token) {
        self.timers
            .insert(Instant::now() + LINGER, TimerEvent::ForceClose(token));
        self.flush_client(token);
    }

    pub(super) fn on_frame_error(&mut self, token: Token, is_client: bool, e: FrameError) {
        if is_client {
            let code = match e {
                FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                FrameError::Decode { .. } => ErrorCode::BadRequest,
            };
            log::debug!("client connection {}: {e}; closing", token.0);
            // With the request id if the frame's first bytes held it, else 0.
            self.answer_and_close(token, e.request_id(), error_result(code, e.to_string()));
        } else {
            let handshaking = match self.endpoints.get(&token) {
                Some(Endpoint::PeerIn(p)) => {
                    matches!(p.auth, PeerAuth::Handshake(_)).then(|| p.addr.to_string())
                }
                _ => None,
            };
            match (handshaking, e) {
                (Some(who), FrameError::TooLarge { len, .. }) => {
                    self.auth_failed(&who, &AuthError::Oversized(len))
                }
                (_, e) => log::warn!("peer connection {}: {e}; closing it", token.0),
            }
            self.close(token, "peer framing error");
        }
    }

    pub(super) fn close(&mut self, token: Token, why: &str) {
        if let Some(ep) = self.endpoints.remove(&token) {
            let (mut conn, kind) = match ep {
                Endpoint::Client(c) => {
                    self.clients -= 1;
                    // Its waiting reads no longer wait (their answers go nowhere).
                    self.replica.client_output(token.0 as u64, 0);
                    (c.conn, "client")
                }
                Endpoint::PeerIn(p) => (p.conn, "peer"),
            };
            log::debug!("closing {kind} connection {}: {why}", token.0);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.dirty_clients.remove(&token);
    }
}
