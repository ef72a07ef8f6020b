//! Helpers shared by the storage test binaries (tests/storage.rs, tests/storage_agree.rs):
//! scratch dirs, random entries, a synced multi-segment log, copies of a log directory, and the
//! server's startup check on a directory.
#![allow(dead_code)] // each test crate uses a different subset

use bytes::Bytes;
use raftkv::raft::{Entry, LogStore};
use raftkv::rng::Rng;
use raftkv::storage::inspect::Check;
use raftkv::storage::{Log, LogOptions};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// A scratch directory, on tmpfs when available: these tests simulate crashes by editing files,
/// so they do not need a real disk, and fsync on a shared CI disk costs milliseconds each.
pub fn tmpdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("raftkv-storage-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

pub fn opts(segment_size: u64) -> LogOptions {
    LogOptions { segment_size }
}

pub fn entry(rng: &mut Rng, index: u64, term: u64, max_len: u64) -> Entry {
    let n = rng.range(0, max_len + 1) as usize;
    let data: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    Entry {
        index,
        term,
        entry_type: (rng.range(0, 10) == 0) as i32,
        data: Bytes::from(data),
    }
}

pub fn all_entries(log: &Log) -> Vec<Entry> {
    let (f, l) = (log.first_index(), log.last_index());
    if l < f {
        return Vec::new();
    }
    log.entries(f, l + 1, u64::MAX).unwrap()
}

/// Copies of every file in the log dir as of the last durable point.
pub type Files = BTreeMap<String, Vec<u8>>;

pub fn read_files(dir: &Path) -> Files {
    let mut m = Files::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        m.insert(
            e.file_name().to_string_lossy().into_owned(),
            fs::read(e.path()).unwrap(),
        );
    }
    m
}

/// Builds a synced log in `dir` spanning several segments; returns its entries.
pub fn build_log(dir: &Path, seg: u64, n: u64, seed: u64) -> Vec<Entry> {
    let mut rng = Rng::new(seed);
    let mut log = Log::open(dir, opts(seg)).unwrap();
    // Non-empty random payloads (a run of zeros could pass for a lost write).
    let es: Vec<Entry> = (1..=n)
        .map(|i| {
            let mut e = entry(&mut rng, i, 1 + i / 40, 120);
            let mut d = e.data.to_vec();
            d.push(1);
            d.iter_mut().for_each(|b| *b |= 1);
            e.data = Bytes::from(d);
            e
        })
        .collect();
    log.append(&es).unwrap();
    log.sync().unwrap();
    es
}

pub fn last_seg(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

/// (offset of the last record, end of the last record) in the segment holding `es`'s tail.
pub fn last_record_span(path: &Path, es: &[Entry]) -> (usize, usize) {
    let first: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let mut off = 64;
    let mut last = off;
    for e in &es[(first - 1) as usize..] {
        last = off;
        off += 32 + e.data.len();
    }
    (last, off)
}

pub fn restore(dir: &Path, files: &Files) {
    for e in fs::read_dir(dir).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (name, b) in files {
        fs::write(dir.join(name), b).unwrap();
    }
}

/// What the server's startup check (`check_data_dir`, also `raftkv-log verify`) says about a
/// log directory: `Ok((first, last, warnings))` or the refusal.
pub fn startup_check(dir: &Path) -> Result<(u64, u64, Vec<String>), String> {
    let dirs = raftkv::storage::inspect::resolve(dir).map_err(|e| e.to_string())?;
    let rec = raftkv::snapshot::recover::check_data_dir(&dirs, Check::Lenient)
        .map_err(|e| e.to_string())?;
    Ok((
        rec.recovered.first_index,
        rec.recovered.last_index,
        rec.warnings,
    ))
}
