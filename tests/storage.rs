//! Storage tests: the log against an in-memory model (proptest, with simulated crashes), torn
//! tails at every byte, random bit flips, hard state torn writes, snapshot damage.

use bytes::Bytes;
use proptest::prelude::*;
use raftkv::raft::{ConfState, Entry, HardState, LogError, LogStore, SnapshotMeta};
use raftkv::rng::Rng;
use raftkv::storage::{
    HardStateFile, Log, LogOptions, SnapshotReader, SnapshotStore, StorageError,
};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn opts(segment_size: u64) -> LogOptions {
    LogOptions { segment_size }
}

fn entry(rng: &mut Rng, index: u64, term: u64, max_len: u64) -> Entry {
    let n = rng.range(0, max_len + 1) as usize;
    let data: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    Entry {
        index,
        term,
        entry_type: (rng.range(0, 10) == 0) as i32,
        data: Bytes::from(data),
    }
}

fn all_entries(log: &Log) -> Vec<Entry> {
    let (f, l) = (log.first_index(), log.last_index());
    if l < f {
        return Vec::new();
    }
    log.entries(f, l + 1, u64::MAX).unwrap()
}

fn replayed(log: &Log) -> Vec<Entry> {
    let mut v = Vec::new();
    log.replay(0, u64::MAX, &mut |e| {
        v.push(e);
        Ok(())
    })
    .unwrap();
    v
}

// ---------------------------------------------------------------------------------------------
// Basic behaviour.

#[test]
fn append_read_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(1);
    let mut log = Log::open(dir.path(), opts(2048)).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 0));
    assert_eq!(log.term(0), Ok(0));
    assert_eq!(log.term(1), Err(LogError::Unavailable));
    let es: Vec<Entry> = (1..=200)
        .map(|i| entry(&mut rng, i, 1 + i / 50, 100))
        .collect();
    for chunk in es.chunks(7) {
        log.append(chunk).unwrap();
    }
    log.sync().unwrap();
    assert!(log.segment_count() > 5, "{}", log.segment_count());
    assert_eq!(all_entries(&log), es);
    assert_eq!(log.term(120), Ok(3));
    drop(log);
    let log = Log::open(dir.path(), opts(2048)).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 200));
    assert_eq!(all_entries(&log), es);
    assert_eq!(replayed(&log), es);
    // max_bytes: at least one entry, then stop once over the budget.
    let one = log.entries(10, 20, 0).unwrap();
    assert_eq!(one.len(), 1);
    let some = log.entries(10, 200, 500).unwrap();
    let sz: usize = some.iter().map(prost::Message::encoded_len).sum();
    assert!(sz <= 500 && !some.is_empty());
    assert_eq!(log.entries(10, 202, 100), Err(LogError::Unavailable));
}

#[test]
fn conflicting_append_truncates_and_compaction_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(2);
    let mut log = Log::open(dir.path(), opts(1024)).unwrap();
    let es: Vec<Entry> = (1..=60).map(|i| entry(&mut rng, i, 1, 80)).collect();
    log.append(&es).unwrap();
    let new: Vec<Entry> = (40..=45).map(|i| entry(&mut rng, i, 2, 80)).collect();
    log.append(&new).unwrap();
    log.sync().unwrap();
    assert_eq!(log.last_index(), 45);
    assert_eq!(log.term(45), Ok(2));
    assert_eq!(log.term(39), Ok(1));
    let segs_before = log.segment_count();
    log.compact(30, 1).unwrap();
    assert!(log.segment_count() < segs_before);
    assert_eq!(log.first_index(), 31);
    assert_eq!(log.snapshot_index_term(), (30, 1));
    assert_eq!(log.term(30), Ok(1));
    assert_eq!(log.term(29), Err(LogError::Compacted));
    assert_eq!(log.entries(30, 31, u64::MAX), Err(LogError::Compacted));
    drop(log);
    let mut log = Log::open(dir.path(), opts(1024)).unwrap();
    assert_eq!(log.snapshot_index_term(), (30, 1));
    assert_eq!((log.first_index(), log.last_index()), (31, 45));
    assert_eq!(log.term(30), Ok(1));
    let mut expect: Vec<Entry> = es[30..39].to_vec();
    expect.extend(new.iter().cloned());
    assert_eq!(all_entries(&log), expect);
    // Reset after an installed snapshot.
    log.reset(100, 7).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (101, 100));
    assert_eq!(log.term(100), Ok(7));
    log.append(&[entry(&mut rng, 101, 7, 10)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = Log::open(dir.path(), opts(1024)).unwrap();
    assert_eq!(log.snapshot_index_term(), (100, 7));
    assert_eq!((log.first_index(), log.last_index()), (101, 101));
    // Bad appends are errors, not panics.
    let mut log = log;
    assert!(log.append(&[entry(&mut rng, 200, 7, 1)]).is_err());
    assert!(log.append(&[entry(&mut rng, 50, 7, 1)]).is_err());
    let big = Entry {
        index: 102,
        term: 7,
        entry_type: 0,
        data: Bytes::from(vec![1u8; 2000]),
    };
    assert!(log.append(&[big]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Model-based test with simulated crashes.

/// Copies of every file in the log dir as of the last durable point.
type Files = BTreeMap<String, Vec<u8>>;

fn read_files(dir: &Path) -> Files {
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

/// Simulates a crash: every 512-byte sector (except the header, fsynced at creation)
/// of the active (last) segment independently keeps
/// its current contents or reverts to its contents at the last durable point (zeros for bytes
/// that did not exist). Sealed segments, the meta file and deletions are durable already.
fn crash(dir: &Path, durable: &Files, rng: &mut Rng) {
    let cur = read_files(dir);
    let Some(last) = cur.keys().filter(|k| k.ends_with(".seg")).max().cloned() else {
        return;
    };
    let now = &cur[&last];
    let base = durable.get(&last);
    if base.is_none() && rng.chance(0.3) {
        // Created since the last sync and its directory entry never reached the disk.
        fs::remove_file(dir.join(&last)).unwrap();
        return;
    }
    let mut out = now.clone();
    for s in (0..now.len()).step_by(512) {
        let e = (s + 512).min(now.len());
        // The 64-byte segment header is fsynced when the segment is created.
        if rng.chance(0.5) {
            for i in s.max(64)..e {
                out[i] = base.and_then(|v| v.get(i)).copied().unwrap_or(0);
            }
        }
    }
    fs::write(dir.join(&last), out).unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` entries starting `back` entries before last+1 (a conflict when back > 0).
    Append {
        back: u8,
        n: u8,
        bump: bool,
        seed: u64,
    },
    Truncate {
        back: u8,
    },
    Compact {
        frac: u8,
    },
    Reset {
        ahead: u8,
    },
    Sync,
    Reopen,
    Crash {
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..4, 1u8..12, any::<bool>(), any::<u64>())
            .prop_map(|(back, n, bump, seed)| Op::Append { back: if back == 3 { 0 } else { back }, n, bump, seed }),
        1 => (1u8..6).prop_map(|back| Op::Truncate { back }),
        1 => any::<u8>().prop_map(|frac| Op::Compact { frac }),
        1 => (0u8..5).prop_map(|ahead| Op::Reset { ahead }),
        4 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        2 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Model {
    snap: (u64, u64),
    entries: Vec<Entry>,
}

impl Model {
    fn last(&self) -> u64 {
        self.snap.0 + self.entries.len() as u64
    }
    fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snap.1, |e| e.term)
    }
}

fn check(log: &Log, m: &Model) {
    assert_eq!(log.snapshot_index_term(), m.snap);
    assert_eq!(log.first_index(), m.snap.0 + 1);
    assert_eq!(log.last_index(), m.last());
    assert_eq!(log.term(m.snap.0), Ok(m.snap.1));
    assert_eq!(log.term(m.last() + 1), Err(LogError::Unavailable));
    if m.snap.0 > 0 {
        assert_eq!(log.term(m.snap.0 - 1), Err(LogError::Compacted));
    }
    assert_eq!(all_entries(log), m.entries);
}

fn run_model(seg: u64, ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut log = Log::open(&dir, opts(seg)).unwrap();
    let mut m = Model {
        snap: (0, 0),
        entries: Vec::new(),
    };
    let mut synced = m.clone();
    let mut durable = read_files(&dir);
    let mut term = 1;
    for op in ops {
        match op {
            Op::Append {
                back,
                n,
                bump,
                seed,
            } => {
                let back = (back as u64).min(m.entries.len() as u64);
                let start = m.last() + 1 - back;
                if bump || back > 0 {
                    term += 1;
                }
                let mut rng = Rng::new(seed);
                let es: Vec<Entry> = (0..n as u64)
                    .map(|i| entry(&mut rng, start + i, term, 200))
                    .collect();
                log.append(&es).unwrap();
                if back > 0 {
                    // The truncation is durable on return.
                    m.entries.truncate((start - m.snap.0 - 1) as usize);
                    synced = m.clone();
                    durable = read_files(&dir);
                }
                m.entries.extend(es);
            }
            Op::Truncate { back } => {
                let back = (back as u64).min(m.entries.len() as u64);
                let from = m.last() + 1 - back;
                log.truncate_suffix(from).unwrap();
                m.entries.truncate(m.entries.len() - back as usize);
                synced = m.clone();
                durable = read_files(&dir);
            }
            Op::Compact { frac } => {
                if m.entries.is_empty() {
                    continue;
                }
                log.sync().unwrap();
                let k = (frac as usize * m.entries.len()) / 256; // 0..len-1
                let e = &m.entries[k];
                let (i, t) = (e.index, e.term);
                log.compact(i, t).unwrap();
                m.entries.drain(..=k);
                m.snap = (i, t);
                synced = m.clone();
                durable = read_files(&dir);
            }
            Op::Reset { ahead } => {
                log.sync().unwrap();
                term += 1;
                let i = m.last() + ahead as u64;
                log.reset(i, term).unwrap();
                m = Model {
                    snap: (i, term),
                    entries: Vec::new(),
                };
                synced = m.clone();
                durable = read_files(&dir);
            }
            Op::Sync => {
                log.sync().unwrap();
                synced = m.clone();
                durable = read_files(&dir);
            }
            Op::Reopen => {
                drop(log);
                log = Log::open(&dir, opts(seg)).unwrap();
            }
            Op::Crash { seed } => {
                drop(log);
                crash(&dir, &durable, &mut Rng::new(seed));
                log = Log::open(&dir, opts(seg)).unwrap();
                let got = all_entries(&log);
                assert_eq!(log.snapshot_index_term(), m.snap);
                // Everything synced is there unless a later (durable) truncation removed it;
                // beyond that, only entries that were appended (unsynced) may survive.
                let common = synced
                    .entries
                    .iter()
                    .zip(&m.entries)
                    .take_while(|(a, b)| a == b)
                    .count();
                assert!(
                    got.len() >= common,
                    "lost synced entries: have {} need {common}",
                    got.len()
                );
                assert_eq!(got[..common], m.entries[..common]);
                let tail = &got[common..];
                assert!(
                    m.entries[common..].starts_with(tail)
                        || synced.entries[common..].starts_with(tail),
                    "recovered entries that were never written"
                );
                m.entries = got;
                term = term.max(m.last_term());
                synced = m.clone();
                durable = read_files(&dir);
            }
        }
        check(&log, &m);
    }
    drop(log);
    let log = Log::open(&dir, opts(seg)).unwrap();
    check(&log, &m);
    assert_eq!(replayed(&log), m.entries);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(seg in prop_oneof![Just(1024u64), Just(4096u64)],
                         ops in proptest::collection::vec(op(), 1..60)) {
        run_model(seg, ops);
    }
}
