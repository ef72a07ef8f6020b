//! `raftkv serve`: turns the parsed flags into a `ServerConfig` (rejecting contradictory or
//! incomplete ones with a usage error) and runs one node until SIGTERM/SIGINT.

use crate::args::ServeArgs;
use crate::output::EXIT_USAGE;
use raftkv::server::{parse_peers, Server, ServerConfig};
use std::process::ExitCode;
use std::time::Duration;

/// Runs one node; exit 2 on a bad configuration, 1 if it cannot start or dies of an error.
pub fn serve(a: ServeArgs) -> ExitCode {
    if let Err(e) = raftkv::logger::init(a.tuning.log_level.as_deref()) {
        eprintln!("raftkv: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let cfg = match serve_config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("raftkv serve: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let shutdown = match raftkv::server::signal::install() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("raftkv serve: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::open(cfg) {
        Ok(s) => s,
        Err(e) => {
            log::error!("startup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.run(shutdown) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The node's `ServerConfig` from `serve`'s flags (`ServerConfig::new`'s defaults for the rest).
fn serve_config(a: &ServeArgs) -> Result<ServerConfig, String> {
    let peers = parse_peers(&a.peers)?;
    let mut cfg = ServerConfig::new(a.id, a.data_dir.clone(), peers)?;
    if let Some(p) = &a.peer_addr {
        cfg.peer_listen = p.clone();
    }
    if let Some(c) = &a.client_addr {
        cfg.client_listen = c.clone();
    }
    cfg.http_listen = a.http_addr.clone();
    if cfg.client_listen.is_empty() {
        return Err("no client address: give --client-addr or ID=PEER/CLIENT in --peers".into());
    }
    let t = &a.tuning;
    if t.tick_ms == 0 {
        return Err("--tick-ms must be positive".into());
    }
    cfg.tick = Duration::from_millis(t.tick_ms);
    cfg.election_ticks = t.election_ticks;
    cfg.heartbeat_ticks = t.heartbeat_ticks;
    cfg.lease_read = t.lease_reads;
    cfg.pre_vote = !t.no_pre_vote;
    cfg.check_quorum = !t.no_check_quorum;
    if t.lease_reads && t.no_check_quorum {
        return Err("--lease-reads needs CheckQuorum (drop --no-check-quorum)".into());
    }
    cfg.max_client_pending_bytes = t.client_output_limit;
    cfg.snapshot_policy = raftkv::snapshot::SnapshotPolicy {
        max_log_entries: t.snapshot_entries,
        max_log_bytes: t.snapshot_bytes,
        trailing_entries: t.snapshot_trailing,
        // Set by the server from the node's rank among --peers.
        stagger: None,
    };
    cfg.snapshot_pacing = raftkv::snapshot::WritePacing {
        bytes_per_sec: t.snapshot_write_rate,
        ..Default::default()
    };
    cfg.max_frame = t.max_frame;
    cfg.segment_size = t.segment_size;
    cfg.request_timeout = Duration::from_millis(t.request_timeout_ms);
    Ok(cfg)
}
