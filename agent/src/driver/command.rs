//! The command driver: the operator's own hypervisor and cluster tools (Integrity VM's
//! `hpvm*`, libvirt's `virsh`, Serviceguard's `cmmodpkg`), run from argument templates.
//!
//! Why templates and not a built-in client per platform: the platforms Switchyard serves are
//! driven through their command-line tools, whose paths, options and wrappers differ between
//! sites. A template names the program and its arguments; `{guest}`-style placeholders are
//! replaced by validated names (never parsed by a shell, so a name cannot inject anything). The
//! shipped template sets are in `deploy/drivers/` and are exercised by the tests against fake
//! tools that implement the documented behaviour of the real ones.
//!
//! Three parts, each optional but the first:
//!
//! - **moves**: `migrate` (online), `migrate_offline`, and `runs_here` for a driver without a
//!   lifecycle. This alone is a driver that only moves guests.
//! - **`[driver.lifecycle]`**: `list`, `define`, `undefine`, `start`, `stop`, `stop_hard`. With
//!   it the agent reconciles the hypervisor with the log (defines every guest on every host,
//!   runs it on its owner, repairs drift). `list` prints one line per guest the hypervisor holds
//!   on this host: `NAME STATE [vcpus=N] [memory_mib=N]`, STATE one of `running`, `shut_off`,
//!   `paused` or another word (a guest in any other state counts as present and not running).
//!   `define` creates or changes a guest from the spec passed in the environment
//!   (`SWITCHYARD_VCPUS`, `SWITCHYARD_MEMORY_MIB`, `SWITCHYARD_DISKS` and `SWITCHYARD_NETWORKS`
//!   one per line, `SWITCHYARD_ONLINE_MIGRATION=enabled|disabled`, `SWITCHYARD_CLUSTER_NODE=yes|no`,
//!   `SWITCHYARD_PACKAGE`), so a platform's script translates it into that platform's options.
//!   The log's version of each definition the agent wrote is kept in `state_dir` (the platforms
//!   have nowhere to store it); the fields `list` reports are read from the hypervisor, so a
//!   change made behind the agent's back is seen as drift and repaired.
//! - **`[driver.serviceguard]`**: package switching as the cluster manager holds it. `view`
//!   prints Serviceguard's line format (`cmviewcl -v -f line`: `package:P|autorun=enabled`,
//!   `package:P|node:N|switching=disabled`); `enable`/`disable` (`cmmodpkg -e|-d {package}`)
//!   and `enable_node`/`disable_node` (`cmmodpkg -e|-d -n {node} {package}`) change it. Node
//!   names are the Switchyard host names.
//!
//! Every call is idempotent as [`Lifecycle`] requires: the driver reads the hypervisor's state
//! first and runs a command only when it changes something, and one guest's actions are
//! serialised by a lock.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_protocol::{GuestSpec, MigrationKind, Name, Revision, TransferStats};

use super::{
    DriverError, HypervisorDriver, Lifecycle, Moved, Observed, PackageSwitching, SwitchingState, Transfer, VmState,
};

/// The `[driver]` section of a command driver.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Moves the guest to the target online (or, without `migrate_offline`, in any kind, told
    /// by `{kind}`); exit 0 means it moved. It may print a line `freeze_ms=<n>`.
    pub migrate: Vec<String>,
    /// Moves a stopped guest's definition to the target (e.g. `hpvmmigrate` without `-o`,
    /// `virsh migrate --offline`). A running guest is stopped first when the request allows it.
    #[serde(default)]
    pub migrate_offline: Option<Vec<String>>,
    /// Without a lifecycle: exit 0 when the guest runs here, 1 when it does not.
    #[serde(default)]
    pub runs_here: Option<Vec<String>>,
    /// Limit for one move.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How often a move under way or a guest's arrival is checked (each check runs a command).
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Environment for every command (e.g. `PATH`, `LIBVIRT_DEFAULT_URI`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub lifecycle: Option<LifecycleConfig>,
    #[serde(default)]
    pub serviceguard: Option<ServiceguardConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Where the agent keeps the log's version of each definition it wrote.
    pub state_dir: PathBuf,
    pub list: Vec<String>,
    pub define: Vec<String>,
    pub undefine: Vec<String>,
    pub start: Vec<String>,
    /// A graceful stop; the guest gets `stop_timeout_ms` to go down, then `stop_hard`.
    pub stop: Vec<String>,
    pub stop_hard: Vec<String>,
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// Limit for one lifecycle command.
    #[serde(default = "default_lifecycle_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceguardConfig {
    pub view: Vec<String>,
    pub enable: Vec<String>,
    pub disable: Vec<String>,
    pub enable_node: Vec<String>,
    pub disable_node: Vec<String>,
    #[serde(default = "default_lifecycle_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    600_000
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_stop_timeout_ms() -> u64 {
    120_000
}
fn default_lifecycle_timeout_ms() -> u64 {
    300_000
}

const MOVE: &[&str] = &["guest", "source", "target", "target_address", "kind", "migration"];
const GUEST: &[&str] = &["guest"];
const DEFINE: &[&str] = &["guest", "vcpus", "memory_mib"];
const RUNS_HERE: &[&str] = &["guest", "source"];
const PACKAGE: &[&str] = &["package"];
const PACKAGE_NODE: &[&str] = &["package", "node"];

/// A command line with placeholders, checked when the configuration is read.
#[derive(Clone, Debug)]
struct Template(Vec<String>);

impl Template {
    fn new(what: &str, argv: &[String], known: &[&str]) -> Result<Template, String> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(format!("{what} is empty: give the program and its arguments"));
        }
        for arg in argv {
            for p in placeholders(arg) {
                if !known.contains(&p.as_str()) {
                    return Err(format!("{what}: unknown placeholder {{{p}}}; known here: {}", known.join(", ")));
                }
            }
        }
        Ok(Template(argv.to_vec()))
    }

    fn render(&self, values: &[(&str, String)]) -> Vec<String> {
        self.0
            .iter()
            .map(|arg| values.iter().fold(arg.clone(), |a, (k, v)| a.replace(&format!("{{{k}}}"), v)))
            .collect()
    }
}

fn placeholders(arg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else { break };
        out.push(rest[start + 1..start + len].to_string());
        rest = &rest[start + len + 1..];
    }
    out
}

/// The last `n` bytes of a command's output, for error messages.
fn tail(s: &str, n: usize) -> &str {
    let s = s.trim();
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn failed(what: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(what.to_string())
}

/// The figures a move command may print, one per line: `freeze_ms=N`, and `total_time_ms=N`
/// with `transferred_bytes=N`.
fn moved_from(stdout: &str) -> Moved {
    let value = |key: &str| -> Option<u64> {
        stdout.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    let stats = match (value("total_time_ms"), value("transferred_bytes")) {
        (Some(total_time_ms), Some(transferred_bytes)) => Some(TransferStats { total_time_ms, transferred_bytes }),
        _ => None,
    };
    Moved { freeze_ms: value("freeze_ms"), stats }
}

/// What a finished command left.
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs commands without a shell, with the configured environment, a time limit and
/// cancellation, capturing their output.
#[derive(Clone, Debug)]
struct Runner {
    env: Vec<(String, String)>,
}

impl Runner {
    fn run(
        &self,
        argv: &[String],
        env: &[(&str, String)],
        limit: Duration,
        cancel: &AtomicBool,
    ) -> Result<Output, DriverError> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut child = cmd.spawn().map_err(|e| failed(format!("cannot run {}: {e}", argv[0])))?;
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|e| failed(format!("wait for {}: {e}", argv[0])))? {
                break st;
            }
            let stop = if cancel.load(Ordering::SeqCst) {
                Some(DriverError::Cancelled)
            } else if Instant::now() > deadline {
                Some(failed(format!("{} timed out after {limit:?} and was killed", argv[0])))
            } else {
                None
            };
            if let Some(e) = stop {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        Ok(Output {
            code: status.code().unwrap_or(-1),
            stdout: out_t.join().unwrap_or_default(),
            stderr: err_t.join().unwrap_or_default(),
        })
    }

    /// Runs a command that must succeed (exit 0); answers its standard output.
    fn ok(&self, argv: &[String], env: &[(&str, String)], limit: Duration) -> Result<String, DriverError> {
        let o = self.run(argv, env, limit, &AtomicBool::new(false))?;
        if o.code != 0 {
            let why = if o.stderr.trim().is_empty() { tail(&o.stdout, 400) } else { tail(&o.stderr, 400) };
            return Err(failed(format!("{} exited with {}: {why}", argv.join(" "), o.code)));
        }
        Ok(o.stdout)
    }
}

/// The log's version of a definition this agent wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    spec: GuestSpec,
    version: Revision,
}

/// One line of `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listed {
    name: Name,
    state: VmState,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
}

fn parse_state(word: &str) -> VmState {
    match word {
        "running" => VmState::Running,
        "shut_off" | "shutoff" | "off" => VmState::ShutOff,
        other => VmState::Paused(other.to_string()),
    }
}

/// Parses `list`'s output. Lines naming a guest Switchyard could not name are skipped (such a
/// guest cannot be in the log, and is left alone); any other malformed line is an error, so a
/// broken script is not mistaken for an empty host.
fn parse_list(out: &str) -> Result<Vec<Listed>, String> {
    let mut guests = Vec::new();
    for (i, line) in out.lines().enumerate() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let Some(state) = words.next() else {
            return Err(format!("line {}: `{line}`: expected NAME STATE [key=value...]", i + 1));
        };
        let Ok(name) = Name::new(name) else {
            tracing::debug!(name, "a guest the log cannot name is ignored");
            continue;
        };
        let mut g = Listed { name, state: parse_state(state), vcpus: None, memory_mib: None };
        for kv in words {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(format!("line {}: `{kv}` is not key=value", i + 1));
            };
            let bad = |_| format!("line {}: {k}={v} is not a number", i + 1);
            match k {
                "vcpus" => g.vcpus = Some(v.parse().map_err(bad)?),
                "memory_mib" => g.memory_mib = Some(v.parse().map_err(bad)?),
                _ => {}
            }
        }
        guests.push(g);
    }
    Ok(guests)
}

/// Parses Serviceguard's line output: `package:P|autorun=…` and `package:P|node:N|switching=…`.
fn parse_switching(out: &str) -> BTreeMap<Name, SwitchingState> {
    let mut all: BTreeMap<Name, SwitchingState> = BTreeMap::new();
    for line in out.lines() {
        let Some(rest) = line.trim().strip_prefix("package:") else { continue };
        let mut parts = rest.split('|');
        let Some(Ok(package)) = parts.next().map(Name::new) else { continue };
        let (mut node, mut setting) = (None, None);
        for p in parts {
            if let Some(n) = p.strip_prefix("node:") {
                node = Name::new(n).ok();
            } else if let Some((k, v)) = p.split_once('=') {
                setting = Some((k, v == "enabled"));
            }
        }
        match (node, setting) {
            (None, Some(("autorun", on))) => all.entry(package).or_default().global = on,
            (Some(n), Some(("switching", on))) => {
                all.entry(package).or_default().nodes.insert(n, on);
            }
            _ => {}
        }
    }
    all
}

pub struct CommandDriver {
    runner: Runner,
    migrate: Template,
    migrate_offline: Option<Template>,
    runs_here: Option<Template>,
    timeout: Duration,
    poll: Duration,
    lifecycle: Option<CommandLifecycle>,
    serviceguard: Option<Serviceguard>,
}

impl CommandDriver {
    pub fn new(cfg: &CommandConfig) -> Result<CommandDriver, String> {
        if cfg.timeout_ms == 0 || cfg.poll_interval_ms == 0 {
            return Err("driver.timeout_ms and driver.poll_interval_ms must be at least 1".into());
        }
        let runner = Runner { env: cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect() };
        let migrate_offline =
            cfg.migrate_offline.as_ref().map(|t| Template::new("driver.migrate_offline", t, MOVE)).transpose()?;
        let runs_here = cfg.runs_here.as_ref().map(|t| Template::new("driver.runs_here", t, RUNS_HERE)).transpose()?;
        let lifecycle = cfg.lifecycle.as_ref().map(|l| CommandLifecycle::new(l, runner.clone())).transpose()?;
        if lifecycle.is_none() && runs_here.is_none() {
            return Err("driver.runs_here is needed without [driver.lifecycle]: the agent must be able to tell whether a guest runs here".into());
        }
        let serviceguard = cfg.serviceguard.as_ref().map(|s| Serviceguard::new(s, runner.clone())).transpose()?;
        Ok(CommandDriver {
            migrate: Template::new("driver.migrate", &cfg.migrate, MOVE)?,
            migrate_offline,
            runs_here,
            timeout: Duration::from_millis(cfg.timeout_ms),
            poll: Duration::from_millis(cfg.poll_interval_ms),
            lifecycle,
            serviceguard,
            runner,
        })
    }

    fn run_move(&self, template: &Template, t: &Transfer, cancel: &AtomicBool) -> Result<Moved, DriverError> {
        let values = [
            ("guest", t.guest.to_string()),
            ("source", t.source.to_string()),
            ("target", t.target.to_string()),
            ("target_address", t.target_address.clone()),
            ("kind", t.kind.to_string()),
            ("migration", t.migration.to_string()),
        ];
        let argv = template.render(&values);
        let o = self.runner.run(&argv, &[], self.timeout, cancel)?;
        if o.code != 0 {
            let why = if o.stderr.trim().is_empty() { tail(&o.stdout, 400) } else { tail(&o.stderr, 400) };
            return Err(failed(format!("{} exited with {}: {why}", argv[0], o.code)));
        }
        Ok(moved_from(&o.stdout))
    }
}

impl HypervisorDriver for CommandDriver {
    /// Online: `migrate`. Offline: the guest must not run here — with a stop allowed
    /// (`offline_stop`) the lifecycle stops it first — then `migrate_offline` moves its
    /// definition (without it, every host already holds the definition and nothing moves).
    fn transfer(&self, t: &Transfer, cancel: &AtomicBool) -> Result<Moved, DriverError> {
        if t.kind == MigrationKind::Online {
            return self.run_move(&self.migrate, t, cancel);
        }
        if let Some(l) = &self.lifecycle {
            let state = l.state(&t.guest)?;
            if state.is_live() {
                if t.kind != MigrationKind::OfflineStop {
                    return Err(failed(format!(
                        "guest {} runs here ({state}): an offline move needs it stopped (--allow-stop)",
                        t.guest
                    )));
                }
                tracing::info!(guest = %t.guest, migration = %t.migration, "stopping the guest for its offline move");
                l.stop(&t.guest, false)?;
            }
        }
        match (&self.migrate_offline, &self.lifecycle) {
            (Some(template), _) => self.run_move(template, t, cancel),
            (None, Some(_)) => Ok(Moved::default()),
            // A move-only driver: `migrate` is told the kind.
            (None, None) => self.run_move(&self.migrate, t, cancel),
        }
    }

    fn runs_here(&self, guest: &Name, owner: &Name) -> Result<bool, DriverError> {
        if let Some(l) = &self.lifecycle {
            return Ok(l.state(guest)? == VmState::Running);
        }
        let template = self.runs_here.as_ref().expect("checked at construction: runs_here or a lifecycle");
        let argv = template.render(&[("guest", guest.to_string()), ("source", owner.to_string())]);
        match self.runner.run(&argv, &[], self.timeout, &AtomicBool::new(false))? {
            Output { code: 0, .. } => Ok(true),
            Output { code: 1, .. } => Ok(false),
            Output { code, stderr, .. } => {
                Err(failed(format!("{} exited with {code}: {}", argv[0], tail(&stderr, 400))))
            }
        }
    }

    fn poll_interval(&self) -> Duration {
        self.poll
    }

    fn lifecycle(&self) -> Option<&dyn Lifecycle> {
        self.lifecycle.as_ref().map(|l| l as &dyn Lifecycle)
    }

    fn switching(&self) -> Option<&dyn PackageSwitching> {
        self.serviceguard.as_ref().map(|s| s as &dyn PackageSwitching)
    }
}

struct CommandLifecycle {
    runner: Runner,
    dir: PathBuf,
    list: Template,
    define: Template,
    undefine: Template,
    start: Template,
    stop: Template,
    stop_hard: Template,
    stop_timeout: Duration,
    timeout: Duration,
    locks: Mutex<HashMap<Name, Arc<Mutex<()>>>>,
}

impl CommandLifecycle {
    fn new(c: &LifecycleConfig, runner: Runner) -> Result<CommandLifecycle, String> {
        if c.timeout_ms == 0 {
            return Err("driver.lifecycle.timeout_ms must be at least 1".into());
        }
        std::fs::create_dir_all(&c.state_dir)
            .map_err(|e| format!("driver.lifecycle.state_dir {}: {e}", c.state_dir.display()))?;
        Ok(CommandLifecycle {
            runner,
            dir: c.state_dir.clone(),
            list: Template::new("driver.lifecycle.list", &c.list, &[])?,
            define: Template::new("driver.lifecycle.define", &c.define, DEFINE)?,
            undefine: Template::new("driver.lifecycle.undefine", &c.undefine, GUEST)?,
            start: Template::new("driver.lifecycle.start", &c.start, GUEST)?,
            stop: Template::new("driver.lifecycle.stop", &c.stop, GUEST)?,
            stop_hard: Template::new("driver.lifecycle.stop_hard", &c.stop_hard, GUEST)?,
            stop_timeout: Duration::from_millis(c.stop_timeout_ms),
            timeout: Duration::from_millis(c.timeout_ms),
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self, guest: &Name) -> Arc<Mutex<()>> {
        self.locks.lock().expect("locks").entry(guest.clone()).or_default().clone()
    }

    fn listed(&self) -> Result<Vec<Listed>, DriverError> {
        let out = self.runner.ok(&self.list.render(&[]), &[], self.timeout)?;
        parse_list(&out).map_err(|e| failed(format!("{}: {e}", self.list.0[0])))
    }

    fn find(&self, guest: &Name) -> Result<Option<Listed>, DriverError> {
        Ok(self.listed()?.into_iter().find(|l| &l.name == guest))
    }

    fn record_path(&self, guest: &Name) -> PathBuf {
        self.dir.join(format!("{guest}.json"))
    }

    fn record(&self, guest: &Name) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(guest)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                // Treated as absent: the guest is then defined again from the log.
                tracing::warn!(%guest, %e, "unreadable definition record");
                None
            }
        }
    }

    fn run_for(&self, template: &Template, guest: &Name) -> Result<(), DriverError> {
        self.runner.ok(&template.render(&[("guest", guest.to_string())]), &[], self.timeout).map(drop)
    }

    fn stop_locked(&self, guest: &Name, hard: bool) -> Result<(), DriverError> {
        if !hard {
            self.run_for(&self.stop, guest)?;
            // A graceful stop may only ask the guest to shut down (`virsh shutdown`): wait.
            let end = Instant::now() + self.stop_timeout;
            let mut pause = Duration::from_millis(20);
            loop {
                match self.find(guest)? {
                    Some(l) if l.state.is_live() => {}
                    _ => return Ok(()),
                }
                if Instant::now() >= end {
                    tracing::warn!(%guest, timeout = ?self.stop_timeout, "the guest did not shut down in time; stopping it hard");
                    break;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
        self.run_for(&self.stop_hard, guest)
    }
}

/// A guest's spec in the environment of `define`.
fn spec_env(guest: &Name, spec: &GuestSpec, version: Revision) -> Result<Vec<(&'static str, String)>, DriverError> {
    for item in spec.disks.iter().chain(&spec.networks) {
        if item.contains(['\n', '\0']) {
            return Err(failed(format!("attachment {item:?} holds a line break or NUL")));
        }
    }
    let yes = |b: bool, y: &str, n: &str| if b { y.to_string() } else { n.to_string() };
    Ok(vec![
        ("SWITCHYARD_GUEST", guest.to_string()),
        ("SWITCHYARD_VERSION", version.to_string()),
        ("SWITCHYARD_VCPUS", spec.vcpus.to_string()),
        ("SWITCHYARD_MEMORY_MIB", spec.memory_mib.to_string()),
        ("SWITCHYARD_DISKS", spec.disks.join("\n")),
        ("SWITCHYARD_NETWORKS", spec.networks.join("\n")),
        ("SWITCHYARD_ONLINE_MIGRATION", yes(spec.online_migration, "enabled", "disabled")),
        ("SWITCHYARD_CLUSTER_NODE", yes(spec.cluster_node, "yes", "no")),
        ("SWITCHYARD_PACKAGE", spec.package.as_ref().map(|p| p.to_string()).unwrap_or_default()),
    ])
}

/// Does what the hypervisor reports of a guest agree with `spec`?
fn reports_match(l: &Listed, spec: &GuestSpec) -> bool {
    l.vcpus.is_none_or(|v| v == spec.vcpus) && l.memory_mib.is_none_or(|m| m == spec.memory_mib)
}

impl Lifecycle for CommandLifecycle {
    fn observe(&self) -> Result<Vec<Observed>, DriverError> {
        Ok(self
            .listed()?
            .into_iter()
            .map(|l| {
                let defined = match self.record(&l.name) {
                    Some(r) => {
                        let mut spec = r.spec;
                        spec.vcpus = l.vcpus.unwrap_or(spec.vcpus);
                        spec.memory_mib = l.memory_mib.unwrap_or(spec.memory_mib);
                        (spec, Some(r.version))
                    }
                    // Unknown to the log: only what the hypervisor reports.
                    None => (
                        GuestSpec {
                            vcpus: l.vcpus.unwrap_or(0),
                            memory_mib: l.memory_mib.unwrap_or(0),
                            disks: Vec::new(),
                            networks: Vec::new(),
                            online_migration: true,
                            cluster_node: false,
                            package: None,
                            anti_affinity: None,
                        },
                        None,
                    ),
                };
                Observed { name: l.name, defined: Some(defined), state: l.state, running_spec: None }
            })
            .collect())
    }

    fn state(&self, guest: &Name) -> Result<VmState, DriverError> {
        Ok(self.find(guest)?.map_or(VmState::ShutOff, |l| l.state))
    }

    fn define(&self, guest: &Name, spec: &GuestSpec, version: Revision) -> Result<(), DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().expect("guest lock");
        let unchanged = self.record(guest).is_some_and(|r| &r.spec == spec)
            && self.find(guest)?.is_some_and(|l| reports_match(&l, spec));
        if !unchanged {
            let values = [
                ("guest", guest.to_string()),
                ("vcpus", spec.vcpus.to_string()),
                ("memory_mib", spec.memory_mib.to_string()),
            ];
            self.runner.ok(&self.define.render(&values), &spec_env(guest, spec, version)?, self.timeout)?;
        }
        let bytes = serde_json::to_vec_pretty(&Record { spec: spec.clone(), version }).expect("a record serialises");
        write_atomically(&self.record_path(guest), &bytes)
    }

    fn undefine(&self, guest: &Name) -> Result<(), DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().expect("guest lock");
        match self.find(guest)? {
            Some(l) if l.state.is_live() => {
                return Err(failed(format!("guest {guest} is {} here: stop it before removing it", l.state)))
            }
            Some(_) => self.run_for(&self.undefine, guest)?,
            None => {}
        }
        match std::fs::remove_file(self.record_path(guest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(format!("remove record: {e}"))),
            _ => Ok(()),
        }
    }

    fn start(&self, guest: &Name) -> Result<(), DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().expect("guest lock");
        match self.find(guest)? {
            None => Err(failed(format!("guest {guest} is not defined here"))),
            Some(l) if l.state == VmState::Running => Ok(()),
            Some(_) => self.run_for(&self.start, guest),
        }
    }

    fn stop(&self, guest: &Name, hard: bool) -> Result<(), DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().expect("guest lock");
        match self.find(guest)? {
            Some(l) if l.state.is_live() => self.stop_locked(guest, hard),
            _ => Ok(()),
        }
    }

    fn stop_if(&self, guest: &Name, hard: bool, seen: &VmState) -> Result<bool, DriverError> {
        let lock = self.lock(guest);
        let _held = lock.lock().expect("guest lock");
        let now = self.find(guest)?.map_or(VmState::ShutOff, |l| l.state);
        if !now.is_live() || !(now == *seen || seen.is_live()) {
            return Ok(false);
        }
        self.stop_locked(guest, hard).map(|()| true)
    }
}

struct Serviceguard {
    runner: Runner,
    view: Template,
    enable: Template,
    disable: Template,
    enable_node: Template,
    disable_node: Template,
    timeout: Duration,
}

impl Serviceguard {
    fn new(c: &ServiceguardConfig, runner: Runner) -> Result<Serviceguard, String> {
        if c.timeout_ms == 0 {
            return Err("driver.serviceguard.timeout_ms must be at least 1".into());
        }
        Ok(Serviceguard {
            runner,
            view: Template::new("driver.serviceguard.view", &c.view, &[])?,
            enable: Template::new("driver.serviceguard.enable", &c.enable, PACKAGE)?,
            disable: Template::new("driver.serviceguard.disable", &c.disable, PACKAGE)?,
            enable_node: Template::new("driver.serviceguard.enable_node", &c.enable_node, PACKAGE_NODE)?,
            disable_node: Template::new("driver.serviceguard.disable_node", &c.disable_node, PACKAGE_NODE)?,
            timeout: Duration::from_millis(c.timeout_ms),
        })
    }
}

impl PackageSwitching for Serviceguard {
    fn view(&self) -> Result<BTreeMap<Name, SwitchingState>, DriverError> {
        Ok(parse_switching(&self.runner.ok(&self.view.render(&[]), &[], self.timeout)?))
    }

    fn set(&self, package: &Name, node: Option<&Name>, enabled: bool) -> Result<(), DriverError> {
        let mut values = vec![("package", package.to_string())];
        let template = match (node, enabled) {
            (None, true) => &self.enable,
            (None, false) => &self.disable,
            (Some(n), on) => {
                values.push(("node", n.to_string()));
                if on {
                    &self.enable_node
                } else {
                    &self.disable_node
                }
            }
        };
        self.runner.ok(&template.render(&values), &[], self.timeout).map(drop)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| failed(format!("write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::super::tests::transfer;
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn move_only(migrate: &[&str], runs_here: &[&str], timeout_ms: u64) -> Result<CommandDriver, String> {
        CommandDriver::new(&CommandConfig {
            migrate: s(migrate),
            migrate_offline: None,
            runs_here: Some(s(runs_here)),
            timeout_ms,
            poll_interval_ms: 100,
            env: BTreeMap::new(),
            lifecycle: None,
            serviceguard: None,
        })
    }

    #[test]
    fn placeholders_are_substituted_and_exit_codes_mapped() {
        let d = move_only(
            &[
                "sh",
                "-c",
                "echo moving $0 to $1; echo freeze_ms=42; echo total_time_ms=900; echo transferred_bytes=4096",
                "{guest}",
                "{target_address}",
            ],
            &["sh", "-c", "test \"$0\" = g1", "{guest}"],
            5_000,
        )
        .unwrap();
        let moved = d.transfer(&transfer("g1"), &AtomicBool::new(false)).unwrap();
        let stats = TransferStats { total_time_ms: 900, transferred_bytes: 4096 };
        assert_eq!(moved, Moved { freeze_ms: Some(42), stats: Some(stats) });
        assert!(d.runs_here(&n("g1"), &n("h1")).unwrap());
        assert!(!d.runs_here(&n("g2"), &n("h1")).unwrap());
    }

    #[test]
    fn failures_timeouts_and_bad_templates_are_reported() {
        let fail =
            move_only(&["sh", "-c", "echo no room on target >&2; exit 3"], &["sh", "-c", "exit 7"], 5_000).unwrap();
        let e = fail.transfer(&transfer("g1"), &AtomicBool::new(false)).unwrap_err().to_string();
        assert!(e.contains("exited with 3") && e.contains("no room on target"), "{e}");
        assert!(fail.runs_here(&n("g1"), &n("h1")).unwrap_err().to_string().contains("exited with 7"));

        let slow = move_only(&["sleep", "5"], &["true"], 100).unwrap();
        let e = slow.transfer(&transfer("g1"), &AtomicBool::new(false)).unwrap_err().to_string();
        assert!(e.contains("timed out"), "{e}");

        let bad = move_only(&["virsh", "{domain}"], &["true"], 100);
        assert!(bad.err().unwrap().contains("unknown placeholder {domain}"));
        assert!(move_only(&[], &["true"], 100).err().unwrap().contains("driver.migrate is empty"));
        let mut no_runs_here = CommandConfig {
            migrate: s(&["true"]),
            migrate_offline: None,
            runs_here: None,
            timeout_ms: 100,
            poll_interval_ms: 100,
            env: BTreeMap::new(),
            lifecycle: None,
            serviceguard: None,
        };
        assert!(CommandDriver::new(&no_runs_here).err().unwrap().contains("driver.runs_here is needed"));
        no_runs_here.lifecycle = Some(LifecycleConfig {
            state_dir: tempfile::tempdir().unwrap().path().join("records"),
            list: s(&["true"]),
            define: s(&["true", "{node}"]),
            undefine: s(&["true"]),
            start: s(&["true"]),
            stop: s(&["true"]),
            stop_hard: s(&["true"]),
            stop_timeout_ms: 100,
            timeout_ms: 100,
        });
        let e = CommandDriver::new(&no_runs_here).err().unwrap();
        assert!(e.contains("driver.lifecycle.define: unknown placeholder {node}"), "{e}");
    }

    #[test]
    fn list_lines_are_parsed_strictly_but_foreign_names_are_skipped() {
        let l =
            parse_list("g1 running vcpus=2 memory_mib=512\n\ng2 shut_off\nbad/name running\ng3 crashed color=red\n")
                .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].state.clone(), l[0].vcpus, l[0].memory_mib), (VmState::Running, Some(2), Some(512)));
        assert_eq!(l[1].state, VmState::ShutOff);
        assert_eq!(l[2].state, VmState::Paused("crashed".into()));
        assert!(parse_list("g1\n").unwrap_err().contains("expected NAME STATE"));
        assert!(parse_list("g1 running vcpus\n").unwrap_err().contains("not key=value"));
        assert!(parse_list("g1 running vcpus=two\n").unwrap_err().contains("not a number"));
    }

    #[test]
    fn serviceguard_lines_give_global_and_per_node_switching() {
        let v = parse_switching(
            "package:p1|name=p1\npackage:p1|autorun=disabled\npackage:p1|node:h1|switching=enabled\n\
             package:p1|node:h2|switching=disabled\npackage:p2|autorun=enabled\nnode:h1|status=up\n",
        );
        assert!(!v[&n("p1")].global);
        assert_eq!(v[&n("p1")].nodes, BTreeMap::from([(n("h1"), true), (n("h2"), false)]));
        assert!(v[&n("p2")].global);
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn spec_reaches_define_in_its_environment_and_line_breaks_are_refused() {
        let spec = GuestSpec {
            vcpus: 2,
            memory_mib: 64,
            disks: vec!["a".into(), "b c".into()],
            networks: Vec::new(),
            online_migration: false,
            cluster_node: false,
            package: None,
            anti_affinity: None,
        };
        let env = spec_env(&n("g1"), &spec, 9).unwrap();
        let get = |k: &str| env.iter().find(|(key, _)| *key == k).unwrap().1.clone();
        assert_eq!(get("SWITCHYARD_DISKS"), "a\nb c");
        assert_eq!(get("SWITCHYARD_ONLINE_MIGRATION"), "disabled");
        assert_eq!(get("SWITCHYARD_VERSION"), "9");
        let bad = GuestSpec { networks: vec!["x\ny".into()], ..spec };
        assert!(spec_env(&n("g1"), &bad, 9).is_err());
    }
}
