//! What the fuzz targets share: the coordinators' Raft types (the same data, node and id types as
//! `switchyard_storage::TypeConfig`, so every message decodes exactly as on the wire; only the
//! snapshot handle and the runtime, which no message carries, differ) and a small cluster state
//! to apply decoded commands to.

use std::io::Cursor;

use switchyard_protocol::entry::{NodeInfo, Proposals, Response};
use switchyard_protocol::model::{ClusterId, CompatProfile, GuestSpec, HostSpec, Resources, RunState, Timestamp};
use switchyard_protocol::{ClusterState, Command, Name, Proposal, RequestId};

openraft::declare_raft_types!(
    pub FuzzConfig:
        D = Proposals,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<FuzzConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Applies `command` as an operator would propose it.
pub fn apply(state: &mut ClusterState, command: Command) {
    let p = Proposal { request_id: RequestId(7), actor: "fuzz".into(), time: Timestamp(1), command };
    let _ = switchyard_protocol::apply(state, &p, 1);
}

/// A cluster with two hosts and a guest with a package, for decoded commands to act on.
pub fn sample_state() -> ClusterState {
    let name = |s: &str| Name::new(s).unwrap();
    let mut st = ClusterState::default();
    apply(
        &mut st,
        Command::CreateCluster {
            cluster: ClusterId("5e1f0000-0000-0000-0000-00000000f022".into()),
            restored_from: None,
        },
    );
    for h in ["h1", "h2"] {
        apply(
            &mut st,
            Command::RegisterHost(HostSpec {
                name: name(h),
                address: format!("{h}.example"),
                capacity: Resources { vcpus: 64, memory_mib: 65536 },
                profile: CompatProfile { hardware_family: "x86_64-v3".into(), hypervisor_version: "qemu-8.2".into() },
                labels: Default::default(),
            }),
        );
    }
    apply(
        &mut st,
        Command::CreateGuest {
            name: name("g1"),
            spec: GuestSpec {
                vcpus: 2,
                memory_mib: 1024,
                disks: vec![],
                networks: vec![],
                online_migration: true,
                cluster_node: false,
                package: Some(name("p1")),
                anti_affinity: None,
            },
            owner: name("h1"),
            run_state: RunState::Running,
        },
    );
    st
}
