//! raftkv-sim: runs seeded fault schedules against the Raft core and the KV state machine.
//!
//! `raftkv-sim --seeds 10000 --nodes 5` runs seeds 0..10000 and prints one summary line;
//! `raftkv-sim --seed S -v` replays one seed with a readable event trace.
//! See docs/simulator.md.

use clap::Parser;
use raftkv::sim::{run_seed, Bug, SimOptions};
use std::process::ExitCode;

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
    /// Plant a bug in the core: vote-twice | commit-old-term.
    #[arg(long)]
    bug: Option<String>,
    /// Print the event trace (with --seed).
    #[arg(short, long)]
    verbose: bool,
    /// Do not check the leader commit rule (L4) directly, only its consequences.
    #[arg(long)]
    no_commit_rule: bool,
    /// Keep going after a violation (report all failing seeds).
    #[arg(long)]
    keep_going: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bug = match args.bug.as_deref() {
        None | Some("none") => Bug::None,
        Some("vote-twice") => Bug::VoteTwice,
        Some("commit-old-term") => Bug::CommitOldTerm,
        Some(other) => {
            eprintln!("raftkv-sim: unknown --bug {other:?} (vote-twice | commit-old-term)");
            return ExitCode::from(2);
        }
    };
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
        trace: args.verbose,
        check_commit_rule: !args.no_commit_rule,
        ..SimOptions::default()
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first..args.first + args.seeds).collect(),
    };
    let (mut commits, mut elections, mut violations, mut ran) = (0u64, 0u64, 0u64, 0u64);
    for seed in &seeds {
        ran += 1;
        let r = run_seed(*seed, &opts);
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
            println!(
                "  replay: cargo run --release --bin raftkv-sim -- --seed {seed} --nodes {} --ticks {}{extra} -v",
                args.nodes, args.ticks,
            );
            if !args.keep_going {
                break;
            }
        }
    }
    println!("seeds: {ran} violations: {violations} commits: {commits} elections: {elections}");
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
