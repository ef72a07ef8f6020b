//! Storage tests: the log against an in-memory model (proptest, with simulated crashes), torn
//! tails at every byte, random bit flips, hard state torn writes, snapshot damage, failed segment
//! allocations. Helpers shared with tests/storage_agree.rs are in tests/storage_util/.
//!
//! No test here may spawn a process: between fork and exec a child co-holds every descriptor of
//! this process, including the locks of logs other test threads drop and reopen.

mod storage_util;

use bytes::Bytes;
use proptest::prelude::*;
use raftkv::raft::{ConfState, Entry, HardState, LogError, LogStore, SnapshotMeta};
use raftkv::rng::Rng;
use raftkv::storage::inspect::Check;
use raftkv::storage::{HardStateFile, Log, SnapshotReader, SnapshotStore, StorageError};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use storage_util::*;

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
    let dir = tmpdir();
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
    assert!(
        sz <= 500 && !some.is_empty(),
        "entries(10, 200, max_bytes 500) returned {} entries of {sz} B",
        some.len()
    );
    assert_eq!(log.entries(10, 202, 100), Err(LogError::Unavailable));
}

fn names_with(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Compaction moves whole segments aside at once (`*.seg.trash`) and frees them slice by slice
/// in `trash_step`; a log reopened after a crash mid-deletion picks the leftovers up again.
#[test]
fn compacted_segments_are_deleted_incrementally_and_leftovers_adopted() {
    let dir = tmpdir();
    let mut rng = Rng::new(3);
    let mut log = Log::open(dir.path(), opts(4096)).unwrap();
    let es: Vec<Entry> = (1..=400).map(|i| entry(&mut rng, i, 1, 100)).collect();
    log.append(&es).unwrap();
    log.sync().unwrap();
    let before = names_with(dir.path(), ".seg");
    log.compact(300, 1).unwrap();
    let trash = names_with(dir.path(), ".seg.trash");
    assert!(!trash.is_empty());
    assert_eq!(
        before.len(),
        names_with(dir.path(), ".seg").len() + trash.len()
    );
    assert_eq!(log.trash_pending().1, trash.len());
    assert_eq!(log.first_index(), 301);
    // "Crash" with the trash still full: reopen adopts it.
    drop(log);
    let mut log = Log::open(dir.path(), opts(4096)).unwrap();
    assert_eq!(log.trash_pending().1, trash.len());
    assert_eq!((log.first_index(), log.last_index()), (301, 400));
    let mut steps = 0;
    while log.trash_pending().1 > 0 {
        log.trash_step(std::time::Duration::ZERO);
        steps += 1;
        assert!(steps < 10_000);
    }
    assert!(names_with(dir.path(), ".trash").is_empty());
    assert_eq!(all_entries(&log), es[300..].to_vec());
}

#[test]
fn conflicting_append_truncates_and_compaction_survives_restart() {
    let dir = tmpdir();
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
        // Created since the last sync and lost entirely (stricter than needed: creation fsyncs
        // the directory, but recovery must cope either way).
        fs::remove_file(dir.join(&last)).unwrap();
        return;
    }
    let mut out = now.clone();
    for s in (0..now.len()).step_by(512) {
        let e = (s + 512).min(now.len());
        // The 64-byte segment header is fsynced when the segment is created.
        if rng.chance(0.5) {
            let lo = s.max(64);
            for (i, b) in out[lo..e].iter_mut().enumerate() {
                *b = base.and_then(|v| v.get(lo + i)).copied().unwrap_or(0);
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
    let tmp = tmpdir();
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

// ---------------------------------------------------------------------------------------------
// Crash damage: torn tails at every byte, random bit flips.

#[test]
fn torn_tail_at_every_byte_recovers_the_prefix() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let es = build_log(dir, 4096, 80, 3);
    let seg = last_seg(dir);
    let orig = fs::read(&seg).unwrap();
    let (lo, hi) = last_record_span(&seg, &es);
    for cut in lo..hi {
        for zero_fill in [false, true] {
            // Either the file is cut short, or the record's tail is zeros (never written).
            if zero_fill {
                let mut b = orig.clone();
                b[cut..hi].fill(0);
                fs::write(&seg, b).unwrap();
            } else {
                fs::write(&seg, &orig[..cut]).unwrap();
            }
            let mut log = Log::open(dir, opts(4096))
                .unwrap_or_else(|e| panic!("cut at {cut} (zero fill {zero_fill}): {e}"));
            assert_eq!(all_entries(&log), es[..es.len() - 1], "cut at {cut}");
            // The log is usable again: the lost entry can be re-appended and survives reopen.
            log.append(&es[es.len() - 1..]).unwrap();
            log.sync().unwrap();
            drop(log);
            let log = Log::open(dir, opts(4096)).unwrap();
            assert_eq!(all_entries(&log), es, "cut at {cut}");
        }
    }
    fs::write(&seg, &orig).unwrap();
}

#[test]
fn random_bit_flips_are_detected_or_only_cost_the_tail() {
    let seed: u64 = std::env::var("RAFTKV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f11b);
    println!("bit flip test seed {seed} (rerun with RAFTKV_SEED={seed})");
    let tmp = tmpdir();
    let dir = tmp.path();
    let es = build_log(dir, 2048, 60, seed);
    {
        // A compaction so there is a meta file to damage too.
        let mut log = Log::open(dir, opts(2048)).unwrap();
        log.compact(3, es[2].term).unwrap();
    }
    let live = &es[3..];
    let files = read_files(dir);
    let last = last_seg(dir)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let (last_lo, last_hi) = last_record_span(&dir.join(&last), &es);
    let mut rng = Rng::new(seed);
    let names: Vec<&String> = files.keys().collect();
    let mut errors = 0;
    for trial in 0..300 {
        restore(dir, &files);
        let name = names[rng.range(0, names.len() as u64) as usize];
        let len = files[name].len() as u64;
        // Mostly inside the written part, sometimes anywhere.
        let written = if name.ends_with(".seg") {
            let first: u64 = name.trim_end_matches(".seg").parse().unwrap();
            let mut off = 64;
            for e in es.iter().skip((first - 1) as usize) {
                // Segments roll over exactly when the next record does not fit.
                if off + 32 + e.data.len() > len as usize {
                    break;
                }
                off += 32 + e.data.len();
            }
            off as u64
        } else {
            len
        };
        let at = if rng.chance(0.8) {
            rng.range(0, written)
        } else {
            rng.range(0, len)
        };
        let bit = rng.range(0, 8);
        let mut b = files[name].clone();
        b[at as usize] ^= 1 << bit;
        fs::write(dir.join(name), &b).unwrap();
        let ctx = format!("seed {seed} trial {trial}: flipped bit {bit} of byte {at} in {name}");
        match Log::open(dir, opts(2048)) {
            Ok(log) => {
                let got = all_entries(&log);
                let in_last_record =
                    name == &last && (at as usize) >= last_lo && (at as usize) < last_hi;
                if in_last_record {
                    assert_eq!(got, live[..live.len() - 1], "{ctx}");
                } else {
                    assert_eq!(got, live, "{ctx}");
                }
            }
            Err(e) => {
                errors += 1;
                let msg = e.to_string();
                assert!(matches!(e, StorageError::Corrupt { .. }), "{ctx}: {msg}");
                assert!(
                    msg.contains(name.as_str()),
                    "{ctx}: error does not name the file: {msg}"
                );
            }
        }
    }
    assert!(
        errors > 50,
        "seed {seed}: only {errors} flips were detected"
    );
}

#[test]
fn missing_middle_segment_and_foreign_file_refuse_to_open() {
    let tmp = tmpdir();
    let dir = tmp.path();
    build_log(dir, 1024, 60, 4);
    let mut segs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    assert!(segs.len() >= 4);
    let saved = fs::read(&segs[1]).unwrap();
    fs::remove_file(&segs[1]).unwrap();
    let e = Log::open(dir, opts(1024)).err().expect("gap must fail");
    assert!(e.to_string().contains("index gap"), "{e}");
    fs::write(&segs[1], b"hello, I am not a segment").unwrap();
    let e = Log::open(dir, opts(1024))
        .err()
        .expect("foreign file must fail");
    assert!(e.to_string().contains("segment"), "{e}");
    fs::write(&segs[1], saved).unwrap();
    Log::open(dir, opts(1024)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Hard state.

#[test]
fn hard_state_survives_torn_writes() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let (mut f, hs) = HardStateFile::open(dir).unwrap();
    assert_eq!(hs, HardState::default());
    let states: Vec<HardState> = (1..=5)
        .map(|i| HardState {
            term: i,
            vote: i % 3,
            commit: i * 10,
        })
        .collect();
    for s in &states {
        f.save(s).unwrap();
    }
    drop(f);
    let path = dir.join("hardstate");
    let orig = fs::read(&path).unwrap();
    assert_eq!(HardStateFile::open(dir).unwrap().1, states[4]);
    // Seq 5 lives in slot 1 (byte 512); seq 4 in slot 0. A torn write of the newest slot
    // (any prefix of it replaced by garbage or zeros) leaves the previous state.
    for cut in 0..48 {
        for fill in [0u8, 0xAB] {
            let mut b = orig.clone();
            b[512 + cut..512 + 48].fill(fill);
            if b == orig {
                continue;
            }
            fs::write(&path, &b).unwrap();
            let got = HardStateFile::open(dir).unwrap().1;
            assert!(
                got == states[3] || (cut >= 44 && got == states[4]),
                "cut {cut}: {got:?}"
            );
        }
    }
    // The next save after recovering overwrites the torn slot, not the good one.
    let mut b = orig.clone();
    b[512..540].fill(0xAB);
    fs::write(&path, &b).unwrap();
    let (mut f, got) = HardStateFile::open(dir).unwrap();
    assert_eq!(got, states[3]);
    let s6 = HardState {
        term: 9,
        vote: 1,
        commit: 3,
    };
    f.save(&s6).unwrap();
    drop(f);
    assert_eq!(HardStateFile::open(dir).unwrap().1, s6);
    // Both slots destroyed: a clear error, not a silent reset to term 0.
    let mut b = fs::read(&path).unwrap();
    b[8] ^= 1;
    b[520] ^= 1;
    fs::write(&path, &b).unwrap();
    let e = HardStateFile::open(dir).err().expect("must fail");
    assert!(e.to_string().contains("hardstate"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Snapshots.

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        conf: Some(ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn payload(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

fn write_snap(store: &mut SnapshotStore, m: &SnapshotMeta, data: &[u8]) -> PathBuf {
    let mut w = store.create(m).unwrap();
    for c in data.chunks(10_000) {
        w.write_all(c).unwrap();
    }
    assert_eq!(w.payload_crc(), crc32fast::hash(data));
    w.finish().unwrap()
}

fn read_all(r: &mut SnapshotReader) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn snapshot_round_trip_keep_two_and_fallback() {
    let tmp = tmpdir();
    let dir = tmp.path().join("snap");
    let mut store = SnapshotStore::open(&dir).unwrap();
    assert!(store.latest().unwrap().is_none());
    let p1 = write_snap(&mut store, &meta(10, 1), &payload(1, 200_000));
    let p2 = write_snap(&mut store, &meta(20, 2), &payload(2, 150_000));
    let p3 = write_snap(&mut store, &meta(30, 2), &payload(3, 0));
    assert!(
        !p1.exists() && p2.exists() && p3.exists(),
        "keeps the newest two"
    );
    let mut r = store.latest().unwrap().unwrap();
    assert_eq!(r.meta, meta(30, 2));
    assert!(read_all(&mut r).unwrap().is_empty());
    // Damage the newest: falls back to the previous one.
    let mut b = fs::read(&p3).unwrap();
    let n = b.len();
    b[n - 5] ^= 0x10;
    fs::write(&p3, b).unwrap();
    let mut r = store.latest().unwrap().unwrap();
    assert_eq!(r.meta, meta(20, 2));
    assert_eq!(read_all(&mut r).unwrap(), payload(2, 150_000));
    assert_eq!(r.payload_crc(), crc32fast::hash(&payload(2, 150_000)));
    // Both damaged: an error, not "no snapshot".
    let mut b = fs::read(&p2).unwrap();
    b[1000] ^= 1;
    fs::write(&p2, b).unwrap();
    assert!(store.latest().is_err());
    // Open by path.
    let r = SnapshotReader::open(&p3).unwrap();
    assert_eq!(r.meta.index, 30);
}

#[test]
fn snapshot_abort_and_drop_remove_the_temp_file() {
    let tmp = tmpdir();
    let dir = tmp.path().join("snap");
    let mut store = SnapshotStore::open(&dir).unwrap();
    let mut w = store.create(&meta(5, 1)).unwrap();
    w.write_all(&payload(5, 100_000)).unwrap();
    w.abort();
    let mut w = store.create(&meta(6, 1)).unwrap();
    w.write_all(b"partial").unwrap();
    drop(w);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    assert!(store.latest().unwrap().is_none());
}

#[test]
fn snapshot_truncation_and_bit_flips_are_detected() {
    let tmp = tmpdir();
    let dir = tmp.path().join("snap");
    let mut store = SnapshotStore::open(&dir).unwrap();
    let data = payload(7, 140_000);
    let p = write_snap(&mut store, &meta(9, 3), &data);
    let orig = fs::read(&p).unwrap();
    let check = |b: &[u8], ctx: &str| {
        fs::write(&p, b).unwrap();
        let res = SnapshotReader::open(&p)
            .map_err(|e| e.to_string())
            .and_then(|mut r| read_all(&mut r).map_err(|e| e.to_string()));
        match res {
            Ok(v) => panic!("{ctx}: damage not detected ({} bytes read)", v.len()),
            Err(msg) => assert!(
                msg.contains("snap-"),
                "{ctx}: error does not name the file: {msg}"
            ),
        }
    };
    let mut cuts: Vec<usize> = (0..64).collect();
    cuts.extend((64..orig.len()).step_by(997));
    cuts.extend(orig.len() - 40..orig.len());
    for cut in cuts {
        check(&orig[..cut], &format!("cut at {cut}"));
    }
    let seed = 0xfeed;
    let mut rng = Rng::new(seed);
    for trial in 0..200 {
        let mut b = orig.clone();
        let at = rng.range(0, b.len() as u64) as usize;
        b[at] ^= 1 << rng.range(0, 8);
        check(&b, &format!("seed {seed} trial {trial} flip at {at}"));
    }
    let mut b = orig.clone();
    b.push(0);
    check(&b, "trailing byte");
    fs::write(&p, &orig).unwrap();
    assert_eq!(
        read_all(&mut SnapshotReader::open(&p).unwrap()).unwrap(),
        data
    );
}

// ---------------------------------------------------------------------------------------------
// Arbitrary file contents never panic.

#[test]
fn garbage_files_never_panic() {
    let seed = 0x09a7_ba6e;
    let mut rng = Rng::new(seed);
    let tmp = tmpdir();
    for trial in 0..150 {
        let dir = tmp.path().join(format!("t{trial}"));
        fs::create_dir_all(dir.join("log")).unwrap();
        fs::create_dir_all(dir.join("snap")).unwrap();
        let len = rng.range(0, 3000) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let first = rng.range(0, 4);
        if rng.chance(0.7) && len >= 64 {
            // A valid header followed by garbage, or by records with random damage.
            let mut h = vec![0u8; 64];
            h[0..8].copy_from_slice(b"RKVLOG01");
            h[8..12].copy_from_slice(&1u32.to_le_bytes());
            h[12..16].copy_from_slice(&64u32.to_le_bytes());
            h[16..24].copy_from_slice(&(len as u64).to_le_bytes());
            h[24..32].copy_from_slice(&first.to_le_bytes());
            let c = crc32fast::hash(&h[0..60]);
            h[60..64].copy_from_slice(&c.to_le_bytes());
            b[..64].copy_from_slice(&h);
        }
        let name = format!("{first:020}.seg");
        fs::write(dir.join("log").join(&name), &b).unwrap();
        if rng.chance(0.3) {
            fs::write(dir.join("log").join("meta"), &b[..len.min(32)]).unwrap();
        }
        fs::write(dir.join("hardstate"), &b[..len.min(1024)]).unwrap();
        let mut sb = b"RKVSNAP1".to_vec();
        sb.extend_from_slice(&b[..len.min(500)]);
        fs::write(
            dir.join("snap")
                .join("snap-00000000000000000001-00000000000000000001.snap"),
            &sb,
        )
        .unwrap();
        let ctx = format!("seed {seed} trial {trial}");
        for check in [Check::Strict, Check::Full, Check::Lenient] {
            let _ = raftkv::storage::inspect::inspect_log(&dir.join("log"), check);
        }
        if let Ok(log) = Log::open(&dir.join("log"), opts(4096)) {
            // Whatever it accepted reads back without error.
            let _ = all_entries(&log);
            let _ = replayed(&log);
        }
        let _ = HardStateFile::open(&dir);
        let store = SnapshotStore::open(&dir.join("snap")).unwrap();
        assert!(store.latest().is_err(), "{ctx}: garbage snapshot accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// Segment allocation (issue 16): a failed allocation leaves nothing behind; what an interrupted
// one leaves (`*.seg.tmp`) is never read as a segment and is removed on open.

/// Segment and allocation temp file names in `dir`, sorted.
fn seg_and_temp_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg") || n.ends_with(".seg.tmp"))
        .collect();
    v.sort();
    v
}

#[test]
fn failed_segment_allocation_leaves_nothing_behind() {
    use raftkv::storage::segment::fault::{fail_next_allocation_at, AllocStep};
    for step in [
        AllocStep::Preallocate,
        AllocStep::Header,
        AllocStep::Rename,
        AllocStep::SyncDir,
    ] {
        let tmp = tmpdir();
        let dir = tmp.path();
        let mut rng = Rng::new(16);
        let mut log = Log::open(dir, opts(1024)).unwrap();
        // Past one rollover first, so a sealed segment precedes the failing allocation.
        let mut es = Vec::new();
        while log.segment_count() < 2 {
            let e = entry(&mut rng, es.len() as u64 + 1, 1, 100);
            log.append(std::slice::from_ref(&e)).unwrap();
            es.push(e);
        }
        log.sync().unwrap();
        let segs_before = log.segment_count();
        fail_next_allocation_at(Some(step));
        let (failed, err) = loop {
            let e = entry(&mut rng, es.len() as u64 + 1, 1, 100);
            match log.append(std::slice::from_ref(&e)) {
                Ok(()) => es.push(e),
                Err(err) => break (e, err),
            }
            assert!(
                es.len() < 1000,
                "{step:?}: the armed allocation never failed"
            );
        };
        fail_next_allocation_at(None);
        let msg = err.to_string();
        // Names the file (the directory, when its sync failed).
        let named = match step {
            AllocStep::SyncDir => dir.display().to_string(),
            _ => format!("{:020}.seg", failed.index),
        };
        assert!(
            msg.contains("No space left on device") && msg.contains(&named),
            "{step:?}: {msg}"
        );
        log.sync().unwrap();
        assert_eq!(log.segment_count(), segs_before, "{step:?}");
        let expect_names: Vec<String> = log
            .segment_paths()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            seg_and_temp_names(dir),
            expect_names,
            "{step:?}: the failed allocation left a file behind"
        );
        assert_eq!(log.last_index(), es.len() as u64, "{step:?}");
        // The server's startup check and verify see a sound log, no warning; the log reopens
        // with everything appended before the failure.
        drop(log);
        let strict = raftkv::storage::inspect::inspect_log(dir, Check::Strict)
            .unwrap_or_else(|e| panic!("{step:?}: verify --strict: {e}"));
        assert_eq!(strict.last_index(), es.len() as u64, "{step:?}");
        assert_eq!(
            startup_check(dir),
            Ok((1, es.len() as u64, Vec::new())),
            "{step:?}"
        );
        let mut log = Log::open(dir, opts(1024)).unwrap();
        assert_eq!(all_entries(&log), es, "{step:?}");
        // Space is back: the same append now allocates the segment and survives a reopen.
        log.append(std::slice::from_ref(&failed)).unwrap();
        log.sync().unwrap();
        es.push(failed);
        assert_eq!(log.segment_count(), segs_before + 1, "{step:?}");
        drop(log);
        assert_eq!(
            all_entries(&Log::open(dir, opts(1024)).unwrap()),
            es,
            "{step:?}"
        );
    }
}

/// A crash during an allocation leaves `<first>.seg.tmp` (any length, any content: it was never
/// renamed into place). verify and the startup check report it as a warning, not damage, with
/// the same range the log opens with; `Log::open` removes it.
#[test]
fn leftover_allocation_temp_files_are_removed_on_open() {
    let tmp = tmpdir();
    let dir = tmp.path();
    let es = build_log(dir, 1024, 40, 5);
    let last = es.len() as u64;
    let header = fs::read(last_seg(dir)).unwrap()[..64].to_vec();
    let temps = [
        (format!("{:020}.seg.tmp", last + 1), Vec::new()),
        (format!("{:020}.seg.tmp", last + 2), vec![0u8; 1024]),
        (format!("{:020}.seg.tmp", last + 3), header),
    ];
    for (name, b) in &temps {
        fs::write(dir.join(name), b).unwrap();
    }
    let (first, l, warnings) = startup_check(dir).unwrap();
    assert_eq!((first, l), (1, last));
    assert_eq!(
        warnings.len(),
        temps.len(),
        "one warning per temp file: {warnings:?}"
    );
    for (name, _) in &temps {
        assert!(
            warnings.iter().any(|w| w.contains(name.as_str())),
            "{name}: {warnings:?}"
        );
    }
    let log = Log::open(dir, opts(1024)).unwrap();
    assert_eq!(all_entries(&log), es);
    let left: Vec<String> = seg_and_temp_names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "not removed: {left:?}");
    drop(log);
    assert_eq!(startup_check(dir), Ok((1, last, Vec::new())));
}

/// The next segment is preallocated ahead of need (`Log::ensure_spare`, under the temp name
/// `00000000000000000000.seg.tmp`): a full disk fails that, leaving nothing behind, while
/// appends go on in the active segment; a later rollover uses the spare; a clean close removes
/// it. An append whose batch needs a segment the disk cannot give is all-or-nothing: none of its
/// entries are logged (a follower must not ack part of it), and it succeeds once there is room.
#[test]
fn spare_segment_and_all_or_nothing_append_on_a_full_disk() {
    use raftkv::storage::segment::fault::{fail_next_allocation_at, AllocStep};
    let tmp = tmpdir();
    let dir = tmp.path();
    let mut rng = Rng::new(17);
    let mut log = Log::open(dir, opts(1024)).unwrap();
    let spare = raftkv::storage::segment::spare_name();
    fail_next_allocation_at(Some(AllocStep::Preallocate));
    let err = log.ensure_spare().unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert!(
        !log.has_spare() && names_with(dir, ".tmp").is_empty(),
        "a stub was left"
    );
    log.ensure_spare().unwrap();
    assert_eq!(names_with(dir, ".tmp"), vec![spare.clone()]);
    // A rollover takes the spare: renamed into place, no temp file left.
    let mut es = Vec::new();
    while log.segment_count() < 2 {
        let e = entry(&mut rng, es.len() as u64 + 1, 1, 100);
        log.append(std::slice::from_ref(&e)).unwrap();
        es.push(e);
    }
    assert!(!log.has_spare() && names_with(dir, ".tmp").is_empty());
    // No spare and a full disk: a batch that crosses into a new segment logs nothing.
    let batch: Vec<Entry> = (0..20)
        .map(|i| entry(&mut rng, es.len() as u64 + 1 + i, 1, 100))
        .collect();
    fail_next_allocation_at(Some(AllocStep::Preallocate));
    let err = log.append(&batch).unwrap_err();
    fail_next_allocation_at(None);
    assert!(err.is_no_space(), "{err}");
    assert_eq!(
        log.last_index(),
        es.len() as u64,
        "part of the batch was logged"
    );
    assert_eq!(log.check_invariants(), Ok(()));
    assert!(names_with(dir, ".tmp").is_empty());
    // Room again: the same batch goes in whole.
    log.append(&batch).unwrap();
    es.extend(batch);
    log.sync().unwrap();
    assert_eq!(all_entries(&log), es);
    log.ensure_spare().unwrap();
    drop(log);
    assert!(
        names_with(dir, ".tmp").is_empty(),
        "a clean close removes the spare"
    );
    let log = Log::open(dir, opts(1024)).unwrap();
    assert_eq!(all_entries(&log), es);
}
