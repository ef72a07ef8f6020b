//! Backup and restore through the real binaries: `raftkv snapshot save` from a loaded 3-node
//! cluster while writes run, `raftkv snapshot restore` into the members of a fresh 3-node
//! cluster, and the refusal of damaged and truncated backups.

mod common;

use bytes::Bytes;
use common::{wait_for, Cluster, EXE};
use raftkv::client::Client;
use raftkv::pb::kvpb;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys preloaded before the save (a few snapshot chunks' worth with 512-byte values).
const PRELOAD: usize = 3000;
const VALUE: usize = 512;

fn run(exe: &str, args: &[&str]) -> Output {
    let out = Command::new(exe).args(args).output().expect("run");
    eprintln!(
        "$ {exe} {}\n-> {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn save(cluster: &Cluster, file: &Path) -> String {
    let eps = cluster.endpoints().join(",");
    let f = file.to_str().unwrap();
    let out = run(EXE, &["snapshot", "save", f, "--endpoints", &eps]);
    assert!(out.status.success(), "save failed");
    // stderr is not a terminal here: no progress bar, nothing else either.
    assert!(out.stderr.is_empty(), "save wrote to stderr");
    String::from_utf8(out.stdout).unwrap()
}

fn restore(file: &Path, dir: &Path, id: u64, peers: &str) -> Output {
    restore_into(file, dir, id, peers, None)
}

/// `raftkv snapshot restore`, with the new cluster's id if a first restore made one.
fn restore_into(file: &Path, dir: &Path, id: u64, peers: &str, cluster: Option<&str>) -> Output {
    let id = id.to_string();
    let mut args = vec![
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--node-id",
        &id,
        "--peers",
        peers,
    ];
    if let Some(c) = cluster {
        args.extend(["--cluster-id", c]);
    }
    run(EXE, &args)
}

/// The cluster id in the metadata of the one snapshot a restore seeded into `dir`.
fn seeded_snapshot_cluster(dir: &Path) -> String {
    let files: Vec<_> = std::fs::read_dir(dir.join("snap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one seeded snapshot file: {files:?}");
    let info = raftkv::snapshot::backup::verify_file(&files[0], &mut |_| {}).unwrap();
    info.source_cluster.expect("a cluster id").to_string()
}

/// The new cluster id a first restore printed.
fn printed_cluster_id(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("--cluster-id ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no new cluster id in the restore's output: {text}"))
}

/// Every key with its version, paging through a scan.
fn all_versions(c: &mut Client) -> BTreeMap<Bytes, u64> {
    let mut out = BTreeMap::new();
    let mut req = kvpb::Scan::default();
    loop {
        let r = c.scan(req.clone()).expect("scan");
        out.extend(r.kvs.into_iter().map(|kv| (kv.key, kv.version)));
        if r.next_key.is_empty() {
            return out;
        }
        req.start = r.next_key;
    }
}

/// Writers putting distinct keys `live/<w>/<i>` until stopped; every acknowledged write is
/// recorded with its version and the instant it was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Bytes, u64, Instant)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(cluster: &Cluster, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|w| {
                let (stop, acked, mut c) = (stop.clone(), acked.clone(), cluster.client());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = Bytes::from(format!("live/{w}/{i:08}"));
                        if let Ok(r) = c.put(&key, b"live") {
                            acked.lock().unwrap().push((key, r.version, Instant::now()));
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            threads,
        }
    }

    fn stop(self) -> Vec<(Bytes, u64, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Preloads `PRELOAD` keys from 8 threads; returns key -> version as acknowledged.
fn preload(cluster: &Cluster) -> BTreeMap<Bytes, u64> {
    let per = PRELOAD / 8;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let mut c = cluster.client();
            std::thread::spawn(move || {
                let value = vec![b'v'; VALUE];
                (0..per)
                    .map(|i| {
                        let key = Bytes::from(format!("pre/{t}/{i:06}"));
                        let v = c.put(&key, &value).expect("preload put").version;
                        (key, v)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn save_under_load_restore_into_a_new_cluster_keeps_every_acknowledged_write() {
    let src = Cluster::start(3, &[]);
    src.wait_leader();
    let mut expect = preload(&src);
    let writers = Writers::start(&src, 4);
    // Let the writers get going, so the save runs while writes are being acknowledged.
    wait_for("live writes", Duration::from_secs(10), || {
        (writers.acked.lock().unwrap().len() >= 50).then_some(())
    });
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.snap");
    let save_started = Instant::now();
    let saved = save(&src, &file);
    let live = writers.stop();
    let before: Vec<_> = live
        .iter()
        .filter(|(_, _, at)| *at < save_started)
        .collect();
    println!(
        "{} preloaded, {} live writes acknowledged ({} before the save started); {saved}",
        expect.len(),
        live.len(),
        before.len()
    );
    expect.extend(before.iter().map(|(k, v, _)| (k.clone(), *v)));
    assert!(!file.with_extension("snap.tmp").exists(), "temp file left");

    // The inspector agrees with the save about the file.
    let inspect = run(
        env!("CARGO_BIN_EXE_raftkv-log"),
        &["snapshot", file.to_str().unwrap()],
    );
    assert!(inspect.status.success());
    let inspected = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspected.contains("keys:"));
    // The backup names the cluster it was taken from (the snapshot metadata's id).
    let old_id = src
        .client()
        .leader_status()
        .expect("source status")
        .cluster_id;
    assert!(
        inspected.contains(&format!("cluster:  {old_id}")),
        "the backup does not name the source cluster {old_id}: {inspected}"
    );
    assert!(
        saved.contains(&format!("; cluster {old_id};")),
        "save did not print the source cluster {old_id}: {saved}"
    );

    let mut new_id = String::new();
    let dst = Cluster::start_seeded(3, &[], |root, peers| {
        // The first restore makes the new cluster's id; the others are given it.
        let out = restore(&file, &root.join("n1"), 1, peers);
        assert!(out.status.success(), "restore of node 1 failed");
        new_id = printed_cluster_id(&out);
        // The seeded snapshot names the new cluster, not the backup's.
        let seeded = seeded_snapshot_cluster(&root.join("n1"));
        assert_eq!(seeded, new_id, "the restored snapshot's cluster id");
        for id in 2..=3 {
            let out = restore_into(
                &file,
                &root.join(format!("n{id}")),
                id,
                peers,
                Some(&new_id),
            );
            assert!(out.status.success(), "restore of node {id} failed");
        }
    });
    dst.wait_leader();
    // One new identity on every restored member, not the original cluster's.
    let mut c = dst.client();
    for n in &dst.nodes {
        let s = c.status(&n.client_addr).expect("restored node status");
        assert_eq!(
            s.cluster_id, new_id,
            "node {} of the restored cluster",
            n.id
        );
    }
    assert_ne!(
        new_id, old_id,
        "the restored cluster kept the original's id"
    );
    let mut c = dst.client();
    let got = all_versions(&mut c);
    let missing: Vec<_> = expect
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(5)
        .map(|(k, v)| (k.clone(), *v, got.get(k).copied()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged keys missing or at another version in the restored cluster \
         (first: (key, want, got) {missing:?}); restored cluster has {} keys",
        expect
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .count(),
        expect.len(),
        got.len()
    );
    // The restored cluster is a working cluster: it takes writes above the backup's index.
    let index: u64 = saved
        .split("snapshot index ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("index in the save's output");
    let v = c
        .put(b"after-restore", b"x")
        .expect("put after restore")
        .version;
    assert!(
        v > index,
        "new write at version {v}, backup at index {index}"
    );
}

#[test]
fn a_second_save_without_writes_reuses_the_snapshot() {
    let src = Cluster::start(3, &[]);
    src.wait_leader();
    let mut c = src.client();
    for i in 0..100 {
        c.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let first = save(&src, &work.path().join("a.snap"));
    let second = save(&src, &work.path().join("b.snap"));
    let index = |s: &str| {
        s.split(", ")
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        index(&first),
        index(&second),
        "no write in between: same snapshot"
    );
    let taken: usize = (1..=3)
        .map(|id| {
            src.node_log(id)
                .matches("snapshot requested by a backup")
                .count()
        })
        .sum();
    assert_eq!(taken, 1, "one snapshot for two saves");
}

#[test]
fn restore_refuses_damaged_truncated_files_and_non_empty_dirs() {
    let src = Cluster::start(1, &[]);
    src.wait_leader();
    let mut c = src.client();
    for i in 0..500 {
        c.put(format!("k{i:04}").as_bytes(), &[b'x'; 200]).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.snap");
    save(&src, &good);
    let bytes = std::fs::read(&good).unwrap();
    let peers = "1=127.0.0.1:1/127.0.0.1:2";

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let truncated = &bytes[..bytes.len() - 100];
    for (name, content, want) in [
        ("flipped", &flipped[..], "crc"),
        ("truncated", truncated, "truncated"),
    ] {
        let f = work.path().join(format!("{name}.snap"));
        std::fs::write(&f, content).unwrap();
        let dir = work.path().join(format!("dir-{name}"));
        let out = restore(&f, &dir, 1, peers);
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("restore refused") && err.contains(want),
            "{name}: error should say {want:?}: {err}"
        );
        assert!(!dir.exists(), "{name}: nothing may be left behind");
    }

    // A directory that holds anything is never overwritten.
    let used = work.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("hardstate"), b"x").unwrap();
    let out = restore(&good, &used, 1, peers);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    // And a node id outside the new membership is refused.
    let out = restore(&good, &work.path().join("other"), 7, peers);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not among the members"));
}

#[test]
fn save_starts_over_at_the_new_leader_when_the_serving_node_hangs_mid_download() {
    let mut src = Cluster::start(3, &[]);
    let leader = src.wait_leader();
    let expect = preload(&src);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("failover.snap");
    let tmp = work.path().join("failover.snap.tmp");
    // A 256-byte frame limit makes the client ask for ~190-byte chunks: the ~1.6 MB file takes
    // ~8,500 round trips (a second or more), so the download is still running when FILE.tmp
    // appears (polled every millisecond) and the serving node is stopped. The serving node is
    // the leader: the save's point and its snapshot are taken there.
    let eps = src.endpoints().join(",");
    let mut child = Command::new(EXE)
        .args([
            "snapshot",
            "save",
            file.to_str().unwrap(),
            "--endpoints",
            &eps,
        ])
        .args([
            "--max-frame",
            "256",
            "--timeout-ms",
            "3000",
            "--attempt-timeout-ms",
            "300",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tmp.exists() {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    src.signal(leader, libc::SIGSTOP);
    // Bounded by the client's 3 s deadline for the hung node, an election and a new snapshot.
    wait_for("the save to finish", Duration::from_secs(60), || {
        child.try_wait().unwrap()
    });
    let out = child.wait_with_output().unwrap();
    src.signal(leader, libc::SIGCONT);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "save failed: {err}");
    assert!(err.contains("starting again"), "no second attempt: {err}");
    let from: u64 = String::from_utf8_lossy(&out.stdout)
        .split("from node ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .expect("node in the save's output");
    assert_ne!(from, leader, "served by the stopped node");
    src.kill(leader);

    // The file is complete and holds every preloaded key.
    let dst = Cluster::start_seeded(1, &[], |root, peers| {
        assert!(restore(&file, &root.join("n1"), 1, peers).status.success());
    });
    dst.wait_leader();
    let got = all_versions(&mut dst.client());
    let missing = expect
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .count();
    assert_eq!(missing, 0, "of {} preloaded keys", expect.len());
}
