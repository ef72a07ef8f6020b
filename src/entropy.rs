//! Unpredictable bytes from the kernel (`getrandom(2)`), for what an attacker must not guess:
//! handshake nonces, cluster ids, generated peer secrets. Everything that must be reproducible
//! (election jitter, the simulator) uses the seeded [`crate::rng`] instead.

use std::io;

/// Fills `buf` from the kernel's CSPRNG. Blocks only before the kernel's pool is first
/// initialised (early boot), never afterwards.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into memory we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    fill(&mut b)?;
    Ok(b)
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes lower- or upper-case hex; None unless `s` is an even number of hex digits.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes a new file at `path` (mode 0600, created exclusively: never overwrites) holding a
/// `# header` comment line and `N` random bytes as hex, synced; returns the text written. The
/// one writer of raftkv's generated secrets (peer secret, client token); `what` names the file
/// in errors.
pub fn write_new_key_file<const N: usize>(
    path: &std::path::Path,
    what: &str,
    header: &str,
) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key: [u8; N] = bytes().map_err(|e| format!("{what}: no randomness: {e}"))?;
    let text = format!("# {header}\n{}\n", hex(&key));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{what}: {e}"))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(text)
}

/// Reads a secret file raftkv was given (peer secret, client token, TLS private key): the one
/// place that decides whose eyes it may be open to. Refused if every user of the machine may
/// read or write it (it would not be a secret, and with write access anyone could plant their
/// own); a warning if its group may. The mode is taken from the open file, so it is the file
/// that is read. The error names no path: callers prefix what the file is.
pub fn read_key_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mode = f
        .metadata()
        .map_err(|e| e.to_string())?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "accessible to every user (mode {mode:o}): chmod 600 it"
        ));
    }
    if mode & 0o070 != 0 {
        log::warn!(
            "{} is accessible to its group (mode {mode:o}); chmod 600 it",
            path.display()
        );
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_differ_and_hex_round_trips() {
        let a: [u8; 16] = bytes().unwrap();
        let b: [u8; 16] = bytes().unwrap();
        assert_ne!(a, b, "two 128-bit draws collided");
        assert_eq!(unhex(&hex(&a)).unwrap(), a);
        assert_eq!(unhex("0aFF"), Some(vec![0x0a, 0xff]));
        for bad in ["0", "zz", "0g", "é0"] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
    }
}
