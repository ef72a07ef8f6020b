//! A minimal `log::Log` writing one line per record to stderr:
//! `HH:MM:SS.mmm LEVEL target: message` (UTC time of day).
//!
//! Level from `--log-level`, else the `RAFTKV_LOG` environment variable, else `info`.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let day_ms = ms % 86_400_000;
        let (h, m, s, milli) = (
            day_ms / 3_600_000,
            day_ms / 60_000 % 60,
            day_ms / 1000 % 60,
            day_ms % 1000,
        );
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // One write per line so lines from concurrent threads do not interleave.
        let line = format!(
            "{h:02}:{m:02}:{s:02}.{milli:03} {level} {}: {}\n",
            record.target(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Parses a level name (`off`, `error`, `warn`, `info`, `debug`, `trace`).
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.trim()
        .parse::<LevelFilter>()
        .map_err(|_| format!("unknown log level {s:?} (off, error, warn, info, debug, trace)"))
}

/// Installs the logger. `level` (from a flag) wins over `RAFTKV_LOG`; default `info`.
pub fn init(level: Option<&str>) -> Result<(), String> {
    let env = std::env::var("RAFTKV_LOG").ok();
    let filter = match level.or(env.as_deref()) {
        Some(l) => parse_level(l)?,
        None => LevelFilter::Info,
    };
    // A second init (tests) keeps the first logger; only the level changes.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels() {
        assert_eq!(parse_level("debug"), Ok(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Ok(LevelFilter::Warn));
        assert!(parse_level("loud").is_err());
    }
}

/// At most one log line per interval, for events a remote party can cause at will (a flood
/// of bad handshakes must not become a flood of log lines): the lines in between are counted
/// and the next allowed line says how many were suppressed.
#[derive(Debug)]
pub struct RateLimit {
    every: std::time::Duration,
    next: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(every: std::time::Duration) -> RateLimit {
        RateLimit {
            every,
            next: None,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last one)` if a line may be logged at `now`.
    pub fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + self.every);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod rate_limit_tests {
    use super::RateLimit;
    use std::time::{Duration, Instant};

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(1));
        assert_eq!(r.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(r.allow(t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(r.allow(t0 + Duration::from_secs(1)), Some(5));
        assert_eq!(r.allow(t0 + Duration::from_millis(1500)), None);
    }
}
