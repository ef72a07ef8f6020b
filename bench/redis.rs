//! Redis driver: RESP2 over a plain socket (SET / GET), pipelined. Replies arrive in request
//! order, so the engine matches them to the oldest request in flight.

use crate::driver::{
    resolve, unsupported, Codec, Consistency, Driver, DriverOptions, Outcome, Reply,
};
use crate::keys::{key_bytes, KEY_LEN};
use crate::workload::{Op, OpKind};
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;

/// Appends a RESP array of bulk strings (how clients send commands).
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A parsed RESP value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// Largest bulk string / array we accept from a server (guards allocation on garbage).
const MAX_RESP_LEN: i64 = 512 * 1024 * 1024;

/// Parses one value at the start of `b`: `Ok(Some((value, bytes_used)))`, `Ok(None)` if
/// incomplete, `Err` on a protocol violation.
pub fn parse(b: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    let Some(line_end) = b.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if line_end == 0 {
        return Err("RESP: empty line".into());
    }
    let line = std::str::from_utf8(&b[1..line_end]).map_err(|_| "RESP: non-UTF-8 header")?;
    let after = line_end + 2;
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("RESP: bad integer {s:?}"))
    };
    match b[0] {
        b'+' => Ok(Some((Resp::Simple(line.to_string()), after))),
        b'-' => Ok(Some((Resp::Error(line.to_string()), after))),
        b':' => Ok(Some((Resp::Int(int(line)?), after))),
        b'$' => {
            let n = int(line)?;
            if n == -1 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            if !(0..=MAX_RESP_LEN).contains(&n) {
                return Err(format!("RESP: bad bulk length {n}"));
            }
            let n = n as usize;
            if b.len() < after + n + 2 {
                return Ok(None);
            }
            if &b[after + n..after + n + 2] != b"\r\n" {
                return Err("RESP: bulk string not terminated by CRLF".into());
            }
            Ok(Some((
                Resp::Bulk(Some(b[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        b'*' => {
            let n = int(line)?;
            if n == -1 {
                return Ok(Some((Resp::Array(None), after)));
            }
            if !(0..=MAX_RESP_LEN).contains(&n) {
                return Err(format!("RESP: bad array length {n}"));
            }
            let mut items = Vec::new();
            let mut pos = after;
            for _ in 0..n {
                match parse(&b[pos..])? {
                    Some((v, used)) => {
                        items.push(v);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(Some(items)), pos)))
        }
        c => Err(format!("RESP: unknown type byte 0x{c:02x}")),
    }
}

pub struct RedisDriver {
    /// "redis", or "raftkv-resp" when pointed at raftkv's RESP port (same codec, same engine).
    name: &'static str,
    addrs: Vec<String>,
    value: Arc<Vec<u8>>,
    token: Option<bytes::Bytes>,
    /// TLS (raftkv-resp against a node with --client-tls-cert).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl RedisDriver {
    pub fn new(name: &'static str, addrs: Vec<String>, opts: &DriverOptions) -> RedisDriver {
        RedisDriver {
            name,
            addrs,
            value: Arc::new(opts.value.clone()),
            token: opts.token.clone(),
            tls: None,
        }
    }

    /// Speaks TLS, trusting `cfg`'s CAs.
    pub fn with_tls(mut self, cfg: Arc<rustls::ClientConfig>) -> RedisDriver {
        self.tls = Some(cfg);
        self
    }
}

impl Driver for RedisDriver {
    fn name(&self) -> String {
        self.name.into()
    }
    fn check(&self, kinds: &[OpKind], consistency: Consistency) -> Result<(), String> {
        for k in kinds {
            if !matches!(k, OpKind::Put | OpKind::Get) {
                return Err(unsupported(self.name, k.name()));
            }
        }
        if consistency != Consistency::Linearizable {
            // A single Redis node serves every read from memory; there is nothing to relax.
            return Err(unsupported(
                self.name,
                "--consistency (RESP has no consistency flag)",
            ));
        }
        Ok(())
    }
    fn targets(&self) -> Result<Vec<SocketAddr>, String> {
        self.addrs.iter().map(|a| resolve(a)).collect()
    }
    fn codec(&self, _conn_index: usize) -> Box<dyn Codec> {
        Box::new(RespCodec {
            value: self.value.clone(),
            auth: self.token.clone(),
            awaiting_auth: false,
        })
    }
    fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }
}

struct RespCodec {
    value: Arc<Vec<u8>>,
    /// The password (client token), until `AUTH` went ahead of the first command.
    auth: Option<bytes::Bytes>,
    /// `AUTH` was sent and its reply, the first on the connection, has not come.
    awaiting_auth: bool,
}

impl Codec for RespCodec {
    fn encode(&mut self, _id: u64, op: &Op, out: &mut Vec<u8>) {
        if let Some(password) = self.auth.take() {
            encode_command(&[b"AUTH", &password], out);
            self.awaiting_auth = true;
        }
        let mut kb = [0u8; KEY_LEN];
        let key = key_bytes(op.key, &mut kb);
        match op.kind {
            OpKind::Get => encode_command(&[b"GET", key], out),
            // `check` rejected the rest; puts are SETs.
            _ => encode_command(&[b"SET", key, &self.value], out),
        }
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, String> {
        let Some((v, used)) = parse(buf)? else {
            return Ok(None);
        };
        buf.advance(used);
        if std::mem::take(&mut self.awaiting_auth) {
            return match v {
                Resp::Error(e) => Err(format!("AUTH refused: {e}")),
                // Not a reply to a measured command: on to the next one.
                _ => self.decode(buf),
            };
        }
        let outcome = match v {
            Resp::Error(e) => Outcome::Error {
                kind: format!("redis: {}", e.split(' ').next().unwrap_or("ERR")),
                redirect: None,
            },
            Resp::Bulk(None) => Outcome::Ok {
                found: false,
                version: None,
            },
            _ => Outcome::Ok {
                found: true,
                version: None,
            },
        };
        Ok(Some(Reply { id: None, outcome }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode_command(&[b"SET", b"k1", b"hello"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$5\r\nhello\r\n");
    }

    #[test]
    fn parses_every_reply_type_and_waits_for_more_bytes() {
        let wire: &[u8] = b"+OK\r\n-ERR no\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n";
        let want = [
            Resp::Simple("OK".into()),
            Resp::Error("ERR no".into()),
            Resp::Int(42),
            Resp::Bulk(Some(b"abc".to_vec())),
            Resp::Bulk(None),
            Resp::Array(Some(vec![Resp::Bulk(Some(b"a".to_vec())), Resp::Int(1)])),
        ];
        let mut pos = 0;
        for w in &want {
            let (v, used) = parse(&wire[pos..]).unwrap().unwrap();
            assert_eq!(&v, w);
            // Every strict prefix of a value is "incomplete", never an error or a wrong value.
            for cut in 0..used {
                assert_eq!(parse(&wire[pos..pos + cut]).unwrap(), None, "cut {cut}");
            }
            pos += used;
        }
        assert_eq!(pos, wire.len());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b"$abc\r\n").is_err());
        assert!(parse(b"$-5\r\n").is_err());
        assert!(parse(b"$2\r\nabXY").is_err());
        assert!(parse(b"\r\n").is_err());
    }

    /// With a password, AUTH goes first and its +OK is no reply; -WRONGPASS fails the connection.
    #[test]
    fn auth_goes_first_and_its_reply_is_skipped() {
        let opts = DriverOptions {
            value: b"v".to_vec(),
            consistency: Consistency::Linearizable,
            sessions: false,
            token: Some(bytes::Bytes::from_static(b"pw")),
        };
        let d = RedisDriver::new("raftkv-resp", vec![], &opts);
        let mut c = d.codec(0);
        let mut out = Vec::new();
        c.encode(1, &Op::simple(OpKind::Get, 7), &mut out);
        c.encode(2, &Op::simple(OpKind::Get, 7), &mut out);
        assert!(out.starts_with(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$3\r\nGET"));
        assert_eq!(out.windows(4).filter(|w| w == b"AUTH").count(), 1, "once");
        let mut wire = BytesMut::from(&b"+OK\r\n$-1\r\n"[..]);
        let r = c.decode(&mut wire).unwrap().unwrap();
        assert_eq!(
            r.outcome,
            Outcome::Ok {
                found: false,
                version: None
            }
        );
        let mut c = d.codec(1);
        c.encode(1, &Op::simple(OpKind::Get, 7), &mut Vec::new());
        let mut wire = BytesMut::from(&b"-WRONGPASS invalid\r\n"[..]);
        assert!(c.decode(&mut wire).unwrap_err().contains("WRONGPASS"));
    }

    #[test]
    fn codec_maps_replies_to_outcomes() {
        let opts = DriverOptions {
            value: b"v".to_vec(),
            consistency: Consistency::Linearizable,
            sessions: false,
            token: None,
        };
        let d = RedisDriver::new("redis", vec!["127.0.0.1:1".into()], &opts);
        let mut c = d.codec(0);
        let mut out = Vec::new();
        c.encode(1, &Op::simple(OpKind::Put, 7), &mut out);
        c.encode(2, &Op::simple(OpKind::Get, 7), &mut out);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$11\r\nk0000000007\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$11\r\nk0000000007\r\n"
        );
        let mut buf = BytesMut::from(&b"+OK\r\n$-1\r\n-WRONGTYPE x\r\n$1"[..]);
        let ok = |found| Outcome::Ok {
            found,
            version: None,
        };
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().outcome, ok(true));
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().outcome, ok(false));
        assert_eq!(
            c.decode(&mut buf).unwrap().unwrap().outcome,
            Outcome::Error {
                kind: "redis: WRONGTYPE".into(),
                redirect: None
            }
        );
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"$1");
        assert!(d.check(&[OpKind::Scan], Consistency::Linearizable).is_err());
    }
}
