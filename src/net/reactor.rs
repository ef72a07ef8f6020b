//! Reactor bookkeeping shared by the server loop: fixed tokens for the listeners and an
//! allocator of fresh tokens for connections.
//!
//! Connection tokens are never reused (a `u64`-sized counter does not wrap in practice), so a
//! late event or a late reply addressed to a closed connection can never reach a newer one
//! that happens to sit in the same slot — the ABA problem a recycled slab index would need
//! generation bits for.

use mio::Token;

/// The peer (Raft) listener.
pub const PEER_LISTENER: Token = Token(0);
/// The client listener.
pub const CLIENT_LISTENER: Token = Token(1);
/// The running snapshot child's pipe (readable when the child reports and when it exits).
pub const SNAPSHOT_CHILD: Token = Token(2);
/// The HTTP listener (`--http-addr`: health, status and metrics pages).
pub const HTTP_LISTENER: Token = Token(3);
/// The RESP (Redis protocol) listener (`--redis-addr`).
pub const REDIS_LISTENER: Token = Token(4);
const FIRST_DYNAMIC: usize = 16;

/// Hands out unique connection tokens.
#[derive(Debug)]
pub struct Tokens {
    next: usize,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            next: FIRST_DYNAMIC,
        }
    }
}

impl Tokens {
    /// A token never handed out before.
    pub fn next_token(&mut self) -> Token {
        let t = Token(self.next);
        self.next += 1;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_avoid_listeners() {
        let mut t = Tokens::default();
        let a = t.next_token();
        let b = t.next_token();
        assert_ne!(a, b);
        for x in [a, b] {
            assert_ne!(x, PEER_LISTENER);
            assert_ne!(x, CLIENT_LISTENER);
            assert_ne!(x, SNAPSHOT_CHILD);
            assert_ne!(x, HTTP_LISTENER);
            assert_ne!(x, REDIS_LISTENER);
        }
    }
}
