//! The space quota and the NO_SPACE alarm (etcd's NOSPACE alarm), and surviving a full disk.
//!
//! This node has a *space problem* while its state (bytes of keys and values) or its data
//! directory (allocated bytes of every file in it) exceeds `--quota-bytes`, or while its disk
//! refused an allocation (the next log segment, preallocated ahead of need; a snapshot
//! file) with ENOSPC/EDQUOT. Followers report theirs to the leader in their heartbeat answers
//! (`HeartbeatResponse.no_space`, read and written here, in the shell; the core ignores it).
//!
//! The **alarm** is replicated state (`kvpb::Alarm`, applied by every state machine and
//! saved in the KV snapshot): the leader proposes raising it when it or a follower has a space
//! problem and clearing it once none has (or on `raftkv alarm disarm`). While it is raised,
//! every replica refuses puts and value-setting CAS *at apply time* (so a write refused on one
//! node is refused on all, and an accepted-then-refused write never applies later by
//! surprise), and the leader refuses them up front; reads, deletes and compaction go on.
//!
//! **A full disk is survived, not fatal**: the next segment is allocated ahead of need (after
//! each append that used the last spare, and from the space-check timer), so ENOSPC shows while
//! the active segment still has room for the alarm and for deletes. If an append still finds
//! no room, nothing of it is logged (`Log::append` is all-or-nothing on ENOSPC): its entries
//! wait here (`deferred`), this node withholds the acks that would promise them (a follower
//! simply does not ack; the leader re-sends on its heartbeats) and retries from the timer. A
//! failed *sync* stays fail-stop (`ready_shell.rs`): after it the page cache may no longer hold
//! what was written (fsyncgate).

use super::timers::TimerEvent;
use super::Server;
use crate::pb::raftpb::message::Body;
use crate::raft::{Entry, LogStore, Message, Role};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A follower's report counts this long after its last heartbeat answer (a hundred heartbeats
/// at the default tick): a node that stopped answering (crashed, cut off) must not keep the
/// alarm raised for ever; one that answers refreshes it on every heartbeat.
const PEER_REPORT_TTL: Duration = Duration::from_secs(5);

/// Percent of `--quota-bytes` the usage must fall below before a raised alarm clears.
const CLEAR_BELOW: u64 = 90;

/// The space state of one node.
#[derive(Debug, Default)]
pub(super) struct Space {
    /// Entries a full disk kept out of the log (the newest try's, contiguous), waiting for
    /// room; their acks are withheld meanwhile.
    pub(super) deferred: Vec<Entry>,
    /// Why the disk last refused an allocation (cleared once the spare segment allocates).
    disk_full: Option<String>,
    /// Allocated bytes of the data directory, as of the last check.
    pub(super) data_dir_bytes: u64,
    /// The followers' reported problems and when they were reported (leader: from their
    /// heartbeat answers).
    peer_problem: HashMap<u64, (bool, Instant)>,
    /// An alarm change this node proposed that has not applied yet: (raise, log index).
    proposed: Option<(bool, u64)>,
    /// The problem last logged, so each change is logged once.
    logged: Option<String>,
}

/// Allocated bytes of every file under `dir` (preallocated segments count whole, as on disk).
/// Unreadable entries count 0: the measure is for the quota, not a check of the directory.
fn dir_bytes(dir: &Path, depth: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|ent| match ent.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => dir_bytes(&ent.path(), depth - 1),
            Ok(m) if m.is_file() => m.blocks() * 512,
            _ => 0,
        })
        .sum()
}

impl Server {
    /// This node's own space problem, if it has one (why, for status and logs). While the
    /// alarm is raised the bar is [`CLEAR_BELOW`] of the quota: the alarm clears only once the
    /// usage is well under it, not on every delete that dips below it (no flapping).
    pub(super) fn space_problem(&self) -> Option<String> {
        let quota = match self.replica.kv().alarm() {
            Some(_) => self.cfg.quota_bytes / 100 * CLEAR_BELOW,
            None => self.cfg.quota_bytes,
        };
        let state = self.replica.kv().state_bytes();
        if state > quota {
            return Some(format!(
                "state of {state} bytes is over {quota} (the quota; a raised alarm clears below \
                 {CLEAR_BELOW}% of it)"
            ));
        }
        let dir = self.space.data_dir_bytes;
        if dir > quota {
            return Some(format!(
                "data directory of {dir} bytes is over {quota} (the quota; a raised alarm \
                 clears below {CLEAR_BELOW}% of it)"
            ));
        }
        if !self.space.deferred.is_empty() {
            return Some(format!(
                "disk full: {} entries wait for room in the log",
                self.space.deferred.len()
            ));
        }
        self.space.disk_full.clone()
    }

    /// The periodic check (timer): measures the data directory, retries the spare segment and
    /// any deferred entries, and raises or clears the alarm.
    pub(super) fn space_check(&mut self) -> Result<(), String> {
        self.space.data_dir_bytes = dir_bytes(&self.cfg.data_dir, 3);
        self.retry_deferred()?;
        self.allocate_spare();
        self.drive_alarm();
        self.timers.insert(
            Instant::now() + super::config::SPACE_CHECK_INTERVAL,
            TimerEvent::SpaceCheck,
        );
        Ok(())
    }

    /// Allocates the next log segment if none waits; a full disk becomes a space problem.
    pub(super) fn allocate_spare(&mut self) {
        let log = self.replica.core_mut().store_mut();
        if log.has_spare() {
            return;
        }
        match log.ensure_spare() {
            Ok(()) => self.space.disk_full = None,
            Err(e) if e.is_no_space() => {
                self.note_disk_full(format!("disk full: preallocating the next segment: {e}"))
            }
            Err(e) => log::warn!("preallocating the next log segment: {e} (retrying later)"),
        }
    }

    /// The disk refused an allocation: a space problem until an allocation succeeds again.
    pub(super) fn note_disk_full(&mut self, why: String) {
        self.space.disk_full = Some(why);
        self.drive_alarm();
    }

    /// Appends `entries` (after any deferred ones), or defers them all if the disk is full.
    /// Returns whether anything reached the log (it then needs the Ready's sync).
    pub(super) fn append_or_defer(&mut self, entries: &[Entry]) -> Result<bool, String> {
        let batch = crate::node::merge_deferred(std::mem::take(&mut self.space.deferred), entries);
        let log = self.replica.core_mut().store_mut();
        match log.append(&batch) {
            Ok(()) => {
                if !log.has_spare() {
                    self.allocate_spare();
                }
                Ok(true)
            }
            Err(e) if e.is_no_space() => {
                let why = format!("disk full: appending to the log: {e}");
                self.space.deferred = batch;
                self.note_disk_full(why);
                Ok(false)
            }
            Err(e) => Err(format!("appending to the log: {e}")),
        }
    }

    /// Appends the deferred entries if there is room now; syncs them and tells the core.
    fn retry_deferred(&mut self) -> Result<(), String> {
        if self.space.deferred.is_empty() {
            return Ok(());
        }
        if !self.append_or_defer(&[])? {
            return Ok(());
        }
        self.replica
            .core_mut()
            .store_mut()
            .sync()
            .map_err(|e| format!("syncing the log: {e}"))?;
        let last = self.replica.core().store().last_index();
        if let Ok(term) = self.replica.core().store().term(last) {
            self.replica.core_mut().on_persisted(last, term);
        }
        log::info!("deferred log entries through index {last} written: the disk has room again");
        Ok(())
    }

    /// Leader: proposes raising the alarm while any node has a space problem, clearing it once
    /// none has; logs this node's problem when it changes.
    pub(super) fn drive_alarm(&mut self) {
        let own = self.space_problem();
        if own != self.space.logged {
            match &own {
                Some(p) => log::warn!("space problem on node {}: {p}", self.cfg.id),
                None => log::info!("node {}: space back under the quota", self.cfg.id),
            }
            self.space.logged = own.clone();
        }
        if self.replica.core().role() != Role::Leader {
            return;
        }
        let mut any = own.is_some()
            || self
                .space
                .peer_problem
                .values()
                .any(|&(p, at)| p && at.elapsed() < PEER_REPORT_TTL);
        let raised = self.replica.kv().alarm().is_some();
        if raised && !any {
            // Clear only on a fresh measure (the timer's may be up to an interval old).
            self.space.data_dir_bytes = dir_bytes(&self.cfg.data_dir, 3);
            any = self.space_problem().is_some();
        }
        if any == raised {
            return;
        }
        let applied = self.replica.applied();
        if self
            .space
            .proposed
            .is_some_and(|(r, at)| r == any && at > applied)
        {
            return; // already on its way
        }
        match self.replica.propose_alarm(any) {
            Ok(index) => self.space.proposed = Some((any, index)),
            Err(e) => log::debug!("alarm proposal refused: {e:?}"),
        }
    }

    /// Leader: a follower's heartbeat answer says whether it has a space problem.
    pub(super) fn on_peer_space(&mut self, msg: &Message) {
        if let Some(Body::HeartbeatResponse(r)) = &msg.body {
            let was = self
                .space
                .peer_problem
                .insert(msg.from, (r.no_space, Instant::now()))
                .map(|(p, _)| p);
            if was != Some(r.no_space) {
                if r.no_space {
                    log::warn!("node {} reports a space problem", msg.from);
                }
                self.drive_alarm();
            }
        }
    }

    /// Follower: tells the leader about this node's space problem in heartbeat answers.
    pub(super) fn mark_space(&self, msg: &mut Message) {
        if let Some(Body::HeartbeatResponse(r)) = &mut msg.body {
            r.no_space = self.space_problem().is_some();
        }
    }

    /// True while deferred entries wait: acks that would promise them must not leave.
    pub(super) fn withholding_acks(&self) -> bool {
        !self.space.deferred.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use crate::node::merge_deferred;
    use crate::raft::Entry;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn later_entries_replace_the_deferred_suffix() {
        let ids = |v: &[Entry]| v.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>();
        let d = vec![e(5, 1), e(6, 1), e(7, 1)];
        assert_eq!(
            ids(&merge_deferred(d.clone(), &[e(8, 1)])),
            [(5, 1), (6, 1), (7, 1), (8, 1)]
        );
        assert_eq!(
            ids(&merge_deferred(d.clone(), &[e(6, 2)])),
            [(5, 1), (6, 2)]
        );
        assert_eq!(ids(&merge_deferred(d.clone(), &[e(3, 2)])), [(3, 2)]);
        assert_eq!(ids(&merge_deferred(d, &[])), [(5, 1), (6, 1), (7, 1)]);
        assert_eq!(ids(&merge_deferred(Vec::new(), &[e(1, 1)])), [(1, 1)]);
    }
}
