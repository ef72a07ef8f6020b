//! Who this node speaks Raft with: the cluster id, the one membership check, and the outcomes
//! of peer handshakes (`net::handshake`): taking on the cluster id, counting and logging
//! refusals, dropping frames whose `from` is not the authenticated sender.
//!
//! The cluster id is created once, when the cluster is bootstrapped: the member with the
//! lowest id in `--peers`, starting without `DIR/cluster_id`, makes up a random one. It stays
//! provisional until the member's first completed handshake: offered to members that have no
//! id, given up for the id of a member that has one (the bootstrapping member's directory was
//! wiped and it rejoins). Every other member starts without one and takes it from the first
//! member that completes a handshake with it (with a peer secret, only a holder of the secret
//! can hand it out). The first completed handshake settles the id and writes it to
//! `DIR/cluster_id`; from then on the node only ever speaks with nodes of that cluster.
//! Carrying the id through the handshake, rather than having each member make one, lets
//! members be started in any order without agreeing beforehand. A one-member cluster settles
//! its id at once.

use super::Server;
use crate::net::handshake::{Acceptor, Agreed, AuthError, Dialer, LocalCluster};
use crate::net::peer::Peer;
use crate::storage::cluster_id::{self, ClusterId};
use std::collections::HashMap;
use std::time::Instant;

/// What this member knows of its cluster id at startup: the one stored in the data
/// directory; else a provisional new one if it bootstraps the cluster (the lowest id in
/// `--peers`; settled at once if it is the only member); else nothing yet.
pub(super) fn load_cluster_id(cfg: &super::ServerConfig) -> Result<LocalCluster, String> {
    let dir = &cfg.data_dir;
    if let Some(id) = cluster_id::read(dir).map_err(|e| format!("cluster id: {e}"))? {
        log::info!("node {} is a member of cluster {id}", cfg.id);
        return Ok(LocalCluster::Known(id));
    }
    let lowest = cfg.peers.iter().map(|p| p.id).min();
    if lowest != Some(cfg.id) {
        log::info!(
            "node {}: cluster id not known yet; it comes from the first member to complete a \
             peer handshake (node {} creates it)",
            cfg.id,
            lowest.unwrap_or(0)
        );
        return Ok(LocalCluster::Unknown);
    }
    if cfg.peers.len() == 1 {
        let id = cluster_id::write_new(dir).map_err(|e| format!("creating the cluster id: {e}"))?;
        log::info!("node {} created cluster id {id}", cfg.id);
        return Ok(LocalCluster::Known(id));
    }
    let id = ClusterId::random().map_err(|e| format!("no randomness for a cluster id: {e}"))?;
    log::info!(
        "node {} proposes cluster id {id} (the lowest member id bootstraps the cluster; a \
         member that already has an id wins)",
        cfg.id
    );
    Ok(LocalCluster::Provisional(id))
}

/// Whether node `id` may speak Raft to this node: the ONE membership check of the peer layer
/// (handshakes and every frame after one). The members this node links to (`--peers`, the
/// configuration in force: `update_peer_links`), and removed members (so the core can tell a
/// returning one it was removed; it still has to prove the cluster secret).
pub(super) fn accepts_peer(
    peers: &HashMap<u64, Peer>,
    removed: &HashMap<u64, String>,
    id: u64,
) -> bool {
    peers.contains_key(&id) || removed.contains_key(&id)
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
            LocalCluster::Known(c) if c == agreed.cluster => {}
            LocalCluster::Known(c) => {
                let e = AuthError::WrongCluster {
                    ours: c,
                    theirs: agreed.cluster,
                };
                self.auth_failed(who, &e);
                return false;
            }
            LocalCluster::Unknown | LocalCluster::Provisional(_) => {
                if let Err(e) = cluster_id::write(&self.cfg.data_dir, agreed.cluster) {
                    log::error!("cannot save the cluster id settled with {who}: {e}");
                    return false;
                }
                log::info!(
                    "node {} is a member of cluster {} (settled with node {})",
                    self.cfg.id,
                    agreed.cluster,
                    agreed.peer
                );
                self.cluster_id = LocalCluster::Known(agreed.cluster);
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
