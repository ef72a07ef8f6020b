//! Command-line definitions (clap derive): the subcommands and their flags, the client
//! options every client command shares (`ClientArgs`), and the Raft/server `Tuning` flags
//! shared by `serve` and `cluster` (with `Tuning::to_args`, which hands them on to the
//! cluster's child nodes). Every doc comment here is help text.

use clap::{Args, Parser, Subcommand, ValueEnum};
use raftkv::pb::kvpb;
use raftkv::server::config;
use std::ffi::OsString;
use std::path::PathBuf;

/// Default client endpoints: the client ports `raftkv cluster` uses by default.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Parser)]
#[command(
    name = "raftkv",
    version,
    args_override_self = true,
    about = "A Raft-replicated key-value store",
    after_help = "Quick start:\n  raftkv cluster                 # 3 local nodes, Ctrl-C stops them\n  raftkv put greeting hello\n  raftkv get greeting\n\n\
Client exit codes: 0 ok, 1 not found / CAS failed, 2 usage error,\n3 unavailable / timeout / uncertain, 4 rejected by the server."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run one node. Signals: SIGTERM/SIGINT shut it down cleanly; SIGUSR1 takes a snapshot now.
    Serve(ServeArgs),
    /// Run a local cluster of `serve` child processes on loopback (Ctrl-C stops them all).
    /// Re-running with the same --dir and --base-port restarts the same cluster, data intact.
    Cluster(ClusterArgs),
    /// Write a new random peer secret to FILE (mode 0600; refuses to overwrite): copy it to
    /// every member and pass it as `serve --peer-secret-file FILE`.
    NewPeerSecret {
        /// Where to write the secret.
        file: PathBuf,
    },
    /// Write a new random client token to FILE (mode 0600; refuses to overwrite): pass it to
    /// every node as `serve --client-token-file FILE` and to clients as `--token-file FILE`.
    NewClientToken {
        /// Where to write the token.
        file: PathBuf,
    },
    /// Set KEY to VALUE; without VALUE (or with `-`) the value is read from standard input,
    /// byte for byte (e.g. `raftkv put photo < photo.jpg`), up to --max-frame.
    Put {
        /// The key (bytes as given; see --hex and --escaped).
        key: OsString,
        /// The value to store; omitted or `-`: read standard input.
        value: Option<OsString>,
        #[command(flatten)]
        input: InputArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Print the value of KEY (exit 1 if absent): its bytes unchanged, then a newline (none
    /// with --out).
    Get {
        /// The key to read.
        key: OsString,
        /// Read consistency: linearizable (ReadIndex via the leader), lease (leader lease,
        /// needs `serve --lease-reads`), stale (any node's local state).
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        /// Write exactly the value's bytes to FILE (`-`: standard output), no newline added.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        input: InputArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete KEY (exit 1 if it was absent).
    Del {
        /// The key to delete.
        key: OsString,
        #[command(flatten)]
        input: InputArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Compare-and-swap: set KEY to VALUE (or delete it with --delete) only if its current
    /// version is --expect-version (0 = must be absent). Exit 1 if the comparison failed.
    Cas {
        /// The key to compare and set.
        key: OsString,
        /// New value (omit with --delete; `-`: read standard input).
        value: Option<OsString>,
        /// Version the key must have now (the `version` printed by get/put; 0 = absent).
        #[arg(long)]
        expect_version: u64,
        /// Delete the key instead of setting it.
        #[arg(long)]
        delete: bool,
        #[command(flatten)]
        input: InputArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List keys in [--start, --end) or with --prefix, in key order. Text output: one
    /// `KEY = VALUE` line per pair (just `KEY` with --keys-only), both in the escape syntax
    /// (see --escaped): plain text prints as itself, and `raftkv put --escaped KEY VALUE` with a
    /// line's two halves (split at the first ` = `) writes the pair back.
    Scan {
        /// Only keys starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: OsString,
        /// First key (inclusive); also resumes a scan from a printed continuation key.
        #[arg(long, default_value = "")]
        start: OsString,
        /// End key (exclusive; empty = unbounded).
        #[arg(long, default_value = "")]
        end: OsString,
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
        input: InputArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show every endpoint's Raft status (role, term, leader, commit/applied, log range,
    /// and on the leader each peer's match index). Exit 3 if no endpoint answered.
    Status {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// The NO_SPACE alarm: `list` shows it (from the leader), `disarm` clears it (a
    /// replicated command; the leader raises it again while a node is still over its
    /// --quota-bytes or out of disk). It also clears by itself once space is back.
    Alarm {
        #[arg(value_enum)]
        action: AlarmAction,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Back up the cluster to a file (`save`), or seed a member of a new cluster from one
    /// (`restore`). Exit 1 if the file is damaged or cannot be written / the directory is not
    /// empty.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Show or change the cluster's membership (docs/membership.md). Changes go to the leader
    /// and are answered once their configuration entry is applied; one change at a time.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Leadership for operators.
    #[command(subcommand)]
    Leader(LeaderCmd),
    /// TLS material for a cluster (see README, "TLS").
    #[command(subcommand)]
    Tls(TlsCmd),
}

#[derive(Subcommand)]
pub enum TlsCmd {
    /// Create a cluster CA and a certificate per node in DIR (ca.pem, ca-key.pem, node-N.pem,
    /// node-N-key.pem; keys mode 0600). Files that exist are kept: run it again with a larger
    /// --nodes to issue more node certificates from the same CA, or after deleting one node's
    /// pair to re-issue (rotate) it. Node certificates name 127.0.0.1, ::1 and localhost plus
    /// every --name.
    Init {
        /// Where the files go (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node certificates 1..=N.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// One more DNS name or IP address for the node certificates issued now (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
}

/// TLS on a node's ports (README, "TLS"). Without any: plain TCP.
#[derive(Args, Clone, Debug, Default)]
pub struct ServeTls {
    /// Certificate (PEM chain) for TLS on the client port and the RESP port; needs
    /// --client-tls-key. Clients then need the issuing CA (`raftkv --tls-ca`).
    #[arg(long, value_name = "FILE", requires = "client_tls_key")]
    pub client_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-tls-cert.
    #[arg(long, value_name = "FILE", requires = "client_tls_cert")]
    pub client_tls_key: Option<PathBuf>,
    /// CA the other nodes' client-port certificates come from, trusted when this node
    /// forwards to the leader (--forward) or joins (--join). Default: --peer-tls-ca.
    #[arg(long, value_name = "FILE")]
    pub client_tls_ca: Option<PathBuf>,
    /// Certificate (PEM chain) for mutual TLS on peer links, presented both when accepting
    /// and when dialling; needs --peer-tls-key and --peer-tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-tls-cert.
    #[arg(long, value_name = "FILE", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,
    /// CA file (PEM, one or more CAs) the other members' peer certificates must chain to.
    #[arg(long, value_name = "FILE", requires = "peer_tls_cert")]
    pub peer_tls_ca: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AlarmAction {
    List,
    Disarm,
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Save a consistent snapshot of the cluster to FILE: every write acknowledged before the
    /// command started is in it (the leader takes a linearizable point; a snapshot covering it
    /// is taken if the newest one does not). Streamed in chunks to FILE.tmp, fsynced, verified
    /// (every checksum, the whole KV payload), then renamed to FILE.
    Save {
        /// The backup file to write (replaced if it exists).
        file: PathBuf,
        /// How long to wait for the cluster to write a snapshot covering the point, in ms
        /// (a large state takes a while at --snapshot-write-rate).
        #[arg(long, default_value_t = 600_000)]
        wait_ms: u64,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Seed the fresh data directory of one member of a NEW cluster from a backup FILE, so that
    /// `raftkv serve --id N --data-dir DIR --peers ...` starts with its state. Run it once per
    /// member, with the same --peers. Refuses a damaged or truncated file and a non-empty DIR.
    Restore {
        /// The backup file (from `raftkv snapshot save`).
        file: PathBuf,
        /// The new member's data directory (missing or empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new member's id (must appear in --peers).
        #[arg(long)]
        node_id: u64,
        /// Every member of the new cluster, as for `serve --peers`.
        #[arg(long)]
        peers: String,
        /// The new cluster's id (32 hex digits). Omit it for the first member: a new random id
        /// is made and printed; give that to the other members' restores, so they form one
        /// cluster that can never be mistaken for the one the backup came from.
        #[arg(long)]
        cluster_id: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum MemberCmd {
    /// List the members as the leader sees them: id, addresses, role (voter, learner, or
    /// outgoing while joint), match index, caught up or not, and the configuration's index
    /// (give it to --expected-conf-index) and joint state.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Add node ID at PEER_ADDR[/CLIENT_ADDR] as a learner. Without --learner it is promoted
    /// to voter automatically once it has caught up (serve --promote-lag/--promote-ticks).
    /// Start the node itself with `raftkv serve --join` (which also sends this request).
    Add {
        /// The new node's id: never used in this cluster before (removed ids are refused).
        id: u64,
        /// PEER_ADDR[/CLIENT_ADDR], e.g. 127.0.0.1:7011/127.0.0.1:7010.
        addrs: String,
        /// Keep it a learner (receives the log, never votes); `member promote` later.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        cond: CondArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Make learner ID a voter now (even if it has not caught up).
    Promote {
        /// The learner to promote.
        id: u64,
        #[command(flatten)]
        cond: CondArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Remove voter or learner ID (the leader too: it hands leadership over first). The id is
    /// never accepted again; the removed node exits when it learns of it.
    Remove {
        /// The member to remove.
        id: u64,
        #[command(flatten)]
        cond: CondArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
}

/// Conditional changes: two operators reading the same configuration cannot both change it.
#[derive(Args, Clone, Copy)]
pub struct CondArgs {
    /// Only change if the configuration in force is still the one at this index (`member
    /// list` prints it); otherwise refused with CONFLICT (exit 4).
    #[arg(long)]
    pub expected_conf_index: Option<u64>,
}

#[derive(Subcommand)]
pub enum LeaderCmd {
    /// Hand leadership to voter ID (default: the most up-to-date other voter) and wait, up to
    /// --timeout-ms, until it is the leader; prints the new leader. Exit 3 if leadership did
    /// not move in time (the old leader keeps it after an election timeout).
    Transfer {
        /// The voter to hand leadership to (default: the most up-to-date other voter).
        id: Option<u64>,
        #[command(flatten)]
        c: ClientArgs,
    },
}

/// How keys and values given on the command line are read (standard input is always raw).
#[derive(Args, Clone, Copy)]
pub struct InputArgs {
    /// KEY, VALUE, --prefix, --start and --end are hex, two digits per byte (e.g. 00ff41).
    #[arg(long, conflicts_with = "escaped")]
    pub hex: bool,
    /// KEY, VALUE, --prefix, --start and --end use the escape syntax `scan` prints: \\ \n \r
    /// \t \0 \= and \xHH for any byte; everything else stands for itself.
    #[arg(long, short = 'e')]
    pub escaped: bool,
}

#[derive(Args)]
pub struct ClientArgs {
    /// Comma-separated client endpoints HOST:PORT (any node; requests follow the leader).
    #[arg(long, default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: String,
    /// Print machine-readable JSON instead of text. Keys and values are JSON strings when
    /// they are valid UTF-8 (`"key"`, `"value"`), else hex (`"key_hex"`, `"value_hex"`).
    #[arg(long)]
    pub json: bool,
    /// Overall deadline per command in milliseconds, retries included.
    #[arg(long, default_value_t = raftkv::client::DEFAULT_TIMEOUT.as_millis() as u64)]
    pub timeout_ms: u64,
    /// How long one attempt waits for an answer before trying the next endpoint (a hung node
    /// costs this much, not the whole --timeout-ms). Doubles after each attempt that runs out,
    /// so a slow but live leader still gets the time left. Retried writes keep their session
    /// seq: never applied twice.
    #[arg(long, default_value_t = raftkv::client::DEFAULT_ATTEMPT_TIMEOUT.as_millis() as u64)]
    pub attempt_timeout_ms: u64,
    /// How long one TCP connect may take before trying the next endpoint.
    #[arg(long, default_value_t = raftkv::client::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64)]
    pub connect_timeout_ms: u64,
    /// Largest request or response frame in bytes; a larger request is refused with TOO_LARGE
    /// (exit 4) without being sent. Match the servers' --max-frame.
    #[arg(long, default_value_t = raftkv::net::framing::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Speak TLS to the endpoints, trusting the CA certificates in FILE (the cluster's
    /// ca.pem; `raftkv cluster --tls` prints its path). Without it: plain TCP.
    #[arg(long, env = "RAFTKV_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// File holding the cluster's client token (its first token is sent on every connection):
    /// needed when the nodes run with --client-token-file. Never give the token itself.
    #[arg(long, env = "RAFTKV_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ConsistencyArg {
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
pub struct Tuning {
    /// Length of one Raft tick in milliseconds (heartbeats and election timeouts are counted
    /// in ticks).
    #[arg(long, default_value_t = config::DEFAULT_TICK.as_millis() as u64)]
    pub tick_ms: u64,
    /// Base election timeout in ticks (each timeout is random in [N, 2N) ticks).
    #[arg(long, default_value_t = raftkv::raft::DEFAULT_ELECTION_TICKS)]
    pub election_ticks: u32,
    /// Leader heartbeat interval in ticks (must be less than --election-ticks).
    #[arg(long, default_value_t = raftkv::raft::DEFAULT_HEARTBEAT_TICKS)]
    pub heartbeat_ticks: u32,
    /// Serve LEASE-consistency reads from the leader lease (no quorum round trip). Relies on
    /// bounded clock drift; off by default (LEASE reads then use ReadIndex).
    #[arg(long)]
    pub lease_reads: bool,
    /// Disable the PreVote round before elections.
    #[arg(long)]
    pub no_pre_vote: bool,
    /// A follower forwards writes and LINEARIZABLE/LEASE reads to the leader and answers them
    /// itself, instead of answering NOT_LEADER (native and RESP alike).
    #[arg(long)]
    pub forward: bool,
    /// A follower serves LINEARIZABLE/LEASE reads itself: it asks the leader for a read index
    /// (follower ReadIndex) and answers from its own state once applied up to it, so reads
    /// spread over all nodes. Without it a follower answers them NOT_LEADER (or forwards them,
    /// with --forward).
    #[arg(long)]
    pub follower_reads: bool,
    /// Disable CheckQuorum (a leader that cannot reach a quorum then stays leader; its
    /// requests time out instead of being redirected). Incompatible with --lease-reads.
    #[arg(long)]
    pub no_check_quorum: bool,
    /// Stop reading a client's requests while this many bytes of its responses are unsent
    /// (backpressure against clients that do not read).
    #[arg(long, default_value_t = config::DEFAULT_CLIENT_OUTPUT_LIMIT)]
    pub client_output_limit: usize,
    /// Client connections served at once; a client beyond it is answered UNAVAILABLE ("too
    /// many clients") and closed. Keep it below the open-files limit (`ulimit -n`).
    #[arg(long, default_value_t = config::DEFAULT_MAX_CLIENTS)]
    pub max_clients: usize,
    /// Maximum frame (request or Raft message) size in bytes, at most 1 GiB. A write must also
    /// fit one log segment (--segment-size); a larger one is refused with TOO_LARGE. Give every
    /// node the same value.
    #[arg(long, default_value_t = raftkv::net::framing::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Space quota in bytes, on the state (keys + values) and on the data directory (log,
    /// snapshots): beyond it, or when the disk is full, the cluster raises its NO_SPACE alarm
    /// and refuses writes that add data (deletes and reads go on) until space is freed.
    #[arg(long, default_value_t = config::DEFAULT_QUOTA_BYTES)]
    pub quota_bytes: u64,
    /// Log segment file size in bytes (preallocated).
    #[arg(long, default_value_t = raftkv::storage::DEFAULT_SEGMENT_SIZE)]
    pub segment_size: u64,
    /// Server-side deadline of a client request in milliseconds (then TIMEOUT).
    #[arg(long, default_value_t = config::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64)]
    pub request_timeout_ms: u64,
    /// Take a snapshot (in a forked child) after this many entries were applied since the
    /// last one...
    #[arg(long, default_value_t = raftkv::snapshot::DEFAULT_SNAPSHOT_ENTRIES)]
    pub snapshot_entries: u64,
    /// ...or after this many bytes of commands.
    #[arg(long, default_value_t = raftkv::snapshot::DEFAULT_SNAPSHOT_BYTES)]
    pub snapshot_bytes: u64,
    /// Entries kept in the log below the applied index when compacting after a snapshot (a
    /// follower this close behind catches up from the log, not a snapshot transfer).
    #[arg(long, default_value_t = raftkv::snapshot::DEFAULT_TRAILING_ENTRIES)]
    pub snapshot_trailing: u64,
    /// Disk bandwidth in bytes/s the background snapshot writer may use (0 = unlimited). Pacing
    /// keeps the log's fsyncs, and so write latency, fast while a snapshot is written; leave
    /// room for every node sharing the disk.
    #[arg(long, default_value_t = raftkv::snapshot::DEFAULT_WRITE_RATE)]
    pub snapshot_write_rate: u64,
    /// A learner added to be promoted (`member add` without --learner, `serve --join`) counts
    /// as caught up while it lags the leader's last index by at most this many entries.
    #[arg(long, default_value_t = raftkv::node::membership::DEFAULT_PROMOTE_MAX_LAG)]
    pub promote_lag: u64,
    /// ...and is promoted to voter once it stayed caught up this many consecutive ticks (0 =
    /// never promote automatically).
    #[arg(long, default_value_t = raftkv::node::membership::DEFAULT_PROMOTE_TICKS)]
    pub promote_ticks: u32,
    /// Log level: off, error, warn, info, debug, trace (default: $RAFTKV_LOG, else info).
    #[arg(long)]
    pub log_level: Option<String>,
}

impl Tuning {
    /// The same settings as `serve` flags (for the cluster command's children).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("--tick-ms={}", self.tick_ms),
            format!("--election-ticks={}", self.election_ticks),
            format!("--heartbeat-ticks={}", self.heartbeat_ticks),
            format!("--max-frame={}", self.max_frame),
            format!("--segment-size={}", self.segment_size),
            format!("--quota-bytes={}", self.quota_bytes),
            format!("--request-timeout-ms={}", self.request_timeout_ms),
            format!("--snapshot-entries={}", self.snapshot_entries),
            format!("--snapshot-bytes={}", self.snapshot_bytes),
            format!("--snapshot-trailing={}", self.snapshot_trailing),
            format!("--snapshot-write-rate={}", self.snapshot_write_rate),
            format!("--promote-lag={}", self.promote_lag),
            format!("--promote-ticks={}", self.promote_ticks),
        ];
        if self.lease_reads {
            v.push("--lease-reads".into());
        }
        if self.no_pre_vote {
            v.push("--no-pre-vote".into());
        }
        if self.forward {
            v.push("--forward".into());
        }
        if self.follower_reads {
            v.push("--follower-reads".into());
        }
        if self.no_check_quorum {
            v.push("--no-check-quorum".into());
        }
        v.push(format!(
            "--client-output-limit={}",
            self.client_output_limit
        ));
        v.push(format!("--max-clients={}", self.max_clients));
        if let Some(l) = &self.log_level {
            v.push(format!("--log-level={l}"));
        }
        v
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// This node's id (non-zero; must appear in --peers unless joining with --join).
    #[arg(long)]
    pub id: u64,
    /// Data directory (created if missing): log/, hardstate, snap/.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Every cluster member, this node included, as ID=PEER_ADDR[/CLIENT_ADDR[/REDIS_ADDR]],...
    /// e.g. 1=127.0.0.1:7004/127.0.0.1:7001,2=127.0.0.1:7005/127.0.0.1:7002,...
    /// PEER_ADDR carries Raft traffic; CLIENT_ADDR is where clients are redirected
    /// (NOT_LEADER leader_addr); an optional third part, /REDIS_ADDR, is the node's RESP
    /// address (named in -NOTLEADER errors). Give every node the same string. Only a brand-new cluster's
    /// first start reads it as the configuration: after that the configuration in the data
    /// directory wins (membership changes update it), and --peers only seeds peer addresses.
    /// A node whose data directory is empty refuses to start if these members already run a
    /// cluster (it would forget its vote): give it a new id and --join instead. A joined node
    /// restarts without it (its configuration is in its data directory).
    #[arg(long, default_value = "")]
    pub peers: String,
    /// Join a running cluster as a new member: CLIENT endpoints (HOST:PORT,...) of some of its
    /// nodes. Needs a new --id, an empty --data-dir, --peer-addr and --client-addr. The node
    /// asks the leader to add it as a learner, receives a snapshot and the log, and is promoted
    /// to voter once caught up. On a restart the data directory is used (--join is harmless).
    #[arg(long, value_name = "ENDPOINTS")]
    pub join: Option<String>,
    /// Address to listen on for peers (default: this node's PEER_ADDR in --peers).
    #[arg(long)]
    pub peer_addr: Option<String>,
    /// Address to listen on for clients (default: this node's CLIENT_ADDR in --peers).
    #[arg(long)]
    pub client_addr: Option<String>,
    /// Address to serve HTTP on: /livez, /readyz, /status (JSON), /metrics (Prometheus).
    /// Off unless given.
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Address to serve the Redis protocol (RESP2) on. Default: this node's REDIS_ADDR in
    /// --peers (ID=PEER/CLIENT/REDIS) if it has one, else off.
    #[arg(long)]
    pub redis_addr: Option<String>,
    /// File holding the cluster's peer secret (hex, one per line; the first is used, all are
    /// accepted: see docs/security.md). Refused if every user may read it; read again on
    /// SIGHUP (rotation without a restart). Required unless --insecure-peers.
    #[arg(long, env = "RAFTKV_PEER_SECRET_FILE", value_name = "FILE")]
    pub peer_secret_file: Option<PathBuf>,
    /// Run without a peer secret: anyone who can reach the peer port can speak Raft to this
    /// node as any member (only the cluster id is checked). For trusted networks and tests.
    #[arg(long, conflicts_with = "peer_secret_file")]
    pub insecure_peers: bool,
    /// Require client authentication: FILE holds the client token(s) (one per line, 16-1024
    /// printable characters; the first is presented when forwarding, all are accepted; see
    /// docs/security.md). Client connections, native and RESP, are then served only after
    /// they present one. Refused if every user may read the file. Read again on SIGHUP: a
    /// removed token is refused and its open connections closed. Give every node the same.
    #[arg(long, env = "RAFTKV_CLIENT_TOKEN_FILE", value_name = "FILE")]
    pub client_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ServeTls,
    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Args)]
#[command(
    after_help = "Changing the membership of a running local cluster (3 -> 5 -> 3):\n  \
raftkv cluster                  # terminal 1: nodes 1-3\n  \
raftkv cluster add              # terminal 2: node 4 joins, promoted once caught up\n  \
raftkv cluster add              # terminal 3: node 5\n  \
raftkv member list\n  \
raftkv cluster remove 1         # node 1 exits; then `raftkv cluster remove 2`\n\
Give `add` and `remove` the same --dir, --base-port and --nodes as the cluster."
)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: Option<ClusterAction>,
    /// Number of nodes the cluster was started with.
    #[arg(long, default_value_t = 3, global = true)]
    pub nodes: u64,
    /// Data directory; node i keeps its data in DIR/n<i>.
    #[arg(long, default_value = "./raftkv-data", global = true)]
    pub dir: PathBuf,
    /// First port. Node i (1-based) serves clients on BASE+i-1, peers on BASE+N+i-1, HTTP
    /// on BASE+2N+i-1 and the Redis protocol on BASE+3N+i-1; a node added later (id k > N)
    /// on BASE+4N+4(k-N-1) and the three ports after it (client, peer, HTTP, RESP).
    #[arg(long, default_value_t = 7001, global = true)]
    pub base_port: u16,
    /// TLS on every node's client, RESP and peer ports (mutual on peers), with a CA and node
    /// certificates generated into DIR/tls on the first start and reused after; prints the
    /// CA's path for `raftkv --tls-ca`.
    #[arg(long, global = true)]
    pub tls: bool,
    /// Require client authentication: the first start writes a random client token to
    /// DIR/client-token (mode 0600), later ones reuse it; every node gets it as
    /// --client-token-file, and clients need `--token-file DIR/client-token`.
    #[arg(long, global = true)]
    pub auth: bool,
    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Subcommand)]
pub enum ClusterAction {
    /// Run one more node that joins the running local cluster (`serve --join`), in the
    /// foreground: its log on this terminal, Ctrl-C stops it. It is added as a learner and
    /// promoted to voter once caught up. Running it again with --id restarts that node.
    Add {
        /// The node's id (default: the first id above --nodes without a data directory).
        #[arg(long)]
        id: Option<u64>,
        /// Give the same tuning flags as the cluster (--tick-ms, ...).
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Remove node ID from the running local cluster (`member remove`); the node exits.
    Remove { id: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "--follower-reads",
            "--max-frame=12345",
            "--segment-size=1048576",
            "--request-timeout-ms=999",
            "--client-output-limit=4321",
            "--snapshot-entries=77",
            "--snapshot-bytes=8888",
            "--snapshot-trailing=9",
            "--snapshot-write-rate=1000",
            "--promote-lag=5",
            "--promote-ticks=3",
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
