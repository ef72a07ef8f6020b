//! On-disk encoding of segment headers and log records (all integers little endian).
//!
//! Segment header (64 bytes, at offset 0 of every segment file):
//! ```text
//!  0  8  magic  "RKVLOG01"
//!  8  4  version (1)
//! 12  4  header length (64)
//! 16  8  segment size the file was created with
//! 24  8  index of the first record in this segment
//! 32 28  reserved, zero
//! 60  4  CRC32 of bytes 0..60
//! ```
//! Record (32-byte header + payload), records follow each other with no padding:
//! ```text
//!  0  4  magic 0xE1C3_5AA5 (a zero magic = end of log)
//!  4  4  CRC32 of bytes 8..32 of the header followed by the payload
//!  8  4  payload length
//! 12  1  entry type (0 = normal, 1 = conf change)
//! 13  3  reserved, zero
//! 16  8  index
//! 24  8  term
//! 32  n  payload: the entry's `data` bytes
//! ```

use crate::raft::{Entry, EntryType};
use bytes::Bytes;

pub const SEG_MAGIC: &[u8; 8] = b"RKVLOG01";
pub const SEG_VERSION: u32 = 1;
pub const SEG_HEADER_LEN: usize = 64;
pub const REC_MAGIC: u32 = 0xE1C3_5AA5;
pub const REC_HEADER_LEN: usize = 32;

/// Little-endian helpers that never panic on short input (the caller checks bounds).
pub fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Encodes a segment header.
pub fn encode_seg_header(segment_size: u64, first_index: u64) -> [u8; SEG_HEADER_LEN] {
    let mut h = [0u8; SEG_HEADER_LEN];
    h[0..8].copy_from_slice(SEG_MAGIC);
    h[8..12].copy_from_slice(&SEG_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SEG_HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&segment_size.to_le_bytes());
    h[24..32].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header, returning the first index, or what is wrong with it.
pub fn decode_seg_header(b: &[u8]) -> Result<u64, String> {
    if b.len() < SEG_HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than the {SEG_HEADER_LEN}-byte segment header",
            b.len()
        ));
    }
    if &b[0..8] != SEG_MAGIC {
        return Err("bad segment magic (not a raftkv log segment)".into());
    }
    let crc = le_u32(b, 60);
    if crc32fast::hash(&b[0..60]) != crc {
        return Err("segment header CRC mismatch".into());
    }
    let version = le_u32(b, 8);
    if version != SEG_VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    let first = le_u64(b, 24);
    if first == 0 || first > MAX_INDEX {
        return Err(format!("implausible first index {first}"));
    }
    Ok(first)
}

/// Indexes above this are treated as damage (keeps `index + 1` arithmetic safe).
pub const MAX_INDEX: u64 = u64::MAX / 4;

/// Terms above this are treated as damage (from the disk) or refused (from the network), so
/// `term + 1` can never overflow.
pub const MAX_TERM: u64 = u64::MAX / 4;

/// Size of the record for an entry with `data_len` payload bytes.
pub fn record_len(data_len: usize) -> usize {
    REC_HEADER_LEN + data_len
}

/// Writes the record for `e` into `out` (which must be exactly `record_len(e.data.len())`).
pub fn encode_record(e: &Entry, out: &mut [u8]) {
    let n = e.data.len();
    out[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
    out[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    out[12] = e.entry_type as u8;
    out[13..16].copy_from_slice(&[0, 0, 0]);
    out[16..24].copy_from_slice(&e.index.to_le_bytes());
    out[24..32].copy_from_slice(&e.term.to_le_bytes());
    out[32..32 + n].copy_from_slice(&e.data);
    let mut h = crc32fast::Hasher::new();
    h.update(&out[8..32]);
    h.update(&out[32..32 + n]);
    out[4..8].copy_from_slice(&h.finalize().to_le_bytes());
}

/// A record header that passed validation.
#[derive(Debug, Clone, Copy)]
pub struct RecHeader {
    pub len: usize,
    pub entry_type: u8,
    pub index: u64,
    pub term: u64,
}

/// What was found at a record position.
#[derive(Debug)]
pub enum Probe {
    /// A valid record.
    Record(RecHeader),
    /// An all-zero header (or no room for one and only zeros left): end of log.
    End,
    /// Something that is not a valid record.
    Bad(String),
}

/// Examines the record at `pos` of `buf`, checking magic, bounds, type and CRC.
pub fn probe(buf: &[u8], pos: usize) -> Probe {
    let rest = buf.len().saturating_sub(pos);
    if rest < REC_HEADER_LEN {
        if buf[pos.min(buf.len())..].iter().all(|&b| b == 0) {
            return Probe::End;
        }
        return Probe::Bad(format!(
            "truncated record header ({rest} bytes left in file)"
        ));
    }
    let h = &buf[pos..pos + REC_HEADER_LEN];
    let magic = le_u32(h, 0);
    if magic == 0 {
        if h.iter().all(|&b| b == 0) {
            return Probe::End;
        }
        return Probe::Bad("zero record magic but non-zero header".into());
    }
    if magic != REC_MAGIC {
        return Probe::Bad(format!("bad record magic {magic:#010x}"));
    }
    let len = le_u32(h, 8) as usize;
    if len > rest - REC_HEADER_LEN {
        return Probe::Bad(format!("record length {len} runs past the end of the file"));
    }
    let crc = le_u32(h, 4);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[8..32]);
    hasher.update(&buf[pos + REC_HEADER_LEN..pos + REC_HEADER_LEN + len]);
    if hasher.finalize() != crc {
        return Probe::Bad("record CRC mismatch".into());
    }
    let entry_type = h[12];
    if EntryType::try_from(entry_type as i32).is_err() || h[13..16] != [0, 0, 0] {
        return Probe::Bad(format!("bad entry type {entry_type}"));
    }
    let term = le_u64(h, 24);
    if term > MAX_TERM {
        return Probe::Bad(format!("implausible term {term}"));
    }
    Probe::Record(RecHeader {
        len,
        entry_type,
        index: le_u64(h, 16),
        term,
    })
}

/// Where the record at `pos` claims to end, if its header is readable (right magic, length
/// within the file), whatever its CRC says.
pub fn claimed_end(buf: &[u8], pos: usize) -> Option<usize> {
    let rest = buf.len().checked_sub(pos)?;
    if rest < REC_HEADER_LEN || le_u32(buf, pos) != REC_MAGIC {
        return None;
    }
    let len = le_u32(buf, pos + 8) as usize;
    (len <= rest - REC_HEADER_LEN).then_some(pos + REC_HEADER_LEN + len)
}

/// Builds the entry for a validated record at `pos` (copies the payload).
pub fn read_entry(buf: &[u8], pos: usize, h: &RecHeader) -> Entry {
    let start = pos + REC_HEADER_LEN;
    Entry {
        index: h.index,
        term: h.term,
        entry_type: h.entry_type as i32,
        data: Bytes::copy_from_slice(&buf[start..start + h.len]),
    }
}
