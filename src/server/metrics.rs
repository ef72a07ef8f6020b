//! The node's counters and histograms for `/metrics`, and the page in the Prometheus text
//! format. Counting is plain integer adds on the loop's one thread at the places that
//! already handle the event; gauges (term, indexes, connections, peers, RSS) are read when
//! the page is rendered. Names follow etcd's where one exists (`raftkv_` instead of
//! `etcd_server_`/`etcd_disk_`), in base units (`_seconds`, `_bytes`), counters ending in
//! `_total`.

use super::Server;
use crate::kv::ApplyResult;
use crate::net::handshake::AuthError;
use crate::net::peer::PeerState;
use crate::pb::kvpb::ErrorCode;
use std::fmt::Write;
use std::time::Duration;

/// Client request kinds, the `op` label.
/// "rmw": the read-modify-write ops (incr, append, multi-put, delete-keys).
pub(super) const OPS: [&str; 10] = [
    "put", "delete", "cas", "get", "scan", "status", "invalid", "member", "snapshot", "rmw",
];
pub(super) const OP_PUT: usize = 0;
pub(super) const OP_DELETE: usize = 1;
pub(super) const OP_CAS: usize = 2;
pub(super) const OP_GET: usize = 3;
pub(super) const OP_SCAN: usize = 4;
pub(super) const OP_STATUS: usize = 5;
pub(super) const OP_INVALID: usize = 6;
/// Membership requests (change, list, leader transfer).
pub(super) const OP_MEMBER: usize = 7;
/// Backup requests (`SnapshotBegin`, `SnapshotChunk`).
pub(super) const OP_SNAPSHOT: usize = 8;
pub(super) const OP_RMW: usize = 9;

/// Result labels of client responses: "ok", then one per error code (by its number).
const RESULTS: [&str; 13] = [
    "ok",
    "error_unknown",
    "not_leader",
    "timeout",
    "bad_request",
    "too_large",
    "unavailable",
    "uncertain",
    "shutting_down",
    "internal",
    "no_space",
    "conflict",
    "unauthenticated",
];

/// Upper bounds of the duration histograms, in seconds: 100 µs doubling to ~6.6 s (etcd's
/// disk histograms start at 1 ms; a loop pass and a page-cache append are much shorter).
const BUCKETS: [f64; 17] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768, 6.5536,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub(super) struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum_ns: u64,
}

impl Histogram {
    pub(super) fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum_ns = self
            .sum_ns
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// Everything counted by the loop.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    /// The leader last seen, to count changes.
    pub last_leader: Option<u64>,
    pub leader_changes: u64,
    /// Writes the core took into its log / refused at once (not leader, no quorum, ...).
    pub proposals: u64,
    pub proposals_refused: u64,
    /// Writes answered with their applied result.
    pub proposals_applied: u64,
    /// ReadIndex rounds confirmed by a quorum (ReadStates handed to the shell).
    pub read_index_rounds: u64,
    pub requests: [u64; OPS.len()],
    pub responses: [u64; RESULTS.len()],
    pub client_accepted: u64,
    /// Requests a follower forwarded to the leader (`--forward`).
    pub forwarded: u64,
    pub snapshots_taken: u64,
    pub snapshots_sent: u64,
    pub snapshots_received: u64,
    pub log_append: Histogram,
    pub log_sync: Histogram,
    pub loop_pass: Histogram,
    /// HTTP requests answered, by status (200, 404, 503, other errors).
    pub http_ok: u64,
    pub http_not_ready: u64,
    pub http_not_found: u64,
    pub http_errors: u64,
    pub http_rejected: u64,
    pub http_timeouts: u64,
    /// Peer handshakes completed, and refused by reason (`AuthError::REASONS`).
    pub peer_handshakes_ok: u64,
    pub peer_auth_failures: [u64; crate::net::handshake::AuthError::REASONS.len()],
    /// Raft messages dropped because their `from` was not the connection's authenticated node.
    pub peer_frames_spoofed: u64,
    /// Client tokens accepted and refused, and requests refused for want of one
    /// (`client_auth.rs`).
    pub client_auth_ok: u64,
    pub client_auth_failures: u64,
    pub client_unauthenticated: u64,
    /// SIGHUP reloads of the secret files that took effect and that were refused (`reload.rs`),
    /// and client connections closed because the token they authenticated with was dropped.
    pub credential_reloads_ok: u64,
    pub credential_reloads_failed: u64,
    pub client_tokens_revoked: u64,
}

impl Metrics {
    /// Counts a client response by its result.
    pub(super) fn response(&mut self, r: &ApplyResult) {
        let i = match r {
            ApplyResult::Error(e) => usize::try_from(e.code)
                .ok()
                .map(|c| c + 1)
                .filter(|&i| i < RESULTS.len())
                .unwrap_or(1),
            ApplyResult::Put(_)
            | ApplyResult::Delete(_)
            | ApplyResult::Cas(_)
            | ApplyResult::Incr(_)
            | ApplyResult::Append(_) => {
                self.proposals_applied += 1;
                0
            }
            _ => 0,
        };
        self.responses[i] += 1;
    }

    pub(super) fn http_request(&mut self, status: u16) {
        match status {
            200 => self.http_ok += 1,
            503 => self.http_not_ready += 1,
            404 => self.http_not_found += 1,
            _ => self.http_errors += 1,
        }
    }
}

impl Metrics {
    /// The peer handshake counters.
    fn render_peer_auth(&self, o: &mut String) {
        one(
            o,
            "raftkv_peer_handshakes_total",
            "counter",
            "Peer handshakes completed (both sides proved who they are).",
            self.peer_handshakes_ok,
        );
        labelled(
            o,
            "raftkv_peer_handshake_failures_total",
            "counter",
            "Peer connections refused in the handshake, by reason.",
            "reason",
            AuthError::REASONS.iter().zip(self.peer_auth_failures),
        );
        one(
            o,
            "raftkv_peer_frames_spoofed_total",
            "counter",
            "Raft messages dropped: their from was not the connection's authenticated node.",
            self.peer_frames_spoofed,
        );
        one(
            o,
            "raftkv_client_auth_total",
            "counter",
            "Client tokens accepted (native Auth, RESP AUTH / HELLO AUTH).",
            self.client_auth_ok,
        );
        one(
            o,
            "raftkv_client_auth_failures_total",
            "counter",
            "Client tokens refused: wrong token (native Auth, RESP AUTH / HELLO AUTH).",
            self.client_auth_failures,
        );
        one(
            o,
            "raftkv_client_unauthenticated_requests_total",
            "counter",
            "Client requests refused because their connection had not authenticated.",
            self.client_unauthenticated,
        );
        labelled(
            o,
            "raftkv_credential_reloads_total",
            "counter",
            "SIGHUP reloads of the peer secret and client token files, by result.",
            "result",
            [
                ("ok", self.credential_reloads_ok),
                ("failed", self.credential_reloads_failed),
            ],
        );
        one(
            o,
            "raftkv_client_connections_revoked_total",
            "counter",
            "Client connections closed because a reload dropped the token they presented.",
            self.client_tokens_revoked,
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {v}");
}

/// A metric with one label: its HELP and TYPE lines, then `name{label="l"} v` per row.
fn labelled<L: std::fmt::Display, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) {
    header(out, name, kind, help);
    for (l, v) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

/// Resident set size in bytes from /proc/self/statm (0 where it cannot be read).
fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
}

impl Server {
    /// The `/metrics` page.
    pub(super) fn metrics_page(&mut self) -> String {
        let (pending_writes, pending_reads) = self.replica.requests().counts();
        let st = self.replica.core().status();
        let store = self.replica.core().store();
        let (first, last) = {
            use crate::raft::LogStore;
            (store.first_index(), store.last_index())
        };
        let m = &self.metrics;
        let mut o = String::with_capacity(8 << 10);
        one(
            &mut o,
            "raftkv_server_id",
            "gauge",
            "This node's id.",
            self.cfg.id,
        );
        one(
            &mut o,
            "raftkv_server_term",
            "gauge",
            "The current Raft term.",
            st.term,
        );
        let role = super::clients::role_name(st.role);
        labelled(
            &mut o,
            "raftkv_server_role",
            "gauge",
            "1 for the node's current Raft role.",
            "role",
            ["follower", "pre-candidate", "candidate", "leader"].map(|r| (r, u8::from(role == r))),
        );
        one(
            &mut o,
            "raftkv_server_has_leader",
            "gauge",
            "1 if a leader is known.",
            u8::from(st.leader.is_some()),
        );
        one(
            &mut o,
            "raftkv_server_is_leader",
            "gauge",
            "1 if this node is the leader.",
            u8::from(st.leader == Some(self.cfg.id)),
        );
        one(
            &mut o,
            "raftkv_server_leader_changes_seen_total",
            "counter",
            "Times a new leader was seen.",
            m.leader_changes,
        );
        one(
            &mut o,
            "raftkv_server_commit_index",
            "gauge",
            "The commit index this node knows.",
            st.commit,
        );
        one(
            &mut o,
            "raftkv_server_applied_index",
            "gauge",
            "The last entry applied to the state machine.",
            self.replica.applied(),
        );
        one(
            &mut o,
            "raftkv_log_first_index",
            "gauge",
            "The first entry in the log.",
            first,
        );
        one(
            &mut o,
            "raftkv_log_last_index",
            "gauge",
            "The last entry in the log.",
            last,
        );
        one(
            &mut o,
            "raftkv_server_proposals_total",
            "counter",
            "Writes proposed and taken into the leader's log.",
            m.proposals,
        );
        one(
            &mut o,
            "raftkv_server_proposals_refused_total",
            "counter",
            "Writes refused at once (not leader, no quorum, ...).",
            m.proposals_refused,
        );
        one(
            &mut o,
            "raftkv_server_proposals_applied_total",
            "counter",
            "Writes answered with their applied result.",
            m.proposals_applied,
        );
        one(
            &mut o,
            "raftkv_server_proposals_pending",
            "gauge",
            "Writes proposed and not yet answered.",
            pending_writes,
        );
        one(
            &mut o,
            "raftkv_server_reads_pending",
            "gauge",
            "Reads waiting for a ReadIndex round or apply.",
            pending_reads,
        );
        one(
            &mut o,
            "raftkv_server_read_index_rounds_total",
            "counter",
            "ReadIndex rounds confirmed by a quorum.",
            m.read_index_rounds,
        );
        labelled(
            &mut o,
            "raftkv_client_requests_total",
            "counter",
            "Client requests received, by operation.",
            "op",
            OPS.iter().zip(m.requests),
        );
        labelled(
            &mut o,
            "raftkv_client_responses_total",
            "counter",
            "Client responses sent, by result (ok or the error code).",
            "result",
            RESULTS.iter().zip(m.responses),
        );
        let clients = self
            .endpoints
            .values()
            .filter(|e| matches!(e, super::Endpoint::Client(_)))
            .count();
        one(
            &mut o,
            "raftkv_client_connections",
            "gauge",
            "Open client connections.",
            clients,
        );
        one(
            &mut o,
            "raftkv_client_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            m.client_accepted,
        );
        one(
            &mut o,
            "raftkv_requests_forwarded_total",
            "counter",
            "Requests this follower forwarded to the leader (--forward).",
            m.forwarded,
        );
        let mut links: Vec<(u64, u8)> = self
            .peers
            .iter()
            .map(|(&id, p)| (id, u8::from(p.state() == PeerState::Connected)))
            .collect();
        links.sort_unstable();
        labelled(
            &mut o,
            "raftkv_peer_connected",
            "gauge",
            "1 if the outbound link to the peer is connected.",
            "peer",
            links,
        );
        one(
            &mut o,
            "raftkv_server_no_space_alarm",
            "gauge",
            "1 while the replicated NO_SPACE alarm is raised (writes that add data refused).",
            u8::from(self.replica.kv().alarm().is_some()),
        );
        one(
            &mut o,
            "raftkv_server_space_problem",
            "gauge",
            "1 while this node is over --quota-bytes or its disk refused an allocation.",
            u8::from(self.space_problem().is_some()),
        );
        one(
            &mut o,
            "raftkv_server_state_bytes",
            "gauge",
            "Bytes of keys and values in the state machine.",
            self.replica.kv().state_bytes(),
        );
        one(
            &mut o,
            "raftkv_disk_data_dir_bytes",
            "gauge",
            "Allocated bytes of the data directory, as of the last space check.",
            self.space.data_dir_bytes,
        );
        one(
            &mut o,
            "raftkv_server_quota_bytes",
            "gauge",
            "The space quota (--quota-bytes).",
            self.cfg.quota_bytes,
        );
        m.log_append.render(
            &mut o,
            "raftkv_disk_log_append_duration_seconds",
            "Time to append one Ready's entries to the log.",
        );
        m.log_sync.render(
            &mut o,
            "raftkv_disk_log_sync_duration_seconds",
            "Time to sync the log (one per Ready with entries).",
        );
        m.loop_pass.render(
            &mut o,
            "raftkv_loop_pass_duration_seconds",
            "Time of one loop pass, without the wait in poll.",
        );
        one(
            &mut o,
            "raftkv_snapshots_taken_total",
            "counter",
            "Snapshots written by this node.",
            m.snapshots_taken,
        );
        one(
            &mut o,
            "raftkv_snapshots_sent_total",
            "counter",
            "InstallSnapshot transfers started to followers.",
            m.snapshots_sent,
        );
        one(
            &mut o,
            "raftkv_snapshots_received_total",
            "counter",
            "InstallSnapshot transfers received and published.",
            m.snapshots_received,
        );
        labelled(
            &mut o,
            "raftkv_http_requests_total",
            "counter",
            "HTTP requests answered, by status class.",
            "status",
            [
                ("ok", m.http_ok),
                ("not_ready", m.http_not_ready),
                ("not_found", m.http_not_found),
                ("error", m.http_errors),
            ],
        );
        one(
            &mut o,
            "raftkv_http_connections",
            "gauge",
            "Open HTTP connections.",
            self.http_conns.len(),
        );
        one(
            &mut o,
            "raftkv_http_connections_rejected_total",
            "counter",
            "HTTP connections refused over the limit.",
            m.http_rejected,
        );
        one(
            &mut o,
            "raftkv_http_timeouts_total",
            "counter",
            "HTTP connections closed by the idle or partial-request timeout.",
            m.http_timeouts,
        );
        m.render_peer_auth(&mut o);
        one(
            &mut o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_bytes(),
        );
        o
    }
}

/// The error code's result label (for tests and logs).
#[allow(dead_code)]
pub(super) fn result_label(code: ErrorCode) -> &'static str {
    RESULTS
        .get(code as usize + 1)
        .copied()
        .unwrap_or("error_unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_labels_follow_error_codes() {
        assert_eq!(result_label(ErrorCode::NotLeader), "not_leader");
        assert_eq!(result_label(ErrorCode::Internal), "internal");
        assert_eq!(result_label(ErrorCode::ShuttingDown), "shutting_down");
    }

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let mut s = String::new();
        h.render(&mut s, "x_seconds", "help");
        assert!(s.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.0032\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_count 3\n"), "{s}");
    }
}
