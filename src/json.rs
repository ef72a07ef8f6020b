//! The hand-written JSON shared by the CLI's `--json` output and the HTTP `/status` page (no
//! serde in this crate): string escaping and the status object.

use crate::pb::kvpb;

/// Minimal JSON string escaping (invalid UTF-8 is replaced).
pub fn json_str(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A node's status as one JSON object: `raftkv status --json`'s fields (that command puts an
/// `"endpoint"` field first; the HTTP `/status` page has none).
pub fn status_json(endpoint: Option<&str>, s: &kvpb::StatusResponse) -> String {
    let peers: Vec<String> = s
        .peers
        .iter()
        .map(|p| {
            format!(
                "{{\"id\":{},\"peer_addr\":{},\"match\":{},\"next\":{}}}",
                p.id,
                json_str(p.peer_addr.as_bytes()),
                p.match_index,
                p.next_index
            )
        })
        .collect();
    let ep = endpoint.map_or(String::new(), |e| {
        format!("\"endpoint\":{},", json_str(e.as_bytes()))
    });
    format!(
        "{{{ep}\"node_id\":{},\"role\":{},\"term\":{},\"leader_id\":{},\"leader_addr\":{},\
         \"commit\":{},\"applied\":{},\"first_log_index\":{},\"last_log_index\":{},\"snapshot_index\":{},\"no_space_alarm\":{},\"alarm_raised_by\":{},\"space_problem\":{},\
         \"state_bytes\":{},\"data_dir_bytes\":{},\"quota_bytes\":{},\"cluster_id\":{},\"peers\":[{}],\"voters\":{},\"learners\":{},\
         \"voters_outgoing\":{},\"conf_index\":{}}}",
        s.node_id,
        json_str(s.role.as_bytes()),
        s.term,
        s.leader_id,
        json_str(s.leader_addr.as_bytes()),
        s.commit_index,
        s.applied_index,
        s.first_log_index,
        s.last_log_index,
        s.snapshot_index,
        s.no_space_alarm,
        s.alarm_raised_by,
        json_str(s.space_problem.as_bytes()),
        s.state_bytes,
        s.data_dir_bytes,
        s.quota_bytes,
        json_str(s.cluster_id.as_bytes()),
        peers.join(","),
        id_list(&s.voters),
        id_list(&s.learners),
        id_list(&s.voters_outgoing),
        s.conf_index
    )
}

/// `[1,2,3]`.
fn id_list(ids: &[u64]) -> String {
    let items: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("[{}]", items.join(","))
}
