//! Networking: framing, the mio reactor pieces and the timer wheel.
//!
//! - [`client_auth`]: the client token a client presents before it is served.
//! - [`framing`]: 4-byte big-endian length + protobuf frames.
//! - [`conn`]: a buffered non-blocking framed connection with a bounded write queue.
//! - [`peer`]: outbound peer links with capped exponential reconnect backoff.
//! - [`ports`]: free loopback ports for local test and bench clusters.
//! - [`reactor`]: listener tokens and the connection token allocator.
//! - [`timer`]: a hashed timer wheel (ticks, deadlines, reconnects).
//! - [`tls`]: rustls under [`conn::Conn`], sans-I/O; [`certgen`]: a cluster's CA and node
//!   certificates.
//!
//! The event loop itself lives in [`crate::server`].

pub mod bounds;
pub mod certgen;
pub mod client_auth;
pub mod conn;
pub mod framing;
pub mod handshake;
pub mod peer;
pub mod peer_auth;
pub mod ports;
pub mod reactor;
pub mod timer;
pub mod tls;
