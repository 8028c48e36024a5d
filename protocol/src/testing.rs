//! Values the unit tests of this crate share.

use crate::model::{Guest, GuestSpec, RunState};
use crate::name::Name;

/// A running guest `name` on host `h1` with `vcpus` vCPUs, 512 MiB and no disks, networks or
/// package.
pub(crate) fn guest(name: &str, vcpus: u32) -> Guest {
    Guest {
        name: Name::new(name).unwrap(),
        spec: GuestSpec {
            vcpus,
            memory_mib: 512,
            disks: vec![],
            networks: vec![],
            online_migration: true,
            cluster_node: false,
            package: None,
            anti_affinity: None,
        },
        owner: Name::new("h1").unwrap(),
        run_state: RunState::Running,
        version: 1,
    }
}
