//! `raftkv-log`: inspect a raftkv data directory offline. Never modifies anything.
//!
//! ```text
//! raftkv-log stats DIR                          segments, entries, ranges, snapshots, compaction,
//!                                               cluster id
//! raftkv-log dump DIR [--from N] [--to M] [--json]   one line per entry
//! raftkv-log verify DIR [--strict]              check every CRC; exit 1 on the first problem
//!                                               (a torn tail is a warning unless --strict)
//! raftkv-log snapshot FILE                      snapshot metadata and key count
//! ```
//! DIR is a node data dir (with `log/`, `hardstate`, `snap/`) or a log dir itself.
//! Exit codes: 0 fine (warnings allowed), 1 damage found, 2 usage error / missing or foreign
//! directory / I/O error.

use clap::{Parser, Subcommand};
use prost::Message;
use raftkv::pb::kvpb;
use raftkv::raft::{ConfState, Entry, EntryType};
use raftkv::snapshot::backup::verify_file;
use raftkv::snapshot::{recover, SnapshotError};
use raftkv::storage::inspect::{self, Check, DataDirs, LogInfo};
use raftkv::storage::{hardstate, snapshot, StorageError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "raftkv-log",
    about = "Inspect a raftkv data directory (read-only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Segments, entry count, index and term ranges, bytes, snapshots, compaction state.
    Stats { dir: PathBuf },
    /// One line per entry: index, term, type, size and a decoded summary.
    Dump {
        dir: PathBuf,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Checks every CRC, index continuity, the hard state and the snapshots. A torn tail (which
    /// the server repairs when it opens the log) is a warning, exit 0, unless --strict.
    Verify {
        dir: PathBuf,
        /// Treat a torn tail / unsynced leftovers after the last record as damage (exit 1).
        #[arg(long)]
        strict: bool,
    },
    /// Snapshot metadata and key count.
    Snapshot { file: PathBuf },
}

/// Why the tool stops: damage (exit 1) or anything else (exit 2).
enum Fail {
    Damage(String),
    Other(String),
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Fail {
        match e {
            StorageError::Corrupt { .. } => Fail::Damage(e.to_string()),
            _ => Fail::Other(e.to_string()),
        }
    }
}

impl From<SnapshotError> for Fail {
    fn from(e: SnapshotError) -> Fail {
        match e {
            SnapshotError::Storage(e) => e.into(),
            SnapshotError::Other(s) => Fail::Damage(s),
        }
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Other(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Stats { dir } => stats(&dir),
        Cmd::Dump {
            dir,
            from,
            to,
            json,
        } => dump(&dir, from, to, json),
        Cmd::Verify { dir, strict } => verify(&dir, strict),
        Cmd::Snapshot { file } => snapshot_cmd(&file),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Damage(msg)) => {
            println!("CORRUPT: {msg}");
            ExitCode::from(1)
        }
        Err(Fail::Other(msg)) => {
            eprintln!("raftkv-log: {msg}");
            ExitCode::from(2)
        }
    }
}

fn type_name(t: i32) -> &'static str {
    match EntryType::try_from(t) {
        Ok(EntryType::EntryNormal) => "normal",
        Ok(EntryType::EntryConfChange) => "conf",
        Err(_) => "unknown",
    }
}

/// Printable rendering of a key: printable ASCII as is, other bytes as \xNN, cut at 64 bytes.
fn show_key(k: &[u8]) -> String {
    let mut s = String::new();
    for &b in k.iter().take(64) {
        if b.is_ascii_graphic() && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if k.len() > 64 {
        s.push_str(&format!("…(+{} B)", k.len() - 64));
    }
    s
}

/// A one-line human summary of an entry's payload.
fn summary(e: &Entry) -> String {
    match EntryType::try_from(e.entry_type) {
        Ok(EntryType::EntryNormal) if e.data.is_empty() => "no-op".into(),
        Ok(EntryType::EntryNormal) => match kvpb::Command::decode(e.data.as_ref()) {
            Ok(c) => {
                let session = if c.client_id != 0 {
                    format!(" [client {} seq {}]", c.client_id, c.seq)
                } else {
                    String::new()
                };
                let op = match c.op {
                    Some(kvpb::command::Op::Put(p)) => {
                        format!("PUT key={} ({} B)", show_key(&p.key), p.value.len())
                    }
                    Some(kvpb::command::Op::Delete(d)) => {
                        format!("DELETE key={}", show_key(&d.key))
                    }
                    Some(kvpb::command::Op::Cas(c)) => format!(
                        "CAS key={} expect_version={} {}",
                        show_key(&c.key),
                        c.expected_version,
                        if c.delete {
                            "delete".to_string()
                        } else {
                            format!("({} B)", c.value.len())
                        }
                    ),
                    Some(kvpb::command::Op::Alarm(a)) if a.raise => {
                        format!("ALARM NO_SPACE raised by node {}", a.node_id)
                    }
                    Some(kvpb::command::Op::Alarm(_)) => "ALARM NO_SPACE cleared".into(),
                    Some(kvpb::command::Op::Incr(i)) => {
                        format!("INCR key={} by {}", show_key(&i.key), i.delta)
                    }
                    Some(kvpb::command::Op::Append(a)) => {
                        format!("APPEND key={} ({} B)", show_key(&a.key), a.value.len())
                    }
                    Some(kvpb::command::Op::MultiPut(m)) => {
                        format!("MULTI-PUT {} keys", m.kvs.len())
                    }
                    Some(kvpb::command::Op::DeleteAll(_)) => "DELETE ALL KEYS".into(),
                    Some(kvpb::command::Op::DeleteKeys(d)) => {
                        format!("DELETE {} keys", d.keys.len())
                    }
                    None => "command without op".into(),
                };
                op + &session
            }
            Err(_) => format!("undecodable command ({} B)", e.data.len()),
        },
        Ok(EntryType::EntryConfChange) => match ConfState::decode(e.data.as_ref()) {
            Ok(c) => conf_summary(&c),
            Err(_) => format!("undecodable conf change ({} B)", e.data.len()),
        },
        Err(_) => format!("unknown entry type {}", e.entry_type),
    }
}

/// A configuration entry: every set (the outgoing half only while joint) and each member's
/// addresses, e.g. `CONF voters=[1, 2] learners=[4] removed=[3] 1=a:1/a:2 2=... 4=...+promote`.
fn conf_summary(c: &ConfState) -> String {
    let mut s = format!("CONF voters={:?} learners={:?}", c.voters, c.learners);
    if !c.voters_outgoing.is_empty() {
        s += &format!(" JOINT outgoing={:?}", c.voters_outgoing);
    }
    if !c.removed.is_empty() {
        s += &format!(" removed={:?}", c.removed);
    }
    for m in &c.members {
        let ctx = raftkv::node::membership::context_of(c, m.id);
        s += &format!(" {}={}", m.id, ctx.peer_addr);
        if !ctx.client_addr.is_empty() {
            s += &format!("/{}", ctx.client_addr);
        }
        if ctx.promote {
            s += "+promote";
        }
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn open_log(dir: &Path, check: Check) -> Result<(DataDirs, LogInfo), Fail> {
    let dirs = inspect::resolve(dir)?;
    let info = inspect::inspect_log(&dirs.log, check)?;
    Ok((dirs, info))
}

/// Files waiting for incremental deletion in `dir` (`raftkv::storage::trash`): count, bytes.
fn trash_in(dir: &Path) -> (usize, u64) {
    let files = raftkv::storage::trash::files_in(dir).unwrap_or_default();
    let bytes = files
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    (files.len(), bytes)
}

fn stats(dir: &Path) -> Result<(), Fail> {
    let (dirs, info) = open_log(dir, Check::Lenient)?;
    println!("log dir:        {}", info.dir.display());
    println!("segments:       {}", info.segments.len());
    let entries = info.entries();
    println!("entries:        {entries}");
    if entries > 0 {
        println!(
            "index range:    {}..={}",
            info.first_index(),
            info.last_index()
        );
        let t0 = info
            .segments
            .iter()
            .find(|s| s.entries > 0)
            .map_or(0, |s| s.terms.0);
        let t1 = info
            .segments
            .iter()
            .rev()
            .find(|s| s.entries > 0)
            .map_or(0, |s| s.terms.1);
        println!("term range:     {t0}..={t1}");
    }
    println!(
        "bytes:          {} in records, {} on disk",
        info.bytes(),
        info.segments.iter().map(|s| s.file_len).sum::<u64>()
    );
    for s in &info.segments {
        println!(
            "  {}  entries {}  indexes {}..={}  {} B",
            s.path
                .file_name()
                .map_or("?".into(), |n| n.to_string_lossy()),
            s.entries,
            s.first_index,
            s.last_index(),
            s.bytes
        );
    }
    let live_first = info.snap_index + 1;
    println!(
        "compaction:     snapshot index {} (term {}), first live index {live_first}, first index on disk {}{}",
        info.snap_index,
        info.snap_term,
        info.first_index(),
        if info.first_index() < live_first {
            format!(
                " ({} compacted entries still on disk until their segment is deleted)",
                live_first - info.first_index()
            )
        } else {
            String::new()
        }
    );
    let (n, bytes) = trash_in(&dirs.log);
    if n > 0 {
        println!("being deleted:  {n} compacted segment file(s) (*.seg.trash), {bytes} B");
    }
    if let Some((p, off, what)) = &info.tail_damage {
        println!(
            "tail damage:    {} at byte {off}: {what} (truncated when the node opens the log)",
            p.display()
        );
    }
    for t in &info.temp_segments {
        println!(
            "interrupted:    {} (a segment allocation that never got its name; removed when \
             the node opens the log)",
            t.display()
        );
    }
    if let Some(h) = &dirs.hardstate {
        let data_dir = h.parent().unwrap_or(Path::new("."));
        match raftkv::storage::cluster_id::read(data_dir)? {
            Some(id) => println!("cluster id:     {id}"),
            None => println!("cluster id:     none (not learned yet)"),
        }
        match hardstate::read(data_dir)? {
            Some(hs) => println!(
                "hard state:     term {} vote {} commit {}",
                hs.term, hs.vote, hs.commit
            ),
            None => println!("hard state:     none"),
        }
    }
    if let Some(sd) = &dirs.snap {
        let snaps = snapshot::list(sd)?;
        println!("snapshots:      {}", snaps.len());
        for (i, t, p) in snaps {
            let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            println!("  index {i} term {t}  {size} B  {}", p.display());
        }
        let (n, bytes) = trash_in(sd);
        if n > 0 {
            println!("being deleted:  {n} pruned snapshot file(s) (*.snap.trash), {bytes} B");
        }
    }
    Ok(())
}

fn dump(dir: &Path, from: Option<u64>, to: Option<u64>, json: bool) -> Result<(), Fail> {
    let (_, info) = open_log(dir, Check::Lenient)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut broken = false;
    let from = from.unwrap_or(0);
    let to = to.unwrap_or(u64::MAX);
    let res = info.for_each(from, to, &mut |e| {
        let s = summary(&e);
        let line = if json {
            format!(
                "{{\"index\":{},\"term\":{},\"type\":\"{}\",\"size\":{},\"summary\":{}}}",
                e.index,
                e.term,
                type_name(e.entry_type),
                e.data.len(),
                json_str(&s)
            )
        } else {
            format!(
                "{:>10} {:>6} {:<6} {:>8} {s}",
                e.index,
                e.term,
                type_name(e.entry_type),
                e.data.len()
            )
        };
        if writeln!(out, "{line}").is_err() {
            // Reader went away (e.g. `| head`): stop quietly.
            broken = true;
            return Err(StorageError::Foreign {
                path: PathBuf::new(),
                what: "stdout closed".into(),
            });
        }
        Ok(())
    });
    if broken {
        return Ok(());
    }
    res?;
    let _ = out.flush();
    if let Some((p, off, what)) = &info.tail_damage {
        eprintln!(
            "note: {} has a torn tail at byte {off}: {what}",
            p.display()
        );
    }
    Ok(())
}

/// Runs exactly the checks and decisions of the server's startup
/// (`raftkv::snapshot::recover::check_data_dir`): exit 0 when the server would start (with a
/// `WARNING:` line for each repair or fallback it makes), 1 when it would refuse.
/// Bytes of the files directly in `dir` (0 if it cannot be read): the progress bar's total.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    })
}

fn verify(dir: &Path, strict: bool) -> Result<(), Fail> {
    let check = if strict {
        Check::Strict
    } else {
        Check::Lenient
    };
    let dirs = inspect::resolve(dir)?;
    let total = dir_bytes(&dirs.log) + dirs.snap.as_deref().map_or(0, dir_bytes);
    let pb = raftkv::progress::bytes(total, "verifying");
    let mut done = 0;
    let rec = recover::check_data_dir_progress(&dirs, check, &mut |n| {
        done += n;
        pb.set_position(done);
    });
    pb.finish_and_clear();
    let rec = rec?;
    let info = &rec.log;
    let hs = rec.hard_state;
    let hs_desc = match &dirs.hardstate {
        Some(_) => format!(
            "hard state term {} vote {} commit {}",
            hs.term, hs.vote, hs.commit
        ),
        None => "no hard state".to_string(),
    };
    let snap_desc = match (&dirs.snap, &rec.snapshot) {
        (Some(sd), Some(s)) => format!(
            ", {} snapshot file(s), restored {} ({} keys)",
            snapshot::list(sd)?.len(),
            s.path.display(),
            s.kv.len()
        ),
        (Some(_), None) => ", no snapshot".to_string(),
        (None, _) => String::new(),
    };
    for w in &rec.warnings {
        println!("WARNING: {w}");
    }
    println!(
        "OK: {} segment(s), {} entries, indexes {}..={}, snapshot index {} term {}, {hs_desc}{snap_desc}",
        info.segments.len(),
        info.entries(),
        info.first_index(),
        info.last_index(),
        info.snap_index,
        info.snap_term
    );
    println!("recovered: {}", rec.recovered);
    Ok(())
}

fn snapshot_cmd(file: &Path) -> Result<(), Fail> {
    if !file.is_file() {
        return Err(Fail::Other(format!("{}: no such file", file.display())));
    }
    let size = std::fs::metadata(file)?.len();
    // Everything the server checks before using a snapshot: every CRC, the KV payload decoded
    // in full, its applied index equal to the metadata's; as a stream (a backup may be larger
    // than memory), so the key count comes from the same pass.
    let pb = raftkv::progress::bytes(size, "checking");
    let res = verify_file(file, &mut |n| pb.set_position(n));
    pb.finish_and_clear();
    let info = match res {
        Ok(i) => i,
        Err(SnapshotError::Storage(e)) => return Err(e.into()),
        Err(SnapshotError::Other(e)) => return Err(Fail::Damage(e)),
    };
    println!(
        "file:     {} ({size} B, all CRCs and the KV payload ok)",
        file.display()
    );
    println!("index:    {}", info.meta.index);
    println!("term:     {}", info.meta.term);
    match info.source_cluster {
        Some(c) => println!("cluster:  {c}"),
        None => println!("cluster:  unknown (taken before its node knew the id, or an older file)"),
    }
    let conf = info.meta.conf.unwrap_or_default();
    println!("voters:   {:?}", conf.voters);
    println!("learners: {:?}", conf.learners);
    println!("keys:     {}", info.summary.keys);
    println!("sessions: {}", info.summary.sessions);
    println!("applied:  {}", info.summary.applied);
    println!("payload:  {} B", info.payload_bytes);
    match info.summary.alarm {
        0 => println!("alarm:    none"),
        n => println!("alarm:    NO_SPACE raised by node {n}"),
    }
    Ok(())
}
