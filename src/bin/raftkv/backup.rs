//! `raftkv snapshot save FILE` and `raftkv snapshot restore FILE --data-dir ...`: the client
//! side of the backup protocol (proto/kv.proto, `SnapshotBegin` / `SnapshotChunk`) and the
//! seeding of a new cluster's members (`raftkv::snapshot::backup`).

use crate::args::{ClientArgs, SnapshotCmd};
use crate::output::{fail, json_str, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use raftkv::client::{Client, ClientError};
use raftkv::pb::kvpb;
use raftkv::snapshot::backup::{seed_data_dir, verify_file, BackupInfo};
use raftkv::storage::cluster_id::ClusterId;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Whole saves tried before giving up when the snapshot being fetched is pruned by a newer one
/// meanwhile (the node keeps two: this takes two snapshot rounds during one download), or the
/// node serving it stops answering.
const SAVE_ATTEMPTS: u32 = 3;
/// Pause between polls for a snapshot covering the point.
const POLL_EVERY: Duration = Duration::from_millis(100);

pub fn run(cmd: SnapshotCmd) -> u8 {
    match cmd {
        SnapshotCmd::Save { file, wait_ms, c } => save(&file, Duration::from_millis(wait_ms), &c),
        SnapshotCmd::Restore {
            file,
            data_dir,
            node_id,
            peers,
            cluster_id,
            json,
        } => restore(
            &file,
            &data_dir,
            node_id,
            &peers,
            cluster_id.as_deref(),
            json,
        ),
    }
}

/// Why a save failed.
enum SaveError {
    /// From the cluster (exit 3 or 4 as for the other client commands).
    Client(ClientError),
    /// The snapshot or its node went away during the download: worth another attempt.
    Gone(String),
    /// Local I/O or a damaged download (exit 1).
    Local(String),
}

impl From<ClientError> for SaveError {
    fn from(e: ClientError) -> Self {
        SaveError::Client(e)
    }
}

/// What a finished save fetched.
struct Saved {
    info: BackupInfo,
    begin: kvpb::SnapshotBeginResponse,
    size: u64,
}

fn save(file: &Path, wait: Duration, c: &ClientArgs) -> u8 {
    let (mut client, _) = match crate::commands::connect(c, kvpb::Consistency::Linearizable) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut attempt = 1;
    let saved = loop {
        match save_once(&mut client, file, wait) {
            Err(SaveError::Gone(why)) if attempt < SAVE_ATTEMPTS => {
                eprintln!("raftkv: {why}; starting again");
                attempt += 1;
            }
            Err(SaveError::Gone(why) | SaveError::Local(why)) => {
                return local_failure(&why, c.json)
            }
            Err(SaveError::Client(e)) => return fail(e, c.json),
            Ok(s) => break s,
        }
    };
    let (m, s) = (&saved.info.meta, &saved.info.summary);
    if c.json {
        println!(
            "{{\"ok\":true,\"file\":{},\"index\":{},\"term\":{},\"keys\":{},\"sessions\":{},\
             \"bytes\":{},\"read_index\":{},\"node_id\":{},\"cluster_id\":\"{}\"}}",
            json_str(file.as_os_str().as_encoded_bytes()),
            m.index,
            m.term,
            s.keys,
            s.sessions,
            saved.size,
            saved.begin.read_index,
            saved.begin.node_id,
            cluster_name(saved.info.source_cluster)
        );
    } else {
        println!(
            "saved {}: snapshot index {} term {}, {} keys, {} bytes (linearizable point {}, \
             from node {}; cluster {}; verified)",
            file.display(),
            m.index,
            m.term,
            s.keys,
            saved.size,
            saved.begin.read_index,
            saved.begin.node_id,
            cluster_name(saved.info.source_cluster)
        );
    }
    EXIT_OK
}

/// A backup's cluster id as printed ("unknown" for a snapshot taken before its node knew it,
/// or a file written before snapshots carried one).
fn cluster_name(id: Option<ClusterId>) -> String {
    id.map_or_else(|| "unknown".to_string(), |c| c.to_string())
}

fn local_failure(why: &str, json: bool) -> u8 {
    if json {
        println!("{{\"ok\":false,\"error\":{}}}", json_str(why.as_bytes()));
    } else {
        eprintln!("raftkv: {why}");
    }
    EXIT_FAILED
}

/// Asks for a snapshot covering a fresh linearizable point and polls until one exists; returns
/// the answer and the endpoint that has the file.
fn wait_ready(
    client: &mut Client,
    wait: Duration,
) -> Result<(kvpb::SnapshotBeginResponse, String), SaveError> {
    let (mut r, mut ep) = client.snapshot_begin(0)?;
    let deadline = Instant::now() + wait;
    while !r.ready {
        if Instant::now() >= deadline {
            return Err(SaveError::Client(ClientError::Timeout(format!(
                "no snapshot covering index {} was written within {wait:?} (--wait-ms)",
                r.read_index
            ))));
        }
        std::thread::sleep(POLL_EVERY);
        (r, ep) = client.snapshot_begin(r.read_index)?;
    }
    Ok((r, ep))
}

fn tmp_path(file: &Path) -> PathBuf {
    let mut t = file.as_os_str().to_owned();
    t.push(".tmp");
    PathBuf::from(t)
}

/// One save: point, fetch into FILE.tmp, fsync, verify, rename.
fn save_once(client: &mut Client, file: &Path, wait: Duration) -> Result<Saved, SaveError> {
    let (begin, ep) = wait_ready(client, wait)?;
    let tmp = tmp_path(file);
    let res = fetch(client, &ep, &begin, &tmp).and_then(|size| {
        let pb = raftkv::progress::bytes(size, "verifying");
        let info = verify_file(&tmp, &mut |n| pb.set_position(n))
            .map_err(|e| SaveError::Local(format!("the downloaded snapshot is damaged: {e}")))?;
        pb.finish_and_clear();
        if (info.meta.index, info.meta.term) != (begin.index, begin.term) {
            return Err(SaveError::Local(format!(
                "asked for the snapshot at index {} term {}, got {} / {}",
                begin.index, begin.term, info.meta.index, info.meta.term
            )));
        }
        publish(&tmp, file)?;
        Ok(Saved { info, begin, size })
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Streams the snapshot file into `tmp` one chunk at a time and fsyncs it; returns its size.
fn fetch(
    client: &mut Client,
    ep: &str,
    b: &kvpb::SnapshotBeginResponse,
    tmp: &Path,
) -> Result<u64, SaveError> {
    let local = |e: std::io::Error| SaveError::Local(format!("{}: {e}", tmp.display()));
    let mut out = File::create(tmp).map_err(local)?;
    let pb = raftkv::progress::bytes(b.size, &format!("saving from {ep}"));
    let mut offset = 0u64;
    while offset < b.size {
        let chunk = match client.snapshot_chunk(ep, b.index, b.term, offset) {
            Ok(c) => c,
            Err(ClientError::Server(e)) if e.code() == kvpb::ErrorCode::BadRequest => {
                return Err(SaveError::Gone(e.message))
            }
            // The node with the file stopped answering: another attempt starts from a new
            // point at whichever node leads then.
            Err(e @ (ClientError::Timeout(_) | ClientError::Io(_))) => {
                return Err(SaveError::Gone(format!("fetching from {ep}: {e}")))
            }
            Err(e) => return Err(e.into()),
        };
        if chunk.offset != offset || chunk.size != b.size || chunk.data.is_empty() {
            return Err(SaveError::Local(format!(
                "bad chunk from {ep}: offset {} size {} with {} bytes, expected offset {offset} \
                 of {} bytes",
                chunk.offset,
                chunk.size,
                chunk.data.len(),
                b.size
            )));
        }
        out.write_all(&chunk.data).map_err(local)?;
        offset += chunk.data.len() as u64;
        pb.set_position(offset);
    }
    out.sync_all().map_err(local)?;
    pb.finish_and_clear();
    Ok(offset)
}

/// Renames the verified `tmp` to `file` and makes the rename durable.
fn publish(tmp: &Path, file: &Path) -> Result<(), SaveError> {
    std::fs::rename(tmp, file).map_err(|e| SaveError::Local(format!("{}: {e}", file.display())))?;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    raftkv::storage::fsutil::sync_dir(dir).map_err(|e| SaveError::Local(e.to_string()))
}

fn restore(
    file: &Path,
    dir: &Path,
    node_id: u64,
    peers: &str,
    cluster_id: Option<&str>,
    json: bool,
) -> u8 {
    use raftkv::storage::cluster_id::ClusterId;
    let members = match raftkv::server::parse_peers(peers) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("raftkv: --peers: {e}");
            return EXIT_USAGE;
        }
    };
    let (id, made) = match cluster_id.map(ClusterId::parse) {
        Some(Some(id)) => (id, false),
        Some(None) => {
            eprintln!("raftkv: --cluster-id must be 32 hex digits (as a first restore prints)");
            return EXIT_USAGE;
        }
        None => match ClusterId::random() {
            Ok(id) => (id, true),
            Err(e) => return local_failure(&format!("no randomness for a cluster id: {e}"), json),
        },
    };
    let conf = raftkv::server::bootstrap_conf(&members);
    let voters = &conf.voters;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let pb = raftkv::progress::bytes(size, "restoring");
    let res = seed_data_dir(file, dir, node_id, &conf, id, &mut |n| pb.set_position(n));
    pb.finish_and_clear();
    let info = match res {
        Ok(i) => i,
        Err(e) => return local_failure(&format!("restore refused: {e}"), json),
    };
    let (m, s) = (&info.meta, &info.summary);
    if json {
        println!(
            "{{\"ok\":true,\"data_dir\":{},\"node_id\":{node_id},\"cluster_id\":\"{id}\",\
             \"source_cluster_id\":\"{}\",\"index\":{},\"term\":{},\"keys\":{}}}",
            json_str(dir.as_os_str().as_encoded_bytes()),
            cluster_name(info.source_cluster),
            m.index,
            m.term,
            s.keys
        );
    } else {
        println!(
            "restored {} into {} as node {node_id} of {voters:?}: snapshot index {} term {}, {} \
             keys, new cluster id {id} (the backup's was {})\n\
             start it with: raftkv serve --id {node_id} --data-dir {} --peers {peers}",
            file.display(),
            dir.display(),
            m.index,
            m.term,
            s.keys,
            cluster_name(info.source_cluster),
            dir.display()
        );
        if made {
            println!("restore the other members of the new cluster with --cluster-id {id}");
        }
    }
    EXIT_OK
}
