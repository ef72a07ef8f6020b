//! raftkv-bench: a load generator for raftkv, Redis and etcd, and a side-by-side comparison.
//!
//! One thread drives every connection with mio (see `engine`); protocols plug in behind the
//! `driver::Driver` trait. See docs/bench.md for usage and measured numbers.

mod compare;
mod driver;
mod engine;
mod etcd;
#[cfg(feature = "etcd")]
mod etcd_grpc;
mod json;
mod keys;
mod nullserver;
mod plot;
mod raftkv_driver;
mod redis;
mod redis_benchmark;
mod report;
mod schedule;
mod scrape;
mod signals;
mod stats;
mod workload;

use clap::{Args, Parser, Subcommand, ValueEnum};
use driver::{Consistency, Driver, DriverOptions};
use engine::EngineConfig;
use keys::{KeyDist, Zipf};
use report::{Report, RunInfo};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use workload::{OpGen, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "raftkv-bench",
    about = "Load generator for raftkv, Redis and etcd"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Writes of `--value-size` bytes to random keys.
    Put(Common),
    /// Reads of random keys (preloaded first).
    Get(Common),
    /// Reads with probability --read-ratio, writes otherwise.
    Mixed {
        #[arg(long, default_value_t = 0.9)]
        read_ratio: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Prefix scans: the prefix is the first --prefix-len bytes of a random key (`k0000012345`).
    Scan {
        #[arg(long, default_value_t = 8)]
        prefix_len: usize,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Compare-and-swap against the last version seen for the key (raftkv and etcd).
    Cas(Common),
    /// Starts raftkv, etcd and Redis locally and runs the same workloads against each.
    Compare(compare::CompareArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    Raftkv,
    /// raftkv through its RESP port (`--resp-listen`), driven by the Redis codec, so native and
    /// RESP runs share the engine, client count, key/value sizes and pipelining.
    RaftkvResp,
    Redis,
    /// etcd through its v3 HTTP/JSON gateway.
    Etcd,
    /// etcd through its native gRPC API (built with `--features etcd`).
    #[cfg(feature = "etcd")]
    EtcdGrpc,
    /// An in-process server that answers at once (measures the load generator itself).
    Null,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dist {
    Uniform,
    Zipf,
}

/// raftkv: which nodes the connections go to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadFrom {
    /// Only the leader.
    Leader,
    /// Every endpoint, round robin (GETs on followers need `raftkv serve --follower-reads`
    /// for LINEARIZABLE/LEASE reads; a NOT_LEADER answer moves that connection to the leader).
    All,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
}

/// Options shared by every workload.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// System under test.
    #[arg(long, value_enum, default_value_t = System::Raftkv)]
    pub system: System,
    /// Client endpoints HOST:PORT, comma-separated (raftkv/etcd: every node; the leader is found).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7001")]
    pub endpoints: Vec<String>,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Requests in flight per connection (closed loop), or the cap per connection (open loop).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Open loop at this many ops/s (latency from the intended send time). Default: closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured seconds before the measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Key space size.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    pub dist: Dist,
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Read consistency (raftkv: all three; etcd: linearizable or stale = serializable).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Skip writing every key before read workloads.
    #[arg(long)]
    pub no_preload: bool,
    /// raftkv: exactly-once sessions (client_id/seq) on writes.
    #[arg(long)]
    pub sessions: bool,
    /// raftkv with --consistency stale: spread connections over all endpoints, not just the leader.
    #[arg(long)]
    pub spread_reads: bool,
    /// raftkv: connections go to the leader only, or to every endpoint (`all`: for read-only
    /// workloads; with LINEARIZABLE/LEASE reads the followers must run with --follower-reads).
    #[arg(long, value_enum, default_value_t = ReadFrom::Leader)]
    pub read_from: ReadFrom,
    /// Seed of the key generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON on stdout (instead of text).
    #[arg(long)]
    pub json: bool,
    /// Print a line per second in the text report.
    #[arg(long)]
    pub per_second: bool,
    /// Seconds to wait for replies still in flight at the end.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Write SVG charts of the run into DIR: the latency percentile curve
    /// (`<system>-<workload>-percentiles.svg`) and the per-second throughput / latency
    /// timeline (`...-timeline.svg`).
    #[arg(long, value_name = "DIR")]
    pub plot_dir: Option<std::path::PathBuf>,
    /// raftkv: the nodes' HTTP addresses (`serve --http-addr`), comma-separated: report each
    /// node's event-loop pass p99 over the run (from /metrics read before and after).
    #[arg(long, value_delimiter = ',')]
    pub metrics_addrs: Vec<String>,
    /// raftkv, raftkv-resp: the client token file of nodes run with --client-token-file; every
    /// connection presents its first token (native Auth, RESP AUTH) before its load.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// With --metrics-addrs: also fetch every node's /metrics this many times a second during
    /// the run (a Prometheus scraper's load), to compare p99 with and without it.
    #[arg(long, default_value_t = 0.0)]
    pub scrape_metrics_hz: f64,
    /// raftkv, raftkv-resp: speak TLS, trusting the CA certificates in FILE (nodes
    /// started with --client-tls-cert, e.g. by `raftkv cluster --tls`: DIR/tls/ca.pem).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
}

fn secs(x: f64) -> Duration {
    Duration::from_secs_f64(x.max(0.0))
}

impl Common {
    fn driver_options(&self) -> DriverOptions {
        // A recognisable, deterministic value.
        let value = (0..self.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        DriverOptions {
            value,
            consistency: match self.consistency {
                ConsistencyArg::Linearizable => Consistency::Linearizable,
                ConsistencyArg::Lease => Consistency::Lease,
                ConsistencyArg::Stale => Consistency::Stale,
            },
            sessions: self.sessions,
            token: None,
        }
    }

    fn key_dist(&self) -> Result<KeyDist, String> {
        Ok(match self.dist {
            Dist::Uniform => KeyDist::uniform(self.keys),
            Dist::Zipf => KeyDist::Zipf(Zipf::new(self.keys, self.zipf_theta)?),
        })
    }
}

/// Where load goes: a driver for the mio engine, or (feature `etcd`) the gRPC runner.
pub enum Backend {
    /// The null server (if any) lives as long as the backend.
    Engine(Box<dyn Driver>, Option<nullserver::NullServer>),
    #[cfg(feature = "etcd")]
    EtcdGrpc,
}

impl Backend {
    pub fn new(c: &Common) -> Result<Backend, String> {
        #[cfg(feature = "etcd")]
        if c.system == System::EtcdGrpc {
            return Ok(Backend::EtcdGrpc);
        }
        let (d, n) = make_driver(c)?;
        Ok(Backend::Engine(d, n))
    }

    pub fn name(&self) -> String {
        match self {
            Backend::Engine(d, _) => d.name(),
            #[cfg(feature = "etcd")]
            Backend::EtcdGrpc => "etcd (gRPC)".into(),
        }
    }

    fn check(&self, kinds: &[workload::OpKind], cons: Consistency) -> Result<(), String> {
        match self {
            Backend::Engine(d, _) => d.check(kinds, cons),
            #[cfg(feature = "etcd")]
            Backend::EtcdGrpc => Ok(()),
        }
    }

    fn run(&self, cfg: &EngineConfig, c: &Common, gen: OpGen) -> Result<engine::RunResult, String> {
        let _ = c;
        match self {
            Backend::Engine(d, _) => {
                let mut gen = gen;
                engine::run(cfg, d.as_ref(), &mut gen)
            }
            #[cfg(feature = "etcd")]
            Backend::EtcdGrpc => etcd_grpc::run(cfg, &c.endpoints, &c.driver_options(), gen),
        }
    }
}

/// Builds the driver for `c.system`; the null server (if any) lives as long as the returned box.
pub fn make_driver(
    c: &Common,
) -> Result<(Box<dyn Driver>, Option<nullserver::NullServer>), String> {
    let mut opts = c.driver_options();
    if let Some(f) = &c.token_file {
        if !matches!(c.system, System::Raftkv | System::RaftkvResp) {
            return Err("--token-file is for --system raftkv and raftkv-resp".into());
        }
        let t = raftkv::net::client_auth::ClientToken::load(f)?;
        opts.token = Some(t.secret());
    }
    Ok(match c.system {
        #[cfg(feature = "etcd")]
        System::EtcdGrpc => return Err("etcd-grpc runs on its own runner".into()),
        System::Raftkv => {
            let d = raftkv_driver::RaftkvDriver::new(
                c.endpoints.clone(),
                &opts,
                c.read_from == ReadFrom::All
                    || (c.spread_reads && c.consistency == ConsistencyArg::Stale),
            );
            let d = match &c.tls_ca {
                Some(ca) => d.with_tls(
                    raftkv::net::tls::client_config(ca, None).map_err(|e| e.to_string())?,
                ),
                None => d,
            };
            (Box::new(d), None)
        }
        System::Redis => (
            Box::new(redis::RedisDriver::new("redis", c.endpoints.clone(), &opts)),
            None,
        ),
        System::RaftkvResp => {
            let d = redis::RedisDriver::new("raftkv-resp", c.endpoints.clone(), &opts);
            let d = match &c.tls_ca {
                Some(ca) => d.with_tls(
                    raftkv::net::tls::client_config(ca, None).map_err(|e| e.to_string())?,
                ),
                None => d,
            };
            (Box::new(d), None)
        }
        System::Etcd => (
            Box::new(etcd::EtcdDriver::new(c.endpoints.clone(), &opts)),
            None,
        ),
        System::Null => {
            let srv = nullserver::NullServer::start().map_err(|e| format!("null server: {e}"))?;
            let d = raftkv_driver::RaftkvDriver::new(vec![srv.addr.to_string()], &opts, false);
            (Box::new(NullDriver(d)), Some(srv))
        }
    })
}

/// The raftkv driver under another name, for the null server.
struct NullDriver(raftkv_driver::RaftkvDriver);
impl Driver for NullDriver {
    fn name(&self) -> String {
        "null (in-process, raftkv protocol)".into()
    }
    fn check(&self, k: &[workload::OpKind], c: Consistency) -> Result<(), String> {
        self.0.check(k, c)
    }
    fn targets(&self) -> Result<Vec<std::net::SocketAddr>, String> {
        self.0.targets()
    }
    fn codec(&self, i: usize) -> Box<dyn driver::Codec> {
        self.0.codec(i)
    }
}

/// Runs one workload (with its preload) and returns the report.
pub fn run_workload(c: &Common, workload: Workload, label: Option<&str>) -> Result<Report, String> {
    let driver = Backend::new(c)?;
    let opts = c.driver_options();
    driver.check(&workload.kinds(), opts.consistency)?;
    let progress = std::io::stderr().is_terminal() && !c.json;
    if workload.wants_preload() && !c.no_preload {
        let t = Instant::now();
        let cfg = EngineConfig {
            clients: 8,
            pipeline: 16,
            rate: None,
            duration: None,
            warmup: Duration::ZERO,
            progress: false,
            bar: (!c.json).then(|| raftkv::progress::count(c.keys, "preloading keys")),
            drain_timeout: secs(30.0),
        };
        let gen = OpGen::new(Workload::Preload { n: c.keys }, KeyDist::uniform(c.keys), 0);
        let r = driver.run(&cfg, c, gen);
        if let Some(b) = &cfg.bar {
            b.finish_and_clear();
        }
        let r = r?;
        let errs: u64 = r.errors.values().sum();
        if errs > 0 || r.incomplete > 0 {
            return Err(format!(
                "preload of {} keys failed: {errs} errors {:?}, {} unfinished",
                c.keys, r.errors, r.incomplete
            ));
        }
        if !c.json {
            eprintln!(
                "preloaded {} keys into {} in {:.1}s",
                c.keys,
                driver.name(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let cfg = EngineConfig {
        clients: c.clients,
        pipeline: c.pipeline,
        rate: c.rate,
        duration: Some(secs(c.duration)),
        warmup: secs(c.warmup),
        progress,
        bar: None,
        drain_timeout: secs(c.drain_timeout),
    };
    let gen = OpGen::new(workload.clone(), c.key_dist()?, c.seed);
    let scrape = (!c.metrics_addrs.is_empty())
        .then(|| scrape::Scrape::start(&c.metrics_addrs, c.scrape_metrics_hz));
    let r = driver.run(&cfg, c, gen);
    if let Some(s) = scrape {
        eprint!("{}", s.finish());
    }
    let r = r?;
    let info = RunInfo {
        system: label.map_or_else(|| driver.name(), str::to_string),
        workload: workload.name(),
        clients: c.clients,
        pipeline: c.pipeline,
        rate: c.rate,
        keys: c.keys,
        dist: match c.dist {
            Dist::Uniform => "uniform".into(),
            Dist::Zipf => format!("zipf theta={}", c.zipf_theta),
        },
        value_size: c.value_size,
        consistency: opts.consistency.name().into(),
        duration: secs(c.duration),
        warmup: secs(c.warmup),
    };
    Ok(Report::new(info, &r))
}

/// A file-name-safe form of `s`.
pub fn slug(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// `--plot-dir`: the percentile curve and the timeline of one run.
fn write_plots(dir: &std::path::Path, rep: &Report) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let i = &rep.info;
    let base = slug(&format!("{} {}", i.system, i.workload));
    let title = format!("{} {}, {}", i.system, i.workload, i.load_model());
    let pct = dir.join(format!("{base}-percentiles.svg"));
    plot::percentiles(&pct, &title, &[plot::Curve::of(&i.system, rep)])?;
    let tl = dir.join(format!("{base}-timeline.svg"));
    plot::timeline(&tl, &title, rep)?;
    eprintln!("wrote {} and {}", pct.display(), tl.display());
    Ok(())
}

fn main() {
    signals::install();
    let cli = Cli::parse();
    let (common, workload) = match cli.cmd {
        Cmd::Put(c) => (c, Workload::Put),
        Cmd::Get(c) => (c, Workload::Get),
        Cmd::Mixed { read_ratio, common } => {
            if !(0.0..=1.0).contains(&read_ratio) {
                eprintln!("raftkv-bench: --read-ratio must be in [0, 1]");
                std::process::exit(2);
            }
            (common, Workload::Mixed { read_ratio })
        }
        Cmd::Scan {
            prefix_len,
            limit,
            common,
        } => (common, Workload::Scan { prefix_len, limit }),
        Cmd::Cas(c) => (c, Workload::Cas),
        Cmd::Compare(args) => {
            if let Err(e) = compare::run(&args) {
                eprintln!("raftkv-bench compare: {e}");
                std::process::exit(1);
            }
            return;
        }
    };
    match run_workload(&common, workload, None) {
        Ok(rep) => {
            // A closed stdout (`| head`) is not worth a panic.
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = if common.json {
                writeln!(out, "{}", rep.to_json().to_string_pretty())
            } else {
                write!(out, "{}", rep.text(common.per_second))
            };
            if let Some(dir) = &common.plot_dir {
                if let Err(e) = write_plots(dir, &rep) {
                    eprintln!("raftkv-bench: {e}");
                    std::process::exit(1);
                }
            }
            if rep.interrupted {
                std::process::exit(130);
            }
        }
        Err(e) => {
            eprintln!("raftkv-bench: {e}");
            std::process::exit(1);
        }
    }
}
