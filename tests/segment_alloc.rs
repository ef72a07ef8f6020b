//! A real failed segment allocation (issue 16), not the fault hook of tests/storage.rs: a child
//! process whose file-size limit (`RLIMIT_FSIZE`, settable unprivileged) is below the segment
//! size appends until `posix_fallocate` of the next segment fails (EFBIG, the same path as
//! ENOSPC). Nothing may be left behind: no stub segment, no temp file; the server's startup check
//! and `raftkv-log verify` call the log sound, and it reopens with every entry appended before
//! the failure.
//!
//! A separate test binary on purpose: the limit is set in a child process (it is process-wide),
//! and between fork and exec a child shares this process's descriptors.

use bytes::Bytes;
use raftkv::raft::{Entry, LogStore};
use raftkv::storage::inspect::Check;
use raftkv::storage::{Log, LogOptions};
use std::path::Path;

const SEG: u64 = 64 << 10;

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        entry_type: 0,
        data: Bytes::from(vec![(index % 251) as u8 | 1; 700]),
    }
}

/// Not a test on its own: run by `a_real_failed_allocation_leaves_nothing_behind` in a child
/// process (`--ignored --exact`). Opens the log in `RAFTKV_ALLOC_HELPER_DIR`, lowers its
/// file-size limit below the segment size, appends until the allocation fails and prints
/// `RAFTKV-ALLOC-FAILED <last index> <error>`.
#[test]
#[ignore = "helper process for a_real_failed_allocation_leaves_nothing_behind"]
fn alloc_limit_helper_process() {
    let Ok(dir) = std::env::var("RAFTKV_ALLOC_HELPER_DIR") else {
        return;
    };
    let mut log = Log::open(Path::new(&dir), LogOptions { segment_size: SEG }).unwrap();
    // SAFETY: plain syscalls on this (helper) process. Without SIG_IGN, SIGXFSZ would kill
    // the process; ignored, the call that crosses the limit fails with EFBIG instead.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: SEG / 2,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let mut i = 1;
    let err = loop {
        if let Err(e) = log.append(&[entry(i)]) {
            break e;
        }
        i += 1;
        assert!(i < 10_000, "the allocation never failed");
    };
    log.sync().unwrap();
    println!("\nRAFTKV-ALLOC-FAILED {} {err}", log.last_index());
}

#[test]
fn a_real_failed_allocation_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "alloc_limit_helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAFTKV_ALLOC_HELPER_DIR", dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RAFTKV-ALLOC-FAILED "))
        .unwrap_or_else(|| panic!("helper did not report a failed allocation:\n{text}"));
    let (last, err) = line.split_once(' ').unwrap();
    let last: u64 = last.parse().unwrap();
    assert!(last > 10, "{line}");
    let next = format!("{:020}.seg", last + 1);
    assert!(
        err.contains("File too large") && err.contains(&next),
        "expected EFBIG naming the new segment: {line}"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["00000000000000000001.seg".to_string(), "LOCK".to_string()],
        "the failed allocation left a file behind"
    );
    // verify (the binary) and the server's startup check: sound, no warning, same range.
    let v = std::process::Command::new(env!("CARGO_BIN_EXE_raftkv-log"))
        .arg("verify")
        .arg(dir.path())
        .output()
        .unwrap();
    let vt = String::from_utf8_lossy(&v.stdout).into_owned();
    assert_eq!(v.status.code(), Some(0), "{vt}");
    assert!(
        !vt.contains("WARNING") && vt.contains(&format!("log 1..={last},")),
        "{vt}"
    );
    let strict = raftkv::storage::inspect::inspect_log(dir.path(), Check::Strict).unwrap();
    assert_eq!(strict.last_index(), last);
    // Without the limit the log takes the entry that failed and rolls over.
    let mut log = Log::open(dir.path(), LogOptions { segment_size: SEG }).unwrap();
    assert_eq!(log.last_index(), last);
    log.append(&[entry(last + 1)]).unwrap();
    log.sync().unwrap();
    assert_eq!(log.segment_count(), 2);
    let got = log.entries(1, last + 2, u64::MAX).unwrap();
    assert_eq!(got, (1..=last + 1).map(entry).collect::<Vec<_>>());
}
