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

/// Redis' error for INCR on a value that is not a 64-bit decimal integer.
pub const NOT_AN_INTEGER: &str = "value is not an integer or out of range";

/// A value as Redis reads an integer: optional '-', decimal digits, no leading zeros, no
/// spaces or '+', within i64.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|c| c.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && s != "-0";
    if !canonical {
        return None;
    }
    s.parse().ok()
}

/// The error for an op naming an empty key (refused as a whole for a multi-key op).
fn empty_key(op: &kvpb::command::Op) -> Option<ApplyResult> {
    use kvpb::command::Op;
    let empty = match op {
        Op::Put(p) => p.key.is_empty(),
        Op::Delete(d) => d.key.is_empty(),
        Op::Cas(c) => c.key.is_empty(),
        Op::Incr(i) => i.key.is_empty(),
        Op::Append(a) => a.key.is_empty(),
        Op::MultiPut(m) => m.kvs.is_empty() || m.kvs.iter().any(|kv| kv.key.is_empty()),
        Op::DeleteKeys(d) => d.keys.is_empty() || d.keys.iter().any(|k| k.is_empty()),
        Op::DeleteAll(_) => false,
        Op::Alarm(_) => false,
    };
    empty.then(|| bad_request("empty key".to_string()))
}

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

    /// Executes one write op at log index `index`. A failed op (empty key, not an integer,
    /// too long) changes nothing: multi-key ops check every key before writing any.
    pub fn execute(&mut self, index: u64, op: Option<&kvpb::command::Op>) -> ApplyResult {
        use kvpb::command::Op;
        use kvpb::response::Result as R;
        let Some(op) = op else {
            return bad_request("command carries no operation".to_string());
        };
        if let Some(e) = empty_key(op) {
            return e;
        }
        match op {
            Op::Put(p) => R::Put(self.put(index, p)),
            Op::Delete(d) => R::Delete(kvpb::DeleteResponse {
                deleted: self.remove(&d.key),
                count: 0,
            }),
            Op::Cas(c) => R::Cas(self.cas(index, c)),
            Op::Incr(i) => self.incr(index, i),
            Op::Append(a) => self.append(index, a),
            Op::MultiPut(m) => {
                for kv in &m.kvs {
                    self.set(index, kv.key.clone(), kv.value.clone());
                }
                R::Put(kvpb::PutResponse {
                    version: index,
                    ..Default::default()
                })
            }
            Op::DeleteAll(_) => {
                let count = self.map.len() as u64;
                self.map.clear();
                self.bytes = 0;
                R::Delete(kvpb::DeleteResponse {
                    deleted: count > 0,
                    count,
                })
            }
            Op::Alarm(_) => bad_request("an alarm is not a key operation".to_string()),
            Op::DeleteKeys(d) => {
                let count = d.keys.iter().filter(|k| self.remove(k)).count();
                R::Delete(kvpb::DeleteResponse {
                    deleted: count > 0,
                    count: count as u64,
                })
            }
        }
    }

    fn set(&mut self, index: u64, key: Bytes, value: Bytes) {
        self.insert(
            key,
            Entry {
                value,
                version: index,
            },
        );
    }

    /// A Put, under its condition (NX / XX), answering the old value if asked (SET ... GET).
    fn put(&mut self, index: u64, p: &kvpb::Put) -> kvpb::PutResponse {
        let old = p.return_old.then(|| self.get(&p.key));
        let exists = self.map.contains_key(&p.key);
        let write = match p.condition() {
            kvpb::PutCondition::Always => true,
            kvpb::PutCondition::IfAbsent => !exists,
            kvpb::PutCondition::IfPresent => exists,
        };
        if write {
            self.set(index, p.key.clone(), p.value.clone());
        }
        kvpb::PutResponse {
            version: if write { index } else { 0 },
            not_written: !write,
            old,
        }
    }

    /// INCRBY: the value as a signed 64-bit decimal (absent = 0) plus `delta`. The error
    /// messages are Redis' own (the RESP front end passes them on as `-ERR ...`).
    fn incr(&mut self, index: u64, i: &kvpb::Incr) -> ApplyResult {
        let current = match self.map.get(&i.key) {
            None => 0,
            Some(e) => match parse_i64(&e.value) {
                Some(n) => n,
                None => return bad_request(NOT_AN_INTEGER.into()),
            },
        };
        let Some(value) = current.checked_add(i.delta) else {
            return bad_request("increment or decrement would overflow".into());
        };
        self.set(index, i.key.clone(), Bytes::from(value.to_string()));
        ApplyResult::Incr(kvpb::IncrResponse {
            value,
            version: index,
        })
    }

    /// APPEND, refused (changing nothing) past [`crate::limits::MAX_GROWN_VALUE`].
    fn append(&mut self, index: u64, a: &kvpb::Append) -> ApplyResult {
        let old = self.map.get(&a.key).map_or(&[][..], |e| &e.value[..]);
        let length = old.len().saturating_add(a.value.len());
        if length > crate::limits::MAX_GROWN_VALUE {
            return bad_request(format!(
                "string exceeds maximum allowed size ({} bytes)",
                crate::limits::MAX_GROWN_VALUE
            ));
        }
        let mut v = Vec::with_capacity(length);
        v.extend_from_slice(old);
        v.extend_from_slice(&a.value);
        self.set(index, a.key.clone(), Bytes::from(v));
        ApplyResult::Append(kvpb::AppendResponse {
            length: length as u64,
            version: index,
        })
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
            self.set(index, c.key.clone(), c.value.clone());
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

    /// Reads several keys.
    pub fn multi_get(&self, keys: &[Bytes]) -> kvpb::MultiGetResponse {
        kvpb::MultiGetResponse {
            values: keys.iter().map(|k| self.get(k)).collect(),
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
