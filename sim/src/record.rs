//! What a run records, and the checks made as it goes: every apply on every node is compared
//! with what the cluster committed before (Raft safety), every state is checked against the
//! domain's invariants, every leader is noted with its term.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use openraft::EntryPayload;
use switchyard_protocol::{codec, Event, RequestId};

use crate::check::{Call, Delivery, Op};
use crate::disk::Applied;
use crate::{Entry, LogId, Vote};

/// A stable 64-bit digest (SipHash with fixed keys: the same bytes, the same digest, every run).
pub fn digest(bytes: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Everything a run observed.
#[derive(Default)]
pub struct Recorder {
    /// What happened, one line each, in simulated-time order: faults, leaders, operations. Two
    /// runs of one seed produce the same lines, byte for byte.
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    /// Leaders seen, by term.
    pub leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// Each node's latest vote.
    pub votes: BTreeMap<u64, Vote>,
    /// Every applied entry: log index → (log id, digest of the payload).
    pub committed: BTreeMap<u64, (LogId, u64)>,
    /// State digest by applied log index.
    pub states: BTreeMap<u64, (u64, u64)>,
    /// Every event applied anywhere, by revision (encoded), the first copy seen.
    pub events: BTreeMap<u64, Vec<u8>>,
    pub ops: Vec<Op>,
    pub deliveries: Vec<Delivery>,
    pub faults: BTreeMap<&'static str, u64>,
    /// Writes whose answer never came: (actor, request id, guest, call, invoked at ns).
    pub pending: Vec<(String, RequestId, u32, Call, u64)>,
    /// Writes acknowledged: (actor, request id, last revision they produced).
    pub acked: Vec<(String, RequestId, u64)>,
    /// Guest starts on the simulated hypervisors, each checked against every other host.
    pub starts: u64,
    /// Failovers their target reported complete (acknowledged).
    pub failovers: u64,
}

impl Recorder {
    pub fn note(&mut self, at_ms: u64, line: String) {
        self.trace.push(format!("{at_ms:>7} {line}"));
    }

    pub fn violation(&mut self, what: String) {
        if self.violations.len() < 50 {
            self.violations.push(what);
        }
    }

    pub fn fault(&mut self, at_ms: u64, kind: &'static str, detail: String) {
        *self.faults.entry(kind).or_default() += 1;
        self.note(at_ms, format!("fault {kind} {detail}"));
    }

    /// Node `node` sees itself leader in `term`. Several leaders in one term are no fault here:
    /// openraft's default leader id is (term, node id), so two candidates may both win one term
    /// (a voter may move its vote from (t, 3) to (t, 4)); entries stay apart by their log ids,
    /// which carry the leader's node id. What must hold is checked by [`Recorder::vote`] and
    /// [`Recorder::applied`].
    pub fn leader(&mut self, at_ms: u64, term: u64, node: u64) {
        let set = self.leaders.entry(term).or_default();
        if set.insert(node) {
            self.note(at_ms, format!("leader n{node} term {term}"));
        }
    }

    /// Node `node`'s vote is now `vote`. A vote never goes back, not across a crash or a power
    /// loss either (it is written synced before it is used): one that did could grant a second
    /// vote to a lesser candidate, and two leaders could then share a leader id.
    pub fn vote(&mut self, at_ms: u64, node: u64, vote: Vote) {
        if let Some(prev) = self.votes.get(&node) {
            // Less, or not comparable (a partial order in openraft's standard leader-id mode).
            let back = matches!(vote.leader_id().partial_cmp(prev.leader_id()), Some(std::cmp::Ordering::Less) | None);
            if back {
                let msg = format!("node {node}'s vote went back from {prev} to {vote}");
                self.note(at_ms, msg.clone());
                self.violation(msg);
            }
        }
        self.votes.insert(node, vote);
    }

    /// Node `node` applied `entries`, reaching `sm` (`before`: its history's length before).
    pub fn applied(&mut self, node: u64, sm: &Applied, before: usize, entries: &[Entry]) {
        for e in entries {
            let d = match &e.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Normal(p) => digest(&codec::encode(p)),
                EntryPayload::Membership(m) => digest(&codec::encode(m)),
            };
            match self.committed.get(&e.log_id.index) {
                None => {
                    self.committed.insert(e.log_id.index, (e.log_id, d));
                }
                Some((id, seen)) if (*id, *seen) != (e.log_id, d) => {
                    let msg = format!(
                        "node {node} applied {} at index {}, where {} was applied before (payload digests {d:x} / {seen:x})",
                        e.log_id, e.log_id.index, id
                    );
                    self.violation(msg);
                }
                Some(_) => {}
            }
        }
        if let Some(last) = sm.last_applied {
            let state = digest(&codec::encode(&sm.cluster));
            let events = sm.history.len() as u64;
            match self.states.get(&last.index) {
                None => {
                    self.states.insert(last.index, (state, events));
                }
                Some(&(s, n)) if (s, n) != (state, events) => {
                    self.violation(format!(
                        "node {node}'s state at applied index {} differs from another node's at the same index",
                        last.index
                    ));
                }
                Some(_) => {}
            }
        }
        for e in sm.history.iter().skip(before) {
            self.event(node, e);
        }
        for bad in sm.cluster.check_invariants() {
            self.violation(format!("node {node} at revision {}: invariant broken: {bad}", sm.cluster.revision()));
        }
    }

    fn event(&mut self, node: u64, e: &Event) {
        let bytes = codec::encode(e);
        match self.events.get(&e.revision) {
            None => {
                self.events.insert(e.revision, bytes);
            }
            Some(seen) if *seen != bytes => {
                self.violation(format!("node {node} applied a different event at revision {}", e.revision));
            }
            Some(_) => {}
        }
    }
}
