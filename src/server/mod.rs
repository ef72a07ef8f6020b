//! One raftkv node on one thread: a mio event loop gluing sockets, the Raft core, the durable
//! log and the KV state machine.
//!
//! Each loop iteration:
//! 1. poll (timeout = next timer or Raft tick, at most [`MAX_POLL`]);
//! 2. apply every Raft tick owed since the last one, by real time (see [`tick_catch_up`]),
//!    *before* anything is read: a stalled process must see its lease expire before it
//!    answers a request that waited in a socket buffer during the stall. The election and
//!    heartbeat timers count a stall as one tick (`RawNode::tick_after_stall`): the node's
//!    own stall is no sign its peers went quiet;
//! 3. accept connections; read every ready socket: peer frames are `step`ped into the core,
//!    client requests become proposals / ReadIndex rounds / local answers (a LEASE read is
//!    only answered from the lease while no tick is overdue);
//! 4. fire due timers (request deadlines, peer reconnects, commit-hint persist);
//! 5. drain `Ready`s in the contract's order: hard state + entries to disk with ONE sync per
//!    Ready (group commit of everything proposed in this iteration), then peer messages,
//!    apply committed entries and answer their clients, serve ReadIndex reads, then
//!    `on_persisted`;
//! 6. flush client and peer write queues.
//!
//! What the node does between bytes in and bytes out that is not a socket or a file lives in
//! the node layer (`crate::node`), shared with the simulator: the Ready phases, the replica
//! (core, KV state machine, pending requests and their answers). This shell holds the sockets,
//! the framing, the timer wheel, the fork()ed snapshot writer and the signals:
//! - `startup.rs`: recovery and construction;
//! - `connections.rs`: accepting, reading and closing inbound connections;
//! - `clients.rs`: client requests into the replica, its answers onto the connections;
//! - `client_auth.rs`: client tokens (`--client-token-file`): which connections are served;
//! - `resp_conn.rs`, `resp_commands.rs`: RESP (Redis protocol) connections: commands into the
//!   same requests as the native protocol, replies released in request order;
//! - `peers.rs`: the links to the other members;
//! - `forward.rs`: a follower's link to the leader's client port (`--forward`);
//! - `identity.rs`: the cluster id, the membership check, handshake outcomes;
//! - `timers.rs`: Raft ticks from real time and the timer wheel's events;
//! - `ready_shell.rs`: the server's side of the Ready phases (log, hard state, sync);
//! - `snap.rs`: taking, compacting, sending and installing snapshots;
//! - `backup.rs`: serving backups (`SnapshotBegin`, `SnapshotChunk`);
//! - `http.rs`: the HTTP listener (`/livez`, `/readyz`, `/status`, `/metrics`);
//! - `metrics.rs`: the counters and histograms, and the `/metrics` page.

mod backup;
mod client_auth;
mod clients;
pub mod config;
mod connections;
mod forward;
pub mod http;
mod identity;
mod metrics;
mod peers;
mod ready_shell;
mod reload;
mod resp_commands;
mod resp_conn;
pub mod signal;
mod snap;
mod space;
mod startup;
mod timers;

pub use config::{bootstrap_conf, parse_peers, PeerSpec, ServerConfig};

use crate::idmap::{IdMap, IdSet};
use crate::kv::ApplyResult;
use crate::net::conn::Conn;
use crate::net::peer::Peer;
use crate::net::reactor::{
    Tokens, CLIENT_LISTENER, HTTP_LISTENER, PEER_LISTENER, REDIS_LISTENER, SNAPSHOT_CHILD,
};
use crate::net::timer::TimerWheel;
use crate::node::Replica;
use crate::raft::HardState;
use crate::storage::{DirLock, HardStateFile, Log};
use mio::net::TcpListener;
use mio::{event::Event, Events, Poll, Token};
use snap::Snapshots;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use timers::TimerEvent;

/// Longest poll sleep (the loop also checks the shutdown flag this often).
const MAX_POLL: Duration = Duration::from_millis(100);
/// A loop pass (everything but the wait in poll) taking this long is logged with a breakdown.
const SLOW_PASS: Duration = Duration::from_millis(100);

/// A client connection.
struct ClientConn {
    conn: Conn,
    /// Requests received and not yet answered.
    inflight: usize,
    /// Reading stopped for backpressure; resume when output drains.
    paused: bool,
    /// Being closed after a fatal framing error: the error response is flushed, then the
    /// write side is shut down and input is discarded until the client closes (or a timer
    /// forces it). Closing at once with unread input would make the kernel send a RST that
    /// can destroy the error response before the client reads it.
    closing: bool,
    /// Some for a RESP (Redis protocol) connection: its parser and in-order reply queue.
    resp: Option<Box<resp_conn::RespState>>,
    /// The tag of the right client token it presented (`client_auth.rs`); a reload whose file
    /// no longer holds that token closes the connection (`reload.rs`).
    token_tag: Option<[u8; 32]>,
}

impl ClientConn {
    /// May be served: it presented a right token, or the node requires none.
    fn authenticated(&self, token_required: bool) -> bool {
        !token_required || self.token_tag.is_some()
    }

    /// Backpressure: too many unsent response bytes or requests in flight to take more from
    /// this client (`--client-output-limit`, the in-flight cap).
    /// A RESP connection's replies held back for order count as output.
    fn over_limit(&self, max_out: usize, max_inflight: usize) -> bool {
        let held = self.resp.as_ref().map_or(0, |r| r.held_bytes());
        self.conn.pending_out() + held > max_out || self.inflight >= max_inflight
    }
}

enum Endpoint {
    Client(ClientConn),
    /// A connection another node dialled to send us Raft messages.
    PeerIn(PeerIn),
}

/// An inbound peer connection: first its handshake, then the authenticated sender's frames.
struct PeerIn {
    conn: Conn,
    addr: std::net::SocketAddr,
    auth: PeerAuth,
}

enum PeerAuth {
    /// Nothing from the connection reaches the core until this completes.
    Handshake(Box<crate::net::handshake::Acceptor>),
    /// Every Raft message must carry this `from`.
    From(u64),
}

/// Where the answer to a client request goes: the node layer's reply address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientRef {
    token: Token,
    req_id: u64,
}

impl crate::node::ReplyAddr for ClientRef {
    fn conn(&self) -> u64 {
        self.token.0 as u64
    }
}

/// A running node.
pub struct Server {
    cfg: ServerConfig,
    poll: Poll,
    peer_listener: Option<TcpListener>,
    client_listener: Option<TcpListener>,
    /// The HTTP listener, if `--http-addr` was given.
    http_listener: Option<TcpListener>,
    /// The RESP listener, if `--redis-addr` was given.
    redis_listener: Option<TcpListener>,
    /// Requests forwarded to the leader (`--forward`).
    forward: forward::Forwarder,
    /// RESP connections' session ids derive from this (`resp_conn::session_id`).
    resp_session_base: u64,
    http_conns: IdMap<Token, http::HttpConn>,
    metrics: metrics::Metrics,
    tokens: Tokens,
    endpoints: IdMap<Token, Endpoint>,
    peers: HashMap<u64, Peer>,
    /// Peer addresses of removed members, to tell one that comes back (`relink_removed`).
    removed_addrs: HashMap<u64, String>,
    peer_by_token: IdMap<Token, u64>,
    /// This node's cluster id, as far as it is settled (see `identity.rs`).
    cluster_id: crate::net::handshake::LocalCluster,
    /// Refused handshakes and spoofed frames are logged at most this often.
    auth_log: crate::logger::RateLimit,
    /// Refused client tokens and unauthenticated requests are logged at most this often.
    client_auth_log: crate::logger::RateLimit,
    timers: TimerWheel<TimerEvent>,
    /// When the next Raft tick is due. Ticks keep a fixed phase (`start + k * tick`).
    next_tick: Instant,
    /// The node layer: core, state machine, pending requests.
    replica: Replica<Log, ClientRef>,
    /// The node layer's clock starts here (`now_ms`).
    clock_start: Instant,
    /// Reused buffer for the replica's answers (`deliver_answers`).
    answer_buf: Vec<(ClientRef, ApplyResult)>,
    hs_file: HardStateFile,
    /// The hard state last written to disk.
    saved_hs: HardState,
    /// Newest commit index whose entries are durable here (persisted lazily as a hint).
    commit_hint: u64,
    snaps: Snapshots,
    /// The space quota, the alarm's driver and entries a full disk deferred (`space.rs`).
    space: space::Space,
    /// Held for the node's life: the data directory's lock (`DIR/LOCK`).
    _dir_lock: DirLock,
    dirty_clients: IdSet<Token>,
    /// Client connections open (lingering ones included), against `--max-clients`.
    clients: usize,
    /// Entries appended to the log in the Ready being handled and not yet synced.
    appended_unsynced: bool,
    dirty_peers: HashSet<u64>,
    read_again: Vec<Token>,
    unreachable: HashSet<u64>,
    /// Local listening addresses (resolved, e.g. after binding port 0).
    pub peer_local_addr: std::net::SocketAddr,
    pub client_local_addr: std::net::SocketAddr,
    pub http_local_addr: Option<std::net::SocketAddr>,
    pub redis_local_addr: Option<std::net::SocketAddr>,
}

impl Server {
    pub fn run(mut self, shutdown: &AtomicBool) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        let mut handoff = None;
        loop {
            if shutdown.load(Ordering::SeqCst) && self.ready_to_stop(&mut handoff) {
                return self.shutdown();
            }
            let now = Instant::now();
            let timeout = if self.read_again.is_empty() && !self.replica.has_more_reads() {
                self.timers
                    .next_timeout(now)
                    .map_or(MAX_POLL, |d| d.min(MAX_POLL))
                    .min(self.next_tick.saturating_duration_since(now))
                    .min(self.until_next_deadline())
            } else {
                // Sockets to read on, or confirmed reads left by the last pass's budget.
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll failed: {e}"));
            }
            // Ticks first: after a stall (SIGSTOP, CPU starvation, a slow fsync) the lease
            // must be judged by the time that really passed, before any request is read
            // (the election timers count the stall as one tick: `catch_up_ticks`).
            let t0 = Instant::now();
            self.catch_up_ticks()?;
            let t1 = Instant::now();
            for ev in events.iter() {
                self.dispatch(ev);
            }
            for token in std::mem::take(&mut self.read_again) {
                if self.http_conns.contains_key(&token) {
                    self.on_http_event(token);
                } else {
                    self.on_readable(token, false);
                }
            }
            let t2 = Instant::now();
            self.timers.advance(t2, &mut fired);
            for ev in fired.drain(..) {
                self.on_timer(ev)?;
            }
            let now_ms = self.now_ms();
            self.replica.expire(now_ms);
            self.expire_forwards(now_ms);
            let t3 = Instant::now();
            if self.replica.has_more_reads() {
                self.replica.serve_more_reads();
            }
            let applied = self.replica.applied();
            self.process_ready()?;
            // After apply: a snapshot due now starts now, a finished one is collected now.
            // Nothing can have become due in a pass that applied nothing (the tick still
            // checks, e.g. for SIGUSR1 or a retry after a failure).
            if self.snaps.child_event || self.replica.applied() != applied {
                self.snapshot_progress()?;
            }
            let t4 = Instant::now();
            self.flush_all();
            let t5 = Instant::now();
            self.metrics.loop_pass.observe(t5 - t0);
            let leader = self.replica.core().leader();
            if leader != self.metrics.last_leader {
                if leader.is_some() {
                    self.metrics.leader_changes += 1;
                }
                self.metrics.last_leader = leader;
            }
            if t5 - t0 >= SLOW_PASS {
                // Every client of this node waited this long: say where the time went.
                log::warn!(
                    "slow loop pass: {:?} (ticks+snapshots {:?}, {} events {:?}, timers {:?}, \
                     raft ready {:?}, flush {:?})",
                    t5 - t0,
                    t1 - t0,
                    events.iter().count(),
                    t2 - t1,
                    t3 - t2,
                    t4 - t3,
                    t5 - t4
                );
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Events
    // ---------------------------------------------------------------------------------------

    fn dispatch(&mut self, ev: &Event) {
        let token = ev.token();
        match token {
            PEER_LISTENER | CLIENT_LISTENER | REDIS_LISTENER => self.accept(token),
            SNAPSHOT_CHILD => self.snaps.child_event = true,
            HTTP_LISTENER => self.accept_http(),
            _ => {
                if self.http_conns.contains_key(&token) {
                    self.on_http_event(token);
                    return;
                }
                if self.forward.token() == Some(token) {
                    self.on_forward_event();
                    return;
                }
                if let Some(&id) = self.peer_by_token.get(&token) {
                    self.on_peer_event(id, ev);
                    return;
                }
                if ev.is_writable() {
                    self.on_writable(token);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    // A short read may end the reading early only if the event announced no
                    // end-of-file or error (those raise no further edge).
                    self.on_readable(token, !(ev.is_read_closed() || ev.is_error()));
                }
            }
        }
    }

    /// How long until the replica's earliest request deadline.
    fn until_next_deadline(&self) -> Duration {
        let next = match (self.replica.next_deadline(), self.forward.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map_or(MAX_POLL, |d| {
            Duration::from_millis(d.saturating_sub(self.now_ms()))
        })
    }

    fn flush_all(&mut self) {
        self.flush_clients();
        self.flush_forward();
        self.flush_peers();
        // (Paused clients resume in flush_client: every response that lowers `inflight`
        // marks its client dirty, so it passes through there.)
    }

    /// Shutting down: a leader first hands leadership to the most up-to-date voter and keeps
    /// serving until it is no longer leader, at most one election timeout (a transfer not
    /// done by then is dropped by the core), so a rolling restart costs no election timeout.
    /// `handoff` holds the deadline once the transfer started. True when the node may stop.
    fn ready_to_stop(&mut self, handoff: &mut Option<Instant>) -> bool {
        let leader = self.replica.core().role() == crate::raft::Role::Leader;
        match *handoff {
            Some(deadline) => !leader || Instant::now() >= deadline,
            None if !leader => true,
            None => match self.replica.transfer_leader(0) {
                ApplyResult::LeaderTransfer(t) => {
                    log::info!("shutting down: handing leadership to node {} first", t.to);
                    let timeout = self.cfg.tick * self.cfg.election_ticks;
                    *handoff = Some(Instant::now() + timeout);
                    false
                }
                // No other voter (a one-node cluster): nobody to hand over to.
                _ => true,
            },
        }
    }

    fn shutdown(&mut self) -> Result<(), String> {
        log::info!("node {} shutting down", self.cfg.id);
        for mut l in [
            self.peer_listener.take(),
            self.client_listener.take(),
            self.http_listener.take(),
            self.redis_listener.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.replica.shutdown();
        self.deliver_answers();
        // Best effort: one flush of every client's queued responses.
        let tokens: Vec<Token> = self.endpoints.keys().copied().collect();
        for t in tokens {
            self.flush_client(t);
        }
        self.snaps.transfers.receiver().abort();
        self.replica
            .core_mut()
            .store_mut()
            .sync()
            .map_err(|e| format!("syncing the log: {e}"))?;
        self.persist_commit_hint()?;
        log::info!("node {} stopped cleanly", self.cfg.id);
        Ok(())
    }
}
