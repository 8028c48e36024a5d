//! The command driver's shipped template sets — Integrity VM with Serviceguard
//! (`deploy/drivers/integrity-vm.toml`) and libvirt (`deploy/drivers/libvirt.toml`), with their
//! scripts — driving fake platform tools that implement the real ones' documented behaviour
//! (`switchyard_tests::fake_platform`). Three hosts, three coordinators, one agent per host, as
//! in `agent_qemu`: guest changes reach the hypervisor on the right host, live and offline moves
//! run the platform's own migration (with `cmmodpkg -d` before and `-e` after an online move of
//! a packaged guest), drift made behind an agent's back is repaired, and the fake tools record
//! every start of a guest that already runs elsewhere (there must be none).
//!
//! The templates are used as shipped: only the directories of the programs are changed (to the
//! fake tools and this checkout's scripts), never an argument.
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::cluster::*;
use common::saga::*;
use switchyard_agent::driver::command::CommandConfig;
use switchyard_agent::driver::{DriverConfig, DriverError, HypervisorDriver, Transfer, VmState};
use switchyard_protocol::api::{
    CreateGuestRequest, MigrateRequest, ModifyGuestRequest, RegisterHostRequest, RemoveParams, SwitchingRequest,
};
use switchyard_protocol::{EventPayload, GuestSpec, MigrationId, MigrationKind, Name, Phase, RunState};
use switchyard_testkit::wait_for;
use switchyard_tests::fake_platform::{self, Platform};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// The fake platform: its tools installed in `tools/`, its shared state in `state/`.
struct Fake {
    dir: tempfile::TempDir,
    platform: Platform,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        fake_platform::install(Path::new(env!("CARGO_BIN_EXE_fake_platform")), &dir.path().join("tools")).unwrap();
        let platform = Platform::new(&dir.path().join("state"));
        for h in HOSTS {
            platform.add_host(h);
        }
        Fake { dir, platform }
    }

    fn tools(&self) -> PathBuf {
        self.dir.path().join("tools")
    }

    /// A shipped template set, its programs found in the fake tools and this checkout's
    /// scripts; `{host}` is each agent's host (see the test kit's `Hypervisor::Command`).
    fn template(&self, file: &str) -> CommandConfig {
        let drivers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/drivers");
        let text = std::fs::read_to_string(drivers.join(file)).unwrap();
        let tools = format!("{}/", self.tools().display());
        let text = text
            .replace("/opt/hpvm/bin/", &tools)
            .replace("/usr/local/cmcluster/bin/", &tools)
            .replace("/usr/local/libexec/switchyard/", &format!("{}/", drivers.display()));
        #[derive(serde::Deserialize)]
        struct Section {
            driver: DriverConfig,
        }
        let s: Section = toml::from_str(&text).unwrap();
        let DriverConfig::Command(c) = s.driver else { panic!("{file} is not a command driver") };
        let mut c = *c;
        let path = format!("{}:{}", self.tools().display(), std::env::var("PATH").unwrap_or_default());
        c.env.insert("PATH".into(), path);
        c.env.insert("HPVM_BIN".into(), self.tools().display().to_string());
        c.env.insert("FAKE_PLATFORM_ROOT".into(), self.platform.root.display().to_string());
        c.env.insert("FAKE_PLATFORM_HOST".into(), "{host}".into());
        c.poll_interval_ms = 100;
        c.lifecycle.as_mut().expect("a lifecycle").stop_timeout_ms = 5_000;
        c
    }

    /// Waits until `ok` holds of the fake platform; on a timeout, fails with the last calls
    /// the tools received.
    async fn wait<T>(&self, what: &str, ok: impl Fn(&Platform) -> Option<T>) -> T {
        match wait_for(what, Duration::from_secs(60), || async { ok(&self.platform) }).await {
            Ok(v) => v,
            Err(e) => {
                let calls = self.platform.commands();
                panic!("{e}; the last calls:\n{}", calls[calls.len().saturating_sub(40)..].join("\n"))
            }
        }
    }

    /// The index of the first recorded call that contains every one of `words`, after `from`.
    fn call(&self, from: usize, words: &[&str]) -> Option<usize> {
        let calls = self.platform.commands();
        (from..calls.len()).find(|i| {
            let c = &calls[*i];
            words.iter().all(|w| c.contains(w)) && c.ends_with("=> 0")
        })
    }

    fn assert_no_two_copies(&self) {
        let v = self.platform.violations();
        assert!(v.is_empty(), "a guest was started while it ran elsewhere: {v:?}");
    }
}

/// Three coordinators and three agents on the template set `file`.
async fn command_cluster(fake: &Fake, file: &str) -> (TestCluster, Vec<AgentProc>) {
    let opts = ClusterOpts { hypervisor: Hypervisor::Command(Box::new(fake.template(file))), ..ClusterOpts::default() };
    let cluster = TestCluster::start(3, opts).await;
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    for (i, h) in HOSTS.iter().enumerate() {
        let req = RegisterHostRequest {
            name: n(h),
            address: format!("127.0.0.1:{}", 7101 + i),
            vcpus: 64,
            memory_mib: 65536,
            hardware_family: "ia64".into(),
            hypervisor_version: "fake".into(),
            request_id: None,
            labels: Default::default(),
        };
        admin.register_host(&req).await.expect("register a host");
    }
    let agents = (1..=3).map(|k| AgentProc::start(&cluster, &format!("h{k}"), &agent_token(k), &[1, 2, 3])).collect();
    (cluster, agents)
}

fn guest_request(
    name: &str,
    owner: &str,
    disks: &[&str],
    networks: &[&str],
    package: Option<&str>,
) -> CreateGuestRequest {
    CreateGuestRequest {
        name: n(name),
        owner: n(owner),
        vcpus: 2,
        memory_mib: 1024,
        disks: disks.iter().map(|d| d.to_string()).collect(),
        networks: networks.iter().map(|d| d.to_string()).collect(),
        online_migration: true,
        cluster_node: false,
        package: package.map(n),
        run_state: RunState::Running,
        request_id: None,
        anti_affinity: None,
    }
}

fn migrate_request(guest: &str, to: &str, offline: bool, allow_stop: bool) -> MigrateRequest {
    MigrateRequest { guest: n(guest), target: n(to), offline, allow_stop, reason: None, request_id: None }
}

/// Runs on `owner` only (running there, defined and off everywhere else).
fn runs_only_on(p: &Platform, hpvm: bool, guest: &str, owner: &str) -> bool {
    HOSTS.iter().all(|h| {
        let (defined, running) = if hpvm {
            let g = p.hpvm_guest(h, guest);
            (g.is_some(), g.is_some_and(|g| g.on))
        } else {
            let d = p.domain(h, guest);
            (d.as_ref().is_some_and(|d| d.xml.is_some()), d.is_some_and(|d| d.running))
        };
        defined && running == (*h == owner)
    })
}

async fn repaired(cluster: &TestCluster, guest: &str, host: &str, action: &str) -> String {
    eventually(&format!("the {action} repair of {guest} on {host} in the history"), Duration::from_secs(30), || async {
        history(&cluster.client(&[1, 2, 3])).await.into_iter().find_map(|e| match e.payload {
            EventPayload::GuestRepaired { guest: g, host: h, action: a, reason }
                if g.as_str() == guest && h.as_str() == host && a == action =>
            {
                Some(reason)
            }
            _ => None,
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_vm_and_serviceguard_templates_run_guests_moves_and_switching() {
    let fake = Fake::new();
    // The cluster's administrators configured the package in Serviceguard on every node.
    fake.platform.add_package("pkg1", &HOSTS);
    let (cluster, _agents) = command_cluster(&fake, "integrity-vm.toml").await;
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));

    // Created: hpvmcreate on every host with the spec's devices, hpvmstart on the owner only.
    let req = guest_request("g1", "h1", &["avio_stor::file:/var/vm/g1.img"], &["avio_lan::vswitch:vsw0"], Some("pkg1"));
    admin.create_guest(&req).await.unwrap();
    fake.wait("g1 to run on h1 only", |p| runs_only_on(p, true, "g1", "h1").then_some(())).await;
    let g = fake.platform.hpvm_guest("h3", "g1").unwrap();
    assert_eq!((g.vcpus, g.memory_mib, g.online_migration), (2, 1024, true));
    assert_eq!(g.devices, ["disk:avio_stor:0,0,0:file:/var/vm/g1.img", "network:avio_lan:0,1,0:vswitch:vsw0"]);

    // Modified: hpvmmodify everywhere, devices removed and added by difference.
    let change = ModifyGuestRequest {
        memory_mib: Some(2048),
        disks: Some(vec!["avio_stor::lv:/dev/vg01/lvol1".into()]),
        ..Default::default()
    };
    admin.modify_guest(&n("g1"), &change).await.unwrap();
    fake.wait("every host to hold the change", |p| {
        HOSTS
            .iter()
            .all(|h| {
                p.hpvm_guest(h, "g1").is_some_and(|g| {
                    g.memory_mib == 2048
                        && g.devices.len() == 2
                        && g.devices.iter().any(|d| d.ends_with(":lv:/dev/vg01/lvol1"))
                })
            })
            .then_some(())
    })
    .await;

    // Drift: the guest stopped at the console of its host is started again; the repair is in
    // the history.
    fake.platform.edit_hpvm("h1", "g1", |g| g.on = false);
    let why = repaired(&cluster, "g1", "h1", "start").await;
    assert!(why.contains("runs here"), "{why}");
    fake.wait("g1 to run on h1 again", |p| p.hpvm_guest("h1", "g1").filter(|g| g.on)).await;

    // Online move of the packaged guest: switching off in Serviceguard before hpvmmigrate -o,
    // on again after it.
    let before = fake.platform.commands().len();
    let id = MigrationId(admin.migrate(&migrate_request("g1", "h2", false, false)).await.unwrap().first_revision);
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.error);
    fake.wait("g1 to run on h2 only", |p| runs_only_on(p, true, "g1", "h2").then_some(())).await;
    let disable = fake.call(before, &["h1 cmmodpkg -d pkg1"]).expect("cmmodpkg -d pkg1 on the source");
    let moved = fake.call(before, &["h1 hpvmmigrate -P g1 -h h2 -o"]).expect("hpvmmigrate -o");
    let enable = fake.wait("cmmodpkg -e pkg1 by the new owner", |_| fake.call(moved, &["h2 cmmodpkg -e pkg1"])).await;
    assert!(disable < moved && moved < enable, "{:?}", &fake.platform.commands()[before..]);
    assert!(fake.platform.package("pkg1").unwrap().autorun);

    // Drift: switching disabled by hand is enabled again by the new owner; the repair is in the
    // history.
    let mut pk = fake.platform.package("pkg1").unwrap();
    pk.autorun = false;
    std::fs::write(fake.platform.root.join("serviceguard/pkg1.json"), serde_json::to_vec(&pk).unwrap()).unwrap();
    let why = repaired(&cluster, "g1", "h2", "enable-switching").await;
    assert!(why.contains("package pkg1"), "{why}");
    fake.wait("switching enabled again", |p| p.package("pkg1").filter(|p| p.autorun)).await;

    // Node switching: the log excludes h3, whose agent tells Serviceguard.
    let req = SwitchingRequest { enabled: false, node: Some(n("h3")), reason: None, request_id: None };
    admin.set_switching(&n("pkg1"), &req).await.unwrap();
    fake.wait("h3 excluded from pkg1", |p| p.package("pkg1").filter(|p| !p.nodes["h3"])).await;
    assert!(fake.call(0, &["h3 cmmodpkg -d -n h3 pkg1"]).is_some());

    // Stopped, then removed: hpvmstop -g on the owner, hpvmremove everywhere.
    let stop = ModifyGuestRequest { run_state: Some(RunState::Stopped), ..Default::default() };
    admin.modify_guest(&n("g1"), &stop).await.unwrap();
    fake.wait("g1 stopped", |p| p.hpvm_guest("h2", "g1").filter(|g| !g.on)).await;
    assert!(fake.call(0, &["h2 hpvmstop -P g1 -g -q"]).is_some());
    admin.remove_guest(&n("g1"), &RemoveParams::default()).await.unwrap();
    fake.wait("g1 removed everywhere", |p| HOSTS.iter().all(|h| p.hpvm_guest(h, "g1").is_none()).then_some(())).await;
    fake.assert_no_two_copies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cluster_node_guest_on_integrity_vm_moves_offline_only_and_stopped_first() {
    let fake = Fake::new();
    let (cluster, _agents) = command_cluster(&fake, "integrity-vm.toml").await;
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));
    let req = CreateGuestRequest {
        online_migration: false,
        cluster_node: true,
        ..guest_request("sg1", "h1", &["avio_stor::lv:/dev/vg02/sg1"], &[], None)
    };
    admin.create_guest(&req).await.unwrap();
    fake.wait("sg1 to run on h1 only", |p| runs_only_on(p, true, "sg1", "h1").then_some(())).await;
    assert!(!fake.platform.hpvm_guest("h2", "sg1").unwrap().online_migration, "online_migration=disabled set");
    let e = admin.migrate(&migrate_request("sg1", "h2", false, false)).await.unwrap_err();
    assert_eq!(e.code(), Some("online_migration_disabled"), "{e}");

    let before = fake.platform.commands().len();
    let id = MigrationId(admin.migrate(&migrate_request("sg1", "h2", true, true)).await.unwrap().first_revision);
    let m = wait_terminal(&cluster, id).await;
    assert_eq!((m.phase, m.kind), (Phase::Completed, MigrationKind::OfflineStop), "{:?}", m.error);
    fake.wait("sg1 to run on h2 only", |p| runs_only_on(p, true, "sg1", "h2").then_some(())).await;
    let stop = fake.call(before, &["h1 hpvmstop -P sg1 -g -q"]).expect("stopped on h1");
    let moved = fake.call(before, &["h1 hpvmmigrate -P sg1 -h h2 =>"]).expect("hpvmmigrate without -o");
    let start = fake.call(before, &["h2 hpvmstart -P sg1"]).expect("started on h2");
    assert!(stop < moved && moved < start, "{:?}", &fake.platform.commands()[before..]);
    assert!(fake.call(before, &["hpvmmigrate -P sg1 -h h2 -o"]).is_none(), "never moved online");
    // hpvmmigrate left h1's copy not runnable, as Integrity VM does.
    assert!(!fake.platform.hpvm_guest("h1", "sg1").unwrap().runnable);
    fake.assert_no_two_copies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_templates_run_guests_moves_and_repairs() {
    let fake = Fake::new();
    let (cluster, _agents) = command_cluster(&fake, "libvirt.toml").await;
    let admin = cluster.client(&[1, 2, 3]).retrying_writes(Duration::from_secs(60));

    // Created: virsh define everywhere (the domain XML from the spec), virsh start on the owner.
    let req = guest_request("d1", "h1", &["/var/lib/libvirt/images/d1.qcow2"], &["network:default"], None);
    admin.create_guest(&req).await.unwrap();
    fake.wait("d1 to run on h1 only", |p| runs_only_on(p, false, "d1", "h1").then_some(())).await;
    let xml = fake.platform.domain("h3", "d1").unwrap().xml.unwrap();
    assert!(xml.contains("<source file='/var/lib/libvirt/images/d1.qcow2'/>") && xml.contains("type='qcow2'"), "{xml}");
    assert!(xml.contains("<source network='default'/>") && xml.contains("<vcpu>2</vcpu>"), "{xml}");

    // Modified while running: every persistent definition changes; the running domain keeps
    // its memory until its next start.
    let change = ModifyGuestRequest { memory_mib: Some(1536), ..Default::default() };
    admin.modify_guest(&n("d1"), &change).await.unwrap();
    fake.wait("every host to hold the change", |p| {
        HOSTS
            .iter()
            .all(|h| {
                p.domain(h, "d1").and_then(|d| d.xml).is_some_and(|x| x.contains("<memory unit='MiB'>1536</memory>"))
            })
            .then_some(())
    })
    .await;
    assert_eq!(fake.platform.domain("h1", "d1").unwrap().memory_kib, 1024 * 1024);

    // Killed behind the agent's back (virsh destroy at the console): started again, with the
    // pending change.
    fake.platform.edit_domain("h1", "d1", |d| d.running = false);
    repaired(&cluster, "d1", "h1", "start").await;
    fake.wait("d1 running on h1 again", |p| p.domain("h1", "d1").filter(|d| d.running)).await;
    assert_eq!(fake.platform.domain("h1", "d1").unwrap().memory_kib, 1536 * 1024);

    // Live move: virsh migrate --live --persistent.
    let id = MigrationId(admin.migrate(&migrate_request("d1", "h2", false, false)).await.unwrap().first_revision);
    let m = wait_terminal(&cluster, id).await;
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.error);
    fake.wait("d1 to run on h2 only", |p| runs_only_on(p, false, "d1", "h2").then_some(())).await;
    assert!(fake.call(0, &["h1 virsh migrate --live --persistent --verbose d1 qemu+ssh://h2/system"]).is_some());

    // Offline with a stop: virsh shutdown, virsh migrate --offline --persistent, virsh start on
    // the target.
    let before = fake.platform.commands().len();
    let id = MigrationId(admin.migrate(&migrate_request("d1", "h3", true, true)).await.unwrap().first_revision);
    let m = wait_terminal(&cluster, id).await;
    assert_eq!((m.phase, m.kind), (Phase::Completed, MigrationKind::OfflineStop), "{:?}", m.error);
    fake.wait("d1 to run on h3 only", |p| runs_only_on(p, false, "d1", "h3").then_some(())).await;
    let stop = fake.call(before, &["h2 virsh shutdown d1"]).expect("shut down on h2");
    let moved = fake.call(before, &["h2 virsh migrate --offline --persistent d1 qemu+ssh://h3/system"]).expect("moved");
    let start = fake.call(before, &["h3 virsh start d1"]).expect("started on h3");
    assert!(stop < moved && moved < start, "{:?}", &fake.platform.commands()[before..]);

    admin.remove_guest(&n("d1"), &RemoveParams::default()).await.unwrap();
    fake.wait("d1 removed everywhere", |p| HOSTS.iter().all(|h| p.domain(h, "d1").is_none()).then_some(())).await;
    fake.assert_no_two_copies();
}

/// The drivers straight from the templates, without a cluster: what the platforms refuse
/// reaches the agent as an error with the tool's reason, and a template that passes an
/// argument wrongly fails.
#[test]
fn the_platforms_refusals_reach_the_driver() {
    let fake = Fake::new();
    let records = tempfile::tempdir().unwrap();
    let build = |file: &str, host: &str, edit: &dyn Fn(&mut CommandConfig)| -> Box<dyn HypervisorDriver> {
        let mut c = fake.template(file);
        c.env.insert("FAKE_PLATFORM_HOST".into(), host.into());
        c.lifecycle.as_mut().unwrap().state_dir = records.path().join(format!("{file}-{host}"));
        edit(&mut c);
        DriverConfig::Command(Box::new(c)).build(&n(host)).unwrap()
    };
    let spec = GuestSpec {
        vcpus: 1,
        memory_mib: 512,
        disks: vec!["avio_stor::lv:/dev/vg02/sg1".into()],
        networks: vec![],
        online_migration: false,
        cluster_node: true,
        package: None,
        anti_affinity: None,
    };
    let transfer = |kind| Transfer {
        migration: MigrationId(7),
        guest: n("sg1"),
        source: n("h1"),
        target: n("h2"),
        target_address: "127.0.0.1:7102".into(),
        kind,
    };
    let h1 = build("integrity-vm.toml", "h1", &|_| {});
    let l = h1.lifecycle().unwrap();
    l.define(&n("sg1"), &spec, 3).unwrap();
    l.start(&n("sg1")).unwrap();
    assert_eq!(l.state(&n("sg1")).unwrap(), VmState::Running);
    // hpvmmigrate refuses to move online a guest with online_migration=disabled.
    let e = h1.transfer(&transfer(MigrationKind::Online), &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(&e, DriverError::Failed(m) if m.contains("online_migration=disabled")), "{e}");
    // An offline move without leave to stop it is refused by the driver itself.
    let e = h1.transfer(&transfer(MigrationKind::Offline), &AtomicBool::new(false)).unwrap_err();
    assert!(e.to_string().contains("--allow-stop"), "{e}");
    assert_eq!(l.state(&n("sg1")).unwrap(), VmState::Running, "nothing moved, nothing stopped");
    // Bad input is the platform's to refuse, and nothing changes.
    let bad = GuestSpec { disks: vec!["floppy:/dev/fd0".into()], ..spec.clone() };
    let e = l.define(&n("sg2"), &bad, 4).unwrap_err();
    assert!(e.to_string().contains("bad resource"), "{e}");
    assert!(fake.platform.hpvm_guest("h1", "sg2").is_none());

    // A stop template without -q would wait for an answer at a terminal: refused.
    let wrong = build("integrity-vm.toml", "h1", &|c| {
        c.lifecycle.as_mut().unwrap().stop_hard.retain(|a| a != "-q");
    });
    let e = wrong.lifecycle().unwrap().stop(&n("sg1"), true).unwrap_err();
    assert!(e.to_string().contains("give -q"), "{e}");
    h1.lifecycle().unwrap().stop(&n("sg1"), true).unwrap();

    // libvirt: an offline migration template without --persistent is refused by virsh.
    let d1 = build("libvirt.toml", "h1", &|c| {
        c.migrate_offline.as_mut().unwrap().retain(|a| a != "--persistent");
    });
    let spec = GuestSpec { disks: vec![], online_migration: true, cluster_node: false, ..spec };
    d1.lifecycle().unwrap().define(&n("sg1"), &spec, 3).unwrap();
    let e = d1.transfer(&transfer(MigrationKind::Offline), &AtomicBool::new(false)).unwrap_err();
    assert!(e.to_string().contains("--offline migration requires --persistent"), "{e}");
    fake.assert_no_two_copies();
}
