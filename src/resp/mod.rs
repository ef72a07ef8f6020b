//! RESP2, the Redis serialization protocol, without I/O: an incremental, bounded parser of
//! client commands over a byte buffer ([`Parser`]) and an encoder of replies ([`Reply`]).
//! The server's RESP connections (`server::resp_conn`) feed it socket bytes and queue what it
//! encodes; nothing here touches a socket.
//!
//! Commands arrive as arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or as inline
//! commands (`GET k\r\n`, what a person types into `telnet`). Every bound is checked before
//! anything is buffered for it: a bulk length above the command limit, an array of more than
//! [`crate::limits::RESP_MAX_ARGS`] elements, a nested array, an inline line longer than
//! [`MAX_INLINE`] are protocol errors (the connection answers `-ERR Protocol error: ...` and
//! is closed, as Redis does).

mod parse;
mod reply;

pub use parse::{Parser, ProtocolError, MAX_INLINE};
pub use reply::Reply;
