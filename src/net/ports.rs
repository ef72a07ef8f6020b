//! Free loopback ports for the local clusters that tests and the bench tool start.
//!
//! The usual trick, binding port 0 and closing the listener, hands back a port from the
//! kernel's *ephemeral* range, which the kernel also uses for the local end of every outgoing
//! connection: between that close and the child's own bind, any `connect()` on the machine may
//! take the port. Seen in the suite on a busy 2-core VM (about one run in ten): a node exiting
//! with "cannot listen on peer address 127.0.0.1:41135: Address already in use" while other
//! tests opened client connections. So ports come from *below* the ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768-60999 by default), which the kernel never
//! hands out by itself. A process-wide counter starting at a pid-derived offset keeps the
//! threads of one test binary apart (and concurrent processes apart, very likely), and every
//! port is checked with a bind before it is handed out; all are held until all are picked.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out (below it: well-known and commonly configured services).
const LOW: u32 = 10_000;

/// Offset (in `0..span`) of the next port to try; `u32::MAX` until the first call.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// Where the first caller of a process starts: processes spread over the range by pid.
fn start(span: u32) -> u32 {
    std::process::id().wrapping_mul(7_919) % span
}

/// First port of the kernel's ephemeral range (the default where it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(LOW + 1_000, 65_535)
}

/// `n` distinct ports on 127.0.0.1 that nothing is bound to now and that the kernel will not
/// pick for an outgoing connection.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let span = ephemeral_low() - LOW;
    let _ = NEXT.compare_exchange(u32::MAX, start(span), Ordering::SeqCst, Ordering::SeqCst);
    let mut held = Vec::with_capacity(n);
    let mut tried = 0;
    while held.len() < n {
        if tried >= span {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("no free loopback port in {LOW}..{}", LOW + span),
            ));
        }
        tried += 1;
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The first of `n` consecutive free ports (for `raftkv cluster --base-port`, which uses
/// `base..base + 2n`): taken from the same counter, so no other caller in this process is
/// handed any of them.
pub fn free_port_range(n: u16) -> std::io::Result<u16> {
    let span = ephemeral_low() - LOW;
    let n32 = u32::from(n.max(1));
    for _ in 0..span / n32 {
        let _ = NEXT.compare_exchange(u32::MAX, start(span), Ordering::SeqCst, Ordering::SeqCst);
        let first = NEXT.fetch_add(n32, Ordering::SeqCst) % span;
        if first + n32 > span {
            continue; // would run past the range's end
        }
        let base = LOW + first;
        let held: std::io::Result<Vec<TcpListener>> = (base..base + n32)
            .map(|p| TcpListener::bind(("127.0.0.1", p as u16)))
            .collect();
        if held.is_ok() {
            return Ok(base as u16);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!(
            "no {n} consecutive free loopback ports in {LOW}..{}",
            LOW + span
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let a = free_ports(20).unwrap();
        let b = free_ports(20).unwrap();
        let all: std::collections::BTreeSet<u16> = a.iter().chain(&b).copied().collect();
        assert_eq!(all.len(), 40, "ports handed out twice: {a:?} {b:?}");
        let hi = ephemeral_low();
        for p in &all {
            assert!(
                (LOW..hi).contains(&u32::from(*p)),
                "port {p} outside {LOW}..{hi}"
            );
            TcpListener::bind(("127.0.0.1", *p)).unwrap_or_else(|e| panic!("port {p}: {e}"));
        }
        // A range is never handed out again, in part or whole.
        let base = free_port_range(6).unwrap();
        let after = free_ports(20).unwrap();
        for p in after.iter().chain(&all) {
            assert!(
                !(base..base + 6).contains(p),
                "port {p} is in the range {base}..+6"
            );
        }
    }
}
