//! Starting a node: lock the data directory, run the recovery check (`snapshot::recover`,
//! the same one `raftkv-log verify` runs), open the log, restore the newest usable snapshot,
//! replay the committed entries above it, build the Raft core and the replica, bind the
//! listeners and schedule the first peer connects.

use super::snap::{self, Snapshots};
use super::timers::TimerEvent;
use super::{Server, ServerConfig};
use crate::kv::KvStore;
use crate::net::peer::Peer;
use crate::net::reactor::{Tokens, CLIENT_LISTENER, HTTP_LISTENER, PEER_LISTENER, REDIS_LISTENER};
use crate::net::timer::TimerWheel;
use crate::node::{Replica, ReplicaConfig};
use crate::raft::{
    ConfState, Config, EntryType, HardState, InitialState, LogStore, RawNode, SnapshotMeta,
};
use crate::snapshot::recover::{check_data_dir, Recovery};
use crate::storage::inspect::{Check, DataDirs};
use crate::storage::{DirLock, HardStateFile, Log, LogOptions, SnapshotStore};
use mio::net::TcpListener;
use mio::{Interest, Poll};
use std::collections::{HashMap, HashSet};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Binds a listener on `addr` (the `what` names it in errors).
fn bind(addr: &str, what: &str) -> Result<TcpListener, String> {
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("{what} address {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what} address {addr:?} resolves to nothing"))?;
    TcpListener::bind(sa).map_err(|e| format!("cannot listen on {what} address {addr}: {e}"))
}

/// What a node recovers from its data directory.
struct Recovered {
    dir_lock: DirLock,
    hs_file: HardStateFile,
    /// The hard state to start from (the snapshot's commit and term folded in; saved).
    hs: HardState,
    log: Log,
    snapshots: SnapshotStore,
    /// The newest usable snapshot and its file.
    latest: Option<(SnapshotMeta, PathBuf)>,
    kv: KvStore,
    /// Index of the last entry applied to `kv` (snapshot, then replayed committed entries).
    applied: u64,
    /// The snapshot's configuration, or the bootstrap one from `--peers` (the core reads the
    /// configuration entries above it from the log itself).
    conf: ConfState,
    /// The newest configuration applied: the snapshot's, or the last configuration entry
    /// replayed (what the next snapshot records).
    applied_conf: (u64, ConfState),
    /// Command bytes replayed above the snapshot (they count toward the next one).
    replayed_bytes: u64,
}

/// The data directory opened and checked, before the state machine is restored.
struct Storage {
    dir_lock: DirLock,
    hs_file: HardStateFile,
    /// The hard state as found on disk.
    disk_hs: HardState,
    snapshots: SnapshotStore,
    log: Log,
    rec: Recovery,
}

/// Locks the data directory, runs the recovery check (the same `raftkv-log verify` runs:
/// `snapshot::recover`) and opens the log as the check found it. Refuses with a reason.
fn open_storage(cfg: &ServerConfig) -> Result<Storage, String> {
    let dir = &cfg.data_dir;
    crate::storage::log::create_dir_durable(dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    // The lock comes first: nothing below may touch a directory another node owns
    // (SnapshotStore::open deletes leftover *.tmp files, the hard state may be rewritten).
    // It covers DIR/log too: the log is opened under it (`Log::open_in`) and locks nothing.
    let dir_lock = DirLock::acquire(dir).map_err(|e| format!("data dir: {e}"))?;
    let (hs_file, disk_hs) = HardStateFile::open(dir).map_err(|e| e.to_string())?;
    let snapshots = SnapshotStore::open(&dir.join("snap")).map_err(|e| e.to_string())?;
    let dirs = DataDirs {
        log: dir.join("log"),
        hardstate: Some(dir.join(crate::storage::hardstate::HARDSTATE_FILE)),
        snap: Some(dir.join("snap")),
    };
    crate::storage::log::create_dir_durable(&dirs.log).map_err(|e| e.to_string())?;
    // What this node recovers, or a refusal. The newest usable snapshot comes back restored.
    let rec = check_data_dir(&dirs, Check::Lenient)
        .map_err(|e| format!("refusing to start from {}: {e}", dir.display()))?;
    for w in &rec.warnings {
        log::warn!("{w}");
    }
    // The commit index in the hard state is written only once its entries are synced: the
    // log may not be cut below it.
    let opts = LogOptions {
        segment_size: cfg.segment_size,
    };
    let mut log =
        Log::open_in(&dirs.log, opts, disk_hs.commit, &dir_lock).map_err(|e| e.to_string())?;
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
    debug_assert_eq!(log.check_invariants(), Ok(()));
    log::info!("recovered: {}", rec.recovered);
    Ok(Storage {
        dir_lock,
        hs_file,
        disk_hs,
        snapshots,
        log,
        rec,
    })
}

/// Recovers everything: storage, then the state machine from the newest usable snapshot
/// (damaged newer ones are moved aside) and the committed entries above it.
fn recover(cfg: &ServerConfig) -> Result<Recovered, String> {
    let Storage {
        dir_lock,
        mut hs_file,
        disk_hs,
        snapshots,
        log,
        rec,
    } = open_storage(cfg)?;
    let mut hs = disk_hs;
    let mut conf = initial_conf(cfg);
    let mut latest = None;
    let kv = match rec.snapshot {
        Some(l) => {
            snap::quarantine_newer(&snapshots, &l.path)?;
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
            latest = Some((meta, l.path));
            l.kv
        }
        None => KvStore::new(),
    };
    if hs != disk_hs {
        hs_file
            .save(&hs)
            .map_err(|e| format!("saving hard state: {e}"))?;
    }
    let mut r = Recovered {
        dir_lock,
        hs_file,
        hs,
        log,
        snapshots,
        latest,
        applied: kv.applied(),
        applied_conf: (kv.applied(), conf.clone()),
        kv,
        conf,
        replayed_bytes: 0,
    };
    replay(&mut r)?;
    Ok(r)
}

/// The configuration this node starts from when its data directory holds none: `--peers`
/// (`config::bootstrap_conf`), unless it joins or `--peers` does not name it (a joined node
/// restarted): then empty, and it learns the configuration from the leader's log or snapshot.
fn initial_conf(cfg: &ServerConfig) -> ConfState {
    if cfg.join || !cfg.peers.iter().any(|p| p.id == cfg.id) {
        return ConfState::default();
    }
    super::config::bootstrap_conf(&cfg.peers)
}

/// Applies the committed entries above the snapshot to the state machine, streamed.
fn replay(r: &mut Recovered) -> Result<(), String> {
    let replay_to = r.hs.commit.min(r.log.last_index());
    if replay_to <= r.applied {
        return Ok(());
    }
    let from = r.applied + 1;
    if from < r.log.first_index() {
        // Never skip entries silently (the recovery check refuses this case first).
        return Err(format!(
            "refusing to start: the state machine is at index {} but the log starts at {}: \
             entries {from}..{} are missing",
            r.applied,
            r.log.first_index(),
            r.log.first_index()
        ));
    }
    let (kv, applied, bytes) = (&mut r.kv, &mut r.applied, &mut r.replayed_bytes);
    let applied_conf = &mut r.applied_conf;
    r.log
        .replay(from, replay_to, &mut |e| {
            if e.entry_type == EntryType::EntryNormal as i32 {
                kv.apply(e.index, &e.data);
            } else if let Ok(c) = <ConfState as prost::Message>::decode(&e.data[..]) {
                *applied_conf = (e.index, c);
            }
            *bytes += e.data.len() as u64;
            *applied = e.index;
            Ok(())
        })
        .map_err(|e| format!("replaying log {from}..={replay_to}: {e}"))?;
    log::info!(
        "replayed log entries {from}..={replay_to} ({} keys)",
        r.kv.len()
    );
    Ok(())
}

/// The core's configuration from the server's.
fn raft_config(cfg: &ServerConfig) -> Config {
    // Election jitter must differ between nodes and runs; logged so a run can be studied.
    let seed = cfg.id
        ^ (std::process::id() as u64) << 20
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    Config {
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        pre_vote: cfg.pre_vote,
        check_quorum: cfg.check_quorum,
        lease_read: cfg.lease_read,
        seed,
        // Bounds the work one loop pass spends on a follower catching up from the log:
        // with only the 256-message cap, a follower 280k entries behind made the leader
        // read and encode ~85 MB of entries in one pass (stalls of 400-635 ms for every
        // client). 2 MiB in flight per follower still streams far faster than it applies.
        max_inflight_bytes: 2 << 20,
        max_msg_bytes: 256 << 10,
        ..Config::new(cfg.id)
    }
}

/// The node layer's settings from the server's.
fn replica_config(cfg: &ServerConfig) -> ReplicaConfig {
    ReplicaConfig {
        request_timeout_ms: u64::try_from(cfg.request_timeout.as_millis()).unwrap_or(u64::MAX),
        lease_read: cfg.lease_read,
        follower_reads: cfg.follower_reads,
        max_scan_bytes: crate::limits::max_scan_page(cfg.max_frame),
        max_read_bytes_per_pass: super::config::READ_BYTES_PER_PASS,
        promotion: cfg.promotion,
        max_client_output: cfg.max_client_pending_bytes,
        client_addrs: cfg
            .peers
            .iter()
            .filter_map(|p| Some((p.id, cfg.client_addr_of(p.id)?.to_string())))
            .collect(),
    }
}

/// The poll and both listeners, registered.
fn listen(cfg: &ServerConfig) -> Result<(Poll, TcpListener, TcpListener), String> {
    let poll = Poll::new().map_err(|e| format!("creating poll: {e}"))?;
    let mut peer_listener = bind(&cfg.peer_listen, "peer")?;
    let mut client_listener = bind(&cfg.client_listen, "client")?;
    poll.registry()
        .register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    Ok((poll, peer_listener, client_listener))
}

/// An optional listener (HTTP, RESP), registered under `token`, if its address was given;
/// with its bound address.
fn listen_optional(
    addr: Option<&str>,
    what: &str,
    token: mio::Token,
    poll: &Poll,
) -> Result<(Option<TcpListener>, Option<std::net::SocketAddr>), String> {
    let Some(addr) = addr else {
        return Ok((None, None));
    };
    let mut l = bind(addr, what)?;
    poll.registry()
        .register(&mut l, token, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    Ok((Some(l), Some(local)))
}

/// The timer wheel with its first timers, and one link per other member (connected at once).
fn timers_and_peers(
    cfg: &ServerConfig,
    now: Instant,
) -> (TimerWheel<TimerEvent>, HashMap<u64, Peer>) {
    let mut timers = TimerWheel::new(Duration::from_millis(1), 4096, now);
    timers.insert(now + cfg.commit_persist_interval, TimerEvent::PersistCommit);
    timers.insert(now, TimerEvent::SpaceCheck);
    let mut peers = HashMap::new();
    for p in cfg.peers.iter().filter(|p| p.id != cfg.id) {
        let secrets = cfg.peer_secrets.clone();
        let peer = Peer::new(p.id, p.peer_addr.clone(), cfg.peer.clone(), secrets);
        peers.insert(p.id, peer);
        timers.insert(now, TimerEvent::Reconnect(p.id));
    }
    (timers, peers)
}

/// The snapshot policy with this member's stagger slot (the rank of its id among the
/// members, see `SnapshotPolicy::stagger`) unless one was configured.
fn snapshot_policy(cfg: &ServerConfig) -> crate::snapshot::SnapshotPolicy {
    let mut policy = cfg.snapshot_policy.clone();
    if policy.stagger.is_none() {
        let mut ids: Vec<u64> = cfg.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if let Some(slot) = ids.iter().position(|&i| i == cfg.id) {
            policy.stagger = Some((slot as u64, ids.len() as u64));
        }
    }
    policy
}

impl Server {
    /// Opens the data directory, restores the state machine (snapshot + committed log
    /// entries), builds the Raft node and binds both listeners.
    pub fn open(cfg: ServerConfig) -> Result<Server, String> {
        let r = recover(&cfg)?;
        let cluster_id = super::identity::load_cluster_id(&cfg)?;
        if cfg.peer_secrets.is_insecure() {
            log::warn!(
                "node {}: --insecure-peers: any process that can reach the peer port can \
                 speak Raft to this node as any member (only the cluster id is checked)",
                cfg.id
            );
        }
        let (hs, applied) = (r.hs, r.applied);
        let raft_cfg = raft_config(&cfg);
        let raft_seed = raft_cfg.seed;
        let init = InitialState {
            hard_state: hs,
            conf: r.conf,
            applied,
        };
        let core = RawNode::new(raft_cfg, r.log, init).map_err(|e| format!("raft config: {e}"))?;
        let replica = Replica::new(core, r.kv, applied, r.applied_conf, replica_config(&cfg));
        let (poll, peer_listener, client_listener) = listen(&cfg)?;
        let peer_local_addr = peer_listener.local_addr().map_err(|e| e.to_string())?;
        let client_local_addr = client_listener.local_addr().map_err(|e| e.to_string())?;
        let (http_listener, http_local_addr) =
            listen_optional(cfg.http_listen.as_deref(), "HTTP", HTTP_LISTENER, &poll)?;
        let (redis_listener, redis_local_addr) =
            listen_optional(cfg.redis_listen.as_deref(), "RESP", REDIS_LISTENER, &poll)?;
        if let Some(a) = redis_local_addr {
            log::info!("node {} serving RESP (Redis protocol) on {a}", cfg.id);
        }
        if let Some(a) = http_local_addr {
            log::info!(
                "node {} serving HTTP on http://{a}/ (livez, readyz, status, metrics)",
                cfg.id
            );
        }
        let now = Instant::now();
        let (timers, peers) = timers_and_peers(&cfg, now);
        log::info!(
            "node {} serving peers on {peer_local_addr}, clients on {client_local_addr}; \
             term {} vote {} commit {} applied {applied}; raft seed {raft_seed}",
            cfg.id,
            hs.term,
            hs.vote,
            hs.commit
        );
        let policy = snapshot_policy(&cfg);
        let mut snaps = Snapshots::new(r.snapshots, r.latest, policy, cfg.snapshot_pacing);
        snaps.bytes_since = r.replayed_bytes;
        let resp_session_base = super::resp_conn::session_base(cfg.id);
        let mut server = Server {
            commit_hint: hs.commit,
            saved_hs: hs,
            next_tick: now + cfg.tick,
            cfg,
            poll,
            peer_listener: Some(peer_listener),
            client_listener: Some(client_listener),
            http_listener,
            redis_listener,
            forward: Default::default(),
            resp_session_base,
            http_conns: Default::default(),
            metrics: Default::default(),
            tokens: Tokens::default(),
            endpoints: Default::default(),
            peers,
            removed_addrs: HashMap::new(),
            peer_by_token: Default::default(),
            cluster_id,
            auth_log: crate::logger::RateLimit::new(Duration::from_secs(1)),
            client_auth_log: crate::logger::RateLimit::new(Duration::from_secs(1)),
            timers,
            replica,
            clock_start: now,
            answer_buf: Vec::new(),
            hs_file: r.hs_file,
            snaps,
            space: Default::default(),
            _dir_lock: r.dir_lock,
            dirty_clients: Default::default(),
            clients: 0,
            appended_unsynced: false,
            dirty_peers: HashSet::new(),
            read_again: Vec::new(),
            unreachable: HashSet::new(),
            peer_local_addr,
            client_local_addr,
            http_local_addr,
            redis_local_addr,
        };
        // Members added (or removed) by configuration entries since `--peers` was written.
        let conf = server.replica.core().conf_state().1.clone();
        server.update_peer_links(&conf);
        Ok(server)
    }
}
