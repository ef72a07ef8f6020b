//! What a node starts with: the one set of checks and decisions about a data directory that
//! the server runs at startup (`Server::open`) and `raftkv-log verify` runs offline, so the two
//! can never disagree about a directory.
//!
//! [`check_data_dir`] only reads. It loads the hard state, the newest usable snapshot (whole
//! KV payload validated) and scans the log with the hard state's commit index as the durable
//! bound, then decides what the node recovers (a [`Recovered`] range) and which repairs the
//! server's open will make (warnings), or refuses. It refuses whenever the node would start
//! with less than it durably had:
//! - the log is compacted (`log/meta`) beyond the snapshot that can be loaded (missing or
//!   unusable snapshot files): the entries in between exist nowhere on this node;
//! - the log ends below the durable commit index, or an entry at or below it is damaged;
//! - the log and the snapshot disagree at a committed index;
//! - any damage the storage layer refuses (see `docs/storage.md`).

use super::{
    check_meta, fallback_warning, newest_usable, no_usable_snapshot, LoadedSnapshot, SnapshotError,
};
use crate::raft::HardState;
use crate::storage::inspect::{inspect_log_progress, Check, DataDirs, LogInfo};
use crate::storage::{hardstate, snapshot, StorageError};
use std::fmt;

/// How to get a node going again once it refuses to start: said in every refusal.
pub const HOW_TO_RECOVER: &str = "the node must not start with less than it durably had; to \
     recover, restore the missing or damaged files from a backup, or move the whole data \
     directory aside and let the node rejoin and catch up from the other members (once \
     membership changes allow replacing a member)";

/// The state a node recovers from its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The snapshot loaded (0, 0: none).
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// The log's live entries after open: `first_index..=last_index` (empty when
    /// `last_index < first_index`).
    pub first_index: u64,
    pub last_index: u64,
    /// Committed index known at startup (the hard state's, raised to the snapshot's).
    pub commit: u64,
}

impl fmt::Display for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "snapshot index {} term {}, log {}..={}, commit {}",
            self.snapshot_index, self.snapshot_term, self.first_index, self.last_index, self.commit
        )
    }
}

/// The outcome of [`check_data_dir`].
pub struct Recovery {
    /// As stored (default when there is no hard state file).
    pub hard_state: HardState,
    /// The newest usable snapshot, restored.
    pub snapshot: Option<LoadedSnapshot>,
    /// The log as found on disk (before the server's repairs).
    pub log: LogInfo,
    /// `Some((index, term))`: the server resets the log to the loaded snapshot.
    pub reset_log: Option<(u64, u64)>,
    /// Repairs the server makes on open and fallbacks it takes (not damage).
    pub warnings: Vec<String>,
    pub recovered: Recovered,
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn refuse(path: &std::path::Path, offset: u64, what: String) -> SnapshotError {
    SnapshotError::Storage(StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what: format!("{what}; {HOW_TO_RECOVER}"),
    })
}

/// Checks the data directory `dirs` read-only and decides what the node recovers (see the
/// module docs). `check` is `Check::Lenient` for the server and `verify`, `Check::Strict` for
/// `verify --strict` (which also refuses what the server would repair).
pub fn check_data_dir(dirs: &DataDirs, check: Check) -> Result<Recovery, SnapshotError> {
    check_data_dir_progress(dirs, check, &mut |_| {})
}

/// [`check_data_dir`], calling `progress(bytes)` with the snapshot files' total size once the
/// newest usable one is restored, and with each log segment's size as its scan starts (what
/// `raftkv-log verify` shows).
pub fn check_data_dir_progress(
    dirs: &DataDirs,
    check: Check,
    progress: &mut dyn FnMut(u64),
) -> Result<Recovery, SnapshotError> {
    let hard_state = match &dirs.hardstate {
        Some(h) => {
            let dir = h.parent().unwrap_or(std::path::Path::new("."));
            hardstate::read(dir)?.unwrap_or_default()
        }
        None => HardState::default(),
    };
    let mut warnings = Vec::new();
    let snapshot = match &dirs.snap {
        Some(sd) => {
            let files = snapshot::list(sd)?;
            let tried = files.iter().map(|(_, _, p)| file_len(p)).sum();
            let (loaded, failures) = newest_usable(files);
            progress(tried);
            if loaded.is_none() && !failures.is_empty() {
                return Err(no_usable_snapshot(sd, &failures));
            }
            if let (Some(l), false) = (&loaded, failures.is_empty()) {
                if check == Check::Strict {
                    return Err(SnapshotError::Other(format!(
                        "unusable snapshot: {}",
                        failures.join("; ")
                    )));
                }
                warnings.push(format!(
                    "{} (the server moves them aside as *.damaged)",
                    fallback_warning(l, &failures)
                ));
            }
            loaded
        }
        None => None,
    };
    if let Some(s) = &snapshot {
        check_meta(&s.meta)
            .map_err(|e| SnapshotError::Other(format!("{}: {e}", s.path.display())))?;
    }
    let durable = hard_state.commit;
    let log = inspect_log_progress(&dirs.log, check, durable, progress)?;
    if let Some((p, off, what)) = &log.tail_damage {
        warnings.push(format!(
            "{}: torn tail at byte {off}: {what}; the server cuts it away when it opens the log",
            p.display()
        ));
    }
    for t in &log.temp_segments {
        warnings.push(format!(
            "{}: {}: the server removes it when it opens the log",
            t.display(),
            crate::storage::segment::describe_temp(t)
        ));
    }
    let meta_path = dirs.log.join(crate::storage::meta::META_FILE);
    let (mi, mt) = (log.snap_index, log.snap_term);
    // As Log::open: a log that does not continue from log/meta (an interrupted reset) is
    // dropped. Entries in it were not committed (the reset target is above the commit index).
    let mut last = log.last_index();
    if log.stale {
        if durable > mi {
            return Err(refuse(
                &meta_path,
                8,
                format!(
                    "the log does not continue from the snapshot boundary ({mi}, {mt}) in \
                     log/meta, but the hard state's commit index {durable} is above it"
                ),
            ));
        }
        warnings.push(format!(
            "{}: the log does not match the snapshot boundary ({mi}, {mt}) (interrupted \
             reset): the server drops it",
            dirs.log.display()
        ));
        last = mi;
    }
    last = last.max(mi);
    let (si, st) = snapshot
        .as_ref()
        .map_or((0, 0), |s| (s.meta.index, s.meta.term));
    if dirs.snap.is_some() && mi > si {
        let what = match &snapshot {
            Some(s) => format!(
                "the newest usable snapshot {} covers only up to {si}",
                s.path.display()
            ),
            None => "there is no usable snapshot".to_string(),
        };
        return Err(refuse(
            &meta_path,
            8,
            format!(
                "the log is compacted up to index {mi} but {what} (snapshot files missing or \
                 unusable in {}): entries {}..={mi} exist nowhere on this node",
                dirs.snap.as_deref().unwrap_or(&dirs.log).display(),
                si + 1
            ),
        ));
    }
    // As the server: a log that does not continue from the loaded snapshot is reset to it (a
    // crash between publishing a received snapshot and resetting the log).
    let mut reset_log = None;
    let mut first = mi + 1;
    if si > 0 && si > mi {
        let term_at = if si > last { None } else { log.term_at(si)? };
        let conflict = term_at.is_some_and(|t| t != st);
        if conflict && si <= durable {
            return Err(refuse(
                &meta_path,
                8,
                format!(
                    "the log has term {} at index {si}, the snapshot term {st}, but index {si} \
                     is at or below the durable commit index {durable}",
                    term_at.unwrap_or(0)
                ),
            ));
        }
        if si > last || conflict {
            warnings.push(format!(
                "the log does not continue from snapshot ({si}, {st}) (log ends at {last}): \
                 the server resets it to the snapshot"
            ));
            reset_log = Some((si, st));
            first = si + 1;
            last = si;
        }
    }
    if last.max(si) < durable {
        return Err(refuse(
            &dirs.log,
            0,
            format!(
                "the node holds entries only up to {} but the hard state's commit index is \
                 {durable}",
                last.max(si)
            ),
        ));
    }
    let recovered = Recovered {
        snapshot_index: si,
        snapshot_term: st,
        first_index: first,
        last_index: last,
        commit: durable.max(si),
    };
    Ok(Recovery {
        hard_state,
        snapshot,
        log,
        reset_log,
        warnings,
        recovered,
    })
}
