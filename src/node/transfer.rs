//! Snapshot transfer, for both shells: the leader's streams to followers behind its compacted
//! log (one [`SnapshotSender`] per peer) and the follower's receiver, and the order in which a
//! complete received snapshot is installed:
//!
//! 1. the sink validates it in full and makes it durable (the server: sealed, fsynced,
//!    restored from its file, renamed into the snapshot directory) ([`install_received`]);
//! 2. the core takes it (`restore_snapshot`), or refuses it as stale (its log covers it);
//!    the replica holds its state until the core's next Ready carries it
//!    (`Ready::snapshot`), where, before anything else of that Ready ([`install_staged`]):
//! 3. the log is reset to start right after it;
//! 4. the state machine becomes its state (pending writes UNCERTAIN, confirmed reads served);
//! 5. the shell sends the `done` answer.
//!
//! A crash after 1 leaves a durable snapshot newer than the log, which recovery handles
//! (the log is reset to it on restart); the state is never used before it is durable, which
//! the simulator's planted `SnapshotBeforeDurable` bug violates to prove the checks see it.
//! The sender and receiver state machines are `crate::snapshot`'s; the server's sink is the
//! snapshot directory, the simulator's its simulated disk (`sim/disk.rs`).

use super::replica::StagedSnapshot;
use super::Replica;
use crate::raft::{LogStore, MemLog, Message, RawNode, SnapshotMeta};
use crate::snapshot::{
    InstallError, PartialSnapshot, ReceivedSnapshot, SendStatus, SenderConfig, SnapshotReceiver,
    SnapshotSender, SnapshotSink, SnapshotSource,
};
use std::collections::BTreeMap;

/// A log that can be restarted right after an installed snapshot.
pub trait ResetLog {
    /// Drops every entry: the log continues right after (index, term).
    fn reset_log(&mut self, index: u64, term: u64) -> Result<(), String>;
}

impl ResetLog for crate::storage::Log {
    fn reset_log(&mut self, index: u64, term: u64) -> Result<(), String> {
        self.reset(index, term)
            .map_err(|e| format!("resetting the log to snapshot {index}: {e}"))?;
        debug_assert_eq!(self.check_invariants(), Ok(()));
        Ok(())
    }
}

impl ResetLog for MemLog {
    fn reset_log(&mut self, index: u64, term: u64) -> Result<(), String> {
        self.reset(index, term);
        Ok(())
    }
}

/// The snapshot streams of one node.
pub struct Transfers<P> {
    cfg: SenderConfig,
    /// By peer (ordered: the simulator's runs must not depend on hash order).
    senders: BTreeMap<u64, SnapshotSender>,
    receiver: SnapshotReceiver<P>,
}

/// What became of a complete received snapshot.
pub enum Installed<H> {
    /// Durable and taken by the core; the core's next Ready installs it (and its answer
    /// leaves then).
    Staged { meta: SnapshotMeta, published: H },
    /// Durable, but the core's log already covers it: send `reply` only.
    Stale {
        meta: SnapshotMeta,
        published: H,
        reply: Message,
    },
    /// Invalid: discarded, the node keeps its state; send `reply` (a failure answer).
    Invalid { why: String, reply: Message },
}

impl<P: PartialSnapshot> Transfers<P> {
    /// No streams yet; senders use `cfg`.
    pub fn new(cfg: SenderConfig) -> Self {
        Transfers {
            cfg,
            senders: BTreeMap::new(),
            receiver: SnapshotReceiver::new(),
        }
    }

    /// The follower side.
    pub fn receiver(&mut self) -> &mut SnapshotReceiver<P> {
        &mut self.receiver
    }

    /// Drops every outbound stream (leadership lost or won: the next leader starts over).
    pub fn drop_senders(&mut self) {
        self.senders.clear();
    }

    /// Ready phase 5 (leader): starts streaming the newest snapshot (`source`) to each of
    /// `peers` not already receiving one; the first chunks go to `out`.
    pub fn start<L: LogStore>(
        &mut self,
        core: &mut RawNode<L>,
        peers: Vec<u64>,
        source: impl Fn() -> Option<Box<dyn SnapshotSource>>,
        out: &mut Vec<Message>,
    ) {
        let from = core.status().id;
        for peer in peers {
            if self.senders.contains_key(&peer) {
                continue;
            }
            let Some(src) = source() else {
                log::warn!("node {peer} needs a snapshot but none exists");
                core.report_snapshot(peer, false);
                continue;
            };
            let term = core.term();
            match SnapshotSender::from_source(self.cfg.clone(), from, peer, term, src) {
                Ok(mut s) => {
                    log::info!("sending snapshot {} to node {peer}", s.meta().index);
                    let st = s.start(out);
                    self.senders.insert(peer, s);
                    self.finish_if_done(core, peer, st);
                }
                Err(e) => {
                    log::warn!("cannot send snapshot to node {peer}: {e}");
                    core.report_snapshot(peer, false);
                }
            }
        }
    }

    /// A follower's answer to a stream (leader).
    pub fn on_response<L: LogStore>(
        &mut self,
        core: &mut RawNode<L>,
        msg: &Message,
        out: &mut Vec<Message>,
    ) {
        let Some(crate::pb::raftpb::message::Body::InstallSnapshotResponse(r)) = &msg.body else {
            return;
        };
        let Some(s) = self.senders.get_mut(&msg.from) else {
            return;
        };
        let st = s.on_response(r, out);
        self.finish_if_done(core, msg.from, st);
    }

    /// Once per Raft tick: retransmission timers of the outbound streams.
    pub fn tick<L: LogStore>(&mut self, core: &mut RawNode<L>, out: &mut Vec<Message>) {
        let mut finished = Vec::new();
        for (&peer, s) in self.senders.iter_mut() {
            let st = s.tick(out);
            if st != SendStatus::InProgress {
                finished.push((peer, st));
            }
        }
        for (peer, st) in finished {
            self.finish_if_done(core, peer, st);
        }
    }

    fn finish_if_done<L: LogStore>(&mut self, core: &mut RawNode<L>, peer: u64, st: SendStatus) {
        match st {
            SendStatus::InProgress => return,
            SendStatus::Done => {
                log::info!("snapshot sent to node {peer}");
                core.report_snapshot(peer, true);
            }
            SendStatus::Failed(e) => {
                log::warn!("snapshot transfer to node {peer} failed: {e}");
                core.report_snapshot(peer, false);
            }
        }
        self.senders.remove(&peer);
    }
}

/// Steps 1-2 of the module comment for a complete received snapshot. An `Err` is fatal (the
/// disk failed).
pub fn install_received<L, A, S>(
    replica: &mut Replica<L, A>,
    sink: &mut S,
    rs: ReceivedSnapshot<S::Partial>,
) -> Result<Installed<S::Published>, String>
where
    L: LogStore,
    S: SnapshotSink,
    A: super::ReplyAddr,
{
    let inst = match rs.install(sink) {
        Ok(inst) => inst,
        Err(InstallError::Invalid { why, reply }) => {
            return Ok(Installed::Invalid { why, reply: *reply })
        }
        Err(InstallError::Fatal(e)) => return Err(format!("installing a received snapshot: {e}")),
    };
    let meta = inst.meta;
    if !replica.core_mut().restore_snapshot(meta.clone()) {
        return Ok(Installed::Stale {
            meta,
            published: inst.path,
            reply: inst.reply,
        });
    }
    replica.stage_snapshot(StagedSnapshot {
        meta: meta.clone(),
        kv: inst.kv,
        reply: inst.reply,
    });
    Ok(Installed::Staged {
        meta,
        published: inst.path,
    })
}

/// Steps 3-4 for the snapshot a Ready carries (`Ready::snapshot`); returns the `done`
/// answer for the shell to send (step 5).
pub fn install_staged<L, A>(
    replica: &mut Replica<L, A>,
    meta: &SnapshotMeta,
) -> Result<Message, String>
where
    L: LogStore + ResetLog,
    A: super::ReplyAddr,
{
    let staged = replica.take_staged();
    let Some(s) = staged.filter(|s| &s.meta == meta) else {
        return Err(format!(
            "internal error: the core installs snapshot {}/t{} but the node staged no such \
             snapshot",
            meta.index, meta.term
        ));
    };
    replica
        .core_mut()
        .store_mut()
        .reset_log(meta.index, meta.term)?;
    replica.installed_snapshot(meta.index, meta.conf.clone(), s.kv);
    assert_eq!(
        replica.applied(),
        meta.index,
        "the state machine is the installed snapshot's"
    );
    Ok(s.reply)
}
