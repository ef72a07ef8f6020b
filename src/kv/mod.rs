//! The replicated key-value state machine with exactly-once client sessions.
//!
//! API CONTRACT: the public items below are what the server and simulator program against.
//!
//! - [`store`]: the ordered key space and the put/delete/cas/get/scan operations.
//! - [`session`]: the exactly-once session table (Raft dissertation ch. 6).
//! - [`snapshot`]: the streamed, checksummed snapshot format.
//!
//! Everything here is deterministic (no clocks, no hash-order iteration), so every replica that
//! applies the same entries ends in the same state and returns the same results; the simulator
//! drives [`KvStore`] directly.

pub mod session;
pub mod snapshot;
pub mod store;

#[cfg(test)]
mod tests;

use crate::pb::kvpb;
use bytes::Bytes;
use prost::Message;
use session::{Check, Sessions};
use store::KeyMap;

/// Result of applying one command, as sent back to the client.
pub type ApplyResult = kvpb::response::Result;

/// An ordered map of byte keys to (value, version), plus the session table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvStore {
    keys: KeyMap,
    sessions: Sessions,
    applied: u64,
    /// The NO_SPACE alarm: the id of the node that raised it, 0 while it is clear (replicated
    /// state: applied from `kvpb::Alarm` commands, saved in snapshots).
    alarm: u64,
}

/// True for a write that can grow the state (a put, a value-setting CAS, INCR, APPEND, a
/// multi-put): what the NO_SPACE alarm refuses. Deletes (and delete-CAS) shrink it and stay
/// allowed, so space can be freed. Every op is listed: a new one must decide.
pub fn grows_state(op: Option<&kvpb::command::Op>) -> bool {
    use kvpb::command::Op;
    match op {
        Some(Op::Put(_) | Op::Incr(_) | Op::Append(_) | Op::MultiPut(_)) => true,
        Some(Op::Cas(c)) => !c.delete,
        Some(Op::Delete(_) | Op::DeleteKeys(_) | Op::DeleteAll(_) | Op::Alarm(_)) | None => false,
    }
}

/// The NO_SPACE error answered to a write refused while the alarm is raised.
pub fn no_space_result(raised_by: u64) -> ApplyResult {
    error_result(
        kvpb::ErrorCode::NoSpace,
        format!(
            "NO_SPACE alarm raised by node {raised_by}: writes that add data are refused (not \
             applied) until space is freed; reads and deletes work"
        ),
    )
}

/// An error result with the given code.
pub fn error_result(code: kvpb::ErrorCode, message: String) -> ApplyResult {
    kvpb::response::Result::Error(kvpb::Error {
        code: code as i32,
        message,
        ..Default::default()
    })
}

pub(crate) fn bad_request(message: String) -> ApplyResult {
    error_result(kvpb::ErrorCode::BadRequest, message)
}

impl KvStore {
    /// An empty store.
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// Sets the bound on the session table (default [`session::DEFAULT_MAX_SESSIONS`]). This is
    /// replicated behaviour: every replica must use the same value. Takes effect at the next
    /// session creation; not stored in snapshots.
    pub fn set_max_sessions(&mut self, n: usize) {
        self.sessions.max_sessions = n.max(1);
    }

    /// Applies the raft entry at `index` with payload `data` (an encoded `kvpb::Command`; empty
    /// = no-op). Returns the result for the proposing client (a saved one for a duplicate
    /// (client_id, seq)), or None for a no-op. Undecodable data yields an error result and
    /// changes nothing (except the applied index).
    ///
    /// Indexes must increase (gaps are fine: configuration entries never reach the store). An
    /// `index <= applied()` is refused with an `INTERNAL` error result and changes nothing, so
    /// an entry is never applied twice.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Option<ApplyResult> {
        if index <= self.applied {
            log::error!(
                "kv: refusing to apply index {index}: already applied up to {}",
                self.applied
            );
            return Some(error_result(
                kvpb::ErrorCode::Internal,
                format!(
                    "apply of index {index} refused: already applied up to {}",
                    self.applied
                ),
            ));
        }
        self.applied = index;
        if data.is_empty() {
            return None;
        }
        let cmd = match kvpb::Command::decode(data) {
            Ok(c) => c,
            Err(e) => {
                return Some(bad_request(format!(
                    "undecodable command at index {index}: {e}"
                )))
            }
        };
        if let Some(kvpb::command::Op::Alarm(a)) = &cmd.op {
            return Some(self.apply_alarm(a));
        }
        if cmd.client_id == 0 {
            return Some(self.execute(index, &cmd));
        }
        match self
            .sessions
            .check(index, cmd.client_id, cmd.seq, cmd.acked_seq)
        {
            Check::Duplicate(r) | Check::Reject(r) => Some(r),
            Check::Fresh => {
                // A refused write is recorded like any result: a retry of the same seq gets
                // the same NO_SPACE, so a refused write never applies later by surprise.
                let r = self.execute(index, &cmd);
                self.sessions.record(cmd.client_id, cmd.seq, r.clone());
                Some(r)
            }
        }
    }

    /// Executes a key operation, or refuses it with NO_SPACE while the alarm is raised
    /// (decided here, at apply time, so every replica refuses the same writes).
    fn execute(&mut self, index: u64, cmd: &kvpb::Command) -> ApplyResult {
        if self.alarm != 0 && grows_state(cmd.op.as_ref()) {
            return no_space_result(self.alarm);
        }
        self.keys.execute(index, cmd.op.as_ref())
    }

    /// Raises or clears the alarm; answered with the alarm state (in a status response).
    fn apply_alarm(&mut self, a: &kvpb::Alarm) -> ApplyResult {
        let before = self.alarm;
        self.alarm = if a.raise { a.node_id.max(1) } else { 0 };
        if before != self.alarm {
            match self.alarm {
                0 => log::warn!("NO_SPACE alarm cleared: writes are accepted again"),
                n => log::warn!(
                    "NO_SPACE alarm raised by node {n}: writes that add data are refused"
                ),
            }
        }
        ApplyResult::Status(kvpb::StatusResponse {
            no_space_alarm: self.alarm != 0,
            alarm_raised_by: self.alarm,
            ..Default::default()
        })
    }

    /// The NO_SPACE alarm: `Some(node that raised it)` while raised.
    pub fn alarm(&self) -> Option<u64> {
        (self.alarm != 0).then_some(self.alarm)
    }

    /// Bytes of keys and values held (the state's size against `--quota-bytes`).
    pub fn state_bytes(&self) -> u64 {
        self.keys.bytes()
    }

    /// Reads one key (no side effects).
    pub fn get(&self, key: &[u8]) -> kvpb::GetResponse {
        self.keys.get(key)
    }

    /// Reads several keys (no side effects).
    pub fn multi_get(&self, keys: &[Bytes]) -> kvpb::MultiGetResponse {
        self.keys.multi_get(keys)
    }

    /// Scans as described in `kvpb::Scan`: limit 0 means [`store::DEFAULT_SCAN_LIMIT`], larger
    /// limits are capped at [`store::MAX_SCAN_LIMIT`]; a non-empty `next_key` is the first key
    /// not returned (pass it as `start` to continue). Unbounded in bytes: see
    /// [`KvStore::scan_page`].
    pub fn scan(&self, req: &kvpb::Scan) -> kvpb::ScanResponse {
        self.keys.scan(req, usize::MAX)
    }

    /// Like [`KvStore::scan`], but the page also ends before its pairs would exceed
    /// `max_bytes` (keys plus values; at least one pair is returned), so that a response fits
    /// a frame however large the values are.
    pub fn scan_page(&self, req: &kvpb::Scan, max_bytes: usize) -> kvpb::ScanResponse {
        self.keys.scan(req, max_bytes)
    }

    /// Index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of client sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A checksum of the whole replicated state (keys, versions, sessions, applied index):
    /// equal stores have equal digests. For the simulator's replica-divergence checks.
    pub fn digest(&self) -> u32 {
        struct Hash(crc32fast::Hasher);
        impl std::io::Write for Hash {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.update(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = Hash(crc32fast::Hasher::new());
        // Writing to a hasher cannot fail (fields are bounded by u32 lengths on the way in).
        let _ = self.write_snapshot(&mut h);
        h.0.finalize()
    }

    /// Streams the whole state (keys, sessions, applied index) to `w` (format: [`snapshot`]).
    pub fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        snapshot::write(w, self.applied, self.alarm, &self.keys, &self.sessions)
    }

    /// Replaces the state with one read from a snapshot stream. Bad magic, truncation, a bad
    /// checksum or any inconsistent record is an `InvalidData` error. The session bound is the
    /// default; call [`KvStore::set_max_sessions`] after restoring if it was configured.
    pub fn restore_snapshot(r: &mut dyn std::io::Read) -> std::io::Result<KvStore> {
        let mut store = KvStore::new();
        let summary = snapshot::read(
            r,
            |k, e| {
                store.keys.insert(k, e);
            },
            |id, s| store.sessions.insert_restored(id, s),
        )?;
        store.applied = summary.applied;
        store.alarm = summary.alarm;
        Ok(store)
    }
}

/// Encodes a write command for proposal.
pub fn encode_command(cmd: &kvpb::Command) -> Bytes {
    Bytes::from(cmd.encode_to_vec())
}

/// Counts of what a snapshot payload (as written by [`KvStore::write_snapshot`]) holds, read as
/// a stream without building the map (for `raftkv-log snapshot`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub keys: u64,
    pub sessions: u64,
    pub applied: u64,
    /// The NO_SPACE alarm's raiser (0 = clear).
    pub alarm: u64,
}

/// Reads a snapshot payload stream and summarizes it. The whole stream is validated (records and
/// checksum), not just the header.
pub fn snapshot_summary(r: &mut dyn std::io::Read) -> std::io::Result<SnapshotSummary> {
    snapshot::read(r, |_, _| {}, |_, _| {})
}
