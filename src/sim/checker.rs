//! Safety invariants checked while the simulation runs (checklist items I1, I2, C6):
//!
//! - **Election safety**: at most one leader per term.
//! - **Log matching**: two entries with the same (index, term) anywhere, ever, carry the same
//!   payload and follow the same previous term (so, inductively, identical prefixes).
//! - **Leader completeness**: a node that becomes leader holds every entry known committed.
//! - **State machine safety**: every node applies the same entry at an index; each node
//!   incarnation applies indexes exactly once, in order, with jumps only through snapshots.
//! - **Durability**: the highest committed entry is on the durable disks of enough voters of
//!   the newest committed configuration, or of one appended after it, that no quorum can be
//!   formed without one of them (a majority of an odd voter set, half of an even one; either
//!   half while joint), at all times, so no crash pattern can lose it. Learners never count.
//! - **Configuration changes** (every configuration entry a leader appends): the previous
//!   configuration in its log is committed (one change in flight), the leader has committed
//!   an entry of its own term (the 2015 single-server bug), and a change of more than one
//!   voter goes through the joint configuration and leaves it unchanged.
//!
//! Hash maps are only used for lookups, never iterated, so the run stays deterministic.

use crate::raft::MemLog;
use crate::raft::{ConfState, Entry, EntryType, LogStore};
use crate::sim::disk::Durable;
use prost::Message as _;
use std::collections::{BTreeMap, HashMap};

/// FNV-1a over an entry's type and payload.
pub fn entry_hash(e: &Entry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(e.entry_type as u8).chain(e.data.iter().copied()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The global invariant checker for one simulated run.
#[derive(Default)]
pub struct Checker {
    /// term -> the node that led it.
    leaders: BTreeMap<u64, u64>,
    /// (index, term) -> (payload hash, term of index-1 if known).
    seen: HashMap<(u64, u64), (u64, Option<u64>)>,
    /// Committed (applied somewhere) entries: index -> (term, payload hash; None when only
    /// known from a snapshot).
    committed: BTreeMap<u64, (u64, Option<u64>)>,
    /// Per committed index: the highest term any leader had been elected in when it was first
    /// seen committed. Its committing leader's term is at most that, so every leader of a
    /// higher term must hold it (a stale leader of a lower term, elected late because its
    /// votes were delayed, need not).
    committed_by: BTreeMap<u64, u64>,
    /// Highest term with a leader so far.
    max_led: u64,
    /// Per node: last index its current incarnation applied.
    applied: BTreeMap<u64, u64>,
    /// Elections observed (distinct terms with a leader).
    pub elections: u64,
    /// The most recently elected (node, term).
    pub last_leader: Option<(u64, u64)>,
    /// Configuration entries ever appended anywhere: (index, term) -> configuration.
    confs: BTreeMap<(u64, u64), ConfState>,
    /// The newest configuration known committed: (index, configuration); index 0 = the
    /// bootstrap one.
    committed_conf: (u64, ConfState),
    /// Every configuration known committed, by index (the bootstrap one at 0).
    committed_confs: BTreeMap<u64, ConfState>,
    /// A violation found where it could not be returned (reported by `check_durable`).
    noted: Option<String>,
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    /// A checker for a cluster bootstrapped with `voters`.
    pub fn with_voters(voters: &[u64]) -> Checker {
        let conf = ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        };
        Checker {
            committed_conf: (0, conf.clone()),
            committed_confs: BTreeMap::from([(0, conf)]),
            ..Checker::default()
        }
    }

    /// Records a violation found inside a hook that cannot fail; the next `check_durable`
    /// (after every event) reports it.
    pub fn note_violation(&mut self, v: String) {
        self.noted.get_or_insert(v);
    }

    /// Configuration entries known committed (the bootstrap configuration not counted).
    pub fn conf_changes_committed(&self) -> u64 {
        self.committed_confs.keys().filter(|&&i| i > 0).count() as u64
    }

    /// The newest configuration known committed.
    pub fn committed_conf(&self) -> &ConfState {
        &self.committed_conf.1
    }

    /// The leader of `term` appended configuration entry `e`; `log` is its durable log,
    /// `commit` its commit index and `own_term_committed` whether the entry at it is of `term`.
    /// `core_prev` is the configuration the leader's core had in force below `e`: with a full
    /// disk the leader's own copies of recent entries (a committed one, the previous
    /// configuration) may not be on its disk yet, so the durable log alone can mislead; it is
    /// used where the durable log has nothing newer. Judges the change against the rules that
    /// keep two configurations from deciding independently.
    pub fn on_conf_appended(
        &mut self,
        leader: u64,
        term: u64,
        e: &Entry,
        log: &MemLog,
        (commit, own_term_committed): (u64, bool),
        core_prev: Option<(u64, &ConfState)>,
    ) -> Result<(), String> {
        let Ok(next) = ConfState::decode(&e.data[..]) else {
            return Err(format!(
                "leader {leader} appended an undecodable configuration at {}",
                e.index
            ));
        };
        // The previous configuration in the leader's log: its newest configuration entry
        // below `e`, else the one its log starts from (the newest committed configuration at
        // or below its snapshot, or the bootstrap one).
        let (snap, _) = log.snapshot_index_term();
        let prev = self
            .confs
            .range(..(e.index, 0))
            .rev()
            .find(|((i, t), _)| log.get(*i).is_some_and(|x| x.term == *t))
            .map(|((i, _), c)| (*i, c.clone()))
            .or_else(|| {
                self.committed_confs
                    .range(..=snap)
                    .next_back()
                    .map(|(i, c)| (*i, c.clone()))
            })
            .unwrap_or_else(|| self.committed_conf.clone());
        let prev = match core_prev {
            Some((i, c)) if i > prev.0 => (i, c.clone()),
            _ => prev,
        };
        let at = e.index;
        if prev.0 > commit {
            return Err(format!(
                "membership: leader {leader} (term {term}) appended configuration {at} while \
                 configuration {} was not committed (commit {commit}): two changes in flight",
                prev.0
            ));
        }
        if !own_term_committed {
            return Err(format!(
                "membership: leader {leader} (term {term}) appended configuration {at} before \
                 committing an entry of its own term (commit {commit})"
            ));
        }
        check_transition(&prev.1, &next).map_err(|why| {
            format!(
                "membership: leader {leader} (term {term}) changed configuration {} -> {at}: {why}",
                prev.0
            )
        })
    }

    /// Highest index known committed.
    pub fn max_committed(&self) -> u64 {
        self.committed.last_key_value().map_or(0, |(i, _)| *i)
    }

    /// `node` is leader of `term`; `log` is its log at this moment.
    pub fn on_leader(&mut self, node: u64, term: u64, log: &MemLog) -> Result<(), String> {
        match self.leaders.get(&term) {
            Some(&other) if other != node => {
                return Err(format!(
                    "election safety: nodes {other} and {node} are both leader of term {term}"
                ))
            }
            Some(_) => return Ok(()),
            None => {
                self.leaders.insert(term, node);
                self.max_led = self.max_led.max(term);
                self.elections += 1;
                self.last_leader = Some((node, term));
            }
        }
        // Newly elected: it must hold every committed entry.
        let (snap_index, snap_term) = log.snapshot_index_term();
        let before = |i: u64| self.committed_by.get(&i).is_some_and(|&m| m < term);
        if let Some(&(t, _)) = self.committed.get(&snap_index) {
            if t != snap_term && before(snap_index) {
                return Err(format!(
                    "leader completeness: new leader {node} (term {term}) has a snapshot at \
                     index {snap_index} term {snap_term}, but term {t} was committed there"
                ));
            }
        }
        for (&i, &(t, h)) in self.committed.range(snap_index + 1..) {
            if !before(i) {
                continue;
            }
            match log.get(i) {
                Some(e) if e.term == t && h.is_none_or(|h| entry_hash(e) == h) => {}
                Some(e) => {
                    return Err(format!(
                        "leader completeness: new leader {node} (term {term}) holds term {} at \
                         index {i}, but term {t} was committed there",
                        e.term
                    ))
                }
                None => {
                    return Err(format!(
                        "leader completeness: new leader {node} (term {term}) lacks committed \
                         index {i} (its last index is {})",
                        log.last_index()
                    ))
                }
            }
        }
        Ok(())
    }

    /// Terms in (lo, hi) of entries ever appended at `index` (for diagnostics).
    pub fn terms_at(&self, index: u64, lo: u64, hi: u64) -> Vec<u64> {
        (lo + 1..hi)
            .filter(|t| self.seen.contains_key(&(index, *t)))
            .collect()
    }

    /// `node` appended `ents` to its log; `prev_term` is the term of the entry before them.
    pub fn on_append(
        &mut self,
        node: u64,
        prev_term: Option<u64>,
        ents: &[Entry],
    ) -> Result<(), String> {
        let mut prev = prev_term;
        for e in ents {
            if e.entry_type == EntryType::EntryConfChange as i32 {
                if let Ok(c) = ConfState::decode(&e.data[..]) {
                    self.confs.insert((e.index, e.term), c);
                }
            }
            let h = entry_hash(e);
            match self.seen.get(&(e.index, e.term)) {
                None => {
                    self.seen.insert((e.index, e.term), (h, prev));
                }
                Some(&(h0, p0)) => {
                    if h0 != h {
                        return Err(format!(
                            "log matching: node {node} appended index {} term {} with a payload \
                             different from another copy of the same (index, term)",
                            e.index, e.term
                        ));
                    }
                    if let (Some(a), Some(b)) = (p0, prev) {
                        if a != b {
                            return Err(format!(
                                "log matching: node {node} holds (index {}, term {}) after term \
                                 {b}, another copy follows term {a}",
                                e.index, e.term
                            ));
                        }
                    } else if p0.is_none() {
                        self.seen.insert((e.index, e.term), (h, prev));
                    }
                }
            }
            prev = Some(e.term);
        }
        Ok(())
    }

    /// `node` applied entry `e` to its state machine.
    pub fn on_apply(&mut self, node: u64, e: &Entry) -> Result<(), String> {
        let last = self.applied.get(&node).copied().unwrap_or(0);
        if e.index != last + 1 {
            return Err(format!(
                "apply order: node {node} applied index {} right after index {last}",
                e.index
            ));
        }
        self.applied.insert(node, e.index);
        let h = entry_hash(e);
        match self.committed.get(&e.index) {
            Some(&(t, h0)) if t != e.term || h0.is_some_and(|h0| h0 != h) => Err(format!(
                "state machine safety: node {node} applied term {} at index {}, another node \
                 applied term {t}{}",
                e.term,
                e.index,
                if t == e.term {
                    " (different payload)"
                } else {
                    ""
                }
            )),
            Some(_) => Ok(()),
            None => {
                if let Some(&(h0, _)) = self.seen.get(&(e.index, e.term)) {
                    if h0 != h {
                        return Err(format!(
                            "node {node} applied index {} term {} with a payload no log held",
                            e.index, e.term
                        ));
                    }
                }
                self.committed.insert(e.index, (e.term, Some(h)));
                self.committed_by.insert(e.index, self.max_led);
                if e.entry_type == EntryType::EntryConfChange as i32 {
                    if let Ok(c) = ConfState::decode(&e.data[..]) {
                        if e.index > self.committed_conf.0 {
                            self.committed_conf = (e.index, c.clone());
                        }
                        self.committed_confs.insert(e.index, c);
                    }
                }
                Ok(())
            }
        }
    }

    /// `node` installed a snapshot covering everything up to (index, term).
    pub fn on_snapshot(&mut self, node: u64, index: u64, term: u64) -> Result<(), String> {
        let last = self.applied.get(&node).copied().unwrap_or(0);
        if index <= last {
            return Err(format!(
                "apply order: node {node} installed a snapshot at {index} after applying {last}"
            ));
        }
        if let Some(&(t, _)) = self.committed.get(&index) {
            if t != term {
                return Err(format!(
                    "state machine safety: node {node} installed a snapshot at index {index} \
                     term {term}, but term {t} was applied there"
                ));
            }
        }
        if index > self.max_committed() {
            // A snapshot only holds applied state: everything it covers is committed.
            self.committed.insert(index, (term, None));
            self.committed_by.insert(index, self.max_led);
        }
        self.applied.insert(node, index);
        Ok(())
    }

    /// `node` restarted with its state machine at `applied` (its snapshot).
    pub fn on_restart(&mut self, node: u64, applied: u64) {
        self.applied.insert(node, applied);
    }

    /// The highest committed entry must be durable on a majority of `disks`.
    pub fn check_durable(&self, disks: &[(u64, &Durable)]) -> Result<(), String> {
        if let Some(v) = &self.noted {
            return Err(v.clone());
        }
        let Some((&index, &(term, _))) = self.committed.last_key_value() else {
            return Ok(());
        };
        let holders: Vec<u64> = disks
            .iter()
            .filter(|(_, d)| {
                d.snapshot.as_ref().is_some_and(|s| s.meta.index >= index)
                    || d.log.get(index).is_some_and(|e| e.term == term)
            })
            .map(|(id, _)| *id)
            .collect();
        // The configurations that may decide what is committed from now on: the newest
        // committed one, and any appended after it (each in force on some node).
        let base = self.committed_conf.0;
        let mut candidates = vec![&self.committed_conf.1];
        candidates.extend(self.confs.range((base + 1, 0)..).map(|(_, c)| c));
        // Durable enough when no quorum can be formed without a holder: every future leader
        // then needs a holder's vote, and a holder votes only for a log holding the entry.
        // For an odd voter set that is a majority of holders; for an even one, half (a
        // leader counting the newest configuration, appended but not yet on any disk, may
        // commit on a majority of it that is only half of the previous one: safe, since
        // the two overlap, as every one-voter change does). While joint, blocking either
        // half blocks every election.
        let blocks_every_quorum = |set: &[u64]| {
            let held = set.iter().filter(|v| holders.contains(v)).count();
            set.len() - held < set.len() / 2 + 1
        };
        let durable_in = |c: &ConfState| {
            blocks_every_quorum(&c.voters)
                || (!c.voters_outgoing.is_empty() && blocks_every_quorum(&c.voters_outgoing))
        };
        if !candidates.iter().any(|c| durable_in(c)) {
            let c = &self.committed_conf.1;
            return Err(format!(
                "durability: committed index {index} (term {term}) is durable only on nodes \
                 {holders:?}: a quorum of the voters {:?} (outgoing {:?}) of the committed \
                 configuration {base}, or of any configuration appended after it, could elect a \
                 leader without it",
                c.voters, c.voters_outgoing
            ));
        }
        Ok(())
    }
}

/// A configuration may follow `prev` only as one voter changed, or by entering the joint
/// configuration (outgoing = `prev`'s voters) from a simple one, or by leaving it (voters
/// unchanged, outgoing dropped).
fn check_transition(prev: &ConfState, next: &ConfState) -> Result<(), String> {
    let diff = |a: &[u64], b: &[u64]| {
        a.iter().filter(|v| !b.contains(v)).count() + b.iter().filter(|v| !a.contains(v)).count()
    };
    match (
        prev.voters_outgoing.is_empty(),
        next.voters_outgoing.is_empty(),
    ) {
        (true, true) if diff(&prev.voters, &next.voters) > 1 => Err(format!(
            "voters {:?} -> {:?} without the joint configuration",
            prev.voters, next.voters
        )),
        (true, false) if next.voters_outgoing != prev.voters => Err(format!(
            "joint configuration's outgoing half {:?} is not the previous voters {:?}",
            next.voters_outgoing, prev.voters
        )),
        (false, false) => Err("a joint configuration followed by another joint one".into()),
        (false, true) if next.voters != prev.voters => Err(format!(
            "leaving the joint configuration changed the voters {:?} -> {:?}",
            prev.voters, next.voters
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ent(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from_static(data),
            ..Default::default()
        }
    }

    #[test]
    fn two_leaders_in_one_term_is_caught() {
        let mut c = Checker::new();
        let log = MemLog::new();
        c.on_leader(1, 2, &log).unwrap();
        c.on_leader(1, 2, &log).unwrap();
        c.on_leader(2, 3, &log).unwrap();
        assert!(c.on_leader(3, 3, &log).is_err());
        assert_eq!(c.elections, 2);
    }

    #[test]
    fn log_matching_and_overwrites_are_caught() {
        let mut c = Checker::new();
        c.on_append(1, Some(0), &[ent(1, 1, b"a"), ent(2, 1, b"b")])
            .unwrap();
        c.on_append(2, Some(0), &[ent(1, 1, b"a")]).unwrap();
        assert!(c.on_append(3, Some(1), &[ent(2, 1, b"X")]).is_err());
        assert!(c.on_append(3, Some(2), &[ent(2, 1, b"b")]).is_err());
    }

    #[test]
    fn apply_streams_must_agree_and_be_in_order() {
        let mut c = Checker::new();
        c.on_apply(1, &ent(1, 1, b"a")).unwrap();
        assert!(c.on_apply(1, &ent(3, 1, b"c")).is_err(), "gap");
        let mut c = Checker::new();
        c.on_apply(1, &ent(1, 1, b"a")).unwrap();
        assert!(c.on_apply(2, &ent(1, 2, b"b")).is_err(), "different entry");
        let mut c = Checker::new();
        c.on_apply(1, &ent(1, 1, b"a")).unwrap();
        assert!(c.on_apply(1, &ent(1, 1, b"a")).is_err(), "applied twice");
        // Snapshots jump forward only.
        c.on_snapshot(2, 5, 1).unwrap();
        c.on_apply(2, &ent(6, 1, b"f")).unwrap();
        assert!(c.on_snapshot(2, 4, 1).is_err());
        c.on_restart(2, 5);
        c.on_apply(2, &ent(6, 1, b"f")).unwrap();
    }

    #[test]
    fn new_leader_must_hold_committed_entries() {
        let mut c = Checker::new();
        let mut full = MemLog::new();
        full.append(&[ent(1, 1, b"a"), ent(2, 1, b"b")]).unwrap();
        c.on_leader(1, 1, &full).unwrap();
        c.on_apply(1, &ent(1, 1, b"a")).unwrap();
        c.on_apply(1, &ent(2, 1, b"b")).unwrap();
        let mut short = MemLog::new();
        short.append(&[ent(1, 1, b"a")]).unwrap();
        assert!(c.on_leader(2, 2, &short).is_err());
        // Committed while term 5 had a leader: a stale leader of term 4, elected late (its
        // votes were delayed), is not held to it; a leader of term 6 is.
        c.on_leader(5, 5, &full).unwrap();
        c.on_apply(1, &ent(3, 5, b"c")).unwrap();
        c.on_leader(4, 4, &full).unwrap();
        assert!(c.on_leader(3, 6, &full).is_err());
        full.append(&[ent(3, 5, b"c")]).unwrap();
        c.on_leader(3, 7, &full).unwrap();
    }

    #[test]
    fn committed_entry_must_be_durable_on_a_majority() {
        let mut c = Checker::with_voters(&[1, 2, 3]);
        c.on_apply(1, &ent(1, 1, b"a")).unwrap();
        let mut has = Durable::default();
        has.log.append(&[ent(1, 1, b"a")]).unwrap();
        let empty = Durable::default();
        c.check_durable(&[(1, &has), (2, &has), (3, &empty)])
            .unwrap();
        assert!(c
            .check_durable(&[(1, &has), (2, &empty), (3, &empty)])
            .is_err());
        // A learner's copy never counts: 1 and learner 4 hold it, voters 2 and 3 do not.
        let conf = |voters: &[u64], outgoing: &[u64], learners: &[u64]| ConfState {
            voters: voters.to_vec(),
            voters_outgoing: outgoing.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        };
        let conf_entry = |index, c: &ConfState| Entry {
            index,
            term: 1,
            entry_type: EntryType::EntryConfChange as i32,
            data: c.encode_to_vec().into(),
        };
        let mut c = Checker::with_voters(&[1, 2, 3]);
        let learner = conf_entry(1, &conf(&[1, 2, 3], &[], &[4]));
        c.on_append(1, Some(0), std::slice::from_ref(&learner))
            .unwrap();
        c.on_apply(1, &learner).unwrap();
        let mut has = Durable::default();
        has.log.append(&[learner]).unwrap();
        assert!(c
            .check_durable(&[(1, &has), (2, &empty), (3, &empty), (4, &has)])
            .is_err());
    }

    #[test]
    fn configuration_changes_are_judged() {
        let conf = |voters: &[u64], outgoing: &[u64]| ConfState {
            voters: voters.to_vec(),
            voters_outgoing: outgoing.to_vec(),
            ..ConfState::default()
        };
        let (c3, c4, c5) = (
            conf(&[1, 2, 3], &[]),
            conf(&[1, 2, 3, 4], &[]),
            conf(&[1, 2, 3, 4, 5], &[]),
        );
        assert!(check_transition(&c3, &c4).is_ok());
        assert!(check_transition(&c3, &c5)
            .unwrap_err()
            .contains("without the joint"));
        let joint = conf(&[1, 2, 3, 4, 5], &[1, 2, 3]);
        assert!(check_transition(&c3, &joint).is_ok());
        assert!(check_transition(&joint, &c5).is_ok());
        assert!(check_transition(&joint, &c4).is_err());
        assert!(
            check_transition(&c4, &joint).is_err(),
            "outgoing half must be the old voters"
        );
        // Two changes in flight and a change before the leader's first commit are refused.
        let entry = |index, term, c: &ConfState| Entry {
            index,
            term,
            entry_type: EntryType::EntryConfChange as i32,
            data: c.encode_to_vec().into(),
        };
        let mut chk = Checker::with_voters(&[1, 2, 3]);
        let mut log = MemLog::new();
        let (noop, a, b) = (ent(1, 1, b""), entry(2, 1, &c4), entry(3, 1, &c5));
        log.append(&[noop.clone(), a.clone(), b.clone()]).unwrap();
        chk.on_append(1, Some(0), &[noop, a.clone(), b.clone()])
            .unwrap();
        chk.on_conf_appended(1, 1, &a, &log, (1, true), None)
            .unwrap();
        let e = chk
            .on_conf_appended(1, 1, &b, &log, (1, true), None)
            .unwrap_err();
        assert!(e.contains("two changes in flight"), "{e}");
        let e = chk
            .on_conf_appended(1, 2, &a, &log, (1, false), None)
            .unwrap_err();
        assert!(e.contains("own term"), "{e}");
    }
}
