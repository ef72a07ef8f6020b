//! Hash maps keyed by ids this process hands out itself: mio tokens, request contexts, log
//! indexes, forward ids. std's default hasher (SipHash-1-3 with a random key) exists to stop
//! hash flooding by keys an attacker picks; these keys never come from a client or a peer, so
//! a multiply-rotate hash (rustc's FxHash) is enough. It is also much cheaper: SipHash on the
//! server's token and request maps was 30-36 % of a single node's instructions per GET and SET
//! (callgrind, docs/bench.md "RESP path profiled"). A side effect the simulator likes: the
//! iteration order of these maps no longer changes from run to run.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by process-assigned ids (see the module comment before using it elsewhere).
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// A set of process-assigned ids.
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// FxHash: each word is mixed in with a rotate, an xor and a multiplication by an odd
/// constant; the product's high bits (hashbrown's tag) depend on every bit of the key.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Integers take the methods below; anything else is mixed in 8 bytes at a time.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash>(t: T) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(t)
    }

    #[test]
    fn sequential_ids_spread_over_the_tag_bits() {
        // hashbrown takes its 7-bit tag from the top of the hash: sequential ids (what tokens
        // and contexts are) must not share it, or every probe compares keys.
        let tags: HashSet<u64> = (0..1000u64).map(|i| hash(i) >> 57).collect();
        assert!(tags.len() >= 100, "only {} of 128 tags used", tags.len());
        assert_ne!(hash(1u64), hash(2u64));
        assert_eq!(hash(mio::Token(7)), hash(7usize));
    }

    #[test]
    fn maps_work_as_maps() {
        let mut m: IdMap<u64, u64> = IdMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m.get(&i) == Some(&(i * 2))));
        assert_eq!(m.remove(&5), Some(10));
        assert_eq!(m.len(), 9_999);
    }
}
