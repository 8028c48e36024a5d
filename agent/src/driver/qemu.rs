//! The `qemu` driver: a real hypervisor that runs on any Linux host with QEMU. Each guest is a
//! QEMU process the agent manages, controlled over QMP on a per-guest unix socket.
//!
//! Layout, one folder per guest under the driver's `state_dir`:
//!
//! ```text
//! <state_dir>/<guest>/definition.json   the guest as defined here (spec + the log's version)
//!                     running.json      the spec the current process was started with
//!                     qmp.sock          the QMP socket of the running process
//!                     qemu.pid          its pid (written by QEMU)
//!                     qemu.log          QEMU's own log (-D)
//!                     started           the agent started the copy that arrived here
//! ```
//!
//! Every host keeps the definition of every guest (the seed's "configuration file on every VM
//! host"); only the owner runs it. A definition changed while the guest runs is a *pending*
//! change: `running.json` still holds what the process runs with until the next start.
//!
//! QEMU is started with `-daemonize`: the launcher returns once the process is set up (its QMP
//! socket listens), and the guest does not die with the agent — an agent restart or crash must
//! never stop a VM. A pid is trusted only when `/proc/<pid>/cmdline` names this guest's QMP
//! socket, so a reused pid is never taken for a guest.
//!
//! Live migration is QEMU's own: the target starts the guest with `-incoming tcp:<addr>:<port>`
//! (the target's registered address; the port is chosen from `migration_ports` by the migration
//! id, so source and target agree without another round trip), the source sends QMP `migrate`
//! and polls `query-migrate` until `completed`; QEMU's `downtime` (the freeze time),
//! `total-time` and bytes transferred are the transfer's figures. The source's process then sits
//! in `postmigrate` (paused, unable to run again without an explicit `cont`) until the log says
//! the target owns the guest; only then is it stopped. The port does not say which guest
//! listens on it (two migrations into one host whose ids differ by the range's size, a listener
//! left by an earlier attempt); the guest's RAM block, named after the guest, does: a process
//! refuses a stream of another guest's memory.
//!
//! The target's process starts with `-S`: a guest that arrives stays paused until the agent
//! starts it (`cont`, [`Qemu::prepare_incoming`], called by the migration worker while the log
//! still has the migration transferring), and the agent marks it started (a `started` file)
//! just before. So after a failed or aborted migration the target tells, under the guest's lock,
//! a copy that never ran (stopped, and the source may resume its own paused copy: no guest
//! state is lost) from one that ran (it goes back), with no window in which QEMU could have
//! started it on its own ([`Qemu::release_incoming`]). Starting on the agent's word costs the
//! guest one poll of the driver (5 ms) of extra downtime, as libvirt's Finish step does.
//!
//! A target refuses such a stream (or one booted from other firmware) as soon as it reads the
//! stream's list of RAM blocks, and the source, still sending, fails with a reset connection.
//! QEMU's source does not wait for the target to load the stream (that needs the `return-path`
//! capability, which also makes a source whose final answer is lost resume its guest while the
//! target runs it), so a stream small enough to fit whole in the socket buffers — a tiny guest
//! of zero pages, ≈ 170 KB — can be answered `completed` before the target refused it: the
//! source then reports the transfer done while the target runs no copy of the guest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_protocol::{GuestSpec, MigrationKind, Name, Revision, TransferStats};

use super::qmp::{Qmp, QmpError};
use super::{DriverError, HypervisorDriver, Lifecycle, Moved, Observed, Transfer, VmState};

/// The `[driver] kind = "qemu"` settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// Where guests' definitions, sockets, pids and logs live.
    pub state_dir: PathBuf,
    /// The QEMU system emulator.
    #[serde(default = "default_binary")]
    pub binary: PathBuf,
    /// `kvm`, `tcg`, or `auto` (KVM when `/dev/kvm` can be opened, TCG otherwise).
    #[serde(default = "default_accel")]
    pub accel: String,
    /// The machine type. Source and target of a live migration must run the same one, and the
    /// same QEMU version or a compatible one.
    #[serde(default = "default_machine")]
    pub machine: String,
    /// The firmware guests boot (QEMU's `-bios`); unset: QEMU's default (SeaBIOS). The same on
    /// every host: the firmware is part of a guest's memory, and a target whose firmware
    /// differs refuses the migration stream. [`light_firmware`] suits guests with no disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// Incoming migrations listen on a port of this range (inclusive), on the host's registered
    /// address: libvirt's default range.
    #[serde(default = "default_ports")]
    pub migration_ports: (u16, u16),
    /// How long a graceful stop (ACPI power button) may take before the process is quit.
    #[serde(default = "default_powerdown_ms")]
    pub powerdown_timeout_ms: u64,
    /// How long a live migration may take before it is cancelled (the guest keeps running on
    /// the source).
    #[serde(default = "default_migrate_ms")]
    pub migrate_timeout_ms: u64,
    /// A live migration's bandwidth limit in KiB/s (QEMU's `max-bandwidth`), so moves leave
    /// room on the host's network; unset: QEMU's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_bandwidth_kib: Option<u64>,
}

fn default_binary() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}
fn default_accel() -> String {
    "auto".into()
}
fn default_machine() -> String {
    "q35".into()
}
fn default_ports() -> (u16, u16) {
    (49152, 49215)
}
fn default_powerdown_ms() -> u64 {
    30_000
}
fn default_migrate_ms() -> u64 {
    600_000
}

impl QemuConfig {
    pub fn new(state_dir: PathBuf) -> QemuConfig {
        QemuConfig {
            state_dir,
            binary: default_binary(),
            accel: default_accel(),
            machine: default_machine(),
            firmware: None,
            migration_ports: default_ports(),
            powerdown_timeout_ms: default_powerdown_ms(),
            migrate_timeout_ms: default_migrate_ms(),
            migration_bandwidth_kib: None,
        }
    }
}

/// qboot, QEMU's minimal firmware, when this machine has it (Debian ships it with QEMU): for
/// guests with no disk (tests, benchmarks, the local cluster). SeaBIOS spends about 3 s of a
/// core probing for a boot device each time such a guest starts, which for 30 guests started
/// together starves a 2-core machine for most of a minute; qboot finds none and halts the
/// virtual CPU at once. The guest still runs, answers QMP and migrates like any other.
pub fn light_firmware() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/share/qemu/qboot.rom");
    p.is_file().then_some(p)
}

/// A completed live migration as QEMU measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStats {
    /// `downtime`: how long the guest was frozen.
    pub freeze_ms: u64,
    /// `total-time`: from `migrate` to completion.
    pub total_ms: u64,
    /// `ram.transferred`.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Definition {
    spec: GuestSpec,
    /// The log's revision the agent wrote it from; absent in a definition another tool wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<Revision>,
}

pub struct Qemu {
    cfg: QemuConfig,
    accel: &'static str,
    /// One lock per guest: a start, a stop and a migration's preparation of the same guest
    /// never interleave (the reconciler and the migration worker act from different threads,
    /// and a stop must never reach a process launched after it was decided).
    locks: std::sync::Mutex<std::collections::HashMap<Name, std::sync::Arc<std::sync::Mutex<()>>>>,
}

const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// In a guest's folder: the agent started the copy that arrived here (see the module docs).
const STARTED: &str = "started";

fn failed(what: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(what.to_string())
}

impl Qemu {
    /// Checks the configuration and the binary, and creates the state directory.
    pub fn new(cfg: QemuConfig) -> Result<Qemu, String> {
        let accel = match cfg.accel.as_str() {
            "kvm" => "kvm",
            "tcg" => "tcg",
            "auto" if kvm_usable() => "kvm",
            "auto" => "tcg",
            other => return Err(format!("driver.accel = {other:?}: use \"kvm\", \"tcg\" or \"auto\"")),
        };
        let (lo, hi) = cfg.migration_ports;
        if lo == 0 || lo > hi {
            return Err(format!("driver.migration_ports = [{lo}, {hi}]: give [first, last] with 0 < first <= last"));
        }
        if let Some(f) = cfg.firmware.as_ref().filter(|f| !f.is_file()) {
            return Err(format!("driver.firmware {}: no such file", f.display()));
        }
        if cfg.powerdown_timeout_ms == 0 || cfg.migrate_timeout_ms == 0 {
            return Err("driver.powerdown_timeout_ms and driver.migrate_timeout_ms must be at least 1".into());
        }
        let probe = Command::new(&cfg.binary).arg("--version").stdin(Stdio::null()).output();
        match probe {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "driver.binary {} --version failed: {}",
                    cfg.binary.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "driver.binary {}: {e} (install QEMU: apt-get install qemu-system-x86)",
                    cfg.binary.display()
                ))
            }
        }
        fs::create_dir_all(&cfg.state_dir).map_err(|e| format!("driver.state_dir {}: {e}", cfg.state_dir.display()))?;
        Ok(Qemu { cfg, accel, locks: Default::default() })
    }

    /// The accelerator in use (`kvm` or `tcg`).
    pub fn accel(&self) -> &'static str {
        self.accel
    }

    fn dir(&self, guest: &Name) -> PathBuf {
        self.cfg.state_dir.join(guest.as_str())
    }

    fn socket(&self, guest: &Name) -> PathBuf {
        self.dir(guest).join("qmp.sock")
    }

    /// Writes (or replaces) this host's definition of the guest. A running process keeps the
    /// spec it was started with until its next start (a pending change).
    pub fn define(&self, guest: &Name, spec: &GuestSpec, version: Revision) -> Result<(), DriverError> {
        // Refuse what the hypervisor could not start, before it is the definition.
        qemu_devices(spec)?;
        let dir = self.dir(guest);
        fs::create_dir_all(&dir).map_err(|e| failed(format!("create {}: {e}", dir.display())))?;
        let text = serde_json::to_vec_pretty(&Definition { spec: spec.clone(), version: Some(version) })
            .expect("serializable");
        write_atomically(&dir.join("definition.json"), &text)
    }

    /// Removes the guest's definition. Refused while a process of it exists here.
    pub fn undefine(&self, guest: &Name) -> Result<(), DriverError> {
        if let Some(pid) = self.pid(guest) {
            return Err(failed(format!("guest {guest} has a QEMU process here (pid {pid}): stop it first")));
        }
        match fs::remove_dir_all(self.dir(guest)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(format!("remove {}: {e}", self.dir(guest).display()))),
        }
    }

    fn definition(&self, guest: &Name) -> Result<Option<Definition>, DriverError> {
        let path = self.dir(guest).join("definition.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| failed(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(failed(format!("read {}: {e}", path.display()))),
        }
    }

    fn running_spec(&self, guest: &Name) -> Option<GuestSpec> {
        let b = fs::read(self.dir(guest).join("running.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// The pid of this guest's QEMU process, when one is alive: the pid file names it and its
    /// command line names this guest's socket.
    fn pid(&self, guest: &Name) -> Option<i32> {
        self.process(guest).map(|(pid, _)| pid)
    }

    /// This guest's live QEMU process: its pid and command line.
    fn process(&self, guest: &Name) -> Option<(i32, Vec<String>)> {
        let text = fs::read_to_string(self.dir(guest).join("qemu.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let socket = format!("unix:{},server=on,wait=off", self.socket(guest).display());
        // A zombie has an empty command line; it is not running anything.
        args.contains(&socket).then_some((pid, args))
    }

    /// Where this guest's process waits for a migration stream (its `-incoming` URI), if it was
    /// started to receive one.
    fn listens_on(&self, guest: &Name) -> Option<String> {
        let (_, args) = self.process(guest)?;
        args.iter().position(|a| a == "-incoming").and_then(|i| args.get(i + 1)).cloned()
    }

    fn qmp(&self, guest: &Name) -> Result<Qmp, QmpError> {
        Qmp::connect(&self.socket(guest), QMP_TIMEOUT)
    }

    /// The guest's state on this host.
    pub fn state(&self, guest: &Name) -> VmState {
        let Some(_pid) = self.pid(guest) else { return VmState::ShutOff };
        let status = self.qmp(guest).and_then(|mut q| q.status());
        match status {
            Ok(s) => match s.as_str() {
                "running" => VmState::Running,
                "inmigrate" => VmState::Incoming,
                "postmigrate" => VmState::Migrated,
                _ => VmState::Paused(s),
            },
            // Exited between the pid check and the connection.
            Err(_) if self.pid(guest).is_none() => VmState::ShutOff,
            Err(e) => VmState::Unresponsive(e.to_string()),
        }
    }

    /// Every guest this host holds a folder for: defined ones and processes left running.
    pub fn observe(&self) -> Result<Vec<Observed>, DriverError> {
        let entries = fs::read_dir(&self.cfg.state_dir)
            .map_err(|e| failed(format!("read {}: {e}", self.cfg.state_dir.display())))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| failed(format!("read {}: {e}", self.cfg.state_dir.display())))?;
            let Some(name) = entry.file_name().to_str().and_then(|s| Name::new(s).ok()) else { continue };
            if !entry.path().is_dir() {
                continue;
            }
            // An unreadable definition reads as none: the reconciler rewrites it from the log
            // (or reports the guest, if the log does not know it).
            let defined = match self.definition(&name) {
                Ok(d) => d.map(|d| (d.spec, d.version)),
                Err(e) => {
                    tracing::warn!(guest = %name, %e, "unreadable definition");
                    None
                }
            };
            let state = self.state(&name);
            let running_spec = if state == VmState::ShutOff { None } else { self.running_spec(&name) };
            out.push(Observed { name, defined, state, running_spec });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn lock(&self, guest: &Name) -> std::sync::Arc<std::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(guest.clone()).or_default().clone()
    }

    /// Starts the guest from its definition; nothing when a process of it already exists.
    pub fn start(&self, guest: &Name) -> Result<(), DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.launch(guest, None)
    }

    /// Starts the guest waiting for a live migration on `listen` (`addr:port`); nothing when a
    /// process of it already exists.
    fn launch(&self, guest: &Name, incoming: Option<&str>) -> Result<(), DriverError> {
        if self.pid(guest).is_some() {
            return Ok(());
        }
        let def =
            self.definition(guest)?.ok_or_else(|| failed(format!("guest {guest} is not defined on this host")))?;
        let dir = self.dir(guest);
        let socket = self.socket(guest);
        let _ = fs::remove_file(&socket);
        let _ = fs::remove_file(dir.join("qemu.pid"));
        let mut args: Vec<String> = vec![
            "-name".into(),
            guest.to_string(),
            // The guest's memory is a RAM block named after the guest: a migration stream names
            // its RAM blocks, and a process refuses one whose blocks it does not have, so a
            // source that reaches another guest's incoming process (a port reused, a stale
            // listener) fails instead of that process running this guest's memory.
            "-object".into(),
            format!("memory-backend-ram,id={},size={}M", ram_block(guest), def.spec.memory_mib),
            "-machine".into(),
            format!("{},accel={},memory-backend={}", self.cfg.machine, self.accel, ram_block(guest)),
            "-m".into(),
            def.spec.memory_mib.to_string(),
            "-smp".into(),
            def.spec.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", socket.display()),
            "-pidfile".into(),
            dir.join("qemu.pid").display().to_string(),
            "-D".into(),
            dir.join("qemu.log").display().to_string(),
            "-daemonize".into(),
        ];
        if let Some(f) = &self.cfg.firmware {
            args.push("-bios".into());
            args.push(f.display().to_string());
        }
        args.extend(qemu_devices(&def.spec)?);
        if let Some(addr) = incoming {
            // Paused on arrival until the agent starts it (`cont`): see the module docs.
            args.push("-S".into());
            args.push("-incoming".into());
            args.push(format!("tcp:{addr}"));
        }
        let _ = fs::remove_file(dir.join(STARTED));
        // What the process will run with, before it runs: a crash between the two leaves a
        // record of a spec no process uses, which `observe` ignores for a stopped guest.
        write_atomically(&dir.join("running.json"), &serde_json::to_vec(&def.spec).expect("serializable"))?;
        let out = Command::new(&self.cfg.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| failed(format!("cannot run {}: {e}", self.cfg.binary.display())))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err: Vec<&str> = err.lines().filter(|l| !l.contains("warning:")).collect();
            return Err(failed(format!("QEMU did not start guest {guest}: {}", err.join("; "))));
        }
        tracing::info!(%guest, accel = self.accel, incoming, "QEMU started");
        Ok(())
    }

    /// Stops the guest: the ACPI power button, then `quit` once the timeout has passed (a guest
    /// without an operating system never answers the button), then SIGKILL. `hard` skips the
    /// button. Nothing when no process exists.
    pub fn stop(&self, guest: &Name, hard: bool) -> Result<(), DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.stop_locked(guest, hard)
    }

    /// Stops the guest only if it is still in the state `seen` (what a stop was decided from);
    /// true if it stopped it. A stop decided on a copy left behind must not reach the process a
    /// new migration started since.
    pub fn stop_if(&self, guest: &Name, hard: bool, seen: &VmState) -> Result<bool, DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.state(guest);
        if now != *seen && !(now.is_live() && seen.is_live()) {
            return Ok(false);
        }
        self.stop_locked(guest, hard).map(|()| true)
    }

    fn stop_locked(&self, guest: &Name, hard: bool) -> Result<(), DriverError> {
        let Some(pid) = self.pid(guest) else { return Ok(()) };
        if !hard {
            if let Ok(mut q) = self.qmp(guest) {
                if q.execute("system_powerdown", json!({})).is_ok()
                    && self.wait_gone(guest, Duration::from_millis(self.cfg.powerdown_timeout_ms))
                {
                    return Ok(());
                }
            }
        }
        if let Ok(mut q) = self.qmp(guest) {
            // `quit` answers and then exits; the connection may break first.
            let _ = q.execute("quit", json!({}));
            if self.wait_gone(guest, Duration::from_secs(5)) {
                return Ok(());
            }
        }
        // SAFETY: kill(2) with a pid checked to be this guest's QEMU process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        if self.wait_gone(guest, Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(failed(format!("guest {guest}: QEMU process {pid} survives SIGKILL")))
        }
    }

    fn wait_gone(&self, guest: &Name, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self.pid(guest).is_none() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Where the target of migration `t` listens: its registered address's host part and the
    /// port the migration id selects.
    pub fn incoming_address(&self, t: &Transfer) -> String {
        let (lo, hi) = self.cfg.migration_ports;
        let span = u64::from(hi - lo) + 1;
        let port = u64::from(lo) + t.migration.0 % span;
        format!("{}:{port}", host_part(&t.target_address))
    }

    /// Target: starts the guest waiting for the transfer (idempotent).
    pub fn prepare_incoming(&self, t: &Transfer) -> Result<(), DriverError> {
        let lock = self.lock(&t.guest);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let address = self.incoming_address(t);
        match self.state(&t.guest) {
            VmState::Running => Ok(()),
            VmState::Incoming if self.listens_on(&t.guest) == Some(format!("tcp:{address}")) => Ok(()),
            VmState::Paused(s) if s == "paused" && self.arrived_unstarted(&t.guest) => self.start_arrived(&t.guest),
            // Waiting for the stream of an earlier migration that ended without sending it (a
            // failed or aborted attempt whose rollback watch has not removed it yet): that
            // process listens on the earlier migration's port, where this source does not
            // connect. It holds no guest yet, so it is replaced by one listening for this one.
            VmState::Incoming => {
                tracing::info!(guest = %t.guest, migration = %t.migration, listens_on = ?self.listens_on(&t.guest), "replacing a process waiting for an earlier migration");
                self.stop_locked(&t.guest, true)?;
                self.launch(&t.guest, Some(&address))
            }
            VmState::ShutOff => self.launch(&t.guest, Some(&address)),
            // The copy a completed migration left here, paused for good: the guest comes back
            // into a fresh process (a rollback that found the guest already moved, or a move
            // back before the reconciler removed the copy).
            VmState::Migrated => {
                self.stop_locked(&t.guest, true)?;
                self.launch(&t.guest, Some(&address))
            }
            other => Err(failed(format!("guest {} cannot receive a migration here: it is {other:?}", t.guest))),
        }
    }

    /// Target: receives the guest of `t` and starts it, waiting up to `within` for the stream
    /// (what the migration worker does over its polls, in one call: for tools and tests).
    pub fn receive(&self, t: &Transfer, within: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + within;
        loop {
            self.prepare_incoming(t)?;
            if self.state(&t.guest) == VmState::Running {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("guest {} did not arrive within {within:?}", t.guest)));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Of a guest QEMU holds `paused`: a copy that a completed incoming migration brought here
    /// and the agent has not started yet, which holds the guest's memory but never ran here.
    /// Read under the guest's lock.
    fn arrived_unstarted(&self, guest: &Name) -> bool {
        if self.listens_on(guest).is_none() || self.dir(guest).join(STARTED).exists() {
            return false;
        }
        self.qmp(guest)
            .and_then(|mut q| q.execute("query-migrate", json!({})))
            .is_ok_and(|r| r.get("status").and_then(|s| s.as_str()) == Some("completed"))
    }

    /// Starts a copy that arrived, marking it started first: a crash between the two leaves it
    /// counted as having run, the safe side.
    fn start_arrived(&self, guest: &Name) -> Result<(), DriverError> {
        write_atomically(&self.dir(guest).join(STARTED), b"")?;
        self.qmp(guest)
            .and_then(|mut q| q.execute("cont", json!({})))
            .map_err(|e| failed(format!("start guest {guest} after its arrival: {e}")))?;
        tracing::info!(%guest, "guest arrived and started");
        Ok(())
    }

    /// Source of a failed or aborted migration: resumes the copy a completed transfer left
    /// paused (`postmigrate`), once the target said it holds no copy.
    pub fn resume_migrated(&self, guest: &Name) -> Result<(), DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.state(guest) {
            VmState::Migrated => {
                self.qmp(guest)
                    .and_then(|mut q| q.execute("cont", json!({})))
                    .map_err(|e| failed(format!("resume guest {guest}: {e}")))?;
                tracing::info!(%guest, "guest resumed where its migration left it paused");
                Ok(())
            }
            VmState::Running => Ok(()),
            other => Err(failed(format!("guest {guest} is {other} here: there is no paused copy to resume"))),
        }
    }

    /// Target of a failed or aborted migration: stops a process still waiting for the guest
    /// and a copy that arrived but was never started; true when a copy that ran here is left.
    pub fn release_incoming(&self, guest: &Name) -> Result<bool, DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.state(guest) {
            VmState::ShutOff | VmState::Migrated => Ok(false),
            VmState::Incoming => {
                tracing::info!(%guest, "stopping the process waiting for the guest: its migration ended");
                self.stop_locked(guest, true).map(|()| false)
            }
            VmState::Paused(s) if s == "paused" && self.arrived_unstarted(guest) => {
                tracing::info!(%guest, "stopping the copy that arrived after its migration ended; it never ran here");
                self.stop_locked(guest, true).map(|()| false)
            }
            VmState::Running | VmState::Paused(_) => Ok(true),
            VmState::Unresponsive(why) => Err(failed(format!("guest {guest} does not answer here: {why}"))),
        }
    }

    /// Source: moves the running guest to the target with QEMU's live migration. Retries the
    /// connection while the target is not listening yet, until the migration timeout.
    pub fn migrate_out(&self, t: &Transfer, cancel: &AtomicBool) -> Result<MigrationStats, DriverError> {
        if t.kind != MigrationKind::Online {
            return Err(failed("the qemu driver moves a running guest online only; an offline move needs no transfer"));
        }
        let uri = format!("tcp:{}", self.incoming_address(t));
        let deadline = Instant::now() + Duration::from_millis(self.cfg.migrate_timeout_ms);
        // One short QMP session per command: QEMU serves one client per socket at a time, and
        // the agent's observations must not wait for a whole migration.
        let run = |command: &str, args: serde_json::Value| -> Result<serde_json::Value, QmpError> {
            self.qmp(&t.guest)?.execute(command, args)
        };
        let lost = |e: QmpError| failed(format!("guest {}: {e}", t.guest));
        loop {
            // A completed migration of an earlier attempt (an agent restarted mid-transfer).
            // Only an outgoing one counts: a process that *received* the guest also answers
            // `completed`, without the outgoing figures.
            // A guest resumed after its move was rolled back (`resume_migrated`) still answers
            // that completed migration: only a paused copy's counts.
            let before = run("query-migrate", json!({})).map_err(lost)?;
            let outgoing = before.get("total-time").is_some();
            match before.get("status").and_then(|s| s.as_str()) {
                Some("completed")
                    if outgoing && self.qmp(&t.guest).and_then(|mut q| q.status()).map_err(lost)? == "postmigrate" =>
                {
                    return Ok(stats(&before))
                }
                // Still under way (an agent restarted mid-transfer: QEMU migrates on its own):
                // follow it instead of starting another.
                Some("setup" | "active" | "pre-switchover" | "device" | "wait-unplug") => {}
                _ => {
                    let status = self.qmp(&t.guest).and_then(|mut q| q.status()).map_err(lost)?;
                    if status != "running" {
                        return Err(failed(format!("guest {} is {status} here, not running", t.guest)));
                    }
                    if cancel.load(Ordering::SeqCst) {
                        return Err(DriverError::Cancelled);
                    }
                    if let Some(kib) = self.cfg.migration_bandwidth_kib {
                        run("migrate-set-parameters", json!({ "max-bandwidth": kib.saturating_mul(1024) }))
                            .map_err(lost)?;
                    }
                    match run("migrate", json!({ "uri": uri })) {
                        Ok(_) => {}
                        // The target may not listen yet: try again until the deadline.
                        Err(QmpError::Command { desc, .. })
                            if desc.contains("refused") && Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        Err(e) => return Err(lost(e)),
                    }
                }
            }
            loop {
                if cancel.load(Ordering::SeqCst) {
                    let _ = run("migrate_cancel", json!({}));
                    return Err(DriverError::Cancelled);
                }
                let r = run("query-migrate", json!({})).map_err(lost)?;
                match r.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                    "completed" => return Ok(stats(&r)),
                    "failed" | "cancelled" => {
                        let why = r.get("error-desc").and_then(|s| s.as_str()).unwrap_or("no reason given").to_string();
                        // The target may not listen yet: try again until the deadline.
                        if Instant::now() < deadline && why.contains("refused") {
                            std::thread::sleep(Duration::from_millis(20));
                            break;
                        }
                        return Err(failed(format!("QEMU migration of {} to {uri} failed: {why}", t.guest)));
                    }
                    _ => {}
                }
                if Instant::now() >= deadline {
                    let _ = run("migrate_cancel", json!({}));
                    return Err(failed(format!(
                        "QEMU migration of {} did not complete within {} ms and was cancelled",
                        t.guest, self.cfg.migrate_timeout_ms
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

impl Lifecycle for Qemu {
    fn observe(&self) -> Result<Vec<Observed>, DriverError> {
        Qemu::observe(self)
    }
    fn state(&self, guest: &Name) -> Result<VmState, DriverError> {
        Ok(Qemu::state(self, guest))
    }
    fn define(&self, guest: &Name, spec: &GuestSpec, version: Revision) -> Result<(), DriverError> {
        Qemu::define(self, guest, spec, version)
    }
    fn undefine(&self, guest: &Name) -> Result<(), DriverError> {
        Qemu::undefine(self, guest)
    }
    fn start(&self, guest: &Name) -> Result<(), DriverError> {
        Qemu::start(self, guest)
    }
    fn stop(&self, guest: &Name, hard: bool) -> Result<(), DriverError> {
        Qemu::stop(self, guest, hard)
    }
    fn stop_if(&self, guest: &Name, hard: bool, seen: &VmState) -> Result<bool, DriverError> {
        Qemu::stop_if(self, guest, hard, seen)
    }
    fn resume_migrated(&self, guest: &Name) -> Result<(), DriverError> {
        Qemu::resume_migrated(self, guest)
    }
    fn release_incoming(&self, guest: &Name) -> Result<bool, DriverError> {
        Qemu::release_incoming(self, guest)
    }
}

impl HypervisorDriver for Qemu {
    /// Online: QEMU's live migration. Offline: every host already holds the definition, so
    /// nothing moves; the guest must not run here — with a stop allowed (`offline_stop`) it is
    /// shut down first (gracefully, then forcibly after the power-down timeout), and the
    /// target's agent starts it once the log says the target owns it.
    fn transfer(&self, t: &Transfer, cancel: &AtomicBool) -> Result<Moved, DriverError> {
        match t.kind {
            MigrationKind::Online => self.migrate_out(t, cancel).map(|s| Moved {
                freeze_ms: Some(s.freeze_ms),
                stats: Some(TransferStats { total_time_ms: s.total_ms, transferred_bytes: s.bytes }),
            }),
            MigrationKind::Offline | MigrationKind::OfflineStop => match self.state(&t.guest) {
                s if s.is_live() && t.kind == MigrationKind::OfflineStop => {
                    tracing::info!(guest = %t.guest, migration = %t.migration, "stopping the guest for its offline move");
                    self.stop(&t.guest, false).map(|()| Moved::default())
                }
                s if s.is_live() => Err(failed(format!(
                    "guest {} runs here ({s}): an offline move needs it stopped (--allow-stop)",
                    t.guest
                ))),
                _ => Ok(Moved::default()),
            },
        }
    }

    fn runs_here(&self, guest: &Name, _owner: &Name) -> Result<bool, DriverError> {
        Ok(self.state(guest) == VmState::Running)
    }

    fn prepare_incoming(&self, t: &Transfer) -> Result<(), DriverError> {
        match t.kind {
            MigrationKind::Online => Qemu::prepare_incoming(self, t),
            MigrationKind::Offline | MigrationKind::OfflineStop => Ok(()),
        }
    }

    /// A QMP query costs a socket round trip: the end of a live migration (tens of
    /// milliseconds for a small guest) is noticed within a few milliseconds.
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(5)
    }

    fn lifecycle(&self) -> Option<&dyn Lifecycle> {
        Some(self)
    }
}

fn stats(r: &serde_json::Value) -> MigrationStats {
    let n = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_u64()).unwrap_or(0);
    MigrationStats {
        freeze_ms: n(r.get("downtime")),
        total_ms: n(r.get("total-time")),
        bytes: n(r.get("ram").and_then(|ram| ram.get("transferred"))),
    }
}

/// `host:port`, `[v6]:port` or a bare host → the host part, as QEMU's `tcp:` URI wants it.
/// The id of the guest's RAM block (a QEMU id starts with a letter; a guest name may not).
fn ram_block(guest: &Name) -> String {
    format!("ram-{guest}")
}

fn host_part(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return &address[..end + 2];
        }
    }
    match address.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => address,
    }
}

/// QEMU's option syntax escapes a comma by doubling it; a value can then never add an option.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// The disk and network options for a guest's attachments.
///
/// A disk is the absolute path of an image or block device (`qcow2` when its name says so, raw
/// otherwise). A network is `user` (QEMU's user-mode network), `bridge:<bridge>` or
/// `tap:<interface>`, each as a virtio NIC. Anything else is refused with the forms accepted.
pub fn qemu_devices(spec: &GuestSpec) -> Result<Vec<String>, DriverError> {
    let mut args = Vec::new();
    for disk in &spec.disks {
        if !disk.starts_with('/') {
            return Err(failed(format!(
                "disk {disk:?}: the qemu driver takes the absolute path of an image or device"
            )));
        }
        let format = if disk.ends_with(".qcow2") { "qcow2" } else { "raw" };
        args.push("-drive".into());
        args.push(format!("file={},if=virtio,format={format},cache=none", escape(disk)));
    }
    for net in &spec.networks {
        let nic = match net.split_once(':') {
            None if net == "user" => "user,model=virtio-net-pci".to_string(),
            Some(("bridge", br)) if !br.is_empty() => format!("bridge,br={},model=virtio-net-pci", escape(br)),
            Some(("tap", ifname)) if !ifname.is_empty() => {
                format!("tap,ifname={},script=no,downscript=no,model=virtio-net-pci", escape(ifname))
            }
            _ => {
                return Err(failed(format!(
                    "network {net:?}: the qemu driver takes user, bridge:<bridge> or tap:<interface>"
                )))
            }
        };
        args.push("-nic".into());
        args.push(nic);
    }
    if spec.networks.is_empty() {
        args.push("-nic".into());
        args.push("none".into());
    }
    Ok(args)
}

/// KVM is usable when `/dev/kvm` opens for reading and writing.
fn kvm_usable() -> bool {
    fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    crate::store::atomic_write(path, bytes).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_keep_their_host_part() {
        assert_eq!(host_part("127.0.0.1:7301"), "127.0.0.1");
        assert_eq!(host_part("h2.example"), "h2.example");
        assert_eq!(host_part("[fd00::2]:7100"), "[fd00::2]");
        assert_eq!(host_part("fd00::2"), "fd00::2");
    }

    fn spec(disks: &[&str], networks: &[&str]) -> GuestSpec {
        GuestSpec {
            vcpus: 1,
            memory_mib: 32,
            disks: disks.iter().map(|s| s.to_string()).collect(),
            networks: networks.iter().map(|s| s.to_string()).collect(),
            online_migration: true,
            cluster_node: false,
            package: None,
            anti_affinity: None,
        }
    }

    #[test]
    fn attachments_become_options_that_cannot_inject_more() {
        let args = qemu_devices(&spec(&["/srv/a.qcow2", "/dev/vg0/b,readonly=on"], &["user", "tap:tap0"])).unwrap();
        assert_eq!(
            args,
            [
                "-drive",
                "file=/srv/a.qcow2,if=virtio,format=qcow2,cache=none",
                "-drive",
                "file=/dev/vg0/b,,readonly=on,if=virtio,format=raw,cache=none",
                "-nic",
                "user,model=virtio-net-pci",
                "-nic",
                "tap,ifname=tap0,script=no,downscript=no,model=virtio-net-pci",
            ]
        );
        assert_eq!(qemu_devices(&spec(&[], &[])).unwrap(), ["-nic", "none"]);
        let e = qemu_devices(&spec(&["avio_stor:/dev/vg01/lvol1"], &[])).unwrap_err().to_string();
        assert!(e.contains("absolute path"), "{e}");
        let e = qemu_devices(&spec(&[], &["avio_lan:vswitch0"])).unwrap_err().to_string();
        assert!(e.contains("user, bridge:<bridge> or tap:<interface>"), "{e}");
    }

    #[test]
    fn bad_settings_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = QemuConfig::new(dir.path().join("vms"));
        c.accel = "xen".into();
        assert!(Qemu::new(c.clone()).err().unwrap().contains("\"kvm\", \"tcg\" or \"auto\""));
        c.accel = "auto".into();
        c.migration_ports = (50000, 49000);
        assert!(Qemu::new(c.clone()).err().unwrap().contains("first <= last"));
        c.migration_ports = default_ports();
        c.binary = dir.path().join("no-such-qemu");
        assert!(Qemu::new(c).err().unwrap().contains("apt-get install qemu-system-x86"));
    }
}
