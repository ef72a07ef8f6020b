//! `Log::check_invariants` holds after every kind of log mutation (append across segments,
//! truncating a conflicting suffix, compaction, reset to a snapshot, reopening).

use bytes::Bytes;
use raftkv::raft::{Entry, EntryType, LogStore};
use raftkv::storage::{Log, LogOptions};

fn ents(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi)
        .map(|index| Entry {
            index,
            term,
            entry_type: EntryType::EntryNormal as i32,
            data: Bytes::from(vec![index as u8; 200]),
        })
        .collect()
}

fn check(log: &Log, what: &str) {
    if let Err(e) = log.check_invariants() {
        panic!("after {what}: {e}");
    }
}

#[test]
fn invariants_hold_after_every_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 16 << 10,
    };
    let mut log = Log::open(dir.path(), opts.clone()).unwrap();
    check(&log, "open");
    log.append(&ents(1, 300, 1)).unwrap();
    log.sync().unwrap();
    assert!(log.segment_count() > 3, "appends spanned several segments");
    check(&log, "append");
    log.append(&ents(250, 320, 2)).unwrap();
    assert_eq!(log.term(250), Ok(2));
    check(&log, "append truncating a conflicting suffix");
    log.truncate_suffix(310).unwrap();
    assert_eq!(log.last_index(), 309);
    check(&log, "truncate_suffix");
    log.compact(200, 1).unwrap();
    check(&log, "compact");
    log.sync().unwrap();
    drop(log);
    let mut log = Log::open(dir.path(), opts.clone()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (201, 309));
    check(&log, "reopen");
    log.reset(500, 3).unwrap();
    check(&log, "reset");
    log.append(&ents(501, 520, 3)).unwrap();
    check(&log, "append after reset");
}
