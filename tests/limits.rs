//! Limits that agree (issue #16): whatever a node accepts as a write it can log, replay,
//! snapshot, restore, send to a wiped follower and inspect with `raftkv-log`; one byte more is
//! refused up front with TOO_LARGE. Process tests on real clusters.

mod common;

use bytes::Bytes;
use common::{status, verify_dir, wait_for, Cluster};
use prost::Message;
use raftkv::client::{Client, ClientOptions};
use raftkv::net::framing::blocking;
use raftkv::pb::kvpb::{self, response::Result as R, ErrorCode};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Snapshots after every few entries and compaction down to the applied index, so the written
/// value lives only in the snapshots once compacted and a wiped follower must receive one.
const SNAPSHOT_OFTEN: [&str; 3] = [
    "--snapshot-entries=3",
    "--snapshot-trailing=0",
    "--snapshot-write-rate=0",
];

/// The log entry a session-less put of `key`/`value` becomes (what the server measures).
fn command_len(key: &[u8], value_len: usize) -> usize {
    kvpb::Command {
        op: Some(kvpb::command::Op::Put(kvpb::Put {
            key: Bytes::copy_from_slice(key),
            value: vec![0u8; value_len].into(),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encoded_len()
}

/// A value length whose put of `key` is an entry of exactly `target` bytes.
fn value_len_for(key: &[u8], target: usize) -> usize {
    let mut v = target;
    while v > 0 && command_len(key, v) > target {
        v -= 1;
    }
    assert_eq!(command_len(key, v), target, "no value length fits exactly");
    v
}

fn value_of(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

/// One raw put with no session (client id 0, so the entry's size is exactly `command_len`),
/// sent to `addr` with a client frame limit of `max_frame`.
fn raw_put(addr: &str, key: &[u8], value: Bytes, max_frame: usize) -> kvpb::response::Result {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = kvpb::Request {
        id: 7,
        op: Some(kvpb::request::Op::Put(kvpb::Put {
            key: Bytes::copy_from_slice(key),
            value,
            ..Default::default()
        })),
        ..Default::default()
    };
    blocking::write_msg(&mut s, &req).expect("send put");
    let resp: kvpb::Response = blocking::read_msg(&mut s, max_frame).expect("read answer");
    assert_eq!(resp.id, 7, "answer to another request: {resp:?}");
    resp.result.expect("empty answer")
}

fn client(endpoints: Vec<String>, c: kvpb::Consistency, max_frame: usize) -> Client {
    client_within(endpoints, c, max_frame, Duration::from_secs(60))
}

fn client_within(
    endpoints: Vec<String>,
    c: kvpb::Consistency,
    max_frame: usize,
    timeout: Duration,
) -> Client {
    Client::new(
        endpoints,
        ClientOptions {
            timeout,
            consistency: c,
            max_frame,
            ..Default::default()
        },
    )
}

/// `key`'s value as node `id` alone sees it (a stale read), if it has one yet.
fn local_value(cluster: &Cluster, id: u64, key: &[u8], max_frame: usize) -> Option<Bytes> {
    let mut c = client_within(
        vec![cluster.addr(id)],
        kvpb::Consistency::Stale,
        max_frame,
        Duration::from_secs(2),
    );
    c.get(key).ok().filter(|g| g.found).map(|g| g.value)
}

/// Waits until every node's snapshot covers `index` and its log was compacted past it (the
/// entry now lives only in snapshots).
fn wait_snapshotted(cluster: &Cluster, index: u64) {
    wait_for(
        "every node snapshotted and compacted past the write",
        Duration::from_secs(60),
        || {
            for id in cluster.running() {
                let st = status(&cluster.addr(id))?;
                let snaps =
                    raftkv::storage::snapshot::list(&cluster.data_dir(id).join("snap")).ok()?;
                let newest = snaps.first().map_or(0, |s| s.0);
                if newest < index || st.first_log_index <= index {
                    return None;
                }
            }
            Some(())
        },
    );
}

/// `key` = `value` was written; pushes it into snapshots on every node, then checks that it
/// survives a restart of every node, `raftkv-log verify`, and a snapshot transfer to a new
/// member replacing a lost follower (which then restarts from what it received).
fn survives_snapshot_restart_and_transfer(
    cluster: &mut Cluster,
    key: &[u8],
    value: &Bytes,
    max_frame: usize,
) {
    let leader = cluster.wait_leader();
    let written = status(&cluster.addr(leader))
        .expect("leader status")
        .commit_index;
    let mut c = client(
        cluster.endpoints(),
        kvpb::Consistency::Linearizable,
        max_frame,
    );
    for i in 0..8 {
        c.put(format!("small{i}").as_bytes(), b"x")
            .expect("small put");
    }
    wait_snapshotted(cluster, written);

    // Every node restarts from its snapshot.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        verify_dir(&cluster.data_dir(id));
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let leader = cluster.wait_leader();
    let mut c = client(
        cluster.endpoints(),
        kvpb::Consistency::Linearizable,
        max_frame,
    );
    let got = c.get(key).expect("get after restart");
    assert!(got.found, "key lost after restart");
    let got = got.value;
    assert!(
        got == *value,
        "after restart: {} bytes back, {} written",
        got.len(),
        value.len()
    );

    // A follower whose disk is lost is replaced by a new member (a wiped node may not come
    // back under its old id: docs/membership.md), which gets it by snapshot transfer, then
    // restarts from that snapshot.
    let old = (1..=3).find(|&i| i != leader).unwrap();
    cluster.kill(old);
    common::remove_member(&mut c, old);
    let f = cluster.join_node();
    let log_from = 0;
    let start = Instant::now();
    // The leader learns that the follower lost its log only when an append to it fails
    // (heartbeats carry no log position), so keep writing while waiting.
    let mut nudge = 0;
    wait_for(
        "the wiped follower to hold the value",
        Duration::from_secs(60),
        || {
            nudge += 1;
            c.put(format!("nudge{nudge}").as_bytes(), b"x")
                .expect("nudge put");
            local_value(cluster, f, key, max_frame).filter(|v| v == value)
        },
    );
    eprintln!("wiped follower {f} caught up in {:?}", start.elapsed());
    let log = cluster.node_log(f)[log_from..].to_string();
    assert!(
        log.contains("received snapshot"),
        "follower {f} caught up without a snapshot transfer:\n{log}"
    );
    cluster.stop(f);
    verify_dir(&cluster.data_dir(f));
    cluster.start_node(f);
    wait_for(
        "the follower to restart with the value",
        Duration::from_secs(30),
        || local_value(cluster, f, key, max_frame).filter(|v| v == value),
    );
}

/// The largest write exactly at the limit and one byte over it, for a limit set by the frame
/// (`frame_limited`) or by the segment size.
fn boundary(args: &[&str], max_frame: usize, segment_size: u64, expected_max_entry: usize) {
    let max_entry = raftkv::limits::max_entry(max_frame, segment_size);
    assert_eq!(max_entry, expected_max_entry, "entry limit for {args:?}");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(SNAPSHOT_OFTEN);
    let mut cluster = Cluster::start(3, &all);
    let leader = cluster.wait_leader();
    let addr = cluster.addr(leader);

    let v_at = value_len_for(b"at", max_entry);
    let at = value_of(v_at, 1);
    let r = raw_put(&addr, b"at", at.clone(), max_frame);
    eprintln!("{args:?}: put of a {max_entry}-byte entry ({v_at}-byte value): {r:?}");
    assert!(matches!(r, R::Put(_)), "put exactly at the limit: {r:?}");

    let over = value_of(value_len_for(b"at", max_entry + 1), 2);
    let r = raw_put(&addr, b"at", over, max_frame);
    eprintln!("{args:?}: put of a {}-byte entry: {r:?}", max_entry + 1);
    match &r {
        R::Error(e) => {
            assert_eq!(e.code(), ErrorCode::TooLarge, "{e:?}");
            assert!(e.message.contains(&max_entry.to_string()), "{e:?}");
        }
        other => panic!("one byte over the limit was not refused: {other:?}"),
    }
    survives_snapshot_restart_and_transfer(&mut cluster, b"at", &at, max_frame);
}

#[test]
fn boundary_set_by_the_frame_limit() {
    // 256 KiB frames, 1 MiB segments (the harness default): the frame decides.
    boundary(&["--max-frame=262144"], 262144, 1 << 20, 262144 - 64);
}

#[test]
fn boundary_set_by_the_segment_size() {
    // 1 MiB frames in 256 KiB segments: a record never spans segments, so the segment decides.
    boundary(
        &["--max-frame=1048576", "--segment-size=262144"],
        1 << 20,
        262144,
        262144 - 96,
    );
}

/// The case from issue #16: `--max-frame 67108864` and a 20 MiB value, which once made every
/// node's snapshot unreadable. With 64 MiB segments it is accepted and survives everything;
/// with the harness's 1 MiB segments it is refused up front. Either way every node restarts.
#[test]
fn twenty_mib_value_with_64_mib_frames() {
    const MAX: usize = 64 << 20;
    let value = value_of(20 << 20, 3);
    // 50 ms ticks (election timeout 0.5-1 s): one 20 MiB entry takes several loop passes of
    // tens of ms to copy, checksum, fsync and send; with the harness's 10 ms ticks a helper saw
    // about 17 elections in one such test.
    let mut all = vec![
        "--max-frame=67108864",
        "--segment-size=67108864",
        "--tick-ms=50",
    ];
    all.extend(SNAPSHOT_OFTEN);
    let mut cluster = Cluster::start(3, &all);
    cluster.wait_leader();
    let mut c = client(cluster.endpoints(), kvpb::Consistency::Linearizable, MAX);
    let start = Instant::now();
    c.put(b"big", &value).expect("20 MiB put");
    eprintln!("20 MiB put took {:?}", start.elapsed());
    survives_snapshot_restart_and_transfer(&mut cluster, b"big", &value, MAX);
    drop(cluster);

    // Small segments: refused up front with TOO_LARGE, and the cluster restarts fine.
    let mut cluster = Cluster::start(3, &["--max-frame=67108864", "--tick-ms=50"]);
    cluster.wait_leader();
    let mut c = client(cluster.endpoints(), kvpb::Consistency::Linearizable, MAX);
    match c.put(b"big", &value) {
        Err(raftkv::client::ClientError::Server(e)) => {
            eprintln!("20 MiB into 1 MiB segments: {e:?}");
            assert_eq!(e.code(), ErrorCode::TooLarge, "{e:?}");
        }
        other => panic!("20 MiB into 1 MiB segments: {other:?}"),
    }
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_leader();
    assert!(!c.get(b"big").expect("get after restart").found);
}
