//! The host watchdog: what kills this host's guests when the agent itself hangs.
//!
//! Self-fencing ([`crate::lease`]) needs a live agent. An agent that is stopped, deadlocked or
//! starved cannot stop its guests, yet the leader will fail them over once the lease expires.
//! So an agent configured with a watchdog opens it (which arms it) and pets it only while its
//! lease holds for at least the watchdog's timeout more, or while no packaged guest runs here.
//! A hung agent stops petting; the watchdog fires no later than the lease would have made the
//! agent fence itself, and before the leader may declare the host failed.
//!
//! Production: Linux `/dev/watchdog` (softdog or a hardware watchdog), as Proxmox HA uses it:
//! a write pets it, `V` before closing disarms it (unless the driver was built with
//! `nowayout`), and when it fires the host resets, taking its guests with it. The agent sets
//! the device's timeout (`WDIOC_SETTIMEOUT`, whole seconds) when the device accepts it. Tests
//! use a helper that implements the same interface on a named pipe and kills the host's QEMU
//! processes when it fires.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[watchdog]` in the agent's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// The watchdog device (`/dev/watchdog`).
    pub device: PathBuf,
    /// The device's timeout. It must be shorter than the lease's fence time (the coordinators'
    /// `ha.lease_ms - ha.fence_margin_ms`), or the agent can never pet it safely.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    1000
}

/// An armed watchdog.
pub struct Watchdog {
    file: File,
    pub timeout: Duration,
}

// <linux/watchdog.h>: _IOWR('W', 6, int)
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

impl Watchdog {
    /// Opens (arms) the device and sets its timeout where the device supports it.
    pub fn open(cfg: &WatchdogConfig) -> std::io::Result<Watchdog> {
        // Non-blocking: a named pipe nobody reads yet fails at once (ENXIO) instead of hanging.
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&cfg.device)?;
        let mut secs: libc::c_int = cfg.timeout_ms.div_ceil(1000).max(1) as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer, which lives
        // across the call; on a file that is not a watchdog the call fails with ENOTTY.
        let rc = unsafe {
            use std::os::fd::AsRawFd;
            libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut secs as *mut libc::c_int)
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOTTY) {
                tracing::warn!(device = %cfg.device.display(), %e, "cannot set the watchdog's timeout; make sure the device's own timeout is timeout_ms");
            }
        } else if u64::try_from(secs).unwrap_or(0) * 1000 > cfg.timeout_ms {
            tracing::warn!(device = %cfg.device.display(), secs, "the watchdog's timeout was rounded up to whole seconds");
        }
        Ok(Watchdog { file, timeout: Duration::from_millis(cfg.timeout_ms) })
    }

    pub fn pet(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"1")
    }

    /// Disarms the watchdog (the magic close): no packaged guest runs or is to run here, so
    /// there is nothing to fence. Closing it any other way (the agent exits or crashes) leaves
    /// it counting.
    pub fn disarm(mut self) -> std::io::Result<()> {
        self.file.write_all(b"V")
    }
}
