//! Client authentication (`--client-token-file`, docs/security.md "Client tokens"): each
//! client connection, native or RESP, starts unauthenticated when the node has a token, and
//! is served once it presented one (`kvpb::Auth`, RESP `AUTH` / `HELLO 2 AUTH`).
//!
//! Before that, a native connection gets only Status (health checks and `raftkv status` need no
//! secret, like the HTTP pages: ids, terms and indexes, never keys or values); every other
//! request is answered UNAUTHENTICATED and not run, so it is never proposed, read or forwarded.
//! A wrong token is answered UNAUTHENTICATED and the connection keeps its state (as Redis
//! does). It is not closed: guessing a token of at least 16 characters (a generated one has 256
//! random bits) is hopeless at any rate a connection allows, and closing would only cost a
//! reconnect. Refusals are counted (`raftkv_client_auth_failures_total`,
//! `raftkv_client_unauthenticated_requests_total`) and logged at most once a second, never
//! with the token.

use super::{Endpoint, Server};
use crate::kv::{error_result, ApplyResult};
use crate::net::client_auth::ClientToken;
use crate::pb::kvpb::{self, ErrorCode};
use mio::Token;
use std::time::Instant;

/// The answer to a request on a connection that has not authenticated.
pub(super) const UNAUTHENTICATED: &str = "this node requires client authentication: send Auth \
     with the cluster's client token first (raftkv --token-file FILE)";

impl Server {
    /// Whether connection `token` may be served (authenticated, or no token is required).
    pub(super) fn authenticated(&self, token: Token) -> bool {
        let required = self.cfg.client_token.is_some();
        matches!(self.endpoints.get(&token), Some(Endpoint::Client(c)) if c.authenticated(required))
    }

    /// Checks `presented` for connection `token` (`proto` names the protocol in the log line).
    /// A node without a token accepts anything (`Ok(false)`: not required). A right token
    /// authenticates the connection (`Ok(true)`); a wrong one is counted and logged (`Err`),
    /// and leaves the connection as it was.
    pub(super) fn check_token(
        &mut self,
        token: Token,
        presented: &[u8],
        proto: &str,
    ) -> Result<bool, ()> {
        let Some(expected) = &self.cfg.client_token else {
            return Ok(false);
        };
        if expected.verify(presented) {
            if let Some(Endpoint::Client(c)) = self.endpoints.get_mut(&token) {
                c.token_tag = Some(ClientToken::tag_of(presented));
            }
            self.metrics.client_auth_ok += 1;
            return Ok(true);
        }
        self.client_token_refused(token, proto);
        Err(())
    }

    /// A wrong token (or RESP user): counted and logged; the connection keeps its state.
    pub(super) fn client_token_refused(&mut self, token: Token, proto: &str) {
        self.metrics.client_auth_failures += 1;
        self.client_auth_log(token, proto, "presented a wrong client token");
    }

    /// A native Auth request.
    pub(super) fn on_auth(&mut self, token: Token, id: u64, a: &kvpb::Auth) {
        let r = match self.check_token(token, &a.token, "native") {
            Ok(required) => ApplyResult::Auth(kvpb::AuthResponse { required }),
            Err(()) => error_result(ErrorCode::Unauthenticated, "wrong client token".into()),
        };
        self.send_response(token, id, r);
    }

    /// A request refused because its connection has not authenticated: counted, logged.
    pub(super) fn refuse_unauthenticated(&mut self, token: Token, proto: &str) {
        self.metrics.client_unauthenticated += 1;
        self.client_auth_log(token, proto, "sent a request without authenticating");
    }

    /// One warning per second at most, with the number suppressed since the last one.
    fn client_auth_log(&mut self, token: Token, proto: &str, what: &str) {
        let Some(suppressed) = self.client_auth_log.allow(Instant::now()) else {
            return;
        };
        let who = match self.endpoints.get(&token) {
            Some(Endpoint::Client(c)) => c
                .conn
                .stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string()),
            _ => "?".to_string(),
        };
        let more = if suppressed > 0 {
            format!(" ({suppressed} more client refusals since the last such line)")
        } else {
            String::new()
        };
        log::warn!("{proto} client {who} {what}; refused{more}");
    }
}
