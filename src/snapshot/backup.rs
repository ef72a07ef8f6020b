//! Backup files (`raftkv snapshot save / restore`, `raftkv-log snapshot`): a backup is a
//! snapshot file in the node's own format (`storage::snapshot`), so one reader checks both.
//!
//! - [`verify_file`] reads a file once as a stream and checks everything the server checks
//!   before using a snapshot (every chunk CRC, the trailer's size and whole-payload CRC, the KV
//!   payload record by record and its own checksum, applied index = metadata index), without
//!   building the map: a multi-GiB backup costs one chunk of memory.
//! - [`seed_data_dir`] makes a fresh data directory start from a backup, as one member of a new
//!   cluster: the same checks while copying, with the new cluster's membership in the metadata.

use super::{check_meta, SnapshotError};
use crate::kv::SnapshotSummary;
use crate::raft::{ConfState, SnapshotMeta};
use crate::storage::cluster_id::{self, ClusterId};
use crate::storage::{SnapshotReader, SnapshotStore};
use std::io::{self, Read, Write};
use std::path::Path;

/// What a verified backup holds.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    pub meta: SnapshotMeta,
    pub summary: SnapshotSummary,
    /// KV payload bytes (without the file's framing).
    pub payload_bytes: u64,
    /// The cluster the backup was taken from (its metadata's id; None in files written before
    /// snapshots carried one).
    pub source_cluster: Option<ClusterId>,
}

/// A reader that reports the bytes passing through it to `progress` (cumulative) and copies
/// them to `copy` (if any).
struct Tap<'p, 'c, R> {
    inner: R,
    done: u64,
    progress: &'p mut dyn FnMut(u64),
    copy: Option<&'c mut dyn Write>,
}

impl<R: Read> Read for Tap<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(w) = self.copy.as_mut() {
            w.write_all(&buf[..n])?;
        }
        self.done += n as u64;
        (self.progress)(self.done);
        Ok(n)
    }
}

/// Reads `r` to its end: the KV format is self-delimiting, so anything after it is damage, and
/// the end is where the storage trailer's checks run. Shared with `restore_kv`.
pub(super) fn read_to_trailer(r: &mut dyn Read, path: &Path, at: u64) -> Result<(), SnapshotError> {
    let mut rest = [0u8; 64];
    loop {
        match r.read(&mut rest) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                return Err(SnapshotError::Other(format!(
                    "{}: {n}+ unexpected bytes after the KV state (at payload byte {at})",
                    path.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(SnapshotError::Other(format!(
                    "{}: verifying the snapshot file: {e}",
                    path.display()
                )))
            }
        }
    }
}

/// Checks the whole payload of `r` (opened on `path`), reporting payload bytes read so far to
/// `progress` and copying them to `copy`.
fn check_payload(
    r: &mut SnapshotReader,
    path: &Path,
    progress: &mut dyn FnMut(u64),
    copy: Option<&mut dyn Write>,
) -> Result<BackupInfo, SnapshotError> {
    let meta = r.meta.clone();
    check_meta(&meta).map_err(|e| SnapshotError::Other(format!("{}: {e}", path.display())))?;
    let mut tap = Tap {
        inner: r,
        done: 0,
        progress,
        copy,
    };
    let summary = crate::kv::snapshot_summary(&mut tap)
        .map_err(|e| SnapshotError::Other(format!("{}: the KV state: {e}", path.display())))?;
    let at = tap.done;
    read_to_trailer(&mut tap, path, at)?;
    if summary.applied != meta.index {
        return Err(SnapshotError::Other(format!(
            "{}: KV state is at index {} but the snapshot claims index {}",
            path.display(),
            summary.applied,
            meta.index
        )));
    }
    Ok(BackupInfo {
        source_cluster: ClusterId::from_meta(&meta.cluster_id),
        meta,
        summary,
        payload_bytes: tap.done,
    })
}

/// Verifies a backup (or any snapshot file) as a stream; `progress` gets the payload bytes
/// read so far. Damage is an error naming the file and what is wrong.
pub fn verify_file(
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<BackupInfo, SnapshotError> {
    let mut r = SnapshotReader::open(path)?;
    check_payload(&mut r, path, progress, None)
}

/// True if `dir` is missing or an empty directory.
fn is_fresh(dir: &Path) -> Result<bool, String> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Seeds the fresh data directory `dir` of member `node_id` of a NEW cluster whose members are
/// `voters` from the backup `file`, so that `raftkv serve` on it starts with the backup's
/// state: the snapshot goes to `dir/snap` with `voters` as its membership (the metadata's
/// membership overrides `--peers` at startup, so the old cluster's ids must not survive).
/// The backup is checked in full while it is copied (as [`verify_file`]); a damaged or
/// truncated one is refused and nothing is left behind. Refuses a non-empty `dir`.
///
/// The one place a restored data directory is made: the new cluster's identity `cluster_id`
/// is written too (after the snapshot, before this returns; every member of the new cluster
/// gets the same one), so a restored copy can never be mistaken for the cluster it was taken
/// from: their nodes refuse each other's handshakes (`wrong_cluster`).
pub fn seed_data_dir(
    file: &Path,
    dir: &Path,
    node_id: u64,
    conf: &ConfState,
    cluster_id: ClusterId,
    progress: &mut dyn FnMut(u64),
) -> Result<BackupInfo, String> {
    let voters = &conf.voters;
    if !voters.contains(&node_id) {
        return Err(format!(
            "node id {node_id} is not among the members {voters:?}"
        ));
    }
    if !is_fresh(dir)? {
        return Err(format!(
            "{} is not empty: restore seeds a fresh data directory only (move it aside first)",
            dir.display()
        ));
    }
    let created = !dir.exists();
    let res = copy_into(file, dir, conf, cluster_id, progress).and_then(|info| {
        cluster_id::write(dir, cluster_id).map_err(|e| e.to_string())?;
        Ok(info)
    });
    if res.is_err() && created {
        let _ = std::fs::remove_dir_all(dir);
    }
    res
}

/// The copy of [`seed_data_dir`]: payload from `file` into a new snapshot in `dir/snap`, its
/// metadata naming the new members and the new cluster. The returned info keeps the backup's
/// own cluster id in `source_cluster` (shown by `restore`; never reused).
fn copy_into(
    file: &Path,
    dir: &Path,
    conf: &ConfState,
    cluster_id: ClusterId,
    progress: &mut dyn FnMut(u64),
) -> Result<BackupInfo, String> {
    let mut r = SnapshotReader::open(file).map_err(|e| e.to_string())?;
    crate::storage::fsutil::create_dir_durable(dir).map_err(|e| e.to_string())?;
    let mut store = SnapshotStore::open(&dir.join("snap")).map_err(|e| e.to_string())?;
    let mut meta = r.meta.clone();
    meta.conf = Some(conf.clone());
    meta.cluster_id = cluster_id.to_meta();
    let mut w = store.create(&meta).map_err(|e| e.to_string())?;
    // Dropped on any error below: the temp file goes with it.
    let mut info =
        check_payload(&mut r, file, progress, Some(&mut w)).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    info.meta = meta;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_id() -> ClusterId {
        ClusterId::random().unwrap()
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState {
            voters: ids.to_vec(),
            ..ConfState::default()
        }
    }
    use crate::kv::{encode_command, KvStore};
    use crate::pb::kvpb;

    /// A snapshot file of `n` keys at index `n` with members 1, 2, 3, in `dir/snap`.
    fn make(dir: &Path, n: u64) -> (std::path::PathBuf, KvStore) {
        let mut kv = KvStore::new();
        for i in 1..=n {
            let put = kvpb::command::Op::Put(kvpb::Put {
                key: format!("k{i}").into_bytes().into(),
                value: vec![b'v'; 100].into(),
                ..Default::default()
            });
            let cmd = kvpb::Command {
                op: Some(put),
                ..Default::default()
            };
            kv.apply(i, &encode_command(&cmd));
        }
        let mut store = SnapshotStore::open(&dir.join("snap")).unwrap();
        let meta = SnapshotMeta {
            index: n,
            term: 2,
            conf: Some(ConfState {
                voters: vec![1, 2, 3],
                learners: vec![],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut w = store.create(&meta).unwrap();
        kv.write_snapshot(&mut w).unwrap();
        (w.finish().unwrap(), kv)
    }

    #[test]
    fn seeding_keeps_the_state_and_takes_the_new_membership() {
        let t = tempfile::tempdir().unwrap();
        let (file, kv) = make(t.path(), 2000);
        let seeded = t.path().join("new");
        let mut last = 0;
        let id = new_id();
        let info = seed_data_dir(&file, &seeded, 8, &voters(&[7, 8, 9]), id, &mut |n| {
            last = n
        })
        .unwrap();
        assert_eq!(
            cluster_id::read(&seeded).unwrap(),
            Some(id),
            "the restored member has the new cluster's id"
        );
        assert_eq!((info.summary.keys, info.meta.index), (2000, 2000));
        assert_eq!(
            last, info.payload_bytes,
            "progress reaches the payload size"
        );
        let files = crate::storage::snapshot::list(&seeded.join("snap")).unwrap();
        assert_eq!(files.len(), 1);
        let (meta, restored) = crate::snapshot::restore_kv(&files[0].2).unwrap();
        assert_eq!(meta.conf.unwrap().voters, vec![7, 8, 9]);
        assert_eq!((meta.index, meta.term), (2000, 2));
        assert_eq!(restored.digest(), kv.digest());
        // `make` writes metadata without a cluster id, as files from before it existed: they
        // still restore, and the seeded snapshot names the new cluster.
        assert_eq!(info.source_cluster, None, "an older file names no cluster");
        assert_eq!(ClusterId::from_meta(&meta.cluster_id), Some(id));
        // A seeded directory is not fresh any more.
        let again = seed_data_dir(
            &file,
            &seeded,
            8,
            &voters(&[7, 8, 9]),
            new_id(),
            &mut |_| {},
        );
        assert!(again.unwrap_err().contains("not empty"));
    }

    #[test]
    fn every_truncation_is_refused_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (file, _) = make(t.path(), 300);
        let bytes = std::fs::read(&file).unwrap();
        // Every cut through the header, the first chunk, the end marker and the trailer.
        let len = bytes.len();
        let cuts = (0..64)
            .chain(len - 64..len)
            .chain((64..len - 64).step_by(997));
        for cut in cuts {
            let f = t.path().join("cut.snap");
            std::fs::write(&f, &bytes[..cut]).unwrap();
            assert!(
                verify_file(&f, &mut |_| {}).is_err(),
                "cut at {cut} of {len} accepted"
            );
            let dir = t.path().join("d");
            let r = seed_data_dir(&f, &dir, 1, &voters(&[1]), new_id(), &mut |_| {});
            assert!(r.is_err(), "cut at {cut} of {len} seeded");
            assert!(!dir.exists(), "cut at {cut}: directory left behind");
        }
        assert!(verify_file(&file, &mut |_| {}).is_ok());
    }
}
