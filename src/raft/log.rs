//! `RaftLog`: the core's view of the log = the durable store plus an unstable tail.
//!
//! Entries the core appends (leader proposals, follower appends) live in the unstable tail
//! from `offset` on until the shell acknowledges them with `on_persisted`; the tail overlays
//! the store, so a store still holding a stale (about to be truncated) suffix is never read
//! above `offset`. `emitted` marks how much of the tail was already handed out in a `Ready`.
//!
//! After `restore` (snapshot install) the store is reset by the shell right after the call
//! returns; until the store shows the snapshot, `pending_snap` makes it look empty.

use super::{Entry, LogError, LogStore};

pub(crate) struct RaftLog<S: LogStore> {
    pub(crate) store: S,
    /// Index of `unstable[0]` (or where the next unstable entry would go).
    offset: u64,
    unstable: Vec<Entry>,
    /// Unstable entries with index < `emitted` were handed out in a `Ready` already.
    emitted: u64,
    /// Snapshot accepted by the core that the store may not show yet.
    pending_snap: Option<(u64, u64)>,
}

impl<S: LogStore> RaftLog<S> {
    pub(crate) fn new(store: S) -> RaftLog<S> {
        let offset = store.last_index() + 1;
        RaftLog {
            store,
            offset,
            unstable: Vec::new(),
            emitted: offset,
            pending_snap: None,
        }
    }

    /// The pending snapshot if the store does not reflect it yet.
    fn pending(&self) -> Option<(u64, u64)> {
        match self.pending_snap {
            Some((i, t)) if self.store.snapshot_index_term().0 < i => Some((i, t)),
            _ => None,
        }
    }

    /// (index, term) of the snapshot the log starts after.
    pub(crate) fn snapshot_index_term(&self) -> (u64, u64) {
        self.pending()
            .unwrap_or_else(|| self.store.snapshot_index_term())
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot_index_term().0 + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        if !self.unstable.is_empty() {
            return self.offset + self.unstable.len() as u64 - 1;
        }
        match self.pending() {
            Some((i, _)) => i,
            None => self.store.last_index().min(self.offset - 1),
        }
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.term(self.last_index()).unwrap_or(0)
    }

    pub(crate) fn term(&self, index: u64) -> Result<u64, LogError> {
        let (si, st) = self.snapshot_index_term();
        if index == si {
            return Ok(st);
        }
        if index < si {
            return Err(LogError::Compacted);
        }
        if index > self.last_index() {
            return Err(LogError::Unavailable);
        }
        if index >= self.offset {
            return Ok(self.unstable[(index - self.offset) as usize].term);
        }
        if self.pending().is_some() {
            return Err(LogError::Unavailable);
        }
        self.store.term(index)
    }

    /// The log holds an entry (index, term).
    pub(crate) fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).map(|t| t == term).unwrap_or(false)
    }

    /// (last term, last index) is at least as up to date as ours (Raft §5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Entries in [lo, hi) limited to about `max_bytes` (at least one if lo < hi).
    pub(crate) fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
        let hi = hi.min(self.last_index() + 1);
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo < self.first_index() {
            return Err(LogError::Compacted);
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        if lo < self.offset {
            if self.pending().is_some() {
                return Err(LogError::Unavailable);
            }
            let stored = self.store.entries(lo, hi.min(self.offset), max_bytes)?;
            for e in stored {
                size += entry_size(&e);
                out.push(e);
            }
            if size > max_bytes || (out.len() as u64) < hi.min(self.offset) - lo {
                return Ok(out);
            }
        }
        let start = lo.max(self.offset);
        for i in start..hi {
            let e = &self.unstable[(i - self.offset) as usize];
            let s = entry_size(e);
            if !out.is_empty() && size + s > max_bytes {
                break;
            }
            size += s;
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Appends `ents` (consecutive, starting at or below last+1), truncating any suffix from
    /// `ents[0].index`. The caller checked that nothing at or below commit is truncated.
    pub(crate) fn append(&mut self, ents: Vec<Entry>) {
        let Some(first) = ents.first() else { return };
        let at = first.index;
        if at >= self.offset && at <= self.offset + self.unstable.len() as u64 {
            self.unstable.truncate((at - self.offset) as usize);
        } else {
            // Conflict inside the stable part (or a fresh tail): the tail restarts at `at`.
            self.unstable.clear();
            self.offset = at;
        }
        self.emitted = self.emitted.min(at);
        self.unstable.extend(ents);
    }

    /// Entries not yet handed out in a `Ready`.
    pub(crate) fn has_unemitted(&self) -> bool {
        self.emitted < self.offset + self.unstable.len() as u64
    }

    pub(crate) fn take_unemitted(&mut self) -> Vec<Entry> {
        let end = self.offset + self.unstable.len() as u64;
        if self.emitted >= end {
            return Vec::new();
        }
        let from = self.emitted.max(self.offset);
        let out = self.unstable[(from - self.offset) as usize..].to_vec();
        self.emitted = end;
        out
    }

    /// The shell made everything up to (index, term) durable: drop it from the tail. Returns
    /// false for a stale ack (the entry at `index` has another term now).
    pub(crate) fn stable_to(&mut self, index: u64, term: u64) -> bool {
        if !self.match_term(index, term) {
            return false;
        }
        if index >= self.offset && index < self.emitted {
            let n = (index + 1 - self.offset) as usize;
            self.unstable.drain(..n);
            self.offset = index + 1;
        }
        true
    }

    /// Resets the log to a snapshot (the shell resets the store right after).
    pub(crate) fn restore(&mut self, index: u64, term: u64) {
        self.unstable.clear();
        self.offset = index + 1;
        self.emitted = index + 1;
        self.pending_snap = Some((index, term));
    }
}

/// Size of an entry as counted against byte limits.
pub(crate) fn entry_size(e: &Entry) -> u64 {
    use prost::Message;
    e.encoded_len() as u64
}
