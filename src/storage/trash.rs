//! Deferred, incremental deletion of large files (compacted log segments).
//!
//! Deleting a file is not free: ext4 frees its extents (and with `-o discard` trims them)
//! inside `unlink`, at roughly 0.6-1.6 ms per MiB on the 2-core VM we measure on. Compacting the
//! log after a snapshot of a busy node drops several 64 MiB segments at once; done inline, that
//! stalled the single event loop for 0.8-0.9 s (docs/snapshots.md §6).
//!
//! So a file to delete is first *moved out of the way*: renamed to `<name>.trash` in the same
//! directory (cheap; the readers of the directory ignore that suffix) and kept open. Then
//! [`Trash::step`], called once per Raft tick, shrinks the oldest queued file with `ftruncate`
//! one [`SLICE`] at a time until its time budget is spent, and unlinks it once it is empty. A
//! crash leaves `*.trash` files behind; [`Trash::adopt_leftovers`] queues them again at startup.
//! Nothing here needs to be durable: the files are garbage either way.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Suffix of a file waiting to be deleted.
pub const SUFFIX: &str = ".trash";

/// Bytes freed per `ftruncate` call.
pub const SLICE: u64 = 1 << 20;

struct Doomed {
    path: PathBuf,
    file: File,
    len: u64,
}

/// Files waiting to be deleted, oldest first.
#[derive(Default)]
pub struct Trash {
    queue: VecDeque<Doomed>,
    bytes: u64,
}

impl Trash {
    pub fn new() -> Trash {
        Trash::default()
    }

    /// Renames `path` to `<path>.trash` and queues it. After this returns, `path` no longer
    /// exists under its old name. Durability of the rename is the caller's business (sync the
    /// directory if a crash must not bring the old name back).
    pub fn add(&mut self, path: &Path) -> io::Result<()> {
        let doomed = move_aside(path)?;
        self.queue_file(doomed)
    }

    /// Queues a file that already carries the suffix (once: a file already queued is skipped).
    fn queue_file(&mut self, path: PathBuf) -> io::Result<()> {
        if self.queue.iter().any(|d| d.path == path) {
            return Ok(());
        }
        let file = OpenOptions::new().write(true).open(&path)?;
        let len = file.metadata()?.len();
        self.bytes += len;
        self.queue.push_back(Doomed { path, file, len });
        Ok(())
    }

    /// Queues every `*.trash` file in `dir` not queued yet (moved aside by another process, or
    /// left by a crash while deleting). Returns how many were found.
    pub fn adopt_leftovers(&mut self, dir: &Path) -> io::Result<usize> {
        let found = files_in(dir)?;
        let n = found.len();
        for p in found {
            match self.queue_file(p) {
                // Deleted meanwhile by whoever moved it aside.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        Ok(n)
    }

    /// Frees space for about `budget` of wall time (at least one slice when anything is
    /// queued): truncates the oldest file slice by slice, unlinking it once empty. Returns the
    /// bytes freed. An I/O error drops the file from the queue (it is left on disk, logged;
    /// the next start adopts it again).
    pub fn step(&mut self, budget: Duration) -> u64 {
        let t0 = Instant::now();
        let mut freed = 0;
        while let Some(d) = self.queue.front_mut() {
            let r = if d.len == 0 {
                fs::remove_file(&d.path).map(|_| true)
            } else {
                let to = d.len.saturating_sub(SLICE);
                d.file.set_len(to).map(|_| {
                    freed += d.len - to;
                    self.bytes -= d.len - to;
                    d.len = to;
                    false
                })
            };
            match r {
                Ok(false) => {}
                Ok(true) => {
                    self.queue.pop_front();
                }
                Err(e) => {
                    // NotFound: another process (the snapshot child) deleted it first.
                    if e.kind() != io::ErrorKind::NotFound {
                        ::log::warn!("deleting {}: {e}; leaving it for now", d.path.display());
                    }
                    self.bytes -= d.len;
                    self.queue.pop_front();
                }
            }
            if t0.elapsed() >= budget {
                break;
            }
        }
        freed
    }

    /// Deletes everything queued now, whatever it costs (tools, tests, shutdown).
    pub fn empty_now(&mut self) {
        while !self.queue.is_empty() {
            self.step(Duration::MAX);
        }
    }

    /// Bytes still to free.
    pub fn pending_bytes(&self) -> u64 {
        self.bytes
    }

    /// Files still queued.
    pub fn pending_files(&self) -> usize {
        self.queue.len()
    }
}

/// The `*.trash` files in `dir`, sorted by name.
pub fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        if ent
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(SUFFIX))
        {
            found.push(ent.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Renames `path` to `<path>.trash` (same directory) and returns the new name. The file is
/// then out of the way of every directory listing here, and any [`Trash`] that adopts the
/// directory's leftovers deletes it.
pub fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(SUFFIX);
    let doomed = PathBuf::from(name);
    fs::rename(path, &doomed)?;
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(dir: &Path, name: &str, len: usize) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, vec![7u8; len]).unwrap();
        p
    }

    #[test]
    fn add_renames_at_once_and_steps_free_slice_by_slice() {
        let dir = tempfile::tempdir().unwrap();
        let a = file_of(dir.path(), "a.seg", (2 * SLICE + 5) as usize);
        let b = file_of(dir.path(), "b.seg", 10);
        let mut t = Trash::new();
        t.add(&a).unwrap();
        t.add(&b).unwrap();
        assert!(!a.exists() && !b.exists(), "old names are gone at once");
        assert!(dir.path().join("a.seg.trash").exists());
        assert_eq!(t.pending_bytes(), 2 * SLICE + 15);
        assert_eq!(t.pending_files(), 2);

        // A zero budget still makes progress: one slice per call.
        assert_eq!(t.step(Duration::ZERO), SLICE);
        assert_eq!(
            fs::metadata(dir.path().join("a.seg.trash")).unwrap().len(),
            SLICE + 5
        );
        assert_eq!(t.step(Duration::ZERO), SLICE);
        assert_eq!(t.step(Duration::ZERO), 5);
        // Empty now; the next step unlinks it, then b is next.
        assert_eq!(t.step(Duration::ZERO), 0);
        assert!(!dir.path().join("a.seg.trash").exists());
        assert_eq!(t.pending_files(), 1);
        t.empty_now();
        assert_eq!((t.pending_files(), t.pending_bytes()), (0, 0));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn leftovers_from_a_crash_are_adopted_and_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        file_of(dir.path(), "x.seg.trash", 3000);
        file_of(dir.path(), "y.seg", 3000);
        let mut t = Trash::new();
        assert_eq!(t.adopt_leftovers(dir.path()).unwrap(), 1);
        assert_eq!(t.pending_bytes(), 3000);
        t.empty_now();
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["y.seg".to_string()]);
    }

    #[test]
    fn a_file_deleted_behind_its_back_is_dropped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let a = file_of(dir.path(), "a.seg", 100);
        let mut t = Trash::new();
        t.add(&a).unwrap();
        fs::remove_file(dir.path().join("a.seg.trash")).unwrap();
        // Truncating the open (unlinked) file still works; the unlink then fails: dropped.
        t.empty_now();
        assert_eq!((t.pending_files(), t.pending_bytes()), (0, 0));
    }
}
