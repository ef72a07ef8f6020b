//! Follower forwarding (`--forward`): a request a follower cannot serve itself (a write, a
//! LINEARIZABLE or LEASE read) is sent on to the leader's client port over one connection this
//! node opens as a client, and the leader's answer is passed back to the client that asked.
//! The request goes as it came, session included (`client_id`, `seq`), so exactly-once holds
//! through forwarding: a retry of a forwarded write is answered from the leader's session
//! table. Kept in this file, away from the peer links and the Raft core.
//!
//! Re-sending: when the link breaks or the leader changes with requests on it, the reads and
//! the writes that carry a session (every RESP write; native clients with a session) are kept,
//! in send order, and sent again once a leader is known (this node itself included, then they
//! are handled here), before any request that arrives meanwhile. A write that had applied is
//! answered from the session table with its first result, so it still applies once. The
//! request keeps its first deadline; while a leader is not reachable the link is retried every
//! [`RESEND_BACKOFF_MS`].
//!
//! What a client sees when forwarding fails:
//! - a write without a session, sent when the link breaks or the leader changes: UNCERTAIN
//!   (it may have applied);
//! - no answer within `--request-timeout-ms` of its arrival (re-sends included): TIMEOUT (a
//!   write may or may not apply; it applies at most once);
//! - no leader known when it arrives: the node answers as without forwarding (NOT_LEADER,
//!   leader unknown);
//! - the leader refuses this node's client token (the nodes' --client-token-file differ):
//!   as a broken link, and logged.
//!
//! With `--client-token-file` the link is a client connection like any other: its first frame
//! is an Auth with this node's own (first) token, under [`AUTH_ID`], and the requests queued
//! behind it are served once the leader has checked it (it reads a connection in order).
//!
//! With `--follower-reads` too, reads are not forwarded: the follower serves them itself
//! through follower ReadIndex (`node::Replica::read`), so they spread over all nodes; only
//! writes (and the other leader-only requests) are forwarded.

use super::{ClientRef, Server};
use crate::kv::error_result;
use crate::net::conn::{Conn, ReadStatus};
use crate::net::framing;
use crate::pb::kvpb::{self, ErrorCode};
use mio::{Interest, Token};
use std::collections::VecDeque;

/// How long to wait before opening the link again after it failed (the leader may be dead
/// and not yet replaced: without a pause, each loop pass would reconnect to it).
const RESEND_BACKOFF_MS: u64 = 50;
/// The request id of the link's Auth (forwarded requests are numbered from 1 up).
const AUTH_ID: u64 = u64::MAX;

/// One forwarded request waiting for the leader.
struct Pending {
    to: ClientRef,
    write: bool,
    /// The request, if it may be sent again (a read, or a write with a session).
    again: Option<kvpb::Request>,
    deadline: u64,
}

/// A request waiting to be (re-)sent, with the client's own id.
struct Queued {
    to: ClientRef,
    req: kvpb::Request,
    write: bool,
    deadline: u64,
    /// Sent before, on a link that failed.
    resend: bool,
}

/// The link to the leader and the requests forwarded on it.
#[derive(Default)]
pub(super) struct Forwarder {
    /// (leader id, token, connection) while connected or connecting.
    link: Option<(u64, Token, Conn)>,
    pending: crate::idmap::IdMap<u64, Pending>,
    /// (deadline ms, forward id), in send order (one timeout for all: FIFO is deadline order).
    deadlines: VecDeque<(u64, u64)>,
    next_id: u64,
    /// Requests to re-send (the link failed with them on it) and those that arrived after,
    /// in order; nonempty only while there is no link.
    queue: VecDeque<Queued>,
    /// Not before this (ms) does the link open again after a failure.
    retry_at: u64,
    /// Requests sent again (a count, for the log and tests).
    pub(super) resent: u64,
}

impl Forwarder {
    /// The token of the link to the leader, if one is open.
    pub(super) fn token(&self) -> Option<Token> {
        self.link.as_ref().map(|(_, t, _)| *t)
    }

    /// The earliest deadline of a forwarded request, or the next re-send attempt (ms on the
    /// server's clock).
    pub(super) fn next_deadline(&self) -> Option<u64> {
        let queued = self.queue.front().map(|q| q.deadline.min(self.retry_at));
        match (self.deadlines.front().map(|&(d, _)| d), queued) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `forward_failed`'s reason when a new leader replaces the old one.
const LEADER_CHANGED: &str = "the leader changed";

fn forward_timeout() -> kvpb::response::Result {
    error_result(
        ErrorCode::Timeout,
        "forwarded to the leader; no answer in time (a write may or may not apply, at most once)"
            .into(),
    )
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
    /// is on (or queues it behind requests waiting to be re-sent); false if the request is to
    /// be handled here.
    pub(super) fn try_forward(&mut self, token: Token, req: &kvpb::Request) -> bool {
        if !self.cfg.forward {
            return false;
        }
        let Some(write) = needs_leader(req) else {
            return false;
        };
        if !write && self.cfg.follower_reads {
            return false;
        }
        let timeout = u64::try_from(self.cfg.request_timeout.as_millis()).unwrap_or(u64::MAX);
        let queued = Queued {
            to: ClientRef {
                token,
                req_id: req.id,
            },
            req: req.clone(),
            write,
            deadline: self.now_ms().saturating_add(timeout).saturating_add(1),
            resend: false,
        };
        if !self.forward.queue.is_empty() {
            // Behind the re-sends (a connection's writes stay in order).
            self.forward.queue.push_back(queued);
            self.resend_forwards();
            return true;
        }
        let Some(leader) = self.remote_leader() else {
            return false;
        };
        if !self.forward_link(leader) {
            return false;
        }
        // Opening a link to a new leader may have queued the old link's requests: first.
        self.forward.queue.push_back(queued);
        self.send_queued();
        true
    }

    /// The leader, if another node leads.
    fn remote_leader(&self) -> Option<u64> {
        let core = self.replica.core();
        match core.leader() {
            Some(l) if l != self.cfg.id && core.role() != crate::raft::Role::Leader => Some(l),
            _ => None,
        }
    }

    /// Sends the queued requests to the leader once one is known: on the link, or handled
    /// here if this node leads now. Called every loop pass while requests wait.
    pub(super) fn resend_forwards(&mut self) {
        if self.forward.queue.is_empty() || self.now_ms() < self.forward.retry_at {
            return;
        }
        let core = self.replica.core();
        if core.role() == crate::raft::Role::Leader {
            let queue = std::mem::take(&mut self.forward.queue);
            log::info!(
                "handling {} forwarded requests here (now the leader)",
                queue.len()
            );
            for q in queue {
                // Not forwarded again: the queue is empty and this node leads.
                self.on_request(
                    q.to.token,
                    kvpb::Request {
                        id: q.to.req_id,
                        ..q.req
                    },
                );
            }
            return;
        }
        let Some(leader) = self.remote_leader() else {
            return; // no leader yet; the deadlines still run
        };
        if !self.forward_link(leader) {
            self.forward.retry_at = self.now_ms().saturating_add(RESEND_BACKOFF_MS);
            return;
        }
        self.send_queued();
    }

    /// Sends every queued request on the open link, in order.
    fn send_queued(&mut self) {
        let resent = self.forward.queue.iter().filter(|q| q.resend).count();
        if resent > 0 {
            self.forward.resent += resent as u64;
            log::info!(
                "forwarding: re-sending {resent} requests to the leader ({} so far)",
                self.forward.resent
            );
        }
        while let Some(q) = self.forward.queue.pop_front() {
            let fwd = &mut self.forward;
            let Some((_, _, conn)) = fwd.link.as_mut() else {
                fwd.queue.push_front(q);
                return;
            };
            fwd.next_id += 1;
            let id = fwd.next_id;
            let again = (!q.write || q.req.client_id != 0).then(|| q.req.clone());
            let out = kvpb::Request { id, ..q.req };
            conn.queue(framing::frame_bytes(&out));
            fwd.deadlines.push_back((q.deadline, id));
            fwd.pending.insert(
                id,
                Pending {
                    to: q.to,
                    write: q.write,
                    again,
                    deadline: q.deadline,
                },
            );
            self.metrics.forwarded += 1;
        }
    }

    /// Makes sure the link goes to `leader` (opening it, or replacing a link to an old
    /// leader); false if it cannot be opened.
    fn forward_link(&mut self, leader: u64) -> bool {
        if matches!(&self.forward.link, Some((l, _, _)) if *l == leader) {
            return true;
        }
        if self.forward.link.is_some() {
            self.forward_failed(LEADER_CHANGED);
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
        let mut conn = Conn::new(stream, self.cfg.max_frame);
        if let Some(tls) = &self.cfg.tls.forward {
            let session = crate::net::tls::server_name(addr)
                .and_then(|name| crate::net::tls::TlsSession::client(tls, name));
            match session {
                Ok(s) => conn.set_tls(s),
                Err(e) => {
                    log::warn!("forwarding: TLS to leader {leader} at {addr}: {e}");
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    return false;
                }
            }
        }
        log::info!("forwarding requests to leader {leader} at {addr}");
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

    /// Drops the link. The requests on it that may be sent again go to the front of the
    /// queue, in send order; the others (writes without a session) are answered UNCERTAIN.
    fn forward_failed(&mut self, why: &str) {
        if let Some((leader, _, mut conn)) = self.forward.link.take() {
            log::info!("forwarding link to leader {leader} closed: {why}");
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        // A leader change is a new target, reachable now; anything else may be a dead leader.
        if why != LEADER_CHANGED {
            self.forward.retry_at = self.now_ms().saturating_add(RESEND_BACKOFF_MS);
        }
        self.forward.deadlines.clear();
        let mut pending: Vec<(u64, Pending)> = self.forward.pending.drain().collect();
        pending.sort_unstable_by_key(|(id, _)| *id);
        let mut again = VecDeque::new();
        for (_, p) in pending {
            match p.again {
                Some(req) => again.push_back(Queued {
                    to: p.to,
                    req,
                    write: p.write,
                    deadline: p.deadline,
                    resend: true,
                }),
                None => {
                    let r = error_result(
                        ErrorCode::Uncertain,
                        format!(
                            "forwarded to the leader, then {why}; the write may or may not apply"
                        ),
                    );
                    self.send_response(p.to.token, p.to.req_id, r);
                }
            }
        }
        again.append(&mut self.forward.queue);
        self.forward.queue = again;
    }

    /// Answers TIMEOUT to forwarded and queued requests past their deadline; re-sends the
    /// queued ones if a leader is known.
    pub(super) fn expire_forwards(&mut self, now: u64) {
        while let Some(&(deadline, id)) = self.forward.deadlines.front() {
            let pending = self.forward.pending.contains_key(&id);
            if pending && deadline > now {
                break;
            }
            self.forward.deadlines.pop_front();
            if let Some(p) = self.forward.pending.remove(&id) {
                self.send_response(p.to.token, p.to.req_id, forward_timeout());
            }
        }
        if self
            .forward
            .queue
            .front()
            .is_some_and(|q| q.deadline <= now)
        {
            let (late, keep) = std::mem::take(&mut self.forward.queue)
                .into_iter()
                .partition(|q| q.deadline <= now);
            self.forward.queue = keep;
            for q in late {
                self.send_response(q.to.token, q.to.req_id, forward_timeout());
            }
        }
        self.resend_forwards();
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
