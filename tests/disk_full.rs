//! A full disk and a space quota (issue 16): the cluster raises its replicated NO_SPACE alarm,
//! refuses writes that add data with NO_SPACE while every node stays up, keeps serving reads and
//! deletes, keeps every acknowledged write, and accepts writes again once space is back; the
//! data directories pass `raftkv-log verify` afterwards.
//!
//! - `a_full_disk_raises_no_space_and_the_cluster_recovers_when_space_is_added`: each node's
//!   data directory is its own small tmpfs (needs root; otherwise it prints SKIP and passes).
//! - `the_quota_raises_the_alarm_and_compaction_clears_it`: no special file system: a quota a
//!   few segments large, cleared by deletes, a snapshot and log compaction.

mod common;

use bytes::Bytes;
use common::{scan_all, status, verify_dir, wait_for, Cluster, EXE};
use raftkv::client::ClientError;
use raftkv::pb::kvpb::{self, ErrorCode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Segment size of these clusters: 1 MiB, so a few tens of MiB hold many segments.
const SEGMENT: &str = "1048576";
/// Values of 4 KiB, as in the report.
const VALUE_LEN: usize = 4096;

/// A tmpfs mounted over a directory; unmounted (and the directory removed) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `dir` (created), or says why it cannot.
    fn mount(dir: &Path, mib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Grows (or shrinks) the mounted file system to `mib` MiB, data intact.
    fn resize(&self, mib: u64) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(o.status.success(), "remount: {o:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn value(key: &str) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(VALUE_LEN, b'.');
    v
}

fn is_no_space(e: &ClientError) -> bool {
    matches!(e, ClientError::Server(err) if err.code() == ErrorCode::NoSpace)
}

/// What the writers saw: the writes acknowledged, and the first NO_SPACE refusals.
#[derive(Default)]
struct Written {
    acked: BTreeMap<String, Vec<u8>>,
    refused: usize,
    /// Writes whose outcome is unknown (timeout / uncertain): may or may not be there.
    unknown: Vec<String>,
}

/// `writers` clients putting 4 KiB values until each gets NO_SPACE (or `within` passes: a
/// failure). Returns what was acknowledged.
fn write_until_no_space(cluster: &Cluster, writers: usize, within: Duration) -> Written {
    let out = Arc::new(Mutex::new(Written::default()));
    let deadline = Instant::now() + within;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let mut c = cluster.client();
            let out = out.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    assert!(Instant::now() < deadline, "writer {w}: no NO_SPACE in time");
                    let key = format!("w{w}-{i:06}");
                    match c.put(key.as_bytes(), &value(&key)) {
                        Ok(_) => {
                            out.lock().unwrap().acked.insert(key.clone(), value(&key));
                        }
                        Err(e) if is_no_space(&e) => {
                            out.lock().unwrap().refused += 1;
                            return;
                        }
                        Err(e) => {
                            eprintln!("writer {w}: {key}: {e} (outcome unknown)");
                            out.lock().unwrap().unknown.push(key);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer");
    }
    Arc::try_unwrap(out)
        .ok()
        .expect("writers done")
        .into_inner()
        .unwrap()
}

/// Every node's process is still running (a full disk is not fatal).
fn assert_all_up(cluster: &mut Cluster) {
    for id in 1..=3 {
        let child = cluster.node_mut(id).child.as_mut().expect("node started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "node {id} exited on the full disk"
        );
    }
}

fn alarm_on_all(cluster: &Cluster, raised: bool) -> bool {
    (1..=3).all(|id| status(&cluster.addr(id)).is_some_and(|s| s.no_space_alarm == raised))
}

/// Reads, deletes and refused writes while the alarm is raised.
fn check_degraded(cluster: &Cluster, w: &Written, deleted: &mut Vec<String>) {
    let mut c = cluster.client();
    // Reads: every acknowledged write is there.
    let (k, v) = w
        .acked
        .iter()
        .next()
        .expect("some writes were acknowledged");
    assert_eq!(
        c.get(k.as_bytes()).expect("get").value,
        Bytes::from(v.clone())
    );
    // A new write is refused with NO_SPACE at once, never applied.
    let e = c.put(b"refused", &value("refused")).unwrap_err();
    assert!(is_no_space(&e), "{e}");
    assert!(!c.get(b"refused").expect("get").found);
    // Deletes work.
    for k in w.acked.keys().take(20) {
        assert!(
            c.delete(k.as_bytes())
                .expect("delete under the alarm")
                .deleted
        );
        deleted.push(k.clone());
    }
    // `raftkv status` and `raftkv alarm list` show the alarm.
    let o = Command::new(EXE)
        .args([
            "alarm",
            "list",
            "--endpoints",
            &cluster.endpoints().join(","),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("NO_SPACE alarm raised"),
        "{o:?}"
    );
}

/// After recovery: every acknowledged write not deleted is present, deleted ones are gone.
fn check_all_acked_present(cluster: &Cluster, w: &Written, deleted: &[String]) {
    let mut c = cluster.client();
    let held = scan_all(&mut c, "w");
    let mut missing = Vec::new();
    for (k, v) in &w.acked {
        let want = (!deleted.contains(k)).then(|| String::from_utf8(v.clone()).unwrap());
        if held.get(k) != want.as_ref() {
            missing.push(k.clone());
        }
    }
    let extra: Vec<&String> = held
        .keys()
        .filter(|k| !w.acked.contains_key(*k) && !w.unknown.contains(k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} acknowledged writes, {} held: missing or wrong {missing:?}, never acknowledged {extra:?}",
        w.acked.len(),
        held.len()
    );
}

#[test]
fn a_full_disk_raises_no_space_and_the_cluster_recovers_when_space_is_added() {
    // 20 MiB per node: ~18 segments of 1 MiB, filled in a few seconds by 4 writers.
    let mut mounts = Vec::new();
    let mut skip = None;
    let mut cluster = Cluster::start_with(3, &["--segment-size", SEGMENT], |root| {
        for id in 1..=3 {
            match Tmpfs::mount(&root.join(format!("n{id}")), 20) {
                Ok(m) => mounts.push(m),
                Err(e) => skip = Some(e),
            }
        }
    });
    if let Some(why) = skip {
        eprintln!("SKIP disk_full: cannot mount a tmpfs (needs root): {why}");
        return;
    }
    cluster.wait_leader();
    let w = write_until_no_space(&cluster, 4, Duration::from_secs(120));
    eprintln!(
        "acknowledged {} writes of {VALUE_LEN} B, {} refused with NO_SPACE, {} unknown",
        w.acked.len(),
        w.refused,
        w.unknown.len()
    );
    assert_all_up(&mut cluster);
    wait_for("the alarm on every node", Duration::from_secs(10), || {
        alarm_on_all(&cluster, true).then_some(())
    });
    let mut deleted = Vec::new();
    check_degraded(&cluster, &w, &mut deleted);
    assert_all_up(&mut cluster);

    // Space is added: the alarm clears by itself and writes are accepted again.
    for m in &mounts {
        m.resize(64);
    }
    wait_for("the alarm to clear", Duration::from_secs(20), || {
        alarm_on_all(&cluster, false).then_some(())
    });
    let mut c = cluster.client();
    c.put(b"after", &value("after"))
        .expect("a write once space is back");
    check_all_acked_present(&cluster, &w, &deleted);
    assert_all_up(&mut cluster);
    for id in 1..=3 {
        cluster.stop(id);
        verify_dir(&cluster.data_dir(id));
    }
}

#[test]
fn the_quota_raises_the_alarm_and_compaction_clears_it() {
    // Quota of 6 MiB with 1 MiB segments: the data directory crosses it after a few segments.
    let cluster = Cluster::start(
        3,
        &[
            "--segment-size",
            SEGMENT,
            "--quota-bytes",
            "6291456",
            "--snapshot-trailing",
            "0",
        ],
    );
    cluster.wait_leader();
    let w = write_until_no_space(&cluster, 2, Duration::from_secs(60));
    eprintln!(
        "acknowledged {} writes before the quota, {} unknown",
        w.acked.len(),
        w.unknown.len()
    );
    let s = status(&cluster.addr(cluster.wait_leader())).unwrap();
    assert!(s.no_space_alarm, "{s:?}");
    let mut deleted = Vec::new();
    check_degraded(&cluster, &w, &mut deleted);
    // `raftkv alarm disarm` answers; the leader raises it again while over the quota.
    let o = Command::new(EXE)
        .args([
            "alarm",
            "disarm",
            "--endpoints",
            &cluster.endpoints().join(","),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    wait_for("the alarm raised again", Duration::from_secs(10), || {
        alarm_on_all(&cluster, true).then_some(())
    });
    // Free space: delete everything, snapshot (SIGUSR1), compaction drops the old segments.
    let mut c = cluster.client();
    for k in w.acked.keys().chain(&w.unknown) {
        c.delete(k.as_bytes()).expect("delete");
        deleted.push(k.clone());
    }
    for id in 1..=3 {
        cluster.signal(id, libc::SIGUSR1);
    }
    wait_for("the alarm to clear", Duration::from_secs(30), || {
        alarm_on_all(&cluster, false).then_some(())
    });
    c.put(b"after", &value("after"))
        .expect("a write under the quota again");
    check_all_acked_present(&cluster, &w, &deleted);
    let leader = cluster.wait_leader();
    let s: kvpb::StatusResponse = status(&cluster.addr(leader)).unwrap();
    eprintln!(
        "after compaction: data dir {} B, quota {} B",
        s.data_dir_bytes, s.quota_bytes
    );
    assert!(s.data_dir_bytes <= s.quota_bytes, "{s:?}");
}
