//! `switchyard dev`: a complete local cluster for a first try — three `switchyard-coordinator`
//! processes and three `switchyard-agent` processes (hosts h1..h3) on loopback, everything in
//! one local folder: configs, data, one log per process, generated tokens. When QEMU is
//! installed the agents run real (tiny) VMs with the qemu driver; otherwise they use the
//! simulated hypervisor, and `dev` says so. It writes `cli.toml` there, which the CLI reads when no endpoints or token are given,
//! so `switchyard ...` just works from the same directory. Running it again resumes the same
//! cluster from the same data; Ctrl-C stops every process gracefully.
//!
//! Real processes rather than tasks in one process: the demo (`--demo`) kills the leader the way
//! a machine loss would, and each process has its own log to read. The cluster is the test kit's
//! ([`switchyard_testkit::local`]), the same the tests and the benchmark start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_client::{Client, EventQuery};
use switchyard_protocol::api::{CreateGuestRequest, MigrateRequest, MigrationDetail, PackageQuery, StreamItem};
use switchyard_protocol::{MigrationId, Name, Phase, RunState};
use switchyard_testkit::local::{self, DEFAULT_DIR, HOSTS, NODES};
use switchyard_testkit::{wait_for, Cluster, Hypervisor, Settings};

use crate::render::{describe, migration_detail};
use crate::timefmt;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the cluster keeps its configs, data, logs, tokens and ports.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Raft ports are BASE+1..3, API ports BASE+101..103; 0 picks free ports.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// Play the demo: a guest moved online while the leader coordinator is killed.
    #[arg(long)]
    demo: bool,
}

/// Prints a line to standard output, ignoring a closed pipe (`switchyard dev | head`, or a
/// reader that went away): the cluster must keep running when nobody reads its banner.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn main(args: Args) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the dev cluster until Ctrl-C (or SIGTERM); with `demo`, plays the seed scenario first.
async fn run(args: Args) -> anyhow::Result<()> {
    let qemu = qemu_installed();
    let settings =
        Settings { hypervisor: if qemu { Hypervisor::Qemu } else { Hypervisor::Simulated }, ..Settings::default() };
    let mut dev = local::open(&args.dir, args.base_port, settings)?;
    let result = async {
        local::start(&mut dev).await?;
        dev.start_agents()?;
        let status = dev.admin(Duration::from_secs(5)).node_status().await?;
        out!(
            "Switchyard dev cluster: {NODES} coordinators, agents for {}, data and logs in {}",
            HOSTS.join(", "),
            args.dir.display()
        );
        out!("  leader: node {}", status.leader.map_or("-".into(), |l| l.to_string()));
        if qemu {
            out!("  hypervisor: QEMU (each guest a real VM process, in {}/agent-*/qemu)", args.dir.display());
        } else {
            out!("  hypervisor: simulated (QEMU is not installed: apt-get install qemu-system-x86 for real VMs)");
        }
        out!();
        out!("  export SWITCHYARD_ENDPOINTS={}", dev.endpoints().join(","));
        out!("  export SWITCHYARD_TOKEN={}", dev.secrets.admin_token);
        let ca = switchyard_tls::issue::paths(&dev.tls_dir(), switchyard_tls::issue::CA_STEM).0;
        let ca = ca.canonicalize().unwrap_or(ca);
        out!("  export SWITCHYARD_CA={}", ca.display());
        out!(
            "  switchyard cluster status    # from this directory, the CLI also finds {}/cli.toml",
            args.dir.display()
        );
        let agents: Vec<String> =
            dev.agents.iter().map(|a| format!("{} https://{}/metrics", a.host, a.metrics)).collect();
        out!("  metrics: https://{}/metrics (read-only token); agents: {}", dev.endpoints()[0], agents.join(", "));
        out!(
            "  console: https://{}/ui/ (any coordinator; sign in with a token; the browser must trust {})",
            dev.endpoints()[0],
            ca.display()
        );
        out!();
        out!(
            "Every link is TLS under the cluster's own CA ({}/tls). Read-only token: {}; operations \
             token (migrate, switching, maintenance): {}. Ctrl-C stops everything; run again to resume.",
            args.dir.display(),
            dev.secrets.read_only_token,
            dev.secrets.operations_token
        );
        if args.demo {
            demo_scenario(&mut dev, qemu).await?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    }
    .await;
    dev.stop_all();
    // The VMs outlive their agents (as they must on a real host); a stopped dev cluster stops
    // them too, and its agents start them again on the next run.
    dev.kill_vms();
    result
}

/// Whether the QEMU system emulator the qemu driver runs is installed.
fn qemu_installed() -> bool {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The seed scenario: a packaged guest moved online while its leader coordinator is killed, and a
/// cluster-node guest refused.
async fn demo_scenario(dev: &mut Cluster, qemu: bool) -> anyhow::Result<()> {
    let admin = dev.admin(Duration::from_secs(10)).retrying_writes(Duration::from_secs(30));
    let say = |s: &str| out!("\n== {s}");
    let n = |s: &str| Name::new(s).expect("a valid name");
    say("demo: a distributed guest in a failover package, and a guest that is itself a cluster node");
    // On QEMU, tiny real VMs (no disk, no network); on the simulated hypervisor, guests as an
    // Integrity VM host would hold them.
    let guest = |name: &str, owner: &str, vcpus, memory_mib, vg: &str| CreateGuestRequest {
        name: n(name),
        owner: n(owner),
        vcpus: if qemu { 1 } else { vcpus },
        memory_mib: if qemu { 64 } else { memory_mib },
        disks: if qemu { vec![] } else { vec![format!("avio_stor:/dev/{vg}/{name}")] },
        networks: if qemu { vec![] } else { vec!["avio_lan:vswitch0".into()] },
        online_migration: true,
        cluster_node: false,
        package: None,
        run_state: RunState::Running,
        request_id: None,
        anti_affinity: None,
    };
    let web = CreateGuestRequest { package: Some(n("pkg-web1")), ..guest("web1", "h1", 4, 8192, "vg01") };
    let sg = CreateGuestRequest { cluster_node: true, ..guest("sgnode1", "h2", 2, 4096, "vg02") };
    for req in [web, sg] {
        match admin.create_guest(&req).await {
            Ok(w) => out!("created guest {} (revision {})", req.name, w.first_revision),
            Err(e) if e.code() == Some("guest_exists") => out!("guest {} already exists", req.name),
            Err(e) => return Err(e).context("create demo guest"),
        }
    }
    say("moving the cluster-node guest online is refused:");
    let refused = MigrateRequest {
        guest: n("sgnode1"),
        target: n("h3"),
        offline: false,
        allow_stop: false,
        reason: None,
        request_id: None,
    };
    match admin.migrate(&refused).await {
        Err(e) => out!("refused: {e}"),
        Ok(w) => out!("unexpectedly accepted at revision {}", w.first_revision),
    }
    // Reads are linearizable and need a leader: a moment without one (an election on a busy
    // machine) is waited out rather than ending the demo.
    let from = wait_for("web1's owner", Duration::from_secs(30), || {
        let c = admin.clone();
        async move { c.guest(&n("web1")).await.ok().map(|g| g.items.guest.owner) }
    })
    .await?;
    let to = if from.as_str() == "h1" { "h2" } else { "h1" };
    say(&format!("online migration of web1 from {from} to {to}"));
    let req = MigrateRequest {
        guest: n("web1"),
        target: n(to),
        offline: false,
        allow_stop: false,
        reason: Some("demo: patch the source host".into()),
        request_id: None,
    };
    let id = MigrationId(admin.migrate(&req).await.context("request the migration")?.first_revision);
    let stale = admin.clone().stale(true);
    let read = |c: Client| async move { c.migration(id).await.ok().map(|r| r.items.migration) };
    let mut seen = Phase::Requested;
    out!("migration {id}: {seen}");
    let m = wait_for("the transfer to start", Duration::from_secs(60), || {
        let c = stale.clone();
        async move { read(c).await.filter(|m| m.phase >= Phase::Transferring) }
    })
    .await?;
    for r in m.history.iter().skip(1) {
        out!("migration {id}: {}", r.phase);
        seen = r.phase;
    }
    let leader = wait_for("a leader", Duration::from_secs(30), || {
        let c = admin.clone();
        async move { c.node_status().await.ok().and_then(|s| s.leader) }
    })
    .await?;
    let now = read(stale.clone()).await.map_or(seen, |m| m.phase);
    say(&format!("killing the leader, coordinator {leader} (SIGKILL), with the migration in phase {now}"));
    dev.kill(leader);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let m = loop {
        if let Some(m) = read(stale.clone()).await {
            for r in m.history.iter().filter(|r| r.phase > seen) {
                out!("migration {id}: {} ({:.1}s after the kill)", r.phase, started.elapsed().as_secs_f64());
            }
            seen = m.phase;
            if m.phase.is_terminal() {
                break m;
            }
        }
        if Instant::now() > deadline {
            bail!("migration {id} did not end within two minutes; see the logs in {}", dev.dir().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    say(&format!("migration {id} ended {}; its history:", m.phase));
    let detail =
        stale.migration(id).await.map_or(
            MigrationDetail { migration: m.clone(), transfer: None, resolution: None, target_runs: None },
            |r| r.items,
        );
    out!("{}", migration_detail(&detail).trim_end());
    if qemu {
        out!(
            "QEMU froze the VM for {} ms while it moved (QEMU's own downtime figure)",
            m.freeze_time_ms.map_or("?".into(), |f| f.to_string())
        );
    }
    let packages = wait_for("the packages", Duration::from_secs(30), || {
        let c = admin.clone();
        async move { c.packages(&PackageQuery::default()).await.ok() }
    })
    .await?;
    let web = packages.items.iter().find(|p| p.name.as_str() == "pkg-web1");
    out!(
        "package pkg-web1 switching: {}",
        web.map_or("?", |p| if p.switching_enabled { "enabled (protected again)" } else { "DISABLED" })
    );
    say("the guest's full event history:");
    let q = EventQuery { from: 1, guest: Some("web1".into()), ..Default::default() };
    admin
        .events(&q, |item| {
            if let StreamItem::Event(e) = item {
                out!("  {}  {}  {}", e.revision, timefmt::format(e.time), describe(&e.payload));
            }
            true
        })
        .await?;
    say(&format!("restarting coordinator {leader}; it catches up from the others"));
    dev.restart(leader);
    out!("try: switchyard migration list; switchyard events --guest web1 --from 1");
    Ok(())
}
