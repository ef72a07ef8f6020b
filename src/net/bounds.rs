//! Bounds on the indexes and terms in a Raft message from a peer, checked before the message
//! reaches the core: peers are not authenticated, and one message with an index or term near
//! `u64::MAX` (a buggy or hostile peer) would otherwise overflow `+ 1` arithmetic in the core
//! and panic the node. The bounds are the storage layer's (`record::MAX_INDEX`,
//! `record::MAX_TERM`, 2^62 - 1): nothing this large can be in any log, so refusing it loses
//! nothing, and every sum the core forms from such values stays far below `u64::MAX`.

use crate::pb::raftpb::message::Body;
use crate::pb::raftpb::Message;
use crate::storage::record::{MAX_INDEX, MAX_TERM};

/// `Err(what)` when a term or index in `m` is beyond the bounds (the message must be dropped).
pub fn check_message(m: &Message) -> Result<(), String> {
    let term = |what: &str, v: u64| {
        if v > MAX_TERM {
            Err(format!("{what} {v} above the maximum term {MAX_TERM}"))
        } else {
            Ok(())
        }
    };
    let index = |what: &str, v: u64| {
        if v > MAX_INDEX {
            Err(format!("{what} {v} above the maximum index {MAX_INDEX}"))
        } else {
            Ok(())
        }
    };
    term("message term", m.term)?;
    match &m.body {
        Some(Body::RequestVote(r)) => {
            index("last_log_index", r.last_log_index)?;
            term("last_log_term", r.last_log_term)
        }
        Some(Body::AppendEntries(a)) => {
            index("prev_log_index", a.prev_log_index)?;
            term("prev_log_term", a.prev_log_term)?;
            index("commit", a.commit)?;
            for e in &a.entries {
                index("entry index", e.index)?;
                term("entry term", e.term)?;
            }
            Ok(())
        }
        Some(Body::AppendEntriesResponse(r)) => {
            index("match_index", r.match_index)?;
            index("reject_index", r.reject_index)?;
            index("hint_index", r.hint_index)?;
            term("hint_term", r.hint_term)
        }
        Some(Body::Heartbeat(h)) => index("commit", h.commit),
        Some(Body::InstallSnapshot(s)) => match &s.meta {
            Some(meta) => {
                index("snapshot index", meta.index)?;
                term("snapshot term", meta.term)
            }
            None => Ok(()),
        },
        Some(Body::InstallSnapshotResponse(r)) => index("snapshot index", r.index),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::raftpb::{AppendEntries, Entry, InstallSnapshot, SnapshotMeta};

    #[test]
    fn huge_terms_and_indexes_are_refused() {
        let ok = Message {
            from: 1,
            to: 2,
            term: 3,
            body: Some(Body::AppendEntries(AppendEntries {
                prev_log_index: 5,
                prev_log_term: 3,
                entries: vec![Entry {
                    index: 6,
                    term: 3,
                    ..Default::default()
                }],
                commit: 5,
            })),
        };
        assert_eq!(check_message(&ok), Ok(()));
        let mut m = ok.clone();
        m.term = u64::MAX;
        assert!(check_message(&m).is_err());
        let mut m = ok.clone();
        if let Some(Body::AppendEntries(a)) = &mut m.body {
            a.entries[0].index = u64::MAX;
        }
        assert!(check_message(&m).is_err());
        let m = Message {
            body: Some(Body::InstallSnapshot(InstallSnapshot {
                meta: Some(SnapshotMeta {
                    index: u64::MAX,
                    term: 1,
                    conf: None,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..ok
        };
        let e = check_message(&m).unwrap_err();
        assert!(e.contains("snapshot index"), "{e}");
    }
}
