//! raftkv-sim: runs seeded fault schedules against the Raft core and the KV state machine.
//!
//! `raftkv-sim --seeds 10000 --nodes 5` runs seeds 0..10000 and prints one summary line;
//! `raftkv-sim --seed S -v` replays one seed with a readable event trace.
//! See docs/simulator.md.

use clap::Parser;
use raftkv::node::NodeBug;
use raftkv::sim::{run_seed, Bug, SeedResult, SimOptions};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs `seeds` on `jobs` threads. Returns the results in seed order, up to and including the
/// first violation unless `keep_going` (the same as a sequential run would produce).
fn run_all(seeds: &[u64], opts: &SimOptions, jobs: usize, keep_going: bool) -> Vec<SeedResult> {
    let next = AtomicUsize::new(0);
    let first_fail = AtomicUsize::new(usize::MAX);
    let results: Mutex<Vec<Option<SeedResult>>> = Mutex::new(vec![None; seeds.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= seeds.len() || (!keep_going && i > first_fail.load(Ordering::SeqCst)) {
                    return;
                }
                let r = run_seed(seeds[i], opts);
                if r.violation.is_some() {
                    first_fail.fetch_min(i, Ordering::SeqCst);
                }
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    let mut out = Vec::new();
    for r in results {
        let Some(r) = r else { break };
        let failed = r.violation.is_some();
        out.push(r);
        if failed && !keep_going {
            break;
        }
    }
    out
}

#[derive(Parser, Debug)]
#[command(name = "raftkv-sim", about = "Deterministic Raft cluster simulator")]
struct Args {
    /// Number of seeds to run (seeds first..first+N).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of a --seeds run.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Length of the chaos phase in base ticks (10 simulated ms each).
    #[arg(long, default_value_t = 300)]
    ticks: u64,
    /// Cap on events processed during the chaos phase.
    #[arg(long)]
    steps: Option<u64>,
    /// Simulated clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Plant a bug in the core (vote-twice | commit-old-term; with --membership:
    /// two-conf-changes | skip-joint | conf-change-before-commit | learner-votes) or in the node
    /// layer (ack-before-sync | answer-before-commit | snapshot-before-durable |
    /// ignore-sync-failure | follower-read-before-apply).
    #[arg(long)]
    bug: Option<String>,
    /// Change the membership while faults run: add learners with new ids, promote them (two at
    /// once through joint consensus), replace and remove voters, the leader too.
    #[arg(long)]
    membership: bool,
    /// Print the event trace (with --seed).
    #[arg(short, long)]
    verbose: bool,
    /// Do not check the leader commit rule (L4) directly, only its consequences.
    #[arg(long)]
    no_commit_rule: bool,
    /// Worker threads (seeds are independent; output is the same for any value).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Keep going after a violation (report all failing seeds).
    #[arg(long)]
    keep_going: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (bug, node_bug) = match args.bug.as_deref() {
        None | Some("none") => (Bug::None, NodeBug::None),
        Some("vote-twice") => (Bug::VoteTwice, NodeBug::None),
        Some("commit-old-term") => (Bug::CommitOldTerm, NodeBug::None),
        Some("ack-before-sync") => (Bug::None, NodeBug::AckBeforeSync),
        Some("answer-before-commit") => (Bug::None, NodeBug::AnswerBeforeCommit),
        Some("snapshot-before-durable") => (Bug::None, NodeBug::SnapshotBeforeDurable),
        Some("ignore-sync-failure") => (Bug::None, NodeBug::IgnoreSyncFailure),
        Some("two-conf-changes") => (Bug::TwoConfChanges, NodeBug::None),
        Some("skip-joint") => (Bug::SkipJoint, NodeBug::None),
        Some("conf-change-before-commit") => (Bug::ConfChangeBeforeCommit, NodeBug::None),
        Some("learner-votes") => (Bug::LearnerVotes, NodeBug::None),
        Some("follower-read-before-apply") => (Bug::None, NodeBug::FollowerReadBeforeApply),
        Some(other) => {
            eprintln!(
                "raftkv-sim: unknown --bug {other:?} (vote-twice | commit-old-term | \
                 ack-before-sync | answer-before-commit | snapshot-before-durable | \
                 ignore-sync-failure | two-conf-changes | skip-joint | \
                 conf-change-before-commit | learner-votes | follower-read-before-apply)"
            );
            return ExitCode::from(2);
        }
    };
    if bug.is_membership() && !args.membership {
        eprintln!("raftkv-sim: --bug {bug:?} needs --membership (it shows in membership changes)");
        return ExitCode::from(2);
    }
    if args.nodes == 0 || args.nodes > 9 {
        eprintln!("raftkv-sim: --nodes must be 1..=9");
        return ExitCode::from(2);
    }
    let opts = SimOptions {
        nodes: args.nodes,
        ticks: args.ticks,
        max_steps: args.steps.unwrap_or(u64::MAX),
        clients: args.clients,
        bug,
        node_bug,
        trace: args.verbose,
        check_commit_rule: !args.no_commit_rule,
        membership: args.membership,
        ..SimOptions::default()
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first..args.first + args.seeds).collect(),
    };
    let (mut commits, mut elections, mut violations, mut ran) = (0u64, 0u64, 0u64, 0u64);
    for r in run_all(&seeds, &opts, args.jobs, args.keep_going) {
        ran += 1;
        let seed = &r.seed;
        if args.verbose {
            for line in &r.trace {
                println!("{line}");
            }
            println!(
                "seed {seed}: {} events, {} ops done, {} unknown, trace hash {:016x}",
                r.events, r.ops_done, r.ops_unknown, r.trace_hash
            );
        }
        commits += r.commits;
        elections += r.elections;
        if let Some(v) = &r.violation {
            violations += 1;
            println!("seed {seed}: VIOLATION: {v}");
            let mut extra = String::new();
            if let Some(b) = &args.bug {
                extra += &format!(" --bug {b}");
            }
            if let Some(st) = args.steps {
                extra += &format!(" --steps {st}");
            }
            if args.clients != 4 {
                extra += &format!(" --clients {}", args.clients);
            }
            if args.no_commit_rule {
                extra += " --no-commit-rule";
            }
            if args.membership {
                extra += " --membership";
            }
            println!(
                "  replay: cargo run --release --bin raftkv-sim -- --seed {seed} --nodes {} --ticks {}{extra} -v",
                args.nodes, args.ticks,
            );
        }
    }
    println!("seeds: {ran} violations: {violations} commits: {commits} elections: {elections}");
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
