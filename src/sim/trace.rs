//! One-line descriptions of entries and messages for the simulator's trace.

use crate::pb::raftpb::message::Body;
use crate::raft::{Entry, Message};

/// `[index/tterm..index/tterm]` of a run of entries.
pub(super) fn trace_entries(ents: &[Entry]) -> String {
    match (ents.first(), ents.last()) {
        (Some(a), Some(b)) if a.index == b.index => format!("[{}/t{}]", a.index, a.term),
        (Some(a), Some(b)) => format!("[{}/t{}..{}/t{}]", a.index, a.term, b.index, b.term),
        _ => "[]".to_string(),
    }
}

/// A compact one-line description of a message for the trace.
pub fn describe_msg(m: &Message) -> String {
    let body = match &m.body {
        Some(Body::RequestVote(v)) => format!(
            "{}Vote(last {}/t{}{})",
            if v.pre_vote { "Pre" } else { "" },
            v.last_log_index,
            v.last_log_term,
            if v.transfer { ", transfer" } else { "" }
        ),
        Some(Body::RequestVoteResponse(v)) => format!(
            "{}VoteResp({})",
            if v.pre_vote { "Pre" } else { "" },
            if v.granted { "grant" } else { "reject" }
        ),
        Some(Body::AppendEntries(a)) => format!(
            "App(prev {}/t{}, {}, commit {})",
            a.prev_log_index,
            a.prev_log_term,
            trace_entries(&a.entries),
            a.commit
        ),
        Some(Body::AppendEntriesResponse(a)) => {
            if a.success {
                format!("AppResp(ok, match {})", a.match_index)
            } else {
                format!(
                    "AppResp(reject {}, hint {}/t{})",
                    a.reject_index, a.hint_index, a.hint_term
                )
            }
        }
        Some(Body::Heartbeat(h)) => format!("Heartbeat(commit {}, ctx {})", h.commit, h.context),
        Some(Body::HeartbeatResponse(h)) => format!("HeartbeatResp(ctx {})", h.context),
        Some(Body::InstallSnapshot(s)) => format!(
            "InstallSnapshot({}/t{}, off {}, {} bytes{})",
            s.meta.as_ref().map_or(0, |x| x.index),
            s.meta.as_ref().map_or(0, |x| x.term),
            s.offset,
            s.data.len(),
            if s.done { ", done" } else { "" }
        ),
        Some(Body::InstallSnapshotResponse(s)) => format!(
            "InstallSnapshotResp({}, ok {}, done {})",
            s.index, s.success, s.done
        ),
        Some(Body::TimeoutNow(_)) => "TimeoutNow".to_string(),
        Some(Body::Removed(r)) => format!("Removed(conf {})", r.conf_index),
        Some(Body::ReadIndex(r)) => format!("ReadIndex({} reads)", r.ctxs.len()),
        Some(Body::ReadIndexResponse(r)) => {
            format!("ReadIndexResp({} reads at {})", r.ctxs.len(), r.index)
        }
        None => "Empty".to_string(),
    };
    format!("{}->{} t{} {}", m.from, m.to, m.term, body)
}
