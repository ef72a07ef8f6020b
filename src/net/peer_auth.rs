//! The cluster's shared peer secret(s) and the HMAC-SHA256 proofs made with them.
//!
//! Why a shared secret and HMAC rather than mutual TLS: a node only has to prove "I hold the
//! cluster's credential and I am node N of cluster C" to another node; a 32-byte secret in a
//! 0600 file does that with one small, constant-time, well-reviewed primitive (RustCrypto
//! `hmac` + `sha2`, pure Rust, no C, no certificate authority to run, nothing to expire).
//! It does not encrypt or integrity-protect the frames after the handshake (see
//! docs/security.md: an attacker who can rewrite TCP streams between nodes needs TLS).
//!
//! Secret file: text, one secret per line as hex (at least 32 hex digits = 128 bits; `#`
//! starts a comment line). The FIRST secret is the one this node proves with; every listed
//! secret is accepted from others, so a secret is rotated without downtime: add the new one as a
//! second line everywhere (rolling restart), move it first everywhere, then drop the old one.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::Path;

/// Length of a proof (HMAC-SHA256 output).
pub const MAC_LEN: usize = 32;
/// Shortest secret accepted, in bytes (128 bits).
pub const MIN_SECRET_BYTES: usize = 16;
/// Length of a generated secret, in bytes (256 bits).
pub const GENERATED_SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The keys a node proves with (the first) and accepts (all). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerSecrets {
    keys: Vec<Vec<u8>>,
    insecure: bool,
}

impl fmt::Debug for PeerSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.insecure {
            write!(f, "PeerSecrets(insecure)")
        } else {
            write!(f, "PeerSecrets({} key(s), redacted)", self.keys.len())
        }
    }
}

impl PeerSecrets {
    /// `--insecure-peers`: the handshake still runs (cluster id, sender and receiver ids are
    /// checked) but its proofs are made with an empty, public key: anyone can make them.
    pub fn insecure() -> PeerSecrets {
        PeerSecrets {
            keys: vec![Vec::new()],
            insecure: true,
        }
    }

    /// How many secrets the file held (all accepted, the first proves).
    pub fn count(&self) -> usize {
        self.keys.len()
    }

    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Secrets from their hex lines (see the module docs). `what` names the source in errors.
    pub fn parse(text: &str, what: &str) -> Result<PeerSecrets, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = crate::entropy::unhex(line)
                .ok_or_else(|| format!("{what} line {}: not a hex secret", n + 1))?;
            if key.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "{what} line {}: secret is {} bytes, at least {MIN_SECRET_BYTES} needed",
                    n + 1,
                    key.len()
                ));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(format!("{what}: no secret in the file"));
        }
        Ok(PeerSecrets {
            keys,
            insecure: false,
        })
    }

    /// Reads a secret file; refused if every user may read it (`entropy::read_key_file`).
    pub fn load(path: &Path) -> Result<PeerSecrets, String> {
        let what = format!("peer secret file {}", path.display());
        let text = crate::entropy::read_key_file(path).map_err(|e| format!("{what}: {e}"))?;
        PeerSecrets::parse(&text, &what)
    }

    /// Writes a new random secret to `path` (mode 0600, created exclusively) and returns the
    /// secrets it holds: for `raftkv cluster`'s first start.
    pub fn generate(path: &Path) -> Result<PeerSecrets, String> {
        let what = format!("peer secret file {}", path.display());
        let text = crate::entropy::write_new_key_file::<GENERATED_SECRET_BYTES>(
            path,
            &what,
            "raftkv peer secret: keep it private; see docs/security.md",
        )?;
        PeerSecrets::parse(&text, &what)
    }

    /// The proof of `transcript` with the primary key.
    pub fn prove(&self, transcript: &[u8]) -> [u8; MAC_LEN] {
        mac(&self.keys[0], transcript)
            .finalize()
            .into_bytes()
            .into()
    }

    /// True if `proof` was made over `transcript` with any of the keys (constant-time compare).
    pub fn verify(&self, transcript: &[u8], proof: &[u8]) -> bool {
        self.keys
            .iter()
            .any(|k| mac(k, transcript).verify_slice(proof).is_ok())
    }
}

fn mac(key: &[u8], transcript: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed): `new_from_slice` cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(transcript);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "00112233445566778899aabbccddeeff";
    const K2: &str = "ffeeddccbbaa99887766554433221100";

    #[test]
    fn proves_with_the_first_and_accepts_every_key() {
        let old = PeerSecrets::parse(K1, "t").unwrap();
        let both = PeerSecrets::parse(&format!("# rotating\n{K2}\n\n{K1}\n"), "t").unwrap();
        let new = PeerSecrets::parse(K2, "t").unwrap();
        let t = b"transcript";
        assert!(both.verify(t, &old.prove(t)));
        assert!(both.verify(t, &new.prove(t)));
        assert!(new.verify(t, &both.prove(t)));
        assert!(!old.verify(t, &new.prove(t)));
        assert!(!old.verify(b"other", &old.prove(t)));
        assert!(!old.verify(t, &old.prove(t)[..31]));
        let insecure = PeerSecrets::insecure();
        assert!(!old.verify(t, &insecure.prove(t)));
        assert!(!format!("{both:?}").contains("0011"), "secret printed");
    }

    #[test]
    fn rejects_short_non_hex_and_empty_files() {
        for (text, want) in [
            ("0011", "at least 16"),
            ("xyz", "not a hex"),
            ("# only a comment\n", "no secret"),
        ] {
            let e = PeerSecrets::parse(text, "f").unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn generated_files_are_private_and_load_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        let g = PeerSecrets::generate(&p).unwrap();
        assert_eq!(PeerSecrets::load(&p).unwrap(), g);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(PeerSecrets::generate(&p).is_err(), "overwrote a secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PeerSecrets::load(&p).unwrap_err();
        assert!(e.contains("every user") && e.contains("644"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(PeerSecrets::load(&p).is_ok(), "group access only warns");
    }
}
