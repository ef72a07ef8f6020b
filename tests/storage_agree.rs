//! The server and `raftkv-log verify` agree about every damaged log directory the storage
//! tests make (issue 16): `check_data_dir` (the server's startup check), the `raftkv-log verify`
//! binary and `Log::open` (the server's open of the log).
//!
//! Apart from tests/storage.rs on purpose: this test spawns processes, and between fork and exec
//! a child co-holds every descriptor of this process, including the lock of a log another test
//! thread drops and reopens (which then finds its directory locked).

mod storage_util;

use raftkv::raft::LogStore;
use raftkv::rng::Rng;
use raftkv::storage::inspect::Check;
use raftkv::storage::{Log, StorageError};
use std::fs;
use std::path::Path;
use storage_util::*;

/// `raftkv-log verify DIR`: exit code and output.
fn verify_tool(dir: &Path) -> (Option<i32>, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_raftkv-log"))
        .arg("verify")
        .arg(dir)
        .output()
        .expect("run raftkv-log");
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A valid segment header for a segment of `size` bytes starting at `first`.
fn seg_header(size: u64, first: u64) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[0..8].copy_from_slice(b"RKVLOG01");
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..16].copy_from_slice(&64u32.to_le_bytes());
    h[16..24].copy_from_slice(&size.to_le_bytes());
    h[24..32].copy_from_slice(&first.to_le_bytes());
    let c = crc32fast::hash(&h[0..60]);
    h[60..64].copy_from_slice(&c.to_le_bytes());
    h
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = fs::read(path).unwrap();
    f(&mut b);
    fs::write(path, b).unwrap();
}

/// Every kind of damage the storage tests make (torn tails at many bytes, stray bytes, bit
/// flips, missing and foreign segments, zero-byte and all-zero segment stubs, truncated
/// headers, leftover allocation temp files, damaged meta), on one log directory: the server's
/// startup check (`check_data_dir`), `raftkv-log verify` (the binary) and the server's open of
/// the log (`Log::open`) all refuse with the same error, or all accept with the same range;
/// and once the open has repaired a directory, `verify --strict` finds nothing left to repair.
#[test]
fn damaged_dirs_server_check_verify_and_open_agree() {
    let tmp = tmpdir();
    let base = tmp.path().join("base");
    let seg = 1024;
    let es = build_log(&base, seg, 60, 11);
    Log::open(&base, opts(seg))
        .unwrap()
        .compact(3, es[2].term)
        .unwrap();
    fs::remove_file(base.join("LOCK")).unwrap();
    let files = read_files(&base);
    let name_of = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let segs: Vec<String> = files
        .keys()
        .filter(|n| n.ends_with(".seg"))
        .cloned()
        .collect();
    assert!(segs.len() >= 4, "{segs:?}");
    let last = name_of(&last_seg(&base));
    let (lo, hi) = last_record_span(&base.join(&last), &es);
    let next = es.len() as u64 + 1;

    type Damage = Box<dyn Fn(&Path)>;
    let mut cases: Vec<(String, Damage)> = vec![("sound".into(), Box::new(|_| {}))];
    for cut in (lo..hi).step_by(7) {
        let l = last.clone();
        cases.push((
            format!("last record cut at byte {cut}"),
            Box::new(move |d| edit(&d.join(&l), |b| b.truncate(cut))),
        ));
        let l = last.clone();
        cases.push((
            format!("last record zeroed from byte {cut}"),
            Box::new(move |d| edit(&d.join(&l), |b| b[cut..hi].fill(0))),
        ));
    }
    let l = last.clone();
    cases.push((
        "stray bytes after the last record".into(),
        Box::new(move |d| edit(&d.join(&l), |b| b[hi + 10] = 0x5a)),
    ));
    let sealed = segs[segs.len() - 2].clone();
    cases.push((
        "stray bytes after a sealed segment's last record".into(),
        Box::new(move |d| {
            edit(&d.join(&sealed), |b| {
                let n = b.len();
                b[n - 1] = 1
            })
        }),
    ));
    let stub = format!("{next:020}.seg");
    for (what, bytes) in [
        (
            "zero-byte segment stub (a failed allocation, #16)",
            Vec::new(),
        ),
        (
            "all-zero new segment (torn creation)",
            vec![0u8; seg as usize],
        ),
        ("header-only new segment", seg_header(seg, next)),
        (
            "new segment's header cut at 30 bytes",
            seg_header(seg, next)[..30].to_vec(),
        ),
        ("new segment's header cut at 63 bytes", {
            let mut h = seg_header(seg, next);
            h.truncate(63);
            h
        }),
        ("new segment with a zeroed header CRC", {
            let mut h = seg_header(seg, next);
            h[60..64].fill(0);
            h.resize(seg as usize, 0);
            h
        }),
    ] {
        let s = stub.clone();
        cases.push((
            what.into(),
            Box::new(move |d| fs::write(d.join(&s), &bytes).unwrap()),
        ));
    }
    cases.push((
        "leftover allocation temp files".into(),
        Box::new(move |d| {
            fs::write(d.join(format!("{next:020}.seg.tmp")), b"").unwrap();
            let mut h = seg_header(seg, next + 1);
            h.resize(seg as usize, 0);
            fs::write(d.join(format!("{:020}.seg.tmp", next + 1)), h).unwrap();
        }),
    ));
    let mid = segs[1].clone();
    cases.push((
        "middle segment deleted".into(),
        Box::new(move |d| fs::remove_file(d.join(&mid)).unwrap()),
    ));
    let mid = segs[1].clone();
    cases.push((
        "foreign file in place of a segment".into(),
        Box::new(move |d| fs::write(d.join(&mid), b"hello, I am not a segment").unwrap()),
    ));
    cases.push((
        "damaged meta".into(),
        Box::new(|d| edit(&d.join("meta"), |b| b[9] ^= 1)),
    ));
    cases.push((
        "leftover trash".into(),
        Box::new(|d| fs::write(d.join("00000000000000000001.seg.trash"), [7u8; 100]).unwrap()),
    ));
    // Random bit flips, as in random_bit_flips_are_detected_or_only_cost_the_tail.
    let seed = 0xa9_2ee5;
    let mut rng = Rng::new(seed);
    let names: Vec<String> = files.keys().cloned().collect();
    for trial in 0..60 {
        let name = names[rng.range(0, names.len() as u64) as usize].clone();
        let at = rng.range(0, files[&name].len() as u64) as usize;
        let bit = rng.range(0, 8);
        cases.push((
            format!("seed {seed} trial {trial}: bit {bit} of byte {at} in {name} flipped"),
            Box::new(move |d| edit(&d.join(&name), |b| b[at] ^= 1 << bit)),
        ));
    }

    let (mut accepted, mut refused) = (0, 0);
    for (i, (name, damage)) in cases.iter().enumerate() {
        let d = tmp.path().join(format!("case{i}"));
        restore_into(&d, &files);
        damage(&d);
        let check = startup_check(&d);
        let (code, vt) = verify_tool(&d);
        let open = Log::open(&d, opts(seg)).map(|l| (l.first_index(), l.last_index()));
        let ctx = format!(
            "case {i} ({name}):\n  startup check: {check:?}\n  verify exit {code:?}: {vt}\n  \
             Log::open: {:?}",
            open.as_ref().map_err(|e| e.to_string())
        );
        match (&check, &open) {
            (Ok((f, l, _)), Ok(range)) => {
                accepted += 1;
                assert_eq!((*f, *l), *range, "{ctx}");
                assert_eq!(code, Some(0), "{ctx}");
                assert!(vt.contains(&format!("log {f}..={l},")), "{ctx}");
                // Repaired by the open: nothing left for the strictest check.
                if let Err(e) = raftkv::storage::inspect::inspect_log(&d, Check::Strict) {
                    panic!("{ctx}\n  after the open, verify --strict: {e}");
                }
                assert_eq!(startup_check(&d), Ok((*f, *l, Vec::new())), "{ctx}");
            }
            (Err(_), Err(e)) => {
                refused += 1;
                assert_eq!(code, Some(1), "{ctx}");
                assert!(matches!(e, StorageError::Corrupt { .. }), "{ctx}");
                // The same refusal: file, offset and reason.
                assert!(vt.contains(&e.to_string()), "{ctx}");
            }
            _ => panic!("the server's check and its open disagree: {ctx}"),
        }
    }
    println!(
        "{} cases: {accepted} accepted, {refused} refused",
        cases.len()
    );
    assert!(
        accepted > 10 && refused > 10,
        "{accepted} accepted, {refused} refused"
    );
}

fn restore_into(dir: &Path, files: &Files) {
    fs::create_dir_all(dir).unwrap();
    restore(dir, files);
}
