//! Process-test harness shared by the integration tests: a `Cluster` of real `raftkv serve`
//! processes on free loopback ports in a temp dir, whose Drop kills every child (and prints the
//! nodes' logs when a test fails), plus polling and client helpers.
#![allow(dead_code)] // each test crate uses a different subset

use bytes::Bytes;
use raftkv::client::{Client, ClientOptions};
use raftkv::net::framing::blocking;
use raftkv::pb::kvpb::{self, response::Result as R};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_raftkv");

/// Distinct free loopback ports, from below the ephemeral range (see `raftkv::net::ports`).
pub fn free_ports(n: usize) -> Vec<u16> {
    raftkv::net::ports::free_ports(n).expect("free loopback ports")
}

/// Files in `dir` whose extension is `ext`, sorted by name (segments and snapshot files are
/// named so that this is index order).
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// `serve`'s peer-credential flags for a cluster whose files live in `dir`: the secret
/// `dir/peer-secret`, generated on first use and shared by every node started with it.
pub fn peer_secret_args(dir: &Path) -> Vec<String> {
    let path = dir.join("peer-secret");
    if !path.exists() {
        raftkv::net::peer_auth::PeerSecrets::generate(&path).expect("generate a peer secret");
    }
    vec!["--peer-secret-file".into(), path.display().to_string()]
}

/// A peer connection to `addr` (member `to`'s peer port) that completed the handshake as
/// member `from`, with the cluster's secret from `dir/peer-secret` and the cluster id `to`
/// reports: for tests that send hand-made Raft frames as a member would.
pub fn peer_conn_as(dir: &Path, addr: &str, client_addr: &str, from: u64, to: u64) -> TcpStream {
    let secrets = raftkv::net::peer_auth::PeerSecrets::load(&dir.join("peer-secret")).unwrap();
    try_peer_conn_as(&secrets, addr, client_addr, from, to).expect("the node proves itself")
}

/// [`peer_conn_as`] with `secrets`; Err if the node's proof does not check out with them
/// (it proves with another secret) or the handshake breaks off.
pub fn try_peer_conn_as(
    secrets: &raftkv::net::peer_auth::PeerSecrets,
    addr: &str,
    client_addr: &str,
    from: u64,
    to: u64,
) -> Result<TcpStream, String> {
    use raftkv::net::framing::frame_bytes_raw;
    use raftkv::net::handshake::Dialer;
    use std::io::{Read, Write};
    let id = status(client_addr).expect("status").cluster_id;
    let id = raftkv::storage::cluster_id::ClusterId::parse(&id);
    let d = Dialer::new(from, to, id.into(), [from as u8; 32]);
    let mut s = TcpStream::connect(addr).expect("connect to the peer port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&frame_bytes_raw(&d.hello())).unwrap();
    let mut h = [0u8; 4];
    s.read_exact(&mut h)
        .map_err(|e| format!("no challenge: {e}"))?;
    let mut ch = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut ch)
        .map_err(|e| format!("no challenge: {e}"))?;
    let (proof, _) = d.on_challenge(&ch, secrets).map_err(|e| e.to_string())?;
    s.write_all(&frame_bytes_raw(&proof)).unwrap();
    Ok(s)
}

/// Node `http`'s `/metrics` value of `name` (with `label` if given, e.g.
/// `reason="bad_proof"`); None if the node does not answer (yet).
pub fn try_metric(http: &str, name: &str, label: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    let want = if label.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{label}}} ")
    };
    page.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// SIGHUPs every node of `cluster`, then waits until each counted the reload with `result`,
/// `n` in all.
pub fn hup_all(cluster: &Cluster, result: &str, n: u64) {
    let label = format!("result=\"{result}\"");
    let ids: Vec<u64> = cluster.nodes.iter().map(|node| node.id).collect();
    for &id in &ids {
        cluster.signal(id, libc::SIGHUP);
    }
    for id in ids {
        let http = cluster.http_addr(id);
        wait_for(
            &format!("node {id}'s reload {n} ({result})"),
            Duration::from_secs(10),
            || {
                let count = try_metric(&http, "raftkv_credential_reloads_total", &label)?;
                (count >= n).then_some(())
            },
        );
    }
}

/// [`try_metric`], which must answer.
pub fn metric(http: &str, name: &str, label: &str) -> u64 {
    try_metric(http, name, label).unwrap_or_else(|| panic!("no {name}{{{label}}} on {http}"))
}

/// Polls `f` every 10 ms until it returns Some, or panics after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Node {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    /// Started with `serve --join` (a member added while the cluster runs), not `--peers`.
    pub joined: bool,
    /// `--http-addr`, for clusters started by `start_http`.
    pub http_addr: Option<String>,
    /// The RESP address (third part of --peers), for clusters started by `start_resp`.
    pub redis_addr: Option<String>,
    pub child: Option<Child>,
}

/// The listeners a test cluster's nodes open besides client and peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listeners {
    Native,
    Http,
    Resp,
}

/// A cluster of `raftkv serve` processes. Drop kills them all.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub peers: String,
    pub nodes: Vec<Node>,
    pub args: Vec<String>,
}

impl Cluster {
    pub fn start(n: u64, args: &[&str]) -> Cluster {
        Cluster::start_with(n, args, |_| {})
    }

    /// Like `start`, every node also serving HTTP (`--http-addr`, see `http_addr`).
    pub fn start_http(n: u64, args: &[&str]) -> Cluster {
        Cluster::start_inner(n, args, Listeners::Http, |_, _| {})
    }

    /// Like `start`, every node also serving RESP (see `redis_addr`).
    pub fn start_resp(n: u64, args: &[&str]) -> Cluster {
        Cluster::start_inner(n, args, Listeners::Resp, |_, _| {})
    }

    /// Like `start_http`, after `setup(data_root)` prepared the cluster's directory.
    pub fn start_http_with(n: u64, args: &[&str], setup: impl FnOnce(&Path)) -> Cluster {
        Cluster::start_inner(n, args, Listeners::Http, |root, _| setup(root))
    }

    /// Like `start`, after `setup(data_root)` prepared the nodes' data dirs (`<root>/n<i>`).
    pub fn start_with(n: u64, args: &[&str], setup: impl FnOnce(&Path)) -> Cluster {
        Cluster::start_inner(n, args, Listeners::Native, |root, _| setup(root))
    }

    /// Like `start_with`, `setup` also getting the cluster's `--peers` string (to seed the
    /// data dirs for exactly these members).
    pub fn start_seeded(n: u64, args: &[&str], setup: impl FnOnce(&Path, &str)) -> Cluster {
        Cluster::start_inner(n, args, Listeners::Native, setup)
    }

    fn start_inner(
        n: u64,
        args: &[&str],
        extra: Listeners,
        setup: impl FnOnce(&Path, &str),
    ) -> Cluster {
        let ports = free_ports(if extra == Listeners::Native { 2 } else { 3 } * n as usize);
        let third = |i: u64| format!("127.0.0.1:{}", ports[(2 * n + i) as usize]);
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                id: i + 1,
                client_addr: format!("127.0.0.1:{}", ports[i as usize]),
                peer_addr: format!("127.0.0.1:{}", ports[(n + i) as usize]),
                joined: false,
                http_addr: (extra == Listeners::Http).then(|| third(i)),
                redis_addr: (extra == Listeners::Resp).then(|| third(i)),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .enumerate()
            .map(|(i, nd)| {
                let resp = nd.redis_addr.as_ref().map(|r| format!("/{r}"));
                format!(
                    "{}=127.0.0.1:{}/{}{}",
                    nd.id,
                    ports[n as usize + i],
                    nd.client_addr,
                    resp.unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            peers,
            nodes,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        setup(c.dir.path(), &c.peers);
        for id in 1..=n {
            c.start_node(id);
        }
        c
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}.log"))
    }

    pub fn node_log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn start_node(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .unwrap();
        let http: Vec<String> = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.http_addr.clone())
            .map(|a| format!("--http-addr={a}"))
            .into_iter()
            .collect();
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        let members: Vec<String> = if node.joined {
            let others: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.id != id)
                .map(|n| n.client_addr.clone())
                .collect();
            vec![
                format!("--join={}", others.join(",")),
                format!("--peer-addr={}", node.peer_addr),
                format!("--client-addr={}", node.client_addr),
            ]
        } else {
            vec![format!("--peers={}", self.peers)]
        };
        let child = Command::new(EXE)
            .arg("serve")
            .arg(format!("--id={id}"))
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&members)
            .args([
                "--tick-ms=10",
                "--election-ticks=10",
                "--heartbeat-ticks=1",
                "--log-level=info",
                "--segment-size=1048576",
            ])
            .args(peer_secret_args(self.dir.path()))
            .args(&self.args)
            .args(&http)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raftkv serve");
        self.node_mut(id).child = Some(child);
    }

    /// Starts a new node (the next unused id, fresh ports and data dir) with `serve --join`
    /// against the other nodes; returns its id. It is added as a learner to be promoted.
    pub fn join_node(&mut self) -> u64 {
        let id = self.new_joining_node();
        self.start_node(id);
        id
    }

    /// Registers the next unused id with fresh ports as a node that joins (`start_node`
    /// starts it); returns its id.
    pub fn new_joining_node(&mut self) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let ports = free_ports(2);
        self.nodes.push(Node {
            id,
            client_addr: format!("127.0.0.1:{}", ports[0]),
            peer_addr: format!("127.0.0.1:{}", ports[1]),
            http_addr: None,
            redis_addr: None,
            joined: true,
            child: None,
        });
        id
    }

    /// The process id of running node `id`.
    pub fn pid(&self, id: u64) -> u32 {
        let n = self.nodes.iter().find(|n| n.id == id).unwrap();
        n.child.as_ref().expect("node is running").id()
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap()
            .client_addr
            .clone()
    }

    /// Node `id`'s HTTP address (clusters from `start_http`).
    pub fn http_addr(&self, id: u64) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.http_addr.clone())
            .expect("cluster started with start_http")
    }

    /// Node `id`'s RESP address (clusters from `start_resp`).
    pub fn redis_addr(&self, id: u64) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.redis_addr.clone())
            .expect("cluster started with start_resp")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// A client over every node, linearizable reads.
    pub fn client(&self) -> Client {
        self.client_with(kvpb::Consistency::Linearizable)
    }

    pub fn client_with(&self, consistency: kvpb::Consistency) -> Client {
        Client::new(
            self.endpoints(),
            ClientOptions {
                timeout: Duration::from_secs(10),
                consistency,
                ..Default::default()
            },
        )
    }

    /// SIGKILL (crash) a node.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM a node and expect a clean exit 0.
    pub fn stop(&mut self, id: u64) {
        if let Some(c) = &self.node_mut(id).child {
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let status = self.wait_exit(id);
            assert!(status.success(), "node {id} exited with {status}");
        }
    }

    /// Sends `sig` to node `id`.
    pub fn signal(&self, id: u64, sig: libc::c_int) {
        let n = self.nodes.iter().find(|n| n.id == id).unwrap();
        if let Some(c) = &n.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    /// Waits for node `id` to exit by itself; returns its exit status.
    /// Waits for node `id` to exit by itself. The child stays in the guard until it has exited,
    /// so a timeout (a panic) still kills it in `Drop`.
    pub fn wait_exit(&mut self, id: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let node = self.node_mut(id);
            let child = node.child.as_mut().expect("node not running");
            if let Some(st) = child.try_wait().unwrap() {
                node.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for node {id} to exit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until every running node agrees on one leader; returns its id.
    pub fn wait_leader(&self) -> u64 {
        wait_for("a leader", Duration::from_secs(15), || {
            let mut leader = None;
            for id in self.running() {
                let s = status(&self.addr(id))?;
                if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                    return None;
                }
                leader = Some(s.leader_id);
            }
            let l = leader?;
            (status(&self.addr(l))?.role == "leader").then_some(l)
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = self.node_log(n.id);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- node {} log (last 40 lines) ----", n.id);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// One raw Status request (no retries); None if the node does not answer.
pub fn status(addr: &str) -> Option<kvpb::StatusResponse> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = kvpb::Request {
        id: 1,
        op: Some(kvpb::request::Op::Status(kvpb::StatusRequest {})),
        ..Default::default()
    };
    blocking::write_msg(&mut s, &req).ok()?;
    match blocking::read_msg::<kvpb::Response, _>(&mut s, 1 << 20)
        .ok()?
        .result
    {
        Some(R::Status(st)) => Some(st),
        _ => None,
    }
}

/// Every key/value under `prefix`, read through the client (paging through the scan).
pub fn scan_all(c: &mut Client, prefix: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut req = kvpb::Scan {
        prefix: Bytes::copy_from_slice(prefix.as_bytes()),
        ..Default::default()
    };
    loop {
        let r = c.scan(req.clone()).expect("scan");
        for kv in r.kvs {
            out.insert(
                String::from_utf8(kv.key.to_vec()).unwrap(),
                String::from_utf8(kv.value.to_vec()).unwrap(),
            );
        }
        if r.next_key.is_empty() {
            return out;
        }
        req.start = r.next_key;
    }
}

/// A PUT request of `k` = `v` with request id `id` (no session).
pub fn put_req(id: u64, k: &str, v: &str) -> kvpb::Request {
    kvpb::Request {
        id,
        op: Some(kvpb::request::Op::Put(kvpb::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// `raftkv-log verify` over a stopped node's data dir: exit 0, or the test fails with its output.
pub fn verify_dir(dir: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_raftkv-log"))
        .arg("verify")
        .arg(dir)
        .output()
        .expect("run raftkv-log");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("raftkv-log verify {}: {}", dir.display(), text.trim());
    assert_eq!(o.status.code(), Some(0), "{}: {text}", dir.display());
}

/// Resident memory of a process, from /proc/PID/statm (pages of 4 KiB on this platform).
pub fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// How much a node's RSS may grow for one client that never reads, with its output capped at
/// `limit`: the limit plus one answer (`answer`, queued whole) and the 64 KiB input buffer,
/// twice for allocator slack, plus 32 MiB for everything else the node does meanwhile.
pub fn output_growth_bound(limit: u64, answer: u64) -> u64 {
    2 * (limit + answer + (64 << 10)) + (32 << 20)
}

/// Kills a process a test started (SIGKILL) and reaps it, also when the test fails; a
/// `raftkv cluster` supervisor's children get SIGTERM through PDEATHSIG.
pub struct ProcGuard(pub Child);

impl ProcGuard {
    /// Ctrl-C: SIGINT, then waits (bounded) for a clean exit (status 0) and returns what the
    /// process printed on its stdout (piped by the caller).
    pub fn interrupt_and_read_stdout(&mut self) -> String {
        use std::io::Read;
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGINT);
        }
        let status = wait_for("the process to stop", Duration::from_secs(15), || {
            self.0.try_wait().unwrap()
        });
        assert!(status.success(), "{status}");
        let mut out = String::new();
        self.0
            .stdout
            .take()
            .expect("stdout piped")
            .read_to_string(&mut out)
            .unwrap();
        out
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes member `id` through `c`, as an operator would: `Client::member_change_once`, so a
/// retry after an uncertain first answer (the leader lost leadership with the change in
/// flight) that finds the change made counts as done only if the member list names `id` as
/// removed. Any other error fails the test; the member list is checked either way.
pub fn remove_member(c: &mut Client, id: u64) {
    let change = kvpb::MemberChange {
        ops: vec![kvpb::MemberOp {
            kind: kvpb::member_op::Kind::Remove as i32,
            id,
            ..Default::default()
        }],
        expected_conf_index: 0,
    };
    if let Err(e) = c.member_change_once(change) {
        panic!("removing {id}: {e}");
    }
    let list = c.member_list().expect("member list after a removal");
    assert!(
        list.removed.contains(&id) && list.members.iter().all(|m| m.id != id),
        "removing {id} answered OK but it is still listed: {list:?}"
    );
}
