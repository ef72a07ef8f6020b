//! Follower side of InstallSnapshot: [`SnapshotReceiver`].
//!
//! A pure state machine apart from the snapshot it writes: chunks from `Ready::snapshot_msgs`
//! go in, response messages (and, at the end, a verified snapshot) come out. Chunks are
//! written in order, as they arrive, into a [`SnapshotSink`]: the server's is the snapshot
//! directory (the storage layer's [`SnapshotWriter`], a temp file; nothing is buffered beyond
//! one storage chunk), the simulator's its simulated disk. Rules:
//! - A transfer is identified by (leader term, leader id, snapshot index, snapshot term). A
//!   chunk of a newer transfer (higher term, or same term and a different snapshot) discards the
//!   partial one; a late chunk of an older one (lower term or lower index) is answered and
//!   otherwise ignored. Only a chunk at offset 0 starts a new transfer.
//! - A chunk past offset 0 with no partial transfer to continue is answered `success = false`
//!   (the leader restarts from 0).
//! - A chunk not at the expected offset (duplicate, reordered, after a gap) is not written; the
//!   answer carries `next_offset` so the leader resends from there.
//! - The last chunk (`done`) carries the CRC32 of the whole payload; on a mismatch the partial
//!   file is deleted and the answer is `success = false` (the leader restarts from 0).
//! - On a verified last chunk the receiver yields a [`ReceivedSnapshot`]; the server installs
//!   it (see `docs/snapshots.md` for the order) and sends its `done` answer.
//! - Chunks of a transfer that already completed (a lost `done` answer made the leader resend)
//!   are answered `done` again, except a chunk at offset 0, which starts over.

use super::{check_meta, restore_kv, SnapshotError};
use crate::kv::KvStore;
use crate::pb::raftpb::{message::Body, InstallSnapshot, InstallSnapshotResponse, Message};
use crate::raft::SnapshotMeta;
use crate::storage::{SnapshotStore, SnapshotWriter};
use std::io::Write;
use std::path::PathBuf;

/// A snapshot being received, as its sink holds it.
pub trait PartialSnapshot {
    /// Appends payload bytes.
    fn append(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// CRC32 of the payload written so far.
    fn payload_crc(&self) -> u32;
    /// Payload bytes written so far.
    fn bytes_written(&self) -> u64;
    /// Drops it (and whatever it wrote).
    fn abort(self);
}

/// Why a sink did not install a complete snapshot.
#[derive(Debug)]
pub enum SinkError {
    /// The snapshot is invalid: discarded, the node keeps its state.
    Invalid(String),
    /// The disk failed: fatal for the node.
    Fatal(SnapshotError),
}

/// Where a receiver puts snapshots arriving in chunks.
pub trait SnapshotSink {
    type Partial: PartialSnapshot;
    /// What a published snapshot is known by (the server: its file).
    type Published;
    /// Starts receiving the snapshot `meta`.
    fn create(&mut self, meta: &SnapshotMeta) -> Result<Self::Partial, SnapshotError>;
    /// Validates a complete snapshot in full (its KV state restored, its applied index and
    /// metadata equal to `meta`'s), then makes it durable and returns its state. An invalid
    /// one is deleted and never published.
    fn install(
        &mut self,
        p: Self::Partial,
        meta: &SnapshotMeta,
    ) -> Result<(KvStore, Self::Published), SinkError>;
}

impl PartialSnapshot for SnapshotWriter {
    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        Write::write_all(self, data)
    }

    fn payload_crc(&self) -> u32 {
        SnapshotWriter::payload_crc(self)
    }

    fn bytes_written(&self) -> u64 {
        SnapshotWriter::bytes_written(self)
    }

    fn abort(self) {
        SnapshotWriter::abort(self)
    }
}

/// The snapshot directory: a temp file sealed and fsynced, validated by restoring it, then
/// renamed into place.
impl SnapshotSink for SnapshotStore {
    type Partial = SnapshotWriter;
    type Published = PathBuf;

    fn create(&mut self, meta: &SnapshotMeta) -> Result<SnapshotWriter, SnapshotError> {
        Ok(SnapshotStore::create(self, meta)?)
    }

    fn install(
        &mut self,
        w: SnapshotWriter,
        want: &SnapshotMeta,
    ) -> Result<(KvStore, PathBuf), SinkError> {
        let sealed = w.seal().map_err(|e| SinkError::Fatal(e.into()))?;
        let (meta, kv) = match restore_kv(sealed.path()) {
            Ok(r) => r,
            Err(SnapshotError::Storage(crate::storage::StorageError::Io { path, err }))
                if err.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(SinkError::Fatal(SnapshotError::Storage(
                    crate::storage::StorageError::Io { path, err },
                )))
            }
            Err(e) => return Err(SinkError::Invalid(e.to_string())),
        };
        if &meta != want {
            return Err(SinkError::Invalid(format!(
                "the file's metadata (index {}, term {}) is not the transfer's (index {}, term {})",
                meta.index, meta.term, want.index, want.term
            )));
        }
        let path = sealed.publish().map_err(|e| SinkError::Fatal(e.into()))?;
        Ok((kv, path))
    }
}

/// (leader term, leader id, snapshot index, snapshot term)
type Key = (u64, u64, u64, u64);

struct Transfer<P> {
    key: Key,
    meta: SnapshotMeta,
    writer: P,
    next_offset: u64,
}

/// What to do with an incoming message.
// A `Message` (240 bytes since the snapshot metadata carries the cluster id) is returned by
// value once per snapshot chunk and consumed at once by the caller: boxing it would cost an
// allocation per chunk answer for no memory held.
#[allow(clippy::large_enum_variant)]
pub enum Received<P = SnapshotWriter> {
    /// Not an InstallSnapshot message: nothing to do.
    Ignored,
    /// Send this answer to the leader.
    Reply(Message),
    /// All chunks arrived and the CRC matched: install it, then send its `done` answer.
    Complete(Box<ReceivedSnapshot<P>>),
}

/// A complete, CRC-verified snapshot not yet published in its sink.
pub struct ReceivedSnapshot<P = SnapshotWriter> {
    meta: SnapshotMeta,
    writer: P,
    reply: Message,
    /// "All bytes here, not installed yet" (sent before the validation, which may take a while).
    progress: Message,
    /// "Transfer failed" (the snapshot was invalid and is discarded).
    failure: Message,
}

/// Why [`ReceivedSnapshot::install`] did not install.
#[derive(Debug)]
pub enum InstallError {
    /// The snapshot is invalid (KV payload, metadata): it was discarded; send `reply` (a
    /// failure answer) to the leader and keep running on the current state.
    Invalid { why: String, reply: Box<Message> },
    /// The disk failed while sealing or publishing: fatal for the node.
    Fatal(SnapshotError),
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallError::Invalid { why, .. } => write!(f, "invalid snapshot: {why}"),
            InstallError::Fatal(e) => write!(f, "{e}"),
        }
    }
}

/// A received snapshot made durable in its sink.
pub struct InstalledSnapshot<H = PathBuf> {
    pub meta: SnapshotMeta,
    /// The published snapshot (the server: its file).
    pub path: H,
    /// The `done` answer for the leader; send it once the snapshot is installed.
    pub reply: Message,
    /// The state restored from it (validated before it was published).
    pub kv: KvStore,
}

impl<P: PartialSnapshot> ReceivedSnapshot<P> {
    /// What the snapshot covers: pass it to `RawNode::restore_snapshot`.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Payload bytes received.
    pub fn len(&self) -> u64 {
        self.writer.bytes_written()
    }

    /// True if the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An answer saying every byte arrived but the snapshot is not installed yet: send it
    /// before [`ReceivedSnapshot::install`] (which validates the whole payload first), so the
    /// leader waits for the `done` instead of resending.
    pub fn progress_reply(&self) -> Message {
        self.progress.clone()
    }

    /// Validates the snapshot completely, then makes it durable: seals and fsyncs the temp
    /// file, restores the KV state from it (every CRC, the KV payload decoded in full, its
    /// applied index equal to `meta.index`, the file's metadata equal to the transfer's), and
    /// only then renames it into the snapshot directory. An invalid snapshot is deleted and
    /// never published ([`InstallError::Invalid`]); the node's state, log and snapshots stay
    /// as they were.
    pub fn install<S: SnapshotSink<Partial = P>>(
        self,
        sink: &mut S,
    ) -> Result<InstalledSnapshot<S::Published>, InstallError> {
        match sink.install(self.writer, &self.meta) {
            Ok((kv, path)) => Ok(InstalledSnapshot {
                meta: self.meta,
                path,
                reply: self.reply,
                kv,
            }),
            Err(SinkError::Invalid(why)) => Err(InstallError::Invalid {
                why,
                reply: Box::new(self.failure),
            }),
            Err(SinkError::Fatal(e)) => Err(InstallError::Fatal(e)),
        }
    }

    /// Drops the snapshot (the core found it stale: the log already covers it) and returns the
    /// `done` answer, which is still right: the node has everything up to its index.
    pub fn discard(self) -> Message {
        self.writer.abort();
        self.reply
    }
}

/// Receives InstallSnapshot streams on a follower. One per node.
pub struct SnapshotReceiver<P = SnapshotWriter> {
    cur: Option<Transfer<P>>,
    /// The last completed transfer and its payload size.
    completed: Option<(Key, u64)>,
}

fn reply(msg: &Message, index: u64, next_offset: u64, success: bool, done: bool) -> Message {
    Message {
        from: msg.to,
        to: msg.from,
        term: msg.term,
        body: Some(Body::InstallSnapshotResponse(InstallSnapshotResponse {
            index,
            next_offset,
            success,
            done,
        })),
    }
}

impl<P> Default for SnapshotReceiver<P> {
    fn default() -> Self {
        SnapshotReceiver {
            cur: None,
            completed: None,
        }
    }
}

impl<P: PartialSnapshot> SnapshotReceiver<P> {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while a partial transfer is held.
    pub fn in_progress(&self) -> bool {
        self.cur.is_some()
    }

    /// Bytes of the partial transfer received in order so far (0 if none).
    pub fn received(&self) -> u64 {
        self.cur.as_ref().map_or(0, |t| t.next_offset)
    }

    /// Drops any partial transfer and deletes its temp file (on shutdown, or when the server
    /// wants to give up on a leader that went silent).
    pub fn abort(&mut self) {
        if let Some(t) = self.cur.take() {
            log::info!(
                "dropping partial snapshot {} from node {} at byte {}",
                t.meta.index,
                t.key.1,
                t.next_offset
            );
            t.writer.abort();
        }
    }

    /// Handles a message from `Ready::snapshot_msgs` (its `from`, `to` and `term` are the
    /// leader, this node and the current term; the answer swaps them). `applied` is the index
    /// the node's state machine has applied: a snapshot at or below it is answered `done` at
    /// once without receiving it (the node already holds that state, and its committed log up
    /// to `applied` matches the leader's; the core would refuse it as stale anyway). This also
    /// keeps a transfer from ever writing the same file as a snapshot the node is taking of
    /// its own state at `applied`.
    pub fn on_message<S: SnapshotSink<Partial = P>>(
        &mut self,
        store: &mut S,
        applied: u64,
        msg: &Message,
    ) -> Received<P> {
        let is = match &msg.body {
            Some(Body::InstallSnapshot(is)) => is,
            _ => return Received::Ignored,
        };
        let Some(meta) = is.meta.as_ref() else {
            log::warn!("InstallSnapshot from node {} without metadata", msg.from);
            return Received::Reply(reply(msg, 0, 0, false, false));
        };
        // Plausible at all? (Bounded index and term, no term above the leader's own.) Checked
        // on every chunk, before anything is written.
        let plausible = check_meta(meta).and_then(|_| {
            if meta.term > msg.term {
                Err(format!(
                    "snapshot term {} above the sender's term {}",
                    meta.term, msg.term
                ))
            } else {
                Ok(())
            }
        });
        if let Err(e) = plausible {
            log::warn!(
                "refusing InstallSnapshot (index {}, term {}) from node {}: {e}",
                meta.index,
                meta.term,
                msg.from
            );
            return Received::Reply(reply(msg, meta.index, 0, false, false));
        }
        if meta.index <= applied {
            return Received::Reply(reply(msg, meta.index, 0, true, true));
        }
        let key = (msg.term, msg.from, meta.index, meta.term);
        if let Some((k, total)) = self.completed {
            if k == key && is.offset > 0 {
                return Received::Reply(reply(msg, meta.index, total, true, true));
            }
        }
        if let Some(t) = &self.cur {
            if (key.0, key.2) < (t.key.0, t.key.2) {
                // A late chunk of a transfer this one superseded: leave the current one alone.
                return Received::Reply(reply(msg, meta.index, 0, false, false));
            }
            if t.key != key {
                self.abort();
            }
        }
        if self.cur.is_none() {
            if is.offset != 0 {
                // Not the start of a transfer we hold (we lost it, or chunk 0 is late): the
                // transfer is broken, the leader restarts it from offset 0.
                return Received::Reply(reply(msg, meta.index, 0, false, false));
            }
            match store.create(meta) {
                Ok(writer) => {
                    self.completed = None;
                    self.cur = Some(Transfer {
                        key,
                        meta: meta.clone(),
                        writer,
                        next_offset: 0,
                    })
                }
                Err(e) => {
                    log::error!("cannot receive snapshot {}: {e}", meta.index);
                    return Received::Reply(reply(msg, meta.index, 0, false, false));
                }
            }
        }
        self.chunk(msg, is)
    }

    fn chunk(&mut self, msg: &Message, is: &InstallSnapshot) -> Received<P> {
        let Some(t) = self.cur.as_mut() else {
            return Received::Ignored;
        };
        let index = t.meta.index;
        if is.offset != t.next_offset {
            return Received::Reply(reply(msg, index, t.next_offset, true, false));
        }
        if let Err(e) = t.writer.append(&is.data) {
            log::error!(
                "writing received snapshot {index} at byte {}: {e}",
                is.offset
            );
            self.abort();
            return Received::Reply(reply(msg, index, 0, false, false));
        }
        t.next_offset += is.data.len() as u64;
        if !is.done {
            return Received::Reply(reply(msg, index, t.next_offset, true, false));
        }
        let crc = t.writer.payload_crc();
        if crc != is.crc {
            log::warn!(
                "snapshot {index} from node {}: payload CRC {crc:#010x} != sender's {:#010x} \
                 after {} bytes; discarding it",
                msg.from,
                is.crc,
                t.next_offset
            );
            self.abort();
            return Received::Reply(reply(msg, index, 0, false, false));
        }
        let Some(t) = self.cur.take() else {
            return Received::Ignored;
        };
        self.completed = Some((t.key, t.next_offset));
        Received::Complete(Box::new(ReceivedSnapshot {
            reply: reply(msg, index, t.next_offset, true, true),
            progress: reply(msg, index, t.next_offset, true, false),
            failure: reply(msg, index, 0, false, false),
            meta: t.meta,
            writer: t.writer,
        }))
    }
}
