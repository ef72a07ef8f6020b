//! Durable storage: the segmented, mmap'd, CRC-checked log; the hard state file; snapshot files.
//!
//! API CONTRACT: the public items below are what the server programs against. The
//! implementation is the storage issue's work (submodules `log`, `hardstate`, `snapshot`).
//!
//! Layout of a data directory:
//! ```text
//! DIR/
//!   log/       segment files
//!   hardstate  term, vote, commit
//!   snap/      snapshot files (newest two kept)
//! ```

use crate::raft::{Entry, HardState, LogError, LogStore, SnapshotMeta};
use std::fmt;
use std::path::{Path, PathBuf};

/// A storage failure. Always names what and where.
#[derive(Debug)]
pub enum StorageError {
    Io {
        path: PathBuf,
        err: std::io::Error,
    },
    /// Damage that recovery may not repair (not a torn tail).
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// A directory that is not a raftkv data directory.
    Foreign {
        path: PathBuf,
        what: String,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            StorageError::Corrupt { path, offset, what } => {
                write!(f, "{}: corrupt at byte {offset}: {what}", path.display())
            }
            StorageError::Foreign { path, what } => write!(f, "{}: {what}", path.display()),
        }
    }
}

impl std::error::Error for StorageError {}

/// Log tuning.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Size of each preallocated segment file (default 64 MiB).
    pub segment_size: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 64 << 20,
        }
    }
}

/// The segmented append-only log.
pub struct Log {
    _dir: PathBuf,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail. Does not load entries
    /// into memory.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Log, StorageError> {
        let _ = opts;
        Ok(Log {
            _dir: dir.to_path_buf(),
        })
    }
    /// Appends entries. If `entries[0].index <= last_index()`, the suffix from that index is
    /// truncated first. Indexes must be contiguous. Not durable until `sync`.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let _ = entries;
        todo!()
    }
    /// Makes everything appended so far durable, with one flush.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        todo!()
    }
    /// Removes entries with index >= `from`.
    pub fn truncate_suffix(&mut self, from: u64) -> Result<(), StorageError> {
        let _ = from;
        todo!()
    }
    /// Records that a snapshot covers everything up to (index, term) and discards the log
    /// prefix up to it (whole segments only; entries above `index` stay readable).
    pub fn compact(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        let _ = (index, term);
        todo!()
    }
    /// Drops every entry and restarts the log right after an installed snapshot (index, term).
    pub fn reset(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        let _ = (index, term);
        todo!()
    }
    /// Streams entries `[from, to]` in order without loading them all.
    pub fn replay(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(Entry) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let _ = (from, to, f);
        todo!()
    }
}

impl LogStore for Log {
    fn snapshot_index_term(&self) -> (u64, u64) {
        todo!()
    }
    fn first_index(&self) -> u64 {
        todo!()
    }
    fn last_index(&self) -> u64 {
        todo!()
    }
    fn term(&self, index: u64) -> Result<u64, LogError> {
        let _ = index;
        todo!()
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
        let _ = (lo, hi, max_bytes);
        todo!()
    }
}

/// The hard state file, updated atomically and durably.
pub struct HardStateFile {
    _path: PathBuf,
}

impl HardStateFile {
    /// Opens the file in `dir`, returning the stored state (default if none yet).
    pub fn open(dir: &Path) -> Result<(HardStateFile, HardState), StorageError> {
        Ok((
            HardStateFile {
                _path: dir.join("hardstate"),
            },
            HardState::default(),
        ))
    }
    /// Durably replaces the stored state.
    pub fn save(&mut self, hs: &HardState) -> Result<(), StorageError> {
        let _ = hs;
        todo!()
    }
}

/// The snapshot directory: newest two snapshot files.
pub struct SnapshotStore {
    _dir: PathBuf,
}

/// Writes one snapshot as CRC'd chunks to a temp file; `finish` fsyncs and renames it.
pub struct SnapshotWriter {
    _p: (),
}

impl std::io::Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = buf;
        todo!()
    }
    fn flush(&mut self) -> std::io::Result<()> {
        todo!()
    }
}

impl SnapshotWriter {
    /// Seals, syncs and publishes the snapshot; returns its path.
    pub fn finish(self) -> Result<PathBuf, StorageError> {
        todo!()
    }
}

/// Reads a snapshot file's payload as a stream, verifying each chunk's CRC.
pub struct SnapshotReader {
    pub meta: SnapshotMeta,
}

impl std::io::Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let _ = buf;
        todo!()
    }
}

impl SnapshotStore {
    /// Opens (or creates) the snapshot directory.
    pub fn open(dir: &Path) -> Result<SnapshotStore, StorageError> {
        Ok(SnapshotStore {
            _dir: dir.to_path_buf(),
        })
    }
    /// Starts writing a new snapshot covering `meta`.
    pub fn create(&mut self, meta: &SnapshotMeta) -> Result<SnapshotWriter, StorageError> {
        let _ = meta;
        todo!()
    }
    /// The newest valid snapshot (falling back to the previous one with a warning if the newest
    /// is corrupt), or None.
    pub fn latest(&self) -> Result<Option<SnapshotReader>, StorageError> {
        todo!()
    }
    /// Deletes all but the newest two snapshots.
    pub fn prune(&mut self) -> Result<(), StorageError> {
        todo!()
    }
}
