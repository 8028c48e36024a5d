//! A small workload for the storage tests: hosts, packaged guests, and migrations driven through
//! their phases, as log entries.
#![allow(dead_code)]

use openraft::{CommittedLeaderId, EntryPayload};
use switchyard_protocol::*;
use switchyard_storage::{Entry, LogId, Proposals};

pub fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn host(name: &str) -> Command {
    Command::RegisterHost(HostSpec {
        name: n(name),
        address: format!("{name}:7100"),
        capacity: Resources { vcpus: 1024, memory_mib: 1 << 24 },
        profile: CompatProfile { hardware_family: "ia64".into(), hypervisor_version: "hpvm-6.1".into() },
        labels: Default::default(),
    })
}

/// Commands that create `guests` packaged guests and move each from h1 to h2 to completion.
pub fn workload(guests: usize) -> Vec<Command> {
    let mut cmds = vec![host("h1"), host("h2")];
    for g in 0..guests {
        cmds.push(Command::CreateGuest {
            name: n(&format!("g{g}")),
            spec: GuestSpec {
                vcpus: 2,
                memory_mib: 1024,
                disks: vec!["avio_stor:/dev/vg/lv".into()],
                networks: vec![],
                online_migration: true,
                cluster_node: false,
                package: Some(n(&format!("p{g}"))),
                anti_affinity: None,
            },
            owner: n("h1"),
            run_state: RunState::Running,
        });
    }
    cmds
}

/// Turns commands into log entries (term 1) starting at `first_index`; ids and times derive
/// from the index.
pub fn entries(first_index: u64, cmds: Vec<Command>) -> Vec<Entry> {
    cmds.into_iter()
        .enumerate()
        .map(|(i, command)| {
            let index = first_index + i as u64;
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Proposals(vec![Proposal {
                    request_id: RequestId(index as u128),
                    actor: "storage-test".into(),
                    time: Timestamp(index * 1000),
                    command,
                }])),
            }
        })
        .collect()
}

/// The commands that migrate guest `g` (packaged, on h1) to h2 through every phase, given the
/// revision its request will get.
pub fn full_migration(g: &str, request_revision: u64) -> Vec<Command> {
    let id = MigrationId(request_revision);
    let mut cmds = vec![Command::RequestMigration {
        guest: n(g),
        source: n("h1"),
        target: n("h2"),
        kind: MigrationKind::Online,
        reason: None,
    }];
    let mut phase = Phase::Requested;
    while let Some(next) = phase.next(true) {
        let freeze = (next == Phase::TargetRunning).then_some(80);
        cmds.push(Command::AdvanceMigration { id, from: phase, to: next, freeze_time_ms: freeze });
        phase = next;
    }
    cmds
}

/// Applies entries to a pure state, the reference for what storage must hold.
pub fn reference(entries: &[Entry]) -> (ClusterState, Vec<Event>) {
    let mut s = ClusterState::default();
    let mut evs = Vec::new();
    for e in entries {
        if let EntryPayload::Normal(ps) = &e.payload {
            for p in &ps.0 {
                if let Ok((_, es)) = apply(&mut s, p, e.log_id.leader_id.term) {
                    evs.extend(es);
                }
            }
        }
    }
    (s, evs)
}

/// Opens a data directory's RocksDB directly, bypassing the store (to tamper with it).
pub fn raw_db(path: &std::path::Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, path.join("db")).unwrap();
    rocksdb::DB::open_cf(&opts, path.join("db"), cfs).unwrap()
}

/// Hands a snapshot to another state machine the way openraft does: receive into the
/// follower's own file, then install.
pub async fn transfer(
    snap: openraft::storage::Snapshot<switchyard_storage::TypeConfig>,
    follower: &mut switchyard_storage::StateMachineStore,
) {
    use openraft::storage::RaftStateMachine;
    let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut *src, &mut *incoming).await.unwrap();
    follower.install_snapshot(&snap.meta, incoming).await.unwrap();
}

/// A data directory of node 1 at `path` with six guests' workload appended and applied and a
/// snapshot built; answers the snapshot file.
pub async fn with_snapshot(path: &std::path::Path) -> std::path::PathBuf {
    use openraft::storage::{RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
    let (mut log, mut sm) = switchyard_storage::open(path, 1).unwrap();
    let all = entries(1, workload(6));
    log.blocking_append(all.clone()).await.unwrap();
    sm.apply(all).await.unwrap();
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    drop((log, sm));
    std::fs::read_dir(path.join("snapshots")).unwrap().next().unwrap().unwrap().path()
}

/// A small deterministic generator for the randomized tests.
pub struct Lcg(pub u64);

impl Lcg {
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// The seed of a randomized test: `SWITCHYARD_SEED`, or the clock; printed, so a failure can be
/// replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SWITCHYARD_SEED").ok().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("{test}: SWITCHYARD_SEED={seed}");
    seed
}
