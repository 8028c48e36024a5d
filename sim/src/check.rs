//! Checkers over a run's recorded history, each a plain function of the records so that a test
//! can feed it a doctored history and see it fail.
//!
//! - [`linearizable`]: the guest operations (create, modify with and without an expected
//!   version, remove, linearizable read) against a sequential model of one guest, by the
//!   Wing–Gong search with Lowe's memoization (as Porcupine does). Linearizability is local,
//!   so each guest is checked alone.
//! - [`watch`]: the event deliveries against the final history: ordered, unique, gap-free,
//!   atomic (a delivery never ends inside a request's events), resumable and bookmarkable (a
//!   delivery after revision `r` continues exactly after `r`, from any node).

use std::collections::{BTreeMap, HashSet};

/// A guest register's value as clients see it: (version, memory in MiB).
pub type Value = Option<(u64, u64)>;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Create {
        value: u64,
    },
    /// `expect`: the version the guest must have (compare-and-set), or any.
    Modify {
        value: u64,
        expect: Option<u64>,
    },
    Remove {
        expect: Option<u64>,
    },
    Read,
}

/// What it was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written; the guest's version is now `version`.
    Wrote {
        version: u64,
    },
    Removed,
    /// Refused: the guest exists already.
    Exists,
    /// Refused: no such guest.
    Missing,
    /// Refused: the guest's version is not the one expected.
    Conflict,
    Read(Value),
}

/// One client operation: invoked and completed at simulated times (ns); `done: None` when the
/// client never learned the answer (the outcome is then what the final history shows).
#[derive(Clone, Debug)]
pub struct Op {
    pub client: u64,
    pub key: u32,
    pub call: Call,
    pub invoke: u64,
    pub done: Option<u64>,
    pub outcome: Outcome,
}

/// The model: one guest, step by step. `None`: this outcome is impossible in `state`.
fn step(state: Value, call: &Call, outcome: &Outcome) -> Option<Value> {
    let matches = |expect: &Option<u64>, cur: u64| expect.is_none_or(|e| e == cur);
    match (call, outcome, state) {
        (Call::Create { value }, Outcome::Wrote { version }, None) => Some(Some((*version, *value))),
        (Call::Create { .. }, Outcome::Exists, Some(_)) => Some(state),
        (Call::Modify { value, expect }, Outcome::Wrote { version }, Some((cur, _)))
            if matches(expect, cur) && *version > cur =>
        {
            Some(Some((*version, *value)))
        }
        (Call::Remove { expect }, Outcome::Removed, Some((cur, _))) if matches(expect, cur) => Some(None),
        (Call::Modify { expect, .. } | Call::Remove { expect }, Outcome::Conflict, Some((cur, _)))
            if !matches(expect, cur) =>
        {
            Some(state)
        }
        (Call::Modify { .. } | Call::Remove { .. }, Outcome::Missing, None) => Some(state),
        (Call::Read, Outcome::Read(v), s) if *v == s => Some(state),
        _ => None,
    }
}

/// Checks that the operations on one guest are linearizable; says why not.
pub fn linearizable(ops: &[Op]) -> Result<(), String> {
    let n = ops.len();
    if n == 0 {
        return Ok(());
    }
    // Events in time order: (time, is_return, op). At equal times calls come first, so
    // operations that touch count as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, false, i));
        events.push((op.done.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    // A doubly linked list over the events, with a head sentinel at index 2n.
    let head = 2 * n;
    let mut next = vec![usize::MAX; 2 * n + 1];
    let mut prev = vec![usize::MAX; 2 * n + 1];
    let mut order = vec![head];
    order.extend(0..2 * n);
    for w in order.windows(2) {
        next[w[0]] = w[1];
        prev[w[1]] = w[0];
    }
    let mut ret_of = vec![0; n];
    for (pos, e) in events.iter().enumerate() {
        if e.1 {
            ret_of[e.2] = pos;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, q) = (prev[i], next[i]);
        next[p] = q;
        if q != usize::MAX {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, q) = (prev[i], next[i]);
        next[p] = i;
        if q != usize::MAX {
            prev[q] = i;
        }
    };
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state: Value = None;
    let mut entry = next[head];
    let mut steps = 0u64;
    let mut deepest = 0;
    while next[head] != usize::MAX {
        steps += 1;
        if steps > 20_000_000 {
            return Err(format!("the search gave up after {steps} steps ({n} operations)"));
        }
        if entry == usize::MAX {
            unreachable!("a call's return is always after it in the list");
        }
        let (_, is_return, op) = events[entry];
        if !is_return {
            if let Some(new) = step(state, &ops[op].call, &ops[op].outcome) {
                done[op / 64] |= 1 << (op % 64);
                if cache.insert((done.clone(), new)) {
                    stack.push((entry, state));
                    deepest = deepest.max(stack.len());
                    state = new;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, ret_of[op]);
                    entry = next[head];
                    continue;
                }
                done[op / 64] &= !(1 << (op % 64));
            }
            entry = next[entry];
        } else {
            // An operation returned before any order could place it: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                let op = &ops[op];
                return Err(format!(
                    "not linearizable: no order of the operations explains {:?} → {:?} by client {} (invoked at {} ns); {} of {n} operations placed at most",
                    op.call, op.outcome, op.client, op.invoke, deepest
                ));
            };
            let op = events[call].2;
            state = before;
            done[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_of[op]);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Ok(())
}

/// Checks every guest's operations; one line per guest that fails.
pub fn linearizable_all(ops: &[Op]) -> Vec<String> {
    let mut by_key: BTreeMap<u32, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key).or_default().push(op.clone());
    }
    by_key.into_iter().filter_map(|(k, ops)| linearizable(&ops).err().map(|e| format!("guest g{k}: {e}"))).collect()
}

/// One batch a subscriber received: the events after `after`, from `node`.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub subscriber: u64,
    pub node: u64,
    pub after: u64,
    /// (revision, request key, encoded event)
    pub events: Vec<(u64, (String, u128), Vec<u8>)>,
}

/// Checks the deliveries against the final history (revision → (request key, encoded event)).
pub fn watch(deliveries: &[Delivery], history: &BTreeMap<u64, ((String, u128), Vec<u8>)>) -> Vec<String> {
    let mut bad = Vec::new();
    for d in deliveries {
        let who = format!("subscriber {} (from node {} after revision {})", d.subscriber, d.node, d.after);
        let mut expect = d.after + 1;
        for (rev, _, bytes) in &d.events {
            if *rev != expect {
                bad.push(format!(
                    "{who}: got revision {rev} where {expect} comes next (out of order, repeated or a gap)"
                ));
                break;
            }
            match history.get(rev) {
                Some((_, b)) if b == bytes => {}
                Some(_) => bad.push(format!("{who}: revision {rev} differs from the committed history")),
                None => bad.push(format!("{who}: revision {rev} is not in the committed history")),
            }
            expect += 1;
        }
        if let (Some((last, req, _)), Some((next_req, _))) = (d.events.last(), history.get(&(expect))) {
            if req == next_req {
                bad.push(format!("{who}: the delivery ends at revision {last}, inside a request whose events go on"));
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, call: Call, invoke: u64, done: Option<u64>, outcome: Outcome) -> Op {
        Op { client, key: 0, call, invoke, done, outcome }
    }

    #[test]
    fn a_sequential_history_is_linearizable() {
        let ops = vec![
            op(1, Call::Create { value: 5 }, 0, Some(10), Outcome::Wrote { version: 3 }),
            op(1, Call::Modify { value: 6, expect: Some(3) }, 20, Some(30), Outcome::Wrote { version: 7 }),
            op(2, Call::Read, 40, Some(50), Outcome::Read(Some((7, 6)))),
            op(2, Call::Modify { value: 9, expect: Some(3) }, 60, Some(70), Outcome::Conflict),
            op(1, Call::Remove { expect: None }, 80, Some(90), Outcome::Removed),
            op(2, Call::Read, 100, Some(110), Outcome::Read(None)),
        ];
        linearizable(&ops).unwrap();
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: it may see the old or the new value.
        let base = op(1, Call::Create { value: 5 }, 0, Some(10), Outcome::Wrote { version: 3 });
        for seen in [Some((3, 5)), Some((8, 6))] {
            let ops = vec![
                base.clone(),
                op(1, Call::Modify { value: 6, expect: None }, 20, Some(40), Outcome::Wrote { version: 8 }),
                op(2, Call::Read, 25, Some(30), Outcome::Read(seen)),
            ];
            linearizable(&ops).unwrap();
        }
        // A write whose answer was lost (done: None) may take effect at any time after its call.
        let ops = vec![
            base,
            op(1, Call::Modify { value: 6, expect: None }, 20, None, Outcome::Wrote { version: 8 }),
            op(2, Call::Read, 100, Some(110), Outcome::Read(Some((3, 5)))),
            op(2, Call::Read, 120, Some(130), Outcome::Read(Some((8, 6)))),
        ];
        linearizable(&ops).unwrap();
    }

    #[test]
    fn a_stale_read_is_caught() {
        let ops = vec![
            op(1, Call::Create { value: 5 }, 0, Some(10), Outcome::Wrote { version: 3 }),
            op(1, Call::Modify { value: 6, expect: Some(3) }, 20, Some(30), Outcome::Wrote { version: 7 }),
            op(2, Call::Read, 40, Some(50), Outcome::Read(Some((3, 5)))),
        ];
        let e = linearizable(&ops).unwrap_err();
        assert!(e.contains("not linearizable"), "{e}");
    }

    #[test]
    fn two_successful_compare_and_sets_from_one_version_are_caught() {
        let ops = vec![
            op(1, Call::Create { value: 5 }, 0, Some(10), Outcome::Wrote { version: 3 }),
            op(1, Call::Modify { value: 6, expect: Some(3) }, 20, Some(30), Outcome::Wrote { version: 7 }),
            op(2, Call::Modify { value: 8, expect: Some(3) }, 21, Some(31), Outcome::Wrote { version: 9 }),
        ];
        assert!(linearizable(&ops).is_err());
    }

    #[test]
    fn a_write_seen_before_it_was_made_is_caught() {
        let ops = vec![
            op(2, Call::Read, 0, Some(5), Outcome::Read(Some((3, 5)))),
            op(1, Call::Create { value: 5 }, 10, Some(20), Outcome::Wrote { version: 3 }),
        ];
        assert!(linearizable(&ops).is_err());
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        // Acknowledged, then a later read shows the state before it.
        let ops = vec![
            op(1, Call::Create { value: 5 }, 0, Some(10), Outcome::Wrote { version: 3 }),
            op(2, Call::Read, 20, Some(30), Outcome::Read(None)),
        ];
        assert!(linearizable(&ops).is_err());
    }

    fn history(revs: &[(u64, u128)]) -> BTreeMap<u64, ((String, u128), Vec<u8>)> {
        revs.iter().map(|&(r, req)| (r, (("c".to_string(), req), vec![r as u8]))).collect()
    }

    fn delivery(after: u64, revs: &[(u64, u128)]) -> Delivery {
        Delivery {
            subscriber: 1,
            node: 1,
            after,
            events: revs.iter().map(|&(r, req)| (r, ("c".to_string(), req), vec![r as u8])).collect(),
        }
    }

    #[test]
    fn the_watch_checker_passes_a_faithful_stream_and_catches_each_fault() {
        let h = history(&[(1, 1), (2, 2), (3, 2), (4, 3)]);
        assert!(watch(&[delivery(0, &[(1, 1)]), delivery(1, &[(2, 2), (3, 2)]), delivery(3, &[(4, 3)])], &h).is_empty());
        let says = |ds: &[Delivery], what: &str| {
            let v = watch(ds, &h);
            assert!(v.iter().any(|m| m.contains(what)), "expected {what:?} in {v:?}");
        };
        // A gap, a repeat, reordering.
        says(&[delivery(0, &[(2, 2)])], "where 1 comes next");
        says(&[delivery(1, &[(2, 2), (2, 2)])], "where 3 comes next");
        says(&[delivery(1, &[(3, 2), (2, 2)])], "where 2 comes next");
        // A request's events split across deliveries (not atomic).
        says(&[delivery(1, &[(2, 2)])], "inside a request");
        // An event that is not the committed one, or not committed at all.
        let mut d = delivery(0, &[(1, 1)]);
        d.events[0].2 = vec![99];
        says(&[d], "differs from the committed history");
        says(&[delivery(4, &[(5, 4)])], "not in the committed history");
    }
}
