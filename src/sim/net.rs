//! The simulated network between nodes: per-message drop, delay (which also reorders),
//! duplication, and partitions of arbitrary node subsets, symmetric or one-way.
//!
//! The network only decides *when* (and whether) a message arrives; the cluster's event queue
//! holds messages in flight. A cut link drops messages both when they are sent and when they
//! would arrive (a connection broken while the message was in flight).

use crate::rng::Rng;
use std::collections::BTreeSet;

/// Fault rates for the network. Times are in simulated milliseconds.
#[derive(Debug, Clone)]
pub struct NetParams {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub dup: f64,
    /// Delivery delay is uniform in [min_delay, max_delay).
    pub min_delay: u64,
    pub max_delay: u64,
}

impl NetParams {
    /// A perfectly healthy network (used for the final quiet period).
    pub fn calm() -> NetParams {
        NetParams {
            drop: 0.0,
            dup: 0.0,
            min_delay: 1,
            max_delay: 4,
        }
    }
}

/// The network state: fault rates plus the set of cut directed links.
#[derive(Debug, Clone)]
pub struct Net {
    pub params: NetParams,
    /// Directed links (from, to) that currently lose every message.
    cut: BTreeSet<(u64, u64)>,
}

impl Net {
    pub fn new(params: NetParams) -> Net {
        Net {
            params,
            cut: BTreeSet::new(),
        }
    }

    /// True if `from` can currently reach `to`.
    pub fn connected(&self, from: u64, to: u64) -> bool {
        from == to || !self.cut.contains(&(from, to))
    }

    /// Cuts every link between `side` and the rest of `all`. `one_way`: only messages from
    /// `side` to the others are lost (the others still reach `side`).
    pub fn partition(&mut self, all: &[u64], side: &[u64], one_way: bool) {
        for &a in side {
            for &b in all {
                if side.contains(&b) {
                    continue;
                }
                self.cut.insert((a, b));
                if !one_way {
                    self.cut.insert((b, a));
                }
            }
        }
    }

    /// Cuts one directed link.
    pub fn cut_link(&mut self, from: u64, to: u64) {
        if from != to {
            self.cut.insert((from, to));
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// True when no link is cut.
    pub fn is_healed(&self) -> bool {
        self.cut.is_empty()
    }

    /// The cut links, for the trace.
    pub fn cut_links(&self) -> Vec<(u64, u64)> {
        self.cut.iter().copied().collect()
    }

    /// Decides the fate of one message sent now: the delays (from now) of each copy that will
    /// arrive, empty if it is lost.
    pub fn send(&self, from: u64, to: u64, rng: &mut Rng) -> Vec<u64> {
        if !self.connected(from, to) || rng.chance(self.params.drop) {
            return Vec::new();
        }
        let p = &self.params;
        let mut out = vec![rng.range(p.min_delay, p.max_delay.max(p.min_delay + 1))];
        if rng.chance(p.dup) {
            out.push(rng.range(p.min_delay, p.max_delay.max(p.min_delay + 1) * 2));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cut_both_or_one_direction_and_heal() {
        let all = [1, 2, 3, 4, 5];
        let mut net = Net::new(NetParams::calm());
        net.partition(&all, &[1, 2], false);
        assert!(net.connected(1, 2) && net.connected(3, 5));
        assert!(!net.connected(1, 3) && !net.connected(4, 2));
        net.heal();
        assert!(net.is_healed() && net.connected(1, 3));
        net.partition(&all, &[4], true);
        assert!(!net.connected(4, 1) && net.connected(1, 4));
        net.cut_link(1, 4);
        assert!(!net.connected(1, 4) && net.connected(2, 4));
    }

    #[test]
    fn drops_duplicates_and_delays_follow_params() {
        let mut net = Net::new(NetParams {
            drop: 0.3,
            dup: 0.2,
            min_delay: 5,
            max_delay: 10,
        });
        let mut rng = Rng::new(9);
        let (mut lost, mut dup, mut total) = (0, 0, 0);
        for _ in 0..10_000 {
            let d = net.send(1, 2, &mut rng);
            total += 1;
            match d.len() {
                0 => lost += 1,
                2 => dup += 1,
                _ => {}
            }
            assert!(d.iter().all(|&x| (5..20).contains(&x)), "{d:?}");
            assert!(d.first().is_none_or(|&x| x < 10));
        }
        assert!((2500..3500).contains(&lost), "lost {lost} of {total}");
        assert!((1100..1700).contains(&dup), "dup {dup} of {total}");
        net.partition(&[1, 2], &[1], false);
        assert!(net.send(1, 2, &mut rng).is_empty());
    }
}
