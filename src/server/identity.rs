//! Who this node speaks Raft with: the cluster id, the one membership check, and the outcomes
//! of peer handshakes (`net::handshake`): taking on the cluster id, counting and logging
//! refusals, dropping frames whose `from` is not the authenticated sender.
//!
//! The cluster id is created once, when the cluster is bootstrapped: the member with the
//! lowest id in `--peers` creates a random one on its first start (a fresh data directory, or
//! one written before cluster ids existed) and persists it in `DIR/cluster_id`. Every other
//! member starts without one and takes it, durably, from the first member that completes a
//! handshake with it (with a peer secret, only a holder of the secret can hand it out). From
//! then on a node only ever speaks with nodes of that cluster. Carrying the id to the others
//! through the handshake, rather than having each member make one, is what lets members be
//! started in any order without agreeing beforehand.

use super::Server;
use crate::net::handshake::{Acceptor, Agreed, AuthError, Dialer};
use crate::net::peer::Peer;
use crate::storage::cluster_id::{self, ClusterId};
use std::collections::HashMap;
use std::time::Instant;

/// The cluster id stored in the data directory, created first if this member bootstraps the
/// cluster (the lowest id in `--peers`); None while this member waits to learn it.
pub(super) fn load_cluster_id(cfg: &super::ServerConfig) -> Result<Option<ClusterId>, String> {
    let dir = &cfg.data_dir;
    if let Some(id) = cluster_id::read(dir).map_err(|e| format!("cluster id: {e}"))? {
        log::info!("node {} is a member of cluster {id}", cfg.id);
        return Ok(Some(id));
    }
    let lowest = cfg.peers.iter().map(|p| p.id).min();
    if lowest != Some(cfg.id) {
        log::info!(
            "node {}: cluster id not known yet; it comes from the first member to complete a \
             peer handshake (node {} creates it)",
            cfg.id,
            lowest.unwrap_or(0)
        );
        return Ok(None);
    }
    let id = cluster_id::write_new(dir).map_err(|e| format!("creating the cluster id: {e}"))?;
    log::info!(
        "node {} created cluster id {id} (the lowest member id bootstraps the cluster)",
        cfg.id
    );
    Ok(Some(id))
}

/// Whether node `id` may speak Raft to this node: the ONE membership check of the peer layer
/// (handshakes and every frame after one). Today the members are the static `--peers`;
/// membership changes extend this function.
pub(super) fn accepts_peer(peers: &HashMap<u64, Peer>, id: u64) -> bool {
    peers.contains_key(&id)
}

/// A fresh handshake nonce; None (logged) if the kernel has no randomness to give.
fn nonce() -> Option<[u8; crate::net::handshake::NONCE_LEN]> {
    crate::entropy::bytes()
        .inspect_err(|e| log::error!("no randomness for a handshake nonce: {e}"))
        .ok()
}

impl Server {
    /// The handshake for a new connection to `peer`.
    pub(super) fn dialer_for(&self, peer: u64) -> Option<Dialer> {
        Some(Dialer::new(self.cfg.id, peer, self.cluster_id, nonce()?))
    }

    /// The handshake for a new inbound peer connection.
    pub(super) fn new_acceptor(&self) -> Option<Acceptor> {
        Some(Acceptor::new(self.cfg.id, self.cluster_id, nonce()?))
    }

    /// A handshake succeeded: takes on the cluster id if this node had none (durably, before
    /// any Raft message of that connection is used). False if the connection must be closed:
    /// the id could not be saved, or another connection already settled a different one.
    pub(super) fn on_agreed(&mut self, agreed: Agreed, who: &str) -> bool {
        match self.cluster_id {
            Some(c) if c == agreed.cluster => {}
            Some(c) => {
                let e = AuthError::WrongCluster {
                    ours: c,
                    theirs: agreed.cluster,
                };
                self.auth_failed(who, &e);
                return false;
            }
            None => {
                if let Err(e) = cluster_id::write(&self.cfg.data_dir, agreed.cluster) {
                    log::error!("cannot save the cluster id learned from {who}: {e}");
                    return false;
                }
                log::info!(
                    "node {} joined cluster {} (learned from node {})",
                    self.cfg.id,
                    agreed.cluster,
                    agreed.peer
                );
                self.cluster_id = Some(agreed.cluster);
            }
        }
        self.metrics.peer_handshakes_ok += 1;
        true
    }

    /// A peer handshake was refused: counted by reason, logged at most once a second (a
    /// flood of bad connections must not flood the log).
    pub(super) fn auth_failed(&mut self, who: &str, e: &AuthError) {
        self.metrics.peer_auth_failures[e.reason()] += 1;
        if let Some(suppressed) = self.auth_log.allow(Instant::now()) {
            let more = if suppressed > 0 {
                format!(" ({suppressed} more refused since the last such line)")
            } else {
                String::new()
            };
            log::warn!("peer handshake with {who} refused: {e}; closing{more}");
        }
    }

    /// An authenticated member sent a frame claiming another sender: dropped and counted.
    pub(super) fn spoofed_from(&mut self, authenticated: u64, claimed: u64) {
        self.metrics.peer_frames_spoofed += 1;
        if let Some(suppressed) = self.auth_log.allow(Instant::now()) {
            log::warn!(
                "dropping a raft message claiming to be from node {claimed} on node \
                 {authenticated}'s connection ({suppressed} similar lines suppressed)"
            );
        }
    }
}
