//! Server configuration and the `--peers` format.
//!
//! `--peers` lists every member of the cluster, this node included, so every node can be given
//! the same string:
//!
//! ```text
//! ID=PEER_HOST:PORT[/CLIENT_HOST:PORT[/REDIS_HOST:PORT]],ID=...
//! 1=127.0.0.1:7004/127.0.0.1:7001,2=127.0.0.1:7005/127.0.0.1:7002,3=127.0.0.1:7006/127.0.0.1:7003
//! ```
//!
//! The peer address is where Raft traffic goes; the optional client address is what a
//! follower tells clients in a NOT_LEADER error (`leader_addr`); the optional RESP address is
//! the node's Redis-protocol listener (`--redis-addr` defaults to it), which a follower names
//! in its `-NOTLEADER` errors.
//!
//! `--peers` is the configuration only of a brand-new cluster that names this node; once the
//! data directory holds a snapshot or a configuration entry, that durable configuration wins
//! and `--peers` only seeds peer links (docs/membership.md). A node joining a running cluster
//! (`join`) starts from an empty configuration and learns it from the leader.

use crate::net::client_auth::ClientToken;
use crate::net::framing::DEFAULT_MAX_FRAME;
use crate::net::peer::PeerOptions;
use crate::net::peer_auth::PeerSecrets;
use crate::snapshot::{SnapshotPolicy, WritePacing};
use std::path::PathBuf;
use std::time::Duration;

/// Default length of one Raft tick: 50 ms. With the default 10-tick election timeout a dead
/// leader is replaced within 0.5-1 s; shorter ticks make elections flap when a loop pass or an
/// fsync of a large entry takes tens of milliseconds.
pub const DEFAULT_TICK: Duration = Duration::from_millis(50);
/// Default server-side deadline of a client request: the client's default overall deadline
/// (`raftkv --timeout-ms`), so the server gives up about when the client stops waiting.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = crate::client::DEFAULT_TIMEOUT;
/// Default backpressure limit on a client's unsent responses: 8 MiB, half a default frame; a
/// client that does not read costs the node at most about this much (plus one response).
pub const DEFAULT_CLIENT_OUTPUT_LIMIT: usize = 8 << 20;
/// Default bound on client connections: 1024, the usual soft limit on open files per process
/// (`ulimit -n`), so the node refuses clients with a clear answer before `accept` starts
/// failing with EMFILE. What clients can make the node hold is about this many times the
/// output limit plus one response and one 64 KiB read buffer.
pub const DEFAULT_MAX_CLIENTS: usize = 1024;
/// Answers to confirmed reads made per loop pass: 16 MiB. Building and queueing that much
/// takes a few ms (copies at GB/s), far below the 500 ms election timeout, while 60 pipelined
/// scans of 8 MiB answered in one pass took 1.7 s and cost the leader its quorum (issue 16).
/// The rest are answered in the next passes, with the loop not sleeping in between.
pub const READ_BYTES_PER_PASS: usize = 16 << 20;
/// Default cap on one client connection's requests in flight: 4096, far above what a
/// pipelining client needs for throughput, low enough to bound the pending-request tables.
pub const DEFAULT_MAX_CLIENT_INFLIGHT: usize = 4096;
/// Default space quota (`--quota-bytes`): 2 GiB, etcd's default. A fixed size rather than a
/// fraction of the free space: every node of a cluster gets the same quota whatever else shares
/// its disk, the limit does not move as other files come and go, and an operator can reason
/// about it. A disk that fills before the quota is reached raises the same alarm (ENOSPC on
/// the preallocated next segment or a snapshot).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// How often a node measures its data directory, retries a failed segment preallocation or
/// deferred log entries, and re-decides the alarm: 500 ms, ten ticks. Between checks a write
/// load can add about one segment (the preallocated spare is what absorbs it).
pub const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Default interval for writing a changed commit index to the hard state file: 500 ms. The
/// commit index is only an optimisation at restart (it is re-learned from the leader), so it
/// is written rarely rather than with every fsync.
pub const DEFAULT_COMMIT_PERSIST_INTERVAL: Duration = Duration::from_millis(500);

/// How long an inbound peer connection may take to complete its handshake, and an outbound
/// one to connect and complete it: 2 s. The handshake is two round trips of ~100 bytes, well
/// under a millisecond on a LAN; the bound exists so that connections that never finish
/// (a scanner, a stalled or hostile client) cannot hold a socket and its buffer for long.
pub const DEFAULT_PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// One cluster member as given in `--peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub id: u64,
    pub peer_addr: String,
    pub client_addr: Option<String>,
    pub redis_addr: Option<String>,
}

/// Parses `ID=PEER[/CLIENT],...`. Ids must be non-zero and unique.
pub fn parse_peers(s: &str) -> Result<Vec<PeerSpec>, String> {
    let mut out: Vec<PeerSpec> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addrs) = item
            .split_once('=')
            .ok_or_else(|| format!("peer {item:?}: expected ID=PEER_ADDR[/CLIENT_ADDR]"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {item:?}: id {id:?} is not a number"))?;
        if id == 0 {
            return Err(format!("peer {item:?}: id 0 is reserved"));
        }
        let mut parts = addrs.split('/').map(str::trim);
        let peer = parts.next().unwrap_or_default();
        let client = parts.next();
        let redis = parts.next();
        if parts.next().is_some() {
            return Err(format!(
                "peer {item:?}: expected ID=PEER_ADDR[/CLIENT_ADDR[/REDIS_ADDR]]"
            ));
        }
        for a in std::iter::once(peer).chain(client).chain(redis) {
            if a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("peer {item:?}: {a:?} is not HOST:PORT"));
            }
        }
        if out.iter().any(|p| p.id == id) {
            return Err(format!("peer id {id} appears twice in --peers"));
        }
        out.push(PeerSpec {
            id,
            peer_addr: peer.to_string(),
            client_addr: client.map(str::to_string),
            redis_addr: redis.map(str::to_string),
        });
    }
    if out.is_empty() {
        return Err("--peers is empty".into());
    }
    Ok(out)
}

/// Formats peers back into the `--peers` syntax.
pub fn format_peers(peers: &[PeerSpec]) -> String {
    peers
        .iter()
        .map(|p| {
            // A RESP address needs a client address before it (the format is positional).
            let mut s = format!("{}={}", p.id, p.peer_addr);
            for a in [&p.client_addr, &p.redis_addr]
                .into_iter()
                .map_while(Option::as_ref)
            {
                s.push('/');
                s.push_str(a);
            }
            s
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The configuration a brand-new cluster starts from: every `--peers` entry a voter, with
/// its addresses as its member context. Once a node has a snapshot or a configuration entry,
/// that wins over `--peers` (docs/membership.md). `raftkv snapshot restore`
/// seeds a new cluster's members with it too.
pub fn bootstrap_conf(peers: &[PeerSpec]) -> crate::raft::ConfState {
    let mut conf = crate::raft::ConfState {
        voters: peers.iter().map(|p| p.id).collect(),
        ..Default::default()
    };
    for p in peers {
        let client = p.client_addr.as_deref().unwrap_or_default();
        conf.members.push(crate::raft::Member {
            id: p.id,
            context: crate::node::membership::encode_context(&p.peer_addr, client, false),
        });
    }
    conf
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// Address the peer listener binds.
    pub peer_listen: String,
    /// Address the client listener binds.
    pub client_listen: String,
    /// Address the RESP (Redis protocol) listener binds; none = no RESP listener.
    pub redis_listen: Option<String>,
    /// Address the HTTP listener (health, status, metrics) binds; none if not given.
    pub http_listen: Option<String>,
    /// The members as given (this node included, unless it joins); see the module doc.
    pub peers: Vec<PeerSpec>,
    /// Joining a running cluster as a new member: the bootstrap configuration is empty.
    pub join: bool,
    /// Length of one Raft tick.
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Serve LEASE reads from the leader lease (otherwise LEASE reads use ReadIndex).
    pub lease_read: bool,
    /// Max frame payload accepted from clients and peers.
    pub max_frame: usize,
    /// Log segment size.
    pub segment_size: u64,
    /// Deadline of a client request inside the server.
    pub request_timeout: Duration,
    /// Stop reading from a client whose unsent responses exceed this many bytes...
    pub max_client_pending_bytes: usize,
    /// ...or that has this many requests in flight.
    pub max_client_inflight: usize,
    /// Client connections served at once; more are answered UNAVAILABLE and closed.
    pub max_clients: usize,
    /// A follower forwards writes and leader reads to the leader (`forward.rs`) instead of
    /// answering NOT_LEADER.
    pub forward: bool,
    /// A follower serves LINEARIZABLE/LEASE reads itself through follower ReadIndex (native
    /// and RESP) instead of answering NOT_LEADER or forwarding them.
    pub follower_reads: bool,
    /// How often a changed commit index is written to the hard state file.
    pub commit_persist_interval: Duration,
    /// Space quota on the state (keys + values) and on the data directory: beyond it the
    /// NO_SPACE alarm is raised (`server/space.rs`).
    pub quota_bytes: u64,
    pub peer: PeerOptions,
    /// The peer secret(s) the handshake proves with (`--peer-secret-file`), or the public
    /// empty key of `--insecure-peers`. The library default is insecure; `raftkv serve` makes
    /// the operator choose.
    pub peer_secrets: PeerSecrets,
    /// TLS on the client/RESP ports, the forwarding link and peer links (`net::tls`).
    pub tls: crate::net::tls::NodeTls,
    /// The client token(s) a client connection must present before it is served
    /// (`--client-token-file`, `client_auth.rs`); none = every connection is served. A
    /// follower forwarding to the leader presents the first.
    pub client_token: Option<ClientToken>,
    /// The files `peer_secrets` and `client_token` were read from, read again on SIGHUP
    /// (`reload.rs`); None: not from a file, never reloaded.
    pub peer_secret_file: Option<std::path::PathBuf>,
    pub client_token_file: Option<std::path::PathBuf>,
    /// Bound on a peer handshake (see [`DEFAULT_PEER_HANDSHAKE_TIMEOUT`]).
    pub peer_handshake_timeout: Duration,
    /// When to snapshot and how far to compact the log.
    pub snapshot_policy: SnapshotPolicy,
    /// Disk bandwidth the forked snapshot writer may use (keeps log fsyncs fast meanwhile).
    pub snapshot_pacing: WritePacing,
    /// When a caught-up learner is promoted to voter (`--promote-lag`, `--promote-ticks`).
    pub promotion: crate::node::membership::PromotionPolicy,
}

impl ServerConfig {
    /// Defaults for node `id` with the given members; listen addresses default to this node's
    /// entry in `peers` (empty without one: a joining or joined node names its own).
    pub fn new(id: u64, data_dir: PathBuf, peers: Vec<PeerSpec>) -> Result<ServerConfig, String> {
        if id == 0 {
            return Err("node id 0 is reserved".into());
        }
        let me = peers.iter().find(|p| p.id == id);
        // The core's defaults are written once, in `raft::Config::new`.
        let core = crate::raft::Config::new(id);
        Ok(ServerConfig {
            id,
            data_dir,
            peer_listen: me.map(|m| m.peer_addr.clone()).unwrap_or_default(),
            client_listen: me.and_then(|m| m.client_addr.clone()).unwrap_or_default(),
            redis_listen: me.and_then(|m| m.redis_addr.clone()),
            http_listen: None,
            peers,
            join: false,
            tick: DEFAULT_TICK,
            election_ticks: core.election_tick,
            heartbeat_ticks: core.heartbeat_tick,
            pre_vote: core.pre_vote,
            check_quorum: core.check_quorum,
            lease_read: core.lease_read,
            max_frame: DEFAULT_MAX_FRAME,
            segment_size: crate::storage::DEFAULT_SEGMENT_SIZE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_client_pending_bytes: DEFAULT_CLIENT_OUTPUT_LIMIT,
            max_client_inflight: DEFAULT_MAX_CLIENT_INFLIGHT,
            max_clients: DEFAULT_MAX_CLIENTS,
            forward: false,
            follower_reads: false,
            commit_persist_interval: DEFAULT_COMMIT_PERSIST_INTERVAL,
            quota_bytes: DEFAULT_QUOTA_BYTES,
            peer: PeerOptions::default(),
            peer_secrets: PeerSecrets::insecure(),
            tls: Default::default(),
            client_token: None,
            peer_secret_file: None,
            client_token_file: None,
            peer_handshake_timeout: DEFAULT_PEER_HANDSHAKE_TIMEOUT,
            snapshot_policy: SnapshotPolicy::default(),
            snapshot_pacing: WritePacing::default(),
            promotion: Default::default(),
        })
    }

    /// The RESP address of member `id`, if known.
    pub fn redis_addr_of(&self, id: u64) -> Option<&str> {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .and_then(|p| p.redis_addr.as_deref())
    }

    /// The client address of member `id`, if known.
    pub fn client_addr_of(&self, id: u64) -> Option<&str> {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .and_then(|p| p.client_addr.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_peers() {
        let s = "1=127.0.0.1:7004/127.0.0.1:7001, 2=host:7005,3=[::1]:7006/[::1]:7003/[::1]:6379";
        let p = parse_peers(s).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].redis_addr.as_deref(), Some("[::1]:6379"));
        assert_eq!(p[0].redis_addr, None);
        assert_eq!(p[0].client_addr.as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(p[1].client_addr, None);
        assert_eq!(p[2].peer_addr, "[::1]:7006");
        assert_eq!(parse_peers(&format_peers(&p)).unwrap(), p);
    }

    #[test]
    fn rejects_bad_peers() {
        for bad in [
            "",
            "1",
            "x=1.2.3.4:5",
            "0=1.2.3.4:5",
            "1=1.2.3.4",
            "1=1.2.3.4:99999",
            "1=a:1,1=b:2",
            "1=a:1/b",
            "1=a:1/b:2/c",
            "1=a:1/b:2/c:3/d:4",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn listen_addresses_come_from_own_entry() {
        let p = parse_peers("1=a:1/a:2,2=b:1").unwrap();
        let joined = ServerConfig::new(3, "d".into(), p.clone()).unwrap();
        assert_eq!(
            (joined.peer_listen.as_str(), joined.client_listen.as_str()),
            ("", "")
        );
        assert!(ServerConfig::new(0, "d".into(), p.clone()).is_err());
        let c = ServerConfig::new(1, "d".into(), p).unwrap();
        assert_eq!(c.peer_listen, "a:1");
        assert_eq!(c.client_listen, "a:2");
        assert_eq!(c.client_addr_of(2), None);
    }
}
