//! One child process (a coordinator or an agent) with its own log file, stopped the ways
//! machines and operators stop them: SIGKILL (a machine loss), SIGTERM (a graceful stop),
//! SIGSTOP/SIGCONT (a hung process whose connections stay open).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    rust_log: String,
    child: Option<Child>,
}

impl Proc {
    /// `program ARGS`, logging to `log` (appended), with `RUST_LOG=rust_log` unless the
    /// environment sets one.
    pub fn new(name: String, program: PathBuf, args: Vec<String>, log: PathBuf, rust_log: &str) -> Proc {
        Proc { name, program, args, log, rust_log: rust_log.into(), child: None }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with(&[])
    }

    /// Starts the program with `extra` arguments after its own, this time only.
    pub fn start_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", &self.rust_log);
        }
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().with_context(|| format!("start {} ({})", self.name, self.program.display()))?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the process runs (false once it exited on its own).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGKILL, as a machine loss would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL after that. Answers the exit
    /// status and whether it came within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<(ExitStatus, bool)> {
        let mut c = self.child.take()?;
        signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some((status, true));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok().map(|s| (s, false))
    }

    /// Sends SIGTERM and returns at once (see [`Proc::wait_exit`]).
    pub fn signal_terminate(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGTERM);
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; answers its status, or `None`
    /// if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGSTOP: the process stays, frozen (its connections stay open), until [`Proc::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Makes a child process die with this one (Linux: PR_SET_PDEATHSIG), so a killed parent leaves
/// no process holding ports or data.
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and only sets a flag on the child being started.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_cmd: &mut Command) {}

/// The program `name`: `$SWITCHYARD_<NAME>_BIN` if set, else next to this executable.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("SWITCHYARD_{}_BIN", name.trim_start_matches("switchyard-").to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("find this executable")?;
    let path = exe.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{name} not found next to {}; build it with `cargo build --workspace --bins` (or set {var})",
        exe.display()
    );
    Ok(path)
}
