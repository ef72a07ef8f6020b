//! One segment file: a preallocated, memory-mapped file holding a header and a run of records
//! with contiguous indexes; its allocation protocol (temp name, size, header, sync, rename:
//! [`Segment::create`]); and the validating scanner of one segment's bytes, which
//! `logscan::scan_log_dir` runs for both `Log::open` and `raftkv-log`.

use super::fsutil::{io_err, release_map, sync_dir};
use super::record::{self, Probe, RecHeader, REC_HEADER_LEN, SEG_HEADER_LEN};
use super::StorageError;
use crate::raft::Entry;
use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Pages of a scanned or replayed range are dropped from the process every this many bytes,
/// so reading a huge log keeps resident memory small.
pub const RELEASE_EVERY: usize = 4 << 20;

/// Segment file name for a segment whose first index is `first`.
pub fn file_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// Parses a segment file name back into its first index.
pub fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Suffix of a segment being allocated: `<first index:020>.seg.tmp` until it is fully sized and
/// its header is synced, then renamed to its segment name (see [`Segment::create`]).
pub const TEMP_SUFFIX: &str = ".tmp";

/// Name of the temp file a segment starting at `first` is allocated under.
pub fn temp_name(first: u64) -> String {
    format!("{}{TEMP_SUFFIX}", file_name(first))
}

/// Name of the next segment, preallocated ahead of need before its first index is known
/// ([`Spare`]): a temp name with first index 0, which no segment has (indexes start at 1), so
/// `Log::open` and `raftkv-log` treat it like any interrupted allocation.
pub fn spare_name() -> String {
    temp_name(0)
}

/// What a `*.seg.tmp` file left in a log directory is, for warnings: the spare (preallocated
/// next segment, left by a crash; a clean stop removes it) or an interrupted allocation.
pub fn describe_temp(path: &Path) -> &'static str {
    if path.file_name().and_then(|n| n.to_str()) == Some(&spare_name()) {
        "the preallocated next segment (never part of the log)"
    } else {
        "leftover segment allocation (interrupted before it was renamed into place)"
    }
}

/// Parses a segment allocation temp file name back into its first index.
pub fn parse_temp_name(name: &str) -> Option<u64> {
    parse_name(name.strip_suffix(TEMP_SUFFIX)?)
}

/// Result of validating one segment's bytes.
#[derive(Debug, Default)]
pub struct Scan {
    pub first_index: u64,
    /// Byte offset of every valid record, in index order.
    pub offsets: Vec<u32>,
    /// Term of the last valid record (or the `prev_term` passed in).
    pub last_term: u64,
    /// End of the valid records.
    pub end: usize,
    /// Tail damage found (only in non-strict mode on the last segment): offset and description.
    pub tail: Option<(usize, String)>,
    /// One past the last non-zero byte after `end` (== `end` when the rest is clean).
    pub dirty_end: usize,
}

impl Scan {
    pub fn last_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64 - 1
    }
}

/// Finds one past the last non-zero byte of `b[from..]`, or `from` if all zero. Reads in
/// chunks, calling `release` after each so the pages do not stay resident.
fn last_nonzero(b: &[u8], from: usize, release: &mut dyn FnMut(usize)) -> usize {
    let mut last = from;
    let mut at = from;
    while at < b.len() {
        let end = (at + RELEASE_EVERY).min(b.len());
        if let Some(p) = b[at..end].iter().rposition(|&x| x != 0) {
            last = at + p + 1;
        }
        at = end;
        release(at);
    }
    last
}

/// True when the bytes *outside* the damaged record at `from` show a lost write, up to `to`
/// (a valid record continuing the log further on). In a crash, a 512-byte aligned sector that
/// never reached the disk reads back as zeros (segments are preallocated zeros), so:
/// - if the damaged record's header is readable (right magic, length within the file), its
///   claimed end `ce` must be at or before `to`, and the bytes from `ce` on must show a lost
///   write: the next record's magic at `ce` reads as zeros (a record magic is never zero), or
///   a whole aligned sector in `[ce, to)` is zeros;
/// - if its header is not readable, its magic must read as zeros up to or from a sector
///   boundary (then that whole sector, up to `to`, reads as zeros).
///
/// Zeros *inside* the damaged record prove nothing: a payload may well contain zeros (a value
/// of zero bytes), and a flipped bit elsewhere in such a record is corruption, not a crash.
fn lost_write_after(b: &[u8], from: usize, to: usize) -> bool {
    if to <= from || to > b.len() {
        return false;
    }
    let ce = record::claimed_end(b, from);
    let Some(ce) = ce else {
        // The header is unreadable: only its magic can show a lost sector. No magic byte is
        // zero and a flipped bit cannot zero one, so zeros in it from or up to a sector
        // boundary mean that sector never reached the disk.
        if from + 4 > b.len() {
            return false;
        }
        let magic = &b[from..from + 4];
        let s = from.div_ceil(512) * 512;
        if s >= from + 4 || s == from {
            return magic.iter().all(|&x| x == 0);
        }
        let k = s - from;
        let lost_before = magic[..k].iter().all(|&x| x == 0);
        let lost_from = b[s..(s + 512).min(to)].iter().all(|&x| x == 0);
        return lost_before || lost_from;
    };
    if ce > to {
        return false;
    }
    if ce + 4 <= to && b[ce..ce + 4].iter().all(|&x| x == 0) {
        return true;
    }
    let mut s = ce.div_ceil(512) * 512;
    while s + 512 <= to {
        if b[s..s + 512].iter().all(|&x| x == 0) {
            return true;
        }
        s += 512;
    }
    false
}

/// Validates the segment bytes `b` (the whole file).
///
/// * `expect_first`: the index this segment must start at (from the previous segment), if any.
/// * `prev_term`: term of the previous segment's last entry (terms never go down).
/// * `tolerate_tail`: this is the last segment and damage at its tail is a torn write to be
///   truncated (Log::open). When false every problem is an error (non-last segments,
///   `verify --strict`), including non-zero bytes after the last record.
/// * `durable`: entries up to this index are known to have been synced (the hard state's
///   commit hint): damage at or below it is never a torn write.
/// * `release(upto)`: called as the scan advances so the caller can drop mapped pages.
pub fn scan(
    path: &Path,
    b: &[u8],
    expect_first: Option<u64>,
    prev_term: u64,
    tolerate_tail: bool,
    durable: u64,
    release: &mut dyn FnMut(usize),
) -> Result<Scan, StorageError> {
    let corrupt = |offset: usize, what: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    let first = record::decode_seg_header(b).map_err(|w| corrupt(0, w))?;
    if let Some(name_first) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_name)
    {
        if name_first != first {
            return Err(corrupt(
                24,
                format!("header says first index {first} but the file name says {name_first}"),
            ));
        }
    }
    if let Some(e) = expect_first {
        if e != first {
            return Err(corrupt(
                24,
                format!("index gap: segment starts at {first}, expected {e}"),
            ));
        }
    }
    if b.len() > u32::MAX as usize {
        return Err(corrupt(0, "segment file larger than 4 GiB".into()));
    }
    let mut s = Scan {
        first_index: first,
        last_term: prev_term,
        ..Scan::default()
    };
    let mut pos = SEG_HEADER_LEN;
    let mut next_release = RELEASE_EVERY;
    let mut expected = first;
    loop {
        if pos >= next_release {
            release(pos);
            next_release = pos + RELEASE_EVERY;
        }
        let what = match record::probe(b, pos) {
            Probe::End => break,
            Probe::Bad(w) => w,
            Probe::Record(h) if h.index != expected => {
                format!("index gap: expected index {expected}, found {}", h.index)
            }
            Probe::Record(h) if h.term < s.last_term => format!(
                "term went backwards: index {} has term {} after term {}",
                h.index, h.term, s.last_term
            ),
            Probe::Record(h) => {
                s.offsets.push(pos as u32);
                s.last_term = h.term;
                pos += REC_HEADER_LEN + h.len;
                expected += 1;
                continue;
            }
        };
        // A bad record at `pos`.
        if !tolerate_tail {
            return Err(corrupt(pos, what));
        }
        if expected <= durable {
            return Err(corrupt(
                pos,
                format!(
                    "{what} in entry {expected}, at or below the durable commit index {durable} \
                     of the hard state (it was synced: damage, not a torn write)"
                ),
            ));
        }
        // Tail damage, or damage in the middle of the last segment? Look for a valid record
        // that continues the log further on: if there is one and the bytes outside the damaged
        // record do not show a lost write, the damage is not at the tail.
        if let Some(q) = find_valid_after(b, pos + 1, expected) {
            if !lost_write_after(b, pos, q) {
                return Err(corrupt(
                    pos,
                    format!(
                        "{what} in entry {expected} (valid records follow at byte {q} and \
                         nothing outside the record shows a lost write: not a torn tail)"
                    ),
                ));
            }
        }
        s.tail = Some((pos, what));
        break;
    }
    s.end = pos;
    s.dirty_end = last_nonzero(b, pos, release);
    if !tolerate_tail && s.dirty_end > pos {
        // A sealed segment was flushed whole before the next one existed, and truncations
        // zero what they cut: nothing may follow its last record.
        let p = pos + b[pos..].iter().position(|&x| x != 0).unwrap_or(0);
        return Err(corrupt(
            p,
            format!("non-zero bytes after the last record (which ends at byte {pos})"),
        ));
    }
    release(b.len());
    Ok(s)
}

/// Offset of the first valid record at or after `from` whose index is >= `min_index`.
fn find_valid_after(b: &[u8], from: usize, min_index: u64) -> Option<usize> {
    let magic = record::REC_MAGIC.to_le_bytes();
    let mut p = from;
    while p + REC_HEADER_LEN <= b.len() {
        // Jump to the next occurrence of the magic's first byte.
        match b[p..b.len() - REC_HEADER_LEN + 1]
            .iter()
            .position(|&x| x == magic[0])
        {
            None => return None,
            Some(d) => p += d,
        }
        if b[p..p + 4] == magic {
            if let Probe::Record(h) = record::probe(b, p) {
                if h.index >= min_index {
                    return Some(p);
                }
            }
        }
        p += 1;
    }
    None
}

/// A segment file opened read/write and mapped, not validated yet (what `Log::open` hands
/// the recovery scan, `logscan::scan_log_dir`).
pub struct RawSegment {
    file: File,
    map: MmapMut,
}

impl AsRef<[u8]> for RawSegment {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl RawSegment {
    /// Zeroes `[lo, hi)` and flushes it: clears unsynced leftovers after the last record
    /// before the segment is appended to again.
    pub fn clear(&mut self, path: &Path, lo: usize, hi: usize) -> Result<(), StorageError> {
        if hi > lo {
            self.map[lo..hi].fill(0);
            self.map
                .flush_range(lo, hi - lo)
                .map_err(|e| io_err(path, e))?;
            release_map(&self.map, 0, self.map.len());
        }
        Ok(())
    }
}

/// An open, mapped segment.
/// Fields are private: the offsets, `end` and the dirty range must move together (`append`,
/// `truncate_from`, `flush`), so only this module changes them; others read them through the
/// accessors below.
pub struct Segment {
    path: PathBuf,
    file: File,
    map: MmapMut,
    first_index: u64,
    /// Offset of every record (compact index: 4 bytes per entry).
    offsets: Vec<u32>,
    /// End of the valid records: the next record goes here.
    end: usize,
    /// Byte range written since the last sync.
    dirty: Option<(usize, usize)>,
}

/// Reserves disk blocks for the whole file so writes through the map never hit ENOSPC
/// (which would be a SIGBUS). Falls back to a sparse `set_len` where unsupported.
fn preallocate(file: &File, path: &Path, size: u64) -> Result<(), StorageError> {
    use std::os::unix::io::AsRawFd;
    let cur = file.metadata().map_err(|e| io_err(path, e))?.len();
    if cur >= size {
        return Ok(());
    }
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if rc != 0 && rc != libc::EOPNOTSUPP && rc != libc::EINVAL {
        return Err(io_err(path, std::io::Error::from_raw_os_error(rc)));
    }
    file.set_len(size).map_err(|e| io_err(path, e))
}

fn map_file(file: &File, path: &Path) -> Result<MmapMut, StorageError> {
    // SAFETY: the segment files are private to this process (one server per data dir); the
    // map is only read through bounds-checked slices.
    unsafe { MmapOptions::new().map_mut(file) }.map_err(|e| io_err(path, e))
}

/// The next segment's file, allocated ahead of need (`Log::ensure_spare`) under
/// [`spare_name`]: created, fully sized and synced, so that a full disk shows up while the
/// active segment still has room (the NO_SPACE alarm can still be logged) rather than when an
/// append needs the next segment. [`Segment::from_spare`] gives it its header and name.
pub struct Spare {
    path: PathBuf,
    file: File,
    size: u64,
}

impl Spare {
    /// Allocates the spare in `dir`; on failure removes what it made (best effort).
    pub fn allocate(dir: &Path, size: u64) -> Result<Spare, StorageError> {
        let path = dir.join(spare_name());
        let made = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            fault::check(fault::AllocStep::Preallocate).map_err(|e| io_err(&path, e))?;
            preallocate(&file, &path, size)?;
            file.sync_all().map_err(|e| io_err(&path, e))?;
            Ok(file)
        })();
        match made {
            Ok(file) => Ok(Spare { path, file, size }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

impl Spare {
    /// Deletes the file (best effort: a leftover is removed by the next `Log::open`).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Segment {
    /// Turns the preallocated `spare` into the segment starting at `first`: header written
    /// and synced, renamed into place, directory synced (the steps of [`Segment::create`]
    /// after the allocation). On failure the file is removed, as there.
    pub fn from_spare(dir: &Path, spare: Spare, first: u64) -> Result<Segment, StorageError> {
        let path = dir.join(file_name(first));
        let mut placed = false;
        let Spare {
            path: tmp,
            file,
            size,
        } = spare;
        let made = (|| {
            let mut map = map_file(&file, &tmp)?;
            map[..SEG_HEADER_LEN].copy_from_slice(&record::encode_seg_header(size, first));
            map.flush_range(0, SEG_HEADER_LEN)
                .map_err(|e| io_err(&tmp, e))?;
            file.sync_all().map_err(|e| io_err(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
            placed = true;
            sync_dir(dir)?;
            Ok(map)
        })();
        match made {
            Ok(map) => {
                let seg = Segment {
                    path,
                    file,
                    map,
                    first_index: first,
                    offsets: Vec::new(),
                    end: SEG_HEADER_LEN,
                    dirty: None,
                };
                seg.prepare_tail_for_appends();
                Ok(seg)
            }
            Err(e) => {
                let _ = std::fs::remove_file(if placed { &path } else { &tmp });
                let _ = sync_dir(dir);
                Err(e)
            }
        }
    }

    /// Creates a new, durable (file and directory entry), empty segment starting at `first`.
    ///
    /// Allocation protocol: the file is built under its temp name (`<first>.seg.tmp`, see
    /// [`temp_name`]): created, fully sized (`posix_fallocate`), header written and the file
    /// synced; only then is it renamed to its segment name and the directory synced. A
    /// segment name therefore never points at a file that is short, unsized or without a
    /// header. If any step fails (ENOSPC, EFBIG, EIO...) the temp file (or the renamed file, if
    /// only the final directory sync failed) is removed before the error is returned, so a
    /// failed allocation leaves nothing behind; what a crash mid-way leaves is a `*.seg.tmp`
    /// file, which is never read as a segment and which `Log::open` removes.
    pub fn create(dir: &Path, size: u64, first: u64) -> Result<Segment, StorageError> {
        let tmp = dir.join(temp_name(first));
        let path = dir.join(file_name(first));
        let mut placed = false;
        match Segment::allocate(dir, &tmp, &path, size, first, &mut placed) {
            Ok(seg) => Ok(seg),
            Err(e) => {
                // Best effort: the error that stopped the allocation is the one to report. A
                // temp file that cannot be removed here is removed by the next open.
                let leftover = if placed { &path } else { &tmp };
                match std::fs::remove_file(leftover) {
                    Ok(()) => {
                        let _ = sync_dir(dir);
                    }
                    Err(re) if re.kind() == std::io::ErrorKind::NotFound => {}
                    Err(re) => ::log::warn!(
                        "{}: cannot remove the failed segment allocation: {re}",
                        leftover.display()
                    ),
                }
                Err(e)
            }
        }
    }

    /// The steps of [`Segment::create`]; sets `placed` once the file carries its final name.
    fn allocate(
        dir: &Path,
        tmp: &Path,
        path: &Path,
        size: u64,
        first: u64,
        placed: &mut bool,
    ) -> Result<Segment, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(|e| io_err(tmp, e))?;
        fault::check(fault::AllocStep::Preallocate).map_err(|e| io_err(tmp, e))?;
        preallocate(&file, tmp, size)?;
        let mut map = map_file(&file, tmp)?;
        map[..SEG_HEADER_LEN].copy_from_slice(&record::encode_seg_header(size, first));
        fault::check(fault::AllocStep::Header).map_err(|e| io_err(tmp, e))?;
        map.flush_range(0, SEG_HEADER_LEN)
            .map_err(|e| io_err(tmp, e))?;
        file.sync_all().map_err(|e| io_err(tmp, e))?;
        fault::check(fault::AllocStep::Rename).map_err(|e| io_err(path, e))?;
        std::fs::rename(tmp, path).map_err(|e| io_err(path, e))?;
        *placed = true;
        // The directory entry too, right away: if segment k's entry could be lost while a later
        // segment k+1's survived, a crash would leave an index gap that looks like corruption.
        fault::check(fault::AllocStep::SyncDir).map_err(|e| io_err(dir, e))?;
        sync_dir(dir)?;
        let seg = Segment {
            path: path.to_path_buf(),
            file,
            map,
            first_index: first,
            offsets: Vec::new(),
            end: SEG_HEADER_LEN,
            dirty: None,
        };
        seg.prepare_tail_for_appends();
        Ok(seg)
    }

    /// Opens and maps an existing segment file read/write without validating it.
    pub fn open_raw(path: &Path) -> Result<RawSegment, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let map = map_file(&file, path)?;
        Ok(RawSegment { file, map })
    }

    /// Builds a segment from a scan of `raw`; extends a short last file back to `size`.
    pub fn from_scan(
        path: PathBuf,
        raw: RawSegment,
        scan: Scan,
        extend_to: Option<u64>,
    ) -> Result<Segment, StorageError> {
        let RawSegment { file, mut map } = raw;
        if let Some(size) = extend_to {
            if (map.len() as u64) < size {
                drop(map);
                preallocate(&file, &path, size)?;
                file.sync_all().map_err(|e| io_err(&path, e))?;
                map = map_file(&file, &path)?;
            }
        }
        Ok(Segment {
            path,
            file,
            map,
            first_index: scan.first_index,
            offsets: scan.offsets,
            end: scan.end,
            dirty: None,
        })
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Index of the first entry (the one in the header and the file name).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Offset of every record, in index order.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// End of the valid records (where the next one goes).
    pub fn end(&self) -> usize {
        self.end
    }

    /// Size of the file (and of the map).
    pub fn file_len(&self) -> usize {
        self.map.len()
    }

    /// Number of entries.
    pub fn count(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Index of the last entry (first_index - 1 when empty).
    pub fn last_index(&self) -> u64 {
        self.first_index + self.count() - 1
    }

    /// Header of the (validated on open, or written by us) record at `index`.
    pub fn header(&self, index: u64) -> RecHeader {
        let pos = self.offsets[(index - self.first_index) as usize] as usize;
        let h = &self.map[pos..pos + REC_HEADER_LEN];
        RecHeader {
            len: record::le_u32(h, 8) as usize,
            entry_type: h[12],
            index: record::le_u64(h, 16),
            term: record::le_u64(h, 24),
        }
    }

    /// The entry at `index` (which must be in this segment).
    pub fn entry(&self, index: u64) -> Entry {
        let pos = self.offsets[(index - self.first_index) as usize] as usize;
        let h = self.header(index);
        record::read_entry(&self.map, pos, &h)
    }

    fn mark_dirty(&mut self, lo: usize, hi: usize) {
        self.dirty = Some(match self.dirty {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
    }

    /// Copies `e` into the map. Returns false (writing nothing) when it does not fit.
    pub fn append(&mut self, e: &Entry) -> bool {
        let n = record::record_len(e.data.len());
        if self.end + n > self.map.len() {
            return false;
        }
        let pos = self.end;
        record::encode_record(e, &mut self.map[pos..pos + n]);
        self.offsets.push(pos as u32);
        self.end += n;
        self.mark_dirty(pos, pos + n);
        true
    }

    /// Removes entries >= `from` (which must be within or right after this segment), zeroing
    /// their bytes so they can never be mistaken for live records after a crash.
    pub fn truncate_from(&mut self, from: u64) {
        let keep = (from - self.first_index) as usize;
        if keep >= self.offsets.len() {
            return;
        }
        let cut = self.offsets[keep] as usize;
        self.zero(cut, self.end);
        self.offsets.truncate(keep);
        self.end = cut;
    }

    /// Zeroes `[lo, hi)` of the map (marks it dirty).
    pub fn zero(&mut self, lo: usize, hi: usize) {
        if hi > lo {
            self.map[lo..hi].fill(0);
            self.mark_dirty(lo, hi);
        }
    }

    /// Flushes the dirty range to disk (msync).
    pub fn flush(&mut self) -> Result<(), StorageError> {
        if let Some((lo, hi)) = self.dirty {
            self.map
                .flush_range(lo, hi - lo)
                .map_err(|e| io_err(&self.path, e))?;
            self.dirty = None;
        }
        Ok(())
    }

    /// Drops the mapped pages of `[lo, hi)` from this process's resident set. The data stays in
    /// the page cache / file; dirty shared pages are not lost.
    pub fn release(&self, lo: usize, hi: usize) {
        release_map(&self.map, lo, hi);
    }

    /// Prepares the unwritten tail `[end, len)` for small appends, each followed by an msync.
    ///
    /// Why: msync writes back whole dirty *folios*, and the kernel's page cache builds large
    /// folios (up to 1 MiB and more were seen on ext4) when pages are read ahead. A read fault
    /// near the tail (re-reading entries, the recovery scan of the zeroed tail) read ahead into
    /// the unwritten part, so each 300-byte append + msync then wrote a whole large folio: ~1 MiB
    /// per sync, 400 MB/s of disk writes at 350 ops/s, and 1-2 ms fsyncs for every node sharing
    /// the disk. So: no readahead on the tail (`MADV_RANDOM`: write faults then bring in single
    /// 4 KiB pages), and any pages already cached there (clean zeros) are dropped so they cannot
    /// be large folios. Errors are ignored: both calls are advice; only speed depends on them.
    pub fn prepare_tail_for_appends(&self) {
        use std::os::unix::io::AsRawFd;
        const PAGE: usize = 4096;
        let lo = self.end / PAGE * PAGE;
        let len = self.map.len();
        if lo >= len {
            return;
        }
        let clean = self.end.div_ceil(PAGE) * PAGE;
        release_map(&self.map, clean, len);
        // SAFETY: advice calls on our own mapping / descriptor; they change no data.
        unsafe {
            let _ = libc::madvise(
                self.map.as_ptr().add(lo) as *mut libc::c_void,
                len - lo,
                libc::MADV_RANDOM,
            );
            if clean < len {
                let _ = libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    clean as libc::off_t,
                    (len - clean) as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
        }
    }

    /// Undoes [`Segment::prepare_tail_for_appends`] once the segment is full (sealed): it is only
    /// read from now on (catch-up, replay), where readahead helps.
    pub fn sealed(&self) {
        // SAFETY: advice on our own mapping; changes no data.
        unsafe {
            let _ = libc::madvise(
                self.map.as_ptr() as *mut libc::c_void,
                self.map.len(),
                libc::MADV_NORMAL,
            );
        }
    }
}

/// Test hook: makes a step of the next segment allocation on the calling thread fail as a full
/// disk would (ENOSPC), so tests can check that a failed allocation leaves nothing behind.
/// Per thread (each test runs on its own), one shot, and a no-op unless armed.
#[doc(hidden)]
pub mod fault {
    use std::cell::Cell;

    /// Where [`Segment::create`](super::Segment::create) fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AllocStep {
        /// Reserving the blocks (`posix_fallocate`), the temp file just created.
        Preallocate,
        /// Writing the header (the file sized).
        Header,
        /// Renaming the synced temp file into place.
        Rename,
        /// Syncing the directory after the rename.
        SyncDir,
    }

    thread_local! {
        static FAIL_AT: Cell<Option<AllocStep>> = const { Cell::new(None) };
    }

    /// Arms (or with `None` disarms) the hook for the next allocation on this thread.
    pub fn fail_next_allocation_at(step: Option<AllocStep>) {
        FAIL_AT.with(|f| f.set(step));
    }

    pub(super) fn check(step: AllocStep) -> std::io::Result<()> {
        if FAIL_AT.with(|f| f.get()) == Some(step) {
            FAIL_AT.with(|f| f.set(None));
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}
