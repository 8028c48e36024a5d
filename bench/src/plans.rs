//! What one pass of the leader's failover plan (`ha::plan_failovers`) costs at scale: the
//! failover driver runs it as revisions come (at most every `leader::PASS_SPACING`), so its
//! cost is paid again and again while a cluster takes writes with a host down. Measured in a
//! state of `--scale-hosts` hosts and `--scale-guests` unpackaged guests spread evenly, one host
//! failed, folded in process with `apply` as a coordinator's would be; no cluster runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchyard_protocol::{
    apply, ha, ClusterState, Command, CompatProfile, GuestSpec, HostSpec, Name, Proposal, RequestId, Resources,
    RunState, Timestamp,
};

use crate::{Args, Report};

/// Passes timed per plan.
const PASSES: u32 = 200;

pub fn plans(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (hosts, guests) = (args.scale_hosts.max(1), args.scale_guests);
    let started = Instant::now();
    let st = failed_host_state(hosts, guests)?;
    eprintln!("  a state of {hosts} hosts and {guests} guests, one host failed, folded in {:?}", started.elapsed());
    let shape = format!("{guests} guests on {hosts} hosts, one failed");
    let mut seen = HashMap::new();
    let failover = time_pass(|| ha::plan_failovers(&st, &mut seen, Instant::now(), Duration::from_secs(5)).len());
    report.add(format!("leader plans: failover pass, {shape}"), "µs", false, "switchyard", micros(failover));
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The mean time of [`PASSES`] calls of `pass`.
fn time_pass(mut pass: impl FnMut() -> usize) -> Duration {
    let started = Instant::now();
    let mut answered = 0;
    for _ in 0..PASSES {
        answered += std::hint::black_box(pass());
    }
    std::hint::black_box(answered);
    started.elapsed() / PASSES
}

/// `hosts` hosts and `guests` running guests without a package (guest `i` on host `i % hosts`);
/// the first host joined failure detection and failed.
fn failed_host_state(hosts: usize, guests: usize) -> anyhow::Result<ClusterState> {
    let mut st = ClusterState::default();
    let mut request = 0u128;
    let mut apply_ok = |st: &mut ClusterState, command: Command| -> anyhow::Result<()> {
        request += 1;
        let p = Proposal {
            request_id: RequestId(request),
            actor: "bench".into(),
            time: Timestamp(1_700_000_000_000 + request as u64),
            command,
        };
        apply(st, &p, 1).map(drop).map_err(|r| anyhow::anyhow!("{:?}: {r}", p.command))
    };
    let host = |i: usize| Name::new(format!("h{i:05}")).expect("a valid host name");
    for i in 0..hosts {
        apply_ok(
            &mut st,
            Command::RegisterHost(HostSpec {
                name: host(i),
                address: format!("h{i}.example:7100"),
                capacity: Resources { vcpus: 4096, memory_mib: 1 << 30 },
                profile: CompatProfile { hardware_family: "x86_64".into(), hypervisor_version: "qemu".into() },
                labels: Default::default(),
            }),
        )?;
    }
    for i in 0..guests {
        let spec = GuestSpec {
            vcpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            networks: Vec::new(),
            online_migration: true,
            cluster_node: false,
            package: None,
            anti_affinity: None,
        };
        let name = Name::new(format!("g{i:07}")).expect("a valid guest name");
        apply_ok(&mut st, Command::CreateGuest { name, spec, owner: host(i % hosts), run_state: RunState::Running })?;
    }
    apply_ok(&mut st, Command::AdmitHost { host: host(0) })?;
    apply_ok(&mut st, Command::DeclareHostFailed { host: host(0), evidence: "bench".into() })?;
    Ok(st)
}
