//! etcd driver over its native **gRPC** API (cargo feature `etcd`; `--system etcd-grpc`).
//!
//! gRPC needs HTTP/2, so this driver does not plug into the mio engine: it runs the same load
//! models on a single-threaded tokio runtime (one thread, like the mio engine). `clients`
//! HTTP/2 connections each carry `pipeline` concurrent request loops. Closed loop: each loop
//! sends its next request when the previous one answers. Open loop: the loops take operations
//! from one shared schedule and sleep until each one's intended start; latency is measured from
//! that intended start, so a stall that ties up every loop is charged to every operation it
//! delays, as in the mio engine.
//!
//! Stubs are generated from bench/proto/etcd_rpc.proto (a subset of etcd's rpc.proto) by
//! protox + tonic-prost-build in build.rs: no system protoc.

use crate::driver::{Consistency, DriverOptions};
use crate::engine::{EngineConfig, RunResult};
use crate::keys::{key_bytes, KEY_LEN};
use crate::schedule::Schedule;
use crate::stats::new_histogram;
use crate::workload::{Op, OpGen, OpKind};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

async fn channel(addr: &str) -> Result<Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

/// Finds the leader: the endpoint whose member id equals the leader id in its Status.
async fn find_leader(endpoints: &[String], timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no endpoints");
    loop {
        for ep in endpoints {
            let r = async {
                let mut m = MaintenanceClient::new(channel(ep).await?);
                let st = m
                    .status(pb::StatusRequest {})
                    .await
                    .map_err(|e| format!("{ep}: status: {}", e.message()))?
                    .into_inner();
                let member = st.header.map(|h| h.member_id).unwrap_or(0);
                if member != 0 && member == st.leader {
                    Ok(ep.clone())
                } else {
                    Err(format!("{ep}: not the leader"))
                }
            }
            .await;
            match r {
                Ok(l) => return Ok(l),
                Err(e) => last = e,
            }
        }
        if Instant::now() >= deadline || crate::signals::interrupted() {
            return Err(format!("no etcd leader within {timeout:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one request returned, in the engine's terms.
enum Got {
    Ok { found: bool, version: Option<u64> },
    CasFailed { version: Option<u64> },
    Err(String),
}

async fn execute(kv: &mut KvClient<Channel>, op: &Op, value: &[u8], serializable: bool) -> Got {
    let mut kb = [0u8; KEY_LEN];
    let key = key_bytes(op.key, &mut kb).to_vec();
    let status_err = |s: tonic::Status| Got::Err(format!("etcd: {:?}", s.code()));
    match op.kind {
        OpKind::Put => match kv
            .put(pb::PutRequest {
                key,
                value: value.to_vec(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => Got::Ok {
                found: true,
                version: r.into_inner().header.map(|h| h.revision as u64),
            },
            Err(s) => status_err(s),
        },
        OpKind::Get | OpKind::Scan => {
            let req = if op.kind == OpKind::Get {
                pb::RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                }
            } else {
                let prefix = key[..op.prefix_len.min(KEY_LEN)].to_vec();
                pb::RangeRequest {
                    range_end: crate::etcd::prefix_end(&prefix),
                    key: prefix,
                    limit: op.limit as i64,
                    serializable,
                    ..Default::default()
                }
            };
            match kv.range(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    Got::Ok {
                        found: !r.kvs.is_empty(),
                        version: r.kvs.first().map(|k| k.mod_revision as u64),
                    }
                }
                Err(s) => status_err(s),
            }
        }
        OpKind::Cas => {
            let txn = pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(pb::compare::TargetUnion::ModRevision(
                        op.expected_version as i64,
                    )),
                }],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: key.clone(),
                        value: value.to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                        key,
                        ..Default::default()
                    })),
                }],
            };
            match kv.txn(txn).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.succeeded {
                        Got::Ok {
                            found: true,
                            version: r.header.map(|h| h.revision as u64),
                        }
                    } else {
                        let v = r.responses.first().and_then(|o| match &o.response {
                            Some(pb::response_op::Response::ResponseRange(rr)) => {
                                Some(rr.kvs.first().map_or(0, |k| k.mod_revision as u64))
                            }
                            _ => None,
                        });
                        Got::CasFailed { version: v }
                    }
                }
                Err(s) => status_err(s),
            }
        }
    }
}

/// State shared by the request loops (one runtime thread, so the locks never contend).
struct Shared {
    gen: OpGen,
    schedule: Option<Schedule>,
    exhausted: bool,
    overall: Histogram<u64>,
    per_second: Vec<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    not_found: u64,
    cas_failed: u64,
    sent: u64,
    in_flight: u64,
}

/// Runs `gen` against the etcd cluster at `endpoints` (leader found first).
pub fn run(
    cfg: &EngineConfig,
    endpoints: &[String],
    opts: &DriverOptions,
    gen: OpGen,
) -> Result<RunResult, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(run_async(cfg, endpoints, opts, gen))
}

async fn run_async(
    cfg: &EngineConfig,
    endpoints: &[String],
    opts: &DriverOptions,
    gen: OpGen,
) -> Result<RunResult, String> {
    if opts.consistency == Consistency::Lease {
        return Err("etcd driver does not support lease reads (use linearizable or stale)".into());
    }
    let leader = find_leader(endpoints, Duration::from_secs(15)).await?;
    let mut channels = Vec::new();
    for _ in 0..cfg.clients.max(1) {
        // One HTTP/2 connection per client.
        channels.push(channel(&leader).await?);
    }
    let t0 = Instant::now();
    let measure_start = t0 + cfg.warmup;
    let end = cfg.duration.map(|d| measure_start + d);
    let nsecs = cfg
        .duration
        .map_or(0, |d| d.as_secs_f64().ceil().max(1.0) as usize);
    let shared = Arc::new(Mutex::new(Shared {
        gen,
        schedule: cfg.rate.map(|r| Schedule::new(t0, r)),
        exhausted: false,
        overall: new_histogram(),
        per_second: (0..nsecs).map(|_| new_histogram()).collect(),
        errors: BTreeMap::new(),
        not_found: 0,
        cas_failed: 0,
        sent: 0,
        in_flight: 0,
    }));
    let value: Arc<Vec<u8>> = Arc::new(opts.value.clone());
    let serializable = opts.consistency == Consistency::Stale;
    let mut tasks = Vec::new();
    for ch in &channels {
        for _ in 0..cfg.pipeline.max(1) {
            let mut kv = KvClient::new(ch.clone());
            let shared = shared.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    // Take the next operation (and, open loop, its intended start).
                    let (op, intended) = {
                        let Ok(mut s) = shared.lock() else { return };
                        let now = Instant::now();
                        if s.exhausted
                            || crate::signals::interrupted()
                            || end.is_some_and(|e| now >= e)
                        {
                            return;
                        }
                        let intended = match &mut s.schedule {
                            Some(sc) => {
                                let t = sc.next_due();
                                let _ = sc.take_due(t);
                                if end.is_some_and(|e| t >= e) {
                                    return;
                                }
                                Some(t)
                            }
                            None => None,
                        };
                        let Some(op) = s.gen.next_op() else {
                            s.exhausted = true;
                            return;
                        };
                        (op, intended)
                    };
                    let start = match intended {
                        Some(t) => {
                            tokio::time::sleep_until(t.into()).await;
                            t
                        }
                        None => Instant::now(),
                    };
                    if let Ok(mut s) = shared.lock() {
                        s.sent += 1;
                        s.in_flight += 1;
                    }
                    let got = execute(&mut kv, &op, &value, serializable).await;
                    let now = Instant::now();
                    let Ok(mut s) = shared.lock() else { return };
                    s.in_flight -= 1;
                    let version = match got {
                        Got::Ok { found, version } => {
                            if !found {
                                s.not_found += 1;
                            }
                            version
                        }
                        Got::CasFailed { version } => {
                            s.cas_failed += 1;
                            version
                        }
                        Got::Err(kind) => {
                            *s.errors.entry(kind).or_default() += 1;
                            continue;
                        }
                    };
                    s.gen.observe_version(&op, version);
                    if start >= measure_start && end.is_none_or(|e| start < e) {
                        let ns = now.saturating_duration_since(start).as_nanos() as u64;
                        s.overall.saturating_record(ns);
                        if end.is_some() {
                            let sec =
                                now.saturating_duration_since(measure_start).as_secs() as usize;
                            let last = s.per_second.len().saturating_sub(1);
                            if let Some(h) = s.per_second.get_mut(sec.min(last)) {
                                h.saturating_record(ns);
                            }
                        }
                    }
                }
            }));
        }
    }
    // Wait for the loops; past the drain deadline, stragglers are abandoned (counted below).
    let wait_until = end.map(|e| e + cfg.drain_timeout);
    for t in tasks.iter_mut() {
        match wait_until {
            Some(w) => {
                let _ = tokio::time::timeout_at(w.into(), t).await;
            }
            None => {
                let _ = t.await;
            }
        }
    }
    for t in &tasks {
        t.abort();
    }
    let stop = Instant::now();
    // Aborted loops release their references asynchronously: take the results out under the
    // lock instead of unwrapping the Arc.
    let mut guard = shared
        .lock()
        .map_err(|_| "etcd gRPC run: a request loop panicked".to_string())?;
    let s = &mut *guard;
    let measured = match end {
        Some(e) => e.min(stop).saturating_duration_since(measure_start),
        None => stop.saturating_duration_since(measure_start),
    };
    let interrupted = crate::signals::interrupted();
    Ok(RunResult {
        overall: std::mem::replace(&mut s.overall, new_histogram()),
        per_second: std::mem::take(&mut s.per_second),
        measured,
        errors: std::mem::take(&mut s.errors),
        not_found: s.not_found,
        cas_failed: s.cas_failed,
        sent: s.sent,
        incomplete: s.in_flight,
        reconnects: 0,
        max_backlog: 0,
        interrupted,
    })
}
