//! Time in the server loop: Raft ticks driven from elapsed real time (caught up after a
//! stall, before anything is read), and the timer wheel's events (peer reconnects and
//! connect timeouts, lingering client closes, the periodic commit-hint write). Request
//! deadlines are not timers: the replica keeps them in arrival order (`node/requests.rs`).

use super::Server;
use crate::net::peer::PeerState;
use crate::raft::HardState;
use mio::Token;
use std::time::{Duration, Instant};

/// What a timer carries. (The Raft tick is not a timer: it is driven from elapsed real time
/// at the top of every loop iteration, see [`Server::catch_up_ticks`].)
#[derive(Debug)]
pub(super) enum TimerEvent {
    Reconnect(u64),
    PersistCommit,
    /// Measure the data directory, retry allocations, decide the NO_SPACE alarm (`space.rs`).
    SpaceCheck,
    /// Close a lingering (closing) client connection.
    ForceClose(Token),
    /// Give up on a peer connect attempt that has not completed.
    ConnectTimeout(u64, Token),
    /// An inbound peer connection's handshake deadline; also a TLS client connection's TLS
    /// handshake deadline.
    PeerHandshake(Token),
    /// An HTTP connection's idle / partial-request / linger deadline (see `http.rs`).
    HttpDeadline(Token),
}

/// The Raft ticks owed at `now` when the next one was due at `next_tick`: `(n, new_next)`
/// where `n` is how many to apply (at most `cap`) and `new_next` the next due time, keeping
/// the tick phase (ticks skipped beyond the cap are dropped, not deferred).
fn tick_catch_up(next_tick: Instant, now: Instant, tick: Duration, cap: u64) -> (u64, Instant) {
    if now < next_tick {
        return (0, next_tick);
    }
    let tick_ns = tick.as_nanos().max(1);
    let owed = 1 + (now - next_tick).as_nanos() / tick_ns;
    let skip = u32::try_from(owed).unwrap_or(u32::MAX);
    let new_next = next_tick
        .checked_add(tick.saturating_mul(skip))
        .filter(|&t| t > now)
        .unwrap_or(now + tick);
    (owed.min(u128::from(cap)) as u64, new_next)
}

impl Server {
    /// Applies every Raft tick owed by real time since the last one to the core's clock (at
    /// most `2 * election_ticks + 1` after a long stall: that many already expire every lease),
    /// and one to its election and heartbeat timers (`Replica::tick`). Called right after
    /// poll, before sockets are read: a LEASE read that waited in a socket during the stall
    /// is judged by the clock that saw the stall.
    pub(super) fn catch_up_ticks(&mut self) -> Result<(), String> {
        let cap = 2 * u64::from(self.cfg.election_ticks) + 1;
        let (n, next) = tick_catch_up(self.next_tick, Instant::now(), self.cfg.tick, cap);
        if n == 0 {
            return Ok(());
        }
        if n > 1 {
            log::debug!("node {}: catching up {n} overdue ticks", self.cfg.id);
        }
        self.replica.tick(n);
        self.next_tick = next;
        self.reload_if_asked();
        self.snapshot_tick()
    }

    /// True while a Raft tick is due but not yet applied: the lease clock lags real time, so
    /// a lease read must not be answered from it.
    pub(super) fn tick_overdue(&self) -> bool {
        Instant::now() >= self.next_tick
    }

    pub(super) fn on_timer(&mut self, ev: TimerEvent) -> Result<(), String> {
        match ev {
            TimerEvent::Reconnect(id) => self.connect_peer(id),
            TimerEvent::ForceClose(token) => self.close(token, "linger timeout"),
            TimerEvent::HttpDeadline(token) => self.on_http_deadline(token),
            TimerEvent::PeerHandshake(token) => self.on_handshake_deadline(token),
            TimerEvent::ConnectTimeout(id, token) => {
                if let Some(peer) = self.peers.get_mut(&id) {
                    let pending =
                        matches!(peer.state(), PeerState::Connecting | PeerState::Handshaking);
                    if peer.token() == Some(token) && pending {
                        log::debug!("peer {id}: connect or handshake timed out");
                        let delay = peer.teardown(self.poll.registry());
                        self.peer_by_token.remove(&token);
                        self.unreachable.insert(id);
                        self.timers
                            .insert(Instant::now() + delay, TimerEvent::Reconnect(id));
                    }
                }
            }
            TimerEvent::SpaceCheck => self.space_check()?,
            TimerEvent::PersistCommit => {
                self.persist_commit_hint()?;
                self.timers.insert(
                    Instant::now() + self.cfg.commit_persist_interval,
                    TimerEvent::PersistCommit,
                );
            }
        }
        Ok(())
    }

    /// Writes the commit index to the hard state file if it advanced (a restart hint: it lets
    /// a restarting node replay committed entries into the KV store before it hears from a
    /// leader). Only commit indexes whose entries are already synced are written.
    pub(super) fn persist_commit_hint(&mut self) -> Result<(), String> {
        if self.commit_hint > self.saved_hs.commit {
            let hs = HardState {
                commit: self.commit_hint,
                ..self.saved_hs
            };
            self.hs_file
                .save(&hs)
                .map_err(|e| format!("saving hard state: {e}"))?;
            self.saved_hs = hs;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_caught_up_by_elapsed_time_with_a_cap() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(50);
        let ms = Duration::from_millis;
        // Not due yet.
        assert_eq!(tick_catch_up(t0, t0 - ms(1), tick, 21), (0, t0));
        // Due exactly, or a little late: one tick, phase kept.
        assert_eq!(tick_catch_up(t0, t0, tick, 21), (1, t0 + tick));
        assert_eq!(tick_catch_up(t0, t0 + ms(49), tick, 21), (1, t0 + tick));
        // A 1 s stall owes 21 ticks (the one due at t0 and 20 more).
        assert_eq!(
            tick_catch_up(t0, t0 + ms(1000), tick, 100),
            (21, t0 + ms(1050))
        );
        // A long stall is capped; the skipped ticks are dropped, not deferred.
        let (n, next) = tick_catch_up(t0, t0 + ms(60_000), tick, 21);
        assert_eq!(n, 21);
        assert_eq!(next, t0 + ms(60_050));
    }
}
