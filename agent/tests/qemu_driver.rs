//! The `qemu` driver against real QEMU processes (KVM when `/dev/kvm` is usable, TCG otherwise):
//! tiny guests with no disk, 32–48 MiB. `scripts/install-deps` installs QEMU.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use switchyard_agent::driver::qemu::{self, Qemu, QemuConfig};
use switchyard_agent::driver::{DriverError, Observed, Transfer, VmState};
use switchyard_protocol::{GuestSpec, MigrationId, MigrationKind, Name};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn spec(memory_mib: u64) -> GuestSpec {
    GuestSpec {
        vcpus: 1,
        memory_mib,
        disks: vec![],
        networks: vec![],
        online_migration: true,
        cluster_node: false,
        package: None,
        anti_affinity: None,
    }
}

/// A driver on its own state folder; every QEMU process it started is killed on drop, whatever
/// the test's outcome (they are daemons and would outlive the test).
struct Host {
    qemu: Qemu,
    dir: std::path::PathBuf,
}

impl Host {
    fn new(root: &Path, name: &str, ports: (u16, u16)) -> Host {
        Host::booting(root, name, ports, qemu::light_firmware())
    }

    /// A host whose guests boot `firmware` (QEMU's default when `None`).
    fn booting(root: &Path, name: &str, ports: (u16, u16), firmware: Option<std::path::PathBuf>) -> Host {
        Host::with(root, name, ports, |cfg| cfg.firmware = firmware)
    }

    /// A source whose streams a refusing target cuts off mid-way. A tiny diskless guest's
    /// whole stream (≈ 170 KB, its memory being zero pages) fits in loopback's socket buffers:
    /// at full speed the source can finish sending, and QEMU answer `completed`, before the
    /// target has read far enough to refuse it (seen under load in about one run in three). At
    /// 128 KiB/s the stream takes over a second, and the target's refusal, read from the
    /// stream's first part within milliseconds, reaches the source while it still sends — as
    /// it does for a real guest, whose stream is many times the buffers.
    fn sending_slowly(root: &Path, name: &str, ports: (u16, u16)) -> Host {
        Host::with(root, name, ports, |cfg| {
            cfg.firmware = qemu::light_firmware();
            cfg.migration_bandwidth_kib = Some(128);
        })
    }

    fn with(root: &Path, name: &str, ports: (u16, u16), set: impl FnOnce(&mut QemuConfig)) -> Host {
        let dir = root.join(name);
        let mut cfg = QemuConfig::new(dir.clone());
        cfg.powerdown_timeout_ms = 300;
        cfg.migrate_timeout_ms = 30_000;
        cfg.migration_ports = ports;
        set(&mut cfg);
        let qemu = Qemu::new(cfg).unwrap_or_else(|e| panic!("{e}: run scripts/install-deps"));
        Host { qemu, dir }
    }

    fn get(&self, guest: &str) -> Option<Observed> {
        self.qemu.observe().unwrap().into_iter().find(|o| o.name.as_str() == guest)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(list) = self.qemu.observe() {
            for o in list {
                let _ = self.qemu.stop(&o.name, true);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Hosts h1 and h2 on `ports`, both defining guest g1, which runs on h1.
fn g1_running_on_h1(root: &Path, ports: (u16, u16)) -> (Host, Host, Name) {
    let h1 = Host::new(root, "h1", ports);
    let h2 = Host::new(root, "h2", ports);
    let g = n("g1");
    for h in [&h1, &h2] {
        h.qemu.define(&g, &spec(32), 5).unwrap();
    }
    h1.qemu.start(&g).unwrap();
    (h1, h2, g)
}

/// The online move of `guest` from h1 to h2 as migration `id` (h2 registered on loopback).
fn h1_to_h2(guest: &Name, id: u64) -> Transfer {
    Transfer {
        migration: MigrationId(id),
        guest: guest.clone(),
        source: n("h1"),
        target: n("h2"),
        target_address: "127.0.0.1:7302".into(),
        kind: MigrationKind::Online,
    }
}

/// A port no one listens on now (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn define_start_modify_stop_and_undefine_reach_a_real_qemu_process() {
    let root = tempfile::tempdir().unwrap();
    let h = Host::new(root.path(), "h1", (49152, 49215));
    let g = n("g1");
    h.qemu.define(&g, &spec(32), 5).unwrap();
    let o = h.get("g1").unwrap();
    assert_eq!((o.defined, o.state), (Some((spec(32), Some(5))), VmState::ShutOff));

    h.qemu.start(&g).unwrap();
    h.qemu.start(&g).unwrap(); // idempotent: one process
    let o = h.get("g1").unwrap();
    assert_eq!(o.state, VmState::Running, "accel {}", h.qemu.accel());
    assert_eq!(o.running_spec, Some(spec(32)));

    // A change while running waits for the next start.
    h.qemu.define(&g, &spec(48), 6).unwrap();
    let o = h.get("g1").unwrap();
    assert_eq!((o.defined.unwrap().0, o.running_spec.unwrap()), (spec(48), spec(32)));
    let e = h.qemu.undefine(&g).unwrap_err().to_string();
    assert!(e.contains("stop it first"), "{e}");

    // A stop decided from another state (a copy left behind by a migration) does not reach the
    // process running now.
    assert!(!h.qemu.stop_if(&g, true, &VmState::Migrated).unwrap());
    assert_eq!(h.get("g1").unwrap().state, VmState::Running);

    // A guest with no operating system ignores the power button: the stop falls back to quit.
    h.qemu.stop(&g, false).unwrap();
    assert_eq!(h.get("g1").unwrap().state, VmState::ShutOff);
    h.qemu.start(&g).unwrap();
    assert_eq!(h.get("g1").unwrap().running_spec, Some(spec(48)));
    h.qemu.stop(&g, true).unwrap();
    h.qemu.stop(&g, true).unwrap(); // idempotent
    h.qemu.undefine(&g).unwrap();
    assert!(h.get("g1").is_none());
}

#[test]
fn a_process_killed_behind_the_drivers_back_reads_as_shut_off_and_a_reused_pid_is_not_taken() {
    let root = tempfile::tempdir().unwrap();
    let h = Host::new(root.path(), "h1", (49152, 49215));
    let g = n("g1");
    h.qemu.define(&g, &spec(32), 1).unwrap();
    h.qemu.start(&g).unwrap();
    let pid: i32 = std::fs::read_to_string(h.dir.join("g1/qemu.pid")).unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) of the QEMU process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.get("g1").unwrap().state != VmState::ShutOff {
        assert!(std::time::Instant::now() < deadline, "the killed process still reads as live");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The pid file now names a process that is not this guest's QEMU.
    let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(h.dir.join("g1/qemu.pid"), other.id().to_string()).unwrap();
    assert_eq!(h.get("g1").unwrap().state, VmState::ShutOff);
    h.qemu.undefine(&g).unwrap();
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
fn a_bad_definition_is_refused_before_it_is_written() {
    let root = tempfile::tempdir().unwrap();
    let h = Host::new(root.path(), "h1", (49152, 49215));
    let mut s = spec(32);
    s.networks = vec!["avio_lan:vswitch0".into()];
    assert!(h.qemu.define(&n("g1"), &s, 1).is_err());
    assert!(h.get("g1").is_none());
}

#[test]
fn a_live_migration_moves_the_running_guest_and_reports_qemus_figures() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let (h1, h2, g) = g1_running_on_h1(root.path(), (port, port));
    let t = h1_to_h2(&g, 77);
    assert_eq!(h1.qemu.incoming_address(&t), format!("127.0.0.1:{port}"));
    // The source starts before the target listens: it retries until the target is ready.
    let stats = std::thread::scope(|s| {
        let source = s.spawn(|| h1.qemu.migrate_out(&t, &AtomicBool::new(false)));
        h2.qemu.prepare_incoming(&t).unwrap();
        h2.qemu.prepare_incoming(&t).unwrap(); // idempotent
        source.join().unwrap()
    })
    .unwrap();
    assert!(stats.total_ms > 0 && stats.bytes > 0, "{stats:?}");
    eprintln!("QEMU live migration of a 32 MiB guest: {stats:?}");
    assert_eq!(h1.get("g1").unwrap().state, VmState::Migrated);
    // The copy that arrived waits, paused, until the agent starts it.
    let arrived = wait_state(&h2, "g1", |s| *s != VmState::Incoming);
    assert_eq!(arrived, VmState::Paused("paused".into()));
    h2.qemu.receive(&t, Duration::from_secs(10)).unwrap();
    assert_eq!(h2.get("g1").unwrap().state, VmState::Running);
    // Never two live copies: the source's copy is paused for good.
    assert!(!h1.get("g1").unwrap().state.is_live());
    // Asked again (an agent restarted after the transfer), the source reports the same end.
    let again = h1.qemu.migrate_out(&t, &AtomicBool::new(false)).unwrap();
    assert_eq!(again, stats);

    // And back (a rollback that found the guest already moved): the copy left on h1 makes way
    // for a fresh process that receives it.
    let back = Transfer { source: n("h2"), target: n("h1"), target_address: "127.0.0.1:7301".into(), ..t };
    let stats = std::thread::scope(|s| {
        let source = s.spawn(|| h2.qemu.migrate_out(&back, &AtomicBool::new(false)));
        h1.qemu.prepare_incoming(&back).unwrap();
        source.join().unwrap()
    })
    .unwrap();
    h1.qemu.receive(&back, Duration::from_secs(10)).unwrap();
    assert!(stats.total_ms > 0 && stats.bytes > 0, "{stats:?}");
    assert_eq!(h1.get("g1").unwrap().state, VmState::Running);
    assert_eq!(h2.get("g1").unwrap().state, VmState::Migrated);
}

#[test]
fn a_cancelled_or_refused_migration_leaves_the_guest_running_on_the_source() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let h1 = Host::new(root.path(), "h1", (port, port));
    let g = n("g1");
    h1.qemu.define(&g, &spec(32), 5).unwrap();
    h1.qemu.start(&g).unwrap();
    let t = h1_to_h2(&g, 78);
    // No target ever listens; the cancel flag ends the retries.
    let e = h1.qemu.migrate_out(&t, &AtomicBool::new(true)).unwrap_err();
    assert_eq!(e, DriverError::Cancelled);
    assert_eq!(h1.get("g1").unwrap().state, VmState::Running);
    let offline = Transfer { kind: MigrationKind::Offline, ..t };
    assert!(h1.qemu.migrate_out(&offline, &AtomicBool::new(false)).is_err());
    assert_eq!(h1.get("g1").unwrap().state, VmState::Running);
}

/// A source that reaches another guest's incoming process (the port reused by a migration into
/// the same host, or a listener left behind) fails: the stream's RAM block is named after its
/// guest, which the other process does not have. Neither process runs the moved guest's memory.
#[test]
fn a_transfer_that_reaches_another_guest_s_incoming_process_fails_and_runs_nothing() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let h1 = Host::sending_slowly(root.path(), "h1", (port, port));
    let h2 = Host::new(root.path(), "h2", (port, port));
    let (x, y) = (n("x"), n("y"));
    h1.qemu.define(&x, &spec(32), 5).unwrap();
    h1.qemu.start(&x).unwrap();
    h2.qemu.define(&y, &spec(32), 5).unwrap();
    // y waits for its own migration on the port; x's migration is sent to the same port.
    h2.qemu.prepare_incoming(&h1_to_h2(&y, 90)).unwrap();
    assert_eq!(h2.get("y").unwrap().state, VmState::Incoming);
    let e = h1.qemu.migrate_out(&h1_to_h2(&x, 91), &AtomicBool::new(false)).unwrap_err();
    eprintln!("refused as it should be: {e}");
    assert_eq!(h1.get("x").unwrap().state, VmState::Running, "x stays running on its source");
    assert!(!h2.get("y").map(|o| o.state == VmState::Running).unwrap_or(false), "y's process must not run x's memory");
}

/// The firmware is part of a guest's memory: a target whose `firmware` differs from the
/// source's refuses the stream, and the guest stays running on its source. A firmware file
/// that does not exist is refused when the driver is configured.
#[test]
fn a_target_with_other_firmware_refuses_the_guest_and_the_source_keeps_it() {
    assert!(
        qemu::light_firmware().is_some(),
        "qboot is missing: QEMU's firmware files come with qemu-system-x86 (scripts/install-deps)"
    );
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let h1 = Host::sending_slowly(root.path(), "h1", (port, port));
    let h2 = Host::booting(root.path(), "h2", (port, port), None);
    let g = n("g1");
    for h in [&h1, &h2] {
        h.qemu.define(&g, &spec(32), 5).unwrap();
    }
    h1.qemu.start(&g).unwrap();
    let t = h1_to_h2(&g, 7);
    h2.qemu.prepare_incoming(&t).unwrap();
    let e = h1.qemu.migrate_out(&t, &AtomicBool::new(false)).unwrap_err();
    eprintln!("refused as it should be: {e}");
    assert_eq!(h1.get("g1").unwrap().state, VmState::Running, "the guest stays running on its source");
    assert!(!h2.get("g1").is_some_and(|o| o.state == VmState::Running), "the target must not run it");

    let mut cfg = QemuConfig::new(root.path().join("h3"));
    cfg.firmware = Some(root.path().join("no-such-firmware.rom"));
    let e = Qemu::new(cfg).err().expect("a missing firmware file is refused");
    assert!(e.contains("driver.firmware") && e.contains("no such file"), "{e}");
}

/// A migration into a host where the guest still waits for an earlier attempt's stream (that
/// attempt failed before sending it; the process listens on the earlier migration's port)
/// replaces that process with one listening for this migration, and the guest moves.
#[test]
fn a_process_left_waiting_for_an_earlier_migration_makes_way_for_the_next() {
    let root = tempfile::tempdir().unwrap();
    let (h1, h2, g) = g1_running_on_h1(root.path(), free_ports_in_a_row(2));
    let attempt = |id: u64| h1_to_h2(&g, id);
    let (first, second) = (attempt(100), attempt(101));
    assert_ne!(h2.qemu.incoming_address(&first), h2.qemu.incoming_address(&second));
    h2.qemu.prepare_incoming(&first).unwrap();
    assert_eq!(h2.get("g1").unwrap().state, VmState::Incoming);
    h2.qemu.prepare_incoming(&second).unwrap();
    assert_eq!(h2.get("g1").unwrap().state, VmState::Incoming);
    let stats = h1.qemu.migrate_out(&second, &AtomicBool::new(false)).unwrap();
    assert!(stats.bytes > 0, "{stats:?}");
    h2.qemu.receive(&second, Duration::from_secs(10)).unwrap();
    assert_eq!(h2.get("g1").unwrap().state, VmState::Running);
    assert_eq!(h1.get("g1").unwrap().state, VmState::Migrated);
}

/// Waits (up to 10 s) until `guest`'s state on `h` is one `ok` accepts, and returns it.
fn wait_state(h: &Host, guest: &str, ok: impl Fn(&VmState) -> bool) -> VmState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = h.get(guest).map_or(VmState::ShutOff, |o| o.state);
        if ok(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "{guest} stays {state}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// After a failed or aborted migration: a copy that arrived on the target but was never
/// started is stopped there, and the source resumes the copy its transfer left paused, memory
/// and all (libvirt's Confirm after a failed Finish); a copy the target started is left for the
/// move back, and a process still waiting for the stream is stopped so that none can arrive.
#[test]
fn after_a_rollback_a_copy_that_never_ran_on_the_target_gives_way_to_the_paused_source() {
    let root = tempfile::tempdir().unwrap();
    let (h1, h2, g) = g1_running_on_h1(root.path(), free_ports_in_a_row(3));
    let e = h1.qemu.resume_migrated(&g).map(|()| h1.get("g1").unwrap().state);
    assert_eq!(e, Ok(VmState::Running), "resuming a running guest changes nothing");
    let pid = std::fs::read_to_string(h1.dir.join("g1/qemu.pid")).unwrap();

    // Sent whole, arrived paused, never started: the target stops it and says no copy ran.
    let first = h1_to_h2(&g, 200);
    h2.qemu.prepare_incoming(&first).unwrap();
    h1.qemu.migrate_out(&first, &AtomicBool::new(false)).unwrap();
    wait_state(&h2, "g1", |s| *s != VmState::Incoming);
    assert_eq!(h1.get("g1").unwrap().state, VmState::Migrated);
    assert!(!h2.qemu.release_incoming(&g).unwrap(), "no copy ran on the target");
    assert_eq!(h2.get("g1").unwrap().state, VmState::ShutOff);
    assert!(!h2.qemu.release_incoming(&g).unwrap(), "asked again, the same answer");
    h1.qemu.resume_migrated(&g).unwrap();
    assert_eq!(h1.get("g1").unwrap().state, VmState::Running);
    let again = std::fs::read_to_string(h1.dir.join("g1/qemu.pid")).unwrap();
    assert_eq!(again, pid, "the paused process resumed: not a fresh start");

    // A process still waiting for the stream is stopped: nothing can arrive any more.
    let second = h1_to_h2(&g, 201);
    h2.qemu.prepare_incoming(&second).unwrap();
    assert_eq!(h2.get("g1").unwrap().state, VmState::Incoming);
    assert!(!h2.qemu.release_incoming(&g).unwrap());
    assert_eq!(h2.get("g1").unwrap().state, VmState::ShutOff);

    // Started on the target, the copy ran there: it stays, to be sent back, and the source's
    // paused copy cannot be resumed by mistake once it is gone.
    let third = h1_to_h2(&g, 202);
    h2.qemu.prepare_incoming(&third).unwrap();
    h1.qemu.migrate_out(&third, &AtomicBool::new(false)).unwrap();
    h2.qemu.receive(&third, Duration::from_secs(10)).unwrap();
    assert!(h2.qemu.release_incoming(&g).unwrap(), "a copy that ran on the target is left");
    assert_eq!(h2.get("g1").unwrap().state, VmState::Running);
    h1.qemu.stop(&g, true).unwrap();
    let e = h1.qemu.resume_migrated(&g).unwrap_err().to_string();
    assert!(e.contains("no paused copy"), "{e}");
}

/// `n` consecutive ports no one listens on now.
fn free_ports_in_a_row(n: u16) -> (u16, u16) {
    for _ in 0..1000 {
        let lo = free_port();
        let Some(hi) = lo.checked_add(n - 1) else { continue };
        let held: Vec<TcpListener> = (lo..=hi).filter_map(|p| TcpListener::bind(("127.0.0.1", p)).ok()).collect();
        if held.len() == usize::from(n) {
            return (lo, hi);
        }
    }
    panic!("no {n} free consecutive ports");
}
