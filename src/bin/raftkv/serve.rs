//! `raftkv serve`: turns the parsed flags into a `ServerConfig` (rejecting contradictory or
//! incomplete ones with a usage error) and runs one node until SIGTERM/SIGINT (SIGHUP re-reads
//! the secret files: `server/reload.rs`).

use crate::args::{ServeArgs, ServeTls};
use crate::join;
use crate::output::EXIT_USAGE;
use raftkv::net::peer_auth::PeerSecrets;
use raftkv::net::tls::NodeTls;
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
    let mut cfg = cfg;
    if let Err(e) = check_membership(&a, &mut cfg) {
        log::error!("not starting: {e}");
        return ExitCode::FAILURE;
    }
    let shutdown = match raftkv::server::signal::install(raftkv::server::signal::OnHangup::Reload) {
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

/// Node identity and `--join`, for a node whose data directory is empty (`join.rs`); a node
/// with state restarts from it, whatever `--peers` and `--join` say.
fn check_membership(a: &ServeArgs, cfg: &mut ServerConfig) -> Result<(), String> {
    if !join::is_fresh(&a.data_dir)? {
        if a.join.is_some() {
            log::info!("the data directory holds this node's state: restarting, --join ignored");
        }
        return Ok(());
    }
    match &a.join {
        Some(endpoints) => join::join(cfg, endpoints),
        None if !cfg.peers.iter().any(|p| p.id == a.id) => Err(format!(
            "--peers has no entry for this node's id {}: to add a new node to a running \
             cluster, start it with --join",
            a.id
        )),
        None => join::check_identity(cfg),
    }
}

/// The node's `ServerConfig` from `serve`'s flags (`ServerConfig::new`'s defaults for the rest).
fn serve_config(a: &ServeArgs) -> Result<ServerConfig, String> {
    let peers = if a.peers.trim().is_empty() {
        Vec::new()
    } else {
        parse_peers(&a.peers)?
    };
    let mut cfg = ServerConfig::new(a.id, a.data_dir.clone(), peers)?;
    if let Some(p) = &a.peer_addr {
        cfg.peer_listen = p.clone();
    }
    if let Some(c) = &a.client_addr {
        cfg.client_listen = c.clone();
    }
    cfg.http_listen = a.http_addr.clone();
    if let Some(r) = &a.redis_addr {
        cfg.redis_listen = Some(r.clone());
    }
    cfg.peer_secrets = peer_secrets(a)?;
    cfg.peer_secret_file = a.peer_secret_file.clone();
    cfg.tls = node_tls(&a.tls)?;
    if let Some(f) = &a.client_token_file {
        cfg.client_token = Some(raftkv::net::client_auth::ClientToken::load(f)?);
    }
    cfg.client_token_file = a.client_token_file.clone();
    if cfg.client_listen.is_empty() {
        return Err("no client address: give --client-addr or ID=PEER/CLIENT in --peers".into());
    }
    if cfg.peer_listen.is_empty() {
        return Err("no peer address: give --peer-addr or ID=PEER in --peers".into());
    }
    cfg.promotion = raftkv::node::membership::PromotionPolicy {
        max_lag: a.tuning.promote_lag,
        ticks: a.tuning.promote_ticks,
    };
    let t = &a.tuning;
    if t.tick_ms == 0 {
        return Err("--tick-ms must be positive".into());
    }
    cfg.tick = Duration::from_millis(t.tick_ms);
    cfg.election_ticks = t.election_ticks;
    cfg.heartbeat_ticks = t.heartbeat_ticks;
    cfg.lease_read = t.lease_reads;
    cfg.pre_vote = !t.no_pre_vote;
    cfg.forward = t.forward;
    cfg.follower_reads = t.follower_reads;
    cfg.check_quorum = !t.no_check_quorum;
    if t.lease_reads && t.no_check_quorum {
        return Err("--lease-reads needs CheckQuorum (drop --no-check-quorum)".into());
    }
    cfg.max_client_pending_bytes = t.client_output_limit;
    if t.max_clients == 0 {
        return Err("--max-clients must be at least 1".into());
    }
    cfg.max_clients = t.max_clients;
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
    raftkv::limits::check_max_frame(t.max_frame)?;
    cfg.max_frame = t.max_frame;
    cfg.segment_size = t.segment_size;
    cfg.quota_bytes = t.quota_bytes;
    cfg.request_timeout = Duration::from_millis(t.request_timeout_ms);
    Ok(cfg)
}

/// TLS for each port from the `--client-tls-*` and `--peer-tls-*` flags (clap checks that
/// they come in complete sets).
fn node_tls(t: &ServeTls) -> Result<NodeTls, String> {
    use raftkv::net::tls::{client_config, server_config, CertFiles, PeerTls};
    let err = |e: raftkv::net::tls::TlsError| e.to_string();
    let mut out = NodeTls::default();
    let peer_files = match (&t.peer_tls_cert, &t.peer_tls_key, &t.peer_tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let files = CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            out.peer = Some(PeerTls {
                server: server_config(&files, Some(ca)).map_err(err)?,
                client: client_config(ca, Some(&files)).map_err(err)?,
            });
            Some(ca)
        }
        (None, None, None) => None,
        _ => return Err("--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together".into()),
    };
    if let (Some(cert), Some(key)) = (&t.client_tls_cert, &t.client_tls_key) {
        let files = CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        out.client = Some(server_config(&files, None).map_err(err)?);
        // Forwarding and joining talk to other nodes' client ports, which use TLS too.
        let ca = t.client_tls_ca.as_ref().or(peer_files).ok_or(
            "--client-tls-cert needs --client-tls-ca (or --peer-tls-ca): the CA of the other \
             nodes' client certificates, for forwarding to the leader and --join",
        )?;
        out.forward = Some(client_config(ca, None).map_err(err)?);
    }
    Ok(out)
}

/// The peer credentials: the secret file's, or the public key of an explicit --insecure-peers.
fn peer_secrets(a: &ServeArgs) -> Result<PeerSecrets, String> {
    match (&a.peer_secret_file, a.insecure_peers) {
        (Some(f), _) => PeerSecrets::load(f),
        (None, true) => Ok(PeerSecrets::insecure()),
        (None, false) => Err("no peer credentials: give --peer-secret-file FILE (or \
             RAFTKV_PEER_SECRET_FILE), a secret made once with `raftkv new-peer-secret FILE` \
             and copied to every member; or --insecure-peers to let anyone who reaches the \
             peer port speak Raft to this node (see docs/security.md)"
            .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Cmd};
    use clap::Parser;

    /// The CLI's defaults and the library's are the same constants; this catches a flag whose
    /// default is written out again (or a setting `serve_config` forgets to copy).
    #[test]
    fn serve_without_tuning_flags_is_the_library_default() {
        let peers = "1=127.0.0.1:1/127.0.0.1:2,2=127.0.0.1:3/127.0.0.1:4";
        let argv = [
            "raftkv",
            "serve",
            "--id=1",
            "--data-dir=d",
            "--peers",
            peers,
            "--insecure-peers",
        ];
        let Cmd::Serve(a) = Cli::try_parse_from(argv).unwrap().cmd else {
            panic!("not a serve command")
        };
        let from_flags = serve_config(&a).unwrap();
        let library = ServerConfig::new(1, "d".into(), parse_peers(peers).unwrap()).unwrap();
        assert_eq!(format!("{from_flags:#?}"), format!("{library:#?}"));
    }

    /// --max-frame outside 1..=1 GiB is refused at startup with the bound in the message.
    #[test]
    fn max_frame_out_of_range_is_refused() {
        let peers = "--peers=1=127.0.0.1:1/127.0.0.1:2";
        for (frame, ok) in [("0", false), ("1073741824", true), ("1073741825", false)] {
            let mf = format!("--max-frame={frame}");
            let argv = [
                "raftkv",
                "serve",
                "--id=1",
                "--data-dir=d",
                peers,
                &mf,
                "--insecure-peers",
            ];
            let Cmd::Serve(a) = Cli::try_parse_from(argv).unwrap().cmd else {
                panic!("not a serve command")
            };
            match serve_config(&a) {
                Ok(_) => assert!(ok, "--max-frame={frame} accepted"),
                Err(e) => {
                    assert!(!ok && e.contains("1073741824"), "--max-frame={frame}: {e}")
                }
            }
        }
    }
}
