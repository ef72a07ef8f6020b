//! Workloads: which operation to send next, on which key.

use crate::keys::KeyDist;
use raftkv::rng::Rng;
use std::collections::HashMap;

/// Operation types the drivers understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Put,
    Get,
    Scan,
    Cas,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Scan => "scan",
            OpKind::Cas => "cas",
        }
    }
}

/// One operation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    /// Key index (see `keys::key_bytes`).
    pub key: u64,
    /// Scan: the prefix is the first `prefix_len` bytes of the key; `limit` pairs at most.
    pub prefix_len: usize,
    pub limit: u32,
    /// Cas: the version the key is believed to have (0 = absent).
    pub expected_version: u64,
}

impl Op {
    pub fn simple(kind: OpKind, key: u64) -> Op {
        Op {
            kind,
            key,
            prefix_len: 0,
            limit: 0,
            expected_version: 0,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Put,
    Get,
    /// Gets with probability `read_ratio`, puts otherwise.
    Mixed {
        read_ratio: f64,
    },
    Scan {
        prefix_len: usize,
        limit: u32,
    },
    /// Compare-and-swap against the last version seen for the key.
    Cas,
    /// Puts keys 0..n once each, in order (fills the store before a read workload).
    Preload {
        n: u64,
    },
}

impl Workload {
    pub fn name(&self) -> String {
        match self {
            Workload::Put => "put".into(),
            Workload::Get => "get".into(),
            Workload::Mixed { read_ratio } => format!("mixed(read={read_ratio})"),
            Workload::Scan { prefix_len, limit } => {
                format!("scan(prefix={prefix_len},limit={limit})")
            }
            Workload::Cas => "cas".into(),
            Workload::Preload { n } => format!("preload({n})"),
        }
    }

    /// Operation kinds this workload sends (drivers reject what they cannot do up front).
    pub fn kinds(&self) -> Vec<OpKind> {
        match self {
            Workload::Put | Workload::Preload { .. } => vec![OpKind::Put],
            Workload::Get => vec![OpKind::Get],
            Workload::Mixed { .. } => vec![OpKind::Get, OpKind::Put],
            Workload::Scan { .. } => vec![OpKind::Scan],
            Workload::Cas => vec![OpKind::Cas],
        }
    }

    /// Whether the keys should exist before the run.
    pub fn wants_preload(&self) -> bool {
        matches!(
            self,
            Workload::Get | Workload::Mixed { .. } | Workload::Scan { .. } | Workload::Cas
        )
    }
}

/// Generates the operation stream of a workload. Deterministic for a given seed.
pub struct OpGen {
    workload: Workload,
    dist: KeyDist,
    rng: Rng,
    next_preload: u64,
    /// Cas: last version seen per key (absent = unknown, try 0).
    versions: HashMap<u64, u64>,
}

impl OpGen {
    pub fn new(workload: Workload, dist: KeyDist, seed: u64) -> OpGen {
        OpGen {
            workload,
            dist,
            rng: Rng::new(seed),
            next_preload: 0,
            versions: HashMap::new(),
        }
    }

    /// The next operation, or `None` when the workload is finite and done.
    pub fn next_op(&mut self) -> Option<Op> {
        Some(match &self.workload {
            Workload::Preload { n } => {
                if self.next_preload >= *n {
                    return None;
                }
                self.next_preload += 1;
                Op::simple(OpKind::Put, self.next_preload - 1)
            }
            Workload::Put => Op::simple(OpKind::Put, self.dist.next(&mut self.rng)),
            Workload::Get => Op::simple(OpKind::Get, self.dist.next(&mut self.rng)),
            Workload::Mixed { read_ratio } => {
                let kind = if self.rng.chance(*read_ratio) {
                    OpKind::Get
                } else {
                    OpKind::Put
                };
                Op::simple(kind, self.dist.next(&mut self.rng))
            }
            Workload::Scan { prefix_len, limit } => Op {
                prefix_len: *prefix_len,
                limit: *limit,
                ..Op::simple(OpKind::Scan, self.dist.next(&mut self.rng))
            },
            Workload::Cas => {
                let key = self.dist.next(&mut self.rng);
                Op {
                    expected_version: self.versions.get(&key).copied().unwrap_or(0),
                    ..Op::simple(OpKind::Cas, key)
                }
            }
        })
    }

    /// Feeds back the version a reply reported for `op`'s key (Cas tracks it).
    pub fn observe_version(&mut self, op: &Op, version: Option<u64>) {
        if let (Workload::Cas, Some(v)) = (&self.workload, version) {
            self.versions.insert(op.key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_is_finite_and_ordered() {
        let mut g = OpGen::new(Workload::Preload { n: 3 }, KeyDist::uniform(3), 1);
        let keys: Vec<u64> = std::iter::from_fn(|| g.next_op()).map(|o| o.key).collect();
        assert_eq!(keys, vec![0, 1, 2]);
    }

    #[test]
    fn mixed_respects_read_ratio() {
        let mut g = OpGen::new(
            Workload::Mixed { read_ratio: 0.9 },
            KeyDist::uniform(100),
            3,
        );
        let gets = (0..10_000)
            .filter(|_| g.next_op().unwrap().kind == OpKind::Get)
            .count();
        assert!(
            (8_800..9_200).contains(&gets),
            "seed 3: {gets} gets of 10000"
        );
    }

    #[test]
    fn cas_uses_the_last_seen_version() {
        let mut g = OpGen::new(Workload::Cas, KeyDist::uniform(1), 5);
        let op = g.next_op().unwrap();
        assert_eq!((op.kind, op.key, op.expected_version), (OpKind::Cas, 0, 0));
        g.observe_version(&op, Some(17));
        assert_eq!(g.next_op().unwrap().expected_version, 17);
    }
}
