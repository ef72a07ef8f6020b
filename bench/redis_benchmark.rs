//! `raftkv-bench compare --redis-benchmark`: runs Redis' own load generator, `redis-benchmark`
//! (from Debian's `redis-tools`, installed like `redis-server`), against raftkv's RESP port
//! (on the leader) and against Redis, with the same flags, so both are measured by one tool
//! that neither side wrote: `-t set,get,incr,mset`, every `--rb-pipelines` (`-P`) and
//! `--rb-clients` (`-c`), `-n --rb-requests`, `-r --keys`, `-d --value-size`.

use std::fmt::Write as _;
use std::process::Command;

/// The tests run (`-t`), in the order of the table.
pub const TESTS: &str = "set,get,incr,mset";

/// One redis-benchmark run's result for one test.
pub struct RbCell {
    pub system: &'static str,
    pub test: String,
    pub clients: usize,
    pub pipeline: usize,
    /// (requests per second, p50 latency in ms) or why the run failed.
    pub result: Result<(f64, Option<f64>), String>,
}

/// redis-benchmark's settings for one matrix.
pub struct RbArgs<'a> {
    pub requests: u64,
    pub clients: &'a [usize],
    pub pipelines: &'a [usize],
    pub keys: u64,
    pub value_size: usize,
}

/// Parses `--csv` output: a header line, then `"TEST","rps",...` with the p50 latency in the
/// fifth column (redis-benchmark 7; 6.x prints only the test and the rate).
fn parse_csv(out: &str) -> Vec<(String, f64, Option<f64>)> {
    out.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split(',').map(|c| c.trim_matches('"')).collect();
            let rps: f64 = cols.get(1)?.parse().ok()?;
            let p50 = cols.get(4).and_then(|c| c.parse().ok());
            Some((cols[0].to_string(), rps, p50))
        })
        .collect()
}

/// Runs every (pipeline, clients) pair against `addr` (HOST:PORT).
pub fn run_matrix(system: &'static str, addr: &str, a: &RbArgs) -> Vec<RbCell> {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "6379"));
    let mut cells = Vec::new();
    for &pipeline in a.pipelines {
        for &clients in a.clients {
            if crate::signals::interrupted() {
                return cells;
            }
            let out = Command::new("redis-benchmark")
                .args(["-h", host, "-p", port, "-t", TESTS, "--csv", "-q"])
                .args(["-n", &a.requests.to_string()])
                .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
                .args(["-r", &a.keys.to_string(), "-d", &a.value_size.to_string()])
                .output();
            let result = match out {
                Ok(o) if o.status.success() => Ok(parse_csv(&String::from_utf8_lossy(&o.stdout))),
                Ok(o) => Err(format!(
                    "redis-benchmark failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .next()
                        .unwrap_or("")
                )),
                Err(e) => Err(format!("cannot run redis-benchmark: {e}")),
            };
            match result {
                Ok(rows) if !rows.is_empty() => {
                    for (test, rps, p50) in rows {
                        eprintln!("   {system} {test} -c {clients} -P {pipeline}: {rps:.0} req/s");
                        cells.push(RbCell {
                            system,
                            test,
                            clients,
                            pipeline,
                            result: Ok((rps, p50)),
                        });
                    }
                }
                other => {
                    let e = other.err().unwrap_or_else(|| "no results printed".into());
                    eprintln!("   {system} -c {clients} -P {pipeline}: {e}");
                    cells.push(RbCell {
                        system,
                        test: TESTS.into(),
                        clients,
                        pipeline,
                        result: Err(e),
                    });
                }
            }
        }
    }
    cells
}

/// The Markdown table: one row per (test, -P, -c), one column pair per system, and raftkv's
/// rate over each other system's.
pub fn markdown(cells: &[RbCell], a: &RbArgs) -> String {
    let mut systems: Vec<&str> = Vec::new();
    for c in cells {
        if !systems.contains(&c.system) {
            systems.push(c.system);
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### redis-benchmark\n\n`redis-benchmark -t {TESTS} -n {} -r {} -d {}`, all on 127.0.0.1; \
         req/s (p50 ms). raftkv is its 3-node cluster's leader's RESP port.\n",
        a.requests, a.keys, a.value_size
    );
    let _ = write!(s, "| test | -P | -c |");
    for sys in &systems {
        let _ = write!(s, " {sys} |");
    }
    let _ = writeln!(s, " raftkv ÷ other |");
    let _ = writeln!(s, "|---|---:|---:|{}---:|", "---:|".repeat(systems.len()));
    let mut rows: Vec<(String, usize, usize)> = Vec::new();
    for c in cells.iter().filter(|c| c.result.is_ok()) {
        let key = (c.test.clone(), c.pipeline, c.clients);
        if !rows.contains(&key) {
            rows.push(key);
        }
    }
    let find = |sys: &str, r: &(String, usize, usize)| {
        cells
            .iter()
            .find(|c| c.system == sys && c.test == r.0 && c.pipeline == r.1 && c.clients == r.2)
            .and_then(|c| c.result.as_ref().ok())
    };
    for r in &rows {
        let _ = write!(s, "| {} | {} | {} |", r.0, r.1, r.2);
        for sys in &systems {
            match find(sys, r) {
                Some((rps, Some(p50))) => {
                    let _ = write!(s, " {rps:.0} ({p50:.2}) |");
                }
                Some((rps, None)) => {
                    let _ = write!(s, " {rps:.0} |");
                }
                None => s.push_str(" - |"),
            }
        }
        let ratio = systems
            .iter()
            .skip(1)
            .filter_map(|o| Some(find("raftkv", r)?.0 / find(o, r)?.0))
            .map(|x| format!("{x:.2}x"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(s, " {ratio} |");
    }
    for c in cells.iter().filter(|c| c.result.is_err()) {
        let _ = writeln!(
            s,
            "\n- {} -c {} -P {}: {}",
            c.system,
            c.clients,
            c.pipeline,
            c.result.as_ref().err().map_or("", |e| e.as_str())
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\"\n\
                   \"SET\",\"12345.68\",\"0.5\",\"0.1\",\"0.400\",\"0.9\"\n\
                   \"MSET (10 keys)\",\"999.00\",\"1\",\"1\",\"2.5\",\"3\"\n";
        let rows = parse_csv(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], ("SET".into(), 12345.68, Some(0.4)));
        assert_eq!(rows[1].0, "MSET (10 keys)");
    }
}
