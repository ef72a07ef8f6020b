//! `DIR/cluster_id`: which cluster this data directory belongs to. Created once, when the
//! cluster is bootstrapped (see `server::identity`), and never changed by the server: a
//! directory restored as a new cluster gets a new one from [`write_new`].
//!
//! ```text
//!  0  8  magic "RKVCLID1"
//!  8 16  cluster id (random, little endian u128; never 0)
//! 24  4  CRC32 of bytes 0..24
//! 28  4  zero
//! ```
//! Replaced atomically (`fsutil::write_atomic`). A missing file means "not known yet"; a
//! present but damaged one refuses startup (a node must never guess its cluster).

use super::fsutil::{io_err, write_atomic};
use super::record;
use super::StorageError;
use std::fmt;
use std::path::Path;

pub const CLUSTER_ID_FILE: &str = "cluster_id";
const MAGIC: &[u8; 8] = b"RKVCLID1";
const LEN: usize = 32;

/// A cluster's identity: 128 random bits, shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(u128);

impl ClusterId {
    /// A fresh random id (from the kernel's CSPRNG).
    pub fn random() -> std::io::Result<ClusterId> {
        loop {
            let id = u128::from_le_bytes(crate::entropy::bytes()?);
            if id != 0 {
                return Ok(ClusterId(id));
            }
        }
    }

    /// The id from its 16 wire bytes; None for all zeros ("unknown" on the wire).
    pub fn from_bytes(b: [u8; 16]) -> Option<ClusterId> {
        Some(u128::from_le_bytes(b))
            .filter(|&v| v != 0)
            .map(ClusterId)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// The id a snapshot's metadata carries (`SnapshotMeta::cluster_id`); None when it
    /// carries none (older files) or not 16 non-zero bytes.
    pub fn from_meta(b: &[u8]) -> Option<ClusterId> {
        Self::from_bytes(b.try_into().ok()?)
    }

    /// The id as a snapshot's metadata carries it (the inverse of [`from_meta`](Self::from_meta)).
    pub fn to_meta(self) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(&self.to_bytes())
    }

    /// Parses the 32-hex-digit form [`Display`](fmt::Display) prints.
    pub fn parse(s: &str) -> Option<ClusterId> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16)
            .ok()
            .filter(|&v| v != 0)
            .map(ClusterId)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

fn encode(id: ClusterId) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..8].copy_from_slice(MAGIC);
    b[8..24].copy_from_slice(&id.to_bytes());
    let crc = crc32fast::hash(&b[0..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads `dir/cluster_id`: None if the file does not exist; an error naming the file if it
/// cannot be read or is damaged.
pub fn read(dir: &Path) -> Result<Option<ClusterId>, StorageError> {
    let path = dir.join(CLUSTER_ID_FILE);
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, e)),
    };
    let corrupt = |offset: u64, what: String| StorageError::Corrupt {
        path: path.clone(),
        offset,
        what,
    };
    if b.len() != LEN {
        let what = format!("cluster id file is {} bytes, expected {LEN}", b.len());
        return Err(corrupt(0, what));
    }
    if &b[0..8] != MAGIC {
        return Err(corrupt(0, "bad cluster id magic".into()));
    }
    if crc32fast::hash(&b[0..24]) != record::le_u32(&b, 24) {
        return Err(corrupt(24, "cluster id CRC mismatch".into()));
    }
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&b[8..24]);
    ClusterId::from_bytes(raw)
        .map(Some)
        .ok_or_else(|| corrupt(8, "cluster id is zero".into()))
}

/// Durably writes `id` as `dir/cluster_id` (replacing any).
pub fn write(dir: &Path, id: ClusterId) -> Result<(), StorageError> {
    write_atomic(dir, CLUSTER_ID_FILE, &encode(id))
}

/// Gives `dir` a NEW random cluster id, replacing any it had, and returns it: for a data
/// directory restored from a backup to start a cluster of its own, so that it cannot be
/// mistaken for (or talk Raft to) the cluster the backup came from.
pub fn write_new(dir: &Path) -> Result<ClusterId, StorageError> {
    let id = ClusterId::random().map_err(|e| io_err(&dir.join(CLUSTER_ID_FILE), e))?;
    write(dir, id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_file_when_damaged() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let id = write_new(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(id));
        assert_eq!(ClusterId::parse(&id.to_string()), Some(id));
        let other = write_new(dir.path()).unwrap();
        assert_ne!(other, id, "write_new reused the id");
        assert!(!dir.path().join("cluster_id.tmp").exists());
        let path = dir.path().join(CLUSTER_ID_FILE);
        let mut b = std::fs::read(&path).unwrap();
        b[10] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cluster_id") && e.contains("CRC"), "{e}");
        std::fs::write(&path, b"short").unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("5 bytes"), "{e}");
    }

    #[test]
    fn zero_and_malformed_ids_are_not_ids() {
        assert_eq!(ClusterId::from_bytes([0; 16]), None);
        assert_eq!(ClusterId::parse(&"0".repeat(32)), None);
        assert_eq!(ClusterId::parse("abc"), None);
        assert_eq!(ClusterId::parse(&"g".repeat(32)), None);
    }
}
