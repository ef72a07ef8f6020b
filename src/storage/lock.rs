//! Exclusive ownership of a directory: `flock(LOCK_EX | LOCK_NB)` on a `LOCK` file in it.
//!
//! Two processes appending to the same memory-mapped segments would silently destroy each
//! other's data, so every directory a process writes is covered by exactly one lock, taken
//! once, before anything in it is read: the server locks its data directory (`DIR/LOCK`) and
//! opens the log in `DIR/log` under that lock ([`crate::storage::Log::open_in`], which keeps a
//! [`DirLock::share`] of it); a standalone log (`Log::open`: tests, benchmarks) locks its own
//! directory. A second opener (another process, or the same process opening the directory
//! twice) gets an error naming the directory and the pid recorded by the holder.
//!
//! `flock` locks belong to the open file description: the lock is released when the last
//! descriptor for it is closed — when the holder exits or crashes, never left stale. A forked
//! child (background snapshots) shares the description; it never unlocks explicitly, it only
//! closes, so it cannot drop the parent's lock. The descriptor is close-on-exec (std's default),
//! so exec'd processes do not inherit it.

use super::fsutil::io_err;
use super::StorageError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the lock file inside the locked directory.
pub const LOCK_FILE: &str = "LOCK";

/// A held directory lock; released when the last handle to it ([`DirLock::share`]) is
/// dropped (by closing the file).
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    path: PathBuf,
    /// One descriptor for all shares: the flock belongs to its open file description.
    _file: Arc<File>,
}

impl DirLock {
    /// Locks `dir` (which must exist) or fails at once if another owner holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // SAFETY: plain syscall on an owned, open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if !holder.is_empty() && holder.bytes().all(|b| b.is_ascii_digit()) {
                    format!("process {holder}")
                } else {
                    "another process".to_string()
                };
                return Err(StorageError::Io {
                    path: dir.to_path_buf(),
                    err: std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        format!(
                            "directory is locked by {by} ({} is held): is another raftkv server \
                             using this data directory? (A background snapshot child of a server \
                             that just died holds it until its snapshot is written.)",
                            path.display()
                        ),
                    ),
                });
            }
            return Err(io_err(&path, err));
        }
        // Record the holder for the error message above. Best effort: the lock is what counts.
        let pid = std::process::id().to_string();
        let _ = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        Ok(DirLock {
            dir: dir.to_path_buf(),
            path,
            _file: Arc::new(file),
        })
    }

    /// Another handle to the same held lock: the directory stays locked until every handle is
    /// dropped. How a `Log` opened under its owner's lock keeps it for as long as it lives.
    pub fn share(&self) -> DirLock {
        DirLock {
            dir: self.dir.clone(),
            path: self.path.clone(),
            _file: Arc::clone(&self._file),
        }
    }

    /// True when `path` is the locked directory or inside it (compared as given: callers pass
    /// paths built from the locked directory's path).
    pub fn covers(&self, path: &Path) -> bool {
        path.starts_with(&self.dir)
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
