//! Planted bugs in the node layer (`src/node/`, the Ready phases the server and the simulator
//! share) must each be caught by the simulator within a few hundred seeds, by a safety check
//! (durability, state machine safety, linearizability), never only by liveness.
//!
//! Each failure names the seed and the replay command.

use raftkv::node::NodeBug;
use raftkv::sim::{run_seed, SimOptions};

fn bug_flag(b: NodeBug) -> &'static str {
    match b {
        NodeBug::None => "none",
        NodeBug::AckBeforeSync => "ack-before-sync",
        NodeBug::AnswerBeforeCommit => "answer-before-commit",
        NodeBug::SnapshotBeforeDurable => "snapshot-before-durable",
        NodeBug::IgnoreSyncFailure => "ignore-sync-failure",
        NodeBug::FollowerReadBeforeApply => "follower-read-before-apply",
    }
}

/// Runs seeds 0.. until the first violation; panics if none within `max_seeds`.
fn caught(bug: NodeBug, nodes: usize, max_seeds: u64) {
    let opts = SimOptions {
        nodes,
        node_bug: bug,
        ..SimOptions::default()
    };
    let found = (0..max_seeds).find_map(|seed| run_seed(seed, &opts).violation.map(|v| (seed, v)));
    let flag = bug_flag(bug);
    let Some((seed, v)) = found else {
        panic!("{flag} planted in a {nodes}-node cluster went unnoticed for {max_seeds} seeds");
    };
    let replay = format!(
        "cargo run --release --features sim-bugs --bin raftkv-sim -- --seed {seed} --nodes \
         {nodes} --bug {flag} -v"
    );
    assert!(
        !v.starts_with("liveness"),
        "{flag}: expected a safety violation at seed {seed}: {v}\n  replay: {replay}"
    );
    eprintln!(
        "{flag} ({nodes} nodes) caught at seed {seed}: {}\n  replay: {replay}",
        v.lines().next().unwrap_or("")
    );
}

#[test]
fn planted_follower_ack_before_sync_is_caught() {
    caught(NodeBug::AckBeforeSync, 3, 300);
    caught(NodeBug::AckBeforeSync, 5, 300);
}

#[test]
fn planted_leader_answer_before_commit_is_caught() {
    caught(NodeBug::AnswerBeforeCommit, 3, 300);
    caught(NodeBug::AnswerBeforeCommit, 5, 300);
}

#[test]
fn planted_snapshot_state_before_durable_is_caught() {
    caught(NodeBug::SnapshotBeforeDurable, 5, 400);
}

/// A node that carries on after a failed sync acknowledges what its disk dropped; the correct
/// node fail-stops (the server exits on a failed sync; docs/server.md).
#[test]
fn planted_ignored_sync_failure_is_caught() {
    caught(NodeBug::IgnoreSyncFailure, 3, 400);
    caught(NodeBug::IgnoreSyncFailure, 5, 400);
}

/// A follower that serves a follower-ReadIndex read before applying up to the read index
/// returns stale values: the linearizability check must catch it.
#[test]
fn planted_follower_read_before_apply_is_caught() {
    caught(NodeBug::FollowerReadBeforeApply, 3, 300);
    caught(NodeBug::FollowerReadBeforeApply, 5, 500);
}

/// The same seeds pass without the bug (the violations above are the bugs', not the harness').
#[test]
fn same_seeds_pass_without_a_planted_bug() {
    let opts = SimOptions {
        nodes: 5,
        ..SimOptions::default()
    };
    for seed in 0..40 {
        if let Some(v) = run_seed(seed, &opts).violation {
            panic!(
                "seed {seed} violated without a planted bug: {v}\n  replay: cargo run --release \
                 --features sim-bugs --bin raftkv-sim -- --seed {seed} --nodes 5 -v"
            );
        }
    }
}
