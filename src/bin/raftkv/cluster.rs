//! `raftkv cluster`: the local cluster supervisor. It spawns one `raftkv serve` child per
//! node on loopback (ports, HTTP ports included, and data directories derived from --base-port and --dir, the
//! tuning flags passed on), copies every child's output to stderr prefixed with `[n<id>]`,
//! watches for children that exit, and on SIGINT/SIGTERM/SIGHUP stops them all (SIGTERM, then
//! SIGKILL after 10 s). The nodes share a peer secret, `DIR/peer-secret`, generated on the
//! first start and reused after. With `--auth` they also require a client token,
//! `DIR/client-token`, made and reused the same way; without it the cluster is as open as
//! before (any client on loopback may read and write).
//!
//! `raftkv cluster add` and `raftkv cluster remove ID` change the membership of such a
//! cluster while it runs: `add` runs one more node in the foreground that joins it (`serve
//! --join`, ports and data directory derived the same way, see `extra_node`); `remove` sends
//! `member remove`. So a 3 -> 5 -> 3 change is two `add`s and two `remove`s.
//!
//! With `--tls` every node runs TLS on its client and RESP ports and mutual TLS on its peer
//! port, with a CA and node certificates made in `DIR/tls` on the first start and reused after
//! (`net::certgen`); `add` issues the new node's certificate from the same CA.

use crate::args::{ClusterAction, ClusterArgs, ServeArgs, ServeTls, Tuning};
use crate::output::EXIT_USAGE;
use raftkv::net::client_auth::ClientToken;
use raftkv::net::peer_auth::PeerSecrets;
use raftkv::server::{config::format_peers, PeerSpec};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The peer secret's file name in the cluster's base directory.
const PEER_SECRET_FILE: &str = "peer-secret";
/// The client token's file name in the cluster's base directory (`--auth`).
const CLIENT_TOKEN_FILE: &str = "client-token";

/// The children of a cluster: each node's id and its process until it exits or is stopped.
type Children = Vec<(u64, Option<Child>)>;

/// Runs the cluster until a signal (exit 0) or until every node has exited (exit 1).
pub fn cluster(mut a: ClusterArgs) -> ExitCode {
    match a.action.take() {
        Some(ClusterAction::Add { id, tuning }) => return add(&a, id, tuning),
        Some(ClusterAction::Remove { id }) => return remove(&a, id),
        None => {}
    }
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
    if let Err(e) = ensure_peer_secret(&a.dir) {
        eprintln!("raftkv cluster: {e}");
        return ExitCode::FAILURE;
    }
    if a.tls {
        if let Err(e) = ensure_tls(&a.dir, a.nodes) {
            eprintln!("raftkv cluster: {e}");
            return ExitCode::FAILURE;
        }
    }
    if a.auth {
        if let Err(e) = ensure_client_token(&a.dir) {
            eprintln!("raftkv cluster: {e}");
            return ExitCode::FAILURE;
        }
    }
    let shutdown = match raftkv::server::signal::install(raftkv::server::signal::OnHangup::Shutdown)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("raftkv cluster: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(mut children) = spawn_all(&exe, &a, &members) else {
        return ExitCode::FAILURE;
    };
    print_banner(&a, &members);
    if !supervise(&mut children, shutdown) {
        eprintln!("raftkv cluster: every node exited");
        return ExitCode::FAILURE;
    }
    eprintln!("raftkv cluster: stopping");
    stop_children(&mut children);
    ExitCode::SUCCESS
}

/// The cluster's peer secret file in the base directory.
fn peer_secret_path(dir: &Path) -> PathBuf {
    dir.join(PEER_SECRET_FILE)
}

/// Secure by default: the first start generates the cluster's peer secret (0600) in the base
/// directory; later starts reuse it, so a restarted cluster keeps talking to itself.
fn ensure_peer_secret(dir: &Path) -> Result<(), String> {
    ensure_generated(
        &peer_secret_path(dir),
        "the peer secret",
        PeerSecrets::load,
        PeerSecrets::generate,
    )
}

/// A generated key file: checked (`load`) if it exists, else made (`generate`) and announced.
fn ensure_generated<T>(
    path: &Path,
    what: &str,
    load: fn(&Path) -> Result<T, String>,
    generate: fn(&Path) -> Result<T, String>,
) -> Result<(), String> {
    if path.exists() {
        return load(path).map(|_| ());
    }
    generate(path)?;
    eprintln!("raftkv cluster: generated {what} {}", path.display());
    Ok(())
}

/// The directory of a `--tls` cluster's CA and node certificates.
fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("tls")
}

/// The cluster's CA certificate (what clients pass as `--tls-ca`).
pub fn tls_ca_path(dir: &Path) -> PathBuf {
    tls_dir(dir).join("ca.pem")
}

/// Secure by default, like the peer secret: the first `--tls` start makes the CA and node
/// certificates 1..=`nodes`; later starts reuse them (and issue only what is missing).
fn ensure_tls(dir: &Path, nodes: u64) -> Result<(), String> {
    let g = raftkv::net::certgen::init(&tls_dir(dir), nodes, &[])?;
    for f in &g.created {
        eprintln!("raftkv cluster: generated {}", f.display());
    }
    Ok(())
}

/// Node `id`'s TLS flags in a `--tls` cluster: its certificate on the client, RESP and peer
/// ports, the cluster CA for peers (and, by default, for forwarding).
fn serve_tls(dir: &Path, id: u64) -> ServeTls {
    let files = raftkv::net::certgen::node_files(&tls_dir(dir), id);
    ServeTls {
        client_tls_cert: Some(files.cert.clone()),
        client_tls_key: Some(files.key.clone()),
        client_tls_ca: None,
        peer_tls_cert: Some(files.cert),
        peer_tls_key: Some(files.key),
        peer_tls_ca: Some(tls_ca_path(dir)),
    }
}

/// A client of the local cluster (TLS with the cluster's CA under `--tls`, the client token
/// under `--auth`).
fn cluster_client(a: &ClusterArgs) -> Result<raftkv::client::Client, String> {
    let token = client_token(a).map(|p| ClientToken::load(&p)).transpose()?;
    let client = raftkv::client::Client::new(
        endpoints(a).split(',').map(str::to_string).collect(),
        raftkv::client::ClientOptions {
            token,
            ..Default::default()
        },
    );
    if !a.tls {
        return Ok(client);
    }
    let cfg =
        raftkv::net::tls::client_config(&tls_ca_path(&a.dir), None).map_err(|e| e.to_string())?;
    Ok(client.with_tls(cfg))
}

/// The cluster's client token file in the base directory (`--auth`).
fn client_token_path(dir: &Path) -> PathBuf {
    dir.join(CLIENT_TOKEN_FILE)
}

/// `--auth`: the first start generates the client token (0600), later ones reuse it, so
/// clients keep working across restarts.
fn ensure_client_token(dir: &Path) -> Result<(), String> {
    ensure_generated(
        &client_token_path(dir),
        "the client token",
        ClientToken::load,
        ClientToken::generate,
    )
}

/// The client token the cluster's nodes require, if `--auth`.
fn client_token(a: &ClusterArgs) -> Option<PathBuf> {
    a.auth.then(|| client_token_path(&a.dir))
}

/// Starts every member and streams its output; if one fails to start, stops the ones
/// already started and returns `None`.
fn spawn_all(exe: &Path, a: &ClusterArgs, members: &[PeerSpec]) -> Option<Children> {
    let peers = format_peers(members);
    let mut children: Children = Vec::new();
    for m in members {
        let http = http_addr(a.base_port, a.nodes, m.id);
        match spawn_node(exe, m.id, a, &peers, &http) {
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
                return None;
            }
        }
    }
    Some(children)
}

/// Tells the user where the cluster is and how to use it.
fn print_banner(a: &ClusterArgs, members: &[PeerSpec]) {
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
    for m in members {
        let h = http_addr(a.base_port, a.nodes, m.id);
        println!(
            "node {} HTTP: http://{h}/livez /readyz /status /metrics",
            m.id
        );
    }
    let redis: Vec<String> = members
        .iter()
        .filter_map(|m| m.redis_addr.clone())
        .collect();
    println!("Redis protocol (RESP) endpoints: {}", redis.join(","));
    let mut flags = String::new();
    if a.tls {
        let ca = tls_ca_path(&a.dir);
        println!(
            "TLS on client, RESP and peer ports; clients trust the CA {}",
            ca.display()
        );
        flags = format!(" --tls-ca {}", ca.display());
    }
    // Plain redis-cli cannot reach a TLS port: suggested only without --tls.
    let port = redis
        .first()
        .filter(|_| !a.tls)
        .and_then(|r| r.rsplit_once(':'))
        .map(|(_, p)| p);
    match client_token(a) {
        None => {
            println!("try: raftkv put{flags} --endpoints {endpoints} greeting hello");
            if let Some(port) = port {
                println!("  or: redis-cli -p {port} set greeting hello   (on the leader)");
            }
        }
        Some(token) => {
            let t = token.display();
            println!("clients must authenticate with the client token in {t} (--auth):");
            println!("try: export RAFTKV_TOKEN_FILE={t}");
            println!("     raftkv put{flags} --endpoints {endpoints} greeting hello");
            if let Some(port) = port {
                println!(
                    "  or: REDISCLI_AUTH=$(grep -v '^#' {t}) redis-cli -p {port} set greeting \
                     hello   (on the leader)"
                );
            }
        }
    }
    println!(
        "grow it: `raftkv cluster add` (another terminal, same --dir/--base-port/--nodes); \
         shrink it: `raftkv cluster remove ID`"
    );
    println!("Ctrl-C stops the cluster; re-run the same command to restart it with its data.");
    let _ = std::io::stdout().flush();
}

/// Polls the children every 100 ms, reporting each one that exits, until `shutdown` is set
/// (returns true) or none is left alive (returns false).
fn supervise(children: &mut Children, shutdown: &AtomicBool) -> bool {
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
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The members of a local cluster: clients on BASE.., peers on BASE+N.., (HTTP on BASE+2N..,)
/// RESP on BASE+3N...
fn cluster_members(nodes: u64, base: u16) -> Result<Vec<PeerSpec>, String> {
    if nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if base as u64 + 4 * nodes > 65536 {
        return Err(format!(
            "--base-port {base} leaves no room for {nodes} nodes"
        ));
    }
    Ok((1..=nodes)
        .map(|i| PeerSpec {
            id: i,
            peer_addr: format!("127.0.0.1:{}", base as u64 + nodes + i - 1),
            client_addr: Some(format!("127.0.0.1:{}", base as u64 + i - 1)),
            redis_addr: Some(format!("127.0.0.1:{}", base as u64 + 3 * nodes + i - 1)),
        })
        .collect())
}

/// `raftkv cluster add`: runs node `id` (default: the first one above --nodes without a data
/// directory) as `serve --join` against the cluster's nodes, in this process.
fn add(a: &ClusterArgs, id: Option<u64>, tuning: Tuning) -> ExitCode {
    let id = id.unwrap_or_else(|| {
        (a.nodes + 1..)
            .find(|i| !a.dir.join(format!("n{i}")).exists())
            .unwrap_or(a.nodes + 1)
    });
    let (node, http) = match extra_node(a.base_port, a.nodes, id) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("raftkv cluster add: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    println!(
        "raftkv cluster add: node {id} joins, clients on {}, data in {}",
        node.client_addr.as_deref().unwrap_or_default(),
        a.dir.join(format!("n{id}")).display()
    );
    let _ = std::io::stdout().flush();
    let tls = if a.tls {
        if let Err(e) = ensure_tls(&a.dir, id) {
            eprintln!("raftkv cluster add: {e}");
            return ExitCode::FAILURE;
        }
        serve_tls(&a.dir, id)
    } else {
        ServeTls::default()
    };
    crate::serve::serve(ServeArgs {
        id,
        data_dir: a.dir.join(format!("n{id}")),
        peers: String::new(),
        join: Some(endpoints(a)),
        peer_addr: Some(node.peer_addr),
        client_addr: node.client_addr,
        http_addr: Some(http),
        redis_addr: node.redis_addr,
        // The cluster's shared secret, made by its first start.
        peer_secret_file: Some(peer_secret_path(&a.dir)),
        insecure_peers: false,
        tls,
        client_token_file: client_token(a),
        tuning,
    })
}

/// `raftkv cluster remove ID`: `member remove ID` against the cluster's nodes.
fn remove(a: &ClusterArgs, id: u64) -> ExitCode {
    let mut client = match cluster_client(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("raftkv cluster remove: {e}");
            return ExitCode::FAILURE;
        }
    };
    let op = raftkv::pb::kvpb::MemberOp {
        kind: raftkv::pb::kvpb::member_op::Kind::Remove as i32,
        id,
        ..Default::default()
    };
    let change = raftkv::pb::kvpb::MemberChange {
        ops: vec![op],
        expected_conf_index: 0,
    };
    match client.member_change_once(change) {
        Ok(i) => {
            println!("node {id} removed (configuration entry {i}); it exits by itself");
            ExitCode::SUCCESS
        }
        Err(e) => ExitCode::from(crate::output::fail(e, false)),
    }
}

/// The client endpoints of a local cluster: its first nodes, and every added node that has
/// a data directory (it may be the only one left after a 3 -> 5 -> 3 change).
fn endpoints(a: &ClusterArgs) -> String {
    let mut eps: Vec<String> = cluster_members(a.nodes, a.base_port)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.client_addr)
        .collect();
    let added = (a.nodes + 1..).take_while(|i| a.dir.join(format!("n{i}")).exists());
    for i in added {
        if let Ok((m, _)) = extra_node(a.base_port, a.nodes, i) {
            eps.extend(m.client_addr);
        }
    }
    eps.join(",")
}

/// Addresses of node `id` > `nodes`, added later: client, peer, HTTP and RESP ports on
/// BASE+4N+4(id-N-1) and the next three (after the first nodes' RESP ports).
fn extra_node(base: u16, nodes: u64, id: u64) -> Result<(PeerSpec, String), String> {
    if id <= nodes {
        return Err(format!(
            "node {id} is one of the cluster's first {nodes}: `raftkv cluster` runs it"
        ));
    }
    let first = base as u64 + 4 * nodes + 4 * (id - nodes - 1);
    if first + 3 > 65535 {
        return Err(format!(
            "no ports left for node {id} above --base-port {base}"
        ));
    }
    let spec = PeerSpec {
        id,
        peer_addr: format!("127.0.0.1:{}", first + 1),
        client_addr: Some(format!("127.0.0.1:{first}")),
        redis_addr: Some(format!("127.0.0.1:{}", first + 3)),
    };
    Ok((spec, format!("127.0.0.1:{}", first + 2)))
}

/// Node `id`'s HTTP address: after the client and peer ports, on BASE+2N+id-1.
fn http_addr(base: u16, nodes: u64, id: u64) -> String {
    format!("127.0.0.1:{}", base as u64 + 2 * nodes + id - 1)
}

/// Starts `raftkv serve` for node `id` (data in DIR/n<id>), its stdout and stderr piped.
fn spawn_node(
    exe: &Path,
    id: u64,
    a: &ClusterArgs,
    peers: &str,
    http: &str,
) -> std::io::Result<Child> {
    let (dir, tuning) = (a.dir.as_path(), &a.tuning);
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg(format!("--id={id}"))
        .arg("--data-dir")
        .arg(dir.join(format!("n{id}")))
        .arg(format!("--peers={peers}"))
        .arg(format!("--http-addr={http}"))
        .arg("--peer-secret-file")
        .arg(peer_secret_path(dir));
    if let Some(t) = client_token(a) {
        cmd.arg("--client-token-file").arg(t);
    }
    cmd.args(tuning.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if a.tls {
        let t = serve_tls(dir, id);
        let pairs = [
            ("--client-tls-cert", t.client_tls_cert),
            ("--client-tls-key", t.client_tls_key),
            ("--peer-tls-cert", t.peer_tls_cert),
            ("--peer-tls-key", t.peer_tls_key),
            ("--peer-tls-ca", t.peer_tls_ca),
        ];
        for (flag, path) in pairs {
            if let Some(p) = path {
                cmd.arg(flag).arg(p);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::DEFAULT_ENDPOINTS;

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
        assert_eq!(http_addr(7001, 3, 1), "127.0.0.1:7007");
        assert_eq!(http_addr(7001, 3, 3), "127.0.0.1:7009");
        assert!(
            cluster_members(3, 65525).is_err(),
            "HTTP and RESP ports need room too"
        );
        assert_eq!(m[0].redis_addr.as_deref(), Some("127.0.0.1:7010"));
        assert_eq!(m[2].redis_addr.as_deref(), Some("127.0.0.1:7012"));
        // Added nodes start right after the first nodes' HTTP ports.
        let (n4, http4) = extra_node(7001, 3, 4).unwrap();
        assert_eq!(n4.client_addr.as_deref(), Some("127.0.0.1:7013"));
        assert_eq!(
            (n4.peer_addr.as_str(), http4.as_str()),
            ("127.0.0.1:7014", "127.0.0.1:7015")
        );
        assert_eq!(
            extra_node(7001, 3, 5).unwrap().0.peer_addr,
            "127.0.0.1:7018"
        );
        assert!(extra_node(7001, 3, 3).is_err());
    }
}
