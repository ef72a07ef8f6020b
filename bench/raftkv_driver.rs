//! raftkv driver: the native protocol (4-byte BE length + `kvpb::Request` protobuf), pipelined,
//! replies matched by request id. Load goes to the leader, found with a Status request to each
//! endpoint (with `--read-from all`, spread round robin over every endpoint); a NOT_LEADER reply
//! during the run makes the engine reconnect to the named leader.

use crate::driver::{resolve, Codec, Consistency, Driver, DriverOptions, Outcome, Reply};
use crate::keys::{key_bytes, KEY_LEN};
use crate::workload::{Op, OpKind};
use bytes::{Bytes, BytesMut};
use raftkv::net::framing::{self, blocking, encode_frame, split_frame};
use raftkv::pb::kvpb;
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest reply frame accepted (scans can be big).
const MAX_REPLY: usize = framing::DEFAULT_MAX_FRAME;

pub struct RaftkvDriver {
    endpoints: Vec<String>,
    opts: DriverOptions,
    value: Bytes,
    /// Connections go to every endpoint instead of only the leader (`--read-from all`, or
    /// `--spread-reads` with stale reads).
    spread_reads: bool,
    /// How long to wait for a leader.
    pub leader_timeout: Duration,
    session_base: u64,
    /// TLS to the client ports (`--tls-ca`).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl RaftkvDriver {
    pub fn new(endpoints: Vec<String>, opts: &DriverOptions, spread_reads: bool) -> RaftkvDriver {
        // Session ids must differ between bench runs against the same cluster; the wall clock
        // in nanoseconds is unique enough and leaves room for a connection index below it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        RaftkvDriver {
            endpoints,
            value: Bytes::from(opts.value.clone()),
            opts: opts.clone(),
            spread_reads,
            leader_timeout: Duration::from_secs(15),
            session_base: (now << 16) | 1,
            tls: None,
        }
    }

    /// Speaks TLS to the nodes, trusting `cfg`'s CAs.
    pub fn with_tls(mut self, cfg: std::sync::Arc<rustls::ClientConfig>) -> RaftkvDriver {
        self.tls = Some(cfg);
        self
    }
}

/// Asks one endpoint for its status (blocking, with timeouts).
pub fn status(addr: &str, timeout: Duration) -> Result<kvpb::StatusResponse, String> {
    let sa = resolve(addr)?;
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let req = kvpb::Request {
        id: 1,
        op: Some(kvpb::request::Op::Status(kvpb::StatusRequest {})),
        ..Default::default()
    };
    blocking::write_msg(&mut s, &req).map_err(|e| format!("{addr}: status: {e}"))?;
    let resp: kvpb::Response =
        blocking::read_msg(&mut s, MAX_REPLY).map_err(|e| format!("{addr}: status: {e}"))?;
    match resp.result {
        Some(kvpb::response::Result::Status(st)) => Ok(st),
        Some(kvpb::response::Result::Error(e)) => {
            Err(format!("{addr}: status: {:?} {}", e.code(), e.message))
        }
        other => Err(format!("{addr}: status: unexpected reply {other:?}")),
    }
}

/// One endpoint's status over TLS, through the client library.
fn status_tls(
    addr: &str,
    timeout: Duration,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<kvpb::StatusResponse, String> {
    let opts = raftkv::client::ClientOptions {
        timeout,
        attempt_timeout: timeout,
        connect_timeout: timeout,
        ..Default::default()
    };
    raftkv::client::Client::new(vec![addr.to_string()], opts)
        .with_tls(tls.clone())
        .status(addr)
        .map_err(|e| format!("{addr}: status: {e}"))
}

/// Polls the endpoints until one says it is the leader (or names the leader).
pub fn find_leader(endpoints: &[String], timeout: Duration) -> Result<String, String> {
    find_leader_tls(endpoints, timeout, None)
}

/// [`find_leader`], over TLS when `tls` is given.
pub fn find_leader_tls(
    endpoints: &[String],
    timeout: Duration,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last_err = String::from("no endpoints");
    loop {
        for ep in endpoints {
            let st = match tls {
                Some(cfg) => status_tls(ep, Duration::from_secs(2), cfg),
                None => status(ep, Duration::from_secs(2)),
            };
            match st {
                Ok(st) if st.role == "leader" => {
                    // Prefer the address the leader advertises for clients, when it says.
                    return Ok(if st.leader_addr.is_empty() {
                        ep.clone()
                    } else {
                        st.leader_addr
                    });
                }
                Ok(st) if !st.leader_addr.is_empty() => return Ok(st.leader_addr),
                Ok(st) => last_err = format!("{ep}: role {} and no known leader", st.role),
                Err(e) => last_err = e,
            }
        }
        if Instant::now() >= deadline || crate::signals::interrupted() {
            return Err(format!("no raftkv leader within {timeout:?}: {last_err}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn consistency(c: Consistency) -> kvpb::Consistency {
    match c {
        Consistency::Linearizable => kvpb::Consistency::Linearizable,
        Consistency::Lease => kvpb::Consistency::Lease,
        Consistency::Stale => kvpb::Consistency::Stale,
    }
}

impl Driver for RaftkvDriver {
    fn name(&self) -> String {
        "raftkv".into()
    }
    fn check(&self, _kinds: &[OpKind], _c: Consistency) -> Result<(), String> {
        Ok(())
    }
    fn targets(&self) -> Result<Vec<SocketAddr>, String> {
        if self.spread_reads {
            return self.endpoints.iter().map(|a| resolve(a)).collect();
        }
        Ok(vec![resolve(&find_leader_tls(
            &self.endpoints,
            self.leader_timeout,
            self.tls.as_ref(),
        )?)?])
    }
    fn tls(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }
    fn codec(&self, conn_index: usize) -> Box<dyn Codec> {
        Box::new(PbCodec {
            value: self.value.clone(),
            consistency: consistency(self.opts.consistency),
            client_id: if self.opts.sessions {
                self.session_base.wrapping_add(conn_index as u64)
            } else {
                0
            },
            next_seq: 1,
            outstanding: BTreeSet::new(),
            seq_of: HashMap::new(),
            auth: self.opts.token.clone(),
        })
    }
}

/// Per-connection protobuf codec, with an optional exactly-once session for writes.
pub struct PbCodec {
    value: Bytes,
    consistency: kvpb::Consistency,
    /// 0 = no session.
    client_id: u64,
    next_seq: u64,
    /// Session seqs sent and not yet answered (acked_seq = smallest - 1).
    outstanding: BTreeSet<u64>,
    seq_of: HashMap<u64, u64>,
    /// The client token, until it has been sent ahead of the connection's first request.
    auth: Option<Bytes>,
}

/// The request id of a connection's Auth (the engine numbers requests from 1 up).
const AUTH_ID: u64 = u64::MAX;

impl PbCodec {
    fn request(&mut self, id: u64, op: &Op) -> kvpb::Request {
        use kvpb::request::Op as P;
        let mut kb = [0u8; KEY_LEN];
        let key = Bytes::copy_from_slice(key_bytes(op.key, &mut kb));
        let pb_op = match op.kind {
            OpKind::Put => P::Put(kvpb::Put {
                key,
                value: self.value.clone(),
                ..Default::default()
            }),
            OpKind::Get => P::Get(kvpb::Get { key }),
            OpKind::Scan => P::Scan(kvpb::Scan {
                prefix: key.slice(..op.prefix_len.min(KEY_LEN)),
                limit: op.limit,
                ..Default::default()
            }),
            OpKind::Cas => P::Cas(kvpb::Cas {
                key,
                expected_version: op.expected_version,
                value: self.value.clone(),
                delete: false,
            }),
        };
        let mut req = kvpb::Request {
            id,
            op: Some(pb_op),
            ..Default::default()
        };
        req.set_consistency(self.consistency);
        if self.client_id != 0 && matches!(op.kind, OpKind::Put | OpKind::Cas) {
            let seq = self.next_seq;
            self.next_seq += 1;
            req.client_id = self.client_id;
            req.seq = seq;
            req.acked_seq = match self.outstanding.first() {
                Some(first) => first - 1,
                None => seq - 1,
            };
            self.outstanding.insert(seq);
            self.seq_of.insert(id, seq);
        }
        req
    }
}

impl Codec for PbCodec {
    fn encode(&mut self, id: u64, op: &Op, out: &mut Vec<u8>) {
        let req = self.request(id, op);
        let mut b = BytesMut::new();
        if let Some(token) = self.auth.take() {
            // Read in order by the node: the requests behind it are served once it is checked.
            let auth = kvpb::Request {
                id: AUTH_ID,
                op: Some(kvpb::request::Op::Auth(kvpb::Auth { token })),
                ..Default::default()
            };
            encode_frame(&auth, &mut b);
        }
        encode_frame(&req, &mut b);
        out.extend_from_slice(&b);
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, String> {
        let Some(payload) = split_frame(buf, MAX_REPLY).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let resp: kvpb::Response = framing::decode(payload).map_err(|e| e.to_string())?;
        use kvpb::response::Result as R;
        if resp.id == AUTH_ID {
            return match resp.result {
                // Not a reply to a measured request: on to the next frame.
                Some(R::Auth(_)) => self.decode(buf),
                other => Err(format!("raftkv: client token refused: {other:?}")),
            };
        }
        let ok = |found: bool, version: u64| Outcome::Ok {
            found,
            version: Some(version),
        };
        let outcome = match resp.result {
            Some(R::Put(p)) => ok(true, p.version),
            Some(R::Get(g)) => ok(g.found, g.version),
            Some(R::Scan(s)) => Outcome::Ok {
                found: !s.kvs.is_empty(),
                version: None,
            },
            Some(R::Cas(c)) if c.succeeded => ok(true, c.version),
            Some(R::Cas(c)) => Outcome::CasFailed {
                version: Some(c.version),
            },
            Some(R::Delete(_) | R::Status(_) | R::MultiGet(_)) => ok(true, 0),
            Some(R::Incr(i)) => ok(true, i.version),
            Some(R::Append(a)) => ok(true, a.version),
            Some(R::Error(e)) => Outcome::Error {
                kind: format!("raftkv: {}", e.code().as_str_name()),
                redirect: (e.code() == kvpb::ErrorCode::NotLeader && !e.leader_addr.is_empty())
                    .then(|| e.leader_addr.clone()),
            },
            Some(R::MemberChange(_) | R::MemberList(_) | R::LeaderTransfer(_) | R::Auth(_))
            | Some(R::SnapshotBegin(_) | R::SnapshotChunk(_))
            | None => Outcome::Error {
                kind: "raftkv: empty or unexpected response".into(),
                redirect: None,
            },
        };
        Ok(Some(Reply {
            id: Some(resp.id),
            outcome,
        }))
    }

    fn completed(&mut self, id: u64) {
        if let Some(seq) = self.seq_of.remove(&id) {
            self.outstanding.remove(&seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(sessions: bool) -> Box<dyn Codec> {
        let opts = DriverOptions {
            value: b"val".to_vec(),
            consistency: Consistency::Stale,
            sessions,
            token: None,
        };
        RaftkvDriver::new(vec![], &opts, false).codec(3)
    }

    fn decode_req(wire: &[u8]) -> Vec<kvpb::Request> {
        let mut b = BytesMut::from(wire);
        let mut v = Vec::new();
        while let Some(p) = split_frame(&mut b, 1 << 20).unwrap() {
            v.push(framing::decode(p).unwrap());
        }
        v
    }

    /// With a token, the connection's first bytes are an Auth; its answer is no reply, and a
    /// refusal fails the connection.
    #[test]
    fn a_token_goes_first_and_its_answer_is_skipped() {
        let opts = DriverOptions {
            value: b"val".to_vec(),
            consistency: Consistency::Linearizable,
            sessions: false,
            token: Some(Bytes::from_static(b"the-token-0123456789")),
        };
        let d = RaftkvDriver::new(vec![], &opts, false);
        let mut c = d.codec(0);
        let mut out = Vec::new();
        c.encode(1, &Op::simple(OpKind::Put, 7), &mut out);
        c.encode(2, &Op::simple(OpKind::Get, 7), &mut out);
        let reqs = decode_req(&out);
        assert_eq!(reqs.len(), 3, "{reqs:?}");
        assert!(
            matches!(&reqs[0].op, Some(kvpb::request::Op::Auth(a)) if &a.token[..] == b"the-token-0123456789")
        );
        assert_eq!((reqs[0].id, reqs[1].id, reqs[2].id), (AUTH_ID, 1, 2));
        let frame = |id, result| {
            let mut b = BytesMut::new();
            encode_frame(
                &kvpb::Response {
                    id,
                    result: Some(result),
                },
                &mut b,
            );
            b
        };
        use kvpb::response::Result as R;
        let mut wire = frame(AUTH_ID, R::Auth(kvpb::AuthResponse { required: true }));
        wire.extend_from_slice(&frame(1, R::Put(kvpb::PutResponse::default())));
        let r = c.decode(&mut wire).unwrap().unwrap();
        assert_eq!(r.id, Some(1));
        let mut c = d.codec(1);
        c.encode(1, &Op::simple(OpKind::Get, 7), &mut Vec::new());
        let refused = kvpb::Error {
            code: kvpb::ErrorCode::Unauthenticated as i32,
            ..Default::default()
        };
        let e = c
            .decode(&mut frame(AUTH_ID, R::Error(refused)))
            .unwrap_err();
        assert!(e.contains("token refused"), "{e}");
    }

    #[test]
    fn encodes_ops_as_framed_requests() {
        let mut c = codec(false);
        let mut out = Vec::new();
        c.encode(5, &Op::simple(OpKind::Get, 9), &mut out);
        let scan = Op {
            prefix_len: 8,
            limit: 10,
            ..Op::simple(OpKind::Scan, 12345)
        };
        c.encode(6, &scan, &mut out);
        let reqs = decode_req(&out);
        assert_eq!(reqs[0].id, 5);
        assert_eq!(reqs[0].consistency(), kvpb::Consistency::Stale);
        assert_eq!(
            reqs[0].op,
            Some(kvpb::request::Op::Get(kvpb::Get {
                key: Bytes::from_static(b"k0000000009")
            }))
        );
        match &reqs[1].op {
            Some(kvpb::request::Op::Scan(s)) => {
                assert_eq!(&s.prefix[..], b"k0000012");
                assert_eq!(s.limit, 10);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reqs[1].client_id, 0);
    }

    #[test]
    fn sessions_number_writes_and_ack_the_contiguous_prefix() {
        let mut c = codec(true);
        let mut out = Vec::new();
        for id in 1..=3 {
            c.encode(id, &Op::simple(OpKind::Put, id), &mut out);
        }
        c.completed(2); // out of order: seq 1 still outstanding
        c.encode(4, &Op::simple(OpKind::Put, 4), &mut out);
        c.completed(1);
        c.encode(5, &Op::simple(OpKind::Put, 5), &mut out);
        let r = decode_req(&out);
        let seqs: Vec<(u64, u64)> = r.iter().map(|q| (q.seq, q.acked_seq)).collect();
        assert_eq!(seqs, vec![(1, 0), (2, 0), (3, 0), (4, 0), (5, 2)]);
        assert!(r
            .iter()
            .all(|q| q.client_id != 0 && q.client_id == r[0].client_id));
    }

    #[test]
    fn decodes_replies_including_redirects() {
        let mut c = codec(false);
        let mut wire = BytesMut::new();
        let resp = |id, result| kvpb::Response {
            id,
            result: Some(result),
        };
        use kvpb::response::Result as R;
        encode_frame(
            &resp(
                1,
                R::Put(kvpb::PutResponse {
                    version: 7,
                    ..Default::default()
                }),
            ),
            &mut wire,
        );
        encode_frame(
            &resp(
                2,
                R::Error(kvpb::Error {
                    code: kvpb::ErrorCode::NotLeader as i32,
                    leader_addr: "127.0.0.1:9".into(),
                    ..Default::default()
                }),
            ),
            &mut wire,
        );
        encode_frame(
            &resp(
                3,
                R::Cas(kvpb::CasResponse {
                    succeeded: false,
                    version: 4,
                }),
            ),
            &mut wire,
        );
        let r1 = c.decode(&mut wire).unwrap().unwrap();
        assert_eq!(r1.id, Some(1));
        assert_eq!(
            r1.outcome,
            Outcome::Ok {
                found: true,
                version: Some(7)
            }
        );
        let r2 = c.decode(&mut wire).unwrap().unwrap();
        assert_eq!(
            r2.outcome,
            Outcome::Error {
                kind: "raftkv: NOT_LEADER".into(),
                redirect: Some("127.0.0.1:9".into())
            }
        );
        let r3 = c.decode(&mut wire).unwrap().unwrap();
        assert_eq!(r3.outcome, Outcome::CasFailed { version: Some(4) });
        assert_eq!(c.decode(&mut wire).unwrap(), None);
        // A garbage frame is a stream error, not a panic.
        let mut bad = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(c.decode(&mut bad).is_err());
    }
}
