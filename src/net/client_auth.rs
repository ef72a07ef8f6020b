//! The client token (`serve --client-token-file`, `raftkv --token-file`): a shared secret a
//! client presents once per connection (`kvpb::Auth`, RESP `AUTH`) before the node serves it.
//!
//! Why a bearer token rather than per-client credentials: issue #13 asks that only authorised
//! clients can read and write; one cluster-wide secret in a 0600 file does that with nothing
//! to run or expire, the same way the peer secret does for members (`peer_auth.rs`). It does
//! not hide the token on the wire: without TLS on the client port it travels in clear (see
//! docs/security.md).
//!
//! File: text, one token per line (`#` starts a comment line); a token is 16 to 1024 printable
//! ASCII characters without spaces (so it passes unchanged through RESP `AUTH`, an HTTP header
//! and a shell). The FIRST token is the one this process presents (a client, and a follower
//! forwarding to the leader); every listed token is accepted, so a token is rotated without
//! downtime like the peer secret: add the new one as a second line on every node (rolling
//! restart), give clients the new one, then drop the old line (rolling restart).
//!
//! Comparison is constant-time: each accepted token is kept as the tag HMAC-SHA256(key =
//! token, LABEL), and a presented token's tag is checked against it with `Mac::verify_slice`
//! (RustCrypto, constant-time through `subtle`). The time taken depends on the presented
//! token's length only, never on how much of it matches.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::Path;

/// Shortest token accepted, in characters (a generated one has 64).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted, in bytes (a presented one longer than this is simply wrong).
pub const MAX_TOKEN_LEN: usize = 1024;
/// Random bytes in a generated token (written as 64 hex digits: 256 bits).
pub const GENERATED_TOKEN_BYTES: usize = 32;

/// What the tags are computed over (fixed: only the key, the token, varies).
const LABEL: &[u8] = b"raftkv client token v1";

type HmacSha256 = Hmac<Sha256>;

/// The tokens a process presents (the first) and accepts (all). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientToken {
    primary: bytes::Bytes,
    tags: Vec<[u8; 32]>,
}

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientToken({} token(s), redacted)", self.tags.len())
    }
}

fn tag_mac(token: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed): `new_from_slice` cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(token).expect("HMAC accepts any key length");
    m.update(LABEL);
    m
}

impl ClientToken {
    /// Tokens from the file's text (see the module docs). `what` names the source in errors
    /// (which never quote a token).
    pub fn parse(text: &str, what: &str) -> Result<ClientToken, String> {
        let mut tokens: Vec<&str> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !line.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{what} line {}: a token is printable ASCII without spaces",
                    n + 1
                ));
            }
            if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&line.len()) {
                return Err(format!(
                    "{what} line {}: token is {} characters, {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} \
                     needed (`raftkv new-client-token FILE` makes one)",
                    n + 1,
                    line.len()
                ));
            }
            tokens.push(line);
        }
        let Some(first) = tokens.first() else {
            return Err(format!("{what}: no token in the file"));
        };
        Ok(ClientToken {
            primary: bytes::Bytes::copy_from_slice(first.as_bytes()),
            tags: tokens
                .iter()
                .map(|t| ClientToken::tag_of(t.as_bytes()))
                .collect(),
        })
    }

    /// Reads a token file; refused if every user may read it (`entropy::read_key_file`).
    pub fn load(path: &Path) -> Result<ClientToken, String> {
        let what = format!("client token file {}", path.display());
        let text = crate::entropy::read_key_file(path).map_err(|e| format!("{what}: {e}"))?;
        ClientToken::parse(&text, &what)
    }

    /// Writes a new random token to `path` (mode 0600, created exclusively) and returns it:
    /// for `raftkv new-client-token` and `raftkv cluster --auth`'s first start.
    pub fn generate(path: &Path) -> Result<ClientToken, String> {
        let what = format!("client token file {}", path.display());
        let text = crate::entropy::write_new_key_file::<GENERATED_TOKEN_BYTES>(
            path,
            &what,
            "raftkv client token: keep it private; see docs/security.md",
        )?;
        ClientToken::parse(&text, &what)
    }

    /// How many tokens the file held (all accepted, the first presented).
    pub fn count(&self) -> usize {
        self.tags.len()
    }

    /// The token this process presents (the file's first).
    pub fn secret(&self) -> bytes::Bytes {
        self.primary.clone()
    }

    /// The tag a presented token is kept and compared as: HMAC-SHA256(token, label). A
    /// connection that authenticated keeps its token's tag, so that a reload that drops the
    /// token can close it (`accepts_tag`) without the token itself kept in memory.
    pub fn tag_of(presented: &[u8]) -> [u8; 32] {
        tag_mac(presented).finalize().into_bytes().into()
    }

    /// True if a token whose tag is `tag` is still accepted (after a reload of the file).
    pub fn accepts_tag(&self, tag: &[u8; 32]) -> bool {
        self.tags.contains(tag)
    }

    /// True if `presented` is one of the accepted tokens (constant-time in its content).
    pub fn verify(&self, presented: &[u8]) -> bool {
        if presented.len() > MAX_TOKEN_LEN {
            return false;
        }
        // Every tag is checked: the time does not tell which line matched either.
        self.tags.iter().fold(false, |ok, tag| {
            tag_mac(presented).verify_slice(tag).is_ok() | ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef0123";
    const T2: &str = "fedcba9876543210fedc";

    #[test]
    fn presents_the_first_and_accepts_every_token() {
        let t = ClientToken::parse(&format!("# rotating\n{T2}\n\n  {T1}  \n"), "t").unwrap();
        assert_eq!(&t.secret()[..], T2.as_bytes());
        assert!(t.verify(T1.as_bytes()));
        assert!(t.verify(T2.as_bytes()));
        assert!(!t.verify(b"0123456789abcdef012"), "a prefix is wrong");
        assert!(
            !t.verify(b"0123456789abcdef01234"),
            "a longer token is wrong"
        );
        assert!(!t.verify(b""));
        assert!(!t.verify(&vec![b'a'; MAX_TOKEN_LEN + 1]));
    }

    #[test]
    fn a_reload_without_a_token_stops_accepting_its_tag() {
        let both = ClientToken::parse(&format!("{T2}\n{T1}\n"), "t").unwrap();
        let new_only = ClientToken::parse(T2, "t").unwrap();
        let old = ClientToken::tag_of(T1.as_bytes());
        assert!(both.accepts_tag(&old) && !new_only.accepts_tag(&old));
        assert!(new_only.accepts_tag(&ClientToken::tag_of(T2.as_bytes())));
    }

    #[test]
    fn refuses_bad_files_without_quoting_tokens() {
        for (text, why) in [
            ("", "no token"),
            ("# only a comment\n\n", "no token"),
            ("short", "5 characters"),
            ("has a space in the middle", "printable ASCII"),
            ("tab\there-and-long-enough", "printable ASCII"),
        ] {
            let e = ClientToken::parse(text, "f").unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(!e.contains("space in") && !e.contains("long-enough"), "{e}");
        }
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        assert!(ClientToken::parse(&long, "f").is_err());
        assert!(!format!("{:?}", ClientToken::parse(T1, "f").unwrap()).contains(T1));
    }

    #[test]
    fn generated_files_are_private_and_world_readable_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let made = ClientToken::generate(&path).unwrap();
        assert_eq!(made.secret().len(), 2 * GENERATED_TOKEN_BYTES);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClientToken::load(&path).unwrap(), made);
        assert!(ClientToken::generate(&path).is_err(), "never overwrites");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClientToken::load(&path).unwrap_err();
        assert!(e.contains("every user") && e.contains("644"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(ClientToken::load(&path).is_ok(), "group access only warns");
    }
}
