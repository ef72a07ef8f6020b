//! The `raftkv` binary: run a node (`serve`), a local cluster (`cluster`), or talk to a
//! cluster (`put`, `get`, `del`, `cas`, `scan`, `status`).
//!
//! Exit codes of the client commands (stable, for scripts):
//! - 0: success
//! - 1: key not found (get, del), CAS failed (cas)
//! - 2: usage error (bad flags or arguments)
//! - 3: cluster unavailable: timeout, no leader, connection refused, outcome uncertain
//! - 4: request rejected by the server (bad request, too large, internal error)

use clap::{Args, Parser, Subcommand, ValueEnum};
use raftkv::client::{Client, ClientError, ClientOptions};
use raftkv::pb::kvpb::{self, ErrorCode};
use raftkv::server::{config::format_peers, parse_peers, PeerSpec, Server, ServerConfig};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Default client endpoints: the client ports `raftkv cluster` uses by default.
const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

const EXIT_OK: u8 = 0;
const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 3;
const EXIT_REJECTED: u8 = 4;

#[derive(Parser)]
#[command(
    name = "raftkv",
    version,
    args_override_self = true,
    about = "A Raft-replicated key-value store",
    after_help = "Quick start:\n  raftkv cluster                 # 3 local nodes, Ctrl-C stops them\n  raftkv put greeting hello\n  raftkv get greeting\n\n\
Client exit codes: 0 ok, 1 not found / CAS failed, 2 usage error,\n3 unavailable / timeout / uncertain, 4 rejected by the server."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node. Signals: SIGTERM/SIGINT shut it down cleanly; SIGUSR1 takes a snapshot now.
    Serve(ServeArgs),
    /// Run a local cluster of `serve` child processes on loopback (Ctrl-C stops them all).
    /// Re-running with the same --dir and --base-port restarts the same cluster, data intact.
    Cluster(ClusterArgs),
    /// Set KEY to VALUE.
    Put {
        /// The key (UTF-8 text).
        key: String,
        /// The value to store.
        value: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Print the value of KEY (exit 1 if absent).
    Get {
        /// The key to read.
        key: String,
        /// Read consistency: linearizable (ReadIndex via the leader), lease (leader lease,
        /// needs `serve --lease-reads`), stale (any node's local state).
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete KEY (exit 1 if it was absent).
    Del {
        /// The key to delete.
        key: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Compare-and-swap: set KEY to VALUE (or delete it with --delete) only if its current
    /// version is --expect-version (0 = must be absent). Exit 1 if the comparison failed.
    Cas {
        /// The key to compare and set.
        key: String,
        /// New value (omit with --delete).
        value: Option<String>,
        /// Version the key must have now (the `version` printed by get/put; 0 = absent).
        #[arg(long)]
        expect_version: u64,
        /// Delete the key instead of setting it.
        #[arg(long)]
        delete: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List keys in [--start, --end) or with --prefix, in key order.
    Scan {
        /// Only keys starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// First key (inclusive); also resumes a scan from a printed continuation key.
        #[arg(long, default_value = "")]
        start: String,
        /// End key (exclusive; empty = unbounded).
        #[arg(long, default_value = "")]
        end: String,
        /// Max pairs per request (0 = server default).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        /// Keep scanning past the first page until the range is exhausted.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show every endpoint's Raft status (role, term, leader, commit/applied, log range,
    /// and on the leader each peer's match index). Exit 3 if no endpoint answered.
    Status {
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Args)]
struct ClientArgs {
    /// Comma-separated client endpoints HOST:PORT (any node; requests follow the leader).
    #[arg(long, default_value = DEFAULT_ENDPOINTS)]
    endpoints: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Overall deadline per command in milliseconds, retries included.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
}

impl From<ConsistencyArg> for kvpb::Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => kvpb::Consistency::Linearizable,
            ConsistencyArg::Lease => kvpb::Consistency::Lease,
            ConsistencyArg::Stale => kvpb::Consistency::Stale,
        }
    }
}

/// Raft and server tuning shared by `serve` and `cluster`.
#[derive(Args, Clone, Debug)]
struct Tuning {
    /// Length of one Raft tick in milliseconds (heartbeats and election timeouts are counted
    /// in ticks).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Base election timeout in ticks (each timeout is random in [N, 2N) ticks).
    #[arg(long, default_value_t = 10)]
    election_ticks: u32,
    /// Leader heartbeat interval in ticks (must be less than --election-ticks).
    #[arg(long, default_value_t = 1)]
    heartbeat_ticks: u32,
    /// Serve LEASE-consistency reads from the leader lease (no quorum round trip). Relies on
    /// bounded clock drift; off by default (LEASE reads then use ReadIndex).
    #[arg(long)]
    lease_reads: bool,
    /// Disable the PreVote round before elections.
    #[arg(long)]
    no_pre_vote: bool,
    /// Disable CheckQuorum (a leader that cannot reach a quorum then stays leader; its
    /// requests time out instead of being redirected). Incompatible with --lease-reads.
    #[arg(long)]
    no_check_quorum: bool,
    /// Stop reading a client's requests while this many bytes of its responses are unsent
    /// (backpressure against clients that do not read).
    #[arg(long, default_value_t = 8 << 20)]
    client_output_limit: usize,
    /// Maximum frame (request or Raft message) size in bytes.
    #[arg(long, default_value_t = raftkv::net::framing::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Log segment file size in bytes (preallocated).
    #[arg(long, default_value_t = 64 << 20)]
    segment_size: u64,
    /// Server-side deadline of a client request in milliseconds (then TIMEOUT).
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Take a snapshot (in a forked child) after this many entries were applied since the
    /// last one...
    #[arg(long, default_value_t = 100_000)]
    snapshot_entries: u64,
    /// ...or after this many bytes of commands.
    #[arg(long, default_value_t = 64 << 20)]
    snapshot_bytes: u64,
    /// Entries kept in the log below the applied index when compacting after a snapshot (a
    /// follower this close behind catches up from the log, not a snapshot transfer).
    #[arg(long, default_value_t = 10_000)]
    snapshot_trailing: u64,
    /// Disk bandwidth in bytes/s the background snapshot writer may use (0 = unlimited). Pacing
    /// keeps the log's fsyncs, and so write latency, fast while a snapshot is written; leave
    /// room for every node sharing the disk.
    #[arg(long, default_value_t = raftkv::snapshot::DEFAULT_WRITE_RATE)]
    snapshot_write_rate: u64,
    /// Log level: off, error, warn, info, debug, trace (default: $RAFTKV_LOG, else info).
    #[arg(long)]
    log_level: Option<String>,
}

impl Tuning {
    /// The same settings as `serve` flags (for the cluster command's children).
    fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("--tick-ms={}", self.tick_ms),
            format!("--election-ticks={}", self.election_ticks),
            format!("--heartbeat-ticks={}", self.heartbeat_ticks),
            format!("--max-frame={}", self.max_frame),
            format!("--segment-size={}", self.segment_size),
            format!("--request-timeout-ms={}", self.request_timeout_ms),
            format!("--snapshot-entries={}", self.snapshot_entries),
            format!("--snapshot-bytes={}", self.snapshot_bytes),
            format!("--snapshot-trailing={}", self.snapshot_trailing),
            format!("--snapshot-write-rate={}", self.snapshot_write_rate),
        ];
        if self.lease_reads {
            v.push("--lease-reads".into());
        }
        if self.no_pre_vote {
            v.push("--no-pre-vote".into());
        }
        if self.no_check_quorum {
            v.push("--no-check-quorum".into());
        }
        v.push(format!(
            "--client-output-limit={}",
            self.client_output_limit
        ));
        if let Some(l) = &self.log_level {
            v.push(format!("--log-level={l}"));
        }
        v
    }
}

#[derive(Args)]
struct ServeArgs {
    /// This node's id (non-zero; must appear in --peers).
    #[arg(long)]
    id: u64,
    /// Data directory (created if missing): log/, hardstate, snap/.
    #[arg(long)]
    data_dir: PathBuf,
    /// Every cluster member, this node included, as ID=PEER_ADDR[/CLIENT_ADDR],...
    /// e.g. 1=127.0.0.1:7004/127.0.0.1:7001,2=127.0.0.1:7005/127.0.0.1:7002,...
    /// PEER_ADDR carries Raft traffic; CLIENT_ADDR is where clients are redirected
    /// (NOT_LEADER leader_addr). Give every node the same string.
    #[arg(long)]
    peers: String,
    /// Address to listen on for peers (default: this node's PEER_ADDR in --peers).
    #[arg(long)]
    peer_addr: Option<String>,
    /// Address to listen on for clients (default: this node's CLIENT_ADDR in --peers).
    #[arg(long)]
    client_addr: Option<String>,
    #[command(flatten)]
    tuning: Tuning,
}

#[derive(Args)]
struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Data directory; node i keeps its data in DIR/n<i>.
    #[arg(long, default_value = "./raftkv-data")]
    dir: PathBuf,
    /// First port. Node i (1-based) serves clients on BASE+i-1 and peers on BASE+N+i-1.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    #[command(flatten)]
    tuning: Tuning,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Cluster(a) => cluster(a),
        cmd => {
            // A client command piped into `head` should end quietly, as Unix tools do, not panic
            // on EPIPE: restore the default SIGPIPE action (Rust's runtime ignores it). The
            // server keeps ignoring it and handles EPIPE per connection.
            // SAFETY: signal(2) with SIG_DFL, before any other thread exists.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            let _ = raftkv::logger::init(Some("warn"));
            ExitCode::from(client_cmd(cmd))
        }
    }
}

// -------------------------------------------------------------------------------------------
// serve
// -------------------------------------------------------------------------------------------

fn serve(a: ServeArgs) -> ExitCode {
    if let Err(e) = raftkv::logger::init(a.tuning.log_level.as_deref()) {
        eprintln!("raftkv: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let cfg = match serve_config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("raftkv serve: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let shutdown = match raftkv::server::signal::install() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("raftkv serve: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::open(cfg) {
        Ok(s) => s,
        Err(e) => {
            log::error!("startup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.run(shutdown) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_config(a: &ServeArgs) -> Result<ServerConfig, String> {
    let peers = parse_peers(&a.peers)?;
    let mut cfg = ServerConfig::new(a.id, a.data_dir.clone(), peers)?;
    if let Some(p) = &a.peer_addr {
        cfg.peer_listen = p.clone();
    }
    if let Some(c) = &a.client_addr {
        cfg.client_listen = c.clone();
    }
    if cfg.client_listen.is_empty() {
        return Err("no client address: give --client-addr or ID=PEER/CLIENT in --peers".into());
    }
    let t = &a.tuning;
    if t.tick_ms == 0 {
        return Err("--tick-ms must be positive".into());
    }
    cfg.tick = Duration::from_millis(t.tick_ms);
    cfg.election_ticks = t.election_ticks;
    cfg.heartbeat_ticks = t.heartbeat_ticks;
    cfg.lease_read = t.lease_reads;
    cfg.pre_vote = !t.no_pre_vote;
    cfg.check_quorum = !t.no_check_quorum;
    if t.lease_reads && t.no_check_quorum {
        return Err("--lease-reads needs CheckQuorum (drop --no-check-quorum)".into());
    }
    cfg.max_client_pending_bytes = t.client_output_limit;
    cfg.snapshot_policy = raftkv::snapshot::SnapshotPolicy {
        max_log_entries: t.snapshot_entries,
        max_log_bytes: t.snapshot_bytes,
        trailing_entries: t.snapshot_trailing,
        // Set by the server from the node's rank among --peers.
        stagger: None,
    };
    cfg.snapshot_pacing = raftkv::snapshot::WritePacing {
        bytes_per_sec: t.snapshot_write_rate,
        ..Default::default()
    };
    cfg.max_frame = t.max_frame;
    cfg.segment_size = t.segment_size;
    cfg.request_timeout = Duration::from_millis(t.request_timeout_ms);
    Ok(cfg)
}

// -------------------------------------------------------------------------------------------
// cluster
// -------------------------------------------------------------------------------------------

/// The members of a local cluster: clients on BASE.., peers on BASE+N...
fn cluster_members(nodes: u64, base: u16) -> Result<Vec<PeerSpec>, String> {
    if nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if base as u64 + 2 * nodes > 65536 {
        return Err(format!(
            "--base-port {base} leaves no room for {nodes} nodes"
        ));
    }
    Ok((1..=nodes)
        .map(|i| PeerSpec {
            id: i,
            peer_addr: format!("127.0.0.1:{}", base as u64 + nodes + i - 1),
            client_addr: Some(format!("127.0.0.1:{}", base as u64 + i - 1)),
        })
        .collect())
}

fn spawn_node(
    exe: &std::path::Path,
    id: u64,
    dir: &std::path::Path,
    peers: &str,
    tuning: &Tuning,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg(format!("--id={id}"))
        .arg("--data-dir")
        .arg(dir.join(format!("n{id}")))
        .arg(format!("--peers={peers}"))
        .args(tuning.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // If the cluster process dies without stopping its children, they get SIGTERM.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    cmd.spawn()
}

/// Copies a child's output lines to our stderr, prefixed with `[n<id>] `.
fn stream_lines(id: u64, r: impl std::io::Read + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(std::io::stderr().lock(), "[n{id}] {line}");
        }
    });
}

fn cluster(a: ClusterArgs) -> ExitCode {
    let _ = raftkv::logger::init(a.tuning.log_level.as_deref());
    let members = match cluster_members(a.nodes, a.base_port) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("raftkv cluster: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("raftkv cluster: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&a.dir) {
        eprintln!("raftkv cluster: cannot create {}: {e}", a.dir.display());
        return ExitCode::FAILURE;
    }
    let shutdown = match raftkv::server::signal::install() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("raftkv cluster: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let peers = format_peers(&members);
    let mut children: Vec<(u64, Option<Child>)> = Vec::new();
    for m in &members {
        match spawn_node(&exe, m.id, &a.dir, &peers, &a.tuning) {
            Ok(mut child) => {
                if let Some(out) = child.stdout.take() {
                    stream_lines(m.id, out);
                }
                if let Some(err) = child.stderr.take() {
                    stream_lines(m.id, err);
                }
                children.push((m.id, Some(child)));
            }
            Err(e) => {
                eprintln!("raftkv cluster: starting node {}: {e}", m.id);
                stop_children(&mut children);
                return ExitCode::FAILURE;
            }
        }
    }
    let endpoints: Vec<String> = members
        .iter()
        .filter_map(|m| m.client_addr.clone())
        .collect();
    let endpoints = endpoints.join(",");
    println!(
        "raftkv cluster: {} nodes, data in {}",
        a.nodes,
        a.dir.display()
    );
    println!("client endpoints: {endpoints}");
    println!("try: raftkv put --endpoints {endpoints} greeting hello");
    println!("Ctrl-C stops the cluster; re-run the same command to restart it with its data.");
    let _ = std::io::stdout().flush();

    while !shutdown.load(Ordering::SeqCst) {
        let mut alive = 0;
        for (id, slot) in children.iter_mut() {
            if let Some(child) = slot {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        eprintln!("[n{id}] exited: {status}");
                        *slot = None;
                    }
                    Ok(None) => alive += 1,
                    Err(e) => {
                        eprintln!("[n{id}] cannot check status: {e}");
                        alive += 1;
                    }
                }
            }
        }
        if alive == 0 {
            eprintln!("raftkv cluster: every node exited");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("raftkv cluster: stopping");
    stop_children(&mut children);
    ExitCode::SUCCESS
}

/// SIGTERM every child, wait up to 10 s for them to exit cleanly, then SIGKILL stragglers.
fn stop_children(children: &mut [(u64, Option<Child>)]) {
    for (_, c) in children.iter() {
        if let Some(child) = c {
            // SAFETY: plain kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, c) in children.iter_mut() {
        let Some(child) = c else { continue };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!("[n{id}] stopped ({status})");
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("[n{id}] did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        *c = None;
    }
}

// -------------------------------------------------------------------------------------------
// client commands
// -------------------------------------------------------------------------------------------

/// Minimal JSON string escaping.
fn json_str(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Prints a client error and maps it to an exit code.
fn fail(e: ClientError, json: bool) -> u8 {
    let code = match &e {
        ClientError::Timeout(_) | ClientError::Io(_) => EXIT_UNAVAILABLE,
        ClientError::Server(err) => match err.code() {
            ErrorCode::NotLeader
            | ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::Uncertain
            | ErrorCode::ShuttingDown => EXIT_UNAVAILABLE,
            _ => EXIT_REJECTED,
        },
    };
    if json {
        println!(
            "{{\"ok\":false,\"error\":{}}}",
            json_str(e.to_string().as_bytes())
        );
    } else {
        eprintln!("raftkv: {e}");
    }
    code
}

fn client_cmd(cmd: Cmd) -> u8 {
    let (c, consistency) = match &cmd {
        Cmd::Put { c, .. } | Cmd::Del { c, .. } | Cmd::Cas { c, .. } | Cmd::Status { c } => {
            (c, kvpb::Consistency::Linearizable)
        }
        Cmd::Get { c, consistency, .. } | Cmd::Scan { c, consistency, .. } => {
            (c, (*consistency).into())
        }
        Cmd::Serve(_) | Cmd::Cluster(_) => unreachable!("handled in main"),
    };
    let endpoints: Vec<String> = c
        .endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        eprintln!("raftkv: --endpoints is empty");
        return EXIT_USAGE;
    }
    let json = c.json;
    let mut client = Client::new(
        endpoints.clone(),
        ClientOptions {
            timeout: Duration::from_millis(c.timeout_ms),
            consistency,
        },
    );
    match cmd {
        Cmd::Put { key, value, .. } => match client.put(key.as_bytes(), value.as_bytes()) {
            Ok(r) => {
                if json {
                    println!("{{\"ok\":true,\"version\":{}}}", r.version);
                } else {
                    println!("OK (version {})", r.version);
                }
                EXIT_OK
            }
            Err(e) => fail(e, json),
        },
        Cmd::Get { key, .. } => match client.get(key.as_bytes()) {
            Ok(r) => {
                if json {
                    println!(
                        "{{\"ok\":true,\"found\":{},\"key\":{},\"value\":{},\"version\":{}}}",
                        r.found,
                        json_str(key.as_bytes()),
                        if r.found {
                            json_str(&r.value)
                        } else {
                            "null".into()
                        },
                        r.version
                    );
                } else if r.found {
                    println!("{}", String::from_utf8_lossy(&r.value));
                } else {
                    eprintln!("raftkv: key {key:?} not found");
                }
                if r.found {
                    EXIT_OK
                } else {
                    EXIT_NOT_FOUND
                }
            }
            Err(e) => fail(e, json),
        },
        Cmd::Del { key, .. } => match client.delete(key.as_bytes()) {
            Ok(r) => {
                if json {
                    println!("{{\"ok\":true,\"deleted\":{}}}", r.deleted);
                } else if r.deleted {
                    println!("deleted");
                } else {
                    eprintln!("raftkv: key {key:?} not found");
                }
                if r.deleted {
                    EXIT_OK
                } else {
                    EXIT_NOT_FOUND
                }
            }
            Err(e) => fail(e, json),
        },
        Cmd::Cas {
            key,
            value,
            expect_version,
            delete,
            ..
        } => {
            if delete == value.is_some() {
                eprintln!("raftkv cas: give either VALUE or --delete");
                return EXIT_USAGE;
            }
            let req = kvpb::Cas {
                key: key.into_bytes().into(),
                expected_version: expect_version,
                value: value.unwrap_or_default().into_bytes().into(),
                delete,
            };
            match client.cas(req) {
                Ok(r) => {
                    if json {
                        println!(
                            "{{\"ok\":true,\"succeeded\":{},\"version\":{}}}",
                            r.succeeded, r.version
                        );
                    } else if r.succeeded {
                        println!("OK (version {})", r.version);
                    } else {
                        eprintln!("raftkv: CAS failed: current version is {}", r.version);
                    }
                    if r.succeeded {
                        EXIT_OK
                    } else {
                        EXIT_NOT_FOUND
                    }
                }
                Err(e) => fail(e, json),
            }
        }
        Cmd::Scan {
            prefix,
            start,
            end,
            limit,
            keys_only,
            all,
            ..
        } => {
            let mut req = kvpb::Scan {
                start: start.into_bytes().into(),
                end: end.into_bytes().into(),
                prefix: prefix.into_bytes().into(),
                limit,
                keys_only,
            };
            let mut kvs = Vec::new();
            let next = loop {
                match client.scan(req.clone()) {
                    Ok(r) => {
                        kvs.extend(r.kvs);
                        if all && !r.next_key.is_empty() {
                            req.start = r.next_key;
                            continue;
                        }
                        break r.next_key;
                    }
                    Err(e) => return fail(e, json),
                }
            };
            if json {
                let items: Vec<String> = kvs
                    .iter()
                    .map(|kv| {
                        if keys_only {
                            format!("{{\"key\":{}}}", json_str(&kv.key))
                        } else {
                            format!(
                                "{{\"key\":{},\"value\":{},\"version\":{}}}",
                                json_str(&kv.key),
                                json_str(&kv.value),
                                kv.version
                            )
                        }
                    })
                    .collect();
                println!(
                    "{{\"ok\":true,\"kvs\":[{}],\"next_key\":{}}}",
                    items.join(","),
                    json_str(&next)
                );
            } else {
                for kv in &kvs {
                    if keys_only {
                        println!("{}", String::from_utf8_lossy(&kv.key));
                    } else {
                        println!(
                            "{} = {}",
                            String::from_utf8_lossy(&kv.key),
                            String::from_utf8_lossy(&kv.value)
                        );
                    }
                }
                if !next.is_empty() {
                    eprintln!(
                        "(more keys: continue with --start {:?}, or use --all)",
                        String::from_utf8_lossy(&next)
                    );
                }
            }
            EXIT_OK
        }
        Cmd::Status { .. } => {
            let mut answered = 0;
            let mut items = Vec::new();
            for ep in &endpoints {
                match client.status(ep) {
                    Ok(s) => {
                        answered += 1;
                        if json {
                            items.push(status_json(ep, &s));
                        } else {
                            print_status(ep, &s);
                        }
                    }
                    Err(e) => {
                        if json {
                            items.push(format!(
                                "{{\"endpoint\":{},\"error\":{}}}",
                                json_str(ep.as_bytes()),
                                json_str(e.to_string().as_bytes())
                            ));
                        } else {
                            println!("{ep}: unreachable ({e})");
                        }
                    }
                }
            }
            if json {
                println!("[{}]", items.join(","));
            }
            if answered == 0 {
                EXIT_UNAVAILABLE
            } else {
                EXIT_OK
            }
        }
        Cmd::Serve(_) | Cmd::Cluster(_) => unreachable!("handled in main"),
    }
}

fn print_status(ep: &str, s: &kvpb::StatusResponse) {
    let leader = match s.leader_id {
        0 => "none".to_string(),
        l if s.leader_addr.is_empty() => l.to_string(),
        l => format!("{l} ({})", s.leader_addr),
    };
    println!(
        "{ep}: node {} {} term {} leader {leader} commit {} applied {} log {}..{} snapshot {}",
        s.node_id,
        s.role,
        s.term,
        s.commit_index,
        s.applied_index,
        s.first_log_index,
        s.last_log_index,
        s.snapshot_index
    );
    for p in &s.peers {
        println!(
            "    peer {} ({}) match {} next {}",
            p.id, p.peer_addr, p.match_index, p.next_index
        );
    }
}

fn status_json(ep: &str, s: &kvpb::StatusResponse) -> String {
    let peers: Vec<String> = s
        .peers
        .iter()
        .map(|p| {
            format!(
                "{{\"id\":{},\"peer_addr\":{},\"match\":{},\"next\":{}}}",
                p.id,
                json_str(p.peer_addr.as_bytes()),
                p.match_index,
                p.next_index
            )
        })
        .collect();
    format!(
        "{{\"endpoint\":{},\"node_id\":{},\"role\":{},\"term\":{},\"leader_id\":{},\"leader_addr\":{},\
         \"commit\":{},\"applied\":{},\"first_log_index\":{},\"last_log_index\":{},\"snapshot_index\":{},\"peers\":[{}]}}",
        json_str(ep.as_bytes()),
        s.node_id,
        json_str(s.role.as_bytes()),
        s.term,
        s.leader_id,
        json_str(s.leader_addr.as_bytes()),
        s.commit_index,
        s.applied_index,
        s.first_log_index,
        s.last_log_index,
        s.snapshot_index,
        peers.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ports_are_contiguous() {
        let m = cluster_members(3, 7001).unwrap();
        assert_eq!(m[0].client_addr.as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(m[2].client_addr.as_deref(), Some("127.0.0.1:7003"));
        assert_eq!(m[0].peer_addr, "127.0.0.1:7004");
        assert_eq!(m[2].peer_addr, "127.0.0.1:7006");
        let eps: Vec<_> = m.iter().filter_map(|p| p.client_addr.clone()).collect();
        assert_eq!(eps.join(","), DEFAULT_ENDPOINTS);
        assert!(cluster_members(0, 7001).is_err());
        assert!(cluster_members(3, 65533).is_err());
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str(b"a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(json_str(&[1]), "\"\\u0001\"");
    }

    #[test]
    fn cluster_passes_every_tuning_flag_to_its_nodes() {
        // Non-default values for every tuning flag: a flag `to_args` forgets would come back
        // as its default on the serve side and the two would differ.
        let cli = Cli::try_parse_from([
            "raftkv",
            "cluster",
            "--tick-ms=7",
            "--election-ticks=13",
            "--heartbeat-ticks=2",
            "--lease-reads",
            "--no-pre-vote",
            "--max-frame=12345",
            "--segment-size=1048576",
            "--request-timeout-ms=999",
            "--client-output-limit=4321",
            "--snapshot-entries=77",
            "--snapshot-bytes=8888",
            "--snapshot-trailing=9",
            "--snapshot-write-rate=1000",
            "--log-level=debug",
        ])
        .unwrap();
        let Cmd::Cluster(c) = cli.cmd else {
            panic!("not a cluster command")
        };
        let mut argv: Vec<String> = ["raftkv", "serve", "--id=1", "--data-dir=d", "--peers=1=a:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(c.tuning.to_args());
        let Cmd::Serve(s) = Cli::try_parse_from(argv).unwrap().cmd else {
            panic!("not a serve command")
        };
        assert_eq!(format!("{:?}", s.tuning), format!("{:?}", c.tuning));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
