//! Writing a snapshot without stalling the node.
//!
//! # Fork
//!
//! The server is one thread, so `fork()` gives the child an exact, consistent copy-on-write
//! image of the `KvStore` at the moment of the call, for the price of copying page tables.
//! The child writes that image to a snapshot file through the storage layer and `_exit`s; the
//! parent goes straight back to serving and checks on the child with `waitpid(WNOHANG)`
//! ([`BackgroundSnapshot::poll`]) when the child's pipe ([`BackgroundSnapshot::completion_fd`])
//! wakes its event loop, and on every Raft tick. The kernel copies only the pages the parent writes to
//! while the child runs (at worst the whole store: memory headroom of 2x the KV state is needed).
//!
//! Why this is safe here:
//! - The server has a single thread, so no other thread can hold a lock (a mutex, the allocator's
//!   arenas, the logger, stdio) at the moment of the fork; the child never finds a lock it cannot
//!   take. (The test harness is multi-threaded; there the child relies on glibc making `malloc`
//!   fork-safe, and it takes no other locks: it does not log or print.)
//! - The child touches nothing it shares with the parent except read-only memory: it closes every
//!   inherited descriptor above stderr first (sockets, the epoll instance, log segments; so that
//!   connections the parent closes really close and the child never holds the listening port),
//!   opens its own snapshot file, and writes only that.
//! - The child leaves only through `_exit`: no destructors of the parent's objects run (they
//!   would flush the parent's buffers twice, delete the parent's temp files, send on its
//!   sockets), no atexit handlers, no stdio flush. A panic in the child is caught and turned into
//!   an exit status; it never unwinds into the parent's frames.
//! - The child lowers its CPU priority so that on a small machine the serving thread wins.
//! - The child caps its disk bandwidth ([`WritePacing`], default 32 MiB/s, in 1 MiB slices each
//!   pushed to disk as it goes): it has no deadline, while the node's log fsyncs on the same
//!   disk have. It is a separate process, so it may sleep.
//!
//! The result comes back through the exit status; an error message through a pipe.
//!
//! # Inline
//!
//! [`SnapshotMode::Inline`] writes the snapshot synchronously inside `start` behind the same
//! interface, for the deterministic simulator and for tests that must not fork.

use super::pacing::{RateLimiter, WritePacing};
use super::SnapshotError;
use crate::kv::KvStore;
use crate::raft::SnapshotMeta;
use crate::storage::{snapshot::file_name, SnapshotStore};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// How a snapshot is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// In a forked child process (the server).
    Fork,
    /// Synchronously, inside `start` (simulator, tests).
    Inline,
}

/// A finished snapshot: durable and published in the snapshot directory.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotDone {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
}

enum State {
    /// A forked child is writing; `pipe` is the read end of its error channel.
    Child { pid: libc::pid_t, pipe: OwnedFd },
    /// Finished; the result is handed out once by `poll`.
    Finished(Option<Result<SnapshotDone, SnapshotError>>),
}

/// A snapshot being written in the background. Poll it from a timer until it returns `Some`.
/// Dropping it while the child still runs kills and reaps the child (its temp file is removed
/// by `SnapshotStore::open` on the next start).
pub struct BackgroundSnapshot {
    meta: SnapshotMeta,
    /// The snapshot directory (where the file lands).
    dir: PathBuf,
    state: State,
}

/// Largest error message the child sends back (it must never block on a full pipe).
const MAX_CHILD_MSG: usize = 4096;

/// Writes the snapshot; with `pacing` (only ever in the forked child: it sleeps) the writer goes
/// slice by slice at no more than the pacing's rate.
/// Sleeps as needed to keep the bytes reported to it under `rate` bytes per second (one
/// `slice` may go ahead of the rate: the first one is done at once).
fn pacer(rate: u64, slice: u64) -> impl FnMut(u64) + Send {
    let start = std::time::Instant::now();
    let mut limiter = RateLimiter::new(rate, slice);
    move |n| {
        let wait = limiter.take(start.elapsed(), n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

fn write_snapshot(
    store: &mut SnapshotStore,
    meta: &SnapshotMeta,
    kv: &KvStore,
    pacing: Option<WritePacing>,
) -> Result<SnapshotDone, SnapshotError> {
    let mut w = store.create(meta)?;
    if let Some(p) = pacing.filter(|p| p.bytes_per_sec > 0) {
        w.set_pacing(
            p.slice_bytes,
            Box::new(pacer(p.bytes_per_sec, p.slice_bytes)),
        );
    }
    kv.write_snapshot(&mut w).map_err(|e| {
        SnapshotError::Other(format!(
            "writing snapshot {} in {}: {e}",
            file_name(meta.index, meta.term),
            store.dir().display()
        ))
    })?;
    let path = w.finish()?;
    // `finish` moved the snapshots beyond the newest two aside; delete them here, where time
    // does not matter, in slices with pauses: a whole unlink of a few hundred MB holds the
    // filesystem journal long enough to stall every log fsync on the disk (docs/snapshots.md).
    store.prune()?;
    match pacing.filter(|p| p.bytes_per_sec > 0) {
        Some(p) => {
            // Freeing is cheaper for the disk than writing: 4x the write rate.
            let mut pace = pacer(p.bytes_per_sec.saturating_mul(4), p.slice_bytes);
            while store.trash_pending().1 > 0 {
                pace(store.trash_step(std::time::Duration::ZERO));
            }
        }
        None => {
            store.trash_step(std::time::Duration::MAX);
        }
    }
    Ok(SnapshotDone {
        meta: meta.clone(),
        path,
    })
}

impl BackgroundSnapshot {
    /// Starts writing `kv` as the snapshot `meta` into `store`. `meta.index` must be the
    /// applied index of `kv` (the snapshot claims to cover exactly that prefix of the log) and
    /// `meta.conf` the membership in force at that index.
    ///
    /// Fork mode returns as soon as the child exists; the parent may then mutate `kv` freely.
    /// The child's disk bandwidth is capped by [`WritePacing::from_env`] (the default rate
    /// unless `RAFTKV_SNAPSHOT_WRITE_RATE` is set); see [`BackgroundSnapshot::start_paced`].
    pub fn start(
        mode: SnapshotMode,
        store: &mut SnapshotStore,
        meta: SnapshotMeta,
        kv: &KvStore,
    ) -> Result<BackgroundSnapshot, SnapshotError> {
        Self::start_paced(mode, store, meta, kv, WritePacing::from_env())
    }

    /// `start` with an explicit disk-bandwidth cap for the forked child (Inline mode ignores
    /// it: it runs in the caller and must never sleep).
    pub fn start_paced(
        mode: SnapshotMode,
        store: &mut SnapshotStore,
        meta: SnapshotMeta,
        kv: &KvStore,
        pacing: WritePacing,
    ) -> Result<BackgroundSnapshot, SnapshotError> {
        if meta.index != kv.applied() {
            return Err(SnapshotError::Other(format!(
                "snapshot at index {} requested but the KV state is at index {}",
                meta.index,
                kv.applied()
            )));
        }
        let state = match mode {
            SnapshotMode::Inline => State::Finished(Some(write_snapshot(store, &meta, kv, None))),
            SnapshotMode::Fork => fork_child(store, &meta, kv, pacing)?,
        };
        Ok(BackgroundSnapshot {
            meta,
            dir: store.dir().to_path_buf(),
            state,
        })
    }

    /// The snapshot being written.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The read end of the forked child's pipe, for an event loop to watch: it becomes
    /// readable when the child reports its result and again at end-of-file when the child
    /// exits (it holds the only write end), so the parent learns of the end at once instead
    /// of at its next timer. `None` when no child runs (inline mode, or already collected).
    pub fn completion_fd(&self) -> Option<RawFd> {
        match &self.state {
            State::Child { pipe, .. } => Some(pipe.as_raw_fd()),
            State::Finished(_) => None,
        }
    }

    /// True while a forked child is still writing (or its exit not yet collected).
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Child { .. })
    }

    /// Non-blocking: `None` while the snapshot is being written (and after the result was
    /// handed out), `Some(result)` exactly once when it finished.
    pub fn poll(&mut self) -> Option<Result<SnapshotDone, SnapshotError>> {
        let (pid, fd) = match &mut self.state {
            State::Finished(r) => return r.take(),
            State::Child { pid, pipe } => (*pid, &*pipe),
        };
        let mut status: libc::c_int = 0;
        // SAFETY: plain syscall on our own child's pid with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == 0 {
            return None;
        }
        let result = if r < 0 {
            Err(SnapshotError::Other(format!(
                "waiting for snapshot child {pid}: {} (is SIGCHLD ignored?)",
                std::io::Error::last_os_error()
            )))
        } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            let expected = self.dir.join(file_name(self.meta.index, self.meta.term));
            Ok(SnapshotDone {
                meta: self.meta.clone(),
                path: child_path(fd, expected),
            })
        } else {
            let msg = read_child_msg(fd);
            let how = if libc::WIFEXITED(status) {
                format!("exited with status {}", libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                format!("was killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("ended with wait status {status:#x}")
            };
            Err(SnapshotError::Other(format!(
                "snapshot child {pid} for index {} {how}: {}",
                self.meta.index,
                if msg.is_empty() { "no message" } else { &msg }
            )))
        };
        self.state = State::Finished(None);
        Some(result)
    }
}

/// On success the child sends the published path through the pipe (the storage layer decides
/// where the file goes); fall back to the expected path if the message is missing.
fn child_path(fd: &OwnedFd, expected: PathBuf) -> PathBuf {
    let msg = read_child_msg(fd);
    if msg.is_empty() {
        expected
    } else {
        PathBuf::from(msg)
    }
}

/// Reads whatever the (exited) child left in the pipe. Non-blocking: another process forked
/// meanwhile may still hold a copy of the write end, so EOF may never come.
fn read_child_msg(fd: &OwnedFd) -> String {
    let mut f = match fd.try_clone() {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => return String::new(),
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while out.len() < MAX_CHILD_MSG {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break, // WouldBlock: all the child wrote is read
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fork_child(
    store: &mut SnapshotStore,
    meta: &SnapshotMeta,
    kv: &KvStore,
    pacing: WritePacing,
) -> Result<State, SnapshotError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: valid pointer to two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(SnapshotError::Other(format!(
            "creating the snapshot child's pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: pipe2 just returned these two fresh descriptors; each is owned exactly once.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    // SAFETY: see the module docs: the caller (the server) is single-threaded, and the child
    // only runs `child_main`, which never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SnapshotError::Other(format!(
            "fork for snapshot at index {}: {}",
            meta.index,
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        child_main(parent, fds[1], store, meta, kv, pacing);
    }
    drop(wr);
    Ok(State::Child { pid, pipe: rd })
}

/// The child: write the snapshot, report through the pipe, `_exit`. Never returns.
fn child_main(
    parent: libc::pid_t,
    wr: libc::c_int,
    store: &mut SnapshotStore,
    meta: &SnapshotMeta,
    kv: &KvStore,
    pacing: WritePacing,
) -> ! {
    // SAFETY (whole function): raw syscalls on descriptors this process owns; `_exit` ends the
    // process without running any of the parent's destructors or atexit handlers.
    unsafe {
        // Die with the node. An orphaned child would go on writing into a data directory whose
        // lock died with the node: a restarted node there could have its own snapshot temp
        // file (same index and term) renamed into place half-written by us, or files pruned.
        // (Linux; checked after the prctl in case the node died before it. The signal follows
        // the forking *thread*: the server forks from its only thread.)
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(3);
        }
        close_inherited(wr);
        libc::nice(19);
    }
    // The inherited deletion queue holds descriptors close_inherited just closed.
    store.forget_inherited_trash();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_snapshot(store, meta, kv, Some(pacing))
    }));
    let (code, msg) = match outcome {
        Ok(Ok(done)) => (0, done.path.display().to_string()),
        Ok(Err(e)) => (1, e.to_string()),
        Err(_) => (2, "the snapshot child panicked".to_string()),
    };
    let bytes = &msg.as_bytes()[..msg.len().min(MAX_CHILD_MSG)];
    unsafe {
        libc::write(wr, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(code)
    }
}

/// Closes every descriptor above stderr except `keep` (Linux close_range; older kernels keep
/// them, which is harmless apart from delaying socket closes until the child exits).
unsafe fn close_inherited(keep: libc::c_int) {
    let keep = keep as libc::c_uint;
    if keep > 3 {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            keep - 1,
            0 as libc::c_uint,
        );
    }
    libc::syscall(
        libc::SYS_close_range,
        keep + 1,
        libc::c_uint::MAX,
        0 as libc::c_uint,
    );
}

impl Drop for BackgroundSnapshot {
    fn drop(&mut self) {
        if let State::Child { pid, .. } = self.state {
            // SAFETY: our own child; reap it so no zombie is left.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
            }
        }
    }
}
