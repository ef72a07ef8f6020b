//! The interface between the load generator and a system's wire protocol.
//!
//! A [`Driver`] knows how to find where to send load (e.g. the Raft leader) and makes one
//! [`Codec`] per connection. Codecs are pure byte-level encoders/decoders: the engine owns the
//! sockets, so every protocol gets the same non-blocking, pipelined I/O loop.

use crate::workload::{Op, OpKind};
use bytes::BytesMut;
use std::net::SocketAddr;

/// Read consistency requested for gets and scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Lease,
    Stale,
}

impl Consistency {
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

/// Settings every driver receives.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The value written by puts and cas.
    pub value: Vec<u8>,
    pub consistency: Consistency,
    /// raftkv: use exactly-once sessions (client_id/seq) for writes.
    pub sessions: bool,
    /// raftkv, raftkv-resp: the client token every connection presents first (`--token-file`;
    /// native Auth, RESP AUTH) before its load.
    pub token: Option<bytes::Bytes>,
}

/// What a reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Success. `found` is false for a get/scan that found nothing; `version` is the key's
    /// version where the protocol reports it.
    Ok { found: bool, version: Option<u64> },
    /// A cas whose comparison failed (the op completed; the key has `version`).
    CasFailed { version: Option<u64> },
    /// The server refused the request. `kind` names the error for the report; `redirect` is a
    /// leader address to reconnect to, when the server gave one.
    Error {
        kind: String,
        redirect: Option<String>,
    },
}

/// One decoded reply. `id` is the request id for protocols that echo it; `None` for in-order
/// protocols (RESP, HTTP/1.1), where a reply answers the oldest request in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: Option<u64>,
    pub outcome: Outcome,
}

/// Per-connection encoder/decoder.
pub trait Codec {
    /// Appends the encoding of `op` (correlation id `id`) to `out`.
    fn encode(&mut self, id: u64, op: &Op, out: &mut Vec<u8>);
    /// Splits one reply off the front of `buf`: `Ok(None)` = need more bytes; `Err` = the
    /// stream is corrupt (the engine drops the connection).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, String>;
    /// Called when the reply for request `id` arrived (sessions track acknowledgements).
    fn completed(&mut self, _id: u64) {}
}

/// A system under test.
pub trait Driver {
    /// Label for reports, e.g. `redis` or `etcd (v3 HTTP/JSON gateway)`.
    fn name(&self) -> String;
    /// Errors out early for operations or consistency levels the system cannot do.
    fn check(&self, kinds: &[OpKind], consistency: Consistency) -> Result<(), String>;
    /// Addresses to open connections to, in order (connection `i` uses `targets[i % len]`).
    /// raftkv and etcd return the leader here.
    fn targets(&self) -> Result<Vec<SocketAddr>, String>;
    /// A codec for one connection.
    fn codec(&self, conn_index: usize) -> Box<dyn Codec>;
    /// TLS for every connection (trusting this configuration's CAs), or plain TCP.
    fn tls(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        None
    }
}

/// Resolves `HOST:PORT` to the first socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}

pub fn unsupported(system: &str, what: &str) -> String {
    format!("{system} driver does not support {what}")
}
