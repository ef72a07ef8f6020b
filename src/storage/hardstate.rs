//! The hard state file: two CRC'd slots written alternately, so a torn update leaves the
//! previous state readable (one pwrite + one fdatasync per save, no rename).
//!
//! File layout (1024 bytes): slot 0 at byte 0, slot 1 at byte 512 (separate sectors).
//! Each slot (48 bytes used, little endian):
//! ```text
//!  0  8  magic "RKVHARD1"
//!  8  8  sequence number (higher = newer; the writer alternates slots)
//! 16  8  term
//! 24  8  vote
//! 32  8  commit
//! 40  4  CRC32 of bytes 0..40
//! 44  4  zero
//! ```
//! The current state is the valid slot with the highest sequence number; no valid slot and an
//! all-zero file means the default state.

use super::fsutil::{create_dir_durable, io_err, sync_dir};
use super::record::{le_u32, le_u64};
use super::StorageError;
use crate::raft::HardState;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const HARDSTATE_FILE: &str = "hardstate";
const MAGIC: &[u8; 8] = b"RKVHARD1";
const SLOT: u64 = 512;
const SLOT_LEN: usize = 48;
const FILE_LEN: u64 = 2 * SLOT;

/// The hard state file, updated atomically and durably.
pub struct HardStateFile {
    path: PathBuf,
    file: File,
    seq: u64,
}

fn encode(seq: u64, hs: &HardState) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&hs.term.to_le_bytes());
    b[24..32].copy_from_slice(&hs.vote.to_le_bytes());
    b[32..40].copy_from_slice(&hs.commit.to_le_bytes());
    let crc = crc32fast::hash(&b[0..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u64, HardState)> {
    if b.len() < SLOT_LEN || &b[0..8] != MAGIC || crc32fast::hash(&b[0..40]) != le_u32(b, 40) {
        return None;
    }
    if le_u64(b, 8) > u64::MAX / 4
        || le_u64(b, 16) > super::record::MAX_TERM
        || le_u64(b, 32) > super::record::MAX_INDEX
    {
        // Implausible sequence number, term or commit (keeps `+ 1` on them safe): not a slot
        // this code wrote.
        return None;
    }
    Some((
        le_u64(b, 8),
        HardState {
            term: le_u64(b, 16),
            vote: le_u64(b, 24),
            commit: le_u64(b, 32),
        },
    ))
}

/// Parses hard state file contents: (newest sequence number, state).
pub fn parse(path: &Path, b: &[u8]) -> Result<(u64, HardState), StorageError> {
    let slots = [0usize, SLOT as usize].map(|o| b.get(o..o + SLOT_LEN).and_then(decode));
    match slots {
        [Some(a), Some(c)] => Ok(if a.0 >= c.0 { a } else { c }),
        [Some(a), None] | [None, Some(a)] => Ok(a),
        [None, None] => {
            if b.iter().all(|&x| x == 0) {
                Ok((0, HardState::default()))
            } else {
                Err(StorageError::Corrupt {
                    path: path.to_path_buf(),
                    offset: 0,
                    what: "no valid hard state slot (both CRCs fail)".into(),
                })
            }
        }
    }
}

/// Reads the hard state stored in `dir` without creating anything (None: no file).
pub fn read(dir: &Path) -> Result<Option<HardState>, StorageError> {
    let path = dir.join(HARDSTATE_FILE);
    match std::fs::read(&path) {
        Ok(b) => parse(&path, &b).map(|(_, hs)| Some(hs)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, e)),
    }
}

impl HardStateFile {
    /// Opens the file in `dir`, returning the stored state (default if none yet).
    pub fn open(dir: &Path) -> Result<(HardStateFile, HardState), StorageError> {
        create_dir_durable(dir)?;
        let path = dir.join(HARDSTATE_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut b).map_err(|e| io_err(&path, e))?;
        let (seq, hs) = parse(&path, &b)?;
        if (b.len() as u64) < FILE_LEN {
            file.set_len(FILE_LEN).map_err(|e| io_err(&path, e))?;
            file.sync_all().map_err(|e| io_err(&path, e))?;
        }
        if !existed {
            sync_dir(dir)?;
        }
        Ok((HardStateFile { path, file, seq }, hs))
    }

    /// Durably replaces the stored state: writes the older slot and fdatasyncs.
    pub fn save(&mut self, hs: &HardState) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        let off = (seq % 2) * SLOT;
        self.file
            .write_all_at(&encode(seq, hs), off)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| io_err(&self.path, e))?;
        self.seq = seq;
        Ok(())
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
