//! RESP2 replies and their encoding.

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
    /// The null bulk string (`$-1`): a missing key.
    Nil,
    Array(Vec<Reply>),
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

    /// Encodes the reply: into `buf`, except large bulk strings, which are pushed to `out`
    /// as they are after what `buf` holds so far. The caller queues `out` then `buf`'s rest.
    pub fn encode(&self, buf: &mut BytesMut, out: &mut Vec<Bytes>) {
        match self {
            Reply::Simple(s) => line(buf, b'+', s.as_bytes()),
            Reply::Error(s) => {
                // An error is one line: a CR or LF in a message would desynchronise the client.
                let clean: Vec<u8> = s
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(buf, b'-', &clean)
            }
            Reply::Int(n) => line(buf, b':', n.to_string().as_bytes()),
            Reply::Nil => buf.put_slice(b"$-1\r\n"),
            Reply::Bulk(b) => {
                line(buf, b'$', b.len().to_string().as_bytes());
                if b.len() >= COPY_BELOW {
                    out.push(buf.split().freeze());
                    out.push(b.clone());
                } else {
                    buf.put_slice(b);
                }
                buf.put_slice(b"\r\n");
            }
            Reply::Array(items) => {
                line(buf, b'*', items.len().to_string().as_bytes());
                for r in items {
                    r.encode(buf, out);
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
        }
    }

    /// The whole encoding in one buffer (tests, small replies).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        self.encode(&mut buf, &mut out);
        out.push(buf.freeze());
        out.concat()
    }
}

fn line(buf: &mut BytesMut, kind: u8, body: &[u8]) {
    buf.put_u8(kind);
    buf.put_slice(body);
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
        assert!(r.size() >= r.to_bytes().len(), "size is an upper bound");
        assert_eq!(
            r.to_bytes(),
            b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*0\r\n".to_vec()
        );
    }

    #[test]
    fn large_bulks_are_not_copied() {
        let big = Bytes::from(vec![7u8; COPY_BELOW]);
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        Reply::Array(vec![Reply::Bulk(big.clone())]).encode(&mut buf, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].as_ptr(), big.as_ptr(), "the value itself is queued");
        assert_eq!(&buf[..], b"\r\n");
    }
}
