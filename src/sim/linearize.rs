//! Linearizability checker for the simulated clients' key-value history.
//!
//! Wing & Gong's search with Lowe's / Porcupine's memoization: repeatedly pick an operation that
//! may take effect next (its call precedes the earliest return among the operations not yet
//! placed), apply it to a sequential model of the store, and backtrack on a mismatch. The cache
//! of visited (set of placed operations, model state) pairs keeps the search polynomial on
//! realistic histories. Every operation touches one key, so the history is partitioned per key
//! and each part is checked on its own (linearizability is compositional).
//!
//! Ambiguous operations (a write whose client never learned the outcome) have no return: they
//! may take effect at any point after their call, or never. Reads without an answer are dropped
//! (they have no effect).
//!
//! The model: a key holds `Option<value>` plus a version (the log index of the write that last
//! set it). Versions are not predictable, so a pre-pass maps every value (values are unique per
//! write) to the version any answer reported for it; two different versions for one value is a
//! violation by itself (the write was applied twice). Writes must take versions that increase in
//! linearization order.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// What a client asked for. Values are unique non-zero ids; keys are small integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Put {
        val: u64,
    },
    Get,
    Delete,
    /// Compare-and-swap on the version (0 = absent); `new_val: None` deletes.
    Cas {
        expected: u64,
        new_val: Option<u64>,
    },
}

/// What the store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Put {
        version: u64,
    },
    /// `Some((value, version))` when found.
    Get {
        found: Option<(u64, u64)>,
    },
    Delete {
        deleted: bool,
    },
    Cas {
        ok: bool,
        version: u64,
    },
}

/// One client operation: call time, return time (None = ambiguous), input and output.
#[derive(Debug, Clone)]
pub struct Operation {
    pub client: u64,
    pub key: u64,
    pub input: Input,
    /// None for an operation whose outcome is unknown.
    pub output: Option<Output>,
    pub call: u64,
    pub ret: Option<u64>,
}

/// Result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Not linearizable; a description naming the key and the operations involved.
    Violation(String),
    /// The search budget ran out (reported, not treated as a violation).
    Inconclusive(String),
}

/// A version nobody reported.
const UNKNOWN: u64 = u64::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct KeyState {
    val: Option<u64>,
    /// Version of `val` (0 when absent, UNKNOWN when never observed).
    version: u64,
    /// Highest known version written so far (writes must go above it).
    max_version: u64,
}

/// Search states explored per key before giving up.
const BUDGET: usize = 2_000_000;

/// Checks a whole history, key by key.
pub fn check(history: &[Operation]) -> Verdict {
    let mut per_key: BTreeMap<u64, Vec<Operation>> = BTreeMap::new();
    for op in history {
        // An unanswered read has no effect: drop it.
        if op.output.is_none() && op.input == Input::Get {
            continue;
        }
        per_key.entry(op.key).or_default().push(op.clone());
    }
    let mut inconclusive = None;
    for (key, ops) in per_key {
        match check_key(key, ops) {
            Verdict::Ok => {}
            Verdict::Inconclusive(s) => inconclusive = Some(s),
            v => return v,
        }
    }
    match inconclusive {
        Some(s) => Verdict::Inconclusive(s),
        None => Verdict::Ok,
    }
}

/// The version each value was reported with, or a violation if reports disagree.
fn value_versions(key: u64, ops: &[Operation]) -> Result<BTreeMap<u64, u64>, String> {
    let mut map: BTreeMap<u64, u64> = BTreeMap::new();
    let mut note = |val: u64, ver: u64, op: &Operation| -> Result<(), String> {
        match map.insert(val, ver) {
            Some(old) if old != ver => Err(format!(
                "key {key}: value {val} reported with versions {old} and {ver} (applied twice?); \
                 second report by {op:?}"
            )),
            _ => Ok(()),
        }
    };
    for op in ops {
        match (&op.input, &op.output) {
            (Input::Put { val }, Some(Output::Put { version })) => note(*val, *version, op)?,
            (
                Input::Get,
                Some(Output::Get {
                    found: Some((v, ver)),
                }),
            ) => note(*v, *ver, op)?,
            (
                Input::Cas {
                    new_val: Some(v), ..
                },
                Some(Output::Cas { ok: true, version }),
            ) => note(*v, *version, op)?,
            _ => {}
        }
    }
    Ok(map)
}

/// Versions reported for values, and the set of those versions.
struct Versions {
    of: BTreeMap<u64, u64>,
    known: BTreeSet<u64>,
}

/// The states `op` can lead to from `s` (empty if its recorded output contradicts the model;
/// two for an ambiguous cas whose success depends on a version nobody reported).
fn step(s: &KeyState, op: &Operation, vs: &Versions) -> Vec<KeyState> {
    let version_of = |v: u64| vs.of.get(&v).copied().unwrap_or(UNKNOWN);
    // A write of `val` on top of state `s`.
    let write = |s: &KeyState, val: Option<u64>| -> Option<KeyState> {
        match val {
            None => Some(KeyState {
                val: None,
                version: 0,
                max_version: s.max_version,
            }),
            Some(v) => {
                let ver = version_of(v);
                if ver == UNKNOWN {
                    Some(KeyState {
                        val: Some(v),
                        version: UNKNOWN,
                        max_version: s.max_version,
                    })
                } else if ver > s.max_version {
                    Some(KeyState {
                        val: Some(v),
                        version: ver,
                        max_version: ver,
                    })
                } else {
                    None // versions must grow in linearization order
                }
            }
        }
    };
    // The current value's version was never reported with it: learn it is `v`, if possible.
    let refine = |v: u64| -> Option<KeyState> {
        (v > s.max_version && v != UNKNOWN && !vs.known.contains(&v)).then_some(KeyState {
            val: s.val,
            version: v,
            max_version: v,
        })
    };
    let one = |x: Option<KeyState>| x.into_iter().collect::<Vec<_>>();
    match &op.input {
        Input::Put { val } => one(write(s, Some(*val))),
        Input::Get => match &op.output {
            Some(Output::Get { found: None }) if s.val.is_none() => vec![s.clone()],
            Some(Output::Get {
                found: Some((v, ver)),
            }) if s.val == Some(*v) && (s.version == *ver || s.version == UNKNOWN) => {
                vec![s.clone()]
            }
            _ => Vec::new(),
        },
        Input::Delete => {
            let deleted = s.val.is_some();
            match &op.output {
                Some(Output::Delete { deleted: d }) if *d != deleted => Vec::new(),
                _ => one(write(s, None)),
            }
        }
        Input::Cas { expected, new_val } => {
            let cur = if s.val.is_none() { 0 } else { s.version };
            // If the current version is unknown, success means it equals `expected`.
            let succeed = || -> Option<KeyState> {
                if cur == UNKNOWN {
                    write(&refine(*expected)?, *new_val)
                } else if cur == *expected {
                    write(s, *new_val)
                } else {
                    None
                }
            };
            match &op.output {
                Some(Output::Cas { ok: true, version }) => {
                    if new_val.is_none() && *version != 0 {
                        return Vec::new();
                    }
                    one(succeed())
                }
                Some(Output::Cas { ok: false, version }) => {
                    if cur == UNKNOWN {
                        // It failed, so the current version is the reported one.
                        if *version == *expected {
                            return Vec::new();
                        }
                        one(refine(*version))
                    } else if cur != *expected && cur == *version {
                        vec![s.clone()]
                    } else {
                        Vec::new()
                    }
                }
                Some(_) => Vec::new(),
                None => {
                    // Ambiguous: it succeeded or failed, as the state allows.
                    let mut out = Vec::new();
                    if cur == UNKNOWN || cur != *expected {
                        out.push(s.clone());
                    }
                    out.extend(succeed());
                    out
                }
            }
        }
    }
}

fn check_key(key: u64, mut ops: Vec<Operation>) -> Verdict {
    let of = match value_versions(key, &ops) {
        Ok(v) => v,
        Err(e) => return Verdict::Violation(e),
    };
    let vs = Versions {
        known: of.values().copied().collect(),
        of,
    };
    ops.sort_by_key(|o| o.call);
    let n = ops.len();
    let completed = ops.iter().filter(|o| o.ret.is_some()).count();
    let words = n.div_ceil(64);
    let mut placed = vec![0u64; words];
    let is_set = |b: &[u64], i: usize| b[i / 64] & (1 << (i % 64)) != 0;
    let mut seen: HashSet<(Vec<u64>, KeyState)> = HashSet::new();

    // Explicit DFS stack. Each frame: the state reached, the op placed to reach it, the next
    // candidate op to try from it, and untried successor states of the current candidate.
    struct Frame {
        state: KeyState,
        chosen: Option<usize>,
        next: usize,
        alts: Vec<(usize, KeyState)>,
    }
    let init = KeyState {
        val: None,
        version: 0,
        max_version: 0,
    };
    let mut stack = vec![Frame {
        state: init,
        chosen: None,
        next: 0,
        alts: Vec::new(),
    }];
    let mut placed_completed = 0usize;
    let mut deepest: Vec<usize> = Vec::new();
    let mut order: Vec<usize> = Vec::new();
    while let Some(top) = stack.last_mut() {
        if placed_completed == completed {
            return Verdict::Ok;
        }
        if seen.len() > BUDGET {
            return Verdict::Inconclusive(format!(
                "key {key}: search budget of {BUDGET} states exhausted ({n} operations)"
            ));
        }
        // Earliest return among unplaced completed ops: candidates must be called before it.
        let mut min_ret = u64::MAX;
        for (i, o) in ops.iter().enumerate() {
            if let Some(r) = o.ret {
                if !is_set(&placed, i) && r < min_ret {
                    min_ret = r;
                }
            }
        }
        let mut pick = None;
        loop {
            if let Some((i, s2)) = top.alts.pop() {
                placed[i / 64] |= 1 << (i % 64);
                if seen.insert((placed.clone(), s2.clone())) {
                    pick = Some((i, s2));
                    break;
                }
                placed[i / 64] &= !(1 << (i % 64));
                continue;
            }
            if top.next >= n {
                break;
            }
            let i = top.next;
            top.next += 1;
            if ops[i].call > min_ret {
                top.next = n;
                break;
            }
            if !is_set(&placed, i) {
                top.alts = step(&top.state, &ops[i], &vs)
                    .into_iter()
                    .map(|s| (i, s))
                    .collect();
            }
        }
        if let Some((i, s2)) = pick {
            if ops[i].ret.is_some() {
                placed_completed += 1;
            }
            order.push(i);
            if order.len() > deepest.len() {
                deepest = order.clone();
            }
            stack.push(Frame {
                state: s2,
                chosen: Some(i),
                next: 0,
                alts: Vec::new(),
            });
            continue;
        }
        // Exhausted this frame: backtrack.
        let f = stack.pop().expect("stack is non-empty inside the loop");
        if let Some(i) = f.chosen {
            placed[i / 64] &= !(1 << (i % 64));
            if ops[i].ret.is_some() {
                placed_completed -= 1;
            }
            order.pop();
        }
    }
    Verdict::Violation(describe(key, &ops, &deepest))
}

/// Explains a failed key: the longest linearizable prefix found and the operations that could
/// not follow it.
fn describe(key: u64, ops: &[Operation], prefix: &[usize]) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "history of key {key} is not linearizable ({} operations). Longest linearizable prefix:\n",
        ops.len()
    );
    let show = |o: &Operation| {
        format!(
            "client {} [{}, {}] {:?} -> {}",
            o.client,
            o.call,
            o.ret.map_or("?".to_string(), |r| r.to_string()),
            o.input,
            o.output
                .as_ref()
                .map_or("unknown".to_string(), |x| format!("{x:?}"))
        )
    };
    let skip = prefix.len().saturating_sub(15);
    if skip > 0 {
        let _ = writeln!(s, "  ... {skip} earlier operations");
    }
    for &i in &prefix[skip..] {
        let _ = writeln!(s, "  {}", show(&ops[i]));
    }
    let _ = writeln!(s, "none of these can come next:");
    let mut placed = vec![false; ops.len()];
    for &i in prefix {
        placed[i] = true;
    }
    let min_ret = ops
        .iter()
        .enumerate()
        .filter(|(i, o)| !placed[*i] && o.ret.is_some())
        .filter_map(|(_, o)| o.ret)
        .min()
        .unwrap_or(u64::MAX);
    for (i, o) in ops.iter().enumerate() {
        if !placed[i] && o.call <= min_ret {
            let _ = writeln!(s, "  {}", show(o));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: u64,
        call: u64,
        ret: Option<u64>,
        input: Input,
        output: Option<Output>,
    ) -> Operation {
        Operation {
            client,
            key: 1,
            input,
            output,
            call,
            ret,
        }
    }
    fn put(c: u64, call: u64, ret: u64, val: u64, version: u64) -> Operation {
        op(
            c,
            call,
            Some(ret),
            Input::Put { val },
            Some(Output::Put { version }),
        )
    }
    fn get(c: u64, call: u64, ret: u64, found: Option<(u64, u64)>) -> Operation {
        op(c, call, Some(ret), Input::Get, Some(Output::Get { found }))
    }

    #[test]
    fn empty_and_sequential_histories_pass() {
        assert_eq!(check(&[]), Verdict::Ok);
        let h = vec![
            get(1, 0, 1, None),
            put(1, 2, 3, 10, 5),
            get(1, 4, 5, Some((10, 5))),
            op(
                1,
                6,
                Some(7),
                Input::Delete,
                Some(Output::Delete { deleted: true }),
            ),
            get(1, 8, 9, None),
        ];
        assert_eq!(check(&h), Verdict::Ok);
    }

    #[test]
    fn stale_read_after_completed_write_fails() {
        // put(10) finishes, then put(11) finishes, then a read returns the older value.
        let h = vec![
            put(1, 0, 1, 10, 3),
            put(2, 2, 3, 11, 4),
            get(3, 4, 5, Some((10, 3))),
        ];
        assert!(
            matches!(check(&h), Verdict::Violation(_)),
            "{:?}",
            check(&h)
        );
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        // A write overlapping two reads: one sees the old value, the later one the new value.
        let h = vec![
            put(1, 0, 1, 10, 3),
            put(2, 2, 10, 11, 4),
            get(3, 3, 4, Some((10, 3))),
            get(3, 5, 6, Some((11, 4))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // ...but not new-then-old from one sequential reader.
        let h = vec![
            put(1, 0, 1, 10, 3),
            put(2, 2, 10, 11, 4),
            get(3, 3, 4, Some((11, 4))),
            get(3, 5, 6, Some((10, 3))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn read_of_never_written_value_fails() {
        let h = vec![put(1, 0, 1, 10, 3), get(2, 2, 3, Some((99, 7)))];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn ambiguous_write_may_take_effect_late_or_never() {
        // Unknown put(11) called at 2: a read at 10 may see it, and a later one too...
        let h = vec![
            put(1, 0, 1, 10, 3),
            op(2, 2, None, Input::Put { val: 11 }, None),
            get(3, 10, 11, Some((10, 3))),
            get(3, 12, 13, Some((11, 9))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // ...or it never happens at all.
        let h = vec![
            put(1, 0, 1, 10, 3),
            op(2, 2, None, Input::Put { val: 11 }, None),
            get(3, 10, 11, Some((10, 3))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // But it cannot take effect before it was called.
        let h = vec![
            get(3, 0, 1, Some((11, 9))),
            op(2, 2, None, Input::Put { val: 11 }, None),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
        // And once seen, it cannot be un-seen.
        let h = vec![
            put(1, 0, 1, 10, 3),
            op(2, 2, None, Input::Put { val: 11 }, None),
            get(3, 10, 11, Some((11, 9))),
            get(3, 12, 13, Some((10, 3))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn cas_semantics() {
        let cas = |c, call, ret, expected, new_val, ok, version| {
            op(
                c,
                call,
                Some(ret),
                Input::Cas { expected, new_val },
                Some(Output::Cas { ok, version }),
            )
        };
        // Create-if-absent succeeds once; the second racer must fail with the winner's version.
        let h = vec![
            cas(1, 0, 5, 0, Some(10), true, 3),
            cas(2, 1, 6, 0, Some(11), false, 3),
            get(3, 7, 8, Some((10, 3))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // Both succeeding from "absent" is not linearizable.
        let h = vec![
            cas(1, 0, 5, 0, Some(10), true, 3),
            cas(2, 1, 6, 0, Some(11), true, 4),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
        // A cas delete on the right version, then absent.
        let h = vec![
            put(1, 0, 1, 10, 3),
            cas(1, 2, 3, 3, None, true, 0),
            get(2, 4, 5, None),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // Failing cas must report the current version.
        let h = vec![put(1, 0, 1, 10, 3), cas(1, 2, 3, 7, Some(11), false, 4)];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn versions_learned_from_failed_cas_on_unobserved_value() {
        let cas = |c, call, ret: Option<u64>, expected, new_val, out: Option<(bool, u64)>| {
            op(
                c,
                call,
                ret,
                Input::Cas { expected, new_val },
                out.map(|(ok, version)| Output::Cas { ok, version }),
            )
        };
        // An ambiguous put whose value nobody read; a failed cas reveals its version 45, and a
        // cas expecting 45 then succeeds.
        let h = vec![
            put(1, 0, 1, 10, 3),
            op(2, 2, None, Input::Put { val: 11 }, None),
            cas(3, 5, Some(6), 3, Some(12), Some((false, 45))),
            cas(3, 7, Some(8), 45, Some(13), Some((true, 50))),
            get(4, 9, 10, Some((13, 50))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // Once revealed, the version sticks: a later failure cannot report the old one.
        let h = vec![
            put(1, 0, 1, 10, 3),
            op(2, 2, None, Input::Put { val: 11 }, None),
            cas(3, 5, Some(6), 3, Some(12), Some((false, 45))),
            cas(3, 7, Some(8), 9, Some(12), Some((false, 3))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
        // And the revealed version cannot belong to another value.
        let h = vec![
            put(1, 0, 1, 10, 3),
            put(1, 2, 3, 14, 8),
            op(2, 4, None, Input::Put { val: 11 }, None),
            cas(3, 5, Some(6), 3, Some(12), Some((false, 8))),
            get(4, 7, 8, Some((14, 8))),
            op(
                1,
                9,
                Some(10),
                Input::Delete,
                Some(Output::Delete { deleted: true }),
            ),
            get(4, 11, 12, None),
            cas(3, 13, Some(14), 3, Some(12), Some((false, 8))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
        // An ambiguous cas on an unknown version may have succeeded...
        let h = vec![
            op(2, 0, None, Input::Put { val: 11 }, None),
            cas(3, 1, None, 9, Some(12), None),
            get(4, 5, 6, Some((12, 20))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // ...or failed.
        let h = vec![
            op(2, 0, None, Input::Put { val: 11 }, None),
            cas(3, 1, None, 9, Some(12), None),
            get(4, 5, 6, None),
            op(
                2,
                7,
                Some(8),
                Input::Delete,
                Some(Output::Delete { deleted: false }),
            ),
        ];
        assert_eq!(check(&h), Verdict::Ok);
    }

    #[test]
    fn versions_must_grow_and_be_unique_per_value() {
        // Two sequential puts whose versions go backwards.
        let h = vec![put(1, 0, 1, 10, 5), put(1, 2, 3, 11, 4)];
        assert!(matches!(check(&h), Verdict::Violation(_)));
        // The same value seen with two versions: applied twice.
        let h = vec![put(1, 0, 1, 10, 5), get(2, 2, 3, Some((10, 6)))];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn delete_reports_presence() {
        let h = vec![op(
            1,
            0,
            Some(1),
            Input::Delete,
            Some(Output::Delete { deleted: true }),
        )];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn keys_are_independent() {
        let mut a = put(1, 0, 10, 10, 3);
        a.key = 1;
        let mut b = get(2, 1, 2, None);
        b.key = 2;
        assert_eq!(check(&[a, b]), Verdict::Ok);
    }

    #[test]
    fn many_concurrent_clients_stay_fast() {
        // 8 clients, 400 overlapping puts and reads on one key, generated from a real
        // sequential execution with known linearization points: must pass quickly.
        let mut rng = crate::rng::Rng::new(5);
        let mut h = Vec::new();
        let mut cur: Option<(u64, u64)> = None;
        let mut t = 100u64;
        let mut version = 0;
        for i in 0..400u64 {
            // Each op spans [call, ret] around its linearization point t.
            t += 10;
            let call = t - rng.range(0, 30);
            let ret = t + rng.range(1, 30);
            let c = i % 8;
            if rng.chance(0.5) {
                version += 1;
                let val = 1000 + i;
                h.push(put(c, call, ret, val, version));
                cur = Some((val, version));
            } else {
                h.push(get(c, call, ret, cur));
            }
        }
        assert_eq!(check(&h), Verdict::Ok);
    }
}
