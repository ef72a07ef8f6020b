//! `--metrics-addrs` / `--scrape-metrics-hz`: what a Prometheus scraper costs the nodes.
//!
//! With `--metrics-addrs`, the bench reads each node's `/metrics` once before and once after the
//! run and reports the event loop's pass-duration p99 over the run (from the difference of the
//! `raftkv_loop_pass_duration_seconds` histograms: an upper bucket bound, 100 µs doubling). With
//! `--scrape-metrics-hz F` a thread also fetches every node's `/metrics` F times a second
//! during the run, a new connection each time (as a scraper does after a timeout), so the run's
//! request p99 and loop p99 can be compared with and without it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOOP_HIST: &str = "raftkv_loop_pass_duration_seconds_bucket{le=\"";
const TIMEOUT: Duration = Duration::from_secs(2);

/// One GET of `path` on `addr` (HTTP/1.1, `Connection: close`); the body.
pub fn get(addr: &str, path: &str) -> Result<String, String> {
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sa, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// The loop-pass histogram's cumulative buckets: upper bound (s) -> count (+Inf as infinity).
fn loop_buckets(page: &str) -> BTreeMap<u64, (f64, u64)> {
    page.lines()
        .filter_map(|l| l.strip_prefix(LOOP_HIST))
        .filter_map(|rest| {
            let (le, n) = rest.split_once("\"} ")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((
                (le * 1e9).min(u64::MAX as f64) as u64,
                (le, n.trim().parse().ok()?),
            ))
        })
        .collect()
}

/// The p99 bucket bound of the passes between two pages, and the number of passes.
fn loop_p99(before: &str, after: &str) -> Option<(f64, u64)> {
    let (b, a) = (loop_buckets(before), loop_buckets(after));
    let total = a.values().last()?.1.checked_sub(b.values().last()?.1)?;
    if total == 0 {
        return None;
    }
    let want = (total as f64 * 0.99).ceil() as u64;
    a.iter().find_map(|(k, &(le, n))| {
        let d = n.saturating_sub(b.get(k).map_or(0, |x| x.1));
        (d >= want).then_some((le, total))
    })
}

/// The scraper and the before/after pages.
pub struct Scrape {
    addrs: Vec<String>,
    before: Vec<Option<String>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scrape {
    /// Reads the first pages and starts scraping at `hz` (0: no scraper).
    pub fn start(addrs: &[String], hz: f64) -> Scrape {
        let before = addrs.iter().map(|a| get(a, "/metrics").ok()).collect();
        let (stop, done, failed) = Default::default();
        let mut s = Scrape {
            addrs: addrs.to_vec(),
            before,
            stop,
            done,
            failed,
            thread: None,
        };
        if hz > 0.0 {
            let (addrs, stop) = (s.addrs.clone(), s.stop.clone());
            let (done, failed) = (s.done.clone(), s.failed.clone());
            let every = Duration::from_secs_f64(1.0 / hz);
            s.thread = Some(std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    for a in &addrs {
                        let c = if get(a, "/metrics").is_ok() {
                            &done
                        } else {
                            &failed
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    next += every;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }));
        }
        s
    }

    /// Stops the scraper and reports per node: passes, loop p99, scrapes.
    pub fn finish(mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut out = format!(
            "  metrics   : {} scrapes ok, {} failed\n",
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
        for (a, before) in self.addrs.iter().zip(&self.before) {
            let after = get(a, "/metrics");
            let line = match (before, after) {
                (Some(b), Ok(a)) => match loop_p99(b, &a) {
                    Some((le, n)) => format!("{n} loop passes, p99 <= {}", fmt_le(le)),
                    None => "no loop passes recorded".into(),
                },
                (_, Err(e)) => format!("unavailable: {e}"),
                (None, _) => "no page before the run".into(),
            };
            out += &format!("  loop {a:<15}: {line}\n");
        }
        out
    }
}

fn fmt_le(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".into()
    } else {
        crate::stats::fmt_ns((le * 1e9) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(counts: &[(&str, u64)]) -> String {
        counts
            .iter()
            .map(|(le, n)| format!("{LOOP_HIST}{le}\"}} {n}\n"))
            .collect()
    }

    #[test]
    fn p99_is_the_bucket_holding_the_99th_percent_of_the_new_passes() {
        let b = page(&[("0.0001", 100), ("0.0002", 100), ("+Inf", 100)]);
        // 1000 new passes: 985 under 100 us, 10 more under 200 us, 5 above.
        let a = page(&[("0.0001", 1085), ("0.0002", 1095), ("+Inf", 1100)]);
        assert_eq!(loop_p99(&b, &a), Some((0.0002, 1000)));
        assert_eq!(loop_p99(&b, &b), None);
    }
}
