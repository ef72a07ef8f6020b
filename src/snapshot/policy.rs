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
    /// `Some((slot, slots))`: this node is member `slot` (0-based) of `slots`, and spreads its
    /// snapshots so that the members of a cluster do not all snapshot at once. All members
    /// apply the same indexes at about the same time, so with one threshold they would all
    /// fork, write and compact together: the leader and the quorum stall at the same moment
    /// and all snapshot writers share the disk. With a slot, the entry threshold becomes a
    /// phase: the member snapshots when `applied` reaches the next index `p` with
    /// `p % max_log_entries == slot * max_log_entries / slots` that is more than half a
    /// threshold past its last snapshot (intervals stay between 0.5x and 1.5x the threshold,
    /// 1x on average, and members are `max_log_entries / slots` entries apart). The byte
    /// threshold is scaled by `1 + slot / (2 * slots)`. The server sets this from its id's
    /// rank among `--peers`.
    pub stagger: Option<(u64, u64)>,
}

/// Default [`SnapshotPolicy::max_log_bytes`] (64 MiB; the reasons are on the field).
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 64 << 20;
/// Default [`SnapshotPolicy::max_log_entries`] (100 000; the reasons are on the field).
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 100_000;
/// Default [`SnapshotPolicy::trailing_entries`] (10 000; the reasons are on the field).
pub const DEFAULT_TRAILING_ENTRIES: u64 = 10_000;

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            max_log_bytes: DEFAULT_SNAPSHOT_BYTES,
            max_log_entries: DEFAULT_SNAPSHOT_ENTRIES,
            trailing_entries: DEFAULT_TRAILING_ENTRIES,
            stagger: None,
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
        u128::from(s.applied) >= self.due_index(s.snapshot_index)
            || s.bytes_since_snapshot > self.max_bytes()
    }

    /// The applied index at which the entry threshold makes the next snapshot due, given the
    /// newest snapshot's index (u128: no overflow near `u64::MAX`). Without a stagger, more
    /// than `max_log_entries` past it; with one, the next index of this member's phase that is
    /// more than half a threshold past it (so `due - snapshot_index` is in `(E/2, 1.5 E]`).
    /// The byte threshold may make a snapshot due earlier, never later.
    pub fn due_index(&self, snapshot_index: u64) -> u128 {
        let e = u128::from(self.max_log_entries);
        match self.slot() {
            Some((slot, slots)) => {
                let phase = u128::from(slot) * e / u128::from(slots);
                let lo = u128::from(snapshot_index) + e / 2 + 1;
                lo + (phase + e - lo % e) % e
            }
            _ => u128::from(snapshot_index) + e + 1,
        }
    }

    /// The stagger slot in force: `None` when there is none or it cannot apply (one member,
    /// a slot out of range, or a threshold too small to split).
    fn slot(&self) -> Option<(u64, u64)> {
        self.stagger
            .filter(|&(slot, slots)| slots > 1 && slot < slots && self.max_log_entries >= 2)
    }

    /// The byte threshold, scaled by `1 + slot / (2 * slots)` with a stagger.
    fn max_bytes(&self) -> u64 {
        match self.slot() {
            Some((slot, slots)) => {
                let bytes = u128::from(self.max_log_bytes) * u128::from(2 * slots + slot)
                    / u128::from(2 * slots);
                u64::try_from(bytes).unwrap_or(u64::MAX)
            }
            _ => self.max_log_bytes,
        }
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
            stagger: None,
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
            stagger: None,
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

    /// Simulates members applying the same indexes and snapshotting whenever the policy says
    /// so (a snapshot finishing at once): returns each member's snapshot indexes.
    fn schedule(p: &SnapshotPolicy, slots: u64, upto: u64) -> Vec<Vec<u64>> {
        (0..slots)
            .map(|slot| {
                let p = SnapshotPolicy {
                    stagger: Some((slot, slots)),
                    ..p.clone()
                };
                let mut snap = 0;
                let mut taken = Vec::new();
                for applied in 1..=upto {
                    if p.should_snapshot(&stats(snap, applied, 0, snap + 1)) {
                        taken.push(applied);
                        snap = applied;
                    }
                }
                taken
            })
            .collect()
    }

    #[test]
    fn staggered_members_snapshot_a_fraction_of_the_threshold_apart() {
        let p = SnapshotPolicy {
            max_log_bytes: u64::MAX,
            max_log_entries: 300,
            trailing_entries: 0,
            stagger: None,
        };
        let s = schedule(&p, 3, 1000);
        // Slot 0 at multiples of 300 (first > 150), slot 1 at 100 + k*300, slot 2 at 200 + k*300.
        assert_eq!(s[0], vec![300, 600, 900]);
        assert_eq!(s[1], vec![400, 700, 1000]);
        assert_eq!(s[2], vec![200, 500, 800]);
        // No two members at the same index; intervals within [0.5, 1.5] x threshold.
        let mut all: Vec<u64> = s.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 9);
        for member in &s {
            let mut prev = 0;
            for &i in member {
                assert!(i - prev > 150 && i - prev <= 450, "{member:?}");
                prev = i;
            }
        }
    }

    #[test]
    fn stagger_after_an_installed_or_off_phase_snapshot_realigns() {
        // A member whose last snapshot is off its phase (e.g. installed from the leader) goes
        // back to its phase: next trigger is its phase point more than half a threshold on.
        let p = SnapshotPolicy {
            max_log_bytes: u64::MAX,
            max_log_entries: 100,
            trailing_entries: 0,
            stagger: Some((1, 4)), // phase 25
        };
        let due = |snap, applied| p.should_snapshot(&stats(snap, applied, 0, snap + 1));
        assert!(!due(130, 180)); // 180 is not past 130 + 50 on phase
        assert!(!due(130, 224));
        assert!(due(130, 225)); // 225 % 100 == 25 and 225 > 180
        assert!(due(170, 225)); // 225 is 55 past 170
        assert!(!due(180, 225)); // only 45 past 180: the next phase point, 325
        assert!(!due(180, 324));
        assert!(due(180, 325));
        // Extreme indexes do not overflow.
        assert!(!due(u64::MAX - 1, u64::MAX));
    }

    #[test]
    fn stagger_scales_the_byte_threshold_per_slot() {
        let p = |slot| SnapshotPolicy {
            max_log_bytes: 1200,
            max_log_entries: 1_000_000,
            trailing_entries: 0,
            stagger: Some((slot, 3)),
        };
        // thresholds 1200, 1400, 1600
        for (slot, limit) in [(0, 1200), (1, 1400), (2, 1600)] {
            assert!(!p(slot).should_snapshot(&stats(0, 5, limit, 1)));
            assert!(p(slot).should_snapshot(&stats(0, 5, limit + 1, 1)));
        }
        // Degenerate staggers fall back to the plain thresholds.
        for st in [Some((0, 1)), Some((5, 3)), Some((0, 0))] {
            let q = SnapshotPolicy {
                stagger: st,
                ..p(0)
            };
            assert!(q.should_snapshot(&stats(0, 5, 1201, 1)));
            assert!(!q.should_snapshot(&stats(0, 5, 1200, 1)));
        }
    }
}
