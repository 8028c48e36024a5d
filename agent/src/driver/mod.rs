//! Hypervisor drivers: how an agent moves a guest and finds out where it runs. One trait, two
//! drivers (SPEC §6):
//!
//! - [`Simulated`]: a stand-in hypervisor for tests, the demo and dry runs. Which host runs a
//!   guest is a file in a directory shared by all simulated hosts (`<state_dir>/running/<guest>`,
//!   holding the host's name; a guest never moved runs where the log says). Transfer and freeze
//!   times are configurable, and faults are injected per guest by writing `fail`, `hang` or
//!   `crash` into `<state_dir>/faults/<guest>`; the next transfer of that guest consumes it.
//! - [`command::CommandDriver`]: runs the operator's own tools (Integrity VM's `hpvm*`, libvirt's
//!   `virsh`, Serviceguard's `cmmodpkg`) from argument templates, without a shell, with a
//!   timeout, capturing their output: moves only, or a whole lifecycle and package switching.
//! - [`qemu::Qemu`]: guests as QEMU processes the agent manages itself.
//!
//! The agent wraps whichever it runs in [`timed::Timed`], which times every call into its
//! metrics.
//!
//! Drivers are synchronous (they block on a hypervisor) and are called from blocking threads. A
//! transfer watches `cancel` and stops when it is set (the migration was aborted or failed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_protocol::{GuestSpec, MigrationId, MigrationKind, Name, Revision, TransferStats};

pub mod command;
pub mod qemu;
pub mod qmp;
pub mod timed;

use command::{CommandConfig, CommandDriver};

pub use switchyard_protocol::reconcile::{Observed, SwitchingState, VmState};

/// One transfer the source host is asked to run.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub migration: MigrationId,
    pub guest: Name,
    pub source: Name,
    pub target: Name,
    /// The target's address as registered (what the hypervisor's tool connects to).
    pub target_address: String,
    pub kind: MigrationKind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    /// The hypervisor refused or failed; the guest still runs on the source.
    #[error("{0}")]
    Failed(String),
    /// Stopped because the migration was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// What a finished transfer measured, as far as the hypervisor tells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// How long the guest was frozen.
    pub freeze_ms: Option<u64>,
    /// The whole transfer's time and bytes (QEMU's `total-time` and `ram.transferred`).
    pub stats: Option<TransferStats>,
}

impl Moved {
    pub fn frozen(freeze_ms: Option<u64>) -> Moved {
        Moved { freeze_ms, stats: None }
    }
}

pub trait HypervisorDriver: Send + Sync {
    /// Moves the guest from this host to the target.
    fn transfer(&self, t: &Transfer, cancel: &AtomicBool) -> Result<Moved, DriverError>;

    /// Does `guest` run on this host? `owner` is where the log says it runs, for drivers that
    /// only know about guests they moved.
    fn runs_here(&self, guest: &Name, owner: &Name) -> Result<bool, DriverError>;

    /// Target of a transfer: get ready to receive the guest (e.g. start it waiting for the
    /// incoming migration), and start it once it arrived if the hypervisor holds it paused
    /// until told (QEMU's `-S`). Idempotent; called until the guest runs here.
    fn prepare_incoming(&self, _t: &Transfer) -> Result<(), DriverError> {
        Ok(())
    }

    /// How often the migration worker asks this driver about a transfer under way (its end,
    /// the guest's arrival on the target). A driver whose every call starts a process deserves
    /// a slower pace than one that asks a socket.
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(100)
    }

    /// The driver's guest lifecycle, when it manages one: the agent then reconciles this
    /// host's hypervisor with the log ([`crate::reconcile`]).
    fn lifecycle(&self) -> Option<&dyn Lifecycle> {
        None
    }

    /// The cluster manager's package switching, when the driver reaches one: the agent then
    /// keeps it as the log says ([`crate::reconcile`]), and disables it before moving a
    /// packaged guest online.
    fn switching(&self) -> Option<&dyn PackageSwitching> {
        None
    }
}

/// Package switching on a cluster manager. Setting a value it already has is harmless.
pub trait PackageSwitching: Send + Sync {
    /// Every package the cluster manager knows.
    fn view(&self) -> Result<BTreeMap<Name, SwitchingState>, DriverError>;
    /// Enables or disables switching globally (`node: None`) or on one node.
    fn set(&self, package: &Name, node: Option<&Name>, enabled: bool) -> Result<(), DriverError>;
}

/// A hypervisor whose guests the agent defines, starts, stops and reads back. Every call is
/// idempotent: asked twice, it does the work once.
pub trait Lifecycle: Send + Sync {
    /// Every guest the hypervisor holds on this host.
    fn observe(&self) -> Result<Vec<Observed>, DriverError>;
    /// One guest's state here (`ShutOff` when it is not even defined).
    fn state(&self, guest: &Name) -> Result<VmState, DriverError>;
    /// Writes or replaces the guest's definition (`version`: the log's revision of it).
    fn define(&self, guest: &Name, spec: &GuestSpec, version: Revision) -> Result<(), DriverError>;
    /// Removes the definition; refused while a copy of the guest exists here.
    fn undefine(&self, guest: &Name) -> Result<(), DriverError>;
    /// Starts the guest from its definition.
    fn start(&self, guest: &Name) -> Result<(), DriverError>;
    /// Stops the guest: gracefully (then forcibly after a timeout), or at once when `hard`.
    fn stop(&self, guest: &Name, hard: bool) -> Result<(), DriverError>;
    /// Stops the guest only if its state here is still `seen` (any live state counts as any
    /// other), atomically with the driver's other actions on it; true if it stopped it.
    fn stop_if(&self, guest: &Name, hard: bool, seen: &VmState) -> Result<bool, DriverError>;

    /// Source of a failed or aborted migration whose target holds no copy of the guest: resumes
    /// the copy a completed transfer left paused here (`Migrated`). Refused in any other state.
    fn resume_migrated(&self, guest: &Name) -> Result<(), DriverError> {
        Err(DriverError::Failed(format!("this hypervisor cannot resume guest {guest} where a migration left it")))
    }

    /// Target of a failed or aborted migration: makes sure no copy of the guest that never ran
    /// here is left, nor a process that could still receive one, atomically with the start of
    /// an arrived copy ([`HypervisorDriver::prepare_incoming`]). True when a copy that ran here
    /// is left (it goes back to the source). A hypervisor whose copies start on arrival can
    /// only say whether one is live.
    fn release_incoming(&self, guest: &Name) -> Result<bool, DriverError> {
        Ok(self.state(guest)?.is_live())
    }
}

/// The `[driver]` section of the agent configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DriverConfig {
    Simulated {
        /// Shared by every simulated host of the cluster.
        state_dir: PathBuf,
        #[serde(default = "default_transfer_ms")]
        transfer_ms: u64,
        #[serde(default = "default_freeze_ms")]
        freeze_ms: u64,
    },
    /// The operator's tools, from templates ([`command`]).
    Command(Box<CommandConfig>),
    /// Guests are QEMU processes this agent manages ([`qemu`]).
    Qemu(qemu::QemuConfig),
}

fn default_transfer_ms() -> u64 {
    2000
}
fn default_freeze_ms() -> u64 {
    150
}

impl DriverConfig {
    /// Builds the driver for `host`, checking the configuration.
    pub fn build(&self, host: &Name) -> Result<Box<dyn HypervisorDriver>, String> {
        match self {
            DriverConfig::Simulated { state_dir, transfer_ms, freeze_ms } => {
                let d = Simulated::new(state_dir, host.clone(), *transfer_ms, *freeze_ms)
                    .map_err(|e| format!("driver.state_dir {}: {e}", state_dir.display()))?;
                Ok(Box::new(d))
            }
            DriverConfig::Command(cfg) => Ok(Box::new(CommandDriver::new(cfg)?)),
            DriverConfig::Qemu(cfg) => Ok(Box::new(qemu::Qemu::new(cfg.clone())?)),
        }
    }
}

/// A fault injected into the next transfer of one guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The transfer fails halfway; the guest stays on the source.
    Fail,
    /// The transfer never finishes (until cancelled).
    Hang,
    /// The agent process dies halfway through the transfer.
    Crash,
}

/// The simulated hypervisor.
pub struct Simulated {
    dir: PathBuf,
    host: Name,
    transfer: Duration,
    freeze: Duration,
}

impl Simulated {
    pub fn new(dir: &Path, host: Name, transfer_ms: u64, freeze_ms: u64) -> std::io::Result<Simulated> {
        std::fs::create_dir_all(dir.join("running"))?;
        std::fs::create_dir_all(dir.join("faults"))?;
        Ok(Simulated {
            dir: dir.to_path_buf(),
            host,
            transfer: Duration::from_millis(transfer_ms),
            freeze: Duration::from_millis(freeze_ms),
        })
    }

    /// Where the simulated hypervisors say `guest` runs, if it was ever moved.
    pub fn location(dir: &Path, guest: &Name) -> Option<String> {
        std::fs::read_to_string(dir.join("running").join(guest.as_str())).ok().map(|s| s.trim().to_string())
    }

    /// Arms a fault for the next transfer of `guest`.
    pub fn inject(dir: &Path, guest: &Name, fault: Fault) -> std::io::Result<()> {
        let word = match fault {
            Fault::Fail => "fail",
            Fault::Hang => "hang",
            Fault::Crash => "crash",
        };
        std::fs::create_dir_all(dir.join("faults"))?;
        std::fs::write(dir.join("faults").join(guest.as_str()), word)
    }

    fn take_fault(&self, guest: &Name) -> Option<Fault> {
        let path = self.dir.join("faults").join(guest.as_str());
        let word = std::fs::read_to_string(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        match word.trim() {
            "fail" => Some(Fault::Fail),
            "hang" => Some(Fault::Hang),
            "crash" => Some(Fault::Crash),
            other => {
                tracing::warn!(fault = other, %guest, "unknown simulated fault ignored");
                None
            }
        }
    }

    /// Sleeps `d` unless cancelled first.
    fn wait(d: Duration, cancel: &AtomicBool) -> Result<(), DriverError> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if cancel.load(Ordering::SeqCst) {
                return Err(DriverError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(10).min(end.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    fn set_location(&self, guest: &Name, host: &Name) -> Result<(), DriverError> {
        let dir = self.dir.join("running");
        let tmp = dir.join(format!(".{guest}.{}.tmp", self.host));
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, host.as_str())?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, dir.join(guest.as_str()))
        };
        write().map_err(|e| DriverError::Failed(format!("simulated hypervisor state: {e}")))
    }
}

impl HypervisorDriver for Simulated {
    fn transfer(&self, t: &Transfer, cancel: &AtomicBool) -> Result<Moved, DriverError> {
        if !self.runs_here(&t.guest, &t.source)? {
            return Err(DriverError::Failed(format!("guest {} does not run on {}", t.guest, self.host)));
        }
        let fault = self.take_fault(&t.guest);
        if fault.is_some() {
            tracing::warn!(?fault, guest = %t.guest, "simulated fault injected");
        }
        let half = self.transfer / 2;
        Self::wait(half, cancel)?;
        match fault {
            Some(Fault::Fail) => {
                return Err(DriverError::Failed("simulated failure: target refused the memory transfer".into()))
            }
            Some(Fault::Crash) => {
                eprintln!("simulated crash of the agent in the middle of a transfer");
                std::process::abort();
            }
            Some(Fault::Hang) => loop {
                Self::wait(Duration::from_secs(3600), cancel)?;
            },
            None => {}
        }
        Self::wait(self.transfer - half, cancel)?;
        // The final step: the guest is frozen, its last dirty pages copied, and it resumes on
        // the target. Cancelling is still possible up to here.
        let frozen = Instant::now();
        Self::wait(self.freeze, cancel)?;
        self.set_location(&t.guest, &t.target)?;
        Ok(Moved::frozen(Some(frozen.elapsed().as_millis() as u64)))
    }

    fn runs_here(&self, guest: &Name, owner: &Name) -> Result<bool, DriverError> {
        Ok(match Self::location(&self.dir, guest) {
            Some(h) => h == self.host.as_str(),
            None => owner == &self.host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    /// An online move of `guest` from h1 to h2 (the drivers' unit tests share it).
    pub(crate) fn transfer(guest: &str) -> Transfer {
        Transfer {
            migration: MigrationId(5),
            guest: n(guest),
            source: n("h1"),
            target: n("h2"),
            target_address: "h2.example:7100".into(),
            kind: MigrationKind::Online,
        }
    }

    #[test]
    fn simulated_transfer_moves_the_guest_and_reports_the_freeze_time() {
        let dir = tempfile::tempdir().unwrap();
        let h1 = Simulated::new(dir.path(), n("h1"), 20, 5).unwrap();
        let h2 = Simulated::new(dir.path(), n("h2"), 20, 5).unwrap();
        assert!(h1.runs_here(&n("g1"), &n("h1")).unwrap());
        assert!(!h2.runs_here(&n("g1"), &n("h1")).unwrap());
        let moved = h1.transfer(&transfer("g1"), &AtomicBool::new(false)).unwrap();
        assert!(moved.freeze_ms.unwrap() >= 5);
        assert!(!h1.runs_here(&n("g1"), &n("h1")).unwrap(), "the log's owner no longer decides");
        assert!(h2.runs_here(&n("g1"), &n("h1")).unwrap());
    }

    #[test]
    fn simulated_faults_are_consumed_once_and_leave_the_guest_on_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let h1 = Simulated::new(dir.path(), n("h1"), 20, 5).unwrap();
        Simulated::inject(dir.path(), &n("g1"), Fault::Fail).unwrap();
        let e = h1.transfer(&transfer("g1"), &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(e, DriverError::Failed(m) if m.contains("simulated failure")));
        assert!(h1.runs_here(&n("g1"), &n("h1")).unwrap());
        h1.transfer(&transfer("g1"), &AtomicBool::new(false)).unwrap();
    }

    #[test]
    fn a_cancelled_transfer_stops_and_leaves_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let h1 = Simulated::new(dir.path(), n("h1"), 10_000, 5).unwrap();
        Simulated::inject(dir.path(), &n("g1"), Fault::Hang).unwrap();
        let cancel = AtomicBool::new(true);
        assert_eq!(h1.transfer(&transfer("g1"), &cancel).unwrap_err(), DriverError::Cancelled);
        assert!(h1.runs_here(&n("g1"), &n("h1")).unwrap());
    }

    #[test]
    fn shipped_driver_templates_are_valid() {
        #[derive(Deserialize)]
        struct Section {
            driver: DriverConfig,
        }
        let records = tempfile::tempdir().unwrap();
        for (file, text) in [
            ("integrity-vm.toml", include_str!("../../../deploy/drivers/integrity-vm.toml")),
            ("libvirt.toml", include_str!("../../../deploy/drivers/libvirt.toml")),
        ] {
            let mut s: Section = toml::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let DriverConfig::Command(c) = &mut s.driver else { panic!("{file} holds {:?}", s.driver) };
            let l = c.lifecycle.as_mut().unwrap_or_else(|| panic!("{file} has no lifecycle"));
            // Built with its records in a temporary folder rather than under /var/lib.
            l.state_dir = records.path().join(file);
            s.driver.build(&n("h1")).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        // Parsed only: building it would create its state folder under /var/lib.
        let s: Section = toml::from_str(include_str!("../../../deploy/drivers/qemu.toml")).unwrap();
        match s.driver {
            DriverConfig::Qemu(q) => assert_eq!(q.migration_ports, (49152, 49215)),
            other => panic!("qemu.toml holds {other:?}"),
        }
        let mut agent: crate::daemon::AgentConfig =
            toml::from_str(include_str!("../../../deploy/agent.example.toml")).unwrap();
        if let DriverConfig::Command(c) = &mut agent.driver {
            c.lifecycle.as_mut().expect("the example has a lifecycle").state_dir = records.path().join("example");
        }
        agent.driver.build(&agent.host).unwrap();
    }
}
