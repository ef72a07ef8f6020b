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

pub mod hardstate;
pub mod inspect;
pub mod log;
pub mod record;
pub mod segment;
pub mod snapshot;

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

pub use hardstate::HardStateFile;
pub use log::Log;
pub use snapshot::{SnapshotReader, SnapshotStore, SnapshotWriter};
