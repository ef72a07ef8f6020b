//! Client authentication (`serve --client-token-file`, docs/security.md "Client tokens")
//! against real process clusters: native requests, the client library, the CLI, forwarding
//! from a follower, the RESP port through the `redis` crate, and a flood of wrong tokens.

mod common;

use common::{metric, wait_for, Cluster, ProcGuard, EXE};
use raftkv::client::{Client, ClientError, ClientOptions};
use raftkv::net::client_auth::ClientToken;
use raftkv::net::framing::blocking;
use raftkv::pb::kvpb::{self, request::Op, response::Result as R, ErrorCode};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Ticks of 50 ms: the tests talk to one leader throughout (see tests/resp.rs).
const STABLE: &str = "--tick-ms=50";

/// A token file (0600) in its own directory, and the `serve` flag naming it.
struct TokenFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
    token: ClientToken,
}

impl TokenFile {
    fn new() -> TokenFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-token");
        let token = ClientToken::generate(&path).expect("generate a client token");
        TokenFile {
            _dir: dir,
            path,
            token,
        }
    }

    fn flag(&self) -> String {
        format!("--client-token-file={}", self.path.display())
    }

    fn secret(&self) -> String {
        String::from_utf8(self.token.secret().to_vec()).unwrap()
    }
}

fn opts(token: Option<ClientToken>) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(10),
        token,
        ..Default::default()
    }
}

/// A raw native connection to `addr`, one request at a time.
struct Raw(TcpStream);

impl Raw {
    fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    fn call(&mut self, id: u64, op: Op) -> R {
        let req = kvpb::Request {
            id,
            op: Some(op),
            ..Default::default()
        };
        blocking::write_msg(&mut self.0, &req).expect("send");
        let resp: kvpb::Response = blocking::read_msg(&mut self.0, 1 << 20).expect("answer");
        assert_eq!(resp.id, id, "answers come in order on this connection");
        resp.result.expect("a result")
    }

    fn auth(&mut self, token: &[u8]) -> R {
        self.call(
            999,
            Op::Auth(kvpb::Auth {
                token: token.to_vec().into(),
            }),
        )
    }
}

fn error_code(r: &R) -> Option<ErrorCode> {
    match r {
        R::Error(e) => Some(e.code()),
        _ => None,
    }
}

fn put(k: &str, v: &str) -> Op {
    Op::Put(kvpb::Put {
        key: k.as_bytes().to_vec().into(),
        value: v.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

fn get(k: &str) -> Op {
    Op::Get(kvpb::Get {
        key: k.as_bytes().to_vec().into(),
    })
}

#[test]
fn without_the_token_nothing_is_served_or_written() {
    let tf = TokenFile::new();
    let cluster = Cluster::start(3, &[STABLE, &tf.flag()]);
    let leader = cluster.wait_leader();
    let addr = cluster.addr(leader);

    // Raw requests of every kind before Auth: refused, Status alone answered.
    let mut raw = Raw::connect(&addr);
    let k = |s: &str| s.as_bytes().to_vec().into();
    let refused = [
        put("secret", "v"),
        get("secret"),
        Op::Delete(kvpb::Delete { key: k("secret") }),
        Op::Cas(kvpb::Cas {
            key: k("secret"),
            expected_version: 0,
            value: k("v"),
            delete: false,
        }),
        Op::Incr(kvpb::Incr {
            key: k("n"),
            delta: 1,
        }),
        Op::Scan(kvpb::Scan::default()),
        Op::MultiGet(kvpb::MultiGet {
            keys: vec![k("secret")],
        }),
        Op::DeleteAll(kvpb::DeleteAll {}),
        Op::MemberList(kvpb::MemberListRequest {}),
        Op::LeaderTransfer(kvpb::LeaderTransfer { to: 0 }),
        Op::SnapshotBegin(kvpb::SnapshotBegin { min_index: 0 }),
        Op::Alarm(kvpb::AlarmRequest { disarm: true }),
    ];
    let n_refused = refused.len();
    for (i, op) in refused.into_iter().enumerate() {
        let what = format!("{op:?}");
        let r = raw.call(i as u64 + 1, op);
        assert_eq!(
            error_code(&r),
            Some(ErrorCode::Unauthenticated),
            "{what}: {r:?}"
        );
    }
    assert!(matches!(
        raw.call(50, Op::Status(kvpb::StatusRequest {})),
        R::Status(_)
    ));
    // A wrong token is refused and leaves the connection unauthenticated.
    let r = raw.auth(b"not-the-token-but-long-enough");
    assert_eq!(error_code(&r), Some(ErrorCode::Unauthenticated), "{r:?}");
    assert_eq!(
        error_code(&raw.call(51, put("secret", "v"))),
        Some(ErrorCode::Unauthenticated)
    );
    // The right one: served on the same connection.
    assert!(matches!(raw.auth(tf.secret().as_bytes()), R::Auth(a) if a.required));
    assert!(
        matches!(raw.call(52, get("secret")), R::Get(g) if !g.found),
        "nothing of the {n_refused} refused requests was written"
    );

    // The client library: no token and a wrong token fail at once (not at the deadline),
    // with UNAUTHENTICATED; the right token reads and writes.
    for token in [
        None,
        Some(ClientToken::parse("wrong-token-0123456789", "t").unwrap()),
    ] {
        let had = token.is_some();
        let mut c = Client::new(cluster.endpoints(), opts(token));
        let t0 = Instant::now();
        match c.put(b"secret", b"v") {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code(), ErrorCode::Unauthenticated, "{e:?}")
            }
            other => panic!("token {had}: put answered {other:?}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "token {had}: refused only after {:?} (must not retry until the deadline)",
            t0.elapsed()
        );
    }
    let mut c = Client::new(cluster.endpoints(), opts(Some(tf.token.clone())));
    let g = c.get(b"secret").expect("authenticated read");
    assert!(!g.found, "no refused write applied: {g:?}");
    c.put(b"lib", b"works").expect("authenticated write");
    assert_eq!(&c.get(b"lib").unwrap().value[..], b"works");

    // The CLI: --token-file and RAFTKV_TOKEN_FILE work, nothing refuses with exit 4, a
    // world-readable token file is a usage error (2) that never shows the token.
    let eps = cluster.endpoints().join(",");
    let cli = |args: &[&str], env: Option<&Path>| {
        let mut cmd = Command::new(EXE);
        cmd.args(args).arg(format!("--endpoints={eps}"));
        cmd.env_remove("RAFTKV_TOKEN_FILE");
        if let Some(p) = env {
            cmd.env("RAFTKV_TOKEN_FILE", p);
        }
        let out = cmd.output().expect("run raftkv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tok = format!("--token-file={}", tf.path.display());
    let (code, _, err) = cli(&["put", "cli", "v1"], None);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let (code, _, err) = cli(&["put", "cli", "v1", &tok], None);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli(&["get", "cli"], Some(&tf.path));
    assert_eq!((code, out.trim()), (Some(0), "v1"), "{err}");
    let loose = tf.path.with_file_name("loose-token");
    std::fs::copy(&tf.path, &loose).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (code, _, err) = cli(
        &["get", "cli", &format!("--token-file={}", loose.display())],
        None,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("chmod 600") && !err.contains(&tf.secret()),
        "{err}"
    );
}

#[test]
fn a_follower_forwards_with_its_own_token() {
    let tf = TokenFile::new();
    let cluster = Cluster::start(3, &[STABLE, "--forward", &tf.flag()]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    // Straight to the follower, no redirect possible on a raw connection: a put answered with
    // its version went through the follower's own authenticated link to the leader.
    let mut raw = Raw::connect(&cluster.addr(follower));
    assert_eq!(
        error_code(&raw.call(1, put("fwd", "v"))),
        Some(ErrorCode::Unauthenticated),
        "the follower checks the client's token before it forwards"
    );
    assert!(matches!(raw.auth(tf.secret().as_bytes()), R::Auth(_)));
    for i in 2..20u64 {
        let r = raw.call(i, put("fwd", &format!("v{i}")));
        assert!(
            matches!(r, R::Put(ref p) if p.version > 0),
            "forwarded put {i}: {r:?}"
        );
    }
    let r = raw.call(20, get("fwd"));
    assert!(
        matches!(&r, R::Get(g) if g.found && &g.value[..] == b"v19"),
        "forwarded linearizable read: {r:?}"
    );
    let log = cluster.node_log(follower);
    assert!(!log.contains("refused this node's client token"), "{log}");
}

/// The leader's RESP address of a cluster started with `start_resp` and a token.
fn resp_url(addr: &str, password: Option<&str>) -> String {
    match password {
        Some(p) => format!("redis://default:{p}@{addr}/"),
        None => format!("redis://{addr}/"),
    }
}

fn redis_conn(url: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))
}

fn redis_err(r: redis::RedisResult<redis::Value>) -> String {
    match r {
        Ok(v) => panic!("succeeded with {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

#[test]
fn resp_auth_noauth_wrongpass_and_hello() {
    let tf = TokenFile::new();
    let cluster = Cluster::start_resp(3, &[STABLE, &tf.flag()]);
    let leader = cluster.wait_leader();
    let addr = cluster.redis_addr(leader);
    let pw = tf.secret();
    let mut c = wait_for("a RESP connection", Duration::from_secs(10), || {
        redis_conn(&resp_url(&addr, None)).ok()
    });
    let q = |c: &mut redis::Connection, args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(c)
    };
    // Before AUTH: PING answers, the rest is NOAUTH (nothing runs: READONLY included).
    assert_eq!(
        q(&mut c, &["PING"]).unwrap(),
        redis::Value::SimpleString("PONG".into())
    );
    for cmd in [
        &["SET", "k", "v"][..],
        &["GET", "k"],
        &["READONLY"],
        &["CLIENT", "SETNAME", "x"],
        &["ECHO", "x"],
        &["FLUSHDB"],
    ] {
        assert_eq!(
            redis_err(q(&mut c, cmd)),
            "NOAUTH Authentication required.",
            "{cmd:?}"
        );
    }
    let e = redis_err(q(&mut c, &["HELLO", "2"]));
    assert!(e.starts_with("NOAUTH HELLO must be called"), "{e}");
    // Wrong password, wrong user: WRONGPASS, still unauthenticated.
    let wrongpass = "WRONGPASS invalid username-password pair or user is disabled.";
    assert_eq!(
        redis_err(q(&mut c, &["AUTH", "nope-nope-nope-nope"])),
        wrongpass
    );
    assert_eq!(redis_err(q(&mut c, &["AUTH", "admin", &pw])), wrongpass);
    assert_eq!(
        redis_err(q(&mut c, &["GET", "k"])),
        "NOAUTH Authentication required."
    );
    // AUTH password, then commands work.
    assert_eq!(q(&mut c, &["AUTH", &pw]).unwrap(), redis::Value::Okay);
    assert_eq!(q(&mut c, &["SET", "k", "v"]).unwrap(), redis::Value::Okay);
    assert_eq!(
        q(&mut c, &["GET", "k"]).unwrap(),
        redis::Value::BulkString(b"v".to_vec())
    );
    // HELLO 2 AUTH default password (and SETNAME) on a fresh connection.
    let mut h = redis_conn(&resp_url(&addr, None)).expect("connect");
    let r = q(
        &mut h,
        &[
            "HELLO",
            "2",
            "AUTH",
            "default",
            "wrong-wrong-wrong",
            "SETNAME",
            "x",
        ],
    );
    assert_eq!(redis_err(r), wrongpass);
    let r = q(
        &mut h,
        &["HELLO", "2", "AUTH", "default", &pw, "SETNAME", "me"],
    )
    .unwrap();
    assert!(
        matches!(r, redis::Value::Array(ref v) if v.len() == 14),
        "{r:?}"
    );
    assert_eq!(
        q(&mut h, &["CLIENT", "GETNAME"]).unwrap(),
        redis::Value::BulkString(b"me".to_vec())
    );
    assert_eq!(
        q(&mut h, &["GET", "k"]).unwrap(),
        redis::Value::BulkString(b"v".to_vec())
    );
    // The redis crate's own AUTH from a URL with user and password.
    let mut u = redis_conn(&resp_url(&addr, Some(&pw))).expect("authenticated by the URL");
    assert_eq!(
        q(&mut u, &["GET", "k"]).unwrap(),
        redis::Value::BulkString(b"v".to_vec())
    );
    let bad = redis_conn(&resp_url(&addr, Some("wrong-wrong-wrong-wrong")));
    assert!(
        bad.is_err(),
        "a wrong URL password must fail the connection"
    );
}

#[test]
fn a_thousand_wrong_tokens_leave_the_node_serving_and_counted() {
    const BAD: u64 = 1000;
    let tf = TokenFile::new();
    let cluster = Cluster::start_http(1, &[STABLE, &tf.flag()]);
    cluster.wait_leader();
    let addr = cluster.addr(1);
    let t0 = Instant::now();
    // Pipelined on one connection, which stays open through all of them.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    for i in 0..BAD {
        let req = kvpb::Request {
            id: i + 1,
            op: Some(Op::Auth(kvpb::Auth {
                token: format!("guess-{i:020}").into_bytes().into(),
            })),
            ..Default::default()
        };
        out.extend_from_slice(&raftkv::net::framing::frame_bytes(&req));
    }
    s.write_all(&out).unwrap();
    for i in 0..BAD {
        let resp: kvpb::Response = blocking::read_msg(&mut s, 1 << 20).expect("an answer");
        assert_eq!(resp.id, i + 1);
        let code = resp.result.as_ref().and_then(error_code);
        assert_eq!(code, Some(ErrorCode::Unauthenticated), "{resp:?}");
    }
    let mut raw = Raw(s);
    assert!(
        matches!(raw.auth(tf.secret().as_bytes()), R::Auth(_)),
        "the same connection"
    );
    let elapsed = t0.elapsed();
    // Still serving others.
    let mut c = Client::new(vec![addr.clone()], opts(Some(tf.token.clone())));
    c.put(b"after", b"flood").expect("served after the flood");
    assert_eq!(&c.get(b"after").unwrap().value[..], b"flood");
    let http = cluster.http_addr(1);
    assert_eq!(metric(&http, "raftkv_client_auth_failures_total", ""), BAD);
    // This test's authentications: the raw connection's and the client library's.
    assert_eq!(metric(&http, "raftkv_client_auth_total", ""), 2);
    let mut un = Raw::connect(&addr);
    assert_eq!(
        error_code(&un.call(1, get("after"))),
        Some(ErrorCode::Unauthenticated)
    );
    assert_eq!(
        metric(&http, "raftkv_client_unauthenticated_requests_total", ""),
        1
    );
    // Logged at most once a second (plus the first line), never with a token.
    let log = cluster.node_log(1);
    let lines = log
        .lines()
        .filter(|l| l.contains("wrong client token"))
        .count() as u64;
    let bound = elapsed.as_secs() + 2;
    assert!(
        (1..=bound).contains(&lines),
        "{lines} log lines for {BAD} wrong tokens in {elapsed:?} (bound {bound})"
    );
    assert!(
        !log.contains("guess-") && !log.contains(&tf.secret()),
        "a token in the log"
    );
}

/// `raftkv cluster --auth`: the first start writes DIR/client-token (0600) and every node
/// requires it; the banner says how to use it; a restart reuses it.
#[test]
fn cluster_auth_makes_and_reuses_a_token() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;
    let base = raftkv::net::ports::free_port_range(4).expect("4 consecutive free ports");
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        ProcGuard(
            Command::new(EXE)
                .args(["cluster", "--auth", "--nodes=1", "--log-level=warn"])
                .arg("--segment-size=1048576")
                .arg("--dir")
                .arg(dir.path())
                .arg(format!("--base-port={base}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let token_path = dir.path().join("client-token");
    let ep = format!("--endpoints=127.0.0.1:{base}");
    let tok = format!("--token-file={}", token_path.display());
    let cli = |args: &[&str]| {
        let out = Command::new(EXE)
            .args(args)
            .env_remove("RAFTKV_TOKEN_FILE")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code().unwrap_or(-1), stdout)
    };
    let mut guard = start();
    wait_for("an authenticated put", Duration::from_secs(20), || {
        (cli(&["put", &ep, &tok, "--timeout-ms=1000", "k", "v"]).0 == 0).then_some(())
    });
    let mode = token_path.metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read(&token_path).unwrap();
    assert_eq!(cli(&["get", &ep, "k"]).0, 4, "refused without the token");
    let banner = guard.interrupt_and_read_stdout();
    let shown = format!("RAFTKV_TOKEN_FILE={}", token_path.display());
    assert!(banner.contains(&shown), "{banner}");
    let secret = String::from_utf8_lossy(&token)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(
        !banner.contains(&secret),
        "the banner shows the token itself: {banner}"
    );
    wait_for(
        "the node to release its port",
        Duration::from_secs(10),
        || {
            TcpStream::connect(format!("127.0.0.1:{base}"))
                .is_err()
                .then_some(())
        },
    );
    let _guard = start();
    let got = wait_for("the restarted cluster", Duration::from_secs(20), || {
        let (code, out) = cli(&["get", &ep, &tok, "--timeout-ms=1000", "k"]);
        (code == 0).then_some(out)
    });
    assert_eq!(got, "v\n");
    assert_eq!(
        std::fs::read(&token_path).unwrap(),
        token,
        "the token was not reused"
    );
}

/// A node started with a different token file than the leader's: its clients (with its token)
/// are let in, but its forwarding link is refused by the leader, logged, and what it forwarded
/// is answered as for a broken link; nothing is written.
#[test]
fn a_follower_with_another_token_cannot_forward() {
    let tf = TokenFile::new();
    let other = TokenFile::new();
    let mut cluster = Cluster::start(3, &[STABLE, "--forward", &tf.flag()]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    cluster.stop(follower);
    for a in cluster.args.iter_mut() {
        if a.starts_with("--client-token-file=") {
            *a = other.flag();
        }
    }
    cluster.start_node(follower);
    let mut raw = wait_for("the restarted follower", Duration::from_secs(10), || {
        TcpStream::connect(cluster.addr(follower)).ok().map(|s| {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Raw(s)
        })
    });
    assert!(matches!(raw.auth(other.secret().as_bytes()), R::Auth(_)));
    // Until the follower knows the leader it answers NOT_LEADER itself; once it forwards,
    // the leader refuses its link.
    let refused = wait_for("a forwarded put", Duration::from_secs(10), || {
        let r = raw.call(1, put("mixed", "v"));
        (error_code(&r) != Some(ErrorCode::NotLeader)).then_some(r)
    });
    assert!(
        matches!(
            error_code(&refused),
            Some(ErrorCode::Uncertain | ErrorCode::Unavailable)
        ),
        "{refused:?}"
    );
    wait_for("the follower's warning", Duration::from_secs(5), || {
        let log = cluster.node_log(follower);
        log.contains("the leader refused this node's client token")
            .then_some(())
    });
    let mut c = Client::new(vec![cluster.addr(leader)], opts(Some(tf.token.clone())));
    assert!(
        !c.get(b"mixed").unwrap().found,
        "the refused forward wrote nothing"
    );
}

/// `serve --join` on a cluster that requires a token: the new node presents its own token to
/// ask for its membership, and is promoted.
#[test]
fn a_joining_node_presents_its_token() {
    let tf = TokenFile::new();
    let mut cluster = Cluster::start(3, &[STABLE, &tf.flag()]);
    cluster.wait_leader();
    let id = cluster.join_node();
    let mut c = Client::new(cluster.endpoints(), opts(Some(tf.token.clone())));
    wait_for(
        "the joined node to be a voter",
        Duration::from_secs(30),
        || {
            let list = c.member_list().ok()?;
            list.members
                .iter()
                .any(|m| m.id == id && m.role == "voter")
                .then_some(())
        },
    );
    let log = cluster.node_log(id);
    assert!(!log.contains("UNAUTHENTICATED"), "{log}");
}

/// SIGHUP re-reads the token file (no restart): a token added to it is accepted at once on
/// every node; a file a reload refuses (every user may read it) keeps the tokens in use; a
/// token removed from it is refused from then on and the connections that authenticated with
/// it are closed, while those of the remaining token keep being served.
#[test]
fn sighup_rotates_and_revokes_client_tokens_without_a_restart() {
    let tf = TokenFile::new();
    let cluster = Cluster::start_http(3, &[STABLE, &tf.flag()]);
    let leader = cluster.wait_leader();
    let old = tf.secret();
    let new = "rotated-client-token-0123456789abcdef";
    let accepted = |id: u64, token: &str| -> bool {
        let mut raw = Raw::connect(&cluster.addr(id));
        matches!(raw.auth(token.as_bytes()), R::Auth(_))
    };
    let mut with_old = Raw::connect(&cluster.addr(leader));
    assert!(matches!(with_old.auth(old.as_bytes()), R::Auth(_)));
    assert!(
        !accepted(leader, new),
        "the new token before it is in the file"
    );

    // 1. Both tokens in the file.
    std::fs::write(&tf.path, format!("{old}\n{new}\n")).unwrap();
    common::hup_all(&cluster, "ok", 1);
    for id in 1..=3 {
        assert!(
            accepted(id, new) && accepted(id, &old),
            "node {id} after reload 1"
        );
    }
    let mut with_new = Raw::connect(&cluster.addr(leader));
    assert!(matches!(with_new.auth(new.as_bytes()), R::Auth(_)));
    assert!(matches!(with_old.call(1, put("k", "v1")), R::Put(_)));

    // 2. A file every user may read: refused, both tokens stay.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |m| std::fs::Permissions::from_mode(m);
        std::fs::set_permissions(&tf.path, mode(0o644)).unwrap();
        common::hup_all(&cluster, "failed", 1);
        std::fs::set_permissions(&tf.path, mode(0o600)).unwrap();
    }
    assert!(
        accepted(leader, new) && accepted(leader, &old),
        "after the refused reload"
    );
    let log = cluster.node_log(leader);
    assert!(
        log.contains("not reloaded") && log.contains("chmod 600") && !log.contains(new),
        "no clear line for the refused reload (or it quoted a token):\n{log}"
    );

    // 3. Only the new token: the old one is revoked.
    std::fs::write(&tf.path, format!("{new}\n")).unwrap();
    common::hup_all(&cluster, "ok", 2);
    assert!(!accepted(leader, &old) && accepted(leader, new));
    let req = kvpb::Request {
        id: 2,
        op: Some(put("k", "v2")),
        ..Default::default()
    };
    let _ = blocking::write_msg(&mut with_old.0, &req);
    let answer: std::io::Result<kvpb::Response> = blocking::read_msg(&mut with_old.0, 1 << 20);
    assert!(
        answer.is_err(),
        "the connection of the removed token was not closed: {answer:?}"
    );
    let revoked = metric(
        &cluster.http_addr(leader),
        "raftkv_client_connections_revoked_total",
        "",
    );
    assert_eq!(revoked, 1, "only the old token's connection is revoked");
    assert!(matches!(with_new.call(3, get("k")), R::Get(g) if &g.value[..] == b"v1"));
    let token = ClientToken::load(&tf.path).unwrap();
    let mut c = Client::new(cluster.endpoints(), opts(Some(token)));
    c.put(b"after", b"rotation").expect("the new token writes");
    assert_eq!(&c.get(b"after").unwrap().value[..], b"rotation");
}
