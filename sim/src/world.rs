//! One simulated run: five coordinators (three voters to start, two spare), clients, subscribers,
//! a migration driver and a fault injector, all on one paused-clock runtime and one seed.
//!
//! The run has three parts: **faults** (a workload under the drawn faults for the run's length),
//! **healing** (every fault undone, every node up, clocks at their rate) and **settling** (wait
//! until every member applied the leader's whole log). Then the checkers read the records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{ChangeMembers, Raft, ServerState};
use switchyard_protocol::entry::{NodeInfo, Proposals};
use switchyard_protocol::model::{
    ClusterId, CompatProfile, GuestSpec, HostSpec, MigrationKind, Phase, Resources, RunState, Timestamp,
};
use switchyard_protocol::{ApplyResult, Command, GuestPatch, Name, Proposal, Rejection, RequestId};

use crate::check::{Call, Delivery, Op, Outcome};
use crate::disk::{Applied, Bug, Disk, SharedDisk, StateMachine, Store};
use crate::net::{Network, SharedBoard, Switchboard};
use crate::record::Recorder;
use crate::runtime::{as_node, leap, set_rate, sim_elapsed, with_rng};
use crate::Lock;
use crate::SimConfig;

mod hosts;
mod hypervisor;

/// Guests the clients read and write (the linearizability checker's registers).
pub const REGISTERS: u32 = 3;
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// Guests that migrate (each with a package, so every migration disables and re-enables
/// switching).
const MOVERS: [&str; 2] = ["m0", "m1"];

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// How long the faults and the workload last (simulated time).
    pub duration: Duration,
    pub bug: Bug,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options { seed, duration: Duration::from_secs(6), bug: Bug::None }
    }
}

pub(crate) struct World {
    opts: Options,
    config: Arc<openraft::Config>,
    board: SharedBoard,
    disks: BTreeMap<u64, SharedDisk>,
    pub(crate) rec: Arc<Mutex<Recorder>>,
    /// Each node's wall clock offset (ms), which stamps the proposals it takes.
    wall: Mutex<BTreeMap<u64, i64>>,
    /// Set when the faults stop: delayed restarts and windows leave the healing to it.
    healing: std::sync::atomic::AtomicBool,
    /// The leader the run settled under (0 until then).
    settled: std::sync::atomic::AtomicU64,
    next_request: std::sync::atomic::AtomicU64,
    /// The VM hosts' agents and the leaders' view of them (`hosts.rs`).
    hosts: Mutex<hosts::Hosts>,
}

pub(crate) fn now_ms() -> u64 {
    sim_elapsed().as_millis() as u64
}

fn now_ns() -> u64 {
    sim_elapsed().as_nanos() as u64
}

fn name(s: &str) -> Name {
    Name::new(s).expect("a valid name")
}

fn node_info(id: u64) -> NodeInfo {
    NodeInfo { raft_addr: format!("sim-{id}"), api_addr: format!("sim-{id}") }
}

/// How a client's write ended.
enum Written {
    Answer(ApplyResult),
    /// No answer: it may or may not have been applied (the final history says).
    Unknown,
}

impl World {
    pub(crate) fn new(opts: Options) -> Arc<World> {
        let config = openraft::Config {
            cluster_name: "sim".into(),
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            // Snapshots and purges often, so that outages end in snapshot catch-up.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(30),
            max_in_snapshot_log_to_keep: 5,
            purge_batch_size: 1,
            snapshot_max_chunk_size: 4096,
            ..Default::default()
        };
        let disks = (1..=5)
            .map(|id| {
                let mut disk = Disk::default();
                disk.bug = opts.bug;
                (id, Arc::new(Mutex::new(disk)))
            })
            .collect();
        Arc::new(World {
            opts,
            config: Arc::new(config.validate().expect("a valid openraft config")),
            board: Arc::new(Mutex::new(Switchboard::default())),
            disks,
            rec: Arc::new(Mutex::new(Recorder::default())),
            wall: Mutex::new(BTreeMap::new()),
            healing: false.into(),
            settled: 0.into(),
            next_request: 1.into(),
            hosts: Mutex::new(hosts::Hosts::new()),
        })
    }

    fn note(&self, line: String) {
        self.rec.locked().note(now_ms(), line);
    }

    fn fault(&self, kind: &'static str, detail: String) {
        self.rec.locked().fault(now_ms(), kind, detail);
    }

    fn healing(&self) -> bool {
        self.healing.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn raft(&self, id: u64) -> Option<(u64, Raft<SimConfig>)> {
        self.board.locked().nodes.get(&id).cloned()
    }

    fn running(&self) -> Vec<u64> {
        self.board.locked().nodes.keys().copied().collect()
    }

    fn leader(&self) -> Option<u64> {
        let nodes = self.board.locked().nodes.clone();
        nodes.into_iter().find(|(_, (_, r))| r.metrics().borrow().state == ServerState::Leader).map(|(id, _)| id)
    }

    /// Starts node `id` on its disk as it stands.
    async fn start(self: &Arc<Self>, id: u64) {
        if self.raft(id).is_some() {
            return;
        }
        let disk = self.disks[&id].clone();
        let store = Store::open(disk.clone());
        let epoch = disk.locked().epoch();
        let rec = self.rec.clone();
        let probe = Arc::new(move |sm: &Applied, before: usize, entries: &[crate::Entry]| {
            rec.locked().applied(id, sm, before, entries)
        });
        let sm = StateMachine::new(store.clone(), probe);
        let network = Network { from: id, epoch, board: self.board.clone() };
        let raft = as_node(id, Raft::new(id, self.config.clone(), network, store, sm))
            .await
            .expect("a node starts on its disk");
        self.board.locked().nodes.insert(id, (epoch, raft.clone()));
        let (rec, mut metrics) = (self.rec.clone(), raft.metrics());
        tokio::spawn(as_node(id, async move {
            loop {
                let m = metrics.borrow_and_update().clone();
                {
                    let mut r = rec.locked();
                    r.vote(now_ms(), id, m.vote);
                    if m.state == ServerState::Leader {
                        r.leader(now_ms(), m.current_term, id);
                    }
                }
                if metrics.changed().await.is_err() {
                    break;
                }
            }
        }));
    }

    /// Node `id` stops at once: `power` loses its unsynced writes (a prefix survives).
    fn kill(&self, id: u64, power: bool) -> Option<String> {
        let (_, raft) = self.board.locked().nodes.remove(&id)?;
        let mut disk = self.disks[&id].locked();
        let detail = if power {
            let keep = with_rng(|r| r.below(disk.unsynced() as u64 + 1)) as usize;
            let lost = disk.power_loss(keep);
            format!("n{id} lost {lost} unsynced writes")
        } else {
            disk.crash();
            format!("n{id}")
        };
        drop(disk);
        tokio::spawn(async move {
            let _ = raft.shutdown().await;
        });
        Some(detail)
    }

    /// Restarts node `id` after `after`, unless healing restarts it first.
    fn restart_later(self: &Arc<Self>, id: u64, after: Duration) {
        let w = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if !w.healing() {
                w.start(id).await;
            }
        });
    }

    fn wall_ms(&self, node: u64) -> u64 {
        let off = self.wall.locked().get(&node).copied().unwrap_or(0);
        (1_800_000_000_000i64 + now_ms() as i64 + off).max(0) as u64
    }

    fn request_id(&self) -> RequestId {
        RequestId(self.next_request.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u128)
    }

    /// Proposes `command` as `actor` with `id` until it is answered, retrying with the same
    /// request id (the state machine applies it once) on another node when one does not answer.
    async fn write(&self, actor: &str, id: RequestId, command: Command) -> Written {
        let mut hint: Option<u64> = None;
        for _ in 0..6 {
            let running = self.running();
            if running.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let node = hint.filter(|h| running.contains(h)).unwrap_or_else(|| *with_rng(|r| r.pick(&running)));
            let Some((_, raft)) = self.raft(node) else { continue };
            let proposal = Proposal {
                request_id: id,
                actor: actor.into(),
                time: Timestamp(self.wall_ms(node)),
                command: command.clone(),
            };
            let answer =
                tokio::time::timeout(Duration::from_millis(1500), raft.client_write(Proposals(vec![proposal])));
            match answer.await {
                Ok(Ok(resp)) => {
                    if let Some(r) = resp.data.results.into_iter().next() {
                        return Written::Answer(r);
                    }
                }
                Ok(Err(e)) => {
                    hint = e.forward_to_leader().and_then(|f| f.leader_id);
                }
                Err(_) => hint = None,
            }
            tokio::time::sleep(with_rng(|r| r.millis(5, 60))).await;
        }
        Written::Unknown
    }

    /// Reads guest `g` linearizably from some node; `None` if no node could.
    async fn read(&self, g: &Name) -> Option<crate::check::Value> {
        let running = self.running();
        if running.is_empty() {
            return None;
        }
        let node = *with_rng(|r| r.pick(&running));
        let (epoch, raft) = self.raft(node)?;
        let ok = tokio::time::timeout(Duration::from_millis(1000), raft.ensure_linearizable()).await;
        if !matches!(ok, Ok(Ok(_))) {
            return None;
        }
        // The same incarnation, with no wait in between: its state is at least the read point.
        if self.raft(node).map(|r| r.0) != Some(epoch) {
            return None;
        }
        let disk = self.disks[&node].locked();
        let value = disk.live().sm.cluster.guest(g).map(|x| (x.version, x.spec.memory_mib));
        Some(value)
    }

    /// The cluster's identity, hosts and the migrating guests.
    async fn bootstrap(&self) {
        let host = |h: &str| {
            Command::RegisterHost(HostSpec {
                name: name(h),
                address: format!("{h}.sim"),
                capacity: Resources { vcpus: 1024, memory_mib: 1 << 30 },
                profile: CompatProfile { hardware_family: "x86_64-v3".into(), hypervisor_version: "qemu-8.2".into() },
                labels: Default::default(),
            })
        };
        let mut commands = vec![Command::CreateCluster {
            cluster: ClusterId("5e1f0000-0000-0000-0000-000000000001".into()),
            restored_from: None,
        }];
        commands.extend(HOSTS.iter().map(|h| host(h)));
        // Each guest in a package of its own, one per host in turn.
        for (i, g) in MOVERS.iter().enumerate().chain(hypervisor::HA.iter().enumerate()) {
            commands.push(Command::CreateGuest {
                name: name(g),
                spec: GuestSpec {
                    vcpus: 1,
                    memory_mib: 64,
                    disks: vec![],
                    networks: vec![],
                    online_migration: true,
                    cluster_node: false,
                    package: Some(name(&format!("pkg-{g}"))),
                    anti_affinity: None,
                },
                owner: name(HOSTS[i]),
                run_state: RunState::Running,
            });
        }
        for c in commands {
            let id = self.request_id();
            loop {
                if let Written::Answer(r) = self.write("operator", id, c.clone()).await {
                    r.unwrap_or_else(|e| panic!("bootstrap command {} refused: {e}", c.kind()));
                    break;
                }
            }
        }
    }

    /// A client: reads and writes the register guests until `until`.
    async fn client(&self, client: u64, until: Duration) {
        let actor = format!("client-{client}");
        let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
        while sim_elapsed() < until {
            tokio::time::sleep(with_rng(|r| r.millis(5, 80))).await;
            let key = with_rng(|r| r.below(REGISTERS as u64)) as u32;
            let g = name(&format!("g{key}"));
            let value = with_rng(|r| r.below(1 << 20));
            let expect = seen.get(&key).copied();
            let call = match with_rng(|r| r.below(100)) {
                0..=34 => Call::Read,
                35..=49 => Call::Create { value },
                50..=79 => Call::Modify { value, expect },
                80..=89 => Call::Modify { value, expect: None },
                _ => Call::Remove { expect: if with_rng(|r| r.chance(500)) { expect } else { None } },
            };
            let invoke = now_ns();
            let outcome = if call == Call::Read {
                let Some(v) = self.read(&g).await else { continue };
                if let Some((ver, _)) = v {
                    seen.insert(key, ver);
                }
                Some(Outcome::Read(v))
            } else {
                let command = match &call {
                    Call::Create { value } => Command::CreateGuest {
                        name: g.clone(),
                        spec: GuestSpec {
                            vcpus: 1,
                            memory_mib: *value,
                            disks: vec![],
                            networks: vec![],
                            online_migration: true,
                            cluster_node: false,
                            package: None,
                            anti_affinity: None,
                        },
                        owner: name(HOSTS[key as usize % HOSTS.len()]),
                        run_state: RunState::Stopped,
                    },
                    Call::Modify { value, expect } => Command::ModifyGuest {
                        name: g.clone(),
                        patch: GuestPatch { memory_mib: Some(*value), ..GuestPatch::default() },
                        expect_version: *expect,
                    },
                    Call::Remove { expect } => Command::RemoveGuest { name: g.clone(), expect_version: *expect },
                    Call::Read => unreachable!(),
                };
                let id = self.request_id();
                match self.write(&actor, id, command).await {
                    Written::Answer(Ok(a)) => {
                        self.rec.locked().acked.push((actor.clone(), id, a.revisions.last));
                        let o = match call {
                            Call::Remove { .. } => Outcome::Removed,
                            _ => Outcome::Wrote { version: a.revisions.last },
                        };
                        if let Outcome::Wrote { version } = o {
                            seen.insert(key, version);
                        }
                        Some(o)
                    }
                    // The register's host was failed or unreachable: refused, nothing changed,
                    // nothing learned of the register.
                    Written::Answer(Err(Rejection::HostNotActive { .. })) => None,
                    Written::Answer(Err(Rejection::GuestExists { .. })) => Some(Outcome::Exists),
                    Written::Answer(Err(Rejection::UnknownGuest { .. })) => Some(Outcome::Missing),
                    Written::Answer(Err(Rejection::VersionConflict { actual, .. })) => {
                        seen.insert(key, actual);
                        Some(Outcome::Conflict)
                    }
                    Written::Answer(Err(e)) => {
                        self.rec.locked().violation(format!("{actor}: unexpected refusal of {call:?}: {e}"));
                        None
                    }
                    Written::Unknown => {
                        self.note(format!("{actor} request {} unanswered", id.0));
                        self.rec.locked().pending.push((actor.clone(), id, key, call.clone(), invoke));
                        None
                    }
                }
            };
            if let Some(outcome) = outcome {
                let op = Op { client, key, call, invoke, done: Some(now_ns()), outcome };
                self.note(format!("{actor} g{} {:?} -> {:?}", op.key, op.call, op.outcome));
                self.rec.locked().ops.push(op);
            }
        }
    }

    /// A subscriber: follows the event history from node to node.
    async fn subscriber(&self, sub: u64, until: Duration) {
        let mut cursor = 0u64;
        let mut bookmark = 0u64;
        while sim_elapsed() < until {
            tokio::time::sleep(with_rng(|r| r.millis(10, 150))).await;
            // Now and then a new subscription resumes from a saved bookmark.
            if with_rng(|r| r.chance(50)) {
                cursor = bookmark;
            }
            let running = self.running();
            if running.is_empty() {
                continue;
            }
            let node = *with_rng(|r| r.pick(&running));
            let events: Vec<_> = {
                let disk = self.disks[&node].locked();
                let h = &disk.live().sm.history;
                let from = h.partition_point(|e| e.revision <= cursor);
                h[from..]
                    .iter()
                    .map(|e| (e.revision, (e.actor.clone(), e.request_id.0), switchyard_protocol::codec::encode(e)))
                    .collect()
            };
            if let Some(last) = events.last() {
                let d = Delivery { subscriber: sub, node, after: cursor, events: events.clone() };
                cursor = last.0;
                self.rec.locked().deliveries.push(d);
                if with_rng(|r| r.chance(200)) {
                    bookmark = cursor;
                }
            }
        }
    }

    /// Requests migrations of the movers and drives them through their phases, as the leader's
    /// driver does (without agents: every phase is taken as done), failing or aborting some.
    async fn migrations(&self, until: Duration) {
        while sim_elapsed() < until {
            tokio::time::sleep(with_rng(|r| r.millis(30, 150))).await;
            let Some(leader) = self.leader() else { continue };
            let (in_flight, owners) = {
                let disk = self.disks[&leader].locked();
                let c = &disk.live().sm.cluster;
                let m: Vec<_> = c.in_flight_migrations().map(|m| (m.id, m.phase, m.has_package())).collect();
                let o: Vec<_> = MOVERS
                    .iter()
                    .filter_map(|g| c.guest(&name(g)).map(|x| (x.name.clone(), x.owner.clone())))
                    .collect();
                (m, o)
            };
            let command = if let Some(&(id, phase, pkg)) = in_flight.first() {
                match with_rng(|r| r.below(100)) {
                    0..=4 if phase.can_roll_back() => {
                        Command::FailMigration { id, error: "simulated agent error".into() }
                    }
                    5..=7 if phase.can_roll_back() => Command::AbortMigration { id, reason: None },
                    _ => {
                        let to = phase.next(pkg).expect("an in-flight migration has a next phase");
                        let freeze = (to == Phase::TargetRunning).then(|| with_rng(|r| r.below(200)));
                        Command::AdvanceMigration { id, from: phase, to, freeze_time_ms: freeze }
                    }
                }
            } else if let Some((guest, owner)) = owners.get(with_rng(|r| r.below(owners.len().max(1) as u64)) as usize)
            {
                let targets: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != owner.as_str()).collect();
                let target = name(with_rng(|r| r.pick(&targets)));
                Command::RequestMigration {
                    guest: guest.clone(),
                    source: owner.clone(),
                    target,
                    kind: MigrationKind::Online,
                    reason: None,
                }
            } else {
                continue;
            };
            let kind = command.kind();
            let id = self.request_id();
            let answer = match self.write("driver", id, command).await {
                Written::Answer(Ok(_)) => "ok".to_string(),
                Written::Answer(Err(e)) => format!("refused: {}", e.code()),
                Written::Unknown => "unanswered".into(),
            };
            self.note(format!("driver {kind} -> {answer}"));
        }
    }
}

/// The faults a run draws from, with their weights.
const FAULTS: [(&str, u64); 18] = [
    ("crash_short", 10),
    ("crash_long", 6),
    ("power_loss_one", 8),
    ("power_loss_all", 2),
    ("partition_symmetric", 7),
    ("partition_one_way", 7),
    ("isolate_leader", 6),
    ("message_loss", 6),
    ("duplication", 5),
    ("delay_spike", 5),
    ("clock_skew", 4),
    ("clock_leap", 4),
    ("wall_clock_jump", 3),
    ("snapshot", 6),
    ("membership_change", 6),
    ("host_crash", 4),
    ("host_cut", 4),
    ("host_hang", 4),
];

impl World {
    /// Injects faults until `until`; each fault lasts a drawn time, then is undone.
    async fn faults(self: &Arc<Self>, until: Duration) {
        let total: u64 = FAULTS.iter().map(|f| f.1).sum();
        while sim_elapsed() < until {
            tokio::time::sleep(with_rng(|r| r.millis(100, 600))).await;
            let mut pick = with_rng(|r| r.below(total));
            let kind = FAULTS.iter().find(|f| {
                if pick < f.1 {
                    true
                } else {
                    pick -= f.1;
                    false
                }
            });
            let kind = kind.expect("a weight is drawn").0;
            let running = self.running();
            let any = |r: &[u64]| r.get(with_rng(|g| g.below(r.len().max(1) as u64)) as usize).copied();
            let window = with_rng(|r| r.millis(200, 2000));
            match kind {
                "crash_short" | "crash_long" | "power_loss_one" => {
                    let Some(id) = any(&running) else { continue };
                    let Some(detail) = self.kill(id, kind == "power_loss_one") else { continue };
                    let down = if kind == "crash_long" {
                        with_rng(|r| r.millis(1000, 3000))
                    } else {
                        with_rng(|r| r.millis(20, 400))
                    };
                    self.fault(kind, format!("{detail} for {} ms", down.as_millis()));
                    self.restart_later(id, down);
                }
                "power_loss_all" => {
                    let lost: Vec<String> = running.iter().filter_map(|&id| self.kill(id, true)).collect();
                    let down = with_rng(|r| r.millis(20, 300));
                    self.fault(kind, format!("{} for {} ms", lost.join(", "), down.as_millis()));
                    for id in running {
                        self.restart_later(id, down);
                    }
                }
                "partition_symmetric" | "partition_one_way" | "isolate_leader" => {
                    let target = if kind == "isolate_leader" { self.leader() } else { any(&[1, 2, 3, 4, 5]) };
                    let Some(a) = target else { continue };
                    let cut: Vec<(u64, u64)> = match kind {
                        "partition_one_way" => {
                            let others: Vec<u64> = (1..=5).filter(|&b| b != a).collect();
                            let b = *with_rng(|r| r.pick(&others));
                            vec![(a, b)]
                        }
                        _ => (1..=5).filter(|&b| b != a).flat_map(|b| [(a, b), (b, a)]).collect(),
                    };
                    self.fault(kind, format!("{cut:?} for {} ms", window.as_millis()));
                    {
                        let mut b = self.board.locked();
                        for c in &cut {
                            *b.weather.cut.entry(*c).or_default() += 1;
                        }
                    }
                    let w = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(window).await;
                        let mut b = w.board.locked();
                        for c in cut {
                            if let Some(n) = b.weather.cut.get_mut(&c) {
                                *n -= 1;
                                if *n == 0 {
                                    b.weather.cut.remove(&c);
                                }
                            }
                        }
                    });
                }
                "message_loss" | "duplication" | "delay_spike" => {
                    let level = with_rng(|r| 50 + r.below(250));
                    let generation = {
                        let mut b = self.board.locked();
                        let generation = {
                            let g = b.weather.set.entry(kind).or_default();
                            *g += 1;
                            *g
                        };
                        match kind {
                            "message_loss" => b.weather.loss = level,
                            "duplication" => b.weather.duplicate = level,
                            _ => {
                                b.weather.spike_chance = level;
                                b.weather.spike = with_rng(|r| r.millis(20, 400));
                            }
                        }
                        generation
                    };
                    self.fault(kind, format!("{level}‰ for {} ms", window.as_millis()));
                    let w = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(window).await;
                        let mut b = w.board.locked();
                        if b.weather.set.get(kind) != Some(&generation) {
                            return; // a later window of this kind set it again
                        }
                        match kind {
                            "message_loss" => b.weather.loss = 0,
                            "duplication" => b.weather.duplicate = 0,
                            _ => b.weather.spike_chance = 0,
                        }
                    });
                }
                "clock_skew" => {
                    // A coordinator's clock or a VM host's (clocks 101–103): within the rates
                    // the leases' margins allow (the timing argument, ARCHITECTURE.md).
                    let (k, rate) = with_rng(|r| (r.below(5 + HOSTS.len() as u64), 800 + r.below(401)));
                    let (id, who) = match k {
                        0..=4 => (1 + k, format!("n{}", 1 + k)),
                        _ => (hosts::clock(k as usize - 5), HOSTS[k as usize - 5].to_string()),
                    };
                    set_rate(id, rate);
                    self.fault(kind, format!("{who} runs at {rate}‰"));
                }
                "clock_leap" => {
                    let (id, by) = with_rng(|r| (1 + r.below(5), r.millis(100, 1500)));
                    leap(id, by);
                    self.hosts.locked().leaped.insert(id, sim_elapsed());
                    self.fault(kind, format!("n{id} leaps {} ms", by.as_millis()));
                }
                "wall_clock_jump" => {
                    let (id, by) = with_rng(|r| (1 + r.below(5), r.below(7_200_000) as i64 - 3_600_000));
                    *self.wall.locked().entry(id).or_default() += by;
                    self.fault(kind, format!("n{id} wall clock {by:+} ms"));
                }
                "snapshot" => {
                    // The log is purged after it by the policy, as on a coordinator (which never
                    // purges by hand: openraft 0.9.25 trips a debug assertion when a hand-made
                    // purge reaches past the policy's point and a snapshot follows).
                    let Some(id) = any(&running) else { continue };
                    let Some((_, raft)) = self.raft(id) else { continue };
                    let _ = raft.trigger().snapshot().await;
                    self.fault(kind, format!("n{id}"));
                }
                "host_crash" | "host_cut" | "host_hang" => {
                    let i = with_rng(|r| r.below(HOSTS.len() as u64)) as usize;
                    // A hang ends with the agent resuming, or killed and started again.
                    let restarts = with_rng(|r| r.chance(500));
                    let agent = {
                        let mut hs = self.hosts.locked();
                        match kind {
                            "host_crash" | "host_hang" if !hs.hosts[i].up => continue,
                            "host_crash" => hs.crash(i),
                            "host_hang" => hs.hosts[i].machine.hung += 1,
                            _ => hs.hosts[i].cut += 1,
                        }
                        hs.hosts[i].machine.agent
                    };
                    let how = if kind == "host_hang" && restarts { ", then the agent restarts" } else { "" };
                    self.fault(kind, format!("{} for {} ms{how}", HOSTS[i], window.as_millis()));
                    let w = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(window).await;
                        let mut hs = w.hosts.locked();
                        match kind {
                            "host_crash" => hs.restart(i),
                            // Unless the watchdog reset the host meanwhile.
                            "host_hang" if hs.hosts[i].machine.agent == agent => {
                                hs.hosts[i].machine.hung -= 1;
                                if restarts {
                                    hs.restart_agent(i);
                                }
                            }
                            "host_hang" => {}
                            _ => hs.hosts[i].cut -= 1,
                        }
                    });
                }
                "membership_change" => {
                    let w = self.clone();
                    self.fault(kind, String::new());
                    tokio::spawn(async move { w.change_membership().await });
                }
                _ => unreachable!("every fault is handled"),
            }
        }
    }

    /// Moves the voters between {1,2,3} and {1,2,3,4,5}, through the leader.
    async fn change_membership(&self) {
        let Some(leader) = self.leader() else { return };
        let Some((_, raft)) = self.raft(leader) else { return };
        let voters: BTreeSet<u64> = {
            let m = raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        let grow = voters.len() == 3;
        let outcome = if grow {
            let mut r = Ok(());
            for id in [4, 5] {
                if let Err(e) = raft.add_learner(id, node_info(id), false).await {
                    r = Err(e.to_string());
                }
            }
            match r {
                Ok(()) => raft
                    .change_membership(ChangeMembers::AddVoterIds([4, 5].into()), false)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        } else {
            raft.change_membership(BTreeSet::from([1, 2, 3]), false).await.map(|_| ()).map_err(|e| e.to_string())
        };
        let to = if grow { "5 voters" } else { "3 voters" };
        self.note(format!("membership to {to} via n{leader}: {}", outcome.map_or_else(|e| e, |_| "done".into())));
    }

    /// Undoes every fault: clocks at their rate, the network whole, every node up.
    async fn heal(self: &Arc<Self>) {
        self.healing.store(true, std::sync::atomic::Ordering::SeqCst);
        for id in 1..=5 {
            set_rate(id, 1000);
        }
        self.board.locked().weather = Default::default();
        for id in 1..=5 {
            self.start(id).await;
        }
        self.note("healed".into());
    }

    /// Waits until a leader has committed its whole log and every voter applied it.
    async fn settle(&self) -> Result<(u64, u64), String> {
        let deadline = sim_elapsed() + Duration::from_secs(30);
        while sim_elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Some(leader) = self.leader() else { continue };
            let Some((_, raft)) = self.raft(leader) else { continue };
            let m = raft.metrics().borrow().clone();
            let Some(last) = m.last_log_index else { continue };
            if m.last_applied.map(|l| l.index) != Some(last) {
                continue;
            }
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            let all = voters.iter().all(|v| {
                self.raft(*v).is_some_and(|(_, r)| r.metrics().borrow().last_applied.map(|l| l.index) == Some(last))
            });
            if all {
                return Ok((leader, last));
            }
        }
        let status: Vec<String> = (1..=5)
            .filter_map(|id| self.raft(id).map(|(_, r)| (id, r.metrics().borrow().clone())))
            .map(|(id, m)| {
                format!(
                    "n{id} {:?} term {} last {:?} applied {:?}",
                    m.state,
                    m.current_term,
                    m.last_log_index,
                    m.last_applied.map(|l| l.index)
                )
            })
            .collect();
        Err(format!("no agreement 30 s after healing: {}", status.join("; ")))
    }

    /// The whole run: start, bootstrap, workload under faults, heal, settle, check.
    pub(crate) async fn run(self: &Arc<Self>) {
        for id in 1..=5 {
            self.start(id).await;
        }
        let (_, first) = self.raft(1).expect("node 1 runs");
        let members: BTreeMap<u64, NodeInfo> = (1..=3).map(|id| (id, node_info(id))).collect();
        first.initialize(members).await.expect("a fresh node initializes");
        self.bootstrap().await;
        self.note("bootstrapped".into());
        let until = sim_elapsed() + self.opts.duration;
        let mut tasks = tokio::task::JoinSet::new();
        for c in 1..=3 {
            let w = self.clone();
            tasks.spawn(async move { w.client(c, until).await });
        }
        for s in 1..=2 {
            let w = self.clone();
            tasks.spawn(async move { w.subscriber(s, until).await });
        }
        let w = self.clone();
        tasks.spawn(async move { w.migrations(until).await });
        for i in 0..HOSTS.len() {
            let w = self.clone();
            tasks.spawn(async move { w.host(i, until).await });
            let w = self.clone();
            tasks.spawn(async move { w.agent(i, until).await });
            let w = self.clone();
            tasks.spawn(async move { w.fence(i, until).await });
        }
        let w = self.clone();
        tasks.spawn(async move { w.detect_failures(until).await });
        let w = self.clone();
        tasks.spawn(async move { w.faults(until).await });
        while tasks.join_next().await.is_some() {}
        self.heal().await;
        match self.settle().await {
            Ok((leader, last)) => {
                self.settled.store(leader, std::sync::atomic::Ordering::SeqCst);
                self.note(format!("settled at log index {last} under n{leader}"));
            }
            Err(e) => self.rec.locked().violation(e),
        }
    }

    /// The final history, as the leader the run settled under holds it (every voter applied
    /// the same log; if the run did not settle, node 1's, and the run has failed already).
    pub(crate) fn final_history(&self) -> Vec<switchyard_protocol::Event> {
        let holder = match self.settled.load(std::sync::atomic::Ordering::SeqCst) {
            0 => 1,
            leader => leader,
        };
        let history = self.disks[&holder].locked().live().sm.history.clone();
        history
    }
}
