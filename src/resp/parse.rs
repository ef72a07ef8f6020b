//! The incremental command parser. Complete bulk strings are split off the buffer as they
//! arrive (zero-copy `Bytes`), so a command sent in pieces is never parsed twice from its
//! start: the parser keeps the arguments read so far and how many remain.

use bytes::{Buf, Bytes, BytesMut};

/// Longest inline command line, and longest `*N` / `$N` header line accepted (Redis:
/// `PROTO_INLINE_MAX_SIZE`, 64 KiB).
pub const MAX_INLINE: usize = 64 * 1024;
/// Longest `*N\r\n` or `$N\r\n` line: a sign, 20 digits and the line end, with room to spare.
const MAX_HEADER: usize = 32;
/// Argument vectors start this small however many elements an array announces, so that a
/// header alone cannot make the parser allocate.
const INITIAL_ARGS: usize = 16;

/// A client broke the protocol; the message is Redis' wording where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

/// An array command being read: its arguments so far and how many remain.
#[derive(Debug)]
struct Partial {
    args: Vec<Bytes>,
    remaining: usize,
    bytes: usize,
}

/// Splits commands off a connection's input buffer.
#[derive(Debug)]
pub struct Parser {
    max_command: usize,
    max_args: usize,
    partial: Option<Partial>,
}

fn err<T>(msg: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(msg.into()))
}

/// The position of the `\n` ending the first line, if it is within `max` bytes.
fn line_end(buf: &[u8], max: usize) -> Option<usize> {
    buf.iter().take(max).position(|&b| b == b'\n')
}

/// The line before `\r\n` at `end` (the `\n`), without its type byte.
fn header_number(buf: &[u8], end: usize) -> Option<i64> {
    if end < 2 || buf[end - 1] != b'\r' {
        return None;
    }
    // By hand (two of these per argument): an optional '-', then 1..=18 digits, which cannot
    // overflow; anything else is not a length (MAX_HEADER bounds the line anyway).
    let (neg, digits) = match &buf[1..end - 1] {
        [b'-', rest @ ..] => (true, rest),
        d => (false, d),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if neg { -n } else { n })
}

impl Parser {
    /// A parser refusing commands with more than `max_command` argument bytes (any one bulk
    /// string included) or more than `max_args` arguments.
    pub fn new(max_command: usize, max_args: usize) -> Parser {
        Parser {
            max_command,
            max_args,
            partial: None,
        }
    }

    /// True while part of a command has been consumed from the buffer.
    pub fn in_command(&self) -> bool {
        self.partial.is_some()
    }

    /// The next complete command in `buf` (its consumed bytes removed), `None` if more bytes
    /// are needed. Empty arrays and blank inline lines are skipped, as Redis does. After an
    /// error the connection must be closed: the parser's position is lost.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if self.partial.is_none() {
                if buf.is_empty() {
                    return Ok(None);
                }
                let started = if buf[0] == b'*' {
                    self.array_header(buf)?
                } else {
                    match self.inline(buf)? {
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                        None => return Ok(None),
                    }
                };
                if !started {
                    return Ok(None);
                }
                continue;
            }
            if !self.bulks(buf)? {
                return Ok(None);
            }
            if let Some(p) = self.partial.take() {
                return Ok(Some(p.args));
            }
        }
    }

    /// Consumes a `*N\r\n` header; false if it is not complete yet. `*0` and `*-1` are
    /// consumed and skipped (the caller loops).
    fn array_header(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        let Some(end) = line_end(buf, MAX_HEADER) else {
            if buf.len() >= MAX_HEADER {
                return err("too big mbulk count string");
            }
            return Ok(false);
        };
        let n = match header_number(buf, end) {
            Some(n) if n <= self.max_args as i64 => n,
            Some(n) if n > 0 => {
                return err(format!(
                    "array of {n} elements exceeds the maximum of {}",
                    self.max_args
                ))
            }
            _ => return err("invalid multibulk length"),
        };
        buf.advance(end + 1);
        if n > 0 {
            let n = n as usize;
            self.partial = Some(Partial {
                args: Vec::with_capacity(n.min(INITIAL_ARGS)),
                remaining: n,
                bytes: 0,
            });
        }
        Ok(true)
    }

    /// Consumes the complete bulk strings of the array being read; true when it is complete.
    fn bulks(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        let max_command = self.max_command;
        let Some(p) = self.partial.as_mut() else {
            return Ok(true);
        };
        while p.remaining > 0 {
            if buf.is_empty() {
                return Ok(false);
            }
            if buf[0] != b'$' {
                // A nested array lands here too: commands are flat arrays of bulk strings.
                return err(format!("expected '$', got '{}'", buf[0].escape_ascii()));
            }
            let Some(end) = line_end(buf, MAX_HEADER) else {
                if buf.len() >= MAX_HEADER {
                    return err("too big bulk count string");
                }
                return Ok(false);
            };
            let len = match header_number(buf, end) {
                Some(n) if n >= 0 => n as usize,
                _ => return err("invalid bulk length"),
            };
            if len > max_command.saturating_sub(p.bytes) {
                return err(format!(
                    "invalid bulk length: {len} bytes would exceed this node's maximum command \
                     of {max_command} bytes (--max-frame)"
                ));
            }
            let total = end + 1 + len + 2;
            if buf.len() < total {
                // Room for the whole string now, so a large one is not re-copied as it grows.
                buf.reserve(total - buf.len());
                return Ok(false);
            }
            if &buf[total - 2..total] != b"\r\n" {
                return err("bulk string not followed by CRLF");
            }
            buf.advance(end + 1);
            p.args.push(buf.split_to(len).freeze());
            buf.advance(2);
            p.bytes += len;
            p.remaining -= 1;
        }
        Ok(true)
    }

    /// An inline command: one line of words separated by spaces (no quoting).
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let Some(end) = line_end(buf, MAX_INLINE) else {
            if buf.len() >= MAX_INLINE {
                return err("too big inline request");
            }
            return Ok(None);
        };
        let line = buf.split_to(end + 1).freeze();
        let text = line.slice(..end);
        let text = text.strip_suffix(b"\r").unwrap_or(&text);
        if text.contains(&b'"') || text.contains(&b'\'') {
            return err("quoted inline arguments are not supported; send a RESP array");
        }
        let args: Vec<Bytes> = text
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(|w| line.slice_ref(w))
            .collect();
        if args.len() > self.max_args {
            return err("too many arguments in inline request");
        }
        Ok(Some(args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> Parser {
        Parser::new(1024, 8)
    }

    /// Every command in `input`, fed in one piece.
    fn all(p: &mut Parser, input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(c) = p.next(&mut buf)? {
            out.push(c);
        }
        Ok(out)
    }

    fn words(c: &[Bytes]) -> Vec<String> {
        c.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    const PIPELINE: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nu\r\n\
                               *0\r\nPING\r\n\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n  GET   k  \n";

    fn expected() -> Vec<Vec<String>> {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        vec![
            w(&["SET", "k", "va\r\nu"]),
            w(&["PING"]),
            w(&["GET", ""]),
            w(&["GET", "k"]),
        ]
    }

    #[test]
    fn header_numbers() {
        let n = |s: &[u8]| header_number(s, s.len() - 1);
        assert_eq!(n(b"$12\r\n"), Some(12));
        assert_eq!(n(b"*-1\r\n"), Some(-1));
        assert_eq!(n(b"$0\r\n"), Some(0));
        assert_eq!(n(b"$999999999999999999\r\n"), Some(999_999_999_999_999_999));
        for bad in [
            &b"$1a\r\n"[..],
            b"$\r\n",
            b"$-\r\n",
            b"$+1\r\n",
            b"$1\n",
            b"$ 1\r\n",
        ] {
            assert_eq!(n(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(n(b"$1000000000000000000\r\n"), None, "19 digits");
    }

    #[test]
    fn parses_arrays_and_inline_commands() {
        let got: Vec<_> = all(&mut parser(), PIPELINE)
            .unwrap()
            .iter()
            .map(|c| words(c))
            .collect();
        assert_eq!(got, expected());
    }

    /// The same pipeline split into two pieces at every byte, and fed one byte at a time:
    /// the same commands, whatever the split.
    #[test]
    fn any_split_gives_the_same_commands() {
        for cut in 0..=PIPELINE.len() {
            let mut p = parser();
            let mut buf = BytesMut::from(&PIPELINE[..cut]);
            let mut got = Vec::new();
            while let Some(c) = p.next(&mut buf).unwrap() {
                got.push(words(&c));
            }
            buf.extend_from_slice(&PIPELINE[cut..]);
            while let Some(c) = p.next(&mut buf).unwrap() {
                got.push(words(&c));
            }
            assert_eq!(got, expected(), "split at byte {cut}");
            assert!(buf.is_empty() && !p.in_command(), "split at byte {cut}");
        }
        let mut p = parser();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in PIPELINE {
            buf.extend_from_slice(&[b]);
            while let Some(c) = p.next(&mut buf).unwrap() {
                got.push(words(&c));
            }
        }
        assert_eq!(got, expected(), "byte by byte");
    }

    #[test]
    fn refuses_what_breaks_the_bounds_before_buffering_it() {
        // Two strings each within the bound whose sum is not.
        let mut two = b"*2\r\n$1000\r\n".to_vec();
        two.extend_from_slice(&[b'a'; 1000]);
        two.extend_from_slice(b"\r\n$100\r\n");
        let cases: [(&[u8], &str); 9] = [
            (b"*9\r\n", "exceeds the maximum of 8"),
            (b"*1\r\n$1025\r\n", "maximum command of 1024"),
            (&two, "invalid bulk length: 100 bytes"),
            (b"*1\r\n*1\r\n$1\r\nx\r\n", "expected '$', got '*'"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$1\r\nxyz", "not followed by CRLF"),
            (b"GET \"a b\"\r\n", "quoted"),
        ];
        for (input, want) in cases {
            let e = all(&mut parser(), input).unwrap_err();
            assert!(
                e.to_string().contains(want),
                "{:?}: {e} (wanted {want:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn unterminated_headers_and_lines_are_bounded() {
        let mut p = parser();
        let mut buf = BytesMut::from(&[b'*'; 40][..]);
        assert!(p.next(&mut buf).is_err(), "a header line without end");
        let mut p = parser();
        let mut buf = BytesMut::from(&vec![b'a'; MAX_INLINE][..]);
        assert!(p.next(&mut buf).is_err(), "an inline line without end");
        let mut p = parser();
        let mut buf = BytesMut::from(&vec![b'a'; MAX_INLINE - 1][..]);
        assert_eq!(p.next(&mut buf), Ok(None), "may still end");
    }

    #[test]
    fn a_header_alone_allocates_little() {
        let mut p = Parser::new(1 << 30, 1 << 20);
        let mut buf = BytesMut::from(&b"*1000000\r\n"[..]);
        assert_eq!(p.next(&mut buf), Ok(None));
        assert!(p.partial.as_ref().unwrap().args.capacity() <= INITIAL_ARGS);
    }
}
