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

    pub(super) fn on_request(&mut self, token: Token, req: kvpb::Request) {
        use kvpb::command::Op as Cmd;
        use kvpb::request::Op;
        // Before anything else (forwarding included): an unauthenticated connection gets its
        // Auth answered and Status, nothing more (`client_auth.rs`).
        match &req.op {
            Some(Op::Auth(a)) => return self.on_auth(token, req.id, a),
            Some(Op::Status(_)) => {}
            _ if !self.authenticated(token) => {
                self.refuse_unauthenticated(token, "native");
                let msg = super::client_auth::UNAUTHENTICATED.to_string();
                let r = error_result(ErrorCode::Unauthenticated, msg);
                return self.send_response(token, req.id, r);
            }
            _ => {}
        }
        if self.try_forward(token, &req) {
            return;
        }
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
            Some(
                Op::Incr(_)
                | Op::Append(_)
                | Op::MultiPut(_)
                | Op::DeleteKeys(_)
                | Op::DeleteAll(_),
            ) => super::metrics::OP_RMW,
            Some(Op::MultiGet(_)) => super::metrics::OP_GET,
            Some(Op::Get(_)) => super::metrics::OP_GET,
            Some(Op::Scan(_)) => super::metrics::OP_SCAN,
            Some(Op::Status(_)) | Some(Op::Alarm(_)) => super::metrics::OP_STATUS,
            Some(Op::MemberChange(_) | Op::MemberList(_) | Op::LeaderTransfer(_)) => {
                super::metrics::OP_MEMBER
            }
            Some(Op::SnapshotBegin(_) | Op::SnapshotChunk(_)) => super::metrics::OP_SNAPSHOT,
            _ => super::metrics::OP_INVALID,
        }] += 1;
        match req.op {
            None => self.send_response(
                token,
                to.req_id,
                error_result(ErrorCode::BadRequest, "empty or unknown request".into()),
            ),
            Some(Op::Status(_)) | Some(Op::Alarm(kvpb::AlarmRequest { disarm: false })) => {
                let s = self.status_response();
                self.send_response(token, to.req_id, ApplyResult::Status(s));
            }
            // `raftkv alarm disarm`: a replicated clear, answered when it applies. A node that
            // still has a space problem makes the leader raise it again.
            Some(Op::Alarm(_)) => {
                if self.replica.core().role() == Role::Leader {
                    log::warn!("NO_SPACE alarm: disarm requested by a client");
                }
                let clear = kvpb::command::Op::Alarm(kvpb::Alarm {
                    raise: false,
                    node_id: 0,
                });
                self.write(to, &cmd(clear), now);
            }
            Some(Op::SnapshotBegin(b)) => self.on_snapshot_begin(to, b, now),
            Some(Op::SnapshotChunk(c)) => self.on_snapshot_chunk(to, c),
            Some(Op::Put(p)) if !p.key.is_empty() => self.write(to, &cmd(Cmd::Put(p)), now),
            Some(Op::Delete(d)) if !d.key.is_empty() => self.write(to, &cmd(Cmd::Delete(d)), now),
            Some(Op::Cas(c)) if !c.key.is_empty() => self.write(to, &cmd(Cmd::Cas(c)), now),
            // The state machine checks these keys (all of them, for the multi-key ops).
            Some(Op::Incr(i)) => self.write(to, &cmd(Cmd::Incr(i)), now),
            Some(Op::Append(a)) => self.write(to, &cmd(Cmd::Append(a)), now),
            Some(Op::MultiPut(m)) => self.write(to, &cmd(Cmd::MultiPut(m)), now),
            Some(Op::DeleteKeys(d)) => self.write(to, &cmd(Cmd::DeleteKeys(d)), now),
            Some(Op::DeleteAll(d)) => self.write(to, &cmd(Cmd::DeleteAll(d)), now),
            Some(Op::MultiGet(m)) => {
                let overdue = self.tick_overdue();
                self.replica
                    .read(to, consistency, ReadOp::MultiGet(m), now, overdue);
            }
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
            Some(Op::MemberChange(mc)) => {
                self.replica.change_members(to, &mc, now);
            }
            Some(Op::MemberList(_)) => {
                let list = self.replica.member_list();
                self.send_response(token, to.req_id, list);
            }
            Some(Op::LeaderTransfer(lt)) => {
                let r = self.replica.transfer_leader(lt.to);
                self.send_response(token, to.req_id, r);
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
            let r = self.complete_answer(r);
            self.send_response(to.token, to.req_id, r);
        }
        self.answer_buf = answers;
    }

    pub(super) fn status_response(&self) -> kvpb::StatusResponse {
        let st = self.replica.core().status();
        let store = self.replica.core().store();
        let leader_id = st.leader.unwrap_or(0);
        let (conf_index, conf) = self.replica.core().conf_state();
        kvpb::StatusResponse {
            node_id: self.cfg.id,
            role: role_name(st.role).into(),
            term: st.term,
            leader_id,
            commit_index: st.commit,
            applied_index: self.replica.applied(),
            keys: self.replica.kv().len() as u64,
            last_log_index: store.last_index(),
            first_log_index: store.first_index(),
            snapshot_index: self.snaps.latest.as_ref().map_or(0, |(m, _)| m.index),
            peers: st
                .progress
                .iter()
                .map(|&(id, m, n)| kvpb::PeerStatus {
                    id,
                    peer_addr: self
                        .peers
                        .get(&id)
                        .map(|p| p.addr.clone())
                        .unwrap_or_default(),
                    match_index: m,
                    next_index: n,
                })
                .collect(),
            leader_addr: self.replica.client_addr(leader_id),
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            voters_outgoing: conf.voters_outgoing.clone(),
            conf_index,
            no_space_alarm: self.replica.kv().alarm().is_some(),
            alarm_raised_by: self.replica.kv().alarm().unwrap_or(0),
            space_problem: self.space_problem().unwrap_or_default(),
            state_bytes: self.replica.kv().state_bytes(),
            data_dir_bytes: self.space.data_dir_bytes,
            quota_bytes: self.cfg.quota_bytes,
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
        if c.resp.is_some() {
            return self.resp_answer(token, id, result);
        }
        c.inflight = c.inflight.saturating_sub(1);
        let resp = kvpb::Response {
            id,
            result: Some(result),
        };
        c.conn.queue(framing::frame_bytes(&resp));
        let queued = c.conn.pending_out();
        self.dirty_clients.insert(token);
        self.replica.client_output(token.0 as u64, queued);
    }

    pub(super) fn flush_client(&mut self, token: Token) {
        let max_out = self.cfg.max_client_pending_bytes;
        let max_inflight = self.cfg.max_client_inflight;
        let Some(Endpoint::Client(c)) = self.endpoints.get_mut(&token) else {
            return;
        };
        match c.conn.flush() {
            // (A RESP connection waits for the replies still owed to the commands before.)
            Ok(true) if c.closing && c.resp.as_ref().is_none_or(|r| r.unreleased() == 0) => {
                // Response out: send FIN, keep reading (and discarding) until the client closes.
                c.conn.shutdown_write();
            }
            Ok(_) => {
                let queued = c.conn.pending_out();
                if c.paused && !c.over_limit(max_out, max_inflight) {
                    c.paused = false;
                    self.read_again.push(token);
                }
                // Its waiting reads are served again once it drained below the limit.
                self.replica.client_output(token.0 as u64, queued);
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
