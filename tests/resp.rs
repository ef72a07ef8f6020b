//! The RESP (Redis protocol) port driven by a real Redis client (the `redis` crate, sync API)
//! and by raw sockets, against 3-node process clusters.

mod common;

use common::{output_growth_bound, rss_bytes, wait_for, Cluster};
use redis::{Connection, RedisResult, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ticks of 50 ms (elections after 0.5-1 s) for the tests that talk to one leader throughout:
/// the harness' 10 ms ticks let a loaded machine's stalls start elections mid-test.
const STABLE: &str = "--tick-ms=50";

fn connect(addr: &str) -> Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("redis url");
    wait_for("a RESP connection", Duration::from_secs(10), || {
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .ok()
    })
}

fn cmd(con: &mut Connection, args: &[&str]) -> RedisResult<Value> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con)
}

fn ok(con: &mut Connection, args: &[&str]) -> Value {
    cmd(con, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn okv() -> Value {
    Value::Okay
}

/// The error code (first word) and message of a command expected to fail.
fn err(con: &mut Connection, args: &[&str]) -> String {
    match cmd(con, args) {
        Ok(v) => panic!("{args:?} succeeded with {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

/// The leader's RESP connection (a 3-node cluster started with `start_resp`).
fn leader_conn(cluster: &Cluster) -> (u64, Connection) {
    let leader = cluster.wait_leader();
    (leader, connect(&cluster.redis_addr(leader)))
}

#[test]
fn every_command_with_redis_replies() {
    let cluster = Cluster::start_resp(3, &[STABLE]);
    let (_, mut c) = leader_conn(&cluster);
    // Connection and server commands.
    assert_eq!(ok(&mut c, &["PING"]), Value::SimpleString("PONG".into()));
    assert_eq!(ok(&mut c, &["PING", "hi"]), bulk("hi"));
    assert_eq!(ok(&mut c, &["ECHO", "x y"]), bulk("x y"));
    assert_eq!(ok(&mut c, &["SELECT", "0"]), okv());
    assert!(err(&mut c, &["SELECT", "1"]).contains("out of range"));
    assert_eq!(ok(&mut c, &["CLIENT", "SETNAME", "t1"]), okv());
    assert_eq!(ok(&mut c, &["CLIENT", "GETNAME"]), bulk("t1"));
    assert!(matches!(ok(&mut c, &["CLIENT", "ID"]), Value::Int(_)));
    assert!(matches!(ok(&mut c, &["HELLO"]), Value::Array(v) if v.len() == 14));
    assert!(err(&mut c, &["HELLO", "4"]).starts_with("NOPROTO"));
    assert!(matches!(ok(&mut c, &["COMMAND"]), Value::Array(_)));
    assert_eq!(
        ok(&mut c, &["CONFIG", "GET", "appendfsync"]),
        Value::Array(vec![bulk("appendfsync"), bulk("always")])
    );
    let e = err(&mut c, &["BGSAVE"]);
    assert!(e.starts_with("ERR unknown command 'BGSAVE'"), "{e}");
    assert!(err(&mut c, &["GET"]).contains("wrong number of arguments for 'get'"));
    // Strings.
    assert_eq!(ok(&mut c, &["GET", "k"]), Value::Nil);
    assert_eq!(ok(&mut c, &["SET", "k", "v1"]), okv());
    assert_eq!(ok(&mut c, &["GET", "k"]), bulk("v1"));
    assert_eq!(ok(&mut c, &["SET", "k", "v2", "NX"]), Value::Nil);
    assert_eq!(ok(&mut c, &["SET", "new", "n", "XX"]), Value::Nil);
    assert_eq!(ok(&mut c, &["EXISTS", "new"]), Value::Int(0));
    assert_eq!(ok(&mut c, &["SET", "k", "v2", "XX", "GET"]), bulk("v1"));
    assert_eq!(ok(&mut c, &["SET", "k2", "a", "GET"]), Value::Nil);
    assert_eq!(ok(&mut c, &["SET", "k2", "b", "KEEPTTL"]), okv());
    assert!(err(&mut c, &["SET", "k", "v", "EX", "10"]).contains("no key expiry"));
    assert!(err(&mut c, &["SET", "k", "v", "PX", "10"]).contains("no key expiry"));
    assert!(err(&mut c, &["SET", "k", "v", "NX", "XX"]).contains("syntax error"));
    assert_eq!(ok(&mut c, &["GET", "k"]), bulk("v2"));
    assert_eq!(ok(&mut c, &["SETNX", "k", "x"]), Value::Int(0));
    assert_eq!(ok(&mut c, &["SETNX", "nx", "x"]), Value::Int(1));
    assert_eq!(ok(&mut c, &["GETSET", "nx", "y"]), bulk("x"));
    assert_eq!(ok(&mut c, &["GETSET", "gs", "y"]), Value::Nil);
    assert_eq!(ok(&mut c, &["STRLEN", "k"]), Value::Int(2));
    assert_eq!(ok(&mut c, &["STRLEN", "none"]), Value::Int(0));
    assert_eq!(ok(&mut c, &["APPEND", "k", "xyz"]), Value::Int(5));
    assert_eq!(ok(&mut c, &["APPEND", "ap", "a"]), Value::Int(1));
    assert_eq!(ok(&mut c, &["GET", "k"]), bulk("v2xyz"));
    // Counters.
    assert_eq!(ok(&mut c, &["INCR", "n"]), Value::Int(1));
    assert_eq!(ok(&mut c, &["INCRBY", "n", "41"]), Value::Int(42));
    assert_eq!(ok(&mut c, &["DECR", "n"]), Value::Int(41));
    assert_eq!(ok(&mut c, &["DECRBY", "n", "50"]), Value::Int(-9));
    assert_eq!(ok(&mut c, &["GET", "n"]), bulk("-9"));
    assert_eq!(
        err(&mut c, &["INCR", "k"]),
        "ERR value is not an integer or out of range"
    );
    assert!(err(&mut c, &["INCRBY", "n", "x"]).contains("not an integer"));
    ok(&mut c, &["SET", "max", &i64::MAX.to_string()]);
    assert!(err(&mut c, &["INCR", "max"]).contains("overflow"));
    assert!(err(&mut c, &["DECRBY", "n", &i64::MIN.to_string()]).contains("overflow"));
    // Several keys.
    assert_eq!(ok(&mut c, &["MSET", "m1", "1", "m2", "2"]), okv());
    assert!(err(&mut c, &["MSET", "m1", "1", "m2"]).contains("wrong number"));
    assert_eq!(
        ok(&mut c, &["MGET", "m1", "nope", "m2"]),
        Value::Array(vec![bulk("1"), Value::Nil, bulk("2")])
    );
    assert_eq!(
        ok(&mut c, &["EXISTS", "m1", "m2", "nope", "m1"]),
        Value::Int(3)
    );
    assert_eq!(ok(&mut c, &["DEL", "m1", "m2", "nope"]), Value::Int(2));
    assert_eq!(ok(&mut c, &["DEL", "m1"]), Value::Int(0));
    // raftkv's versions.
    let Value::Array(gv) = ok(&mut c, &["RAFTKV.GETV", "k"]) else {
        panic!("GETV is an array")
    };
    let Value::Int(version) = gv[1] else {
        panic!("{gv:?}")
    };
    assert_eq!(gv[0], bulk("v2xyz"));
    let cas =
        |c: &mut Connection, v: i64, val: &str| ok(c, &["RAFTKV.CAS", "k", &v.to_string(), val]);
    let Value::Array(failed) = cas(&mut c, version + 1000, "no") else {
        panic!()
    };
    assert_eq!(failed, vec![Value::Int(0), Value::Int(version)]);
    let Value::Array(done) = cas(&mut c, version, "yes") else {
        panic!()
    };
    assert_eq!(done[0], Value::Int(1));
    assert_eq!(ok(&mut c, &["GET", "k"]), bulk("yes"));
    assert_eq!(ok(&mut c, &["RAFTKV.GETV", "absent"]), Value::Nil);
    let Value::Array(created) = ok(&mut c, &["RAFTKV.CAS", "fresh", "0", "f"]) else {
        panic!()
    };
    assert_eq!(created[0], Value::Int(1), "version 0 = must be absent");
    // Key space.
    for i in 0..25 {
        ok(&mut c, &["SET", &format!("scan:{i:02}"), "x"]);
    }
    let mut seen: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg("scan:*")
        .arg("COUNT")
        .arg(7)
        .clone()
        .iter::<String>(&mut c)
        .unwrap()
        .collect();
    seen.sort();
    let want: Vec<String> = (0..25).map(|i| format!("scan:{i:02}")).collect();
    assert_eq!(
        seen, want,
        "SCAN MATCH prefix* with COUNT pages through every key"
    );
    let Value::Array(keys) = ok(&mut c, &["KEYS", "scan:1*"]) else {
        panic!()
    };
    assert_eq!(keys.len(), 10);
    assert!(err(&mut c, &["KEYS", "a?c"]).contains("prefix*"));
    assert!(err(&mut c, &["SCAN", "12345"]).contains("invalid cursor"));
    let Value::Int(n) = ok(&mut c, &["DBSIZE"]) else {
        panic!()
    };
    let Value::Array(all) = ok(&mut c, &["KEYS", "*"]) else {
        panic!()
    };
    assert_eq!(n as usize, all.len());
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    for needle in [
        "# Server",
        "# Replication",
        "role:master",
        "# Raft",
        "raft_term:",
        "db0:keys=",
    ] {
        assert!(info.contains(needle), "INFO lacks {needle:?}:\n{info}");
    }
    let only: String = redis::cmd("INFO").arg("keyspace").query(&mut c).unwrap();
    assert!(
        only.starts_with("# Keyspace") && !only.contains("# Server"),
        "{only}"
    );
    assert!(err(&mut c, &["GET", ""]).contains("empty key"));
    // FLUSHDB: one replicated command; every node ends with no keys.
    assert_eq!(ok(&mut c, &["FLUSHDB"]), okv());
    assert_eq!(ok(&mut c, &["DBSIZE"]), Value::Int(0));
    assert_eq!(ok(&mut c, &["FLUSHALL", "ASYNC"]), okv());
    for id in 1..=3 {
        let mut r = connect(&cluster.redis_addr(id));
        ok(&mut r, &["READONLY"]);
        wait_for("an empty node", Duration::from_secs(10), || {
            (ok(&mut r, &["DBSIZE"]) == Value::Int(0)).then_some(())
        });
    }
    assert_eq!(ok(&mut c, &["QUIT"]), okv());
}

/// RESP3: a `redis` client asking for it (`protocol=resp3` sends `HELLO 3`) gets maps and
/// nulls; raw bytes show the switch is per connection and per command: replies owed from
/// before `HELLO 3` stay RESP2, `HELLO 2` switches back.
#[test]
fn hello_3_switches_the_connection_to_resp3() {
    let cluster = Cluster::start_resp(3, &[STABLE]);
    let leader = cluster.wait_leader();
    let addr = cluster.redis_addr(leader);
    let client = redis::Client::open(format!("redis://{addr}/?protocol=resp3")).unwrap();
    let mut c = wait_for("a RESP3 connection", Duration::from_secs(10), || {
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .ok()
    });
    assert_eq!(ok(&mut c, &["GET", "nokey"]), Value::Nil);
    assert_eq!(ok(&mut c, &["SET", "k3", "v"]), okv());
    assert_eq!(ok(&mut c, &["INCR", "n3"]), Value::Int(1));
    assert_eq!(
        ok(&mut c, &["CONFIG", "GET", "appendfsync"]),
        Value::Map(vec![(bulk("appendfsync"), bulk("always"))])
    );
    let Value::Map(hello) = ok(&mut c, &["HELLO", "3"]) else {
        panic!("HELLO 3 is not a map")
    };
    assert!(hello.contains(&(bulk("proto"), Value::Int(3))), "{hello:?}");
    assert_eq!(
        ok(&mut c, &["MGET", "k3", "nokey"]),
        Value::Array(vec![bulk("v"), Value::Nil])
    );
    // Raw: a GET waiting for its ReadIndex, then HELLO 3, then the same GET, then HELLO 2.
    let get = "*2\r\n$3\r\nGET\r\n$5\r\nnokey\r\n";
    let input = format!(
        "{get}*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n{get}*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n\
         $4\r\nsave\r\n*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n{get}PING\r\n"
    );
    let (got, closed) = raw_exchange(&addr, input.as_bytes(), "+PONG\r\n");
    assert!(!closed);
    let hello3 = got.find("%7\r\n").expect(&got);
    assert!(got.starts_with("$-1\r\n%7\r\n"), "{got:?}");
    let rest = &got[hello3..];
    let after = rest.find("_\r\n%1\r\n$4\r\nsave\r\n$0\r\n\r\n*14\r\n");
    assert!(
        after.is_some(),
        "RESP3 null and map, then HELLO 2's flat array: {got:?}"
    );
    assert!(got.ends_with("$-1\r\n+PONG\r\n"), "back to RESP2: {got:?}");
}

#[test]
fn a_follower_names_the_leader_and_serves_readonly_connections() {
    let cluster = Cluster::start_resp(3, &[STABLE]);
    let (leader, mut l) = leader_conn(&cluster);
    ok(&mut l, &["SET", "fk", "fv"]);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut f = connect(&cluster.redis_addr(follower));
    let e = err(&mut f, &["SET", "a", "b"]);
    let want = format!(
        "NOTLEADER leader is node {leader} at {}",
        cluster.redis_addr(leader)
    );
    assert!(e.starts_with(&want), "{e:?}, wanted {want:?}");
    assert!(
        err(&mut f, &["GET", "fk"]).starts_with("NOTLEADER"),
        "linearizable reads too"
    );
    let info: String = redis::cmd("INFO").arg("replication").query(&mut f).unwrap();
    assert!(info.contains("role:slave"), "{info}");
    assert_eq!(ok(&mut f, &["READONLY"]), okv());
    wait_for("the write on the follower", Duration::from_secs(10), || {
        (ok(&mut f, &["GET", "fk"]) == bulk("fv")).then_some(())
    });
    assert!(
        err(&mut f, &["SET", "a", "b"]).starts_with("NOTLEADER"),
        "writes still go to the leader"
    );
    assert_eq!(ok(&mut f, &["READWRITE"]), okv());
    assert!(err(&mut f, &["GET", "fk"]).starts_with("NOTLEADER"));
}

/// Many commands in one write: replies come back in order, and each command sees the ones
/// before it on the connection (a pipelined SET then GET reads the SET), across read/write
/// boundaries.
#[test]
fn pipelined_commands_reply_in_order_and_in_program_order() {
    let cluster = Cluster::start_resp(3, &[STABLE]);
    let (_, mut c) = leader_conn(&cluster);
    let n = 500;
    let mut p = redis::pipe();
    for i in 0..n {
        p.cmd("SET").arg(format!("p{i}")).arg(i);
        p.cmd("GET").arg(format!("p{i}"));
        p.cmd("INCR").arg("pc");
        p.cmd("PING");
    }
    let replies: Vec<Value> = p.query(&mut c).unwrap();
    assert_eq!(replies.len(), 4 * n);
    for (i, r) in replies.chunks(4).enumerate() {
        assert_eq!(r[0], okv(), "SET {i}");
        assert_eq!(r[1], bulk(&i.to_string()), "GET {i} after its SET");
        assert_eq!(r[2], Value::Int(i as i64 + 1), "INCR {i}");
        assert_eq!(r[3], Value::SimpleString("PONG".into()), "PING {i}");
    }
    // Pure read and pure write pipelines (these run in flight together).
    let mut p = redis::pipe();
    for i in 0..n {
        p.cmd("GET").arg(format!("p{i}"));
    }
    let gets: Vec<Option<String>> = p.query(&mut c).unwrap();
    assert!(gets
        .iter()
        .enumerate()
        .all(|(i, g)| g.as_deref() == Some(&*i.to_string())));
}

/// Reads a raw reply prefix until `want` appears or the connection closes; returns what came
/// and whether the server closed the connection.
fn raw_exchange(addr: &str, input: &[u8], want: &str) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(input).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no close after {:?}: {e}", String::from_utf8_lossy(&got)),
        }
        let text = String::from_utf8_lossy(&got);
        if text.contains(want) && !want.starts_with('-') {
            return (text.into_owned(), false);
        }
    }
}

#[test]
fn malformed_input_is_answered_and_closed_and_others_are_served() {
    let cluster = Cluster::start_resp(3, &["--max-frame=1048576", STABLE]);
    let (leader, mut c) = leader_conn(&cluster);
    let addr = cluster.redis_addr(leader);
    // Inline commands (what telnet sends) work.
    let (out, _) = raw_exchange(&addr, b"SET inl  v\r\nGET inl\nPING\r\n", "+PONG");
    assert_eq!(out, "+OK\r\n$1\r\nv\r\n+PONG\r\n");
    let cases: [(&[u8], &str); 5] = [
        // A bulk longer than the node's --max-frame: refused from its header alone.
        (
            b"*2\r\n$3\r\nSET\r\n$1048577\r\n",
            "-ERR Protocol error: invalid bulk length",
        ),
        (
            b"*1\r\n*1\r\n*1\r\n$4\r\nPING\r\n",
            "-ERR Protocol error: expected '$', got '*'",
        ),
        (
            b"*99999999\r\n",
            "-ERR Protocol error: array of 99999999 elements exceeds",
        ),
        (
            b"*1\r\n$4\r\nPINGxx",
            "-ERR Protocol error: bulk string not followed by CRLF",
        ),
        (b"*abc\r\n", "-ERR Protocol error: invalid multibulk length"),
    ];
    for (input, want) in cases {
        // The commands before the bad one are answered first.
        let mut all = b"PING\r\n".to_vec();
        all.extend_from_slice(input);
        let (out, closed) = raw_exchange(&addr, &all, want);
        assert!(out.starts_with("+PONG\r\n"), "{out:?}");
        assert!(
            out[7..].starts_with(want),
            "{:?}: {out:?}",
            String::from_utf8_lossy(input)
        );
        assert!(closed, "closed after a protocol error");
    }
    // An inline line with no end, past 64 KiB.
    let long = vec![b'a'; 70 << 10];
    let (out, closed) = raw_exchange(&addr, &long, "-ERR");
    assert!(
        out.starts_with("-ERR Protocol error: too big inline request") && closed,
        "{out}"
    );
    assert_eq!(
        ok(&mut c, &["PING"]),
        Value::SimpleString("PONG".into()),
        "others still served"
    );
}

/// A RESP client that pipelines many reads and never reads the replies: the node stops
/// reading from it once its queued and held-back replies pass `--client-output-limit`, like a
/// native client (ClientConn::over_limit). 200,000 GETs of a 4000-byte value (replies that
/// small are copied, not shared) would be 800 MB of replies; the bound is the limit plus one
/// reply and the read buffer, twice for allocator slack, plus 32 MiB (the native test's).
#[test]
fn a_resp_client_that_never_reads_is_held_to_its_output_limit() {
    let limit: u64 = 4 << 20;
    let cluster = Cluster::start_resp(3, &[&format!("--client-output-limit={limit}"), STABLE]);
    let (leader, mut c) = leader_conn(&cluster);
    let value = vec![b'v'; 4000];
    redis::cmd("SET")
        .arg("big")
        .arg(&value)
        .query::<()>(&mut c)
        .unwrap();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut f = connect(&cluster.redis_addr(follower));
    ok(&mut f, &["READONLY"]);
    wait_for("the value on the follower", Duration::from_secs(10), || {
        matches!(ok(&mut f, &["STRLEN", "big"]), Value::Int(4000)).then_some(())
    });
    let pid = cluster.pid(follower);
    let before = rss_bytes(pid);
    let s = TcpStream::connect(cluster.redis_addr(follower)).unwrap();
    let gets = 200_000;
    let mut batch = b"READONLY\r\n".to_vec();
    for _ in 0..gets {
        batch.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
    }
    // The write blocks once the node stops reading: from another thread.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&batch));
    let mut peak = before;
    // Status round trips on another connection while the batch goes in: each answer means the
    // node's loop turned again (and it still serves everyone else).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            ok(&mut f, &["PING"]),
            Value::SimpleString("PONG".into()),
            "node stopped serving"
        );
        peak = peak.max(rss_bytes(pid));
    }
    let bound = output_growth_bound(limit, 4096);
    println!(
        "RSS grew by {} KiB for a RESP client that never reads",
        (peak - before) >> 10
    );
    assert!(
        peak - before <= bound,
        "RSS grew by {} MiB (from {} MiB) for a RESP client that never reads; bound {} MiB",
        (peak - before) >> 20,
        before >> 20,
        bound >> 20
    );
    // Reading drains it: every reply comes, whole and in order.
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let want = 5 + gets * (4000 + "$4000\r\n\r\n".len());
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while got < want {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} of {want} bytes");
        got += n;
    }
    assert_eq!(got, want);
    writer.join().unwrap().unwrap();
}

/// Writers SET distinct keys through the leader's RESP port, following -NOTLEADER to the new
/// leader after it is killed. Every write acknowledged +OK must be readable afterwards.
#[test]
fn leader_killed_under_resp_write_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start_resp(3, &[]);
    let leader = cluster.wait_leader();
    let addrs: Vec<String> = (1..=3).map(|i| cluster.redis_addr(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addrs, stop, count) = (addrs.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || write_until_stopped(w, &addrs, &stop, &count))
        })
        .collect();
    // Let the load run, kill the leader under it, let it run on the new leader.
    let acked_at_least = |n: usize| {
        wait_for("acknowledged writes", Duration::from_secs(30), || {
            (count.load(Ordering::SeqCst) >= n).then_some(())
        })
    };
    acked_at_least(200);
    cluster.kill(leader);
    let at_kill = count.load(Ordering::SeqCst);
    let new_leader = cluster.wait_leader();
    assert_ne!(new_leader, leader);
    acked_at_least(at_kill + 200);
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut uncertain = 0;
    for h in writers {
        let (a, u) = h.join().unwrap();
        acked.extend(a);
        uncertain += u;
    }
    let after_kill = acked.iter().filter(|(_, after)| *after).count();
    println!(
        "acknowledged {} writes ({after_kill} after the kill), {uncertain} uncertain",
        acked.len()
    );
    assert!(after_kill > 0, "writes went on after the leader was killed");
    let mut c = connect(&cluster.redis_addr(new_leader));
    for chunk in acked.chunks(500) {
        let mut p = redis::pipe();
        for ((k, _), _) in chunk {
            p.cmd("GET").arg(k);
        }
        let got: Vec<Option<String>> = p.query(&mut c).unwrap();
        for (((k, v), _), g) in chunk.iter().zip(got) {
            assert_eq!(
                g.as_deref(),
                Some(v.as_str()),
                "acknowledged write of {k} lost"
            );
        }
    }
}

/// An acknowledged write: (key, value), and whether it came after a failed attempt.
type Acked = ((String, String), bool);

/// One writer: SETs w<w>:<i> = <i> one at a time on whichever node it believes leads; returns
/// the acknowledged ((key, value), after-a-failure) and the count of outcomes not known.
fn write_until_stopped(
    w: usize,
    addrs: &[String],
    stop: &AtomicBool,
    count: &AtomicUsize,
) -> (Vec<Acked>, usize) {
    let (mut acked, mut uncertain, mut failed_over) = (Vec::new(), 0, false);
    let mut target = 0usize;
    let mut con: Option<Connection> = None;
    let mut i = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let c = match con.as_mut() {
            Some(c) => c,
            None => {
                let client = redis::Client::open(format!("redis://{}/", addrs[target])).unwrap();
                match client.get_connection_with_timeout(Duration::from_secs(1)) {
                    Ok(c) => con.insert(c),
                    Err(_) => {
                        target = (target + 1) % addrs.len();
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let (k, v) = (format!("w{w}:{i}"), i.to_string());
        match redis::cmd("SET").arg(&k).arg(&v).query::<String>(c) {
            Ok(_) => {
                acked.push(((k, v), failed_over));
                count.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            Err(e) if e.code() == Some("NOTLEADER") => {
                // Follow the named leader; a write refused by a follower did nothing.
                let detail = e.detail().unwrap_or("").to_string();
                target = addrs
                    .iter()
                    .position(|a| detail.ends_with(a.as_str()))
                    .unwrap_or((target + 1) % addrs.len());
                con = None;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                // Connection lost, UNCERTAIN, TIMEOUT: unknown outcome; a new key next.
                uncertain += 1;
                i += 1;
                failed_over = true;
                con = None;
                target = (target + 1) % addrs.len();
            }
        }
    }
    (acked, uncertain)
}

/// `--forward`: a follower sends writes and linearizable reads on to the leader and answers
/// them itself, for RESP and native clients alike, with replies still in order and each
/// command seeing the ones before it; killing the leader under it gives clear errors, then
/// the follower forwards to the new leader.
#[test]
fn with_forward_a_follower_serves_writes_and_reads() {
    let mut cluster = Cluster::start_resp(3, &["--forward", STABLE]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut f = connect(&cluster.redis_addr(follower));
    assert_eq!(ok(&mut f, &["SET", "fw", "1"]), okv());
    assert_eq!(ok(&mut f, &["INCR", "fw"]), Value::Int(2));
    assert_eq!(
        ok(&mut f, &["GET", "fw"]),
        bulk("2"),
        "a forwarded linearizable read"
    );
    let mut p = redis::pipe();
    for i in 0..200 {
        p.cmd("SET").arg(format!("f{i}")).arg(i);
        p.cmd("GET").arg(format!("f{i}"));
    }
    let replies: Vec<Value> = p.query(&mut f).unwrap();
    for (i, r) in replies.chunks(2).enumerate() {
        assert_eq!((&r[0], &r[1]), (&okv(), &bulk(&i.to_string())), "pair {i}");
    }
    // A native client that knows only the follower.
    let mut native = raftkv::client::Client::new(
        vec![cluster.addr(follower)],
        raftkv::client::ClientOptions {
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    );
    native.put(b"nat", b"ive").unwrap();
    assert_eq!(native.get(b"nat").unwrap().value, b"ive"[..]);
    let mut l = connect(&cluster.redis_addr(leader));
    assert_eq!(ok(&mut l, &["GET", "nat"]), bulk("ive"));
    // The leader dies: the follower answers (an error or, once a new leader is known, the
    // forwarded result) instead of hanging, and forwards to whoever leads next.
    cluster.kill(leader);
    let new_leader = cluster.wait_leader();
    let target = if new_leader == follower {
        "itself"
    } else {
        "the new leader"
    };
    let v = wait_for(
        "a write through the follower",
        Duration::from_secs(20),
        || cmd(&mut f, &["INCR", "fw"]).ok(),
    );
    let Value::Int(n) = v else { panic!("{v:?}") };
    assert!(n >= 3, "INCR through {target}: {n}");
}

/// `--follower-reads`: a follower answers GET/MGET/EXISTS itself (follower ReadIndex) with the
/// value the leader just acknowledged, on a normal (not READONLY) connection; writes still
/// get NOTLEADER.
#[test]
fn with_follower_reads_a_follower_serves_linearizable_reads() {
    let cluster = Cluster::start_resp(3, &["--follower-reads", STABLE]);
    let (leader, mut l) = leader_conn(&cluster);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut f = connect(&cluster.redis_addr(follower));
    for i in 0..50 {
        let v = i.to_string();
        assert_eq!(ok(&mut l, &["SET", "fr", &v]), okv());
        assert_eq!(
            ok(&mut f, &["GET", "fr"]),
            bulk(&v),
            "read {i} on the follower"
        );
        assert_eq!(
            ok(&mut f, &["MGET", "fr", "none"]),
            Value::Array(vec![bulk(&v), Value::Nil]),
            "MGET {i}"
        );
        assert_eq!(ok(&mut f, &["EXISTS", "fr", "none"]), Value::Int(1));
    }
    assert!(
        err(&mut f, &["SET", "a", "b"]).starts_with("NOTLEADER"),
        "writes still go to the leader"
    );
}

/// Exactly-once through forwarding: a client pipelines INCRs into a follower (`--forward`)
/// and the leader is killed under it. The follower re-sends the INCRs that were on the broken
/// link to the next leader (or runs them itself if it leads next); some of them had already
/// reached the new leader's log and apply there, so each re-sent copy must be answered from
/// the session table. Hence: the acknowledged INCRs returned distinct values, and the counter
/// is at least the number acknowledged and at most acknowledged + failed (a failed one may or
/// may not have applied, once). Applying a duplicate would push it over.
#[test]
fn forwarded_incrs_apply_once_when_the_leader_dies_mid_flight() {
    let mut cluster = Cluster::start_resp(3, &["--forward", STABLE]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let addr = cluster.redis_addr(follower);
    connect(&addr); // the port is up
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, count) = (stop.clone(), count.clone());
        std::thread::spawn(move || incr_pipelines(&addr, &stop, &count))
    };
    let acked_at_least = |n: usize| {
        wait_for("acknowledged INCRs", Duration::from_secs(60), || {
            (count.load(Ordering::SeqCst) >= n).then_some(())
        })
    };
    acked_at_least(300);
    cluster.kill(leader);
    let at_kill = count.load(Ordering::SeqCst);
    let new_leader = cluster.wait_leader();
    acked_at_least(at_kill + 300);
    stop.store(true, Ordering::SeqCst);
    let (values, failed) = writer.join().unwrap();
    let mut c = connect(&cluster.redis_addr(new_leader));
    let Value::BulkString(v) = ok(&mut c, &["GET", "ctr"]) else {
        panic!("no counter")
    };
    let counter: usize = String::from_utf8(v).unwrap().parse().unwrap();
    let log = cluster.node_log(follower);
    let resent = log.matches("forwarding: re-sending").count()
        + log
            .matches("forwarded requests here (now the leader)")
            .count();
    let acked = values.len();
    println!(
        "leader {leader} killed, {new_leader} leads; follower {follower}: {acked} INCRs \
         acknowledged, {failed} failed, counter {counter}, {resent} re-send rounds"
    );
    let distinct: std::collections::BTreeSet<i64> = values.iter().copied().collect();
    assert_eq!(distinct.len(), acked, "two INCRs answered the same value");
    assert!(counter >= acked, "counter {counter} < {acked} acknowledged");
    assert!(
        counter <= acked + failed,
        "counter {counter} > {acked} acknowledged + {failed} failed: an INCR applied twice"
    );
    assert!(
        resent > 0,
        "the kill caught no INCR in flight (nothing re-sent)"
    );
}

/// Pipelines of 20 `INCR ctr` on one raw connection until stopped; the values of the
/// acknowledged ones and the count of those answered with an error.
fn incr_pipelines(addr: &str, stop: &AtomicBool, count: &AtomicUsize) -> (Vec<i64>, usize) {
    use std::io::BufRead;
    const DEPTH: usize = 20;
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    let batch = b"*2\r\n$4\r\nINCR\r\n$3\r\nctr\r\n".repeat(DEPTH);
    let (mut values, mut failed) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        w.write_all(&batch).unwrap();
        for _ in 0..DEPTH {
            let mut line = String::new();
            r.read_line(&mut line)
                .expect("a reply (the follower stays up)");
            match line.trim_end().strip_prefix(':') {
                Some(n) => {
                    values.push(n.parse().unwrap());
                    count.fetch_add(1, Ordering::SeqCst);
                }
                None => {
                    assert!(line.starts_with('-'), "not a reply: {line:?}");
                    failed += 1;
                }
            }
        }
    }
    (values, failed)
}

/// `--forward --follower-reads`: a follower forwards the writes and serves the reads itself;
/// a read right after a forwarded write's acknowledgement sees it.
#[test]
fn with_forward_and_follower_reads_a_follower_reads_its_forwarded_writes() {
    let cluster = Cluster::start_resp(3, &["--forward", "--follower-reads", STABLE]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut f = connect(&cluster.redis_addr(follower));
    for i in 0..50 {
        let v = i.to_string();
        assert_eq!(ok(&mut f, &["SET", "ff", &v]), okv(), "forwarded SET {i}");
        assert_eq!(ok(&mut f, &["GET", "ff"]), bulk(&v), "follower GET {i}");
    }
    assert_eq!(ok(&mut f, &["INCR", "n"]), Value::Int(1));
    assert_eq!(ok(&mut f, &["GET", "n"]), bulk("1"));
}
