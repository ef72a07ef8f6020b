//! The server's side of backups (`raftkv snapshot save`; protocol in proto/kv.proto,
//! `SnapshotBegin` / `SnapshotChunk`): the linearizable point comes from the node layer (a
//! ReadIndex round, `ReadOp::SnapshotPoint`), the snapshot from the existing background
//! snapshot machinery (`snap.rs`), and the chunks straight from the snapshot file on disk.
//! Nothing here holds more than one chunk in memory, and no request waits in the server: a
//! backup whose snapshot is not written yet is told so and polls.

use super::{ClientRef, Server};
use crate::kv::{error_result, ApplyResult};
use crate::node::ReadOp;
use crate::pb::kvpb::{self, ErrorCode};
use crate::storage::snapshot::file_name;
use std::fs::File;
use std::os::unix::fs::FileExt;

impl Server {
    /// `SnapshotBegin`: without a point yet, take one (always a ReadIndex round: a backup is
    /// never a stale or lease read); with one, answer from the snapshot files at once.
    pub(super) fn on_snapshot_begin(&mut self, to: ClientRef, b: kvpb::SnapshotBegin, now: u64) {
        if b.min_index == 0 {
            let overdue = self.tick_overdue();
            self.replica.read(
                to,
                kvpb::Consistency::Linearizable,
                ReadOp::SnapshotPoint,
                now,
                overdue,
            );
        } else {
            let r = self.snapshot_point(b.min_index);
            self.send_response(to.token, to.req_id, r);
        }
    }

    /// Completes a served `SnapshotPoint` read (see [`Self::deliver_answers`]); other answers
    /// pass through unchanged.
    pub(super) fn complete_answer(&mut self, r: ApplyResult) -> ApplyResult {
        match r {
            ApplyResult::SnapshotBegin(p) if !p.ready => self.snapshot_point(p.read_index),
            r => r,
        }
    }

    /// The answer for a backup that needs a snapshot covering `point`: the newest file if it
    /// does, else "not ready" after starting a snapshot.
    fn snapshot_point(&mut self, point: u64) -> ApplyResult {
        let mut resp = kvpb::SnapshotBeginResponse {
            read_index: point,
            node_id: self.cfg.id,
            ..Default::default()
        };
        if let Some((meta, path)) = self.snaps.latest.as_ref().filter(|(m, _)| m.index >= point) {
            match std::fs::metadata(path) {
                Ok(md) => {
                    resp.ready = true;
                    resp.index = meta.index;
                    resp.term = meta.term;
                    resp.size = md.len();
                    return ApplyResult::SnapshotBegin(resp);
                }
                // Pruned or lost since: take a new one below.
                Err(e) => log::warn!("backup: snapshot {}: {e}", path.display()),
            }
        }
        match self.snapshot_for_backup(point) {
            Ok(()) => ApplyResult::SnapshotBegin(resp),
            Err(why) => error_result(ErrorCode::Unavailable, why),
        }
    }

    /// `SnapshotChunk`: up to `min(max_bytes, limits::SNAPSHOT_CHUNK)` bytes of the snapshot
    /// file at `offset`. One positioned read in the loop, normally from the page cache (as the
    /// InstallSnapshot sender's reads are).
    pub(super) fn on_snapshot_chunk(&mut self, to: ClientRef, c: kvpb::SnapshotChunk) {
        let r = self.snapshot_chunk(&c).unwrap_or_else(|msg| {
            log::debug!("backup chunk refused: {msg}");
            error_result(ErrorCode::BadRequest, msg)
        });
        self.send_response(to.token, to.req_id, r);
    }

    fn snapshot_chunk(&self, c: &kvpb::SnapshotChunk) -> Result<ApplyResult, String> {
        let path = self.snaps.store.dir().join(file_name(c.index, c.term));
        let gone = |e: std::io::Error| {
            format!(
                "snapshot at index {} term {} is not on node {} ({e}); it may have been pruned \
                 by a newer one: start the backup again",
                c.index, c.term, self.cfg.id
            )
        };
        let file = File::open(&path).map_err(gone)?;
        let size = file.metadata().map_err(gone)?.len();
        if c.offset > size {
            return Err(format!(
                "offset {} is past the file's {size} bytes",
                c.offset
            ));
        }
        let max = match c.max_bytes as usize {
            0 => crate::limits::SNAPSHOT_CHUNK,
            n => n.min(crate::limits::SNAPSHOT_CHUNK),
        };
        let len = max.min(usize::try_from(size - c.offset).unwrap_or(usize::MAX));
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, c.offset)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Ok(ApplyResult::SnapshotChunk(kvpb::SnapshotChunkResponse {
            offset: c.offset,
            data: data.into(),
            size,
        }))
    }
}
