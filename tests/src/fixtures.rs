//! Deterministic workloads: the same index always yields the same log entry, so a test can
//! compute what a crashed process must have stored without talking to it.

use openraft::{CommittedLeaderId, EntryPayload};
use switchyard_protocol::*;
use switchyard_storage::{Entry, LogId};

/// The proposal carried by log entry `index` of the crash workload: one host, then guests being
/// created, modified and migrated (some of which are rejected, deterministically).
pub fn workload_proposal(index: u64) -> Proposal {
    let name = |s: String| Name::new(s).expect("fixture names are valid");
    let command = match index {
        1 => Command::RegisterHost(host("h1")),
        2 => Command::RegisterHost(host("h2")),
        i if i % 5 == 0 => Command::ModifyGuest {
            name: name(format!("g{}", i - 1)),
            patch: GuestPatch { vcpus: Some((i % 7 + 1) as u32), ..Default::default() },
            expect_version: None,
        },
        i if i % 5 == 3 => Command::RequestMigration {
            guest: name(format!("g{}", i - 2)),
            source: name("h1".into()),
            target: name("h2".into()),
            kind: MigrationKind::Online,
            reason: Some(format!("entry {i}")),
        },
        i => Command::CreateGuest {
            name: name(format!("g{i}")),
            spec: GuestSpec {
                vcpus: 1,
                memory_mib: 256,
                disks: vec![format!("avio_stor:/dev/vg/lv{i}")],
                networks: vec!["avio_lan:vsw0".into()],
                online_migration: true,
                cluster_node: false,
                package: (i % 2 == 0).then(|| name(format!("pkg{i}"))),
                anti_affinity: None,
            },
            owner: name("h1".into()),
            run_state: RunState::Running,
        },
    };
    Proposal {
        request_id: RequestId(index as u128),
        actor: "crash-test".into(),
        time: Timestamp(1_000 * index),
        command,
    }
}

fn host(n: &str) -> HostSpec {
    HostSpec {
        name: Name::new(n).expect("valid"),
        address: format!("{n}:7100"),
        capacity: Resources { vcpus: 1 << 16, memory_mib: 1 << 30 },
        profile: CompatProfile { hardware_family: "ia64".into(), hypervisor_version: "hpvm-6.1".into() },
        labels: Default::default(),
    }
}

/// Log entry `index` of the crash workload (term 1, leader 1).
pub fn workload_entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(switchyard_storage::Proposals(vec![workload_proposal(index)])),
    }
}
