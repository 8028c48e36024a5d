//! Real QEMU guests under test: a cluster whose agents run the `qemu` driver, what each host's
//! hypervisor holds (read the way its agent reads it), and a checker that samples every host
//! all along a test and fails if one guest ever runs on two hosts at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_agent::driver::qemu::{self, Qemu, QemuConfig};
use switchyard_agent::driver::{Observed, VmState};
use switchyard_client::Client;
use switchyard_protocol::api::{CreateGuestRequest, RegisterHostRequest};
use switchyard_protocol::{Name, RunState};

use super::cluster::*;

pub const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// Three coordinators, hosts h1..h3 registered on loopback addresses (where incoming live
/// migrations listen), one agent per host on real QEMU.
pub async fn qemu_cluster(opts: ClusterOpts) -> (TestCluster, Vec<AgentProc>) {
    let cluster = TestCluster::start(3, ClusterOpts { hypervisor: Hypervisor::Qemu, ..opts }).await;
    register_loopback_hosts(&cluster).await;
    let agents = (1..=3).map(|n| AgentProc::start(&cluster, &format!("h{n}"), &agent_token(n), &[1, 2, 3])).collect();
    (cluster, agents)
}

/// Registers hosts h1..h3 on loopback addresses of their own, 127.0.0.11..13 (where incoming
/// live migrations listen), as real hosts have addresses of their own.
pub async fn register_loopback_hosts(cluster: &TestCluster) {
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    for (i, h) in HOSTS.iter().enumerate() {
        let req = RegisterHostRequest {
            name: Name::new(*h).unwrap(),
            address: format!("127.0.0.{}:{}", 11 + i, 7101 + i),
            vcpus: 64,
            memory_mib: 65536,
            hardware_family: "x86_64".into(),
            hypervisor_version: "qemu".into(),
            request_id: None,
            labels: Default::default(),
        };
        admin.register_host(&req).await.expect("register a host");
    }
}

/// A tiny running guest (no disk, no network) on `owner`, in `package` if given.
pub async fn create_vm(c: &Client, name: &str, owner: &str, memory_mib: u64, package: Option<&str>) {
    let req = CreateGuestRequest {
        name: Name::new(name).unwrap(),
        owner: Name::new(owner).unwrap(),
        vcpus: 1,
        memory_mib,
        disks: vec![],
        networks: vec![],
        online_migration: true,
        cluster_node: false,
        package: package.map(|p| Name::new(p).unwrap()),
        run_state: RunState::Running,
        request_id: None,
        anti_affinity: None,
    };
    c.create_guest(&req).await.expect("create a guest");
}

/// The hypervisor of `host`, read as its agent reads it.
pub fn hypervisor(cluster: &Cluster, host: &str) -> Qemu {
    let mut cfg = QemuConfig::new(cluster.qemu_dir(host));
    cfg.firmware = qemu::light_firmware();
    Qemu::new(cfg).expect("QEMU is installed (scripts/install-deps)")
}

pub fn observe(cluster: &Cluster, host: &str, guest: &str) -> Option<Observed> {
    hypervisor(cluster, host).observe().ok()?.into_iter().find(|o| o.name.as_str() == guest)
}

/// Whether `guest` runs on `host` in a QEMU process started to receive a live migration: the
/// copy a move brought there, not one started afresh (which would have lost the guest's memory).
pub fn runs_in_received_process(cluster: &Cluster, host: &str, guest: &str) -> bool {
    let dir = cluster.qemu_dir(host).join(guest);
    let Some(pid) = std::fs::read_to_string(dir.join("qemu.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return false;
    };
    let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    observe(cluster, host, guest).is_some_and(|o| o.state == VmState::Running)
        && args.split(|b| *b == 0).any(|a| a == b"-incoming")
}

/// Waits until `host`'s hypervisor holds `guest` in a way `ok` accepts.
pub async fn wait_vm(
    cluster: &Cluster,
    host: &str,
    guest: &str,
    what: &str,
    ok: impl Fn(&Observed) -> bool,
) -> Observed {
    eventually(&format!("{host}: {guest} {what}"), Duration::from_secs(60), || async {
        observe(cluster, host, guest).filter(|o| ok(o))
    })
    .await
}

/// Waits until `guest` runs on `owner` and every other host holds its definition, stopped.
pub async fn wait_runs_only_on(cluster: &Cluster, guest: &str, owner: &str) {
    for h in HOSTS {
        if h == owner {
            wait_vm(cluster, h, guest, "running", |o| o.state == VmState::Running).await;
        } else {
            wait_vm(cluster, h, guest, "defined, not running", |o| o.defined.is_some() && !o.state.is_live()).await;
        }
    }
}

/// Samples every host's hypervisor until stopped. Hosts are read one after the other, so a
/// guest seen running on A, then on B, then on A again ran on both at the moment B was read:
/// that is the violation it looks for (a move from A to B is seen as A, B, not-A).
pub struct TwoCopiesChecker {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl TwoCopiesChecker {
    pub fn start(cluster: &Cluster) -> TwoCopiesChecker {
        let hvs: Vec<(&'static str, Qemu)> = HOSTS.iter().map(|h| (*h, hypervisor(cluster, h))).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let running = |hvs: &[(&'static str, Qemu)]| -> Vec<BTreeMap<Name, bool>> {
                hvs.iter()
                    .map(|(_, q)| {
                        q.observe()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|o| (o.name.clone(), o.state == VmState::Running))
                            .collect()
                    })
                    .collect()
            };
            let (mut rounds, mut violations) = (0u64, Vec::new());
            let mut before = running(&hvs);
            while !flag.load(Ordering::SeqCst) {
                let after = running(&hvs);
                for a in 0..hvs.len() {
                    for (guest, &ran) in &before[a] {
                        if !ran || after[a].get(guest) != Some(&true) {
                            continue;
                        }
                        // Running on A at both reads; any host read in between (later hosts of
                        // the first round, earlier hosts of the second).
                        let between = (a + 1..hvs.len())
                            .filter(|b| before[*b].get(guest) == Some(&true))
                            .chain((0..a).filter(|b| after[*b].get(guest) == Some(&true)));
                        for b in between {
                            violations.push(format!("{guest} ran on {} and {} at once", hvs[a].0, hvs[b].0));
                        }
                    }
                }
                rounds += 1;
                before = after;
                std::thread::sleep(Duration::from_millis(5));
            }
            (rounds, violations)
        });
        TwoCopiesChecker { stop, handle }
    }

    /// Stops sampling; fails the test on any violation. Returns how many rounds it sampled.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let (rounds, violations) = self.handle.join().expect("the checker thread");
        assert!(violations.is_empty(), "two running copies seen: {violations:?}");
        assert!(rounds > 0, "the checker never sampled");
        rounds
    }
}
