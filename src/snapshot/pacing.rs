//! Capping the disk bandwidth of the snapshot child.
//!
//! A snapshot of a large store is hundreds of MB. Written flat out (~200 MB/s here) it fills the
//! device queue, and the log fsyncs of every node sharing the disk wait behind it: p99 put
//! latency goes from ~10 ms to hundreds of ms while a snapshot is written (docs/snapshots.md
//! §6). The child has no deadline, so it writes in small slices, pushes each to disk as it goes
//! (`SnapshotWriter::set_pacing`), and sleeps between slices to stay under a byte rate:
//! a 250 MB snapshot at 32 MiB/s takes ~7.5 s instead of ~1.5 s, but leaves the disk mostly to
//! the logs.
//!
//! [`RateLimiter`] is the pure part (a GCRA / virtual-clock token bucket over an injected
//! time), unit-tested with a fake clock; the child feeds it `Instant`s and sleeps.

use std::time::Duration;

/// How a background snapshot writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePacing {
    /// Average bytes per second the snapshot child may write; 0 = unlimited (the child then
    /// writes flat out, pushing every 8 MiB to disk as a received snapshot does).
    pub bytes_per_sec: u64,
    /// Slice size: each slice is handed to the disk (`sync_file_range`) before the next one is
    /// written, and the previous one awaited, so at most about two slices are ever dirty.
    pub slice_bytes: u64,
}

/// Default cap on the snapshot child's disk bandwidth: 32 MiB/s (see docs/snapshots.md §6 for
/// the measurement behind it).
pub const DEFAULT_WRITE_RATE: u64 = 32 << 20;
/// Default slice: 1 MiB.
pub const DEFAULT_SLICE: u64 = 1 << 20;
/// Environment variable overriding the rate (bytes per second, 0 = unlimited) of
/// [`BackgroundSnapshot::start`](super::BackgroundSnapshot::start); the server passes its
/// `--snapshot-write-rate` flag to `start_paced` instead.
pub const RATE_ENV: &str = "RAFTKV_SNAPSHOT_WRITE_RATE";

impl Default for WritePacing {
    fn default() -> Self {
        WritePacing {
            bytes_per_sec: DEFAULT_WRITE_RATE,
            slice_bytes: DEFAULT_SLICE,
        }
    }
}

impl WritePacing {
    /// No limit.
    pub fn unlimited() -> Self {
        WritePacing {
            bytes_per_sec: 0,
            ..WritePacing::default()
        }
    }

    /// The default, with the rate taken from `RAFTKV_SNAPSHOT_WRITE_RATE` if it is set and a
    /// number (a bad value is ignored with a warning).
    pub fn from_env() -> Self {
        let mut p = WritePacing::default();
        if let Ok(v) = std::env::var(RATE_ENV) {
            match v.trim().parse::<u64>() {
                Ok(r) => p.bytes_per_sec = r,
                Err(e) => log::warn!("ignoring {RATE_ENV}={v:?}: {e}"),
            }
        }
        p
    }
}

/// A byte-rate limiter over an injected clock: `take(now, n)` accounts `n` bytes written at
/// `now` and returns how long to wait before writing more. The first `burst` bytes are free;
/// after that the average never exceeds `rate` bytes per second. Time the writer spent blocked
/// elsewhere (the disk being slower than `rate`) is not banked beyond `burst`, so a slow stretch
/// is never followed by a flood.
///
/// GCRA: `tat` (theoretical arrival time) is when the bytes taken so far would have been sent at
/// exactly `rate`; the caller is ahead of schedule by `tat - now`, which may be at most `burst`
/// worth of time.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: u64,
    burst: Duration,
    tat: Duration,
}

impl RateLimiter {
    /// `rate` bytes per second (0 = unlimited, `take` always returns zero), `burst` bytes that
    /// may be written ahead of the rate.
    pub fn new(rate: u64, burst: u64) -> Self {
        RateLimiter {
            rate,
            burst: Self::time_for(rate, burst),
            tat: Duration::ZERO,
        }
    }

    fn time_for(rate: u64, bytes: u64) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        let ns = (bytes as u128 * 1_000_000_000) / rate as u128;
        Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }

    /// Accounts `n` bytes written at time `now` (any monotonic clock, e.g. time since start);
    /// returns how long to sleep before the next write.
    pub fn take(&mut self, now: Duration, n: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.tat = self.tat.max(now) + Self::time_for(self.rate, n);
        self.tat.saturating_sub(now).saturating_sub(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives a limiter like the child does, with a fake clock: write `slice`, sleep what it
    /// says, `slices` times, each write itself taking `write_time`. Returns the end time.
    fn drive(l: &mut RateLimiter, slices: u64, slice: u64, write_time: Duration) -> Duration {
        let mut now = Duration::ZERO;
        for _ in 0..slices {
            now += write_time;
            now += l.take(now, slice);
        }
        now
    }

    #[test]
    fn unlimited_never_waits() {
        let mut l = RateLimiter::new(0, 0);
        assert_eq!(l.take(Duration::ZERO, u64::MAX), Duration::ZERO);
        assert_eq!(drive(&mut l, 1000, 1 << 20, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn waits_exactly_the_rate_without_burst() {
        // 1 MiB/s, 256 KiB slices: each slice costs 250 ms.
        let mut l = RateLimiter::new(1 << 20, 0);
        assert_eq!(l.take(Duration::ZERO, 256 << 10), 250 * MS);
        assert_eq!(l.take(250 * MS, 256 << 10), 250 * MS);
        // The caller came back late (it was blocked on the disk for 1 s): the lost second is
        // not credited, the next slice still waits its own 250 ms.
        assert_eq!(l.take(1500 * MS, 256 << 10), 250 * MS);
        assert_eq!(l.take(1750 * MS, 256 << 10), 250 * MS);
        // Coming back early (a short sleep) is charged: 100 ms early, 350 ms to wait.
        assert_eq!(l.take(1900 * MS, 256 << 10), 350 * MS);
    }

    #[test]
    fn average_rate_is_capped_over_a_long_write() {
        // 250 MB at 32 MiB/s with 1 MiB slices and instant writes: ~7.45 s, never less.
        let rate = 32 << 20;
        let mut l = RateLimiter::new(rate, 1 << 20);
        let total: u64 = 250 << 20;
        let end = drive(&mut l, total >> 20, 1 << 20, Duration::ZERO);
        let ideal = Duration::from_secs_f64((total - (1 << 20)) as f64 / rate as f64);
        assert!(end >= ideal && end <= ideal + MS, "{end:?} vs {ideal:?}");
    }

    #[test]
    fn a_disk_slower_than_the_rate_is_not_slowed_further() {
        // Each 1 MiB slice takes 50 ms to write (20 MiB/s) under a 32 MiB/s cap: no sleeping.
        let mut l = RateLimiter::new(32 << 20, 1 << 20);
        let end = drive(&mut l, 100, 1 << 20, 50 * MS);
        assert_eq!(end, 100 * 50 * MS);
    }

    #[test]
    fn burst_is_written_ahead_but_not_banked() {
        // 1 MiB/s with a 1 MiB burst: the first MiB is free, then the rate applies.
        let mut l = RateLimiter::new(1 << 20, 1 << 20);
        assert_eq!(l.take(Duration::ZERO, 512 << 10), Duration::ZERO);
        assert_eq!(l.take(Duration::ZERO, 512 << 10), Duration::ZERO);
        assert_eq!(l.take(Duration::ZERO, 512 << 10), 500 * MS);
        // After a long idle stretch only `burst` is free again, not the whole idle time.
        let t = Duration::from_secs(100);
        assert_eq!(l.take(t, 1 << 20), Duration::ZERO);
        assert_eq!(l.take(t, 1 << 20), 1000 * MS);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let mut l = RateLimiter::new(1, u64::MAX);
        assert_eq!(l.take(Duration::ZERO, u64::MAX), Duration::ZERO);
        let mut l = RateLimiter::new(u64::MAX, 0);
        assert_eq!(l.take(Duration::ZERO, 1), Duration::ZERO);
    }

    #[test]
    fn default_pacing_is_documented_value() {
        let p = WritePacing::default();
        assert_eq!(p.bytes_per_sec, 32 << 20);
        assert_eq!(p.slice_bytes, 1 << 20);
        assert_eq!(WritePacing::unlimited().bytes_per_sec, 0);
    }
}
