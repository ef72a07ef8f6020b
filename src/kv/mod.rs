//! The replicated key-value state machine with exactly-once client sessions.
//!
//! API CONTRACT: the public items below are what the server and simulator program against.
//! The implementation is the server issue's KV work.

use crate::pb::kvpb;
use bytes::Bytes;

/// Result of applying one command, as sent back to the client.
pub type ApplyResult = kvpb::response::Result;

/// An ordered map of byte keys to (value, version), plus the session table.
#[derive(Default)]
pub struct KvStore {
    _p: (),
}

impl KvStore {
    /// An empty store.
    pub fn new() -> KvStore {
        KvStore::default()
    }
    /// Applies the raft entry at `index` with payload `data` (an encoded `kvpb::Command`; empty
    /// = no-op). Returns the result for the proposing client (a saved one for a duplicate
    /// (client_id, seq)), or None for a no-op. Undecodable data yields an error result and
    /// changes nothing.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Option<ApplyResult> {
        let _ = (index, data);
        todo!()
    }
    /// Reads one key (no side effects).
    pub fn get(&self, key: &[u8]) -> kvpb::GetResponse {
        let _ = key;
        todo!()
    }
    /// Scans as described in `kvpb::Scan`.
    pub fn scan(&self, req: &kvpb::Scan) -> kvpb::ScanResponse {
        let _ = req;
        todo!()
    }
    /// Index of the last applied entry.
    pub fn applied(&self) -> u64 {
        todo!()
    }
    /// Number of keys.
    pub fn len(&self) -> usize {
        todo!()
    }
    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Streams the whole state (keys, sessions, applied index) to `w`.
    pub fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let _ = w;
        todo!()
    }
    /// Replaces the state with one read from a snapshot stream.
    pub fn restore_snapshot(r: &mut dyn std::io::Read) -> std::io::Result<KvStore> {
        let _ = r;
        todo!()
    }
}

/// Encodes a write command for proposal.
pub fn encode_command(cmd: &kvpb::Command) -> Bytes {
    use prost::Message;
    Bytes::from(cmd.encode_to_vec())
}

/// Counts of what a snapshot payload (as written by [`KvStore::write_snapshot`]) holds, read as
/// a stream without building the map (for `raftkv-log snapshot`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub keys: u64,
    pub sessions: u64,
    pub applied: u64,
}

/// Reads a snapshot payload stream and summarizes it.
pub fn snapshot_summary(r: &mut dyn std::io::Read) -> std::io::Result<SnapshotSummary> {
    let _ = r;
    todo!()
}
