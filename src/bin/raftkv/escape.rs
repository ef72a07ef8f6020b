//! How the CLI writes and reads binary keys and values as text.
//!
//! **Escape syntax** (what `scan` prints, and what `--escaped` input takes): UTF-8 text stands
//! for itself, except `\\` (backslash), `\n`, `\r`, `\t`, `\0` and `\=` (an `=`; written only in
//! keys, so that the first ` = ` on a `scan` line always separates key and value), and `\xHH`
//! for any byte, written for other control characters (below 0x20 and 0x7f) and for bytes that
//! are not valid UTF-8. So plain printable text prints as itself, every byte string has exactly
//! one escaped form, and decoding it gives the bytes back.
//!
//! **Hex** (`--hex` input, `*_hex` fields in `--json` output): two lowercase digits per byte
//! (uppercase accepted on input).

/// The escaped form of `b`. `key`: also escape `=` (see the module doc).
pub fn escape(b: &[u8], key: bool) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\0' => out.push_str("\\0"),
                '=' if key => out.push_str("\\="),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The bytes an escaped string stands for.
pub fn unescape(s: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let Some(&e) = s.get(i + 1) else {
            return Err("a lone backslash at the end (write \\\\ for a backslash)".into());
        };
        let byte = match e {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'0' => 0,
            b'=' => b'=',
            b'x' => {
                let hex = s.get(i + 2..i + 4).ok_or("\\x needs two hex digits")?;
                i += 2;
                hex_byte(hex[0], hex[1]).ok_or_else(|| {
                    format!("\\x{} is not two hex digits", String::from_utf8_lossy(hex))
                })?
            }
            other => {
                return Err(format!(
                    "unknown escape \\{} (known: \\\\ \\n \\r \\t \\0 \\= \\xHH)",
                    char::from(other)
                ))
            }
        };
        out.push(byte);
        i += 2;
    }
    Ok(out)
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * b.len());
    for &x in b {
        out.push(char::from(DIGITS[usize::from(x >> 4)]));
        out.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    out
}

/// The bytes of a hex string (even length, digits only).
pub fn unhex(s: &[u8]) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", s.len()));
    }
    s.chunks(2)
        .map(|p| {
            hex_byte(p[0], p[1])
                .ok_or_else(|| format!("{:?} is not a hex byte", String::from_utf8_lossy(p)))
        })
        .collect()
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    let d = |c: u8| char::from(c).to_digit(16);
    Some((d(hi)? << 4 | d(lo)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).chain(*b"a=b \\ caf\xc3\xa9 \xe2\x82").collect();
        for key in [false, true] {
            let e = escape(&all, key);
            assert!(!e.contains('\n'), "{e}");
            assert_eq!(unescape(e.as_bytes()).unwrap(), all, "{e}");
        }
        assert!(!escape(b"a = b", true).contains(" = "));
    }

    #[test]
    fn plain_text_is_itself() {
        assert_eq!(
            escape("hello wörld = x".as_bytes(), false),
            "hello wörld = x"
        );
        assert_eq!(escape(b"a\0b\n\xff", false), "a\\0b\\n\\xff");
        assert_eq!(escape(b"k=v", true), "k\\=v");
    }

    #[test]
    fn bad_escapes_are_errors() {
        for bad in [&b"\\"[..], b"\\q", b"\\x4", b"\\xzz"] {
            assert!(unescape(bad).is_err(), "{bad:?}");
        }
        assert_eq!(unescape(b"\\x41\\x4A").unwrap(), b"AJ");
    }

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(hex(&b), "00017f80ff");
        assert_eq!(unhex(b"00017F80ff").unwrap(), b);
        assert!(unhex(b"abc").is_err());
        assert!(unhex(b"zz").is_err());
    }
}
