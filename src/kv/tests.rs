//! Tests of the KV state machine: model-based property test, sessions, snapshots.

use super::*;
use crate::pb::kvpb::{command::Op, response::Result as R};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn cmd(client_id: u64, seq: u64, acked_seq: u64, op: Op) -> Bytes {
    encode_command(&kvpb::Command {
        client_id,
        seq,
        acked_seq,
        op: Some(op),
    })
}

fn put(k: &[u8], v: &[u8]) -> Op {
    Op::Put(kvpb::Put {
        key: b(k),
        value: b(v),
        ..Default::default()
    })
}

fn del(k: &[u8]) -> Op {
    Op::Delete(kvpb::Delete { key: b(k) })
}

fn cas(k: &[u8], expected_version: u64, v: &[u8], delete: bool) -> Op {
    Op::Cas(kvpb::Cas {
        key: b(k),
        expected_version,
        value: b(v),
        delete,
    })
}

fn error_code(r: &Option<ApplyResult>) -> Option<kvpb::ErrorCode> {
    match r {
        Some(R::Error(e)) => Some(e.code()),
        _ => None,
    }
}

fn snapshot_bytes(s: &KvStore) -> Vec<u8> {
    let mut buf = Vec::new();
    s.write_snapshot(&mut buf).unwrap();
    buf
}

// ---- basic semantics -------------------------------------------------------------------------

#[test]
fn put_get_delete_versions() {
    let mut s = KvStore::new();
    assert_eq!(s.apply(1, &[]), None, "empty entry is a no-op");
    assert_eq!(s.applied(), 1);
    assert_eq!(
        s.apply(2, &cmd(0, 0, 0, put(b"a", b"1"))),
        Some(R::Put(kvpb::PutResponse {
            version: 2,
            ..Default::default()
        }))
    );
    assert_eq!(
        s.get(b"a"),
        kvpb::GetResponse {
            found: true,
            value: b(b"1"),
            version: 2
        }
    );
    assert!(!s.get(b"zz").found);
    assert_eq!(
        s.apply(3, &cmd(0, 0, 0, del(b"a"))),
        Some(R::Delete(kvpb::DeleteResponse {
            deleted: true,
            ..Default::default()
        }))
    );
    assert_eq!(
        s.apply(4, &cmd(0, 0, 0, del(b"a"))),
        Some(R::Delete(kvpb::DeleteResponse {
            deleted: false,
            ..Default::default()
        }))
    );
    assert!(s.is_empty());
    assert_eq!(s.applied(), 4);
}

#[test]
fn cas_semantics() {
    let mut s = KvStore::new();
    let ok = |version| {
        Some(R::Cas(kvpb::CasResponse {
            succeeded: true,
            version,
        }))
    };
    let fail = |version| {
        Some(R::Cas(kvpb::CasResponse {
            succeeded: false,
            version,
        }))
    };
    // expected 0 = must be absent.
    assert_eq!(s.apply(5, &cmd(0, 0, 0, cas(b"k", 0, b"v1", false))), ok(5));
    assert_eq!(
        s.apply(6, &cmd(0, 0, 0, cas(b"k", 0, b"v2", false))),
        fail(5)
    );
    assert_eq!(
        s.apply(7, &cmd(0, 0, 0, cas(b"k", 4, b"v2", false))),
        fail(5)
    );
    assert_eq!(s.get(b"k").value, b(b"v1"));
    assert_eq!(s.apply(8, &cmd(0, 0, 0, cas(b"k", 5, b"v2", false))), ok(8));
    assert_eq!(s.get(b"k").version, 8);
    // Delete through cas.
    assert_eq!(s.apply(9, &cmd(0, 0, 0, cas(b"k", 5, b"", true))), fail(8));
    assert_eq!(s.apply(10, &cmd(0, 0, 0, cas(b"k", 8, b"", true))), ok(0));
    assert!(!s.get(b"k").found);
    assert_eq!(
        s.apply(11, &cmd(0, 0, 0, cas(b"k", 8, b"x", false))),
        fail(0)
    );
}

#[test]
fn bad_commands_change_nothing_but_applied() {
    let mut s = KvStore::new();
    s.apply(1, &cmd(0, 0, 0, put(b"a", b"1")));
    let before = snapshot_bytes(&s);
    let garbage = [0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_eq!(
        error_code(&s.apply(2, &garbage)),
        Some(kvpb::ErrorCode::BadRequest)
    );
    assert_eq!(s.applied(), 2);
    let no_op = encode_command(&kvpb::Command::default());
    // An all-default command encodes to zero bytes, i.e. a no-op entry.
    assert!(no_op.is_empty());
    let no_op_with_session = encode_command(&kvpb::Command {
        client_id: 3,
        seq: 1,
        ..Default::default()
    });
    assert_eq!(
        error_code(&s.apply(3, &no_op_with_session)),
        Some(kvpb::ErrorCode::BadRequest)
    );
    assert_eq!(
        error_code(&s.apply(4, &cmd(0, 0, 0, put(b"", b"x")))),
        Some(kvpb::ErrorCode::BadRequest)
    );
    assert_eq!(s.get(b"a").version, 1);
    assert_eq!(s.len(), 1);
    // Only the applied index (and the session of client 3) moved.
    let mut restored = KvStore::restore_snapshot(&mut &before[..]).unwrap();
    assert_eq!(restored.get(b"a"), s.get(b"a"));
    restored.applied = s.applied;
    assert_eq!(restored.keys, s.keys);
}

#[test]
fn stale_index_is_refused_without_double_apply() {
    let mut s = KvStore::new();
    s.apply(5, &cmd(0, 0, 0, put(b"a", b"1")));
    let r = s.apply(5, &cmd(0, 0, 0, put(b"a", b"2")));
    assert_eq!(error_code(&r), Some(kvpb::ErrorCode::Internal));
    let r = s.apply(3, &cmd(0, 0, 0, put(b"a", b"3")));
    assert_eq!(error_code(&r), Some(kvpb::ErrorCode::Internal));
    assert_eq!(s.get(b"a").value, b(b"1"));
    assert_eq!(s.applied(), 5);
    // Gaps are fine.
    assert!(s.apply(9, &cmd(0, 0, 0, put(b"a", b"4"))).is_some());
    assert_eq!(s.get(b"a").version, 9);
}

fn fill(keys: &[&[u8]]) -> KvStore {
    let mut s = KvStore::new();
    for (i, k) in keys.iter().enumerate() {
        s.apply(i as u64 + 1, &cmd(0, 0, 0, put(k, &[b'v', i as u8])));
    }
    s
}

fn keys_of(r: &kvpb::ScanResponse) -> Vec<&[u8]> {
    r.kvs.iter().map(|kv| &kv.key[..]).collect()
}

#[test]
fn scan_range_prefix_limit_continuation() {
    let s = fill(&[b"a", b"ab", b"abc", b"abd", b"b", b"ba", b"c"]);
    let scan = |start: &[u8], end: &[u8], prefix: &[u8], limit: u32| {
        s.scan(&kvpb::Scan {
            start: b(start),
            end: b(end),
            prefix: b(prefix),
            limit,
            keys_only: false,
        })
    };
    let r = scan(b"", b"", b"", 0);
    assert_eq!(r.kvs.len(), 7);
    assert!(r.next_key.is_empty());
    let r = scan(b"ab", b"b", b"", 0);
    assert_eq!(keys_of(&r), vec![&b"ab"[..], b"abc", b"abd"]);
    let r = scan(b"b", b"a", b"", 0);
    assert!(r.kvs.is_empty());
    let r = scan(b"", b"", b"ab", 2);
    assert_eq!(keys_of(&r), vec![&b"ab"[..], b"abc"]);
    assert_eq!(&r.next_key[..], b"abd");
    let r = scan(b"abd", b"", b"ab", 2);
    assert_eq!(keys_of(&r), vec![&b"abd"[..]]);
    assert!(r.next_key.is_empty());
    // A start before the prefix is ignored; end is ignored with a prefix.
    let r = scan(b"0", b"ab", b"b", 0);
    assert_eq!(keys_of(&r), vec![&b"b"[..], b"ba"]);
    // Exactly `limit` keys remaining: no continuation.
    let r = scan(b"b", b"", b"", 3);
    assert_eq!(keys_of(&r), vec![&b"b"[..], b"ba", b"c"]);
    assert!(r.next_key.is_empty());
    // keys_only keeps versions, drops values.
    let r = s.scan(&kvpb::Scan {
        keys_only: true,
        ..Default::default()
    });
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.version > 0));
}

#[test]
fn scan_limit_default_and_cap() {
    let mut s = KvStore::new();
    for i in 0..(store::MAX_SCAN_LIMIT as u64 + 5) {
        s.apply(
            i + 1,
            &cmd(0, 0, 0, put(format!("k{i:06}").as_bytes(), b"")),
        );
    }
    let r = s.scan(&kvpb::Scan::default());
    assert_eq!(r.kvs.len(), store::DEFAULT_SCAN_LIMIT);
    assert!(!r.next_key.is_empty());
    let r = s.scan(&kvpb::Scan {
        limit: u32::MAX,
        ..Default::default()
    });
    assert_eq!(r.kvs.len(), store::MAX_SCAN_LIMIT);
    assert!(!r.next_key.is_empty());
}

// ---- sessions -------------------------------------------------------------------------------

#[test]
fn duplicate_returns_saved_result_without_reapplying() {
    let mut s = KvStore::new();
    let first = s.apply(1, &cmd(7, 1, 0, put(b"a", b"1")));
    assert_eq!(
        first,
        Some(R::Put(kvpb::PutResponse {
            version: 1,
            ..Default::default()
        }))
    );
    s.apply(2, &cmd(0, 0, 0, put(b"a", b"other")));
    // The retry (same seq, e.g. after a leader change) is answered from the table.
    let dup = s.apply(3, &cmd(7, 1, 0, put(b"a", b"1")));
    assert_eq!(dup, first);
    assert_eq!(
        s.get(b"a").value,
        b(b"other"),
        "duplicate must not re-apply"
    );
    assert_eq!(s.get(b"a").version, 2);
}

#[test]
fn pipelined_writes_and_ack_pruning() {
    let mut s = KvStore::new();
    // Three writes in flight (acked 0), applied in order.
    let r1 = s.apply(1, &cmd(7, 1, 0, cas(b"c", 0, b"x", false)));
    let r2 = s.apply(2, &cmd(7, 2, 0, put(b"a", b"2")));
    let r3 = s.apply(3, &cmd(7, 3, 0, del(b"a")));
    // Retries of all three (acked still 0) hit the table.
    assert_eq!(s.apply(4, &cmd(7, 2, 0, put(b"a", b"2"))), r2);
    assert_eq!(s.apply(5, &cmd(7, 1, 0, cas(b"c", 0, b"x", false))), r1);
    assert_eq!(s.apply(6, &cmd(7, 3, 0, del(b"a"))), r3);
    assert!(!s.get(b"a").found);
    // The client acks 2: seqs 1 and 2 are forgotten, 3 is kept.
    let r4 = s.apply(7, &cmd(7, 4, 2, put(b"b", b"4")));
    assert_eq!(
        r4,
        Some(R::Put(kvpb::PutResponse {
            version: 7,
            ..Default::default()
        }))
    );
    assert_eq!(s.sessions.by_client[&7].results.len(), 2);
    assert_eq!(s.apply(8, &cmd(7, 3, 2, del(b"a"))), r3);
    let expired = s.apply(9, &cmd(7, 2, 1, put(b"a", b"2")));
    match &expired {
        Some(R::Error(e)) => {
            assert_eq!(e.code(), kvpb::ErrorCode::BadRequest);
            assert!(e.message.contains("expired"), "{}", e.message);
        }
        other => panic!("expected an expired-session error, got {other:?}"),
    }
    assert!(!s.get(b"a").found, "expired retry must not apply");
    // A different client with the same seq is independent.
    assert_eq!(
        s.apply(10, &cmd(8, 2, 0, put(b"a", b"8"))),
        Some(R::Put(kvpb::PutResponse {
            version: 10,
            ..Default::default()
        }))
    );
}

#[test]
fn invalid_session_fields_are_rejected() {
    let mut s = KvStore::new();
    assert_eq!(
        error_code(&s.apply(1, &cmd(7, 0, 0, put(b"a", b"1")))),
        Some(kvpb::ErrorCode::BadRequest)
    );
    assert_eq!(
        error_code(&s.apply(2, &cmd(7, 3, 3, put(b"a", b"1")))),
        Some(kvpb::ErrorCode::BadRequest)
    );
    assert!(s.is_empty());
}

#[test]
fn session_table_is_bounded_lru_by_log_index() {
    let mut s = KvStore::new();
    s.set_max_sessions(3);
    s.apply(1, &cmd(1, 1, 0, put(b"k1", b"")));
    s.apply(2, &cmd(2, 1, 0, put(b"k2", b"")));
    s.apply(3, &cmd(3, 1, 0, put(b"k3", b"")));
    // Client 1 is active again (a duplicate counts), so 2 is now the least recently used.
    s.apply(4, &cmd(1, 1, 0, put(b"k1", b"")));
    s.apply(5, &cmd(4, 1, 0, put(b"k4", b"")));
    assert_eq!(s.session_count(), 3);
    let ids: Vec<u64> = s.sessions.by_client.keys().copied().collect();
    assert_eq!(ids, vec![1, 3, 4]);
    assert_eq!(s.sessions.lru.len(), 3);
}

#[test]
fn per_session_results_are_bounded_and_dropped_seqs_are_not_reapplied() {
    let mut s = KvStore::new();
    let n = session::MAX_RESULTS_PER_SESSION as u64 + 2;
    for seq in 1..=n {
        s.apply(seq, &cmd(7, seq, 0, put(b"a", &seq.to_be_bytes())));
    }
    assert_eq!(
        s.sessions.by_client[&7].results.len(),
        session::MAX_RESULTS_PER_SESSION
    );
    let r = s.apply(n + 1, &cmd(7, 1, 0, put(b"a", b"again")));
    assert_eq!(error_code(&r), Some(kvpb::ErrorCode::BadRequest));
    assert_eq!(s.get(b"a").version, n);
}

// ---- snapshots --------------------------------------------------------------------------------

fn sample_store() -> KvStore {
    let mut s = KvStore::new();
    s.apply(1, &cmd(0, 0, 0, put(b"alpha", b"1")));
    s.apply(2, &cmd(9, 1, 0, put(b"beta", &[0u8, 255, 7])));
    s.apply(3, &cmd(9, 2, 0, cas(b"gamma", 0, b"g", false)));
    s.apply(4, &cmd(5, 1, 0, del(b"nope")));
    s.apply(5, &cmd(0, 0, 0, put(b"empty-value", b"")));
    s.apply(7, &[]);
    s
}

#[test]
fn snapshot_round_trip_and_summary() {
    let s = sample_store();
    let buf = snapshot_bytes(&s);
    let r = KvStore::restore_snapshot(&mut &buf[..]).unwrap();
    assert_eq!(r, s);
    assert_eq!(
        snapshot_bytes(&r),
        buf,
        "snapshot encoding is deterministic"
    );
    assert_eq!(
        snapshot_summary(&mut &buf[..]).unwrap(),
        SnapshotSummary {
            keys: 4,
            sessions: 2,
            applied: 7,
            alarm: 0
        }
    );
    // The restored store keeps behaving identically, dedupe included.
    let mut a = s.clone();
    let mut b2 = r;
    let retry = cmd(9, 2, 0, cas(b"gamma", 0, b"g", false));
    assert_eq!(a.apply(8, &retry), b2.apply(8, &retry));
    assert_eq!(a, b2);
    a.apply(9, &cmd(0, 0, 0, put(b"alpha", b"2")));
    assert_ne!(a.digest(), b2.digest());
    let empty = snapshot_bytes(&KvStore::new());
    assert_eq!(
        KvStore::restore_snapshot(&mut &empty[..]).unwrap(),
        KvStore::new()
    );
}

#[test]
fn truncated_snapshot_is_invalid_data_at_every_length() {
    let buf = snapshot_bytes(&sample_store());
    for len in 0..buf.len() {
        let err = KvStore::restore_snapshot(&mut &buf[..len]).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::InvalidData,
            "len {len}: {err}"
        );
        let err = snapshot_summary(&mut &buf[..len]).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::InvalidData,
            "len {len}: {err}"
        );
    }
}

#[test]
fn garbled_snapshot_is_rejected_at_every_byte() {
    let buf = snapshot_bytes(&sample_store());
    for i in 0..buf.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = buf.clone();
            bad[i] ^= flip;
            let err = KvStore::restore_snapshot(&mut &bad[..]).unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::InvalidData,
                "byte {i}: {err}"
            );
        }
    }
    let err = KvStore::restore_snapshot(&mut &b"NOTASNAPSHOT-----------"[..]).unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");
}

#[test]
fn huge_length_field_does_not_allocate() {
    // A valid header claiming one key whose length is 4 GiB - 1, then EOF.
    let mut buf = snapshot_bytes(&KvStore::new());
    buf.truncate(buf.len() - 4);
    buf[28..36].copy_from_slice(&1u64.to_be_bytes()); // key count
    buf.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = KvStore::restore_snapshot(&mut &buf[..]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("exceeds"), "{err}");
}

// ---- model-based property test -----------------------------------------------------------------

#[derive(Debug, Clone)]
enum ModelOp {
    Put(u8, u8),
    Delete(u8),
    /// Cas on key; `expect` 0 = current version, 1 = absent (0), 2 = a wrong version.
    Cas(u8, u8, u8, bool),
    /// A session write by client (1..=2) of a fresh op, acking up to `ack` seqs back.
    SessionPut(u8, u8, u8, u8),
    /// A retry of one of the client's earlier seqs (index into its history).
    Retry(u8, usize),
    Scan(u8, u8, u8, u8, bool),
    Snapshot,
    Noop,
}

const KEYS: &[&[u8]] = &[b"a", b"aa", b"ab", b"abc", b"b", b"ba", b"bb", b"c"];

fn key(i: u8) -> &'static [u8] {
    KEYS[i as usize % KEYS.len()]
}

fn op_strategy() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        3 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        2 => any::<u8>().prop_map(ModelOp::Delete),
        3 => (any::<u8>(), 0u8..3, any::<u8>(), any::<bool>())
            .prop_map(|(k, e, v, d)| ModelOp::Cas(k, e, v, d)),
        3 => (1u8..=2, any::<u8>(), any::<u8>(), 0u8..4)
            .prop_map(|(c, k, v, a)| ModelOp::SessionPut(c, k, v, a)),
        2 => (1u8..=2, any::<usize>()).prop_map(|(c, i)| ModelOp::Retry(c, i)),
        2 => (any::<u8>(), any::<u8>(), 0u8..3, 0u8..4, any::<bool>())
            .prop_map(|(s, e, p, l, k)| ModelOp::Scan(s, e, p, l, k)),
        1 => Just(ModelOp::Snapshot),
        1 => Just(ModelOp::Noop),
    ]
}

/// What a client of the model did: every write it sent, with the result it first got.
#[derive(Default)]
struct ModelClient {
    sent: Vec<(Bytes, Option<ApplyResult>)>, // index = seq - 1
    acked: u64,
}

fn model_scan(model: &BTreeMap<Vec<u8>, (Vec<u8>, u64)>, req: &kvpb::Scan) -> Vec<kvpb::KeyValue> {
    model
        .iter()
        .filter(|(k, _)| {
            if !req.prefix.is_empty() {
                k.starts_with(&req.prefix)
            } else {
                k.as_slice() >= &req.start[..]
                    && (req.end.is_empty() || k.as_slice() < &req.end[..])
            }
        })
        .map(|(k, (v, ver))| kvpb::KeyValue {
            key: b(k),
            value: if req.keys_only { Bytes::new() } else { b(v) },
            version: *ver,
        })
        .collect()
}

fn run_model(ops: Vec<ModelOp>) -> Result<(), TestCaseError> {
    let mut s = KvStore::new();
    let mut model: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = BTreeMap::new();
    let mut clients: BTreeMap<u8, ModelClient> = BTreeMap::new();
    let mut index = 0u64;
    // Applies a fresh write to the model and returns the expected result.
    let model_write = |model: &mut BTreeMap<Vec<u8>, (Vec<u8>, u64)>, index: u64, op: &Op| match op
    {
        Op::Put(p) => {
            model.insert(p.key.to_vec(), (p.value.to_vec(), index));
            R::Put(kvpb::PutResponse {
                version: index,
                ..Default::default()
            })
        }
        Op::Delete(d) => R::Delete(kvpb::DeleteResponse {
            deleted: model.remove(&d.key[..]).is_some(),
            ..Default::default()
        }),
        Op::Cas(c) => {
            let cur = model.get(&c.key[..]).map_or(0, |e| e.1);
            if cur != c.expected_version {
                R::Cas(kvpb::CasResponse {
                    succeeded: false,
                    version: cur,
                })
            } else if c.delete {
                model.remove(&c.key[..]);
                R::Cas(kvpb::CasResponse {
                    succeeded: true,
                    version: 0,
                })
            } else {
                model.insert(c.key.to_vec(), (c.value.to_vec(), index));
                R::Cas(kvpb::CasResponse {
                    succeeded: true,
                    version: index,
                })
            }
        }
        other => panic!("the model generates only put, delete and cas, not {other:?}"),
    };
    for op in ops {
        index += 1;
        match op {
            ModelOp::Put(k, v) => {
                let o = put(key(k), &[v]);
                let got = s.apply(index, &cmd(0, 0, 0, o.clone()));
                prop_assert_eq!(got, Some(model_write(&mut model, index, &o)));
            }
            ModelOp::Delete(k) => {
                let o = del(key(k));
                let got = s.apply(index, &cmd(0, 0, 0, o.clone()));
                prop_assert_eq!(got, Some(model_write(&mut model, index, &o)));
            }
            ModelOp::Cas(k, e, v, d) => {
                let cur = model.get(key(k)).map_or(0, |e| e.1);
                let expected = match e {
                    0 => cur,
                    1 => 0,
                    _ => cur + 1,
                };
                let o = cas(key(k), expected, &[v], d);
                let got = s.apply(index, &cmd(0, 0, 0, o.clone()));
                prop_assert_eq!(got, Some(model_write(&mut model, index, &o)));
            }
            ModelOp::SessionPut(c, k, v, a) => {
                let cl = clients.entry(c).or_default();
                let seq = cl.sent.len() as u64 + 1;
                cl.acked = cl.acked.max(seq.saturating_sub(1 + a as u64));
                let o = if v % 3 == 0 {
                    del(key(k))
                } else {
                    put(key(k), &[v])
                };
                let data = cmd(c as u64, seq, cl.acked, o.clone());
                let got = s.apply(index, &data);
                let want = Some(model_write(&mut model, index, &o));
                prop_assert_eq!(&got, &want);
                cl.sent.push((data, want));
            }
            ModelOp::Retry(c, i) => {
                let Some(cl) = clients.get(&c) else {
                    let _ = s.apply(index, &[]);
                    continue;
                };
                if cl.sent.is_empty() {
                    let _ = s.apply(index, &[]);
                    continue;
                }
                let i = i % cl.sent.len();
                let seq = i as u64 + 1;
                let (data, first) = &cl.sent[i];
                let got = s.apply(index, data);
                let acked_in_data = kvpb::Command::decode(data.clone()).unwrap().acked_seq;
                if seq <= cl.acked.max(acked_in_data) {
                    prop_assert_eq!(error_code(&got), Some(kvpb::ErrorCode::BadRequest));
                } else {
                    prop_assert_eq!(
                        &got,
                        first,
                        "retry of seq {} must return the saved result",
                        seq
                    );
                }
            }
            ModelOp::Scan(st, en, p, l, k) => {
                let _ = s.apply(index, &[]);
                let prefix: &[u8] = match p {
                    0 => b"",
                    1 => b"a",
                    _ => b"b",
                };
                let req = kvpb::Scan {
                    start: if st % 4 == 0 {
                        Bytes::new()
                    } else {
                        b(key(st))
                    },
                    end: if en % 4 == 0 {
                        Bytes::new()
                    } else {
                        b(key(en))
                    },
                    prefix: b(prefix),
                    limit: l as u32,
                    keys_only: k,
                };
                let mut want = model_scan(&model, &req);
                if !req.prefix.is_empty() {
                    want.retain(|kv| kv.key >= req.start);
                }
                // Page through with the continuation key.
                let mut got = Vec::new();
                let mut page = req.clone();
                loop {
                    let r = s.scan(&page);
                    let lim = if page.limit == 0 {
                        store::DEFAULT_SCAN_LIMIT
                    } else {
                        page.limit as usize
                    };
                    prop_assert!(r.kvs.len() <= lim);
                    got.extend(r.kvs);
                    if r.next_key.is_empty() {
                        break;
                    }
                    prop_assert!(got.len() <= want.len(), "continuation loops");
                    page.start = r.next_key;
                }
                prop_assert_eq!(got, want);
            }
            ModelOp::Snapshot => {
                let _ = s.apply(index, &[]);
                let buf = snapshot_bytes(&s);
                let r = KvStore::restore_snapshot(&mut &buf[..])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&r, &s);
                s = r;
            }
            ModelOp::Noop => {
                prop_assert_eq!(s.apply(index, &[]), None);
            }
        }
        prop_assert_eq!(s.applied(), index);
        prop_assert_eq!(s.len(), model.len());
    }
    for (k, (v, ver)) in &model {
        let g = s.get(k);
        prop_assert!(g.found);
        prop_assert_eq!(&g.value[..], &v[..]);
        prop_assert_eq!(g.version, *ver);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn matches_model(ops in proptest::collection::vec(op_strategy(), 1..120)) {
        run_model(ops)?;
    }
}

#[test]
fn scan_page_ends_before_the_byte_budget_but_returns_at_least_one_pair() {
    let mut s = KvStore::new();
    for i in 0..10u64 {
        let k = format!("k{i}");
        s.apply(i + 1, &cmd(0, 0, 0, put(k.as_bytes(), &[b'x'; 100])));
    }
    // Each pair is 2 + 100 bytes: 350 bytes hold three.
    let r = s.scan_page(&kvpb::Scan::default(), 350);
    assert_eq!(
        r.kvs.len(),
        3,
        "{:?}",
        r.kvs.iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );
    assert_eq!(&r.next_key[..], b"k3");
    // A budget below one pair still returns one (a page always makes progress).
    let r = s.scan_page(&kvpb::Scan::default(), 10);
    assert_eq!((r.kvs.len(), &r.next_key[..]), (1, &b"k1"[..]));
}

// ---- the NO_SPACE alarm ----------------------------------------------------------------------

fn alarm(raise: bool, node_id: u64) -> Op {
    Op::Alarm(kvpb::Alarm { raise, node_id })
}

#[test]
fn alarm_refuses_growing_writes_at_apply_and_keeps_deletes_and_sessions_exact() {
    let mut s = KvStore::new();
    s.apply(1, &cmd(0, 0, 0, put(b"a", b"12345"))).unwrap();
    s.apply(2, &cmd(0, 0, 0, put(b"b", b"xy"))).unwrap();
    assert_eq!(s.state_bytes(), 2 + 7, "keys and values");
    let r = s.apply(3, &cmd(0, 0, 0, alarm(true, 2)));
    assert!(matches!(r, Some(R::Status(ref st)) if st.no_space_alarm && st.alarm_raised_by == 2));
    assert_eq!(s.alarm(), Some(2));
    // Puts and value-setting CAS are refused and change nothing; so is a session's write,
    // and its retry gets the same refusal (never applied later by surprise).
    let refused = s.apply(4, &cmd(7, 1, 0, put(b"c", b"v")));
    assert_eq!(error_code(&refused), Some(kvpb::ErrorCode::NoSpace));
    assert_eq!(
        error_code(&s.apply(5, &cmd(0, 0, 0, cas(b"a", 1, b"z", false)))),
        Some(kvpb::ErrorCode::NoSpace)
    );
    assert!(!s.get(b"c").found);
    // Deletes work (and shrink the state).
    assert!(matches!(
        s.apply(6, &cmd(0, 0, 0, del(b"a"))),
        Some(R::Delete(kvpb::DeleteResponse { deleted: true, .. }))
    ));
    assert_eq!(s.state_bytes(), 3);
    assert!(matches!(
        s.apply(7, &cmd(0, 0, 0, cas(b"b", 2, b"", true))),
        Some(R::Cas(kvpb::CasResponse {
            succeeded: true,
            ..
        }))
    ));
    assert_eq!(s.state_bytes(), 0);
    // The alarm survives a snapshot.
    let restored = KvStore::restore_snapshot(&mut &snapshot_bytes(&s)[..]).unwrap();
    assert_eq!(restored.alarm(), Some(2));
    assert_eq!(restored, s);
    // Cleared: writes apply again; the refused seq stays refused.
    s.apply(8, &cmd(0, 0, 0, alarm(false, 0))).unwrap();
    assert_eq!(s.alarm(), None);
    assert_eq!(s.apply(9, &cmd(7, 1, 0, put(b"c", b"v"))), refused);
    assert!(matches!(
        s.apply(10, &cmd(7, 2, 1, put(b"c", b"v"))),
        Some(R::Put(_))
    ));
    assert_eq!(s.state_bytes(), 2);
}

#[test]
fn version_1_snapshots_without_the_alarm_field_are_still_read() {
    let s = sample_store();
    let v2 = snapshot_bytes(&s);
    // Version 1: the same bytes without the 8-byte alarm after the applied index.
    let mut v1 = v2[..8].to_vec();
    v1.extend_from_slice(&1u32.to_be_bytes());
    v1.extend_from_slice(&v2[12..20]);
    v1.extend_from_slice(&v2[28..v2.len() - 4]);
    let crc = crc32fast::hash(&v1);
    v1.extend_from_slice(&crc.to_be_bytes());
    let r = KvStore::restore_snapshot(&mut &v1[..]).unwrap();
    assert_eq!(r, s);
}

// ---- read-modify-write ops (the RESP commands' state-machine side) ---------------------------

fn apply_op(s: &mut KvStore, index: u64, op: Op) -> ApplyResult {
    s.apply(index, &cmd(0, 0, 0, op))
        .expect("a command has a result")
}

fn conditional_put(k: &[u8], v: &[u8], condition: kvpb::PutCondition, return_old: bool) -> Op {
    Op::Put(kvpb::Put {
        key: b(k),
        value: b(v),
        condition: condition as i32,
        return_old,
    })
}

#[test]
fn conditional_puts_write_only_when_their_condition_holds() {
    use kvpb::PutCondition::{IfAbsent, IfPresent};
    let mut s = KvStore::new();
    let r = apply_op(&mut s, 1, conditional_put(b"k", b"1", IfPresent, false));
    assert!(matches!(r, R::Put(p) if p.not_written && p.version == 0));
    assert!(!s.get(b"k").found, "XX on an absent key writes nothing");
    let r = apply_op(&mut s, 2, conditional_put(b"k", b"1", IfAbsent, true));
    assert!(
        matches!(&r, R::Put(p) if !p.not_written && p.version == 2 && !p.old.as_ref().unwrap().found),
        "{r:?}"
    );
    let r = apply_op(&mut s, 3, conditional_put(b"k", b"2", IfAbsent, true));
    assert!(
        matches!(&r, R::Put(p) if p.not_written && p.old.as_ref().unwrap().value == b"1"[..]),
        "{r:?}"
    );
    let r = apply_op(&mut s, 4, conditional_put(b"k", b"3", IfPresent, true));
    assert!(
        matches!(&r, R::Put(p) if p.version == 4 && p.old.as_ref().unwrap().value == b"1"[..]),
        "{r:?}"
    );
    assert_eq!(s.get(b"k").value, b(b"3"));
}

#[test]
fn incr_follows_redis_integer_rules() {
    let mut s = KvStore::new();
    let incr = |k: &[u8], delta| Op::Incr(kvpb::Incr { key: b(k), delta });
    assert!(
        matches!(apply_op(&mut s, 1, incr(b"n", 5)), R::Incr(i) if i.value == 5 && i.version == 1)
    );
    assert!(matches!(apply_op(&mut s, 2, incr(b"n", -7)), R::Incr(i) if i.value == -2));
    assert_eq!(s.get(b"n").value, b(b"-2"));
    for bad in [
        &b"x"[..],
        b" 1",
        b"01",
        b"+1",
        b"-0",
        b"",
        b"99999999999999999999",
    ] {
        let next = s.applied() + 1;
        apply_op(&mut s, next, put(b"v", bad));
        let r = s.apply(s.applied() + 1, &cmd(0, 0, 0, incr(b"v", 1)));
        assert_eq!(error_code(&r), Some(kvpb::ErrorCode::BadRequest), "{bad:?}");
        assert_eq!(s.get(b"v").value, b(bad), "a failed INCR changes nothing");
    }
    apply_op(&mut s, 100, put(b"m", i64::MAX.to_string().as_bytes()));
    let r = apply_op(&mut s, 101, incr(b"m", 1));
    assert!(
        matches!(&r, R::Error(e) if e.message.contains("overflow")),
        "{r:?}"
    );
}

#[test]
fn append_multi_put_and_delete_keys() {
    let mut s = KvStore::new();
    let append = |k: &[u8], v: &[u8]| {
        Op::Append(kvpb::Append {
            key: b(k),
            value: b(v),
        })
    };
    assert!(matches!(apply_op(&mut s, 1, append(b"a", b"xy")), R::Append(a) if a.length == 2));
    assert!(matches!(apply_op(&mut s, 2, append(b"a", b"z")), R::Append(a) if a.length == 3));
    assert_eq!(s.get(b"a").value, b(b"xyz"));
    let big = vec![0u8; crate::limits::MAX_GROWN_VALUE - 2];
    let r = apply_op(&mut s, 3, append(b"a", &big));
    assert!(matches!(&r, R::Error(e) if e.message.contains("maximum allowed size")));
    assert_eq!(
        s.get(b"a").value,
        b(b"xyz"),
        "a refused APPEND changes nothing"
    );
    let kv = |k: &[u8]| kvpb::KeyValue {
        key: b(k),
        value: b(b"v"),
        version: 0,
    };
    let mput = Op::MultiPut(kvpb::MultiPut {
        kvs: vec![kv(b"b"), kv(b"c")],
    });
    assert!(matches!(apply_op(&mut s, 4, mput), R::Put(p) if p.version == 4));
    let with_empty = Op::MultiPut(kvpb::MultiPut {
        kvs: vec![kv(b"d"), kv(b"")],
    });
    assert!(matches!(apply_op(&mut s, 5, with_empty), R::Error(_)));
    assert!(!s.get(b"d").found, "all or nothing");
    let m = s.multi_get(&[b(b"a"), b(b"d"), b(b"c")]);
    let found: Vec<bool> = m.values.iter().map(|g| g.found).collect();
    assert_eq!(found, [true, false, true]);
    let dels = Op::DeleteKeys(kvpb::DeleteKeys {
        keys: vec![b(b"a"), b(b"d"), b(b"c"), b(b"c")],
    });
    assert!(matches!(apply_op(&mut s, 6, dels), R::Delete(d) if d.count == 2 && d.deleted));
    assert_eq!(s.len(), 1);
    let all = Op::DeleteAll(kvpb::DeleteAll {});
    assert!(matches!(apply_op(&mut s, 7, all.clone()), R::Delete(d) if d.count == 1));
    assert!(s.is_empty());
    assert!(matches!(apply_op(&mut s, 8, all), R::Delete(d) if d.count == 0 && !d.deleted));
}
