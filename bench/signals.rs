//! Ctrl-C handling without extra crates: SIGINT/SIGTERM set a flag that the engine and the
//! comparison runner poll, so runs stop cleanly and every child process is killed by its Drop
//! guard instead of being orphaned.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

extern "C" {
    // From the C library every Rust program on Unix links; `sighandler_t` is a pointer-sized
    // integer.
    fn signal(signum: i32, handler: usize) -> usize;
}

extern "C" fn on_signal(_sig: i32) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handlers (idempotent).
pub fn install() {
    // SAFETY: `on_signal` is an `extern "C" fn(i32)` that only touches an atomic, which is what
    // `signal(2)` requires of a handler.
    unsafe {
        signal(SIGINT, on_signal as extern "C" fn(i32) as usize);
        signal(SIGTERM, on_signal as extern "C" fn(i32) as usize);
    }
}

/// True once Ctrl-C (or SIGTERM) was received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
