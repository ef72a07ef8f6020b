//! `raftkv-bench compare`: starts a local 3-node raftkv cluster, a local 3-node etcd cluster and
//! a local Redis (AOF with `appendfsync always`, and with `appendfsync no`), all on 127.0.0.1
//! with temporary directories and free ports, runs the same workloads against each, prints one
//! table and writes it as JSON and Markdown.
//!
//! Every process started here is owned by a [`ChildGuard`] that kills it on drop, so errors,
//! panics and Ctrl-C (see `signals`) all leave nothing running. Children get their own process
//! group, so a terminal Ctrl-C reaches only this process, which then stops them in order.

use crate::json::Json;
use crate::plot;
use crate::report::Report;
use crate::stats::{fmt_ns, fmt_rate};
use crate::workload::Workload;
use crate::{Common, ConsistencyArg, Dist, System};
use std::fmt::Write as _;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Client counts to run (closed loop, one request in flight each).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 64])]
    pub clients: Vec<usize>,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Workloads: put, get.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["put".to_string(), "get".to_string()])]
    pub workloads: Vec<String>,
    /// Systems: raftkv, raftkv-tls (TLS on client and peer ports), raftkv-resp (raftkv through
    /// the leader's RESP port), etcd (HTTP/JSON
    /// gateway), etcd-grpc (with --features etcd), redis-always, redis-no.
    #[arg(long, value_delimiter = ',', default_values_t = default_systems())]
    pub systems: Vec<String>,
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// The raftkv server binary (default: `raftkv` next to this binary).
    #[arg(long)]
    pub raftkv_bin: Option<PathBuf>,
    /// Where to write compare.json and compare.md.
    #[arg(long, default_value = "bench-results")]
    pub out_dir: PathBuf,
    /// Do not apt-get install missing redis-server / etcd.
    #[arg(long)]
    pub no_install: bool,
    /// Keep the servers' logs (in the out dir) instead of deleting them.
    #[arg(long)]
    pub keep_logs: bool,
    /// Also write SVG charts into --out-dir: compare.svg (ops/s and p99 side by side, per
    /// workload and client count) and compare-<workload>-c<clients>-percentiles.svg (every
    /// system's latency percentile curve).
    #[arg(long)]
    pub plot: bool,
    /// Also run `redis-benchmark -t set,get,incr,mset` (redis-tools, installed if missing)
    /// against raftkv's RESP port and Redis (appendfsync always), for every --rb-pipelines and
    /// --rb-clients. With --workloads none, only that.
    #[arg(long)]
    pub redis_benchmark: bool,
    /// redis-benchmark -n: requests per run.
    #[arg(long, default_value_t = 20_000)]
    pub rb_requests: u64,
    /// redis-benchmark -c values.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 32, 64])]
    pub rb_clients: Vec<usize>,
    /// redis-benchmark -P values.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 16])]
    pub rb_pipelines: Vec<usize>,
}

fn default_systems() -> Vec<String> {
    let mut v = vec!["raftkv"];
    #[cfg(feature = "etcd")]
    v.push("etcd-grpc");
    v.extend(["etcd", "redis-always", "redis-no"]);
    v.into_iter().map(String::from).collect()
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` in its own process group with stdout/stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<ChildGuard, String> {
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Fails (with the log's tail) if the process already exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Err(format!(
                "{} exited early ({st})\nlog tail:\n{}",
                self.name,
                log_tail(&self.log)
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("raftkv-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` distinct free ports on 127.0.0.1, from below the ephemeral range (`raftkv::net::ports`).
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    raftkv::net::ports::free_ports(n).map_err(|e| format!("free ports: {e}"))
}

/// Polls `f` until it succeeds or `timeout` passes (returning its last error).
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                if crate::signals::interrupted() {
                    return Err("interrupted".into());
                }
                std::thread::sleep(Duration::from_millis(50))
            }
        }
    }
}

/// A running system under test: its processes, data, and client endpoints.
pub struct Running {
    // Field order matters: children are killed before their directory is removed.
    children: Vec<ChildGuard>,
    _dir: TempDir,
    pub endpoints: Vec<String>,
    /// RESP addresses, in `endpoints`' order (raftkv's RESP ports; Redis itself).
    pub resp: Vec<String>,
    pub system: System,
    /// The CA of a TLS system's client ports (raftkv-tls).
    pub tls_ca: Option<PathBuf>,
}

impl Running {
    fn check_alive(&mut self) -> Result<(), String> {
        self.children.iter_mut().try_for_each(|c| c.check_alive())
    }
}

/// One system of the comparison.
#[derive(Debug, Clone)]
pub struct Peer {
    pub key: &'static str,
    pub label: &'static str,
    pub durability: &'static str,
}

pub fn peer(name: &str) -> Result<Peer, String> {
    Ok(match name {
        "raftkv" => Peer {
            key: "raftkv",
            label: "raftkv (3 nodes)",
            durability: "3-node Raft; each node msyncs (MS_SYNC) its mmap'd log once per reactor pass (group commit) before acknowledging or voting, and a write is acknowledged once a majority has it durably (server defaults)",
        },
        "raftkv-tls" => Peer {
            key: "raftkv-tls",
            label: "raftkv (3 nodes, TLS)",
            durability: "as raftkv, with TLS 1.3 on the client ports and mutual TLS on the peer links (certificates from `raftkv tls init`)",
        },
        "raftkv-resp" => Peer {
            key: "raftkv-resp",
            label: "raftkv (3 nodes, RESP)",
            durability: "as raftkv (the same cluster setup), driven through the leader's Redis-protocol port; every write carries the connection's exactly-once session",
        },
        "etcd" => Peer {
            key: "etcd",
            label: "etcd 3.4 (3 nodes, HTTP/JSON gateway)",
            durability: "3-node Raft; every node fsyncs its WAL before a write is acknowledged (etcd default, not configurable in 3.4); driven through the v3 HTTP/JSON gateway, not gRPC",
        },
        #[cfg(feature = "etcd")]
        "etcd-grpc" => Peer {
            key: "etcd-grpc",
            label: "etcd 3.4 (3 nodes, gRPC)",
            durability: "3-node Raft; every node fsyncs its WAL before a write is acknowledged (etcd default, not configurable in 3.4); native gRPC API",
        },
        "redis-always" => Peer {
            key: "redis-always",
            label: "redis (AOF appendfsync always)",
            durability: "single node, no replication; AOF fsync'd before replies (group commit per event-loop pass)",
        },
        "redis-no" => Peer {
            key: "redis-no",
            label: "redis (AOF appendfsync no)",
            durability: "single node, no replication; AOF written but never fsync'd by Redis (the OS flushes when it likes)",
        },
        other => return Err(format!("unknown system {other:?} (raftkv, raftkv-tls, raftkv-resp, etcd, etcd-grpc with --features etcd, redis-always, redis-no)")),
    })
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs a Debian package if `bin` is missing, then makes sure the distribution's own service
/// is not left running (we start private instances instead).
fn ensure_installed(
    bin: &str,
    packages: &[&str],
    service: &str,
    no_install: bool,
) -> Result<(), String> {
    if have(bin) {
        return Ok(());
    }
    if no_install {
        return Err(format!("{bin} not found (and --no-install given)"));
    }
    eprintln!("installing {packages:?} with apt-get ...");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status();
        if !install() {
            return Err(format!("apt-get install {packages:?} failed"));
        }
    }
    // Where the package's maintainer scripts started a system service, stop it.
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!("service {service} stop >/dev/null 2>&1 || true"),
        ])
        .status();
    if have(bin) {
        Ok(())
    } else {
        Err(format!("{bin} still missing after installing {packages:?}"))
    }
}

fn redis_ping(addr: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let sa = crate::driver::resolve(addr)?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    s.write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 16];
    let n = s.read(&mut b).map_err(|e| e.to_string())?;
    if b[..n].starts_with(b"+PONG") {
        Ok(())
    } else {
        Err(format!(
            "redis answered {:?}",
            String::from_utf8_lossy(&b[..n])
        ))
    }
}

fn start_redis(fsync: &str, no_install: bool) -> Result<Running, String> {
    ensure_installed(
        "redis-server",
        &["redis-server"],
        "redis-server",
        no_install,
    )?;
    let dir = TempDir::new(&format!("redis-{fsync}"))?;
    let port = free_ports(1)?[0];
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(&dir.0)
        .args(["--appendonly", "yes", "--appendfsync", fsync])
        .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"]);
    let mut child = ChildGuard::spawn("redis-server", cmd, &dir.0.join("redis.log"))?;
    let addr = format!("127.0.0.1:{port}");
    wait_for(Duration::from_secs(10), || {
        child.check_alive()?;
        redis_ping(&addr)
    })?;
    Ok(Running {
        children: vec![child],
        _dir: dir,
        endpoints: vec![addr.clone()],
        resp: vec![addr],
        system: System::Redis,
        tls_ca: None,
    })
}

fn start_etcd(no_install: bool, system: System) -> Result<Running, String> {
    ensure_installed("etcd", &["etcd-server"], "etcd", no_install)?;
    let dir = TempDir::new("etcd")?;
    let ports = free_ports(6)?;
    let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[3 + i]);
    let client_url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let cluster: Vec<String> = (0..3).map(|i| format!("e{i}={}", peer_url(i))).collect();
    let mut children = Vec::new();
    for i in 0..3 {
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.0.join(format!("e{i}")))
            .args(["--listen-client-urls", &client_url(i)])
            .args(["--advertise-client-urls", &client_url(i)])
            .args(["--listen-peer-urls", &peer_url(i)])
            .args(["--initial-advertise-peer-urls", &peer_url(i)])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", "raftkv-bench"])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn"]);
        children.push(ChildGuard::spawn(
            &format!("etcd e{i}"),
            cmd,
            &dir.0.join(format!("e{i}.log")),
        )?);
    }
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
    let mut running = Running {
        children,
        _dir: dir,
        endpoints,
        resp: Vec::new(),
        system,
        tls_ca: None,
    };
    wait_for(Duration::from_secs(30), || {
        running.check_alive()?;
        crate::etcd::find_leader(&running.endpoints, Duration::ZERO)
    })?;
    Ok(running)
}

fn raftkv_bin(args: &CompareArgs) -> Result<PathBuf, String> {
    let p = match &args.raftkv_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("current exe: {e}"))?
            .with_file_name("raftkv"),
    };
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "raftkv server binary {} not found (cargo build --release, or --raftkv-bin)",
            p.display()
        ))
    }
}

/// Three raftkv nodes; with `tls`, TLS on the client ports and mutual TLS between peers,
/// with a CA and node certificates made in the run's directory.
fn start_raftkv(args: &CompareArgs, tls: bool) -> Result<Running, String> {
    let bin = raftkv_bin(args)?;
    let dir = TempDir::new(if tls { "raftkv-tls" } else { "raftkv" })?;
    let certs = if tls {
        Some(raftkv::net::certgen::init(&dir.0.join("tls"), 3, &[])?)
    } else {
        None
    };
    let ports = free_ports(9)?;
    let peer_addr = |i: usize| format!("127.0.0.1:{}", ports[3 + i]);
    let client_addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let resp_addr = |i: usize| format!("127.0.0.1:{}", ports[6 + i]);
    // ID=PEER_ADDR/CLIENT_ADDR/REDIS_ADDR: followers redirect clients to the leader's
    // CLIENT_ADDR; every node serves RESP on REDIS_ADDR.
    let peers: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "{}={}/{}/{}",
                i + 1,
                peer_addr(i),
                client_addr(i),
                resp_addr(i)
            )
        })
        .collect();
    let secret = dir.0.join("peer-secret");
    raftkv::net::peer_auth::PeerSecrets::generate(&secret)?;
    let mut children = Vec::new();
    for i in 0..3 {
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--id", &(i + 1).to_string()])
            .arg("--data-dir")
            .arg(dir.0.join(format!("n{}", i + 1)))
            .args(["--peer-addr", &peer_addr(i)])
            .args(["--client-addr", &client_addr(i)])
            .args(["--peers", &peers.join(",")])
            .arg("--peer-secret-file")
            .arg(&secret)
            .args(["--log-level", "warn"]);
        if let Some(g) = &certs {
            let node = &g.nodes[i];
            for flag in ["--client-tls-cert", "--peer-tls-cert"] {
                cmd.arg(flag).arg(&node.cert);
            }
            for flag in ["--client-tls-key", "--peer-tls-key"] {
                cmd.arg(flag).arg(&node.key);
            }
            cmd.arg("--peer-tls-ca").arg(&g.ca);
        }
        children.push(ChildGuard::spawn(
            &format!("raftkv n{}", i + 1),
            cmd,
            &dir.0.join(format!("n{}.log", i + 1)),
        )?);
    }
    let endpoints: Vec<String> = (0..3).map(client_addr).collect();
    let mut running = Running {
        children,
        _dir: dir,
        endpoints,
        resp: (0..3).map(resp_addr).collect(),
        system: System::Raftkv,
        tls_ca: certs.as_ref().map(|g| g.ca.clone()),
    };
    let tls_cfg = match &running.tls_ca {
        Some(ca) => Some(raftkv::net::tls::client_config(ca, None).map_err(|e| e.to_string())?),
        None => None,
    };
    wait_for(Duration::from_secs(30), || {
        running.check_alive()?;
        crate::raftkv_driver::find_leader_tls(&running.endpoints, Duration::ZERO, tls_cfg.as_ref())
    })?;
    Ok(running)
}

/// raftkv driven through RESP: the leader's RESP port only (followers answer -NOTLEADER,
/// which the Redis codec does not follow).
fn start_raftkv_resp(args: &CompareArgs) -> Result<Running, String> {
    let mut r = start_raftkv(args, false)?;
    let leader = crate::raftkv_driver::find_leader(&r.endpoints, Duration::from_secs(10))?;
    let i = r
        .endpoints
        .iter()
        .position(|e| *e == leader)
        .ok_or_else(|| format!("the leader's address {leader} is none of the nodes'"))?;
    r.endpoints = vec![r.resp[i].clone()];
    r.system = System::RaftkvResp;
    Ok(r)
}

fn start(p: &Peer, args: &CompareArgs) -> Result<Running, String> {
    match p.key {
        "raftkv" => start_raftkv(args, false),
        "raftkv-tls" => start_raftkv(args, true),
        "raftkv-resp" => start_raftkv_resp(args),
        "etcd" => start_etcd(args.no_install, System::Etcd),
        #[cfg(feature = "etcd")]
        "etcd-grpc" => start_etcd(args.no_install, System::EtcdGrpc),
        "redis-always" => start_redis("always", args.no_install),
        "redis-no" => start_redis("no", args.no_install),
        other => Err(format!("unknown system {other}")),
    }
}

/// One cell of the comparison.
pub struct Cell {
    pub peer: Peer,
    pub workload: String,
    pub clients: usize,
    pub result: Result<Report, String>,
}

fn common(args: &CompareArgs, r: &Running, clients: usize, preload: bool) -> Common {
    Common {
        system: r.system,
        endpoints: r.endpoints.clone(),
        clients,
        pipeline: args.pipeline,
        rate: None,
        duration: args.duration,
        warmup: args.warmup,
        keys: args.keys,
        dist: Dist::Uniform,
        zipf_theta: 0.99,
        value_size: args.value_size,
        consistency: ConsistencyArg::Linearizable,
        no_preload: !preload,
        sessions: false,
        spread_reads: false,
        read_from: crate::ReadFrom::Leader,
        seed: 1,
        json: false,
        per_second: false,
        drain_timeout: 5.0,
        plot_dir: None,
        metrics_addrs: Vec::new(),
        scrape_metrics_hz: 0.0,
        token_file: None,
        tls_ca: r.tls_ca.clone(),
    }
}

fn parse_workload(w: &str) -> Result<Workload, String> {
    match w {
        "put" => Ok(Workload::Put),
        "get" => Ok(Workload::Get),
        other => Err(format!("compare runs put and get, not {other:?}")),
    }
}

/// Runs the whole comparison.
pub fn run(args: &CompareArgs) -> Result<(), String> {
    let peers: Vec<Peer> = args
        .systems
        .iter()
        .map(|s| peer(s))
        .collect::<Result<_, _>>()?;
    let workloads: Vec<Workload> = args
        .workloads
        .iter()
        .filter(|w| *w != "none")
        .map(|w| parse_workload(w))
        .collect::<Result<_, _>>()?;
    if args.redis_benchmark {
        ensure_installed(
            "redis-benchmark",
            &["redis-tools"],
            "redis-server",
            args.no_install,
        )?;
    }
    let mut cells = Vec::new();
    let mut rb_cells = Vec::new();
    for p in &peers {
        if crate::signals::interrupted() {
            return Err("interrupted".into());
        }
        eprintln!("== starting {}", p.label);
        let mut running = match start(p, args) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("   {} unavailable: {e}", p.label);
                for w in &workloads {
                    for &c in &args.clients {
                        cells.push(Cell {
                            peer: p.clone(),
                            workload: w.name(),
                            clients: c,
                            result: Err(format!("did not start: {}", first_line(&e))),
                        });
                    }
                }
                continue;
            }
        };
        let mut preloaded = false;
        for w in &workloads {
            for &c in &args.clients {
                if crate::signals::interrupted() {
                    return Err("interrupted".into());
                }
                let preload = w.wants_preload() && !preloaded;
                preloaded |= preload;
                let result = running.check_alive().and_then(|_| {
                    crate::run_workload(
                        &common(args, &running, c, preload),
                        w.clone(),
                        Some(p.label),
                    )
                });
                match &result {
                    Ok(r) => eprint!("{}", r.text(false)),
                    Err(e) => eprintln!("   {} {} x{c}: failed: {e}", p.label, w.name()),
                }
                cells.push(Cell {
                    peer: p.clone(),
                    workload: w.name(),
                    clients: c,
                    result,
                });
            }
        }
        if args.redis_benchmark {
            rb_cells.extend(redis_benchmark_on(p, &running, args));
        }
        if args.keep_logs {
            let _ = std::fs::create_dir_all(&args.out_dir);
            for ch in &running.children {
                let name = ch.name.replace(' ', "-");
                let _ = std::fs::copy(&ch.log, args.out_dir.join(format!("{}-{name}.log", p.key)));
            }
        }
        drop(running);
    }
    let table = text_table(&cells);
    println!("{table}");
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("{}: {e}", args.out_dir.display()))?;
    let mut md = markdown(args, &peers, &cells);
    if args.redis_benchmark {
        let rb = rb_args(args);
        md.push_str(&crate::redis_benchmark::markdown(&rb_cells, &rb));
        println!("{}", crate::redis_benchmark::markdown(&rb_cells, &rb));
    }
    let js = to_json(args, &peers, &cells).to_string_pretty();
    let md_path = args.out_dir.join("compare.md");
    let js_path = args.out_dir.join("compare.json");
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    std::fs::write(&js_path, js + "\n").map_err(|e| format!("{}: {e}", js_path.display()))?;
    eprintln!("wrote {} and {}", md_path.display(), js_path.display());
    if args.plot {
        plots(args, &peers, &cells)?;
    }
    Ok(())
}

/// `--plot`: the side-by-side chart and one percentile chart per workload and client count.
fn plots(args: &CompareArgs, peers: &[Peer], cells: &[Cell]) -> Result<(), String> {
    let systems: Vec<String> = peers.iter().map(|p| p.label.to_string()).collect();
    let mut keys: Vec<(String, usize)> = Vec::new();
    for c in cells {
        if !keys.contains(&(c.workload.clone(), c.clients)) {
            keys.push((c.workload.clone(), c.clients));
        }
    }
    let find = |w: &str, n: usize, p: &Peer| {
        cells
            .iter()
            .find(|c| c.workload == w && c.clients == n && c.peer.key == p.key)
            .and_then(|c| c.result.as_ref().ok())
    };
    let group = |f: &dyn Fn(&Report) -> f64| -> Vec<plot::Group> {
        keys.iter()
            .map(|(w, n)| plot::Group {
                name: format!("{w} x{n}"),
                values: peers.iter().map(|p| find(w, *n, p).map(f)).collect(),
            })
            .collect()
    };
    let ops = group(&|r| r.overall.ops_per_sec);
    let p99 = group(&|r| r.overall.p99_ns as f64 / 1e6);
    let title = format!(
        "{} keys, {}-byte values, {} in flight per connection, {} s per run",
        args.keys, args.value_size, args.pipeline, args.duration
    );
    let path = args.out_dir.join("compare.svg");
    plot::compare(&path, &title, &systems, &ops, &p99)?;
    eprintln!("wrote {}", path.display());
    for (w, n) in &keys {
        let curves: Vec<plot::Curve> = peers
            .iter()
            .filter_map(|p| Some(plot::Curve::of(p.label, find(w, *n, p)?)))
            .collect();
        let path = args
            .out_dir
            .join(format!("compare-{w}-c{n}-percentiles.svg"));
        let title = format!("{w}, {n} connections: latency by percentile");
        plot::percentiles(&path, &title, &curves)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn rb_args(args: &CompareArgs) -> crate::redis_benchmark::RbArgs<'_> {
    crate::redis_benchmark::RbArgs {
        requests: args.rb_requests,
        clients: &args.rb_clients,
        pipelines: &args.rb_pipelines,
        keys: args.keys,
        value_size: args.value_size,
    }
}

/// redis-benchmark against a system that speaks RESP: raftkv's leader (found through the
/// native status call, its RESP port the one at the same position) and Redis with
/// `appendfsync always` (`redis-no` is left out: it is not durable, raftkv is).
fn redis_benchmark_on(
    p: &Peer,
    running: &Running,
    args: &CompareArgs,
) -> Vec<crate::redis_benchmark::RbCell> {
    let addr = match p.key {
        "raftkv" => crate::raftkv_driver::find_leader(&running.endpoints, Duration::from_secs(10))
            .ok()
            .and_then(|l| running.endpoints.iter().position(|e| *e == l))
            .and_then(|i| running.resp.get(i).cloned()),
        "redis-always" => running.resp.first().cloned(),
        _ => return Vec::new(),
    };
    let Some(addr) = addr else {
        eprintln!("   {}: no RESP address (leader not found)", p.label);
        return Vec::new();
    };
    eprintln!("== redis-benchmark against {} at {addr}", p.label);
    crate::redis_benchmark::run_matrix(p.key, &addr, &rb_args(args))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// raftkv's ops/s divided by this cell's, for the same workload and client count.
fn ratio(cells: &[Cell], c: &Cell) -> Option<f64> {
    let mine = c.result.as_ref().ok()?.overall.ops_per_sec;
    let rk = cells
        .iter()
        .find(|o| o.peer.key == "raftkv" && o.workload == c.workload && o.clients == c.clients)?
        .result
        .as_ref()
        .ok()?
        .overall
        .ops_per_sec;
    (mine > 0.0).then(|| rk / mine)
}

fn row_values(cells: &[Cell], c: &Cell) -> [String; 4] {
    match &c.result {
        Ok(r) => [
            fmt_rate(r.overall.ops_per_sec),
            fmt_ns(r.overall.p50_ns),
            fmt_ns(r.overall.p99_ns),
            if c.peer.key == "raftkv" {
                "-".into()
            } else {
                ratio(cells, c).map_or("n/a".into(), |x| format!("{x:.2}x"))
            },
        ],
        Err(e) => [
            format!("failed: {e}"),
            String::new(),
            String::new(),
            String::new(),
        ],
    }
}

pub fn text_table(cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>7}  {:<40} {:>9} {:>9} {:>9} {:>13}",
        "workload", "clients", "system", "ops/s", "p50", "p99", "raftkv/system"
    );
    for c in cells {
        let [ops, p50, p99, r] = row_values(cells, c);
        let _ = writeln!(
            s,
            "{:<8} {:>7}  {:<40} {:>9} {:>9} {:>9} {:>13}",
            c.workload, c.clients, c.peer.label, ops, p50, p99, r
        );
    }
    s
}

pub fn markdown(args: &CompareArgs, peers: &[Peer], cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Closed loop, {} in flight per connection, {} keys, {}-byte values, {} s per run after {} s warm-up, linearizable reads, all on 127.0.0.1.\n",
        args.pipeline, args.keys, args.value_size, args.duration, args.warmup
    );
    let _ = writeln!(
        s,
        "| workload | clients | system | ops/s | p50 | p99 | raftkv ops/s ÷ system |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|");
    for c in cells {
        let [ops, p50, p99, r] = row_values(cells, c);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {ops} | {p50} | {p99} | {r} |",
            c.workload, c.clients, c.peer.label
        );
    }
    let _ = writeln!(s, "\nDurability of each system as run:\n");
    for p in peers {
        let _ = writeln!(s, "- **{}**: {}", p.label, p.durability);
    }
    s
}

pub fn to_json(args: &CompareArgs, peers: &[Peer], cells: &[Cell]) -> Json {
    let systems = peers
        .iter()
        .map(|p| {
            Json::obj()
                .with("key", p.key)
                .with("label", p.label)
                .with("durability", p.durability)
        })
        .collect::<Vec<_>>();
    let results = cells
        .iter()
        .map(|c| {
            let j = Json::obj()
                .with("system", c.peer.key)
                .with("workload", c.workload.as_str())
                .with("clients", c.clients)
                .with("raftkv_ratio", ratio(cells, c));
            match &c.result {
                Ok(r) => j.with("report", r.to_json()),
                Err(e) => j.with("error", e.as_str()),
            }
        })
        .collect::<Vec<_>>();
    Json::obj()
        .with(
            "config",
            Json::obj()
                .with("duration_s", args.duration)
                .with("warmup_s", args.warmup)
                .with("pipeline", args.pipeline)
                .with("keys", args.keys)
                .with("value_size", args.value_size),
        )
        .with("systems", Json::Arr(systems))
        .with("results", Json::Arr(results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RunInfo;
    use crate::stats::Summary;

    fn report(ops_per_sec: f64) -> Report {
        let s = Summary {
            ops: ops_per_sec as u64,
            seconds: 1.0,
            ops_per_sec,
            mean_ns: 1e6,
            p50_ns: 1_000_000,
            p90_ns: 2_000_000,
            p99_ns: 3_000_000,
            p999_ns: 4_000_000,
            max_ns: 5_000_000,
        };
        Report {
            info: RunInfo {
                system: "x".into(),
                workload: "put".into(),
                clients: 1,
                pipeline: 1,
                rate: None,
                keys: 10,
                dist: "uniform".into(),
                value_size: 256,
                consistency: "linearizable".into(),
                duration: Duration::from_secs(1),
                warmup: Duration::ZERO,
            },
            overall: s,
            per_second: vec![],
            errors: Default::default(),
            not_found: 0,
            cas_failed: 0,
            sent: 0,
            incomplete: 0,
            reconnects: 0,
            max_backlog: 0,
            interrupted: false,
            percentiles: Vec::new(),
        }
    }

    fn cells() -> Vec<Cell> {
        let cell = |key: &str, result| Cell {
            peer: peer(key).unwrap(),
            workload: "put".into(),
            clients: 1,
            result,
        };
        vec![
            cell("raftkv", Ok(report(300.0))),
            cell("redis-always", Ok(report(1200.0))),
            cell("etcd", Err("did not start: etcd missing".into())),
        ]
    }

    #[test]
    fn table_has_ratios_and_failures() {
        let c = cells();
        let t = text_table(&c);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("raftkv/system"));
        assert!(lines[1].contains("raftkv (3 nodes)") && lines[1].trim_end().ends_with('-'));
        // 300 / 1200 = 0.25
        assert!(
            lines[2].contains("1200") && lines[2].trim_end().ends_with("0.25x"),
            "{t}"
        );
        assert!(lines[3].contains("failed: did not start: etcd missing"));
        let args = CompareArgs {
            duration: 1.0,
            warmup: 0.0,
            clients: vec![1],
            pipeline: 1,
            workloads: vec!["put".into()],
            systems: vec!["raftkv".into(), "redis-always".into(), "etcd".into()],
            keys: 10,
            value_size: 256,
            raftkv_bin: None,
            out_dir: PathBuf::from("unused"),
            no_install: true,
            keep_logs: false,
            plot: false,
            redis_benchmark: false,
            rb_requests: 1,
            rb_clients: vec![1],
            rb_pipelines: vec![1],
        };
        let peers: Vec<Peer> = args.systems.iter().map(|s| peer(s).unwrap()).collect();
        let md = markdown(&args, &peers, &c);
        assert!(md.contains(
            "| put | 1 | redis (AOF appendfsync always) | 1200 | 1.00ms | 3.00ms | 0.25x |"
        ));
        assert!(
            !md.contains("appendfsync no)**") && md.contains("appendfsync always)**: single node")
        );
        let j = to_json(&args, &peers, &c);
        match j.get("results") {
            Some(Json::Arr(r)) => {
                assert_eq!(r.len(), 3);
                assert_eq!(r[1].get("raftkv_ratio"), Some(&Json::Num(0.25)));
                assert!(r[1].get("report").and_then(|x| x.get("overall")).is_some());
                assert_eq!(r[2].get("raftkv_ratio"), Some(&Json::Null));
                assert!(matches!(r[2].get("error"), Some(Json::Str(_))));
            }
            other => panic!("results: {other:?}"),
        }
        assert!(matches!(j.get("systems"), Some(Json::Arr(s)) if s.len() == 3));
    }

    #[test]
    fn unknown_systems_and_workloads_are_rejected() {
        assert!(peer("mysql").is_err());
        assert!(parse_workload("scan").is_err());
        assert_eq!(free_ports(3).unwrap().len(), 3);
    }
}
