//! One raftkv node on one thread: a mio event loop gluing sockets, the Raft core, the durable
//! log and the KV state machine.
//!
//! Each loop iteration:
//! 1. poll (timeout = next timer or Raft tick, at most [`MAX_POLL`]);
//! 2. apply every Raft tick owed since the last one, by real time (see [`tick_catch_up`]),
//!    *before* anything is read: a stalled process must see its lease expire before it
//!    answers a request that waited in a socket buffer during the stall;
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
//! Client requests are tracked by proposal index (writes) or read context (reads), each with a
//! deadline timer. If this node stops being leader, pending writes are answered UNCERTAIN (they
//! may still commit; a retry with the same session seq is exactly-once).

pub mod config;
mod ready_shell;
pub mod signal;
mod snap;

pub use config::{parse_peers, PeerSpec, ServerConfig};

use crate::kv::{encode_command, KvStore};
use crate::net::conn::{Conn, ReadStatus};
use crate::net::framing::{self, FrameError};
use crate::net::peer::{Peer, PeerEvent, PeerState};
use crate::net::reactor::{Tokens, CLIENT_LISTENER, PEER_LISTENER, SNAPSHOT_CHILD};
use crate::net::timer::{TimerId, TimerWheel};
use crate::pb::kvpb::{self, ErrorCode};
use crate::raft::{
    ConfState, Config, EntryType, HardState, InitialState, LogStore, Message, ProposeError,
    RawNode, Ready, Role,
};
use crate::snapshot::recover::check_data_dir;
use crate::storage::inspect::{Check, DataDirs};
use crate::storage::{DirLock, HardStateFile, Log, LogOptions, SnapshotStore};
use mio::net::TcpListener;
use mio::{event::Event, Events, Interest, Poll, Token};
use snap::Snapshots;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Socket reads per connection per wake-up before yielding to others (fairness).
const READ_BUDGET: usize = 16;
/// How long a peer connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client connection closed for a framing error may linger to receive our error.
const LINGER: Duration = Duration::from_secs(2);
/// Extra room for peer frames above the client max frame.
const PEER_FRAME_SLACK: usize = 2 << 20;
/// Longest poll sleep (the loop also checks the shutdown flag this often).
const MAX_POLL: Duration = Duration::from_millis(100);

/// What a timer carries. (The Raft tick is not a timer: it is driven from elapsed real time
/// at the top of every loop iteration, see [`Server::catch_up_ticks`].)
#[derive(Debug)]
enum TimerEvent {
    WriteDeadline(u64),
    ReadDeadline(u64),
    Reconnect(u64),
    PersistCommit,
    /// Close a lingering (closing) client connection.
    ForceClose(Token),
    /// Give up on a peer connect attempt that has not completed.
    ConnectTimeout(u64, Token),
}

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
}

enum Endpoint {
    Client(ClientConn),
    /// A connection another node dialled to send us Raft messages.
    PeerIn(Conn),
}

struct PendingWrite {
    token: Token,
    req_id: u64,
    term: u64,
    timer: TimerId,
}

enum ReadOp {
    Get(kvpb::Get),
    Scan(kvpb::Scan),
}

struct PendingRead {
    token: Token,
    req_id: u64,
    op: ReadOp,
    timer: TimerId,
}

type ApplyResult = kvpb::response::Result;

/// A running node.
pub struct Server {
    cfg: ServerConfig,
    poll: Poll,
    peer_listener: Option<TcpListener>,
    client_listener: Option<TcpListener>,
    tokens: Tokens,
    endpoints: HashMap<Token, Endpoint>,
    peers: HashMap<u64, Peer>,
    peer_by_token: HashMap<Token, u64>,
    timers: TimerWheel<TimerEvent>,
    /// When the next Raft tick is due. Ticks keep a fixed phase (`start + k * tick`).
    next_tick: Instant,
    node: RawNode<Log>,
    hs_file: HardStateFile,
    /// The hard state last written to disk.
    saved_hs: HardState,
    /// Newest commit index whose entries are durable here (persisted lazily as a hint).
    commit_hint: u64,
    snaps: Snapshots,
    /// Held for the node's life: the data directory's lock (`DIR/LOCK`).
    _dir_lock: DirLock,
    kv: KvStore,
    applied: u64,
    pending_writes: HashMap<u64, PendingWrite>,
    pending_reads: HashMap<u64, PendingRead>,
    /// Confirmed reads waiting for `applied >= index`: index -> read contexts.
    waiting_reads: BTreeMap<u64, Vec<u64>>,
    next_read_ctx: u64,
    /// Some(term) while this node is leader in `term`.
    leader_term: Option<u64>,
    last_leader: Option<u64>,
    dirty_clients: HashSet<Token>,
    /// Entries appended to the log in the Ready being handled and not yet synced.
    appended_unsynced: bool,
    dirty_peers: HashSet<u64>,
    read_again: Vec<Token>,
    unreachable: HashSet<u64>,
    /// Local listening addresses (resolved, e.g. after binding port 0).
    pub peer_local_addr: std::net::SocketAddr,
    pub client_local_addr: std::net::SocketAddr,
}

/// A loop pass (everything but the wait in poll) taking this long is logged with a breakdown.
const SLOW_PASS: Duration = Duration::from_millis(100);

fn bind(addr: &str, what: &str) -> Result<TcpListener, String> {
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("{what} address {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what} address {addr:?} resolves to nothing"))?;
    TcpListener::bind(sa).map_err(|e| format!("cannot listen on {what} address {addr}: {e}"))
}

/// The Raft ticks owed at `now` when the next one was due at `next_tick`: `(n, new_next)`
/// where `n` is how many to apply (at most `cap`) and `new_next` the next due time, keeping
/// the tick phase (ticks skipped beyond the cap are dropped, not deferred).
fn tick_catch_up(next_tick: Instant, now: Instant, tick: Duration, cap: u64) -> (u64, Instant) {
    if now < next_tick {
        return (0, next_tick);
    }
    let tick_ns = tick.as_nanos().max(1);
    let owed = 1 + (now - next_tick).as_nanos() / tick_ns;
    let skip = u32::try_from(owed).unwrap_or(u32::MAX);
    let new_next = next_tick
        .checked_add(tick.saturating_mul(skip))
        .filter(|&t| t > now)
        .unwrap_or(now + tick);
    (owed.min(u128::from(cap)) as u64, new_next)
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
    }
}

fn error_result(code: ErrorCode, message: impl Into<String>) -> ApplyResult {
    ApplyResult::Error(kvpb::Error {
        code: code as i32,
        message: message.into(),
        ..Default::default()
    })
}

impl Server {
    /// Opens the data directory, restores the state machine (snapshot + committed log
    /// entries), builds the Raft node and binds both listeners.
    pub fn open(cfg: ServerConfig) -> Result<Server, String> {
        let dir = &cfg.data_dir;
        crate::storage::log::create_dir_durable(dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
        // The lock comes first: nothing below may touch a directory another node owns
        // (SnapshotStore::open deletes leftover *.tmp files, the hard state may be rewritten).
        // `Log::open` takes the same kind of lock again on DIR/log.
        let dir_lock = DirLock::acquire(dir).map_err(|e| format!("data dir: {e}"))?;
        let (mut hs_file, disk_hs) = HardStateFile::open(dir).map_err(|e| e.to_string())?;
        let mut hs = disk_hs;
        let snapshots = SnapshotStore::open(&dir.join("snap")).map_err(|e| e.to_string())?;
        let dirs = DataDirs {
            log: dir.join("log"),
            hardstate: Some(dir.join(crate::storage::hardstate::HARDSTATE_FILE)),
            snap: Some(dir.join("snap")),
        };
        crate::storage::log::create_dir_durable(&dirs.log).map_err(|e| e.to_string())?;
        // What this node recovers, or a refusal: the same checks `raftkv-log verify` runs
        // (snapshot::recover). The newest usable snapshot comes back restored.
        let rec = check_data_dir(&dirs, Check::Lenient)
            .map_err(|e| format!("refusing to start from {}: {e}", dir.display()))?;
        for w in &rec.warnings {
            log::warn!("{w}");
        }
        // The commit index in the hard state is written only once its entries are synced:
        // the log may not be cut below it.
        let mut log = Log::open_durable(
            &dirs.log,
            LogOptions {
                segment_size: cfg.segment_size,
            },
            disk_hs.commit,
        )
        .map_err(|e| e.to_string())?;
        if let Some((index, term)) = rec.reset_log {
            log.reset(index, term)
                .map_err(|e| format!("resetting the log to the snapshot: {e}"))?;
        }
        let want = (rec.recovered.first_index, rec.recovered.last_index);
        if (log.first_index(), log.last_index()) != want {
            return Err(format!(
                "internal error: the log opened as {}..={} but the recovery check expected \
                 {}..={}; not starting",
                log.first_index(),
                log.last_index(),
                want.0,
                want.1
            ));
        }
        log::info!("recovered: {}", rec.recovered);

        // State machine: the newest usable snapshot (damaged ones are skipped with a warning;
        // files present but none usable is fatal), then committed entries above it, streamed.
        let mut conf = ConfState {
            voters: cfg.peers.iter().map(|p| p.id).collect(),
            learners: vec![],
        };
        let loaded = rec.snapshot;
        if let Some(l) = &loaded {
            snap::quarantine_newer(&snapshots, &l.path)?;
        }
        let mut latest_snapshot = None;
        let mut kv = match loaded {
            Some(l) => {
                let meta = l.meta;
                log::info!(
                    "restored snapshot {} (index {} term {}, {} keys)",
                    l.path.display(),
                    meta.index,
                    meta.term,
                    l.kv.len()
                );
                if let Some(c) = meta.conf.clone() {
                    conf = c;
                }
                // Everything in the snapshot is committed, and whoever made it saw its term.
                hs.commit = hs.commit.max(meta.index);
                if meta.term > hs.term {
                    hs.term = meta.term;
                    hs.vote = 0;
                }
                latest_snapshot = Some((meta, l.path));
                l.kv
            }
            None => KvStore::new(),
        };
        if hs != disk_hs {
            hs_file
                .save(&hs)
                .map_err(|e| format!("saving hard state: {e}"))?;
        }
        let mut applied = kv.applied();
        // Command bytes above the snapshot count toward the next one (snapshot policy).
        let mut replayed_bytes = 0u64;
        let replay_to = hs.commit.min(log.last_index());
        if replay_to > applied {
            let from = applied + 1;
            if from < log.first_index() {
                // Never skip entries silently (the recovery check refuses this case first).
                return Err(format!(
                    "refusing to start: the state machine is at index {applied} but the log \
                     starts at {}: entries {from}..{} are missing",
                    log.first_index(),
                    log.first_index()
                ));
            }
            log.replay(from, replay_to, &mut |e| {
                if e.entry_type == EntryType::EntryNormal as i32 {
                    kv.apply(e.index, &e.data);
                }
                replayed_bytes += e.data.len() as u64;
                applied = e.index;
                Ok(())
            })
            .map_err(|e| format!("replaying log {from}..={replay_to}: {e}"))?;
            log::info!(
                "replayed log entries {from}..={replay_to} ({} keys)",
                kv.len()
            );
        }

        // Election jitter must differ between nodes and runs; logged so a run can be studied.
        let raft_seed = cfg.id
            ^ (std::process::id() as u64) << 20
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let rcfg = Config {
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            pre_vote: cfg.pre_vote,
            check_quorum: cfg.check_quorum,
            lease_read: cfg.lease_read,
            seed: raft_seed,
            // Bounds the work one loop pass spends on a follower catching up from the log:
            // with only the 256-message cap, a follower 280k entries behind made the leader
            // read and encode ~85 MB of entries in one pass (stalls of 400-635 ms for every
            // client). 2 MiB in flight per follower still streams far faster than it applies.
            max_inflight_bytes: 2 << 20,
            max_msg_bytes: 256 << 10,
            ..Config::new(cfg.id)
        };
        let init = InitialState {
            hard_state: hs,
            conf,
            applied,
        };
        let node = RawNode::new(rcfg, log, init).map_err(|e| format!("raft config: {e}"))?;

        let poll = Poll::new().map_err(|e| format!("creating poll: {e}"))?;
        let mut peer_listener = bind(&cfg.peer_listen, "peer")?;
        let mut client_listener = bind(&cfg.client_listen, "client")?;
        let peer_local_addr = peer_listener.local_addr().map_err(|e| e.to_string())?;
        let client_local_addr = client_listener.local_addr().map_err(|e| e.to_string())?;
        poll.registry()
            .register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        poll.registry()
            .register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)
            .map_err(|e| e.to_string())?;

        let now = Instant::now();
        let mut timers = TimerWheel::new(Duration::from_millis(1), 4096, now);
        timers.insert(now + cfg.commit_persist_interval, TimerEvent::PersistCommit);
        let mut peers = HashMap::new();
        for p in cfg.peers.iter().filter(|p| p.id != cfg.id) {
            peers.insert(p.id, Peer::new(p.id, p.peer_addr.clone(), cfg.peer.clone()));
            timers.insert(now, TimerEvent::Reconnect(p.id));
        }
        log::info!(
            "node {} serving peers on {peer_local_addr}, clients on {client_local_addr}; \
             term {} vote {} commit {} applied {applied}; raft seed {raft_seed}",
            cfg.id,
            hs.term,
            hs.vote,
            hs.commit
        );
        let mut policy = cfg.snapshot_policy.clone();
        if policy.stagger.is_none() {
            // Spread the members' snapshots (see SnapshotPolicy::stagger): rank of our id.
            let mut ids: Vec<u64> = cfg.peers.iter().map(|p| p.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if let Some(slot) = ids.iter().position(|&i| i == cfg.id) {
                policy.stagger = Some((slot as u64, ids.len() as u64));
            }
        }
        let mut snaps = Snapshots::new(snapshots, latest_snapshot, policy, cfg.snapshot_pacing);
        snaps.bytes_since = replayed_bytes;
        let next_tick = now + cfg.tick;
        Ok(Server {
            commit_hint: hs.commit,
            saved_hs: hs,
            cfg,
            poll,
            peer_listener: Some(peer_listener),
            client_listener: Some(client_listener),
            tokens: Tokens::default(),
            endpoints: HashMap::new(),
            peers,
            peer_by_token: HashMap::new(),
            timers,
            next_tick,
            node,
            hs_file,
            snaps,
            _dir_lock: dir_lock,
            kv,
            applied,
            pending_writes: HashMap::new(),
            pending_reads: HashMap::new(),
            waiting_reads: BTreeMap::new(),
            next_read_ctx: 1,
            leader_term: None,
            last_leader: None,
            dirty_clients: HashSet::new(),
            appended_unsynced: false,
            dirty_peers: HashSet::new(),
            read_again: Vec::new(),
            unreachable: HashSet::new(),
            peer_local_addr,
            client_local_addr,
        })
    }

    /// Runs until `shutdown` is set, then shuts down gracefully. An error is fatal (storage
    /// failure, poll failure): the process should exit non-zero.
    pub fn run(mut self, shutdown: &AtomicBool) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        loop {
            if shutdown.load(Ordering::SeqCst) {
                return self.shutdown();
            }
            let now = Instant::now();
            let timeout = if self.read_again.is_empty() {
                self.timers
                    .next_timeout(now)
                    .map_or(MAX_POLL, |d| d.min(MAX_POLL))
                    .min(self.next_tick.saturating_duration_since(now))
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll failed: {e}"));
            }
            // Ticks first: after a stall (SIGSTOP, CPU starvation, a slow fsync) the lease
            // must be judged by the time that really passed, before any request is read.
            let t0 = Instant::now();
            self.catch_up_ticks()?;
            let t1 = Instant::now();
            for ev in events.iter() {
                self.dispatch(ev);
            }
            for token in std::mem::take(&mut self.read_again) {
                self.on_readable(token, false);
            }
            let t2 = Instant::now();
            self.timers.advance(t2, &mut fired);
            for ev in fired.drain(..) {
                self.on_timer(ev)?;
            }
            let t3 = Instant::now();
            let applied = self.kv.applied();
            self.process_ready()?;
            // After apply: a snapshot due now starts now, a finished one is collected now.
            // Nothing can have become due in a pass that applied nothing (the tick still
            // checks, e.g. for SIGUSR1 or a retry after a failure).
            if self.snaps.child_event || self.kv.applied() != applied {
                self.snapshot_progress()?;
            }
            let t4 = Instant::now();
            self.flush_all();
            let t5 = Instant::now();
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
            PEER_LISTENER | CLIENT_LISTENER => self.accept(token),
            SNAPSHOT_CHILD => self.snaps.child_event = true,
            _ => {
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

    fn accept(&mut self, which: Token) {
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

    fn on_peer_event(&mut self, id: u64, ev: &Event) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match peer.on_event(self.poll.registry(), ev) {
            PeerEvent::Nothing | PeerEvent::Connected => {}
            PeerEvent::Failed(delay) => {
                self.peer_by_token.remove(&ev.token());
                self.unreachable.insert(id);
                self.timers
                    .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
            }
        }
    }

    fn connect_peer(&mut self, id: u64) {
        let token = self.tokens.next_token();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.state() != PeerState::Idle {
            return; // a stale reconnect timer: the link is already up or coming up
        }
        match peer.connect(self.poll.registry(), token) {
            Ok(()) => {
                if peer.token() == Some(token) {
                    self.peer_by_token.insert(token, id);
                    // A SYN to a dead host can hang for minutes: bound the attempt.
                    self.timers.insert(
                        Instant::now() + CONNECT_TIMEOUT,
                        TimerEvent::ConnectTimeout(id, token),
                    );
                }
            }
            Err(delay) => {
                self.timers
                    .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
            }
        }
    }

    fn on_writable(&mut self, token: Token) {
        self.flush_client(token);
    }

    /// Reads from a client or inbound peer connection until it would block, its budget is
    /// spent (then it is revisited next iteration) or backpressure pauses it. With
    /// `stop_when_drained`, a short read (see [`ReadStatus::Drained`]) also ends it, saving the
    /// `read` that would only return `WouldBlock`: one syscall per request on a busy leader.
    fn on_readable(&mut self, token: Token, stop_when_drained: bool) {
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

    fn on_frame_error(&mut self, token: Token, is_client: bool, e: FrameError) {
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

    fn close(&mut self, token: Token, why: &str) {
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

    // ---------------------------------------------------------------------------------------
    // Peer messages
    // ---------------------------------------------------------------------------------------

    fn on_peer_frame(&mut self, token: Token, frame: bytes::Bytes) {
        let msg: Message = match framing::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("dropping peer connection {}: {e}", token.0);
                self.close(token, "undecodable peer frame");
                return;
            }
        };
        if msg.to != self.cfg.id || !self.peers.contains_key(&msg.from) {
            log::warn!(
                "ignoring raft message from {} to {} (this is node {})",
                msg.from,
                msg.to,
                self.cfg.id
            );
            return;
        }
        if let Err(e) = crate::net::bounds::check_message(&msg) {
            // Never let an out-of-range index or term reach the core (overflow, panic).
            log::warn!("dropping raft message from node {}: {e}", msg.from);
            return;
        }
        self.node.step(msg);
    }

    fn send_peer(&mut self, msg: Message) {
        let to = msg.to;
        let Some(peer) = self.peers.get_mut(&to) else {
            log::warn!("raft message for unknown node {to} dropped");
            return;
        };
        if peer.send(framing::frame_bytes(&msg)) {
            self.dirty_peers.insert(to);
        } else {
            self.unreachable.insert(to);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Client requests
    // ---------------------------------------------------------------------------------------

    fn on_client_frame(&mut self, token: Token, frame: bytes::Bytes) {
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
    }

    fn on_request(&mut self, token: Token, req: kvpb::Request) {
        use kvpb::command::Op as Cmd;
        use kvpb::request::Op;
        let id = req.id;
        let consistency = req.consistency();
        let (client_id, seq, acked_seq) = (req.client_id, req.seq, req.acked_seq);
        let cmd = |op| kvpb::Command {
            client_id,
            seq,
            acked_seq,
            op: Some(op),
        };
        match req.op {
            None => self.send_response(
                token,
                id,
                error_result(ErrorCode::BadRequest, "empty or unknown request"),
            ),
            Some(Op::Status(_)) => {
                let s = self.status_response();
                self.send_response(token, id, ApplyResult::Status(s));
            }
            Some(Op::Put(p)) if !p.key.is_empty() => self.propose(token, id, cmd(Cmd::Put(p))),
            Some(Op::Delete(d)) if !d.key.is_empty() => {
                self.propose(token, id, cmd(Cmd::Delete(d)))
            }
            Some(Op::Cas(c)) if !c.key.is_empty() => self.propose(token, id, cmd(Cmd::Cas(c))),
            Some(Op::Get(g)) if !g.key.is_empty() => {
                self.read(token, id, consistency, ReadOp::Get(g))
            }
            Some(Op::Scan(s)) => self.read(token, id, consistency, ReadOp::Scan(s)),
            Some(_) => {
                self.send_response(token, id, error_result(ErrorCode::BadRequest, "empty key"))
            }
        }
    }

    /// The NOT_LEADER / UNAVAILABLE error for a refused proposal or read.
    fn refusal(&self, e: ProposeError) -> ApplyResult {
        match e {
            ProposeError::NotLeader { leader } => {
                let leader_id = leader.filter(|&l| l != self.cfg.id).unwrap_or(0);
                ApplyResult::Error(kvpb::Error {
                    code: ErrorCode::NotLeader as i32,
                    message: match leader_id {
                        0 => "not the leader; leader unknown".into(),
                        l => format!("not the leader; try node {l}"),
                    },
                    leader_id,
                    leader_addr: self
                        .cfg
                        .client_addr_of(leader_id)
                        .unwrap_or_default()
                        .to_string(),
                })
            }
            ProposeError::TransferInProgress => {
                error_result(ErrorCode::Unavailable, "leadership transfer in progress")
            }
            ProposeError::NoLease => error_result(ErrorCode::Unavailable, "no leader lease"),
            ProposeError::Overloaded => error_result(
                ErrorCode::Unavailable,
                "too many uncommitted writes; retry later",
            ),
        }
    }

    fn propose(&mut self, token: Token, req_id: u64, cmd: kvpb::Command) {
        match self.node.propose(encode_command(&cmd)) {
            Ok(index) => {
                let term = self.node.status().term;
                let timer = self.timers.insert(
                    Instant::now() + self.cfg.request_timeout,
                    TimerEvent::WriteDeadline(index),
                );
                let p = PendingWrite {
                    token,
                    req_id,
                    term,
                    timer,
                };
                if let Some(old) = self.pending_writes.insert(index, p) {
                    // Cannot happen while pending writes are cleared on leadership loss;
                    // answer conservatively if it ever does.
                    self.timers.cancel(old.timer);
                    self.send_response(
                        old.token,
                        old.req_id,
                        error_result(ErrorCode::Uncertain, "proposal superseded"),
                    );
                }
            }
            Err(e) => {
                let r = self.refusal(e);
                self.send_response(token, req_id, r);
            }
        }
    }

    fn read(&mut self, token: Token, req_id: u64, c: kvpb::Consistency, op: ReadOp) {
        use kvpb::Consistency;
        match c {
            Consistency::Stale => {
                let r = self.serve_read(&op);
                self.send_response(token, req_id, r);
            }
            // The lease is measured in ticks: while a tick is overdue (this iteration took
            // long, or the process stalled after the catch-up) it may be stale. ReadIndex is
            // always safe.
            Consistency::Lease if self.cfg.lease_read && self.tick_overdue() => {
                self.read_index(token, req_id, op)
            }
            Consistency::Lease if self.cfg.lease_read => match self.node.lease_read() {
                Ok(index) => {
                    let ctx = self.track_read(token, req_id, op);
                    self.waiting_reads.entry(index).or_default().push(ctx);
                    self.serve_waiting_reads();
                }
                // No valid lease right now: fall back to ReadIndex.
                Err(ProposeError::NoLease) => self.read_index(token, req_id, op),
                Err(e) => {
                    let r = self.refusal(e);
                    self.send_response(token, req_id, r);
                }
            },
            // LINEARIZABLE, and LEASE when lease reads are off.
            _ => self.read_index(token, req_id, op),
        }
    }

    fn read_index(&mut self, token: Token, req_id: u64, op: ReadOp) {
        // `track_read` registers the read under exactly this context.
        let ctx = self.next_read_ctx;
        match self.node.read_index(ctx) {
            Ok(()) => {
                self.track_read(token, req_id, op);
            }
            Err(e) => {
                let r = self.refusal(e);
                self.send_response(token, req_id, r);
            }
        }
    }

    /// Registers a pending read under a fresh context, with its deadline.
    fn track_read(&mut self, token: Token, req_id: u64, op: ReadOp) -> u64 {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let timer = self.timers.insert(
            Instant::now() + self.cfg.request_timeout,
            TimerEvent::ReadDeadline(ctx),
        );
        self.pending_reads.insert(
            ctx,
            PendingRead {
                token,
                req_id,
                op,
                timer,
            },
        );
        ctx
    }

    fn serve_read(&self, op: &ReadOp) -> ApplyResult {
        match op {
            ReadOp::Get(g) => ApplyResult::Get(self.kv.get(&g.key)),
            ReadOp::Scan(s) => ApplyResult::Scan(self.kv.scan(s)),
        }
    }

    /// Answers every confirmed read whose index has been applied.
    fn serve_waiting_reads(&mut self) {
        while let Some(entry) = self.waiting_reads.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for ctx in entry.remove() {
                if let Some(p) = self.pending_reads.remove(&ctx) {
                    self.timers.cancel(p.timer);
                    let r = self.serve_read(&p.op);
                    self.send_response(p.token, p.req_id, r);
                }
            }
        }
    }

    fn status_response(&self) -> kvpb::StatusResponse {
        let st = self.node.status();
        let store = self.node.store();
        let leader_id = st.leader.unwrap_or(0);
        kvpb::StatusResponse {
            node_id: self.cfg.id,
            role: role_name(st.role).into(),
            term: st.term,
            leader_id,
            commit_index: st.commit,
            applied_index: self.applied,
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
        }
    }

    /// Queues a response on a client connection (dropped if the client is gone).
    fn send_response(&mut self, token: Token, id: u64, result: ApplyResult) {
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

    fn flush_client(&mut self, token: Token) {
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
                if c.paused && c.conn.pending_out() <= max_out && c.inflight < max_inflight {
                    c.paused = false;
                    self.read_again.push(token);
                }
            }
            Err(e) => self.close(token, &format!("write error: {e}")),
        }
    }

    fn flush_clients(&mut self) {
        for token in std::mem::take(&mut self.dirty_clients) {
            self.flush_client(token);
        }
    }

    fn flush_all(&mut self) {
        self.flush_clients();
        self.flush_peers();
        // (Paused clients resume in flush_client: every response that lowers `inflight`
        // marks its client dirty, so it passes through there.)
    }

    /// Writes every peer queue that has new messages.
    fn flush_peers(&mut self) {
        for id in std::mem::take(&mut self.dirty_peers) {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let token = peer.token();
            if let Err(delay) = peer.flush(self.poll.registry()) {
                if let Some(t) = token {
                    self.peer_by_token.remove(&t);
                }
                self.unreachable.insert(id);
                self.timers
                    .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Timers
    // ---------------------------------------------------------------------------------------

    /// Applies every Raft tick owed by real time since the last one (at most
    /// `2 * election_ticks + 1` after a long stall: that many already expire the lease and make
    /// a leader run its CheckQuorum check). Called right after poll, before sockets are read.
    fn catch_up_ticks(&mut self) -> Result<(), String> {
        let cap = 2 * u64::from(self.cfg.election_ticks) + 1;
        let (n, next) = tick_catch_up(self.next_tick, Instant::now(), self.cfg.tick, cap);
        if n == 0 {
            return Ok(());
        }
        if n > 1 {
            log::debug!("node {}: catching up {n} overdue ticks", self.cfg.id);
        }
        for _ in 0..n {
            self.node.tick();
        }
        self.next_tick = next;
        self.snapshot_tick()
    }

    /// True while a Raft tick is due but not yet applied: the lease clock lags real time, so
    /// a lease read must not be answered from it.
    fn tick_overdue(&self) -> bool {
        Instant::now() >= self.next_tick
    }

    fn on_timer(&mut self, ev: TimerEvent) -> Result<(), String> {
        match ev {
            TimerEvent::WriteDeadline(index) => {
                if let Some(p) = self.pending_writes.remove(&index) {
                    self.send_response(
                        p.token,
                        p.req_id,
                        error_result(
                            ErrorCode::Timeout,
                            "write not committed in time; it may or may not apply",
                        ),
                    );
                }
            }
            TimerEvent::ReadDeadline(ctx) => {
                if let Some(p) = self.pending_reads.remove(&ctx) {
                    self.send_response(
                        p.token,
                        p.req_id,
                        error_result(ErrorCode::Timeout, "read not confirmed in time"),
                    );
                }
            }
            TimerEvent::Reconnect(id) => self.connect_peer(id),
            TimerEvent::ForceClose(token) => self.close(token, "linger timeout"),
            TimerEvent::ConnectTimeout(id, token) => {
                if let Some(peer) = self.peers.get_mut(&id) {
                    if peer.token() == Some(token) && peer.state() == PeerState::Connecting {
                        log::debug!("peer {id}: connect timed out");
                        let delay = peer.teardown(self.poll.registry());
                        self.peer_by_token.remove(&token);
                        self.unreachable.insert(id);
                        self.timers
                            .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
                    }
                }
            }
            TimerEvent::PersistCommit => {
                self.persist_commit_hint()?;
                self.timers.insert(
                    Instant::now() + self.cfg.commit_persist_interval,
                    TimerEvent::PersistCommit,
                );
            }
        }
        Ok(())
    }

    /// Writes the commit index to the hard state file if it advanced (a restart hint: it lets
    /// a restarting node replay committed entries into the KV store before it hears from a
    /// leader). Only commit indexes whose entries are already synced are written.
    fn persist_commit_hint(&mut self) -> Result<(), String> {
        if self.commit_hint > self.saved_hs.commit {
            let hs = HardState {
                commit: self.commit_hint,
                ..self.saved_hs
            };
            self.hs_file
                .save(&hs)
                .map_err(|e| format!("saving hard state: {e}"))?;
            self.saved_hs = hs;
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Ready handling
    // ---------------------------------------------------------------------------------------

    fn process_ready(&mut self) -> Result<(), String> {
        let mut any = false;
        while self.node.has_ready() {
            any = true;
            let rd = self.node.ready();
            self.handle_ready(rd)?;
        }
        if !self.unreachable.is_empty() {
            for id in std::mem::take(&mut self.unreachable) {
                self.node.report_unreachable(id);
            }
        }
        if any {
            self.check_leadership();
        }
        Ok(())
    }

    /// Applies committed entries (answering their clients), then serves the reads they unblock.
    fn apply_and_serve(
        &mut self,
        committed: Vec<crate::raft::Entry>,
        reads: Vec<crate::raft::ReadState>,
        failed_reads: Vec<u64>,
    ) {
        let mut applied_any = false;
        for e in committed {
            if e.index <= self.applied {
                continue;
            }
            self.snaps.bytes_since += e.data.len() as u64;
            let result = if e.entry_type == EntryType::EntryNormal as i32 {
                self.kv.apply(e.index, &e.data)
            } else {
                log::info!("config change entry at index {} ignored", e.index);
                None
            };
            self.applied = e.index;
            applied_any = true;
            if let Some(p) = self.pending_writes.remove(&e.index) {
                self.timers.cancel(p.timer);
                let r = if p.term == e.term {
                    result.unwrap_or_else(|| {
                        error_result(ErrorCode::Internal, "write applied without a result")
                    })
                } else {
                    // Another leader's entry took this index; ours was not applied here (it
                    // was lost, or a retry of it may yet apply elsewhere).
                    error_result(
                        ErrorCode::Uncertain,
                        "leadership changed before the write committed",
                    )
                };
                self.send_response(p.token, p.req_id, r);
            }
        }
        if applied_any {
            self.node.on_applied(self.applied);
        }

        // Reads.
        for rs in reads {
            self.waiting_reads.entry(rs.index).or_default().push(rs.ctx);
        }
        self.serve_waiting_reads();
        for ctx in failed_reads {
            if let Some(p) = self.pending_reads.remove(&ctx) {
                self.timers.cancel(p.timer);
                self.send_response(
                    p.token,
                    p.req_id,
                    error_result(ErrorCode::Unavailable, "leadership lost during the read"),
                );
            }
        }
    }

    /// One Ready in the production order: the node layer's phases (`src/node/ready.rs`) over
    /// this server's sockets, log and hard state file (`ready_shell.rs`). The sync here is
    /// synchronous, so the node layer never leaves part of it pending.
    fn handle_ready(&mut self, rd: Ready) -> Result<(), String> {
        self.appended_unsynced = false;
        let pending = crate::node::handle_ready(self, rd)?;
        debug_assert!(pending.is_none(), "the server's sync is synchronous");
        Ok(())
    }

    /// Notices leadership changes; answers writes pending from a lost leadership UNCERTAIN.
    fn check_leadership(&mut self) {
        let st = self.node.status();
        let leading = (st.role == Role::Leader).then_some(st.term);
        if leading != self.leader_term {
            self.snaps.drop_senders();
            if let Some(t) = self.leader_term {
                log::info!("node {} lost leadership of term {t}", self.cfg.id);
                self.fail_pending(
                    ErrorCode::Uncertain,
                    "leadership lost; the write may or may not apply",
                );
            }
            if let Some(t) = leading {
                log::info!("node {} became leader in term {t}", self.cfg.id);
            }
            self.leader_term = leading;
        }
        if st.leader != self.last_leader {
            if let Some(l) = st.leader.filter(|&l| l != self.cfg.id) {
                log::info!(
                    "node {} following leader {l} in term {}",
                    self.cfg.id,
                    st.term
                );
            }
            self.last_leader = st.leader;
        }
    }

    /// Answers every pending write, and every read not yet confirmed, with `code`.
    fn fail_pending(&mut self, code: ErrorCode, msg: &str) {
        for (_, p) in std::mem::take(&mut self.pending_writes) {
            self.timers.cancel(p.timer);
            self.send_response(p.token, p.req_id, error_result(code, msg));
        }
        let confirmed: HashSet<u64> = self.waiting_reads.values().flatten().copied().collect();
        let unconfirmed: Vec<u64> = self
            .pending_reads
            .keys()
            .filter(|c| !confirmed.contains(c))
            .copied()
            .collect();
        for ctx in unconfirmed {
            if let Some(p) = self.pending_reads.remove(&ctx) {
                self.timers.cancel(p.timer);
                self.send_response(
                    p.token,
                    p.req_id,
                    error_result(ErrorCode::Unavailable, "leadership lost during the read"),
                );
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Shutdown
    // ---------------------------------------------------------------------------------------

    fn shutdown(&mut self) -> Result<(), String> {
        log::info!("node {} shutting down", self.cfg.id);
        for mut l in [self.peer_listener.take(), self.client_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let msg = "the server is shutting down; a write may or may not have been applied";
        self.fail_pending(ErrorCode::ShuttingDown, msg);
        for (_, p) in std::mem::take(&mut self.pending_reads) {
            self.send_response(
                p.token,
                p.req_id,
                error_result(ErrorCode::ShuttingDown, "the server is shutting down"),
            );
        }
        // Best effort: one flush of every client's queued responses.
        let tokens: Vec<Token> = self.endpoints.keys().copied().collect();
        for t in tokens {
            self.flush_client(t);
        }
        self.snaps.receiver.abort();
        self.node
            .store_mut()
            .sync()
            .map_err(|e| format!("syncing the log: {e}"))?;
        self.persist_commit_hint()?;
        log::info!("node {} stopped cleanly", self.cfg.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // How the log is reconciled with the snapshot at startup is tested with
    // `snapshot::recover::check_data_dir` in tests/recovery.rs.

    #[test]
    fn ticks_are_caught_up_by_elapsed_time_with_a_cap() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(50);
        let ms = Duration::from_millis;
        // Not due yet.
        assert_eq!(tick_catch_up(t0, t0 - ms(1), tick, 21), (0, t0));
        // Due exactly, or a little late: one tick, phase kept.
        assert_eq!(tick_catch_up(t0, t0, tick, 21), (1, t0 + tick));
        assert_eq!(tick_catch_up(t0, t0 + ms(49), tick, 21), (1, t0 + tick));
        // A 1 s stall owes 21 ticks (the one due at t0 and 20 more).
        assert_eq!(
            tick_catch_up(t0, t0 + ms(1000), tick, 100),
            (21, t0 + ms(1050))
        );
        // A long stall is capped; the skipped ticks are dropped, not deferred.
        let (n, next) = tick_catch_up(t0, t0 + ms(60_000), tick, 21);
        assert_eq!(n, 21);
        assert_eq!(next, t0 + ms(60_050));
    }
}
