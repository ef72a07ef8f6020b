//! File-system helpers shared by every storage module: typed I/O errors, durable directory
//! operations, read-only maps and dropping mapped pages.
//!
//! A leaf module on purpose: it imports nothing from `storage` but the error type, so `lock`,
//! `segment`, `log`, `hardstate`, `snapshot` and `inspect` can all use it without importing
//! each other (they once did, in a cycle: `lock` -> `segment` -> `log` -> `lock`).

use super::StorageError;
use memmap2::Mmap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// An I/O error on `path`.
pub fn io_err(path: &Path, err: std::io::Error) -> StorageError {
    StorageError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// fsyncs a directory so renames, creations and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Creates `dir` (and missing parents) and makes the new directory entries durable: each
/// created directory's parent is fsynced (a directory entry is only durable once its parent
/// is), and so is `dir` itself. Without it a crash soon after a node's first start could lose
/// `log/` or `snap/` with the files already synced inside them.
pub fn create_dir_durable(dir: &Path) -> Result<(), StorageError> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    for d in missing.iter().rev() {
        let parent = match d.parent() {
            Some(pp) if !pp.as_os_str().is_empty() => pp,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    if !missing.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Durably replaces `dir/name` with `bytes`: writes `dir/name.tmp`, fsyncs it, renames it over
/// `name` and fsyncs `dir`. A crash leaves either the old file or the new one, never a mix.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    sync_dir(dir)
}

/// Maps `path` read-only (the inspector's and the recovery scan's view of a file).
pub fn map_ro(path: &Path) -> Result<Mmap, StorageError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: read-only map of a file only this process's Log writes (one owner per data
    // directory); all access is bounds-checked slicing.
    unsafe { Mmap::map(&f) }.map_err(|e| io_err(path, e))
}

/// Drops the mapped pages of `map[lo..hi]` from this process's resident set (only whole pages
/// inside the range). The data stays in the page cache / file; dirty shared pages are not lost.
pub fn release_map(map: &[u8], lo: usize, hi: usize) {
    const PAGE: usize = 4096;
    let lo = lo.div_ceil(PAGE) * PAGE;
    let hi = hi.min(map.len()) / PAGE * PAGE;
    if hi <= lo {
        return;
    }
    // SAFETY: MADV_DONTNEED on a shared file mapping only drops this process's page table
    // entries; the next access reads the (page-cache / file) contents again. Writes made through
    // the shared map live in the page cache and are not discarded.
    unsafe {
        let _ = libc::madvise(
            map.as_ptr().add(lo) as *mut libc::c_void,
            hi - lo,
            libc::MADV_DONTNEED,
        );
    }
}
