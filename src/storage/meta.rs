//! `log/meta`: the log's snapshot boundary (the index and term the log was compacted or reset
//! to), 32 bytes with a CRC, replaced atomically (temp file, fsync, rename, fsync the dir).
//!
//! ```text
//!  0  8  magic "RKVMETA1"
//!  8  8  snapshot index
//! 16  8  snapshot term
//! 24  4  CRC32 of bytes 0..24
//! 28  4  zero
//! ```

use super::fsutil::{io_err, write_atomic};
use super::record;
use super::StorageError;
use std::fs;
use std::path::Path;

pub const META_FILE: &str = "meta";
const META_MAGIC: &[u8; 8] = b"RKVMETA1";
const META_LEN: usize = 32;

/// Encodes the meta file: magic, snapshot index, snapshot term, CRC32 of bytes 0..24, 4 zero bytes.
fn encode_meta(index: u64, term: u64) -> [u8; META_LEN] {
    let mut b = [0u8; META_LEN];
    b[0..8].copy_from_slice(META_MAGIC);
    b[8..16].copy_from_slice(&index.to_le_bytes());
    b[16..24].copy_from_slice(&term.to_le_bytes());
    let crc = crc32fast::hash(&b[0..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads the snapshot boundary from `dir/meta`; (0, 0) when the file does not exist.
pub fn read_meta(dir: &Path) -> Result<(u64, u64), StorageError> {
    let path = dir.join(META_FILE);
    let b = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io_err(&path, e)),
    };
    let corrupt = |offset: u64, what: &str| StorageError::Corrupt {
        path: path.clone(),
        offset,
        what: what.to_string(),
    };
    if b.len() != META_LEN {
        return Err(corrupt(
            0,
            &format!("meta file is {} bytes, expected {META_LEN}", b.len()),
        ));
    }
    if &b[0..8] != META_MAGIC {
        return Err(corrupt(0, "bad meta magic"));
    }
    if crc32fast::hash(&b[0..24]) != record::le_u32(&b, 24) {
        return Err(corrupt(24, "meta CRC mismatch"));
    }
    let index = record::le_u64(&b, 8);
    if index > record::MAX_INDEX {
        return Err(corrupt(8, &format!("implausible snapshot index {index}")));
    }
    Ok((index, record::le_u64(&b, 16)))
}

/// Durably replaces `dir/meta` (temp file + fsync + rename + fsync dir).
pub fn write_meta(dir: &Path, index: u64, term: u64) -> Result<(), StorageError> {
    write_atomic(dir, META_FILE, &encode_meta(index, term))
}
