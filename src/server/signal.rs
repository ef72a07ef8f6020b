//! SIGINT/SIGTERM → a shutdown flag; SIGUSR1 → "take a snapshot now" (like Redis' BGSAVE);
//! SIGHUP → "re-read the secret files" for a node (`reload.rs`, as nginx and PostgreSQL do)
//! and a shutdown for `raftkv cluster` (its terminal hung up: stop the nodes it started, as
//! the default action did); with plain `sigaction` (libc).
//!
//! The handler only stores to an atomic (async-signal-safe). It is installed without
//! `SA_RESTART`, so a blocked `epoll_wait` returns `EINTR` at once; in any case the event loop
//! never sleeps longer than one Raft tick, and checks the flag every iteration.

use std::sync::atomic::{AtomicBool, Ordering};

static SHUTDOWN: AtomicBool = AtomicBool::new(false);
static SNAPSHOT: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);
/// What SIGHUP means in this process ([`OnHangup`]); read by the handler.
static HUP_RELOADS: AtomicBool = AtomicBool::new(false);

/// What SIGHUP asks of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHangup {
    /// A node (`raftkv serve`): re-read the secret files ([`take_reload_request`]).
    Reload,
    /// A supervisor (`raftkv cluster`): shut down, as SIGTERM.
    Shutdown,
}

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGUSR1 {
        SNAPSHOT.store(true, Ordering::SeqCst);
    } else if sig == libc::SIGHUP && HUP_RELOADS.load(Ordering::SeqCst) {
        RELOAD.store(true, Ordering::SeqCst);
    } else {
        SHUTDOWN.store(true, Ordering::SeqCst);
    }
}

/// Installs the handler for SIGINT, SIGTERM, SIGUSR1 and SIGHUP (meaning `on_hangup`) and
/// returns the shutdown flag.
pub fn install(on_hangup: OnHangup) -> std::io::Result<&'static AtomicBool> {
    HUP_RELOADS.store(on_hangup == OnHangup::Reload, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (one atomic
        // store) and has the `extern "C" fn(c_int)` signature sa_handler expects.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(&SHUTDOWN)
}

/// The flag (set by a signal, or by [`request`]).
pub fn flag() -> &'static AtomicBool {
    &SHUTDOWN
}

/// Asks the process to shut down, as a signal would.
pub fn request() {
    SHUTDOWN.store(true, Ordering::SeqCst);
}

/// True once per SIGUSR1 received since the last call: an operator asked for a snapshot now.
pub fn take_snapshot_request() -> bool {
    SNAPSHOT.swap(false, Ordering::SeqCst)
}

/// True once per SIGHUP received since the last call: an operator asked to re-read the
/// secret files.
pub fn take_reload_request() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}
