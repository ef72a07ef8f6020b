//! Issue 17: a node never starts with less than it durably had, and `raftkv-log verify` makes
//! the same decision about a data directory as the server's startup (both run
//! `snapshot::recover::check_data_dir`).
//!
//! - `missing_snapshot_files_refuse_to_start` (case 1), `zero_filled_record_with_a_flipped_crc_
//!   is_damage` (case 2), `install_snapshot_with_a_huge_index_is_dropped` (case 3) and
//!   `invalid_received_snapshots_are_discarded` (case 4): the four ways from the issue, built
//!   as it describes (real nodes, damaged files, raw peer frames).
//! - `damage_matrix_server_and_verify_agree`: every kind of damage the storage and log-tool
//!   tests make plus the new ones, on a real node's data directory: the server's open and
//!   `verify` both refuse, or both accept with the same recovered range (including the storage
//!   level stubs of issue 16: a zero-byte segment left by a failed allocation, a cut header,
//!   leftover allocation temp files; tests/storage_agree.rs runs the full storage-level set).

mod common;

use bytes::Bytes;
use common::*;
use raftkv::kv::KvStore;
use raftkv::pb::raftpb::{message::Body, InstallSnapshot, Message, SnapshotMeta};
use raftkv::raft::HardState;
use raftkv::storage::{HardStateFile, SnapshotStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LOG_TOOL: &str = env!("CARGO_BIN_EXE_raftkv-log");

fn log_tool(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(LOG_TOOL)
        .args(args)
        .output()
        .expect("run raftkv-log");
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The text after `recovered: ` on the first line that has it.
fn recovered_line(t: &str) -> Option<String> {
    t.lines().find_map(|l| {
        l.split_once("recovered: ")
            .map(|(_, r)| r.trim().to_string())
    })
}

/// A `raftkv serve` child killed on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a one-node server on `dir` (stderr to `log`) and waits until it serves (`Ok(the
/// recovered range it logged)`) or exits (`Err(its log)`). The node is killed afterwards.
fn server_open(dir: &Path, log: &Path) -> Result<String, String> {
    let ports = free_ports(2);
    let err = std::fs::File::create(log).unwrap();
    let child = Command::new(EXE)
        .arg("serve")
        .arg("--id=1")
        .arg("--data-dir")
        .arg(dir)
        .arg(format!(
            "--peers=1=127.0.0.1:{}/127.0.0.1:{}",
            ports[0], ports[1]
        ))
        .args(["--segment-size=8192", "--log-level=info", "--tick-ms=10"])
        .arg("--insecure-peers") // one node: no peers to authenticate
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn raftkv serve");
    let mut s = Serve(child);
    wait_for(
        "the server to serve or exit",
        Duration::from_secs(30),
        || {
            let t = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(st) = s.0.try_wait().unwrap() {
                return Some(Err(format!("exited with {st}:\n{t}")));
            }
            if t.contains(" serving peers on ") {
                return Some(recovered_line(&t).ok_or(t));
            }
            None
        },
    )
}

/// Records of a segment file: (offset, payload length, index), up to the first non-record.
fn records(path: &Path) -> Vec<(usize, usize, u64)> {
    let b = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 64;
    while pos + 32 <= b.len() {
        let magic = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap());
        if magic != 0xE1C3_5AA5 {
            break;
        }
        let len = u32::from_le_bytes(b[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let index = u64::from_le_bytes(b[pos + 16..pos + 24].try_into().unwrap());
        out.push((pos, len, index));
        pos += 32 + len;
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(&dir.join("log"), "seg")
}

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(&dir.join("snap"), "snap")
}

/// Zeroes the last record of segment `seg` (relative to `d`) from byte 10 of its header on
/// (`recs`: its records): the record's write never (fully) reached the disk.
fn zero_last_record(d: &Path, seg: &Path, recs: &[(usize, usize, u64)]) {
    let (off, len, _) = *recs.last().unwrap();
    let f = d.join(seg);
    let mut b = std::fs::read(&f).unwrap();
    b[off + 10..off + 32 + len].fill(0);
    std::fs::write(&f, b).unwrap();
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

fn set_commit(dir: &Path, commit: u64) {
    let (mut f, hs) = HardStateFile::open(dir).unwrap();
    f.save(&HardState { commit, ..hs }).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Waits until node 1's log has `n` lines containing `needle`.
fn wait_log_count(c: &Cluster, id: u64, needle: &str, n: usize) {
    wait_for(
        &format!("{n} x {needle:?} in node {id}'s log"),
        Duration::from_secs(30),
        || (c.node_log(id).matches(needle).count() >= n).then_some(()),
    );
}

/// A one-node data dir as a user makes it: `--segment-size 8192 --snapshot-trailing 20`,
/// puts with a snapshot (SIGUSR1) after 150 and 300 of them (log compacted to the first
/// snapshot), then more puts including one whose value is 2,048 zero bytes; stopped cleanly.
/// Returns the cluster (stopped) and the acknowledged writes.
fn build_node() -> (Cluster, BTreeMap<String, Vec<u8>>) {
    let mut c = Cluster::start(
        1,
        &[
            "--segment-size=8192",
            "--snapshot-trailing=20",
            "--snapshot-entries=100000000",
        ],
    );
    c.wait_leader();
    let mut cl = c.client();
    let mut model = BTreeMap::new();
    for i in 0..420u32 {
        let (k, v) = (format!("k{i:04}"), format!("value-{i}-{}", "x".repeat(60)));
        cl.put(k.as_bytes(), v.as_bytes()).expect("put");
        model.insert(k, v.into_bytes());
        if i == 150 || i == 300 {
            let n = if i == 150 { 1 } else { 2 };
            c.signal(1, libc::SIGUSR1);
            wait_log_count(&c, 1, "log compacted through index", n);
        }
    }
    for i in 1..=5 {
        let k = format!("a{i}");
        cl.put(k.as_bytes(), b"before").expect("put");
        model.insert(k, b"before".to_vec());
    }
    cl.put(b"zeros", &[0u8; 2048]).expect("put zeros");
    model.insert("zeros".into(), vec![0u8; 2048]);
    for i in 1..=5 {
        let k = format!("b{i}");
        cl.put(k.as_bytes(), b"after").expect("put");
        model.insert(k, b"after".to_vec());
    }
    c.stop(1);
    (c, model)
}

fn check_all(c: &Cluster, model: &BTreeMap<String, Vec<u8>>) {
    let mut cl = c.client();
    for (k, v) in model {
        let r = cl.get(k.as_bytes()).expect("get");
        assert!(r.found, "acknowledged key {k} lost");
        assert_eq!(&r.value[..], &v[..], "key {k}");
    }
}

/// Offset of the record holding the 2,048-zero value, and its segment.
fn zero_record(dir: &Path) -> (PathBuf, usize, u64) {
    for seg in segments(dir) {
        let b = std::fs::read(&seg).unwrap();
        for (off, len, index) in records(&seg) {
            let payload = &b[off + 32..off + 32 + len];
            if len >= 2048 && payload.windows(2048).any(|w| w.iter().all(|&x| x == 0)) {
                return (seg, off, index);
            }
        }
    }
    panic!("no record with 2048 zero bytes found");
}

#[test]
fn missing_snapshot_files_refuse_to_start() {
    let (mut c, model) = build_node();
    let d = c.data_dir(1);
    let saved = c.dir.path().join("saved-snap");
    copy_dir(&d.join("snap"), &saved);
    let snaps = snapshots(&d);
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    for s in &snaps {
        std::fs::remove_file(s).unwrap();
    }
    let ds = d.to_str().unwrap();
    let (code, t) = log_tool(&["verify", ds]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("log is compacted up to index"), "{t}");

    // The server refuses too, naming log/meta, what is missing and how to recover.
    let before = c.node_log(1).len();
    c.start_node(1);
    let st = c.wait_exit(1);
    assert!(!st.success(), "server started without its snapshots");
    let out = c.node_log(1)[before..].to_string();
    assert!(
        out.contains("refusing to start")
            && out.contains("log/meta")
            && out.contains("is compacted up to index")
            && out.contains("no usable snapshot")
            && out.contains("to recover"),
        "{out}"
    );
    assert!(!out.contains("replayed log entries"), "{out}");

    // With the files back, everything acknowledged is there.
    copy_dir(&saved, &d.join("snap"));
    c.start_node(1);
    c.wait_leader();
    check_all(&c, &model);
}

#[test]
fn zero_filled_record_with_a_flipped_crc_is_damage() {
    let (mut c, model) = build_node();
    let d = c.data_dir(1);
    let ds = d.to_str().unwrap().to_string();
    let (seg, off, index) = zero_record(&d);
    let seg_name = seg.file_name().unwrap().to_str().unwrap().to_string();
    flip(&seg, off + 4);
    // Below the durable commit (a clean stop persisted it): damage, refused.
    let (code, t) = log_tool(&["verify", &ds]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains(&seg_name) && t.contains(&format!("byte {off}")),
        "{t}"
    );
    let before = c.node_log(1).len();
    c.start_node(1);
    assert!(
        !c.wait_exit(1).success(),
        "started on a damaged committed entry"
    );
    let out = c.node_log(1)[before..].to_string();
    assert!(
        out.contains("refusing to start") && out.contains(&seg_name) && out.contains("byte"),
        "{out}"
    );
    // Even above the durable commit (the lazy commit hint lagging behind), zeros inside the
    // damaged record are no evidence of a lost write: still refused, never cut.
    set_commit(&d, index - 1);
    let (code, t) = log_tool(&["verify", &ds]);
    assert_eq!(code, Some(1), "commit {}: {t}", index - 1);
    assert!(
        t.contains("not a torn tail") || t.contains("CORRUPT"),
        "{t}"
    );
    let before = c.node_log(1).len();
    c.start_node(1);
    assert!(!c.wait_exit(1).success(), "cut the log at a damaged record");
    let out = c.node_log(1)[before..].to_string();
    assert!(out.contains(&seg_name), "{out}");
    // Nothing was cut: with the byte restored every acknowledged write is there.
    flip(&seg, off + 4);
    c.start_node(1);
    c.wait_leader();
    check_all(&c, &model);
}

fn peer_addr(c: &Cluster, id: u64) -> String {
    c.peers
        .split(',')
        .find_map(|p| {
            let (i, rest) = p.split_once('=')?;
            (i.parse::<u64>().ok()? == id).then(|| rest.split('/').next().unwrap().to_string())
        })
        .unwrap()
}

/// Sends `m` to its receiver's peer port over a connection authenticated as its sender (these
/// frames test the checks behind the handshake, as if a member sent them).
fn send_frame(c: &Cluster, m: &Message) {
    let (addr, client) = (peer_addr(c, m.to), c.addr(m.to));
    let mut s = peer_conn_as(c.dir.path(), &addr, &client, m.from, m.to);
    raftkv::net::framing::blocking::write_msg(&mut s, m).expect("send frame");
}

fn install_snapshot(from: u64, to: u64, term: u64, meta: SnapshotMeta, data: Vec<u8>) -> Message {
    let crc = crc32fast::hash(&data);
    Message {
        from,
        to,
        term,
        body: Some(Body::InstallSnapshot(InstallSnapshot {
            meta: Some(meta),
            offset: 0,
            data: Bytes::from(data),
            done: true,
            crc,
        })),
    }
}

fn three_nodes_with_writes() -> (Cluster, BTreeMap<String, Vec<u8>>, u64, u64, u64) {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let mut cl = c.client();
    let mut model = BTreeMap::new();
    for i in 0..50 {
        let k = format!("key{i}");
        cl.put(k.as_bytes(), b"v1").expect("put");
        model.insert(k, b"v1".to_vec());
    }
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let term = status(&c.addr(leader)).unwrap().term;
    (c, model, leader, follower, term)
}

/// After the hostile frames: the follower still serves, takes new writes, and a restart of
/// the whole cluster loses nothing acknowledged.
fn still_running_and_restartable(
    c: &mut Cluster,
    model: &mut BTreeMap<String, Vec<u8>>,
    follower: u64,
) {
    let st = status(&c.addr(follower)).expect("follower answers after the frames");
    let mut cl = c.client();
    for i in 0..20 {
        let k = format!("after{i}");
        cl.put(k.as_bytes(), b"v2").expect("put");
        model.insert(k, b"v2".to_vec());
    }
    let commit = status(&c.addr(c.wait_leader())).unwrap().commit_index;
    wait_for(
        "the follower to apply new writes",
        Duration::from_secs(15),
        || {
            let s = status(&c.addr(follower))?;
            (s.applied_index >= commit && s.applied_index > st.applied_index).then_some(())
        },
    );
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.start_node(id);
    }
    c.wait_leader();
    check_all(c, model);
    for id in 1..=3 {
        assert!(
            status(&c.addr(id)).is_some(),
            "node {id} did not come back:\n{}",
            c.node_log(id)
        );
    }
}

#[test]
fn install_snapshot_with_a_huge_index_is_dropped() {
    let (mut c, mut model, leader, follower, term) = three_nodes_with_writes();
    let mut kv = KvStore::new();
    kv.apply(1, b"");
    let mut data = Vec::new();
    kv.write_snapshot(&mut data).unwrap();
    for (index, t) in [(u64::MAX, term), (1000, u64::MAX)] {
        let meta = SnapshotMeta {
            index,
            term: t,
            conf: None,
            ..Default::default()
        };
        send_frame(
            &c,
            &install_snapshot(leader, follower, term, meta, data.clone()),
        );
    }
    wait_log_count(&c, follower, "dropping raft message from node", 2);
    let names: Vec<String> = snapshots(&c.data_dir(follower))
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains(&u64::MAX.to_string())),
        "published: {names:?}"
    );
    still_running_and_restartable(&mut c, &mut model, follower);
}

#[test]
fn invalid_received_snapshots_are_discarded() {
    let (mut c, mut model, leader, follower, term) = three_nodes_with_writes();
    let commit = status(&c.addr(follower)).unwrap().commit_index;
    let max_index = raftkv::storage::record::MAX_INDEX;
    // (a) storage CRCs fine, KV payload empty (crc 0); (b) a well-formed KV payload whose
    // applied index (0) is not the snapshot's; (c) the largest plausible index, garbage.
    let mut empty_kv = Vec::new();
    KvStore::new().write_snapshot(&mut empty_kv).unwrap();
    let cases = [
        (commit + 1000, Vec::new()),
        (commit + 2000, empty_kv),
        (max_index, b"garbage".to_vec()),
    ];
    for (i, (index, data)) in cases.iter().enumerate() {
        let meta = SnapshotMeta {
            index: *index,
            term,
            conf: None,
            ..Default::default()
        };
        send_frame(
            &c,
            &install_snapshot(leader, follower, term, meta, data.clone()),
        );
        wait_log_count(
            &c,
            follower,
            "discarded (node keeps its current state)",
            i + 1,
        );
    }
    let snaps: Vec<String> = snapshots(&c.data_dir(follower))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for (index, _) in &cases {
        assert!(
            !snaps.iter().any(|n| n.contains(&format!("{index:020}"))),
            "invalid snapshot {index} published: {snaps:?}"
        );
    }
    let tmp: Vec<_> = std::fs::read_dir(c.data_dir(follower).join("snap"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    still_running_and_restartable(&mut c, &mut model, follower);
}

/// Unit level: an invalid snapshot is answered with a failure (the leader restarts or gives
/// up) and leaves no file behind.
#[test]
fn receiver_answers_an_invalid_snapshot_with_a_failure() {
    use raftkv::snapshot::{InstallError, Received, SnapshotReceiver};
    let tmp = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(tmp.path()).unwrap();
    let mut rx = SnapshotReceiver::new();
    let meta = SnapshotMeta {
        index: 10,
        term: 2,
        conf: None,
        ..Default::default()
    };
    let m = install_snapshot(1, 2, 2, meta, b"not a kv snapshot".to_vec());
    let Received::Complete(rs) = rx.on_message(&mut store, 0, &m) else {
        panic!("expected a complete transfer");
    };
    match rs.install(&mut store) {
        Err(InstallError::Invalid { why, reply }) => {
            assert!(why.contains("kv snapshot"), "{why}");
            match reply.body {
                Some(Body::InstallSnapshotResponse(r)) => {
                    assert!(!r.success && !r.done && r.index == 10, "{r:?}")
                }
                other => panic!("{other:?}"),
            }
        }
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(_) => panic!("an invalid snapshot was installed"),
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Accept,
    Refuse,
}

#[test]
fn damage_matrix_server_and_verify_agree() {
    let (c, _model) = build_node();
    let base = c.data_dir(1);
    let segs = segments(&base);
    assert!(segs.len() >= 4, "{segs:?}");
    let last = segs.last().unwrap().clone();
    let last_recs = records(&last);
    assert!(last_recs.len() >= 3, "{last_recs:?}");
    let last_index = last_recs.last().unwrap().2;
    let rel = |p: &Path| p.strip_prefix(&base).unwrap().to_path_buf();
    let (last_rel, sealed_rel, mid_rel) = (rel(&last), rel(&segs[segs.len() - 2]), rel(&segs[1]));
    let snaps = snapshots(&base);
    assert_eq!(snaps.len(), 2);
    let (older_snap, newest_snap) = (rel(&snaps[0]), rel(&snaps[1]));
    let (zseg, zoff, _) = zero_record(&base);
    let zseg_rel = rel(&zseg);

    type Damage = Box<dyn Fn(&Path)>;
    let lr = last_recs.clone();
    let cases: Vec<(&str, Expect, Damage)> = vec![
        ("sound", Expect::Accept, Box::new(|_| {})),
        ("bit flip in a sealed segment", Expect::Refuse, {
            let p = mid_rel.clone();
            Box::new(move |d| flip(&d.join(&p), 200))
        }),
        (
            "stray bytes after a sealed segment's last record",
            Expect::Refuse,
            {
                let p = sealed_rel.clone();
                Box::new(move |d| {
                    let f = d.join(&p);
                    let mut b = std::fs::read(&f).unwrap();
                    let n = b.len();
                    b[n - 1] = 1;
                    std::fs::write(&f, b).unwrap();
                })
            },
        ),
        (
            "last record cut, entries up to it durable",
            Expect::Refuse,
            {
                let (p, lr) = (last_rel.clone(), lr.clone());
                Box::new(move |d| zero_last_record(d, &p, &lr))
            },
        ),
        (
            "last record torn, above the durable commit",
            Expect::Accept,
            {
                let (p, lr) = (last_rel.clone(), lr.clone());
                Box::new(move |d| {
                    zero_last_record(d, &p, &lr);
                    set_commit(d, last_index - 3);
                })
            },
        ),
        (
            "file cut short in the last record, above the durable commit",
            Expect::Accept,
            {
                let (p, lr) = (last_rel.clone(), lr.clone());
                Box::new(move |d| {
                    let (off, _, _) = *lr.last().unwrap();
                    let f = d.join(&p);
                    let b = std::fs::read(&f).unwrap();
                    std::fs::write(&f, &b[..off + 20]).unwrap();
                    set_commit(d, last_index - 3);
                })
            },
        ),
        (
            "CRC flip in the last segment, valid records after it",
            Expect::Refuse,
            {
                let (p, lr) = (last_rel.clone(), lr.clone());
                Box::new(move |d| {
                    let (off, _, index) = lr[lr.len() - 3];
                    flip(&d.join(&p), off + 4);
                    set_commit(d, index - 1);
                })
            },
        ),
        ("unsynced bytes after the last record", Expect::Accept, {
            let (p, lr) = (last_rel.clone(), lr.clone());
            Box::new(move |d| {
                let (off, len, _) = *lr.last().unwrap();
                let f = d.join(&p);
                let mut b = std::fs::read(&f).unwrap();
                b[off + 32 + len + 100] = 0x5a;
                std::fs::write(&f, b).unwrap();
            })
        }),
        (
            "zero-filled record with a flipped CRC (case 2)",
            Expect::Refuse,
            {
                let p = zseg_rel.clone();
                Box::new(move |d| flip(&d.join(&p), zoff + 4))
            },
        ),
        ("last segment deleted", Expect::Refuse, {
            let p = last_rel.clone();
            Box::new(move |d| std::fs::remove_file(d.join(&p)).unwrap())
        }),
        ("middle segment deleted", Expect::Refuse, {
            let p = mid_rel.clone();
            Box::new(move |d| std::fs::remove_file(d.join(&p)).unwrap())
        }),
        (
            "torn segment creation (all-zero new segment)",
            Expect::Accept,
            {
                Box::new(move |d| {
                    let name = format!("log/{:020}.seg", last_index + 1);
                    std::fs::write(d.join(name), vec![0u8; 8192]).unwrap();
                })
            },
        ),
        (
            "zero-byte segment stub of a failed allocation (#16)",
            Expect::Accept,
            {
                Box::new(move |d| {
                    let name = format!("log/{:020}.seg", last_index + 1);
                    std::fs::write(d.join(name), b"").unwrap();
                })
            },
        ),
        ("new segment with its header cut short", Expect::Refuse, {
            let p = last_rel.clone();
            Box::new(move |d| {
                // A non-zero partial header: not a torn creation (the allocation writes the
                // header before the file gets its segment name), so damage.
                let h = std::fs::read(d.join(&p)).unwrap()[..30].to_vec();
                let name = format!("log/{:020}.seg", last_index + 1);
                std::fs::write(d.join(name), h).unwrap();
            })
        }),
        ("leftover segment allocation temp files", Expect::Accept, {
            let p = last_rel.clone();
            Box::new(move |d| {
                let mut h = std::fs::read(d.join(&p)).unwrap();
                h[64..].fill(0);
                std::fs::write(d.join(format!("log/{:020}.seg.tmp", last_index + 1)), h).unwrap();
                std::fs::write(d.join(format!("log/{:020}.seg.tmp", last_index + 2)), b"").unwrap();
            })
        }),
        ("damaged log/meta", Expect::Refuse, {
            Box::new(|d| flip(&d.join("log/meta"), 9))
        }),
        ("damaged hard state (both slots)", Expect::Refuse, {
            Box::new(|d| {
                flip(&d.join("hardstate"), 8);
                flip(&d.join("hardstate"), 512 + 8);
            })
        }),
        ("snapshot files deleted (case 1)", Expect::Refuse, {
            let (a, b) = (older_snap.clone(), newest_snap.clone());
            Box::new(move |d| {
                std::fs::remove_file(d.join(&a)).unwrap();
                std::fs::remove_file(d.join(&b)).unwrap();
            })
        }),
        ("newest snapshot bit flip: falls back", Expect::Accept, {
            let p = newest_snap.clone();
            Box::new(move |d| {
                let f = d.join(&p);
                let n = std::fs::metadata(&f).unwrap().len() as usize;
                flip(&f, n / 2);
            })
        }),
        (
            "newest snapshot with right CRCs, invalid KV payload (case 4 at rest)",
            Expect::Accept,
            {
                let p = newest_snap.clone();
                Box::new(move |d| {
                    let f = d.join(&p);
                    let meta = raftkv::storage::SnapshotReader::open(&f).unwrap().meta;
                    std::fs::remove_file(&f).unwrap();
                    let mut st = SnapshotStore::open(&d.join("snap")).unwrap();
                    let w = st.create(&meta).unwrap();
                    w.finish().unwrap();
                })
            },
        ),
        ("both snapshots damaged", Expect::Refuse, {
            let (a, b) = (older_snap.clone(), newest_snap.clone());
            Box::new(move |d| {
                for p in [&a, &b] {
                    let f = d.join(p);
                    let n = std::fs::metadata(&f).unwrap().len() as usize;
                    flip(&f, n / 2);
                }
            })
        }),
        ("leftover temp and trash files", Expect::Accept, {
            Box::new(|d| {
                std::fs::write(d.join("snap/snap-1-1.snap.tmp"), b"partial").unwrap();
                std::fs::write(d.join("log/00000000000000000001.seg.trash"), [0u8; 100]).unwrap();
            })
        }),
    ];

    let root = tempfile::tempdir().unwrap();
    let mut sound = None;
    for (i, (name, expect, damage)) in cases.iter().enumerate() {
        let d = root.path().join(format!("case{i}"));
        copy_dir(&base, &d);
        damage(&d);
        let (code, vt) = log_tool(&["verify", d.to_str().unwrap()]);
        let server = server_open(&d, &root.path().join(format!("case{i}.log")));
        let ctx = format!("case {i} ({name}):\nverify exit {code:?}:\n{vt}\nserver: {server:?}");
        match expect {
            Expect::Refuse => {
                assert_eq!(code, Some(1), "{ctx}");
                let err = server.as_ref().expect_err(&ctx);
                assert!(
                    err.contains("refusing to start") || err.contains("corrupt"),
                    "{ctx}"
                );
            }
            Expect::Accept => {
                assert_eq!(code, Some(0), "{ctx}");
                let got = server.as_ref().expect(&ctx);
                let v = recovered_line(&vt).expect(&ctx);
                assert_eq!(&v, got, "{ctx}");
                if *name == "sound" {
                    sound = Some(v.clone());
                    assert!(
                        v.contains(&format!("..={last_index}, commit {last_index}")),
                        "{ctx}"
                    );
                } else if name.contains("torn") || name.contains("cut short") {
                    if !name.contains("creation") {
                        assert!(v.contains(&format!("..={}", last_index - 1)), "{ctx}");
                    }
                } else if name.contains("falls back") || name.contains("invalid KV") {
                    let s = sound.clone().unwrap();
                    assert_ne!(v, s, "{ctx}: the fallback snapshot is older");
                }
            }
        }
        println!("case {i} ({name}): {expect:?} ok");
    }
}

/// Storage level (nothing known durable): zeros inside a damaged record are no evidence of a
/// lost write. A flipped CRC in a zero-filled record followed by valid records is refused; the
/// same record at the very end (nothing after it) is a torn tail and cut; a lost sector after
/// the damaged record's end (the next record's magic reads as zeros) is a torn tail too.
#[test]
fn zero_evidence_comes_from_outside_the_damaged_record() {
    use raftkv::raft::{Entry, LogStore};
    use raftkv::storage::{Log, LogOptions, StorageError};
    let build = |d: &Path, n_after: u64| -> (PathBuf, usize, Vec<u8>) {
        let mut log = Log::open(
            d,
            LogOptions {
                segment_size: 1 << 20,
            },
        )
        .unwrap();
        let mut es: Vec<Entry> = (1..=5)
            .map(|i| Entry {
                index: i,
                term: 1,
                entry_type: 0,
                data: Bytes::from(vec![7u8; 50]),
            })
            .collect();
        es.push(Entry {
            index: 6,
            term: 1,
            entry_type: 0,
            data: Bytes::from(vec![0u8; 2048]),
        });
        for i in 7..7 + n_after {
            es.push(Entry {
                index: i,
                term: 1,
                entry_type: 0,
                data: Bytes::from(vec![9u8; 50]),
            });
        }
        log.append(&es).unwrap();
        log.sync().unwrap();
        drop(log);
        let seg = d.join("00000000000000000001.seg");
        let off = records(&seg)[5].0;
        (seg.clone(), off, std::fs::read(&seg).unwrap())
    };
    // Followed by valid records: refused, naming file and offset.
    let t = tempfile::tempdir().unwrap();
    let (seg, off, _) = build(t.path(), 5);
    flip(&seg, off + 4);
    let open = |d: &Path| {
        Log::open(
            d,
            LogOptions {
                segment_size: 1 << 20,
            },
        )
    };
    match open(t.path()) {
        Err(StorageError::Corrupt { path, offset, what }) => {
            assert_eq!((path, offset), (seg.clone(), off as u64), "{what}");
            assert!(what.contains("not a torn tail"), "{what}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(l) => panic!("opened, last index {}", l.last_index()),
    }
    // The next record's header lost (zeros): that is evidence from outside; cut at entry 6.
    let t2 = tempfile::tempdir().unwrap();
    let (seg2, off2, mut b2) = build(t2.path(), 5);
    let next = records(&seg2)[6].0;
    b2[off2 + 4] ^= 1;
    b2[next..next + 32].fill(0);
    std::fs::write(&seg2, &b2).unwrap();
    let log = open(t2.path()).unwrap();
    assert_eq!(log.last_index(), 5);
    drop(log);
    // At the very end: a torn tail, cut.
    let t3 = tempfile::tempdir().unwrap();
    let (seg3, off3, _) = build(t3.path(), 0);
    flip(&seg3, off3 + 4);
    let log = open(t3.path()).unwrap();
    assert_eq!(log.last_index(), 5);
}
