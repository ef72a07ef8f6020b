//! TLS end to end: real `raftkv serve` processes with TLS on the client, RESP and peer ports,
//! driven through the CLI, the client library, a RESP client over rustls and raw sockets.

mod common;

use common::{wait_for, Cluster, EXE};
use raftkv::client::{Client, ClientOptions};
use raftkv::net::certgen;
use raftkv::pb::kvpb;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cluster's TLS material: one CA, one node certificate shared by every node (each node's
/// identity is proved by the HMAC handshake inside TLS; the certificate proves the CA issued
/// it), in a temp dir that lives as long as the test.
struct Material {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn material() -> Material {
    let dir = tempfile::tempdir().unwrap();
    let g = certgen::init(dir.path(), 1, &[]).unwrap();
    Material {
        ca: g.ca,
        cert: g.nodes[0].cert.clone(),
        key: g.nodes[0].key.clone(),
        _dir: dir,
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn client_tls_args(m: &Material) -> Vec<String> {
    vec![
        format!("--client-tls-cert={}", p(&m.cert)),
        format!("--client-tls-key={}", p(&m.key)),
    ]
}

fn peer_tls_args(m: &Material) -> Vec<String> {
    vec![
        format!("--peer-tls-cert={}", p(&m.cert)),
        format!("--peer-tls-key={}", p(&m.key)),
        format!("--peer-tls-ca={}", p(&m.ca)),
    ]
}

fn tls_client(c: &Cluster, ca: &Path) -> Client {
    let cfg = raftkv::net::tls::client_config(ca, None).unwrap();
    Client::new(
        c.endpoints(),
        ClientOptions {
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .with_tls(cfg)
}

/// Node `id`'s status over TLS (None if it does not answer).
fn tls_status(c: &Cluster, ca: &Path, id: u64) -> Option<kvpb::StatusResponse> {
    let cfg = raftkv::net::tls::client_config(ca, None).unwrap();
    let opts = ClientOptions {
        timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let addr = c.addr(id);
    Client::new(vec![addr.clone()], opts)
        .with_tls(cfg)
        .status(&addr)
        .ok()
}

/// The leader once every node agrees on it (statuses over TLS).
fn tls_leader(c: &Cluster, ca: &Path) -> u64 {
    wait_for("a leader (over TLS)", Duration::from_secs(15), || {
        let ids: Vec<u64> = c.running();
        let leaders: Vec<u64> = ids
            .iter()
            .map(|&id| tls_status(c, ca, id).map(|s| s.leader_id))
            .collect::<Option<_>>()?;
        let l = leaders[0];
        (l != 0 && leaders.iter().all(|&x| x == l)).then_some(l)
    })
}

/// `raftkv ARGS` with the cluster's endpoints; (exit code, stdout, stderr, time taken).
fn cli(c: &Cluster, args: &[&str]) -> (i32, String, String, Duration) {
    let t0 = Instant::now();
    let out = Command::new(EXE)
        .args(args)
        .arg(format!("--endpoints={}", c.endpoints().join(",")))
        .env_remove("RAFTKV_TLS_CA")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed(),
    )
}

/// A RESP exchange over TLS: sends `input`, reads until `want` arrived (or fails).
fn resp_over_tls(addr: &str, ca: &Path, input: &[u8], want: &str) {
    let cfg = raftkv::net::tls::client_config(ca, None).unwrap();
    let name = raftkv::net::tls::server_name(addr).unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(&cfg), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(input).unwrap();
    s.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = s.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "RESP over TLS: {e}; so far {:?}",
                String::from_utf8_lossy(&got)
            )
        });
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn tls_init_writes_private_keys_once_and_reuses_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("tls");
    let run = |nodes: &str| {
        let out = Command::new(EXE)
            .args(["tls", "init", "--dir", &p(&d), "--nodes", nodes])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run("2");
    assert!(first.contains("node-2-key.pem"), "{first}");
    assert!(
        first.contains(&format!("--tls-ca {}", p(&d.join("ca.pem")))),
        "{first}"
    );
    for f in ["ca-key.pem", "node-1-key.pem", "node-2-key.pem"] {
        let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let ca = std::fs::read(d.join("ca.pem")).unwrap();
    let again = run("2");
    assert!(again.contains("nothing written"), "{again}");
    assert_eq!(std::fs::read(d.join("ca.pem")).unwrap(), ca);
}

/// Client TLS and peer TLS together: the CLI and the library with the CA are served (writes
/// through a follower are forwarded to the leader's TLS client port); without the CA or with
/// another CA they are refused at once with a message saying why; plaintext to a TLS port is
/// refused and the node keeps serving; RESP works over TLS; the peer links (mutual TLS)
/// elect and replicate.
#[test]
fn a_tls_cluster_serves_clients_with_the_ca_and_refuses_the_others() {
    let m = material();
    let other = material();
    let mut args = client_tls_args(&m);
    args.extend(peer_tls_args(&m));
    args.push("--forward".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Cluster::start_resp(3, &argv);
    let leader = tls_leader(&c, &m.ca);
    let follower = (1..=3).find(|&i| i != leader).unwrap();

    // The library, through every node (a follower forwards over TLS).
    let mut client = tls_client(&c, &m.ca);
    client.put(b"lib", b"one").unwrap();
    let mut via_follower = Client::new(
        vec![c.addr(follower)],
        ClientOptions {
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .with_tls(raftkv::net::tls::client_config(&m.ca, None).unwrap());
    via_follower.put(b"fwd", b"two").unwrap();
    assert_eq!(client.get(b"fwd").unwrap().value, b"two".as_slice());

    // The CLI with --tls-ca.
    let ca = format!("--tls-ca={}", p(&m.ca));
    let (code, _, err, _) = cli(&c, &["put", &ca, "cli", "three"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err, _) = cli(&c, &["get", &ca, "lib"]);
    assert_eq!((code, out.as_str()), (0, "one\n"), "{err}");

    // Without the CA: the server's TLS alert is recognised; with another CA: unknown
    // issuer. Both fail at the first endpoint, well before the 5 s deadline.
    let (code, _, err, took) = cli(&c, &["get", "lib"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("serves TLS") && err.contains("--tls-ca"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}: retried instead of failing"
    );
    let wrong = format!("--tls-ca={}", p(&other.ca));
    let (code, _, err, took) = cli(&c, &["get", &wrong, "lib"]);
    assert_ne!(code, 0);
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // Plaintext bytes (a native frame) on the TLS client port: answered with an alert or
    // closed, never served; the node goes on serving TLS clients.
    let mut raw = TcpStream::connect(c.addr(leader)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = raftkv::net::framing::frame_bytes(&common::put_req(1, "plain", "x"));
    raw.write_all(&frame).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer[0] == 21,
        "plaintext got a non-alert answer: {answer:?}"
    );
    assert!(client.get(b"plain").unwrap().value.is_empty());
    client.put(b"after", b"ok").unwrap();

    // A connection that never starts its TLS handshake is closed after the handshake
    // deadline (2 s, as for peers), not held forever.
    let mut idle = TcpStream::connect(c.addr(leader)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t0 = Instant::now();
    let n = idle.read(&mut [0u8; 16]).unwrap_or(0);
    let waited = t0.elapsed();
    assert_eq!(n, 0, "expected a close");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(15),
        "closed after {waited:?}, the deadline is 2 s"
    );

    // RESP over TLS on the leader's RESP port.
    resp_over_tls(
        &c.redis_addr(leader),
        &m.ca,
        b"*3\r\n$3\r\nSET\r\n$1\r\nr\r\n$2\r\nv1\r\n*2\r\n$3\r\nGET\r\n$1\r\nr\r\n",
        "+OK\r\n$2\r\nv1\r\n",
    );

    // Replication over the mutual-TLS peer links: every node applies the last write.
    client.put(b"last", b"x").unwrap();
    let index = tls_status(&c, &m.ca, leader)
        .expect("leader status")
        .commit_index;
    wait_for(
        "every node applied the writes",
        Duration::from_secs(10),
        || {
            (1..=3)
                .all(|id| tls_status(&c, &m.ca, id).is_some_and(|s| s.applied_index >= index))
                .then_some(())
        },
    );
}

/// A node whose peer certificate comes from another CA is refused by the others' peer
/// listeners (and refuses them): it cannot take part, while the two others keep serving.
/// Given a certificate from the cluster's CA again, the same node catches up.
#[test]
fn a_node_with_a_certificate_from_another_ca_cannot_join_the_peer_mesh() {
    let m = material();
    let other = material();
    let args = peer_tls_args(&m);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Cluster::start(3, &argv);
    c.wait_leader();
    let mut client = c.client();
    client.put(b"k0", b"v").unwrap();
    c.stop(3);
    c.args = peer_tls_args(&other);
    c.start_node(3);
    for i in 1..=20 {
        client.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let leader = wait_for("a leader among 1 and 2", Duration::from_secs(10), || {
        [1, 2]
            .into_iter()
            .filter_map(|id| common::status(&c.addr(id)))
            .find(|s| s.role == "leader")
    });
    let last = leader.commit_index;
    // Refused in the TLS handshake, on both sides of the link, and said so in the logs.
    for id in [3, leader.node_id] {
        wait_for(
            "a refused TLS handshake logged",
            Duration::from_secs(10),
            || {
                let log = c.node_log(id);
                let refused = log.lines().any(|l| l.contains("refused: TLS"));
                refused.then_some(())
            },
        );
    }
    let s3 = common::status(&c.addr(3)).expect("node 3 answers status");
    assert!(
        s3.applied_index < last,
        "node 3 applied {} of {last} with a foreign certificate",
        s3.applied_index
    );
    // Back with the cluster's CA: it catches up (the refusal was the certificate's).
    c.stop(3);
    c.args = peer_tls_args(&m);
    c.start_node(3);
    wait_for("node 3 catches up", Duration::from_secs(15), || {
        common::status(&c.addr(3))
            .is_some_and(|s| s.applied_index >= last)
            .then_some(())
    });
}
