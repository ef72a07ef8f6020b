//! Tests: loopback transfers (clean, lossy, interrupted, CRC mismatch), background snapshots
//! (fork and inline, paced writes), recovery with a corrupt newest snapshot.

use super::*;
use crate::kv::encode_command;
use crate::pb::kvpb::{self, command::Op};
use crate::pb::raftpb::{message::Body, ConfState, Message};
use crate::rng::Rng;
use crate::storage::SnapshotStore;
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

fn put_cmd(client: u64, seq: u64, k: &[u8], v: &[u8]) -> Bytes {
    encode_command(&kvpb::Command {
        client_id: client,
        seq,
        acked_seq: seq.saturating_sub(1),
        op: Some(Op::Put(kvpb::Put {
            key: Bytes::copy_from_slice(k),
            value: Bytes::copy_from_slice(v),
            ..Default::default()
        })),
    })
}

/// A store with `n` puts (indexes 1..=n) of ~100-byte values, from a few clients.
fn kv_with(n: u64) -> KvStore {
    let mut kv = KvStore::new();
    for i in 1..=n {
        let key = format!("key-{:05}", i % 997);
        let val = format!("{:0>100}", i);
        kv.apply(
            i,
            &put_cmd(1 + i % 3, 1 + i / 3, key.as_bytes(), val.as_bytes()),
        );
    }
    assert_eq!(kv.applied(), n);
    kv
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        conf: Some(ConfState {
            voters: vec![1, 2, 3],
            learners: vec![],
            ..ConfState::default()
        }),
        ..Default::default()
    }
}

/// Writes `kv` as a snapshot (inline) into a fresh store; returns (dir, store, path).
fn snapshot_of(kv: &KvStore, term: u64) -> (tempfile::TempDir, SnapshotStore, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    let mut bg = BackgroundSnapshot::start(
        SnapshotMode::Inline,
        &mut store,
        meta(kv.applied(), term),
        kv,
    )
    .unwrap();
    let done = bg.poll().expect("inline is finished at once").unwrap();
    assert!(bg.poll().is_none(), "result handed out once");
    (dir, store, done.path)
}

fn tmp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

fn small_cfg() -> SenderConfig {
    SenderConfig {
        chunk_size: 1024,
        window: 4,
        retry_ticks: 3,
        max_retries: 20,
        max_restarts: 3,
        finish_ticks: 30,
    }
}

fn response(m: &Message) -> &crate::pb::raftpb::InstallSnapshotResponse {
    match &m.body {
        Some(Body::InstallSnapshotResponse(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn chunk(m: &Message) -> &crate::pb::raftpb::InstallSnapshot {
    match &m.body {
        Some(Body::InstallSnapshot(c)) => c,
        other => panic!("expected a chunk, got {other:?}"),
    }
}

/// Faults applied to messages in both directions.
#[derive(Clone, Copy)]
struct Faults {
    drop: f64,
    dup: f64,
    reorder: f64,
}

const CLEAN: Faults = Faults {
    drop: 0.0,
    dup: 0.0,
    reorder: 0.0,
};

/// Runs a transfer over an in-memory network until the sender is done or fails. Returns the
/// installed snapshot and the number of chunk messages delivered to the receiver.
fn run(
    sender: &mut SnapshotSender,
    rx: &mut SnapshotReceiver,
    rx_store: &mut SnapshotStore,
    faults: Faults,
    rng: &mut Rng,
) -> Result<(Option<InstalledSnapshot>, usize), String> {
    let mut to_rx: VecDeque<Message> = VecDeque::new();
    let mut to_tx: VecDeque<Message> = VecDeque::new();
    let mut out = Vec::new();
    sender.start(&mut out);
    to_rx.extend(out.drain(..));
    let mut installed = None;
    let mut delivered = 0;
    for _ in 0..100_000 {
        match sender.status() {
            SendStatus::Done => return Ok((installed, delivered)),
            SendStatus::Failed(e) => return Err(e.clone()),
            SendStatus::InProgress => {}
        }
        let pick = |q: &mut VecDeque<Message>, rng: &mut Rng| -> Option<Message> {
            if q.len() > 1 && rng.chance(faults.reorder) {
                let i = rng.range(0, q.len() as u64) as usize;
                q.remove(i)
            } else {
                q.pop_front()
            }
        };
        if let Some(m) = pick(&mut to_rx, rng) {
            if rng.chance(faults.drop) {
                continue;
            }
            if rng.chance(faults.dup) {
                to_rx.push_back(m.clone());
            }
            delivered += 1;
            if std::env::var("TRACE").is_ok() {
                eprintln!("rx chunk {} (rx at {})", chunk(&m).offset, rx.received());
            }
            match rx.on_message(rx_store, 0, &m) {
                Received::Ignored => return Err("chunk ignored".into()),
                Received::Reply(r) => to_tx.push_back(r),
                Received::Complete(rs) => {
                    assert!(installed.is_none(), "completed twice");
                    let inst = rs.install(rx_store).map_err(|e| e.to_string())?;
                    to_tx.push_back(inst.reply.clone());
                    installed = Some(inst);
                }
            }
        } else if let Some(m) = pick(&mut to_tx, rng) {
            if rng.chance(faults.drop) {
                continue;
            }
            if rng.chance(faults.dup) {
                to_tx.push_back(m.clone());
            }
            sender.on_response(response(&m), &mut out);
            if std::env::var("TRACE").is_ok() {
                eprintln!(
                    "tx resp {:?} -> acked {} sends {:?}",
                    response(&m),
                    sender.acked(),
                    out.iter().map(|m| chunk(m).offset).collect::<Vec<_>>()
                );
            }
            to_rx.extend(out.drain(..));
        } else {
            sender.tick(&mut out);
            to_rx.extend(out.drain(..));
        }
    }
    Err("no outcome after 100000 steps".into())
}

fn check_restored(inst: &InstalledSnapshot, want: &KvStore) {
    let (m, kv) = restore_kv(&inst.path).unwrap();
    assert_eq!(m, inst.meta);
    assert_eq!(kv.applied(), want.applied());
    assert_eq!(kv.digest(), want.digest());
    assert_eq!(kv.len(), want.len());
}

#[test]
fn clean_transfer_of_a_multi_chunk_snapshot() {
    let kv = kv_with(400);
    let (_d, _s, path) = snapshot_of(&kv, 3);
    let rx_dir = tempfile::tempdir().unwrap();
    let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
    let mut sender = SnapshotSender::new(small_cfg(), 1, 2, 7, &path).unwrap();
    assert_eq!(sender.meta(), &meta(400, 3));

    // The first window: 4 chunks at consecutive offsets, meta on each, not done yet.
    let mut out = Vec::new();
    assert_eq!(sender.start(&mut out), SendStatus::InProgress);
    assert_eq!(out.len(), 4);
    for (i, m) in out.iter().enumerate() {
        assert_eq!((m.from, m.to, m.term), (1, 2, 7));
        let c = chunk(m);
        assert_eq!(c.offset, i as u64 * 1024);
        assert_eq!(c.data.len(), 1024);
        assert!(!c.done);
        assert_eq!(c.meta.as_ref(), Some(&meta(400, 3)));
    }
    // No acknowledgement: no more chunks, whatever the ticks (until the retry timer).
    let mut more = Vec::new();
    sender.tick(&mut more);
    assert!(more.is_empty());

    let mut sender = SnapshotSender::new(small_cfg(), 1, 2, 7, &path).unwrap();
    let mut rx = SnapshotReceiver::new();
    let (inst, delivered) =
        run(&mut sender, &mut rx, &mut rx_store, CLEAN, &mut Rng::new(1)).unwrap();
    let inst = inst.expect("installed");
    let payload = std::fs::metadata(&path).unwrap().len();
    let chunks = payload.div_ceil(1024) as usize;
    assert!(chunks > 20, "multi-chunk: {chunks}");
    // Without faults every chunk is delivered once (payload < file size, so <= chunks).
    assert!(
        delivered <= chunks,
        "{delivered} deliveries for {chunks} chunks"
    );
    let (r_from, r_to, r_term) = (inst.reply.from, inst.reply.to, inst.reply.term);
    assert_eq!((r_from, r_to, r_term), (2, 1, 7));
    assert!(response(&inst.reply).done && response(&inst.reply).success);
    check_restored(&inst, &kv);
    assert!(!rx.in_progress());
    assert!(tmp_files(rx_dir.path()).is_empty());
}

#[test]
fn lossy_transfers_with_drops_duplicates_and_reordering() {
    let kv = kv_with(300);
    let (_d, _s, path) = snapshot_of(&kv, 2);
    // SNAPSHOT_SEED=n reruns one seed (failures print theirs).
    let seeds: Vec<u64> = match std::env::var("SNAPSHOT_SEED") {
        Ok(s) => vec![s.parse().expect("SNAPSHOT_SEED must be a number")],
        Err(_) => (0..25).collect(),
    };
    for seed in seeds {
        let rx_dir = tempfile::tempdir().unwrap();
        let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
        let cfg = SenderConfig {
            max_restarts: 10,
            ..small_cfg()
        };
        let mut sender = SnapshotSender::new(cfg, 1, 2, 5, &path).unwrap();
        let mut rx = SnapshotReceiver::new();
        let faults = Faults {
            drop: 0.1,
            dup: 0.1,
            reorder: 0.2,
        };
        let mut rng = Rng::new(seed);
        let (inst, _) = run(&mut sender, &mut rx, &mut rx_store, faults, &mut rng)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let inst = inst.unwrap_or_else(|| panic!("seed {seed}: done without install"));
        check_restored(&inst, &kv);
        assert!(tmp_files(rx_dir.path()).is_empty(), "seed {seed}");
    }
}

#[test]
fn out_of_order_and_duplicate_chunks_are_not_written() {
    let kv = kv_with(100);
    let (_d, _s, path) = snapshot_of(&kv, 1);
    let rx_dir = tempfile::tempdir().unwrap();
    let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
    let mut sender = SnapshotSender::new(small_cfg(), 1, 2, 4, &path).unwrap();
    let mut rx = SnapshotReceiver::new();
    let mut out = Vec::new();
    sender.start(&mut out);
    let answer = |rx: &mut SnapshotReceiver, store: &mut SnapshotStore, m: &Message| match rx
        .on_message(store, 0, m)
    {
        Received::Reply(r) => *response(&r),
        _ => panic!("expected a reply"),
    };
    // Chunk 1 before chunk 0: no transfer to continue, so "broken, restart from 0".
    let r = answer(&mut rx, &mut rx_store, &out[1]);
    assert_eq!((r.next_offset, r.success, r.index), (0, false, 100));
    assert!(!rx.in_progress());
    assert_eq!(answer(&mut rx, &mut rx_store, &out[0]).next_offset, 1024);
    // Duplicate of chunk 0 and a gap (chunk 2 before 1): both answered with 1024.
    assert_eq!(answer(&mut rx, &mut rx_store, &out[0]).next_offset, 1024);
    assert_eq!(answer(&mut rx, &mut rx_store, &out[2]).next_offset, 1024);
    assert_eq!(rx.received(), 1024);
    // The duplicate ack makes the sender go back and resend chunks 1..=3 (once).
    let mut again = Vec::new();
    let dup = crate::pb::raftpb::InstallSnapshotResponse {
        index: 100,
        next_offset: 1024,
        success: true,
        done: false,
    };
    sender.on_response(&dup, &mut again); // progress to 1024: one new chunk (4)
    assert_eq!(
        again.iter().map(|m| chunk(m).offset).collect::<Vec<_>>(),
        vec![4096]
    );
    again.clear();
    sender.on_response(&dup, &mut again); // duplicate: go back
    assert_eq!(
        again.iter().map(|m| chunk(m).offset).collect::<Vec<_>>(),
        vec![1024, 2048, 3072, 4096]
    );
    again.clear();
    sender.on_response(&dup, &mut again); // same duplicate again: no second resend
    assert!(again.is_empty());
    // A response for another snapshot index is ignored.
    let other = crate::pb::raftpb::InstallSnapshotResponse {
        index: 99,
        next_offset: 0,
        success: false,
        done: true,
    };
    assert_eq!(
        sender.on_response(&other, &mut again),
        SendStatus::InProgress
    );
    assert!(again.is_empty());
}

#[test]
fn crc_mismatch_is_detected_and_the_sender_restarts_from_zero() {
    let kv = kv_with(50);
    let (_d, _s, path) = snapshot_of(&kv, 1);
    let rx_dir = tempfile::tempdir().unwrap();
    let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
    let cfg = SenderConfig {
        window: 1000,
        ..small_cfg()
    };
    let mut sender = SnapshotSender::new(cfg, 1, 2, 4, &path).unwrap();
    let mut out = Vec::new();
    sender.start(&mut out);
    let last = out.len() - 1;
    assert!(last > 2 && chunk(&out[last]).done && !chunk(&out[last - 1]).done);
    assert_ne!(chunk(&out[last]).crc, 0);
    // Corrupt one byte in the middle of a chunk in flight (the per-message framing does not
    // catch it in this test; the end-to-end CRC must).
    if let Some(Body::InstallSnapshot(c)) = &mut out[1].body {
        let mut d = c.data.to_vec();
        d[10] ^= 0x40;
        c.data = Bytes::from(d);
    }
    let mut rx = SnapshotReceiver::new();
    let mut final_reply = None;
    for m in &out {
        match rx.on_message(&mut rx_store, 0, m) {
            Received::Reply(r) => final_reply = Some(r),
            Received::Complete(_) => panic!("a corrupt snapshot was accepted"),
            Received::Ignored => panic!("ignored"),
        }
    }
    let r = *response(final_reply.as_ref().unwrap());
    assert!(!r.success && !r.done);
    assert!(!rx.in_progress());
    assert!(tmp_files(rx_dir.path()).is_empty(), "partial file deleted");
    assert!(rx_store.list().unwrap().is_empty(), "nothing published");
    // The sender starts over from offset 0 and the clean retry succeeds.
    let mut again = Vec::new();
    assert_eq!(sender.on_response(&r, &mut again), SendStatus::InProgress);
    assert_eq!(chunk(&again[0]).offset, 0);
    let mut done = None;
    for m in &again {
        if let Received::Complete(rs) = rx.on_message(&mut rx_store, 0, m) {
            done = Some(rs.install(&mut rx_store).unwrap());
        }
    }
    let inst = done.expect("clean retry installs");
    check_restored(&inst, &kv);
    assert_eq!(
        sender.on_response(response(&inst.reply), &mut again),
        SendStatus::Done
    );
}

#[test]
fn interrupted_transfer_is_replaced_and_restarted_cleanly() {
    let kv_old = kv_with(200);
    let kv_new = kv_with(260);
    let (_d1, _s1, path_old) = snapshot_of(&kv_old, 2);
    let (_d2, _s2, path_new) = snapshot_of(&kv_new, 3);
    let rx_dir = tempfile::tempdir().unwrap();
    let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
    let mut rx = SnapshotReceiver::new();

    // Leader 1 (term 5) gets halfway, then dies.
    let mut s1 = SnapshotSender::new(small_cfg(), 1, 2, 5, &path_old).unwrap();
    let mut out = Vec::new();
    s1.start(&mut out);
    for m in &out[..3] {
        assert!(matches!(
            rx.on_message(&mut rx_store, 0, m),
            Received::Reply(_)
        ));
    }
    assert_eq!(rx.received(), 3 * 1024);
    assert_eq!(tmp_files(rx_dir.path()).len(), 1);

    // Leader 3 (term 6) streams a newer snapshot: the partial one is discarded.
    let mut s3 = SnapshotSender::new(small_cfg(), 3, 2, 6, &path_new).unwrap();
    let mut out3 = Vec::new();
    s3.start(&mut out3);
    assert!(matches!(
        rx.on_message(&mut rx_store, 0, &out3[0]),
        Received::Reply(_)
    ));
    assert_eq!(rx.received(), 1024);
    let tmps = tmp_files(rx_dir.path());
    assert_eq!(tmps.len(), 1);
    assert!(tmps[0].contains(&format!("{:020}", 260)), "{tmps:?}");
    // A late chunk of the old transfer does not disturb the new one.
    match rx.on_message(&mut rx_store, 0, &out[3]) {
        Received::Reply(r) => assert_eq!(response(&r).index, 200),
        _ => panic!("expected a reply"),
    }
    assert_eq!(rx.received(), 1024);

    // The follower restarts its receiver state (e.g. it aborted): the next chunk gets
    // next_offset 0 and the sender restarts from the top.
    rx.abort();
    assert!(tmp_files(rx_dir.path()).is_empty());
    let r = match rx.on_message(&mut rx_store, 0, &out3[1]) {
        Received::Reply(r) => *response(&r),
        _ => panic!("expected a reply"),
    };
    assert_eq!(r.next_offset, 0);
    // Leader 3 had this much acknowledged:
    let mut o = Vec::new();
    let ack = crate::pb::raftpb::InstallSnapshotResponse {
        index: 260,
        next_offset: 1024,
        success: true,
        done: false,
    };
    s3.on_response(&ack, &mut o);
    o.clear();
    s3.on_response(&r, &mut o);
    assert_eq!(chunk(&o[0]).offset, 0, "restarted from offset 0");
    assert_eq!(s3.acked(), 0);

    // From here the transfer runs to completion.
    let mut s3 = SnapshotSender::new(small_cfg(), 3, 2, 6, &path_new).unwrap();
    let (inst, _) = run(&mut s3, &mut rx, &mut rx_store, CLEAN, &mut Rng::new(9)).unwrap();
    check_restored(&inst.unwrap(), &kv_new);
    assert!(tmp_files(rx_dir.path()).is_empty());
}

#[test]
fn lost_done_answer_is_repeated_not_restarted() {
    let kv = kv_with(30);
    let (_d, _s, path) = snapshot_of(&kv, 1);
    let rx_dir = tempfile::tempdir().unwrap();
    let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
    let mut sender = SnapshotSender::new(
        SenderConfig {
            window: 100,
            ..small_cfg()
        },
        1,
        2,
        4,
        &path,
    )
    .unwrap();
    let mut out = Vec::new();
    sender.start(&mut out);
    let mut rx = SnapshotReceiver::new();
    let mut got = None;
    for m in &out {
        if let Received::Complete(rs) = rx.on_message(&mut rx_store, 0, m) {
            // The core found it stale: discard, still answer done.
            got = Some(*response(&rs.discard()));
        }
    }
    let r = got.expect("complete");
    assert!(r.done && r.success);
    assert!(
        rx_store.list().unwrap().is_empty(),
        "discarded, not published"
    );
    // The answer was lost; the resent last chunk is answered done again.
    let last = out.last().unwrap();
    match rx.on_message(&mut rx_store, 0, last) {
        Received::Reply(m) => {
            let r = response(&m);
            assert!(r.done && r.success && r.index == 30);
        }
        _ => panic!("expected a done reply"),
    }
    assert_eq!(sender.on_response(&r, &mut out), SendStatus::Done);
}

#[test]
fn sender_gives_up_after_retries_without_progress() {
    let kv = kv_with(30);
    let (_d, _s, path) = snapshot_of(&kv, 1);
    let cfg = SenderConfig {
        retry_ticks: 2,
        max_retries: 3,
        ..small_cfg()
    };
    let mut sender = SnapshotSender::new(cfg, 1, 2, 4, &path).unwrap();
    let mut out = Vec::new();
    sender.start(&mut out);
    let mut resends = 0;
    for _ in 0..100 {
        out.clear();
        match sender.tick(&mut out) {
            SendStatus::InProgress => resends += usize::from(!out.is_empty()),
            SendStatus::Failed(e) => {
                assert!(e.contains("no progress"), "{e}");
                assert_eq!(resends, 3);
                return;
            }
            SendStatus::Done => panic!("done without an answer"),
        }
    }
    panic!("never failed");
}

/// A one-chunk transfer whose every byte the receiver holds and the sender has seen
/// acknowledged: the receiver now validates it (`rs.install`) before it answers `done`.
struct Validating {
    sender: SnapshotSender,
    rx: SnapshotReceiver,
    rx_store: SnapshotStore,
    rs: Box<ReceivedSnapshot>,
    /// Holds the receiver's directory: bind it (not `..`) or it is deleted at once.
    _rx_dir: tempfile::TempDir,
}

fn all_bytes_acknowledged(cfg: &SenderConfig, path: &std::path::Path) -> Validating {
    let mut sender = SnapshotSender::new(cfg.clone(), 1, 2, 4, path).unwrap();
    let rx_dir = tempfile::tempdir().unwrap();
    let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
    let mut rx = SnapshotReceiver::new();
    let mut out = Vec::new();
    sender.start(&mut out);
    assert_eq!(out.len(), 1, "one chunk");
    let Received::Complete(rs) = rx.on_message(&mut rx_store, 0, &out[0]) else {
        panic!("expected the whole snapshot");
    };
    let progress = rs.progress_reply();
    let r = response(&progress);
    assert!(r.success && !r.done, "{r:?}");
    out.clear();
    assert_eq!(sender.on_response(r, &mut out), SendStatus::InProgress);
    Validating {
        sender,
        rx,
        rx_store,
        rs,
        _rx_dir: rx_dir,
    }
}

/// The receiver validates the whole payload before it installs (and answers `done`), so after
/// acknowledging every byte the sender waits `finish_ticks` for the `done` (not `retry_ticks`),
/// without resending data (only empty "finished?" probes); a `done` in that time ends the
/// transfer.
#[test]
fn sender_waits_for_done_while_the_peer_validates() {
    let kv = kv_with(30);
    let (_d, _s, path) = snapshot_of(&kv, 1);
    let cfg = SenderConfig {
        chunk_size: 1 << 20,
        max_retries: 3,
        ..small_cfg()
    };
    // Longer than the sender would wait for progress while chunks are in flight.
    assert!(cfg.finish_ticks > cfg.retry_ticks * (cfg.max_retries + 1));
    let Validating {
        mut sender,
        mut rx_store,
        rs,
        _rx_dir,
        ..
    } = all_bytes_acknowledged(&cfg, &path);
    let mut out = Vec::new();
    for t in 1..cfg.finish_ticks {
        out.clear();
        assert_eq!(sender.tick(&mut out), SendStatus::InProgress, "tick {t}");
        for m in &out {
            let c = chunk(m);
            assert!(
                c.data.is_empty() && c.done,
                "tick {t}: data resent while the peer validates: {m:?}"
            );
        }
    }
    let inst = rs.install(&mut rx_store).unwrap();
    assert_eq!(inst.kv.digest(), kv.digest());
    assert_eq!(
        sender.on_response(response(&inst.reply), &mut out),
        SendStatus::Done
    );
}

#[test]
fn sender_rejects_a_corrupt_snapshot_file() {
    let kv = kv_with(200);
    let (_d, _s, path) = snapshot_of(&kv, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let mut sender = SnapshotSender::new(
        SenderConfig {
            window: 1000,
            ..small_cfg()
        },
        1,
        2,
        4,
        &path,
    )
    .unwrap();
    let mut out = Vec::new();
    match sender.start(&mut out) {
        SendStatus::Failed(e) => assert!(e.contains("CRC"), "{e}"),
        s => panic!("corrupt file streamed: {s:?}"),
    }
}

fn poll_until_done(bg: &mut BackgroundSnapshot) -> Result<SnapshotDone, SnapshotError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = bg.poll() {
            return r;
        }
        assert!(Instant::now() < deadline, "snapshot child did not finish");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn fork_snapshot_captures_the_state_at_start_while_the_parent_mutates() {
    let mut kv = kv_with(3000);
    let before = kv.digest();
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    let mut bg =
        BackgroundSnapshot::start(SnapshotMode::Fork, &mut store, meta(3000, 2), &kv).unwrap();
    // The parent keeps applying (overwrites every key) while the child writes.
    for i in 3001..=6000 {
        let key = format!("key-{:05}", i % 997);
        kv.apply(i, &put_cmd(9, i, key.as_bytes(), b"changed"));
    }
    assert_ne!(kv.digest(), before);
    let done = poll_until_done(&mut bg).unwrap();
    assert!(!bg.is_running());
    assert!(bg.poll().is_none());
    assert_eq!(done.meta, meta(3000, 2));
    assert_eq!(
        done.path,
        dir.path()
            .join(crate::storage::snapshot::file_name(3000, 2))
    );
    let (m, restored) = restore_kv(&done.path).unwrap();
    assert_eq!(m, meta(3000, 2));
    assert_eq!(restored.digest(), before);
    assert_eq!(restored.applied(), 3000);
    assert!(tmp_files(dir.path()).is_empty());
}

#[test]
fn fork_child_failure_is_reported_with_its_message() {
    let kv = kv_with(10);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let mut store = SnapshotStore::open(&snap).unwrap();
    // The directory vanishes: the child cannot create its file.
    std::fs::remove_dir(&snap).unwrap();
    let mut bg =
        BackgroundSnapshot::start(SnapshotMode::Fork, &mut store, meta(10, 1), &kv).unwrap();
    let err = poll_until_done(&mut bg).unwrap_err().to_string();
    assert!(err.contains("status 1") && err.contains("snap"), "{err}");
}

#[test]
fn inline_snapshot_and_index_mismatch() {
    let kv = kv_with(20);
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    let err = BackgroundSnapshot::start(SnapshotMode::Inline, &mut store, meta(19, 1), &kv)
        .err()
        .expect("index must be the applied index");
    assert!(err.to_string().contains("index 19"), "{err}");
    let mut bg =
        BackgroundSnapshot::start(SnapshotMode::Inline, &mut store, meta(20, 1), &kv).unwrap();
    assert!(!bg.is_running());
    let done = bg.poll().unwrap().unwrap();
    assert_eq!(restore_kv(&done.path).unwrap().1.digest(), kv.digest());
}

#[test]
fn load_latest_falls_back_when_the_newest_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    assert!(load_latest(&store).unwrap().is_none(), "fresh node");

    let old = kv_with(100);
    let new = kv_with(150);
    for kv in [&old, &new] {
        let mut bg =
            BackgroundSnapshot::start(SnapshotMode::Inline, &mut store, meta(kv.applied(), 1), kv)
                .unwrap();
        bg.poll().unwrap().unwrap();
    }
    let l = load_latest(&store).unwrap().unwrap();
    assert_eq!((l.meta.index, l.kv.digest()), (150, new.digest()));

    // Damage the newest: the previous one is used.
    let newest = l.path.clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, &bytes).unwrap();
    let l = load_latest(&store).unwrap().unwrap();
    assert_eq!((l.meta.index, l.kv.digest()), (100, old.digest()));
    assert_eq!(l.meta, meta(100, 1));

    // Both damaged (the older one truncated): a clear error naming both files.
    let older = l.path.clone();
    let len = std::fs::metadata(&older).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&older)
        .unwrap()
        .set_len(len - 30)
        .unwrap();
    let err = load_latest(&store)
        .err()
        .expect("no usable snapshot")
        .to_string();
    assert!(err.contains("no usable snapshot"), "{err}");
    assert!(err.contains(&newest.display().to_string()), "{err}");
    assert!(err.contains(&older.display().to_string()), "{err}");
}

#[test]
fn snapshot_at_or_below_applied_is_answered_done_without_a_transfer() {
    let kv = kv_with(40);
    let (_d, _s, path) = snapshot_of(&kv, 1);
    let rx_dir = tempfile::tempdir().unwrap();
    let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
    let mut sender = SnapshotSender::new(small_cfg(), 1, 2, 4, &path).unwrap();
    let mut out = Vec::new();
    sender.start(&mut out);
    let mut rx = SnapshotReceiver::new();
    for applied in [40, 41] {
        match rx.on_message(&mut rx_store, applied, &out[0]) {
            Received::Reply(m) => {
                let r = *response(&m);
                assert!(r.done && r.success && r.index == 40);
                assert_eq!(sender.on_response(&r, &mut Vec::new()), SendStatus::Done);
            }
            _ => panic!("expected an immediate done"),
        }
    }
    assert!(!rx.in_progress());
    assert!(tmp_files(rx_dir.path()).is_empty(), "no file written");
    // One below: it is received.
    assert!(matches!(
        rx.on_message(&mut rx_store, 39, &out[0]),
        Received::Reply(_)
    ));
    assert!(rx.in_progress());
}

/// A KV snapshot payload at index 77 of exactly `len` bytes (at least 65: header 44, one key
/// record of 1 + `len - 65` value bytes (4 + 1 + 4 + n + 8), checksum 4; or exactly 48: no key).
/// The transfer does not look inside it, but the receiver validates it before installing.
fn kv_payload(len: usize) -> Vec<u8> {
    let mut kv = KvStore::new();
    if len == 48 {
        kv.apply(77, b"");
    } else {
        assert!(len >= 65, "no KV snapshot of {len} bytes");
        let value: Vec<u8> = (0..len - 65).map(|i| (i * 7 % 251) as u8).collect();
        kv.apply(77, &put_cmd(0, 0, b"k", &value));
    }
    let mut v = Vec::new();
    kv.write_snapshot(&mut v).unwrap();
    assert_eq!(v.len(), len, "KV snapshot size");
    v
}

/// A snapshot file with a KV payload of `len` bytes.
fn raw_snapshot(len: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    let payload = kv_payload(len);
    let mut w = store.create(&meta(77, 3)).unwrap();
    w.write_all(&payload).unwrap();
    let path = w.finish().unwrap();
    (dir, path, payload)
}

fn received_payload(path: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    let mut r = crate::storage::SnapshotReader::open(path).unwrap();
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn payload_sizes_at_chunk_boundaries() {
    // The smallest KV snapshot (48 bytes), just below, at and above one chunk (1024), ...
    for len in [48usize, 1023, 1024, 1025, 4096, 5000] {
        let (_d, path, payload) = raw_snapshot(len);
        let mut sender = SnapshotSender::new(small_cfg(), 1, 2, 4, &path).unwrap();
        let rx_dir = tempfile::tempdir().unwrap();
        let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
        let mut rx = SnapshotReceiver::new();
        let (inst, delivered) =
            run(&mut sender, &mut rx, &mut rx_store, CLEAN, &mut Rng::new(0)).unwrap();
        let inst = inst.unwrap_or_else(|| panic!("len {len}: not installed"));
        assert_eq!(delivered, len.div_ceil(1024).max(1), "len {len}");
        assert_eq!(received_payload(&inst.path), payload, "len {len}");
        assert_eq!(inst.meta, meta(77, 3));
    }
}

#[test]
fn sender_skips_ahead_to_a_peer_that_kept_its_partial_file() {
    let (_d, path, payload) = raw_snapshot(10 * 1024);
    let rx_dir = tempfile::tempdir().unwrap();
    let mut rx_store = SnapshotStore::open(rx_dir.path()).unwrap();
    let mut rx = SnapshotReceiver::new();
    let mut sender = SnapshotSender::new(small_cfg(), 1, 2, 4, &path).unwrap();
    let mut out = Vec::new();
    sender.start(&mut out);
    // The peer gets chunks 0..=3; its answers are lost.
    for m in &out {
        rx.on_message(&mut rx_store, 0, m);
    }
    assert_eq!(rx.received(), 4096);
    // A stray rejection makes the sender restart from 0 ...
    let reject = crate::pb::raftpb::InstallSnapshotResponse {
        index: 77,
        next_offset: 0,
        success: false,
        done: false,
    };
    let mut again = Vec::new();
    sender.on_response(&reject, &mut again);
    assert_eq!(chunk(&again[0]).offset, 0);
    // ... the peer answers its chunk 0 with "I hold 4096" and the sender jumps there.
    let r = match rx.on_message(&mut rx_store, 0, &again[0]) {
        Received::Reply(m) => *response(&m),
        _ => panic!("expected a reply"),
    };
    assert_eq!(r.next_offset, 4096);
    let mut next = Vec::new();
    sender.on_response(&r, &mut next);
    assert_eq!(sender.acked(), 4096);
    assert_eq!(
        next.iter().map(|m| chunk(m).offset).collect::<Vec<_>>(),
        vec![4096, 5120, 6144, 7168]
    );
    // The rest runs through, and the end-to-end CRC (computed over the skipped bytes too) holds.
    let mut queue: VecDeque<Message> = next.into();
    let mut installed = None;
    while let Some(m) = queue.pop_front() {
        let reply = match rx.on_message(&mut rx_store, 0, &m) {
            Received::Reply(r) => r,
            Received::Complete(rs) => {
                let inst = rs.install(&mut rx_store).unwrap();
                let r = inst.reply.clone();
                installed = Some(inst);
                r
            }
            Received::Ignored => panic!("ignored"),
        };
        let mut o = Vec::new();
        sender.on_response(response(&reply), &mut o);
        queue.extend(o);
    }
    assert_eq!(sender.status(), &SendStatus::Done);
    assert_eq!(received_payload(&installed.unwrap().path), payload);
}

#[test]
fn paced_writer_reports_every_slice_and_writes_a_valid_file() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    let payload: Vec<u8> = (0..1_000_000usize).map(|i| (i * 13 % 251) as u8).collect();
    let mut w = store.create(&meta(5, 1)).unwrap();
    let slices = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&slices);
    // 64 KiB: the smallest slice (one storage chunk); 1 MB of payload is ~15 slices.
    w.set_pacing(1, Box::new(move |n| seen.lock().unwrap().push(n)));
    w.write_all(&payload).unwrap();
    let path = w.finish().unwrap();
    let slices = slices.lock().unwrap().clone();
    assert!(slices.len() >= 14, "{slices:?}");
    // Every slice is at least one chunk; together they never exceed the file.
    assert!(slices.iter().all(|&n| n >= 64 << 10), "{slices:?}");
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert!(slices.iter().sum::<u64>() <= file_len);
    assert!(file_len - slices.iter().sum::<u64>() < 2 * (64 << 10) + 64);
    assert_eq!(received_payload(&path), payload);
}

#[test]
fn fork_snapshot_with_explicit_pacing_is_complete() {
    // More than one 64 KiB slice of state; the rate is high enough that the child never sleeps
    // long, but the limiter and the slicing run in the child for real.
    let kv = kv_with(5000);
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    let pacing = WritePacing {
        bytes_per_sec: 1 << 30,
        slice_bytes: 64 << 10,
    };
    let mut bg =
        BackgroundSnapshot::start_paced(SnapshotMode::Fork, &mut store, meta(5000, 1), &kv, pacing)
            .unwrap();
    let done = poll_until_done(&mut bg).unwrap();
    let (m, restored) = restore_kv(&done.path).unwrap();
    assert_eq!(m, meta(5000, 1));
    assert_eq!(restored.digest(), kv.digest());
    assert!(tmp_files(dir.path()).is_empty());
}

/// A lost `done` answer costs one retry interval, not `finish_ticks`: the sender's probe
/// (an empty last chunk) is answered `done` again by a receiver that finished.
#[test]
fn a_lost_done_answer_is_recovered_by_the_next_probe() {
    let kv = kv_with(30);
    let (_d, _s, path) = snapshot_of(&kv, 1);
    let cfg = SenderConfig {
        chunk_size: 1 << 20,
        ..small_cfg()
    };
    let Validating {
        mut sender,
        mut rx,
        mut rx_store,
        rs,
        _rx_dir,
        ..
    } = all_bytes_acknowledged(&cfg, &path);
    let mut out = Vec::new();
    let inst = rs.install(&mut rx_store).unwrap();
    drop(inst.reply); // the `done` answer is lost
    let mut ticks = 0;
    let probe = loop {
        out.clear();
        ticks += 1;
        assert_eq!(sender.tick(&mut out), SendStatus::InProgress);
        if let Some(m) = out.pop() {
            break m;
        }
        assert!(ticks <= cfg.retry_ticks, "no probe within {ticks} ticks");
    };
    // The node installed it (applied = its index): the receiver answers `done` at once.
    let Received::Reply(again) = rx.on_message(&mut rx_store, inst.meta.index, &probe) else {
        panic!("the probe must be answered");
    };
    assert_eq!(
        sender.on_response(response(&again), &mut out),
        SendStatus::Done,
        "after {ticks} ticks"
    );
}
