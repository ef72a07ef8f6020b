//! The simulated disk of one node.
//!
//! The node's view of its log, handed to the core, is the core's in-memory [`MemLog`].
//! [`Disk`] models durability: writes are queued and become durable only when a sync completes
//! (after a simulated latency). A crash discards queued writes, except that a torn write may
//! leave a prefix of the queued entries durable (never the hard state written after them),
//! which a real disk can do and which is harmless because nothing depending on those writes
//! left the node. A restart rebuilds the node from [`Durable`] only.

use crate::kv::KvStore;
use crate::raft::{Entry, HardState, LogStore, MemLog, SnapshotMeta};
use crate::rng::Rng;
use crate::snapshot::{PartialSnapshot, SinkError, SnapshotError, SnapshotSink, SnapshotSource};
use bytes::Bytes;
use std::io::Read;

/// A snapshot as stored: its metadata and the state machine bytes.
#[derive(Debug, Clone, Default)]
pub struct SnapFile {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

/// What survives a crash.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    pub hard_state: HardState,
    pub log: MemLog,
    pub snapshot: Option<SnapFile>,
}

/// One queued write.
#[derive(Debug, Clone)]
enum Write {
    Append(Vec<Entry>),
    HardState(HardState),
    /// A received snapshot's file queued like any write (only the `SnapshotBeforeDurable`
    /// planted bug does this: a correct sink makes it durable before the log moves or its
    /// state is used).
    SnapshotFile(SnapFile),
}

/// A node's disk: durable state plus writes waiting for a sync.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub durable: Durable,
    queued: Vec<Write>,
    /// Number of syncs completed (for the trace).
    pub syncs: u64,
}

impl Disk {
    /// Queues a log append (with truncation semantics). Not durable until [`Disk::sync`].
    pub fn append(&mut self, ents: &[Entry]) {
        if !ents.is_empty() {
            self.queued.push(Write::Append(ents.to_vec()));
        }
    }

    /// Queues a hard state write.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.queued.push(Write::HardState(hs));
    }

    /// True if writes are waiting for a sync.
    pub fn dirty(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The sync completed: every queued write is now durable.
    pub fn sync(&mut self) -> Result<(), String> {
        for w in std::mem::take(&mut self.queued) {
            match w {
                Write::Append(ents) => self.durable.log.append(&ents)?,
                Write::HardState(hs) => self.durable.hard_state = hs,
                Write::SnapshotFile(snap) => self.durable.snapshot = Some(snap),
            }
        }
        self.syncs += 1;
        Ok(())
    }

    /// Atomically (write to a temp file, fsync, rename) stores a snapshot of this node's own
    /// state (the log is compacted separately, as far as the policy allows: [`Disk::compact`]).
    pub fn save_snapshot(&mut self, snap: SnapFile) -> Result<(), String> {
        let index = snap.meta.index;
        if self.durable.log.last_index() < index {
            return Err(format!(
                "local snapshot at {index} above durable last index {}",
                self.durable.log.last_index()
            ));
        }
        self.durable.snapshot = Some(snap);
        Ok(())
    }

    /// Drops the durable log through `index` (of `term`), never past the durable snapshot.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<(), String> {
        let snap = self.durable.snapshot.as_ref().map_or(0, |s| s.meta.index);
        if index > snap {
            return Err(format!(
                "compact to {index} past the durable snapshot {snap}"
            ));
        }
        self.durable.log.compact(index, term)
    }

    /// A received snapshot becomes the durable snapshot (the log is reset separately, after
    /// the core took it: [`Disk::reset_log`]).
    fn publish_received(&mut self, snap: SnapFile) -> Result<(), String> {
        // Queued writes were for the old log: a real shell would have synced them first.
        self.sync()?;
        self.durable.snapshot = Some(snap);
        Ok(())
    }

    /// The durable log restarts right after an installed snapshot (index, term).
    pub fn reset_log(&mut self, index: u64, term: u64) {
        self.durable.log.reset(index, term);
        if self.durable.hard_state.commit < index {
            self.durable.hard_state.commit = index;
        }
    }

    /// At restart, as the server's recovery does: a durable snapshot newer than the log's
    /// start that the log does not continue (a crash between publishing a received snapshot
    /// and resetting the log) resets the log to it; a log that holds the snapshot's entry is
    /// kept as it is.
    pub fn reconcile_log(&mut self) {
        let Some(s) = &self.durable.snapshot else {
            return;
        };
        let (index, term) = (s.meta.index, s.meta.term);
        // Holding the snapshot's own entry (or starting right after it), the log continues
        // it. A log that starts past it (compacted or reset beyond the snapshot: entries in
        // between are lost) is left for the restart to refuse, as the server's recovery check
        // refuses it; only a snapshot newer than the log's start resets the log.
        if self.durable.log.term(index) == Ok(term) || self.durable.log.first_index() > index + 1 {
            return;
        }
        self.reset_log(index, term);
    }

    /// Power loss: queued writes are lost, except that with `torn` a random prefix of queued
    /// log entries may have reached the disk (the hard state queued after them never does).
    pub fn crash(&mut self, torn: bool, rng: &mut Rng) {
        let queued = std::mem::take(&mut self.queued);
        if !torn {
            return;
        }
        for w in queued {
            match w {
                Write::Append(ents) => {
                    let keep = rng.range(0, ents.len() as u64 + 1) as usize;
                    if keep == 0 || self.durable.log.append(&ents[..keep]).is_err() {
                        return;
                    }
                    if keep < ents.len() {
                        return;
                    }
                }
                Write::HardState(_) | Write::SnapshotFile(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::LogError;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn memlog_append_truncates_compacts_and_resets() {
        let mut l = MemLog::new();
        assert_eq!((l.first_index(), l.last_index()), (1, 0));
        assert_eq!(l.term(0), Ok(0));
        l.append(&[ent(1, 1), ent(2, 1), ent(3, 2)]).unwrap();
        assert_eq!(l.last_index(), 3);
        l.append(&[ent(3, 3), ent(4, 3)]).unwrap();
        assert_eq!((l.term(3), l.term(4)), (Ok(3), Ok(3)));
        assert!(l.append(&[ent(9, 3)]).is_err(), "gap must be refused");
        l.compact(2, 1).unwrap();
        assert_eq!(
            (l.first_index(), l.term(2), l.term(1)),
            (3, Ok(1), Err(LogError::Compacted))
        );
        assert_eq!(l.term(5), Err(LogError::Unavailable));
        assert_eq!(l.entries(3, 5, u64::MAX).unwrap().len(), 2);
        assert_eq!(l.entries(3, 5, 0).unwrap().len(), 1, "at least one entry");
        assert_eq!(l.entries(2, 4, u64::MAX), Err(LogError::Compacted));
        assert!(
            l.append(&[ent(2, 9)]).is_err(),
            "append below snapshot refused"
        );
        l.reset(10, 7);
        assert_eq!(
            (l.first_index(), l.last_index(), l.term(10)),
            (11, 10, Ok(7))
        );
    }

    #[test]
    fn only_synced_writes_survive_a_crash() {
        let mut rng = Rng::new(1);
        let mut d = Disk::default();
        d.append(&[ent(1, 1)]);
        d.set_hard_state(HardState {
            term: 1,
            vote: 2,
            commit: 0,
        });
        d.sync().unwrap();
        d.append(&[ent(2, 1)]);
        d.set_hard_state(HardState {
            term: 2,
            vote: 3,
            commit: 1,
        });
        d.crash(false, &mut rng);
        assert_eq!(d.durable.log.last_index(), 1);
        assert_eq!(d.durable.hard_state.term, 1);
    }

    #[test]
    fn torn_crash_keeps_an_entry_prefix_never_the_hard_state() {
        let mut kept = [false; 4];
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let mut d = Disk::default();
            d.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
            d.set_hard_state(HardState {
                term: 5,
                vote: 0,
                commit: 3,
            });
            d.crash(true, &mut rng);
            assert_eq!(d.durable.hard_state.term, 0);
            kept[d.durable.log.last_index() as usize] = true;
        }
        assert!(
            kept.iter().all(|&k| k),
            "every prefix length occurs: {kept:?}"
        );
    }

    #[test]
    fn snapshots_compact_or_reset_the_durable_log() {
        let mut d = Disk::default();
        d.append(&[ent(1, 1), ent(2, 1), ent(3, 2)]);
        d.sync().unwrap();
        let snap = |index, term| SnapFile {
            meta: SnapshotMeta {
                index,
                term,
                conf: None,
                ..Default::default()
            },
            data: Bytes::from_static(b"x"),
        };
        d.save_snapshot(snap(2, 1)).unwrap();
        assert!(d.compact(3, 2).is_err(), "never past the snapshot");
        d.compact(2, 1).unwrap();
        assert_eq!(
            (d.durable.log.first_index(), d.durable.log.last_index()),
            (3, 3)
        );
        assert!(d.save_snapshot(snap(9, 1)).is_err());
        d.publish_received(snap(20, 4)).unwrap();
        // Published, log not yet reset: a restart reconciles like the server's recovery.
        assert_eq!(d.durable.log.last_index(), 3);
        d.reconcile_log();
        assert_eq!(
            (d.durable.log.first_index(), d.durable.log.last_index()),
            (21, 20)
        );
        assert_eq!(d.durable.hard_state.commit, 20);
    }
}

/// A snapshot being received into memory.
#[derive(Debug, Default)]
pub struct MemPartial {
    data: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl PartialSnapshot for MemPartial {
    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.crc.update(data);
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn payload_crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    fn bytes_written(&self) -> u64 {
        self.data.len() as u64
    }

    fn abort(self) {}
}

/// The simulated disk as the receiver's sink: a complete snapshot is validated by restoring
/// its state, then made durable. With `before_durable` (the planted `SnapshotBeforeDurable`
/// bug) it is only queued, so a crash before the next sync loses it after the log was reset.
pub struct DiskSink<'a> {
    pub disk: &'a mut Disk,
    pub before_durable: bool,
}

impl SnapshotSink for DiskSink<'_> {
    type Partial = MemPartial;
    type Published = ();

    fn create(&mut self, _meta: &SnapshotMeta) -> Result<MemPartial, SnapshotError> {
        Ok(MemPartial::default())
    }

    fn install(&mut self, p: MemPartial, meta: &SnapshotMeta) -> Result<(KvStore, ()), SinkError> {
        let kv = KvStore::restore_snapshot(&mut &p.data[..])
            .map_err(|e| SinkError::Invalid(format!("restoring the KV state: {e}")))?;
        if kv.applied() != meta.index {
            return Err(SinkError::Invalid(format!(
                "KV state is at index {} but the snapshot claims index {}",
                kv.applied(),
                meta.index
            )));
        }
        let snap = SnapFile {
            meta: meta.clone(),
            data: p.data.into(),
        };
        if self.before_durable {
            // PLANTED BUG: the state is used at once, the file durable only at the next sync.
            self.disk.queued.push(Write::SnapshotFile(snap));
        } else {
            self.disk
                .publish_received(snap)
                .map_err(|e| SinkError::Fatal(SnapshotError::Other(e)))?;
        }
        Ok((kv, ()))
    }
}

/// A snapshot on the simulated disk, streamed by the leader's sender.
impl SnapshotSource for SnapFile {
    fn open(&self) -> Result<(SnapshotMeta, Box<dyn Read>), SnapshotError> {
        Ok((
            self.meta.clone(),
            Box::new(std::io::Cursor::new(self.data.clone())),
        ))
    }

    fn name(&self) -> String {
        format!("simulated snapshot {}/t{}", self.meta.index, self.meta.term)
    }
}
