//! The segmented log: a directory of preallocated, memory-mapped segment files plus a small
//! `meta` file recording the snapshot boundary.
//!
//! Invariants (after `open` and every operation):
//! - `segs` is non-empty, sorted, and the segments hold contiguous indexes;
//! - `segs[0].first_index <= snap_index + 1 <= last_index + 1`: entries at or below the snapshot
//!   index may still be physically present (compaction deletes whole segments only) but are
//!   logically gone;
//! - the last segment is the active one; earlier segments were flushed before it was created.

/// Where the server finds it (`storage::log::create_dir_durable`); it lives in `fsutil`.
pub use super::fsutil::create_dir_durable;
use super::fsutil::{io_err, sync_dir};
use super::lock::DirLock;
use super::logscan;
use super::meta::write_meta;
use super::record::{self, SEG_HEADER_LEN};
use super::segment::{Segment, Spare, RELEASE_EVERY};
use super::trash::Trash;
use super::{LogOptions, StorageError};
use crate::raft::{Entry, LogError, LogStore};
use prost::Message;
use std::fs;
use std::path::{Path, PathBuf};

/// The segmented append-only log.
pub struct Log {
    dir: PathBuf,
    opts: LogOptions,
    segs: Vec<Segment>,
    snap_index: u64,
    snap_term: u64,
    /// Compacted segments being deleted incrementally ([`Log::trash_step`]).
    trash: Trash,
    /// The next segment, allocated ahead of need ([`Log::ensure_spare`]).
    spare: Option<Spare>,
    /// Exclusive ownership of `dir` for this Log's lifetime: its own lock on `dir`
    /// ([`Log::open`]) or a share of its owner's lock on a directory containing it
    /// ([`Log::open_in`]). Declared last: released after the segments are unmapped.
    _lock: DirLock,
}

/// Refuses options the log cannot work with (before any directory is created or locked).
fn check_options(dir: &Path, opts: &LogOptions) -> Result<(), StorageError> {
    let min = (SEG_HEADER_LEN + record::REC_HEADER_LEN) as u64;
    if opts.segment_size < min || opts.segment_size > u32::MAX as u64 {
        return Err(invalid(
            dir,
            format!("segment size {} out of range", opts.segment_size),
        ));
    }
    Ok(())
}

fn invalid(dir: &Path, msg: String) -> StorageError {
    StorageError::Io {
        path: dir.to_path_buf(),
        err: std::io::Error::new(std::io::ErrorKind::InvalidInput, msg),
    }
}

/// Unmaps and closes `s`, then moves its file into `trash` (freed later by `trash_step`).
fn discard_segment(trash: &mut Trash, s: Segment) -> Result<(), StorageError> {
    let path = s.path().to_path_buf();
    drop(s);
    trash.add(&path).map_err(|e| io_err(&path, e))
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail. Does not load entries
    /// into memory: it keeps one 4-byte offset per entry. Knows nothing durable: see
    /// [`Log::open_durable`].
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Log, StorageError> {
        Log::open_durable(dir, opts, 0)
    }

    /// Like [`Log::open`], knowing that every entry up to `durable` (the hard state's commit
    /// hint, written only after those entries were synced) reached the disk: damage at or below
    /// it is never taken for a torn tail, and a log ending below it is refused (checked before
    /// anything is repaired). Locks `dir` itself (`dir/LOCK`), before reading anything.
    pub fn open_durable(dir: &Path, opts: LogOptions, durable: u64) -> Result<Log, StorageError> {
        check_options(dir, &opts)?;
        create_dir_durable(dir)?;
        // Before reading or repairing anything: a second process must not touch the files.
        let lock = DirLock::acquire(dir)?;
        Log::open_locked(dir, opts, durable, lock)
    }

    /// Like [`Log::open_durable`], in a directory covered by `lock`, a lock the caller took
    /// on a directory containing `dir` (the server: its data directory's lock, which covers
    /// `DIR/log`). Takes no lock of its own: the data directory is locked once, by its owner.
    /// The log keeps a share of `lock`, so the directory stays locked while the log lives even
    /// if the caller drops its handle first.
    pub fn open_in(
        dir: &Path,
        opts: LogOptions,
        durable: u64,
        lock: &DirLock,
    ) -> Result<Log, StorageError> {
        if !lock.covers(dir) {
            return Err(invalid(
                dir,
                format!(
                    "the log directory is not inside the locked directory {}",
                    lock.dir().display()
                ),
            ));
        }
        check_options(dir, &opts)?;
        create_dir_durable(dir)?;
        Log::open_locked(dir, opts, durable, lock.share())
    }

    /// Opens the log in `dir`, which `lock` covers.
    fn open_locked(
        dir: &Path,
        opts: LogOptions,
        durable: u64,
        lock: DirLock,
    ) -> Result<Log, StorageError> {
        // Segments whose deletion a crash interrupted: finish it, a slice per tick.
        let mut trash = Trash::new();
        match trash.adopt_leftovers(dir) {
            Ok(0) => {}
            Ok(n) => ::log::info!(
                "{}: {n} compacted segment(s) still to delete",
                dir.display()
            ),
            Err(e) => return Err(io_err(dir, e)),
        }
        // The same scan and the same decisions as the offline check (`inspect`): every refusal
        // happens in it, before anything below repairs a file.
        let found = logscan::scan_log_dir(dir, durable, false, &mut |p| Segment::open_raw(p))?;
        for tmp in &found.temp_segments {
            // An allocation that a crash (or an error whose cleanup failed) interrupted before
            // the rename: never part of the log.
            ::log::warn!(
                "{}: {}; removing it",
                tmp.display(),
                super::segment::describe_temp(tmp)
            );
            fs::remove_file(tmp).map_err(|e| io_err(tmp, e))?;
        }
        if let Some(path) = &found.torn_creation {
            ::log::warn!(
                "{}: empty segment with an unwritten header (torn creation); removing it",
                path.display()
            );
            fs::remove_file(path).map_err(|e| io_err(path, e))?;
        }
        if !found.temp_segments.is_empty() || found.torn_creation.is_some() {
            sync_dir(dir)?;
        }
        let n = found.segments.len();
        let mut segs: Vec<Segment> = Vec::with_capacity(n);
        for (
            i,
            logscan::ScannedSegment {
                path,
                mut map,
                scan,
            },
        ) in found.segments.into_iter().enumerate()
        {
            let is_last = i + 1 == n;
            if scan.dirty_end > scan.end {
                match &scan.tail {
                    Some((off, what)) => ::log::warn!(
                        "{}: torn tail at byte {off}: {what}; truncating the log to index {}",
                        path.display(),
                        scan.first_index + scan.offsets.len() as u64 - 1
                    ),
                    None => ::log::warn!(
                        "{}: stray bytes after the last record at byte {}; clearing them",
                        path.display(),
                        scan.end
                    ),
                }
                map.clear(&path, scan.end, scan.dirty_end)?;
            }
            let extend = if is_last {
                Some(opts.segment_size.max(map.as_ref().len() as u64))
            } else {
                None
            };
            let seg = Segment::from_scan(path, map, scan, extend)?;
            if is_last {
                seg.prepare_tail_for_appends();
            }
            segs.push(seg);
        }
        let mut log = Log {
            dir: dir.to_path_buf(),
            opts,
            segs,
            snap_index: found.snap_index,
            snap_term: found.snap_term,
            trash,
            spare: None,
            _lock: lock,
        };
        log.apply_snapshot_boundary(found.stale)?;
        Ok(log)
    }

    /// Brings the segments in line with the snapshot boundary after open: finishes an
    /// interrupted reset (`stale`, decided by the scan) or compaction, and checks the log
    /// starts where the snapshot ends.
    fn apply_snapshot_boundary(&mut self, stale: bool) -> Result<(), StorageError> {
        let si = self.snap_index;
        if stale {
            ::log::warn!(
                "{}: log does not match the snapshot at ({si}, {}) (interrupted reset); dropping it",
                self.dir.display(),
                self.snap_term
            );
            self.remove_segments(0)?;
        }
        // Whole segments below the snapshot (an interrupted compaction).
        self.remove_compacted(si)?;
        match self.segs.first() {
            None => {
                let seg = Segment::create(&self.dir, self.opts.segment_size, si + 1)?;
                self.segs.push(seg);
            }
            Some(s) if s.first_index() > si + 1 => {
                return Err(StorageError::Corrupt {
                    path: s.path().to_path_buf(),
                    offset: 24,
                    what: format!(
                        "log starts at index {} but the snapshot only covers up to {si}: entries are missing",
                        s.first_index()
                    ),
                });
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Deletes segments `[from..]` durably, newest first, so a crash part way leaves a
    /// contiguous log (never a gap). The files are renamed into the trash; their space is freed
    /// by [`Log::trash_step`].
    fn remove_segments(&mut self, from: usize) -> Result<(), StorageError> {
        while self.segs.len() > from {
            let s = self.segs.pop().expect("checked non-empty");
            discard_segment(&mut self.trash, s)?;
        }
        sync_dir(&self.dir)
    }

    /// Deletes, oldest first and durably, the segments whose entries are all <= `index`, but
    /// never the last (active) segment. A crash part way leaves a contiguous log.
    fn remove_compacted(&mut self, index: u64) -> Result<(), StorageError> {
        let mut k = 0;
        while k + 1 < self.segs.len() && self.segs[k].last_index() <= index {
            k += 1;
        }
        if k == 0 {
            return Ok(());
        }
        for s in self.segs.drain(..k) {
            discard_segment(&mut self.trash, s)?;
        }
        sync_dir(&self.dir)
    }

    /// Frees the space of compacted segments for about `budget` of wall time (see
    /// [`crate::storage::trash`]); call it regularly (the server: once per tick). Returns the
    /// bytes freed.
    pub fn trash_step(&mut self, budget: std::time::Duration) -> u64 {
        self.trash.step(budget)
    }

    /// Bytes and files of compacted segments not deleted yet.
    pub fn trash_pending(&self) -> (u64, usize) {
        (self.trash.pending_bytes(), self.trash.pending_files())
    }

    /// Deletes every compacted segment now, however long it takes.
    pub fn empty_trash(&mut self) {
        self.trash.empty_now();
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segs.len()
    }

    /// Paths of the segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segs.iter().map(|s| s.path().to_path_buf()).collect()
    }

    /// Appends entries. If `entries[0].index <= last_index()`, the suffix from that index is
    /// truncated first. Indexes must be contiguous. Not durable until `sync`.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let max_rec = self.opts.segment_size as usize - SEG_HEADER_LEN;
        if first.index > record::MAX_INDEX {
            return Err(invalid(
                &self.dir,
                format!("append: implausible index {}", first.index),
            ));
        }
        for (i, e) in entries.iter().enumerate() {
            if e.index != first.index + i as u64 {
                return Err(invalid(
                    &self.dir,
                    format!("append: entries not contiguous at index {}", e.index),
                ));
            }
            if record::record_len(e.data.len()) > max_rec {
                return Err(invalid(
                    &self.dir,
                    format!(
                        "append: entry {} of {} bytes does not fit in a {}-byte segment",
                        e.index,
                        e.data.len(),
                        self.opts.segment_size
                    ),
                ));
            }
        }
        if first.index <= self.snap_index || first.index > self.last_index() + 1 {
            return Err(invalid(
                &self.dir,
                format!(
                    "append at index {} outside the log [{}, {}]",
                    first.index,
                    self.first_index(),
                    self.last_index() + 1
                ),
            ));
        }
        if first.index <= self.last_index() {
            self.truncate_suffix(first.index)?;
        }
        if let Err(e) = self.append_contiguous(entries) {
            if e.is_no_space() {
                // All or nothing: a follower must not hold (and later ack) part of what it
                // could not log. The cut is zeroed and synced in place (no new blocks needed).
                self.truncate_suffix(first.index)?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Allocates the next segment now if none is waiting (see [`Spare`]), so the disk filling
    /// up is noticed while the active segment still has room. An error leaves no file behind;
    /// call again later (the server: after each append and from a timer).
    pub fn ensure_spare(&mut self) -> Result<(), StorageError> {
        if self.spare.is_none() {
            self.spare = Some(Spare::allocate(&self.dir, self.opts.segment_size)?);
        }
        Ok(())
    }

    /// True when the next segment is allocated.
    pub fn has_spare(&self) -> bool {
        self.spare.is_some()
    }

    /// The next segment starting at `first`: the spare if one is waiting, else allocated now.
    fn next_segment(&mut self, first: u64) -> Result<Segment, StorageError> {
        match self.spare.take() {
            Some(spare) => Segment::from_spare(&self.dir, spare, first),
            None => Segment::create(&self.dir, self.opts.segment_size, first),
        }
    }

    /// The append loop of [`Log::append`], its checks done.
    fn append_contiguous(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        for e in entries {
            let active = self.segs.last_mut().expect("log has a segment");
            if !active.append(e) {
                // Seal the full segment durably before the next one exists, so only the last
                // segment can ever have a torn tail.
                active.flush()?;
                // Its pages are on disk: drop them from our resident set.
                active.release(0, active.file_len());
                active.sealed();
                let mut seg = self.next_segment(e.index)?;
                let ok = seg.append(e);
                debug_assert!(ok);
                self.segs.push(seg);
            }
        }
        Ok(())
    }

    /// Makes everything appended so far durable, with one flush per dirty segment (normally one
    /// msync of the dirty range of the active segment).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        for s in self.segs.iter_mut() {
            s.flush()?;
        }
        Ok(())
    }

    /// Removes entries with index >= `from`. Durable on return (it syncs).
    pub fn truncate_suffix(&mut self, from: u64) -> Result<(), StorageError> {
        if from > self.last_index() {
            return Ok(());
        }
        if from <= self.snap_index {
            return Err(invalid(
                &self.dir,
                format!(
                    "truncate_suffix({from}) at or below the snapshot index {}",
                    self.snap_index
                ),
            ));
        }
        // Whole segments starting at or after `from` go (durably, so they cannot reappear
        // after a crash next to a shorter predecessor); segment 0 always stays.
        let k = self.segs.partition_point(|s| s.first_index() < from).max(1);
        if k < self.segs.len() {
            self.remove_segments(k)?;
        }
        self.segs
            .last_mut()
            .expect("log has a segment")
            .truncate_from(from);
        // Make the truncation (and anything appended before it) durable now: otherwise a crash
        // could mix sectors of the old suffix with the new entries that replace it, which is
        // indistinguishable from corruption in the middle of the log. Conflicts are rare.
        self.sync()
    }

    /// Records that a snapshot covers everything up to (index, term) and discards the log
    /// prefix up to it (whole segments only; entries above `index` stay readable).
    /// A snapshot beyond the last index, or one whose term disagrees with the log, resets it.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        if index <= self.snap_index {
            return Ok(());
        }
        if index > self.last_index() || self.term(index) != Ok(term) {
            return self.reset(index, term);
        }
        write_meta(&self.dir, index, term)?;
        self.snap_index = index;
        self.snap_term = term;
        self.remove_compacted(index)
    }

    /// Checks the log's in-memory index against itself and the meta boundary (logcabin's
    /// `checkInvariants`): segments are contiguous (each starts right after the previous one's
    /// last index), record offsets increase and end within `end`, each record's header names
    /// the index of its position, terms never decrease, and the log starts at or before the
    /// snapshot boundary with the entry at the boundary (if still held) of the snapshot term.
    /// O(entries): the server runs it after every append in debug builds
    /// (`server/ready_shell.rs`); the tests run it after each kind of mutation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut prev_term = 0;
        for (k, seg) in self.segs.iter().enumerate() {
            if let Some(next) = self.segs.get(k + 1) {
                if next.first_index() != seg.last_index() + 1 {
                    return Err(format!(
                        "segment {} starts at {} after segment ending at {}",
                        next.path().display(),
                        next.first_index(),
                        seg.last_index()
                    ));
                }
            }
            let mut prev_off = None;
            for (i, &off) in seg.offsets().iter().enumerate() {
                let index = seg.first_index() + i as u64;
                if prev_off.is_some_and(|p| off <= p) || off as usize >= seg.end() {
                    return Err(format!(
                        "{}: bad offset {off} of index {index}",
                        seg.path().display()
                    ));
                }
                prev_off = Some(off);
                let h = seg.header(index);
                if h.index != index || h.term < prev_term {
                    return Err(format!(
                        "{}: record at offset {off} is ({}, {}), expected index {index} with term >= {prev_term}",
                        seg.path().display(),
                        h.index,
                        h.term
                    ));
                }
                prev_term = h.term;
            }
        }
        if let Some(first) = self.segs.first() {
            if first.first_index() > self.snap_index + 1 {
                return Err(format!(
                    "log starts at {} above the snapshot boundary {}",
                    first.first_index(),
                    self.snap_index
                ));
            }
            let (lo, hi) = (
                first.first_index(),
                self.segs[self.segs.len() - 1].last_index(),
            );
            if (lo..=hi).contains(&self.snap_index)
                && self.seg_for(self.snap_index).header(self.snap_index).term != self.snap_term
            {
                return Err(format!(
                    "entry at the snapshot boundary {} has another term than {}",
                    self.snap_index, self.snap_term
                ));
            }
        }
        Ok(())
    }

    /// Drops every entry and restarts the log right after an installed snapshot (index, term).
    pub fn reset(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        if index > record::MAX_INDEX {
            return Err(invalid(
                &self.dir,
                format!("reset to implausible index {index}"),
            ));
        }
        write_meta(&self.dir, index, term)?;
        self.snap_index = index;
        self.snap_term = term;
        self.remove_segments(0)?;
        let seg = Segment::create(&self.dir, self.opts.segment_size, index + 1)?;
        self.segs.push(seg);
        Ok(())
    }

    fn seg_for(&self, index: u64) -> &Segment {
        let k = self.segs.partition_point(|s| s.first_index() <= index);
        &self.segs[k.saturating_sub(1)]
    }

    /// Streams entries `[from, to]` in order without loading them all. The range is clamped to
    /// `[first_index, last_index]`. Mapped pages are released as the replay advances, so
    /// replaying a huge log keeps resident memory small.
    pub fn replay(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(Entry) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let from = from.max(self.first_index());
        let to = to.min(self.last_index());
        let mut i = from;
        while i <= to {
            let seg = self.seg_for(i);
            let end = to.min(seg.last_index());
            let start_off = seg.offsets()[(i - seg.first_index()) as usize] as usize;
            let mut released = start_off;
            while i <= end {
                let e = seg.entry(i);
                let off = seg.offsets()[(i - seg.first_index()) as usize] as usize;
                if off - released >= RELEASE_EVERY {
                    seg.release(released, off);
                    released = off;
                }
                f(e)?;
                i += 1;
            }
            seg.release(released, seg.end());
        }
        Ok(())
    }

    /// Bytes used by records (headers included) of the entries still held.
    pub fn bytes(&self) -> u64 {
        self.segs
            .iter()
            .map(|s| (s.end() - SEG_HEADER_LEN) as u64)
            .sum()
    }
}

impl Drop for Log {
    /// A clean close leaves no spare behind (what a crash leaves, `Log::open` removes).
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.remove();
        }
    }
}

impl LogStore for Log {
    fn snapshot_index_term(&self) -> (u64, u64) {
        (self.snap_index, self.snap_term)
    }
    fn first_index(&self) -> u64 {
        self.snap_index + 1
    }
    fn last_index(&self) -> u64 {
        self.segs
            .last()
            .map_or(self.snap_index, |s| s.last_index())
            .max(self.snap_index)
    }
    fn term(&self, index: u64) -> Result<u64, LogError> {
        if index == self.snap_index {
            return Ok(self.snap_term);
        }
        if index < self.snap_index {
            return Err(LogError::Compacted);
        }
        if index > self.last_index() {
            return Err(LogError::Unavailable);
        }
        Ok(self.seg_for(index).header(index).term)
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
        if lo <= self.snap_index {
            return Err(LogError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(LogError::Unavailable);
        }
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut i = lo;
        while i < hi {
            let e = self.seg_for(i).entry(i);
            total += e.encoded_len() as u64;
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(e);
            i += 1;
        }
        Ok(out)
    }
}
