//! The links to the other members: dialling them (with a connect timeout and back-off),
//! their handshakes (`net::handshake`; outcomes in `identity.rs`), taking Raft messages off
//! inbound peer connections into the core (only after the handshake, and only if the sender
//! is the authenticated one, the receiver is us and the message is within bounds), and
//! queueing and flushing outbound ones.

use super::identity::accepts_peer;
use super::timers::TimerEvent;
use super::{Endpoint, PeerAuth, Server};
use crate::net::framing;
use crate::net::handshake::AcceptStep;
use crate::net::peer::{Peer, PeerEvent, PeerState};
use crate::node::membership;
use crate::raft::{ConfState, Message};
use mio::{event::Event, Token};
use std::time::{Duration, Instant};

/// How long a peer connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Server {
    pub(super) fn on_peer_event(&mut self, id: u64, ev: &Event) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let delay = match peer.on_event(self.poll.registry(), ev) {
            PeerEvent::Nothing => return,
            PeerEvent::Connected(agreed) => {
                if self.on_agreed(agreed, &format!("node {id}")) {
                    return;
                }
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                peer.teardown(self.poll.registry())
            }
            PeerEvent::Failed(delay) => delay,
            PeerEvent::AuthFailed(e, delay) => {
                let who = format!("node {id} at {}", peer.addr);
                self.auth_failed(&who, &e);
                delay
            }
        };
        self.peer_by_token.remove(&ev.token());
        self.unreachable.insert(id);
        self.timers
            .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
    }

    pub(super) fn connect_peer(&mut self, id: u64) {
        let token = self.tokens.next_token();
        let dialer = self.dialer_for(id);
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.state() != PeerState::Idle {
            return; // a stale reconnect timer: the link is already up or coming up
        }
        let Some(dialer) = dialer else {
            // No randomness for a nonce (logged): try again later.
            self.timers
                .insert(Instant::now() + CONNECT_TIMEOUT, TimerEvent::Reconnect(id));
            return;
        };
        let tls = self.cfg.tls.peer.as_ref().map(|t| &t.client);
        match peer.connect(self.poll.registry(), token, dialer, tls) {
            Ok(()) => {
                if peer.token() == Some(token) {
                    self.peer_by_token.insert(token, id);
                    // A SYN to a dead host can hang for minutes, a peer can stall its
                    // handshake: bound both.
                    let bound = CONNECT_TIMEOUT + self.cfg.peer_handshake_timeout;
                    self.timers.insert(
                        Instant::now() + bound,
                        TimerEvent::ConnectTimeout(id, token),
                    );
                }
            }
            Err(delay) => {
                self.timers
                    .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
            }
        }
    }

    /// A frame on an inbound peer connection: a handshake frame until the handshake is done,
    /// then a Raft message from the authenticated node.
    pub(super) fn on_peer_frame(&mut self, token: Token, frame: bytes::Bytes) {
        let Some(Endpoint::PeerIn(p)) = self.endpoints.get_mut(&token) else {
            return;
        };
        let acceptor = match &mut p.auth {
            PeerAuth::From(id) => {
                let id = *id;
                return self.on_raft_frame(token, id, frame);
            }
            PeerAuth::Handshake(a) => a,
        };
        let (peers, removed) = (&self.peers, &self.removed_addrs);
        let step = acceptor.on_frame(&frame, &self.cfg.peer_secrets, |id| {
            accepts_peer(peers, removed, id)
        });
        let who = p.addr.to_string();
        match step {
            Ok(AcceptStep::Reply(challenge)) => {
                p.conn.queue(framing::frame_bytes_raw(&challenge));
                if let Err(e) = p.conn.flush() {
                    self.close(token, &format!("write error: {e}"));
                }
            }
            Ok(AcceptStep::Done(agreed)) => {
                p.auth = PeerAuth::From(agreed.peer);
                // Peer frames carry whole client commands plus batching overhead.
                p.conn
                    .set_max_frame(crate::limits::peer_max_frame(self.cfg.max_frame));
                log::info!(
                    "peer connection from {who}: authenticated as node {}",
                    agreed.peer
                );
                if !self.on_agreed(agreed, &who) {
                    self.close(token, "cluster id not settled");
                }
            }
            Err(e) => {
                self.auth_failed(&who, &e);
                self.close(token, "handshake refused");
            }
        }
    }

    /// A Raft message on a connection authenticated as node `from_id`.
    fn on_raft_frame(&mut self, token: Token, from_id: u64, frame: bytes::Bytes) {
        let msg: Message = match framing::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("dropping peer connection {}: {e}", token.0);
                self.close(token, "undecodable peer frame");
                return;
            }
        };
        if msg.from != from_id {
            // One member cannot speak for another.
            self.spoofed_from(from_id, msg.from);
            return;
        }
        // A removed member's messages reach the core too: it answers them with `Removed`, so
        // a removed node that comes back learns it and exits instead of campaigning forever.
        if msg.to != self.cfg.id || !accepts_peer(&self.peers, &self.removed_addrs, msg.from) {
            log::warn!(
                "ignoring raft message from {} to {} (this is node {})",
                msg.from,
                msg.to,
                self.cfg.id
            );
            return;
        }
        if let Err(e) = crate::net::bounds::check_message(&msg) {
            // Never let an out-of-range index or term reach the core (overflow, panic).
            log::warn!("dropping raft message from node {}: {e}", msg.from);
            return;
        }
        self.on_peer_space(&msg);
        self.replica.core_mut().step(msg);
    }

    /// The configuration in force changed: a link to every new member (at the peer address
    /// of its member context), none to removed ones. Members already linked keep their link
    /// (`--peers` and `--join` give the first addresses; the configuration adds to them).
    pub(super) fn update_peer_links(&mut self, conf: &ConfState) {
        let me = self.cfg.id;
        let mut new = Vec::new();
        for id in crate::raft::members(conf)
            .into_iter()
            .filter(|&id| id != me)
        {
            if self.peers.contains_key(&id) {
                continue;
            }
            let addr = membership::context_of(conf, id).peer_addr;
            if addr.is_empty() {
                log::warn!("member {id} has no peer address in the configuration; not linked");
                continue;
            }
            log::info!("linking to new member {id} at {addr}");
            self.add_link(id, addr);
            new.push(id);
        }
        for id in new {
            self.connect_peer(id);
        }
        for id in &conf.removed {
            if let Some(mut peer) = self.peers.remove(id) {
                log::info!("member {id} was removed: closing its link");
                self.removed_addrs.insert(*id, peer.addr.clone());
                if let Some(t) = peer.token() {
                    self.peer_by_token.remove(&t);
                }
                peer.teardown(self.poll.registry());
                self.dirty_peers.remove(id);
            }
        }
    }

    pub(super) fn send_peer(&mut self, mut msg: Message) {
        self.mark_space(&mut msg);
        let to = msg.to;
        if !self.peers.contains_key(&to) {
            self.relink_removed(to);
        }
        let Some(peer) = self.peers.get_mut(&to) else {
            log::warn!("raft message for unknown node {to} dropped");
            return;
        };
        if peer.send(framing::frame_bytes(&msg)) {
            self.dirty_peers.insert(to);
        } else {
            self.unreachable.insert(to);
        }
    }

    /// The core answers a removed member (`Removed`, nothing else): link to it again at its
    /// last known address so the answer arrives. The link goes at the next configuration
    /// change; at most one per removed node meanwhile.
    fn relink_removed(&mut self, id: u64) {
        let Some(addr) = self.removed_addrs.get(&id).cloned() else {
            return;
        };
        log::info!("telling removed node {id} at {addr} that it was removed");
        self.add_link(id, addr);
        self.connect_peer(id);
    }

    /// A link to node `id` at `addr`, with this node's peer options and secrets (not yet
    /// connected).
    fn add_link(&mut self, id: u64, addr: String) {
        let peer = Peer::new(
            id,
            addr,
            self.cfg.peer.clone(),
            self.cfg.peer_secrets.clone(),
        );
        self.peers.insert(id, peer);
    }

    /// Writes every peer queue that has new messages.
    pub(super) fn flush_peers(&mut self) {
        for id in std::mem::take(&mut self.dirty_peers) {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let token = peer.token();
            if let Err(delay) = peer.flush(self.poll.registry()) {
                if let Some(t) = token {
                    self.peer_by_token.remove(&t);
                }
                self.unreachable.insert(id);
                self.timers
                    .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
            }
        }
    }
}
