//! Latency recording (HDR histograms in nanoseconds) and the summaries the reports print.

use crate::json::Json;
use hdrhistogram::Histogram;
use std::time::Duration;

/// Highest latency tracked exactly: one hour. Anything slower saturates (and is still counted).
const MAX_TRACKABLE_NS: u64 = 3_600_000_000_000;

/// A latency histogram in nanoseconds with 3 significant digits (0.1% relative error).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, MAX_TRACKABLE_NS, 3).expect("valid histogram bounds")
}

/// Throughput and latency percentiles of one interval (the whole run, or one second).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Successful operations in the interval.
    pub ops: u64,
    /// Length of the interval.
    pub seconds: f64,
    pub ops_per_sec: f64,
    /// Latencies in nanoseconds.
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Summary {
    /// Summarizes `hist` over an interval of `elapsed`.
    pub fn from_histogram(hist: &Histogram<u64>, elapsed: Duration) -> Summary {
        let seconds = elapsed.as_secs_f64();
        let ops = hist.len();
        let q = |p: f64| {
            if ops == 0 {
                0
            } else {
                hist.value_at_quantile(p)
            }
        };
        Summary {
            ops,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            mean_ns: if ops == 0 { 0.0 } else { hist.mean() },
            p50_ns: q(0.50),
            p90_ns: q(0.90),
            p99_ns: q(0.99),
            p999_ns: q(0.999),
            max_ns: if ops == 0 { 0 } else { hist.max() },
        }
    }

    /// One line: `12345 ops/s  p50 1.20ms  p90 ...`.
    pub fn line(&self) -> String {
        format!(
            "{:>10} ops/s  p50 {:>8}  p90 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}",
            fmt_rate(self.ops_per_sec),
            fmt_ns(self.p50_ns),
            fmt_ns(self.p90_ns),
            fmt_ns(self.p99_ns),
            fmt_ns(self.p999_ns),
            fmt_ns(self.max_ns)
        )
    }

    /// Machine form; latencies in microseconds (floats) to keep them readable.
    pub fn to_json(&self) -> Json {
        let us = |ns: u64| Json::Num(ns as f64 / 1000.0);
        Json::obj()
            .with("ops", self.ops)
            .with("seconds", self.seconds)
            .with("ops_per_sec", self.ops_per_sec)
            .with("mean_us", self.mean_ns / 1000.0)
            .with("p50_us", us(self.p50_ns))
            .with("p90_us", us(self.p90_ns))
            .with("p99_us", us(self.p99_ns))
            .with("p999_us", us(self.p999_ns))
            .with("max_us", us(self.max_ns))
    }
}

/// Human latency: `850ns`, `12.3µs`, `1.23ms`, `2.50s`.
pub fn fmt_ns(ns: u64) -> String {
    let x = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{}µs", sig3(x / 1e3))
    } else if ns < 1_000_000_000 {
        format!("{}ms", sig3(x / 1e6))
    } else {
        format!("{}s", sig3(x / 1e9))
    }
}

/// Three significant digits for values in [1, 1000).
fn sig3(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Human rate: integer below 10k, then `12.3k`, `1.23M`.
pub fn fmt_rate(r: f64) -> String {
    if r < 10_000.0 {
        format!("{r:.0}")
    } else if r < 1_000_000.0 {
        format!("{}k", sig3(r / 1e3))
    } else {
        format!("{}M", sig3(r / 1e6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=1000 µs, one sample each: p50 ≈ 500µs, p99 ≈ 990µs, max = 1ms (within 0.1%).
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let s = Summary::from_histogram(&h, Duration::from_secs(2));
        assert_eq!(s.ops, 1000);
        assert!((s.ops_per_sec - 500.0).abs() < 1e-9);
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.002;
        assert!(near(s.p50_ns, 500_000), "p50 {}", s.p50_ns);
        assert!(near(s.p90_ns, 900_000), "p90 {}", s.p90_ns);
        assert!(near(s.p99_ns, 990_000), "p99 {}", s.p99_ns);
        assert!(near(s.p999_ns, 999_000), "p99.9 {}", s.p999_ns);
        assert!(near(s.max_ns, 1_000_000), "max {}", s.max_ns);
        assert!((s.mean_ns - 500_500.0).abs() < 1_000.0);
    }

    #[test]
    fn empty_histogram_summarizes_to_zeros() {
        let s = Summary::from_histogram(&new_histogram(), Duration::from_secs(1));
        assert_eq!((s.ops, s.p50_ns, s.max_ns), (0, 0, 0));
        assert_eq!(s.ops_per_sec, 0.0);
    }

    #[test]
    fn huge_latencies_saturate_instead_of_failing() {
        let mut h = new_histogram();
        h.saturating_record(u64::MAX);
        assert_eq!(h.len(), 1);
        assert!(h.max() >= MAX_TRACKABLE_NS);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_ns(850), "850ns");
        assert_eq!(fmt_ns(12_345), "12.3µs");
        assert_eq!(fmt_ns(1_234_567), "1.23ms");
        assert_eq!(fmt_ns(250_000_000), "250ms");
        assert_eq!(fmt_ns(2_500_000_000), "2.50s");
        assert_eq!(fmt_rate(9_999.4), "9999");
        assert_eq!(fmt_rate(12_345.0), "12.3k");
        assert_eq!(fmt_rate(1_234_567.0), "1.23M");
        let s = Summary {
            ops: 10,
            seconds: 1.0,
            ops_per_sec: 10.0,
            mean_ns: 1e6,
            p50_ns: 1_000_000,
            p90_ns: 2_000_000,
            p99_ns: 3_000_000,
            p999_ns: 4_000_000,
            max_ns: 5_000_000,
        };
        assert_eq!(
            s.line(),
            "        10 ops/s  p50   1.00ms  p90   2.00ms  p99   3.00ms  p99.9   4.00ms  max   5.00ms"
        );
        let j = s.to_json();
        assert_eq!(j.get("p99_us"), Some(&Json::Num(3000.0)));
        assert_eq!(j.get("ops"), Some(&Json::Int(10)));
    }
}
