//! Read-only inspection of a data directory, for `raftkv-log` and the server's startup check
//! (`snapshot::recover::check_data_dir`): never modifies a file. The log is scanned by the same
//! `logscan::scan_log_dir` that `Log::open` uses, on read-only maps.

use super::fsutil::{map_ro, release_map};
use super::logscan;
use super::meta::META_FILE;
use super::record;
use super::segment;
use super::StorageError;
use crate::raft::Entry;
use std::path::{Path, PathBuf};

/// The parts of a node data directory.
#[derive(Debug, Clone)]
pub struct DataDirs {
    pub log: PathBuf,
    /// `DIR/hardstate`, if DIR is a data dir (not just a log dir).
    pub hardstate: Option<PathBuf>,
    /// `DIR/snap`, if DIR is a data dir.
    pub snap: Option<PathBuf>,
}

fn is_log_dir(p: &Path) -> bool {
    p.join(META_FILE).is_file()
        || std::fs::read_dir(p).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(segment::parse_name)
                    .is_some()
            })
        })
}

/// Accepts a node data dir (containing `log/`) or a log dir itself.
pub fn resolve(dir: &Path) -> Result<DataDirs, StorageError> {
    if !dir.is_dir() {
        return Err(StorageError::Io {
            path: dir.to_path_buf(),
            err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let log = dir.join("log");
    if log.is_dir() {
        return Ok(DataDirs {
            log,
            hardstate: Some(dir.join(super::hardstate::HARDSTATE_FILE)),
            snap: Some(dir.join("snap")),
        });
    }
    if is_log_dir(dir) {
        return Ok(DataDirs {
            log: dir.to_path_buf(),
            hardstate: None,
            snap: None,
        });
    }
    Err(StorageError::Foreign {
        path: dir.to_path_buf(),
        what: "not a raftkv data directory (no log/ subdirectory, no segment files)".into(),
    })
}

/// One segment as found on disk.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub file_len: u64,
    pub first_index: u64,
    pub entries: u64,
    /// Bytes of records (headers included).
    pub bytes: u64,
    /// Terms of the first and last record (0, 0 if empty).
    pub terms: (u64, u64),
    offsets: Vec<u32>,
}

impl SegmentInfo {
    pub fn last_index(&self) -> u64 {
        self.first_index + self.entries - 1
    }
}

/// A log as found on disk.
#[derive(Debug, Clone)]
pub struct LogInfo {
    pub dir: PathBuf,
    pub snap_index: u64,
    pub snap_term: u64,
    pub segments: Vec<SegmentInfo>,
    /// Damage at the tail of the last segment that `Log::open` would truncate (non-strict only).
    pub tail_damage: Option<(PathBuf, u64, String)>,
    /// Segment allocation temp files (`*.seg.tmp`, an interrupted allocation): never part of
    /// the log; `Log::open` removes them.
    pub temp_segments: Vec<PathBuf>,
    /// The segments do not continue from `meta` (an interrupted reset): `Log::open` drops them.
    pub stale: bool,
}

impl LogInfo {
    /// Physical first index (may be <= the snapshot index: whole segments only are deleted).
    pub fn first_index(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.snap_index + 1, |s| s.first_index)
    }
    pub fn last_index(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.snap_index, |s| s.last_index())
    }
    pub fn entries(&self) -> u64 {
        self.segments.iter().map(|s| s.entries).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Term of the entry at `index` as found on disk (None if no segment holds it).
    pub fn term_at(&self, index: u64) -> Result<Option<u64>, StorageError> {
        let Some(s) = self
            .segments
            .iter()
            .find(|s| s.entries > 0 && s.first_index <= index && index <= s.last_index())
        else {
            return Ok(None);
        };
        let map = map_ro(&s.path)?;
        let pos = s.offsets[(index - s.first_index) as usize] as usize;
        Ok(map
            .get(pos + 24..pos + 32)
            .map(|_| record::le_u64(&map, pos + 24)))
    }

    /// Calls `f` for every entry in `[from, to]` (read-only, pages released as it goes).
    pub fn for_each(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(Entry) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        for s in &self.segments {
            if s.entries == 0 || s.last_index() < from || s.first_index > to {
                continue;
            }
            let map = map_ro(&s.path)?;
            let lo = from.max(s.first_index);
            let hi = to.min(s.last_index());
            let mut released = 0;
            for i in lo..=hi {
                let pos = s.offsets[(i - s.first_index) as usize] as usize;
                match record::probe(&map, pos) {
                    record::Probe::Record(h) => f(record::read_entry(&map, pos, &h))?,
                    _ => {
                        return Err(StorageError::Corrupt {
                            path: s.path.clone(),
                            offset: pos as u64,
                            what: "record changed while reading".into(),
                        })
                    }
                }
                if pos - released >= segment::RELEASE_EVERY {
                    release_map(&map, released, pos);
                    released = pos;
                }
            }
        }
        Ok(())
    }
}

/// How hard `inspect_log` looks and what it forgives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// As `Log::open` sees the log (`stats`, `dump`): damage at the tail of the last segment
    /// (a torn write, or stray non-zero bytes after the last record) is reported in
    /// `LogInfo::tail_damage`; anything else is an error.
    Lenient,
    /// `verify`: the same checks as `Lenient` (the server's open checks sealed segments are
    /// all zeros after their last record too, so this is no longer stricter).
    Full,
    /// `verify --strict`: every problem is an error, including what `Log::open` would repair.
    Strict,
}

/// Scans the log in `log_dir` without modifying it; see [`Check`] for what is an error.
pub fn inspect_log(log_dir: &Path, check: Check) -> Result<LogInfo, StorageError> {
    inspect_log_durable(log_dir, check, 0)
}

/// [`inspect_log`] knowing that entries up to `durable` were synced (see `Log::open_durable`):
/// the same scan and the same decisions as the server's open (`logscan::scan_log_dir`).
pub fn inspect_log_durable(
    log_dir: &Path,
    check: Check,
    durable: u64,
) -> Result<LogInfo, StorageError> {
    inspect_log_progress(log_dir, check, durable, &mut |_| {})
}

/// [`inspect_log_durable`], calling `on_segment(file bytes)` as each segment is opened for its
/// scan (progress for `raftkv-log verify` of a large directory).
pub fn inspect_log_progress(
    log_dir: &Path,
    check: Check,
    durable: u64,
    on_segment: &mut dyn FnMut(u64),
) -> Result<LogInfo, StorageError> {
    let strict = check == Check::Strict;
    let found = logscan::scan_log_dir(log_dir, durable, strict, &mut |p| {
        let map = map_ro(p)?;
        on_segment(map.len() as u64);
        Ok(map)
    })?;
    let segments = found
        .segments
        .into_iter()
        .map(|s| {
            let (map, scan) = (s.map, s.scan);
            let terms = match (scan.offsets.first(), scan.offsets.last()) {
                (Some(&a), Some(&b)) => {
                    let t = |pos: u32| record::le_u64(&map, pos as usize + 24);
                    (t(a), t(b))
                }
                _ => (0, 0),
            };
            SegmentInfo {
                path: s.path,
                file_len: map.len() as u64,
                first_index: scan.first_index,
                entries: scan.offsets.len() as u64,
                bytes: (scan.end - record::SEG_HEADER_LEN) as u64,
                terms,
                offsets: scan.offsets,
            }
        })
        .collect();
    Ok(LogInfo {
        dir: log_dir.to_path_buf(),
        snap_index: found.snap_index,
        snap_term: found.snap_term,
        segments,
        tail_damage: found.tail_damage.map(|t| (t.path, t.offset, t.what)),
        temp_segments: found.temp_segments,
        stale: found.stale,
    })
}
