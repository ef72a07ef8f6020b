//! Snapshots and log compaction end to end: real `raftkv serve` processes on loopback with tiny
//! snapshot thresholds and log segments.
//!
//! - a follower that was down while the leader compacted past its log catches up by an
//!   InstallSnapshot transfer and serves the same data; disk usage of every node stays bounded
//!   while far more than the thresholds is written;
//! - a transfer interrupted by the follower crashing restarts cleanly;
//! - a damaged newest snapshot (truncated, or one flipped bit) makes the node start from the
//!   previous one plus the log, losing nothing; no usable snapshot at all is a clear fatal error.
//!
//! Free ports, temp dirs, a Drop guard that kills every child, polls with deadlines (no fixed
//! sleeps). Node logs go to `<tempdir>/n<i>.log` and are printed when a test fails.

use raftkv::client::{Client, ClientOptions};
use raftkv::pb::kvpb;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

mod common;
use common::*;

/// Total size of the regular files under `dir` (recursively); a file deleted while we walk is
/// skipped.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn listing(dir: &Path) -> String {
    let mut out = String::new();
    for sub in ["", "log", "snap"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut v: Vec<_> = rd
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file()
                    .then(|| (e.file_name().to_string_lossy().into_owned(), m.len()))
            })
            .collect();
        v.sort();
        for (n, l) in v {
            out += &format!("  {sub}/{n} {l}\n");
        }
    }
    out
}

/// Finished snapshot files in a node's `snap/` dir, newest first: (index, size, path).
fn snapshot_files(data_dir: &Path) -> Vec<(u64, u64, PathBuf)> {
    let files = raftkv::storage::snapshot::list(&data_dir.join("snap")).unwrap_or_default();
    files
        .into_iter()
        .map(|(i, _, p)| {
            let len = std::fs::metadata(&p).map_or(0, |m| m.len());
            (i, len, p)
        })
        .collect()
}

/// `writers` threads each put `per_writer` values cycling over `keys_per_writer` keys of their
/// own (`w<t>-<k>`), so the KV state stays small while the log grows. Returns the final model
/// and the total command bytes written.
fn write_load(
    endpoints: Vec<String>,
    writers: usize,
    per_writer: usize,
    keys_per_writer: usize,
    value_len: usize,
    mut while_running: impl FnMut(),
) -> (BTreeMap<String, String>, u64) {
    let handles: Vec<_> = (0..writers)
        .map(|t| {
            let eps = endpoints.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(
                    eps,
                    ClientOptions {
                        timeout: Duration::from_secs(10),
                        ..Default::default()
                    },
                );
                let mut m = BTreeMap::new();
                let mut bytes = 0u64;
                for i in 0..per_writer {
                    let k = format!("w{t}-{:03}", i % keys_per_writer);
                    let mut v = format!("{i}-");
                    v.extend(std::iter::repeat_n('x', value_len.saturating_sub(v.len())));
                    c.put(k.as_bytes(), v.as_bytes()).unwrap();
                    bytes += (k.len() + v.len()) as u64;
                    m.insert(k, v);
                }
                (m, bytes)
            })
        })
        .collect();
    while handles.iter().any(|h| !h.is_finished()) {
        while_running();
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut model = BTreeMap::new();
    let mut total = 0;
    for h in handles {
        let (m, b) = h.join().unwrap();
        model.extend(m);
        total += b;
    }
    (model, total)
}

const SNAP_ENTRIES: u64 = 50;
const TRAILING: u64 = 10;
const SEGMENT: u64 = 8 << 10;

/// Most log entries a node holds (docs/snapshots.md, "Disk use"): compaction keeps the entries
/// above the previous snapshot (the fallback) or the trailing margin, so the log spans at most
/// two snapshot intervals plus the trailing margin, where an interval is at most the staggered
/// entry threshold (1.5 E + 1) plus `late`: the entries applied between the moment a snapshot
/// was due and the moment it was durable and the log compacted (the one machine-dependent
/// term: write rate x snapshot latency; each node logs it for every snapshot).
fn max_log_entries(late: u64) -> u64 {
    let interval = SNAP_ENTRIES * 3 / 2 + 1;
    2 * (interval + late) + TRAILING
}

/// Disk bound of one node's data dir (live files; compacted segments waiting in the trash are
/// checked apart): the log entries above in whole segments of at least
/// `(SEGMENT - header) / max_record` records each, plus one for a partly compacted first
/// segment; the newest two snapshot files plus one being written or being deleted; small files
/// (hard state, meta, locks).
fn disk_limit(max_record: u64, max_snapshot: u64, late: u64) -> u64 {
    let per_segment = (SEGMENT - 64) / max_record;
    let segments = max_log_entries(late).div_ceil(per_segment) + 1;
    segments * SEGMENT + 3 * max_snapshot + 16 * 1024
}

/// How late a node's snapshots were (docs/snapshots.md, "Disk use"), from its log: the largest
/// "N entries applied past its due index" of a finished snapshot, and for one still running
/// ("taking a snapshot at index X term T, due at D" with no "written" line after it),
/// `applied - D` with `applied` read after the files were looked at (an upper bound).
fn max_lateness(node_log: &str, applied: u64) -> u64 {
    let mut late = 0;
    let mut running_due = None;
    for l in node_log.lines() {
        if let Some((head, _)) = l.split_once(" entries applied past its due index") {
            if let Some(n) = head.rsplit('(').next().and_then(|n| n.trim().parse().ok()) {
                late = late.max(n);
            }
            running_due = None;
        } else if let Some((_, tail)) = l.split_once(", due at ") {
            running_due = tail
                .split_whitespace()
                .next()
                .and_then(|d| d.parse::<u64>().ok());
        }
    }
    running_due.map_or(late, |d| late.max(applied.saturating_sub(d)))
}

/// Bytes of compacted log segments still waiting to be deleted (`log/*.seg.trash`).
fn log_trash_bytes(data_dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(data_dir.join("log")) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".trash"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A follower that was down while the leader snapshotted and compacted its log past the
/// follower's last entry catches up through an InstallSnapshot transfer, then serves the same
/// data; every node's data dir stays within a computed bound while ~4x that much is written.
#[test]
fn lagging_follower_installs_snapshot_and_disk_stays_bounded() {
    let mut cluster = Cluster::start(
        3,
        &[
            &format!("--snapshot-entries={SNAP_ENTRIES}"),
            &format!("--snapshot-trailing={TRAILING}"),
            "--snapshot-bytes=100000000",
            &format!("--segment-size={SEGMENT}"),
        ],
    );
    let leader = cluster.wait_leader();
    let lagger = (1..=3).find(|&i| i != leader).unwrap();
    let other = (1..=3).find(|&i| i != leader && i != lagger).unwrap();
    let (mut model, _) = write_load(cluster.endpoints(), 2, 20, 20, 100, || {});
    let before = wait_for(
        "the lagger to apply the first writes",
        Duration::from_secs(10),
        || {
            let l = status(&cluster.addr(leader))?;
            let s = status(&cluster.addr(lagger))?;
            (s.applied_index >= l.commit_index).then_some(s)
        },
    );
    cluster.stop(lagger);

    // Far more than the thresholds, over few keys: 8 x 500 puts of ~100 bytes.
    let value_len = 100;
    let max_record = 200; // key + value + session fields + record header, generously
    let mut max_snapshot = 0u64;
    // Per node: peak live bytes (everything but the log trash) with the listing at that peak.
    let mut peak = BTreeMap::<u64, (u64, String)>::new();
    let (m, written) = write_load(cluster.endpoints(), 8, 500, 8, value_len, || {
        for id in [leader, other] {
            let d = cluster.data_dir(id);
            for (_, len, _) in snapshot_files(&d) {
                max_snapshot = max_snapshot.max(len);
            }
            let live = dir_bytes(&d).saturating_sub(log_trash_bytes(&d));
            let e = peak.entry(id).or_default();
            if live > e.0 {
                *e = (live, listing(&d));
            }
        }
    });
    model.extend(m);
    let entries_written = 8 * 500;
    for (id, (p, l)) in &peak {
        let applied = wait_for("status", Duration::from_secs(5), || {
            status(&cluster.addr(*id))
        })
        .applied_index;
        let late = max_lateness(&cluster.node_log(*id), applied);
        let limit = disk_limit(max_record, max_snapshot, late);
        let report = format!(
            "node {id}: peak {p} B of live files while writing; limit {limit} B (max snapshot \
             {max_snapshot} B, at most {} log entries with snapshots at most {late} entries late); \
             wrote {written} B in {entries_written} entries; files at the peak:\n{l}",
            max_log_entries(late)
        );
        eprintln!("{report}");
        // The bound means something only if far more than the configured intervals went
        // through the log and the node compacted it several times.
        assert!(
            entries_written > 3 * max_log_entries(0),
            "test too small: {report}"
        );
        let compactions = cluster
            .node_log(*id)
            .matches("log compacted through")
            .count();
        assert!(compactions >= 3, "{compactions} compactions: {report}");
        assert!(*p <= limit, "{report}");
    }
    // Compacted segments are freed right after each compaction and on every tick: once the
    // writes stop, the trash drains.
    for id in [leader, other] {
        let d = cluster.data_dir(id);
        wait_for("the log trash to drain", Duration::from_secs(5), || {
            (log_trash_bytes(&d) == 0).then_some(())
        });
    }

    // The leader's log no longer holds what the lagger needs next.
    let lst = wait_for("the leader to compact", Duration::from_secs(10), || {
        let st = status(&cluster.addr(leader))?;
        (st.first_log_index > before.last_log_index + 1 && st.snapshot_index > 0).then_some(st)
    });
    assert!(
        lst.first_log_index > before.last_log_index + 1,
        "leader log starts at {}, lagger's last index {}",
        lst.first_log_index,
        before.last_log_index
    );

    cluster.start_node(lagger);
    let after = wait_for(
        "the lagger to install a snapshot and catch up",
        Duration::from_secs(20),
        || {
            let s = status(&cluster.addr(lagger))?;
            (s.snapshot_index >= lst.snapshot_index && s.applied_index >= lst.commit_index)
                .then_some(s)
        },
    );
    assert!(after.snapshot_index > before.snapshot_index, "{after:?}");
    assert!(
        after.first_log_index > before.last_log_index,
        "lagger's log was not reset past its old end: {after:?}"
    );
    assert!(
        cluster.node_log(lagger).contains("installed snapshot"),
        "the lagger caught up without a snapshot transfer"
    );

    // Same data: stale reads on the lagger, linearizable reads through the leader.
    let mut local = Client::new(
        vec![cluster.addr(lagger)],
        ClientOptions {
            timeout: Duration::from_secs(5),
            consistency: kvpb::Consistency::Stale,
            ..Default::default()
        },
    );
    assert_eq!(scan_all(&mut local, "w"), model);
    let mut lin = cluster.client_with(kvpb::Consistency::Linearizable);
    assert_eq!(scan_all(&mut lin, "w"), model);
    for (k, v) in model.iter().step_by(7) {
        assert_eq!(&lin.get(k.as_bytes()).unwrap().value[..], v.as_bytes());
    }

    // The lagger keeps up by replication afterwards, and its disk is bounded too.
    let (m, _) = write_load(cluster.endpoints(), 2, 20, 5, 50, || {});
    model.extend(m);
    wait_for(
        "the lagger to apply new writes",
        Duration::from_secs(10),
        || (scan_all(&mut local, "w") == model).then_some(()),
    );
    for id in 1..=3 {
        let d = cluster.data_dir(id);
        let used = dir_bytes(&d).saturating_sub(log_trash_bytes(&d));
        let files = listing(&d);
        let applied = wait_for("status", Duration::from_secs(5), || {
            status(&cluster.addr(id))
        })
        .applied_index;
        let late = max_lateness(&cluster.node_log(id), applied);
        let limit = disk_limit(max_record, max_snapshot, late);
        assert!(
            used <= limit,
            "node {id} uses {used} B; limit {limit} B (snapshots at most {late} entries late); \
             files:\n{files}"
        );
    }
}

/// Copies a stopped node's data dir.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Flips one bit in the middle of a file.
fn flip_bit(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

/// Cuts a file to half its size.
fn truncate_half(path: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
}

/// A node restarted with a damaged newest snapshot (truncated, or one bit flipped) warns and
/// starts from the previous snapshot plus the log after it: nothing acknowledged is lost. With
/// every snapshot damaged it refuses to start, naming the files.
#[test]
fn damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let mut cluster = Cluster::start(
        1,
        &[
            "--snapshot-entries=50",
            "--snapshot-trailing=5",
            "--segment-size=8192",
        ],
    );
    cluster.wait_leader();
    let dir = cluster.data_dir(1);
    let (model, _) = write_load(cluster.endpoints(), 4, 80, 30, 60, || {});
    // Two snapshots, and the log compacted (so the fallback really needs the kept log).
    wait_for(
        "two snapshots and a compacted log",
        Duration::from_secs(10),
        || {
            let st = status(&cluster.addr(1))?;
            (snapshot_files(&dir).len() >= 2 && st.first_log_index > 1).then_some(())
        },
    );
    cluster.stop(1);
    let files = snapshot_files(&dir);
    assert!(files.len() >= 2, "{files:?}");
    let (newest, older) = (files[0].0, files[1].0);
    let pristine = cluster.dir.path().join("pristine");
    copy_dir(&dir, &pristine);
    let restore = |c: &Cluster| {
        std::fs::remove_dir_all(c.data_dir(1)).unwrap();
        copy_dir(&pristine, &c.data_dir(1));
        snapshot_files(&c.data_dir(1))
    };

    for (what, damage) in [
        ("truncated", truncate_half as fn(&Path)),
        ("bit-flipped", flip_bit),
    ] {
        let files = restore(&cluster);
        damage(&files[0].2);
        let log_from = cluster.node_log(1).len();
        cluster.start_node(1);
        cluster.wait_leader();
        let mut c = cluster.client_with(kvpb::Consistency::Linearizable);
        assert_eq!(scan_all(&mut c, "w"), model, "{what} newest snapshot");
        let log = cluster.node_log(1)[log_from..].to_string();
        assert!(
            log.contains("using older snapshot") && log.contains("unusable"),
            "{what}: no fallback warning in the log"
        );
        assert!(
            log.contains(&format!("(index {older} ")),
            "{what}: did not restore snapshot {older} (newest was {newest})"
        );
        // The damaged file is moved aside (kept for inspection, out of pruning's way). The
        // node may since have written a new, valid snapshot under the same name (same index
        // and term: nothing was written after the damaged one).
        let mut aside = files[0].2.clone().into_os_string();
        aside.push(".damaged");
        assert!(
            Path::new(&aside).exists(),
            "{what}: damaged snapshot not moved aside"
        );
        if files[0].2.exists() {
            cluster.stop(1);
            raftkv::storage::SnapshotReader::verify(&files[0].2)
                .unwrap_or_else(|e| panic!("{what}: damaged snapshot still in place: {e}"));
        }
        cluster.stop(1);
    }

    // Every snapshot damaged: a clear fatal error, never an empty node. (Pruning to the newest
    // two runs after the next snapshot is published, so the copy may hold a third, older one:
    // damage them all.)
    let files = restore(&cluster);
    for (i, f) in files.iter().enumerate() {
        if i % 2 == 0 {
            truncate_half(&f.2);
        } else {
            flip_bit(&f.2);
        }
    }
    let log_from = cluster.node_log(1).len();
    cluster.start_node(1);
    let st = cluster.wait_exit(1);
    assert!(!st.success(), "node started with no usable snapshot");
    let log = cluster.node_log(1)[log_from..].to_string();
    assert!(log.contains("no usable snapshot"), "unclear error: {log}");
}

/// Polls (every 0.2 ms) for a partial received snapshot (`*.snap.tmp`) in a node's
/// `snap/` dir with at least `min_len` bytes.
fn wait_partial(data_dir: &Path, min_len: u64) -> PathBuf {
    let snap = data_dir.join("snap");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(rd) = std::fs::read_dir(&snap) {
            for e in rd.flatten() {
                let p = e.path();
                if p.to_string_lossy().ends_with(".snap.tmp")
                    && e.metadata().is_ok_and(|m| m.len() >= min_len)
                {
                    return p;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a snapshot transfer into {}",
            snap.display()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// An InstallSnapshot transfer interrupted by the receiving follower crashing, and then one
/// interrupted by the leader crashing, restart cleanly: the follower ends up with the data.
#[test]
fn interrupted_snapshot_transfers_restart_cleanly() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--snapshot-bytes=1000000",
            "--snapshot-entries=1000000",
            "--snapshot-trailing=10",
            "--segment-size=1048576",
        ],
    );
    let leader = cluster.wait_leader();
    let lagger = (1..=3).find(|&i| i != leader).unwrap();
    cluster.stop(lagger);
    // ~6 MB of state: a transfer of about 24 chunks of 256 KiB.
    let (model, _) = write_load(cluster.endpoints(), 8, 190, 190, 4000, || {});
    wait_for("the leader to compact", Duration::from_secs(10), || {
        let st = status(&cluster.addr(leader))?;
        (st.first_log_index > 10).then_some(())
    });
    let lagger_dir = cluster.data_dir(lagger);

    // 1. The receiver crashes part way through. Freezing it first (SIGSTOP) pins the transfer
    // mid-way: the partial file is only renamed when the last chunk is in.
    cluster.start_node(lagger);
    let partial = wait_partial(&lagger_dir, 1);
    cluster.signal(lagger, libc::SIGSTOP);
    let held = std::fs::metadata(&partial).map(|m| m.len());
    assert!(
        held.is_ok(),
        "transfer finished before it could be interrupted"
    );
    eprintln!("follower crashed holding {held:?} bytes of the snapshot");
    cluster.kill(lagger);
    assert!(
        partial.exists(),
        "the crash should leave the partial file behind"
    );

    // 2. The sender (leader) crashes part way through; another node takes over the transfer.
    // Once the lagger answers, its startup has deleted the partial file the crash left.
    cluster.start_node(lagger);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&cluster.addr(lagger)).is_none() {
        assert!(Instant::now() < deadline, "the lagger did not restart");
        std::thread::sleep(Duration::from_millis(1));
    }
    let partial = wait_partial(&lagger_dir, 1);
    cluster.signal(lagger, libc::SIGSTOP);
    let held = std::fs::metadata(&partial).map(|m| m.len());
    assert!(
        held.is_ok(),
        "transfer finished before it could be interrupted"
    );
    eprintln!("leader crashed while the follower held {held:?} bytes of the snapshot");
    cluster.kill(leader);
    cluster.signal(lagger, libc::SIGCONT);
    let new_leader = cluster.wait_leader();
    assert_ne!(new_leader, leader);

    let mut local = Client::new(
        vec![cluster.addr(lagger)],
        ClientOptions {
            timeout: Duration::from_secs(5),
            consistency: kvpb::Consistency::Stale,
            ..Default::default()
        },
    );
    wait_for(
        "the lagger to hold every write",
        Duration::from_secs(20),
        || (scan_all(&mut local, "w") == model).then_some(()),
    );
    let mut lin = cluster.client_with(kvpb::Consistency::Linearizable);
    assert_eq!(scan_all(&mut lin, "w"), model);
}

/// `kill -USR1` takes a snapshot now, whatever the thresholds say; older snapshots beyond the
/// newest two are moved aside (`*.trash`) and deleted in slices, so none is left behind.
#[test]
fn sigusr1_takes_a_snapshot_now_and_pruned_files_are_deleted() {
    let mut cluster = Cluster::start(
        1,
        &[
            "--snapshot-entries=1000000000",
            "--snapshot-bytes=1000000000000",
        ],
    );
    cluster.wait_leader();
    let dir = cluster.data_dir(1);
    let mut c = cluster.client();
    let mut taken = Vec::new();
    for round in 0..4 {
        for k in 0..20 {
            c.put(format!("k{k}").as_bytes(), format!("v{round}").as_bytes())
                .unwrap();
        }
        let applied = status(&cluster.addr(1)).unwrap().applied_index;
        cluster.signal(1, libc::SIGUSR1);
        let st = wait_for(
            "a snapshot at the applied index",
            Duration::from_secs(10),
            || {
                let st = status(&cluster.addr(1))?;
                (st.snapshot_index >= applied).then_some(st)
            },
        );
        taken.push(st.snapshot_index);
    }
    assert!(taken.windows(2).all(|w| w[0] < w[1]), "{taken:?}");
    // Newest two kept; the older ones gone, trash included (deleted by the child or a tick).
    wait_for("pruned snapshots deleted", Duration::from_secs(10), || {
        let names: Vec<String> = std::fs::read_dir(dir.join("snap"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        (names.len() == 2 && names.iter().all(|n| n.ends_with(".snap"))).then_some(())
    });
    let files = snapshot_files(&dir);
    assert_eq!(
        files.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![taken[3], taken[2]]
    );
    assert!(cluster.node_log(1).contains("snapshot requested (SIGUSR1)"));
    // The data survives a restart from that snapshot.
    cluster.stop(1);
    cluster.start_node(1);
    cluster.wait_leader();
    let mut c = cluster.client();
    let got = c.get(b"k7").unwrap();
    assert!(got.found);
    assert_eq!(&got.value[..], b"v3");
}
