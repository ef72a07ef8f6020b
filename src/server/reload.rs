//! SIGHUP: the secret files are read again, so that a peer secret or a client token can be
//! rotated, and a leaked token revoked, without a restart (README "Security").
//!
//! Every file is read and checked first (`PeerSecrets::load`, `ClientToken::load`: the same
//! rules as at startup). One bad file (missing, empty, every user may read it) keeps every
//! credential in use: one error line naming it, `raftkv_credential_reloads_total{result=
//! "failed"}`. Otherwise the new ones take effect at once:
//! - peer secret: the next handshake, made or accepted, uses the new lines. Links that are up
//!   stay up: their peer proved itself when the link was set up, with a secret the cluster
//!   accepted then.
//! - client token: a connection that presents a token from now on is checked against the new
//!   lines; one that authenticated with a token the file no longer holds is closed (counted
//!   in `raftkv_client_connections_revoked_total`): removing a line revokes that token.
//!
//! Only files the node was started with are read: a reload neither turns authentication on
//! nor off. TLS certificates and keys are read at startup only.

use super::{Endpoint, Server};
use crate::net::client_auth::ClientToken;
use crate::net::peer_auth::PeerSecrets;
use mio::Token;

impl Server {
    /// Reloads the secret files if a SIGHUP arrived since the last call (checked once per tick).
    pub(super) fn reload_if_asked(&mut self) {
        if super::signal::take_reload_request() {
            self.reload_credentials();
        }
    }

    fn reload_credentials(&mut self) {
        let loaded = self.read_credential_files();
        let (secrets, token) = match loaded {
            Ok(l) => l,
            Err(e) => {
                self.metrics.credential_reloads_failed += 1;
                log::error!("SIGHUP: secret files not reloaded, the ones in use stay: {e}");
                return;
            }
        };
        self.metrics.credential_reloads_ok += 1;
        let mut done = Vec::new();
        if let (Some(s), Some(f)) = (secrets, &self.cfg.peer_secret_file) {
            done.push(format!(
                "peer secret file {} ({} secret(s))",
                f.display(),
                s.count()
            ));
            for peer in self.peers.values_mut() {
                peer.set_secrets(s.clone());
            }
            self.cfg.peer_secrets = s;
        }
        if let (Some(t), Some(f)) = (token, &self.cfg.client_token_file) {
            done.push(format!(
                "client token file {} ({} token(s))",
                f.display(),
                t.count()
            ));
            self.cfg.client_token = Some(t);
            let revoked = self.close_revoked_clients();
            if revoked > 0 {
                done.push(format!(
                    "{revoked} client connection(s) closed: their token was removed"
                ));
            }
        }
        if done.is_empty() {
            log::info!("SIGHUP: nothing to reload (started without secret files)");
        } else {
            log::info!("SIGHUP: reloaded {}", done.join("; "));
        }
    }

    /// Both files read and checked, before anything changes.
    fn read_credential_files(&self) -> Result<(Option<PeerSecrets>, Option<ClientToken>), String> {
        let secrets = self
            .cfg
            .peer_secret_file
            .as_deref()
            .map(PeerSecrets::load)
            .transpose()?;
        let token = self
            .cfg
            .client_token_file
            .as_deref()
            .map(ClientToken::load)
            .transpose()?;
        Ok((secrets, token))
    }

    /// Closes every client connection whose token the (new) client token no longer accepts;
    /// returns how many.
    fn close_revoked_clients(&mut self) -> usize {
        let Some(accepted) = &self.cfg.client_token else {
            return 0;
        };
        let revoked: Vec<Token> = self
            .endpoints
            .iter()
            .filter_map(|(&t, ep)| match ep {
                Endpoint::Client(c) => c
                    .token_tag
                    .filter(|tag| !accepted.accepts_tag(tag))
                    .map(|_| t),
                Endpoint::PeerIn(_) => None,
            })
            .collect();
        for &t in &revoked {
            self.close(t, "its client token was removed (SIGHUP reload)");
        }
        self.metrics.client_tokens_revoked += revoked.len() as u64;
        revoked.len()
    }
}
