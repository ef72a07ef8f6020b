//! Snapshot files: a header with the metadata, the payload as a stream of CRC'd chunks, and a
//! trailer with the total size and CRC. Written to a temp file, fsynced and renamed into place.
//!
//! File layout (little endian):
//! ```text
//! header:  8 magic "RKVSNAP1" | 4 version (1) | 4 meta length m | m bytes protobuf SnapshotMeta
//!          | 4 CRC32 of all preceding header bytes
//! chunks:  4 length n (1..=1 MiB) | 4 CRC32 of the data | n bytes data      (repeated)
//! end:     4 zero bytes (a chunk of length 0)
//! trailer: 8 magic "RKVSEND1" | 8 payload bytes | 4 CRC32 of the whole payload
//!          | 4 CRC32 of the preceding 20 trailer bytes
//! ```
//! Nothing may follow the trailer. Files are named `snap-<index:020>-<term:020>.snap`; the
//! newest two (by index, then term) are kept.

use super::fsutil::{create_dir_durable, io_err, sync_dir};
use super::record::{le_u32, le_u64};
use super::StorageError;
use crate::raft::SnapshotMeta;
use prost::Message;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::trash::Trash;

const MAGIC: &[u8; 8] = b"RKVSNAP1";
const END_MAGIC: &[u8; 8] = b"RKVSEND1";
const VERSION: u32 = 1;
/// Chunk size the writer uses.
const CHUNK: usize = 64 << 10;
/// Largest chunk a reader accepts.
const MAX_CHUNK: usize = 1 << 20;
const MAX_META: usize = 1 << 20;
const KEEP: usize = 2;

/// File name of the snapshot covering (index, term).
pub fn file_name(index: u64, term: u64) -> String {
    format!("snap-{index:020}-{term:020}.snap")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (i, t) = rest.split_once('-')?;
    Some((i.parse().ok()?, t.parse().ok()?))
}

/// The snapshot directory: newest two snapshot files.
pub struct SnapshotStore {
    dir: PathBuf,
    /// Pruned snapshot files waiting to be deleted ([`SnapshotStore::trash_step`]).
    trash: Trash,
}

/// Writes one snapshot as CRC'd chunks to a temp file; `finish` fsyncs and renames it.
/// Dropping it unfinished (or `abort`) deletes the temp file.
pub struct SnapshotWriter {
    dir: PathBuf,
    tmp: PathBuf,
    dest: PathBuf,
    out: Option<BufWriter<File>>,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    total: u64,
    /// File bytes written through `out` (header included); of them, `[prev, synced)` is the
    /// slice whose writeback was started last and `[0, prev)` is known to be on disk.
    written: u64,
    synced: u64,
    prev: u64,
    /// Bytes per slice: after each, its writeback is started and the previous slice's awaited.
    slice: u64,
    /// Called with each slice's size once its writeback was started (a snapshot child sleeps
    /// here to cap its disk bandwidth, see `set_pacing`).
    pace: Option<Box<dyn FnMut(u64) + Send>>,
}

/// By default a snapshot being written is pushed to disk every this many bytes (a received
/// snapshot, written from the reactor). A paced writer uses smaller slices (`set_pacing`).
const SYNC_EVERY: u64 = 8 << 20;

/// `sync_file_range` on `[from, from + len)` of `f`. Only a hint: errors are ignored (`finish`
/// still fsyncs).
fn sync_range(f: &File, from: u64, len: u64, flags: libc::c_uint) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return;
    }
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}

impl SnapshotWriter {
    fn write_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("snapshot writer already closed"))?;
        out.write_all(&(self.buf.len() as u32).to_le_bytes())?;
        out.write_all(&crc32fast::hash(&self.buf).to_le_bytes())?;
        out.write_all(&self.buf)?;
        self.written += (8 + self.buf.len()) as u64;
        self.buf.clear();
        if self.written - self.synced >= self.slice {
            out.flush()?;
            // Keep the dirty data of this file to about two slices, the way Redis'
            // `rdb-save-incremental-fsync` does: left to the kernel, a large snapshot's dirty
            // pages pile up and reach the disk in bursts that fill the device queue, and the
            // node's log fsyncs (same disk) wait behind them. Start writing the new slice
            // without waiting for it, then wait for the previous one (normally long done, so
            // a writer in the reactor is not blocked on the disk for the slice just written).
            let f = out.get_ref();
            sync_range(
                f,
                self.synced,
                self.written - self.synced,
                libc::SYNC_FILE_RANGE_WRITE,
            );
            sync_range(
                f,
                self.prev,
                self.synced - self.prev,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            let n = self.written - self.synced;
            self.prev = self.synced;
            self.synced = self.written;
            if let Some(pace) = self.pace.as_mut() {
                pace(n);
            }
        }
        Ok(())
    }

    /// Writes in slices of `slice` bytes (at least one chunk) and calls `pace(bytes)` after
    /// each slice was handed to the disk. A snapshot child process uses it to throttle its disk
    /// bandwidth (the callback sleeps); never install a sleeping callback in the reactor.
    pub fn set_pacing(&mut self, slice: u64, pace: Box<dyn FnMut(u64) + Send>) {
        self.slice = slice.max(CHUNK as u64);
        self.pace = Some(pace);
    }

    /// Payload bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.total
    }

    /// CRC32 of the payload written so far (compare with the sender's `InstallSnapshot::crc`).
    pub fn payload_crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// Seals, syncs and publishes the snapshot (pruning all but the newest two); returns its
    /// path.
    pub fn finish(self) -> Result<PathBuf, StorageError> {
        self.seal()?.publish()
    }

    /// Writes the end marker and trailer and fsyncs the temp file, without publishing it: the
    /// complete file can then be validated ([`SealedSnapshot::path`]) before
    /// [`SealedSnapshot::publish`]. Dropping the result deletes the temp file.
    pub fn seal(mut self) -> Result<SealedSnapshot, StorageError> {
        let tmp = self.tmp.clone();
        let io = |e| io_err(&tmp, e);
        self.write_chunk().map_err(io)?;
        let mut trailer = [0u8; 24];
        trailer[0..8].copy_from_slice(END_MAGIC);
        trailer[8..16].copy_from_slice(&self.total.to_le_bytes());
        trailer[16..20].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        let c = crc32fast::hash(&trailer[0..20]);
        trailer[20..24].copy_from_slice(&c.to_le_bytes());
        let mut out = self.out.take().ok_or_else(|| {
            io_err(
                &self.tmp,
                io::Error::other("snapshot writer already closed"),
            )
        })?;
        // From here on the temp file is the SealedSnapshot's to delete.
        let sealed = SealedSnapshot {
            dir: self.dir.clone(),
            tmp: self.tmp.clone(),
            dest: self.dest.clone(),
            published: false,
        };
        out.write_all(&0u32.to_le_bytes())
            .and_then(|_| out.write_all(&trailer))
            .and_then(|_| out.flush())
            .map_err(io)?;
        let file = out
            .into_inner()
            .map_err(|e| io_err(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(sealed)
    }

    /// Abandons the snapshot and deletes the temp file.
    pub fn abort(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A complete, synced snapshot file not yet in the snapshot directory's set (still its temp
/// name): validate it through [`SealedSnapshot::path`], then [`SealedSnapshot::publish`] it, or
/// drop it (deletes the file).
pub struct SealedSnapshot {
    dir: PathBuf,
    tmp: PathBuf,
    dest: PathBuf,
    published: bool,
}

impl SealedSnapshot {
    /// The sealed temp file (readable with [`SnapshotReader`]).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames it into place, fsyncs the directory and prunes all but the newest two; returns
    /// the published path.
    pub fn publish(mut self) -> Result<PathBuf, StorageError> {
        fs::rename(&self.tmp, &self.dest).map_err(|e| io_err(&self.dest, e))?;
        self.published = true;
        sync_dir(&self.dir)?;
        prune_dir(&self.dir)?;
        Ok(self.dest.clone())
    }
}

impl Drop for SealedSnapshot {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        self.discard();
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.total += n as u64;
        if self.buf.len() == CHUNK {
            self.write_chunk()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a snapshot file's payload as a stream, verifying each chunk's CRC, and at the end the
/// trailer's size and whole-payload CRC. Damage is an `InvalidData` error naming file and offset.
pub struct SnapshotReader {
    pub meta: SnapshotMeta,
    path: PathBuf,
    input: BufReader<File>,
    /// File offset of the next byte to read from `input`.
    offset: u64,
    chunk: Vec<u8>,
    pos: usize,
    crc: crc32fast::Hasher,
    total: u64,
    done: bool,
}

/// Damage found while reading a snapshot, carried inside an `io::Error` (InvalidData).
#[derive(Debug)]
struct Damage {
    path: PathBuf,
    offset: u64,
    what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: corrupt at byte {}: {}",
            self.path.display(),
            self.offset,
            self.what
        )
    }
}

impl std::error::Error for Damage {}

fn bad(path: &Path, offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Damage {
            path: path.to_path_buf(),
            offset,
            what: what.to_string(),
        },
    )
}

fn to_storage(path: &Path, e: io::Error) -> StorageError {
    match e.get_ref().and_then(|x| x.downcast_ref::<Damage>()) {
        Some(d) => StorageError::Corrupt {
            path: d.path.clone(),
            offset: d.offset,
            what: d.what.clone(),
        },
        None => io_err(path, e),
    }
}

impl SnapshotReader {
    /// Opens a snapshot file by path and checks its header.
    pub fn open(path: &Path) -> Result<SnapshotReader, StorageError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let mut input = BufReader::with_capacity(CHUNK, file);
        let mut head = [0u8; 16];
        read_exact_at(
            &mut input,
            &mut head,
            path,
            0,
            "file shorter than the header",
        )
        .map_err(|e| to_storage(path, e))?;
        let corrupt = |offset: u64, what: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            what,
        };
        if &head[0..8] != MAGIC {
            return Err(corrupt(0, "bad magic (not a raftkv snapshot file)".into()));
        }
        let version = le_u32(&head, 8);
        if version != VERSION {
            return Err(corrupt(
                8,
                format!("unsupported snapshot version {version}"),
            ));
        }
        let mlen = le_u32(&head, 12) as usize;
        if mlen > MAX_META {
            return Err(corrupt(12, format!("metadata length {mlen} too large")));
        }
        let mut rest = vec![0u8; mlen + 4];
        read_exact_at(&mut input, &mut rest, path, 16, "header truncated")
            .map_err(|e| to_storage(path, e))?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(&rest[..mlen]);
        let want = le_u32(&rest, mlen);
        if h.finalize() != want {
            return Err(corrupt(16 + mlen as u64, "header CRC mismatch".into()));
        }
        let meta = SnapshotMeta::decode(&rest[..mlen])
            .map_err(|e| corrupt(16, format!("undecodable metadata: {e}")))?;
        Ok(SnapshotReader {
            meta,
            path: path.to_path_buf(),
            input,
            offset: 16 + mlen as u64 + 4,
            chunk: Vec::new(),
            pos: 0,
            crc: crc32fast::Hasher::new(),
            total: 0,
            done: false,
        })
    }

    /// Opens `path` and reads it to the end, checking every CRC; returns the metadata.
    pub fn verify(path: &Path) -> Result<SnapshotMeta, StorageError> {
        let mut r = SnapshotReader::open(path)?;
        io::copy(&mut r, &mut io::sink()).map_err(|e| to_storage(path, e))?;
        Ok(r.meta)
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Payload bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.total
    }

    /// CRC32 of the payload read so far (the whole payload's once the reader returned EOF).
    pub fn payload_crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        read_exact_at(&mut self.input, buf, &self.path, self.offset, what)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Loads the next chunk; at the end marker checks the trailer and sets `done`.
    fn next_chunk(&mut self) -> io::Result<()> {
        let at = self.offset;
        let mut h = [0u8; 4];
        self.read_exact(&mut h, "truncated: missing chunk header or trailer")?;
        let len = u32::from_le_bytes(h) as usize;
        if len == 0 {
            return self.trailer();
        }
        if len > MAX_CHUNK {
            return Err(bad(
                &self.path,
                at,
                &format!("chunk length {len} too large"),
            ));
        }
        let mut c = [0u8; 4];
        self.read_exact(&mut c, "truncated chunk header")?;
        self.chunk.resize(len, 0);
        let mut data = std::mem::take(&mut self.chunk);
        let r = self.read_exact(&mut data, "truncated chunk");
        self.chunk = data;
        r?;
        if crc32fast::hash(&self.chunk) != u32::from_le_bytes(c) {
            return Err(bad(&self.path, at, "chunk CRC mismatch"));
        }
        self.crc.update(&self.chunk);
        self.total += len as u64;
        self.pos = 0;
        Ok(())
    }

    fn trailer(&mut self) -> io::Result<()> {
        let at = self.offset;
        let mut t = [0u8; 24];
        self.read_exact(&mut t, "truncated trailer")?;
        if &t[0..8] != END_MAGIC {
            return Err(bad(&self.path, at, "bad trailer magic"));
        }
        if crc32fast::hash(&t[0..20]) != le_u32(&t, 20) {
            return Err(bad(&self.path, at, "trailer CRC mismatch"));
        }
        let total = le_u64(&t, 8);
        if total != self.total {
            return Err(bad(
                &self.path,
                at,
                &format!("trailer says {total} payload bytes, read {}", self.total),
            ));
        }
        if le_u32(&t, 16) != self.crc.clone().finalize() {
            return Err(bad(&self.path, at, "payload CRC mismatch"));
        }
        let mut extra = [0u8; 1];
        if self.input.read(&mut extra)? != 0 {
            return Err(bad(&self.path, self.offset, "data after the trailer"));
        }
        self.done = true;
        self.chunk.clear();
        self.pos = 0;
        Ok(())
    }
}

fn read_exact_at(
    input: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    offset: u64,
    what: &str,
) -> io::Result<()> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(bad(path, offset, what)),
        Err(e) => Err(e),
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Snapshot files in `dir`, newest first: (index, term, path).
pub fn list(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, StorageError> {
    let mut v = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io_err(dir, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| io_err(dir, e))?;
        if let Some((i, t)) = ent.file_name().to_str().and_then(parse_name) {
            v.push((i, t, ent.path()));
        }
    }
    v.sort_by_key(|b| std::cmp::Reverse((b.0, b.1)));
    Ok(v)
}

/// Moves all but the newest [`KEEP`] snapshot files aside (renamed `*.snap.trash`, see
/// [`super::trash`]): they are out of every listing at once, and deleted later in small slices
/// by whoever owns the directory's [`SnapshotStore`] (or the snapshot child), because unlinking
/// a few hundred MB at once costs the disk's journal (and so every log fsync) a long pause.
fn prune_dir(dir: &Path) -> Result<(), StorageError> {
    let all = list(dir)?;
    if all.len() <= KEEP {
        return Ok(());
    }
    for (_, _, p) in &all[KEEP..] {
        super::trash::move_aside(p).map_err(|e| io_err(p, e))?;
    }
    sync_dir(dir)
}

impl SnapshotStore {
    /// Opens (or creates) the snapshot directory; removes temp files left by a crash.
    pub fn open(dir: &Path) -> Result<SnapshotStore, StorageError> {
        create_dir_durable(dir)?;
        for ent in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let ent = ent.map_err(|e| io_err(dir, e))?;
            if ent
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".snap.tmp"))
            {
                let p = ent.path();
                fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
            }
        }
        let mut trash = Trash::new();
        trash.adopt_leftovers(dir).map_err(|e| io_err(dir, e))?;
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
            trash,
        })
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts writing a new snapshot covering `meta`. Used both by a node snapshotting its own
    /// state and by a follower receiving one from the network: write the payload bytes as they
    /// arrive, then `finish` (installs atomically) or `abort` (deletes the temp file).
    pub fn create(&mut self, meta: &SnapshotMeta) -> Result<SnapshotWriter, StorageError> {
        let name = file_name(meta.index, meta.term);
        let dest = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        let mut out = BufWriter::with_capacity(CHUNK + 16, file);
        let m = meta.encode_to_vec();
        let mut head = Vec::with_capacity(20 + m.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(m.len() as u32).to_le_bytes());
        head.extend_from_slice(&m);
        let crc = crc32fast::hash(&head);
        head.extend_from_slice(&crc.to_le_bytes());
        out.write_all(&head).map_err(|e| io_err(&tmp, e))?;
        Ok(SnapshotWriter {
            dir: self.dir.clone(),
            tmp,
            dest,
            out: Some(out),
            buf: Vec::with_capacity(CHUNK),
            crc: crc32fast::Hasher::new(),
            total: 0,
            written: head.len() as u64,
            synced: 0,
            prev: 0,
            slice: SYNC_EVERY,
            pace: None,
        })
    }

    /// Snapshot files present, newest first: (index, term, path). Not verified.
    pub fn list(&self) -> Result<Vec<(u64, u64, PathBuf)>, StorageError> {
        list(&self.dir)
    }

    /// The newest valid snapshot (falling back to the previous one with a warning if the newest
    /// is corrupt), or None. Each candidate is read through once to check every CRC. If
    /// snapshots exist but none is valid, the newest one's error is returned.
    pub fn latest(&self) -> Result<Option<SnapshotReader>, StorageError> {
        let mut first_err = None;
        for (_, _, path) in self.list()? {
            match SnapshotReader::verify(&path) {
                Ok(_) => return SnapshotReader::open(&path).map(Some),
                Err(e) => {
                    ::log::warn!(
                        "snapshot {} is unusable ({e}); trying an older one",
                        path.display()
                    );
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Moves all but the newest two snapshots aside for deletion (by [`Self::trash_step`]).
    /// Also picks up files that a finished [`SnapshotWriter`] (here or in the snapshot child)
    /// moved aside.
    pub fn prune(&mut self) -> Result<(), StorageError> {
        prune_dir(&self.dir)?;
        self.trash
            .adopt_leftovers(&self.dir)
            .map_err(|e| io_err(&self.dir, e))?;
        Ok(())
    }

    /// Deletes pruned snapshot files for about `budget` of wall time (a slice at least);
    /// returns the bytes freed. Call it regularly (the server: once per tick).
    pub fn trash_step(&mut self, budget: std::time::Duration) -> u64 {
        self.trash.step(budget)
    }

    /// In a forked child: forgets the inherited queue *without closing* its descriptors (the
    /// child closed them at start, and their numbers may have been reused since). Deletion in
    /// the child then works from a fresh queue ([`Self::prune`] adopts the files again).
    pub fn forget_inherited_trash(&mut self) {
        std::mem::forget(std::mem::take(&mut self.trash));
    }

    /// Bytes and files of pruned snapshots not deleted yet.
    pub fn trash_pending(&self) -> (u64, usize) {
        (self.trash.pending_bytes(), self.trash.pending_files())
    }
}
