//! The key space: an ordered map of byte keys to (value, version), and the write/read
//! operations on it. Deterministic: only `BTreeMap`, no clocks, no hashing.

use crate::pb::kvpb;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Bound;

use super::{bad_request, ApplyResult};

/// Scan limit used when the request says 0.
pub const DEFAULT_SCAN_LIMIT: usize = 1000;
/// Largest scan limit honoured; larger requests are capped.
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// One stored value and the log index of the write that last set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub version: u64,
}

/// The ordered key space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMap {
    pub(super) map: BTreeMap<Bytes, Entry>,
    /// Bytes of keys and values held (what `--quota-bytes` measures as the state's size).
    bytes: u64,
}

fn pair_len(key: &[u8], e: &Entry) -> u64 {
    (key.len() + e.value.len()) as u64
}

impl KeyMap {
    /// Sets `key` to `e`, keeping the byte count.
    pub(super) fn insert(&mut self, key: Bytes, e: Entry) {
        self.bytes += pair_len(&key, &e);
        if let Some(old) = self.map.insert(key.clone(), e) {
            self.bytes -= pair_len(&key, &old);
        }
    }

    /// Removes `key`, keeping the byte count; true if it was there.
    fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(old) => {
                self.bytes -= pair_len(key, &old);
                true
            }
            None => false,
        }
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Executes one write op at log index `index`.
    pub fn execute(&mut self, index: u64, op: Option<&kvpb::command::Op>) -> ApplyResult {
        use kvpb::command::Op;
        use kvpb::response::Result as R;
        let Some(op) = op else {
            return bad_request("command carries no operation".to_string());
        };
        let key = match op {
            Op::Put(p) => &p.key,
            Op::Delete(d) => &d.key,
            Op::Cas(c) => &c.key,
            Op::Alarm(_) => return bad_request("an alarm is not a key operation".to_string()),
        };
        if key.is_empty() {
            return bad_request("empty key".to_string());
        }
        match op {
            Op::Put(p) => {
                self.insert(
                    p.key.clone(),
                    Entry {
                        value: p.value.clone(),
                        version: index,
                    },
                );
                R::Put(kvpb::PutResponse { version: index })
            }
            Op::Delete(d) => R::Delete(kvpb::DeleteResponse {
                deleted: self.remove(&d.key),
            }),
            Op::Cas(c) => R::Cas(self.cas(index, c)),
            Op::Alarm(_) => bad_request("an alarm is not a key operation".to_string()),
        }
    }

    fn cas(&mut self, index: u64, c: &kvpb::Cas) -> kvpb::CasResponse {
        let current = self.map.get(&c.key).map_or(0, |e| e.version);
        if current != c.expected_version {
            return kvpb::CasResponse {
                succeeded: false,
                version: current,
            };
        }
        if c.delete {
            self.remove(&c.key);
            kvpb::CasResponse {
                succeeded: true,
                version: 0,
            }
        } else {
            self.insert(
                c.key.clone(),
                Entry {
                    value: c.value.clone(),
                    version: index,
                },
            );
            kvpb::CasResponse {
                succeeded: true,
                version: index,
            }
        }
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> kvpb::GetResponse {
        match self.map.get(key) {
            Some(e) => kvpb::GetResponse {
                found: true,
                value: e.value.clone(),
                version: e.version,
            },
            None => kvpb::GetResponse::default(),
        }
    }

    /// Range or prefix scan, as documented on `kvpb::Scan`.
    /// The page also ends before its keys and values would exceed `max_bytes` (at least one
    /// pair is returned).
    pub fn scan(&self, req: &kvpb::Scan, max_bytes: usize) -> kvpb::ScanResponse {
        let limit = match req.limit as usize {
            0 => DEFAULT_SCAN_LIMIT,
            n => n.min(MAX_SCAN_LIMIT),
        };
        let (lower, upper): (&[u8], Option<&[u8]>) = if !req.prefix.is_empty() {
            // Prefix scan; a non-empty `start` past the prefix start resumes a continuation.
            let lower = if req.start > req.prefix {
                &req.start[..]
            } else {
                &req.prefix[..]
            };
            (lower, None)
        } else {
            let upper = (!req.end.is_empty()).then_some(&req.end[..]);
            (&req.start[..], upper)
        };
        let mut resp = kvpb::ScanResponse::default();
        let mut bytes = 0usize;
        if upper.is_some_and(|u| lower >= u) {
            return resp;
        }
        let range = self
            .map
            .range::<[u8], _>((Bound::Included(lower), Bound::Unbounded));
        for (k, e) in range {
            if upper.is_some_and(|u| k.as_ref() >= u)
                || (!req.prefix.is_empty() && !k.starts_with(&req.prefix))
            {
                break;
            }
            let value = if req.keys_only {
                Bytes::new()
            } else {
                e.value.clone()
            };
            let size = k.len() + value.len();
            if resp.kvs.len() == limit
                || (!resp.kvs.is_empty() && bytes.saturating_add(size) > max_bytes)
            {
                resp.next_key = k.clone();
                break;
            }
            bytes += size;
            resp.kvs.push(kvpb::KeyValue {
                key: k.clone(),
                value,
                version: e.version,
            });
        }
        resp
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
