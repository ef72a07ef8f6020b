//! Durable storage: the segmented, mmap'd, CRC-checked log; the hard state file; snapshot files.
//!
//! API CONTRACT: the public items below are what the server programs against. The
//! implementation is the storage issue's work (submodules `log`, `hardstate`, `snapshot`).
//!
//! Layout of a data directory (byte layouts in `docs/storage.md` and each submodule's docs):
//! ```text
//! DIR/
//!   LOCK       flock'd by the server, covering everything below             [lock.rs]
//!   log/       segment files `<first index:020>.seg`                 [log.rs, segment.rs]
//!              + `meta` (snapshot boundary)                                  [meta.rs]
//!              + `*.seg.tmp`: a segment being allocated (renamed when ready) [segment.rs]
//!              + `*.seg.trash`: compacted segments being deleted a slice per tick [trash.rs]
//!   hardstate  term, vote, commit (two CRC'd slots)                         [hardstate.rs]
//!   cluster_id the cluster this directory belongs to (CRC'd, atomic)       [cluster_id.rs]
//!   snap/      snapshot files `snap-<index>-<term>.snap` (newest two kept)   [snapshot.rs]
//! ```
//!
//! Modules, leaves first (each imports only those above it, no cycles): `fsutil` (typed I/O
//! errors, directory fsync, maps) and `record` (byte encodings); `meta`, `lock`, `trash`,
//! `hardstate`, `snapshot`; `segment` (one segment file, its allocation and its scanner);
//! `logscan` (the one recovery scan of a log directory, classifying what it finds); `log` (the
//! `Log`, which opens through `logscan` and repairs) and `inspect` (read-only, for `raftkv-log`
//! and the startup check `snapshot::recover`, through the same `logscan`).
//!
//! How the server uses it:
//! - startup: `DirLock::acquire(DIR)` first, then `HardStateFile::open(DIR)`,
//!   `SnapshotStore::open(DIR/snap)?.latest()`, `Log::open_in(DIR/log, .., &lock)` (opened
//!   under the data directory's lock, taking none of its own); if the snapshot is newer than
//!   the log's snapshot boundary, call `log.compact(meta.index, meta.term)` (which resets the
//!   log if it does not contain that entry);
//!   then `log.replay(applied + 1, commit, ..)` to rebuild the state machine;
//! - each Ready: `hardstate.save`, `log.append`, `log.sync` (one flush for the whole batch);
//! - taking a snapshot: `SnapshotStore::create` + write + `finish`, *then* `log.compact`;
//! - receiving one: `create(meta)`, write chunks, `finish` (or `abort`), then `log.reset`/`compact`.

pub mod cluster_id;
pub mod fsutil;
pub mod hardstate;
pub mod inspect;
pub mod lock;
pub mod log;
pub mod logscan;
pub mod meta;
pub mod record;
pub mod segment;
pub mod snapshot;
pub mod trash;

use std::fmt;
use std::path::PathBuf;

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

impl StorageError {
    /// True for a full disk or an exhausted quota (ENOSPC, EDQUOT): the node raises the
    /// NO_SPACE alarm and waits for space instead of stopping.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::Io { err, .. }
            if matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

/// Default size of a log segment file: 64 MiB. Large enough that sealing and preallocating a
/// segment (one fsync and one `posix_fallocate`) is rare even at high write rates and that a
/// default-sized frame (16 MiB) fits with room to spare; small enough that compaction frees
/// space in useful steps and a fresh node's first allocation is modest.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// Log tuning.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Size of each preallocated segment file ([`DEFAULT_SEGMENT_SIZE`]).
    pub segment_size: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

pub use hardstate::HardStateFile;
pub use lock::DirLock;
pub use log::Log;
pub use snapshot::{SealedSnapshot, SnapshotReader, SnapshotStore, SnapshotWriter};
