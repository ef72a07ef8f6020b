//! etcd driver over etcd's **v3 HTTP/JSON gateway** (grpc-gateway, `POST /v3/kv/...`), on plain
//! pipelined HTTP/1.1 keep-alive sockets.
//!
//! Why not gRPC: the `etcd-client` crate generates its stubs in a build script that needs a
//! system `protoc`, and this project builds without one. The gateway is served by etcd itself on
//! its client port and turns each JSON request into a gRPC call on an internal loopback
//! connection, so it costs etcd some extra CPU per request: numbers measured this way are a
//! lower bound for etcd's native gRPC throughput, and every report labels them as gateway
//! numbers.

use crate::driver::{
    resolve, unsupported, Codec, Consistency, Driver, DriverOptions, Outcome, Reply,
};
use crate::keys::{key_bytes, KEY_LEN};
use crate::workload::{Op, OpKind};
use bytes::{Buf, BytesMut};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Standard base64 with padding (what grpc-gateway expects for `bytes` fields).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

/// The smallest key greater than every key with this prefix (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // all 0xff (or empty): to the end of the key space
}

/// Appends one HTTP/1.1 POST with a JSON body.
pub fn encode_post(path: &str, body: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Largest response body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Parses one HTTP/1.1 response at the start of `b` (Content-Length or chunked bodies).
/// `Ok(None)` = incomplete.
pub fn parse_response(b: &[u8]) -> Result<Option<(HttpResponse, usize)>, String> {
    let Some(head_end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        if b.len() > 64 * 1024 {
            return Err("HTTP: header larger than 64 KiB".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&b[..head_end]).map_err(|_| "HTTP: non-UTF-8 header")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    if !parts.next().unwrap_or("").starts_with("HTTP/1.") {
        return Err(format!("HTTP: bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("HTTP: bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Err(format!("HTTP: bad header line {l:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| format!("HTTP: bad Content-Length {value:?}"))?;
            if n > MAX_BODY {
                return Err(format!("HTTP: body of {n} bytes is too large"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body_start = head_end + 4;
    if chunked {
        let mut pos = body_start;
        let mut body = Vec::new();
        loop {
            let Some(le) = b[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_str = std::str::from_utf8(&b[pos..pos + le])
                .map_err(|_| "HTTP: bad chunk size")?
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| format!("HTTP: bad chunk size {size_str:?}"))?;
            if size > MAX_BODY || body.len() + size > MAX_BODY {
                return Err("HTTP: chunked body too large".into());
            }
            pos += le + 2;
            if b.len() < pos + size + 2 {
                return Ok(None);
            }
            if size == 0 {
                // No trailers are expected from etcd: the last chunk is followed by CRLF.
                if &b[pos..pos + 2] != b"\r\n" {
                    return Err("HTTP: trailers are not supported".into());
                }
                return Ok(Some((HttpResponse { status, body }, pos + 2)));
            }
            body.extend_from_slice(&b[pos..pos + size]);
            if &b[pos + size..pos + size + 2] != b"\r\n" {
                return Err("HTTP: chunk not terminated by CRLF".into());
            }
            pos += size + 2;
        }
    }
    let n = content_length.unwrap_or(0);
    if b.len() < body_start + n {
        return Ok(None);
    }
    Ok(Some((
        HttpResponse {
            status,
            body: b[body_start..body_start + n].to_vec(),
        },
        body_start + n,
    )))
}

/// Extracts the first `"field":"123"` or `"field":123` integer in a JSON text (grpc-gateway
/// renders int64 fields as strings). Good enough for the few fields the driver reads.
pub fn json_int(body: &str, field: &str) -> Option<u64> {
    let pat = format!("\"{field}\":");
    let at = body.find(&pat)? + pat.len();
    let rest = body[at..].trim_start().trim_start_matches('"');
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// One blocking request on a fresh connection (leader discovery).
pub fn post_blocking(
    addr: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let sa = resolve(addr)?;
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    let mut req = Vec::new();
    encode_post(path, body, &mut req);
    s.write_all(&req)
        .map_err(|e| format!("{addr}{path}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((resp, _)) = parse_response(&buf)? {
            return Ok(resp);
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("{addr}{path}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr}{path}: connection closed mid-response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Finds the leader's client address: asks each endpoint for its status and picks the one whose
/// member id is the leader id.
pub fn find_leader(endpoints: &[String], timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last_err = String::from("no endpoints");
    loop {
        for ep in endpoints {
            match post_blocking(ep, "/v3/maintenance/status", "{}", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => {
                    let body = String::from_utf8_lossy(&r.body);
                    match (json_int(&body, "member_id"), json_int(&body, "leader")) {
                        (Some(m), Some(l)) if m == l => return Ok(ep.clone()),
                        _ => last_err = format!("{ep}: not the leader"),
                    }
                }
                Ok(r) => last_err = format!("{ep}: HTTP {}", r.status),
                Err(e) => last_err = e,
            }
        }
        if Instant::now() >= deadline || crate::signals::interrupted() {
            return Err(format!("no etcd leader within {timeout:?}: {last_err}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct EtcdDriver {
    endpoints: Vec<String>,
    value_b64: Arc<String>,
    serializable: bool,
}

impl EtcdDriver {
    pub fn new(endpoints: Vec<String>, opts: &DriverOptions) -> EtcdDriver {
        EtcdDriver {
            endpoints,
            value_b64: Arc::new(base64(&opts.value)),
            serializable: opts.consistency == Consistency::Stale,
        }
    }
}

impl Driver for EtcdDriver {
    fn name(&self) -> String {
        "etcd (v3 HTTP/JSON gateway)".into()
    }
    fn check(&self, _kinds: &[OpKind], c: Consistency) -> Result<(), String> {
        if c == Consistency::Lease {
            return Err(unsupported(
                "etcd",
                "lease reads (use linearizable or stale)",
            ));
        }
        Ok(())
    }
    fn targets(&self) -> Result<Vec<SocketAddr>, String> {
        Ok(vec![resolve(&find_leader(
            &self.endpoints,
            Duration::from_secs(15),
        )?)?])
    }
    fn codec(&self, _conn_index: usize) -> Box<dyn Codec> {
        Box::new(HttpCodec {
            value_b64: self.value_b64.clone(),
            serializable: self.serializable,
            pending: std::collections::VecDeque::new(),
        })
    }
}

struct HttpCodec {
    value_b64: Arc<String>,
    serializable: bool,
    /// Kinds of the requests in flight, oldest first (HTTP/1.1 answers in order).
    pending: std::collections::VecDeque<OpKind>,
}

impl Codec for HttpCodec {
    fn encode(&mut self, _id: u64, op: &Op, out: &mut Vec<u8>) {
        let mut kb = [0u8; KEY_LEN];
        let key = key_bytes(op.key, &mut kb);
        let k = base64(key);
        let v = &self.value_b64;
        let ser = self.serializable;
        match op.kind {
            OpKind::Put => encode_post(
                "/v3/kv/put",
                &format!(r#"{{"key":"{k}","value":"{v}"}}"#),
                out,
            ),
            OpKind::Get => encode_post(
                "/v3/kv/range",
                &format!(r#"{{"key":"{k}","serializable":{ser}}}"#),
                out,
            ),
            OpKind::Scan => {
                let prefix = &key[..op.prefix_len.min(KEY_LEN)];
                encode_post(
                    "/v3/kv/range",
                    &format!(
                        r#"{{"key":"{}","range_end":"{}","limit":"{}","serializable":{ser}}}"#,
                        base64(prefix),
                        base64(&prefix_end(prefix)),
                        op.limit
                    ),
                    out,
                )
            }
            OpKind::Cas => encode_post(
                "/v3/kv/txn",
                &format!(
                    r#"{{"compare":[{{"key":"{k}","target":"MOD","result":"EQUAL","mod_revision":"{}"}}],"success":[{{"request_put":{{"key":"{k}","value":"{v}"}}}}],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#,
                    op.expected_version
                ),
                out,
            ),
        }
        self.pending.push_back(op.kind);
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, String> {
        let Some((resp, used)) = parse_response(buf)? else {
            return Ok(None);
        };
        buf.advance(used);
        let kind = self.pending.pop_front();
        let body = String::from_utf8_lossy(&resp.body);
        let outcome = if resp.status != 200 {
            Outcome::Error {
                kind: format!("etcd: HTTP {}", resp.status),
                redirect: None,
            }
        } else {
            match kind {
                Some(OpKind::Get) | Some(OpKind::Scan) => Outcome::Ok {
                    found: body.contains("\"kvs\""),
                    version: json_int(&body, "mod_revision"),
                },
                Some(OpKind::Cas) => {
                    if body.contains("\"succeeded\":true") {
                        Outcome::Ok {
                            found: true,
                            version: json_int(&body, "revision"),
                        }
                    } else {
                        // The failure branch read the key: its mod_revision, or 0 if absent.
                        Outcome::CasFailed {
                            version: Some(json_int(&body, "mod_revision").unwrap_or(0)),
                        }
                    }
                }
                _ => Outcome::Ok {
                    found: true,
                    version: json_int(&body, "revision"),
                },
            }
        };
        Ok(Some(Reply { id: None, outcome }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let v = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (i, o) in v {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"k00"), b"k01");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let wire =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        let mut pos = 0;
        let mut got = Vec::new();
        while pos < wire.len() {
            // Every prefix is incomplete, never an error.
            let (r, used) = parse_response(&wire[pos..]).unwrap().unwrap();
            for cut in 0..used {
                assert_eq!(parse_response(&wire[pos..pos + cut]).unwrap(), None);
            }
            got.push(r);
            pos += used;
        }
        assert_eq!(got[0].body, b"{}");
        assert_eq!(got[1].body, b"abcde");
        assert_eq!(got[2].status, 503);
        assert!(parse_response(b"SMTP nope\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn json_int_reads_string_and_bare_numbers() {
        let body = r#"{"header":{"cluster_id":"1","member_id":"42","revision":"17"},"leader": 42}"#;
        assert_eq!(json_int(body, "member_id"), Some(42));
        assert_eq!(json_int(body, "revision"), Some(17));
        assert_eq!(json_int(body, "leader"), Some(42));
        assert_eq!(json_int(body, "nope"), None);
    }

    #[test]
    fn codec_encodes_requests_and_matches_replies_in_order() {
        let opts = DriverOptions {
            value: b"v".to_vec(),
            consistency: Consistency::Stale,
            sessions: false,
            token: None,
        };
        let mut c = EtcdDriver::new(vec![], &opts).codec(0);
        let mut out = Vec::new();
        c.encode(1, &Op::simple(OpKind::Get, 1), &mut out);
        c.encode(2, &Op::simple(OpKind::Put, 1), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /v3/kv/range HTTP/1.1\r\n"));
        assert!(text.contains(r#"{"key":"azAwMDAwMDAwMDE=","serializable":true}"#));
        assert!(text.contains(r#"POST /v3/kv/put"#));
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"header\":{}}  HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n{\"header\":{\"revision\":\"9\"}}   "[..],
        );
        assert_eq!(
            c.decode(&mut buf).unwrap().unwrap().outcome,
            Outcome::Ok {
                found: false,
                version: None
            }
        );
        assert_eq!(
            c.decode(&mut buf).unwrap().unwrap().outcome,
            Outcome::Ok {
                found: true,
                version: Some(9)
            }
        );
        assert!(buf.is_empty());
    }
}
