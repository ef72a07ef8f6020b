//! Client requests: decoding them into the replica's writes and reads (`crate::node`), the
//! local status answer, and moving the replica's answers onto the connections' write queues
//! (each answer lowers its connection's in-flight count, which may resume a paused reader).

use super::{ClientRef, Endpoint, Server};
use crate::kv::{error_result, ApplyResult};
use crate::net::framing;
use crate::node::ReadOp;
use crate::pb::kvpb::{self, ErrorCode};
use crate::raft::{LogStore, Role};
use mio::Token;

pub(super) fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
    }
}

impl Server {
    pub(super) fn on_client_frame(&mut self, token: Token, frame: bytes::Bytes) {
        match self.endpoints.get_mut(&token) {
            Some(Endpoint::Client(c)) if !c.closing => c.inflight += 1,
            _ => return,
        }
        match framing::decode::<kvpb::Request>(frame) {
            Ok(req) => self.on_request(token, req),
            Err(e) => {
                log::debug!("client {}: {e}", token.0);
                self.on_frame_error(token, true, e);
            }
        }
        // Answered at once (refusals, stale reads, lease reads): onto the connection now, so
        // the in-flight count the reader checks stays exact.
        self.deliver_answers();
    }

    /// The node layer's clock: milliseconds since this server started.
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.clock_start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_request(&mut self, token: Token, req: kvpb::Request) {
        use kvpb::command::Op as Cmd;
        use kvpb::request::Op;
        let to = ClientRef {
            token,
            req_id: req.id,
        };
        let consistency = req.consistency();
        let (client_id, seq, acked_seq) = (req.client_id, req.seq, req.acked_seq);
        let cmd = |op| kvpb::Command {
            client_id,
            seq,
            acked_seq,
            op: Some(op),
        };
        let now = self.now_ms();
        self.metrics.requests[match &req.op {
            Some(Op::Put(_)) => super::metrics::OP_PUT,
            Some(Op::Delete(_)) => super::metrics::OP_DELETE,
            Some(Op::Cas(_)) => super::metrics::OP_CAS,
            Some(Op::Get(_)) => super::metrics::OP_GET,
            Some(Op::Scan(_)) => super::metrics::OP_SCAN,
            Some(Op::Status(_)) => super::metrics::OP_STATUS,
            _ => super::metrics::OP_INVALID,
        }] += 1;
        match req.op {
            None => self.send_response(
                token,
                to.req_id,
                error_result(ErrorCode::BadRequest, "empty or unknown request".into()),
            ),
            Some(Op::Status(_)) => {
                let s = self.status_response();
                self.send_response(token, to.req_id, ApplyResult::Status(s));
            }
            Some(Op::Put(p)) if !p.key.is_empty() => self.write(to, &cmd(Cmd::Put(p)), now),
            Some(Op::Delete(d)) if !d.key.is_empty() => self.write(to, &cmd(Cmd::Delete(d)), now),
            Some(Op::Cas(c)) if !c.key.is_empty() => self.write(to, &cmd(Cmd::Cas(c)), now),
            Some(Op::Get(g)) if !g.key.is_empty() => {
                let overdue = self.tick_overdue();
                self.replica
                    .read(to, consistency, ReadOp::Get(g), now, overdue);
            }
            Some(Op::Scan(s)) => {
                let overdue = self.tick_overdue();
                self.replica
                    .read(to, consistency, ReadOp::Scan(s), now, overdue);
            }
            Some(_) => self.send_response(
                token,
                to.req_id,
                error_result(ErrorCode::BadRequest, "empty key".into()),
            ),
        }
    }

    /// Proposes a write, or refuses it with TOO_LARGE when its log entry would be larger than
    /// this node can log (`limits::max_entry`: a frame, and what one segment holds). Checked
    /// here, before the core sees it: once proposed, an entry that does not fit would be a
    /// fatal storage error on every node that tries to append it.
    fn write(&mut self, to: ClientRef, cmd: &kvpb::Command, now: u64) {
        use prost::Message;
        let len = cmd.encoded_len();
        let max = crate::limits::max_entry(self.cfg.max_frame, self.cfg.segment_size);
        if len > max {
            let msg = format!(
                "write of {len} bytes (as a log entry) exceeds this node's maximum of {max} bytes \
                 (--max-frame {} less {} bytes for the answer, and at most what one \
                 --segment-size {} segment holds)",
                self.cfg.max_frame,
                crate::limits::RESPONSE_ROOM,
                self.cfg.segment_size
            );
            self.send_response(to.token, to.req_id, error_result(ErrorCode::TooLarge, msg));
            self.metrics.proposals_refused += 1;
            return;
        }
        let taken = self.replica.write(to, cmd, now);
        if taken.is_some() {
            self.metrics.proposals += 1;
        } else {
            self.metrics.proposals_refused += 1;
        }
    }

    /// Queues the replica's answers on their connections.
    pub(super) fn deliver_answers(&mut self) {
        if !self.replica.requests().has_answers() {
            return;
        }
        // Swapped out and back so the buffer is reused: no allocation per pass.
        let mut answers = std::mem::take(&mut self.answer_buf);
        self.replica.requests().swap_answers(&mut answers);
        for (to, r) in answers.drain(..) {
            self.send_response(to.token, to.req_id, r);
        }
        self.answer_buf = answers;
    }

    pub(super) fn status_response(&self) -> kvpb::StatusResponse {
        let st = self.replica.core().status();
        let store = self.replica.core().store();
        let leader_id = st.leader.unwrap_or(0);
        kvpb::StatusResponse {
            node_id: self.cfg.id,
            role: role_name(st.role).into(),
            term: st.term,
            leader_id,
            commit_index: st.commit,
            applied_index: self.replica.applied(),
            last_log_index: store.last_index(),
            first_log_index: store.first_index(),
            snapshot_index: self.snaps.latest.as_ref().map_or(0, |(m, _)| m.index),
            peers: st
                .progress
                .iter()
                .map(|&(id, m, n)| kvpb::PeerStatus {
                    id,
                    peer_addr: self
                        .cfg
                        .peers
                        .iter()
                        .find(|p| p.id == id)
                        .map(|p| p.peer_addr.clone())
                        .unwrap_or_default(),
                    match_index: m,
                    next_index: n,
                })
                .collect(),
            leader_addr: self
                .cfg
                .client_addr_of(leader_id)
                .unwrap_or_default()
                .into(),
            cluster_id: self
                .cluster_id
                .id()
                .map_or(String::new(), |c| c.to_string()),
        }
    }

    /// Queues a response on a client connection (dropped if the client is gone).
    pub(super) fn send_response(&mut self, token: Token, id: u64, result: ApplyResult) {
        self.metrics.response(&result);
        let Some(Endpoint::Client(c)) = self.endpoints.get_mut(&token) else {
            return;
        };
        c.inflight = c.inflight.saturating_sub(1);
        let resp = kvpb::Response {
            id,
            result: Some(result),
        };
        c.conn.queue(framing::frame_bytes(&resp));
        self.dirty_clients.insert(token);
    }

    pub(super) fn flush_client(&mut self, token: Token) {
        let max_out = self.cfg.max_client_pending_bytes;
        let max_inflight = self.cfg.max_client_inflight;
        let Some(Endpoint::Client(c)) = self.endpoints.get_mut(&token) else {
            return;
        };
        match c.conn.flush() {
            Ok(true) if c.closing => {
                // Response out: send FIN, keep reading (and discarding) until the client closes.
                let _ = c.conn.stream.shutdown(std::net::Shutdown::Write);
            }
            Ok(_) => {
                if c.paused && !c.over_limit(max_out, max_inflight) {
                    c.paused = false;
                    self.read_again.push(token);
                }
            }
            Err(e) => self.close(token, &format!("write error: {e}")),
        }
    }

    /// Moves the replica's answers onto their connections, then writes every client queue
    /// that has new responses.
    pub(super) fn flush_clients(&mut self) {
        self.deliver_answers();
        for token in std::mem::take(&mut self.dirty_clients) {
            self.flush_client(token);
        }
    }
}
