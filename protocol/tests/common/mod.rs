//! Fixture for the table-style state-machine tests: a small world and helpers that assert the
//! two halves of the contract — accepted commands keep the invariants, rejected ones change
//! nothing (byte for byte).
#![allow(dead_code)]

use switchyard_protocol::codec;
use switchyard_protocol::*;

pub fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

pub fn host_spec(name: &str, vcpus: u32, memory_mib: u64, family: &str) -> HostSpec {
    HostSpec {
        name: n(name),
        address: format!("{name}.example:7100"),
        capacity: Resources { vcpus, memory_mib },
        profile: CompatProfile { hardware_family: family.into(), hypervisor_version: "hpvm-6.1".into() },
        labels: Default::default(),
    }
}

pub fn guest_spec(vcpus: u32, memory_mib: u64, package: Option<&str>) -> GuestSpec {
    GuestSpec {
        vcpus,
        memory_mib,
        disks: vec!["avio_stor:/dev/vg01/lvol1".into()],
        networks: vec!["avio_lan:vswitch0".into()],
        online_migration: true,
        cluster_node: false,
        package: package.map(n),
        anti_affinity: None,
    }
}

pub struct World {
    pub state: ClusterState,
    next_request: u128,
    pub time: u64,
}

impl World {
    pub fn empty() -> World {
        World { state: ClusterState::default(), next_request: 1, time: 1_700_000_000_000 }
    }

    /// Hosts h1, h2 (same profile, 16 vCPU / 64 GiB), h3 (other hardware family), small (2 vCPU /
    /// 4 GiB); guest g1 on h1 in package p1, running; guest g2 on h1 without a package.
    pub fn standard() -> World {
        let mut w = World::empty();
        w.ok(Command::RegisterHost(host_spec("h1", 16, 65536, "ia64")));
        w.ok(Command::RegisterHost(host_spec("h2", 16, 65536, "ia64")));
        w.ok(Command::RegisterHost(host_spec("h3", 16, 65536, "x86_64")));
        w.ok(Command::RegisterHost(host_spec("small", 2, 4096, "ia64")));
        w.ok(Command::CreateGuest {
            name: n("g1"),
            spec: guest_spec(4, 8192, Some("p1")),
            owner: n("h1"),
            run_state: RunState::Running,
        });
        w.ok(Command::CreateGuest {
            name: n("g2"),
            spec: guest_spec(2, 4096, None),
            owner: n("h1"),
            run_state: RunState::Running,
        });
        w
    }

    pub fn proposal(&mut self, command: Command) -> Proposal {
        let p = Proposal {
            request_id: RequestId(self.next_request),
            actor: "tester".into(),
            time: Timestamp(self.time),
            command,
        };
        self.next_request += 1;
        self.time += 1000;
        p
    }

    /// Applies a command that must be accepted; checks the invariants afterwards.
    pub fn ok(&mut self, command: Command) -> (Applied, Vec<Event>) {
        let p = self.proposal(command);
        let out = apply(&mut self.state, &p, 1).unwrap_or_else(|r| panic!("{:?} was rejected: {r}", p.command));
        let bad = self.state.check_invariants();
        assert!(bad.is_empty(), "invariants broken after {:?}: {bad:?}", p.command);
        out
    }

    /// Applies a command that must be rejected; asserts the state did not change at all.
    pub fn reject(&mut self, command: Command) -> Rejection {
        let before = codec::encode(&self.state);
        let p = self.proposal(command);
        let r = match apply(&mut self.state, &p, 1) {
            Ok(_) => panic!("{:?} was accepted", p.command),
            Err(r) => r,
        };
        assert_eq!(codec::encode(&self.state), before, "a rejected command changed the state");
        r
    }

    pub fn guest(&self, name: &str) -> &Guest {
        self.state.guest(&n(name)).expect("guest exists")
    }

    pub fn package(&self, name: &str) -> &Package {
        self.state.package(&n(name)).expect("package exists")
    }

    pub fn migrate(&mut self, guest: &str, to: &str, kind: MigrationKind) -> MigrationId {
        let source = self.guest(guest).owner.clone();
        let (applied, _) =
            self.ok(Command::RequestMigration { guest: n(guest), source, target: n(to), kind, reason: None });
        MigrationId(applied.revisions.first)
    }

    pub fn advance(&mut self, id: MigrationId) -> Phase {
        let m = self.state.migration(id).unwrap().clone();
        let to = m.phase.next(m.has_package()).expect("not terminal");
        let freeze = (to == Phase::TargetRunning).then_some(120);
        self.ok(Command::AdvanceMigration { id, from: m.phase, to, freeze_time_ms: freeze });
        to
    }

    pub fn advance_to(&mut self, id: MigrationId, phase: Phase) {
        while self.state.migration(id).unwrap().phase != phase {
            self.advance(id);
        }
    }
}
