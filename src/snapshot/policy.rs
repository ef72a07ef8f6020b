//! When to take a snapshot, and how far to compact the log afterwards.
//!
//! A snapshot is started when the log written since the last snapshot is large in bytes or in
//! entries. Once a snapshot is durable, the log prefix it covers may be dropped, except for a
//! trailing margin of entries kept so that a follower that is only slightly behind can still be
//! caught up with AppendEntries instead of a full snapshot transfer.

/// Snapshot and compaction thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot when the entries applied since the last snapshot total more than this many
    /// bytes of command data. Default 64 MiB: one default log segment; a snapshot of a few
    /// hundred MiB of KV state every 64 MiB of writes costs well under one disk pass per write.
    pub max_log_bytes: u64,
    /// ... or when more than this many entries were applied since the last snapshot. Default
    /// 100 000: bounds replay time at startup (about a second) for small commands.
    pub max_log_entries: u64,
    /// Entries kept below the applied index when compacting. Default 10 000: a follower that
    /// falls up to this far behind catches up by log replication, not by a snapshot.
    pub trailing_entries: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            max_log_bytes: 64 << 20,
            max_log_entries: 100_000,
            trailing_entries: 10_000,
        }
    }
}

/// What the policy looks at. The server keeps `bytes_since_snapshot` by adding the data length
/// of every applied entry and resetting it when a snapshot finishes (or is installed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Index of the newest durable snapshot (0 if none).
    pub snapshot_index: u64,
    /// Index the state machine has applied.
    pub applied: u64,
    /// Command bytes applied since that snapshot.
    pub bytes_since_snapshot: u64,
    /// First index still held in the log (the log's snapshot point + 1).
    pub first_index: u64,
}

impl SnapshotPolicy {
    /// True if a new snapshot (at the applied index) should be started now. Never when nothing
    /// was applied since the last snapshot. The caller must not start one while another is
    /// still running.
    pub fn should_snapshot(&self, s: &LogStats) -> bool {
        if s.applied <= s.snapshot_index {
            return false;
        }
        s.applied - s.snapshot_index > self.max_log_entries
            || s.bytes_since_snapshot > self.max_log_bytes
    }

    /// The index to compact the log to (entries up to and including it may be dropped), or
    /// None if nothing may be dropped. Never above the durable snapshot index (entries not
    /// covered by a snapshot are the only copy of that state), never above the applied index,
    /// and keeps `trailing_entries` entries below the applied index.
    pub fn compact_index(&self, s: &LogStats) -> Option<u64> {
        let to = s
            .snapshot_index
            .min(s.applied.saturating_sub(self.trailing_entries));
        // Something to drop only if `to` is at or past the first entry still held.
        (to >= s.first_index.max(1)).then_some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(snapshot_index: u64, applied: u64, bytes: u64, first_index: u64) -> LogStats {
        LogStats {
            snapshot_index,
            applied,
            bytes_since_snapshot: bytes,
            first_index,
        }
    }

    #[test]
    fn defaults_are_documented_values() {
        let p = SnapshotPolicy::default();
        assert_eq!(p.max_log_bytes, 64 << 20);
        assert_eq!(p.max_log_entries, 100_000);
        assert_eq!(p.trailing_entries, 10_000);
    }

    #[test]
    fn should_snapshot_table() {
        let p = SnapshotPolicy {
            max_log_bytes: 1000,
            max_log_entries: 100,
            trailing_entries: 10,
        };
        // (snapshot index, applied, bytes since, expected)
        let table = [
            (0, 0, 0, false),        // nothing applied
            (0, 100, 999, false),    // exactly at the entry limit, under the byte limit
            (0, 101, 0, true),       // over the entry limit
            (50, 150, 1000, false),  // exactly at both limits
            (50, 151, 0, true),      // entries over
            (50, 60, 1001, true),    // bytes over
            (200, 200, 5000, false), // nothing new since the snapshot (bytes stale)
            (300, 200, 5000, false), // installed snapshot ahead of applied: never
            (u64::MAX - 1, u64::MAX, u64::MAX, true),
        ];
        for (si, applied, bytes, want) in table {
            let s = stats(si, applied, bytes, si + 1);
            assert_eq!(p.should_snapshot(&s), want, "{s:?}");
        }
    }

    #[test]
    fn compact_index_table() {
        let p = SnapshotPolicy {
            max_log_bytes: 1000,
            max_log_entries: 100,
            trailing_entries: 10,
        };
        // (snapshot index, applied, first index, expected)
        let table = [
            (0, 0, 1, None),          // no snapshot: nothing may go
            (0, 500, 1, None),        // applied but no durable snapshot
            (100, 100, 1, Some(90)),  // keep 10 trailing entries below applied
            (100, 105, 1, Some(95)),  // applied moved on since the snapshot started
            (100, 500, 1, Some(100)), // never above the snapshot index
            (100, 500, 101, None),    // already compacted to the snapshot
            (100, 105, 96, None),     // already compacted past applied - trailing
            (100, 105, 95, Some(95)), // exactly one more entry to drop
            (5, 8, 1, None),          // applied < trailing margin
            (10, 20, 1, Some(10)),    // margin exactly reaches the snapshot
        ];
        for (si, applied, first, want) in table {
            let s = stats(si, applied, 0, first);
            let got = p.compact_index(&s);
            assert_eq!(got, want, "{s:?}");
            if let Some(c) = got {
                assert!(c <= si && c <= applied && applied - c >= p.trailing_entries);
            }
        }
    }

    #[test]
    fn zero_trailing_compacts_to_snapshot() {
        let p = SnapshotPolicy {
            trailing_entries: 0,
            ..SnapshotPolicy::default()
        };
        assert_eq!(p.compact_index(&stats(7, 7, 0, 1)), Some(7));
    }
}
