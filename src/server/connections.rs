//! Inbound connections, client and peer alike: accepting them, reading their frames within a
//! per-connection budget and the client backpressure limits, answering framing errors, and
//! closing them (a client closed for a framing error lingers until its error is read).

use super::timers::TimerEvent;
use super::{ClientConn, Endpoint, Server};
use crate::kv::error_result;
use crate::net::conn::{Conn, ReadStatus};
use crate::net::framing::FrameError;
use crate::net::reactor::PEER_LISTENER;
use crate::pb::kvpb::ErrorCode;
use mio::{Interest, Token};
use std::time::{Duration, Instant};

/// Socket reads per connection per wake-up before yielding to others (fairness).
const READ_BUDGET: usize = 16;
/// How long a client connection closed for a framing error may linger to receive our error.
const LINGER: Duration = Duration::from_secs(2);
/// Extra room for peer frames above the client max frame.
const PEER_FRAME_SLACK: usize = 2 << 20;

impl Server {
    pub(super) fn accept(&mut self, which: Token) {
        loop {
            let listener = if which == PEER_LISTENER {
                self.peer_listener.as_ref()
            } else {
                self.client_listener.as_ref()
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
                    // Peer frames carry whole client commands plus batching overhead
                    // (AppendEntries up to Config::max_msg_bytes, 1 MiB, beyond one entry).
                    let max_frame = if which == PEER_LISTENER {
                        self.cfg.max_frame.saturating_add(PEER_FRAME_SLACK)
                    } else {
                        self.cfg.max_frame
                    };
                    let conn = Conn::new(stream, max_frame);
                    let ep = if which == PEER_LISTENER {
                        log::debug!("peer connection from {addr}");
                        Endpoint::PeerIn(conn)
                    } else {
                        log::debug!("client connection from {addr}");
                        self.metrics.client_accepted += 1;
                        Endpoint::Client(ClientConn {
                            conn,
                            inflight: 0,
                            paused: false,
                            closing: false,
                        })
                    };
                    self.endpoints.insert(token, ep);
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

    pub(super) fn on_writable(&mut self, token: Token) {
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
            let (conn, is_client) = match ep {
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
                    if c.conn.pending_out() > max_out || c.inflight >= max_inflight {
                        c.paused = true;
                        return;
                    }
                    (&mut c.conn, true)
                }
                Endpoint::PeerIn(c) => (c, false),
            };
            if budget == 0 {
                self.read_again.push(token);
                return;
            }
            budget -= 1;
            let status = conn.read_some();
            let mut frames = Vec::new();
            let mut frame_err = None;
            loop {
                match conn.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        frame_err = Some(e);
                        break;
                    }
                }
            }
            for f in frames {
                if is_client {
                    self.on_client_frame(token, f);
                } else {
                    self.on_peer_frame(token, f);
                }
                if !self.endpoints.contains_key(&token) {
                    return;
                }
            }
            if let Some(e) = frame_err {
                self.on_frame_error(token, is_client, e);
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
                    self.close(token, &format!("read error: {e}"));
                    return;
                }
            }
        }
    }

    pub(super) fn on_frame_error(&mut self, token: Token, is_client: bool, e: FrameError) {
        if is_client {
            let code = match e {
                FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                FrameError::Decode { .. } => ErrorCode::BadRequest,
            };
            // With the request id if the frame's first bytes held it, else 0.
            self.send_response(token, e.request_id(), error_result(code, e.to_string()));
            log::debug!("client connection {}: {e}; closing", token.0);
            if let Some(Endpoint::Client(c)) = self.endpoints.get_mut(&token) {
                c.closing = true;
                c.conn.discard_input();
            }
            self.timers
                .insert(Instant::now() + LINGER, TimerEvent::ForceClose(token));
            self.flush_client(token);
        } else {
            log::warn!("peer connection {}: {e}; closing it", token.0);
            self.close(token, &e.to_string());
        }
    }

    pub(super) fn close(&mut self, token: Token, why: &str) {
        if let Some(ep) = self.endpoints.remove(&token) {
            let (mut conn, kind) = match ep {
                Endpoint::Client(c) => (c.conn, "client"),
                Endpoint::PeerIn(c) => (c, "peer"),
            };
            log::debug!("closing {kind} connection {}: {why}", token.0);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.dirty_clients.remove(&token);
    }
}
