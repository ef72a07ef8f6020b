//! Turning a run into a text report and a JSON document.

use crate::engine::RunResult;
use crate::json::Json;
use crate::stats::Summary;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// The parameters of a run, echoed in every report.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub system: String,
    pub workload: String,
    pub clients: usize,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub keys: u64,
    pub dist: String,
    pub value_size: usize,
    pub consistency: String,
    pub duration: Duration,
    pub warmup: Duration,
}

impl RunInfo {
    pub fn load_model(&self) -> String {
        match self.rate {
            Some(r) => format!(
                "open loop {r} ops/s over {} conns (max {} in flight each)",
                self.clients, self.pipeline
            ),
            None => format!(
                "closed loop {} conns x {} in flight",
                self.clients, self.pipeline
            ),
        }
    }

    fn to_json(&self) -> Json {
        Json::obj()
            .with("clients", self.clients)
            .with("pipeline", self.pipeline)
            .with("rate", self.rate)
            .with("keys", self.keys)
            .with("dist", self.dist.as_str())
            .with("value_size", self.value_size)
            .with("consistency", self.consistency.as_str())
            .with("duration_s", self.duration.as_secs_f64())
            .with("warmup_s", self.warmup.as_secs_f64())
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    pub info: RunInfo,
    pub overall: Summary,
    pub per_second: Vec<Summary>,
    pub errors: BTreeMap<String, u64>,
    pub not_found: u64,
    pub cas_failed: u64,
    pub sent: u64,
    pub incomplete: u64,
    pub reconnects: u64,
    pub max_backlog: usize,
    pub interrupted: bool,
    /// Latency by percentile for the plots: (nines = -log10(1 - q), ns), see `plot.rs`.
    pub percentiles: Vec<(f64, u64)>,
}

/// Points of the percentile curve: every 0.05 nines up to what the sample count resolves
/// (n samples resolve q up to 1 - 1/n, i.e. log10(n) nines; at most 5 nines), then the max.
fn percentile_points(h: &hdrhistogram::Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let top = (h.len() as f64).log10().min(5.0);
    let steps = (top / 0.05) as usize;
    let mut v: Vec<(f64, u64)> = (0..=steps)
        .map(|i| {
            let x = i as f64 * 0.05;
            (x, h.value_at_quantile(1.0 - 10f64.powf(-x)))
        })
        .collect();
    v.push((top, h.max()));
    v
}

impl Report {
    pub fn new(info: RunInfo, r: &RunResult) -> Report {
        let per_second = r
            .per_second
            .iter()
            .map(|h| Summary::from_histogram(h, Duration::from_secs(1)))
            .collect();
        Report {
            overall: Summary::from_histogram(&r.overall, r.measured),
            per_second,
            errors: r.errors.clone(),
            not_found: r.not_found,
            cas_failed: r.cas_failed,
            sent: r.sent,
            incomplete: r.incomplete,
            reconnects: r.reconnects,
            max_backlog: r.max_backlog,
            interrupted: r.interrupted,
            percentiles: percentile_points(&r.overall),
            info,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Human-readable report: header, per-second lines, totals.
    pub fn text(&self, per_second: bool) -> String {
        let i = &self.info;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} | {} | {} | {} keys ({}) | {}-byte values | reads {} | {:.0}s (+{:.0}s warm-up)",
            i.system,
            i.workload,
            i.load_model(),
            i.keys,
            i.dist,
            i.value_size,
            i.consistency,
            i.duration.as_secs_f64(),
            i.warmup.as_secs_f64()
        );
        if per_second {
            for (n, sec) in self.per_second.iter().enumerate() {
                let _ = writeln!(s, "  second {:>3}: {}", n + 1, sec.line());
            }
        }
        let _ = writeln!(s, "  overall   : {}", self.overall.line());
        let _ = writeln!(
            s,
            "  {} ops ok, {} errors, {} not found, {} cas conflicts, {} unfinished, {} reconnects{}",
            self.overall.ops,
            self.error_count(),
            self.not_found,
            self.cas_failed,
            self.incomplete,
            self.reconnects,
            if self.info.rate.is_some() {
                format!(", max backlog {}", self.max_backlog)
            } else {
                String::new()
            }
        );
        for (k, v) in &self.errors {
            let _ = writeln!(s, "    error {k}: {v}");
        }
        if self.interrupted {
            let _ = writeln!(s, "  (interrupted)");
        }
        s
    }

    pub fn to_json(&self) -> Json {
        let errors = Json::Obj(
            self.errors
                .iter()
                .map(|(k, v)| (k.clone(), Json::from(*v)))
                .collect(),
        );
        Json::obj()
            .with("system", self.info.system.as_str())
            .with("workload", self.info.workload.as_str())
            .with("load_model", self.info.load_model())
            .with("config", self.info.to_json())
            .with("overall", self.overall.to_json())
            .with(
                "per_second",
                Json::Arr(self.per_second.iter().map(Summary::to_json).collect()),
            )
            .with("errors", errors)
            .with("not_found", self.not_found)
            .with("cas_failed", self.cas_failed)
            .with("sent", self.sent)
            .with("incomplete", self.incomplete)
            .with("reconnects", self.reconnects)
            .with("max_backlog", self.max_backlog)
            .with("interrupted", self.interrupted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    fn sample() -> Report {
        let mut overall = new_histogram();
        let mut sec = new_histogram();
        for us in [100u64, 200, 300, 400] {
            overall.record(us * 1000).unwrap();
            sec.record(us * 1000).unwrap();
        }
        let mut errors = BTreeMap::new();
        errors.insert("raftkv: TIMEOUT".to_string(), 2);
        let r = RunResult {
            overall,
            per_second: vec![sec, new_histogram()],
            measured: Duration::from_secs(2),
            errors,
            not_found: 1,
            cas_failed: 0,
            sent: 7,
            incomplete: 1,
            reconnects: 0,
            max_backlog: 0,
            interrupted: false,
        };
        let info = RunInfo {
            system: "raftkv".into(),
            workload: "put".into(),
            clients: 4,
            pipeline: 2,
            rate: None,
            keys: 1000,
            dist: "uniform".into(),
            value_size: 256,
            consistency: "linearizable".into(),
            duration: Duration::from_secs(2),
            warmup: Duration::from_secs(1),
        };
        Report::new(info, &r)
    }

    #[test]
    fn json_has_the_documented_shape() {
        let j = sample().to_json();
        for key in [
            "system",
            "workload",
            "load_model",
            "config",
            "overall",
            "per_second",
            "errors",
            "not_found",
            "incomplete",
        ] {
            assert!(j.get(key).is_some(), "missing {key}");
        }
        let o = j.get("overall").unwrap();
        assert_eq!(o.get("ops"), Some(&Json::Int(4)));
        assert_eq!(o.get("ops_per_sec"), Some(&Json::Num(2.0)));
        for key in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us"] {
            assert!(matches!(o.get(key), Some(Json::Num(_))), "overall.{key}");
        }
        match j.get("per_second") {
            Some(Json::Arr(v)) => {
                assert_eq!(v.len(), 2);
                assert_eq!(v[0].get("ops"), Some(&Json::Int(4)));
                assert_eq!(v[1].get("ops"), Some(&Json::Int(0)));
            }
            other => panic!("per_second: {other:?}"),
        }
        assert_eq!(
            j.get("errors").and_then(|e| e.get("raftkv: TIMEOUT")),
            Some(&Json::Int(2))
        );
        assert_eq!(
            j.get("config").and_then(|c| c.get("rate")),
            Some(&Json::Null)
        );
    }

    #[test]
    fn text_report_lists_seconds_totals_and_errors() {
        let t = sample().text(true);
        assert!(t.starts_with("raftkv | put | closed loop 4 conns x 2 in flight | 1000 keys"));
        assert!(t.contains("second   1:"));
        assert!(t.contains("second   2:"));
        assert!(t.contains("overall   :          2 ops/s  p50    200µs"));
        assert!(t.contains("4 ops ok, 2 errors, 1 not found"));
        assert!(t.contains("error raftkv: TIMEOUT: 2"));
        assert!(!sample().text(false).contains("second"));
    }
}
