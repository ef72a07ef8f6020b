//! Snapshots in the server loop: taking them in the background (fork), compacting the log,
//! streaming them to followers that fell behind the compacted log, and installing received
//! ones. The call order follows docs/snapshots.md §5; the state machines live in
//! `crate::snapshot`.

use super::Server;
use crate::node::{install_received, install_staged, Installed, Transfers};
use crate::pb::raftpb::message::Body;
use crate::raft::{LogStore, Message, SnapshotMeta};
use crate::snapshot::{
    BackgroundSnapshot, LogStats, Received, SenderConfig, SnapshotMode, SnapshotPolicy,
    SnapshotSource, WritePacing,
};
use crate::storage::{SnapshotStore, SnapshotWriter};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Wait after a failed snapshot before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// Wall time per Raft tick spent deleting compacted log segments (about 1-3 MiB freed per
/// millisecond on the 2-core VM): 2 ms per 50 ms tick frees ~40+ MB/s, far more than the log
/// grows, while adding at most ~2 ms to one loop iteration per tick.
const TRASH_BUDGET_PER_TICK: Duration = Duration::from_millis(2);

/// A snapshot being written in the background.
struct InFlight {
    bg: BackgroundSnapshot,
    /// `bytes_since` when it started (what it covers of the byte count).
    bytes_at_start: u64,
    /// The applied index at which it became due: the policy's entry threshold, or the
    /// snapshot's own index if it started earlier (bytes threshold, SIGUSR1). What was applied
    /// past it until the snapshot is durable and the log compacted is what the log grew beyond
    /// the policy's intervals (docs/snapshots.md, "Disk use").
    due: u64,
}

/// Snapshot state of one node.
pub(super) struct Snapshots {
    pub store: SnapshotStore,
    /// Newest durable snapshot.
    pub latest: Option<(SnapshotMeta, PathBuf)>,
    pub policy: SnapshotPolicy,
    /// Disk bandwidth of the forked snapshot writer.
    pacing: WritePacing,
    /// Command bytes applied since the newest snapshot.
    pub bytes_since: u64,
    bg: Option<InFlight>,
    /// The child's pipe fired since the last look (see [`Server::snapshot_progress`]).
    pub child_event: bool,
    not_before: Option<Instant>,
    /// Streams to and from peers (the node layer's).
    pub transfers: Transfers<SnapshotWriter>,
}

impl Snapshots {
    pub fn new(
        store: SnapshotStore,
        latest: Option<(SnapshotMeta, PathBuf)>,
        policy: SnapshotPolicy,
        pacing: WritePacing,
    ) -> Snapshots {
        Snapshots {
            store,
            latest,
            policy,
            pacing,
            bytes_since: 0,
            bg: None,
            child_event: false,
            not_before: None,
            transfers: Transfers::new(SenderConfig::default()),
        }
    }

    fn latest_index(&self) -> u64 {
        self.latest.as_ref().map_or(0, |(m, _)| m.index)
    }
}

/// Renames snapshot files newer than `loaded` (the one startup restored: newer ones were found
/// damaged) to `*.snap.damaged`. They stay for inspection but leave the set of snapshots the
/// node manages: otherwise pruning ("keep the newest two") would soon delete the valid older
/// snapshot and keep the damaged one, and compaction would rely on it as its fallback.
pub(super) fn quarantine_newer(
    store: &SnapshotStore,
    loaded: &std::path::Path,
) -> Result<(), String> {
    let files = store.list().map_err(|e| e.to_string())?;
    for (_, _, path) in files.iter().take_while(|(_, _, p)| p != loaded) {
        let mut to = path.clone().into_os_string();
        to.push(".damaged");
        std::fs::rename(path, &to)
            .map_err(|e| format!("moving damaged snapshot {} aside: {e}", path.display()))?;
        log::warn!(
            "damaged snapshot {} moved to {}",
            path.display(),
            std::path::Path::new(&to).display()
        );
    }
    Ok(())
}

impl Server {
    fn log_stats(&self) -> LogStats {
        self.replica
            .log_stats(self.snaps.latest_index(), self.snaps.bytes_since)
    }

    /// Once per tick: free a slice of the trash, collect or start a snapshot, and advance the
    /// retransmission timers of outbound transfers.
    pub(super) fn snapshot_tick(&mut self) -> Result<(), String> {
        // Free compacted log segments a slice at a time (storage::trash): deleting them whole
        // stalled the loop for up to ~0.9 s after a snapshot of a large log.
        self.replica
            .core_mut()
            .store_mut()
            .trash_step(TRASH_BUDGET_PER_TICK);
        // ... and pruned snapshot files (normally the snapshot child deletes those itself).
        self.snaps.store.trash_step(TRASH_BUDGET_PER_TICK);
        // The tick also polls in case a wake-up from the child's pipe was missed.
        self.snaps.child_event = true;
        self.snapshot_progress()?;

        // A leader receives no snapshots: free a partial transfer (and its temp file) left
        // from when this node was a follower.
        if self.replica.leader_term().is_some() {
            self.snaps.transfers.receiver().abort();
        }

        let mut out = Vec::new();
        self.snaps.transfers.tick(self.replica.core_mut(), &mut out);
        for m in out {
            self.send_peer(m);
        }
        Ok(())
    }

    /// Collects a finished background snapshot (then compacts the log), and starts the next
    /// one as soon as it is due. Runs at the end of every loop pass, not once per tick: the
    /// log grows while a due snapshot waits and while one is written, and on a busy machine
    /// a tick-paced cadence (due on one tick, collected on the next, the next one started on
    /// the tick after) let the log grow to ~10 snapshot intervals in the 50-entry test of
    /// tests/snapshot.rs. A running child is polled (`waitpid`) only after its pipe fired
    /// (`child_event`) or on a tick, so no syscall is added to passes while it writes.
    pub(super) fn snapshot_progress(&mut self) -> Result<(), String> {
        if self.snaps.bg.is_some() {
            if !std::mem::take(&mut self.snaps.child_event) {
                return Ok(());
            }
            let fd = self.snaps.bg.as_ref().and_then(|f| f.bg.completion_fd());
            let Some(result) = self.snaps.bg.as_mut().and_then(|f| f.bg.poll()) else {
                return Ok(());
            };
            let Some(done) = self.snaps.bg.take() else {
                return Ok(());
            };
            if let Some(fd) = fd {
                // Before `done` drops and closes it.
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut mio::unix::SourceFd(&fd));
            }
            match result {
                Ok(d) => self.snapshot_written(d, done.bytes_at_start, done.due)?,
                Err(e) => {
                    log::warn!("background snapshot failed (retrying later): {e}");
                    if e.to_string().contains("os error 28") {
                        // ENOSPC, as the child reports it.
                        self.note_disk_full(format!("disk full: writing a snapshot: {e}"));
                    }
                    self.snaps.not_before = Some(Instant::now() + RETRY_AFTER_FAILURE);
                    return Ok(());
                }
            }
        }
        if super::signal::take_snapshot_request() {
            if self.replica.kv().applied() > self.snaps.latest_index() {
                log::info!("snapshot requested (SIGUSR1)");
                self.start_snapshot();
            } else {
                log::info!("snapshot requested (SIGUSR1): the newest snapshot is current");
            }
        } else if self.snaps.not_before.is_none_or(|t| Instant::now() >= t)
            && self.snaps.policy.should_snapshot(&self.log_stats())
        {
            self.start_snapshot();
        }
        Ok(())
    }

    /// A background snapshot is durable: make it the newest, prune, compact the log.
    fn snapshot_written(
        &mut self,
        done: crate::snapshot::SnapshotDone,
        bytes_at_start: u64,
        due: u64,
    ) -> Result<(), String> {
        self.snaps.bytes_since = self.snaps.bytes_since.saturating_sub(bytes_at_start);
        // A snapshot received from the leader while this one was being written may already
        // be newer: never move `latest` backwards.
        if done.meta.index > self.snaps.latest_index() {
            self.snaps.latest = Some((done.meta.clone(), done.path.clone()));
        }
        if let Err(e) = self.snaps.store.prune() {
            log::warn!("pruning old snapshots: {e}");
        }
        self.compact_log()?;
        self.metrics.snapshots_taken += 1;
        // The phrase "entries applied past its due index" is read by tests/snapshot.rs.
        log::info!(
            "snapshot at index {} written: {} ({} entries applied past its due index {})",
            done.meta.index,
            done.path.display(),
            self.replica.kv().applied().saturating_sub(due),
            due
        );
        Ok(())
    }

    /// A backup needs a snapshot newer than the newest file (`backup.rs`): starts one now,
    /// outside the policy, unless one is being written (the caller polls again once it is
    /// done) or the last attempt failed less than [`RETRY_AFTER_FAILURE`] ago (then says so:
    /// forking again on every poll would not fix a full disk).
    /// Only once `point` is applied here: a snapshot below it would not do (a lagging
    /// follower polled with the leader's point answers not ready until it caught up).
    pub(super) fn snapshot_for_backup(&mut self, point: u64) -> Result<(), String> {
        if self.snaps.bg.is_some() {
            return Ok(());
        }
        if let Some(t) = self.snaps.not_before.filter(|&t| Instant::now() < t) {
            return Err(format!(
                "the last snapshot attempt failed (see the node's log); next attempt in {:?}",
                t - Instant::now()
            ));
        }
        let applied = self.replica.kv().applied();
        if applied >= point && applied > self.snaps.latest_index() {
            log::info!("snapshot requested by a backup");
            self.start_snapshot();
        }
        Ok(())
    }

    fn start_snapshot(&mut self) {
        if self.withholding_acks() {
            // A full disk keeps entries out of the log, some perhaps applied already: the log
            // does not know their terms, and the snapshot could not be written anyway.
            self.snaps.not_before = Some(Instant::now() + RETRY_AFTER_FAILURE);
            return;
        }
        let mut meta = match self.replica.snapshot_meta() {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{e}");
                self.snaps.not_before = Some(Instant::now() + RETRY_AFTER_FAILURE);
                return;
            }
        };
        // A settled id only: a provisional one may still be given up for the cluster's.
        if let crate::net::handshake::LocalCluster::Known(c) = self.cluster_id {
            meta.cluster_id = c.to_meta();
        }
        let (index, term) = (meta.index, meta.term);
        let due = u64::try_from(self.snaps.policy.due_index(self.snaps.latest_index()))
            .unwrap_or(u64::MAX)
            .min(index);
        let t0 = Instant::now();
        match BackgroundSnapshot::start_paced(
            SnapshotMode::Fork,
            &mut self.snaps.store,
            meta,
            self.replica.kv(),
            self.snaps.pacing,
        ) {
            Ok(bg) => {
                // "due at" is read by tests/snapshot.rs (the lateness of a running snapshot).
                log::info!(
                    "taking a snapshot at index {index} term {term}, due at {due} (fork took {:?})",
                    t0.elapsed()
                );
                self.watch_child(&bg);
                self.snaps.bg = Some(InFlight {
                    bg,
                    bytes_at_start: self.snaps.bytes_since,
                    due,
                });
            }
            Err(e) => {
                log::warn!("cannot start a snapshot at index {index}: {e}");
                self.snaps.not_before = Some(Instant::now() + RETRY_AFTER_FAILURE);
            }
        }
    }

    /// Registers the child's pipe with the reactor, so that its end wakes the loop.
    fn watch_child(&mut self, bg: &BackgroundSnapshot) {
        let Some(fd) = bg.completion_fd() else {
            return;
        };
        if let Err(e) = self.poll.registry().register(
            &mut mio::unix::SourceFd(&fd),
            crate::net::reactor::SNAPSHOT_CHILD,
            mio::Interest::READABLE,
        ) {
            // Not fatal: the tick polls the child anyway.
            log::warn!("watching the snapshot child's pipe: {e}");
        }
    }

    /// Drops the log prefix the newest snapshot covers (keeping the policy's trailing margin),
    /// but never past the *previous* snapshot on disk: if the newest file is found damaged at
    /// startup, `load_latest` falls back to the previous one, and the log must still hold
    /// every entry after it for that fallback to lose nothing.
    fn compact_log(&mut self) -> Result<(), String> {
        let Some(mut c) = self.snaps.policy.compact_index(&self.log_stats()) else {
            return Ok(());
        };
        match self.snaps.store.list() {
            Ok(files) => {
                // Newest first; with a single file there is nothing to fall back to.
                if let Some(&(fallback, _, _)) = files.get(1).or(files.first()) {
                    c = c.min(fallback);
                }
            }
            Err(e) => {
                log::warn!("not compacting the log: listing snapshots: {e}");
                return Ok(());
            }
        }
        if c < self.replica.core().store().first_index() {
            return Ok(());
        }
        let t0 = Instant::now();
        let store = self.replica.core_mut().store_mut();
        let term = store
            .term(c)
            .map_err(|e| format!("compacting the log to {c}: {e}"))?;
        store
            .compact(c, term)
            .map_err(|e| format!("compacting the log to {c}: {e}"))?;
        debug_assert_eq!(store.check_invariants(), Ok(()));
        // Free what that dropped now rather than at the next tick (at least one slice: all of
        // it when segments are small), so compacted segments rarely outlive the pass.
        store.trash_step(TRASH_BUDGET_PER_TICK);
        log::info!("log compacted through index {c} in {:?}", t0.elapsed());
        Ok(())
    }

    /// Ready step 5 (leader): start streaming the newest snapshot to each peer that needs it.
    pub(super) fn on_snapshot_sends(&mut self, peers: Vec<u64>) {
        let latest = self.snaps.latest.as_ref().map(|(_, p)| p.clone());
        let source = || {
            latest
                .clone()
                .map(|p| Box::new(p) as Box<dyn SnapshotSource>)
        };
        self.metrics.snapshots_sent += peers.len() as u64;
        let mut out = Vec::new();
        self.snaps
            .transfers
            .start(self.replica.core_mut(), peers, source, &mut out);
        for m in out {
            self.send_peer(m);
        }
    }

    /// Ready step 5: InstallSnapshotResponses (leader) and InstallSnapshot chunks (follower).
    pub(super) fn on_snapshot_msgs(&mut self, msgs: Vec<Message>) -> Result<(), String> {
        for msg in msgs {
            match &msg.body {
                Some(Body::InstallSnapshotResponse(_)) => {
                    let mut out = Vec::new();
                    self.snaps
                        .transfers
                        .on_response(self.replica.core_mut(), &msg, &mut out);
                    for m in out {
                        self.send_peer(m);
                    }
                }
                Some(Body::InstallSnapshot(_)) => self.on_install_snapshot(&msg)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Ready phase "-": the received snapshot the core took becomes the log's start and the
    /// state machine's state; then its `done` answer leaves.
    pub(super) fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), String> {
        let reply = install_staged(&mut self.replica, &meta)?;
        self.send_peer(reply);
        self.flush_peers();
        self.commit_hint = self.commit_hint.max(meta.index);
        self.snaps.bytes_since = 0;
        // The log restarts after the snapshot: entries a full disk deferred are covered.
        self.space.deferred.clear();
        log::info!(
            "installed snapshot at index {} term {}",
            meta.index,
            meta.term
        );
        Ok(())
    }

    fn on_install_snapshot(&mut self, msg: &Message) -> Result<(), String> {
        let applied = self.replica.kv().applied();
        let snaps = &mut self.snaps;
        let rs = match snaps
            .transfers
            .receiver()
            .on_message(&mut snaps.store, applied, msg)
        {
            Received::Ignored => return Ok(()),
            Received::Reply(m) => {
                self.send_peer(m);
                return Ok(());
            }
            Received::Complete(rs) => rs,
        };
        // Every byte is here: say so before the validation (which decodes the whole payload,
        // seconds per GiB), so the leader waits for the `done`.
        self.send_peer(rs.progress_reply());
        self.flush_peers();
        match install_received(&mut self.replica, &mut self.snaps.store, *rs)? {
            Installed::Staged { meta, published } => {
                // Durable: it is the newest snapshot file now. The core's next Ready installs
                // it (`install_snapshot` below).
                self.snaps.latest = Some((meta.clone(), published));
                self.metrics.snapshots_received += 1;
                if let Err(e) = self.snaps.store.prune() {
                    log::warn!("pruning old snapshots: {e}");
                }
                log::info!(
                    "received snapshot at index {} term {} from node {}",
                    meta.index,
                    meta.term,
                    msg.from
                );
            }
            Installed::Stale { meta, reply, .. } => {
                log::info!(
                    "received snapshot {} is stale; kept on disk only",
                    meta.index
                );
                self.send_peer(reply);
            }
            Installed::Invalid { why, reply } => {
                // Never published: the node keeps its state, log and snapshots, and the leader
                // hears of the failure.
                log::error!(
                    "snapshot received from node {} discarded (node keeps its current state): \
                     {why}",
                    msg.from
                );
                self.send_peer(reply);
            }
        }
        Ok(())
    }
}
