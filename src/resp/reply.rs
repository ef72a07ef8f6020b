//! Replies and their encoding in RESP2 or RESP3 (a connection's choice, by `HELLO 2|3`).
//!
//! The shapes differ only where RESP3 has a type RESP2 lacks: a [`Reply::Map`] is `%N` in
//! RESP3 and a flat array of keys and values in RESP2 (as Redis sends `HELLO` or `CONFIG GET`),
//! and [`Reply::Nil`] is `_` in RESP3, `$-1` in RESP2. No command raftkv serves answers a
//! boolean or a double in Redis 7, so those types are not made.

use bytes::{BufMut, Bytes, BytesMut};

/// Bulk strings at least this long are queued as their own `Bytes` (no copy); shorter ones
/// are copied into the reply's buffer (one write segment instead of three).
const COPY_BELOW: usize = 4096;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a status line (no CR or LF inside).
    Simple(&'static str),
    /// `-ERR ...`: the first word is the error's kind (`ERR`, `WRONGTYPE`, `NOTLEADER`, ...).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// A missing value: the null bulk string (`$-1`) in RESP2, null (`_`) in RESP3.
    Nil,
    Array(Vec<Reply>),
    /// Names and values: a map in RESP3, a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// An `ERR` error.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// A bulk string of text.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(s.into()))
    }

    /// Encodes the reply (RESP3 if `resp3`, else RESP2): into `buf`, except large bulk
    /// strings, which are pushed to `out` as they are after what `buf` holds so far. The
    /// caller queues `out` then `buf`'s rest.
    pub fn encode(&self, buf: &mut BytesMut, out: &mut Vec<Bytes>, resp3: bool) {
        match self {
            Reply::Simple(s) => line(buf, b'+', s.as_bytes()),
            Reply::Error(s) => {
                // An error is one line: a CR or LF in a message would desynchronise the client.
                buf.put_u8(b'-');
                buf.extend(
                    s.bytes()
                        .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
                );
                buf.put_slice(b"\r\n");
            }
            Reply::Int(n) => number(buf, b':', *n),
            Reply::Nil if resp3 => buf.put_slice(b"_\r\n"),
            Reply::Nil => buf.put_slice(b"$-1\r\n"),
            Reply::Bulk(b) => {
                number(buf, b'$', b.len() as i64);
                if b.len() >= COPY_BELOW {
                    out.push(buf.split().freeze());
                    out.push(b.clone());
                } else {
                    buf.put_slice(b);
                }
                buf.put_slice(b"\r\n");
            }
            Reply::Array(items) => {
                number(buf, b'*', items.len() as i64);
                for r in items {
                    r.encode(buf, out, resp3);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    number(buf, b'%', pairs.len() as i64);
                } else {
                    number(buf, b'*', 2 * pairs.len() as i64);
                }
                for (k, v) in pairs {
                    k.encode(buf, out, resp3);
                    v.encode(buf, out, resp3);
                }
            }
        }
    }

    /// About the bytes [`Reply::encode`] makes (exact but for integers and lengths, counted
    /// as 20 digits): for backpressure on replies held back for order.
    pub fn size(&self) -> usize {
        match self {
            Reply::Simple(s) => s.len() + 3,
            Reply::Error(s) => s.len() + 3,
            Reply::Int(_) | Reply::Nil => 23,
            Reply::Bulk(b) => b.len() + 25,
            Reply::Array(items) => items.iter().map(Reply::size).sum::<usize>() + 23,
            Reply::Map(pairs) => {
                pairs
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
                    + 23
            }
        }
    }

    /// The whole encoding in one buffer (tests, small replies).
    pub fn to_bytes(&self, resp3: bool) -> Vec<u8> {
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        self.encode(&mut buf, &mut out, resp3);
        out.push(buf.freeze());
        out.concat()
    }
}

fn line(buf: &mut BytesMut, kind: u8, body: &[u8]) {
    buf.put_u8(kind);
    buf.put_slice(body);
    buf.put_slice(b"\r\n");
}

/// `kind`, the decimal `n`, CR LF, without a heap string (every reply has one or more).
fn number(buf: &mut BytesMut, kind: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    buf.put_u8(kind);
    if n < 0 {
        buf.put_u8(b'-');
    }
    buf.put_slice(&digits[i..]);
    buf.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_kind() {
        let r = Reply::Array(vec![
            Reply::Simple("OK"),
            Reply::err("bad\r\nthing"),
            Reply::Int(-3),
            Reply::text("hi"),
            Reply::Nil,
            Reply::Array(vec![]),
        ]);
        assert!(
            r.size() >= r.to_bytes(false).len(),
            "size is an upper bound"
        );
        assert_eq!(
            r.to_bytes(false),
            b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*0\r\n".to_vec()
        );
        for (n, text) in [(0, "0"), (-1, "-1"), (i64::MAX, "9223372036854775807")] {
            assert_eq!(
                Reply::Int(n).to_bytes(false),
                format!(":{text}\r\n").as_bytes()
            );
        }
        assert_eq!(
            Reply::Int(i64::MIN).to_bytes(true),
            b":-9223372036854775808\r\n".to_vec()
        );
    }

    #[test]
    fn maps_and_nulls_per_protocol() {
        let r = Reply::Map(vec![
            (Reply::text("a"), Reply::Int(1)),
            (Reply::text("b"), Reply::Nil),
        ]);
        assert!(r.size() >= r.to_bytes(true).len());
        assert_eq!(
            r.to_bytes(false),
            b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$-1\r\n".to_vec()
        );
        assert_eq!(
            r.to_bytes(true),
            b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n_\r\n".to_vec()
        );
    }

    #[test]
    fn large_bulks_are_not_copied() {
        let big = Bytes::from(vec![7u8; COPY_BELOW]);
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        Reply::Array(vec![Reply::Bulk(big.clone())]).encode(&mut buf, &mut out, false);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].as_ptr(), big.as_ptr(), "the value itself is queued");
        assert_eq!(&buf[..], b"\r\n");
    }
}
