//! The one recovery scan of a log directory: lists what is there, validates every segment and
//! classifies what it finds (the live segments, a torn tail, a torn segment creation, leftover
//! allocation temp files, a log that does not continue from `meta`), or refuses.
//!
//! Both `Log::open` (which then repairs what the scan classified as repairable) and the
//! read-only inspector (`inspect.rs`: `raftkv-log` and the server's startup check
//! `snapshot::recover::check_data_dir`) call [`scan_log_dir`], so the server and `raftkv-log
//! verify` cannot disagree about a directory: they differ only in how they map the files
//! (read/write vs read-only) and in what they do with the answer.

use super::fsutil::{io_err, release_map};
use super::meta::read_meta;
use super::record;
use super::segment::{self, Scan};
use super::StorageError;
use std::fs;
use std::path::{Path, PathBuf};

/// Segment files in `dir`, sorted by first index (`*.seg` only: temp and trash files are not
/// segments).
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut v = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let ent = ent.map_err(|e| io_err(dir, e))?;
        let name = ent.file_name();
        if let Some(first) = name.to_str().and_then(segment::parse_name) {
            v.push((first, ent.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Segment allocation temp files (`*.seg.tmp`) in `dir`, sorted: what an allocation a crash
/// interrupted left behind (see `Segment::create`). Never part of the log.
pub fn list_temp_segments(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut v = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let ent = ent.map_err(|e| io_err(dir, e))?;
        if ent
            .file_name()
            .to_str()
            .and_then(segment::parse_temp_name)
            .is_some()
        {
            v.push(ent.path());
        }
    }
    v.sort();
    Ok(v)
}

/// True when the segments do not continue from the snapshot boundary `(si, st)` of `meta`:
/// they hold another term at `si`, or the last segment ends before it (an interrupted
/// `reset`). `last`: the last segment's last index; `term_at`: the term of entry `si` on disk.
pub fn is_stale(si: u64, st: u64, last: Option<u64>, term_at: Option<u64>) -> bool {
    (si > 0 && term_at.is_some_and(|t| t != st)) || last.is_some_and(|l| l < si)
}

/// The log must reach the durable commit index: entries up to it were synced, so a log that
/// ends before it (a lost or cut segment, or damage the scan stopped at) lost acknowledged
/// entries. `path`/`end`: the last segment and where its records end (for the message).
pub fn check_durable_end(
    path: &Path,
    end: usize,
    last_index: u64,
    snap_index: u64,
    durable: u64,
) -> Result<(), StorageError> {
    if last_index.max(snap_index) >= durable {
        return Ok(());
    }
    Err(StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: end as u64,
        what: format!(
            "the log ends at index {} but the hard state's commit index {durable} says entries \
             up to it were synced: entries {}..={durable} are missing",
            last_index.max(snap_index),
            last_index.max(snap_index) + 1
        ),
    })
}

/// One valid segment as the scan found it, with the caller's mapping of it.
pub struct ScannedSegment<M> {
    pub path: PathBuf,
    pub map: M,
    pub scan: Scan,
}

impl<M: AsRef<[u8]>> ScannedSegment<M> {
    /// Term of the record at `index` (which must be in this segment).
    fn term_at(&self, index: u64) -> u64 {
        let pos = self.scan.offsets[(index - self.scan.first_index) as usize] as usize;
        record::le_u64(self.map.as_ref(), pos + 24)
    }
}

/// Damage at the tail of the last segment that `Log::open` repairs: a torn record (cut away),
/// stray non-zero bytes after the last record (zeroed), or a segment whose header was never
/// written (removed).
#[derive(Debug, Clone)]
pub struct TailDamage {
    pub path: PathBuf,
    pub offset: u64,
    pub what: String,
}

/// What [`scan_log_dir`] found.
pub struct LogScan<M> {
    pub snap_index: u64,
    pub snap_term: u64,
    /// The valid segments, in index order (a torn creation is not among them).
    pub segments: Vec<ScannedSegment<M>>,
    /// The last `*.seg` file when its header was never written and it holds only zeros (any
    /// length, 0 included): a crash while an older version created it in place. Removed on open.
    pub torn_creation: Option<PathBuf>,
    /// `*.seg.tmp` files: allocations a crash or an error interrupted. Removed on open.
    pub temp_segments: Vec<PathBuf>,
    /// See [`TailDamage`] (a torn creation is reported here too).
    pub tail_damage: Option<TailDamage>,
    /// The segments do not continue from `meta`'s snapshot boundary ([`is_stale`]): an
    /// interrupted `reset`; `Log::open` drops them all.
    pub stale: bool,
}

/// Scans the log directory `dir` without modifying anything.
///
/// * `durable`: entries up to this index are known to have been synced (the hard state's
///   commit index): damage at or below it is refused, as is a log ending below it.
/// * `strict`: refuse what `Log::open` would repair (a torn tail, stray bytes, a torn
///   creation) instead of classifying it (`raftkv-log verify --strict`).
/// * `open`: maps one segment file (read/write for `Log::open`, read-only for the inspector).
///
/// Every refusal happens here, before the caller repairs anything.
pub fn scan_log_dir<M: AsRef<[u8]>>(
    dir: &Path,
    durable: u64,
    strict: bool,
    open: &mut dyn FnMut(&Path) -> Result<M, StorageError>,
) -> Result<LogScan<M>, StorageError> {
    let (snap_index, snap_term) = read_meta(dir)?;
    let files = list_segments(dir)?;
    let mut out = LogScan {
        snap_index,
        snap_term,
        segments: Vec::with_capacity(files.len()),
        torn_creation: None,
        temp_segments: list_temp_segments(dir)?,
        tail_damage: None,
        stale: false,
    };
    let n = files.len();
    let mut prev_term = 0;
    for (i, (_, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == n;
        let map = open(&path)?;
        let b = map.as_ref();
        if is_last && !strict && record::decode_seg_header(b).is_err() && b.iter().all(|&x| x == 0)
        {
            // A segment whose creation a crash cut short: it never held data.
            out.tail_damage = Some(TailDamage {
                path: path.clone(),
                offset: 0,
                what: format!(
                    "empty segment with an unwritten header ({} bytes, all zero: torn creation): \
                     removed on open",
                    b.len()
                ),
            });
            out.torn_creation = Some(path);
            continue;
        }
        let expect = out.segments.last().map(|s| s.scan.last_index() + 1);
        let mut released = 0;
        let scan = segment::scan(
            &path,
            b,
            expect,
            prev_term,
            is_last && !strict,
            durable,
            &mut |upto| {
                release_map(b, released, upto);
                released = upto;
            },
        )?;
        if let Some((off, what)) = &scan.tail {
            out.tail_damage = Some(TailDamage {
                path: path.clone(),
                offset: *off as u64,
                what: what.clone(),
            });
        } else if scan.dirty_end > scan.end {
            out.tail_damage = Some(TailDamage {
                path: path.clone(),
                offset: scan.end as u64,
                what: format!(
                    "non-zero bytes after the last record (up to byte {}): unsynced leftovers",
                    scan.dirty_end
                ),
            });
        }
        prev_term = scan.last_term;
        out.segments.push(ScannedSegment { path, map, scan });
    }
    // Before anything is repaired: the log (after cutting a torn tail or dropping a torn
    // creation) must still reach the durable commit index.
    match out.segments.last() {
        Some(s) if !strict => check_durable_end(
            &s.path,
            s.scan.end,
            s.scan.last_index(),
            snap_index,
            durable,
        )?,
        Some(_) => {}
        None => check_durable_end(dir, 0, snap_index, snap_index, durable)?,
    }
    let term_at = out
        .segments
        .iter()
        .find(|s| {
            !s.scan.offsets.is_empty()
                && s.scan.first_index <= snap_index
                && snap_index <= s.scan.last_index()
        })
        .map(|s| s.term_at(snap_index));
    let last = out.segments.last().map(|s| s.scan.last_index());
    out.stale = is_stale(snap_index, snap_term, last, term_at);
    if let Some(s) = out.segments.first() {
        // Not stale then (a stale log holds the boundary or ends before it): entries between
        // the snapshot and the first segment exist nowhere.
        if s.scan.first_index > snap_index + 1 {
            return Err(StorageError::Corrupt {
                path: s.path.clone(),
                offset: 24,
                what: format!(
                    "log starts at index {} but the snapshot only covers up to {snap_index}: \
                     entries are missing",
                    s.scan.first_index
                ),
            });
        }
    }
    Ok(out)
}
