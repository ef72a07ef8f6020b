//! Size limits, in one place: what a node accepts, and the bounds every later reader of that
//! data (log replay, snapshot restore, snapshot transfer, `raftkv-log`) uses, so that nothing a
//! node accepted can ever be refused by the node itself later (issue #16, "limits that agree").
//!
//! | what | limit | where enforced |
//! |------|-------|----------------|
//! | request / response frame | `--max-frame` (default [`DEFAULT_MAX_FRAME`]), at most [`MAX_FRAME_CEILING`] | framing (`net::framing`), client and server |
//! | peer frame | [`peer_max_frame`]: `--max-frame` + [`PEER_FRAME_SLACK`] | server's peer listener |
//! | one write (its log entry) | [`max_entry`]: `--max-frame` - [`RESPONSE_ROOM`], and no more than one log segment holds | server, before proposing (`TOO_LARGE`) |
//! | RESP command (bulk lengths, all arguments) | [`resp_max_command`]: `--max-frame`; at most [`RESP_MAX_ARGS`] arguments | `resp::Parser`, before buffering |
//! | a value grown by APPEND | [`MAX_GROWN_VALUE`] | `kv::store` (deterministic) |
//! | scan page (keys + values) | [`max_scan_page`]: (`--max-frame` - [`RESPONSE_ROOM`]) / 2, at least one pair | `node::Replica` serving scans |
//! | key, value, saved result in a KV snapshot | [`MAX_SNAPSHOT_FIELD`] (= [`MAX_FRAME_CEILING`]) | `kv::snapshot::read` |
//!
//! Why the KV snapshot reader does not use the node's `--max-frame`: a snapshot outlives the
//! flags it was written under (a restart with a smaller `--max-frame`, a snapshot sent to a
//! follower started with other flags, `raftkv-log` run with none). Its limit is instead derived
//! so that it can never be below what any writer could have written: every field is part of one
//! entry, an entry is at most `--max-frame` bytes, and `--max-frame` is at most
//! [`MAX_FRAME_CEILING`]. Writing the limit into the snapshot header would add nothing: the
//! reader would have to trust that header field as much as the lengths themselves. What the
//! limit protects against, a damaged length making the reader allocate gigabytes, is already
//! handled by reading fields incrementally (allocation follows the bytes that arrive) and the
//! checksum. So the file format is unchanged and every existing snapshot stays readable.

pub use crate::net::framing::DEFAULT_MAX_FRAME;
use crate::storage::record::{REC_HEADER_LEN, SEG_HEADER_LEN};

/// The largest `--max-frame` a node accepts: 1 GiB. Every length on the wire, in a log record and
/// in a snapshot is a u32, and one entry of this size is already held several times in memory
/// (request, log, every follower's send queue), so larger frames would be a footgun rather than
/// a feature.
pub const MAX_FRAME_CEILING: usize = 1 << 30;

/// Room peer frames get above `--max-frame`: an AppendEntries carries whole entries (each at most
/// [`max_entry`] <= `--max-frame`) plus batching overhead, and a batch beyond its first entry is
/// held to `raft::Config::max_msg_bytes` (1 MiB), so 2 MiB covers the batch and the headers.
pub const PEER_FRAME_SLACK: usize = 2 << 20;

/// The frame limit of the peer listener for a node with this `--max-frame`.
pub fn peer_max_frame(max_frame: usize) -> usize {
    max_frame.saturating_add(PEER_FRAME_SLACK)
}

/// The largest key, value or saved result a KV snapshot reader accepts (see the module docs for
/// why this is the ceiling and not the node's own `--max-frame`).
pub const MAX_SNAPSHOT_FIELD: usize = MAX_FRAME_CEILING;

/// The largest log entry (encoded `kvpb::Command`) a node with these settings accepts as a
/// write: no more than a frame (so the AppendEntries carrying it fits a peer frame) and no more
/// than one segment holds (a record never spans segments; `storage::Log::append` refuses one that
/// does not fit, and refusing it then would be a fatal storage error instead of a `TOO_LARGE`
/// answer).
pub fn max_entry(max_frame: usize, segment_size: u64) -> usize {
    let per_segment = segment_size.saturating_sub((SEG_HEADER_LEN + REC_HEADER_LEN) as u64);
    let per_frame = max_frame.saturating_sub(RESPONSE_ROOM);
    per_frame.min(usize::try_from(per_segment).unwrap_or(usize::MAX))
}

/// Bytes a write's entry stays below `--max-frame`, so that reading the value back always fits
/// a response frame: a `Response { id, Get { found, value, version } }` can be up to 21 bytes
/// longer than the smallest `Command { Put { key, value } }` holding the same value (ids and the
/// version are varints of up to 10 bytes each, while a command may carry a 1-byte key and no
/// session). 64 leaves room to spare.
pub const RESPONSE_ROOM: usize = 64;

/// Keys and values per scan page for a node with this `--max-frame`: half the frame (less the
/// response room), so a page of small pairs and its `next_key` fit a response frame. A page
/// always holds at least one pair; a single pair is at most [`max_entry`], which fits too
/// unless its key is itself near half a frame (then the page may not fit: not guarded).
pub fn max_scan_page(max_frame: usize) -> usize {
    (max_frame.saturating_sub(RESPONSE_ROOM) / 2).max(1)
}

/// Largest chunk of a backup (`kvpb::SnapshotChunk`) a node sends: 1 MiB, so a chunk fits the
/// default 16 MiB frame many times over, one answer costs the loop one 1 MiB read (normally from
/// the page cache), and the backup client holds one chunk at a time.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// The longest value a write may grow in the state machine (APPEND): half a default frame, so
/// the value, read back alone or in a scan page, fits a default response frame. A constant,
/// not derived from `--max-frame`: the state machine must decide the same on every replica
/// whatever flags each was started with.
pub const MAX_GROWN_VALUE: usize = (DEFAULT_MAX_FRAME - RESPONSE_ROOM) / 2;

/// Arguments in one RESP command (MSET/DEL/MGET with more keys are refused: each argument
/// costs a handle besides its bytes, which the byte bound below does not count).
pub const RESP_MAX_ARGS: usize = 65_536;

/// Bytes of arguments in one RESP command (and the largest bulk string) on a node with this
/// `--max-frame`: a command becomes one request, which must fit a frame as a native one would.
pub fn resp_max_command(max_frame: usize) -> usize {
    max_frame
}

/// Checks `--max-frame` against its bounds (the segment size is checked by `storage::Log`).
pub fn check_max_frame(max_frame: usize) -> Result<(), String> {
    if max_frame == 0 || max_frame > MAX_FRAME_CEILING {
        return Err(format!(
            "--max-frame {max_frame} out of range: must be 1..={MAX_FRAME_CEILING}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_limit_is_the_smaller_of_frame_and_segment() {
        assert_eq!(max_entry(16 << 20, 64 << 20), (16 << 20) - 64);
        assert_eq!(max_entry(64 << 20, 64 << 20), (64 << 20) - 96);
        assert_eq!(max_entry(1000, 10), 0);
    }

    #[test]
    fn snapshot_reader_limit_covers_every_accepted_entry() {
        assert!(check_max_frame(MAX_FRAME_CEILING).is_ok());
        assert!(check_max_frame(MAX_FRAME_CEILING + 1).is_err());
        assert!(check_max_frame(0).is_err());
        assert!(max_entry(MAX_FRAME_CEILING, u64::MAX) <= MAX_SNAPSHOT_FIELD);
    }
}
