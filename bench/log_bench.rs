//! `raftkv-log-bench`: storage benchmarks (not a test; prints figures).
//!
//! 1. Append throughput with one `sync` per batch of 1, 16 and 256 entries (256-byte payloads).
//! 2. Opening and replaying a large log (default ~1 GiB): entries/s and peak RSS (VmHWM, reset
//!    via /proc/self/clear_refs before the measured phase).
//!
//! ```text
//! cargo run --release --bin raftkv-log-bench -- [--dir D] [--replay-mib 1024] [--payload 256]
//! ```

use bytes::Bytes;
use clap::Parser;
use raftkv::raft::{Entry, LogStore};
use raftkv::storage::{Log, LogOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "raftkv-log-bench")]
struct Args {
    /// Scratch directory (default: a new directory under /tmp, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Seconds to spend on each append batch size.
    #[arg(long, default_value_t = 3.0)]
    append_secs: f64,
    /// Size of the log for the replay benchmark, in MiB (0 = skip).
    #[arg(long, default_value_t = 1024)]
    replay_mib: u64,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Skip the append benchmark.
    #[arg(long)]
    no_append: bool,
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux >= 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn entry(index: u64, payload: &Bytes) -> Entry {
    Entry {
        index,
        term: 1,
        entry_type: 0,
        data: payload.clone(),
    }
}

fn main() {
    let args = Args::parse();
    let tmp;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("raftkv-log-bench-{}", std::process::id()));
            tmp.clone()
        }
    };
    let opts = LogOptions {
        segment_size: args.segment_mib << 20,
    };
    let payload = Bytes::from(vec![0xA5u8; args.payload]);
    println!(
        "raftkv-log-bench: payload {} B, segment {} MiB, dir {}",
        args.payload,
        args.segment_mib,
        base.display()
    );

    if !args.no_append {
        for batch in [1usize, 16, 256] {
            let dir = base.join(format!("append-{batch}"));
            let _ = std::fs::remove_dir_all(&dir);
            let mut log = Log::open(&dir, opts.clone()).expect("open");
            let mut next = 1u64;
            let mut syncs = 0u64;
            let mut lat = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs_f64(args.append_secs) {
                let es: Vec<Entry> = (0..batch as u64)
                    .map(|i| entry(next + i, &payload))
                    .collect();
                let t = Instant::now();
                log.append(&es).expect("append");
                log.sync().expect("sync");
                let _ = lat.record(t.elapsed().as_micros() as u64);
                next += batch as u64;
                syncs += 1;
            }
            let secs = t0.elapsed().as_secs_f64();
            let n = next - 1;
            println!(
                "append batch {batch:>3}: {:>9.0} entries/s  {:>7.1} MiB/s  {:>7.0} syncs/s  batch latency p50 {} us p99 {} us",
                n as f64 / secs,
                (n as f64 * args.payload as f64) / secs / (1 << 20) as f64,
                syncs as f64 / secs,
                lat.value_at_quantile(0.5),
                lat.value_at_quantile(0.99)
            );
            drop(log);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    if args.replay_mib > 0 {
        let dir = base.join("replay");
        let _ = std::fs::remove_dir_all(&dir);
        let rec = 32 + args.payload as u64;
        let n = (args.replay_mib << 20) / rec;
        let t0 = Instant::now();
        {
            let mut log = Log::open(&dir, opts.clone()).expect("open");
            let mut next = 1u64;
            while next <= n {
                let k = 4096.min(n - next + 1);
                let es: Vec<Entry> = (0..k).map(|i| entry(next + i, &payload)).collect();
                log.append(&es).expect("append");
                next += k;
            }
            log.sync().expect("sync");
        }
        let wsecs = t0.elapsed().as_secs_f64();
        println!(
            "wrote {n} entries ({} MiB) in {wsecs:.1} s ({:.0} entries/s, unsynced batches of 4096)",
            (n * rec) >> 20,
            n as f64 / wsecs
        );
        reset_peak();
        let rss0 = status_kib("VmRSS:");
        let t1 = Instant::now();
        let log = Log::open(&dir, opts.clone()).expect("reopen");
        let open_secs = t1.elapsed().as_secs_f64();
        let after_open = status_kib("VmHWM:");
        assert_eq!(log.last_index(), n);
        let t2 = Instant::now();
        let mut count = 0u64;
        let mut bytes = 0u64;
        log.replay(1, u64::MAX, &mut |e| {
            count += 1;
            bytes += e.data.len() as u64;
            Ok(())
        })
        .expect("replay");
        let replay_secs = t2.elapsed().as_secs_f64();
        assert_eq!(count, n);
        println!(
            "open (scan + CRC check of {} segments): {open_secs:.2} s ({:.0} entries/s, {:.0} MiB/s)",
            log.segment_count(),
            n as f64 / open_secs,
            (n * rec) as f64 / open_secs / (1 << 20) as f64
        );
        println!(
            "replay: {replay_secs:.2} s ({:.0} entries/s, {:.0} MiB/s of payload)",
            n as f64 / replay_secs,
            bytes as f64 / replay_secs / (1 << 20) as f64
        );
        println!(
            "RSS: {} MiB before open, peak {} MiB after open, peak {} MiB after replay (VmHWM)",
            rss0 >> 10,
            after_open >> 10,
            status_kib("VmHWM:") >> 10
        );
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
}
