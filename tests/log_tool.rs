//! Runs the built `raftkv-log` binary on sound and damaged data directories.

mod common;

use bytes::Bytes;
use raftkv::kv::{encode_command, KvStore};
use raftkv::pb::kvpb;
use raftkv::raft::{ConfState, Entry, HardState, SnapshotMeta};
use raftkv::storage::{HardStateFile, Log, LogOptions, SnapshotStore};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raftkv-log"))
        .args(args)
        .output()
        .expect("run raftkv-log")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn put(key: &str, n: usize) -> Bytes {
    encode_command(&kvpb::Command {
        client_id: 7,
        seq: 1,
        acked_seq: 0,
        op: Some(kvpb::command::Op::Put(kvpb::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from(vec![b'v'; n]),
            ..Default::default()
        })),
    })
}

/// A data dir: log with 100 entries over several segments (compacted to 10), hard state, one
/// snapshot at index 10.
fn build(dir: &Path) -> PathBuf {
    let mut log = Log::open(&dir.join("log"), LogOptions { segment_size: 4096 }).unwrap();
    let mut es = vec![Entry {
        index: 1,
        term: 1,
        entry_type: 0,
        data: Bytes::new(),
    }];
    es.push(Entry {
        index: 2,
        term: 1,
        entry_type: 1,
        data: Bytes::from(prost::Message::encode_to_vec(&ConfState {
            voters: vec![1, 2, 3],
            learners: vec![],
            ..Default::default()
        })),
    });
    for i in 3..=100 {
        es.push(Entry {
            index: i,
            term: 2,
            entry_type: 0,
            data: put(&format!("key{i}"), 256),
        });
    }
    log.append(&es).unwrap();
    log.sync().unwrap();
    let meta = SnapshotMeta {
        index: 10,
        term: 2,
        conf: Some(ConfState {
            voters: vec![1, 2, 3],
            learners: vec![],
            ..Default::default()
        }),
        ..Default::default()
    };
    // A real KV snapshot of entries 1..=10 (the tool validates the payload, as the server).
    let mut kv = KvStore::new();
    for e in es[..10].iter().filter(|e| e.entry_type == 0) {
        kv.apply(e.index, &e.data);
    }
    assert_eq!(kv.applied(), 10);
    let mut snaps = SnapshotStore::open(&dir.join("snap")).unwrap();
    let mut w = snaps.create(&meta).unwrap();
    kv.write_snapshot(&mut w).unwrap();
    let snap = w.finish().unwrap();
    log.compact(10, 2).unwrap();
    let (mut hs, _) = HardStateFile::open(dir).unwrap();
    // Entries 91..=100 are above the durable commit: the unsynced tail a crash may tear.
    hs.save(&HardState {
        term: 2,
        vote: 1,
        commit: 90,
    })
    .unwrap();
    snap
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    common::files_with_ext(&dir.join("log"), "seg")
}

#[test]
fn sound_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let snap = build(d);
    let ds = d.to_str().unwrap();

    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.starts_with("OK:")
            && t.contains("snapshot index 10")
            && t.contains("1 snapshot file(s), restored")
            && t.contains("recovered: snapshot index 10 term 2, log 11..=100, commit 90"),
        "{t}"
    );

    let o = run(&["stats", ds]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("snapshot index 10"), "{t}");
    assert!(t.contains("term 2 vote 1 commit 90"), "{t}");
    assert!(t.contains("index 10 term 2"), "{t}");
    assert!(!t.contains("being deleted"), "{t}");
    // Files waiting for incremental deletion are shown, and nothing else minds them.
    std::fs::write(
        d.join("log/00000000000000000001.seg.trash"),
        vec![0u8; 3000],
    )
    .unwrap();
    std::fs::write(d.join("snap/snap-1-1.snap.trash"), vec![0u8; 500]).unwrap();
    let o = run(&["stats", ds]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("being deleted:  1 compacted segment file(s) (*.seg.trash), 3000 B"),
        "{t}"
    );
    assert!(
        t.contains("being deleted:  1 pruned snapshot file(s) (*.snap.trash), 500 B"),
        "{t}"
    );
    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::fs::remove_file(d.join("log/00000000000000000001.seg.trash")).unwrap();
    std::fs::remove_file(d.join("snap/snap-1-1.snap.trash")).unwrap();

    let o = run(&["dump", ds, "--from", "1", "--to", "12"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = t.lines().collect();
    // The first segment still holds the compacted entries 1..=10; dump shows what is on disk.
    assert_eq!(lines.len(), 12, "{t}");
    assert!(lines[0].contains("no-op"), "{t}");
    assert!(lines[1].contains("CONF voters=[1, 2, 3]"), "{t}");
    assert!(lines[11].contains("PUT key=key12 (256 B)"), "{t}");

    let o = run(&["dump", ds, "--from", "50", "--to", "51", "--json"]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(t.lines().count(), 2, "{t}");
    assert!(
        t.lines()
            .next()
            .unwrap()
            .starts_with("{\"index\":50,\"term\":2,\"type\":\"normal\""),
        "{t}"
    );

    // The log dir itself is accepted too.
    let o = run(&["verify", d.join("log").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let o = run(&["snapshot", snap.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("index:    10") && t.contains("keys:"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn damaged_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let snap = build(d);
    let ds = d.to_str().unwrap();
    let segs = segments(d);
    assert!(segs.len() >= 3);

    // A flipped bit in a middle segment: verify names file and offset, exits 1.
    let mid = &segs[1];
    let orig = std::fs::read(mid).unwrap();
    let mut b = orig.clone();
    b[200] ^= 0x04;
    std::fs::write(mid, &b).unwrap();
    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    let name = mid.file_name().unwrap().to_str().unwrap();
    assert!(t.contains(name) && t.contains("byte"), "{t}");
    // stats refuses too (damage in the middle), with exit 1.
    let o = run(&["stats", ds]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    std::fs::write(mid, &orig).unwrap();

    // A torn tail (the last record cut short): what the server repairs on open is a warning,
    // exit 0, naming file and offset; --strict makes it damage; stats shows it as tail damage.
    let last = segs.last().unwrap();
    let last_name = last.file_name().unwrap().to_str().unwrap();
    let orig = std::fs::read(last).unwrap();
    let end = orig.iter().rposition(|&x| x != 0).unwrap();
    std::fs::write(last, &orig[..end - 10]).unwrap();
    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("WARNING") && t.contains("torn tail") && t.contains(last_name),
        "{t}"
    );
    assert!(t.contains("entries, indexes 1..=99"), "{t}");
    let o = run(&["verify", "--strict", ds]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).starts_with("CORRUPT") && text(&o).contains(last_name),
        "{}",
        text(&o)
    );
    let o = run(&["stats", ds]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("tail damage"), "{}", text(&o));
    std::fs::write(last, &orig).unwrap();

    // A segment allocation a crash interrupted (`*.seg.tmp`): never read as a segment; verify
    // and stats name it, exit 0 (the server removes it on open).
    let alloc_tmp = d.join("log").join(format!("{:020}.seg.tmp", 101));
    std::fs::write(&alloc_tmp, [0u8; 100]).unwrap();
    let tmp_name = alloc_tmp.file_name().unwrap().to_str().unwrap();
    for cmd in ["verify", "stats"] {
        let o = run(&[cmd, ds]);
        assert_eq!(o.status.code(), Some(0), "{cmd}: {}", text(&o));
        assert!(text(&o).contains(tmp_name), "{cmd}: {}", text(&o));
    }
    std::fs::remove_file(&alloc_tmp).unwrap();

    // Unsynced leftovers after the last record (non-zero bytes where the log has ended): also
    // repaired on open, so a warning; damage with --strict.
    let mut b = orig.clone();
    let junk_at = end + 200;
    b[junk_at] = 0x5a;
    std::fs::write(last, &b).unwrap();
    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("WARNING") && text(&o).contains("non-zero bytes"),
        "{}",
        text(&o)
    );
    let o = run(&["verify", "--strict", ds]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // A flipped bit in the last segment's *middle* (valid records follow): real corruption that
    // the server refuses to open, so exit 1 even without --strict.
    let mut b = orig.clone();
    b[200] ^= 0x10;
    std::fs::write(last, &b).unwrap();
    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(last_name) && text(&o).contains("not a torn tail"),
        "{}",
        text(&o)
    );

    // Stray bytes after the end of a sealed segment: never written by the log, so damage.
    std::fs::write(last, &orig).unwrap();
    let sealed = &segs[segs.len() - 2];
    let so = std::fs::read(sealed).unwrap();
    let mut b = so.clone();
    let n = b.len();
    b[n - 1] = 1;
    std::fs::write(sealed, &b).unwrap();
    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("non-zero bytes"), "{}", text(&o));
    std::fs::write(sealed, &so).unwrap();

    // A damaged snapshot.
    let so = std::fs::read(&snap).unwrap();
    let mut b = so.clone();
    b[so.len() / 2] ^= 1;
    std::fs::write(&snap, &b).unwrap();
    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("snap-"), "{}", text(&o));
    let o = run(&["snapshot", snap.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    std::fs::write(&snap, &so).unwrap();

    // Damaged hard state (both slots).
    let hp = d.join("hardstate");
    let ho = std::fs::read(&hp).unwrap();
    let mut b = ho.clone();
    b[8] ^= 1;
    b[512 + 8] ^= 1;
    std::fs::write(&hp, &b).unwrap();
    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("hardstate"), "{}", text(&o));
    std::fs::write(&hp, &ho).unwrap();

    let o = run(&["verify", ds]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn missing_and_foreign_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    for cmd in ["stats", "dump", "verify"] {
        let o = run(&[cmd, missing.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("no such directory"), "{}", text(&o));
    }
    std::fs::write(
        tmp.path().join("notes.txt"),
        "hello, these are just some notes",
    )
    .unwrap();
    let o = run(&["verify", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("not a raftkv data directory"),
        "{}",
        text(&o)
    );
    let o = run(&["snapshot", tmp.path().join("notes.txt").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not a raftkv snapshot"), "{}", text(&o));
    let o = run(&["snapshot", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn snapshot_shows_key_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kv = raftkv::kv::KvStore::new();
    for i in 1..=37u64 {
        let mut cmd = prost::Message::decode(put(&format!("k{i}"), 8).as_ref()).unwrap();
        let cmd: &mut kvpb::Command = &mut cmd;
        // Two client sessions, so the session count is checked too.
        cmd.client_id = 1 + i % 2;
        cmd.seq = i;
        kv.apply(i, &encode_command(cmd));
    }
    // Overwrites do not add keys; a delete removes one.
    kv.apply(38, &put("k5", 3));
    kv.apply(
        39,
        &encode_command(&kvpb::Command {
            client_id: 0,
            seq: 0,
            acked_seq: 0,
            op: Some(kvpb::command::Op::Delete(kvpb::Delete {
                key: Bytes::from_static(b"k6"),
            })),
        }),
    );
    assert_eq!(kv.len(), 36);
    let mut snaps = SnapshotStore::open(&tmp.path().join("snap")).unwrap();
    let mut w = snaps
        .create(&SnapshotMeta {
            index: 39,
            term: 3,
            conf: Some(ConfState {
                voters: vec![1, 2, 3],
                learners: vec![],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
    kv.write_snapshot(&mut w).unwrap();
    let file = w.finish().unwrap();

    let o = run(&["snapshot", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("index:    39") && t.contains("term:     3"),
        "{t}"
    );
    assert!(t.contains("voters:   [1, 2, 3]"), "{t}");
    assert!(t.contains("keys:     36\n"), "{t}");
    assert!(t.contains("sessions: 3\n"), "{t}");
    assert!(t.contains("applied:  39\n"), "{t}");
    assert!(t.contains("alarm:    none\n"), "{t}");
    assert!(!t.contains("unavailable"), "{t}");
}
