//! Follower forwarding (`--forward`): a request a follower cannot serve itself (a write, a
//! LINEARIZABLE or LEASE read) is sent on to the leader's client port over one connection this
//! node opens as a client, and the leader's answer is passed back to the client that asked.
//! The request goes as it came, session included (`client_id`, `seq`), so exactly-once holds
//! through forwarding: a retry of a forwarded write is answered from the leader's session
//! table. Kept in this file, away from the peer links and the Raft core.
//!
//! What a client sees when forwarding fails:
//! - the connection to the leader breaks, or the leader changes, with the request sent:
//!   a write is answered UNCERTAIN (it may have applied), a read UNAVAILABLE;
//! - no answer within `--request-timeout-ms`: TIMEOUT (a write may or may not apply);
//! - no leader known: the node answers as without forwarding (NOT_LEADER, leader unknown);
//! - the leader refuses this node's client token (the nodes' --client-token-file differ):
//!   as a broken link, and logged.
//!
//! With `--client-token-file` the link is a client connection like any other: its first frame
//! is an Auth with this node's own (first) token, under [`AUTH_ID`], and the requests queued
//! behind it are served once the leader has checked it (it reads a connection in order).
//!
//! Not done: follower ReadIndex (reads are forwarded and served by the leader, so they do not
//! spread over the followers).

use super::{ClientRef, Server};
use crate::kv::error_result;
use crate::net::conn::{Conn, ReadStatus};
use crate::net::framing;
use crate::pb::kvpb::{self, ErrorCode};
use mio::{Interest, Token};
use std::collections::{HashMap, VecDeque};

/// The request id of the link's Auth (forwarded requests are numbered from 1 up).
const AUTH_ID: u64 = u64::MAX;

/// One forwarded request waiting for the leader.
struct Pending {
    to: ClientRef,
    write: bool,
}

/// The link to the leader and the requests forwarded on it.
#[derive(Default)]
pub(super) struct Forwarder {
    /// (leader id, token, connection) while connected or connecting.
    link: Option<(u64, Token, Conn)>,
    pending: HashMap<u64, Pending>,
    /// (deadline ms, forward id), in send order (one timeout for all: FIFO is deadline order).
    deadlines: VecDeque<(u64, u64)>,
    next_id: u64,
}

impl Forwarder {
    /// The token of the link to the leader, if one is open.
    pub(super) fn token(&self) -> Option<Token> {
        self.link.as_ref().map(|(_, t, _)| *t)
    }

    /// The earliest deadline of a forwarded request (ms on the server's clock).
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.front().map(|&(d, _)| d)
    }
}

/// Whether `req` is one this follower would refuse (and so forwards): writes, and reads
/// that need the leader.
fn needs_leader(req: &kvpb::Request) -> Option<bool> {
    use kvpb::request::Op;
    match req.op.as_ref()? {
        Op::Status(_) => None,
        Op::Get(_) | Op::Scan(_) | Op::MultiGet(_) => {
            (req.consistency() != kvpb::Consistency::Stale).then_some(false)
        }
        _ => Some(true),
    }
}

impl Server {
    /// Forwards `req` to the leader if this node is a follower that knows one and forwarding
    /// is on; false if the request is to be handled here.
    pub(super) fn try_forward(&mut self, token: Token, req: &kvpb::Request) -> bool {
        if !self.cfg.forward {
            return false;
        }
        let core = self.replica.core();
        let leader = match core.leader() {
            Some(l) if l != self.cfg.id && core.role() != crate::raft::Role::Leader => l,
            _ => return false,
        };
        let Some(write) = needs_leader(req) else {
            return false;
        };
        if !self.forward_link(leader) {
            return false;
        }
        let fwd = &mut self.forward;
        fwd.next_id += 1;
        let id = fwd.next_id;
        let to = ClientRef {
            token,
            req_id: req.id,
        };
        fwd.pending.insert(id, Pending { to, write });
        let timeout = u64::try_from(self.cfg.request_timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline = self.now_ms().saturating_add(timeout).saturating_add(1);
        let fwd = &mut self.forward;
        fwd.deadlines.push_back((deadline, id));
        let out = kvpb::Request { id, ..req.clone() };
        if let Some((_, _, conn)) = fwd.link.as_mut() {
            conn.queue(framing::frame_bytes(&out));
        }
        self.metrics.forwarded += 1;
        true
    }

    /// Makes sure the link goes to `leader` (opening it, or replacing a link to an old
    /// leader); false if it cannot be opened.
    fn forward_link(&mut self, leader: u64) -> bool {
        if matches!(&self.forward.link, Some((l, _, _)) if *l == leader) {
            return true;
        }
        if self.forward.link.is_some() {
            self.forward_failed("the leader changed");
        }
        let Some(addr) = self.cfg.client_addr_of(leader) else {
            return false;
        };
        let Ok(sa) = addr.parse::<std::net::SocketAddr>() else {
            log::warn!("forwarding: leader {leader}'s client address {addr:?} is not IP:PORT");
            return false;
        };
        let mut stream = match mio::net::TcpStream::connect(sa) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("forwarding: cannot connect to leader {leader} at {addr}: {e}");
                return false;
            }
        };
        let token = self.tokens.next_token();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
            log::warn!("forwarding: cannot register the link to {addr}: {e}");
            return false;
        }
        log::info!("forwarding requests to leader {leader} at {addr}");
        let mut conn = Conn::new(stream, self.cfg.max_frame);
        if let Some(t) = &self.cfg.client_token {
            let auth = kvpb::Request {
                id: AUTH_ID,
                op: Some(kvpb::request::Op::Auth(kvpb::Auth { token: t.secret() })),
                ..Default::default()
            };
            conn.queue(framing::frame_bytes(&auth));
        }
        self.forward.link = Some((leader, token, conn));
        true
    }

    /// Readiness on the link: write what is queued, read the leader's answers.
    pub(super) fn on_forward_event(&mut self) {
        loop {
            let Some((_, _, conn)) = self.forward.link.as_mut() else {
                return;
            };
            if let Err(e) = conn.flush() {
                return self.forward_failed(&format!("write error: {e}"));
            }
            let status = conn.read_some();
            loop {
                let Some((_, _, conn)) = self.forward.link.as_mut() else {
                    return;
                };
                match conn.next_frame() {
                    Ok(Some(frame)) => self.forward_answer(frame),
                    Ok(None) => break,
                    Err(e) => return self.forward_failed(&e.to_string()),
                }
            }
            match status {
                Ok(ReadStatus::Data(_)) => continue,
                Ok(ReadStatus::Drained(_) | ReadStatus::WouldBlock) => return,
                Ok(ReadStatus::Eof) => return self.forward_failed("the leader closed the link"),
                Err(e) => return self.forward_failed(&format!("read error: {e}")),
            }
        }
    }

    /// The leader's answer to a forwarded request, passed back under the client's own id.
    fn forward_answer(&mut self, frame: bytes::Bytes) {
        let resp = match framing::decode::<kvpb::Response>(frame) {
            Ok(r) => r,
            Err(e) => return self.forward_failed(&format!("undecodable answer: {e}")),
        };
        if resp.id == AUTH_ID {
            return match resp.result {
                Some(kvpb::response::Result::Auth(_)) => {}
                other => {
                    log::warn!(
                        "forwarding: the leader refused this node's client token ({other:?}); \
                         give every node the same --client-token-file"
                    );
                    self.forward_failed("the leader refused this node's client token")
                }
            };
        }
        let Some(p) = self.forward.pending.remove(&resp.id) else {
            return; // timed out here already
        };
        let result = resp.result.unwrap_or_else(|| {
            error_result(
                ErrorCode::Internal,
                "the leader sent an empty answer".into(),
            )
        });
        self.send_response(p.to.token, p.to.req_id, result);
    }

    /// Drops the link; every request on it is answered (writes UNCERTAIN, reads UNAVAILABLE).
    fn forward_failed(&mut self, why: &str) {
        if let Some((leader, _, mut conn)) = self.forward.link.take() {
            log::info!("forwarding link to leader {leader} closed: {why}");
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.forward.deadlines.clear();
        let mut pending: Vec<(u64, Pending)> = self.forward.pending.drain().collect();
        pending.sort_unstable_by_key(|(id, _)| *id);
        for (_, p) in pending {
            let r = if p.write {
                error_result(
                    ErrorCode::Uncertain,
                    format!("forwarded to the leader, then {why}; the write may or may not apply"),
                )
            } else {
                error_result(
                    ErrorCode::Unavailable,
                    format!("forwarded to the leader, then {why}"),
                )
            };
            self.send_response(p.to.token, p.to.req_id, r);
        }
    }

    /// Answers TIMEOUT to forwarded requests past their deadline.
    pub(super) fn expire_forwards(&mut self, now: u64) {
        while let Some(&(deadline, id)) = self.forward.deadlines.front() {
            let pending = self.forward.pending.contains_key(&id);
            if pending && deadline > now {
                return;
            }
            self.forward.deadlines.pop_front();
            if let Some(p) = self.forward.pending.remove(&id) {
                let r = error_result(
                    ErrorCode::Timeout,
                    "forwarded to the leader; no answer in time (a write may or may not apply)"
                        .into(),
                );
                self.send_response(p.to.token, p.to.req_id, r);
            }
        }
    }

    /// Writes the requests queued on the link.
    pub(super) fn flush_forward(&mut self) {
        if let Some((_, _, conn)) = self.forward.link.as_mut() {
            if let Err(e) = conn.flush() {
                self.forward_failed(&format!("write error: {e}"));
            }
        }
    }
}
