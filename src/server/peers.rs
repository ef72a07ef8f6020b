//! The links to the other members: dialling them (with a connect timeout and back-off),
//! taking Raft messages off inbound peer connections into the core (after the sender, the
//! receiver and the message's bounds are checked), and queueing and flushing outbound ones.

use super::timers::TimerEvent;
use super::Server;
use crate::net::framing;
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
        match peer.on_event(self.poll.registry(), ev) {
            PeerEvent::Nothing | PeerEvent::Connected => {}
            PeerEvent::Failed(delay) => {
                self.peer_by_token.remove(&ev.token());
                self.unreachable.insert(id);
                self.timers
                    .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
            }
        }
    }

    pub(super) fn connect_peer(&mut self, id: u64) {
        let token = self.tokens.next_token();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.state() != PeerState::Idle {
            return; // a stale reconnect timer: the link is already up or coming up
        }
        match peer.connect(self.poll.registry(), token) {
            Ok(()) => {
                if peer.token() == Some(token) {
                    self.peer_by_token.insert(token, id);
                    // A SYN to a dead host can hang for minutes: bound the attempt.
                    self.timers.insert(
                        Instant::now() + CONNECT_TIMEOUT,
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

    pub(super) fn on_peer_frame(&mut self, token: Token, frame: bytes::Bytes) {
        let msg: Message = match framing::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("dropping peer connection {}: {e}", token.0);
                self.close(token, "undecodable peer frame");
                return;
            }
        };
        // A removed member's messages reach the core too: it answers them with `Removed`, so
        // a removed node that comes back learns it and exits instead of campaigning forever.
        let known =
            self.peers.contains_key(&msg.from) || self.removed_addrs.contains_key(&msg.from);
        if msg.to != self.cfg.id || !known {
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
        let members = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners)
            .copied()
            .filter(|&id| id != me);
        let mut new = Vec::new();
        for id in members {
            if self.peers.contains_key(&id) {
                continue;
            }
            let addr = membership::context_of(conf, id).peer_addr;
            if addr.is_empty() {
                log::warn!("member {id} has no peer address in the configuration; not linked");
                continue;
            }
            log::info!("linking to new member {id} at {addr}");
            self.peers
                .insert(id, Peer::new(id, addr, self.cfg.peer.clone()));
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
        self.peers
            .insert(id, Peer::new(id, addr, self.cfg.peer.clone()));
        self.connect_peer(id);
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
