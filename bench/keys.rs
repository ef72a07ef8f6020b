//! Key choice: uniform or Zipfian over `n` keys, and the key byte format.
//!
//! The Zipfian generator is the rejection-free method of Gray et al., "Quickly Generating
//! Billion-Record Synthetic Databases" (SIGMOD '94), as used by YCSB. Rank 0 is the hottest.
//! Ranks are mapped to key indices by a fixed bijection (multiplication by a constant coprime to
//! `n`), so the hot keys are spread over the key space instead of all sharing a prefix.

use raftkv::rng::Rng;

/// Width of the decimal key index: keys are `k0000000042`.
pub const KEY_DIGITS: usize = 10;
/// Length of every key in bytes.
pub const KEY_LEN: usize = KEY_DIGITS + 1;

/// Writes key number `idx` into `buf` and returns it (`k` + 10 zero-padded digits).
pub fn key_bytes(idx: u64, buf: &mut [u8; KEY_LEN]) -> &[u8] {
    buf[0] = b'k';
    let mut v = idx;
    for i in (1..KEY_LEN).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    &buf[..]
}

/// How keys are chosen.
#[derive(Debug, Clone)]
pub enum KeyDist {
    Uniform { n: u64 },
    Zipf(Zipf),
}

impl KeyDist {
    pub fn uniform(n: u64) -> KeyDist {
        KeyDist::Uniform { n: n.max(1) }
    }

    /// Next key index in `[0, n)`.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        match self {
            KeyDist::Uniform { n } => rng.range(0, *n),
            KeyDist::Zipf(z) => z.scramble(z.next_rank(rng)),
        }
    }
}

/// Zipfian distribution over ranks `[0, n)` with exponent `theta` in (0, 1).
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    /// Multiplier of the rank -> index bijection (coprime to n).
    mult: u64,
}

/// zeta(n, theta) = sum_{i=1..n} 1 / i^theta.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Zipf {
    /// `n` >= 1 keys, `theta` in (0, 1) (YCSB's default is 0.99). O(n) set-up.
    pub fn new(n: u64, theta: f64) -> Result<Zipf, String> {
        if !(theta > 0.0 && theta < 1.0) {
            return Err(format!("zipf theta must be in (0, 1), got {theta}"));
        }
        let n = n.max(1);
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2.min(n), theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = if n <= 2 {
            0.0
        } else {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        // A large odd constant, nudged until coprime with n, makes rank -> index a bijection.
        let mut mult = 0x9E37_79B9_7F4A_7C15u64 % n.max(2);
        while n > 1 && gcd(mult, n) != 1 {
            mult += 1;
        }
        Ok(Zipf {
            n,
            theta,
            alpha,
            zetan,
            eta,
            mult: mult.max(1),
        })
    }

    /// Probability of rank `r` (0-based), for tests.
    #[cfg(test)]
    pub fn probability(&self, r: u64) -> f64 {
        1.0 / ((r + 1) as f64).powf(self.theta) / self.zetan
    }

    /// Next rank; 0 is the most popular.
    pub fn next_rank(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if self.n >= 2 && uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }

    /// Maps a rank to a key index (a bijection on `[0, n)`).
    pub fn scramble(&self, rank: u64) -> u64 {
        ((rank as u128 * self.mult as u128) % self.n as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_format_is_fixed_width() {
        let mut b = [0u8; KEY_LEN];
        assert_eq!(key_bytes(42, &mut b), b"k0000000042");
        assert_eq!(key_bytes(9_999_999_999, &mut b), b"k9999999999");
    }

    #[test]
    fn uniform_is_flat() {
        let seed = 7;
        let mut rng = Rng::new(seed);
        let d = KeyDist::uniform(10);
        let mut counts = [0u64; 10];
        for _ in 0..100_000 {
            counts[d.next(&mut rng) as usize] += 1;
        }
        for (k, c) in counts.iter().enumerate() {
            assert!(
                (9_000..11_000).contains(c),
                "seed {seed}: key {k} drawn {c} times"
            );
        }
    }

    #[test]
    fn zipf_matches_its_probabilities() {
        let seed = 11;
        let n = 1000;
        let z = Zipf::new(n, 0.99).unwrap();
        let mut rng = Rng::new(seed);
        let draws = 200_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            let r = z.next_rank(&mut rng);
            assert!(r < n);
            counts[r as usize] += 1;
        }
        // Ranks 0 and 1 are drawn with their exact probabilities 1/(r+1)^theta / zeta(n); beyond
        // that the method is an approximation, so compare the mass of whole rank bands.
        for r in [0u64, 1] {
            let want = z.probability(r) * draws as f64;
            let got = counts[r as usize] as f64;
            assert!(
                (got - want).abs() <= want * 0.05,
                "seed {seed}: rank {r} drawn {got}, expected ~{want:.0}"
            );
        }
        for (lo, hi) in [(2u64, 10u64), (10, 100), (100, 1000)] {
            let want: f64 = (lo..hi).map(|r| z.probability(r)).sum::<f64>() * draws as f64;
            let got: u64 = counts[lo as usize..hi as usize].iter().sum();
            assert!(
                (got as f64 - want).abs() <= want * 0.15,
                "seed {seed}: ranks {lo}..{hi} drawn {got}, expected ~{want:.0}"
            );
        }
        // Skew: the top 1% of keys take far more than 1% of draws (about 40% for theta 0.99).
        let top: u64 = counts[..10].iter().sum();
        assert!(
            top as f64 > 0.3 * draws as f64,
            "seed {seed}: top-10 share {top}"
        );
        // Rank 0 is the single hottest.
        assert_eq!(counts.iter().max(), Some(&counts[0]));
    }

    #[test]
    fn zipf_scramble_is_a_bijection() {
        for n in [1u64, 2, 10, 97, 1000, 1024] {
            let z = Zipf::new(n, 0.5).unwrap();
            let mut seen = vec![false; n as usize];
            for r in 0..n {
                let i = z.scramble(r);
                assert!(!seen[i as usize], "n {n}: index {i} hit twice");
                seen[i as usize] = true;
            }
        }
    }

    #[test]
    fn zipf_rejects_bad_theta_and_handles_tiny_n() {
        assert!(Zipf::new(10, 1.0).is_err());
        assert!(Zipf::new(10, 0.0).is_err());
        let mut rng = Rng::new(1);
        let z = Zipf::new(1, 0.99).unwrap();
        for _ in 0..100 {
            assert_eq!(KeyDist::Zipf(z.clone()).next(&mut rng), 0);
        }
    }
}
