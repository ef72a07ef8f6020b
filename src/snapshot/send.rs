//! Leader side of InstallSnapshot: one [`SnapshotSender`] per peer that needs the snapshot.
//!
//! A pure state machine, no sockets: it reads the snapshot's payload in chunks from a
//! [`SnapshotSource`] (the server: the snapshot file through the storage layer's CRC-checking
//! reader; the simulator: the snapshot bytes on its simulated disk), and hands out
//! `InstallSnapshot` messages for the shell to send. At most `window` chunks are unacknowledged; each `InstallSnapshotResponse`
//! carries the receiver's `next_offset` (bytes it holds in order), which acknowledges chunks
//! and frees the window. The unacknowledged chunks stay in memory, so losses are repaired by
//! go-back-N from the acknowledged offset without rereading the file:
//! - a duplicate acknowledgement (no progress while chunks are in flight: the receiver saw a
//!   gap or a duplicate) resends the window once per offset;
//! - `retry_ticks` ticks without progress resend the window; after `max_retries` such timeouts
//!   in a row the transfer fails.
//!
//! A response with `success = false` (the receiver has no partial transfer for a chunk past
//! offset 0, could not write, or the CRC did not match) restarts the transfer from offset 0, at
//! most `max_restarts` times; rejections of chunks sent before the restart are ignored. Answers
//! saying the peer holds less than it acknowledged are ignored as late, unless the retry timer
//! then fires without progress, which restarts from 0 as well (the peer lost its partial file). The last chunk has
//! `done = true` and the CRC32 of the whole payload. The transfer ends when a response says
//! `done`; while it waits for it after every byte was acknowledged (the peer validates the
//! whole snapshot first), it asks again every `retry_ticks` with an empty last chunk, so a
//! lost `done` answer costs one retry interval. The server then calls
//! `RawNode::report_snapshot(peer, true)` (or `false` on failure)
//! and drops the sender. A leader that loses leadership (or changes term) drops its senders; the
//! next leader starts over from offset 0.

use super::SnapshotError;
use crate::pb::raftpb::{message::Body, InstallSnapshot, InstallSnapshotResponse, Message};
use crate::raft::SnapshotMeta;
use crate::storage::SnapshotReader;
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a sender reads a snapshot's payload from.
pub trait SnapshotSource {
    /// Opens the payload at its first byte: the snapshot's metadata and a reader.
    fn open(&self) -> Result<(SnapshotMeta, Box<dyn Read>), SnapshotError>;
    /// Names the snapshot in errors (a file's path).
    fn name(&self) -> String;
}

/// A snapshot file, read through the storage layer's CRC-checking reader.
impl SnapshotSource for PathBuf {
    fn open(&self) -> Result<(SnapshotMeta, Box<dyn Read>), SnapshotError> {
        let r = SnapshotReader::open(self)?;
        Ok((r.meta.clone(), Box::new(r)))
    }

    fn name(&self) -> String {
        self.display().to_string()
    }
}

/// Transfer tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// Payload bytes per InstallSnapshot message. Default 256 KiB: large enough that per-message
    /// overhead is negligible, small enough that a chunk never delays heartbeats on the same
    /// connection noticeably (a few ms at 1 Gbit/s) and far below the 16 MiB frame limit.
    pub chunk_size: usize,
    /// Chunks sent but not yet acknowledged. Default 4 (1 MiB in flight per peer).
    pub window: usize,
    /// Ticks without progress before the window is resent. Default 10.
    pub retry_ticks: u32,
    /// Consecutive timeouts without progress before the transfer fails. Default 5.
    pub max_retries: u32,
    /// Restarts from offset 0 before the transfer fails. Default 3.
    pub max_restarts: u32,
    /// Ticks to wait for `done` once the peer acknowledged every byte: it validates the whole
    /// snapshot (decodes the KV payload) before it installs and answers, seconds per GiB.
    /// Default 1200 (60 s at the server's 50 ms tick).
    pub finish_ticks: u32,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            chunk_size: 256 << 10,
            window: 4,
            retry_ticks: 10,
            max_retries: 5,
            max_restarts: 3,
            finish_ticks: 1200,
        }
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    InProgress,
    /// The peer installed the snapshot: `report_snapshot(peer, true)`, drop the sender.
    Done,
    /// The transfer failed for good: `report_snapshot(peer, false)`, drop the sender.
    Failed(String),
}

struct Chunk {
    offset: u64,
    data: Bytes,
    last: bool,
}

/// Streams one snapshot file to one peer.
pub struct SnapshotSender {
    cfg: SenderConfig,
    from: u64,
    to: u64,
    term: u64,
    source: Box<dyn SnapshotSource>,
    meta: SnapshotMeta,
    reader: Box<dyn Read>,
    /// The next chunk, read ahead so we know whether the one before it is the last.
    lookahead: Option<Bytes>,
    /// Payload bytes read from the file into chunks.
    read_offset: u64,
    /// The whole file has been read into chunks.
    all_read: bool,
    crc: crc32fast::Hasher,
    /// Chunks read but not acknowledged; `unacked[..next_send]` were sent.
    unacked: VecDeque<Chunk>,
    next_send: usize,
    /// Payload bytes the peer acknowledged.
    acked: u64,
    /// The offset at which we last went back on a duplicate ack (once per offset).
    went_back_at: Option<u64>,
    /// Restarted: ignore rejections (answers to chunks sent before the restart) until the peer
    /// acknowledges something of the new attempt.
    await_fresh: bool,
    idle_ticks: u32,
    retries: u32,
    restarts: u32,
    status: SendStatus,
}

impl SnapshotSender {
    /// Prepares to stream the snapshot file at `path` from node `from` (this leader, in `term`)
    /// to peer `to`. Call [`SnapshotSender::start`] next.
    pub fn new(
        cfg: SenderConfig,
        from: u64,
        to: u64,
        term: u64,
        path: &Path,
    ) -> Result<SnapshotSender, SnapshotError> {
        Self::from_source(cfg, from, to, term, Box::new(path.to_path_buf()))
    }

    /// Like [`SnapshotSender::new`], reading the payload from any [`SnapshotSource`].
    pub fn from_source(
        cfg: SenderConfig,
        from: u64,
        to: u64,
        term: u64,
        source: Box<dyn SnapshotSource>,
    ) -> Result<SnapshotSender, SnapshotError> {
        if cfg.chunk_size == 0 || cfg.window == 0 {
            return Err(SnapshotError::Other(format!(
                "sender config needs chunk_size > 0 and window > 0, got {cfg:?}"
            )));
        }
        let (meta, reader) = source.open()?;
        Ok(SnapshotSender {
            meta,
            reader,
            cfg,
            from,
            to,
            term,
            source,
            lookahead: None,
            read_offset: 0,
            all_read: false,
            crc: crc32fast::Hasher::new(),
            unacked: VecDeque::new(),
            next_send: 0,
            acked: 0,
            went_back_at: None,
            await_fresh: false,
            idle_ticks: 0,
            retries: 0,
            restarts: 0,
            status: SendStatus::InProgress,
        })
    }

    /// The peer this sender streams to.
    pub fn peer(&self) -> u64 {
        self.to
    }

    /// The leader term the messages carry.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The snapshot being sent.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Payload bytes the peer acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Current status.
    pub fn status(&self) -> &SendStatus {
        &self.status
    }

    /// Emits the first window of chunks.
    pub fn start(&mut self, out: &mut Vec<Message>) -> SendStatus {
        self.pump(out);
        self.status.clone()
    }

    /// Handles the peer's answer (from `Ready::snapshot_msgs` on the leader). Responses for
    /// another snapshot index are ignored.
    pub fn on_response(
        &mut self,
        r: &InstallSnapshotResponse,
        out: &mut Vec<Message>,
    ) -> SendStatus {
        if self.status != SendStatus::InProgress || r.index != self.meta.index {
            return self.status.clone();
        }
        if !r.success {
            if !self.await_fresh {
                self.restart(out, "the peer rejected the transfer");
            }
            return self.status.clone();
        }
        if r.done {
            self.status = SendStatus::Done;
            self.unacked.clear();
            return self.status.clone();
        }
        if r.next_offset > 0 {
            self.await_fresh = false;
        }
        if r.next_offset > self.acked {
            // Progress. The peer may hold more than this attempt sent (we restarted while it
            // kept its partial file): then skip ahead to where it is.
            // (The whole payload, acknowledged before the peer's validation, need not be one.)
            let everything = self.all_read && r.next_offset == self.read_offset;
            if r.next_offset % self.cfg.chunk_size as u64 != 0 && !everything {
                self.restart(out, "acknowledged offset is not a chunk boundary");
                return self.status.clone();
            }
            while self
                .unacked
                .front()
                .is_some_and(|c| c.offset < r.next_offset)
            {
                self.unacked.pop_front();
                self.next_send = self.next_send.saturating_sub(1);
            }
            while self.read_offset < r.next_offset {
                match self.next_chunk() {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        self.restart(out, "acknowledged offset beyond the end");
                        return self.status.clone();
                    }
                    Err(e) => {
                        self.fail(e);
                        return self.status.clone();
                    }
                }
            }
            self.acked = r.next_offset;
            self.went_back_at = None;
            self.idle_ticks = 0;
            self.retries = 0;
        } else if r.next_offset == self.acked {
            if self.next_send > 0 && self.went_back_at != Some(self.acked) {
                // Duplicate ack with chunks in flight: the peer saw a gap; go back.
                self.went_back_at = Some(self.acked);
                self.next_send = 0;
            }
        } else {
            // Less than acknowledged: a late answer (a peer that lost its partial file says
            // so with success = false). Ignore it.
            return self.status.clone();
        }
        self.pump(out);
        self.status.clone()
    }

    /// Advances the retransmission timer by one tick.
    pub fn tick(&mut self, out: &mut Vec<Message>) -> SendStatus {
        if self.status != SendStatus::InProgress {
            return self.status.clone();
        }
        // Until `done`, the sender always waits for an answer.
        self.idle_ticks += 1;
        if self.unacked.is_empty() && self.all_read && self.acked > 0 {
            // The peer holds every byte and is validating and installing the snapshot.
            if self.idle_ticks >= self.cfg.finish_ticks {
                self.idle_ticks = 0;
                self.restart(out, "the peer acknowledged everything but never finished");
            } else if self.idle_ticks % self.cfg.retry_ticks.max(1) == 0 {
                // Ask again, without data: a peer that finished answers `done` again, one that
                // lost the transfer says so. Without this, a lost `done` answer cost the whole
                // `finish_ticks` (60 s) of a follower waiting for appends (found by the
                // simulator, seed 30 at 5 nodes, once it ran this sender).
                self.probe(out);
            }
            return self.status.clone();
        }
        if self.idle_ticks >= self.cfg.retry_ticks {
            self.idle_ticks = 0;
            self.retries += 1;
            if self.retries > self.cfg.max_retries {
                self.status = SendStatus::Failed(format!(
                    "snapshot {} to peer {}: no progress after {} retries at offset {}",
                    self.meta.index, self.to, self.cfg.max_retries, self.acked
                ));
                self.unacked.clear();
                return self.status.clone();
            }
            if self.unacked.is_empty() && self.all_read {
                // Everything acknowledged, yet no `done`: nothing left to resend.
                self.restart(out, "the peer acknowledged everything but never finished");
                return self.status.clone();
            }
            self.next_send = 0;
            self.pump(out);
        }
        self.status.clone()
    }

    /// An InstallSnapshot message of this transfer; the last chunk carries the payload CRC.
    fn chunk_msg(&self, offset: u64, data: Bytes, last: bool) -> Message {
        Message {
            from: self.from,
            to: self.to,
            term: self.term,
            body: Some(Body::InstallSnapshot(InstallSnapshot {
                meta: Some(self.meta.clone()),
                offset,
                data,
                done: last,
                crc: if last { self.crc.clone().finalize() } else { 0 },
            })),
        }
    }

    /// An empty last chunk at the end offset: "have you finished?"
    fn probe(&self, out: &mut Vec<Message>) {
        out.push(self.chunk_msg(self.read_offset, Bytes::new(), true));
    }

    /// Starts over from offset 0 with a fresh reader.
    fn restart(&mut self, out: &mut Vec<Message>, why: &str) {
        self.restarts += 1;
        if self.restarts > self.cfg.max_restarts {
            self.status = SendStatus::Failed(format!(
                "snapshot {} to peer {}: {why}, {} restarts already",
                self.meta.index, self.to, self.cfg.max_restarts
            ));
            self.unacked.clear();
            return;
        }
        log::info!(
            "restarting snapshot {} transfer to peer {} from offset 0: {why}",
            self.meta.index,
            self.to
        );
        match self.source.open() {
            Ok((meta, r)) if meta == self.meta => self.reader = r,
            Ok(_) => {
                return self.fail("the snapshot file now holds another snapshot".into());
            }
            Err(e) => return self.fail(format!("reopening: {e}")),
        }
        self.lookahead = None;
        self.read_offset = 0;
        self.all_read = false;
        self.crc = crc32fast::Hasher::new();
        self.unacked.clear();
        self.next_send = 0;
        self.acked = 0;
        self.went_back_at = None;
        self.await_fresh = true;
        self.idle_ticks = 0;
        self.retries = 0;
        self.pump(out);
    }

    fn fail(&mut self, why: String) {
        self.status = SendStatus::Failed(format!(
            "snapshot {} ({}) to peer {}: {why}",
            self.meta.index,
            self.source.name(),
            self.to
        ));
        self.unacked.clear();
    }

    /// Reads up to one chunk of payload (short only at the end of the file).
    fn read_chunk(&mut self) -> Result<Bytes, String> {
        let mut buf = vec![0u8; self.cfg.chunk_size];
        let mut n = 0;
        while n < buf.len() {
            match self.reader.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "reading at payload byte {}: {e}",
                        self.read_offset + n as u64
                    ))
                }
            }
        }
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }

    /// Reads the next chunk from the file (None at the end), noting whether it is the last.
    fn next_chunk(&mut self) -> Result<Option<Chunk>, String> {
        if self.all_read {
            return Ok(None);
        }
        let cur = match self.lookahead.take() {
            Some(c) => c,
            None => self.read_chunk()?,
        };
        // The chunk is the last one if it is short, or if nothing follows it.
        let last = if cur.len() < self.cfg.chunk_size {
            true
        } else {
            let next = self.read_chunk()?;
            let last = next.is_empty();
            if !last {
                self.lookahead = Some(next);
            }
            last
        };
        self.crc.update(&cur);
        let offset = self.read_offset;
        self.read_offset += cur.len() as u64;
        self.all_read = last;
        Ok(Some(Chunk {
            offset,
            data: cur,
            last,
        }))
    }

    /// Fills the window from the file and emits every chunk not yet sent.
    fn pump(&mut self, out: &mut Vec<Message>) {
        while self.status == SendStatus::InProgress && self.unacked.len() < self.cfg.window {
            match self.next_chunk() {
                Ok(Some(c)) => self.unacked.push_back(c),
                Ok(None) => break,
                Err(e) => return self.fail(e),
            }
        }
        if self.status != SendStatus::InProgress {
            return;
        }
        while self.next_send < self.unacked.len() {
            let c = &self.unacked[self.next_send];
            out.push(self.chunk_msg(c.offset, c.data.clone(), c.last));
            self.next_send += 1;
        }
    }
}
