//! `MemLog`: an in-memory `LogStore` for tests and the simulator.

use super::log::entry_size;
use super::{Entry, LogError, LogStore};

/// An in-memory log: a snapshot point (index, term) followed by entries.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    snap_index: u64,
    snap_term: u64,
    entries: Vec<Entry>,
}

impl MemLog {
    /// An empty log (no snapshot).
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// Appends `ents` (consecutive indexes). If `ents[0].index <= last_index`, the log is first
    /// truncated from that index. Errors on a gap or on an index inside the snapshot.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), String> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.snap_index {
            return Err(format!(
                "append at {} inside the snapshot (index {})",
                first.index, self.snap_index
            ));
        }
        if first.index > self.last_index() + 1 {
            return Err(format!(
                "append at {} leaves a gap after last index {}",
                first.index,
                self.last_index()
            ));
        }
        for (i, e) in ents.iter().enumerate() {
            if e.index != first.index + i as u64 {
                return Err(format!("non-consecutive entry index {} in append", e.index));
            }
        }
        self.entries
            .truncate((first.index - self.snap_index - 1) as usize);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    /// Drops entries up to and including `index`, which becomes the snapshot point with
    /// `term`. Errors if `index` is above the last index or `term` does not match.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<(), String> {
        if index <= self.snap_index {
            return Ok(());
        }
        if index > self.last_index() {
            return Err(format!(
                "compact to {index} above last index {}",
                self.last_index()
            ));
        }
        let have = self.term(index).map_err(|e| e.to_string())?;
        if have != term {
            return Err(format!(
                "compact to {index}: term {term} but entry has {have}"
            ));
        }
        self.entries.drain(..(index - self.snap_index) as usize);
        self.snap_index = index;
        self.snap_term = term;
        Ok(())
    }

    /// The entry at `index`, if held (not compacted, not past the end).
    pub fn get(&self, index: u64) -> Option<&Entry> {
        if index <= self.snap_index {
            return None;
        }
        self.entries.get((index - self.snap_index - 1) as usize)
    }

    /// Discards everything: the log becomes empty right after snapshot (index, term).
    pub fn reset(&mut self, index: u64, term: u64) {
        self.entries.clear();
        self.snap_index = index;
        self.snap_term = term;
    }
}

impl LogStore for MemLog {
    fn snapshot_index_term(&self) -> (u64, u64) {
        (self.snap_index, self.snap_term)
    }
    fn first_index(&self) -> u64 {
        self.snap_index + 1
    }
    fn last_index(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }
    fn term(&self, index: u64) -> Result<u64, LogError> {
        if index == self.snap_index {
            return Ok(self.snap_term);
        }
        if index < self.snap_index {
            return Err(LogError::Compacted);
        }
        self.entries
            .get((index - self.snap_index - 1) as usize)
            .map(|e| e.term)
            .ok_or(LogError::Unavailable)
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
        if lo <= self.snap_index {
            return Err(LogError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(LogError::Unavailable);
        }
        let mut out = Vec::new();
        let mut size = 0;
        for i in lo..hi {
            let e = &self.entries[(i - self.snap_index - 1) as usize];
            let s = entry_size(e);
            if !out.is_empty() && size + s > max_bytes {
                break;
            }
            size += s;
            out.push(e.clone());
        }
        Ok(out)
    }
}
