//! Simulated clients.
//!
//! Each client runs one operation at a time (put, get, delete or cas on a small key set, so
//! operations contend) against the node it believes leads. Writes carry an exactly-once
//! session (client_id, seq): a retry after a timeout or a NotLeader answer reuses the seq, so
//! the write applies at most once wherever it lands. Reads go through ReadIndex, half of them
//! to a random node (a follower serves them through follower ReadIndex). Every
//! operation is recorded for the linearizability checker: its call time, and its return time
//! and output once a definite answer arrives. A client may give up on a write (its outcome
//! stays unknown forever, which the checker handles).

use crate::kv::ApplyResult;
use crate::pb::kvpb;
use crate::rng::Rng;
use crate::sim::linearize::{Input, Operation, Output};

/// What a client sends to a node.
#[derive(Debug, Clone)]
pub struct ClientReq {
    /// Index of the client in the cluster.
    pub client: usize,
    /// Attempt number (replies to older attempts are matched by seq only).
    pub attempt: u64,
    pub seq: u64,
    pub op: ReqOp,
}

/// The request body.
#[derive(Debug, Clone)]
pub enum ReqOp {
    /// A replicated write.
    Write(kvpb::Command),
    /// A linearizable read of one key.
    Read { key: Vec<u8> },
}

/// A node's answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The write applied (or was found applied) with this result (boxed: a status answer is
    /// large, and replies queue in the event list).
    Write(Box<ApplyResult>),
    Read(kvpb::GetResponse),
    /// Not the leader; maybe a hint.
    NotLeader(Option<u64>),
    /// Could not serve (e.g. read confirmation lost); nothing happened.
    Unavailable,
}

/// The key bytes for key number `k`.
pub fn key_bytes(k: u64) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

/// A client's operation in flight.
#[derive(Debug, Clone)]
struct Current {
    seq: u64,
    key: u64,
    input: Input,
    op: ReqOp,
    /// Index into the history.
    hist: usize,
}

/// What the cluster should do for a client next.
#[derive(Debug, Clone)]
pub enum ClientAction {
    /// Send this request to `node` (and arm a timeout).
    Send {
        node: u64,
        req: ClientReq,
    },
    /// Wait, then call [`SimClient::resume`].
    Retry {
        after: u64,
    },
    /// Idle, then call [`SimClient::start`].
    Think {
        after: u64,
    },
    Nothing,
}

/// One simulated client.
pub struct SimClient {
    pub idx: usize,
    pub client_id: u64,
    seq: u64,
    /// Highest seq such that every seq at or below it got an answer.
    acked: u64,
    cur: Option<Current>,
    pub attempt: u64,
    target: u64,
    nodes: u64,
    keys: u64,
    /// Last version this client saw per key (used for cas expectations).
    seen_version: Vec<u64>,
    rng: Rng,
    /// Operations whose outcome this client gave up on.
    pub abandoned: u64,
}

impl SimClient {
    /// The cluster grew to `nodes` node ids (1..=nodes): new members can be asked too.
    pub fn set_nodes(&mut self, nodes: u64) {
        self.nodes = nodes;
    }

    pub fn new(idx: usize, nodes: u64, keys: u64, rng: Rng) -> SimClient {
        SimClient {
            idx,
            client_id: idx as u64 + 1,
            seq: 0,
            acked: 0,
            cur: None,
            attempt: 0,
            target: 1 + (idx as u64 % nodes),
            nodes,
            keys,
            seen_version: vec![0; keys as usize],
            rng,
            abandoned: 0,
        }
    }

    /// True while an operation is outstanding.
    pub fn busy(&self) -> bool {
        self.cur.is_some()
    }

    /// Description of the outstanding operation (for liveness reports).
    pub fn describe(&self) -> String {
        match &self.cur {
            Some(c) => format!(
                "client {} seq {} {:?} on key {} (attempt {})",
                self.client_id, c.seq, c.input, c.key, self.attempt
            ),
            None => format!("client {} idle", self.client_id),
        }
    }

    /// Starts a new random operation, recording its call in `history` at time `clock`.
    pub fn start(&mut self, history: &mut Vec<Operation>, clock: u64) -> ClientAction {
        let key = self.rng.range(0, self.keys);
        let kb = key_bytes(key);
        let roll = self.rng.range(0, 100);
        let (input, op) = if roll < 35 {
            (Input::Get, ReqOp::Read { key: kb })
        } else {
            self.seq += 1;
            // Values are unique per write: client id and seq.
            let val = self.client_id * 1_000_000 + self.seq;
            let vb = val.to_be_bytes().to_vec();
            let (input, body) = if roll < 70 {
                (
                    Input::Put { val },
                    kvpb::command::Op::Put(kvpb::Put {
                        key: kb.into(),
                        value: vb.into(),
                        ..Default::default()
                    }),
                )
            } else if roll < 80 {
                (
                    Input::Delete,
                    kvpb::command::Op::Delete(kvpb::Delete { key: kb.into() }),
                )
            } else {
                let expected = if self.rng.chance(0.8) {
                    self.seen_version[key as usize]
                } else {
                    0
                };
                let delete = self.rng.chance(0.2);
                (
                    Input::Cas {
                        expected,
                        new_val: (!delete).then_some(val),
                    },
                    kvpb::command::Op::Cas(kvpb::Cas {
                        key: kb.into(),
                        expected_version: expected,
                        value: if delete { Vec::new() } else { vb }.into(),
                        delete,
                    }),
                )
            };
            let cmd = kvpb::Command {
                client_id: self.client_id,
                seq: self.seq,
                acked_seq: self.acked,
                op: Some(body),
            };
            (input, ReqOp::Write(cmd))
        };
        history.push(Operation {
            client: self.client_id,
            key,
            input: input.clone(),
            output: None,
            call: clock,
            ret: None,
        });
        self.cur = Some(Current {
            seq: if matches!(op, ReqOp::Write(_)) {
                self.seq
            } else {
                0
            },
            key,
            input,
            op,
            hist: history.len() - 1,
        });
        self.attempt += 1;
        self.send()
    }

    fn send(&mut self) -> ClientAction {
        let Some(c) = &self.cur else {
            return ClientAction::Nothing;
        };
        // Half the reads go to any node, not the one believed to lead: followers serve them
        // through follower ReadIndex, which the linearizability check then covers too.
        let node = if matches!(c.op, ReqOp::Read { .. }) && self.rng.chance(0.5) {
            1 + self.rng.range(0, self.nodes)
        } else {
            self.target
        };
        ClientAction::Send {
            node,
            req: ClientReq {
                client: self.idx,
                attempt: self.attempt,
                seq: c.seq,
                op: c.op.clone(),
            },
        }
    }

    /// Sends the current operation again (after a back-off).
    pub fn resume(&mut self) -> ClientAction {
        self.attempt += 1;
        self.send()
    }

    fn other_node(&mut self) -> u64 {
        1 + self.rng.range(0, self.nodes)
    }

    /// The request of `attempt` timed out.
    pub fn on_timeout(
        &mut self,
        attempt: u64,
        history: &mut [Operation],
        stopping: bool,
    ) -> ClientAction {
        if attempt != self.attempt || self.cur.is_none() {
            return ClientAction::Nothing;
        }
        self.target = self.other_node();
        let is_write = self.cur.as_ref().is_some_and(|c| c.seq != 0);
        // Occasionally give up on a write: its outcome stays unknown forever.
        if is_write && !stopping && self.rng.chance(0.05) {
            self.cur = None;
            self.abandoned += 1;
            let _ = history;
            return ClientAction::Think {
                after: self.rng.range(1, 20),
            };
        }
        self.resume()
    }

    /// A reply for (`attempt`, `seq`) arrived at time `clock`.
    pub fn on_reply(
        &mut self,
        attempt: u64,
        seq: u64,
        reply: Reply,
        history: &mut [Operation],
        clock: u64,
    ) -> ClientAction {
        let Some(c) = self.cur.clone() else {
            return ClientAction::Nothing;
        };
        let output = match reply {
            Reply::NotLeader(hint) => {
                if attempt != self.attempt {
                    return ClientAction::Nothing;
                }
                self.target = match hint {
                    Some(h) if h >= 1 && h <= self.nodes => h,
                    _ => self.other_node(),
                };
                self.attempt += 1; // the old attempt's timeout no longer applies
                return ClientAction::Retry {
                    after: if hint.is_some() { 1 } else { 10 },
                };
            }
            Reply::Unavailable => {
                if attempt != self.attempt {
                    return ClientAction::Nothing;
                }
                self.attempt += 1;
                return ClientAction::Retry { after: 10 };
            }
            Reply::Read(g) => {
                if c.seq != 0 || attempt != self.attempt {
                    return ClientAction::Nothing;
                }
                let found = if g.found {
                    Some((decode_val(&g.value), g.version))
                } else {
                    None
                };
                if let Some((_, v)) = found {
                    self.seen_version[c.key as usize] = v;
                }
                Some(Output::Get { found })
            }
            Reply::Write(r) => {
                if c.seq == 0 || seq != c.seq {
                    return ClientAction::Nothing;
                }
                use kvpb::response::Result as R;
                match *r {
                    R::Put(p) => {
                        self.seen_version[c.key as usize] = p.version;
                        Some(Output::Put { version: p.version })
                    }
                    R::Delete(d) => Some(Output::Delete { deleted: d.deleted }),
                    R::Cas(x) => {
                        self.seen_version[c.key as usize] = x.version;
                        Some(Output::Cas {
                            ok: x.succeeded,
                            version: x.version,
                        })
                    }
                    // An error result from the state machine: outcome treated as unknown.
                    _ => None,
                }
            }
        };
        let h = &mut history[c.hist];
        if output.is_some() {
            h.output = output;
            h.ret = Some(clock);
        }
        if c.seq != 0 && c.seq == self.acked + 1 {
            self.acked = c.seq;
        }
        self.cur = None;
        ClientAction::Think {
            after: self.rng.range(0, 30),
        }
    }
}

/// Values are 8-byte big-endian ids; anything else decodes to 0 (never a real value).
pub fn decode_val(b: &[u8]) -> u64 {
    <[u8; 8]>::try_from(b).map_or(0, u64::from_be_bytes)
}
