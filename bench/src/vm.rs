//! A real VM's live migration (QEMU, a 32 MiB guest with no disk), end to end through
//! Switchyard — the request acknowledged, every phase committed, the agents' driver moving the
//! VM with QEMU's own migration, `completed` committed — against the same move made with QMP
//! directly (start the target waiting for it, `migrate`, poll until `completed`), in the same
//! run on the same machine. The difference of the medians is Switchyard's orchestration
//! overhead. Each figure is timed as its user would: the operator from the request to the
//! committed end, the QMP user from the start of the target's process to QEMU's `completed`.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_agent::driver::qemu::{self, Qemu, QemuConfig};
use switchyard_agent::driver::{Transfer, VmState};
use switchyard_client::{Client, EventQuery};
use switchyard_protocol::api::{CreateGuestRequest, MigrateRequest, StreamItem};
use switchyard_protocol::{EventPayload, GuestSpec, MigrationId, MigrationKind, Name, Phase};
use switchyard_testkit::{local, wait_for, Hypervisor};

use crate::sut::Timing;
use crate::{Args, Report};

fn n(s: &str) -> Name {
    Name::new(s).expect("a valid name")
}

pub(crate) fn spec() -> GuestSpec {
    GuestSpec {
        vcpus: 1,
        memory_mib: 32,
        disks: vec![],
        networks: vec![],
        online_migration: true,
        cluster_node: false,
        package: None,
        anti_affinity: None,
    }
}

/// The guest `vm` of [`spec`], running on h1, in `package` if given.
fn guest_on_h1(package: Option<&str>) -> CreateGuestRequest {
    CreateGuestRequest::new(n("vm"), n("h1"), GuestSpec { package: package.map(n), ..spec() })
}

fn median_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(*v.last().expect("at least one move")))
}

pub async fn vm_migration(args: &Args, dir: &Path, timing: Timing, report: &mut Report) -> anyhow::Result<()> {
    let reps = args.vm_reps.max(1);
    let probe = Qemu::new(QemuConfig::new(dir.join("vm-probe")));
    let accel = match &probe {
        Ok(q) => q.accel(),
        Err(e) => {
            eprintln!("vm: skipped ({e})");
            return Ok(());
        }
    };
    eprintln!("== a real VM's live migration, {reps} moves each way of measuring (QEMU, {accel})");

    // QMP directly: two hypervisors on this machine, the guest moved back and forth.
    let port = switchyard_testkit::cluster::free_port();
    let hv = |h: &str| {
        let mut c = QemuConfig::new(dir.join("vm-direct").join(h));
        c.migration_ports = (port, port);
        // As the cluster's agents run them (testkit): guests with no disk boot qboot.
        c.firmware = qemu::light_firmware();
        Qemu::new(c).map_err(anyhow::Error::msg)
    };
    let (h1, h2) = (hv("h1")?, hv("h2")?);
    let g = n("vm");
    for h in [&h1, &h2] {
        h.define(&g, &spec(), 1)?;
    }
    h1.start(&g)?;
    let mut direct = Vec::new();
    let mut downtime = Vec::new();
    for rep in 0..reps {
        let (src, dst, to) = if rep % 2 == 0 { (&h1, &h2, "h2") } else { (&h2, &h1, "h1") };
        let t = Transfer {
            migration: MigrationId(1000 + rep as u64),
            guest: g.clone(),
            source: n(if to == "h2" { "h1" } else { "h2" }),
            target: n(to),
            target_address: "127.0.0.1".into(),
            kind: MigrationKind::Online,
        };
        let started = Instant::now();
        let stats = std::thread::scope(|s| {
            let out = s.spawn(|| src.migrate_out(&t, &AtomicBool::new(false)));
            dst.prepare_incoming(&t)?;
            out.join().expect("the migrating thread")
        })?;
        direct.push(started.elapsed());
        downtime.push(Duration::from_millis(stats.freeze_ms));
        // The target holds the guest paused until told (as an agent does, once it sees it).
        dst.receive(&t, Duration::from_secs(10))?;
        src.stop(&g, true)?;
    }
    for h in [&h1, &h2] {
        h.stop(&g, true)?;
    }

    // Through Switchyard: three coordinators and three agents on the qemu driver.
    let mut settings = crate::sut::settings(timing, args.batch_max, 0);
    settings.hypervisor = Hypervisor::Qemu;
    let mut cluster = local::open(&dir.join("vm-switchyard"), 0, settings)?;
    let result = async {
        local::start(&mut cluster).await?;
        cluster.start_agents()?;
        let admin = cluster.admin(Duration::from_secs(10)).retrying_writes(Duration::from_secs(60));
        admin.create_guest(&guest_on_h1(None)).await.context("create the guest")?;
        let runs_only_on = |host: &'static str| {
            let hvs: Vec<(&str, Qemu)> = ["h1", "h2", "h3"]
                .into_iter()
                .map(|h| (h, Qemu::new(QemuConfig::new(cluster.qemu_dir(h))).expect("QEMU was found above")))
                .collect();
            move || {
                let ok = hvs.iter().all(|(h, q)| (q.state(&n("vm")) == VmState::Running) == (*h == host));
                async move { ok.then_some(()) }
            }
        };
        wait_for("the guest to run on h1", Duration::from_secs(60), runs_only_on("h1")).await?;
        let mut through = Vec::new();
        for rep in 0..reps {
            let to = if rep % 2 == 0 { "h2" } else { "h1" };
            through.push(timed_migration(&admin, &g, to).await?);
            wait_for("the source's copy to stop", Duration::from_secs(60), runs_only_on(to)).await?;
        }
        anyhow::Ok(through)
    }
    .await;
    cluster.stop_all();
    cluster.kill_vms();
    let through = result?;

    let (d_med, d_max) = median_max(direct);
    let (s_med, s_max) = median_max(through.clone());
    let (q_med, q_max) = median_max(downtime);
    let overhead: Vec<f64> = through.iter().map(|t| t.as_secs_f64() * 1000.0 - d_med).collect();
    let o_max = overhead.iter().cloned().fold(f64::MIN, f64::max);
    eprintln!("vm: QMP directly median {d_med:.1} ms (max {d_max:.1}); through Switchyard median {s_med:.1} ms (max {s_max:.1}); QEMU downtime median {q_med:.0} ms (max {q_max:.0})");
    let figure = "live migration of a real 32 MiB VM, request to completed (median)";
    report.add(figure, "ms", false, "switchyard", s_med);
    report.note(
        figure,
        format!(
            "{reps} moves each, QEMU {accel}; the same move by QMP directly: median {d_med:.1} ms, max {d_max:.1}; \
             Switchyard's overhead: median {:.1} ms, max {o_max:.1}; QEMU downtime median {q_med:.0} ms",
            s_med - d_med
        ),
    );
    Ok(())
}

/// Host loss → the guest running on its adoptive host: a real VM in a failover package, its
/// host's agent and QEMU processes SIGKILLed (a host crash), timed until QEMU runs the guest on
/// another host; then the host comes back and rejoins before the next kill. Default lease
/// (4 s), fence margin and grace (1 s each).
pub async fn host_loss(args: &Args, dir: &Path, timing: Timing, report: &mut Report) -> anyhow::Result<()> {
    let reps = args.host_loss_reps.max(1);
    let accel = match Qemu::new(QemuConfig::new(dir.join("host-loss-probe"))) {
        Ok(q) => q.accel(),
        Err(e) => {
            eprintln!("host-loss: skipped ({e})");
            return Ok(());
        }
    };
    eprintln!("== host loss to the guest running elsewhere, {reps} host kills (QEMU, {accel})");
    let mut settings = crate::sut::settings(timing, args.batch_max, 0);
    settings.hypervisor = Hypervisor::Qemu;
    let ha = settings.ha.clone();
    let mut cluster = local::open(&dir.join("host-loss"), 0, settings)?;
    let result = async {
        local::start(&mut cluster).await?;
        cluster.start_agents()?;
        let admin = cluster.admin(Duration::from_secs(10)).retrying_writes(Duration::from_secs(60));
        admin.create_guest(&guest_on_h1(Some("p1"))).await.context("create the guest")?;
        let hvs: Vec<(String, Qemu)> = ["h1", "h2", "h3"]
            .into_iter()
            .map(|h| (h.to_string(), Qemu::new(QemuConfig::new(cluster.qemu_dir(h))).expect("QEMU was found above")))
            .collect();
        let running_on = || hvs.iter().find(|(_, q)| q.state(&n("vm")) == VmState::Running).map(|(h, _)| h.clone());
        let all_members = || async {
            let s = admin.ha_status().await.ok()?.items;
            let hosts = admin.hosts(&Default::default()).await.ok()?.items;
            let joined = hosts.iter().all(|h| h.state == switchyard_protocol::HostState::Active);
            (s.failed_hosts.is_empty() && joined).then_some(())
        };
        wait_for("every host to join failure detection", Duration::from_secs(60), || async {
            let q = EventQuery { from: 1, kind: Some("ha".into()), ..Default::default() };
            let mut joined = 0;
            admin
                .events(&q, |item| {
                    if let StreamItem::Event(e) = item {
                        joined += usize::from(matches!(e.payload, EventPayload::HostJoined { .. }));
                    }
                    true
                })
                .await
                .ok()?;
            (joined == hvs.len()).then_some(())
        })
        .await?;
        wait_for("the guest to run", Duration::from_secs(60), || async { running_on().map(|_| ()) }).await?;
        let mut took = Vec::new();
        for rep in 0..reps {
            let from = running_on().context("the guest runs nowhere")?;
            let agent = cluster.agents.iter().position(|a| a.host == from).context("the host's agent")?;
            // Every host has renewed its lease since the last recovery.
            wait_for("every host to be active", Duration::from_secs(60), all_members).await?;
            let started = Instant::now();
            cluster.agents[agent].kill();
            cluster.kill_host_vms(&from);
            wait_for("the guest to run elsewhere", Duration::from_secs(120), || async {
                running_on().filter(|h| *h != from).map(|_| ())
            })
            .await?;
            took.push(started.elapsed());
            eprintln!(
                "host-loss {rep}: {from} lost, the guest ran again after {:.0} ms",
                took[rep].as_secs_f64() * 1000.0
            );
            cluster.agents[agent].proc.start()?;
        }
        anyhow::Ok(took)
    }
    .await;
    cluster.stop_all();
    cluster.kill_vms();
    let took = result?;
    let (med, max) = median_max(took);
    eprintln!("host-loss: median {med:.0} ms, max {max:.0} ms");
    let figure = "host loss to the guest running on its adoptive host (median)";
    report.add(figure, "ms", false, "switchyard", med);
    report.note(
        figure,
        format!(
            "{reps} host kills (agent and QEMU SIGKILLed), a 32 MiB QEMU {accel} guest; lease {} ms, grace {} ms; max {max:.0} ms",
            ha.lease_ms, ha.grace_ms
        ),
    );
    Ok(())
}

/// Moves `guest` online to `to` and answers the time from the request to `completed`, as a
/// subscriber of its events sees it; a migration that ends otherwise is an error.
pub(crate) async fn timed_migration(admin: &Client, guest: &Name, to: &str) -> anyhow::Result<Duration> {
    let head = admin.guest(guest).await?.revision;
    let started = Instant::now();
    let req = MigrateRequest {
        guest: guest.clone(),
        target: n(to),
        offline: false,
        allow_stop: false,
        reason: None,
        request_id: None,
    };
    let id = MigrationId(admin.migrate(&req).await.context("request the migration")?.first_revision);
    let q = EventQuery { from: head + 1, follow: true, guest: Some(guest.to_string()), ..Default::default() };
    let mut end = None;
    admin
        .events(&q, |item| {
            if let StreamItem::Event(e) = item {
                if let EventPayload::MigrationPhaseChanged { id: m, phase, .. } = &e.payload {
                    if *m == id && phase.is_terminal() {
                        end = Some((*phase, started.elapsed()));
                        return false;
                    }
                }
            }
            true
        })
        .await?;
    match end {
        Some((Phase::Completed, took)) => Ok(took),
        Some((phase, _)) => bail!("migration {id} ended {phase}"),
        None => bail!("the event stream ended before migration {id} did"),
    }
}
