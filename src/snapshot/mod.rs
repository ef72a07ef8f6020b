//! Snapshots that never stall the node: creation in a forked child, the policy deciding when to
//! snapshot and how far to compact the log, InstallSnapshot streaming as socket-free state
//! machines, and recovery from the newest valid snapshot file.
//!
//! Design notes and the exact call order for the server are in `docs/snapshots.md`. In short:
//! - [`BackgroundSnapshot`] writes `KvStore` to a snapshot file without blocking the reactor
//!   (fork + copy-on-write; a synchronous mode for tests and the simulator).
//! - [`WritePacing`] caps the forked child's disk bandwidth so the logs' fsyncs on the same disk
//!   do not queue behind the snapshot.
//! - [`SnapshotPolicy`] decides when to start one and the index to compact the log to.
//! - [`SnapshotSender`] (leader, one per peer) and [`SnapshotReceiver`] (follower) turn a snapshot
//!   file into `InstallSnapshot` messages and back, with a window of unacknowledged chunks,
//!   retransmission, and a CRC over the whole payload.
//! - [`load_latest`] restores the newest valid snapshot at startup, falling back to the previous
//!   one when the newest is damaged.
//!
//! The bytes streamed between nodes are the snapshot *payload* (what `KvStore::write_snapshot`
//! produced), read through the storage layer's CRC-checking [`SnapshotReader`] on the leader and
//! written through [`crate::storage::SnapshotWriter`] on the follower, so both ends keep the storage
//! file format and its checks.

mod background;
pub mod backup;
mod pacing;
mod policy;
pub mod recover;
mod recv;
mod send;

pub use background::{BackgroundSnapshot, SnapshotDone, SnapshotMode};
pub use pacing::{RateLimiter, WritePacing, DEFAULT_WRITE_RATE};
pub use policy::{
    LogStats, SnapshotPolicy, DEFAULT_SNAPSHOT_BYTES, DEFAULT_SNAPSHOT_ENTRIES,
    DEFAULT_TRAILING_ENTRIES,
};
pub use recv::{
    InstallError, InstalledSnapshot, PartialSnapshot, Received, ReceivedSnapshot, SinkError,
    SnapshotReceiver, SnapshotSink,
};
pub use send::{SendStatus, SenderConfig, SnapshotSender, SnapshotSource};

use crate::kv::KvStore;
use crate::raft::SnapshotMeta;
use crate::storage::{SnapshotReader, SnapshotStore, StorageError};
use std::fmt;
use std::path::{Path, PathBuf};

/// A snapshot failure. Always says what failed and where.
#[derive(Debug)]
pub enum SnapshotError {
    /// The storage layer failed (I/O or a damaged file).
    Storage(StorageError),
    /// Anything else, described.
    Other(String),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Storage(e) => write!(f, "snapshot storage: {e}"),
            SnapshotError::Other(s) => write!(f, "snapshot: {s}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<StorageError> for SnapshotError {
    fn from(e: StorageError) -> Self {
        SnapshotError::Storage(e)
    }
}

/// Bounds every snapshot's metadata must satisfy, wherever it comes from (a file, a peer):
/// index and term within the storage layer's limits (so `index + 1` and `term + 1` can never
/// overflow anywhere), and a term for any index past 0.
pub fn check_meta(meta: &SnapshotMeta) -> Result<(), String> {
    use crate::storage::record::{MAX_INDEX, MAX_TERM};
    if meta.index > MAX_INDEX || meta.term > MAX_TERM {
        return Err(format!(
            "implausible snapshot index {} / term {} (limits {MAX_INDEX} / {MAX_TERM})",
            meta.index, meta.term
        ));
    }
    if meta.index > 0 && meta.term == 0 {
        return Err(format!("snapshot index {} with term 0", meta.index));
    }
    Ok(())
}

/// The newest snapshot in `files` (newest first) that restores cleanly, and why each newer
/// one could not be used (file and problem).
pub fn newest_usable(files: Vec<(u64, u64, PathBuf)>) -> (Option<LoadedSnapshot>, Vec<String>) {
    let mut failures = Vec::new();
    for (_, _, path) in files {
        match restore_kv(&path) {
            Ok((meta, kv)) => return (Some(LoadedSnapshot { meta, path, kv }), failures),
            Err(e) => failures.push(e.to_string()),
        }
    }
    (None, failures)
}

/// A snapshot restored at startup.
pub struct LoadedSnapshot {
    pub meta: SnapshotMeta,
    /// The file it came from (what a leader streams to peers that need it).
    pub path: PathBuf,
    pub kv: KvStore,
}

/// Reads the snapshot file at `path` into a `KvStore` as a stream (never the whole file in one
/// buffer), checking every storage chunk CRC, the trailer (size and whole-payload CRC), the KV
/// format's own checksum, and that the KV state's applied index is the snapshot index.
pub fn restore_kv(path: &Path) -> Result<(SnapshotMeta, KvStore), SnapshotError> {
    let mut r = SnapshotReader::open(path)?;
    check_meta(&r.meta).map_err(|e| SnapshotError::Other(format!("{}: {e}", path.display())))?;
    let kv = KvStore::restore_snapshot(&mut r).map_err(|e| {
        SnapshotError::Other(format!("{}: restoring the KV state: {e}", path.display()))
    })?;
    // The KV format is self-delimiting: read on to the storage trailer so its checks run too.
    let at = r.bytes_read();
    backup::read_to_trailer(&mut r, path, at)?;
    if kv.applied() != r.meta.index {
        return Err(SnapshotError::Other(format!(
            "{}: KV state is at index {} but the snapshot claims index {}",
            path.display(),
            kv.applied(),
            r.meta.index
        )));
    }
    Ok((r.meta.clone(), kv))
}

/// Recovery: the newest snapshot that restores cleanly, as `(meta, path, KvStore)`.
///
/// Snapshot files are tried newest first; a damaged one is skipped with a warning and the
/// previous one is used. `Ok(None)` means there are no snapshot files at all (a fresh node). If
/// files exist but none restores, the error lists every file and why, so the operator sees that
/// state was lost rather than the node silently starting empty.
pub fn load_latest(store: &SnapshotStore) -> Result<Option<LoadedSnapshot>, SnapshotError> {
    let (loaded, failures) = newest_usable(store.list()?);
    for f in &failures {
        log::warn!("snapshot unusable: {f}");
    }
    match loaded {
        Some(l) => {
            if !failures.is_empty() {
                log::warn!("{}", fallback_warning(&l, &failures));
            }
            Ok(Some(l))
        }
        None if failures.is_empty() => Ok(None),
        None => Err(no_usable_snapshot(store.dir(), &failures)),
    }
}

/// The warning for falling back to `l` because the newer snapshot files are unusable.
fn fallback_warning(l: &LoadedSnapshot, failures: &[String]) -> String {
    format!(
        "using older snapshot {} at index {}; newer ones are unusable: {}",
        l.path.display(),
        l.meta.index,
        failures.join("; ")
    )
}

/// The error for snapshot files present but none usable.
fn no_usable_snapshot(dir: &Path, failures: &[String]) -> SnapshotError {
    SnapshotError::Other(format!(
        "no usable snapshot in {} ({} file(s) tried): {}",
        dir.display(),
        failures.len(),
        failures.join("; ")
    ))
}

#[cfg(test)]
mod tests;
