//! SIGINT/SIGTERM → a shutdown flag; SIGUSR1 → "take a snapshot now" (like Redis' BGSAVE);
//! with plain `sigaction` (libc).
//!
//! The handler only stores to an atomic (async-signal-safe). It is installed without
//! `SA_RESTART`, so a blocked `epoll_wait` returns `EINTR` at once; in any case the event loop
//! never sleeps longer than one Raft tick, and checks the flag every iteration.

use std::sync::atomic::{AtomicBool, Ordering};

static SHUTDOWN: AtomicBool = AtomicBool::new(false);
static SNAPSHOT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGUSR1 {
        SNAPSHOT.store(true, Ordering::SeqCst);
    } else {
        SHUTDOWN.store(true, Ordering::SeqCst);
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGUSR1 and returns the shutdown flag.
pub fn install() -> std::io::Result<&'static AtomicBool> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
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
