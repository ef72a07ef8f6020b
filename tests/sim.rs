//! Cluster simulation tests: many seeded fault schedules must pass every check, planted core
//! bugs must be caught, and a seed must replay identically.
//!
//! On failure each test names the seed and how to replay it with a full trace.

use raftkv::sim::{run_seed, Bug, SimOptions};

/// Fewer seeds in debug builds; the CI suite runs `cargo test --release`.
fn seeds(release: u64) -> u64 {
    if cfg!(debug_assertions) {
        release / 10
    } else {
        release
    }
}

fn replay_hint(seed: u64, opts: &SimOptions) -> String {
    let bug = match opts.bug {
        Bug::None => "",
        Bug::VoteTwice => " --bug vote-twice",
        Bug::CommitOldTerm => " --bug commit-old-term",
        Bug::TwoConfChanges => " --bug two-conf-changes",
        Bug::SkipJoint => " --bug skip-joint",
        Bug::ConfChangeBeforeCommit => " --bug conf-change-before-commit",
        Bug::LearnerVotes => " --bug learner-votes",
    };
    format!(
        "cargo run --release --bin raftkv-sim -- --seed {seed} --nodes {} --ticks {}{bug}{}{} -v",
        opts.nodes,
        opts.ticks,
        if opts.check_commit_rule {
            ""
        } else {
            " --no-commit-rule"
        },
        if opts.membership { " --membership" } else { "" }
    )
}

fn all_pass(nodes: usize, first: u64, count: u64) {
    let opts = SimOptions {
        nodes,
        ..SimOptions::default()
    };
    all_pass_with(&opts, first, count);
}

/// Runs `count` seeds from `first`; every one must pass. Returns the configuration changes
/// committed over all of them.
fn all_pass_with(opts: &SimOptions, first: u64, count: u64) -> u64 {
    let (mut commits, mut ops, mut confs) = (0, 0, 0);
    let nodes = opts.nodes;
    for seed in first..first + count {
        let r = run_seed(seed, opts);
        ops += r.ops_done;
        confs += r.conf_changes;
        if let Some(v) = r.violation {
            panic!(
                "seed {seed} ({nodes} nodes) violated: {v}\nreplay: {}",
                replay_hint(seed, opts)
            );
        }
        commits += r.commits;
    }
    // The runs must do real work, not pass vacuously.
    assert!(
        commits > count * 50,
        "only {commits} entries committed over {count} seeds"
    );
    assert!(
        ops > count * 100,
        "only {ops} client operations completed over {count} seeds"
    );
    confs
}

#[test]
fn three_node_clusters_survive_faults() {
    all_pass(3, 1_000, seeds(300));
}

#[test]
fn five_node_clusters_survive_faults() {
    all_pass(5, 2_000, seeds(300));
}

/// Membership changes (learners added under new ids, promoted alone or two at once through
/// the joint configuration, voters replaced and removed, the leader too) interleaved with
/// every other fault, from 3 to 7 nodes: every check passes, and the changes really happen.
#[test]
fn membership_changes_survive_faults() {
    for (nodes, first) in [(3, 6_000), (5, 7_000), (7, 8_000)] {
        let opts = SimOptions {
            nodes,
            membership: true,
            ..SimOptions::default()
        };
        let count = seeds(200);
        let confs = all_pass_with(&opts, first, count);
        // About two changes commit per seed (measured: 2.3 at 3 nodes); far fewer means the
        // schedule stopped changing membership.
        assert!(
            confs >= count,
            "only {confs} configuration changes committed over {count} seeds of {nodes} nodes"
        );
    }
}

/// Each planted membership bug is caught within 1000 seeds, at 3 and 5 nodes. The window
/// comes from the rarest catch: a learner's vote decides an election in few schedules, and
/// LearnerVotes was caught by 13 of seeds 0..1000 at 5 nodes and 18 at 3 (the others by 80
/// to 540). At 1.3% per seed, 1000 seeds all miss with chance (1 - 0.013)^1000 ~ 2e-6; 300
/// seeds (this test's old window) miss with chance 2%, and did when counting a stall as one
/// election tick reshuffled which seeds catch it (first catch moved from seed 43 to 320,
/// the rate stayed 13-14 per 1000). The search stops at the first catch, so the window
/// costs only when a bug goes unnoticed.
#[test]
fn planted_membership_bugs_are_caught() {
    const WINDOW: u64 = 1000;
    for bug in [
        Bug::TwoConfChanges,
        Bug::SkipJoint,
        Bug::ConfChangeBeforeCommit,
        Bug::LearnerVotes,
    ] {
        for nodes in [3, 5] {
            let opts = SimOptions {
                nodes,
                bug,
                membership: true,
                ..SimOptions::default()
            };
            let Some((seed, v)) = first_violation(&opts, WINDOW) else {
                panic!(
                    "{bug:?} planted in a {nodes}-node cluster went unnoticed for {WINDOW} seeds"
                );
            };
            eprintln!(
                "{bug:?} ({nodes} nodes) caught at seed {seed}: {}\n  replay: {}",
                v.lines().next().unwrap_or(""),
                replay_hint(seed, &opts)
            );
        }
    }
}

/// Runs seeds until the first violation; returns it with its seed.
fn first_violation(opts: &SimOptions, max_seeds: u64) -> Option<(u64, String)> {
    (0..max_seeds).find_map(|seed| run_seed(seed, opts).violation.map(|v| (seed, v)))
}

#[test]
fn planted_vote_twice_is_caught() {
    for nodes in [3, 5] {
        let opts = SimOptions {
            nodes,
            bug: Bug::VoteTwice,
            ..SimOptions::default()
        };
        let found = first_violation(&opts, 300);
        let Some((seed, v)) = found else {
            panic!("VoteTwice planted in a {nodes}-node cluster went unnoticed for 300 seeds");
        };
        eprintln!(
            "vote-twice ({nodes} nodes) caught at seed {seed}: {}\n  replay: {}",
            v.lines().next().unwrap_or(""),
            replay_hint(seed, &opts)
        );
    }
}

#[test]
fn planted_commit_old_term_is_caught() {
    for nodes in [3, 5] {
        let opts = SimOptions {
            nodes,
            bug: Bug::CommitOldTerm,
            ..SimOptions::default()
        };
        let found = first_violation(&opts, 300);
        let Some((seed, v)) = found else {
            panic!("CommitOldTerm planted in a {nodes}-node cluster went unnoticed for 300 seeds");
        };
        eprintln!(
            "commit-old-term ({nodes} nodes) caught at seed {seed}: {}\n  replay: {}",
            v.lines().next().unwrap_or(""),
            replay_hint(seed, &opts)
        );
    }
}

#[test]
fn same_seed_same_trace() {
    let opts = SimOptions {
        nodes: 5,
        trace: true,
        ..SimOptions::default()
    };
    for seed in [7, 12_345] {
        let a = run_seed(seed, &opts);
        let b = run_seed(seed, &opts);
        assert!(
            a.trace.len() > 1_000,
            "trace of seed {seed} suspiciously short"
        );
        assert_eq!(
            a.trace_hash,
            b.trace_hash,
            "seed {seed} replayed differently\nreplay: {}",
            replay_hint(seed, &opts)
        );
        assert_eq!(a.trace, b.trace);
        assert_eq!((a.commits, a.elections), (b.commits, b.elections));
    }
    let c = run_seed(8, &opts);
    assert_ne!(c.trace_hash, run_seed(7, &opts).trace_hash);
}

/// Without the direct commit-rule check, the Figure 8 bug must still be caught by what it
/// breaks (a committed entry missing from a later leader or applied differently), given long
/// enough runs.
#[test]
fn planted_commit_old_term_consequence_is_caught() {
    let opts = SimOptions {
        nodes: 3,
        ticks: 1_500,
        bug: Bug::CommitOldTerm,
        check_commit_rule: false,
        ..SimOptions::default()
    };
    let Some((seed, v)) = first_violation(&opts, 500) else {
        panic!("CommitOldTerm's consequences went unnoticed for 500 long seeds");
    };
    assert!(
        !v.starts_with("commit rule") && !v.starts_with("liveness"),
        "expected a safety violation (seed {seed}): {v}"
    );
    eprintln!(
        "commit-old-term consequence caught at seed {seed}: {}\n  replay: {}",
        v.lines().next().unwrap_or(""),
        replay_hint(seed, &opts)
    );
}
