//! The directory lock (src/storage/lock.rs): one owner per directory, across threads and
//! processes, released by a crash; a second `raftkv serve` is refused. The server takes it once,
//! on its data directory (`DIR/LOCK`), and opens the log under it (`Log::open_in`: no
//! `DIR/log/LOCK`); a standalone `Log::open` locks its own directory.
//!
//! Separate from tests/storage.rs on purpose: these tests spawn processes, and between fork and
//! exec a child shares every descriptor of this process (close-on-exec acts only at exec), so
//! for that instant it co-holds any lock open here. A drop-then-reopen of a log in another test
//! thread of the same binary could then find its directory locked.

use bytes::Bytes;
use raftkv::raft::Entry;
use raftkv::storage::inspect::Check;
use raftkv::storage::{Log, LogOptions};
use std::io::{Read, Write};
use std::path::Path;

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn opts(segment_size: u64) -> LogOptions {
    LogOptions { segment_size }
}

/// Not a test on its own: run by `dir_lock_is_exclusive_across_processes` in a child process
/// (`--ignored --exact`), it opens the log in `RAFTKV_LOCK_HELPER_DIR`, prints a marker and holds
/// the lock until its stdin closes.
#[test]
#[ignore = "helper process for dir_lock_is_exclusive_across_processes"]
fn dir_lock_helper_process() {
    let Ok(dir) = std::env::var("RAFTKV_LOCK_HELPER_DIR") else {
        return;
    };
    let log = Log::open(Path::new(&dir), opts(4096)).unwrap();
    println!("\nRAFTKV-LOCK-HELD");
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(log);
}

/// Serializes the lock tests: a child spawned by one of them shares this process's descriptors
/// between fork and exec (close-on-exec only acts at exec), so for that instant it co-holds any
/// lock open in this process, and a drop-then-reopen in another test thread could see it held.
static LOCK_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn dir_lock_is_exclusive_in_process() {
    let _serial = LOCK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir();
    let log = Log::open(dir.path(), opts(4096)).unwrap();
    let e = Log::open(dir.path(), opts(4096))
        .err()
        .expect("second open of a locked dir must fail");
    let msg = e.to_string();
    assert!(
        msg.contains(dir.path().to_str().unwrap()) && msg.contains("locked by"),
        "{msg}"
    );
    assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    drop(log);
    // Released with the Log.
    let mut log = Log::open(dir.path(), opts(4096)).unwrap();
    log.append(&[Entry {
        index: 1,
        term: 1,
        entry_type: 0,
        data: Bytes::from_static(b"x"),
    }])
    .unwrap();
    log.sync().unwrap();
    // The LOCK file is not mistaken for log data by the inspection tool.
    let info = raftkv::storage::inspect::inspect_log(dir.path(), Check::Strict).unwrap();
    assert_eq!(info.entries(), 1);
}

#[test]
fn dir_lock_is_exclusive_across_processes() {
    use std::process::{Command, Stdio};
    let _serial = LOCK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "dir_lock_helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAFTKV_LOCK_HELPER_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut child = Kill(child);
    // Wait (blocking read, bounded by the child's lifetime) for the child to hold the lock.
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "helper exited before locking");
        if line.contains("RAFTKV-LOCK-HELD") {
            break;
        }
    }
    let pid = child.0.id();
    let e = Log::open(dir.path(), opts(4096))
        .err()
        .expect("open while another process holds the dir must fail");
    let msg = e.to_string();
    assert!(
        msg.contains(dir.path().to_str().unwrap()) && msg.contains(&format!("process {pid}")),
        "{msg}"
    );
    // A crash (SIGKILL) releases the lock: nothing stale is left behind.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    Log::open(dir.path(), opts(4096)).unwrap();
}

/// A second `raftkv serve` on a data directory a running server owns exits at once with an
/// error naming the directory and the owner's pid; the owner is unaffected.
#[test]
fn second_server_on_the_same_data_dir_is_refused() {
    use std::process::{Command, Stdio};
    let _serial = LOCK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let serve = |peer: u16, client: u16| {
        Command::new(env!("CARGO_BIN_EXE_raftkv"))
            .arg("serve")
            .arg("--id=1")
            .arg("--data-dir")
            .arg(dir.path())
            .arg(format!("--peers=1=127.0.0.1:{peer}/127.0.0.1:{client}"))
            // One node, no peers: nothing to authenticate.
            .args(["--tick-ms=10", "--segment-size=1048576", "--insecure-peers"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (p1, c1) = (free(), free());
    let mut first = Kill(serve(p1, c1));
    // Up (and so holding the lock) once it answers a status request.
    let mut cl = raftkv::client::Client::new(vec![format!("127.0.0.1:{c1}")], Default::default());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while cl.status(&format!("127.0.0.1:{c1}")).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "first server did not come up"
        );
        assert!(first.0.try_wait().unwrap().is_none(), "first server exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (p2, c2) = (free(), free());
    let mut second = Kill(serve(p2, c2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = second.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second server did not exit: the directory lock did not stop it"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    second
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{err}");
    // The server locks the data directory itself (DIR/LOCK, before it opens anything in it;
    // the log is opened under that lock and takes none of its own).
    assert!(
        err.contains(dir.path().to_str().unwrap())
            && err.contains(&format!("locked by process {}", first.0.id())),
        "{err}"
    );
    assert!(first.0.try_wait().unwrap().is_none(), "first server died");
    cl.status(&format!("127.0.0.1:{c1}"))
        .expect("first server still serves");
}

/// The server's data directory lock is the storage layer's `DirLock` on DIR, taken before
/// anything in the directory is opened: a refused second node leaves the owner's in-progress
/// snapshot temp file (which `SnapshotStore::open` would delete) and everything else alone.
#[test]
fn server_locks_its_data_dir_before_touching_anything() {
    use raftkv::server::{parse_peers, Server, ServerConfig};
    use raftkv::storage::DirLock;
    let _serial = LOCK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let d = tmpdir();
    let peers = parse_peers("1=127.0.0.1:0/127.0.0.1:0").unwrap();
    let cfg = ServerConfig::new(1, d.path().to_path_buf(), peers).unwrap();
    let held = DirLock::acquire(d.path()).unwrap();
    let tmp = d.path().join("snap").join("0000000000000009.snap.tmp");
    std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
    std::fs::write(&tmp, b"in progress").unwrap();
    let err = Server::open(cfg.clone())
        .err()
        .expect("a locked dir must be refused");
    assert!(err.contains("locked by process"), "{err}");
    assert!(err.contains(d.path().to_str().unwrap()), "{err}");
    assert!(tmp.exists(), "the owner's temp file was deleted");
    assert!(!d.path().join("hardstate").exists() && !d.path().join("log").exists());
    drop(held);
    // Unlocked: the node opens (and cleans up the leftover temp file)...
    let server = Server::open(cfg.clone()).unwrap();
    assert!(!tmp.exists());
    // ...and holds the lock itself while it lives: one lock, on the data directory (the log
    // is opened under it and takes none of its own).
    let err = Server::open(cfg.clone())
        .err()
        .expect("a second node must be refused");
    assert!(err.contains("locked by process"), "{err}");
    let log_lock = d.path().join("log").join("LOCK");
    assert!(
        d.path().join("LOCK").exists() && !log_lock.exists(),
        "expected DIR/LOCK only; DIR/log/LOCK exists: {}",
        log_lock.exists()
    );
    let e =
        DirLock::acquire(d.path()).expect_err("the data dir must be locked while the node lives");
    assert!(e.to_string().contains("locked by process"), "{e}");
    drop(server);
    drop(Server::open(cfg).unwrap());
}

/// `Log::open_in`: a log opened under its owner's lock on a containing directory takes no lock
/// of its own, keeps the owner's lock alive for as long as it lives (even when the owner drops
/// its handle first), and refuses a lock that does not cover its directory.
#[test]
fn log_opened_under_the_data_dir_lock_shares_it() {
    use raftkv::storage::DirLock;
    let _serial = LOCK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let d = tmpdir();
    let other = tmpdir();
    let log_dir = d.path().join("log");
    let lock = DirLock::acquire(d.path()).unwrap();
    let foreign = DirLock::acquire(other.path()).unwrap();
    let e = Log::open_in(&log_dir, opts(4096), 0, &foreign)
        .err()
        .expect("a lock on another directory must be refused");
    assert!(
        e.to_string().contains("not inside the locked directory"),
        "{e}"
    );
    assert!(!log_dir.exists(), "refused, yet the log dir was created");
    let log = Log::open_in(&log_dir, opts(4096), 0, &lock).unwrap();
    assert!(
        !log_dir.join("LOCK").exists(),
        "the log took a lock of its own"
    );
    // The owner's handle goes first: the log still holds the data directory.
    drop(lock);
    let e = DirLock::acquire(d.path()).expect_err("the log's share must keep the data dir locked");
    assert!(
        e.to_string()
            .contains(&format!("locked by process {}", std::process::id())),
        "{e}"
    );
    drop(log);
    DirLock::acquire(d.path()).expect("released with the last handle");
}
