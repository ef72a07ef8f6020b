//! Read-only inspection of a data directory (for `raftkv-log`): never modifies a file.

use super::log::{list_segments, read_meta, META_FILE};
use super::record;
use super::segment::{self, io_err, release_map};
use super::StorageError;
use crate::raft::Entry;
use memmap2::Mmap;
use std::fs::File;
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

fn map_ro(path: &Path) -> Result<Mmap, StorageError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: read-only map; all access is bounds-checked slicing.
    unsafe { Mmap::map(&f) }.map_err(|e| io_err(path, e))
}

/// Scans the log in `log_dir` without modifying it. `strict`: every problem (including a torn
/// tail and stray bytes after the last record) is an error; otherwise tail damage of the last
/// segment is reported in `tail_damage`, as `Log::open` would truncate it.
pub fn inspect_log(log_dir: &Path, strict: bool) -> Result<LogInfo, StorageError> {
    let (snap_index, snap_term) = read_meta(log_dir)?;
    let files = list_segments(log_dir)?;
    let n = files.len();
    let mut info = LogInfo {
        dir: log_dir.to_path_buf(),
        snap_index,
        snap_term,
        segments: Vec::new(),
        tail_damage: None,
    };
    let mut prev_term = 0;
    for (i, (_, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == n;
        let map = map_ro(&path)?;
        let expect = info
            .segments
            .last()
            .map(|s: &SegmentInfo| s.last_index() + 1);
        let mut released = 0;
        let scan = segment::scan(
            &path,
            &map,
            expect,
            prev_term,
            is_last && !strict,
            &mut |u| {
                release_map(&map, released, u);
                released = u;
            },
        )?;
        if let Some((off, what)) = &scan.tail {
            info.tail_damage = Some((path.clone(), *off as u64, what.clone()));
        }
        if strict {
            if let Some(p) = map[scan.end..].iter().position(|&b| b != 0) {
                return Err(StorageError::Corrupt {
                    path,
                    offset: (scan.end + p) as u64,
                    what: format!(
                        "non-zero bytes after the last record (which ends at byte {})",
                        scan.end
                    ),
                });
            }
            release_map(&map, 0, map.len());
        }
        let terms = if scan.offsets.is_empty() {
            (0, 0)
        } else {
            let t = |pos: u32| record::le_u64(&map, pos as usize + 24);
            (t(scan.offsets[0]), t(scan.offsets[scan.offsets.len() - 1]))
        };
        prev_term = scan.last_term;
        info.segments.push(SegmentInfo {
            path,
            file_len: map.len() as u64,
            first_index: scan.first_index,
            entries: scan.offsets.len() as u64,
            bytes: (scan.end - record::SEG_HEADER_LEN) as u64,
            terms,
            offsets: scan.offsets,
        });
    }
    if let Some(s) = info.segments.first() {
        if s.first_index > snap_index + 1 {
            return Err(StorageError::Corrupt {
                path: s.path.clone(),
                offset: 24,
                what: format!(
                    "log starts at index {} but the snapshot only covers up to {snap_index}",
                    s.first_index
                ),
            });
        }
    }
    Ok(info)
}
