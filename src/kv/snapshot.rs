//! The snapshot format of the KV state machine, written and read as a stream.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! magic    8 bytes  "RAFTKVSS"
//! version  u32      2 (version 1, read too, has no alarm field)
//! applied  u64      index of the last applied entry
//! alarm    u64      the NO_SPACE alarm: id of the node that raised it, 0 = clear (version 2)
//! keys     u64      number of key records
//! sessions u64      number of session records
//! key record     * keys:     u32 key_len, key, u32 value_len, value, u64 version
//! session record * sessions: u64 client_id, u64 floor, u64 last_index, u32 n,
//!                            n * (u64 seq, u32 len, kvpb::Response{result} bytes)
//! crc      u32      CRC-32 (crc32fast) of every byte above
//! ```
//!
//! Keys and sessions appear in strictly increasing order. The reader validates everything
//! (magic, version, lengths, order, ranges, checksum) and reports problems as `InvalidData`
//! errors naming the record; it never trusts a length for allocation beyond what actually
//! arrives. The format is self-delimiting: the reader stops right after the checksum.

use super::session::{Session, Sessions, MAX_RESULTS_PER_SESSION};
use super::store::{Entry, KeyMap};
use super::{ApplyResult, SnapshotSummary};
use crate::pb::kvpb;
use bytes::Bytes;
use prost::Message;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"RAFTKVSS";
const FORMAT_VERSION: u32 = 2;
/// The first format, without the alarm field: still read (a node upgraded in place).
const FORMAT_VERSION_NO_ALARM: u32 = 1;
/// Largest key, value or saved result accepted in a snapshot: the largest `--max-frame` any
/// node accepts, never the reading node's own (which may be smaller than the writer's); see
/// `crate::limits` for why that is safe and needs no header field.
const MAX_FIELD_LEN: usize = crate::limits::MAX_SNAPSHOT_FIELD;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("kv snapshot: {msg}"))
}

/// A writer that checksums what passes through it.
struct CrcWriter<'a> {
    inner: &'a mut dyn Write,
    crc: crc32fast::Hasher,
}

impl CrcWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.put(&v.to_be_bytes())
    }
    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.put(&v.to_be_bytes())
    }
    fn field(&mut self, b: &[u8]) -> io::Result<()> {
        let len = u32::try_from(b.len())
            .map_err(|_| invalid(format!("field of {} bytes is too large", b.len())))?;
        self.u32(len)?;
        self.put(b)
    }
}

/// Writes the state as described in the module docs.
pub fn write(
    w: &mut dyn Write,
    applied: u64,
    alarm: u64,
    keys: &KeyMap,
    sessions: &Sessions,
) -> io::Result<()> {
    let mut w = CrcWriter {
        inner: w,
        crc: crc32fast::Hasher::new(),
    };
    w.put(MAGIC)?;
    w.u32(FORMAT_VERSION)?;
    w.u64(applied)?;
    w.u64(alarm)?;
    w.u64(keys.map.len() as u64)?;
    w.u64(sessions.by_client.len() as u64)?;
    for (k, e) in &keys.map {
        w.field(k)?;
        w.field(&e.value)?;
        w.u64(e.version)?;
    }
    for (id, s) in &sessions.by_client {
        w.u64(*id)?;
        w.u64(s.floor)?;
        w.u64(s.last_index)?;
        w.u32(s.results.len() as u32)?;
        for (seq, r) in &s.results {
            w.u64(*seq)?;
            let resp = kvpb::Response {
                id: 0,
                result: Some(r.clone()),
            };
            w.field(&resp.encode_to_vec())?;
        }
    }
    let crc = w.crc.clone().finalize();
    w.inner.write_all(&crc.to_be_bytes())
}

/// A reader that checksums what passes through it and turns EOF into a clear error.
struct CrcReader<'a> {
    inner: &'a mut dyn Read,
    crc: crc32fast::Hasher,
}

impl CrcReader<'_> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(format!("truncated while reading {what}"))
            } else {
                e
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }
    fn u32(&mut self, what: &str) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self, what: &str) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_be_bytes(b))
    }
    /// A length-prefixed field; allocation grows only with bytes actually read.
    fn field(&mut self, what: &str) -> io::Result<Bytes> {
        let len = self.u32(what)? as usize;
        if len > MAX_FIELD_LEN {
            return Err(invalid(format!(
                "{what}: length {len} exceeds the maximum {MAX_FIELD_LEN}"
            )));
        }
        let mut buf = Vec::new();
        (&mut *self.inner).take(len as u64).read_to_end(&mut buf)?;
        if buf.len() != len {
            return Err(invalid(format!(
                "truncated in {what}: {} of {len} bytes",
                buf.len()
            )));
        }
        self.crc.update(&buf);
        Ok(Bytes::from(buf))
    }
}

/// Reads and validates a snapshot, handing each key and session to the callbacks in order.
/// Returns the header's summary.
pub fn read(
    r: &mut dyn Read,
    mut on_key: impl FnMut(Bytes, Entry),
    mut on_session: impl FnMut(u64, Session),
) -> io::Result<SnapshotSummary> {
    let mut r = CrcReader {
        inner: r,
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic, "magic")?;
    if &magic != MAGIC {
        return Err(invalid(format!("bad magic {magic:02x?}")));
    }
    let version = r.u32("format version")?;
    if version != FORMAT_VERSION && version != FORMAT_VERSION_NO_ALARM {
        return Err(invalid(format!(
            "unsupported format version {version} (expected {FORMAT_VERSION})"
        )));
    }
    let applied = r.u64("applied index")?;
    let alarm = match version {
        FORMAT_VERSION_NO_ALARM => 0,
        _ => r.u64("alarm")?,
    };
    let summary = SnapshotSummary {
        applied,
        alarm,
        keys: r.u64("key count")?,
        sessions: r.u64("session count")?,
    };
    let mut prev_key: Option<Bytes> = None;
    for i in 0..summary.keys {
        let what = format!("key record {i}");
        let key = r.field(&what)?;
        let value = r.field(&what)?;
        let version = r.u64(&what)?;
        if key.is_empty() || prev_key.as_ref().is_some_and(|p| *p >= key) {
            return Err(invalid(format!("{what}: key empty or out of order")));
        }
        if version == 0 || version > summary.applied {
            return Err(invalid(format!(
                "{what}: version {version} outside 1..={}",
                summary.applied
            )));
        }
        prev_key = Some(key.clone());
        on_key(key, Entry { value, version });
    }
    let mut prev_client = 0u64;
    for i in 0..summary.sessions {
        let what = format!("session record {i}");
        let client_id = r.u64(&what)?;
        let floor = r.u64(&what)?;
        let last_index = r.u64(&what)?;
        let n = r.u32(&what)? as usize;
        if client_id <= prev_client {
            return Err(invalid(format!(
                "{what}: client id {client_id} zero or out of order"
            )));
        }
        if last_index > summary.applied || n > MAX_RESULTS_PER_SESSION {
            return Err(invalid(format!(
                "{what}: last index {last_index} or result count {n} out of range"
            )));
        }
        prev_client = client_id;
        let mut results = BTreeMap::new();
        let mut prev_seq = floor;
        for _ in 0..n {
            let seq = r.u64(&what)?;
            if seq <= prev_seq {
                return Err(invalid(format!("{what}: seq {seq} not above {prev_seq}")));
            }
            prev_seq = seq;
            let bytes = r.field(&what)?;
            let result: ApplyResult = kvpb::Response::decode(bytes)
                .map_err(|e| invalid(format!("{what}: undecodable result for seq {seq}: {e}")))?
                .result
                .ok_or_else(|| invalid(format!("{what}: empty result for seq {seq}")))?;
            results.insert(seq, result);
        }
        on_session(
            client_id,
            Session {
                floor,
                last_index,
                results,
            },
        );
    }
    let computed = r.crc.clone().finalize();
    let mut b = [0u8; 4];
    r.inner
        .read_exact(&mut b)
        .map_err(|_| invalid("truncated before the checksum".to_string()))?;
    let stored = u32::from_be_bytes(b);
    if stored != computed {
        return Err(invalid(format!(
            "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
        )));
    }
    Ok(summary)
}
