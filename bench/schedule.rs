//! Open-loop schedule: operation `i` is *intended* to start at `start + i / rate`.
//!
//! Latency is measured from the intended start, not from when the generator got around to
//! sending, so a server stall that backs requests up shows in the percentiles instead of being
//! hidden (the "coordinated omission" problem: a closed-loop client simply stops asking while
//! the server is stuck).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    /// Interval between intended starts, in nanoseconds (fractional, so any rate is exact on
    /// average).
    interval_ns: f64,
    issued: u64,
}

impl Schedule {
    /// `rate` operations per second starting at `start`. `rate` must be positive.
    pub fn new(start: Instant, rate: f64) -> Schedule {
        Schedule {
            start,
            interval_ns: 1e9 / rate.max(1e-9),
            issued: 0,
        }
    }

    /// Intended start of operation number `i` (0-based).
    pub fn intended(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.interval_ns).round() as u64)
    }

    /// Intended start of the next operation not yet taken.
    pub fn next_due(&self) -> Instant {
        self.intended(self.issued)
    }

    /// Takes the next operation if it is due at `now`, returning its intended start.
    pub fn take_due(&mut self, now: Instant) -> Option<Instant> {
        let t = self.next_due();
        if t <= now {
            self.issued += 1;
            Some(t)
        } else {
            None
        }
    }

    /// Operations taken so far.
    #[cfg(test)]
    pub fn issued(&self) -> u64 {
        self.issued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 4.0);
        assert_eq!(s.intended(0), t0);
        assert_eq!(s.intended(1), t0 + Duration::from_millis(250));
        assert_eq!(s.intended(8), t0 + Duration::from_secs(2));
        // Fractional intervals do not drift: 3 ops/s, op 3000 is at exactly 1000 s.
        let s = Schedule::new(t0, 3.0);
        assert_eq!(s.intended(3000), t0 + Duration::from_secs(1000));
    }

    #[test]
    fn a_late_generator_catches_up_with_the_original_intended_times() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1000.0);
        // Nothing is due before its time.
        assert_eq!(s.take_due(t0), Some(t0));
        assert_eq!(s.take_due(t0), None);
        // The generator stalls for 10 ms: ten ops are now due, each keeping its own intended
        // start (so each will be charged the stall).
        let late = t0 + Duration::from_millis(10);
        let due: Vec<Instant> = std::iter::from_fn(|| s.take_due(late)).collect();
        assert_eq!(due.len(), 10);
        assert_eq!(due[0], t0 + Duration::from_millis(1));
        assert_eq!(due[9], t0 + Duration::from_millis(10));
        assert_eq!(s.issued(), 11);
        assert_eq!(s.next_due(), t0 + Duration::from_millis(11));
    }
}
